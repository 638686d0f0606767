/* The blocked_certs file: SHA-256 fingerprints, sorted for a binary search per request. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "blocklist.h"

#define FP_LEN 32

struct eg_blocklist {
    uint8_t (*fps)[FP_LEN];
    size_t n;
};

/* One line's fingerprint into fp: 1, 0 for a line with none (blank, comment), -1 when bad. */
static int parse_line(char *line, uint8_t fp[FP_LEN])
{
    char *s = line, *end, *eq;
    size_t got = 0;
    int hi = -1;

    if ((end = strchr(s, '#')) != NULL)
        *end = '\0';
    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    if (*s == '\0')
        return 0;
    if (strncmp(s, "cert:", 5) == 0)
        s += 5;
    else if ((eq = strchr(s, '=')) != NULL) /* "sha256 Fingerprint=AB:CD:..." */
        s = eq + 1;
    for (; *s != '\0'; s++) {
        int v = OPENSSL_hexchar2int((unsigned char)*s);

        if (*s == ':' && hi < 0)
            continue;
        if (v < 0 || got == FP_LEN)
            return -1;
        if (hi < 0) {
            hi = v;
        } else {
            fp[got++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    return got == FP_LEN && hi < 0 ? 1 : -1;
}

static int fp_cmp(const void *a, const void *b)
{
    return memcmp(a, b, FP_LEN);
}

int eg_blocklist_load(const char *path, eg_blocklist **out, char *why, size_t whylen)
{
    FILE *f = fopen(path, "r");
    eg_blocklist *b = calloc(1, sizeof(*b));
    char line[512];
    size_t cap = 0, lineno = 0;
    int rc = -1, r;

    if (f == NULL) {
        snprintf(why, whylen, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (b == NULL) {
        snprintf(why, whylen, "out of memory");
        goto out;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        uint8_t fp[FP_LEN];

        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            snprintf(why, whylen, "%s: line %zu is too long", path, lineno);
            goto out;
        }
        if ((r = parse_line(line, fp)) < 0) {
            snprintf(why, whylen,
                     "%s: line %zu is not a SHA-256 fingerprint (64 hex digits, as cert:HEX or "
                     "AB:CD:...)",
                     path, lineno);
            goto out;
        }
        if (r == 0)
            continue;
        if (b->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            uint8_t(*more)[FP_LEN] = realloc(b->fps, ncap * FP_LEN);

            if (more == NULL) {
                snprintf(why, whylen, "out of memory");
                goto out;
            }
            b->fps = more;
            cap = ncap;
        }
        memcpy(b->fps[b->n++], fp, FP_LEN);
    }
    if (ferror(f)) {
        snprintf(why, whylen, "%s: read error", path);
        goto out;
    }
    if (b->n > 1)
        qsort(b->fps, b->n, FP_LEN, fp_cmp);
    *out = b;
    b = NULL;
    rc = 0;
out:
    if (f != NULL)
        fclose(f);
    eg_blocklist_free(b);
    return rc;
}

void eg_blocklist_free(eg_blocklist *b)
{
    if (b == NULL)
        return;
    free(b->fps);
    free(b);
}

size_t eg_blocklist_count(const eg_blocklist *b)
{
    return b != NULL ? b->n : 0;
}

bool eg_blocklist_has(const eg_blocklist *b, const uint8_t sha256[32])
{
    return b != NULL && b->n > 0 && bsearch(sha256, b->fps, b->n, FP_LEN, fp_cmp) != NULL;
}
