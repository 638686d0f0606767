/*
 * The server's SSL_CTX, built by estgate and handed to civetweb: the token
 * TLS key, TLS 1.3 only unless a listener opts in to TLS 1.2, and optional
 * client certificates that are only collected at the handshake and verified
 * per profile at request time (auth.c).
 */
#ifndef EG_TLS_H
#define EG_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "config.h"

/* The client CA names offered in CertificateRequest: every profile's client CA bundle. */
typedef struct eg_tls_ca_names eg_tls_ca_names;

eg_tls_ca_names *eg_tls_ca_names_new(void);
void eg_tls_ca_names_free(eg_tls_ca_names *n);
/* Reads cfg's bundles again and offers their subjects from the next handshake on. 0, or -1
   with why and the names unchanged. */
int eg_tls_ca_names_set(eg_tls_ca_names *n, const eg_config *cfg, char *why, size_t whylen);

/*
 * key: the TLS server key (a token key through the provider), used with
 * cfg->tls_chain_file. allow_tls12 adds TLS 1.2 with ECDHE and AEAD suites
 * only. names: offered to clients, borrowed for the SSL_CTX's life. NULL with
 * a reason in why on failure.
 */
SSL_CTX *eg_tls_ctx_new(const eg_config *cfg, EVP_PKEY *key, bool allow_tls12,
                        eg_tls_ca_names *names, char *why, size_t whylen);

/* The intermediates the client sent with leaf at the handshake (borrowed; NULL if none). */
STACK_OF(X509) * eg_tls_peer_intermediates(X509 *leaf);

#endif
