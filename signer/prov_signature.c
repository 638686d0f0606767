/*
 * Signatures by token keys: RSA PKCS#1 v1.5 and PSS, ECDSA, Ed25519.
 *
 * Messages are hashed here in software (digests from the library context,
 * never from this provider); the token signs the digest: CKM_RSA_PKCS over
 * the DER DigestInfo, CKM_RSA_PKCS_PSS over the digest, CKM_ECDSA over the
 * digest (raw r||s, turned into a DER ECDSA-Sig-Value here). Ed25519 signs
 * the whole message with CKM_EDDSA, one shot.
 *
 * Verification is done in software with the public half: OpenSSL routes a
 * verification to the key's own provider when the key will not export its
 * private half (see prov_keymgmt.c), so it must work here too.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/objects.h>
#include <openssl/params.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "errors.h"
#include "p11.h"
#include "prov_local.h"

#define EG_ED25519_SIGLEN 64
#define EG_ECDSA_RAW_MAX  (2 * 66) /* r||s of P-521, the largest curve a token offers */

/* What each digest means for each signature scheme. */
typedef struct eg_md_info {
    int nid;
    CK_MECHANISM_TYPE ckm;    /* CK_RSA_PKCS_PSS_PARAMS.hashAlg */
    CK_RSA_PKCS_MGF_TYPE mgf; /* CK_RSA_PKCS_PSS_PARAMS.mgf with this hash */
    int rsa_nid;              /* PKCS#1 v1.5 signature algorithm */
    int ecdsa_nid;            /* NID_undef: not offered with ECDSA */
    int pss;                  /* offered with PSS */
    const uint8_t *prefix;    /* DER DigestInfo up to the digest (RFC 8017, 9.2 note 1) */
    size_t prefixlen;
} eg_md_info;

static const uint8_t di_sha1[] = {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e,
                                  0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
static const uint8_t di_sha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
static const uint8_t di_sha384[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
static const uint8_t di_sha512[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};

static const eg_md_info eg_mds[] = {
    {NID_sha1, CKM_SHA_1, CKG_MGF1_SHA1, NID_sha1WithRSAEncryption, NID_undef, 0, di_sha1,
     sizeof(di_sha1)},
    {NID_sha256, CKM_SHA256, CKG_MGF1_SHA256, NID_sha256WithRSAEncryption, NID_ecdsa_with_SHA256, 1,
     di_sha256, sizeof(di_sha256)},
    {NID_sha384, CKM_SHA384, CKG_MGF1_SHA384, NID_sha384WithRSAEncryption, NID_ecdsa_with_SHA384, 1,
     di_sha384, sizeof(di_sha384)},
    {NID_sha512, CKM_SHA512, CKG_MGF1_SHA512, NID_sha512WithRSAEncryption, NID_ecdsa_with_SHA512, 1,
     di_sha512, sizeof(di_sha512)},
};

enum { EG_SIG_NONE, EG_SIG_SIGN, EG_SIG_VERIFY };

typedef struct eg_sig_ctx {
    eg_prov_ctx *provctx;
    eg_key_type type;
    int operation;
    eg_p11_key *p11; /* NULL when only verifying with a public key */
    EVP_PKEY *pub;
    EVP_MD *md;
    const eg_md_info *mdi;
    EVP_MD_CTX *mdctx; /* digest-sign/verify: the message's running hash */
    int streaming;     /* data went into mdctx: the digest is fixed */
    int pad;           /* RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING */
    int saltlen;       /* RSA_PSS_SALTLEN_* or a length */
    EVP_MD *mgf1md;    /* NULL: MGF1 with the signature's digest */
    const eg_md_info *mgf1;
} eg_sig_ctx;

static const eg_md_info *md_info(int nid)
{
    size_t i;

    for (i = 0; i < sizeof(eg_mds) / sizeof(eg_mds[0]); i++) {
        if (eg_mds[i].nid == nid)
            return &eg_mds[i];
    }
    return NULL;
}

/* Fetches a digest the scheme can use; SHA-1 only for PKCS#1 v1.5 and MGF1 never. */
static int fetch_md(eg_sig_ctx *ctx, const char *name, int for_mgf1, EVP_MD **md,
                    const eg_md_info **mdi)
{
    const eg_md_info *info = NULL;
    EVP_MD *fetched;

    fetched = EVP_MD_fetch(ctx->provctx->libctx, name, EG_PROV_SOFTWARE_PROPQ);
    if (fetched != NULL)
        info = md_info(EVP_MD_get_type(fetched));
    if (info != NULL && info->nid == NID_sha1 && (ctx->type != EG_KEY_RSA || for_mgf1))
        info = NULL;
    if (info == NULL || ctx->type == EG_KEY_ED25519) {
        eg_signer_error(EG_R_BAD_PARAM, "digest %s is not offered with %s keys", name,
                        eg_prov_key_type_name(ctx->type));
        EVP_MD_free(fetched);
        return 0;
    }
    EVP_MD_free(*md);
    *md = fetched;
    *mdi = info;
    return 1;
}

static int set_digest(eg_sig_ctx *ctx, const char *name)
{
    if (ctx->streaming) {
        eg_signer_error(EG_R_BAD_PARAM, "the digest cannot change in the middle of a message");
        return 0;
    }
    return fetch_md(ctx, name, 0, &ctx->md, &ctx->mdi);
}

static void sig_reset(eg_sig_ctx *ctx)
{
    eg_p11_key_free(ctx->p11);
    EVP_PKEY_free(ctx->pub);
    EVP_MD_free(ctx->md);
    EVP_MD_free(ctx->mgf1md);
    EVP_MD_CTX_free(ctx->mdctx);
    ctx->p11 = NULL;
    ctx->pub = NULL;
    ctx->md = NULL;
    ctx->mdi = NULL;
    ctx->mgf1md = NULL;
    ctx->mgf1 = NULL;
    ctx->mdctx = NULL;
    ctx->streaming = 0;
    ctx->pad = RSA_PKCS1_PADDING;
    ctx->saltlen = RSA_PSS_SALTLEN_AUTO;
}

static eg_sig_ctx *sig_newctx(void *provctx, eg_key_type type)
{
    eg_sig_ctx *ctx;

    if ((ctx = calloc(1, sizeof(*ctx))) == NULL)
        return NULL;
    ctx->provctx = provctx;
    ctx->type = type;
    sig_reset(ctx);
    return ctx;
}

static OSSL_FUNC_signature_freectx_fn eg_sig_freectx;
static OSSL_FUNC_signature_dupctx_fn eg_sig_dupctx;
static OSSL_FUNC_signature_set_ctx_params_fn eg_sig_set_ctx_params;
static OSSL_FUNC_signature_get_ctx_params_fn eg_sig_get_ctx_params;

static void eg_sig_freectx(void *vctx)
{
    eg_sig_ctx *ctx = vctx;

    if (ctx == NULL)
        return;
    sig_reset(ctx);
    free(ctx);
}

static int dup_refs(eg_sig_ctx *dst, const eg_sig_ctx *src)
{
    if (src->p11 != NULL)
        dst->p11 = eg_p11_key_ref(src->p11);
    if (src->pub != NULL && EVP_PKEY_up_ref(src->pub))
        dst->pub = src->pub;
    if (src->md != NULL && EVP_MD_up_ref(src->md))
        dst->md = src->md;
    if (src->mgf1md != NULL && EVP_MD_up_ref(src->mgf1md))
        dst->mgf1md = src->mgf1md;
    if (src->mdctx != NULL) {
        if ((dst->mdctx = EVP_MD_CTX_new()) == NULL || !EVP_MD_CTX_copy_ex(dst->mdctx, src->mdctx))
            return 0;
    }
    return (src->pub == NULL || dst->pub != NULL) && (src->md == NULL || dst->md != NULL) &&
           (src->mgf1md == NULL || dst->mgf1md != NULL);
}

static void *eg_sig_dupctx(void *vctx)
{
    const eg_sig_ctx *src = vctx;
    eg_sig_ctx *dst;

    if ((dst = malloc(sizeof(*dst))) == NULL)
        return NULL;
    *dst = *src;
    dst->p11 = NULL;
    dst->pub = NULL;
    dst->md = NULL;
    dst->mgf1md = NULL;
    dst->mdctx = NULL;
    if (!dup_refs(dst, src)) {
        eg_sig_freectx(dst);
        return NULL;
    }
    return dst;
}

/* provkey NULL: keep the key of the last initialisation (EVP re-initialisation). */
static int sig_init(eg_sig_ctx *ctx, void *provkey, int operation, const OSSL_PARAM params[])
{
    const eg_prov_key *key = provkey;

    if (key == NULL && ctx->pub != NULL) {
        EVP_MD_CTX_free(ctx->mdctx);
        ctx->mdctx = NULL;
        ctx->streaming = 0;
        ctx->operation = operation;
        return eg_sig_set_ctx_params(ctx, params);
    }
    if (key == NULL || key->magic != EG_PROV_KEY_MAGIC || key->type != ctx->type) {
        eg_signer_error(EG_R_BAD_PARAM, "not a %s token key", eg_prov_key_type_name(ctx->type));
        return 0;
    }
    if (operation == EG_SIG_SIGN && key->p11 == NULL) {
        eg_signer_error(EG_R_KEY_NOT_FOUND, "a public key cannot sign");
        return 0;
    }
    sig_reset(ctx);
    if (!EVP_PKEY_up_ref(key->pub))
        return 0;
    ctx->pub = key->pub;
    if (key->p11 != NULL)
        ctx->p11 = eg_p11_key_ref(key->p11);
    ctx->operation = operation;
    return eg_sig_set_ctx_params(ctx, params);
}

/* Digest-sign/verify: mdname NULL takes SHA-256 (RSA, ECDSA) or nothing (Ed25519). */
static int sig_digest_init(eg_sig_ctx *ctx, const char *mdname, void *provkey, int operation,
                           const OSSL_PARAM params[])
{
    if (!sig_init(ctx, provkey, operation, params))
        return 0;
    if (ctx->type == EG_KEY_ED25519) {
        if (mdname != NULL && mdname[0] != '\0') {
            eg_signer_error(EG_R_BAD_PARAM, "Ed25519 signs the message itself, not a %s digest",
                            mdname);
            return 0;
        }
        return 1;
    }
    if (mdname != NULL && mdname[0] != '\0' && !set_digest(ctx, mdname))
        return 0;
    if (ctx->md == NULL && !set_digest(ctx, "SHA256"))
        return 0;
    if ((ctx->mdctx = EVP_MD_CTX_new()) == NULL || !EVP_DigestInit_ex2(ctx->mdctx, ctx->md, NULL)) {
        eg_signer_error(EG_R_OPENSSL, "cannot start a %s digest", EVP_MD_get0_name(ctx->md));
        return 0;
    }
    return 1;
}

/* Largest signature the key makes: the buffer size callers must offer. */
static size_t sig_max_size(const eg_sig_ctx *ctx)
{
    if (ctx->type == EG_KEY_ED25519)
        return EG_ED25519_SIGLEN;
    return (size_t)EVP_PKEY_get_size(ctx->pub);
}

/* RFC 8017 9.1: emLen - hLen - 2 with emLen = ceil((modBits - 1) / 8). */
static int pss_salt(const eg_sig_ctx *ctx, CK_ULONG *out)
{
    int bits = EVP_PKEY_get_bits(ctx->pub);
    int hlen = EVP_MD_get_size(ctx->md);
    int max = (bits - 1 + 7) / 8 - hlen - 2;
    int salt;

    switch (ctx->saltlen) {
    case RSA_PSS_SALTLEN_DIGEST:
        salt = hlen;
        break;
    case RSA_PSS_SALTLEN_AUTO:
    case RSA_PSS_SALTLEN_MAX:
        salt = max;
        break;
    default:
        salt = ctx->saltlen;
    }
    if (salt < 0 || salt > max) {
        eg_signer_error(EG_R_BAD_PARAM, "PSS salt of %d bytes does not fit a %d-bit key", salt,
                        bits);
        return 0;
    }
    *out = (CK_ULONG)salt;
    return 1;
}

static int token_sign(eg_sig_ctx *ctx, CK_MECHANISM *mech, const char *what, const uint8_t *in,
                      size_t inlen, uint8_t *sig, size_t *siglen)
{
    if (!eg_token_has_mechanism(eg_p11_key_token(ctx->p11), mech->mechanism, CKF_SIGN)) {
        eg_signer_error(EG_R_MECHANISM, "%s: the token cannot make %s signatures",
                        eg_p11_key_uri(ctx->p11), what);
        return 0;
    }
    if (eg_p11_key_sign(ctx->p11, mech, in, inlen, sig, siglen) != 0) {
        eg_signer_error(EG_R_TOKEN_CALL, "%s: %s signature failed", eg_p11_key_uri(ctx->p11), what);
        return 0;
    }
    return 1;
}

static int rsa_pkcs1_sign(eg_sig_ctx *ctx, const uint8_t *dgst, size_t dlen, uint8_t *sig,
                          size_t *siglen)
{
    CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
    uint8_t buf[128];
    size_t len = dlen;
    int rc;

    /* No digest set: the caller's bytes are signed as they are, as OpenSSL does. */
    if (ctx->mdi == NULL)
        return token_sign(ctx, &mech, "RSA PKCS#1", dgst, dlen, sig, siglen);
    if (ctx->mdi->prefixlen + dlen > sizeof(buf))
        return 0;
    memcpy(buf, ctx->mdi->prefix, ctx->mdi->prefixlen);
    memcpy(buf + ctx->mdi->prefixlen, dgst, dlen);
    len = ctx->mdi->prefixlen + dlen;
    rc = token_sign(ctx, &mech, "RSA PKCS#1", buf, len, sig, siglen);
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}

static int rsa_pss_sign(eg_sig_ctx *ctx, const uint8_t *dgst, size_t dlen, uint8_t *sig,
                        size_t *siglen)
{
    CK_RSA_PKCS_PSS_PARAMS pss;
    CK_MECHANISM mech = {CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
    const eg_md_info *mgf1 = ctx->mgf1 != NULL ? ctx->mgf1 : ctx->mdi;

    if (ctx->mdi == NULL || !ctx->mdi->pss) {
        eg_signer_error(EG_R_BAD_PARAM, "RSA-PSS needs a SHA-2 digest");
        return 0;
    }
    pss.hashAlg = ctx->mdi->ckm;
    pss.mgf = mgf1->mgf;
    if (!pss_salt(ctx, &pss.sLen))
        return 0;
    return token_sign(ctx, &mech, "RSA-PSS", dgst, dlen, sig, siglen);
}

/* The token gives r||s, each as long as the group order; X.509 wants DER. */
static int ecdsa_raw_to_der(const uint8_t *raw, size_t rawlen, uint8_t *sig, size_t *siglen,
                            size_t sigsize)
{
    ECDSA_SIG *esig = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char *p = sig;
    int len, rc = 0;

    if (rawlen == 0 || rawlen % 2 != 0 || (esig = ECDSA_SIG_new()) == NULL)
        goto out;
    r = BN_bin2bn(raw, (int)rawlen / 2, NULL);
    s = BN_bin2bn(raw + rawlen / 2, (int)rawlen / 2, NULL);
    if (r == NULL || s == NULL || !ECDSA_SIG_set0(esig, r, s))
        goto out;
    r = s = NULL;
    if ((len = i2d_ECDSA_SIG(esig, NULL)) <= 0 || (size_t)len > sigsize)
        goto out;
    if (i2d_ECDSA_SIG(esig, &p) != len)
        goto out;
    *siglen = (size_t)len;
    rc = 1;
out:
    if (!rc)
        eg_signer_error(EG_R_OPENSSL, "cannot encode an ECDSA signature of %zu bytes", rawlen);
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(esig);
    return rc;
}

static int ecdsa_sign(eg_sig_ctx *ctx, const uint8_t *dgst, size_t dlen, uint8_t *sig,
                      size_t *siglen, size_t sigsize)
{
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    uint8_t raw[EG_ECDSA_RAW_MAX];
    size_t rawlen = sizeof(raw);

    if (!token_sign(ctx, &mech, "ECDSA", dgst, dlen, raw, &rawlen))
        return 0;
    return ecdsa_raw_to_der(raw, rawlen, sig, siglen, sigsize);
}

/* The token signs tbs: a digest (RSA, ECDSA) or the message (Ed25519). */
static int sig_token(eg_sig_ctx *ctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                     const unsigned char *tbs, size_t tbslen)
{
    CK_MECHANISM eddsa = {CKM_EDDSA, NULL, 0};
    size_t len = sigsize;
    int ok;

    if (ctx->operation != EG_SIG_SIGN || ctx->p11 == NULL) {
        eg_signer_error(EG_R_BAD_PARAM, "signature context not initialised for signing");
        return 0;
    }
    if (sig == NULL) {
        *siglen = sig_max_size(ctx);
        return 1;
    }
    if (ctx->mdi != NULL && tbslen != (size_t)EVP_MD_get_size(ctx->md)) {
        eg_signer_error(EG_R_BAD_PARAM, "%zu bytes to sign, not a %s digest", tbslen,
                        EVP_MD_get0_name(ctx->md));
        return 0;
    }
    /* DER ECDSA signatures vary in length: ecdsa_raw_to_der() checks the fit. */
    if (ctx->type == EG_KEY_EC)
        return ecdsa_sign(ctx, tbs, tbslen, sig, siglen, sigsize);
    if (sigsize < sig_max_size(ctx)) {
        eg_signer_error(EG_R_BAD_PARAM, "signature buffer of %zu bytes is too small", sigsize);
        return 0;
    }
    if (ctx->type == EG_KEY_ED25519)
        ok = token_sign(ctx, &eddsa, "Ed25519", tbs, tbslen, sig, &len);
    else if (ctx->pad == RSA_PKCS1_PSS_PADDING)
        ok = rsa_pss_sign(ctx, tbs, tbslen, sig, &len);
    else
        ok = rsa_pkcs1_sign(ctx, tbs, tbslen, sig, &len);
    if (ok)
        *siglen = len;
    return ok;
}

/* Software verification of tbs (a digest) with the public half. */
static int sw_verify(eg_sig_ctx *ctx, const unsigned char *sig, size_t siglen,
                     const unsigned char *tbs, size_t tbslen)
{
    EVP_PKEY_CTX *pctx;
    int rc = 0;

    pctx = EVP_PKEY_CTX_new_from_pkey(ctx->provctx->libctx, ctx->pub, EG_PROV_SOFTWARE_PROPQ);
    if (pctx == NULL || EVP_PKEY_verify_init(pctx) <= 0)
        goto out;
    if (ctx->md != NULL && EVP_PKEY_CTX_set_signature_md(pctx, ctx->md) <= 0)
        goto out;
    if (ctx->type == EG_KEY_RSA && EVP_PKEY_CTX_set_rsa_padding(pctx, ctx->pad) <= 0)
        goto out;
    if (ctx->type == EG_KEY_RSA && ctx->pad == RSA_PKCS1_PSS_PADDING &&
        (EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, ctx->saltlen) <= 0 ||
         (ctx->mgf1md != NULL && EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, ctx->mgf1md) <= 0)))
        goto out;
    rc = EVP_PKEY_verify(pctx, sig, siglen, tbs, tbslen) == 1;
out:
    EVP_PKEY_CTX_free(pctx);
    return rc;
}

/* Ed25519 verification of a whole message with the public half. */
static int sw_verify_message(eg_sig_ctx *ctx, const unsigned char *sig, size_t siglen,
                             const unsigned char *tbs, size_t tbslen)
{
    EVP_MD_CTX *mctx;
    int rc = 0;

    if ((mctx = EVP_MD_CTX_new()) == NULL)
        return 0;
    if (EVP_DigestVerifyInit_ex(mctx, NULL, NULL, ctx->provctx->libctx, EG_PROV_SOFTWARE_PROPQ,
                                ctx->pub, NULL) == 1)
        rc = EVP_DigestVerify(mctx, sig, siglen, tbs, tbslen) == 1;
    EVP_MD_CTX_free(mctx);
    return rc;
}

static OSSL_FUNC_signature_sign_init_fn eg_sig_sign_init;
static OSSL_FUNC_signature_sign_fn eg_sig_sign;
static OSSL_FUNC_signature_verify_init_fn eg_sig_verify_init;
static OSSL_FUNC_signature_verify_fn eg_sig_verify;
static OSSL_FUNC_signature_digest_sign_init_fn eg_sig_digest_sign_init;
static OSSL_FUNC_signature_digest_sign_update_fn eg_sig_digest_update;
static OSSL_FUNC_signature_digest_sign_final_fn eg_sig_digest_sign_final;
static OSSL_FUNC_signature_digest_sign_fn eg_sig_digest_sign;
static OSSL_FUNC_signature_digest_verify_init_fn eg_sig_digest_verify_init;
static OSSL_FUNC_signature_digest_verify_final_fn eg_sig_digest_verify_final;
static OSSL_FUNC_signature_digest_verify_fn eg_sig_digest_verify;

static int eg_sig_sign_init(void *ctx, void *provkey, const OSSL_PARAM params[])
{
    return sig_init(ctx, provkey, EG_SIG_SIGN, params);
}

static int eg_sig_sign(void *ctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                       const unsigned char *tbs, size_t tbslen)
{
    return sig_token(ctx, sig, siglen, sigsize, tbs, tbslen);
}

static int eg_sig_verify_init(void *ctx, void *provkey, const OSSL_PARAM params[])
{
    return sig_init(ctx, provkey, EG_SIG_VERIFY, params);
}

static int eg_sig_verify(void *vctx, const unsigned char *sig, size_t siglen,
                         const unsigned char *tbs, size_t tbslen)
{
    eg_sig_ctx *ctx = vctx;

    if (ctx->operation != EG_SIG_VERIFY)
        return 0;
    if (ctx->type == EG_KEY_ED25519)
        return sw_verify_message(ctx, sig, siglen, tbs, tbslen);
    return sw_verify(ctx, sig, siglen, tbs, tbslen);
}

static int eg_sig_digest_sign_init(void *ctx, const char *mdname, void *provkey,
                                   const OSSL_PARAM params[])
{
    return sig_digest_init(ctx, mdname, provkey, EG_SIG_SIGN, params);
}

static int eg_sig_digest_update(void *vctx, const unsigned char *data, size_t datalen)
{
    eg_sig_ctx *ctx = vctx;

    if (ctx->mdctx == NULL || !EVP_DigestUpdate(ctx->mdctx, data, datalen))
        return 0;
    ctx->streaming = 1;
    return 1;
}

/* Finishes the running hash into md; the context must be started again after. */
static int digest_final(eg_sig_ctx *ctx, unsigned char *md, size_t *mdlen)
{
    unsigned int len = 0;

    if (ctx->mdctx == NULL || !EVP_DigestFinal_ex(ctx->mdctx, md, &len))
        return 0;
    ctx->streaming = 0;
    *mdlen = len;
    return 1;
}

static int eg_sig_digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize)
{
    eg_sig_ctx *ctx = vctx;
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdlen = 0;
    int rc;

    if (sig == NULL)
        return sig_token(ctx, NULL, siglen, 0, NULL, 0);
    if (!digest_final(ctx, md, &mdlen))
        return 0;
    rc = sig_token(ctx, sig, siglen, sigsize, md, mdlen);
    OPENSSL_cleanse(md, sizeof(md));
    return rc;
}

/* Ed25519 signs the message itself, in one shot. */
static int eg_sig_digest_sign(void *ctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                              const unsigned char *tbs, size_t tbslen)
{
    return sig_token(ctx, sig, siglen, sigsize, tbs, tbslen);
}

static int eg_sig_digest_verify_init(void *ctx, const char *mdname, void *provkey,
                                     const OSSL_PARAM params[])
{
    return sig_digest_init(ctx, mdname, provkey, EG_SIG_VERIFY, params);
}

static int eg_sig_digest_verify_final(void *vctx, const unsigned char *sig, size_t siglen)
{
    eg_sig_ctx *ctx = vctx;
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdlen = 0;

    if (ctx->operation != EG_SIG_VERIFY || !digest_final(ctx, md, &mdlen))
        return 0;
    return sw_verify(ctx, sig, siglen, md, mdlen);
}

static int eg_sig_digest_verify(void *ctx, const unsigned char *sig, size_t siglen,
                                const unsigned char *tbs, size_t tbslen)
{
    return eg_sig_verify(ctx, sig, siglen, tbs, tbslen);
}

/* RSASSA-PSS-params (RFC 4055) as a SEQUENCE; SHA-2 identifiers without parameters (RFC 5754). */
static ASN1_STRING *pss_params(const eg_sig_ctx *ctx)
{
    const eg_md_info *mgf1 = ctx->mgf1 != NULL ? ctx->mgf1 : ctx->mdi;
    RSA_PSS_PARAMS *pss = RSA_PSS_PARAMS_new();
    X509_ALGOR *mgfmd = X509_ALGOR_new();
    ASN1_STRING *mgfstr = NULL, *out = NULL;
    CK_ULONG salt;

    if (pss == NULL || mgfmd == NULL || !pss_salt(ctx, &salt))
        goto out;
    if ((pss->hashAlgorithm = X509_ALGOR_new()) == NULL ||
        !X509_ALGOR_set0(pss->hashAlgorithm, OBJ_nid2obj(ctx->mdi->nid), V_ASN1_UNDEF, NULL))
        goto out;
    if (!X509_ALGOR_set0(mgfmd, OBJ_nid2obj(mgf1->nid), V_ASN1_UNDEF, NULL) ||
        ASN1_item_pack(mgfmd, ASN1_ITEM_rptr(X509_ALGOR), &mgfstr) == NULL)
        goto out;
    if ((pss->maskGenAlgorithm = X509_ALGOR_new()) == NULL ||
        !X509_ALGOR_set0(pss->maskGenAlgorithm, OBJ_nid2obj(NID_mgf1), V_ASN1_SEQUENCE, mgfstr))
        goto out;
    mgfstr = NULL;
    /* DER leaves out the default of 20. */
    if (salt != 20 && ((pss->saltLength = ASN1_INTEGER_new()) == NULL ||
                       !ASN1_INTEGER_set(pss->saltLength, (long)salt)))
        goto out;
    ASN1_item_pack(pss, ASN1_ITEM_rptr(RSA_PSS_PARAMS), &out);
out:
    ASN1_STRING_free(mgfstr);
    X509_ALGOR_free(mgfmd);
    RSA_PSS_PARAMS_free(pss);
    return out;
}

static int algorithm_set(const eg_sig_ctx *ctx, X509_ALGOR *alg)
{
    ASN1_STRING *params;

    if (ctx->type == EG_KEY_ED25519)
        return X509_ALGOR_set0(alg, OBJ_nid2obj(NID_ED25519), V_ASN1_UNDEF, NULL);
    if (ctx->mdi == NULL)
        return 0;
    if (ctx->type == EG_KEY_EC)
        return X509_ALGOR_set0(alg, OBJ_nid2obj(ctx->mdi->ecdsa_nid), V_ASN1_UNDEF, NULL);
    if (ctx->pad != RSA_PKCS1_PSS_PADDING)
        return X509_ALGOR_set0(alg, OBJ_nid2obj(ctx->mdi->rsa_nid), V_ASN1_NULL, NULL);
    if (!ctx->mdi->pss || (params = pss_params(ctx)) == NULL)
        return 0;
    if (!X509_ALGOR_set0(alg, OBJ_nid2obj(NID_rsassaPss), V_ASN1_SEQUENCE, params)) {
        ASN1_STRING_free(params);
        return 0;
    }
    return 1;
}

/* The DER AlgorithmIdentifier X509_sign and CMS write; left unset if there is none yet. */
static int get_algorithm_id(const eg_sig_ctx *ctx, OSSL_PARAM *p)
{
    X509_ALGOR *alg;
    unsigned char *der = NULL;
    int len = 0, rc = 1;

    if ((alg = X509_ALGOR_new()) == NULL)
        return 0;
    if (algorithm_set(ctx, alg) && (len = i2d_X509_ALGOR(alg, &der)) > 0)
        rc = OSSL_PARAM_set_octet_string(p, der, (size_t)len);
    OPENSSL_free(der);
    X509_ALGOR_free(alg);
    return rc;
}

static const char *pad_name(int pad)
{
    return pad == RSA_PKCS1_PSS_PADDING ? OSSL_PKEY_RSA_PAD_MODE_PSS
                                        : OSSL_PKEY_RSA_PAD_MODE_PKCSV15;
}

static int get_saltlen(const eg_sig_ctx *ctx, OSSL_PARAM *p)
{
    char num[16];

    if (p->data_type == OSSL_PARAM_INTEGER)
        return OSSL_PARAM_set_int(p, ctx->saltlen);
    switch (ctx->saltlen) {
    case RSA_PSS_SALTLEN_DIGEST:
        return OSSL_PARAM_set_utf8_string(p, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST);
    case RSA_PSS_SALTLEN_MAX:
        return OSSL_PARAM_set_utf8_string(p, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX);
    case RSA_PSS_SALTLEN_AUTO:
        return OSSL_PARAM_set_utf8_string(p, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO);
    default:
        snprintf(num, sizeof(num), "%d", ctx->saltlen);
        return OSSL_PARAM_set_utf8_string(p, num);
    }
}

static int get_rsa_params(const eg_sig_ctx *ctx, OSSL_PARAM params[])
{
    const EVP_MD *mgf1 = ctx->mgf1md != NULL ? ctx->mgf1md : ctx->md;
    OSSL_PARAM *p;

    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != NULL &&
        !(p->data_type == OSSL_PARAM_INTEGER ? OSSL_PARAM_set_int(p, ctx->pad)
                                             : OSSL_PARAM_set_utf8_string(p, pad_name(ctx->pad))))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != NULL && !get_saltlen(ctx, p))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (p != NULL && mgf1 != NULL && !OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(mgf1)))
        return 0;
    return 1;
}

static int eg_sig_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    eg_sig_ctx *ctx = vctx;
    OSSL_PARAM *p;

    if (ctx == NULL)
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID);
    if (p != NULL && !get_algorithm_id(ctx, p))
        return 0;
    p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != NULL && ctx->md != NULL && !OSSL_PARAM_set_utf8_string(p, EVP_MD_get0_name(ctx->md)))
        return 0;
    if (ctx->type == EG_KEY_RSA)
        return get_rsa_params(ctx, params);
    return 1;
}

static int set_pad(eg_sig_ctx *ctx, const OSSL_PARAM *p)
{
    const char *s = NULL;
    int pad = 0;

    if (p->data_type == OSSL_PARAM_INTEGER) {
        if (!OSSL_PARAM_get_int(p, &pad))
            return 0;
    } else if (OSSL_PARAM_get_utf8_string_ptr(p, &s)) {
        if (strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0)
            pad = RSA_PKCS1_PADDING;
        else if (strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0)
            pad = RSA_PKCS1_PSS_PADDING;
    }
    if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_PSS_PADDING) {
        eg_signer_error(EG_R_BAD_PARAM, "RSA padding %s is not offered: pkcs1 or pss",
                        s != NULL ? s : "mode");
        return 0;
    }
    ctx->pad = pad;
    return 1;
}

static int set_saltlen(eg_sig_ctx *ctx, const OSSL_PARAM *p)
{
    const char *s;
    char *end;
    long n;

    if (p->data_type == OSSL_PARAM_INTEGER)
        return OSSL_PARAM_get_int(p, &ctx->saltlen) && ctx->saltlen >= RSA_PSS_SALTLEN_MAX;
    if (!OSSL_PARAM_get_utf8_string_ptr(p, &s))
        return 0;
    if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0)
        ctx->saltlen = RSA_PSS_SALTLEN_DIGEST;
    else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0)
        ctx->saltlen = RSA_PSS_SALTLEN_MAX;
    else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0)
        ctx->saltlen = RSA_PSS_SALTLEN_AUTO;
    else if ((n = strtol(s, &end, 10)) >= 0 && n < 4096 && end != s && *end == '\0')
        ctx->saltlen = (int)n;
    else {
        eg_signer_error(EG_R_BAD_PARAM, "PSS salt length \"%s\"", s);
        return 0;
    }
    return 1;
}

static int set_rsa_params(eg_sig_ctx *ctx, const OSSL_PARAM params[])
{
    const OSSL_PARAM *p;
    const char *name;

    /* Padding first: the other two only mean something for PSS. */
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE);
    if (p != NULL && !set_pad(ctx, p))
        return 0;
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN);
    if (p != NULL && !set_saltlen(ctx, p))
        return 0;
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST);
    if (p != NULL && (!OSSL_PARAM_get_utf8_string_ptr(p, &name) ||
                      !fetch_md(ctx, name, 1, &ctx->mgf1md, &ctx->mgf1)))
        return 0;
    return 1;
}

static int eg_sig_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    eg_sig_ctx *ctx = vctx;
    const OSSL_PARAM *p;
    const char *name;

    if (ctx == NULL)
        return 0;
    if (params == NULL)
        return 1;
    p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST);
    if (p != NULL && (!OSSL_PARAM_get_utf8_string_ptr(p, &name) || !set_digest(ctx, name)))
        return 0;
    if (ctx->type == EG_KEY_RSA)
        return set_rsa_params(ctx, params);
    return 1;
}

static const OSSL_PARAM eg_rsa_gettable[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_rsa_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_ecdsa_gettable[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_ecdsa_settable[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_ed25519_gettable[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0),
    OSSL_PARAM_END,
};

static const OSSL_PARAM eg_ed25519_settable[] = {
    OSSL_PARAM_END,
};

/* The type-bound entry points of one signature algorithm. */
#define EG_SIGNATURE_COMMON(t, TYPE)                                                               \
    static OSSL_FUNC_signature_newctx_fn eg_##t##_newctx;                                          \
    static OSSL_FUNC_signature_gettable_ctx_params_fn eg_##t##_gettable_ctx_params;                \
    static OSSL_FUNC_signature_settable_ctx_params_fn eg_##t##_settable_ctx_params;                \
    static void *eg_##t##_newctx(void *provctx, const char *propq)                                 \
    {                                                                                              \
        return sig_newctx(provctx, TYPE);                                                          \
    }                                                                                              \
    static const OSSL_PARAM *eg_##t##_gettable_ctx_params(void *ctx, void *provctx)                \
    {                                                                                              \
        return eg_##t##_gettable;                                                                  \
    }                                                                                              \
    static const OSSL_PARAM *eg_##t##_settable_ctx_params(void *ctx, void *provctx)                \
    {                                                                                              \
        return eg_##t##_settable;                                                                  \
    }

#define EG_SIGNATURE_CTX_FNS(t)                                                                    \
    EG_FN(OSSL_FUNC_SIGNATURE_NEWCTX, eg_##t##_newctx),                                            \
        EG_FN(OSSL_FUNC_SIGNATURE_FREECTX, eg_sig_freectx),                                        \
        EG_FN(OSSL_FUNC_SIGNATURE_DUPCTX, eg_sig_dupctx),                                          \
        EG_FN(OSSL_FUNC_SIGNATURE_SIGN_INIT, eg_sig_sign_init),                                    \
        EG_FN(OSSL_FUNC_SIGNATURE_SIGN, eg_sig_sign),                                              \
        EG_FN(OSSL_FUNC_SIGNATURE_VERIFY_INIT, eg_sig_verify_init),                                \
        EG_FN(OSSL_FUNC_SIGNATURE_VERIFY, eg_sig_verify),                                          \
        EG_FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, eg_sig_digest_sign_init),                      \
        EG_FN(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT, eg_sig_digest_verify_init),                  \
        EG_FN(OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, eg_sig_get_ctx_params),                          \
        EG_FN(OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, eg_##t##_gettable_ctx_params),              \
        EG_FN(OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, eg_sig_set_ctx_params),                          \
        EG_FN(OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, eg_##t##_settable_ctx_params)

/* Hashing schemes: streaming digest-sign and digest-verify. */
#define EG_SIGNATURE_HASHING(t, TYPE)                                                              \
    EG_SIGNATURE_COMMON(t, TYPE)                                                                   \
    const OSSL_DISPATCH eg_##t##_signature_functions[] = {                                         \
        EG_SIGNATURE_CTX_FNS(t),                                                                   \
        EG_FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, eg_sig_digest_update),                       \
        EG_FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, eg_sig_digest_sign_final),                    \
        EG_FN(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE, eg_sig_digest_update),                     \
        EG_FN(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL, eg_sig_digest_verify_final),                \
        {0, NULL},                                                                                 \
    }

/* Ed25519 signs the message itself: one-shot digest-sign and digest-verify only. */
#define EG_SIGNATURE_ONESHOT(t, TYPE)                                                              \
    EG_SIGNATURE_COMMON(t, TYPE)                                                                   \
    const OSSL_DISPATCH eg_##t##_signature_functions[] = {                                         \
        EG_SIGNATURE_CTX_FNS(t),                                                                   \
        EG_FN(OSSL_FUNC_SIGNATURE_DIGEST_SIGN, eg_sig_digest_sign),                                \
        EG_FN(OSSL_FUNC_SIGNATURE_DIGEST_VERIFY, eg_sig_digest_verify),                            \
        {0, NULL},                                                                                 \
    }

EG_SIGNATURE_HASHING(rsa, EG_KEY_RSA);
EG_SIGNATURE_HASHING(ecdsa, EG_KEY_EC);
EG_SIGNATURE_ONESHOT(ed25519, EG_KEY_ED25519);
