/* For tests only: password hashes of a chosen cost. */
#ifndef EG_PASSWORD_LOCAL_H
#define EG_PASSWORD_LOCAL_H

/*
 * eg_password_hash() with iterations (10000 to 10000000) instead of the
 * production 600000. Test suites that run under AddressSanitizer use the
 * minimum: every PBKDF2 iteration allocates, and a sanitizer with full stack
 * unwinding makes each allocation expensive. Production code never calls it.
 */
int eg_password_hash_cost(const char *password, unsigned iterations, char **out);

#endif
