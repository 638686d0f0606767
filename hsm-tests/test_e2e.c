/*
 * estgated end to end: the real daemon on a fresh token (SoftHSM in-process or
 * behind p11-kit server), provisioned with estgate-provision, configured with
 * an INI file, and driven by real clients: curl + openssl as the operator
 * guide shows, and Bouncy Castle's EST client (hsm-tests/java/EstClient.java).
 * Every certificate a client receives is checked against the chain from
 * /cacerts and against its profile; every refusal has its HTTP status.
 */
#include <errno.h>
#include <pthread.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <CUnit/CUnit.h>
#include <sqlite3.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "child.h"
#include "clock.h"
#include "estgated_fixture.h"
#include "config.h"
#include "csr_attrs.h"
#include "ledger.h"
#include "token_harness.h"

#define MAX_DAYS 30
#define BURST    40

static eg_th_kind kind;
static eg_th *th;
static char dir[EG_FX_DIR_MAX], ini[PATH_MAX], ca[PATH_MAX], pass[PATH_MAX], daemon_log[PATH_MAX];
static unsigned port, port12;
static pid_t daemon_pid;
static eg_child_result *res; /* the last child's output; one at a time */

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

/* Runs a NULL-terminated command in the token directory; its exit status. */
#define cmd(...) eg_child_cmd(dir, res, __VA_ARGS__)

/* ---- the daemon ---- */

/* A software CA for the partner profile, and a client certificate it issued. */
static int partner_pki(void)
{
    char key[PATH_MAX], crt[PATH_MAX], ckey[PATH_MAX], csr[PATH_MAX], ccrt[PATH_MAX];

    return cmd("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", tpath(key, "partner-ca.key"), "-out",
               tpath(crt, "partner-ca.pem"), "-subj", "/CN=Partner CA", "-days", "30", "-addext",
               "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign",
               NULL) ||
           cmd("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", tpath(ckey, "partner-dev.key"), "-out",
               tpath(csr, "partner-dev.csr"), "-subj", "/CN=p1.example.com", NULL) ||
           cmd("openssl", "x509", "-req", "-in", csr, "-CA", crt, "-CAkey", key, "-CAcreateserial",
               "-days", "30", "-out", tpath(ccrt, "partner-dev.pem"), NULL);
}

static int write_config(void)
{
    const eg_token_config *c = eg_th_config(th);
    char *hash = NULL, text[32768];
    int n, m, rc = -1;

    /* A random Basic password, in a 0600 file, as the demo makes one. */
    if (eg_fx_basic_user("alice", pass, NULL, &hash) != 0)
        goto out;
    if ((n = eg_fx_ini_head(th, "listen = 127.0.0.1:0 tls12\nmax_body = 16k\n",
                            "recover_ms = 1500\n", text, sizeof(text))) < 0)
        goto out;
    m = snprintf(text + n, sizeof(text) - (size_t)n,
                 "\n[profile default]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = basic\nuser = alice:%s\n"
                 "san = dns:.example.com\nmax_days = %d\neku = clientAuth\n"
                 "key_types = ec:P-256, ec:P-384, rsa:2048-4096\n"
                 "csr_digests = sha256, sha384, sha512\n"
                 "\n[profile iot]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = mtls\nclient_ca = %s\nsan = dns:.example.com\nmax_days = %d\n"
                 "\n[profile partner]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = mtls\nclient_ca = partner-ca.pem\nsan = dns:.example.com\n"
                 "\n[profile returning]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = mtls\nclient_ca = partner-ca.pem\nsan = dns:.example.com\n"
                 "renew_expired_days = 7\nmax_days = %d\n"
                 "\n[profile linked]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = basic\nuser = alice:%s\nsan = dns:.example.com\nmax_days = %d\n"
                 "require_channel_binding = yes\n"
                 "\n[profile either]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = basic, mtls\nuser = alice:%s\nclient_ca = partner-ca.pem\n"
                 "san = dns:.example.com\nmax_days = %d\n",
                 c->token_label, ca, hash, MAX_DAYS, c->token_label, ca, ca, MAX_DAYS,
                 c->token_label, ca, c->token_label, ca, MAX_DAYS, c->token_label, ca, hash,
                 MAX_DAYS, c->token_label, ca, hash, MAX_DAYS);
    if (m > 0 && (size_t)m < sizeof(text) - (size_t)n)
        rc = eg_file_write(ini, text, (size_t)(n + m), 0600);
out:
    free(hash);
    return rc;
}

/* Starts estgated; 0 with port (TLS 1.3) and port12 (TLS 1.2 allowed) set. */
static int daemon_start(void)
{
    unsigned ports[2];

    if (eg_fx_daemon_start(ini, daemon_log, &daemon_pid, ports, 2) != 0)
        return -1;
    port = ports[0];
    port12 = ports[1];
    return 0;
}

static int suite_init(void)
{
    const eg_fx_suite s = {&th, &res, dir, ini, ca, pass, daemon_log};

    if (eg_fx_suite_open(kind, "e2e", "CN=e2e CA,O=estgate tests", &s) != 0 || partner_pki() != 0 ||
        write_config() != 0 || daemon_start() != 0)
        return -1;
    return 0;
}

static int suite_clean(void)
{
    if (daemon_pid > 0)
        eg_fx_daemon_stop(&daemon_pid, SIGTERM);
    eg_th_destroy(th);
    free(res);
    return 0;
}

/* ---- clients ---- */

typedef struct http {
    int status;
    char headers[4096];
    char body_path[PATH_MAX];
} http;

/*
 * curl against the daemon: method and path, then extra curl arguments
 * (NULL-terminated). The body goes to body_path, the headers are kept.
 */
static int curl(http *h, unsigned p, const char *path, ...)
{
    char url[512], hdr[PATH_MAX], *argv[64];
    size_t len;
    va_list ap;
    char *text;
    int n = 0;

    snprintf(url, sizeof(url), "https://localhost:%u/.well-known/est/%s", p, path);
    tpath(h->body_path, "body");
    argv[n++] = "curl";
    argv[n++] = "-sS";
    argv[n++] = "--cacert";
    argv[n++] = ca;
    argv[n++] = "-o";
    argv[n++] = h->body_path;
    argv[n++] = "-D";
    argv[n++] = tpath(hdr, "headers");
    argv[n++] = "-w";
    argv[n++] = "%{http_code}";
    va_start(ap, path);
    while (n < 60 && (argv[n] = va_arg(ap, char *)) != NULL)
        n++;
    va_end(ap);
    argv[n++] = url;
    argv[n] = NULL;
    h->status = -1;
    h->headers[0] = 0;
    if (eg_child_run(dir, NULL, argv, res) != 0)
        return -1;
    h->status = atoi(res->out);
    if ((text = eg_file_read(hdr, &len)) != NULL) {
        snprintf(h->headers, sizeof(h->headers), "%s", text);
        free(text);
    }
    return h->status;
}

static char *basic_user(char *buf)
{
    size_t len;
    char *pw = eg_file_read(pass, &len);

    snprintf(buf, 128, "alice:%s", pw ? pw : "");
    free(pw);
    return buf;
}

/* A raw request as user:password (NULL: alice's): method, /.well-known/est/path, the Basic
   credentials and Content-Type application/pkcs10, then rest (the framing headers, the blank
   line, any body). Its length, or -1 when it does not fit in cap. */
static int raw_text_as(char *buf, size_t cap, const char *userpass, const char *method,
                       const char *path, const char *rest)
{
    char user[128];
    unsigned char b64[200];
    int n;

    if (userpass == NULL)
        userpass = basic_user(user);
    EVP_EncodeBlock(b64, (const unsigned char *)userpass, (int)strlen(userpass));
    n = snprintf(buf, cap,
                 "%s /.well-known/est/%s HTTP/1.1\r\nHost: localhost\r\n"
                 "Authorization: Basic %s\r\nContent-Type: application/pkcs10\r\n%s",
                 method, path, b64, rest);
    return n > 0 && (size_t)n < cap ? n : -1;
}

static int raw_text(char *buf, size_t cap, const char *method, const char *path, const char *rest)
{
    return raw_text_as(buf, cap, NULL, method, path, rest);
}

/* When set, make_csr signs with this openssl req digest option ("-md5") instead of -sha256. */
static const char *csr_digest;

/* A P-256 (or spec'd) key and a DER CSR for cn with SAN dns. */
static int make_csr(const char *name, const char *newkey, const char *cn, const char *ext)
{
    const char *md = csr_digest != NULL ? csr_digest : "-sha256";

    char key[PATH_MAX], csr[PATH_MAX], subj[256], addext[256];

    snprintf(subj, sizeof(subj), "/CN=%s", cn);
    snprintf(addext, sizeof(addext), "%s", ext ? ext : "subjectAltName=DNS:x.example.com");
    snprintf(key, sizeof(key), "%s/%s.key", dir, name);
    snprintf(csr, sizeof(csr), "%s/%s.csr", dir, name);
    if (strcmp(newkey, "ec") == 0)
        return cmd("openssl", "req", "-new", md, "-newkey", "ec", "-pkeyopt",
                   "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-subj", subj, "-addext",
                   addext, "-outform", "DER", "-out", csr, NULL);
    return cmd("openssl", "req", "-new", md, "-newkey", newkey, "-nodes", "-keyout", key, "-subj",
               subj, "-addext", addext, "-outform", "DER", "-out", csr, NULL);
}

/* name.csr (DER) as base64 in name.b64: wrapped at 64 columns, LF. */
static int csr_b64(const char *name)
{
    char in[PATH_MAX], out[PATH_MAX];

    snprintf(in, sizeof(in), "%s/%s.csr", dir, name);
    snprintf(out, sizeof(out), "%s/%s.b64", dir, name);
    return cmd("openssl", "base64", "-in", in, "-out", out, NULL);
}

/* The certs-only PKCS#7 response body (base64) as PEM certificates in pem. */
static int body_to_pem(const http *h, const char *pem)
{
    char der[PATH_MAX];

    return cmd("openssl", "base64", "-d", "-in", h->body_path, "-out", tpath(der, "body.der"),
               NULL) ||
           cmd("openssl", "pkcs7", "-inform", "DER", "-in", der, "-print_certs", "-out", pem, NULL);
}

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;

    if (f != NULL)
        fclose(f);
    return x;
}

/* The issued certificate obeys the default/iot profile and chains to /cacerts. */
static void check_issued(const char *pem, const char *cn)
{
    char chain[PATH_MAX];
    http h;

    CU_ASSERT_EQUAL_FATAL(curl(&h, port, "cacerts", NULL), 200);
    CU_ASSERT_EQUAL_FATAL(body_to_pem(&h, tpath(chain, "cacerts.pem")), 0);
    eg_fx_check_issued(dir, res, pem, chain, cn, MAX_DAYS, NULL);
}

/* ---- curl + openssl, as the operator guide shows ---- */

static void test_curl_cacerts(void)
{
    char pem[PATH_MAX];
    http h;
    X509 *got, *want;

    CU_ASSERT_EQUAL_FATAL(curl(&h, port, "cacerts", NULL), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(h.headers, "application/pkcs7-mime"));
    CU_ASSERT_EQUAL_FATAL(body_to_pem(&h, tpath(pem, "cacerts.pem")), 0);
    got = read_cert(pem);
    want = read_cert(ca);
    CU_ASSERT(got != NULL && want != NULL && X509_cmp(got, want) == 0);
    X509_free(got);
    X509_free(want);
}

/* "@path" for curl's --data-binary, in buf. */
static char *at(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX + 1, "@%s/%s", dir, name);
    return buf;
}

/* simpleenroll of name.b64 on profile path with extra curl arguments; status. */
static int enroll(http *h, const char *path, const char *name, const char *ctype, const char *a1,
                  const char *a2, const char *a3, const char *a4)
{
    char data[PATH_MAX + 1], file[64], user[128], hdr[128];

    snprintf(file, sizeof(file), "%s.b64", name);
    snprintf(hdr, sizeof(hdr), "Content-Type: %s", ctype ? ctype : "application/pkcs10");
    if (a1 == NULL)
        return curl(h, port, path, "-u", basic_user(user), "-H", hdr, "--data-binary",
                    at(data, file), NULL);
    return curl(h, port, path, "-H", hdr, "--data-binary", at(data, file), a1, a2, a3, a4, NULL);
}

static void test_curl_simpleenroll_with_basic(void)
{
    char pem[PATH_MAX];
    http h;

    CU_ASSERT_EQUAL_FATAL(
        make_csr("dev1", "ec", "dev1.example.com", "subjectAltName=DNS:dev1.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("dev1"), 0);
    CU_ASSERT_EQUAL_FATAL(enroll(&h, "simpleenroll", "dev1", NULL, NULL, NULL, NULL, NULL), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(h.headers, "application/pkcs7-mime"));
    CU_ASSERT_EQUAL_FATAL(body_to_pem(&h, tpath(pem, "dev1.pem")), 0);
    check_issued(pem, "dev1.example.com");
}

static void test_curl_simplereenroll_over_mtls(void)
{
    char cert[PATH_MAX], key[PATH_MAX], pem[PATH_MAX];
    X509 *old, *renewed;
    http h;

    /* The renewal CSR repeats the certificate's subject and SAN, as RFC 7030 4.2.2 asks. */
    CU_ASSERT_EQUAL_FATAL(
        make_csr("dev1r", "ec", "dev1.example.com", "subjectAltName=DNS:dev1.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("dev1r"), 0);
    CU_ASSERT_EQUAL_FATAL(enroll(&h, "iot/simplereenroll", "dev1r", NULL, "--cert",
                                 tpath(cert, "dev1.pem"), "--key", tpath(key, "dev1.key")),
                          200);
    CU_ASSERT_EQUAL_FATAL(body_to_pem(&h, tpath(pem, "dev1-renewed.pem")), 0);
    check_issued(pem, "dev1.example.com");
    old = read_cert(cert);
    renewed = read_cert(pem);
    CU_ASSERT(old != NULL && renewed != NULL &&
              X509_NAME_cmp(X509_get_subject_name(old), X509_get_subject_name(renewed)) == 0 &&
              ASN1_INTEGER_cmp(X509_get0_serialNumber(old), X509_get0_serialNumber(renewed)) != 0);
    X509_free(old);
    X509_free(renewed);
}

/* ---- Bouncy Castle's EST client ---- */

static int bc(const char *command, ...)
{
    char server[64], *argv[48];
    va_list ap;
    int n = 0;

    snprintf(server, sizeof(server), "localhost:%u", port);
    argv[n++] = "java";
    argv[n++] = "-cp";
    argv[n++] = EG_BC_CLASSPATH;
    argv[n++] = EG_SOURCE_DIR "/hsm-tests/java/EstClient.java";
    argv[n++] = (char *)command;
    argv[n++] = "--server";
    argv[n++] = server;
    argv[n++] = "--trust";
    argv[n++] = ca;
    va_start(ap, command);
    while (n < 46 && (argv[n] = va_arg(ap, char *)) != NULL)
        n++;
    va_end(ap);
    argv[n] = NULL;
    return eg_child_run(dir, NULL, argv, res);
}

static void test_bouncy_castle_client(void)
{
    char out[PATH_MAX], key[PATH_MAX], cert[PATH_MAX], cert2[PATH_MAX];

    CU_ASSERT_EQUAL(bc("cacerts", "--out", tpath(out, "bc-cacerts.pem"), NULL), 0);
    /* The default profile takes SHA-2 signatures only, and tells the client which ones
       (RFC 7030 4.5.2): ecdsa-with-SHA256 and sha512WithRSAEncryption among them. */
    CU_ASSERT_EQUAL(bc("csrattrs", NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "1.2.840.10045.4.3.2\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "1.2.840.113549.1.1.13\n"));
    CU_ASSERT_PTR_NULL(strstr(res->out, "1.2.840.10045.4.1\n")); /* ecdsa-with-SHA1 */
    CU_ASSERT_EQUAL_FATAL(bc("enroll", "--user", "alice", "--pass-file", pass, "--cn",
                             "bc1.example.com", "--dns", "bc1.example.com", "--key-out",
                             tpath(key, "bc1.key"), "--cert-out", tpath(cert, "bc1.pem"), NULL),
                          0);
    check_issued(cert, "bc1.example.com");
    CU_ASSERT_EQUAL_FATAL(bc("reenroll", "--label", "iot", "--key", key, "--cert", cert,
                             "--cert-out", tpath(cert2, "bc1-renewed.pem"), NULL),
                          0);
    check_issued(cert2, "bc1.example.com");
}

/*
 * Bouncy Castle's simpleEnrollPoP on a profile that requires the channel binding: tls-unique
 * over TLS 1.2, which is what its 1.72 client asks BCJSSE for (on TLS 1.3 BCJSSE 1.72 cannot
 * export the tls-exporter after the handshake; test_channel_binding_links_the_request_to_tls
 * covers TLS 1.3 with OpenSSL). Without PoP the same enrollment is refused.
 */
static void test_bouncy_castle_pop_linking(void)
{
    char server12[64], key[PATH_MAX], cert[PATH_MAX];

    snprintf(server12, sizeof(server12), "localhost:%u", port12);
    CU_ASSERT_EQUAL(bc("enroll", "--label", "linked", "--server", server12, "--tls", "TLSv1.2",
                       "--pop", "--user", "alice", "--pass-file", pass, "--cn",
                       "bc-pop12.example.com", "--dns", "bc-pop12.example.com", "--key-out",
                       tpath(key, "bc-pop12.key"), "--cert-out", tpath(cert, "bc-pop12.pem"), NULL),
                    0);
    check_issued(cert, "bc-pop12.example.com");
    CU_ASSERT_NOT_EQUAL(bc("enroll", "--label", "linked", "--user", "alice", "--pass-file", pass,
                           "--cn", "bc-nopop.example.com", "--dns", "bc-nopop.example.com",
                           "--key-out", tpath(key, "bc-nopop.key"), "--cert-out",
                           tpath(cert, "bc-nopop.pem"), NULL),
                        0);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "HTTP 403"));
}

/* ---- what real clients send ---- */

static void test_wire_variants_are_accepted(void)
{
    char b64[PATH_MAX], csr[PATH_MAX], pem[PATH_MAX];
    size_t len, i, o;
    char *text, *crlf;
    http h;

    CU_ASSERT_EQUAL_FATAL(
        make_csr("var", "ec", "var.example.com", "subjectAltName=DNS:var.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("var"), 0);
    /* CRLF line ends and trailing whitespace, with Content-Transfer-Encoding. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(text = eg_file_read(tpath(b64, "var.b64"), &len));
    CU_ASSERT_PTR_NOT_NULL_FATAL(crlf = malloc(2 * len + 8));
    for (i = o = 0; i < len; i++) {
        if (text[i] == '\n')
            crlf[o++] = '\r';
        crlf[o++] = text[i];
    }
    memcpy(crlf + o, "  \r\n", 4);
    CU_ASSERT_EQUAL(eg_file_write(tpath(b64, "varcrlf.b64"), crlf, o + 4, 0600), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "varcrlf", NULL, "-u", basic_user(csr), "-H",
                           "Content-Transfer-Encoding: base64"),
                    200);
    /* The same request again, without the header (RFC 8951): the same certificate back. */
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "var", NULL, NULL, NULL, NULL, NULL), 200);
    /* A chunked body, as HTTP clients send one whose length they do not know up front. */
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "var", NULL, "-u", basic_user(csr), "-H",
                           "Transfer-Encoding: chunked"),
                    200);
    /* PEM, as Cisco IOS sends it. */
    CU_ASSERT_EQUAL_FATAL(cmd("openssl", "req", "-inform", "DER", "-in", tpath(csr, "var.csr"),
                              "-out", tpath(pem, "varpem.b64"), NULL),
                          0);
    CU_ASSERT_EQUAL(
        enroll(&h, "simpleenroll", "varpem", "application/x-pem-file", NULL, NULL, NULL, NULL),
        200);
    free(text);
    free(crlf);
}

/* ---- every refusal with its status ---- */

static void test_wrong_or_missing_password_is_401(void)
{
    char data[PATH_MAX + 1];
    http h;

    CU_ASSERT_EQUAL(
        enroll(&h, "simpleenroll", "dev1", NULL, "-u", "alice:wrong-password", "-H", "X-Test: 1"),
        401);
    CU_ASSERT_PTR_NOT_NULL(strstr(h.headers, "WWW-Authenticate: Basic realm="));
    CU_ASSERT_EQUAL(curl(&h, port, "simpleenroll", "-H", "Content-Type: application/pkcs10",
                         "--data-binary", at(data, "dev1.b64"), NULL),
                    401);
    CU_ASSERT_PTR_NOT_NULL(strstr(h.headers, "WWW-Authenticate"));
}

static void test_client_certificate_of_another_profile_is_403(void)
{
    char cert[PATH_MAX], key[PATH_MAX];
    http h;

    /* Valid for iot (our CA), refused on partner; valid for partner, refused on iot. */
    CU_ASSERT_EQUAL(enroll(&h, "partner/simpleenroll", "dev1r", NULL, "--cert",
                           tpath(cert, "dev1.pem"), "--key", tpath(key, "dev1.key")),
                    403);
    CU_ASSERT_EQUAL(enroll(&h, "iot/simpleenroll", "dev1r", NULL, "--cert",
                           tpath(cert, "partner-dev.pem"), "--key", tpath(key, "partner-dev.key")),
                    403);
}

/*
 * auth = basic, mtls: a device whose certificate this profile does not trust (ours, from the iot
 * CA) is asked for a password (401 with the challenge: clients that send credentials only when
 * challenged get the chance), and gets its certificate with it; a partner device gets in by its
 * certificate alone. Before, the untrusted certificate got 403 and the password was never asked.
 */
static void test_an_untrusted_certificate_is_asked_for_a_password(void)
{
    char cert[PATH_MAX], key[PATH_MAX], data[PATH_MAX + 1], user[128], *body;
    http h;

    CU_ASSERT_EQUAL(enroll(&h, "either/simpleenroll", "dev1r", NULL, "--cert",
                           tpath(cert, "dev1.pem"), "--key", tpath(key, "dev1.key")),
                    401);
    CU_ASSERT_PTR_NOT_NULL(strstr(h.headers, "WWW-Authenticate: Basic realm="));
    body = eg_file_read(h.body_path, NULL);
    CU_ASSERT(body != NULL && strstr(body, "credentials required; ") != NULL &&
              strstr(body, "not trusted") != NULL);
    free(body);
    CU_ASSERT_EQUAL(curl(&h, port, "either/simpleenroll", "-u", basic_user(user), "-H",
                         "Content-Type: application/pkcs10", "--data-binary", at(data, "dev1r.b64"),
                         "--cert", tpath(cert, "dev1.pem"), "--key", tpath(key, "dev1.key"), NULL),
                    200);
    CU_ASSERT_EQUAL(enroll(&h, "either/simpleenroll", "dev1r", NULL, "--cert",
                           tpath(cert, "partner-dev.pem"), "--key", tpath(key, "partner-dev.key")),
                    200);
}

/*
 * renew_expired_days: a device back from a shelf, its certificate expired five days ago,
 * renews it where the profile allows seven days, and the audit says how long ago it expired;
 * the partner profile, which allows none, refuses it, and no profile takes it for enrollment.
 */
static void test_an_expired_certificate_renews_within_its_allowance(void)
{
    char csr[PATH_MAX], crt[PATH_MAX], key[PATH_MAX], cacrt[PATH_MAX], cakey[PATH_MAX];
    char pem[PATH_MAX], *body;
    http h;

    CU_ASSERT_EQUAL_FATAL(
        make_csr("shelf", "ec", "shelf.example.com", "subjectAltName=DNS:shelf.example.com"), 0);
    /* Issued ten days ago for five days (libfaketime moves openssl's clock back). */
    CU_ASSERT_EQUAL_FATAL(cmd("faketime", "-f", "-10d", "openssl", "x509", "-req", "-inform", "DER",
                              "-in", tpath(csr, "shelf.csr"), "-CA", tpath(cacrt, "partner-ca.pem"),
                              "-CAkey", tpath(cakey, "partner-ca.key"), "-CAcreateserial", "-days",
                              "5", "-copy_extensions", "copy", "-out", tpath(crt, "shelf.pem"),
                              NULL),
                          0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("shelf"), 0);
    tpath(key, "shelf.key");

    CU_ASSERT_EQUAL(
        enroll(&h, "partner/simplereenroll", "shelf", NULL, "--cert", crt, "--key", key), 403);
    body = eg_file_read(h.body_path, NULL);
    CU_ASSERT(body != NULL && strstr(body, "certificate has expired") != NULL);
    free(body);
    CU_ASSERT_EQUAL(
        enroll(&h, "returning/simpleenroll", "shelf", NULL, "--cert", crt, "--key", key), 403);

    CU_ASSERT_EQUAL_FATAL(
        enroll(&h, "returning/simplereenroll", "shelf", NULL, "--cert", crt, "--key", key), 200);
    CU_ASSERT_EQUAL_FATAL(body_to_pem(&h, tpath(pem, "shelf-renewed.pem")), 0);
    check_issued(pem, "shelf.example.com");
    /* Five days and the seconds since openssl ran: whole days. */
    CU_ASSERT(eg_file_line_has(daemon_log, "profile=returning", "expired_for=5d"));
}

static void test_csr_with_bad_signature_is_400(void)
{
    char path[PATH_MAX];
    size_t len;
    char *der;
    http h;

    CU_ASSERT_EQUAL_FATAL(
        make_csr("badsig", "ec", "bad.example.com", "subjectAltName=DNS:bad.example.com"), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(der = eg_file_read(tpath(path, "badsig.csr"), &len));
    der[len - 5] ^= 0x01; /* inside the signature value */
    CU_ASSERT_EQUAL(eg_file_write(path, der, len, 0600), 0);
    free(der);
    CU_ASSERT_EQUAL_FATAL(csr_b64("badsig"), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "badsig", NULL, NULL, NULL, NULL, NULL), 400);
}

/* A DER CSR asking for a validity the way Windows certreq does, in name.csr. */
static int make_csr_asking_validity(const char *name, const char *cn, const char *unit,
                                    const char *count)
{
    char path[PATH_MAX], san[128];
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *ext;
    unsigned char *der = NULL;
    int len = -1, rc = -1;

    snprintf(san, sizeof(san), "DNS:%s", cn);
    if (key != NULL && req != NULL && exts != NULL && X509_REQ_set_pubkey(req, key) == 1 &&
        X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_UTF8,
                                   (const unsigned char *)cn, -1, -1, 0) == 1 &&
        (ext = X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, san)) != NULL &&
        sk_X509_EXTENSION_push(exts, ext) > 0 && X509_REQ_add_extensions(req, exts) == 1 &&
        eg_csr_add_ms_validity(req, unit, count) == 0 &&
        X509_REQ_sign(req, key, EVP_sha256()) > 0 && (len = i2d_X509_REQ(req, &der)) > 0) {
        snprintf(path, sizeof(path), "%s/%s.csr", dir, name);
        rc = eg_file_write(path, der, (size_t)len, 0600);
    }
    OPENSSL_free(der);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    return rc;
}

static void test_policy_refusals_are_403(void)
{
    static const struct {
        const char *name, *newkey, *cn, *ext;
    } cases[] = {
        {"rsa1024", "rsa:1024", "small.example.com", "subjectAltName=DNS:small.example.com"},
        {"evilsan", "ec", "evil.example.com", "subjectAltName=DNS:evil.com"},
        {"serveku", "ec", "srv.example.com", "extendedKeyUsage=serverAuth"},
    };
    size_t i;
    http h;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CU_ASSERT_EQUAL_FATAL(make_csr(cases[i].name, cases[i].newkey, cases[i].cn, cases[i].ext),
                              0);
        CU_ASSERT_EQUAL_FATAL(csr_b64(cases[i].name), 0);
        CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", cases[i].name, NULL, NULL, NULL, NULL, NULL),
                        403);
    }
    /* Two years asked for, where the profile allows MAX_DAYS. */
    CU_ASSERT_EQUAL_FATAL(make_csr_asking_validity("longval", "long.example.com", "Years", "2"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("longval"), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "longval", NULL, NULL, NULL, NULL, NULL), 403);
    /* An RSA key the profile takes, its CSR signed with MD5: the answer says what to use */
    csr_digest = "-md5";
    CU_ASSERT_EQUAL_FATAL(
        make_csr("md5", "rsa:2048", "md5.example.com", "subjectAltName=DNS:md5.example.com"), 0);
    csr_digest = NULL;
    CU_ASSERT_EQUAL_FATAL(csr_b64("md5"), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "md5", NULL, NULL, NULL, NULL, NULL), 403);
    CU_ASSERT(eg_file_count(h.body_path, "signed with MD5") == 1);
    CU_ASSERT(eg_file_count(daemon_log, "dim=signature") >= 1);
}

static void test_wire_errors_have_their_status(void)
{
    char data[PATH_MAX + 1], path[PATH_MAX], user[128];
    char big[20000], *text;
    http h;

    memset(big, 'A', sizeof(big));
    CU_ASSERT_EQUAL(eg_file_write(tpath(path, "big.b64"), big, sizeof(big), 0600), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "big", NULL, NULL, NULL, NULL, NULL), 413);
    CU_ASSERT_EQUAL(eg_file_write(tpath(path, "garbage.b64"), "!!not base64!!\n", 15, 0600), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "garbage", NULL, NULL, NULL, NULL, NULL), 400);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "dev1", "text/plain", NULL, NULL, NULL, NULL), 415);
    /* The 415 names what came, as curl's default form type when -H was forgotten. */
    CU_ASSERT_EQUAL(curl(&h, port, "simpleenroll", "-u", basic_user(user), "--data-binary",
                         at(data, "dev1.b64"), NULL),
                    415);
    text = eg_file_read(h.body_path, NULL);
    CU_ASSERT(text != NULL && strstr(text, "not \"application/x-www-form-urlencoded\"") != NULL);
    free(text);
    /* application/x-pkcs10, the name many MIME tables give .p10 files, is taken. */
    CU_ASSERT_EQUAL(
        enroll(&h, "simpleenroll", "dev1", "application/x-pkcs10", NULL, NULL, NULL, NULL), 200);
    CU_ASSERT_EQUAL(curl(&h, port, "nosuchlabel/cacerts", NULL), 404);
    CU_ASSERT_EQUAL(curl(&h, port, "simpleenroll", "-u", basic_user(user), NULL), 405);
    CU_ASSERT_EQUAL(curl(&h, port, "fullcmc", "-u", basic_user(user), "--data-binary",
                         at(data, "dev1.b64"), NULL),
                    501);
}

/* What a raw request over TLS gets back, headers and body, into res->out. */
static void raw_request(const char *raw)
{
    char req[PATH_MAX], connect[64];
    char *argv[] = {"openssl", "s_client", "-quiet", "-connect", connect, "-CAfile", ca, NULL};

    snprintf(connect, sizeof(connect), "localhost:%u", port);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(tpath(req, "raw.txt"), raw, strlen(raw), 0600), 0);
    eg_child_run(dir, req, argv, res);
}

/* RFC 9112 3.2.2: a server must accept a target in absolute form (a client that talks to it as
   it would to a proxy); civetweb dropped the connection without an answer. */
static void test_an_absolute_form_target_is_answered(void)
{
    char raw[256];

    snprintf(raw, sizeof(raw),
             "GET https://localhost:%u/.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n"
             "Connection: close\r\n\r\n",
             port);
    raw_request(raw);
    CU_ASSERT_EQUAL(strncmp(res->out, "HTTP/1.1 200", 12), 0);
    if (strncmp(res->out, "HTTP/1.1 200", 12) != 0)
        fprintf(stderr, "\n  got: %.200s\n", res->out);
}

/*
 * Framing a proxy in front could read differently from civetweb (request smuggling), sent raw
 * over TLS with a second request behind it: refused with its status, and the connection closed,
 * so the bytes after it are never read as a request. A sound request still keeps the connection.
 */
static void test_ambiguous_framing_is_refused_and_closes(void)
{
    static const struct {
        const char *framing;
        int status;
        const char *reason;
    } cases[] = {
        {"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
         "both Content-Length and Transfer-Encoding"},
        {"Content-Length: 4\r\nContent-Length: 5\r\n\r\nAAAAA", 400,
         "more than one Content-Length"},
        {"Content-Length: 0x10\r\n\r\nAAAA", 400, "Content-Length is not a number"},
        {"Content-Length: +4\r\n\r\nAAAA", 400, "Content-Length is not a number"},
        {"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
         "more than one Transfer-Encoding"},
        /* civetweb ends the headers at a folded line: what follows it would be lost */
        {"X-Folded: a\r\n b\r\nContent-Length: 4\r\n\r\nAAAA", 400, "a folded header line"},
        {"Content-Length: 4\r\nX-Folded: a\r\n b\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0\r\n\r\n",
         400, "a folded header line"},
        {"Content-Length: 4 \r\n\r\nAAAA", 400, "not a DER PKCS#10"}, /* sound: kept open */
    };
    const char *next = "GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n"
                       "Connection: close\r\n\r\n";
    char raw[1024], rest[512], status[32];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool sound = i == sizeof(cases) / sizeof(cases[0]) - 1;
        const char *second;

        snprintf(rest, sizeof(rest), "%s%s", cases[i].framing, next);
        CU_ASSERT_FATAL(raw_text(raw, sizeof(raw), "POST", "simpleenroll", rest) > 0);
        raw_request(raw);
        snprintf(status, sizeof(status), "HTTP/1.1 %d", cases[i].status);
        second = strstr(res->out, "HTTP/1.1 200");
        if (strncmp(res->out, status, strlen(status)) != 0 ||
            strstr(res->out, cases[i].reason) == NULL || (second != NULL) != sound)
            fprintf(stderr, "\ncase %zu answered:\n%s\n", i, res->out);
        CU_ASSERT_EQUAL(strncmp(res->out, status, strlen(status)), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(res->out, cases[i].reason));
        CU_ASSERT_EQUAL(second != NULL, sound); /* the request behind it: only when sound */
    }
}

/* Whether the last raw request got more than one answer: the request hidden behind it too. */
static bool smuggled_answered(void)
{
    return strstr(res->out, "\nHTTP/1.") != NULL; /* a status line after the first answer's */
}

/*
 * Header lines civetweb drops without a word (after a folded line, past its 64 fields) and
 * framings RFC 9112 calls faulty (Transfer-Encoding in HTTP/1.0, an HTTP/1.1 request without
 * Host): refused and closed, so a request hidden behind them is never answered. 64 fields that
 * all arrive are a sound request. A body that stops short of its Content-Length is refused,
 * and nothing is issued from it.
 */
static void test_header_lines_civetweb_drops_are_refused(void)
{
    const char *hidden = "GET /.well-known/est/csrattrs HTTP/1.1\r\nHost: localhost\r\n"
                         "Connection: close\r\n\r\n";
    char raw[4096], fill[2048], rest[3072], b64[PATH_MAX + 1], *csr;
    size_t n = 0;
    int issued;

    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(fill + n, sizeof(fill) - n, "X-Fill-%02d: x\r\n", i);
    /* 64 fields and then the one that frames the body: dropped, so refused. */
    snprintf(rest, sizeof(rest), "%sTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s", fill, hidden);
    CU_ASSERT_FATAL(raw_text(raw, sizeof(raw), "POST", "simpleenroll", rest) > 0);
    raw_request(raw);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "HTTP/1.1 431"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "too many header fields"));
    CU_ASSERT_FALSE(smuggled_answered());
    /* Host, Connection and 62 more: all 64 arrive, a sound request. */
    n = 0;
    for (int i = 0; i < 62; i++)
        n += (size_t)snprintf(fill + n, sizeof(fill) - n, "X-Fill-%02d: x\r\n", i);
    snprintf(raw, sizeof(raw),
             "GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n%s"
             "Connection: close\r\n\r\n",
             fill);
    raw_request(raw);
    CU_ASSERT_EQUAL(strncmp(res->out, "HTTP/1.1 200", 12), 0);

    /* A GET whose Content-Length follows a folded line: its body would be the next request. */
    snprintf(raw, sizeof(raw),
             "GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(hidden), hidden);
    raw_request(raw);
    CU_ASSERT_EQUAL(strncmp(res->out, "HTTP/1.1 400", 12), 0);
    CU_ASSERT_FALSE(smuggled_answered());

    /* HTTP/1.0 with Transfer-Encoding, kept alive. */
    snprintf(raw, sizeof(raw),
             "POST /.well-known/est/simpleenroll HTTP/1.0\r\nHost: localhost\r\n"
             "Connection: keep-alive\r\nContent-Type: application/pkcs10\r\n"
             "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n%s",
             hidden);
    raw_request(raw);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, " 400 "));
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "Transfer-Encoding in an HTTP/1.0 request"));
    CU_ASSERT_FALSE(smuggled_answered());

    /* HTTP/1.1 without Host. */
    snprintf(raw, sizeof(raw), "GET /.well-known/est/cacerts HTTP/1.1\r\n\r\n%s", hidden);
    raw_request(raw);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "HTTP/1.1 400"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "needs exactly one Host header"));
    CU_ASSERT_FALSE(smuggled_answered());

    /* A whole CSR, but a Content-Length 100 octets longer, and the client gone: not issued. */
    CU_ASSERT_EQUAL_FATAL(
        make_csr("short", "ec", "short.example.com", "subjectAltName=DNS:short.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("short"), 0);
    csr = eg_file_read(at(b64, "short.b64") + 1, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr);
    snprintf(rest, sizeof(rest), "Content-Length: %zu\r\n\r\n%s", strlen(csr) + 100, csr);
    free(csr);
    CU_ASSERT_FATAL(raw_text(raw, sizeof(raw), "POST", "simpleenroll", rest) > 0);
    issued = eg_file_count(daemon_log, "event=issued");
    {
        char req[PATH_MAX], connect[64];
        char *argv[] = {"openssl", "s_client", "-quiet", "-no_ign_eof", "-connect",
                        connect,   "-CAfile",  ca,       NULL};

        snprintf(connect, sizeof(connect), "localhost:%u", port);
        CU_ASSERT_EQUAL_FATAL(eg_file_write(tpath(req, "raw.txt"), raw, strlen(raw), 0600), 0);
        eg_child_run(dir, req, argv, res);
    }
    for (int waited = 0; waited < 100 && !eg_file_count(daemon_log, "request body ended after");
         waited++)
        usleep(50 * 1000);
    CU_ASSERT(eg_file_line_has(daemon_log, "event=malformed", "the request body ended after"));
    CU_ASSERT_EQUAL(eg_file_count(daemon_log, "event=issued"), issued);
}

/*
 * HEAD wherever GET (RFC 9110 9.3.2), as a load balancer's health check sends it: the GET's
 * status and Content-Length, and no body, for refusals too; 405 says which methods are allowed.
 */
static void test_head_where_get(void)
{
    const char *end;

    raw_request("HEAD /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n"
                "Connection: close\r\n\r\n");
    CU_ASSERT_EQUAL(strncmp(res->out, "HTTP/1.1 200", 12), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "smime-type=certs-only"));
    CU_ASSERT_PTR_NULL(strstr(res->out, "Content-Length: 0\r\n"));
    CU_ASSERT_PTR_NOT_NULL(end = strstr(res->out, "\r\n\r\n"));
    if (end != NULL)
        CU_ASSERT_EQUAL(end[4], '\0'); /* no body */

    raw_request("HEAD /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
                "Connection: close\r\n\r\n");
    CU_ASSERT_EQUAL(strncmp(res->out, "HTTP/1.1 405", 12), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "Allow: POST\r\n"));
    CU_ASSERT_PTR_NOT_NULL(end = strstr(res->out, "\r\n\r\n"));
    if (end != NULL)
        CU_ASSERT_EQUAL(end[4], '\0');

    raw_request("OPTIONS /.well-known/est/csrattrs HTTP/1.1\r\nHost: localhost\r\n"
                "Connection: close\r\n\r\n");
    CU_ASSERT_EQUAL(strncmp(res->out, "HTTP/1.1 405", 12), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "Allow: GET, HEAD\r\n"));
}

static void test_tls12_only_where_allowed(void)
{
    char addr[64];
    http h;

    CU_ASSERT_EQUAL(curl(&h, port12, "cacerts", "--tls-max", "1.2", NULL), 200);
    CU_ASSERT_NOT_EQUAL(curl(&h, port, "cacerts", "--tls-max", "1.2", NULL), 200);

    /* The log's hint for no cipher in common fits the listener: a TLS 1.3-only one is not
       about TLS 1.2; on a tls12 one, a device offering only P-384 for a P-256 TLS key is told
       about the curve. */
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    CU_ASSERT_NOT_EQUAL(cmd("openssl", "s_client", "-connect", addr, "-ciphersuites",
                            "TLS_AES_128_CCM_SHA256", NULL),
                        0);
    CU_ASSERT(eg_file_count(daemon_log, "no TLS 1.3 cipher suite in common: this listener speaks "
                                        "TLS 1.3 only") >= 1);
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port12);
    CU_ASSERT_NOT_EQUAL(cmd("openssl", "s_client", "-connect", addr, "-tls1_2", "-groups", "P-384",
                            "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", NULL),
                        0);
    CU_ASSERT(eg_file_count(daemon_log, "whose curve (for an EC key) must be among the groups the "
                                        "device offers") >= 1);
}

/* The session of a ticket as it arrives, as curl keeps it. */
static SSL_SESSION *ticket_session;

static int keep_ticket(SSL *ssl, SSL_SESSION *sess)
{
    (void)ssl;
    SSL_SESSION_free(ticket_session);
    ticket_session = sess;
    return 1; /* the reference is ours */
}

/* The highest TLS version tls_open offers; 0: the library's. tls_ipv6: connect to [::1].
   tls_no_ems: do not offer the extended master secret (RFC 7627). */
static int tls_max;
static bool tls_ipv6;
static bool tls_no_ems;

/*
 * A TLS connection to the daemon that stays open between requests, showing the client
 * certificate cert/key (NULL: none) and offering the session offer (NULL: none); with tickets,
 * the session of the server's ticket lands in ticket_session.
 */
static SSL *tls_open(SSL_CTX **ctxp, unsigned p, const char *cert, const char *key,
                     SSL_SESSION *offer, bool tickets)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
    struct sockaddr_in6 sa6 = {.sin6_family = AF_INET6,
                               .sin6_port = htons((uint16_t)p),
                               .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    int fd = -1;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ctx == NULL || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 ||
        (cert != NULL && (SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
                          SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)))
        goto fail;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (tls_max != 0)
        SSL_CTX_set_max_proto_version(ctx, tls_max);
    if (tls_no_ems)
        SSL_CTX_set_options(ctx, SSL_OP_NO_EXTENDED_MASTER_SECRET);
    if (tickets) {
        SSL_CTX_set_session_cache_mode(ctx,
                                       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, keep_ticket);
    }
    if ((fd = socket(tls_ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0)) < 0 ||
        (tls_ipv6 ? connect(fd, (struct sockaddr *)&sa6, sizeof(sa6))
                  : connect(fd, (struct sockaddr *)&sa, sizeof(sa))) != 0 ||
        (ssl = SSL_new(ctx)) == NULL || SSL_set_fd(ssl, fd) != 1 ||
        SSL_set1_host(ssl, "localhost") != 1 || SSL_set_tlsext_host_name(ssl, "localhost") != 1 ||
        (offer != NULL && SSL_set_session(ssl, offer) != 1) || SSL_connect(ssl) != 1)
        goto fail;
    *ctxp = ctx;
    return ssl;
fail:
    SSL_free(ssl);
    if (fd >= 0)
        close(fd);
    SSL_CTX_free(ctx);
    return NULL;
}

static SSL *tls_connect(SSL_CTX **ctxp, unsigned p)
{
    return tls_open(ctxp, p, NULL, NULL, NULL, false);
}

static void tls_close(SSL *ssl, SSL_CTX *ctx)
{
    int fd = ssl ? SSL_get_fd(ssl) : -1;

    SSL_free(ssl);
    if (fd >= 0)
        close(fd);
    SSL_CTX_free(ctx);
}

/* Reads one answer's head (and what follows in the same reads) from ssl into buf. */
static int read_head(SSL *ssl, char *buf, size_t cap)
{
    size_t got = 0;
    int n;

    buf[0] = '\0';
    while (got + 1 < cap && strstr(buf, "\r\n\r\n") == NULL) {
        if ((n = SSL_read(ssl, buf + got, (int)(cap - 1 - got))) <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
    }
    return strncmp(buf, "HTTP/1.1 ", 9) == 0 ? atoi(buf + 9) : -1;
}

/* After read_head: reads the rest of the body its Content-Length announces into buf. */
static void read_body_rest(SSL *ssl, char *buf, size_t cap)
{
    const char *cl = strcasestr(buf, "\r\nContent-Length:"), *end = strstr(buf, "\r\n\r\n");
    size_t got = strlen(buf), want;
    int n;

    if (cl == NULL || end == NULL)
        return;
    want = (size_t)(end + 4 - buf) + strtoul(cl + 17, NULL, 10);
    while (got < want && got + 1 < cap) {
        if ((n = SSL_read(ssl, buf + got, (int)(cap - 1 - got))) <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
    }
}

/* One request on ssl; the answer's head in head (NUL-terminated); the status. */
static int tls_request(SSL *ssl, const char *method, const char *path, const char *body, char *head,
                       size_t cap)
{
    char rest[4096], req[8192];
    int n;

    snprintf(rest, sizeof(rest), "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    if ((n = raw_text(req, sizeof(req), method, path, rest)) < 0 || SSL_write(ssl, req, n) != n)
        return -1;
    return read_head(ssl, head, cap);
}

/* A base64 DER CSR for linked.example.com with a new P-256 key, and challengePassword cp unless
   NULL; free() it. */
static char *linked_csr(const char *cp)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509_REQ *r = X509_REQ_new();
    X509_NAME *n = X509_NAME_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *san =
        X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "DNS:linked.example.com");
    unsigned char *der = NULL;
    char *b64 = NULL;
    int len = 0;

    if (k != NULL && r != NULL && n != NULL && exts != NULL && san != NULL &&
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                                   (const unsigned char *)"linked.example.com", -1, -1, 0) &&
        X509_REQ_set_subject_name(r, n) && X509_REQ_set_pubkey(r, k) &&
        sk_X509_EXTENSION_push(exts, san) && (san = NULL, X509_REQ_add_extensions(r, exts)) &&
        (cp == NULL || X509_REQ_add1_attr_by_NID(r, NID_pkcs9_challengePassword, MBSTRING_ASC,
                                                 (const unsigned char *)cp, -1)) &&
        X509_REQ_sign(r, k, EVP_sha256()) > 0 && (len = i2d_X509_REQ(r, &der)) > 0 &&
        (b64 = malloc(4 * ((size_t)len + 2) / 3 + 4)) != NULL)
        EVP_EncodeBlock((unsigned char *)b64, der, len);
    OPENSSL_free(der);
    X509_EXTENSION_free(san);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_NAME_free(n);
    X509_REQ_free(r);
    EVP_PKEY_free(k);
    return b64;
}

/* The connection's channel binding as the client sees it, base64 into out. */
static void client_binding(SSL *ssl, char *out)
{
    static const char label[] = "EXPORTER-Channel-Binding";
    unsigned char b[64];
    size_t len = 32;

    if (SSL_version(ssl) == TLS1_3_VERSION) {
        CU_ASSERT_FATAL(
            SSL_export_keying_material(ssl, b, len, label, sizeof(label) - 1, NULL, 0, 0) == 1);
    } else { /* tls-unique: the first Finished, ours unless the session was resumed */
        len = SSL_session_reused(ssl) ? SSL_get_peer_finished(ssl, b, sizeof(b))
                                      : SSL_get_finished(ssl, b, sizeof(b));
    }
    CU_ASSERT_FATAL(len > 0 && len <= sizeof(b));
    EVP_EncodeBlock((unsigned char *)out, b, (int)len);
}

/* Whether h's base64 body decodes to DER holding the len octets of needle. */
static bool body_has(const http *h, const char *needle, size_t len)
{
    size_t n, i, k = 0;
    char *b64 = eg_file_read(h->body_path, &n);
    unsigned char *der = b64 ? malloc(n) : NULL;
    int dlen;
    bool found = false;

    for (i = 0; der != NULL && i < n; i++) /* the lines joined */
        if (b64[i] != '\r' && b64[i] != '\n')
            b64[k++] = b64[i];
    if (der != NULL && (dlen = EVP_DecodeBlock(der, (unsigned char *)b64, (int)k)) > 0)
        found = memmem(der, (size_t)dlen, needle, len) != NULL;
    free(der);
    free(b64);
    return found;
}

/* POSTs csr to linked/simpleenroll on ssl; the status, and the answer (head and body) in ans. */
static int linked_enroll(SSL *ssl, const char *csr, char *ans, size_t cap)
{
    size_t got;
    int status = tls_request(ssl, "POST", "linked/simpleenroll", csr, ans, cap);
    const char *cl = strstr(ans, "Content-Length: ");
    const char *body = strstr(ans, "\r\n\r\n");
    size_t want = cl && body ? (size_t)(body + 4 - ans) + strtoul(cl + 16, NULL, 10) : 0;
    int n;

    /* the rest of the body, so that the next request on ssl reads its own answer */
    for (got = strlen(ans); got < want && got + 1 < cap; got += (size_t)n) {
        if ((n = SSL_read(ssl, ans + got, (int)(cap - 1 - got))) <= 0)
            break;
        ans[got + (size_t)n] = '\0';
    }
    return status;
}

/*
 * require_channel_binding (RFC 7030 3.5): the CSR's challengePassword must be the base64 of the
 * connection's tls-exporter (TLS 1.3, RFC 9266) or tls-unique (TLS 1.2, full and resumed
 * handshakes); a CSR made for one connection is refused on another, and one without it too.
 */
static void test_channel_binding_links_the_request_to_tls(void)
{
    char cb[128], ans[16384], *csr, *other;
    SSL_CTX *ctx = NULL, *ctx2 = NULL;
    SSL *ssl, *ssl2;
    http h;

    /* TLS 1.3: the exporter; the same CSR on a second connection is someone else's */
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl = tls_connect(&ctx, port));
    client_binding(ssl, cb);
    CU_ASSERT_FATAL((csr = linked_csr(cb)) != NULL);
    CU_ASSERT_EQUAL(linked_enroll(ssl, csr, ans, sizeof(ans)), 200);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl2 = tls_connect(&ctx2, port));
    CU_ASSERT_EQUAL(linked_enroll(ssl2, csr, ans, sizeof(ans)), 403);
    CU_ASSERT_PTR_NOT_NULL(strstr(ans, "not the base64 of this TLS connection's tls-exporter"));
    free(csr);
    CU_ASSERT_FATAL((other = linked_csr(NULL)) != NULL);
    CU_ASSERT_EQUAL(linked_enroll(ssl2, other, ans, sizeof(ans)), 403);
    CU_ASSERT_PTR_NOT_NULL(strstr(ans, "requires the CSR's challengePassword"));
    free(other);
    /* keep-alive: a second request on the first connection, with its binding, is served */
    CU_ASSERT_FATAL((csr = linked_csr(cb)) != NULL);
    CU_ASSERT_EQUAL(linked_enroll(ssl, csr, ans, sizeof(ans)), 200);
    free(csr);
    tls_close(ssl2, ctx2);
    tls_close(ssl, ctx);

    /* TLS 1.2: tls-unique, from a full handshake and from a resumed one */
    tls_max = TLS1_2_VERSION;
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl = tls_open(&ctx, port12, NULL, NULL, NULL, true));
    client_binding(ssl, cb);
    CU_ASSERT_FATAL((csr = linked_csr(cb)) != NULL);
    CU_ASSERT_EQUAL(linked_enroll(ssl, csr, ans, sizeof(ans)), 200);
    free(csr);
    SSL_shutdown(ssl); /* else SSL_free takes the session for a bad one, not to be resumed */
    tls_close(ssl, ctx);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ticket_session);
    ssl = tls_open(&ctx, port12, NULL, NULL, ticket_session, false);
    tls_max = 0;
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl);
    CU_ASSERT_EQUAL(SSL_session_reused(ssl), 1);
    client_binding(ssl, cb);
    CU_ASSERT_FATAL((csr = linked_csr(cb)) != NULL);
    CU_ASSERT_EQUAL(linked_enroll(ssl, csr, ans, sizeof(ans)), 200);
    free(csr);
    tls_close(ssl, ctx);
    SSL_SESSION_free(ticket_session);
    ticket_session = NULL;

    /* TLS 1.2 without the extended master secret: tls-unique does not identify the connection
       (the triple handshake, RFC 7627), so even its own binding is refused, saying why */
    tls_max = TLS1_2_VERSION;
    tls_no_ems = true;
    ssl = tls_open(&ctx, port12, NULL, NULL, NULL, false);
    tls_max = 0;
    tls_no_ems = false;
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl);
    CU_ASSERT_FALSE(SSL_get_extms_support(ssl));
    client_binding(ssl, cb);
    CU_ASSERT_FATAL((csr = linked_csr(cb)) != NULL);
    CU_ASSERT_EQUAL(linked_enroll(ssl, csr, ans, sizeof(ans)), 403);
    CU_ASSERT_PTR_NOT_NULL(strstr(ans, "without the extended master secret"));
    free(csr);
    tls_close(ssl, ctx);

    /* /csrattrs asks for the challengePassword (its OID, 1.2.840.113549.1.9.7) */
    CU_ASSERT_EQUAL(curl(&h, port, "linked/csrattrs", NULL), 200);
    CU_ASSERT(body_has(&h, "\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x09\x07", 11));
    CU_ASSERT(eg_file_count(daemon_log, "dim=binding") >= 3);
}

/*
 * A body far over max_body, written whole before the client reads, as a device that writes its
 * request and then reads the answer: the write completes and the 413 arrives. estgated reads and
 * drops the rest of the body before it closes (up to 4 MiB); before, it closed with the body
 * unread, the kernel answered the rest with a reset, the client's write failed and the 413 was
 * never read (curl: "Send failure" or "Empty reply from server", for bodies of 93 KB too).
 */
static void test_oversized_body_gets_its_413(void)
{
    size_t len = 2u << 20, sent = 0;
    char req[1024], head[4096], *body = malloc(len);
    SSL_CTX *ctx = NULL;
    SSL *ssl;
    int n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    memset(body, 'A', len);
    signal(SIGPIPE, SIG_IGN); /* a write into a reset connection fails the test, not the process */
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl = tls_connect(&ctx, port));
    /* A device's small send buffer: the body cannot all wait in the kernel's buffers. */
    CU_ASSERT_EQUAL(setsockopt(SSL_get_fd(ssl), SOL_SOCKET, SO_SNDBUF, &(int){16384}, sizeof(int)),
                    0);
    n = raw_text(req, sizeof(req), "POST", "simpleenroll", "Content-Length: 2097152\r\n\r\n");
    CU_ASSERT_FATAL(n > 0 && SSL_write(ssl, req, n) == n);
    while (sent < len && (n = SSL_write(ssl, body + sent, (int)(len - sent))) > 0)
        sent += (size_t)n;
    CU_ASSERT_EQUAL(sent, len);
    CU_ASSERT_EQUAL(read_head(ssl, head, sizeof(head)), 413);
    CU_ASSERT_PTR_NOT_NULL(strstr(head, "request body too large"));
    tls_close(ssl, ctx);
    free(body);
}

/*
 * A client that sends "Expect: 100-continue" waits for "100 Continue" before its body (curl
 * for a second, some device stacks longer): it comes at once, then the final answer. A body
 * over the limit gets 413 instead, without the 100, so the client need not send it.
 */
static void test_expect_100_continue(void)
{
    char path[PATH_MAX], head[4096], req[1024], rest[256];
    SSL_CTX *ctx = NULL;
    size_t len;
    char *body = eg_file_read(tpath(path, "dev1.b64"), &len);
    SSL *ssl = tls_connect(&ctx, port);
    struct timespec t0, t1;
    int n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl);
    snprintf(rest, sizeof(rest), "Expect: 100-continue\r\nContent-Length: %zu\r\n\r\n", len);
    CU_ASSERT_FATAL((n = raw_text(req, sizeof(req), "POST", "simpleenroll", rest)) > 0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CU_ASSERT_EQUAL(SSL_write(ssl, req, n), n);
    CU_ASSERT_EQUAL(read_head(ssl, head, sizeof(head)), 100);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CU_ASSERT(t1.tv_sec - t0.tv_sec < 2); /* at once, not after a timeout */
    CU_ASSERT_EQUAL(SSL_write(ssl, body, (int)len), (int)len);
    CU_ASSERT_EQUAL(read_head(ssl, head, sizeof(head)), 200);
    tls_close(ssl, ctx);

    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl = tls_connect(&ctx, port));
    snprintf(rest, sizeof(rest), "Expect: 100-continue\r\nContent-Length: 99999999\r\n\r\n");
    CU_ASSERT_FATAL((n = raw_text(req, sizeof(req), "POST", "simpleenroll", rest)) > 0);
    CU_ASSERT_EQUAL(SSL_write(ssl, req, n), n);
    CU_ASSERT_EQUAL(read_head(ssl, head, sizeof(head)), 413);
    tls_close(ssl, ctx);

    /* Chunked, so the size shows only in the body: 100, then a whole 413 once it is too long
       (civetweb's own header functions wrote nothing after the 100, not even the status). */
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl = tls_connect(&ctx, port));
    snprintf(rest, sizeof(rest), "Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n");
    CU_ASSERT_FATAL((n = raw_text(req, sizeof(req), "POST", "simpleenroll", rest)) > 0);
    CU_ASSERT_EQUAL(SSL_write(ssl, req, n), n);
    CU_ASSERT_EQUAL(read_head(ssl, head, sizeof(head)), 100);
    {
        size_t big = 65 * 1024 + 1, hl;
        char *chunk = malloc(big + 32);

        CU_ASSERT_PTR_NOT_NULL_FATAL(chunk);
        hl = (size_t)snprintf(chunk, 32, "%zx\r\n", big);
        memset(chunk + hl, 'A', big);
        memcpy(chunk + hl + big, "\r\n0\r\n\r\n", 7);
        CU_ASSERT_EQUAL(SSL_write(ssl, chunk, (int)(hl + big + 7)), (int)(hl + big + 7));
        free(chunk);
    }
    CU_ASSERT_EQUAL(read_head(ssl, head, sizeof(head)), 413);
    CU_ASSERT_PTR_NOT_NULL(strstr(head, "request body too large"));
    tls_close(ssl, ctx);
    free(body);
}

/*
 * One request on a new connection that offers session (NULL: none), with the client certificate
 * cert/key (NULL: none): the status, whether the server resumed, and the session to offer next.
 */
static int resumed_request(SSL_SESSION *offer, const char *cert, const char *key, const char *path,
                           bool *reused, SSL_SESSION **next)
{
    char req[512], head[4096];
    SSL_CTX *ctx = NULL;
    SSL *ssl = tls_open(&ctx, port, cert, key, offer, true);
    int status = -1, n;

    *reused = ssl != NULL && SSL_session_reused(ssl) == 1;
    n = snprintf(req, sizeof(req),
                 "GET /.well-known/est/%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                 path);
    if (ssl != NULL && SSL_write(ssl, req, n) == n) {
        status = read_head(ssl, head, sizeof(head));
        while (SSL_read(ssl, head, sizeof(head)) > 0) /* to the end: the ticket comes with it */
            ;
        SSL_shutdown(ssl); /* else SSL_free takes the session for a bad one, not to be resumed */
    }
    *next = ticket_session;
    ticket_session = NULL;
    tls_close(ssl, ctx);
    return status;
}

/*
 * A device's next connection resumes its TLS session by ticket, so the server key in the token
 * does not sign again (curl makes a connection per request). A connection that showed a client
 * certificate is never resumed: the resumed session would lack the intermediates the request is
 * verified with; it gets a full handshake, and still works.
 */
static void test_tls_sessions_resume_without_client_certificates(void)
{
    char cert[PATH_MAX], key[PATH_MAX];
    SSL_SESSION *first = NULL, *second = NULL, *m1 = NULL, *m2 = NULL;
    bool reused;

    CU_ASSERT_EQUAL(resumed_request(NULL, NULL, NULL, "cacerts", &reused, &first), 200);
    CU_ASSERT_FALSE(reused);
    CU_ASSERT_PTR_NOT_NULL_FATAL(first);
    CU_ASSERT_EQUAL(resumed_request(first, NULL, NULL, "cacerts", &reused, &second), 200);
    CU_ASSERT_TRUE(reused);

    tpath(cert, "dev1.pem");
    tpath(key, "dev1.key");
    CU_ASSERT_EQUAL(resumed_request(NULL, cert, key, "iot/cacerts", &reused, &m1), 200);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m1);
    CU_ASSERT_EQUAL(resumed_request(m1, cert, key, "iot/cacerts", &reused, &m2), 200);
    CU_ASSERT_FALSE(reused);

    /* A device that has a certificate now but resumes a session from before is asked for none
       (resumption has no CertificateRequest): the refusal says so. */
    {
        char head[4096], path[PATH_MAX], *body = eg_file_read(tpath(path, "dev1r.b64"), NULL);
        SSL_CTX *ctx = NULL;
        SSL_SESSION *fresh = NULL;
        SSL *ssl;

        /* a session of its own: OpenSSL's client offers a TLS 1.3 ticket once */
        CU_ASSERT_EQUAL(resumed_request(NULL, NULL, NULL, "cacerts", &reused, &fresh), 200);
        CU_ASSERT_PTR_NOT_NULL_FATAL(fresh);
        ssl = tls_open(&ctx, port, cert, key, fresh, true);
        SSL_SESSION_free(fresh);

        CU_ASSERT_PTR_NOT_NULL_FATAL(body);
        CU_ASSERT_PTR_NOT_NULL(ssl);
        if (ssl != NULL) {
            CU_ASSERT_EQUAL(SSL_session_reused(ssl), 1);
            CU_ASSERT_EQUAL(
                tls_request(ssl, "POST", "iot/simplereenroll", body, head, sizeof(head)), 403);
            read_body_rest(ssl, head, sizeof(head));
            CU_ASSERT_PTR_NOT_NULL(strstr(head, "this connection resumed a TLS session made "
                                                "without one, so none was asked for"));
        }
        tls_close(ssl, ctx);
        free(body);
        SSL_SESSION_free(ticket_session);
        ticket_session = NULL;
    }
    SSL_SESSION_free(first);
    SSL_SESSION_free(second);
    SSL_SESSION_free(m1);
    SSL_SESSION_free(m2);
}

/*
 * The token server goes away. The TLS key is in the token too, so new
 * handshakes fail while it is away; a client on an established keep-alive
 * connection gets 503 with Retry-After, and service resumes when it is back.
 */
static void test_token_unavailable_is_503(void)
{
    char path[PATH_MAX], head[4096];
    SSL_CTX *ctx = NULL;
    size_t len;
    char *body;
    SSL *ssl;
    http h;

    if (kind != EG_TH_P11KIT) {
        fprintf(stderr, "(only the p11-kit-served token has a server to kill) ");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(
        make_csr("down", "ec", "down.example.com", "subjectAltName=DNS:down.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("down"), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(body = eg_file_read(tpath(path, "down.b64"), &len));
    ssl = tls_connect(&ctx, port);
    CU_ASSERT_PTR_NOT_NULL(ssl);
    CU_ASSERT_EQUAL_FATAL(eg_th_server_kill(th), 0);
    if (ssl != NULL) {
        char ref[13];

        CU_ASSERT_EQUAL(tls_request(ssl, "POST", "simpleenroll", body, head, sizeof(head)), 503);
        read_body_rest(ssl, head, sizeof(head));
        CU_ASSERT_PTR_NOT_NULL(strstr(head, "Retry-After:"));
        /* The audit line names the token's failing call, in words, not an OpenSSL code. */
        CU_ASSERT(eg_file_count(daemon_log, "event=unavailable") >= 1);
        CU_ASSERT(eg_file_count(daemon_log, ": CKR_") >= 1);
        CU_ASSERT_EQUAL(eg_file_count(daemon_log, "error:4"), 0);
        /* The client gets a reference to quote, not the token's URI and return code; the
           audit line with that reference has them. */
        CU_ASSERT_PTR_NULL(strstr(head, "CKR_"));
        CU_ASSERT_PTR_NULL(strstr(head, "pkcs11:"));
        CU_ASSERT_EQUAL(eg_answer_ref(strstr(head, "\r\n\r\n"), ref), 0);
        CU_ASSERT(eg_file_line_has(daemon_log, ref, ": CKR_"));
        CU_ASSERT(eg_file_line_has(daemon_log, ref, "event=unavailable"));
    }
    tls_close(ssl, ctx);
    /* A new connection cannot be served: its handshake needs the TLS key's signature. The log
       names the token call and its CK_RV, which civetweb's own line leaves out. */
    ctx = NULL;
    ssl = tls_connect(&ctx, port);
    CU_ASSERT_PTR_NULL(ssl);
    if (ssl != NULL)
        tls_close(ssl, ctx);
    CU_ASSERT(eg_file_line_has(daemon_log, "sslize error", "PKCS#11 call failed ("));
    CU_ASSERT(eg_file_line_has(daemon_log, "sslize error", ": CKR_"));
    CU_ASSERT(eg_file_line_has(daemon_log, "sslize error", "the TLS key's token did not sign"));
    CU_ASSERT_EQUAL_FATAL(eg_th_server_start(th), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "down", NULL, NULL, NULL, NULL, NULL), 200);
    free(body);
}

/* ---- durability ---- */

/* Serial of a PEM certificate file, as DER INTEGER content octets. */
static int cert_serial(const char *pem, uint8_t *serial, size_t *len, uint8_t **der, int *derlen)
{
    X509 *x = read_cert(pem);
    const ASN1_INTEGER *s = x ? X509_get0_serialNumber(x) : NULL;
    int rc = -1;

    if (s != NULL && s->length <= 20) {
        memcpy(serial, s->data, (size_t)s->length);
        *len = (size_t)s->length;
        *der = NULL;
        *derlen = i2d_X509(x, der);
        rc = *derlen > 0 ? 0 : -1;
    }
    X509_free(x);
    return rc;
}

/* How many burst clients have a complete answer on disk. */
static int done_count(char (*out)[PATH_MAX])
{
    struct stat st;
    int i, n = 0;

    for (i = 0; i < BURST; i++)
        n += stat(out[i], &st) == 0 && st.st_size > 100;
    return n;
}

static void test_sigkill_loses_no_received_certificate(void)
{
    char name[32], data[PATH_MAX + 1], out[BURST][PATH_MAX], log[PATH_MAX], url[256], user[128];
    pid_t pids[BURST];
    eg_ledger *lg = NULL;
    struct timespec pause = {0, 10 * 1000 * 1000};
    int i, received = 0, found = 0;

    snprintf(url, sizeof(url), "https://localhost:%u/.well-known/est/simpleenroll", port);
    for (i = 0; i < BURST; i++) {
        snprintf(name, sizeof(name), "burst%d", i);
        char cn[64], ext[96];
        snprintf(cn, sizeof(cn), "burst%d.example.com", i);
        snprintf(ext, sizeof(ext), "subjectAltName=DNS:%s", cn);
        CU_ASSERT_EQUAL_FATAL(make_csr(name, "ec", cn, ext), 0);
        CU_ASSERT_EQUAL_FATAL(csr_b64(name), 0);
    }
    basic_user(user);
    for (i = 0; i < BURST; i++) {
        snprintf(name, sizeof(name), "burst%d.b64", i);
        snprintf(out[i], PATH_MAX, "%s/burst%d.p7", dir, i);
        unlink(out[i]);
        char *argv[] = {"curl",
                        "-sS",
                        "--fail",
                        "--cacert",
                        ca,
                        "-u",
                        user,
                        "-H",
                        "Content-Type: application/pkcs10",
                        "--data-binary",
                        at(data, name),
                        "-o",
                        out[i],
                        url,
                        NULL};
        CU_ASSERT_EQUAL(eg_child_start(argv, tpath(log, "burst.log"), &pids[i]), 0);
    }
    /* Kill it once a few clients hold their certificate, with the rest in flight. Up to
       20 s: under the sanitizers on a loaded machine 40 curl processes start slowly. */
    for (int waited = 0; waited < 2000 && done_count(out) < 3; waited++)
        nanosleep(&pause, NULL);
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&daemon_pid, SIGKILL), 128 + SIGKILL);
    for (i = 0; i < BURST; i++)
        eg_child_wait(pids[i]);

    /* Every certificate a client holds is in the ledger, byte for byte. */
    CU_ASSERT_EQUAL_FATAL(eg_ledger_open(tpath(log, "ledger.db"), NULL, &lg), 0);
    for (i = 0; i < BURST; i++) {
        http h = {0};
        char pem[PATH_MAX];
        uint8_t serial[20], *der = NULL, *stored = NULL;
        size_t slen = 0, stored_len = 0;
        int derlen = 0;

        if (access(out[i], R_OK) != 0)
            continue;
        snprintf(h.body_path, sizeof(h.body_path), "%.4000s", out[i]);
        snprintf(name, sizeof(name), "burst%d.pem", i);
        if (body_to_pem(&h, tpath(pem, name)) != 0)
            continue; /* a partial body is not a certificate the client received */
        received++;
        CU_ASSERT_EQUAL_FATAL(cert_serial(pem, serial, &slen, &der, &derlen), 0);
        {
            int frc = eg_ledger_find_serial(lg, serial, slen, &stored, &stored_len);

            if (frc == 1 && stored_len == (size_t)derlen && memcmp(stored, der, stored_len) == 0)
                found++;
            else
                printf("\n  burst %d: serial of %zu octets, ledger answered %d\n", i, slen, frc);
        }
        free(stored);
        OPENSSL_free(der);
    }
    eg_ledger_close(lg);
    printf("(%d of %d received before the kill) ", received, BURST);
    CU_ASSERT(received >= 3);
    CU_ASSERT_EQUAL(found, received);
    CU_ASSERT_EQUAL_FATAL(daemon_start(), 0);
    {
        http h;
        CU_ASSERT_EQUAL(curl(&h, port, "cacerts", NULL), 200);
    }
}

/* The daemon's log (audit lines included) never holds a password or the PIN. */
static void test_secrets_never_reach_the_log(void)
{
    size_t len, plen, pinlen;
    char *log = eg_file_read(daemon_log, &len), *pw = eg_file_read(pass, &plen);
    char *pin = eg_file_read(eg_th_config(th)->pin_file, &pinlen);

    CU_ASSERT_PTR_NOT_NULL_FATAL(log);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pw);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pin);
    pin[strcspn(pin, "\r\n")] = 0;
    CU_ASSERT_PTR_NOT_NULL(strstr(log, "event=auth.bad_password")); /* the log is the real one */
    CU_ASSERT_PTR_NULL(strstr(log, pw));
    CU_ASSERT_PTR_NULL(strstr(log, "wrong-password"));
    CU_ASSERT_PTR_NULL(strstr(log, pin));
    free(log);
    free(pw);
    free(pin);
}

/* ---- reload ---- */

/* How many times the log says "needle". */
static int log_count(const char *needle)
{
    return eg_file_count(daemon_log, needle);
}

/* calls = auto: one at a time through p11-kit's client, concurrent into SoftHSM itself. */
static void test_log_says_how_the_token_is_called(void)
{
    bool serial = kind == EG_TH_P11KIT;

    CU_ASSERT(log_count(serial ? "calls one at a time" : "calls concurrent") >= 1);
    CU_ASSERT_EQUAL(log_count(serial ? "calls concurrent" : "calls one at a time"), 0);
}

/* Support's first question, answered by both programs and by the daemon's first line. */
static void test_version_is_said(void)
{
    char tool[PATH_MAX], prov[PATH_MAX];
    char *est[] = {(char *)eg_child_built("appliance/estgated", tool), "--version", NULL};
    char *pro[] = {(char *)eg_child_built("provisioning/estgate-provision", prov), "--version",
                   NULL};
    const char *line = "estgated " ESTGATE_VERSION " (OpenSSL 3.";

    CU_ASSERT_EQUAL(eg_child_run(dir, NULL, est, res), 0);
    CU_ASSERT_EQUAL(strncmp(res->out, line, strlen(line)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "civetweb 1.15, SQLite 3."));
    CU_ASSERT_EQUAL(eg_child_run(dir, NULL, pro, res), 0);
    CU_ASSERT_EQUAL(strncmp(res->out, "estgate-provision " ESTGATE_VERSION " (OpenSSL 3.",
                            strlen("estgate-provision " ESTGATE_VERSION " (OpenSSL 3.")),
                    0);
    CU_ASSERT(log_count(line) >= 1);
    CU_ASSERT(log_count(", configuration ") >= 1);
}

/* text with the first from replaced by to, written to path. */
/*
 * An IPv6 listener. Debian 12's civetweb has no IPv6, so estgated serves it through its relay:
 * curl enrolls over [::1] with Basic and renews over mTLS, the log names the device by its IPv6
 * address (the per-address password limit keys on the same), and SIGTERM stops it cleanly. A
 * second estgated on the same token, with a ledger of its own.
 */
static void test_ipv6_listener_serves_devices(void)
{
    char ini6[PATH_MAX], ini6b[PATH_MAX], log6[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], user[128];
    char data[PATH_MAX + 1], *text = eg_file_read(ini, &(size_t){0});
    const char *to6[] = {"--connect-to", "localhost::[::1]:"};
    unsigned p6[2];
    pid_t pid6 = 0;
    http h;

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(eg_file_write_replaced(tpath(ini6b, "ipv6-a.ini"), text,
                                                 "listen = 127.0.0.1:0 tls12\n",
                                                 "listen = [::1]:0\n"),
                          0);
    free(text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text = eg_file_read(ini6b, &(size_t){0}));
    CU_ASSERT_EQUAL_FATAL(eg_file_write_replaced(tpath(ini6, "ipv6.ini"), text,
                                                 "ledger = ledger.db\n", "ledger = ledger6.db\n"),
                          0);
    free(text);
    /* Two listeners, as in the main configuration: 127.0.0.1 first, then [::1]. */
    CU_ASSERT_EQUAL_FATAL(eg_fx_daemon_start(ini6, tpath(log6, "ipv6.log"), &pid6, p6, 2), 0);
    CU_ASSERT(eg_file_count(log6, "listening on https://[::1]:") == 1);

    CU_ASSERT_EQUAL_FATAL(
        make_csr("six", "ec", "six.example.com", "subjectAltName=DNS:six.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("six"), 0);
    CU_ASSERT_EQUAL(curl(&h, p6[1], "simpleenroll", to6[0], to6[1], "-u", basic_user(user), "-H",
                         "Content-Type: application/pkcs10", "--data-binary", at(data, "six.b64"),
                         NULL),
                    200);
    CU_ASSERT_EQUAL(body_to_pem(&h, tpath(cert, "six.pem")), 0);
    CU_ASSERT(eg_file_count(log6, "event=issued profile=default principal=basic:alice "
                                  "peer=[::1]:") == 1);
    /* Renewal over mTLS through the relay: TLS runs from curl to estgated. */
    CU_ASSERT_EQUAL(curl(&h, p6[1], "iot/simplereenroll", to6[0], to6[1], "--cert", cert, "--key",
                         tpath(key, "six.key"), "-H", "Content-Type: application/pkcs10",
                         "--data-binary", at(data, "six.b64"), NULL),
                    200);
    CU_ASSERT_EQUAL(curl(&h, p6[1], "simpleenroll", to6[0], to6[1], "-u", "alice:wrong", "-H",
                         "Content-Type: application/pkcs10", "--data-binary", at(data, "six.b64"),
                         NULL),
                    401);
    CU_ASSERT(eg_file_count(log6, "event=auth.bad_password profile=default principal=basic:alice "
                                  "peer=[::1]:") == 1);
    { /* the channel binding reaches a relayed request: it is the TLS connection's, not the leg's */
        char cb[128], ans[16384], *csr;
        SSL_CTX *ctx = NULL;
        SSL *ssl;

        tls_ipv6 = true;
        ssl = tls_connect(&ctx, p6[1]);
        tls_ipv6 = false;
        CU_ASSERT_PTR_NOT_NULL_FATAL(ssl);
        client_binding(ssl, cb);
        CU_ASSERT_FATAL((csr = linked_csr(cb)) != NULL);
        CU_ASSERT_EQUAL(linked_enroll(ssl, csr, ans, sizeof(ans)), 200);
        free(csr);
        tls_close(ssl, ctx);
    }
    /* A failed handshake through the relay names the device, not the relay's loopback leg. */
    CU_ASSERT_NOT_EQUAL(curl(&h, p6[1], "cacerts", to6[0], to6[1], "--tls-max", "1.2", NULL), 200);
    for (int i = 0; i < 100 && !eg_file_line_has(log6, "unsupported protocol, from [::1]:",
                                                 "needs a listener with tls12");
         i++)
        usleep(50 * 1000);
    CU_ASSERT(
        eg_file_line_has(log6, "unsupported protocol, from [::1]:", "needs a listener with tls12"));
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&pid6, SIGTERM), 0);
    CU_ASSERT(eg_file_count(log6, "every request in flight answered") == 1);
}

/* Waits (up to 10 s) for the log to say needle more than before times. */
#define FAKETIME_LIB "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"

/*
 * The daily expiry check runs while estgated runs, with the date of that day: a daemon whose
 * clocks (wall and monotonic, through libfaketime, Debian's faketime) jump a day ahead warns
 * again that its TLS certificate is a day nearer its end. (The ledger keeper's hourly pass
 * cannot be shown so: it sleeps in pthread_cond_timedwait, which libfaketime does not move.)
 * Not under AddressSanitizer, whose runtime must be the first library loaded, before a
 * preloaded one.
 */
static void test_the_daily_expiry_check_runs(void)
{
#if defined(__SANITIZE_ADDRESS__)
    printf("(skipped under AddressSanitizer) ");
#else
    char ini2[PATH_MAX], log2[PATH_MAX], spec[PATH_MAX], *text = eg_file_read(ini, &(size_t){0});
    unsigned p2[2];
    pid_t pid2 = 0;
    int i;

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(access(FAKETIME_LIB, R_OK), 0); /* image/deps.sh test installs it */
    CU_ASSERT_EQUAL_FATAL(eg_file_write_replaced(tpath(ini2, "daily.ini"), text,
                                                 "ledger = ledger.db\n",
                                                 "ledger = ledger-daily.db\n"),
                          0);
    free(text);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(tpath(spec, "faketime.spec"), "+0\n", 3, 0644), 0);
    setenv("LD_PRELOAD", FAKETIME_LIB, 1);
    setenv("FAKETIME_TIMESTAMP_FILE", spec, 1);
    setenv("FAKETIME_CACHE_DURATION", "1", 1); /* the file is read again every second */
    i = eg_fx_daemon_start(ini2, tpath(log2, "daily.log"), &pid2, p2, 2);
    unsetenv("LD_PRELOAD");
    unsetenv("FAKETIME_TIMESTAMP_FILE");
    unsetenv("FAKETIME_CACHE_DURATION");
    CU_ASSERT_EQUAL_FATAL(i, 0);
    CU_ASSERT_EQUAL(eg_file_count(log2, "warning: the TLS certificate ("), 1);
    CU_ASSERT_EQUAL(eg_file_count(log2, ", in 29 days;"), 1);

    CU_ASSERT_EQUAL(eg_file_write(spec, "+1d\n", 4, 0644), 0);
    for (i = 0; i < 100 && eg_file_count(log2, "warning: the TLS certificate (") < 2; i++)
        usleep(100000);
    CU_ASSERT_EQUAL(eg_file_count(log2, "warning: the TLS certificate ("), 2);
    CU_ASSERT_EQUAL(eg_file_count(log2, ", in 28 days;"), 1);
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&pid2, SIGTERM), 0);
#endif
}

static int wait_log(const char *needle, int before)
{
    for (int i = 0; i < 200; i++) {
        if (log_count(needle) > before)
            return 0;
        usleep(50000);
    }
    return -1;
}

/* SIGHUP, then waits for the log to say needle once more. */
static int sighup_and_wait(const char *needle)
{
    int before = log_count(needle);

    return kill(daemon_pid, SIGHUP) == 0 ? wait_log(needle, before) : -1;
}

/*
 * SIGTERM while a request is in flight (its body half sent): that request is still answered,
 * 200 with its certificate; a request that arrives meanwhile gets 503 with Retry-After; then
 * estgated exits 0. civetweb drops whatever a handler writes once it is stopping, so before
 * the drain every client in flight at a restart got an empty reply.
 */
static void test_sigterm_answers_requests_in_flight(void)
{
    char path[PATH_MAX], head[8192], req[8192], rest[64];
    SSL_CTX *actx = NULL, *bctx = NULL;
    SSL *a = NULL, *b = NULL;
    size_t len, half;
    char *body;
    int n;

    CU_ASSERT_EQUAL_FATAL(
        make_csr("term", "ec", "term.example.com", "subjectAltName=DNS:term.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("term"), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(body = eg_file_read(tpath(path, "term.b64"), &len));
    snprintf(rest, sizeof(rest), "Content-Length: %zu\r\n\r\n", len);
    CU_ASSERT_FATAL((n = raw_text(req, sizeof(req), "POST", "simpleenroll", rest)) > 0);
    half = len / 2;
    CU_ASSERT_PTR_NOT_NULL_FATAL(a = tls_connect(&actx, port));
    CU_ASSERT_EQUAL_FATAL(SSL_write(a, req, n), n);
    CU_ASSERT_EQUAL_FATAL(SSL_write(a, body, (int)half), (int)half);
    sleep(1); /* the handler has the headers and waits for the rest of the body */
    CU_ASSERT_EQUAL_FATAL(kill(daemon_pid, SIGTERM), 0);
    CU_ASSERT_EQUAL(wait_log("estgated: SIGTERM, stopping", 0), 0);

    /* meanwhile, a new request: 503, try again */
    if ((b = tls_connect(&bctx, port)) != NULL) {
        const char *get = "GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n\r\n";

        SSL_write(b, get, (int)strlen(get));
        CU_ASSERT_EQUAL(read_head(b, head, sizeof(head)), 503);
        CU_ASSERT_PTR_NOT_NULL(strstr(head, "Retry-After: "));
        CU_ASSERT(log_count("reason=\"estgated is stopping; try again shortly\"") >= 1);
    }
    tls_close(b, bctx);

    /* the request in flight completes and is answered */
    CU_ASSERT_EQUAL(SSL_write(a, body + half, (int)(len - half)), (int)(len - half));
    CU_ASSERT_EQUAL(read_head(a, head, sizeof(head)), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(head, "Connection: close"));
    tls_close(a, actx);
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&daemon_pid, 0), 0); /* reaps: it exits by itself */
    CU_ASSERT(log_count("estgated: every request in flight answered") >= 1);
    free(body);
    CU_ASSERT_EQUAL_FATAL(daemon_start(), 0);
}

/* Whether the server offers a client CA named cn in its CertificateRequest. */
static bool offers_ca(const char *cn)
{
    SSL_CTX *ctx = NULL;
    SSL *ssl = tls_connect(&ctx, port);
    STACK_OF(X509_NAME) *names = ssl ? SSL_get_client_CA_list(ssl) : NULL;
    char buf[256];
    bool found = false;

    for (int i = 0; i < sk_X509_NAME_num(names) && !found; i++) {
        X509_NAME_get_text_by_NID(sk_X509_NAME_value(names, i), NID_commonName, buf, sizeof(buf));
        found = strcmp(buf, cn) == 0;
    }
    tls_close(ssl, ctx);
    return found;
}

/*
 * The partner profile's client CA bundle gains a second CA: after SIGHUP its
 * devices enroll and the handshake offers its name, without a restart. A
 * file with an error changes nothing, and the daemon says so.
 */
static void test_sighup_reloads_client_trust(void)
{
    char key[PATH_MAX], crt[PATH_MAX], ckey[PATH_MAX], csr[PATH_MAX], ccrt[PATH_MAX];
    char bundle[PATH_MAX], saved[PATH_MAX];
    size_t len1, len2, inilen;
    char *one, *two, *both = NULL, *text;
    http h;

    CU_ASSERT_EQUAL_FATAL(
        cmd("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", tpath(key, "partner2-ca.key"), "-out",
            tpath(crt, "partner2-ca.pem"), "-subj", "/CN=Partner CA 2", "-days", "30", "-addext",
            "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign", NULL),
        0);
    CU_ASSERT_EQUAL_FATAL(cmd("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                              "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                              tpath(ckey, "partner2-dev.key"), "-out",
                              tpath(csr, "partner2-dev.csr"), "-subj", "/CN=p2.example.com", NULL),
                          0);
    CU_ASSERT_EQUAL_FATAL(cmd("openssl", "x509", "-req", "-in", csr, "-CA", crt, "-CAkey", key,
                              "-CAcreateserial", "-days", "30", "-out",
                              tpath(ccrt, "partner2-dev.pem"), NULL),
                          0);
    CU_ASSERT_EQUAL(
        enroll(&h, "partner/simpleenroll", "dev1r", NULL, "--cert", ccrt, "--key", ckey), 403);
    CU_ASSERT(!offers_ca("Partner CA 2"));

    /* Both CAs in the partner bundle (the operator's edit), then SIGHUP. */
    one = eg_file_read(tpath(bundle, "partner-ca.pem"), &len1);
    two = eg_file_read(crt, &len2);
    CU_ASSERT_FATAL(one != NULL && two != NULL && (both = malloc(len1 + len2)) != NULL);
    memcpy(both, one, len1);
    memcpy(both + len1, two, len2);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(bundle, both, len1 + len2, 0644), 0);
    CU_ASSERT_EQUAL_FATAL(sighup_and_wait("estgated: reloaded "), 0);
    CU_ASSERT_EQUAL(
        enroll(&h, "partner/simpleenroll", "dev1r", NULL, "--cert", ccrt, "--key", ckey), 200);
    CU_ASSERT(offers_ca("Partner CA 2"));

    /* A broken file: refused, and the running configuration (with both CAs) stays. */
    text = eg_file_read(ini, &inilen);
    CU_ASSERT_FATAL(text != NULL);
    tpath(saved, "estgated.ini.saved");
    CU_ASSERT_EQUAL_FATAL(eg_file_write(saved, text, inilen, 0600), 0);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(ini, "[server]\nthreads = many\n", 24, 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("reload refused; the running configuration stays"), 0);
    CU_ASSERT_EQUAL(
        enroll(&h, "partner/simpleenroll", "dev1r", NULL, "--cert", ccrt, "--key", ckey), 200);
    CU_ASSERT_EQUAL(curl(&h, port, "cacerts", NULL), 200);

    /* Back as it was, for the tests after this one. */
    CU_ASSERT_EQUAL(eg_file_write(ini, text, inilen, 0600), 0);
    CU_ASSERT_EQUAL(eg_file_write(bundle, one, len1, 0644), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    CU_ASSERT_EQUAL(
        enroll(&h, "partner/simpleenroll", "dev1r", NULL, "--cert", ccrt, "--key", ckey), 403);
    free(text);
    free(both);
    free(one);
    free(two);
}

/* Writes text (a configuration, len octets) to path with line put in just after the first
   anchor (before it, with before); a caller that edits the running file writes text back. */
static int ini_with_line(const char *path, const char *text, size_t len, const char *anchor,
                         bool before, const char *line)
{
    const char *a = strstr(text, anchor);
    size_t pos, n = strlen(line);
    char *edited;
    int rc;

    if (a == NULL || (edited = malloc(len + n)) == NULL)
        return -1;
    pos = (size_t)(a - text) + (before ? 0 : strlen(anchor));
    memcpy(edited, text, pos);
    memcpy(edited + pos, line, n);
    memcpy(edited + pos + n, text + pos, len - pos);
    rc = eg_file_write(path, edited, len + n, 0600);
    free(edited);
    return rc;
}

typedef struct burst {
    SSL *ssl;
    const char *request;
    pthread_barrier_t *start;
    int status;
} burst;

static void *burst_run(void *arg)
{
    burst *b = arg;
    char head[4096];
    int n = (int)strlen(b->request);

    pthread_barrier_wait(b->start);
    b->status = SSL_write(b->ssl, b->request, n) == n ? read_head(b->ssl, head, sizeof(head)) : -1;
    return NULL;
}

/*
 * Right after a reload, a fleet sharing one password asks all at once: 32 requests from a user
 * whose hash has the production cost (about half a second of the one core allowed for password
 * checks here). Every one is answered 200. Without the verified credentials carried over the
 * reload and identical checks shared, they were checked one by one and most got 503 "too many
 * password checks at once".
 */
static void test_burst_after_reload_is_served(void)
{
    enum { N = 32 };
    char path[PATH_MAX], *hash = NULL, line[256], *request, *rest;
    char *body = eg_file_read(tpath(path, "dev1.b64"), NULL);
    char *text = NULL;
    size_t inilen, cap;
    SSL_CTX *ctx[N] = {NULL};
    pthread_t threads[N];
    pthread_barrier_t start;
    burst b[N];
    int ok = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text = eg_file_read(ini, &inilen));
    CU_ASSERT_EQUAL_FATAL(eg_password_hash("fleet-secret", &hash), 0);
    snprintf(line, sizeof(line), "user = fleet:%s\n", hash);
    CU_ASSERT_EQUAL_FATAL(ini_with_line(ini, text, inilen, "user = alice:", true, line), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    /* the fleet's first device, then the reload that empties a cache that is not carried */
    cap = strlen(body) + 64;
    CU_ASSERT_PTR_NOT_NULL_FATAL(rest = malloc(cap));
    snprintf(rest, cap, "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    CU_ASSERT_PTR_NOT_NULL_FATAL(request = malloc(cap + 512));
    CU_ASSERT_FATAL(
        raw_text_as(request, cap + 512, "fleet:fleet-secret", "POST", "simpleenroll", rest) > 0);
    free(rest);
    b[0] = (burst){.ssl = tls_connect(&ctx[0], port), .request = request, .start = &start};
    pthread_barrier_init(&start, NULL, 1);
    burst_run(&b[0]);
    pthread_barrier_destroy(&start);
    tls_close(b[0].ssl, ctx[0]);
    CU_ASSERT_EQUAL(b[0].status, 200);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);

    pthread_barrier_init(&start, NULL, N);
    for (int i = 0; i < N; i++) {
        b[i] = (burst){.ssl = tls_connect(&ctx[i], port), .request = request, .start = &start};
        CU_ASSERT_PTR_NOT_NULL_FATAL(b[i].ssl);
    }
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&threads[i], NULL, burst_run, &b[i]), 0);
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        ok += b[i].status == 200;
        tls_close(b[i].ssl, ctx[i]);
    }
    if (ok != N)
        fprintf(stderr, "\n  %d of %d answered 200\n", ok, N);
    CU_ASSERT_EQUAL(ok, N);
    pthread_barrier_destroy(&start);

    CU_ASSERT_EQUAL(eg_file_write(ini, text, inilen, 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    free(request);
    free(hash);
    free(text);
    free(body);
}

/*
 * [token] takes effect at a restart only: a reload that changes calls says so
 * and applies the rest, and the token goes on being called as before.
 */
static void test_sighup_leaves_token_calls_for_a_restart(void)
{
    const char *other = kind == EG_TH_P11KIT ? "concurrent" : "serial";
    const char *was = kind == EG_TH_P11KIT ? "calls one at a time" : "calls concurrent";
    size_t inilen;
    char *text = eg_file_read(ini, &inilen), line[64];
    int logged = log_count(was);
    http h;

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    snprintf(line, sizeof(line), "calls = %s\n", other);
    CU_ASSERT_EQUAL_FATAL(ini_with_line(ini, text, inilen, "recover_ms = 1500\n", false, line), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    CU_ASSERT(log_count("reload: [token] calls changed; it takes effect at the next restart") >= 1);
    CU_ASSERT_EQUAL(log_count(was), logged); /* the token was not opened again */
    CU_ASSERT_EQUAL_FATAL(
        make_csr("calls1", "ec", "calls1.example.com", "subjectAltName=DNS:calls1.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("calls1"), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "calls1", NULL, NULL, NULL, NULL, NULL), 200);

    CU_ASSERT_EQUAL(eg_file_write(ini, text, inilen, 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    free(text);
}

/*
 * A reload waits on the token (it loads the CA keys again) while the token hangs (the p11-kit
 * server stopped); a device on a connection opened before still gets /cacerts at once, and the
 * reload is taken once the token answers. It once held the request lock across the token's calls.
 */
static void test_a_reload_on_a_hung_token_holds_no_request(void)
{
    struct timeval limit = {.tv_sec = 5};
    char head[8192];
    SSL_CTX *ctx = NULL;
    int reloaded = log_count("estgated: reloaded "), status;
    uint64_t t0;
    SSL *ssl;

    if (kind != EG_TH_P11KIT) {
        fprintf(stderr, "(only a p11-kit server can be stopped to make a token hang) ");
        return;
    }
    /* The handshake signs with the token's TLS key: made before the token hangs. */
    ssl = tls_connect(&ctx, port);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl);
    CU_ASSERT_EQUAL(setsockopt(SSL_get_fd(ssl), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit)), 0);
    CU_ASSERT_EQUAL_FATAL(eg_th_server_signal(th, SIGSTOP), 0);
    CU_ASSERT_EQUAL(kill(daemon_pid, SIGHUP), 0);
    CU_ASSERT_EQUAL(wait_log("estgated: SIGHUP, reloading ", log_count("SIGHUP, reloading ")), 0);
    usleep(300000); /* into the CA keys' token calls */
    t0 = eg_mono_ms();
    status = tls_request(ssl, "GET", "cacerts", "", head, sizeof(head));
    CU_ASSERT_EQUAL(status, 200);
    CU_ASSERT(eg_mono_ms() - t0 < 2000);
    if (status != 200)
        fprintf(stderr, "\n  /cacerts during the reload: %d after %lld ms\n", status,
                (long long)(eg_mono_ms() - t0));
    CU_ASSERT_EQUAL(log_count("estgated: reloaded "), reloaded); /* still waiting on the token */
    CU_ASSERT_EQUAL(eg_th_server_signal(th, SIGCONT), 0);
    CU_ASSERT_EQUAL(wait_log("estgated: reloaded ", reloaded), 0);
    tls_close(ssl, ctx);
}

static int provision(const char *tool, ...);

/* The serial of the certificate the server presented on ssl, as hex, into out. */
static int peer_serial(SSL *ssl, char *out, size_t cap)
{
    X509 *x = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    BIGNUM *bn = x ? ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL) : NULL;
    char *hex = bn ? BN_bn2hex(bn) : NULL;

    if (hex != NULL)
        snprintf(out, cap, "%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    X509_free(x);
    return hex != NULL ? 0 : -1;
}

/* A new handshake on port p: the serial of the server's certificate, into out. */
static int handshake_serial(unsigned p, char *out, size_t cap)
{
    SSL_CTX *ctx = NULL;
    SSL *ssl = tls_connect(&ctx, p);
    int rc = peer_serial(ssl, out, cap);

    tls_close(ssl, ctx);
    return rc;
}

/*
 * A TLS certificate renewed as the operator guide says (estgate-provision tls create under a new
 * label, tls_key and tls_chain edited, SIGHUP): new handshakes on both listeners get the new
 * certificate, and a connection opened before keeps its own and is still served. A reload whose
 * chain is not its key's changes nothing and says why.
 */
static void test_sighup_renews_the_tls_certificate(void)
{
    static const char was[] = "object=tls;type=private\ntls_chain = tls-chain.pem\n";
    char tool[PATH_MAX], chain2[PATH_MAX], head[4096], first[64], now[64], now12[64];
    char *text = eg_file_read(ini, &(size_t){0});
    SSL_CTX *octx = NULL;
    SSL *old = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(provision(eg_child_built("provisioning/estgate-provision", tool), "tls",
                                    "create", "--label", "tls2", "--key", "ec-p256", "--ca-label",
                                    "ca", "--dns", "localhost", "--ip", "127.0.0.1", "--days", "60",
                                    "--out", tpath(chain2, "tls2-chain.pem"), NULL),
                          0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(old = tls_connect(&octx, port));
    CU_ASSERT_EQUAL_FATAL(peer_serial(old, first, sizeof(first)), 0);

    /* The new label and chain: served from the next handshake on. */
    CU_ASSERT_EQUAL_FATAL(
        eg_file_write_replaced(ini, text, was,
                               "object=tls2;type=private\ntls_chain = tls2-chain.pem\n"),
        0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    CU_ASSERT_EQUAL(log_count("tls_key changed"), 0);
    CU_ASSERT(handshake_serial(port, now, sizeof(now)) == 0 && strcmp(now, first) != 0);
    CU_ASSERT(handshake_serial(port12, now12, sizeof(now12)) == 0 && strcmp(now12, now) == 0);
    CU_ASSERT_EQUAL(tls_request(old, "GET", "cacerts", "", head, sizeof(head)), 200);
    tls_close(old, octx);

    /* The new key with the old chain: refused as a whole; the new certificate stays. */
    CU_ASSERT_EQUAL_FATAL(
        eg_file_write_replaced(ini, text, was,
                               "object=tls2;type=private\ntls_chain = tls-chain.pem\n"),
        0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reload failed; the running configuration stays"), 0);
    CU_ASSERT(log_count("does not match the chain") >= 1);
    CU_ASSERT(handshake_serial(port, now12, sizeof(now12)) == 0 && strcmp(now12, now) == 0);

    /* Back as it was, for the tests after this one. */
    CU_ASSERT_EQUAL(eg_file_write(ini, text, strlen(text), 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    CU_ASSERT(handshake_serial(port, now, sizeof(now)) == 0 && strcmp(now, first) == 0);
    free(text);
}

/* How many PEM certificates the file at path holds. */
static int pem_count(const char *path)
{
    char *text = eg_file_read(path, &(size_t){0}), *p = text;
    int n = 0;

    while (p != NULL && (p = strstr(p, "-----BEGIN CERTIFICATE-----")) != NULL) {
        n++;
        p++;
    }
    free(text);
    return text != NULL ? n : -1;
}

/*
 * A CA key rollover as the operator guide says: `ca renew --new-label`, the profile's ca_key
 * and ca_chain switched, SIGHUP. /cacerts holds the four certificates, and with them a device
 * that trusts only the old root verifies a certificate the new key issued; without them it
 * cannot. Put back after, for the tests that follow.
 */
static void test_sighup_serves_a_rolled_over_ca(void)
{
    char tool[PATH_MAX], roll[PATH_MAX], cacerts[PATH_MAX], pem[PATH_MAX];
    char from[PATH_MAX + 64], to[PATH_MAX + 64];
    char *text = eg_file_read(ini, &(size_t){0});
    X509 *next = NULL, *leaf = NULL;
    http h;

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(provision(eg_child_built("provisioning/estgate-provision", tool), "ca",
                                    "renew", "--label", "ca", "--new-label", "ca-next", "--key",
                                    "ec-p256", "--days", "60", "--out",
                                    tpath(roll, "ca-rollover.pem"), NULL),
                          0);
    snprintf(from, sizeof(from), "object=ca;type=private\nca_chain = %s\n", ca);
    snprintf(to, sizeof(to), "object=ca-next;type=private\nca_chain = %s\n", roll);
    CU_ASSERT_EQUAL_FATAL(eg_file_write_replaced(ini, text, from, to), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);

    CU_ASSERT_EQUAL_FATAL(curl(&h, port, "cacerts", NULL), 200);
    CU_ASSERT_EQUAL_FATAL(body_to_pem(&h, tpath(cacerts, "rollover-cacerts.pem")), 0);
    CU_ASSERT_EQUAL(pem_count(cacerts), 4);
    CU_ASSERT_EQUAL_FATAL(
        make_csr("rolled", "ec", "rolled.example.com", "subjectAltName=DNS:rolled.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("rolled"), 0);
    CU_ASSERT_EQUAL_FATAL(enroll(&h, "simpleenroll", "rolled", NULL, NULL, NULL, NULL, NULL), 200);
    CU_ASSERT_EQUAL_FATAL(body_to_pem(&h, tpath(pem, "rolled.pem")), 0);
    /* issued by the new key, and verified by a device that knows only the old root */
    next = read_cert(roll);
    leaf = read_cert(pem);
    CU_ASSERT(next != NULL && leaf != NULL &&
              ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf),
                                    X509_get0_subject_key_id(next)) == 0);
    CU_ASSERT_EQUAL(cmd("openssl", "verify", "-CAfile", ca, "-untrusted", cacerts, pem, NULL), 0);
    CU_ASSERT_NOT_EQUAL(cmd("openssl", "verify", "-CAfile", ca, pem, NULL), 0);

    CU_ASSERT_EQUAL(eg_file_write(ini, text, strlen(text), 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    X509_free(next);
    X509_free(leaf);
    free(text);
}

/*
 * A label that matches no token: estgated does not start, and its message says which tokens the
 * module does show, in plain lines (no OpenSSL error codes, no source file names).
 */
static void test_wrong_token_label_names_the_tokens_present(void)
{
    const char *label = eg_th_config(th)->token_label;
    char tool[PATH_MAX], wrong[PATH_MAX], line[128], shows[160];
    char *argv[] = {(char *)eg_child_built("appliance/estgated", tool), "-c",
                    tpath(wrong, "wrong-label.ini"), NULL};
    size_t inilen;
    char *text = eg_file_read(ini, &inilen);

    snprintf(line, sizeof(line), "\nlabel = %s", label);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    /* a copy in which "label = L" reads "label = L-typo" */
    CU_ASSERT_EQUAL_FATAL(ini_with_line(wrong, text, inilen, line, false, "-typo"), 0);
    CU_ASSERT_EQUAL(eg_child_run(dir, NULL, argv, res), 69);
    snprintf(shows, sizeof(shows), "the module shows '%s'", label);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "no token labelled"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, shows));
    CU_ASSERT_PTR_NULL(strstr(res->err, ".c:"));
    CU_ASSERT_PTR_NULL(strstr(res->err, ":error:"));
    free(text);
}

/* Opens a TCP connection to the TLS 1.3 listener and closes it without a handshake. */
static void connect_and_close(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    if (fd >= 0)
        close(fd);
}

/*
 * [server] log_level: a connection closed before its handshake (a load balancer's TCP check)
 * writes nothing at info; at warning, set by a reload, a success writes no line (a new
 * certificate or one sent again; the ledger rows stay) while a refusal still does.
 */
static void test_log_level(void)
{
    size_t inilen;
    char *text = eg_file_read(ini, &inilen), data[PATH_MAX + 1];
    int eof = log_count("unexpected eof"), issued, badpw;
    http h;

    connect_and_close();
    usleep(300000);
    CU_ASSERT_EQUAL(log_count("unexpected eof"), eof);

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(
        ini_with_line(ini, text, inilen, "\n[token]\n", true, "\nlog_level = warning"), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    issued = log_count("event=issued");
    badpw = log_count("event=auth.bad_password");
    CU_ASSERT_EQUAL_FATAL(
        make_csr("quiet", "ec", "quiet.example.com", "subjectAltName=DNS:quiet.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("quiet"), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "quiet", NULL, NULL, NULL, NULL, NULL), 200);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "quiet", NULL, NULL, NULL, NULL, NULL), 200);
    CU_ASSERT_EQUAL(curl(&h, port, "simpleenroll", "-u", "alice:wrong", "-H",
                         "Content-Type: application/pkcs10", "--data-binary", at(data, "quiet.b64"),
                         NULL),
                    401);
    CU_ASSERT_EQUAL(log_count("event=issued"), issued);
    CU_ASSERT_EQUAL(log_count("event=auth.bad_password"), badpw + 1);

    CU_ASSERT_EQUAL(eg_file_write(ini, text, inilen, 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "quiet", NULL, NULL, NULL, NULL, NULL), 200);
    CU_ASSERT_EQUAL(log_count("event=issued"), issued + 1); /* info again: "(sent again)" */
    free(text);
}

/*
 * [server] auth_failures_per_minute, set by a reload: past the limit, a wrong password from the
 * same address is 429 with Retry-After, audited as auth.throttled, without a password check.
 */
/* name.pem, from a Basic enrollment on the default profile of a new key and CSR for cn. */
static int enrolled_cert(const char *name, const char *cn)
{
    char ext[160], file[64], pem[PATH_MAX];
    http h;

    snprintf(ext, sizeof(ext), "subjectAltName=DNS:%s", cn);
    if (make_csr(name, "ec", cn, ext) != 0 || csr_b64(name) != 0 ||
        enroll(&h, "simpleenroll", name, NULL, NULL, NULL, NULL, NULL) != 200)
        return -1;
    snprintf(file, sizeof(file), "%s.pem", name);
    return body_to_pem(&h, tpath(pem, file));
}

/* simplereenroll over mTLS on iot with name.pem and name.key; the status. */
static int renew_as(const char *name)
{
    char cert[PATH_MAX], key[PATH_MAX], file[64];
    http h;

    snprintf(file, sizeof(file), "%s.pem", name);
    tpath(cert, file);
    snprintf(file, sizeof(file), "%s.key", name);
    return enroll(&h, "iot/simplereenroll", name, NULL, "--cert", cert, "--key", tpath(key, file));
}

/*
 * [server] blocked_certs: a stolen device's certificate, listed by the principal the audit trail
 * shows for it and put in force by a reload, can no longer renew, nor enroll on a Basic profile
 * while it shows the certificate; another device still can.
 */
static void test_blocked_certificate_cannot_renew(void)
{
    char path[PATH_MAX], line[128];
    unsigned char md[32];
    unsigned int mdlen;
    size_t inilen, n;
    char *text = eg_file_read(ini, &inilen);
    int blocked = log_count("event=auth.cert_blocked");
    X509 *x;

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(enrolled_cert("stolen", "stolen.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(enrolled_cert("kept", "kept.example.com"), 0);
    CU_ASSERT_EQUAL(renew_as("stolen"), 200);

    CU_ASSERT_PTR_NOT_NULL_FATAL(x = read_cert(tpath(path, "stolen.pem")));
    X509_digest(x, EVP_sha256(), md, &mdlen);
    X509_free(x);
    n = (size_t)snprintf(line, sizeof(line), "# stolen 2026-11-24\ncert:");
    for (unsigned int i = 0; i < mdlen; i++)
        n += (size_t)snprintf(line + n, sizeof(line) - n, "%02x", md[i]);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(tpath(path, "blocked.txt"), line, n, 0644), 0);
    CU_ASSERT_EQUAL_FATAL(
        ini_with_line(ini, text, inilen, "\n[token]\n", true, "\nblocked_certs = blocked.txt"), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    CU_ASSERT_EQUAL(renew_as("stolen"), 403);
    CU_ASSERT_EQUAL(log_count("event=auth.cert_blocked"), blocked + 1);
    CU_ASSERT_EQUAL(renew_as("kept"), 200);
    /* Nor on a Basic-only profile, with the right password, while it shows the certificate. */
    {
        char cert[PATH_MAX], key[PATH_MAX], user[128], data[PATH_MAX + 1];
        http h;

        CU_ASSERT_EQUAL(curl(&h, port, "simpleenroll", "-u", basic_user(user), "-H",
                             "Content-Type: application/pkcs10", "--data-binary",
                             at(data, "stolen.b64"), "--cert", tpath(cert, "stolen.pem"), "--key",
                             tpath(key, "stolen.key"), NULL),
                        403);
    }
    CU_ASSERT_EQUAL(log_count("event=auth.cert_blocked"), blocked + 2);

    CU_ASSERT_EQUAL(eg_file_write(ini, text, inilen, 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    CU_ASSERT_EQUAL(renew_as("stolen"), 200);
    free(text);
}

static void test_wrong_passwords_from_one_address_get_429(void)
{
    size_t inilen;
    char *text = eg_file_read(ini, &inilen), data[PATH_MAX + 1], *body;
    int throttled = log_count("event=auth.throttled"), status = 0;
    http h;

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(
        ini_with_line(ini, text, inilen, "\n[token]\n", true, "\nauth_failures_per_minute = 1"), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    /* The wrong passwords of earlier tests may still count (a reload keeps the counts): the
       first try is 401 or already 429, the second 429. */
    for (int i = 0; i < 2 && status != 429; i++) {
        status =
            curl(&h, port, "simpleenroll", "-u", "alice:wrong", "-H",
                 "Content-Type: application/pkcs10", "--data-binary", at(data, "dev1.b64"), NULL);
        CU_ASSERT(status == 401 || status == 429);
    }
    CU_ASSERT_EQUAL(status, 429);
    CU_ASSERT_PTR_NOT_NULL(strcasestr(h.headers, "\r\nRetry-After: "));
    body = eg_file_read(h.body_path, NULL);
    CU_ASSERT(body != NULL && strstr(body, "too many wrong passwords from this address") != NULL);
    free(body);
    CU_ASSERT_EQUAL(log_count("event=auth.throttled"), throttled + 1);

    CU_ASSERT_EQUAL(eg_file_write(ini, text, inilen, 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "dev1", NULL, NULL, NULL, NULL, NULL), 200);
    free(text);
}

/*
 * [server] log_refusals_per_second, set by a reload: a burst of refusals writes that many lines,
 * and the count of the rest is said within a few seconds though nothing else comes in.
 */
static void test_refusal_lines_are_rationed(void)
{
    size_t inilen;
    char *text = eg_file_read(ini, &inilen), head[4096];
    int lines = log_count("event=malformed"), notes = log_count(" left out since ");
    SSL_CTX *ctx = NULL;
    SSL *ssl;

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(
        ini_with_line(ini, text, inilen, "\n[token]\n", true, "\nlog_refusals_per_second = 1"), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    sleep(1); /* out of the second of the tests before, whose refusal lines count against it */
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl = tls_connect(&ctx, port));
    for (int i = 0; i < 5; i++) /* an unknown label: 404, audited as malformed */
        CU_ASSERT_EQUAL(tls_request(ssl, "GET", "nosuch/cacerts", "", head, sizeof(head)), 404);
    tls_close(ssl, ctx);
    CU_ASSERT_EQUAL(wait_log(" left out since ", notes), 0);
    lines = log_count("event=malformed") - lines;
    CU_ASSERT(lines >= 1 && lines <= 2);
    if (lines < 1 || lines > 2)
        fprintf(stderr, "\n  %d lines of the 5 refusals\n", lines);

    CU_ASSERT_EQUAL(eg_file_write(ini, text, inilen, 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    free(text);
}

/* One number from the daemon's ledger, read beside it. */
static int64_t ledger_int(const char *sql)
{
    char path[PATH_MAX];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t n = -1;

    if (sqlite3_open_v2(tpath(path, "ledger.db"), &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* Issuance and audit rows name a profile alike, by its section name ("default", not ''). */
static void test_ledger_names_profiles_as_the_configuration(void)
{
    CU_ASSERT(ledger_int("SELECT count(*) FROM issuance WHERE profile = 'default'") > 0);
    CU_ASSERT_EQUAL(ledger_int("SELECT count(*) FROM issuance WHERE profile NOT IN"
                               " (SELECT profile FROM audit WHERE profile IS NOT NULL)"),
                    0);
}

/*
 * The ledger's disk refuses writes (a file size limit of 0 put on the running estgated, which
 * SQLite meets as a full disk would): enrollment is 503 with Retry-After, the daemon lives on,
 * and nothing is half-written; once the disk takes writes again, the same request gets its
 * certificate.
 */
static void test_refused_disk_writes_are_503_then_recover(void)
{
    struct rlimit was, none;
    int64_t rows = ledger_int("SELECT count(*) FROM issuance");
    char *hdr;
    http h;

    CU_ASSERT_EQUAL_FATAL(
        make_csr("full1", "ec", "full1.example.com", "subjectAltName=DNS:full1.example.com"), 0);
    CU_ASSERT_EQUAL_FATAL(csr_b64("full1"), 0);
    CU_ASSERT_EQUAL_FATAL(prlimit(daemon_pid, RLIMIT_FSIZE, NULL, &was), 0);
    none = (struct rlimit){.rlim_cur = 0, .rlim_max = was.rlim_max};
    CU_ASSERT_EQUAL_FATAL(prlimit(daemon_pid, RLIMIT_FSIZE, &none, NULL), 0);
    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "full1", NULL, NULL, NULL, NULL, NULL), 503);
    hdr = h.headers;
    CU_ASSERT_PTR_NOT_NULL(strcasestr(hdr, "\r\nRetry-After: "));
    CU_ASSERT_EQUAL(kill(daemon_pid, 0), 0);
    CU_ASSERT_EQUAL(prlimit(daemon_pid, RLIMIT_FSIZE, &was, NULL), 0);
    CU_ASSERT_EQUAL(ledger_int("SELECT count(*) FROM issuance"), rows);

    CU_ASSERT_EQUAL(enroll(&h, "simpleenroll", "full1", NULL, NULL, NULL, NULL, NULL), 200);
    CU_ASSERT_EQUAL(ledger_int("SELECT count(*) FROM issuance WHERE state = 'issued' AND"
                               " subject LIKE '%full1.example.com%'"),
                    1);
    CU_ASSERT_EQUAL(ledger_int("SELECT count(*) FROM issuance WHERE state = 'pending'"), 0);
}

/*
 * [server] audit_keep_rows, set by a reload: the ledger keeps only the newest refusals' rows,
 * and a certificate's own rows stay.
 */
static void test_reload_trims_refusals_audit_rows(void)
{
    static const char unlinked[] = "SELECT count(*) FROM audit WHERE intent_id IS NULL";
    static const char linked[] = "SELECT count(*) FROM audit WHERE intent_id IS NOT NULL";
    size_t inilen;
    char *text = eg_file_read(ini, &inilen), data[PATH_MAX + 1];
    int64_t newest, certs_rows;
    http h;

    for (int i = 0; i < 5; i++) /* no credentials: auth.missing, a row of no certificate */
        CU_ASSERT_EQUAL(curl(&h, port, "simpleenroll", "-H", "Content-Type: application/pkcs10",
                             "--data-binary", at(data, "dev1.b64"), NULL),
                        401);
    newest = ledger_int("SELECT max(id) FROM audit WHERE intent_id IS NULL");
    certs_rows = ledger_int(linked);
    CU_ASSERT(ledger_int(unlinked) >= 5 && certs_rows > 0);

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(
        ini_with_line(ini, text, inilen, "\n[token]\n", true, "\naudit_keep_rows = 3"), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    /* The line comes once the pass has committed. */
    CU_ASSERT_EQUAL(
        wait_log("rows of no certificate (keeping 400 days and at most the newest 3)", 0), 0);
    CU_ASSERT_EQUAL(ledger_int(unlinked), 3);
    CU_ASSERT_EQUAL(ledger_int("SELECT min(id) FROM audit WHERE intent_id IS NULL"), newest - 2);
    CU_ASSERT_EQUAL(ledger_int(linked), certs_rows);

    CU_ASSERT_EQUAL(eg_file_write(ini, text, inilen, 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    free(text);
}

/* ---- fleet trust bundles ---- */

/* estgate-provision with the harness token's options after the words given. */
static int provision(const char *tool, ...)
{
    const eg_token_config *c = eg_th_config(th);
    char *argv[40];
    const char *w;
    va_list ap;
    int n = 0;

    argv[n++] = (char *)tool;
    va_start(ap, tool);
    while ((w = va_arg(ap, const char *)) != NULL && n < 30)
        argv[n++] = (char *)w;
    va_end(ap);
    argv[n++] = "--module";
    argv[n++] = (char *)c->module_path;
    argv[n++] = "--token";
    argv[n++] = (char *)c->token_label;
    argv[n++] = "--pin-file";
    argv[n++] = (char *)c->pin_file;
    argv[n] = NULL;
    return eg_child_run(dir, NULL, argv, res);
}

/*
 * The factory line in small: a factory CA in the token, and one device's
 * bootstrap certificate from `estgate-provision bootstrap` for a CSR the
 * device made (boot/SN0001.pem, key factory-dev.key).
 */
static int factory_line(const char *tool)
{
    char crt[PATH_MAX], ckey[PATH_MAX], csr[PATH_MAX], csv[PATH_MAX], out[PATH_MAX], uri[300];
    static const char batch[] = "serial,model,csr\nSN0001,gw,factory-dev.csr\n";

    snprintf(uri, sizeof(uri), "pkcs11:token=%s;object=factory-ca;type=private",
             eg_th_config(th)->token_label);
    return provision(tool, "ca", "create", "--label", "factory-ca", "--key", "ec-p256", "--subject",
                     "CN=Factory CA,O=estgate tests", "--self-signed", "--days", "60", "--out",
                     tpath(crt, "factory-ca.pem"), NULL) ||
           cmd("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", tpath(ckey, "factory-dev.key"), "-out",
               tpath(csr, "factory-dev.csr"), "-subj", "/CN=SN0001", NULL) ||
           eg_file_write(tpath(csv, "batch.csv"), batch, sizeof(batch) - 1, 0644) != 0 ||
           provision(tool, "bootstrap", "--manifest", csv, "--out", tpath(out, "boot"), "--ca-key",
                     uri, "--ca-cert", crt, "--days", "30", "--san-template",
                     "dns:{serial}.devices.example.com", NULL);
}

/*
 * A signed bundle holding the factory CA (and the partner CA already
 * trusted) becomes the partner profile's client trust through `bundle
 * install`: a device with its bootstrap certificate from `bootstrap` is
 * refused before and enrolls after, without a restart. The same bundle again (rollback) and a
 * tampered one are refused and leave the bundle in force as it was.
 */
static void test_bundle_install_trusts_factory_devices(void)
{
    char tool[PATH_MAX], out[PATH_MAX], uri[256], pid[24], bundle[PATH_MAX], vfile[PATH_MAX];
    char v1[PATH_MAX], bad[PATH_MAX], fkey[PATH_MAX], fcrt[PATH_MAX], a1[PATH_MAX], a2[PATH_MAX];
    size_t len, ilen;
    char *p, *e = NULL, *orig, *installed;
    int before;
    http h;

    CU_ASSERT_FATAL(eg_child_built("provisioning/estgate-provision", tool) != NULL);
    CU_ASSERT_EQUAL_FATAL(factory_line(tool), 0);
    CU_ASSERT_EQUAL_FATAL(provision(tool, "bundle", "signer", "create", "--label", "bsign", "--key",
                                    "ec-p256", "--ca-label", "ca", "--subject",
                                    "CN=Fleet bundle signer", "--days", "20", "--out",
                                    tpath(out, "bsign.pem"), NULL),
                          0);
    CU_ASSERT_FATAL((p = strstr(res->out, "pkcs11:")) != NULL && (e = strchr(p, '\n')) != NULL);
    snprintf(uri, sizeof(uri), "%.*s", (int)(e - p), p);
    CU_ASSERT_EQUAL_FATAL(provision(tool, "bundle", "create", "--signer", uri, "--anchor",
                                    tpath(a1, "factory-ca.pem"), "--anchor",
                                    tpath(a2, "partner-ca.pem"), "--bundle-version", "1",
                                    "--valid-days", "10", "--out-dir", tpath(v1, "bundle-v1"),
                                    NULL),
                          0);
    tpath(fcrt, "boot/SN0001.pem");
    tpath(fkey, "factory-dev.key");
    CU_ASSERT_EQUAL(
        enroll(&h, "partner/simpleenroll", "dev1r", NULL, "--cert", fcrt, "--key", fkey), 403);

    orig = eg_file_read(tpath(bundle, "partner-ca.pem"), &len);
    CU_ASSERT_FATAL(orig != NULL);
    snprintf(pid, sizeof(pid), "%d", (int)daemon_pid);
    before = log_count("estgated: reloaded ");
    CU_ASSERT_EQUAL(cmd(tool, "bundle", "install", "--dir", v1, "--trust", ca, "--config", ini,
                        "--profile", "partner", "--pid", pid, NULL),
                    0);
    CU_ASSERT_EQUAL_FATAL(wait_log("estgated: reloaded ", before), 0);
    CU_ASSERT_EQUAL(
        enroll(&h, "partner/simpleenroll", "dev1r", NULL, "--cert", fcrt, "--key", fkey), 200);
    CU_ASSERT_EQUAL(enroll(&h, "partner/simpleenroll", "dev1r", NULL, "--cert",
                           tpath(out, "partner-dev.pem"), "--key", tpath(a1, "partner-dev.key")),
                    200);
    installed = eg_file_read(bundle, &ilen);

    /* The same version again is a rollback; a changed PEM is tampering. Neither touches it. */
    CU_ASSERT_EQUAL(cmd(tool, "bundle", "install", "--dir", v1, "--trust", ca, "--config", ini,
                        "--profile", "partner", NULL),
                    84);
    CU_ASSERT_EQUAL(cmd("cp", "-r", v1, tpath(bad, "bundle-bad"), NULL), 0);
    CU_ASSERT_EQUAL(cmd("sed", "-i", "s/^MII/MIJ/", strcat(bad, "/trust-bundle.pem"), NULL), 0);
    tpath(bad, "bundle-bad");
    CU_ASSERT_EQUAL(cmd(tool, "bundle", "install", "--dir", bad, "--trust", ca, "--config", ini,
                        "--profile", "partner", NULL),
                    81);
    p = eg_file_read(bundle, &len);
    CU_ASSERT(p != NULL && installed != NULL && len == ilen && memcmp(p, installed, len) == 0);
    free(p);
    p = eg_file_read(tpath(vfile, "partner-ca.pem.version"), &len);
    CU_ASSERT(p != NULL && strncmp(p, "1\n", 2) == 0);
    free(p);

    /* Back as it was, for the tests after this one. */
    CU_ASSERT_EQUAL(eg_file_write(bundle, orig, strlen(orig), 0644), 0);
    unlink(vfile);
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded "), 0);
    free(installed);
    free(orig);
}

static CU_TestInfo tests[] = {
    {"curl: cacerts", test_curl_cacerts},
    {"curl: simpleenroll with Basic", test_curl_simpleenroll_with_basic},
    {"curl: simplereenroll over mTLS", test_curl_simplereenroll_over_mtls},
    {"Bouncy Castle EST client", test_bouncy_castle_client},
    {"Bouncy Castle simpleEnrollPoP links the request to TLS 1.2", test_bouncy_castle_pop_linking},
    {"wire variants are accepted", test_wire_variants_are_accepted},
    {"wrong or missing password is 401", test_wrong_or_missing_password_is_401},
    {"an absolute-form target is answered", test_an_absolute_form_target_is_answered},
    {"client certificate of another profile is 403",
     test_client_certificate_of_another_profile_is_403},
    {"an untrusted certificate is asked for a password",
     test_an_untrusted_certificate_is_asked_for_a_password},
    {"CSR with a bad signature is 400", test_csr_with_bad_signature_is_400},
    {"an expired certificate renews within its allowance",
     test_an_expired_certificate_renews_within_its_allowance},
    {"policy refusals are 403", test_policy_refusals_are_403},
    {"channel binding links the request to its TLS connection",
     test_channel_binding_links_the_request_to_tls},
    {"wire errors have their status", test_wire_errors_have_their_status},
    {"ambiguous framing is refused and closes the connection",
     test_ambiguous_framing_is_refused_and_closes},
    {"header lines civetweb drops are refused", test_header_lines_civetweb_drops_are_refused},
    {"Expect: 100-continue gets 100 at once", test_expect_100_continue},
    {"an oversized body written whole still gets its 413", test_oversized_body_gets_its_413},
    {"a burst after a reload is served", test_burst_after_reload_is_served},
    {"TLS sessions resume without client certificates",
     test_tls_sessions_resume_without_client_certificates},
    {"HEAD wherever GET", test_head_where_get},
    {"TLS 1.2 only where allowed", test_tls12_only_where_allowed},
    {"token unavailable is 503", test_token_unavailable_is_503},
    {"secrets never reach the log", test_secrets_never_reach_the_log},
    {"the log says how the token is called", test_log_says_how_the_token_is_called},
    {"--version, and the log's first line, name the build", test_version_is_said},
    {"an IPv6 listener serves devices, named by their address", test_ipv6_listener_serves_devices},
    {"the daily expiry check runs, with the day's date", test_the_daily_expiry_check_runs},
    {"SIGHUP reloads client trust; a broken file changes nothing",
     test_sighup_reloads_client_trust},
    {"SIGHUP leaves [token] calls for a restart", test_sighup_leaves_token_calls_for_a_restart},
    {"a reload on a hung token holds no request", test_a_reload_on_a_hung_token_holds_no_request},
    {"SIGHUP serves a renewed TLS certificate", test_sighup_renews_the_tls_certificate},
    {"SIGHUP serves a rolled-over CA: the old root verifies the new key's certificates",
     test_sighup_serves_a_rolled_over_ca},
    {"ledger names profiles as the configuration", test_ledger_names_profiles_as_the_configuration},
    {"reload trims the refusals' audit rows", test_reload_trims_refusals_audit_rows},
    {"refused disk writes are 503, then recover", test_refused_disk_writes_are_503_then_recover},
    {"wrong passwords from one address get 429", test_wrong_passwords_from_one_address_get_429},
    {"a blocked certificate cannot renew", test_blocked_certificate_cannot_renew},
    {"refusal lines are rationed", test_refusal_lines_are_rationed},
    {"log_level: quiet handshakes, and warning by a reload", test_log_level},
    {"a wrong token label names the tokens the module shows",
     test_wrong_token_label_names_the_tokens_present},
    {"bundle install makes factory devices trusted", test_bundle_install_trusts_factory_devices},
    {"SIGKILL loses no received certificate", test_sigkill_loses_no_received_certificate},
    {"SIGTERM answers the requests in flight", test_sigterm_answers_requests_in_flight},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
