/*
 * Signatures per second through these layers of the same module path:
 *   raw       C_SignInit + C_Sign on the module's own function list, one
 *             session per thread (the baseline: what the token can do)
 *   wrapper   eg_p11_key_sign(): pooled sessions, handle cache, recovery
 *   provider ctx kept
 *             EVP_PKEY_sign() on one EVP_PKEY_CTX per thread, made and
 *             initialised once (how a long-running signer can call it)
 *   provider  a new EVP_PKEY_CTX per signature, as X509_sign() does
 *   provider+ EVP_DigestSign() over a 1 KiB message (adds SHA-256, and the
 *             DER encoding for ECDSA)
 *   provider+hash, ctx copied
 *             the same from a copy of one digest-sign context made once and
 *             shared by the threads, as estgated's eg_issue_sign does
 * for P-256 and RSA-2048 keys, 1 and 2 threads, on a fresh throwaway token.
 *
 * usage: bench_sign [softhsm|p11kit|nss] [seconds per cell]
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>

#include "bench_util.h"
#include "p11.h"
#include "provider.h"
#include "token_harness.h"

enum layer { RAW, WRAPPER, PROVIDER_REUSED, PROVIDER, PROVIDER_DIGEST, PROVIDER_COPY, NLAYERS };
#define EG_BENCH_ROUNDS 10

static const char *layer_names[] = {"raw C_Sign", "wrapper",       "provider ctx kept",
                                    "provider",   "provider+hash", "ctx copied+hash"};

struct cell {
    enum layer layer;
    eg_p11_key *key;
    EVP_PKEY *pkey;
    CK_FUNCTION_LIST *fl;
    CK_SLOT_ID slot;
    const char *pin;
    double seconds;
    unsigned long ops;
    int failed;
    EVP_PKEY_CTX *kept; /* PROVIDER_REUSED: this thread's context, made once */
    EVP_MD_CTX *shared; /* PROVIDER_COPY: one initialised context for all threads */
};

static CK_MECHANISM_TYPE raw_mech(const eg_p11_key *key)
{
    return eg_p11_key_type(key) == EG_KEY_RSA ? CKM_RSA_PKCS : CKM_ECDSA;
}

/* What the raw layer signs: a SHA-256 DigestInfo for RSA, the bare digest for ECDSA. */
static size_t raw_input(const eg_p11_key *key, uint8_t *buf)
{
    static const uint8_t prefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};

    if (eg_p11_key_type(key) != EG_KEY_RSA) {
        memset(buf, 0x5a, 32);
        return 32;
    }
    memcpy(buf, prefix, sizeof(prefix));
    memset(buf + sizeof(prefix), 0x5a, 32);
    return sizeof(prefix) + 32;
}

static int raw_session(struct cell *c, CK_SESSION_HANDLE *h, CK_OBJECT_HANDLE *obj)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    size_t idlen;
    const uint8_t *id = eg_p11_key_id(c->key, &idlen);
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, idlen}};
    CK_ULONG n = 0;

    CK_RV rv;

    if (c->fl->C_OpenSession(c->slot, CKF_SERIAL_SESSION, NULL, NULL, h) != CKR_OK)
        return -1;
    /* Already logged in when the instance is the wrapper's; not so for a p11-kit client. */
    rv = c->fl->C_Login(*h, CKU_USER, (CK_UTF8CHAR *)c->pin, strlen(c->pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        return -1;
    if (c->fl->C_FindObjectsInit(*h, t, 2) != CKR_OK)
        return -1;
    c->fl->C_FindObjects(*h, obj, 1, &n);
    c->fl->C_FindObjectsFinal(*h);
    return n == 1 ? 0 : -1;
}

static int sign_once(struct cell *c, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj, const uint8_t *in,
                     size_t inlen, const uint8_t *msg)
{
    CK_MECHANISM mech = {raw_mech(c->key), NULL, 0};
    uint8_t sig[1024];
    size_t siglen = sizeof(sig);
    CK_ULONG len = sizeof(sig);
    EVP_PKEY_CTX *pctx;
    EVP_MD_CTX *mctx;
    int ok = 0;

    switch (c->layer) {
    case RAW:
        ok = c->fl->C_SignInit(h, &mech, obj) == CKR_OK &&
             c->fl->C_Sign(h, (CK_BYTE *)in, inlen, sig, &len) == CKR_OK;
        break;
    case WRAPPER:
        ok = eg_p11_key_sign(c->key, &mech, in, inlen, sig, &siglen) == 0;
        break;
    case PROVIDER_REUSED:
        ok = EVP_PKEY_sign(c->kept, sig, &siglen, msg, 32) == 1;
        break;
    case PROVIDER:
        pctx = EVP_PKEY_CTX_new_from_pkey(NULL, c->pkey, NULL);
        ok = pctx != NULL && EVP_PKEY_sign_init(pctx) == 1 &&
             EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha256()) == 1 &&
             EVP_PKEY_sign(pctx, sig, &siglen, msg, 32) == 1;
        EVP_PKEY_CTX_free(pctx);
        break;
    case PROVIDER_DIGEST:
        mctx = EVP_MD_CTX_new();
        ok = mctx != NULL && EVP_DigestSignInit(mctx, NULL, EVP_sha256(), NULL, c->pkey) == 1 &&
             EVP_DigestSign(mctx, sig, &siglen, msg, 1024) == 1;
        EVP_MD_CTX_free(mctx);
        break;
    case PROVIDER_COPY:
        mctx = EVP_MD_CTX_new();
        ok = mctx != NULL && EVP_MD_CTX_copy_ex(mctx, c->shared) == 1;
        EVP_MD_CTX_set_flags(mctx, EVP_MD_CTX_FLAG_FINALISE);
        ok = ok && EVP_DigestSign(mctx, sig, &siglen, msg, 1024) == 1;
        EVP_MD_CTX_free(mctx);
        break;
    default:
        break;
    }
    return ok ? 0 : -1;
}

static void *run_cell(void *arg)
{
    struct cell *c = arg;
    CK_SESSION_HANDLE h = 0;
    CK_OBJECT_HANDLE obj = 0;
    uint8_t in[64], msg[1024];
    size_t inlen = raw_input(c->key, in);
    double end;

    memset(msg, 0x5a, sizeof(msg));
    if (c->layer == RAW && raw_session(c, &h, &obj) != 0) {
        c->failed = 1;
        return NULL;
    }
    if (c->layer == PROVIDER_REUSED &&
        ((c->kept = EVP_PKEY_CTX_new_from_pkey(NULL, c->pkey, NULL)) == NULL ||
         EVP_PKEY_sign_init(c->kept) != 1 ||
         EVP_PKEY_CTX_set_signature_md(c->kept, EVP_sha256()) != 1)) {
        c->failed = 1;
        return NULL;
    }
    end = eg_bench_now() + c->seconds;
    while (eg_bench_now() < end) {
        if (sign_once(c, h, obj, in, inlen, msg) != 0) {
            c->failed = 1;
            break;
        }
        c->ops++;
    }
    if (c->layer == RAW)
        c->fl->C_CloseSession(h);
    EVP_PKEY_CTX_free(c->kept);
    c->kept = NULL;
    return NULL;
}

/* Runs one layer with nthreads threads for proto->seconds; adds to *ops and *elapsed. */
static int measure(struct cell *proto, unsigned nthreads, double *ops, double *elapsed)
{
    struct cell cells[2];
    pthread_t tid[2];
    double start;
    unsigned i;
    int rc = 0;

    start = eg_bench_now();
    for (i = 0; i < nthreads; i++) {
        cells[i] = *proto;
        pthread_create(&tid[i], NULL, run_cell, &cells[i]);
    }
    for (i = 0; i < nthreads; i++) {
        pthread_join(tid[i], NULL);
        if (cells[i].failed)
            rc = -1;
        *ops += (double)cells[i].ops;
    }
    *elapsed += eg_bench_now() - start;
    return rc;
}

/* The module's own function list: the same instance the wrapper initialised. */
static int module_functions(const eg_token_config *cfg, const char *label, CK_FUNCTION_LIST **fl,
                            CK_SLOT_ID *slot)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16, i;
    CK_TOKEN_INFO info;
    void *dl = dlopen(cfg->module_path, RTLD_NOW | RTLD_NOLOAD);

    if (dl == NULL)
        return -1;
    *(void **)&get_list = dlsym(dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(fl) != CKR_OK)
        return -1;
    /*
     * The p11-kit client hands every caller a new instance: initialised here it
     * is a second connection to the same server, which is what raw means there.
     */
    if ((*fl)->C_GetSlotList(CK_TRUE, NULL, &n) == CKR_CRYPTOKI_NOT_INITIALIZED) {
        CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};

        if ((*fl)->C_Initialize(&args) != CKR_OK)
            return -1;
    }
    n = 16;
    if ((*fl)->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return -1;
    for (i = 0; i < n; i++) {
        if ((*fl)->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
            strncmp((char *)info.label, label, strlen(label)) == 0) {
            *slot = slots[i];
            return 0;
        }
    }
    return -1;
}

static int bench_key(eg_token *tok, eg_th *th, const eg_keygen_spec *spec, const char *name,
                     double seconds)
{
    const eg_token_config *cfg = eg_th_config(th);
    struct cell proto = {0};
    double rate[NLAYERS][2], ops[NLAYERS][2] = {{0}}, elapsed[NLAYERS][2] = {{0}};
    int rc = -1, l, t, r;

    if (eg_p11_key_generate(tok, spec, &proto.key) != 0 ||
        eg_provider_key_pkey(NULL, proto.key, &proto.pkey) != 0 ||
        (proto.shared = EVP_MD_CTX_new()) == NULL ||
        EVP_DigestSignInit(proto.shared, NULL, EVP_sha256(), NULL, proto.pkey) != 1 ||
        module_functions(cfg, eg_token_label(tok), &proto.fl, &proto.slot) != 0)
        goto out;
    /*
     * The layers take turns, a short slice each, round after round: a shared
     * machine's slow spells then fall on every layer alike instead of on
     * whichever happened to run at the time.
     */
    proto.pin = eg_th_user_pin(th);
    proto.seconds = seconds / EG_BENCH_ROUNDS;
    for (r = 0; r < EG_BENCH_ROUNDS; r++) {
        for (l = 0; l < NLAYERS; l++) {
            for (t = 0; t < 2; t++) {
                proto.layer = (enum layer)l;
                if (measure(&proto, (unsigned)t + 1, &ops[l][t], &elapsed[l][t]) != 0) {
                    fprintf(stderr, "bench: %s %s failed\n", name, layer_names[l]);
                    goto out;
                }
            }
        }
    }
    for (l = 0; l < NLAYERS; l++)
        for (t = 0; t < 2; t++)
            rate[l][t] = ops[l][t] / elapsed[l][t];
    for (l = 0; l < NLAYERS; l++)
        printf("| %-9s | %-17s | %9.0f | %9.0f | %+6.1f%% | %+6.1f%% |\n", name, layer_names[l],
               rate[l][0], rate[l][1], 100.0 * (rate[RAW][0] / rate[l][0] - 1.0),
               100.0 * (rate[RAW][1] / rate[l][1] - 1.0));
    rc = 0;
out:
    EVP_MD_CTX_free(proto.shared);
    EVP_PKEY_free(proto.pkey);
    eg_p11_key_free(proto.key);
    return rc;
}

int main(int argc, char **argv)
{
    eg_keygen_spec p256 = {EG_KEY_EC, 0, NID_X9_62_prime256v1, "bench-p256", NULL, 0, false, false};
    eg_keygen_spec rsa = {EG_KEY_RSA, 2048, 0, "bench-rsa2048", NULL, 0, false, false};
    double seconds = argc > 2 ? atof(argv[2]) : 3.0;
    eg_th_kind kind = EG_TH_SOFTHSM;
    eg_token *tok = NULL;
    eg_th *th = NULL;
    int rc = 1;

    if (argc > 1 && eg_th_kind_parse(argv[1], &kind) != 0) {
        fprintf(stderr, "usage: %s [softhsm|p11kit|nss] [seconds per cell]\n", argv[0]);
        return 64;
    }
    /*
     * Session objects: a token object costs SoftHSM a file re-read per
     * signature. Behind p11-kit the raw layer is another connection, another
     * application, which cannot see our session objects: token objects there.
     */
    p256.token_object = rsa.token_object = kind == EG_TH_P11KIT;
    if (eg_th_create(kind, "bench", &th) != 0 || eg_token_open(eg_th_config(th), &tok) != 0 ||
        eg_provider_init(NULL) != 0 || eg_provider_add_token(NULL, tok) != 0)
        goto out;
    printf("token: %s, %.1f s per cell in %d interleaved slices, overhead = how much slower than "
           "raw C_Sign\n\n",
           eg_th_kind_name(kind), seconds, EG_BENCH_ROUNDS);
    printf("| key       | layer             | 1 thread  | 2 threads | ovh 1t  | ovh 2t  |\n");
    printf("|-----------|-------------------|-----------|-----------|---------|---------|\n");
    if (bench_key(tok, th, &p256, "P-256", seconds) != 0 ||
        bench_key(tok, th, &rsa, "RSA-2048", seconds) != 0)
        goto out;
    rc = 0;
out:
    if (rc != 0)
        ERR_print_errors_fp(stderr);
    if (tok != NULL)
        eg_provider_remove_token(NULL, tok);
    eg_token_free(tok);
    eg_th_destroy(th);
    return rc;
}
