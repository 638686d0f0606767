/*
 * The core against a real token: a CA made by estgate-provision in a fresh
 * harness token, profiles written in C, CSRs made with software keys, and
 * what the core answers checked in-process and with stock `openssl`.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <sqlite3.h>

#include "audit.h"
#include "core.h"
#include "issue.h"
#include "ledger.h"
#include "limit.h"
#include "p11.h"
#include "provider.h"
#include "child.h"
#include "csr_attrs.h"
#include "test_profiles.h"
#include "token_harness.h"

#define NTHREADS 8
/* As long as a site's naming makes it: a token failure's CK_RV must still reach the reason. */
#define CA_LABEL "fleet-issuing-ca-2026-ecdsa-p256-for-site-gateways-eu-west-1"

static eg_th_kind kind;
static eg_th *th;
static eg_core *core;
static eg_config cfg;
static char ca_path[PATH_MAX], ledger_path[PATH_MAX], ca_uri[256];
static EVP_PKEY *key_a, *key_b;
static uint8_t *first_cert; /* the first certificate issued, DER */
static size_t first_len;
static uint8_t *tmpl_cert; /* issued under the template profile, DER */
static size_t tmpl_len;

/* ---- helpers: files and child processes ---- */

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", eg_th_dir(th), name);
    return buf;
}

static int write_file(const char *name, const void *data, size_t len)
{
    char path[PATH_MAX];
    FILE *f = fopen(tpath(path, name), "wb");
    size_t n = f ? fwrite(data, 1, len, f) : 0;

    if (f != NULL)
        fclose(f);
    return n == len ? 0 : -1;
}

/* Runs argv (PATH searched) with stdout+stderr in out; exit status, -1 if it did not run. */
static int run(char *const argv[], char *out, size_t cap)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int rc = -1;

    if (r != NULL) {
        /* The environment carries SOFTHSM2_CONF or P11_KIT_SERVER_ADDRESS to the child. */
        rc = eg_child_run(eg_th_dir(th), NULL, argv, r);
        size_t n = strnlen(r->out, cap - 1), m = strnlen(r->err, cap - 1 - n);

        memcpy(out, r->out, n);
        memcpy(out + n, r->err, m);
        out[n + m] = '\0';
        free(r);
    }
    return rc;
}

/* ---- helpers: CSRs ---- */

static int add_subject(X509_NAME *name, const char *subject)
{
    char buf[256], *save = NULL, *item, *eq;

    snprintf(buf, sizeof(buf), "%s", subject);
    /* "A=x,+B=y": B joins A's RDN (a multi-valued RDN, A=x+B=y). */
    for (item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        int set = *item == '+' ? -1 : 0;

        item += set != 0;
        if ((eq = strchr(item, '=')) == NULL)
            return -1;
        *eq = '\0';
        if (X509_NAME_add_entry_by_txt(name, item, MBSTRING_UTF8, (unsigned char *)eq + 1, -1, -1,
                                       set) != 1)
            return -1;
    }
    return 0;
}

static int add_exts(X509_REQ *req, const char *sans, const char *eku)
{
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *e;
    int ok = exts != NULL;

    if (ok && sans != NULL) {
        e = X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, sans);
        ok = e != NULL && sk_X509_EXTENSION_push(exts, e) > 0;
    }
    if (ok && eku != NULL) {
        e = X509V3_EXT_nconf_nid(NULL, NULL, NID_ext_key_usage, eku);
        ok = e != NULL && sk_X509_EXTENSION_push(exts, e) > 0;
    }
    if (ok && sk_X509_EXTENSION_num(exts) > 0)
        ok = X509_REQ_add_extensions(req, exts) == 1;
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    return ok ? 0 : -1;
}

/* A signed PKCS#10 request as DER (malloc'd); sans/eku in openssl.cnf syntax, or NULL. */
/* When set, make_csr() adds Windows certreq's validity request: {unit, count}. */
static const char *ms_validity[2];
/* When set, make_csr() signs with this digest instead of SHA-256. */
static const char *csr_md;
/* When set, make_csr() takes this subject as it is, string types and all, and ignores its own. */
static const X509_NAME *csr_name;

static uint8_t *make_csr(EVP_PKEY *key, const char *subject, const char *sans, const char *eku,
                         const char *challenge, size_t *len)
{
    X509_REQ *req = X509_REQ_new();
    EVP_MD *md = EVP_MD_fetch(NULL, csr_md != NULL ? csr_md : "SHA256", NULL);
    unsigned char *der = NULL;
    uint8_t *out = NULL;
    int n = -1;

    if (req != NULL && X509_REQ_set_version(req, 0) == 1 && X509_REQ_set_pubkey(req, key) == 1 &&
        (csr_name != NULL ? X509_REQ_set_subject_name(req, csr_name) == 1
                          : add_subject(X509_REQ_get_subject_name(req), subject) == 0) &&
        add_exts(req, sans, eku) == 0 &&
        (challenge == NULL ||
         X509_REQ_add1_attr_by_NID(req, NID_pkcs9_challengePassword, MBSTRING_UTF8,
                                   (const unsigned char *)challenge, -1) == 1) &&
        (ms_validity[0] == NULL ||
         eg_csr_add_ms_validity(req, ms_validity[0], ms_validity[1]) == 0) &&
        md != NULL && X509_REQ_sign(req, key, md) > 0)
        n = i2d_X509_REQ(req, &der);
    EVP_MD_free(md);
    X509_REQ_free(req);
    if (n > 0 && (out = malloc((size_t)n)) != NULL) {
        memcpy(out, der, (size_t)n);
        *len = (size_t)n;
    }
    OPENSSL_free(der);
    if (out == NULL)
        ERR_print_errors_fp(stdout);
    return out;
}

/*
 * The wall clock as this process's callers of time() see it (the core, the ledger, OpenSSL's
 * certificate time checks), moved by time_shift seconds: a day later without waiting one.
 */
static long time_shift;

__attribute__((visibility("default"))) time_t time(time_t *out)
{
    struct timespec ts;
    time_t t;

    clock_gettime(CLOCK_REALTIME, &ts);
    t = ts.tv_sec + time_shift;
    if (out != NULL)
        *out = t;
    return t;
}

static void enroll(const char *profile, const char *principal, const uint8_t *csr, size_t len,
                   const uint8_t *cur, size_t curlen, eg_answer *a)
{
    eg_enroll_req req = {
        .profile = profile,
        .principal = principal,
        .auth = EG_AUTH_BASIC,
        .csr = csr,
        .csr_len = len,
        .current_cert = cur,
        .current_cert_len = curlen,
        .peer = "192.0.2.7",
    };

    memset(a, 0xa5, sizeof(*a)); /* every field must be written */
    CU_ASSERT_EQUAL_FATAL(eg_core_enroll(core, &req, a), 0);
}

static uint64_t sign_calls(void)
{
    eg_core_stats st;

    eg_core_get_stats(core, &st);
    return st.token_signatures;
}

/* The one certificate in an enroll answer's certs-only PKCS#7. */
static X509 *answer_cert(const eg_answer *a)
{
    const unsigned char *p = a->der;
    PKCS7 *p7 = a->status == EG_OK && a->der ? d2i_PKCS7(NULL, &p, (long)a->der_len) : NULL;
    STACK_OF(X509) *certs = p7 && PKCS7_type_is_signed(p7) ? p7->d.sign->cert : NULL;
    X509 *x = NULL;

    if (certs != NULL && sk_X509_num(certs) == 1) {
        x = sk_X509_value(certs, 0);
        X509_up_ref(x);
    }
    PKCS7_free(p7);
    return x;
}

static X509 *read_ca(void)
{
    BIO *in = BIO_new_file(ca_path, "r");
    X509 *x = in ? PEM_read_bio_X509(in, NULL, NULL, NULL) : NULL;

    BIO_free(in);
    return x;
}

/* `openssl verify -CAfile ca.pem cert.pem` with the stock tool. */
/* x as DER in malloc'd memory (what a client presents as its current certificate). */
static uint8_t *cert_der(X509 *x, size_t *len)
{
    unsigned char *buf = NULL;
    uint8_t *der = NULL;
    int n = i2d_X509(x, &buf);

    if (n > 0 && (der = malloc((size_t)n)) != NULL) {
        memcpy(der, buf, (size_t)n);
        *len = (size_t)n;
    }
    OPENSSL_free(buf);
    return der;
}

static bool openssl_verifies(const eg_answer *a, const char *name)
{
    char path[PATH_MAX], out[4096];
    char *argv[] = {"openssl", "verify", "-CAfile", ca_path, path, NULL};
    X509 *x = answer_cert(a);
    BIO *b = BIO_new_file(tpath(path, name), "w");
    bool ok = x != NULL && b != NULL && PEM_write_bio_X509(b, x) == 1;

    BIO_free(b);
    X509_free(x);
    ok = ok && run(argv, out, sizeof(out)) == 0 && strstr(out, ": OK") != NULL;
    if (!ok)
        printf("\n  openssl verify: %s\n", out);
    return ok;
}

static void config_fill(void)
{
    const eg_token_config *tc = eg_th_config(th);

    cfg.module_path = (char *)tc->module_path;
    cfg.init_args = (char *)tc->init_args;
    cfg.token_label = (char *)tc->token_label;
    cfg.pin_file = (char *)tc->pin_file;
    cfg.ledger_path = ledger_path;
    cfg.recover_ms = 1500; /* a lost token is reported after 1.5 s, not 10 */
    eg_test_profiles(cfg.profiles, ca_uri, ca_path);
    cfg.nprofiles = EG_TEST_NPROFILES;
    cfg.profiles[2].require_channel_binding = true;            /* "plain" */
    cfg.profiles[1].csr_digests = 1u << 2 | 1u << 3 | 1u << 5; /* "default": sha256, sha384,
                                                                   sha3-256 */
    cfg.profiles[3].issue_limit = 2; /* "bare": two new certificates per principal an hour */
    cfg.profiles[3].issue_limit_s = 3600;
}

/* ---- tests ---- */

static void check_issued(X509 *x, const char *want_subject, int max_days)
{
    char subj[256] = "";
    BIO *b = BIO_new(BIO_s_mem());
    const ASN1_INTEGER *sn = X509_get0_serialNumber(x);
    time_t now = time(NULL), na;
    struct tm tm;
    int days = 0, secs = 0;

    X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
    BIO_read(b, subj, sizeof(subj) - 1);
    BIO_free(b);
    CU_ASSERT_STRING_EQUAL(subj, want_subject);
    CU_ASSERT_EQUAL(X509_check_ca(x), 0);
    CU_ASSERT(ASN1_STRING_type(sn) == V_ASN1_INTEGER);
    CU_ASSERT(ASN1_STRING_length(sn) >= 8 && ASN1_STRING_length(sn) <= 20);
    CU_ASSERT(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)) == 1);
    CU_ASSERT(days * 86400 + secs <= max_days * 86400 + 300);
    CU_ASSERT_EQUAL_FATAL(ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm), 1);
    na = timegm(&tm);
    CU_ASSERT(na <= now + (time_t)max_days * 86400 && na > now + (time_t)(max_days - 1) * 86400);
    CU_ASSERT(X509_get_ext_by_NID(x, NID_subject_key_identifier, -1) >= 0);
    CU_ASSERT(X509_get_ext_by_NID(x, NID_authority_key_identifier, -1) >= 0);
}

static void test_good_csr_issued_and_verifies(void)
{
    size_t len;
    uint8_t *csr =
        make_csr(key_a, "CN=dev1,O=Acme", "DNS:dev1.example.com,IP:10.1.2.3", NULL, NULL, &len);
    uint64_t before = sign_calls();
    GENERAL_NAMES *gens;
    eg_answer a;
    X509 *x;

    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    enroll("iot", "basic:alice", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_ISSUED);
    CU_ASSERT_EQUAL(sign_calls(), before + 1); /* signed in the token, once */
    x = answer_cert(&a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    check_issued(x, "O=Acme,CN=dev1", 30);
    CU_ASSERT(openssl_verifies(&a, "dev1.pem"));
    CU_ASSERT(X509_get_key_usage(x) & KU_DIGITAL_SIGNATURE);
    CU_ASSERT_FALSE(X509_get_key_usage(x) & KU_KEY_ENCIPHERMENT);
    CU_ASSERT(X509_get_key_usage(x) != UINT32_MAX);
    CU_ASSERT_EQUAL(X509_get_extended_key_usage(x), XKU_SSL_CLIENT);
    gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    CU_ASSERT_EQUAL(sk_GENERAL_NAME_num(gens), 2);
    GENERAL_NAMES_free(gens);
    first_cert = cert_der(x, &first_len);
    {
        /* The hand-written certs-only SignedData is the DER OpenSSL would write. */
        const unsigned char *in = a.der;
        PKCS7 *p7 = d2i_PKCS7(NULL, &in, (long)a.der_len);
        unsigned char *again = NULL;
        int n = p7 ? i2d_PKCS7(p7, &again) : -1;

        CU_ASSERT(n > 0 && (size_t)n == a.der_len && memcmp(again, a.der, a.der_len) == 0);
        OPENSSL_free(again);
        PKCS7_free(p7);
    }
    eg_answer_clear(&a);
    X509_free(x);
    /* The same principal and CSR again: the recorded certificate, no new signature. */
    before = sign_calls();
    enroll("iot", "basic:alice", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT_EQUAL(sign_calls(), before);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x = answer_cert(&a));
    {
        size_t again_len = 0;
        uint8_t *again = cert_der(x, &again_len);

        CU_ASSERT(again != NULL && again_len == first_len &&
                  memcmp(again, first_cert, first_len) == 0);
        free(again);
    }
    eg_answer_clear(&a);
    X509_free(x);
    free(csr);
}

/* The audit rows of a principal in the ledger, oldest first, as
   "type|profile|peer|detail|intent" lines (intent: the issuance's serial in hex, or "-"). */
static int audit_rows(const char *principal, char *out, size_t cap)
{
    static const char sql[] =
        "SELECT group_concat(line, char(10)) FROM (SELECT a.type || '|' || a.profile || '|' ||"
        " a.peer || '|' || a.detail || '|' || CASE WHEN i.id IS NULL THEN '-' ELSE "
        "lower(hex(i.serial)) END AS line"
        " FROM audit a LEFT JOIN issuance i ON i.id = a.intent_id WHERE a.principal = ?1"
        " ORDER BY a.id)";
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = -1;

    if (sqlite3_open_v2(ledger_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_bind_text(st, 1, principal, -1, SQLITE_STATIC) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        snprintf(out, cap, "%s",
                 sqlite3_column_text(st, 0) ? (const char *)sqlite3_column_text(st, 0) : "");
        rc = 0;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

/* Each outcome leaves exactly one audit row, tied to its issuance when there is one. */
static void test_audit_rows_of_an_enrollment(void)
{
    size_t len, bad_len, i;
    uint8_t *csr = make_csr(key_b, "CN=audited", "DNS:audited.example.com", NULL, NULL, &len);
    uint8_t *bad = make_csr(key_b, "CN=audited", "DNS:evil.com", NULL, NULL, &bad_len);
    char serial[48] = "", want[1024], rows[2048];
    const ASN1_INTEGER *sn;
    eg_answer a;
    X509 *x;

    CU_ASSERT_FATAL(csr != NULL && bad != NULL);
    enroll("iot", "basic:audrey", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL_FATAL(a.status, EG_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x = answer_cert(&a));
    sn = X509_get0_serialNumber(x);
    for (i = 0; i < (size_t)ASN1_STRING_length(sn) && 2 * i + 2 < sizeof(serial); i++)
        snprintf(serial + 2 * i, 3, "%02x", ASN1_STRING_get0_data(sn)[i]);
    X509_free(x);
    eg_answer_clear(&a);
    enroll("iot", "basic:audrey", csr, len, NULL, 0, &a); /* sent again */
    CU_ASSERT_EQUAL(a.status, EG_OK);
    eg_answer_clear(&a);
    enroll("iot", "basic:audrey", bad, bad_len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_FORBIDDEN);
    eg_answer_clear(&a);
    snprintf(want, sizeof(want),
             "issued|iot|192.0.2.7|serial=%s|%s\n"
             "issued|iot|192.0.2.7|serial=%s (sent again)|%s\n"
             "policy|iot|192.0.2.7|dim=san SAN dns:evil.com is not allowed by this profile|-",
             serial, serial, serial, serial);
    CU_ASSERT_EQUAL_FATAL(audit_rows("basic:audrey", rows, sizeof(rows)), 0);
    CU_ASSERT_STRING_EQUAL(rows, want);
    if (strcmp(rows, want) != 0)
        printf("\n  audit rows:\n%s\n  wanted:\n%s\n", rows, want);
    free(csr);
    free(bad);
}

static void test_rsa_key_gets_key_encipherment(void)
{
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    size_t len = 0;
    uint8_t *csr = rsa ? make_csr(rsa, "CN=rsa1", "DNS:rsa1.example.com", NULL, NULL, &len) : NULL;
    eg_answer a;
    X509 *x;

    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    enroll("iot", "basic:alice", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    x = answer_cert(&a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    CU_ASSERT_EQUAL(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT);
    CU_ASSERT(openssl_verifies(&a, "rsa1.pem"));
    X509_free(x);
    eg_answer_clear(&a);
    free(csr);
    EVP_PKEY_free(rsa);
}

/* The number of the principal's issuance rows in state. */
static int issuance_rows(const char *principal, const char *state)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int n = -1;

    if (sqlite3_open_v2(ledger_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM issuance WHERE principal = ?1 AND state = ?2",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_bind_text(st, 1, principal, -1, SQLITE_STATIC) == SQLITE_OK &&
        sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/*
 * Moves time_shift on until each key's issue_limit window on "bare" (an hour) has more than two
 * minutes left, so that no window turns over in the middle of a test.
 */
static void settle_windows(const char *const *keys, size_t n)
{
    for (time_shift = 0; time_shift < 24 * 300; time_shift += 300) {
        time_t now = time(NULL);
        size_t i;

        for (i = 0; i < n; i++)
            if (eg_limiter_window_start("bare", keys[i], 3600, now) + 3600 - now <= 120)
                break;
        if (i == n)
            return;
    }
}

/*
 * issue_limit ("bare": 2 an hour): a principal's third new certificate is refused with 429's
 * status and a wait, its intent failed and no token signature spent; a retry of one it had is
 * still answered; another principal has its own count; a failed issuance spends no slot; a
 * restart keeps the counts.
 */
static void test_issue_limit_counts_new_certificates(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    uint8_t *csr[4];
    size_t len[4];
    char subj[32];
    uint64_t before;
    eg_answer a;

    static const char *const keys[] = {"basic:limited", "basic:other", "basic:renewer",
                                       "renewal:CN=limited3"};

    CU_ASSERT_PTR_NOT_NULL_FATAL(key);
    settle_windows(keys, sizeof(keys) / sizeof(keys[0]));
    for (int i = 0; i < 4; i++) {
        snprintf(subj, sizeof(subj), "CN=limited%d", i);
        CU_ASSERT_PTR_NOT_NULL_FATAL(csr[i] = make_csr(key, subj, NULL, NULL, NULL, &len[i]));
    }
    for (int i = 0; i < 2; i++) {
        enroll("bare", "basic:limited", csr[i], len[i], NULL, 0, &a);
        CU_ASSERT_EQUAL(a.status, EG_OK);
        eg_answer_clear(&a);
    }
    before = sign_calls();
    enroll("bare", "basic:limited", csr[2], len[2], NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_TOO_MANY);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_ISSUE_LIMIT);
    CU_ASSERT(a.retry_after > 120 && a.retry_after <= 3600); /* until the window's end */
    CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, "issue_limit"));
    CU_ASSERT_EQUAL(sign_calls(), before);
    eg_answer_clear(&a);
    CU_ASSERT_EQUAL(issuance_rows("basic:limited", "issued"), 2);
    CU_ASSERT_EQUAL(issuance_rows("basic:limited", "failed"), 1);
    CU_ASSERT_EQUAL(issuance_rows("basic:limited", "pending"), 0);
    /* A retry of a certificate it was issued is answered: nothing new is issued. */
    enroll("bare", "basic:limited", csr[0], len[0], NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    eg_answer_clear(&a);
    /* Another principal counts on its own. */
    enroll("bare", "basic:other", csr[2], len[2], NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    eg_answer_clear(&a);
    /* Renewals count by the subject they renew, not by the certificate that asks: each renewal
       is a new certificate, so a stolen one could otherwise renew itself without end. */
    {
        uint8_t *cur = NULL;
        size_t curlen = 0;
        X509 *x;

        enroll("bare", "basic:renewer", csr[3], len[3], NULL, 0, &a);
        CU_ASSERT_EQUAL_FATAL(a.status, EG_OK);
        for (int i = 0; i < 3; i++) {
            char who[32];

            CU_ASSERT_PTR_NOT_NULL_FATAL(x = answer_cert(&a));
            free(cur);
            cur = cert_der(x, &curlen);
            X509_free(x);
            eg_answer_clear(&a);
            snprintf(who, sizeof(who), "cert:renewal%d", i);
            enroll("bare", who, csr[3], len[3], cur, curlen, &a);
            CU_ASSERT_EQUAL(a.status, i < 2 ? EG_OK : EG_TOO_MANY);
            if (i == 2)
                CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, "this subject's renewal"));
        }
        eg_answer_clear(&a);
        free(cur);
    }
    /* A restart forgets nothing: the counts are made again from the ledger at open. */
    eg_core_close(core);
    core = NULL;
    CU_ASSERT_EQUAL_FATAL(eg_core_open(&cfg, &core), 0);
    enroll("bare", "basic:limited", csr[2], len[2], NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_TOO_MANY);
    CU_ASSERT(a.retry_after > 120 && a.retry_after <= 3600); /* until the window's end */
    eg_answer_clear(&a);
    enroll("bare", "basic:other", csr[1], len[1], NULL, 0, &a); /* its second of two */
    CU_ASSERT_EQUAL(a.status, EG_OK);
    eg_answer_clear(&a);
    enroll("bare", "basic:other", csr[0], len[0], NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_TOO_MANY);
    eg_answer_clear(&a);
    {
        /* The subject renewed twice is refused a third renewal, whoever asks. */
        uint8_t *cur = NULL;
        size_t curlen = 0;
        X509 *x;

        enroll("bare", "basic:renewer", csr[3], len[3], NULL, 0, &a); /* sent again: answered */
        CU_ASSERT_EQUAL_FATAL(a.status, EG_OK);
        CU_ASSERT_PTR_NOT_NULL_FATAL(x = answer_cert(&a));
        cur = cert_der(x, &curlen);
        X509_free(x);
        eg_answer_clear(&a);
        enroll("bare", "cert:renewal-after-restart", csr[3], len[3], cur, curlen, &a);
        CU_ASSERT_EQUAL(a.status, EG_TOO_MANY);
        CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, "this subject's renewal"));
        eg_answer_clear(&a);
        free(cur);
    }
    time_shift = 0;
    for (int i = 0; i < 4; i++)
        free(csr[i]);
    EVP_PKEY_free(key);
}

static void test_ledger_counts_certificates(void)
{
    eg_core_stats st;

    eg_core_get_stats(core, &st);
    CU_ASSERT(st.certificates >= 2); /* dev1 (once, though asked twice) and rsa1 */
}

struct refusal {
    const char *profile;
    const char *subject, *sans, *eku, *challenge;
    eg_policy_dim dim;
    const char *reason_has;
};

static void expect_refusal(EVP_PKEY *key, const struct refusal *r)
{
    size_t len;
    uint8_t *csr = make_csr(key, r->subject, r->sans, r->eku, r->challenge, &len);
    uint64_t before = sign_calls();
    eg_answer a;

    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    enroll(r->profile, "basic:mallory", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_FORBIDDEN);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_POLICY);
    CU_ASSERT_EQUAL(a.dim, r->dim);
    CU_ASSERT_PTR_NULL(a.der);
    CU_ASSERT_EQUAL(sign_calls(), before);
    if (r->reason_has != NULL && strstr(a.reason, r->reason_has) == NULL) {
        printf("\n  reason \"%s\" lacks \"%s\"\n", a.reason, r->reason_has);
        CU_FAIL("the reason does not say what was wrong");
    }
    if (a.status != EG_FORBIDDEN || a.dim != r->dim)
        printf("\n  %s / %s: got %d dim %s: %s\n", r->subject, r->sans ? r->sans : "-", a.status,
               eg_policy_dim_name(a.dim), a.reason);
    eg_answer_clear(&a);
    free(csr);
}

/*
 * require_channel_binding: the CSR's challengePassword against the binding the transport gives,
 * before anything is signed. Whitespace around the base64 is tolerated; a transport that did not
 * say is the daemon's fault (500), not the device's; a TLS 1.2 connection without the extended
 * master secret has no binding to trust (403).
 */
static void test_channel_binding_is_checked(void)
{
    uint8_t cb[32];
    char b64[48], spaced[64];
    EVP_PKEY *key = EVP_EC_gen("P-384");
    const struct {
        const char *challenge;
        int known; /* 0: the transport did not say; 2: tls-unique without the extended master secret
                    */
        eg_status status;
        eg_policy_dim dim;
    } cases[] = {
        {b64, 1, EG_OK, EG_DIM_NONE},
        {spaced, 1, EG_OK, EG_DIM_NONE},
        {NULL, 1, EG_FORBIDDEN, EG_DIM_BINDING},
        {"c2VjcmV0", 1, EG_FORBIDDEN, EG_DIM_BINDING},
        {b64, 0, EG_INTERNAL, EG_DIM_NONE},
        {b64, 2, EG_FORBIDDEN, EG_DIM_BINDING},
    };

    CU_ASSERT_PTR_NOT_NULL_FATAL(key);
    for (size_t i = 0; i < sizeof(cb); i++)
        cb[i] = (uint8_t)(i * 37 + 5);
    EVP_EncodeBlock((unsigned char *)b64, cb, sizeof(cb));
    snprintf(spaced, sizeof(spaced), " %s\r\n", b64);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char cn[64];
        size_t len;
        uint8_t *csr;
        uint64_t before = sign_calls();
        eg_answer a;
        eg_enroll_req req = {
            .profile = "plain",
            .principal = "basic:linked",
            .auth = EG_AUTH_BASIC,
            .peer = "192.0.2.7",
            .channel_binding_type = cases[i].known == 1   ? "tls-exporter"
                                    : cases[i].known == 2 ? "tls-unique"
                                                          : NULL,
            .channel_binding = cases[i].known == 1 ? cb : NULL,
            .channel_binding_len = cases[i].known == 1 ? sizeof(cb) : 0,
        };

        snprintf(cn, sizeof(cn), "CN=linked%zu", i);
        CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr(key, cn, NULL, NULL, cases[i].challenge, &len));
        req.csr = csr;
        req.csr_len = len;
        CU_ASSERT_EQUAL_FATAL(eg_core_enroll(core, &req, &a), 0);
        CU_ASSERT_EQUAL(a.status, cases[i].status);
        CU_ASSERT_EQUAL(a.dim, cases[i].dim);
        CU_ASSERT_EQUAL(sign_calls(), before + (cases[i].status == EG_OK));
        if (a.status != cases[i].status)
            printf("\n  case %zu: got %d: %s\n", i, a.status, a.reason);
        if (cases[i].dim == EG_DIM_BINDING)
            CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, cases[i].known == 2
                                                        ? "without the extended master secret"
                                                        : "tls-exporter"));
        eg_answer_clear(&a);
        free(csr);
    }
    EVP_PKEY_free(key);
}

static void test_policy_refusals_name_their_dimension(void)
{
    static const struct refusal rs[] = {
        {"iot", "CN=d", "DNS:evil.com", NULL, NULL, EG_DIM_SAN, "SAN dns:evil.com is not allowed"},
        {"iot", "CN=d", "DNS:example.com", NULL, NULL, EG_DIM_SAN, "dns:example.com"},
        {"iot", "CN=d", "DNS:a.wild.example.net", NULL, NULL, EG_DIM_SAN, NULL},
        {"iot", "CN=d", "DNS:*.example.com", NULL, NULL, EG_DIM_SAN, NULL},
        {"iot", "CN=d", "IP:192.168.1.1", NULL, NULL, EG_DIM_SAN, "ip:192.168.1.1"},
        {"iot", "CN=d", "IP:2001:db9::1", NULL, NULL, EG_DIM_SAN, NULL},
        {"iot", "CN=d", "email:ops@evil.com", NULL, NULL, EG_DIM_SAN, "email:ops@evil.com"},
        {"iot", "CN=d", "URI:urn:dev:other:1", NULL, NULL, EG_DIM_SAN, NULL},
        {"iot", "CN=d", NULL, NULL, NULL, EG_DIM_SAN, "requires a subjectAltName"},
        {"iot", "CN=d", "DNS:d.example.com", "serverAuth", NULL, EG_DIM_EKU, "EKU"},
        {"iot", "CN=d,OU=ops", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT, "OU"},
        {"", "CN=d", "DNS:d.example.com", NULL, NULL, EG_DIM_ATTRS, "challengePassword"},
        {"", "O=no-cn", "DNS:d.example.com", NULL, "pw", EG_DIM_SUBJECT, "CN"},
    };
    size_t i;

    for (i = 0; i < sizeof(rs) / sizeof(rs[0]); i++)
        expect_refusal(key_b, &rs[i]);
}

/* Enrolls on profile a CSR for key signed with digest md ("SHA1"), as basic:bob. */
static void enroll_signed(EVP_PKEY *key, const char *md, const char *profile, const char *subject,
                          const char *sans, const char *challenge, eg_answer *a)
{
    size_t len;
    uint8_t *csr;

    csr_md = md;
    csr = make_csr(key, subject, sans, NULL, challenge, &len);
    csr_md = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    enroll(profile, "basic:bob", csr, len, NULL, 0, a);
    free(csr);
}

/* The serial of the certificate in a's certs-only answer, as an OpenSSL BIGNUM in hex. */
static char *answer_serial(const eg_answer *a)
{
    X509 *x = answer_cert(a);
    BIGNUM *bn = x ? ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL) : NULL;
    char *hex = bn ? BN_bn2hex(bn) : NULL;

    BN_free(bn);
    X509_free(x);
    return hex;
}

/*
 * The same request again is answered with the certificate it got while that is young (a device
 * that lost the answer); a day later, the same CSR (a device renewing with its key: RSA PKCS#1
 * v1.5 signatures are deterministic, so its CSR is the same bytes) gets a new certificate, and
 * the audit reason names the one it replaces, which stays in the ledger.
 */
static void test_the_same_request_a_day_later_gets_a_new_certificate(void)
{
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    uint8_t *csr, *again;
    size_t len, again_len;
    char *first = NULL, *second = NULL, *third = NULL;
    uint64_t before;
    eg_answer a;

    CU_ASSERT_PTR_NOT_NULL_FATAL(rsa);
    csr = make_csr(rsa, "CN=keeper", NULL, NULL, NULL, &len);
    again = make_csr(rsa, "CN=keeper", NULL, NULL, NULL, &again_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    CU_ASSERT_PTR_NOT_NULL_FATAL(again);
    CU_ASSERT(len == again_len && memcmp(csr, again, len) == 0); /* made again: the same bytes */

    enroll("bare", "basic:keeper", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    first = answer_serial(&a);
    eg_answer_clear(&a);
    time_shift = 6 * 3600; /* within the day: sent again, not signed */
    before = sign_calls();
    enroll("bare", "basic:keeper", again, again_len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT_EQUAL(sign_calls(), before);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, "(sent again)"));
    second = answer_serial(&a);
    CU_ASSERT(first != NULL && second != NULL && strcmp(first, second) == 0);
    eg_answer_clear(&a);

    time_shift = 25 * 3600;
    enroll("bare", "basic:keeper", again, again_len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_ISSUED);
    CU_ASSERT_EQUAL(sign_calls(), before + 1);
    third = answer_serial(&a);
    CU_ASSERT(first != NULL && third != NULL && strcmp(first, third) != 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, " replaces="));
    eg_answer_clear(&a);
    /* ...and that new one is what the request gets from now on. */
    enroll("bare", "basic:keeper", again, again_len, NULL, 0, &a);
    free(second);
    second = answer_serial(&a);
    CU_ASSERT(second != NULL && third != NULL && strcmp(second, third) == 0);
    CU_ASSERT_EQUAL(sign_calls(), before + 1);
    eg_answer_clear(&a);
    time_shift = 0;

    OPENSSL_free(first);
    OPENSSL_free(second);
    OPENSSL_free(third);
    free(csr);
    free(again);
    EVP_PKEY_free(rsa);
}

/* An RSA key pair with public exponent 1 (and so d = 1): its "signatures" are the padded
   digests themselves, which anyone can make. */
static EVP_PKEY *rsa_exponent_one(void)
{
    EVP_PKEY *real = EVP_RSA_gen(2048), *k = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    BIGNUM *n = NULL, *one = BN_new();

    if (real != NULL && ctx != NULL && b != NULL && one != NULL && BN_one(one) &&
        EVP_PKEY_get_bn_param(real, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, n) == 1 &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, one) == 1 &&
        OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_D, one) == 1 &&
        (params = OSSL_PARAM_BLD_to_param(b)) != NULL && EVP_PKEY_fromdata_init(ctx) == 1)
        EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_KEYPAIR, params);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(b);
    EVP_PKEY_CTX_free(ctx);
    BN_free(n);
    BN_free(one);
    EVP_PKEY_free(real);
    return k;
}

/* A CSR whose RSA key has exponent 1 verifies, and proves nothing: refused (403, dim key). */
static void test_an_rsa_exponent_of_one_is_refused(void)
{
    static const struct refusal r = {"iot",
                                     "CN=e1",
                                     "DNS:e1.example.com",
                                     NULL,
                                     NULL,
                                     EG_DIM_KEY,
                                     "public exponent is not an odd number of at least 3"};
    EVP_PKEY *k = rsa_exponent_one();

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    expect_refusal(k, &r);
    EVP_PKEY_free(k);
}

/*
 * TLS clients take a certificate's CN for its host name when it has no dNSName, so a CN that
 * reads as a host name obeys the SAN rules (it got any name past them before); a device's serial
 * or a single label does not read as one. A CSR that names nothing at all is the device's
 * mistake (403), not the appliance's (the lint would refuse it: 500).
 */
static void test_a_cn_that_names_a_host_obeys_the_san_rules(void)
{
    static const struct refusal rs[] = {
        {"iot", "CN=login.bank.test", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT,
         "CN login.bank.test reads as a DNS name, and this profile's SAN rules do not allow it"},
        {"iot", "CN=192.0.2.1", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT,
         "CN 192.0.2.1 reads as an IP address"},
        {"iot", "CN=*.example.com", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT, NULL},
        /* a wildcard inside a label, which OpenSSL's X509_check_host matches, and a trailing
           dot: not valid names, so no rule allows them */
        {"iot", "CN=w*.example.com", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT,
         "CN w*.example.com reads as a DNS name"},
        {"iot", "CN=*w.victim.test", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT,
         "CN *w.victim.test reads as a DNS name"},
        {"iot", "CN=d.example.com.", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT,
         "reads as a DNS name"},
        {"iot", "CN=under_score.victim.test", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT,
         "reads as a DNS name"},
        /* mail clients take the subject's emailAddress for the certificate's address */
        {"iot", "CN=d,emailAddress=ceo@victim.test", "DNS:d.example.com", NULL, NULL,
         EG_DIM_SUBJECT,
         "emailAddress ceo@victim.test is not allowed by this profile's email: rules"},
        /* the template takes the CSR's CN */
        {"", "CN=login.bank.test", "DNS:d.example.com", NULL, "pw", EG_DIM_SUBJECT,
         "CN login.bank.test"},
        /* "bare" has no SAN rules, so it allows no host name in a CN either */
        {"bare", "CN=d.example.com", NULL, NULL, NULL, EG_DIM_SUBJECT, "a DNS name"},
        {"bare", "", NULL, NULL, NULL, EG_DIM_SUBJECT, "neither a subject nor a subjectAltName"},
    };
    static const struct {
        const char *profile, *subject, *challenge;
    } ok[] = {
        {"iot", "CN=d.example.com", NULL},
        {"iot", "CN=10.1.2.3", NULL},
        {"iot", "CN=2001:db8::7", NULL},
        {"", "CN=x.example.com", "pw"},
        {"bare", "CN=serial-00042", NULL},
        {"bare", "CN=router1", NULL},
        /* a blank or an '@' makes no host name */
        {"iot", "CN=Jane Q. Doe", NULL},
        {"iot", "CN=jane@victim.test", NULL},
        {"iot", "CN=d,emailAddress=ops@example.com", NULL},
    };
    EVP_PKEY *p256 = EVP_EC_gen("P-256");
    eg_answer a;
    size_t i;

    CU_ASSERT_PTR_NOT_NULL_FATAL(p256);
    for (i = 0; i < sizeof(rs) / sizeof(rs[0]); i++)
        expect_refusal(p256, &rs[i]);
    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        enroll_signed(p256, "SHA256", ok[i].profile, ok[i].subject,
                      strcmp(ok[i].profile, "bare") == 0 ? NULL : "DNS:d.example.com",
                      ok[i].challenge, &a);
        CU_ASSERT_EQUAL(a.status, EG_OK);
        if (a.status != EG_OK)
            printf("\n  %s on %s: %s\n", ok[i].subject, ok[i].profile, a.reason);
        eg_answer_clear(&a);
    }
    EVP_PKEY_free(p256);
}

/*
 * A control character (C0, DEL, C1) in a subject attribute or a SAN would put forged lines, or
 * terminal escapes, wherever a relying party logs the name of a certificate we signed: each is
 * refused, naming the attribute, and so is a byte past ASCII in a SAN's IA5String.
 */
static void test_control_characters_in_names_are_refused(void)
{
    static const struct refusal rs[] = {
        {"iot", "CN=d\n99|issued", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT,
         "subject attribute CN \"d?99|issued\" holds a control character (U+000A at byte 1)"},
        {"iot", "CN=d\r", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT, "U+000D"},
        {"iot", "CN=d\x1b[2K", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT, "U+001B"},
        {"iot", "CN=d\x7f", "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT, "U+007F"},
        {"iot",
         "CN=d\xc2\x85"
         "x",
         "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT,
         "CN \"d??x\" holds a control character (U+0085 at byte 1)"},
        {"iot",
         "CN=d,O=Ex\x01"
         "ample",
         "DNS:d.example.com", NULL, NULL, EG_DIM_SUBJECT, "subject attribute O \"Ex?ample\""},
        /* the template takes the CSR's CN */
        {"", "CN=x\x1b.example.com", "DNS:d.example.com", NULL, "pw", EG_DIM_SUBJECT,
         "subject attribute CN"},
        {"iot", "CN=d",
         "email:a\x1b"
         "b@example.com",
         NULL, NULL, EG_DIM_SAN, "SAN email:a?b@example.com holds byte 0x1b at offset 1"},
        {"iot", "CN=d", "URI:urn:dev:ops:\x7f", NULL, NULL, EG_DIM_SAN, "holds byte 0x7f"},
        {"iot", "CN=d", "URI:urn:dev:ops:\xc2\x85", NULL, NULL, EG_DIM_SAN, "holds byte 0xc2"},
    };
    EVP_PKEY *p256 = EVP_EC_gen("P-256");

    CU_ASSERT_PTR_NOT_NULL_FATAL(p256);
    for (size_t i = 0; i < sizeof(rs) / sizeof(rs[0]); i++)
        expect_refusal(p256, &rs[i]);
    EVP_PKEY_free(p256);
}

/* A refused SAN too long to show whole is shown by its end, where the domain that failed is. */
static void test_a_long_refused_san_shows_its_end(void)
{
    char sans[300] = "DNS:";
    struct refusal r = {"iot",
                        "CN=d",
                        sans,
                        NULL,
                        NULL,
                        EG_DIM_SAN,
                        "aaaaa.aaaaa.evil.com is not allowed by this profile"};
    EVP_PKEY *p256 = EVP_EC_gen("P-256");

    CU_ASSERT_PTR_NOT_NULL_FATAL(p256);
    for (int i = 0; i < 40; i++) /* 240 characters in all: over the 199 shown */
        strcat(sans, "aaaaa.");
    strcat(sans, "evil.com");
    expect_refusal(p256, &r);
    r.reason_has = "SAN dns:...";
    expect_refusal(p256, &r);
    EVP_PKEY_free(p256);
}

/* A multi-valued RDN (CN=mv1+O=Example) is issued as one RDN, as the CSR asked, not split. */
static void test_a_multi_valued_rdn_stays_one(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    const X509_NAME *subj;
    eg_answer a;
    X509 *x;

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    enroll_signed(k, "SHA256", "iot", "CN=mv1,+O=Example", "DNS:mv1.example.com", NULL, &a);
    CU_ASSERT_EQUAL_FATAL(a.status, EG_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x = answer_cert(&a));
    subj = X509_get_subject_name(x);
    CU_ASSERT_EQUAL(X509_NAME_entry_count(subj), 2);
    CU_ASSERT_EQUAL(X509_NAME_ENTRY_set(X509_NAME_get_entry(subj, 0)),
                    X509_NAME_ENTRY_set(X509_NAME_get_entry(subj, 1)));
    X509_free(x);
    eg_answer_clear(&a);
    EVP_PKEY_free(k);
}

/*
 * A CSR signed with MD5 proves little about its key: refused on every profile (403, dim
 * signature) before the token signs; SHA-1 only where the profile leaves it in csr_digests.
 */
static void test_weak_csr_signatures(void)
{
    struct refusal md5 = {"iot", "CN=d",           "DNS:d.example.com", NULL,
                          NULL,  EG_DIM_SIGNATURE, "signed with MD5"};
    struct refusal sha1 = {"",
                           "CN=d",
                           "DNS:d.example.com",
                           NULL,
                           "pw",
                           EG_DIM_SIGNATURE,
                           "sign it with one of: sha256, sha384"};
    EVP_PKEY *rsa = EVP_RSA_gen(2048), *p256 = EVP_EC_gen("P-256");
    eg_answer a;

    CU_ASSERT_PTR_NOT_NULL_FATAL(rsa);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p256);
    csr_md = "MD5";
    expect_refusal(rsa, &md5);
    csr_md = "SHA1";
    expect_refusal(p256, &sha1);
    /* The reason offers only what this key can sign with here: ECDSA with SHA-3 cannot be
       verified, so "default"'s sha3-256 is left out for a P-256 key. */
    enroll_signed(p256, "SHA1", "", "CN=d", "DNS:d.example.com", "pw", &a);
    CU_ASSERT_EQUAL(a.dim, EG_DIM_SIGNATURE);
    CU_ASSERT_PTR_NULL(strstr(a.reason, "sha3-"));
    eg_answer_clear(&a);
    /* iot lists no csr_digests: SHA-1 is among the default ones */
    enroll_signed(p256, "SHA1", "iot", "CN=sha1", "DNS:sha1.example.com", NULL, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    eg_answer_clear(&a);
    /* ECDSA with SHA3: OpenSSL 3.0 has no OID for it, so the answer says what it can verify */
    enroll_signed(p256, "SHA3-256", "iot", "CN=sha3", "DNS:sha3.example.com", NULL, &a);
    CU_ASSERT_EQUAL(a.status, EG_MALFORMED);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, "an algorithm estgate cannot verify"));
    eg_answer_clear(&a);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(p256);
}

/* Windows certreq asks for a validity: more than max_days is refused, less is granted. */
static void test_requested_validity(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    size_t len1 = 0, len2 = 0;
    uint8_t *too_long, *shorter;
    eg_answer a;
    X509 *x;
    int days = 0, secs = 0;

    ms_validity[0] = "Years";
    ms_validity[1] = "2";
    too_long = make_csr(k, "CN=win1", "DNS:win1.example.com", NULL, NULL, &len1);
    ms_validity[0] = "Days";
    ms_validity[1] = "7";
    shorter = make_csr(k, "CN=win2", "DNS:win2.example.com", NULL, NULL, &len2);
    ms_validity[0] = ms_validity[1] = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(too_long);
    CU_ASSERT_PTR_NOT_NULL_FATAL(shorter);
    enroll("iot", "basic:alice", too_long, len1, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_FORBIDDEN);
    CU_ASSERT_EQUAL(a.dim, EG_DIM_VALIDITY);
    /* two years on the calendar: 730 days, or 731 across a 29 February */
    CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, "a validity of 73"));
    eg_answer_clear(&a);
    /* asked in a way that cannot be read, or for very long: refused, never taken for nothing */
    {
        static const struct {
            const char *unit, *count, *reason;
        } bad[] = {
            {"Years", "100000", "days was requested; this profile allows at most 30"},
            {"Hours", "99999999999", "more than 100000 units"},
            {"Years", "-1", "the requested validity cannot be read"},
            {"Days", "7x", "the requested validity cannot be read"},
            {"Fortnights", "2", "is not Years, Months, Weeks, Days or Hours"},
            {"Days", "31", "a validity of 31 days was requested; this profile allows at most 30"},
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            size_t n = 0;
            uint8_t *csr;

            ms_validity[0] = bad[i].unit;
            ms_validity[1] = bad[i].count;
            csr = make_csr(k, "CN=win3", "DNS:win3.example.com", NULL, NULL, &n);
            ms_validity[0] = ms_validity[1] = NULL;
            CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
            enroll("iot", "basic:alice", csr, n, NULL, 0, &a);
            CU_ASSERT_EQUAL(a.status, EG_FORBIDDEN);
            CU_ASSERT_EQUAL(a.dim, EG_DIM_VALIDITY);
            if (a.status != EG_FORBIDDEN || strstr(a.reason, bad[i].reason) == NULL) {
                printf("\n  %s %s: %d %s\n", bad[i].unit, bad[i].count, a.status, a.reason);
                CU_FAIL("the refusal does not say why");
            }
            eg_answer_clear(&a);
            free(csr);
        }
    }
    enroll("iot", "basic:alice", shorter, len2, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x = answer_cert(&a));
    CU_ASSERT(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)) == 1);
    CU_ASSERT(days == 7 && secs <= 300); /* back-dated by at most 5 minutes */
    X509_free(x);
    eg_answer_clear(&a);
    free(too_long);
    free(shorter);
    EVP_PKEY_free(k);
}

static void test_key_refusals(void)
{
    struct refusal r = {"iot", "CN=d", "DNS:d.example.com", NULL, NULL, EG_DIM_KEY, "RSA-1024"};
    EVP_PKEY *rsa = EVP_RSA_gen(1024), *p384 = EVP_EC_gen("P-384");

    CU_ASSERT_PTR_NOT_NULL_FATAL(rsa);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p384);
    expect_refusal(rsa, &r);
    r.reason_has = "secp384r1";
    expect_refusal(p384, &r);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(p384);
}

static void test_every_san_kind_allowed(void)
{
    size_t len;
    uint8_t *csr = make_csr(key_b, "CN=many,O=Acme",
                            "DNS:a.b.example.com,DNS:exact.example.org,DNS:*.wild.example.net,"
                            "IP:10.255.0.1,IP:2001:db8::1,email:ops@example.com,"
                            "URI:urn:dev:ops:1234",
                            "clientAuth", NULL, &len);
    eg_answer a;
    X509 *x;
    GENERAL_NAMES *gens;

    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    enroll("iot", "basic:bob", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    if (a.status != EG_OK)
        printf("\n  %s\n", a.reason);
    x = answer_cert(&a);
    gens = x ? X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL) : NULL;
    CU_ASSERT_EQUAL(sk_GENERAL_NAME_num(gens), 7);
    GENERAL_NAMES_free(gens);
    X509_free(x);
    eg_answer_clear(&a);
    free(csr);
}

static void test_subject_template_fills_cn(void)
{
    size_t len;
    uint8_t *csr =
        make_csr(key_a, "CN=dev9,O=Ignored,OU=Whatever", "DNS:dev9.example.com", NULL, "pw", &len);
    eg_answer a;
    X509 *x;

    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    enroll("", "basic:carol", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    x = answer_cert(&a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    check_issued(x, "O=Example,CN=dev9", 7);
    CU_ASSERT_EQUAL(X509_get_extended_key_usage(x), XKU_SSL_SERVER | XKU_SSL_CLIENT);
    CU_ASSERT(openssl_verifies(&a, "dev9.pem"));
    tmpl_cert = cert_der(x, &tmpl_len);
    eg_answer_clear(&a);
    X509_free(x);
    free(csr);
}

/* Whether x's subject has a nid of this string type with this UTF-8 text. */
static bool subject_value_is(X509 *x, int nid, int type, const char *text)
{
    const X509_NAME *name = x != NULL ? X509_get_subject_name(x) : NULL;
    int i = name != NULL ? X509_NAME_get_index_by_NID(name, nid, -1) : -1;
    const ASN1_STRING *v = i >= 0 ? X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)) : NULL;

    return v != NULL && ASN1_STRING_type(v) == type &&
           (size_t)ASN1_STRING_length(v) == strlen(text) &&
           memcmp(ASN1_STRING_get0_data(v), text, strlen(text)) == 0;
}

/* Enrolls a CSR whose subject is name on profile; the certificate, or NULL with the answer in a. */
static X509 *enroll_name(const char *profile, const X509_NAME *name, eg_answer *a)
{
    size_t len;
    uint8_t *csr;
    X509 *x;

    csr_name = name;
    csr = make_csr(key_a, NULL, "DNS:dev7.example.com", NULL, "pw", &len);
    csr_name = NULL;
    if (csr == NULL)
        return NULL;
    enroll(profile, "basic:alice", csr, len, NULL, 0, a);
    free(csr);
    x = answer_cert(a);
    if (a->status != EG_OK)
        printf("\n  %s\n", a->reason);
    return x;
}

/*
 * RFC 5280 4.1.2.4: the certificate's DirectoryStrings are PrintableString or UTF8String
 * whatever the CSR used, with the same text; attributes of a fixed syntax keep theirs.
 */
static void test_subject_strings_are_reencoded(void)
{
    static const unsigned char t61[] = {'Z', 0xfc, 'r', 'i', 'c', 'h', '-', '7'}; /* Latin-1 */
    static const unsigned char bmp[] = {0, 'A', 0, 'c', 0, 'm', 0, 'e', 0, ' ', 0x03, 0xa9};
    X509_NAME *name = X509_NAME_new();
    eg_answer a;
    X509 *x;

    CU_ASSERT_PTR_NOT_NULL_FATAL(name);
    CU_ASSERT_FATAL(X509_NAME_add_entry_by_NID(name, NID_commonName, V_ASN1_T61STRING, t61,
                                               sizeof(t61), -1, 0) == 1 &&
                    X509_NAME_add_entry_by_NID(name, NID_organizationName, V_ASN1_BMPSTRING, bmp,
                                               sizeof(bmp), -1, 0) == 1 &&
                    X509_NAME_add_entry_by_NID(name, NID_pkcs9_emailAddress, V_ASN1_UTF8STRING,
                                               (const unsigned char *)"ops@example.com", -1, -1,
                                               0) == 1);
    x = enroll_name("iot", name, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT(subject_value_is(x, NID_commonName, V_ASN1_UTF8STRING, "Z\xc3\xbcrich-7"));
    CU_ASSERT(subject_value_is(x, NID_organizationName, V_ASN1_UTF8STRING, "Acme \xce\xa9"));
    CU_ASSERT(subject_value_is(x, NID_pkcs9_emailAddress, V_ASN1_IA5STRING, "ops@example.com"));
    X509_free(x);
    eg_answer_clear(&a);
    /* A subject template's ${cn} too. */
    x = enroll_name("", name, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT(subject_value_is(x, NID_commonName, V_ASN1_UTF8STRING, "Z\xc3\xbcrich-7"));
    X509_free(x);
    eg_answer_clear(&a);
    X509_NAME_free(name);
    /* A PrintableString stays one. */
    name = X509_NAME_new();
    CU_ASSERT_FATAL(name != NULL &&
                    X509_NAME_add_entry_by_NID(name, NID_commonName, V_ASN1_PRINTABLESTRING,
                                               (const unsigned char *)"dev7", -1, -1, 0) == 1);
    x = enroll_name("iot", name, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT(subject_value_is(x, NID_commonName, V_ASN1_PRINTABLESTRING, "dev7"));
    X509_free(x);
    eg_answer_clear(&a);
    X509_NAME_free(name);
    /*
     * An emailAddress is an IA5String: a character beyond ASCII does not fit, and the value is
     * refused, not copied. (A value that is no text of its type, such as a BMPString of odd
     * length, does not get this far: OpenSSL does not parse the CSR.)
     */
    name = X509_NAME_new();
    CU_ASSERT_FATAL(name != NULL &&
                    X509_NAME_add_entry_by_NID(name, NID_commonName, V_ASN1_UTF8STRING,
                                               (const unsigned char *)"dev7", -1, -1, 0) == 1 &&
                    X509_NAME_add_entry_by_NID(name, NID_pkcs9_emailAddress, V_ASN1_UTF8STRING,
                                               (const unsigned char *)"\xc3\xbc@example.com", -1,
                                               -1, 0) == 1);
    x = enroll_name("iot", name, &a);
    CU_ASSERT_PTR_NULL(x);
    CU_ASSERT_EQUAL(a.status, EG_FORBIDDEN);
    CU_ASSERT_EQUAL(a.dim, EG_DIM_SUBJECT);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, "emailAddress cannot be written as an IA5String"));
    X509_free(x);
    eg_answer_clear(&a);
    X509_NAME_free(name);
}

static void test_tampered_and_garbage_csrs_are_malformed(void)
{
    static const uint8_t garbage[] = {0x30, 0x03, 0x02, 0x01, 0x05, 0xde, 0xad};
    size_t len;
    uint8_t *csr = make_csr(key_a, "CN=dev1", "DNS:dev1.example.com", NULL, NULL, &len);
    uint8_t *longer;
    eg_answer a;

    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    csr[len - 1] ^= 0x01; /* the last octet of the signature */
    enroll("iot", "basic:alice", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_MALFORMED);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_CSR_SIGNATURE);
    eg_answer_clear(&a);
    enroll("iot", "basic:alice", garbage, sizeof(garbage), NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_MALFORMED);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_MALFORMED);
    eg_answer_clear(&a);
    /* A good CSR with bytes after it is not a CSR either. */
    csr[len - 1] ^= 0x01;
    longer = malloc(len + 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(longer);
    memcpy(longer, csr, len);
    longer[len] = 0x00, longer[len + 1] = 0x00;
    enroll("iot", "basic:alice", longer, len + 2, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_MALFORMED);
    eg_answer_clear(&a);
    free(longer);
    free(csr);
}

static void test_reenroll_rules(void)
{
    size_t len;
    uint8_t *csr;
    eg_answer a;

    CU_ASSERT_PTR_NOT_NULL_FATAL(first_cert);
    /* Same subject, SAN and key: issued, as a reissue. */
    csr = make_csr(key_a, "CN=dev1,O=Acme", "IP:10.1.2.3,DNS:dev1.example.com", NULL, NULL, &len);
    enroll("iot", "cert:dev1", csr, len, first_cert, first_len, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_REISSUED);
    if (a.status != EG_OK)
        printf("\n  %s\n", a.reason);
    eg_answer_clear(&a);
    free(csr);
    /* Another SAN: refused as a mismatch. */
    csr = make_csr(key_a, "CN=dev1,O=Acme", "DNS:dev2.example.com,IP:10.1.2.3", NULL, NULL, &len);
    enroll("iot", "cert:dev1", csr, len, first_cert, first_len, &a);
    CU_ASSERT_EQUAL(a.status, EG_FORBIDDEN);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_AUTH_CERT_MISMATCH);
    eg_answer_clear(&a);
    free(csr);
    /* Another subject: refused as a mismatch. */
    csr = make_csr(key_a, "CN=dev2,O=Acme", "DNS:dev1.example.com,IP:10.1.2.3", NULL, NULL, &len);
    enroll("iot", "cert:dev1", csr, len, first_cert, first_len, &a);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_AUTH_CERT_MISMATCH);
    eg_answer_clear(&a);
    free(csr);
    /* The subject in capitals: X509_NAME_cmp would call it the same; the rule does not. */
    csr = make_csr(key_a, "CN=DEV1,O=Acme", "DNS:dev1.example.com,IP:10.1.2.3", NULL, NULL, &len);
    enroll("iot", "cert:dev1", csr, len, first_cert, first_len, &a);
    CU_ASSERT_EQUAL(a.status, EG_FORBIDDEN);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_AUTH_CERT_MISMATCH);
    CU_ASSERT_EQUAL(a.dim, EG_DIM_SUBJECT);
    eg_answer_clear(&a);
    free(csr);
    /* As many names as the certificate, one of them twice in place of the IP it drops. */
    csr = make_csr(key_a, "CN=dev1,O=Acme", "DNS:dev1.example.com,DNS:dev1.example.com", NULL, NULL,
                   &len);
    enroll("iot", "cert:dev1", csr, len, first_cert, first_len, &a);
    CU_ASSERT_EQUAL(a.status, EG_FORBIDDEN);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_AUTH_CERT_MISMATCH);
    CU_ASSERT_EQUAL(a.dim, EG_DIM_SAN);
    eg_answer_clear(&a);
    free(csr);
    /* A new key where the profile forbids it. */
    csr = make_csr(key_b, "CN=dev1,O=Acme", "DNS:dev1.example.com,IP:10.1.2.3", NULL, NULL, &len);
    enroll("iot", "cert:dev1", csr, len, first_cert, first_len, &a);
    CU_ASSERT_EQUAL(a.status, EG_FORBIDDEN);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_POLICY);
    CU_ASSERT_EQUAL(a.dim, EG_DIM_REKEY);
    eg_answer_clear(&a);
    free(csr);
}

/* The subject's DER, malloc'd; NULL if it cannot be encoded. */
static unsigned char *name_der(const X509_NAME *name, int *len)
{
    unsigned char *der = NULL;

    *len = i2d_X509_NAME(name, &der);
    return *len > 0 ? der : NULL;
}

static void test_reenroll_same_text_other_string_type(void)
{
    const unsigned char *p = first_cert;
    X509 *cur = d2i_X509(NULL, &p, (long)first_len), *x;
    X509_NAME *name = X509_NAME_new();
    unsigned char *want, *got = NULL;
    int want_len, got_len = 0;
    size_t len;
    uint8_t *csr;
    eg_answer a;

    CU_ASSERT_PTR_NOT_NULL_FATAL(cur);
    CU_ASSERT_PTR_NOT_NULL_FATAL(name);
    /* The certificate has UTF8Strings; the device writes the same text as PrintableStrings. */
    CU_ASSERT_FATAL(X509_NAME_add_entry_by_NID(name, NID_commonName, V_ASN1_PRINTABLESTRING,
                                               (const unsigned char *)"dev1", -1, -1, 0) == 1);
    CU_ASSERT_FATAL(X509_NAME_add_entry_by_NID(name, NID_organizationName, V_ASN1_PRINTABLESTRING,
                                               (const unsigned char *)"Acme", -1, -1, 0) == 1);
    csr_name = name;
    csr = make_csr(key_a, NULL, "IP:10.1.2.3,DNS:dev1.example.com", NULL, NULL, &len);
    csr_name = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    enroll("iot", "cert:dev1", csr, len, first_cert, first_len, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    if (a.status != EG_OK)
        printf("\n  %s\n", a.reason);
    x = answer_cert(&a);
    want = name_der(X509_get_subject_name(cur), &want_len);
    if (x != NULL)
        got = name_der(X509_get_subject_name(x), &got_len);
    /* The new certificate keeps the current one's subject, byte for byte. */
    CU_ASSERT(want != NULL && got != NULL && want_len == got_len &&
              memcmp(want, got, (size_t)got_len) == 0);
    OPENSSL_free(want);
    OPENSSL_free(got);
    X509_free(x);
    X509_free(cur);
    X509_NAME_free(name);
    eg_answer_clear(&a);
    free(csr);
}

/* A certificate from before subjects were re-encoded, its CN a TeletexString: renewed in UTF-8. */
static void test_reenroll_of_a_teletex_subject_issues_utf8(void)
{
    static const unsigned char t61[] = {'Z', 0xfc, 'r', 'i', 'c', 'h', '-', '8'}; /* Latin-1 */
    X509 *old = X509_new(), *x;
    X509_NAME *name = X509_NAME_new();
    X509_EXTENSION *san =
        X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, "DNS:dev8.example.com");
    unsigned char *der = NULL;
    int der_len = -1;
    size_t len;
    uint8_t *csr;
    eg_answer a;

    CU_ASSERT_FATAL(old != NULL && name != NULL && san != NULL &&
                    X509_NAME_add_entry_by_NID(name, NID_commonName, V_ASN1_T61STRING, t61,
                                               sizeof(t61), -1, 0) == 1 &&
                    X509_set_version(old, 2) == 1 &&
                    ASN1_INTEGER_set(X509_get_serialNumber(old), 8) == 1 &&
                    X509_set_subject_name(old, name) == 1 && X509_set_issuer_name(old, name) == 1 &&
                    X509_gmtime_adj(X509_getm_notBefore(old), -86400) != NULL &&
                    X509_gmtime_adj(X509_getm_notAfter(old), 86400) != NULL &&
                    X509_set_pubkey(old, key_a) == 1 && X509_add_ext(old, san, -1) == 1 &&
                    X509_sign(old, key_a, EVP_sha256()) > 0 && (der_len = i2d_X509(old, &der)) > 0);
    csr = make_csr(key_a, "CN=Z\xc3\xbcrich-8", "DNS:dev8.example.com", NULL, NULL, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    enroll("iot", "cert:dev8", csr, len, der, (size_t)der_len, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    if (a.status != EG_OK)
        printf("\n  %s\n", a.reason);
    x = answer_cert(&a);
    CU_ASSERT(subject_value_is(x, NID_commonName, V_ASN1_UTF8STRING, "Z\xc3\xbcrich-8"));
    X509_free(x);
    eg_answer_clear(&a);
    free(csr);
    OPENSSL_free(der);
    X509_EXTENSION_free(san);
    X509_NAME_free(name);
    X509_free(old);
}

static void test_reenroll_rekey_where_allowed(void)
{
    size_t len;
    uint8_t *csr = make_csr(key_b, "CN=dev9", "DNS:dev9.example.com", NULL, "pw", &len);
    eg_answer a;

    CU_ASSERT_PTR_NOT_NULL_FATAL(tmpl_cert);
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    enroll("", "cert:dev9", csr, len, tmpl_cert, tmpl_len, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_REISSUED);
    if (a.status != EG_OK)
        printf("\n  %s\n", a.reason);
    eg_answer_clear(&a);
    free(csr);
}

static void test_cacerts_is_pkcs7_with_the_ca(void)
{
    char path[PATH_MAX], out[8192];
    char *argv[] = {"openssl", "pkcs7", "-inform", "DER", "-in", path, "-print_certs", NULL};
    eg_answer a;
    const unsigned char *p;
    PKCS7 *p7;
    X509 *ca = read_ca();

    CU_ASSERT_PTR_NOT_NULL_FATAL(ca);
    CU_ASSERT_EQUAL(eg_core_cacerts(core, "iot", &a), 0);
    CU_ASSERT_EQUAL_FATAL(a.status, EG_OK);
    p = a.der;
    p7 = d2i_PKCS7(NULL, &p, (long)a.der_len);
    CU_ASSERT(p7 != NULL && PKCS7_type_is_signed(p7));
    CU_ASSERT(p7 != NULL && sk_PKCS7_SIGNER_INFO_num(p7->d.sign->signer_info) == 0);
    CU_ASSERT(p7 != NULL && sk_X509_num(p7->d.sign->cert) == 1 &&
              X509_cmp(sk_X509_value(p7->d.sign->cert, 0), ca) == 0);
    CU_ASSERT_EQUAL(write_file("cacerts.p7", a.der, a.der_len), 0);
    tpath(path, "cacerts.p7");
    CU_ASSERT_EQUAL(run(argv, out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "CN = Test CA"));
    PKCS7_free(p7);
    X509_free(ca);
    eg_answer_clear(&a);
}

/* The profile's CsrAttrs as `openssl asn1parse` prints them, into out. */
static bool csrattrs_text(const char *profile, const char *name, char *out, size_t cap)
{
    char path[PATH_MAX];
    char *argv[] = {"openssl", "asn1parse", "-inform", "DER", "-in", path, NULL};
    eg_answer a;
    bool ok;

    out[0] = '\0';
    CU_ASSERT_EQUAL(eg_core_csrattrs(core, profile, &a), 0);
    ok = a.status == EG_OK && write_file(name, a.der, a.der_len) == 0;
    tpath(path, name);
    ok = ok && run(argv, out, cap) == 0 && strstr(out, "error") == NULL;
    if (!ok)
        printf("\n  csrattrs %s (status %d):\n%s\n", profile, a.status, out);
    eg_answer_clear(&a);
    return ok;
}

static bool asn1parse_has(const char *profile, const char *name, const char *a1, const char *a2)
{
    char out[16384];
    bool ok = csrattrs_text(profile, name, out, sizeof(out)) && strstr(out, a1) != NULL &&
              strstr(out, a2) != NULL;

    if (!ok)
        printf("\n  csrattrs %s lacks %s or %s:\n%s\n", profile, a1, a2, out);
    return ok;
}

static bool asn1parse_lacks(const char *profile, const char *name, const char *what)
{
    char out[16384];

    return csrattrs_text(profile, name, out, sizeof(out)) && strstr(out, what) == NULL;
}

static void test_csrattrs_parse(void)
{
    eg_answer a;

    /* The RFC 9908 template, with the SAN and EKU extension templates inside. */
    CU_ASSERT(asn1parse_has("iot", "iot.csrattrs", "1.2.840.113549.1.9.16.2.61",
                            "1.2.840.113549.1.9.16.2.62"));
    CU_ASSERT(
        asn1parse_has("iot", "iot.csrattrs", "Subject Alternative Name", "Extended Key Usage"));
    CU_ASSERT(asn1parse_has("", "default.csrattrs", "challengePassword", ":Example"));
    /* "default" takes sha256, sha384 (and sha3-256, which ECDSA cannot use) on its P-256 keys,
       and says so (RFC 7030 4.5.2). */
    CU_ASSERT(asn1parse_has("", "default.csrattrs", ":ecdsa-with-SHA256", ":ecdsa-with-SHA384"));
    CU_ASSERT(asn1parse_lacks("", "default.csrattrs", ":ecdsa-with-SHA1\n"));
    CU_ASSERT(asn1parse_lacks("", "default.csrattrs", "WithRSAEncryption"));
    CU_ASSERT(asn1parse_lacks("", "default.csrattrs", "sha3-"));         /* no ECDSA with SHA-3 */
    CU_ASSERT(asn1parse_lacks("plain", "plain.csrattrs", "ecdsa-with")); /* every digest */
    /* No template: the OID list with the key type. */
    CU_ASSERT(asn1parse_has("plain", "plain.csrattrs", "challengePassword", "secp384r1"));
    CU_ASSERT(asn1parse_has("plain", "plain.csrattrs", "id-ecPublicKey", "SEQUENCE"));
    CU_ASSERT_EQUAL(eg_core_csrattrs(core, "bare", &a), 0);
    CU_ASSERT_EQUAL(a.status, EG_NOTHING);
    CU_ASSERT_PTR_NULL(a.der);
    eg_answer_clear(&a);
}

static void test_unknown_profile(void)
{
    size_t len;
    uint8_t *csr = make_csr(key_a, "CN=x", "DNS:x.example.com", NULL, NULL, &len);
    eg_answer a;

    enroll("nope", "basic:alice", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_UNKNOWN_PROFILE);
    eg_answer_clear(&a);
    CU_ASSERT_EQUAL(eg_core_cacerts(core, "nope", &a), 0);
    CU_ASSERT_EQUAL(a.status, EG_UNKNOWN_PROFILE);
    eg_answer_clear(&a);
    CU_ASSERT_EQUAL(eg_core_csrattrs(core, "nope", &a), 0);
    CU_ASSERT_EQUAL(a.status, EG_UNKNOWN_PROFILE);
    eg_answer_clear(&a);
    free(csr);
}

struct worker {
    pthread_t t;
    pthread_barrier_t *go;
    uint8_t *csr;
    size_t len;
    char principal[32];
    eg_answer a;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    eg_enroll_req req = {.profile = "iot",
                         .principal = w->principal,
                         .csr = w->csr,
                         .csr_len = w->len,
                         .peer = "192.0.2.8"};

    pthread_barrier_wait(w->go);
    eg_core_enroll(core, &req, &w->a);
    return NULL;
}

/* Serials lead with the time, so the ledger's index grows at its end; the rest is random. */
static void test_serials_rise_with_time(void)
{
    uint8_t a[EG_SERIAL_LEN], b[EG_SERIAL_LEN], c[EG_SERIAL_LEN];
    struct timespec pause = {0, 2000000}, now;
    uint64_t ms = 0, now_ms;

    CU_ASSERT_EQUAL_FATAL(eg_issue_serial(a), 0);
    CU_ASSERT_EQUAL_FATAL(eg_issue_serial(b), 0);
    nanosleep(&pause, NULL);
    CU_ASSERT_EQUAL_FATAL(eg_issue_serial(c), 0);
    clock_gettime(CLOCK_REALTIME, &now);
    now_ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;

    CU_ASSERT(a[0] >= 0x40 && a[0] <= 0x7f); /* positive, no leading zero octet */
    for (int i = 0; i < EG_SERIAL_TIME_LEN; i++)
        ms = ms << 8 | (i == 0 ? a[0] & 0x3f : a[i]);
    CU_ASSERT(ms <= now_ms && now_ms - ms < 5000);
    CU_ASSERT(memcmp(a, c, sizeof(a)) < 0); /* 2 ms later sorts after */
    CU_ASSERT(memcmp(b, c, sizeof(b)) < 0);
    /* Taken in the same millisecond or not, the random parts differ. */
    CU_ASSERT(memcmp(a + EG_SERIAL_TIME_LEN, b + EG_SERIAL_TIME_LEN,
                     EG_SERIAL_LEN - EG_SERIAL_TIME_LEN) != 0);
}

static void test_threads_enroll_at_once(void)
{
    struct worker w[NTHREADS] = {0};
    pthread_barrier_t go;
    ASN1_INTEGER *serials[NTHREADS] = {0};
    uint64_t before = sign_calls();
    X509 *ca = read_ca();
    char name[64];
    int i, j;

    CU_ASSERT_PTR_NOT_NULL_FATAL(ca);
    pthread_barrier_init(&go, NULL, NTHREADS);
    for (i = 0; i < NTHREADS; i++) {
        EVP_PKEY *k = EVP_EC_gen("P-256");

        snprintf(name, sizeof(name), "DNS:t%d.example.com", i);
        w[i].csr = k ? make_csr(k, "CN=thread", name, NULL, NULL, &w[i].len) : NULL;
        snprintf(w[i].principal, sizeof(w[i].principal), "basic:t%d", i);
        w[i].go = &go;
        EVP_PKEY_free(k);
        CU_ASSERT_PTR_NOT_NULL_FATAL(w[i].csr);
    }
    for (i = 0; i < NTHREADS; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&w[i].t, NULL, worker_main, &w[i]), 0);
    for (i = 0; i < NTHREADS; i++) {
        X509 *x;

        pthread_join(w[i].t, NULL);
        CU_ASSERT_EQUAL(w[i].a.status, EG_OK);
        x = answer_cert(&w[i].a);
        serials[i] = x ? ASN1_INTEGER_dup(X509_get0_serialNumber(x)) : NULL;
        CU_ASSERT_PTR_NOT_NULL(serials[i]);
        /* Signed at once from copies of one signing context: each over its own bytes. */
        CU_ASSERT(x != NULL && X509_verify(x, X509_get0_pubkey(ca)) == 1);
        X509_free(x);
        eg_answer_clear(&w[i].a);
        free(w[i].csr);
    }
    for (i = 0; i < NTHREADS; i++) {
        for (j = i + 1; j < NTHREADS; j++)
            CU_ASSERT(serials[i] && serials[j] && ASN1_INTEGER_cmp(serials[i], serials[j]) != 0);
    }
    CU_ASSERT_EQUAL(sign_calls(), before + NTHREADS);
    for (i = 0; i < NTHREADS; i++)
        ASN1_INTEGER_free(serials[i]);
    X509_free(ca);
    pthread_barrier_destroy(&go);
}

static void test_audit_names_and_line(void)
{
    char line[512];
    eg_audit_record rec = {.kind = EG_AUDIT_POLICY,
                           .dim = EG_DIM_SAN,
                           .profile = "iot",
                           .principal = "basic:eve\"\nforged=1",
                           .peer = "192.0.2.7",
                           .reason = "SAN dns:evil.com is not allowed"};

    CU_ASSERT_STRING_EQUAL(eg_audit_kind_name(EG_AUDIT_AUTH_BAD_PASSWORD), "auth.bad_password");
    CU_ASSERT_STRING_EQUAL(eg_audit_kind_name(EG_AUDIT_CSR_SIGNATURE), "csr.signature");
    CU_ASSERT_STRING_EQUAL(eg_audit_kind_name(EG_AUDIT_AUTH_CERT_MISMATCH), "auth.cert_mismatch");
    CU_ASSERT_STRING_EQUAL(eg_policy_dim_name(EG_DIM_SAN), "san");
    CU_ASSERT_STRING_EQUAL(eg_policy_dim_name(EG_DIM_REKEY), "rekey");
    eg_audit_format(&rec, line, sizeof(line));
    CU_ASSERT_STRING_EQUAL(line, "estgated audit event=policy profile=iot "
                                 "principal=\"basic:eve\\\"\\x0aforged=1\" peer=192.0.2.7 "
                                 "dim=san reason=\"SAN dns:evil.com is not allowed\"");
    eg_core_audit(core, "iot", "basic:eve", "192.0.2.9", EG_AUDIT_AUTH_BAD_PASSWORD, EG_DIM_NONE,
                  "wrong password");
}

static time_t unix_time(const ASN1_TIME *t)
{
    struct tm tm;

    return ASN1_TIME_to_tm(t, &tm) == 1 ? timegm(&tm) : 0;
}

/* The lint refuses what must never be signed. Nothing is signed here, so the CA's signing
   context is a software key's. */
static void test_lint_refuses_bad_certificates(void)
{
    eg_policy pol = {.cfg = &cfg.profiles[0]};
    eg_issue_ca ca = {.cert = read_ca(), .md = "SHA256", .key = EVP_EC_gen("P-256")};
    uint8_t serial[21] = {0x01};
    size_t len;
    uint8_t *csr = make_csr(key_a, "CN=lint", "DNS:lint.example.com", NULL, NULL, &len);
    eg_csr *req = NULL;
    X509_NAME *subject = NULL;
    eg_validity val;
    char why[256];
    X509 *x;

    CU_ASSERT_FATAL(csr != NULL && eg_csr_parse(csr, len, &req) == 0);
    subject = eg_issue_subject(&pol, req);
    CU_ASSERT_FATAL(ca.cert != NULL && subject != NULL);
    CU_ASSERT_EQUAL_FATAL(eg_issue_ca_ready(&ca), 0);
    ca.not_before = unix_time(X509_get0_notBefore(ca.cert));
    ca.not_after = unix_time(X509_get0_notAfter(ca.cert));
    CU_ASSERT_EQUAL_FATAL(eg_issue_validity(&pol, &ca, time(NULL), 0, &val, why, sizeof(why)), 0);
    x = eg_issue_build(&pol, &ca, req, NULL, subject, serial, 16, &val, why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    CU_ASSERT_EQUAL(eg_issue_lint(&pol, &ca, x, why, sizeof(why)), 0);
    if (eg_issue_lint(&pol, &ca, x, why, sizeof(why)) != 0)
        printf("\n  %s\n", why);
    /* Past the CA's notAfter. */
    ASN1_TIME_set(X509_getm_notAfter(x), time(NULL) + 86400 * 4000);
    CU_ASSERT_EQUAL(eg_issue_lint(&pol, &ca, x, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "validity"));
    X509_free(x);
    /* 21 octets of serial. */
    x = eg_issue_build(&pol, &ca, req, NULL, subject, serial, sizeof(serial), &val, why,
                       sizeof(why));
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    CU_ASSERT_EQUAL(eg_issue_lint(&pol, &ca, x, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "serial"));
    X509_free(x);
    /* A CA flag. */
    x = eg_issue_build(&pol, &ca, req, NULL, subject, serial, 16, &val, why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    X509_EXTENSION_free(X509_delete_ext(x, X509_get_ext_by_NID(x, NID_basic_constraints, -1)));
    {
        BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();

        bc->ca = 1;
        X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_APPEND);
        BASIC_CONSTRAINTS_free(bc);
    }
    CU_ASSERT_EQUAL(eg_issue_lint(&pol, &ca, x, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "CA"));
    /* No SAN where the profile requires one. */
    X509_free(x);
    x = eg_issue_build(&pol, &ca, req, NULL, subject, serial, 16, &val, why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    X509_EXTENSION_free(X509_delete_ext(x, X509_get_ext_by_NID(x, NID_subject_alt_name, -1)));
    CU_ASSERT_EQUAL(eg_issue_lint(&pol, &ca, x, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "SAN"));
    X509_free(x);
    /* A CA not made ready builds nothing. */
    {
        eg_issue_ca unready = {
            .cert = ca.cert, .not_before = ca.not_before, .not_after = ca.not_after};

        CU_ASSERT_PTR_NULL(
            eg_issue_build(&pol, &unready, req, NULL, subject, serial, 16, &val, why, sizeof(why)));
        CU_ASSERT_PTR_NOT_NULL(strstr(why, "extensions"));
    }
    X509_NAME_free(subject);
    eg_csr_free(req);
    eg_issue_ca_clear(&ca);
    free(csr);
}

/* x's extension nid encoded as DER; NULL when x has none. */
static unsigned char *ext_der(const X509 *x, int nid, int *len)
{
    unsigned char *der = NULL;

    *len = i2d_X509_EXTENSION(X509_get_ext(x, X509_get_ext_by_NID(x, nid, -1)), &der);
    return *len > 0 ? der : NULL;
}

/* Each extension estgate encodes once (or hashes itself) is byte for byte what OpenSSL
   makes from the configuration string it stands for. */
static void assert_fixed_extensions_are_openssls(X509 *x, X509 *ca_cert)
{
    static const struct {
        int nid;
        const char *value;
    } want[] = {
        {NID_basic_constraints, "critical,CA:FALSE"},
        {NID_subject_key_identifier, "hash"},
        {NID_authority_key_identifier, "keyid:always"},
    };
    X509V3_CTX ctx;
    ASN1_OBJECT *alg = NULL;
    int ku_len, rsa;
    X509_EXTENSION *ku;
    unsigned char *ku_want = NULL, *ku_got = ext_der(x, NID_key_usage, &ku_len);

    /* The certificate's key is bytes copied from the CSR, not a decoded key: the OID says. */
    CU_ASSERT_FATAL(X509_PUBKEY_get0_param(&alg, NULL, NULL, NULL, X509_get_X509_PUBKEY(x)) == 1);
    rsa = OBJ_obj2nid(alg) == NID_rsaEncryption;
    ku = X509V3_EXT_conf_nid(NULL, NULL, NID_key_usage,
                             rsa ? "critical,digitalSignature,keyEncipherment"
                                 : "critical,digitalSignature");
    CU_ASSERT_FATAL(ku != NULL && ku_got != NULL);
    CU_ASSERT(i2d_X509_EXTENSION(ku, &ku_want) == ku_len &&
              memcmp(ku_want, ku_got, (size_t)ku_len) == 0);
    OPENSSL_free(ku_want);
    OPENSSL_free(ku_got);
    X509_EXTENSION_free(ku);
    X509V3_set_ctx(&ctx, ca_cert, x, NULL, NULL, 0);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, want[i].nid, want[i].value);
        unsigned char *a = NULL, *b;
        int alen = ext != NULL ? i2d_X509_EXTENSION(ext, &a) : -1, blen;

        b = ext_der(x, want[i].nid, &blen);
        CU_ASSERT_FATAL(alen > 0 && b != NULL);
        CU_ASSERT(alen == blen && memcmp(a, b, (size_t)alen) == 0);
        if (alen != blen || memcmp(a, b, (size_t)alen) != 0)
            printf("\n  %s differs from OpenSSL's \"%s\"\n", OBJ_nid2sn(want[i].nid),
                   want[i].value);
        OPENSSL_free(a);
        OPENSSL_free(b);
        X509_EXTENSION_free(ext);
    }
}

/* Two certificates in a row from one signing context made ready once: each
   signed in the token, each verifying, whatever the CA key's type. */
static void sign_twice(eg_token *tok, const eg_keygen_spec *spec, const char *md)
{
    eg_policy pol = {.cfg = &cfg.profiles[0]};
    eg_issue_ca ca = {.cert = read_ca(), .md = md};
    uint8_t serial[16] = {0x01};
    size_t len;
    uint8_t *csr = make_csr(key_a, "CN=ctx", "DNS:ctx.example.com", NULL, NULL, &len);
    eg_token_stats before, after;
    eg_p11_key *key = NULL;
    eg_csr *req = NULL;
    X509_NAME *subject = NULL;
    eg_validity val;
    char why[256];

    CU_ASSERT_FATAL(csr != NULL && eg_csr_parse(csr, len, &req) == 0 && ca.cert != NULL);
    CU_ASSERT_EQUAL_FATAL(eg_p11_key_generate(tok, spec, &key), 0);
    CU_ASSERT_EQUAL_FATAL(eg_provider_key_pkey(NULL, key, &ca.key), 0);
    CU_ASSERT_EQUAL_FATAL(eg_issue_ca_ready(&ca), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(subject = eg_issue_subject(&pol, req));
    ca.not_before = unix_time(X509_get0_notBefore(ca.cert));
    ca.not_after = unix_time(X509_get0_notAfter(ca.cert));
    CU_ASSERT_EQUAL_FATAL(eg_issue_validity(&pol, &ca, time(NULL), 0, &val, why, sizeof(why)), 0);
    eg_token_get_stats(tok, &before);
    for (int n = 0; n < 2; n++) {
        X509 *x = eg_issue_build(&pol, &ca, req, NULL, subject, serial, sizeof(serial), &val, why,
                                 sizeof(why));

        serial[15]++;
        CU_ASSERT_PTR_NOT_NULL_FATAL(x);
        assert_fixed_extensions_are_openssls(x, ca.cert);
        CU_ASSERT_EQUAL(eg_issue_sign(&ca, x, why, sizeof(why)), 0);
        CU_ASSERT_EQUAL(X509_verify(x, ca.key), 1);
        X509_free(x);
    }
    eg_token_get_stats(tok, &after);
    CU_ASSERT_EQUAL(after.sign_calls - before.sign_calls, 2);
    X509_NAME_free(subject);
    eg_csr_free(req);
    eg_issue_ca_clear(&ca);
    eg_p11_key_free(key);
    free(csr);
}

/* A CA certificate without a subject key identifier: its certificates' authority key
   identifier is the SHA-1 of its key (RFC 5280 4.2.1.2 (1)), as the provisioning tool
   makes the CA's own. The signing context here is a software key: only the encoding is
   under test. */
static void test_aki_without_ca_key_identifier(void)
{
    X509 *real = read_ca();
    eg_issue_ca ca = {.cert = X509_new(), .md = "SHA256", .key = EVP_EC_gen("P-256")};
    AUTHORITY_KEYID *akid = NULL;

    CU_ASSERT_FATAL(real != NULL && ca.cert != NULL && ca.key != NULL &&
                    X509_get0_subject_key_id(real) != NULL);
    CU_ASSERT_FATAL(X509_set_pubkey(ca.cert, X509_get0_pubkey(real)) == 1);
    CU_ASSERT_PTR_NULL(X509_get0_subject_key_id(ca.cert));
    CU_ASSERT_EQUAL_FATAL(eg_issue_ca_ready(&ca), 0);
    CU_ASSERT_FATAL((akid = X509V3_EXT_d2i(ca.aki)) != NULL && akid->keyid != NULL);
    CU_ASSERT_EQUAL(ASN1_OCTET_STRING_cmp(akid->keyid, X509_get0_subject_key_id(real)), 0);
    CU_ASSERT_PTR_NULL(akid->issuer);
    CU_ASSERT_PTR_NULL(akid->serial);
    AUTHORITY_KEYID_free(akid);
    eg_issue_ca_clear(&ca);
    X509_free(real);
}

static void test_sign_context_serves_every_ca_key_type(void)
{
    static const eg_keygen_spec specs[] = {
        {.type = EG_KEY_RSA, .bits = 2048, .label = "ctx-rsa"},
        {.type = EG_KEY_EC, .curve_nid = NID_secp384r1, .label = "ctx-p384"},
        {.type = EG_KEY_ED25519, .label = "ctx-ed25519"},
    };
    static const char *const mds[] = {"SHA256", "SHA384", NULL};
    eg_token *tok = NULL;

    /* A second handle on the test's token: the core keeps its own to itself. */
    CU_ASSERT_EQUAL_FATAL(eg_token_open(eg_th_config(th), &tok), 0);
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        if (specs[i].type == EG_KEY_ED25519 &&
            !(eg_token_has_mechanism(tok, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR) &&
              eg_token_has_mechanism(tok, CKM_EDDSA, CKF_SIGN))) {
            printf("(no Ed25519 in this token) ");
            continue;
        }
        sign_twice(tok, &specs[i], mds[i]);
    }
    eg_token_free(tok);
}

/* p11kit: with the token's server gone, 503 with retry_after and the intent failed, so the
   same request is issued once the token is back. */
static void test_token_loss_is_unavailable_then_recovers(void)
{
    size_t len;
    uint8_t *csr;
    eg_answer a;

    if (kind != EG_TH_P11KIT) {
        printf("(p11kit only) ");
        return;
    }
    csr = make_csr(key_b, "CN=lost", "DNS:lost.example.com", NULL, NULL, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    CU_ASSERT_EQUAL_FATAL(eg_th_server_kill(th), 0);
    enroll("iot", "basic:dave", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_UNAVAILABLE);
    CU_ASSERT_EQUAL(a.event, EG_AUDIT_UNAVAILABLE);
    CU_ASSERT_EQUAL(a.retry_after, 5);
    /* The reason names the CK_RV, however long the key's URI (CA_LABEL). */
    CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, "C_Sign: CKR_"));
    if (strstr(a.reason, "C_Sign: CKR_") == NULL)
        printf("\n  reason without its CK_RV: %s\n", a.reason);
    CU_ASSERT_PTR_NULL(a.der);
    eg_answer_clear(&a);
    CU_ASSERT_EQUAL_FATAL(eg_th_server_start(th), 0);
    enroll("iot", "basic:dave", csr, len, NULL, 0, &a);
    CU_ASSERT_EQUAL(a.status, EG_OK);
    if (a.status != EG_OK)
        printf("\n  %s\n", a.reason);
    eg_answer_clear(&a);
    free(csr);
}

/* Last: the core closes, and the ledger it leaves holds what was issued. */
static void test_ledger_holds_certificate_after_close(void)
{
    const unsigned char *p = first_cert;
    X509 *x = d2i_X509(NULL, &p, (long)first_len);
    const ASN1_INTEGER *sn = x ? X509_get0_serialNumber(x) : NULL;
    eg_ledger *lg = NULL;
    uint8_t *der = NULL;
    size_t len = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(sn);
    eg_core_close(core);
    core = NULL;
    CU_ASSERT_EQUAL_FATAL(eg_ledger_open(ledger_path, NULL, &lg), 0);
    CU_ASSERT_EQUAL(eg_ledger_find_serial(lg, ASN1_STRING_get0_data(sn),
                                          (size_t)ASN1_STRING_length(sn), &der, &len),
                    1);
    CU_ASSERT(len == first_len && der != NULL && memcmp(der, first_cert, len) == 0);
    free(der);
    eg_ledger_close(lg);
    X509_free(x);
}

/* A chain whose first certificate is not the key's is refused at open. */
static void test_open_refuses_a_chain_of_another_key(void)
{
    char leaf[PATH_MAX], lpath[PATH_MAX];
    const unsigned char *p = first_cert;
    X509 *x = d2i_X509(NULL, &p, (long)first_len);
    BIO *b = BIO_new_file(tpath(leaf, "leaf-chain.pem"), "w");
    eg_config bad = cfg;
    eg_core *c = NULL;

    CU_ASSERT_FATAL(x != NULL && b != NULL && PEM_write_bio_X509(b, x) == 1);
    BIO_free(b);
    X509_free(x);
    bad.nprofiles = 1;
    bad.profiles[0].ca_chain_file = leaf;
    bad.ledger_path = tpath(lpath, "other-ledger.db");
    CU_ASSERT_NOT_EQUAL(eg_core_open(&bad, &c), 0);
    CU_ASSERT_PTR_NULL(c);
    eg_core_close(c);
}

/*
 * A CA that has not begun (what an appliance whose clock battery ran out sees: its clock starts
 * in the past) or has expired issues nothing: 503 with Retry-After, audited as unavailable, the
 * reason saying which, and nothing in the ledger. The chain file carries the token CA key's
 * public key with the validity to test, signed by another key (open does not check that).
 */
/* A self-signed root of key, named CN=name, for a chain file to end with. */
static X509 *make_root(EVP_PKEY *key, const char *name)
{
    X509 *x = X509_new();
    int ok = x != NULL && X509_set_version(x, 2) == 1 &&
             ASN1_INTEGER_set(X509_get_serialNumber(x), 1) == 1 &&
             X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                        (const unsigned char *)name, -1, -1, 0) == 1 &&
             X509_set_issuer_name(x, X509_get_subject_name(x)) == 1 &&
             X509_gmtime_adj(X509_getm_notBefore(x), -86400) != NULL &&
             X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 3650) != NULL &&
             X509_set_pubkey(x, key) == 1 && X509_sign(x, key, EVP_sha256()) > 0;

    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static void test_ca_outside_its_validity_is_unavailable(void)
{
    static const struct {
        long from, to; /* days from now */
        int retry;
        const char *says;
    } cases[] = {{2, 400, 60, "is the clock set?"}, {-400, -2, 3600, "expired at"}};
    X509 *real = read_ca();
    EVP_PKEY *signer = EVP_EC_gen("P-256");
    X509 *root = signer != NULL ? make_root(signer, "Window Root") : NULL;
    uint8_t *csr;
    size_t len;
    eg_answer a;

    CU_ASSERT_FATAL(real != NULL && signer != NULL && root != NULL);
    csr = make_csr(key_a, "CN=clock", "DNS:clock.example.com", NULL, NULL, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char chain[PATH_MAX], lpath[PATH_MAX], name[32];
        X509 *x = X509_dup(real);
        eg_config other = cfg;
        eg_core *c = NULL;
        BIO *b;
        eg_enroll_req req = {.profile = "iot",
                             .principal = "basic:clock",
                             .auth = EG_AUTH_BASIC,
                             .csr = csr,
                             .csr_len = len,
                             .peer = "192.0.2.7"};
        eg_core_stats st;

        snprintf(name, sizeof(name), "window-%zu.pem", i);
        /* Issued by the root, not by itself: the key identifier that said so goes. */
        CU_ASSERT_PTR_NOT_NULL_FATAL(x);
        X509_EXTENSION_free(
            X509_delete_ext(x, X509_get_ext_by_NID(x, NID_authority_key_identifier, -1)));
        CU_ASSERT_FATAL(X509_time_adj_ex(X509_getm_notBefore(x), cases[i].from, 0, NULL) &&
                        X509_time_adj_ex(X509_getm_notAfter(x), cases[i].to, 0, NULL) &&
                        X509_set_issuer_name(x, X509_get_subject_name(root)) == 1 &&
                        X509_sign(x, signer, EVP_sha256()) > 0);
        CU_ASSERT_FATAL((b = BIO_new_file(tpath(chain, name), "w")) != NULL &&
                        PEM_write_bio_X509(b, x) == 1 && PEM_write_bio_X509(b, root) == 1);
        BIO_free(b);
        X509_free(x);
        snprintf(name, sizeof(name), "window-%zu.db", i);
        other.nprofiles = 1;
        other.profiles[0].ca_chain_file = chain;
        other.ledger_path = tpath(lpath, name);
        CU_ASSERT_EQUAL_FATAL(eg_core_open(&other, &c), 0);
        memset(&a, 0xa5, sizeof(a));
        CU_ASSERT_EQUAL_FATAL(eg_core_enroll(c, &req, &a), 0);
        CU_ASSERT_EQUAL(a.status, EG_UNAVAILABLE);
        CU_ASSERT_EQUAL(a.event, EG_AUDIT_UNAVAILABLE);
        CU_ASSERT_EQUAL(a.retry_after, cases[i].retry);
        CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, cases[i].says));
        CU_ASSERT_PTR_NULL(a.der);
        eg_answer_clear(&a);
        eg_core_get_stats(c, &st);
        CU_ASSERT_EQUAL(st.token_signatures, 0);
        CU_ASSERT_EQUAL(st.certificates, 0);
        eg_core_close(c);
    }
    free(csr);
    X509_free(root);
    EVP_PKEY_free(signer);
    X509_free(real);
}

/* The token CA's certificate as one root issued it: a subordinate CA. */
static X509 *issued_ca(X509 *real, X509 *root, EVP_PKEY *signer)
{
    X509 *x = X509_dup(real);

    if (x == NULL)
        return NULL;
    X509_EXTENSION_free(
        X509_delete_ext(x, X509_get_ext_by_NID(x, NID_authority_key_identifier, -1)));
    if (X509_set_issuer_name(x, X509_get_subject_name(root)) != 1 ||
        X509_sign(x, signer, EVP_sha256()) <= 0) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* Opens the core with a chain file of certs; 0 if it opened, else the refusal in err. */
static int open_with_chain(const char *name, X509 *const *certs, size_t n, size_t *ncacerts,
                           char *err, size_t cap)
{
    char chain[PATH_MAX], lpath[PATH_MAX], dbname[64];
    BIO *b = BIO_new_file(tpath(chain, name), "w");
    eg_config other = cfg;
    eg_core *c = NULL;
    eg_answer a;
    int fds[2], rc, saved = dup(2);
    ssize_t got;

    for (size_t i = 0; b != NULL && i < n; i++)
        PEM_write_bio_X509(b, certs[i]);
    BIO_free(b);
    snprintf(dbname, sizeof(dbname), "%s.db", name);
    other.nprofiles = 1;
    other.profiles[0].ca_chain_file = chain;
    other.ledger_path = tpath(lpath, dbname);
    /* The refusal goes to stderr, as --check-config shows it. */
    if (pipe(fds) != 0)
        return -1;
    fflush(stderr);
    dup2(fds[1], 2);
    rc = eg_core_open(&other, &c);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    got = read(fds[0], err, cap - 1);
    err[got > 0 ? got : 0] = '\0';
    close(fds[0]);
    if (rc == 0 && eg_core_cacerts(c, "iot", &a) == 0 && a.status == EG_OK) {
        const unsigned char *p = a.der;
        PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)a.der_len);

        *ncacerts = p7 != NULL ? (size_t)sk_X509_num(p7->d.sign->cert) : 0;
        PKCS7_free(p7);
        eg_answer_clear(&a);
    }
    eg_core_close(c);
    return rc;
}

/* RFC 7030 4.1.3: /cacerts carries the root, so the chain file must reach one, in order. */
static void test_open_wants_the_chain_up_to_its_root(void)
{
    X509 *real = read_ca();
    EVP_PKEY *signer = EVP_EC_gen("P-256"), *stray_key = EVP_EC_gen("P-256");
    X509 *root = signer ? make_root(signer, "Chain Root") : NULL;
    X509 *stray = stray_key ? make_root(stray_key, "Stray Root") : NULL;
    X509 *sub = root ? issued_ca(real, root, signer) : NULL;
    char err[1024];
    size_t n = 0;

    CU_ASSERT_FATAL(real != NULL && root != NULL && stray != NULL && sub != NULL);
    /* The issuing CA and its root: both in /cacerts. */
    CU_ASSERT_EQUAL(open_with_chain("chain-ok.pem", (X509 *[]){sub, root}, 2, &n, err, sizeof(err)),
                    0);
    CU_ASSERT_EQUAL(n, 2);
    /* The issuing CA alone: no root to serve. */
    CU_ASSERT_NOT_EQUAL(
        open_with_chain("chain-noroot.pem", (X509 *[]){sub}, 1, &n, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "certificate 1 (/CN=Test CA), which is not self-signed"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "append its issuer (/CN=Chain Root)"));
    /* A root, but not the one that issued the CA. */
    CU_ASSERT_NOT_EQUAL(
        open_with_chain("chain-other.pem", (X509 *[]){sub, stray}, 2, &n, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(err, "certificate 1 (/CN=Test CA) is not issued by certificate 2 after it "
                    "(/CN=Stray Root)"));
    /* After the root, a certificate nothing in the file issued. */
    CU_ASSERT_NOT_EQUAL(
        open_with_chain("chain-extra.pem", (X509 *[]){sub, root, stray}, 3, &n, err, sizeof(err)),
        0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "certificate 3 (/CN=Stray Root) comes after the root"));
    X509_free(sub);
    X509_free(stray);
    X509_free(root);
    EVP_PKEY_free(stray_key);
    EVP_PKEY_free(signer);
    X509_free(real);
}

static int make_ca(const char *label, const char *path);

/*
 * A CA key deleted from the token under a running core, or replaced by another key under the
 * same label and id, signs nothing: 503 with the Retry-After of an expired CA (only an operator
 * can fix it), the reason naming the key, nothing recorded as issued, and the same request
 * refused again, not answered from the ledger.
 */
static void test_a_ca_key_gone_or_replaced_issues_nothing(void)
{
    char chain[PATH_MAX], lpath[PATH_MAX], uri[256];
    eg_p11_key *k = NULL, *again = NULL;
    eg_config other = cfg;
    eg_token *t = NULL;
    eg_core *c = NULL;
    eg_core_stats st;
    size_t idlen, len[2];
    uint8_t *csr[2];
    eg_answer a;

    CU_ASSERT_EQUAL_FATAL(make_ca("ca-lost", tpath(chain, "ca-lost.pem")), 0);
    snprintf(uri, sizeof(uri), "pkcs11:token=%s;object=ca-lost", eg_th_config(th)->token_label);
    other.nprofiles = 1;
    other.profiles[0].ca_key_uri = uri;
    other.profiles[0].ca_chain_file = chain;
    other.ledger_path = tpath(lpath, "lost.db");
    CU_ASSERT_EQUAL_FATAL(eg_core_open(&other, &c), 0);
    csr[0] = make_csr(key_a, "CN=before", "DNS:before.example.com", NULL, NULL, &len[0]);
    csr[1] = make_csr(key_b, "CN=after", "DNS:after.example.com", NULL, NULL, &len[1]);
    CU_ASSERT_FATAL(csr[0] != NULL && csr[1] != NULL);
    for (int step = 0; step < 4; step++) {
        eg_enroll_req req = {.profile = other.profiles[0].name,
                             .principal = "basic:lost",
                             .auth = EG_AUTH_BASIC,
                             .csr = csr[step > 0],
                             .csr_len = len[step > 0],
                             .peer = "192.0.2.7"};

        if (step == 1) { /* deleted, as an operator with the token's tools would */
            CU_ASSERT_EQUAL_FATAL(eg_token_open(eg_th_config(th), &t), 0);
            CU_ASSERT_EQUAL_FATAL(eg_p11_key_open(t, uri, &k), 0);
            CU_ASSERT_EQUAL_FATAL(eg_p11_key_destroy(k), 0);
        } else if (step == 2) { /* another key under the same label and id */
            eg_keygen_spec spec = {EG_KEY_EC, 0,    NID_X9_62_prime256v1, "ca-lost", NULL, 0,
                                   true,      false};

            spec.id = eg_p11_key_id(k, &idlen);
            spec.idlen = idlen;
            CU_ASSERT_EQUAL_FATAL(eg_p11_key_generate(t, &spec, &again), 0);
        }
        memset(&a, 0xa5, sizeof(a));
        CU_ASSERT_EQUAL_FATAL(eg_core_enroll(c, &req, &a), 0);
        if (step == 0) {
            CU_ASSERT_EQUAL(a.status, EG_OK);
        } else {
            CU_ASSERT_EQUAL(a.status, EG_UNAVAILABLE);
            CU_ASSERT_EQUAL(a.event, EG_AUDIT_UNAVAILABLE);
            CU_ASSERT_EQUAL(a.retry_after, 3600);
            CU_ASSERT_PTR_NULL(a.der);
            CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, "object=ca-lost"));
            CU_ASSERT_PTR_NOT_NULL(strstr(a.reason, step == 1 ? "is no longer in the token"
                                                              : "is no longer the key loaded"));
            if (a.status != EG_UNAVAILABLE)
                printf("\n  step %d: %d %s\n", step, a.status, a.reason);
        }
        eg_answer_clear(&a);
    }
    eg_core_get_stats(c, &st);
    CU_ASSERT_EQUAL(st.certificates, 1);
    CU_ASSERT_EQUAL(eg_p11_key_destroy(again), 0);
    eg_p11_key_free(again);
    eg_p11_key_free(k);
    eg_token_free(t);
    eg_core_close(c);
    free(csr[0]);
    free(csr[1]);
    ERR_clear_error();
}

/* ---- suite ---- */

/* A self-signed P-256 CA, its key labelled label in the token, its certificate at path. */
static int make_ca(const char *label, const char *path)
{
    const eg_token_config *tc = eg_th_config(th);
    const char *build = getenv("EG_BUILD_DIR");
    char tool[PATH_MAX], out[8192];
    char *argv[24];
    int n = 0, rc;

    if (build == NULL) {
        fprintf(stderr, "EG_BUILD_DIR is not set (ctest sets it)\n");
        return -1;
    }
    snprintf(tool, sizeof(tool), "%s/provisioning/estgate-provision", build);
    argv[n++] = tool;
    argv[n++] = "ca";
    argv[n++] = "create";
    argv[n++] = "--module";
    argv[n++] = (char *)tc->module_path;
    if (tc->init_args != NULL) {
        argv[n++] = "--init-args";
        argv[n++] = (char *)tc->init_args;
    }
    argv[n++] = "--token";
    argv[n++] = (char *)tc->token_label;
    argv[n++] = "--pin-file";
    argv[n++] = (char *)tc->pin_file;
    argv[n++] = "--label";
    argv[n++] = (char *)label;
    argv[n++] = "--key";
    argv[n++] = "ec-p256";
    argv[n++] = "--subject";
    argv[n++] = "CN=Test CA";
    argv[n++] = "--self-signed";
    argv[n++] = "--days";
    argv[n++] = "3650";
    argv[n++] = "--out";
    argv[n++] = (char *)path;
    argv[n] = NULL;
    rc = run(argv, out, sizeof(out));
    if (rc != 0)
        fprintf(stderr, "estgate-provision ca create exited %d: %s\n", rc, out);
    return rc == 0 ? 0 : -1;
}

static int suite_init(void)
{
    if (eg_th_create(kind, "core", &th) != 0)
        return -1;
    tpath(ca_path, "ca.pem");
    tpath(ledger_path, "ledger.db");
    snprintf(ca_uri, sizeof(ca_uri), "pkcs11:token=%s;object=" CA_LABEL,
             eg_th_config(th)->token_label);
    if (make_ca(CA_LABEL, ca_path) != 0)
        return -1;
    key_a = EVP_EC_gen("P-256");
    key_b = EVP_EC_gen("P-256");
    if (key_a == NULL || key_b == NULL)
        return -1;
    config_fill();
    if (eg_core_open(&cfg, &core) != 0) {
        fprintf(stderr, "eg_core_open failed\n");
        return -1;
    }
    return 0;
}

static int suite_clean(void)
{
    eg_core_close(core);
    EVP_PKEY_free(key_a);
    EVP_PKEY_free(key_b);
    free(first_cert);
    free(tmpl_cert);
    eg_th_destroy(th);
    return 0;
}

static CU_TestInfo tests[] = {
    {"a good CSR is issued, verifies, obeys the profile; a retry gets the same certificate",
     test_good_csr_issued_and_verifies},
    {"each outcome leaves one audit row, tied to its issuance", test_audit_rows_of_an_enrollment},
    {"control characters in names are refused", test_control_characters_in_names_are_refused},
    {"a long refused SAN shows its end", test_a_long_refused_san_shows_its_end},
    {"an RSA key gets keyEncipherment", test_rsa_key_gets_key_encipherment},
    {"issue_limit counts new certificates per principal", test_issue_limit_counts_new_certificates},
    {"the ledger counts the certificates", test_ledger_counts_certificates},
    {"policy refusals name their dimension", test_policy_refusals_name_their_dimension},
    {"a CN that names a host obeys the SAN rules", test_a_cn_that_names_a_host_obeys_the_san_rules},
    {"an RSA exponent of one is refused", test_an_rsa_exponent_of_one_is_refused},
    {"the same request a day later gets a new certificate",
     test_the_same_request_a_day_later_gets_a_new_certificate},
    {"RSA-1024 and an unlisted curve are refused", test_key_refusals},
    {"CSRs signed with MD5, or SHA-1 where not listed, are refused", test_weak_csr_signatures},
    {"a requested validity is refused past max_days, granted below", test_requested_validity},
    {"a multi-valued RDN stays one", test_a_multi_valued_rdn_stays_one},
    {"every SAN kind its rule allows is issued", test_every_san_kind_allowed},
    {"a subject template takes the CSR's CN only", test_subject_template_fills_cn},
    {"subject strings are re-encoded as RFC 5280 wants", test_subject_strings_are_reencoded},
    {"tampered and garbage CSRs are malformed", test_tampered_and_garbage_csrs_are_malformed},
    {"reenroll: same names ok, other names or a new key refused", test_reenroll_rules},
    {"reenroll: the same text in another string type keeps the subject",
     test_reenroll_same_text_other_string_type},
    {"reenroll: a TeletexString subject is renewed as UTF8String",
     test_reenroll_of_a_teletex_subject_issues_utf8},
    {"reenroll: a new key where the profile allows it", test_reenroll_rekey_where_allowed},
    {"cacerts is a certs-only PKCS#7 with the CA", test_cacerts_is_pkcs7_with_the_ca},
    {"csrattrs parses: template, OID list, nothing", test_csrattrs_parse},
    {"channel binding is checked before signing", test_channel_binding_is_checked},
    {"an unknown profile is 404", test_unknown_profile},
    {"serials rise with time, then 80 random bits", test_serials_rise_with_time},
    {"8 threads enroll at once with distinct serials", test_threads_enroll_at_once},
    {"audit names and the escaped log line", test_audit_names_and_line},
    {"the lint refuses what must never be signed", test_lint_refuses_bad_certificates},
    {"one signing context serves RSA, P-384 and Ed25519 CA keys",
     test_sign_context_serves_every_ca_key_type},
    {"a CA without a key identifier: the AKI is its key's hash",
     test_aki_without_ca_key_identifier},
    {"token loss: 503, then the same request is issued",
     test_token_loss_is_unavailable_then_recovers},
    {"after close the ledger holds the certificate", test_ledger_holds_certificate_after_close},
    {"open refuses a chain of another key", test_open_refuses_a_chain_of_another_key},
    {"open wants the chain in order up to its root", test_open_wants_the_chain_up_to_its_root},
    {"a CA not begun or expired: 503 with Retry-After, nothing issued",
     test_ca_outside_its_validity_is_unavailable},
    {"a CA key gone or replaced: 503 for an hour, nothing issued",
     test_a_ca_key_gone_or_replaced_issues_nothing},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
