/*
 * estgate-provision: prepares a token (init-token), creates the CA and TLS keys
 * in it with their certificates, and lists what it holds.
 * Umbrella header: exit codes, token options and the command entry points.
 */
#ifndef EG_PROVISION_H
#define EG_PROVISION_H

#include <stdbool.h>

#include "signer.h"

/* Exit codes (sysexits.h values), documented in every --help. */
#define EG_PROV_EXIT_CODES(X)                                                                      \
    X(EG_EXIT_OK, 0, "success")                                                                    \
    X(EG_EXIT_USAGE, 64, "bad command line: unknown command or option, bad --key, missing value")  \
    X(EG_EXIT_DATAERR, 65,                                                                         \
      "bad input data: unusable certificate or chain, or one not for the key")                     \
    X(EG_EXIT_NOINPUT, 66, "an input file (PIN file, chain) cannot be read or is unsafe")          \
    X(EG_EXIT_UNAVAILABLE, 69, "module, token, free slot, key or CA certificate not found")        \
    X(EG_EXIT_SOFTWARE, 70, "internal error: a token call or OpenSSL failed unexpectedly")         \
    X(EG_EXIT_CANTCREAT, 73, "cannot create: output file, or a label already used in the token")   \
    X(EG_EXIT_NOPERM, 77, "login refused: wrong or locked PIN")                                    \
    X(EG_EXIT_CONFIG, 78,                                                                          \
      "estgated's configuration has errors, lacks the profile asked for, or shares its client_ca")

#define EG_PROV_EXIT_ENUM(name, value, text) name = value,
enum eg_prov_exit { EG_PROV_EXIT_CODES(EG_PROV_EXIT_ENUM) };
#undef EG_PROV_EXIT_ENUM

/* How to reach the token: --module, --init-args, --token, --pin-file. */
typedef struct eg_prov_token_opts {
    const char *module;
    const char *init_args; /* C_Initialize pReserved string (NSS), or NULL */
    const char *token;     /* token label */
    const char *pin_file;  /* user PIN, first line of the file */
} eg_prov_token_opts;

/* Commands: argv[0] is the command name; each returns an exit code. */
int eg_prov_cmd_init_token(int argc, char **argv);
int eg_prov_cmd_ca(int argc, char **argv); /* dispatches "ca create", "ca import", "ca renew" */
int eg_prov_cmd_ca_import(int argc, char **argv);
int eg_prov_cmd_ca_renew(int argc, char **argv);
int eg_prov_cmd_tls(int argc, char **argv);
int eg_prov_cmd_kek(int argc, char **argv); /* dispatches "kek import" */
int eg_prov_cmd_list(int argc, char **argv);
int eg_prov_cmd_bundle(int argc, char **argv); /* bundle create, verify, signer create */
int eg_prov_cmd_bootstrap(int argc, char **argv);

/* Prints the exit code table (for --help). */
void eg_prov_print_exit_codes(void);

#endif
