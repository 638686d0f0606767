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
#include "test_certs.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static STACK_OF(X509) * trusted;

/* A self-signed signer nobody used: the device's trust, which no input can satisfy. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x =
        key != NULL ? eg_test_self_signed(key, "fuzz bundle signer", false, time(NULL)) : NULL;

    if (x == NULL || (trusted = sk_X509_new_null()) == NULL || sk_X509_push(trusted, x) <= 0)
        abort();
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
