/* civetweb glue: a connection's facts into an eg_http_req, the eg_http_resp back out. */
#include <arpa/inet.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <civetweb.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "audit.h"
#include "clock.h"
#include "errors.h"
#include "relay.h"
#include "server.h"
#include "tls.h"
#include "wire.h"

#define GROUPS     2 /* 0: TLS 1.3 only; 1: TLS 1.2 allowed */
#define MAX_CHAIN  8 /* client certificates passed on: leaf and intermediates */
#define PORTS_LEN  (EG_MAX_LISTENERS * 64)
#define SOURCE_LEN 48 /* a client address, as civetweb's remote_addr holds it */

typedef struct group {
    eg_server *srv;
    SSL_CTX *ssl;
    struct mg_context *mg;
    size_t listeners[EG_MAX_LISTENERS]; /* indexes into cfg->listeners, in port order */
    size_t n;
} group;

struct eg_server {
    const eg_config *cfg;
    eg_est *est;
    group groups[GROUPS];
    unsigned ports[EG_MAX_LISTENERS];
    /* IPv6 listeners where civetweb has no IPv6: a relay to a loopback port of civetweb's */
    eg_relay *relays[EG_MAX_LISTENERS];
    eg_tls_ca_names *ca_names;
    eg_tls_tickets *tickets;
    atomic_uint inflight; /* requests inside on_request */
    atomic_bool draining; /* eg_server_drain has begun */
};

/* civetweb asks at start (*ssl_ctx NULL) and at stop: ours both times, freed by us. */
static int external_ssl_ctx(void **ssl_ctx, void *user_data)
{
    group *g = user_data;

    if (*ssl_ctx == NULL)
        *ssl_ctx = g->ssl;
    return 1;
}

/* civetweb 1.15's own rule (should_keep_alive): a Connection header decides, else HTTP/1.1. */
static bool keeps_alive(const struct mg_connection *conn)
{
    const char *h = mg_get_header(conn, "Connection");
    const char *v = mg_get_request_info(conn)->http_version;

    if (h != NULL)
        return strcasestr(h, "keep-alive") != NULL;
    return v != NULL && strcmp(v, "1.1") == 0;
}

/*
 * Status line, headers and body in one write: one TLS record and one TCP
 * segment per answer. civetweb's header functions send the head on its own,
 * which cost an enrollment a second SSL_write and send path (11% of the
 * daemon's CPU under load, docs/benchmarks.md).
 */
static void send_response(struct mg_connection *conn, const eg_http_resp *r, bool closing)
{
    bool alive = !closing && keeps_alive(conn);
    char date[64];
    struct tm tm;
    time_t now = time(NULL);
    size_t cap = 1024 + r->body_len, n;
    /* A plaintext key stays in the secure heap until SSL_write has encrypted it. */
    char *buf = r->body_secure ? OPENSSL_secure_malloc(cap) : malloc(cap);

    if (buf == NULL) {
        mg_disable_connection_keep_alive(conn);
        return;
    }
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&now, &tm));
    n = (size_t)snprintf(buf, cap, "HTTP/1.1 %d %s\r\n", r->status,
                         mg_get_response_code_text(conn, r->status));
    if (r->content_type != NULL)
        n += (size_t)snprintf(buf + n, cap - n, "Content-Type: %s\r\n", r->content_type);
    for (size_t i = 0; i < r->nheaders && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s\r\n", r->headers[i]);
    if (r->status != 204 && n < cap)
        n += (size_t)snprintf(buf + n, cap - n, "Content-Length: %zu\r\n", r->body_len);
    if (n < cap)
        n += (size_t)snprintf(buf + n, cap - n, "Date: %s\r\nConnection: %s\r\n\r\n", date,
                              alive ? "keep-alive" : "close");
    if (n + r->body_len <= cap) { /* else headers longer than the room kept for them */
        if (!alive)
            mg_disable_connection_keep_alive(conn);
        memcpy(buf + n, r->body, r->body_len);
        mg_write(conn, buf, r->head ? n : n + r->body_len);
    } else {
        mg_disable_connection_keep_alive(conn);
    }
    if (r->body_secure)
        OPENSSL_secure_clear_free(buf, cap);
    else
        free(buf);
}

/*
 * An answer the glue makes itself: text/plain with the reason, connection closed, written whole
 * as every answer is. (civetweb's header functions send nothing once anything has been written
 * on the connection, such as a 100 Continue: the refusal then lost its status line.)
 */
static int refuse(struct mg_connection *conn, eg_server *srv, const eg_http_req *req, int status,
                  eg_audit_kind kind, const char *reason, const char *retry_after)
{
    char body[512], retry[48];
    eg_http_resp r = {.status = status, .content_type = EG_WIRE_CT_TEXT};
    int n = snprintf(body, sizeof(body), "%s\n", reason);

    eg_est_audit(srv->est, req, kind, reason);
    r.body = (uint8_t *)body;
    r.body_len = n > 0 && (size_t)n < sizeof(body) ? (size_t)n : sizeof(body) - 1;
    r.head = req->method != NULL && strcmp(req->method, "HEAD") == 0;
    if (retry_after != NULL) {
        snprintf(retry, sizeof(retry), "Retry-After: %s", retry_after);
        r.headers[r.nheaders++] = retry;
    }
    /* The body was not (fully) read: the next bytes are not a request. */
    send_response(conn, &r, true);
    return status;
}

/*
 * RFC 9110 10.1.1: a client that sent "Expect: 100-continue" waits for an interim 100 before its
 * body (curl for a second, then sends anyway; some clients longer). civetweb 1.15 sends none to
 * a handler that reads the body itself. Not to HTTP/1.0 clients, and not when there is no body.
 */
static bool expects_continue(struct mg_connection *conn)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *expect = mg_get_header(conn, "Expect");

    return expect != NULL && strcasecmp(expect, "100-continue") == 0 && ri->http_version != NULL &&
           strcmp(ri->http_version, "1.1") == 0 &&
           (ri->content_length > 0 || mg_get_header(conn, "Transfer-Encoding") != NULL);
}

static void continue_if_expected(struct mg_connection *conn)
{
    static const char interim[] = "HTTP/1.1 100 Continue\r\n\r\n";

    if (expects_continue(conn))
        mg_write(conn, interim, sizeof(interim) - 1);
}

/*
 * After a 413 that left body octets unread: reads and drops what the client still sends, up to
 * DRAIN_MAX octets or DRAIN_MS, so that the close is a FIN. civetweb's close discards pending
 * data only on Windows; here a close with unread octets makes the kernel send a reset, and a
 * client still writing gets an error instead of the 413 (curl: "Empty reply from server"). A
 * client that waits for a 100 Continue it did not get sends nothing more.
 */
#define DRAIN_MAX (4u << 20)
#define DRAIN_MS  2000

static void drain_body(struct mg_connection *conn, bool sent_continue)
{
    uint64_t until = eg_mono_ms() + DRAIN_MS;
    size_t total = 0;
    char sink[4096];
    int got;

    if (expects_continue(conn) && !sent_continue)
        return;
    while (total < DRAIN_MAX && eg_mono_ms() < until &&
           (got = mg_read(conn, sink, sizeof(sink))) > 0)
        total += (size_t)got;
}

/*
 * Reads at most max_body bytes; *over when the body is longer. With a
 * Content-Length above the limit nothing is read at all (and no 100 Continue is sent).
 *
 * The buffer is sized to the Content-Length, or grows from READ_CHUNK when
 * there is none (chunked), rather than being max_body every time: a 64 KiB
 * block freed after each request made glibc consolidate and hand the arena's
 * top back to the kernel (madvise and a TLB shootdown on every core), about
 * 3% of the daemon's CPU under enrollment load (docs/benchmarks.md).
 */
#define READ_CHUNK 4096

/*
 * civetweb bounds each read by request_timeout_ms, not the body as a whole: a client that sends
 * an octet every few seconds held its thread for as long as it liked, and 64 of them (one host)
 * took a listener's every thread. So the whole body must come within timeout_ms of the first
 * read (-3 when it does not, with what came in *out and *len).
 */
static int read_body(struct mg_connection *conn, size_t max_body, unsigned timeout_ms,
                     uint8_t **out, size_t *len, bool *over)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    uint64_t deadline = eg_mono_ms() + timeout_ms;
    size_t cap, n = 0;
    uint8_t *buf, *bigger;
    int got = 0;

    *over = ri->content_length > 0 && (unsigned long long)ri->content_length > max_body;
    if (*over)
        return 0;
    continue_if_expected(conn); /* the body is wanted: a client waiting to send it may */
    /* One octet past the limit (or the announced length) shows a body that is longer. */
    cap = ri->content_length >= 0 ? (size_t)ri->content_length + 1 : READ_CHUNK;
    if (cap > max_body + 1)
        cap = max_body + 1;
    if ((buf = malloc(cap)) == NULL)
        return -1;
    for (;;) {
        while (n < cap && (got = mg_read(conn, buf + n, cap - n)) > 0) {
            n += (size_t)got;
            if (n < cap && eg_mono_ms() > deadline) {
                *out = buf;
                *len = n;
                return -3;
            }
        }
        if (n < cap || cap == max_body + 1)
            break;
        /* Full and still under the limit: there may be more. */
        cap = cap > (max_body + 1) / 2 ? max_body + 1 : cap * 2;
        if ((bigger = realloc(buf, cap)) == NULL) {
            free(buf);
            return -1;
        }
        buf = bigger;
    }
    *over = n > max_body;
    *out = buf;
    *len = n;
    /* The client stopped before the end it announced (its Content-Length, or the last chunk),
       or the wait for the rest timed out: what came is not the request it meant. */
    if (!*over && (got < 0 || (ri->content_length >= 0 && n < (size_t)ri->content_length)))
        return -2;
    return 0;
}

/* The TLS client chain as DER, leaf first (ders freed by the caller). */
static size_t client_chain(const struct mg_request_info *ri, uint8_t **ders, size_t *lens)
{
    X509 *leaf = ri->client_cert != NULL ? ri->client_cert->peer_cert : NULL;
    STACK_OF(X509) *inter = eg_tls_peer_intermediates(leaf);
    size_t n = 0;
    int len;

    if (leaf == NULL || (len = i2d_X509(leaf, &ders[0])) <= 0)
        return 0;
    lens[n++] = (size_t)len;
    for (int i = 0; i < sk_X509_num(inter) && n < MAX_CHAIN; i++) {
        ders[n] = NULL;
        if ((len = i2d_X509(sk_X509_value(inter, i), &ders[n])) <= 0)
            break;
        lens[n++] = (size_t)len;
    }
    return n;
}

/* Whether listener l is served through a relay (an IPv6 address, and civetweb without IPv6). */
static bool relayed(const eg_listener_cfg *l)
{
    return strchr(l->address, ':') != NULL && !mg_check_feature(MG_FEATURES_IPV6);
}

/* The device behind a connection from remote (address and port) to local_port, when it came
   through a relay: its address into addr and its port; false if it did not. */
static bool relayed_peer(eg_server *s, const char *remote, unsigned remote_port,
                         unsigned local_port, char *addr, size_t cap, unsigned *port)
{
    if (strcmp(remote, "127.0.0.1") != 0)
        return false;
    for (size_t i = 0; i < EG_MAX_LISTENERS; i++) {
        if (s->relays[i] != NULL &&
            eg_relay_peer(s->relays[i], local_port, remote_port, addr, cap, port))
            return true;
    }
    return false;
}

/* Room for the decoded path: an EST path is far shorter, a longer one matches no route. */
#define PATH_LEN 512

/* The device at the other end of conn: "ADDR:PORT" into peer, the address alone into source. */
static void conn_peer(const struct mg_connection *conn, eg_server *s, char *peer, size_t plen,
                      char *source, size_t slen)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    unsigned port = (unsigned)ri->remote_port;

    if (!relayed_peer(s, ri->remote_addr, port, (unsigned)ri->server_port, source, slen, &port))
        snprintf(source, slen, "%s", ri->remote_addr);
    eg_host_port(source, port, peer, plen);
}

/*
 * peer ("ADDR:PORT"), source (the address alone) and path (PATH_LEN, the decoded path) are the
 * caller's buffers.
 */
static void fill_request(struct mg_connection *conn, eg_server *s, eg_http_req *req, char *peer,
                         size_t plen, char *source, size_t slen, char *path)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *raw = ri->local_uri;

    conn_peer(conn, s, peer, plen, source, slen);
    req->method = ri->request_method;
    req->path =
        raw != NULL && mg_url_decode(raw, (int)strlen(raw), path, PATH_LEN, 0) >= 0 ? path : NULL;
    req->content_type = mg_get_header(conn, "Content-Type");
    req->content_transfer_encoding = mg_get_header(conn, "Content-Transfer-Encoding");
    req->authorization = mg_get_header(conn, "Authorization");
    req->peer = peer;
    req->source = source;
}

/* 1*DIGIT, then optional trailing whitespace (civetweb has skipped the leading). */
static bool all_digits(const char *v)
{
    size_t n = strspn(v, "0123456789");

    return n > 0 && v[n + strspn(v + n, " \t")] == '\0';
}

/*
 * Where the body ends, as civetweb 1.15 would find it, must be the only reading a proxy in front
 * could make (request smuggling, RFC 9112 6.3 and 11.2). civetweb takes the first of two
 * Content-Length fields, reads "4 4", "+4" and "0x10" as numbers, and ends the header block at
 * a folded line, dropping a Content-Length after it; the rest of the body is then read as the
 * next request. So: one Content-Length of digits only, or one Transfer-Encoding: chunked, never
 * both, and a POST has one of them. NULL when the framing is sound; else the reason and status.
 */
/*
 * Whether civetweb stopped reading the header block before its end, silently dropping the rest:
 * at a folded line (obs-fold, a line that starts with a space or tab) and after MG_MAX_HEADERS
 * fields. A Content-Length or Transfer-Encoding among the dropped lines would frame the request
 * differently for a proxy in front that reads them (request smuggling). civetweb 1.15 parses
 * the block in place, turning each field's line end into NULs, so the octets after the last
 * field's value are its line end and then the next line: the empty one that ends the block
 * unless something was dropped. ' ' or '\t' there: a fold; '\0': the last field's CR and LF.
 * test_e2e checks this against civetweb with each case.
 */
static int dropped_header_line(const struct mg_request_info *ri)
{
    const char *p;
    int i;

    if (ri->num_headers <= 0)
        return 0; /* nothing to anchor on; HTTP/1.1 needs Host (framing_error) */
    p = ri->http_headers[ri->num_headers - 1].value;
    p += strlen(p);
    for (i = 0; i < 2 && *p == '\0'; i++)
        p++;
    if (*p == '\r' || *p == '\n')
        return 0;
    return *p == ' ' || *p == '\t' ? 400 : 431;
}

static const char *framing_error(const struct mg_request_info *ri, int *status)
{
    const char *cl = NULL, *te = NULL;
    int ncl = 0, nte = 0, host = 0; /* civetweb's mg_get_header gives a name's first field only */
    bool http10 = ri->http_version != NULL && strcmp(ri->http_version, "1.0") == 0;

    for (int i = 0; i < ri->num_headers; i++) {
        if (strcasecmp(ri->http_headers[i].name, "Content-Length") == 0) {
            cl = ri->http_headers[i].value;
            ncl++;
        } else if (strcasecmp(ri->http_headers[i].name, "Transfer-Encoding") == 0) {
            te = ri->http_headers[i].value;
            nte++;
        } else if (strcasecmp(ri->http_headers[i].name, "Host") == 0) {
            host++;
        }
    }
    if ((*status = dropped_header_line(ri)) == 400)
        return "a folded header line (obs-fold, RFC 9112 5.2); send each field on one line";
    if (*status == 431)
        return "too many header fields";
    *status = 400;
    if (!http10 && host != 1)
        return "an HTTP/1.1 request needs exactly one Host header (RFC 9112 3.2)";
    if (http10 && nte > 0)
        return "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)";
    if (ncl > 0 && nte > 0)
        return "request has both Content-Length and Transfer-Encoding";
    if (ncl > 1)
        return "request has more than one Content-Length";
    if (nte > 1)
        return "request has more than one Transfer-Encoding";
    if (cl != NULL && !all_digits(cl))
        return "Content-Length is not a number";
    if (te != NULL && strcasecmp(te, "chunked") != 0)
        return "Transfer-Encoding other than chunked";
    if (cl == NULL && te == NULL && strcmp(ri->request_method, "POST") == 0) {
        *status = 411;
        return "a POST needs a Content-Length or Transfer-Encoding: chunked";
    }
    return NULL;
}

static unsigned request_timeout_ms(const eg_server *srv)
{
    return srv->cfg->request_timeout_ms ? srv->cfg->request_timeout_ms : 10000;
}

/*
 * Decoded, ".../est/ica%2Fcacerts" would be served as ".../est/ica/cacerts": a label and an
 * operation where a proxy, a filter or a log in front saw one segment. civetweb is told not to
 * decode the path (it keeps no raw copy), and the path as it came must not carry an encoded
 * slash.
 */
static bool encoded_slash(const struct mg_request_info *ri)
{
    return ri->local_uri != NULL &&
           (strstr(ri->local_uri, "%2f") != NULL || strstr(ri->local_uri, "%2F") != NULL);
}

static int serve(struct mg_connection *conn, eg_server *srv)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    eg_http_req req = {0};
    eg_http_resp resp = {0};
    uint8_t *ders[MAX_CHAIN] = {NULL}, *body = NULL;
    size_t lens[MAX_CHAIN], body_len = 0;
    char peer[80], source[SOURCE_LEN], path[PATH_LEN];
    const eg_tls_binding *binding;
    const char *why;
    bool over = false;
    int status;

    fill_request(conn, srv, &req, peer, sizeof(peer), source, sizeof(source), path);
    if ((why = framing_error(ri, &status)) != NULL)
        return refuse(conn, srv, &req, status, EG_AUDIT_LIMIT, why, NULL);
    if (encoded_slash(ri))
        return refuse(conn, srv, &req, 404, EG_AUDIT_MALFORMED,
                      "no such EST resource: the path has an encoded slash (%2F); EST paths are "
                      "/.well-known/est/[label/]operation, with the slashes as they are",
                      NULL);
    status = read_body(conn, srv->cfg->max_body, request_timeout_ms(srv), &body, &body_len, &over);
    if (status == -3) {
        char slow[160];

        free(body);
        snprintf(slow, sizeof(slow),
                 "the request body did not arrive within %u ms (request_timeout_ms): %zu octets "
                 "came",
                 request_timeout_ms(srv), body_len);
        return refuse(conn, srv, &req, 408, EG_AUDIT_LIMIT, slow, NULL);
    }
    if (status == -2) {
        char short_body[200];

        free(body);
        if (ri->content_length >= 0)
            snprintf(short_body, sizeof(short_body),
                     "the request body ended after %zu of the %lld octets its Content-Length "
                     "announced",
                     body_len, (long long)ri->content_length);
        else
            snprintf(short_body, sizeof(short_body),
                     "the chunked request body could not be read to its last chunk (it ended "
                     "early, or a chunk-size line has an extension, ';...', which is not "
                     "supported)");
        return refuse(conn, srv, &req, 400, EG_AUDIT_MALFORMED, short_body, NULL);
    }
    if (status != 0)
        return refuse(conn, srv, &req, 500, EG_AUDIT_INTERNAL, "out of memory", NULL);
    if (over) {
        /* read_body sent a 100 Continue only when it began to read (no Content-Length over the
           limit), and then it leaves a buffer */
        bool sent_continue = body != NULL;

        free(body);
        status = refuse(conn, srv, &req, 413, EG_AUDIT_LIMIT, "request body too large", NULL);
        drain_body(conn, sent_continue);
        return status;
    }
    req.body = body;
    req.body_len = body_len;
    req.n_client_certs = client_chain(ri, ders, lens);
    req.client_certs = (const uint8_t *const *)ders;
    req.client_cert_lens = lens;
    if ((binding = eg_tls_thread_binding(ri->remote_addr, (unsigned)ri->remote_port)) != NULL) {
        req.channel_binding_type = binding->type;
        req.channel_binding = binding->data;
        req.channel_binding_len = binding->len;
        req.tls_resumed = binding->resumed;
    }
    eg_est_handle(srv->est, &req, &resp);
    /* After a chunked body civetweb may leave its trailer fields unread, and would take them for
       the next request: the connection ends with this answer. */
    send_response(conn, &resp,
                  atomic_load(&srv->draining) || mg_get_header(conn, "Transfer-Encoding") != NULL);
    status = resp.status;
    eg_http_resp_clear(&resp);
    for (size_t i = 0; i < req.n_client_certs; i++)
        OPENSSL_free(ders[i]);
    free(body);
    return status;
}

/* A request that arrives once the daemon is stopping: try again, elsewhere or later. */
static int refuse_stopping(struct mg_connection *conn, eg_server *srv)
{
    eg_http_req req = {0};
    char peer[80], source[SOURCE_LEN], path[PATH_LEN];

    fill_request(conn, srv, &req, peer, sizeof(peer), source, sizeof(source), path);
    return refuse(conn, srv, &req, 503, EG_AUDIT_UNAVAILABLE,
                  "estgated is stopping; try again shortly", "5");
}

/*
 * Counted before draining is read, so that eg_server_drain, which sets draining and then waits
 * for the count to reach 0, never misses a request that will still write.
 */
static int on_request(struct mg_connection *conn)
{
    eg_server *srv = ((group *)mg_get_request_info(conn)->user_data)->srv;
    int status;

    atomic_fetch_add(&srv->inflight, 1);
    status = atomic_load(&srv->draining) ? refuse_stopping(conn, srv) : serve(conn, srv);
    atomic_fetch_sub(&srv->inflight, 1);
    return status;
}

/*
 * Debian's civetweb 1.15 dlopen()s "libssl.so" and looks its functions up by
 * name into a table in its data segment. OpenSSL 3 has no symbol
 * SSL_get_peer_certificate (it is a macro for SSL_get1_peer_certificate), so
 * that slot stays NULL and civetweb calls NULL after every TLS handshake
 * (upstream civetweb issue #1334). We find the table entry by its name
 * pointer and fill it with eg_tls_handshake_done, which also notes the
 * connection's channel binding; the SSL_free entry tells the entry's layout
 * and proves that civetweb's libssl is the very copy we link.
 */
typedef struct table_scan {
    uintptr_t *free_slot; /* the SSL_free entry's function slot */
    uintptr_t *peer_slot; /* the SSL_get_peer_certificate entry's, same offset */
} table_scan;

static bool in_segment(const struct dl_phdr_info *info, uintptr_t p, size_t len, bool writable)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;

        if (ph->p_type == PT_LOAD && ((ph->p_flags & PF_W) != 0) == writable && p >= lo &&
            p + len <= lo + ph->p_memsz)
            return true;
    }
    return false;
}

/* Whether word w points to the NUL-terminated string name in a read-only segment. */
static bool names(const struct dl_phdr_info *info, uintptr_t w, const char *name)
{
    size_t n = strlen(name) + 1;

    return w != 0 && in_segment(info, w, n, false) && memcmp((const char *)w, name, n) == 0;
}

static void scan_segment(const struct dl_phdr_info *info, const ElfW(Phdr) * ph, table_scan *t)
{
    uintptr_t *w = (uintptr_t *)(info->dlpi_addr + ph->p_vaddr);
    size_t n = ph->p_memsz / sizeof(uintptr_t), k = 0;

    for (size_t i = 0; i + 2 < n && k == 0; i++) {
        if (!names(info, w[i], "SSL_free"))
            continue;
        for (size_t j = 1; j <= 2 && k == 0; j++) {
            if (w[i + j] == (uintptr_t)SSL_free) {
                k = j;
                t->free_slot = &w[i + j];
            }
        }
    }
    for (size_t i = 0; k != 0 && i + k < n; i++)
        if (names(info, w[i], "SSL_get_peer_certificate"))
            t->peer_slot = &w[i + k];
}

static int scan_civetweb(struct dl_phdr_info *info, size_t size, void *arg)
{
    if (info->dlpi_name == NULL || strstr(info->dlpi_name, "libcivetweb.so") == NULL)
        return 0;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD && (info->dlpi_phdr[i].p_flags & PF_W))
            scan_segment(info, &info->dlpi_phdr[i], arg);
    return 1;
}

static int civetweb_fix_openssl3(void)
{
    table_scan t = {NULL, NULL};

    dl_iterate_phdr(scan_civetweb, &t);
    if (t.free_slot == NULL) {
        fprintf(stderr, "estgated: civetweb does not use the libssl.so.3 we link\n");
        return -1;
    }
    /* Ours in any case: it also notes each connection's channel binding (tls.h). */
    if (t.peer_slot != NULL)
        *t.peer_slot = (uintptr_t)eg_tls_handshake_done;
    if (t.peer_slot == NULL) {
        fprintf(stderr, "estgated: civetweb has no SSL_get_peer_certificate\n");
        return -1;
    }
    return 0;
}

/* What an operator can do about a failed handshake, from OpenSSL's reason; "" if nothing. */
static const char *handshake_hint(const char *message, bool tls12)
{
    if (strstr(message, "unsupported protocol") != NULL)
        return tls12 ? "; the device offers neither TLS 1.2 nor 1.3"
                     : "; the device offers no TLS 1.3: a device that speaks only TLS 1.2 needs "
                       "a listener with tls12";
    /* On a TLS 1.3-only listener, the TLS 1.3 suites (OpenSSL's defaults); with tls12, the device
       may have spoken either. A TLS 1.2 ECDSA key also needs its curve among the device's
       groups, which OpenSSL reports as no shared cipher too. */
    if (strstr(message, "no shared cipher") != NULL)
        return tls12 ? "; no cipher suite in common: TLS 1.3 here is AES-GCM or "
                       "ChaCha20-Poly1305 (no CCM); TLS 1.2 is ECDHE with AES-GCM or "
                       "ChaCha20-Poly1305, signed with the TLS key's type, whose curve (for an "
                       "EC key) must be among the groups the device offers"
                     : "; no TLS 1.3 cipher suite in common: this listener speaks TLS 1.3 only, "
                       "with AES-GCM or ChaCha20-Poly1305 (no CCM)";
    if (strstr(message, "certificate expired") != NULL)
        return "; the device finds the appliance's TLS certificate expired or not yet valid: is "
               "the device's clock set, and is the certificate current?";
    if (strstr(message, "unknown ca") != NULL || strstr(message, "bad certificate") != NULL ||
        strstr(message, "certificate unknown") != NULL)
        return "; the device does not accept the appliance's TLS certificate: does it trust the "
               "CA that issued it, and is its clock set?";
    if (strstr(message, "estgate signer") != NULL)
        return "; the TLS key's token did not sign this handshake: new connections fail until it "
               "answers (those already open, and resumed sessions, are still served)";
    if (strstr(message, "SSL syscall error") != NULL)
        return "; the device closed the connection in the handshake (some stacks do so, without "
               "an alert, when they do not trust the appliance's TLS certificate)";
    return "";
}

/*
 * civetweb's own messages. A peer that connects and closes without a TLS handshake (a load
 * balancer's TCP check, a port scan) makes a "sslize error: ... unexpected eof" each time: that
 * is for debug only. Other handshake failures (no TLS version or cipher in common, a device that
 * does not trust the server's CA, a device that hangs up) say why a device cannot connect and
 * stay; once the device's ClientHello was read they name its address and what to do.
 */
static int log_message(const struct mg_connection *conn, const char *message)
{
    char source[SOURCE_LEN], device[SOURCE_LEN], peer[SOURCE_LEN + 8], detail[256];
    unsigned port, local_port;
    bool known;
    group *g;

    if ((strstr(message, "sslize error") == NULL && strstr(message, "SSL syscall error") == NULL) ||
        conn == NULL) {
        fprintf(stderr, "estgated web: %s\n", message);
        return 1;
    }
    /* civetweb has no request yet: the device is the socket's peer, noted at its ClientHello. */
    known = eg_tls_failed_peer(source, sizeof(source), &port, &local_port);
    if (eg_log_get_level() != EG_LOG_DEBUG && strstr(message, "unexpected eof") != NULL)
        return 1;
    g = mg_get_user_data(mg_get_context(conn));
    if (!known || g == NULL) {
        fprintf(stderr, "estgated web: %s\n", message);
        return 1;
    }
    if (!relayed_peer(g->srv, source, port, local_port, device, sizeof(device), &port))
        snprintf(device, sizeof(device), "%s", source);
    /* A handshake that failed in the token (its TLS key's signature): the call and its CK_RV,
       which civetweb's line leaves out. */
    detail[0] = '\0';
    if (strstr(message, "estgate signer") != NULL)
        eg_signer_last_detail(detail, sizeof(detail));
    fprintf(stderr, "estgated web: %s%s%s%s, from %s%s\n", message, detail[0] ? " (" : "", detail,
            detail[0] ? ")" : "", eg_host_port(device, port, peer, sizeof(peer)),
            handshake_hint(message, g == &g->srv->groups[1]));
    return 1;
}

/*
 * civetweb's own refusals, of requests it would not hand to on_request (a request line or
 * header it cannot parse, HTTP/9.9, an unknown method, a header block over its limit, a request
 * that does not arrive in time): one audit event each, as ours have, and civetweb's answer
 * (return 1). Ours never come here: they are written by send_response, not mg_send_http_error.
 */
static int http_error(struct mg_connection *conn, int status, const char *errmsg)
{
    group *g = mg_get_user_data(mg_get_context(conn));
    char peer[80], source[SOURCE_LEN], reason[200];
    eg_http_req req = {0};
    bool limit = status == 408 || status == 413 || status == 414 || status == 431;

    if (g == NULL)
        return 1;
    /* Only the peer: what civetweb parsed of the request may be half there. */
    conn_peer(conn, g->srv, peer, sizeof(peer), source, sizeof(source));
    req.peer = peer;
    req.source = source;
    /* errmsg may quote the request; the audit line and row escape what is not printable. */
    snprintf(reason, sizeof(reason), "%d from the HTTP parser: %s", status,
             errmsg != NULL && errmsg[0] != '\0' ? errmsg : "(no message)");
    eg_est_audit(g->srv->est, &req, limit ? EG_AUDIT_LIMIT : EG_AUDIT_MALFORMED, reason);
    return 1;
}

/* "127.0.0.1:8443s,[::]:8443s" for the group's listeners; a relayed one's port is a free
   loopback port, which its relay connects to. */
static void group_ports(const eg_server *s, const group *g, char *buf, size_t len)
{
    size_t o = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < g->n && o < len; i++) {
        const eg_listener_cfg *l = &s->cfg->listeners[g->listeners[i]];
        char hp[80];

        /* civetweb's "s": a TLS port */
        o += (size_t)snprintf(buf + o, len - o, "%s%ss", i ? "," : "",
                              relayed(l) ? "127.0.0.1:0"
                                         : eg_host_port(l->address, l->port, hp, sizeof(hp)));
    }
}

/* civetweb's listening ports end in an 's' for TLS ("127.0.0.1:8443s"), in its option and in
   its messages: not part of an address as the operator wrote it. */
static void without_tls_marks(char *text)
{
    char *to = text;

    for (const char *from = text;; from++) {
        if (*from == 's' && from > text && from[-1] >= '0' && from[-1] <= '9' &&
            (from[1] == ',' || from[1] == ':' || from[1] == '\0'))
            continue;
        if ((*to++ = *from) == '\0')
            break;
    }
}

/* Starts the relay of each of g's relayed listeners, once civetweb listens on its port. */
static int group_relays(eg_server *s, const group *g)
{
    unsigned ka = s->cfg->keepalive_ms,
             rt = s->cfg->request_timeout_ms ? s->cfg->request_timeout_ms : 10000;
    /* civetweb closes a silent connection sooner; this is for one whose request the token is
       still working on, when no byte moves */
    unsigned idle_ms = 2 * (ka + rt) > 300000 ? 2 * (ka + rt) : 300000;
    char why[256];

    for (size_t i = 0; i < g->n; i++) {
        size_t idx = g->listeners[i];
        const eg_listener_cfg *l = &s->cfg->listeners[idx];

        if (!relayed(l))
            continue;
        /* ports[idx] is civetweb's loopback port until the relay's own replaces it */
        if (eg_relay_start(l->address, l->port, s->ports[idx],
                           s->cfg->threads ? s->cfg->threads : 4, idle_ms, &s->relays[idx], why,
                           sizeof(why)) != 0) {
            fprintf(stderr, "estgated: %s\n", why);
            return -1;
        }
        s->ports[idx] = eg_relay_port(s->relays[idx]);
    }
    return 0;
}

static int group_start(eg_server *s, group *g, EVP_PKEY *key, bool tls12)
{
    static const struct mg_callbacks callbacks = {
        .begin_request = on_request,
        .log_message = log_message,
        .http_error = http_error,
        .external_ssl_ctx = external_ssl_ctx,
    };
    struct mg_server_port ports[EG_MAX_LISTENERS];
    char listen[PORTS_LEN], threads[16], keepalive[16], timeout[16], why[256] = "";
    const char *options[] = {
        "listening_ports",
        listen,
        "num_threads",
        threads,
        "enable_keep_alive",
        "yes",
        "keep_alive_timeout_ms",
        keepalive,
        /* also the TLS handshake's: a socket that says nothing holds a thread this long */
        "request_timeout_ms",
        timeout,
        /* civetweb's own answers (400s of its parser) go out as two writes:
           without this, Nagle holds the second until the client's delayed ACK. */
        "tcp_nodelay",
        "1",
        /* An absolute-form target (GET https://host/.well-known/est/cacerts, RFC 9112 3.2.2, which
           servers must accept) is matched against civetweb's authentication domain, which estgated
           has none of: the connection was dropped without an answer. */
        "enable_auth_domain_check",
        "no",
        /* fill_request decodes the path, once estgated has seen it as it came (encoded_slash). */
        "decode_url",
        "no",
        NULL,
    };
    struct mg_error_data err = {.text = why, .text_buffer_size = sizeof(why)};
    struct mg_init_data init = {
        .callbacks = &callbacks, .user_data = g, .configuration_options = options};
    int n;

    if ((g->ssl = eg_tls_ctx_new(s->cfg, key, tls12, s->ca_names, s->tickets, why, sizeof(why))) ==
        NULL)
        goto fail;
    group_ports(s, g, listen, sizeof(listen));
    snprintf(threads, sizeof(threads), "%u", s->cfg->threads ? s->cfg->threads : 4);
    snprintf(keepalive, sizeof(keepalive), "%u", s->cfg->keepalive_ms);
    snprintf(timeout, sizeof(timeout), "%u",
             s->cfg->request_timeout_ms ? s->cfg->request_timeout_ms : 10000);
    if ((g->mg = mg_start2(&init, &err)) == NULL)
        goto fail;
    /* Starting may have reloaded civetweb's table of OpenSSL functions. */
    if (civetweb_fix_openssl3() != 0)
        goto fail;
    n = mg_get_server_ports(g->mg, EG_MAX_LISTENERS, ports);
    for (int i = 0; i < n && (size_t)i < g->n; i++)
        s->ports[g->listeners[i]] = (unsigned)ports[i].port;
    return group_relays(s, g);
fail:
    without_tls_marks(listen);
    without_tls_marks(why);
    fprintf(stderr, "estgated: cannot listen on %s: %s\n", listen, why);
    eg_err_print(stderr);
    return -1;
}

static pthread_once_t library_once = PTHREAD_ONCE_INIT;
static int library_rc = -1;

static void library_init(void)
{
    /* civetweb's TLS set-up dlopen()s "libssl.so": the same libssl.so.3 we link.
       Debian's 1.15 reports failure here for the one missing function, having
       loaded all others; civetweb_fix_openssl3 checks and completes the table. */
    mg_init_library(MG_FEATURES_TLS | MG_FEATURES_IPV6);
    library_rc = civetweb_fix_openssl3();
}

int eg_server_start(const eg_config *cfg, eg_est *est, EVP_PKEY *tls_key, eg_server **out)
{
    eg_server *s = calloc(1, sizeof(*s));
    char why[256];
    int rc = -1;

    if (s == NULL)
        return -1;
    atomic_init(&s->inflight, 0);
    atomic_init(&s->draining, false);
    pthread_once(&library_once, library_init);
    if (library_rc != 0)
        goto out;
    s->cfg = cfg;
    s->est = est;
    if ((s->ca_names = eg_tls_ca_names_new()) == NULL ||
        (s->tickets = eg_tls_tickets_new()) == NULL)
        goto out;
    if (eg_tls_ca_names_set(s->ca_names, cfg, why, sizeof(why)) != 0) {
        fprintf(stderr, "estgated: %s\n", why);
        goto out;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        group *g = &s->groups[cfg->listeners[i].allow_tls12 ? 1 : 0];

        g->listeners[g->n++] = i;
    }
    for (int i = 0; i < GROUPS; i++) {
        s->groups[i].srv = s;
        if (s->groups[i].n > 0 && group_start(s, &s->groups[i], tls_key, i == 1) != 0)
            goto out;
    }
    *out = s;
    s = NULL;
    rc = 0;
out:
    eg_server_stop(s);
    return rc;
}

unsigned eg_server_drain(eg_server *s, unsigned max_ms)
{
    unsigned waited = 0, left;

    if (s == NULL)
        return 0;
    atomic_store(&s->draining, true);
    while ((left = atomic_load(&s->inflight)) > 0 && waited < max_ms) {
        usleep(10000);
        waited += 10;
    }
    return left;
}

void eg_server_stop(eg_server *s)
{
    if (s == NULL)
        return;
    /* The relayed connections first: civetweb's threads then see them end. */
    for (size_t i = 0; i < EG_MAX_LISTENERS; i++)
        eg_relay_stop(s->relays[i]);
    for (int i = 0; i < GROUPS; i++) {
        if (s->groups[i].mg != NULL)
            mg_stop(s->groups[i].mg);
        SSL_CTX_free(s->groups[i].ssl);
    }
    eg_tls_ca_names_free(s->ca_names);
    eg_tls_tickets_free(s->tickets);
    free(s);
}

int eg_server_reload(eg_server *s, const eg_config *cfg)
{
    char why[256];

    if (eg_tls_ca_names_set(s->ca_names, cfg, why, sizeof(why)) != 0) {
        fprintf(stderr, "estgated: reload: %s\n", why);
        return -1;
    }
    return 0;
}

struct eg_server_tls {
    SSL_CTX *next[GROUPS];
};

eg_server_tls *eg_server_tls_prepare(eg_server *s, const eg_config *cfg, EVP_PKEY *key)
{
    eg_server_tls *t = calloc(1, sizeof(*t));
    char why[256];

    if (t == NULL)
        return NULL;
    for (int i = 0; i < GROUPS; i++) {
        if (s->groups[i].mg == NULL)
            continue;
        t->next[i] = eg_tls_ctx_new(cfg, key, i == 1, s->ca_names, s->tickets, why, sizeof(why));
        if (t->next[i] == NULL) {
            fprintf(stderr, "estgated: reload: %s\n", why);
            eg_err_print(stderr);
            eg_server_tls_discard(t);
            return NULL;
        }
    }
    return t;
}

void eg_server_tls_commit(eg_server *s, eg_server_tls *t)
{
    for (int i = 0; i < GROUPS; i++) {
        if (t->next[i] != NULL)
            eg_tls_ctx_switch(s->groups[i].ssl, t->next[i]);
    }
    free(t);
}

void eg_server_tls_discard(eg_server_tls *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < GROUPS; i++)
        SSL_CTX_free(t->next[i]);
    free(t);
}

int eg_server_tick(eg_server *s, time_t now)
{
    return eg_tls_tickets_tick(s->tickets, now);
}

unsigned eg_server_port(const eg_server *s, size_t i)
{
    return i < EG_MAX_LISTENERS ? s->ports[i] : 0;
}
