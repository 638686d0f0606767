/* estgate-provision: prepares a token for the appliance. */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "provision.h"
#include "report.h"

static const char usage[] =
    "usage: estgate-provision COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  init-token    initialise a token in a free slot and set its user PIN\n"
    "  ca create     make the CA key in the token, with a self-signed root or a CSR\n"
    "  ca import     import the CA certificate issued for the CSR, and its chain; a later\n"
    "                one replaces the current one\n"
    "  ca renew      a new root for the token CA: same key, or a new key with rollover\n"
    "                certificates (RFC 4210 4.4); or a CSR for an external root to renew\n"
    "  tls create    make the appliance TLS key and its certificate from the token CA\n"
    "  kek import    import a pre-shared AES key for serverkeygen (DecryptKeyIdentifier)\n"
    "  list          list the token's keys and certificates with their URIs\n"
    "  bundle        fleet trust bundles: signer create, create, verify, install\n"
    "  bootstrap     factory bootstrap certificates for a batch of devices\n"
    "\n"
    "Run `estgate-provision COMMAND --help` for a command's options, and\n"
    "`estgate-provision --version` for this build. Private keys are made in the\n"
    "token and never leave it; every signature is made there.\n";

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
} commands[] = {
    {"init-token", eg_prov_cmd_init_token},
    {"ca", eg_prov_cmd_ca},
    {"tls", eg_prov_cmd_tls},
    {"kek", eg_prov_cmd_kek},
    {"list", eg_prov_cmd_list},
    {"bundle", eg_prov_cmd_bundle},
    {"bootstrap", eg_prov_cmd_bootstrap},
};

int main(int argc, char **argv)
{
    size_t i;
    int rc = EG_EXIT_USAGE;

    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("estgate-provision %s (%s)\n", ESTGATE_VERSION, OpenSSL_version(OPENSSL_VERSION));
        return EG_EXIT_OK;
    }
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        if (argc >= 2)
            eg_prov_print_exit_codes();
        return argc < 2 ? EG_EXIT_USAGE : EG_EXIT_OK;
    }
    for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            rc = commands[i].run(argc - 1, argv + 1);
            break;
        }
    }
    if (i == sizeof(commands) / sizeof(commands[0]))
        rc = eg_prov_fail(EG_EXIT_USAGE, "unknown command '%s' (try --help)", argv[1]);
    OPENSSL_cleanup();
    return rc;
}
