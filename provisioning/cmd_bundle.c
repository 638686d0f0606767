/*
 * `bundle create`: a fleet trust bundle from trust anchors, its manifest
 * signed by a bundle-signing key in the token. `bundle verify` is in
 * cmd_bundle_verify.c, `bundle signer create` in cmd_bundle_signer.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "args.h"
#include "bundle.h"
#include "chain.h"
#include "report.h"
#include "token.h"

#define EG_MAX_ANCHOR_ARGS 64

static const char bundle_create_help[] =
    "usage: estgate-provision bundle create TOKEN-OPTIONS --signer URI --anchor PATH...\n"
    "           --bundle-version N --valid-days N --out-dir DIR [--trust FILE] [--chain FILE]\n"
    "\n"
    "Builds a fleet trust bundle in DIR: trust-bundle.pem (the anchors, PEM),\n"
    "trust-bundle.p7b (the same, PKCS#7 certs-only, DER) and manifest.cms (a\n"
    "CMS SignedData holding the manifest: version, issue and expiry times and\n"
    "the SHA-256 of every anchor and both files), signed in the token by the\n"
    "bundle-signing key URI with its certificate (and --chain's) included. Anchors\n"
    "must be CA certificates (basicConstraints CA:TRUE), each given once. DIR is\n"
    "created when missing and must not already hold a bundle.\n"
    "\n"
    "  --signer URI         the bundle-signing key (pkcs11: URI, see `list`); its\n"
    "                       certificate must be in the token (`bundle signer create`)\n"
    "  --anchor PATH        a PEM or DER certificate file, or a folder of them\n"
    "                       (repeatable; folders are not descended into)\n"
    "  --bundle-version N   this bundle's version, a positive integer; devices refuse\n"
    "                       a bundle not newer than the one they have\n"
    "  --valid-days N       the bundle expires N days from now (1 to 36525); no later\n"
    "                       than the signer's certificate\n"
    "  --out-dir DIR        where to write the bundle (created, with missing parents)\n"
    "  --trust FILE         PEM: what devices trust (the file `bundle verify --trust`\n"
    "                       takes); the bundle is written only if such a device would\n"
    "                       accept it. Without it, the check trusts the signer's own\n"
    "                       certificate, which does not show that devices reach it\n"
    "  --chain FILE         PEM: CA certificates that link the signer's CA to what\n"
    "                       devices trust, carried in manifest.cms: after a CA key\n"
    "                       rollover the --out of `ca renew --new-label`, for a CA an\n"
    "                       external root certified the profile's ca_chain. Self-signed\n"
    "                       roots in it are left out\n"
    "\n" EG_PROV_TOKEN_HELP;

enum {
    OPT_SIGNER = EG_OPT_OWN,
    OPT_ANCHOR,
    OPT_VERSION,
    OPT_VALID_DAYS,
    OPT_OUT_DIR,
    OPT_TRUST,
    OPT_CHAIN
};

static const struct option bundle_create_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"signer", required_argument, NULL, OPT_SIGNER},
    {"anchor", required_argument, NULL, OPT_ANCHOR},
    {"bundle-version", required_argument, NULL, OPT_VERSION},
    {"valid-days", required_argument, NULL, OPT_VALID_DAYS},
    {"out-dir", required_argument, NULL, OPT_OUT_DIR},
    {"trust", required_argument, NULL, OPT_TRUST},
    {"chain", required_argument, NULL, OPT_CHAIN},
    {NULL, 0, NULL, 0},
};

struct bundle_create {
    eg_prov_token_opts tok;
    const char *signer, *out_dir, *trust, *chain;
    const char *anchors[EG_MAX_ANCHOR_ARGS];
    size_t nanchors;
    uint64_t version;
    int days;
    bool help;
};

int eg_bundle_parse_version(const char *opt, const char *s, bool zero_ok, uint64_t *out)
{
    uint64_t v = 0;
    size_t i, n = strlen(s);

    for (i = 0; i < n && n <= 18 && s[i] >= '0' && s[i] <= '9'; i++)
        v = v * 10 + (uint64_t)(s[i] - '0');
    if (n == 0 || i != n || (n > 1 && s[0] == '0') || (v == 0 && !zero_ok))
        return eg_prov_usage_error("%s %s: give a %s integer of at most 18 digits", opt, s,
                                   zero_ok ? "non-negative" : "positive");
    *out = v;
    return EG_EXIT_OK;
}

static int bundle_create_opt(void *ctx, int c, const char *arg)
{
    struct bundle_create *a = ctx;
    long v;
    char *end;

    switch (c) {
    case OPT_SIGNER:
        a->signer = arg;
        return EG_EXIT_OK;
    case OPT_ANCHOR:
        if (a->nanchors == EG_MAX_ANCHOR_ARGS)
            return eg_prov_usage_error("at most %d --anchor options; use folders",
                                       EG_MAX_ANCHOR_ARGS);
        a->anchors[a->nanchors++] = arg;
        return EG_EXIT_OK;
    case OPT_VERSION:
        return eg_bundle_parse_version("--bundle-version", arg, false, &a->version);
    case OPT_VALID_DAYS:
        errno = 0;
        v = strtol(arg, &end, 10);
        if (errno != 0 || end == arg || *end != 0 || v < 1 || v > 36525)
            return eg_prov_usage_error("--valid-days %s: give a number of days from 1 to 36525",
                                       arg);
        a->days = (int)v;
        return EG_EXIT_OK;
    case OPT_OUT_DIR:
        a->out_dir = arg;
        return EG_EXIT_OK;
    case OPT_TRUST:
        a->trust = arg;
        return EG_EXIT_OK;
    case OPT_CHAIN:
        a->chain = arg;
        return EG_EXIT_OK;
    default:
        return EG_EXIT_USAGE;
    }
}

static int bundle_create_parse(int argc, char **argv, struct bundle_create *a)
{
    int rc =
        eg_prov_parse_args(argc, argv, bundle_create_opts, &a->tok, bundle_create_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help || (rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->signer == NULL || a->nanchors == 0 || a->version == 0 || a->days == 0 ||
        a->out_dir == NULL)
        return eg_prov_usage_error(
            "--signer, --anchor, --bundle-version, --valid-days and --out-dir are required");
    return EG_EXIT_OK;
}

static int gather_anchors(const struct bundle_create *a, eg_bundle_anchors **out)
{
    eg_bundle_anchors *anchors = eg_bundle_anchors_new();
    size_t i;
    int rc = EG_EXIT_OK;

    if (anchors == NULL)
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    for (i = 0; i < a->nanchors && rc == EG_EXIT_OK; i++)
        rc = eg_bundle_anchors_add(anchors, a->anchors[i]);
    if (rc == EG_EXIT_OK) {
        *out = anchors;
        anchors = NULL;
    }
    eg_bundle_anchors_free(anchors);
    return rc;
}

/*
 * The CA certificates of --chain to carry beside the signer's. Self-signed
 * roots are left out: a device either holds one already or cannot use it,
 * and an untrusted root with the signer's issuer's name and key can lead a
 * verifier's path off the link certificate that reaches the device's root.
 */
static int read_chain(const char *path, STACK_OF(X509) * *out)
{
    STACK_OF(X509) *certs = NULL, *chain = sk_X509_new_null();
    char name[256];
    int i, rc;

    if (chain == NULL || (rc = eg_prov_read_certs(path, &certs)) != EG_EXIT_OK) {
        rc = chain == NULL ? eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory") : rc;
        goto out;
    }
    for (i = 0; i < sk_X509_num(certs); i++) {
        X509 *x = sk_X509_value(certs, i);

        if (X509_check_ca(x) == 0) {
            X509_NAME_oneline(X509_get_subject_name(x), name, sizeof(name));
            rc = eg_prov_fail(EG_EXIT_DATAERR,
                              "--chain %s: certificate %d (%s) is not a CA certificate; give the "
                              "CA certificates between the signer's CA and what devices trust",
                              path, i + 1, name);
            goto out;
        }
        if (X509_self_signed(x, 0) == 1)
            continue;
        if (!X509_up_ref(x) || sk_X509_push(chain, x) <= 0) {
            rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
            goto out;
        }
    }
    *out = chain;
    chain = NULL;
    rc = EG_EXIT_OK;
out:
    sk_X509_pop_free(certs, X509_free);
    sk_X509_pop_free(chain, X509_free);
    return rc;
}

/* Whether the certificate carries the bundle signer's EKU, which devices require. */
static bool is_bundle_signer(X509 *cert)
{
    ASN1_OBJECT *want = OBJ_txt2obj(ESTGATE_BUNDLE_SIGNER_EKU_OID, 1);
    EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(cert, NID_ext_key_usage, NULL, NULL);
    bool found = false;
    int i;

    for (i = 0; want != NULL && eku != NULL && i < sk_ASN1_OBJECT_num(eku) && !found; i++)
        found = OBJ_cmp(sk_ASN1_OBJECT_value(eku, i), want) == 0;
    EXTENDED_KEY_USAGE_free(eku);
    ASN1_OBJECT_free(want);
    return found;
}

/*
 * A signer certificate is not renewed in place (a device pinning it would lose
 * it); a new signer under a new label is what gives a later end.
 */
static int outlives_signer(eg_p11_key *key, X509 *cert)
{
    char end[32] = "?";
    struct tm tm;

    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1)
        strftime(end, sizeof(end), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return eg_prov_fail(EG_EXIT_DATAERR,
                        "the bundle would outlive the certificate of %s, which ends %s. Give "
                        "fewer --valid-days, or make a new signer with `estgate-provision bundle "
                        "signer create --label NEW-LABEL --ca-label CA ...` and sign with it "
                        "(devices that pin the signer's certificate need the new one)",
                        eg_p11_key_uri(key), end);
}

/* The signer's certificate from the token: its key's, valid now, and outliving the bundle. */
static int signer_cert(eg_p11_key *key, const eg_bundle_spec *s, X509 **out)
{
    EVP_PKEY *pub = eg_p11_key_public(key);
    time_t now = (time_t)s->issued_at, end = (time_t)s->not_after;
    X509 *cert = NULL;
    int rc;

    if ((rc = eg_prov_key_cert(key, &cert)) != EG_EXIT_OK)
        goto out;
    if (cert == NULL)
        rc = eg_prov_fail(EG_EXIT_UNAVAILABLE,
                          "the key %s has no certificate in the token; make the bundle signer "
                          "with `estgate-provision bundle signer create`",
                          eg_p11_key_uri(key));
    else if (pub == NULL || EVP_PKEY_eq(X509_get0_pubkey(cert), pub) != 1)
        rc = eg_prov_fail(EG_EXIT_DATAERR, "the certificate stored for %s is not for that key",
                          eg_p11_key_uri(key));
    else if (!is_bundle_signer(cert))
        rc = eg_prov_fail(EG_EXIT_DATAERR,
                          "the certificate stored for %s is not a bundle signer's: it lacks the "
                          "bundle-signer extended key usage (%s) devices require, as does every "
                          "signer made before bundle signers had one. Make a signer with "
                          "`estgate-provision bundle signer create --label NEW-LABEL ...` and "
                          "sign with it",
                          eg_p11_key_uri(key), ESTGATE_BUNDLE_SIGNER_EKU_OID);
    else if (X509_cmp_time(X509_get0_notBefore(cert), &now) > 0)
        rc = eg_prov_fail(EG_EXIT_DATAERR, "the signer's certificate is not valid yet");
    else if (X509_cmp_time(X509_get0_notAfter(cert), &end) < 0)
        rc = outlives_signer(key, cert);
    if (rc == EG_EXIT_OK) {
        *out = cert;
        cert = NULL;
    }
out:
    X509_free(cert);
    EVP_PKEY_free(pub);
    return rc;
}

/* The token phase: the signing key, its certificate, the signed bundle. */
static int bundle_sign(const struct bundle_create *a, eg_bundle_spec *s, eg_bundle_files *f)
{
    eg_p11_key *key = NULL;
    eg_token *tok = NULL;
    int rc;

    if ((rc = eg_prov_token_open(&a->tok, &tok)) != EG_EXIT_OK)
        goto out;
    if (eg_p11_key_open(tok, a->signer, &key) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_UNAVAILABLE, "cannot open the signing key %s", a->signer);
        goto out;
    }
    if ((rc = signer_cert(key, s, &s->signer_cert)) != EG_EXIT_OK ||
        (rc = eg_prov_key_pkey(key, &s->signer_key)) != EG_EXIT_OK)
        goto out;
    rc = eg_bundle_build(s, f);
out:
    EVP_PKEY_free(s->signer_key);
    s->signer_key = NULL;
    eg_p11_key_free(key);
    eg_prov_token_close(tok);
    return rc;
}

static int bundle_create_run(const struct bundle_create *a)
{
    eg_bundle_files f = {NULL, NULL, NULL};
    eg_bundle_spec s = {.version = a->version, .trust_file = a->trust};
    eg_bundle_anchors *anchors = NULL;
    char end[21] = "?";
    int rc;

    /* Everything that can fail without the token fails before it is opened. */
    if ((rc = gather_anchors(a, &anchors)) != EG_EXIT_OK ||
        (a->trust != NULL && (rc = eg_prov_read_certs(a->trust, &s.trust)) != EG_EXIT_OK) ||
        (a->chain != NULL && (rc = read_chain(a->chain, &s.chain)) != EG_EXIT_OK))
        goto out;
    s.anchors = eg_bundle_anchors_certs(anchors);
    s.issued_at = (int64_t)time(NULL);
    s.not_after = s.issued_at + (int64_t)a->days * 86400;
    if ((rc = bundle_sign(a, &s, &f)) != EG_EXIT_OK || (rc = eg_bundle_write(a->out_dir, &f)) != 0)
        goto out;
    estgate_bundle_time_format(s.not_after, end);
    eg_prov_note("wrote bundle version %llu with %d trust anchors to %s, valid until %s",
                 (unsigned long long)a->version, sk_X509_num(s.anchors), a->out_dir, end);
    if (a->trust != NULL)
        eg_prov_note("devices that trust %s accept it", a->trust);
    else
        eg_prov_note("checked against the signer's own certificate only; `bundle verify --trust "
                     "FILE`, with the file devices hold, checks that they accept it (or give "
                     "--trust FILE here next time)");
    rc = EG_EXIT_OK;
out:
    sk_X509_pop_free(s.trust, X509_free);
    sk_X509_pop_free(s.chain, X509_free);
    X509_free(s.signer_cert);
    eg_bundle_files_clear(&f);
    eg_bundle_anchors_free(anchors);
    return rc;
}

static int bundle_create(int argc, char **argv)
{
    struct bundle_create a;
    int rc;

    memset(&a, 0, sizeof(a));
    eg_prov_report_prefix("estgate-provision bundle create");
    if ((rc = bundle_create_parse(argc, argv, &a)) != EG_EXIT_OK)
        return rc;
    if (a.help) {
        eg_prov_help(bundle_create_help);
        return EG_EXIT_OK;
    }
    return bundle_create_run(&a);
}

static const char bundle_help[] =
    "usage: estgate-provision bundle signer create ...  a bundle-signing key and certificate\n"
    "       estgate-provision bundle create ...         a signed fleet trust bundle\n"
    "       estgate-provision bundle verify ...         check a bundle as a device would\n"
    "       estgate-provision bundle install ...        make it a profile's client trust\n"
    "Run any of them with --help for its options.\n";

int eg_prov_cmd_bundle(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "create") == 0)
        return bundle_create(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "verify") == 0)
        return eg_prov_cmd_bundle_verify(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "signer") == 0)
        return eg_prov_cmd_bundle_signer(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        eg_prov_help(bundle_help);
        return EG_EXIT_OK;
    }
    if (argc >= 2 && strcmp(argv[1], "install") == 0)
        return eg_prov_cmd_bundle_install(argc - 1, argv + 1);
    eg_prov_report_prefix("estgate-provision bundle");
    return eg_prov_usage_error("expected 'create', 'verify', 'install' or 'signer create'");
}
