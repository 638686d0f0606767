/* RFC 7512 PKCS#11 URIs: "pkcs11:token=CA;object=ca-key;id=%01;type=private". */
#ifndef EG_P11_URI_H
#define EG_P11_URI_H

#include "signer.h"

struct eg_p11_uri {
    char *token;        /* token label */
    char *manufacturer; /* token manufacturer */
    char *serial;       /* token serial */
    char *model;        /* token model */
    char *object;       /* CKA_LABEL */
    uint8_t *id;        /* CKA_ID, percent-decoded */
    size_t idlen;
    char *type;        /* "private", "public", "cert", "secret-key", "data" */
    char *pin_source;  /* query: pin-source (a file path or file: URI) */
    char *module_path; /* query: module-path */
};

/* Parses s; returns 0 and *out on success, -1 with an error on the stack otherwise. */
int eg_p11_uri_parse(const char *s, eg_p11_uri **out);
void eg_p11_uri_free(eg_p11_uri *uri);
/*
 * Formats token/object/id/type as a URI, percent-encoding as RFC 7512 asks.
 * The caller frees the result with OPENSSL_free(); NULL on allocation failure.
 */
char *eg_p11_uri_format(const char *token, const char *object, const uint8_t *id, size_t idlen,
                        const char *type);

#endif
