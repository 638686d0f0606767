/*
 * An EST device client on Mbed TLS 2.28, the TLS and X.509 stack of much IoT
 * firmware: TLS 1.2 only (2.28's TLS 1.3 is an experimental build option, off
 * in Debian), its own key generation and ASN.1 writer for the CSR, none of
 * OpenSSL; with --max-fragment it asks for small records, as a device with
 * little RAM does. test_devices drives it against a real estgated; nothing here is
 * estgate code, it is the other side of the wire. Usage: device.h (--bind is
 * not offered: 2.28 has no API for a TLS 1.2 channel binding).
 */
#include <stdio.h>
#include <string.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>

#include "device.h"

static const char prog[] = "est_mbedtls";

/*
 * The bytes from the server as TLS records: the largest record's length, to show the
 * server honours the maximum fragment length the device asked for (RFC 6066).
 */
typedef struct records {
    mbedtls_net_context *net;
    unsigned char head[5];
    size_t have, left, largest;
} records;

typedef struct device {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt ca, cert;
    mbedtls_pk_context key, csr_key;
    mbedtls_net_context net;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    records rec;
} device;

static int fail(const char *what, int err)
{
    char text[200] = "";

    if (err != 0)
        mbedtls_strerror(err, text, sizeof(text));
    return dev_fail(prog, what, text);
}

/* SubjectAltName with one dNSName: SEQUENCE { [2] IA5String }, written backwards. */
static int san_dns(const char *name, unsigned char *buf, size_t cap, unsigned char **der,
                   size_t *len)
{
    unsigned char *p = buf + cap;
    size_t n = strlen(name);
    int r, total;

    if ((r = mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)name, n)) < 0)
        return r;
    total = r;
    if ((r = mbedtls_asn1_write_len(&p, buf, n)) < 0)
        return r;
    total += r;
    if ((r = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2)) < 0)
        return r;
    total += r;
    if ((r = mbedtls_asn1_write_len(&p, buf, (size_t)total)) < 0)
        return r;
    total += r;
    if ((r = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)) < 0)
        return r;
    *der = p;
    *len = (size_t)(total + r);
    return 0;
}

/* A new P-256 or RSA-2048 key in d->csr_key, written as PEM to path. */
static int new_key(device *d, const char *type, const char *path)
{
    unsigned char pem[4096];
    int r, rsa = strcmp(type, "rsa") == 0;
    FILE *f;

    if ((r = mbedtls_pk_setup(&d->csr_key,
                              mbedtls_pk_info_from_type(rsa ? MBEDTLS_PK_RSA : MBEDTLS_PK_ECKEY))))
        return fail("key set-up", r);
    r = rsa ? mbedtls_rsa_gen_key(mbedtls_pk_rsa(d->csr_key), mbedtls_ctr_drbg_random, &d->drbg,
                                  2048, 65537)
            : mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(d->csr_key),
                                  mbedtls_ctr_drbg_random, &d->drbg);
    if (r != 0)
        return fail("key generation", r);
    if ((r = mbedtls_pk_write_key_pem(&d->csr_key, pem, sizeof(pem))) != 0)
        return fail("writing the key", r);
    if ((f = fopen(path, "w")) == NULL || fputs((char *)pem, f) == EOF || fclose(f) != 0)
        return dev_fail(prog, "cannot write the new key's file", path);
    return 0;
}

/* The CSR for the device's key, DER, at the end of buf: *der and *len. */
static int make_csr(device *d, const dev_opts *o, unsigned char *buf, size_t cap,
                    unsigned char **der, size_t *len)
{
    mbedtls_x509write_csr csr;
    unsigned char sanbuf[300], *san;
    char subject[300];
    size_t sanlen;
    int n, r, rc = -1;

    mbedtls_x509write_csr_init(&csr);
    if (o->new_key != NULL) {
        if (new_key(d, o->key_type, o->new_key) != 0)
            goto out;
    } else if ((r = mbedtls_pk_parse_keyfile(&d->csr_key, o->csr_key, NULL)) != 0) {
        fail("reading the CSR's key", r);
        goto out;
    }
    snprintf(subject, sizeof(subject), "CN=%s", o->cn != NULL ? o->cn : "device");
    mbedtls_x509write_csr_set_md_alg(&csr, MBEDTLS_MD_SHA256);
    mbedtls_x509write_csr_set_key(&csr, &d->csr_key);
    if ((r = mbedtls_x509write_csr_set_subject_name(&csr, subject)) != 0 ||
        (r = mbedtls_x509write_csr_set_key_usage(&csr, MBEDTLS_X509_KU_DIGITAL_SIGNATURE)) != 0) {
        fail("CSR subject or key usage", r);
        goto out;
    }
    if (o->dns != NULL &&
        ((r = san_dns(o->dns, sanbuf, sizeof(sanbuf), &san, &sanlen)) != 0 ||
         (r = mbedtls_x509write_csr_set_extension(&csr, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                  MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME),
                                                  san, sanlen)) != 0)) {
        fail("CSR subjectAltName", r);
        goto out;
    }
    if ((n = mbedtls_x509write_csr_der(&csr, buf, cap, mbedtls_ctr_drbg_random, &d->drbg)) < 0) {
        fail("writing the CSR", n);
        goto out;
    }
    *der = buf + cap - n;
    *len = (size_t)n;
    rc = 0;
out:
    mbedtls_x509write_csr_free(&csr);
    return rc;
}

static int send_plain(void *ctx, const unsigned char *buf, size_t len)
{
    return mbedtls_net_send(((records *)ctx)->net, buf, len);
}

static int recv_counted(void *ctx, unsigned char *buf, size_t len)
{
    records *r = ctx;
    int n = mbedtls_net_recv(r->net, buf, len);

    for (int i = 0; i < n; i++) {
        if (r->left > 0) {
            r->left--;
            continue;
        }
        r->head[r->have++] = buf[i];
        if (r->have == sizeof(r->head)) {
            r->left = (size_t)r->head[3] << 8 | r->head[4];
            if (r->left > r->largest)
                r->largest = r->left;
            r->have = 0;
        }
    }
    return n;
}

/* The AEAD suites of a device that knows only one kind of server key. */
static const int rsa_suites[] = {MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                                 MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, 0};
static const int ecdsa_suites[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                                   MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, 0};

static int tls_open(device *d, const dev_opts *o)
{
    int r;

    if ((r = mbedtls_ctr_drbg_seed(&d->drbg, mbedtls_entropy_func, &d->entropy,
                                   (const unsigned char *)prog, sizeof(prog) - 1)) != 0)
        return fail("random generator", r);
    if ((r = mbedtls_x509_crt_parse_file(&d->ca, o->ca)) != 0)
        return fail("reading the CA file", r);
    if ((r = mbedtls_ssl_config_defaults(&d->conf, MBEDTLS_SSL_IS_CLIENT,
                                         MBEDTLS_SSL_TRANSPORT_STREAM,
                                         MBEDTLS_SSL_PRESET_DEFAULT)) != 0)
        return fail("TLS configuration", r);
    mbedtls_ssl_conf_authmode(&d->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&d->conf, &d->ca, NULL);
    mbedtls_ssl_conf_rng(&d->conf, mbedtls_ctr_drbg_random, &d->drbg);
    if (o->suites != NULL)
        mbedtls_ssl_conf_ciphersuites(&d->conf,
                                      strcmp(o->suites, "rsa") == 0 ? rsa_suites : ecdsa_suites);
    /* As a device with little RAM asks: records of at most 1 KiB of plaintext. Mbed TLS 2.28
       cannot put a handshake message split over records back together, so the server's
       certificate chain must then fit in one record. */
    if (o->max_fragment != NULL &&
        (r = mbedtls_ssl_conf_max_frag_len(&d->conf, MBEDTLS_SSL_MAX_FRAG_LEN_1024)) != 0)
        return fail("maximum fragment length", r);
    if (o->cert != NULL && ((r = mbedtls_x509_crt_parse_file(&d->cert, o->cert)) != 0 ||
                            (r = mbedtls_pk_parse_keyfile(&d->key, o->key, NULL)) != 0 ||
                            (r = mbedtls_ssl_conf_own_cert(&d->conf, &d->cert, &d->key)) != 0))
        return fail("the client certificate or key", r);
    if ((r = mbedtls_ssl_setup(&d->ssl, &d->conf)) != 0)
        return fail("TLS setup", r);
    /* 2.28 matches names, not IP addresses: the server's certificate names localhost too. */
    if ((r = mbedtls_ssl_set_hostname(&d->ssl, "localhost")) != 0)
        return fail("server name", r);
    if ((r = mbedtls_net_connect(&d->net, o->host, o->port, MBEDTLS_NET_PROTO_TCP)) != 0)
        return fail("connect", r);
    d->rec.net = &d->net;
    mbedtls_ssl_set_bio(&d->ssl, &d->rec, send_plain, recv_counted, NULL);
    while ((r = mbedtls_ssl_handshake(&d->ssl)) != 0)
        if (r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE)
            return fail("TLS handshake", r);
    fprintf(stderr, "%s: %s %s\n", prog, mbedtls_ssl_get_version(&d->ssl),
            mbedtls_ssl_get_ciphersuite(&d->ssl));
    return 0;
}

static int tls_write(void *tls, const unsigned char *p, size_t n)
{
    while (n > 0) {
        int r = mbedtls_ssl_write(tls, p, n);

        if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        if (r < 0)
            return fail("TLS write", r);
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int tls_read(void *tls, unsigned char *p, size_t cap, size_t *got)
{
    int r;

    do
        r = mbedtls_ssl_read(tls, p, cap);
    while (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE);
    if (r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
        r = 0;
    if (r < 0)
        return fail("TLS read", r);
    *got = (size_t)r;
    return 0;
}

static int run(device *d, const dev_opts *o)
{
    static unsigned char buf[4096];
    unsigned char *csr = NULL;
    size_t len = 0;
    dev_io io = {&d->ssl, tls_write, tls_read};

    if (o->bind)
        return dev_fail(prog, "--bind", "Mbed TLS 2.28 offers no TLS 1.2 channel binding");
    if (tls_open(d, o) != 0 ||
        ((o->new_key != NULL || o->csr_key != NULL) &&
         make_csr(d, o, buf, sizeof(buf), &csr, &len) != 0) ||
        dev_exchange(prog, &io, o, csr, len) != 0)
        return -1;
    mbedtls_ssl_close_notify(&d->ssl);
    fprintf(stderr, "%s: largest record from the server: %zu bytes\n", prog, d->rec.largest);
    return 0;
}

int main(int argc, char **argv)
{
    dev_opts o;
    device d;
    int rc;

    if (dev_parse(prog, argc, argv, &o) != 0)
        return 2;
    mbedtls_entropy_init(&d.entropy);
    mbedtls_ctr_drbg_init(&d.drbg);
    mbedtls_x509_crt_init(&d.ca);
    mbedtls_x509_crt_init(&d.cert);
    mbedtls_pk_init(&d.key);
    mbedtls_pk_init(&d.csr_key);
    mbedtls_net_init(&d.net);
    mbedtls_ssl_config_init(&d.conf);
    mbedtls_ssl_init(&d.ssl);
    rc = run(&d, &o) == 0 ? 0 : 1;
    mbedtls_ssl_free(&d.ssl);
    mbedtls_ssl_config_free(&d.conf);
    mbedtls_net_free(&d.net);
    mbedtls_pk_free(&d.csr_key);
    mbedtls_pk_free(&d.key);
    mbedtls_x509_crt_free(&d.cert);
    mbedtls_x509_crt_free(&d.ca);
    mbedtls_ctr_drbg_free(&d.drbg);
    mbedtls_entropy_free(&d.entropy);
    return rc;
}
