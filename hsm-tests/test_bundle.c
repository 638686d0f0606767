/*
 * Fleet trust bundles end to end: the real estgate-provision makes a bundle
 * signer in a fresh token and signs bundles with it; `bundle verify` and
 * stock `openssl cms -verify` check them, and every refusal is driven
 * through the command line and checked for its exit code and message.
 */
#include <dirent.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "child.h"
#include "estgate_bundle.h"
#include "p11.h"
#include "provider.h"
#include "test_certs.h"
#include "token_harness.h"

#define MAX_ARGS 40

static eg_th_kind kind;
static eg_th *th;
static char tool[PATH_MAX];
static char signer_uri[512], other_uri[512];
static eg_child_result *r;

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", eg_th_dir(th), name);
    return buf;
}

/* Runs estgate-provision with the words given; with_token adds the harness token's options
   (an int: va_start on a bool, which promotes, is undefined). */
static int run_tool(int with_token, ...)
{
    const eg_token_config *cfg = eg_th_config(th);
    char *argv[MAX_ARGS];
    const char *a;
    va_list ap;
    int n = 0;

    argv[n++] = tool;
    va_start(ap, with_token);
    while ((a = va_arg(ap, const char *)) != NULL && n < MAX_ARGS - 10)
        argv[n++] = (char *)a;
    va_end(ap);
    if (with_token) {
        argv[n++] = "--module";
        argv[n++] = (char *)cfg->module_path;
        argv[n++] = "--token";
        argv[n++] = (char *)cfg->token_label;
        argv[n++] = "--pin-file";
        argv[n++] = (char *)cfg->pin_file;
    }
    argv[n] = NULL;
    return eg_child_run(eg_th_dir(th), NULL, argv, r);
}

/* The URI `bundle signer create` printed for its key. */
static int signer_create(const char *label, const char *ca_label, char *uri, size_t cap)
{
    char out[PATH_MAX], name[64];
    const char *p, *e;

    snprintf(name, sizeof(name), "%s.pem", label);
    if (run_tool(true, "bundle", "signer", "create", "--label", label, "--key", "ec-p256",
                 "--ca-label", ca_label, "--subject", "CN=Bundle signer,O=estgate tests", "--days",
                 "365", "--out", tpath(out, name), NULL) != 0)
        return -1;
    if ((p = strstr(r->out, "pkcs11:")) == NULL || (e = strchr(p, '\n')) == NULL ||
        (size_t)(e - p) >= cap)
        return -1;
    snprintf(uri, cap, "%.*s", (int)(e - p), p);
    return 0;
}

static int ca_create(const char *label, const char *cn)
{
    char out[PATH_MAX], name[64], subj[128];

    snprintf(name, sizeof(name), "%s.pem", label);
    snprintf(subj, sizeof(subj), "CN=%s", cn);
    return run_tool(true, "ca", "create", "--label", label, "--key", "ec-p256", "--subject", subj,
                    "--self-signed", "--days", "3650", "--out", tpath(out, name), NULL);
}

/* A software certificate file: a self-signed CA, or with ca false a leaf (eg_test_self_signed). */
static int cert_file(const char *name, const char *cn, bool ca, bool der)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = key != NULL ? eg_test_self_signed(key, cn, ca, time(NULL)) : NULL;
    char path[PATH_MAX];
    BIO *out = NULL;
    int ok;

    ok = x != NULL && (out = BIO_new_file(tpath(path, name), "wb")) != NULL &&
         (der ? i2d_X509_bio(out, x) : PEM_write_bio_X509(out, x));
    if (!ok)
        ERR_print_errors_fp(stdout);
    BIO_free(out);
    X509_free(x);
    EVP_PKEY_free(key);
    return ok ? 0 : -1;
}

static int init(void)
{
    char path[PATH_MAX];

    if (eg_th_create(kind, "bundle", &th) != 0 ||
        eg_child_built("provisioning/estgate-provision", tool) == NULL ||
        (r = calloc(1, sizeof(*r))) == NULL)
        return -1;
    /* Two CAs with a bundle signer each: ours, and one the devices do not trust. */
    if (ca_create("ca", "Fleet CA") != 0 || ca_create("other-ca", "Other CA") != 0 ||
        signer_create("bsign", "ca", signer_uri, sizeof(signer_uri)) != 0 ||
        signer_create("other-bsign", "other-ca", other_uri, sizeof(other_uri)) != 0)
        return -1;
    /* Anchors: a PEM file, a folder with a DER file and a PEM file, and a leaf. */
    if (mkdir(tpath(path, "anchors"), 0755) != 0 || cert_file("a1.pem", "Anchor 1", true, false) ||
        cert_file("anchors/a2.der", "Anchor 2", true, true) ||
        cert_file("anchors/a3.pem", "Anchor 3", true, false) ||
        cert_file("leaf.pem", "Not a CA", false, false))
        return -1;
    return 0;
}

static int clean(void)
{
    eg_th_destroy(th);
    free(r);
    return 0;
}

/* `bundle create` of version into the folder name, with the anchors a1.pem and anchors/. */
static int create(const char *uri, const char *version, const char *name)
{
    char a1[PATH_MAX], dir[PATH_MAX], out[PATH_MAX];

    return run_tool(true, "bundle", "create", "--signer", uri, "--anchor", tpath(a1, "a1.pem"),
                    "--anchor", tpath(dir, "anchors"), "--bundle-version", version, "--valid-days",
                    "30", "--out-dir", tpath(out, name), NULL);
}

/* create() with up to two more options; a NULL option ends the list early. */
static int create_with(const char *uri, const char *version, const char *name, const char *o1,
                       const char *v1, const char *o2, const char *v2)
{
    char a1[PATH_MAX], out[PATH_MAX];

    return run_tool(true, "bundle", "create", "--signer", uri, "--anchor", tpath(a1, "a1.pem"),
                    "--bundle-version", version, "--valid-days", "30", "--out-dir",
                    tpath(out, name), o1, v1, o2, v2, NULL);
}

static int verify(const char *name, const char *trust, const char *installed, const char *at)
{
    char dir[PATH_MAX], tr[PATH_MAX];

    tpath(dir, name);
    tpath(tr, trust);
    if (at != NULL)
        return run_tool(false, "bundle", "verify", "--dir", dir, "--trust", tr, "--at", at, NULL);
    return run_tool(false, "bundle", "verify", "--dir", dir, "--trust", tr, "--installed-version",
                    installed ? installed : "0", NULL);
}

/* The signer certificate inside name/manifest.cms. */
static X509 *cms_signer(const char *name)
{
    char path[PATH_MAX], file[256];
    CMS_ContentInfo *cms;
    STACK_OF(X509) *certs = NULL;
    X509 *x = NULL;
    BIO *in;

    snprintf(file, sizeof(file), "%s/manifest.cms", name);
    in = BIO_new_file(tpath(path, file), "rb");
    cms = in != NULL ? d2i_CMS_bio(in, NULL) : NULL;
    if (cms != NULL && (certs = CMS_get1_certs(cms)) != NULL && sk_X509_num(certs) == 1)
        x = sk_X509_shift(certs);
    sk_X509_pop_free(certs, X509_free);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return x;
}

/* The manifest was signed by the token key: same public key, and that key never leaves. */
static void check_token_signed(const char *name)
{
    X509 *signer = cms_signer(name);
    eg_p11_key *key = NULL;
    eg_token *tok = NULL;
    EVP_PKEY *pub = NULL;
    bool extractable = true;

    CU_ASSERT_PTR_NOT_NULL_FATAL(signer);
    CU_ASSERT_EQUAL_FATAL(eg_token_open(eg_th_config(th), &tok), 0);
    CU_ASSERT_EQUAL(eg_p11_key_open(tok, signer_uri, &key), 0);
    if (key != NULL) {
        pub = eg_p11_key_public(key);
        CU_ASSERT(pub != NULL && EVP_PKEY_eq(pub, X509_get0_pubkey(signer)) == 1);
        CU_ASSERT_EQUAL(eg_p11_key_get_bool(key, CKA_EXTRACTABLE, &extractable), 0);
        CU_ASSERT_FALSE(extractable);
    }
    EVP_PKEY_free(pub);
    eg_p11_key_free(key);
    eg_token_free(tok);
    X509_free(signer);
}

/* The signer's certificate says what it is for: the bundle-signer EKU and digitalSignature. */
static void check_signer_usage(const char *name)
{
    X509 *signer = cms_signer(name);
    ASN1_OBJECT *want = OBJ_txt2obj(ESTGATE_BUNDLE_SIGNER_EKU_OID, 1);
    EXTENDED_KEY_USAGE *eku = NULL;
    int crit = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(signer);
    eku = X509_get_ext_d2i(signer, NID_ext_key_usage, &crit, NULL);
    CU_ASSERT_FATAL(eku != NULL && want != NULL);
    CU_ASSERT_EQUAL(sk_ASN1_OBJECT_num(eku), 1);
    CU_ASSERT_EQUAL(OBJ_cmp(sk_ASN1_OBJECT_value(eku, 0), want), 0);
    CU_ASSERT_EQUAL(crit, 1);
    CU_ASSERT_EQUAL(X509_get_key_usage(signer), KU_DIGITAL_SIGNATURE);
    CU_ASSERT_EQUAL(X509_EXTENSION_get_critical(
                        X509_get_ext(signer, X509_get_ext_by_NID(signer, NID_key_usage, -1))),
                    1);
    EXTENDED_KEY_USAGE_free(eku);
    ASN1_OBJECT_free(want);
    X509_free(signer);
}

static void test_create_then_verify(void)
{
    char path[PATH_MAX];

    CU_ASSERT_EQUAL(create(signer_uri, "3", "v3"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "version 3 with 3 trust anchors"));
    CU_ASSERT_EQUAL(access(tpath(path, "v3/trust-bundle.pem"), R_OK), 0);
    CU_ASSERT_EQUAL(access(tpath(path, "v3/trust-bundle.p7b"), R_OK), 0);
    CU_ASSERT_EQUAL(access(tpath(path, "v3/manifest.cms"), R_OK), 0);
    CU_ASSERT_EQUAL(verify("v3", "ca.pem", "2", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "bundle version 3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "CN=Anchor 1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "CN=Anchor 2"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "CN=Anchor 3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "CN=Bundle signer"));
    /* The signer's own certificate file (signer, then CA) is trust enough too. */
    CU_ASSERT_EQUAL(verify("v3", "bsign.pem", NULL, NULL), 0);
    check_token_signed("v3");
    check_signer_usage("v3");
}

/* --out-dir bundles/v4 where bundles/ does not exist yet: made, as mkdir -p would. */
static void test_create_makes_missing_parents(void)
{
    char path[PATH_MAX];

    CU_ASSERT_NOT_EQUAL_FATAL(access(tpath(path, "published"), F_OK), 0);
    CU_ASSERT_EQUAL(create(signer_uri, "4", "published/fleet/v4"), 0);
    CU_ASSERT_EQUAL(verify("published/fleet/v4", "ca.pem", "3", NULL), 0);
}

static void test_openssl_accepts_the_files(void)
{
    char in[PATH_MAX], ca[PATH_MAX], other[PATH_MAX], out[PATH_MAX], p7b[PATH_MAX];
    char *text;

    if (access("/usr/bin/openssl", X_OK) != 0) {
        CU_FAIL("openssl is not installed");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(access(tpath(in, "v3/manifest.cms"), R_OK), 0);
    /* Its default purpose, S/MIME signing, wants emailProtection, which a bundle signer lacks. */
    CU_ASSERT_NOT_EQUAL(eg_child_cmd(eg_th_dir(th), r, "/usr/bin/openssl", "cms", "-verify",
                                     "-inform", "DER", "-in", in, "-CAfile", tpath(ca, "ca.pem"),
                                     "-out", tpath(out, "manifest.txt"), NULL),
                        0);
    CU_ASSERT_EQUAL(eg_child_cmd(eg_th_dir(th), r, "/usr/bin/openssl", "cms", "-verify", "-inform",
                                 "DER", "-in", in, "-CAfile", tpath(ca, "ca.pem"), "-purpose",
                                 "any", "-out", tpath(out, "manifest.txt"), NULL),
                    0);
    text = eg_file_read(out, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL(strncmp(text, "estgate-trust-bundle-manifest 1\nbundle-version 3\n", 49), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "anchor-count 3\n"));
    free(text);
    /* openssl refuses it against another CA: the acceptance above means something. */
    CU_ASSERT_NOT_EQUAL(eg_child_cmd(eg_th_dir(th), r, "/usr/bin/openssl", "cms", "-verify",
                                     "-inform", "DER", "-in", in, "-CAfile",
                                     tpath(other, "other-ca.pem"), "-purpose", "any", "-out", out,
                                     NULL),
                        0);
    CU_ASSERT_EQUAL(eg_child_cmd(eg_th_dir(th), r, "/usr/bin/openssl", "pkcs7", "-inform", "DER",
                                 "-in", tpath(p7b, "v3/trust-bundle.p7b"), "-print_certs", "-noout",
                                 NULL),
                    0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "Anchor 3"));
}

/* Copies bundle from into to, then flips one byte at offset (from the end when < 0) of file. */
static int tamper(const char *from, const char *to, const char *file, long offset)
{
    static const char *const files[] = {"trust-bundle.pem", "trust-bundle.p7b", "manifest.cms"};
    char src[PATH_MAX], dst[PATH_MAX], name[256];
    size_t len, i;
    char *data;
    int rc = 0;

    mkdir(tpath(dst, to), 0755);
    for (i = 0; i < 3 && rc == 0; i++) {
        snprintf(name, sizeof(name), "%s/%s", from, files[i]);
        if ((data = eg_file_read(tpath(src, name), &len)) == NULL)
            return -1;
        if (strcmp(files[i], file) == 0)
            data[offset < 0 ? (long)len + offset : offset] ^= 0x01;
        snprintf(name, sizeof(name), "%s/%s", to, files[i]);
        rc = eg_file_write(tpath(dst, name), data, len, 0644);
        free(data);
    }
    return rc;
}

static void test_tampered_files_are_refused(void)
{
    CU_ASSERT_EQUAL_FATAL(tamper("v3", "t-pem", "trust-bundle.pem", 100), 0);
    CU_ASSERT_EQUAL(verify("t-pem", "ca.pem", NULL, NULL), 81);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "tampered"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "trust-bundle.pem"));
    CU_ASSERT_EQUAL_FATAL(tamper("v3", "t-p7b", "trust-bundle.p7b", -40), 0);
    CU_ASSERT_EQUAL(verify("t-p7b", "ca.pem", NULL, NULL), 81);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "trust-bundle.p7b"));
    /* The last bytes of manifest.cms are the signature. */
    CU_ASSERT_EQUAL_FATAL(tamper("v3", "t-sig", "manifest.cms", -5), 0);
    CU_ASSERT_EQUAL(verify("t-sig", "ca.pem", NULL, NULL), 81);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "signature"));
    CU_ASSERT_EQUAL(verify("v3", "ca.pem", NULL, NULL), 0); /* the original is still good */
}

static void test_manifest_text_change_is_refused(void)
{
    char path[PATH_MAX];
    size_t len;
    char *data, *p;

    CU_ASSERT_EQUAL_FATAL(tamper("v3", "t-man", "manifest.cms", 0), 0);
    /* Undo the flip at 0, then change the signed version instead: 3 becomes 9. */
    data = eg_file_read(tpath(path, "v3/manifest.cms"), &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(data);
    p = memmem(data, len, "bundle-version 3\n", 17);
    CU_ASSERT_PTR_NOT_NULL(p);
    if (p != NULL) {
        p[15] = '9';
        CU_ASSERT_EQUAL(eg_file_write(tpath(path, "t-man/manifest.cms"), data, len, 0644), 0);
        CU_ASSERT_EQUAL(verify("t-man", "ca.pem", NULL, NULL), 81);
    }
    free(data);
}

static void test_other_signer_is_refused(void)
{
    CU_ASSERT_EQUAL_FATAL(create(other_uri, "4", "other"), 0);
    CU_ASSERT_EQUAL(verify("other", "ca.pem", NULL, NULL), 80);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "not trusted"));
    CU_ASSERT_EQUAL(verify("other", "other-ca.pem", NULL, NULL), 0);
}

static void test_expired_is_refused(void)
{
    char at[32];
    time_t later = time(NULL) + 31 * 86400;
    struct tm tm;

    gmtime_r(&later, &tm);
    strftime(at, sizeof(at), "%Y-%m-%dT%H:%M:%SZ", &tm);
    CU_ASSERT_EQUAL(verify("v3", "ca.pem", NULL, at), 82);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "expired"));
    later = time(NULL) + 29 * 86400;
    gmtime_r(&later, &tm);
    strftime(at, sizeof(at), "%Y-%m-%dT%H:%M:%SZ", &tm);
    CU_ASSERT_EQUAL(verify("v3", "ca.pem", NULL, at), 0);
}

static void test_rollback_is_refused(void)
{
    CU_ASSERT_EQUAL(verify("v3", "ca.pem", "3", NULL), 84);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "not newer than the installed version 3"));
    CU_ASSERT_EQUAL(verify("v3", "ca.pem", "17", NULL), 84);
    CU_ASSERT_EQUAL(verify("v3", "ca.pem", "2", NULL), 0);
}

static void test_garbage_is_refused(void)
{
    char path[PATH_MAX];

    CU_ASSERT_EQUAL_FATAL(tamper("v3", "junk", "manifest.cms", 0), 0);
    CU_ASSERT_EQUAL(eg_file_write(tpath(path, "junk/manifest.cms"), "junk\n", 5, 0644), 0);
    CU_ASSERT_EQUAL(verify("junk", "ca.pem", NULL, NULL), 65);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "malformed"));
    CU_ASSERT_EQUAL(verify("no-such-bundle", "ca.pem", NULL, NULL), 66);
}

/* A refused create leaves no folder and no file behind. */
static void check_create_refused(int code, const char *msg, const char *name)
{
    char path[PATH_MAX];

    CU_ASSERT_EQUAL(r->code, code);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, msg));
    CU_ASSERT_NOT_EQUAL(access(tpath(path, name), F_OK), 0);
}

static void test_create_refuses_bad_input(void)
{
    char a1[PATH_MAX], leaf[PATH_MAX], out[PATH_MAX];

    tpath(a1, "a1.pem");
    tpath(leaf, "leaf.pem");
    tpath(out, "refused");
    run_tool(true, "bundle", "create", "--signer", signer_uri, "--anchor", a1, "--anchor", leaf,
             "--bundle-version", "5", "--valid-days", "30", "--out-dir", out, NULL);
    check_create_refused(65, "not a CA certificate", "refused");
    run_tool(true, "bundle", "create", "--signer", signer_uri, "--anchor", a1, "--anchor", a1,
             "--bundle-version", "5", "--valid-days", "30", "--out-dir", out, NULL);
    check_create_refused(65, "duplicate", "refused");
    run_tool(true, "bundle", "create", "--signer", signer_uri, "--anchor", a1, "--bundle-version",
             "0", "--valid-days", "30", "--out-dir", out, NULL);
    check_create_refused(64, "positive integer", "refused");
    run_tool(true, "bundle", "create", "--signer", signer_uri, "--anchor", a1, "--bundle-version",
             "5", "--valid-days", "400", "--out-dir", out, NULL);
    check_create_refused(65, "would outlive the certificate of", "refused");
    /* The way out it names exists: there is no command to renew a signer. */
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "`estgate-provision bundle signer create --label"));
    run_tool(true, "bundle", "create", "--signer", "pkcs11:object=no-such-key;type=private",
             "--anchor", a1, "--bundle-version", "5", "--valid-days", "30", "--out-dir", out, NULL);
    check_create_refused(69, "no-such-key", "refused");
    /* A published version is never overwritten. */
    CU_ASSERT_EQUAL(create(signer_uri, "6", "v3"), 73);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "already exists"));
    CU_ASSERT_EQUAL(verify("v3", "ca.pem", NULL, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "bundle version 3"));
}

/* An estgated configuration in the test folder for the harness token: its [server] and [token],
   then the profiles given. */
static int write_ini(const char *name, const char *tls_chain, const char *profiles)
{
    const eg_token_config *cfg = eg_th_config(th);
    char path[PATH_MAX], *text = NULL;
    int n, rc;

    n = asprintf(&text,
                 "[server]\ntls_key = pkcs11:token=%s;object=tls\ntls_chain = %s\n"
                 "ledger = ledger.db\n\n[token]\nmodule = %s\nlabel = %s\npin_file = %s\n\n%s",
                 cfg->token_label, tls_chain, cfg->module_path, cfg->token_label, cfg->pin_file,
                 profiles);
    rc = n < 0 ? -1 : eg_file_write(tpath(path, name), text, (size_t)n, 0600);
    free(text);
    return rc;
}

/* `bundle install` of the bundle in the folder bundle into profile of the configuration name. */
static int install_from(const char *bundle, const char *name, const char *profile)
{
    char dir[PATH_MAX], tr[PATH_MAX], ini[PATH_MAX];

    return run_tool(false, "bundle", "install", "--dir", tpath(dir, bundle), "--trust",
                    tpath(tr, "ca.pem"), "--config", tpath(ini, name), "--profile", profile, NULL);
}

static int install(const char *name, const char *profile)
{
    return install_from("inst", name, profile);
}

/* Whether the file name still holds exactly what the file ca.pem holds. */
static bool still_ca(const char *name)
{
    char a[PATH_MAX], b[PATH_MAX];
    size_t la = 0, lb = 0;
    char *x = eg_file_read(tpath(a, "ca.pem"), &la), *y = eg_file_read(tpath(b, name), &lb);
    bool same = x != NULL && y != NULL && la == lb && memcmp(x, y, la) == 0;

    free(x);
    free(y);
    return same;
}

#define PROFILE_HEAD "ca_key = pkcs11:object=ca;type=private\nca_chain = issuing.pem\nauth = mtls\n"

/*
 * A client_ca file that estgated also reads as something else (a profile's
 * issuing chain, directly or through a link, or the TLS chain) is refused
 * with nothing written, so the CA chain survives; a client_ca two profiles
 * share is installed, with a warning naming the other profile.
 */
static void test_install_refuses_a_shared_client_ca(void)
{
    char path[PATH_MAX], src[PATH_MAX];
    char *text;

    CU_ASSERT_EQUAL_FATAL(create(signer_uri, "1", "inst"), 0);
    CU_ASSERT_EQUAL_FATAL(eg_child_cmd(eg_th_dir(th), r, "/bin/cp", tpath(src, "ca.pem"),
                                       tpath(path, "issuing.pem"), NULL),
                          0);
    CU_ASSERT_EQUAL_FATAL(
        eg_child_cmd(eg_th_dir(th), r, "/bin/cp", src, tpath(path, "tls.pem"), NULL), 0);
    CU_ASSERT_EQUAL_FATAL(
        eg_child_cmd(eg_th_dir(th), r, "/bin/cp", src, tpath(path, "clients.pem"), NULL), 0);
    CU_ASSERT_EQUAL_FATAL(symlink("issuing.pem", tpath(path, "link.pem")), 0);

    /* The demo's old layout: client_ca and ca_chain one file. */
    CU_ASSERT_EQUAL_FATAL(write_ini("same.ini", "tls.pem",
                                    "[profile iot]\n" PROFILE_HEAD "client_ca = issuing.pem\n"),
                          0);
    CU_ASSERT_EQUAL(install("same.ini", "iot"), 78);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "profile iot's ca_chain (its issuing CA chain)"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "Nothing was written"));
    CU_ASSERT(still_ca("issuing.pem"));
    CU_ASSERT_NOT_EQUAL(access(tpath(path, "issuing.pem.version"), F_OK), 0);

    /* Another profile's chain, through a symbolic link. */
    CU_ASSERT_EQUAL_FATAL(write_ini("link.ini", "tls.pem",
                                    "[profile default]\n" PROFILE_HEAD "client_ca = clients.pem\n"
                                    "[profile iot]\nca_key = pkcs11:object=ca;type=private\n"
                                    "ca_chain = tls.pem\nauth = mtls\nclient_ca = link.pem\n"),
                          0);
    CU_ASSERT_EQUAL(install("link.ini", "iot"), 78);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "profile default's ca_chain"));
    CU_ASSERT(still_ca("issuing.pem"));

    /* The TLS chain. */
    CU_ASSERT_EQUAL_FATAL(
        write_ini("tls.ini", "tls.pem", "[profile iot]\n" PROFILE_HEAD "client_ca = tls.pem\n"), 0);
    CU_ASSERT_EQUAL(install("tls.ini", "iot"), 78);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "[server] tls_chain"));
    CU_ASSERT(still_ca("tls.pem"));

    /* Two profiles trusting one file of their own: installed, and the other one named. */
    CU_ASSERT_EQUAL_FATAL(write_ini("shared.ini", "tls.pem",
                                    "[profile default]\n" PROFILE_HEAD "client_ca = clients.pem\n"
                                    "[profile iot]\n" PROFILE_HEAD "client_ca = clients.pem\n"),
                          0);
    CU_ASSERT_EQUAL(install("shared.ini", "iot"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "warning: profile default has the same client_ca file"));
    CU_ASSERT(still_ca("issuing.pem"));
    CU_ASSERT_FALSE(still_ca("clients.pem"));
    text = eg_file_read(tpath(path, "clients.pem.version"), NULL);
    CU_ASSERT(text != NULL && strcmp(text, "1\n") == 0);
    free(text);
}

/*
 * A certificate for a software key from the token CA "ca", with the EKU
 * emailProtection: what estgated issues on a profile with that EKU and the
 * factory CA key. Written as impostor.pem and its key as impostor.key.
 */
static int impostor_cert(X509 **cert, EVP_PKEY **key)
{
    X509 *ca = NULL, *x = X509_new();
    eg_p11_key *ca_key = NULL;
    EVP_PKEY *ca_pkey = NULL;
    eg_token *tok = NULL;
    X509V3_CTX ctx;
    char path[PATH_MAX];
    BIO *in = BIO_new_file(tpath(path, "ca.pem"), "r");
    static const char *const exts[][2] = {{"basicConstraints", "critical,CA:FALSE"},
                                          {"keyUsage", "critical,digitalSignature"},
                                          {"extendedKeyUsage", "emailProtection"},
                                          {"authorityKeyIdentifier", "keyid:always"}};
    size_t i;
    int ok;

    *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ok = in != NULL && (ca = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL && x != NULL &&
         *key != NULL && eg_provider_init(NULL) == 0 &&
         eg_token_open(eg_th_config(th), &tok) == 0 &&
         eg_p11_key_open(tok, "pkcs11:object=ca;type=private", &ca_key) == 0 &&
         eg_provider_key_pkey(NULL, ca_key, &ca_pkey) == 0 && X509_set_version(x, X509_VERSION_3) &&
         ASN1_INTEGER_set(X509_get_serialNumber(x), 666) &&
         X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                    (const unsigned char *)"Mallory", -1, -1, 0) &&
         X509_set_issuer_name(x, X509_get_subject_name(ca)) &&
         X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL &&
         X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365) != NULL && X509_set_pubkey(x, *key);
    X509V3_set_ctx(&ctx, ca, x, NULL, NULL, 0);
    for (i = 0; ok && i < sizeof(exts) / sizeof(exts[0]); i++) {
        X509_EXTENSION *e = X509V3_EXT_nconf(NULL, &ctx, exts[i][0], exts[i][1]);

        ok = e != NULL && X509_add_ext(x, e, -1) == 1;
        X509_EXTENSION_free(e);
    }
    ok = ok && X509_sign(x, ca_pkey, EVP_sha256()) > 0;
    if (!ok) {
        ERR_print_errors_fp(stdout);
        X509_free(x);
        x = NULL;
    }
    *cert = x;
    EVP_PKEY_free(ca_pkey);
    eg_p11_key_free(ca_key);
    eg_token_free(tok);
    X509_free(ca);
    BIO_free(in);
    return ok ? 0 : -1;
}

/* name/manifest.cms's manifest text with "bundle-version 3" made 999, signed by who. */
static int forge(const char *from, const char *name, X509 *who, EVP_PKEY *key)
{
    char path[PATH_MAX], file[256], text[8192];
    BIO *in, *data = NULL, *out = NULL;
    CMS_ContentInfo *cms = NULL, *forged = NULL;
    ASN1_OCTET_STRING **content;
    const char *p;
    int n = -1, ok;

    snprintf(file, sizeof(file), "%s/manifest.cms", from);
    in = BIO_new_file(tpath(path, file), "rb");
    ok = in != NULL && (cms = d2i_CMS_bio(in, NULL)) != NULL &&
         (content = CMS_get0_content(cms)) != NULL && *content != NULL &&
         (p = memmem(ASN1_STRING_get0_data(*content), (size_t)ASN1_STRING_length(*content),
                     "bundle-version 3\n", 17)) != NULL;
    if (ok) {
        const char *t = (const char *)ASN1_STRING_get0_data(*content);
        int len = ASN1_STRING_length(*content);

        n = snprintf(text, sizeof(text), "%.*sbundle-version 999\n%.*s", (int)(p - t), t,
                     (int)(len - (p + 17 - t)), p + 17);
    }
    snprintf(file, sizeof(file), "%s/manifest.cms", name);
    ok = ok && n > 0 && (size_t)n < sizeof(text) && (data = BIO_new_mem_buf(text, n)) != NULL &&
         (forged = CMS_sign(who, key, NULL, data, CMS_BINARY | CMS_NOSMIMECAP)) != NULL &&
         (out = BIO_new_file(tpath(path, file), "wb")) != NULL && i2d_CMS_bio(out, forged) == 1;
    if (!ok)
        ERR_print_errors_fp(stdout);
    BIO_free(out);
    CMS_ContentInfo_free(forged);
    BIO_free(data);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return ok ? 0 : -1;
}

/*
 * A reviewer's attack: a certificate from the devices' CA for another use
 * signs a bundle with version 999, which before was verified, installed, and
 * locked the genuine next bundle out as a rollback. Only the bundle-signer
 * EKU tells the genuine signer apart; verify and install refuse it, saying so.
 */
static void test_a_certificate_that_is_not_a_bundle_signer_is_refused(void)
{
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    char path[PATH_MAX], src[PATH_MAX];

    CU_ASSERT_EQUAL_FATAL(impostor_cert(&cert, &key), 0);
    /* v3's files, which the forged manifest names, and the forged manifest. */
    CU_ASSERT_EQUAL_FATAL(tamper("v3", "forged", "none", 0), 0);
    CU_ASSERT_EQUAL_FATAL(forge("v3", "forged", cert, key), 0);
    CU_ASSERT_EQUAL(verify("forged", "ca.pem", "3", NULL), 80);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "CN=Mallory) is not a bundle signer"));

    CU_ASSERT_EQUAL_FATAL(eg_child_cmd(eg_th_dir(th), r, "/bin/cp", tpath(src, "ca.pem"),
                                       tpath(path, "fleet.pem"), NULL),
                          0);
    CU_ASSERT_EQUAL_FATAL(write_ini("forged.ini", "tls.pem",
                                    "[profile iot]\n" PROFILE_HEAD "client_ca = fleet.pem\n"),
                          0);
    CU_ASSERT_EQUAL(install_from("forged", "forged.ini", "iot"), 80);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "is not a bundle signer"));
    CU_ASSERT(still_ca("fleet.pem"));
    CU_ASSERT_NOT_EQUAL(access(tpath(path, "fleet.pem.version"), F_OK), 0);

    /* The genuine signer's bundle still goes in. */
    CU_ASSERT_EQUAL(install_from("v3", "forged.ini", "iot"), 0);
    CU_ASSERT_EQUAL(verify("v3", "ca.pem", "2", NULL), 0);
    X509_free(cert);
    EVP_PKEY_free(key);
}

/* A key whose certificate is not a bundle signer's (here a TLS key's) does not sign a bundle. */
static void test_create_refuses_a_signer_without_the_eku(void)
{
    char path[PATH_MAX], uri[512];
    const char *p, *e;

    CU_ASSERT_EQUAL_FATAL(run_tool(true, "tls", "create", "--label", "not-a-signer", "--key",
                                   "ec-p256", "--ca-label", "ca", "--dns", "est.test.example",
                                   "--days", "30", "--out", tpath(path, "not-a-signer.pem"), NULL),
                          0);
    p = strstr(r->out, "pkcs11:");
    e = p != NULL ? strchr(p, '\n') : NULL;
    CU_ASSERT_FATAL(e != NULL && (size_t)(e - p) < sizeof(uri));
    snprintf(uri, sizeof(uri), "%.*s", (int)(e - p), p);
    CU_ASSERT_EQUAL(create(uri, "7", "no-eku"), 65);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "is not a bundle signer's"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "bundle signer create"));
    CU_ASSERT_NOT_EQUAL(access(tpath(path, "no-eku"), F_OK), 0);
}

/* Every certificate of a PEM file; 0 or -1. */
static int read_certs(const char *path, STACK_OF(X509) * *out)
{
    BIO *in = BIO_new_file(path, "r");
    STACK_OF(X509) *sk = sk_X509_new_null();
    X509 *x;

    while (in != NULL && sk != NULL && (x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL) {
        if (sk_X509_push(sk, x) <= 0)
            X509_free(x);
    }
    ERR_clear_error();
    BIO_free(in);
    if (sk == NULL || sk_X509_num(sk) == 0) {
        sk_X509_free(sk);
        return -1;
    }
    *out = sk;
    return 0;
}

/* The certificates in name/manifest.cms: how many, and how many of them are self-signed. */
static void cms_cert_counts(const char *name, int *n, int *self_signed)
{
    char path[PATH_MAX], file[256];
    CMS_ContentInfo *cms;
    STACK_OF(X509) *certs = NULL;
    BIO *in;
    int i;

    *n = *self_signed = -1;
    snprintf(file, sizeof(file), "%s/manifest.cms", name);
    in = BIO_new_file(tpath(path, file), "rb");
    cms = in != NULL ? d2i_CMS_bio(in, NULL) : NULL;
    if (cms != NULL && (certs = CMS_get1_certs(cms)) != NULL) {
        *n = sk_X509_num(certs);
        for (*self_signed = 0, i = 0; i < *n; i++)
            *self_signed += X509_self_signed(sk_X509_value(certs, i), 0) == 1;
    }
    sk_X509_pop_free(certs, X509_free);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
}

/*
 * After a CA key rollover (`ca renew --new-label`, operator guide) the
 * devices still hold the old root, and a signer from the new key chains to
 * it only through NewWithOld. A reviewer's case: `bundle create` exited 0
 * and the bundle carried the signer's certificate alone, so devices refused
 * it. With --trust (what devices hold) create refuses to publish such a
 * bundle; with --chain (the rollover's file) the link goes into the CMS and
 * the bundle verifies against the old root, the new root, and in openssl.
 */
static void test_a_bundle_after_a_ca_rollover_verifies_with_the_old_root(void)
{
    char uri[512], path[PATH_MAX], chain[PATH_MAX], old_root[PATH_MAX], in[PATH_MAX];
    STACK_OF(X509) *certs = NULL;
    X509 *new_root = NULL;
    BIO *f;
    int n, self;

    CU_ASSERT_EQUAL_FATAL(ca_create("rca", "Rollover CA"), 0);
    CU_ASSERT_EQUAL_FATAL(run_tool(true, "ca", "renew", "--label", "rca", "--new-label", "rca-2",
                                   "--key", "ec-p256", "--days", "3650", "--out",
                                   tpath(chain, "rca-2-chain.pem"), NULL),
                          0);
    CU_ASSERT_EQUAL_FATAL(signer_create("rsign", "rca-2", uri, sizeof(uri)), 0);
    tpath(old_root, "rca.pem");

    /* Checked against what devices hold and missing the link: refused, nothing written. */
    CU_ASSERT_EQUAL(create_with(uri, "1", "roll-refused", "--trust", old_root, NULL, NULL), 65);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "devices that trust"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "unable to get local issuer certificate"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "--chain"));
    CU_ASSERT_NOT_EQUAL(access(tpath(path, "roll-refused"), F_OK), 0);

    /* Without --trust it is checked against the signer alone, as before, and says so. */
    CU_ASSERT_EQUAL(create_with(uri, "1", "roll-unchecked", NULL, NULL, NULL, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "--trust"));
    CU_ASSERT_EQUAL(verify("roll-unchecked", "rca.pem", NULL, NULL), 80);

    /* --chain takes CA certificates: a leaf there is a mistake, said before the token. */
    CU_ASSERT_EQUAL(create_with(uri, "2", "roll", "--chain", tpath(path, "leaf.pem"), NULL, NULL),
                    65);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "(/CN=Not a CA) is not a CA certificate"));
    CU_ASSERT_NOT_EQUAL(access(tpath(path, "roll"), F_OK), 0);

    CU_ASSERT_EQUAL(create_with(uri, "2", "roll", "--chain", chain, "--trust", old_root), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "devices that trust"));
    CU_ASSERT_EQUAL(verify("roll", "rca.pem", "1", NULL), 0);
    /* The signer, NewWithOld and OldWithNew: no root, which a device holds or cannot use. */
    cms_cert_counts("roll", &n, &self);
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT_EQUAL(self, 0);
    /* A device that already has the new root (the chain file's first certificate) accepts it. */
    CU_ASSERT_EQUAL_FATAL(read_certs(chain, &certs), 0);
    new_root = sk_X509_value(certs, 0);
    CU_ASSERT_FATAL(X509_self_signed(new_root, 0) == 1);
    f = BIO_new_file(tpath(path, "rca-2-root.pem"), "w");
    CU_ASSERT_FATAL(f != NULL && PEM_write_bio_X509(f, new_root) == 1);
    BIO_free(f);
    CU_ASSERT_EQUAL(verify("roll", "rca-2-root.pem", "1", NULL), 0);
    CU_ASSERT_EQUAL(verify("roll", "ca.pem", "1", NULL), 80);
    CU_ASSERT_EQUAL(eg_child_cmd(eg_th_dir(th), r, "/usr/bin/openssl", "cms", "-verify", "-inform",
                                 "DER", "-in", tpath(in, "roll/manifest.cms"), "-CAfile", old_root,
                                 "-purpose", "any", "-out", tpath(path, "roll.txt"), NULL),
                    0);
    sk_X509_pop_free(certs, X509_free);
}

static CU_TestInfo tests[] = {
    {"create, then verify against the CA and the signer", test_create_then_verify},
    {"openssl cms -verify and pkcs7 accept the files", test_openssl_accepts_the_files},
    {"create makes the folder's missing parents", test_create_makes_missing_parents},
    {"a changed PEM, PKCS#7 or signature exits 81", test_tampered_files_are_refused},
    {"a changed manifest version exits 81", test_manifest_text_change_is_refused},
    {"another signer exits 80", test_other_signer_is_refused},
    {"an expired bundle exits 82", test_expired_is_refused},
    {"an older or equal version exits 84", test_rollback_is_refused},
    {"garbage exits 65, a missing bundle 66", test_garbage_is_refused},
    {"create refuses leaves, duplicates, bad versions", test_create_refuses_bad_input},
    {"install refuses a client_ca that is also a CA or TLS chain",
     test_install_refuses_a_shared_client_ca},
    {"a certificate from the CA that is not a bundle signer is refused",
     test_a_certificate_that_is_not_a_bundle_signer_is_refused},
    {"create refuses a signer without the bundle-signer EKU",
     test_create_refuses_a_signer_without_the_eku},
    {"after a CA key rollover a bundle verifies with the old root",
     test_a_bundle_after_a_ca_rollover_verifies_with_the_old_root},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, init, clean, tests);
}
