/*
 * EST over HTTP, without the HTTP server: a request's facts and bytes in, a
 * status, headers and bytes out. The civetweb glue (server.c) fills an
 * eg_http_req from a connection and writes the eg_http_resp back; tests can
 * call eg_est_handle() directly with the same facts a connection gives.
 *
 * Here: routing of /.well-known/est/[label/]operation, methods and media
 * types, the wire formats (base64 with or without Content-Transfer-Encoding,
 * wrapped lines, CRLF, PEM CSRs), authentication (Basic against the profile's
 * password hashes, client certificates against the profile's trust bundle),
 * and the mapping of core answers to HTTP statuses. Policy and issuance are
 * the core's (appliance/core.h).
 */
#ifndef EG_EST_H
#define EG_EST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core.h"

typedef struct eg_est eg_est;

typedef struct eg_http_req {
    const char *method;       /* "GET", "POST", ... */
    const char *path;         /* URL path, no query: "/.well-known/est/iot/simpleenroll" */
    const char *content_type; /* NULL if absent */
    const char *content_transfer_encoding; /* NULL if absent */
    const char *authorization;             /* NULL if absent */
    const uint8_t *body;
    size_t body_len;
    /* The TLS client certificate chain as the handshake gave it, DER, leaf
       first; n_client_certs 0 when none. Verified here per profile. */
    const uint8_t *const *client_certs;
    const size_t *client_cert_lens;
    size_t n_client_certs;
    const char *peer;   /* "192.0.2.7:51234" */
    const char *source; /* the address alone: "192.0.2.7", "2001:db8::7"; NULL if unknown */
    /* The connection's channel binding (RFC 5929 "tls-unique", RFC 9266 "tls-exporter");
       type NULL when it is not known. */
    const char *channel_binding_type;
    const uint8_t *channel_binding;
    size_t channel_binding_len;
    /* The connection resumed a TLS session: no client certificate was asked for in it (sessions
       with one are never resumed, web/tls.c), so a device that has one now could not send it. */
    bool tls_resumed;
} eg_http_req;

#define EG_HTTP_MAX_HEADERS 4

typedef struct eg_http_resp {
    int status;
    const char *content_type; /* static string or NULL */
    /* Extra headers as "Name: value" (WWW-Authenticate, Retry-After, ...). */
    char *headers[EG_HTTP_MAX_HEADERS];
    size_t nheaders;
    uint8_t *body; /* malloc'd; for errors a text/plain reason ending in "\n" */
    size_t body_len;
    bool body_secure;         /* body holds a plaintext private key, in OpenSSL's secure heap: it is
                                 copied only into secure memory and wiped when freed */
    char *content_type_owned; /* when content_type was made for this answer (multipart) */
    bool head;                /* a HEAD request: the GET's headers, Content-Length included,
                                 and no body */
} eg_http_resp;

void eg_http_resp_clear(eg_http_resp *r);

/* cfg and core must outlive the handler; cfg gives profiles and their users. */
int eg_est_new(const eg_config *cfg, eg_core *core, eg_est **out);
void eg_est_free(eg_est *est);

/*
 * Puts cfg's profiles, users and client CA bundles in place of the running
 * ones, once the requests in flight are done; est owns cfg from then on.
 * Listeners, the TLS key, the token and the ledger stay as they are. 0, or
 * -1 with the reason on stderr, the running configuration unchanged and cfg
 * still the caller's.
 */
int eg_est_reload(eg_est *est, eg_config *cfg);
/* The configuration in force: the one given to eg_est_new, or the last reload's. Only for the
   thread that reloads (it changes under no one else). */
const eg_config *eg_est_config(const eg_est *est);

/* Handles one request. Never fails: every outcome is a response. */
void eg_est_handle(eg_est *est, const eg_http_req *req, eg_http_resp *resp);

#endif
