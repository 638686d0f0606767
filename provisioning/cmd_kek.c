/*
 * `kek import`: a pre-shared AES key into the token, for serverkeygen's
 * KEKRecipientInfo (RFC 7030 4.4.1.1, the DecryptKeyIdentifier). The device
 * already holds the same key, so it cannot be made in the token: it is
 * imported once, sensitive, never extractable, and allowed only to wrap.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "args.h"
#include "files.h"
#include "p11_uri.h"
#include "report.h"
#include "token.h"

/* The key identifier goes into estgated.ini, which takes 1 to 64 octets. */
#define EG_KEK_ID_MAX 64
/* 64 hex digits and CR LF, plus one octet to see that a file is longer. */
#define EG_KEK_FILE_MAX 67

static const char kek_import_help[] =
    "usage: estgate-provision kek import TOKEN-OPTIONS --label NAME --id HEX --key-file FILE\n"
    "\n"
    "Imports a pre-shared AES key (serverkeygen's DecryptKeyIdentifier, RFC 7030\n"
    "4.4.1.1: the device holds the same key) into the token as a token object:\n"
    "private, sensitive, never extractable, usable only to wrap (CKA_WRAP; no\n"
    "unwrap, encrypt, decrypt, sign or derive). Prints its PKCS#11 URI and the\n"
    "serverkeygen_kek line for estgated.ini. Objects are never replaced: an\n"
    "object with the same label or id already in the token is refused.\n"
    "\n"
    "  --label NAME       CKA_LABEL of the key (must be unused)\n"
    "  --id HEX           CKA_ID, and the DecryptKeyIdentifier devices send (1-64 octets)\n"
    "  --key-file FILE    exactly 16 or 32 raw octets (AES-128/256), or 32 or 64 hex\n"
    "                     digits with an optional trailing newline (a 32-octet file\n"
    "                     of hex digits only is read as hex); not readable by everyone\n"
    "\n" EG_PROV_TOKEN_HELP;

enum { OPT_LABEL = EG_OPT_OWN, OPT_ID, OPT_KEY_FILE };

static const struct option kek_import_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"label", required_argument, NULL, OPT_LABEL},
    {"id", required_argument, NULL, OPT_ID},
    {"key-file", required_argument, NULL, OPT_KEY_FILE},
    {NULL, 0, NULL, 0},
};

struct kek_import {
    eg_prov_token_opts tok;
    const char *label, *id_hex, *key_file;
    uint8_t id[EG_KEK_ID_MAX];
    size_t idlen;
    bool help;
};

/* len hex digits into len / 2 octets; -1 on a non-digit (the caller wipes what was written). */
static int hex_decode(const char *s, size_t len, uint8_t *out)
{
    size_t i;
    int hi, lo;

    for (i = 0; i + 1 < len; i += 2) {
        if ((hi = OPENSSL_hexchar2int((unsigned char)s[i])) < 0 ||
            (lo = OPENSSL_hexchar2int((unsigned char)s[i + 1])) < 0)
            return -1;
        out[i / 2] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int kek_import_opt(void *ctx, int c, const char *arg)
{
    struct kek_import *a = ctx;
    size_t len;

    switch (c) {
    case OPT_LABEL:
        a->label = arg;
        return EG_EXIT_OK;
    case OPT_ID:
        len = strlen(arg);
        if (len == 0 || len % 2 != 0 || len > 2 * EG_KEK_ID_MAX || hex_decode(arg, len, a->id) != 0)
            return eg_prov_usage_error("--id %s: give 1 to %d octets as hex digits", arg,
                                       EG_KEK_ID_MAX);
        a->id_hex = arg;
        a->idlen = len / 2;
        return EG_EXIT_OK;
    case OPT_KEY_FILE:
        a->key_file = arg;
        return EG_EXIT_OK;
    default:
        return EG_EXIT_USAGE;
    }
}

static int kek_import_parse(int argc, char **argv, struct kek_import *a)
{
    int rc = eg_prov_parse_args(argc, argv, kek_import_opts, &a->tok, kek_import_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help || (rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->label == NULL || a->id_hex == NULL || a->key_file == NULL)
        return eg_prov_usage_error("--label, --id and --key-file are required");
    return EG_EXIT_OK;
}

/*
 * The whole file, read with read(2) so that no stdio buffer keeps a copy of the
 * key. As with PIN files, a key others could read is no longer pre-shared with
 * one device, and a value with no '/' (a key typed in place of its file) is not
 * repeated in messages.
 */
static int read_key_file(const char *path, uint8_t *buf, size_t cap, size_t *len)
{
    char name[PATH_MAX + 64];
    size_t n = 0;
    ssize_t r = 0;
    int fd = -1, rc;

    if ((rc = eg_prov_secret_open(path, "--key-file", "key", &fd)) != EG_EXIT_OK)
        return rc;
    while (n < cap && (r = read(fd, buf + n, cap - n)) > 0)
        n += (size_t)r;
    if (r < 0) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "%s: %s",
                          eg_prov_secret_file_name(path, "--key-file", "key", name, sizeof(name)),
                          strerror(errno));
        goto out;
    }
    *len = n;
    rc = EG_EXIT_OK;
out:
    close(fd);
    return rc;
}

static bool all_hex(const uint8_t *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        if (OPENSSL_hexchar2int((unsigned char)s[i]) < 0)
            return false;
    return true;
}

/*
 * The key in the file's octets. 32 octets that are all hex digits are read as
 * hex: a random raw key is never that, and an operator's `printf %s $HEX`
 * always is.
 */
static int parse_key(const char *path, const uint8_t *buf, size_t len, uint8_t *key, size_t *keylen)
{
    char name[PATH_MAX + 64];
    size_t n = len;

    if ((len == 16 || len == 32) && !all_hex(buf, len)) {
        memcpy(key, buf, len);
        *keylen = len;
        return EG_EXIT_OK;
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if ((n == 32 || n == 64) && hex_decode((const char *)buf, n, key) == 0) {
        *keylen = n / 2;
        return EG_EXIT_OK;
    }
    return eg_prov_fail(EG_EXIT_DATAERR,
                        "%s holds %zu octets: expected exactly 16 or 32 raw octets "
                        "(AES-128 or AES-256), or 32 or 64 hex digits with an optional "
                        "trailing newline",
                        eg_prov_secret_file_name(path, "--key-file", "key", name, sizeof(name)),
                        len);
}

struct exists_args {
    const uint8_t *id;
    size_t idlen;
    CK_ULONG found;
};

static CK_RV id_fn(eg_p11_call *call, void *arg)
{
    struct exists_args *a = arg;
    CK_ATTRIBUTE t = {CKA_ID, (void *)a->id, a->idlen};
    CK_OBJECT_HANDLE h;

    return eg_p11_find_objects(call, &t, 1, &h, 1, &a->found);
}

/* EG_EXIT_CANTCREAT when any object has the label or the id: devices name the key by its id. */
static int kek_unused(eg_token *tok, const struct kek_import *a)
{
    struct exists_args e = {a->id, a->idlen, 0};
    CK_RV rv;
    int rc;

    if ((rc = eg_prov_label_unused(tok, a->label)) != EG_EXIT_OK)
        return rc;
    if ((rv = eg_token_run(tok, id_fn, &e)) != CKR_OK)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "searching token '%s' for id %s: %s",
                            eg_token_label(tok), a->id_hex, eg_p11_rv_name(rv));
    if (e.found > 0)
        return eg_prov_fail(EG_EXIT_CANTCREAT,
                            "token '%s' already holds an object with id %s; choose another --id "
                            "(estgate-provision never replaces keys)",
                            eg_token_label(tok), a->id_hex);
    return EG_EXIT_OK;
}

struct create_args {
    const struct kek_import *a;
    uint8_t *key;
    size_t keylen;
};

/*
 * Creates the key unless an earlier try (before a recovery) already did: the
 * label and id were checked unused just before, so a secret key with both is
 * that try's.
 */
static CK_RV create_fn(eg_p11_call *call, void *arg)
{
    struct create_args *c = arg;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)c->a->label, strlen(c->a->label)},
        {CKA_ID, (void *)c->a->id, c->a->idlen},
        {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_VALUE, c->key, c->keylen},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_WRAP, &yes, sizeof(yes)},
        /* Only wrapping: any other use would turn the device's key into an oracle. */
        {CKA_UNWRAP, &no, sizeof(no)},
        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_DECRYPT, &no, sizeof(no)},
        {CKA_SIGN, &no, sizeof(no)},
        {CKA_VERIFY, &no, sizeof(no)},
        {CKA_DERIVE, &no, sizeof(no)},
    };
    CK_OBJECT_HANDLE h;
    CK_ULONG found;
    CK_RV rv;

    if ((rv = eg_p11_find_objects(call, t, 3, &h, 1, &found)) != CKR_OK || found > 0)
        return rv;
    return eg_p11_create_object(call, t, sizeof(t) / sizeof(t[0]), &h);
}

static void print_result(const struct kek_import *a, const char *uri)
{
    size_t i;

    printf("%s\nserverkeygen_kek = ", uri);
    for (i = 0; i < a->idlen; i++)
        printf("%02x", a->id[i]);
    printf(" %s\n", uri);
    fflush(stdout);
}

static int kek_import_run(const struct kek_import *a)
{
    uint8_t buf[EG_KEK_FILE_MAX], key[32];
    struct create_args c = {a, key, 0};
    eg_token *tok = NULL;
    char *uri = NULL;
    size_t len = 0;
    CK_RV rv;
    int rc;

    /* The file first: a bad key changes nothing in the token. */
    if ((rc = read_key_file(a->key_file, buf, sizeof(buf), &len)) != EG_EXIT_OK ||
        (rc = parse_key(a->key_file, buf, len, key, &c.keylen)) != EG_EXIT_OK)
        goto out;
    if ((rc = eg_prov_token_open(&a->tok, &tok)) != EG_EXIT_OK ||
        (rc = kek_unused(tok, a)) != EG_EXIT_OK)
        goto out;
    if ((uri = eg_p11_uri_format(eg_token_label(tok), a->label, a->id, a->idlen, "secret-key")) ==
        NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    if ((rv = eg_token_run(tok, create_fn, &c)) != CKR_OK) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "cannot create the AES key '%s' in token '%s': %s",
                          a->label, eg_token_label(tok), eg_p11_rv_name(rv));
        goto out;
    }
    print_result(a, uri);
    rc = EG_EXIT_OK;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_free(uri);
    eg_prov_token_close(tok);
    return rc;
}

static int kek_import(int argc, char **argv)
{
    struct kek_import a;
    int rc;

    memset(&a, 0, sizeof(a));
    eg_prov_report_prefix("estgate-provision kek import");
    if ((rc = kek_import_parse(argc, argv, &a)) != EG_EXIT_OK)
        return rc;
    if (a.help) {
        eg_prov_help(kek_import_help);
        return EG_EXIT_OK;
    }
    return kek_import_run(&a);
}

int eg_prov_cmd_kek(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "import") == 0)
        return kek_import(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        eg_prov_help(kek_import_help);
        return EG_EXIT_OK;
    }
    eg_prov_report_prefix("estgate-provision kek");
    return eg_prov_usage_error("expected 'import'");
}
