/*
 * Per-principal issuance limits (a profile's issue_limit): at most N new
 * certificates for one principal on one profile in a window of W seconds,
 * counted from the first of them. In memory; estgated counts again, from the
 * ledger, what was issued in the windows still running when it starts
 * (eg_limiter_seed).
 */
#ifndef EG_LIMIT_H
#define EG_LIMIT_H

#include <stdbool.h>
#include <time.h>

typedef struct eg_limiter eg_limiter;

eg_limiter *eg_limiter_new(void);
void eg_limiter_free(eg_limiter *l);

/*
 * Takes one of count slots in the window_s-second window of (profile,
 * principal), now being CLOCK_MONOTONIC seconds. true when taken; false, with
 * *retry_after the seconds until the window ends, when all count were taken.
 * When the table is full of live windows it lets the request through (a
 * limit must not refuse everyone) and says so once on stderr.
 */
bool eg_limiter_take(eg_limiter *l, const char *profile, const char *principal, unsigned count,
                     unsigned window_s, time_t now, unsigned *retry_after);

/*
 * Counts one issuance made at `at` (CLOCK_MONOTONIC seconds, before now) as eg_limiter_take
 * would have counted it then, but never refuses: the ledger's certificates of the last window,
 * at start. Calls must come oldest first.
 */
void eg_limiter_seed(eg_limiter *l, const char *profile, const char *principal, unsigned window_s,
                     time_t at);

/* Gives back a slot taken for an issuance that did not happen. */
void eg_limiter_give_back(eg_limiter *l, const char *profile, const char *principal, time_t now);

#endif
