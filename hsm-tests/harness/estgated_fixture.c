#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "estgated_fixture.h"

int eg_fx_provision(eg_th *th, const char *ca_subject, const char *ca_out, const char *tls_out,
                    eg_child_result *r)
{
    const eg_token_config *c = eg_th_config(th);
    char tool[PATH_MAX];

    eg_child_built("provisioning/estgate-provision", tool);
    if (eg_child_cmd(eg_th_dir(th), r, tool, "ca", "create", "--module", c->module_path, "--token",
                     c->token_label, "--pin-file", c->pin_file, "--label", "ca", "--key", "ec-p256",
                     "--subject", ca_subject, "--self-signed", "--days", "3650", "--out", ca_out,
                     NULL) != 0)
        return -1;
    return eg_child_cmd(eg_th_dir(th), r, tool, "tls", "create", "--module", c->module_path,
                        "--token", c->token_label, "--pin-file", c->pin_file, "--label", "tls",
                        "--key", "ec-p256", "--ca-label", "ca", "--dns", "localhost", "--ip",
                        "127.0.0.1", "--days", "30", "--out", tls_out, NULL) == 0
               ? 0
               : -1;
}

/* The ports of the first nports "listening on" lines of log; 0 when all are there. */
static int listening(const char *log, unsigned *ports, size_t nports)
{
    static const char tag[] = "listening on https://127.0.0.1:";
    const char *p = log;
    size_t i;

    for (i = 0; i < nports; i++) {
        if ((p = strstr(p, tag)) == NULL)
            return -1;
        p += strlen(tag);
        ports[i] = (unsigned)atoi(p);
    }
    return 0;
}

int eg_fx_daemon_start(const char *ini, const char *log, pid_t *pid, unsigned *ports, size_t nports)
{
    struct timespec tick = {0, 50 * 1000 * 1000};
    char estgated[PATH_MAX];
    char *argv[] = {estgated, "-c", (char *)ini, NULL};
    char *text;
    int i, up = -1;

    eg_child_built("appliance/estgated", estgated);
    unlink(log);
    if (eg_child_start(argv, log, pid) != 0)
        return -1;
    for (i = 0; i < 400 && up != 0; i++) { /* 20 s: a p11-kit token can be slow to open */
        nanosleep(&tick, NULL);
        if ((text = eg_file_read(log, NULL)) != NULL)
            up = listening(text, ports, nports);
        free(text);
        if (up != 0 && kill(*pid, 0) != 0)
            break;
    }
    if (up != 0 && (text = eg_file_read(log, NULL)) != NULL) {
        printf("\n  estgated did not start:\n%s\n", text);
        free(text);
    }
    return up;
}

int eg_fx_daemon_stop(pid_t *pid, int sig)
{
    int rc;

    if (*pid <= 0)
        return -1;
    kill(*pid, sig);
    rc = eg_child_wait(*pid);
    *pid = 0;
    return rc;
}
