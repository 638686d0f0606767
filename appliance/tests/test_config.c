/*
 * estgated's configuration file and password hashes. Every test writes a real
 * INI file, real certificates (made here, software keys: no CA signing is
 * checked) and a real PIN file into a fresh directory.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "policy.h"
#include "cu_run.h"
#include "expiry.h"
#include "p11.h"
#include "test_certs.h"
#include "tmpdir.h"

static char dir[PATH_MAX];
static char ini[PATH_MAX + 32];
static eg_config_errors errs;
static EVP_PKEY *cert_key;        /* one P-256 key for every certificate: cheap, enough */
static char alice[160], bob[160]; /* user = lines, hashes made at 10000 iterations */

/* Lines 1-3 and 4-7: a valid [server] and [token]; profiles follow from line 8. */
#define SERVER                                                                                     \
    "[server]\n"                                                                                   \
    "tls_key = pkcs11:token=t;object=tls\n"                                                        \
    "tls_chain = tls.pem\n"
#define TOKEN                                                                                      \
    "[token]\n"                                                                                    \
    "module = ./module.so\n"                                                                       \
    "label = estgate\n"                                                                            \
    "pin_file = pin\n"
#define SERVER_TOKEN SERVER TOKEN
/* Lines 8-11. */
#define PROFILE_NONE                                                                               \
    "[profile default]\n"                                                                          \
    "ca_key = pkcs11:token=t;object=ca\n"                                                          \
    "ca_chain = ca.pem\n"                                                                          \
    "auth = none\n"

/* --- fixture --- */

static void write_file(const char *name, const char *text, mode_t mode)
{
    char path[PATH_MAX + 64];
    FILE *fp;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fp = fopen(path, "w");
    if (fp == NULL || fputs(text, fp) < 0 || fclose(fp) != 0 || chmod(path, mode) != 0) {
        perror(path);
        abort();
    }
}

/* Appends a self-signed certificate for cert_key to the file name in dir. */
static void write_cert(const char *name, const char *cn, bool ca)
{
    char path[PATH_MAX + 64];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (eg_test_self_signed_append(path, cert_key, cn, ca) != 0) {
        perror(path);
        abort();
    }
}

/* A hash in eg_password_hash's format, computed with another OpenSSL API. */
static void make_hash(const char *password, unsigned iterations, char *out, size_t outsz)
{
    unsigned char salt[16], dk[32], salt64[32], dk64[48];

    for (size_t i = 0; i < sizeof(salt); i++)
        salt[i] = (unsigned char)(i * 7 + iterations);
    if (PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, sizeof(salt), (int)iterations,
                          EVP_sha256(), sizeof(dk), dk) != 1)
        abort();
    EVP_EncodeBlock(salt64, salt, sizeof(salt));
    EVP_EncodeBlock(dk64, dk, sizeof(dk));
    snprintf(out, outsz, "$pbkdf2-sha256$%u$%s$%s", iterations, salt64, dk64);
}

static void setup(void)
{
    if (eg_tmpdir_make(dir, sizeof(dir), NULL, "test_config") != 0)
        abort();
    snprintf(ini, sizeof(ini), "%s/estgated.ini", dir);
    if (cert_key == NULL && (cert_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256")) == NULL)
        abort();
    if (alice[0] == '\0') {
        char h[128];

        make_hash("alice's secret", 10000, h, sizeof(h));
        snprintf(alice, sizeof(alice), "alice:%s", h);
        make_hash("bob's secret", 20000, h, sizeof(h));
        snprintf(bob, sizeof(bob), "bob:%s", h);
    }
    write_cert("ca.pem", "Test Issuing CA", true);
    write_cert("ca.pem", "Test Root CA", true);
    write_cert("tls.pem", "localhost", false);
    write_cert("clients.pem", "Device Maker CA", true);
    write_file("pin", "1234\n", 0600);
    write_file("module.so", "", 0644);
    write_file("garbage.pem", "this is not a certificate\n", 0644);
}

static void teardown(void)
{
    eg_tmpdir_remove(dir);
    eg_config_errors_clear(&errs);
}

/* --- helpers --- */

/* Writes text as the INI file and loads it; errs holds the problems. */
static int load(const char *text, eg_config **cfg)
{
    int rc;

    write_file("estgated.ini", text, 0644);
    *cfg = NULL;
    rc = eg_config_load(ini, cfg, &errs);
    CU_ASSERT((rc == 0) == (*cfg != NULL));
    return rc;
}

static void dump_errors(void)
{
    fprintf(stderr, "\n  errors (%zu):\n", errs.n);
    eg_config_errors_print(&errs, "  estgated.ini", stderr);
}

/* Whether errs holds an error at line for key whose message contains needle. */
static bool has_error(unsigned line, const char *key, const char *needle)
{
    for (size_t i = 0; i < errs.n; i++) {
        if (errs.items[i].line == line && strcmp(errs.items[i].key, key) == 0 &&
            strstr(errs.items[i].message, needle) != NULL)
            return true;
    }
    dump_errors();
    fprintf(stderr, "  missing: line %u, key '%s', \"%s\"\n", line, key, needle);
    return false;
}

/* Loads text, expecting failure with exactly n errors, the first as given. */
static void expect_errors(const char *text, size_t n, unsigned line, const char *key,
                          const char *needle)
{
    eg_config *cfg;

    CU_ASSERT_EQUAL(load(text, &cfg), -1);
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT(has_error(line, key, needle));
    if (errs.n != n)
        dump_errors();
    CU_ASSERT_EQUAL(errs.n, n);
    eg_config_free(cfg);
}

/* --- a valid file --- */

static void test_full_file_loads_every_field(void)
{
    char text[PATH_MAX + 4096];
    eg_config *cfg;
    const eg_profile_cfg *p, *iot;

    snprintf(text, sizeof(text),
             "; estgated test configuration\n"
             "[server]\n"
             "listen = 127.0.0.1:8443\n"
             "listen = [::]:8444 tls12\n"
             "tls_key = pkcs11:token=estgate;object=tls\n"
             "tls_chain = %s/tls.pem\n"
             "max_body = 2M\n"
             "threads = 8\n"
             "keepalive_ms = 5000\n"
             "request_timeout_ms = 3000\n"
             "ledger = state/ledger.db\n"
             "auth_failures_per_minute = 0\n"
             "log_refusals_per_second = 0\n"
             "audit_keep_days = 0\n"
             "audit_keep_rows = 5000\n"
             "log_level = debug\n"
             "\n"
             "[token]\n"
             "module = module.so\n"
             "init_args = configdir='/etc/x'\n"
             "label = estgate\n"
             "pin_file = pin\n"
             "pool_size = 4\n"
             "recover_ms = 2500\n"
             "calls = serial\n"
             "connections = 2\n"
             "\n"
             "[profile default]\n"
             "ca_key = pkcs11:token=estgate;object=ca\n"
             "ca_chain = ca.pem\n"
             "auth = basic, mtls\n"
             "realm = Fleet enrollment\n"
             "user = %s\n"
             "user = %s\n"
             "client_ca = clients.pem\n"
             "key_types = rsa:3072-4096, ec:P-384, ed25519, rsa:2048\n"
             "eku = clientAuth, serverAuth,emailProtection,codeSigning,OCSPSigning,timeStamping\n"
             "san = dns:.example.com\n"
             "san = dns:host.example.com\n"
             "san = dns:*.example.com\n"
             "san = ip:10.0.0.0/8\n"
             "san = ip:2001:DB8::/32\n"
             "san = email:example.com\n"
             "san = uri:urn:dev:\n"
             "require_san = yes\n"
             "subject_attrs = CN, O, OU, C, ST, L, serialNumber, emailAddress, UID, DC\n"
             "subject_template = CN=${cn},O=Example Fleet\n"
             "max_days = 90\n"
             "allow_rekey = off\n"
             "require_attrs = challengePassword, serialNumber\n"
             "require_channel_binding = yes\n"
             "csr_digests = SHA256, sha384, sha3-512\n"
             "[profile iot]\n"
             "ca_key = pkcs11:id=%%01%%02\n"
             "ca_chain = ca.pem\n"
             "auth = mtls\n"
             "client_ca = clients.pem\n",
             dir, alice, bob);
    if (load(text, &cfg) != 0) {
        dump_errors();
        CU_FAIL_FATAL("the file does not load");
    }
    CU_ASSERT_STRING_EQUAL(cfg->path, ini);
    CU_ASSERT_EQUAL_FATAL(cfg->nlisteners, 2);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[0].address, "127.0.0.1");
    CU_ASSERT_EQUAL(cfg->listeners[0].port, 8443);
    CU_ASSERT_FALSE(cfg->listeners[0].allow_tls12);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[1].address, "::");
    CU_ASSERT_EQUAL(cfg->listeners[1].port, 8444);
    CU_ASSERT_TRUE(cfg->listeners[1].allow_tls12);
    CU_ASSERT_STRING_EQUAL(cfg->tls_key_uri, "pkcs11:token=estgate;object=tls");
    CU_ASSERT(strstr(cfg->tls_chain_file, "/tls.pem") != NULL);
    CU_ASSERT_EQUAL(cfg->max_body, 2 * 1024 * 1024);
    CU_ASSERT_EQUAL(cfg->threads, 8);
    CU_ASSERT_EQUAL(cfg->keepalive_ms, 5000);
    CU_ASSERT_EQUAL(cfg->request_timeout_ms, 3000);
    CU_ASSERT_EQUAL(cfg->auth_failures_per_minute, 0);
    CU_ASSERT_EQUAL(cfg->log_refusals_per_second, 0);
    CU_ASSERT_EQUAL(cfg->audit_keep_days, 0);
    CU_ASSERT_EQUAL(cfg->audit_keep_rows, 5000);
    /* Relative paths are relative to the file's directory. */
    CU_ASSERT(strncmp(cfg->ledger_path, dir, strlen(dir)) == 0 &&
              strcmp(cfg->ledger_path + strlen(dir), "/state/ledger.db") == 0);
    CU_ASSERT_STRING_EQUAL(cfg->log_level, "debug");
    CU_ASSERT_STRING_EQUAL(cfg->module_path, "module.so"); /* bare: for the dynamic linker */
    CU_ASSERT_STRING_EQUAL(cfg->init_args, "configdir='/etc/x'");
    CU_ASSERT_STRING_EQUAL(cfg->token_label, "estgate");
    CU_ASSERT(strstr(cfg->pin_file, dir) == cfg->pin_file && strstr(cfg->pin_file, "/pin") != NULL);
    CU_ASSERT_EQUAL(cfg->pool_size, 4);
    CU_ASSERT_EQUAL(cfg->recover_ms, 2500);
    CU_ASSERT_EQUAL(cfg->calls, EG_CALLS_SERIAL);
    CU_ASSERT_EQUAL(cfg->connections, 2);
    CU_ASSERT_EQUAL_FATAL(cfg->nprofiles, 2);

    p = &cfg->profiles[0];
    CU_ASSERT_STRING_EQUAL(p->name, "default");
    CU_ASSERT_STRING_EQUAL(p->label, "");
    CU_ASSERT_STRING_EQUAL(p->ca_key_uri, "pkcs11:token=estgate;object=ca");
    CU_ASSERT(strstr(p->ca_chain_file, "/ca.pem") != NULL);
    CU_ASSERT_EQUAL(p->auth, EG_AUTH_BASIC | EG_AUTH_MTLS);
    CU_ASSERT_STRING_EQUAL(p->realm, "Fleet enrollment");
    CU_ASSERT_EQUAL_FATAL(p->nusers, 2);
    CU_ASSERT_STRING_EQUAL(p->users[0].name, "alice");
    CU_ASSERT_STRING_EQUAL(p->users[0].hash, alice + strlen("alice:"));
    CU_ASSERT_STRING_EQUAL(p->users[1].name, "bob");
    CU_ASSERT(eg_password_verify("alice's secret", p->users[0].hash));
    CU_ASSERT(strstr(p->client_ca_file, "/clients.pem") != NULL);
    CU_ASSERT_EQUAL_FATAL(p->nkeys, 4);
    CU_ASSERT(p->keys[0].type == EVP_PKEY_RSA && p->keys[0].min_bits == 3072 &&
              p->keys[0].max_bits == 4096);
    CU_ASSERT(p->keys[1].type == EVP_PKEY_EC && p->keys[1].curve_nid == NID_secp384r1);
    CU_ASSERT_EQUAL(p->keys[2].type, EVP_PKEY_ED25519);
    CU_ASSERT(p->keys[3].type == EVP_PKEY_RSA && p->keys[3].min_bits == 2048 &&
              p->keys[3].max_bits == 0);
    CU_ASSERT_EQUAL_FATAL(p->nekus, 6);
    CU_ASSERT(p->ekus[0] == NID_client_auth && p->ekus[1] == NID_server_auth &&
              p->ekus[2] == NID_email_protect && p->ekus[3] == NID_code_sign &&
              p->ekus[4] == NID_OCSP_sign && p->ekus[5] == NID_time_stamp);
    CU_ASSERT_EQUAL_FATAL(p->nsans, 7);
    CU_ASSERT(p->sans[0].type == EG_SAN_DNS && strcmp(p->sans[0].pattern, ".example.com") == 0);
    CU_ASSERT(p->sans[1].type == EG_SAN_DNS && strcmp(p->sans[1].pattern, "host.example.com") == 0);
    CU_ASSERT(p->sans[2].type == EG_SAN_DNS && strcmp(p->sans[2].pattern, "*.example.com") == 0);
    CU_ASSERT(p->sans[3].type == EG_SAN_IP && strcmp(p->sans[3].pattern, "10.0.0.0/8") == 0);
    CU_ASSERT(p->sans[4].type == EG_SAN_IP && strcmp(p->sans[4].pattern, "2001:db8::/32") == 0);
    CU_ASSERT(p->sans[5].type == EG_SAN_EMAIL && strcmp(p->sans[5].pattern, "example.com") == 0);
    CU_ASSERT(p->sans[6].type == EG_SAN_URI && strcmp(p->sans[6].pattern, "urn:dev:") == 0);
    CU_ASSERT_TRUE(p->require_san);
    CU_ASSERT_EQUAL_FATAL(p->nsubject_nids, 10);
    CU_ASSERT(p->subject_nids[0] == NID_commonName && p->subject_nids[8] == NID_userId &&
              p->subject_nids[9] == NID_domainComponent);
    CU_ASSERT_STRING_EQUAL(p->subject_template, "CN=${cn},O=Example Fleet");
    CU_ASSERT_EQUAL(p->max_days, 90);
    CU_ASSERT_FALSE(p->allow_rekey);
    CU_ASSERT_EQUAL_FATAL(p->nrequired_attrs, 2);
    CU_ASSERT(p->required_attrs[0] == NID_pkcs9_challengePassword &&
              p->required_attrs[1] == NID_serialNumber);
    CU_ASSERT_TRUE(p->require_channel_binding);
    CU_ASSERT_EQUAL(p->csr_digests, (1u << 2) | (1u << 3) | (1u << 7));
    CU_ASSERT(eg_csr_digests[2].nid == NID_sha256 && eg_csr_digests[7].nid == NID_sha3_512);

    iot = eg_config_profile(cfg, "iot");
    CU_ASSERT_FALSE(iot->require_channel_binding);
    CU_ASSERT_EQUAL(eg_profile_csr_digests(iot), EG_CSR_DIGESTS_ALL); /* all but MD5 and older */
    CU_ASSERT_PTR_EQUAL(iot, &cfg->profiles[1]);
    CU_ASSERT_STRING_EQUAL(iot->label, "iot");
    CU_ASSERT_STRING_EQUAL(iot->ca_key_uri, "pkcs11:id=%01%02");
    CU_ASSERT_EQUAL(iot->auth, EG_AUTH_MTLS);
    CU_ASSERT_PTR_EQUAL(eg_config_profile(cfg, NULL), p);
    CU_ASSERT_PTR_EQUAL(eg_config_profile(cfg, ""), p);
    CU_ASSERT_PTR_NULL(eg_config_profile(cfg, "default")); /* the URL label of default is "" */
    CU_ASSERT_PTR_NULL(eg_config_profile(cfg, "nope"));
    CU_ASSERT_EQUAL(errs.n, 0);
    eg_config_free(cfg);
}

static void test_defaults_applied(void)
{
    eg_config *cfg;
    const eg_profile_cfg *p;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    if (load(SERVER_TOKEN "[profile fleet-1]\n"
                          "ca_key = pkcs11:object=ca\n"
                          "ca_chain = ca.pem\n"
                          "auth = basic\n"
                          "user = bob:$pbkdf2-sha256$10000$AAAAAAAAAAAAAAAAAAAAAA==$"
                          "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
             &cfg) != 0) {
        dump_errors();
        CU_FAIL_FATAL("the file does not load");
    }
    CU_ASSERT_EQUAL_FATAL(cfg->nlisteners, 1);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[0].address, "127.0.0.1");
    CU_ASSERT_EQUAL(cfg->listeners[0].port, 8443);
    CU_ASSERT_FALSE(cfg->listeners[0].allow_tls12);
    CU_ASSERT_EQUAL(cfg->max_body, 65536);
    /* a thread per open connection: at least 64, whatever the cores */
    CU_ASSERT_EQUAL(cfg->threads, cores > 4 && cores < 64 ? 16 * (unsigned)cores
                                  : cores >= 64           ? 1024
                                                          : 64);
    CU_ASSERT(cfg->threads >= 64);
    CU_ASSERT_EQUAL(cfg->keepalive_ms, 15000);
    CU_ASSERT_EQUAL(cfg->request_timeout_ms, 10000);
    CU_ASSERT_EQUAL(cfg->auth_failures_per_minute, 20);
    CU_ASSERT_EQUAL(cfg->log_refusals_per_second, 100);
    CU_ASSERT_EQUAL(cfg->audit_keep_days, 400);
    CU_ASSERT_EQUAL(cfg->audit_keep_rows, 1000000);
    CU_ASSERT_STRING_EQUAL(cfg->ledger_path, "/var/lib/estgate/ledger.db");
    CU_ASSERT_STRING_EQUAL(cfg->log_level, "info");
    CU_ASSERT_PTR_NULL(cfg->init_args);
    CU_ASSERT_EQUAL(cfg->pool_size, 0);
    CU_ASSERT_EQUAL(cfg->recover_ms, 0);
    CU_ASSERT_EQUAL(cfg->calls, EG_CALLS_AUTO);
    p = eg_config_profile(cfg, "fleet-1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_PTR_NULL(eg_config_profile(cfg, NULL)); /* no default profile here */
    CU_ASSERT_STRING_EQUAL(p->realm, "estgate fleet-1");
    CU_ASSERT_PTR_NULL(p->client_ca_file);
    CU_ASSERT_EQUAL_FATAL(p->nkeys, 3);
    CU_ASSERT(p->keys[0].type == EVP_PKEY_RSA && p->keys[0].min_bits == 2048 &&
              p->keys[0].max_bits == 4096);
    CU_ASSERT(p->keys[1].type == EVP_PKEY_EC && p->keys[1].curve_nid == NID_X9_62_prime256v1);
    CU_ASSERT(p->keys[2].type == EVP_PKEY_EC && p->keys[2].curve_nid == NID_secp384r1);
    CU_ASSERT(p->nekus == 1 && p->ekus[0] == NID_client_auth);
    CU_ASSERT(p->nsubject_nids == 1 && p->subject_nids[0] == NID_commonName);
    CU_ASSERT_EQUAL(p->nsans, 0);
    CU_ASSERT_FALSE(p->require_san);
    CU_ASSERT_PTR_NULL(p->subject_template);
    CU_ASSERT_EQUAL(p->max_days, 365);
    CU_ASSERT_TRUE(p->allow_rekey);
    CU_ASSERT_EQUAL(p->nrequired_attrs, 0);
    eg_config_free(cfg);
}

/* --- one kind of mistake at a time --- */

static void test_unknown_section_and_key(void)
{
    expect_errors(SERVER_TOKEN PROFILE_NONE "colour = blue\n", 1, 12, "colour",
                  "unknown key; [profile default] takes ca_key, ca_chain, auth,");
    /* Keys of an unknown section are not reported one by one. */
    expect_errors(SERVER_TOKEN PROFILE_NONE "[logging]\nlevel = debug\n", 1, 12, "",
                  "unknown section; expected [server], [token] or [profile NAME]");
    CU_ASSERT_STRING_EQUAL(errs.items[0].section, "logging");
    expect_errors("threads = 4\n" SERVER_TOKEN PROFILE_NONE, 1, 1, "threads",
                  "outside any section");
}

static void test_bad_bool(void)
{
    expect_errors(SERVER_TOKEN PROFILE_NONE "require_san = maybe\n", 1, 12, "require_san",
                  "'maybe' is not a boolean; use true/false, yes/no, on/off or 1/0");
}

/* blocked_certs is read at load: a missing file or a bad line is named before anything runs. */
static void test_blocked_certs_file(void)
{
    eg_config *cfg;

    write_file("blocked.txt",
               "# stolen\ncert:" /* 64 hex digits */
               "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
               0644);
    CU_ASSERT_EQUAL_FATAL(load(SERVER "blocked_certs = blocked.txt\n" TOKEN PROFILE_NONE, &cfg), 0);
    CU_ASSERT_PTR_NOT_NULL(cfg->blocked_certs_file);
    CU_ASSERT_PTR_NOT_NULL(strstr(cfg->blocked_certs_file, "/blocked.txt"));
    eg_config_free(cfg);
    expect_errors(SERVER "blocked_certs = nowhere.txt\n" TOKEN PROFILE_NONE, 1, 4, "blocked_certs",
                  "No such file or directory");
    write_file("blocked-bad.txt", "cert:0011\n", 0644);
    expect_errors(SERVER "blocked_certs = blocked-bad.txt\n" TOKEN PROFILE_NONE, 1, 4,
                  "blocked_certs", "line 1 is not a SHA-256 fingerprint");
}

static void test_bad_size_and_numbers(void)
{
    expect_errors(SERVER "max_body = 12x\n" TOKEN PROFILE_NONE, 1, 4, "max_body",
                  "'12x' is not a size; use bytes or a k/M suffix, 1k to 16M");
    expect_errors(SERVER "max_body = 17M\n" TOKEN PROFILE_NONE, 1, 4, "max_body", "1k to 16M");
    expect_errors(SERVER "max_body = 1023\n" TOKEN PROFILE_NONE, 1, 4, "max_body", "1k to 16M");
    expect_errors(SERVER "request_timeout_ms = 500\n" TOKEN PROFILE_NONE, 1, 4,
                  "request_timeout_ms", "'500' is not a whole number from 1000 to 600000");
    expect_errors(SERVER "audit_keep_days = 36501\n" TOKEN PROFILE_NONE, 1, 4, "audit_keep_days",
                  "'36501' is not a whole number from 0 to 36500");
    expect_errors(SERVER "audit_keep_rows = -1\n" TOKEN PROFILE_NONE, 1, 4, "audit_keep_rows",
                  "'-1' is not a whole number from 0 to 1000000000");
    expect_errors(SERVER_TOKEN PROFILE_NONE "max_days = 3651\n", 1, 12, "max_days",
                  "'3651' is not a whole number from 1 to 3650");
    expect_errors(SERVER_TOKEN PROFILE_NONE "max_days = -1\n", 1, 12, "max_days", "from 1 to 3650");
}

static void test_calls_mode(void)
{
    eg_config *cfg = NULL;

    expect_errors(SERVER_TOKEN "calls = sometimes\n" PROFILE_NONE, 1, 8, "calls",
                  "'sometimes' is not a calls mode; use auto, concurrent or serial");
    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN "calls = concurrent\n" PROFILE_NONE, &cfg), 0);
    CU_ASSERT_EQUAL(cfg->calls, EG_CALLS_CONCURRENT);
    CU_ASSERT_EQUAL(cfg->connections, 0); /* auto */
    eg_config_free(cfg);

    static const char *const bad[] = {"0", "9", "-1", "2x", "many", "+2", "2.5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char line[512], msg[96];

        snprintf(line, sizeof(line), "%sconnections = %s\n%s", SERVER_TOKEN, bad[i], PROFILE_NONE);
        snprintf(msg, sizeof(msg), "'%s' is not a number of connections; use auto or 1 to 8",
                 bad[i]);
        expect_errors(line, 1, 8, "connections", msg);
    }
    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN "connections = 8\n" PROFILE_NONE, &cfg), 0);
    CU_ASSERT_EQUAL(cfg->connections, 8);
    eg_config_free(cfg);
    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN "connections = auto\n" PROFILE_NONE, &cfg), 0);
    CU_ASSERT_EQUAL(cfg->connections, 0);
    eg_config_free(cfg);
}

static void test_bad_cidr(void)
{
    static const struct {
        const char *san, *message;
    } cases[] = {
        {"ip:10.0.0.0/33", "'ip:10.0.0.0/33' is not an address range"},
        {"ip:10.0.0.1/8", "has bits set beyond its prefix; did you mean ip:10.0.0.0/8?"},
        {"ip:2001:db8::1/32", "did you mean ip:2001:db8::/32?"},
        {"ip:10.0.0/8", "is not an address range"},
        {"ip:10.0.0.0/", "is not an address range"},
        {"ip:/8", "is not an address range"},
    };
    char text[1024];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(text, sizeof(text), SERVER_TOKEN PROFILE_NONE "san = %s\n", cases[i].san);
        expect_errors(text, 1, 12, "san", cases[i].message);
    }
}

static void test_missing_required_keys(void)
{
    /* At the section's header line, named by the missing key. */
    expect_errors("[server]\ntls_key = pkcs11:object=tls\n"
                  "[token]\nmodule = module.so\nlabel = x\npin_file = pin\n" PROFILE_NONE,
                  1, 1, "tls_chain", "missing; this key is required in [server]");
    expect_errors(SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n",
                  1, 8, "auth", "missing");
    /* A missing section is the file's problem: line 0. */
    expect_errors("[server]\ntls_key = pkcs11:object=tls\ntls_chain = tls.pem\n" PROFILE_NONE, 1, 0,
                  "", "the section is missing; it needs module, label and pin_file");
    CU_ASSERT_STRING_EQUAL(errs.items[0].section, "token");
    expect_errors(SERVER_TOKEN, 1, 0, "", "no [profile NAME] section");
}

static void test_duplicate_profile(void)
{
    expect_errors(SERVER_TOKEN PROFILE_NONE PROFILE_NONE, 1, 12, "",
                  "profile 'default' is already defined at line 8");
    CU_ASSERT_STRING_EQUAL(errs.items[0].section, "profile default");
}

static void test_mtls_without_client_ca(void)
{
    expect_errors(SERVER_TOKEN "[profile iot]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n"
                               "auth = none\n"
                               "\n"
                               "[profile mtls]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n"
                               "auth = mtls, basic\nuser = bob:x\n",
                  2, 16, "auth", "mtls needs client_ca");
    /* basic has a user line (with a bad hash): that line is blamed, not auth. */
    CU_ASSERT(has_error(17, "user", "the hash is not"));
    /* A client CA bundle with no CA in it (the TLS leaf, say): every device would get 403. */
    expect_errors(SERVER_TOKEN "[profile mtls]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n"
                               "auth = mtls\nclient_ca = tls.pem\n",
                  1, 12, "client_ca", "holds no CA certificate, only 1 end-entity certificate");
}

static void test_world_readable_pin_file(void)
{
    write_file("pin", "1234\n", 0604);
    expect_errors(SERVER_TOKEN PROFILE_NONE, 1, 7, "pin_file",
                  "is accessible by everyone (mode 0604); chmod o-rw it");
    write_file("pin", "1234\n", 0640); /* the group may read it: estgated's group */
    expect_errors(SERVER "max_body = 1\n" TOKEN PROFILE_NONE, 1, 4, "max_body", "is not a size");
    expect_errors(
        "[server]\ntls_key = pkcs11:object=tls\ntls_chain = tls.pem\n"
        "[token]\nmodule = module.so\nlabel = estgate\npin_file = no-such-pin\n" PROFILE_NONE,
        1, 7, "pin_file", "No such file or directory");
    /* The PIN itself where its file belongs: said without repeating it. */
    expect_errors(
        "[server]\ntls_key = pkcs11:object=tls\ntls_chain = tls.pem\n"
        "[token]\nmodule = module.so\nlabel = estgate\npin_file = 4d2a9f1c\n" PROFILE_NONE,
        1, 7, "pin_file", "it must name a file holding the user PIN, not the PIN");
    for (size_t i = 0; i < errs.n; i++)
        CU_ASSERT_PTR_NULL(strstr(errs.items[i].message, "4d2a9f1c"));
    /* A file the daemon's user cannot read fails the check as it would fail the start (root
       reads any file, so only an ordinary user sees it). */
    write_file("pin", "1234\n", 0200);
    if (geteuid() != 0)
        expect_errors(SERVER_TOKEN PROFILE_NONE, 1, 7, "pin_file", "cannot be read by this user");
    else
        printf("(as root every file is readable: the unreadable PIN file is not tried) ");
    write_file("pin", "1234\n", 0640);
}

/* renew_expired_days: a number of days, and only where renewals can be authenticated (mtls). */
static void test_renew_expired_days(void)
{
    eg_config *cfg;

    if (load(SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n"
                          "auth = mtls\nclient_ca = clients.pem\nrenew_expired_days = 90\n",
             &cfg) == 0) {
        CU_ASSERT_EQUAL(cfg->profiles[0].renew_expired_days, 90);
        eg_config_free(cfg);
    } else {
        dump_errors();
        CU_FAIL("renew_expired_days = 90");
    }
    if (load(SERVER_TOKEN PROFILE_NONE, &cfg) == 0) {
        CU_ASSERT_EQUAL(cfg->profiles[0].renew_expired_days, 0); /* none by default */
        eg_config_free(cfg);
    }
    expect_errors(SERVER_TOKEN PROFILE_NONE "renew_expired_days = 30\n", 1, 12,
                  "renew_expired_days", "needs auth = mtls");
    expect_errors(SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n"
                               "auth = mtls\nclient_ca = clients.pem\nrenew_expired_days = 4000\n",
                  1, 13, "renew_expired_days", "'4000' is not a whole number from 0 to 3650");
}

/* pin_file = credential:NAME: the PIN systemd gives the service (LoadCredential=NAME:FILE). */
static void test_pin_file_from_a_systemd_credential(void)
{
#define CRED_TOKEN "[token]\nmodule = module.so\nlabel = estgate\npin_file = "
    char creds[PATH_MAX + 16], want[PATH_MAX + 48];
    eg_config *cfg;

    snprintf(creds, sizeof(creds), "%s/credentials", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(creds, 0700), 0);
    write_file("credentials/token-pin", "1234\n", 0400);
    unsetenv("CREDENTIALS_DIRECTORY");
    expect_errors(SERVER CRED_TOKEN "credential:token-pin\n" PROFILE_NONE, 1, 7, "pin_file",
                  "CREDENTIALS_DIRECTORY is not set: this is not the service's context");
    setenv("CREDENTIALS_DIRECTORY", creds, 1);
    if (load(SERVER CRED_TOKEN "credential:token-pin\n" PROFILE_NONE, &cfg) == 0) {
        snprintf(want, sizeof(want), "%s/token-pin", creds);
        CU_ASSERT_STRING_EQUAL(cfg->pin_file, want);
        eg_config_free(cfg);
    } else {
        dump_errors();
        CU_FAIL("a credential's PIN file");
    }
    /* Checked as a file named directly would be. */
    expect_errors(SERVER CRED_TOKEN "credential:other\n" PROFILE_NONE, 1, 7, "pin_file",
                  "credentials/other': No such file or directory");
    expect_errors(SERVER CRED_TOKEN "credential:../pin\n" PROFILE_NONE, 1, 7, "pin_file",
                  "expected credential:NAME");
    expect_errors(SERVER CRED_TOKEN "credential:\n" PROFILE_NONE, 1, 7, "pin_file",
                  "expected credential:NAME");
    unsetenv("CREDENTIALS_DIRECTORY");
#undef CRED_TOKEN
}

static void test_unparsable_pem(void)
{
    char path[PATH_MAX + 64];
    FILE *fp;

    expect_errors(SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\n"
                               "ca_chain = garbage.pem\nauth = none\n",
                  1, 10, "ca_chain", "holds no PEM certificate");
    expect_errors(SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\n"
                               "ca_chain = nothere.pem\nauth = none\n",
                  1, 10, "ca_chain", "No such file or directory");
    /* The issuing CA comes first: a leaf there is a mistake. */
    expect_errors(SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\n"
                               "ca_chain = tls.pem\nauth = none\n",
                  1, 10, "ca_chain", "the first certificate is not a CA certificate");
    /* A damaged second certificate in a bundle. */
    snprintf(path, sizeof(path), "%s/clients.pem", dir);
    fp = fopen(path, "a");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    fputs("-----BEGIN CERTIFICATE-----\nMIIBroken!!\n-----END CERTIFICATE-----\n", fp);
    fclose(fp);
    expect_errors(SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\n"
                               "ca_chain = ca.pem\nauth = mtls\nclient_ca = clients.pem\n",
                  1, 12, "client_ca", "certificate 2 does not parse");
    expect_errors("[server]\ntls_key = pkcs11:object=tls\ntls_chain = garbage.pem\n"
                  "[token]\nmodule = module.so\nlabel = estgate\npin_file = pin\n" PROFILE_NONE,
                  1, 3, "tls_chain", "holds no PEM certificate");
}

static void test_bad_user_hash(void)
{
    static const char *const bad[] = {
        "alice",            /* no hash */
        ":$pbkdf2-sha256$", /* no name */
        "alice:secret",     /* a password, not a hash */
        "alice:$pbkdf2-sha256$600000$AAAAAAAAAAAAAAAAAAAAAA==",
        "alice:$pbkdf2-sha1$600000$AAAAAAAAAAAAAAAAAAAAAA==$"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "alice:$pbkdf2-sha256$999$AAAAAAAAAAAAAAAAAAAAAA==$"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    };
    char text[1024];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text),
                 SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n"
                              "auth = basic\nuser = %s\n",
                 bad[i]);
        expect_errors(text, 1, 12, "user", i < 2 ? "expected NAME:HASH" : "the hash is not");
    }
    snprintf(text, sizeof(text),
             SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n"
                          "auth = basic\nuser = %s\nuser = %s\n",
             alice, alice);
    expect_errors(text, 1, 13, "user", "user 'alice' is listed twice");
    /* basic and no user line at all. */
    expect_errors(SERVER_TOKEN "[profile default]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n"
                               "auth = basic\n",
                  1, 11, "auth", "basic needs at least one user");
}

static void test_bad_values_of_other_kinds(void)
{
    expect_errors(SERVER_TOKEN "[profile default]\nca_key = /etc/ca.key\nca_chain = ca.pem\n"
                               "auth = none\n",
                  1, 9, "ca_key", "is not a pkcs11: URI");
    expect_errors(SERVER_TOKEN "[profile default]\nca_key = pkcs11:token=t\nca_chain = ca.pem\n"
                               "auth = none\n",
                  1, 9, "ca_key", "names no key");
    expect_errors(SERVER_TOKEN PROFILE_NONE "key_types = rsa:1024, dsa\n", 2, 12, "key_types",
                  "RSA sizes are");
    CU_ASSERT(has_error(12, "key_types", "'dsa' is not a key type"));
    expect_errors(SERVER_TOKEN PROFILE_NONE "eku = clientAuth,,anyUse\n", 2, 12, "eku",
                  "empty item");
    expect_errors(SERVER_TOKEN PROFILE_NONE "subject_template = CN=${cn},O=${org}\n", 1, 12,
                  "subject_template", "the only variable is ${cn}");
    expect_errors(SERVER_TOKEN PROFILE_NONE "require_attrs = notAnAttribute\n", 1, 12,
                  "require_attrs", "is not an attribute OpenSSL knows");
    expect_errors(SERVER "listen = 127.0.0.1\n" TOKEN PROFILE_NONE, 1, 4, "listen",
                  "is not ADDRESS:PORT[ tls12]");
    expect_errors(SERVER "listen = [::1]:99999\n" TOKEN PROFILE_NONE, 1, 4, "listen",
                  "is not ADDRESS:PORT[ tls12]");
    expect_errors(SERVER "listen = [::1]:443 tls11\n" TOKEN PROFILE_NONE, 1, 4, "listen",
                  "is not ADDRESS:PORT[ tls12]");
    /* The any-address takes the port on every address of its family: passed, then the start
       failed to bind. Across families (IPv6 listeners take IPv6 only) it is no clash. */
    expect_errors(SERVER
                  "listen = 0.0.0.0:8443\nlisten = 127.0.0.1:8443 tls12\n" TOKEN PROFILE_NONE,
                  1, 5, "listen", "overlaps the listener on 0.0.0.0 port 8443");
    expect_errors(SERVER "listen = [::1]:8443\nlisten = [::]:8443\n" TOKEN PROFILE_NONE, 1, 5,
                  "listen", "overlaps the listener on [::1] port 8443: :: takes that port");
    {
        eg_config *cfg = NULL;

        CU_ASSERT_EQUAL(load(SERVER "listen = 0.0.0.0:8443\nlisten = [::]:8443\nlisten = "
                                    "127.0.0.1:8444\n" TOKEN PROFILE_NONE,
                             &cfg),
                        0);
        eg_config_free(cfg);
    }
    expect_errors(SERVER_TOKEN PROFILE_NONE "auth = mtls\n", 1, 12, "auth", "is set twice");
    expect_errors(SERVER_TOKEN "[profile x y]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\n"
                               "auth = none\n",
                  1, 8, "", "is not a profile name");
}

/*
 * A subject template is read by the daemon's own parser at the check, so a file the check passes
 * starts: blanks around names and values and any case in names are taken; ${cn} inside a value is
 * refused by both (it was passed by the check, then refused at start).
 */
static void test_subject_template_read_as_the_daemon_reads_it(void)
{
    eg_subject_tmpl t;
    eg_config *cfg = NULL;
    char err[256];

    CU_ASSERT_EQUAL_FATAL(
        load(SERVER_TOKEN PROFILE_NONE "subject_template = CN = ${cn} , o = Example Fleet\n", &cfg),
        0);
    CU_ASSERT_EQUAL(eg_subject_tmpl_parse(cfg->profiles[0].subject_template, &t, err, sizeof(err)),
                    0);
    CU_ASSERT_EQUAL(t.n, 2);
    CU_ASSERT(t.rdns[0].nid == NID_commonName && t.rdns[0].from_cn);
    CU_ASSERT(t.rdns[1].nid == NID_organizationName &&
              strcmp(t.rdns[1].value, "Example Fleet") == 0);
    eg_config_free(cfg);
    expect_errors(SERVER_TOKEN PROFILE_NONE "subject_template = CN=dev-${cn}\n", 1, 12,
                  "subject_template", "the only variable is ${cn}, as the whole value");
}

/* --- serverkeygen --- */

static void test_serverkeygen_keys(void)
{
    eg_config *cfg = NULL;
    const eg_profile_cfg *p;

    write_cert("rcpt.pem", "recipient", false);
    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN PROFILE_NONE
                               "serverkeygen = plaintext, encrypt\n"
                               "serverkeygen_key_types = rsa:2048-3072, ec:P-384\n"
                               "serverkeygen_recipients = rcpt.pem\n"
                               "serverkeygen_kek = 0A1b pkcs11:token=t;object=kek1\n"
                               "serverkeygen_kek = 02 pkcs11:token=t;id=%02\n"
                               "serverkeygen_csr_key = yes\n"
                               "serverkeygen_rsa = pkcs1, oaep-sha1\n",
                               &cfg),
                          0);
    p = &cfg->profiles[0];
    CU_ASSERT_EQUAL(p->skg_modes, EG_SKG_PLAINTEXT | EG_SKG_ENCRYPT);
    CU_ASSERT_EQUAL(p->skg_line, 12);
    CU_ASSERT(p->nskg_keys == 2 && p->skg_keys[0].type == EVP_PKEY_RSA &&
              p->skg_keys[0].min_bits == 2048 && p->skg_keys[0].max_bits == 3072 &&
              p->skg_keys[1].curve_nid == NID_secp384r1);
    CU_ASSERT_PTR_NOT_NULL(p->skg_recipients_file);
    CU_ASSERT(p->nskg_keks == 2 && p->skg_keks[0].id_len == 2 && p->skg_keks[0].id[0] == 0x0a &&
              p->skg_keks[0].id[1] == 0x1b && p->skg_keks[0].line == 15 &&
              strcmp(p->skg_keks[1].uri, "pkcs11:token=t;id=%02") == 0);
    CU_ASSERT(p->skg_csr_key);
    CU_ASSERT(p->nskg_rsa == 2 && p->skg_rsa[0] == EG_SKG_RSA_PKCS1 &&
              p->skg_rsa[1] == EG_SKG_RSA_OAEP_SHA1);
    eg_config_free(cfg);

    /* Defaults: off; when on, ec:P-256 and OAEP SHA-256 then SHA-1. */
    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN PROFILE_NONE "serverkeygen = plaintext\n", &cfg), 0);
    p = &cfg->profiles[0];
    CU_ASSERT(p->nskg_keys == 1 && p->skg_keys[0].type == EVP_PKEY_EC &&
              p->skg_keys[0].curve_nid == NID_X9_62_prime256v1);
    CU_ASSERT(p->nskg_rsa == 2 && p->skg_rsa[0] == EG_SKG_RSA_OAEP_SHA256);
    eg_config_free(cfg);
    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN PROFILE_NONE, &cfg), 0);
    CU_ASSERT_EQUAL(cfg->profiles[0].skg_modes, 0);
    eg_config_free(cfg);

    expect_errors(SERVER_TOKEN PROFILE_NONE "serverkeygen = plaintext, cleartext\n", 1, 12,
                  "serverkeygen", "'cleartext' is not a serverkeygen mode");
    expect_errors(SERVER_TOKEN PROFILE_NONE "serverkeygen = encrypt\n", 1, 12, "serverkeygen",
                  "encrypt needs someone to encrypt to");
    expect_errors(SERVER_TOKEN PROFILE_NONE "serverkeygen = plaintext\n"
                                            "serverkeygen_key_types = ed25519, rsa:8192\n",
                  2, 13, "serverkeygen_key_types", "rsa:2048 to rsa:4096, ec:P-256 or ec:P-384");
    /* Tokens make only the standard RSA sizes: an entry must allow one of them. */
    expect_errors(SERVER_TOKEN PROFILE_NONE "serverkeygen = plaintext\n"
                                            "serverkeygen_key_types = rsa:2056, rsa:3000-3060\n",
                  2, 13, "serverkeygen_key_types", "allows none of 2048, 3072 and 4096 bits");
    expect_errors(SERVER_TOKEN PROFILE_NONE "serverkeygen_kek = 0 pkcs11:object=k\n", 1, 12,
                  "serverkeygen_kek", "expected KEYID URI");
    expect_errors(SERVER_TOKEN PROFILE_NONE "serverkeygen_kek = 0102 /etc/kek\n", 1, 12,
                  "serverkeygen_kek", "is not a pkcs11: URI");
    expect_errors(SERVER_TOKEN PROFILE_NONE "serverkeygen_kek = 01 pkcs11:object=a\n"
                                            "serverkeygen_kek = 01 pkcs11:object=b\n",
                  1, 13, "serverkeygen_kek", "is already given at line 12");
    expect_errors(SERVER_TOKEN PROFILE_NONE "serverkeygen_rsa = oaep-sha1, oaep-md5\n", 1, 12,
                  "serverkeygen_rsa", "use oaep-sha256, oaep-sha1 or pkcs1");
}

/* csr_digests: MD5 is not to be had, and a digest listed twice is a mistake. */
static void test_csr_digests(void)
{
    eg_config *cfg = NULL;

    expect_errors(SERVER_TOKEN PROFILE_NONE "csr_digests = sha256, md5\n", 1, 12, "csr_digests",
                  "'md5' is not a digest a CSR may be signed with");
    expect_errors(SERVER_TOKEN PROFILE_NONE "csr_digests = sha256, SHA256\n", 1, 12, "csr_digests",
                  "'SHA256' is listed twice");
    expect_errors(SERVER_TOKEN PROFILE_NONE "csr_digests = \n", 1, 12, "csr_digests", "");
    /* SHA-3 only: ECDSA with SHA-3 cannot be verified, so EC keys could never enroll */
    expect_errors(SERVER_TOKEN PROFILE_NONE "csr_digests = sha3-256, sha3-512\n", 1, 12,
                  "csr_digests", "no EC key's CSR could be accepted");
    /* with RSA keys only it is a choice that works */
    CU_ASSERT_EQUAL(
        load(SERVER_TOKEN PROFILE_NONE "key_types = rsa:3072\ncsr_digests = sha3-256\n", &cfg), 0);
    eg_config_free(cfg);
}

/* issue_limit: COUNT/minute|hour|day, COUNT 1..1000000; absent, no limit. */
static void test_issue_limit(void)
{
    static const char *const bad[] = {"0/hour", "10",          "10/week", "10/ hour",
                                      "-1/day", "1000001/day", "ten/hour"};
    eg_config *cfg = NULL;

    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN PROFILE_NONE "issue_limit = 10/hour\n", &cfg), 0);
    CU_ASSERT(cfg->profiles[0].issue_limit == 10 && cfg->profiles[0].issue_limit_s == 3600);
    eg_config_free(cfg);
    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN PROFILE_NONE "issue_limit = 1000000/day\n", &cfg), 0);
    CU_ASSERT(cfg->profiles[0].issue_limit == 1000000 && cfg->profiles[0].issue_limit_s == 86400);
    eg_config_free(cfg);
    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN PROFILE_NONE "issue_limit = 1/minute\n", &cfg), 0);
    CU_ASSERT(cfg->profiles[0].issue_limit == 1 && cfg->profiles[0].issue_limit_s == 60);
    eg_config_free(cfg);
    CU_ASSERT_EQUAL_FATAL(load(SERVER_TOKEN PROFILE_NONE, &cfg), 0);
    CU_ASSERT_EQUAL(cfg->profiles[0].issue_limit, 0);
    eg_config_free(cfg);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[512];

        snprintf(text, sizeof(text), SERVER_TOKEN PROFILE_NONE "issue_limit = %s\n", bad[i]);
        expect_errors(text, 1, 12, "issue_limit", "use COUNT/minute, COUNT/hour or COUNT/day");
    }
    expect_errors(SERVER_TOKEN PROFILE_NONE "issue_limit = \n", 1, 12, "issue_limit", "no value");
}

/* --- many mistakes, and how lines are counted --- */

static void test_every_mistake_is_reported(void)
{
    static const char text[] = "[server]\n"                     /* 1 */
                               "listen = 127.0.0.1:8443\n"      /* 2 */
                               "max_body = 12x\n"               /* 3 */
                               "tls_chain = tls.pem\n"          /* 4: tls_key missing */
                               "colour = blue\n"                /* 5 */
                               "[token]\n"                      /* 6 */
                               "module = ./no-such-module.so\n" /* 7 */
                               "label = estgate\n"              /* 8 */
                               "pin_file = pin\n"               /* 9 */
                               "[profile default]\n"            /* 10 */
                               "ca_key = pkcs11:object=ca\n"    /* 11 */
                               "ca_chain = garbage.pem\n"       /* 12 */
                               "auth = mtls\n"                  /* 13: no client_ca */
                               "require_san = perhaps\n"        /* 14 */
                               "san = ip:192.168.1.0/16\n"      /* 15 */
                               "[profile default]\n"            /* 16 */
                               "ca_key = pkcs11:object=ca\n"    /* 17 */
                               "ca_chain = ca.pem\n"            /* 18 */
                               "auth = none\n";                 /* 19 */

    expect_errors(text, 9, 1, "tls_key", "missing");
    CU_ASSERT(has_error(3, "max_body", "'12x' is not a size"));
    CU_ASSERT(has_error(5, "colour", "unknown key"));
    CU_ASSERT(has_error(7, "module", "No such file or directory"));
    CU_ASSERT(has_error(12, "ca_chain", "holds no PEM certificate"));
    CU_ASSERT(has_error(13, "auth", "mtls needs client_ca"));
    CU_ASSERT(has_error(14, "require_san", "is not a boolean"));
    CU_ASSERT(has_error(15, "san", "did you mean ip:192.168.0.0/16?"));
    CU_ASSERT(has_error(16, "", "already defined at line 10"));
    /* The error reported for line 12 names the section it is in. */
    for (size_t i = 0; i < errs.n; i++)
        if (errs.items[i].line == 12)
            CU_ASSERT_STRING_EQUAL(errs.items[i].section, "profile default");
}

static void test_lines_counted_through_comments_and_bad_lines(void)
{
    char text[1024], long_uri[260];
    eg_config *cfg;

    memset(long_uri, 'a', sizeof(long_uri) - 1);
    long_uri[sizeof(long_uri) - 1] = '\0';
    snprintf(text, sizeof(text),
             "# a comment\r\n"                   /* 1, CRLF */
             "; another\r\n"                     /* 2 */
             "\r\n"                              /* 3 */
             "[server]   ; inline comment\r\n"   /* 4 */
             "   tls_key = pkcs11:object=tls\n"  /* 5: indented, not a continuation */
             "tls_chain = tls.pem ; the chain\n" /* 6 */
             "this line has no equals sign\n"    /* 7 */
             "[token\n"                          /* 8 */
             "label = pkcs11:object=%s\n"        /* 9: too long */
             "[token]\n"                         /* 10 */
             "module = module.so\n"              /* 11 */
             "label = estgate\n"                 /* 12 */
             "pin_file = pin\n" PROFILE_NONE,    /* 13; profile 14-17 */
             long_uri);
    expect_errors(text, 3, 7, "", "expected 'key = value', '[section]' or a comment");
    CU_ASSERT(has_error(8, "", "expected [SECTION] alone on the line"));
    CU_ASSERT(has_error(9, "", "the line is longer than"));

    /* The same without the bad lines loads; indentation and CRLF are fine. */
    CU_ASSERT_EQUAL(
        load("# a comment\r\n[server]   ; inline comment\r\n"
             "   tls_key = pkcs11:object=tls\r\n"
             "tls_chain = tls.pem ; the chain\r\n"
             "[token]\nmodule = module.so\nlabel = estgate\npin_file = pin\n" PROFILE_NONE,
             &cfg),
        0);
    if (cfg != NULL)
        CU_ASSERT_STRING_EQUAL(cfg->tls_key_uri, "pkcs11:object=tls");
    eg_config_free(cfg);
}

static void test_errors_print_format(void)
{
    char *out = NULL;
    size_t len = 0;
    FILE *fp;

    expect_errors(SERVER "max_body = 12x\n" TOKEN PROFILE_NONE "colour = red\n", 2, 4, "max_body",
                  "size");
    fp = open_memstream(&out, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    eg_config_errors_print(&errs, "etc/estgated.ini", fp);
    fclose(fp);
    CU_ASSERT_STRING_EQUAL(
        out, "etc/estgated.ini:4: [server] max_body: '12x' is not a size; use bytes "
             "or a k/M suffix, 1k to 16M\n"
             "etc/estgated.ini:13: [profile default] colour: unknown key; [profile "
             "default] takes ca_key, ca_chain, auth, realm, user, client_ca, "
             "key_types, eku, san, require_san, subject_attrs, subject_template, "
             "max_days, allow_rekey, renew_expired_days, require_attrs, require_channel_binding, "
             "csr_digests, "
             "issue_limit, serverkeygen, "
             "serverkeygen_key_types, serverkeygen_recipients, serverkeygen_csr_key, "
             "serverkeygen_kek, serverkeygen_rsa\n");
    free(out);
}

static void test_unreadable_file(void)
{
    eg_config *cfg = NULL;
    char path[PATH_MAX + 32];

    snprintf(path, sizeof(path), "%s/absent.ini", dir);
    CU_ASSERT_EQUAL(eg_config_load(path, &cfg, &errs), -1);
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_EQUAL(errs.n, 1);
    CU_ASSERT(has_error(0, "", "cannot open: No such file or directory"));
    /* errs may be NULL; a reused errs is cleared first. */
    CU_ASSERT_EQUAL(eg_config_load(path, &cfg, NULL), -1);
    CU_ASSERT_EQUAL(eg_config_load(path, &cfg, &errs), -1);
    CU_ASSERT_EQUAL(errs.n, 1);
    eg_config_free(NULL);
    eg_config_errors_clear(NULL);
}

/* --- password hashes --- */

static void test_password_hash_round_trip_and_salt(void)
{
    char *h1 = NULL, *h2 = NULL;

    CU_ASSERT_EQUAL_FATAL(eg_password_hash("correct horse", &h1), 0);
    CU_ASSERT_EQUAL_FATAL(eg_password_hash("correct horse", &h2), 0);
    CU_ASSERT(strncmp(h1, "$pbkdf2-sha256$600000$", 22) == 0);
    CU_ASSERT_EQUAL(strlen(h1), 22 + 24 + 1 + 44); /* 16-byte salt, 32-byte key in base64 */
    CU_ASSERT(eg_password_hash_valid(h1));
    CU_ASSERT_STRING_NOT_EQUAL(h1, h2); /* a fresh salt each time */
    CU_ASSERT_TRUE(eg_password_verify("correct horse", h1));
    CU_ASSERT_FALSE(eg_password_verify("correct horsE", h1));
    free(h1);
    free(h2);
    h1 = (char *)"unchanged";
    CU_ASSERT_EQUAL(eg_password_hash("", &h1), -1); /* never a hash of nothing */
    CU_ASSERT_STRING_EQUAL(h1, "unchanged");
}

/* A hash made with another API (PKCS5_PBKDF2_HMAC) verifies: the format is what it says. */
static void test_password_verify_independent_pbkdf2(void)
{
    char h[128];

    make_hash("tr0ub4dor&3", 10000, h, sizeof(h));
    CU_ASSERT_TRUE(eg_password_verify("tr0ub4dor&3", h));
    CU_ASSERT_FALSE(eg_password_verify("tr0ub4dor&4", h));
    CU_ASSERT_FALSE(eg_password_verify("", h));
    h[strlen(h) - 2] ^= 1; /* the last base64 digit of the key: one bit changed */
    CU_ASSERT_FALSE(eg_password_verify("tr0ub4dor&3", h));
}

static void test_password_malformed_hashes(void)
{
    char good[128], bad[160];
    static const char *const malformed[] = {
        "",
        "$pbkdf2-sha256$",
        "$pbkdf2-sha256$10000$",
        "$pbkdf2-sha256$10000$AAAAAAAAAAAAAAAAAAAAAA==$",
        "$pbkdf2-sha256$9999$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "$pbkdf2-sha256$10000001$AAAAAAAAAAAAAAAAAAAAAA==$"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "$pbkdf2-sha256$010000$AAAAAAAAAAAAAAAAAAAAAA==$"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "$pbkdf2-sha256$1e5$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        /* salt too short (8 bytes), key too short (31 bytes), key too long (33 bytes) */
        "$pbkdf2-sha256$10000$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "$pbkdf2-sha256$10000$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        "=",
        "$pbkdf2-sha256$10000$AAAAAAAAAAAAAAAAAAAAAA==$"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        /* not base64, URL-safe alphabet, missing padding, extra field */
        "$pbkdf2-sha256$10000$AAAAAAAAAAAAAAAAAAAAA!==$"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "$pbkdf2-sha256$10000$AAAAAAAAAAAAAAAAAAAA-_==$"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "$pbkdf2-sha256$10000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "$pbkdf2-sha256$10000$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        "$",
        "$pbkdf2-sha512$10000$AAAAAAAAAAAAAAAAAAAAAA==$"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    };

    for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
        if (eg_password_hash_valid(malformed[i]) || eg_password_verify("x", malformed[i]))
            fprintf(stderr, "\n  accepted: %s\n", malformed[i]);
        CU_ASSERT_FALSE(eg_password_hash_valid(malformed[i]));
        CU_ASSERT_FALSE(eg_password_verify("x", malformed[i]));
    }
    CU_ASSERT_FALSE(eg_password_verify("x", NULL));
    CU_ASSERT_FALSE(eg_password_hash_valid(NULL));
    /* The well-formed twin of those is accepted, so the list tests the checks. */
    CU_ASSERT_TRUE(eg_password_hash_valid("$pbkdf2-sha256$10000$AAAAAAAAAAAAAAAAAAAAAA==$"
                                          "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    make_hash("pw", 10000, good, sizeof(good));
    snprintf(bad, sizeof(bad), "%s ", good); /* trailing blank */
    CU_ASSERT_FALSE(eg_password_verify("pw", bad));
    CU_ASSERT_TRUE(eg_password_verify("pw", good));
}

/* The shipped example loads once its /etc/estgate files and module exist (here). */
static void test_example_file_loads(void)
{
    static const char *const files[] = {"tls-chain.pem", "ca-chain.pem", "iot-ca-chain.pem"};
    char line[512], *text = NULL, *at;
    size_t len = 0;
    FILE *in = fopen(EXAMPLE_INI, "r"), *out = open_memstream(&text, &len);
    eg_config *cfg;

    CU_ASSERT_PTR_NOT_NULL_FATAL(in);
    while (fgets(line, sizeof(line), in) != NULL) {
        if (strncmp(line, "module = ", 9) == 0)
            snprintf(line, sizeof(line), "module = module.so\n");
        if ((at = strstr(line, "/etc/estgate/")) != NULL)
            memmove(at, at + 13, strlen(at + 13) + 1); /* relative: in dir */
        fputs(line, out);
    }
    fclose(in);
    fclose(out);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        write_cert(files[i], files[i], true);
    write_cert("factory-ca.pem", "Factory CA", true);
    write_file("user.pin", "1234\n", 0600);
    if (load(text, &cfg) != 0)
        dump_errors();
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->nprofiles, 2);
    CU_ASSERT_PTR_NOT_NULL(eg_config_profile(cfg, NULL));
    CU_ASSERT_PTR_NOT_NULL(eg_config_profile(cfg, "iot"));
    CU_ASSERT_EQUAL(eg_config_profile(cfg, NULL)->auth, EG_AUTH_BASIC);
    CU_ASSERT_EQUAL(eg_config_profile(cfg, "iot")->auth, EG_AUTH_MTLS);
    eg_config_free(cfg);
    free(text);
}

/* --- estgated --check-config and --hash-password --- */

/* Runs eg_config_check_main with stdin from input (NULL: unchanged) and
   stdout and stderr into the file "output"; returns its exit status. */
static int run_main(int argc, char **argv, const char *input, char *output, size_t outsz)
{
    char path[PATH_MAX + 64];
    int saved[3] = {dup(0), dup(1), dup(2)}, fd, rc;
    ssize_t n;

    if (input != NULL) {
        write_file("stdin", input, 0600);
        snprintf(path, sizeof(path), "%s/stdin", dir);
        fd = open(path, O_RDONLY);
        dup2(fd, 0);
        close(fd);
    }
    snprintf(path, sizeof(path), "%s/output", dir);
    fflush(stdout);
    fflush(stderr);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    rc = eg_config_check_main(argc, argv);
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < 3; i++) {
        dup2(saved[i], i);
        close(saved[i]);
    }
    clearerr(stdin);
    fd = open(path, O_RDONLY);
    n = read(fd, output, outsz - 1);
    output[n > 0 ? n : 0] = '\0';
    close(fd);
    return rc;
}

static void test_check_config_command(void)
{
    char out[2 * PATH_MAX + 512], *argv[] = {"estgated", "--check-config", ini, NULL};
    eg_config *cfg;
    char expect[2 * PATH_MAX + 512];

    CU_ASSERT_EQUAL(load(SERVER_TOKEN PROFILE_NONE "[profile iot]\nca_key = pkcs11:object=iot\n"
                                                   "ca_chain = ca.pem\nauth = mtls\n"
                                                   "client_ca = clients.pem\nmax_days = 30\n",
                         &cfg),
                    0);
    eg_config_free(cfg);
    CU_ASSERT_EQUAL(run_main(3, argv, NULL, out, sizeof(out)), 0);
    snprintf(expect, sizeof(expect), "%s: OK\n", ini);
    CU_ASSERT(strncmp(out, expect, strlen(expect)) == 0);
    CU_ASSERT(strstr(out, "profile default at /.well-known/est/: auth none; CA "
                          "pkcs11:token=t;object=ca; 3 key types, 1 EKUs, 0 SAN rules; up to 365 "
                          "days\n") != NULL);
    CU_ASSERT(strstr(out, "profile iot at /.well-known/est/iot/: auth mtls;") != NULL);
    /* the [server] values in force, defaults included */
    CU_ASSERT(strstr(out, "\nserver: 127.0.0.1:8443; ") != NULL);
    CU_ASSERT(strstr(out, " threads, request timeout 10000 ms, keep-alive 15000 ms, bodies up to "
                          "65536 octets; log level info, at most 100 refusal lines a second; at "
                          "most 20 wrong passwords a minute "
                          "from one address; refusals' audit rows kept 400 days, "
                          "the newest 1000000\n") != NULL);
    CU_ASSERT(strstr(out, "up to 30 days\n") != NULL);
    snprintf(expect, sizeof(expect),
             "token \"estgate\" in %s/./module.so, calls concurrent (calls = auto), 1 connection "
             "(connections = auto)\n",
             dir);
    CU_ASSERT(strstr(out, expect) != NULL);

    /* blocked certificates counted, linked profiles named */
    write_file("blocked.txt", "# none yet\n", 0644);
    write_file("estgated.ini",
               SERVER "blocked_certs = blocked.txt\n" TOKEN PROFILE_NONE
                      "require_channel_binding = yes\ncsr_digests = sha512, sha256\n",
               0644);
    CU_ASSERT_EQUAL(run_main(3, argv, NULL, out, sizeof(out)), 0);
    CU_ASSERT(strstr(out, "the newest 1000000; 0 blocked client certificates (") != NULL);
    CU_ASSERT(strstr(out, "up to 365 days; requests linked to their TLS connection (channel "
                          "binding); CSRs signed with sha256 sha512 only\n") != NULL);

    /* The mode a module gets, as the daemon will give it. */
    write_file("estgated.ini", SERVER_TOKEN "calls = serial\nconnections = 3\n" PROFILE_NONE, 0644);
    CU_ASSERT_EQUAL(run_main(3, argv, NULL, out, sizeof(out)), 0);
    snprintf(expect, sizeof(expect),
             "token \"estgate\" in %s/./module.so, calls one at a time, up to 3 connections\n",
             dir);
    CU_ASSERT(strstr(out, expect) != NULL);
    CU_ASSERT_EQUAL(eg_connections_resolve("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so", 0),
                    EG_CONNECTIONS_P11KIT);
    CU_ASSERT_EQUAL(eg_connections_resolve("p11-kit-client.so", 1), 1);
    CU_ASSERT_EQUAL(eg_connections_resolve("/usr/lib/softhsm/libsofthsm2.so", 0), 1);
    CU_ASSERT_EQUAL(
        eg_calls_resolve("/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so", EG_CALLS_AUTO),
        EG_CALLS_SERIAL);
    CU_ASSERT_EQUAL(eg_calls_resolve("p11-kit-client.so", EG_CALLS_CONCURRENT),
                    EG_CALLS_CONCURRENT);
    CU_ASSERT_EQUAL(eg_calls_resolve("/usr/lib/softhsm/libsofthsm2.so", EG_CALLS_AUTO),
                    EG_CALLS_CONCURRENT);

    write_file("estgated.ini", SERVER_TOKEN PROFILE_NONE "max_days = 0\nrealm = \"x\"\n", 0644);
    CU_ASSERT_EQUAL(run_main(3, argv, NULL, out, sizeof(out)), 1);
    snprintf(expect, sizeof(expect),
             "%s:12: [profile default] max_days: '0' is not a whole number from 1 to 3650\n"
             "%s:13: [profile default] realm: expected up to 128 printable ASCII characters "
             "without \" or \\\n",
             ini, ini);
    CU_ASSERT_STRING_EQUAL(out, expect);

    CU_ASSERT_EQUAL(run_main(2, argv, NULL, out, sizeof(out)), 2);
    CU_ASSERT(strstr(out, "usage:") != NULL);
}

/* A self-signed certificate for cert_key that ends `days` days after now, into dir/name. */
/* A certificate for cn ending days from now into name; issued by issuer_cn when not NULL. */
static void write_cert_issued(const char *name, const char *cn, const char *issuer_cn, bool ca,
                              time_t now, long days)
{
    char path[PATH_MAX + 64];
    X509 *x = eg_test_self_signed(cert_key, cn, ca, now - EG_TEST_CERT_AHEAD_S + days * 86400);
    X509_NAME *issuer = X509_NAME_new();
    FILE *fp;

    if (x == NULL || issuer == NULL)
        abort();
    if (issuer_cn != NULL &&
        (!X509_NAME_add_entry_by_txt(issuer, "CN", MBSTRING_UTF8, (const unsigned char *)issuer_cn,
                                     -1, -1, 0) ||
         !X509_set_issuer_name(x, issuer) || !X509_sign(x, cert_key, EVP_sha256())))
        abort();
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if ((fp = fopen(path, "w")) == NULL || !PEM_write_X509(fp, x) || fclose(fp) != 0)
        abort();
    X509_NAME_free(issuer);
    X509_free(x);
}

static void write_cert_ending(const char *name, const char *cn, bool ca, time_t now, long days)
{
    write_cert_issued(name, cn, NULL, ca, now, days);
}

/* t as YYYY-MM-DD (UTC), in one of four static buffers taken in turn. */
static const char *day(time_t t)
{
    static char buf[4][16];
    static int i;
    struct tm tm;

    i = (i + 1) % 4;
    gmtime_r(&t, &tm);
    strftime(buf[i], sizeof(buf[i]), "%Y-%m-%d", &tm);
    return buf[i];
}

/* What eg_expiry_warn says of cfg at now, into out. */
static size_t expiry_text(const eg_config *cfg, time_t now, char *out, size_t cap)
{
    FILE *fp = fmemopen(out, cap, "w");
    size_t n = eg_expiry_warn(cfg, now, fp, "warning: ");

    fclose(fp);
    return n;
}

static void test_certificates_near_their_end_are_warned_of(void)
{
    char out[4096], line[PATH_MAX + 256], *argv[] = {"estgated", "--check-config", ini, NULL};
    time_t now = time(NULL), before;
    eg_config *cfg;

    write_cert_ending("old-tls.pem", "localhost", false, now, -2);
    write_cert_ending("soon-ca.pem", "Soon CA", true, now, 10);
    write_cert_ending("later-ca.pem", "Later CA", true, now, 60);
    write_file("estgated.ini",
               "[server]\ntls_key = pkcs11:object=tls\ntls_chain = old-tls.pem\n" TOKEN
               "[profile default]\nca_key = pkcs11:object=ca\nca_chain = soon-ca.pem\n"
               "auth = none\n"
               "[profile long]\nca_key = pkcs11:object=ca\nca_chain = later-ca.pem\n"
               "auth = none\nmax_days = 90\n"
               "[profile short]\nca_key = pkcs11:object=ca\nca_chain = later-ca.pem\n"
               "auth = none\nmax_days = 30\n"
               "[profile fine]\nca_key = pkcs11:object=ca\nca_chain = ca.pem\nauth = none\n",
               0644);
    CU_ASSERT_EQUAL_FATAL(eg_config_load(ini, &cfg, &errs), 0);
    CU_ASSERT_EQUAL(expiry_text(cfg, now, out, sizeof(out)), 3);
    snprintf(line, sizeof(line), "warning: the TLS certificate (%s/old-tls.pem) expired on ", dir);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
    snprintf(line, sizeof(line),
             "warning: profile default: the CA certificate (%s/soon-ca.pem) expires on ", dir);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, ", in 10 days: certificates issued now end with it"));
    /* 60 days left: worth saying where certificates run for 90, not where they run for 30 */
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "profile long: the CA certificate"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "in 60 days: certificates issued now end with it "
                                       "(max_days = 90); renew it with estgate-provision ca "
                                       "renew and reload\n"));
    CU_ASSERT_PTR_NULL(strstr(out, "profile short"));
    CU_ASSERT_PTR_NULL(strstr(out, "profile fine"));
    /* and a day later, the CA that had 10 days has 9 */
    CU_ASSERT_EQUAL(expiry_text(cfg, now + 86400, out, sizeof(out)), 3);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, ", in 9 days:"));
    /* and once it has ended, the command that renews it */
    CU_ASSERT(expiry_text(cfg, now + 11 * 86400, out, sizeof(out)) >= 2);
    snprintf(line, sizeof(line),
             "warning: profile default: the CA certificate (%s/soon-ca.pem) expired on ", dir);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "the profile issues nothing until it is renewed "
                                       "(estgate-provision ca renew) and reloaded\n"));
    /* A clock a month before every certificate begins (a dead clock battery): one line each,
       with the clock's date and the certificate's first day. */
    before = now - EG_TEST_CERT_AHEAD_S - EG_TEST_CERT_BACK_S;
    CU_ASSERT_EQUAL(expiry_text(cfg, before - 30 * 86400, out, sizeof(out)), 5);
    snprintf(line, sizeof(line),
             "warning: the system clock reads %s, before the TLS certificate (%s/old-tls.pem) "
             "begins on %s: is the clock set?",
             day(before - 30 * 86400), dir, day(before - 2 * 86400));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
    snprintf(line, sizeof(line),
             "warning: profile default: the system clock reads %s, before the CA certificate "
             "(%s/soon-ca.pem) begins on %s: is the clock set? The profile issues nothing until "
             "it is\n",
             day(before - 30 * 86400), dir, day(before + 10 * 86400));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "warning: profile fine: the system clock reads "));
    CU_ASSERT_PTR_NULL(strstr(out, "expire"));
    eg_config_free(cfg);

    /* --check-config says it too, and the file is still OK */
    CU_ASSERT_EQUAL(run_main(3, argv, NULL, out, sizeof(out)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, ": OK\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "warning: the TLS certificate ("));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "warning: profile default: the CA certificate ("));
}

/* A CA an external root certified is renewed by that root: the warning says how. */
static void test_a_subordinate_ca_near_its_end_is_warned_of(void)
{
    char out[4096];
    time_t now = time(NULL);
    eg_config *cfg;

    write_cert_issued("sub-ca.pem", "Sub CA", "Corp Root", true, now, 10);
    write_file("estgated.ini",
               "[server]\ntls_key = pkcs11:object=tls\ntls_chain = tls.pem\n" TOKEN
               "[profile default]\nca_key = pkcs11:object=ca\nca_chain = sub-ca.pem\n"
               "auth = none\n",
               0644);
    CU_ASSERT_EQUAL_FATAL(eg_config_load(ini, &cfg, &errs), 0);
    CU_ASSERT_EQUAL(expiry_text(cfg, now, out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "in 10 days: certificates issued now end with it "
                                       "(max_days = 365); renew it with estgate-provision "
                                       "ca renew --csr (its issuer certifies the request, ca "
                                       "import brings the certificate back) and reload\n"));
    CU_ASSERT_EQUAL(expiry_text(cfg, now + 11 * 86400, out, sizeof(out)), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "until it is renewed (estgate-provision ca renew --csr"));
    eg_config_free(cfg);
}

static void test_hash_password_command(void)
{
    char out[512], *argv[] = {"estgated", "--hash-password", NULL};

    CU_ASSERT_EQUAL(run_main(2, argv, "s3cret pass\nsecond line\n", out, sizeof(out)), 0);
    CU_ASSERT(strncmp(out, "$pbkdf2-sha256$600000$", 22) == 0);
    CU_ASSERT(out[strlen(out) - 1] == '\n');
    out[strcspn(out, "\n")] = '\0';
    CU_ASSERT_TRUE(eg_password_verify("s3cret pass", out)); /* first line only, no newline */
    CU_ASSERT_EQUAL(run_main(2, argv, "\nsecond line\n", out, sizeof(out)), 1);
    CU_ASSERT(strstr(out, "no password") != NULL);
    CU_ASSERT_EQUAL(run_main(2, argv, "", out, sizeof(out)), 1);
}

static CU_TestInfo tests[] = {
    {"serverkeygen keys", test_serverkeygen_keys},
    {"csr_digests", test_csr_digests},
    {"issue_limit", test_issue_limit},
    {"a full file loads with every field as written", test_full_file_loads_every_field},
    {"defaults are applied", test_defaults_applied},
    {"unknown sections and keys", test_unknown_section_and_key},
    {"a bad boolean", test_bad_bool},
    {"bad sizes and numbers", test_bad_size_and_numbers},
    {"blocked_certs is read at load", test_blocked_certs_file},
    {"calls mode and connections", test_calls_mode},
    {"bad CIDRs", test_bad_cidr},
    {"missing required keys and sections", test_missing_required_keys},
    {"a duplicate profile", test_duplicate_profile},
    {"mtls without client_ca", test_mtls_without_client_ca},
    {"a world-readable or missing PIN file", test_world_readable_pin_file},
    {"pin_file from a systemd credential", test_pin_file_from_a_systemd_credential},
    {"renew_expired_days", test_renew_expired_days},
    {"unparsable PEM files", test_unparsable_pem},
    {"bad user hashes and basic without users", test_bad_user_hash},
    {"bad URIs, lists, templates and listeners", test_bad_values_of_other_kinds},
    {"a subject template is read as the daemon reads it",
     test_subject_template_read_as_the_daemon_reads_it},
    {"every mistake in a file is reported", test_every_mistake_is_reported},
    {"lines are counted through comments and bad lines",
     test_lines_counted_through_comments_and_bad_lines},
    {"errors print as FILE:LINE: [section] key: message", test_errors_print_format},
    {"an unreadable file", test_unreadable_file},
    {"password hash round trip, salt", test_password_hash_round_trip_and_salt},
    {"password verify matches an independent PBKDF2", test_password_verify_independent_pbkdf2},
    {"malformed password hashes are false", test_password_malformed_hashes},
    {"the example file loads", test_example_file_loads},
    {"estgated --check-config", test_check_config_command},
    {"certificates near their end are warned of", test_certificates_near_their_end_are_warned_of},
    {"a subordinate CA near its end: its issuer renews it",
     test_a_subordinate_ca_near_its_end_is_warned_of},
    {"estgated --hash-password", test_hash_password_command},
    CU_TEST_INFO_NULL,
};

int main(void)
{
    int rc = eg_cu_run_each("config", setup, teardown, tests);

    EVP_PKEY_free(cert_key);
    return rc;
}
