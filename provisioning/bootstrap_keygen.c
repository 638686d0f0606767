/*
 * Token-generated device keys. The key pair is made in the token as session
 * objects (sensitive, extractable only by wrapping), a session AES-256 key
 * wraps the private key (CKM_AES_KEY_WRAP_PAD, RFC 5649), and the device's
 * RSA transport key, imported as a session object, wraps the AES key
 * (CKM_RSA_PKCS_OAEP, SHA-1, MGF1-SHA-1, no label: what SoftHSM 2.6.1 has).
 * Only ciphertext reaches this process. Every object is destroyed before the
 * callback returns; a lost session takes them with it.
 *
 * Output (DER, PEM label "ESTGATE WRAPPED KEY"; docs/factory-line.md):
 *   EstgateWrappedKey ::= SEQUENCE {
 *     version        INTEGER (1),
 *     encryptedKey   OCTET STRING, -- RSAES-OAEP(SHA-1) of the AES-256 key
 *     wrappedKey     OCTET STRING, -- AES-256 key wrap with padding of PKCS#8
 *     transportKeyId OCTET STRING  -- SHA-256 of the transport key's SPKI DER
 *   }
 */
#include <stdio.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "bootstrap.h"
#include "provision.h"
#include "report.h"

static const struct {
    CK_MECHANISM_TYPE mech;
    CK_FLAGS flag;
    const char *name;
} needed[] = {
    {CKM_AES_KEY_GEN, CKF_GENERATE, "CKM_AES_KEY_GEN"},
    {CKM_AES_KEY_WRAP_PAD, CKF_WRAP, "CKM_AES_KEY_WRAP_PAD (wrap)"},
    {CKM_RSA_PKCS_OAEP, CKF_WRAP, "CKM_RSA_PKCS_OAEP (wrap)"},
};

bool eg_bs_keygen_supported(eg_token *tok, const char **missing)
{
    size_t i;

    for (i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
        if (!eg_token_has_mechanism(tok, needed[i].mech, needed[i].flag)) {
            *missing = needed[i].name;
            return false;
        }
    }
    return true;
}

struct keygen_args {
    eg_p11_keyparams kp;
    EVP_PKEY *transport;
    EVP_PKEY *pub;    /* out */
    uint8_t *kt, *wk; /* out: OAEP-wrapped AES key, KWP-wrapped PKCS#8 */
    size_t ktlen, wklen;
    const char *step; /* the call that failed, for the message */
};

static void keygen_out_clear(struct keygen_args *a)
{
    EVP_PKEY_free(a->pub);
    OPENSSL_free(a->kt);
    OPENSSL_free(a->wk);
    a->pub = NULL;
    a->kt = a->wk = NULL;
}

static CK_RV keygen_objects(eg_p11_call *call, struct keygen_args *a, eg_p11_temp_objs *objs,
                            CK_OBJECT_HANDLE h[4])
{
    CK_BBOOL yes = CK_TRUE;
    CK_ULONG aes_len = 32;
    CK_MECHANISM aes_gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE pub[3] = {a->kp.attrs[0], a->kp.attrs[1], {CKA_VERIFY, &yes, sizeof(yes)}};
    CK_ATTRIBUTE priv[] = {{CKA_SIGN, &yes, sizeof(yes)}};
    CK_ATTRIBUTE aes[] = {{CKA_VALUE_LEN, &aes_len, sizeof(aes_len)},
                          {CKA_WRAP, &yes, sizeof(yes)},
                          {CKA_EXTRACTABLE, &yes, sizeof(yes)}};
    CK_ATTRIBUTE rsa[] = {{CKA_WRAP, &yes, sizeof(yes)}};
    CK_RV rv;

    /* attrs[1] is unused for EC: the public template takes the key parameters, then CKA_VERIFY. */
    if (a->kp.n == 1)
        pub[1] = pub[2];
    a->step = "C_GenerateKeyPair";
    if ((rv = eg_p11_temp_keypair(call, &a->kp.mech, pub, a->kp.n + 1, priv, 1, objs, &h[0],
                                  &h[1])) != CKR_OK)
        return rv;
    a->step = "C_GenerateKey (AES-256)";
    if ((rv = eg_p11_temp_secret_key(call, &aes_gen, aes, 3, objs, &h[2])) != CKR_OK)
        return rv;
    a->step = "C_CreateObject (transport key)";
    return eg_p11_temp_public_key(call, a->transport, rsa, 1, objs, &h[3]);
}

static CK_RV keygen_fn(eg_p11_call *call, void *arg)
{
    struct keygen_args *a = arg;
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_MECHANISM rsa = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_OBJECT_HANDLE h[4]; /* public, private, AES, transport */
    eg_p11_temp_objs objs;
    CK_RV rv;

    keygen_out_clear(a); /* a run before a recovery may have left results */
    eg_p11_temp_init(&objs);
    if ((rv = keygen_objects(call, a, &objs, h)) != CKR_OK)
        goto out;
    a->step = "C_WrapKey (CKM_AES_KEY_WRAP_PAD)";
    if ((rv = eg_p11_wrap_alloc(call, &kwp, h[2], h[1], &a->wk, &a->wklen)) != CKR_OK)
        goto out;
    a->step = "C_WrapKey (CKM_RSA_PKCS_OAEP)";
    if ((rv = eg_p11_wrap_alloc(call, &rsa, h[3], h[2], &a->kt, &a->ktlen)) != CKR_OK)
        goto out;
    a->step = "reading the public key";
    rv = eg_p11_object_public(call, h[0], &a->pub);
out:
    /* Destroyed whatever happened; a failure here matters only if all else went well. */
    if (eg_p11_temp_destroy(call, &objs) != CKR_OK && rv == CKR_OK) {
        a->step = "C_DestroyObject";
        rv = CKR_FUNCTION_FAILED;
    }
    if (rv != CKR_OK)
        keygen_out_clear(a);
    return rv;
}

/* Token answers that concern what this row asks for, not the token's health. */
static bool row_refusal(CK_RV rv)
{
    switch (rv) {
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_FUNCTION_NOT_SUPPORTED:
    case CKR_KEY_NOT_WRAPPABLE:
    case CKR_KEY_SIZE_RANGE:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_WRAPPING_KEY_SIZE_RANGE:
    case CKR_WRAPPING_KEY_TYPE_INCONSISTENT:
    case CKR_TEMPLATE_INCONSISTENT:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_DOMAIN_PARAMS_INVALID:
        return true;
    default:
        return false;
    }
}

static int push_octets(STACK_OF(ASN1_TYPE) * sk, const uint8_t *b, size_t len)
{
    ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
    ASN1_TYPE *t = ASN1_TYPE_new();

    if (os == NULL || t == NULL || ASN1_OCTET_STRING_set(os, b, (int)len) != 1) {
        ASN1_OCTET_STRING_free(os);
        ASN1_TYPE_free(t);
        return -1;
    }
    ASN1_TYPE_set(t, V_ASN1_OCTET_STRING, os);
    if (sk_ASN1_TYPE_push(sk, t) <= 0) {
        ASN1_TYPE_free(t);
        return -1;
    }
    return 0;
}

static int push_version(STACK_OF(ASN1_TYPE) * sk)
{
    ASN1_INTEGER *v = ASN1_INTEGER_new();
    ASN1_TYPE *t = ASN1_TYPE_new();

    if (v == NULL || t == NULL || ASN1_INTEGER_set(v, 1) != 1) {
        ASN1_INTEGER_free(v);
        ASN1_TYPE_free(t);
        return -1;
    }
    ASN1_TYPE_set(t, V_ASN1_INTEGER, v);
    if (sk_ASN1_TYPE_push(sk, t) <= 0) {
        ASN1_TYPE_free(t);
        return -1;
    }
    return 0;
}

/* The EstgateWrappedKey DER; 0 or -1. */
static int encode(const struct keygen_args *a, uint8_t **out, size_t *outlen)
{
    STACK_OF(ASN1_TYPE) *sk = sk_ASN1_TYPE_new_null();
    unsigned char *spki = NULL, *der = NULL, kid[32];
    int n = -1, slen;

    if (sk == NULL || (slen = i2d_PUBKEY(a->transport, &spki)) <= 0 ||
        EVP_Digest(spki, (size_t)slen, kid, NULL, EVP_sha256(), NULL) != 1)
        goto out;
    if (push_version(sk) != 0 || push_octets(sk, a->kt, a->ktlen) != 0 ||
        push_octets(sk, a->wk, a->wklen) != 0 || push_octets(sk, kid, sizeof(kid)) != 0)
        goto out;
    if ((n = i2d_ASN1_SEQUENCE_ANY(sk, &der)) > 0) {
        *out = der;
        *outlen = (size_t)n;
    }
out:
    sk_ASN1_TYPE_pop_free(sk, ASN1_TYPE_free);
    OPENSSL_free(spki);
    return n > 0 ? 0 : -1;
}

int eg_bs_keygen(eg_token *tok, const eg_keygen_spec *spec, EVP_PKEY *transport, EVP_PKEY **pub,
                 uint8_t **wrapped, size_t *wrappedlen, char *why)
{
    struct keygen_args a;
    CK_RV rv;
    int rc;

    memset(&a, 0, sizeof(a));
    a.transport = transport;
    if (eg_p11_keyparams_init(&a.kp, spec) != 0)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "key parameters");
    if ((rv = eg_token_run_keygen(tok, spec, keygen_fn, &a)) != CKR_OK) {
        if (row_refusal(rv)) {
            snprintf(why, EG_BS_WHY_MAX, "the token refused %s: %s", a.step, eg_p11_rv_name(rv));
            rc = EG_EXIT_DATAERR;
        } else {
            rc = eg_prov_fail(EG_EXIT_UNAVAILABLE, "token '%s': %s: %s", eg_token_label(tok),
                              a.step, eg_p11_rv_name(rv));
        }
        goto out;
    }
    if (encode(&a, wrapped, wrappedlen) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot encode the wrapped key");
        goto out;
    }
    *pub = a.pub;
    a.pub = NULL;
    rc = EG_EXIT_OK;
out:
    keygen_out_clear(&a);
    eg_p11_keyparams_clear(&a.kp);
    return rc;
}
