/* PIN files: PINs never come from argv or the environment, where ps and /proc show them. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "files.h"
#include "provision.h"
#include "report.h"

#define EG_PIN_MAX 256

static int check_mode(int fd, const char *path, const char *what)
{
    struct stat st;

    if (fstat(fd, &st) != 0)
        return eg_prov_fail(EG_EXIT_NOINPUT, "%s file %s: %s", what, path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return eg_prov_fail(EG_EXIT_NOINPUT, "%s file %s is not a regular file", what, path);
    if (st.st_mode & S_IROTH)
        return eg_prov_fail(EG_EXIT_NOINPUT, "%s file %s is readable by everyone; chmod o-rwx it",
                            what, path);
    return EG_EXIT_OK;
}

int eg_prov_pin_read(const char *path, const char *what, char **out)
{
    char buf[EG_PIN_MAX + 2];
    ssize_t n;
    size_t len;
    int fd = -1, rc;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "%s file %s: %s", what, path, strerror(errno));
        goto out;
    }
    if ((rc = check_mode(fd, path, what)) != EG_EXIT_OK)
        goto out;
    if ((n = read(fd, buf, sizeof(buf) - 1)) < 0) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "%s file %s: %s", what, path, strerror(errno));
        goto out;
    }
    buf[n] = 0;
    len = strcspn(buf, "\r\n");
    if (len == 0 || len > EG_PIN_MAX) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT,
                          "%s file %s: the first line must hold a PIN of 1-%d bytes", what, path,
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
