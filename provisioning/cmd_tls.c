/*
 * `tls create`: the appliance's TLS server key in the token and its
 * certificate, issued by the token CA through the provider.
 */
#include <ctype.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "args.h"
#include "cert_build.h"
#include "files.h"
#include "report.h"
#include "token.h"

#define EG_MAX_SANS 32

static const char tls_create_help[] =
    "usage: estgate-provision tls create TOKEN-OPTIONS --label LABEL --key TYPE --ca-label CA\n"
    "           (--dns NAME | --ip ADDR)... --days N --out FILE [--subject NAME]\n"
    "\n"
    "Creates the appliance's TLS key pair in the token (a token object, sensitive,\n"
    "never extractable) and its certificate (CA:FALSE, digitalSignature, serverAuth,\n"
    "the names as subjectAltName), signed in the token by the CA key CA, whose\n"
    "certificate must be in the token. The certificate is stored in the token\n"
    "under the key's CKA_ID and written to FILE followed by the CA certificate.\n"
    "\n"
    "  --label LABEL      CKA_LABEL of the TLS key pair and its certificate (must be unused)\n"
    "  --key TYPE         ec-p256, ec-p384, rsa2048, rsa3072 or rsa4096\n"
    "  --ca-label CA      the issuing CA key in the token\n"
    "  --dns NAME         a DNS name (repeatable; \"*.\" wildcards allowed)\n"
    "  --ip ADDR          an IPv4 or IPv6 address (repeatable)\n"
    "  --days N           validity in days; must end before the CA certificate does\n"
    "  --out FILE         the certificate chain, leaf then CA (PEM)\n"
    "  --subject NAME     RFC 4514 subject; default CN=<first --dns or --ip>\n"
    "\n" EG_PROV_TOKEN_HELP;

enum {
    OPT_LABEL = EG_OPT_OWN,
    OPT_KEY,
    OPT_CA_LABEL,
    OPT_DNS,
    OPT_IP,
    OPT_DAYS,
    OPT_OUT,
    OPT_SUBJ
};

static const struct option tls_create_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"label", required_argument, NULL, OPT_LABEL},
    {"key", required_argument, NULL, OPT_KEY},
    {"ca-label", required_argument, NULL, OPT_CA_LABEL},
    {"dns", required_argument, NULL, OPT_DNS},
    {"ip", required_argument, NULL, OPT_IP},
    {"days", required_argument, NULL, OPT_DAYS},
    {"out", required_argument, NULL, OPT_OUT},
    {"subject", required_argument, NULL, OPT_SUBJ},
    {NULL, 0, NULL, 0},
};

struct tls_create {
    eg_prov_token_opts tok;
    const char *label, *ca_label, *out, *subject;
    const char *dns[EG_MAX_SANS], *ips[EG_MAX_SANS];
    size_t ndns, nips;
    eg_keygen_spec spec;
    bool have_key, help;
    int days;
};

/* What the token phase hands on. */
struct tls_made {
    char *uri;
    uint8_t *id;
    size_t idlen;
    X509 *cert;
    X509 *ca;
};

/* RFC 1035 host names (letters, digits, inner hyphens), optionally under a "*." wildcard. */
static bool dns_name_ok(const char *s)
{
    size_t len = strlen(s), label = 0, i;

    if (strncmp(s, "*.", 2) == 0) {
        s += 2;
        len -= 2;
    }
    if (len == 0 || len > 253)
        return false;
    for (i = 0; i <= len; i++) {
        if (s[i] == '.' || s[i] == 0) {
            if (label == 0 || label > 63 || s[i - 1] == '-' || s[i - label] == '-')
                return false;
            label = 0;
        } else if (isalnum((unsigned char)s[i]) || s[i] == '-') {
            label++;
        } else {
            return false;
        }
    }
    return true;
}

static int add_san(const char **list, size_t *n, const char *v, const char *opt, bool ok)
{
    if (!ok)
        return eg_prov_usage_error("%s %s: not a valid %s", opt, v,
                                   strcmp(opt, "--dns") == 0 ? "DNS name" : "IP address");
    if (*n == EG_MAX_SANS)
        return eg_prov_usage_error("at most %d %s options", EG_MAX_SANS, opt);
    list[(*n)++] = v;
    return EG_EXIT_OK;
}

static bool ip_ok(const char *s)
{
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(s);

    ASN1_OCTET_STRING_free(ip);
    return ip != NULL;
}

static int tls_create_opt(void *ctx, int c, const char *arg)
{
    struct tls_create *a = ctx;

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
    case OPT_DNS:
        return add_san(a->dns, &a->ndns, arg, "--dns", dns_name_ok(arg));
    case OPT_IP:
        return add_san(a->ips, &a->nips, arg, "--ip", ip_ok(arg));
    case OPT_DAYS:
        return eg_prov_parse_days(arg, &a->days);
    case OPT_OUT:
        a->out = arg;
        return EG_EXIT_OK;
    case OPT_SUBJ:
        a->subject = arg;
        return EG_EXIT_OK;
    default:
        return EG_EXIT_USAGE;
    }
}

static int tls_create_parse(int argc, char **argv, struct tls_create *a)
{
    int rc = eg_prov_parse_args(argc, argv, tls_create_opts, &a->tok, tls_create_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help || (rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->label == NULL || !a->have_key || a->ca_label == NULL || a->days == 0 || a->out == NULL)
        return eg_prov_usage_error("--label, --key, --ca-label, --days and --out are required");
    if (a->ndns + a->nips == 0)
        return eg_prov_usage_error("give at least one --dns or --ip");
    return EG_EXIT_OK;
}

static void tls_made_clear(struct tls_made *m)
{
    OPENSSL_free(m->uri);
    OPENSSL_free(m->id);
    X509_free(m->cert);
    X509_free(m->ca);
    memset(m, 0, sizeof(*m));
}

/* --subject, or CN=<first name>. */
static int tls_subject(const struct tls_create *a, X509_NAME **out)
{
    const char *cn = a->ndns > 0 ? a->dns[0] : a->ips[0];
    X509_NAME *name;

    if (a->subject != NULL)
        return eg_prov_name_parse(a->subject, out);
    if ((name = X509_NAME_new()) == NULL ||
        X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn,
                                   -1, -1, 0) != 1) {
        X509_NAME_free(name);
        return eg_prov_fail_stack(EG_EXIT_DATAERR, "cannot use '%s' as the common name", cn);
    }
    *out = name;
    return EG_EXIT_OK;
}

/* The CA's certificate from the token: it must be its key's, current, and outlive the leaf. */
static int ca_cert(const struct tls_create *a, eg_p11_key *ca_key, X509 **out)
{
    EVP_PKEY *pub = eg_p11_key_public(ca_key);
    time_t end = time(NULL) + (time_t)a->days * 86400;
    X509 *ca = NULL;
    int rc;

    if ((rc = eg_prov_key_cert(ca_key, &ca)) != EG_EXIT_OK)
        goto out;
    if (ca == NULL) {
        rc = eg_prov_fail(EG_EXIT_UNAVAILABLE,
                          "the CA key %s has no certificate in the token; "
                          "run `ca create --self-signed` or `ca import`",
                          eg_p11_key_uri(ca_key));
    } else if (pub == NULL || EVP_PKEY_eq(X509_get0_pubkey(ca), pub) != 1) {
        rc = eg_prov_fail(EG_EXIT_DATAERR, "the certificate stored for %s is not for that key",
                          eg_p11_key_uri(ca_key));
    } else if (X509_cmp_time(X509_get0_notAfter(ca), &end) < 0) {
        rc = eg_prov_fail(EG_EXIT_DATAERR, "--days %d: the certificate would outlive its CA's",
                          a->days);
    } else {
        *out = ca;
        ca = NULL;
    }
out:
    X509_free(ca);
    EVP_PKEY_free(pub);
    return rc;
}

/* Issues the certificate for key, signed by the CA key in the token. */
static int tls_issue(const struct tls_create *a, const X509_NAME *subject, eg_p11_key *key,
                     eg_p11_key *ca_key, struct tls_made *m)
{
    eg_prov_cert_spec spec = {EG_PROFILE_TLS_SERVER,
                              subject,
                              NULL,
                              m->ca,
                              NULL,
                              a->days,
                              a->dns,
                              a->ndns,
                              a->ips,
                              a->nips};
    int rc;

    if ((spec.pubkey = eg_p11_key_public(key)) == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "no public key for %s", eg_p11_key_uri(key));
        goto out;
    }
    if ((rc = eg_prov_key_pkey(ca_key, &spec.signer)) != EG_EXIT_OK)
        goto out;
    rc = eg_prov_cert_build(&spec, &m->cert);
out:
    EVP_PKEY_free(spec.signer);
    EVP_PKEY_free(spec.pubkey);
    return rc;
}

/* Keeps the key's name and id for the messages; nothing secret. */
static int keep_key(eg_p11_key *key, struct tls_made *m)
{
    const uint8_t *id = eg_p11_key_id(key, &m->idlen);

    if ((m->uri = OPENSSL_strdup(eg_p11_key_uri(key))) == NULL ||
        (m->id = OPENSSL_memdup(id, m->idlen)) == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    return EG_EXIT_OK;
}

/*
 * The token phase: the TLS key pair and its certificate, stored under the
 * key's CKA_ID; when a step fails the key is destroyed again.
 */
static int tls_make(const struct tls_create *a, const X509_NAME *subject, struct tls_made *m)
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
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot generate the TLS key '%s'", a->label);
        goto out;
    }
    if ((rc = tls_issue(a, subject, key, ca_key, m)) != EG_EXIT_OK ||
        (rc = keep_key(key, m)) != EG_EXIT_OK ||
        (rc = eg_prov_store_cert(tok, m->cert, a->label, m->id, m->idlen)) != EG_EXIT_OK)
        eg_p11_key_destroy(key);
out:
    eg_p11_key_free(key);
    eg_p11_key_free(ca_key);
    eg_prov_token_close(tok);
    return rc;
}

static int write_chain(eg_prov_outfile *of, const struct tls_made *m)
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

static int tls_create_run(const struct tls_create *a)
{
    struct tls_made m = {NULL, NULL, 0, NULL, NULL};
    eg_prov_outfile *of = NULL;
    X509_NAME *subject = NULL;
    int rc;

    if ((rc = tls_subject(a, &subject)) != EG_EXIT_OK ||
        (rc = eg_prov_outfile_open(a->out, 0644, &of)) != EG_EXIT_OK ||
        (rc = tls_make(a, subject, &m)) != EG_EXIT_OK)
        goto out;
    if ((rc = write_chain(of, &m)) != EG_EXIT_OK)
        goto out;
    eg_prov_note("created TLS key %s", m.uri);
    eg_prov_note("wrote its certificate and the CA certificate to %s", a->out);
    rc = EG_EXIT_OK;
out:
    tls_made_clear(&m);
    eg_prov_outfile_free(of);
    X509_NAME_free(subject);
    return rc;
}

static const char tls_help[] = "usage: estgate-provision tls create ...\n"
                               "Run it with --help for its options.\n";

int eg_prov_cmd_tls(int argc, char **argv)
{
    struct tls_create a;
    int rc;

    eg_prov_report_prefix("estgate-provision tls create");
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        eg_prov_help(tls_help);
        return EG_EXIT_OK;
    }
    if (argc < 2 || strcmp(argv[1], "create") != 0)
        return eg_prov_usage_error("expected 'create'");
    memset(&a, 0, sizeof(a));
    if ((rc = tls_create_parse(argc - 1, argv + 1, &a)) != EG_EXIT_OK)
        return rc;
    if (a.help) {
        eg_prov_help(tls_create_help);
        return EG_EXIT_OK;
    }
    return tls_create_run(&a);
}
