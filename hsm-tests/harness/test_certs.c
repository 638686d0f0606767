#include <stdio.h>
#include <time.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "test_certs.h"

X509 *eg_test_self_signed(EVP_PKEY *key, const char *cn, bool ca, time_t now)
{
    static const char *const ca_exts[][2] = {{"basicConstraints", "critical,CA:TRUE"},
                                             {"keyUsage", "critical,keyCertSign,cRLSign"},
                                             {"subjectKeyIdentifier", "hash"}};
    static const char *const leaf_exts[][2] = {{"basicConstraints", "CA:FALSE"}};
    const char *const(*exts)[2] = ca ? ca_exts : leaf_exts;
    size_t n = ca ? sizeof(ca_exts) / sizeof(ca_exts[0]) : 1;
    X509 *x = X509_new(), *ret = NULL;
    X509_NAME *name = X509_NAME_new();
    X509_EXTENSION *ext;
    X509V3_CTX v3;
    int added;

    if (x == NULL || name == NULL ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                   0) != 1 ||
        X509_set_version(x, X509_VERSION_3) != 1 ||
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1) != 1 || X509_set_subject_name(x, name) != 1 ||
        X509_set_issuer_name(x, name) != 1 ||
        ASN1_TIME_set(X509_getm_notBefore(x), now - EG_TEST_CERT_BACK_S) == NULL ||
        ASN1_TIME_set(X509_getm_notAfter(x), now + EG_TEST_CERT_AHEAD_S) == NULL ||
        X509_set_pubkey(x, key) != 1)
        goto out;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    for (size_t i = 0; i < n; i++) {
        if ((ext = X509V3_EXT_nconf(NULL, &v3, exts[i][0], exts[i][1])) == NULL)
            goto out;
        added = X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
        if (added != 1)
            goto out;
    }
    if (X509_sign(x, key, EVP_sha256()) <= 0)
        goto out;
    ret = x;
    x = NULL;
out:
    X509_NAME_free(name);
    X509_free(x);
    return ret;
}

int eg_test_self_signed_append(const char *path, EVP_PKEY *key, const char *cn, bool ca)
{
    X509 *x = eg_test_self_signed(key, cn, ca, time(NULL));
    FILE *f = x != NULL ? fopen(path, "a") : NULL;
    int ok = f != NULL && PEM_write_X509(f, x) == 1;

    if (f != NULL && fclose(f) != 0)
        ok = 0;
    X509_free(x);
    return ok ? 0 : -1;
}
