/* PIN files: PINs never come from argv or the environment, where ps and /proc show them. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "files.h"
#include "provision.h"
#include "report.h"

#define EG_PIN_MAX 256

const char *eg_prov_secret_file_name(const char *path, const char *option, const char *what,
                                     char *buf, size_t cap)
{
    if (strchr(path, '/') != NULL)
        snprintf(buf, cap, "%s file %s", what, path);
    else
        snprintf(buf, cap, "the %s file given to %s", what, option);
    return buf;
}

/* Opens a secret's file: a regular file others cannot read. An fd, or -1 after saying why. */
static int open_secret(const char *path, const char *name, int *rc)
{
    struct stat st;
    int fd;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        *rc = eg_prov_fail(EG_EXIT_NOINPUT, "%s does not exist or cannot be read: %s", name,
                           strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0)
        *rc = eg_prov_fail(EG_EXIT_NOINPUT, "%s: %s", name, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        *rc = eg_prov_fail(EG_EXIT_NOINPUT, "%s is not a regular file", name);
    else if (st.st_mode & S_IROTH)
        *rc = eg_prov_fail(EG_EXIT_NOINPUT, "%s is readable by everyone; chmod o-rwx it", name);
    else
        return fd;
    close(fd);
    return -1;
}

int eg_prov_secret_open(const char *path, const char *option, const char *what, int *fd_out)
{
    char name[PATH_MAX + 64];
    int rc = EG_EXIT_OK, fd;

    eg_prov_secret_file_name(path, option, what, name, sizeof(name));
    if ((fd = open_secret(path, name, &rc)) < 0)
        return rc;
    if (fd_out != NULL)
        *fd_out = fd;
    else
        close(fd);
    return EG_EXIT_OK;
}

int eg_prov_pin_read(const char *path, const char *option, const char *what, char **out)
{
    char buf[EG_PIN_MAX + 2], name[PATH_MAX + 64];
    ssize_t n;
    size_t len;
    int fd = -1, rc;

    eg_prov_secret_file_name(path, option, what, name, sizeof(name));
    if ((rc = eg_prov_secret_open(path, option, what, &fd)) != EG_EXIT_OK)
        goto out;
    if ((n = read(fd, buf, sizeof(buf) - 1)) < 0) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "%s: %s", name, strerror(errno));
        goto out;
    }
    buf[n] = 0;
    len = strcspn(buf, "\r\n");
    if (len == 0 || len > EG_PIN_MAX) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "%s: the first line must hold a PIN of 1-%d bytes", name,
                          EG_PIN_MAX);
        goto out;
    }
    if ((*out = OPENSSL_strndup(buf, len)) == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    rc = EG_EXIT_OK;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    if (fd >= 0)
        close(fd);
    return rc;
}

void eg_prov_pin_free(char *pin)
{
    if (pin != NULL)
        OPENSSL_clear_free(pin, strlen(pin));
}
