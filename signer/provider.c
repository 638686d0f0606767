/*
 * The estgate provider: entry point, algorithm tables, and the process-wide
 * registry of the tokens each library context may reach.
 *
 * The provider is built in (OSSL_PROVIDER_add_builtin): it shares libcrypto
 * with the rest of estgate, so its errors go straight onto the caller's error
 * stack and its keys can hold pointers into the token layer.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/opensslv.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/store.h>

#include "errors.h"
#include "p11.h"
#include "prov_local.h"
#include "provider.h"

/*
 * The tokens one library context may reach. The entry holds our references on
 * the providers we loaded there; they go when its last token is removed, so
 * that OSSL_LIB_CTX_free() can then tear the provider down.
 */
typedef struct eg_prov_entry {
    struct eg_prov_entry *next;
    OSSL_LIB_CTX *given; /* as callers name it: NULL for the default context */
    eg_prov_ctx *provctx;
    OSSL_PROVIDER *prov;
    OSSL_PROVIDER *deflt; /* NULL: the default provider was there already */
    eg_token **tokens;
    size_t ntokens;
} eg_prov_entry;

/* A key on its way from eg_provider_key_pkey() to the keymgmt's import. */
typedef struct eg_prov_handoff {
    struct eg_prov_handoff *next;
    uint64_t ticket;
    eg_p11_key *key;
} eg_prov_handoff;

/* init_lock serialises provider loading; reg_lock guards the lists below. */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static eg_prov_entry *entries;
static eg_prov_handoff *handoffs;
static uint64_t last_ticket;

#define EG_ALG(names, fns, desc)                                                                   \
    {                                                                                              \
        names, EG_PROVIDER_PROPQ, fns, desc                                                        \
    }

static const OSSL_ALGORITHM eg_keymgmt_algs[] = {
    EG_ALG("RSA:rsaEncryption:1.2.840.113549.1.1.1", eg_rsa_keymgmt_functions,
           "RSA key in a PKCS#11 token"),
    EG_ALG("EC:id-ecPublicKey:1.2.840.10045.2.1", eg_ec_keymgmt_functions,
           "EC key in a PKCS#11 token"),
    EG_ALG("ED25519:1.3.101.112", eg_ed25519_keymgmt_functions, "Ed25519 key in a PKCS#11 token"),
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM eg_signature_algs[] = {
    EG_ALG("RSA:rsaEncryption:1.2.840.113549.1.1.1", eg_rsa_signature_functions,
           "RSA PKCS#1 v1.5 and PSS signatures by a PKCS#11 token"),
    EG_ALG("ECDSA", eg_ecdsa_signature_functions, "ECDSA signatures by a PKCS#11 token"),
    EG_ALG("ED25519:1.3.101.112", eg_ed25519_signature_functions,
           "Ed25519 signatures by a PKCS#11 token"),
    {NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM eg_store_algs[] = {
    EG_ALG("pkcs11", eg_pkcs11_store_functions, "keys named by RFC 7512 PKCS#11 URIs"),
    {NULL, NULL, NULL, NULL},
};

static OSSL_FUNC_provider_teardown_fn eg_prov_teardown;
static OSSL_FUNC_provider_gettable_params_fn eg_prov_gettable_params;
static OSSL_FUNC_provider_get_params_fn eg_prov_get_params;
static OSSL_FUNC_provider_query_operation_fn eg_prov_query_operation;
static OSSL_provider_init_fn eg_prov_init;

static const OSSL_ALGORITHM *eg_prov_query_operation(void *provctx, int operation_id, int *no_cache)
{
    *no_cache = 0;
    switch (operation_id) {
    case OSSL_OP_KEYMGMT:
        return eg_keymgmt_algs;
    case OSSL_OP_SIGNATURE:
        return eg_signature_algs;
    case OSSL_OP_STORE:
        return eg_store_algs;
    default:
        return NULL;
    }
}

static const OSSL_PARAM *eg_prov_gettable_params(void *provctx)
{
    static const OSSL_PARAM gettable[] = {
        OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, NULL, 0),
        OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_VERSION, NULL, 0),
        OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_BUILDINFO, NULL, 0),
        OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, NULL),
        OSSL_PARAM_END,
    };
    return gettable;
}

static int eg_prov_get_params(void *provctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p;

    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, "estgate PKCS#11 provider"))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, "0.1.0"))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO);
    if (p != NULL && !OSSL_PARAM_set_utf8_ptr(p, OPENSSL_VERSION_TEXT))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS);
    if (p != NULL && !OSSL_PARAM_set_int(p, 1))
        return 0;
    return 1;
}

/* Releases our provider references; never called with reg_lock held (teardown takes it). */
static void entry_free(eg_prov_entry *e)
{
    if (e == NULL)
        return;
    OSSL_PROVIDER_unload(e->prov);
    OSSL_PROVIDER_unload(e->deflt);
    free(e->tokens);
    free(e);
}

/* Called with reg_lock held. */
static eg_prov_entry **entry_slot(OSSL_LIB_CTX *libctx)
{
    eg_prov_entry **p;

    for (p = &entries; *p != NULL; p = &(*p)->next) {
        if ((*p)->given == libctx)
            break;
    }
    return p;
}

/* Called with reg_lock held. */
static eg_prov_entry *entry_by_provctx(const eg_prov_ctx *provctx)
{
    eg_prov_entry *e;

    for (e = entries; e != NULL; e = e->next) {
        if (e->provctx == provctx)
            break;
    }
    return e;
}

/*
 * The provider's last reference is gone. Entries hold references, so none
 * should still point here; one that does is dropped without unloading.
 */
static void eg_prov_teardown(void *vprovctx)
{
    eg_prov_ctx *provctx = vprovctx;
    eg_prov_entry **p, *e;

    pthread_mutex_lock(&reg_lock);
    for (p = &entries; *p != NULL;) {
        if ((e = *p)->provctx == provctx) {
            *p = e->next;
            free(e->tokens);
            free(e);
        } else {
            p = &e->next;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    free(provctx);
}

static const OSSL_DISPATCH eg_prov_dispatch[] = {
    EG_FN(OSSL_FUNC_PROVIDER_TEARDOWN, eg_prov_teardown),
    EG_FN(OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, eg_prov_gettable_params),
    EG_FN(OSSL_FUNC_PROVIDER_GET_PARAMS, eg_prov_get_params),
    EG_FN(OSSL_FUNC_PROVIDER_QUERY_OPERATION, eg_prov_query_operation),
    {0, NULL},
};

static int eg_prov_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                        const OSSL_DISPATCH **out, void **provctx)
{
    OSSL_FUNC_core_get_libctx_fn *get_libctx = NULL;
    eg_prov_ctx *ctx;

    for (; in->function_id != 0; in++) {
        if (in->function_id == OSSL_FUNC_CORE_GET_LIBCTX)
            get_libctx = OSSL_FUNC_core_get_libctx(in);
    }
    if (get_libctx == NULL || (ctx = calloc(1, sizeof(*ctx))) == NULL)
        return 0;
    /* A built-in provider's core context is the library context itself. */
    ctx->libctx = (OSSL_LIB_CTX *)get_libctx(handle);
    *out = eg_prov_dispatch;
    *provctx = ctx;
    return 1;
}

static int entry_exists(OSSL_LIB_CTX *libctx)
{
    int found;

    pthread_mutex_lock(&reg_lock);
    found = *entry_slot(libctx) != NULL;
    pthread_mutex_unlock(&reg_lock);
    return found;
}

/*
 * Loads our provider without turning off the default provider's fallback
 * activation, and loads "default" only when it is not there already: a
 * reference we do not take is one we cannot leak.
 */
static int load_providers(OSSL_LIB_CTX *libctx, eg_prov_entry *e)
{
    if (!OSSL_PROVIDER_add_builtin(libctx, EG_PROVIDER_NAME, eg_prov_init)) {
        eg_signer_error(EG_R_OPENSSL, "OSSL_PROVIDER_add_builtin(%s) failed", EG_PROVIDER_NAME);
        return -1;
    }
    if ((e->prov = OSSL_PROVIDER_try_load(libctx, EG_PROVIDER_NAME, 1)) == NULL) {
        eg_signer_error(EG_R_OPENSSL, "cannot load the %s provider", EG_PROVIDER_NAME);
        return -1;
    }
    if (!OSSL_PROVIDER_available(libctx, "default") &&
        (e->deflt = OSSL_PROVIDER_load(libctx, "default")) == NULL) {
        eg_signer_error(EG_R_OPENSSL, "cannot load the default provider");
        return -1;
    }
    e->given = libctx;
    e->provctx = OSSL_PROVIDER_get0_provider_ctx(e->prov);
    return 0;
}

int eg_provider_init(OSSL_LIB_CTX *libctx)
{
    eg_prov_entry *e = NULL;
    int rc = -1;

    /* Not reg_lock: loading may call back into teardown, which takes it. */
    pthread_mutex_lock(&init_lock);
    if (entry_exists(libctx)) {
        rc = 0;
        goto out;
    }
    if ((e = calloc(1, sizeof(*e))) == NULL || load_providers(libctx, e) != 0)
        goto out;
    pthread_mutex_lock(&reg_lock);
    e->next = entries;
    entries = e;
    e = NULL;
    pthread_mutex_unlock(&reg_lock);
    rc = 0;
out:
    pthread_mutex_unlock(&init_lock);
    entry_free(e);
    return rc;
}

/* Called with reg_lock held. */
static int entry_add_token(eg_prov_entry *e, eg_token *tok)
{
    eg_token **tokens;
    size_t i;

    for (i = 0; i < e->ntokens; i++) {
        if (e->tokens[i] == tok)
            return 0;
        if (strcmp(eg_token_label(e->tokens[i]), eg_token_label(tok)) == 0) {
            eg_signer_error(EG_R_BAD_PARAM, "a token labelled \"%s\" is already registered",
                            eg_token_label(tok));
            return -1;
        }
    }
    if ((tokens = realloc(e->tokens, (e->ntokens + 1) * sizeof(*tokens))) == NULL)
        return -1;
    tokens[e->ntokens++] = tok;
    e->tokens = tokens;
    return 0;
}

int eg_provider_add_token(OSSL_LIB_CTX *libctx, eg_token *tok)
{
    eg_prov_entry *e;
    int rc = -1;

    if (tok == NULL || eg_provider_init(libctx) != 0)
        return -1;
    pthread_mutex_lock(&reg_lock);
    if ((e = *entry_slot(libctx)) == NULL) {
        eg_signer_error(EG_R_OPENSSL, "the %s provider is not loaded", EG_PROVIDER_NAME);
        goto out;
    }
    rc = entry_add_token(e, tok);
out:
    pthread_mutex_unlock(&reg_lock);
    return rc;
}

void eg_provider_remove_token(OSSL_LIB_CTX *libctx, eg_token *tok)
{
    eg_prov_entry **p, *e, *gone = NULL;
    size_t i;

    pthread_mutex_lock(&reg_lock);
    p = entry_slot(libctx);
    if ((e = *p) != NULL) {
        for (i = 0; i < e->ntokens; i++) {
            if (e->tokens[i] == tok) {
                e->tokens[i] = e->tokens[--e->ntokens];
                break;
            }
        }
        if (e->ntokens == 0) {
            *p = e->next;
            gone = e;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    entry_free(gone);
}

/* Called with reg_lock held. */
static eg_token *entry_find_token(const eg_prov_entry *e, const char *label)
{
    size_t i;

    if (label == NULL) {
        if (e->ntokens == 1)
            return e->tokens[0];
        eg_signer_error(EG_R_TOKEN_NOT_FOUND, "URI names no token and %zu tokens are registered",
                        e->ntokens);
        return NULL;
    }
    for (i = 0; i < e->ntokens; i++) {
        if (strcmp(eg_token_label(e->tokens[i]), label) == 0)
            return e->tokens[i];
    }
    eg_signer_error(EG_R_TOKEN_NOT_FOUND, "no token labelled \"%s\" is registered", label);
    return NULL;
}

int eg_prov_find_token(eg_prov_ctx *provctx, const char *label, eg_token **out)
{
    eg_prov_entry *e;
    eg_token *tok = NULL;

    pthread_mutex_lock(&reg_lock);
    if ((e = entry_by_provctx(provctx)) != NULL)
        tok = entry_find_token(e, label);
    else
        eg_signer_error(EG_R_TOKEN_NOT_FOUND, "no token is registered in this library context");
    pthread_mutex_unlock(&reg_lock);
    if (tok == NULL)
        return -1;
    *out = tok;
    return 0;
}

uint64_t eg_prov_handoff_put(eg_p11_key *key)
{
    eg_prov_handoff *h;
    uint64_t ticket = 0;

    if ((h = calloc(1, sizeof(*h))) == NULL)
        return 0;
    pthread_mutex_lock(&reg_lock);
    h->ticket = ticket = ++last_ticket;
    h->key = key;
    h->next = handoffs;
    handoffs = h;
    pthread_mutex_unlock(&reg_lock);
    return ticket;
}

eg_p11_key *eg_prov_handoff_take(uint64_t ticket)
{
    eg_prov_handoff **p, *h = NULL;
    eg_p11_key *key = NULL;

    pthread_mutex_lock(&reg_lock);
    for (p = &handoffs; *p != NULL; p = &(*p)->next) {
        if ((*p)->ticket == ticket) {
            h = *p;
            *p = h->next;
            break;
        }
    }
    pthread_mutex_unlock(&reg_lock);
    if (h != NULL) {
        key = h->key;
        free(h);
    }
    return key;
}

/* Loading needs the provider, and keys are only ever reached through a registered token. */
static int provider_ready(OSSL_LIB_CTX *libctx)
{
    if (entry_exists(libctx))
        return 1;
    eg_signer_error(EG_R_TOKEN_NOT_FOUND, "no token is registered in this library context");
    return 0;
}

/* The URI without its query part: a query may carry a PIN. */
static int uri_path_len(const char *uri)
{
    return (int)strcspn(uri, "?");
}

static EVP_PKEY *store_first_pkey(OSSL_STORE_CTX *st)
{
    OSSL_STORE_INFO *info;
    EVP_PKEY *pkey = NULL;

    while (pkey == NULL && !OSSL_STORE_eof(st)) {
        if ((info = OSSL_STORE_load(st)) == NULL)
            break;
        if (OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            pkey = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
    }
    return pkey;
}

int eg_provider_load_key(OSSL_LIB_CTX *libctx, const char *uri, EVP_PKEY **out)
{
    OSSL_STORE_CTX *st = NULL;
    EVP_PKEY *pkey = NULL;
    int rc = -1;

    if (uri == NULL || !provider_ready(libctx))
        goto out;
    st = OSSL_STORE_open_ex(uri, libctx, EG_PROVIDER_PROPQ, NULL, NULL, NULL, NULL, NULL);
    if (st == NULL || !OSSL_STORE_expect(st, OSSL_STORE_INFO_PKEY)) {
        eg_signer_error(EG_R_KEY_NOT_FOUND, "cannot open %.*s", uri_path_len(uri), uri);
        goto out;
    }
    if ((pkey = store_first_pkey(st)) == NULL) {
        /* The store's loader has usually said why already (no such key, two of them). */
        if (ERR_GET_LIB(ERR_peek_last_error()) != eg_signer_errlib())
            eg_signer_error(EG_R_KEY_NOT_FOUND, "%.*s names no private key", uri_path_len(uri),
                            uri);
        goto out;
    }
    *out = pkey;
    pkey = NULL;
    rc = 0;
out:
    OSSL_STORE_close(st);
    EVP_PKEY_free(pkey);
    return rc;
}

/*
 * The key reaches the keymgmt through EVP_PKEY_fromdata() with a ticket: the
 * public path that builds an EVP_PKEY around provider keydata, without a store
 * round trip that would look the key up in the token again.
 */
int eg_provider_key_pkey(OSSL_LIB_CTX *libctx, eg_p11_key *key, EVP_PKEY **out)
{
    EVP_PKEY_CTX *pctx = NULL;
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM params[2];
    eg_p11_key *ref;
    const char *name;
    uint64_t ticket = 0;
    int rc = -1;

    if (key == NULL || !provider_ready(libctx))
        goto out;
    if ((name = eg_prov_key_type_name(eg_p11_key_type(key))) == NULL) {
        eg_signer_error(EG_R_KEY_UNSUPPORTED, "%s: unsupported key type", eg_p11_key_uri(key));
        goto out;
    }
    ref = eg_p11_key_ref(key);
    if ((ticket = eg_prov_handoff_put(ref)) == 0) {
        eg_p11_key_free(ref);
        goto out;
    }
    params[0] = OSSL_PARAM_construct_uint64(EG_PROV_PARAM_KEY_TICKET, &ticket);
    params[1] = OSSL_PARAM_construct_end();
    pctx = EVP_PKEY_CTX_new_from_name(libctx, name, EG_PROVIDER_PROPQ);
    if (pctx == NULL || EVP_PKEY_fromdata_init(pctx) <= 0 ||
        EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_KEYPAIR, params) <= 0) {
        eg_signer_error(EG_R_OPENSSL, "%s: cannot make an EVP_PKEY", eg_p11_key_uri(key));
        goto out;
    }
    *out = pkey;
    rc = 0;
out:
    /* A ticket the import did not take still holds a reference. */
    if (ticket != 0)
        eg_p11_key_free(eg_prov_handoff_take(ticket));
    EVP_PKEY_CTX_free(pctx);
    return rc;
}
