/*
 * Building, linting and signing one end-entity certificate from a checked
 * CSR. Nothing is signed that the lint has not passed.
 */
#ifndef EG_ISSUE_H
#define EG_ISSUE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "policy.h"

#define EG_SERIAL_LEN      16
#define EG_SERIAL_TIME_LEN 6

/* The issuing CA of a profile, read-only after open. */
typedef struct eg_issue_ca {
    X509 *cert;
    EVP_PKEY *key;       /* the token key, through the provider */
    const char *md;      /* "SHA256", "SHA384", "SHA512"; NULL for Ed25519 */
    EVP_MD_CTX *sign;    /* key and md made ready once (eg_issue_ca_ready); copied per signature */
    X509_EXTENSION *aki; /* the certificates' authority key identifier, made with sign */
    time_t not_before;   /* the CA's validity, as Unix times */
    time_t not_after;
} eg_issue_ca;

/* How far back a certificate's notBefore is set, for devices whose clocks run behind. */
#define EG_ISSUE_CLOCK_SKEW_S 300

/* The validity of a certificate issued now: [now - 5 min, now + max_days] inside the CA's. */
typedef struct eg_validity {
    time_t not_before, not_after;
} eg_validity;

/*
 * The validity for now: max_days, or the shorter one asked in the CSR (asked,
 * days; 0 for none), inside the CA's. 0; or, with reason, -1 when the CA has
 * expired and -2 when it has not begun (the clock is behind).
 */
int eg_issue_validity(const eg_policy *pol, const eg_issue_ca *ca, time_t now, unsigned asked,
                      eg_validity *out, char *reason, size_t cap);

/* A fresh positive serial of EG_SERIAL_LEN octets with a non-zero first octet (its DER
   INTEGER content as is): EG_SERIAL_TIME_LEN octets of the time in milliseconds, with 0x40
   set in the first, then 80 random bits (CA/Browser Forum: at least 64). */
int eg_issue_serial(uint8_t out[EG_SERIAL_LEN]);

/* The subject the certificate gets: the template filled in, or the CSR's allowed attributes. */
X509_NAME *eg_issue_subject(const eg_policy *pol, const eg_csr *req);

/*
 * A public key as the pieces of its SubjectPublicKeyInfo: setting these in a
 * certificate costs nothing, where OpenSSL 3.0's X509_set_pubkey runs an
 * encoder chain (a fifth of a serverkeygen answer's CPU on SoftHSM).
 */
typedef struct eg_pubkey_bits {
    int type;            /* EVP_PKEY_EC (id-ecPublicKey) or EVP_PKEY_RSA (rsaEncryption) */
    int curve_nid;       /* EC: the named curve */
    const uint8_t *bits; /* EC: the uncompressed point; RSA: DER RSAPublicKey */
    size_t len;
} eg_pubkey_bits;

/* The unsigned certificate, for key (serverkeygen) or, when key is NULL, for the CSR's own
   key, from a ca made ready (eg_issue_ca_ready). NULL with reason on failure. */
X509 *eg_issue_build(const eg_policy *pol, const eg_issue_ca *ca, const eg_csr *req,
                     const eg_pubkey_bits *key, const X509_NAME *subject, const uint8_t *serial,
                     size_t serial_len, const eg_validity *val, char *reason, size_t cap);

/* RFC 5280 profile checks of a built certificate. 0, or -1 with reason. */
int eg_issue_lint(const eg_policy *pol, const eg_issue_ca *ca, X509 *cert, char *reason,
                  size_t cap);

/* Initialises ca->sign from ca->key and ca->md, and ca->aki, while one thread owns ca.
   0, or -1. */
int eg_issue_ca_ready(eg_issue_ca *ca);

/* Frees what ca holds (certificate, key, sign, aki) and zeroes it. */
void eg_issue_ca_clear(eg_issue_ca *ca);

/*
 * Signs cert with the CA key (in the token), from a copy of ca->sign. 0; -2 with reason when
 * the CA key is no longer in the token or is another key (only an operator can fix that); -1
 * with reason for any other failure.
 */
int eg_issue_sign(const eg_issue_ca *ca, X509 *cert, char *reason, size_t cap);

#endif
