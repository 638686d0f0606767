/*
 * Eight threads signing at once through the provider, with shared EVP_PKEYs,
 * for a few seconds: every signature verifies against the public key in
 * software, and every one of them is a C_Sign in the token.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <CUnit/Basic.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/rsa.h>

#include "prov_fixture.h"
#include "provider.h"

#define NTHREADS 8
#define SECONDS  3

static eg_th_kind kind;
static eg_pf pf;
static eg_pf_key rsa, p256;

typedef struct scheme {
    eg_pf_key *key;
    const char *md;
    bool pss;
} scheme;

static const scheme schemes[] = {
    {&rsa, "SHA256", false},
    {&rsa, "SHA256", true},
    {&p256, "SHA256", false},
    {&p256, "SHA384", false},
};
#define NSCHEMES (sizeof(schemes) / sizeof(schemes[0]))

static atomic_ulong signed_ok, verified_ok, failures;
static struct timespec deadline;

static int suite_init(void)
{
    eg_keygen_spec rsa_spec = {EG_KEY_RSA, 2048, 0, "threads-rsa", NULL, 0, true, false};
    eg_keygen_spec p256_spec = {EG_KEY_EC, 0,    NID_X9_62_prime256v1, "threads-p256", NULL, 0,
                                true,      false};

    if (eg_pf_open(kind, "threads", &pf) != 0 || eg_pf_key_make(&pf, "RSA", &rsa_spec, &rsa) != 0 ||
        eg_pf_key_make(&pf, "P-256", &p256_spec, &p256) != 0)
        return -1;
    return 0;
}

static int suite_clean(void)
{
    eg_pf_key_clear(&rsa);
    eg_pf_key_clear(&p256);
    eg_pf_close(&pf);
    return 0;
}

/* Checks sig over msg with the software public half, in the default context. */
static int verify(const scheme *s, const unsigned char *sig, size_t siglen,
                  const unsigned char *msg, size_t msglen)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok;

    ok = mctx != NULL &&
         EVP_DigestVerifyInit_ex(mctx, &pctx, s->md, NULL, "provider=default", s->key->pub, NULL) ==
             1 &&
         (!s->pss || (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                      EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0)) &&
         EVP_DigestVerify(mctx, sig, siglen, msg, msglen) == 1;
    EVP_MD_CTX_free(mctx);
    return ok;
}

static int sign_one(const scheme *s, const unsigned char *msg, size_t msglen)
{
    unsigned char sig[512];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *mctx = eg_pf_sign_ctx(&pf, s->key->pkey, s->md, s->pss);
    int ok = mctx != NULL && EVP_DigestSign(mctx, sig, &siglen, msg, msglen) == 1;

    EVP_MD_CTX_free(mctx);
    if (!ok)
        return -1;
    atomic_fetch_add(&signed_ok, 1);
    return verify(s, sig, siglen, msg, msglen) ? 0 : -1;
}

static bool expired(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline.tv_sec ||
           (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec);
}

static void *signer_thread(void *arg)
{
    unsigned long id = (unsigned long)(uintptr_t)arg, n;
    unsigned char msg[64];

    for (n = 0; !expired(); n++) {
        snprintf((char *)msg, sizeof(msg), "thread %lu message %lu", id, n);
        if (sign_one(&schemes[(id + n) % NSCHEMES], msg, strlen((char *)msg)) == 0) {
            atomic_fetch_add(&verified_ok, 1);
        } else {
            atomic_fetch_add(&failures, 1);
            ERR_print_errors_fp(stderr);
        }
    }
    ERR_clear_error();
    return NULL;
}

static void test_eight_threads_sign_only_valid_signatures(void)
{
    pthread_t tids[NTHREADS];
    uint64_t before = eg_pf_sign_calls(&pf);
    unsigned long i, started = 0;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += SECONDS;
    for (i = 0; i < NTHREADS; i++) {
        if (pthread_create(&tids[i], NULL, signer_thread, (void *)(uintptr_t)i) == 0)
            started++;
    }
    for (i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    printf("%lu signatures by %lu threads in %d s ", (unsigned long)verified_ok, started, SECONDS);
    CU_ASSERT_EQUAL(started, NTHREADS);
    CU_ASSERT_EQUAL(atomic_load(&failures), 0);
    CU_ASSERT_TRUE(atomic_load(&verified_ok) >= NTHREADS);
    /* Each signature was one C_Sign: none came from a software fallback. */
    CU_ASSERT_EQUAL(eg_pf_sign_calls(&pf) - before, atomic_load(&signed_ok));
}

static CU_TestInfo tests[] = {
    {"eight threads sign only valid signatures", test_eight_threads_sign_only_valid_signatures},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
