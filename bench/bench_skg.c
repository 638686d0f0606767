/*
 * serverkeygen under load against the token's own key-generation rate, on a
 * fresh token, in one run:
 *   raw     C_GenerateKeyPair of a session key pair (sensitive, extractable,
 *           as appliance/skg.c makes it) + C_DestroyObject of both halves, on
 *           the module's function list at the daemon's module path, one
 *           session per thread, 1 and 2 threads
 *   wrk     POST /.well-known/est/serverkeygen, Basic auth, TLS 1.3
 *           keep-alive, a different CSR every time (bench/est_skg.lua): P-256
 *           with 16 connections, RSA-2048 with 2; plaintext, and on nss also
 *           encrypted to a pre-shared key (DecryptKeyIdentifier)
 * Raw and wrk take turns in slices while estgated runs (idle during the raw
 * slices), so a slow spell of the shared machine falls on all alike. The
 * ledger must grow by the answers wrk received, plus those in flight when
 * it stopped.
 *
 * usage: bench_skg softhsm|nss SECONDS
 *   SECONDS: P-256 raw (per thread count) and each P-256 wrk measurement, in
 *   all; RSA-2048 raw the same, RSA-2048 wrk three times as long
 */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sqlite3.h>

#include "bench_daemon.h"
#include "bench_util.h"
#include "child.h"
#include "estgated_fixture.h"
#include "token_harness.h"

#define SLICES          5
#define P256_CONNS      16
#define RSA_CONNS       2
#define RSA_WRK_FACTOR  3 /* RSA keygen is ~5/s: wrk needs longer for a stable count */
#define KEK_ID          "0a1b2c3d"
#define OID_DECRYPT_KID "1.2.840.113549.1.9.16.2.37"

static eg_th_kind kind;
static eg_th *th;
static char dir[1024], ini[PATH_MAX], ca[PATH_MAX], daemon_log[PATH_MAX], auth_file[PATH_MAX];
static char pass_file[PATH_MAX];
static unsigned port;
static pid_t daemon_pid;
static eg_child_result *res;

typedef enum bench_key { KEY_P256, KEY_RSA } bench_key;

/* One row of the table: a key and a mode, its wrk totals over all slices. */
typedef struct load {
    bench_key key;
    bool encrypt;
    char csr_file[PATH_MAX];
    long ok, refused, first_refused, sock_errors;
    double secs;             /* wrk's own durations, summed */
    double p50_sum, p99_sum; /* slice percentiles (ms) weighted by the slice's answers */
    long ledger_growth, in_flight;
} load;

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

static const char *key_name(bench_key k)
{
    return k == KEY_P256 ? "P-256" : "RSA-2048";
}

/* ---- raw key generation in the token ---- */

typedef struct raw_worker {
    eg_bench_module *m;
    bench_key key;
    double seconds;
    unsigned long ops;
    double took; /* the loop's own time, without the session set-up */
    int failed;
} raw_worker;

/* skg.c's pair (signer/p11_wrap.c eg_p11_temp_keypair): session objects, private half
 * private, sensitive and extractable; then both halves destroyed. */
static int raw_one(CK_FUNCTION_LIST *fl, CK_SESSION_HANDLE h, bench_key key)
{
    static const unsigned char p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                         0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG bits = 2048;
    CK_BYTE f4[] = {0x01, 0x00, 0x01};
    CK_MECHANISM ec = {CKM_EC_KEY_PAIR_GEN, NULL, 0}, rsa = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pub_ec[] = {{CKA_TOKEN, &no, sizeof(no)},
                             {CKA_EC_PARAMS, (void *)p256, sizeof(p256)},
                             {CKA_VERIFY, &yes, sizeof(yes)}};
    CK_ATTRIBUTE pub_rsa[] = {{CKA_TOKEN, &no, sizeof(no)},
                              {CKA_MODULUS_BITS, &bits, sizeof(bits)},
                              {CKA_PUBLIC_EXPONENT, f4, sizeof(f4)},
                              {CKA_VERIFY, &yes, sizeof(yes)}};
    CK_ATTRIBUTE priv[] = {{CKA_TOKEN, &no, sizeof(no)},
                           {CKA_PRIVATE, &yes, sizeof(yes)},
                           {CKA_SENSITIVE, &yes, sizeof(yes)},
                           {CKA_EXTRACTABLE, &yes, sizeof(yes)},
                           {CKA_SIGN, &yes, sizeof(yes)}};
    CK_OBJECT_HANDLE hpub, hpriv;
    CK_RV rv;

    rv = key == KEY_P256 ? fl->C_GenerateKeyPair(h, &ec, pub_ec, 3, priv, 5, &hpub, &hpriv)
                         : fl->C_GenerateKeyPair(h, &rsa, pub_rsa, 4, priv, 5, &hpub, &hpriv);
    if (rv != CKR_OK)
        return -1;
    rv = fl->C_DestroyObject(h, hpub);
    return fl->C_DestroyObject(h, hpriv) == CKR_OK && rv == CKR_OK ? 0 : -1;
}

static void *raw_run(void *arg)
{
    raw_worker *w = arg;
    CK_FUNCTION_LIST *fl = w->m->fl;
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    double start, end;

    if (fl->C_OpenSession(w->m->slot, CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK) {
        w->failed = 1;
        return NULL;
    }
    start = eg_bench_now();
    for (end = start + w->seconds; eg_bench_now() < end; w->ops++)
        if (raw_one(fl, h, w->key) != 0) {
            w->failed = 1;
            break;
        }
    w->took = eg_bench_now() - start;
    fl->C_CloseSession(h);
    return NULL;
}

/* nthreads key generators for seconds; adds their pairs and the longest loop's time. */
static int raw_slice(eg_bench_module *m, bench_key key, unsigned nthreads, double seconds,
                     double *ops, double *took)
{
    raw_worker w[2] = {{m, key, seconds, 0, 0, 0}, {m, key, seconds, 0, 0, 0}};
    pthread_t tid[2];
    double longest = 0;
    unsigned i, started;
    int rc = 0;

    for (started = 0; started < nthreads; started++)
        if (pthread_create(&tid[started], NULL, raw_run, &w[started]) != 0)
            break;
    for (i = 0; i < started; i++) {
        pthread_join(tid[i], NULL);
        rc |= w[i].failed ? -1 : 0;
        *ops += (double)w[i].ops;
        longest = w[i].took > longest ? w[i].took : longest;
    }
    *took += longest;
    return started == nthreads ? rc : -1;
}

/* ---- the requests: one CSR per key and mode ---- */

/* One CSR for NAME (CN and SAN) signed by k, as base64 DER on a line of f; with kek, a
 * DecryptKeyIdentifier attribute naming the pre-shared key. */
static int write_csr_line(FILE *f, EVP_PKEY *k, const char *name, bool kek)
{
    static const unsigned char kid[] = {0x0a, 0x1b, 0x2c, 0x3d};
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *san = NULL;
    ASN1_OBJECT *oid = OBJ_txt2obj(OID_DECRYPT_KID, 1);
    unsigned char *der = NULL, *b64 = NULL;
    char dns[96];
    int len, rc = -1;

    snprintf(dns, sizeof(dns), "DNS:%s", name);
    if (req == NULL || exts == NULL || oid == NULL ||
        X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC,
                                   (const unsigned char *)name, -1, -1, 0) != 1 ||
        X509_REQ_set_pubkey(req, k) != 1 ||
        (san = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, dns)) == NULL ||
        sk_X509_EXTENSION_push(exts, san) <= 0)
        goto out;
    san = NULL; /* the stack owns it */
    if (X509_REQ_add_extensions(req, exts) != 1 ||
        (kek && X509_REQ_add1_attr_by_OBJ(req, oid, V_ASN1_OCTET_STRING, kid, sizeof(kid)) != 1) ||
        X509_REQ_sign(req, k, EVP_sha256()) <= 0 || (len = i2d_X509_REQ(req, &der)) <= 0 ||
        (b64 = malloc(4 * ((size_t)len + 2) / 3 + 1)) == NULL)
        goto out;
    EVP_EncodeBlock(b64, der, len);
    rc = fprintf(f, "%s\n", b64) > 0 ? 0 : -1;
out:
    free(b64);
    OPENSSL_free(der);
    ASN1_OBJECT_free(oid);
    X509_EXTENSION_free(san);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    return rc;
}

/*
 * The CSRs of one load, a line each in path: for bench-skg-N.example.com, so that no two
 * requests are the same one. The same request sent again is matched in the ledger (an encrypted
 * answer is sent again, a plaintext one supersedes the earlier), and two at once are told to
 * retry: a single CSR would measure that, not key generation. P-256 CSRs are cheap to sign, so
 * more than a run needs; RSA-2048 answers come at about 10 a second.
 */
static int write_csr(bench_key key, bool kek, const char *path)
{
    EVP_PKEY *k = key == KEY_P256 ? EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")
                                  : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    int n = key == KEY_P256 ? 40000 : 400, rc = -1;
    FILE *f = k != NULL ? fopen(path, "w") : NULL;
    char name[64];

    for (int i = 0; f != NULL && i < n; i++) {
        snprintf(name, sizeof(name), "bench-skg-%d.example.com", i);
        if (write_csr_line(f, k, name, kek) != 0)
            goto out;
    }
    rc = f != NULL ? 0 : -1;
out:
    if (f != NULL && fclose(f) != 0)
        rc = -1;
    EVP_PKEY_free(k);
    return rc;
}

/* ---- the daemon ---- */

/* The token label as a URI attribute value: blanks (NSS's "NSS Certificate DB") as %20. */
static const char *uri_label(void)
{
    static char out[128];

    return eg_fx_uri_label(th, out, sizeof(out));
}

/* The pre-shared AES-256 key, imported with estgate-provision kek import (nss). */
static int import_kek(void)
{
    char hex[65];
    int rc = eg_fx_kek_import(th, "kek-fleet", KEK_ID, hex, res);

    if (rc != 0)
        fprintf(stderr, "bench: kek import failed:\n%s\n%s\n", res->out, res->err);
    OPENSSL_cleanse(hex, sizeof(hex));
    return rc;
}

/* The shared benchmark profile, with server-side key generation (and NSS's KEK). */
static int write_config(void)
{
    bool nss = kind == EG_TH_NSS;
    char extra[768];

    snprintf(extra, sizeof(extra),
             "serverkeygen = %s\n"
             "serverkeygen_key_types = ec:P-256, rsa:2048\n",
             nss ? "plaintext, encrypt" : "plaintext");
    if (nss)
        snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
                 "serverkeygen_kek = " KEK_ID " pkcs11:token=%s;object=kek-fleet\n", uri_label());
    return eg_bench_daemon_config(th, P256_CONNS, ca, extra, pass_file, auth_file, ini);
}

/* Certificates in the ledger, read beside the running daemon (WAL allows it); -1 on error. */
static long ledger_certs(void)
{
    char path[PATH_MAX];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long n = -1;

    if (sqlite3_open_v2(tpath(path, "ledger.db"), &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_busy_timeout(db, 5000) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM issuance WHERE cert IS NOT NULL", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/*
 * The ledger count once the requests still in flight when wrk stopped have landed: unchanged
 * over quiet seconds, longer than any answer took. -1 on error.
 */
static long ledger_settled(double quiet)
{
    long last = ledger_certs(), n;
    int i;

    for (i = 0; i < 20 && last >= 0; i++, last = n) {
        usleep((useconds_t)(quiet * 1e6));
        if ((n = ledger_certs()) == last)
            return n;
    }
    return -1;
}

/* ---- wrk ---- */

/* One wrk run of seconds on /serverkeygen with conns connections; adds to l. */
static int wrk_slice(load *l, unsigned seconds, unsigned conns)
{
    char url[256], c[16], d[32], script[PATH_MAX];
    char *argv[] = {"wrk", "-t",        "2",       "-c",           c,      "-d",
                    d,     "--timeout", "60s",     "-s",           script, url,
                    "--",  l->csr_file, auth_file, NULL /* key */, NULL};
    long ok, refused, first, dur_us, p50_us, p99_us, max_us, econn, eread, ewrite, etime, before,
        after;
    const char *p;

    snprintf(script, sizeof(script), "%s/est_skg.lua", EG_BENCH_SOURCE_DIR);
    snprintf(url, sizeof(url), "https://127.0.0.1:%u/.well-known/est/serverkeygen", port);
    snprintf(c, sizeof(c), "%u", conns);
    snprintf(d, sizeof(d), "%us", seconds);
    argv[15] = l->encrypt ? "server-generated-key" : "application/pkcs8";
    if ((before = ledger_certs()) < 0)
        return -1;
    if (eg_child_run(dir, NULL, argv, res) != 0 || (p = strstr(res->out, "est_skg:")) == NULL ||
        sscanf(p,
               "est_skg: ok=%ld refused=%ld first_refused=%ld duration_us=%ld p50_us=%ld "
               "p99_us=%ld max_us=%ld connect=%ld read=%ld write=%ld timeout=%ld",
               &ok, &refused, &first, &dur_us, &p50_us, &p99_us, &max_us, &econn, &eread, &ewrite,
               &etime) != 11 ||
        dur_us <= 0) {
        fprintf(stderr, "bench: wrk failed:\n%s\n%s\n", res->out, res->err);
        return -1;
    }
    if ((after = ledger_settled(0.2 + 2e-6 * (double)max_us)) < 0)
        return -1;
    printf("  wrk %s %s -c%u %us: %ld ok, %ld refused, %.1f/s, p50 %.2f ms, p99 %.2f ms, "
           "ledger +%ld\n",
           key_name(l->key), l->encrypt ? "encrypt" : "plaintext", conns, seconds, ok, refused,
           (double)ok / ((double)dur_us / 1e6), (double)p50_us / 1000, (double)p99_us / 1000,
           after - before);
    fflush(stdout);
    l->ok += ok;
    l->refused += refused;
    if (l->first_refused == 0)
        l->first_refused = first;
    l->sock_errors += econn + eread + ewrite + etime;
    l->secs += (double)dur_us / 1e6;
    l->p50_sum += (double)ok * (double)p50_us / 1000;
    l->p99_sum += (double)ok * (double)p99_us / 1000;
    l->ledger_growth += after - before;
    l->in_flight += conns;
    return 0;
}

/* ---- the run ---- */

typedef struct key_run {
    bench_key key;
    double raw_ops[2], raw_took[2];
    load loads[2];
    int nloads;
} key_run;

/*
 * One key: in each slice raw 1 thread, raw 2 threads, then each mode's wrk run, so a slow spell
 * of the machine falls on every measurement alike.
 */
static int run_key(eg_bench_module *m, key_run *k, unsigned slice_s)
{
    unsigned wrk_s = k->key == KEY_P256 ? slice_s : slice_s * RSA_WRK_FACTOR;
    unsigned conns = k->key == KEY_P256 ? P256_CONNS : RSA_CONNS;
    int s, t, i;

    for (s = 0; s < SLICES; s++) {
        for (t = 0; t < 2; t++) {
            if (raw_slice(m, k->key, (unsigned)t + 1, slice_s, &k->raw_ops[t], &k->raw_took[t]) !=
                0) {
                fprintf(stderr, "bench: raw %s key generation failed\n", key_name(k->key));
                return -1;
            }
        }
        printf("slice %d/%d %s: raw so far %.1f/s 1 thread, %.1f/s 2 threads\n", s + 1, SLICES,
               key_name(k->key), k->raw_ops[0] / k->raw_took[0], k->raw_ops[1] / k->raw_took[1]);
        for (i = 0; i < k->nloads; i++)
            if (wrk_slice(&k->loads[i], wrk_s, conns) != 0)
                return -1;
    }
    return 0;
}

static void print_table(const key_run *runs, int nruns)
{
    printf("\n| kind | key | mode | raw keygen/s 1t | raw keygen/s 2t | serverkeygen resp/s "
           "| p50 ms | p99 ms | resp / raw 1t | resp / raw 2t |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (int r = 0; r < nruns; r++) {
        double r1 = runs[r].raw_ops[0] / runs[r].raw_took[0];
        double r2 = runs[r].raw_ops[1] / runs[r].raw_took[1];

        for (int i = 0; i < runs[r].nloads; i++) {
            const load *l = &runs[r].loads[i];
            double rps = (double)l->ok / l->secs, w = l->ok > 0 ? (double)l->ok : 1;

            printf("| %s | %s | %s | %.*f | %.*f | %.*f | %.2f | %.2f | %.1f%% | %.1f%% |\n",
                   eg_th_kind_name(kind), key_name(l->key), l->encrypt ? "encrypt" : "plaintext",
                   r1 < 100 ? 1 : 0, r1, r2 < 100 ? 1 : 0, r2, rps < 100 ? 1 : 0, rps,
                   l->p50_sum / w, l->p99_sum / w, 100 * rps / r1, 100 * rps / r2);
        }
    }
}

/* Fails a run whose numbers would not mean what they say. */
static int check_run(const key_run *runs, int nruns)
{
    int rc = 0;

    for (int r = 0; r < nruns; r++)
        for (int i = 0; i < runs[r].nloads; i++) {
            const load *l = &runs[r].loads[i];
            const char *what = l->encrypt ? "encrypt" : "plaintext";

            printf("%s %s: %ld answers, ledger +%ld (up to %ld in flight), socket errors %ld\n",
                   key_name(l->key), what, l->ok, l->ledger_growth, l->in_flight, l->sock_errors);
            if (l->refused != 0 || l->ok == 0) {
                fprintf(stderr, "bench: %s %s: %ld refused (first status %ld; -1: wrong mode)\n",
                        key_name(l->key), what, l->refused, l->first_refused);
                rc = -1;
            }
            if (l->ledger_growth < l->ok || l->ledger_growth > l->ok + l->in_flight) {
                fprintf(stderr, "bench: %s %s: ledger grew by %ld for %ld answers\n",
                        key_name(l->key), what, l->ledger_growth, l->ok);
                rc = -1;
            }
        }
    return rc;
}

static int bench(unsigned slice_s)
{
    char tls[PATH_MAX], name[64];
    key_run runs[2] = {{.key = KEY_P256}, {.key = KEY_RSA}};
    eg_bench_module m = {0};
    int r, i, rc = -1;

    if (eg_fx_provision(th, "CN=bench CA,O=estgate bench", ca, tpath(tls, "tls-chain.pem"), res) !=
            0 ||
        (kind == EG_TH_NSS && import_kek() != 0))
        goto out;
    for (r = 0; r < 2; r++) {
        runs[r].nloads = kind == EG_TH_NSS ? 2 : 1;
        for (i = 0; i < runs[r].nloads; i++) {
            load *l = &runs[r].loads[i];

            l->key = runs[r].key;
            l->encrypt = i == 1;
            snprintf(name, sizeof(name), "csr-%s%s.b64", r == 0 ? "p256" : "rsa",
                     l->encrypt ? "-kek" : "");
            if (write_csr(l->key, l->encrypt, tpath(l->csr_file, name)) != 0)
                goto out;
        }
    }
    if (write_config() != 0 || eg_fx_daemon_start(ini, daemon_log, &daemon_pid, &port, 1) != 0)
        goto out;
    printf("estgated pid %d on port %u, threads = %u\n", (int)daemon_pid, port, P256_CONNS);
    if (eg_bench_module_open(eg_th_config(th), eg_th_user_pin(th), &m) != 0) {
        fprintf(stderr, "bench: cannot open %s for raw key generation\n",
                eg_th_config(th)->module_path);
        goto out;
    }
    fflush(stdout);
    for (r = 0; r < 2; r++)
        if (run_key(&m, &runs[r], slice_s) != 0)
            goto out;
    eg_bench_module_close(&m);
    if (eg_fx_daemon_stop(&daemon_pid, SIGTERM) != 0) {
        fprintf(stderr, "bench: estgated did not exit cleanly on SIGTERM\n");
        goto out;
    }
    print_table(runs, 2);
    printf("\n");
    rc = check_run(runs, 2);
out:
    eg_bench_module_close(&m);
    return rc;
}

int main(int argc, char **argv)
{
    double seconds = argc > 2 ? atof(argv[2]) : 0;
    unsigned slice_s = (unsigned)(seconds / SLICES + 0.5);
    int rc = 1;

    if (argc != 3 || eg_th_kind_parse(argv[1], &kind) != 0 || kind == EG_TH_P11KIT || seconds < 1) {
        fprintf(stderr, "usage: %s softhsm|nss SECONDS\n", argv[0]);
        return 64;
    }
    if (slice_s < 1)
        slice_s = 1;
    /* Where eg_child_built finds estgated and estgate-provision. */
    setenv("EG_BUILD_DIR", EG_BENCH_BUILD_DIR, 0);
    if ((res = calloc(1, sizeof(*res))) == NULL || eg_th_create(kind, "bench", &th) != 0)
        goto out;
    snprintf(dir, sizeof(dir), "%s", eg_th_dir(th));
    tpath(ini, "estgated.ini");
    tpath(ca, "ca.pem");
    tpath(daemon_log, "estgated.log");
    tpath(auth_file, "basic.b64");
    tpath(pass_file, "basic.pass");
    printf("token: %s; %d slices of %u s: raw P-256 and RSA-2048 (1 and 2 threads), wrk P-256 "
           "-c%d %u s, wrk RSA-2048 -c%d %u s\n",
           eg_th_kind_name(kind), SLICES, slice_s, P256_CONNS, slice_s, RSA_CONNS,
           slice_s * RSA_WRK_FACTOR);
    rc = bench(slice_s) == 0 ? 0 : 1;
out:
    if (daemon_pid > 0)
        eg_fx_daemon_stop(&daemon_pid, SIGTERM);
    eg_th_destroy(th);
    free(res);
    return rc;
}
