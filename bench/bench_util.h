/* What the benchmarks share: a clock, and a token module opened as the daemon will open it. */
#ifndef EG_BENCH_UTIL_H
#define EG_BENCH_UTIL_H

#include "signer.h"

/* Seconds on the monotonic clock. */
double eg_bench_now(void);

/* A module instance of the benchmark's own, for the token's raw rates. */
typedef struct eg_bench_module {
    void *dl;
    CK_FUNCTION_LIST *fl;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE login; /* with a PIN: kept open, as the login lasts while a session does */
    int initialized;         /* we called C_Initialize, so we C_Finalize */
} eg_bench_module;

/*
 * The module at cfg's path with its init string, and the slot of cfg's token:
 * for p11kit a new client connection to the same server, for softhsm the same
 * token files the daemon opens. With pin (not NULL), logged in as the user.
 * 0 or -1; eg_bench_module_close in both cases.
 */
int eg_bench_module_open(const eg_token_config *cfg, const char *pin, eg_bench_module *m);
void eg_bench_module_close(eg_bench_module *m);

#endif
