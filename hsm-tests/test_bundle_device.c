/*
 * The device-side trust bundle library on its own: bundles made here in
 * software (OpenSSL keys, the manifest written from the documented format
 * with snprintf, not with the library's own writer), then changed the ways
 * an attacker or an accident would, and checked for the refusal each
 * deserves. Times are fixed, so nothing depends on the clock.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <CUnit/CUnit.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509v3.h>

#include "cu_run.h"
#include "estgate_bundle.h"

#define T0  1800000000LL /* 2027-01-15T08:00:00Z: when the test bundles are issued */
#define DAY 86400LL

/* A key and its certificate. */
struct ident {
    EVP_PKEY *key;
    X509 *cert;
};

static struct ident ca, signer, other_ca, other_signer, anchor1, anchor2;
/*
 * From the fleet CA, but not bundle signers: an S/MIME certificate, one with no
 * EKU at all (a signer an earlier build made), and one with the EKU whose key
 * usage is not digitalSignature.
 */
static struct ident smime, no_eku, wrong_ku;
/* The last refusal's sentence. */
static char last_why[512];

/* A bundle's files in memory. */
struct bundle {
    unsigned char pem[8192], p7b[8192], cms[16384];
    size_t pem_len, p7b_len, cms_len;
};

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;

    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    ok = ext != NULL && X509_add_ext(x, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

/*
 * A certificate valid from T0 - 10 days for days days; issuer NULL: self-signed;
 * eku NULL: no extended key usage.
 */
static int make_ident(struct ident *id, const char *cn, const struct ident *issuer, int is_ca,
                      long days, const char *eku)
{
    static long serial = 1;
    X509 *x = X509_new();
    X509 *ix;
    int ok;

    id->key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ix = issuer != NULL ? issuer->cert : x;
    ok = x != NULL && id->key != NULL && X509_set_version(x, X509_VERSION_3) &&
         ASN1_INTEGER_set(X509_get_serialNumber(x), serial++) &&
         X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                    (const unsigned char *)cn, -1, -1, 0) &&
         X509_set_issuer_name(x, X509_get_subject_name(ix)) &&
         ASN1_TIME_set(X509_getm_notBefore(x), (time_t)(T0 - 10 * DAY)) != NULL &&
         ASN1_TIME_set(X509_getm_notAfter(x), (time_t)(T0 + days * DAY)) != NULL &&
         X509_set_pubkey(x, id->key) &&
         add_ext(x, ix, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE") &&
         add_ext(x, ix, NID_key_usage,
                 is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature") &&
         add_ext(x, ix, NID_subject_key_identifier, "hash") &&
         (eku == NULL || add_ext(x, ix, NID_ext_key_usage, eku)) &&
         X509_sign(x, issuer != NULL ? issuer->key : id->key, EVP_sha256()) > 0;
    if (!ok) {
        ERR_print_errors_fp(stdout);
        X509_free(x);
        return -1;
    }
    id->cert = x;
    return 0;
}

static void ident_clear(struct ident *id)
{
    X509_free(id->cert);
    EVP_PKEY_free(id->key);
    memset(id, 0, sizeof(*id));
}

static int init(void)
{
    const char *bsign = "critical," ESTGATE_BUNDLE_SIGNER_EKU_OID;

    return make_ident(&ca, "Fleet CA", NULL, 1, 3650, NULL) ||
                   make_ident(&signer, "Bundle signer", &ca, 0, 1000, bsign) ||
                   make_ident(&other_ca, "Other CA", NULL, 1, 3650, NULL) ||
                   make_ident(&other_signer, "Other signer", &other_ca, 0, 1000, bsign) ||
                   make_ident(&anchor1, "Anchor one", NULL, 1, 3650, NULL) ||
                   make_ident(&anchor2, "Anchor two", NULL, 1, 3650, NULL) ||
                   make_ident(&smime, "Someone", &ca, 0, 1000, "emailProtection") ||
                   make_ident(&no_eku, "Old bundle signer", &ca, 0, 1000, NULL) ||
                   make_ident(&wrong_ku, "Signing CA", &ca, 1, 1000, bsign)
               ? -1
               : 0;
}

static int clean(void)
{
    ident_clear(&ca);
    ident_clear(&signer);
    ident_clear(&other_ca);
    ident_clear(&other_signer);
    ident_clear(&anchor1);
    ident_clear(&anchor2);
    ident_clear(&smime);
    ident_clear(&no_eku);
    ident_clear(&wrong_ku);
    return 0;
}

/* Copies a memory BIO's bytes out; 0 or -1 when they do not fit. */
static int take_bio(BIO *b, unsigned char *buf, size_t cap, size_t *len)
{
    char *p;
    long n = BIO_get_mem_data(b, &p);

    if (n < 0 || (size_t)n > cap)
        return -1;
    memcpy(buf, p, (size_t)n);
    *len = (size_t)n;
    return 0;
}

static int write_pem(struct bundle *b)
{
    BIO *m = BIO_new(BIO_s_mem());
    int ok = m != NULL && PEM_write_bio_X509(m, anchor1.cert) &&
             PEM_write_bio_X509(m, anchor2.cert) &&
             take_bio(m, b->pem, sizeof(b->pem), &b->pem_len) == 0;

    BIO_free(m);
    return ok ? 0 : -1;
}

static int write_p7b(struct bundle *b)
{
    PKCS7 *p7 = PKCS7_new();
    BIO *m = BIO_new(BIO_s_mem());
    int ok;

    ok = p7 != NULL && m != NULL && PKCS7_set_type(p7, NID_pkcs7_signed);
    if (ok)
        p7->d.sign->contents->type = OBJ_nid2obj(NID_pkcs7_data);
    ok = ok && PKCS7_add_certificate(p7, anchor1.cert) && PKCS7_add_certificate(p7, anchor2.cert) &&
         i2d_PKCS7_bio(m, p7) && take_bio(m, b->p7b, sizeof(b->p7b), &b->p7b_len) == 0;
    PKCS7_free(p7);
    BIO_free(m);
    return ok ? 0 : -1;
}

static void hex(const unsigned char *d, size_t n, char *out)
{
    size_t i;

    for (i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void sha256_hex(const unsigned char *d, size_t n, char out[65])
{
    unsigned char md[32];

    EVP_Digest(d, n, md, NULL, EVP_sha256(), NULL);
    hex(md, 32, out);
}

static void cert_hex(X509 *x, char out[65])
{
    unsigned char md[32];
    unsigned int n;

    X509_digest(x, EVP_sha256(), md, &n);
    hex(md, 32, out);
}

/* The manifest as docs/trust-bundles.md describes it, for the files in b. */
static void manifest_text(const struct bundle *b, unsigned long long version, const char *issued,
                          const char *until, char *out, size_t cap)
{
    char pem[65], p7b[65], a1[65], a2[65];

    sha256_hex(b->pem, b->pem_len, pem);
    sha256_hex(b->p7b, b->p7b_len, p7b);
    cert_hex(anchor1.cert, a1);
    cert_hex(anchor2.cert, a2);
    snprintf(out, cap,
             "estgate-trust-bundle-manifest 1\n"
             "bundle-version %llu\n"
             "issued-at %s\n"
             "not-after %s\n"
             "pem-sha256 %s\n"
             "p7b-sha256 %s\n"
             "anchor-count 2\n"
             "anchor-sha256 %s\n"
             "anchor-sha256 %s\n",
             version, issued, until, pem, p7b, a1, a2);
}

static int sign_text(struct bundle *b, const struct ident *by, const char *text)
{
    BIO *in = BIO_new_mem_buf(text, (int)strlen(text)), *out = BIO_new(BIO_s_mem());
    CMS_ContentInfo *cms = NULL;
    int ok;

    ok = in != NULL && out != NULL &&
         (cms = CMS_sign(by->cert, by->key, NULL, in, CMS_BINARY | CMS_NOSMIMECAP)) != NULL &&
         i2d_CMS_bio(out, cms) && take_bio(out, b->cms, sizeof(b->cms), &b->cms_len) == 0;
    if (!ok)
        ERR_print_errors_fp(stdout);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    BIO_free(out);
    return ok ? 0 : -1;
}

/* Version 5, issued at T0, valid 30 days, signed by by. */
static int make_bundle(struct bundle *b, const struct ident *by)
{
    char text[2048];

    memset(b, 0, sizeof(*b));
    if (write_pem(b) != 0 || write_p7b(b) != 0)
        return -1;
    manifest_text(b, 5, "2027-01-15T08:00:00Z", "2027-02-14T08:00:00Z", text, sizeof(text));
    return sign_text(b, by, text);
}

/* Verifies b trusting trust, at now, with installed; *v is left NULL on failure. */
static estgate_bundle_status check(const struct bundle *b, X509 *trust, long long now,
                                   unsigned long long installed, estgate_bundle_verified **v)
{
    estgate_bundle_files f = {b->cms, b->cms_len, b->pem, b->pem_len, b->p7b, b->p7b_len};
    estgate_bundle_policy pol = {sk_X509_new_null(), (time_t)now, installed};
    estgate_bundle_verified *sentinel = (estgate_bundle_verified *)&pol, *got = sentinel;
    estgate_bundle_status st;
    char why[512] = "";

    sk_X509_push(pol.trusted, trust);
    st = estgate_bundle_verify(&f, &pol, &got, why, sizeof(why));
    memcpy(last_why, why, sizeof(last_why));
    if (st != ESTGATE_BUNDLE_OK) {
        printf("\n    (%s: %s) ", estgate_bundle_status_name(st), why);
        CU_ASSERT(got == sentinel); /* not written on failure */
        CU_ASSERT(why[0] != 0);
        got = NULL;
    }
    sk_X509_free(pol.trusted);
    if (v != NULL)
        *v = got;
    else
        estgate_bundle_verified_free(got);
    return st;
}

static void test_good_bundle_verifies(void)
{
    estgate_bundle_verified *v = NULL;
    struct bundle b;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    CU_ASSERT_EQUAL_FATAL(check(&b, ca.cert, T0 + DAY, 4, &v), ESTGATE_BUNDLE_OK);
    CU_ASSERT_EQUAL(v->manifest.version, 5);
    CU_ASSERT_EQUAL(v->manifest.issued_at, T0);
    CU_ASSERT_EQUAL(v->manifest.not_after, T0 + 30 * DAY);
    CU_ASSERT_EQUAL(v->manifest.anchor_count, 2);
    CU_ASSERT_EQUAL_FATAL(sk_X509_num(v->anchors), 2);
    CU_ASSERT_EQUAL(X509_cmp(sk_X509_value(v->anchors, 0), anchor1.cert), 0);
    CU_ASSERT_EQUAL(X509_cmp(sk_X509_value(v->anchors, 1), anchor2.cert), 0);
    CU_ASSERT_EQUAL(X509_cmp(v->signer, signer.cert), 0);
    estgate_bundle_verified_free(v);
    estgate_bundle_verified_free(NULL);
    /* Pinning the signer's own certificate (not self-signed) works as well as its CA. */
    CU_ASSERT_EQUAL(check(&b, signer.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_OK);
    /* The last second of validity is still inside it. */
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + 30 * DAY - 1, 0, NULL), ESTGATE_BUNDLE_OK);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0, 0, NULL), ESTGATE_BUNDLE_OK);
}

static void test_tampered_manifest_is_refused(void)
{
    struct bundle b;
    unsigned char *p;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    /* "bundle-version 5" inside the signed content becomes 9: a rollback guard an attacker wants.
     */
    p = memmem(b.cms, b.cms_len, "bundle-version 5", 16);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    p[15] = '9';
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_TAMPERED);
    p[15] = '5';
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_OK);
    /* The signature itself (the last bytes of the DER) changed. */
    b.cms[b.cms_len - 3] ^= 0x01;
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_TAMPERED);
}

static void test_tampered_pem_is_refused(void)
{
    struct bundle b;
    unsigned char *p;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    p = memmem(b.pem, b.pem_len, "-----END", 8);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    p[-3] = p[-3] == 'A' ? 'B' : 'A';
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_TAMPERED);
    /* Even a harmless-looking trailing newline is a different file. */
    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    b.pem[b.pem_len++] = '\n';
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_TAMPERED);
}

static void test_tampered_p7b_is_refused(void)
{
    struct bundle b;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    b.p7b[b.p7b_len / 2] ^= 0x40;
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_TAMPERED);
}

static void test_wrong_signer_is_refused(void)
{
    struct bundle b;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &other_signer), 0);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_UNTRUSTED_SIGNER);
    CU_ASSERT_EQUAL(check(&b, signer.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_UNTRUSTED_SIGNER);
    /* Its own CA accepts it: the refusal above was about trust, not the bundle. */
    CU_ASSERT_EQUAL(check(&b, other_ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_OK);
}

/*
 * A reviewer's attack: a certificate the fleet CA issued for something else
 * (an S/MIME certificate estgated issued on a profile with emailProtection)
 * signs a bundle. It chains to the devices' trust, so only the bundle-signer
 * EKU tells it apart.
 */
static void test_not_a_bundle_signer_is_refused(void)
{
    const struct ident *impostors[] = {&smime, &no_eku, &wrong_ku};
    struct bundle b;
    size_t i;

    for (i = 0; i < sizeof(impostors) / sizeof(impostors[0]); i++) {
        CU_ASSERT_EQUAL_FATAL(make_bundle(&b, impostors[i]), 0);
        CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 4, NULL), ESTGATE_BUNDLE_UNTRUSTED_SIGNER);
        CU_ASSERT_PTR_NOT_NULL(strstr(last_why, "is not a bundle signer"));
        /* Pinned as given, it is no more a bundle signer. */
        CU_ASSERT_EQUAL(check(&b, impostors[i]->cert, T0 + DAY, 4, NULL),
                        ESTGATE_BUNDLE_UNTRUSTED_SIGNER);
    }
    CU_ASSERT_PTR_NOT_NULL(strstr(last_why, "digitalSignature"));
    /* The genuine signer, from the same CA, still signs. */
    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 4, NULL), ESTGATE_BUNDLE_OK);
}

static void test_expired_is_refused(void)
{
    struct bundle b;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + 30 * DAY, 0, NULL), ESTGATE_BUNDLE_EXPIRED);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + 365 * DAY, 0, NULL), ESTGATE_BUNDLE_EXPIRED);
}

static void test_signer_expired_is_refused(void)
{
    char text[2048];
    struct bundle b;

    /* A bundle that outlives its signer's certificate is refused once the certificate ends. */
    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    manifest_text(&b, 5, "2027-01-15T08:00:00Z", "2035-01-01T00:00:00Z", text, sizeof(text));
    CU_ASSERT_EQUAL_FATAL(sign_text(&b, &signer, text), 0);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + 999 * DAY, 0, NULL), ESTGATE_BUNDLE_OK);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + 1001 * DAY, 0, NULL), ESTGATE_BUNDLE_UNTRUSTED_SIGNER);
}

static void test_not_yet_valid_is_refused(void)
{
    struct bundle b;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 - 1, 0, NULL), ESTGATE_BUNDLE_NOT_YET_VALID);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 - 5 * DAY, 0, NULL), ESTGATE_BUNDLE_NOT_YET_VALID);
}

static void test_rollback_is_refused(void)
{
    struct bundle b;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 5, NULL), ESTGATE_BUNDLE_ROLLBACK);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 6, NULL), ESTGATE_BUNDLE_ROLLBACK);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 4, NULL), ESTGATE_BUNDLE_OK);
}

static void test_garbage_is_malformed(void)
{
    static const unsigned char junk[] = "not a CMS message at all";
    estgate_bundle_files f;
    estgate_bundle_policy pol = {NULL, (time_t)T0, 0};
    estgate_bundle_verified *v = NULL;
    struct bundle b;
    size_t i;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    memcpy(b.cms, junk, sizeof(junk));
    b.cms_len = sizeof(junk);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_MALFORMED);
    b.cms_len = 0;
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_MALFORMED);
    /* Every truncation of a good message is refused, never accepted or crashed on. */
    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    for (i = 1; i < b.cms_len; i += 97) {
        struct bundle cut = b;

        cut.cms_len = i;
        CU_ASSERT_NOT_EQUAL(check(&cut, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_OK);
    }
    /* No files at all is a caller's mistake, not a bundle. */
    memset(&f, 0, sizeof(f));
    CU_ASSERT_EQUAL(estgate_bundle_verify(&f, &pol, &v, NULL, 0), ESTGATE_BUNDLE_INTERNAL);
    CU_ASSERT_PTR_NULL(v);
}

static void test_signed_garbage_manifest_is_malformed(void)
{
    char text[2048];
    struct bundle b;

    CU_ASSERT_EQUAL_FATAL(make_bundle(&b, &signer), 0);
    CU_ASSERT_EQUAL_FATAL(sign_text(&b, &signer, "hello, device\n"), 0);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_MALFORMED);
    /* A signed manifest whose anchors are not the ones in the files. */
    manifest_text(&b, 5, "2027-01-15T08:00:00Z", "2027-02-14T08:00:00Z", text, sizeof(text));
    text[strlen(text) - 2] = text[strlen(text) - 2] == '0' ? '1' : '0';
    CU_ASSERT_EQUAL_FATAL(sign_text(&b, &signer, text), 0);
    CU_ASSERT_EQUAL(check(&b, ca.cert, T0 + DAY, 0, NULL), ESTGATE_BUNDLE_MALFORMED);
}

/* ---- the manifest parser and times ---- */

static const char good_manifest[] =
    "estgate-trust-bundle-manifest 1\n"
    "bundle-version 12\n"
    "issued-at 2026-11-22T10:00:00Z\n"
    "not-after 2027-11-22T10:00:00Z\n"
    "pem-sha256 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
    "p7b-sha256 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n"
    "anchor-count 1\n"
    "anchor-sha256 0000000000000000000000000000000000000000000000000000000000000001\n";

static estgate_bundle_status parse_with(const char *from, const char *to)
{
    static estgate_bundle_manifest m;
    char text[1024], *p;
    char why[256] = "";
    estgate_bundle_status st;

    snprintf(text, sizeof(text), "%s", good_manifest);
    if (from != NULL) {
        p = strstr(text, from);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p);
        memmove(p + strlen(to), p + strlen(from), strlen(p + strlen(from)) + 1);
        memcpy(p, to, strlen(to));
    }
    st = estgate_bundle_manifest_parse((const unsigned char *)text, strlen(text), &m, why,
                                       sizeof(why));
    if (st != ESTGATE_BUNDLE_OK)
        CU_ASSERT(why[0] != 0);
    return st;
}

static void test_manifest_parse_is_strict(void)
{
    static const char *const bad[][2] = {
        {"bundle-version 12", "bundle-version 012"},
        {"bundle-version 12", "bundle-version 0"},
        {"bundle-version 12", "bundle-version 1234567890123456789"},
        {"bundle-version 12", "bundle-version -1"},
        {"bundle-version 12", "bundle-version  12"},
        {"bundle-version 12\n", "bundle-version 12\r\n"},
        {"2026-11-22T10", "2026-02-30T10"},
        {"2026-11-22T10", "2026-11-22 10"},
        {"not-after 2027", "not-after 2025"},
        {"pem-sha256 0011", "pem-sha256 00AA"},
        {"pem-sha256 0011", "pem-sha256 011"},
        {"anchor-count 1", "anchor-count 2"},
        {"anchor-count 1", "anchor-count 0"},
        {"anchor-count 1", "anchor-count 257"},
        {"manifest 1", "manifest 2"},
        {"issued-at", "issued_at"},
        {"0001\n", "0001\nextra 1\n"},
        {"0001\n", "0001"},
    };
    estgate_bundle_manifest m;
    size_t i;

    CU_ASSERT_EQUAL(parse_with(NULL, NULL), ESTGATE_BUNDLE_OK);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (parse_with(bad[i][0], bad[i][1]) != ESTGATE_BUNDLE_MALFORMED)
            CU_FAIL(bad[i][1]);
    }
    memset(&m, 0x5a, sizeof(m));
    CU_ASSERT_EQUAL(estgate_bundle_manifest_parse((const unsigned char *)"", 0, &m, NULL, 0),
                    ESTGATE_BUNDLE_MALFORMED);
    CU_ASSERT_EQUAL(m.version, 0x5a5a5a5a5a5a5a5aULL); /* untouched on failure */
}

static void test_manifest_format_round_trips(void)
{
    static estgate_bundle_manifest m, back;
    size_t len = 0;
    char *text;

    CU_ASSERT_EQUAL_FATAL(estgate_bundle_manifest_parse((const unsigned char *)good_manifest,
                                                        strlen(good_manifest), &m, NULL, 0),
                          ESTGATE_BUNDLE_OK);
    CU_ASSERT_EQUAL(m.version, 12);
    CU_ASSERT_EQUAL(m.anchor_sha256[0][31], 1);
    CU_ASSERT_EQUAL(m.pem_sha256[1], 0x11);
    text = estgate_bundle_manifest_format(&m, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL(len, strlen(good_manifest));
    CU_ASSERT_EQUAL(memcmp(text, good_manifest, len), 0);
    CU_ASSERT_EQUAL(estgate_bundle_manifest_parse((unsigned char *)text, len, &back, NULL, 0),
                    ESTGATE_BUNDLE_OK);
    CU_ASSERT_EQUAL(memcmp(&m, &back, sizeof(m)), 0);
    OPENSSL_free(text);
}

static void test_times_are_utc(void)
{
    static const char *const samples[] = {"1970-01-01T00:00:00Z", "2000-02-29T12:34:56Z",
                                          "2026-11-22T10:00:00Z", "2100-03-01T00:00:00Z",
                                          "9999-12-31T23:59:59Z"};
    char buf[21];
    int64_t t;
    struct tm tm;
    size_t i;

    for (i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        CU_ASSERT_EQUAL_FATAL(estgate_bundle_time_parse(samples[i], 20, &t), 0);
        memset(&tm, 0, sizeof(tm));
        CU_ASSERT_PTR_NOT_NULL(strptime(samples[i], "%Y-%m-%dT%H:%M:%SZ", &tm));
        CU_ASSERT_EQUAL(t, (int64_t)timegm(&tm));
        CU_ASSERT_EQUAL(estgate_bundle_time_format(t, buf), 0);
        CU_ASSERT_STRING_EQUAL(buf, samples[i]);
    }
    CU_ASSERT_EQUAL(estgate_bundle_time_parse("2001-02-29T00:00:00Z", 20, &t), -1);
    CU_ASSERT_EQUAL(estgate_bundle_time_parse("2000-01-01T24:00:00Z", 20, &t), -1);
    CU_ASSERT_EQUAL(estgate_bundle_time_parse("1969-12-31T23:59:59Z", 20, &t), -1);
    CU_ASSERT_EQUAL(estgate_bundle_time_parse("2000-01-01T00:00:00z", 20, &t), -1);
    CU_ASSERT_EQUAL(estgate_bundle_time_format(-1, buf), -1);
}

static CU_TestInfo tests[] = {
    {"a good bundle verifies and gives its anchors", test_good_bundle_verifies},
    {"a changed manifest or signature is tampered", test_tampered_manifest_is_refused},
    {"a changed PEM bundle is tampered", test_tampered_pem_is_refused},
    {"a changed PKCS#7 bundle is tampered", test_tampered_p7b_is_refused},
    {"another signer is untrusted", test_wrong_signer_is_refused},
    {"a certificate from the CA that is not a bundle signer is untrusted",
     test_not_a_bundle_signer_is_refused},
    {"an expired bundle is refused", test_expired_is_refused},
    {"an expired signer certificate is refused", test_signer_expired_is_refused},
    {"a bundle not valid yet is refused", test_not_yet_valid_is_refused},
    {"an older or equal version is a rollback", test_rollback_is_refused},
    {"garbage and truncations are malformed", test_garbage_is_malformed},
    {"signed garbage is malformed", test_signed_garbage_manifest_is_malformed},
    {"the manifest parser is strict", test_manifest_parse_is_strict},
    {"the manifest format round-trips", test_manifest_format_round_trips},
    {"times are UTC and exact", test_times_are_utc},
    CU_TEST_INFO_NULL,
};

int main(void)
{
    return eg_cu_run("bundle device library", init, clean, tests);
}
