#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tmpdir.h"

int eg_tmpdir_make(char *buf, size_t len, const char *base, const char *name)
{
    const char *tmp = base != NULL ? base : getenv("TMPDIR");
    int n = snprintf(buf, len, "%s/%s.XXXXXX", tmp != NULL ? tmp : "/tmp", name);

    if (n < 0 || (size_t)n >= len || mkdtemp(buf) == NULL) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

void eg_tmpdir_remove(const char *dir)
{
    char path[PATH_MAX + 256];
    DIR *d;
    struct dirent *e;

    if (dir == NULL || dir[0] == '\0' || (d = opendir(dir)) == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}
