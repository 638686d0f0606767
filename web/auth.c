#include <arpa/inet.h>
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
#include "clock.h"

#define MAC_LEN      32
#define CACHE_WAYS   4
#define CACHE_SETS   (EG_AUTH_CACHE_ENTRIES / CACHE_WAYS)
#define SOURCE_WAYS  4
#define SOURCE_SETS  (EG_AUTH_SOURCES / SOURCE_WAYS)
#define KDF_FLIGHTS  64
#define BASIC_MAX    1024
#define REASON_BADPW "wrong user name or password"

/*
 * An unknown user still costs one KDF run, against this well-formed hash that
 * no password matches, so that response times do not tell which names exist.
 */
#define DUMMY_HASH                                                                                 \
    "$pbkdf2-sha256$600000$AAAAAAAAAAAAAAAAAAAAAA==$"                                              \
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

/* Wrong passwords from one source in its current window. */
typedef struct source_entry {
    uint8_t key[MAC_LEN]; /* MAC of the source (an IPv4 address or an IPv6 /64) */
    uint64_t since;       /* monotonic seconds of the window's first failure; 0: empty */
    unsigned failures;
} source_entry;

/* The pw_result of password_ok; in a kdf_flight, what every request that joined it gets. */
typedef enum { PW_OK, PW_WRONG, PW_BUSY, PW_THROTTLED } pw_result;

/* One password check in progress, shared by the requests with the same credential MAC. */
typedef struct kdf_flight {
    uint8_t mac[MAC_LEN];
    bool used;
    bool done;
    pw_result result;
    unsigned waiters;
} kdf_flight;

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
    /* Checks in progress, under kdf_lock: a request whose credential is being checked by
       another waits for that result instead of running the KDF again (a fleet sharing one
       password, all arriving after a restart). */
    kdf_flight flights[KDF_FLIGHTS];
    pthread_cond_t kdf_done;
    /* Wrong passwords per source, under lock; set-associative like the cache. */
    source_entry sources[EG_AUTH_SOURCES];
    unsigned src_limit, src_window_s;
};

static uint64_t now_seconds(void)
{
    return (uint64_t)eg_mono_s() + 1; /* never 0, which marks an empty entry */
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
        pthread_cond_init(&a->kdf_done, NULL);
        pthread_condattr_destroy(&ca);
        a->kdf_slots = cores > 1 ? (unsigned)(cores + 1) / 2 : 1;
        a->kdf_wait_ms = 5000;
    }
    a->src_limit = cfg->auth_failures_per_minute;
    a->src_window_s = 60;
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
    pthread_cond_destroy(&a->kdf_done);
    free(a);
}

void eg_auth_adopt_cache(eg_auth *to, eg_auth *from)
{
    if (to == NULL || from == NULL)
        return;
    pthread_mutex_lock(&from->lock);
    pthread_mutex_lock(&to->lock);
    memcpy(to->key, from->key, sizeof(to->key));
    memcpy(to->cache, from->cache, sizeof(to->cache));
    /* keyed by the same MAC key: a guesser's count goes on across an operator's reloads */
    memcpy(to->sources, from->sources, sizeof(to->sources));
    pthread_mutex_unlock(&to->lock);
    pthread_mutex_unlock(&from->lock);
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

void eg_auth_set_source_limit(eg_auth *a, unsigned failures, unsigned window_s)
{
    pthread_mutex_lock(&a->lock);
    a->src_limit = failures;
    a->src_window_s = window_s ? window_s : 60;
    pthread_mutex_unlock(&a->lock);
}

/* A slot for one KDF run, waiting up to kdf_wait_ms; false when none came free. */
static bool kdf_enter(eg_auth *a)
{
    struct timespec until = eg_mono_deadline_us((uint64_t)a->kdf_wait_ms * 1000u);
    bool got = true;

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

/* --- wrong passwords per source --- */

/* The MAC of a source's address bytes: an IPv4 address, or an IPv6 address's /64 (an IPv4
   address mapped into IPv6 counts as itself). -1 when source is no address. */
static int source_key(eg_auth *a, const char *source, uint8_t out[MAC_LEN])
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    unsigned char addr[16];
    const unsigned char *bytes = addr;
    size_t n = 4, len = 0;
    EVP_MAC_CTX *ctx = NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    int rc = -1;

    if (source == NULL)
        return -1;
    if (inet_pton(AF_INET6, source, addr) == 1) {
        if (memcmp(addr, mapped, sizeof(mapped)) == 0)
            bytes = addr + 12;
        else
            n = 8;
    } else if (inet_pton(AF_INET, source, addr) != 1) {
        return -1;
    }
    if ((ctx = EVP_MAC_CTX_new(a->hmac)) == NULL ||
        EVP_MAC_init(ctx, a->key, sizeof(a->key), params) != 1 ||
        EVP_MAC_update(ctx, (const uint8_t *)"source", 6) != 1 ||
        EVP_MAC_update(ctx, bytes, n) != 1 || EVP_MAC_final(ctx, out, &len, MAC_LEN) != 1 ||
        len != MAC_LEN)
        goto out;
    rc = 0;
out:
    EVP_MAC_CTX_free(ctx);
    return rc;
}

/* Which entry a new source takes: an empty one, then one whose window has passed, then the
   oldest (so a source over its limit stays while others can go). */
static int source_rank(const eg_auth *a, const source_entry *e, uint64_t now)
{
    return e->since == 0 ? 0 : now - e->since >= a->src_window_s ? 1 : 2;
}

/* The source's entry, or with create a new one in the place source_rank picks; under lock. */
static source_entry *source_find(eg_auth *a, const uint8_t key[MAC_LEN], uint64_t now, bool create)
{
    source_entry *set = &a->sources[(((size_t)key[0] << 8 | key[1]) % SOURCE_SETS) * SOURCE_WAYS];
    source_entry *victim = NULL;

    for (int i = 0; i < SOURCE_WAYS; i++) {
        source_entry *e = &set[i];
        int r = source_rank(a, e, now), rv = victim ? source_rank(a, victim, now) : 3;

        if (e->since != 0 && memcmp(e->key, key, MAC_LEN) == 0)
            return e;
        if (r < rv || (r == rv && e->since < victim->since))
            victim = e;
    }
    if (!create)
        return NULL;
    memcpy(victim->key, key, MAC_LEN);
    victim->since = 0;
    victim->failures = 0;
    return victim;
}

/* Seconds until the source may have a password checked again; 0: now. */
static unsigned source_wait(eg_auth *a, const uint8_t key[MAC_LEN])
{
    uint64_t now = now_seconds();
    source_entry *e;
    unsigned wait = 0;

    pthread_mutex_lock(&a->lock);
    if (a->src_limit > 0 && (e = source_find(a, key, now, false)) != NULL && e->since != 0 &&
        now - e->since < a->src_window_s && e->failures >= a->src_limit)
        wait = (unsigned)(e->since + a->src_window_s - now);
    pthread_mutex_unlock(&a->lock);
    return wait;
}

static void source_failed(eg_auth *a, const uint8_t key[MAC_LEN])
{
    uint64_t now = now_seconds();
    source_entry *e;

    pthread_mutex_lock(&a->lock);
    if (a->src_limit > 0 && (e = source_find(a, key, now, true)) != NULL) {
        if (e->since == 0 || now - e->since >= a->src_window_s) {
            e->since = now;
            e->failures = 0;
        }
        e->failures++;
    }
    pthread_mutex_unlock(&a->lock);
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

/*
 * Joins the check in progress for mac and waits for its result (true, *r set), or registers
 * this request as the one that runs it (false, *mine set, or NULL when the table is full and
 * nothing is shared).
 */
static bool kdf_join(eg_auth *a, const uint8_t mac[MAC_LEN], pw_result *r, kdf_flight **mine)
{
    kdf_flight *f = NULL, *free_slot = NULL;

    *mine = NULL;
    pthread_mutex_lock(&a->kdf_lock);
    for (int i = 0; i < KDF_FLIGHTS && f == NULL; i++) {
        if (a->flights[i].used && memcmp(a->flights[i].mac, mac, MAC_LEN) == 0)
            f = &a->flights[i];
        else if (!a->flights[i].used && free_slot == NULL)
            free_slot = &a->flights[i];
    }
    if (f != NULL) {
        f->waiters++;
        while (!f->done)
            pthread_cond_wait(&a->kdf_done, &a->kdf_lock);
        *r = f->result;
        if (--f->waiters == 0)
            f->used = false;
    } else if (free_slot != NULL) {
        memcpy(free_slot->mac, mac, MAC_LEN);
        free_slot->used = true;
        free_slot->done = false;
        free_slot->waiters = 0;
        *mine = free_slot;
    }
    pthread_mutex_unlock(&a->kdf_lock);
    return f != NULL;
}

/* The check registered by kdf_join is over: its result to the requests waiting on it. */
static void kdf_land(eg_auth *a, kdf_flight *f, pw_result r)
{
    if (f == NULL)
        return;
    pthread_mutex_lock(&a->kdf_lock);
    f->result = r;
    f->done = true;
    if (f->waiters == 0)
        f->used = false;
    else
        pthread_cond_broadcast(&a->kdf_done);
    pthread_mutex_unlock(&a->kdf_lock);
}

/* The password check, through the cache; only verified credentials are cached. */

static pw_result password_ok(eg_auth *a, const eg_profile_cfg *p, const char *source,
                             const char *user, const char *pw, const eg_user_cfg *u, unsigned *wait)
{
    /* An unknown user costs one check too, against a hash that no password matches (and fails
       even if one did), so that timing does not tell names apart. */
    const char *hash = u != NULL ? u->hash : DUMMY_HASH;
    uint8_t mac[MAC_LEN], src[MAC_LEN];
    bool have_mac = credential_mac(a, p->name, user, pw, hash, mac) == 0;
    bool have_src = false;
    kdf_flight *flight = NULL;
    pw_result r;

    if (have_mac && cache_hit(a, mac)) {
        r = PW_OK;
        goto out;
    }
    if ((have_src = source_key(a, source, src) == 0) && (*wait = source_wait(a, src)) > 0) {
        r = PW_THROTTLED;
        goto out;
    }
    if (have_mac && kdf_join(a, mac, &r, &flight))
        goto counted;
    if (!kdf_enter(a)) {
        r = PW_BUSY;
    } else {
        atomic_fetch_add(&a->kdf_runs, 1);
        r = eg_password_verify(pw, hash) && u != NULL ? PW_OK : PW_WRONG;
        kdf_leave(a);
        if (r == PW_OK && have_mac)
            cache_add(a, mac); /* before the waiters wake, so later requests hit the cache */
    }
    kdf_land(a, flight, r);
counted:
    if (r == PW_WRONG && have_src)
        source_failed(a, src);
out:
    OPENSSL_cleanse(mac, sizeof(mac));
    return r;
}

int eg_auth_basic(eg_auth *a, const eg_profile_cfg *p, const char *source, const char *header,
                  eg_auth_result *res)
{
    char *user = NULL, *pw = NULL;
    const eg_user_cfg *u;
    unsigned wait = 0;
    int rc = -1;

    memset(res, 0, sizeof(*res));
    res->fail = EG_AUDIT_AUTH_MISSING;
    if (header == NULL) {
        snprintf(res->reason, sizeof(res->reason), "credentials required");
        goto out;
    }
    if (eg_auth_parse_basic(header, &user, &pw, res->reason, sizeof(res->reason)) != 0)
        goto out;
    u = find_user(p, user);
    if (u != NULL) {
        snprintf(res->principal, sizeof(res->principal), "basic:%s", user);
    } else {
        /* Not one of the profile's users: perhaps a password typed into the name field, which
           must not reach the log or the ledger. A digest still tells a repeated name. */
        unsigned char md[32];
        unsigned int mdlen = 0;

        EVP_Digest(user, strlen(user), md, &mdlen, EVP_sha256(), NULL);
        snprintf(res->principal, sizeof(res->principal), "basic:?%zu-%02x%02x%02x%02x",
                 strlen(user), md[0], md[1], md[2], md[3]);
    }
    switch (password_ok(a, p, source, user, pw, u, &wait)) {
    case PW_OK:
        break;
    case PW_THROTTLED:
        res->throttled = wait;
        res->fail = EG_AUDIT_AUTH_THROTTLED;
        snprintf(res->reason, sizeof(res->reason),
                 "too many wrong passwords from this address; try again in %u s", wait);
        goto out;
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
    rc = 0;
out:
    free(user);
    if (pw != NULL)
        OPENSSL_clear_free(pw, strlen(pw) + 1);
    return rc;
}

/* The certificate's principal, "cert:<SHA-256 hex>", into out; the digest in md. */
static void sha256_hex(const uint8_t *der, size_t len, uint8_t md[32], char *out, size_t outlen)
{
    unsigned int n = 0;
    size_t o;

    o = (size_t)snprintf(out, outlen, "cert:");
    if (EVP_Digest(der, len, md, &n, EVP_sha256(), NULL) != 1) {
        memset(md, 0, 32);
        n = 0;
    }
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

/* A renewal's allowance for its own expired certificate (verify_chain). */
typedef struct grace {
    long allowed_s; /* 0: none */
    long expired_s; /* set when the leaf was let through expired */
} grace;

/*
 * Lets one error through: the leaf's own expiry, within the allowance (the context's app
 * data, set only for it). An expired issuer, a leaf not yet valid, a bad signature or a wrong
 * purpose stay errors.
 */
static int renewal_verify_cb(int ok, X509_STORE_CTX *ctx)
{
    grace *g = X509_STORE_CTX_get_app_data(ctx);
    const ASN1_TIME *end;
    int days, secs;
    long ago;

    if (ok || g == NULL || g->allowed_s <= 0 ||
        X509_STORE_CTX_get_error(ctx) != X509_V_ERR_CERT_HAS_EXPIRED ||
        X509_STORE_CTX_get_error_depth(ctx) != 0)
        return ok;
    end = X509_get0_notAfter(X509_STORE_CTX_get_current_cert(ctx));
    if (end == NULL || !ASN1_TIME_diff(&days, &secs, end, NULL))
        return 0;
    ago = (long)days * 86400 + secs;
    if (ago <= 0 || ago > g->allowed_s)
        return 0;
    g->expired_s = ago;
    return 1;
}

/* Verifies leaf (with the client's intermediates) for TLS client use under store. */
static int verify_chain(X509_STORE *store, const uint8_t *const *certs, const size_t *lens,
                        size_t n, grace *g, char *why, size_t whylen)
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
    if (g->allowed_s > 0) {
        /* Our own context: its app data is ours to use. */
        if (!X509_STORE_CTX_set_app_data(ctx, g)) {
            snprintf(why, whylen, "out of memory");
            goto out;
        }
        X509_STORE_CTX_set_verify_cb(ctx, renewal_verify_cb);
    }
    if (X509_verify_cert(ctx) != 1) {
        int err = X509_STORE_CTX_get_error(ctx);

        snprintf(why, whylen, "%s%s", X509_verify_cert_error_string(err),
                 err == X509_V_ERR_CERT_HAS_EXPIRED && X509_STORE_CTX_get_error_depth(ctx) == 0 &&
                         g->allowed_s > 0
                     ? " longer ago than renew_expired_days allows"
                     : "");
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

int eg_auth_cert_blocked(eg_auth *a, const uint8_t *leaf, size_t len, eg_auth_result *res)
{
    uint8_t md[32];

    memset(res, 0, sizeof(*res));
    sha256_hex(leaf, len, md, res->principal, sizeof(res->principal));
    if (!eg_blocklist_has(a->cfg->blocked, md))
        return 0;
    res->fail = EG_AUDIT_AUTH_CERT_BLOCKED;
    snprintf(res->reason, sizeof(res->reason),
             "this client certificate is blocked (blocked_certs)");
    return 1;
}

static int auth_cert(eg_auth *a, const eg_profile_cfg *p, const uint8_t *const *certs,
                     const size_t *lens, size_t n, long grace_s, eg_auth_result *res)
{
    X509_STORE *store = profile_store(a, p);
    grace g = {.allowed_s = grace_s};
    char why[120];
    int rc = -1;

    memset(res, 0, sizeof(*res));
    if (n == 0) {
        res->fail = EG_AUDIT_AUTH_MISSING;
        snprintf(res->reason, sizeof(res->reason), "a client certificate is required");
        goto out;
    }
    if (eg_auth_cert_blocked(a, certs[0], lens[0], res))
        goto out;
    res->fail = EG_AUDIT_AUTH_CERT_UNTRUSTED;
    if (store == NULL) {
        snprintf(res->reason, sizeof(res->reason), "profile %s has no client CA bundle", p->name);
        goto out;
    }
    if (verify_chain(store, certs, lens, n, &g, why, sizeof(why)) != 0) {
        snprintf(res->reason, sizeof(res->reason),
                 "client certificate is not trusted for profile %s: %s", p->name, why);
        goto out;
    }
    res->expired_s = g.expired_s;
    rc = 0;
out:
    return rc;
}

int eg_auth_cert(eg_auth *a, const eg_profile_cfg *p, const uint8_t *const *certs,
                 const size_t *lens, size_t n, eg_auth_result *res)
{
    return auth_cert(a, p, certs, lens, n, 0, res);
}

int eg_auth_cert_renewal(eg_auth *a, const eg_profile_cfg *p, const uint8_t *const *certs,
                         const size_t *lens, size_t n, eg_auth_result *res)
{
    return auth_cert(a, p, certs, lens, n, (long)p->renew_expired_days * 86400, res);
}
