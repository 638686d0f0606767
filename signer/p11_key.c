/*
 * Keys in a token, named by PKCS#11 URI. A key remembers its CKA_ID and label,
 * not just an object handle: handles die with the sessions when a token is
 * recovered, so they are looked up again for each new token generation.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "errors.h"
#include "p11_local.h"
#include "p11_uri.h"

#define EG_ID_LEN 16

struct eg_p11_key {
    atomic_int refs;
    eg_token *tok;
    eg_key_type type;
    uint8_t *id;
    size_t idlen;
    char *label;
    char *uri;
    EVP_PKEY *pub;

    pthread_mutex_t lock; /* guards the cached handles */
    struct {
        CK_OBJECT_HANDLE handle;
        unsigned gen;
        int have;
    } cached[EG_CONNECTIONS_MAX]; /* per module instance: each has its own handles */
    /*
     * A session object (made by eg_p11_key_generate with token_object false)
     * exists only for the module instance that made it: every call goes there.
     * -1 for token objects, which every instance sees.
     */
    int lane;
};

static CK_BBOOL ck_true = CK_TRUE, ck_false = CK_FALSE;

static eg_key_type type_of(CK_KEY_TYPE kt)
{
    switch (kt) {
    case CKK_RSA:
        return EG_KEY_RSA;
    case CKK_EC:
        return EG_KEY_EC;
    case CKK_EC_EDWARDS:
        return EG_KEY_ED25519;
    default:
        return EG_KEY_NONE;
    }
}

/* Builds the search template for an object of class cls with the key's id/label. */
static CK_ULONG key_template(const eg_p11_key *key, CK_OBJECT_CLASS *cls, CK_ATTRIBUTE *t)
{
    CK_ULONG n = 0;

    t[n++] = (CK_ATTRIBUTE){CKA_CLASS, cls, sizeof(*cls)};
    if (key->id != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_ID, key->id, key->idlen};
    if (key->label != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_LABEL, key->label, strlen(key->label)};
    return n;
}

static CK_RV find_one(eg_p11_call *call, const eg_p11_key *key, CK_OBJECT_CLASS cls,
                      CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[3];
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = key_template(key, &cls, t), nfound;
    CK_RV rv;

    if ((rv = eg_p11_find_objects(call, t, n, found, 2, &nfound)) != CKR_OK)
        return rv;
    if (nfound == 0)
        return CKR_KEY_HANDLE_INVALID;
    if (nfound > 1)
        return CKR_KEY_FUNCTION_NOT_PERMITTED; /* reported as ambiguous by callers */
    *out = found[0];
    return CKR_OK;
}

static CK_RV same_key(eg_p11_call *call, const eg_p11_key *key, CK_OBJECT_HANDLE priv);

/*
 * The private key's handle for the call's module instance and token generation.
 * A key already described (it has its public half) gets a handle only for the
 * same key: CKR_KEY_CHANGED when the object under its id and label is another.
 */
static CK_RV key_handle(eg_p11_call *call, eg_p11_key *key, int refresh, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_HANDLE h;
    unsigned gen = eg_p11_call_gen(call), lane = eg_p11_call_lane(call);
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&key->lock);
    if (key->cached[lane].have && key->cached[lane].gen == gen && !refresh) {
        *out = key->cached[lane].handle;
        pthread_mutex_unlock(&key->lock);
        return CKR_OK;
    }
    pthread_mutex_unlock(&key->lock);
    if ((rv = find_one(call, key, CKO_PRIVATE_KEY, &h)) != CKR_OK)
        return rv == CKR_KEY_HANDLE_INVALID ? eg_p11_call_not_found(call, rv) : rv;
    /* Found anew, so perhaps another key by now: known keys are checked before any use. */
    if (key->pub != NULL && (rv = same_key(call, key, h)) != CKR_OK)
        return rv;
    pthread_mutex_lock(&key->lock);
    key->cached[lane].handle = h;
    key->cached[lane].gen = gen;
    key->cached[lane].have = 1;
    pthread_mutex_unlock(&key->lock);
    *out = h;
    return CKR_OK;
}

/* eg_token_run() on the instance that can see the key. */
static CK_RV key_run(eg_p11_key *key, eg_p11_fn *fn, void *arg)
{
    return eg_token_run_lane(key->tok, key->lane, fn, arg);
}

struct sign_args {
    eg_p11_key *key;
    CK_MECHANISM *mech;
    const uint8_t *in;
    size_t inlen;
    uint8_t *sig;
    size_t siglen;
    bool gone; /* the key was looked for and is not in the token: no C_Sign was made */
};

static CK_RV sign_fn(eg_p11_call *call, void *arg)
{
    struct sign_args *a = arg;
    CK_OBJECT_HANDLE h;
    size_t len = a->siglen;
    CK_RV rv;
    int attempt;

    for (attempt = 0; attempt < 2; attempt++) {
        if ((rv = key_handle(call, a->key, attempt, &h)) != CKR_OK) {
            a->gone = rv == CKR_KEY_HANDLE_INVALID;
            return rv;
        }
        len = a->siglen;
        rv = eg_p11_sign(call, a->mech, h, a->in, a->inlen, a->sig, &len);
        /* A handle can go stale without the session dying (key re-created). */
        if (rv != CKR_KEY_HANDLE_INVALID && rv != CKR_OBJECT_HANDLE_INVALID)
            break;
    }
    if (rv == CKR_OK)
        a->siglen = len;
    else if (rv != CKR_BUFFER_TOO_SMALL)
        /* NSS answers a sign with a logged-out key CKR_HOST_MEMORY: ask the session. */
        rv = eg_p11_call_not_found(call, rv);
    return rv;
}

int eg_p11_key_sign(eg_p11_key *key, CK_MECHANISM *mech, const uint8_t *in, size_t inlen,
                    uint8_t *sig, size_t *siglen)
{
    struct sign_args a = {key, mech, in, inlen, sig, *siglen, false};
    CK_RV rv;

    if ((rv = key_run(a.key, sign_fn, &a)) == CKR_OK) {
        *siglen = a.siglen;
        return 0;
    }
    /* Both wait for an operator (every retry fails alike), so each says what to do. */
    if (rv == CKR_KEY_CHANGED)
        eg_signer_error(EG_R_KEY_REPLACED,
                        "%s is no longer the key loaded at start: put it back, or reload "
                        "with the new key's certificate",
                        key->uri);
    else if (rv == CKR_KEY_HANDLE_INVALID && a.gone)
        eg_signer_error(EG_R_KEY_NOT_FOUND,
                        "%s is no longer in the token: restore it, or reload with another key",
                        key->uri);
    else /* the CK_RV before the URI: a reason cut to fit a log line or a ledger row keeps it */
        eg_signer_error(EG_R_TOKEN_CALL, "C_Sign: %s, with %s", eg_p11_rv_name(rv), key->uri);
    return -1;
}

static EVP_PKEY *pkey_fromdata(const char *name, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;

    /* The software half must never come from our own provider. */
    if (params != NULL && (ctx = EVP_PKEY_CTX_new_from_name(NULL, name, "provider=default")) &&
        EVP_PKEY_fromdata_init(ctx) == 1)
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

EVP_PKEY *eg_p11_public_rsa(const uint8_t *n, size_t nlen, const uint8_t *e, size_t elen)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL), *be = BN_bin2bn(e, (int)elen, NULL);
    EVP_PKEY *pkey = NULL;

    if (bld != NULL && bn != NULL && be != NULL &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        pkey = pkey_fromdata("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return pkey;
}

/* CKA_EC_POINT is a DER OCTET STRING by the standard; some tokens give the raw point. */
const uint8_t *eg_p11_unwrap_point(const uint8_t *p, size_t len, size_t *outlen)
{
    if (len > 2 && p[0] == 0x04 && p[1] < 0x80 && (size_t)p[1] == len - 2) {
        *outlen = len - 2;
        return p + 2;
    }
    if (len > 3 && p[0] == 0x04 && p[1] == 0x81 && (size_t)p[2] == len - 3) {
        *outlen = len - 3;
        return p + 3;
    }
    *outlen = len;
    return p;
}

EVP_PKEY *eg_p11_public_ec(eg_key_type type, const uint8_t *params, size_t plen,
                           const uint8_t *point, size_t ptlen)
{
    const unsigned char *p = params;
    ASN1_OBJECT *oid;
    int nid;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;
    const uint8_t *pt = eg_p11_unwrap_point(point, ptlen, &ptlen);

    /* Ed25519 parameters may be a curve name, not an OID: no error left behind. */
    ERR_set_mark();
    oid = d2i_ASN1_OBJECT(NULL, &p, (long)plen);
    ERR_pop_to_mark();
    nid = oid ? OBJ_obj2nid(oid) : NID_undef;
    ASN1_OBJECT_free(oid);
    if (type == EG_KEY_ED25519) {
        if (ptlen == 32)
            pkey = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", "provider=default", pt, 32);
        return pkey;
    }
    if (nid == NID_undef || (bld = OSSL_PARAM_BLD_new()) == NULL)
        return NULL;
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, OBJ_nid2sn(nid), 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, ptlen))
        pkey = pkey_fromdata("EC", bld);
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

/*
 * The public half, from the private key's attributes, its public key object or its certificate,
 * into *out.
 */
static CK_RV read_public(eg_p11_call *call, const eg_p11_key *key, CK_OBJECT_HANDLE priv,
                         EVP_PKEY **out)
{
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    CK_OBJECT_HANDLE h;
    EVP_PKEY *pub = NULL;
    CK_RV rv;

    if (key->type == EG_KEY_RSA) {
        if ((rv = eg_p11_get_attribute_alloc(call, priv, CKA_MODULUS, &a, &alen)) == CKR_OK &&
            (rv = eg_p11_get_attribute_alloc(call, priv, CKA_PUBLIC_EXPONENT, &b, &blen)) == CKR_OK)
            pub = eg_p11_public_rsa(a, alen, b, blen);
    } else {
        if ((rv = eg_p11_get_attribute_alloc(call, priv, CKA_EC_PARAMS, &a, &alen)) == CKR_OK &&
            (rv = find_one(call, key, CKO_PUBLIC_KEY, &h)) == CKR_OK &&
            (rv = eg_p11_get_attribute_alloc(call, h, CKA_EC_POINT, &b, &blen)) == CKR_OK)
            pub = eg_p11_public_ec(key->type, a, alen, b, blen);
    }
    OPENSSL_free(a);
    OPENSSL_free(b);
    if (pub == NULL && find_one(call, key, CKO_CERTIFICATE, &h) == CKR_OK &&
        eg_p11_get_attribute_alloc(call, h, CKA_VALUE, &a, &alen) == CKR_OK) {
        const unsigned char *p = a;
        X509 *cert = d2i_X509(NULL, &p, (long)alen);

        if (cert != NULL && (pub = X509_get0_pubkey(cert)) != NULL)
            EVP_PKEY_up_ref(pub);
        X509_free(cert);
        OPENSSL_free(a);
    }
    if (pub == NULL)
        return rv != CKR_OK ? rv : CKR_ATTRIBUTE_VALUE_INVALID;
    *out = pub;
    return CKR_OK;
}

/*
 * Whether the private key priv, just found by the key's id and label, is the key described at
 * open: its public half, read as at open, is the same. An operator who deletes a CA key and
 * makes another under the same id and label would otherwise have every certificate signed with
 * a key the CA certificate does not hold, and devices refuse them all. CKR_KEY_CHANGED when it
 * is another key or its public half can no longer be read; a lost session or login as such.
 */
static CK_RV same_key(eg_p11_call *call, const eg_p11_key *key, CK_OBJECT_HANDLE priv)
{
    EVP_PKEY *now = NULL;
    CK_RV rv = read_public(call, key, priv, &now);

    if (rv == CKR_OK && EVP_PKEY_eq(now, key->pub) != 1)
        rv = CKR_KEY_CHANGED;
    /* Another type of key, or no public half left to compare. */
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_VALUE_INVALID ||
        rv == CKR_KEY_HANDLE_INVALID || rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
        rv = CKR_KEY_CHANGED;
    EVP_PKEY_free(now);
    return rv;
}

/* Fills in type, id, label and public half of a key whose id/label select it. */
static CK_RV describe_fn(eg_p11_call *call, void *arg)
{
    eg_p11_key *key = arg;
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE ta = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    CK_OBJECT_HANDLE h;
    uint8_t *v;
    size_t len;
    CK_RV rv;

    if ((rv = key_handle(call, key, 1, &h)) != CKR_OK)
        return rv;
    if ((rv = eg_p11_get_attributes(call, h, &ta, 1)) != CKR_OK)
        return rv;
    if ((key->type = type_of(kt)) == EG_KEY_NONE)
        return CKR_KEY_TYPE_INCONSISTENT;
    if (key->id == NULL && eg_p11_get_attribute_alloc(call, h, CKA_ID, &v, &len) == CKR_OK) {
        key->id = v;
        key->idlen = len;
    }
    if (key->label == NULL && eg_p11_get_attribute_alloc(call, h, CKA_LABEL, &v, &len) == CKR_OK)
        key->label = (char *)v;
    EVP_PKEY_free(key->pub);
    key->pub = NULL;
    return read_public(call, key, h, &key->pub);
}

static eg_p11_key *key_new(eg_token *tok)
{
    eg_p11_key *key = OPENSSL_zalloc(sizeof(*key));

    if (key == NULL)
        return NULL;
    atomic_init(&key->refs, 1);
    key->tok = tok;
    key->lane = -1;
    pthread_mutex_init(&key->lock, NULL);
    return key;
}

static int key_finish(eg_p11_key *key)
{
    CK_RV rv = key_run(key, describe_fn, key);

    if (rv == CKR_KEY_HANDLE_INVALID) {
        eg_signer_error(EG_R_KEY_NOT_FOUND, "no private key for %s in token '%s'",
                        key->uri ? key->uri : key->label, eg_token_label(key->tok));
        return -1;
    }
    if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED) {
        eg_signer_error(EG_R_KEY_AMBIGUOUS, "%s matches more than one private key", key->uri);
        return -1;
    }
    if (rv == CKR_KEY_TYPE_INCONSISTENT) {
        eg_signer_error(EG_R_KEY_UNSUPPORTED, "%s: not an RSA, EC or Ed25519 key", key->uri);
        return -1;
    }
    if (rv != CKR_OK) {
        eg_signer_error(EG_R_TOKEN_CALL, "reading a key: %s, %s", eg_p11_rv_name(rv), key->uri);
        return -1;
    }
    OPENSSL_free(key->uri);
    key->uri =
        eg_p11_uri_format(eg_token_label(key->tok), key->label, key->id, key->idlen, "private");
    return key->uri != NULL ? 0 : -1;
}

int eg_p11_key_open(eg_token *tok, const char *uri, eg_p11_key **out)
{
    eg_p11_uri *u = NULL;
    eg_p11_key *key = NULL;
    int rc = -1;

    if (eg_p11_uri_parse(uri, &u) != 0)
        goto out;
    if (u->token != NULL && strcmp(u->token, eg_token_label(tok)) != 0) {
        eg_signer_error(EG_R_TOKEN_NOT_FOUND, "%s names token '%s', not '%s'", uri, u->token,
                        eg_token_label(tok));
        goto out;
    }
    if (u->type != NULL && strcmp(u->type, "private") != 0) {
        eg_signer_error(EG_R_BAD_URI, "%s: a signing key needs type=private", uri);
        goto out;
    }
    if (u->id == NULL && u->object == NULL) {
        eg_signer_error(EG_R_BAD_URI, "%s names no key: give id= or object=", uri);
        goto out;
    }
    if ((key = key_new(tok)) == NULL || (key->uri = OPENSSL_strdup(uri)) == NULL)
        goto out;
    key->id = u->id;
    key->idlen = u->idlen;
    key->label = u->object;
    u->id = NULL;
    u->object = NULL;
    if (key_finish(key) != 0)
        goto out;
    *out = key;
    key = NULL;
    rc = 0;
out:
    eg_p11_uri_free(u);
    eg_p11_key_free(key);
    return rc;
}

struct gen_args {
    const eg_keygen_spec *spec;
    eg_p11_key *key;
};

static CK_RV generate_fn(eg_p11_call *call, void *arg)
{
    struct gen_args *a = arg;
    const eg_keygen_spec *s = a->spec;
    CK_BBOOL tok = s->token_object ? CK_TRUE : CK_FALSE;
    CK_BBOOL wrap = s->wrappable ? CK_TRUE : CK_FALSE;
    CK_ULONG bits = s->bits, np = 0, nv = 0;
    CK_BYTE e[] = {0x01, 0x00, 0x01};
    CK_MECHANISM mech = {0, NULL, 0};
    CK_ATTRIBUTE pub[8], priv[8];
    CK_OBJECT_HANDLE hpub, hpriv;
    unsigned char *params = NULL;
    int plen = 0;
    CK_RV rv;

    pub[np++] = (CK_ATTRIBUTE){CKA_TOKEN, &tok, sizeof(tok)};
    pub[np++] = (CK_ATTRIBUTE){CKA_PRIVATE, &ck_false, sizeof(ck_false)};
    pub[np++] = (CK_ATTRIBUTE){CKA_VERIFY, &ck_true, sizeof(ck_true)};
    pub[np++] = (CK_ATTRIBUTE){CKA_ID, a->key->id, a->key->idlen};
    pub[np++] = (CK_ATTRIBUTE){CKA_LABEL, a->key->label, strlen(a->key->label)};
    priv[nv++] = (CK_ATTRIBUTE){CKA_TOKEN, &tok, sizeof(tok)};
    priv[nv++] = (CK_ATTRIBUTE){CKA_PRIVATE, &ck_true, sizeof(ck_true)};
    priv[nv++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &ck_true, sizeof(ck_true)};
    priv[nv++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &wrap, sizeof(wrap)};
    priv[nv++] = (CK_ATTRIBUTE){CKA_SIGN, &ck_true, sizeof(ck_true)};
    priv[nv++] = (CK_ATTRIBUTE){CKA_ID, a->key->id, a->key->idlen};
    priv[nv++] = (CK_ATTRIBUTE){CKA_LABEL, a->key->label, strlen(a->key->label)};
    if (s->type == EG_KEY_RSA) {
        mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
        pub[np++] = (CK_ATTRIBUTE){CKA_MODULUS_BITS, &bits, sizeof(bits)};
        pub[np++] = (CK_ATTRIBUTE){CKA_PUBLIC_EXPONENT, e, sizeof(e)};
    } else {
        int nid = s->type == EG_KEY_ED25519 ? NID_ED25519 : s->curve_nid;

        mech.mechanism =
            s->type == EG_KEY_ED25519 ? CKM_EC_EDWARDS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN;
        if ((plen = i2d_ASN1_OBJECT(OBJ_nid2obj(nid), &params)) <= 0)
            return CKR_DOMAIN_PARAMS_INVALID;
        pub[np++] = (CK_ATTRIBUTE){CKA_EC_PARAMS, params, (CK_ULONG)plen};
    }
    rv = eg_p11_generate_key_pair(call, &mech, pub, np, priv, nv, &hpub, &hpriv);
    OPENSSL_free(params);
    if (rv == CKR_OK && !s->token_object)
        a->key->lane = (int)eg_p11_call_lane(call);
    return rv;
}

static int check_spec(const eg_keygen_spec *s)
{
    if (s->label == NULL || (s->id != NULL && s->idlen == 0))
        goto bad;
    if (s->type == EG_KEY_RSA && s->bits >= 2048 && s->bits <= 8192 && s->bits % 8 == 0)
        return 0;
    if (s->type == EG_KEY_EC && (s->curve_nid == NID_X9_62_prime256v1 ||
                                 s->curve_nid == NID_secp384r1 || s->curve_nid == NID_secp521r1))
        return 0;
    if (s->type == EG_KEY_ED25519)
        return 0;
bad:
    eg_signer_error(EG_R_BAD_PARAM, "key spec: need a label and RSA 2048-8192 bits, "
                                    "EC P-256/P-384/P-521 or Ed25519");
    return -1;
}

int eg_p11_key_generate(eg_token *tok, const eg_keygen_spec *spec, eg_p11_key **out)
{
    eg_p11_key *key = NULL;
    struct gen_args a;
    CK_RV rv;
    int rc = -1;

    if (check_spec(spec) != 0 || (key = key_new(tok)) == NULL)
        goto out;
    key->idlen = spec->id ? spec->idlen : EG_ID_LEN;
    if ((key->id = OPENSSL_malloc(key->idlen)) == NULL ||
        (key->label = OPENSSL_strdup(spec->label)) == NULL)
        goto out;
    if (spec->id != NULL)
        memcpy(key->id, spec->id, key->idlen);
    else if (RAND_bytes(key->id, (int)key->idlen) != 1)
        goto out;
    a.spec = spec;
    a.key = key;
    if ((rv = eg_token_run_keygen(tok, spec, generate_fn, &a)) != CKR_OK) {
        eg_signer_error(rv == CKR_MECHANISM_INVALID ? EG_R_MECHANISM : EG_R_TOKEN_CALL,
                        "C_GenerateKeyPair for '%s' in token '%s': %s", spec->label,
                        eg_token_label(tok), eg_p11_rv_name(rv));
        goto out;
    }
    if (key_finish(key) != 0) {
        eg_p11_key_destroy(key);
        goto out;
    }
    *out = key;
    key = NULL;
    rc = 0;
out:
    eg_p11_key_free(key);
    return rc;
}

eg_p11_key *eg_p11_key_ref(eg_p11_key *key)
{
    atomic_fetch_add(&key->refs, 1);
    return key;
}

void eg_p11_key_free(eg_p11_key *key)
{
    if (key == NULL || atomic_fetch_sub(&key->refs, 1) != 1)
        return;
    EVP_PKEY_free(key->pub);
    OPENSSL_free(key->id);
    OPENSSL_free(key->label);
    OPENSSL_free(key->uri);
    pthread_mutex_destroy(&key->lock);
    OPENSSL_free(key);
}

eg_key_type eg_p11_key_type(const eg_p11_key *key)
{
    return key->type;
}

eg_token *eg_p11_key_token(const eg_p11_key *key)
{
    return key->tok;
}

EVP_PKEY *eg_p11_key_public(const eg_p11_key *key)
{
    EVP_PKEY_up_ref(key->pub);
    return key->pub;
}

const char *eg_p11_key_uri(const eg_p11_key *key)
{
    return key->uri;
}

const uint8_t *eg_p11_key_id(const eg_p11_key *key, size_t *len)
{
    *len = key->idlen;
    return key->id;
}

struct bool_args {
    eg_p11_key *key;
    CK_ATTRIBUTE_TYPE type;
    CK_BBOOL value;
};

static CK_RV get_bool_fn(eg_p11_call *call, void *arg)
{
    struct bool_args *a = arg;
    CK_ATTRIBUTE t = {a->type, &a->value, sizeof(a->value)};
    CK_OBJECT_HANDLE h;
    CK_RV rv;

    if ((rv = key_handle(call, a->key, 0, &h)) != CKR_OK)
        return rv;
    return eg_p11_get_attributes(call, h, &t, 1);
}

int eg_p11_key_get_bool(eg_p11_key *key, CK_ATTRIBUTE_TYPE type, bool *out)
{
    struct bool_args a = {key, type, CK_FALSE};
    CK_RV rv;

    if ((rv = key_run(key, get_bool_fn, &a)) != CKR_OK) {
        eg_signer_error(EG_R_TOKEN_CALL, "C_GetAttributeValue(0x%lx) of %s: %s", type, key->uri,
                        eg_p11_rv_name(rv));
        return -1;
    }
    *out = a.value == CK_TRUE;
    return 0;
}

static CK_RV destroy_fn(eg_p11_call *call, void *arg)
{
    static const CK_OBJECT_CLASS classes[] = {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY};
    eg_p11_key *key = arg;
    CK_OBJECT_HANDLE h;
    CK_RV rv;
    size_t i;

    for (i = 0; i < sizeof(classes) / sizeof(classes[0]); i++) {
        rv = find_one(call, key, classes[i], &h);
        if (rv == CKR_KEY_HANDLE_INVALID)
            continue; /* already gone: destroying is idempotent */
        if (rv != CKR_OK || (rv = eg_p11_destroy_object(call, h)) != CKR_OK)
            return rv;
    }
    return CKR_OK;
}

int eg_p11_key_destroy(eg_p11_key *key)
{
    CK_RV rv = key_run(key, destroy_fn, key);

    pthread_mutex_lock(&key->lock);
    memset(key->cached, 0, sizeof(key->cached));
    pthread_mutex_unlock(&key->lock);
    if (rv != CKR_OK) {
        eg_signer_error(EG_R_TOKEN_CALL, "destroying %s: %s", key->uri ? key->uri : key->label,
                        eg_p11_rv_name(rv));
        return -1;
    }
    return 0;
}
