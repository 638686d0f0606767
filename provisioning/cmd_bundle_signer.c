/*
 * `bundle signer create`: the bundle-signing key in the token and its
 * certificate from the token CA, as `tls create` makes the TLS key. The
 * certificate's only extended key usage is the bundle signer's
 * (ESTGATE_BUNDLE_SIGNER_EKU_OID), which devices require: the CA that issues
 * it issues certificates for other uses too, and none of those may sign a
 * bundle.
 */
#include <string.h>

#include "args.h"
#include "bundle.h"
#include "cert_build.h"
#include "leaf.h"
#include "report.h"

static const char signer_create_help[] =
    "usage: estgate-provision bundle signer create TOKEN-OPTIONS --label LABEL --key TYPE\n"
    "           --ca-label CA --subject NAME --days N --out FILE\n"
    "\n"
    "Creates the key that signs fleet trust bundles in the token (a token object,\n"
    "sensitive, never extractable) and its certificate (CA:FALSE, digitalSignature,\n"
    "and the bundle signer's extended key usage, which devices require of a bundle's\n"
    "signer: " ESTGATE_BUNDLE_SIGNER_EKU_OID "), signed in the token by the\n"
    "CA key CA, whose certificate must be in the token. The certificate is stored in\n"
    "the token under the key's CKA_ID, where `bundle create` finds it, and written\n"
    "to FILE followed by the CA certificate. Devices trust either certificate to\n"
    "verify bundles.\n"
    "\n"
    "  --label LABEL      CKA_LABEL of the key pair and its certificate (must be unused)\n"
    "  --key TYPE         ec-p256, ec-p384, rsa2048, rsa3072 or rsa4096\n"
    "  --ca-label CA      the issuing CA key in the token\n"
    "  --subject NAME     RFC 4514 subject, e.g. \"CN=Fleet bundle signer,O=Example\"\n"
    "  --days N           validity in days; must end before the CA certificate does\n"
    "  --out FILE         the certificate, then the CA certificate (PEM)\n"
    "\n" EG_PROV_TOKEN_HELP;

static const struct option signer_create_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"label", required_argument, NULL, EG_OPT_LABEL},
    {"key", required_argument, NULL, EG_OPT_KEY},
    {"ca-label", required_argument, NULL, EG_OPT_CA_LABEL},
    {"subject", required_argument, NULL, EG_OPT_SUBJECT},
    {"days", required_argument, NULL, EG_OPT_DAYS},
    {"out", required_argument, NULL, EG_OPT_OUT},
    {NULL, 0, NULL, 0},
};

struct signer_create {
    eg_prov_token_opts tok;
    eg_prov_key_opts k;
    bool help;
};

static int signer_create_opt(void *ctx, int c, const char *arg)
{
    return eg_prov_key_opt(&((struct signer_create *)ctx)->k, c, arg);
}

static int signer_create_parse(int argc, char **argv, struct signer_create *a)
{
    int rc =
        eg_prov_parse_args(argc, argv, signer_create_opts, &a->tok, signer_create_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help || (rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->k.label == NULL || !a->k.have_key || a->k.ca_label == NULL || a->k.subject == NULL ||
        a->k.days == 0 || a->k.out == NULL)
        return eg_prov_usage_error("--label, --key, --ca-label, --subject, --days and --out "
                                   "are required");
    return EG_EXIT_OK;
}

static int signer_create_run(const struct signer_create *a)
{
    eg_prov_leaf_req r = {
        .tok = &a->tok,
        .label = a->k.label,
        .ca_label = a->k.ca_label,
        .what = "bundle signing key",
        .key = a->k.spec,
        .cert = {.profile = EG_PROFILE_SIGNER, .days = a->k.days},
        .out = a->k.out,
    };
    X509_NAME *subject = NULL;
    int rc;

    if ((rc = eg_prov_name_parse(a->k.subject, &subject)) == EG_EXIT_OK) {
        r.cert.subject = subject;
        rc = eg_prov_leaf_create(&r);
    }
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
