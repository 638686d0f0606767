/*
 * Basic credentials are parsed strictly; a verified password is cached (the
 * KDF runs once for repeated requests) but a wrong one never is; client
 * certificates are verified per profile, so one from profile A's CA is
 * refused on profile B.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "auth.h"
#include "cu_run.h"

static char dir[] = "/tmp/eg-test-auth-XXXXXX";
static char ca_a_file[128], ca_b_file[128];
static eg_config cfg;
static eg_auth *auth;
static EVP_PKEY *key;
static X509 *ca_a, *ca_b, *inter_a, *leaf_a, *leaf_b, *leaf_via_inter, *server_only_a;

/* A certificate valid from `from` to `to` seconds from now. */
static X509 *make_cert_valid(const char *cn, X509 *issuer, bool ca, int eku_nid, long from,
                             long to);

static X509 *make_cert(const char *cn, X509 *issuer, bool ca, int eku_nid)
{
    return make_cert_valid(cn, issuer, ca, eku_nid, -60, 3600);
}

static X509 *make_cert_valid(const char *cn, X509 *issuer, bool ca, int eku_nid, long from, long to)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    X509V3_CTX v3;
    X509_EXTENSION *ext = NULL;
    static long serial = 1;
    const char *eku = eku_nid == NID_client_auth ? "clientAuth" : "serverAuth";
    bool ok;

    ok = x != NULL && name != NULL && X509_set_version(x, X509_VERSION_3) &&
         ASN1_INTEGER_set(X509_get_serialNumber(x), serial++) &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                    0) &&
         X509_set_subject_name(x, name) &&
         X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name) &&
         X509_gmtime_adj(X509_getm_notBefore(x), from) &&
         X509_gmtime_adj(X509_getm_notAfter(x), to) && X509_set_pubkey(x, key);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    if (ok && ca)
        ok = (ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE")) &&
             X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    ext = NULL;
    if (ok && eku_nid != 0)
        ok = (ext = X509V3_EXT_conf_nid(NULL, &v3, NID_ext_key_usage, eku)) &&
             X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    X509_NAME_free(name);
    if (!ok || !X509_sign(x, key, EVP_sha256())) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static int write_pem(const char *path, X509 *x)
{
    FILE *fp = fopen(path, "w");
    int ok = fp != NULL && PEM_write_X509(fp, x);

    if (fp != NULL)
        fclose(fp);
    return ok ? 0 : -1;
}

static void profile(eg_profile_cfg *p, const char *name, const char *client_ca)
{
    p->name = strdup(name);
    p->label = strdup(name);
    p->auth = EG_AUTH_BASIC | EG_AUTH_MTLS;
    p->client_ca_file = strdup(client_ca);
    p->users[0].name = strdup("alice");
    p->nusers = 1;
}

static int suite_init(void)
{
    /* One software key for every certificate: what is checked is who signed what. */
    if (mkdtemp(dir) == NULL || (key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")) == NULL)
        return -1;
    ca_a = make_cert("CA A", NULL, true, 0);
    ca_b = make_cert("CA B", NULL, true, 0);
    inter_a = make_cert("CA A intermediate", ca_a, true, 0);
    leaf_a = make_cert("device A", ca_a, false, NID_client_auth);
    leaf_b = make_cert("device B", ca_b, false, NID_client_auth);
    leaf_via_inter = make_cert("device A2", inter_a, false, NID_client_auth);
    server_only_a = make_cert("server A", ca_a, false, NID_server_auth);
    if (!ca_a || !ca_b || !inter_a || !leaf_a || !leaf_b || !leaf_via_inter || !server_only_a)
        return -1;
    snprintf(ca_a_file, sizeof(ca_a_file), "%s/ca-a.pem", dir);
    snprintf(ca_b_file, sizeof(ca_b_file), "%s/ca-b.pem", dir);
    if (write_pem(ca_a_file, ca_a) != 0 || write_pem(ca_b_file, ca_b) != 0)
        return -1;
    profile(&cfg.profiles[0], "a", ca_a_file);
    profile(&cfg.profiles[1], "b", ca_b_file);
    cfg.nprofiles = 2;
    /* Both profiles hold the same user with the same password. */
    if (eg_password_hash("s3cret", &cfg.profiles[0].users[0].hash) != 0 ||
        (cfg.profiles[1].users[0].hash = strdup(cfg.profiles[0].users[0].hash)) == NULL)
        return -1;
    return eg_auth_new(&cfg, &auth);
}

static int suite_clean(void)
{
    eg_auth_free(auth);
    for (size_t i = 0; i < cfg.nprofiles; i++) {
        eg_profile_cfg *p = &cfg.profiles[i];

        free(p->name);
        free(p->label);
        free(p->client_ca_file);
        free(p->users[0].name);
        free(p->users[0].hash);
    }
    X509_free(ca_a);
    X509_free(ca_b);
    X509_free(inter_a);
    X509_free(leaf_a);
    X509_free(leaf_b);
    X509_free(leaf_via_inter);
    X509_free(server_only_a);
    EVP_PKEY_free(key);
    unlink(ca_a_file);
    unlink(ca_b_file);
    rmdir(dir);
    return 0;
}

static char *basic(const char *userpass)
{
    static char hdr[256];

    strcpy(hdr, "Basic ");
    EVP_EncodeBlock((unsigned char *)hdr + 6, (const unsigned char *)userpass,
                    (int)strlen(userpass));
    return hdr;
}

static void expect_parse(const char *header, const char *user, const char *pw)
{
    char *u = NULL, *p = NULL, why[200] = "";

    CU_ASSERT_EQUAL_FATAL(eg_auth_parse_basic(header, &u, &p, why, sizeof(why)), 0);
    CU_ASSERT_STRING_EQUAL(u, user);
    CU_ASSERT_STRING_EQUAL(p, pw);
    free(u);
    free(p);
}

static void expect_parse_refused(const char *header, const char *reason)
{
    char *u = NULL, *p = NULL, why[200] = "";

    CU_ASSERT_EQUAL(eg_auth_parse_basic(header, &u, &p, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NULL(u);
    CU_ASSERT_PTR_NULL(p);
    if (strstr(why, reason) == NULL)
        fprintf(stderr, "\"%s\": reason \"%s\" lacks \"%s\"\n", header, why, reason);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, reason));
}

static void test_basic_parsing(void)
{
    expect_parse(basic("alice:s3cret"), "alice", "s3cret");
    expect_parse("basic   YWxpY2U6czNjcmV0  ", "alice", "s3cret");
    expect_parse(basic("bob:a:b:c"), "bob", "a:b:c");
    expect_parse(basic("bob:"), "bob", "");
    expect_parse_refused("Bearer abc", "not HTTP Basic");
    expect_parse_refused("Basic", "not HTTP Basic");
    expect_parse_refused("BasicYWxpY2U6czNjcmV0", "not HTTP Basic");
    expect_parse_refused("Basic YWxp*2U6czNjcmV0", "not base64");
    expect_parse_refused("Basic YWxpY2U6czNjcmV", "not base64");
    expect_parse_refused("Basic ", "not base64");
    expect_parse_refused(basic("alice"), "not user:password");
    expect_parse_refused(basic(":pw"), "not user:password");
    expect_parse_refused("Basic YQBiOmM=", "NUL byte"); /* "a\0b:c" */
    expect_parse_refused(basic("a\tb:c"), "control character");
}

static void test_cache_hit_skips_kdf(void)
{
    eg_auth_result res;
    uint64_t runs = eg_auth_kdf_runs(auth);

    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, basic("alice:s3cret"), &res), 0);
    CU_ASSERT_STRING_EQUAL(res.principal, "basic:alice");
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(auth), runs + 1);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, basic("alice:s3cret"), &res),
                        0);
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(auth), runs + 1);
    /* The profile is part of the cache key: B verifies for itself once. */
    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[1], NULL, basic("alice:s3cret"), &res), 0);
    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[1], NULL, basic("alice:s3cret"), &res), 0);
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(auth), runs + 2);
}

static void test_wrong_password_never_cached(void)
{
    eg_auth_result res;
    uint64_t runs = eg_auth_kdf_runs(auth);

    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, basic("alice:wrong"), &res),
                        -1);
        CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_BAD_PASSWORD);
        CU_ASSERT_STRING_EQUAL(res.reason, "wrong user name or password");
    }
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(auth), runs + 2);
    /* A prefix or extension of the right password is not a hit either. */
    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, basic("alice:s3cre"), &res), -1);
    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, basic("alice:s3cret "), &res), -1);
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(auth), runs + 4);
}

static void test_unknown_and_missing(void)
{
    eg_auth_result res;
    uint64_t runs = eg_auth_kdf_runs(auth);

    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, basic("mallory:s3cret"), &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_UNKNOWN_USER);
    /* Not a user of the profile: perhaps a password in the name field, so only its length and
       the start of its SHA-256 ("mallory": c0a49776...) are kept. */
    CU_ASSERT_STRING_EQUAL(res.principal, "basic:?7-c0a49776");
    /* Same cost as a known user, so timing does not tell names apart. */
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(auth), runs + 1);
    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, NULL, &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_MISSING);
    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, "Basic !!", &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_MISSING);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "not base64"));
}

typedef struct attempt {
    char header[256];
    eg_auth_result res;
    int rc;
} attempt;

static void *attempt_run(void *arg)
{
    attempt *t = arg;

    t->rc = eg_auth_basic(auth, &cfg.profiles[0], NULL, t->header, &t->res);
    return NULL;
}

/*
 * Password checks not in the cache run at most `slots` at once, so wrong guesses cannot take
 * every core; one that finds no slot free in time is refused as busy (503), and a device whose
 * password is cached is not held up by them.
 */
static void test_password_checks_are_rationed(void)
{
    attempt t[3];
    pthread_t th[3];
    eg_auth_result res;

    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, basic("alice:s3cret"), &res), 0);
    eg_auth_set_kdf_limits(auth, 1, 60000);
    for (int i = 0; i < 3; i++) {
        char up[32];

        snprintf(up, sizeof(up), "alice:wrong%d", i);
        snprintf(t[i].header, sizeof(t[i].header), "%s", basic(up));
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, attempt_run, &t[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(t[i].rc, -1);
        CU_ASSERT_EQUAL(t[i].res.fail, EG_AUDIT_AUTH_BAD_PASSWORD);
        CU_ASSERT_FALSE(t[i].res.busy);
    }
    CU_ASSERT_EQUAL(eg_auth_kdf_peak(auth), 1); /* three checks, never two at once */

    /* One slow check holds the only slot; another, with no time to wait, is busy. */
    eg_auth_set_kdf_limits(auth, 1, 0);
    {
        uint64_t runs = eg_auth_kdf_runs(auth);

        snprintf(t[0].header, sizeof(t[0].header), "%s", basic("alice:wrong-again"));
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[0], NULL, attempt_run, &t[0]), 0);
        for (int i = 0; i < 500 && eg_auth_kdf_runs(auth) == runs; i++)
            usleep(10000);
        CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, basic("alice:guess"), &res),
                        -1);
        CU_ASSERT_TRUE(res.busy);
        CU_ASSERT_EQUAL(res.fail, EG_AUDIT_UNAVAILABLE);
        /* the cached password needs no slot */
        CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], NULL, basic("alice:s3cret"), &res),
                        0);
        pthread_join(th[0], NULL);
        CU_ASSERT_EQUAL(t[0].rc, -1);
        CU_ASSERT_FALSE(t[0].res.busy);
    }
    eg_auth_set_kdf_limits(auth, 2, 5000);
}

typedef struct shared_attempt {
    eg_auth *auth;
    pthread_barrier_t *start;
    const char *header;
    eg_auth_result res;
    int rc;
} shared_attempt;

static void *shared_attempt_run(void *arg)
{
    shared_attempt *t = arg;

    pthread_barrier_wait(t->start);
    t->rc = eg_auth_basic(t->auth, &cfg.profiles[0], NULL, t->header, &t->res);
    return NULL;
}

/* n requests with the same header at once on a; how many got rc. */
static int same_at_once(eg_auth *a, const char *header, int n, int rc)
{
    shared_attempt t[8];
    pthread_t th[8];
    pthread_barrier_t start;
    int got = 0;

    pthread_barrier_init(&start, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        t[i] = (shared_attempt){.auth = a, .start = &start, .header = header};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, shared_attempt_run, &t[i]), 0);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        got += t[i].rc == rc && !t[i].res.busy;
    }
    pthread_barrier_destroy(&start);
    return got;
}

/*
 * A fleet sharing one password, all arriving at once (after a restart): one KDF run answers all
 * of them, right or wrong, instead of one each queued behind one slot (most would get 503 busy).
 * A reload carries the verified credentials over to the new handle.
 */
static void test_one_check_serves_the_same_credential(void)
{
    eg_auth *fresh = NULL, *next = NULL;
    eg_auth_result res;
    char good[128], bad[128];

    snprintf(good, sizeof(good), "%s", basic("alice:s3cret"));
    snprintf(bad, sizeof(bad), "%s", basic("alice:not-it"));
    CU_ASSERT_EQUAL_FATAL(eg_auth_new(&cfg, &fresh), 0);
    eg_auth_set_kdf_limits(fresh, 1, 1000); /* 8 checks in turn would take 4 s */
    CU_ASSERT_EQUAL(same_at_once(fresh, good, 8, 0), 8);
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(fresh), 1);
    CU_ASSERT_EQUAL(same_at_once(fresh, bad, 8, -1), 8);
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(fresh), 2);

    CU_ASSERT_EQUAL_FATAL(eg_auth_new(&cfg, &next), 0);
    eg_auth_adopt_cache(next, fresh);
    CU_ASSERT_EQUAL(eg_auth_basic(next, &cfg.profiles[0], NULL, good, &res), 0);
    CU_ASSERT_EQUAL(eg_auth_basic(next, &cfg.profiles[0], NULL, bad, &res), -1);
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(next), 1); /* the wrong one only: never cached */
    eg_auth_free(next);
    eg_auth_free(fresh);
}

/* One wrong-password check from source: the refusal's kind. */
static eg_audit_kind wrong_from(const char *source, eg_auth_result *res)
{
    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], source, basic("alice:guess"), res), -1);
    return res->fail;
}

/*
 * Wrong passwords from one address: past the limit, refused unchecked (no KDF) until the
 * window ends, with how long to wait; other addresses, other /64s, and credentials verified
 * before still pass meanwhile. An IPv6 /64 counts as one address, an IPv4-mapped address as
 * its IPv4 one.
 */
static void test_wrong_passwords_are_limited_per_address(void)
{
    eg_auth_result res;
    uint64_t runs;

    /* A window longer than any run of checks here, even under a sanitizer's slow KDF. */
    eg_auth_set_source_limit(auth, 2, 600);
    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], "192.0.2.7", basic("alice:s3cret"), &res),
                    0);
    CU_ASSERT_EQUAL(wrong_from("192.0.2.7", &res), EG_AUDIT_AUTH_BAD_PASSWORD);
    CU_ASSERT_EQUAL(
        eg_auth_basic(auth, &cfg.profiles[0], "192.0.2.7", basic("mallory:guess"), &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_UNKNOWN_USER); /* counts as well */
    CU_ASSERT_EQUAL(res.throttled, 0);

    runs = eg_auth_kdf_runs(auth);
    CU_ASSERT_EQUAL(wrong_from("192.0.2.7", &res), EG_AUDIT_AUTH_THROTTLED);
    CU_ASSERT(res.throttled >= 1 && res.throttled <= 600);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "too many wrong passwords from this address"));
    CU_ASSERT_STRING_EQUAL(res.principal, "basic:alice");
    CU_ASSERT_EQUAL(wrong_from("::ffff:192.0.2.7", &res), EG_AUDIT_AUTH_THROTTLED);
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(auth), runs);
    CU_ASSERT_EQUAL(eg_auth_basic(auth, &cfg.profiles[0], "192.0.2.7", basic("alice:s3cret"), &res),
                    0); /* verified before: no KDF needed, not limited */
    CU_ASSERT_EQUAL(wrong_from("192.0.2.8", &res), EG_AUDIT_AUTH_BAD_PASSWORD);

    CU_ASSERT_EQUAL(wrong_from("2001:db8::1", &res), EG_AUDIT_AUTH_BAD_PASSWORD);
    CU_ASSERT_EQUAL(wrong_from("2001:db8::2", &res), EG_AUDIT_AUTH_BAD_PASSWORD);
    CU_ASSERT_EQUAL(wrong_from("2001:db8::ffff:3", &res), EG_AUDIT_AUTH_THROTTLED);
    CU_ASSERT_EQUAL(wrong_from("2001:db8:0:1::1", &res), EG_AUDIT_AUTH_BAD_PASSWORD);
    CU_ASSERT_EQUAL(wrong_from(NULL, &res), EG_AUDIT_AUTH_BAD_PASSWORD); /* no address: no limit */

    /* The window ends: counted from the failure, which is recorded once its check is over. */
    eg_auth_set_source_limit(auth, 1, 2);
    CU_ASSERT_EQUAL(wrong_from("203.0.113.5", &res), EG_AUDIT_AUTH_BAD_PASSWORD);
    CU_ASSERT_EQUAL(wrong_from("203.0.113.5", &res), EG_AUDIT_AUTH_THROTTLED);
    usleep(2100 * 1000);
    CU_ASSERT_EQUAL(wrong_from("203.0.113.5", &res), EG_AUDIT_AUTH_BAD_PASSWORD);
    eg_auth_set_source_limit(auth, 0, 60);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(wrong_from("198.51.100.1", &res), EG_AUDIT_AUTH_BAD_PASSWORD);
}

/* A reload does not give a guesser a new minute: the next handle takes the counts over. */
static void test_reload_keeps_the_counts(void)
{
    eg_auth *before = NULL, *after = NULL;
    eg_auth_result res;

    CU_ASSERT_EQUAL_FATAL(eg_auth_new(&cfg, &before), 0);
    CU_ASSERT_EQUAL_FATAL(eg_auth_new(&cfg, &after), 0);
    eg_auth_set_source_limit(before, 1, 600);
    eg_auth_set_source_limit(after, 1, 600);
    CU_ASSERT_EQUAL(
        eg_auth_basic(before, &cfg.profiles[0], "198.51.100.9", basic("alice:guess"), &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_BAD_PASSWORD);
    eg_auth_adopt_cache(after, before);
    CU_ASSERT_EQUAL(
        eg_auth_basic(after, &cfg.profiles[0], "198.51.100.9", basic("alice:guess"), &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_THROTTLED);
    CU_ASSERT_EQUAL(eg_auth_kdf_runs(after), 0);
    eg_auth_free(after);
    eg_auth_free(before);
}

static int check_cert_with(eg_auth *with, const eg_profile_cfg *p, X509 *leaf, X509 *inter,
                           eg_auth_result *res)
{
    unsigned char *der[2] = {NULL, NULL};
    size_t lens[2] = {0, 0}, n = 0;
    int rc;

    lens[n++] = (size_t)i2d_X509(leaf, &der[0]);
    if (inter != NULL)
        lens[n++] = (size_t)i2d_X509(inter, &der[1]);
    rc = eg_auth_cert(with, p, (const uint8_t *const *)der, lens, n, res);
    OPENSSL_free(der[0]);
    OPENSSL_free(der[1]);
    return rc;
}

static int check_cert(const eg_profile_cfg *p, X509 *leaf, X509 *inter, eg_auth_result *res)
{
    return check_cert_with(auth, p, leaf, inter, res);
}

static void test_cert_per_profile(void)
{
    eg_auth_result res;
    unsigned char md[32];
    unsigned int mdlen;
    char want[80] = "cert:";

    CU_ASSERT_EQUAL(check_cert(&cfg.profiles[0], leaf_a, NULL, &res), 0);
    X509_digest(leaf_a, EVP_sha256(), md, &mdlen);
    for (unsigned int i = 0; i < mdlen; i++)
        snprintf(want + 5 + 2 * i, sizeof(want) - 5 - 2 * i, "%02x", md[i]);
    CU_ASSERT_STRING_EQUAL(res.principal, want);
    CU_ASSERT_EQUAL(check_cert(&cfg.profiles[1], leaf_a, NULL, &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_CERT_UNTRUSTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "not trusted for profile b"));
    CU_ASSERT_EQUAL(check_cert(&cfg.profiles[1], leaf_b, NULL, &res), 0);
    CU_ASSERT_EQUAL(check_cert(&cfg.profiles[0], leaf_b, NULL, &res), -1);
}

/* The list of the file at path, written with text, in blocked (a copy of cfg); 0 or -1. */
static int block(eg_config *blocked, const char *path, const char *text)
{
    char why[PATH_MAX + 128];
    FILE *f = fopen(path, "w");

    if (f == NULL)
        return -1;
    fputs(text, f);
    fclose(f);
    eg_blocklist_free(blocked->blocked);
    blocked->blocked = NULL;
    blocked->blocked_certs_file = (char *)path;
    return eg_blocklist_load(path, &blocked->blocked, why, sizeof(why));
}

/*
 * blocked_certs: a listed certificate is refused on every profile, before its chain is looked
 * at, with its own audit kind; the rest pass. Each form an operator may paste is read; a bad
 * line is refused (and, read by the configuration, keeps a reload from taking effect).
 */
static void test_blocked_certificates(void)
{
    char path[PATH_MAX + 32], hex[2 * 32 + 1], colons[3 * 32], text[256];
    unsigned char md[32];
    unsigned int mdlen;
    eg_config blocked = cfg;
    eg_auth *b = NULL;
    eg_auth_result res;

    X509_digest(leaf_b, EVP_sha256(), md, &mdlen);
    for (unsigned int i = 0; i < mdlen; i++) {
        snprintf(hex + 2 * i, sizeof(hex) - 2 * i, "%02x", md[i]);
        snprintf(colons + 3 * i, sizeof(colons) - 3 * i, "%02X%s", md[i], i + 1 < mdlen ? ":" : "");
    }
    snprintf(path, sizeof(path), "%s/blocked.txt", dir);
    snprintf(text, sizeof(text), "# retired 2026-11-24\n\nsha256 Fingerprint=%s\n", colons);
    CU_ASSERT_EQUAL_FATAL(block(&blocked, path, text), 0);
    CU_ASSERT_EQUAL_FATAL(eg_auth_new(&blocked, &b), 0);
    CU_ASSERT_EQUAL(check_cert_with(b, &blocked.profiles[1], leaf_b, NULL, &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_CERT_BLOCKED);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "blocked"));
    CU_ASSERT_EQUAL(check_cert_with(b, &blocked.profiles[0], leaf_b, NULL, &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_CERT_BLOCKED);
    CU_ASSERT_EQUAL(check_cert_with(b, &blocked.profiles[0], leaf_a, NULL, &res), 0);
    eg_auth_free(b);
    b = NULL;

    snprintf(text, sizeof(text), "cert:%s  # device B\n", hex);
    CU_ASSERT_EQUAL_FATAL(block(&blocked, path, text), 0);
    CU_ASSERT_EQUAL_FATAL(eg_auth_new(&blocked, &b), 0);
    CU_ASSERT_EQUAL(check_cert_with(b, &blocked.profiles[1], leaf_b, NULL, &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_CERT_BLOCKED);
    eg_auth_free(b);

    snprintf(text, sizeof(text), "%s\n%.62s\n", hex, hex); /* one octet short on line 2 */
    CU_ASSERT_EQUAL(block(&blocked, path, text), -1);
    eg_blocklist_free(blocked.blocked);
}

static void test_cert_chain_and_purpose(void)
{
    eg_auth_result res;

    CU_ASSERT_EQUAL(check_cert(&cfg.profiles[0], leaf_via_inter, NULL, &res), -1);
    CU_ASSERT_EQUAL(check_cert(&cfg.profiles[0], leaf_via_inter, inter_a, &res), 0);
    CU_ASSERT_EQUAL(check_cert(&cfg.profiles[1], leaf_via_inter, inter_a, &res), -1);
    CU_ASSERT_EQUAL(check_cert(&cfg.profiles[0], server_only_a, NULL, &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_CERT_UNTRUSTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "purpose"));
    CU_ASSERT_EQUAL(eg_auth_cert(auth, &cfg.profiles[0], NULL, NULL, 0, &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_MISSING);
}

static int check_renewal(const eg_profile_cfg *p, X509 *leaf, eg_auth_result *res)
{
    unsigned char *der = NULL;
    size_t len = (size_t)i2d_X509(leaf, &der);
    int rc = eg_auth_cert_renewal(auth, p, (const uint8_t *const *)&der, &len, 1, res);

    OPENSSL_free(der);
    return rc;
}

/*
 * renew_expired_days: a device back from months on a shelf renews the certificate that expired
 * meanwhile, within the profile's days, on simplereenroll only; nothing else is let through.
 */
static void test_renewal_of_an_expired_certificate(void)
{
    const long day = 86400;
    eg_profile_cfg *p = &cfg.profiles[0];
    X509 *old = make_cert_valid("device A old", ca_a, false, NID_client_auth, -10 * day, -2 * day);
    X509 *early = make_cert_valid("device A early", ca_a, false, NID_client_auth, day, 10 * day);
    X509 *other = make_cert_valid("device B old", ca_b, false, NID_client_auth, -10 * day, -day);
    eg_auth_result res;

    CU_ASSERT_FATAL(old != NULL && early != NULL && other != NULL);
    /* Not allowed: refused as before, for renewal as for enrollment. */
    p->renew_expired_days = 0;
    CU_ASSERT_EQUAL(check_renewal(p, old, &res), -1);
    CU_ASSERT_EQUAL(res.fail, EG_AUDIT_AUTH_CERT_UNTRUSTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "certificate has expired"));
    CU_ASSERT_PTR_NULL(strstr(res.reason, "renew_expired_days"));
    /* Expired two days ago; one day allowed. */
    p->renew_expired_days = 1;
    CU_ASSERT_EQUAL(check_renewal(p, old, &res), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "longer ago than renew_expired_days allows"));
    /* Three days allowed: admitted, and how long ago it expired is said. */
    p->renew_expired_days = 3;
    CU_ASSERT_EQUAL(check_renewal(p, old, &res), 0);
    CU_ASSERT(res.expired_s >= 2 * day - 60 && res.expired_s <= 2 * day + 60);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.principal, "cert:"));
    /* simpleenroll never takes it. */
    CU_ASSERT_EQUAL(check_cert(p, old, NULL, &res), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "certificate has expired"));
    /* A valid certificate renews with expired_s 0. */
    CU_ASSERT_EQUAL(check_renewal(p, leaf_a, &res), 0);
    CU_ASSERT_EQUAL(res.expired_s, 0);
    /* Not yet valid, or from another profile's CA: refused whatever the allowance. */
    CU_ASSERT_EQUAL(check_renewal(p, early, &res), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "not yet valid"));
    CU_ASSERT_EQUAL(check_renewal(p, other, &res), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "unable to get local issuer"));
    p->renew_expired_days = 0;
    X509_free(old);
    X509_free(early);
    X509_free(other);
}

/* The allowance is the leaf's own: an expired issuing CA stays a refusal. */
static void test_renewal_needs_a_valid_issuer(void)
{
    const long day = 86400;
    X509 *ca_old = make_cert_valid("CA old", NULL, true, 0, -30 * day, -day);
    X509 *leaf =
        make_cert_valid("device old CA", ca_old, false, NID_client_auth, -20 * day, -2 * day);
    char file[160];
    eg_config c2 = {0};
    eg_auth *a2 = NULL;
    eg_auth_result res;
    unsigned char *der = NULL;
    size_t len;

    CU_ASSERT_FATAL(ca_old != NULL && leaf != NULL);
    snprintf(file, sizeof(file), "%s/ca-old.pem", dir);
    CU_ASSERT_EQUAL_FATAL(write_pem(file, ca_old), 0);
    profile(&c2.profiles[0], "old", file);
    c2.profiles[0].renew_expired_days = 365;
    c2.profiles[0].users[0].hash = strdup(cfg.profiles[0].users[0].hash);
    c2.nprofiles = 1;
    CU_ASSERT_EQUAL_FATAL(eg_auth_new(&c2, &a2), 0);
    len = (size_t)i2d_X509(leaf, &der);
    CU_ASSERT_EQUAL(
        eg_auth_cert_renewal(a2, &c2.profiles[0], (const uint8_t *const *)&der, &len, 1, &res), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(res.reason, "certificate has expired"));
    CU_ASSERT_PTR_NULL(strstr(res.reason, "renew_expired_days"));
    OPENSSL_free(der);
    eg_auth_free(a2);
    free(c2.profiles[0].name);
    free(c2.profiles[0].label);
    free(c2.profiles[0].client_ca_file);
    free(c2.profiles[0].users[0].name);
    free(c2.profiles[0].users[0].hash);
    unlink(file);
    X509_free(ca_old);
    X509_free(leaf);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"Basic credentials are parsed strictly", test_basic_parsing},
        {"a cache hit skips the KDF", test_cache_hit_skips_kdf},
        {"a wrong password is never cached", test_wrong_password_never_cached},
        {"unknown users and missing credentials", test_unknown_and_missing},
        {"password checks are rationed", test_password_checks_are_rationed},
        {"wrong passwords are limited per address", test_wrong_passwords_are_limited_per_address},
        {"a reload keeps the per-address counts", test_reload_keeps_the_counts},
        {"one check serves the same credential", test_one_check_serves_the_same_credential},
        {"a certificate is trusted per profile", test_cert_per_profile},
        {"blocked certificates are refused everywhere", test_blocked_certificates},
        {"client intermediates and the sslclient purpose", test_cert_chain_and_purpose},
        {"renewal of an expired certificate", test_renewal_of_an_expired_certificate},
        {"renewal needs a valid issuer", test_renewal_needs_a_valid_issuer},
        CU_TEST_INFO_NULL,
    };

    return eg_cu_run("web/auth", suite_init, suite_clean, tests);
}
