/*
 * `bootstrap`: a factory station issues bootstrap (IDevID-style)
 * certificates in batches from a manifest, with the factory CA key in its
 * token. Per device work is in bootstrap_row.c; this file is the command
 * line, the set-up, the batch loop and its summary.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "args.h"
#include "bootstrap.h"
#include "files.h"
#include "pem.h"
#include "report.h"
#include "token.h"

#define EG_BS_MAX_SANS 8

static const char bootstrap_help[] =
    "usage: estgate-provision bootstrap TOKEN-OPTIONS --manifest FILE --out DIR\n"
    "           --ca-key URI --ca-cert FILE --days N [--san-template T]... [--key TYPE]\n"
    "           [--manifest-key URI --manifest-cert FILE]\n"
    "\n"
    "Issues a bootstrap certificate to every device of the manifest (CSV with a\n"
    "header serial,model,csr,key,transport, or JSON lines with the same names):\n"
    "subject serialNumber=<serial>, CN=<model>-<serial>, clientAuth, signed in the\n"
    "token by the factory CA. A row with csr gives the device's CSR file (its\n"
    "signature is checked); a row with transport gives the device's RSA transport\n"
    "public key (PEM), and the key pair is generated in the token and written\n"
    "wrapped for that key. Paths are relative to the manifest's directory.\n"
    "\n"
    "The batch state is kept in DIR/bootstrap.db: running the same batch again,\n"
    "after an interruption or a token error, issues only what is missing and\n"
    "never a second certificate to a device of DIR (another DIR is a new batch).\n"
    "A serial already recorded with a different CSR, model or SAN templates is\n"
    "refused. Bad rows are reported and skipped.\n"
    "Outputs: DIR/<serial>.pem (certificate and CA chain), DIR/<serial>.key.pem\n"
    "(wrapped key), DIR/manifest.txt and DIR/manifest.cms (CMS SignedData).\n"
    "See docs/factory-line.md for the formats.\n"
    "\n"
    "  --manifest FILE      the batch (CSV or JSON lines)\n"
    "  --out DIR            output directory (created, with missing parents, if missing)\n"
    "  --ca-key URI         the factory CA key in the token (PKCS#11 URI)\n"
    "  --ca-cert FILE       its certificate, then any chain above it (PEM)\n"
    "  --days N             validity in days; must end before the CA certificate does\n"
    "  --san-template T     dns:NAME or uri:URI with {serial} and {model} (repeatable)\n"
    "  --key TYPE           token-generated keys: ec-p256 (default), ec-p384 or rsa2048;\n"
    "                       a row's key column overrides it\n"
    "  --manifest-key URI   the key signing the batch manifest (default: --ca-key)\n"
    "  --manifest-cert FILE its certificate (default: the CA certificate)\n"
    "\n"
    "Exit status 65 means some rows were refused and all others done.\n"
    "\n" EG_PROV_TOKEN_HELP;

enum {
    OPT_MANIFEST = EG_OPT_OWN,
    OPT_OUT,
    OPT_CA_KEY,
    OPT_CA_CERT,
    OPT_DAYS,
    OPT_SAN,
    OPT_KEY,
    OPT_MKEY,
    OPT_MCERT
};

static const struct option bootstrap_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"manifest", required_argument, NULL, OPT_MANIFEST},
    {"out", required_argument, NULL, OPT_OUT},
    {"ca-key", required_argument, NULL, OPT_CA_KEY},
    {"ca-cert", required_argument, NULL, OPT_CA_CERT},
    {"days", required_argument, NULL, OPT_DAYS},
    {"san-template", required_argument, NULL, OPT_SAN},
    {"key", required_argument, NULL, OPT_KEY},
    {"manifest-key", required_argument, NULL, OPT_MKEY},
    {"manifest-cert", required_argument, NULL, OPT_MCERT},
    {NULL, 0, NULL, 0},
};

struct bs_args {
    eg_prov_token_opts tok;
    const char *manifest, *out, *ca_key, *ca_cert, *mkey, *mcert;
    const char *sans[EG_BS_MAX_SANS];
    size_t nsans;
    eg_keygen_spec key;
    int days;
    bool help;
};

static int bs_opt(void *ctx, int c, const char *arg)
{
    struct bs_args *a = ctx;
    int rc;

    switch (c) {
    case OPT_MANIFEST:
        a->manifest = arg;
        return EG_EXIT_OK;
    case OPT_OUT:
        a->out = arg;
        return EG_EXIT_OK;
    case OPT_CA_KEY:
        a->ca_key = arg;
        return EG_EXIT_OK;
    case OPT_CA_CERT:
        a->ca_cert = arg;
        return EG_EXIT_OK;
    case OPT_DAYS:
        return eg_prov_parse_days(arg, &a->days);
    case OPT_SAN:
        if (a->nsans == EG_BS_MAX_SANS)
            return eg_prov_usage_error("at most %d --san-template options", EG_BS_MAX_SANS);
        if ((rc = eg_bs_san_template_check(arg)) == EG_EXIT_OK)
            a->sans[a->nsans++] = arg;
        return rc;
    case OPT_KEY:
        if (!eg_bs_key_name(arg, &a->key))
            return eg_prov_usage_error("--key %s: use ec-p256, ec-p384 or rsa2048", arg);
        return EG_EXIT_OK;
    case OPT_MKEY:
        a->mkey = arg;
        return EG_EXIT_OK;
    case OPT_MCERT:
        a->mcert = arg;
        return EG_EXIT_OK;
    default:
        return EG_EXIT_USAGE;
    }
}

static int bs_parse(int argc, char **argv, struct bs_args *a)
{
    int rc;

    eg_bs_key_name("ec-p256", &a->key);
    rc = eg_prov_parse_args(argc, argv, bootstrap_opts, &a->tok, bs_opt, a, &a->help);
    if (rc != EG_EXIT_OK || a->help || (rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->manifest == NULL || a->out == NULL || a->ca_key == NULL || a->ca_cert == NULL ||
        a->days == 0)
        return eg_prov_usage_error("--manifest, --out, --ca-key, --ca-cert and --days are "
                                   "required");
    if ((a->mkey == NULL) != (a->mcert == NULL))
        return eg_prov_usage_error("give --manifest-key and --manifest-cert together");
    return EG_EXIT_OK;
}

static int read_certs(const char *path, STACK_OF(X509) * *out)
{
    STACK_OF(X509) *sk = eg_pem_read_certs(path);

    if (sk == NULL)
        return eg_prov_fail(EG_EXIT_NOINPUT, "no PEM certificate in %s", path);
    *out = sk;
    return EG_EXIT_OK;
}

/* The token key a URI names, checked against its certificate, as a provider EVP_PKEY. */
static int load_signer(eg_token *tok, const char *uri, X509 *cert, EVP_PKEY **out)
{
    eg_p11_key *key = NULL;
    EVP_PKEY *pub = NULL;
    int rc;

    if (eg_p11_key_open(tok, uri, &key) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_UNAVAILABLE, "cannot open the key %s", uri);
        goto out;
    }
    if ((pub = eg_p11_key_public(key)) == NULL || EVP_PKEY_eq(X509_get0_pubkey(cert), pub) != 1) {
        rc = eg_prov_fail(EG_EXIT_DATAERR, "the certificate given for %s is not for that key", uri);
        goto out;
    }
    rc = eg_prov_key_pkey(key, out);
out:
    EVP_PKEY_free(pub);
    eg_p11_key_free(key);
    return rc;
}

/* Everything but the rows: token, CA, state, manifest signer. */
struct bs_setup {
    eg_bs_batch b;
    eg_bs_rows *rows;
    STACK_OF(X509) * mchain;
    EVP_PKEY *mkey;
    uint8_t ca_sha256[32];
    char *sans_joined;
    eg_bs_entry *entries; /* the batch manifest: every device of the state with a certificate */
    size_t nentries;
};

static void setup_clear(struct bs_setup *s)
{
    eg_bs_rows_free(s->rows);
    OPENSSL_free(s->entries);
    OPENSSL_free(s->sans_joined);
    eg_bs_state_free(s->b.state);
    EVP_PKEY_free(s->mkey);
    EVP_PKEY_free(s->b.issuer.key);
    sk_X509_pop_free(s->mchain, X509_free);
    sk_X509_pop_free(s->b.issuer.chain, X509_free);
    eg_prov_token_close(s->b.tok);
}

static int ca_setup(const struct bs_args *a, struct bs_setup *s)
{
    time_t end = time(NULL) + (time_t)a->days * 86400;
    unsigned char *der = NULL;
    int n, rc;

    if ((rc = read_certs(a->ca_cert, &s->b.issuer.chain)) != EG_EXIT_OK)
        return rc;
    s->b.issuer.ca = sk_X509_value(s->b.issuer.chain, 0);
    if (X509_cmp_time(X509_get0_notAfter(s->b.issuer.ca), &end) < 0)
        return eg_prov_fail(EG_EXIT_DATAERR, "--days %d: certificates would outlive the CA's",
                            a->days);
    if ((n = i2d_X509(s->b.issuer.ca, &der)) <= 0 ||
        EVP_Digest(der, (size_t)n, s->ca_sha256, NULL, EVP_sha256(), NULL) != 1)
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot hash the CA certificate");
    OPENSSL_free(der);
    return rc;
}

/* The --san-template values as the state records them: space-separated, none has a space. */
static int join_sans(const struct bs_args *a, char **out)
{
    size_t i, len = 1;
    char *j;

    for (i = 0; i < a->nsans; i++)
        len += strlen(a->sans[i]) + 1;
    if ((j = OPENSSL_zalloc(len)) == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    for (i = 0; i < a->nsans; i++) {
        if (i > 0)
            strcat(j, " ");
        strcat(j, a->sans[i]);
    }
    *out = j;
    return EG_EXIT_OK;
}

/*
 * A run killed while writing a file leaves its hidden temporary; with the
 * batch's lock held none can be another run's, so they go.
 */
static void remove_leftovers(const char *dir)
{
    int n = eg_bs_remove_leftovers(dir);

    if (n < 0)
        eg_prov_warn("cannot list %s to remove temporary files of a stopped run: %s", dir,
                     strerror(errno));
    else if (n > 0)
        eg_prov_note("removed %d temporary file%s a stopped run left in %s", n, n == 1 ? "" : "s",
                     dir);
}

static int bs_setup(const struct bs_args *a, struct bs_setup *s)
{
    int rc;

    s->b.out = a->out;
    s->b.issuer.sans = a->sans;
    s->b.issuer.nsans = a->nsans;
    s->b.issuer.days = a->days;
    if ((rc = ca_setup(a, s)) != EG_EXIT_OK ||
        (rc = eg_bs_input_read(a->manifest, &a->key, &s->rows)) != EG_EXIT_OK)
        return rc;
    /* A signed manifest of nothing would look like a finished batch. */
    if (s->rows->n == 0)
        return eg_prov_fail(EG_EXIT_DATAERR,
                            "%s: the input holds no device rows (only a header, blank lines or # "
                            "comments); nothing issued",
                            a->manifest);
    if ((rc = join_sans(a, &s->sans_joined)) != EG_EXIT_OK)
        return rc;
    s->b.issuer.sans_joined = s->sans_joined;
    if (eg_prov_mkdirs(a->out, 0755) != 0)
        return eg_prov_fail(EG_EXIT_CANTCREAT, "cannot create %s: %s", a->out, strerror(errno));
    if ((rc = eg_bs_state_open(a->out, s->b.issuer.ca, s->ca_sha256, &s->b.state)) != EG_EXIT_OK)
        return rc;
    remove_leftovers(a->out);
    if ((rc = eg_prov_token_open(&a->tok, &s->b.tok)) != EG_EXIT_OK ||
        (rc = load_signer(s->b.tok, a->ca_key, s->b.issuer.ca, &s->b.issuer.key)) != EG_EXIT_OK)
        return rc;
    if (a->mkey != NULL && ((rc = read_certs(a->mcert, &s->mchain)) != EG_EXIT_OK ||
                            (rc = load_signer(s->b.tok, a->mkey, sk_X509_value(s->mchain, 0),
                                              &s->mkey)) != EG_EXIT_OK))
        return rc;
    s->b.keygen_ok = eg_bs_keygen_supported(s->b.tok, &s->b.keygen_missing);
    return EG_EXIT_OK;
}

static uint64_t sign_calls(eg_token *tok)
{
    eg_token_stats st;

    eg_token_get_stats(tok, &st);
    return st.sign_calls;
}

/* Every row; stops at the first error that is not the row's own. */
static int bs_rows(struct bs_setup *s)
{
    eg_bs_progress prog;
    char why[EG_BS_WHY_MAX];
    size_t i;
    int rc = EG_EXIT_OK;

    eg_bs_progress_start(&prog, s->rows->n);
    for (i = 0; i < s->rows->n; i++) {
        const eg_bs_row *row = &s->rows->v[i];

        why[0] = 0;
        rc = eg_bs_row_run(&s->b, row, why);
        if (rc == EG_EXIT_DATAERR && why[0] != 0) {
            s->b.refused++;
            printf("refused line %zu serial %s: %s\n", row->line,
                   row->serial[0] ? row->serial : "-", why);
            rc = EG_EXIT_OK;
        } else if (rc != EG_EXIT_OK) {
            break;
        }
        eg_bs_progress_step(&prog);
    }
    eg_bs_progress_end(&prog);
    return rc;
}

static int bs_run(const struct bs_args *a)
{
    struct bs_setup s;
    X509 *msigner;
    uint64_t before = 0;
    bool stopped = false;
    int rc;

    memset(&s, 0, sizeof(s));
    if ((rc = bs_setup(a, &s)) != EG_EXIT_OK)
        goto out;
    if (!s.b.keygen_ok)
        eg_prov_note("token '%s' lacks %s: rows asking for token-generated keys are refused",
                     eg_token_label(s.b.tok), s.b.keygen_missing);
    before = sign_calls(s.b.tok);
    if ((rc = bs_rows(&s)) != EG_EXIT_OK) {
        stopped = true;
        goto out;
    }
    /* From the state, not from this run's rows: a fix-up run keeps the whole batch listed. */
    msigner = s.mkey != NULL ? sk_X509_value(s.mchain, 0) : s.b.issuer.ca;
    if ((rc = eg_bs_state_entries(s.b.state, &s.entries, &s.nentries)) != EG_EXIT_OK ||
        (rc = eg_bs_manifest_write(a->out, s.entries, s.nentries, s.ca_sha256, msigner,
                                   s.mkey != NULL ? s.mkey : s.b.issuer.key)) != EG_EXIT_OK) {
        stopped = true;
        goto out;
    }
    eg_prov_note("%zu rows: issued now %zu, already issued %zu, refused %zu", s.rows->n, s.b.issued,
                 s.b.already, s.b.refused);
    eg_prov_note("token signatures %llu; manifest of %zu devices in %s/manifest.cms",
                 (unsigned long long)(sign_calls(s.b.tok) - before), s.nentries, a->out);
    rc = s.b.refused > 0 ? EG_EXIT_DATAERR : EG_EXIT_OK;
out:
    /* A full file system fails the same way on every run until space is freed. */
    if (rc != EG_EXIT_OK && eg_prov_disk_full())
        eg_prov_note("stopped after %zu issued: the file system of %s is full; free space on it "
                     "(the batch needs a few KiB per device), then run the same command again to "
                     "resume",
                     s.b.issued, a->out);
    else if (stopped)
        eg_prov_note("stopped after %zu issued; run the same command again to resume", s.b.issued);
    setup_clear(&s);
    return rc;
}

int eg_prov_cmd_bootstrap(int argc, char **argv)
{
    struct bs_args a;
    int rc;

    eg_prov_report_prefix("estgate-provision bootstrap");
    memset(&a, 0, sizeof(a));
    if ((rc = bs_parse(argc, argv, &a)) != EG_EXIT_OK)
        return rc;
    if (a.help) {
        eg_prov_help(bootstrap_help);
        return EG_EXIT_OK;
    }
    return bs_run(&a);
}
