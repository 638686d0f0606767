/* PKCS#10 requests read without OpenSSL 3.0's per-key decoder chain; see csr.h. */
#include "csr.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

/* RFC 2986 4, with the SubjectPublicKeyInfo left as its two fields. */
typedef struct {
    X509_ALGOR *algor;
    ASN1_BIT_STRING *key;
} EG_SPKI;

typedef struct {
    ASN1_ENCODING enc; /* the signed bytes, as received */
    ASN1_INTEGER *version;
    X509_NAME *subject;
    EG_SPKI *spki;
    STACK_OF(X509_ATTRIBUTE) * attributes;
} EG_CRI;

typedef struct {
    EG_CRI *info;
    X509_ALGOR *sig_alg;
    ASN1_BIT_STRING *signature;
} EG_REQ;

/* RFC 8017 A.1.1 */
typedef struct {
    ASN1_INTEGER *n;
    ASN1_INTEGER *e;
} EG_RSAPUB;

ASN1_SEQUENCE(EG_SPKI) =
    {
        ASN1_SIMPLE(EG_SPKI, algor, X509_ALGOR),
        ASN1_SIMPLE(EG_SPKI, key, ASN1_BIT_STRING),
} static_ASN1_SEQUENCE_END(EG_SPKI)

    /* Attributes are optional as in OpenSSL's own X509_REQ: some old clients leave them out. */
    ASN1_SEQUENCE_enc(EG_CRI, enc, NULL) =
        {
            ASN1_SIMPLE(EG_CRI, version, ASN1_INTEGER),
            ASN1_SIMPLE(EG_CRI, subject, X509_NAME),
            ASN1_SIMPLE(EG_CRI, spki, EG_SPKI),
            ASN1_IMP_SET_OF_OPT(EG_CRI, attributes, X509_ATTRIBUTE, 0),
} static_ASN1_SEQUENCE_END_ref(EG_CRI, EG_CRI)

            ASN1_SEQUENCE(EG_REQ) =
                {
                    ASN1_SIMPLE(EG_REQ, info, EG_CRI),
                    ASN1_SIMPLE(EG_REQ, sig_alg, X509_ALGOR),
                    ASN1_SIMPLE(EG_REQ, signature, ASN1_BIT_STRING),
} static_ASN1_SEQUENCE_END(EG_REQ)

                    ASN1_SEQUENCE(EG_RSAPUB) =
                        {
                            ASN1_SIMPLE(EG_RSAPUB, n, ASN1_INTEGER),
                            ASN1_SIMPLE(EG_RSAPUB, e, ASN1_INTEGER),
} static_ASN1_SEQUENCE_END(EG_RSAPUB)

                            struct eg_csr {
    EG_REQ *req;
    STACK_OF(X509_EXTENSION) * exts;
    EVP_PKEY *pkey;
    int key_type;
};

static EVP_PKEY *from_params(const char *type, const OSSL_PARAM *params)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;

    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, (OSSL_PARAM *)params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

/*
 * Keys with only the group, for the curves profiles allow: a request's key is
 * a copy of one with its point set, 4 times cheaper than building the group
 * from its name each time (EVP_PKEY_fromdata). Made once, then only read.
 */
static const int template_nids[] = {NID_X9_62_prime256v1, NID_secp384r1, NID_secp521r1};
static EVP_PKEY *templates[sizeof(template_nids) / sizeof(template_nids[0])];
static pthread_once_t templates_once = PTHREAD_ONCE_INIT;

static void templates_make(void)
{
    for (size_t i = 0; i < sizeof(templates) / sizeof(templates[0]); i++) {
        OSSL_PARAM params[2] = {
            OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
                                             (char *)OBJ_nid2sn(template_nids[i]), 0),
            OSSL_PARAM_construct_end(),
        };
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);

        if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
            EVP_PKEY_fromdata(ctx, &templates[i], EVP_PKEY_KEY_PARAMETERS, params) != 1)
            templates[i] = NULL; /* that curve takes the slower path */
        EVP_PKEY_CTX_free(ctx);
    }
    ERR_clear_error();
}

/*
 * An EC point as RFC 5480 2.2 allows it: compressed (02, 03) or uncompressed (04). OpenSSL also
 * takes the point at infinity (a lone 00), for which a CSR's signature is made without any
 * private key, and the hybrid forms (06, 07), which RFC 5480 says to refuse.
 */
static bool ec_point_form(const ASN1_BIT_STRING *bits)
{
    return bits->length > 1 &&
           (bits->data[0] == 0x02 || bits->data[0] == 0x03 || bits->data[0] == 0x04);
}

/* id-ecPublicKey on a named curve; explicit curve parameters are not accepted. */
static EVP_PKEY *ec_key(int ptype, const void *pval, const ASN1_BIT_STRING *bits)
{
    const char *curve;
    OSSL_PARAM params[3];
    EVP_PKEY *pkey;
    int nid;

    if (ptype != V_ASN1_OBJECT || (curve = OBJ_nid2sn(nid = OBJ_obj2nid(pval))) == NULL ||
        !ec_point_form(bits))
        return NULL;
    pthread_once(&templates_once, templates_make);
    for (size_t i = 0; i < sizeof(templates) / sizeof(templates[0]); i++) {
        if (template_nids[i] != nid || templates[i] == NULL)
            continue;
        /* The point is checked to be on the curve as it is set (ec_point_form took infinity
           and the hybrid forms out first). */
        if ((pkey = EVP_PKEY_dup(templates[i])) != NULL &&
            EVP_PKEY_set1_encoded_public_key(pkey, bits->data, (size_t)bits->length) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        return pkey;
    }
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)curve, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, bits->data,
                                                  (size_t)bits->length);
    params[2] = OSSL_PARAM_construct_end();
    return from_params("EC", params);
}

static EVP_PKEY *rsa_key(const ASN1_BIT_STRING *bits)
{
    const unsigned char *p = bits->data;
    EG_RSAPUB *pub = (EG_RSAPUB *)ASN1_item_d2i(NULL, &p, bits->length, ASN1_ITEM_rptr(EG_RSAPUB));
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY *pkey = NULL;

    if (pub == NULL || p != bits->data + bits->length)
        goto out;
    n = ASN1_INTEGER_to_BN(pub->n, NULL);
    e = ASN1_INTEGER_to_BN(pub->e, NULL);
    if (n == NULL || e == NULL || BN_is_negative(n) || BN_is_negative(e) || BN_is_zero(n))
        goto out;
    if ((bld = OSSL_PARAM_BLD_new()) == NULL ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1 ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL)
        goto out;
    pkey = from_params("RSA", params);
out:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    ASN1_item_free((ASN1_VALUE *)pub, ASN1_ITEM_rptr(EG_RSAPUB));
    return pkey;
}

/*
 * Whether an Ed25519 public key is a point of small order: with one, signatures verify that
 * nobody's private key made (the identity verifies a forged signature for any message), so it
 * proves no possession. These are the y-coordinates (little-endian, the sign bit of x left out)
 * of the eight points P of edwards25519 with 8P = O: the identity (y = 1), the point of order 2
 * (y = -1), the two of order 4 (y = 0) and the four of order 8; and the encodings y + p of
 * y = 0 and y = 1, which decoders that do not insist on canonical encodings take for them. The
 * order-8 values were worked out from the curve's equation (a point of the curve times the
 * prime order L, until one of order 8 came out, and its multiples).
 */
static bool ed25519_small_order(const ASN1_BIT_STRING *bits)
{
    static const unsigned char y[][32] = {
        {0x00}, /* y = 0: order 4 */
        {0x01}, /* y = 1: the identity */
        {0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4,
         0x89, 0xf2, 0xef, 0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6,
         0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},
        {0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b,
         0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39,
         0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a},
        /* y = p - 1 (order 2), y = p (0) and y = p + 1 (1) */
        {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
        {0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
        {0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
    };

    if (bits->length != 32)
        return false; /* not a key at all: refused by length */
    for (size_t i = 0; i < sizeof(y) / sizeof(y[0]); i++)
        if (memcmp(bits->data, y[i], 31) == 0 && (bits->data[31] & 0x7f) == y[i][31])
            return true;
    return false;
}

/* The key from the SubjectPublicKeyInfo's fields; NULL for other algorithms or bad fields. */
static EVP_PKEY *make_key(const EG_SPKI *spki, int type)
{
    const ASN1_OBJECT *obj;
    const void *pval = NULL; /* X509_ALGOR_get0 leaves it as it is when there are no parameters */
    int ptype;

    X509_ALGOR_get0(&obj, &ptype, &pval, spki->algor);
    if ((spki->key->flags & 0x07) != 0) /* unused bits in a key's BIT STRING */
        return NULL;
    switch (type) {
    case EVP_PKEY_EC:
        return ec_key(ptype, pval, spki->key);
    case EVP_PKEY_RSA:
        return ptype == V_ASN1_NULL ? rsa_key(spki->key) : NULL;
    case EVP_PKEY_ED25519:
        return ptype == V_ASN1_UNDEF && !ed25519_small_order(spki->key)
                   ? EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, spki->key->data,
                                                    (size_t)spki->key->length)
                   : NULL;
    default:
        return NULL;
    }
}

/*
 * The extensionRequest attribute (or Microsoft's older one), as OpenSSL's
 * X509_REQ_get_extensions reads it. 0 with *out NULL when there is none; -1
 * when it is there and cannot be parsed.
 */
static int read_extensions(const STACK_OF(X509_ATTRIBUTE) * attrs, STACK_OF(X509_EXTENSION) * *out)
{
    static const int nids[] = {NID_ext_req, NID_ms_ext_req};
    const ASN1_TYPE *t;
    const unsigned char *p;
    size_t i;
    int idx = -1;

    for (i = 0; i < sizeof(nids) / sizeof(nids[0]) && idx < 0; i++)
        idx = X509at_get_attr_by_NID(attrs, nids[i], -1);
    *out = NULL;
    if (idx < 0)
        return 0;
    t = X509_ATTRIBUTE_get0_type(X509at_get_attr(attrs, idx), 0);
    if (t == NULL || t->type != V_ASN1_SEQUENCE)
        return -1;
    p = t->value.sequence->data;
    *out = (STACK_OF(X509_EXTENSION) *)ASN1_item_d2i(NULL, &p, t->value.sequence->length,
                                                     ASN1_ITEM_rptr(X509_EXTENSIONS));
    return *out != NULL ? 0 : -1;
}

int eg_csr_parse(const unsigned char *der, size_t len, eg_csr **out)
{
    const unsigned char *p = der;
    eg_csr *csr = OPENSSL_zalloc(sizeof(*csr));
    int rc = -1;

    if (csr == NULL || der == NULL || len == 0 || len > LONG_MAX)
        goto out;
    csr->req = (EG_REQ *)ASN1_item_d2i(NULL, &p, (long)len, ASN1_ITEM_rptr(EG_REQ));
    if (csr->req == NULL || p != der + len || ASN1_INTEGER_get(csr->req->info->version) != 0)
        goto out;
    if (read_extensions(csr->req->info->attributes, &csr->exts) != 0)
        goto out;
    csr->key_type = OBJ_obj2nid(csr->req->info->spki->algor->algorithm);
    csr->pkey = make_key(csr->req->info->spki, csr->key_type);
    *out = csr;
    csr = NULL;
    rc = 0;
out:
    ERR_clear_error();
    eg_csr_free(csr);
    return rc;
}

void eg_csr_free(eg_csr *csr)
{
    if (csr == NULL)
        return;
    EVP_PKEY_free(csr->pkey);
    sk_X509_EXTENSION_pop_free(csr->exts, X509_EXTENSION_free);
    ASN1_item_free((ASN1_VALUE *)csr->req, ASN1_ITEM_rptr(EG_REQ));
    OPENSSL_free(csr);
}

int eg_csr_key_type(const eg_csr *csr)
{
    return csr->key_type;
}

EVP_PKEY *eg_csr_pubkey(const eg_csr *csr)
{
    return csr->pkey;
}

int eg_csr_verify(const eg_csr *csr)
{
    int ok;

    if (csr->pkey == NULL)
        return 0;
    /* EG_CRI keeps its encoding, so this verifies the bytes the client signed. */
    ok = ASN1_item_verify_ex(ASN1_ITEM_rptr(EG_CRI), csr->req->sig_alg, csr->req->signature,
                             csr->req->info, NULL, csr->pkey, NULL, NULL) == 1;
    ERR_clear_error();
    return ok;
}

int eg_csr_signature_digest(const eg_csr *csr)
{
    const X509_ALGOR *alg = csr->req->sig_alg;
    int sig = OBJ_obj2nid(alg->algorithm), md = NID_undef, pk = NID_undef;

    if (!OBJ_find_sigid_algs(sig, &md, &pk))
        return -1;
    if (sig == NID_rsassaPss) {
        /* RFC 4055 3.1: the hash is a parameter, SHA-1 when it is absent */
        const ASN1_TYPE *param = alg->parameter;
        RSA_PSS_PARAMS *pss = param != NULL && param->type == V_ASN1_SEQUENCE
                                  ? ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(RSA_PSS_PARAMS), param)
                                  : NULL;

        if (pss == NULL)
            return -1;
        md = pss->hashAlgorithm != NULL ? OBJ_obj2nid(pss->hashAlgorithm->algorithm) : NID_sha1;
        RSA_PSS_PARAMS_free(pss);
        return md != NID_undef ? md : -1;
    }
    return md;
}

const X509_NAME *eg_csr_subject(const eg_csr *csr)
{
    return csr->req->info->subject;
}

const STACK_OF(X509_EXTENSION) * eg_csr_extensions(const eg_csr *csr)
{
    return csr->exts;
}

const STACK_OF(X509_ATTRIBUTE) * eg_csr_attributes(const eg_csr *csr)
{
    return csr->req->info->attributes;
}

int eg_csr_copy_pubkey(const eg_csr *csr, X509 *cert)
{
    const EG_SPKI *spki = csr->req->info->spki;
    const ASN1_OBJECT *obj;
    const void *pval = NULL; /* X509_ALGOR_get0 leaves it as it is when there are no parameters */
    ASN1_OBJECT *alg = NULL;
    void *param = NULL;
    unsigned char *bits = NULL;
    int ptype;

    X509_ALGOR_get0(&obj, &ptype, &pval, spki->algor);
    alg = OBJ_dup(obj);
    bits = OPENSSL_memdup(spki->key->data, (size_t)spki->key->length);
    if (alg == NULL || bits == NULL)
        goto err;
    if (ptype == V_ASN1_OBJECT)
        param = OBJ_dup(pval);
    else if (ptype == V_ASN1_SEQUENCE)
        param = ASN1_STRING_dup(pval);
    if (pval != NULL && ptype != V_ASN1_NULL && param == NULL)
        goto err;
    if (X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(cert), alg, ptype, param, bits,
                               spki->key->length) == 1)
        return 0;
err:
    ASN1_OBJECT_free(alg);
    OPENSSL_free(bits);
    if (ptype == V_ASN1_OBJECT)
        ASN1_OBJECT_free(param);
    else
        ASN1_STRING_free(param);
    return -1;
}
