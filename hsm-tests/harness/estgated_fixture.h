/*
 * A real estgated for end-to-end tests and benchmarks: a harness token
 * provisioned with estgate-provision, and the daemon started from an INI file
 * with its listeners on port 0.
 */
#ifndef EG_ESTGATED_FIXTURE_H
#define EG_ESTGATED_FIXTURE_H

#include <stddef.h>
#include <sys/types.h>

#include "child.h"
#include "token_harness.h"

/*
 * estgate-provision WORD WORD (words[0], words[1]) with the harness token's options, then the
 * rest of words (NULL-terminated); 0 or -1, with the command's output in r.
 */
int eg_fx_provision_cmd(eg_th *th, const char *const *words, eg_child_result *r);

/* Where a daemon suite keeps what eg_fx_suite_open makes: the caller's own variables. */
typedef struct eg_fx_suite {
    eg_th **th;
    eg_child_result **res;
    char *dir;        /* EG_FX_DIR_MAX: the token's directory, where everything below is */
    char *ini, *ca;   /* PATH_MAX each: "estgated.ini", and the CA's root "ca.pem" */
    char *pass, *log; /* PATH_MAX each: "basic.pass", and the daemon's "estgated.log" */
} eg_fx_suite;

#define EG_FX_DIR_MAX 1024

/*
 * A daemon suite's start: a fresh harness token of kind (labelled label), *s->res allocated,
 * the paths above, and eg_fx_provision's CA (ca_subject) and TLS key (tls-chain.pem). 0 or -1.
 */
int eg_fx_suite_open(eg_th_kind kind, const char *label, const char *ca_subject,
                     const eg_fx_suite *s);

/*
 * A P-256 CA key "ca" with a self-signed root (subject ca_subject) written to
 * ca_out, and a P-256 TLS key "tls" for localhost/127.0.0.1 issued by it,
 * its chain written to tls_out. r receives the last command's output.
 */
int eg_fx_provision(eg_th *th, const char *ca_subject, const char *ca_out, const char *tls_out,
                    eg_child_result *r);

/*
 * A random AES-256 pre-shared key (serverkeygen's KEK), written as hex to
 * kek.hex (0600) in the token directory and imported with `estgate-provision
 * kek import --label label --id id_hex`; hex_out gets its 64 hex digits.
 */
int eg_fx_kek_import(eg_th *th, const char *label, const char *id_hex, char hex_out[65],
                     eg_child_result *r);
/* The same with a key of bits (128 or 256); hex_out gets bits / 4 hex digits. */
int eg_fx_kek_import_bits(eg_th *th, const char *label, const char *id_hex, unsigned bits,
                          char hex_out[65], eg_child_result *r);

/*
 * A random Basic password for user name: the password alone written to
 * pass_file and, when auth_file is not NULL, base64 of "name:password" (an
 * Authorization value, for wrk) to auth_file, both 0600. *hash gets the
 * [profile] user hash, at a cost cheap enough for tests. 0 or -1.
 */
int eg_fx_basic_user(const char *name, const char *pass_file, const char *auth_file, char **hash);

/* The token label as a pkcs11: URI attribute value (blanks as %20, as NSS's has), in out. */
const char *eg_fx_uri_label(const eg_th *th, char *out, size_t cap);

/*
 * The [server] and [token] sections a fixture daemon starts from, into out:
 * a TLS 1.3 listener on 127.0.0.1:0, the "tls" key and tls-chain.pem that
 * eg_fx_provision made, ledger.db, and the harness token with its PIN file.
 * server_extra and token_extra (whole lines, or "") go at the end of their
 * sections. The length written, or -1 when it does not fit.
 */
int eg_fx_ini_head(const eg_th *th, const char *server_extra, const char *token_extra, char *out,
                   size_t cap);

/*
 * A whole fixture configuration (eg_fx_ini_head) with one [profile default]: the "ca" key and
 * ca_pem, Basic auth for user with a new password (eg_fx_basic_user, into pass_file), names
 * under .example.com, at most 30 days. malloc'd; NULL on failure.
 */
char *eg_fx_basic_config(const eg_th *th, const char *ca_pem, const char *user,
                         const char *pass_file);

/* Gives the first "key = ..." line of *text (malloc'd, replaced) the value; 0, or -1 when
   there is no such line. */
int eg_fx_ini_set(char **text, const char *key, const char *value);

/* The HTTP status curl gets for /cacerts on 127.0.0.1:port, trusting ca; -1 when curl failed
   (r has its output; dir is where it runs). */
int eg_fx_cacerts_status(const char *dir, eg_child_result *r, const char *ca, unsigned port);
/* A device's new P-256 key (dir/NAME.key) and DER CSR (dir/NAME.der) for CN and DNS SAN
   NAME.example.com, made with openssl req; the CSR's path into csr (PATH_MAX). 0 or -1. */
int eg_fx_device_csr(const char *dir, eg_child_result *r, const char *name, char *csr);

/*
 * Starts build/appliance/estgated -c ini with its output in log, and waits
 * (up to 20 s) for nports "listening on https://ADDR:PORT" lines;
 * 0 with *pid and ports[] set. Prints the log when it does not start.
 */
int eg_fx_daemon_start(const char *ini, const char *log, pid_t *pid, unsigned *ports,
                       size_t nports);
/* Sends sig and reaps the daemon; its exit status (128 + signal when killed). */
int eg_fx_daemon_stop(pid_t *pid, int sig);

/*
 * CUnit checks that the certificate in pem (a PEM file) is what the tests' profiles issue:
 * `openssl verify -purpose sslclient` against chain (the PEM certificates /cacerts gave), no
 * CA, cn among its names, EKU clientAuth alone, valid for at most max_days, and, when key is
 * not NULL, for the private key in that PEM file. dir and r run openssl.
 */
void eg_fx_check_issued(const char *dir, eg_child_result *r, const char *pem, const char *chain,
                        const char *cn, int max_days, const char *key);

#endif
