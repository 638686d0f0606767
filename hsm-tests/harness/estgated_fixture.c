#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <CUnit/CUnit.h>

#include "estgated_fixture.h"
#include "password_local.h"

int eg_fx_provision_cmd(eg_th *th, const char *const *words, eg_child_result *r)
{
    const eg_token_config *c = eg_th_config(th);
    char tool[PATH_MAX], *argv[48];
    int n = 0;

    argv[n++] = (char *)eg_child_built("provisioning/estgate-provision", tool);
    argv[n++] = (char *)words[0];
    argv[n++] = (char *)words[1];
    argv[n++] = "--module";
    argv[n++] = (char *)c->module_path;
    if (c->init_args != NULL) { /* NSS: where its database is */
        argv[n++] = "--init-args";
        argv[n++] = (char *)c->init_args;
    }
    argv[n++] = "--token";
    argv[n++] = (char *)c->token_label;
    argv[n++] = "--pin-file";
    argv[n++] = (char *)c->pin_file;
    for (size_t i = 2; words[i] != NULL && n < 47; i++)
        argv[n++] = (char *)words[i];
    argv[n] = NULL;
    return eg_child_run(eg_th_dir(th), NULL, argv, r) == 0 ? 0 : -1;
}

int eg_fx_provision(eg_th *th, const char *ca_subject, const char *ca_out, const char *tls_out,
                    eg_child_result *r)
{
    const char *ca[] = {"ca",        "create",   "--label",       "ca",     "--key", "ec-p256",
                        "--subject", ca_subject, "--self-signed", "--days", "3650",  "--out",
                        ca_out,      NULL};
    const char *tls[] = {"tls",        "create", "--label", "tls",       "--key", "ec-p256",
                         "--ca-label", "ca",     "--dns",   "localhost", "--ip",  "127.0.0.1",
                         "--days",     "30",     "--out",   tls_out,     NULL};

    return eg_fx_provision_cmd(th, ca, r) == 0 && eg_fx_provision_cmd(th, tls, r) == 0 ? 0 : -1;
}

int eg_fx_kek_import(eg_th *th, const char *label, const char *id_hex, char hex_out[65],
                     eg_child_result *r)
{
    return eg_fx_kek_import_bits(th, label, id_hex, 256, hex_out, r);
}

int eg_fx_kek_import_bits(eg_th *th, const char *label, const char *id_hex, unsigned bits,
                          char hex_out[65], eg_child_result *r)
{
    unsigned char k[32];
    char hex[65] = "", path[PATH_MAX];
    const char *words[] = {"kek",  "import",     "--label", label, "--id",
                           id_hex, "--key-file", path,      NULL};
    size_t n = bits == 128 ? 16 : 32;
    int rc = -1;

    snprintf(path, sizeof(path), "%s/kek.hex", eg_th_dir(th));
    if (RAND_bytes(k, sizeof(k)) != 1)
        goto out;
    for (size_t i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", k[i]);
    if (eg_file_write(path, hex, 2 * n, 0600) != 0 || eg_fx_provision_cmd(th, words, r) != 0)
        goto out;
    memcpy(hex_out, hex, sizeof(hex));
    rc = 0;
out:
    OPENSSL_cleanse(k, sizeof(k));
    OPENSSL_cleanse(hex, sizeof(hex));
    return rc;
}

int eg_fx_basic_user(const char *name, const char *pass_file, const char *auth_file, char **hash)
{
    unsigned char rnd[16], b64[192];
    char secret[33], user[128];
    int rc = -1;

    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto out;
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(secret + 2 * i, 3, "%02x", rnd[i]);
    if (eg_file_write(pass_file, secret, strlen(secret), 0600) != 0)
        goto out;
    if (auth_file != NULL) {
        snprintf(user, sizeof(user), "%.64s:%s", name, secret);
        EVP_EncodeBlock(b64, (unsigned char *)user, (int)strlen(user));
        if (eg_file_write(auth_file, b64, strlen((char *)b64), 0600) != 0)
            goto out;
    }
    rc = eg_password_hash_cost(secret, 10000, hash) == 0 ? 0 : -1;
out:
    OPENSSL_cleanse(rnd, sizeof(rnd));
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(user, sizeof(user));
    OPENSSL_cleanse(b64, sizeof(b64));
    return rc;
}

const char *eg_fx_uri_label(const eg_th *th, char *out, size_t cap)
{
    const char *in = eg_th_config(th)->token_label;
    size_t o = 0;

    for (; *in != '\0' && o + 4 < cap; in++)
        o += (size_t)(*in == ' ' ? snprintf(out + o, 4, "%%20") : snprintf(out + o, 2, "%c", *in));
    out[o] = '\0';
    return out;
}

int eg_fx_ini_head(const eg_th *th, const char *server_extra, const char *token_extra, char *out,
                   size_t cap)
{
    const eg_token_config *c = eg_th_config(th);
    char label[128];
    int n = snprintf(out, cap,
                     "[server]\n"
                     "listen = 127.0.0.1:0\n"
                     "tls_key = pkcs11:token=%s;object=tls;type=private\n"
                     "tls_chain = tls-chain.pem\n"
                     "ledger = ledger.db\n%s"
                     "\n[token]\nmodule = %s\n%s%s%slabel = %s\npin_file = %s\n%s",
                     eg_fx_uri_label(th, label, sizeof(label)), server_extra, c->module_path,
                     c->init_args ? "init_args = " : "", c->init_args ? c->init_args : "",
                     c->init_args ? "\n" : "", c->token_label, c->pin_file, token_extra);

    return n > 0 && (size_t)n < cap ? n : -1;
}

int eg_fx_suite_open(eg_th_kind kind, const char *label, const char *ca_subject,
                     const eg_fx_suite *s)
{
    char tls[PATH_MAX];
    const char *d;

    if ((*s->res = calloc(1, sizeof(**s->res))) == NULL || eg_th_create(kind, label, s->th) != 0)
        return -1;
    d = eg_th_dir(*s->th);
    snprintf(s->dir, EG_FX_DIR_MAX, "%s", d);
    snprintf(s->ini, PATH_MAX, "%s/estgated.ini", d);
    snprintf(s->ca, PATH_MAX, "%s/ca.pem", d);
    snprintf(s->pass, PATH_MAX, "%s/basic.pass", d);
    snprintf(s->log, PATH_MAX, "%s/estgated.log", d);
    snprintf(tls, sizeof(tls), "%s/tls-chain.pem", d);
    return eg_fx_provision(*s->th, ca_subject, s->ca, tls, *s->res);
}

char *eg_fx_basic_config(const eg_th *th, const char *ca_pem, const char *user,
                         const char *pass_file)
{
    enum { CAP = 16384 };
    char *hash = NULL, *text = malloc(CAP);
    int n, m;

    if (text == NULL || eg_fx_basic_user(user, pass_file, NULL, &hash) != 0 ||
        (n = eg_fx_ini_head(th, "", "", text, CAP)) < 0)
        goto fail;
    m = snprintf(text + n, CAP - (size_t)n,
                 "\n[profile default]\n"
                 "ca_key = pkcs11:token=%s;object=ca;type=private\nca_chain = %s\n"
                 "auth = basic\nuser = %s:%s\nsan = dns:.example.com\nmax_days = 30\n",
                 eg_th_config(th)->token_label, ca_pem, user, hash);
    if (m < 0 || m >= CAP - n)
        goto fail;
    free(hash);
    return text;
fail:
    free(hash);
    free(text);
    return NULL;
}

int eg_fx_ini_set(char **text, const char *key, const char *value)
{
    size_t klen = strlen(key), vlen = strlen(value), head, tail;
    char *at = *text, *eol, *out;

    /* The first line that starts with "key = ". */
    while (at != NULL && !((at == *text || at[-1] == '\n') && strncmp(at, key, klen) == 0 &&
                           strncmp(at + klen, " = ", 3) == 0))
        at = strstr(at + 1, key);
    if (at == NULL || (eol = strchr(at, '\n')) == NULL)
        return -1;
    head = (size_t)(at - *text) + klen + 3;
    tail = strlen(eol);
    if ((out = malloc(head + vlen + tail + 1)) == NULL)
        return -1;
    memcpy(out, *text, head);
    memcpy(out + head, value, vlen);
    memcpy(out + head + vlen, eol, tail + 1);
    free(*text);
    *text = out;
    return 0;
}

int eg_fx_cacerts_status(const char *dir, eg_child_result *r, const char *ca, unsigned port)
{
    char url[128];

    snprintf(url, sizeof(url), "https://127.0.0.1:%u/.well-known/est/cacerts", port);
    if (eg_child_cmd(dir, r, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
                     url, NULL) != 0)
        return -1;
    return atoi(r->out);
}

/* The ports of the first nports "listening on https://ADDR:PORT/" lines of log (ADDR may be
   [IPv6]); 0 when all are there. */
static int listening(const char *log, unsigned *ports, size_t nports)
{
    static const char tag[] = "listening on https://";
    const char *p = log, *colon;
    size_t i;

    for (i = 0; i < nports; i++) {
        if ((p = strstr(p, tag)) == NULL)
            return -1;
        p += strlen(tag);
        if (*p == '[' && (p = strchr(p, ']')) == NULL)
            return -1;
        if ((colon = strchr(p, ':')) == NULL)
            return -1;
        p = colon + 1;
        ports[i] = (unsigned)atoi(p);
    }
    return 0;
}

int eg_fx_daemon_start(const char *ini, const char *log, pid_t *pid, unsigned *ports, size_t nports)
{
    struct timespec tick = {0, 50 * 1000 * 1000};
    char estgated[PATH_MAX];
    char *argv[] = {estgated, "-c", (char *)ini, NULL};
    char *text;
    int i, up = -1;

    eg_child_built("appliance/estgated", estgated);
    unlink(log);
    if (eg_child_start(argv, log, pid) != 0)
        return -1;
    for (i = 0; i < 400 && up != 0; i++) { /* 20 s: a p11-kit token can be slow to open */
        nanosleep(&tick, NULL);
        if ((text = eg_file_read(log, NULL)) != NULL)
            up = listening(text, ports, nports);
        free(text);
        if (up != 0 && kill(*pid, 0) != 0)
            break;
    }
    if (up != 0 && (text = eg_file_read(log, NULL)) != NULL) {
        printf("\n  estgated did not start:\n%s\n", text);
        free(text);
    }
    return up;
}

int eg_fx_daemon_stop(pid_t *pid, int sig)
{
    int rc;

    if (*pid <= 0)
        return -1;
    kill(*pid, sig);
    rc = eg_child_wait(*pid);
    *pid = 0;
    return rc;
}

void eg_fx_check_issued(const char *dir, eg_child_result *r, const char *pem, const char *chain,
                        const char *cn, int max_days, const char *key)
{
    EXTENDED_KEY_USAGE *eku;
    EVP_PKEY *pkey = NULL;
    X509 *x = NULL;
    FILE *fp;
    int days, secs;

    CU_ASSERT_EQUAL(eg_child_cmd(dir, r, "openssl", "verify", "-CAfile", chain, "-purpose",
                                 "sslclient", pem, NULL),
                    0);
    if ((fp = fopen(pem, "r")) != NULL) {
        x = PEM_read_X509(fp, NULL, NULL, NULL);
        fclose(fp);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    CU_ASSERT_EQUAL(X509_check_ca(x), 0);
    CU_ASSERT_EQUAL(X509_check_host(x, cn, 0, 0, NULL), 1);
    eku = X509_get_ext_d2i(x, NID_ext_key_usage, NULL, NULL);
    CU_ASSERT(eku != NULL && sk_ASN1_OBJECT_num(eku) == 1 &&
              OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 0)) == NID_client_auth);
    EXTENDED_KEY_USAGE_free(eku);
    /* notBefore is back-dated a little for slow device clocks (issue.c): max_days + 1 bounds it. */
    CU_ASSERT(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)) == 1 &&
              (days < max_days + 1 || (days == max_days + 1 && secs == 0)));
    if (key != NULL) {
        if ((fp = fopen(key, "r")) != NULL) {
            pkey = PEM_read_PrivateKey(fp, NULL, NULL, NULL);
            fclose(fp);
        }
        CU_ASSERT(pkey != NULL && X509_check_private_key(x, pkey) == 1);
        EVP_PKEY_free(pkey);
    }
    X509_free(x);
}

int eg_fx_device_csr(const char *dir, eg_child_result *r, const char *name, char *csr)
{
    char key[PATH_MAX], subj[128], san[128];

    snprintf(key, sizeof(key), "%s/%s.key", dir, name);
    snprintf(csr, PATH_MAX, "%s/%s.der", dir, name);
    snprintf(subj, sizeof(subj), "/CN=%s.example.com", name);
    snprintf(san, sizeof(san), "subjectAltName=DNS:%s.example.com", name);
    return eg_child_cmd(dir, r, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-subj", subj,
                        "-addext", san, "-outform", "DER", "-out", csr, NULL) == 0
               ? 0
               : -1;
}
