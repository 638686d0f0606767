/*
 * EnvelopedData written around the token's opaque output (RFC 5652 6, RFC 3565,
 * RFC 4055, RFC 5753). Each part is built inside out in a small growing buffer
 * and then given its tag and length: the answers are a few kilobytes at most,
 * and this keeps every structure's code next to its ASN.1.
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/obj_mac.h>
#include <openssl/x509.h>

#include "der.h"
#include "skg_cms.h"

/* Content octets of the object identifiers used here (tag and length added by put_oid()). */
static const uint8_t OID_ENVELOPED[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03};
static const uint8_t OID_DATA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01};
static const uint8_t OID_RSA[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01};
static const uint8_t OID_OAEP[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07};
static const uint8_t OID_MGF1[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08};
static const uint8_t OID_SHA256[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01};
static const uint8_t OID_AES128_CBC[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02};
static const uint8_t OID_AES256_CBC[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a};
static const uint8_t OID_AES128_WRAP[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x05};
static const uint8_t OID_AES256_WRAP[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2d};
static const uint8_t OID_EC_PUBLIC_KEY[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
static const uint8_t OID_ECDH_SHA256KDF[] = {0x2b, 0x81, 0x04, 0x01, 0x0b, 0x01};
static const uint8_t OID_ECDH_SHA384KDF[] = {0x2b, 0x81, 0x04, 0x01, 0x0b, 0x02};

static void put_oid(eg_der *b, const uint8_t *oid, size_t n)
{
    eg_der_tlv(b, EG_DER_OID, oid, n);
}

#define OID(b, o) put_oid((b), (o), sizeof(o))

/* AlgorithmIdentifier { oid } with absent parameters. */
static void alg_absent(eg_der *b, const uint8_t *oid, size_t n)
{
    size_t at = b->len;

    put_oid(b, oid, n);
    eg_der_wrap_from(b, at, EG_DER_SEQUENCE);
}

static const uint8_t *wrap_oid(unsigned kek_bits, size_t *n)
{
    *n = sizeof(OID_AES256_WRAP);
    return kek_bits == 128 ? OID_AES128_WRAP : kek_bits == 256 ? OID_AES256_WRAP : NULL;
}

/* issuerAndSerialNumber of cert, as its own DER. */
static void issuer_and_serial(eg_der *b, const X509 *cert)
{
    unsigned char *name = NULL, *serial = NULL;
    int nl = i2d_X509_NAME(X509_get_issuer_name(cert), &name);
    int sl = i2d_ASN1_INTEGER(X509_get0_serialNumber(cert), &serial);
    size_t at = b->len;

    if (nl <= 0 || sl <= 0) {
        b->bad = true;
    } else {
        eg_der_put(b, name, (size_t)nl);
        eg_der_put(b, serial, (size_t)sl);
        eg_der_wrap_from(b, at, EG_DER_SEQUENCE);
    }
    OPENSSL_free(name);
    OPENSSL_free(serial);
}

/*
 * The recipient's name: its SKI (KTRI: subjectKeyIdentifier [0] IMPLICIT
 * OCTET STRING; KARI: rKeyId [0] IMPLICIT SEQUENCE { OCTET STRING }), else
 * issuerAndSerialNumber.
 */
static void recipient_id(eg_der *b, const eg_skg_rid *rid, bool kari)
{
    size_t at = b->len;

    if (rid->ski == NULL) {
        issuer_and_serial(b, rid->cert);
    } else if (!kari) {
        eg_der_tlv(b, EG_DER_CTX0, rid->ski, rid->ski_len);
    } else {
        eg_der_tlv(b, EG_DER_OCTET_STRING, rid->ski, rid->ski_len);
        eg_der_wrap_from(b, at, EG_DER_CTX0_C);
    }
}

/*
 * keyEncryptionAlgorithm of a KTRI, in the encodings measured to decrypt with
 * OpenSSL 3.0: OAEP SHA-1 with all-default SEQUENCE {} (RFC 4055 4.1), OAEP
 * SHA-256 with explicit hash and MGF (hash parameters absent), rsaEncryption
 * with NULL (RFC 3370 4.2.1).
 */
static void ktri_alg(eg_der *b, eg_skg_kt kt)
{
    static const uint8_t null[] = {EG_DER_NULL, 0x00};
    size_t at = b->len, params, inner;

    switch (kt) {
    case EG_SKG_KT_PKCS1:
        OID(b, OID_RSA);
        eg_der_put(b, null, sizeof(null));
        break;
    case EG_SKG_KT_OAEP_SHA1:
        OID(b, OID_OAEP);
        eg_der_tlv(b, EG_DER_SEQUENCE, NULL, 0);
        break;
    case EG_SKG_KT_OAEP_SHA256:
        OID(b, OID_OAEP);
        params = b->len;
        inner = b->len;
        alg_absent(b, OID_SHA256, sizeof(OID_SHA256));
        eg_der_wrap_from(b, inner, EG_DER_CTX0_C); /* hashFunc [0] */
        inner = b->len;
        OID(b, OID_MGF1);
        alg_absent(b, OID_SHA256, sizeof(OID_SHA256));
        eg_der_wrap_from(b, inner, EG_DER_SEQUENCE);
        eg_der_wrap_from(b, inner, EG_DER_CTX1_C); /* maskGenFunc [1] */
        eg_der_wrap_from(b, params, EG_DER_SEQUENCE);
        break;
    default:
        b->bad = true;
        return;
    }
    eg_der_wrap_from(b, at, EG_DER_SEQUENCE);
}

static void ktri(eg_der *b, const eg_skg_recipient *r)
{
    uint8_t version = r->rid.ski != NULL ? 2 : 0; /* RFC 5652 6.2.1 */
    size_t at = b->len;

    eg_der_tlv(b, EG_DER_INTEGER, &version, 1);
    recipient_id(b, &r->rid, false);
    ktri_alg(b, r->kt);
    eg_der_tlv(b, EG_DER_OCTET_STRING, r->encrypted_key, r->encrypted_key_len);
    eg_der_wrap_from(b, at, EG_DER_SEQUENCE); /* ktri is the untagged choice */
}

static void kekri(eg_der *b, const eg_skg_recipient *r)
{
    static const uint8_t version = 4; /* RFC 5652 6.2.3 */
    size_t at = b->len, kekid, n;
    const uint8_t *wrap = wrap_oid(r->kek_bits, &n);

    eg_der_tlv(b, EG_DER_INTEGER, &version, 1);
    kekid = b->len;
    eg_der_tlv(b, EG_DER_OCTET_STRING, r->kekid, r->kekid_len);
    eg_der_wrap_from(b, kekid, EG_DER_SEQUENCE); /* kekid: keyIdentifier only, no date or other */
    alg_absent(b, wrap, n);
    eg_der_tlv(b, EG_DER_OCTET_STRING, r->encrypted_key, r->encrypted_key_len);
    eg_der_wrap_from(b, at, EG_DER_CTX2_C); /* kekri [2] */
}

/* originator [0] { originatorKey [1] { id-ecPublicKey (no params), BIT STRING point } } */
static void kari_originator(eg_der *b, const eg_skg_recipient *r)
{
    static const uint8_t unused_bits = 0;
    size_t at = b->len, bits;

    alg_absent(b, OID_EC_PUBLIC_KEY, sizeof(OID_EC_PUBLIC_KEY));
    bits = b->len;
    eg_der_put(b, &unused_bits, 1);
    eg_der_put(b, r->originator_point, r->originator_point_len);
    eg_der_wrap_from(b, bits, EG_DER_BIT_STRING);
    eg_der_wrap_from(b, at, EG_DER_CTX1_C);
    eg_der_wrap_from(b, at, EG_DER_CTX0_C);
}

static void kari(eg_der *b, const eg_skg_recipient *r)
{
    static const uint8_t version = 3; /* RFC 5652 6.2.2 */
    size_t at = b->len, alg, key, n;
    const uint8_t *wrap = wrap_oid(r->kek_bits, &n);

    eg_der_tlv(b, EG_DER_INTEGER, &version, 1);
    kari_originator(b, r);
    alg = b->len; /* no ukm: the ephemeral key is fresh for every answer */
    if (r->kdf == EG_SKG_KDF_SHA384)
        OID(b, OID_ECDH_SHA384KDF);
    else
        OID(b, OID_ECDH_SHA256KDF);
    alg_absent(b, wrap, n);
    eg_der_wrap_from(b, alg, EG_DER_SEQUENCE);
    key = b->len;
    recipient_id(b, &r->rid, true);
    eg_der_tlv(b, EG_DER_OCTET_STRING, r->encrypted_key, r->encrypted_key_len);
    eg_der_wrap_from(b, key, EG_DER_SEQUENCE);
    eg_der_wrap_from(b, key, EG_DER_SEQUENCE); /* recipientEncryptedKeys, one entry */
    eg_der_wrap_from(b, at, EG_DER_CTX1_C);    /* kari [1] */
}

/* The inputs a token-made answer must have; anything else is a caller bug. */
static bool rid_ok(const eg_skg_rid *rid)
{
    return rid->ski != NULL ? rid->ski_len > 0 : rid->cert != NULL;
}

static bool recipient_ok(const eg_skg_recipient *r)
{
    size_t point = r->curve_nid == NID_X9_62_prime256v1 ? 65
                   : r->curve_nid == NID_secp384r1      ? 97
                                                        : 0;

    if (r->encrypted_key == NULL || r->encrypted_key_len == 0)
        return false;
    switch (r->kind) {
    case EG_SKG_KTRI:
        return rid_ok(&r->rid) && (r->kt == EG_SKG_KT_OAEP_SHA1 || r->kt == EG_SKG_KT_OAEP_SHA256 ||
                                   r->kt == EG_SKG_KT_PKCS1);
    case EG_SKG_KEKRI:
        return r->kekid != NULL && r->kekid_len > 0 && (r->kek_bits == 128 || r->kek_bits == 256);
    case EG_SKG_KARI:
        return rid_ok(&r->rid) && (r->kek_bits == 128 || r->kek_bits == 256) && point > 0 &&
               (r->kdf == EG_SKG_KDF_SHA256 || r->kdf == EG_SKG_KDF_SHA384) &&
               r->originator_point != NULL && r->originator_point_len == point &&
               r->originator_point[0] == 0x04;
    default:
        return false;
    }
}

static bool envelope_ok(const eg_skg_envelope *env)
{
    /* RFC 9939's id-ct-privateKeyInfo: its number is not confirmed yet (skg_cms.h). */
    return env != NULL && env->recipient != NULL && recipient_ok(env->recipient) &&
           (env->cek_bits == 128 || env->cek_bits == 256) && env->iv != NULL &&
           env->ciphertext != NULL && env->ciphertext_len > 0 && env->ciphertext_len % 16 == 0 &&
           env->content == EG_SKG_CONTENT_DATA;
}

/* encryptedContentInfo { id-data, id-aesNNN-CBC { IV }, [0] IMPLICIT ciphertext } */
static void encrypted_content_info(eg_der *b, const eg_skg_envelope *env)
{
    size_t at = b->len, alg;

    OID(b, OID_DATA);
    alg = b->len;
    if (env->cek_bits == 128)
        OID(b, OID_AES128_CBC);
    else
        OID(b, OID_AES256_CBC);
    eg_der_tlv(b, EG_DER_OCTET_STRING, env->iv, 16); /* AES-IV, RFC 3565 2.1 */
    eg_der_wrap_from(b, alg, EG_DER_SEQUENCE);
    eg_der_tlv(b, EG_DER_CTX0, env->ciphertext, env->ciphertext_len);
    eg_der_wrap_from(b, at, EG_DER_SEQUENCE);
}

int eg_skg_envelope_der(const eg_skg_envelope *env, uint8_t **der, size_t *der_len)
{
    const eg_skg_recipient *r;
    eg_der b = {0}, ri = {0};
    uint8_t version;
    size_t content;
    int rc = -1;

    if (!envelope_ok(env))
        goto out;
    r = env->recipient;
    if (r->kind == EG_SKG_KTRI)
        ktri(&ri, r);
    else if (r->kind == EG_SKG_KEKRI)
        kekri(&ri, r);
    else
        kari(&ri, r);
    /* RFC 5652 6.1: 0 only when every RecipientInfo is version 0 (an iasn KTRI) */
    version = r->kind == EG_SKG_KTRI && r->rid.ski == NULL ? 0 : 2;
    OID(&b, OID_ENVELOPED);
    content = b.len;
    eg_der_tlv(&b, EG_DER_INTEGER, &version, 1);
    eg_der_wrap(&b, EG_DER_SET, &ri); /* recipientInfos; no originatorInfo before it */
    encrypted_content_info(&b, env);
    eg_der_wrap_from(&b, content, EG_DER_SEQUENCE);
    eg_der_wrap_from(&b, content, EG_DER_CTX0_C); /* content [0] EXPLICIT */
    eg_der_wrap_from(&b, 0, EG_DER_SEQUENCE);
    rc = eg_der_finish(&b, der, der_len);
out:
    eg_der_free(&ri);
    eg_der_free(&b);
    return rc;
}

int eg_skg_kari_shared_info(unsigned kek_bits, uint8_t **der, size_t *der_len)
{
    const uint8_t bits[4] = {(uint8_t)(kek_bits >> 24), (uint8_t)(kek_bits >> 16),
                             (uint8_t)(kek_bits >> 8), (uint8_t)kek_bits};
    size_t n, supp;
    const uint8_t *wrap = wrap_oid(kek_bits, &n);
    eg_der b = {0};
    int rc = -1;

    if (wrap == NULL)
        goto out;
    alg_absent(&b, wrap, n); /* keyInfo */
    supp = b.len;
    eg_der_tlv(&b, EG_DER_OCTET_STRING, bits, sizeof(bits));
    eg_der_wrap_from(&b, supp, EG_DER_CTX2_C); /* suppPubInfo [2] EXPLICIT */
    eg_der_wrap_from(&b, 0, EG_DER_SEQUENCE);
    rc = eg_der_finish(&b, der, der_len);
out:
    eg_der_free(&b);
    return rc;
}
