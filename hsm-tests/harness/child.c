#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"

extern char **environ;

const char *eg_child_built(const char *rel, char *buf)
{
    const char *dir = getenv("EG_BUILD_DIR");

    snprintf(buf, PATH_MAX, "%s/%s", dir != NULL ? dir : "build", rel);
    return buf;
}

const char *eg_child_which(const char *name, char *buf)
{
    const char *path = getenv("PATH");
    const char *p, *end;

    if (strchr(name, '/') != NULL) {
        snprintf(buf, PATH_MAX, "%s", name);
        return access(buf, X_OK) == 0 ? buf : NULL;
    }
    for (p = path ? path : "/usr/bin:/bin"; *p != 0; p = *end ? end + 1 : end) {
        end = strchrnul(p, ':');
        snprintf(buf, PATH_MAX, "%.*s/%s", (int)(end - p), p, name);
        if (access(buf, X_OK) == 0)
            return buf;
    }
    return NULL;
}

static void read_text(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;

    buf[n] = 0;
    if (f != NULL)
        fclose(f);
}

int eg_child_wait(pid_t pid)
{
    int status;

    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int spawn(char *const argv[], const char *in, const char *out, const char *err, int append,
                 pid_t *pid)
{
    int flags = O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC);
    posix_spawn_file_actions_t fa;
    char exe[PATH_MAX];
    int rc;

    if (eg_child_which(argv[0], exe) == NULL) {
        printf("\n  [%s: not found]\n", argv[0]);
        return -1;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, in ? in : "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out, flags, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, err, flags, 0600);
    rc = posix_spawn(pid, exe, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        printf("\n  [posix_spawn %s: %s]\n", exe, strerror(rc));
        return -1;
    }
    return 0;
}

int eg_child_run(const char *dir, const char *in_path, char *const argv[], eg_child_result *r)
{
    char outp[PATH_MAX], errp[PATH_MAX];
    pid_t pid;
    int i;

    snprintf(outp, sizeof(outp), "%s/child.out", dir);
    snprintf(errp, sizeof(errp), "%s/child.err", dir);
    r->out[0] = r->err[0] = 0;
    r->code = -1;
    if (spawn(argv, in_path, outp, errp, 0, &pid) != 0)
        return -1;
    r->code = eg_child_wait(pid);
    read_text(outp, r->out, sizeof(r->out));
    read_text(errp, r->err, sizeof(r->err));
    if (r->code != 0) {
        printf("\n  [exit %d:", r->code);
        for (i = 0; argv[i] != NULL; i++)
            printf(" %s", argv[i]);
        printf("]\n  %s", r->err);
    }
    return r->code;
}

int eg_child_start(char *const argv[], const char *log_path, pid_t *pid)
{
    return spawn(argv, NULL, log_path, log_path, 1, pid);
}

int eg_child_cmd(const char *dir, eg_child_result *r, const char *first, ...)
{
    char *argv[64];
    va_list ap;
    int n = 0;

    argv[n++] = (char *)first;
    va_start(ap, first);
    while (n < 63 && (argv[n] = va_arg(ap, char *)) != NULL)
        n++;
    va_end(ap);
    argv[n] = NULL;
    return eg_child_run(dir, NULL, argv, r);
}

char *eg_file_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t got = 0;
    long n;

    if (f != NULL && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
        fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL) {
        got = fread(buf, 1, (size_t)n, f);
        buf[got] = 0;
    }
    if (f != NULL)
        fclose(f);
    if (buf != NULL && len != NULL)
        *len = got;
    return buf;
}

int eg_file_write(const char *path, const void *data, size_t len, mode_t mode)
{
    FILE *f = fopen(path, "wb");
    int ok = f != NULL && fwrite(data, 1, len, f) == len;

    if (f != NULL && fclose(f) != 0)
        ok = 0;
    return ok && chmod(path, mode) == 0 ? 0 : -1;
}

bool eg_file_line_has(const char *path, const char *a, const char *b)
{
    char *text = eg_file_read(path, NULL), *line, *save = NULL;
    bool found = false;

    for (line = text ? strtok_r(text, "\n", &save) : NULL; line != NULL && !found;
         line = strtok_r(NULL, "\n", &save))
        found = strstr(line, a) != NULL && strstr(line, b) != NULL;
    free(text);
    return found;
}

int eg_answer_ref(const char *body, char ref[13])
{
    const char *p = body ? strstr(body, "ref=") : NULL;

    if (p == NULL || strspn(p + 4, "0123456789abcdef") != 8)
        return -1;
    memcpy(ref, p, 12);
    ref[12] = '\0';
    return 0;
}

int eg_file_count(const char *path, const char *needle)
{
    char *text = eg_file_read(path, NULL), *p = text;
    int n = 0;

    while (p != NULL && (p = strstr(p, needle)) != NULL) {
        n++;
        p += strlen(needle);
    }
    free(text);
    return n;
}

int eg_file_write_replaced(const char *path, const char *text, const char *from, const char *to)
{
    const char *at = strstr(text, from);
    FILE *fp;

    if (at == NULL || (fp = fopen(path, "w")) == NULL)
        return -1;
    fprintf(fp, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    return fclose(fp) == 0 ? 0 : -1;
}
