/*
 * Writing DER by hand, for the few structures estgated builds around bytes
 * it already has (a certificate, token ciphertext, a CSR attribute template)
 * where OpenSSL's ASN.1 would decode and re-encode them.
 */
#ifndef EG_DER_H
#define EG_DER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    EG_DER_INTEGER = 0x02,
    EG_DER_BIT_STRING = 0x03,
    EG_DER_OCTET_STRING = 0x04,
    EG_DER_NULL = 0x05,
    EG_DER_OID = 0x06,
    EG_DER_UTF8STRING = 0x0c,
    EG_DER_SEQUENCE = 0x30,
    EG_DER_SET = 0x31,
    EG_DER_CTX0 = 0x80, /* [0] IMPLICIT, primitive */
    EG_DER_CTX0_C = 0xa0,
    EG_DER_CTX1_C = 0xa1,
    EG_DER_CTX2_C = 0xa2,
};

/* Identifier and length octets for n content octets into out; the number written (2 to 10). */
size_t eg_der_header(uint8_t out[10], uint8_t tag, size_t n);

/*
 * A DER encoding under construction (OPENSSL_malloc'd). The first failure
 * sticks in bad, so callers check once, at eg_der_finish.
 */
typedef struct eg_der {
    uint8_t *p;
    size_t len;
    bool bad;
} eg_der;

void eg_der_put(eg_der *d, const void *src, size_t n);
/* A whole TLV: tag, length, then n content octets from src. */
void eg_der_tlv(eg_der *d, uint8_t tag, const void *src, size_t n);
/* Makes everything in d from offset from the content of one tag (built inside out). */
void eg_der_wrap_from(eg_der *d, size_t from, uint8_t tag);
/* Appends child as the content of one tag, and frees child (built outside in). */
void eg_der_wrap(eg_der *d, uint8_t tag, eg_der *child);
/* An INTEGER of the big-endian unsigned value v (leading zeros dropped, a sign octet added). */
void eg_der_uint(eg_der *d, const uint8_t *v, size_t len);
/* Hands the encoding over (*out NULL and 0 when it is empty), or -1; d is empty after either. */
int eg_der_finish(eg_der *d, uint8_t **out, size_t *len);
void eg_der_free(eg_der *d);

#endif
