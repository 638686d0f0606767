/*
 * estgated under load, on a fresh token, in one run:
 *   raw       C_Sign with the CA key the daemon will use, through the same
 *             module path (for p11kit: another client of the same server),
 *             1 and 2 threads, one session each: what the token can do
 *   cacerts   wrk on GET /.well-known/est/cacerts
 *   enroll    wrk on POST /.well-known/est/simpleenroll, Basic auth, TLS 1.3
 *             keep-alive, a different CSR on every request (bench/est_enroll.lua)
 * then the ledger is opened to check that it holds at least every certificate
 * wrk received, and the raw rates are measured again: the table gives the
 * mean of the two, and enroll/raw 2t divides by that mean.
 *
 * usage: bench_est softhsm|p11kit [seconds per measurement] [connections] [threads]
 *   threads: estgated's [server] threads; default: connections (civetweb
 *   keeps a worker on a keep-alive connection for as long as it is open)
 */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "bench_daemon.h"
#include "bench_util.h"
#include "child.h"
#include "estgated_fixture.h"
#include "ledger.h"
#include "token_harness.h"

/* The most enrollments per second the CSR file is made for: a generous upper bound. */
#define EG_BENCH_MAX_ENROLL_RATE 6000
#define EG_BENCH_SLICES          5

static eg_th *th;
static char dir[1024], ini[PATH_MAX], ca[PATH_MAX], daemon_log[PATH_MAX];
static char csr_file[PATH_MAX], auth_file[PATH_MAX], pass_file[PATH_MAX];
static unsigned port;
static pid_t daemon_pid;
static eg_child_result *res;

typedef struct wrk_result {
    double rps, p50_ms, p99_ms;
    long non2xx;
    char socket_errors[128];                  /* wrk's "Socket errors:" line, "" when none */
    long ok, refused, wrapped, first_refused; /* est_enroll.lua's counts */
    long requests;                            /* wrk's "N requests in" */
    double cpu_us;                            /* the daemon's CPU (user+sys) per request */
} wrk_result;

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

/* Runs a NULL-terminated command to completion in dir; its exit status. */
#define cmd(...) eg_child_cmd(dir, res, __VA_ARGS__)

/* ---- the token: provisioning and its raw sign rate ---- */

static eg_th_kind bench_kind;

static int provision(void)
{
    char tls[PATH_MAX];

    return eg_fx_provision(th, "CN=bench CA,O=estgate bench", ca, tpath(tls, "tls-chain.pem"), res);
}

typedef struct raw_worker {
    eg_bench_module *m;
    double seconds;
    unsigned long ops;
    int failed;
} raw_worker;

/* A session of its own, logged in, and the CA's private key in it. */
static int raw_session(eg_bench_module *m, CK_SESSION_HANDLE *h, CK_OBJECT_HANDLE *key)
{
    const char *pin = eg_th_user_pin(th);
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, "ca", 2}};
    CK_ULONG n = 0;
    CK_RV rv;

    if (m->fl->C_OpenSession(m->slot, CKF_SERIAL_SESSION, NULL, NULL, h) != CKR_OK)
        return -1;
    rv = m->fl->C_Login(*h, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin));
    if ((rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) ||
        m->fl->C_FindObjectsInit(*h, t, 2) != CKR_OK)
        return -1;
    m->fl->C_FindObjects(*h, key, 1, &n);
    m->fl->C_FindObjectsFinal(*h);
    return n == 1 ? 0 : -1;
}

static void *raw_run(void *arg)
{
    raw_worker *w = arg;
    CK_FUNCTION_LIST *fl = w->m->fl;
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE key;
    uint8_t digest[32], sig[256];
    CK_ULONG len;
    double end;

    memset(digest, 0x5a, sizeof(digest));
    if (raw_session(w->m, &h, &key) != 0) {
        w->failed = 1;
        goto out;
    }
    for (end = eg_bench_now() + w->seconds; eg_bench_now() < end; w->ops++) {
        len = sizeof(sig);
        if (fl->C_SignInit(h, &mech, key) != CKR_OK ||
            fl->C_Sign(h, digest, sizeof(digest), sig, &len) != CKR_OK) {
            w->failed = 1;
            break;
        }
    }
out:
    if (h != CK_INVALID_HANDLE)
        fl->C_CloseSession(h);
    return NULL;
}

/*
 * nthreads signers for seconds; adds their signatures and the time taken.
 * own (not NULL): each thread signs through a module instance of its own (own[i]).
 */
static int raw_slice(eg_bench_module *m, eg_bench_module *own, unsigned nthreads, double seconds,
                     double *ops, double *took)
{
    raw_worker w[2] = {{m, seconds, 0, 0}, {m, seconds, 0, 0}};
    pthread_t tid[2];
    double start = eg_bench_now();
    unsigned i;
    int rc = 0;

    for (i = 0; i < nthreads; i++) {
        if (own != NULL)
            w[i].m = &own[i];
        if (pthread_create(&tid[i], NULL, raw_run, &w[i]) != 0)
            return -1;
    }
    for (i = 0; i < nthreads; i++) {
        pthread_join(tid[i], NULL);
        rc |= w[i].failed ? -1 : 0;
        *ops += (double)w[i].ops;
    }
    *took += eg_bench_now() - start;
    return rc;
}

/*
 * Raw sign rates with 1 and 2 threads through one module instance, and, behind
 * p11-kit, with 2 threads through an instance each (a connection each to the
 * server, as estgated's [token] connections gives it). They take turns in short
 * slices so a slow spell of a shared machine falls on all alike. The instances
 * are finalised before the daemon starts. rate[2] is 0 for softhsm.
 */
static int raw_rates(double seconds, double rate[3])
{
    eg_bench_module m = {0}, own[2] = {{0}, {0}};
    double ops[3] = {0, 0, 0}, took[3] = {0, 0, 0};
    int s, t, kinds = bench_kind == EG_TH_P11KIT ? 3 : 2, rc = -1;

    if (eg_bench_module_open(eg_th_config(th), NULL, &m) != 0 ||
        /* Logged in here, one after the other: two SoftHSM processes behind the server
         * that log in at the same moment can miss the token (CKR_GENERAL_ERROR). */
        (kinds == 3 &&
         (eg_bench_module_open(eg_th_config(th), eg_th_user_pin(th), &own[0]) != 0 ||
          eg_bench_module_open(eg_th_config(th), eg_th_user_pin(th), &own[1]) != 0))) {
        fprintf(stderr, "bench: cannot open %s for raw C_Sign\n", eg_th_config(th)->module_path);
        goto out;
    }
    for (s = 0; s < EG_BENCH_SLICES; s++)
        for (t = 0; t < kinds; t++)
            if (raw_slice(&m, t == 2 ? own : NULL, t == 0 ? 1 : 2, seconds / EG_BENCH_SLICES,
                          &ops[t], &took[t]) != 0) {
                fprintf(stderr, "bench: raw C_Sign with the CA key failed\n");
                goto out;
            }
    for (t = 0; t < 3; t++)
        rate[t] = t < kinds ? ops[t] / took[t] : 0;
    rc = 0;
out:
    eg_bench_module_close(&own[1]);
    eg_bench_module_close(&own[0]);
    eg_bench_module_close(&m);
    return rc;
}

/* ---- the requests ---- */

/* One P-256 CSR for benchN.example.com (CN and SAN), as base64 DER on one line. */
static int csr_line(unsigned long i, FILE *f)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *san = NULL;
    unsigned char *der = NULL, *b64 = NULL;
    char cn[64], dns[80];
    int len, rc = -1;

    snprintf(cn, sizeof(cn), "bench%lu.example.com", i);
    snprintf(dns, sizeof(dns), "DNS:%s", cn);
    if (key == NULL || req == NULL || exts == NULL ||
        X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC,
                                   (unsigned char *)cn, -1, -1, 0) != 1 ||
        X509_REQ_set_pubkey(req, key) != 1 ||
        (san = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, dns)) == NULL ||
        sk_X509_EXTENSION_push(exts, san) <= 0)
        goto out;
    san = NULL; /* the stack owns it */
    if (X509_REQ_add_extensions(req, exts) != 1 || X509_REQ_sign(req, key, EVP_sha256()) <= 0 ||
        (len = i2d_X509_REQ(req, &der)) <= 0 ||
        (b64 = malloc(4 * ((size_t)len + 2) / 3 + 1)) == NULL)
        goto out;
    EVP_EncodeBlock(b64, der, len);
    rc = fprintf(f, "%s\n", b64) > 0 ? 0 : -1;
out:
    free(b64);
    OPENSSL_free(der);
    X509_EXTENSION_free(san);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    return rc;
}

typedef struct csr_part {
    unsigned long first, n; /* this part makes CSRs first, first + 2, ... below n */
    char *buf;              /* its lines */
    size_t len;
    int failed;
} csr_part;

static void *csr_run(void *arg)
{
    csr_part *p = arg;
    FILE *f = open_memstream(&p->buf, &p->len);
    unsigned long i;

    p->failed = f == NULL;
    for (i = p->first; !p->failed && i < p->n; i += 2)
        p->failed = csr_line(i, f) != 0;
    if (f != NULL && fclose(f) != 0)
        p->failed = 1;
    return NULL;
}

/* n CSRs into csr_file, made by two threads; the time it took in *took. */
static int make_csrs(unsigned long n, double *took)
{
    csr_part part[2] = {{0, n, NULL, 0, 0}, {1, n, NULL, 0, 0}};
    pthread_t tid[2];
    double start = eg_bench_now();
    FILE *f = NULL;
    int i, started = 0, rc = -1;

    for (i = 0; i < 2; i++, started++)
        if (pthread_create(&tid[i], NULL, csr_run, &part[i]) != 0)
            break;
    for (i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    if (started < 2 || part[0].failed || part[1].failed || (f = fopen(csr_file, "w")) == NULL ||
        fwrite(part[0].buf, 1, part[0].len, f) != part[0].len ||
        fwrite(part[1].buf, 1, part[1].len, f) != part[1].len)
        goto out;
    rc = 0;
out:
    if (f != NULL && fclose(f) != 0)
        rc = -1;
    if (rc == 0)
        *took = eg_bench_now() - start;
    free(part[0].buf);
    free(part[1].buf);
    return rc;
}

/* ---- the daemon ---- */

/* With EG_BENCH_IPV6, the requests go to the second listener, [::1], through the relay. */
static bool ipv6;

static int daemon_start(void)
{
    unsigned ports[2];

    if (eg_fx_daemon_start(ini, daemon_log, &daemon_pid, ports, ipv6 ? 2 : 1) != 0)
        return -1;
    port = ports[ipv6 ? 1 : 0];
    return 0;
}

static int daemon_stop(void)
{
    return eg_fx_daemon_stop(&daemon_pid, SIGTERM);
}

/* ---- wrk ---- */

/* "4.80ms" and the like, in milliseconds; -1 when it does not parse. */
static double wrk_ms(const char *text)
{
    char *end;
    double v = strtod(text, &end);

    if (end == text)
        return -1;
    if (strncmp(end, "us", 2) == 0)
        return v / 1000;
    if (strncmp(end, "ms", 2) == 0)
        return v;
    if (*end == 's')
        return v * 1000;
    if (*end == 'm')
        return v * 60000;
    return -1;
}

static int wrk_parse(const char *out, wrk_result *r)
{
    const char *p50 = strstr(out, "Latency Distribution"), *p99, *rps, *p;

    memset(r, 0, sizeof(*r));
    if (p50 == NULL || (p50 = strstr(p50, "50%")) == NULL || (p99 = strstr(p50, "99%")) == NULL ||
        (rps = strstr(out, "Requests/sec:")) == NULL)
        return -1;
    r->p50_ms = wrk_ms(p50 + 3 + strspn(p50 + 3, " \t"));
    r->p99_ms = wrk_ms(p99 + 3 + strspn(p99 + 3, " \t"));
    r->rps = strtod(rps + strlen("Requests/sec:"), NULL);
    if ((p = strstr(out, "Non-2xx or 3xx responses:")) != NULL)
        r->non2xx = strtol(p + strlen("Non-2xx or 3xx responses:"), NULL, 10);
    if ((p = strstr(out, "Socket errors:")) != NULL)
        snprintf(r->socket_errors, sizeof(r->socket_errors), "%.*s", (int)strcspn(p, "\n"), p);
    if ((p = strstr(out, " requests in ")) != NULL) {
        while (p > out && p[-1] != ' ' && p[-1] != '\n')
            p--;
        r->requests = strtol(p, NULL, 10);
    }
    if ((p = strstr(out, "est_enroll:")) != NULL &&
        sscanf(p, "est_enroll: ok=%ld refused=%ld wrapped=%ld first_refused=%ld", &r->ok,
               &r->refused, &r->wrapped, &r->first_refused) != 4)
        return -1;
    return r->p50_ms >= 0 && r->p99_ms >= 0 && r->rps > 0 ? 0 : -1;
}

/*
 * The daemon's CPU time so far (user + system, all threads), in seconds; -1
 * when unreadable. Per request, it is a cost that other load on a shared
 * machine changes far less than it changes the rates.
 */
static double daemon_cpu_s(void)
{
    char path[64], buf[1024], *p;
    unsigned long ut, st;
    size_t n = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)daemon_pid);
    if ((f = fopen(path, "r")) != NULL) {
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    /* After the command name (which may hold spaces): state, 5 ints, 5 counters, utime, stime. */
    if ((p = strrchr(buf, ')')) == NULL ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* wrk -t2 on path for seconds with conns connections; script and its arguments optional. */
static int wrk_run(const char *path, double seconds, unsigned conns, const char *script,
                   wrk_result *r)
{
    char url[256], c[16], d[32], nthreads[] = "2";
    double cpu;
    char *argv[] = {"wrk", "-t", nthreads, "-c", c,    "-d", d,    "--latency",
                    url,   NULL, NULL,     NULL, NULL, NULL, NULL, NULL};

    snprintf(url, sizeof(url), "https://%s:%u/.well-known/est/%s", ipv6 ? "[::1]" : "127.0.0.1",
             port, path);
    snprintf(c, sizeof(c), "%u", conns);
    snprintf(d, sizeof(d), "%.0fs", seconds);
    if (script != NULL) {
        argv[8] = "-s";
        argv[9] = (char *)script;
        argv[10] = url;
        argv[11] = "--";
        argv[12] = csr_file;
        argv[13] = nthreads;
        argv[14] = auth_file;
    }
    cpu = daemon_cpu_s();
    if (eg_child_run(dir, NULL, argv, res) != 0 || wrk_parse(res->out, r) != 0) {
        fprintf(stderr, "bench: wrk on %s failed:\n%s\n%s\n", path, res->out, res->err);
        return -1;
    }
    if (cpu >= 0 && r->requests > 0)
        r->cpu_us = (daemon_cpu_s() - cpu) * 1e6 / (double)r->requests;
    printf("\nwrk %s:\n%s", path, res->out);
    return 0;
}

/* ---- the run ---- */

static int ledger_count(int64_t *issued)
{
    char path[PATH_MAX];
    eg_ledger *lg = NULL;

    if (eg_ledger_open(tpath(path, "ledger.db"), NULL, &lg) != 0)
        return -1;
    *issued = eg_ledger_count_issued(lg);
    eg_ledger_close(lg);
    return *issued >= 0 ? 0 : -1;
}

static void print_table(const char *kind, const double raw[3], const wrk_result *cacerts,
                        const wrk_result *enroll)
{
    printf("\n| token | raw C_Sign 1t/s | raw C_Sign 2t/s | cacerts req/s | cacerts p50 ms "
           "| cacerts p99 ms | enroll req/s | enroll p50 ms | enroll p99 ms | enroll/raw 2t |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    printf("| %s | %.0f | %.0f | %.0f | %.2f | %.2f | %.0f | %.2f | %.2f | %.1f%% |\n", kind,
           raw[0], raw[1], cacerts->rps, cacerts->p50_ms, cacerts->p99_ms, enroll->rps,
           enroll->p50_ms, enroll->p99_ms, 100.0 * enroll->rps / raw[1]);
    if (raw[2] > 0)
        printf("\nraw C_Sign 2t, a connection each: %.0f/s; enroll/raw 2t (a connection each) "
               "%.1f%%; against the higher of the two raw rates %.1f%%\n",
               raw[2], 100.0 * enroll->rps / raw[2],
               100.0 * enroll->rps / (raw[2] > raw[1] ? raw[2] : raw[1]));
}

/* Fails a run whose numbers would not mean what they say. */
static int check_run(const wrk_result *cacerts, const wrk_result *enroll, int64_t issued)
{
    int rc = 0;

    if (cacerts->non2xx != 0 || enroll->refused != 0 || enroll->non2xx != 0) {
        fprintf(stderr, "bench: refused answers: cacerts %ld, enroll %ld (first status %ld)\n",
                cacerts->non2xx, enroll->refused, enroll->first_refused);
        rc = -1;
    }
    if (enroll->wrapped != 0) {
        fprintf(stderr, "bench: the CSR file ran out %ld times: raise EG_BENCH_MAX_ENROLL_RATE\n",
                enroll->wrapped);
        rc = -1;
    }
    if (issued < enroll->ok) {
        fprintf(stderr, "bench: ledger holds %lld certificates, wrk received %ld\n",
                (long long)issued, enroll->ok);
        rc = -1;
    }
    return rc;
}

static int bench(eg_th_kind kind, double seconds, unsigned conns, unsigned threads)
{
    char script[PATH_MAX];
    unsigned long ncsr = (unsigned long)(seconds * EG_BENCH_MAX_ENROLL_RATE) + 1000;
    double raw[3] = {0, 0, 0}, before[3], after[3], took = 0;
    wrk_result cacerts, enroll;
    int64_t issued = -1;

    snprintf(script, sizeof(script), "%s/est_enroll.lua", EG_BENCH_SOURCE_DIR);
    if (provision() != 0 || raw_rates(seconds, before) != 0)
        return -1;
    printf("raw C_Sign, CA key (P-256): %.0f/s 1 thread, %.0f/s 2 threads", before[0], before[1]);
    if (before[2] > 0)
        printf(", %.0f/s 2 threads with a connection each", before[2]);
    printf("\n");
    if (make_csrs(ncsr, &took) != 0)
        return -1;
    printf("%lu CSRs (P-256, software) made by 2 threads in %.1f s\n", ncsr, took);
    if (eg_bench_daemon_config(th, threads, ca, "key_types = ec:P-256\n", pass_file, auth_file,
                               ini) != 0 ||
        daemon_start() != 0)
        return -1;
    printf("estgated pid %d on port %u, threads = %u\n", (int)daemon_pid, port, threads);
    fflush(stdout);
    if (wrk_run("cacerts", seconds, conns, NULL, &cacerts) != 0 ||
        wrk_run("simpleenroll", seconds, conns, script, &enroll) != 0)
        return -1;
    if (daemon_stop() != 0) {
        fprintf(stderr, "bench: estgated did not exit cleanly on SIGTERM\n");
        return -1;
    }
    if (ledger_count(&issued) != 0 || raw_rates(seconds, after) != 0)
        return -1;
    /*
     * This host's speed drifts by half within minutes, so the raw rate is
     * measured on both sides of the requests and the table uses the mean.
     */
    printf("raw C_Sign after the requests: %.0f/s 1 thread, %.0f/s 2 threads", after[0], after[1]);
    if (after[2] > 0)
        printf(", %.0f/s 2 threads with a connection each", after[2]);
    printf("\n");
    for (int t = 0; t < 3; t++)
        raw[t] = (before[t] + after[t]) / 2;
    print_table(eg_th_kind_name(kind), raw, &cacerts, &enroll);
    printf("\ndaemon CPU per request (user+sys): cacerts %.0f us, enroll %.0f us\n", cacerts.cpu_us,
           enroll.cpu_us);
    printf("ledger: %lld certificates; wrk received %ld (200), refused %ld\n", (long long)issued,
           enroll.ok, enroll.refused);
    if (cacerts.socket_errors[0] || enroll.socket_errors[0])
        printf("cacerts: %s\nenroll: %s\n", cacerts.socket_errors, enroll.socket_errors);
    return check_run(&cacerts, &enroll, issued);
}

int main(int argc, char **argv)
{
    double seconds = argc > 2 ? atof(argv[2]) : 10.0;
    unsigned conns = argc > 3 ? (unsigned)atoi(argv[3]) : 64;
    unsigned threads = argc > 4 ? (unsigned)atoi(argv[4]) : conns;
    eg_th_kind kind;
    int rc = 1;

    if (argc < 2 || eg_th_kind_parse(argv[1], &kind) != 0 || kind == EG_TH_NSS || seconds < 1 ||
        conns < 2 || threads < 1) {
        fprintf(stderr, "usage: %s softhsm|p11kit [seconds] [connections] [threads]\n", argv[0]);
        return 64;
    }
    /*
     * civetweb keeps a worker on a keep-alive connection while it stays open;
     * the rest wait before their TLS handshake, where wrk neither times them
     * out nor counts them, so fewer threads look faster than they are.
     */
    if (threads < conns)
        fprintf(stderr, "bench: %u threads for %u connections: %u connections starve unseen\n",
                threads, conns, conns - threads);
    /* Where eg_child_built finds estgated and estgate-provision. */
    setenv("EG_BUILD_DIR", EG_BENCH_BUILD_DIR, 0);
    ipv6 = getenv("EG_BENCH_IPV6") != NULL;
    bench_kind = kind;
    if ((res = calloc(1, sizeof(*res))) == NULL || eg_th_create(kind, "bench", &th) != 0)
        goto out;
    snprintf(dir, sizeof(dir), "%s", eg_th_dir(th));
    tpath(ini, "estgated.ini");
    tpath(ca, "ca.pem");
    tpath(daemon_log, "estgated.log");
    tpath(csr_file, "csrs.b64");
    tpath(auth_file, "basic.b64");
    tpath(pass_file, "basic.pass");
    printf("token: %s, %.0f s per measurement, wrk -t2 -c%u, estgated threads = %u, calls = %s, "
           "connections = %s\n",
           eg_th_kind_name(kind), seconds, conns, threads,
           getenv("EG_BENCH_CALLS") != NULL ? getenv("EG_BENCH_CALLS") : "auto",
           getenv("EG_BENCH_CONNECTIONS") != NULL ? getenv("EG_BENCH_CONNECTIONS") : "auto");
    rc = bench(kind, seconds, conns, threads) == 0 ? 0 : 1;
out:
    if (daemon_pid > 0)
        daemon_stop();
    eg_th_destroy(th);
    free(res);
    return rc;
}
