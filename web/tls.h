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
#include <stdint.h>
#include <time.h>

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
 * The keys that encrypt TLS session tickets, one ring for every listener. A key encrypts the
 * tickets of EG_TLS_TICKET_KEY_S, then only opens them (the client gets a ticket under the newer
 * key) for as long again, then is wiped: a copy of the daemon's memory opens no ticket more than
 * two periods old. Tickets live one period, so each opens for as long as a client may offer it.
 */
#define EG_TLS_TICKET_KEY_S 3600
typedef struct eg_tls_tickets eg_tls_tickets;

eg_tls_tickets *eg_tls_tickets_new(void);
void eg_tls_tickets_free(eg_tls_tickets *t);
/* now: CLOCK_MONOTONIC seconds. Makes a new key once the current one has encrypted for a period
   (every second or so is often enough). 0, or -1 with the keys as they were. */
int eg_tls_tickets_tick(eg_tls_tickets *t, time_t now);

/*
 * key: the TLS server key (a token key through the provider), used with
 * cfg->tls_chain_file. allow_tls12 adds TLS 1.2 with ECDHE and AEAD suites
 * only. names: offered to clients, and tickets: the ticket keys, both borrowed
 * for the SSL_CTX's life. NULL with a reason in why on failure.
 */
SSL_CTX *eg_tls_ctx_new(const eg_config *cfg, EVP_PKEY *key, bool allow_tls12,
                        eg_tls_ca_names *names, eg_tls_tickets *tickets, char *why, size_t whylen);

/*
 * From now on, handshakes on base (a context civetweb holds) are served by next, a context from
 * eg_tls_ctx_new with the same settings and another key or chain; base takes next over and frees
 * an earlier successor. Connections already open keep what they have.
 */
void eg_tls_ctx_switch(SSL_CTX *base, SSL_CTX *next);

/*
 * A connection's channel binding: RFC 5929 tls-unique on TLS 1.2 (the first Finished message of
 * the handshake), RFC 9266 tls-exporter on TLS 1.3 (32 octets exported with the label
 * "EXPORTER-Channel-Binding" and no context).
 */
typedef struct eg_tls_binding {
    const char *type; /* "tls-unique" or "tls-exporter" */
    uint8_t data[64];
    size_t len;   /* 0: a TLS 1.2 connection without the extended master secret (RFC 7627), whose
                     tls-unique does not tell it from another */
    bool resumed; /* the handshake resumed a session, and so asked for no client certificate */
} eg_tls_binding;

/*
 * Takes the place of SSL_get_peer_certificate in civetweb, which calls it in the worker thread
 * right after each server handshake, and that thread then serves the connection's every request
 * until it closes. Notes the connection's peer address and channel binding for the thread and
 * returns SSL_get1_peer_certificate(ssl).
 */
X509 *eg_tls_handshake_done(const SSL *ssl);
/*
 * The channel binding noted on this thread, if it was noted for the connection from addr
 * ("192.0.2.7", as civetweb gives it) and port; else NULL. Both are compared, so a thread never
 * hands out the binding of a connection it served before.
 */
const eg_tls_binding *eg_tls_thread_binding(const char *addr, unsigned port);

/*
 * For the log line of a handshake that failed on this thread: the address and port of its
 * client, and the local port it came in on (which names a relay's device). Only between the
 * handshake's ClientHello and its failure; false before a ClientHello was read, or once told.
 */
bool eg_tls_failed_peer(char *addr, size_t cap, unsigned *port, unsigned *local_port);

/* The intermediates the client sent with leaf at the handshake (borrowed; NULL if none). */
STACK_OF(X509) * eg_tls_peer_intermediates(X509 *leaf);

#endif
