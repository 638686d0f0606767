/* /proc/PID/mem reading for the never-in-memory tests. */
#include "procmem.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_MAPPING (1ULL << 30)

/* One line of /proc/PID/maps: whether it is worth reading, and its range. */
static bool wanted(const char *line, uintptr_t *lo, uintptr_t *hi)
{
    char perms[8] = "", path[512] = "";
    unsigned long long a, b, off, inode;
    unsigned dmaj, dmin;

    if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu %511[^\n]", &a, &b, perms, &off, &dmaj, &dmin,
               &inode, path) < 7)
        return false;
    *lo = (uintptr_t)a;
    *hi = (uintptr_t)b;
    if (perms[0] != 'r' || strcmp(path, "[vvar]") == 0 || strcmp(path, "[vsyscall]") == 0)
        return false;
    /* AddressSanitizer's shadow reserves terabytes that read as zeros: not data. */
    if (b - a > MAX_MAPPING)
        return false;
    /* Code and constants of files cannot hold what the process computed. */
    return perms[1] == 'w' || path[0] == '\0' || path[0] == '[' || inode == 0;
}

static int append(int fd, uintptr_t lo, uintptr_t hi, unsigned char **buf, size_t *len, size_t *cap)
{
    size_t n = hi - lo, got = 0;
    ssize_t r;

    if (*len + n > *cap) {
        size_t ncap = (*len + n) * 2;
        unsigned char *nb = realloc(*buf, ncap);

        if (nb == NULL)
            return -1;
        *buf = nb;
        *cap = ncap;
    }
    /* A page may be unreadable (guard pages): what can be read is kept. */
    while (got < n && (r = pread(fd, *buf + *len + got, n - got, (off_t)(lo + got))) > 0)
        got += (size_t)r;
    *len += got;
    return 0;
}

int eg_procmem_dump(pid_t pid, unsigned char **out, size_t *len)
{
    char path[64], line[1024];
    FILE *maps;
    int fd = -1, rc = -1;
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0;
    uintptr_t lo, hi;

    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    if ((maps = fopen(path, "r")) == NULL)
        return -1;
    snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
    if ((fd = open(path, O_RDONLY)) < 0)
        goto out;
    while (fgets(line, sizeof(line), maps) != NULL) {
        if (wanted(line, &lo, &hi) && append(fd, lo, hi, &buf, &n, &cap) != 0)
            goto out;
    }
    if (n == 0)
        goto out;
    *out = buf;
    *len = n;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    if (fd >= 0)
        close(fd);
    fclose(maps);
    return rc;
}

bool eg_mem_contains(const unsigned char *hay, size_t hlen, const void *needle, size_t nlen)
{
    return nlen > 0 && hay != NULL && memmem(hay, hlen, needle, nlen) != NULL;
}
