/*
 * Fixture of the provider tests: a fresh token reachable through the estgate
 * provider in a library context of its own, keys made in the token, X.509
 * objects signed through the provider, and the stock openssl command line to
 * check them with.
 */
#ifndef EG_PROV_FIXTURE_H
#define EG_PROV_FIXTURE_H

#include <stdbool.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "p11.h"
#include "token_harness.h"

typedef struct eg_pf {
    eg_th *th;
    eg_token *tok;
    OSSL_LIB_CTX *libctx; /* holds the estgate provider; not the default context */
    char dir[512];        /* scratch files for the command line, in the token's directory */
} eg_pf;

typedef struct eg_pf_key {
    const char *name;
    eg_p11_key *p11;
    EVP_PKEY *pkey; /* the token key, loaded through the provider's store */
    EVP_PKEY *pub;  /* its public half in software (default provider) */
} eg_pf_key;

int eg_pf_open(eg_th_kind kind, const char *label, eg_pf *pf);
void eg_pf_close(eg_pf *pf);
/* Whether the token makes Ed25519 keys and signatures (prints a note when not). */
bool eg_pf_has_ed25519(eg_pf *pf);
/* Generates a token key pair (a token object) and loads it by its URI. */
int eg_pf_key_make(eg_pf *pf, const char *name, const eg_keygen_spec *spec, eg_pf_key *out);
void eg_pf_key_clear(eg_pf_key *key);
uint64_t eg_pf_sign_calls(eg_pf *pf);

/* A digest-sign context in pf's context: md NULL for Ed25519, pss for RSA-PSS (salt = hash). */
EVP_MD_CTX *eg_pf_sign_ctx(eg_pf *pf, EVP_PKEY *pkey, const char *md, bool pss);
/* A v3 certificate for key, signed by issuer_key (issuer NULL: self-signed CA). */
X509 *eg_pf_cert(eg_pf *pf, const char *cn, long serial, EVP_PKEY *key, X509 *issuer,
                 EVP_PKEY *issuer_key, const char *md, bool pss);

/* pf->dir/name into path (PATH_MAX bytes). */
void eg_pf_path(const eg_pf *pf, const char *name, char *path);
int eg_pf_write_cert(eg_pf *pf, const char *name, X509 *x);
int eg_pf_write_bytes(eg_pf *pf, const char *name, const void *data, size_t len);
/*
 * Runs `openssl args...` (NULL-terminated) and returns its exit status, -1 if
 * it did not run. With expect, the status is 0 only if the output holds expect
 * too: some openssl 3.0 commands (req -verify, crl -verify) exit 0 after a
 * failed verification and only say so.
 */
int eg_pf_openssl(eg_pf *pf, const char *expect, ...) __attribute__((sentinel));
/* Runs `openssl args...`; 0 if it failed, saying reason. */
int eg_pf_openssl_refuses(eg_pf *pf, const char *reason, ...) __attribute__((sentinel));

#endif
