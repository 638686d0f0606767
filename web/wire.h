/*
 * EST wire formats (RFC 7030 with RFC 8951): what real clients put in a POST
 * body, and what a response body and its headers look like.
 */
#ifndef EG_WIRE_H
#define EG_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EG_WIRE_CT_CERTS    "application/pkcs7-mime; smime-type=certs-only"
#define EG_WIRE_CT_CSRATTRS "application/csrattrs"
#define EG_WIRE_CT_TEXT     "text/plain; charset=utf-8"
#define EG_WIRE_CTE_BASE64  "Content-Transfer-Encoding: base64"

/*
 * Decodes a request body to DER: base64 whatever the Content-Transfer-Encoding
 * header says (RFC 8951), lines of any width, CRLF or LF, surrounding
 * whitespace, or a PEM CSR ("CERTIFICATE REQUEST" or "NEW CERTIFICATE
 * REQUEST"). A body that is exactly one binary DER SEQUENCE is taken as it
 * is: RFC 8951 wants base64, but clients and scripts send DER, and the two
 * cannot be mistaken for each other. On failure -1 with a reason for the
 * client in why.
 */
int eg_wire_decode_body(const uint8_t *body, size_t len, uint8_t **der, size_t *der_len, char *why,
                        size_t whylen);

/* base64 of der with CRLF after every 64 characters (and at the end). */
int eg_wire_encode_body(const uint8_t *der, size_t len, uint8_t **out, size_t *out_len);

/* One part of a multipart answer: its media type and its DER, sent as base64. */
typedef struct eg_wire_part {
    const char *content_type;
    const uint8_t *der;
    size_t len;
} eg_wire_part;

/*
 * RFC 7030 4.4.2 (serverkeygen): a multipart/mixed body (RFC 2046 5.1.1) of
 * n parts, each with its Content-Type and Content-Transfer-Encoding: base64,
 * with a fresh random boundary, which base64 text cannot contain. *ctype
 * gets the answer's "multipart/mixed; boundary=..." (malloc'd). 0 or -1.
 * With secure, every buffer that holds a part (its base64 included) is in
 * OpenSSL's secure heap and wiped when freed: the body is then for a
 * plaintext private key, and is freed with OPENSSL_secure_clear_free(body, len).
 * Otherwise the body is ordinary heap (free()).
 */
int eg_wire_multipart(const eg_wire_part *parts, size_t n, bool secure, uint8_t **body, size_t *len,
                      char **ctype);

/* Whether a Content-Type header names type (case-insensitive, parameters ignored). */
bool eg_wire_media_is(const char *content_type, const char *type);

/* simpleenroll/simplereenroll: application/pkcs10 (or application/x-pkcs10, the name many
   MIME tables give .p10 files) or application/x-pem-file. */
bool eg_wire_enroll_type_ok(const char *content_type);
/* The 415's reason for a type refused by eg_wire_enroll_type_ok, naming what was sent. */
void eg_wire_enroll_type_refusal(const char *content_type, char *why, size_t whylen);

#endif
