/* Output files written atomically: mkstemp in the target directory, fsync, rename. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files.h"
#include "provision.h"
#include "report.h"

struct eg_prov_outfile {
    char *path;
    char *tmp;
    char *dir;
    mode_t mode;
    int fd;
    int committed;
};

static bool disk_full;

bool eg_prov_disk_full(void)
{
    return disk_full;
}

void eg_prov_disk_full_seen(void)
{
    disk_full = true;
}

/* A write error: what failed and errno's reason; a full file system is remembered. */
static int write_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int write_fail(const char *fmt, ...)
{
    int e = errno;
    char what[8192];
    va_list ap;

    if (e == ENOSPC || e == EDQUOT)
        disk_full = true;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return eg_prov_fail(EG_EXIT_CANTCREAT, "%s: %s", what, strerror(e));
}

static int split_path(eg_prov_outfile *f, const char *path)
{
    char *d = strdup(path), *b = strdup(path);
    int rc = -1;

    if (d == NULL || b == NULL)
        goto out;
    f->path = strdup(path);
    f->dir = strdup(dirname(d));
    /* A dot file in the same directory: rename() is atomic only within a file system. */
    if (f->path == NULL || f->dir == NULL ||
        asprintf(&f->tmp, "%s/.%s.XXXXXX", f->dir, basename(b)) < 0) {
        f->tmp = NULL;
        goto out;
    }
    rc = 0;
out:
    free(d);
    free(b);
    return rc;
}

int eg_prov_outfile_open(const char *path, mode_t mode, eg_prov_outfile **out)
{
    eg_prov_outfile *f = calloc(1, sizeof(*f));
    int rc;

    if (f != NULL)
        f->fd = -1;
    if (f == NULL || split_path(f, path) != 0) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    f->mode = mode;
    if ((f->fd = mkostemp(f->tmp, O_CLOEXEC)) < 0) {
        rc = write_fail("cannot create a file in %s for %s", f->dir, path);
        free(f->tmp);
        f->tmp = NULL;
        goto out;
    }
    *out = f;
    f = NULL;
    rc = EG_EXIT_OK;
out:
    eg_prov_outfile_free(f);
    return rc;
}

int eg_prov_outfile_write(eg_prov_outfile *f, BIO *mem)
{
    char *p;
    long len = BIO_get_mem_data(mem, &p);
    ssize_t n;

    while (len > 0) {
        if ((n = write(f->fd, p, (size_t)len)) < 0) {
            if (errno == EINTR)
                continue;
            return write_fail("writing %s", f->path);
        }
        p += n;
        len -= n;
    }
    return EG_EXIT_OK;
}

/* Makes the rename itself durable. */
static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;

    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

int eg_prov_outfile_commit(eg_prov_outfile *f)
{
    if (fchmod(f->fd, f->mode) != 0 || fsync(f->fd) != 0)
        return write_fail("writing %s", f->path);
    if (close(f->fd) != 0) {
        f->fd = -1;
        return write_fail("writing %s", f->path);
    }
    f->fd = -1;
    if (rename(f->tmp, f->path) != 0)
        return write_fail("renaming %s to %s", f->tmp, f->path);
    f->committed = 1;
    if (sync_dir(f->dir) != 0)
        return write_fail("syncing %s", f->dir);
    return EG_EXIT_OK;
}

void eg_prov_outfile_free(eg_prov_outfile *f)
{
    if (f == NULL)
        return;
    if (f->fd >= 0)
        close(f->fd);
    if (!f->committed && f->tmp != NULL)
        unlink(f->tmp);
    free(f->path);
    free(f->tmp);
    free(f->dir);
    free(f);
}

/*
 * mkdir -p: an output folder's missing parents are made too, as an operator
 * naming out/batch-0042 on a fresh station expects.
 */
int eg_prov_mkdirs(const char *dir, mode_t mode)
{
    char *p = strdup(dir), *s;
    int rc = -1;

    if (p == NULL) {
        errno = ENOMEM;
        return -1;
    }
    for (s = p + 1; (s = strchr(s, '/')) != NULL; s++) {
        *s = '\0';
        if (mkdir(p, mode) != 0 && errno != EEXIST)
            goto out;
        *s = '/';
    }
    if (mkdir(p, mode) != 0 && errno != EEXIST)
        goto out;
    rc = 0;
out:
    free(p);
    return rc;
}
