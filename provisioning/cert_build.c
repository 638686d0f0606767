/*
 * Certificates and CSRs for token keys. The private key never leaves the
 * token: X509_sign_ctx() runs the provider's signature in the token, and the
 * result is checked here with the issuer's public key before anyone sees it.
 */
#include <string.h>

#include <openssl/bn.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "cert_build.h"
#include "estgate_bundle.h"
#include "provision.h"
#include "report.h"

const char *eg_prov_digest_for(const EVP_PKEY *pub)
{
    int bits = EVP_PKEY_get_bits(pub);

    if (EVP_PKEY_is_a(pub, "EC"))
        return bits >= 384 ? "SHA384" : "SHA256";
    return bits >= 3072 ? "SHA384" : "SHA256";
}

/* Random, positive, and always 16 bytes long: no leading zero byte to drop. */
static int set_serial(X509 *x)
{
    unsigned char b[16];
    BIGNUM *bn = NULL;
    int ok = 0;

    if (RAND_bytes(b, sizeof(b)) != 1)
        goto out;
    b[0] = (unsigned char)((b[0] & 0x7f) | 0x40);
    ok = (bn = BN_bin2bn(b, sizeof(b), NULL)) != NULL &&
         BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
out:
    BN_free(bn);
    return ok ? 0 : -1;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1) == 1;

    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

static int push_name(GENERAL_NAMES *gens, int type, ASN1_STRING *value)
{
    GENERAL_NAME *g;

    if (value == NULL || (g = GENERAL_NAME_new()) == NULL) {
        ASN1_STRING_free(value);
        return -1;
    }
    GENERAL_NAME_set0_value(g, type, value);
    if (sk_GENERAL_NAME_push(gens, g) <= 0) {
        GENERAL_NAME_free(g);
        return -1;
    }
    return 0;
}

static ASN1_STRING *ia5(const char *s)
{
    ASN1_IA5STRING *a = ASN1_IA5STRING_new();

    if (a != NULL && ASN1_STRING_set(a, s, -1) != 1) {
        ASN1_IA5STRING_free(a);
        a = NULL;
    }
    return a;
}

/* Built as GENERAL_NAMEs, not a config string, so no name can smuggle in another entry. */
static int add_san(X509 *x, const eg_prov_cert_spec *s)
{
    GENERAL_NAMES *gens = GENERAL_NAMES_new();
    size_t i;
    int rc = -1;

    if (gens == NULL)
        goto out;
    for (i = 0; i < s->ndns; i++) {
        if (push_name(gens, GEN_DNS, ia5(s->dns[i])) != 0)
            goto out;
    }
    for (i = 0; i < s->nips; i++) {
        if (push_name(gens, GEN_IPADD, a2i_IPADDRESS(s->ips[i])) != 0)
            goto out;
    }
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) != 1)
        goto out;
    rc = 0;
out:
    GENERAL_NAMES_free(gens);
    return rc;
}

static int add_extensions(X509 *x, const eg_prov_cert_spec *s)
{
    X509V3_CTX ctx;
    int ca = s->profile == EG_PROFILE_CA;

    X509V3_set_ctx_nodb(&ctx);
    /* Self-signed: the AKI keyid is the certificate's own SKI, added just before. */
    X509V3_set_ctx(&ctx, s->issuer != NULL ? s->issuer : x, x, NULL, NULL, 0);
    if (add_ext(x, &ctx, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE") ||
        add_ext(x, &ctx, NID_key_usage,
                ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature") ||
        (s->ski != NULL ? X509_add1_ext_i2d(x, NID_subject_key_identifier,
                                            (ASN1_OCTET_STRING *)s->ski, 0, X509V3_ADD_DEFAULT) != 1
                        : add_ext(x, &ctx, NID_subject_key_identifier, "hash")) ||
        add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always"))
        return -1;
    if (s->profile == EG_PROFILE_TLS_SERVER &&
        (add_ext(x, &ctx, NID_ext_key_usage, "serverAuth") || add_san(x, s)))
        return -1;
    /* Critical: the key signs bundles and nothing else, and nothing else signs bundles. */
    if (s->profile == EG_PROFILE_SIGNER &&
        add_ext(x, &ctx, NID_ext_key_usage, "critical," ESTGATE_BUNDLE_SIGNER_EKU_OID))
        return -1;
    return 0;
}

/* Signs in the token through the provider, then checks the signature in software. */
static int sign_cert(X509 *x, EVP_PKEY *signer, EVP_PKEY *issuer_pub)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int ok;

    ok = mctx != NULL &&
         EVP_DigestSignInit_ex(mctx, NULL, eg_prov_digest_for(issuer_pub), NULL, NULL, signer,
                               NULL) == 1 &&
         X509_sign_ctx(x, mctx) > 0;
    EVP_MD_CTX_free(mctx);
    if (!ok)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "signing the certificate in the token failed");
    if (X509_verify(x, issuer_pub) != 1)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "the token's signature on the certificate does "
                                              "not verify with the issuer's public key");
    return EG_EXIT_OK;
}

static int fill_cert(X509 *x, const eg_prov_cert_spec *s)
{
    const X509_NAME *issuer = s->issuer ? X509_get_subject_name(s->issuer) : s->subject;

    if (X509_set_version(x, X509_VERSION_3) != 1 || set_serial(x) != 0 ||
        X509_set_subject_name(x, s->subject) != 1 || X509_set_issuer_name(x, issuer) != 1)
        return -1;
    if (s->not_before != NULL ? X509_set1_notBefore(x, s->not_before) != 1
                              : X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL)
        return -1;
    if (s->not_after != NULL ? X509_set1_notAfter(x, s->not_after) != 1
                             : X509_time_adj_ex(X509_getm_notAfter(x), s->days, 0, NULL) == NULL)
        return -1;
    if (X509_set_pubkey(x, s->pubkey) != 1 || add_extensions(x, s) != 0)
        return -1;
    return 0;
}

int eg_prov_cert_build(const eg_prov_cert_spec *s, X509 **out)
{
    EVP_PKEY *issuer_pub = s->issuer != NULL ? X509_get0_pubkey(s->issuer) : s->pubkey;
    X509 *x = X509_new();
    int rc;

    if (x == NULL || issuer_pub == NULL || fill_cert(x, s) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot build the certificate");
        goto out;
    }
    if ((rc = sign_cert(x, s->signer, issuer_pub)) != EG_EXIT_OK)
        goto out;
    *out = x;
    x = NULL;
    rc = EG_EXIT_OK;
out:
    X509_free(x);
    return rc;
}

static int push_ext(STACK_OF(X509_EXTENSION) * exts, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);

    if (ext == NULL || sk_X509_EXTENSION_push(exts, ext) <= 0) {
        X509_EXTENSION_free(ext);
        return -1;
    }
    return 0;
}

/* Asks the external root for what a CA certificate needs; the root decides what it grants. */
static int add_ca_request(X509_REQ *req)
{
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509V3_CTX ctx;
    int ok;

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, NULL, NULL, req, NULL, 0);
    ok = exts != NULL && push_ext(exts, &ctx, NID_basic_constraints, "critical,CA:TRUE") == 0 &&
         push_ext(exts, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") == 0 &&
         X509_REQ_add_extensions(req, exts) == 1;
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    return ok ? 0 : -1;
}

static int sign_req(X509_REQ *req, EVP_PKEY *signer, EVP_PKEY *pub)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int ok;

    ok =
        mctx != NULL &&
        EVP_DigestSignInit_ex(mctx, NULL, eg_prov_digest_for(pub), NULL, NULL, signer, NULL) == 1 &&
        X509_REQ_sign_ctx(req, mctx) > 0;
    EVP_MD_CTX_free(mctx);
    if (!ok)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "signing the CSR in the token failed");
    if (X509_REQ_verify(req, pub) != 1)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "the token's signature on the CSR does not verify");
    return EG_EXIT_OK;
}

int eg_prov_csr_build(const X509_NAME *subject, EVP_PKEY *pubkey, EVP_PKEY *signer, X509_REQ **out)
{
    X509_REQ *req = X509_REQ_new();
    int rc;

    if (req == NULL || X509_REQ_set_version(req, X509_REQ_VERSION_1) != 1 ||
        X509_REQ_set_subject_name(req, subject) != 1 || X509_REQ_set_pubkey(req, pubkey) != 1 ||
        add_ca_request(req) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot build the CSR");
        goto out;
    }
    if ((rc = sign_req(req, signer, pubkey)) != EG_EXIT_OK)
        goto out;
    *out = req;
    req = NULL;
    rc = EG_EXIT_OK;
out:
    X509_REQ_free(req);
    return rc;
}
