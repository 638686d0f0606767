/*
 * A key pair in the token under the token CA: the key, its certificate in
 * the token under the key's CKA_ID, and the chain in a file.
 */
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>

#include "files.h"
#include "leaf.h"
#include "report.h"
#include "token.h"

/* What the token phase hands on. */
struct made {
    char *uri;
    X509 *cert, *ca;
};

/* The CA's certificate from the token: it must be its key's, and outlive the new one. */
static int ca_cert(eg_p11_key *ca_key, int days, X509 **out)
{
    time_t end = time(NULL) + (time_t)days * 86400;
    X509 *ca = NULL;
    int rc;

    if ((rc = eg_prov_ca_cert(ca_key, "run `ca create --self-signed` or `ca import`", &ca)) !=
        EG_EXIT_OK)
        return rc;
    if (X509_cmp_time(X509_get0_notAfter(ca), &end) < 0) {
        X509_free(ca);
        return eg_prov_fail(EG_EXIT_DATAERR, "--days %d: the certificate would outlive its CA's",
                            days);
    }
    *out = ca;
    return EG_EXIT_OK;
}

/* Issues the certificate for key, signed by the CA key in the token. */
static int issue(const eg_prov_leaf_req *r, eg_p11_key *key, eg_p11_key *ca_key, struct made *m)
{
    eg_prov_cert_spec spec = r->cert;
    int rc;

    spec.issuer = m->ca;
    spec.signer = NULL;
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

/* Stores the certificate under the key's id and keeps the key's URI for the messages. */
static int store(eg_token *tok, const char *label, eg_p11_key *key, struct made *m)
{
    size_t idlen;
    const uint8_t *id = eg_p11_key_id(key, &idlen);

    if ((m->uri = OPENSSL_strdup(eg_p11_key_uri(key))) == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    return eg_prov_store_cert(tok, m->cert, label, id, idlen);
}

/* The token phase. */
static int make(const eg_prov_leaf_req *r, struct made *m)
{
    eg_keygen_spec spec = r->key;
    eg_p11_key *ca_key = NULL, *key = NULL;
    eg_token *tok = NULL;
    int rc;

    spec.label = r->label;
    spec.token_object = true;
    spec.wrappable = false;
    if ((rc = eg_prov_token_open(r->tok, &tok)) != EG_EXIT_OK ||
        (rc = eg_prov_key_by_label(tok, r->ca_label, &ca_key)) != EG_EXIT_OK ||
        (rc = ca_cert(ca_key, r->cert.days, &m->ca)) != EG_EXIT_OK ||
        (rc = eg_prov_label_unused(tok, r->label)) != EG_EXIT_OK)
        goto out;
    if (eg_p11_key_generate(tok, &spec, &key) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot generate the %s '%s'", r->what, r->label);
        goto out;
    }
    if ((rc = issue(r, key, ca_key, m)) != EG_EXIT_OK ||
        (rc = store(tok, r->label, key, m)) != EG_EXIT_OK)
        eg_p11_key_destroy(key);
out:
    eg_p11_key_free(key);
    eg_p11_key_free(ca_key);
    eg_prov_token_close(tok);
    return rc;
}

static int write_chain(eg_prov_outfile *of, const struct made *m)
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

int eg_prov_leaf_create(const eg_prov_leaf_req *r)
{
    struct made m = {NULL, NULL, NULL};
    eg_prov_outfile *of = NULL;
    int rc;

    /* The file first: an unwritable path costs nothing in the token. */
    if ((rc = eg_prov_outfile_open(r->out, 0644, &of)) != EG_EXIT_OK ||
        (rc = make(r, &m)) != EG_EXIT_OK || (rc = write_chain(of, &m)) != EG_EXIT_OK)
        goto out;
    eg_prov_note("created %s %s", r->what, m.uri);
    eg_prov_note("wrote its certificate and the CA certificate to %s", r->out);
out:
    OPENSSL_free(m.uri);
    X509_free(m.cert);
    X509_free(m.ca);
    eg_prov_outfile_free(of);
    return rc;
}
