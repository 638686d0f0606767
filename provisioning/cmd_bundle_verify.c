/*
 * `bundle verify`: checks a bundle folder exactly as a device does, with the
 * device library, and says what it verified. Needs no token.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/x509.h>

#include "args.h"
#include "bundle.h"
#include "chain.h"
#include "report.h"

static const char bundle_verify_help[] =
    "usage: estgate-provision bundle verify --dir DIR --trust FILE [--installed-version N]\n"
    "           [--at TIME]\n"
    "\n"
    "Verifies the bundle in DIR as a device does (the estgate_bundle library):\n"
    "the manifest's CMS signature by a signer whose certificate chains to FILE,\n"
    "the SHA-256 of both bundle files and of every anchor, the validity period,\n"
    "and that the version is newer than the installed one. Prints what it\n"
    "verified; each refusal has its own exit code (below).\n"
    "\n"
    "  --dir DIR                the bundle folder (from `bundle create`)\n"
    "  --trust FILE             PEM: the bundle signer's certificate or the CA that issued it\n"
    "  --installed-version N    the version the device has (default 0: none)\n"
    "  --at TIME                check as of TIME (YYYY-MM-DDTHH:MM:SSZ) instead of now\n";

enum { OPT_DIR = EG_OPT_OWN, OPT_TRUST, OPT_INSTALLED, OPT_AT };

static const struct option bundle_verify_opts[] = {
    {"dir", required_argument, NULL, OPT_DIR},
    {"trust", required_argument, NULL, OPT_TRUST},
    {"installed-version", required_argument, NULL, OPT_INSTALLED},
    {"at", required_argument, NULL, OPT_AT},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

struct bundle_verify {
    const char *dir, *trust;
    uint64_t installed;
    int64_t at;
    bool have_at, help;
};

#define EG_BUNDLE_EXIT_ROW(name, value, text) {value, text},
static const struct {
    int code;
    const char *text;
} bundle_exit_rows[] = {EG_BUNDLE_EXIT_CODES(EG_BUNDLE_EXIT_ROW)};
#undef EG_BUNDLE_EXIT_ROW

void eg_bundle_print_exit_codes(void)
{
    size_t i;

    eg_prov_print_exit_codes();
    for (i = 0; i < sizeof(bundle_exit_rows) / sizeof(bundle_exit_rows[0]); i++)
        printf("  %3d  %s\n", bundle_exit_rows[i].code, bundle_exit_rows[i].text);
}

static int bundle_verify_opt(void *ctx, int c, const char *arg)
{
    struct bundle_verify *a = ctx;

    switch (c) {
    case OPT_DIR:
        a->dir = arg;
        return EG_EXIT_OK;
    case OPT_TRUST:
        a->trust = arg;
        return EG_EXIT_OK;
    case OPT_INSTALLED:
        return eg_bundle_parse_version("--installed-version", arg, true, &a->installed);
    case OPT_AT:
        if (estgate_bundle_time_parse(arg, strlen(arg), &a->at) != 0)
            return eg_prov_usage_error("--at %s: give a UTC time as YYYY-MM-DDTHH:MM:SSZ", arg);
        a->have_at = true;
        return EG_EXIT_OK;
    default:
        return EG_EXIT_USAGE;
    }
}

void eg_bundle_checked_clear(eg_bundle_checked *c)
{
    if (c == NULL)
        return;
    estgate_bundle_verified_free(c->v);
    free(c->manifest);
    free(c->pem);
    free(c->p7b);
    memset(c, 0, sizeof(*c));
}

static int read_bundle(const char *dir, eg_bundle_checked *r)
{
    int rc;

    if ((rc = eg_bundle_read_file(dir, ESTGATE_BUNDLE_MANIFEST_FILE, &r->manifest,
                                  &r->in.manifest_cms_len)) != EG_EXIT_OK ||
        (rc = eg_bundle_read_file(dir, ESTGATE_BUNDLE_PEM_FILE, &r->pem, &r->in.pem_len)) !=
            EG_EXIT_OK ||
        (rc = eg_bundle_read_file(dir, ESTGATE_BUNDLE_P7B_FILE, &r->p7b, &r->in.p7b_len)) !=
            EG_EXIT_OK)
        return rc;
    r->in.manifest_cms = r->manifest;
    r->in.pem = r->pem;
    r->in.p7b = r->p7b;
    return EG_EXIT_OK;
}

static int status_exit(estgate_bundle_status st)
{
    switch (st) {
    case ESTGATE_BUNDLE_OK:
        return EG_EXIT_OK;
    case ESTGATE_BUNDLE_MALFORMED:
        return EG_EXIT_DATAERR;
    case ESTGATE_BUNDLE_UNTRUSTED_SIGNER:
        return EG_EXIT_BUNDLE_SIGNER;
    case ESTGATE_BUNDLE_TAMPERED:
        return EG_EXIT_BUNDLE_TAMPERED;
    case ESTGATE_BUNDLE_EXPIRED:
        return EG_EXIT_BUNDLE_EXPIRED;
    case ESTGATE_BUNDLE_NOT_YET_VALID:
        return EG_EXIT_BUNDLE_NOT_YET_VALID;
    case ESTGATE_BUNDLE_ROLLBACK:
        return EG_EXIT_BUNDLE_ROLLBACK;
    case ESTGATE_BUNDLE_INTERNAL:
        break;
    }
    return EG_EXIT_SOFTWARE;
}

static void print_verified(const struct bundle_verify *a, const estgate_bundle_verified *v)
{
    const estgate_bundle_manifest *m = &v->manifest;
    char issued[21] = "?", until[21] = "?", name[256];
    int i, j;

    estgate_bundle_time_format(m->issued_at, issued);
    estgate_bundle_time_format(m->not_after, until);
    X509_NAME_oneline(X509_get_subject_name(v->signer), name, sizeof(name));
    eg_prov_note("bundle version %llu in %s verified", (unsigned long long)m->version, a->dir);
    printf("  signed by %s, which chains to %s\n", name, a->trust);
    printf("  issued at %s, valid until %s\n", issued, until);
    printf("  newer than the installed version %llu\n", (unsigned long long)a->installed);
    printf("  %s and %s match the manifest; %zu trust anchors:\n", ESTGATE_BUNDLE_PEM_FILE,
           ESTGATE_BUNDLE_P7B_FILE, m->anchor_count);
    for (i = 0; i < sk_X509_num(v->anchors); i++) {
        X509_NAME_oneline(X509_get_subject_name(sk_X509_value(v->anchors, i)), name, sizeof(name));
        printf("    sha256:");
        for (j = 0; j < 32; j++)
            printf("%02x", m->anchor_sha256[i][j]);
        printf(" %s\n", name);
    }
}

int eg_bundle_check(const char *dir, const char *trust, uint64_t installed, time_t at,
                    eg_bundle_checked *out)
{
    estgate_bundle_policy pol = {NULL, at, installed};
    estgate_bundle_status st;
    char why[512] = "";
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = eg_prov_read_certs(trust, &pol.trusted)) != EG_EXIT_OK ||
        (rc = read_bundle(dir, out)) != EG_EXIT_OK)
        goto out;
    if ((st = estgate_bundle_verify(&out->in, &pol, &out->v, why, sizeof(why))) !=
        ESTGATE_BUNDLE_OK) {
        rc = eg_prov_fail(status_exit(st), "refused (%s): %s", estgate_bundle_status_name(st), why);
        goto out;
    }
    rc = EG_EXIT_OK;
out:
    sk_X509_pop_free(pol.trusted, X509_free);
    if (rc != EG_EXIT_OK)
        eg_bundle_checked_clear(out);
    return rc;
}

static int bundle_verify_run(const struct bundle_verify *a)
{
    eg_bundle_checked c;
    int rc = eg_bundle_check(a->dir, a->trust, a->installed,
                             a->have_at ? (time_t)a->at : time(NULL), &c);

    if (rc == EG_EXIT_OK)
        print_verified(a, c.v);
    eg_bundle_checked_clear(&c);
    return rc;
}

int eg_prov_cmd_bundle_verify(int argc, char **argv)
{
    struct bundle_verify a;
    int rc;

    memset(&a, 0, sizeof(a));
    eg_prov_report_prefix("estgate-provision bundle verify");
    rc = eg_prov_parse_args(argc, argv, bundle_verify_opts, NULL, bundle_verify_opt, &a, &a.help);
    if (rc != EG_EXIT_OK)
        return rc;
    if (a.help) {
        fputs(bundle_verify_help, stdout);
        eg_bundle_print_exit_codes();
        return EG_EXIT_OK;
    }
    if (a.dir == NULL || a.trust == NULL)
        return eg_prov_usage_error("--dir and --trust are required");
    return bundle_verify_run(&a);
}
