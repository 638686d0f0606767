/*
 * Signatures beside a long token call. Eight threads sign with a P-256 token
 * key through the signer (eg_p11_key_sign, as estgated's CA signature does),
 * first alone, then while one more thread generates RSA-2048 key pairs in the
 * token and destroys them (as serverkeygen does for an RSA device). Prints
 * the signature rate and latency percentiles of both phases, with the
 * connections asked for ([token] connections; a module keeps its number for
 * the life of the process, so run once per number to compare).
 *
 * usage: bench_beside softhsm|p11kit CONNECTIONS [seconds per phase]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/obj_mac.h>

#include "bench_util.h"
#include "p11.h"
#include "token_harness.h"

#define SIGNERS   8
#define PER_MAX   400000 /* latencies kept per signer and phase */
#define RSA_LABEL "beside-rsa"

struct signer {
    pthread_t tid;
    eg_p11_key *key;
    double *lat_ms;
    size_t n;
    int failed;
};

static atomic_int stop;
static atomic_ulong keygens;
static atomic_int keygen_failed;
static eg_token *tok;

static void *sign_loop(void *arg)
{
    struct signer *s = arg;
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    uint8_t digest[32], sig[128];
    size_t siglen;
    double t0;

    memset(digest, 0x5a, sizeof(digest));
    while (!atomic_load(&stop) && s->n < PER_MAX) {
        siglen = sizeof(sig);
        t0 = eg_bench_now();
        if (eg_p11_key_sign(s->key, &mech, digest, sizeof(digest), sig, &siglen) != 0) {
            s->failed = 1;
            break;
        }
        s->lat_ms[s->n++] = (eg_bench_now() - t0) * 1000.0;
    }
    return NULL;
}

static void *keygen_loop(void *arg)
{
    eg_keygen_spec spec = {EG_KEY_RSA, 2048, 0, RSA_LABEL, NULL, 0, false, true};
    eg_p11_key *key;

    (void)arg;
    while (!atomic_load(&stop)) {
        key = NULL;
        if (eg_p11_key_generate(tok, &spec, &key) != 0 || eg_p11_key_destroy(key) != 0) {
            atomic_store(&keygen_failed, 1);
            eg_p11_key_free(key);
            break;
        }
        eg_p11_key_free(key);
        atomic_fetch_add(&keygens, 1);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* One phase: the signers for seconds, with the key generator beside them or not. */
static int phase(const char *name, eg_p11_key *key, double seconds, bool beside)
{
    struct signer s[SIGNERS];
    pthread_t gen;
    double start, took, *all = NULL;
    size_t n = 0, i;
    int rc = -1;

    memset(s, 0, sizeof(s));
    atomic_store(&stop, 0);
    atomic_store(&keygens, 0);
    start = eg_bench_now();
    if (beside && pthread_create(&gen, NULL, keygen_loop, NULL) != 0)
        return -1;
    for (i = 0; i < SIGNERS; i++) {
        s[i].key = key;
        if ((s[i].lat_ms = malloc(PER_MAX * sizeof(double))) == NULL ||
            pthread_create(&s[i].tid, NULL, sign_loop, &s[i]) != 0)
            return -1;
    }
    while (eg_bench_now() - start < seconds)
        usleep(50000);
    atomic_store(&stop, 1);
    for (i = 0; i < SIGNERS; i++)
        pthread_join(s[i].tid, NULL);
    took = eg_bench_now() - start;
    if (beside)
        pthread_join(gen, NULL);
    for (i = 0; i < SIGNERS; i++)
        n += s[i].n;
    if ((all = malloc((n ? n : 1) * sizeof(double))) == NULL)
        goto out;
    n = 0;
    for (i = 0; i < SIGNERS; i++) {
        memcpy(all + n, s[i].lat_ms, s[i].n * sizeof(double));
        n += s[i].n;
        if (s[i].failed) {
            fprintf(stderr, "bench: a signature failed\n");
            goto out;
        }
    }
    if (atomic_load(&keygen_failed)) {
        fprintf(stderr, "bench: an RSA key generation failed\n");
        goto out;
    }
    qsort(all, n, sizeof(double), cmp_double);
    printf("| %s | %.0f | %.2f | %.2f | %.2f | %.1f | %lu |\n", name, (double)n / took,
           n ? all[n / 2] : 0, n ? all[n * 99 / 100] : 0, n ? all[n * 999 / 1000] : 0,
           n ? all[n - 1] : 0, atomic_load(&keygens));
    rc = 0;
out:
    free(all);
    for (i = 0; i < SIGNERS; i++)
        free(s[i].lat_ms);
    return rc;
}

int main(int argc, char **argv)
{
    eg_keygen_spec p256 = {EG_KEY_EC, 0, NID_X9_62_prime256v1, "beside-ca", NULL, 0, true, false};
    double seconds = argc > 3 ? atof(argv[3]) : 10.0;
    int connections = argc > 2 ? atoi(argv[2]) : 0;
    eg_token_config cfg;
    eg_p11_key *key = NULL;
    eg_th_kind kind;
    eg_th *th = NULL;
    int rc = 1;

    if (argc < 3 || eg_th_kind_parse(argv[1], &kind) != 0 || kind == EG_TH_NSS || connections < 1 ||
        connections > EG_CONNECTIONS_MAX || seconds < 1) {
        fprintf(stderr, "usage: %s softhsm|p11kit CONNECTIONS [seconds per phase]\n", argv[0]);
        return 64;
    }
    if (eg_th_create(kind, "beside", &th) != 0)
        goto out;
    cfg = *eg_th_config(th);
    cfg.connections = (unsigned)connections;
    if (eg_token_open(&cfg, &tok) != 0 || eg_p11_key_generate(tok, &p256, &key) != 0) {
        ERR_print_errors_fp(stderr);
        goto out;
    }
    printf("token: %s, %s, %u signers, %.0f s per phase\n\n", eg_th_kind_name(kind),
           eg_connections_words(eg_token_connections(tok)), SIGNERS, seconds);
    printf("| phase | P-256 signatures/s | p50 ms | p99 ms | p99.9 ms | max ms | RSA-2048 "
           "keygens |\n|---|---|---|---|---|---|---|\n");
    if (phase("alone", key, seconds, false) != 0 ||
        phase("beside RSA-2048 keygen", key, seconds, true) != 0)
        goto out;
    rc = 0;
out:
    eg_p11_key_free(key);
    eg_token_free(tok);
    eg_th_destroy(th);
    return rc;
}
