/* What the two benchmarks that start estgated share. */
#ifndef EG_BENCH_DAEMON_H
#define EG_BENCH_DAEMON_H

#include "token_harness.h"

/*
 * The configuration bench_est and bench_skg serve, written 0600 to ini: the
 * fixture's [server] (with `threads`) and [token], and a default profile with
 * Basic auth for user "bench", the token's "ca" key and the chain ca_chain,
 * SANs under .example.com, 30 days, clientAuth, then profile_extra (whole
 * lines). The password is random: alone in pass_file, and base64 of
 * "bench:password" in auth_file for the wrk scripts, both 0600. 0 or -1.
 */
int eg_bench_daemon_config(const eg_th *th, unsigned threads, const char *ca_chain,
                           const char *profile_extra, const char *pass_file, const char *auth_file,
                           const char *ini);

#endif
