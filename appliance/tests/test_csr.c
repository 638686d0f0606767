/*
 * The appliance's PKCS#10 reader (appliance/csr.c) against OpenSSL's own:
 * every key kind the appliance accepts parses to the same key, subject and
 * extensions and verifies; a broken signature, a trailing byte, a wrong
 * version and garbage are refused; a request whose attributes are not in
 * DER order verifies over the bytes the client signed.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "csr.h"
#include "cu_run.h"
#include "policy.h"

static EVP_PKEY *keys[5];
enum { K_RSA, K_P256, K_P384, K_ED25519, K_ED448 };

static int suite_init(void)
{
    keys[K_RSA] = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    keys[K_P256] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    keys[K_P384] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    keys[K_ED25519] = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    keys[K_ED448] = EVP_PKEY_Q_keygen(NULL, NULL, "ED448");
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (keys[i] == NULL)
            return -1;
    }
    return 0;
}

static int suite_clean(void)
{
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        EVP_PKEY_free(keys[i]);
    return 0;
}

/* A request for CN=csr-test with a SAN, an EKU and a challengePassword; pss signs RSA-PSS. */
static X509_REQ *make_req(EVP_PKEY *key, bool pss)
{
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *san =
        X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, "DNS:a.example.com,IP:10.0.0.1");
    X509_EXTENSION *eku = X509V3_EXT_nconf_nid(NULL, NULL, NID_ext_key_usage, "clientAuth");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ed = EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519 ||
              EVP_PKEY_get_base_id(key) == EVP_PKEY_ED448;
    int ok = req != NULL && exts != NULL && san != NULL && eku != NULL && md != NULL &&
             X509_REQ_set_pubkey(req, key) == 1 &&
             X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_UTF8,
                                        (const unsigned char *)"csr-test", -1, -1, 0) == 1 &&
             sk_X509_EXTENSION_push(exts, san) > 0;

    if (!ok)
        X509_EXTENSION_free(san);
    ok = ok && sk_X509_EXTENSION_push(exts, eku) > 0;
    if (!ok)
        X509_EXTENSION_free(eku);
    ok = ok && X509_REQ_add_extensions(req, exts) == 1 &&
         X509_REQ_add1_attr_by_NID(req, NID_pkcs9_challengePassword, MBSTRING_UTF8,
                                   (const unsigned char *)"otp-123", -1) == 1 &&
         EVP_DigestSignInit(md, &pctx, ed ? NULL : EVP_sha256(), NULL, key) == 1 &&
         (!pss || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1) &&
         X509_REQ_sign_ctx(req, md) > 0;
    EVP_MD_CTX_free(md);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    if (!ok) {
        X509_REQ_free(req);
        return NULL;
    }
    return req;
}

static unsigned char *req_der(X509_REQ *req, size_t *len)
{
    unsigned char *der = NULL;
    int n = req ? i2d_X509_REQ(req, &der) : -1;

    *len = n > 0 ? (size_t)n : 0;
    return n > 0 ? der : NULL;
}

/* The certificate's SubjectPublicKeyInfo is the key's, byte for byte. */
static bool same_spki(X509 *x, EVP_PKEY *key)
{
    unsigned char *a = NULL, *b = NULL;
    int na = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &a), nb = i2d_PUBKEY(key, &b);
    bool same = na > 0 && na == nb && memcmp(a, b, (size_t)na) == 0;

    OPENSSL_free(a);
    OPENSSL_free(b);
    return same;
}

static void check_same_as_openssl(int k, bool pss)
{
    X509_REQ *req = make_req(keys[k], pss);
    size_t len;
    unsigned char *der = req_der(req, &len);
    eg_csr *csr = NULL;
    X509 *x = X509_new();
    STACK_OF(X509_EXTENSION) *want = req ? X509_REQ_get_extensions(req) : NULL;

    CU_ASSERT_FATAL(der != NULL && x != NULL);
    CU_ASSERT_EQUAL_FATAL(eg_csr_parse(der, len, &csr), 0);
    CU_ASSERT_EQUAL(eg_csr_key_type(csr), EVP_PKEY_get_base_id(keys[k]));
    CU_ASSERT_EQUAL(EVP_PKEY_eq(eg_csr_pubkey(csr), keys[k]), 1);
    CU_ASSERT_EQUAL(eg_csr_verify(csr), 1);
    CU_ASSERT_EQUAL(X509_NAME_cmp(eg_csr_subject(csr), X509_REQ_get_subject_name(req)), 0);
    CU_ASSERT_EQUAL(sk_X509_EXTENSION_num(eg_csr_extensions(csr)), sk_X509_EXTENSION_num(want));
    CU_ASSERT(X509at_get_attr_by_NID(eg_csr_attributes(csr), NID_pkcs9_challengePassword, -1) >= 0);
    /* The certificate gets the request's key exactly. */
    CU_ASSERT_EQUAL(eg_csr_copy_pubkey(csr, x), 0);
    CU_ASSERT(same_spki(x, keys[k]));
    eg_csr_free(csr);
    /* One bit of the signature flipped. */
    der[len - 3] ^= 0x01;
    CU_ASSERT_EQUAL_FATAL(eg_csr_parse(der, len, &csr), 0);
    CU_ASSERT_EQUAL(eg_csr_verify(csr), 0);
    eg_csr_free(csr);
    sk_X509_EXTENSION_pop_free(want, X509_EXTENSION_free);
    X509_free(x);
    OPENSSL_free(der);
    X509_REQ_free(req);
}

static void test_rsa(void)
{
    check_same_as_openssl(K_RSA, false);
}

static void test_rsa_pss_signature(void)
{
    check_same_as_openssl(K_RSA, true);
}

static void test_p256(void)
{
    check_same_as_openssl(K_P256, false);
}

static void test_p384(void)
{
    check_same_as_openssl(K_P384, false);
}

static void test_ed25519(void)
{
    check_same_as_openssl(K_ED25519, false);
}

/* The digest each signature uses, as policy sees it; RSA-PSS's from its parameters. */
static void test_signature_digest(void)
{
    static const struct {
        int key;
        const char *md; /* NULL: the algorithm hashes for itself */
        bool pss;
        int want;
    } cases[] = {
        {K_RSA, "MD5", false, NID_md5},           {K_RSA, "SHA1", false, NID_sha1},
        {K_RSA, "SHA256", false, NID_sha256},     {K_RSA, "SHA384", true, NID_sha384},
        {K_RSA, "SHA1", true, NID_sha1},          {K_P256, "SHA256", false, NID_sha256},
        {K_P256, "SHA1", false, NID_sha1},        {K_P384, "SHA512", false, NID_sha512},
        {K_RSA, "SHA3-256", false, NID_sha3_256}, {K_ED25519, NULL, false, NID_undef},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        X509_REQ *req = X509_REQ_new();
        EVP_MD_CTX *mctx = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx = NULL;
        EVP_MD *md = cases[i].md ? EVP_MD_fetch(NULL, cases[i].md, NULL) : NULL;
        unsigned char *der = NULL;
        eg_csr *csr = NULL;
        size_t len;

        CU_ASSERT_FATAL(req != NULL && mctx != NULL && (md != NULL || cases[i].md == NULL));
        CU_ASSERT_FATAL(
            X509_REQ_set_pubkey(req, keys[cases[i].key]) == 1 &&
            EVP_DigestSignInit(mctx, &pctx, md, NULL, keys[cases[i].key]) == 1 &&
            (!cases[i].pss || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1) &&
            X509_REQ_sign_ctx(req, mctx) > 0);
        CU_ASSERT_PTR_NOT_NULL_FATAL(der = req_der(req, &len));
        CU_ASSERT_EQUAL_FATAL(eg_csr_parse(der, len, &csr), 0);
        CU_ASSERT_EQUAL(eg_csr_verify(csr), 1);
        CU_ASSERT_EQUAL(eg_csr_signature_digest(csr), cases[i].want);
        if (eg_csr_signature_digest(csr) != cases[i].want)
            printf("\n  case %zu (%s): %d\n", i, cases[i].md, eg_csr_signature_digest(csr));
        eg_csr_free(csr);
        OPENSSL_free(der);
        EVP_MD_free(md);
        EVP_MD_CTX_free(mctx);
        X509_REQ_free(req);
    }
}

/* An algorithm the appliance does not issue for: parsed, named, no key to use. */
static void test_other_algorithm(void)
{
    X509_REQ *req = make_req(keys[K_ED448], false);
    size_t len;
    unsigned char *der = req_der(req, &len);
    eg_csr *csr = NULL;

    CU_ASSERT_FATAL(der != NULL);
    CU_ASSERT_EQUAL_FATAL(eg_csr_parse(der, len, &csr), 0);
    CU_ASSERT_EQUAL(eg_csr_key_type(csr), EVP_PKEY_ED448);
    CU_ASSERT_PTR_NULL(eg_csr_pubkey(csr));
    CU_ASSERT_EQUAL(eg_csr_verify(csr), 0);
    eg_csr_free(csr);
    OPENSSL_free(der);
    X509_REQ_free(req);
}

/* An EC key with explicit curve parameters is not read (RFC 5480 2.1.1: namedCurve). */
static void test_ec_explicit_parameters(void)
{
    EVP_PKEY *key = EVP_PKEY_dup(keys[K_P256]);
    X509_REQ *req = NULL;
    size_t len = 0;
    unsigned char *der = NULL;
    eg_csr *csr = NULL;

    CU_ASSERT_FATAL(key != NULL);
    CU_ASSERT_EQUAL_FATAL(
        EVP_PKEY_set_utf8_string_param(key, OSSL_PKEY_PARAM_EC_ENCODING, "explicit"), 1);
    req = make_req(key, false);
    der = req_der(req, &len);
    CU_ASSERT_FATAL(der != NULL);
    CU_ASSERT_EQUAL_FATAL(eg_csr_parse(der, len, &csr), 0);
    CU_ASSERT_EQUAL(eg_csr_key_type(csr), EVP_PKEY_EC);
    CU_ASSERT_PTR_NULL(eg_csr_pubkey(csr));
    eg_csr_free(csr);
    OPENSSL_free(der);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
}

/* A point that is not on the curve gives no key (the caller answers 400). */
static void test_ec_point_off_curve(void)
{
    X509_REQ *req = make_req(keys[K_P256], false);
    size_t len, i;
    unsigned char *der = req_der(req, &len);
    eg_csr *csr = NULL;

    CU_ASSERT_FATAL(der != NULL);
    /* BIT STRING of 66 octets, no unused bits, uncompressed point: 03 42 00 04 X Y */
    for (i = 0; i + 4 < len; i++) {
        if (der[i] == 0x03 && der[i + 1] == 0x42 && der[i + 2] == 0x00 && der[i + 3] == 0x04)
            break;
    }
    CU_ASSERT_FATAL(i + 4 < len);
    der[i + 4 + 31] ^= 0x01; /* the last octet of X */
    CU_ASSERT_EQUAL_FATAL(eg_csr_parse(der, len, &csr), 0);
    CU_ASSERT_EQUAL(eg_csr_key_type(csr), EVP_PKEY_EC);
    CU_ASSERT_PTR_NULL(eg_csr_pubkey(csr));
    eg_csr_free(csr);
    OPENSSL_free(der);
    X509_REQ_free(req);
}

/* A request for key's own CSR with its SubjectPublicKeyInfo's key replaced by the bytes given
   (algorithm nid, with the curve's OID for EC), signed again by key; NULL on failure. */
static unsigned char *req_with_key_bits(int key, int nid, const unsigned char *bits, size_t n,
                                        size_t *len)
{
    X509_REQ *req = make_req(keys[key], false);
    X509_PUBKEY *pub = req != NULL ? X509_REQ_get_X509_PUBKEY(req) : NULL;
    unsigned char *penc = OPENSSL_memdup(bits, n), *der = NULL;
    bool ec = nid == NID_X9_62_id_ecPublicKey;

    if (pub == NULL || penc == NULL ||
        X509_PUBKEY_set0_param(pub, OBJ_nid2obj(nid), ec ? V_ASN1_OBJECT : V_ASN1_UNDEF,
                               ec ? OBJ_nid2obj(NID_X9_62_prime256v1) : NULL, penc, (int)n) != 1) {
        OPENSSL_free(penc);
    } else if (X509_REQ_sign(req, keys[key], EVP_sha256()) > 0) {
        der = req_der(req, len);
    }
    X509_REQ_free(req);
    return der;
}

/*
 * Keys that anyone can sign with: the point at infinity (a lone 00, whose ECDSA "signature" needs
 * no private key), the hybrid forms 06 and 07 that RFC 5480 2.2 refuses, and Ed25519 points of
 * small order (the identity verifies a forged signature for any message). None gives a key, so
 * the request is refused before anything is signed for it.
 */
static void test_keys_anyone_can_sign_with(void)
{
    unsigned char point[65], ed[32] = {0x01}, *der;
    size_t n, len;
    eg_csr *csr;

    n = EVP_PKEY_get1_encoded_public_key(keys[K_P256], &der);
    CU_ASSERT_EQUAL_FATAL(n, sizeof(point));
    memcpy(point, der, n);
    OPENSSL_free(der);
    struct {
        int nid, type;
        unsigned char first; /* 0xff: bits as they are */
        const unsigned char *bits;
        size_t n;
    } cases[] = {
        {NID_X9_62_id_ecPublicKey, EVP_PKEY_EC, 0xff, (const unsigned char *)"\0", 1},
        {NID_X9_62_id_ecPublicKey, EVP_PKEY_EC, 0x06, point, sizeof(point)},
        {NID_X9_62_id_ecPublicKey, EVP_PKEY_EC, 0x07, point, sizeof(point)},
        {NID_ED25519, EVP_PKEY_ED25519, 0xff, ed, sizeof(ed)},
        {NID_ED25519, EVP_PKEY_ED25519, 0x00, ed, sizeof(ed)}, /* y = 0, of order 4 */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        unsigned char bits[65];

        memcpy(bits, cases[i].bits, cases[i].n);
        if (cases[i].first != 0xff)
            bits[0] = cases[i].first;
        der = req_with_key_bits(K_P256, cases[i].nid, bits, cases[i].n, &len);
        CU_ASSERT_PTR_NOT_NULL_FATAL(der);
        csr = NULL;
        CU_ASSERT_EQUAL_FATAL(eg_csr_parse(der, len, &csr), 0);
        CU_ASSERT_EQUAL(eg_csr_key_type(csr), cases[i].type);
        CU_ASSERT_PTR_NULL(eg_csr_pubkey(csr));
        if (eg_csr_pubkey(csr) != NULL)
            printf("\n  case %zu gave a key\n", i);
        eg_csr_free(csr);
        OPENSSL_free(der);
    }
    /* The control: the same surgery with the key's own uncompressed point gives the key. */
    der = req_with_key_bits(K_P256, NID_X9_62_id_ecPublicKey, point, sizeof(point), &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(der);
    csr = NULL;
    CU_ASSERT_EQUAL_FATAL(eg_csr_parse(der, len, &csr), 0);
    CU_ASSERT_PTR_NOT_NULL(eg_csr_pubkey(csr));
    eg_csr_free(csr);
    OPENSSL_free(der);
}

static void test_refuses_malformed(void)
{
    X509_REQ *req = make_req(keys[K_P256], false);
    size_t len, i;
    unsigned char *der = req_der(req, &len), *longer;
    static const unsigned char garbage[] = {0x30, 0x03, 0x02, 0x01, 0x00};
    eg_csr *csr = NULL;

    CU_ASSERT_FATAL(der != NULL);
    longer = malloc(len + 1);
    CU_ASSERT_FATAL(longer != NULL);
    memcpy(longer, der, len);
    longer[len] = 0;
    CU_ASSERT_EQUAL(eg_csr_parse(longer, len + 1, &csr), -1); /* a trailing byte */
    for (i = 1; i < len; i += 37)
        CU_ASSERT_EQUAL(eg_csr_parse(der, i, &csr), -1); /* truncated */
    CU_ASSERT_EQUAL(eg_csr_parse(garbage, sizeof(garbage), &csr), -1);
    CU_ASSERT_EQUAL(eg_csr_parse(der, 0, &csr), -1);
    CU_ASSERT_EQUAL(eg_csr_parse(NULL, 10, &csr), -1);
    /* version 1 (the INTEGER after the two SEQUENCE headers of 3+3 or 4+4 octets) */
    for (i = 4; i < 12; i++) {
        if (der[i] == 0x02 && der[i + 1] == 0x01 && der[i + 2] == 0x00) {
            der[i + 2] = 0x01;
            break;
        }
    }
    CU_ASSERT_FATAL(i < 12);
    CU_ASSERT_EQUAL(eg_csr_parse(der, len, &csr), -1);
    CU_ASSERT_PTR_NULL(csr);
    free(longer);
    OPENSSL_free(der);
    X509_REQ_free(req);
}

/* ---- a request whose attributes are signed in non-DER order ---- */

/* tag || length || content, DER lengths. */
static size_t put_tlv(unsigned char *out, int constructed, int tag, int cls, const void *content,
                      size_t len)
{
    unsigned char *p = out;

    ASN1_put_object(&p, constructed, (int)len, tag, cls);
    memcpy(p, content, len);
    return (size_t)(p - out) + len;
}

/* The header length and content length of the TLV at p. */
static size_t tlv_len(const unsigned char *p, size_t max, size_t *hdr)
{
    const unsigned char *q = p;
    long len;
    int tag, cls;

    if (ASN1_get_object(&q, &len, &tag, &cls, (long)max) & 0x80)
        return 0;
    *hdr = (size_t)(q - p);
    return *hdr + (size_t)len;
}

/*
 * Takes OpenSSL's request (attributes sorted: challengePassword before
 * extensionRequest), swaps the two attributes inside the SET OF, signs the
 * new CertificationRequestInfo and wraps it. Re-encoding would sort them
 * back and break the signature; the reader must verify the bytes as sent.
 */
static unsigned char *unsorted_request(EVP_PKEY *key, size_t *outlen)
{
    X509_REQ *req = make_req(key, false);
    size_t len, hdr = 0, crihdr = 0, off, n = 0, a1, a2, setlen, tbslen, siglen, alglen;
    unsigned char *der = req_der(req, &len), tbs[4096], body[4096], set[2048], sig[512];
    unsigned char *out = NULL, *ap;
    const unsigned char *cri, *alg;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ASN1_BIT_STRING *bits = ASN1_BIT_STRING_new();

    if (der == NULL || md == NULL || bits == NULL)
        goto out;
    /* Outer SEQUENCE, then the CRI: skip version, subject and key to the [0] attributes. */
    tlv_len(der, len, &hdr);
    cri = der + hdr;
    alg = cri + tlv_len(cri, len, &crihdr);
    off = crihdr;
    for (int i = 0; i < 3; i++)
        off += tlv_len(cri + off, len, &n);
    setlen = tlv_len(cri + off, len, &hdr);
    a1 = tlv_len(cri + off + hdr, len, &n);
    a2 = tlv_len(cri + off + hdr + a1, len, &n);
    if (a1 == 0 || a2 == 0 || hdr + a1 + a2 != setlen || a1 + a2 > sizeof(set))
        goto out;
    memcpy(set, cri + off + hdr + a1, a2);
    memcpy(set + a2, cri + off + hdr, a1);
    n = off - crihdr;
    memcpy(body, cri + crihdr, n);
    n += put_tlv(body + n, 1, 0, V_ASN1_CONTEXT_SPECIFIC, set, a1 + a2);
    tbslen = put_tlv(tbs, 1, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, body, n);
    siglen = sizeof(sig);
    if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, sig, &siglen, tbs, tbslen) != 1 ||
        ASN1_BIT_STRING_set(bits, sig, (int)siglen) != 1)
        goto out;
    /* all bits used: without this i2d drops the signature's trailing zero bits */
    bits->flags = (bits->flags & ~0x07L) | ASN1_STRING_FLAG_BITS_LEFT;
    /* TBS, the signature algorithm as OpenSSL wrote it, the new signature. */
    alglen = tlv_len(alg, len, &n);
    memcpy(body, tbs, tbslen);
    memcpy(body + tbslen, alg, alglen);
    ap = body + tbslen + alglen;
    n = tbslen + alglen + (size_t)i2d_ASN1_BIT_STRING(bits, &ap);
    if ((out = malloc(n + 8)) != NULL)
        *outlen = put_tlv(out, 1, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, body, n);
out:
    ASN1_BIT_STRING_free(bits);
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    X509_REQ_free(req);
    return out;
}

static void test_unsorted_attributes_verify(void)
{
    size_t len = 0;
    unsigned char *der = unsorted_request(keys[K_P256], &len);
    const unsigned char *p = der;
    X509_REQ *ossl = der ? d2i_X509_REQ(NULL, &p, (long)len) : NULL;
    eg_csr *csr = NULL;

    CU_ASSERT_FATAL(der != NULL && ossl != NULL);
    CU_ASSERT_EQUAL(X509_REQ_verify(ossl, X509_REQ_get0_pubkey(ossl)), 1);
    CU_ASSERT_EQUAL_FATAL(eg_csr_parse(der, len, &csr), 0);
    CU_ASSERT_EQUAL(eg_csr_verify(csr), 1);
    CU_ASSERT_EQUAL(sk_X509_ATTRIBUTE_num(eg_csr_attributes(csr)), 2);
    CU_ASSERT_EQUAL(
        OBJ_obj2nid(X509_ATTRIBUTE_get0_object(sk_X509_ATTRIBUTE_value(eg_csr_attributes(csr), 0))),
        NID_ext_req); /* DER would put the shorter challengePassword first */
    eg_csr_free(csr);
    X509_REQ_free(ossl);
    free(der);
}

/* The bare OIDs in p's CsrAttrs, as short names joined by spaces ("" for 204). */
static void csrattrs_oids(const eg_profile_cfg *p, char *out, size_t cap)
{
    eg_policy pol = {.cfg = p};
    uint8_t *der = NULL;
    size_t len = 0, used = 0;
    const unsigned char *q;
    STACK_OF(ASN1_TYPE) *seq = NULL;

    out[0] = '\0';
    CU_ASSERT_EQUAL_FATAL(eg_csrattrs_der(&pol, &der, &len), 0);
    q = der;
    if (len > 0)
        CU_ASSERT_PTR_NOT_NULL_FATAL(seq = d2i_ASN1_SEQUENCE_ANY(NULL, &q, (long)len));
    for (int i = 0; i < sk_ASN1_TYPE_num(seq); i++) {
        const ASN1_TYPE *t = sk_ASN1_TYPE_value(seq, i);

        if (t->type == V_ASN1_OBJECT)
            used += (size_t)snprintf(out + used, cap - used, "%s%s", used ? " " : "",
                                     OBJ_nid2sn(OBJ_obj2nid(t->value.object)));
    }
    sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
    OPENSSL_free(der);
}

/* RFC 7030 4.5.2: a profile that narrows csr_digests names the signature algorithms it takes. */
static void test_csrattrs_signature_algorithms(void)
{
    eg_profile_cfg p = {.name = "t", .label = "t"};
    char oids[512];

    csrattrs_oids(&p, oids, sizeof(oids)); /* every digest: nothing to say */
    CU_ASSERT_STRING_EQUAL(oids, "");
    /* No key rules: RSA and EC keys are allowed; ECDSA with SHA-3 has no algorithm in OpenSSL. */
    p.csr_digests = 1u << 2 | 1u << 4 | 1u << 5; /* sha256, sha512, sha3-256 */
    csrattrs_oids(&p, oids, sizeof(oids));
    CU_ASSERT_STRING_EQUAL(oids, "ecdsa-with-SHA256 ecdsa-with-SHA512 RSA-SHA256 RSA-SHA512 "
                                 "id-rsassa-pkcs1-v1_5-with-sha3-256");
    /* EC keys only, beside the key type list. */
    p.keys[p.nkeys++] = (eg_keyrule_cfg){.type = EVP_PKEY_EC, .curve_nid = NID_secp384r1};
    p.csr_digests = 1u << 3; /* sha384 */
    csrattrs_oids(&p, oids, sizeof(oids));
    CU_ASSERT_STRING_EQUAL(oids, "ecdsa-with-SHA384");
    /* Ed25519 hashes for itself: nothing to choose. */
    p.keys[0] = (eg_keyrule_cfg){.type = EVP_PKEY_ED25519};
    csrattrs_oids(&p, oids, sizeof(oids));
    CU_ASSERT_STRING_EQUAL(oids, "ED25519");
}

/* Whether the DER holds the OID (its encoding, tag and length included). */
static bool der_has(const uint8_t *der, size_t len, const uint8_t *oid, size_t n)
{
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(der + i, oid, n) == 0)
            return true;
    return false;
}

/*
 * The RFC 9908 template asks for a subject attribute the profile takes: a CN by default, the
 * profile's own attributes when CN is not one of them (a profile of serial numbers asked for a
 * CN, and then refused the CSR that followed it).
 */
static void test_csrattrs_template_asks_for_what_the_profile_takes(void)
{
    static const uint8_t cn[] = {0x06, 0x03, 0x55, 0x04, 0x03};
    static const uint8_t serial[] = {0x06, 0x03, 0x55, 0x04, 0x05};
    eg_profile_cfg p = {.name = "t", .label = "t", .nekus = 1, .ekus = {NID_client_auth}};
    eg_policy pol = {.cfg = &p};
    uint8_t *der = NULL;
    size_t len = 0;

    CU_ASSERT_EQUAL_FATAL(eg_csrattrs_der(&pol, &der, &len), 0);
    CU_ASSERT(der_has(der, len, cn, sizeof(cn)));
    CU_ASSERT(!der_has(der, len, serial, sizeof(serial)));
    OPENSSL_free(der);
    p.subject_nids[p.nsubject_nids++] = NID_serialNumber;
    CU_ASSERT_EQUAL_FATAL(eg_csrattrs_der(&pol, &der, &len), 0);
    CU_ASSERT(!der_has(der, len, cn, sizeof(cn)));
    CU_ASSERT(der_has(der, len, serial, sizeof(serial)));
    OPENSSL_free(der);
}

static CU_TestInfo tests[] = {
    {"RSA-2048, PKCS#1 v1.5 signature", test_rsa},
    {"RSA-2048, RSA-PSS signature", test_rsa_pss_signature},
    {"EC P-256", test_p256},
    {"EC P-384", test_p384},
    {"Ed25519", test_ed25519},
    {"the signature's digest is read, RSA-PSS's from its parameters", test_signature_digest},
    {"Ed448 is named but not used", test_other_algorithm},
    {"EC with explicit parameters has no key", test_ec_explicit_parameters},
    {"EC point off the curve has no key", test_ec_point_off_curve},
    {"keys anyone can sign with have no key", test_keys_anyone_can_sign_with},
    {"malformed requests are refused", test_refuses_malformed},
    {"attributes out of DER order verify", test_unsorted_attributes_verify},
    {"csrattrs names the signature algorithms csr_digests allows",
     test_csrattrs_signature_algorithms},
    {"csrattrs' template asks for what the profile takes",
     test_csrattrs_template_asks_for_what_the_profile_takes},
    CU_TEST_INFO_NULL,
};

int main(void)
{
    return eg_cu_run("appliance/csr", suite_init, suite_clean, tests);
}
