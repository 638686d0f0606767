#include <string.h>

#include <openssl/crypto.h>

#include "der.h"

size_t eg_der_header(uint8_t out[10], uint8_t tag, size_t n)
{
    size_t k = 0, i;

    out[0] = tag;
    if (n < 0x80) {
        out[1] = (uint8_t)n;
        return 2;
    }
    for (i = n; i > 0; i >>= 8)
        k++;
    out[1] = (uint8_t)(0x80 | k);
    for (i = 0; i < k; i++)
        out[2 + i] = (uint8_t)(n >> (8 * (k - 1 - i)));
    return 2 + k;
}

void eg_der_free(eg_der *d)
{
    OPENSSL_free(d->p);
    memset(d, 0, sizeof(*d));
}

/* Inserts n octets at offset at (at == d->len appends). */
static void insert(eg_der *d, size_t at, const void *src, size_t n)
{
    uint8_t *p;

    if (d->bad || n == 0)
        return;
    if (d->len > SIZE_MAX - n || (p = OPENSSL_realloc(d->p, d->len + n)) == NULL) {
        d->bad = true;
        return;
    }
    memmove(p + at + n, p + at, d->len - at);
    memcpy(p + at, src, n);
    d->p = p;
    d->len += n;
}

void eg_der_put(eg_der *d, const void *src, size_t n)
{
    insert(d, d->len, src, n);
}

void eg_der_tlv(eg_der *d, uint8_t tag, const void *src, size_t n)
{
    uint8_t hdr[10];

    eg_der_put(d, hdr, eg_der_header(hdr, tag, n));
    eg_der_put(d, src, n);
}

void eg_der_wrap_from(eg_der *d, size_t from, uint8_t tag)
{
    uint8_t hdr[10];

    if (!d->bad)
        insert(d, from, hdr, eg_der_header(hdr, tag, d->len - from));
}

void eg_der_wrap(eg_der *d, uint8_t tag, eg_der *child)
{
    d->bad |= child->bad;
    eg_der_tlv(d, tag, child->p, child->len);
    eg_der_free(child);
}

void eg_der_uint(eg_der *d, const uint8_t *v, size_t len)
{
    size_t from = d->len;
    uint8_t zero = 0;

    while (len > 1 && v[0] == 0)
        v++, len--;
    if (len == 0 || (v[0] & 0x80) != 0)
        eg_der_put(d, &zero, 1);
    eg_der_put(d, v, len);
    eg_der_wrap_from(d, from, EG_DER_INTEGER);
}

int eg_der_finish(eg_der *d, uint8_t **out, size_t *len)
{
    if (d->bad) {
        eg_der_free(d);
        return -1;
    }
    *out = d->p;
    *len = d->len;
    memset(d, 0, sizeof(*d));
    return 0;
}
