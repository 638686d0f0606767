#include <openssl/err.h>
#include <openssl/pem.h>

#include "pem.h"

STACK_OF(X509) * eg_pem_read_certs(const char *path)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    BIO *in = BIO_new_file(path, "r");
    X509 *x;

    while (sk != NULL && in != NULL && (x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL) {
        if (sk_X509_push(sk, x) <= 0)
            X509_free(x);
    }
    ERR_clear_error(); /* the end of the file reads as an error */
    BIO_free(in);
    if (sk_X509_num(sk) <= 0) {
        sk_X509_free(sk);
        return NULL;
    }
    return sk;
}
