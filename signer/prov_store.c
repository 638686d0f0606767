/*
 * Store loader for "pkcs11:" URIs (RFC 7512). A URI names one private key in
 * one of the tokens registered for the library context (eg_provider_add_token);
 * the key goes back to OpenSSL as an object reference that the keymgmt's
 * load() turns into keydata. The token's module and PIN are configuration, so
 * module-path and pin-source in a URI are not used here.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/params.h>
#include <openssl/store.h>

#include "errors.h"
#include "p11.h"
#include "p11_uri.h"
#include "prov_local.h"

typedef struct eg_store_ctx {
    eg_prov_ctx *provctx;
    char *uri;
    eg_p11_uri *parsed;
    int expect; /* OSSL_STORE_INFO_* wanted, 0 for any */
    int eof;
} eg_store_ctx;

static OSSL_FUNC_store_open_fn eg_store_open;
static OSSL_FUNC_store_settable_ctx_params_fn eg_store_settable_ctx_params;
static OSSL_FUNC_store_set_ctx_params_fn eg_store_set_ctx_params;
static OSSL_FUNC_store_load_fn eg_store_load;
static OSSL_FUNC_store_eof_fn eg_store_eof;
static OSSL_FUNC_store_close_fn eg_store_close;

static void store_free(eg_store_ctx *ctx)
{
    if (ctx == NULL)
        return;
    eg_p11_uri_free(ctx->parsed);
    free(ctx->uri);
    free(ctx);
}

static void *eg_store_open(void *provctx, const char *uri)
{
    eg_store_ctx *ctx;

    if ((ctx = calloc(1, sizeof(*ctx))) == NULL)
        return NULL;
    ctx->provctx = provctx;
    if ((ctx->uri = strdup(uri)) == NULL || eg_p11_uri_parse(uri, &ctx->parsed) != 0) {
        store_free(ctx);
        return NULL;
    }
    /* Only private keys live behind this loader; any other object type finds nothing. */
    ctx->eof = ctx->parsed->type != NULL && strcmp(ctx->parsed->type, "private") != 0;
    return ctx;
}

static const OSSL_PARAM *eg_store_settable_ctx_params(void *provctx)
{
    static const OSSL_PARAM settable[] = {
        OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, NULL),
        OSSL_PARAM_END,
    };
    return settable;
}

static int eg_store_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    eg_store_ctx *ctx = vctx;
    const OSSL_PARAM *p;

    p = OSSL_PARAM_locate_const(params, OSSL_STORE_PARAM_EXPECT);
    if (p != NULL && !OSSL_PARAM_get_int(p, &ctx->expect))
        return 0;
    return 1;
}

/* Hands key to OpenSSL by reference: keymgmt load() takes its own references. */
static int pass_key(eg_prov_key *key, OSSL_CALLBACK *object_cb, void *object_cbarg)
{
    OSSL_PARAM params[4];
    int type = OSSL_OBJECT_PKEY;

    params[0] = OSSL_PARAM_construct_int(OSSL_OBJECT_PARAM_TYPE, &type);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE,
                                                 (char *)eg_prov_key_type_name(key->type), 0);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key, sizeof(key));
    params[3] = OSSL_PARAM_construct_end();
    return object_cb(params, object_cbarg);
}

static int eg_store_load(void *vctx, OSSL_CALLBACK *object_cb, void *object_cbarg,
                         OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    eg_store_ctx *ctx = vctx;
    eg_prov_key *key = NULL;
    eg_p11_key *p11 = NULL;
    eg_token *tok;
    int rc = 0;

    if (ctx->eof)
        return 0;
    /* A URI names one key: there is one answer, found or not. */
    ctx->eof = 1;
    if (ctx->expect != 0 && ctx->expect != OSSL_STORE_INFO_PKEY)
        return 0;
    if (eg_prov_find_token(ctx->provctx, ctx->parsed->token, &tok) != 0)
        goto out;
    if (eg_p11_key_open(tok, ctx->uri, &p11) != 0 ||
        eg_prov_key_from_p11(ctx->provctx, p11, &key) != 0)
        goto out;
    rc = pass_key(key, object_cb, object_cbarg);
out:
    eg_prov_key_free(key);
    eg_p11_key_free(p11);
    return rc;
}

static int eg_store_eof(void *vctx)
{
    const eg_store_ctx *ctx = vctx;

    return ctx->eof;
}

static int eg_store_close(void *vctx)
{
    store_free(vctx);
    return 1;
}

const OSSL_DISPATCH eg_pkcs11_store_functions[] = {
    EG_FN(OSSL_FUNC_STORE_OPEN, eg_store_open),
    EG_FN(OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, eg_store_settable_ctx_params),
    EG_FN(OSSL_FUNC_STORE_SET_CTX_PARAMS, eg_store_set_ctx_params),
    EG_FN(OSSL_FUNC_STORE_LOAD, eg_store_load),
    EG_FN(OSSL_FUNC_STORE_EOF, eg_store_eof),
    EG_FN(OSSL_FUNC_STORE_CLOSE, eg_store_close),
    {0, NULL},
};
