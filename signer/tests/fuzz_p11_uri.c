/*
 * Fuzz target: PKCS#11 URIs as an operator writes them (estgated.ini's
 * ca_key, tls_key and serverkeygen_kek, estgate-provision's key options).
 * Besides not crashing: a refusal leaves its reason on OpenSSL's error stack,
 * and a URI that parses, formatted again from its token, object, id and type
 * (eg_p11_uri_format), parses to the same four.
 * Built by eg_fuzz_target (top CMakeLists.txt); see docs/fuzzing.md.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include "p11_uri.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static int same_id(const eg_p11_uri *a, const eg_p11_uri *b)
{
    return (a->id == NULL) == (b->id == NULL) && a->idlen == b->idlen &&
           (a->idlen == 0 || memcmp(a->id, b->id, a->idlen) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *again_text = NULL;
    eg_p11_uri *uri = NULL, *again = NULL;

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    ERR_clear_error();
    if (eg_p11_uri_parse(text, &uri) != 0) {
        if (ERR_peek_error() == 0)
            abort(); /* a refusal always says why */
        ERR_clear_error();
        free(text);
        return 0;
    }
    again_text = eg_p11_uri_format(uri->token, uri->object, uri->id, uri->idlen, uri->type);
    if (again_text == NULL || eg_p11_uri_parse(again_text, &again) != 0 ||
        !same_str(uri->token, again->token) || !same_str(uri->object, again->object) ||
        !same_str(uri->type, again->type) || !same_id(uri, again))
        abort();
    eg_p11_uri_free(again);
    eg_p11_uri_free(uri);
    OPENSSL_free(again_text);
    free(text);
    return 0;
}
