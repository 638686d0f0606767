#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_daemon.h"
#include "child.h"
#include "estgated_fixture.h"

int eg_bench_daemon_config(const eg_th *th, unsigned threads, const char *ca_chain,
                           const char *profile_extra, const char *pass_file, const char *auth_file,
                           const char *ini)
{
    const char *calls = getenv("EG_BENCH_CALLS"), *conns = getenv("EG_BENCH_CONNECTIONS");
    char *hash = NULL, text[8192], server[64], token[96] = "", label[128];
    int n, m, rc = -1;

    if (eg_fx_basic_user("bench", pass_file, auth_file, &hash) != 0)
        return -1;
    /* EG_BENCH_IPV6=1: a second listener on [::1], served through the relay (bench_est uses it) */
    snprintf(server, sizeof(server), "threads = %u\n%s", threads,
             getenv("EG_BENCH_IPV6") != NULL ? "listen = [::1]:0\n" : "");
    /* [token] calls for the daemon, to compare the modes (docs/benchmarks.md). */
    if (calls != NULL && *calls != '\0')
        snprintf(token, sizeof(token), "calls = %.32s\n", calls);
    /* [token] connections likewise (EG_BENCH_CONNECTIONS=1: one, as before they came). */
    if (conns != NULL && *conns != '\0')
        snprintf(token + strlen(token), sizeof(token) - strlen(token), "connections = %.16s\n",
                 conns);
    if ((n = eg_fx_ini_head(th, server, token, text, sizeof(text))) < 0)
        goto out;
    m = snprintf(text + n, sizeof(text) - (size_t)n,
                 "\n[profile default]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = basic\nuser = bench:%s\n"
                 "san = dns:.example.com\nmax_days = 30\neku = clientAuth\n%s",
                 eg_fx_uri_label(th, label, sizeof(label)), ca_chain, hash, profile_extra);
    if (m > 0 && (size_t)m < sizeof(text) - (size_t)n)
        rc = eg_file_write(ini, text, (size_t)(n + m), 0600);
out:
    free(hash);
    return rc;
}
