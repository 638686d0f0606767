/* Command-line parsing shared by the commands. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/obj_mac.h>

#include "args.h"
#include "report.h"

bool eg_prov_token_opt(int opt, const char *arg, eg_prov_token_opts *o)
{
    switch (opt) {
    case EG_OPT_MODULE:
        o->module = arg;
        return true;
    case EG_OPT_INIT_ARGS:
        o->init_args = arg;
        return true;
    case EG_OPT_TOKEN:
        o->token = arg;
        return true;
    case EG_OPT_PIN_FILE:
        o->pin_file = arg;
        return true;
    default:
        return false;
    }
}

int eg_prov_token_opts_check(const eg_prov_token_opts *o)
{
    if (o->module == NULL)
        return eg_prov_usage_error("--module is required");
    if (o->token == NULL)
        return eg_prov_usage_error("--token is required");
    if (o->pin_file == NULL)
        return eg_prov_usage_error("--pin-file is required");
    return EG_EXIT_OK;
}

static const struct key_name {
    const char *name;
    eg_key_type type;
    unsigned bits;
    int curve_nid;
} key_names[] = {
    {"ec-p256", EG_KEY_EC, 0, NID_X9_62_prime256v1},
    {"ec-p384", EG_KEY_EC, 0, NID_secp384r1},
    {"rsa2048", EG_KEY_RSA, 2048, 0},
    {"rsa3072", EG_KEY_RSA, 3072, 0},
    {"rsa4096", EG_KEY_RSA, 4096, 0},
};

bool eg_prov_key_spec(const char *s, eg_keygen_spec *spec)
{
    size_t i;

    for (i = 0; i < sizeof(key_names) / sizeof(key_names[0]); i++) {
        if (strcmp(s, key_names[i].name) == 0) {
            spec->type = key_names[i].type;
            spec->bits = key_names[i].bits;
            spec->curve_nid = key_names[i].curve_nid;
            return true;
        }
    }
    return false;
}

int eg_prov_parse_key(const char *s, eg_keygen_spec *spec)
{
    if (eg_prov_key_spec(s, spec))
        return EG_EXIT_OK;
    return eg_prov_usage_error("--key %s: unknown key type (ec-p256, ec-p384, rsa2048, rsa3072, "
                               "rsa4096)",
                               s);
}

int eg_prov_parse_days(const char *s, int *days)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != 0 || v < 1 || v > 36525)
        return eg_prov_usage_error("--days %s: give a number of days from 1 to 36525", s);
    *days = (int)v;
    return EG_EXIT_OK;
}

int eg_prov_usage_error(const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return eg_prov_fail(EG_EXIT_USAGE, "%s (try --help)", msg);
}

/* Options whose value names a file holding a secret. */
static const char *const secret_opts[] = {"pin-file", "so-pin-file", "key-file"};

static bool secret_opt(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(secret_opts) / sizeof(secret_opts[0]); i++)
        if (strcmp(name, secret_opts[i]) == 0)
            return true;
    return false;
}

/*
 * The option as typed on the command line, up to any '=': getopt_long has
 * just taken it (and its value, when that was the next word).
 */
static size_t typed_name(char **argv, const char **name)
{
    const char *word = argv[optind - 1];

    if (optarg != NULL && optarg == word && optind >= 2)
        word = argv[optind - 2];
    while (*word == '-')
        word++;
    *name = word;
    return strcspn(word, "=");
}

int eg_prov_getopt(int argc, char **argv, const struct option *opts)
{
    const char *typed;
    size_t len;
    int c, i = -1;

    opterr = 0; /* our own message, with the command's name */
    c = getopt_long(argc, argv, "h", opts, &i);
    if (c == '?' || c == ':') {
        /* Up to '=': --pin=1234 names no option here, and its value may be a PIN. */
        typed = argv[optind - 1];
        eg_prov_usage_error("unknown option or missing value: %.*s", (int)strcspn(typed, "="),
                            typed);
        return '?';
    }
    /*
     * getopt_long takes any unique prefix of a long option: --pin 1234 would be
     * --pin-file 1234, a PIN where its file belongs. The options naming a
     * secret's file must be written in full, so such a value is refused
     * before it is opened or repeated.
     */
    if (c != -1 && i >= 0 && secret_opt(opts[i].name) &&
        ((len = typed_name(argv, &typed)) != strlen(opts[i].name) ||
         strncmp(typed, opts[i].name, len) != 0)) {
        eg_prov_usage_error("--%.*s: write --%s in full; its value must be a file holding the "
                            "secret, never the secret itself",
                            (int)len, typed, opts[i].name);
        return '?';
    }
    return c;
}

int eg_prov_key_opt(eg_prov_key_opts *k, int opt, const char *arg)
{
    switch (opt) {
    case EG_OPT_LABEL:
        k->label = arg;
        return EG_EXIT_OK;
    case EG_OPT_KEY:
        k->have_key = true;
        return eg_prov_parse_key(arg, &k->spec);
    case EG_OPT_CA_LABEL:
        k->ca_label = arg;
        return EG_EXIT_OK;
    case EG_OPT_SUBJECT:
        k->subject = arg;
        return EG_EXIT_OK;
    case EG_OPT_DAYS:
        return eg_prov_parse_days(arg, &k->days);
    case EG_OPT_OUT:
        k->out = arg;
        return EG_EXIT_OK;
    default:
        return EG_EXIT_USAGE;
    }
}

int eg_prov_parse_args(int argc, char **argv, const struct option *opts, eg_prov_token_opts *tok,
                       eg_prov_opt_fn *fn, void *ctx, bool *help)
{
    int c, rc;

    optind = 1;
    while ((c = eg_prov_getopt(argc, argv, opts)) != -1) {
        if (c == 'h') {
            *help = true;
            return EG_EXIT_OK;
        }
        if (c == '?')
            return EG_EXIT_USAGE;
        if (tok != NULL && eg_prov_token_opt(c, optarg, tok))
            continue;
        if (fn == NULL)
            return EG_EXIT_USAGE;
        if ((rc = fn(ctx, c, optarg)) != EG_EXIT_OK)
            return rc;
    }
    return eg_prov_no_operands(argc, argv);
}

int eg_prov_no_operands(int argc, char **argv)
{
    if (optind < argc)
        return eg_prov_usage_error("unexpected argument '%s'", argv[optind]);
    return EG_EXIT_OK;
}

void eg_prov_help(const char *text)
{
    fputs(text, stdout);
    eg_prov_print_exit_codes();
}

#define EG_PROV_EXIT_ROW(name, value, text) {value, text},
static const struct {
    int code;
    const char *text;
} exit_rows[] = {EG_PROV_EXIT_CODES(EG_PROV_EXIT_ROW)};
#undef EG_PROV_EXIT_ROW

void eg_prov_print_exit_codes(void)
{
    size_t i;

    fputs("\nexit codes:\n", stdout);
    for (i = 0; i < sizeof(exit_rows) / sizeof(exit_rows[0]); i++)
        printf("  %3d  %s\n", exit_rows[i].code, exit_rows[i].text);
}
