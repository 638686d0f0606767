/*
 * The core: profiles with their CA keys and chains, loaded at open and
 * read-only until a reload puts a whole new set in their place, so
 * eg_core_enroll can run on many threads at once (the token and the ledger
 * do their own locking). Every call that looks at a profile holds the
 * profile lock for reading until it is done with it; a reload waits for
 * those calls, swaps the set, and frees the old one.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>

#include "audit.h"
#include "clock.h"
#include "core.h"
#include "der.h"
#include "errors.h"
#include "issue.h"
#include "ledger.h"
#include "limit.h"
#include "p11.h"
#include "pem.h"
#include "policy.h"
#include "provider.h"
#include "skg.h"

/* A subject as the ledger records it (RFC 2253), at most this long with its NUL. */
#define EG_SUBJECT_TEXT_MAX 256
/* At most how long a certificate is sent again to a request identical to the one it answered. */
#define REPLAY_MAX_S 86400
/* A serverkeygen answer is sent again from the key part the ledger keeps, so only while it does. */
_Static_assert(REPLAY_MAX_S <= EG_LEDGER_KEY_PART_KEEP_S, "key parts must outlive the replay");

typedef struct core_profile {
    eg_profile_cfg cfg; /* our own copy; users and other web-only parts left out */
    eg_policy pol;      /* pol.cfg points at cfg */
    eg_issue_ca ca;
    uint8_t *cacerts;
    size_t cacerts_len;
    uint8_t *csrattrs; /* NULL: nothing to say */
    size_t csrattrs_len;
    eg_skg_profile skg;
} core_profile;

typedef struct profile_set {
    core_profile *profiles;
    size_t n;
    eg_skg_caps caps; /* serverkeygen: what the token can do, probed for these profiles */
    bool probed, probed_rsa;
} profile_set;

struct eg_core {
    eg_token *tok;
    eg_ledger *lg;
    pthread_rwlock_t lock; /* over set */
    profile_set *set;
    EVP_MD *sha256;     /* fetched once: the request hash of every enrollment */
    eg_limiter *limits; /* the profiles' issue_limit counts, kept across reloads */
};

void eg_answer_clear(eg_answer *a)
{
    if (a == NULL)
        return;
    free(a->der);
    if (a->key_secure)
        OPENSSL_secure_clear_free(a->key, a->key_len);
    else
        OPENSSL_free(a->key);
    memset(a, 0, sizeof(*a));
}

static void answer_set(eg_answer *a, eg_status st, eg_audit_kind ev, eg_policy_dim dim,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void answer_set(eg_answer *a, eg_status st, eg_audit_kind ev, eg_policy_dim dim,
                       const char *fmt, ...)
{
    va_list ap;

    a->status = st;
    a->event = ev;
    a->dim = dim;
    va_start(ap, fmt);
    vsnprintf(a->reason, sizeof(a->reason), fmt, ap);
    va_end(ap);
}

static int answer_copy(eg_answer *a, const uint8_t *der, size_t len)
{
    if ((a->der = malloc(len)) == NULL)
        return -1;
    memcpy(a->der, der, len);
    a->der_len = len;
    return 0;
}

/* ---- profiles ---- */

/* The caller holds core->lock. */
static core_profile *find_profile(eg_core *core, const char *label)
{
    size_t i;

    if (label == NULL)
        label = "";
    for (i = 0; i < core->set->n; i++) {
        if (strcmp(core->set->profiles[i].cfg.label, label) == 0)
            return &core->set->profiles[i];
    }
    return NULL;
}

static void profile_clear(core_profile *p)
{
    size_t i;

    free(p->cfg.name);
    free(p->cfg.label);
    free(p->cfg.ca_key_uri);
    free(p->cfg.ca_chain_file);
    free(p->cfg.subject_template);
    for (i = 0; i < p->cfg.nsans; i++)
        free(p->cfg.sans[i].pattern);
    free(p->cfg.skg_recipients_file);
    for (i = 0; i < p->cfg.nskg_keks; i++)
        free(p->cfg.skg_keks[i].uri);
    eg_skg_profile_clear(&p->skg);
    eg_issue_ca_clear(&p->ca);
    free(p->cacerts);
    OPENSSL_free(p->csrattrs);
    memset(p, 0, sizeof(*p));
}

static char *dup_or_empty(const char *s)
{
    return strdup(s != NULL ? s : "");
}

/* Copies what the core uses; password hashes and the web's settings stay behind. */
static int profile_copy(const eg_profile_cfg *src, core_profile *p)
{
    eg_profile_cfg *d = &p->cfg;
    size_t i;
    int ok;

    *d = *src;
    memset(d->users, 0, sizeof(d->users));
    d->nusers = 0;
    d->realm = d->client_ca_file = NULL;
    d->name = d->label = d->ca_key_uri = d->ca_chain_file = d->subject_template = NULL;
    for (i = 0; i < d->nsans; i++)
        d->sans[i].pattern = NULL;
    d->skg_recipients_file = NULL;
    for (i = 0; i < d->nskg_keks; i++)
        d->skg_keks[i].uri = NULL;
    ok = (d->name = dup_or_empty(src->name)) != NULL &&
         (d->label = dup_or_empty(src->label)) != NULL &&
         (d->ca_key_uri = dup_or_empty(src->ca_key_uri)) != NULL &&
         (d->ca_chain_file = dup_or_empty(src->ca_chain_file)) != NULL &&
         (src->subject_template == NULL ||
          (d->subject_template = strdup(src->subject_template)) != NULL);
    for (i = 0; ok && i < d->nsans; i++)
        ok = (d->sans[i].pattern = dup_or_empty(src->sans[i].pattern)) != NULL;
    for (i = 0; ok && i < d->nskg_keks; i++)
        ok = (d->skg_keks[i].uri = dup_or_empty(src->skg_keks[i].uri)) != NULL;
    ok = ok && (src->skg_recipients_file == NULL ||
                (d->skg_recipients_file = strdup(src->skg_recipients_file)) != NULL);
    p->pol.cfg = d;
    return ok ? 0 : -1;
}

static time_t asn1_time_unix(const ASN1_TIME *t)
{
    struct tm tm;

    if (ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return timegm(&tm);
}

/* The digest for the CA's key: SHA-384 for P-384, SHA-512 for P-521, none for Ed25519. */
static const char *ca_digest(EVP_PKEY *pub)
{
    char group[64] = "";

    switch (EVP_PKEY_get_base_id(pub)) {
    case EVP_PKEY_ED25519:
        return NULL;
    case EVP_PKEY_EC:
        EVP_PKEY_get_group_name(pub, group, sizeof(group), NULL);
        if (strcmp(group, "secp384r1") == 0 || strcmp(group, "P-384") == 0)
            return "SHA384";
        if (strcmp(group, "secp521r1") == 0 || strcmp(group, "P-521") == 0)
            return "SHA512";
        return "SHA256";
    default:
        return "SHA256";
    }
}

/*
 * RFC 7030 4.1.3 and 4.2.3: a certs-only SignedData (no signers) holding the
 * certificates, the self-signed ones after the others. After a root key
 * rollover the chain starts with NewWithNew, and NewWithOld has the same name
 * and key; OpenSSL 3.0 takes the first match in the untrusted certificates as
 * the issuer and does not try another, so a device that trusts only the old
 * root must meet NewWithOld first.
 */
static int cacerts_der(STACK_OF(X509) * chain, uint8_t **der, size_t *len)
{
    PKCS7 *p7 = PKCS7_new();
    unsigned char *buf = NULL;
    int i, roots, n = -1, ok;

    /*
     * The encapsulated content is id-data with no content at all: clients such
     * as Bouncy Castle refuse a certs-only answer that carries any, even empty.
     */
    ok = p7 != NULL && PKCS7_set_type(p7, NID_pkcs7_signed) == 1 &&
         (p7->d.sign->contents->type = OBJ_nid2obj(NID_pkcs7_data)) != NULL;
    for (roots = 0; roots < 2; roots++) {
        for (i = 0; ok && i < sk_X509_num(chain); i++) {
            if ((X509_self_signed(sk_X509_value(chain, i), 0) == 1) == roots)
                ok = PKCS7_add_certificate(p7, sk_X509_value(chain, i)) == 1;
        }
    }
    if (ok)
        n = i2d_PKCS7(p7, &buf);
    PKCS7_free(p7);
    if (n <= 0)
        return -1;
    *der = malloc((size_t)n);
    if (*der != NULL)
        memcpy(*der, buf, (size_t)n);
    *len = (size_t)n;
    OPENSSL_free(buf);
    return *der != NULL ? 0 : -1;
}

static uint8_t *put(uint8_t *p, const void *src, size_t n)
{
    memcpy(p, src, n);
    return p + n;
}

/*
 * The issued certificate in a->der becomes the certs-only SignedData EST
 * answers with (RFC 7030 4.2.3), written around the DER as it is: parsing the
 * certificate again only to re-encode it cost OpenSSL 3.0 a decoder chain.
 *   ContentInfo { signedData, [0] SignedData { 1, {}, { data }, [0] { cert }, {} } }
 */
static int answer_certs_only(eg_answer *a)
{
    static const uint8_t oid_signed[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                         0xf7, 0x0d, 0x01, 0x07, 0x02};
    static const uint8_t head[] = {0x02, 0x01, 0x01, /* version 1 */
                                   0x31, 0x00,       /* no digest algorithms */
                                   0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48,
                                   0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01}; /* id-data, no content */
    static const uint8_t tail[] = {0x31, 0x00};                         /* no signers */
    uint8_t hdr[4][10], *out, *p;
    size_t h[4], certs, sd, expl, total;

    certs = a->der_len;
    h[0] = eg_der_header(hdr[0], 0xa0, certs); /* [0] IMPLICIT certificates */
    sd = sizeof(head) + h[0] + certs + sizeof(tail);
    h[1] = eg_der_header(hdr[1], 0x30, sd);
    expl = h[1] + sd;
    h[2] = eg_der_header(hdr[2], 0xa0, expl); /* [0] EXPLICIT content */
    total = sizeof(oid_signed) + h[2] + expl;
    h[3] = eg_der_header(hdr[3], 0x30, total);
    if ((out = malloc(h[3] + total)) == NULL)
        return -1;
    p = put(out, hdr[3], h[3]);
    p = put(p, oid_signed, sizeof(oid_signed));
    p = put(p, hdr[2], h[2]);
    p = put(p, hdr[1], h[1]);
    p = put(p, head, sizeof(head));
    p = put(p, hdr[0], h[0]);
    p = put(p, a->der, certs);
    put(p, tail, sizeof(tail));
    free(a->der);
    a->der = out;
    a->der_len = h[3] + total;
    return 0;
}

/* Whether issuer issued x: names and key identifiers match, and its key verifies x's signature. */
static bool issued_by(X509 *x, X509 *issuer)
{
    bool yes =
        X509_check_issued(issuer, x) == X509_V_OK && X509_verify(x, X509_get0_pubkey(issuer)) == 1;

    ERR_clear_error();
    return yes;
}

/* The reason a chain file is refused. Two subject names may not fit, and a cut reason still
   says what to do: through vsnprintf, which -Wformat-truncation does not size, unlike each
   snprintf with two 256-octet names. */
static void chain_refusal(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void chain_refusal(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/*
 * RFC 7030 4.1.3: /cacerts MUST carry the current root CA certificate. The file is the issuing
 * CA, each certificate followed by its issuer, up to a self-signed root; after a key rollover
 * the root key update certificates follow, each issued by one in the file. Checked at load, so
 * --check-config and a reload refuse a file that would leave the root out of /cacerts.
 */
static int check_chain(STACK_OF(X509) * chain, const char *file, char *err, size_t cap)
{
    int i, j, n = sk_X509_num(chain);
    char name[256], next[256];

    for (i = 0; i < n && X509_self_signed(sk_X509_value(chain, i), 1) != 1; i++) {
        X509 *x = sk_X509_value(chain, i);

        X509_NAME_oneline(X509_get_subject_name(x), name, sizeof(name));
        if (i + 1 == n && X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(x)) == 0) {
            chain_refusal(err, cap,
                          "%s ends with certificate %d (%s), which names itself as its issuer but "
                          "is not signed with its own key: put the self-signed root CA "
                          "certificate of that name after it",
                          file, i + 1, name);
            return -1;
        }
        if (i + 1 == n) {
            X509_NAME_oneline(X509_get_issuer_name(x), next, sizeof(next));
            chain_refusal(err, cap,
                          "%s ends with certificate %d (%s), which is not self-signed, so /cacerts "
                          "would lack the root: append its issuer (%s), and that one's, up to the "
                          "self-signed root CA certificate",
                          file, i + 1, name, next);
            return -1;
        }
        if (!issued_by(x, sk_X509_value(chain, i + 1))) {
            X509_NAME_oneline(X509_get_subject_name(sk_X509_value(chain, i + 1)), next,
                              sizeof(next));
            chain_refusal(
                err, cap,
                "in %s, certificate %d (%s) is not issued by certificate %d after it (%s): "
                "put the issuing CA first, each certificate followed by its issuer, and the "
                "self-signed root last",
                file, i + 1, name, i + 2, next);
            return -1;
        }
    }
    for (i++; i < n; i++) {
        X509 *x = sk_X509_value(chain, i);

        /* An old root is issued by itself, and also by its key's OldWithNew in the file. */
        for (j = 0; j < n && (j == i || !issued_by(x, sk_X509_value(chain, j))); j++)
            ;
        if (j == n) {
            X509_NAME_oneline(X509_get_subject_name(x), name, sizeof(name));
            chain_refusal(
                err, cap,
                "in %s, certificate %d (%s) comes after the root but no certificate in the "
                "file issued it: only root key update certificates and old roots may follow "
                "the root; remove it",
                file, i + 1, name);
            return -1;
        }
    }
    ERR_clear_error();
    return 0;
}

static int load_ca(core_profile *p, char *err, size_t cap)
{
    STACK_OF(X509) *chain = eg_pem_read_certs(p->cfg.ca_chain_file);
    int rc = -1;

    if (chain == NULL) {
        snprintf(err, cap, "no certificate in %s", p->cfg.ca_chain_file);
        goto out;
    }
    if (eg_provider_load_key(NULL, p->cfg.ca_key_uri, &p->ca.key) != 0) {
        snprintf(err, cap, "cannot load the CA key %s from the token", p->cfg.ca_key_uri);
        goto out;
    }
    p->ca.cert = X509_dup(sk_X509_value(chain, 0));
    if (p->ca.cert == NULL || EVP_PKEY_eq(X509_get0_pubkey(p->ca.cert), p->ca.key) != 1) {
        snprintf(err, cap, "the first certificate of %s is not the certificate of %s",
                 p->cfg.ca_chain_file, p->cfg.ca_key_uri);
        goto out;
    }
    if (X509_check_ca(p->ca.cert) < 1) {
        snprintf(err, cap, "the first certificate of %s is not a CA", p->cfg.ca_chain_file);
        goto out;
    }
    if (check_chain(chain, p->cfg.ca_chain_file, err, cap) != 0)
        goto out;
    /* Cache the CA's extensions now, while one thread owns it. */
    X509_check_purpose(p->ca.cert, -1, 0);
    p->ca.md = ca_digest(X509_get0_pubkey(p->ca.cert));
    if (eg_issue_ca_ready(&p->ca) != 0) {
        snprintf(err, cap, "cannot make a signing context for %s", p->cfg.ca_key_uri);
        goto out;
    }
    p->ca.not_before = asn1_time_unix(X509_get0_notBefore(p->ca.cert));
    p->ca.not_after = asn1_time_unix(X509_get0_notAfter(p->ca.cert));
    if (cacerts_der(chain, &p->cacerts, &p->cacerts_len) != 0) {
        snprintf(err, cap, "cannot encode the CA chain as PKCS#7");
        goto out;
    }
    rc = 0;
out:
    sk_X509_pop_free(chain, X509_free);
    return rc;
}

static int profile_load(const eg_profile_cfg *src, core_profile *p)
{
    char err[512] = "out of memory";
    int rc = -1;

    if (profile_copy(src, p) != 0)
        goto out;
    if (p->cfg.subject_template != NULL &&
        eg_subject_tmpl_parse(p->cfg.subject_template, &p->pol.tmpl, err, sizeof(err)) != 0)
        goto out;
    if (load_ca(p, err, sizeof(err)) != 0)
        goto out;
    if (p->cfg.skg_modes != 0 && eg_skg_profile_load(&p->cfg, &p->skg, err, sizeof(err)) != 0)
        goto out;
    if (eg_csrattrs_der(&p->pol, &p->csrattrs, &p->csrattrs_len) != 0) {
        snprintf(err, sizeof(err), "cannot encode the CSR attributes");
        goto out;
    }
    rc = 0;
out:
    if (rc != 0) {
        fprintf(stderr, "estgated: profile %s: %s\n", src->name ? src->name : "?", err);
        eg_err_print(stderr);
    }
    return rc;
}

static int open_token(const eg_config *cfg, eg_token **tok)
{
    eg_token_config tc = {
        .module_path = cfg->module_path,
        .init_args = cfg->init_args,
        .token_label = cfg->token_label,
        .pin_file = cfg->pin_file,
        .pool_size = cfg->pool_size,
        .recover_ms = cfg->recover_ms,
        .calls = cfg->calls,
        .connections = cfg->connections,
    };

    if (eg_token_open(&tc, tok) != 0) {
        fprintf(stderr, "estgated: cannot open token \"%s\" with %s\n",
                cfg->token_label ? cfg->token_label : "", cfg->module_path ? cfg->module_path : "");
        eg_err_print(stderr);
        return -1;
    }
    /* Worth knowing when throughput through a token server looks capped. */
    printf("estgated: token \"%s\" in %s, calls %s, %s\n", cfg->token_label, cfg->module_path,
           eg_calls_words(eg_token_calls(*tok)), eg_connections_words(eg_token_connections(*tok)));
    fflush(stdout);
    if (eg_provider_init(NULL) != 0 || eg_provider_add_token(NULL, *tok) != 0) {
        fprintf(stderr, "estgated: cannot make the token reachable through the provider\n");
        eg_err_print(stderr);
        return -1;
    }
    return 0;
}

static void set_free(profile_set *set)
{
    if (set == NULL)
        return;
    for (size_t i = 0; i < set->n; i++)
        profile_clear(&set->profiles[i]);
    free(set->profiles);
    free(set);
}

/* cfg's profiles with their CA keys (from the open token), chains and answers. */
static int set_load(const eg_config *cfg, profile_set **out)
{
    profile_set *set = calloc(1, sizeof(*set));
    int rc = -1;

    if (set == NULL || cfg->nprofiles == 0 ||
        (set->profiles = calloc(cfg->nprofiles, sizeof(*set->profiles))) == NULL)
        goto out;
    for (; set->n < cfg->nprofiles; set->n++) {
        if (profile_load(&cfg->profiles[set->n], &set->profiles[set->n]) != 0) {
            set->n++; /* so that set_free frees what it got */
            goto out;
        }
    }
    *out = set;
    set = NULL;
    rc = 0;
out:
    set_free(set);
    return rc;
}

void eg_core_close(eg_core *core)
{
    if (core == NULL)
        return;
    set_free(core->set);
    pthread_rwlock_destroy(&core->lock);
    eg_ledger_close(core->lg);
    EVP_MD_free(core->sha256);
    eg_limiter_free(core->limits);
    if (core->tok != NULL) {
        eg_provider_remove_token(NULL, core->tok);
        eg_token_free(core->tok);
    }
    free(core);
}

void eg_core_stop_writes(eg_core *core)
{
    if (core != NULL)
        eg_ledger_stop(core->lg);
}

int eg_core_lock_init(pthread_rwlock_t *lock)
{
    pthread_rwlockattr_t attr;
    int rc;

    if (pthread_rwlockattr_init(&attr) != 0)
        return -1;
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    rc = pthread_rwlock_init(lock, &attr) == 0 ? 0 : -1;
    pthread_rwlockattr_destroy(&attr);
    return rc;
}

/*
 * What the token can do for set's serverkeygen profiles: the earlier set's
 * findings when they cover it, else a new probe (a reload that first asks
 * for RSA keys probes again), then every such profile checked. Runs before
 * the set is in place, so no request waits on a probe. 0, or -1 after naming
 * each problem on stderr.
 */
static int skg_check(eg_token *tok, profile_set *set, const profile_set *prev, const char *path)
{
    bool rsa = false, any = false;
    int problems = 0;

    for (size_t i = 0; i < set->n; i++)
        eg_skg_wants(&set->profiles[i].cfg, &any, &rsa);
    if (!any)
        return 0;
    if (prev != NULL && prev->probed && (!rsa || prev->probed_rsa)) {
        set->caps = prev->caps;
        set->probed_rsa = prev->probed_rsa;
    } else {
        if (eg_skg_probe(tok, rsa, &set->caps) != 0)
            return -1;
        set->probed_rsa = rsa;
        if (set->caps.wraps_unextractable)
            fprintf(stderr,
                    "estgated: note: token '%s' wraps keys marked not extractable (NSS "
                    "softoken does); estgate wraps only the session keys it makes for "
                    "serverkeygen\n",
                    eg_token_label(tok));
    }
    set->probed = true;
    for (size_t i = 0; i < set->n; i++)
        problems += eg_skg_check_profile(tok, path, &set->profiles[i].cfg, &set->caps,
                                         &set->profiles[i].skg);
    return problems == 0 ? 0 : -1;
}

static void set_retention(eg_core *core, const eg_config *cfg)
{
    eg_ledger_retention keep = {.keep_days = cfg->audit_keep_days,
                                .keep_rows = cfg->audit_keep_rows};

    eg_ledger_set_retention(core->lg, &keep);
}

/* seed_limits' walk over the ledger. */
typedef struct seeding {
    const eg_config *cfg;
    eg_limiter *limits;
    time_t now;
    size_t n;
} seeding;

static int seed_one(void *arg, const char *profile, const char *principal, const char *subject,
                    bool renewal, int64_t created)
{
    seeding *s = arg;
    char key[320];

    for (size_t i = 0; i < s->cfg->nprofiles; i++) {
        const eg_profile_cfg *p = &s->cfg->profiles[i];

        if (p->issue_limit == 0 || strcmp(p->name, profile) != 0 ||
            created < (int64_t)(s->now - (time_t)p->issue_limit_s))
            continue;
        if (renewal)
            snprintf(key, sizeof(key), "renewal:%s", subject);
        else
            snprintf(key, sizeof(key), "%s", principal);
        eg_limiter_seed(s->limits, p->name, key, p->issue_limit_s, (time_t)created, s->now);
        s->n++;
        break; /* profile names are unique */
    }
    return 0;
}

/*
 * issue_limit survives a restart: the certificates of the windows still running are counted
 * again from the ledger, as they were counted when issued. A ledger that cannot be read leaves
 * the counts at zero, and says so: the daemon still starts.
 */
static void seed_limits(eg_core *core, const eg_config *cfg)
{
    seeding s = {.cfg = cfg, .limits = core->limits, .now = time(NULL)};
    unsigned longest = 0;

    for (size_t i = 0; i < cfg->nprofiles; i++)
        if (cfg->profiles[i].issue_limit > 0 && cfg->profiles[i].issue_limit_s > longest)
            longest = cfg->profiles[i].issue_limit_s;
    if (longest == 0)
        return;
    if (eg_ledger_issued_since(core->lg, (int64_t)(s.now - (time_t)longest), seed_one, &s) != 0)
        fprintf(stderr, "estgated: issue_limit: the ledger's recent certificates could not be "
                        "read; the counts start at zero\n");
    else
        fprintf(stderr,
                "estgated: issue_limit: %zu certificate%s of the running windows counted "
                "from the ledger\n",
                s.n, s.n == 1 ? "" : "s");
}

int eg_core_open(const eg_config *cfg, eg_core **out)
{
    eg_core *core = calloc(1, sizeof(*core));
    int rc = -1;

    if (core == NULL || eg_core_lock_init(&core->lock) != 0) {
        free(core);
        return -1;
    }
    if (cfg == NULL || cfg->nprofiles == 0 || cfg->ledger_path == NULL ||
        (core->sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL)) == NULL ||
        (core->limits = eg_limiter_new()) == NULL)
        goto out;
    if (open_token(cfg, &core->tok) != 0 || set_load(cfg, &core->set) != 0 ||
        skg_check(core->tok, core->set, NULL, cfg->path) != 0)
        goto out;
    if (eg_ledger_open(cfg->ledger_path, NULL, &core->lg) != 0) {
        fprintf(stderr, "estgated: cannot open the ledger %s\n", cfg->ledger_path);
        goto out;
    }
    set_retention(core, cfg);
    seed_limits(core, cfg);
    *out = core;
    core = NULL;
    rc = 0;
out:
    eg_core_close(core);
    return rc;
}

int eg_core_reload_prepare(eg_core *core, const eg_config *cfg, eg_core_next **out)
{
    profile_set *set = NULL;

    if (core == NULL || cfg == NULL || set_load(cfg, &set) != 0)
        return -1;
    /* Only a reload replaces core->set, so this thread may read it unlocked. */
    if (skg_check(core->tok, set, core->set, cfg->path) != 0) {
        set_free(set);
        return -1;
    }
    *out = (eg_core_next *)set;
    return 0;
}

void eg_core_reload_commit(eg_core *core, const eg_config *cfg, eg_core_next *next)
{
    profile_set *old;

    pthread_rwlock_wrlock(&core->lock);
    old = core->set;
    core->set = (profile_set *)next;
    pthread_rwlock_unlock(&core->lock);
    set_free(old);
    set_retention(core, cfg);
}

/* ---- enroll ---- */

typedef struct enroll {
    eg_core *core;
    const eg_enroll_req *req;
    core_profile *prof;
    eg_csr *csr;
    int64_t intent_id;
    bool audited; /* the audit row went into the ledger with the certificate */
    eg_answer a;
    bool skg;            /* serverkeygen: the key is the token's, not the CSR's */
    bool skg_encrypt;    /* serverkeygen: the key part is an EnvelopedData, not a plaintext key */
    eg_skg_result kg;    /* serverkeygen: the generated key */
    bool sent_again;     /* the answer is an identical request's, from the ledger */
    bool limit_taken;    /* a slot of the profile's issue_limit is this request's... */
    char limit_key[320]; /* ...counted under this name */
    char replaces[48];   /* the serial, in hex, of a too old certificate of the same request */
    X509_NAME *subject;  /* simplereenroll: the current certificate's subject, kept as it is */
} enroll;

/* How many times n occurs in names. */
static int name_count(const GENERAL_NAMES *names, GENERAL_NAME *n)
{
    int i, c = 0;

    for (i = 0; i < sk_GENERAL_NAME_num(names); i++)
        c += GENERAL_NAME_cmp(sk_GENERAL_NAME_value(names, i), n) == 0;
    return c;
}

/*
 * The same names, each as often: equal counts alone let a CSR repeat one name in place of
 * another it drops (DNS:a,DNS:a for DNS:a,email:b). Equal sizes and, for each of x's names, as
 * many in y as in x leave y no room for a name x lacks.
 */
static bool same_names(const GENERAL_NAMES *x, const GENERAL_NAMES *y)
{
    int i, n = sk_GENERAL_NAME_num(x) < 0 ? 0 : sk_GENERAL_NAME_num(x);

    if (n != (sk_GENERAL_NAME_num(y) < 0 ? 0 : sk_GENERAL_NAME_num(y)))
        return false;
    for (i = 0; i < n; i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(x, i);

        if (name_count(x, g) != name_count(y, g))
            return false;
    }
    return true;
}

/* An attribute value's text as UTF-8, byte for byte (no case or blank folding). */
static bool same_text(const ASN1_STRING *a, const ASN1_STRING *b)
{
    unsigned char *ta = NULL, *tb = NULL;
    int na = ASN1_STRING_to_UTF8(&ta, a), nb = ASN1_STRING_to_UTF8(&tb, b);
    bool same = na >= 0 && na == nb && memcmp(ta, tb, (size_t)na) == 0;

    OPENSSL_free(ta);
    OPENSSL_free(tb);
    return same;
}

/*
 * RFC 7030 4.2.2 asks for an identical subject. X509_NAME_cmp is too loose for that (it folds
 * case and blanks: CN=DEV1 would pass for CN=dev1), a DER compare too strict (a device that
 * writes PrintableString where the certificate has UTF8String means the same name). The rule:
 * the same RDNs in the same order, the same attribute types in each, and each value the same
 * text once both are UTF-8.
 */
static bool same_subject(const X509_NAME *x, const X509_NAME *y)
{
    int i, n = X509_NAME_entry_count(x);

    if (n != X509_NAME_entry_count(y))
        return false;
    for (i = 0; i < n; i++) {
        const X509_NAME_ENTRY *a = X509_NAME_get_entry(x, i), *b = X509_NAME_get_entry(y, i);

        if (X509_NAME_ENTRY_set(a) != X509_NAME_ENTRY_set(b) ||
            OBJ_cmp(X509_NAME_ENTRY_get_object(a), X509_NAME_ENTRY_get_object(b)) != 0 ||
            !same_text(X509_NAME_ENTRY_get_data(a), X509_NAME_ENTRY_get_data(b)))
            return false;
    }
    return true;
}

/* Whether each of the name's values has the string type a certificate should carry it in. */
static bool conforming_strings(const X509_NAME *name)
{
    int i;
    bool ok = true;

    for (i = 0; ok && i < X509_NAME_entry_count(name); i++) {
        const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
        const ASN1_STRING *v = X509_NAME_ENTRY_get_data(e);
        ASN1_STRING *s = eg_policy_name_value(OBJ_obj2nid(X509_NAME_ENTRY_get_object(e)), v);

        ok = s != NULL && ASN1_STRING_type(s) == ASN1_STRING_type(v);
        ASN1_STRING_free(s);
    }
    return ok;
}

/*
 * RFC 7030 4.2.2: the same subject and SAN as the certificate being renewed. The new certificate
 * keeps the current one's subject as it was encoded, so a relying party that compares names
 * byte for byte sees the same name; unless it has string types RFC 5280 4.1.2.4 does not let a
 * CA write (a TeletexString from before estgate re-encoded them): then the same text as the
 * profile issues it.
 */
static int check_reenroll(enroll *e)
{
    const unsigned char *p = e->req->current_cert;
    X509 *cur = d2i_X509(NULL, &p, (long)e->req->current_cert_len);
    X509_NAME *subject = NULL;
    GENERAL_NAMES *want = NULL, *have = NULL;
    int rc = -1;

    if (cur == NULL) {
        answer_set(&e->a, EG_MALFORMED, EG_AUDIT_MALFORMED, EG_DIM_NONE,
                   "the current certificate cannot be parsed");
        goto out;
    }
    subject = eg_issue_subject(&e->prof->pol, e->csr);
    want = eg_policy_csr_sans(e->csr);
    have = X509_get_ext_d2i(cur, NID_subject_alt_name, NULL, NULL);
    if (subject == NULL || !same_subject(subject, X509_get_subject_name(cur))) {
        answer_set(&e->a, EG_FORBIDDEN, EG_AUDIT_AUTH_CERT_MISMATCH, EG_DIM_SUBJECT,
                   "the CSR's subject differs from the current certificate's; a renewal must "
                   "ask for the subject exactly as the certificate has it, case and blanks too");
    } else if (!same_names(want, have)) {
        answer_set(&e->a, EG_FORBIDDEN, EG_AUDIT_AUTH_CERT_MISMATCH, EG_DIM_SAN,
                   "the CSR's subjectAltName differs from the current certificate's; a renewal "
                   "must ask for each of the certificate's names, and no other");
    } else if (!e->prof->cfg.allow_rekey &&
               EVP_PKEY_eq(X509_get0_pubkey(cur), eg_csr_pubkey(e->csr)) != 1) {
        answer_set(&e->a, EG_FORBIDDEN, EG_AUDIT_POLICY, EG_DIM_REKEY,
                   "this profile does not allow a new key at reenrollment");
    } else if (conforming_strings(X509_get_subject_name(cur)) &&
               (e->subject = X509_NAME_dup(X509_get_subject_name(cur))) == NULL) {
        answer_set(&e->a, EG_INTERNAL, EG_AUDIT_INTERNAL, EG_DIM_NONE, "out of memory");
    } else {
        rc = 0;
    }
out:
    GENERAL_NAMES_free(want);
    GENERAL_NAMES_free(have);
    X509_NAME_free(subject);
    X509_free(cur);
    ERR_clear_error();
    return rc;
}

static int policy(enroll *e, int (*check)(const eg_policy *, const eg_csr *, eg_policy_verdict *))
{
    eg_policy_verdict v;
    int rc = check(&e->prof->pol, e->csr, &v);

    if (rc == 1)
        answer_set(&e->a, EG_FORBIDDEN, EG_AUDIT_POLICY, v.dim, "%s", v.reason);
    else if (rc != 0)
        answer_set(&e->a, EG_INTERNAL, EG_AUDIT_INTERNAL, EG_DIM_NONE,
                   "the policy could not be checked");
    return rc == 0 ? 0 : -1;
}

/* A DirectoryString's text, without the whitespace around it; NULL for another type. */
static const char *directory_text(const ASN1_TYPE *v, size_t *len)
{
    const char *t;
    size_t n;

    if (v == NULL || (v->type != V_ASN1_PRINTABLESTRING && v->type != V_ASN1_UTF8STRING &&
                      v->type != V_ASN1_IA5STRING))
        return NULL;
    t = (const char *)ASN1_STRING_get0_data(v->value.asn1_string);
    n = (size_t)ASN1_STRING_length(v->value.asn1_string);
    while (n > 0 && strchr(" \t\r\n", t[n - 1]) != NULL)
        n--;
    while (n > 0 && strchr(" \t\r\n", t[0]) != NULL) {
        t++;
        n--;
    }
    *len = n;
    return t;
}

/*
 * RFC 7030 3.5: where the profile requires it, the CSR's challengePassword must be the base64 of
 * the channel binding of the TLS connection it came on (tls-unique; on TLS 1.3 tls-exporter, RFC
 * 9266). A request made on one connection then cannot be sent on another, so it was made by
 * whoever authenticated this one.
 */
static int check_binding(enroll *e)
{
    const eg_enroll_req *r = e->req;
    const STACK_OF(X509_ATTRIBUTE) *attrs = eg_csr_attributes(e->csr);
    X509_ATTRIBUTE *attr;
    char want[4 * ((64 + 2) / 3) + 1];
    const char *got;
    size_t got_len = 0, want_len;
    int idx;

    if (!e->prof->cfg.require_channel_binding)
        return 0;
    if (r->channel_binding_type != NULL && r->channel_binding_len == 0) {
        answer_set(&e->a, EG_FORBIDDEN, EG_AUDIT_POLICY, EG_DIM_BINDING,
                   "this TLS 1.2 connection was made without the extended master secret (RFC "
                   "7627), so its %s does not tell it from another connection and this profile "
                   "cannot link the request to it: connect with TLS 1.3, or with a TLS 1.2 "
                   "client that offers the extended_master_secret extension",
                   r->channel_binding_type);
        return -1;
    }
    if (r->channel_binding_type == NULL || r->channel_binding_len > 64) {
        answer_set(&e->a, EG_INTERNAL, EG_AUDIT_INTERNAL, EG_DIM_NONE,
                   "the TLS connection's channel binding is not known");
        return -1;
    }
    want_len = (size_t)EVP_EncodeBlock((unsigned char *)want, r->channel_binding,
                                       (int)r->channel_binding_len);
    idx = X509at_get_attr_by_NID(attrs, NID_pkcs9_challengePassword, -1);
    if (idx < 0) {
        answer_set(&e->a, EG_FORBIDDEN, EG_AUDIT_POLICY, EG_DIM_BINDING,
                   "this profile requires the CSR's challengePassword to be the base64 of the TLS "
                   "connection's %s (RFC 7030 3.5)",
                   r->channel_binding_type);
        return -1;
    }
    attr = X509at_get_attr(attrs, idx);
    if (X509at_get_attr_by_NID(attrs, NID_pkcs9_challengePassword, idx) >= 0 ||
        X509_ATTRIBUTE_count(attr) != 1 ||
        (got = directory_text(X509_ATTRIBUTE_get0_type(attr, 0), &got_len)) == NULL) {
        answer_set(&e->a, EG_MALFORMED, EG_AUDIT_MALFORMED, EG_DIM_NONE,
                   "the CSR's challengePassword must be one printable or UTF-8 string");
        return -1;
    }
    if (got_len != want_len || CRYPTO_memcmp(got, want, want_len) != 0) {
        answer_set(&e->a, EG_FORBIDDEN, EG_AUDIT_POLICY, EG_DIM_BINDING,
                   "the CSR's challengePassword is not the base64 of this TLS connection's %s: "
                   "make the request on the connection that sends it",
                   r->channel_binding_type);
        return -1;
    }
    return 0;
}

/* Parse, the CSR's own signature, the channel binding, policy, and the reenroll rules. 0: go on
   and issue. */
static int check_request(enroll *e)
{
    int type;

    if (eg_csr_parse(e->req->csr, e->req->csr_len, &e->csr) != 0) {
        answer_set(&e->a, EG_MALFORMED, EG_AUDIT_MALFORMED, EG_DIM_NONE,
                   "the request is not a DER PKCS#10 certification request");
        return -1;
    }
    if (e->skg) /* RFC 7030 4.4.1: the CSR's key and signature are ignored */
        return check_binding(e) != 0 ? -1 : policy(e, eg_policy_check_request);
    type = eg_csr_key_type(e->csr);
    if (eg_csr_pubkey(e->csr) == NULL &&
        (type == EVP_PKEY_RSA || type == EVP_PKEY_EC || type == EVP_PKEY_ED25519)) {
        answer_set(&e->a, EG_MALFORMED, EG_AUDIT_MALFORMED, EG_DIM_NONE,
                   "the CSR's public key cannot be read (an EC key must name its curve)");
        return -1;
    }
    /* A key of another algorithm cannot be verified here, and policy refuses it below. */
    if (eg_csr_pubkey(e->csr) != NULL && eg_csr_verify(e->csr) != 1) {
        if (eg_csr_signature_digest(e->csr) < 0)
            answer_set(&e->a, EG_MALFORMED, EG_AUDIT_CSR_SIGNATURE, EG_DIM_NONE,
                       "the CSR is signed with an algorithm estgate cannot verify; sign it with "
                       "ECDSA, RSA (PKCS#1 v1.5 or PSS) or Ed25519, and SHA-256 or stronger");
        else
            answer_set(&e->a, EG_MALFORMED, EG_AUDIT_CSR_SIGNATURE, EG_DIM_NONE,
                       "the CSR's signature does not verify with its public key");
        return -1;
    }
    if (check_binding(e) != 0 || policy(e, eg_policy_check) != 0)
        return -1;
    return e->req->current_cert != NULL ? check_reenroll(e) : 0;
}

/* Lower-case hex of b, cut to fit cap with its NUL (snprintf per octet: 1% of an enrollment). */
static void hex(const uint8_t *b, size_t n, char *out, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < n && 2 * i + 2 < cap; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 0x0f];
    }
    out[2 * i] = '\0';
}

static eg_audit_kind ok_kind(const enroll *e)
{
    if (e->skg)
        return EG_AUDIT_SERVERKEYGEN;
    return e->req->current_cert != NULL ? EG_AUDIT_REISSUED : EG_AUDIT_ISSUED;
}

static void fail_intent(enroll *e, const char *why)
{
    if (eg_ledger_fail_issue(e->core->lg, e->intent_id, why) != 0)
        fprintf(stderr,
                "estgated: intent %lld could not be marked failed (%s); it will be "
                "offered for retry\n",
                (long long)e->intent_id, why);
}

/* The audit record of e's outcome, as its answer says it. */
static eg_audit_record audit_record(const enroll *e, const char *label)
{
    return (eg_audit_record){
        .kind = e->a.event,
        .dim = e->a.dim,
        .profile = e->prof ? e->prof->cfg.name : label,
        .principal = e->req->principal,
        .peer = e->req->peer,
        .reason = e->a.reason,
        .intent_id = e->intent_id,
    };
}

/*
 * The certificate in e->a.der and the audit row of its issue, in one ledger
 * operation: one wait for the writer's commit instead of two, and no
 * certificate stored without its row.
 */
static int record_issued(enroll *e, const char *serial)
{
    char expired[48] = "";
    eg_audit_row row;
    bool keep = e->skg && e->skg_encrypt && !e->kg.key_secure && e->kg.key != NULL;
    eg_audit_record rec;
    eg_audit_event ev;

    /* A renewal of a certificate past its end (renew_expired_days): how far past, in whole
       days, or in hours (begun) under a day. */
    if (e->req->current_expired_s >= 86400)
        snprintf(expired, sizeof(expired), " expired_for=%ldd", e->req->current_expired_s / 86400);
    else if (e->req->current_expired_s > 0)
        snprintf(expired, sizeof(expired), " expired_for=%ldh",
                 (e->req->current_expired_s + 3599) / 3600);
    answer_set(&e->a, EG_OK, ok_kind(e), EG_DIM_NONE, "serial=%s%s%s%s%s%s", serial,
               e->skg ? " " : "", e->skg ? e->kg.what : "", expired,
               e->replaces[0] ? " replaces=" : "", e->replaces);
    rec = audit_record(e, NULL);
    eg_audit_event_fill(&rec, &ev, &row);
    /* Kept for a retry: an encrypted key part only, never a plaintext key (skg_again). */
    if (eg_ledger_complete_issue_key(e->core->lg, e->intent_id, e->a.der, e->a.der_len,
                                     keep ? e->kg.key : NULL, keep ? e->kg.key_len : 0, &ev) != 0)
        return -1;
    e->audited = true;
    return 0;
}

/* The subject as the ledger records it (RFC 2253), cut to fit out; "" when it cannot be. */
static void subject_text(const X509_NAME *subject, char *out, size_t cap)
{
    BIO *b = BIO_new(BIO_s_mem());
    int n = 0;

    if (b != NULL && X509_NAME_print_ex(b, subject, 0, XN_FLAG_RFC2253) >= 0)
        n = BIO_read(b, out, (int)cap - 1);
    out[n > 0 ? n : 0] = '\0';
    BIO_free(b);
}

/*
 * Whom the profile's issue_limit counts: the principal; for a renewal the subject it renews,
 * since each renewal makes a new certificate and so a new principal, and a stolen certificate
 * could otherwise renew itself without end. The subject is written as the ledger records it,
 * so that the counts can be made again from the ledger at start (seed_limits).
 */
static const char *limit_key(enroll *e, const X509_NAME *subject)
{
    char subj[EG_SUBJECT_TEXT_MAX];

    if (e->limit_key[0] != '\0')
        return e->limit_key;
    if (e->req->current_cert != NULL && subject != NULL) {
        subject_text(subject, subj, sizeof(subj));
        snprintf(e->limit_key, sizeof(e->limit_key), "renewal:%s", subj);
    } else {
        snprintf(e->limit_key, sizeof(e->limit_key), "%s",
                 e->req->principal != NULL ? e->req->principal : "anonymous");
    }
    return e->limit_key;
}

/* A slot of the profile's issue_limit for this request; false with the 429 answer set. */
static bool limit_take(enroll *e, const X509_NAME *subject)
{
    const eg_profile_cfg *c = &e->prof->cfg;
    unsigned retry = 0;

    if (c->issue_limit == 0 || e->limit_taken)
        return true;
    if (eg_limiter_take(e->core->limits, c->name, limit_key(e, subject), c->issue_limit,
                        c->issue_limit_s, time(NULL), &retry)) {
        e->limit_taken = true;
        return true;
    }
    answer_set(&e->a, EG_TOO_MANY, EG_AUDIT_ISSUE_LIMIT, EG_DIM_NONE,
               "%s has had the %u new certificate%s this profile issues it per %s "
               "(issue_limit); the next one in %u s",
               e->req->current_cert != NULL ? "this subject's renewal" : "this principal",
               c->issue_limit, c->issue_limit == 1 ? "" : "s", eg_issue_limit_period(c), retry);
    e->a.retry_after = retry;
    return false;
}

/* Build, lint, sign in the token, record. The intent is completed or failed on every path. */
static void sign_and_record(enroll *e, const eg_intent_result *ir, const X509_NAME *subject,
                            const eg_validity *val)
{
    char why[256], serial[48];
    unsigned char *der = NULL;
    int n = 0, signed_rc = 0;
    X509 *x = eg_issue_build(&e->prof->pol, &e->prof->ca, e->csr, e->skg ? &e->kg.pub : NULL,
                             subject, ir->serial, ir->serial_len, val, why, sizeof(why));

    hex(ir->serial, ir->serial_len, serial, sizeof(serial));
    if (x == NULL || eg_issue_lint(&e->prof->pol, &e->prof->ca, x, why, sizeof(why)) != 0) {
        fail_intent(e, why);
        answer_set(&e->a, EG_INTERNAL, EG_AUDIT_INTERNAL, EG_DIM_NONE, "%s", why);
    } else if ((signed_rc = eg_issue_sign(&e->prof->ca, x, why, sizeof(why))) != 0) {
        fail_intent(e, why);
        answer_set(&e->a, EG_UNAVAILABLE, EG_AUDIT_UNAVAILABLE, EG_DIM_NONE, "%s", why);
        /* A CA key gone or replaced stays so until an operator acts, as an expired CA does. */
        e->a.retry_after = signed_rc == -2 ? 3600 : 5;
    } else if ((n = i2d_X509(x, &der)) <= 0 || answer_copy(&e->a, der, (size_t)n) != 0) {
        fail_intent(e, "out of memory");
        answer_set(&e->a, EG_INTERNAL, EG_AUDIT_INTERNAL, EG_DIM_NONE, "out of memory");
    } else if (record_issued(e, serial) != 0) {
        fail_intent(e, "the certificate could not be recorded");
        eg_answer_clear(&e->a);
        answer_set(&e->a, EG_UNAVAILABLE, EG_AUDIT_UNAVAILABLE, EG_DIM_NONE,
                   "the ledger did not record the certificate");
        e->a.retry_after = 5;
    }
    OPENSSL_free(der);
    X509_free(x);
}

/*
 * The idempotency key's hash: the CSR as received, which holds everything that decides a
 * serverkeygen answer's mode and recipient (its attributes, and its key when that is the
 * recipient). serverkeygen's is told apart, so that the same CSR sent to /simpleenroll is
 * another request: neither is answered with, or supersedes, the other's certificate.
 */
static void request_hash(const enroll *e, uint8_t out[32])
{
    static const char skg_tag[] = "estgate serverkeygen";
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned len = 32;

    if (md == NULL || EVP_DigestInit_ex(md, e->core->sha256, NULL) != 1 ||
        (e->skg && EVP_DigestUpdate(md, skg_tag, sizeof(skg_tag)) != 1) ||
        EVP_DigestUpdate(md, e->req->csr, e->req->csr_len) != 1 ||
        EVP_DigestFinal_ex(md, out, &len) != 1)
        RAND_bytes(out, 32); /* never a wrong replay: at worst no replay at all */
    EVP_MD_CTX_free(md);
}

/*
 * Whether the certificate an earlier identical request got may be sent again. It is for a
 * device that lost the answer and asks again, so only while the certificate is young: a quarter
 * of its life and at most REPLAY_MAX_S, from the profile's current CA. Later the same request
 * is a device renewing with the same key: RSA PKCS#1 v1.5 and Ed25519 signatures are
 * deterministic, so its CSR is byte for byte the one before, and it must get a new
 * certificate, not its old one back (it may have expired).
 */
static bool replayable(const enroll *e, const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    int life_d, life_s, age_d, age_s, left_d, left_s;
    long long life, age, window;
    bool ok = false;

    if (x != NULL &&
        ASN1_TIME_diff(&life_d, &life_s, X509_get0_notBefore(x), X509_get0_notAfter(x)) &&
        ASN1_TIME_diff(&age_d, &age_s, X509_get0_notBefore(x), NULL) &&
        ASN1_TIME_diff(&left_d, &left_s, NULL, X509_get0_notAfter(x))) {
        life = life_d * 86400LL + life_s;
        age = age_d * 86400LL + age_s - EG_ISSUE_CLOCK_SKEW_S; /* notBefore is set back */
        window = life / 4 < REPLAY_MAX_S ? life / 4 : REPLAY_MAX_S;
        ok = left_d * 86400LL + left_s > 0 && age <= window &&
             X509_check_issued(e->prof->ca.cert, x) == X509_V_OK;
    }
    X509_free(x);
    return ok;
}

/*
 * The answer an identical earlier request got (ir, EG_INTENT_ISSUED), as this one's, when it may
 * be sent again: its certificate is replayable, and for serverkeygen the request is encrypted
 * and the ledger still keeps that answer's key part (a plaintext key is never kept, so a
 * plaintext retry always gets a new key). true: e->a is that answer; ir's certificate is moved.
 */
static bool send_again(enroll *e, eg_intent_result *ir)
{
    char serial[48];

    if (ir->cert == NULL || !replayable(e, ir->cert, ir->cert_len))
        return false;
    if (e->skg) {
        if (!e->skg_encrypt || ir->key_part == NULL ||
            (e->a.key = OPENSSL_memdup(ir->key_part, ir->key_part_len)) == NULL)
            return false;
        e->a.key_len = ir->key_part_len;
        e->a.key_secure = false;
        e->a.key_ctype = EG_SKG_CT_ENVELOPED;
    }
    e->intent_id = ir->id;
    e->sent_again = true;
    e->a.der = ir->cert;
    e->a.der_len = ir->cert_len;
    ir->cert = NULL;
    hex(ir->serial, ir->serial_len, serial, sizeof(serial));
    answer_set(&e->a, EG_OK, ok_kind(e), EG_DIM_NONE, "serial=%s (sent again)", serial);
    return true;
}

/* Records the intent; a serial that is already taken is drawn again. supersede: see
   eg_issue_intent. */
static int begin_intent(enroll *e, const X509_NAME *subject, const eg_validity *val,
                        int64_t supersede, eg_intent_result *ir)
{
    uint8_t serial[EG_SERIAL_LEN];
    char subj[EG_SUBJECT_TEXT_MAX];
    eg_issue_intent in = {
        .profile = e->prof->cfg.name, /* as in the audit rows: "default", not its empty label */
        .principal = e->req->principal ? e->req->principal : "anonymous",
        .serial = serial,
        .serial_len = sizeof(serial),
        .subject = subj,
        .not_after = (int64_t)val->not_after,
        .supersede_id = supersede,
        .serverkeygen = e->skg,
    };
    int rc = -2, tries;

    subject_text(subject, subj, sizeof(subj));
    request_hash(e, in.request_hash);
    for (tries = 0; rc == -2 && tries < 8; tries++) {
        if (eg_issue_serial(serial) != 0)
            return -1;
        rc = eg_ledger_begin_issue(e->core->lg, &in, ir);
    }
    return rc;
}

static void issue(enroll *e)
{
    X509_NAME *subject =
        e->subject != NULL ? X509_NAME_dup(e->subject) : eg_issue_subject(&e->prof->pol, e->csr);
    eg_intent_result ir = {0};
    eg_validity val;
    char why[256], serial[48];
    int rc;

    if (subject == NULL) {
        answer_set(&e->a, EG_INTERNAL, EG_AUDIT_INTERNAL, EG_DIM_NONE, "cannot build the subject");
        goto out;
    }
    if ((rc = eg_issue_validity(&e->prof->pol, &e->prof->ca, time(NULL),
                                eg_policy_requested_days(e->csr), &val, why, sizeof(why))) != 0) {
        /* Not the device's fault, and not for good: once the clock is set or the CA renewed,
           the same request succeeds. */
        answer_set(&e->a, EG_UNAVAILABLE, EG_AUDIT_UNAVAILABLE, EG_DIM_NONE, "%s", why);
        e->a.retry_after = rc == -2 ? 60 : 3600;
        e->a.reason_public = true; /* the CA certificate's dates, which /cacerts shows anyway */
        goto out;
    }
    rc = begin_intent(e, subject, &val, 0, &ir);
    /* Not to be sent again: superseded by a new issuance, in the operation that begins it. */
    if (rc == 0 && ir.state == EG_INTENT_ISSUED && !send_again(e, &ir)) {
        int64_t old = ir.id;

        hex(ir.serial, ir.serial_len, e->replaces, sizeof(e->replaces));
        free(ir.cert);
        free(ir.key_part);
        ir = (eg_intent_result){0};
        rc = begin_intent(e, subject, &val, old, &ir);
    }
    if (rc != 0) {
        answer_set(&e->a, EG_UNAVAILABLE, EG_AUDIT_UNAVAILABLE, EG_DIM_NONE,
                   "the ledger did not record the intent to issue");
        e->a.retry_after = 5;
        goto out;
    }
    e->intent_id = ir.id;
    hex(ir.serial, ir.serial_len, serial, sizeof(serial));
    switch (ir.state) {
    case EG_INTENT_ISSUED: /* an idempotent retry: the same certificate, no new signature */
        /* Superseded, and then issued by a concurrent identical request: its answer, if it
           can be sent again; else that request's client has it, and this one asks again. */
        if (!e->sent_again && !send_again(e, &ir)) {
            answer_set(&e->a, EG_UNAVAILABLE, EG_AUDIT_UNAVAILABLE, EG_DIM_NONE,
                       "the same request was issued right now");
            e->a.retry_after = 1;
            e->a.reason_public = true;
        }
        break;
    case EG_INTENT_BUSY:
        answer_set(&e->a, EG_UNAVAILABLE, EG_AUDIT_UNAVAILABLE, EG_DIM_NONE,
                   "the same request is being issued right now");
        e->a.retry_after = 1;
        e->a.reason_public = true;
        break;
    case EG_INTENT_NEW:
    case EG_INTENT_RETRY:
        /* Counted here, past the ledger's replay check: a device that asks again for a
           certificate it was issued gets it whatever the limit. */
        if (!limit_take(e, subject)) {
            fail_intent(e, e->a.reason);
            break;
        }
        sign_and_record(e, &ir, subject, &val);
        break;
    }
out:
    free(ir.cert);
    free(ir.key_part);
    X509_NAME_free(subject);
}

static void printable_label(const char *s, char *out, size_t cap)
{
    size_t n = 0;

    for (; s != NULL && *s != '\0' && n + 1 < cap; s++)
        out[n++] = (*s > ' ' && *s < 0x7f && *s != '"') ? *s : '?';
    out[n] = '\0';
}

/* serverkeygen's refusal st (not EG_OK) with why as the answer; -1. */
static int skg_refused(enroll *e, eg_status st, const char *why)
{
    answer_set(&e->a, st,
               st == EG_UNAVAILABLE ? EG_AUDIT_UNAVAILABLE
               : st == EG_INTERNAL  ? EG_AUDIT_INTERNAL
                                    : EG_AUDIT_MALFORMED,
               EG_DIM_NONE, "%s", why);
    if (st == EG_UNAVAILABLE)
        e->a.retry_after = 5;
    return -1;
}

/*
 * serverkeygen, before anything is recorded or signed: the mode the request gets; for an
 * encrypted one, the answer of an identical earlier request sent again while young, with no key
 * made and no issue_limit slot taken; else a slot of issue_limit (a new key is a new live
 * certificate, a plaintext retry's too), then the key pair in the token. 0: go on and issue;
 * -1: e->a is the answer.
 */
static int skg_prepare(enroll *e)
{
    eg_issue_intent in = {
        .profile = e->prof->cfg.name,
        .principal = e->req->principal ? e->req->principal : "anonymous",
    };
    eg_intent_result ir = {0};
    char why[256];
    eg_status st;
    int rc = -1;

    if (e->prof->cfg.skg_modes == 0) {
        answer_set(&e->a, EG_FORBIDDEN, EG_AUDIT_POLICY, EG_DIM_KEY,
                   "this profile does not offer server-side key generation");
        return -1;
    }
    if ((st = eg_skg_mode(&e->core->set->caps, &e->prof->cfg, &e->prof->skg, e->csr,
                          &e->skg_encrypt, why, sizeof(why))) != EG_OK)
        return skg_refused(e, st, why);
    /* A lookup that fails only costs a key: begin_intent finds the request again. */
    if (e->skg_encrypt) {
        request_hash(e, in.request_hash);
        if (eg_ledger_find_issued(e->core->lg, &in, &ir) == 1 && send_again(e, &ir))
            goto out;
    }
    if (!limit_take(e, NULL))
        goto out;
    st = eg_skg_generate(e->core->tok, &e->core->set->caps, &e->prof->cfg, &e->prof->skg, e->csr,
                         &e->kg, why, sizeof(why));
    if (st != EG_OK) {
        skg_refused(e, st, why);
        goto out;
    }
    rc = 0;
out:
    free(ir.cert);
    free(ir.key_part);
    return rc;
}

/*
 * A failure on the appliance's side gets a reference, at the start of its
 * audit reason, for the client to quote: what failed inside stays in the log.
 */
static void answer_reference(eg_answer *a)
{
    uint8_t r[4];
    char reason[sizeof(a->reason)];

    if (a->status != EG_UNAVAILABLE && a->status != EG_INTERNAL)
        return;
    if (RAND_bytes(r, sizeof(r)) != 1)
        memset(r, 0, sizeof(r));
    hex(r, sizeof(r), a->ref, sizeof(a->ref));
    /* The end of a reason that no longer fits is dropped. */
    snprintf(reason, sizeof(reason), "ref=%s %.*s", a->ref, (int)(sizeof(reason) - 14), a->reason);
    memcpy(a->reason, reason, sizeof(reason));
}

static int run(eg_core *core, const eg_enroll_req *req, bool skg, eg_answer *out)
{
    enroll e = {.core = core, .req = req, .skg = skg};
    char label[72];
    eg_audit_record rec;

    if (core == NULL || req == NULL || out == NULL)
        return -1;
    printable_label(req->profile, label, sizeof(label));
    pthread_rwlock_rdlock(&core->lock);
    e.prof = find_profile(core, req->profile);
    if (e.prof == NULL)
        answer_set(&e.a, EG_UNKNOWN_PROFILE, EG_AUDIT_MALFORMED, EG_DIM_NONE,
                   "there is no profile \"%s\"", label);
    /* serverkeygen takes its slot before the token makes a key (skg_prepare). */
    else if (check_request(&e) == 0 && (!skg || skg_prepare(&e) == 0))
        issue(&e);
    /* Nothing new was issued: the slot is not spent. */
    if (e.limit_taken && (e.a.status != EG_OK || e.sent_again))
        eg_limiter_give_back(core->limits, e.prof->cfg.name, e.limit_key, time(NULL));
    answer_reference(&e.a);
    rec = audit_record(&e, label);
    if (e.audited)
        eg_audit_log(&rec);
    else
        eg_audit_emit(core->lg, &rec);
    pthread_rwlock_unlock(&core->lock);
    eg_csr_free(e.csr);
    X509_NAME_free(e.subject);
    if (e.a.status == EG_OK && answer_certs_only(&e.a) != 0)
        answer_set(&e.a, EG_INTERNAL, EG_AUDIT_INTERNAL, EG_DIM_NONE, "out of memory");
    if (e.a.status == EG_OK && skg && !e.sent_again) {
        e.a.key = e.kg.key;
        e.a.key_len = e.kg.key_len;
        e.a.key_secure = e.kg.key_secure;
        e.a.key_ctype = e.kg.key_ctype;
        e.kg.key = NULL;
        e.kg.key_len = 0;
    }
    eg_skg_result_clear(&e.kg);
    *out = e.a;
    return 0;
}

int eg_core_enroll(eg_core *core, const eg_enroll_req *req, eg_answer *out)
{
    return run(core, req, false, out);
}

int eg_core_serverkeygen(eg_core *core, const eg_enroll_req *req, eg_answer *out)
{
    return run(core, req, true, out);
}

/* ---- cacerts, csrattrs, audit ---- */

static int fixed_answer(eg_core *core, const char *profile, bool csrattrs, eg_answer *out)
{
    core_profile *p;
    eg_answer a = {0};

    if (core == NULL || out == NULL)
        return -1;
    pthread_rwlock_rdlock(&core->lock);
    p = find_profile(core, profile);
    if (p == NULL) {
        answer_set(&a, EG_UNKNOWN_PROFILE, EG_AUDIT_MALFORMED, EG_DIM_NONE, "no such profile");
    } else if (csrattrs && p->csrattrs == NULL) {
        answer_set(&a, EG_NOTHING, EG_AUDIT_CACERTS, EG_DIM_NONE, "no CSR attributes");
    } else if (answer_copy(&a, csrattrs ? p->csrattrs : p->cacerts,
                           csrattrs ? p->csrattrs_len : p->cacerts_len) != 0) {
        answer_set(&a, EG_INTERNAL, EG_AUDIT_INTERNAL, EG_DIM_NONE, "out of memory");
    } else {
        answer_set(&a, EG_OK, EG_AUDIT_CACERTS, EG_DIM_NONE, "%s", "");
    }
    pthread_rwlock_unlock(&core->lock);
    *out = a;
    return 0;
}

int eg_core_cacerts(eg_core *core, const char *profile, eg_answer *out)
{
    return fixed_answer(core, profile, false, out);
}

int eg_core_csrattrs(eg_core *core, const char *profile, eg_answer *out)
{
    return fixed_answer(core, profile, true, out);
}

void eg_core_audit(eg_core *core, const char *profile, const char *principal, const char *peer,
                   eg_audit_kind kind, eg_policy_dim dim, const char *reason)
{
    eg_audit_record rec = {
        .kind = kind,
        .dim = dim,
        .profile = profile,
        .principal = principal,
        .peer = peer,
        .reason = reason,
    };

    eg_audit_emit(core ? core->lg : NULL, &rec);
}

void eg_core_get_stats(eg_core *core, eg_core_stats *out)
{
    eg_token_stats ts = {0};

    eg_token_get_stats(core->tok, &ts);
    out->token_signatures = ts.sign_calls;
    out->certificates = eg_ledger_count_issued(core->lg);
}
