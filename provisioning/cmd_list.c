/*
 * `list`: the keys and certificates in the token with their PKCS#11 URIs.
 * The objects are found through the signer, which then opens each private key
 * by its URI to show its type and security attributes, so what is listed is
 * exactly what the appliance would open.
 */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>

#include "args.h"
#include "p11_uri.h"
#include "report.h"
#include "token.h"

static const char list_help[] =
    "usage: estgate-provision list TOKEN-OPTIONS\n"
    "\n"
    "Lists the private keys, public keys, certificates and secret keys in the\n"
    "token with their PKCS#11 URIs (RFC 7512); for private keys the type and size\n"
    "and the security attributes (CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE,\n"
    "CKA_EXTRACTABLE, CKA_NEVER_EXTRACTABLE), for certificates the subject, issuer\n"
    "and expiry, for secret keys (serverkeygen's pre-shared keys) the size and\n"
    "CKA_SENSITIVE, CKA_EXTRACTABLE and CKA_WRAP.\n"
    "\n" EG_PROV_TOKEN_HELP;

static const struct option list_opts[] = {EG_PROV_TOKEN_LONGOPTS, {NULL, 0, NULL, 0}};

enum obj_kind { OBJ_PRIVATE, OBJ_PUBLIC, OBJ_CERT, OBJ_SECRET };
static const char *const kind_type[] = {"private", "public", "cert", "secret-key"};
static const char *const kind_title[] = {"private key", "public key", "certificate", "secret key"};

struct list_obj {
    enum obj_kind kind;
    char *uri;
    X509 *cert;
    /* Secret keys: read while enumerating, as they cannot be opened as eg_p11_key. */
    CK_ULONG value_len;
    CK_BBOOL sensitive, extractable, wrap;
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

#define EG_LIST_MAX 1024

/* An optional attribute: absent gives *out NULL and CKR_OK. */
static CK_RV get_var(eg_p11_call *call, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
                     unsigned char **out, size_t *len)
{
    CK_RV rv = eg_p11_get_attribute_alloc(call, h, type, out, len);

    if (rv == CKR_ATTRIBUTE_TYPE_INVALID) {
        *out = NULL;
        *len = 0;
        return CKR_OK;
    }
    return rv;
}

/* Size and usage of a secret key; what a token will not say is shown as unknown. */
static void secret_attrs(eg_p11_call *call, CK_OBJECT_HANDLE h, struct list_obj *o)
{
    CK_ATTRIBUTE t[] = {{CKA_VALUE_LEN, &o->value_len, sizeof(o->value_len)},
                        {CKA_SENSITIVE, &o->sensitive, sizeof(o->sensitive)},
                        {CKA_EXTRACTABLE, &o->extractable, sizeof(o->extractable)},
                        {CKA_WRAP, &o->wrap, sizeof(o->wrap)}};
    size_t i;

    o->value_len = 0;
    o->sensitive = o->extractable = o->wrap = 2; /* neither CK_TRUE nor CK_FALSE: unknown */
    for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        eg_p11_get_attributes(call, h, &t[i], 1);
}

struct enum_args {
    struct listing *ls;
    const char *token;
    int rc;
};

static CK_RV add_class(eg_p11_call *call, struct enum_args *a, enum obj_kind kind)
{
    static const CK_OBJECT_CLASS classes[] = {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_CERTIFICATE,
                                              CKO_SECRET_KEY};
    CK_ATTRIBUTE t = {CKA_CLASS, (void *)&classes[kind], sizeof(classes[kind])};
    CK_OBJECT_HANDLE *h = OPENSSL_malloc(EG_LIST_MAX * sizeof(*h));
    CK_ULONG n = 0, i;
    CK_RV rv;

    if (h == NULL)
        return CKR_HOST_MEMORY;
    rv = eg_p11_find_objects(call, &t, 1, h, EG_LIST_MAX, &n);
    for (i = 0; rv == CKR_OK && a->rc == EG_EXIT_OK && i < n; i++) {
        unsigned char *label = NULL, *id = NULL, *der = NULL;
        size_t llen, idlen, derlen;
        const unsigned char *p;
        X509 *cert = NULL;

        if ((rv = get_var(call, h[i], CKA_LABEL, &label, &llen)) == CKR_OK &&
            (rv = get_var(call, h[i], CKA_ID, &id, &idlen)) == CKR_OK &&
            (kind != OBJ_CERT || (rv = get_var(call, h[i], CKA_VALUE, &der, &derlen)) == CKR_OK)) {
            p = der;
            if (der != NULL)
                cert = d2i_X509(NULL, &p, (long)derlen);
            a->rc = listing_add(a->ls, a->token, kind, (char *)label, id, idlen, cert);
            if (a->rc == EG_EXIT_OK && kind == OBJ_SECRET)
                secret_attrs(call, h[i], &a->ls->objs[a->ls->n - 1]);
        }
        X509_free(cert);
        OPENSSL_free(label);
        OPENSSL_free(id);
        OPENSSL_free(der);
    }
    OPENSSL_free(h);
    return rv;
}

/* Everything the token holds; runs again from the start after a recovery. */
static CK_RV enumerate_fn(eg_p11_call *call, void *arg)
{
    struct enum_args *a = arg;
    CK_RV rv = CKR_OK;
    int k;

    listing_clear(a->ls);
    a->rc = EG_EXIT_OK;
    for (k = OBJ_PRIVATE; rv == CKR_OK && a->rc == EG_EXIT_OK && k <= OBJ_SECRET; k++)
        rv = add_class(call, a, (enum obj_kind)k);
    return rv;
}

static int enumerate(eg_token *tok, struct listing *ls)
{
    struct enum_args a = {ls, eg_token_label(tok), EG_EXIT_OK};
    CK_RV rv = eg_token_run(tok, enumerate_fn, &a);

    if (rv != CKR_OK)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "listing the objects of token '%s': %s",
                            eg_token_label(tok), eg_p11_rv_name(rv));
    return a.rc;
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

static const char *bool_text(CK_BBOOL v)
{
    return v == CK_TRUE ? "yes" : v == CK_FALSE ? "no" : "unknown";
}

static void print_secret(BIO *out, const struct list_obj *o)
{
    if (o->value_len > 0)
        BIO_printf(out, "  size: %lu bits\n", (unsigned long)o->value_len * 8);
    else
        BIO_printf(out, "  size: unknown\n");
    BIO_printf(out, "  sensitive: %s, extractable: %s, wrap: %s\n", bool_text(o->sensitive),
               bool_text(o->extractable), bool_text(o->wrap));
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

/* Each private key is opened by its URI for its attributes, as the appliance would open it. */
static int print_listing(eg_token *tok, const struct listing *ls)
{
    BIO *out = BIO_new_fp(stdout, BIO_NOCLOSE);
    size_t i;

    if (out == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    BIO_printf(out, "token '%s': %zu object(s)\n", eg_token_label(tok), ls->n);
    for (i = 0; i < ls->n; i++) {
        BIO_printf(out, "%s %s\n", kind_title[ls->objs[i].kind], ls->objs[i].uri);
        if (ls->objs[i].kind == OBJ_PRIVATE)
            print_private(out, tok, &ls->objs[i]);
        else if (ls->objs[i].kind == OBJ_SECRET)
            print_secret(out, &ls->objs[i]);
        else if (ls->objs[i].cert != NULL)
            print_cert(out, ls->objs[i].cert);
    }
    BIO_free(out);
    return EG_EXIT_OK;
}

int eg_prov_cmd_list(int argc, char **argv)
{
    eg_prov_token_opts o = {NULL, NULL, NULL, NULL};
    struct listing ls = {NULL, 0, 0};
    eg_token *tok = NULL;
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
    if ((rc = eg_prov_token_open(&o, &tok)) != EG_EXIT_OK)
        return rc;
    if ((rc = enumerate(tok, &ls)) == EG_EXIT_OK)
        rc = print_listing(tok, &ls);
    listing_clear(&ls);
    eg_prov_token_close(tok);
    return rc;
}
