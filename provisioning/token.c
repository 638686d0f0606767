/*
 * The token through the signer: keys are named by PKCS#11 URIs, and every
 * signature goes through the provider, so no private key is ever in memory.
 */
#include <string.h>

#include <openssl/crypto.h>

#include "files.h"
#include "p11_uri.h"
#include "provider.h"
#include "report.h"
#include "token.h"

int eg_prov_token_open(const eg_prov_token_opts *o, eg_token **out)
{
    eg_token_config cfg = {o->module, o->init_args, o->token, o->pin_file, 0, 0, EG_CALLS_AUTO, 0};
    eg_token *tok = NULL;
    int rc;

    /* Checked here first, so that a message names the option and never a PIN typed in its place. */
    if ((rc = eg_prov_secret_open(o->pin_file, "--pin-file", "PIN", NULL)) != EG_EXIT_OK)
        goto out;
    if (eg_token_open(&cfg, &tok) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_UNAVAILABLE, "cannot open token '%s'", o->token);
        goto out;
    }
    if (eg_provider_init(NULL) != 0 || eg_provider_add_token(NULL, tok) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot load the estgate provider");
        goto out;
    }
    *out = tok;
    tok = NULL;
    rc = EG_EXIT_OK;
out:
    eg_token_free(tok);
    return rc;
}

void eg_prov_token_close(eg_token *tok)
{
    if (tok == NULL)
        return;
    eg_provider_remove_token(NULL, tok);
    eg_token_free(tok);
}

struct label_args {
    const char *label;
    CK_ULONG found;
};

static CK_RV label_fn(eg_p11_call *call, void *arg)
{
    struct label_args *a = arg;
    CK_ATTRIBUTE t = {CKA_LABEL, (void *)a->label, strlen(a->label)};
    CK_OBJECT_HANDLE h;

    return eg_p11_find_objects(call, &t, 1, &h, 1, &a->found);
}

int eg_prov_label_unused(eg_token *tok, const char *label)
{
    struct label_args a = {label, 0};
    CK_RV rv;

    if ((rv = eg_token_run(tok, label_fn, &a)) != CKR_OK)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "searching token '%s' for label '%s': %s",
                            eg_token_label(tok), label, eg_p11_rv_name(rv));
    if (a.found > 0)
        return eg_prov_fail(EG_EXIT_CANTCREAT,
                            "token '%s' already holds an object labelled '%s'; choose another "
                            "--label (estgate-provision never replaces keys)",
                            eg_token_label(tok), label);
    return EG_EXIT_OK;
}

int eg_prov_key_by_label(eg_token *tok, const char *label, eg_p11_key **out)
{
    char *uri = eg_p11_uri_format(eg_token_label(tok), label, NULL, 0, "private");
    int rc;

    if (uri == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    if (eg_p11_key_open(tok, uri, out) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot open key '%s' (%s)", label, uri);
        goto out;
    }
    rc = EG_EXIT_OK;
out:
    OPENSSL_free(uri);
    return rc;
}

/* At most this many certificates share a key's id: one, or two after an interrupted renewal. */
#define KEY_CERTS_MAX 8

struct cert_args {
    const uint8_t *id;
    size_t idlen;
    CK_ULONG found;
    uint8_t *der[KEY_CERTS_MAX];
    size_t derlen[KEY_CERTS_MAX];
};

static void cert_args_clear(struct cert_args *a)
{
    for (size_t i = 0; i < KEY_CERTS_MAX; i++) {
        OPENSSL_free(a->der[i]);
        a->der[i] = NULL;
    }
}

/* Reads CKA_VALUE of every certificate with the id; may run again after a recovery. */
static CK_RV cert_fn(eg_p11_call *call, void *arg)
{
    struct cert_args *a = arg;
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)a->id, a->idlen}};
    CK_OBJECT_HANDLE h[KEY_CERTS_MAX + 1];
    CK_RV rv = CKR_OK;

    cert_args_clear(a);
    if ((rv = eg_p11_find_objects(call, t, 2, h, KEY_CERTS_MAX + 1, &a->found)) != CKR_OK)
        return rv;
    for (CK_ULONG i = 0; i < a->found && i < KEY_CERTS_MAX && rv == CKR_OK; i++)
        rv = eg_p11_get_attribute_alloc(call, h[i], CKA_VALUE, &a->der[i], &a->derlen[i]);
    return rv;
}

/*
 * The certificate stored under the key's CKA_ID. Where more than one is (a
 * renewal or an import stores the new certificate before it destroys the old
 * one, so an interruption leaves both), the one that ends last: the one that
 * was being put in place. eg_prov_replace_cert removes the others.
 */
int eg_prov_key_cert(eg_p11_key *key, X509 **out)
{
    struct cert_args a = {.id = NULL};
    X509 *best = NULL;
    CK_RV rv;
    int rc;

    a.id = eg_p11_key_id(key, &a.idlen);
    if ((rv = eg_token_run(eg_p11_key_token(key), cert_fn, &a)) != CKR_OK) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "reading the certificate of %s: %s",
                          eg_p11_key_uri(key), eg_p11_rv_name(rv));
        goto out;
    }
    if (a.found > KEY_CERTS_MAX) {
        rc = eg_prov_fail(EG_EXIT_DATAERR, "more than %d certificates have the id of %s",
                          KEY_CERTS_MAX, eg_p11_key_uri(key));
        goto out;
    }
    for (CK_ULONG i = 0; i < a.found; i++) {
        const unsigned char *p = a.der[i];
        X509 *x = d2i_X509(NULL, &p, (long)a.derlen[i]);

        if (x == NULL) {
            rc = eg_prov_fail(EG_EXIT_DATAERR, "a certificate stored for %s does not parse",
                              eg_p11_key_uri(key));
            goto out;
        }
        if (best == NULL ||
            ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(best)) > 0) {
            X509_free(best);
            best = x;
        } else {
            X509_free(x);
        }
    }
    if (a.found > 1)
        eg_prov_note("%lu certificates have the id of %s (a renewal or import was interrupted): "
                     "using the one that ends last; the next `ca renew` or `ca import` of a "
                     "later one removes the others",
                     (unsigned long)a.found, eg_p11_key_uri(key));
    *out = best;
    best = NULL;
    rc = EG_EXIT_OK;
out:
    X509_free(best);
    cert_args_clear(&a);
    return rc;
}

int eg_prov_ca_cert(eg_p11_key *key, const char *hint, X509 **out)
{
    EVP_PKEY *pub = eg_p11_key_public(key);
    X509 *ca = NULL;
    int rc;

    if ((rc = eg_prov_key_cert(key, &ca)) != EG_EXIT_OK)
        goto out;
    if (ca == NULL) {
        rc = eg_prov_fail(EG_EXIT_UNAVAILABLE, "the CA key %s has no certificate in the token; %s",
                          eg_p11_key_uri(key), hint);
    } else if (pub == NULL || EVP_PKEY_eq(X509_get0_pubkey(ca), pub) != 1) {
        rc = eg_prov_fail(EG_EXIT_DATAERR, "the certificate stored for %s is not for that key",
                          eg_p11_key_uri(key));
    } else {
        *out = ca;
        ca = NULL;
    }
out:
    X509_free(ca);
    EVP_PKEY_free(pub);
    return rc;
}

/* A certificate's DER for the callbacks that find it by CKA_VALUE. */
struct der_args {
    unsigned char *der;
    int derlen;
    CK_ULONG found;
};

/* The certificate object whose CKA_VALUE is der, if any. */
static CK_RV find_cert(eg_p11_call *call, unsigned char *der, int derlen, CK_OBJECT_HANDLE *h,
                       CK_ULONG *found)
{
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_VALUE, der, (CK_ULONG)derlen}};

    return eg_p11_find_objects(call, t, 2, h, 1, found);
}

static CK_RV present_fn(eg_p11_call *call, void *arg)
{
    struct der_args *a = arg;
    CK_OBJECT_HANDLE h;

    return find_cert(call, a->der, a->derlen, &h, &a->found);
}

/* Finds the object by its DER again on every try, so a repeat after a recovery is harmless. */
static CK_RV destroy_fn(eg_p11_call *call, void *arg)
{
    struct der_args *a = arg;
    CK_OBJECT_HANDLE h;
    CK_RV rv;

    if ((rv = find_cert(call, a->der, a->derlen, &h, &a->found)) != CKR_OK || a->found == 0)
        return rv;
    return eg_p11_destroy_object(call, h);
}

/* Runs fn with cert's DER in a; what says what fn does, for the message. */
static int run_on_cert(eg_token *tok, X509 *cert, eg_p11_fn *fn, struct der_args *a,
                       const char *what)
{
    CK_RV rv;
    int rc;

    if ((a->derlen = i2d_X509(cert, &a->der)) <= 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot encode a certificate");
        goto out;
    }
    if ((rv = eg_token_run(tok, fn, a)) != CKR_OK) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "%s a certificate in token '%s': %s", what,
                          eg_token_label(tok), eg_p11_rv_name(rv));
        goto out;
    }
    rc = EG_EXIT_OK;
out:
    OPENSSL_free(a->der);
    a->der = NULL;
    return rc;
}

int eg_prov_cert_present(eg_token *tok, X509 *cert, bool *present)
{
    struct der_args a = {NULL, 0, 0};
    int rc = run_on_cert(tok, cert, present_fn, &a, "searching for");

    if (rc == EG_EXIT_OK)
        *present = a.found > 0;
    return rc;
}

int eg_prov_destroy_cert(eg_token *tok, X509 *cert)
{
    struct der_args a = {NULL, 0, 0};

    return run_on_cert(tok, cert, destroy_fn, &a, "destroying");
}

int eg_prov_key_pkey(eg_p11_key *key, EVP_PKEY **out)
{
    if (eg_provider_key_pkey(NULL, key, out) != 0)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "the provider cannot use %s",
                                  eg_p11_key_uri(key));
    return EG_EXIT_OK;
}

/* DER encodings of what a certificate object carries; all freed by cert_der_free. */
struct cert_der {
    unsigned char *value, *subject, *issuer, *serial;
    int nvalue, nsubject, nissuer, nserial;
};

static void cert_der_free(struct cert_der *d)
{
    OPENSSL_free(d->value);
    OPENSSL_free(d->subject);
    OPENSSL_free(d->issuer);
    OPENSSL_free(d->serial);
}

static int cert_der(X509 *cert, struct cert_der *d)
{
    memset(d, 0, sizeof(*d));
    d->nvalue = i2d_X509(cert, &d->value);
    d->nsubject = i2d_X509_NAME(X509_get_subject_name(cert), &d->subject);
    d->nissuer = i2d_X509_NAME(X509_get_issuer_name(cert), &d->issuer);
    d->nserial = i2d_ASN1_INTEGER(X509_get0_serialNumber(cert), &d->serial);
    return d->nvalue > 0 && d->nsubject > 0 && d->nissuer > 0 && d->nserial > 0 ? 0 : -1;
}

struct store_args {
    struct cert_der der;
    const char *label;
    const uint8_t *id;
    size_t idlen;
};

/* Creates the object unless an earlier try (before a recovery) already did. */
static CK_RV store_fn(eg_p11_call *call, void *arg)
{
    struct store_args *a = arg;
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_CERTIFICATE_TYPE ct = CKC_X_509;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[10] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_VALUE, a->der.value, (CK_ULONG)a->der.nvalue},
        {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_SUBJECT, a->der.subject, (CK_ULONG)a->der.nsubject},
        {CKA_ISSUER, a->der.issuer, (CK_ULONG)a->der.nissuer},
        {CKA_SERIAL_NUMBER, a->der.serial, (CK_ULONG)a->der.nserial},
        {CKA_LABEL, (void *)a->label, strlen(a->label)},
        {CKA_ID, (void *)a->id, a->idlen},
    };
    CK_OBJECT_HANDLE h;
    CK_ULONG found;
    CK_RV rv;

    if ((rv = eg_p11_find_objects(call, t, 2, &h, 1, &found)) != CKR_OK || found > 0)
        return rv;
    return eg_p11_create_object(call, t, a->idlen > 0 ? 10 : 9, &h);
}

int eg_prov_store_cert(eg_token *tok, X509 *cert, const char *label, const uint8_t *id,
                       size_t idlen)
{
    struct store_args a = {{NULL, NULL, NULL, NULL, 0, 0, 0, 0}, label, id, idlen};
    CK_RV rv;
    int rc;

    if (cert_der(cert, &a.der) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot encode the certificate '%s'", label);
        goto out;
    }
    if ((rv = eg_token_run(tok, store_fn, &a)) != CKR_OK) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "cannot store certificate '%s' in token '%s': %s",
                          label, eg_token_label(tok), eg_p11_rv_name(rv));
        goto out;
    }
    rc = EG_EXIT_OK;
out:
    cert_der_free(&a.der);
    return rc;
}

struct others_args {
    const uint8_t *id;
    size_t idlen;
    unsigned char *keep; /* DER */
    size_t keeplen;
    CK_ULONG dropped;
};

/* Destroys every certificate with the id whose DER is not keep's; again after a recovery. */
static CK_RV others_fn(eg_p11_call *call, void *arg)
{
    struct others_args *a = arg;
    CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)a->id, a->idlen}};
    CK_OBJECT_HANDLE h[KEY_CERTS_MAX];
    CK_ULONG found;
    CK_RV rv;

    if ((rv = eg_p11_find_objects(call, t, 2, h, KEY_CERTS_MAX, &found)) != CKR_OK)
        return rv;
    for (CK_ULONG i = 0; i < found && i < KEY_CERTS_MAX && rv == CKR_OK; i++) {
        uint8_t *der = NULL;
        size_t len = 0;

        rv = eg_p11_get_attribute_alloc(call, h[i], CKA_VALUE, &der, &len);
        if (rv == CKR_OK && (len != a->keeplen || memcmp(der, a->keep, len) != 0) &&
            (rv = eg_p11_destroy_object(call, h[i])) == CKR_OK)
            a->dropped++;
        OPENSSL_free(der);
    }
    return rv;
}

/* What an interrupted replacement left under the id besides cert; a failure is only noted. */
static void drop_others(eg_token *tok, X509 *cert, const uint8_t *id, size_t idlen)
{
    struct others_args a = {id, idlen, NULL, 0, 0};
    int n = i2d_X509(cert, &a.keep);
    CK_RV rv;

    if (idlen == 0 || n <= 0) {
        OPENSSL_free(a.keep);
        return;
    }
    a.keeplen = (size_t)n;
    if ((rv = eg_token_run(tok, others_fn, &a)) != CKR_OK)
        eg_prov_note("could not remove older certificates under the key's id: %s",
                     eg_p11_rv_name(rv));
    else if (a.dropped > 0)
        eg_prov_note("removed %lu older certificate(s) an interrupted renewal left under the "
                     "key's id",
                     (unsigned long)a.dropped);
    OPENSSL_free(a.keep);
}

int eg_prov_replace_cert(eg_token *tok, X509 *old, X509 *cert, const char *label, const uint8_t *id,
                         size_t idlen)
{
    int rc;

    if ((rc = eg_prov_store_cert(tok, cert, label, id, idlen)) != EG_EXIT_OK)
        return rc;
    if ((rc = eg_prov_destroy_cert(tok, old)) != EG_EXIT_OK) {
        eg_prov_destroy_cert(tok, cert);
        return rc;
    }
    drop_others(tok, cert, id, idlen);
    return EG_EXIT_OK;
}
