/*
 * What the device clients in hsm-tests/devices share: their command line and
 * one HTTP/1.1 exchange over whatever TLS stack the client is built on. Each
 * client brings its own TLS, key and CSR writer; these parts carry no crypto.
 *
 *   CLIENT CA_PEM HOST PORT PATH [options]
 *     --out FILE                     the answer's body
 *     --user NAME --pass-file FILE   HTTP Basic
 *     --cert PEM --key PEM           a client certificate for TLS
 *     --new-key PEM                  make a key, written here, and POST a CSR for it
 *     --csr-key PEM                  POST a CSR for this existing key
 *     --key-type ec|rsa              the new key's type (P-256 or RSA-2048; ec)
 *     --cn NAME --dns NAME           the CSR's subject CN and its one DNS SAN
 *     --der                          send the CSR as DER, no Content-Transfer-Encoding
 *     --tls12                        offer TLS 1.2 only
 *     --suites rsa|ecdsa             offer only ECDHE-RSA or ECDHE-ECDSA suites (est_mbedtls),
 *                                    as a device that knows one server key type
 *     --max-fragment 1024            ask for records of at most 1 KiB (RFC 6066; est_mbedtls),
 *                                    as a device with little RAM does
 *     --bind                         the connection's channel binding in challengePassword
 *
 * Without --new-key or --csr-key a client sends a GET. It prints the HTTP
 * status on stdout and exits 0 once an answer was read; 1 when the exchange
 * failed (why on stderr), 2 on bad usage.
 */
#ifndef EG_DEVICE_H
#define EG_DEVICE_H

#include <stddef.h>

typedef struct dev_opts {
    const char *ca, *host, *port, *path, *out, *user, *pass_file, *cert, *key;
    const char *new_key, *csr_key, *key_type, *cn, *dns, *suites, *max_fragment;
    int der, tls12, bind;
} dev_opts;

/* The client's TLS connection: write all of p, or read what comes (*got 0 once closed). */
typedef struct dev_io {
    void *tls;
    int (*write)(void *tls, const unsigned char *p, size_t n);
    int (*read)(void *tls, unsigned char *p, size_t cap, size_t *got);
} dev_io;

/* 0, or -1 after printing the usage of prog. */
int dev_parse(const char *prog, int argc, char **argv, dev_opts *o);

/* "prog: what: detail" on stderr; -1. */
int dev_fail(const char *prog, const char *what, const char *detail);

/* Standard base64, one line, NUL-terminated, of at most cap - 1 characters; its length or -1. */
long dev_b64(const unsigned char *in, size_t n, char *out, size_t cap);

/*
 * Sends the request (a POST of csr, csr_len bytes as the body, or a GET when
 * csr is NULL; Basic credentials when o->user is set; Connection: close), reads
 * the answer to its end, writes its body to o->out and prints its status.
 */
int dev_exchange(const char *prog, const dev_io *io, const dev_opts *o, const unsigned char *csr,
                 size_t csr_len);

#endif
