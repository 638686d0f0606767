/*
 * Key transport primitives: temporary session objects (a key pair that may
 * leave the token only wrapped, a secret key, an imported public key),
 * C_WrapKey into allocated memory, and their destruction. Factory bootstrap
 * keys use them now; server-side key generation (RFC 7030 serverkeygen) will
 * use the same calls with its own mechanisms and attributes, so nothing here
 * chooses a mechanism or a key usage for the caller.
 *
 * All of them run inside one eg_token_run() callback: session objects belong
 * to the session, so an operation that loses its session loses its objects
 * too, and eg_token_run() may simply run the whole callback again.
 */
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>

#include "errors.h"
#include "p11_local.h"

/* The most attributes a caller adds to a template (ours come on top). */
#define EG_WRAP_MAX_ATTRS 16
/* Room for a wrapped RSA-4096 PrivateKeyInfo (about 2.4 KB) and any padding. */
#define WRAP_GUESS 4096

static CK_BBOOL wrap_true = CK_TRUE, wrap_false = CK_FALSE;

void eg_p11_temp_init(eg_p11_temp_objs *objs)
{
    memset(objs, 0, sizeof(*objs));
}

static CK_RV temp_add(eg_p11_temp_objs *objs, CK_OBJECT_HANDLE h)
{
    if (objs->n == EG_P11_MAX_TEMP)
        return CKR_HOST_MEMORY;
    objs->h[objs->n++] = h;
    return CKR_OK;
}

/* Our fixed attributes first, then the caller's; a caller repeating one gets the token's error. */
static CK_RV merge(CK_ATTRIBUTE *dst, CK_ULONG *n, const CK_ATTRIBUTE *fixed, CK_ULONG nfixed,
                   const CK_ATTRIBUTE *extra, CK_ULONG nextra)
{
    if (nextra > EG_WRAP_MAX_ATTRS)
        return CKR_ARGUMENTS_BAD;
    memcpy(dst, fixed, nfixed * sizeof(*dst));
    if (nextra > 0)
        memcpy(dst + nfixed, extra, nextra * sizeof(*dst));
    *n = nfixed + nextra;
    return CKR_OK;
}

CK_RV eg_p11_temp_keypair(eg_p11_call *call, CK_MECHANISM *mech, const CK_ATTRIBUTE *pub,
                          CK_ULONG npub, const CK_ATTRIBUTE *priv, CK_ULONG npriv,
                          eg_p11_temp_objs *objs, CK_OBJECT_HANDLE *hpub, CK_OBJECT_HANDLE *hpriv)
{
    /* Sensitive and extractable: the private half can leave the token only wrapped. */
    const CK_ATTRIBUTE fpub[] = {{CKA_TOKEN, &wrap_false, sizeof(wrap_false)}};
    const CK_ATTRIBUTE fpriv[] = {{CKA_TOKEN, &wrap_false, sizeof(wrap_false)},
                                  {CKA_PRIVATE, &wrap_true, sizeof(wrap_true)},
                                  {CKA_SENSITIVE, &wrap_true, sizeof(wrap_true)},
                                  {CKA_EXTRACTABLE, &wrap_true, sizeof(wrap_true)}};
    CK_ATTRIBUTE tpub[EG_WRAP_MAX_ATTRS + 1], tpriv[EG_WRAP_MAX_ATTRS + 4];
    CK_OBJECT_HANDLE a = CK_INVALID_HANDLE, b = CK_INVALID_HANDLE;
    CK_ULONG np, nv;
    CK_RV rv;

    if (objs->n + 2 > EG_P11_MAX_TEMP)
        return CKR_HOST_MEMORY;
    if ((rv = merge(tpub, &np, fpub, 1, pub, npub)) != CKR_OK ||
        (rv = merge(tpriv, &nv, fpriv, 4, priv, npriv)) != CKR_OK)
        return rv;
    if ((rv = eg_p11_generate_key_pair(call, mech, tpub, np, tpriv, nv, &a, &b)) != CKR_OK)
        return rv;
    temp_add(objs, a);
    temp_add(objs, b);
    *hpub = a;
    *hpriv = b;
    return CKR_OK;
}

/* How one temporary object comes to be: imported, generated or derived. */
typedef struct temp_how {
    enum { TEMP_CREATE, TEMP_GENERATE, TEMP_DERIVE } kind;
    CK_MECHANISM *mech;    /* GENERATE, DERIVE */
    CK_OBJECT_HANDLE base; /* DERIVE */
} temp_how;

/* Our fixed attributes and the caller's, the object made, and recorded in objs. */
static CK_RV temp_one(eg_p11_call *call, const temp_how *how, const CK_ATTRIBUTE *fixed,
                      CK_ULONG nfixed, const CK_ATTRIBUTE *attrs, CK_ULONG n,
                      eg_p11_temp_objs *objs, CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[EG_WRAP_MAX_ATTRS + 5];
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG nt;
    CK_RV rv;

    if (objs->n == EG_P11_MAX_TEMP || nfixed > 5)
        return CKR_HOST_MEMORY;
    if ((rv = merge(t, &nt, fixed, nfixed, attrs, n)) != CKR_OK)
        return rv;
    rv = how->kind == TEMP_CREATE     ? eg_p11_create_object(call, t, nt, &h)
         : how->kind == TEMP_GENERATE ? eg_p11_generate_key(call, how->mech, t, nt, &h)
                                      : eg_p11_derive_key(call, how->mech, how->base, t, nt, &h);
    if (rv != CKR_OK)
        return rv;
    temp_add(objs, h);
    *out = h;
    return CKR_OK;
}

CK_RV eg_p11_temp_secret_import(eg_p11_call *call, const uint8_t *value, size_t len,
                                const CK_ATTRIBUTE *attrs, CK_ULONG n, eg_p11_temp_objs *objs,
                                CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    const CK_ATTRIBUTE fixed[] = {{CKA_CLASS, &cls, sizeof(cls)},
                                  {CKA_TOKEN, &wrap_false, sizeof(wrap_false)},
                                  {CKA_VALUE, (void *)value, (CK_ULONG)len}};
    const temp_how how = {.kind = TEMP_CREATE};

    return temp_one(call, &how, fixed, 3, attrs, n, objs, out);
}

CK_RV eg_p11_temp_derive(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE base,
                         const CK_ATTRIBUTE *attrs, CK_ULONG n, eg_p11_temp_objs *objs,
                         CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    const CK_ATTRIBUTE fixed[] = {{CKA_CLASS, &cls, sizeof(cls)},
                                  {CKA_TOKEN, &wrap_false, sizeof(wrap_false)},
                                  {CKA_SENSITIVE, &wrap_true, sizeof(wrap_true)}};
    const temp_how how = {.kind = TEMP_DERIVE, .mech = mech, .base = base};

    return temp_one(call, &how, fixed, 3, attrs, n, objs, out);
}

CK_RV eg_p11_temp_secret_key(eg_p11_call *call, CK_MECHANISM *mech, const CK_ATTRIBUTE *attrs,
                             CK_ULONG n, eg_p11_temp_objs *objs, CK_OBJECT_HANDLE *out)
{
    const CK_ATTRIBUTE fixed[] = {{CKA_TOKEN, &wrap_false, sizeof(wrap_false)},
                                  {CKA_SENSITIVE, &wrap_true, sizeof(wrap_true)}};
    const temp_how how = {.kind = TEMP_GENERATE, .mech = mech};

    return temp_one(call, &how, fixed, 2, attrs, n, objs, out);
}

/* A BIGNUM parameter of pub as big-endian bytes. */
static uint8_t *bn_param(const EVP_PKEY *pub, const char *name, size_t *len)
{
    BIGNUM *bn = NULL;
    uint8_t *b = NULL;
    int n;

    if (EVP_PKEY_get_bn_param(pub, name, &bn) != 1 || (n = BN_num_bytes(bn)) <= 0 ||
        (b = OPENSSL_malloc((size_t)n)) == NULL || BN_bn2bin(bn, b) != n) {
        OPENSSL_free(b);
        b = NULL;
    } else {
        *len = (size_t)n;
    }
    BN_free(bn);
    return b;
}

/* The key's own attributes: CKA_MODULUS + CKA_PUBLIC_EXPONENT, or CKA_EC_PARAMS + CKA_EC_POINT. */
struct pub_attrs {
    CK_KEY_TYPE type;
    uint8_t *a, *b;
    size_t alen, blen;
};

static void pub_attrs_clear(struct pub_attrs *p)
{
    OPENSSL_free(p->a);
    OPENSSL_free(p->b);
}

static int ec_attrs(const EVP_PKEY *pub, struct pub_attrs *p)
{
    char group[64];
    uint8_t pt[200];
    size_t ptlen = 0;
    unsigned char *der = NULL;
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    int n, ok = 0;

    if (os == NULL ||
        EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       NULL) != 1 ||
        EVP_PKEY_get_octet_string_param(pub, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt), &ptlen) != 1)
        goto out;
    if ((n = i2d_ASN1_OBJECT(OBJ_nid2obj(OBJ_sn2nid(group)), &der)) <= 0)
        goto out;
    p->a = der;
    p->alen = (size_t)n;
    der = NULL;
    /* CKA_EC_POINT is the DER OCTET STRING holding the point. */
    if (ASN1_OCTET_STRING_set(os, pt, (int)ptlen) != 1 ||
        (n = i2d_ASN1_OCTET_STRING(os, &der)) <= 0)
        goto out;
    p->b = der;
    p->blen = (size_t)n;
    p->type = CKK_EC;
    ok = 1;
out:
    ASN1_OCTET_STRING_free(os);
    return ok;
}

static int pub_attrs_get(const EVP_PKEY *pub, struct pub_attrs *p)
{
    memset(p, 0, sizeof(*p));
    if (EVP_PKEY_is_a(pub, "RSA")) {
        p->type = CKK_RSA;
        p->a = bn_param(pub, OSSL_PKEY_PARAM_RSA_N, &p->alen);
        p->b = bn_param(pub, OSSL_PKEY_PARAM_RSA_E, &p->blen);
        return p->a != NULL && p->b != NULL;
    }
    if (EVP_PKEY_is_a(pub, "EC"))
        return ec_attrs(pub, p);
    return 0;
}

CK_RV eg_p11_temp_public_key(eg_p11_call *call, const EVP_PKEY *pub, const CK_ATTRIBUTE *attrs,
                             CK_ULONG n, eg_p11_temp_objs *objs, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    const temp_how how = {.kind = TEMP_CREATE};
    struct pub_attrs p;
    CK_ATTRIBUTE fixed[5];
    CK_RV rv = CKR_KEY_TYPE_INCONSISTENT;

    if (!pub_attrs_get(pub, &p))
        goto out;
    fixed[0] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof(cls)};
    fixed[1] = (CK_ATTRIBUTE){CKA_KEY_TYPE, &p.type, sizeof(p.type)};
    fixed[2] = (CK_ATTRIBUTE){CKA_TOKEN, &wrap_false, sizeof(wrap_false)};
    fixed[3] = (CK_ATTRIBUTE){p.type == CKK_RSA ? CKA_MODULUS : CKA_EC_PARAMS, p.a, p.alen};
    fixed[4] = (CK_ATTRIBUTE){p.type == CKK_RSA ? CKA_PUBLIC_EXPONENT : CKA_EC_POINT, p.b, p.blen};
    rv = temp_one(call, &how, fixed, 5, attrs, n, objs, out);
out:
    pub_attrs_clear(&p);
    return rv;
}

CK_RV eg_p11_wrap_alloc(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE wrapping,
                        CK_OBJECT_HANDLE key, uint8_t **out, size_t *outlen)
{
    size_t len = WRAP_GUESS;
    uint8_t *buf = OPENSSL_malloc(len);
    CK_RV rv;

    /*
     * Into a buffer that fits any key we make, in one call: SoftHSM does the
     * whole wrap to answer a size query (pWrappedKey NULL), so asking first
     * would wrap twice. A token that needs more answers CKR_BUFFER_TOO_SMALL
     * and gets what it asks for.
     */
    if (buf == NULL)
        return CKR_HOST_MEMORY;
    rv = eg_p11_wrap_key(call, mech, wrapping, key, buf, &len);
    if (rv == CKR_BUFFER_TOO_SMALL) {
        uint8_t *more = NULL;

        /* NSS leaves the length short of what it needs: ask, with no buffer. */
        if (len <= WRAP_GUESS &&
            (rv = eg_p11_wrap_key(call, mech, wrapping, key, NULL, &len)) != CKR_OK) {
            OPENSSL_free(buf);
            return rv;
        }
        if (len > WRAP_GUESS)
            more = OPENSSL_realloc(buf, len);
        if (more == NULL) {
            OPENSSL_free(buf);
            return CKR_HOST_MEMORY;
        }
        buf = more;
        rv = eg_p11_wrap_key(call, mech, wrapping, key, buf, &len);
    }
    if (rv != CKR_OK || len == 0) {
        OPENSSL_free(buf);
        return rv != CKR_OK ? rv : CKR_FUNCTION_FAILED;
    }
    *out = buf;
    *outlen = len;
    return CKR_OK;
}

CK_RV eg_p11_object_public(eg_p11_call *call, CK_OBJECT_HANDLE pub, EVP_PKEY **out)
{
    CK_KEY_TYPE kt = CKK_VENDOR_DEFINED;
    CK_ATTRIBUTE ta = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    struct pub_attrs p;
    EVP_PKEY *pkey = NULL;
    CK_RV rv;

    memset(&p, 0, sizeof(p));
    if ((rv = eg_p11_get_attributes(call, pub, &ta, 1)) != CKR_OK)
        goto out;
    rv = CKR_KEY_TYPE_INCONSISTENT;
    if (kt != CKK_RSA && kt != CKK_EC)
        goto out;
    if ((rv = eg_p11_get_attribute_alloc(call, pub, kt == CKK_RSA ? CKA_MODULUS : CKA_EC_PARAMS,
                                         &p.a, &p.alen)) != CKR_OK ||
        (rv = eg_p11_get_attribute_alloc(call, pub,
                                         kt == CKK_RSA ? CKA_PUBLIC_EXPONENT : CKA_EC_POINT, &p.b,
                                         &p.blen)) != CKR_OK)
        goto out;
    pkey = kt == CKK_RSA ? eg_p11_public_rsa(p.a, p.alen, p.b, p.blen)
                         : eg_p11_public_ec(EG_KEY_EC, p.a, p.alen, p.b, p.blen);
    ERR_clear_error();
    if (pkey == NULL) {
        rv = CKR_ATTRIBUTE_VALUE_INVALID;
        goto out;
    }
    *out = pkey;
    rv = CKR_OK;
out:
    pub_attrs_clear(&p);
    return rv;
}

CK_RV eg_p11_ec_point(eg_p11_call *call, CK_OBJECT_HANDLE pub, uint8_t **out, size_t *len)
{
    uint8_t *der = NULL, *pt;
    size_t dlen = 0, plen;
    const uint8_t *p;
    CK_RV rv;

    if ((rv = eg_p11_get_attribute_alloc(call, pub, CKA_EC_POINT, &der, &dlen)) != CKR_OK)
        return rv;
    p = eg_p11_unwrap_point(der, dlen, &plen);
    if (plen == 0 || p[0] != 0x04 || (pt = OPENSSL_memdup(p, plen)) == NULL) {
        OPENSSL_free(der);
        return plen == 0 || p[0] != 0x04 ? CKR_ATTRIBUTE_VALUE_INVALID : CKR_HOST_MEMORY;
    }
    OPENSSL_free(der);
    *out = pt;
    *len = plen;
    return CKR_OK;
}

CK_RV eg_p11_temp_destroy(eg_p11_call *call, eg_p11_temp_objs *objs)
{
    CK_RV rv = CKR_OK, r;

    /* Newest first; every object is tried even when one fails. */
    while (objs->n > 0) {
        CK_OBJECT_HANDLE h = objs->h[--objs->n];

        r = eg_p11_destroy_object(call, h);
        /* NSS keeps a private session object through a logout, but destroys it only for a
           logged-in user. */
        if (r == CKR_USER_NOT_LOGGED_IN && eg_p11_call_login(call) == CKR_OK)
            r = eg_p11_destroy_object(call, h);
        if (r != CKR_OK && r != CKR_OBJECT_HANDLE_INVALID)
            eg_p11_call_discard(call); /* the object goes with its session */
        if (rv == CKR_OK)
            rv = r;
    }
    return rv;
}

int eg_p11_keyparams_init(eg_p11_keyparams *kp, const eg_keygen_spec *spec)
{
    int n;

    memset(kp, 0, sizeof(*kp));
    if (spec->type == EG_KEY_RSA && spec->bits >= 2048 && spec->bits <= 8192) {
        static const CK_BYTE f4[] = {0x01, 0x00, 0x01};

        kp->bits = spec->bits;
        memcpy(kp->e, f4, sizeof(f4));
        kp->mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
        kp->attrs[0] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &kp->bits, sizeof(kp->bits)};
        kp->attrs[1] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, kp->e, sizeof(f4)};
        kp->n = 2;
        return 0;
    }
    if (spec->type == EG_KEY_EC &&
        (n = i2d_ASN1_OBJECT(OBJ_nid2obj(spec->curve_nid), &kp->ec_params)) > 0) {
        kp->mech.mechanism = CKM_EC_KEY_PAIR_GEN;
        kp->attrs[0] = (CK_ATTRIBUTE){CKA_EC_PARAMS, kp->ec_params, (CK_ULONG)n};
        kp->n = 1;
        return 0;
    }
    eg_signer_error(EG_R_BAD_PARAM, "key spec: need RSA 2048-8192 bits or an EC curve");
    return -1;
}

void eg_p11_keyparams_clear(eg_p11_keyparams *kp)
{
    OPENSSL_free(kp->ec_params);
    memset(kp, 0, sizeof(*kp));
}
