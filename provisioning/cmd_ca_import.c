/*
 * `ca import`: the certificate an external root issued for the token's CA
 * key, and the chain above it, into the token. A certificate whose public key
 * is not the token key's is refused: it could never be used to sign.
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "args.h"
#include "chain.h"
#include "report.h"
#include "token.h"

static const char ca_import_help[] =
    "usage: estgate-provision ca import TOKEN-OPTIONS --label LABEL --chain FILE\n"
    "\n"
    "Imports the CA certificate for the token key LABEL, and the chain above it,\n"
    "into the token. FILE holds PEM certificates: the CA certificate (its public\n"
    "key must be the token key's, or the import is refused) and its issuers, in\n"
    "any order. The chain is verified up to its last certificate. The CA\n"
    "certificate is stored with the key's CKA_ID and LABEL, the issuers as\n"
    "LABEL-issuer-1, -2, ... Certificates already in the token are skipped.\n"
    "\n"
    "When the key already has a certificate, a later one (its notAfter after the\n"
    "current one's) replaces it: the renewal `ca renew --csr` asked for. The new\n"
    "one is stored first and the old one destroyed after. An earlier or equally\n"
    "long one is refused and nothing changes.\n"
    "\n"
    "  --label LABEL      the CA key, as made by `ca create --csr`, or renewed with\n"
    "                     `ca renew --csr`\n"
    "  --chain FILE       the CA certificate and its issuers (PEM)\n"
    "\n" EG_PROV_TOKEN_HELP;

enum { OPT_LABEL = EG_OPT_OWN, OPT_CHAIN };

static const struct option ca_import_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"label", required_argument, NULL, OPT_LABEL},
    {"chain", required_argument, NULL, OPT_CHAIN},
    {NULL, 0, NULL, 0},
};

struct ca_import {
    eg_prov_token_opts tok;
    const char *label, *chain;
    bool help;
};

static int ca_import_opt(void *ctx, int c, const char *arg)
{
    struct ca_import *a = ctx;

    if (c == OPT_LABEL)
        a->label = arg;
    else if (c == OPT_CHAIN)
        a->chain = arg;
    else
        return EG_EXIT_USAGE;
    return EG_EXIT_OK;
}

static int ca_import_parse(int argc, char **argv, struct ca_import *a)
{
    int rc = eg_prov_parse_args(argc, argv, ca_import_opts, &a->tok, ca_import_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help || (rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->label == NULL || a->chain == NULL)
        return eg_prov_usage_error("--label and --chain are required");
    return EG_EXIT_OK;
}

/* The certificate of certs whose public key is the token key's. */
static int find_ca(STACK_OF(X509) * certs, const char *file, eg_p11_key *key, X509 **out)
{
    EVP_PKEY *pub = eg_p11_key_public(key);
    int i, rc = EG_EXIT_DATAERR;

    ERR_set_mark(); /* a key of another type is a mismatch, not an error to report */
    for (i = 0; pub != NULL && i < sk_X509_num(certs); i++) {
        if (EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(certs, i)), pub) == 1) {
            *out = sk_X509_value(certs, i);
            rc = EG_EXIT_OK;
            break;
        }
    }
    ERR_pop_to_mark();
    EVP_PKEY_free(pub);
    if (rc != EG_EXIT_OK)
        return eg_prov_fail(rc,
                            "no certificate in %s has the public key of %s; refusing to "
                            "import a certificate the token key cannot use",
                            file, eg_p11_key_uri(key));
    if (X509_check_ca(*out) != 1)
        return eg_prov_fail(EG_EXIT_DATAERR,
                            "the certificate for %s in %s is not a CA "
                            "certificate (basicConstraints CA:TRUE and "
                            "keyCertSign)",
                            eg_p11_key_uri(key), file);
    return EG_EXIT_OK;
}

/* notAfter as YYYY-MM-DD, for messages. */
static void end_day(X509 *x, char *buf, size_t cap)
{
    struct tm tm;

    if (!ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) || strftime(buf, cap, "%Y-%m-%d", &tm) == 0)
        snprintf(buf, cap, "(unreadable)");
}

/*
 * The CA certificate under the key's id and label, unless that exact one is
 * there already. A different one already there is replaced by a later one (a
 * renewal), never by an earlier one.
 */
static int store_ca(const struct ca_import *a, eg_token *tok, eg_p11_key *key, X509 *ca,
                    int *stored)
{
    X509 *existing = NULL;
    const uint8_t *id;
    char was[16], now[16];
    size_t idlen;
    int rc;

    if ((rc = eg_prov_key_cert(key, &existing)) != EG_EXIT_OK)
        goto out;
    id = eg_p11_key_id(key, &idlen);
    if (existing == NULL) {
        rc = eg_prov_store_cert(tok, ca, a->label, id, idlen);
        *stored += rc == EG_EXIT_OK;
        goto out;
    }
    if (X509_cmp(existing, ca) == 0)
        goto out; /* rc is EG_EXIT_OK */
    end_day(existing, was, sizeof(was));
    end_day(ca, now, sizeof(now));
    if (ASN1_TIME_compare(X509_get0_notAfter(ca), X509_get0_notAfter(existing)) <= 0) {
        rc = eg_prov_fail(EG_EXIT_CANTCREAT,
                          "%s already has a certificate in the token that ends on %s, no "
                          "earlier than this one (%s); only a later certificate replaces it",
                          eg_p11_key_uri(key), was, now);
        goto out;
    }
    if ((rc = eg_prov_replace_cert(tok, existing, ca, a->label, id, idlen)) != EG_EXIT_OK)
        goto out;
    eg_prov_note("replaced the certificate of %s that ends on %s with the one that ends on %s",
                 eg_p11_key_uri(key), was, now);
    (*stored)++;
out:
    X509_free(existing);
    return rc;
}

/* The issuers as LABEL-issuer-N with their SKI as CKA_ID; ones already there are skipped. */
static int store_issuers(const struct ca_import *a, eg_token *tok, STACK_OF(X509) * path,
                         int *stored)
{
    const ASN1_OCTET_STRING *ski;
    char label[256];
    bool present;
    int i, rc;

    for (i = 1; i < sk_X509_num(path); i++) {
        X509 *c = sk_X509_value(path, i);

        if ((rc = eg_prov_cert_present(tok, c, &present)) != EG_EXIT_OK)
            return rc;
        if (present)
            continue;
        snprintf(label, sizeof(label), "%s-issuer-%d", a->label, i);
        ski = X509_get0_subject_key_id(c);
        rc = eg_prov_store_cert(tok, c, label, ski ? ASN1_STRING_get0_data(ski) : NULL,
                                ski ? (size_t)ASN1_STRING_length(ski) : 0);
        if (rc != EG_EXIT_OK)
            return rc;
        (*stored)++;
    }
    return EG_EXIT_OK;
}

/* Checks the certificates against the token key and the chain, then stores what is new. */
static int import_chain(const struct ca_import *a, STACK_OF(X509) * certs)
{
    STACK_OF(X509) *path = NULL;
    eg_p11_key *key = NULL;
    eg_token *tok = NULL;
    X509 *ca = NULL;
    int rc, stored = 0;

    if ((rc = eg_prov_token_open(&a->tok, &tok)) != EG_EXIT_OK ||
        (rc = eg_prov_key_by_label(tok, a->label, &key)) != EG_EXIT_OK ||
        (rc = find_ca(certs, a->chain, key, &ca)) != EG_EXIT_OK ||
        (rc = eg_prov_chain_order(ca, certs, &path)) != EG_EXIT_OK ||
        (rc = eg_prov_chain_verify(path)) != EG_EXIT_OK)
        goto out;
    if ((rc = store_ca(a, tok, key, ca, &stored)) != EG_EXIT_OK ||
        (rc = store_issuers(a, tok, path, &stored)) != EG_EXIT_OK)
        goto out;
    eg_prov_note("stored %d of the %d certificate(s) in the chain of %s (any others were in "
                 "the token already)",
                 stored, sk_X509_num(path), eg_p11_key_uri(key));
    rc = EG_EXIT_OK;
out:
    sk_X509_pop_free(path, X509_free);
    eg_p11_key_free(key);
    eg_prov_token_close(tok);
    return rc;
}

static int ca_import_run(const struct ca_import *a)
{
    STACK_OF(X509) *certs = NULL;
    int rc;

    if ((rc = eg_prov_read_certs(a->chain, &certs)) == EG_EXIT_OK)
        rc = import_chain(a, certs);
    sk_X509_pop_free(certs, X509_free);
    return rc;
}

int eg_prov_cmd_ca_import(int argc, char **argv)
{
    struct ca_import a;
    int rc;

    memset(&a, 0, sizeof(a));
    eg_prov_report_prefix("estgate-provision ca import");
    if ((rc = ca_import_parse(argc, argv, &a)) != EG_EXIT_OK)
        return rc;
    if (a.help) {
        eg_prov_help(ca_import_help);
        return EG_EXIT_OK;
    }
    return ca_import_run(&a);
}
