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

/*
 * key: the TLS server key (a token key through the provider), used with
 * cfg->tls_chain_file. allow_tls12 adds TLS 1.2 with ECDHE and AEAD suites
 * only. NULL with a reason in why on failure.
 */
SSL_CTX *eg_tls_ctx_new(const eg_config *cfg, EVP_PKEY *key, bool allow_tls12, char *why,
                        size_t whylen);

/* The intermediates the client sent with leaf at the handshake (borrowed; NULL if none). */
STACK_OF(X509) * eg_tls_peer_intermediates(X509 *leaf);

#endif
