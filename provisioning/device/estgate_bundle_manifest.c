/*
 * The manifest's text form and its times. The parser is strict (every line,
 * in a fixed order, exactly one space, lowercase hex, LF endings) so that one
 * manifest has exactly one reading: what was signed is what is checked.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "estgate_bundle.h"

#define MAGIC "estgate-trust-bundle-manifest 1"

static void say(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;

    if (why == NULL || whylen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

const char *estgate_bundle_status_name(estgate_bundle_status s)
{
    switch (s) {
    case ESTGATE_BUNDLE_OK:
        return "ok";
    case ESTGATE_BUNDLE_MALFORMED:
        return "malformed";
    case ESTGATE_BUNDLE_UNTRUSTED_SIGNER:
        return "untrusted signer";
    case ESTGATE_BUNDLE_TAMPERED:
        return "tampered";
    case ESTGATE_BUNDLE_EXPIRED:
        return "expired";
    case ESTGATE_BUNDLE_NOT_YET_VALID:
        return "not yet valid";
    case ESTGATE_BUNDLE_ROLLBACK:
        return "rollback";
    case ESTGATE_BUNDLE_INTERNAL:
        return "internal error";
    }
    return "unknown";
}

/* ---- times: proleptic Gregorian calendar, UTC, no dependence on the C library's time zone ---- */

static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

    return m == 2 && leap ? 29 : days[m - 1];
}

/* n digits at s as a number; -1 when one is not a digit. */
static int digits(const char *s, int n)
{
    int v = 0, i;

    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int estgate_bundle_time_parse(const char *s, size_t len, int64_t *out)
{
    int y, mo, d, h, mi, se;

    if (len != 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' ||
        s[19] != 'Z')
        return -1;
    y = digits(s, 4);
    mo = digits(s + 5, 2);
    d = digits(s + 8, 2);
    h = digits(s + 11, 2);
    mi = digits(s + 14, 2);
    se = digits(s + 17, 2);
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h < 0 || h > 23 ||
        mi < 0 || mi > 59 || se < 0 || se > 59)
        return -1;
    *out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
    return 0;
}

int estgate_bundle_time_format(int64_t t, char buf[21])
{
    int64_t z, era, doe, yoe, doy, mp, y, m, d, secs;
    char tmp[64];

    if (t < 0 || t > 253402300799) /* 9999-12-31T23:59:59Z */
        return -1;
    z = t / 86400 + 719468;
    secs = t % 86400;
    era = z / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;
    y = yoe + era * 400 + (m <= 2);
    /* A roomy buffer first: the compiler cannot see that every field has its width. */
    snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02dZ", (int)y, (int)m, (int)d,
             (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60));
    memcpy(buf, tmp, 21);
    return 0;
}

/* ---- parsing ---- */

struct cursor {
    const unsigned char *p, *end;
    int line;
    char *why;
    size_t whylen;
};

/* The next line, which must be "key VALUE\n" with a VALUE of printable non-space ASCII. */
static int take(struct cursor *c, const char *key, const char **val, size_t *vlen)
{
    size_t klen = strlen(key), i, n;
    const unsigned char *nl;

    c->line++;
    nl = c->p < c->end ? memchr(c->p, '\n', (size_t)(c->end - c->p)) : NULL;
    if (nl == NULL) {
        say(c->why, c->whylen, "manifest line %d: missing, expected '%s'", c->line, key);
        return -1;
    }
    n = (size_t)(nl - c->p);
    if (n <= klen + 1 || memcmp(c->p, key, klen) != 0 || c->p[klen] != ' ') {
        say(c->why, c->whylen, "manifest line %d: expected '%s VALUE'", c->line, key);
        return -1;
    }
    for (i = klen + 1; i < n; i++) {
        if (c->p[i] <= ' ' || c->p[i] > '~') {
            say(c->why, c->whylen, "manifest line %d: a character that is not printable ASCII",
                c->line);
            return -1;
        }
    }
    *val = (const char *)c->p + klen + 1;
    *vlen = n - klen - 1;
    c->p = nl + 1;
    return 0;
}

/* A positive decimal number without leading zeros, at most max. */
static int take_number(struct cursor *c, const char *key, uint64_t max, uint64_t *out)
{
    const char *v;
    size_t n, i;
    uint64_t x = 0;

    if (take(c, key, &v, &n) != 0)
        return -1;
    for (i = 0; i < n && n <= 18 && v[i] >= '0' && v[i] <= '9'; i++)
        x = x * 10 + (uint64_t)(v[i] - '0');
    if (i != n || n > 18 || v[0] == '0' || x > max) {
        say(c->why, c->whylen, "manifest line %d: %s must be a number from 1 to %llu", c->line, key,
            (unsigned long long)max);
        return -1;
    }
    *out = x;
    return 0;
}

static int take_time(struct cursor *c, const char *key, int64_t *out)
{
    const char *v;
    size_t n;

    if (take(c, key, &v, &n) != 0)
        return -1;
    if (estgate_bundle_time_parse(v, n, out) != 0) {
        say(c->why, c->whylen, "manifest line %d: %s must be YYYY-MM-DDTHH:MM:SSZ", c->line, key);
        return -1;
    }
    return 0;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

static int take_sha256(struct cursor *c, const char *key, unsigned char out[32])
{
    const char *v;
    size_t n, i;
    int hi, lo;

    if (take(c, key, &v, &n) != 0)
        return -1;
    for (i = 0; n == 64 && i < 32; i++) {
        if ((hi = hexval(v[2 * i])) < 0 || (lo = hexval(v[2 * i + 1])) < 0)
            break;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    if (i != 32) {
        say(c->why, c->whylen, "manifest line %d: %s must be 64 lowercase hex digits", c->line,
            key);
        return -1;
    }
    return 0;
}

static int take_magic(struct cursor *c)
{
    size_t n = strlen(MAGIC);

    c->line++;
    if ((size_t)(c->end - c->p) <= n || memcmp(c->p, MAGIC "\n", n + 1) != 0) {
        say(c->why, c->whylen, "manifest line 1: not '" MAGIC "'");
        return -1;
    }
    c->p += n + 1;
    return 0;
}

static int parse_lines(struct cursor *c, estgate_bundle_manifest *m)
{
    uint64_t count;
    size_t i;

    if (take_magic(c) != 0 ||
        take_number(c, "bundle-version", ESTGATE_BUNDLE_MAX_VERSION, &m->version) != 0 ||
        take_time(c, "issued-at", &m->issued_at) != 0 ||
        take_time(c, "not-after", &m->not_after) != 0 ||
        take_sha256(c, "pem-sha256", m->pem_sha256) != 0 ||
        take_sha256(c, "p7b-sha256", m->p7b_sha256) != 0 ||
        take_number(c, "anchor-count", ESTGATE_BUNDLE_MAX_ANCHORS, &count) != 0)
        return -1;
    m->anchor_count = (size_t)count;
    for (i = 0; i < m->anchor_count; i++) {
        if (take_sha256(c, "anchor-sha256", m->anchor_sha256[i]) != 0)
            return -1;
    }
    if (c->p != c->end) {
        say(c->why, c->whylen, "manifest line %d: text after the last anchor", c->line + 1);
        return -1;
    }
    if (m->not_after <= m->issued_at) {
        say(c->why, c->whylen, "manifest: not-after is not after issued-at");
        return -1;
    }
    return 0;
}

estgate_bundle_status estgate_bundle_manifest_parse(const unsigned char *text, size_t len,
                                                    estgate_bundle_manifest *m, char *why,
                                                    size_t whylen)
{
    struct cursor c = {text, text + len, 0, why, whylen};
    estgate_bundle_manifest *tmp = NULL;
    estgate_bundle_status st = ESTGATE_BUNDLE_MALFORMED;

    if (text == NULL || m == NULL) {
        st = ESTGATE_BUNDLE_INTERNAL;
        goto out;
    }
    if (len > ESTGATE_BUNDLE_MAX_MANIFEST) {
        say(why, whylen, "manifest: longer than %d bytes", ESTGATE_BUNDLE_MAX_MANIFEST);
        goto out;
    }
    /* Parsed into a copy: the caller's *m is written only when all of it is good. */
    if ((tmp = OPENSSL_zalloc(sizeof(*tmp))) == NULL) {
        st = ESTGATE_BUNDLE_INTERNAL;
        goto out;
    }
    if (parse_lines(&c, tmp) != 0)
        goto out;
    memcpy(m, tmp, sizeof(*m));
    st = ESTGATE_BUNDLE_OK;
out:
    OPENSSL_free(tmp);
    return st;
}

/* ---- formatting ---- */

static void hex(const unsigned char b[32], char out[65])
{
    static const char digit[] = "0123456789abcdef";
    int i;

    for (i = 0; i < 32; i++) {
        out[2 * i] = digit[b[i] >> 4];
        out[2 * i + 1] = digit[b[i] & 15];
    }
    out[64] = 0;
}

char *estgate_bundle_manifest_format(const estgate_bundle_manifest *m, size_t *len)
{
    size_t cap = ESTGATE_BUNDLE_MAX_MANIFEST, n, i;
    char issued[21], after[21], pem[65], p7b[65], anchor[65], *buf = NULL, *res = NULL;
    int w;

    if (m->version == 0 || m->version > ESTGATE_BUNDLE_MAX_VERSION || m->anchor_count == 0 ||
        m->anchor_count > ESTGATE_BUNDLE_MAX_ANCHORS || m->not_after <= m->issued_at ||
        estgate_bundle_time_format(m->issued_at, issued) != 0 ||
        estgate_bundle_time_format(m->not_after, after) != 0 || (buf = OPENSSL_malloc(cap)) == NULL)
        goto out;
    hex(m->pem_sha256, pem);
    hex(m->p7b_sha256, p7b);
    w = snprintf(buf, cap,
                 MAGIC "\nbundle-version %llu\nissued-at %s\nnot-after %s\npem-sha256 %s\n"
                       "p7b-sha256 %s\nanchor-count %zu\n",
                 (unsigned long long)m->version, issued, after, pem, p7b, m->anchor_count);
    if (w < 0 || (size_t)w >= cap)
        goto out;
    n = (size_t)w;
    for (i = 0; i < m->anchor_count; i++) {
        hex(m->anchor_sha256[i], anchor);
        w = snprintf(buf + n, cap - n, "anchor-sha256 %s\n", anchor);
        if (w < 0 || (size_t)w >= cap - n)
            goto out;
        n += (size_t)w;
    }
    *len = n;
    res = buf;
    buf = NULL;
out:
    OPENSSL_free(buf);
    return res;
}
