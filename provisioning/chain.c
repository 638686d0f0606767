/* Certificate chains read from PEM files: order and verification. */
#include <errno.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "chain.h"
#include "provision.h"
#include "report.h"

int eg_prov_read_certs(const char *path, STACK_OF(X509) * *out)
{
    STACK_OF(X509) *certs = sk_X509_new_null();
    BIO *in = BIO_new_file(path, "r");
    X509 *x;
    int rc;

    if (in == NULL) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    while (certs != NULL && (x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL) {
        if (sk_X509_push(certs, x) <= 0) {
            X509_free(x);
            break;
        }
    }
    /* The loop ends on "no start line" at the end of the file; anything else is an error. */
    if (ERR_GET_REASON(ERR_peek_last_error()) == PEM_R_NO_START_LINE)
        ERR_clear_error();
    if (certs == NULL || ERR_peek_error() != 0 || sk_X509_num(certs) == 0) {
        rc = eg_prov_fail(EG_EXIT_DATAERR, "%s holds no readable PEM certificates", path);
        goto out;
    }
    *out = certs;
    certs = NULL;
    rc = EG_EXIT_OK;
out:
    sk_X509_pop_free(certs, X509_free);
    BIO_free(in);
    return rc;
}

static int in_stack(STACK_OF(X509) * sk, X509 *x)
{
    int i;

    for (i = 0; i < sk_X509_num(sk); i++) {
        if (X509_cmp(sk_X509_value(sk, i), x) == 0)
            return 1;
    }
    return 0;
}

/* The certificate of certs that issued cur and is not on the path yet, or NULL. */
static X509 *find_issuer(STACK_OF(X509) * certs, STACK_OF(X509) * path, X509 *cur)
{
    int i;

    if (X509_check_issued(cur, cur) == X509_V_OK)
        return NULL; /* self-signed: the top */
    for (i = 0; i < sk_X509_num(certs); i++) {
        X509 *c = sk_X509_value(certs, i);

        if (!in_stack(path, c) && X509_check_issued(c, cur) == X509_V_OK)
            return c;
    }
    return NULL;
}

static int build_path(X509 *leaf, STACK_OF(X509) * certs, STACK_OF(X509) * path)
{
    X509 *cur = leaf;

    do {
        if (!X509_up_ref(cur) || sk_X509_push(path, cur) <= 0) {
            X509_free(cur);
            return -1;
        }
    } while ((cur = find_issuer(certs, path, cur)) != NULL);
    return 0;
}

int eg_prov_chain_order(X509 *leaf, STACK_OF(X509) * certs, STACK_OF(X509) * *out)
{
    STACK_OF(X509) *path = sk_X509_new_null();
    char name[256];
    int i, rc;

    if (path == NULL || build_path(leaf, certs, path) != 0) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    for (i = 0; i < sk_X509_num(certs); i++) {
        X509 *c = sk_X509_value(certs, i);

        if (!in_stack(path, c)) {
            X509_NAME_oneline(X509_get_subject_name(c), name, sizeof(name));
            rc = eg_prov_fail(EG_EXIT_DATAERR,
                              "certificate %d (%s) is not in the chain above "
                              "the CA certificate",
                              i + 1, name);
            goto out;
        }
    }
    *out = path;
    path = NULL;
    rc = EG_EXIT_OK;
out:
    sk_X509_pop_free(path, X509_free);
    return rc;
}

/* Trusts the top of the path; the certificates between it and the leaf are untrusted. */
static int verify_setup(STACK_OF(X509) * path, X509_STORE *store, STACK_OF(X509) * untrusted,
                        X509_STORE_CTX *ctx)
{
    int n = sk_X509_num(path), i;

    if (X509_STORE_add_cert(store, sk_X509_value(path, n - 1)) != 1)
        return -1;
    for (i = 1; i < n - 1; i++) {
        if (sk_X509_push(untrusted, sk_X509_value(path, i)) <= 0)
            return -1;
    }
    /* The top may be an intermediate when the operator has no root to give: trust it as given. */
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    return X509_STORE_CTX_init(ctx, store, sk_X509_value(path, 0), untrusted) == 1 ? 0 : -1;
}

int eg_prov_chain_verify(STACK_OF(X509) * path)
{
    STACK_OF(X509) *untrusted = sk_X509_new_null();
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int rc;

    if (untrusted == NULL || store == NULL || ctx == NULL ||
        verify_setup(path, store, untrusted, ctx) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot set up the chain verification");
        goto out;
    }
    if (X509_verify_cert(ctx) != 1) {
        rc = eg_prov_fail(EG_EXIT_DATAERR, "the chain does not verify: %s",
                          X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        goto out;
    }
    rc = EG_EXIT_OK;
out:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    sk_X509_free(untrusted);
    return rc;
}
