/*
 * Per-principal issuance limits (a profile's issue_limit): at most N new
 * certificates for one principal on one profile in each window of W seconds.
 * The windows follow each other on wall-clock time, each key's at a phase of
 * its own (a hash of the key, so that not every principal's window turns over
 * at once): which window holds a moment depends on nothing else, so the
 * counts made again from the ledger when estgated starts (eg_limiter_seed)
 * are the counts it had, and a reload that changes W starts the key's window
 * at the new length at once.
 */
#ifndef EG_LIMIT_H
#define EG_LIMIT_H

#include <stdbool.h>
#include <time.h>

typedef struct eg_limiter eg_limiter;

eg_limiter *eg_limiter_new(void);
void eg_limiter_free(eg_limiter *l);

/* The start of the window_s-second window of (profile, principal) that holds t. */
time_t eg_limiter_window_start(const char *profile, const char *principal, unsigned window_s,
                               time_t t);

/*
 * Takes one of count slots in the window_s-second window of (profile,
 * principal) that holds now (Unix time). true when taken; false, with
 * *retry_after the seconds until the window ends, when all count were taken.
 * When the table is full of live windows it lets the request through (a
 * limit must not refuse everyone) and says so once on stderr.
 */
bool eg_limiter_take(eg_limiter *l, const char *profile, const char *principal, unsigned count,
                     unsigned window_s, time_t now, unsigned *retry_after);

/*
 * Counts one issuance made at `at` (Unix time) as eg_limiter_take counted it then, when it
 * falls in the window that holds now; never refuses. The ledger's recent certificates, at
 * start. One from after now (the clock was set back since) counts in the running window.
 */
void eg_limiter_seed(eg_limiter *l, const char *profile, const char *principal, unsigned window_s,
                     time_t at, time_t now);

/* Gives back a slot taken for an issuance that did not happen. */
void eg_limiter_give_back(eg_limiter *l, const char *profile, const char *principal, time_t now);

#endif
