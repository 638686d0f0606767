/* Command-line parsing shared by the commands. */
#ifndef EG_PROV_ARGS_H
#define EG_PROV_ARGS_H

#include <getopt.h>
#include <stdbool.h>

#include "p11.h"
#include "provision.h"

/* Long options of every command that opens a token; commands number theirs from EG_OPT_OWN. */
enum { EG_OPT_MODULE = 0x100, EG_OPT_INIT_ARGS, EG_OPT_TOKEN, EG_OPT_PIN_FILE, EG_OPT_OWN };

#define EG_PROV_TOKEN_LONGOPTS                                                                     \
    {"module", required_argument, NULL, EG_OPT_MODULE},                                            \
        {"init-args", required_argument, NULL, EG_OPT_INIT_ARGS},                                  \
        {"token", required_argument, NULL, EG_OPT_TOKEN},                                          \
        {"pin-file", required_argument, NULL, EG_OPT_PIN_FILE},                                    \
    {                                                                                              \
        "help", no_argument, NULL, 'h'                                                             \
    }

#define EG_PROV_TOKEN_HELP                                                                         \
    "token options:\n"                                                                             \
    "  --module PATH      the PKCS#11 module (.so)\n"                                              \
    "  --init-args STR    C_Initialize init string, for modules that need one (NSS softoken)\n"    \
    "  --token LABEL      the token's label\n"                                                     \
    "  --pin-file FILE    user PIN on the first line; the file must not be world-readable.\n"      \
    "                     PINs are never taken from the command line or the environment.\n"

/*
 * Options of the commands that make a key and its certificate in the token
 * (ca create, tls create, bundle signer create). Each lists the ones it takes
 * in its own option table and numbers its other options from EG_OPT_KEY_OWN.
 */
enum {
    EG_OPT_LABEL = EG_OPT_OWN, /* --label LABEL: the new key's CKA_LABEL */
    EG_OPT_KEY,                /* --key TYPE: see eg_prov_parse_key */
    EG_OPT_CA_LABEL,           /* --ca-label CA: the issuing CA key */
    EG_OPT_SUBJECT,            /* --subject NAME: RFC 4514 */
    EG_OPT_DAYS,               /* --days N: see eg_prov_parse_days */
    EG_OPT_OUT,                /* --out FILE */
    EG_OPT_KEY_OWN
};

typedef struct eg_prov_key_opts {
    const char *label, *ca_label, *subject, *out; /* NULL when not given */
    eg_keygen_spec spec;
    bool have_key;
    int days; /* 0 when not given */
} eg_prov_key_opts;

/* Takes one of the options above into k; an exit code (EG_EXIT_USAGE for any other option). */
int eg_prov_key_opt(eg_prov_key_opts *k, int opt, const char *arg);
/* Takes a token option; returns true when opt was one. */
bool eg_prov_token_opt(int opt, const char *arg, eg_prov_token_opts *o);
/* EG_EXIT_USAGE naming the first missing token option. */
int eg_prov_token_opts_check(const eg_prov_token_opts *o);
/* "ec-p256", "ec-p384", "rsa2048", "rsa3072", "rsa4096" into spec->type/bits/curve_nid. */
bool eg_prov_key_spec(const char *s, eg_keygen_spec *spec);
/* The same, as an option's value: EG_EXIT_USAGE listing the names when unknown. */
int eg_prov_parse_key(const char *s, eg_keygen_spec *spec);
/* Validity in days, 1 to 36525. */
int eg_prov_parse_days(const char *s, int *days);
/* Prints the message and a pointer to --help; returns EG_EXIT_USAGE. */
int eg_prov_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* getopt_long over long options only; unknown options are reported as usage errors. */
int eg_prov_getopt(int argc, char **argv, const struct option *opts);
/* Takes one of a command's own options; returns an exit code. */
typedef int eg_prov_opt_fn(void *ctx, int opt, const char *arg);
/*
 * The option loop every command shares: --help sets *help and stops, token
 * options go to tok (when not NULL), the rest to fn; operands are refused.
 */
int eg_prov_parse_args(int argc, char **argv, const struct option *opts, eg_prov_token_opts *tok,
                       eg_prov_opt_fn *fn, void *ctx, bool *help);
/* EG_EXIT_USAGE when arguments are left after the options. */
int eg_prov_no_operands(int argc, char **argv);
/* Prints a command's help text followed by the exit codes. */
void eg_prov_help(const char *text);

#endif
