/*
 * The protection a serverkeygen CSR asks for (RFC 7030 4.4.1.1/4.4.1.2): a
 * DecryptKeyIdentifier (RFC 4108 2.2.5) or an AsymmetricDecryptKeyIdentifier
 * (RFC 7030 4.4.1.2), and the SMIMECapabilities (RFC 8551 2.5.2) the server
 * picks its algorithms from. The reasons given go back to the client in a 400.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/objects.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "skg_cms.h"

static const uint8_t OID_DECRYPT_KID[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d,
                                          0x01, 0x09, 0x10, 0x02, 0x25}; /* .16.2.37 */
static const uint8_t OID_ASYM_KID[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d,
                                       0x01, 0x09, 0x10, 0x02, 0x36}; /* .16.2.54 */
static const uint8_t OID_SMIME_CAPS[] = {0x2a, 0x86, 0x48, 0x86, 0xf7,
                                         0x0d, 0x01, 0x09, 0x0f}; /* .9.15 */

/* Key identifiers longer than this are refused: SKIs are 20 or 32 octets. */
#define KID_MAX 64

static void say(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;

    if (why == NULL || whylen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

static bool is_oid(const ASN1_OBJECT *obj, const uint8_t *oid, size_t n)
{
    return (size_t)OBJ_length(obj) == n && memcmp(OBJ_get0_data(obj), oid, n) == 0;
}

/*
 * The single value of the attribute type oid in *val (NULL when the type is
 * absent). -1 when the type is there twice or has other than one value.
 */
static int single_value(const STACK_OF(X509_ATTRIBUTE) * attrs, const uint8_t *oid, size_t n,
                        const char *name, const ASN1_TYPE **val, char *why, size_t whylen)
{
    X509_ATTRIBUTE *a, *found = NULL;
    int i;

    for (i = 0; i < sk_X509_ATTRIBUTE_num(attrs); i++) {
        a = sk_X509_ATTRIBUTE_value(attrs, i);
        if (!is_oid(X509_ATTRIBUTE_get0_object(a), oid, n))
            continue;
        if (found != NULL) {
            say(why, whylen, "%s attribute is given twice", name);
            return -1;
        }
        found = a;
    }
    if (found != NULL && X509_ATTRIBUTE_count(found) != 1) {
        say(why, whylen, "%s attribute must have exactly one value, it has %d", name,
            X509_ATTRIBUTE_count(found));
        return -1;
    }
    *val = found != NULL ? X509_ATTRIBUTE_get0_type(found, 0) : NULL;
    return 0;
}

/* A key identifier attribute: an OCTET STRING of 1 to KID_MAX octets, copied. */
static int read_kid(const ASN1_TYPE *t, const char *name, uint8_t **kid, size_t *len, char *why,
                    size_t whylen)
{
    const ASN1_OCTET_STRING *s;

    if (t == NULL || t->type != V_ASN1_OCTET_STRING) {
        say(why, whylen, "%s is not an OCTET STRING", name);
        return -1;
    }
    s = t->value.octet_string;
    if (s->length <= 0 || s->length > KID_MAX) {
        say(why, whylen, "%s must be 1 to %d octets long, it has %d", name, KID_MAX, s->length);
        return -1;
    }
    if ((*kid = OPENSSL_memdup(s->data, (size_t)s->length)) == NULL) {
        say(why, whylen, "out of memory");
        return -1;
    }
    *len = (size_t)s->length;
    return 0;
}

/* The digest an AlgorithmIdentifier names, with NULL or absent parameters; NID_undef else. */
static int digest_nid(const X509_ALGOR *a)
{
    const ASN1_OBJECT *obj;
    int ptype;

    X509_ALGOR_get0(&obj, &ptype, NULL, a);
    return ptype == V_ASN1_UNDEF || ptype == V_ASN1_NULL ? OBJ_obj2nid(obj) : NID_undef;
}

/* The hash inside maskGenFunc: only MGF1 is known (RFC 4055 4.1); NID_undef else. */
static int mgf1_nid(const X509_ALGOR *mgf)
{
    const ASN1_OBJECT *obj;
    const ASN1_STRING *seq;
    const void *pval;
    const unsigned char *p;
    X509_ALGOR *hash;
    int ptype, nid = NID_undef;

    X509_ALGOR_get0(&obj, &ptype, &pval, mgf);
    if (OBJ_obj2nid(obj) != NID_mgf1 || ptype != V_ASN1_SEQUENCE)
        return NID_undef;
    seq = pval;
    p = seq->data;
    hash = d2i_X509_ALGOR(NULL, &p, seq->length);
    if (hash != NULL && p == seq->data + seq->length)
        nid = digest_nid(hash);
    X509_ALGOR_free(hash);
    return nid;
}

/* id-RSAES-OAEP: SHA-1 (defaults) or SHA-256 for both hash and MGF1; 0 for anything else. */
static unsigned oaep_bit(int ptype, const void *pval)
{
    const ASN1_STRING *seq = pval;
    const unsigned char *p;
    RSA_OAEP_PARAMS *op;
    int hash, mgf;
    unsigned bit = 0;

    if (ptype == V_ASN1_UNDEF)
        return EG_SKG_CAP_OAEP_SHA1;
    if (ptype != V_ASN1_SEQUENCE)
        return 0;
    p = seq->data;
    op = d2i_RSA_OAEP_PARAMS(NULL, &p, seq->length);
    if (op == NULL || p != seq->data + seq->length || op->pSourceFunc != NULL)
        goto out;
    hash = op->hashFunc != NULL ? digest_nid(op->hashFunc) : NID_sha1;
    mgf = op->maskGenFunc != NULL ? mgf1_nid(op->maskGenFunc) : NID_sha1;
    if (hash == NID_sha1 && mgf == NID_sha1)
        bit = EG_SKG_CAP_OAEP_SHA1;
    else if (hash == NID_sha256 && mgf == NID_sha256)
        bit = EG_SKG_CAP_OAEP_SHA256;
out:
    RSA_OAEP_PARAMS_free(op);
    return bit;
}

static unsigned cap_bit(const X509_ALGOR *a)
{
    const ASN1_OBJECT *obj;
    const void *pval;
    int ptype;

    X509_ALGOR_get0(&obj, &ptype, &pval, a);
    switch (OBJ_obj2nid(obj)) {
    case NID_rsaEncryption:
        return EG_SKG_CAP_PKCS1;
    case NID_rsaesOaep:
        return oaep_bit(ptype, pval);
    case NID_id_aes128_wrap:
        return EG_SKG_CAP_AES128_WRAP;
    case NID_id_aes256_wrap:
        return EG_SKG_CAP_AES256_WRAP;
    case NID_aes_128_cbc:
        return EG_SKG_CAP_AES128_CBC;
    case NID_aes_256_cbc:
        return EG_SKG_CAP_AES256_CBC;
    case NID_dhSinglePass_stdDH_sha256kdf_scheme:
        return EG_SKG_CAP_ECDH_SHA256;
    case NID_dhSinglePass_stdDH_sha384kdf_scheme:
        return EG_SKG_CAP_ECDH_SHA384;
    default:
        return 0; /* unknown capabilities are the client's wishes, not errors */
    }
}

/* SMIMECapabilities ::= SEQUENCE OF SEQUENCE { OID, ANY OPTIONAL }: an X509_ALGORS. */
static int read_caps(const ASN1_TYPE *t, unsigned *caps, char *why, size_t whylen)
{
    const unsigned char *p;
    X509_ALGORS *algs = NULL;
    unsigned bits = 0;
    int i, rc = -1;

    if (t == NULL || t->type != V_ASN1_SEQUENCE)
        goto out;
    p = t->value.sequence->data;
    algs = d2i_X509_ALGORS(NULL, &p, t->value.sequence->length);
    if (algs == NULL || p != t->value.sequence->data + t->value.sequence->length)
        goto out;
    for (i = 0; i < sk_X509_ALGOR_num(algs); i++)
        bits |= cap_bit(sk_X509_ALGOR_value(algs, i));
    *caps = bits;
    rc = 0;
out:
    if (rc != 0)
        say(why, whylen, "SMIMECapabilities is not a SEQUENCE OF SMIMECapability");
    sk_X509_ALGOR_pop_free(algs, X509_ALGOR_free);
    return rc;
}

int eg_skg_protect_read(const STACK_OF(X509_ATTRIBUTE) * attrs, eg_skg_protect *out, char *why,
                        size_t whylen)
{
    eg_skg_protect p = {0};
    const ASN1_TYPE *dk, *ak, *caps;
    int rc = -1;

    say(why, whylen, "%s", "");
    if (single_value(attrs, OID_DECRYPT_KID, sizeof(OID_DECRYPT_KID), "DecryptKeyIdentifier", &dk,
                     why, whylen) != 0 ||
        single_value(attrs, OID_ASYM_KID, sizeof(OID_ASYM_KID), "AsymmetricDecryptKeyIdentifier",
                     &ak, why, whylen) != 0 ||
        single_value(attrs, OID_SMIME_CAPS, sizeof(OID_SMIME_CAPS), "SMIMECapabilities", &caps, why,
                     whylen) != 0)
        goto out;
    if (dk != NULL && ak != NULL) {
        say(why, whylen,
            "DecryptKeyIdentifier and AsymmetricDecryptKeyIdentifier are both "
            "present; a request names one key to protect the answer with");
        goto out;
    }
    if (dk != NULL &&
        read_kid(dk, "DecryptKeyIdentifier", &p.decrypt_kid, &p.decrypt_kid_len, why, whylen) != 0)
        goto out;
    if (ak != NULL && read_kid(ak, "AsymmetricDecryptKeyIdentifier", &p.asym_kid, &p.asym_kid_len,
                               why, whylen) != 0)
        goto out;
    if (caps != NULL && read_caps(caps, &p.caps, why, whylen) != 0)
        goto out;
    p.has_caps = caps != NULL;
    *out = p;
    memset(&p, 0, sizeof(p));
    rc = 0;
out:
    eg_skg_protect_clear(&p);
    return rc;
}

void eg_skg_protect_clear(eg_skg_protect *p)
{
    if (p == NULL)
        return;
    OPENSSL_free(p->decrypt_kid);
    OPENSSL_free(p->asym_kid);
    memset(p, 0, sizeof(*p));
}
