#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

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

static int hello_cb(SSL *ssl, int *alert, void *arg)
{
    eg_tls_ca_names *n = arg;
    STACK_OF(X509_NAME) * copy;

    pthread_mutex_lock(&n->lock);
    copy = SSL_dup_CA_list(n->names);
    pthread_mutex_unlock(&n->lock);
    if (copy == NULL) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    SSL_set_client_CA_list(ssl, copy);
    return SSL_CLIENT_HELLO_SUCCESS;
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
    return SSL_CTX_set_num_tickets(ctx, 1) &&
           SSL_CTX_set_session_ticket_cb(ctx, NULL, ticket_decrypted, NULL) &&
           /* OpenSSL resumes no session of a context that asks for client certificates
              without one ("session id context uninitialized") */
           SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"estgated", 8) &&
           SSL_CTX_set_min_proto_version(ctx, allow_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION) &&
           SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
           SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS);
}

SSL_CTX *eg_tls_ctx_new(const eg_config *cfg, EVP_PKEY *key, bool allow_tls12,
                        eg_tls_ca_names *names, char *why, size_t whylen)
{
    SSL_CTX *ctx = SSL_CTX_new_ex(NULL, NULL, TLS_server_method());
    SSL_CTX *ret = NULL;

    if (ctx == NULL || !set_protocols(ctx, allow_tls12)) {
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
    SSL_CTX_free(ctx);
    return ret;
}
