/*
 * The HTTPS server: civetweb with our own SSL_CTX, one civetweb context per
 * TLS policy (listeners that allow TLS 1.2, and those that do not), because
 * civetweb 1.15 has one SSL_CTX per context. Requests go to eg_est_handle().
 * IPv6 listeners, which Debian's civetweb cannot open, go through relay.c.
 */
#ifndef EG_SERVER_H
#define EG_SERVER_H

#include <stdbool.h>
#include <time.h>

#include <openssl/evp.h>

#include "config.h"
#include "est.h"

typedef struct eg_server eg_server;

/*
 * Starts listening on cfg's listeners (port 0: an ephemeral port, see
 * eg_server_port). tls_key is the TLS server key for cfg->tls_chain_file,
 * normally a token key from eg_provider_load_key; the server takes its own
 * reference. cfg and est must outlive the server.
 */
int eg_server_start(const eg_config *cfg, eg_est *est, EVP_PKEY *tls_key, eg_server **out);
/*
 * Before a stop: from now on a new request gets 503 with Retry-After and every answer closes its
 * connection; waits until the requests already in flight have been answered, or max_ms. Returns
 * how many were still in flight then. (civetweb drops what a handler writes once mg_stop has
 * begun, so an answer not sent by then is lost.)
 */
unsigned eg_server_drain(eg_server *s, unsigned max_ms);
/* Stops listening, closes every connection, frees; NULL is a no-op. Drain first. */
void eg_server_stop(eg_server *s);
/* After eg_est_reload: offers cfg's client CA names from the next handshake on. 0 or -1. */
int eg_server_reload(eg_server *s, const eg_config *cfg);
/*
 * A reload's TLS key and chain, in two steps so that a reload can fail as a whole: prepare reads
 * cfg's tls_chain with key (its TLS key, normally a token key through the provider) into new
 * contexts and checks that they match (NULL, with the reason on stderr, if not); commit hands
 * every new handshake to them (connections already open keep theirs); discard drops them.
 */
typedef struct eg_server_tls eg_server_tls;
eg_server_tls *eg_server_tls_prepare(eg_server *s, const eg_config *cfg, EVP_PKEY *key);
void eg_server_tls_commit(eg_server *s, eg_server_tls *t);
void eg_server_tls_discard(eg_server_tls *t);
/* Every second or so, with now in CLOCK_MONOTONIC seconds: makes a new TLS ticket key every
   EG_TLS_TICKET_KEY_S (tls.h). 0, or -1 if a new key could not be made (the old ones stay). */
int eg_server_tick(eg_server *s, time_t now);
/* The port listener i (index in cfg->listeners) is bound to; 0 if unknown. */
unsigned eg_server_port(const eg_server *s, size_t i);

/* For the glue: records a refusal made before eg_est_handle() (est.c). */
void eg_est_audit(eg_est *est, const eg_http_req *req, eg_audit_kind kind, const char *reason);

#endif
