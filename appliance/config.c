/*
 * estgated's INI file. inih does the lexing; a reader of our own feeds it one
 * line at a time, so we always know the line number (Debian's inih is built
 * without INI_HANDLER_LINENO), see section headers even when the section is
 * empty, and turn lines inih would silently cut or misread into errors.
 * Every problem is collected; a file with any problem loads nothing.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "blocklist.h"
#include "config.h"
#include "expiry.h"
#include "p11.h"
#include "policy.h"
#include "skg.h"

#define MAX_KEYS 32 /* keys in the largest table (profile_keys); checked at build time below */
#define SHOWN    48 /* characters of a bad value quoted in a message */

typedef enum sec_kind { SEC_NONE, SEC_SERVER, SEC_TOKEN, SEC_PROFILE, SEC_SKIP } sec_kind;

typedef struct section_seen {
    unsigned header_line;
    unsigned key_line[MAX_KEYS]; /* where each key of the table was first set; 0: unset */
} section_seen;

typedef struct loader {
    eg_config *cfg;
    eg_config_errors *errs;
    FILE *fp;
    char *dir; /* relative paths in the file are relative to the file */
    char *buf;
    size_t cap;
    unsigned line; /* the line inih is working on */
    sec_kind kind;
    char section[80];
    eg_profile_cfg *prof;
    section_seen *seen;
    section_seen server, token, profiles[EG_MAX_PROFILES];
    bool oom;
} loader;

/* V_CERTS: PEM certificates; V_CACHAIN: a CA's first; V_TRUST: at least one CA among them. */
typedef enum val_kind {
    V_STR,
    V_PATH,
    V_URI,
    V_CERTS,
    V_CACHAIN,
    V_TRUST,
    V_BOOL,
    V_UINT,
    V_FN
} val_kind;

typedef int (*parse_fn)(loader *ld, void *base, const char *key, const char *value);

typedef struct key_spec {
    const char *name;
    val_kind kind;
    size_t off;
    unsigned min, max; /* V_UINT */
    bool repeatable, required;
    parse_fn parse; /* V_FN */
} key_spec;

/* --- errors --- */

__attribute__((format(printf, 5, 0))) static void add_error_v(loader *ld, unsigned line,
                                                              const char *section, const char *key,
                                                              const char *fmt, va_list ap)
{
    eg_config_errors *e = ld->errs;
    eg_config_error *items = realloc(e->items, (e->n + 1) * sizeof(*items));

    if (items == NULL) {
        ld->oom = true;
        return;
    }
    e->items = items;
    memset(&items[e->n], 0, sizeof(items[e->n]));
    items[e->n].line = line;
    snprintf(items[e->n].section, sizeof(items[e->n].section), "%s", section);
    snprintf(items[e->n].key, sizeof(items[e->n].key), "%s", key);
    vsnprintf(items[e->n].message, sizeof(items[e->n].message), fmt, ap);
    e->n++;
}

__attribute__((format(printf, 5, 6))) static void
err_at(loader *ld, unsigned line, const char *section, const char *key, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    add_error_v(ld, line, section, key, fmt, ap);
    va_end(ap);
}

/* An error on the line being parsed, in the current section. */
__attribute__((format(printf, 3, 4))) static void err_here(loader *ld, const char *key,
                                                           const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    add_error_v(ld, ld->line, ld->section, key, fmt, ap);
    va_end(ap);
}

void eg_config_errors_clear(eg_config_errors *errs)
{
    if (errs == NULL)
        return;
    free(errs->items);
    errs->items = NULL;
    errs->n = 0;
}

void eg_config_errors_print(const eg_config_errors *errs, const char *path, FILE *fp)
{
    for (size_t i = 0; errs != NULL && i < errs->n; i++) {
        const eg_config_error *e = &errs->items[i];

        fprintf(fp, "%s:%u:", path, e->line);
        if (e->section[0] != '\0')
            fprintf(fp, " [%s]", e->section);
        if (e->key[0] != '\0')
            fprintf(fp, " %s", e->key);
        fprintf(fp, "%s %s\n", e->section[0] != '\0' || e->key[0] != '\0' ? ":" : "", e->message);
    }
}

/* --- small parsers: 0 and the value, or -1 --- */

static char *xstrdup(loader *ld, const char *s)
{
    char *d = strdup(s);

    if (d == NULL)
        ld->oom = true;
    return d;
}

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                "off", "0"};

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
            *out = strcasecmp(v, yes[i]) == 0;
            return 0;
        }
    }
    return -1;
}

static int parse_ulong(const char *v, unsigned long max, unsigned long *out, const char **end)
{
    unsigned long n = 0;
    const char *p = v;

    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned long d = (unsigned long)(*p - '0');

        if (d > max || n > (max - d) / 10) /* d > max: max - d would wrap */
            return -1;
        n = n * 10 + d;
    }
    *out = n;
    *end = p;
    return 0;
}

static char *join_path(loader *ld, const char *value)
{
    char *p = NULL;

    if (value[0] == '/')
        return xstrdup(ld, value);
    if (asprintf(&p, "%s/%s", ld->dir, value) < 0) {
        ld->oom = true;
        return NULL;
    }
    return p;
}

/* --- checks of the files a key names --- */

/* Every PEM block in path is a certificate that parses; at least one. */
static int check_certs(loader *ld, const char *key, const char *path, val_kind kind)
{
    bool ca_first = kind == V_CACHAIN;
    struct stat st;
    BIO *bio = NULL;
    X509 *x;
    int n = 0, ncas = 0, rc = -1;

    if (stat(path, &st) != 0) {
        err_here(ld, key, "'%s': %s; expected a PEM certificate file", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        err_here(ld, key, "'%s' is not a regular file; expected a PEM certificate file", path);
        goto out;
    }
    if ((bio = BIO_new_file(path, "r")) == NULL) {
        err_here(ld, key, "'%s': cannot be read", path);
        goto out;
    }
    ERR_set_mark();
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (n++ == 0 && ca_first && X509_check_ca(x) == 0) {
            err_here(ld, key, "'%s': the first certificate is not a CA certificate", path);
            X509_free(x);
            ERR_pop_to_mark();
            goto out;
        }
        ncas += X509_check_ca(x) != 0;
        X509_free(x);
    }
    if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE) {
        err_here(ld, key, "'%s': certificate %d does not parse", path, n + 1);
    } else if (n == 0) {
        err_here(ld, key, "'%s' holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path);
    } else if (kind == V_TRUST && ncas == 0) {
        /* Every device would get 403 auth.cert_untrusted, and nothing would point here. */
        err_here(ld, key,
                 "'%s' holds no CA certificate, only %d end-entity certificate%s: it must hold "
                 "the CAs that issue the clients' certificates",
                 path, n, n == 1 ? "" : "s");
    } else {
        rc = 0;
    }
    ERR_pop_to_mark();
out:
    BIO_free(bio);
    return rc;
}

#define CREDENTIAL "credential:"

/*
 * pin_file = credential:NAME: the file systemd gives the service for LoadCredential=NAME:FILE
 * (or SetCredentialEncrypted=), in $CREDENTIALS_DIRECTORY. The PIN's own file can then stay
 * readable by root alone. NULL, said, when the name is not one or there is no such directory.
 */
static char *credential_path(loader *ld, const char *key, const char *value)
{
    const char *name = value + strlen(CREDENTIAL), *dir = getenv("CREDENTIALS_DIRECTORY");
    char *p = NULL;

    if (*name == 0 || strchr(name, '/') != NULL || strcmp(name, ".") == 0 ||
        strcmp(name, "..") == 0) {
        err_here(ld, key,
                 "'%s': expected credential:NAME, NAME as in the unit's "
                 "LoadCredential=NAME:FILE (no '/')",
                 value);
        return NULL;
    }
    if (dir == NULL || dir[0] != '/') {
        err_here(ld, key,
                 "'%s' is read from systemd's credentials, but CREDENTIALS_DIRECTORY is not set: "
                 "this is not the service's context. Check the file where the service runs "
                 "(systemctl reload estgated runs --check-config there), or name a file",
                 value);
        return NULL;
    }
    if (asprintf(&p, "%s/%s", dir, name) < 0) {
        ld->oom = true;
        return NULL;
    }
    return p;
}

static int parse_pin_file(loader *ld, void *base, const char *key, const char *value)
{
    struct stat st;
    char *path;
    int rc = -1;

    if (strncmp(value, CREDENTIAL, strlen(CREDENTIAL)) == 0)
        path = credential_path(ld, key, value);
    else
        path = join_path(ld, value);
    if (path == NULL)
        goto out;
    if (strncmp(value, CREDENTIAL, strlen(CREDENTIAL)) == 0 && stat(path, &st) != 0 &&
        errno == EACCES && access(getenv("CREDENTIALS_DIRECTORY"), X_OK) != 0) {
        /* systemd gives credentials to ExecStartPre= and ExecStart=, not to ExecReload=: its
           --check-config finds the directory but may not enter it. The PIN was checked at
           start, and a reload does not read [token] again. */
        ((eg_config *)base)->pin_file = path;
        ((eg_config *)base)->pin_not_here = true;
        path = NULL;
        rc = 0;
    } else if (stat(path, &st) != 0) {
        /* A value without a '/' may be the PIN itself, typed where its file belongs: not
           repeated into a log. */
        if (strchr(value, '/') == NULL && strncmp(value, CREDENTIAL, strlen(CREDENTIAL)) != 0)
            err_here(ld, key,
                     "the file it names (a name without a '/', looked for next to this file) "
                     "cannot be found: %s; it must name a file holding the user PIN, not the PIN",
                     strerror(errno));
        else
            err_here(ld, key, "'%s': %s; expected a file holding the user PIN", path,
                     strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        err_here(ld, key, "'%s' is not a regular file", path);
    } else if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
        err_here(ld, key, "'%s' is accessible by everyone (mode %04o); chmod o-rw it", path,
                 (unsigned)(st.st_mode & 07777));
    } else if (access(path, R_OK) != 0) {
        /* The daemon reads it as the user it runs as, and so does the check (ExecStartPre). */
        err_here(ld, key,
                 "'%s' cannot be read by this user (uid %u): %s; estgated reads it as the user "
                 "it runs as (under systemd, pin_file = credential:NAME with LoadCredential= "
                 "keeps the file root's)",
                 path, (unsigned)geteuid(), strerror(errno));
    } else {
        ((eg_config *)base)->pin_file = path;
        path = NULL;
        rc = 0;
    }
out:
    free(path);
    return rc;
}

/* A key's URI: pkcs11:, naming an object by id= or object=, no blanks. */
static int check_uri(loader *ld, const char *key, const char *v)
{
    const char *p;

    if (strncmp(v, "pkcs11:", 7) != 0) {
        err_here(ld, key, "'%.*s' is not a pkcs11: URI (RFC 7512)", SHOWN, v);
        return -1;
    }
    for (p = v; *p != '\0'; p++) {
        if (isspace((unsigned char)*p)) {
            err_here(ld, key, "'%.*s': blanks in a URI must be written %%20", SHOWN, v);
            return -1;
        }
    }
    for (p = v + 6; p != NULL && *p != '\0' && *p != '?'; p = strpbrk(p + 1, ";?")) {
        if (strncmp(p + 1, "id=", 3) == 0 || strncmp(p + 1, "object=", 7) == 0)
            return 0;
        if (*p == '?')
            break;
    }
    err_here(ld, key, "'%.*s' names no key: add object=LABEL or id=HEX", SHOWN, v);
    return -1;
}

/* --- [server] --- */

/* "ADDRESS:PORT[ tls12]", IPv6 in brackets; host gets the address without them. */
static int split_listen(const char *value, char *host, size_t hostsz, unsigned long *port,
                        bool *tls12)
{
    unsigned char addr[16];
    const char *p, *end;
    int af = AF_INET;
    size_t n;

    if (value[0] == '[') {
        af = AF_INET6;
        if ((p = strchr(++value, ']')) == NULL)
            return -1;
        n = (size_t)(p++ - value);
    } else {
        if ((p = strchr(value, ':')) == NULL)
            return -1;
        n = (size_t)(p - value);
    }
    if (n == 0 || n >= hostsz)
        return -1;
    memcpy(host, value, n);
    host[n] = '\0';
    if (*p != ':' || parse_ulong(p + 1, 65535, port, &end) != 0)
        return -1;
    end += strspn(end, " \t");
    *tls12 = strcmp(end, "tls12") == 0;
    if (!*tls12 && *end != '\0')
        return -1;
    return inet_pton(af, host, addr) == 1 ? 0 : -1;
}

static int parse_listen(loader *ld, void *base, const char *key, const char *value)
{
    eg_config *cfg = base;
    eg_listener_cfg *l;
    char host[INET6_ADDRSTRLEN];
    unsigned long port;
    bool tls12;

    if (split_listen(value, host, sizeof(host), &port, &tls12) != 0) {
        err_here(ld, key,
                 "'%.*s' is not ADDRESS:PORT[ tls12], e.g. 127.0.0.1:8443 or [::]:8444 tls12",
                 SHOWN, value);
        return -1;
    }
    /* Port 0 asks for a free port each time: never a clash. The any-address of a family
       (0.0.0.0, [::]) takes the port on every address of that family, so a specific address of
       the same family and port could not be bound beside it. */
    for (size_t i = 0; port != 0 && i < cfg->nlisteners; i++) {
        const char *other = cfg->listeners[i].address;
        bool v6 = strchr(host, ':') != NULL, other_v6 = strchr(other, ':') != NULL;
        bool any = strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0;
        bool other_any = strcmp(other, "0.0.0.0") == 0 || strcmp(other, "::") == 0;

        if (cfg->listeners[i].port != port || v6 != other_v6)
            continue;
        if (strcmp(other, host) == 0) {
            err_here(ld, key, "'%.*s' is listed twice", SHOWN, value);
            return -1;
        }
        if (any || other_any) {
            err_here(ld, key,
                     "'%.*s' overlaps the listener on %s%s%s port %lu: %s takes that port on "
                     "every address; use one or the other",
                     SHOWN, value, other_v6 ? "[" : "", other, other_v6 ? "]" : "", port,
                     any ? host : other);
            return -1;
        }
    }
    if (cfg->nlisteners == EG_MAX_LISTENERS) {
        err_here(ld, key, "more than %d listeners", EG_MAX_LISTENERS);
        return -1;
    }
    l = &cfg->listeners[cfg->nlisteners++];
    l->address = xstrdup(ld, host);
    l->port = (unsigned)port;
    l->allow_tls12 = tls12;
    return 0;
}

static int parse_size(loader *ld, void *base, const char *key, const char *value)
{
    unsigned long n, mult = 1;
    const char *end;

    if (parse_ulong(value, 1ul << 40, &n, &end) == 0) {
        if (*end == 'k' || *end == 'K')
            mult = 1024, end++;
        else if (*end == 'M')
            mult = 1024 * 1024, end++;
        if (*end == '\0' && n * mult >= 1024 && n * mult <= 16 * 1024 * 1024) {
            ((eg_config *)base)->max_body = n * mult;
            return 0;
        }
    }
    err_here(ld, key, "'%.*s' is not a size; use bytes or a k/M suffix, 1k to 16M", SHOWN, value);
    return -1;
}

/* Read with the configuration, once: --check-config and a reload name a bad line before
   anything changes, and the list in force is the one that was checked. */
static int parse_blocked_certs(loader *ld, void *base, const char *key, const char *value)
{
    eg_config *cfg = base;
    char *path = join_path(ld, value), why[PATH_MAX + 128];
    eg_blocklist *b = NULL;

    if (path == NULL)
        return -1;
    if (eg_blocklist_load(path, &b, why, sizeof(why)) != 0) {
        err_here(ld, key, "%s", why);
        free(path);
        return -1;
    }
    free(cfg->blocked_certs_file);
    eg_blocklist_free(cfg->blocked);
    cfg->blocked_certs_file = path;
    cfg->blocked = b;
    return 0;
}

static int parse_log_level(loader *ld, void *base, const char *key, const char *value)
{
    if (strcmp(value, "info") != 0 && strcmp(value, "debug") != 0 &&
        strcmp(value, "warning") != 0) {
        err_here(ld, key, "'%.*s' is not a log level; use info, debug or warning", SHOWN, value);
        return -1;
    }
    free(((eg_config *)base)->log_level);
    ((eg_config *)base)->log_level = xstrdup(ld, value);
    return 0;
}

/* --- [token] --- */

static int parse_calls(loader *ld, void *base, const char *key, const char *value)
{
    static const eg_calls modes[] = {EG_CALLS_AUTO, EG_CALLS_CONCURRENT, EG_CALLS_SERIAL};

    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcmp(value, eg_calls_name(modes[i])) == 0) {
            ((eg_config *)base)->calls = modes[i];
            return 0;
        }
    }
    err_here(ld, key, "'%.*s' is not a calls mode; use auto, concurrent or serial", SHOWN, value);
    return -1;
}

/* "auto" (0) or a number of module instances. */
static int parse_connections(loader *ld, void *base, const char *key, const char *value)
{
    const char *end;
    unsigned long n;

    if (strcmp(value, "auto") == 0) {
        ((eg_config *)base)->connections = 0;
        return 0;
    }
    if (parse_ulong(value, EG_CONNECTIONS_MAX, &n, &end) != 0 || *end != '\0' || n < 1) {
        err_here(ld, key, "'%.*s' is not a number of connections; use auto or 1 to %d", SHOWN,
                 value, EG_CONNECTIONS_MAX);
        return -1;
    }
    ((eg_config *)base)->connections = (unsigned)n;
    return 0;
}

static int parse_module(loader *ld, void *base, const char *key, const char *value)
{
    char *path;

    /* A bare name is for the dynamic linker to find; a path must be there now. */
    if (strchr(value, '/') == NULL)
        return (((eg_config *)base)->module_path = xstrdup(ld, value)) != NULL ? 0 : -1;
    if ((path = join_path(ld, value)) == NULL)
        return -1;
    if (access(path, F_OK) != 0) {
        err_here(ld, key, "'%s': %s; expected the PKCS#11 module's path", path, strerror(errno));
        free(path);
        return -1;
    }
    ((eg_config *)base)->module_path = path;
    return 0;
}

static int parse_token_label(loader *ld, void *base, const char *key, const char *value)
{
    if (strlen(value) > 32) {
        err_here(ld, key, "'%.*s' is longer than a token label can be (32 bytes)", SHOWN, value);
        return -1;
    }
    ((eg_config *)base)->token_label = xstrdup(ld, value);
    return 0;
}

/* --- [profile NAME]: lists --- */

typedef int (*item_fn)(loader *ld, eg_profile_cfg *p, const char *key, const char *item);

static char *trim(char *s)
{
    char *e;

    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Calls fn for each comma-separated item of value; -1 when any was wrong. */
static int each_item(loader *ld, eg_profile_cfg *p, const char *key, const char *value, item_fn fn)
{
    char *copy = xstrdup(ld, value), *item, *comma;
    int rc = 0;

    for (item = copy; item != NULL; item = comma != NULL ? comma + 1 : NULL) {
        if ((comma = strchr(item, ',')) != NULL)
            *comma = '\0';
        item = trim(item);
        if (item[0] == '\0') {
            err_here(ld, key, "'%.*s' has an empty item between commas", SHOWN, value);
            rc = -1;
        } else if (fn(ld, p, key, item) != 0) {
            rc = -1;
        }
    }
    free(copy);
    return copy == NULL ? -1 : rc;
}

static int add_nid(loader *ld, const char *key, const char *item, int *arr, size_t *n, int nid)
{
    for (size_t i = 0; i < *n; i++) {
        if (arr[i] == nid) {
            err_here(ld, key, "'%s' is listed twice", item);
            return -1;
        }
    }
    if (*n == EG_MAX_RULES) {
        err_here(ld, key, "more than %d items", EG_MAX_RULES);
        return -1;
    }
    arr[(*n)++] = nid;
    return 0;
}

static int auth_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    static const struct {
        const char *name;
        unsigned bit;
    } modes[] = {{"none", EG_AUTH_NONE}, {"basic", EG_AUTH_BASIC}, {"mtls", EG_AUTH_MTLS}};

    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcasecmp(item, modes[i].name) == 0) {
            p->auth |= modes[i].bit;
            return 0;
        }
    }
    err_here(ld, key, "'%.*s' is not an auth mode; use none, basic or mtls", SHOWN, item);
    return -1;
}

static int parse_auth(loader *ld, void *base, const char *key, const char *value)
{
    eg_profile_cfg *p = base;

    if (each_item(ld, p, key, value, auth_item) != 0)
        return -1;
    /* Any mode that succeeds admits, so "none" beside another would void it. */
    if ((p->auth & EG_AUTH_NONE) != 0 && p->auth != EG_AUTH_NONE) {
        err_here(ld, key, "'none' admits anyone: it cannot be combined with basic or mtls");
        return -1;
    }
    return 0;
}

static int rsa_rule(const char *bits, eg_keyrule_cfg *r)
{
    unsigned long min, max = 0;
    const char *end;

    if (parse_ulong(bits, 1000000, &min, &end) != 0)
        return -1;
    if (*end == '-' && parse_ulong(end + 1, 1000000, &max, &end) != 0)
        return -1;
    if (*end != '\0' || min < 2048 || min > 8192 || (max != 0 && (max < min || max > 8192)))
        return -1;
    r->type = EVP_PKEY_RSA;
    r->min_bits = (int)min;
    r->max_bits = (int)max;
    return 0;
}

static int key_rule(loader *ld, const char *key, const char *item, eg_keyrule_cfg *out)
{
    static const struct {
        const char *name;
        int nid;
    } curves[] = {
        {"P-256", NID_X9_62_prime256v1}, {"P-384", NID_secp384r1}, {"P-521", NID_secp521r1}};
    eg_keyrule_cfg r = {0};

    if (strcasecmp(item, "ed25519") == 0) {
        r.type = EVP_PKEY_ED25519;
    } else if (strncasecmp(item, "ec:", 3) == 0) {
        for (size_t i = 0; i < sizeof(curves) / sizeof(curves[0]); i++)
            if (strcasecmp(item + 3, curves[i].name) == 0)
                r.type = EVP_PKEY_EC, r.curve_nid = curves[i].nid;
    } else if (strncasecmp(item, "rsa:", 4) == 0 && rsa_rule(item + 4, &r) != 0) {
        err_here(ld, key, "'%.*s': RSA sizes are rsa:MIN-MAX or rsa:MIN, 2048 to 8192 bits", SHOWN,
                 item);
        return -1;
    }
    if (r.type == 0) {
        err_here(
            ld, key,
            "'%.*s' is not a key type; use rsa:MIN-MAX, ec:P-256, ec:P-384, ec:P-521 or ed25519",
            SHOWN, item);
        return -1;
    }
    *out = r;
    return 0;
}

static int key_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    eg_keyrule_cfg r;

    if (key_rule(ld, key, item, &r) != 0)
        return -1;
    if (p->nkeys == EG_MAX_RULES) {
        err_here(ld, key, "more than %d key types", EG_MAX_RULES);
        return -1;
    }
    p->keys[p->nkeys++] = r;
    return 0;
}

static int parse_key_types(loader *ld, void *base, const char *key, const char *value)
{
    return each_item(ld, base, key, value, key_item);
}

/* --- the CSR's signature --- */

const eg_csr_digest eg_csr_digests[EG_CSR_DIGESTS] = {
    {"sha1", NID_sha1},         {"sha224", NID_sha224},     {"sha256", NID_sha256},
    {"sha384", NID_sha384},     {"sha512", NID_sha512},     {"sha3-256", NID_sha3_256},
    {"sha3-384", NID_sha3_384}, {"sha3-512", NID_sha3_512},
};

int eg_csr_signature_nid(int key_type, int md_nid)
{
    int pk = key_type == EVP_PKEY_EC    ? NID_X9_62_id_ecPublicKey
             : key_type == EVP_PKEY_RSA ? NID_rsaEncryption
                                        : NID_undef;
    int sig;

    return pk != NID_undef && OBJ_find_sigid_by_algs(&sig, md_nid, pk) ? sig : NID_undef;
}

static int csr_digest_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    for (size_t i = 0; i < EG_CSR_DIGESTS; i++) {
        if (strcasecmp(item, eg_csr_digests[i].name) != 0)
            continue;
        if (p->csr_digests & (1u << i)) {
            err_here(ld, key, "'%s' is listed twice", item);
            return -1;
        }
        p->csr_digests |= 1u << i;
        return 0;
    }
    err_here(ld, key,
             "'%.*s' is not a digest a CSR may be signed with; use sha256, sha384, sha512, "
             "sha224, sha1 or sha3-256/384/512 (MD5 and older are never accepted)",
             SHOWN, item);
    return -1;
}

static int parse_csr_digests(loader *ld, void *base, const char *key, const char *value)
{
    return each_item(ld, base, key, value, csr_digest_item);
}

/* --- serverkeygen --- */

static int skg_mode_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    if (strcasecmp(item, "plaintext") == 0)
        p->skg_modes |= EG_SKG_PLAINTEXT;
    else if (strcasecmp(item, "encrypt") == 0)
        p->skg_modes |= EG_SKG_ENCRYPT;
    else {
        err_here(ld, key, "'%.*s' is not a serverkeygen mode; use plaintext and/or encrypt", SHOWN,
                 item);
        return -1;
    }
    return 0;
}

static int parse_skg(loader *ld, void *base, const char *key, const char *value)
{
    ((eg_profile_cfg *)base)->skg_line = ld->line;
    return each_item(ld, base, key, value, skg_mode_item);
}

/* What the appliance generates: RSA 2048-4096 or EC P-256/P-384 (issue's token key types). */
static int skg_key_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    eg_keyrule_cfg r;

    if (key_rule(ld, key, item, &r) != 0)
        return -1;
    if ((r.type == EVP_PKEY_RSA && (r.max_bits == 0 ? r.min_bits : r.max_bits) > 4096) ||
        r.type == EVP_PKEY_ED25519 || (r.type == EVP_PKEY_EC && r.curve_nid == NID_secp521r1)) {
        err_here(ld, key,
                 "'%.*s': server-generated keys are rsa:2048 to rsa:4096, ec:P-256 or "
                 "ec:P-384",
                 SHOWN, item);
        return -1;
    }
    /* Tokens make RSA keys of these sizes (NSS refuses others); generation rounds to them. */
    if (r.type == EVP_PKEY_RSA) {
        int max = r.max_bits == 0 ? r.min_bits : r.max_bits;
        bool standard = false;

        for (int bits = 2048; bits <= 4096; bits += 1024) /* 2048, 3072, 4096 */
            standard = standard || (bits >= r.min_bits && bits <= max);
        if (!standard) {
            err_here(ld, key,
                     "'%.*s' allows none of 2048, 3072 and 4096 bits, the RSA sizes "
                     "server-generated keys have",
                     SHOWN, item);
            return -1;
        }
    }
    if (p->nskg_keys == EG_MAX_RULES) {
        err_here(ld, key, "more than %d key types", EG_MAX_RULES);
        return -1;
    }
    p->skg_keys[p->nskg_keys++] = r;
    return 0;
}

static int parse_skg_keys(loader *ld, void *base, const char *key, const char *value)
{
    ((eg_profile_cfg *)base)->skg_keys_line = ld->line;
    return each_item(ld, base, key, value, skg_key_item);
}

static int skg_rsa_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    int v = strcasecmp(item, "oaep-sha1") == 0     ? EG_SKG_RSA_OAEP_SHA1
            : strcasecmp(item, "oaep-sha256") == 0 ? EG_SKG_RSA_OAEP_SHA256
            : strcasecmp(item, "pkcs1") == 0       ? EG_SKG_RSA_PKCS1
                                                   : -1;

    if (v < 0) {
        err_here(ld, key, "'%.*s': use oaep-sha256, oaep-sha1 or pkcs1", SHOWN, item);
        return -1;
    }
    for (size_t i = 0; i < p->nskg_rsa; i++) {
        if (p->skg_rsa[i] == v) {
            err_here(ld, key, "'%s' is listed twice", item);
            return -1;
        }
    }
    p->skg_rsa[p->nskg_rsa++] = v;
    return 0;
}

static int parse_skg_rsa(loader *ld, void *base, const char *key, const char *value)
{
    ((eg_profile_cfg *)base)->skg_rsa_line = ld->line;
    return each_item(ld, base, key, value, skg_rsa_item);
}

/* "HEXID pkcs11:URI": a DecryptKeyIdentifier and the token AES key it names. */
static int parse_skg_kek(loader *ld, void *base, const char *key, const char *value)
{
    eg_profile_cfg *p = base;
    eg_skg_kek_cfg k = {.line = ld->line};
    const char *sp = strpbrk(value, " \t");
    size_t hexlen = sp != NULL ? (size_t)(sp - value) : 0;

    if (sp == NULL || hexlen % 2 != 0 || hexlen == 0 || hexlen > 2 * sizeof(k.id) ||
        strspn(value, "0123456789abcdefABCDEF") < hexlen) {
        err_here(ld, key, "'%.*s': expected KEYID URI, KEYID 1 to 64 octets in hex", SHOWN, value);
        return -1;
    }
    for (size_t i = 0; i < hexlen / 2; i++) {
        unsigned v;

        sscanf(value + 2 * i, "%2x", &v);
        k.id[i] = (uint8_t)v;
    }
    k.id_len = hexlen / 2;
    sp += strspn(sp, " \t");
    if (check_uri(ld, key, sp) != 0)
        return -1;
    for (size_t i = 0; i < p->nskg_keks; i++) {
        if (p->skg_keks[i].id_len == k.id_len && memcmp(p->skg_keks[i].id, k.id, k.id_len) == 0) {
            err_here(ld, key, "key identifier %.*s is already given at line %u", (int)hexlen, value,
                     p->skg_keks[i].line);
            return -1;
        }
    }
    if (p->nskg_keks == EG_MAX_KEKS) {
        err_here(ld, key, "more than %d key-encryption keys", EG_MAX_KEKS);
        return -1;
    }
    if ((k.uri = xstrdup(ld, sp)) == NULL)
        return -1;
    p->skg_keks[p->nskg_keks++] = k;
    return 0;
}

static int eku_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    static const struct {
        const char *name;
        int nid;
    } ekus[] = {{"clientAuth", NID_client_auth},        {"serverAuth", NID_server_auth},
                {"emailProtection", NID_email_protect}, {"codeSigning", NID_code_sign},
                {"OCSPSigning", NID_OCSP_sign},         {"timeStamping", NID_time_stamp}};

    for (size_t i = 0; i < sizeof(ekus) / sizeof(ekus[0]); i++)
        if (strcasecmp(item, ekus[i].name) == 0)
            return add_nid(ld, key, item, p->ekus, &p->nekus, ekus[i].nid);
    err_here(ld, key,
             "'%.*s' is not an extended key usage; use clientAuth, serverAuth, emailProtection, "
             "codeSigning, OCSPSigning or timeStamping",
             SHOWN, item);
    return -1;
}

static int parse_eku(loader *ld, void *base, const char *key, const char *value)
{
    return each_item(ld, base, key, value, eku_item);
}

int eg_subject_attr_nid(const char *name)
{
    static const struct {
        const char *name;
        int nid;
    } attrs[] = {{"CN", NID_commonName},
                 {"O", NID_organizationName},
                 {"OU", NID_organizationalUnitName},
                 {"C", NID_countryName},
                 {"ST", NID_stateOrProvinceName},
                 {"L", NID_localityName},
                 {"serialNumber", NID_serialNumber},
                 {"emailAddress", NID_pkcs9_emailAddress},
                 {"UID", NID_userId},
                 {"DC", NID_domainComponent}};

    for (size_t i = 0; i < sizeof(attrs) / sizeof(attrs[0]); i++)
        if (strcasecmp(name, attrs[i].name) == 0)
            return attrs[i].nid;
    return NID_undef;
}

#define SUBJECT_NAMES "CN, O, OU, C, ST, L, serialNumber, emailAddress, UID or DC"

static int subject_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    int nid = eg_subject_attr_nid(item);

    if (nid == NID_undef) {
        err_here(ld, key, "'%.*s' is not a subject attribute; use " SUBJECT_NAMES, SHOWN, item);
        return -1;
    }
    return add_nid(ld, key, item, p->subject_nids, &p->nsubject_nids, nid);
}

static int parse_subject_attrs(loader *ld, void *base, const char *key, const char *value)
{
    return each_item(ld, base, key, value, subject_item);
}

/* One RDN of a template, "ATTR=VALUE", where ${cn} is the only variable. */
static int template_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    char attr[32];
    const char *eq = strchr(item, '='), *var;
    size_t n = eq != NULL ? (size_t)(eq - item) : 0;

    if (n == 0 || n >= sizeof(attr) || eq[1] == '\0') {
        err_here(ld, key, "'%.*s' is not ATTRIBUTE=VALUE, e.g. CN=${cn}", SHOWN, item);
        return -1;
    }
    memcpy(attr, item, n);
    attr[n] = '\0';
    if (eg_subject_attr_nid(trim(attr)) == NID_undef) {
        err_here(ld, key, "'%.*s' is not a subject attribute; use " SUBJECT_NAMES, SHOWN, attr);
        return -1;
    }
    for (var = strstr(eq, "${"); var != NULL; var = strstr(var + 2, "${")) {
        if (strncmp(var, "${cn}", 5) != 0) {
            err_here(ld, key, "'%.*s': the only variable is ${cn}", SHOWN, item);
            return -1;
        }
    }
    return 0;
}

static int parse_subject_template(loader *ld, void *base, const char *key, const char *value)
{
    eg_profile_cfg *p = base;
    eg_subject_tmpl t;
    char err[256];

    if (each_item(ld, p, key, value, template_item) != 0)
        return -1;
    /* What the daemon will make of it, so that the check and the start cannot disagree. */
    if (eg_subject_tmpl_parse(value, &t, err, sizeof(err)) != 0) {
        err_here(ld, key, "%s", err);
        return -1;
    }
    p->subject_template = xstrdup(ld, value);
    return 0;
}

static int attr_item(loader *ld, eg_profile_cfg *p, const char *key, const char *item)
{
    int nid = OBJ_sn2nid(item);

    if (nid == NID_undef)
        nid = OBJ_ln2nid(item);
    if (nid == NID_undef) {
        err_here(ld, key, "'%.*s' is not an attribute OpenSSL knows, e.g. challengePassword", SHOWN,
                 item);
        return -1;
    }
    return add_nid(ld, key, item, p->required_attrs, &p->nrequired_attrs, nid);
}

static int parse_require_attrs(loader *ld, void *base, const char *key, const char *value)
{
    return each_item(ld, base, key, value, attr_item);
}

/* --- [profile NAME]: users, SAN rules, realm --- */

static int parse_user(loader *ld, void *base, const char *key, const char *value)
{
    eg_profile_cfg *p = base;
    const char *colon = strchr(value, ':');
    size_t n = colon != NULL ? (size_t)(colon - value) : 0;

    for (size_t i = 0; i < n; i++) {
        if (value[i] <= ' ' || value[i] > '~')
            n = 0; /* a Basic user-id is printable and has no blank */
    }
    if (n == 0 || n > 64) {
        err_here(ld, key, "expected NAME:HASH with a name of 1 to 64 printable characters");
        return -1;
    }
    if (!eg_password_hash_valid(colon + 1)) {
        err_here(ld, key,
                 "user '%.*s': the hash is not $pbkdf2-sha256$ITERATIONS$SALT$HASH; make one "
                 "with estgated --hash-password",
                 (int)n, value);
        return -1;
    }
    for (size_t i = 0; i < p->nusers; i++) {
        if (strlen(p->users[i].name) == n && strncmp(p->users[i].name, value, n) == 0) {
            err_here(ld, key, "user '%.*s' is listed twice", (int)n, value);
            return -1;
        }
    }
    if (p->nusers == EG_MAX_RULES) {
        err_here(ld, key, "more than %d users", EG_MAX_RULES);
        return -1;
    }
    p->users[p->nusers].name = strndup(value, n);
    p->users[p->nusers].hash = xstrdup(ld, colon + 1);
    if (p->users[p->nusers].name == NULL)
        ld->oom = true;
    p->nusers++;
    return 0;
}

/* A DNS name of letters, digits and hyphens, labels 1..63, after an optional "." or "*.". */
static bool dns_pattern_ok(const char *s)
{
    size_t label = 0;

    if (s[0] == '.')
        s++;
    else if (s[0] == '*' && s[1] == '.')
        s += 2;
    if (s[0] == '\0' || strlen(s) > 253)
        return false;
    for (; *s != '\0'; s++) {
        if (*s == '.') {
            if (label == 0 || s[-1] == '-')
                return false;
            label = 0;
        } else if (isalnum((unsigned char)*s) || (*s == '-' && label > 0)) {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return label > 0 && s[-1] != '-';
}

/* CIDR to canonical "ADDRESS/PREFIX" in out; -2 when bits beyond the prefix are set. */
static int cidr_canonical(const char *s, char *out, size_t outsz)
{
    char addr[INET6_ADDRSTRLEN];
    unsigned char bin[16];
    const char *slash = strchr(s, '/'), *end = "";
    size_t n = slash != NULL ? (size_t)(slash - s) : strlen(s);
    unsigned long bits;
    int af, max, rc = 0;

    if (n == 0 || n >= sizeof(addr))
        return -1;
    memcpy(addr, s, n);
    addr[n] = '\0';
    af = strchr(addr, ':') != NULL ? AF_INET6 : AF_INET;
    max = af == AF_INET6 ? 128 : 32;
    if (inet_pton(af, addr, bin) != 1)
        return -1;
    bits = (unsigned long)max;
    if (slash != NULL && (parse_ulong(slash + 1, (unsigned long)max, &bits, &end) != 0 || *end))
        return -1;
    for (int i = (int)bits; i < max; i++) {
        if (bin[i / 8] & (0x80 >> (i % 8))) {
            bin[i / 8] &= (unsigned char)~(0x80 >> (i % 8));
            rc = -2;
        }
    }
    inet_ntop(af, bin, addr, sizeof(addr));
    snprintf(out, outsz, "%s/%lu", addr, bits);
    return rc;
}

static bool uri_prefix_ok(const char *s)
{
    size_t scheme = strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");

    if (scheme == 0 || !isalpha((unsigned char)s[0]) || s[scheme] != ':')
        return false;
    for (; *s != '\0'; s++)
        if (*s <= ' ' || *s > '~')
            return false;
    return true;
}

/* Checks a SAN rule; *pattern is what to store (a canonical CIDR for ip:). */
static int san_rule(loader *ld, const char *key, const char *value, eg_sanrule_cfg *r, char *cidr,
                    size_t cidrsz)
{
    const char *v = strchr(value, ':') != NULL ? strchr(value, ':') + 1 : "";
    int rc;

    if (strncasecmp(value, "dns:", 4) == 0 && dns_pattern_ok(v)) {
        r->type = EG_SAN_DNS;
    } else if (strncasecmp(value, "email:", 6) == 0 && v[0] != '.' && dns_pattern_ok(v)) {
        r->type = EG_SAN_EMAIL;
    } else if (strncasecmp(value, "uri:", 4) == 0 && uri_prefix_ok(v)) {
        r->type = EG_SAN_URI;
    } else if (strncasecmp(value, "ip:", 3) == 0) {
        r->type = EG_SAN_IP;
        if ((rc = cidr_canonical(v, cidr, cidrsz)) == -2)
            err_here(ld, key, "'%.*s' has bits set beyond its prefix; did you mean ip:%s?", SHOWN,
                     value, cidr);
        else if (rc != 0)
            err_here(ld, key,
                     "'%.*s' is not an address range; use ip:ADDRESS/PREFIX, e.g. "
                     "ip:10.0.0.0/8 or ip:2001:db8::/32",
                     SHOWN, value);
        return rc;
    } else {
        err_here(ld, key,
                 "'%.*s' is not a SAN rule; use dns:NAME, dns:.DOMAIN, dns:*.DOMAIN, "
                 "ip:CIDR, email:DOMAIN or uri:PREFIX",
                 SHOWN, value);
        return -1;
    }
    snprintf(cidr, cidrsz, "%s", v);
    return 0;
}

static int parse_san(loader *ld, void *base, const char *key, const char *value)
{
    eg_profile_cfg *p = base;
    eg_sanrule_cfg r = {0};
    char pattern[300];

    if (strlen(value) >= sizeof(pattern)) {
        err_here(ld, key, "'%.*s...' is too long", SHOWN, value);
        return -1;
    }
    if (san_rule(ld, key, value, &r, pattern, sizeof(pattern)) != 0)
        return -1;
    if (p->nsans == EG_MAX_RULES) {
        err_here(ld, key, "more than %d SAN rules", EG_MAX_RULES);
        return -1;
    }
    r.pattern = xstrdup(ld, pattern);
    p->sans[p->nsans++] = r;
    return 0;
}

/* The realm is quoted into WWW-Authenticate: keep it to printable ASCII, no quotes. */
static int parse_realm(loader *ld, void *base, const char *key, const char *value)
{
    for (const char *c = value; *c != '\0'; c++) {
        if (*c < ' ' || *c > '~' || *c == '"' || *c == '\\' || c - value >= 128) {
            err_here(ld, key, "expected up to 128 printable ASCII characters without \" or \\");
            return -1;
        }
    }
    ((eg_profile_cfg *)base)->realm = xstrdup(ld, value);
    return 0;
}

/* issue_limit's windows, by the names the configuration gives them. */
static const struct {
    const char *name;
    unsigned s;
} periods[] = {{"minute", 60}, {"hour", 3600}, {"day", 86400}};

const char *eg_issue_limit_period(const eg_profile_cfg *p)
{
    for (size_t i = 0; i < sizeof(periods) / sizeof(periods[0]); i++)
        if (periods[i].s == p->issue_limit_s)
            return periods[i].name;
    return "window";
}

/* "N/minute", "N/hour" or "N/day": at most N new certificates per principal in the window. */
static int parse_issue_limit(loader *ld, void *base, const char *key, const char *value)
{
    eg_profile_cfg *p = base;
    unsigned long n;
    const char *end;

    if (parse_ulong(value, 1000000, &n, &end) == 0 && n >= 1 && *end == '/') {
        for (size_t i = 0; i < sizeof(periods) / sizeof(periods[0]); i++) {
            if (strcmp(end + 1, periods[i].name) == 0) {
                p->issue_limit = (unsigned)n;
                p->issue_limit_s = periods[i].s;
                return 0;
            }
        }
    }
    err_here(ld, key,
             "'%.*s' is not a limit; use COUNT/minute, COUNT/hour or COUNT/day, COUNT from 1 to "
             "1000000 (e.g. 10/hour)",
             SHOWN, value);
    return -1;
}

/* --- the key tables --- */

#define CFG(f) offsetof(eg_config, f)
#define PRO(f) offsetof(eg_profile_cfg, f)

static const key_spec server_keys[] = {
    {.name = "listen", .kind = V_FN, .repeatable = true, .parse = parse_listen},
    {.name = "tls_key", .kind = V_URI, .off = CFG(tls_key_uri), .required = true},
    {.name = "tls_chain", .kind = V_CERTS, .off = CFG(tls_chain_file), .required = true},
    {.name = "max_body", .kind = V_FN, .parse = parse_size},
    {.name = "threads", .kind = V_UINT, .off = CFG(threads), .min = 1, .max = 1024},
    {.name = "keepalive_ms", .kind = V_UINT, .off = CFG(keepalive_ms), .max = 600000},
    {.name = "request_timeout_ms",
     .kind = V_UINT,
     .off = CFG(request_timeout_ms),
     .min = 1000,
     .max = 600000},
    {.name = "ledger", .kind = V_PATH, .off = CFG(ledger_path)},
    {.name = "blocked_certs", .kind = V_FN, .parse = parse_blocked_certs},
    {.name = "auth_failures_per_minute",
     .kind = V_UINT,
     .off = CFG(auth_failures_per_minute),
     .max = 100000},
    {.name = "audit_keep_days", .kind = V_UINT, .off = CFG(audit_keep_days), .max = 36500},
    {.name = "audit_keep_rows", .kind = V_UINT, .off = CFG(audit_keep_rows), .max = 1000000000},
    {.name = "log_level", .kind = V_FN, .parse = parse_log_level},
    {.name = "log_refusals_per_second",
     .kind = V_UINT,
     .off = CFG(log_refusals_per_second),
     .max = 1000000},
    {.name = NULL},
};

static const key_spec token_keys[] = {
    {.name = "module", .kind = V_FN, .required = true, .parse = parse_module},
    {.name = "init_args", .kind = V_STR, .off = CFG(init_args)},
    {.name = "label", .kind = V_FN, .required = true, .parse = parse_token_label},
    {.name = "pin_file", .kind = V_FN, .required = true, .parse = parse_pin_file},
    {.name = "pool_size", .kind = V_UINT, .off = CFG(pool_size), .min = 1, .max = 256},
    {.name = "recover_ms", .kind = V_UINT, .off = CFG(recover_ms), .min = 1, .max = 600000},
    {.name = "calls", .kind = V_FN, .parse = parse_calls},
    {.name = "connections", .kind = V_FN, .parse = parse_connections},
    {.name = "hang_s", .kind = V_UINT, .off = CFG(hang_s), .max = 86400},
    {.name = NULL},
};

static const key_spec profile_keys[] = {
    {.name = "ca_key", .kind = V_URI, .off = PRO(ca_key_uri), .required = true},
    {.name = "ca_chain", .kind = V_CACHAIN, .off = PRO(ca_chain_file), .required = true},
    {.name = "auth", .kind = V_FN, .required = true, .parse = parse_auth},
    {.name = "realm", .kind = V_FN, .parse = parse_realm},
    {.name = "user", .kind = V_FN, .repeatable = true, .parse = parse_user},
    {.name = "client_ca", .kind = V_TRUST, .off = PRO(client_ca_file)},
    {.name = "key_types", .kind = V_FN, .parse = parse_key_types},
    {.name = "eku", .kind = V_FN, .parse = parse_eku},
    {.name = "san", .kind = V_FN, .repeatable = true, .parse = parse_san},
    {.name = "require_san", .kind = V_BOOL, .off = PRO(require_san)},
    {.name = "subject_attrs", .kind = V_FN, .parse = parse_subject_attrs},
    {.name = "subject_template", .kind = V_FN, .parse = parse_subject_template},
    {.name = "max_days", .kind = V_UINT, .off = PRO(max_days), .min = 1, .max = 3650},
    {.name = "allow_rekey", .kind = V_BOOL, .off = PRO(allow_rekey)},
    {.name = "renew_expired_days", .kind = V_UINT, .off = PRO(renew_expired_days), .max = 3650},
    {.name = "require_attrs", .kind = V_FN, .parse = parse_require_attrs},
    {.name = "require_channel_binding", .kind = V_BOOL, .off = PRO(require_channel_binding)},
    {.name = "csr_digests", .kind = V_FN, .parse = parse_csr_digests},
    {.name = "issue_limit", .kind = V_FN, .parse = parse_issue_limit},
    {.name = "serverkeygen", .kind = V_FN, .parse = parse_skg},
    {.name = "serverkeygen_key_types", .kind = V_FN, .parse = parse_skg_keys},
    {.name = "serverkeygen_recipients", .kind = V_CERTS, .off = PRO(skg_recipients_file)},
    {.name = "serverkeygen_csr_key", .kind = V_BOOL, .off = PRO(skg_csr_key)},
    {.name = "serverkeygen_kek", .kind = V_FN, .repeatable = true, .parse = parse_skg_kek},
    {.name = "serverkeygen_rsa", .kind = V_FN, .parse = parse_skg_rsa},
    {.name = NULL},
};

/* Every table's keys must fit section_seen.key_line (one slot is the terminator). */
_Static_assert(sizeof(profile_keys) / sizeof(profile_keys[0]) <= MAX_KEYS + 1,
               "MAX_KEYS is smaller than profile_keys");
_Static_assert(sizeof(server_keys) / sizeof(server_keys[0]) <= MAX_KEYS + 1,
               "MAX_KEYS is smaller than server_keys");

static int key_index(const key_spec *keys, const char *name)
{
    for (int i = 0; keys[i].name != NULL; i++)
        if (strcmp(keys[i].name, name) == 0)
            return i;
    return -1;
}

static int set_certs(loader *ld, const key_spec *k, char **field, const char *value)
{
    char *path = join_path(ld, value);

    if (path == NULL || check_certs(ld, k->name, path, k->kind) != 0) {
        free(path);
        return -1;
    }
    *field = path;
    return 0;
}

static int set_value(loader *ld, const key_spec *k, void *base, const char *value)
{
    void *field = (char *)base + k->off;
    unsigned long n;
    const char *end;

    switch (k->kind) {
    case V_STR:
        return (*(char **)field = xstrdup(ld, value)) != NULL ? 0 : -1;
    case V_PATH:
        return (*(char **)field = join_path(ld, value)) != NULL ? 0 : -1;
    case V_URI:
        if (check_uri(ld, k->name, value) != 0)
            return -1;
        return (*(char **)field = xstrdup(ld, value)) != NULL ? 0 : -1;
    case V_CERTS:
    case V_CACHAIN:
    case V_TRUST:
        return set_certs(ld, k, field, value);
    case V_BOOL:
        if (parse_bool(value, field) == 0)
            return 0;
        err_here(ld, k->name, "'%.*s' is not a boolean; use true/false, yes/no, on/off or 1/0",
                 SHOWN, value);
        return -1;
    case V_UINT:
        if (parse_ulong(value, 4000000000ul, &n, &end) == 0 && *end == '\0' && n >= k->min &&
            n <= k->max) {
            *(unsigned *)field = (unsigned)n;
            return 0;
        }
        err_here(ld, k->name, "'%.*s' is not a whole number from %u to %u", SHOWN, value, k->min,
                 k->max);
        return -1;
    case V_FN:
        break;
    }
    return k->parse(ld, base, k->name, value);
}

static void unknown_key(loader *ld, const key_spec *keys, const char *name)
{
    char list[512] = "";
    size_t len = 0;

    for (int i = 0; keys[i].name != NULL && len < sizeof(list); i++)
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", i > 0 ? ", " : "",
                                keys[i].name);
    err_here(ld, name, "unknown key; [%s] takes %s", ld->section, list);
}

/* inih's handler: one key = value of the line ld->line. */
static int on_value(void *user, const char *section, const char *name, const char *value)
{
    loader *ld = user;
    const key_spec *keys = ld->kind == SEC_SERVER  ? server_keys
                           : ld->kind == SEC_TOKEN ? token_keys
                                                   : profile_keys;
    void *base = ld->kind == SEC_PROFILE ? (void *)ld->prof : (void *)ld->cfg;
    int i;

    (void)section; /* ours, from the reader, is not cut at 50 characters */
    if (ld->kind == SEC_SKIP)
        return 1;
    if (ld->kind == SEC_NONE) {
        err_here(ld, name,
                 "is outside any section; put it under [server], [token] or [profile NAME]");
        return 1;
    }
    if ((i = key_index(keys, name)) < 0) {
        unknown_key(ld, keys, name);
    } else if (value[0] == '\0') {
        err_here(ld, name, "has no value; leave the key out to get its default");
    } else if (!keys[i].repeatable && ld->seen->key_line[i] != 0) {
        err_here(ld, name, "is set twice; it was first set at line %u", ld->seen->key_line[i]);
    } else {
        if (ld->seen->key_line[i] == 0)
            ld->seen->key_line[i] = ld->line;
        set_value(ld, &keys[i], base, value);
    }
    return 1; /* we report our own errors; inih's would only repeat a line number */
}

/* --- sections, seen by the reader when their header is read --- */

static void begin_fixed(loader *ld, sec_kind kind, section_seen *seen)
{
    if (seen->header_line != 0)
        err_here(ld, "", "the section appears twice; the first is at line %u", seen->header_line);
    else
        seen->header_line = ld->line;
    ld->kind = kind;
    ld->seen = seen;
}

static bool profile_name_ok(const char *name)
{
    size_t n = strlen(name);

    return n >= 1 && n <= 64 &&
           strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

static void begin_profile(loader *ld, const char *name)
{
    eg_config *cfg = ld->cfg;
    eg_profile_cfg *p;

    snprintf(ld->section, sizeof(ld->section), "profile %s", name);
    if (name[0] == '\0') {
        err_here(ld, "", "a profile needs a name: [profile default] or [profile LABEL]");
        return;
    }
    if (!profile_name_ok(name))
        err_here(ld, "", "'%.*s' is not a profile name: 1 to 64 of A-Z a-z 0-9 _ -", SHOWN, name);
    for (size_t i = 0; i < cfg->nprofiles; i++) {
        if (strcmp(cfg->profiles[i].name, name) == 0)
            err_here(ld, "", "profile '%s' is already defined at line %u", name,
                     ld->profiles[i].header_line);
    }
    if (cfg->nprofiles == EG_MAX_PROFILES) {
        err_here(ld, "", "more than %d profiles", EG_MAX_PROFILES);
        return;
    }
    /* A duplicate is kept too, so its keys are checked; the load fails anyway. */
    p = &cfg->profiles[cfg->nprofiles];
    p->name = xstrdup(ld, name);
    p->label = xstrdup(ld, strcmp(name, "default") == 0 ? "" : name);
    p->max_days = 365;
    p->allow_rekey = true;
    ld->profiles[cfg->nprofiles].header_line = ld->line;
    ld->seen = &ld->profiles[cfg->nprofiles++];
    ld->prof = p;
    ld->kind = SEC_PROFILE;
}

/* name: what is between the brackets. */
static void begin_section(loader *ld, char *name)
{
    name = trim(name);
    snprintf(ld->section, sizeof(ld->section), "%s", name);
    ld->kind = SEC_SKIP;
    ld->prof = NULL;
    ld->seen = NULL;
    if (strcmp(name, "server") == 0)
        begin_fixed(ld, SEC_SERVER, &ld->server);
    else if (strcmp(name, "token") == 0)
        begin_fixed(ld, SEC_TOKEN, &ld->token);
    else if (strncmp(name, "profile", 7) == 0 &&
             (name[7] == '\0' || isspace((unsigned char)name[7])))
        begin_profile(ld, trim(name + 7));
    else
        err_here(ld, "", "unknown section; expected [server], [token] or [profile NAME]");
}

/* A section header line (after leading blanks); false to hide it from inih. */
static bool header_line(loader *ld, const char *s)
{
    const char *close = strchr(s, ']');
    char name[256];
    size_t n = close != NULL ? (size_t)(close - s - 1) : 0;

    if (close == NULL || (close[1 + strspn(close + 1, " \t")] != '\0' &&
                          strchr(";#", close[1 + strspn(close + 1, " \t")]) == NULL)) {
        err_here(ld, "", "expected [SECTION] alone on the line");
        ld->kind = SEC_SKIP;
        return false;
    }
    memcpy(name, s + 1, n < sizeof(name) ? n : 0);
    name[n < sizeof(name) ? n : 0] = '\0';
    begin_section(ld, name);
    return true;
}

/*
 * inih's reader: hands over one line, counted, without leading blanks (so that
 * inih never takes one for a continuation), and checks what inih would not:
 * over-long lines (inih cuts them), NUL bytes, and lines that are neither
 * section, key nor comment (inih reports only the first of those).
 */
static char *read_line(char *str, int num, void *stream)
{
    loader *ld = stream;
    ssize_t len = getline(&ld->buf, &ld->cap, ld->fp);
    char *s = ld->buf;

    if (len < 0)
        return NULL;
    ld->line++;
    if (ld->line == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3, len -= 3;
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r'))
        s[--len] = '\0';
    if (strlen(s) != (size_t)len) {
        err_here(ld, "", "the line holds a NUL byte");
        s = "";
    }
    while (isspace((unsigned char)*s))
        s++;
    if (strlen(s) + 2 > (size_t)num) {
        err_here(ld, "", "the line is longer than %d characters", num - 2);
        s = "";
    }
    if (s[0] == '[' && !header_line(ld, s)) {
        s = "";
    } else if (s[0] != '\0' && s[0] != ';' && s[0] != '#' && s[0] != '[' &&
               strpbrk(s, "=:") == NULL) {
        err_here(ld, "", "expected 'key = value', '[section]' or a comment");
        s = "";
    }
    snprintf(str, (size_t)num, "%s\n", s);
    return str;
}

/* --- after the last line: required keys, cross-checks, defaults --- */

static void check_required(loader *ld, const key_spec *keys, const section_seen *seen,
                           const char *section)
{
    for (int i = 0; keys[i].name != NULL; i++)
        if (keys[i].required && seen->key_line[i] == 0)
            err_at(ld, seen->header_line, section, keys[i].name,
                   "missing; this key is required in [%s]", section);
}

static void finish_fixed(loader *ld)
{
    eg_config *cfg = ld->cfg;

    if (ld->server.header_line == 0)
        err_at(ld, 0, "server", "",
               "the section is missing; it needs at least tls_key and tls_chain");
    else
        check_required(ld, server_keys, &ld->server, "server");
    if (ld->token.header_line == 0)
        err_at(ld, 0, "token", "", "the section is missing; it needs module, label and pin_file");
    else
        check_required(ld, token_keys, &ld->token, "token");
    if (cfg->nprofiles == 0)
        err_at(ld, 0, "profile", "", "no [profile NAME] section; at least one is needed");
    if (cfg->nlisteners == 0) {
        cfg->listeners[0].address = xstrdup(ld, "127.0.0.1");
        cfg->listeners[0].port = 8443;
        cfg->nlisteners = 1;
    }
    if (cfg->ledger_path == NULL)
        cfg->ledger_path = xstrdup(ld, "/var/lib/estgate/ledger.db");
    if (cfg->log_level == NULL)
        cfg->log_level = xstrdup(ld, "info");
}

static void profile_defaults(loader *ld, eg_profile_cfg *p)
{
    static const eg_keyrule_cfg keys[] = {
        {.type = EVP_PKEY_RSA, .min_bits = 2048, .max_bits = 4096},
        {.type = EVP_PKEY_EC, .curve_nid = NID_X9_62_prime256v1},
        {.type = EVP_PKEY_EC, .curve_nid = NID_secp384r1},
    };

    if (p->realm == NULL && asprintf(&p->realm, "estgate %s", p->name) < 0) {
        p->realm = NULL;
        ld->oom = true;
    }
    if (p->nkeys == 0) {
        memcpy(p->keys, keys, sizeof(keys));
        p->nkeys = sizeof(keys) / sizeof(keys[0]);
    }
    if (p->nekus == 0)
        p->ekus[p->nekus++] = NID_client_auth;
    if (p->nsubject_nids == 0)
        p->subject_nids[p->nsubject_nids++] = NID_commonName;
    if (p->nskg_keys == 0)
        p->skg_keys[p->nskg_keys++] =
            (eg_keyrule_cfg){.type = EVP_PKEY_EC, .curve_nid = NID_X9_62_prime256v1};
    if (p->nskg_rsa == 0) {
        p->skg_rsa[p->nskg_rsa++] = EG_SKG_RSA_OAEP_SHA256;
        p->skg_rsa[p->nskg_rsa++] = EG_SKG_RSA_OAEP_SHA1;
    }
}

/* An EC key's CSR is signed with ECDSA, which OpenSSL 3.0 has with SHA-1 and SHA-2 only. */
static void check_ec_digests(loader *ld, const eg_profile_cfg *p, const char *section,
                             unsigned line)
{
    bool ec = false, usable = false;

    for (size_t i = 0; i < p->nkeys; i++)
        ec = ec || p->keys[i].type == EVP_PKEY_EC;
    for (size_t i = 0; i < EG_CSR_DIGESTS && ec && !usable; i++)
        usable = (eg_profile_csr_digests(p) & (1u << i)) &&
                 eg_csr_signature_nid(EVP_PKEY_EC, eg_csr_digests[i].nid) != NID_undef;
    if (ec && !usable)
        err_at(ld, line, section, "csr_digests",
               "no EC key's CSR could be accepted: ECDSA with SHA-3 cannot be verified here; add "
               "sha256, sha384 or sha512, or allow only RSA keys in key_types");
}

static void finish_profile(loader *ld, size_t i)
{
    eg_profile_cfg *p = &ld->cfg->profiles[i];
    const section_seen *seen = &ld->profiles[i];
    unsigned auth_line = seen->key_line[key_index(profile_keys, "auth")];
    char section[80];

    snprintf(section, sizeof(section), "profile %s", p->name);
    check_required(ld, profile_keys, seen, section);
    /* A key given but wrong has its own error already: do not add a second. */
    if ((p->auth & EG_AUTH_MTLS) != 0 && seen->key_line[key_index(profile_keys, "client_ca")] == 0)
        err_at(ld, auth_line, section, "auth",
               "mtls needs client_ca: a PEM bundle of the CAs that issue client certificates");
    if (p->renew_expired_days > 0 && (p->auth & EG_AUTH_MTLS) == 0)
        err_at(ld, seen->key_line[key_index(profile_keys, "renew_expired_days")], section,
               "renew_expired_days",
               "needs auth = mtls: renewals are authenticated by the certificate being renewed");
    if ((p->auth & EG_AUTH_BASIC) != 0 && seen->key_line[key_index(profile_keys, "user")] == 0)
        err_at(ld, auth_line, section, "auth",
               "basic needs at least one user = NAME:HASH (see estgated --hash-password)");
    if ((p->skg_modes & EG_SKG_ENCRYPT) != 0 && p->skg_recipients_file == NULL &&
        p->nskg_keks == 0 && !p->skg_csr_key)
        err_at(ld, p->skg_line, section, "serverkeygen",
               "encrypt needs someone to encrypt to: serverkeygen_recipients, serverkeygen_kek "
               "or serverkeygen_csr_key = yes");
    profile_defaults(ld, p);
    check_ec_digests(ld, p, section, seen->key_line[key_index(profile_keys, "csr_digests")]);
}

/* --- load and free --- */

/*
 * civetweb holds a thread for each open connection, from the TLS handshake to the end of its
 * keep-alive: the threads are how many devices can be connected at once, not a CPU count, and
 * cost little while they wait. 4 threads were taken by 4 idle sockets.
 */
static unsigned default_threads(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    return cores > 4 && cores < 64 ? 16 * (unsigned)cores : cores >= 64 ? 1024 : 64;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');

    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static int parse_file(loader *ld)
{
    int r;

    if ((ld->fp = fopen(ld->cfg->path, "r")) == NULL) {
        err_at(ld, 0, "", "", "cannot open: %s", strerror(errno));
        return -1;
    }
    r = ini_parse_stream(read_line, ld, on_value, ld);
    if (ferror(ld->fp))
        err_at(ld, 0, "", "", "read error after line %u", ld->line);
    else if (r == -2)
        ld->oom = true;
    else if (r > 0)
        err_at(ld, (unsigned)r, "", "", "cannot parse this line; expected 'key = value'");
    return 0;
}

int eg_config_load(const char *path, eg_config **out, eg_config_errors *errs)
{
    eg_config_errors own = {0};
    loader ld = {0};
    int rc = -1;

    eg_config_errors_clear(errs);
    ld.errs = errs != NULL ? errs : &own;
    if ((ld.cfg = calloc(1, sizeof(*ld.cfg))) == NULL || (ld.cfg->path = strdup(path)) == NULL ||
        (ld.dir = dir_of(path)) == NULL) {
        err_at(&ld, 0, "", "", "out of memory");
        goto out;
    }
    ld.cfg->max_body = 64 * 1024;
    ld.cfg->threads = default_threads();
    ld.cfg->keepalive_ms = 15000;
    ld.cfg->request_timeout_ms = 10000;
    ld.cfg->auth_failures_per_minute = 20;
    ld.cfg->log_refusals_per_second = 100;
    ld.cfg->audit_keep_days = 400;
    ld.cfg->audit_keep_rows = 1000000;
    ld.cfg->hang_s = 120;
    if (parse_file(&ld) != 0)
        goto out;
    finish_fixed(&ld);
    for (size_t i = 0; i < ld.cfg->nprofiles; i++)
        finish_profile(&ld, i);
    if (ld.oom)
        err_at(&ld, 0, "", "", "out of memory");
    if (ld.errs->n > 0 || ld.oom)
        goto out;
    *out = ld.cfg;
    ld.cfg = NULL;
    rc = 0;
out:
    if (ld.fp != NULL)
        fclose(ld.fp);
    free(ld.buf);
    free(ld.dir);
    eg_config_free(ld.cfg);
    eg_config_errors_clear(&own);
    return rc;
}

static void profile_free(eg_profile_cfg *p)
{
    free(p->name);
    free(p->label);
    free(p->ca_key_uri);
    free(p->ca_chain_file);
    free(p->realm);
    for (size_t i = 0; i < p->nusers; i++) {
        free(p->users[i].name);
        free(p->users[i].hash);
    }
    free(p->client_ca_file);
    free(p->skg_recipients_file);
    for (size_t i = 0; i < p->nskg_keks; i++)
        free(p->skg_keks[i].uri);
    for (size_t i = 0; i < p->nsans; i++)
        free(p->sans[i].pattern);
    free(p->subject_template);
}

void eg_config_free(eg_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->path);
    for (size_t i = 0; i < cfg->nlisteners; i++)
        free(cfg->listeners[i].address);
    free(cfg->tls_key_uri);
    free(cfg->tls_chain_file);
    free(cfg->ledger_path);
    free(cfg->blocked_certs_file);
    eg_blocklist_free(cfg->blocked);
    free(cfg->log_level);
    free(cfg->module_path);
    free(cfg->init_args);
    free(cfg->token_label);
    free(cfg->pin_file);
    for (size_t i = 0; i < cfg->nprofiles; i++)
        profile_free(&cfg->profiles[i]);
    free(cfg);
}

const eg_profile_cfg *eg_config_profile(const eg_config *cfg, const char *label)
{
    if (cfg == NULL)
        return NULL;
    if (label == NULL)
        label = "";
    for (size_t i = 0; i < cfg->nprofiles; i++)
        if (strcmp(cfg->profiles[i].label, label) == 0)
            return &cfg->profiles[i];
    return NULL;
}

const char *eg_host_port(const char *address, unsigned port, char *buf, size_t cap)
{
    bool v6 = strchr(address, ':') != NULL;

    snprintf(buf, cap, v6 ? "[%s]:%u" : "%s:%u", address, port);
    return buf;
}

/* --- estgated --check-config / --hash-password --- */

/* The [server] values in force, defaults included: what an operator tuning it wants to see. */
static void print_server(FILE *fp, const eg_config *cfg)
{
    char hp[80];

    fprintf(fp, "server:");
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const eg_listener_cfg *l = &cfg->listeners[i];

        fprintf(fp, "%s %s%s", i ? "," : "", eg_host_port(l->address, l->port, hp, sizeof(hp)),
                l->allow_tls12 ? " (TLS 1.2 allowed)" : "");
    }
    fprintf(fp,
            "; %u threads, request timeout %u ms, keep-alive %u ms, bodies up to %zu "
            "octets; log level %s",
            cfg->threads, cfg->request_timeout_ms, cfg->keepalive_ms, cfg->max_body,
            cfg->log_level ? cfg->log_level : "info");
    if (cfg->log_refusals_per_second > 0)
        fprintf(fp, ", at most %u refusal lines a second; ", cfg->log_refusals_per_second);
    else
        fprintf(fp, ", every refusal line; ");
    if (cfg->auth_failures_per_minute > 0)
        fprintf(fp, "at most %u wrong passwords a minute from one address; ",
                cfg->auth_failures_per_minute);
    else
        fprintf(fp, "wrong passwords not limited by address; ");
    fprintf(fp, "refusals' audit rows kept ");
    if (cfg->audit_keep_days > 0)
        fprintf(fp, "%u days", cfg->audit_keep_days);
    else
        fprintf(fp, "without age limit");
    if (cfg->audit_keep_rows > 0)
        fprintf(fp, ", the newest %u", cfg->audit_keep_rows);
    else
        fprintf(fp, ", without count limit");
    if (cfg->blocked_certs_file != NULL)
        fprintf(fp, "; %zu blocked client certificate%s (%s)", eg_blocklist_count(cfg->blocked),
                eg_blocklist_count(cfg->blocked) == 1 ? "" : "s", cfg->blocked_certs_file);
    fputc('\n', fp);
}

static void print_profile(FILE *fp, const eg_profile_cfg *p)
{
    fprintf(fp, "profile %s at /.well-known/est/%s%s: auth", p->name, p->label,
            p->label[0] != '\0' ? "/" : "");
    if (p->auth & EG_AUTH_NONE)
        fprintf(fp, " none");
    if (p->auth & EG_AUTH_BASIC)
        fprintf(fp, " basic (%zu user%s)", p->nusers, p->nusers == 1 ? "" : "s");
    if (p->auth & EG_AUTH_MTLS)
        fprintf(fp, " mtls");
    fprintf(fp, "; CA %s; %zu key types, %zu EKUs, %zu SAN rules; up to %u days", p->ca_key_uri,
            p->nkeys, p->nekus, p->nsans, p->max_days);
    if (p->require_channel_binding)
        fprintf(fp, "; requests linked to their TLS connection (channel binding)");
    if (p->issue_limit != 0)
        fprintf(fp, "; at most %u new certificate%s per principal a %s", p->issue_limit,
                p->issue_limit == 1 ? "" : "s", eg_issue_limit_period(p));
    if (eg_profile_csr_digests(p) != EG_CSR_DIGESTS_ALL) {
        fprintf(fp, "; CSRs signed with");
        for (size_t i = 0; i < EG_CSR_DIGESTS; i++)
            if (p->csr_digests & (1u << i))
                fprintf(fp, " %s", eg_csr_digests[i].name);
        fprintf(fp, " only");
    }
    if (p->skg_modes != 0)
        fprintf(fp, "; serverkeygen%s%s (%zu key types, %zu pre-shared keys%s%s)",
                (p->skg_modes & EG_SKG_ENCRYPT) ? " encrypt" : "",
                (p->skg_modes & EG_SKG_PLAINTEXT) ? " plaintext" : "", p->nskg_keys, p->nskg_keks,
                p->skg_recipients_file ? ", recipient certificates" : "",
                p->skg_csr_key ? ", the CSR's key" : "");
    fputc('\n', fp);
}

static bool any_serverkeygen(const eg_config *cfg)
{
    for (size_t i = 0; i < cfg->nprofiles; i++)
        if (cfg->profiles[i].skg_modes != 0)
            return true;
    return false;
}

/* probe: open the token for serverkeygen's probes (not with --no-token). */
static int check_config(const char *path, bool probe)
{
    eg_config_errors errs = {0};
    eg_config *cfg = NULL;
    int rc = 1;

    if (eg_config_load(path, &cfg, &errs) != 0) {
        eg_config_errors_print(&errs, path, stderr);
        goto out;
    }
    /* The only check that needs the token: what serverkeygen asks of it. Not where the PIN
       cannot be read (ExecReload=): the daemon probes again at the reload itself and keeps its
       profiles if the token cannot serve the new ones. A refused login is estgated's 77 too,
       which systemd does not retry (image/estgated.service.in). */
    if (probe && !cfg->pin_not_here && eg_skg_check_config(cfg) != 0) {
        if (eg_token_login_refused(NULL, 0))
            rc = 77;
        goto out;
    }
    printf("%s: OK\n", path);
    if (cfg->pin_not_here)
        printf("%s: note: pin_file (%s) cannot be read here: systemd gives credentials to the "
               "service's start commands only, not to ExecReload=. The PIN was checked at start; "
               "a reload does not read it again%s\n",
               path, cfg->pin_file,
               any_serverkeygen(cfg) ? ", and estgated itself asks the token about serverkeygen"
                                     : "");
    print_server(stdout, cfg);
    printf("token \"%s\" in %s, calls %s%s, %s%s\n", cfg->token_label, cfg->module_path,
           eg_calls_words(eg_calls_resolve(cfg->module_path, cfg->calls)),
           cfg->calls == EG_CALLS_AUTO ? " (calls = auto)" : "",
           eg_connections_words(eg_connections_resolve(cfg->module_path, cfg->connections)),
           cfg->connections == 0 ? " (connections = auto)" : "");
    for (size_t i = 0; i < cfg->nprofiles; i++)
        print_profile(stdout, &cfg->profiles[i]);
    eg_expiry_warn(cfg, time(NULL), stdout, "warning: ");
    rc = 0;
out:
    eg_config_free(cfg);
    eg_config_errors_clear(&errs);
    return rc;
}

static int hash_password(void)
{
    char line[1024], *hash = NULL;
    size_t n = 0;
    int rc = 1;

    /* Unbuffered: no copy of the password stays behind in stdio's buffer. */
    setvbuf(stdin, NULL, _IONBF, 0);
    if (isatty(STDIN_FILENO))
        fprintf(stderr, "Password: ");
    if (fgets(line, sizeof(line), stdin) != NULL)
        n = strcspn(line, "\r\n");
    if (n == sizeof(line) - 1) {
        fprintf(stderr, "estgated: the password is longer than %zu bytes\n", sizeof(line) - 2);
        goto out;
    }
    line[n] = '\0';
    if (n == 0) {
        fprintf(stderr, "estgated: no password on the first line of standard input\n");
        goto out;
    }
    if (eg_password_hash(line, &hash) != 0) {
        fprintf(stderr, "estgated: could not hash the password\n");
        goto out;
    }
    printf("%s\n", hash);
    rc = 0;
out:
    OPENSSL_cleanse(line, sizeof(line));
    free(hash);
    return rc;
}

int eg_config_check_main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--check-config") == 0)
        return check_config(argv[2], true);
    /* The file alone, no login: systemd's ExecStartPre, which RestartPreventExitStatus= does not
       cover, so that a start that fails restarts without trying a wrong PIN each time. */
    if (argc == 4 && strcmp(argv[1], "--check-config") == 0 && strcmp(argv[2], "--no-token") == 0)
        return check_config(argv[3], false);
    if (argc == 2 && strcmp(argv[1], "--hash-password") == 0)
        return hash_password();
    fprintf(stderr,
            "usage: %s --check-config [--no-token] FILE\n       %s --hash-password < FILE\n",
            argc > 0 ? argv[0] : "estgated", argc > 0 ? argv[0] : "estgated");
    return 2;
}
