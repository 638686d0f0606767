/*
 * CPU per request read: OpenSSL's d2i_X509_REQ + X509_REQ_verify against the
 * appliance's reader (appliance/csr.c) + eg_csr_verify, on the same P-256
 * and RSA-2048 requests, one thread, the layers taking turns in slices.
 *
 * usage: bench_csr [seconds per layer and key]   (default 2)
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "bench_util.h"
#include "csr.h"

#define SLICES 5

static unsigned char *make_csr(EVP_PKEY *key, int *len)
{
    X509_REQ *req = X509_REQ_new();
    unsigned char *der = NULL;

    *len = -1;
    if (req != NULL && X509_REQ_set_pubkey(req, key) == 1 &&
        X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_UTF8,
                                   (const unsigned char *)"bench.example.com", -1, -1, 0) == 1 &&
        X509_REQ_sign(req, key, EVP_sha256()) > 0)
        *len = i2d_X509_REQ(req, &der);
    X509_REQ_free(req);
    return der;
}

/* One read of der by OpenSSL (ossl) or the appliance; 0 when it parsed and verified. */
static int read_once(const unsigned char *der, int len, int ossl, int verify)
{
    const unsigned char *p = der;
    X509_REQ *req;
    eg_csr *csr;
    int ok;

    if (ossl) {
        req = d2i_X509_REQ(NULL, &p, len);
        ok = req != NULL && (!verify || X509_REQ_verify(req, X509_REQ_get0_pubkey(req)) == 1);
        X509_REQ_free(req);
        return ok ? 0 : -1;
    }
    if (eg_csr_parse(der, (size_t)len, &csr) != 0)
        return -1;
    ok = !verify || eg_csr_verify(csr) == 1;
    eg_csr_free(csr);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    static const char *layers[] = {"OpenSSL d2i_X509_REQ", "appliance eg_csr_parse"};
    const char *names[] = {"P-256", "RSA-2048"};
    EVP_PKEY *keys[2] = {EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"),
                         EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)};
    double secs = argc > 1 ? atof(argv[1]) : 2.0, spent[2][2][2] = {{{0}}};
    unsigned long done[2][2][2] = {{{0}}};
    int k, l, v, s, rc = 0;

    printf("| key | layer | parse only us | parse+verify us |\n|---|---|---|---|\n");
    for (k = 0; k < 2 && rc == 0; k++) {
        int len;
        unsigned char *der = keys[k] ? make_csr(keys[k], &len) : NULL;

        if (der == NULL) {
            fprintf(stderr, "bench_csr: cannot make a %s request\n", names[k]);
            rc = 1;
            break;
        }
        for (s = 0; s < SLICES && rc == 0; s++) {
            for (v = 0; v < 2; v++) {
                for (l = 0; l < 2; l++) {
                    double t0 = eg_bench_now(), end = t0 + secs / SLICES / 4;

                    while (eg_bench_now() < end && rc == 0) {
                        rc = read_once(der, len, l == 0, v);
                        done[k][l][v]++;
                    }
                    spent[k][l][v] += eg_bench_now() - t0;
                }
            }
        }
        for (l = 0; l < 2 && rc == 0; l++)
            printf("| %s | %s | %.1f | %.1f |\n", names[k], layers[l],
                   1e6 * spent[k][l][0] / (double)done[k][l][0],
                   1e6 * spent[k][l][1] / (double)done[k][l][1]);
        OPENSSL_free(der);
    }
    EVP_PKEY_free(keys[0]);
    EVP_PKEY_free(keys[1]);
    if (rc != 0)
        fprintf(stderr, "bench_csr: a request did not parse or verify\n");
    return rc;
}
