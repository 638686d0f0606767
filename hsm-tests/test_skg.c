/*
 * serverkeygen end to end (RFC 7030 4.4): a real estgated on a fresh token,
 * requests from curl, answers taken apart here and decrypted with stock
 * `openssl cms -decrypt`, and Bouncy Castle's EST client for the plaintext
 * mode. Every key a client receives must match its certificate and must not
 * be in any estgated memory once the answer has gone (read through
 * /proc/PID/mem, with controls that the reader finds what is there).
 *
 * Kinds: softhsm (plaintext only: SoftHSM 2.6.1 cannot wrap a private key
 * with CKM_AES_CBC_PAD), nss (plaintext and every encrypted recipient kind),
 * p11kit (neither: p11-kit 0.24.1 does not forward C_WrapKey, and estgated
 * must refuse to start saying so).
 */
#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sqlite3.h>

#include "child.h"
#include "config.h"
#include "errors.h"
#include "csr.h"
#include "p11.h"
#include "p11_uri.h"
#include "skg.h"
#include "estgated_fixture.h"
#include "procmem.h"
#include "token_harness.h"

#define KEK_ID    "0a1b2c3d"
#define KEK128_ID "0a1b2c3e" /* an AES-128 pre-shared key beside the AES-256 one */

static eg_th_kind kind;
static eg_th *th;
static char dir[EG_FX_DIR_MAX], ini[PATH_MAX], ca[PATH_MAX], daemon_log[PATH_MAX], kek_hex[65],
    kek128_hex[65];
static char pass[PATH_MAX], user[64]; /* Basic: the password file, and "alice:PASSWORD" */
static unsigned port;
static pid_t daemon_pid;
static eg_child_result *res;

/* Every key a client received, for the memory test: the secret octets to look for. */
#define MAX_SECRETS 64
static struct {
    unsigned char v[512];
    size_t len;
} secrets[MAX_SECRETS];
static size_t nsecrets;

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

#define cmd(...) eg_child_cmd(dir, res, __VA_ARGS__)

/* ---- set-up: recipients, the pre-shared key, the configuration ---- */

/* A self-signed recipient certificate with an SKI; ku is its keyUsage. */
static int recipient(const char *name, const char *alg, const char *opt, const char *ku)
{
    char key[PATH_MAX], crt[PATH_MAX], subj[64], ext[64];

    snprintf(key, sizeof(key), "%s/%s.key", dir, name);
    snprintf(crt, sizeof(crt), "%s/%s.pem", dir, name);
    snprintf(subj, sizeof(subj), "/CN=%s", name);
    snprintf(ext, sizeof(ext), "keyUsage=%s", ku);
    return cmd("openssl", "req", "-x509", "-newkey", alg, "-pkeyopt", opt, "-nodes", "-keyout", key,
               "-out", crt, "-subj", subj, "-days", "30", "-addext", ext, "-addext",
               "subjectKeyIdentifier=hash", NULL);
}

static int recipients(void)
{
    char all[PATH_MAX], *text;
    const char *names[] = {"rcpt-rsa", "rcpt-p256", "rcpt-p384", "rcpt-p521"};
    FILE *f;
    size_t len;

    if (recipient("rcpt-rsa", "rsa", "rsa_keygen_bits:2048", "keyEncipherment") != 0 ||
        recipient("rcpt-p256", "ec", "ec_paramgen_curve:P-256", "keyAgreement") != 0 ||
        recipient("rcpt-p384", "ec", "ec_paramgen_curve:P-384", "keyAgreement") != 0 ||
        recipient("rcpt-p521", "ec", "ec_paramgen_curve:P-521", "keyAgreement") != 0 ||
        (f = fopen(tpath(all, "recipients.pem"), "w")) == NULL)
        return -1;
    for (size_t i = 0; i < 4; i++) {
        char p[PATH_MAX];

        snprintf(p, sizeof(p), "%s/%s.pem", dir, names[i]);
        if ((text = eg_file_read(p, &len)) != NULL)
            fwrite(text, 1, len, f);
        free(text);
    }
    return fclose(f) == 0 ? 0 : -1;
}

/* The pre-shared AES-256 and AES-128 keys: a file for the device side, and the token's copy. */
static int kek(void)
{
    return eg_fx_kek_import(th, "kek-fleet", KEK_ID, kek_hex, res) == 0 &&
                   eg_fx_kek_import_bits(th, "kek-128", KEK128_ID, 128, kek128_hex, res) == 0
               ? 0
               : -1;
}

static const char *uri_label(void)
{
    static char out[128];

    return eg_fx_uri_label(th, out, sizeof(out));
}

static int write_config(bool skg)
{
    char text[8192], extra[1024] = "", both[PATH_MAX + 512] = "", *hash = NULL, *pw;
    int n, m;

    /* Basic auth, as a fleet would use it: a random password in a 0600 file. */
    if (eg_fx_basic_user("alice", pass, NULL, &hash) != 0 ||
        (pw = eg_file_read(pass, NULL)) == NULL)
        return -1;
    snprintf(user, sizeof(user), "alice:%s", pw);
    OPENSSL_cleanse(pw, strlen(pw));
    free(pw);

    /* Both modes and no serverkeygen_csr_key: a request that asks for encryption must name
       its recipient. */
    if (kind == EG_TH_NSS && skg)
        snprintf(both, sizeof(both),
                 "\n[profile both]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = basic\nuser = alice:%s\nsan = dns:.example.com\n"
                 "serverkeygen = plaintext, encrypt\nserverkeygen_recipients = recipients.pem\n",
                 uri_label(), ca, hash);
    if (kind == EG_TH_NSS)
        snprintf(extra, sizeof(extra),
                 "serverkeygen_recipients = recipients.pem\n"
                 "serverkeygen_kek = " KEK_ID " pkcs11:token=%s;object=kek-fleet\n"
                 "serverkeygen_kek = " KEK128_ID " pkcs11:token=%s;object=kek-128\n"
                 "serverkeygen_csr_key = yes\n"
                 "serverkeygen_rsa = oaep-sha256, oaep-sha1, pkcs1\n",
                 uri_label(), uri_label());
    /* NSS's daemon makes one call at a time though its module could take more: the setting. */
    n = eg_fx_ini_head(th, "", kind == EG_TH_NSS ? "calls = serial\n" : "", text, sizeof(text));
    m = n < 0 ? -1
              : snprintf(text + n, sizeof(text) - (size_t)n,
                         "\n[profile default]\n"
                         "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                         "auth = basic\nuser = alice:%s\nsan = dns:.example.com\nmax_days = 30\n"
                         "%s%s%s"
                         "\n[profile nokg]\n"
                         "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                         "auth = none\nsan = dns:.example.com\n"
                         "\n[profile limited]\n"
                         "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                         "auth = basic\nuser = alice:%s\nsan = dns:.example.com\n"
                         "issue_limit = 1/hour\n%s%s",
                         uri_label(), ca, hash,
                         skg ? (kind == EG_TH_NSS ? "serverkeygen = plaintext, encrypt\n"
                                                  : "serverkeygen = plaintext\n")
                             : "",
                         skg ? "serverkeygen_key_types = ec:P-256, ec:P-384, rsa:2048-3072\n" : "",
                         skg ? extra : "", uri_label(), ca, uri_label(), ca, hash,
                         skg ? "serverkeygen = plaintext\n" : "", both);
    free(hash);
    return m > 0 && (size_t)m < sizeof(text) - (size_t)n
               ? eg_file_write(ini, text, (size_t)(n + m), 0600)
               : -1;
}

static int suite_init(void)
{
    const eg_fx_suite s = {&th, &res, dir, ini, ca, pass, daemon_log};

    if (eg_fx_suite_open(kind, "skg", "CN=skg CA", &s) != 0 || recipients() != 0)
        return -1;
    if (kind == EG_TH_NSS && kek() != 0) {
        fprintf(stderr, "kek import: %s\n%s\n", res->out, res->err);
        return -1;
    }
    if (kind == EG_TH_P11KIT) /* the refusal test starts it with its own file */
        return write_config(true);
    if (write_config(true) != 0 || eg_fx_daemon_start(ini, daemon_log, &daemon_pid, &port, 1) != 0)
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

/* ---- requests ---- */

typedef struct answer {
    int status;
    char ctype[256];
    unsigned char *key, *cert; /* the key part's DER, the certificate part's DER */
    size_t key_len, cert_len;
    char key_type[128];
    char text[512]; /* an error's body */
} answer;

static void answer_clear(answer *a)
{
    OPENSSL_free(a->key);
    OPENSSL_free(a->cert);
    memset(a, 0, sizeof(*a));
}

static unsigned char *b64_decode(const char *s, size_t n, size_t *out_len)
{
    BIO *b64 = BIO_new(BIO_f_base64()), *mem = BIO_new_mem_buf(s, (int)n);
    unsigned char *out = OPENSSL_malloc(n);
    int got;

    BIO_push(b64, mem);
    got = out != NULL ? BIO_read(b64, out, (int)n) : -1;
    BIO_free_all(b64);
    if (got <= 0) {
        OPENSSL_free(out);
        return NULL;
    }
    *out_len = (size_t)got;
    return out;
}

/* Splits a multipart/mixed body into its key part and certificate part. */
static int parts(answer *a, const char *body, size_t len)
{
    const char *b = strstr(a->ctype, "boundary="), *p = body, *end = body + len;
    char delim[96];
    int found = 0;

    if (b == NULL)
        return -1;
    snprintf(delim, sizeof(delim), "--%.*s", (int)strcspn(b + 9, "\r\n;"), b + 9);
    while ((p = strstr(p, delim)) != NULL && p < end) {
        const char *hdr = p + strlen(delim), *data, *next, *ct;

        if (strncmp(hdr, "--", 2) == 0)
            break;
        if ((data = strstr(hdr, "\r\n\r\n")) == NULL || (next = strstr(data, delim)) == NULL)
            return -1;
        data += 4;
        ct = strstr(hdr, "Content-Type: ");
        if (ct == NULL || ct > data || strstr(hdr, "Content-Transfer-Encoding: base64") == NULL)
            return -1;
        ct += 14;
        if (strncmp(ct, "application/pkcs7-mime; smime-type=certs-only", 45) == 0) {
            a->cert = b64_decode(data, (size_t)(next - data), &a->cert_len);
        } else {
            snprintf(a->key_type, sizeof(a->key_type), "%.*s", (int)strcspn(ct, "\r\n"), ct);
            a->key = b64_decode(data, (size_t)(next - data), &a->key_len);
        }
        found++;
        p = next;
    }
    return found == 2 && a->key != NULL && a->cert != NULL ? 0 : -1;
}

/* POSTs csr (DER) to label's serverkeygen with curl; the answer taken apart. */
static int post(answer *a, const char *label, const unsigned char *csr, size_t csr_len,
                const char *ctype)
{
    char url[256], data[PATH_MAX + 2], body[PATH_MAX], hdr[PATH_MAX], ct[128], b64[PATH_MAX];
    char *text = NULL, *headers = NULL, *h;
    size_t len = 0, hlen;
    BIO *f;

    memset(a, 0, sizeof(*a));
    snprintf(url, sizeof(url), "https://localhost:%u/.well-known/est/%s%sserverkeygen", port, label,
             label[0] ? "/" : "");
    snprintf(ct, sizeof(ct), "Content-Type: %s", ctype ? ctype : "application/pkcs10");
    if ((f = BIO_new_file(tpath(b64, "req.b64"), "w")) == NULL)
        return -1;
    {
        BIO *enc = BIO_new(BIO_f_base64());

        BIO_push(enc, f);
        BIO_write(enc, csr, (int)csr_len);
        (void)BIO_flush(enc);
        BIO_free_all(enc);
    }
    snprintf(data, sizeof(data), "@%s", b64);
    if (cmd("curl", "-sS", "--cacert", ca, "-o", tpath(body, "resp.body"), "-D",
            tpath(hdr, "resp.hdr"), "-w", "%{http_code}", "-u", user, "-H", ct, "--data-binary",
            data, url, NULL) != 0)
        return -1;
    a->status = atoi(res->out);
    headers = eg_file_read(hdr, &hlen);
    text = eg_file_read(body, &len);
    if (headers != NULL && (h = strcasestr(headers, "\r\nContent-Type: ")) != NULL)
        snprintf(a->ctype, sizeof(a->ctype), "%.*s", (int)strcspn(h + 16, "\r\n"), h + 16);
    if (a->status != 200 && text != NULL)
        snprintf(a->text, sizeof(a->text), "%.*s", (int)len, text);
    if (a->status == 200 && (text == NULL || parts(a, text, len) != 0))
        a->status = -2;
    free(headers);
    free(text);
    return a->status;
}

/* A CSR for cn, with a key of alg ("P-256", "P-384", "RSA"), and extra attributes. */
typedef struct attr {
    const char *oid;
    int type; /* V_ASN1_OCTET_STRING or V_ASN1_SEQUENCE (value is DER) */
    const unsigned char *value;
    size_t len;
} attr;

static EVP_PKEY *new_key(const char *alg)
{
    if (strcmp(alg, "RSA") == 0)
        return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    if (strncmp(alg, "RSA-", 4) == 0) /* RSA-BITS */
        return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)strtoul(alg + 4, NULL, 10));
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", alg);
}

/* As make_csr, and the CSR's own key written to key_out (PEM) when it is not NULL. */
static unsigned char *make_csr_key(const char *alg, const char *cn, const attr *attrs, size_t n,
                                   size_t *len, const char *key_out);

static unsigned char *make_csr(const char *alg, const char *cn, const attr *attrs, size_t n,
                               size_t *len)
{
    return make_csr_key(alg, cn, attrs, n, len, NULL);
}

static unsigned char *make_csr_key(const char *alg, const char *cn, const attr *attrs, size_t n,
                                   size_t *len, const char *key_out)
{
    X509_REQ *req = X509_REQ_new();
    EVP_PKEY *k = new_key(alg);
    X509_NAME *name = X509_NAME_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    char san[128];
    unsigned char *der = NULL;
    int dlen = 0;

    snprintf(san, sizeof(san), "DNS:%s", cn);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    sk_X509_EXTENSION_push(exts, X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san));
    X509_REQ_set_subject_name(req, name);
    X509_REQ_set_pubkey(req, k);
    X509_REQ_add_extensions(req, exts);
    for (size_t i = 0; i < n; i++) {
        ASN1_OBJECT *o = OBJ_txt2obj(attrs[i].oid, 1);

        X509_REQ_add1_attr_by_OBJ(req, o, attrs[i].type, attrs[i].value, (int)attrs[i].len);
        ASN1_OBJECT_free(o);
    }
    if (X509_REQ_sign(req, k, EVP_sha256()) > 0)
        dlen = i2d_X509_REQ(req, &der);
    if (key_out != NULL) {
        BIO *b = BIO_new_file(key_out, "w");

        if (b == NULL || PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) != 1)
            dlen = 0;
        BIO_free(b);
    }
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_NAME_free(name);
    EVP_PKEY_free(k);
    X509_REQ_free(req);
    *len = dlen > 0 ? (size_t)dlen : 0;
    return dlen > 0 ? der : NULL;
}

static X509 *answer_cert(const answer *a)
{
    const unsigned char *p = a->cert;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)a->cert_len);
    X509 *x = NULL;

    if (p7 != NULL && PKCS7_type_is_signed(p7) && sk_X509_num(p7->d.sign->cert) == 1)
        x = X509_dup(sk_X509_value(p7->d.sign->cert, 0));
    PKCS7_free(p7);
    return x;
}

/* Remembers the key's secret octets: EC's private scalar, RSA's first prime. */
static void remember(EVP_PKEY *k)
{
    BIGNUM *bn = NULL;
    int n;

    if (nsecrets == MAX_SECRETS ||
        EVP_PKEY_get_bn_param(k,
                              EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA ? OSSL_PKEY_PARAM_RSA_FACTOR1
                                                                      : OSSL_PKEY_PARAM_PRIV_KEY,
                              &bn) != 1)
        return;
    n = BN_num_bytes(bn);
    if (n > 0 && n <= 512 && BN_bn2bin(bn, secrets[nsecrets].v) == n)
        secrets[nsecrets++].len = (size_t)n;
    BN_clear_free(bn);
}

/* The PKCS#8 matches the issued certificate, which chains to the CA; returns the key. */
static EVP_PKEY *check_key(const unsigned char *p8, size_t len, const answer *a, const char *alg)
{
    const unsigned char *p = p8;
    EVP_PKEY *k = d2i_AutoPrivateKey(NULL, &p, (long)len);
    X509 *x = answer_cert(a);
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    char group[32] = "";

    CU_ASSERT_PTR_NOT_NULL(k);
    CU_ASSERT_PTR_NOT_NULL(x);
    CU_ASSERT(p == p8 + len); /* nothing after the PrivateKeyInfo */
    if (k != NULL && x != NULL) {
        CU_ASSERT_EQUAL(X509_check_private_key(x, k), 1);
        CU_ASSERT(X509_STORE_load_file(st, ca) == 1 && X509_STORE_CTX_init(ctx, st, x, NULL) == 1 &&
                  X509_verify_cert(ctx) == 1);
        if (strncmp(alg, "RSA", 3) == 0) {
            int bits = alg[3] == '-' ? atoi(alg + 4) : 2048;

            CU_ASSERT(EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA && EVP_PKEY_get_bits(k) == bits);
        } else {
            EVP_PKEY_get_group_name(k, group, sizeof(group), NULL);
            CU_ASSERT_STRING_EQUAL(group, strcmp(alg, "P-384") == 0 ? "secp384r1" : "prime256v1");
        }
        remember(k);
    }
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    X509_free(x);
    return k;
}

/* Certificates in the ledger (read beside the running daemon: WAL allows it). */
/* Rows of a ledger file in dir: every issuance row, intents included, or certificates only. */
static int ledger_rows(const char *file, bool certs_only)
{
    char path[PATH_MAX];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int n = -1;

    if (sqlite3_open_v2(tpath(path, file), &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db,
                           certs_only ? "SELECT count(*) FROM issuance WHERE cert IS NOT NULL"
                                      : "SELECT count(*) FROM issuance",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static int ledger_certs(void)
{
    return ledger_rows("ledger.db", true);
}

/* ---- plaintext ---- */

static void plaintext(const char *alg)
{
    unsigned char *csr;
    size_t len;
    answer a;
    EVP_PKEY *k;
    int before = ledger_certs();

    CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr(alg, "kg.example.com", NULL, 0, &len));
    CU_ASSERT_EQUAL(post(&a, "", csr, len, NULL), 200);
    if (a.status != 200)
        fprintf(stderr, "serverkeygen %s: %d %s\n", alg, a.status, a.text);
    CU_ASSERT_STRING_EQUAL(a.key_type, "application/pkcs8");
    if (a.status == 200) {
        k = check_key(a.key, a.key_len, &a, alg);
        EVP_PKEY_free(k);
        CU_ASSERT_EQUAL(ledger_certs(), before + 1);
    }
    answer_clear(&a);
    OPENSSL_free(csr);
}

static void test_plaintext_p256(void)
{
    if (kind != EG_TH_P11KIT)
        plaintext("P-256");
}

static void test_plaintext_p384(void)
{
    if (kind != EG_TH_P11KIT)
        plaintext("P-384");
}

static void test_plaintext_rsa2048(void)
{
    if (kind != EG_TH_P11KIT)
        plaintext("RSA");
}

/*
 * A CSR's RSA key of a size tokens do not make (NSS answers CKR_ARGUMENTS_BAD for 2056 bits)
 * but the profile allows (rsa:2048-3072): the next standard size up is generated.
 */
static void test_an_unusual_rsa_size_gets_the_next_standard_size(void)
{
    unsigned char *csr;
    size_t len;
    answer a;

    if (kind == EG_TH_P11KIT)
        return;
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr("RSA-2056", "odd.example.com", NULL, 0, &len));
    CU_ASSERT_EQUAL(post(&a, "", csr, len, NULL), 200);
    if (a.status != 200)
        fprintf(stderr, "serverkeygen RSA-2056: %d %s\n", a.status, a.text);
    if (a.status == 200) {
        EVP_PKEY_free(check_key(a.key, a.key_len, &a, "RSA-3072"));
        CU_ASSERT(eg_file_count(daemon_log, "key=rsa:3072 mode=plaintext") >= 1);
    }
    answer_clear(&a);
    OPENSSL_free(csr);
}

/* issue_limit (1 an hour on "limited"): the second key is refused before the token makes it. */
static void test_issue_limit_refuses_before_the_key_is_made(void)
{
    unsigned char *csr;
    size_t len;
    answer a;

    if (kind == EG_TH_P11KIT)
        return;
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr("P-256", "lim.example.com", NULL, 0, &len));
    int served = 0, status;

    CU_ASSERT_EQUAL(post(&a, "limited", csr, len, NULL), 200);
    answer_clear(&a);
    served++;
    /* The hour's window may turn over right after the first; not twice within seconds. */
    if ((status = post(&a, "limited", csr, len, NULL)) == 200) {
        answer_clear(&a);
        served++;
        status = post(&a, "limited", csr, len, NULL);
    }
    CU_ASSERT_EQUAL(status, 429);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.text, "issue_limit"));
    answer_clear(&a);
    CU_ASSERT_EQUAL(eg_file_count(daemon_log, "event=serverkeygen profile=limited "), served);
    CU_ASSERT_EQUAL(eg_file_count(daemon_log, "event=issue_limit profile=limited "), 1);
    free(csr);
}

/* The lower-case hex of x's serial, as the audit's serial= and replaces= write it. */
static void serial_hex(const X509 *x, char *out, size_t cap)
{
    const ASN1_INTEGER *sn = x != NULL ? X509_get0_serialNumber(x) : NULL;
    const unsigned char *p = sn != NULL ? ASN1_STRING_get0_data(sn) : NULL;
    size_t n = 0;

    for (int i = 0; p != NULL && i < ASN1_STRING_length(sn) && n + 3 <= cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%02x", p[i]);
    out[n] = '\0';
}

static int ledger_count(const char *sql);

/* What one SQL count query finds in a ledger file of dir; -1 when it cannot be read. */
static int ledger_count_in(const char *file, const char *sql)
{
    char path[PATH_MAX];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int n = -1;

    if (sqlite3_open_v2(tpath(path, file), &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/*
 * A plaintext answer's key is kept nowhere, so the same request twice gets two keys and two
 * certificates, never the first one again; and the first certificate, which its device never
 * got (or lost), is superseded in the ledger by the second, which names it (replaces=).
 */
static void test_repeated_request_gets_a_new_key(void)
{
    unsigned char *csr;
    size_t len;
    answer a, b;
    X509 *x = NULL, *y = NULL;
    char sx[48] = "", sy[48] = "", line[192];

    if (kind == EG_TH_P11KIT)
        return;
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr("P-256", "again.example.com", NULL, 0, &len));
    CU_ASSERT_EQUAL(post(&a, "", csr, len, NULL), 200);
    CU_ASSERT_EQUAL(post(&b, "", csr, len, NULL), 200);
    CU_ASSERT_STRING_EQUAL(b.key_type, "application/pkcs8");
    if (a.status == 200 && b.status == 200) {
        x = answer_cert(&a);
        y = answer_cert(&b);
        CU_ASSERT(x != NULL && y != NULL && X509_cmp(x, y) != 0);
        CU_ASSERT(x != NULL && y != NULL &&
                  EVP_PKEY_eq(X509_get0_pubkey(x), X509_get0_pubkey(y)) != 1);
        CU_ASSERT(a.key_len != b.key_len || memcmp(a.key, b.key, a.key_len) != 0);
        serial_hex(x, sx, sizeof(sx));
        serial_hex(y, sy, sizeof(sy));
        snprintf(line, sizeof(line), "serial=%s key=ec:P-256 mode=plaintext replaces=%s", sy, sx);
        CU_ASSERT_EQUAL(eg_file_count(daemon_log, line), 1);
        if (eg_file_count(daemon_log, line) != 1)
            fprintf(stderr, "no audit line with '%s'\n", line);
    }
    CU_ASSERT_EQUAL(ledger_count("SELECT count(*) FROM issuance WHERE subject = "
                                 "'CN=again.example.com' AND state = 'issued'"),
                    2);
    CU_ASSERT_EQUAL(ledger_count("SELECT count(*) FROM issuance WHERE subject = "
                                 "'CN=again.example.com' AND superseded IS NOT NULL AND "
                                 "id = (SELECT min(id) FROM issuance WHERE subject = "
                                 "'CN=again.example.com')"),
                    1);
    X509_free(x);
    X509_free(y);
    answer_clear(&a);
    answer_clear(&b);
    OPENSSL_free(csr);
}

/* POSTs csr (DER) to the default profile's /simpleenroll; the HTTP status. */
static int post_enroll(const unsigned char *csr, size_t csr_len)
{
    char url[256], data[PATH_MAX + 2], body[PATH_MAX], b64[PATH_MAX];
    BIO *f = BIO_new_file(tpath(b64, "enroll.b64"), "w"), *enc = BIO_new(BIO_f_base64());

    if (f == NULL || enc == NULL) {
        BIO_free(f);
        BIO_free(enc);
        return -1;
    }
    BIO_push(enc, f);
    BIO_write(enc, csr, (int)csr_len);
    (void)BIO_flush(enc);
    BIO_free_all(enc);
    snprintf(url, sizeof(url), "https://localhost:%u/.well-known/est/simpleenroll", port);
    snprintf(data, sizeof(data), "@%s", b64);
    if (cmd("curl", "-sS", "--cacert", ca, "-o", tpath(body, "enroll.body"), "-w", "%{http_code}",
            "-u", user, "-H", "Content-Type: application/pkcs10", "--data-binary", data, url,
            NULL) != 0)
        return -1;
    return atoi(res->out);
}

/*
 * The same CSR to /simpleenroll and to /serverkeygen is two requests: the second is not
 * answered with the first's certificate (for the CSR's key), and does not supersede it.
 */
static void test_simpleenroll_and_serverkeygen_are_apart(void)
{
    unsigned char *csr;
    size_t len;
    answer a;

    if (kind == EG_TH_P11KIT)
        return;
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr("P-256", "both-ways.example.com", NULL, 0, &len));
    CU_ASSERT_EQUAL(post_enroll(csr, len), 200);
    CU_ASSERT_EQUAL(post(&a, "", csr, len, NULL), 200);
    if (a.status == 200)
        EVP_PKEY_free(check_key(a.key, a.key_len, &a, "P-256"));
    CU_ASSERT_EQUAL(ledger_count("SELECT count(*) FROM issuance WHERE subject = "
                                 "'CN=both-ways.example.com' AND state = 'issued' AND "
                                 "superseded IS NULL"),
                    2);
    answer_clear(&a);
    OPENSSL_free(csr);
}

static void test_bouncy_castle_client(void)
{
    char server[64], key[PATH_MAX], crt[PATH_MAX];
    char *argv[] = {"java",
                    "-cp",
                    EG_BC_CLASSPATH,
                    EG_SOURCE_DIR "/hsm-tests/java/EstClient.java",
                    "serverkeygen",
                    "--server",
                    server,
                    "--trust",
                    ca,
                    "--user",
                    "alice",
                    "--pass-file",
                    pass,
                    "--cn",
                    "bc-kg.example.com",
                    "--dns",
                    "bc-kg.example.com",
                    "--key-out",
                    tpath(key, "bc-kg.key"),
                    "--cert-out",
                    tpath(crt, "bc-kg.pem"),
                    NULL};

    if (kind == EG_TH_P11KIT)
        return;
    snprintf(server, sizeof(server), "localhost:%u", port);
    CU_ASSERT_EQUAL(eg_child_run(dir, NULL, argv, res), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "key matches certificate"));
    CU_ASSERT_EQUAL(cmd("openssl", "verify", "-CAfile", ca, crt, NULL), 0);
    {
        FILE *f = fopen(key, "r");
        EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;

        CU_ASSERT_PTR_NOT_NULL(k);
        if (k != NULL)
            remember(k);
        EVP_PKEY_free(k);
        if (f != NULL)
            fclose(f);
    }
}

/* ---- encrypted (NSS) ---- */

/* The key identifier of a recipient certificate. */
static size_t ski_of(const char *name, unsigned char *out)
{
    char p[PATH_MAX];
    FILE *f;
    X509 *x;
    const ASN1_OCTET_STRING *s;
    size_t n = 0;

    snprintf(p, sizeof(p), "%s/%s.pem", dir, name);
    if ((f = fopen(p, "r")) == NULL)
        return 0;
    if ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL &&
        (s = X509_get0_subject_key_id(x)) != NULL && ASN1_STRING_length(s) <= 64) {
        n = (size_t)ASN1_STRING_length(s);
        memcpy(out, ASN1_STRING_get0_data(s), n);
    }
    X509_free(x);
    fclose(f);
    return n;
}

/* id-RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 4055 4.1), a whole SMIMECapability. */
#define CAP_OAEP_SHA256 "oaep-sha256"
static const unsigned char oaep_sha256[] = {
    0x30, 0x38, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07, 0x30, 0x2b,
    0xa0, 0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    0xa1, 0x1a, 0x30, 0x18, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
    0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01};

/* SMIMECapabilities DER listing oids (each a capability without parameters, or
   CAP_OAEP_SHA256). At most 127 octets inside. */
static size_t smime_caps(const char *const *oids, size_t n, unsigned char *out)
{
    unsigned char inner[256];
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        ASN1_OBJECT *obj;
        unsigned char *p = inner + o + 2;
        int len;

        if (strcmp(oids[i], CAP_OAEP_SHA256) == 0) {
            memcpy(inner + o, oaep_sha256, sizeof(oaep_sha256));
            o += sizeof(oaep_sha256);
            continue;
        }
        obj = OBJ_txt2obj(oids[i], 1);
        len = i2d_ASN1_OBJECT(obj, &p);

        inner[o] = 0x30;
        inner[o + 1] = (unsigned char)len;
        o += 2 + (size_t)len;
        ASN1_OBJECT_free(obj);
    }
    out[0] = 0x30;
    out[1] = (unsigned char)o;
    memcpy(out + 2, inner, o);
    return o + 2;
}

#define OID_DECRYPT_KID "1.2.840.113549.1.9.16.2.37"
#define OID_ASYM_KID    "1.2.840.113549.1.9.16.2.54"
#define OID_SMIME_CAPS  "1.2.840.113549.1.9.15"
#define OID_OAEP        "1.2.840.113549.1.1.7"
#define OID_RSA         "1.2.840.113549.1.1.1"
#define OID_ECDH_SHA256 "1.3.132.1.11.1"
#define OID_ECDH_SHA384 "1.3.132.1.11.2"
#define OID_AES128_CBC  "2.16.840.1.101.3.4.1.2"
#define OID_AES128_WRAP "2.16.840.1.101.3.4.1.5"
#define OID_AES256_WRAP "2.16.840.1.101.3.4.1.45"

/* `openssl cms -decrypt` of the key part with extra arguments; the recovered PKCS#8 file. */
static int cms_decrypt(const answer *a, const char *out, ...)
{
    char in[PATH_MAX], *argv[24];
    va_list ap;
    int n = 0;

    if (eg_file_write(tpath(in, "key-part.der"), a->key, a->key_len, 0600) != 0)
        return -1;
    argv[n++] = "openssl";
    argv[n++] = "cms";
    argv[n++] = "-decrypt";
    argv[n++] = "-inform";
    argv[n++] = "DER";
    argv[n++] = "-in";
    argv[n++] = in;
    argv[n++] = "-binary";
    argv[n++] = "-out";
    argv[n++] = (char *)out;
    va_start(ap, out);
    while (n < 22 && (argv[n] = va_arg(ap, char *)) != NULL)
        n++;
    va_end(ap);
    argv[n] = NULL;
    return eg_child_run(dir, NULL, argv, res);
}

typedef struct enc_case {
    const char *what;
    const char *key_alg;  /* the CSR's own key */
    const char *rcpt;     /* recipient certificate by SKI; NULL: none */
    bool kek;             /* DecryptKeyIdentifier */
    const char *caps[3];  /* SMIMECapabilities OIDs, NULL-terminated; none: no attribute */
    const char *inkey;    /* for cms -decrypt: recipient key file name (without .key);
                             "csr": the CSR's own key */
    const char *want;     /* expected in the audit line: recipient=... */
    const char *gen;      /* the key expected back: "P-256" or "RSA" */
    bool kek128;          /* with kek: the AES-128 pre-shared key */
    const char *print[4]; /* in `openssl cms -cmsout -print` of the answer: the algorithms */
} enc_case;

/* The answer's structure as openssl prints it has every one of want. */
static void check_print(const answer *a, const char *what, const char *const *want, size_t n)
{
    char in[PATH_MAX];

    CU_ASSERT_EQUAL_FATAL(eg_file_write(tpath(in, "key-part.der"), a->key, a->key_len, 0600), 0);
    CU_ASSERT_EQUAL(cmd("openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", in, NULL),
                    0);
    for (size_t i = 0; i < n && want[i] != NULL; i++) {
        CU_ASSERT_PTR_NOT_NULL(strstr(res->out, want[i]));
        if (strstr(res->out, want[i]) == NULL)
            fprintf(stderr, "%s: no '%s' in the answer's structure\n", what, want[i]);
    }
}

static void encrypted(const enc_case *c)
{
    unsigned char ski[64], capder[128], kid[4] = {0x0a, 0x1b, 0x2c, c->kek128 ? 0x3e : 0x3d}, *csr;
    attr at[2];
    size_t n = 0, len, ncaps = 0;
    char p8[PATH_MAX], inkey[PATH_MAX];
    answer a;
    char *p8der;
    size_t p8len;

    if (c->rcpt != NULL)
        at[n++] = (attr){OID_ASYM_KID, V_ASN1_OCTET_STRING, ski, ski_of(c->rcpt, ski)};
    if (c->kek)
        at[n++] = (attr){OID_DECRYPT_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)};
    while (ncaps < 3 && c->caps[ncaps] != NULL)
        ncaps++;
    if (ncaps > 0)
        at[n++] =
            (attr){OID_SMIME_CAPS, V_ASN1_SEQUENCE, capder, smime_caps(c->caps, ncaps, capder)};
    snprintf(inkey, sizeof(inkey), "%s/%s.key", dir, c->inkey ? c->inkey : "");
    CU_ASSERT_PTR_NOT_NULL_FATAL(
        csr = make_csr_key(c->key_alg, "enc.example.com", at, n, &len,
                           c->inkey && strcmp(c->inkey, "csr") == 0 ? inkey : NULL));
    CU_ASSERT_EQUAL(post(&a, "", csr, len, NULL), 200);
    if (a.status != 200)
        fprintf(stderr, "serverkeygen %s: %d %s\n", c->what, a.status, a.text);
    CU_ASSERT_STRING_EQUAL(a.key_type, "application/pkcs7-mime; smime-type=server-generated-key");
    if (a.status == 200) {
        char *log = eg_file_read(daemon_log, NULL), want[96];

        snprintf(want, sizeof(want), "recipient=%s", c->want);
        CU_ASSERT(log != NULL && strstr(log, want) != NULL);
        free(log);
        check_print(&a, c->what, c->print, 4);
        if (c->kek)
            CU_ASSERT_EQUAL(cms_decrypt(&a, tpath(p8, "key.p8"), "-secretkey",
                                        c->kek128 ? kek128_hex : kek_hex, "-secretkeyid",
                                        c->kek128 ? KEK128_ID : KEK_ID, NULL),
                            0)
        else
            CU_ASSERT_EQUAL(cms_decrypt(&a, tpath(p8, "key.p8"), "-inkey", inkey, NULL), 0);
        if ((p8der = eg_file_read(p8, &p8len)) != NULL) {
            EVP_PKEY_free(check_key((unsigned char *)p8der, p8len, &a, c->gen));
            free(p8der);
        }
    }
    answer_clear(&a);
    OPENSSL_free(csr);
}

static void test_encrypted_to_every_recipient_kind(void)
{
    /* Without SMIMECapabilities, the defaults: AES-256-CBC, the curve's own KDF, AES-256 wrap. */
    static const enc_case cases[] = {
        {"ktri oaep-sha256",
         "P-256",
         "rcpt-rsa",
         false,
         {NULL},
         "rcpt-rsa",
         "rsa-oaep-sha256 content=aes256",
         "P-256",
         false,
         {"rsaesOaep", "aes-256-cbc"}},
        {"ktri oaep-sha1",
         "P-256",
         "rcpt-rsa",
         false,
         {OID_OAEP},
         "rcpt-rsa",
         "rsa-oaep-sha1",
         "P-256",
         false,
         {"rsaesOaep"}},
        {"ktri pkcs1",
         "P-256",
         "rcpt-rsa",
         false,
         {OID_RSA},
         "rcpt-rsa",
         "rsa-pkcs1",
         "P-256",
         false,
         {"rsaEncryption"}},
        {"kekri aes-256",
         "P-256",
         NULL,
         true,
         {NULL},
         NULL,
         "kek-256 content=aes256",
         "P-256",
         false,
         {"id-aes256-wrap", "aes-256-cbc"}},
        {"kekri, an RSA key generated",
         "RSA",
         NULL,
         true,
         {NULL},
         NULL,
         "kek-256",
         "RSA",
         false,
         {"id-aes256-wrap"}},
        {"kari P-256",
         "P-256",
         "rcpt-p256",
         false,
         {NULL},
         "rcpt-p256",
         "ecdh-P-256 kdf=sha256 wrap=aes256 content=aes256",
         "P-256",
         false,
         {"dhSinglePass-stdDH-sha256kdf-scheme", "id-aes256-wrap", "aes-256-cbc"}},
        {"kari P-384",
         "P-256",
         "rcpt-p384",
         false,
         {NULL},
         "rcpt-p384",
         "ecdh-P-384 kdf=sha384 wrap=aes256 content=aes256",
         "P-256",
         false,
         {"dhSinglePass-stdDH-sha384kdf-scheme", "id-aes256-wrap", "aes-256-cbc"}},
        {"ktri to the CSR's own RSA key",
         "RSA",
         NULL,
         false,
         {OID_OAEP},
         "csr",
         "rsa-oaep-sha1 (csr key)",
         "RSA",
         false,
         {"aes-256-cbc"}},
        {"kari to the CSR's own EC key",
         "P-256",
         NULL,
         false,
         {OID_ECDH_SHA256},
         "csr",
         "ecdh-P-256 (csr key)",
         "P-256",
         false,
         {"dhSinglePass-stdDH-sha256kdf-scheme"}},
    };

    if (kind != EG_TH_NSS)
        return;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        encrypted(&cases[i]);
}

/*
 * RFC 7030 4.4.2, RFC 8551 2.5.2: the KDF, the key wrap and the content cipher
 * are among those the client listed (NSS does every one of them), even where
 * estgate's default would be another; checked in the answer's structure, and
 * the answer decrypts to the certified key.
 */
static void test_algorithms_come_from_the_clients_capabilities(void)
{
    static const enc_case cases[] = {
        {.what = "P-384 recipient, only sha256kdf listed",
         .key_alg = "P-256",
         .rcpt = "rcpt-p384",
         .caps = {OID_ECDH_SHA256},
         .inkey = "rcpt-p384",
         .want = "ecdh-P-384 kdf=sha256 wrap=aes256",
         .gen = "P-256",
         .print = {"dhSinglePass-stdDH-sha256kdf-scheme", "aes-256-cbc"}},
        {.what = "P-256 recipient, only sha384kdf listed",
         .key_alg = "P-256",
         .rcpt = "rcpt-p256",
         .caps = {OID_ECDH_SHA384},
         .inkey = "rcpt-p256",
         .want = "ecdh-P-256 kdf=sha384 wrap=aes256",
         .gen = "P-256",
         .print = {"dhSinglePass-stdDH-sha384kdf-scheme", "aes-256-cbc"}},
        {.what = "oaep-sha256 and aes128-CBC listed",
         .key_alg = "P-256",
         .rcpt = "rcpt-rsa",
         .caps = {CAP_OAEP_SHA256, OID_AES128_CBC},
         .inkey = "rcpt-rsa",
         .want = "rsa-oaep-sha256 content=aes128",
         .gen = "P-256",
         .print = {"rsaesOaep", "aes-128-cbc"}},
        /* No key transport listed: the profile's first (oaep-sha256), as without any. */
        {.what = "RSA recipient, only aes128-CBC listed",
         .key_alg = "P-256",
         .rcpt = "rcpt-rsa",
         .caps = {OID_AES128_CBC},
         .inkey = "rcpt-rsa",
         .want = "rsa-oaep-sha256 content=aes128",
         .gen = "P-256",
         .print = {"rsaesOaep", "aes-128-cbc"}},
        {.what = "P-256 recipient, only aes128-wrap and aes128-CBC listed",
         .key_alg = "P-256",
         .rcpt = "rcpt-p256",
         .caps = {OID_ECDH_SHA256, OID_AES128_WRAP, OID_AES128_CBC},
         .inkey = "rcpt-p256",
         .want = "ecdh-P-256 kdf=sha256 wrap=aes128 content=aes128",
         .gen = "P-256",
         .print = {"dhSinglePass-stdDH-sha256kdf-scheme", "id-aes128-wrap", "aes-128-cbc"}},
        {.what = "a 128-bit pre-shared key, aes128-wrap listed",
         .key_alg = "P-256",
         .kek = true,
         .kek128 = true,
         .caps = {OID_AES128_WRAP},
         .want = "kek-128 content=aes256",
         .gen = "P-256",
         .print = {"id-aes128-wrap", "aes-256-cbc"}},
    };

    if (kind != EG_TH_NSS)
        return;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        encrypted(&cases[i]);
}

/*
 * A pre-shared key's size decides its wrap: a 128-bit key and a client that
 * lists only aes256-wrap is a 400 that says both, before a key is made and
 * before the ledger records an intent (in-process, test_nothing_left_in_the_token
 * counts the token's objects for the same request).
 */
static void test_an_unlisted_wrap_for_the_kek_is_refused(void)
{
    unsigned char kid[4] = {0x0a, 0x1b, 0x2c, 0x3e}, capder[64], *csr;
    const char *wrap256[] = {OID_AES256_WRAP};
    attr at[2] = {{OID_DECRYPT_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)},
                  {OID_SMIME_CAPS, V_ASN1_SEQUENCE, capder, smime_caps(wrap256, 1, capder)}};
    int rows = ledger_rows("ledger.db", false), events;
    size_t len;
    answer a;

    if (kind != EG_TH_NSS)
        return;
    events = eg_file_count(daemon_log, "event=malformed");
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr("P-256", "wrap.example.com", at, 2, &len));
    CU_ASSERT_EQUAL(post(&a, "", csr, len, NULL), 400);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(a.text, "the request's SMIMECapabilities list only id-aes256-wrap for key wrap"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a.text, "is AES-128, which wraps with id-aes128-wrap only"));
    if (a.status != 400 || strstr(a.text, "id-aes128-wrap only") == NULL)
        fprintf(stderr, "unlisted wrap: %d %s\n", a.status, a.text);
    CU_ASSERT_EQUAL(ledger_rows("ledger.db", false), rows); /* not even an intent */
    CU_ASSERT_EQUAL(eg_file_count(daemon_log, "event=malformed"), events + 1);
    answer_clear(&a);
    OPENSSL_free(csr);
}

/* ---- refusals: a clear status, and nothing issued ---- */

static void refused(const char *label, const attr *at, size_t n, const char *key_alg,
                    const char *ctype, int status, const char *reason)
{
    unsigned char *csr;
    size_t len;
    answer a;
    int before = ledger_certs();

    CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr(key_alg, "no.example.com", at, n, &len));
    CU_ASSERT_EQUAL(post(&a, label, csr, len, ctype), status);
    if (a.status != status || strstr(a.text, reason) == NULL)
        fprintf(stderr, "expected %d '%s', got %d: %s\n", status, reason, a.status, a.text);
    CU_ASSERT_PTR_NOT_NULL(strstr(a.text, reason));
    CU_ASSERT_EQUAL(ledger_certs(), before);
    answer_clear(&a);
    OPENSSL_free(csr);
}

static void test_refusals(void)
{
    unsigned char kid[4] = {0xde, 0xad, 0xbe, 0xef}, ski[64], capder[64];
    const char *oaep_only[] = {OID_OAEP};
    attr unknown_kek = {OID_DECRYPT_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)};
    attr unknown_asym = {OID_ASYM_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)};

    if (kind == EG_TH_P11KIT)
        return;
    refused("nokg", NULL, 0, "P-256", NULL, 403, "does not offer server-side key generation");
    refused("", NULL, 0, "P-256", "text/plain", 415, "Content-Type");
    if (kind == EG_TH_SOFTHSM) {
        refused("", &unknown_kek, 1, "P-256", NULL, 400, "plaintext");
        return;
    }
    refused("", &unknown_kek, 1, "P-256", NULL, 400, "DecryptKeyIdentifier");
    refused("", &unknown_asym, 1, "P-256", NULL, 400, "AsymmetricDecryptKeyIdentifier");
    {
        attr a = {OID_SMIME_CAPS, V_ASN1_SEQUENCE, capder, smime_caps(oaep_only, 1, capder)};

        /* serverkeygen_csr_key: the CSR's EC key asked to be a key-transport recipient. */
        refused("", &a, 1, "P-256", NULL, 400, "cannot be a key-transport recipient");
        /* ...and an RSA key too small to carry the content key (the token would refuse the wrap
           with CKR_DATA_LEN_RANGE): said before a key is made. */
        refused("", &a, 1, "RSA-1024", NULL, 400, "at least 2048 are needed");
        /* Plaintext offered too, and no serverkeygen_csr_key: said by what was asked. */
        refused("both", &a, 1, "RSA", NULL, 400,
                "this request asks for encryption (its SMIMECapabilities list key transport or "
                "agreement) but names no recipient");
    }
    {
        attr a = {OID_ASYM_KID, V_ASN1_OCTET_STRING, ski, ski_of("rcpt-p521", ski)};

        refused("", &a, 1, "P-256", NULL, 400, "P-256 or P-384");
    }
}

/* --check-config opens the token to probe it: p11-kit 0.24.1 forwards no C_WrapKey, so its
   profile is refused up front, by name, and estgated does not start. */
static void test_check_config_probes_the_token(void)
{
    char tool[PATH_MAX], log[PATH_MAX];
    char *argv[] = {(char *)eg_child_built("appliance/estgated", tool), "--check-config", ini,
                    NULL};
    pid_t pid;

    if (kind != EG_TH_P11KIT) { /* the token can: OK, and the profile's modes said */
        CU_ASSERT_EQUAL(eg_child_run(dir, NULL, argv, res), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(res->out, kind == EG_TH_NSS ? "serverkeygen encrypt plaintext"
                                                                  : "serverkeygen plaintext"));
        return;
    }
    CU_ASSERT_NOT_EQUAL(eg_child_run(dir, NULL, argv, res), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "serverkeygen"));
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "CKM_AES_KEY_WRAP_PAD"));
    CU_ASSERT_EQUAL(eg_fx_daemon_start(ini, tpath(log, "refused.log"), &pid, &port, 1), -1);
}

/* ---- memory: no generated key stays in estgated once its answer is sent ---- */

static void test_no_generated_key_left_in_estgated_memory(void)
{
    unsigned char *dump = NULL, probe[32];
    size_t dlen = 0, found = 0;
    attr a = {"1.2.840.113549.1.9.16.2.99", V_ASN1_OCTET_STRING, probe, sizeof(probe)};
    unsigned char *csr;
    size_t len;
    answer r;

    if (kind == EG_TH_P11KIT)
        return;
    fprintf(stderr, "(%zu generated keys to look for) ", nsecrets);
    CU_ASSERT_FATAL(nsecrets >= 3);
    /* Control: a secret of the same size, deliberately handed to estgated in a request body it
       does not wipe, must be found by the same reader. */
    RAND_bytes(probe, sizeof(probe));
    CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr("P-256", "probe.example.com", &a, 1, &len));
    post(&r, "nokg", csr, len, NULL);
    answer_clear(&r);
    OPENSSL_free(csr);
    kill(daemon_pid, SIGSTOP);
    CU_ASSERT_EQUAL(eg_procmem_dump(daemon_pid, &dump, &dlen), 0);
    kill(daemon_pid, SIGCONT);
    CU_ASSERT(eg_mem_contains(dump, dlen, probe, sizeof(probe)));
    for (size_t i = 0; i < nsecrets; i++) {
        if (eg_mem_contains(dump, dlen, secrets[i].v, secrets[i].len)) {
            fprintf(stderr, "generated key %zu (%zu octets) found in estgated's memory\n", i,
                    secrets[i].len);
            found++;
        }
    }
    CU_ASSERT_EQUAL(found, 0);
    free(dump);
}

/* ---- the token: every object a request made is gone, whatever happened ---- */

static CK_RV count_fn(eg_p11_call *call, void *arg)
{
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE t = {CKA_TOKEN, &no, sizeof(no)};
    CK_OBJECT_HANDLE h[256];
    CK_RV rv;

    /* Logged in for certain (a test may have logged the application out): private objects
       are found only then. */
    if ((rv = eg_p11_call_login(call)) != CKR_OK)
        return rv;
    return eg_p11_find_objects(call, &t, 1, h, 256, arg);
}

/* Session objects in the token, as any logged-in session of this process sees them. */
static long session_objects(eg_token *tok)
{
    CK_ULONG n = 0;

    return eg_token_run(tok, count_fn, &n) == CKR_OK ? (long)n : -1;
}

typedef struct gen_case {
    const char *what;
    const char *key_alg;
    bool kek;
    const char *bad_kek_uri; /* replaces the KEK's URI: the token fails after keys were made */
    bool force_cbc;          /* claim CBC_PAD works: SoftHSM then fails mid-way */
    const char *rcpt;        /* AsymmetricDecryptKeyIdentifier of this recipient, encrypt on */
    eg_status want;
    const char *reason;  /* in why, when not EG_OK */
    bool kek128;         /* with kek: the AES-128 pre-shared key */
    const char *caps[3]; /* SMIMECapabilities OIDs, NULL-terminated; none: no attribute */
} gen_case;

static void generate_in_process(eg_token *tok, const eg_skg_caps *real, eg_profile_cfg *p,
                                const eg_skg_profile *sp, const gen_case *c)
{
    unsigned char kid[4] = {0x0a, 0x1b, 0x2c, c->kek128 ? 0x3e : 0x3d}, ski[64], capder[128], *der;
    attr at[2] = {{OID_DECRYPT_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)}};
    size_t nat = c->kek || c->rcpt ? 1 : 0, ncaps = 0;
    eg_skg_caps caps = *real;
    unsigned modes = p->skg_modes;
    eg_skg_result r = {0};
    eg_csr *csr = NULL;
    char why[256] = "", *saved = p->nskg_keks > 0 ? p->skg_keks[0].uri : NULL;
    eg_skg_profile bad = {0};
    long before = session_objects(tok), after;
    size_t len;
    eg_status st;

    if (c->force_cbc)
        caps.cbc_pad = CKR_OK;
    if (c->bad_kek_uri != NULL && saved != NULL) { /* KEK URIs are read at profile load */
        char err[256];

        p->skg_keks[0].uri = (char *)c->bad_kek_uri;
        CU_ASSERT_FATAL(eg_skg_profile_load(p, &bad, err, sizeof(err)) == 0);
        sp = &bad;
    }
    if (c->rcpt != NULL) { /* as a profile that asked for encrypt would, past the start check */
        at[0] = (attr){OID_ASYM_KID, V_ASN1_OCTET_STRING, ski, ski_of(c->rcpt, ski)};
        p->skg_modes |= EG_SKG_ENCRYPT;
    }
    while (ncaps < 3 && c->caps[ncaps] != NULL)
        ncaps++;
    if (ncaps > 0)
        at[nat++] =
            (attr){OID_SMIME_CAPS, V_ASN1_SEQUENCE, capder, smime_caps(c->caps, ncaps, capder)};
    der = make_csr(c->key_alg, "tok.example.com", at, nat, &len);
    CU_ASSERT_FATAL(der != NULL && eg_csr_parse(der, len, &csr) == 0);
    st = eg_skg_generate(tok, &caps, p, sp, csr, &r, why, sizeof(why));
    if (st != c->want)
        fprintf(stderr, "%s: status %d, want %d: %s\n", c->what, st, c->want, why);
    CU_ASSERT_EQUAL(st, c->want);
    CU_ASSERT(c->reason == NULL || strstr(why, c->reason) != NULL);
    CU_ASSERT_EQUAL(st == EG_OK, r.pub.bits != NULL && r.key != NULL);
    p->skg_modes = modes;
    after = session_objects(tok);
    CU_ASSERT(before >= 0 && after == before);
    if (after != before)
        fprintf(stderr, "%s: %ld session objects before, %ld after\n", c->what, before, after);
    if (saved != NULL)
        p->skg_keks[0].uri = saved;
    eg_skg_profile_clear(&bad);
    eg_skg_result_clear(&r);
    eg_csr_free(csr);
    OPENSSL_free(der);
}

static void test_nothing_left_in_the_token(void)
{
    static const gen_case plain[] = {
        {"plaintext P-256", "P-256", false, NULL, false, NULL, EG_OK, NULL, false, {NULL}},
        {"plaintext, CBC_PAD refused mid-way",
         "P-256",
         false,
         NULL,
         true,
         NULL,
         EG_MALFORMED,
         "CKM_AES_CBC_PAD",
         false,
         {NULL}},
        /* SoftHSM has no X9.63 KDF: an EC recipient is one this token cannot serve. */
        {"a P-256 recipient on SoftHSM",
         "P-256",
         false,
         NULL,
         false,
         "rcpt-p256",
         EG_MALFORMED,
         "CKD_SHA256_KDF",
         false,
         {NULL}},
        /* Listed algorithms the token cannot do: what was listed, and what can be done. */
        {"a P-256 recipient listing only sha384kdf, on SoftHSM",
         "P-256",
         false,
         NULL,
         false,
         "rcpt-p256",
         EG_MALFORMED,
         "the request's SMIMECapabilities list only dhSinglePass-stdDH-sha384kdf-scheme for key "
         "agreement; for this recipient estgate can do none (CKD_SHA384_KDF on P-256: CKR_",
         false,
         {OID_ECDH_SHA384}},
        {"only aes128-CBC listed, on SoftHSM",
         "P-256",
         false,
         NULL,
         false,
         "rcpt-rsa",
         EG_MALFORMED,
         "the request's SMIMECapabilities list only id-aes128-CBC for content encryption; for "
         "this recipient estgate can do none (CKM_AES_CBC_PAD under an AES-128 key: CKR_",
         false,
         {OID_OAEP, OID_AES128_CBC}},
        {"only oaep-sha256 listed, on SoftHSM (SHA-1 only)",
         "P-256",
         false,
         NULL,
         false,
         "rcpt-rsa",
         EG_MALFORMED,
         "list only id-RSAES-OAEP (SHA-256) for key transport; for this recipient estgate can "
         "do id-RSAES-OAEP (SHA-1): list it",
         false,
         {CAP_OAEP_SHA256}},
    };
    static const gen_case enc[] = {
        {"plaintext P-256", "P-256", false, NULL, false, NULL, EG_OK, NULL, false, {NULL}},
        {"encrypted to the KEK", "P-256", true, NULL, false, NULL, EG_OK, NULL, false, {NULL}},
        /* The appliance's fault, not the request's: named, for the log under the client's ref. */
        {"the KEK missing from the token",
         "P-256",
         true,
         "pkcs11:object=no-such-kek",
         false,
         NULL,
         EG_UNAVAILABLE,
         "serverkeygen_kek pkcs11:object=no-such-kek is not in the token",
         false,
         {NULL}},
        /* Refused once the token has said the key's size, before anything is made. */
        {"a 128-bit KEK, only aes256-wrap listed",
         "P-256",
         true,
         NULL,
         false,
         NULL,
         EG_MALFORMED,
         "id-aes128-wrap only",
         true,
         {OID_AES256_WRAP}},
        {"a 128-bit KEK, aes128-wrap listed",
         "P-256",
         true,
         NULL,
         false,
         NULL,
         EG_OK,
         NULL,
         true,
         {OID_AES128_WRAP}},
    };
    eg_config_errors errs = {0};
    eg_config *cfg = NULL;
    eg_token *tok = NULL;
    eg_skg_caps caps;
    eg_skg_profile sp = {0};
    char err[PATH_MAX];
    eg_profile_cfg *p;

    if (kind == EG_TH_P11KIT)
        return;
    CU_ASSERT_FATAL(eg_config_load(ini, &cfg, &errs) == 0);
    p = &cfg->profiles[0];
    if (p->skg_recipients_file == NULL) /* softhsm: the recipients, for the refusal case */
        p->skg_recipients_file = strdup(tpath(err, "recipients.pem"));
    CU_ASSERT_FATAL(eg_token_open(eg_th_config(th), &tok) == 0);
    CU_ASSERT_FATAL(eg_skg_probe(tok, false, &caps) == 0);
    CU_ASSERT_FATAL(eg_skg_profile_load(p, &sp, err, sizeof(err)) == 0);
    if (kind == EG_TH_NSS) {
        for (size_t i = 0; i < sizeof(enc) / sizeof(enc[0]); i++)
            generate_in_process(tok, &caps, p, &sp, &enc[i]);
    } else {
        for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
            generate_in_process(tok, &caps, p, &sp, &plain[i]);
    }
    eg_skg_profile_clear(&sp);
    eg_token_free(tok);
    eg_config_free(cfg);
    eg_config_errors_clear(&errs);
}

/* ---- a full token: 503, and nothing kept ---- */

/*
 * The token behind EG_P11_QUOTA_PATH (hsm-tests/harness/p11_quota.c) is this
 * suite's real token with a quota on live session objects: the number in
 * quota_file. It writes how many it holds to quota_file.live.
 */
static char quota_file[PATH_MAX];

static void set_quota(long n)
{
    char text[32];
    int len = snprintf(text, sizeof(text), "%ld\n", n);

    if (n < 0)
        unlink(quota_file);
    else
        CU_ASSERT_EQUAL(eg_file_write(quota_file, text, (size_t)len, 0600), 0);
}

static void quota_env(void)
{
    tpath(quota_file, "quota");
    unlink(quota_file);
    setenv("EG_P11_QUOTA_MODULE", eg_th_config(th)->module_path, 1);
    setenv("EG_P11_QUOTA_FILE", quota_file, 1);
}

/* What the quota module says it holds: live session objects made through it. */
static long quota_live(void)
{
    char path[PATH_MAX + 8], *text;
    long n;

    snprintf(path, sizeof(path), "%s.live", quota_file);
    text = eg_file_read(path, NULL);
    n = text != NULL ? strtol(text, NULL, 10) : -1;
    free(text);
    return n;
}

static int write_quota_ini(char *qini);

/* How many C_Login calls the quota module has seen, in every process that loaded it. */
static long quota_logins(void)
{
    char path[PATH_MAX + 8], *text;
    long n;

    snprintf(path, sizeof(path), "%s.logins", quota_file);
    text = eg_file_read(path, NULL);
    n = text != NULL ? strtol(text, NULL, 10) : 0;
    free(text);
    return n;
}

/* The quota module's functions, loaded in this process, and the harness token's slot there. */
static CK_FUNCTION_LIST *quota_functions(CK_SLOT_ID *slot)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    const char *label = eg_th_config(th)->token_label;
    void *dl = dlopen(EG_P11_QUOTA_PATH, RTLD_NOW | RTLD_NOLOAD);
    CK_FUNCTION_LIST *fl = NULL;
    CK_SLOT_ID slots[8];
    CK_ULONG n = 8;
    CK_TOKEN_INFO info;

    if (dl == NULL)
        return NULL;
    *(void **)&get_list = dlsym(dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(&fl) != CKR_OK ||
        fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return NULL;
    for (CK_ULONG i = 0; i < n; i++) {
        if (fl->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
            memcmp(info.label, label, strlen(label)) == 0) {
            *slot = slots[i];
            return fl;
        }
    }
    return NULL;
}

/*
 * A job that needs the login: the suite's private keys are found only when logged in, and none
 * found is CKR_USER_NOT_LOGGED_IN, as the signer's key lookups answer it.
 */
static CK_RV logged_in_job(eg_p11_call *call, void *arg)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof(cls)};
    CK_OBJECT_HANDLE o;
    CK_ULONG found = 0;
    CK_RV rv;

    (void)arg;
    if ((rv = eg_p11_find_objects(call, &t, 1, &o, 1, &found)) != CKR_OK)
        return rv;
    return found > 0 ? CKR_OK : CKR_USER_NOT_LOGGED_IN;
}

/*
 * eg_token_open with the quota module when its PIN is refused: fails, after at most one C_Login
 * (none when the token says not to try), saying want.
 */
static void open_refused(const eg_token_config *qc, long logins, const char *want)
{
    eg_token *qt = NULL;
    long before = quota_logins();
    char text[512];

    CU_ASSERT_NOT_EQUAL(eg_token_open(qc, &qt), 0);
    eg_token_free(qt);
    eg_err_first_text(text, sizeof(text));
    ERR_clear_error();
    CU_ASSERT_EQUAL(quota_logins(), before + logins);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, want));
    if (strstr(text, want) == NULL || quota_logins() != before + logins)
        fprintf(stderr, "\n  %ld C_Login, want %ld: %s\n", quota_logins() - before, logins, text);
}

/* A socket for systemd's notifications (NOTIFY_SOCKET) at path; -1 on failure. */
static int notify_socket(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || strlen(path) >= sizeof(a.sun_path))
        goto fail;
    memcpy(a.sun_path, path, strlen(path));
    unlink(path);
    if (bind(fd, (struct sockaddr *)&a, (socklen_t)sizeof(a)) == 0)
        return fd;
fail:
    if (fd >= 0)
        close(fd);
    return -1;
}

/* Whether a notification holding both a and b comes within 5 s; the others are passed over. */
static bool notified(int fd, const char *a, const char *b)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char msg[2048];
    ssize_t n;

    while (poll(&p, 1, 5000) == 1) {
        if ((n = recv(fd, msg, sizeof(msg) - 1, 0)) < 0)
            return false;
        msg[n] = 0;
        if (strstr(msg, a) != NULL && strstr(msg, b) != NULL)
            return true;
    }
    fprintf(stderr, "\n  no notification with %s and %s\n", a, b);
    return false;
}

/*
 * estgated serving through the quota module when the PIN changes on the token and the login is
 * lost (the quota module logs out at a serverkeygen request's C_WrapKey): that request fails, and
 * so does every request after it, TLS handshakes included, after one C_Login; the log says why
 * once, and systemd's status says it, after a reload too (which does not read the PIN again).
 */
static void refused_at_runtime_daemon(const char *qini, const char *wrong)
{
    char qlog[PATH_MAX], fault[PATH_MAX + 16], sock[PATH_MAX];
    unsigned saved_port = port, qport = 0;
    int fd, rc;
    unsigned char *der = NULL;
    struct timespec pause = {1, 500000000};
    long logins;
    pid_t pid = 0;
    size_t len;
    answer a;

    unlink(wrong);
    CU_ASSERT_FATAL((fd = notify_socket(tpath(sock, "notify-pin.sock"))) >= 0);
    setenv("NOTIFY_SOCKET", sock, 1);
    rc = eg_fx_daemon_start(qini, tpath(qlog, "pin.log"), &pid, &qport, 1);
    unsetenv("NOTIFY_SOCKET");
    if (rc != 0)
        close(fd);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    port = qport;
    CU_ASSERT(notified(fd, "READY=1", "STATUS=Serving "));
    /* No fatal assertion from here on: the daemon must be stopped. */
    der = make_csr("P-256", "pin.example.com", NULL, 0, &len);
    CU_ASSERT_PTR_NOT_NULL(der);
    CU_ASSERT_EQUAL(post(&a, "", der, len, NULL), 200);
    answer_clear(&a);
    snprintf(fault, sizeof(fault), "%s.logout", quota_file);
    CU_ASSERT_EQUAL(eg_file_write(wrong, "", 0, 0600), 0);
    CU_ASSERT_EQUAL(eg_file_write(fault, "", 0, 0600), 0);
    logins = quota_logins();
    CU_ASSERT_NOT_EQUAL(post(&a, "", der, len, NULL), 200);
    answer_clear(&a);
    CU_ASSERT_NOT_EQUAL(access(fault, F_OK), 0); /* the login was lost */
    for (int i = 0; i < 5; i++) {
        CU_ASSERT_NOT_EQUAL(post(&a, "", der, len, NULL), 200);
        answer_clear(&a);
    }
    /* One C_Login after the PIN changed: SoftHSM's request fails on its wrapping key (gone with
       the login), NSS's tries the login; the next TLS handshake or request the other. */
    CU_ASSERT_EQUAL(quota_logins(), logins + 1);
    if (quota_logins() != logins + 1)
        fprintf(stderr, "\n  %ld C_Login after the PIN changed, want 1\n", quota_logins() - logins);
    nanosleep(&pause, NULL); /* the main loop looks every second */
    CU_ASSERT_EQUAL(eg_file_count(qlog, "estgated: token '"), 1);
    CU_ASSERT(eg_file_line_has(qlog, "estgated: token '", "C_Login refused the PIN"));
    CU_ASSERT(eg_file_line_has(qlog, "estgated: token '", "pin_file"));
    CU_ASSERT(notified(fd, "STATUS=Refusing requests: the token refused its PIN", "pin_file"));
    CU_ASSERT_EQUAL(kill(pid, SIGHUP), 0);
    CU_ASSERT(notified(fd, "READY=1", "STATUS=Refusing requests: the token refused its PIN"));
    close(fd);
    port = saved_port;
    eg_fx_daemon_stop(&pid, SIGTERM);
    unlink(wrong);
    OPENSSL_free(der);
}

/*
 * A PIN the token refuses is tried once, not at every job: a hardware HSM locks its user PIN
 * after a few wrong ones, and every request and TLS handshake needs a login. The quota module
 * plays the HSM's retry counter (harness/p11_quota.c): the PIN changed on the token under a
 * running signer, the login lost (as when a token server restarts), then the same at start, then
 * a token one wrong PIN away from locking, then a locked one.
 */
static void test_a_refused_pin_is_not_tried_again(void)
{
    eg_token_config qc = *eg_th_config(th);
    char wrong[PATH_MAX + 16], counted[PATH_MAX + 16], why[512], qini[PATH_MAX];
    char estgated[PATH_MAX];
    unsigned char rnd[16];
    CK_FUNCTION_LIST *fl;
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK, .pReserved = (void *)qc.init_args};
    CK_SESSION_HANDLE h;
    eg_token *qt = NULL;
    CK_SLOT_ID slot;
    long before;

    if (kind == EG_TH_P11KIT) {
        /* The quota module cannot stand in front of p11-kit's client (test_a_full_token...). */
        fprintf(stderr, "(no quota module before p11-kit's client) ");
        return;
    }
    eg_child_built("appliance/estgated", estgated);
    quota_env();
    qc.module_path = EG_P11_QUOTA_PATH;
    snprintf(wrong, sizeof(wrong), "%s.wrong_pin", quota_file);
    unlink(wrong);
    CU_ASSERT_FATAL(eg_token_open(&qc, &qt) == 0);
    CU_ASSERT_EQUAL(eg_token_run(qt, logged_in_job, rnd), CKR_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fl = quota_functions(&slot));
    CU_ASSERT_EQUAL_FATAL(eg_file_write(wrong, "", 0, 0600), 0);
    /* The application's login lost (a token server restarted, or C_Logout elsewhere). */
    CU_ASSERT_EQUAL(fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_OK);
    CU_ASSERT_EQUAL(fl->C_Logout(h), CKR_OK);
    fl->C_CloseSession(h);
    before = quota_logins();
    for (int i = 0; i < 10; i++)
        CU_ASSERT_EQUAL(eg_token_run(qt, logged_in_job, rnd), CKR_PIN_INCORRECT);
    ERR_clear_error();
    CU_ASSERT_EQUAL(quota_logins(), before + 1);
    CU_ASSERT(eg_token_login_refused(why, sizeof(why)));
    CU_ASSERT(strstr(why, "CKR_PIN_INCORRECT") != NULL && strstr(why, "pin_file") != NULL);
    eg_token_free(qt);

    /* At start: one C_Login each, until the token says one more wrong PIN locks it (1 wrong
       so far, 5 lock it); then none. */
    for (int i = 0; i < 3; i++)
        open_refused(&qc, 1, "CKR_PIN_INCORRECT");
    open_refused(&qc, 0, "one more wrong PIN locks the token");
    /* Someone else's wrong PIN locks it (the module is finalised with the signer's last
       token, so this application initialises it): still none, and the security officer is
       named. */
    CU_ASSERT_EQUAL(fl->C_Initialize(&args), CKR_OK);
    ERR_clear_error(); /* SoftHSM's missing rdrand engine */
    CU_ASSERT_EQUAL(fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_OK);
    CU_ASSERT_EQUAL(fl->C_Login(h, CKU_USER, (CK_UTF8CHAR *)"wrong", 5), CKR_PIN_INCORRECT);
    fl->C_CloseSession(h);
    fl->C_Finalize(NULL);
    open_refused(&qc, 0, "its security officer must unlock it");
    /* estgated and --check-config (which logs in for serverkeygen's probe) exit 77, which
       systemd does not restart, after one C_Login each (the count in the file is the child's);
       --check-config --no-token, the unit's ExecStartPre, passes the file with none. */
    unlink(wrong);
    CU_ASSERT_EQUAL_FATAL(write_quota_ini(qini), 0);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(wrong, "", 0, 0600), 0); /* each child counts from 0 */
    {
        char *argv[] = {estgated, "--check-config", "--no-token", qini, NULL};

        snprintf(counted, sizeof(counted), "%s.logins", quota_file);
        unlink(counted);
        CU_ASSERT_EQUAL(eg_child_run(dir, NULL, argv, res), 0);
        CU_ASSERT_EQUAL(quota_logins(), 0);
    }
    for (int i = 0; i < 2; i++) {
        char *argv[] = {estgated, i == 0 ? "--check-config" : "-c", qini, NULL};

        snprintf(counted, sizeof(counted), "%s.logins", quota_file);
        unlink(counted);
        CU_ASSERT_EQUAL(eg_child_run(dir, NULL, argv, res), 77);
        CU_ASSERT_EQUAL(quota_logins(), 1);
        CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "CKR_PIN_INCORRECT"));
        CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "pin_file"));
        if (res->code != 77 || quota_logins() != 1)
            fprintf(stderr, "\n  %s: exit %d, %ld C_Login:\n%s", argv[1], res->code, quota_logins(),
                    res->err);
    }
    refused_at_runtime_daemon(qini, wrong);
    /* Unlocked, with the right PIN again: a new token logs in. */
    unlink(wrong);
    CU_ASSERT_EQUAL(eg_token_open(&qc, &qt), 0);
    eg_token_free(qt);
}

/*
 * In this process, through the signer: with the quota at 0, 1, 2, ... live
 * session objects, the same request fails with EG_UNAVAILABLE naming
 * CKR_DEVICE_MEMORY until the quota lets the whole request through, wherever
 * in the request the token ran out; the token's own count of session objects
 * (C_FindObjects, not the quota module's) is the same after each try.
 */
static void full_in_process(eg_token *tok, const eg_skg_caps *caps, eg_profile_cfg *p,
                            const eg_skg_profile *sp, bool kek, int *fits)
{
    unsigned char kid[4] = {0x0a, 0x1b, 0x2c, 0x3d}, *der;
    attr at = {OID_DECRYPT_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)};
    eg_csr *csr = NULL;
    size_t len;

    *fits = -1;
    der = make_csr("P-256", "full.example.com", &at, kek ? 1 : 0, &len);
    CU_ASSERT_FATAL(der != NULL && eg_csr_parse(der, len, &csr) == 0);
    for (int q = 0; q <= 8 && *fits < 0; q++) {
        eg_skg_result r = {0};
        char why[256] = "";
        long before = session_objects(tok), after;
        eg_status st;

        set_quota(q);
        st = eg_skg_generate(tok, caps, p, sp, csr, &r, why, sizeof(why));
        set_quota(-1);
        after = session_objects(tok);
        if (st == EG_OK) {
            *fits = q;
        } else {
            CU_ASSERT_EQUAL(st, EG_UNAVAILABLE);
            CU_ASSERT_PTR_NOT_NULL(strstr(why, "CKR_DEVICE_MEMORY"));
            if (st != EG_UNAVAILABLE)
                fprintf(stderr, "quota %d: status %d: %s\n", q, st, why);
        }
        CU_ASSERT(before >= 0 && after == before);
        if (after != before)
            fprintf(stderr, "quota %d: %ld session objects before, %ld after\n", q, before, after);
        eg_skg_result_clear(&r);
    }
    /* A key pair takes two objects and the key's way out at least one more. */
    CU_ASSERT(*fits >= 3);
    eg_csr_free(csr);
    OPENSSL_free(der);
}

/*
 * The login lost between the key's making and its wrap (the quota module logs out before the
 * C_WrapKey): NSS keeps the private session key and then refuses to destroy it for a user not
 * logged in, so the signer logs in again and destroys it. Either way the token holds no more
 * session objects after the request than before it.
 */
static void login_lost_in_process(eg_token *tok, const eg_skg_caps *caps, eg_profile_cfg *p,
                                  const eg_skg_profile *sp)
{
    char fault[PATH_MAX + 16], why[256] = "";
    unsigned char *der;
    eg_skg_result r = {0};
    eg_csr *csr = NULL;
    long before, after;
    size_t len;
    eg_status st;

    der = make_csr("P-256", "lost.example.com", NULL, 0, &len);
    CU_ASSERT_FATAL(der != NULL && eg_csr_parse(der, len, &csr) == 0);
    before = session_objects(tok);
    snprintf(fault, sizeof(fault), "%s.logout", quota_file);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(fault, "", 0, 0600), 0);
    st = eg_skg_generate(tok, caps, p, sp, csr, &r, why, sizeof(why));
    CU_ASSERT_NOT_EQUAL(access(fault, F_OK), 0); /* the fault happened */
    after = session_objects(tok);
    printf("(login lost before the wrap: status %d%s%s) ", st, why[0] ? ", " : "", why);
    CU_ASSERT(before >= 0 && after == before);
    if (kind == EG_TH_NSS)
        CU_ASSERT_EQUAL(st, EG_OK); /* the wrap still works; only the destroy needed a login */
    eg_skg_result_clear(&r);
    eg_csr_free(csr);
    OPENSSL_free(der);
}

/*
 * estgated on the same token behind the quota module, with its own ledger:
 * each try that runs out of room is a 503 with Retry-After that leaves no
 * row in the ledger and no object in the token; the quota that fits lets the
 * request through, and again right after (nothing a failure made is still
 * taking room).
 */
/* This suite's file, with the quota module as the token's module and a ledger of its own. */
static int write_quota_ini(char *qini)
{
    char *text, *m, *out = NULL;
    size_t len;
    int rc = -1;

    if ((text = eg_file_read(ini, &len)) == NULL || (out = malloc(len + PATH_MAX + 64)) == NULL ||
        (m = strstr(text, "\nmodule = ")) == NULL)
        goto out;
    snprintf(out, len + PATH_MAX + 64, "%.*s\nmodule = %s%s", (int)(m - text), text,
             EG_P11_QUOTA_PATH, m + 10 + strcspn(m + 10, "\n"));
    if ((m = strstr(out, "ledger = ledger.db")) == NULL)
        goto out;
    memcpy(m, "ledger = quota.db ", 18);
    rc = eg_file_write(tpath(qini, "quota.ini"), out, strlen(out), 0600);
out:
    free(out);
    free(text);
    return rc;
}

static void full_daemon(int fits, bool kek)
{
    unsigned char kid[4] = {0x0a, 0x1b, 0x2c, 0x3d}, *der;
    attr at = {OID_DECRYPT_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)};
    char qini[PATH_MAX], qlog[PATH_MAX], hdr[PATH_MAX], *text;
    unsigned saved_port = port, qport = 0;
    pid_t pid = 0;
    size_t len;
    answer a;

    CU_ASSERT_EQUAL_FATAL(write_quota_ini(qini), 0);
    CU_ASSERT_EQUAL_FATAL(eg_fx_daemon_start(qini, tpath(qlog, "quota.log"), &pid, &qport, 1), 0);
    port = qport;
    /* No fatal assertion from here on: the daemon must be stopped. */
    der = make_csr("P-256", "full.example.com", &at, kek ? 1 : 0, &len);
    CU_ASSERT_PTR_NOT_NULL(der);
    for (int q = 0; der != NULL && q <= fits + 1; q++) {
        int rows = ledger_rows("quota.db", false), want = q < fits ? 503 : 200;

        /* A new request for the last try: the same encrypted one would be sent again from
           the ledger, with nothing made in the token. */
        if (q == fits + 1) {
            OPENSSL_free(der);
            if ((der = make_csr("P-256", "full.example.com", &at, kek ? 1 : 0, &len)) == NULL)
                break;
        }
        set_quota(q < fits ? q : fits);
        CU_ASSERT_EQUAL(post(&a, "", der, len, NULL), want);
        if (a.status != want)
            fprintf(stderr, "quota %d: %d, want %d: %s\n", q, a.status, want, a.text);
        if (want == 503) {
            char ref[13];

            /* The reason (the token's return code) is in the audit line under the
               reference the client gets, not in the answer. */
            CU_ASSERT_PTR_NULL(strstr(a.text, "CKR_"));
            CU_ASSERT_EQUAL(eg_answer_ref(a.text, ref), 0);
            CU_ASSERT(eg_file_line_has(qlog, ref, "CKR_DEVICE_MEMORY"));
            text = eg_file_read(tpath(hdr, "resp.hdr"), NULL);
            CU_ASSERT(text != NULL && strcasestr(text, "\r\nRetry-After: ") != NULL);
            free(text);
            CU_ASSERT_EQUAL(ledger_rows("quota.db", false), rows);
        } else {
            CU_ASSERT_STRING_EQUAL(a.key_type, kek ? "application/pkcs7-mime; "
                                                     "smime-type=server-generated-key"
                                                   : "application/pkcs8");
            CU_ASSERT_EQUAL(ledger_rows("quota.db", true), ledger_rows("quota.db", false));
        }
        CU_ASSERT_EQUAL(quota_live(), 0);
        answer_clear(&a);
    }
    set_quota(-1);
    /* Each refusal is audited as the token being unavailable. */
    CU_ASSERT(eg_file_count(qlog, "event=unavailable") >= fits);
    port = saved_port;
    eg_fx_daemon_stop(&pid, SIGTERM);
    OPENSSL_free(der);
}

static void test_a_full_token_answers_503_and_keeps_nothing(void)
{
    eg_config_errors errs = {0};
    eg_token_config qc = *eg_th_config(th);
    eg_config *cfg = NULL;
    eg_token *tok = NULL;
    eg_skg_caps caps;
    eg_skg_profile sp = {0};
    char err[256];
    int fits = -1, fits_kek = -1;

    if (kind == EG_TH_P11KIT)
        return;
    quota_env();
    qc.module_path = EG_P11_QUOTA_PATH;
    CU_ASSERT_FATAL(eg_config_load(ini, &cfg, &errs) == 0);
    CU_ASSERT_FATAL(eg_token_open(&qc, &tok) == 0);
    CU_ASSERT_FATAL(eg_skg_probe(tok, false, &caps) == 0); /* no quota yet: probes make objects */
    CU_ASSERT_FATAL(eg_skg_profile_load(&cfg->profiles[0], &sp, err, sizeof(err)) == 0);
    full_in_process(tok, &caps, &cfg->profiles[0], &sp, false, &fits);
    if (kind == EG_TH_NSS)
        full_in_process(tok, &caps, &cfg->profiles[0], &sp, true, &fits_kek);
    login_lost_in_process(tok, &caps, &cfg->profiles[0], &sp);
    if (kind == EG_TH_NSS) {
        /* With room for no object at all, a wrap the client did not list is still the
           client's 400: it is refused before the token is asked to make anything. */
        static const gen_case unlisted = {"no room, a 128-bit KEK, only aes256-wrap listed",
                                          "P-256",
                                          true,
                                          NULL,
                                          false,
                                          NULL,
                                          EG_MALFORMED,
                                          "id-aes128-wrap only",
                                          true,
                                          {OID_AES256_WRAP}};

        set_quota(0);
        generate_in_process(tok, &caps, &cfg->profiles[0], &sp, &unlisted);
        set_quota(-1);
        CU_ASSERT_EQUAL(quota_live(), 0);
    }
    eg_skg_profile_clear(&sp);
    eg_token_free(tok);
    eg_config_free(cfg);
    eg_config_errors_clear(&errs);
    printf("(a plaintext answer takes %d session objects", fits);
    if (kind == EG_TH_NSS)
        printf(", one encrypted to the KEK %d", fits_kek);
    printf(") ");
    if (fits >= 0)
        full_daemon(fits, false);
    if (fits_kek >= 0)
        full_daemon(fits_kek, true);
}

/* ---- a pre-shared key gone from the token after start ---- */

static CK_RV destroy_fn(eg_p11_call *call, void *arg)
{
    CK_OBJECT_HANDLE h;
    CK_RV rv = eg_skg_find_secret(call, arg, &h);

    return rv != CKR_OK ? rv : eg_p11_destroy_object(call, h);
}

/* The token object a pkcs11: URI names destroyed, as an operator's tool would; 0 or -1. */
static int destroy_secret(const char *uri_text)
{
    eg_p11_uri *uri = NULL;
    eg_token *tok = NULL;
    CK_RV rv = CKR_GENERAL_ERROR;

    if (eg_p11_uri_parse(uri_text, &uri) == 0 && eg_token_open(eg_th_config(th), &tok) == 0)
        rv = eg_token_run(tok, destroy_fn, uri);
    eg_token_free(tok);
    eg_p11_uri_free(uri);
    return rv == CKR_OK ? 0 : -1;
}

/*
 * A KEK deleted after estgated started: the request that names it gets 503 with a reference,
 * and the audit line under that reference names the key's URI; no key is made, nothing is
 * recorded. Its own daemon, ledger and log, so that the suite's daemon and file keep their KEK.
 */
static void test_a_kek_gone_from_the_token_is_the_appliances_fault(void)
{
    unsigned char kid[4] = {0xdd, 0x00, 0x00, 0xd1}, *der = NULL;
    attr at = {OID_DECRYPT_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)};
    char gini[PATH_MAX], glog[PATH_MAX], uri[256], line[320], hex[65], ref[13] = "";
    char *text, *out, *m;
    unsigned saved_port = port, gport = 0;
    pid_t pid = 0;
    size_t len;
    answer a;

    if (kind != EG_TH_NSS)
        return;
    snprintf(uri, sizeof(uri), "pkcs11:token=%s;object=kek-doomed", uri_label());
    snprintf(line, sizeof(line), "serverkeygen_kek = dd0000d1 %s\n", uri);
    CU_ASSERT_EQUAL_FATAL(eg_fx_kek_import(th, "kek-doomed", "dd0000d1", hex, res), 0);
    /* This suite's file, the second KEK beside the first, and a ledger of its own. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(text = eg_file_read(ini, &len));
    CU_ASSERT_PTR_NOT_NULL_FATAL(out = malloc(len + sizeof(line)));
    CU_ASSERT_PTR_NOT_NULL_FATAL(m = strstr(text, "serverkeygen_kek = "));
    snprintf(out, len + sizeof(line), "%.*s%s%s", (int)(m - text), text, line, m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m = strstr(out, "ledger = ledger.db"));
    memcpy(m, "ledger = gone.db  ", 18);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(tpath(gini, "gone.ini"), out, strlen(out), 0600), 0);
    free(out);
    free(text);
    CU_ASSERT_EQUAL_FATAL(eg_fx_daemon_start(gini, tpath(glog, "gone.log"), &pid, &gport, 1), 0);
    port = gport;
    /* No fatal assertion from here on: the daemon must be stopped. */
    CU_ASSERT_EQUAL(destroy_secret(uri), 0);
    der = make_csr("P-256", "gone.example.com", &at, 1, &len);
    CU_ASSERT_PTR_NOT_NULL(der);
    if (der != NULL) {
        CU_ASSERT_EQUAL(post(&a, "", der, len, NULL), 503);
        CU_ASSERT_PTR_NULL(strstr(a.text, "kek-doomed")); /* the client gets the reference */
        CU_ASSERT_EQUAL(eg_answer_ref(a.text, ref), 0);
        CU_ASSERT(eg_file_line_has(glog, ref, "event=unavailable"));
        CU_ASSERT(eg_file_line_has(glog, ref, uri));
        CU_ASSERT(eg_file_line_has(glog, ref, "is not in the token"));
        if (!eg_file_line_has(glog, ref, uri))
            fprintf(stderr, "%d %s\n", a.status, a.text);
        CU_ASSERT_EQUAL(ledger_rows("gone.db", false), 0);
        answer_clear(&a);
    }
    port = saved_port;
    eg_fx_daemon_stop(&pid, SIGTERM);
    OPENSSL_free(der);
}

/* ---- an encrypted answer sent again ---- */

#define FAKETIME_LIB "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"

/* Key pairs the token behind the quota module has generated for its daemon so far. */
static long keypairs(void)
{
    char path[PATH_MAX + 16], *text;
    long n;

    snprintf(path, sizeof(path), "%s.keypairs", quota_file);
    text = eg_file_read(path, NULL);
    n = text != NULL ? strtol(text, NULL, 10) : -1;
    free(text);
    return n;
}

/*
 * The suite's file with its own ledger (ledger_file) and the token behind the quota module, which
 * counts key pairs; with faketime_spec, under libfaketime reading that file (wall clock only). 0
 * with the daemon started.
 */
static int side_daemon(const char *name, const char *ledger_file, const char *faketime_spec,
                       char *log, pid_t *pid, unsigned *side_port)
{
    char sini[PATH_MAX], file[64], ledger_line[64], *text, *m, *out;
    size_t len;
    int rc = -1;

    quota_env();
    if ((text = eg_file_read(ini, &len)) == NULL || (out = malloc(len + PATH_MAX + 64)) == NULL ||
        (m = strstr(text, "\nmodule = ")) == NULL) {
        free(text);
        return -1;
    }
    snprintf(out, len + PATH_MAX + 64, "%.*s\nmodule = %s%s", (int)(m - text), text,
             EG_P11_QUOTA_PATH, m + 10 + strcspn(m + 10, "\n"));
    snprintf(file, sizeof(file), "%s.ini", name);
    snprintf(ledger_line, sizeof(ledger_line), "ledger = %s\n", ledger_file);
    if (eg_file_write_replaced(tpath(sini, file), out, "ledger = ledger.db\n", ledger_line) == 0) {
        snprintf(file, sizeof(file), "%s.log", name);
        if (faketime_spec != NULL) {
            setenv("LD_PRELOAD", FAKETIME_LIB, 1);
            setenv("FAKETIME_TIMESTAMP_FILE", faketime_spec, 1);
            setenv("FAKETIME_CACHE_DURATION", "1", 1); /* the file is read again every second */
            setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
        }
        rc = eg_fx_daemon_start(sini, tpath(log, file), pid, side_port, 1);
        unsetenv("LD_PRELOAD");
        unsetenv("FAKETIME_TIMESTAMP_FILE");
        unsetenv("FAKETIME_CACHE_DURATION");
        unsetenv("FAKETIME_DONT_FAKE_MONOTONIC");
    }
    free(out);
    free(text);
    return rc;
}

/* Two answers with the same certificate and byte for byte the same key part. */
static bool same_answer(const answer *a, const answer *b)
{
    X509 *x = answer_cert(a), *y = answer_cert(b);
    bool same = x != NULL && y != NULL && X509_cmp(x, y) == 0 && a->key_len == b->key_len &&
                memcmp(a->key, b->key, a->key_len) == 0;

    X509_free(x);
    X509_free(y);
    return same;
}

/*
 * An encrypted answer (to the pre-shared key) is kept, as ciphertext, with its certificate: the
 * same request again gets the same certificate and the same EnvelopedData, with no new key
 * pair in the token and no new ledger row. A CSR for the same subject without the attribute that
 * asks for encryption is another request (the profile offers both modes): a plaintext key.
 * A day later (libfaketime moves the daemon's wall clock; not under AddressSanitizer, whose
 * runtime must be loaded first) the keeper has dropped the key part, and the same request gets
 * a new key and certificate that supersedes the first (replaces=).
 */
static void test_a_repeated_encrypted_request_is_sent_again(void)
{
    unsigned char kid[4] = {0x0a, 0x1b, 0x2c, 0x3d}, *der = NULL, *plain = NULL;
    attr at = {OID_DECRYPT_KID, V_ASN1_OCTET_STRING, kid, sizeof(kid)};
    char slog[PATH_MAX], spec[PATH_MAX], line[224], sa[48] = "", sc[48] = "";
    const char *faketime = NULL;
    unsigned saved_port = port, sport = 0;
    answer a, b, c, p;
    X509 *x;
    long before;
    pid_t pid = 0;
    size_t len, plen;

    if (kind != EG_TH_NSS)
        return;
#if !defined(__SANITIZE_ADDRESS__)
    CU_ASSERT_EQUAL_FATAL(access(FAKETIME_LIB, R_OK), 0); /* image/deps.sh test installs it */
    CU_ASSERT_EQUAL_FATAL(eg_file_write(tpath(spec, "again.faketime"), "+0\n", 3, 0644), 0);
    faketime = spec;
#endif
    CU_ASSERT_EQUAL_FATAL(side_daemon("again", "again.db", faketime, slog, &pid, &sport), 0);
    port = sport;
    /* No fatal assertion from here on: the daemon must be stopped. */
    der = make_csr("P-256", "kept.example.com", &at, 1, &len);
    plain = make_csr("P-256", "kept.example.com", NULL, 0, &plen);
    CU_ASSERT(der != NULL && plain != NULL);
    before = keypairs();
    CU_ASSERT_EQUAL(post(&a, "", der, len, NULL), 200);
    CU_ASSERT_EQUAL(keypairs(), before + 1);
    CU_ASSERT_EQUAL(post(&b, "", der, len, NULL), 200);
    CU_ASSERT_EQUAL(keypairs(), before + 1); /* the token made no key for the retry */
    CU_ASSERT_STRING_EQUAL(b.key_type, "application/pkcs7-mime; smime-type=server-generated-key");
    CU_ASSERT(a.status == 200 && b.status == 200 && same_answer(&a, &b));
    CU_ASSERT_EQUAL(ledger_count_in("again.db", "SELECT count(*) FROM issuance"), 1);
    CU_ASSERT_EQUAL(eg_file_count(slog, "(sent again)"), 1);
    if ((x = answer_cert(&a)) != NULL)
        serial_hex(x, sa, sizeof(sa));
    X509_free(x);

    /* Decided by the request: without the DecryptKeyIdentifier, plaintext, and nothing
       superseded. */
    CU_ASSERT_EQUAL(post(&p, "", plain, plen, NULL), 200);
    CU_ASSERT_STRING_EQUAL(p.key_type, "application/pkcs8");
    CU_ASSERT_EQUAL(keypairs(), before + 2);
    CU_ASSERT_EQUAL(
        ledger_count_in("again.db", "SELECT count(*) FROM issuance WHERE superseded IS NULL"), 2);
    answer_clear(&p);

    if (faketime != NULL) {
        int i;

        /* A day and more later; a reload has the keeper make a pass now. */
        CU_ASSERT_EQUAL(eg_file_write(spec, "+2d\n", 4, 0644), 0);
        sleep(2);
        kill(pid, SIGHUP);
        for (i = 0; i < 100 && ledger_count_in("again.db", "SELECT count(*) FROM issuance "
                                                           "WHERE key_part IS NOT NULL") != 0;
             i++)
            usleep(100 * 1000);
        CU_ASSERT_EQUAL(
            ledger_count_in("again.db", "SELECT count(*) FROM issuance WHERE key_part IS NOT NULL"),
            0);
        CU_ASSERT_EQUAL(post(&c, "", der, len, NULL), 200);
        CU_ASSERT_EQUAL(keypairs(), before + 3);
        CU_ASSERT(c.status == 200 && !same_answer(&a, &c));
        if ((x = answer_cert(&c)) != NULL)
            serial_hex(x, sc, sizeof(sc));
        X509_free(x);
        snprintf(line, sizeof(line),
                 "serial=%s key=ec:P-256 mode=encrypt recipient=kek-256 content=aes256 "
                 "replaces=%s",
                 sc, sa);
        CU_ASSERT_EQUAL(eg_file_count(slog, line), 1);
        if (eg_file_count(slog, line) != 1)
            fprintf(stderr, "no audit line with '%s'\n", line);
        CU_ASSERT_EQUAL(ledger_count_in("again.db", "SELECT count(*) FROM issuance WHERE "
                                                    "superseded IS NOT NULL"),
                        1);
        /* The new answer is kept, and sent again in its turn. */
        answer_clear(&b);
        CU_ASSERT_EQUAL(post(&b, "", der, len, NULL), 200);
        CU_ASSERT(b.status == 200 && same_answer(&b, &c));
        CU_ASSERT_EQUAL(keypairs(), before + 3);
        answer_clear(&c);
    } else {
        printf("(a day later: skipped under AddressSanitizer) ");
    }
    answer_clear(&a);
    answer_clear(&b);
    port = saved_port;
    eg_fx_daemon_stop(&pid, SIGTERM);
    OPENSSL_free(der);
    OPENSSL_free(plain);
}

/* ---- a crash between the intent and the certificate ---- */

#define BURST 32

/* Rows of the suite's ledger that one SQL count query finds. */
static int ledger_count(const char *sql)
{
    return ledger_count_in("ledger.db", sql);
}

/* How many burst clients have a whole answer on disk. */
static int burst_done(char (*out)[PATH_MAX])
{
    struct stat st;
    int n = 0;

    for (int i = 0; i < BURST; i++)
        n += stat(out[i], &st) == 0 && st.st_size > 500;
    return n;
}

/*
 * SIGKILL during a burst of serverkeygen requests, as test_e2e does for simpleenroll: the
 * intents the kill left pending had keys that were session objects of the dead process. At the
 * next start they are failed with that reason, not left pending for ever, and each device that
 * got no answer gets a new key and certificate when it asks again.
 */
static void test_a_crash_leaves_no_serverkeygen_intent_pending(void)
{
    char b64[PATH_MAX], data[PATH_MAX + 1], log[PATH_MAX], url[256], out[BURST][PATH_MAX];
    struct timespec pause = {0, 5 * 1000 * 1000};
    unsigned char *csrs[BURST] = {NULL};
    size_t lens[BURST] = {0};
    pid_t pids[BURST];
    int pending, failed, unanswered = 0;

    if (kind == EG_TH_P11KIT)
        return;
    snprintf(url, sizeof(url), "https://localhost:%u/.well-known/est/serverkeygen", port);
    for (int i = 0; i < BURST; i++) {
        char cn[64], name[32];
        unsigned char *csr;
        size_t len;
        BIO *f, *enc;

        snprintf(cn, sizeof(cn), "burst%d.example.com", i);
        snprintf(name, sizeof(name), "burst%d.b64", i);
        CU_ASSERT_PTR_NOT_NULL_FATAL(csr = make_csr("P-256", cn, NULL, 0, &len));
        CU_ASSERT_PTR_NOT_NULL_FATAL(f = BIO_new_file(tpath(b64, name), "w"));
        enc = BIO_new(BIO_f_base64());
        BIO_push(enc, f);
        BIO_write(enc, csr, (int)len);
        (void)BIO_flush(enc);
        BIO_free_all(enc);
        csrs[i] = csr;
        lens[i] = len;
    }
    for (int i = 0; i < BURST; i++) {
        char name[32];

        snprintf(name, sizeof(name), "burst%d.b64", i);
        snprintf(data, sizeof(data), "@%s", tpath(b64, name));
        snprintf(out[i], PATH_MAX, "%s/burst%d.out", dir, i);
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
                        data,
                        "-o",
                        out[i],
                        url,
                        NULL};
        CU_ASSERT_EQUAL(eg_child_start(argv, tpath(log, "burst.log"), &pids[i]), 0);
    }
    for (int waited = 0; waited < 4000 && burst_done(out) < 3; waited++)
        nanosleep(&pause, NULL);
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&daemon_pid, SIGKILL), 128 + SIGKILL);
    for (int i = 0; i < BURST; i++)
        eg_child_wait(pids[i]);
    pending = ledger_count("SELECT count(*) FROM issuance WHERE state = 'pending'");
    failed = ledger_count("SELECT count(*) FROM issuance WHERE state = 'failed'");
    printf("(%d of %d answered, %d intents pending at the kill) ", burst_done(out), BURST, pending);
    CU_ASSERT(pending >= 0);
    CU_ASSERT_EQUAL_FATAL(eg_fx_daemon_start(ini, daemon_log, &daemon_pid, &port, 1), 0);
    CU_ASSERT_EQUAL(ledger_count("SELECT count(*) FROM issuance WHERE state = 'pending'"), 0);
    CU_ASSERT_EQUAL(ledger_count("SELECT count(*) FROM issuance WHERE state = 'failed' AND "
                                 "fail_reason LIKE '%session object in the token%'"),
                    pending);
    CU_ASSERT_EQUAL(ledger_count("SELECT count(*) FROM issuance WHERE state = 'failed'"),
                    failed + pending);
    if (pending > 0)
        CU_ASSERT(eg_file_count(daemon_log, "left pending by an earlier process marked failed") >=
                  1);
    /* Each device without an answer asks again, its intent failed or never begun: a new key and
       certificate, nothing left pending. */
    for (int i = 0; i < BURST; i++) {
        struct stat st;
        answer a;

        if (stat(out[i], &st) == 0 && st.st_size > 500)
            continue;
        unanswered++;
        CU_ASSERT_EQUAL(post(&a, "", csrs[i], lens[i], NULL), 200);
        if (a.status == 200)
            EVP_PKEY_free(check_key(a.key, a.key_len, &a, "P-256"));
        else
            fprintf(stderr, "burst%d asked again: %d %s\n", i, a.status, a.text);
        answer_clear(&a);
    }
    printf("(%d asked again) ", unanswered);
    CU_ASSERT_EQUAL(ledger_count("SELECT count(*) FROM issuance WHERE state = 'pending'"), 0);
    for (int i = 0; i < BURST; i++)
        OPENSSL_free(csrs[i]);
    plaintext("P-256"); /* and it serves */
}

/* ---- reload ---- */

static int log_count(const char *needle)
{
    return eg_file_count(daemon_log, needle);
}

/* SoftHSM with calls = auto (concurrent), NSS with calls = serial set (write_config). */
static void test_log_says_how_the_token_is_called(void)
{
    bool serial = kind == EG_TH_NSS;

    if (kind == EG_TH_P11KIT) {
        printf("(no suite daemon on this token; test_e2e has one) ");
        return;
    }
    CU_ASSERT(log_count(serial ? "calls one at a time" : "calls concurrent") >= 1);
    CU_ASSERT_EQUAL(log_count(serial ? "calls concurrent" : "calls one at a time"), 0);
}

/* SIGHUP, then wait (up to 10 s) for one more "needle" line in the daemon's log. */
static int sighup_and_wait(const char *needle)
{
    int before = log_count(needle);

    kill(daemon_pid, SIGHUP);
    for (int i = 0; i < 200; i++) {
        if (log_count(needle) > before)
            return 0;
        usleep(50000);
    }
    return -1;
}

/*
 * A reload re-checks serverkeygen against the token: the same file reloads
 * and keeps serving; on SoftHSM a file that asks for encrypt (which SoftHSM
 * cannot do) is refused by name and the running profiles stay.
 */
static void test_reload_rechecks_serverkeygen(void)
{
    char *orig, *bad;
    size_t len;

    if (kind == EG_TH_P11KIT)
        return;
    CU_ASSERT_EQUAL(sighup_and_wait("estgated: reloaded"), 0);
    plaintext("P-256");
    if (kind != EG_TH_SOFTHSM)
        return;
    CU_ASSERT_PTR_NOT_NULL_FATAL(orig = eg_file_read(ini, &len));
    CU_ASSERT_PTR_NOT_NULL_FATAL(bad = malloc(len + 128));
    snprintf(bad, len + 128, "%s", orig);
    /* The default profile's mode line, then the recipients encrypt needs. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(strstr(bad, "serverkeygen = plaintext\n"));
    memcpy(strstr(bad, "serverkeygen = plaintext\n"), "serverkeygen = encrypt  \n", 25);
    CU_ASSERT_PTR_NOT_NULL_FATAL(strstr(bad, "[profile nokg]"));
    {
        char *nokg = strstr(bad, "[profile nokg]"), tail[1024];

        snprintf(tail, sizeof(tail), "%s", nokg);
        snprintf(nokg, len + 128 - (size_t)(nokg - bad), "serverkeygen_csr_key = yes\n\n%s", tail);
    }
    CU_ASSERT_EQUAL(eg_file_write(ini, bad, strlen(bad), 0600), 0);
    CU_ASSERT_EQUAL(sighup_and_wait("reload failed"), 0);
    CU_ASSERT(log_count("encrypt needs C_WrapKey of a private key with CKM_AES_CBC_PAD") > 0);
    plaintext("P-256"); /* the running configuration still serves */
    CU_ASSERT_EQUAL(eg_file_write(ini, orig, len, 0600), 0);
    free(bad);
    free(orig);
}

static CU_TestInfo tests[] = {
    {"nothing a request made is left in the token", test_nothing_left_in_the_token},
    {"plaintext P-256 key matches its certificate", test_plaintext_p256},
    {"plaintext P-384 key matches its certificate", test_plaintext_p384},
    {"plaintext RSA-2048 key matches its certificate", test_plaintext_rsa2048},
    {"a repeated request gets a new key", test_repeated_request_gets_a_new_key},
    {"an unusual RSA size gets the next standard size",
     test_an_unusual_rsa_size_gets_the_next_standard_size},
    {"issue_limit refuses before the key is made", test_issue_limit_refuses_before_the_key_is_made},
    {"Bouncy Castle simpleEnrollWithServersideCreation", test_bouncy_castle_client},
    {"encrypted to every recipient kind decrypts with openssl cms",
     test_encrypted_to_every_recipient_kind},
    {"algorithms come from the client's SMIMECapabilities",
     test_algorithms_come_from_the_clients_capabilities},
    {"an unlisted wrap for the pre-shared key is refused",
     test_an_unlisted_wrap_for_the_kek_is_refused},
    {"refusals have their status and issue nothing", test_refusals},
    {"--check-config probes the token; p11-kit refused by name",
     test_check_config_probes_the_token},
    {"a reload re-checks serverkeygen against the token", test_reload_rechecks_serverkeygen},
    {"the log says how the token is called", test_log_says_how_the_token_is_called},
    {"no generated key left in estgated memory", test_no_generated_key_left_in_estgated_memory},
    {"a full token answers 503 and keeps nothing", test_a_full_token_answers_503_and_keeps_nothing},
    {"a refused PIN is not tried again", test_a_refused_pin_is_not_tried_again},
    {"a KEK gone from the token is the appliance's fault (503)",
     test_a_kek_gone_from_the_token_is_the_appliances_fault},
    {"a repeated encrypted request is sent again, until a day later",
     test_a_repeated_encrypted_request_is_sent_again},
    {"simpleenroll and serverkeygen of one CSR are two requests",
     test_simpleenroll_and_serverkeygen_are_apart},
    {"a crash leaves no serverkeygen intent pending",
     test_a_crash_leaves_no_serverkeygen_intent_pending},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
