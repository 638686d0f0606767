/*
 * One device of a bootstrap batch. The order is what makes a batch
 * resumable without a second certificate for any device:
 *   1. what the device asks for is hashed; a serial already recorded with
 *      another request is refused, never reissued;
 *   2. a device already issued only gets its output files checked;
 *   3. the intent (request hash, certificate serial, validity) is committed;
 *   4. the token signs; 5. the certificate is committed; 6. files written.
 * A crash between 3 and 5 leaves an intent that the next run completes with
 * the recorded serial and validity: the certificate of a CSR row is then the
 * same certificate, and nothing signed before the crash left the process.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "bootstrap.h"
#include "provision.h"
#include "report.h"

/* What a row asks for, checked and hashed. */
struct request {
    uint8_t sha256[32];
    EVP_PKEY *pub;    /* CSR mode: the device's key; keygen: the transport key */
    uint8_t *wrapped; /* keygen: the wrapped device key */
    size_t wrappedlen;
};

static void request_clear(struct request *q)
{
    EVP_PKEY_free(q->pub);
    OPENSSL_free(q->wrapped);
}

static X509_REQ *read_csr(const char *path)
{
    BIO *in = BIO_new_file(path, "rb");
    X509_REQ *req = NULL;

    if (in == NULL)
        return NULL;
    req = PEM_read_bio_X509_REQ(in, NULL, NULL, NULL);
    if (req == NULL && BIO_reset(in) == 0)
        req = d2i_X509_REQ_bio(in, NULL);
    BIO_free(in);
    return req;
}

static bool key_acceptable(EVP_PKEY *pub)
{
    if (EVP_PKEY_is_a(pub, "RSA"))
        return EVP_PKEY_get_bits(pub) >= 2048;
    return EVP_PKEY_is_a(pub, "EC") && EVP_PKEY_get_bits(pub) >= 256;
}

/* The CSR's signature is checked here: a request the device did not sign is refused. */
static int csr_request(const eg_bs_row *row, struct request *q, char *why)
{
    X509_REQ *req = read_csr(row->csr);
    unsigned char *der = NULL;
    EVP_PKEY *pub;
    int n, rc = EG_EXIT_DATAERR;

    if (req == NULL) {
        snprintf(why, EG_BS_WHY_MAX, "cannot read a CSR (PEM or DER) from %s", row->csr);
        goto out;
    }
    if ((pub = X509_REQ_get0_pubkey(req)) == NULL || !key_acceptable(pub)) {
        snprintf(why, EG_BS_WHY_MAX, "CSR key is not RSA >= 2048 or EC >= P-256");
        goto out;
    }
    if (X509_REQ_verify(req, pub) != 1) {
        snprintf(why, EG_BS_WHY_MAX, "CSR signature does not verify");
        goto out;
    }
    if ((n = i2d_X509_REQ(req, &der)) <= 0 ||
        EVP_Digest(der, (size_t)n, q->sha256, NULL, EVP_sha256(), NULL) != 1) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot hash the CSR of %s", row->serial);
        goto out;
    }
    EVP_PKEY_up_ref(pub);
    q->pub = pub;
    rc = EG_EXIT_OK;
out:
    ERR_clear_error(); /* a refused row's parse errors are told in why */
    OPENSSL_free(der);
    X509_REQ_free(req);
    return rc;
}

/* SHA-256 over "keygen", the key type and the transport key's SPKI. */
static int keygen_request(const eg_bs_row *row, struct request *q, char *why)
{
    BIO *in = BIO_new_file(row->transport, "r");
    EVP_PKEY *pub = in != NULL ? PEM_read_bio_PUBKEY(in, NULL, NULL, NULL) : NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *spki = NULL;
    char kind[48];
    int n, rc = EG_EXIT_DATAERR;

    ERR_clear_error();
    if (pub == NULL || !EVP_PKEY_is_a(pub, "RSA") || EVP_PKEY_get_bits(pub) < 2048) {
        snprintf(why, EG_BS_WHY_MAX, "%s: need an RSA (>= 2048 bits) public key in PEM",
                 row->transport);
        goto out;
    }
    snprintf(kind, sizeof(kind), "keygen %d %u %d", (int)row->key.type, row->key.bits,
             row->key.curve_nid);
    if (md == NULL || (n = i2d_PUBKEY(pub, &spki)) <= 0 ||
        EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(md, kind, strlen(kind) + 1) != 1 ||
        EVP_DigestUpdate(md, spki, (size_t)n) != 1 ||
        EVP_DigestFinal_ex(md, q->sha256, NULL) != 1) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot hash the request of %s", row->serial);
        goto out;
    }
    q->pub = pub;
    pub = NULL;
    rc = EG_EXIT_OK;
out:
    EVP_PKEY_free(pub);
    EVP_MD_CTX_free(md);
    OPENSSL_free(spki);
    BIO_free(in);
    return rc;
}

/* Output files of a certificate the state holds. */
static int deliver(eg_bs_batch *b, const eg_bs_row *row, const uint8_t *der, size_t len,
                   const uint8_t *wrapped, size_t wrappedlen)
{
    const unsigned char *p = der;
    X509 *cert = d2i_X509(NULL, &p, (long)len);
    int rc;

    if (cert == NULL)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "the recorded certificate of %s", row->serial);
    rc = eg_bs_write_device(b->out, row->serial, cert, b->issuer.chain, wrapped, wrappedlen);
    X509_free(cert);
    return rc;
}

/* Draws the certificate serial and validity of a new intent, and records it. */
static int intent(eg_bs_batch *b, const eg_bs_row *row, const struct request *q, eg_bs_record *rec)
{
    memcpy(rec->request, q->sha256, sizeof(rec->request));
    if (RAND_bytes(rec->cert_serial, sizeof(rec->cert_serial)) != 1)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "no random serial");
    /* Positive, and always 16 octets: no leading zero octet for DER to drop. */
    rec->cert_serial[0] = (uint8_t)((rec->cert_serial[0] & 0x7f) | 0x40);
    rec->not_before = (int64_t)time(NULL);
    rec->not_after = rec->not_before + (int64_t)b->issuer.days * 86400;
    return eg_bs_state_intent(b->state, row->serial, row->model, rec);
}

/* Steps 3 to 6 for a row whose request is checked. */
static int issue(eg_bs_batch *b, const eg_bs_row *row, struct request *q, eg_bs_record *rec,
                 char *why)
{
    EVP_PKEY *pub = NULL;
    unsigned char *der = NULL;
    X509 *cert = NULL;
    int n, rc;

    if (row->mode == EG_BS_KEYGEN &&
        (rc = eg_bs_keygen(b->tok, &row->key, q->pub, &pub, &q->wrapped, &q->wrappedlen, why)) !=
            EG_EXIT_OK)
        goto out;
    if (pub == NULL) {
        pub = q->pub;
        EVP_PKEY_up_ref(pub);
    }
    if (rec->phase == EG_BS_NONE && (rc = intent(b, row, q, rec)) != EG_EXIT_OK)
        goto out;
    if ((rc = eg_bs_cert_build(&b->issuer, row, pub, rec, &cert, why)) != EG_EXIT_OK)
        goto out;
    if ((n = i2d_X509(cert, &der)) <= 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot encode the certificate");
        goto out;
    }
    if ((rc = eg_bs_state_issued(b->state, row->serial, row->model, b->issuer.sans_joined, der,
                                 (size_t)n, q->wrapped, q->wrappedlen)) != EG_EXIT_OK)
        goto out;
    rc = deliver(b, row, der, (size_t)n, q->wrapped, q->wrappedlen);
out:
    OPENSSL_free(der);
    X509_free(cert);
    EVP_PKEY_free(pub);
    return rc;
}

/*
 * Whether the row would make another certificate than the one issued: the
 * request is the same, but the model or the SAN templates (subject and SANs)
 * changed. A device keeps its one certificate; the row is refused, not
 * counted as issued, so a correction is never silently dropped. A
 * certificate issued before the templates were recorded is checked for its
 * model only.
 */
static bool changed(const eg_bs_batch *b, const eg_bs_row *row, const eg_bs_record *rec, char *why)
{
    const char *now = b->issuer.sans_joined;

    if (strcmp(rec->model, row->model) != 0) {
        snprintf(why, EG_BS_WHY_MAX, "issued earlier with model %s; not reissued", rec->model);
        return true;
    }
    if (rec->sans != NULL && strcmp(rec->sans, now) != 0) {
        snprintf(why, EG_BS_WHY_MAX, "issued earlier with %s%.160s; not reissued",
                 rec->sans[0] != 0 ? "--san-template " : "no --san-template", rec->sans);
        return true;
    }
    return false;
}

/* Refusals that need nothing from the token. */
static bool refused_early(eg_bs_batch *b, const eg_bs_row *row, char *why)
{
    if (row->why[0] != 0) {
        snprintf(why, EG_BS_WHY_MAX, "%s", row->why);
        return true;
    }
    if (row->mode == EG_BS_KEYGEN && !b->keygen_ok) {
        snprintf(why, EG_BS_WHY_MAX, "token-generated keys need %s, which token '%s' lacks",
                 b->keygen_missing, eg_token_label(b->tok));
        return true;
    }
    return !eg_bs_names_ok(&b->issuer, row, why);
}

int eg_bs_row_run(eg_bs_batch *b, const eg_bs_row *row, char *why)
{
    struct request q;
    eg_bs_record rec;
    int rc;

    memset(&q, 0, sizeof(q));
    memset(&rec, 0, sizeof(rec));
    if (refused_early(b, row, why))
        return EG_EXIT_DATAERR;
    rc = row->mode == EG_BS_CSR ? csr_request(row, &q, why) : keygen_request(row, &q, why);
    if (rc != EG_EXIT_OK || (rc = eg_bs_state_get(b->state, row->serial, &rec)) != EG_EXIT_OK)
        goto out;
    if (rec.phase != EG_BS_NONE && memcmp(rec.request, q.sha256, sizeof(q.sha256)) != 0) {
        snprintf(why, EG_BS_WHY_MAX, "serial already %s for a different %s; not reissued",
                 rec.phase == EG_BS_ISSUED ? "issued" : "being issued",
                 row->mode == EG_BS_CSR ? "CSR" : "request");
        rc = EG_EXIT_DATAERR;
        goto out;
    }
    if (rec.phase == EG_BS_ISSUED && changed(b, row, &rec, why)) {
        rc = EG_EXIT_DATAERR;
        goto out;
    }
    if (rec.phase == EG_BS_ISSUED) {
        if ((rc = deliver(b, row, rec.cert, rec.certlen, rec.wrapped, rec.wrappedlen)) ==
            EG_EXIT_OK)
            b->already++;
        goto out;
    }
    if ((rc = issue(b, row, &q, &rec, why)) == EG_EXIT_OK)
        b->issued++;
out:
    request_clear(&q);
    eg_bs_record_clear(&rec);
    return rc;
}
