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

/* Takes a token option; returns true when opt was one. */
bool eg_prov_token_opt(int opt, const char *arg, eg_prov_token_opts *o);
/* EG_EXIT_USAGE naming the first missing token option. */
int eg_prov_token_opts_check(const eg_prov_token_opts *o);
/* "ec-p256", "ec-p384", "rsa2048", "rsa3072", "rsa4096" into spec->type/bits/curve_nid. */
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
