/*
 * RFC 4514 names as operators write them: "CN=Example CA, O=Example". The
 * string lists the most specific RDN first, the reverse of the DER order.
 */
#include <ctype.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/objects.h>

#include "cert_build.h"
#include "provision.h"
#include "report.h"

/* Copies one escaped value up to an unescaped ',' into out; *s moves past it. */
static int unescape(const char **s, char *out, size_t cap)
{
    const char *p = *s;
    size_t o = 0, keep = 0; /* keep: length up to the last escaped char (not trimmed) */

    for (; *p != 0 && *p != ','; p++) {
        int c = (unsigned char)*p;

        if (*p == '+')
            return -1; /* multi-valued RDNs are not supported */
        if (*p == '\\') {
            int hi = OPENSSL_hexchar2int((unsigned char)p[1]);
            int lo = hi >= 0 ? OPENSSL_hexchar2int((unsigned char)p[2]) : -1;

            if (hi >= 0 && lo >= 0) {
                c = hi * 16 + lo;
                p += 2;
            } else if (p[1] != 0 && strchr(" \"#+,;<=>\\", p[1]) != NULL) {
                c = (unsigned char)*++p;
            } else {
                return -1;
            }
            keep = o + 1;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = (char)c;
    }
    while (o > keep && out[o - 1] == ' ')
        o--;
    out[o] = 0;
    *s = p;
    return 0;
}

/* Parses "type=value" at *s and inserts it as the new first RDN of name. */
static int parse_rdn(const char **s, X509_NAME *name)
{
    char type[64], value[1024];
    const char *eq;
    size_t tlen;
    int nid;

    while (**s == ' ')
        (*s)++;
    if ((eq = strchr(*s, '=')) == NULL || (tlen = (size_t)(eq - *s)) == 0 || tlen >= sizeof(type))
        return -1;
    memcpy(type, *s, tlen);
    while (tlen > 0 && type[tlen - 1] == ' ')
        tlen--;
    type[tlen] = 0;
    *s = eq + 1;
    while (**s == ' ')
        (*s)++;
    if ((nid = OBJ_txt2nid(type)) == NID_undef || unescape(s, value, sizeof(value)) != 0 ||
        value[0] == 0)
        return -1;
    /* Position 0: each later RDN in the string is less specific, so it goes first in DER. */
    return X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8, (unsigned char *)value, -1, 0, 0) ==
                   1
               ? 0
               : -1;
}

int eg_prov_name_parse(const char *s, X509_NAME **out)
{
    X509_NAME *name = X509_NAME_new();
    const char *p = s;
    int rc;

    if (name == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    for (;;) {
        if (parse_rdn(&p, name) != 0) {
            rc = eg_prov_fail(EG_EXIT_USAGE,
                              "subject '%s': expected type=value pairs separated by commas, "
                              "e.g. \"CN=Example CA,O=Example\" (escape , + = \\ with \\)",
                              s);
            goto out;
        }
        if (*p == 0)
            break;
        p++; /* the ',' */
    }
    *out = name;
    name = NULL;
    rc = EG_EXIT_OK;
out:
    X509_NAME_free(name);
    return rc;
}

bool eg_prov_host_name_ok(const char *s, bool wildcard)
{
    size_t len, label = 0, i;

    if (wildcard && strncmp(s, "*.", 2) == 0)
        s += 2;
    len = strlen(s);
    if (len == 0 || len > 253)
        return false;
    for (i = 0; i <= len; i++) {
        if (s[i] == '.' || s[i] == 0) {
            if (label == 0 || label > 63 || s[i - 1] == '-' || s[i - label] == '-')
                return false;
            label = 0;
        } else if (isalnum((unsigned char)s[i]) || s[i] == '-') {
            label++;
        } else {
            return false;
        }
    }
    return true;
}
