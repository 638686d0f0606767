/*
 * The input manifest of a bootstrap batch: CSV with a header line, or JSON
 * lines. A row that cannot be used is kept with its reason, so the batch
 * reports it and goes on with the others.
 */
#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/obj_mac.h>

#include "args.h"
#include "bootstrap.h"
#include "provision.h"
#include "report.h"

/* The longest line without its newline: room for two paths and three short names. */
#define EG_BS_LINE_MAX 4096
#define STR_(x)        #x
#define STR(x)         STR_(x)

enum { COL_SERIAL, COL_MODEL, COL_CSR, COL_KEY, COL_TRANSPORT, NCOLS };
static const char *const col_names[NCOLS] = {"serial", "model", "csr", "key", "transport"};

/* The values of one row, by column; NULL when absent or empty. */
typedef struct fields {
    char *v[NCOLS];
} fields;

bool eg_bs_key_name(const char *s, eg_keygen_spec *spec)
{
    /* Token-key mode's names (docs/factory-line.md), a subset of --key's. */
    static const char *const allowed[] = {"ec-p256", "ec-p384", "rsa2048"};

    memset(spec, 0, sizeof(*spec));
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
        if (strcmp(s, allowed[i]) == 0)
            return eg_prov_key_spec(s, spec);
    }
    return false;
}

/* Serials and models become file names, DNS labels and subject attributes. */
static bool name_ok(const char *s)
{
    size_t i, n = strlen(s);

    if (n == 0 || n > EG_BS_NAME_MAX || s[0] == '.' || s[0] == '-')
        return false;
    for (i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return false;
    }
    return true;
}

/* A path relative to the manifest's directory (absolute paths are kept). */
static char *resolve(const char *dir, const char *p)
{
    char *out = NULL;

    if (p[0] == '/')
        return OPENSSL_strdup(p);
    if ((out = OPENSSL_malloc(strlen(dir) + strlen(p) + 2)) != NULL)
        sprintf(out, "%s/%s", dir, p);
    return out;
}

static void row_from(eg_bs_row *r, const fields *f, const char *dir, const eg_keygen_spec *dkey)
{
    const char *s = f->v[COL_SERIAL], *m = f->v[COL_MODEL];

    if (s == NULL || !name_ok(s)) {
        snprintf(r->why, sizeof(r->why), "serial missing or not 1-64 of [A-Za-z0-9._-]");
        return;
    }
    strcpy(r->serial, s);
    /*
     * <serial>.key.pem is the wrapped key of device <serial>: a serial ending
     * in .key would name its certificate file the same. Any case, for the
     * file systems of the programmers' USB sticks.
     */
    if (strlen(s) >= 4 && strcasecmp(s + strlen(s) - 4, ".key") == 0) {
        snprintf(r->why, sizeof(r->why),
                 "a serial may not end in '.key': %s.pem would be the file of device %.*s's "
                 "wrapped key",
                 s, (int)strlen(s) - 4, s);
        return;
    }
    if (m == NULL || !name_ok(m)) {
        snprintf(r->why, sizeof(r->why), "model missing or not 1-64 of [A-Za-z0-9._-]");
        return;
    }
    strcpy(r->model, m);
    if ((f->v[COL_CSR] != NULL) == (f->v[COL_TRANSPORT] != NULL)) {
        snprintf(r->why, sizeof(r->why), "give either csr or transport (a token-generated key)");
        return;
    }
    r->key = *dkey;
    if (f->v[COL_KEY] != NULL && !eg_bs_key_name(f->v[COL_KEY], &r->key)) {
        snprintf(r->why, sizeof(r->why), "key '%.32s': use ec-p256, ec-p384 or rsa2048",
                 f->v[COL_KEY]);
        return;
    }
    r->mode = f->v[COL_CSR] != NULL ? EG_BS_CSR : EG_BS_KEYGEN;
    if (r->mode == EG_BS_CSR)
        r->csr = resolve(dir, f->v[COL_CSR]);
    else
        r->transport = resolve(dir, f->v[COL_TRANSPORT]);
    if (r->csr == NULL && r->transport == NULL)
        snprintf(r->why, sizeof(r->why), "out of memory");
}

/* Splits a CSV line at commas in place; quoting is not supported, and refused. */
static int csv_split(char *line, char **cells, size_t max, size_t *n)
{
    char *p = line;

    *n = 0;
    if (strchr(line, '"') != NULL)
        return -1;
    for (;;) {
        if (*n == max)
            return -1;
        cells[(*n)++] = p;
        if ((p = strchr(p, ',')) == NULL)
            return 0;
        *p++ = 0;
    }
}

static char *trim(char *s)
{
    char *e = s + strlen(s);

    while (*s == ' ' || *s == '\t')
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        *--e = 0;
    return s;
}

/* Header: the column of each cell, or -1 for a column we do not know (ignored). */
static int csv_header(char *line, int *cols, size_t *ncells)
{
    char *cells[NCOLS * 4];
    size_t i, j;
    bool have_serial = false;

    if (csv_split(line, cells, NCOLS * 4, ncells) != 0)
        return -1;
    for (i = 0; i < *ncells; i++) {
        cols[i] = -1;
        for (j = 0; j < NCOLS; j++) {
            if (strcmp(trim(cells[i]), col_names[j]) == 0)
                cols[i] = (int)j;
        }
        have_serial = have_serial || cols[i] == COL_SERIAL;
    }
    return have_serial ? 0 : -1;
}

static void csv_row(char *line, const int *cols, size_t ncols, eg_bs_row *r, const char *dir,
                    const eg_keygen_spec *dkey)
{
    char *cells[NCOLS * 4];
    fields f = {{NULL}};
    size_t i, n;

    if (csv_split(line, cells, NCOLS * 4, &n) != 0 || n != ncols) {
        snprintf(r->why, sizeof(r->why), "expected %zu comma-separated cells, no quotes", ncols);
        return;
    }
    for (i = 0; i < n; i++) {
        char *v = trim(cells[i]);

        if (cols[i] >= 0 && *v != 0)
            f.v[cols[i]] = v;
    }
    row_from(r, &f, dir, dkey);
}

static int hex4(const char *s)
{
    int v = 0;

    for (int i = 0; i < 4; i++) {
        int c = (unsigned char)s[i], d;

        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* A \uXXXX escape at s (after the u), surrogate pairs joined; the code point or -1. */
static long json_u(char **s)
{
    long hi = hex4(*s), lo;

    if (hi < 0)
        return -1;
    *s += 4;
    if (hi < 0xd800 || hi > 0xdfff)
        return hi;
    if (hi > 0xdbff || (*s)[0] != '\\' || (*s)[1] != 'u' || (lo = hex4(*s + 2)) < 0xdc00 ||
        lo > 0xdfff)
        return -1;
    *s += 6;
    return 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
}

/* Code point c as UTF-8 at out; the end. The encoding is never longer than its escape. */
static char *utf8_put(char *out, long c)
{
    if (c < 0x80) {
        *out++ = (char)c;
    } else if (c < 0x800) {
        *out++ = (char)(0xc0 | (c >> 6));
        *out++ = (char)(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
        *out++ = (char)(0xe0 | (c >> 12));
        *out++ = (char)(0x80 | ((c >> 6) & 0x3f));
        *out++ = (char)(0x80 | (c & 0x3f));
    } else {
        *out++ = (char)(0xf0 | (c >> 18));
        *out++ = (char)(0x80 | ((c >> 12) & 0x3f));
        *out++ = (char)(0x80 | ((c >> 6) & 0x3f));
        *out++ = (char)(0x80 | (c & 0x3f));
    }
    return out;
}

/*
 * A JSON string at *p (after its opening quote) decoded in place, with every
 * escape of RFC 8259; NULL when malformed or when it holds U+0000, which
 * would cut the value short.
 */
static char *json_string(char **p)
{
    static const char plain[] = "\"\\/bfnrt", meant[] = "\"\\/\b\f\n\r\t";
    char *s = *p, *out = s, *start = s;
    const char *e;
    long c;

    while (*s != '"') {
        if (*s == 0 || (unsigned char)*s < 0x20)
            return NULL;
        if (*s != '\\') {
            *out++ = *s++;
            continue;
        }
        s++;
        if (*s == 'u') {
            s++;
            if ((c = json_u(&s)) <= 0)
                return NULL;
            out = utf8_put(out, c);
        } else if (*s != 0 && (e = strchr(plain, *s)) != NULL) {
            *out++ = meant[e - plain];
            s++;
        } else {
            return NULL;
        }
    }
    *out = 0;
    *p = s + 1;
    return start;
}

static char *skip_ws(char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    return p;
}

/* Deep enough for any exporter's metadata; a bound so a hostile line cannot exhaust the stack. */
#define JSON_DEPTH_MAX 16

/* Skips a JSON value of any type at p (an unknown member's); the end, or NULL when malformed. */
static char *json_skip(char *p, int depth)
{
    char close;

    p = skip_ws(p);
    if (*p == '"')
        return (p++, json_string(&p)) != NULL ? p : NULL;
    if (*p != '{' && *p != '[') {
        /* A number, true, false or null: their characters, at least one. */
        char *start = p;

        while (*p != 0 && strchr("+-.0123456789Eabcdeflnrstu", *p) != NULL)
            p++;
        return p > start ? p : NULL;
    }
    if (depth == JSON_DEPTH_MAX)
        return NULL;
    close = *p == '{' ? '}' : ']';
    p = skip_ws(p + 1);
    while (*p != close) {
        if (close == '}') {
            if (*p != '"' || (p++, json_string(&p)) == NULL || *(p = skip_ws(p)) != ':')
                return NULL;
            p++;
        }
        if ((p = json_skip(p, depth + 1)) == NULL)
            return NULL;
        p = skip_ws(p);
        if (*p == ',')
            p = skip_ws(p + 1);
        else if (*p != close)
            return NULL;
    }
    return p + 1;
}

/*
 * One JSON object: our members must be strings; members we do not know, of
 * any type, are ignored as the CSV reader ignores unknown columns.
 */
static int json_fields(char *p, fields *f, char *why, size_t cap)
{
    char *k, *v;
    size_t j;
    int col;

    if (*(p = skip_ws(p)) != '{')
        goto bad;
    p = skip_ws(p + 1);
    while (*p != '}') {
        if (*p != '"' || (p++, k = json_string(&p)) == NULL || *(p = skip_ws(p)) != ':')
            goto bad;
        p = skip_ws(p + 1);
        for (col = -1, j = 0; j < NCOLS; j++) {
            if (strcmp(k, col_names[j]) == 0)
                col = (int)j;
        }
        if (col < 0) {
            if ((p = json_skip(p, 1)) == NULL)
                goto bad;
        } else if (*p != '"') {
            snprintf(why, cap, "the JSON member '%s' must be a string", col_names[col]);
            return -1;
        } else {
            if ((p++, v = json_string(&p)) == NULL)
                goto bad;
            f->v[col] = *v != 0 ? v : NULL;
        }
        p = skip_ws(p);
        if (*p == ',')
            p = skip_ws(p + 1);
        else if (*p != '}')
            goto bad;
    }
    if (*skip_ws(p + 1) == 0)
        return 0;
bad:
    snprintf(why, cap,
             "not one JSON object on the line (with serial, model, csr or transport "
             "as strings)");
    return -1;
}

static void json_row(char *line, eg_bs_row *r, const char *dir, const eg_keygen_spec *dkey)
{
    fields f = {{NULL}};

    if (json_fields(line, &f, r->why, sizeof(r->why)) != 0)
        return;
    row_from(r, &f, dir, dkey);
}

static eg_bs_row *row_add(eg_bs_rows *rows, size_t *cap, size_t line)
{
    eg_bs_row *v;

    if (rows->n == *cap) {
        *cap = *cap ? *cap * 2 : 256;
        if ((v = OPENSSL_realloc(rows->v, *cap * sizeof(*v))) == NULL)
            return NULL;
        rows->v = v;
    }
    v = &rows->v[rows->n++];
    memset(v, 0, sizeof(*v));
    v->line = line;
    return v;
}

/* Every line after the header (CSV) or every line (JSON); blank and # lines are skipped. */
static int read_rows(FILE *in, const char *path, const char *dir, const eg_keygen_spec *dkey,
                     eg_bs_rows *rows)
{
    char *line = NULL, *t;
    const char *bad;
    int cols[NCOLS * 4], rc = EG_EXIT_OK;
    size_t cap = 0, ncols = 0, lineno = 0, linecap = 0, len;
    bool json = false, first = true;
    ssize_t got;
    eg_bs_row *r;

    while ((got = getline(&line, &linecap, in)) >= 0) {
        lineno++;
        len = (size_t)got - (got > 0 && line[got - 1] == '\n');
        t = line;
        /* A UTF-8 byte-order mark, as Excel's "CSV UTF-8" and many JSON exporters write. */
        if (lineno == 1 && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
            t += 3;
            len -= 3;
        }
        bad = len > EG_BS_LINE_MAX           ? "line longer than " STR(EG_BS_LINE_MAX) " characters"
              : memchr(t, '\0', len) != NULL ? "line holds a NUL byte"
                                             : NULL;
        t = trim(t);
        if (bad == NULL && (*t == 0 || *t == '#'))
            continue;
        if (first) {
            first = false;
            if (!(json = *t == '{')) {
                if (bad != NULL)
                    rc = eg_prov_fail(EG_EXIT_DATAERR, "%s:%zu: %s", path, lineno, bad);
                else if (csv_header(t, cols, &ncols) != 0)
                    rc = eg_prov_fail(EG_EXIT_DATAERR,
                                      "%s:%zu: the CSV header needs a 'serial' column "
                                      "(serial,model,csr,key,transport)",
                                      path, lineno);
                if (rc != EG_EXIT_OK)
                    goto out;
                continue;
            }
        }
        if ((r = row_add(rows, &cap, lineno)) == NULL) {
            rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
            goto out;
        }
        if (bad != NULL)
            snprintf(r->why, sizeof(r->why), "%s", bad);
        else if (json)
            json_row(t, r, dir, dkey);
        else
            csv_row(t, cols, ncols, r, dir, dkey);
    }
    if (ferror(in))
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "reading %s: %s", path, strerror(errno));
out:
    free(line);
    return rc;
}

int eg_bs_input_read(const char *path, const eg_keygen_spec *default_key, eg_bs_rows **out)
{
    eg_bs_rows *rows = OPENSSL_zalloc(sizeof(*rows));
    char *copy = OPENSSL_strdup(path);
    FILE *in = NULL;
    int rc;

    if (rows == NULL || copy == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    if ((in = fopen(path, "r")) == NULL) {
        rc =
            eg_prov_fail(EG_EXIT_NOINPUT, "cannot read the manifest %s: %s", path, strerror(errno));
        goto out;
    }
    if ((rc = read_rows(in, path, dirname(copy), default_key, rows)) != EG_EXIT_OK)
        goto out;
    *out = rows;
    rows = NULL;
out:
    if (in != NULL)
        fclose(in);
    OPENSSL_free(copy);
    eg_bs_rows_free(rows);
    return rc;
}

void eg_bs_rows_free(eg_bs_rows *rows)
{
    size_t i;

    if (rows == NULL)
        return;
    for (i = 0; i < rows->n; i++) {
        OPENSSL_free(rows->v[i].csr);
        OPENSSL_free(rows->v[i].transport);
    }
    OPENSSL_free(rows->v);
    OPENSSL_free(rows);
}
