/*
 * What a token can do for serverkeygen, found by doing it: mechanism lists
 * are not enough (SoftHSM 2.6.1 lists CKM_AES_CBC_PAD but refuses it for a
 * private key; p11-kit 0.24.1 lists mechanisms it does not forward). Each
 * probe is one real operation on throwaway session objects, and every
 * profile is then checked against the results, so that a mode the token
 * cannot serve is refused at --check-config and at start, by name.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "errors.h"
#include "p11_uri.h"
#include "skg.h"
#include "skg_cms.h"

typedef struct probe {
    eg_skg_caps *caps;
    bool rsa;
    EVP_PKEY *rsa_pub;   /* a software RSA-2048 recipient */
    EVP_PKEY *ec_pub[2]; /* software P-256 and P-384 recipients */
} probe;

static const CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static CK_RV aes(eg_p11_call *call, CK_ULONG len, bool extractable, eg_p11_temp_objs *objs,
                 CK_OBJECT_HANDLE *h)
{
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE t[] = {{CKA_VALUE_LEN, &len, sizeof(len)},
                        {CKA_WRAP, (void *)&yes, sizeof(yes)},
                        {CKA_EXTRACTABLE, (void *)(extractable ? &yes : &no), sizeof(yes)}};

    return eg_p11_temp_secret_key(call, &gen, t, 3, objs, h);
}

/* The plaintext mode's throwaway key is made here and imported (C_CreateObject). */
static CK_RV import(eg_p11_call *call, eg_p11_temp_objs *objs)
{
    uint8_t value[32] = {1};
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE t[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)}, {CKA_WRAP, (void *)&yes, sizeof(yes)}};
    CK_OBJECT_HANDLE h;

    return eg_p11_temp_secret_import(call, value, sizeof(value), t, 2, objs, &h);
}

static CK_RV wrap(eg_p11_call *call, CK_MECHANISM *m, CK_OBJECT_HANDLE with, CK_OBJECT_HANDLE key)
{
    uint8_t *out = NULL;
    size_t len = 0;
    CK_RV rv = eg_p11_wrap_alloc(call, m, with, key, &out, &len);

    OPENSSL_free(out);
    return rv;
}

static void probe_kt(eg_p11_call *call, probe *p, eg_p11_temp_objs *objs, CK_OBJECT_HANDLE cek)
{
    CK_ATTRIBUTE t[] = {{CKA_WRAP, (void *)&yes, sizeof(yes)}};
    CK_RSA_PKCS_OAEP_PARAMS o1 = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_RSA_PKCS_OAEP_PARAMS o256 = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m[3] = {[EG_SKG_RSA_OAEP_SHA1] = {CKM_RSA_PKCS_OAEP, &o1, sizeof(o1)},
                         [EG_SKG_RSA_OAEP_SHA256] = {CKM_RSA_PKCS_OAEP, &o256, sizeof(o256)},
                         [EG_SKG_RSA_PKCS1] = {CKM_RSA_PKCS, NULL, 0}};
    CK_OBJECT_HANDLE h;
    CK_RV rv = p->rsa_pub == NULL ? CKR_HOST_MEMORY
                                  : eg_p11_temp_public_key(call, p->rsa_pub, t, 1, objs, &h);

    for (int i = 0; i < 3; i++)
        p->caps->kt[i] = rv != CKR_OK ? rv : wrap(call, &m[i], h, cek);
}

/* Curve i (P-256, P-384) with KDF k (SHA-256, SHA-384) to a KEK of kek_len octets that wraps cek:
   every pair, since a client may list either KDF for either curve (RFC 5753 7.1.4). */
static CK_RV probe_kari(eg_p11_call *call, probe *p, int i, int k, CK_ULONG kek_len,
                        eg_p11_temp_objs *objs, CK_OBJECT_HANDLE cek)
{
    eg_keygen_spec spec = {.type = EG_KEY_EC,
                           .curve_nid = i ? NID_secp384r1 : NID_X9_62_prime256v1};
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = kek_len;
    CK_ATTRIBUTE t[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_VALUE_LEN, &len, sizeof(len)},
                        {CKA_WRAP, (void *)&yes, sizeof(yes)}};
    uint8_t *shared = NULL, *peer = NULL;
    size_t shared_len = 0, peer_len = 0;
    CK_ECDH1_DERIVE_PARAMS ecdh;
    CK_MECHANISM derive = {CKM_ECDH1_DERIVE, &ecdh, sizeof(ecdh)};
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_OBJECT_HANDLE epub, epriv, kek;
    CK_RV rv = CKR_HOST_MEMORY;

    if (p->ec_pub[i] == NULL ||
        (peer_len = EVP_PKEY_get1_encoded_public_key(p->ec_pub[i], &peer)) == 0 ||
        eg_skg_kari_shared_info((unsigned)kek_len * 8, &shared, &shared_len) != 0)
        goto out;
    ecdh = (CK_ECDH1_DERIVE_PARAMS){k ? CKD_SHA384_KDF : CKD_SHA256_KDF, shared_len, shared,
                                    peer_len, peer};
    if ((rv = eg_skg_temp_pair(call, &spec, CKA_DERIVE, objs, &epub, &epriv)) == CKR_OK &&
        (rv = eg_p11_temp_derive(call, &derive, epriv, t, 3, objs, &kek)) == CKR_OK)
        rv = wrap(call, &kw, kek, cek);
out:
    OPENSSL_free(shared);
    OPENSSL_free(peer);
    return rv;
}

static CK_RV probe_fn(eg_p11_call *call, void *arg)
{
    probe *p = arg;
    eg_skg_caps *c = p->caps;
    eg_keygen_spec ec = {.type = EG_KEY_EC, .curve_nid = NID_X9_62_prime256v1};
    eg_keygen_spec rsa = {.type = EG_KEY_RSA, .bits = 2048};
    uint8_t iv[16] = {0};
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof(iv)}, kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_OBJECT_HANDLE pub, priv, cek, kek, fixed;
    eg_p11_temp_objs objs;
    CK_RV rv;

    eg_p11_temp_init(&objs);
    memset(c, 0, sizeof(*c));
    if ((c->keygen_ec = rv = eg_skg_temp_pair(call, &ec, CKA_SIGN, &objs, &pub, &priv)) != CKR_OK ||
        (rv = aes(call, 32, true, &objs, &cek)) != CKR_OK)
        goto out;
    c->cbc_pad = wrap(call, &cbc, cek, priv);
    c->kwp = wrap(call, &kwp, cek, priv);
    c->import = import(call, &objs);
    /* id-aes128-CBC: a client may list only that for the content. */
    c->cbc_pad128 =
        (rv = aes(call, 16, true, &objs, &cek)) != CKR_OK ? rv : wrap(call, &cbc, cek, priv);
    eg_p11_temp_destroy(call, &objs); /* room for the next objects */
    if ((rv = aes(call, 32, true, &objs, &cek)) != CKR_OK ||
        (rv = aes(call, 32, true, &objs, &kek)) != CKR_OK)
        goto out;
    c->aes_wrap = wrap(call, &kw, kek, cek);
    probe_kt(call, p, &objs, cek);
    /* A token that wraps an unextractable key would wrap a CA key just as well. */
    if (aes(call, 32, false, &objs, &fixed) == CKR_OK)
        c->wraps_unextractable = wrap(call, &kw, kek, fixed) == CKR_OK;
    eg_p11_temp_destroy(call, &objs);
    for (int i = 0; i < 4; i++) { /* three objects each: one pair at a time */
        if ((rv = aes(call, 32, true, &objs, &cek)) != CKR_OK)
            goto out;
        c->kari[i / 2][i % 2] = probe_kari(call, p, i / 2, i % 2, 32, &objs, cek);
        eg_p11_temp_destroy(call, &objs);
    }
    if ((rv = aes(call, 32, true, &objs, &cek)) != CKR_OK)
        goto out;
    c->kari128 = probe_kari(call, p, 0, 0, 16, &objs, cek);
    eg_p11_temp_destroy(call, &objs);
    c->keygen_rsa = p->rsa ? eg_skg_temp_pair(call, &rsa, CKA_SIGN, &objs, &pub, &priv) : CKR_OK;
    rv = CKR_OK;
out:
    eg_p11_temp_destroy(call, &objs);
    return rv;
}

static EVP_PKEY *software_key(const char *alg, const char *param, const char *value)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, alg, NULL);
    EVP_PKEY *k = NULL;

    if (ctx == NULL || EVP_PKEY_keygen_init(ctx) != 1)
        goto out;
    if (param != NULL && (strcmp(alg, "RSA") == 0 ? EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, 2048)
                                                  : EVP_PKEY_CTX_set_group_name(ctx, value)) != 1)
        goto out;
    EVP_PKEY_keygen(ctx, &k);
out:
    EVP_PKEY_CTX_free(ctx);
    return k;
}

int eg_skg_probe(eg_token *tok, bool rsa, eg_skg_caps *out)
{
    eg_skg_caps caps;
    probe p = {.caps = &caps, .rsa = rsa};
    CK_RV rv;

    p.rsa_pub = software_key("RSA", "bits", NULL);
    p.ec_pub[0] = software_key("EC", "group", "P-256");
    p.ec_pub[1] = software_key("EC", "group", "P-384");
    rv = eg_token_run(tok, probe_fn, &p);
    EVP_PKEY_free(p.rsa_pub);
    EVP_PKEY_free(p.ec_pub[0]);
    EVP_PKEY_free(p.ec_pub[1]);
    ERR_clear_error();
    if (rv != CKR_OK) {
        fprintf(stderr, "estgated: the token's serverkeygen abilities could not be probed: %s\n",
                eg_p11_rv_name(rv));
        return -1;
    }
    *out = caps;
    return 0;
}

/* ---- profiles against the results ---- */

typedef struct checker {
    const char *path;
    const eg_profile_cfg *p;
    const char *token;
    int n;
} checker;

static void say(checker *c, unsigned line, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void say(checker *c, unsigned line, const char *key, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s:%u: [profile %s] %s: %s\n", c->path, line, c->p->name, key, msg);
    c->n++;
}

static const char *kt_label(int kt)
{
    return kt == EG_SKG_RSA_OAEP_SHA256 ? "oaep-sha256 (CKM_RSA_PKCS_OAEP with SHA-256)"
           : kt == EG_SKG_RSA_OAEP_SHA1 ? "oaep-sha1 (CKM_RSA_PKCS_OAEP with SHA-1)"
                                        : "pkcs1 (CKM_RSA_PKCS)";
}

typedef struct kek_arg {
    const eg_p11_uri *uri;
    CK_KEY_TYPE type;
    CK_BBOOL wrap;
    CK_ULONG len;
} kek_arg;

static CK_RV kek_fn(eg_p11_call *call, void *arg)
{
    kek_arg *k = arg;
    CK_ATTRIBUTE a[] = {{CKA_KEY_TYPE, &k->type, sizeof(k->type)},
                        {CKA_WRAP, &k->wrap, sizeof(k->wrap)},
                        {CKA_VALUE_LEN, &k->len, sizeof(k->len)}};
    CK_OBJECT_HANDLE h;
    CK_RV rv = eg_skg_find_secret(call, k->uri, &h);

    return rv != CKR_OK ? rv : eg_p11_get_attributes(call, h, a, 3);
}

static void check_kek(checker *c, eg_token *tok, const eg_skg_kek_cfg *kek, const eg_p11_uri *uri)
{
    kek_arg k = {.uri = uri};
    CK_RV rv = eg_token_run(tok, kek_fn, &k);

    if (rv == CKR_KEY_HANDLE_INVALID || rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
        say(c, kek->line, "serverkeygen_kek", "%s: %s secret key in token '%s'", kek->uri,
            rv == CKR_KEY_HANDLE_INVALID ? "no such" : "more than one", c->token);
    else if (rv != CKR_OK)
        say(c, kek->line, "serverkeygen_kek", "%s: the token answered %s", kek->uri,
            eg_p11_rv_name(rv));
    else if (k.type != CKK_AES || !k.wrap || (k.len != 16 && k.len != 32))
        say(c, kek->line, "serverkeygen_kek", "%s is not an AES-128 or AES-256 key with CKA_WRAP",
            kek->uri);
}

/* The recipients file's keys: RSA needs a key-transport algorithm, EC its curve's KDF. */
static void check_recipients(checker *c, const eg_skg_caps *caps, const eg_skg_profile *sp)
{
    bool rsa = c->p->skg_csr_key, ec[2] = {false, false};

    for (int i = 0; sp != NULL && i < sk_X509_num(sp->recipients); i++) {
        EVP_PKEY *k = X509_get0_pubkey(sk_X509_value(sp->recipients, i));

        if (k != NULL && EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA)
            rsa = true;
        else if (k != NULL && EVP_PKEY_get_base_id(k) == EVP_PKEY_EC)
            ec[EVP_PKEY_get_bits(k) > 256] = true;
    }
    for (size_t i = 0; rsa && i < c->p->nskg_rsa; i++) {
        int kt = c->p->skg_rsa[i];

        if (caps->kt[kt] != CKR_OK)
            say(c, c->p->skg_rsa_line ? c->p->skg_rsa_line : c->p->skg_line, "serverkeygen_rsa",
                "%s: token '%s' answers %s; remove it from serverkeygen_rsa", kt_label(kt),
                c->token, eg_p11_rv_name(caps->kt[kt]));
    }
    /* The curve's own KDF is what a request that lists none gets (docs/serverkeygen.md). */
    for (int i = 0; i < 2; i++) {
        if (ec[i] && caps->kari[i][i] != CKR_OK)
            say(c, c->p->skg_line, "serverkeygen",
                "encrypt to %s recipients needs CKM_ECDH1_DERIVE with the X9.63 KDF (%s); "
                "token '%s' answers %s",
                i ? "P-384" : "P-256", i ? "CKD_SHA384_KDF" : "CKD_SHA256_KDF", c->token,
                eg_p11_rv_name(caps->kari[i][i]));
    }
}

void eg_skg_wants(const eg_profile_cfg *p, bool *any, bool *rsa)
{
    *any = *any || p->skg_modes != 0;
    for (size_t k = 0; p->skg_modes != 0 && k < p->nskg_keys; k++)
        *rsa = *rsa || p->skg_keys[k].type == EVP_PKEY_RSA;
}

int eg_skg_check_profile(eg_token *tok, const char *path, const eg_profile_cfg *p,
                         const eg_skg_caps *caps, const eg_skg_profile *sp)
{
    checker c = {.path = path, .p = p, .token = eg_token_label(tok)};
    unsigned kline = p->skg_keys_line ? p->skg_keys_line : p->skg_line;

    if (p->skg_modes == 0)
        return 0;
    for (size_t i = 0; i < p->nskg_keys; i++) {
        bool rsa = p->skg_keys[i].type == EVP_PKEY_RSA;
        CK_RV rv = rsa ? caps->keygen_rsa : caps->keygen_ec;

        if (rv != CKR_OK)
            say(&c, kline, "serverkeygen_key_types",
                "token '%s' cannot generate an extractable %s session key pair (%s)", c.token,
                rsa ? "RSA" : "EC", eg_p11_rv_name(rv));
    }
    if ((p->skg_modes & EG_SKG_PLAINTEXT) && caps->import != CKR_OK)
        say(&c, p->skg_line, "serverkeygen",
            "plaintext needs a session AES key imported with C_CreateObject; token '%s' "
            "answers %s",
            c.token, eg_p11_rv_name(caps->import));
    else if ((p->skg_modes & EG_SKG_PLAINTEXT) && caps->cbc_pad != CKR_OK && caps->kwp != CKR_OK)
        say(&c, p->skg_line, "serverkeygen",
            "plaintext needs C_WrapKey of a private key with CKM_AES_CBC_PAD or "
            "CKM_AES_KEY_WRAP_PAD; token '%s' answers %s and %s (p11-kit 0.24.1 does not "
            "forward key wrapping)",
            c.token, eg_p11_rv_name(caps->cbc_pad), eg_p11_rv_name(caps->kwp));
    if (!(p->skg_modes & EG_SKG_ENCRYPT))
        return c.n;
    if (caps->cbc_pad != CKR_OK) {
        say(&c, p->skg_line, "serverkeygen",
            "encrypt needs C_WrapKey of a private key with CKM_AES_CBC_PAD; token '%s' answers "
            "%s (SoftHSM 2.6.1 and p11-kit 0.24.1 cannot; NSS softoken can). Use plaintext, "
            "or another token",
            c.token, eg_p11_rv_name(caps->cbc_pad));
        return c.n;
    }
    if (p->nskg_keks > 0 && caps->aes_wrap != CKR_OK)
        say(&c, p->skg_keks[0].line, "serverkeygen_kek",
            "pre-shared keys need C_WrapKey with CKM_AES_KEY_WRAP; token '%s' answers %s", c.token,
            eg_p11_rv_name(caps->aes_wrap));
    for (size_t i = 0; i < p->nskg_keks; i++)
        check_kek(&c, tok, &p->skg_keks[i], sp->keks[i]);
    check_recipients(&c, caps, sp);
    return c.n;
}

/* ---- estgated --check-config ---- */

int eg_skg_check_config(const eg_config *cfg)
{
    eg_token_config tc = {
        .module_path = cfg->module_path,
        .init_args = cfg->init_args,
        .token_label = cfg->token_label,
        .pin_file = cfg->pin_file,
        .pool_size = 2,
        .recover_ms = cfg->recover_ms,
        .calls = cfg->calls,
        .connections = cfg->connections,
    };
    eg_token *tok = NULL;
    eg_skg_caps caps;
    bool any = false, rsa = false;
    int problems = 0;

    for (size_t i = 0; i < cfg->nprofiles; i++)
        eg_skg_wants(&cfg->profiles[i], &any, &rsa);
    if (!any)
        return 0;
    if (eg_token_open(&tc, &tok) != 0) {
        fprintf(stderr, "%s: serverkeygen: cannot open token '%s' to see what it can do\n",
                cfg->path, cfg->token_label);
        eg_err_print(stderr);
        return 1;
    }
    if (eg_skg_probe(tok, rsa, &caps) != 0) {
        problems = 1;
        goto out;
    }
    for (size_t i = 0; i < cfg->nprofiles; i++) {
        const eg_profile_cfg *p = &cfg->profiles[i];
        eg_skg_profile sp;
        char err[256];

        if (p->skg_modes == 0)
            continue;
        if (eg_skg_profile_load(p, &sp, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s:%u: [profile %s] serverkeygen: %s\n", cfg->path, p->skg_line,
                    p->name, err);
            problems++;
            continue;
        }
        problems += eg_skg_check_profile(tok, cfg->path, p, &caps, &sp);
        eg_skg_profile_clear(&sp);
    }
out:
    eg_token_free(tok);
    return problems;
}
