#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "wire.h"

#define PEM_DASHES "-----"

static bool is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/*
 * What a client sent, for a reason quoted between double quotes: printable (anything else, and
 * '"', as '?') and at most SHOWN_MAX characters, "..." after a longer one. A reason goes to the
 * client, the log line and the ledger's audit row, where a raw control byte could forge a line.
 */
#define SHOWN_MAX 40
static const char *shown(const uint8_t *p, size_t len, char out[SHOWN_MAX + 4])
{
    size_t n;

    for (n = 0; n < len && n < SHOWN_MAX; n++)
        out[n] = isprint(p[n]) && p[n] != '"' ? (char)p[n] : '?';
    if (n < len) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
}

static int b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

static void bad_char(char *why, size_t whylen, uint8_t c, size_t at)
{
    if (isprint(c))
        snprintf(why, whylen, "body is not base64: invalid character '%c' at offset %zu", c, at);
    else
        snprintf(why, whylen, "body is not base64: invalid byte 0x%02x at offset %zu", c, at);
}

/*
 * Whitespace anywhere is skipped (line breaks of any width, CRLF, trailing
 * blanks); padding is optional but nothing may follow it. base is where in
 * to the body starts, so that reasons give the client's own offsets.
 */
static int b64_decode(const uint8_t *in, size_t len, size_t base, uint8_t **out, size_t *out_len,
                      char *why, size_t whylen)
{
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    size_t o = 0, nsym = 0, npad = 0;
    uint32_t acc = 0;
    int bits = 0, rc = -1;

    if (buf == NULL) {
        snprintf(why, whylen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < len; i++) {
        int v = b64_value(in[i]);

        if (is_space(in[i]))
            continue;
        if (in[i] == '=') {
            npad++;
            continue;
        }
        if (v < 0 || npad > 0) {
            if (v < 0)
                bad_char(why, whylen, in[i], base + i);
            else
                snprintf(why, whylen, "body is not base64: data after padding at offset %zu",
                         base + i);
            goto out;
        }
        nsym++;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (nsym == 0) {
        snprintf(why, whylen, "body is empty: expected a base64 PKCS#10 request");
        goto out;
    }
    if (nsym % 4 == 1 || npad > 2 || (npad > 0 && (nsym + npad) % 4 != 0)) {
        snprintf(why, whylen, "body is not base64: truncated (%zu symbols, %zu padding)", nsym,
                 npad);
        goto out;
    }
    *out = buf;
    *out_len = o;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    return rc;
}

static const uint8_t *find_bytes(const uint8_t *hay, size_t len, const char *needle)
{
    return memmem(hay, len, needle, strlen(needle));
}

/*
 * A PEM CSR: the base64 between "-----BEGIN <label>-----" and the matching
 * END line. start is where BEGIN is; the armoured part goes to b64 and b64_len.
 */
static int pem_unarmour(const uint8_t *body, size_t len, size_t start, size_t *b64, size_t *b64_len,
                        char *why, size_t whylen)
{
    static const char *labels[] = {"CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"};
    const uint8_t *p = body + start + strlen(PEM_DASHES "BEGIN ");
    const uint8_t *end = body + len;
    const uint8_t *close = find_bytes(p, (size_t)(end - p), PEM_DASHES);
    char endline[64], seen[SHOWN_MAX + 4];
    const uint8_t *e;
    size_t label_len;

    if (close == NULL) {
        snprintf(why, whylen, "PEM body has no end to its BEGIN line");
        return -1;
    }
    label_len = (size_t)(close - p);
    for (size_t i = 0; i < sizeof(labels) / sizeof(labels[0]); i++) {
        if (label_len != strlen(labels[i]) || memcmp(p, labels[i], label_len) != 0)
            continue;
        snprintf(endline, sizeof(endline), PEM_DASHES "END %s" PEM_DASHES, labels[i]);
        p = close + strlen(PEM_DASHES);
        e = find_bytes(p, (size_t)(end - p), endline);
        if (e == NULL) {
            snprintf(why, whylen, "PEM body has no \"%s\" line", endline);
            return -1;
        }
        for (const uint8_t *t = e + strlen(endline); t < end; t++) {
            if (!is_space(*t)) {
                snprintf(why, whylen, "PEM body has data after its END line at offset %zu",
                         (size_t)(t - body));
                return -1;
            }
        }
        *b64 = (size_t)(p - body);
        *b64_len = (size_t)(e - p);
        return 0;
    }
    snprintf(why, whylen, "PEM body is a \"%s\", not a CERTIFICATE REQUEST",
             shown(p, label_len, seen));
    return -1;
}

/*
 * Whether the body is exactly one DER SEQUENCE with a long-form length, as
 * `curl --data-binary @csr.der` sends it. Base64 text cannot start so: 0x81
 * to 0x83 are not base64 characters, nor whitespace, nor PEM's dashes.
 */
static bool is_binary_der(const uint8_t *b, size_t len)
{
    size_t n, content = 0;

    if (len < 2 || b[0] != 0x30 || b[1] < 0x81 || b[1] > 0x83)
        return false;
    n = b[1] & 0x7fu;
    if (len < 2 + n)
        return false;
    for (size_t i = 0; i < n; i++)
        content = content << 8 | b[2 + i];
    return content == len - 2 - n;
}

int eg_wire_decode_body(const uint8_t *body, size_t len, uint8_t **der, size_t *der_len, char *why,
                        size_t whylen)
{
    size_t start = 0, b64 = 0, b64_len = len;
    const char *begin = PEM_DASHES "BEGIN ";

    if (is_binary_der(body, len)) {
        if ((*der = malloc(len)) == NULL) {
            snprintf(why, whylen, "out of memory");
            return -1;
        }
        memcpy(*der, body, len);
        *der_len = len;
        return 0;
    }

    while (start < len && is_space(body[start]))
        start++;
    if (len - start >= strlen(begin) && memcmp(body + start, begin, strlen(begin)) == 0 &&
        pem_unarmour(body, len, start, &b64, &b64_len, why, whylen) != 0)
        return -1;
    return b64_decode(body + b64, b64_len, b64, der, der_len, why, whylen);
}

/* base64 lines of 64 characters with CRLF into buf (room for (len + 47) / 48 * 66). */
static size_t encode_lines(const uint8_t *der, size_t len, uint8_t *buf)
{
    size_t o = 0;

    /* 48 bytes make one 64-character line; EVP_EncodeBlock adds a NUL we overwrite. */
    for (size_t i = 0; i < len; i += 48) {
        size_t n = len - i < 48 ? len - i : 48;

        o += (size_t)EVP_EncodeBlock(buf + o, der + i, (int)n);
        buf[o++] = '\r';
        buf[o++] = '\n';
    }
    return o;
}

int eg_wire_encode_body(const uint8_t *der, size_t len, uint8_t **out, size_t *out_len)
{
    uint8_t *buf = malloc((len + 47) / 48 * 66 + 1);

    if (buf == NULL)
        return -1;
    *out_len = encode_lines(der, len, buf);
    *out = buf;
    return 0;
}

int eg_wire_multipart(const eg_wire_part *parts, size_t n, bool secure, uint8_t **body, size_t *len,
                      char **ctype)
{
    unsigned char rnd[12];
    char boundary[40];
    uint8_t *buf = NULL;
    size_t cap = 64, o = 0;
    int rc = -1;

    if (n == 0 || RAND_bytes(rnd, sizeof(rnd)) != 1)
        return -1;
    o = (size_t)snprintf(boundary, sizeof(boundary), "estgate-");
    for (size_t i = 0; i < sizeof(rnd); i++)
        o += (size_t)snprintf(boundary + o, sizeof(boundary) - o, "%02x", rnd[i]);
    for (size_t i = 0; i < n; i++)
        cap += 160 + strlen(parts[i].content_type) + (parts[i].len + 47) / 48 * 66 + 1;
    if ((buf = secure ? OPENSSL_secure_malloc(cap) : malloc(cap)) == NULL)
        return -1;
    /* Each part is encoded straight into the body: no other copy of its text exists. */
    o = 0;
    for (size_t i = 0; i < n; i++) {
        o += (size_t)snprintf((char *)buf + o, cap - o,
                              "--%s\r\nContent-Type: %s\r\n" EG_WIRE_CTE_BASE64 "\r\n\r\n",
                              boundary, parts[i].content_type);
        o += encode_lines(parts[i].der, parts[i].len, buf + o);
    }
    o += (size_t)snprintf((char *)buf + o, cap - o, "--%s--\r\n", boundary);
    if ((*ctype = malloc(sizeof(boundary) + 32)) == NULL)
        goto out;
    snprintf(*ctype, sizeof(boundary) + 32, "multipart/mixed; boundary=%s", boundary);
    *body = buf;
    *len = o;
    buf = NULL;
    rc = 0;
out:
    if (secure)
        OPENSSL_secure_clear_free(buf, cap);
    else
        free(buf);
    return rc;
}

bool eg_wire_media_is(const char *content_type, const char *type)
{
    size_t n = strlen(type);
    const char *p = content_type;

    if (p == NULL)
        return false;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, type, n) != 0)
        return false;
    p += n;
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == '\0' || *p == ';';
}

bool eg_wire_enroll_type_ok(const char *content_type)
{
    return eg_wire_media_is(content_type, "application/pkcs10") ||
           eg_wire_media_is(content_type, "application/x-pkcs10") ||
           eg_wire_media_is(content_type, "application/x-pem-file");
}

void eg_wire_enroll_type_refusal(const char *content_type, char *why, size_t whylen)
{
    char seen[SHOWN_MAX + 4];

    /* What the client sent, so that a forgotten -H shows itself. */
    if (content_type == NULL)
        snprintf(why, whylen,
                 "Content-Type must be application/pkcs10 (or application/x-pem-file); "
                 "the request has none");
    else
        snprintf(why, whylen,
                 "Content-Type must be application/pkcs10 (or application/x-pem-file), "
                 "not \"%s\"",
                 shown((const uint8_t *)content_type, strlen(content_type), seen));
}
