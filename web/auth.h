/*
 * Who is asking: HTTP Basic against a profile's users, and TLS client
 * certificates against a profile's trust bundle, both decided per request and
 * per profile. Verified passwords are remembered for a few minutes so that a
 * device's repeated requests do not pay the deliberately slow KDF again.
 */
#ifndef EG_AUTH_H
#define EG_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core.h"

typedef struct eg_auth eg_auth;

#define EG_AUTH_CACHE_SECONDS 300
#define EG_AUTH_CACHE_ENTRIES 4096

typedef struct eg_auth_result {
    eg_audit_kind fail;  /* on refusal: auth.missing, auth.bad_password, ... */
    bool busy;           /* refused unchecked: password checks were all taken (answer 503) */
    unsigned throttled;  /* refused unchecked: this source's wrong passwords are over the limit;
                            seconds until it may try again (answer 429 with Retry-After) */
    char principal[160]; /* "basic:<user>", "cert:<sha256 hex of the leaf DER>" */
    char reason[200];    /* for the client and the log; never a secret */
    long expired_s;      /* a renewal admitted within renew_expired_days: how many seconds ago
                            the certificate expired; 0 otherwise */
} eg_auth_result;

/* Loads every profile's client CA bundle once; cfg must outlive the handle. */
int eg_auth_new(const eg_config *cfg, eg_auth **out);
void eg_auth_free(eg_auth *a);

/*
 * Splits "Basic <base64(user:password)>". user and password are malloc'd; the
 * caller wipes password with OPENSSL_clear_free. -1 with a reason when malformed.
 */
int eg_auth_parse_basic(const char *header, char **user, char **password, char *why, size_t whylen);

/* 0: admitted (res->principal set); -1: refused (res->fail and res->reason set). source is the
   client's address without its port ("192.0.2.7", "2001:db8::7"), or NULL. */
int eg_auth_basic(eg_auth *a, const eg_profile_cfg *p, const char *source, const char *header,
                  eg_auth_result *res);
/*
 * Whether a client certificate (the leaf, DER) is in blocked_certs: 1 with res filled as
 * eg_auth_cert fills it for a blocked one, else 0. For profiles that do not authenticate by
 * certificate, where a blocked device is refused all the same.
 */
int eg_auth_cert_blocked(eg_auth *a, const uint8_t *leaf, size_t len, eg_auth_result *res);

/* The chain as the handshake gave it, DER, leaf first; verified for purpose sslclient. */
int eg_auth_cert(eg_auth *a, const eg_profile_cfg *p, const uint8_t *const *certs,
                 const size_t *lens, size_t n, eg_auth_result *res);
/*
 * The same for simplereenroll, where the certificate renews itself: a leaf that expired up to
 * p->renew_expired_days ago is admitted (res->expired_s says how long ago); everything else
 * about the chain, the issuers' validity included, is checked as eg_auth_cert does.
 */
int eg_auth_cert_renewal(eg_auth *a, const eg_profile_cfg *p, const uint8_t *const *certs,
                         const size_t *lens, size_t n, eg_auth_result *res);

/*
 * At a reload: the verified credentials of the running handle (and the key they are kept
 * under) go on in the new one, so devices are not all checked again at once. Safe however the
 * users changed: an entry covers (profile, user, password, stored hash), so a changed or
 * removed user's entries never match again. The wrong passwords counted per address go on
 * too, so a reload does not give a guesser a new minute. Call before `to` serves requests.
 */
void eg_auth_adopt_cache(eg_auth *to, eg_auth *from);

/* How many times the password KDF ran (eg_password_verify calls): for tests. */
uint64_t eg_auth_kdf_runs(eg_auth *a);

/*
 * A password not in the cache costs a deliberately slow KDF (about half a second of a core), so
 * wrong guesses could take every core. At most `slots` run at once (default: half the cores,
 * at least 1); a check that finds none free within wait_ms (default 5000) is refused as busy.
 * For tests, and the peak of checks seen running at once.
 */
void eg_auth_set_kdf_limits(eg_auth *a, unsigned slots, unsigned wait_ms);
unsigned eg_auth_kdf_peak(eg_auth *a);

/*
 * Online guessing from one place: once a source (an IPv4 address, or an IPv6 /64, which one
 * host usually holds whole) has had `failures` wrong passwords or unknown users within
 * window_s seconds of its first, its next credentials that would need the KDF are refused
 * unchecked until the window ends. Credentials verified before (in the cache) still pass, so
 * devices behind the same NAT that enrolled before are not locked out. failures 0: no limit.
 * Set from [server] auth_failures_per_minute (window 60 s); any other window is for tests.
 */
#define EG_AUTH_SOURCES 1024
void eg_auth_set_source_limit(eg_auth *a, unsigned failures, unsigned window_s);

#endif
