/*
 * `tls create`: the appliance's TLS server key in the token and its
 * certificate, issued by the token CA through the provider.
 */
#include <string.h>

#include <openssl/x509v3.h>

#include "args.h"
#include "cert_build.h"
#include "leaf.h"
#include "report.h"

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

enum { OPT_DNS = EG_OPT_KEY_OWN, OPT_IP };

static const struct option tls_create_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"label", required_argument, NULL, EG_OPT_LABEL},
    {"key", required_argument, NULL, EG_OPT_KEY},
    {"ca-label", required_argument, NULL, EG_OPT_CA_LABEL},
    {"dns", required_argument, NULL, OPT_DNS},
    {"ip", required_argument, NULL, OPT_IP},
    {"days", required_argument, NULL, EG_OPT_DAYS},
    {"out", required_argument, NULL, EG_OPT_OUT},
    {"subject", required_argument, NULL, EG_OPT_SUBJECT},
    {NULL, 0, NULL, 0},
};

struct tls_create {
    eg_prov_token_opts tok;
    eg_prov_key_opts k;
    const char *dns[EG_MAX_SANS], *ips[EG_MAX_SANS];
    size_t ndns, nips;
    bool help;
};

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
    case OPT_DNS:
        return add_san(a->dns, &a->ndns, arg, "--dns", eg_prov_host_name_ok(arg, true));
    case OPT_IP:
        return add_san(a->ips, &a->nips, arg, "--ip", ip_ok(arg));
    default:
        return eg_prov_key_opt(&a->k, c, arg);
    }
}

static int tls_create_parse(int argc, char **argv, struct tls_create *a)
{
    int rc = eg_prov_parse_args(argc, argv, tls_create_opts, &a->tok, tls_create_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help || (rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->k.label == NULL || !a->k.have_key || a->k.ca_label == NULL || a->k.days == 0 ||
        a->k.out == NULL)
        return eg_prov_usage_error("--label, --key, --ca-label, --days and --out are required");
    if (a->ndns + a->nips == 0)
        return eg_prov_usage_error("give at least one --dns or --ip");
    return EG_EXIT_OK;
}

/* --subject, or CN=<first name>. */
static int tls_subject(const struct tls_create *a, X509_NAME **out)
{
    const char *cn = a->ndns > 0 ? a->dns[0] : a->ips[0];
    X509_NAME *name;

    if (a->k.subject != NULL)
        return eg_prov_name_parse(a->k.subject, out);
    if ((name = X509_NAME_new()) == NULL ||
        X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn,
                                   -1, -1, 0) != 1) {
        X509_NAME_free(name);
        return eg_prov_fail_stack(EG_EXIT_DATAERR, "cannot use '%s' as the common name", cn);
    }
    *out = name;
    return EG_EXIT_OK;
}

static int tls_create_run(const struct tls_create *a)
{
    eg_prov_leaf_req r = {
        .tok = &a->tok,
        .label = a->k.label,
        .ca_label = a->k.ca_label,
        .what = "TLS key",
        .key = a->k.spec,
        .cert = {.profile = EG_PROFILE_TLS_SERVER,
                 .days = a->k.days,
                 .dns = a->dns,
                 .ndns = a->ndns,
                 .ips = a->ips,
                 .nips = a->nips},
        .out = a->k.out,
    };
    X509_NAME *subject = NULL;
    int rc;

    if ((rc = tls_subject(a, &subject)) == EG_EXIT_OK) {
        r.cert.subject = subject;
        rc = eg_prov_leaf_create(&r);
    }
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
