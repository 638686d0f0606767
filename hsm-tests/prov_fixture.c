/* Fixture of the provider tests; see prov_fixture.h. */
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "prov_fixture.h"
#include "provider.h"

#define EG_PF_MAX_ARGS 32

extern char **environ;

int eg_pf_open(eg_th_kind kind, const char *label, eg_pf *pf)
{
    memset(pf, 0, sizeof(*pf));
    if (eg_th_create(kind, label, &pf->th) != 0)
        return -1;
    /* Inside the token's directory, which eg_th_destroy() removes. */
    snprintf(pf->dir, sizeof(pf->dir), "%s/prov", eg_th_dir(pf->th));
    if (mkdir(pf->dir, 0700) != 0) {
        perror(pf->dir);
        return -1;
    }
    if (eg_token_open(eg_th_config(pf->th), &pf->tok) != 0 ||
        (pf->libctx = OSSL_LIB_CTX_new()) == NULL || eg_provider_init(pf->libctx) != 0 ||
        eg_provider_add_token(pf->libctx, pf->tok) != 0) {
        ERR_print_errors_fp(stderr);
        return -1;
    }
    return 0;
}

void eg_pf_close(eg_pf *pf)
{
    if (pf->tok != NULL)
        eg_provider_remove_token(pf->libctx, pf->tok);
    eg_token_free(pf->tok);
    OSSL_LIB_CTX_free(pf->libctx);
    eg_th_destroy(pf->th);
    memset(pf, 0, sizeof(*pf));
}

bool eg_pf_has_ed25519(eg_pf *pf)
{
    bool has =
        eg_token_has_mechanism(pf->tok, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR) &&
        eg_token_has_mechanism(pf->tok, CKM_EDDSA, CKF_SIGN);

    if (!has)
        printf("\n  note: token \"%s\" has no Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN + CKM_EDDSA); "
               "Ed25519 cases skipped\n",
               eg_token_label(pf->tok));
    return has;
}

int eg_pf_key_make(eg_pf *pf, const char *name, const eg_keygen_spec *spec, eg_pf_key *out)
{
    memset(out, 0, sizeof(*out));
    out->name = name;
    if (eg_p11_key_generate(pf->tok, spec, &out->p11) != 0 ||
        eg_provider_load_key(pf->libctx, eg_p11_key_uri(out->p11), &out->pkey) != 0 ||
        (out->pub = eg_p11_key_public(out->p11)) == NULL) {
        fprintf(stderr, "cannot make the %s key\n", name);
        ERR_print_errors_fp(stderr);
        eg_pf_key_clear(out);
        return -1;
    }
    return 0;
}

void eg_pf_key_clear(eg_pf_key *key)
{
    EVP_PKEY_free(key->pkey);
    EVP_PKEY_free(key->pub);
    eg_p11_key_free(key->p11);
    memset(key, 0, sizeof(*key));
}

uint64_t eg_pf_sign_calls(eg_pf *pf)
{
    eg_token_stats st;

    eg_token_get_stats(pf->tok, &st);
    return st.sign_calls;
}

EVP_MD_CTX *eg_pf_sign_ctx(eg_pf *pf, EVP_PKEY *pkey, const char *md, bool pss)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;

    if (mctx == NULL || EVP_DigestSignInit_ex(mctx, &pctx, md, pf->libctx, NULL, pkey, NULL) != 1)
        goto err;
    if (pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0))
        goto err;
    return mctx;
err:
    ERR_print_errors_fp(stderr);
    EVP_MD_CTX_free(mctx);
    return NULL;
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509_EXTENSION *ext;
    int ok;

    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    if ((ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value)) == NULL)
        return 0;
    ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

/* CA: may sign certificates, CRLs and (for the CMS tests) data. */
static int cert_body(X509 *x, X509 *issuer, const char *cn, long serial, EVP_PKEY *key)
{
    X509_NAME *name = X509_get_subject_name(x);
    int ca = issuer == NULL;

    if (!X509_set_version(x, 2) || !ASN1_INTEGER_set(X509_get_serialNumber(x), serial) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                    0) ||
        !X509_set_issuer_name(x, ca ? name : X509_get_subject_name(issuer)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -60) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 3600) || !X509_set_pubkey(x, key))
        return 0;
    return add_ext(x, ca ? x : issuer, NID_basic_constraints,
                   ca ? "critical,CA:TRUE" : "CA:FALSE") &&
           add_ext(x, ca ? x : issuer, NID_key_usage,
                   ca ? "critical,digitalSignature,keyCertSign,cRLSign"
                      : "critical,digitalSignature") &&
           add_ext(x, ca ? x : issuer, NID_subject_key_identifier, "hash");
}

X509 *eg_pf_cert(eg_pf *pf, const char *cn, long serial, EVP_PKEY *key, X509 *issuer,
                 EVP_PKEY *issuer_key, const char *md, bool pss)
{
    X509 *x = X509_new_ex(pf->libctx, NULL);
    EVP_MD_CTX *mctx = NULL;

    if (x == NULL || !cert_body(x, issuer, cn, serial, key) ||
        (mctx = eg_pf_sign_ctx(pf, issuer_key, md, pss)) == NULL || X509_sign_ctx(x, mctx) <= 0) {
        fprintf(stderr, "cannot make certificate %s\n", cn);
        ERR_print_errors_fp(stderr);
        X509_free(x);
        x = NULL;
    }
    EVP_MD_CTX_free(mctx);
    return x;
}

void eg_pf_path(const eg_pf *pf, const char *name, char *path)
{
    snprintf(path, PATH_MAX, "%s/%s", pf->dir, name);
}

int eg_pf_write_cert(eg_pf *pf, const char *name, X509 *x)
{
    char path[PATH_MAX];
    BIO *bio;
    int ok;

    eg_pf_path(pf, name, path);
    if ((bio = BIO_new_file(path, "w")) == NULL)
        return -1;
    ok = PEM_write_bio_X509(bio, x);
    BIO_free(bio);
    return ok ? 0 : -1;
}

int eg_pf_write_bytes(eg_pf *pf, const char *name, const void *data, size_t len)
{
    char path[PATH_MAX];
    FILE *f;
    int ok;

    eg_pf_path(pf, name, path);
    if ((f = fopen(path, "wb")) == NULL)
        return -1;
    ok = fwrite(data, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    return ok ? 0 : -1;
}

static int spawn_wait(const char *log, char *const argv[])
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status = -1;

    if (posix_spawn_file_actions_init(&fa) != 0)
        return -1;
    if (posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600) == 0 &&
        posix_spawn_file_actions_adddup2(&fa, 1, 2) == 0 &&
        posix_spawnp(&pid, "openssl", &fa, NULL, argv, environ) == 0 &&
        waitpid(pid, &status, 0) == pid)
        status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    posix_spawn_file_actions_destroy(&fa);
    return status;
}

/* The command's output, NUL-terminated, or NULL. */
static char *read_log(const char *log)
{
    char *buf = NULL;
    long len;
    FILE *f;

    if ((f = fopen(log, "rb")) == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = calloc(1, (size_t)len + 1)) != NULL &&
        fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

/* Runs openssl with the arguments of ap; *out gets its output (caller frees). */
static int run_openssl(eg_pf *pf, va_list ap, char **out)
{
    char *argv[EG_PF_MAX_ARGS + 2], log[PATH_MAX];
    int argc = 0, status;

    argv[argc++] = "openssl";
    while (argc <= EG_PF_MAX_ARGS && (argv[argc] = va_arg(ap, char *)) != NULL)
        argc++;
    argv[argc] = NULL;
    eg_pf_path(pf, "openssl.log", log);
    status = spawn_wait(log, argv);
    *out = read_log(log);
    return status;
}

int eg_pf_openssl(eg_pf *pf, const char *expect, ...)
{
    char *out;
    va_list ap;
    int status;

    va_start(ap, expect);
    status = run_openssl(pf, ap, &out);
    va_end(ap);
    if (status == 0 && expect != NULL && (out == NULL || strstr(out, expect) == NULL))
        status = 1;
    if (status != 0)
        fprintf(stderr, "\n  openssl exited %d:\n%s", status, out != NULL ? out : "");
    free(out);
    return status;
}

int eg_pf_openssl_refuses(eg_pf *pf, const char *reason, ...)
{
    char *out;
    va_list ap;
    int status, rc = -1;

    va_start(ap, reason);
    status = run_openssl(pf, ap, &out);
    va_end(ap);
    if (status > 0 && out != NULL && strstr(out, reason) != NULL)
        rc = 0;
    else
        fprintf(stderr, "\n  openssl exited %d, not for \"%s\":\n%s", status, reason,
                out != NULL ? out : "");
    free(out);
    return rc;
}
