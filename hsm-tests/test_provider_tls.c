/*
 * A TLS 1.3 server whose key is a token key (SSL_CTX_use_PrivateKey with the
 * provider's EVP_PKEY) completes handshakes with a stock client, and its
 * CertificateVerify is a token signature: RSA keys sign rsa_pss_rsae_sha256,
 * which needs the provider's PSS; ECDSA P-256 keys sign ecdsa_secp256r1_sha256.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/ssl.h>

#include "prov_fixture.h"
#include "provider.h"

static eg_th_kind kind;
static eg_pf pf;
static eg_pf_key rsa, p256, ed25519;

static int suite_init(void)
{
    eg_keygen_spec rsa_spec = {EG_KEY_RSA, 2048, 0, "tls-rsa", NULL, 0, true, false};
    eg_keygen_spec p256_spec = {EG_KEY_EC, 0,    NID_X9_62_prime256v1, "tls-p256", NULL, 0,
                                true,      false};
    eg_keygen_spec ed_spec = {EG_KEY_ED25519, 0, 0, "tls-ed25519", NULL, 0, true, false};

    if (eg_pf_open(kind, "tls", &pf) != 0 || eg_pf_key_make(&pf, "RSA", &rsa_spec, &rsa) != 0 ||
        eg_pf_key_make(&pf, "P-256", &p256_spec, &p256) != 0)
        return -1;
    if (eg_pf_has_ed25519(&pf) && eg_pf_key_make(&pf, "Ed25519", &ed_spec, &ed25519) != 0)
        return -1;
    return 0;
}

static int suite_clean(void)
{
    eg_pf_key_clear(&rsa);
    eg_pf_key_clear(&p256);
    eg_pf_key_clear(&ed25519);
    eg_pf_close(&pf);
    return 0;
}

typedef struct server_run {
    SSL *ssl;
    int ok;
} server_run;

/* The server side: handshake, then answer one message. */
static void *serve(void *arg)
{
    server_run *run = arg;
    char buf[64];
    int n;

    if (SSL_accept(run->ssl) == 1 && (n = SSL_read(run->ssl, buf, sizeof(buf))) > 0 &&
        SSL_write(run->ssl, buf, n) == n)
        run->ok = 1;
    else
        ERR_print_errors_fp(stderr);
    SSL_shutdown(run->ssl);
    return NULL;
}

static SSL_CTX *server_ctx(X509 *cert, EVP_PKEY *pkey)
{
    SSL_CTX *ctx = SSL_CTX_new_ex(pf.libctx, NULL, TLS_server_method());

    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
        SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, pkey) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        ERR_print_errors_fp(stderr);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* The client: the default library context, trusting only the server's certificate. */
static SSL_CTX *client_ctx(X509 *cert)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
        X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), cert) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

/* Client half of the exchange: handshake, one message and its echo. */
static int client_talk(SSL *ssl)
{
    static const char ping[] = "ping";
    char buf[64];

    if (SSL_connect(ssl) != 1 || SSL_write(ssl, ping, sizeof(ping)) != sizeof(ping) ||
        SSL_read(ssl, buf, sizeof(buf)) != sizeof(ping) || memcmp(buf, ping, sizeof(ping)) != 0) {
        ERR_print_errors_fp(stderr);
        return 0;
    }
    return 1;
}

/* One handshake over a socketpair; the peer's signature type and digest come back. */
static int handshake(SSL_CTX *sctx, SSL_CTX *cctx, int *sig_type, int *sig_md)
{
    server_run run = {NULL, 0};
    SSL *cssl = NULL;
    pthread_t tid;
    int fds[2] = {-1, -1}, ok = 0, started = 0;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0 || (run.ssl = SSL_new(sctx)) == NULL ||
        (cssl = SSL_new(cctx)) == NULL || !SSL_set_fd(run.ssl, fds[0]) || !SSL_set_fd(cssl, fds[1]))
        goto out;
    if (pthread_create(&tid, NULL, serve, &run) != 0)
        goto out;
    started = 1;
    ok = client_talk(cssl) && SSL_get_verify_result(cssl) == X509_V_OK &&
         SSL_version(cssl) == TLS1_3_VERSION && SSL_get_peer_signature_type_nid(cssl, sig_type);
    /* Ed25519 has no separate digest: the call fails and *sig_md stays NID_undef. */
    SSL_get_peer_signature_nid(cssl, sig_md);
out:
    if (cssl != NULL)
        SSL_shutdown(cssl);
    if (fds[1] >= 0)
        shutdown(fds[1], SHUT_RDWR);
    if (started)
        pthread_join(tid, NULL);
    SSL_free(cssl);
    SSL_free(run.ssl);
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    return ok && run.ok;
}

static void check_handshake(eg_pf_key *key, int want_type)
{
    X509 *cert = eg_pf_cert(&pf, key->name, 1, key->pkey, NULL, key->pkey,
                            want_type == NID_ED25519 ? NULL : "SHA256", false);
    SSL_CTX *sctx = NULL, *cctx = NULL;
    int type = NID_undef, md = NID_undef;
    uint64_t before;

    CU_ASSERT_PTR_NOT_NULL_FATAL(cert);
    sctx = server_ctx(cert, key->pkey);
    cctx = client_ctx(cert);
    CU_ASSERT_FATAL(sctx != NULL && cctx != NULL);
    before = eg_pf_sign_calls(&pf);
    CU_ASSERT_TRUE(handshake(sctx, cctx, &type, &md));
    /* The CertificateVerify was signed in the token, once. */
    CU_ASSERT_EQUAL(eg_pf_sign_calls(&pf), before + 1);
    CU_ASSERT_EQUAL(type, want_type);
    CU_ASSERT_EQUAL(md, want_type == NID_ED25519 ? NID_undef : NID_sha256);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    X509_free(cert);
}

static void test_rsa_server_signs_rsa_pss_rsae(void)
{
    check_handshake(&rsa, EVP_PKEY_RSA_PSS);
}

static void test_ecdsa_p256_server_handshakes(void)
{
    check_handshake(&p256, EVP_PKEY_EC);
}

static void test_ed25519_server_handshakes(void)
{
    if (ed25519.pkey == NULL) {
        printf("skipped (no Ed25519 in this token) ");
        return;
    }
    check_handshake(&ed25519, NID_ED25519);
}

static CU_TestInfo tests[] = {
    {"RSA server signs rsa_pss_rsae_sha256", test_rsa_server_signs_rsa_pss_rsae},
    {"ECDSA P-256 server handshakes", test_ecdsa_p256_server_handshakes},
    {"Ed25519 server handshakes", test_ed25519_server_handshakes},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
