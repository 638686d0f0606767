/*
 * `ca create`: the CA key in the token (a token object, sensitive, never
 * extractable) with a self-signed root or a CSR for an external root.
 * `ca import` is in cmd_ca_import.c, `ca renew` in cmd_ca_renew.c.
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>

#include "args.h"
#include "cert_build.h"
#include "files.h"
#include "report.h"
#include "token.h"

static const char ca_create_help[] =
    "usage: estgate-provision ca create TOKEN-OPTIONS --label LABEL --key TYPE --subject NAME\n"
    "           (--self-signed --days N --out FILE | --csr FILE)\n"
    "\n"
    "Creates the CA key pair in the token: a token object, sensitive and never\n"
    "extractable. With --self-signed it also makes a root certificate (v3, CA:TRUE,\n"
    "keyCertSign + cRLSign, SKI/AKI, random 127-bit serial, SHA-256 or SHA-384 by\n"
    "key), signed in the token, stored in the token under the key's CKA_ID and\n"
    "written to --out. With --csr it writes a CSR for an external root instead;\n"
    "bring the issued certificate back with `estgate-provision ca import`.\n"
    "\n"
    "  --label LABEL      CKA_LABEL of the key pair and its certificate (must be unused)\n"
    "  --key TYPE         ec-p256, ec-p384, rsa2048, rsa3072 or rsa4096\n"
    "  --subject NAME     RFC 4514, most specific first: \"CN=Example CA,O=Example\"\n"
    "  --self-signed      make a self-signed root certificate\n"
    "  --days N           its validity in days\n"
    "  --out FILE         where to write it (PEM)\n"
    "  --csr FILE         write a CSR (PEM) instead of a root certificate\n"
    "\n" EG_PROV_TOKEN_HELP;

enum { OPT_SELF_SIGNED = EG_OPT_KEY_OWN, OPT_CSR };

static const struct option ca_create_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"label", required_argument, NULL, EG_OPT_LABEL},
    {"key", required_argument, NULL, EG_OPT_KEY},
    {"subject", required_argument, NULL, EG_OPT_SUBJECT},
    {"self-signed", no_argument, NULL, OPT_SELF_SIGNED},
    {"days", required_argument, NULL, EG_OPT_DAYS},
    {"out", required_argument, NULL, EG_OPT_OUT},
    {"csr", required_argument, NULL, OPT_CSR},
    {NULL, 0, NULL, 0},
};

struct ca_create {
    eg_prov_token_opts tok;
    eg_prov_key_opts k; /* no --ca-label */
    const char *csr;
    bool self_signed, help;
};

/* What the token phase hands on: the key's name and its certificate or CSR. */
struct ca_made {
    char *uri;
    uint8_t *id;
    size_t idlen;
    X509 *cert;
    X509_REQ *req;
};

static int ca_create_opt(void *ctx, int c, const char *arg)
{
    struct ca_create *a = ctx;

    switch (c) {
    case OPT_SELF_SIGNED:
        a->self_signed = true;
        return EG_EXIT_OK;
    case OPT_CSR:
        a->csr = arg;
        return EG_EXIT_OK;
    default:
        return eg_prov_key_opt(&a->k, c, arg);
    }
}

static int ca_create_check(const struct ca_create *a)
{
    int rc;

    if ((rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->k.label == NULL || !a->k.have_key || a->k.subject == NULL)
        return eg_prov_usage_error("--label, --key and --subject are required");
    if (a->self_signed == (a->csr != NULL))
        return eg_prov_usage_error("give either --self-signed (with --days and --out) or --csr");
    if (a->self_signed && (a->k.days == 0 || a->k.out == NULL))
        return eg_prov_usage_error("--self-signed needs --days and --out");
    if (a->csr != NULL && (a->k.days != 0 || a->k.out != NULL))
        return eg_prov_usage_error("--days and --out go with --self-signed, not --csr");
    return EG_EXIT_OK;
}

static int ca_create_parse(int argc, char **argv, struct ca_create *a)
{
    int rc = eg_prov_parse_args(argc, argv, ca_create_opts, &a->tok, ca_create_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help)
        return rc;
    return ca_create_check(a);
}

static void ca_made_clear(struct ca_made *m)
{
    OPENSSL_free(m->uri);
    OPENSSL_free(m->id);
    X509_free(m->cert);
    X509_REQ_free(m->req);
    memset(m, 0, sizeof(*m));
}

/* Signs the root or the CSR with the new key, in the token through the provider. */
static int ca_sign(const struct ca_create *a, const X509_NAME *subject, eg_p11_key *key,
                   struct ca_made *m)
{
    EVP_PKEY *pkey = NULL, *pub = eg_p11_key_public(key);
    eg_prov_cert_spec spec = {
        .profile = EG_PROFILE_CA, .subject = subject, .pubkey = pub, .days = a->k.days};
    int rc;

    if (pub == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "no public key for %s", eg_p11_key_uri(key));
        goto out;
    }
    if ((rc = eg_prov_key_pkey(key, &pkey)) != EG_EXIT_OK)
        goto out;
    spec.signer = pkey;
    if (a->self_signed)
        rc = eg_prov_cert_build(&spec, &m->cert);
    else
        rc = eg_prov_csr_build(subject, pub, pkey, &m->req);
out:
    EVP_PKEY_free(pkey);
    EVP_PKEY_free(pub);
    return rc;
}

/* Keeps the key's name and id for the messages; nothing secret. */
static int keep_key(eg_p11_key *key, struct ca_made *m)
{
    const uint8_t *id = eg_p11_key_id(key, &m->idlen);

    if ((m->uri = OPENSSL_strdup(eg_p11_key_uri(key))) == NULL ||
        (m->id = OPENSSL_memdup(id, m->idlen)) == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    return EG_EXIT_OK;
}

/*
 * The token phase: the key pair, its root (stored in the token under the
 * key's CKA_ID) or CSR. When a later step fails the key is destroyed again,
 * so a failed command leaves the label free for the next try.
 */
static int ca_make(const struct ca_create *a, const X509_NAME *subject, struct ca_made *m)
{
    eg_keygen_spec spec = a->k.spec;
    eg_p11_key *key = NULL;
    eg_token *tok = NULL;
    int rc;

    spec.label = a->k.label;
    spec.token_object = true;
    spec.wrappable = false; /* a CA key never leaves the token, not even wrapped */
    if ((rc = eg_prov_token_open(&a->tok, &tok)) != EG_EXIT_OK ||
        (rc = eg_prov_label_unused(tok, a->k.label)) != EG_EXIT_OK)
        goto out;
    if (eg_p11_key_generate(tok, &spec, &key) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot generate the CA key '%s'", a->k.label);
        goto out;
    }
    if ((rc = ca_sign(a, subject, key, m)) != EG_EXIT_OK || (rc = keep_key(key, m)) != EG_EXIT_OK ||
        (m->cert != NULL &&
         (rc = eg_prov_store_cert(tok, m->cert, a->k.label, m->id, m->idlen)) != EG_EXIT_OK))
        eg_p11_key_destroy(key);
out:
    eg_p11_key_free(key);
    eg_prov_token_close(tok);
    return rc;
}

static int write_pem(eg_prov_outfile *of, const struct ca_made *m)
{
    BIO *mem = BIO_new(BIO_s_mem());
    int rc, ok;

    ok = mem != NULL &&
         (m->cert != NULL ? PEM_write_bio_X509(mem, m->cert) : PEM_write_bio_X509_REQ(mem, m->req));
    if (!ok)
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot encode PEM");
    else if ((rc = eg_prov_outfile_write(of, mem)) == EG_EXIT_OK)
        rc = eg_prov_outfile_commit(of);
    BIO_free(mem);
    return rc;
}

static int ca_create_run(const struct ca_create *a)
{
    const char *path = a->self_signed ? a->k.out : a->csr;
    struct ca_made m = {NULL, NULL, 0, NULL, NULL};
    eg_prov_outfile *of = NULL;
    X509_NAME *subject = NULL;
    int rc;

    /* Everything that can fail without the token fails before the key exists. */
    if ((rc = eg_prov_name_parse(a->k.subject, &subject)) != EG_EXIT_OK ||
        (rc = eg_prov_outfile_open(path, 0644, &of)) != EG_EXIT_OK ||
        (rc = ca_make(a, subject, &m)) != EG_EXIT_OK)
        goto out;
    if ((rc = write_pem(of, &m)) != EG_EXIT_OK)
        goto out;
    eg_prov_note("created CA key %s", m.uri);
    eg_prov_note("wrote the %s to %s", m.cert ? "self-signed root certificate" : "CSR", path);
    rc = EG_EXIT_OK;
out:
    ca_made_clear(&m);
    eg_prov_outfile_free(of);
    X509_NAME_free(subject);
    return rc;
}

static int ca_create(int argc, char **argv)
{
    struct ca_create a;
    int rc;

    memset(&a, 0, sizeof(a));
    eg_prov_report_prefix("estgate-provision ca create");
    if ((rc = ca_create_parse(argc, argv, &a)) != EG_EXIT_OK)
        return rc;
    if (a.help) {
        eg_prov_help(ca_create_help);
        return EG_EXIT_OK;
    }
    return ca_create_run(&a);
}

static const char ca_help[] =
    "usage: estgate-provision ca create ...   a CA key and its root or CSR\n"
    "       estgate-provision ca import ...   its certificate and chain\n"
    "       estgate-provision ca renew ...    a new root, same key or a new one\n"
    "Run any of them with --help for its options.\n";

int eg_prov_cmd_ca(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "create") == 0)
        return ca_create(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "import") == 0)
        return eg_prov_cmd_ca_import(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "renew") == 0)
        return eg_prov_cmd_ca_renew(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        eg_prov_help(ca_help);
        return EG_EXIT_OK;
    }
    eg_prov_report_prefix("estgate-provision ca");
    return eg_prov_usage_error("expected 'create', 'import' or 'renew'");
}
