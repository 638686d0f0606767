/*
 * `bundle signer create`: the bundle-signing key in the token and its
 * certificate from the token CA, as `tls create` makes the TLS key. The
 * certificate has no extended key usage on purpose: CMS verifiers (OpenSSL's
 * among them) check the S/MIME signing purpose, which a certificate without
 * EKU meets and one limited to, say, serverAuth does not.
 */
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "args.h"
#include "bundle.h"
#include "cert_build.h"
#include "files.h"
#include "report.h"
#include "token.h"

static const char signer_create_help[] =
    "usage: estgate-provision bundle signer create TOKEN-OPTIONS --label LABEL --key TYPE\n"
    "           --ca-label CA --subject NAME --days N --out FILE\n"
    "\n"
    "Creates the key that signs fleet trust bundles in the token (a token object,\n"
    "sensitive, never extractable) and its certificate (CA:FALSE, digitalSignature,\n"
    "no extended key usage), signed in the token by the CA key CA, whose certificate\n"
    "must be in the token. The certificate is stored in the token under the key's\n"
    "CKA_ID, where `bundle create` finds it, and written to FILE followed by the CA\n"
    "certificate. Devices trust either certificate to verify bundles.\n"
    "\n"
    "  --label LABEL      CKA_LABEL of the key pair and its certificate (must be unused)\n"
    "  --key TYPE         ec-p256, ec-p384, rsa2048, rsa3072 or rsa4096\n"
    "  --ca-label CA      the issuing CA key in the token\n"
    "  --subject NAME     RFC 4514 subject, e.g. \"CN=Fleet bundle signer,O=Example\"\n"
    "  --days N           validity in days; must end before the CA certificate does\n"
    "  --out FILE         the certificate, then the CA certificate (PEM)\n"
    "\n" EG_PROV_TOKEN_HELP;

enum { OPT_LABEL = EG_OPT_OWN, OPT_KEY, OPT_CA_LABEL, OPT_SUBJECT, OPT_DAYS, OPT_OUT };

static const struct option signer_create_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"label", required_argument, NULL, OPT_LABEL},
    {"key", required_argument, NULL, OPT_KEY},
    {"ca-label", required_argument, NULL, OPT_CA_LABEL},
    {"subject", required_argument, NULL, OPT_SUBJECT},
    {"days", required_argument, NULL, OPT_DAYS},
    {"out", required_argument, NULL, OPT_OUT},
    {NULL, 0, NULL, 0},
};

struct signer_create {
    eg_prov_token_opts tok;
    const char *label, *ca_label, *subject, *out;
    eg_keygen_spec spec;
    bool have_key, help;
    int days;
};

/* What the token phase hands on. */
struct signer_made {
    char *uri;
    X509 *cert, *ca;
};

static int signer_create_opt(void *ctx, int c, const char *arg)
{
    struct signer_create *a = ctx;

    switch (c) {
    case OPT_LABEL:
        a->label = arg;
        return EG_EXIT_OK;
    case OPT_KEY:
        a->have_key = true;
        return eg_prov_parse_key(arg, &a->spec);
    case OPT_CA_LABEL:
        a->ca_label = arg;
        return EG_EXIT_OK;
    case OPT_SUBJECT:
        a->subject = arg;
        return EG_EXIT_OK;
    case OPT_DAYS:
        return eg_prov_parse_days(arg, &a->days);
    case OPT_OUT:
        a->out = arg;
        return EG_EXIT_OK;
    default:
        return EG_EXIT_USAGE;
    }
}

static int signer_create_parse(int argc, char **argv, struct signer_create *a)
{
    int rc =
        eg_prov_parse_args(argc, argv, signer_create_opts, &a->tok, signer_create_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help || (rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->label == NULL || !a->have_key || a->ca_label == NULL || a->subject == NULL ||
        a->days == 0 || a->out == NULL)
        return eg_prov_usage_error("--label, --key, --ca-label, --subject, --days and --out "
                                   "are required");
    return EG_EXIT_OK;
}

/* The CA's certificate from the token: its key's, and outliving the signer's. */
static int ca_cert(const struct signer_create *a, eg_p11_key *ca_key, X509 **out)
{
    EVP_PKEY *pub = eg_p11_key_public(ca_key);
    time_t end = time(NULL) + (time_t)a->days * 86400;
    X509 *ca = NULL;
    int rc;

    if ((rc = eg_prov_key_cert(ca_key, &ca)) != EG_EXIT_OK)
        goto out;
    if (ca == NULL)
        rc = eg_prov_fail(EG_EXIT_UNAVAILABLE, "the CA key %s has no certificate in the token",
                          eg_p11_key_uri(ca_key));
    else if (pub == NULL || EVP_PKEY_eq(X509_get0_pubkey(ca), pub) != 1)
        rc = eg_prov_fail(EG_EXIT_DATAERR, "the certificate stored for %s is not for that key",
                          eg_p11_key_uri(ca_key));
    else if (X509_cmp_time(X509_get0_notAfter(ca), &end) < 0)
        rc = eg_prov_fail(EG_EXIT_DATAERR, "--days %d: the certificate would outlive its CA's",
                          a->days);
    if (rc == EG_EXIT_OK) {
        *out = ca;
        ca = NULL;
    }
out:
    X509_free(ca);
    EVP_PKEY_free(pub);
    return rc;
}

/* Random, positive, 16 bytes: no leading zero byte to drop. */
static int set_serial(X509 *x)
{
    unsigned char b[16];
    BIGNUM *bn = NULL;
    int ok;

    ok = RAND_bytes(b, sizeof(b)) == 1;
    b[0] = (unsigned char)((b[0] & 0x7f) | 0x40);
    ok = ok && (bn = BN_bin2bn(b, sizeof(b), NULL)) != NULL &&
         BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
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

static int fill_cert(X509 *x, const X509_NAME *subject, EVP_PKEY *pub, X509 *ca, int days)
{
    X509V3_CTX ctx;

    if (X509_set_version(x, X509_VERSION_3) != 1 || set_serial(x) != 0 ||
        X509_set_subject_name(x, subject) != 1 ||
        X509_set_issuer_name(x, X509_get_subject_name(ca)) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) == NULL ||
        X509_set_pubkey(x, pub) != 1)
        return -1;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, ca, x, NULL, NULL, 0);
    return add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") ||
                   add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature") ||
                   add_ext(x, &ctx, NID_subject_key_identifier, "hash") ||
                   add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always")
               ? -1
               : 0;
}

/* The certificate for key, signed by the CA key in the token and checked in software. */
static int signer_issue(const struct signer_create *a, const X509_NAME *subject, eg_p11_key *key,
                        eg_p11_key *ca_key, struct signer_made *m)
{
    EVP_PKEY *pub = eg_p11_key_public(key), *ca_pkey = NULL;
    EVP_PKEY *ca_pub = X509_get0_pubkey(m->ca);
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    X509 *x = X509_new();
    int rc;

    if (x == NULL || mctx == NULL || pub == NULL || ca_pub == NULL ||
        fill_cert(x, subject, pub, m->ca, a->days) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot build the bundle signer certificate");
        goto out;
    }
    if ((rc = eg_prov_key_pkey(ca_key, &ca_pkey)) != EG_EXIT_OK)
        goto out;
    if (EVP_DigestSignInit_ex(mctx, NULL, eg_prov_digest_for(ca_pub), NULL, NULL, ca_pkey, NULL) !=
            1 ||
        X509_sign_ctx(x, mctx) <= 0 || X509_verify(x, ca_pub) != 1) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "signing the certificate in the token failed");
        goto out;
    }
    m->cert = x;
    x = NULL;
    rc = EG_EXIT_OK;
out:
    X509_free(x);
    EVP_MD_CTX_free(mctx);
    EVP_PKEY_free(ca_pkey);
    EVP_PKEY_free(pub);
    return rc;
}

/* Stores the certificate under the key's id and keeps the key's URI for the messages. */
static int signer_store(eg_token *tok, const char *label, eg_p11_key *key, struct signer_made *m)
{
    size_t idlen;
    const uint8_t *id = eg_p11_key_id(key, &idlen);

    if ((m->uri = OPENSSL_strdup(eg_p11_key_uri(key))) == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    return eg_prov_store_cert(tok, m->cert, label, id, idlen);
}

/* The token phase; when a step after the key generation fails, the key is destroyed again. */
static int signer_make(const struct signer_create *a, const X509_NAME *subject,
                       struct signer_made *m)
{
    eg_keygen_spec spec = a->spec;
    eg_p11_key *ca_key = NULL, *key = NULL;
    eg_token *tok = NULL;
    int rc;

    spec.label = a->label;
    spec.token_object = true;
    spec.wrappable = false;
    if ((rc = eg_prov_token_open(&a->tok, &tok)) != EG_EXIT_OK ||
        (rc = eg_prov_key_by_label(tok, a->ca_label, &ca_key)) != EG_EXIT_OK ||
        (rc = ca_cert(a, ca_key, &m->ca)) != EG_EXIT_OK ||
        (rc = eg_prov_label_unused(tok, a->label)) != EG_EXIT_OK)
        goto out;
    if (eg_p11_key_generate(tok, &spec, &key) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot generate the key '%s'", a->label);
        goto out;
    }
    if ((rc = signer_issue(a, subject, key, ca_key, m)) != EG_EXIT_OK ||
        (rc = signer_store(tok, a->label, key, m)) != EG_EXIT_OK)
        eg_p11_key_destroy(key);
out:
    eg_p11_key_free(key);
    eg_p11_key_free(ca_key);
    eg_prov_token_close(tok);
    return rc;
}

static int write_chain(eg_prov_outfile *of, const struct signer_made *m)
{
    BIO *mem = BIO_new(BIO_s_mem());
    int rc;

    if (mem == NULL || !PEM_write_bio_X509(mem, m->cert) || !PEM_write_bio_X509(mem, m->ca))
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot encode PEM");
    else if ((rc = eg_prov_outfile_write(of, mem)) == EG_EXIT_OK)
        rc = eg_prov_outfile_commit(of);
    BIO_free(mem);
    return rc;
}

static int signer_create_run(const struct signer_create *a)
{
    struct signer_made m = {NULL, NULL, NULL};
    eg_prov_outfile *of = NULL;
    X509_NAME *subject = NULL;
    int rc;

    if ((rc = eg_prov_name_parse(a->subject, &subject)) != EG_EXIT_OK ||
        (rc = eg_prov_outfile_open(a->out, 0644, &of)) != EG_EXIT_OK ||
        (rc = signer_make(a, subject, &m)) != EG_EXIT_OK || (rc = write_chain(of, &m)) != 0)
        goto out;
    eg_prov_note("created bundle signing key %s", m.uri);
    eg_prov_note("wrote its certificate and the CA certificate to %s", a->out);
    rc = EG_EXIT_OK;
out:
    OPENSSL_free(m.uri);
    X509_free(m.cert);
    X509_free(m.ca);
    eg_prov_outfile_free(of);
    X509_NAME_free(subject);
    return rc;
}

int eg_prov_cmd_bundle_signer(int argc, char **argv)
{
    struct signer_create a;
    int rc;

    eg_prov_report_prefix("estgate-provision bundle signer create");
    if (argc < 2 || strcmp(argv[1], "create") != 0)
        return eg_prov_usage_error("expected 'bundle signer create'");
    memset(&a, 0, sizeof(a));
    if ((rc = signer_create_parse(argc - 1, argv + 1, &a)) != EG_EXIT_OK)
        return rc;
    if (a.help) {
        eg_prov_help(signer_create_help);
        return EG_EXIT_OK;
    }
    return signer_create_run(&a);
}
