/*
 * The HTTPS front end with its TLS key in a token: TLS 1.3 handshakes succeed
 * and are signed by the token, TLS 1.2 only where a listener allows it,
 * requests with both Content-Length and Transfer-Encoding and oversized
 * bodies are refused, keep-alive serves several requests per handshake, and
 * session tickets stop resuming once their key has been replaced twice, and a
 * reload's new TLS key and chain serve new handshakes.
 * Real OpenSSL clients on real sockets against ephemeral ports.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "clock.h"
#include "est.h"
#include "p11.h"
#include "provider.h"
#include "server.h"
#include "tls.h"
#include "token_harness.h"

#define MAX_BODY 10000 /* above read_body's first 4 KiB, so a chunked body makes it grow */

static eg_th_kind kind;
static eg_th *th;
static eg_token *tok;
static eg_p11_key *tls_p11;
static EVP_PKEY *tls_key, *ca_key;
static X509 *ca_cert;
static eg_config cfg;
static eg_est *est;
static eg_server *srv;
static char chain_file[512];

static X509 *make_cert(const char *cn, EVP_PKEY *pub, X509 *issuer, EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    X509V3_CTX v3;
    X509_EXTENSION *ext = NULL;
    bool ok;

    ok = x && name && X509_set_version(x, X509_VERSION_3) &&
         ASN1_INTEGER_set(X509_get_serialNumber(x), issuer ? 2 : 1) &&
         X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                    0) &&
         X509_set_subject_name(x, name) &&
         X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name) &&
         X509_gmtime_adj(X509_getm_notBefore(x), -60) &&
         X509_gmtime_adj(X509_getm_notAfter(x), 3600) && X509_set_pubkey(x, pub);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    ok = ok &&
         (ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints,
                                    issuer ? "critical,CA:FALSE" : "critical,CA:TRUE")) &&
         X509_add_ext(x, ext, -1) && X509_sign(x, issuer_key, EVP_sha256());
    X509_EXTENSION_free(ext);
    X509_NAME_free(name);
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* A software CA signs a certificate for the token's TLS key; chain file = leaf, CA. */
static int make_tls_identity(void)
{
    eg_keygen_spec spec = {EG_KEY_EC, 0, NID_X9_62_prime256v1, "web-tls", NULL, 0, true, false};
    EVP_PKEY *pub = NULL;
    X509 *leaf = NULL;
    FILE *fp = NULL;
    int rc = -1;

    if (eg_p11_key_generate(tok, &spec, &tls_p11) != 0 ||
        eg_provider_key_pkey(NULL, tls_p11, &tls_key) != 0 ||
        (pub = eg_p11_key_public(tls_p11)) == NULL ||
        (ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")) == NULL ||
        (ca_cert = make_cert("web test CA", ca_key, NULL, ca_key)) == NULL ||
        (leaf = make_cert("127.0.0.1", pub, ca_cert, ca_key)) == NULL)
        goto out;
    snprintf(chain_file, sizeof(chain_file), "%s/tls-chain.pem", eg_th_dir(th));
    if ((fp = fopen(chain_file, "w")) == NULL || !PEM_write_X509(fp, leaf) ||
        !PEM_write_X509(fp, ca_cert))
        goto out;
    rc = 0;
out:
    if (fp != NULL)
        fclose(fp);
    X509_free(leaf);
    EVP_PKEY_free(pub);
    return rc;
}

static int suite_init(void)
{
    eg_profile_cfg *p = &cfg.profiles[0];

    if (eg_th_create(kind, "web", &th) != 0 || eg_token_open(eg_th_config(th), &tok) != 0 ||
        eg_provider_init(NULL) != 0 || eg_provider_add_token(NULL, tok) != 0 ||
        make_tls_identity() != 0) {
        ERR_print_errors_fp(stderr);
        return -1;
    }
    cfg.listeners[0] = (eg_listener_cfg){"127.0.0.1", 0, false};
    cfg.listeners[1] = (eg_listener_cfg){"127.0.0.1", 0, true};
    cfg.nlisteners = 2;
    cfg.tls_chain_file = chain_file;
    cfg.tls_key_uri = (char *)"pkcs11:object=web-tls";
    cfg.max_body = MAX_BODY;
    cfg.threads = 4;
    cfg.keepalive_ms = 5000;
    cfg.request_timeout_ms = 1000;
    p->name = (char *)"default";
    p->label = (char *)"";
    p->auth = EG_AUTH_NONE;
    cfg.nprofiles = 1;
    if (eg_est_new(&cfg, NULL, &est) != 0 || eg_server_start(&cfg, est, tls_key, &srv) != 0)
        return -1;
    return eg_server_port(srv, 0) != 0 && eg_server_port(srv, 1) != 0 ? 0 : -1;
}

static int suite_clean(void)
{
    eg_server_stop(srv);
    eg_est_free(est);
    EVP_PKEY_free(tls_key);
    EVP_PKEY_free(ca_key);
    X509_free(ca_cert);
    eg_p11_key_free(tls_p11);
    if (tok != NULL)
        eg_provider_remove_token(NULL, tok);
    eg_token_free(tok);
    eg_th_destroy(th);
    return 0;
}

static uint64_t sign_calls(void)
{
    eg_token_stats st;

    eg_token_get_stats(tok, &st);
    return st.sign_calls;
}

typedef struct client {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
} client;

static void client_close(client *c)
{
    if (c->ssl != NULL)
        SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

/* A TLS client of at most max_version that verifies the server against the test CA and offers
   the session offer (NULL: none). */
static int client_resume(client *c, size_t listener, int max_version, SSL_SESSION *offer)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};

    memset(c, 0, sizeof(*c));
    sa.sin_port = htons((uint16_t)eg_server_port(srv, listener));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 30}; /* a server that never answers fails the test */

    if ((c->fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        (c->ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
        !SSL_CTX_set_max_proto_version(c->ctx, max_version) ||
        !X509_STORE_add_cert(SSL_CTX_get_cert_store(c->ctx), ca_cert))
        return -1;
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    if ((c->ssl = SSL_new(c->ctx)) == NULL || !SSL_set_fd(c->ssl, c->fd) ||
        (offer != NULL && !SSL_set_session(c->ssl, offer)) || SSL_connect(c->ssl) != 1)
        return -1;
    return 0;
}

static int client_open(client *c, size_t listener, int max_version)
{
    return client_resume(c, listener, max_version, NULL);
}

static int send_all(client *c, const char *data, size_t len)
{
    size_t n = 0;
    int w;

    while (n < len && (w = SSL_write(c->ssl, data + n, (int)(len - n))) > 0)
        n += (size_t)w;
    return n == len ? 0 : -1;
}

/* One response: its status, and its body into body (NUL-terminated). */
static int read_response(client *c, char *body, size_t cap)
{
    char buf[8192];
    size_t n = 0, clen = 0;
    char *end = NULL, *cl;
    int r, status = -1;

    while (n < sizeof(buf) - 1) {
        buf[n] = '\0';
        if ((end = strstr(buf, "\r\n\r\n")) != NULL) {
            cl = strcasestr(buf, "\r\nContent-Length:");
            clen = cl != NULL && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
            if ((size_t)(buf + n - (end + 4)) >= clen)
                break;
        }
        if ((r = SSL_read(c->ssl, buf + n, (int)(sizeof(buf) - 1 - n))) <= 0)
            return -1;
        n += (size_t)r;
    }
    /* civetweb answers a request of another HTTP version (505) in that version */
    if (end == NULL || sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1)
        return -1;
    snprintf(body, cap, "%.*s", (int)clen, end + 4);
    return status;
}

static int request(client *c, const char *req, char *body, size_t cap)
{
    return send_all(c, req, strlen(req)) == 0 ? read_response(c, body, cap) : -1;
}

#define GET_FULLCMC "GET /.well-known/est/fullcmc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

/*
 * Requests civetweb refuses itself, before on_request, get its answer and one audit line each,
 * naming the status and the device; a refusal of our own still makes one line, not two.
 */
static void test_requests_civetweb_refuses_are_audited(void)
{
    static const struct {
        const char *req;
        int status;
        const char *event;
    } cases[] = {
        {"GET /.well-known/est/cacerts HTTP/9.9\r\nHost: x\r\n\r\n", 505, "event=malformed"},
        {"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", 400,
         "event=malformed"},
        {"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nX-A: \x01\r\n\r\n", 400,
         "event=malformed"},
        {"BREW /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n\r\n", 400, "event=malformed"},
        /* a header of 20 KB, over civetweb's 16 KB: it says "Malformed message" */
        {NULL, 400, "event=malformed"},
    };
    char body[512], want[64], big[20600], *text;
    client c;

    snprintf(big, sizeof(big),
             "GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nX-Big: %0*d\r\n\r\n", 20480, 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        eg_stderr_capture();
        CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
        CU_ASSERT_EQUAL(request(&c, cases[i].req ? cases[i].req : big, body, sizeof(body)),
                        cases[i].status);
        client_close(&c);
        text = eg_stderr_release();
        CU_ASSERT_PTR_NOT_NULL_FATAL(text);
        snprintf(want, sizeof(want), "reason=\"%d from the HTTP parser: ", cases[i].status);
        CU_ASSERT_EQUAL(eg_text_count(text, "estgated audit "), 1);
        CU_ASSERT_EQUAL(eg_text_count(text, cases[i].event), 1);
        CU_ASSERT_EQUAL(eg_text_count(text, want), 1);
        CU_ASSERT_EQUAL(eg_text_count(text, "peer=127.0.0.1:"), 1);
        if (eg_text_count(text, want) != 1 || eg_text_count(text, cases[i].event) != 1)
            printf("\n  case %zu: log:\n%s\n", i, text);
        free(text);
    }
    /* Our own 405: its one line, and no second from civetweb. */
    eg_stderr_capture();
    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL(request(&c, GET_FULLCMC, body, sizeof(body)), 405);
    client_close(&c);
    text = eg_stderr_release();
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL(eg_text_count(text, "estgated audit "), 1);
    CU_ASSERT_EQUAL(eg_text_count(text, "HTTP parser"), 0);
    free(text);
}

static void test_tls13_handshake_signed_by_token(void)
{
    client c;
    uint64_t before = sign_calls();
    char body[512];

    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL(SSL_version(c.ssl), TLS1_3_VERSION);
    /* The server's CertificateVerify is the only signature of a handshake. */
    CU_ASSERT(sign_calls() > before);
    CU_ASSERT_EQUAL(request(&c, GET_FULLCMC, body, sizeof(body)), 405);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "fullcmc needs POST"));
    client_close(&c);
}

static void test_tls12_refused_by_default(void)
{
    client c;

    CU_ASSERT_NOT_EQUAL(client_open(&c, 0, TLS1_2_VERSION), 0);
    ERR_clear_error();
    client_close(&c);
}

static void test_tls12_on_listener_that_allows_it(void)
{
    client c;
    uint64_t before = sign_calls();
    char body[512];

    CU_ASSERT_EQUAL_FATAL(client_open(&c, 1, TLS1_2_VERSION), 0);
    CU_ASSERT_EQUAL(SSL_version(c.ssl), TLS1_2_VERSION);
    CU_ASSERT_PTR_NOT_NULL(strstr(SSL_get_cipher_name(c.ssl), "ECDHE-ECDSA-"));
    CU_ASSERT(sign_calls() > before);
    CU_ASSERT_EQUAL(request(&c, GET_FULLCMC, body, sizeof(body)), 405);
    client_close(&c);
    /* The same listener still speaks TLS 1.3 to clients that can. */
    CU_ASSERT_EQUAL_FATAL(client_open(&c, 1, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL(SSL_version(c.ssl), TLS1_3_VERSION);
    client_close(&c);
}

static void test_content_length_and_transfer_encoding_refused(void)
{
    client c;
    char body[512];

    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL(request(&c,
                            "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n"
                            "Content-Type: application/pkcs10\r\nContent-Length: 5\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                            body, sizeof(body)),
                    400);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "both Content-Length and Transfer-Encoding"));
    client_close(&c);
}

/* A simpleenroll POST with body as one chunk; 0, or -1 if it does not fit in cap. */
static int chunked_post(char *req, size_t cap, const char *body)
{
    int n = snprintf(req, cap,
                     "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n"
                     "Content-Type: application/pkcs10\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "%zx\r\n%s\r\n0\r\n\r\n",
                     strlen(body), body);

    return n > 0 && (size_t)n < cap ? 0 : -1;
}

static void test_oversized_bodies_refused(void)
{
    client c;
    char req[MAX_BODY + 1024], body[512], chunk[MAX_BODY + 100];

    memset(chunk, 'A', sizeof(chunk) - 1);
    chunk[sizeof(chunk) - 1] = '\0';
    /* Declared too large: refused before reading. */
    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    snprintf(req, sizeof(req),
             "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n"
             "Content-Type: application/pkcs10\r\nContent-Length: %d\r\n\r\n",
             MAX_BODY + 1);
    CU_ASSERT_EQUAL(request(&c, req, body, sizeof(body)), 413);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "too large"));
    client_close(&c);
    /* Chunked: refused once more than the limit has arrived. */
    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_FATAL(chunked_post(req, sizeof(req), chunk) == 0);
    CU_ASSERT_EQUAL(request(&c, req, body, sizeof(body)), 413);
    client_close(&c);
    /* At the limit it is read and handed on (here: garbage, so 400 from the decoder). */
    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    chunk[MAX_BODY] = '\0';
    chunk[7] = '*';
    snprintf(req, sizeof(req),
             "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n"
             "Content-Type: application/pkcs10\r\nContent-Length: %d\r\n\r\n%s",
             MAX_BODY, chunk);
    CU_ASSERT_EQUAL(request(&c, req, body, sizeof(body)), 400);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "invalid character '*' at offset 7"));
    client_close(&c);
    /* Chunked at the limit: read whole, through every growth of the buffer (the decoder
       names the last octet). */
    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    chunk[7] = 'A';
    chunk[MAX_BODY - 1] = '*';
    CU_ASSERT_FATAL(chunked_post(req, sizeof(req), chunk) == 0);
    CU_ASSERT_EQUAL(request(&c, req, body, sizeof(body)), 400);
    snprintf(req, sizeof(req), "invalid character '*' at offset %d", MAX_BODY - 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, req));
    client_close(&c);
}

static void test_keep_alive_two_requests_one_handshake(void)
{
    client c;
    char body[512];
    uint64_t after_handshake;

    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    after_handshake = sign_calls();
    CU_ASSERT_EQUAL(request(&c, GET_FULLCMC, body, sizeof(body)), 405);
    CU_ASSERT_EQUAL(request(&c,
                            "POST /.well-known/est/fullcmc HTTP/1.1\r\nHost: x\r\n"
                            "Content-Length: 0\r\n\r\n",
                            body, sizeof(body)),
                    501);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "full CMC is not supported; use simpleenroll"));
    CU_ASSERT_EQUAL(sign_calls(), after_handshake);
    client_close(&c);
}

/* civetweb decodes %2F before routing: the encoded slash is refused, not read as a slash. */
static void test_an_encoded_slash_in_the_path_is_404(void)
{
    static const char *const paths[] = {"/.well-known%2Fest/fullcmc", "/.well-known/est%2ffullcmc",
                                        "/.well-known/est/x%2Ffullcmc"};
    char req[256], body[512];
    client c;

    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL(request(&c, GET_FULLCMC, body, sizeof(body)), 405); /* the path itself */
    /* Other escapes are decoded as before. */
    CU_ASSERT_EQUAL(request(&c,
                            "GET /.well-known/%65st/fullcm%63 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                            body, sizeof(body)),
                    405);
    client_close(&c);
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        /* The refusal ends its connection. */
        CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", paths[i]);
        body[0] = '\0';
        CU_ASSERT_EQUAL(request(&c, req, body, sizeof(body)), 404);
        CU_ASSERT_PTR_NOT_NULL(strstr(body, "encoded slash"));
        client_close(&c);
    }
}

/*
 * Sockets that connect and never speak hold one civetweb thread each until the handshake times
 * out. With the listener's 4 threads taken and one more socket queued, a device is answered once
 * request_timeout_ms (1 s here) has passed: not at once (the threads were held), and not after
 * the 30 s civetweb was given before, which let 4 idle sockets keep the appliance from serving.
 */
static void test_silent_sockets_hold_threads_only_until_the_timeout(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    struct timespec t0, t1;
    int idle[5];
    double waited;
    char body[512];
    client c;

    sa.sin_port = htons((uint16_t)eg_server_port(srv, 0));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (size_t i = 0; i < 5; i++) {
        idle[i] = socket(AF_INET, SOCK_STREAM, 0);
        CU_ASSERT_FATAL(idle[i] >= 0 && connect(idle[i], (struct sockaddr *)&sa, sizeof(sa)) == 0);
    }
    usleep(200000); /* accepted, and each in a handshake that waits for a ClientHello */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CU_ASSERT_EQUAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    if (c.ssl != NULL)
        CU_ASSERT_EQUAL(request(&c, GET_FULLCMC, body, sizeof(body)), 405);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    client_close(&c);
    waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    fprintf(stderr, "(answered after %.2f s) ", waited);
    CU_ASSERT(waited >= 0.5);
    CU_ASSERT(waited < 8.0);
    for (size_t i = 0; i < 5; i++)
        close(idle[i]);
}

/*
 * A body sent an octet every 300 ms keeps each read within request_timeout_ms (1 s here), and so
 * held its thread for as long as it went on: 64 such clients took a listener. The body as a whole
 * must now come within request_timeout_ms: 408, said, and the connection closed, within a few
 * seconds, where the 1,000 octets announced would have taken five minutes.
 */
static void test_a_trickled_body_gets_408_at_the_timeout(void)
{
    static const char head[] = "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n"
                               "Content-Type: application/pkcs10\r\nContent-Length: 1000\r\n\r\n";
    struct timespec t0, t1;
    struct pollfd p;
    char body[512];
    double waited;
    client c;
    int i;

    signal(SIGPIPE, SIG_IGN);
    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL_FATAL(send_all(&c, head, strlen(head)), 0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    p.fd = c.fd;
    p.events = POLLIN;
    for (i = 0; i < 30; i++) {
        if (send_all(&c, "M", 1) != 0 || poll(&p, 1, 500) != 0)
            break; /* answered (or closed) */
    }
    CU_ASSERT_EQUAL(read_response(&c, body, sizeof(body)), 408);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    fprintf(stderr, "(408 after %.2f s) ", waited);
    CU_ASSERT(waited < 5.0);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "did not arrive within 1000 ms (request_timeout_ms)"));
    client_close(&c);
}

/*
 * Chunked uploads civetweb 1.15 reads only in part: trailer fields after the last chunk, which
 * it left unread and then took for the next request (the request pipelined behind was never
 * answered), so the connection now ends with the answer; and chunk extensions, which it cannot
 * parse, refused with a reason that names them.
 */
static void test_chunked_trailers_and_extensions(void)
{
    static const char trailer[] =
        "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/pkcs10\r\nTransfer-Encoding: chunked\r\n\r\n"
        "4\r\nAAAA\r\n0\r\nX-Trailer: 1\r\n\r\n" GET_FULLCMC;
    static const char extension[] =
        "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/pkcs10\r\nTransfer-Encoding: chunked\r\n\r\n"
        "4;name=value\r\nAAAA\r\n0\r\n\r\n";
    char buf[8192];
    size_t n = 0;
    client c;
    int r;

    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL_FATAL(send_all(&c, trailer, strlen(trailer)), 0);
    while (n < sizeof(buf) - 1 && (r = SSL_read(c.ssl, buf + n, (int)(sizeof(buf) - 1 - n))) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\r\nConnection: close\r\n"));
    CU_ASSERT_PTR_NULL(strstr(buf, "HTTP/1.1 405")); /* the pipelined GET: not taken from the
                                                        trailer's bytes, and not answered */
    client_close(&c);

    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL(request(&c, extension, buf, sizeof(buf)), 400);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "a chunk-size line has an extension"));
    client_close(&c);
}

/* Head and body leave in one write: one SSL_read gets the whole answer (one TLS record). */
static void test_answer_in_one_record(void)
{
    client c;
    char buf[8192];
    int n;

    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL_FATAL(send_all(&c, GET_FULLCMC, strlen(GET_FULLCMC)), 0);
    n = SSL_read(c.ssl, buf, sizeof(buf) - 1);
    CU_ASSERT_FATAL(n > 0);
    buf[n] = '\0';
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "HTTP/1.1 405 "));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\r\nConnection: keep-alive\r\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\r\nDate: "));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\r\n\r\nfullcmc needs POST"));
    client_close(&c);
}

/* An HTTP/1.0 client without keep-alive is told so, and the connection ends after it. */
static void test_http10_connection_closes(void)
{
    static const char req[] = "GET /.well-known/est/fullcmc HTTP/1.0\r\n\r\n";
    client c;
    char buf[8192];
    size_t n = 0;
    int r;

    CU_ASSERT_EQUAL_FATAL(client_open(&c, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL_FATAL(send_all(&c, req, strlen(req)), 0);
    while (n < sizeof(buf) - 1 && (r = SSL_read(c.ssl, buf + n, (int)(sizeof(buf) - 1 - n))) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "HTTP/1.1 405 "));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\r\nConnection: close\r\n"));
    CU_ASSERT(n < sizeof(buf) - 1); /* the read loop ended because the server closed */
    client_close(&c);
}

/*
 * One request on a connection offering offer: whether the server resumed it (1) or made a full
 * handshake (0), or -1; the session to offer next (with the ticket that came with the answer)
 * replaces *next.
 */
static int resumed_request(size_t listener, int max_version, SSL_SESSION *offer, SSL_SESSION **next)
{
    client c;
    char body[512];
    int reused = -1;

    if (client_resume(&c, listener, max_version, offer) == 0 &&
        request(&c, GET_FULLCMC, body, sizeof(body)) == 405) {
        reused = SSL_session_reused(c.ssl);
        SSL_SESSION_free(*next);
        *next = SSL_get1_session(c.ssl);
    }
    client_close(&c);
    return reused;
}

/*
 * A ticket resumes its session, without a signature in the token, until its key has been
 * replaced twice: after one new key it still resumes and a ticket under the new key comes with
 * the answer; after the second, the old ticket gets a full handshake. The ticks carry made-up
 * times, hours apart, as the daemon's every-second tick would after those hours.
 */
static void test_ticket_keys_rotate(void)
{
    static const struct {
        size_t listener;
        int version;
    } cases[] = {{0, TLS1_3_VERSION}, {1, TLS1_2_VERSION}};
    static time_t fake; /* later than any tick before it */
    SSL_SESSION *first = NULL, *renewed = NULL, *unused = NULL;
    uint64_t before;

    if (fake == 0)
        fake = eg_mono_s();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t l = cases[i].listener;
        int v = cases[i].version;

        CU_ASSERT_EQUAL_FATAL(resumed_request(l, v, NULL, &first), 0);
        before = sign_calls();
        CU_ASSERT_EQUAL(resumed_request(l, v, first, &unused), 1);
        CU_ASSERT_EQUAL(sign_calls(), before);
        /* Within the period: the same key. */
        CU_ASSERT_EQUAL(eg_server_tick(srv, fake + 10), 0);
        CU_ASSERT_EQUAL(resumed_request(l, v, first, &unused), 1);
        /* One new key: the old ticket still resumes, and a new ticket comes with the answer. */
        fake += EG_TLS_TICKET_KEY_S + 10;
        CU_ASSERT_EQUAL(eg_server_tick(srv, fake), 0);
        CU_ASSERT_EQUAL(resumed_request(l, v, first, &renewed), 1);
        /* Two: the first key is gone; the renewed ticket still resumes. */
        fake += EG_TLS_TICKET_KEY_S;
        CU_ASSERT_EQUAL(eg_server_tick(srv, fake), 0);
        CU_ASSERT_EQUAL(resumed_request(l, v, first, &unused), 0);
        CU_ASSERT_EQUAL(resumed_request(l, v, renewed, &unused), 1);
        /* Hours without a tick (a suspended machine): neither key is kept. */
        fake += 5 * EG_TLS_TICKET_KEY_S;
        CU_ASSERT_EQUAL(eg_server_tick(srv, fake), 0);
        CU_ASSERT_EQUAL(resumed_request(l, v, renewed, &unused), 0);
        SSL_SESSION_free(first);
        SSL_SESSION_free(renewed);
        SSL_SESSION_free(unused);
        first = renewed = unused = NULL;
    }
}

/* The CN of the certificate the server presented on c. */
static int peer_cn(client *c, char *cn, size_t cap)
{
    X509 *x = SSL_get1_peer_certificate(c->ssl);
    int n =
        x ? X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, (int)cap) : -1;

    X509_free(x);
    return n > 0 ? 0 : -1;
}

/* One handshake on listener l at version v: the CN the server presented, into cn. */
static int handshake_cn(size_t l, int v, char *cn, size_t cap)
{
    client c;
    int rc = client_open(&c, l, v) == 0 ? peer_cn(&c, cn, cap) : -1;

    client_close(&c);
    return rc;
}

/*
 * A reload's new TLS key and chain (a renewed certificate) serve every new handshake on both
 * listeners, while a connection opened before keeps working; a chain that does not match its
 * key changes nothing.
 */
static void test_tls_key_and_chain_replaced_without_a_restart(void)
{
    eg_keygen_spec spec = {EG_KEY_EC, 0, NID_secp384r1, "web-tls-2", NULL, 0, true, false};
    eg_p11_key *p11 = NULL;
    EVP_PKEY *key2 = NULL, *pub = NULL;
    X509 *leaf = NULL;
    char chain2[600], cn[64], body[512];
    eg_config cfg2 = cfg, bad = cfg;
    eg_server_tls *t;
    FILE *fp;
    client old;

    CU_ASSERT_FATAL(eg_p11_key_generate(tok, &spec, &p11) == 0 &&
                    eg_provider_key_pkey(NULL, p11, &key2) == 0 &&
                    (pub = eg_p11_key_public(p11)) != NULL &&
                    (leaf = make_cert("renewed.test", pub, ca_cert, ca_key)) != NULL);
    snprintf(chain2, sizeof(chain2), "%s/tls-chain-2.pem", eg_th_dir(th));
    CU_ASSERT_FATAL((fp = fopen(chain2, "w")) != NULL && PEM_write_X509(fp, leaf) &&
                    PEM_write_X509(fp, ca_cert) && fclose(fp) == 0);
    cfg2.tls_chain_file = chain2;
    cfg2.tls_key_uri = (char *)"pkcs11:object=web-tls-2";

    CU_ASSERT_EQUAL_FATAL(client_open(&old, 0, TLS1_3_VERSION), 0);
    CU_ASSERT_EQUAL(request(&old, GET_FULLCMC, body, sizeof(body)), 405);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t = eg_server_tls_prepare(srv, &cfg2, key2));
    eg_server_tls_commit(srv, t);
    CU_ASSERT(handshake_cn(0, TLS1_3_VERSION, cn, sizeof(cn)) == 0 &&
              strcmp(cn, "renewed.test") == 0);
    CU_ASSERT(handshake_cn(1, TLS1_2_VERSION, cn, sizeof(cn)) == 0 &&
              strcmp(cn, "renewed.test") == 0);
    /* The connection from before: the same certificate, and still served. */
    CU_ASSERT(peer_cn(&old, cn, sizeof(cn)) == 0 && strcmp(cn, "127.0.0.1") == 0);
    CU_ASSERT_EQUAL(request(&old, GET_FULLCMC, body, sizeof(body)), 405);
    client_close(&old);

    /* The first chain with the second key: refused, and the second pair still serves. */
    ERR_set_mark();
    CU_ASSERT_PTR_NULL(eg_server_tls_prepare(srv, &bad, key2));
    ERR_pop_to_mark();
    CU_ASSERT(handshake_cn(0, TLS1_3_VERSION, cn, sizeof(cn)) == 0 &&
              strcmp(cn, "renewed.test") == 0);

    /* Back to the first pair for the tests after this one. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(t = eg_server_tls_prepare(srv, &cfg, tls_key));
    eg_server_tls_commit(srv, t);
    CU_ASSERT(handshake_cn(0, TLS1_3_VERSION, cn, sizeof(cn)) == 0 && strcmp(cn, "127.0.0.1") == 0);
    X509_free(leaf);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key2);
    eg_p11_key_free(p11);
}

int main(int argc, char **argv)
{
    CU_TestInfo tests[] = {
        {"TLS 1.3 handshake signed by the token", test_tls13_handshake_signed_by_token},
        {"TLS 1.2 refused by default", test_tls12_refused_by_default},
        {"TLS 1.2 on a listener that allows it", test_tls12_on_listener_that_allows_it},
        {"Content-Length with Transfer-Encoding is 400",
         test_content_length_and_transfer_encoding_refused},
        {"oversized bodies are 413", test_oversized_bodies_refused},
        {"keep-alive: two requests, one handshake", test_keep_alive_two_requests_one_handshake},
        {"an encoded slash in the path is 404", test_an_encoded_slash_in_the_path_is_404},
        {"an answer is one TLS record", test_answer_in_one_record},
        {"HTTP/1.0 without keep-alive is closed", test_http10_connection_closes},
        {"session tickets outlive one new ticket key, not two", test_ticket_keys_rotate},
        {"a new TLS key and chain without a restart",
         test_tls_key_and_chain_replaced_without_a_restart},
        {"silent sockets hold threads only until the timeout",
         test_silent_sockets_hold_threads_only_until_the_timeout},
        {"a trickled body gets 408 at the timeout", test_a_trickled_body_gets_408_at_the_timeout},
        {"chunked trailers and extensions", test_chunked_trailers_and_extensions},
        {"requests civetweb refuses are audited", test_requests_civetweb_refuses_are_audited},
        CU_TEST_INFO_NULL,
    };

    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
