/*
 * Client certificates that may no longer authenticate (a stolen or retired device), named by the
 * SHA-256 of their DER: the [server] blocked_certs file, read at start and at every reload.
 *
 * One fingerprint a line, in any of the forms an operator has at hand: the audit trail's
 * principal "cert:<64 hex>", bare hex, or openssl's "AB:CD:..." (with or without its
 * "sha256 Fingerprint=" prefix). Blank lines and text after '#' are ignored.
 */
#ifndef EG_BLOCKLIST_H
#define EG_BLOCKLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct eg_blocklist eg_blocklist;

/*
 * Reads path. 0 with *out set (an empty file gives an empty list), or -1 with why naming the
 * first bad line ("line 3: ...") or the file's error.
 */
int eg_blocklist_load(const char *path, eg_blocklist **out, char *why, size_t whylen);
void eg_blocklist_free(eg_blocklist *b);
size_t eg_blocklist_count(const eg_blocklist *b);
/* Whether sha256 (32 octets) is listed; false for a NULL list. */
bool eg_blocklist_has(const eg_blocklist *b, const uint8_t sha256[32]);

#endif
