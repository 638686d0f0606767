/*
 * estgate-provision against real tokens: the built binary runs as a child
 * (posix_spawn, no shell) on a fresh harness token, and what it wrote is
 * checked in-process: the PEM files with OpenSSL, the token through the
 * signer (key attributes, stored certificates, a refused C_WrapKey).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "child.h"
#include "p11.h"
#include "p11_uri.h"
#include "token_harness.h"

#define MAX_ARGS 40

static eg_th_kind kind;
static eg_th *th;
static char tool[PATH_MAX];

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", eg_th_dir(th), name);
    return buf;
}

/* Runs argv with its output captured; 0 when it ran, whatever its exit status. */
static int spawn_capture(char *const argv[], eg_child_result *r)
{
    eg_child_run(eg_th_dir(th), NULL, argv, r);
    return r->code == -1 ? -1 : 0;
}

/* Appends the harness token's --module (and --init-args) to argv at n; the new count. */
static int module_args(char **argv, int n)
{
    const eg_token_config *cfg = eg_th_config(th);

    argv[n++] = "--module";
    argv[n++] = (char *)cfg->module_path;
    if (cfg->init_args != NULL) {
        argv[n++] = "--init-args";
        argv[n++] = (char *)cfg->init_args;
    }
    return n;
}

/*
 * Runs estgate-provision with the words in the NULL-terminated list, then the
 * harness token's options; token and pin_file override the token's own.
 */
static int provision(eg_child_result *r, const char *token, const char *pin_file, ...)
{
    const eg_token_config *cfg = eg_th_config(th);
    char *argv[MAX_ARGS];
    const char *a;
    va_list ap;
    int n = 0;

    argv[n++] = tool;
    va_start(ap, pin_file);
    while ((a = va_arg(ap, const char *)) != NULL && n < MAX_ARGS - 10)
        argv[n++] = (char *)a;
    va_end(ap);
    n = module_args(argv, n);
    argv[n++] = "--token";
    argv[n++] = (char *)(token ? token : cfg->token_label);
    argv[n++] = "--pin-file";
    argv[n++] = (char *)(pin_file ? pin_file : cfg->pin_file);
    argv[n] = NULL;
    return spawn_capture(argv, r);
}

static int write_secret(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ssize_t n;

    if (fd < 0)
        return -1;
    n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static STACK_OF(X509) * read_chain(const char *path)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    BIO *in = BIO_new_file(path, "r");
    X509 *x;

    while (sk != NULL && in != NULL && (x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL)
        sk_X509_push(sk, x);
    ERR_clear_error();
    BIO_free(in);
    return sk;
}

static X509 *read_cert(const char *path)
{
    STACK_OF(X509) *sk = read_chain(path);
    X509 *x = sk_X509_num(sk) > 0 ? sk_X509_shift(sk) : NULL;

    sk_X509_pop_free(sk, X509_free);
    return x;
}

/* What `openssl verify -CAfile ca [-purpose p]` does, in-process. */
static bool verifies(X509 *leaf, X509 *ca, int purpose)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    bool ok;

    ok = st != NULL && ctx != NULL && X509_STORE_add_cert(st, ca) == 1 &&
         X509_STORE_CTX_init(ctx, st, leaf, NULL) == 1 &&
         (purpose == 0 || X509_STORE_CTX_set_purpose(ctx, purpose) == 1) &&
         X509_verify_cert(ctx) == 1;
    if (!ok && ctx != NULL)
        printf("\n  verify: %s\n", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    return ok;
}

static bool ext_critical(X509 *x, int nid)
{
    int i = X509_get_ext_by_NID(x, nid, -1);

    return i >= 0 && X509_EXTENSION_get_critical(X509_get_ext(x, i)) == 1;
}

static void check_serial(X509 *x)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);

    CU_ASSERT_PTR_NOT_NULL_FATAL(bn);
    CU_ASSERT(!BN_is_negative(bn));
    CU_ASSERT(BN_num_bits(bn) >= 64);
    BN_free(bn);
}

/* The checks `openssl x509 -text` would let a person make on a root. */
static void check_root(X509 *x, int sig_nid, const char *cn)
{
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(x);
    const ASN1_OCTET_STRING *aki = X509_get0_authority_key_id(x);
    char name[256];

    CU_ASSERT_EQUAL(X509_get_version(x), X509_VERSION_3);
    CU_ASSERT(X509_check_ca(x) == 1);
    CU_ASSERT(ext_critical(x, NID_basic_constraints));
    CU_ASSERT(ext_critical(x, NID_key_usage));
    CU_ASSERT_EQUAL(X509_get_key_usage(x), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    CU_ASSERT(ski != NULL && aki != NULL && ASN1_OCTET_STRING_cmp(ski, aki) == 0);
    check_serial(x);
    CU_ASSERT_EQUAL(X509_get_signature_nid(x), sig_nid);
    CU_ASSERT_EQUAL(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)), 0);
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, name, sizeof(name));
    CU_ASSERT_STRING_EQUAL(name, cn);
    CU_ASSERT_EQUAL(X509_verify(x, X509_get0_pubkey(x)), 1);
    CU_ASSERT(verifies(x, x, 0));
}

static int open_token(eg_token **tok)
{
    if (eg_token_open(eg_th_config(th), tok) != 0) {
        ERR_print_errors_fp(stdout);
        return -1;
    }
    return 0;
}

static int open_key(eg_token *tok, const char *label, eg_p11_key **key)
{
    char uri[256];

    snprintf(uri, sizeof(uri), "pkcs11:object=%s;type=private", label);
    if (eg_p11_key_open(tok, uri, key) != 0) {
        ERR_print_errors_fp(stdout);
        return -1;
    }
    return 0;
}

struct cert_args {
    const uint8_t *id;
    size_t idlen;
    uint8_t der[8192];
    CK_ULONG derlen;
};

static CK_RV cert_fn(eg_p11_call *call, void *arg)
{
    struct cert_args *a = arg;
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)a->id, a->idlen}};
    CK_ATTRIBUTE v = {CKA_VALUE, a->der, sizeof(a->der)};
    CK_OBJECT_HANDLE h;
    CK_ULONG n;
    CK_RV rv;

    a->derlen = 0;
    if ((rv = eg_p11_find_objects(call, t, 2, &h, 1, &n)) != CKR_OK || n == 0)
        return rv;
    if ((rv = eg_p11_get_attributes(call, h, &v, 1)) == CKR_OK)
        a->derlen = v.ulValueLen;
    return rv;
}

/* The certificate the token holds under the key's CKA_ID, or NULL. */
static X509 *token_cert(eg_p11_key *key)
{
    struct cert_args a;
    const unsigned char *p = a.der;

    a.id = eg_p11_key_id(key, &a.idlen);
    if (eg_token_run(eg_p11_key_token(key), cert_fn, &a) != CKR_OK || a.derlen == 0)
        return NULL;
    return d2i_X509(NULL, &p, (long)a.derlen);
}

static void check_bool(eg_p11_key *key, CK_ATTRIBUTE_TYPE type, bool want)
{
    bool v = !want;

    CU_ASSERT_EQUAL(eg_p11_key_get_bool(key, type, &v), 0);
    CU_ASSERT_EQUAL(v, want);
}

/*
 * The token key labelled label has the public key want, is sensitive and can
 * never leave the token, and has cert (or, when NULL, no certificate) stored
 * under its CKA_ID.
 */
static void check_token_key(const char *label, EVP_PKEY *want, X509 *cert)
{
    eg_token *tok = NULL;
    eg_p11_key *key = NULL;
    EVP_PKEY *pub = NULL;
    X509 *stored = NULL;

    CU_ASSERT_EQUAL_FATAL(open_token(&tok), 0);
    CU_ASSERT_EQUAL(open_key(tok, label, &key), 0);
    if (key != NULL) {
        pub = eg_p11_key_public(key);
        CU_ASSERT(pub != NULL && EVP_PKEY_eq(pub, want) == 1);
        check_bool(key, CKA_SENSITIVE, true);
        check_bool(key, CKA_ALWAYS_SENSITIVE, true);
        check_bool(key, CKA_EXTRACTABLE, false);
        check_bool(key, CKA_NEVER_EXTRACTABLE, true);
        stored = token_cert(key);
        CU_ASSERT(cert != NULL ? stored != NULL && X509_cmp(stored, cert) == 0 : stored == NULL);
    }
    X509_free(stored);
    EVP_PKEY_free(pub);
    eg_p11_key_free(key);
    eg_token_free(tok);
}

/* No temporary file of an atomic write (".NAME.XXXXXX") is left in the token directory. */
static bool no_temp_files(void)
{
    DIR *d = opendir(eg_th_dir(th));
    struct dirent *e;
    bool ok = d != NULL;

    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' && (strstr(e->d_name, ".pem.") || strstr(e->d_name, ".csr."))) {
            printf("\n  left behind: %s\n", e->d_name);
            ok = false;
        }
    }
    if (d != NULL)
        closedir(d);
    return ok;
}

static void ca_self_signed(const char *label, const char *key, int sig_nid)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char out[PATH_MAX], name[64], path[PATH_MAX], cn[64];
    X509 *x;

    snprintf(name, sizeof(name), "%s.pem", label);
    snprintf(cn, sizeof(cn), "Test CA %s", key);
    snprintf(out, sizeof(out), "CN=%s,O=estgate tests", cn);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(provision(r, NULL, NULL, "ca", "create", "--label", label, "--key", key,
                              "--subject", out, "--self-signed", "--days", "3650", "--out",
                              tpath(path, name), NULL),
                    0);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "type=private"));
    free(r);
    x = read_cert(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    check_root(x, sig_nid, cn);
    check_token_key(label, X509_get0_pubkey(x), x);
    CU_ASSERT(no_temp_files());
    X509_free(x);
}

static void test_ca_create_ec_p256(void)
{
    ca_self_signed("ca-p256", "ec-p256", NID_ecdsa_with_SHA256);
}

static void test_ca_create_ec_p384(void)
{
    ca_self_signed("ca-p384", "ec-p384", NID_ecdsa_with_SHA384);
}

static void test_ca_create_rsa2048(void)
{
    ca_self_signed("ca-rsa", "rsa2048", NID_sha256WithRSAEncryption);
}

/* ---- the CA key cannot be wrapped out of the token ---- */

struct wrap_args {
    const uint8_t *id;
    size_t idlen;
    CK_RV wrap_rv;
};

/* Wraps the private key with this id under a fresh session AES key made for wrapping. */
static CK_RV wrap_fn(eg_p11_call *call, void *arg)
{
    struct wrap_args *a = arg;
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY, pk = CKO_PRIVATE_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ULONG len = 32, n = 0;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE kt[] = {{CKA_CLASS, &sk, sizeof(sk)},
                         {CKA_KEY_TYPE, &aes, sizeof(aes)},
                         {CKA_TOKEN, &no, sizeof(no)},
                         {CKA_VALUE_LEN, &len, sizeof(len)},
                         {CKA_WRAP, &yes, sizeof(yes)}};
    CK_ATTRIBUTE ft[] = {{CKA_CLASS, &pk, sizeof(pk)}, {CKA_ID, (void *)a->id, a->idlen}};
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0}, wrap = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_OBJECT_HANDLE kek, priv;
    uint8_t out[8192];
    size_t outlen = sizeof(out);
    CK_RV rv;

    if ((rv = eg_p11_generate_key(call, &gen, kt, 5, &kek)) != CKR_OK)
        return rv;
    rv = eg_p11_find_objects(call, ft, 2, &priv, 1, &n);
    if (rv == CKR_OK && n == 1)
        a->wrap_rv = eg_p11_wrap_key(call, &wrap, kek, priv, out, &outlen);
    else if (rv == CKR_OK)
        rv = CKR_KEY_HANDLE_INVALID;
    eg_p11_destroy_object(call, kek);
    OPENSSL_cleanse(out, sizeof(out));
    return rv;
}

/* C_WrapKey of key: the CK_RV of the wrap itself, or of what had to come before it. */
static CK_RV try_wrap(eg_p11_key *key)
{
    struct wrap_args a = {NULL, 0, CKR_GENERAL_ERROR};
    CK_RV rv;

    a.id = eg_p11_key_id(key, &a.idlen);
    rv = eg_token_run(eg_p11_key_token(key), wrap_fn, &a);
    if (rv != CKR_OK)
        printf("\n  wrap set-up: %s\n", eg_p11_rv_name(rv));
    return rv != CKR_OK ? rv : a.wrap_rv;
}

/* The same wrap works on a key made extractable: the refusal is the attribute's doing. */
static void check_wrap_control(eg_token *tok)
{
    eg_keygen_spec spec = {EG_KEY_EC, 0,   NID_X9_62_prime256v1, "wrap-control", NULL, 0,
                           false,     true};
    eg_p11_key *key = NULL;

    CU_ASSERT_EQUAL_FATAL(eg_p11_key_generate(tok, &spec, &key), 0);
    CU_ASSERT_EQUAL(try_wrap(key), CKR_OK);
    eg_p11_key_destroy(key);
    eg_p11_key_free(key);
}

static void test_ca_key_cannot_be_wrapped(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    eg_p11_key *key = NULL;
    eg_token *tok = NULL;
    char csr[PATH_MAX];
    CK_RV rv;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    provision(r, NULL, NULL, "ca", "create", "--label", "ca-wrap", "--key", "ec-p256", "--subject",
              "CN=Wrap test CA", "--csr", tpath(csr, "wrap.csr"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    free(r);
    CU_ASSERT_EQUAL_FATAL(open_token(&tok), 0);
    CU_ASSERT_EQUAL(open_key(tok, "ca-wrap", &key), 0);
    if (key != NULL) {
        rv = try_wrap(key);
        if (kind == EG_TH_SOFTHSM) {
            CU_ASSERT_EQUAL(rv, CKR_KEY_UNEXTRACTABLE);
            check_wrap_control(tok);
        } else if (kind == EG_TH_P11KIT) {
            CU_ASSERT_NOT_EQUAL(rv, CKR_OK);
        } else {
            printf("(NSS wraps even non-extractable keys; C_WrapKey said %s) ", eg_p11_rv_name(rv));
        }
    }
    eg_p11_key_free(key);
    eg_token_free(tok);
}

/* ---- tls create ---- */

static int run_openssl(char *const argv[])
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int code = -1;

    if (r != NULL && spawn_capture(argv, r) == 0)
        code = r->code;
    free(r);
    return code;
}

static void check_tls_leaf(X509 *leaf, X509 *ca)
{
    CU_ASSERT_EQUAL(X509_get_version(leaf), X509_VERSION_3);
    CU_ASSERT_EQUAL(X509_check_ca(leaf), 0);
    CU_ASSERT(ext_critical(leaf, NID_key_usage));
    CU_ASSERT_EQUAL(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
    CU_ASSERT_EQUAL(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER);
    CU_ASSERT_EQUAL(X509_check_host(leaf, "est.test.example", 0, 0, NULL), 1);
    CU_ASSERT_EQUAL(X509_check_host(leaf, "localhost", 0, 0, NULL), 1);
    CU_ASSERT_EQUAL(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
    CU_ASSERT_EQUAL(X509_check_ip_asc(leaf, "::1", 0), 1);
    CU_ASSERT_EQUAL(X509_check_host(leaf, "other.example", 0, 0, NULL), 0);
    CU_ASSERT_EQUAL(
        ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf), X509_get0_subject_key_id(ca)), 0);
    check_serial(leaf);
    CU_ASSERT_EQUAL(X509_get_signature_nid(leaf), NID_ecdsa_with_SHA256);
    CU_ASSERT(verifies(leaf, ca, X509_PURPOSE_SSL_SERVER));
}

static void test_tls_create_verifies_against_ca(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char ca_path[PATH_MAX], tls_path[PATH_MAX];
    STACK_OF(X509) *chain = NULL;
    X509 *ca = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    provision(r, NULL, NULL, "ca", "create", "--label", "tls-ca", "--key", "ec-p256", "--subject",
              "CN=TLS issuing CA", "--self-signed", "--days", "365", "--out",
              tpath(ca_path, "tls-ca.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    provision(r, NULL, NULL, "tls", "create", "--label", "tls", "--key", "rsa2048", "--ca-label",
              "tls-ca", "--dns", "est.test.example", "--dns", "localhost", "--ip", "127.0.0.1",
              "--ip", "::1", "--days", "30", "--out", tpath(tls_path, "tls.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    free(r);
    ca = read_cert(ca_path);
    chain = read_chain(tls_path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ca);
    CU_ASSERT_EQUAL_FATAL(sk_X509_num(chain), 2);
    CU_ASSERT_EQUAL(X509_cmp(sk_X509_value(chain, 1), ca), 0);
    check_tls_leaf(sk_X509_value(chain, 0), ca);
    if (access("/usr/bin/openssl", X_OK) == 0) {
        char *argv[] = {"/usr/bin/openssl", "verify",    "-CAfile", ca_path,
                        "-purpose",         "sslserver", tls_path,  NULL};

        CU_ASSERT_EQUAL(run_openssl(argv), 0);
    }
    check_token_key("tls", X509_get0_pubkey(sk_X509_value(chain, 0)), sk_X509_value(chain, 0));
    X509_free(ca);
    sk_X509_pop_free(chain, X509_free);
}

/* ---- ca create --csr and ca import ---- */

static X509_REQ *read_req(const char *path)
{
    BIO *in = BIO_new_file(path, "r");
    X509_REQ *req = in ? PEM_read_bio_X509_REQ(in, NULL, NULL, NULL) : NULL;

    BIO_free(in);
    return req;
}

static bool requests_ca(X509_REQ *req)
{
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
    BASIC_CONSTRAINTS *bc = X509V3_get_d2i(exts, NID_basic_constraints, NULL, NULL);
    bool ca = bc != NULL && bc->ca;

    BASIC_CONSTRAINTS_free(bc);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    return ca;
}

static void test_ca_create_csr_verifies(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char path[PATH_MAX];
    X509_REQ *req;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    provision(r, NULL, NULL, "ca", "create", "--label", "csr-ca", "--key", "ec-p384", "--subject",
              "CN=Subordinate CA,O=estgate tests", "--csr", tpath(path, "csr-ca.csr"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    free(r);
    req = read_req(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(req);
    CU_ASSERT_EQUAL(X509_REQ_verify(req, X509_REQ_get0_pubkey(req)), 1);
    CU_ASSERT(requests_ca(req));
    if (access("/usr/bin/openssl", X_OK) == 0) {
        char *argv[] = {"/usr/bin/openssl", "req", "-verify", "-noout", "-in", path, NULL};

        CU_ASSERT_EQUAL(run_openssl(argv), 0);
    }
    check_token_key("csr-ca", X509_REQ_get0_pubkey(req), NULL);
    X509_REQ_free(req);
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1) == 1;

    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* A software CA certificate for days, as an external root would issue it. */
static X509 *issue_ca_days(const char *cn, EVP_PKEY *pub, X509 *issuer, EVP_PKEY *signer, long days)
{
    static long serial = 1000;
    X509 *x = X509_new();
    X509V3_CTX ctx;
    int ok;

    ok = x != NULL && X509_set_version(x, X509_VERSION_3) &&
         ASN1_INTEGER_set(X509_get_serialNumber(x), serial++) &&
         X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                    (const unsigned char *)cn, -1, -1, 0) &&
         X509_set_issuer_name(x,
                              issuer ? X509_get_subject_name(issuer) : X509_get_subject_name(x)) &&
         X509_gmtime_adj(X509_getm_notBefore(x), 0) &&
         X509_gmtime_adj(X509_getm_notAfter(x), days * 86400) && X509_set_pubkey(x, pub);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    ok = ok && add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE") == 0 &&
         add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") == 0 &&
         add_ext(x, &ctx, NID_subject_key_identifier, "hash") == 0 &&
         add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") == 0 &&
         X509_sign(x, signer, EVP_sha256()) > 0;
    if (!ok) {
        ERR_print_errors_fp(stdout);
        X509_free(x);
        x = NULL;
    }
    return x;
}

static X509 *issue_ca(const char *cn, EVP_PKEY *pub, X509 *issuer, EVP_PKEY *signer)
{
    return issue_ca_days(cn, pub, issuer, signer, 30);
}

/* The CSR at csr, a software root root_cn and the certificate it issues for the CSR's key. */
static void external_ca(const char *csr, const char *root_cn, const char *cn, EVP_PKEY *root_key,
                        X509_REQ **req, X509 **root, X509 **sub)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(*req = read_req(csr));
    CU_ASSERT_PTR_NOT_NULL_FATAL(*root = issue_ca(root_cn, root_key, NULL, root_key));
    CU_ASSERT_PTR_NOT_NULL_FATAL(*sub = issue_ca(cn, X509_REQ_get0_pubkey(*req), *root, root_key));
}

/* ca create --csr of label (CN=cn) into csr, and a software root_cn that certifies it. */
static void external_sub_ca(eg_child_result *r, const char *label, const char *cn,
                            const char *root_cn, EVP_PKEY *root_key, char *csr, X509_REQ **req,
                            X509 **root, X509 **sub)
{
    char subject[128], file[64];

    snprintf(subject, sizeof(subject), "CN=%s", cn);
    snprintf(file, sizeof(file), "%s.csr", label);
    provision(r, NULL, NULL, "ca", "create", "--label", label, "--key", "ec-p256", "--subject",
              subject, "--csr", tpath(csr, file), NULL);
    CU_ASSERT_EQUAL_FATAL(r->code, 0);
    external_ca(csr, root_cn, cn, root_key, req, root, sub);
}

static int write_pem(const char *path, X509 *a, X509 *b)
{
    BIO *out = BIO_new_file(path, "w");
    int ok = out != NULL && PEM_write_bio_X509(out, a) && (b == NULL || PEM_write_bio_X509(out, b));

    BIO_free(out);
    return ok ? 0 : -1;
}

static void test_ca_import_refuses_other_key_then_takes_its_own(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char csr[PATH_MAX], wrong[PATH_MAX], chain[PATH_MAX];
    EVP_PKEY *root_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *root = NULL, *sub = NULL;
    X509_REQ *req = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(root_key);
    external_sub_ca(r, "imp-ca", "Imported CA", "External root", root_key, csr, &req, &root, &sub);
    /* The root's own certificate has the wrong public key for the token key. */
    CU_ASSERT_EQUAL_FATAL(write_pem(tpath(wrong, "wrong.pem"), root, NULL), 0);
    provision(r, NULL, NULL, "ca", "import", "--label", "imp-ca", "--chain", wrong, NULL);
    CU_ASSERT_EQUAL(r->code, 65);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "public key"));
    check_token_key("imp-ca", X509_REQ_get0_pubkey(req), NULL);
    /* Its chain, root first: the order in the file does not matter. */
    CU_ASSERT_EQUAL_FATAL(write_pem(tpath(chain, "imp-chain.pem"), root, sub), 0);
    provision(r, NULL, NULL, "ca", "import", "--label", "imp-ca", "--chain", chain, NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    check_token_key("imp-ca", X509_REQ_get0_pubkey(req), sub);
    provision(r, NULL, NULL, "ca", "import", "--label", "imp-ca", "--chain", chain, NULL);
    CU_ASSERT_EQUAL(r->code, 0); /* again: nothing new, nothing duplicated */
    check_token_key("imp-ca", X509_REQ_get0_pubkey(req), sub);
    free(r);
    X509_free(sub);
    X509_free(root);
    X509_REQ_free(req);
    EVP_PKEY_free(root_key);
}

/* ---- ca renew ---- */

struct label_count_args {
    const char *label;
    CK_ULONG n;
};

static CK_RV label_count_fn(eg_p11_call *call, void *arg)
{
    struct label_count_args *a = arg;
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)},
                         {CKA_LABEL, (void *)a->label, strlen(a->label)}};
    CK_OBJECT_HANDLE h[4];

    return eg_p11_find_objects(call, t, 2, h, 4, &a->n);
}

/* How many certificate objects the token holds under label. */
static int token_certs_labelled(const char *label)
{
    struct label_count_args a = {label, 0};
    eg_token *tok = NULL;
    int n = -1;

    if (open_token(&tok) == 0 && eg_token_run(tok, label_count_fn, &a) == CKR_OK)
        n = (int)a.n;
    eg_token_free(tok);
    return n;
}

/* ca create --self-signed into NAME.pem and tls create of a leaf under it into LEAF.pem. */
static void ca_and_leaf(const char *ca, const char *cn, int days, const char *leaf)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char path[PATH_MAX], file[64], subject[128], n[8];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    snprintf(file, sizeof(file), "%s.pem", ca);
    snprintf(subject, sizeof(subject), "CN=%s,O=estgate tests", cn);
    snprintf(n, sizeof(n), "%d", days);
    provision(r, NULL, NULL, "ca", "create", "--label", ca, "--key", "ec-p256", "--subject",
              subject, "--self-signed", "--days", n, "--out", tpath(path, file), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    snprintf(file, sizeof(file), "%s.pem", leaf);
    provision(r, NULL, NULL, "tls", "create", "--label", leaf, "--key", "ec-p256", "--ca-label", ca,
              "--dns", "est.test.example", "--days", "5", "--out", tpath(path, file), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    free(r);
}

/* `openssl verify -CAfile ca [-untrusted untrusted] leaf`, files in the token directory. */
static int openssl_verify(const char *ca, const char *untrusted, const char *leaf)
{
    char cp[PATH_MAX], up[PATH_MAX], lp[PATH_MAX];
    char *argv[] = {"/usr/bin/openssl", "verify",     "-CAfile",
                    tpath(cp, ca),      "-untrusted", tpath(up, untrusted ? untrusted : ca),
                    tpath(lp, leaf),    NULL};

    return run_openssl(argv);
}

static bool same_octets(const ASN1_OCTET_STRING *a, const ASN1_OCTET_STRING *b)
{
    return a != NULL && b != NULL && ASN1_OCTET_STRING_cmp(a, b) == 0;
}

/*
 * ca_and_leaf for label (30 days, LEAF before the renewal), then `ca renew`
 * of it for 400 days into LABEL-new.pem; *old and *renewed get both roots.
 */
static void ca_renewed(eg_child_result *r, const char *label, const char *cn, const char *leaf,
                       X509 **old, X509 **renewed)
{
    char path[PATH_MAX], file[64];

    ca_and_leaf(label, cn, 30, leaf);
    snprintf(file, sizeof(file), "%s-new.pem", label);
    provision(r, NULL, NULL, "ca", "renew", "--label", label, "--days", "400", "--out",
              tpath(path, file), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "renewed the root of pkcs11:"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(*renewed = read_cert(path));
    snprintf(file, sizeof(file), "%s.pem", label);
    CU_ASSERT_PTR_NOT_NULL_FATAL(*old = read_cert(tpath(path, file)));
}

static void test_ca_renew_same_key(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char path[PATH_MAX];
    X509 *old = NULL, *x = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    ca_renewed(r, "renew-ca", "Renewed CA", "renew-before", &old, &x);
    check_root(x, NID_ecdsa_with_SHA256, "Renewed CA");
    CU_ASSERT_NOT_EQUAL(ASN1_INTEGER_cmp(X509_get0_serialNumber(x), X509_get0_serialNumber(old)),
                        0);
    CU_ASSERT(ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(old)) > 0);
    CU_ASSERT_EQUAL(X509_NAME_cmp(X509_get_subject_name(x), X509_get_subject_name(old)), 0);
    CU_ASSERT(same_octets(X509_get0_subject_key_id(x), X509_get0_subject_key_id(old)));
    CU_ASSERT_EQUAL(EVP_PKEY_eq(X509_get0_pubkey(x), X509_get0_pubkey(old)), 1);
    /* the token holds the new root, and only it, under the label and the key's id */
    check_token_key("renew-ca", X509_get0_pubkey(x), x);
    CU_ASSERT_EQUAL(token_certs_labelled("renew-ca"), 1);
    /* tls create finds it, and both roots verify leaves made before and after */
    provision(r, NULL, NULL, "tls", "create", "--label", "renew-after", "--key", "ec-p256",
              "--ca-label", "renew-ca", "--dns", "est.test.example", "--days", "5", "--out",
              tpath(path, "renew-after.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_EQUAL(openssl_verify("renew-ca-new.pem", NULL, "renew-before.pem"), 0);
    CU_ASSERT_EQUAL(openssl_verify("renew-ca.pem", NULL, "renew-after.pem"), 0);
    CU_ASSERT(no_temp_files());
    X509_free(old);
    X509_free(x);
    free(r);
}

struct put_args {
    const uint8_t *id;
    size_t idlen;
    const char *label;
    unsigned char *der, *subject, *issuer, *serial;
    int nder, nsubject, nissuer, nserial;
};

static CK_RV put_fn(eg_p11_call *call, void *arg)
{
    struct put_args *a = arg;
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_VALUE, a->der, (CK_ULONG)a->nder},
        {CKA_SUBJECT, a->subject, (CK_ULONG)a->nsubject},
        {CKA_ISSUER, a->issuer, (CK_ULONG)a->nissuer},
        {CKA_SERIAL_NUMBER, a->serial, (CK_ULONG)a->nserial},
        {CKA_LABEL, (void *)a->label, strlen(a->label)},
        {CKA_ID, (void *)a->id, a->idlen},
    };
    CK_OBJECT_HANDLE h;

    return eg_p11_create_object(call, t, sizeof(t) / sizeof(t[0]), &h);
}

/* Stores x under the id and label of the key labelled label, beside what is there: the state a
   renewal interrupted between storing the new certificate and destroying the old one leaves. */
static void put_cert_beside(const char *label, X509 *x)
{
    struct put_args a = {.label = label};
    eg_token *tok = NULL;
    eg_p11_key *key = NULL;

    CU_ASSERT_EQUAL_FATAL(open_token(&tok), 0);
    CU_ASSERT_EQUAL_FATAL(open_key(tok, label, &key), 0);
    a.id = eg_p11_key_id(key, &a.idlen);
    a.nder = i2d_X509(x, &a.der);
    a.nsubject = i2d_X509_NAME(X509_get_subject_name(x), &a.subject);
    a.nissuer = i2d_X509_NAME(X509_get_issuer_name(x), &a.issuer);
    a.nserial = i2d_ASN1_INTEGER(X509_get0_serialNumber(x), &a.serial);
    CU_ASSERT(a.nder > 0 && a.nsubject > 0 && a.nissuer > 0 && a.nserial > 0);
    CU_ASSERT_EQUAL(eg_token_run(tok, put_fn, &a), CKR_OK);
    OPENSSL_free(a.der);
    OPENSSL_free(a.subject);
    OPENSSL_free(a.issuer);
    OPENSSL_free(a.serial);
    eg_p11_key_free(key);
    eg_token_free(tok);
}

/*
 * A renewal interrupted after storing the new root and before destroying the
 * old one leaves both under the key's id: the tools take the one that ends
 * last, and the next renewal removes the other.
 */
static void test_ca_renew_after_an_interrupted_one(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char path[PATH_MAX], renewed[PATH_MAX];
    X509 *old = NULL, *x = NULL, *first = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    ca_renewed(r, "intr-ca", "Interrupted CA", "intr-before", &old, &first);
    put_cert_beside("intr-ca", old);
    CU_ASSERT_EQUAL(token_certs_labelled("intr-ca"), 2);
    /* tls create goes on, and says what it found */
    provision(r, NULL, NULL, "tls", "create", "--label", "intr-after", "--key", "ec-p256",
              "--ca-label", "intr-ca", "--dns", "est.test.example", "--days", "5", "--out",
              tpath(path, "intr-after.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "2 certificates have the id of"));
    /* the one in force is the later root: importing the old one again is refused as earlier */
    provision(r, NULL, NULL, "ca", "import", "--label", "intr-ca", "--chain",
              tpath(path, "intr-ca.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 73);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "only a later certificate replaces it"));
    /* the next renewal leaves one certificate, its own */
    provision(r, NULL, NULL, "ca", "renew", "--label", "intr-ca", "--days", "500", "--out",
              tpath(renewed, "intr-ca-2.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "removed 1 older certificate"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(x = read_cert(renewed));
    CU_ASSERT_EQUAL(token_certs_labelled("intr-ca"), 1);
    check_token_key("intr-ca", X509_get0_pubkey(x), x);
    CU_ASSERT(no_temp_files());
    X509_free(first);
    X509_free(old);
    X509_free(x);
    free(r);
}

/* The certificate's subject, issuer, keys and key identifiers, and that issuer_key signed it. */
static void check_cross(X509 *x, X509 *subject_of, X509 *issued_by)
{
    CU_ASSERT(X509_check_ca(x) == 1);
    CU_ASSERT_EQUAL(X509_get_key_usage(x), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    check_serial(x);
    CU_ASSERT_EQUAL(X509_NAME_cmp(X509_get_subject_name(x), X509_get_subject_name(subject_of)), 0);
    CU_ASSERT_EQUAL(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(issued_by)), 0);
    CU_ASSERT_EQUAL(EVP_PKEY_eq(X509_get0_pubkey(x), X509_get0_pubkey(subject_of)), 1);
    CU_ASSERT(same_octets(X509_get0_subject_key_id(x), X509_get0_subject_key_id(subject_of)));
    CU_ASSERT(same_octets(X509_get0_authority_key_id(x), X509_get0_subject_key_id(issued_by)));
    CU_ASSERT_EQUAL(X509_verify(x, X509_get0_pubkey(issued_by)), 1);
}

static int write_certs(const char *path, X509 *const *certs, int n)
{
    BIO *out = BIO_new_file(path, "w");
    int i, ok = out != NULL;

    for (i = 0; ok && i < n; i++)
        ok = PEM_write_bio_X509(out, certs[i]);
    BIO_free(out);
    return ok ? 0 : -1;
}

static void test_ca_renew_new_key_rollover(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char path[PATH_MAX], out[PATH_MAX];
    STACK_OF(X509) *chain = NULL;
    X509 *old = NULL, *nwn, *nwo, *own, *cacerts[4];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    ca_and_leaf("roll-old", "Rolled CA", 30, "roll-leaf-old");
    provision(r, NULL, NULL, "ca", "renew", "--label", "roll-old", "--new-label", "roll-new",
              "--key", "ec-p384", "--days", "400", "--out", tpath(out, "roll.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(old = read_cert(tpath(path, "roll-old.pem")));
    chain = read_chain(out);
    CU_ASSERT_EQUAL_FATAL(sk_X509_num(chain), 4);
    nwn = sk_X509_value(chain, 0);
    nwo = sk_X509_value(chain, 1);
    own = sk_X509_value(chain, 2);
    CU_ASSERT_EQUAL(X509_cmp(sk_X509_value(chain, 3), old), 0);
    /* NewWithNew: a root like ca create's, with the old root's subject, stored under the label */
    check_root(nwn, NID_ecdsa_with_SHA384, "Rolled CA");
    CU_ASSERT_EQUAL(X509_NAME_cmp(X509_get_subject_name(nwn), X509_get_subject_name(old)), 0);
    CU_ASSERT_NOT_EQUAL(EVP_PKEY_eq(X509_get0_pubkey(nwn), X509_get0_pubkey(old)), 1);
    check_token_key("roll-new", X509_get0_pubkey(nwn), nwn);
    check_token_key("roll-old", X509_get0_pubkey(old), old);
    /* NewWithOld: the new key by the old one, ending with the old root (30 < 400 days) */
    check_cross(nwo, nwn, old);
    CU_ASSERT_EQUAL(X509_get_signature_nid(nwo), NID_ecdsa_with_SHA256);
    CU_ASSERT_EQUAL(X509_cmp_time(X509_get0_notBefore(nwo), NULL), -1);
    CU_ASSERT_EQUAL(ASN1_TIME_compare(X509_get0_notAfter(nwo), X509_get0_notAfter(old)), 0);
    /* OldWithNew: the old key by the new one, for the old root's validity */
    check_cross(own, old, nwn);
    CU_ASSERT_EQUAL(X509_get_signature_nid(own), NID_ecdsa_with_SHA384);
    CU_ASSERT_EQUAL(ASN1_TIME_compare(X509_get0_notBefore(own), X509_get0_notBefore(old)), 0);
    CU_ASSERT_EQUAL(ASN1_TIME_compare(X509_get0_notAfter(own), X509_get0_notAfter(old)), 0);
    /*
     * Devices holding either root verify leaves of either key with the certificates as
     * /cacerts serves them: the self-signed ones after the others (appliance/core.c).
     */
    provision(r, NULL, NULL, "tls", "create", "--label", "roll-leaf-new", "--key", "ec-p256",
              "--ca-label", "roll-new", "--dns", "est.test.example", "--days", "5", "--out",
              tpath(path, "roll-leaf-new.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_EQUAL_FATAL(write_certs(tpath(path, "roll-new-root.pem"), &nwn, 1), 0);
    cacerts[0] = nwo, cacerts[1] = own, cacerts[2] = nwn, cacerts[3] = old;
    CU_ASSERT_EQUAL_FATAL(write_certs(tpath(path, "roll-cacerts.pem"), cacerts, 4), 0);
    CU_ASSERT_EQUAL(openssl_verify("roll-old.pem", "roll-cacerts.pem", "roll-leaf-new.pem"), 0);
    CU_ASSERT_EQUAL(openssl_verify("roll-new-root.pem", "roll-cacerts.pem", "roll-leaf-old.pem"),
                    0);
    CU_ASSERT_EQUAL(openssl_verify("roll-new-root.pem", "roll.pem", "roll-leaf-old.pem"), 0);
    CU_ASSERT(no_temp_files());
    sk_X509_pop_free(chain, X509_free);
    X509_free(old);
    free(r);
}

static void check_refused(eg_child_result *r, int code, const char *out, const char *says)
{
    CU_ASSERT_EQUAL(r->code, code);
    if (says != NULL && strstr(r->err, says) == NULL)
        printf("\n  expected \"%s\" in: %s\n", says, r->err);
    CU_ASSERT(says == NULL || strstr(r->err, says) != NULL);
    CU_ASSERT_NOT_EQUAL(access(out, F_OK), 0);
}

static void test_ca_renew_refusals(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char out[PATH_MAX], pin[PATH_MAX], csr[PATH_MAX], chain[PATH_MAX];
    EVP_PKEY *root_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *ca = NULL, *root = NULL, *sub = NULL;
    X509_REQ *req = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(root_key);
    ca_and_leaf("refuse-ca", "Refusing CA", 30, "refuse-leaf");
    tpath(out, "refused.pem");
    provision(r, NULL, NULL, "ca", "renew", "--label", "no-such-ca", "--days", "1", "--out", out,
              NULL);
    check_refused(r, 69, out, "no-such-ca");
    provision(r, NULL, NULL, "ca", "renew", "--label", "refuse-ca", "--new-label", "refuse-leaf",
              "--key", "ec-p256", "--days", "1", "--out", out, NULL);
    check_refused(r, 73, out, "refuse-leaf");
    provision(r, NULL, NULL, "ca", "renew", "--label", "refuse-ca", "--new-label", "refuse-new",
              "--key", "ec-p521", "--days", "1", "--out", out, NULL);
    check_refused(r, 64, out, "--key");
    provision(r, NULL, NULL, "ca", "renew", "--label", "refuse-ca", "--key", "ec-p256", "--days",
              "1", "--out", out, NULL);
    check_refused(r, 64, out, "--new-label");
    CU_ASSERT_EQUAL_FATAL(write_secret(tpath(pin, "renew-wrong-pin"), "not-the-pin\n"), 0);
    provision(r, NULL, pin, "ca", "renew", "--label", "refuse-ca", "--days", "1", "--out", out,
              NULL);
    check_refused(r, 77, out, "CKR_PIN_INCORRECT");
    /* a CA key with no certificate yet, then with one an external root issued */
    provision(r, NULL, NULL, "ca", "create", "--label", "refuse-sub", "--key", "ec-p256",
              "--subject", "CN=Refused Sub CA", "--csr", tpath(csr, "refuse-sub.csr"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    provision(r, NULL, NULL, "ca", "renew", "--label", "refuse-sub", "--days", "1", "--out", out,
              NULL);
    check_refused(r, 69, out, "no certificate");
    external_ca(csr, "Refusing root", "Refused Sub CA", root_key, &req, &root, &sub);
    CU_ASSERT_EQUAL_FATAL(write_pem(tpath(chain, "refuse-chain.pem"), sub, root), 0);
    provision(r, NULL, NULL, "ca", "import", "--label", "refuse-sub", "--chain", chain, NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    provision(r, NULL, NULL, "ca", "renew", "--label", "refuse-sub", "--new-label", "refuse-sub-2",
              "--key", "ec-p256", "--days", "1", "--out", out, NULL);
    check_refused(r, 65, out, "not self-signed");
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "ca renew --label refuse-sub --csr"));
    /* nothing changed: the CA keeps its root, no key was left under a new label */
    CU_ASSERT_PTR_NOT_NULL_FATAL(ca = read_cert(tpath(chain, "refuse-ca.pem")));
    check_token_key("refuse-ca", X509_get0_pubkey(ca), ca);
    check_token_key("refuse-sub", X509_REQ_get0_pubkey(req), sub);
    provision(r, NULL, NULL, "list", NULL);
    CU_ASSERT_PTR_NULL(strstr(r->out, "refuse-new"));
    CU_ASSERT_PTR_NULL(strstr(r->out, "refuse-sub-2"));
    CU_ASSERT(no_temp_files());
    X509_free(ca);
    X509_free(sub);
    X509_free(root);
    X509_REQ_free(req);
    EVP_PKEY_free(root_key);
    free(r);
}

/*
 * A CA an external root certified is renewed by that root, for the same key:
 * `ca renew --csr` asks, `ca import` takes the later certificate in place of
 * the current one, and refuses an earlier one.
 */
static void test_ca_renew_csr_for_external_ca(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char csr[PATH_MAX], csr2[PATH_MAX], chain[PATH_MAX], chain2[PATH_MAX], out[PATH_MAX];
    EVP_PKEY *root_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *root = NULL, *sub = NULL, *sub2 = NULL;
    X509_REQ *req = NULL, *req2 = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(root_key);
    external_sub_ca(r, "ext-ca", "Ext Sub CA", "Ext root", root_key, csr, &req, &root, &sub);
    CU_ASSERT_EQUAL_FATAL(write_pem(tpath(chain, "ext-chain.pem"), sub, root), 0);
    provision(r, NULL, NULL, "ca", "import", "--label", "ext-ca", "--chain", chain, NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    /* --csr goes alone */
    provision(r, NULL, NULL, "ca", "renew", "--label", "ext-ca", "--csr", tpath(csr2, "ext-2.csr"),
              "--days", "30", NULL);
    check_refused(r, 64, csr2, "--csr");
    /* The request: the same key, the current certificate's subject, signed by that key. */
    provision(r, NULL, NULL, "ca", "renew", "--label", "ext-ca", "--csr", csr2, NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "CN=Ext root"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "ca import --label ext-ca"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(req2 = read_req(csr2));
    CU_ASSERT_EQUAL(X509_REQ_verify(req2, X509_REQ_get0_pubkey(req2)), 1);
    CU_ASSERT_EQUAL(EVP_PKEY_eq(X509_REQ_get0_pubkey(req2), X509_REQ_get0_pubkey(req)), 1);
    CU_ASSERT_EQUAL(X509_NAME_cmp(X509_REQ_get_subject_name(req2), X509_get_subject_name(sub)), 0);
    check_token_key("ext-ca", X509_REQ_get0_pubkey(req), sub); /* the token did not change */
    /* The root certifies it for longer; importing that replaces the certificate. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(
        sub2 = issue_ca_days("Ext Sub CA", X509_REQ_get0_pubkey(req2), root, root_key, 60));
    CU_ASSERT_EQUAL_FATAL(write_pem(tpath(chain2, "ext-chain-2.pem"), sub2, root), 0);
    provision(r, NULL, NULL, "ca", "import", "--label", "ext-ca", "--chain", chain2, NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "replaced the certificate"));
    check_token_key("ext-ca", X509_REQ_get0_pubkey(req), sub2);
    CU_ASSERT_EQUAL(token_certs_labelled("ext-ca"), 1);
    /* The old, shorter one does not come back. */
    provision(r, NULL, NULL, "ca", "import", "--label", "ext-ca", "--chain", chain, NULL);
    CU_ASSERT_EQUAL(r->code, 73);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "only a later certificate replaces it"));
    check_token_key("ext-ca", X509_REQ_get0_pubkey(req), sub2);
    /* What the CA issues now chains through the renewed certificate. */
    provision(r, NULL, NULL, "tls", "create", "--label", "ext-leaf", "--key", "ec-p256",
              "--ca-label", "ext-ca", "--dns", "est.test.example", "--days", "5", "--out",
              tpath(out, "ext-leaf.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_EQUAL(write_pem(tpath(out, "ext-root.pem"), root, NULL), 0);
    CU_ASSERT_EQUAL(write_pem(tpath(out, "ext-sub-2.pem"), sub2, NULL), 0);
    CU_ASSERT_EQUAL(openssl_verify("ext-root.pem", "ext-sub-2.pem", "ext-leaf.pem"), 0);
    CU_ASSERT(no_temp_files());
    X509_free(sub2);
    X509_free(sub);
    X509_free(root);
    X509_REQ_free(req2);
    X509_REQ_free(req);
    EVP_PKEY_free(root_key);
    free(r);
}

/* ---- list ---- */

static void test_list_shows_uris(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char path[PATH_MAX], cert_uri[512], *p;
    eg_p11_key *key = NULL;
    eg_token *tok = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    provision(r, NULL, NULL, "ca", "create", "--label", "list-ca", "--key", "ec-p256", "--subject",
              "CN=Listed CA", "--self-signed", "--days", "30", "--out", tpath(path, "list-ca.pem"),
              NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    provision(r, NULL, NULL, "list", NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT_EQUAL_FATAL(open_token(&tok), 0);
    if (open_key(tok, "list-ca", &key) == 0) {
        /* The URI the signer gives the key is the one listed, and the certificate's beside it. */
        CU_ASSERT_PTR_NOT_NULL(strstr(r->out, eg_p11_key_uri(key)));
        snprintf(cert_uri, sizeof(cert_uri), "%s", eg_p11_key_uri(key));
        if ((p = strstr(cert_uri, "type=private")) != NULL)
            strcpy(p, "type=cert");
        CU_ASSERT_PTR_NOT_NULL(strstr(r->out, cert_uri));
    }
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "extractable: no, never extractable: yes"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "subject: CN=Listed CA"));
    eg_p11_key_free(key);
    eg_token_free(tok);
    free(r);
}

/* ---- kek import ---- */

struct kek_args {
    const char *label;
    const uint8_t *cek; /* a known 32-octet key to wrap under the KEK */
    CK_ULONG found, value_len;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    CK_BBOOL token, private, sensitive, extractable, wrap, unwrap, encrypt, decrypt;
    CK_RV value_rv, wrap_rv;
    uint8_t wrapped[64];
    size_t wrapped_len;
};

/* The KEK's attributes, and C_WrapKey(CKM_AES_KEY_WRAP) of a session key of known value under it.
 */
static CK_RV kek_fn(eg_p11_call *call, void *arg)
{
    struct kek_args *a = arg;
    CK_ATTRIBUTE f = {CKA_LABEL, (void *)a->label, strlen(a->label)};
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &a->cls, sizeof(a->cls)},
                        {CKA_KEY_TYPE, &a->type, sizeof(a->type)},
                        {CKA_VALUE_LEN, &a->value_len, sizeof(a->value_len)},
                        {CKA_TOKEN, &a->token, sizeof(a->token)},
                        {CKA_PRIVATE, &a->private, sizeof(a->private)},
                        {CKA_SENSITIVE, &a->sensitive, sizeof(a->sensitive)},
                        {CKA_EXTRACTABLE, &a->extractable, sizeof(a->extractable)},
                        {CKA_WRAP, &a->wrap, sizeof(a->wrap)},
                        {CKA_UNWRAP, &a->unwrap, sizeof(a->unwrap)},
                        {CKA_ENCRYPT, &a->encrypt, sizeof(a->encrypt)},
                        {CKA_DECRYPT, &a->decrypt, sizeof(a->decrypt)}};
    uint8_t value[64];
    CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)};
    CK_KEY_TYPE aes = CKK_AES;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE ct[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_EXTRACTABLE, &yes, sizeof(yes)}};
    CK_MECHANISM mech = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_OBJECT_HANDLE kek, cek;
    eg_p11_temp_objs objs;
    CK_RV rv;

    a->wrapped_len = sizeof(a->wrapped);
    if ((rv = eg_p11_find_objects(call, &f, 1, &kek, 1, &a->found)) != CKR_OK || a->found == 0 ||
        (rv = eg_p11_get_attributes(call, kek, t, sizeof(t) / sizeof(t[0]))) != CKR_OK)
        return rv;
    a->value_rv = eg_p11_get_attributes(call, kek, &v, 1);
    OPENSSL_cleanse(value, sizeof(value));
    eg_p11_temp_init(&objs);
    if ((rv = eg_p11_temp_secret_import(call, a->cek, 32, ct, 2, &objs, &cek)) == CKR_OK)
        a->wrap_rv = eg_p11_wrap_key(call, &mech, kek, cek, a->wrapped, &a->wrapped_len);
    eg_p11_temp_destroy(call, &objs);
    return rv;
}

/* RFC 3394 in software: what a device holding the same KEK computes. */
static size_t soft_wrap(const uint8_t *kek, const uint8_t *in, uint8_t *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;

    if (ctx == NULL || EVP_EncryptInit_ex(ctx, EVP_aes_256_wrap(), NULL, kek, NULL) != 1 ||
        EVP_EncryptUpdate(ctx, out, &n, in, 32) != 1 || EVP_EncryptFinal_ex(ctx, out + n, &m) != 1)
        n = m = 0;
    EVP_CIPHER_CTX_free(ctx);
    return (size_t)(n + m);
}

static void check_kek(const char *label, const uint8_t *file_key)
{
    uint8_t cek[32], want[40];
    struct kek_args a;
    eg_token *tok = NULL;

    memset(&a, 0, sizeof(a));
    memset(cek, 0x5c, sizeof(cek));
    a.label = label;
    a.cek = cek;
    CU_ASSERT_EQUAL_FATAL(open_token(&tok), 0);
    CU_ASSERT_EQUAL(eg_token_run(tok, kek_fn, &a), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(a.found, 1);
    CU_ASSERT(a.cls == CKO_SECRET_KEY && a.type == CKK_AES && a.value_len == 32);
    CU_ASSERT(a.token && a.private && a.sensitive && !a.extractable && a.wrap);
    CU_ASSERT(!a.unwrap && !a.encrypt && !a.decrypt);
    CU_ASSERT_EQUAL(a.value_rv, CKR_ATTRIBUTE_SENSITIVE);
    if (kind == EG_TH_P11KIT && a.wrap_rv != CKR_OK) {
        printf("(p11-kit 0.24.1 does not forward C_WrapKey: %s) ", eg_p11_rv_name(a.wrap_rv));
    } else {
        CU_ASSERT_EQUAL(a.wrap_rv, CKR_OK);
        CU_ASSERT_EQUAL(soft_wrap(file_key, cek, want), 40);
        CU_ASSERT(a.wrapped_len == 40 && memcmp(a.wrapped, want, 40) == 0);
    }
    eg_token_free(tok);
}

static int write_key_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && write(fd, data, len) == (ssize_t)len;

    if (fd >= 0)
        close(fd);
    return ok ? 0 : -1;
}

static void test_kek_import_wraps_as_the_device_would(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    uint8_t key[32], id[] = {0x4b, 0x45, 0x4b, 0x01};
    char path[PATH_MAX], line[640], *uri;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(key, sizeof(key)), 1);
    CU_ASSERT_EQUAL_FATAL(write_key_file(tpath(path, "kek.bin"), key, sizeof(key)), 0);
    provision(r, NULL, NULL, "kek", "import", "--label", "kek-1", "--id", "4B454B01", "--key-file",
              path, NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    uri = eg_p11_uri_format(eg_th_config(th)->token_label, "kek-1", id, sizeof(id), "secret-key");
    CU_ASSERT_PTR_NOT_NULL_FATAL(uri);
    snprintf(line, sizeof(line), "%s\nserverkeygen_kek = 4b454b01 %s\n", uri, uri);
    CU_ASSERT_STRING_EQUAL(r->out, line);
    check_kek("kek-1", key);
    /* list shows it, wrap-only */
    provision(r, NULL, NULL, "list", NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    snprintf(line, sizeof(line), "secret key %s\n  size: 256 bits\n", uri);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, line));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "sensitive: yes, extractable: no, wrap: yes"));
    /* never replaced: not by label, not by id */
    provision(r, NULL, NULL, "kek", "import", "--label", "kek-1", "--id", "4b454b02", "--key-file",
              path, NULL);
    CU_ASSERT_EQUAL(r->code, 73);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "kek-1"));
    provision(r, NULL, NULL, "kek", "import", "--label", "kek-2", "--id", "4b454b01", "--key-file",
              path, NULL);
    CU_ASSERT_EQUAL(r->code, 73);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "4b454b01"));
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_free(uri);
    free(r);
}

/* ---- eg_p11_wrap_alloc: one call when its buffer fits, a second when it does not ---- */

struct big_wrap_args {
    const uint8_t *secret, *kek;
    size_t secret_len;
    bool cbc; /* CKM_AES_CBC_PAD (NSS) rather than CKM_AES_KEY_WRAP_PAD (SoftHSM) */
    uint8_t iv[16];
    uint8_t *wrapped;
    size_t wrapped_len;
};

static CK_RV big_wrap_fn(eg_p11_call *call, void *arg)
{
    struct big_wrap_args *a = arg;
    CK_KEY_TYPE generic = CKK_GENERIC_SECRET, aes = CKK_AES;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE st[] = {{CKA_KEY_TYPE, &generic, sizeof(generic)},
                         {CKA_EXTRACTABLE, &yes, sizeof(yes)}};
    CK_ATTRIBUTE kt[] = {{CKA_KEY_TYPE, &aes, sizeof(aes)}, {CKA_WRAP, &yes, sizeof(yes)}};
    CK_MECHANISM mech = {a->cbc ? CKM_AES_CBC_PAD : CKM_AES_KEY_WRAP_PAD, a->cbc ? a->iv : NULL,
                         a->cbc ? sizeof(a->iv) : 0};
    CK_OBJECT_HANDLE secret, kek;
    eg_p11_temp_objs objs;
    CK_RV rv;

    eg_p11_temp_init(&objs);
    if ((rv = eg_p11_temp_secret_import(call, a->secret, a->secret_len, st, 2, &objs, &secret)) ==
            CKR_OK &&
        (rv = eg_p11_temp_secret_import(call, a->kek, 32, kt, 2, &objs, &kek)) == CKR_OK)
        rv = eg_p11_wrap_alloc(call, &mech, kek, secret, &a->wrapped, &a->wrapped_len);
    eg_p11_temp_destroy(call, &objs);
    return rv;
}

/* The secret back from the token's wrap, in software. */
static int soft_unwrap(const struct big_wrap_args *a, uint8_t *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;

    if (ctx != NULL && !a->cbc)
        EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    if (ctx == NULL ||
        EVP_DecryptInit_ex(ctx, a->cbc ? EVP_aes_256_cbc() : EVP_aes_256_wrap_pad(), NULL, a->kek,
                           a->cbc ? a->iv : NULL) != 1 ||
        EVP_DecryptUpdate(ctx, out, &n, a->wrapped, (int)a->wrapped_len) != 1 ||
        EVP_DecryptFinal_ex(ctx, out + n, &m) != 1)
        n = -1, m = 0;
    EVP_CIPHER_CTX_free(ctx);
    return n < 0 ? -1 : n + m;
}

static void test_wrap_alloc_grows_its_buffer(void)
{
    /* 32 octets fit the first buffer; 6000 do not (it holds an RSA-4096 key's 2.4 KB). */
    static const size_t sizes[] = {32, 6000};
    uint8_t kek[32], *secret = malloc(6000), *back = malloc(6000 + 32);
    eg_token *tok = NULL;

    if (kind == EG_TH_P11KIT) { /* p11-kit 0.24.1 forwards no C_WrapKey */
        free(secret);
        free(back);
        return;
    }
    CU_ASSERT_FATAL(secret != NULL && back != NULL);
    CU_ASSERT_FATAL(RAND_bytes(kek, sizeof(kek)) == 1 && RAND_bytes(secret, 6000) == 1);
    CU_ASSERT_EQUAL_FATAL(open_token(&tok), 0);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct big_wrap_args a = {.secret = secret, .kek = kek, .secret_len = sizes[i]};
        CK_RV rv;

        a.cbc = kind == EG_TH_NSS;
        CU_ASSERT_EQUAL(RAND_bytes(a.iv, sizeof(a.iv)), 1);
        rv = eg_token_run(tok, big_wrap_fn, &a);
        if (rv != CKR_OK)
            printf("(%zu octets: %s) ", sizes[i], eg_p11_rv_name(rv));
        CU_ASSERT_EQUAL(rv, CKR_OK);
        CU_ASSERT(a.wrapped_len > sizes[i] && a.wrapped_len <= sizes[i] + 16);
        CU_ASSERT(a.wrapped != NULL && soft_unwrap(&a, back) == (int)sizes[i] &&
                  memcmp(back, secret, sizes[i]) == 0);
        OPENSSL_free(a.wrapped);
    }
    eg_token_free(tok);
    free(secret);
    free(back);
}

static void test_kek_import_refuses_bad_key_files(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    uint8_t key[20];
    char path[PATH_MAX];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    memset(key, 0xa5, sizeof(key));
    CU_ASSERT_EQUAL_FATAL(write_key_file(tpath(path, "kek20.bin"), key, sizeof(key)), 0);
    provision(r, NULL, NULL, "kek", "import", "--label", "kek-20", "--id", "20", "--key-file", path,
              NULL);
    CU_ASSERT_EQUAL(r->code, 65);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "holds 20 octets"));
    /* 33 hex digits are neither raw nor hex */
    CU_ASSERT_EQUAL_FATAL(write_key_file(path, "000102030405060708090a0b0c0d0e0f0\n", 34), 0);
    provision(r, NULL, NULL, "kek", "import", "--label", "kek-20", "--id", "20", "--key-file", path,
              NULL);
    CU_ASSERT_EQUAL(r->code, 65);
    /* 32 hex digits and a newline: an AES-128 key */
    CU_ASSERT_EQUAL_FATAL(write_key_file(path, "000102030405060708090a0b0c0d0e0f\n", 33), 0);
    provision(r, NULL, NULL, "kek", "import", "--label", "kek-128", "--id", "80", "--key-file",
              path, NULL);
    CU_ASSERT_EQUAL(r->code, 0);
    provision(r, NULL, NULL, "list", NULL);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(r->out, "object=kek-128;id=%80;type=secret-key\n  size: 128 bits"));
    CU_ASSERT_PTR_NULL(strstr(r->out, "kek-20"));
    free(r);
}

/* ---- errors ---- */

static void test_wrong_pin_exits_77_and_writes_nothing(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char pin[PATH_MAX], out[PATH_MAX];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL_FATAL(write_secret(tpath(pin, "wrong-pin"), "not-the-pin\n"), 0);
    provision(r, NULL, pin, "list", NULL);
    CU_ASSERT_EQUAL(r->code, 77);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "PIN"));
    provision(r, NULL, pin, "ca", "create", "--label", "never", "--key", "ec-p256", "--subject",
              "CN=Never", "--self-signed", "--days", "1", "--out", tpath(out, "never.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 77);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "CKR_PIN_INCORRECT"));
    CU_ASSERT_NOT_EQUAL(access(out, F_OK), 0);
    CU_ASSERT(no_temp_files());
    free(r);
}

static void test_unknown_token_exits_69(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char out[PATH_MAX];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    provision(r, "no-such-token", NULL, "list", NULL);
    CU_ASSERT_EQUAL(r->code, 69);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "no-such-token"));
    provision(r, "no-such-token", NULL, "tls", "create", "--label", "t", "--key", "ec-p256",
              "--ca-label", "ca", "--dns", "a.example", "--days", "1", "--out",
              tpath(out, "unknown.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 69);
    CU_ASSERT_NOT_EQUAL(access(out, F_OK), 0);
    free(r);
}

static void test_bad_key_exits_64(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char out[PATH_MAX];

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    provision(r, NULL, NULL, "ca", "create", "--label", "bad", "--key", "ec-p521", "--subject",
              "CN=Bad", "--self-signed", "--days", "1", "--out", tpath(out, "bad.pem"), NULL);
    CU_ASSERT_EQUAL(r->code, 64);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "--key"));
    provision(r, NULL, NULL, "ca", "create", "--frobnicate", NULL);
    CU_ASSERT_EQUAL(r->code, 64);
    provision(r, NULL, NULL, "ca", "create", "--label", "bad", "--key", "ec-p256", "--subject",
              "CN=Bad", "--self-signed", "--csr", out, NULL);
    CU_ASSERT_EQUAL(r->code, 64);
    CU_ASSERT_NOT_EQUAL(access(out, F_OK), 0);
    free(r);
}

/* Runs estgate-provision with the words given, then --module (and --init-args); nothing else. */
static void provision_bare(eg_child_result *r, ...)
{
    char *argv[MAX_ARGS];
    const char *a;
    va_list ap;
    int n = 0;

    argv[n++] = tool;
    va_start(ap, r);
    while ((a = va_arg(ap, const char *)) != NULL && n < MAX_ARGS - 6)
        argv[n++] = (char *)a;
    va_end(ap);
    n = module_args(argv, n);
    argv[n] = NULL;
    spawn_capture(argv, r);
}

/* The run failed with code and said nothing of secret on stdout or stderr. */
static void check_not_echoed(const eg_child_result *r, int code, const char *secret,
                             const char *said)
{
    CU_ASSERT_EQUAL(r->code, code);
    CU_ASSERT_PTR_NULL(strstr(r->err, secret));
    CU_ASSERT_PTR_NULL(strstr(r->out, secret));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, said));
    if (strstr(r->err, secret) != NULL || strstr(r->err, said) == NULL)
        printf("\n  stderr: %s\n", r->err);
}

/*
 * A PIN (or key) typed where its file belongs is never repeated: not in the
 * message about the missing file, and not through getopt_long's abbreviations
 * (--pin for --pin-file), which are refused for the options naming a
 * secret's file.
 */
static void test_secret_in_place_of_its_file_is_not_echoed(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    const eg_token_config *cfg = eg_th_config(th);
    const char *token = cfg->token_label, *pin = cfg->pin_file;
    const char *key = "8f1e2d3c4b5a69788796a5b4c3d2e1f0";

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    provision_bare(r, "list", "--token", token, "--pin-file", "7319402", NULL);
    check_not_echoed(r, 66, "7319402",
                     "the PIN file given to --pin-file does not exist or cannot be read: No such "
                     "file or directory");
    provision_bare(r, "list", "--token", token, "--pin", "7319402", NULL);
    check_not_echoed(r, 64, "7319402", "write --pin-file in full");
    provision_bare(r, "list", "--token", token, "--pin=7319402", NULL);
    check_not_echoed(r, 64, "7319402", "write --pin-file in full");
    provision_bare(r, "init-token", "--label", "never", "--so-pin-file", "7319402", "--pin-file",
                   pin, NULL);
    check_not_echoed(r, 66, "7319402",
                     "the SO PIN file given to --so-pin-file does not exist or cannot be read");
    provision_bare(r, "init-token", "--label", "never", "--so-pin", "7319402", "--pin-file", pin,
                   NULL);
    check_not_echoed(r, 64, "7319402", "write --so-pin-file in full");
    provision_bare(r, "kek", "import", "--token", token, "--pin-file", pin, "--label", "never",
                   "--id", "01", "--key-file", key, NULL);
    check_not_echoed(r, 66, key, "the key file given to --key-file does not exist");
    provision_bare(r, "kek", "import", "--token", token, "--pin-file", pin, "--label", "never",
                   "--id", "01", "--key", key, NULL);
    check_not_echoed(r, 64, key, "write --key-file in full");
    /* A command with no such option: the word is unknown, its value still not repeated. */
    provision_bare(r, "bundle", "verify", "--pin=7319402", NULL);
    check_not_echoed(r, 64, "7319402", "unknown option or missing value: --pin");
    free(r);
}

/* ---- init-token ---- */

static void test_init_token_in_free_slot(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char so[PATH_MAX], pin[PATH_MAX];
    eg_token_config cfg = *eg_th_config(th);
    eg_token *tok = NULL;
    char *argv[] = {tool,
                    "init-token",
                    "--module",
                    (char *)cfg.module_path,
                    "--label",
                    "prov-second",
                    "--so-pin-file",
                    tpath(so, "second-so-pin"),
                    "--pin-file",
                    tpath(pin, "second-pin"),
                    NULL};

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    if (kind != EG_TH_SOFTHSM) {
        printf("(init-token needs a free slot: tested on softhsm) ");
        free(r);
        return;
    }
    CU_ASSERT_EQUAL_FATAL(write_secret(so, "second-so-pin\n"), 0);
    CU_ASSERT_EQUAL_FATAL(write_secret(pin, "second-user-pin\n"), 0);
    CU_ASSERT_EQUAL(spawn_capture(argv, r), 0);
    CU_ASSERT_EQUAL(r->code, 0);
    /* The new token is found by its label and the user PIN logs in. */
    cfg.token_label = "prov-second";
    cfg.pin_file = pin;
    if (eg_token_open(&cfg, &tok) != 0) {
        ERR_print_errors_fp(stdout);
        CU_FAIL("the initialised token does not open with its user PIN");
    }
    eg_token_free(tok);
    CU_ASSERT_EQUAL(spawn_capture(argv, r), 0);
    CU_ASSERT_EQUAL(r->code, 73); /* never initialised twice */
    free(r);
}

static int suite_init(void)
{
    const char *build = getenv("EG_BUILD_DIR");

    if (build == NULL) {
        fprintf(stderr, "EG_BUILD_DIR is not set (ctest sets it)\n");
        return -1;
    }
    snprintf(tool, sizeof(tool), "%s/provisioning/estgate-provision", build);
    if (access(tool, X_OK) != 0) {
        fprintf(stderr, "%s: %s (build it first)\n", tool, strerror(errno));
        return -1;
    }
    return eg_th_create(kind, "provision", &th);
}

static int suite_clean(void)
{
    eg_th_destroy(th);
    return 0;
}

static CU_TestInfo tests[] = {
    {"ca create: EC P-256 self-signed root", test_ca_create_ec_p256},
    {"ca create: EC P-384 self-signed root", test_ca_create_ec_p384},
    {"ca create: RSA-2048 self-signed root", test_ca_create_rsa2048},
    {"the CA key cannot be wrapped", test_ca_key_cannot_be_wrapped},
    {"tls create: verifies against the CA", test_tls_create_verifies_against_ca},
    {"ca create --csr: signature verifies", test_ca_create_csr_verifies},
    {"ca import: refuses another key's certificate, takes its own",
     test_ca_import_refuses_other_key_then_takes_its_own},
    {"ca renew: same key, a new root both roots verify under", test_ca_renew_same_key},
    {"ca renew after an interrupted one: the later root in force, the other removed",
     test_ca_renew_after_an_interrupted_one},
    {"ca renew --new-label: the four rollover certificates, either root verifies",
     test_ca_renew_new_key_rollover},
    {"ca renew: unknown label 69, used label 73, bad --key 64, PIN 77, not self-signed 65",
     test_ca_renew_refusals},
    {"ca renew --csr and ca import: an external root renews its CA for the same key",
     test_ca_renew_csr_for_external_ca},
    {"list shows the URIs", test_list_shows_uris},
    {"kek import: wrap-only token AES key, wraps as the device would",
     test_kek_import_wraps_as_the_device_would},
    {"kek import: 20 octets and odd hex refused (65), hex AES-128 taken",
     test_kek_import_refuses_bad_key_files},
    {"eg_p11_wrap_alloc: a wrap bigger than its first buffer", test_wrap_alloc_grows_its_buffer},
    {"wrong PIN: exit 77, nothing written", test_wrong_pin_exits_77_and_writes_nothing},
    {"unknown token: exit 69", test_unknown_token_exits_69},
    {"bad --key and bad options: exit 64", test_bad_key_exits_64},
    {"a PIN or key where its file belongs is never echoed",
     test_secret_in_place_of_its_file_is_not_echoed},
    {"init-token in a free slot", test_init_token_in_free_slot},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
