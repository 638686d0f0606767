/*
 * Building a trust bundle: the anchors as PEM and as PKCS#7 certs-only, and a
 * manifest of their digests signed with CMS in the token. What is built is
 * checked with the device library before it is written, as a device holding
 * the --trust file would, so a bundle that such a device would refuse is
 * never published.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>

#include "bundle.h"
#include "cert_build.h"
#include "files.h"
#include "provision.h"
#include "report.h"

void eg_bundle_files_clear(eg_bundle_files *f)
{
    BIO_free(f->pem);
    BIO_free(f->p7b);
    BIO_free(f->manifest);
    memset(f, 0, sizeof(*f));
}

static int build_pem(STACK_OF(X509) * anchors, BIO *out)
{
    int i;

    for (i = 0; i < sk_X509_num(anchors); i++) {
        if (!PEM_write_bio_X509(out, sk_X509_value(anchors, i)))
            return -1;
    }
    return 0;
}

/* Degenerate SignedData, as `openssl crl2pkcs7 -nocrl` makes: no signers, no content. */
static int build_p7b(STACK_OF(X509) * anchors, BIO *out)
{
    PKCS7 *p7 = PKCS7_new();
    int i, rc = -1;

    if (p7 == NULL || !PKCS7_set_type(p7, NID_pkcs7_signed))
        goto out;
    p7->d.sign->contents->type = OBJ_nid2obj(NID_pkcs7_data);
    for (i = 0; i < sk_X509_num(anchors); i++) {
        if (!PKCS7_add_certificate(p7, sk_X509_value(anchors, i)))
            goto out;
    }
    if (!i2d_PKCS7_bio(out, p7))
        goto out;
    rc = 0;
out:
    PKCS7_free(p7);
    return rc;
}

static int sha256_bio(BIO *b, unsigned char md[32])
{
    char *p;
    long len = BIO_get_mem_data(b, &p);

    return EVP_Digest(p, (size_t)len, md, NULL, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

static char *manifest_text(const eg_bundle_spec *s, const eg_bundle_files *f, size_t *len)
{
    estgate_bundle_manifest *m = OPENSSL_zalloc(sizeof(*m));
    unsigned int n;
    char *text = NULL;
    int i;

    if (m == NULL)
        goto out;
    m->version = s->version;
    m->issued_at = s->issued_at;
    m->not_after = s->not_after;
    m->anchor_count = (size_t)sk_X509_num(s->anchors);
    if (sha256_bio(f->pem, m->pem_sha256) != 0 || sha256_bio(f->p7b, m->p7b_sha256) != 0)
        goto out;
    for (i = 0; i < sk_X509_num(s->anchors) && i < ESTGATE_BUNDLE_MAX_ANCHORS; i++) {
        if (X509_digest(sk_X509_value(s->anchors, i), EVP_sha256(), m->anchor_sha256[i], &n) != 1)
            goto out;
    }
    text = estgate_bundle_manifest_format(m, len);
out:
    OPENSSL_free(m);
    return text;
}

/*
 * CMS SignedData with the manifest inside, the signer's certificate and the
 * chain's; signed in the token.
 */
static int sign_manifest(const eg_bundle_spec *s, const char *text, size_t len, BIO *out)
{
    const unsigned int flags = CMS_BINARY | CMS_NOSMIMECAP | CMS_PARTIAL;
    BIO *data = BIO_new_mem_buf(text, (int)len);
    EVP_MD *md = EVP_MD_fetch(NULL, eg_prov_digest_for(X509_get0_pubkey(s->signer_cert)),
                              "provider!=estgate");
    CMS_ContentInfo *cms = NULL;
    int i, rc = -1;

    if (data == NULL || md == NULL || (cms = CMS_sign(NULL, NULL, NULL, NULL, flags)) == NULL ||
        CMS_add1_signer(cms, s->signer_cert, s->signer_key, md, flags) == NULL)
        goto out;
    for (i = 0; i < sk_X509_num(s->chain); i++) {
        if (CMS_add1_cert(cms, sk_X509_value(s->chain, i)) != 1)
            goto out;
    }
    if (CMS_final(cms, data, NULL, flags & ~CMS_PARTIAL) != 1 || i2d_CMS_bio(out, cms) != 1)
        goto out;
    rc = 0;
out:
    CMS_ContentInfo_free(cms);
    EVP_MD_free(md);
    BIO_free(data);
    return rc;
}

static void bio_bytes(BIO *b, const unsigned char **p, size_t *len)
{
    char *d;

    *len = (size_t)BIO_get_mem_data(b, &d);
    *p = (const unsigned char *)d;
}

/* Why a bundle devices would refuse is not published, and what to give instead. */
static int refused(const eg_bundle_spec *s, estgate_bundle_status st, const char *why)
{
    if (s->trust == NULL)
        return eg_prov_fail(EG_EXIT_DATAERR, "the bundle just signed does not verify (%s): %s",
                            estgate_bundle_status_name(st), why);
    if (st == ESTGATE_BUNDLE_UNTRUSTED_SIGNER && sk_X509_num(s->chain) <= 0)
        return eg_prov_fail(EG_EXIT_DATAERR,
                            "devices that trust %s would refuse this bundle (%s): %s. Nothing "
                            "was written. When the signer's CA is a rollover's new key or is "
                            "certified by another CA, give --chain with the file that links it "
                            "to %s (the --out of `ca renew --new-label`, or the profile's "
                            "ca_chain)",
                            s->trust_file, estgate_bundle_status_name(st), why, s->trust_file);
    return eg_prov_fail(EG_EXIT_DATAERR,
                        "devices that trust %s would refuse this bundle (%s): %s. Nothing was "
                        "written",
                        s->trust_file, estgate_bundle_status_name(st), why);
}

/*
 * The bundle as a device would check it: trusting spec->trust, what devices
 * hold, or without it only the signer's certificate, which proves the
 * signature and files but not that devices reach the signer.
 */
static int self_check(const eg_bundle_spec *s, const eg_bundle_files *f)
{
    estgate_bundle_files in;
    estgate_bundle_policy pol = {s->trust, (time_t)s->issued_at, 0};
    STACK_OF(X509) *own = NULL;
    estgate_bundle_verified *v = NULL;
    estgate_bundle_status st;
    char why[512] = "";
    int rc;

    bio_bytes(f->manifest, &in.manifest_cms, &in.manifest_cms_len);
    bio_bytes(f->pem, &in.pem, &in.pem_len);
    bio_bytes(f->p7b, &in.p7b, &in.p7b_len);
    if (pol.trusted == NULL && ((pol.trusted = own = sk_X509_new_null()) == NULL ||
                                sk_X509_push(own, s->signer_cert) <= 0)) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    if ((st = estgate_bundle_verify(&in, &pol, &v, why, sizeof(why))) != ESTGATE_BUNDLE_OK) {
        rc = refused(s, st, why);
        goto out;
    }
    rc = EG_EXIT_OK;
out:
    estgate_bundle_verified_free(v);
    sk_X509_free(own);
    return rc;
}

int eg_bundle_build(const eg_bundle_spec *s, eg_bundle_files *out)
{
    eg_bundle_files f = {BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem())};
    char *text = NULL;
    size_t len = 0;
    int rc;

    if (f.pem == NULL || f.p7b == NULL || f.manifest == NULL || build_pem(s->anchors, f.pem) != 0 ||
        build_p7b(s->anchors, f.p7b) != 0 || (text = manifest_text(s, &f, &len)) == NULL) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot encode the bundle");
        goto out;
    }
    if (sign_manifest(s, text, len, f.manifest) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "signing the manifest in the token failed");
        goto out;
    }
    if ((rc = self_check(s, &f)) != EG_EXIT_OK)
        goto out;
    *out = f;
    memset(&f, 0, sizeof(f));
    rc = EG_EXIT_OK;
out:
    OPENSSL_free(text);
    eg_bundle_files_clear(&f);
    return rc;
}

static const char *const file_names[3] = {ESTGATE_BUNDLE_PEM_FILE, ESTGATE_BUNDLE_P7B_FILE,
                                          ESTGATE_BUNDLE_MANIFEST_FILE};

/* The folder exists (made now, with its parents, if it did not) and holds no bundle yet: a version
 * is never replaced.
 */
static int prepare_dir(const char *dir)
{
    char path[4096];
    int i;

    if (eg_prov_mkdirs(dir, 0755) != 0)
        return eg_prov_fail(EG_EXIT_CANTCREAT, "cannot create the folder %s: %s", dir,
                            strerror(errno));
    for (i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, file_names[i]);
        if (access(path, F_OK) == 0)
            return eg_prov_fail(EG_EXIT_CANTCREAT,
                                "%s already exists; publish each bundle in a folder of its own",
                                path);
    }
    return EG_EXIT_OK;
}

int eg_bundle_write(const char *dir, const eg_bundle_files *f)
{
    BIO *const data[3] = {f->pem, f->p7b, f->manifest};
    eg_prov_outfile *of[3] = {NULL, NULL, NULL};
    char path[4096];
    int i, rc;

    if ((rc = prepare_dir(dir)) != EG_EXIT_OK)
        goto out;
    for (i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, file_names[i]);
        if ((rc = eg_prov_outfile_open(path, 0644, &of[i])) != EG_EXIT_OK ||
            (rc = eg_prov_outfile_write(of[i], data[i])) != EG_EXIT_OK)
            goto out;
    }
    /* The manifest last: a reader that finds it finds the files it names. */
    for (i = 0; i < 3; i++) {
        if ((rc = eg_prov_outfile_commit(of[i])) != EG_EXIT_OK)
            goto out;
    }
    rc = EG_EXIT_OK;
out:
    for (i = 0; i < 3; i++)
        eg_prov_outfile_free(of[i]);
    return rc;
}

int eg_bundle_read_file(const char *dir, const char *name, unsigned char **data, size_t *len)
{
    const size_t cap = ESTGATE_BUNDLE_MAX_FILE + 1; /* one more: the library refuses larger */
    unsigned char *buf = NULL;
    char path[4096];
    FILE *fp;
    size_t n;
    int rc;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if ((fp = fopen(path, "rb")) == NULL) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if ((buf = malloc(cap)) == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    n = fread(buf, 1, cap, fp);
    if (ferror(fp)) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    *data = buf;
    *len = n;
    buf = NULL;
    rc = EG_EXIT_OK;
out:
    free(buf);
    if (fp != NULL)
        fclose(fp);
    return rc;
}
