/*
 * Throwaway PKCS#11 tokens for token-backed tests: each eg_th is a fresh,
 * initialised token with a user PIN, in its own temporary directory.
 *
 * Kinds and what they set in the test process:
 *   softhsm  SoftHSMv2 loaded in-process. SOFTHSM2_CONF is process-global and
 *            SoftHSM reads it at C_Initialize, so all softhsm tokens of a
 *            process share one token directory (made with the first, removed
 *            with the last). Several may be live and open at once; a label
 *            can be used once while that directory lasts.
 *   p11kit   SoftHSMv2 served by a `p11-kit server` child in its own process
 *            group; sets P11_KIT_SERVER_ADDRESS and makes the process a child
 *            subreaper, to reap the server's per-connection processes when
 *            it kills the server. One live per process.
 *   nss      NSS softoken over an SQL DB; sets NSS_MAX_MP_PBE_ITERATION_COUNT=1.
 *            The signer loads a module with one init string per process, so
 *            only one nss token can be open at a time.
 * Tokens made one after another (destroy, then create) work for every kind as
 * long as the eg_tokens on the old one were freed first.
 *
 * The p11-kit server dies with the thread that started it (PR_SET_PDEATHSIG),
 * so a crashed test leaves no server: call eg_th_create and eg_th_server_start
 * from a thread that outlives the token, e.g. the main thread.
 */
#ifndef EG_TOKEN_HARNESS_H
#define EG_TOKEN_HARNESS_H

#include "cu_run.h"
#include "signer.h"

typedef enum eg_th_kind { EG_TH_SOFTHSM, EG_TH_P11KIT, EG_TH_NSS } eg_th_kind;
typedef struct eg_th eg_th;

/* "softhsm" | "p11kit" | "nss". */
int eg_th_kind_parse(const char *name, eg_th_kind *out);
const char *eg_th_kind_name(eg_th_kind kind);

/*
 * A fresh token labelled label (1-32 bytes; ignored for nss, whose key slot is
 * always "NSS Certificate DB"), initialised, user PIN set, PIN file written
 * 0600. Errors are printed to stderr.
 */
int eg_th_create(eg_th_kind kind, const char *label, eg_th **out);
/* Stops any server it started (and waits for it), removes the temp dir; NULL ok. */
void eg_th_destroy(eg_th *th);

/* module_path, init_args (NULL except nss), token_label, pin_file; 0 for the rest. */
const eg_token_config *eg_th_config(const eg_th *th);
/* The token's own directory: PIN file, p11-kit socket and log, NSS DB. */
const char *eg_th_dir(const eg_th *th);
const char *eg_th_so_pin(const eg_th *th); /* NULL for nss: no SO login */
const char *eg_th_user_pin(const eg_th *th);

/* p11kit only: SIGKILL the server's process group and reap the server. */
int eg_th_server_kill(eg_th *th);
/* p11kit only: start it again on the same socket; returns when it accepts. */
int eg_th_server_start(eg_th *th);
/* p11kit only: sig to the server's process group: SIGSTOP makes a token that hangs, SIGCONT
   lets it answer again. */
int eg_th_server_signal(eg_th *th, int sig);

/* For CUnit mains: argv[1] (or env EG_TOKEN_KIND) as a kind; prints usage on error. */
int eg_th_main_kind(int argc, char **argv, eg_th_kind *out);
/*
 * The main of a token test: takes the kind from the command line into *kind,
 * then runs the tests as one suite named after it (see eg_cu_run); 64 on a
 * bad command line.
 */
int eg_th_run(int argc, char **argv, eg_th_kind *kind, CU_InitializeFunc init, CU_CleanupFunc clean,
              CU_TestInfo *tests);

#endif
