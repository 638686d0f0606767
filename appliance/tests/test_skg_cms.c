/*
 * serverkeygen's CMS half (appliance/skg_cms.c, skg_protect.c). Every piece a
 * token would hand over is made here in software the way the token makes it
 * (AES-CBC with padding over a real PKCS#8, RSA OAEP/PKCS#1 v1.5, AES key wrap,
 * ECDH + X9.63 KDF over eg_skg_kari_shared_info's output), assembled with
 * eg_skg_envelope_der, and then opened by OpenSSL's own CMS_decrypt, which must
 * give back the PKCS#8 byte for byte. The DER is also checked against the
 * encodings measured in docs/serverkeygen-design.md section 4, so that a
 * decryptor more lenient than RFC 5652 cannot hide a drift. The CSR attribute
 * reader is driven with requests made by OpenSSL's X509_REQ.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "csr.h"
#include "cu_run.h"
#include "skg_cms.h"

/* Recipients (keys and self-signed certificates with SKIs), and the two contents. */
enum { R_RSA, R_P256, R_P384, R_N };
static EVP_PKEY *rkey[R_N];
static X509 *rcert[R_N];
enum { C_P256, C_RSA, C_N };
static uint8_t *p8[C_N];
static size_t p8_len[C_N];

static X509 *make_cert(EVP_PKEY *key, const char *cn, const char *ku, uint64_t serial)
{
    X509 *x = X509_new();
    X509V3_CTX ctx;
    X509_EXTENSION *ski = NULL, *kux = NULL;
    int ok = x != NULL && X509_set_version(x, X509_VERSION_3) == 1 &&
             ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial) == 1 &&
             X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                        (const unsigned char *)cn, -1, -1, 0) == 1 &&
             X509_set_issuer_name(x, X509_get_subject_name(x)) == 1 &&
             X509_gmtime_adj(X509_getm_notBefore(x), 0) != NULL &&
             X509_gmtime_adj(X509_getm_notAfter(x), 3600) != NULL && X509_set_pubkey(x, key) == 1;

    if (ok) {
        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
        ski = X509V3_EXT_nconf_nid(NULL, &ctx, NID_subject_key_identifier, "hash");
        kux = X509V3_EXT_nconf_nid(NULL, &ctx, NID_key_usage, ku);
    }
    ok = ok && ski != NULL && kux != NULL && X509_add_ext(x, ski, -1) == 1 &&
         X509_add_ext(x, kux, -1) == 1 && X509_sign(x, key, EVP_sha256()) > 0;
    X509_EXTENSION_free(ski);
    X509_EXTENSION_free(kux);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static int pkcs8_of(EVP_PKEY *key, uint8_t **der, size_t *len)
{
    PKCS8_PRIV_KEY_INFO *pki = EVP_PKEY2PKCS8(key);
    unsigned char *buf = NULL;
    int n = pki != NULL ? i2d_PKCS8_PRIV_KEY_INFO(pki, &buf) : -1;

    PKCS8_PRIV_KEY_INFO_free(pki);
    if (n <= 0)
        return -1;
    *der = buf;
    *len = (size_t)n;
    return 0;
}

static int suite_init(void)
{
    EVP_PKEY *content[C_N] = {EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"),
                              EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)};
    int rc = 0;

    rkey[R_RSA] = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rkey[R_P256] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    rkey[R_P384] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    for (int i = 0; i < R_N; i++) {
        if (rkey[i] == NULL)
            return -1;
    }
    rcert[R_RSA] = make_cert(rkey[R_RSA], "rsa recipient", "keyEncipherment", 0x8badf00dULL);
    rcert[R_P256] = make_cert(rkey[R_P256], "p256 recipient", "keyAgreement", 2);
    rcert[R_P384] = make_cert(rkey[R_P384], "p384 recipient", "keyAgreement", 0x10000ULL);
    for (int i = 0; i < C_N; i++) {
        if (content[i] == NULL || pkcs8_of(content[i], &p8[i], &p8_len[i]) != 0)
            rc = -1;
        EVP_PKEY_free(content[i]);
    }
    for (int i = 0; i < R_N; i++) {
        if (rcert[i] == NULL)
            rc = -1;
    }
    return rc;
}

static int suite_clean(void)
{
    for (int i = 0; i < R_N; i++) {
        EVP_PKEY_free(rkey[i]);
        X509_free(rcert[i]);
    }
    for (int i = 0; i < C_N; i++)
        OPENSSL_free(p8[i]);
    return 0;
}

/* ---- what the token would produce, made in software ---- */

typedef struct piece {
    uint8_t cek[32];
    size_t cek_len;
    uint8_t iv[16];
    uint8_t ct[4096];
    size_t ct_len;
} piece;

/* C_WrapKey(CKM_AES_CBC_PAD, CEK, private key): AES-CBC with PKCS#7 padding over the PKCS#8. */
static int encrypt_content(const uint8_t *in, size_t n, unsigned cek_bits, piece *pc)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const EVP_CIPHER *c = cek_bits == 128 ? EVP_aes_128_cbc() : EVP_aes_256_cbc();
    int a = 0, b = 0, ok;

    pc->cek_len = cek_bits / 8;
    ok = ctx != NULL && n < sizeof(pc->ct) - 16 && RAND_bytes(pc->cek, (int)pc->cek_len) == 1 &&
         RAND_bytes(pc->iv, sizeof(pc->iv)) == 1 &&
         EVP_EncryptInit_ex(ctx, c, NULL, pc->cek, pc->iv) == 1 &&
         EVP_EncryptUpdate(ctx, pc->ct, &a, in, (int)n) == 1 &&
         EVP_EncryptFinal_ex(ctx, pc->ct + a, &b) == 1;
    pc->ct_len = (size_t)a + (size_t)b;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* C_WrapKey(CKM_RSA_PKCS_OAEP or CKM_RSA_PKCS) of the CEK to the recipient's public key. */
static int rsa_wrap(eg_skg_kt kt, const piece *pc, uint8_t *out, size_t *out_len)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, X509_get0_pubkey(rcert[R_RSA]), NULL);
    int ok = ctx != NULL && EVP_PKEY_encrypt_init(ctx) == 1;

    if (kt == EG_SKG_KT_PKCS1) {
        ok = ok && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1;
    } else {
        ok = ok && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1;
        if (kt == EG_SKG_KT_OAEP_SHA256)
            ok = ok && EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) == 1 &&
                 EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) == 1;
    }
    ok = ok && EVP_PKEY_encrypt(ctx, out, out_len, pc->cek, pc->cek_len) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* C_WrapKey(CKM_AES_KEY_WRAP, KEK, CEK): RFC 3394 with the default IV. */
static int aes_wrap(const uint8_t *kek, unsigned kek_bits, const piece *pc, uint8_t *out,
                    size_t *out_len)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const EVP_CIPHER *c = kek_bits == 128 ? EVP_aes_128_wrap() : EVP_aes_256_wrap();
    int a = 0, b = 0, ok;

    if (ctx != NULL)
        EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    ok = ctx != NULL && EVP_EncryptInit_ex(ctx, c, NULL, kek, NULL) == 1 &&
         EVP_EncryptUpdate(ctx, out, &a, pc->cek, (int)pc->cek_len) == 1 &&
         EVP_EncryptFinal_ex(ctx, out + a, &b) == 1;
    *out_len = (size_t)a + (size_t)b;
    EVP_CIPHER_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* X9.63 KDF over the ECDH secret z, as C_DeriveKey(CKM_ECDH1_DERIVE, CKD_SHAnnn_KDF) does. */
static int x963(const char *md, const uint8_t *z, size_t zlen, unsigned kek_bits, uint8_t *kek)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "X963KDF", NULL);
    EVP_KDF_CTX *kctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    uint8_t *info = NULL;
    size_t info_len = 0;
    OSSL_PARAM params[4];
    int ok = kctx != NULL && eg_skg_kari_shared_info(kek_bits, &info, &info_len) == 0;

    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)z, zlen);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, info_len);
    params[3] = OSSL_PARAM_construct_end();
    ok = ok && EVP_KDF_derive(kctx, kek, kek_bits / 8, params) == 1;
    OPENSSL_free(info);
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return ok ? 0 : -1;
}

/* The token's KARI steps: ephemeral key, ECDH with the recipient, KDF, AES key wrap. */
static int kari_wrap(int r, eg_skg_kdf kdf, unsigned kek_bits, const piece *pc, uint8_t *point,
                     size_t *point_len, uint8_t *out, size_t *out_len)
{
    bool p384 = r == R_P384;
    EVP_PKEY *eph = EVP_PKEY_Q_keygen(NULL, NULL, "EC", p384 ? "P-384" : "P-256");
    EVP_PKEY_CTX *ctx = eph != NULL ? EVP_PKEY_CTX_new_from_pkey(NULL, eph, NULL) : NULL;
    uint8_t z[48], kek[32];
    size_t zlen = sizeof(z);
    int ok = ctx != NULL && EVP_PKEY_derive_init(ctx) == 1 &&
             EVP_PKEY_derive_set_peer(ctx, X509_get0_pubkey(rcert[r])) == 1 &&
             EVP_PKEY_derive(ctx, z, &zlen) == 1 &&
             x963(kdf == EG_SKG_KDF_SHA384 ? "SHA384" : "SHA256", z, zlen, kek_bits, kek) == 0 &&
             aes_wrap(kek, kek_bits, pc, out, out_len) == 0 &&
             EVP_PKEY_get_octet_string_param(eph, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point, 97,
                                             point_len) == 1;

    OPENSSL_cleanse(z, sizeof(z));
    OPENSSL_cleanse(kek, sizeof(kek));
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(eph);
    return ok ? 0 : -1;
}

/* ---- reading the result back ---- */

/* The TLV at *p (within *avail): its content, tag number and class; *p moves past it. */
static const uint8_t *tlv(const uint8_t **p, long *avail, int *tag, int *cls, long *len)
{
    const uint8_t *q = *p;

    if (*avail <= 0 || (ASN1_get_object(&q, len, tag, cls, *avail) & 0x80) != 0)
        return NULL;
    *avail -= (long)(q - *p) + *len;
    *p = q + *len;
    return q;
}

/* EnvelopedData.version, and the one RecipientInfo's CHOICE tag and version. */
static int shape(const uint8_t *der, size_t n, long *version, int *ri_tag, long *ri_version)
{
    const uint8_t *p = der, *c;
    long avail = (long)n, len;
    int tag, cls;

    if ((c = tlv(&p, &avail, &tag, &cls, &len)) == NULL || avail != 0) /* ContentInfo */
        return -1;
    p = c, avail = len;
    if (tlv(&p, &avail, &tag, &cls, &len) == NULL ||                 /* contentType */
        (c = tlv(&p, &avail, &tag, &cls, &len)) == NULL || tag != 0) /* [0] */
        return -1;
    p = c, avail = len;
    if ((c = tlv(&p, &avail, &tag, &cls, &len)) == NULL) /* EnvelopedData */
        return -1;
    p = c, avail = len;
    if ((c = tlv(&p, &avail, &tag, &cls, &len)) == NULL || tag != V_ASN1_INTEGER || len != 1)
        return -1;
    *version = c[0];
    if ((c = tlv(&p, &avail, &tag, &cls, &len)) == NULL || tag != V_ASN1_SET) /* recipientInfos */
        return -1;
    p = c, avail = len;
    if ((c = tlv(&p, &avail, &tag, &cls, &len)) == NULL || avail != 0) /* exactly one */
        return -1;
    *ri_tag = cls == V_ASN1_CONTEXT_SPECIFIC ? tag : -1;
    p = c, avail = len;
    if ((c = tlv(&p, &avail, &tag, &cls, &len)) == NULL || tag != V_ASN1_INTEGER || len != 1)
        return -1;
    *ri_version = c[0];
    return 0;
}

static bool contains(const uint8_t *hay, size_t n, const uint8_t *needle, size_t m)
{
    for (size_t i = 0; m <= n && i <= n - m; i++) {
        if (memcmp(hay + i, needle, m) == 0)
            return true;
    }
    return false;
}

#define CONTAINS(der, len, bytes) contains((der), (len), (bytes), sizeof(bytes))

/* CMS_decrypt with key and cert (cert may be NULL); 1 when the output is want exactly. */
static int opens_to(const uint8_t *der, size_t n, EVP_PKEY *key, X509 *cert, const uint8_t *kek,
                    size_t kek_len, const uint8_t *kekid, size_t kekid_len, const uint8_t *want,
                    size_t want_len)
{
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)n);
    BIO *out = BIO_new(BIO_s_mem());
    char *got = NULL;
    long got_len;
    int ok = cms != NULL && out != NULL && p == der + n;

    if (ok && kek != NULL)
        ok = CMS_decrypt_set1_key(cms, (unsigned char *)kek, kek_len, kekid, kekid_len) == 1;
    ok = ok && CMS_decrypt(cms, key, cert, NULL, out, CMS_BINARY) == 1;
    got_len = ok ? BIO_get_mem_data(out, &got) : 0;
    ok = ok && got_len >= 0 && (size_t)got_len == want_len && memcmp(got, want, want_len) == 0;
    BIO_free(out);
    CMS_ContentInfo_free(cms);
    ERR_clear_error(); /* a refusal leaves its reasons queued */
    return ok;
}

/* ---- the envelope cases ---- */

typedef struct kase {
    eg_skg_rkind kind;
    eg_skg_kt kt;      /* KTRI */
    bool ski;          /* KTRI, KARI: name by SKI, else issuerAndSerialNumber */
    unsigned kek_bits; /* KEKRI, KARI */
    int rcpt;          /* KARI: R_P256 or R_P384 */
    eg_skg_kdf kdf;    /* KARI */
    unsigned cek_bits;
} kase;

/* Everything one answer is made of; owns the buffers eg_skg_recipient points into. */
typedef struct answer {
    piece pc;
    eg_skg_recipient r;
    uint8_t ek[512];
    uint8_t point[97];
    uint8_t kek[32];
    uint8_t kekid[20];
} answer;

static int make_answer(const kase *k, int content, answer *a)
{
    size_t ek_len = sizeof(a->ek), point_len = 0;
    const ASN1_OCTET_STRING *ski;
    int rcpt = k->kind == EG_SKG_KARI ? k->rcpt : R_RSA;

    memset(a, 0, sizeof(*a));
    if (encrypt_content(p8[content], p8_len[content], k->cek_bits, &a->pc) != 0)
        return -1;
    a->r.kind = k->kind;
    a->r.kt = k->kt;
    a->r.kek_bits = k->kek_bits;
    ski = X509_get0_subject_key_id(rcert[rcpt]);
    if (k->ski) {
        a->r.rid.ski = ski->data;
        a->r.rid.ski_len = (size_t)ski->length;
    } else {
        a->r.rid.cert = rcert[rcpt];
    }
    if (k->kind == EG_SKG_KTRI && rsa_wrap(k->kt, &a->pc, a->ek, &ek_len) != 0)
        return -1;
    if (k->kind == EG_SKG_KEKRI) {
        if (RAND_bytes(a->kek, sizeof(a->kek)) != 1 ||
            RAND_bytes(a->kekid, sizeof(a->kekid)) != 1 ||
            aes_wrap(a->kek, k->kek_bits, &a->pc, a->ek, &ek_len) != 0)
            return -1;
        a->r.kekid = a->kekid;
        a->r.kekid_len = sizeof(a->kekid);
    }
    if (k->kind == EG_SKG_KARI) {
        if (kari_wrap(rcpt, k->kdf, k->kek_bits, &a->pc, a->point, &point_len, a->ek, &ek_len) != 0)
            return -1;
        a->r.curve_nid = rcpt == R_P384 ? NID_secp384r1 : NID_X9_62_prime256v1;
        a->r.kdf = k->kdf;
        a->r.originator_point = a->point;
        a->r.originator_point_len = point_len;
    }
    a->r.encrypted_key = a->ek;
    a->r.encrypted_key_len = ek_len;
    return 0;
}

static int build(const kase *k, answer *a, uint8_t **der, size_t *len)
{
    eg_skg_envelope env = {.recipient = &a->r,
                           .cek_bits = k->cek_bits,
                           .iv = a->pc.iv,
                           .ciphertext = a->pc.ct,
                           .ciphertext_len = a->pc.ct_len,
                           .content = EG_SKG_CONTENT_DATA};

    return eg_skg_envelope_der(&env, der, len);
}

/* RFC 5652 6.1/6.2: EnvelopedData 0 only for an iasn KTRI; KTRI 0/2, kari [1] 3, kekri [2] 4. */
static void check_versions(const kase *k, const uint8_t *der, size_t len)
{
    long v = -1, riv = -1;
    int tag = -2;

    CU_ASSERT_EQUAL_FATAL(shape(der, len, &v, &tag, &riv), 0);
    CU_ASSERT_EQUAL(v, k->kind == EG_SKG_KTRI && !k->ski ? 0 : 2);
    if (k->kind == EG_SKG_KTRI) {
        CU_ASSERT_EQUAL(tag, -1);
        CU_ASSERT_EQUAL(riv, k->ski ? 2 : 0);
    } else if (k->kind == EG_SKG_KARI) {
        CU_ASSERT_EQUAL(tag, 1);
        CU_ASSERT_EQUAL(riv, 3);
    } else {
        CU_ASSERT_EQUAL(tag, 2);
        CU_ASSERT_EQUAL(riv, 4);
    }
}

static void check_opens(const kase *k, const answer *a, int content, const uint8_t *der, size_t len)
{
    const uint8_t *want = p8[content];
    size_t n = p8_len[content];
    uint8_t wrong[32];
    int rcpt = k->kind == EG_SKG_KARI ? k->rcpt : R_RSA;

    if (k->kind == EG_SKG_KEKRI) {
        CU_ASSERT_TRUE(opens_to(der, len, NULL, NULL, a->kek, k->kek_bits / 8, a->kekid,
                                sizeof(a->kekid), want, n));
        memcpy(wrong, a->kek, sizeof(wrong));
        wrong[0] ^= 1; /* the test can fail: a wrong KEK does not open it */
        CU_ASSERT_FALSE(opens_to(der, len, NULL, NULL, wrong, k->kek_bits / 8, a->kekid,
                                 sizeof(a->kekid), want, n));
        return;
    }
    CU_ASSERT_TRUE(opens_to(der, len, rkey[rcpt], rcert[rcpt], NULL, 0, NULL, 0, want, n));
    CU_ASSERT_TRUE(opens_to(der, len, rkey[rcpt], NULL, NULL, 0, NULL, 0, want, n));
}

static void run_case(const kase *k)
{
    for (int content = 0; content < C_N; content++) {
        answer a;
        uint8_t *der = NULL;
        size_t len = 0;

        CU_ASSERT_EQUAL_FATAL(make_answer(k, content, &a), 0);
        CU_ASSERT_EQUAL_FATAL(build(k, &a, &der, &len), 0);
        check_versions(k, der, len);
        check_opens(k, &a, content, der, len);
        OPENSSL_free(der);
    }
}

/* One built answer, for the encoding checks (content: the P-256 PKCS#8). */
static uint8_t *built(const kase *k, answer *a, size_t *len)
{
    uint8_t *der = NULL;

    if (make_answer(k, C_P256, a) != 0 || build(k, a, &der, len) != 0)
        return NULL;
    return der;
}

#define OID_OAEP   0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07
#define OID_SHA256 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01
#define OID_MGF1   0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08
#define OID_AES(n) 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, (n)

/*
 * A KTRI with key-transport algorithm kt, named by SKI and by issuer and
 * serial, decrypts; its RecipientInfo carries alg (DER), and with an SKI the
 * rid is [0] IMPLICIT SubjectKeyIdentifier.
 */
static void ktri_case(eg_skg_kt kt, const uint8_t *alg, size_t alg_len)
{
    kase k = {.kind = EG_SKG_KTRI, .kt = kt, .cek_bits = 256, .ski = true};
    uint8_t rid[22] = {0x80, 0x14}, *der;
    size_t len = 0;
    answer a;

    run_case(&k);
    der = built(&k, &a, &len);
    CU_ASSERT_FATAL(der != NULL);
    CU_ASSERT_TRUE(contains(der, len, alg, alg_len));
    CU_ASSERT_EQUAL_FATAL(a.r.rid.ski_len, 20);
    memcpy(rid + 2, a.r.rid.ski, 20);
    CU_ASSERT_TRUE(CONTAINS(der, len, rid));
    OPENSSL_free(der);
    k.ski = false;
    run_case(&k);
}

static void test_ktri_oaep_sha1(void)
{
    static const uint8_t alg[] = {0x30, 0x0d, OID_OAEP, 0x30, 0x00}; /* SEQUENCE {} */

    ktri_case(EG_SKG_KT_OAEP_SHA1, alg, sizeof(alg));
}

static void test_ktri_oaep_sha256(void)
{
    static const uint8_t alg[] = {0x30, 0x38, OID_OAEP, 0x30,       0x2b, 0xa0,
                                  0x0d, 0x30, 0x0b,     OID_SHA256, 0xa1, 0x1a,
                                  0x30, 0x18, OID_MGF1, 0x30,       0x0b, OID_SHA256};

    ktri_case(EG_SKG_KT_OAEP_SHA256, alg, sizeof(alg));
}

static void test_ktri_pkcs1(void)
{
    static const uint8_t alg[] = {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                  0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};

    ktri_case(EG_SKG_KT_PKCS1, alg, sizeof(alg));
}

static void test_kekri(void)
{
    kase k = {.kind = EG_SKG_KEKRI, .cek_bits = 256};
    uint8_t head[] = {0x30, 0x16, 0x04, 0x14}; /* kekid SEQUENCE { OCTET STRING } */
    uint8_t wrap[] = {0x30, 0x0b, OID_AES(0x05), 0x04};
    answer a;
    size_t len = 0;
    uint8_t *der;

    k.kek_bits = 128;
    run_case(&k);
    der = built(&k, &a, &len);
    CU_ASSERT_FATAL(der != NULL);
    CU_ASSERT_TRUE(CONTAINS(der, len, head));
    CU_ASSERT_TRUE(CONTAINS(der, len, wrap)); /* id-aes128-wrap, absent params, then the key */
    OPENSSL_free(der);
    k.kek_bits = 256;
    run_case(&k);
}

/* keyEncryptionAlgorithm of a KARI: scheme { wrap } (RFC 5753 7.1.5). */
static void check_kari_alg(const uint8_t *der, size_t len, uint8_t scheme, uint8_t wrap)
{
    const uint8_t alg[] = {0x30, 0x15, 0x06,   0x06, 0x2b, 0x81,         0x04,
                           0x01, 0x0b, scheme, 0x30, 0x0b, OID_AES(wrap)};

    CU_ASSERT_TRUE(contains(der, len, alg, sizeof(alg)));
}

static void test_kari_p256(void)
{
    /* originator [0] { [1] { id-ecPublicKey (no params), BIT STRING 04... } } */
    static const uint8_t orig[] = {0xa0, 0x51, 0xa1, 0x4f, 0x30, 0x09, 0x06, 0x07, 0x2a, 0x86,
                                   0x48, 0xce, 0x3d, 0x02, 0x01, 0x03, 0x42, 0x00, 0x04};
    kase k = {.kind = EG_SKG_KARI,
              .rcpt = R_P256,
              .kdf = EG_SKG_KDF_SHA256,
              .kek_bits = 256,
              .ski = true,
              .cek_bits = 256};
    uint8_t rkeyid[24] = {0xa0, 0x16, 0x04, 0x14}; /* rKeyId [0] { OCTET STRING ski } */
    answer a;
    size_t len = 0;
    uint8_t *der;

    run_case(&k);
    der = built(&k, &a, &len);
    CU_ASSERT_FATAL(der != NULL);
    CU_ASSERT_TRUE(CONTAINS(der, len, orig));
    check_kari_alg(der, len, 0x01, 0x2d);
    CU_ASSERT_EQUAL_FATAL(a.r.rid.ski_len, 20);
    memcpy(rkeyid + 4, a.r.rid.ski, 20);
    CU_ASSERT_TRUE(CONTAINS(der, len, rkeyid));
    OPENSSL_free(der);
    k.ski = false; /* issuerAndSerialNumber, and a 128-bit KEK */
    k.kek_bits = 128;
    run_case(&k);
    der = built(&k, &a, &len);
    CU_ASSERT_FATAL(der != NULL);
    check_kari_alg(der, len, 0x01, 0x05);
    OPENSSL_free(der);
}

static void test_kari_p384(void)
{
    kase k = {.kind = EG_SKG_KARI,
              .rcpt = R_P384,
              .kdf = EG_SKG_KDF_SHA384,
              .kek_bits = 256,
              .ski = true,
              .cek_bits = 256};
    answer a;
    size_t len = 0;
    uint8_t *der;

    run_case(&k);
    der = built(&k, &a, &len);
    CU_ASSERT_FATAL(der != NULL);
    check_kari_alg(der, len, 0x02, 0x2d); /* sha384kdf, id-aes256-wrap */
    OPENSSL_free(der);
    k.ski = false;
    run_case(&k);
}

/*
 * The KDF the client listed, not the one that goes with the curve: a P-384
 * recipient with sha256kdf and a P-256 one with sha384kdf name the scheme
 * that was used, and OpenSSL, which derives by the scheme named, opens both.
 */
static void test_kari_kdf_is_its_own_choice(void)
{
    kase k = {.kind = EG_SKG_KARI,
              .rcpt = R_P384,
              .kdf = EG_SKG_KDF_SHA256,
              .kek_bits = 256,
              .ski = true,
              .cek_bits = 256};
    answer a;
    size_t len = 0;
    uint8_t *der;

    run_case(&k);
    der = built(&k, &a, &len);
    CU_ASSERT_FATAL(der != NULL);
    check_kari_alg(der, len, 0x01, 0x2d); /* sha256kdf on P-384 */
    OPENSSL_free(der);
    k.rcpt = R_P256;
    k.kdf = EG_SKG_KDF_SHA384;
    k.kek_bits = 128;
    run_case(&k);
    der = built(&k, &a, &len);
    CU_ASSERT_FATAL(der != NULL);
    check_kari_alg(der, len, 0x02, 0x05); /* sha384kdf on P-256, id-aes128-wrap */
    OPENSSL_free(der);
}

static void test_aes128_cbc_content(void)
{
    static const uint8_t alg[] = {0x30, 0x1d, OID_AES(0x02), 0x04, 0x10}; /* { IV } */
    kase k = {.kind = EG_SKG_KTRI, .kt = EG_SKG_KT_OAEP_SHA1, .ski = true, .cek_bits = 128};
    answer a;
    size_t len = 0;
    uint8_t *der;

    run_case(&k);
    der = built(&k, &a, &len);
    CU_ASSERT_FATAL(der != NULL);
    CU_ASSERT_TRUE(CONTAINS(der, len, alg));
    OPENSSL_free(der);
    k.kind = EG_SKG_KEKRI;
    k.kek_bits = 256;
    run_case(&k);
}

static void test_shared_info_vectors(void)
{
    /* The brief and the design note wrote 30 1a here: 26 is not the length of the 21
       octets that follow (asn1parse: "too long"). OpenSSL's own KARI decryption, which
       builds the SharedInfo itself, agrees with 30 15 (the KARI tests). */
    static const uint8_t v256[] = {0x30, 0x15, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86,
                                   0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2d, 0xa2,
                                   0x06, 0x04, 0x04, 0x00, 0x00, 0x01, 0x00};
    static const uint8_t v128[] = {0x30, 0x15, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86,
                                   0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x05, 0xa2,
                                   0x06, 0x04, 0x04, 0x00, 0x00, 0x00, 0x80};
    uint8_t *der = NULL, *keep = (uint8_t *)"x";
    size_t len = 0;

    CU_ASSERT_EQUAL_FATAL(eg_skg_kari_shared_info(256, &der, &len), 0);
    CU_ASSERT_EQUAL(len, sizeof(v256));
    CU_ASSERT_TRUE(len == sizeof(v256) && memcmp(der, v256, len) == 0);
    OPENSSL_free(der);
    der = NULL;
    CU_ASSERT_EQUAL_FATAL(eg_skg_kari_shared_info(128, &der, &len), 0);
    CU_ASSERT_EQUAL(len, sizeof(v128));
    CU_ASSERT_TRUE(len == sizeof(v128) && memcmp(der, v128, len) == 0);
    OPENSSL_free(der);
    der = keep;
    len = 7;
    CU_ASSERT_EQUAL(eg_skg_kari_shared_info(192, &der, &len), -1);
    CU_ASSERT_PTR_EQUAL(der, keep);
    CU_ASSERT_EQUAL(len, 7);
}

/* One bad field at a time; *der and *len stay as they were. */
static void expect_refused(const eg_skg_envelope *env)
{
    uint8_t *der = (uint8_t *)"untouched";
    size_t len = 9;

    CU_ASSERT_EQUAL(eg_skg_envelope_der(env, &der, &len), -1);
    CU_ASSERT_STRING_EQUAL((const char *)der, "untouched");
    CU_ASSERT_EQUAL(len, 9);
}

static void test_refuses_bad_input(void)
{
    kase k = {.kind = EG_SKG_KARI,
              .rcpt = R_P256,
              .kdf = EG_SKG_KDF_SHA256,
              .kek_bits = 256,
              .ski = true,
              .cek_bits = 256};
    answer a;
    eg_skg_envelope env;
    uint8_t *der = NULL;
    size_t len = 0;

    CU_ASSERT_EQUAL_FATAL(make_answer(&k, C_P256, &a), 0);
    env = (eg_skg_envelope){&a.r, 256, a.pc.iv, a.pc.ct, a.pc.ct_len, EG_SKG_CONTENT_DATA};
    CU_ASSERT_EQUAL_FATAL(eg_skg_envelope_der(&env, &der, &len), 0); /* the baseline is good */
    OPENSSL_free(der);
    expect_refused(NULL);
    env.content = EG_SKG_CONTENT_PRIVATE_KEY_INFO; /* RFC 9939 number unconfirmed */
    expect_refused(&env);
    env.content = EG_SKG_CONTENT_DATA;
    env.ciphertext_len--;
    expect_refused(&env);
    env.ciphertext_len++;
    env.cek_bits = 192;
    expect_refused(&env);
    env.cek_bits = 256;
    env.iv = NULL;
    expect_refused(&env);
    env.iv = a.pc.iv;
    a.r.curve_nid = NID_secp384r1; /* a P-256 point named as P-384 */
    expect_refused(&env);
    a.r.curve_nid = NID_X9_62_prime256v1;
    a.r.kek_bits = 192;
    expect_refused(&env);
    a.r.kek_bits = 256;
    a.r.kdf = 0; /* no KDF chosen */
    expect_refused(&env);
    a.r.kdf = EG_SKG_KDF_SHA256;
    a.r.rid.ski = NULL; /* and no certificate either */
    expect_refused(&env);
    a.r.kind = EG_SKG_KEKRI; /* no kekid */
    expect_refused(&env);
}

/* ---- CSR protection attributes ---- */

static const uint8_t OID_DKID[] = {0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7,
                                   0x0d, 0x01, 0x09, 0x10, 0x02, 0x25};
static const uint8_t OID_AKID[] = {0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7,
                                   0x0d, 0x01, 0x09, 0x10, 0x02, 0x36};

static ASN1_OBJECT *obj_of(const uint8_t *der, size_t n)
{
    const unsigned char *p = der;

    return d2i_ASN1_OBJECT(NULL, &p, (long)n);
}

/* One attribute for a request: type, and values given as (ASN.1 type, bytes) pairs. */
typedef struct attr {
    ASN1_OBJECT *obj;
    int nvals;
    int type[2];
    const uint8_t *val[2];
    int len[2];
} attr;

/* A P-256 request carrying attrs, as DER (OPENSSL_malloc'd). */
static unsigned char *req_der(const attr *attrs, int n, int *len)
{
    X509_REQ *req = X509_REQ_new();
    EVP_PKEY *key = rkey[R_P256];
    unsigned char *der = NULL;
    int ok = req != NULL && X509_REQ_set_pubkey(req, key) == 1;

    for (int i = 0; ok && i < n; i++) {
        X509_ATTRIBUTE *at = X509_ATTRIBUTE_create_by_OBJ(NULL, attrs[i].obj, 0, NULL, -1);

        ok = at != NULL;
        for (int v = 0; ok && v < attrs[i].nvals; v++)
            ok = X509_ATTRIBUTE_set1_data(at, attrs[i].type[v], attrs[i].val[v], attrs[i].len[v]);
        ok = ok && X509_REQ_add1_attr(req, at) == 1;
        X509_ATTRIBUTE_free(at);
    }
    ok = ok && X509_REQ_sign(req, key, EVP_sha256()) > 0 && (*len = i2d_X509_REQ(req, &der)) > 0;
    X509_REQ_free(req);
    return ok ? der : NULL;
}

static eg_csr *csr_of(const unsigned char *der, int len)
{
    eg_csr *csr = NULL;

    return der != NULL && eg_csr_parse(der, (size_t)len, &csr) == 0 ? csr : NULL;
}

/* The same request parsed by the appliance's reader. */
static eg_csr *csr_with(const attr *attrs, int n)
{
    int len = 0;
    unsigned char *der = req_der(attrs, n, &len);
    eg_csr *csr = csr_of(der, len);

    OPENSSL_free(der);
    return csr;
}

static int read_with(const attr *attrs, int n, eg_skg_protect *out, char *why, size_t whylen)
{
    eg_csr *csr = csr_with(attrs, n);
    int rc;

    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    rc = eg_skg_protect_read(eg_csr_attributes(csr), out, why, whylen);
    eg_csr_free(csr);
    return rc;
}

static void test_protect_none(void)
{
    eg_skg_protect p;
    char why[160] = "stale";

    memset(&p, 0xa5, sizeof(p));
    CU_ASSERT_EQUAL_FATAL(read_with(NULL, 0, &p, why, sizeof(why)), 0);
    CU_ASSERT_PTR_NULL(p.decrypt_kid);
    CU_ASSERT_EQUAL(p.decrypt_kid_len, 0);
    CU_ASSERT_PTR_NULL(p.asym_kid);
    CU_ASSERT_EQUAL(p.asym_kid_len, 0);
    CU_ASSERT_FALSE(p.has_caps);
    CU_ASSERT_EQUAL(p.caps, 0);
    eg_skg_protect_clear(&p);
    eg_skg_protect_clear(NULL);
}

static void test_protect_identifiers(void)
{
    static const uint8_t kid[] = {0x01, 0xa2, 0xb3, 0xc4};
    uint8_t ski[64];
    attr a = {obj_of(OID_DKID, sizeof(OID_DKID)), 1, {V_ASN1_OCTET_STRING}, {kid}, {4}};
    eg_skg_protect p = {0};
    char why[160];

    memset(ski, 0x5c, sizeof(ski));
    CU_ASSERT_EQUAL(read_with(&a, 1, &p, why, sizeof(why)), 0);
    CU_ASSERT_EQUAL(p.decrypt_kid_len, sizeof(kid));
    CU_ASSERT_TRUE(p.decrypt_kid != NULL && memcmp(p.decrypt_kid, kid, sizeof(kid)) == 0);
    CU_ASSERT_PTR_NULL(p.asym_kid);
    CU_ASSERT_FALSE(p.has_caps);
    eg_skg_protect_clear(&p);
    ASN1_OBJECT_free(a.obj);
    a.obj = obj_of(OID_AKID, sizeof(OID_AKID));
    a.val[0] = ski;
    a.len[0] = 64; /* the longest accepted */
    CU_ASSERT_EQUAL(read_with(&a, 1, &p, why, sizeof(why)), 0);
    CU_ASSERT_EQUAL(p.asym_kid_len, 64);
    CU_ASSERT_TRUE(p.asym_kid != NULL && memcmp(p.asym_kid, ski, 64) == 0);
    CU_ASSERT_PTR_NULL(p.decrypt_kid);
    eg_skg_protect_clear(&p);
    CU_ASSERT_PTR_NULL(p.asym_kid);
    ASN1_OBJECT_free(a.obj);
}

/* SMIMECapabilities { OAEP defaults, OAEP sha256, rsaEncryption, aes256-wrap, 1.2.3.4 } */
static const uint8_t CAPS[] = {
    0x30, 0x6c,     0x30,          0x0d, OID_OAEP,   0x30, 0x00,       0x30, 0x38, OID_OAEP,
    0x30, 0x2b,     0xa0,          0x0d, 0x30,       0x0b, OID_SHA256, 0xa1, 0x1a, 0x30,
    0x18, OID_MGF1, 0x30,          0x0b, OID_SHA256, 0x30, 0x0d,       0x06, 0x09, 0x2a,
    0x86, 0x48,     0x86,          0xf7, 0x0d,       0x01, 0x01,       0x01, 0x05, 0x00,
    0x30, 0x0b,     OID_AES(0x2d), 0x30, 0x05,       0x06, 0x03,       0x2a, 0x03, 0x04};

/* SMIMECapabilities { OAEP with sha384 (not ours), ECDH sha384kdf, aes128-CBC } */
static const uint8_t CAPS2[] = {
    0x30, 0x51, 0x30, 0x38, OID_OAEP, 0x30, 0x2b, 0xa0, 0x0d,         0x30, 0x0b,
    0x06, 0x09, 0x60, 0x86, 0x48,     0x01, 0x65, 0x03, 0x04,         0x02, 0x02,
    0xa1, 0x1a, 0x30, 0x18, OID_MGF1, 0x30, 0x0b, 0x06, 0x09,         0x60, 0x86,
    0x48, 0x01, 0x65, 0x03, 0x04,     0x02, 0x02, 0x30, 0x08,         0x06, 0x06,
    0x2b, 0x81, 0x04, 0x01, 0x0b,     0x02, 0x30, 0x0b, OID_AES(0x02)};

static void test_protect_capabilities(void)
{
    static const uint8_t kid[] = {0x42};
    attr a[2] = {{OBJ_nid2obj(NID_SMIMECapabilities), 1, {V_ASN1_SEQUENCE}, {CAPS}, {sizeof(CAPS)}},
                 {obj_of(OID_DKID, sizeof(OID_DKID)), 1, {V_ASN1_OCTET_STRING}, {kid}, {1}}};
    eg_skg_protect p = {0};
    char why[160];

    CU_ASSERT_EQUAL(sizeof(CAPS), 0x6e);
    CU_ASSERT_EQUAL(read_with(a, 2, &p, why, sizeof(why)), 0);
    CU_ASSERT_TRUE(p.has_caps);
    CU_ASSERT_EQUAL(p.caps, EG_SKG_CAP_OAEP_SHA1 | EG_SKG_CAP_OAEP_SHA256 | EG_SKG_CAP_PKCS1 |
                                EG_SKG_CAP_AES256_WRAP);
    CU_ASSERT_EQUAL(p.decrypt_kid_len, 1);
    eg_skg_protect_clear(&p);
    a[0].val[0] = CAPS2;
    a[0].len[0] = sizeof(CAPS2);
    CU_ASSERT_EQUAL(sizeof(CAPS2), 0x53);
    CU_ASSERT_EQUAL(read_with(a, 1, &p, why, sizeof(why)), 0);
    CU_ASSERT_TRUE(p.has_caps);
    CU_ASSERT_EQUAL(p.caps, EG_SKG_CAP_ECDH_SHA384 | EG_SKG_CAP_AES128_CBC);
    eg_skg_protect_clear(&p);
    ASN1_OBJECT_free(a[1].obj);
}

/* -1, a reason, and *out as it was. */
static void expect_malformed(const attr *attrs, int n, const char *mentions)
{
    eg_skg_protect p;
    char why[160] = "";

    memset(&p, 0x5a, sizeof(p));
    CU_ASSERT_EQUAL(read_with(attrs, n, &p, why, sizeof(why)), -1);
    CU_ASSERT_NOT_EQUAL(why[0], '\0');
    CU_ASSERT_PTR_NOT_NULL(strstr(why, mentions));
    CU_ASSERT_EQUAL(p.caps, 0x5a5a5a5au);
}

static void test_protect_malformed(void)
{
    static const uint8_t kid[65] = {1, 2, 3};
    static const uint8_t not_caps[] = {0x30, 0x03, 0x02, 0x01, 0x05};
    ASN1_OBJECT *dk = obj_of(OID_DKID, sizeof(OID_DKID));
    ASN1_OBJECT *ak = obj_of(OID_AKID, sizeof(OID_AKID));
    ASN1_OBJECT *caps = OBJ_nid2obj(NID_SMIMECapabilities);
    attr a[2] = {{dk, 1, {V_ASN1_UTF8STRING}, {kid}, {3}}};

    expect_malformed(a, 1, "DecryptKeyIdentifier"); /* a UTF8String */
    a[0] = (attr){ak, 2, {V_ASN1_OCTET_STRING, V_ASN1_OCTET_STRING}, {kid, kid}, {3, 4}};
    expect_malformed(a, 1, "AsymmetricDecryptKeyIdentifier"); /* two values */
    a[0] = (attr){ak, 1, {V_ASN1_OCTET_STRING}, {kid}, {0}};
    expect_malformed(a, 1, "AsymmetricDecryptKeyIdentifier"); /* empty */
    a[0] = (attr){dk, 1, {V_ASN1_OCTET_STRING}, {kid}, {65}};
    expect_malformed(a, 1, "DecryptKeyIdentifier"); /* over 64 octets */
    a[0] = (attr){dk, 1, {V_ASN1_OCTET_STRING}, {kid}, {3}};
    a[1] = (attr){ak, 1, {V_ASN1_OCTET_STRING}, {kid}, {3}};
    expect_malformed(a, 2, "both"); /* both identifiers */
    a[0] = (attr){caps, 1, {V_ASN1_OCTET_STRING}, {kid}, {3}};
    expect_malformed(a, 1, "SMIMECapabilities"); /* not a SEQUENCE */
    a[0] = (attr){caps, 1, {V_ASN1_SEQUENCE}, {not_caps}, {sizeof(not_caps)}};
    expect_malformed(a, 1, "SMIMECapabilities"); /* SEQUENCE { INTEGER } */
    ASN1_OBJECT_free(dk);
    ASN1_OBJECT_free(ak);
}

/*
 * OpenSSL will not add an attribute type twice, so the second
 * DecryptKeyIdentifier goes in under a neighbouring OID (...16.2.38) that is
 * renamed in the DER; the reader does not check signatures.
 */
static void test_protect_twice(void)
{
    static const uint8_t kid[] = {7, 7};
    static const uint8_t next[] = {0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7,
                                   0x0d, 0x01, 0x09, 0x10, 0x02, 0x26};
    attr a[2] = {{obj_of(OID_DKID, sizeof(OID_DKID)), 1, {V_ASN1_OCTET_STRING}, {kid}, {2}},
                 {obj_of(next, sizeof(next)), 1, {V_ASN1_OCTET_STRING}, {kid}, {2}}};
    int len = 0, renamed = 0;
    unsigned char *der = req_der(a, 2, &len);
    eg_csr *csr;
    eg_skg_protect p = {0};
    char why[160] = "";

    CU_ASSERT_PTR_NOT_NULL_FATAL(der);
    for (int i = 0; i + (int)sizeof(next) <= len; i++) {
        if (memcmp(der + i, next, sizeof(next)) == 0) {
            der[i + sizeof(next) - 1] = 0x25;
            renamed++;
        }
    }
    CU_ASSERT_EQUAL(renamed, 1);
    csr = csr_of(der, len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    CU_ASSERT_EQUAL(eg_skg_protect_read(eg_csr_attributes(csr), &p, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "twice"));
    CU_ASSERT_PTR_NULL(p.decrypt_kid);
    eg_csr_free(csr);
    OPENSSL_free(der);
    ASN1_OBJECT_free(a[0].obj);
    ASN1_OBJECT_free(a[1].obj);
}

/*
 * The three attributes come from the network: every one-octet change and
 * every truncation of a request carrying all of them is either refused by
 * the CSR reader or read to 0 / -1 with a reason, never a crash or a read
 * out of bounds (the sanitizer build runs this too).
 */
static void test_protect_survives_mangled_requests(void)
{
    static const uint8_t kid[] = {0x0a, 0x1b, 0x2c, 0x3d};
    attr a[2] = {{OBJ_nid2obj(NID_SMIMECapabilities), 1, {V_ASN1_SEQUENCE}, {CAPS}, {sizeof(CAPS)}},
                 {obj_of(OID_DKID, sizeof(OID_DKID)), 1, {V_ASN1_OCTET_STRING}, {kid}, {4}}};
    int len = 0, parsed = 0, refused = 0;
    unsigned char *der = req_der(a, 2, &len), *copy;

    CU_ASSERT_PTR_NOT_NULL_FATAL(der);
    copy = OPENSSL_malloc((size_t)len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
    for (int i = 0; i < len; i++) {
        for (int m = 0; m < 3; m++) {
            eg_skg_protect p = {0};
            char why[160] = "";
            eg_csr *csr = NULL;
            int n = m == 2 ? i : len, rc;

            memcpy(copy, der, (size_t)len);
            if (m == 0)
                copy[i] ^= 0xff;
            else if (m == 1)
                copy[i] = (uint8_t)(copy[i] + 1);
            if (eg_csr_parse(copy, (size_t)n, &csr) != 0)
                continue;
            parsed++;
            rc = eg_skg_protect_read(eg_csr_attributes(csr), &p, why, sizeof(why));
            CU_ASSERT(rc == 0 || (rc == -1 && why[0] != '\0'));
            refused += rc != 0;
            eg_skg_protect_clear(&p);
            eg_csr_free(csr);
        }
    }
    /* The reader keeps the signed bytes as received, so most changes still parse. */
    CU_ASSERT(parsed > len);
    CU_ASSERT(refused > 0);
    OPENSSL_free(copy);
    OPENSSL_free(der);
    ASN1_OBJECT_free(a[1].obj);
}

static CU_TestInfo tests[] = {
    {"protect: mangled requests never crash the reader", test_protect_survives_mangled_requests},
    {"KTRI RSA-OAEP SHA-1, SKI and issuerAndSerialNumber", test_ktri_oaep_sha1},
    {"KTRI RSA-OAEP SHA-256, SKI and issuerAndSerialNumber", test_ktri_oaep_sha256},
    {"KTRI RSA PKCS#1 v1.5, SKI and issuerAndSerialNumber", test_ktri_pkcs1},
    {"KEKRI AES-128 and AES-256 key wrap", test_kekri},
    {"KARI P-256, SHA-256 KDF, rKeyId and issuerAndSerialNumber", test_kari_p256},
    {"KARI P-384, SHA-384 KDF, AES-256 wrap", test_kari_p384},
    {"KARI's KDF is its own choice, not the curve's", test_kari_kdf_is_its_own_choice},
    {"AES-128-CBC content", test_aes128_cbc_content},
    {"ECC-CMS-SharedInfo fixed vectors", test_shared_info_vectors},
    {"inconsistent envelope inputs are refused", test_refuses_bad_input},
    {"a CSR without protection attributes", test_protect_none},
    {"DecryptKeyIdentifier and AsymmetricDecryptKeyIdentifier", test_protect_identifiers},
    {"SMIMECapabilities entries", test_protect_capabilities},
    {"malformed protection attributes are refused", test_protect_malformed},
    {"an identifier given twice is refused", test_protect_twice},
    CU_TEST_INFO_NULL,
};

int main(void)
{
    return eg_cu_run("appliance/skg_cms", suite_init, suite_clean, tests);
}
