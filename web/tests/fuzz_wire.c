/*
 * Fuzz target: what a client's bytes meet first, before any token work.
 * The same input is taken as a request body (eg_wire_decode_body: base64 with
 * or without line breaks, PEM), as an Authorization header
 * (eg_auth_parse_basic) and as a Content-Type. Besides not crashing, a body
 * that decodes must come back the same through eg_wire_encode_body.
 * Built by eg_fuzz_target (top CMakeLists.txt); see docs/fuzzing.md.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void body(const uint8_t *data, size_t size)
{
    uint8_t *der = NULL, *b64 = NULL, *again = NULL;
    size_t der_len, b64_len, again_len;
    char why[256] = "";

    if (eg_wire_decode_body(data, size, &der, &der_len, why, sizeof(why)) != 0) {
        if (why[0] == '\0')
            abort(); /* a refusal always says why */
        return;
    }
    if (eg_wire_encode_body(der, der_len, &b64, &b64_len) != 0 ||
        eg_wire_decode_body(b64, b64_len, &again, &again_len, why, sizeof(why)) != 0 ||
        again_len != der_len || memcmp(again, der, der_len) != 0)
        abort();
    free(der);
    free(b64);
    free(again);
}

static void header(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *user = NULL, *password = NULL, why[256];

    if (text == NULL)
        return;
    memcpy(text, data, size);
    text[size] = '\0';
    if (eg_auth_parse_basic(text, &user, &password, why, sizeof(why)) == 0) {
        if (user == NULL || password == NULL || strchr(user, ':') != NULL)
            abort(); /* the user ends at the first colon (RFC 7617) */
        free(user);
        OPENSSL_clear_free(password, strlen(password));
    }
    (void)eg_wire_media_is(text, "application/pkcs10");
    (void)eg_wire_enroll_type_ok(text);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    body(data, size);
    header(data, size);
    return 0;
}
