/*
 * Keymgmt for token keys (RSA, EC, Ed25519). A key object is a reference on
 * the eg_p11_key plus the software public half, which answers every question
 * about the key: nothing private is ever read out of the token.
 *
 * Export refuses any selection that asks for the private key. OpenSSL 3.0's
 * do_sigver_init() first tries the signature of whatever provider a plain
 * fetch returns (the default provider sorts first) and uses it if the key
 * exports to that provider's keymgmt; a public-only export would "succeed"
 * and the software signer would then fail for want of a private key. The
 * refusal sends OpenSSL to our own signature on its second try. Public-only
 * selections (SubjectPublicKeyInfo encoding, printing) export normally, and
 * public keys import, which is how EVP_PKEY_eq() matches a certificate with a
 * token key: the certificate's key is imported here and compared by match().
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/params.h>

#include "errors.h"
#include "p11.h"
#include "prov_local.h"

const char *eg_prov_key_type_name(eg_key_type type)
{
    switch (type) {
    case EG_KEY_RSA:
        return "RSA";
    case EG_KEY_EC:
        return "EC";
    case EG_KEY_ED25519:
        return "ED25519";
    default:
        return NULL;
    }
}

static eg_prov_key *key_new(eg_prov_ctx *provctx, eg_key_type type)
{
    eg_prov_key *key;

    if ((key = calloc(1, sizeof(*key))) == NULL)
        return NULL;
    key->magic = EG_PROV_KEY_MAGIC;
    key->type = type;
    key->provctx = provctx;
    return key;
}

void eg_prov_key_free(eg_prov_key *key)
{
    if (key == NULL)
        return;
    eg_p11_key_free(key->p11);
    EVP_PKEY_free(key->pub);
    key->magic = 0;
    free(key);
}

static int key_attach_p11(eg_prov_key *key, eg_p11_key *p11)
{
    EVP_PKEY *pub;

    if (eg_p11_key_type(p11) != key->type) {
        eg_signer_error(EG_R_KEY_UNSUPPORTED, "%s is not a %s key", eg_p11_key_uri(p11),
                        eg_prov_key_type_name(key->type));
        return -1;
    }
    if ((pub = eg_p11_key_public(p11)) == NULL) {
        eg_signer_error(EG_R_OPENSSL, "%s: cannot read the public key", eg_p11_key_uri(p11));
        return -1;
    }
    EVP_PKEY_free(key->pub);
    key->pub = pub;
    key->p11 = eg_p11_key_ref(p11);
    return 0;
}

int eg_prov_key_from_p11(eg_prov_ctx *provctx, eg_p11_key *p11, eg_prov_key **out)
{
    eg_prov_key *key;
    int rc = -1;

    if (eg_prov_key_type_name(eg_p11_key_type(p11)) == NULL) {
        eg_signer_error(EG_R_KEY_UNSUPPORTED, "%s: unsupported key type", eg_p11_key_uri(p11));
        return -1;
    }
    if ((key = key_new(provctx, eg_p11_key_type(p11))) == NULL || key_attach_p11(key, p11) != 0)
        goto out;
    *out = key;
    key = NULL;
    rc = 0;
out:
    eg_prov_key_free(key);
    return rc;
}

static eg_prov_key *key_dup(const eg_prov_key *src, int selection)
{
    eg_prov_key *key;

    if ((key = key_new(src->provctx, src->type)) == NULL)
        return NULL;
    if (src->pub != NULL && EVP_PKEY_up_ref(src->pub))
        key->pub = src->pub;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && src->p11 != NULL)
        key->p11 = eg_p11_key_ref(src->p11);
    return key;
}

/* reference: a pointer-sized blob holding the store's eg_prov_key (see prov_store.c). */
static void *key_load(const void *reference, size_t reference_sz, eg_key_type type)
{
    const eg_prov_key *src;

    if (reference == NULL || reference_sz != sizeof(src)) {
        eg_signer_error(EG_R_BAD_PARAM, "key reference of %zu bytes", reference_sz);
        return NULL;
    }
    memcpy(&src, reference, sizeof(src));
    if (src == NULL || src->magic != EG_PROV_KEY_MAGIC || src->type != type || src->p11 == NULL) {
        eg_signer_error(EG_R_BAD_PARAM, "not a %s token key reference",
                        eg_prov_key_type_name(type));
        return NULL;
    }
    return key_dup(src, OSSL_KEYMGMT_SELECT_ALL);
}

static OSSL_FUNC_keymgmt_free_fn eg_km_free;
static OSSL_FUNC_keymgmt_dup_fn eg_km_dup;
static OSSL_FUNC_keymgmt_has_fn eg_km_has;
static OSSL_FUNC_keymgmt_match_fn eg_km_match;
static OSSL_FUNC_keymgmt_get_params_fn eg_km_get_params;
static OSSL_FUNC_keymgmt_import_fn eg_km_import;
static OSSL_FUNC_keymgmt_export_fn eg_km_export;

static void eg_km_free(void *keydata)
{
    eg_prov_key_free(keydata);
}

static void *eg_km_dup(const void *keydata, int selection)
{
    return keydata == NULL ? NULL : key_dup(keydata, selection);
}

static int eg_km_has(const void *keydata, int selection)
{
    const eg_prov_key *key = keydata;

    if (key == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0 && key->pub == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && key->p11 == NULL)
        return 0;
    /* An EC key's domain parameters live in its public half. */
    if ((selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) != 0 && key->type == EG_KEY_EC &&
        key->pub == NULL)
        return 0;
    return 1;
}

/* The halves of a token key pair match when their public halves do. */
static int eg_km_match(const void *keydata1, const void *keydata2, int selection)
{
    const eg_prov_key *a = keydata1, *b = keydata2;

    if (a == NULL || b == NULL || a->type != b->type || a->pub == NULL || b->pub == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0)
        return EVP_PKEY_eq(a->pub, b->pub) == 1;
    if ((selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) != 0 && a->type == EG_KEY_EC)
        return EVP_PKEY_parameters_eq(a->pub, b->pub) == 1;
    return 1;
}

/* Everything asked of a token key is public, so the software half answers. */
static int eg_km_get_params(void *keydata, OSSL_PARAM params[])
{
    eg_prov_key *key = keydata;

    if (key == NULL || key->pub == NULL)
        return 0;
    return EVP_PKEY_get_params(key->pub, params);
}

static int eg_km_export(void *keydata, int selection, OSSL_CALLBACK *param_cb, void *cbarg)
{
    eg_prov_key *key = keydata;

    if (key == NULL || key->pub == NULL)
        return 0;
    /*
     * No error pushed: OpenSSL asks for everything while it probes providers
     * (see the top of this file) and carries on when we refuse.
     */
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && key->p11 != NULL)
        return 0;
    return EVP_PKEY_export(key->pub, selection, param_cb, cbarg);
}

static int has_private_material(const OSSL_PARAM params[])
{
    static const char *const names[] = {
        OSSL_PKEY_PARAM_PRIV_KEY,         OSSL_PKEY_PARAM_RSA_D,
        OSSL_PKEY_PARAM_RSA_FACTOR1,      OSSL_PKEY_PARAM_RSA_EXPONENT1,
        OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
    };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (OSSL_PARAM_locate_const(params, names[i]) != NULL)
            return 1;
    }
    return 0;
}

static int import_ticket(eg_prov_key *key, const OSSL_PARAM *p)
{
    eg_p11_key *p11 = NULL;
    uint64_t ticket;
    int rc = 0;

    if (!OSSL_PARAM_get_uint64(p, &ticket) || (p11 = eg_prov_handoff_take(ticket)) == NULL) {
        eg_signer_error(EG_R_BAD_PARAM, "no token key waits under this ticket");
        goto out;
    }
    rc = key_attach_p11(key, p11) == 0;
out:
    eg_p11_key_free(p11);
    return rc;
}

static int import_public(eg_prov_key *key, int selection, const OSSL_PARAM params[])
{
    EVP_PKEY_CTX *pctx;
    EVP_PKEY *pub = NULL;
    int rc = 0;

    selection &= OSSL_KEYMGMT_SELECT_PUBLIC_KEY | OSSL_KEYMGMT_SELECT_ALL_PARAMETERS;
    pctx = EVP_PKEY_CTX_new_from_name(key->provctx->libctx, eg_prov_key_type_name(key->type),
                                      EG_PROV_SOFTWARE_PROPQ);
    if (pctx == NULL || EVP_PKEY_fromdata_init(pctx) <= 0 ||
        EVP_PKEY_fromdata(pctx, &pub, selection, (OSSL_PARAM *)params) <= 0) {
        eg_signer_error(EG_R_OPENSSL, "cannot import a %s public key",
                        eg_prov_key_type_name(key->type));
        goto out;
    }
    key->pub = pub;
    rc = 1;
out:
    EVP_PKEY_CTX_free(pctx);
    return rc;
}

static int eg_km_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    eg_prov_key *key = keydata;
    const OSSL_PARAM *p;

    if (key == NULL || key->pub != NULL || key->p11 != NULL)
        return 0;
    if ((p = OSSL_PARAM_locate_const(params, EG_PROV_PARAM_KEY_TICKET)) != NULL)
        return import_ticket(key, p);
    if (has_private_material(params)) {
        eg_signer_error(EG_R_KEY_UNSUPPORTED,
                        "private %s key material cannot be imported: "
                        "token keys are generated in the token",
                        eg_prov_key_type_name(key->type));
        return 0;
    }
    return import_public(key, selection, params);
}

static const OSSL_PARAM eg_rsa_gettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_rsa_public[] = {
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_ec_gettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_ec_public[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_ed25519_gettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_MANDATORY_DIGEST, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_ed25519_public[] = {
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0),
    OSSL_PARAM_END,
};

/* One keymgmt per key type: the type-bound entry points, then the table. */
#define EG_KEYMGMT(t, TYPE, SIGNAME)                                                               \
    static OSSL_FUNC_keymgmt_new_fn eg_##t##_new;                                                  \
    static OSSL_FUNC_keymgmt_load_fn eg_##t##_load;                                                \
    static OSSL_FUNC_keymgmt_query_operation_name_fn eg_##t##_query_operation_name;                \
    static OSSL_FUNC_keymgmt_gettable_params_fn eg_##t##_gettable_params;                          \
    static OSSL_FUNC_keymgmt_import_types_fn eg_##t##_import_types;                                \
    static OSSL_FUNC_keymgmt_export_types_fn eg_##t##_export_types;                                \
    static void *eg_##t##_new(void *provctx)                                                       \
    {                                                                                              \
        return key_new(provctx, TYPE);                                                             \
    }                                                                                              \
    static void *eg_##t##_load(const void *reference, size_t reference_sz)                         \
    {                                                                                              \
        return key_load(reference, reference_sz, TYPE);                                            \
    }                                                                                              \
    static const char *eg_##t##_query_operation_name(int operation_id)                             \
    {                                                                                              \
        return operation_id == OSSL_OP_SIGNATURE ? SIGNAME : NULL;                                 \
    }                                                                                              \
    static const OSSL_PARAM *eg_##t##_gettable_params(void *provctx)                               \
    {                                                                                              \
        return eg_##t##_gettable;                                                                  \
    }                                                                                              \
    static const OSSL_PARAM *eg_##t##_import_types(int selection)                                  \
    {                                                                                              \
        return eg_##t##_public;                                                                    \
    }                                                                                              \
    static const OSSL_PARAM *eg_##t##_export_types(int selection)                                  \
    {                                                                                              \
        return eg_##t##_public;                                                                    \
    }                                                                                              \
    const OSSL_DISPATCH eg_##t##_keymgmt_functions[] = {                                           \
        EG_FN(OSSL_FUNC_KEYMGMT_NEW, eg_##t##_new),                                                \
        EG_FN(OSSL_FUNC_KEYMGMT_LOAD, eg_##t##_load),                                              \
        EG_FN(OSSL_FUNC_KEYMGMT_FREE, eg_km_free),                                                 \
        EG_FN(OSSL_FUNC_KEYMGMT_DUP, eg_km_dup),                                                   \
        EG_FN(OSSL_FUNC_KEYMGMT_HAS, eg_km_has),                                                   \
        EG_FN(OSSL_FUNC_KEYMGMT_MATCH, eg_km_match),                                               \
        EG_FN(OSSL_FUNC_KEYMGMT_GET_PARAMS, eg_km_get_params),                                     \
        EG_FN(OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, eg_##t##_gettable_params),                        \
        EG_FN(OSSL_FUNC_KEYMGMT_IMPORT, eg_km_import),                                             \
        EG_FN(OSSL_FUNC_KEYMGMT_IMPORT_TYPES, eg_##t##_import_types),                              \
        EG_FN(OSSL_FUNC_KEYMGMT_EXPORT, eg_km_export),                                             \
        EG_FN(OSSL_FUNC_KEYMGMT_EXPORT_TYPES, eg_##t##_export_types),                              \
        EG_FN(OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, eg_##t##_query_operation_name),              \
        {0, NULL},                                                                                 \
    }

EG_KEYMGMT(rsa, EG_KEY_RSA, "RSA");
EG_KEYMGMT(ec, EG_KEY_EC, "ECDSA");
EG_KEYMGMT(ed25519, EG_KEY_ED25519, "ED25519");
