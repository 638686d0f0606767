/*
 * `list`: the keys and certificates in the token with their PKCS#11 URIs.
 * libp11 enumerates the objects; the signer then opens each private key by
 * its URI to show its type and security attributes, so what is listed is
 * exactly what the appliance would open.
 */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/objects.h>

#include "args.h"
#include "p11_uri.h"
#include "p11lib.h"
#include "report.h"
#include "token.h"

static const char list_help[] =
    "usage: estgate-provision list TOKEN-OPTIONS\n"
    "\n"
    "Lists the private keys, public keys and certificates in the token with\n"
    "their PKCS#11 URIs (RFC 7512); for private keys the type and size and the\n"
    "security attributes (CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE, CKA_EXTRACTABLE,\n"
    "CKA_NEVER_EXTRACTABLE), for certificates the subject, issuer and expiry.\n"
    "\n" EG_PROV_TOKEN_HELP;

static const struct option list_opts[] = {EG_PROV_TOKEN_LONGOPTS, {NULL, 0, NULL, 0}};

enum obj_kind { OBJ_PRIVATE, OBJ_PUBLIC, OBJ_CERT };
static const char *const kind_type[] = {"private", "public", "cert"};
static const char *const kind_title[] = {"private key", "public key", "certificate"};

struct list_obj {
    enum obj_kind kind;
    char *uri;
    X509 *cert;
};

struct listing {
    struct list_obj *objs;
    size_t n, cap;
};

static void listing_clear(struct listing *ls)
{
    size_t i;

    for (i = 0; i < ls->n; i++) {
        OPENSSL_free(ls->objs[i].uri);
        X509_free(ls->objs[i].cert);
    }
    OPENSSL_free(ls->objs);
    memset(ls, 0, sizeof(*ls));
}

static int listing_add(struct listing *ls, const char *token, enum obj_kind kind, const char *label,
                       const unsigned char *id, size_t idlen, X509 *cert)
{
    struct list_obj *o;

    if (ls->n == ls->cap) {
        size_t cap = ls->cap ? ls->cap * 2 : 16;

        if ((o = OPENSSL_realloc(ls->objs, cap * sizeof(*o))) == NULL)
            return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        ls->objs = o;
        ls->cap = cap;
    }
    o = &ls->objs[ls->n];
    o->kind = kind;
    o->cert = NULL;
    o->uri = eg_p11_uri_format(token, label, idlen > 0 ? id : NULL, idlen, kind_type[kind]);
    if (o->uri == NULL || (cert != NULL && (o->cert = X509_dup(cert)) == NULL)) {
        OPENSSL_free(o->uri);
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    }
    ls->n++;
    return EG_EXIT_OK;
}

static int add_keys(struct listing *ls, PKCS11_TOKEN *t, enum obj_kind kind)
{
    PKCS11_KEY *keys = NULL;
    unsigned n = 0, i;
    int rc, r;

    r = kind == OBJ_PRIVATE ? PKCS11_enumerate_keys(t, &keys, &n)
                            : PKCS11_enumerate_public_keys(t, &keys, &n);
    if (r != 0)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot list the %ss", kind_title[kind]);
    for (i = 0; i < n; i++) {
        rc = listing_add(ls, t->label, kind, keys[i].label, keys[i].id, keys[i].id_len, NULL);
        if (rc != EG_EXIT_OK)
            return rc;
    }
    return EG_EXIT_OK;
}

static int add_certs(struct listing *ls, PKCS11_TOKEN *t)
{
    PKCS11_CERT *certs = NULL;
    unsigned n = 0, i;
    int rc;

    if (PKCS11_enumerate_certs(t, &certs, &n) != 0)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot list the certificates");
    for (i = 0; i < n; i++) {
        rc = listing_add(ls, t->label, OBJ_CERT, certs[i].label, certs[i].id, certs[i].id_len,
                         certs[i].x509);
        if (rc != EG_EXIT_OK)
            return rc;
    }
    return EG_EXIT_OK;
}

/* The libp11 phase: what the token holds, copied out before libp11 lets go of it. */
static int enumerate(const eg_prov_token_opts *o, struct listing *ls)
{
    eg_prov_p11lib *l = NULL;
    PKCS11_TOKEN *t;
    int rc;

    if ((rc = eg_prov_p11lib_open(o, &l)) != EG_EXIT_OK)
        goto out;
    t = l->slot->token;
    if ((rc = add_keys(ls, t, OBJ_PRIVATE)) != EG_EXIT_OK ||
        (rc = add_keys(ls, t, OBJ_PUBLIC)) != EG_EXIT_OK || (rc = add_certs(ls, t)) != EG_EXIT_OK)
        goto out;
    rc = EG_EXIT_OK;
out:
    eg_prov_p11lib_free(l);
    return rc;
}

static void print_key_type(BIO *out, eg_p11_key *key)
{
    EVP_PKEY *pub = eg_p11_key_public(key);
    const char *nist;
    char group[64];

    if (pub == NULL) {
        BIO_printf(out, "unknown");
    } else if (EVP_PKEY_is_a(pub, "EC") &&
               EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                              NULL) == 1) {
        nist = EC_curve_nid2nist(OBJ_sn2nid(group));
        BIO_printf(out, "EC %s", nist != NULL ? nist : group);
    } else {
        BIO_printf(out, "%s %d", EVP_PKEY_get0_type_name(pub), EVP_PKEY_get_bits(pub));
    }
    EVP_PKEY_free(pub);
}

static const char *yes_no(eg_p11_key *key, CK_ATTRIBUTE_TYPE type)
{
    bool v;

    if (eg_p11_key_get_bool(key, type, &v) != 0) {
        ERR_clear_error();
        return "unknown";
    }
    return v ? "yes" : "no";
}

static void print_private(BIO *out, eg_token *tok, const struct list_obj *o)
{
    eg_p11_key *key = NULL;

    if (eg_p11_key_open(tok, o->uri, &key) != 0) {
        eg_prov_fail_stack(0, "cannot open %s", o->uri);
        return;
    }
    BIO_printf(out, "  type: ");
    print_key_type(out, key);
    BIO_printf(out, "\n  sensitive: %s, always sensitive: %s\n", yes_no(key, CKA_SENSITIVE),
               yes_no(key, CKA_ALWAYS_SENSITIVE));
    BIO_printf(out, "  extractable: %s, never extractable: %s\n", yes_no(key, CKA_EXTRACTABLE),
               yes_no(key, CKA_NEVER_EXTRACTABLE));
    eg_p11_key_free(key);
}

static void print_cert(BIO *out, X509 *cert)
{
    BIO_printf(out, "  subject: ");
    X509_NAME_print_ex(out, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
    BIO_printf(out, "\n  issuer: ");
    X509_NAME_print_ex(out, X509_get_issuer_name(cert), 0, XN_FLAG_RFC2253);
    BIO_printf(out, "\n  expires: ");
    ASN1_TIME_print_ex(out, X509_get0_notAfter(cert), ASN1_DTFLGS_ISO8601);
    BIO_printf(out, "\n");
}

/* The signer phase: opens each private key by its URI for its attributes. */
static int print_listing(const eg_prov_token_opts *o, const struct listing *ls)
{
    BIO *out = BIO_new_fp(stdout, BIO_NOCLOSE);
    eg_token *tok = NULL;
    size_t i;
    int rc;

    if (out == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    if ((rc = eg_prov_token_open(o, &tok)) != EG_EXIT_OK)
        goto out;
    BIO_printf(out, "token '%s': %zu object(s)\n", o->token, ls->n);
    for (i = 0; i < ls->n; i++) {
        BIO_printf(out, "%s %s\n", kind_title[ls->objs[i].kind], ls->objs[i].uri);
        if (ls->objs[i].kind == OBJ_PRIVATE)
            print_private(out, tok, &ls->objs[i]);
        else if (ls->objs[i].cert != NULL)
            print_cert(out, ls->objs[i].cert);
    }
    rc = EG_EXIT_OK;
out:
    eg_prov_token_close(tok);
    BIO_free(out);
    return rc;
}

int eg_prov_cmd_list(int argc, char **argv)
{
    eg_prov_token_opts o = {NULL, NULL, NULL, NULL};
    struct listing ls = {NULL, 0, 0};
    bool help = false;
    int rc;

    eg_prov_report_prefix("estgate-provision list");
    if ((rc = eg_prov_parse_args(argc, argv, list_opts, &o, NULL, NULL, &help)) != EG_EXIT_OK)
        return rc;
    if (help) {
        eg_prov_help(list_help);
        return EG_EXIT_OK;
    }
    if ((rc = eg_prov_token_opts_check(&o)) != EG_EXIT_OK)
        return rc;
    if ((rc = enumerate(&o, &ls)) == EG_EXIT_OK)
        rc = print_listing(&o, &ls);
    listing_clear(&ls);
    return rc;
}
