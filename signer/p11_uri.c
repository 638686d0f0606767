/* RFC 7512 PKCS#11 URI parsing and formatting. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "errors.h"
#include "p11_uri.h"

/* Percent-decodes [s, s+n) into a NUL-terminated buffer; *outlen excludes the NUL. */
static int pct_decode(const char *s, size_t n, uint8_t **out, size_t *outlen)
{
    uint8_t *buf = OPENSSL_malloc(n + 1);
    size_t i, o = 0;
    int rc = -1;

    if (buf == NULL)
        goto out;
    for (i = 0; i < n; i++) {
        if (s[i] != '%') {
            buf[o++] = (uint8_t)s[i];
            continue;
        }
        if (i + 2 >= n) /* a '%' needs two hex digits */
            goto out;
        int hi = OPENSSL_hexchar2int((unsigned char)s[i + 1]),
            lo = OPENSSL_hexchar2int((unsigned char)s[i + 2]);
        if (hi < 0 || lo < 0)
            goto out;
        buf[o++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    buf[o] = 0;
    *out = buf;
    *outlen = o;
    buf = NULL;
    rc = 0;
out:
    OPENSSL_free(buf);
    return rc;
}

static char **path_field(eg_p11_uri *u, const char *name, size_t n)
{
#define FIELD(str, member)                                                                         \
    if (n == sizeof(str) - 1 && memcmp(name, str, n) == 0)                                         \
        return &u->member;
    FIELD("token", token)
    FIELD("manufacturer", manufacturer)
    FIELD("serial", serial)
    FIELD("model", model)
    FIELD("object", object)
    FIELD("type", type)
#undef FIELD
    return NULL;
}

/* Attributes we accept but do not match on: they describe the library or slot. */
static int ignorable_attr(const char *name, size_t n)
{
    return (n > 8 && memcmp(name, "library-", 8) == 0) || (n > 5 && memcmp(name, "slot-", 5) == 0);
}

static int parse_attr(eg_p11_uri *u, const char *a, size_t n, int query)
{
    const char *eq = memchr(a, '=', n);
    size_t nlen, vlen;
    uint8_t *val = NULL;
    char **field = NULL;

    if (eq == NULL || eq == a) {
        eg_signer_error(EG_R_BAD_URI, "attribute '%.*s' has no name=value", (int)n, a);
        return -1;
    }
    nlen = (size_t)(eq - a);
    if (pct_decode(eq + 1, n - nlen - 1, &val, &vlen) != 0) {
        eg_signer_error(EG_R_BAD_URI, "bad percent-encoding in '%.*s'", (int)n, a);
        return -1;
    }
    if (!query && nlen == 2 && memcmp(a, "id", 2) == 0) {
        if (u->id != NULL)
            goto dup;
        u->id = val;
        u->idlen = vlen;
        return 0;
    }
    if (query && nlen == 10 && memcmp(a, "pin-source", 10) == 0)
        field = &u->pin_source;
    else if (query && nlen == 11 && memcmp(a, "module-path", 11) == 0)
        field = &u->module_path;
    else if (!query)
        field = path_field(u, a, nlen);
    if (field == NULL) {
        OPENSSL_free(val);
        if (query || ignorable_attr(a, nlen))
            return 0; /* RFC 7512: unknown query attributes are ignored */
        eg_signer_error(EG_R_BAD_URI, "unknown path attribute '%.*s'", (int)nlen, a);
        return -1;
    }
    if (*field != NULL)
        goto dup;
    if (memchr(val, 0, vlen) != NULL) {
        OPENSSL_free(val);
        eg_signer_error(EG_R_BAD_URI, "NUL byte in '%.*s'", (int)nlen, a);
        return -1;
    }
    *field = (char *)val;
    return 0;
dup:
    OPENSSL_free(val);
    eg_signer_error(EG_R_BAD_URI, "attribute '%.*s' given twice", (int)nlen, a);
    return -1;
}

static int parse_list(eg_p11_uri *u, const char *s, size_t n, char sep, int query)
{
    while (n > 0) {
        const char *end = memchr(s, sep, n);
        size_t len = end ? (size_t)(end - s) : n;

        if (len > 0 && parse_attr(u, s, len, query) != 0)
            return -1;
        s += len;
        n -= len;
        if (n > 0) {
            s++;
            n--;
        }
    }
    return 0;
}

int eg_p11_uri_parse(const char *s, eg_p11_uri **out)
{
    eg_p11_uri *u = NULL;
    const char *q;
    int rc = -1;

    if (s == NULL || strncasecmp(s, "pkcs11:", 7) != 0) {
        eg_signer_error(EG_R_BAD_URI, "not a pkcs11: URI");
        goto out;
    }
    s += 7;
    if ((u = OPENSSL_zalloc(sizeof(*u))) == NULL)
        goto out;
    q = strchr(s, '?');
    if (parse_list(u, s, q ? (size_t)(q - s) : strlen(s), ';', 0) != 0)
        goto out;
    if (q != NULL && parse_list(u, q + 1, strlen(q + 1), '&', 1) != 0)
        goto out;
    if (u->type != NULL && strcmp(u->type, "private") != 0 && strcmp(u->type, "public") != 0 &&
        strcmp(u->type, "cert") != 0 && strcmp(u->type, "secret-key") != 0 &&
        strcmp(u->type, "data") != 0) {
        eg_signer_error(EG_R_BAD_URI, "unknown object type '%s'", u->type);
        goto out;
    }
    *out = u;
    u = NULL;
    rc = 0;
out:
    eg_p11_uri_free(u);
    return rc;
}

void eg_p11_uri_free(eg_p11_uri *u)
{
    if (u == NULL)
        return;
    OPENSSL_free(u->token);
    OPENSSL_free(u->manufacturer);
    OPENSSL_free(u->serial);
    OPENSSL_free(u->model);
    OPENSSL_free(u->object);
    OPENSSL_free(u->id);
    OPENSSL_free(u->type);
    if (u->pin_source != NULL)
        OPENSSL_cleanse(u->pin_source, strlen(u->pin_source));
    OPENSSL_free(u->pin_source);
    OPENSSL_free(u->module_path);
    OPENSSL_free(u);
}

static size_t pct_encode(char *dst, const uint8_t *src, size_t n, int all)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i, o = 0;

    for (i = 0; i < n; i++) {
        if (!all && (isalnum(src[i]) || strchr("-._~", src[i]) != NULL) && src[i] != 0) {
            dst[o++] = (char)src[i];
        } else {
            dst[o++] = '%';
            dst[o++] = hex[src[i] >> 4];
            dst[o++] = hex[src[i] & 15];
        }
    }
    return o;
}

char *eg_p11_uri_format(const char *token, const char *object, const uint8_t *id, size_t idlen,
                        const char *type)
{
    size_t cap = 7 + 1, o;
    char *s;

    cap += token ? 7 + 3 * strlen(token) : 0;
    cap += object ? 8 + 3 * strlen(object) : 0;
    cap += id ? 4 + 3 * idlen : 0;
    cap += type ? 6 + strlen(type) : 0;
    if ((s = OPENSSL_malloc(cap)) == NULL)
        return NULL;
    memcpy(s, "pkcs11:", 7);
    o = 7;
#define PUT(name, p, n, all)                                                                       \
    do {                                                                                           \
        if (o > 7)                                                                                 \
            s[o++] = ';';                                                                          \
        memcpy(s + o, name "=", sizeof(name));                                                     \
        o += sizeof(name);                                                                         \
        o += pct_encode(s + o, (const uint8_t *)(p), n, all);                                      \
    } while (0)
    if (token)
        PUT("token", token, strlen(token), 0);
    if (object)
        PUT("object", object, strlen(object), 0);
    if (id)
        PUT("id", id, idlen, 1);
    if (type)
        PUT("type", type, strlen(type), 0);
#undef PUT
    s[o] = 0;
    return s;
}
