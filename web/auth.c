#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "auth.h"

#define MAC_LEN      32
#define CACHE_WAYS   4
#define CACHE_SETS   (EG_AUTH_CACHE_ENTRIES / CACHE_WAYS)
#define BASIC_MAX    1024
#define REASON_BADPW "wrong user name or password"

/*
 * An unknown user still costs one KDF run, against this well-formed hash that
 * no password matches, so that response times do not tell which names exist.
 */
#define DUMMY_HASH                                                                                 \
    "$pbkdf2-sha256$600000$AAAAAAAAAAAAAAAAAAAAAA==$"                                              \
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

/* A verified credential: the MAC of (profile, user, password, stored hash). */
typedef struct cache_entry {
    uint8_t mac[MAC_LEN];
    uint64_t born; /* monotonic seconds; 0: empty */
} cache_entry;

struct eg_auth {
    const eg_config *cfg;
    X509_STORE *stores[EG_MAX_PROFILES]; /* client CA bundle per profile, or NULL */
    EVP_MAC *hmac;
    uint8_t key[MAC_LEN]; /* random per process: cache keys mean nothing elsewhere */
    pthread_mutex_t lock;
    /* Set-associative: a credential's MAC picks a set of CACHE_WAYS entries,
       and a new entry replaces the oldest of its set. */
    cache_entry cache[EG_AUTH_CACHE_ENTRIES];
    atomic_uint_fast64_t kdf_runs;
    /* The KDF gate: at most kdf_slots password checks at once. */
    pthread_mutex_t kdf_lock;
    pthread_cond_t kdf_free;
    unsigned kdf_slots, kdf_busy, kdf_peak, kdf_wait_ms;
};

static uint64_t now_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec + 1; /* never 0, which marks an empty entry */
}

int eg_auth_new(const eg_config *cfg, eg_auth **out)
{
    eg_auth *a = calloc(1, sizeof(*a));
    int rc = -1;

    if (a == NULL)
        return -1;
    a->cfg = cfg;
    pthread_mutex_init(&a->lock, NULL);
    pthread_mutex_init(&a->kdf_lock, NULL);
    {
        pthread_condattr_t ca;
        long cores = sysconf(_SC_NPROCESSORS_ONLN);

        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&a->kdf_free, &ca);
        pthread_condattr_destroy(&ca);
        a->kdf_slots = cores > 1 ? (unsigned)(cores + 1) / 2 : 1;
        a->kdf_wait_ms = 5000;
    }
    if ((a->hmac = EVP_MAC_fetch(NULL, "HMAC", NULL)) == NULL ||
        RAND_bytes(a->key, sizeof(a->key)) != 1)
        goto out;
    for (size_t i = 0; i < cfg->nprofiles; i++) {
        const char *file = cfg->profiles[i].client_ca_file;

        if (file == NULL)
            continue;
        if ((a->stores[i] = X509_STORE_new()) == NULL ||
            X509_STORE_load_file(a->stores[i], file) != 1) {
            fprintf(stderr, "estgated: profile %s: cannot load client CA bundle %s\n",
                    cfg->profiles[i].name, file);
            goto out;
        }
    }
    *out = a;
    a = NULL;
    rc = 0;
out:
    eg_auth_free(a);
    return rc;
}

void eg_auth_free(eg_auth *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < EG_MAX_PROFILES; i++)
        X509_STORE_free(a->stores[i]);
    EVP_MAC_free(a->hmac);
    OPENSSL_cleanse(a->key, sizeof(a->key));
    OPENSSL_cleanse(a->cache, sizeof(a->cache));
    pthread_mutex_destroy(&a->lock);
    pthread_mutex_destroy(&a->kdf_lock);
    pthread_cond_destroy(&a->kdf_free);
    free(a);
}

uint64_t eg_auth_kdf_runs(eg_auth *a)
{
    return atomic_load(&a->kdf_runs);
}

void eg_auth_set_kdf_limits(eg_auth *a, unsigned slots, unsigned wait_ms)
{
    pthread_mutex_lock(&a->kdf_lock);
    a->kdf_slots = slots ? slots : 1;
    a->kdf_wait_ms = wait_ms;
    a->kdf_peak = 0;
    pthread_mutex_unlock(&a->kdf_lock);
}

unsigned eg_auth_kdf_peak(eg_auth *a)
{
    unsigned peak;

    pthread_mutex_lock(&a->kdf_lock);
    peak = a->kdf_peak;
    pthread_mutex_unlock(&a->kdf_lock);
    return peak;
}

/* A slot for one KDF run, waiting up to kdf_wait_ms; false when none came free. */
static bool kdf_enter(eg_auth *a)
{
    struct timespec until;
    bool got = true;

    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(a->kdf_wait_ms / 1000);
    until.tv_nsec += (long)(a->kdf_wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&a->kdf_lock);
    while (a->kdf_busy >= a->kdf_slots && got)
        got = pthread_cond_timedwait(&a->kdf_free, &a->kdf_lock, &until) == 0 ||
              a->kdf_busy < a->kdf_slots;
    if (got && ++a->kdf_busy > a->kdf_peak)
        a->kdf_peak = a->kdf_busy;
    pthread_mutex_unlock(&a->kdf_lock);
    return got;
}

static void kdf_leave(eg_auth *a)
{
    pthread_mutex_lock(&a->kdf_lock);
    a->kdf_busy--;
    pthread_cond_signal(&a->kdf_free);
    pthread_mutex_unlock(&a->kdf_lock);
}

/* Strict base64 of a Basic credential: whole quanta, "=" only at the end. */
static int basic_decode(const char *s, size_t len, char **out, size_t *out_len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t pad = 0;
    char *buf;
    int n;

    if (len == 0 || len % 4 != 0 || len > BASIC_MAX)
        return -1;
    while (pad < 2 && s[len - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < len - pad; i++)
        if (strchr(alphabet, s[i]) == NULL)
            return -1;
    if ((buf = malloc(len / 4 * 3 + 1)) == NULL)
        return -1;
    n = EVP_DecodeBlock((unsigned char *)buf, (const unsigned char *)s, (int)len);
    if (n < 0 || (size_t)n < pad) {
        OPENSSL_clear_free(buf, len / 4 * 3 + 1);
        return -1;
    }
    buf[(size_t)n - pad] = '\0';
    *out = buf;
    *out_len = (size_t)n - pad;
    return 0;
}

int eg_auth_parse_basic(const char *header, char **user, char **password, char *why, size_t whylen)
{
    const char *p = header, *end;
    char *plain = NULL, *colon, *u = NULL, *pw = NULL;
    size_t plain_len = 0;
    int rc = -1;

    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "Basic", 5) != 0 || (p[5] != ' ' && p[5] != '\t')) {
        snprintf(why, whylen, "Authorization is not HTTP Basic");
        goto out;
    }
    for (p += 5; *p == ' ' || *p == '\t'; p++)
        ;
    for (end = p + strlen(p); end > p && (end[-1] == ' ' || end[-1] == '\t'); end--)
        ;
    if (basic_decode(p, (size_t)(end - p), &plain, &plain_len) != 0) {
        snprintf(why, whylen, "Authorization: Basic credentials are not base64");
        goto out;
    }
    if (memchr(plain, '\0', plain_len) != NULL) {
        snprintf(why, whylen, "Authorization: Basic credentials hold a NUL byte");
        goto out;
    }
    if ((colon = strchr(plain, ':')) == NULL || colon == plain) {
        snprintf(why, whylen, "Authorization: Basic credentials are not user:password");
        goto out;
    }
    for (const char *c = plain; c < colon; c++) {
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            snprintf(why, whylen, "Authorization: Basic user name holds a control character");
            goto out;
        }
    }
    *colon = '\0';
    if ((u = strdup(plain)) == NULL || (pw = strdup(colon + 1)) == NULL) {
        snprintf(why, whylen, "out of memory");
        goto out;
    }
    *user = u;
    *password = pw;
    u = pw = NULL;
    rc = 0;
out:
    free(u);
    if (plain != NULL)
        OPENSSL_clear_free(plain, plain_len + 1);
    return rc;
}

static int mac_field(EVP_MAC_CTX *ctx, const char *s)
{
    size_t n = strlen(s);
    uint8_t len[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};

    /* Length-prefixed, so that ("ab","c") and ("a","bc") differ. */
    return EVP_MAC_update(ctx, len, sizeof(len)) == 1 &&
                   EVP_MAC_update(ctx, (const uint8_t *)s, n) == 1
               ? 0
               : -1;
}

static int credential_mac(eg_auth *a, const char *profile, const char *user, const char *pw,
                          const char *hash, uint8_t out[MAC_LEN])
{
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(a->hmac);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    size_t len = 0;
    int rc = -1;

    if (ctx == NULL || EVP_MAC_init(ctx, a->key, sizeof(a->key), params) != 1 ||
        mac_field(ctx, profile) != 0 || mac_field(ctx, user) != 0 || mac_field(ctx, pw) != 0 ||
        mac_field(ctx, hash) != 0 || EVP_MAC_final(ctx, out, &len, MAC_LEN) != 1 || len != MAC_LEN)
        goto out;
    rc = 0;
out:
    EVP_MAC_CTX_free(ctx);
    return rc;
}

static cache_entry *cache_set(eg_auth *a, const uint8_t mac[MAC_LEN])
{
    size_t h = (size_t)mac[0] << 8 | mac[1];

    return &a->cache[(h % CACHE_SETS) * CACHE_WAYS];
}

static bool cache_hit(eg_auth *a, const uint8_t mac[MAC_LEN])
{
    cache_entry *set = cache_set(a, mac);
    uint64_t now = now_seconds();
    bool hit = false;

    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < CACHE_WAYS; i++)
        if (set[i].born != 0 && now - set[i].born < EG_AUTH_CACHE_SECONDS &&
            CRYPTO_memcmp(set[i].mac, mac, MAC_LEN) == 0)
            hit = true;
    pthread_mutex_unlock(&a->lock);
    return hit;
}

static void cache_add(eg_auth *a, const uint8_t mac[MAC_LEN])
{
    cache_entry *set = cache_set(a, mac), *victim = &set[0];

    pthread_mutex_lock(&a->lock);
    for (size_t i = 1; i < CACHE_WAYS; i++)
        if (set[i].born < victim->born)
            victim = &set[i];
    memcpy(victim->mac, mac, MAC_LEN);
    victim->born = now_seconds();
    pthread_mutex_unlock(&a->lock);
}

static const eg_user_cfg *find_user(const eg_profile_cfg *p, const char *name)
{
    for (size_t i = 0; i < p->nusers; i++)
        if (strcmp(p->users[i].name, name) == 0)
            return &p->users[i];
    return NULL;
}

/* The password check, through the cache; only verified credentials are cached. */
typedef enum { PW_OK, PW_WRONG, PW_BUSY } pw_result;

static pw_result password_ok(eg_auth *a, const eg_profile_cfg *p, const char *user, const char *pw,
                             const char *hash)
{
    uint8_t mac[MAC_LEN];
    bool have_mac = credential_mac(a, p->name, user, pw, hash, mac) == 0;
    bool ok;

    if (have_mac && cache_hit(a, mac))
        return PW_OK;
    if (!kdf_enter(a)) {
        OPENSSL_cleanse(mac, sizeof(mac));
        return PW_BUSY;
    }
    atomic_fetch_add(&a->kdf_runs, 1);
    ok = eg_password_verify(pw, hash);
    kdf_leave(a);
    if (ok && have_mac)
        cache_add(a, mac);
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok ? PW_OK : PW_WRONG;
}

int eg_auth_basic(eg_auth *a, const eg_profile_cfg *p, const char *header, eg_auth_result *res)
{
    char *user = NULL, *pw = NULL;
    const eg_user_cfg *u;
    int rc = -1;

    memset(res, 0, sizeof(*res));
    res->fail = EG_AUDIT_AUTH_MISSING;
    if (header == NULL) {
        snprintf(res->reason, sizeof(res->reason), "credentials required");
        goto out;
    }
    if (eg_auth_parse_basic(header, &user, &pw, res->reason, sizeof(res->reason)) != 0)
        goto out;
    snprintf(res->principal, sizeof(res->principal), "basic:%s", user);
    u = find_user(p, user);
    switch (password_ok(a, p, user, pw, u != NULL ? u->hash : DUMMY_HASH)) {
    case PW_OK:
        break;
    case PW_BUSY:
        res->busy = true;
        res->fail = EG_AUDIT_UNAVAILABLE;
        snprintf(res->reason, sizeof(res->reason),
                 "too many password checks at once; try again shortly");
        goto out;
    case PW_WRONG:
        res->fail = u != NULL ? EG_AUDIT_AUTH_BAD_PASSWORD : EG_AUDIT_AUTH_UNKNOWN_USER;
        snprintf(res->reason, sizeof(res->reason), REASON_BADPW);
        goto out;
    }
    /* A password equal to the dummy's would pass for an unknown user: no. */
    if (u == NULL) {
        res->fail = EG_AUDIT_AUTH_UNKNOWN_USER;
        snprintf(res->reason, sizeof(res->reason), REASON_BADPW);
        goto out;
    }
    rc = 0;
out:
    free(user);
    if (pw != NULL)
        OPENSSL_clear_free(pw, strlen(pw) + 1);
    return rc;
}

static void sha256_hex(const uint8_t *der, size_t len, char *out, size_t outlen)
{
    uint8_t md[32];
    unsigned int n = 0;
    size_t o;

    o = (size_t)snprintf(out, outlen, "cert:");
    if (EVP_Digest(der, len, md, &n, EVP_sha256(), NULL) != 1)
        n = 0;
    for (unsigned int i = 0; i < n && o + 2 < outlen; i++, o += 2)
        snprintf(out + o, outlen - o, "%02x", md[i]);
}

static X509 *cert_from_der(const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);

    if (x != NULL && p != der + len) {
        X509_free(x);
        x = NULL;
    }
    return x;
}

/* Verifies leaf (with the client's intermediates) for TLS client use under store. */
static int verify_chain(X509_STORE *store, const uint8_t *const *certs, const size_t *lens,
                        size_t n, char *why, size_t whylen)
{
    X509 *leaf = cert_from_der(certs[0], lens[0]);
    STACK_OF(X509) *chain = sk_X509_new_null();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int rc = -1;

    if (leaf == NULL) {
        snprintf(why, whylen, "client certificate does not parse");
        goto out;
    }
    for (size_t i = 1; i < n && chain != NULL; i++) {
        X509 *x = cert_from_der(certs[i], lens[i]);

        if (x == NULL || !sk_X509_push(chain, x)) {
            X509_free(x);
            snprintf(why, whylen, "client certificate chain does not parse");
            goto out;
        }
    }
    if (chain == NULL || ctx == NULL || !X509_STORE_CTX_init(ctx, store, leaf, chain) ||
        !X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT)) {
        snprintf(why, whylen, "out of memory");
        goto out;
    }
    if (X509_verify_cert(ctx) != 1) {
        snprintf(why, whylen, "%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        goto out;
    }
    rc = 0;
out:
    X509_STORE_CTX_free(ctx);
    sk_X509_pop_free(chain, X509_free);
    X509_free(leaf);
    return rc;
}

static X509_STORE *profile_store(eg_auth *a, const eg_profile_cfg *p)
{
    for (size_t i = 0; i < a->cfg->nprofiles; i++)
        if (&a->cfg->profiles[i] == p)
            return a->stores[i];
    return NULL;
}

int eg_auth_cert(eg_auth *a, const eg_profile_cfg *p, const uint8_t *const *certs,
                 const size_t *lens, size_t n, eg_auth_result *res)
{
    X509_STORE *store = profile_store(a, p);
    char why[120];
    int rc = -1;

    memset(res, 0, sizeof(*res));
    if (n == 0) {
        res->fail = EG_AUDIT_AUTH_MISSING;
        snprintf(res->reason, sizeof(res->reason), "a client certificate is required");
        goto out;
    }
    sha256_hex(certs[0], lens[0], res->principal, sizeof(res->principal));
    res->fail = EG_AUDIT_AUTH_CERT_UNTRUSTED;
    if (store == NULL) {
        snprintf(res->reason, sizeof(res->reason), "profile %s has no client CA bundle", p->name);
        goto out;
    }
    if (verify_chain(store, certs, lens, n, why, sizeof(why)) != 0) {
        snprintf(res->reason, sizeof(res->reason),
                 "client certificate is not trusted for profile %s: %s", p->name, why);
        goto out;
    }
    rc = 0;
out:
    return rc;
}
