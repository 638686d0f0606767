/*
 * RFC 7030 4.4 serverkeygen, the CMS half: EnvelopedData (RFC 5652 6) assembled
 * around ciphertext and wrapped keys that the token made, and the protection
 * attributes a CSR carries (RFC 7030 4.4.1.1/4.4.1.2). Nothing here sees a
 * plaintext key: every input is C_WrapKey/C_DeriveKey output or public data.
 *
 * The envelope carries the PrivateKeyInfo itself as its encrypted content,
 * without RFC 7030 4.4.2's inner SignedData (docs/serverkeygen-design.md
 * section 3, option B), because that layer would need the plaintext key.
 */
#ifndef EG_SKG_CMS_H
#define EG_SKG_CMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/x509.h>

typedef enum eg_skg_kt { EG_SKG_KT_OAEP_SHA1, EG_SKG_KT_OAEP_SHA256, EG_SKG_KT_PKCS1 } eg_skg_kt;
typedef enum eg_skg_rkind { EG_SKG_KTRI, EG_SKG_KEKRI, EG_SKG_KARI } eg_skg_rkind;
/* KARI's X9.63 KDF; 0 is none, so that a caller that forgets to choose is refused. */
typedef enum eg_skg_kdf {
    EG_SKG_KDF_SHA256 = 1, /* dhSinglePass-stdDH-sha256kdf-scheme, CKD_SHA256_KDF */
    EG_SKG_KDF_SHA384      /* dhSinglePass-stdDH-sha384kdf-scheme, CKD_SHA384_KDF */
} eg_skg_kdf;

/*
 * How a KTRI or KARI recipient is named: [0] subjectKeyIdentifier (KARI:
 * rKeyId) when ski != NULL, else issuerAndSerialNumber of cert.
 */
typedef struct eg_skg_rid {
    const uint8_t *ski;
    size_t ski_len;
    const X509 *cert;
} eg_skg_rid;

typedef struct eg_skg_recipient {
    eg_skg_rkind kind;
    eg_skg_rid rid;       /* KTRI, KARI */
    eg_skg_kt kt;         /* KTRI: the key-transport algorithm used */
    const uint8_t *kekid; /* KEKRI: kekid.keyIdentifier (the DecryptKeyIdentifier) */
    size_t kekid_len;
    unsigned kek_bits; /* KEKRI and KARI: 128 or 256, the AES key-wrap KEK size
                          (id-aes128-wrap / id-aes256-wrap) */
    int curve_nid;     /* KARI: NID_X9_62_prime256v1 or NID_secp384r1, for the point's size */
    eg_skg_kdf kdf;    /* KARI: the key-agreement scheme, whatever the curve (RFC 5753 7.1.4
                          allows either KDF with either curve) */
    const uint8_t *originator_point; /* KARI: the ephemeral public point, uncompressed
                                        (04||X||Y), i.e. CKA_EC_POINT without its
                                        OCTET STRING wrapper */
    size_t originator_point_len;
    const uint8_t *encrypted_key; /* the wrapped CEK (C_WrapKey output) */
    size_t encrypted_key_len;
} eg_skg_recipient;

typedef enum eg_skg_content { EG_SKG_CONTENT_DATA, EG_SKG_CONTENT_PRIVATE_KEY_INFO } eg_skg_content;

typedef struct eg_skg_envelope {
    const eg_skg_recipient *recipient; /* one recipient */
    unsigned cek_bits;                 /* 128 or 256: id-aes128-CBC or id-aes256-CBC */
    const uint8_t *iv;                 /* 16 octets */
    const uint8_t *ciphertext;         /* AES-CBC with RFC 5652 6.3 padding over the
                                          PrivateKeyInfo, i.e. C_WrapKey(CKM_AES_CBC_PAD)
                                          output: a non-zero multiple of 16 octets */
    size_t ciphertext_len;
    eg_skg_content content; /* encryptedContentInfo.contentType: id-data (default).
                               EG_SKG_CONTENT_PRIVATE_KEY_INFO (RFC 9939's
                               id-ct-privateKeyInfo) is refused with -1 until its
                               assigned number is confirmed from the RFC text */
} eg_skg_envelope;

/*
 * ContentInfo{ id-envelopedData, EnvelopedData } DER in OPENSSL_malloc'd *der.
 * Version per RFC 5652 6.1 (0 only for an issuerAndSerialNumber KTRI, else 2).
 * 0, or -1 when an input is missing or inconsistent (*der untouched).
 */
int eg_skg_envelope_der(const eg_skg_envelope *env, uint8_t **der, size_t *der_len);

/*
 * ECC-CMS-SharedInfo (RFC 5753 7.2) for KARI's X9.63 KDF: keyInfo
 * id-aesNNN-wrap (absent params), no entityUInfo, suppPubInfo = kek_bits as 4
 * octets big-endian. This is the pSharedData of CKM_ECDH1_DERIVE.
 * OPENSSL_malloc'd. 0 or -1.
 */
int eg_skg_kari_shared_info(unsigned kek_bits, uint8_t **der, size_t *der_len);

/* SMIMECapabilities entries we recognise (bits). */
enum {
    EG_SKG_CAP_OAEP_SHA1 = 1u << 0,   /* id-RSAES-OAEP, params absent or SEQUENCE{} (defaults) */
    EG_SKG_CAP_OAEP_SHA256 = 1u << 1, /* id-RSAES-OAEP with sha256 / mgf1(sha256) */
    EG_SKG_CAP_PKCS1 = 1u << 2,       /* rsaEncryption */
    EG_SKG_CAP_AES128_WRAP = 1u << 3,
    EG_SKG_CAP_AES256_WRAP = 1u << 4,
    EG_SKG_CAP_AES128_CBC = 1u << 5,
    EG_SKG_CAP_AES256_CBC = 1u << 6,
    EG_SKG_CAP_ECDH_SHA256 = 1u << 7, /* dhSinglePass-stdDH-sha256kdf-scheme */
    EG_SKG_CAP_ECDH_SHA384 = 1u << 8, /* dhSinglePass-stdDH-sha384kdf-scheme */
};

/* What a serverkeygen CSR asks for about protecting the key it will receive. */
typedef struct eg_skg_protect {
    uint8_t *decrypt_kid; /* DecryptKeyIdentifier (id-aa-decryptKeyID
                             1.2.840.113549.1.9.16.2.37), OCTET STRING value */
    size_t decrypt_kid_len;
    uint8_t *asym_kid; /* AsymmetricDecryptKeyIdentifier (1.2.840.113549.1.9.16.2.54),
                          OCTET STRING value */
    size_t asym_kid_len;
    bool has_caps; /* an SMIMECapabilities attribute (1.2.840.113549.1.9.15) was present */
    unsigned caps; /* EG_SKG_CAP_* it lists (unknown entries ignored) */
} eg_skg_protect;

/*
 * Reads the three attributes from a CSR's attribute set (as eg_csr_attributes()
 * gives it, see appliance/csr.h) into *out, which eg_skg_protect_clear frees.
 * 0 (nothing present is fine: all empty); -1 with a reason for the client in
 * why (*out untouched) when an attribute is malformed (given twice, not exactly
 * one value, wrong ASN.1 type, empty or over 64-octet identifier, trailing
 * data), or when both identifiers are present.
 */
int eg_skg_protect_read(const STACK_OF(X509_ATTRIBUTE) * attrs, eg_skg_protect *out, char *why,
                        size_t whylen);
void eg_skg_protect_clear(eg_skg_protect *p);

#endif
