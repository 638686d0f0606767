/*
 * The bootstrap certificate: subject serialNumber=<serial>, CN=<model>-<serial>,
 * the operator's SAN templates filled in, clientAuth, and the serial number
 * and validity recorded in the intent, so a certificate signed again after a
 * crash has the same content as the one that was lost.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/x509v3.h>

#include "args.h"
#include "bootstrap.h"
#include "cert_build.h"
#include "provision.h"
#include "report.h"

#define EG_BS_SAN_MAX 256

/* Fills {serial} and {model}; false when the result does not fit or a brace is left. */
static bool san_fill(const char *t, const char *serial, const char *model, char *out)
{
    size_t n = 0, k;
    const char *v;

    while (*t != 0) {
        if (strncmp(t, "{serial}", 8) == 0 || strncmp(t, "{model}", 7) == 0) {
            v = t[1] == 's' ? serial : model;
            k = strlen(v);
            t += t[1] == 's' ? 8 : 7;
        } else if (*t == '{' || *t == '}') {
            return false;
        } else {
            v = t++;
            k = 1;
        }
        if (n + k >= EG_BS_SAN_MAX)
            return false;
        memcpy(out + n, v, k);
        n += k;
    }
    out[n] = 0;
    return true;
}

/* A URI: a scheme, a colon, then printable ASCII without spaces. */
static bool uri_ok(const char *s)
{
    const char *c = strchr(s, ':');

    if (c == NULL || c == s || c[1] == 0 || !isalpha((unsigned char)s[0]))
        return false;
    for (; *s != 0; s++) {
        if (*s <= ' ' || *s >= 0x7f || *s == '<' || *s == '>' || *s == '"')
            return false;
    }
    return true;
}

int eg_bs_san_template_check(const char *t)
{
    char v[EG_BS_SAN_MAX];

    /* A sample serial and model must give a valid name of the type. */
    if (strncmp(t, "dns:", 4) == 0 && san_fill(t + 4, "SN0001", "model1", v) &&
        eg_prov_host_name_ok(v, false))
        return EG_EXIT_OK;
    if (strncmp(t, "uri:", 4) == 0 && san_fill(t + 4, "SN0001", "model1", v) && uri_ok(v))
        return EG_EXIT_OK;
    return eg_prov_usage_error("--san-template %s: use dns:NAME or uri:URI with {serial} and "
                               "{model}, e.g. dns:{serial}.devices.example.com",
                               t);
}

bool eg_bs_names_ok(const eg_bs_issuer *is, const eg_bs_row *row, char *why)
{
    char v[EG_BS_SAN_MAX];
    size_t i;

    for (i = 0; i < is->nsans; i++) {
        bool dns = strncmp(is->sans[i], "dns:", 4) == 0;

        if (!san_fill(is->sans[i] + 4, row->serial, row->model, v) ||
            !(dns ? eg_prov_host_name_ok(v, false) : uri_ok(v))) {
            snprintf(why, EG_BS_WHY_MAX, "subjectAltName %s gives no valid %s for this row",
                     is->sans[i], dns ? "DNS name" : "URI");
            return false;
        }
    }
    return true;
}

static int push_name(GENERAL_NAMES *gens, int type, const char *s)
{
    ASN1_IA5STRING *a = ASN1_IA5STRING_new();
    GENERAL_NAME *g = NULL;

    if (a == NULL || ASN1_STRING_set(a, s, -1) != 1 || (g = GENERAL_NAME_new()) == NULL) {
        ASN1_IA5STRING_free(a);
        return -1;
    }
    GENERAL_NAME_set0_value(g, type, a);
    if (sk_GENERAL_NAME_push(gens, g) <= 0) {
        GENERAL_NAME_free(g);
        return -1;
    }
    return 0;
}

/* EG_EXIT_DATAERR with why when this row's values do not make a valid name. */
static int add_sans(X509 *x, const eg_bs_issuer *is, const eg_bs_row *row, char *why)
{
    GENERAL_NAMES *gens = GENERAL_NAMES_new();
    char v[EG_BS_SAN_MAX];
    size_t i;
    int rc = EG_EXIT_SOFTWARE;

    for (i = 0; gens != NULL && i < is->nsans; i++) {
        bool dns = strncmp(is->sans[i], "dns:", 4) == 0;

        if (!san_fill(is->sans[i] + 4, row->serial, row->model, v) ||
            !(dns ? eg_prov_host_name_ok(v, false) : uri_ok(v))) {
            snprintf(why, EG_BS_WHY_MAX, "subjectAltName '%s' is not a valid %s", is->sans[i],
                     dns ? "DNS name for this serial and model" : "URI");
            rc = EG_EXIT_DATAERR;
            goto out;
        }
        if (push_name(gens, dns ? GEN_DNS : GEN_URI, v) != 0)
            goto out;
    }
    if (gens == NULL ||
        (is->nsans > 0 && X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, 0) != 1))
        goto out;
    rc = EG_EXIT_OK;
out:
    GENERAL_NAMES_free(gens);
    return rc;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1) == 1;

    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

static int add_extensions(X509 *x, const eg_bs_issuer *is, EVP_PKEY *pub)
{
    X509V3_CTX ctx;
    /* An RSA device key may also be used for key transport (TLS 1.2 RSA key exchange). */
    const char *ku = EVP_PKEY_is_a(pub, "RSA") ? "critical,digitalSignature,keyEncipherment"
                                               : "critical,digitalSignature";

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, is->ca, x, NULL, NULL, 0);
    if (add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") ||
        add_ext(x, &ctx, NID_key_usage, ku) || add_ext(x, &ctx, NID_ext_key_usage, "clientAuth") ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") ||
        add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always"))
        return -1;
    return 0;
}

static int subject(X509 *x, const eg_bs_row *row)
{
    X509_NAME *n = X509_get_subject_name(x);
    char cn[2 * EG_BS_NAME_MAX + 2];

    snprintf(cn, sizeof(cn), "%s-%s", row->model, row->serial);
    return X509_NAME_add_entry_by_NID(n, NID_serialNumber, MBSTRING_ASC,
                                      (const unsigned char *)row->serial, -1, -1, 0) == 1 &&
                   X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8,
                                              (const unsigned char *)cn, -1, -1, 0) == 1
               ? 0
               : -1;
}

static int fill(X509 *x, const eg_bs_issuer *is, const eg_bs_row *row, EVP_PKEY *pub,
                const eg_bs_record *rec)
{
    BIGNUM *bn = BN_bin2bn(rec->cert_serial, sizeof(rec->cert_serial), NULL);
    int ok;

    ok = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
         X509_set_version(x, X509_VERSION_3) == 1 && subject(x, row) == 0 &&
         X509_set_issuer_name(x, X509_get_subject_name(is->ca)) == 1 &&
         ASN1_TIME_set(X509_getm_notBefore(x), (time_t)rec->not_before) != NULL &&
         ASN1_TIME_set(X509_getm_notAfter(x), (time_t)rec->not_after) != NULL &&
         X509_set_pubkey(x, pub) == 1 && add_extensions(x, is, pub) == 0;
    BN_free(bn);
    return ok ? 0 : -1;
}

/* Signs in the token through the provider; the signature is checked before anyone sees it. */
static int sign(X509 *x, const eg_bs_issuer *is)
{
    EVP_PKEY *capub = X509_get0_pubkey(is->ca);
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int ok;

    ok = mctx != NULL &&
         EVP_DigestSignInit_ex(mctx, NULL, eg_prov_digest_for(capub), NULL, NULL, is->key, NULL) ==
             1 &&
         X509_sign_ctx(x, mctx) > 0;
    EVP_MD_CTX_free(mctx);
    if (!ok)
        return eg_prov_fail_stack(EG_EXIT_UNAVAILABLE, "signing in the token failed");
    if (X509_verify(x, capub) != 1)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "the token's signature does not verify");
    return EG_EXIT_OK;
}

int eg_bs_cert_build(const eg_bs_issuer *is, const eg_bs_row *row, EVP_PKEY *pub,
                     const eg_bs_record *rec, X509 **out, char *why)
{
    X509 *x = X509_new();
    int rc;

    if (x == NULL || fill(x, is, row, pub, rec) != 0) {
        rc =
            eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot build the certificate of %s", row->serial);
        goto out;
    }
    if ((rc = add_sans(x, is, row, why)) != EG_EXIT_OK) {
        if (rc != EG_EXIT_DATAERR)
            rc = eg_prov_fail_stack(rc, "cannot add the names of %s", row->serial);
        goto out;
    }
    if ((rc = sign(x, is)) != EG_EXIT_OK)
        goto out;
    *out = x;
    x = NULL;
out:
    X509_free(x);
    return rc;
}
