#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509_vfy.h>

#include "clock.h"
#include "tls.h"

/* TLS 1.2, for legacy devices on listeners that opt in: forward secrecy and AEAD only. */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static int chain_idx = -1;
static pthread_once_t chain_once = PTHREAD_ONCE_INIT;

static void chain_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    sk_X509_pop_free(ptr, X509_free);
}

static void chain_index(void)
{
    chain_idx = X509_get_ex_new_index(0, NULL, NULL, NULL, chain_free);
}

STACK_OF(X509) * eg_tls_peer_intermediates(X509 *leaf)
{
    pthread_once(&chain_once, chain_index);
    return chain_idx < 0 || leaf == NULL ? NULL : X509_get_ex_data(leaf, chain_idx);
}

/* What eg_tls_handshake_done noted on this worker thread. */
typedef struct noted_binding {
    bool set;
    char addr[INET6_ADDRSTRLEN];
    unsigned port;
    eg_tls_binding b;
} noted_binding;

static _Thread_local noted_binding noted;

/*
 * The handshake this thread is in, from its ClientHello until it ends: its socket and the
 * socket's peer then, read once for the channel binding's note and for the line of a failed
 * handshake, so that a later look finds the same connection and not one that was given the
 * same descriptor since.
 */
typedef struct hello_note {
    int fd;
    socklen_t len;
    struct sockaddr_storage peer;
} hello_note;

static _Thread_local hello_note hello = {.fd = -1};

/* An address as text and its port; false for a family other than IPv4 and IPv6. */
static bool sock_text(const struct sockaddr_storage *ss, char *addr, size_t cap, unsigned *port)
{
    const void *a = NULL;

    if (ss->ss_family == AF_INET) {
        a = &((const struct sockaddr_in *)ss)->sin_addr;
        *port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        *port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    }
    return a != NULL && inet_ntop(ss->ss_family, a, addr, (socklen_t)cap) != NULL;
}

static bool binding_of(const SSL *ssl, eg_tls_binding *b)
{
    static const char label[] = "EXPORTER-Channel-Binding";

    b->resumed = SSL_session_reused((SSL *)ssl) == 1;
    if (SSL_version(ssl) == TLS1_3_VERSION) {
        b->type = "tls-exporter";
        b->len = 32;
        /* SSL_export_keying_material takes a non-const SSL; it changes nothing. */
        return SSL_export_keying_material((SSL *)ssl, b->data, b->len, label, sizeof(label) - 1,
                                          NULL, 0, 0) == 1;
    }
    /* The first Finished on the wire: the client's in a full handshake, ours in a resumption.
       Renegotiation is off (eg_tls_ctx_new), so it stays the connection's. Without the extended
       master secret (RFC 7627) a man in the middle can give two connections the same Finished
       (the triple handshake), so none is noted: len 0. */
    b->type = "tls-unique";
    if (!SSL_get_extms_support((SSL *)ssl)) {
        b->len = 0;
        return true;
    }
    b->len = SSL_session_reused(ssl) ? SSL_get_finished(ssl, b->data, sizeof(b->data))
                                     : SSL_get_peer_finished(ssl, b->data, sizeof(b->data));
    return b->len > 0 && b->len <= sizeof(b->data);
}

X509 *eg_tls_handshake_done(const SSL *ssl)
{
    int fd = SSL_get_fd(ssl);

    /* The peer the ClientHello callback noted for this handshake, on this thread. */
    noted.set = fd >= 0 && fd == hello.fd && binding_of(ssl, &noted.b) &&
                sock_text(&hello.peer, noted.addr, sizeof(noted.addr), &noted.port);
    hello.fd = -1;
    return SSL_get1_peer_certificate(ssl);
}

bool eg_tls_failed_peer(char *addr, size_t cap, unsigned *port, unsigned *local_port)
{
    struct sockaddr_storage now, local;
    socklen_t nl = sizeof(now), ll = sizeof(local);
    char scratch[INET6_ADDRSTRLEN];
    int fd = hello.fd;

    hello.fd = -1;
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&local, &ll) != 0)
        return false;
    /* A device that reset the connection leaves a socket with no peer (ENOTCONN): still this
       handshake's. A socket with another peer is a later connection given the same number. */
    if (getpeername(fd, (struct sockaddr *)&now, &nl) == 0
            ? nl != hello.len || memcmp(&now, &hello.peer, nl) != 0
            : errno != ENOTCONN)
        return false;
    return sock_text(&hello.peer, addr, cap, port) &&
           sock_text(&local, scratch, sizeof(scratch), local_port);
}

const eg_tls_binding *eg_tls_thread_binding(const char *addr, unsigned port)
{
    if (!noted.set || addr == NULL || port != noted.port || strcmp(addr, noted.addr) != 0)
        return NULL;
    return &noted.b;
}

/*
 * Replaces chain verification at the handshake: any client certificate is
 * accepted here, because which CA is trusted depends on the profile the
 * request names, known only later. The client's intermediates are kept on the
 * leaf object, which is the one civetweb hands to the request as peer_cert.
 * Only the intermediates: a reference to the leaf itself would keep it alive.
 */
static int keep_client_chain(X509_STORE_CTX *x, void *arg)
{
    X509 *leaf = X509_STORE_CTX_get0_cert(x);
    STACK_OF(X509) *sent = X509_STORE_CTX_get0_untrusted(x);
    STACK_OF(X509) *copy = sk_X509_new_null();

    pthread_once(&chain_once, chain_index);
    for (int i = 0; copy != NULL && i < sk_X509_num(sent); i++) {
        X509 *c = sk_X509_value(sent, i);

        if (c != leaf && X509_up_ref(c) && !sk_X509_push(copy, c))
            X509_free(c);
    }
    if (leaf != NULL && copy != NULL && chain_idx >= 0 && X509_set_ex_data(leaf, chain_idx, copy))
        copy = NULL;
    sk_X509_pop_free(copy, X509_free);
    return 1;
}

static int name_cmp(const X509_NAME *const *a, const X509_NAME *const *b)
{
    return X509_NAME_cmp(*a, *b);
}

/*
 * The union of the profiles' client CA subjects, sent in CertificateRequest
 * (Java clients pick their certificate by them). A reload replaces them while
 * handshakes run, so each handshake takes its own copy under the lock; the
 * SSL_CTX's own list could not be replaced safely.
 */
struct eg_tls_ca_names {
    pthread_mutex_t lock;
    STACK_OF(X509_NAME) * names;
};

eg_tls_ca_names *eg_tls_ca_names_new(void)
{
    eg_tls_ca_names *n = calloc(1, sizeof(*n));

    if (n == NULL)
        return NULL;
    if (pthread_mutex_init(&n->lock, NULL) != 0 || (n->names = sk_X509_NAME_new_null()) == NULL) {
        free(n);
        return NULL;
    }
    return n;
}

void eg_tls_ca_names_free(eg_tls_ca_names *n)
{
    if (n == NULL)
        return;
    sk_X509_NAME_pop_free(n->names, X509_NAME_free);
    pthread_mutex_destroy(&n->lock);
    free(n);
}

int eg_tls_ca_names_set(eg_tls_ca_names *n, const eg_config *cfg, char *why, size_t whylen)
{
    STACK_OF(X509_NAME) *names = sk_X509_NAME_new(name_cmp), *old;

    if (names == NULL)
        return -1;
    for (size_t i = 0; i < cfg->nprofiles; i++) {
        const char *file = cfg->profiles[i].client_ca_file;

        if (file != NULL && !SSL_add_file_cert_subjects_to_stack(names, file)) {
            snprintf(why, whylen, "cannot read client CA bundle %s", file);
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            return -1;
        }
    }
    pthread_mutex_lock(&n->lock);
    old = n->names;
    n->names = names;
    pthread_mutex_unlock(&n->lock);
    sk_X509_NAME_pop_free(old, X509_NAME_free);
    return 0;
}

/*
 * What each of our contexts carries: the session ticket keys, and its successor
 * (eg_tls_ctx_switch). civetweb keeps the context it was given for as long as it runs, so a
 * reload that brings a new TLS key or chain hands each new handshake over to the successor when
 * its ClientHello arrives: the successor's certificate and key serve it.
 */
typedef struct ctx_data {
    eg_tls_tickets *tickets; /* borrowed */
    pthread_mutex_t lock;
    SSL_CTX *next;
} ctx_data;

static int data_idx = -1;
static pthread_once_t data_once = PTHREAD_ONCE_INIT;

static void data_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    ctx_data *n = ptr;

    if (n == NULL)
        return;
    SSL_CTX_free(n->next);
    pthread_mutex_destroy(&n->lock);
    free(n);
}

static void data_index(void)
{
    data_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, data_free);
}

void eg_tls_ctx_switch(SSL_CTX *base, SSL_CTX *next)
{
    ctx_data *n = SSL_CTX_get_ex_data(base, data_idx);
    SSL_CTX *old;

    pthread_mutex_lock(&n->lock);
    old = n->next;
    n->next = next;
    pthread_mutex_unlock(&n->lock);
    SSL_CTX_free(old); /* handshakes already handed to it keep their own reference */
}

static int hello_cb(SSL *ssl, int *alert, void *arg)
{
    eg_tls_ca_names *names = arg;
    ctx_data *n = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), data_idx);
    STACK_OF(X509_NAME) * copy;
    bool ok = true;

    hello.fd = SSL_get_fd(ssl);
    hello.len = sizeof(hello.peer);
    if (hello.fd >= 0 && getpeername(hello.fd, (struct sockaddr *)&hello.peer, &hello.len) != 0)
        hello.fd = -1;
    if (n != NULL) {
        pthread_mutex_lock(&n->lock);
        ok = n->next == NULL || SSL_set_SSL_CTX(ssl, n->next) != NULL;
        pthread_mutex_unlock(&n->lock);
    }
    pthread_mutex_lock(&names->lock);
    copy = ok ? SSL_dup_CA_list(names->names) : NULL;
    pthread_mutex_unlock(&names->lock);
    if (copy == NULL) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    SSL_set_client_CA_list(ssl, copy);
    return SSL_CLIENT_HELLO_SUCCESS;
}

/*
 * Session ticket keys (tls.h). OpenSSL's own ticket keys are made with the SSL_CTX and kept until
 * it is freed, which for estgated means until a restart; a TLS 1.2 ticket holds its session's
 * master secret, so a key kept for months would let a copy of the process's memory open every
 * ticket recorded on the wire since the start. Tickets are AES-256-CBC with HMAC-SHA256 under a
 * 16-octet key name, OpenSSL's own format.
 */
typedef struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    bool set;
} ticket_key;

struct eg_tls_tickets {
    pthread_mutex_t lock;
    EVP_CIPHER *cipher;
    ticket_key cur, prev; /* cur encrypts and decrypts; prev only decrypts */
    time_t next;          /* when cur stops encrypting (monotonic seconds) */
};

/* Under t->lock, or before t is shared. */
static int ticket_key_roll(eg_tls_tickets *t, time_t now)
{
    ticket_key k = {.set = true};

    if (RAND_bytes(k.name, sizeof(k.name)) != 1 || RAND_priv_bytes(k.aes, sizeof(k.aes)) != 1 ||
        RAND_priv_bytes(k.hmac, sizeof(k.hmac)) != 1) {
        OPENSSL_cleanse(&k, sizeof(k));
        return -1;
    }
    OPENSSL_cleanse(&t->prev, sizeof(t->prev));
    t->prev = t->cur;
    t->cur = k;
    OPENSSL_cleanse(&k, sizeof(k));
    t->next = now + EG_TLS_TICKET_KEY_S;
    return 0;
}

eg_tls_tickets *eg_tls_tickets_new(void)
{
    eg_tls_tickets *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return NULL;
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t);
        return NULL;
    }
    if ((t->cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL)) == NULL ||
        ticket_key_roll(t, eg_mono_s()) != 0) {
        eg_tls_tickets_free(t);
        return NULL;
    }
    return t;
}

void eg_tls_tickets_free(eg_tls_tickets *t)
{
    if (t == NULL)
        return;
    EVP_CIPHER_free(t->cipher);
    pthread_mutex_destroy(&t->lock);
    OPENSSL_clear_free(t, sizeof(*t));
}

int eg_tls_tickets_tick(eg_tls_tickets *t, time_t now)
{
    int rc = 0, rolled = 0;

    pthread_mutex_lock(&t->lock);
    /* Two periods or more without a tick (a suspended machine): neither key is kept. */
    while (rc == 0 && now >= t->next && rolled++ < 2)
        rc = ticket_key_roll(t, now);
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* SSL_CTX_set_tlsext_ticket_key_evp_cb: 1 with cur, 2 with prev (a new ticket follows), 0 for an
   unknown name (a full handshake), -1 on failure. */
static int ticket_key_cb(SSL *s, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                         EVP_MAC_CTX *hctx, int enc)
{
    const ctx_data *d = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(s), data_idx);
    eg_tls_tickets *t = d != NULL ? d->tickets : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    ticket_key k;
    int rc = -1;

    if (t == NULL)
        return -1;
    pthread_mutex_lock(&t->lock);
    if (enc)
        k = t->cur;
    else if (t->cur.set && memcmp(name, t->cur.name, sizeof(k.name)) == 0)
        k = t->cur, rc = 1;
    else if (t->prev.set && memcmp(name, t->prev.name, sizeof(k.name)) == 0)
        k = t->prev, rc = 2;
    else
        k.set = false, rc = 0;
    pthread_mutex_unlock(&t->lock);
    if (enc) {
        memcpy(name, k.name, sizeof(k.name));
        rc = RAND_bytes(iv, EVP_CIPHER_get_iv_length(t->cipher)) == 1 &&
                     EVP_EncryptInit_ex2(cctx, t->cipher, k.aes, iv, NULL) == 1 &&
                     EVP_MAC_init(hctx, k.hmac, sizeof(k.hmac), params) == 1
                 ? 1
                 : -1;
    } else if (rc > 0 && (EVP_MAC_init(hctx, k.hmac, sizeof(k.hmac), params) != 1 ||
                          EVP_DecryptInit_ex2(cctx, t->cipher, k.aes, iv, NULL) != 1)) {
        rc = -1;
    }
    OPENSSL_cleanse(&k, sizeof(k));
    return rc;
}

/*
 * A ticket is honoured only for a session without a client certificate: a resumed session
 * carries the leaf but not the intermediates the client sent, and every request's certificate
 * is verified per profile with them. So mTLS clients make a full handshake every time.
 */
static SSL_TICKET_RETURN ticket_decrypted(SSL *s, SSL_SESSION *ss, const unsigned char *keyname,
                                          size_t keyname_len, SSL_TICKET_STATUS status, void *arg)
{
    (void)s;
    (void)keyname;
    (void)keyname_len;
    (void)arg;
    /* Not decrypted (an old key: a restart), or empty: a full handshake, and a new ticket. */
    if (status != SSL_TICKET_SUCCESS && status != SSL_TICKET_SUCCESS_RENEW)
        return SSL_TICKET_RETURN_IGNORE_RENEW;
    if (SSL_SESSION_get0_peer(ss) != NULL)
        return SSL_TICKET_RETURN_IGNORE;
    return status == SSL_TICKET_SUCCESS_RENEW ? SSL_TICKET_RETURN_USE_RENEW : SSL_TICKET_RETURN_USE;
}

static int set_protocols(SSL_CTX *ctx, bool allow_tls12)
{
    /* Resumption by stateless ticket, so that a device's next connection (curl runs one per
       request) skips the server key's signature in the token; no 0-RTT, no server cache. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* A ticket's lifetime is one key period: its key decrypts for that long at least. */
    SSL_CTX_set_timeout(ctx, EG_TLS_TICKET_KEY_S);
    return SSL_CTX_set_num_tickets(ctx, 1) &&
           SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb) &&
           SSL_CTX_set_session_ticket_cb(ctx, NULL, ticket_decrypted, NULL) &&
           /* OpenSSL resumes no session of a context that asks for client certificates
              without one ("session id context uninitialized") */
           SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"estgated", 8) &&
           SSL_CTX_set_min_proto_version(ctx, allow_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION) &&
           SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
           SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS);
}

SSL_CTX *eg_tls_ctx_new(const eg_config *cfg, EVP_PKEY *key, bool allow_tls12,
                        eg_tls_ca_names *names, eg_tls_tickets *tickets, char *why, size_t whylen)
{
    SSL_CTX *ctx = SSL_CTX_new_ex(NULL, NULL, TLS_server_method());
    SSL_CTX *ret = NULL;
    ctx_data *n = calloc(1, sizeof(*n));

    pthread_once(&data_once, data_index);
    if (n == NULL || data_idx < 0 || pthread_mutex_init(&n->lock, NULL) != 0) {
        free(n);
        n = NULL;
        snprintf(why, whylen, "cannot set up TLS: out of memory");
        goto out;
    }
    n->tickets = tickets;
    if (ctx == NULL || !SSL_CTX_set_ex_data(ctx, data_idx, n)) {
        snprintf(why, whylen, "cannot set up TLS: out of memory");
        goto out;
    }
    n = NULL; /* the context frees it */
    if (!set_protocols(ctx, allow_tls12)) {
        snprintf(why, whylen, "cannot set up TLS: %s", ERR_reason_error_string(ERR_get_error()));
        goto out;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_chain_file) != 1) {
        snprintf(why, whylen, "cannot use TLS chain %s", cfg->tls_chain_file);
        goto out;
    }
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(why, whylen, "TLS key %s does not match the chain %s", cfg->tls_key_uri,
                 cfg->tls_chain_file);
        goto out;
    }
    SSL_CTX_set_client_hello_cb(ctx, hello_cb, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, keep_client_chain, NULL);
    ret = ctx;
    ctx = NULL;
out:
    if (n != NULL) {
        pthread_mutex_destroy(&n->lock);
        free(n);
    }
    SSL_CTX_free(ctx);
    return ret;
}
