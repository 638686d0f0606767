/*
 * Fuzz target: what a device reads from a trust bundle before it trusts it.
 * The input is taken as the signed manifest (estgate_bundle_verify, which
 * must refuse it with a reason: nobody here signed it) and as manifest text
 * (estgate_bundle_manifest_parse). A manifest that parses must format back to
 * exactly the same bytes: the strict parser gives one manifest one reading.
 * Built by eg_fuzz_target (top CMakeLists.txt); see docs/fuzzing.md.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "estgate_bundle.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static STACK_OF(X509) * trusted;

/* A self-signed signer nobody used: the device's trust, which no input can satisfy. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();

    if (key == NULL || x == NULL || name == NULL ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   (const unsigned char *)"fuzz bundle signer", -1, -1, 0) != 1 ||
        X509_set_version(x, X509_VERSION_3) != 1 ||
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1) != 1 || X509_set_subject_name(x, name) != 1 ||
        X509_set_issuer_name(x, name) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), -86400) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 3650) == NULL ||
        X509_set_pubkey(x, key) != 1 || X509_sign(x, key, EVP_sha256()) <= 0 ||
        (trusted = sk_X509_new_null()) == NULL || sk_X509_push(trusted, x) <= 0)
        abort();
    X509_NAME_free(name);
    EVP_PKEY_free(key);
    return 0;
}

static void signed_manifest(const uint8_t *data, size_t size)
{
    static const unsigned char none[1];
    estgate_bundle_files files = {
        .manifest_cms = data, .manifest_cms_len = size, .pem = none, .p7b = none};
    estgate_bundle_policy pol = {.trusted = trusted, .now = time(NULL)};
    estgate_bundle_verified *v = NULL;
    char why[256] = "";

    if (estgate_bundle_verify(&files, &pol, &v, why, sizeof(why)) == ESTGATE_BUNDLE_OK ||
        why[0] == '\0')
        abort();
}

static void manifest_text(const uint8_t *data, size_t size)
{
    estgate_bundle_manifest m, again;
    char why[256] = "", *text;
    size_t len;

    if (estgate_bundle_manifest_parse(data, size, &m, why, sizeof(why)) != ESTGATE_BUNDLE_OK) {
        if (why[0] == '\0')
            abort();
        return;
    }
    if ((text = estgate_bundle_manifest_format(&m, &len)) == NULL || len != size ||
        memcmp(text, data, size) != 0 ||
        estgate_bundle_manifest_parse((const unsigned char *)text, len, &again, NULL, 0) !=
            ESTGATE_BUNDLE_OK)
        abort();
    OPENSSL_free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    signed_manifest(data, size);
    manifest_text(data, size);
    return 0;
}
