/* systemd's readiness and status notifications (notify.h). */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/socket.h>
#include <sys/un.h>

#define MESSAGE_MAX 1024 /* a STATUS line and a few variables; systemd reads up to a page */

static struct sockaddr_un addr;
static socklen_t addr_len; /* 0: no one to tell */
static bool said;
static unsigned long long watchdog_usec; /* 0: none */

/* WATCHDOG_USEC when it is meant for this process (sd_watchdog_enabled(3)'s rule). */
static unsigned long long watchdog_from_env(void)
{
    const char *u = getenv("WATCHDOG_USEC"), *p = getenv("WATCHDOG_PID");
    unsigned long long usec, pid;
    char *end;

    if (u == NULL)
        return 0;
    errno = 0;
    usec = strtoull(u, &end, 10);
    if (errno != 0 || end == u || *end != 0 || usec == 0) {
        fprintf(stderr, "estgated: WATCHDOG_USEC is not a number of microseconds; systemd's "
                        "watchdog is not fed\n");
        return 0;
    }
    if (p != NULL) {
        pid = strtoull(p, &end, 10);
        if (end == p || *end != 0 || pid != (unsigned long long)getpid())
            return 0; /* another process's watchdog */
    }
    return usec;
}

int eg_notify_init(void)
{
    const char *e = getenv("NOTIFY_SOCKET");
    size_t n;

    if (e == NULL) {
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        return 0;
    }
    n = strlen(e);
    if ((e[0] != '/' && e[0] != '@') || n < 2 || n >= sizeof(addr.sun_path)) {
        fprintf(stderr, "estgated: NOTIFY_SOCKET is not a socket path or an abstract name; "
                        "systemd is not told when estgated is ready\n");
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        return -1;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, e, n);
    if (e[0] == '@')
        addr.sun_path[0] = 0; /* abstract: a leading NUL, and no NUL at the end */
    addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (e[0] == '/'));
    watchdog_usec = watchdog_from_env();
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    return 0;
}

unsigned long long eg_notify_watchdog_usec(void)
{
    return addr_len == 0 ? 0 : watchdog_usec;
}

int eg_notify(const char *fmt, ...)
{
    char msg[MESSAGE_MAX];
    va_list ap;
    ssize_t sent;
    int fd, n;

    if (addr_len == 0)
        return 0;
    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n >= sizeof(msg))
        n = (int)sizeof(msg) - 1; /* a long STATUS is cut, the variables before it stay */
    /* A socket per message, as sd_notify does: nothing stays open between them. */
    if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0) {
        sent = -1;
    } else {
        sent = sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (const struct sockaddr *)&addr, addr_len);
        close(fd);
    }
    if (sent == n)
        return 0;
    if (!said) {
        said = true;
        fprintf(stderr, "estgated: cannot tell systemd the service's state: %s\n",
                sent < 0 ? strerror(errno) : "message cut short");
    }
    return -1;
}
