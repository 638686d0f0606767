/*
 * Devices built on other stacks than OpenSSL, end to end against a real
 * estgated on a fresh token (hsm-tests/devices/):
 * - est_mbedtls, an EST client on Mbed TLS 2.28 as IoT firmware has it: TLS
 *   1.2 only, so it reaches the daemon through the listener that opts into
 *   TLS 1.2; its own key generation and CSR writer;
 * - est_gnutls, on GnuTLS 3.7: TLS 1.3, its own CSR writer, and its own
 *   computation of the channel binding (RFC 9266 tls-exporter, tls-unique on
 *   TLS 1.2) for a profile that requires the request be linked to TLS.
 * What they receive is checked with OpenSSL against the chain from /cacerts
 * and the profile.
 */
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "child.h"
#include "estgated_fixture.h"
#include "config.h"
#include "token_harness.h"

#define MAX_DAYS 30

static eg_th_kind kind;
static eg_th *th;
static char dir[EG_FX_DIR_MAX], ini[PATH_MAX], ca[PATH_MAX], pass[PATH_MAX], daemon_log[PATH_MAX];
static char mbed[PATH_MAX], gnu[PATH_MAX], port13[16], port12[16];
static const char *trust; /* the devices' CA file, when not ca */
static pid_t daemon_pid;
static eg_child_result *res;

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

#define cmd(...) eg_child_cmd(dir, res, __VA_ARGS__)

static int write_config(void)
{
    const eg_token_config *c = eg_th_config(th);
    char *hash = NULL, text[12288];
    int n, m, rc = -1;

    if (eg_fx_basic_user("firmware", pass, NULL, &hash) != 0)
        goto out;
    if ((n = eg_fx_ini_head(th, "listen = 127.0.0.1:0 tls12\n", "", text, sizeof(text))) < 0)
        goto out;
    m = snprintf(text + n, sizeof(text) - (size_t)n,
                 "\n[profile default]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = basic\nuser = firmware:%s\n"
                 "san = dns:.example.com\nmax_days = %d\neku = clientAuth\n"
                 "key_types = ec:P-256, rsa:2048\n"
                 "\n[profile iot]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = mtls\nclient_ca = %s\nsan = dns:.example.com\nmax_days = %d\n"
                 "eku = clientAuth\n"
                 "\n[profile linked]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = basic\nuser = firmware:%s\nsan = dns:.example.com\nmax_days = %d\n"
                 "eku = clientAuth\nrequire_channel_binding = yes\n"
                 "\n[profile limited]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = basic\nuser = firmware:%s\nsan = dns:.example.com\nmax_days = %d\n"
                 "eku = clientAuth\nissue_limit = 1/hour\n",
                 c->token_label, ca, hash, MAX_DAYS, c->token_label, ca, ca, MAX_DAYS,
                 c->token_label, ca, hash, MAX_DAYS, c->token_label, ca, hash, MAX_DAYS);
    if (m > 0 && (size_t)m < sizeof(text) - (size_t)n)
        rc = eg_file_write(ini, text, (size_t)(n + m), 0600);
out:
    free(hash);
    return rc;
}

static int suite_init(void)
{
    const eg_fx_suite s = {&th, &res, dir, ini, ca, pass, daemon_log};
    unsigned ports[2];

    eg_child_built("hsm-tests/est_mbedtls", mbed);
    eg_child_built("hsm-tests/est_gnutls", gnu);
    if (access(mbed, X_OK) != 0 || access(gnu, X_OK) != 0) {
        fprintf(stderr,
                "test_devices: %s or %s is missing: install libmbedtls-dev and "
                "libgnutls28-dev (sh image/deps.sh test) and build again\n",
                mbed, gnu);
        return -1;
    }
    if (eg_fx_suite_open(kind, "devices", "CN=devices CA,O=estgate tests", &s) != 0 ||
        write_config() != 0 || eg_fx_daemon_start(ini, daemon_log, &daemon_pid, ports, 2) != 0)
        return -1;
    snprintf(port13, sizeof(port13), "%u", ports[0]);
    snprintf(port12, sizeof(port12), "%u", ports[1]);
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

/*
 * A device client (mbed or gnu) on port with /.well-known/est/path, its body
 * to out.b64 in the token directory, then the client's NULL-terminated
 * options; the HTTP status, or -1 when the exchange failed (its reason left
 * in res->err).
 */
static int device(const char *client, const char *port, const char *path, const char *out, ...)
{
    char url[256], body[PATH_MAX], *argv[40];
    va_list ap;
    int n = 0;

    snprintf(url, sizeof(url), "/.well-known/est/%s", path);
    snprintf(body, sizeof(body), "%s/%s.b64", dir, out);
    argv[n++] = (char *)client;
    argv[n++] = (char *)(trust != NULL ? trust : ca);
    argv[n++] = "127.0.0.1";
    argv[n++] = (char *)port;
    argv[n++] = url;
    argv[n++] = "--out";
    argv[n++] = body;
    va_start(ap, out);
    while (n < 38 && (argv[n] = va_arg(ap, char *)) != NULL)
        n++;
    va_end(ap);
    argv[n] = NULL;
    if (eg_child_run(dir, NULL, argv, res) != 0)
        return -1;
    return atoi(res->out);
}

/* name.b64, a certs-only PKCS#7 in base64, as PEM certificates in name.pem. */
static int p7_to_pem(const char *name)
{
    char b64[PATH_MAX], der[PATH_MAX], pem[PATH_MAX], f[96];

    snprintf(f, sizeof(f), "%s.b64", name);
    tpath(b64, f);
    snprintf(f, sizeof(f), "%s.der", name);
    tpath(der, f);
    snprintf(f, sizeof(f), "%s.pem", name);
    tpath(pem, f);
    return cmd("openssl", "base64", "-d", "-in", b64, "-out", der, NULL) ||
           cmd("openssl", "pkcs7", "-inform", "DER", "-in", der, "-print_certs", "-out", pem, NULL);
}

static X509 *read_cert(const char *name)
{
    char path[PATH_MAX], f[96];
    X509 *x = NULL;
    FILE *fp;

    snprintf(f, sizeof(f), "%s.pem", name);
    if ((fp = fopen(tpath(path, f), "r")) != NULL) {
        x = PEM_read_X509(fp, NULL, NULL, NULL);
        fclose(fp);
    }
    return x;
}

/*
 * name.pem chains to /cacerts (fetched by the device itself), is an
 * end-entity certificate for cn with the profile's EKU and validity, and
 * certifies the key the device made (key.key, Mbed TLS's SEC1 PEM).
 */
static void check_issued(const char *name, const char *cn, const char *key)
{
    char pem[PATH_MAX], chain[PATH_MAX], kpath[PATH_MAX], f[96];

    CU_ASSERT_EQUAL_FATAL(device(mbed, port12, "cacerts", "chain", NULL), 200);
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("chain"), 0);
    snprintf(f, sizeof(f), "%s.pem", name);
    tpath(pem, f);
    snprintf(f, sizeof(f), "%s.key", key);
    eg_fx_check_issued(dir, res, pem, tpath(chain, "chain.pem"), cn, MAX_DAYS, tpath(kpath, f));
}

static void test_cacerts_over_tls12(void)
{
    X509 *got, *want = NULL;
    FILE *f;

    CU_ASSERT_EQUAL_FATAL(device(mbed, port12, "cacerts", "cacerts", NULL), 200);
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("cacerts"), 0);
    got = read_cert("cacerts");
    if ((f = fopen(ca, "r")) != NULL) {
        want = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
    }
    CU_ASSERT(got != NULL && want != NULL && X509_cmp(got, want) == 0);
    X509_free(got);
    X509_free(want);
}

/* Whether a line of the daemon's log holds a and b, waiting up to 5 s for it to be written
   (the daemon writes a failed handshake's line after the device has seen the failure). */
static bool log_has(const char *a, const char *b)
{
    for (int i = 0; i < 100; i++) {
        if (eg_file_line_has(daemon_log, a, b))
            return true;
        usleep(50 * 1000);
    }
    return false;
}

/*
 * A TLS 1.2-only stack gets no handshake where the listener did not opt in, and the log says
 * which device it was and what would let it in.
 */
static void test_tls13_listener_refuses_it(void)
{
    CU_ASSERT_EQUAL(device(mbed, port13, "cacerts", "refused", NULL), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "TLS handshake"));
    CU_ASSERT(log_has("unsupported protocol, from 127.0.0.1:",
                      "a device that speaks only TLS 1.2 needs a listener with tls12"));
}

static void test_csrattrs(void)
{
    int status =
        device(mbed, port12, "csrattrs", "attrs", "--user", "firmware", "--pass-file", pass, NULL);

    CU_ASSERT(status == 200 || status == 204);
}

/*
 * The device asked for records of at most 1 KiB (RFC 6066 max_fragment_length), as one
 * with little RAM does: every record the server sent, the handshake's and the answer's,
 * fits, with room for the AEAD's nonce and tag.
 */
static bool records_fit(size_t mfl)
{
    const char *line = strstr(res->err, "largest record from the server: ");
    size_t largest;

    if (line == NULL || sscanf(line, "largest record from the server: %zu", &largest) != 1)
        return false;
    return largest > mfl / 2 && largest <= mfl + 64;
}

static void test_simpleenroll_with_basic(void)
{
    char key[PATH_MAX];

    CU_ASSERT_EQUAL_FATAL(device(mbed, port12, "simpleenroll", "m1", "--user", "firmware",
                                 "--pass-file", pass, "--new-key", tpath(key, "m1.key"), "--cn",
                                 "m1.example.com", "--dns", "m1.example.com", NULL),
                          200);
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("m1"), 0);
    check_issued("m1", "m1.example.com", "m1");
    /* The CSR as binary DER without Content-Transfer-Encoding, as firmware written before
       RFC 8951 may send it: taken as it is. */
    CU_ASSERT_EQUAL_FATAL(device(mbed, port12, "simpleenroll", "m2", "--user", "firmware",
                                 "--pass-file", pass, "--new-key", tpath(key, "m2.key"), "--cn",
                                 "m2.example.com", "--dns", "m2.example.com", "--der", NULL),
                          200);
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("m2"), 0);
    check_issued("m2", "m2.example.com", "m2");
    /* An RSA key: its certificate makes the answer larger than one of the device's records. */
    CU_ASSERT_EQUAL_FATAL(device(mbed, port12, "simpleenroll", "m3", "--user", "firmware",
                                 "--pass-file", pass, "--new-key", tpath(key, "m3.key"),
                                 "--key-type", "rsa", "--cn", "m3.example.com", "--dns",
                                 "m3.example.com", "--max-fragment", "1024", NULL),
                          200);
    CU_ASSERT(records_fit(1024));
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("m3"), 0);
    check_issued("m3", "m3.example.com", "m3");
}

/* Renewal over mTLS with the certificate just issued: the same key, then a new one. */
static void test_simplereenroll_over_mtls(void)
{
    char cert[PATH_MAX], key[PATH_MAX], nkey[PATH_MAX];
    X509 *old, *same, *rekeyed;

    tpath(cert, "m1.pem");
    tpath(key, "m1.key");
    CU_ASSERT_EQUAL_FATAL(device(mbed, port12, "iot/simplereenroll", "m1-same", "--cert", cert,
                                 "--key", key, "--csr-key", key, "--cn", "m1.example.com", "--dns",
                                 "m1.example.com", NULL),
                          200);
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("m1-same"), 0);
    check_issued("m1-same", "m1.example.com", "m1");
    CU_ASSERT_EQUAL_FATAL(device(mbed, port12, "iot/simplereenroll", "m1-new", "--cert", cert,
                                 "--key", key, "--new-key", tpath(nkey, "m1-new.key"), "--cn",
                                 "m1.example.com", "--dns", "m1.example.com", NULL),
                          200);
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("m1-new"), 0);
    check_issued("m1-new", "m1.example.com", "m1-new");
    old = read_cert("m1");
    same = read_cert("m1-same");
    rekeyed = read_cert("m1-new");
    CU_ASSERT(old != NULL && same != NULL && rekeyed != NULL &&
              ASN1_INTEGER_cmp(X509_get0_serialNumber(old), X509_get0_serialNumber(same)) != 0 &&
              ASN1_INTEGER_cmp(X509_get0_serialNumber(same), X509_get0_serialNumber(rekeyed)) !=
                  0 &&
              X509_NAME_cmp(X509_get_subject_name(old), X509_get_subject_name(rekeyed)) == 0);
    X509_free(old);
    X509_free(same);
    X509_free(rekeyed);
}

static bool body_has(const char *name, const char *needle)
{
    char path[PATH_MAX], f[96];
    char *text;
    bool has;

    snprintf(f, sizeof(f), "%s.b64", name);
    text = eg_file_read(tpath(path, f), NULL);
    has = text != NULL && strstr(text, needle) != NULL;
    free(text);
    return has;
}

static void test_refusals_reach_the_device(void)
{
    char key[PATH_MAX], wrong[PATH_MAX];

    tpath(key, "r.key");
    CU_ASSERT_EQUAL(eg_file_write(tpath(wrong, "wrong.pass"), "not-the-password\n", 17, 0600), 0);
    CU_ASSERT_EQUAL(device(mbed, port12, "simpleenroll", "r401", "--user", "firmware",
                           "--pass-file", wrong, "--new-key", key, "--cn", "r.example.com", "--dns",
                           "r.example.com", NULL),
                    401);
    CU_ASSERT_EQUAL(device(mbed, port12, "simpleenroll", "r403", "--user", "firmware",
                           "--pass-file", pass, "--new-key", key, "--cn", "r.example.org", "--dns",
                           "r.example.org", NULL),
                    403);
    CU_ASSERT(body_has("r403", "r.example.org"));
    /* No client certificate on the mTLS profile: 403, since no WWW-Authenticate could help. */
    CU_ASSERT_EQUAL(device(mbed, port12, "iot/simplereenroll", "r403m", "--new-key", key, "--cn",
                           "r.example.com", "--dns", "r.example.com", NULL),
                    403);
    CU_ASSERT(body_has("r403m", "certificate"));
}

/* ---- GnuTLS ---- */

static void test_gnutls_cacerts_over_tls13(void)
{
    CU_ASSERT_EQUAL_FATAL(device(gnu, port13, "cacerts", "g-cacerts", NULL), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "(TLS1.3)"));
    CU_ASSERT_EQUAL(p7_to_pem("g-cacerts"), 0);
}

static void test_gnutls_simpleenroll_ec_and_rsa(void)
{
    char key[PATH_MAX];

    CU_ASSERT_EQUAL_FATAL(device(gnu, port13, "simpleenroll", "g1", "--user", "firmware",
                                 "--pass-file", pass, "--new-key", tpath(key, "g1.key"), "--cn",
                                 "g1.example.com", "--dns", "g1.example.com", NULL),
                          200);
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("g1"), 0);
    check_issued("g1", "g1.example.com", "g1");
    CU_ASSERT_EQUAL_FATAL(device(gnu, port13, "simpleenroll", "g2", "--user", "firmware",
                                 "--pass-file", pass, "--new-key", tpath(key, "g2.key"),
                                 "--key-type", "rsa", "--cn", "g2.example.com", "--dns",
                                 "g2.example.com", NULL),
                          200);
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("g2"), 0);
    check_issued("g2", "g2.example.com", "g2");
}

static void test_gnutls_simplereenroll_over_mtls(void)
{
    char cert[PATH_MAX], key[PATH_MAX], nkey[PATH_MAX];

    tpath(cert, "g2.pem");
    tpath(key, "g2.key");
    CU_ASSERT_EQUAL_FATAL(device(gnu, port13, "iot/simplereenroll", "g2-new", "--cert", cert,
                                 "--key", key, "--new-key", tpath(nkey, "g2-new.key"), "--cn",
                                 "g2.example.com", "--dns", "g2.example.com", NULL),
                          200);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "(TLS1.3)"));
    CU_ASSERT_EQUAL_FATAL(p7_to_pem("g2-new"), 0);
    check_issued("g2-new", "g2.example.com", "g2-new");
}

/*
 * RFC 9266 and RFC 5929 computed by another TLS implementation: GnuTLS's
 * tls-exporter (TLS 1.3) and tls-unique (TLS 1.2) in the CSR must be what the
 * daemon's OpenSSL sees on the same connection; without them it is refused.
 */
static void test_gnutls_channel_binding_links_the_request(void)
{
    char key[PATH_MAX];

    tpath(key, "b.key");
    CU_ASSERT_EQUAL(device(gnu, port13, "linked/simpleenroll", "b13", "--user", "firmware",
                           "--pass-file", pass, "--new-key", key, "--cn", "b.example.com", "--dns",
                           "b.example.com", "--bind", NULL),
                    200);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "(TLS1.3)"));
    CU_ASSERT_EQUAL(device(gnu, port12, "linked/simpleenroll", "b12", "--user", "firmware",
                           "--pass-file", pass, "--new-key", key, "--cn", "b.example.com", "--dns",
                           "b.example.com", "--bind", "--tls12", NULL),
                    200);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "(TLS1.2)"));
    CU_ASSERT_EQUAL(device(gnu, port13, "linked/simpleenroll", "b403", "--user", "firmware",
                           "--pass-file", pass, "--new-key", key, "--cn", "b.example.com", "--dns",
                           "b.example.com", NULL),
                    403);
    CU_ASSERT(body_has("b403", "binding") || body_has("b403", "challengePassword"));
}

/* A device that does not trust the appliance's TLS certificate: the log says which and why. */
static void test_untrusting_device_is_named_in_the_log(void)
{
    char key[PATH_MAX], other[PATH_MAX];

    CU_ASSERT_EQUAL_FATAL(cmd("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                              "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                              tpath(key, "other-ca.key"), "-out", tpath(other, "other-ca.pem"),
                              "-subj", "/CN=Some other CA", "-days", "1", NULL),
                          0);
    trust = other;
    /* Mbed TLS sends an alert (unknown CA); GnuTLS closes the connection without one. */
    CU_ASSERT_EQUAL(device(mbed, port12, "cacerts", "untrusted", NULL), -1);
    CU_ASSERT_EQUAL(device(gnu, port13, "cacerts", "untrusted", NULL), -1);
    trust = NULL;
    CU_ASSERT(log_has("unknown ca, from 127.0.0.1:",
                      "the device does not accept the appliance's TLS certificate"));
    CU_ASSERT(log_has("from 127.0.0.1:", "the device closed the connection in the handshake"));
}

/*
 * A device that knows only RSA server keys (ECDHE-RSA suites over TLS 1.2 with PKCS#1 v1.5
 * signatures, as Cisco IOS 15 and older firmware) cannot connect to an appliance with an EC
 * TLS key, and the log says why; with an RSA TLS key in the token it enrolls, the token
 * signing its TLS 1.2 handshake with PKCS#1 v1.5.
 */
static void test_rsa_tls_key_serves_rsa_only_devices(void)
{
    char chain[PATH_MAX], rini[PATH_MAX], rlog[PATH_MAX], key[PATH_MAX], p12[16], p13[16];
    const char *words[] = {"tls",        "create", "--label", "tls-rsa",   "--key", "rsa2048",
                           "--ca-label", "ca",     "--dns",   "localhost", "--ip",  "127.0.0.1",
                           "--days",     "30",     "--out",   chain,       NULL};
    char *text;
    unsigned ports[2];
    pid_t pid = -1;

    CU_ASSERT_EQUAL(device(mbed, port12, "cacerts", "rsa-only", "--suites", "rsa", NULL), -1);
    CU_ASSERT(log_has("no shared cipher, from 127.0.0.1:", "no cipher suite in common"));

    tpath(chain, "tls-rsa-chain.pem");
    CU_ASSERT_EQUAL_FATAL(eg_fx_provision_cmd(th, words, res), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text = eg_file_read(ini, NULL));
    /* The RSA key and its chain, and a ledger of its own beside the suite's daemon. */
    CU_ASSERT_EQUAL_FATAL(
        eg_file_write_replaced(
            tpath(rini, "estgated-rsa.ini"), text,
            "object=tls;type=private\ntls_chain = tls-chain.pem\nledger = ledger.db\n",
            "object=tls-rsa;type=private\ntls_chain = tls-rsa-chain.pem\nledger = ledger-rsa.db\n"),
        0);
    free(text);
    CU_ASSERT_EQUAL_FATAL(eg_fx_daemon_start(rini, tpath(rlog, "estgated-rsa.log"), &pid, ports, 2),
                          0);
    snprintf(p12, sizeof(p12), "%u", ports[1]);
    CU_ASSERT_EQUAL(device(mbed, p12, "simpleenroll", "rsa1", "--user", "firmware", "--pass-file",
                           pass, "--new-key", tpath(key, "rsa1.key"), "--cn", "rsa1.example.com",
                           "--dns", "rsa1.example.com", "--suites", "rsa", NULL),
                    200);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "ECDHE-RSA"));
    if (p7_to_pem("rsa1") == 0)
        check_issued("rsa1", "rsa1.example.com", "rsa1");
    else
        CU_FAIL("no certificate for the RSA-only device");
    /* TLS 1.3 with the RSA key: the token signs RSA-PSS, which GnuTLS verifies. */
    snprintf(p13, sizeof(p13), "%u", ports[0]);
    CU_ASSERT_EQUAL(device(gnu, p13, "cacerts", "rsa13", NULL), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "(TLS1.3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "RSA-PSS"));
    /* Asking for 1 KiB records, Mbed TLS 2.x cannot take the RSA chain (its Certificate
       message spans two records); without the root, which the device has, the chain fits. */
    CU_ASSERT_EQUAL(device(mbed, p12, "cacerts", "rsa-mfl", "--max-fragment", "1024", NULL), -1);
    eg_fx_daemon_stop(&pid, SIGTERM);
    CU_ASSERT_EQUAL(cmd("openssl", "x509", "-in", chain, "-out", chain, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(eg_fx_daemon_start(rini, tpath(rlog, "estgated-rsa.log"), &pid, ports, 2),
                          0);
    snprintf(p12, sizeof(p12), "%u", ports[1]);
    CU_ASSERT_EQUAL(device(mbed, p12, "cacerts", "rsa-mfl", "--max-fragment", "1024", NULL), 200);
    eg_fx_daemon_stop(&pid, SIGTERM);
}

/* A profile's issue_limit reaches the device as 429 with the wait in Retry-After. */
static void test_issue_limit_is_429_with_retry_after(void)
{
    char key[PATH_MAX];
    int wait = 0, status;
    const char *ra;

    tpath(key, "lim.key");
    CU_ASSERT_EQUAL(device(mbed, port12, "limited/simpleenroll", "lim1", "--user", "firmware",
                           "--pass-file", pass, "--new-key", key, "--cn", "lim1.example.com",
                           "--dns", "lim1.example.com", NULL),
                    200);
    /* The hour's window may have turned over just after the first: then the next one is the
       second in the new window. Not twice within seconds. */
    status = device(mbed, port12, "limited/simpleenroll", "lim2", "--user", "firmware",
                    "--pass-file", pass, "--new-key", key, "--cn", "lim2.example.com", "--dns",
                    "lim2.example.com", NULL);
    if (status == 200)
        status = device(mbed, port12, "limited/simpleenroll", "lim2", "--user", "firmware",
                        "--pass-file", pass, "--new-key", key, "--cn", "lim3.example.com", "--dns",
                        "lim3.example.com", NULL);
    CU_ASSERT_EQUAL(status, 429);
    CU_ASSERT((ra = strstr(res->err, "Retry-After ")) != NULL && (wait = atoi(ra + 12)) > 0 &&
              wait <= 3600);
    CU_ASSERT(body_has("lim2", "issue_limit"));
    CU_ASSERT(log_has("event=issue_limit profile=limited principal=basic:firmware",
                      "(issue_limit); the next one in"));
}

static CU_TestInfo tests[] = {
    {"Mbed TLS device: cacerts over TLS 1.2", test_cacerts_over_tls12},
    {"Mbed TLS device: the TLS 1.3-only listener refuses it", test_tls13_listener_refuses_it},
    {"Mbed TLS device: csrattrs", test_csrattrs},
    {"Mbed TLS device: simpleenroll with Basic, its own CSR in base64 and DER, EC and RSA",
     test_simpleenroll_with_basic},
    {"Mbed TLS device: simplereenroll over mTLS, same key and new key",
     test_simplereenroll_over_mtls},
    {"Mbed TLS device: refusals reach it with their status", test_refusals_reach_the_device},
    {"GnuTLS device: cacerts over TLS 1.3", test_gnutls_cacerts_over_tls13},
    {"GnuTLS device: simpleenroll with EC and RSA keys", test_gnutls_simpleenroll_ec_and_rsa},
    {"GnuTLS device: simplereenroll over mTLS on TLS 1.3", test_gnutls_simplereenroll_over_mtls},
    {"GnuTLS device: its own channel binding links the request",
     test_gnutls_channel_binding_links_the_request},
    {"a device that does not trust the appliance is named in the log",
     test_untrusting_device_is_named_in_the_log},
    {"an RSA TLS key serves devices that know only RSA", test_rsa_tls_key_serves_rsa_only_devices},
    {"a profile's issue_limit reaches the device as 429 with Retry-After",
     test_issue_limit_is_429_with_retry_after},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
