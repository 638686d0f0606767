/*
 * serverkeygen in the token: one key pair per request, made as session
 * objects, protected before it leaves, and destroyed before the answer is
 * built. Every token call of one request runs in one eg_token_run()
 * callback: session objects belong to the session, so a request that loses
 * its session loses its objects too and the callback simply runs again.
 *
 * Encrypt: the private key leaves the token only as C_WrapKey(CKM_AES_CBC_PAD)
 * output under a content-encryption key (CEK) made in the token, and the CEK
 * only as C_WrapKey output to the recipient (RSA key transport, a pre-shared
 * AES key, or a key-encryption key the token derived by ECDH).
 * Plaintext (opt-in): the key leaves the token wrapped under a throwaway key,
 * and is unwrapped here into OpenSSL's secure heap, from where the web layer
 * writes it to the TLS connection and wipes it.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "der.h"
#include "p11_uri.h"
#include "pem.h"
#include "skg.h"
#include "skg_cms.h"

#define CEK_LEN 32 /* the plaintext mode's throwaway key */
#define IV_LEN  16

typedef enum skg_mode { MODE_PLAIN, MODE_ENCRYPT } skg_mode;

/* One request's work in the token: inputs, then what the token made. */
typedef struct skg_job {
    const eg_skg_caps *caps;
    eg_keygen_spec spec;
    skg_mode mode;
    eg_skg_rkind rkind;
    EVP_PKEY *rpub;        /* KTRI: the RSA recipient; KARI: the EC recipient */
    int kt;                /* KTRI: EG_SKG_RSA_* */
    const eg_p11_uri *kek; /* KEKRI */
    unsigned cek_bits;     /* 128 or 256: id-aes128-CBC or id-aes256-CBC */
    eg_skg_kdf kdf;        /* KARI */
    unsigned kek_bits;     /* KARI: the KEK to derive; KEKRI: set to the pre-shared key's size */
    unsigned wraps;        /* KEKRI: the EG_SKG_CAP_AES*_WRAP the client listed; 0: any */
    /* out */
    CK_OBJECT_HANDLE kek_h; /* KEKRI: the pre-shared key, found before anything is made */
    const char *kek_fault;  /* KEKRI: what is wrong with it in the token; the appliance's fault */
    bool kek_unlisted;      /* KEKRI: its size's wrap is not among wraps; the client's fault */
    uint8_t *pub;           /* the public key's bits: EC point, or DER RSAPublicKey */
    size_t pub_len;
    uint8_t *plain; /* MODE_PLAIN: the PKCS#8, secure heap */
    size_t plain_len;
    uint8_t iv[IV_LEN];
    uint8_t *ct, *ek, *eph; /* encrypted content, wrapped CEK, KARI ephemeral point */
    size_t ct_len, ek_len, eph_len;
    const char *step;
} skg_job;

static void job_out_clear(skg_job *j)
{
    OPENSSL_free(j->pub);
    OPENSSL_secure_clear_free(j->plain, j->plain_len);
    OPENSSL_free(j->ct);
    OPENSSL_free(j->ek);
    OPENSSL_free(j->eph);
    j->pub = NULL;
    j->pub_len = 0;
    j->plain = j->ct = j->ek = j->eph = NULL;
    j->plain_len = j->ct_len = j->ek_len = j->eph_len = 0;
}

void eg_skg_result_clear(eg_skg_result *r)
{
    if (r == NULL)
        return;
    OPENSSL_free((uint8_t *)r->pub.bits);
    if (r->key_secure)
        OPENSSL_secure_clear_free(r->key, r->key_len);
    else
        OPENSSL_free(r->key);
    memset(r, 0, sizeof(*r));
}

/* ---- token objects ---- */

CK_RV eg_skg_temp_pair(eg_p11_call *call, const eg_keygen_spec *spec, CK_ATTRIBUTE_TYPE use,
                       eg_p11_temp_objs *objs, CK_OBJECT_HANDLE *hpub, CK_OBJECT_HANDLE *hpriv)
{
    CK_BBOOL yes = CK_TRUE;
    eg_p11_keyparams kp;
    CK_ATTRIBUTE pub[3], priv[] = {{use, &yes, sizeof(yes)}};
    CK_ULONG n;
    CK_RV rv;

    if (eg_p11_keyparams_init(&kp, spec) != 0)
        return CKR_ARGUMENTS_BAD;
    for (n = 0; n < kp.n; n++)
        pub[n] = kp.attrs[n];
    pub[n++] = (CK_ATTRIBUTE){use == CKA_SIGN ? CKA_VERIFY : use, &yes, sizeof(yes)};
    rv = eg_p11_temp_keypair(call, &kp.mech, pub, n, priv, 1, objs, hpub, hpriv);
    eg_p11_keyparams_clear(&kp);
    return rv;
}

static CK_RV make_cek(eg_p11_call *call, unsigned bits, eg_p11_temp_objs *objs,
                      CK_OBJECT_HANDLE *out)
{
    CK_BBOOL yes = CK_TRUE;
    CK_ULONG len = bits / 8;
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[] = {{CKA_VALUE_LEN, &len, sizeof(len)},
                        {CKA_WRAP, &yes, sizeof(yes)},
                        {CKA_EXTRACTABLE, &yes, sizeof(yes)}};

    return eg_p11_temp_secret_key(call, &gen, t, 3, objs, out);
}

CK_RV eg_skg_find_secret(eg_p11_call *call, const eg_p11_uri *uri, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[3] = {{CKA_CLASS, &cls, sizeof(cls)}};
    CK_ULONG n = 1, found = 0;
    CK_OBJECT_HANDLE h[2];
    CK_RV rv;

    if (uri->object != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_LABEL, uri->object, (CK_ULONG)strlen(uri->object)};
    if (uri->id != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_ID, uri->id, (CK_ULONG)uri->idlen};
    if ((rv = eg_p11_find_objects(call, t, n, h, 2, &found)) != CKR_OK)
        return rv;
    if (found != 1)
        return found == 0 ? CKR_KEY_HANDLE_INVALID : CKR_KEY_FUNCTION_NOT_PERMITTED;
    *out = h[0];
    return CKR_OK;
}

/* The RSAPublicKey (RFC 8017 A.1.1) of an RSA public key object. */
static CK_RV rsa_public(eg_p11_call *call, CK_OBJECT_HANDLE pub, uint8_t **out, size_t *len)
{
    uint8_t *n = NULL, *e = NULL;
    size_t nlen = 0, elen = 0;
    eg_der d = {0};
    CK_RV rv;

    if ((rv = eg_p11_get_attribute_alloc(call, pub, CKA_MODULUS, &n, &nlen)) != CKR_OK ||
        (rv = eg_p11_get_attribute_alloc(call, pub, CKA_PUBLIC_EXPONENT, &e, &elen)) != CKR_OK)
        goto out;
    rv = CKR_DEVICE_ERROR; /* a token that reports an empty modulus or exponent */
    if (nlen == 0 || elen == 0)
        goto out;
    rv = CKR_HOST_MEMORY;
    eg_der_uint(&d, n, nlen);
    eg_der_uint(&d, e, elen);
    eg_der_wrap_from(&d, 0, EG_DER_SEQUENCE);
    if (eg_der_finish(&d, out, len) == 0)
        rv = CKR_OK;
out:
    OPENSSL_free(n);
    OPENSSL_free(e);
    return rv;
}

/* ---- plaintext: out of the token under a throwaway key, into the secure heap ---- */

/* The DER length of the SEQUENCE at p[0..len), or 0 when it is not one. */
static size_t der_seq_len(const uint8_t *p, size_t len)
{
    size_t n, hdr = 2;

    if (len < 2 || p[0] != 0x30)
        return 0;
    n = p[1];
    if (n & 0x80) {
        size_t k = n & 0x7f;

        if (k == 0 || k > 3 || len < 2 + k)
            return 0;
        n = 0;
        for (size_t i = 0; i < k; i++)
            n = n << 8 | p[2 + i];
        hdr += k;
    }
    return hdr + n <= len ? hdr + n : 0;
}

/* Software unwrap of the token's wrap into secure memory: CBC_PAD, or KWP with its zero fill. */
static int unwrap_plain(skg_job *j, bool cbc, const uint8_t *key, const uint8_t *iv,
                        const uint8_t *ct, size_t ct_len)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    uint8_t *out = OPENSSL_secure_malloc(ct_len + 16);
    int n1 = 0, n2 = 0, rc = -1;
    size_t der;

    if (c == NULL || out == NULL)
        goto out;
    if (!cbc)
        EVP_CIPHER_CTX_set_flags(c, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    if (EVP_DecryptInit_ex(c, cbc ? EVP_aes_256_cbc() : EVP_aes_256_wrap_pad(), NULL, key,
                           cbc ? iv : NULL) != 1 ||
        EVP_DecryptUpdate(c, out, &n1, ct, (int)ct_len) != 1 ||
        EVP_DecryptFinal_ex(c, out + n1, &n2) != 1)
        goto out;
    /* SoftHSM zero-fills the PKCS#8 to a multiple of 8 before RFC 5649; clients
       (Bouncy Castle) refuse anything after the PrivateKeyInfo. */
    if ((der = der_seq_len(out, (size_t)(n1 + n2))) == 0)
        goto out;
    for (size_t i = der; i < (size_t)(n1 + n2); i++)
        if (out[i] != 0)
            goto out;
    j->plain = out;
    j->plain_len = der;
    out = NULL;
    rc = 0;
out:
    OPENSSL_secure_clear_free(out, ct_len + 16);
    EVP_CIPHER_CTX_free(c);
    ERR_clear_error();
    return rc;
}

static CK_RV export_plain(eg_p11_call *call, skg_job *j, eg_p11_temp_objs *objs,
                          CK_OBJECT_HANDLE priv)
{
    CK_BBOOL yes = CK_TRUE;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ATTRIBUTE t[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_WRAP, &yes, sizeof(yes)}};
    bool cbc = j->caps->cbc_pad == CKR_OK;
    uint8_t iv[IV_LEN], *key = OPENSSL_secure_malloc(CEK_LEN), *ct = NULL;
    CK_MECHANISM mech = {cbc ? CKM_AES_CBC_PAD : CKM_AES_KEY_WRAP_PAD, cbc ? iv : NULL,
                         cbc ? sizeof(iv) : 0};
    CK_OBJECT_HANDLE h;
    size_t ct_len = 0;
    CK_RV rv = CKR_HOST_MEMORY;

    if (key == NULL || RAND_priv_bytes(key, CEK_LEN) != 1 || RAND_bytes(iv, sizeof(iv)) != 1)
        goto out;
    j->step = "C_CreateObject (throwaway AES key)";
    if ((rv = eg_p11_temp_secret_import(call, key, CEK_LEN, t, 2, objs, &h)) != CKR_OK)
        goto out;
    j->step = cbc ? "C_WrapKey (CKM_AES_CBC_PAD)" : "C_WrapKey (CKM_AES_KEY_WRAP_PAD)";
    if ((rv = eg_p11_wrap_alloc(call, &mech, h, priv, &ct, &ct_len)) != CKR_OK)
        goto out;
    j->step = "unwrapping the key";
    rv = unwrap_plain(j, cbc, key, iv, ct, ct_len) == 0 ? CKR_OK : CKR_WRAPPED_KEY_INVALID;
out:
    OPENSSL_secure_clear_free(key, CEK_LEN);
    OPENSSL_free(ct);
    return rv;
}

/* ---- encrypt: the CEK to the recipient, in the token ---- */

static CK_RV wrap_ktri(eg_p11_call *call, skg_job *j, eg_p11_temp_objs *objs, CK_OBJECT_HANDLE cek)
{
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_WRAP, &yes, sizeof(yes)}};
    bool sha256 = j->kt == EG_SKG_RSA_OAEP_SHA256;
    CK_RSA_PKCS_OAEP_PARAMS oaep = {sha256 ? CKM_SHA256 : CKM_SHA_1,
                                    sha256 ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED,
                                    NULL, 0};
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_OBJECT_HANDLE h;
    CK_RV rv;

    if (j->kt == EG_SKG_RSA_PKCS1)
        mech = (CK_MECHANISM){CKM_RSA_PKCS, NULL, 0};
    j->step = "C_CreateObject (recipient's RSA key)";
    if ((rv = eg_p11_temp_public_key(call, j->rpub, t, 1, objs, &h)) != CKR_OK)
        return rv;
    j->step =
        j->kt == EG_SKG_RSA_PKCS1 ? "C_WrapKey (CKM_RSA_PKCS)" : "C_WrapKey (CKM_RSA_PKCS_OAEP)";
    return eg_p11_wrap_alloc(call, &mech, h, cek, &j->ek, &j->ek_len);
}

/*
 * The pre-shared key, looked up before any key is made. It was in the token at
 * start (eg_skg_check_profile); one gone since (deleted, relabelled) or changed
 * is the appliance's fault, not the request's, and says so in j->kek_fault.
 */
static CK_RV find_kek(eg_p11_call *call, skg_job *j)
{
    CK_ULONG len = 0;
    CK_ATTRIBUTE t = {CKA_VALUE_LEN, &len, sizeof(len)};
    CK_RV rv;

    j->step = "finding the pre-shared key";
    j->kek_fault = NULL;
    j->kek_unlisted = false;
    rv = eg_skg_find_secret(call, j->kek, &j->kek_h);
    if (rv == CKR_KEY_HANDLE_INVALID)
        j->kek_fault = "is not in the token (deleted or relabelled since estgated started?)";
    else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
        j->kek_fault = "names more than one secret key in the token";
    if (rv != CKR_OK || (rv = eg_p11_get_attributes(call, j->kek_h, &t, 1)) != CKR_OK)
        return rv;
    if (len != 16 && len != 32) {
        j->kek_fault = "is no longer an AES-128 or AES-256 key";
        return CKR_WRAPPING_KEY_SIZE_RANGE;
    }
    j->kek_bits = (unsigned)len * 8;
    /* The wrap follows from the key's size: one the client did not list it could not undo. */
    if (j->wraps != 0 &&
        (j->wraps & (len == 16 ? EG_SKG_CAP_AES128_WRAP : EG_SKG_CAP_AES256_WRAP)) == 0) {
        j->kek_unlisted = true;
        return CKR_WRAPPING_KEY_SIZE_RANGE;
    }
    return CKR_OK;
}

static CK_RV wrap_kekri(eg_p11_call *call, skg_job *j, CK_OBJECT_HANDLE cek)
{
    CK_MECHANISM mech = {CKM_AES_KEY_WRAP, NULL, 0};

    j->step = "C_WrapKey (CKM_AES_KEY_WRAP, pre-shared key)";
    return eg_p11_wrap_alloc(call, &mech, j->kek_h, cek, &j->ek, &j->ek_len);
}

static CK_RV wrap_kari(eg_p11_call *call, skg_job *j, eg_p11_temp_objs *objs, CK_OBJECT_HANDLE cek)
{
    CK_BBOOL yes = CK_TRUE;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ULONG kek_len = j->kek_bits / 8;
    CK_ATTRIBUTE t[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)},
                        {CKA_VALUE_LEN, &kek_len, sizeof(kek_len)},
                        {CKA_WRAP, &yes, sizeof(yes)}};
    eg_keygen_spec spec = {.type = EG_KEY_EC};
    bool p384 = EVP_PKEY_get_bits(j->rpub) > 256, sha384 = j->kdf == EG_SKG_KDF_SHA384;
    uint8_t *shared = NULL, *peer = NULL;
    size_t shared_len = 0, peer_len;
    CK_ECDH1_DERIVE_PARAMS ecdh;
    CK_MECHANISM derive = {CKM_ECDH1_DERIVE, &ecdh, sizeof(ecdh)};
    CK_MECHANISM wrap = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_OBJECT_HANDLE epub, epriv, kek;
    CK_RV rv = CKR_HOST_MEMORY;

    spec.curve_nid = p384 ? NID_secp384r1 : NID_X9_62_prime256v1;
    peer_len = EVP_PKEY_get1_encoded_public_key(j->rpub, &peer);
    if (peer_len == 0 || eg_skg_kari_shared_info(j->kek_bits, &shared, &shared_len) != 0)
        goto out;
    j->step = "C_GenerateKeyPair (ephemeral ECDH key)";
    if ((rv = eg_skg_temp_pair(call, &spec, CKA_DERIVE, objs, &epub, &epriv)) != CKR_OK ||
        (rv = eg_p11_ec_point(call, epub, &j->eph, &j->eph_len)) != CKR_OK)
        goto out;
    ecdh = (CK_ECDH1_DERIVE_PARAMS){sha384 ? CKD_SHA384_KDF : CKD_SHA256_KDF, shared_len, shared,
                                    peer_len, peer};
    j->step = sha384 ? "C_DeriveKey (CKM_ECDH1_DERIVE, CKD_SHA384_KDF)"
                     : "C_DeriveKey (CKM_ECDH1_DERIVE, CKD_SHA256_KDF)";
    if ((rv = eg_p11_temp_derive(call, &derive, epriv, t, 3, objs, &kek)) != CKR_OK)
        goto out;
    j->step = "C_WrapKey (CKM_AES_KEY_WRAP, agreed key)";
    rv = eg_p11_wrap_alloc(call, &wrap, kek, cek, &j->ek, &j->ek_len);
out:
    OPENSSL_free(shared);
    OPENSSL_free(peer);
    ERR_clear_error();
    return rv;
}

static CK_RV encrypt_key(eg_p11_call *call, skg_job *j, eg_p11_temp_objs *objs,
                         CK_OBJECT_HANDLE priv)
{
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, j->iv, IV_LEN};
    CK_OBJECT_HANDLE cek;
    CK_RV rv;

    j->step = "C_GenerateKey (content-encryption key)";
    if ((rv = make_cek(call, j->cek_bits, objs, &cek)) != CKR_OK)
        return rv;
    j->step = "C_GenerateRandom";
    if ((rv = eg_p11_generate_random(call, j->iv, IV_LEN)) != CKR_OK)
        return rv;
    j->step = "C_WrapKey (CKM_AES_CBC_PAD, the private key)";
    if ((rv = eg_p11_wrap_alloc(call, &cbc, cek, priv, &j->ct, &j->ct_len)) != CKR_OK)
        return rv;
    switch (j->rkind) {
    case EG_SKG_KTRI:
        return wrap_ktri(call, j, objs, cek);
    case EG_SKG_KEKRI:
        return wrap_kekri(call, j, cek);
    case EG_SKG_KARI:
        return wrap_kari(call, j, objs, cek);
    }
    return CKR_ARGUMENTS_BAD;
}

static CK_RV job_fn(eg_p11_call *call, void *arg)
{
    skg_job *j = arg;
    eg_p11_temp_objs objs;
    CK_OBJECT_HANDLE pub, priv;
    CK_RV rv;

    job_out_clear(j); /* a run before a recovery may have left results */
    eg_p11_temp_init(&objs);
    if (j->mode == MODE_ENCRYPT && j->rkind == EG_SKG_KEKRI && (rv = find_kek(call, j)) != CKR_OK)
        goto out;
    j->step = "C_GenerateKeyPair";
    if ((rv = eg_skg_temp_pair(call, &j->spec, CKA_SIGN, &objs, &pub, &priv)) != CKR_OK)
        goto out;
    j->step = "reading the public key";
    if ((rv = j->spec.type == EG_KEY_EC ? eg_p11_ec_point(call, pub, &j->pub, &j->pub_len)
                                        : rsa_public(call, pub, &j->pub, &j->pub_len)) != CKR_OK)
        goto out;
    rv = j->mode == MODE_PLAIN ? export_plain(call, j, &objs, priv)
                               : encrypt_key(call, j, &objs, priv);
out:
    /* Destroyed whatever happened; a failure here matters only if all else went well. */
    if (eg_p11_temp_destroy(call, &objs) != CKR_OK && rv == CKR_OK) {
        j->step = "C_DestroyObject";
        rv = CKR_FUNCTION_FAILED;
    }
    if (rv != CKR_OK)
        job_out_clear(j);
    return rv;
}

/* ---- the request: which key, which protection, which recipient ---- */

static const char *curve_name(int nid)
{
    return nid == NID_secp384r1 ? "P-384" : "P-256";
}

static bool rule_fits(const eg_keyrule_cfg *c, EVP_PKEY *k, int curve)
{
    int bits = EVP_PKEY_get_bits(k);

    if (c->type == EVP_PKEY_EC)
        return EVP_PKEY_get_base_id(k) == EVP_PKEY_EC && c->curve_nid == curve;
    return EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA && bits >= c->min_bits &&
           bits <= (c->max_bits ? c->max_bits : c->min_bits);
}

/*
 * The RSA size generated for an entry, one of the sizes every token makes (NSS
 * refuses others, CKR_ARGUMENTS_BAD): want when it is one and the entry allows
 * it, else the smallest the entry allows above want, else the largest below it.
 * The configuration refuses an entry that allows none of them.
 */
unsigned eg_skg_rsa_bits(const eg_keyrule_cfg *r, int want)
{
    static const int sizes[] = {2048, 3072, 4096};
    int max = r->max_bits ? r->max_bits : r->min_bits, below = 0;

    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        if (sizes[i] < r->min_bits || sizes[i] > max)
            continue;
        if (sizes[i] >= want)
            return (unsigned)sizes[i];
        below = sizes[i];
    }
    return (unsigned)below;
}

/* The CSR's key type (and RSA size, eg_skg_rsa_bits) when the profile generates that, else the
   profile's first. */
static void choose_key(const eg_profile_cfg *cfg, const eg_csr *csr, eg_keygen_spec *spec)
{
    EVP_PKEY *k = eg_csr_pubkey(csr);
    const eg_keyrule_cfg *r = NULL;
    int curve = NID_undef;
    char group[64];

    if (k != NULL && EVP_PKEY_get_base_id(k) == EVP_PKEY_EC &&
        EVP_PKEY_get_group_name(k, group, sizeof(group), NULL) == 1)
        curve =
            EC_curve_nist2nid(group) != NID_undef ? EC_curve_nist2nid(group) : OBJ_txt2nid(group);
    for (size_t i = 0; k != NULL && r == NULL && i < cfg->nskg_keys; i++)
        if (rule_fits(&cfg->skg_keys[i], k, curve))
            r = &cfg->skg_keys[i];
    memset(spec, 0, sizeof(*spec));
    if (r != NULL && r->type == EVP_PKEY_RSA) {
        spec->type = EG_KEY_RSA;
        spec->bits = eg_skg_rsa_bits(r, EVP_PKEY_get_bits(k));
        return;
    }
    if (r == NULL)
        r = &cfg->skg_keys[0];
    spec->type = r->type == EVP_PKEY_RSA ? EG_KEY_RSA : EG_KEY_EC;
    spec->bits = r->type == EVP_PKEY_RSA ? eg_skg_rsa_bits(r, 0) : 0;
    spec->curve_nid = r->curve_nid;
    ERR_clear_error();
}

static bool cert_has_ski(X509 *x, const uint8_t *ski, size_t len)
{
    const ASN1_OCTET_STRING *s = X509_get0_subject_key_id(x);

    return s != NULL && (size_t)ASN1_STRING_length(s) == len &&
           memcmp(ASN1_STRING_get0_data(s), ski, len) == 0;
}

/* A KTRI/KARI recipient certificate may be used for this (RFC 7030 4.4.1.2). */
static bool cert_usage_ok(X509 *x, bool rsa)
{
    uint32_t ku = X509_get_key_usage(x);

    if (ku == UINT32_MAX) /* no keyUsage: no restriction */
        return true;
    return (ku & (rsa ? KU_KEY_ENCIPHERMENT : KU_KEY_AGREEMENT)) != 0;
}

typedef struct skg_plan {
    skg_mode mode;
    eg_skg_rkind rkind;
    EVP_PKEY *rpub; /* borrowed */
    X509 *rcert;    /* borrowed; NULL for the CSR's key */
    uint8_t ski[SHA_DIGEST_LENGTH];
    const uint8_t *rid_ski;
    size_t rid_ski_len;
    int kt;
    const eg_skg_kek_cfg *kek;
    const eg_p11_uri *kek_uri;
    unsigned cek_bits;      /* the content cipher: 128 or 256 */
    eg_skg_kdf kdf;         /* KARI */
    unsigned kari_kek_bits; /* KARI: the agreed KEK, and so its wrap: 128 or 256 */
    unsigned wraps;         /* KEKRI: the wraps the client listed (0: none), checked against the
                               pre-shared key's size once the token has said it */
} skg_plan;

static const char *kt_name(int kt)
{
    return kt == EG_SKG_RSA_OAEP_SHA256 ? "oaep-sha256"
           : kt == EG_SKG_RSA_OAEP_SHA1 ? "oaep-sha1"
                                        : "pkcs1";
}

#define KT_CAPS   (EG_SKG_CAP_OAEP_SHA1 | EG_SKG_CAP_OAEP_SHA256 | EG_SKG_CAP_PKCS1)
#define KA_CAPS   (EG_SKG_CAP_ECDH_SHA256 | EG_SKG_CAP_ECDH_SHA384)
#define WRAP_CAPS (EG_SKG_CAP_AES128_WRAP | EG_SKG_CAP_AES256_WRAP)
#define CBC_CAPS  (EG_SKG_CAP_AES128_CBC | EG_SKG_CAP_AES256_CBC)

/*
 * RFC 8551 2.5.2: the algorithms of one kind (its EG_SKG_CAP_* bits) that the
 * client listed; dflt, what a client that says nothing gets, when it listed
 * none of that kind (or sent no SMIMECapabilities).
 */
static unsigned listed(const eg_skg_protect *pr, unsigned kind, unsigned dflt)
{
    unsigned l = pr->has_caps ? pr->caps & kind : 0;

    return l != 0 ? l : dflt;
}

/* The key-transport algorithms the profile allows and the token does, as EG_SKG_CAP_* bits. */
static unsigned kt_can(const eg_profile_cfg *cfg, const eg_skg_caps *caps)
{
    static const unsigned cap_bit[] = {EG_SKG_CAP_OAEP_SHA1, EG_SKG_CAP_OAEP_SHA256,
                                       EG_SKG_CAP_PKCS1};
    unsigned can = 0;

    for (size_t i = 0; i < cfg->nskg_rsa; i++)
        if (caps->kt[cfg->skg_rsa[i]] == CKR_OK)
            can |= cap_bit[cfg->skg_rsa[i]];
    return can;
}

/*
 * The first of the profile's key-transport algorithms the token and the client both do; a
 * client that lists none (only a content cipher, say) leaves it to the profile's order.
 */
static int choose_kt(const eg_profile_cfg *cfg, const eg_skg_caps *caps, const eg_skg_protect *pr)
{
    static const unsigned cap_bit[] = {EG_SKG_CAP_OAEP_SHA1, EG_SKG_CAP_OAEP_SHA256,
                                       EG_SKG_CAP_PKCS1};
    unsigned asked = listed(pr, KT_CAPS, KT_CAPS);

    for (size_t i = 0; i < cfg->nskg_rsa; i++) {
        int kt = cfg->skg_rsa[i];

        if (caps->kt[kt] == CKR_OK && (asked & cap_bit[kt]) != 0)
            return kt;
    }
    return -1;
}

static const char *cap_name(unsigned bit)
{
    switch (bit) {
    case EG_SKG_CAP_OAEP_SHA1:
        return "id-RSAES-OAEP (SHA-1)";
    case EG_SKG_CAP_OAEP_SHA256:
        return "id-RSAES-OAEP (SHA-256)";
    case EG_SKG_CAP_PKCS1:
        return "rsaEncryption";
    case EG_SKG_CAP_AES128_WRAP:
        return "id-aes128-wrap";
    case EG_SKG_CAP_AES256_WRAP:
        return "id-aes256-wrap";
    case EG_SKG_CAP_AES128_CBC:
        return "id-aes128-CBC";
    case EG_SKG_CAP_AES256_CBC:
        return "id-aes256-CBC";
    case EG_SKG_CAP_ECDH_SHA256:
        return "dhSinglePass-stdDH-sha256kdf-scheme";
    case EG_SKG_CAP_ECDH_SHA384:
        return "dhSinglePass-stdDH-sha384kdf-scheme";
    default:
        return "?";
    }
}

/* The names of bits' capabilities, ", " between them, in buf; "none" for none. */
static const char *cap_names(unsigned bits, char *buf, size_t cap)
{
    size_t n = 0;

    snprintf(buf, cap, "none");
    for (unsigned b = 1; b != 0 && b <= bits; b <<= 1)
        if ((bits & b) != 0 && n < cap)
            n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", cap_name(b));
    return buf;
}

/*
 * A refusal for algorithms of one kind (what: "key agreement") that the client
 * listed and the token cannot do here: what it listed, what estgate can do
 * instead for this recipient (can), and the token's answer (detail).
 */
static eg_status cannot(char *why, size_t cap, const char *what, unsigned asked, unsigned can,
                        const char *detail)
{
    char a[80], c[80];

    snprintf(why, cap,
             "the request's SMIMECapabilities list only %s for %s; for this recipient estgate "
             "can do %s%s (%s)",
             cap_names(asked, a, sizeof(a)), what, cap_names(can, c, sizeof(c)),
             can != 0 ? ": list it" : "", detail);
    return EG_MALFORMED;
}

/*
 * KARI's KDF and key wrap, among those the client listed that the token did
 * for this curve; the curve's own KDF and id-aes256-wrap first, as before
 * there was a choice (and for a client that lists none).
 */
static eg_status choose_kari(const eg_skg_caps *caps, const eg_skg_protect *pr, int curve,
                             skg_plan *pl, char *why, size_t cap)
{
    static const unsigned kdf_bit[2] = {EG_SKG_CAP_ECDH_SHA256, EG_SKG_CAP_ECDH_SHA384};
    static const char *const kdf_ck[2] = {"CKD_SHA256_KDF", "CKD_SHA384_KDF"};
    unsigned asked = listed(pr, KA_CAPS, kdf_bit[curve]), can = 0;
    int k = -1;
    char detail[96];

    for (int i = 0; i < 2; i++)
        if (caps->kari[curve][i] == CKR_OK)
            can |= kdf_bit[i];
    if ((asked & can & kdf_bit[curve]) != 0)
        k = curve;
    else if ((asked & can & kdf_bit[!curve]) != 0)
        k = !curve;
    if (k < 0 && (!pr->has_caps || (pr->caps & KA_CAPS) == 0)) {
        snprintf(why, cap,
                 "the token cannot agree a key with a %s recipient (CKM_ECDH1_DERIVE with %s: %s)",
                 curve ? "P-384" : "P-256", kdf_ck[curve],
                 eg_p11_rv_name(caps->kari[curve][curve]));
        return EG_MALFORMED;
    }
    if (k < 0) {
        int shown = (asked & kdf_bit[curve]) != 0 ? curve : !curve;

        snprintf(detail, sizeof(detail), "%s on %s: %s", kdf_ck[shown], curve ? "P-384" : "P-256",
                 eg_p11_rv_name(caps->kari[curve][shown]));
        return cannot(why, cap, "key agreement", asked, can, detail);
    }
    pl->kdf = k ? EG_SKG_KDF_SHA384 : EG_SKG_KDF_SHA256;
    asked = listed(pr, WRAP_CAPS, EG_SKG_CAP_AES256_WRAP);
    can = EG_SKG_CAP_AES256_WRAP | (caps->kari128 == CKR_OK ? EG_SKG_CAP_AES128_WRAP : 0);
    if ((asked & EG_SKG_CAP_AES256_WRAP) != 0) {
        pl->kari_kek_bits = 256;
    } else if ((can & EG_SKG_CAP_AES128_WRAP) != 0) {
        pl->kari_kek_bits = 128;
    } else {
        snprintf(detail, sizeof(detail), "an AES-128 KEK by CKM_ECDH1_DERIVE: %s",
                 eg_p11_rv_name(caps->kari128));
        return cannot(why, cap, "key wrap", asked, can, detail);
    }
    return EG_OK;
}

/* The content cipher, among those the client listed: id-aes256-CBC first. */
static eg_status choose_content(const eg_skg_caps *caps, const eg_skg_protect *pr, skg_plan *pl,
                                char *why, size_t cap)
{
    unsigned asked = listed(pr, CBC_CAPS, EG_SKG_CAP_AES256_CBC);
    char detail[96];

    /* AES-256 with CKM_AES_CBC_PAD was probed at start: encrypt is refused without it. */
    if ((asked & EG_SKG_CAP_AES256_CBC) != 0) {
        pl->cek_bits = 256;
    } else if (caps->cbc_pad128 == CKR_OK) {
        pl->cek_bits = 128;
    } else {
        snprintf(detail, sizeof(detail), "CKM_AES_CBC_PAD under an AES-128 key: %s",
                 eg_p11_rv_name(caps->cbc_pad128));
        return cannot(why, cap, "content encryption", asked,
                      caps->cbc_pad == CKR_OK ? EG_SKG_CAP_AES256_CBC : 0, detail);
    }
    return EG_OK;
}

/* An RSA or EC recipient key: the kind, the algorithm, and whether the token can serve it. */
static eg_status plan_asym(const eg_profile_cfg *cfg, const eg_skg_caps *caps,
                           const eg_skg_protect *pr, skg_plan *pl, char *why, size_t cap)
{
    int type = EVP_PKEY_get_base_id(pl->rpub), bits = EVP_PKEY_get_bits(pl->rpub);

    if (type == EVP_PKEY_RSA) {
        /* Too small to carry a 256-bit content key under OAEP, and too weak to protect one. */
        if (bits < 2048) {
            snprintf(why, cap, "the recipient's RSA key has %d bits; at least 2048 are needed",
                     bits);
            return EG_MALFORMED;
        }
        if (pr->has_caps && (pr->caps & KT_CAPS) == 0 && (pr->caps & KA_CAPS) != 0) {
            snprintf(why, cap,
                     "the recipient is an RSA key, which cannot do the key agreement "
                     "the request's SMIMECapabilities ask for");
            return EG_MALFORMED;
        }
        if ((pl->kt = choose_kt(cfg, caps, pr)) < 0)
            return cannot(why, cap, "key transport", listed(pr, KT_CAPS, KT_CAPS),
                          kt_can(cfg, caps), "serverkeygen_rsa, done by the token");
        pl->rkind = EG_SKG_KTRI;
        return EG_OK;
    }
    if (type != EVP_PKEY_EC) {
        snprintf(why, cap, "the recipient key is neither RSA nor EC");
        return EG_MALFORMED;
    }
    if (pr->has_caps && (pr->caps & KA_CAPS) == 0 && (pr->caps & KT_CAPS) != 0) {
        snprintf(why, cap,
                 "an EC key cannot be a key-transport recipient; the request's "
                 "SMIMECapabilities list only RSA key transport");
        return EG_MALFORMED;
    }
    if (bits != 256 && bits != 384) {
        snprintf(why, cap, "an EC recipient must be on P-256 or P-384");
        return EG_MALFORMED;
    }
    pl->rkind = EG_SKG_KARI;
    return choose_kari(caps, pr, bits == 384, pl, why, cap);
}

/* RFC 7030 4.4.1.1/4.4.1.2: the recipient the request names, or the CSR's own key. */
static eg_status plan_recipient(const eg_profile_cfg *cfg, const eg_skg_profile *sp,
                                const eg_skg_caps *caps, const eg_csr *csr,
                                const eg_skg_protect *pr, skg_plan *pl, char *why, size_t cap)
{
    bool named = pr->decrypt_kid != NULL || pr->asym_kid != NULL;
    bool asks = named || (pr->has_caps && (pr->caps & (KT_CAPS | KA_CAPS)) != 0);

    memset(pl, 0, sizeof(*pl));
    if (!(cfg->skg_modes & EG_SKG_ENCRYPT) && named) {
        snprintf(why, cap,
                 "this profile returns keys only in plaintext (over TLS); leave out "
                 "the DecryptKeyIdentifier and AsymmetricDecryptKeyIdentifier");
        return EG_MALFORMED;
    }
    if (!(cfg->skg_modes & EG_SKG_ENCRYPT) || (!asks && (cfg->skg_modes & EG_SKG_PLAINTEXT))) {
        pl->mode = MODE_PLAIN;
        return EG_OK;
    }
    pl->mode = MODE_ENCRYPT;
    if (pr->decrypt_kid != NULL) {
        for (size_t i = 0; i < cfg->nskg_keks; i++) {
            if (cfg->skg_keks[i].id_len == pr->decrypt_kid_len &&
                memcmp(cfg->skg_keks[i].id, pr->decrypt_kid, pr->decrypt_kid_len) == 0) {
                pl->kek = &cfg->skg_keks[i];
                pl->kek_uri = sp->keks[i];
            }
        }
        if (pl->kek == NULL) {
            snprintf(why, cap, "no pre-shared key has the request's DecryptKeyIdentifier");
            return EG_MALFORMED;
        }
        pl->rkind = EG_SKG_KEKRI;
        pl->wraps = pr->has_caps ? pr->caps & WRAP_CAPS : 0;
        return EG_OK;
    }
    if (pr->asym_kid != NULL) {
        for (int i = 0; pl->rcert == NULL && i < sk_X509_num(sp->recipients); i++)
            if (cert_has_ski(sk_X509_value(sp->recipients, i), pr->asym_kid, pr->asym_kid_len))
                pl->rcert = sk_X509_value(sp->recipients, i);
        if (pl->rcert == NULL) {
            snprintf(why, cap,
                     "no recipient certificate has the request's "
                     "AsymmetricDecryptKeyIdentifier");
            return EG_MALFORMED;
        }
        pl->rpub = X509_get0_pubkey(pl->rcert);
        pl->rid_ski = pr->asym_kid;
        pl->rid_ski_len = pr->asym_kid_len;
        if (pl->rpub != NULL &&
            !cert_usage_ok(pl->rcert, EVP_PKEY_get_base_id(pl->rpub) == EVP_PKEY_RSA)) {
            snprintf(why, cap,
                     "the recipient certificate's keyUsage allows neither key "
                     "transport nor key agreement");
            return EG_MALFORMED;
        }
    } else if (cfg->skg_csr_key) {
        X509_PUBKEY *tmp = NULL;
        const unsigned char *bits = NULL;
        int n = 0;

        /* The CSR's own key, named by the RFC 5280 4.2.1.2 (1) key identifier. */
        if ((pl->rpub = eg_csr_pubkey(csr)) != NULL && X509_PUBKEY_set(&tmp, pl->rpub) == 1 &&
            X509_PUBKEY_get0_param(NULL, &bits, &n, NULL, tmp) == 1 &&
            SHA1(bits, (size_t)n, pl->ski) != NULL) {
            pl->rid_ski = pl->ski;
            pl->rid_ski_len = sizeof(pl->ski);
        }
        X509_PUBKEY_free(tmp);
        if (pl->rid_ski == NULL) {
            snprintf(why, cap, "the CSR's public key cannot be read to encrypt to it");
            return EG_MALFORMED;
        }
    } else if (cfg->skg_modes & EG_SKG_PLAINTEXT) {
        /* Here only an SMIMECapabilities listing key transport or agreement asked for it. */
        snprintf(why, cap,
                 "this request asks for encryption (its SMIMECapabilities list key transport "
                 "or agreement) but names no recipient: add a DecryptKeyIdentifier or "
                 "AsymmetricDecryptKeyIdentifier, or list neither to get the key in plaintext");
        return EG_MALFORMED;
    } else {
        snprintf(why, cap,
                 "this profile returns keys encrypted only: name the recipient with a "
                 "DecryptKeyIdentifier or AsymmetricDecryptKeyIdentifier attribute");
        return EG_MALFORMED;
    }
    if (pl->rpub == NULL) {
        snprintf(why, cap, "the recipient's public key cannot be read");
        return EG_MALFORMED;
    }
    return plan_asym(cfg, caps, pr, pl, why, cap);
}

/*
 * The recipient and every algorithm, before the token makes anything: RFC 8551
 * 2.5.2 (RFC 7030 4.4.2), among those the client listed in SMIMECapabilities
 * that the token can do, or estgate's default for a kind it listed none of.
 */
static eg_status plan(const eg_profile_cfg *cfg, const eg_skg_profile *sp, const eg_skg_caps *caps,
                      const eg_csr *csr, const eg_skg_protect *pr, skg_plan *pl, char *why,
                      size_t cap)
{
    eg_status st = plan_recipient(cfg, sp, caps, csr, pr, pl, why, cap);

    if (st != EG_OK || pl->mode != MODE_ENCRYPT)
        return st;
    return choose_content(caps, pr, pl, why, cap);
}

static int envelope(const skg_job *j, const skg_plan *pl, const eg_skg_kek_cfg *kek,
                    eg_skg_result *out)
{
    eg_skg_recipient r = {
        .kind = j->rkind,
        .rid = {.ski = pl->rid_ski, .ski_len = pl->rid_ski_len, .cert = pl->rcert},
        .kt = (eg_skg_kt)j->kt,
        .kekid = kek != NULL ? kek->id : NULL,
        .kekid_len = kek != NULL ? kek->id_len : 0,
        .kek_bits = j->kek_bits,
        .curve_nid = j->rkind == EG_SKG_KARI && EVP_PKEY_get_bits(j->rpub) > 256
                         ? NID_secp384r1
                         : NID_X9_62_prime256v1,
        .kdf = j->kdf,
        .originator_point = j->eph,
        .originator_point_len = j->eph_len,
        .encrypted_key = j->ek,
        .encrypted_key_len = j->ek_len,
    };
    eg_skg_envelope env = {
        .recipient = &r,
        .cek_bits = j->cek_bits,
        .iv = j->iv,
        .ciphertext = j->ct,
        .ciphertext_len = j->ct_len,
        .content = EG_SKG_CONTENT_DATA,
    };

    return eg_skg_envelope_der(&env, &out->key, &out->key_len);
}

static void describe(const skg_job *j, const skg_plan *pl, eg_skg_result *out)
{
    char key[32];

    if (j->spec.type == EG_KEY_RSA)
        snprintf(key, sizeof(key), "rsa:%u", j->spec.bits);
    else
        snprintf(key, sizeof(key), "ec:%s", curve_name(j->spec.curve_nid));
    if (pl->mode == MODE_PLAIN)
        snprintf(out->what, sizeof(out->what), "key=%s mode=plaintext", key);
    else if (pl->rkind == EG_SKG_KEKRI)
        snprintf(out->what, sizeof(out->what), "key=%s mode=encrypt recipient=kek-%u content=aes%u",
                 key, j->kek_bits, j->cek_bits);
    else if (pl->rkind == EG_SKG_KTRI)
        snprintf(out->what, sizeof(out->what),
                 "key=%s mode=encrypt recipient=rsa-%s%s content=aes%u", key, kt_name(j->kt),
                 pl->rcert == NULL ? " (csr key)" : "", j->cek_bits);
    else /* the chosen algorithms, since the client may have asked for other than the default */
        snprintf(out->what, sizeof(out->what),
                 "key=%s mode=encrypt recipient=ecdh-%s%s kdf=sha%d wrap=aes%u content=aes%u", key,
                 EVP_PKEY_get_bits(pl->rpub) > 256 ? "P-384" : "P-256",
                 pl->rcert == NULL ? " (csr key)" : "", j->kdf == EG_SKG_KDF_SHA384 ? 384 : 256,
                 j->kek_bits, j->cek_bits);
}

/* Token answers that say the request cannot be served as asked, not that the token is down. */
static bool request_refusal(CK_RV rv)
{
    switch (rv) {
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_KEY_NOT_WRAPPABLE:
    case CKR_KEY_SIZE_RANGE:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_WRAPPING_KEY_SIZE_RANGE:
    case CKR_WRAPPING_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_HANDLE_INVALID:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_ARGUMENTS_BAD:  /* NSS: an RSA size that is not a multiple of 16 */
    case CKR_DATA_LEN_RANGE: /* the content key does not fit the recipient's key */
        return true;
    default:
        return false;
    }
}

eg_status eg_skg_generate(eg_token *tok, const eg_skg_caps *caps, const eg_profile_cfg *cfg,
                          const eg_skg_profile *sp, const eg_csr *csr, eg_skg_result *out,
                          char *why, size_t cap)
{
    eg_skg_protect pr = {0};
    skg_plan pl;
    skg_job j = {.caps = caps};
    eg_skg_result r = {0};
    eg_status st;
    CK_RV rv;

    if (eg_skg_protect_read(eg_csr_attributes(csr), &pr, why, cap) != 0)
        return EG_MALFORMED;
    if ((st = plan(cfg, sp, caps, csr, &pr, &pl, why, cap)) != EG_OK)
        goto out;
    choose_key(cfg, csr, &j.spec);
    j.mode = pl.mode;
    j.rkind = pl.rkind;
    j.rpub = pl.rpub;
    j.kt = pl.kt;
    j.kek = pl.kek_uri;
    j.cek_bits = pl.cek_bits;
    j.kdf = pl.kdf;
    j.kek_bits = pl.kari_kek_bits;
    j.wraps = pl.wraps;
    rv = eg_token_run_keygen(tok, &j.spec, job_fn, &j);
    if (rv != CKR_OK && j.kek_unlisted) {
        char a[80];

        snprintf(why, cap,
                 "the request's SMIMECapabilities list only %s for key wrap; the pre-shared key "
                 "its DecryptKeyIdentifier names is AES-%u, which wraps with id-aes%u-wrap only: "
                 "list that, or name an AES-%u key",
                 cap_names(pl.wraps, a, sizeof(a)), j.kek_bits, j.kek_bits,
                 j.kek_bits == 128 ? 256 : 128);
        st = EG_MALFORMED;
        goto out;
    }
    if (rv != CKR_OK && j.kek_fault != NULL) {
        snprintf(why, cap,
                 "serverkeygen_kek %s %s: import it again (estgate-provision kek import) "
                 "or remove the line and reload",
                 pl.kek->uri, j.kek_fault);
        st = EG_UNAVAILABLE;
        goto out;
    }
    if (rv != CKR_OK) {
        bool refused = request_refusal(rv);

        snprintf(why, cap, "the token could not make the key (%s: %s)", j.step, eg_p11_rv_name(rv));
        st = rv == CKR_DEVICE_MEMORY || rv == CKR_HOST_MEMORY ? EG_UNAVAILABLE
             : refused                                        ? EG_MALFORMED
                                                              : EG_UNAVAILABLE;
        goto out;
    }
    describe(&j, &pl, &r);
    if (pl.mode == MODE_PLAIN) {
        r.key = j.plain;
        r.key_len = j.plain_len;
        r.key_secure = true;
        r.key_ctype = EG_SKG_CT_PKCS8;
        j.plain = NULL;
        j.plain_len = 0;
    } else if (envelope(&j, &pl, pl.kek, &r) != 0) {
        snprintf(why, cap, "the EnvelopedData could not be assembled");
        st = EG_INTERNAL;
        goto out;
    } else {
        r.key_ctype = EG_SKG_CT_ENVELOPED;
    }
    r.pub = (eg_pubkey_bits){
        .type = j.spec.type == EG_KEY_RSA ? EVP_PKEY_RSA : EVP_PKEY_EC,
        .curve_nid = j.spec.curve_nid,
        .bits = j.pub,
        .len = j.pub_len,
    };
    j.pub = NULL;
    *out = r;
    memset(&r, 0, sizeof(r));
    st = EG_OK;
out:
    eg_skg_result_clear(&r);
    job_out_clear(&j);
    eg_skg_protect_clear(&pr);
    ERR_clear_error();
    return st;
}

eg_status eg_skg_mode(const eg_skg_caps *caps, const eg_profile_cfg *cfg, const eg_skg_profile *sp,
                      const eg_csr *csr, bool *encrypt, char *why, size_t cap)
{
    eg_skg_protect pr = {0};
    skg_plan pl;
    eg_status st = EG_MALFORMED;

    if (eg_skg_protect_read(eg_csr_attributes(csr), &pr, why, cap) == 0 &&
        (st = plan(cfg, sp, caps, csr, &pr, &pl, why, cap)) == EG_OK)
        *encrypt = pl.mode == MODE_ENCRYPT;
    eg_skg_protect_clear(&pr);
    ERR_clear_error();
    return st;
}

/* ---- profile state ---- */

int eg_skg_profile_load(const eg_profile_cfg *cfg, eg_skg_profile *out, char *err, size_t cap)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < cfg->nskg_keks; i++) {
        if (eg_p11_uri_parse(cfg->skg_keks[i].uri, &out->keks[i]) != 0) {
            ERR_clear_error();
            snprintf(err, cap, "serverkeygen_kek %s is not a PKCS#11 URI", cfg->skg_keks[i].uri);
            eg_skg_profile_clear(out);
            return -1;
        }
    }
    if (cfg->skg_recipients_file == NULL)
        return 0;
    if ((out->recipients = eg_pem_read_certs(cfg->skg_recipients_file)) == NULL) {
        snprintf(err, cap, "no certificate in %s", cfg->skg_recipients_file);
        eg_skg_profile_clear(out);
        return -1;
    }
    return 0;
}

void eg_skg_profile_clear(eg_skg_profile *p)
{
    if (p == NULL)
        return;
    sk_X509_pop_free(p->recipients, X509_free);
    p->recipients = NULL;
    for (size_t i = 0; i < EG_MAX_KEKS; i++) {
        eg_p11_uri_free(p->keks[i]);
        p->keks[i] = NULL;
    }
}
