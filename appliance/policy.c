/*
 * Policy checks of a CSR against a profile. Nothing here trusts the CSR's
 * strings: names are checked byte by byte (an embedded NUL or a non-LDH byte
 * in a DNS name is refused, not truncated), and what goes into a reason is
 * made printable first because reasons reach the client and the log.
 */
#include <arpa/inet.h>
#include <time.h>
#include <limits.h>
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>

#include "policy.h"

static const eg_keyrule_cfg default_keys[] = {
    {.type = EVP_PKEY_RSA, .min_bits = 2048, .max_bits = 8192},
    {.type = EVP_PKEY_EC, .curve_nid = NID_X9_62_prime256v1},
    {.type = EVP_PKEY_EC, .curve_nid = NID_secp384r1},
    {.type = EVP_PKEY_ED25519},
};

static void printable(const unsigned char *s, size_t len, char *out, size_t cap)
{
    size_t i, n = 0;

    for (i = 0; i < len && n + 1 < cap; i++)
        out[n++] = (s[i] >= ' ' && s[i] < 0x7f) ? (char)s[i] : '?';
    if (cap > 0)
        out[n] = '\0';
}

/*
 * Where s (UTF-8) holds a C0 control character, DEL or a C1 control character (U+0080 to U+009F,
 * 0xc2 0x80 to 0xc2 0x9f): its byte offset, or -1 when none. Such a character in a name we sign
 * forges lines, or terminal escapes, wherever a relying party logs or shows the name.
 */
static long control_at(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f ||
            (s[i] == 0xc2 && i + 1 < len && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f))
            return (long)i;
    }
    return -1;
}

static int refuse(eg_policy_verdict *v, eg_policy_dim dim, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse(eg_policy_verdict *v, eg_policy_dim dim, const char *fmt, ...)
{
    va_list ap;

    v->dim = dim;
    va_start(ap, fmt);
    vsnprintf(v->reason, sizeof(v->reason), fmt, ap);
    va_end(ap);
    return 1;
}

/* ---- subject template ---- */

/* s without the blanks around it, in place. */
static char *trimmed(char *s)
{
    char *e;

    while (*s == ' ' || *s == '\t')
        s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        *--e = '\0';
    return s;
}

/* One "ATTR=VALUE" of a template: blanks around either are dropped, ATTR in any case. */
static int tmpl_item(char *item, eg_subject_tmpl *t, char *err, size_t cap)
{
    char *eq = strchr(item, '='), *name, *value;
    eg_subject_rdn *r = &t->rdns[t->n];

    if (eq == NULL || t->n >= EG_MAX_RULES) {
        snprintf(err, cap, "subject template item \"%.64s\" is not ATTRIBUTE=VALUE", item);
        return -1;
    }
    *eq = '\0';
    name = trimmed(item);
    value = trimmed(eq + 1);
    if ((r->nid = eg_subject_attr_nid(name)) == NID_undef) {
        snprintf(err, cap,
                 "subject template attribute \"%.32s\" is not one of CN, O, OU, C, ST, L, "
                 "serialNumber, emailAddress, UID or DC",
                 name);
        return -1;
    }
    r->from_cn = strcmp(value, "${cn}") == 0;
    if (!r->from_cn && strstr(value, "${") != NULL) {
        snprintf(err, cap,
                 "subject template value for %s: the only variable is ${cn}, as the whole value",
                 name);
        return -1;
    }
    if (!r->from_cn && (value[0] == '\0' || strlen(value) >= sizeof(r->value))) {
        snprintf(err, cap, "subject template value for %s is empty or longer than %zu characters",
                 name, sizeof(r->value) - 1);
        return -1;
    }
    if (!r->from_cn)
        strcpy(r->value, value);
    t->uses_cn |= r->from_cn;
    t->n++;
    return 0;
}

int eg_subject_tmpl_parse(const char *text, eg_subject_tmpl *out, char *err, size_t cap)
{
    eg_subject_tmpl t = {0};
    char *copy = strdup(text), *save = NULL, *item;
    int rc = -1;

    if (copy == NULL) {
        snprintf(err, cap, "out of memory");
        goto out;
    }
    for (item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        if (tmpl_item(item, &t, err, cap) != 0)
            goto out;
    }
    if (t.n == 0) {
        snprintf(err, cap, "subject template is empty");
        goto out;
    }
    *out = t;
    rc = 0;
out:
    free(copy);
    return rc;
}

/* ---- key ---- */

void eg_policy_keyrules(const eg_profile_cfg *p, const eg_keyrule_cfg **rules, size_t *n)
{
    if (p->nkeys > 0) {
        *rules = p->keys;
        *n = p->nkeys;
    } else {
        *rules = default_keys;
        *n = sizeof(default_keys) / sizeof(default_keys[0]);
    }
}

static int curve_nid(EVP_PKEY *pk)
{
    char name[64];
    int nid;

    if (EVP_PKEY_get_group_name(pk, name, sizeof(name), NULL) != 1)
        return NID_undef;
    nid = OBJ_txt2nid(name);
    return nid != NID_undef ? nid : EC_curve_nist2nid(name);
}

static bool key_rule_matches(const eg_keyrule_cfg *r, int type, int bits, int nid)
{
    if (r->type != type)
        return false;
    if (type == EVP_PKEY_RSA)
        return bits >= r->min_bits && bits <= (r->max_bits > 0 ? r->max_bits : 8192);
    if (type == EVP_PKEY_EC)
        return nid == r->curve_nid;
    return true;
}

/* RFC 8017 3.1 and the CA/B Forum's rule: an odd public exponent of at least 3. With e = 1 a
   "signature" is the padded digest itself, so the CSR's proof of possession would prove nothing. */
static bool rsa_exponent_ok(const EVP_PKEY *pk)
{
    BIGNUM *e = NULL;
    bool ok =
        EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &e) == 1 && BN_is_odd(e) && !BN_is_one(e);

    BN_free(e);
    return ok;
}

static int check_key(const eg_profile_cfg *p, const eg_csr *csr, eg_policy_verdict *v)
{
    EVP_PKEY *pk = eg_csr_pubkey(csr);
    const eg_keyrule_cfg *rules;
    size_t n, i;
    int type, bits, nid = NID_undef;

    type = eg_csr_key_type(csr);
    if (pk == NULL) /* an algorithm the appliance cannot use */
        return refuse(v, EG_DIM_KEY, "%s key is not allowed by this profile",
                      type != NID_undef ? OBJ_nid2sn(type) : "unknown");
    bits = EVP_PKEY_get_bits(pk);
    if (type == EVP_PKEY_RSA && !rsa_exponent_ok(pk))
        return refuse(v, EG_DIM_KEY,
                      "the RSA key's public exponent is not an odd number of at least 3");
    if (type == EVP_PKEY_EC)
        nid = curve_nid(pk);
    eg_policy_keyrules(p, &rules, &n);
    for (i = 0; i < n; i++) {
        if (key_rule_matches(&rules[i], type, bits, nid))
            return 0;
    }
    if (type == EVP_PKEY_EC)
        return refuse(v, EG_DIM_KEY, "EC key on curve %s is not allowed by this profile",
                      nid != NID_undef ? OBJ_nid2sn(nid) : "(unknown)");
    if (type == EVP_PKEY_RSA)
        return refuse(v, EG_DIM_KEY, "RSA-%d key is not allowed by this profile", bits);
    return refuse(v, EG_DIM_KEY, "%s key is not allowed by this profile",
                  type != NID_undef ? OBJ_nid2sn(type) : "unknown");
}

/*
 * The CSR's signature is its proof of possession: a digest weak enough to collide (MD5, and
 * SHA-1 where the profile leaves it out) proves little. Ed25519 and Ed448 hash for themselves.
 */
static int check_signature(const eg_profile_cfg *p, const eg_csr *csr, eg_policy_verdict *v)
{
    unsigned ok = eg_profile_csr_digests(p);
    int md = eg_csr_signature_digest(csr), type = eg_csr_key_type(csr);
    char allowed[128] = "";
    size_t used = 0;

    if (md == NID_undef)
        return 0;
    for (size_t i = 0; i < EG_CSR_DIGESTS; i++) {
        if ((ok & (1u << i)) && md == eg_csr_digests[i].nid)
            return 0;
    }
    /* Refused: the reason lists what the profile takes that this key can sign with. */
    for (size_t i = 0; i < EG_CSR_DIGESTS; i++) {
        if (!(ok & (1u << i)))
            continue;
        if ((type == EVP_PKEY_EC || type == EVP_PKEY_RSA) &&
            eg_csr_signature_nid(type, eg_csr_digests[i].nid) == NID_undef)
            continue; /* not one this key can sign with here: not offered */
        used += (size_t)snprintf(allowed + used, sizeof(allowed) - used, "%s%s",
                                 used > 0 ? ", " : "", eg_csr_digests[i].name);
        if (used >= sizeof(allowed))
            used = sizeof(allowed) - 1;
    }
    return refuse(v, EG_DIM_SIGNATURE,
                  "the CSR is signed with %s, which this profile does not accept as proof of "
                  "possession; sign it with one of: %s",
                  md > 0 ? OBJ_nid2sn(md) : "an unknown algorithm", allowed);
}

/* ---- EKU ---- */

static int check_eku(const eg_profile_cfg *p, const STACK_OF(X509_EXTENSION) * exts,
                     eg_policy_verdict *v)
{
    EXTENDED_KEY_USAGE *eku = X509V3_get_d2i(exts, NID_ext_key_usage, NULL, NULL);
    char name[80];
    int i, rc = 0;
    size_t j;

    for (i = 0; eku != NULL && i < sk_ASN1_OBJECT_num(eku) && rc == 0; i++) {
        ASN1_OBJECT *o = sk_ASN1_OBJECT_value(eku, i);
        int nid = OBJ_obj2nid(o);
        bool ok = false;

        for (j = 0; j < p->nekus && !ok; j++)
            ok = nid != NID_undef && p->ekus[j] == nid;
        if (!ok) {
            OBJ_obj2txt(name, sizeof(name), o, 0);
            rc = refuse(v, EG_DIM_EKU, "EKU %s is not allowed by this profile", name);
        }
    }
    EXTENDED_KEY_USAGE_free(eku);
    return rc;
}

/* ---- SAN ---- */

/* LDH labels of 1..63 bytes, 253 in all; "*." first only when literal wildcards are asked. */
static bool dns_name_valid(const char *s, size_t len)
{
    size_t i, label = 0;

    if (len >= 2 && s[0] == '*' && s[1] == '.') {
        s += 2;
        len -= 2;
    }
    if (len == 0 || len > 253)
        return false;
    for (i = 0; i < len; i++) {
        char c = s[i];

        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c == '-' && label > 0)))
            return false;
        if (++label > 63)
            return false;
    }
    return label > 0 && s[len - 1] != '-';
}

static bool dns_matches(const char *pattern, const char *name, size_t len)
{
    size_t plen = strlen(pattern);

    if (name[0] == '*' || pattern[0] == '*') /* wildcards only as the very same literal */
        return plen == len && strncasecmp(pattern, name, len) == 0;
    if (pattern[0] == '.')
        return len > plen && strncasecmp(name + len - plen, pattern, plen) == 0;
    return plen == len && strncasecmp(pattern, name, len) == 0;
}

static bool ip_matches(const char *pattern, const unsigned char *ip, int iplen)
{
    char net[64];
    const char *slash = strchr(pattern, '/');
    unsigned char addr[16];
    size_t n = slash ? (size_t)(slash - pattern) : strlen(pattern);
    int bits, family = iplen == 4 ? AF_INET : AF_INET6, i;

    if ((iplen != 4 && iplen != 16) || n >= sizeof(net))
        return false;
    memcpy(net, pattern, n);
    net[n] = '\0';
    if (inet_pton(family, net, addr) != 1)
        return false;
    bits = slash ? atoi(slash + 1) : iplen * 8;
    if (bits < 0 || bits > iplen * 8)
        return false;
    for (i = 0; i < iplen && bits > 0; i++, bits -= 8) {
        unsigned char mask = bits >= 8 ? 0xff : (unsigned char)(0xff << (8 - bits));

        if ((addr[i] & mask) != (ip[i] & mask))
            return false;
    }
    return true;
}

static bool email_matches(const char *pattern, const char *s, size_t len)
{
    const char *at = memchr(s, '@', len);
    size_t dlen;

    if (at == NULL || at == s || memchr(at + 1, '@', len - (size_t)(at + 1 - s)) != NULL)
        return false;
    dlen = len - (size_t)(at + 1 - s);
    return strlen(pattern) == dlen && strncasecmp(pattern, at + 1, dlen) == 0;
}

static bool san_allowed(const eg_profile_cfg *p, const GENERAL_NAME *gn)
{
    const ASN1_STRING *str = NULL;
    eg_san_type type;
    size_t i, len;
    const char *s;

    switch (gn->type) {
    case GEN_DNS:
        type = EG_SAN_DNS, str = gn->d.dNSName;
        break;
    case GEN_IPADD:
        type = EG_SAN_IP, str = gn->d.iPAddress;
        break;
    case GEN_EMAIL:
        type = EG_SAN_EMAIL, str = gn->d.rfc822Name;
        break;
    case GEN_URI:
        type = EG_SAN_URI, str = gn->d.uniformResourceIdentifier;
        break;
    default:
        return false;
    }
    s = (const char *)ASN1_STRING_get0_data(str);
    len = (size_t)ASN1_STRING_length(str);
    if (type != EG_SAN_IP && (len == 0 || memchr(s, '\0', len) != NULL))
        return false;
    if (type == EG_SAN_DNS && !dns_name_valid(s, len))
        return false;
    for (i = 0; i < p->nsans; i++) {
        const char *pat = p->sans[i].pattern;

        if (p->sans[i].type != type || pat == NULL)
            continue;
        if ((type == EG_SAN_DNS && dns_matches(pat, s, len)) ||
            (type == EG_SAN_IP && ip_matches(pat, (const unsigned char *)s, (int)len)) ||
            (type == EG_SAN_EMAIL && email_matches(pat, s, len)) ||
            (type == EG_SAN_URI && len >= strlen(pat) && memcmp(pat, s, strlen(pat)) == 0))
            return true;
    }
    return false;
}

void eg_policy_san_text(const GENERAL_NAME *gn, char *buf, size_t cap)
{
    const ASN1_STRING *str = NULL;
    const char *prefix = "other";
    char text[200], ip[INET6_ADDRSTRLEN];

    text[0] = '\0';
    switch (gn->type) {
    case GEN_DNS:
        prefix = "dns", str = gn->d.dNSName;
        break;
    case GEN_EMAIL:
        prefix = "email", str = gn->d.rfc822Name;
        break;
    case GEN_URI:
        prefix = "uri", str = gn->d.uniformResourceIdentifier;
        break;
    case GEN_IPADD:
        prefix = "ip";
        /* The length first: inet_ntop reads 4 or 16 octets whatever the CSR holds. */
        if ((gn->d.iPAddress->length != 4 && gn->d.iPAddress->length != 16) ||
            !inet_ntop(gn->d.iPAddress->length == 4 ? AF_INET : AF_INET6, gn->d.iPAddress->data, ip,
                       sizeof(ip)))
            strcpy(ip, "(malformed)");
        snprintf(text, sizeof(text), "%s", ip);
        break;
    case GEN_DIRNAME:
        prefix = "dirname";
        break;
    case GEN_OTHERNAME:
        prefix = "othername";
        break;
    default:
        break;
    }
    if (str != NULL) {
        const unsigned char *d = ASN1_STRING_get0_data(str);
        size_t len = (size_t)ASN1_STRING_length(str);

        /* A name too long to show whole keeps its end: the domain, where a rule failed. */
        if (len >= sizeof(text)) {
            memcpy(text, "...", 3);
            printable(d + len - (sizeof(text) - 4), sizeof(text) - 4, text + 3, sizeof(text) - 3);
        } else {
            printable(d, len, text, sizeof(text));
        }
    }
    snprintf(buf, cap, "%s%s%s", prefix, text[0] ? ":" : "", text);
}

GENERAL_NAMES *eg_policy_csr_sans(const eg_csr *csr)
{
    return X509V3_get_d2i(eg_csr_extensions(csr), NID_subject_alt_name, NULL, NULL);
}

static int check_sans(const eg_profile_cfg *p, const STACK_OF(X509_EXTENSION) * exts,
                      eg_policy_verdict *v)
{
    int crit = -1, i, rc = 0;
    GENERAL_NAMES *gens = X509V3_get_d2i(exts, NID_subject_alt_name, &crit, NULL);
    char text[220];

    if (gens == NULL && crit != -1)
        return refuse(v, EG_DIM_SAN, "the CSR's subjectAltName cannot be parsed");
    if (sk_GENERAL_NAME_num(gens) <= 0) {
        GENERAL_NAMES_free(gens);
        if (p->require_san)
            return refuse(v, EG_DIM_SAN,
                          "this profile requires a subjectAltName and the CSR "
                          "has none");
        return 0;
    }
    for (i = 0; i < sk_GENERAL_NAME_num(gens) && rc == 0; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        const ASN1_STRING *str = gn->type == GEN_DNS     ? gn->d.dNSName
                                 : gn->type == GEN_EMAIL ? gn->d.rfc822Name
                                 : gn->type == GEN_URI   ? gn->d.uniformResourceIdentifier
                                                         : NULL;
        long at = str != NULL
                      ? control_at(ASN1_STRING_get0_data(str), (size_t)ASN1_STRING_length(str))
                      : -1;

        /* These are IA5Strings: ASCII, and a byte past it is no character of theirs either. */
        for (int k = 0; str != NULL && at < 0 && k < ASN1_STRING_length(str); k++)
            at = ASN1_STRING_get0_data(str)[k] >= 0x80 ? k : -1;
        if (at >= 0) {
            eg_policy_san_text(gn, text, sizeof(text));
            rc = refuse(v, EG_DIM_SAN,
                        "SAN %s holds byte 0x%02x at offset %ld, a control character or no "
                        "ASCII: refused, since it would forge lines where the name is logged",
                        text, ASN1_STRING_get0_data(str)[at], at);
        } else if (!san_allowed(p, gn)) {
            eg_policy_san_text(gn, text, sizeof(text));
            rc = refuse(v, EG_DIM_SAN, "SAN %s is not allowed by this profile", text);
        }
    }
    GENERAL_NAMES_free(gens);
    return rc;
}

/* ---- subject ---- */

/*
 * Whether a dotted CN is made of what host names and their wildcards are made of (letters,
 * digits, '-', '_', '.', '*'): a TLS client may match it against a host it connects to, so it
 * must be a valid name that a rule allows, "w*.example.com" and "www.example.com." as much as
 * "www.example.com". A CN with a blank, an '@' or any other character is no host name.
 */
static bool cn_reads_as_host(const unsigned char *s, size_t len)
{
    if (memchr(s, '.', len) == NULL)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == '*'))
            return false;
    }
    return true;
}

/*
 * A CN that a TLS client would take for a host name, a dotted DNS name (cn_reads_as_host) or an
 * IP address, must be one the profile's SAN rules allow: clients fall back to the CN when a
 * certificate has no dNSName (RFC 6125 6.4.4; OpenSSL and Mbed TLS do), so an unchecked CN
 * would name any host. Other CNs (a device's serial, a single label) are not names of hosts on
 * the way to a device and stay as they are.
 */
static int check_cn(const eg_profile_cfg *p, const X509_NAME *name, eg_policy_verdict *v)
{
    int i = -1, rc = 0;

    while (rc == 0 && (i = X509_NAME_get_index_by_NID(name, NID_commonName, i)) >= 0) {
        const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
        unsigned char *utf8 = NULL, ip[16];
        int n = ASN1_STRING_to_UTF8(&utf8, cn), iplen = 0;
        GENERAL_NAME gn = {0};
        ASN1_STRING str = {0};
        char text[220];

        if (n <= 0) {
            OPENSSL_free(utf8);
            return refuse(v, EG_DIM_SUBJECT, "the CSR's CN cannot be read");
        }
        if (memchr(utf8, '\0', (size_t)n) == NULL) {
            if (inet_pton(AF_INET, (char *)utf8, ip) == 1)
                iplen = 4;
            else if (inet_pton(AF_INET6, (char *)utf8, ip) == 1)
                iplen = 16;
        }
        if (iplen != 0) {
            gn.type = GEN_IPADD;
            ASN1_STRING_set0(&str, ip, iplen);
        } else if (cn_reads_as_host(utf8, (size_t)n)) {
            gn.type = GEN_DNS; /* san_allowed refuses a name that is not a valid one */
            ASN1_STRING_set0(&str, utf8, n);
        }
        gn.d.ia5 = &str;
        if (gn.type != 0 && !san_allowed(p, &gn)) {
            printable(utf8, (size_t)n, text, sizeof(text));
            rc = refuse(v, EG_DIM_SUBJECT,
                        "CN %s reads as %s, and this profile's SAN rules do not allow it "
                        "(clients take a certificate's CN for its host name)",
                        text, iplen != 0 ? "an IP address" : "a DNS name");
        }
        OPENSSL_free(utf8);
    }
    return rc;
}

/*
 * The subject's emailAddress must be one the profile's email: rules allow: mail clients (and
 * OpenSSL's X509_check_email) take it for the certificate's address when it has no
 * rfc822Name.
 */
static int check_subject_email(const eg_profile_cfg *p, const X509_NAME *name, eg_policy_verdict *v)
{
    int i = -1;

    while ((i = X509_NAME_get_index_by_NID(name, NID_pkcs9_emailAddress, i)) >= 0) {
        const ASN1_STRING *e = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
        unsigned char *utf8 = NULL;
        int n = ASN1_STRING_to_UTF8(&utf8, e);
        GENERAL_NAME gn = {.type = GEN_EMAIL};
        ASN1_STRING str = {0};
        char text[220];
        bool ok;

        if (n <= 0) {
            OPENSSL_free(utf8);
            return refuse(v, EG_DIM_SUBJECT, "the CSR's emailAddress cannot be read");
        }
        ASN1_STRING_set0(&str, utf8, n);
        gn.d.rfc822Name = &str;
        ok = san_allowed(p, &gn);
        printable(utf8, (size_t)n, text, sizeof(text));
        OPENSSL_free(utf8);
        if (!ok)
            return refuse(v, EG_DIM_SUBJECT,
                          "emailAddress %s is not allowed by this profile's email: rules (mail "
                          "clients take it for the certificate's address)",
                          text);
    }
    return 0;
}

/* Every attribute value of name (only its CNs when cn_only) without control characters
   (control_at). */
static int check_subject_text(const X509_NAME *name, bool cn_only, eg_policy_verdict *v)
{
    int rc = 0;

    for (int i = 0; rc == 0 && i < X509_NAME_entry_count(name); i++) {
        const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
        const ASN1_OBJECT *obj = X509_NAME_ENTRY_get_object(e);
        unsigned char *utf8 = NULL;
        int n, nid = OBJ_obj2nid(obj);
        char attr[64], text[64];
        long at;

        if (cn_only && nid != NID_commonName)
            continue;
        if (nid != NID_undef)
            snprintf(attr, sizeof(attr), "%s", OBJ_nid2sn(nid));
        else if (OBJ_obj2txt(attr, sizeof(attr), obj, 1) <= 0)
            snprintf(attr, sizeof(attr), "(unknown)");
        if ((n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e))) < 0) {
            rc = refuse(v, EG_DIM_SUBJECT, "the CSR's subject attribute %s cannot be read", attr);
        } else if ((at = control_at(utf8, (size_t)n)) >= 0) {
            printable(utf8, (size_t)n, text, sizeof(text));
            rc = refuse(v, EG_DIM_SUBJECT,
                        "subject attribute %s \"%s\" holds a control character (U+%04X at "
                        "byte %ld): refused, since it would forge lines where the name is "
                        "logged",
                        attr, text, (unsigned)(utf8[at] == 0xc2 ? utf8[at + 1] : utf8[at]), at);
        }
        OPENSSL_free(utf8);
    }
    return rc;
}

/* The string type an attribute's syntax fixes; 0 for a DirectoryString. */
static int fixed_string_type(int nid)
{
    switch (nid) {
    case NID_countryName:
    case NID_serialNumber:
    case NID_dnQualifier:
        return V_ASN1_PRINTABLESTRING;
    case NID_pkcs9_emailAddress:
    case NID_domainComponent:
        return V_ASN1_IA5STRING;
    default:
        return 0;
    }
}

ASN1_STRING *eg_policy_name_value(int nid, const ASN1_STRING *in)
{
    int fixed = fixed_string_type(nid), n;
    unsigned long mask = fixed != 0 ? ASN1_tag2bit(fixed) : B_ASN1_UTF8STRING;
    unsigned char *utf8 = NULL;
    ASN1_STRING *out = NULL;

    /* A valid PrintableString stays one; TeletexString, BMPString and the rest become UTF-8. */
    if (fixed == 0 && ASN1_STRING_type(in) == V_ASN1_PRINTABLESTRING)
        mask |= B_ASN1_PRINTABLESTRING;
    if ((n = ASN1_STRING_to_UTF8(&utf8, in)) >= 0 &&
        ASN1_mbstring_copy(&out, utf8, n, MBSTRING_UTF8, mask) < 0)
        out = NULL;
    OPENSSL_free(utf8);
    ERR_clear_error();
    return out;
}

static const char *string_type_name(int nid)
{
    int fixed = fixed_string_type(nid);

    return fixed == V_ASN1_PRINTABLESTRING ? "a PrintableString"
           : fixed == V_ASN1_IA5STRING     ? "an IA5String"
                                           : "a UTF8String";
}

/* Each value the certificate takes from the CSR must be one it can carry (eg_policy_name_value). */
static int check_value(int nid, const ASN1_STRING *in, eg_policy_verdict *v)
{
    ASN1_STRING *s = eg_policy_name_value(nid, in);

    ASN1_STRING_free(s);
    if (s != NULL)
        return 0;
    return refuse(v, EG_DIM_SUBJECT,
                  "the CSR's %s cannot be written as %s (RFC 5280 4.1.2.4): its bytes are not "
                  "valid text of its string type, or have characters %s cannot hold; send it "
                  "as a UTF8String%s",
                  nid != NID_undef ? OBJ_nid2sn(nid) : "(unknown)", string_type_name(nid),
                  string_type_name(nid),
                  fixed_string_type(nid) != 0 ? " of the characters that type allows" : "");
}

static int check_subject(const eg_policy *pol, const eg_csr *csr,
                         const STACK_OF(X509_EXTENSION) * exts, eg_policy_verdict *v)
{
    const eg_profile_cfg *p = pol->cfg;
    const X509_NAME *name = eg_csr_subject(csr);
    int i, nid, rc;
    size_t j;

    if ((rc = check_subject_text(name, pol->tmpl.n > 0, v)) != 0)
        return rc;
    if (pol->tmpl.n > 0) {
        /* The template makes the subject; of the CSR's, only its CN may be used. */
        if (pol->tmpl.uses_cn && X509_NAME_get_index_by_NID(name, NID_commonName, -1) < 0)
            return refuse(v, EG_DIM_SUBJECT,
                          "this profile's subject template needs a CN and "
                          "the CSR has none");
        for (j = 0, rc = 0; j < pol->tmpl.n && rc == 0; j++) {
            if (pol->tmpl.rdns[j].from_cn &&
                (i = X509_NAME_get_index_by_NID(name, NID_commonName, -1)) >= 0)
                rc = check_value(pol->tmpl.rdns[j].nid,
                                 X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)), v);
        }
        if (rc != 0)
            return rc;
        return pol->tmpl.uses_cn ? check_cn(p, name, v) : 0;
    }
    if (X509_NAME_entry_count(name) == 0) {
        GENERAL_NAMES *sans = X509V3_get_d2i(exts, NID_subject_alt_name, NULL, NULL);
        int nsans = sk_GENERAL_NAME_num(sans);

        GENERAL_NAMES_free(sans);
        if (nsans <= 0)
            return refuse(v, EG_DIM_SUBJECT,
                          "the CSR has neither a subject nor a subjectAltName: a certificate "
                          "must name something");
    }
    for (i = 0; i < X509_NAME_entry_count(name); i++) {
        bool ok = false;

        nid = OBJ_obj2nid(X509_NAME_ENTRY_get_object(X509_NAME_get_entry(name, i)));
        if (p->nsubject_nids == 0)
            ok = nid == NID_commonName; /* the default: a CN and nothing else */
        for (j = 0; j < p->nsubject_nids && !ok; j++)
            ok = nid != NID_undef && p->subject_nids[j] == nid;
        if (!ok)
            return refuse(v, EG_DIM_SUBJECT,
                          "subject attribute %s is not allowed by this "
                          "profile",
                          nid != NID_undef ? OBJ_nid2sn(nid) : "(unknown)");
        if ((rc = check_value(nid, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)), v)) != 0)
            return rc;
    }
    if ((rc = check_subject_email(p, name, v)) != 0)
        return rc;
    return check_cn(p, name, v);
}

static int check_attrs(const eg_profile_cfg *p, const eg_csr *csr, eg_policy_verdict *v)
{
    size_t i;

    for (i = 0; i < p->nrequired_attrs; i++) {
        if (X509at_get_attr_by_NID(eg_csr_attributes(csr), p->required_attrs[i], -1) < 0)
            return refuse(v, EG_DIM_ATTRS,
                          "the CSR lacks the attribute %s that this profile "
                          "requires",
                          OBJ_nid2sn(p->required_attrs[i]));
    }
    return 0;
}

/* ---- requested validity ---- */

/* One Microsoft enrollment name-value pair: SEQUENCE { name BMPString, value BMPString }. */
static int name_value(const ASN1_TYPE *t, char *name, size_t ncap, char *value, size_t vcap)
{
    const unsigned char *p;
    STACK_OF(ASN1_TYPE) *seq = NULL;
    unsigned char *u = NULL;
    int rc = -1, i, len;

    if (t == NULL || t->type != V_ASN1_SEQUENCE)
        return -1;
    p = t->value.sequence->data;
    seq = d2i_ASN1_SEQUENCE_ANY(NULL, &p, t->value.sequence->length);
    if (seq == NULL || sk_ASN1_TYPE_num(seq) != 2)
        goto out;
    for (i = 0; i < 2; i++) {
        const ASN1_TYPE *e = sk_ASN1_TYPE_value(seq, i);

        if (e->type != V_ASN1_BMPSTRING || (len = ASN1_STRING_to_UTF8(&u, e->value.bmpstring)) < 0)
            goto out;
        snprintf(i == 0 ? name : value, i == 0 ? ncap : vcap, "%.*s", len, (char *)u);
        OPENSSL_free(u);
        u = NULL;
    }
    rc = 0;
out:
    OPENSSL_free(u);
    sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
    return rc;
}

/* szOID_ENROLLMENT_NAME_VALUE_PAIR, which OpenSSL has no NID for: made once. */
static ASN1_OBJECT *name_value_oid;
static pthread_once_t name_value_once = PTHREAD_ONCE_INIT;

static void name_value_init(void)
{
    name_value_oid = OBJ_txt2obj("1.3.6.1.4.1.311.13.2.1", 1);
}

/*
 * The validity a CSR asks for the way Windows certreq does: ValidityPeriod (a unit) and
 * ValidityPeriodUnits (a count) in szOID_ENROLLMENT_NAME_VALUE_PAIR attributes. 0 when it asks
 * for none (*days 0); 1 with *days, rounded up to whole days, years and months counted on the
 * calendar from now as Windows does; -1 with why when it asks in a way that cannot be read (a unit
 * or a count alone, an unknown unit, a count that is not a whole number from 1), which must not
 * pass for asking nothing.
 */
static int requested_validity(const eg_csr *csr, unsigned *days, char *why, size_t cap)
{
    static const struct {
        const char *unit;
        unsigned hours; /* 0: calendar months, 12 a year */
        unsigned months;
    } units[] = {
        {"years", 0, 12}, {"months", 0, 1}, {"weeks", 7 * 24, 0}, {"days", 24, 0}, {"hours", 1, 0}};
    const STACK_OF(X509_ATTRIBUTE) *attrs = eg_csr_attributes(csr);
    const ASN1_OBJECT *oid;
    unsigned long long count = 0, hours;
    char name[64], value[64], unit[64] = "", units_text[64] = "", *end;
    bool have_unit = false, have_count = false;
    int i = -1, j;

    *days = 0;
    pthread_once(&name_value_once, name_value_init);
    oid = name_value_oid;
    while (oid != NULL && (i = X509at_get_attr_by_OBJ(attrs, oid, i)) >= 0) {
        X509_ATTRIBUTE *a = X509at_get_attr(attrs, i);

        for (j = 0; j < X509_ATTRIBUTE_count(a); j++) {
            if (name_value(X509_ATTRIBUTE_get0_type(a, j), name, sizeof(name), value,
                           sizeof(value)) != 0)
                continue;
            if (strcasecmp(name, "ValidityPeriod") == 0) {
                snprintf(unit, sizeof(unit), "%s", value);
                have_unit = true;
            } else if (strcasecmp(name, "ValidityPeriodUnits") == 0) {
                snprintf(units_text, sizeof(units_text), "%s", value);
                have_count = true;
            }
        }
    }
    if (!have_unit && !have_count)
        return 0;
    errno = 0;
    if (have_count && units_text[0] >= '0' && units_text[0] <= '9')
        count = strtoull(units_text, &end, 10);
    if (!have_unit || !have_count || errno != 0 || count == 0 || *end != '\0') {
        char u[32], c[32];

        printable((const unsigned char *)unit, strlen(unit), u, sizeof(u));
        printable((const unsigned char *)units_text, strlen(units_text), c, sizeof(c));
        snprintf(why, cap,
                 "the requested validity cannot be read (ValidityPeriod %s%s%s, "
                 "ValidityPeriodUnits %s%s%s): it needs both, a unit and a whole number from 1",
                 have_unit ? "\"" : "", have_unit ? u : "missing", have_unit ? "\"" : "",
                 have_count ? "\"" : "", have_count ? c : "missing", have_count ? "\"" : "");
        return -1;
    }
    for (size_t k = 0; k < sizeof(units) / sizeof(units[0]); k++) {
        if (strcasecmp(unit, units[k].unit) != 0)
            continue;
        if (count > 100000) { /* past any profile's 3650 days, in any unit */
            *days = UINT_MAX;
            return 1;
        }
        if (units[k].months != 0) {
            time_t now = time(NULL), then;
            struct tm tm;

            if (gmtime_r(&now, &tm) == NULL)
                return -1;
            tm.tm_mon += (int)(count * units[k].months);
            if ((then = timegm(&tm)) == (time_t)-1 || then <= now) {
                *days = UINT_MAX;
                return 1;
            }
            hours = ((unsigned long long)(then - now) + 3599) / 3600;
        } else {
            hours = count * units[k].hours;
        }
        *days = (unsigned)((hours + 23) / 24);
        return 1;
    }
    {
        char u[32];

        printable((const unsigned char *)unit, strlen(unit), u, sizeof(u));
        snprintf(why, cap,
                 "the requested validity's unit \"%s\" is not Years, Months, Weeks, Days or "
                 "Hours",
                 u);
    }
    return -1;
}

unsigned eg_policy_requested_days(const eg_csr *csr)
{
    unsigned days;
    char why[8];

    return requested_validity(csr, &days, why, sizeof(why)) == 1 ? days : 0;
}

static int check_validity(const eg_profile_cfg *p, const eg_csr *csr, eg_policy_verdict *v)
{
    unsigned max = p->max_days ? p->max_days : 365, asked;
    char why[200];

    switch (requested_validity(csr, &asked, why, sizeof(why))) {
    case -1:
        return refuse(v, EG_DIM_VALIDITY, "%s", why);
    case 1:
        if (asked == UINT_MAX)
            return refuse(v, EG_DIM_VALIDITY,
                          "a validity of more than 100000 units was requested; this profile "
                          "allows at most %u days",
                          max);
        if (asked > max)
            return refuse(v, EG_DIM_VALIDITY,
                          "a validity of %u days was requested; this profile allows at most %u",
                          asked, max);
        break;
    default:
        break;
    }
    return 0;
}

static int check(const eg_policy *pol, const eg_csr *csr, bool key, eg_policy_verdict *v)
{
    const STACK_OF(X509_EXTENSION) *exts = eg_csr_extensions(csr);
    eg_policy_verdict r = {0};
    int rc = 0;

    if (key)
        rc = check_key(pol->cfg, csr, &r);
    if (key && rc == 0)
        rc = check_signature(pol->cfg, csr, &r);
    if (rc == 0)
        rc = check_eku(pol->cfg, exts, &r);
    if (rc == 0)
        rc = check_sans(pol->cfg, exts, &r);
    if (rc == 0)
        rc = check_subject(pol, csr, exts, &r);
    if (rc == 0)
        rc = check_attrs(pol->cfg, csr, &r);
    if (rc == 0)
        rc = check_validity(pol->cfg, csr, &r);
    if (rc == 1)
        *v = r;
    return rc;
}

int eg_policy_check(const eg_policy *pol, const eg_csr *csr, eg_policy_verdict *v)
{
    return check(pol, csr, true, v);
}

int eg_policy_check_request(const eg_policy *pol, const eg_csr *csr, eg_policy_verdict *v)
{
    return check(pol, csr, false, v);
}
