/*
 * Verifying a trust bundle on a device. The order is fixed: who signed
 * (chain to the device's trust), that the signature covers this manifest,
 * that the files are the ones the manifest names, then time and version, so
 * that nothing an unauthenticated file says is believed before the checks
 * that make it authentic.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "estgate_bundle.h"

struct vctx {
    const estgate_bundle_files *files;
    const estgate_bundle_policy *policy;
    char *why;
    size_t whylen;
    CMS_ContentInfo *cms;
    X509 *signer;               /* borrowed from cms */
    estgate_bundle_verified *v; /* what is handed out on success */
};

static estgate_bundle_status fail(struct vctx *c, estgate_bundle_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static estgate_bundle_status fail(struct vctx *c, estgate_bundle_status st, const char *fmt, ...)
{
    va_list ap;

    if (c->why != NULL && c->whylen > 0) {
        va_start(ap, fmt);
        vsnprintf(c->why, c->whylen, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* A signed-data CMS with attached id-data content, one signer, and that signer's certificate. */
static estgate_bundle_status parse_cms(struct vctx *c)
{
    const unsigned char *p = c->files->manifest_cms;
    STACK_OF(CMS_SignerInfo) * sis;

    if (p == NULL || c->files->manifest_cms_len > ESTGATE_BUNDLE_MAX_FILE ||
        (c->cms = d2i_CMS_ContentInfo(NULL, &p, (long)c->files->manifest_cms_len)) == NULL ||
        p != c->files->manifest_cms + c->files->manifest_cms_len)
        return fail(c, ESTGATE_BUNDLE_MALFORMED, "%s is not a DER CMS message",
                    ESTGATE_BUNDLE_MANIFEST_FILE);
    if (OBJ_obj2nid(CMS_get0_type(c->cms)) != NID_pkcs7_signed ||
        OBJ_obj2nid(CMS_get0_eContentType(c->cms)) != NID_pkcs7_data ||
        CMS_get0_content(c->cms) == NULL || *CMS_get0_content(c->cms) == NULL)
        return fail(c, ESTGATE_BUNDLE_MALFORMED, "%s is not SignedData with the manifest inside",
                    ESTGATE_BUNDLE_MANIFEST_FILE);
    sis = CMS_get0_SignerInfos(c->cms);
    if (sk_CMS_SignerInfo_num(sis) != 1)
        return fail(c, ESTGATE_BUNDLE_MALFORMED, "%s must have exactly one signer",
                    ESTGATE_BUNDLE_MANIFEST_FILE);
    if (CMS_set1_signers_certs(c->cms, NULL, 0) < 0)
        return fail(c, ESTGATE_BUNDLE_MALFORMED, "%s: cannot match its signer to a certificate",
                    ESTGATE_BUNDLE_MANIFEST_FILE);
    CMS_SignerInfo_get0_algs(sk_CMS_SignerInfo_value(sis, 0), NULL, &c->signer, NULL, NULL);
    if (c->signer == NULL)
        return fail(c, ESTGATE_BUNDLE_MALFORMED, "%s does not include the signer's certificate",
                    ESTGATE_BUNDLE_MANIFEST_FILE);
    return ESTGATE_BUNDLE_OK;
}

/* Each trusted certificate is an anchor as given: a pinned signer need not be self-signed. */
static X509_STORE *trust_store(const estgate_bundle_policy *pol)
{
    X509_STORE *st = X509_STORE_new();
    int i;

    if (st == NULL || X509_STORE_set_flags(st, X509_V_FLAG_PARTIAL_CHAIN) != 1)
        goto err;
    for (i = 0; i < sk_X509_num(pol->trusted); i++) {
        if (X509_STORE_add_cert(st, sk_X509_value(pol->trusted, i)) != 1)
            goto err;
    }
    return st;
err:
    X509_STORE_free(st);
    return NULL;
}

/* Whether the certificate's extended key usage lists the bundle-signer OID. */
static int has_signer_eku(X509 *x, int *has)
{
    ASN1_OBJECT *want = OBJ_txt2obj(ESTGATE_BUNDLE_SIGNER_EKU_OID, 1);
    EXTENDED_KEY_USAGE *eku;
    int i;

    if (want == NULL)
        return -1;
    *has = 0;
    eku = X509_get_ext_d2i(x, NID_ext_key_usage, NULL, NULL);
    for (i = 0; eku != NULL && i < sk_ASN1_OBJECT_num(eku) && !*has; i++)
        *has = OBJ_cmp(sk_ASN1_OBJECT_value(eku, i), want) == 0;
    EXTENDED_KEY_USAGE_free(eku);
    ASN1_OBJECT_free(want);
    return 0;
}

/*
 * The signer is a bundle signer: its EKU names ESTGATE_BUNDLE_SIGNER_EKU_OID
 * (anyExtendedKeyUsage does not count) and its key usage, when it has one,
 * allows digitalSignature. Chaining to the devices' CA is not enough: that CA
 * issues certificates for other uses too.
 */
static estgate_bundle_status check_signer_use(struct vctx *c)
{
    char name[256];
    int has;

    if (has_signer_eku(c->signer, &has) != 0)
        return fail(c, ESTGATE_BUNDLE_INTERNAL, "out of memory");
    X509_NAME_oneline(X509_get_subject_name(c->signer), name, sizeof(name));
    if (!has)
        return fail(c, ESTGATE_BUNDLE_UNTRUSTED_SIGNER,
                    "the certificate that signed the bundle (%s) is not a bundle signer: its "
                    "extended key usage lacks the estgate bundle signer (%s), which only "
                    "`estgate-provision bundle signer create` gives",
                    name, ESTGATE_BUNDLE_SIGNER_EKU_OID);
    if ((X509_get_key_usage(c->signer) & KU_DIGITAL_SIGNATURE) == 0)
        return fail(c, ESTGATE_BUNDLE_UNTRUSTED_SIGNER,
                    "the certificate that signed the bundle (%s) is not a bundle signer: its key "
                    "usage does not allow digitalSignature",
                    name);
    return ESTGATE_BUNDLE_OK;
}

/*
 * The signer's certificate chains to the trust at the device's time, and is a
 * bundle signer's. No X509 purpose is set: OpenSSL's S/MIME purpose wants
 * emailProtection or no EKU, which is exactly what a bundle signer must not
 * be limited to; check_signer_use checks the EKU that matters instead.
 */
static estgate_bundle_status check_signer(struct vctx *c)
{
    STACK_OF(X509) *untrusted = CMS_get1_certs(c->cms);
    X509_STORE *st = trust_store(c->policy);
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    estgate_bundle_status rc;

    if (untrusted == NULL || st == NULL || ctx == NULL ||
        X509_STORE_CTX_init(ctx, st, c->signer, untrusted) != 1) {
        rc = fail(c, ESTGATE_BUNDLE_INTERNAL, "cannot set up the signer's verification");
        goto out;
    }
    X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx), c->policy->now);
    if (X509_verify_cert(ctx) != 1) {
        rc = fail(c, ESTGATE_BUNDLE_UNTRUSTED_SIGNER,
                  "the bundle signer's certificate is not trusted: %s",
                  X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        goto out;
    }
    rc = check_signer_use(c);
out:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    sk_X509_pop_free(untrusted, X509_free);
    return rc;
}

/* The signature over the manifest, with the certificate just checked; gives the manifest text. */
static estgate_bundle_status check_signature(struct vctx *c)
{
    BIO *out = BIO_new(BIO_s_mem());
    estgate_bundle_status rc;
    char *text;
    long len;

    if (out == NULL) {
        rc = fail(c, ESTGATE_BUNDLE_INTERNAL, "out of memory");
        goto done;
    }
    if (CMS_verify(c->cms, NULL, NULL, NULL, out, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY) != 1) {
        rc = fail(c, ESTGATE_BUNDLE_TAMPERED,
                  "the signature of %s does not verify: the manifest or its signature was "
                  "changed, or another key signed it",
                  ESTGATE_BUNDLE_MANIFEST_FILE);
        goto done;
    }
    len = BIO_get_mem_data(out, &text);
    rc = estgate_bundle_manifest_parse((const unsigned char *)text, (size_t)len, &c->v->manifest,
                                       c->why, c->whylen);
done:
    BIO_free(out);
    return rc;
}

static int sha256(const unsigned char *data, size_t len, unsigned char md[32])
{
    return EVP_Digest(data, len, md, NULL, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

static estgate_bundle_status check_file(struct vctx *c, const char *name, const unsigned char *data,
                                        size_t len, const unsigned char want[32])
{
    unsigned char md[32];

    if (data == NULL || len > ESTGATE_BUNDLE_MAX_FILE)
        return fail(c, ESTGATE_BUNDLE_MALFORMED, "%s is missing or too large", name);
    if (sha256(data, len, md) != 0)
        return fail(c, ESTGATE_BUNDLE_INTERNAL, "SHA-256 failed");
    if (CRYPTO_memcmp(md, want, 32) != 0)
        return fail(c, ESTGATE_BUNDLE_TAMPERED,
                    "%s is not the file the manifest names (its SHA-256 differs)", name);
    return ESTGATE_BUNDLE_OK;
}

/* The certificates are exactly the manifest's anchors, in its order. */
static estgate_bundle_status check_anchors(struct vctx *c, const char *name, STACK_OF(X509) * certs)
{
    const estgate_bundle_manifest *m = &c->v->manifest;
    unsigned char md[32];
    unsigned int n;
    int i;

    if (certs == NULL || (size_t)sk_X509_num(certs) != m->anchor_count)
        return fail(c, ESTGATE_BUNDLE_MALFORMED,
                    "%s does not hold the %zu anchors the manifest lists", name, m->anchor_count);
    for (i = 0; i < sk_X509_num(certs); i++) {
        if (X509_digest(sk_X509_value(certs, i), EVP_sha256(), md, &n) != 1 || n != 32)
            return fail(c, ESTGATE_BUNDLE_INTERNAL, "SHA-256 failed");
        if (CRYPTO_memcmp(md, m->anchor_sha256[i], 32) != 0)
            return fail(c, ESTGATE_BUNDLE_MALFORMED,
                        "anchor %d of %s is not the one the manifest lists", i + 1, name);
    }
    return ESTGATE_BUNDLE_OK;
}

/* Every certificate of the PEM file; NULL when one does not parse or there are too many. */
static STACK_OF(X509) * pem_certs(const unsigned char *data, size_t len)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    BIO *in = BIO_new_mem_buf(data, (int)len);
    X509 *x;

    while (sk != NULL && in != NULL && sk_X509_num(sk) <= ESTGATE_BUNDLE_MAX_ANCHORS &&
           (x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL) {
        if (sk_X509_push(sk, x) <= 0)
            X509_free(x);
    }
    /* The loop ends with "no start line" at the end of the data; anything else is an error. */
    if (in == NULL || sk_X509_num(sk) > ESTGATE_BUNDLE_MAX_ANCHORS ||
        ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE) {
        sk_X509_pop_free(sk, X509_free);
        sk = NULL;
    }
    BIO_free(in);
    return sk;
}

static STACK_OF(X509) * p7b_certs(const unsigned char *data, size_t len)
{
    const unsigned char *p = data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    STACK_OF(X509) *sk = NULL;

    if (cms != NULL && p == data + len && OBJ_obj2nid(CMS_get0_type(cms)) == NID_pkcs7_signed)
        sk = CMS_get1_certs(cms);
    CMS_ContentInfo_free(cms);
    return sk;
}

static estgate_bundle_status check_files(struct vctx *c)
{
    const estgate_bundle_files *f = c->files;
    const estgate_bundle_manifest *m = &c->v->manifest;
    STACK_OF(X509) *p7 = NULL;
    estgate_bundle_status rc;

    if ((rc = check_file(c, ESTGATE_BUNDLE_PEM_FILE, f->pem, f->pem_len, m->pem_sha256)) != 0 ||
        (rc = check_file(c, ESTGATE_BUNDLE_P7B_FILE, f->p7b, f->p7b_len, m->p7b_sha256)) != 0)
        goto out;
    c->v->anchors = pem_certs(f->pem, f->pem_len);
    p7 = p7b_certs(f->p7b, f->p7b_len);
    if ((rc = check_anchors(c, ESTGATE_BUNDLE_PEM_FILE, c->v->anchors)) != 0 ||
        (rc = check_anchors(c, ESTGATE_BUNDLE_P7B_FILE, p7)) != 0)
        goto out;
    rc = ESTGATE_BUNDLE_OK;
out:
    sk_X509_pop_free(p7, X509_free);
    return rc;
}

static estgate_bundle_status check_time_and_version(struct vctx *c)
{
    const estgate_bundle_manifest *m = &c->v->manifest;
    int64_t now = (int64_t)c->policy->now;
    char t[21] = "?";

    if (now < m->issued_at) {
        estgate_bundle_time_format(m->issued_at, t);
        return fail(c, ESTGATE_BUNDLE_NOT_YET_VALID, "the bundle is not valid before %s", t);
    }
    if (now >= m->not_after) {
        estgate_bundle_time_format(m->not_after, t);
        return fail(c, ESTGATE_BUNDLE_EXPIRED, "the bundle expired at %s", t);
    }
    if (m->version <= c->policy->installed_version)
        return fail(c, ESTGATE_BUNDLE_ROLLBACK,
                    "bundle version %llu is not newer than the installed version %llu",
                    (unsigned long long)m->version,
                    (unsigned long long)c->policy->installed_version);
    return ESTGATE_BUNDLE_OK;
}

void estgate_bundle_verified_free(estgate_bundle_verified *v)
{
    if (v == NULL)
        return;
    sk_X509_pop_free(v->anchors, X509_free);
    X509_free(v->signer);
    OPENSSL_free(v);
}

estgate_bundle_status estgate_bundle_verify(const estgate_bundle_files *files,
                                            const estgate_bundle_policy *policy,
                                            estgate_bundle_verified **out, char *why, size_t whylen)
{
    struct vctx c = {files, policy, why, whylen, NULL, NULL, NULL};
    estgate_bundle_status rc;

    ERR_set_mark();
    if (files == NULL || policy == NULL || out == NULL || policy->trusted == NULL) {
        rc = fail(&c, ESTGATE_BUNDLE_INTERNAL, "missing argument");
        goto out;
    }
    if ((c.v = OPENSSL_zalloc(sizeof(*c.v))) == NULL) {
        rc = fail(&c, ESTGATE_BUNDLE_INTERNAL, "out of memory");
        goto out;
    }
    if ((rc = parse_cms(&c)) != 0 || (rc = check_signer(&c)) != 0 ||
        (rc = check_signature(&c)) != 0 || (rc = check_files(&c)) != 0 ||
        (rc = check_time_and_version(&c)) != 0)
        goto out;
    if (!X509_up_ref(c.signer)) {
        rc = fail(&c, ESTGATE_BUNDLE_INTERNAL, "out of memory");
        goto out;
    }
    c.v->signer = c.signer;
    *out = c.v;
    c.v = NULL;
    rc = ESTGATE_BUNDLE_OK;
out:
    /* What went wrong is in why; the library leaves no errors of its own on the caller's stack. */
    ERR_pop_to_mark();
    estgate_bundle_verified_free(c.v);
    CMS_ContentInfo_free(c.cms);
    return rc;
}
