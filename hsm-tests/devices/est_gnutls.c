/*
 * An EST device client on GnuTLS 3.7, the TLS stack of many Linux laptops and
 * supplicant-side tools: TLS 1.3 by default (--tls12 for 1.2 only), its own
 * key generation and libtasn1-written CSR, none of OpenSSL. With --bind it
 * puts its own view of the connection's channel binding in the CSR's
 * challengePassword, as RFC 7030 3.5 asks: tls-exporter on TLS 1.3 (RFC
 * 9266), tls-unique on TLS 1.2. test_devices drives it against a real
 * estgated; nothing here is estgate code. Usage: device.h. It says on stderr
 * which TLS it got ("est_gnutls: (TLS1.3)-...").
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "device.h"

static const char prog[] = "est_gnutls";

typedef struct device {
    gnutls_certificate_credentials_t cred;
    gnutls_session_t s;
    gnutls_x509_privkey_t key;
    gnutls_x509_crq_t crq;
    int fd;
} device;

static int fail(const char *what, int err)
{
    return dev_fail(prog, what, err != 0 ? gnutls_strerror(err) : NULL);
}

static int tcp_connect(const dev_opts *o)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int fd = -1;

    if (getaddrinfo(o->host, o->port, &hints, &ai) != 0)
        return dev_fail(prog, "cannot resolve", o->host);
    if ((fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol)) < 0 ||
        connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (fd >= 0)
            close(fd);
        fd = dev_fail(prog, "connect", o->port);
    }
    freeaddrinfo(ai);
    return fd;
}

static int tls_open(device *d, const dev_opts *o)
{
    const char *prio = o->tls12 ? "NORMAL:-VERS-ALL:+VERS-TLS1.2" : "NORMAL";
    char *desc;
    int r;

    if ((r = gnutls_certificate_allocate_credentials(&d->cred)) < 0)
        return fail("credentials", r);
    if ((r = gnutls_certificate_set_x509_trust_file(d->cred, o->ca, GNUTLS_X509_FMT_PEM)) <= 0)
        return fail("reading the CA file", r);
    if (o->cert != NULL && (r = gnutls_certificate_set_x509_key_file(d->cred, o->cert, o->key,
                                                                     GNUTLS_X509_FMT_PEM)) < 0)
        return fail("the client certificate or key", r);
    if ((r = gnutls_init(&d->s, GNUTLS_CLIENT)) < 0 ||
        (r = gnutls_priority_set_direct(d->s, prio, NULL)) < 0 ||
        (r = gnutls_credentials_set(d->s, GNUTLS_CRD_CERTIFICATE, d->cred)) < 0 ||
        (r = gnutls_server_name_set(d->s, GNUTLS_NAME_DNS, "localhost", 9)) < 0)
        return fail("TLS setup", r);
    gnutls_session_set_verify_cert(d->s, "localhost", 0);
    if ((d->fd = tcp_connect(o)) < 0)
        return -1;
    gnutls_transport_set_int(d->s, d->fd);
    do
        r = gnutls_handshake(d->s);
    while (r < 0 && !gnutls_error_is_fatal(r));
    if (r < 0)
        return fail("TLS handshake", r);
    if ((desc = gnutls_session_get_desc(d->s)) != NULL) {
        fprintf(stderr, "%s: %s\n", prog, desc);
        gnutls_free(desc);
    }
    return 0;
}

/* The key the CSR certifies: new (written as PEM to o->new_key) or read from o->csr_key. */
static int csr_key(device *d, const dev_opts *o)
{
    gnutls_datum_t pem = {NULL, 0};
    int r, rsa = strcmp(o->key_type, "rsa") == 0;
    FILE *f;

    if ((r = gnutls_x509_privkey_init(&d->key)) < 0)
        return fail("key", r);
    if (o->csr_key != NULL) {
        if ((r = gnutls_load_file(o->csr_key, &pem)) < 0 ||
            (r = gnutls_x509_privkey_import(d->key, &pem, GNUTLS_X509_FMT_PEM)) < 0)
            fail("reading the CSR's key", r);
        gnutls_free(pem.data);
        return r < 0 ? -1 : 0;
    }
    r = gnutls_x509_privkey_generate(d->key, rsa ? GNUTLS_PK_RSA : GNUTLS_PK_ECDSA,
                                     rsa ? 2048 : GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1),
                                     0);
    if (r < 0 || (r = gnutls_x509_privkey_export2(d->key, GNUTLS_X509_FMT_PEM, &pem)) < 0)
        return fail("key generation", r);
    if ((f = fopen(o->new_key, "w")) == NULL || fwrite(pem.data, 1, pem.size, f) != pem.size ||
        fclose(f) != 0)
        r = dev_fail(prog, "cannot write the new key's file", o->new_key);
    gnutls_free(pem.data);
    return r < 0 ? -1 : 0;
}

/* challengePassword: base64 of this connection's tls-exporter (1.3) or tls-unique (1.2). */
static int bind_csr(device *d)
{
    int tls13 = gnutls_protocol_get_version(d->s) == GNUTLS_TLS1_3;
    gnutls_datum_t cb = {NULL, 0};
    char b64[128];
    int r;

    if ((r = gnutls_session_channel_binding(
             d->s, tls13 ? GNUTLS_CB_TLS_EXPORTER : GNUTLS_CB_TLS_UNIQUE, &cb)) < 0)
        return fail("channel binding", r);
    r = dev_b64(cb.data, cb.size, b64, sizeof(b64)) < 0
            ? -1
            : gnutls_x509_crq_set_challenge_password(d->crq, b64);
    gnutls_free(cb.data);
    return r < 0 ? fail("challengePassword", r) : 0;
}

/* The CSR, DER, in *der (gnutls_free). */
static int make_csr(device *d, const dev_opts *o, gnutls_datum_t *der)
{
    const char *cn = o->cn != NULL ? o->cn : "device";
    int r;

    if (csr_key(d, o) != 0)
        return -1;
    if ((r = gnutls_x509_crq_init(&d->crq)) < 0 ||
        (r = gnutls_x509_crq_set_version(d->crq, 1)) < 0 ||
        (r = gnutls_x509_crq_set_dn_by_oid(d->crq, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
                                           (unsigned)strlen(cn))) < 0 ||
        (r = gnutls_x509_crq_set_key(d->crq, d->key)) < 0 ||
        (r = gnutls_x509_crq_set_key_usage(d->crq, GNUTLS_KEY_DIGITAL_SIGNATURE)) < 0)
        return fail("CSR", r);
    if (o->dns != NULL &&
        (r = gnutls_x509_crq_set_subject_alt_name(d->crq, GNUTLS_SAN_DNSNAME, o->dns,
                                                  (unsigned)strlen(o->dns), GNUTLS_FSAN_SET)) < 0)
        return fail("CSR subjectAltName", r);
    if (o->bind && bind_csr(d) != 0)
        return -1;
    if ((r = gnutls_x509_crq_sign2(d->crq, d->key, GNUTLS_DIG_SHA256, 0)) < 0 ||
        (r = gnutls_x509_crq_export2(d->crq, GNUTLS_X509_FMT_DER, der)) < 0)
        return fail("signing the CSR", r);
    return 0;
}

static int tls_write(void *tls, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = gnutls_record_send(tls, p, n);

        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
            continue;
        if (r < 0)
            return fail("TLS write", (int)r);
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int tls_read(void *tls, unsigned char *p, size_t cap, size_t *got)
{
    ssize_t r;

    do
        r = gnutls_record_recv(tls, p, cap);
    while (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED);
    /* The request said Connection: close; a close without close_notify still ends the answer. */
    if (r == GNUTLS_E_PREMATURE_TERMINATION)
        r = 0;
    if (r < 0)
        return fail("TLS read", (int)r);
    *got = (size_t)r;
    return 0;
}

static int run(device *d, const dev_opts *o)
{
    gnutls_datum_t csr = {NULL, 0};
    dev_io io = {NULL, tls_write, tls_read};
    int rc = -1;

    if (o->suites != NULL || o->max_fragment != NULL)
        return dev_fail(prog, "--suites, --max-fragment", "only est_mbedtls offers them");
    if (tls_open(d, o) != 0 ||
        ((o->new_key != NULL || o->csr_key != NULL) && make_csr(d, o, &csr) != 0))
        goto out;
    io.tls = d->s;
    if (dev_exchange(prog, &io, o, csr.data, csr.size) != 0)
        goto out;
    gnutls_bye(d->s, GNUTLS_SHUT_WR);
    rc = 0;
out:
    gnutls_free(csr.data);
    return rc;
}

int main(int argc, char **argv)
{
    device d = {.fd = -1};
    dev_opts o;
    int rc;

    if (dev_parse(prog, argc, argv, &o) != 0)
        return 2;
    rc = run(&d, &o) == 0 ? 0 : 1;
    if (d.crq != NULL)
        gnutls_x509_crq_deinit(d.crq);
    if (d.key != NULL)
        gnutls_x509_privkey_deinit(d.key);
    if (d.s != NULL)
        gnutls_deinit(d.s);
    if (d.cred != NULL)
        gnutls_certificate_free_credentials(d.cred);
    if (d.fd >= 0)
        close(d.fd);
    return rc;
}
