/*
 * estgate-provision bootstrap against real tokens: the built tool runs as a
 * child process on a fresh harness token with a factory CA made by `ca
 * create`. A 1,000-device batch is killed (SIGKILL) part-way and resumed;
 * the certificates, the batch state and the signed manifest are checked
 * in-process and with stock openssl; token-generated keys are unwrapped as a
 * device would, in software.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <sqlite3.h>

#include "child.h"
#include "p11.h"
#include "procmem.h"
#include "token_harness.h"

/*
 * 1,000 devices, killed after 150. Under AddressSanitizer (with the slow
 * unwinding run-all.sh asks for) making the CSRs alone takes a minute, so the
 * sanitizer build runs the same steps on 300, killed after 60.
 */
#if defined(__SANITIZE_ADDRESS__)
#define NDEV    300
#define KILL_AT 60
#else
#define NDEV    1000
#define KILL_AT 150
#endif
#define SAN_DNS   "dns:{serial}.devices.example.com"
#define CA_URI_FM "pkcs11:token=%s;object=factory-ca;type=private"

static eg_th_kind kind;
static eg_th *th;
static char tool[PATH_MAX], dir[1024], ca_uri[256];
static X509 *ca;
static EVP_PKEY *transport; /* the "device" transport key pair, software */

static char *wpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

/* argv for a bootstrap run of manifest into out, with the token's options. */
static void bs_argv(char **argv, const char *manifest, const char *out)
{
    const eg_token_config *cfg = eg_th_config(th);
    static char m[PATH_MAX], o[PATH_MAX], c[PATH_MAX];
    int n = 0;

    wpath(m, manifest);
    wpath(o, out);
    wpath(c, "ca.pem");
    argv[n++] = tool;
    argv[n++] = "bootstrap";
    argv[n++] = "--module";
    argv[n++] = (char *)cfg->module_path;
    argv[n++] = "--token";
    argv[n++] = (char *)cfg->token_label;
    argv[n++] = "--pin-file";
    argv[n++] = (char *)cfg->pin_file;
    argv[n++] = "--manifest";
    argv[n++] = m;
    argv[n++] = "--out";
    argv[n++] = o;
    argv[n++] = "--ca-key";
    argv[n++] = ca_uri;
    argv[n++] = "--ca-cert";
    argv[n++] = c;
    argv[n++] = "--days";
    argv[n++] = "365";
    argv[n++] = "--san-template";
    argv[n++] = SAN_DNS;
    argv[n] = NULL;
}

static int run_bs(const char *manifest, const char *out, eg_child_result *r)
{
    char *argv[32];

    bs_argv(argv, manifest, out);
    return eg_child_run(dir, NULL, argv, r);
}

/* As run_bs, with more options after the usual ones (a later --ca-cert wins). */
static int run_bs_with(const char *manifest, const char *out, eg_child_result *r, ...)
{
    char *argv[48];
    const char *a;
    int n = 0;
    va_list ap;

    bs_argv(argv, manifest, out);
    while (argv[n] != NULL)
        n++;
    va_start(ap, r);
    while (n < 47 && (a = va_arg(ap, const char *)) != NULL)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    return eg_child_run(dir, NULL, argv, r);
}

static int write_text(const char *name, const char *text)
{
    char path[PATH_MAX];
    FILE *f = fopen(wpath(path, name), "w");

    if (f == NULL)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static bool exists(const char *name)
{
    char path[PATH_MAX];

    return access(wpath(path, name), F_OK) == 0;
}

/* The counts of the summary line. */
static int summary(const eg_child_result *r, int *now, int *already, int *refused, int *sigs)
{
    const char *p = strstr(r->out, "issued now "), *q = strstr(r->out, "token signatures ");

    if (p == NULL || q == NULL ||
        sscanf(p, "issued now %d, already issued %d, refused %d", now, already, refused) != 3 ||
        sscanf(q, "token signatures %d", sigs) != 1) {
        printf("\n  no summary in:\n%s\n%s\n", r->out, r->err);
        return -1;
    }
    return 0;
}

static int write_req(const char *name, X509_REQ *req)
{
    char path[PATH_MAX];
    BIO *b = BIO_new_file(wpath(path, name), "w");
    int ok = b != NULL && PEM_write_bio_X509_REQ(b, req);

    BIO_free(b);
    return ok ? 0 : -1;
}

/* A P-256 CSR signed in software by a fresh key (kept in *key when asked). */
static X509_REQ *make_csr(EVP_PKEY **key)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509_REQ *req = X509_REQ_new();

    if (k == NULL || req == NULL || X509_REQ_set_pubkey(req, k) != 1 ||
        X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC,
                                   (const unsigned char *)"device", -1, -1, 0) != 1 ||
        X509_REQ_sign(req, k, EVP_sha256()) <= 0) {
        X509_REQ_free(req);
        req = NULL;
    }
    if (key != NULL && req != NULL)
        *key = k;
    else
        EVP_PKEY_free(k);
    return req;
}

/* NDEV CSRs and batch.csv listing them. */
static int make_batch(void)
{
    char path[PATH_MAX], name[64];
    FILE *f = fopen(wpath(path, "batch.csv"), "w");
    X509_REQ *req;
    int i, rc = 0;

    if (f == NULL)
        return -1;
    fprintf(f, "serial,model,csr\n");
    for (i = 0; rc == 0 && i < NDEV; i++) {
        snprintf(name, sizeof(name), "csr/D%05d.csr", i);
        if ((req = make_csr(NULL)) == NULL || write_req(name, req) != 0)
            rc = -1;
        X509_REQ_free(req);
        fprintf(f, "D%05d,sensor-a,%s\n", i, name);
    }
    return fclose(f) == 0 ? rc : -1;
}

static size_t count_certs(const char *out)
{
    char path[PATH_MAX];
    DIR *d = opendir(wpath(path, out));
    struct dirent *e;
    size_t n = 0, len;

    while (d != NULL && (e = readdir(d)) != NULL) {
        len = strlen(e->d_name);
        if (e->d_name[0] == 'D' && len > 4 && strcmp(e->d_name + len - 4, ".pem") == 0)
            n++;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

static X509 *read_cert(const char *path)
{
    BIO *b = BIO_new_file(path, "r");
    X509 *x = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;

    BIO_free(b);
    return x;
}

static bool verifies(X509 *leaf)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    bool ok = st != NULL && ctx != NULL && X509_STORE_add_cert(st, ca) == 1 &&
              X509_STORE_CTX_init(ctx, st, leaf, NULL) == 1 &&
              X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT) == 1 &&
              X509_verify_cert(ctx) == 1;

    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    return ok;
}

/* The device serial in the subject, and its SAN, are the row's. */
static bool carries_serial(X509 *x, const char *serial)
{
    char sn[128], want[128];
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    bool ok = gens != NULL && sk_GENERAL_NAME_num(gens) == 1;

    snprintf(want, sizeof(want), "%s.devices.example.com", serial);
    if (ok) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, 0);

        ok = g->type == GEN_DNS &&
             strcmp((const char *)ASN1_STRING_get0_data(g->d.dNSName), want) == 0;
    }
    GENERAL_NAMES_free(gens);
    return ok &&
           X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_serialNumber, sn, sizeof(sn)) >
               0 &&
           strcmp(sn, serial) == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every device's certificate: verifies, carries its serial; serial numbers all differ. */
static void check_all_certs(const char *out)
{
    char path[PATH_MAX], name[64], **serials = calloc(NDEV, sizeof(char *));
    int i, good = 0, dup = 0;
    X509 *x;

    CU_ASSERT_PTR_NOT_NULL_FATAL(serials);
    for (i = 0; i < NDEV; i++) {
        snprintf(name, sizeof(name), "%s/D%05d.pem", out, i);
        if ((x = read_cert(wpath(path, name))) == NULL)
            continue;
        snprintf(name, sizeof(name), "D%05d", i);
        if (verifies(x) && carries_serial(x, name)) {
            BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);

            serials[good++] = BN_bn2hex(bn);
            BN_free(bn);
        }
        X509_free(x);
    }
    CU_ASSERT_EQUAL(good, NDEV);
    qsort(serials, (size_t)good, sizeof(char *), cmp_str);
    for (i = 1; i < good; i++)
        dup += strcmp(serials[i - 1], serials[i]) == 0;
    for (i = 0; i < good; i++)
        OPENSSL_free(serials[i]);
    free(serials);
    CU_ASSERT_EQUAL(dup, 0);
}

/* Rows in the batch state: all, and those with a certificate. */
static void state_counts(const char *out, int *all, int *issued)
{
    char name[128], db[PATH_MAX];
    sqlite3 *h = NULL;
    sqlite3_stmt *s = NULL;

    *all = *issued = -1;
    snprintf(name, sizeof(name), "%s/bootstrap.db", out);
    wpath(db, name);
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(h, "SELECT count(*), count(cert) FROM device", -1, &s, NULL) ==
            SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW) {
        *all = sqlite3_column_int(s, 0);
        *issued = sqlite3_column_int(s, 1);
    }
    sqlite3_finalize(s);
    sqlite3_close(h);
}

/* Starts the batch, SIGKILLs it once KILL_AT certificates exist; how many did. */
static size_t run_and_kill(const char *manifest, const char *out)
{
    char *argv[32], log[PATH_MAX];
    struct timespec pause = {0, 2000000};
    size_t n = 0;
    pid_t pid;
    int i;

    bs_argv(argv, manifest, out);
    if (eg_child_start(argv, wpath(log, "killed-run.log"), &pid) != 0)
        return 0;
    for (i = 0; i < 30000 && (n = count_certs(out)) < KILL_AT; i++)
        nanosleep(&pause, NULL);
    kill(pid, SIGKILL);
    eg_child_wait(pid);
    return count_certs(out);
}

static void test_batch_killed_and_resumed_issues_each_device_once(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int now, already, refused, sigs, all, issued;
    size_t at_kill = run_and_kill("batch.csv", "out");

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    printf("\n  killed with %zu certificates written", at_kill);
    CU_ASSERT(at_kill >= KILL_AT && at_kill < NDEV); /* really interrupted part-way */
    state_counts("out", &all, &issued);
    CU_ASSERT(issued >= (int)at_kill && all <= issued + 1); /* at most one open intent */
    CU_ASSERT_EQUAL(run_bs("batch.csv", "out", r), 0);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    printf(", resumed: issued now %d, already issued %d", now, already);
    CU_ASSERT_EQUAL(now + already, NDEV);
    CU_ASSERT_EQUAL(already, issued);
    CU_ASSERT_EQUAL(refused, 0);
    CU_ASSERT_EQUAL(sigs, now + 1); /* one token signature per new certificate, one manifest */
    state_counts("out", &all, &issued);
    CU_ASSERT(all == NDEV && issued == NDEV);
    CU_ASSERT_EQUAL(count_certs("out"), NDEV);
    check_all_certs("out");
    /* Once more: nothing new, only the manifest is signed again. */
    CU_ASSERT_EQUAL(run_bs("batch.csv", "out", r), 0);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 0 && already == NDEV && sigs == 1);
    free(r);
}

/* Each manifest line's fingerprint is the SHA-256 of that device's certificate. */
static void check_fingerprints(const char *text)
{
    char serial[64], hex[65], want[65], path[PATH_MAX], name[80];
    const char *p = strstr(text, "count ");
    unsigned char *der = NULL, md[32];
    int n = 0, lines = 0, good = 0, i;
    X509 *x;

    CU_ASSERT_FATAL(p != NULL && sscanf(p, "count %d", &n) == 1);
    CU_ASSERT_EQUAL(n, NDEV);
    while ((p = strchr(p, '\n')) != NULL && sscanf(++p, "%63s %64s", serial, hex) == 2) {
        lines++;
        snprintf(name, sizeof(name), "out/%s.pem", serial);
        if ((x = read_cert(wpath(path, name))) == NULL)
            continue;
        if ((i = i2d_X509(x, &der)) > 0 &&
            EVP_Digest(der, (size_t)i, md, NULL, EVP_sha256(), NULL) == 1) {
            for (i = 0; i < 32; i++)
                sprintf(want + 2 * i, "%02x", md[i]);
            good += strcmp(want, hex) == 0;
        }
        OPENSSL_free(der);
        der = NULL;
        X509_free(x);
    }
    CU_ASSERT_EQUAL(lines, NDEV);
    CU_ASSERT_EQUAL(good, NDEV);
}

static void test_signed_manifest_verifies_with_openssl_cms(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char in[PATH_MAX], out[PATH_MAX], caf[PATH_MAX], *text, *signed_text;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    /* -purpose any: the factory CA's certificate, the default signer, has no digitalSignature. */
    CU_ASSERT_EQUAL(eg_child_cmd(dir, r, "openssl", "cms", "-verify", "-inform", "DER", "-in",
                                 wpath(in, "out/manifest.cms"), "-CAfile", wpath(caf, "ca.pem"),
                                 "-purpose", "any", "-out", wpath(out, "manifest.out"), NULL),
                    0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "Verification successful"));
    text = eg_file_read(wpath(in, "out/manifest.txt"), NULL);
    signed_text = eg_file_read(out, NULL);
    CU_ASSERT_FATAL(text != NULL && signed_text != NULL);
    CU_ASSERT_STRING_EQUAL(text, signed_text);
    check_fingerprints(signed_text);
    free(text);
    free(signed_text);
    free(r);
}

/* The same check refuses a manifest with one changed byte in its content. */
static void test_tampered_manifest_does_not_verify(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    char in[PATH_MAX], bad[PATH_MAX], caf[PATH_MAX], *hit;
    size_t len = 0;
    char *der = eg_file_read(wpath(in, "out/manifest.cms"), &len);

    CU_ASSERT_FATAL(r != NULL && der != NULL);
    hit = memmem(der, len, "D00100 ", 7);
    CU_ASSERT_PTR_NOT_NULL_FATAL(hit);
    hit[7] = hit[7] == 'a' ? 'b' : 'a'; /* the first digit of that device's fingerprint */
    CU_ASSERT_EQUAL_FATAL(eg_file_write(wpath(bad, "tampered.cms"), der, len, 0600), 0);
    CU_ASSERT_NOT_EQUAL(eg_child_cmd(dir, r, "openssl", "cms", "-verify", "-inform", "DER", "-in",
                                     bad, "-CAfile", wpath(caf, "ca.pem"), "-purpose", "any",
                                     "-out", "/dev/null", NULL),
                        0);
    free(der);
    free(r);
}

static void test_bad_csr_row_refused_others_issued(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int now, already, refused, sigs;
    X509_REQ *good = make_csr(NULL), *bad = make_csr(NULL);
    const ASN1_BIT_STRING *sig;
    char path[PATH_MAX];
    FILE *f;

    CU_ASSERT_FATAL(r != NULL && good != NULL && bad != NULL);
    /* Flip a bit of the signature: the CSR still parses but was not signed by its key. */
    X509_REQ_get0_signature(bad, &sig, NULL);
    ((ASN1_BIT_STRING *)sig)->data[10] ^= 0x01;
    CU_ASSERT_FATAL(write_req("good.csr", good) == 0 && write_req("bad.csr", bad) == 0);
    CU_ASSERT_FATAL((f = fopen(wpath(path, "mixed.jsonl"), "w")) != NULL);
    fprintf(f, "{\"serial\": \"G1\", \"model\": \"m\", \"csr\": \"good.csr\"}\n"
               "{\"serial\": \"B1\", \"model\": \"m\", \"csr\": \"bad.csr\"}\n"
               "{\"serial\": \"G2\", \"model\": \"m\", \"csr\": \"csr/D00001.csr\"}\n"
               "{\"serial\": \"no/slash\", \"model\": \"m\", \"csr\": \"good.csr\"}\n");
    fclose(f);
    CU_ASSERT_EQUAL(run_bs("mixed.jsonl", "mixed", r), 65);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 2 && already == 0 && refused == 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "serial B1: CSR signature does not verify"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "line 4 serial -: serial missing or not"));
    CU_ASSERT(access(wpath(path, "mixed/G1.pem"), F_OK) == 0);
    CU_ASSERT(access(wpath(path, "mixed/G2.pem"), F_OK) == 0);
    CU_ASSERT(access(wpath(path, "mixed/B1.pem"), F_OK) != 0);
    X509_REQ_free(good);
    X509_REQ_free(bad);
    free(r);
}

/* --out out/batch-0042 on a fresh station: the folder is made with its missing parents. */
static void test_out_parents_are_made(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    X509_REQ *req = make_csr(NULL);
    char path[PATH_MAX];
    FILE *f;

    CU_ASSERT_FATAL(r != NULL && req != NULL && write_req("fresh.csr", req) == 0);
    CU_ASSERT_FATAL((f = fopen(wpath(path, "fresh.csv"), "w")) != NULL);
    fprintf(f, "serial,model,csr\nF1,m,fresh.csr\n");
    fclose(f);
    CU_ASSERT_NOT_EQUAL_FATAL(access(wpath(path, "line"), F_OK), 0);
    CU_ASSERT_EQUAL(run_bs("fresh.csv", "line/out/batch-0042", r), 0);
    CU_ASSERT(access(wpath(path, "line/out/batch-0042/F1.pem"), F_OK) == 0);
    CU_ASSERT(access(wpath(path, "line/out/batch-0042/manifest.cms"), F_OK) == 0);
    X509_REQ_free(req);
    free(r);
}

static void test_same_serial_with_other_csr_refused(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int now, already, refused, sigs;
    char path[PATH_MAX], g1[PATH_MAX], *before, *after;
    FILE *f;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    before = eg_file_read(wpath(g1, "mixed/G1.pem"), NULL);
    CU_ASSERT_FATAL((f = fopen(wpath(path, "other.csv"), "w")) != NULL);
    fprintf(f, "model,serial,csr\nm,G1,csr/D00002.csr\nm,G2,csr/D00001.csr\n");
    fclose(f);
    CU_ASSERT_EQUAL(run_bs("other.csv", "mixed", r), 65);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 0 && already == 1 && refused == 1 && sigs == 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "serial G1: serial already issued for a different CSR"));
    after = eg_file_read(g1, NULL);
    CU_ASSERT(before != NULL && after != NULL && strcmp(before, after) == 0);
    free(before);
    free(after);
    free(r);
}

/* The manifest's "count N" and whether it has a line for serial. */
static int manifest_count(const char *out, const char *serial, bool *listed)
{
    char path[PATH_MAX], name[128], line[80];
    char *text, *p;
    int n = -1;

    snprintf(name, sizeof(name), "%s/manifest.txt", out);
    if ((text = eg_file_read(wpath(path, name), NULL)) == NULL)
        return -1;
    if ((p = strstr(text, "\ncount ")) != NULL)
        n = atoi(p + 7);
    snprintf(line, sizeof(line), "\n%s ", serial);
    *listed = strstr(text, line) != NULL;
    free(text);
    return n;
}

/*
 * A one-row fix-up file run into the batch's --out: the signed manifest still
 * lists every device of the batch, not only that run's row.
 */
static void test_fixup_run_keeps_every_device_in_manifest(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    X509_REQ *req = make_csr(NULL);
    char in[PATH_MAX], caf[PATH_MAX], want[64];
    int all, issued;
    bool listed = false;

    CU_ASSERT_FATAL(r != NULL && req != NULL && write_req("fixup.csr", req) == 0);
    CU_ASSERT_FATAL(write_text("fixup.csv", "serial,model,csr\nD99999,sensor-a,fixup.csr\n") == 0);
    CU_ASSERT_EQUAL(run_bs("fixup.csv", "out", r), 0);
    state_counts("out", &all, &issued);
    CU_ASSERT_EQUAL(issued, NDEV + 1);
    CU_ASSERT_EQUAL(manifest_count("out", "D99999", &listed), NDEV + 1);
    CU_ASSERT(listed);
    CU_ASSERT_EQUAL(manifest_count("out", "D00000", &listed), NDEV + 1);
    CU_ASSERT(listed);
    snprintf(want, sizeof(want), "manifest of %d devices", NDEV + 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, want));
    CU_ASSERT_EQUAL(eg_child_cmd(dir, r, "openssl", "cms", "-verify", "-inform", "DER", "-in",
                                 wpath(in, "out/manifest.cms"), "-CAfile", wpath(caf, "ca.pem"),
                                 "-purpose", "any", "-out", "/dev/null", NULL),
                    0);
    X509_REQ_free(req);
    free(r);
}

/*
 * A corrected row (another model, another SAN template) for a device issued
 * before is refused with what the certificate was made from, never counted
 * as already issued; its certificate stays as it was.
 */
static void test_changed_model_or_san_template_refused(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int now, already, refused, sigs;
    char g2[PATH_MAX], *before, *after;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    before = eg_file_read(wpath(g2, "mixed/G2.pem"), NULL);
    CU_ASSERT_FATAL(write_text("remodel.csv", "serial,model,csr\nG2,sensor-b,csr/D00001.csr\n") ==
                    0);
    CU_ASSERT_EQUAL(run_bs("remodel.csv", "mixed", r), 65);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 0 && already == 0 && refused == 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "serial G2: issued earlier with model m; not reissued"));
    /* The same row as issued, with one more --san-template. */
    CU_ASSERT_FATAL(write_text("resan.csv", "serial,model,csr\nG2,m,csr/D00001.csr\n") == 0);
    CU_ASSERT_EQUAL(
        run_bs_with("resan.csv", "mixed", r, "--san-template", "uri:urn:dev:{serial}", NULL), 65);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 0 && already == 0 && refused == 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "serial G2: issued earlier with --san-template "
                                          "dns:{serial}.devices.example.com; not reissued"));
    /* And unchanged, it is what it was: already issued. */
    CU_ASSERT_EQUAL(run_bs("resan.csv", "mixed", r), 0);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 0 && already == 1 && refused == 0);
    after = eg_file_read(g2, NULL);
    CU_ASSERT(before != NULL && after != NULL && strcmp(before, after) == 0);
    free(before);
    free(after);
    free(r);
}

/* SN1.key's certificate would be SN1.key.pem, the file of SN1's wrapped key. */
static void test_serial_ending_in_key_refused(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int now, already, refused, sigs;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_FATAL(write_text("dotkey.csv", "serial,model,csr\nSN1.key,m,fresh.csr\n"
                                             "SN2.KEY,m,fresh.csr\nSN3.keys,m,fresh.csr\n") == 0);
    CU_ASSERT_EQUAL(run_bs("dotkey.csv", "dotkey", r), 65);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 1 && refused == 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "serial SN1.key: a serial may not end in '.key'"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "serial SN2.KEY: a serial may not end in '.key'"));
    CU_ASSERT(!exists("dotkey/SN1.key.pem") && !exists("dotkey/SN2.KEY.pem"));
    CU_ASSERT(exists("dotkey/SN3.keys.pem"));
    free(r);
}

/* Excel's "CSV UTF-8" and many JSON exporters start the file with a byte-order mark. */
static void test_byte_order_mark_skipped(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int now, already, refused, sigs;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_FATAL(write_text("bom.csv", "\xEF\xBB\xBFserial,model,csr\r\nBOM1,m,fresh.csr\r\n") ==
                    0);
    CU_ASSERT_EQUAL(run_bs("bom.csv", "bom-csv", r), 0);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 1 && refused == 0);
    CU_ASSERT_FATAL(write_text("bom.jsonl", "\xEF\xBB\xBF{\"serial\": \"BOM2\", \"model\": \"m\", "
                                            "\"csr\": \"fresh.csr\"}\n") == 0);
    CU_ASSERT_EQUAL(run_bs("bom.jsonl", "bom-json", r), 0);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 1 && refused == 0);
    CU_ASSERT(exists("bom-csv/BOM1.pem") && exists("bom-json/BOM2.pem"));
    free(r);
}

/* A file with no device rows is a mistake, not a finished batch of 0. */
static void test_input_without_rows_refused(void)
{
    static const char *const inputs[] = {"", "serial,model,csr\n", "\n# nothing yet\n"};
    eg_child_result *r = calloc(1, sizeof(*r));
    size_t i;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        CU_ASSERT_FATAL(write_text("norows.csv", inputs[i]) == 0);
        CU_ASSERT_EQUAL(run_bs("norows.csv", "norows", r), 65);
        CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "the input holds no device rows"));
        CU_ASSERT(!exists("norows/manifest.cms"));
    }
    free(r);
}

/*
 * JSON strings with standard escapes, and members we do not know of any
 * type, as exporters write them; our own members must still be strings.
 */
static void test_json_escapes_and_unknown_members(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int now, already, refused, sigs;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_FATAL(
        write_text(
            "escapes.jsonl",
            "{\"serial\": \"J\\u0031\", \"model\": \"m\", \"csr\": \"csr\\u002fD00006.csr\", "
            "\"line\": 12, \"ok\": true, \"meta\": {\"by\": [\"x\", null, -1.5e3]}, "
            "\"note\": \"tab\\there \\\"quoted\\\" \\ud83d\\ude00\"}\n"
            "{\"serial\": \"J2\", \"model\": \"m\", \"csr\": \"csr\\/D00007.csr\"}\n"
            "{\"serial\": 3, \"model\": \"m\", \"csr\": \"fresh.csr\"}\n") == 0);
    CU_ASSERT_EQUAL(run_bs("escapes.jsonl", "escapes", r), 65);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 2 && refused == 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "line 3 serial -: the JSON member 'serial' must be a "
                                          "string"));
    CU_ASSERT(exists("escapes/J1.pem") && exists("escapes/J2.pem"));
    free(r);
}

/*
 * A run SIGKILLed while writing leaves a hidden temporary file; the next run
 * removes its own kind of leftovers and nothing else.
 */
static void test_leftover_temporary_files_removed(void)
{
    static const char *const ours[] = {"mixed/.D0340.pem.Ab12Cd", "mixed/.G1.key.pem.x9Y8z7",
                                       "mixed/.manifest.cms.QwErTy"};
    static const char *const theirs[] = {"mixed/.notes.swp", "mixed/keep.pem.Ab12Cd",
                                         "mixed/.D0340.pem.toolong1", "mixed/.bootstrap.db.Ab12Cd"};
    eg_child_result *r = calloc(1, sizeof(*r));
    size_t i;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    for (i = 0; i < 3; i++)
        CU_ASSERT_FATAL(write_text(ours[i], "partial") == 0);
    for (i = 0; i < 4; i++)
        CU_ASSERT_FATAL(write_text(theirs[i], "someone else's") == 0);
    CU_ASSERT_FATAL(write_text("leftover.csv", "serial,model,csr\nG2,m,csr/D00001.csr\n") == 0);
    CU_ASSERT_EQUAL(run_bs("leftover.csv", "mixed", r), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "removed 3 temporary files a stopped run left in"));
    for (i = 0; i < 3; i++)
        CU_ASSERT(!exists(ours[i]));
    for (i = 0; i < 4; i++)
        CU_ASSERT(exists(theirs[i]));
    free(r);
}

/*
 * The output folder's file system fills up mid-batch, for real: the tool runs
 * in a mount namespace of its own (unshare(1); a user namespace too when not
 * root) with --out on a 256 KiB tmpfs. It stops, and tells the operator to
 * free space before running it again, since a plain re-run fails the same way.
 */
static void test_full_disk_says_free_space_first(void)
{
    static const char script[] = "mount -t tmpfs -o size=256k estgate-bs \"$1\" && shift && "
                                 "exec \"$@\"";
    eg_child_result *r = calloc(1, sizeof(*r));
    char *argv[48], *bs[32], mnt[PATH_MAX];
    int n = 0, i;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL_FATAL(mkdir(wpath(mnt, "full"), 0700), 0);
    bs_argv(bs, "batch.csv", "full");
    argv[n++] = "unshare";
    argv[n++] = geteuid() == 0 ? "-m" : "-rm";
    argv[n++] = "sh";
    argv[n++] = "-c";
    argv[n++] = (char *)script;
    argv[n++] = "sh";
    argv[n++] = mnt;
    for (i = 0; bs[i] != NULL; i++)
        argv[n++] = bs[i];
    argv[n] = NULL;
    eg_child_run(dir, NULL, argv, r);
    if (strstr(r->err, "mount") != NULL && strstr(r->out, "rows") == NULL &&
        strstr(r->err, "bootstrap") == NULL) {
        printf("\n  note: cannot mount a tmpfs in a namespace here (%s); not checked\n", r->err);
        free(r);
        return;
    }
    CU_ASSERT_EQUAL(r->code, 73);
    /* Whichever write meets the full file system first: a file's (ENOSPC) or the state's. */
    CU_ASSERT(strstr(r->err, "No space left on device") != NULL ||
              strstr(r->err, "database or disk is full") != NULL);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "is full; free space on it"));
    CU_ASSERT_PTR_NULL(strstr(r->out, "; run the same command again to resume"));
    free(r);
}

static int make_other_ca(const char *label, const char *subject, const char *file)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    const eg_token_config *cfg = eg_th_config(th);
    char out[PATH_MAX];
    int rc;

    if (r == NULL)
        return -1;
    rc = eg_child_cmd(dir, r, tool, "ca", "create", "--module", cfg->module_path, "--token",
                      cfg->token_label, "--pin-file", cfg->pin_file, "--label", label, "--key",
                      "ec-p256", "--subject", subject, "--self-signed", "--days", "3650", "--out",
                      wpath(out, file), NULL);
    free(r);
    return rc;
}

static void file_sha256_hex(const char *name, char hex[65])
{
    char path[PATH_MAX];
    X509 *x = read_cert(wpath(path, name));
    unsigned char *der = NULL, md[32];
    int n = x != NULL ? i2d_X509(x, &der) : -1;

    hex[0] = 0;
    if (n > 0 && EVP_Digest(der, (size_t)n, md, NULL, EVP_sha256(), NULL) == 1) {
        for (int i = 0; i < 32; i++)
            sprintf(hex + 2 * i, "%02x", md[i]);
    }
    OPENSSL_free(der);
    X509_free(x);
}

/*
 * `ca renew` (same key, a new certificate) mid-batch: the renewed --ca-cert
 * goes on with the batch, issuing nothing twice. A CA with another key is
 * refused, naming the certificate the batch started with and saying that a
 * new directory would issue every device again.
 */
static void test_renewed_ca_continues_the_batch(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    const eg_token_config *cfg = eg_th_config(th);
    int now, already, refused, sigs;
    char ca2[PATH_MAX], first[65], other_uri[256], db[PATH_MAX], *two;
    X509 *x;
    sqlite3 *h = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_FATAL(write_text("renew1.csv", "serial,model,csr\nR1,m,fresh.csr\n") == 0);
    CU_ASSERT_EQUAL_FATAL(run_bs("renew1.csv", "renew", r), 0);
    CU_ASSERT_EQUAL_FATAL(eg_child_cmd(dir, r, tool, "ca", "renew", "--module", cfg->module_path,
                                       "--token", cfg->token_label, "--pin-file", cfg->pin_file,
                                       "--label", "factory-ca", "--days", "3650", "--out",
                                       wpath(ca2, "ca-2.pem"), NULL),
                          0);
    CU_ASSERT_FATAL(write_text("renew2.csv", "serial,model,csr\nR1,m,fresh.csr\n"
                                             "R2,m,csr/D00008.csr\n") == 0);
    CU_ASSERT_EQUAL(run_bs_with("renew2.csv", "renew", r, "--ca-cert", ca2, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(now == 1 && already == 1 && refused == 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "is a renewal of the batch's CA certificate"));
    x = read_cert(wpath(db, "renew/R2.pem"));
    CU_ASSERT(x != NULL && verifies(x)); /* the old root verifies what the renewed one issued */
    X509_free(x);
    /* A state made before the CA's key and subject were recorded: told by its certificates. */
    CU_ASSERT_FATAL(sqlite3_open(wpath(db, "renew/bootstrap.db"), &h) == SQLITE_OK);
    CU_ASSERT(sqlite3_exec(h, "DELETE FROM batch_meta WHERE key <> 'ca_sha256'", NULL, NULL,
                           NULL) == SQLITE_OK);
    sqlite3_close(h);
    CU_ASSERT_EQUAL(run_bs_with("renew2.csv", "renew", r, "--ca-cert", ca2, NULL), 0);
    /* Another CA. */
    CU_ASSERT_EQUAL_FATAL(make_other_ca("other-ca", "CN=Other Factory CA", "other-ca.pem"), 0);
    snprintf(other_uri, sizeof(other_uri), "pkcs11:token=%s;object=other-ca;type=private",
             cfg->token_label);
    file_sha256_hex("ca.pem", first);
    CU_ASSERT_EQUAL(run_bs_with("renew2.csv", "renew", r, "--ca-cert", wpath(db, "other-ca.pem"),
                                "--ca-key", other_uri, NULL),
                    65);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, first));
    CU_ASSERT_PTR_NOT_NULL(strstr(r->err, "issues every device of the manifest again"));
    two = eg_file_read(wpath(db, "renew/R2.pem"), NULL);
    CU_ASSERT_PTR_NOT_NULL(two);
    free(two);
    free(r);
}

/* The ESTGATE WRAPPED KEY file, unwrapped as the device does: PKCS#8 DER, padding kept. */
static unsigned char *device_unwrap(const char *path, size_t *len)
{
    unsigned char *der = NULL, *aes = NULL, *out = NULL;
    char *name = NULL, *hdr = NULL;
    long derlen = 0;
    const unsigned char *p;
    STACK_OF(ASN1_TYPE) *sk = NULL;
    EVP_PKEY_CTX *pc = NULL;
    EVP_CIPHER_CTX *cc = NULL;
    size_t aeslen = 0;
    int n1 = 0, n2 = 0;
    BIO *b = BIO_new_file(path, "r");

    if (b == NULL || PEM_read_bio(b, &name, &hdr, &der, &derlen) != 1 ||
        strcmp(name, "ESTGATE WRAPPED KEY") != 0)
        goto out;
    p = der;
    if ((sk = d2i_ASN1_SEQUENCE_ANY(NULL, &p, derlen)) == NULL || sk_ASN1_TYPE_num(sk) != 4)
        goto out;
    {
        ASN1_OCTET_STRING *kt = sk_ASN1_TYPE_value(sk, 1)->value.octet_string;
        ASN1_OCTET_STRING *wk = sk_ASN1_TYPE_value(sk, 2)->value.octet_string;

        if ((pc = EVP_PKEY_CTX_new(transport, NULL)) == NULL || EVP_PKEY_decrypt_init(pc) != 1 ||
            EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_OAEP_PADDING) != 1 ||
            EVP_PKEY_CTX_set_rsa_oaep_md(pc, EVP_sha1()) != 1 ||
            (aes = OPENSSL_malloc(512)) == NULL || (aeslen = 512, 0) ||
            EVP_PKEY_decrypt(pc, aes, &aeslen, kt->data, (size_t)kt->length) != 1 || aeslen != 32)
            goto out;
        if ((cc = EVP_CIPHER_CTX_new()) == NULL ||
            (out = OPENSSL_malloc((size_t)wk->length + 16)) == NULL)
            goto out;
        EVP_CIPHER_CTX_set_flags(cc, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
        if (EVP_DecryptInit_ex(cc, EVP_aes_256_wrap_pad(), NULL, aes, NULL) != 1 ||
            EVP_DecryptUpdate(cc, out, &n1, wk->data, wk->length) != 1 ||
            EVP_DecryptFinal_ex(cc, out + n1, &n2) != 1) {
            OPENSSL_free(out);
            out = NULL;
            goto out;
        }
        *len = (size_t)(n1 + n2);
    }
out:
    ERR_print_errors_fp(stdout);
    OPENSSL_clear_free(aes, 512);
    EVP_CIPHER_CTX_free(cc);
    EVP_PKEY_CTX_free(pc);
    sk_ASN1_TYPE_pop_free(sk, ASN1_TYPE_free);
    OPENSSL_free(der);
    OPENSSL_free(name);
    OPENSSL_free(hdr);
    BIO_free(b);
    return out;
}

/* The unwrapped private key is the certificate's, and of the type the row asked for. */
static bool device_key_matches(const char *serial, const char *type)
{
    char path[PATH_MAX], name[64];
    unsigned char *pk8;
    const unsigned char *p;
    size_t len = 0;
    EVP_PKEY *key = NULL;
    X509 *cert;
    bool ok;

    snprintf(name, sizeof(name), "keygen/%s.key.pem", serial);
    if ((pk8 = device_unwrap(wpath(path, name), &len)) == NULL)
        return false;
    p = pk8;
    /* SoftHSM zero-pads the PKCS#8 to a multiple of 8 before RFC 5649: DER says its length. */
    key = d2i_AutoPrivateKey(NULL, &p, (long)len);
    OPENSSL_clear_free(pk8, len);
    snprintf(name, sizeof(name), "keygen/%s.pem", serial);
    cert = read_cert(wpath(path, name));
    ok = key != NULL && cert != NULL && EVP_PKEY_is_a(key, type) && verifies(cert) &&
         EVP_PKEY_eq(X509_get0_pubkey(cert), key) == 1;
    EVP_PKEY_free(key);
    X509_free(cert);
    return ok;
}

static bool token_can_wrap(void)
{
    eg_token *tok = NULL;
    bool can;

    if (eg_token_open(eg_th_config(th), &tok) != 0) {
        ERR_print_errors_fp(stdout);
        return false;
    }
    can = eg_token_has_mechanism(tok, CKM_AES_KEY_WRAP_PAD, CKF_WRAP) &&
          eg_token_has_mechanism(tok, CKM_RSA_PKCS_OAEP, CKF_WRAP);
    eg_token_free(tok);
    return can;
}

static void test_token_generated_keys_unwrap_on_the_device(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int now, already, refused, sigs;
    bool can = token_can_wrap();
    char path[PATH_MAX];
    FILE *f;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_FATAL((f = fopen(wpath(path, "keygen.csv"), "w")) != NULL);
    fprintf(f, "serial,model,key,transport\nK1,gw,,transport.pem\nK2,gw,ec-p256,transport.pem\n"
               "K3,gw,rsa2048,transport.pem\n");
    fclose(f);
    run_bs("keygen.csv", "keygen", r);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    if (!can) {
        printf("\n  note: token kind %s lacks CKM_AES_KEY_WRAP_PAD or CKM_RSA_PKCS_OAEP wrapping; "
               "token-generated key rows must be refused, and are checked for that\n",
               eg_th_kind_name(kind));
        CU_ASSERT_EQUAL(r->code, 65);
        CU_ASSERT(now == 0 && refused == 3);
        CU_ASSERT_PTR_NOT_NULL(strstr(r->out, "token-generated keys need"));
        free(r);
        return;
    }
    CU_ASSERT_EQUAL(r->code, 0);
    CU_ASSERT(now == 3 && refused == 0 && sigs == 4);
    CU_ASSERT(device_key_matches("K1", "EC"));
    CU_ASSERT(device_key_matches("K2", "EC"));
    CU_ASSERT(device_key_matches("K3", "RSA"));
    /* Again: nothing new is generated or signed but the manifest. */
    run_bs("keygen.csv", "keygen", r);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT(r->code == 0 && now == 0 && already == 3 && sigs == 1);
    CU_ASSERT(device_key_matches("K1", "EC"));
    free(r);
}

/*
 * The token goes away mid-batch (the p11-kit server is killed, as a network
 * HSM might drop): the tool stops with exit 69 once its recovery window has
 * passed, and run again with the token back it issues what is missing and
 * nothing twice.
 */
static void test_token_lost_mid_batch_then_resumed(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    int now, already, refused, sigs, all, issued, code;
    char *argv[32], log[PATH_MAX];
    struct timespec pause = {0, 2000000};
    size_t at_loss;
    pid_t pid;

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    if (kind != EG_TH_P11KIT) {
        printf("\n  note: only a served token (p11kit) can be taken away mid-batch\n");
        free(r);
        return;
    }
    bs_argv(argv, "batch.csv", "tokloss");
    CU_ASSERT_EQUAL_FATAL(eg_child_start(argv, wpath(log, "tokloss-run.log"), &pid), 0);
    for (int i = 0; i < 30000 && count_certs("tokloss") < KILL_AT; i++)
        nanosleep(&pause, NULL);
    CU_ASSERT_EQUAL_FATAL(eg_th_server_kill(th), 0);
    code = eg_child_wait(pid);
    at_loss = count_certs("tokloss");
    printf("\n  token lost with %zu certificates written; the tool exited %d", at_loss, code);
    CU_ASSERT_EQUAL(code, 69);
    CU_ASSERT(at_loss >= KILL_AT && at_loss < NDEV);
    CU_ASSERT_EQUAL_FATAL(eg_th_server_start(th), 0);
    state_counts("tokloss", &all, &issued);
    CU_ASSERT_EQUAL(run_bs("batch.csv", "tokloss", r), 0);
    CU_ASSERT_EQUAL_FATAL(summary(r, &now, &already, &refused, &sigs), 0);
    CU_ASSERT_EQUAL(now + already, NDEV);
    CU_ASSERT_EQUAL(already, issued);
    CU_ASSERT_EQUAL(sigs, now + 1);
    CU_ASSERT_EQUAL(count_certs("tokloss"), NDEV);
    check_all_certs("tokloss");
    free(r);
}

/* ---- never in the tool's memory ---- */

/* The private scalar of a P-256 key (the row asked for ec-p256), as 32 octets. */
static int ec_scalar(EVP_PKEY *key, unsigned char out[32])
{
    char group[32] = "";
    BIGNUM *d = NULL;
    int ok = EVP_PKEY_get_group_name(key, group, sizeof(group), NULL) == 1 &&
             strcmp(group, "prime256v1") == 0 &&
             EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_PRIV_KEY, &d) == 1 &&
             BN_bn2binpad(d, out, 32) == 32;

    BN_clear_free(d);
    return ok ? 0 : -1;
}

/* The device's private key for serial, unwrapped as the device does. */
static EVP_PKEY *device_key(const char *out, const char *serial)
{
    char path[PATH_MAX], name[96];
    unsigned char *pk8;
    const unsigned char *p;
    size_t len = 0;
    EVP_PKEY *key;

    snprintf(name, sizeof(name), "%s/%s.key.pem", out, serial);
    if ((pk8 = device_unwrap(wpath(path, name), &len)) == NULL)
        return NULL;
    p = pk8;
    key = d2i_AutoPrivateKey(NULL, &p, (long)len);
    OPENSSL_clear_free(pk8, len);
    return key;
}

/* Starts the batch and stops it (SIGSTOP) once the file appears; 0 with *pid. */
static int start_and_stop_at(const char *manifest, const char *out, const char *file, pid_t *pid)
{
    char *argv[32], log[PATH_MAX], path[PATH_MAX];
    struct stat st;
    int status;

    bs_argv(argv, manifest, out);
    if (eg_child_start(argv, wpath(log, "memcheck.log"), pid) != 0)
        return -1;
    for (int i = 0; i < 20000; i++) {
        if (stat(wpath(path, file), &st) == 0) {
            if (kill(*pid, SIGSTOP) != 0 || waitpid(*pid, &status, WUNTRACED) != *pid ||
                !WIFSTOPPED(status))
                return -1; /* it ended before it could be stopped: the batch is too short */
            return 0;
        }
        usleep(1000);
    }
    return -1;
}

/*
 * Token-generated keys pass through estgate-provision only wrapped. The tool
 * is stopped after three keys were made, wrapped and written, with 300 CSR
 * rows still to do; its memory is read, and none of the three private
 * scalars (taken afterwards from the device-side unwrap) is in it. The
 * controls: each key's public point, which the tool did handle, is found in
 * the same dump, and a private scalar held by this test's own process is
 * found by the same reader.
 */
static void test_generated_keys_never_in_tool_memory(void)
{
    static const char *serials[] = {"M1", "M2", "M3"};
    unsigned char *dump = NULL, *self = NULL, scalar[32], point[133];
    size_t dlen = 0, slen = 0, plen;
    char path[PATH_MAX];
    pid_t pid;
    FILE *f;
    int i;

    if (!token_can_wrap()) {
        printf("\n  note: token kind %s cannot wrap; no token-generated keys to look for\n",
               eg_th_kind_name(kind));
        return;
    }
    CU_ASSERT_FATAL((f = fopen(wpath(path, "memcheck.jsonl"), "w")) != NULL);
    for (i = 0; i < 3; i++)
        fprintf(f,
                "{\"serial\": \"%s\", \"model\": \"gw\", \"key\": \"ec-p256\", "
                "\"transport\": \"transport.pem\"}\n",
                serials[i]);
    for (i = 0; i < 300 && i < NDEV; i++)
        fprintf(f, "{\"serial\": \"C%05d\", \"model\": \"m\", \"csr\": \"csr/D%05d.csr\"}\n", i, i);
    fclose(f);
    CU_ASSERT_EQUAL_FATAL(
        start_and_stop_at("memcheck.jsonl", "memcheck", "memcheck/M3.key.pem", &pid), 0);
    CU_ASSERT_EQUAL(eg_procmem_dump(pid, &dump, &dlen), 0);
    kill(pid, SIGCONT);
    CU_ASSERT_EQUAL(eg_child_wait(pid), 0);
    CU_ASSERT_FATAL(dump != NULL && dlen > 0);
    for (i = 0; i < 3; i++) {
        EVP_PKEY *key = device_key("memcheck", serials[i]);

        CU_ASSERT_FATAL(key != NULL);
        CU_ASSERT_EQUAL_FATAL(ec_scalar(key, scalar), 0);
        CU_ASSERT_EQUAL_FATAL(EVP_PKEY_get_octet_string_param(key,
                                                              OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                                              point, sizeof(point), &plen),
                              1);
        CU_ASSERT(eg_mem_contains(dump, dlen, point, plen)); /* control: the tool's heap is read */
        CU_ASSERT(!eg_mem_contains(dump, dlen, scalar, 32)); /* the secret is not there */
        if (i == 2) { /* control: the reader finds a scalar where one is */
            CU_ASSERT_EQUAL(eg_procmem_dump(getpid(), &self, &slen), 0);
            CU_ASSERT(eg_mem_contains(self, slen, scalar, 32));
        }
        OPENSSL_cleanse(scalar, sizeof(scalar));
        EVP_PKEY_free(key);
    }
    free(self);
    free(dump);
}

static int make_ca(void)
{
    eg_child_result *r = calloc(1, sizeof(*r));
    const eg_token_config *cfg = eg_th_config(th);
    char out[PATH_MAX];
    int rc = -1;

    if (r != NULL &&
        eg_child_cmd(dir, r, tool, "ca", "create", "--module", cfg->module_path, "--token",
                     cfg->token_label, "--pin-file", cfg->pin_file, "--label", "factory-ca",
                     "--key", "ec-p256", "--subject", "CN=Factory CA", "--self-signed", "--days",
                     "3650", "--out", wpath(out, "ca.pem"), NULL) == 0 &&
        (ca = read_cert(out)) != NULL)
        rc = 0;
    snprintf(ca_uri, sizeof(ca_uri), CA_URI_FM, cfg->token_label);
    free(r);
    return rc;
}

static int make_transport(void)
{
    char path[PATH_MAX];
    BIO *b;
    int ok;

    if ((transport = EVP_RSA_gen(2048)) == NULL ||
        (b = BIO_new_file(wpath(path, "transport.pem"), "w")) == NULL)
        return -1;
    ok = PEM_write_bio_PUBKEY(b, transport);
    BIO_free(b);
    return ok ? 0 : -1;
}

/*
 * The tool's children keep leak checking but unwind fast at each malloc:
 * slow unwinding makes a device cost 125 ms instead of 7 under ASan. A child
 * killed by SIGKILL never reports leaks anyway; the others still do.
 */
static void children_fast_unwind(void)
{
    const char *o = getenv("LSAN_OPTIONS");
    char buf[1024], *p;

    if (o == NULL || strlen(o) >= sizeof(buf) || strstr(o, "fast_unwind_on_malloc=0") == NULL)
        return;
    strcpy(buf, o);
    p = strstr(buf, "fast_unwind_on_malloc=0");
    p[strlen("fast_unwind_on_malloc=")] = '1';
    setenv("LSAN_OPTIONS", buf, 1);
}

static int suite_init(void)
{
    const char *build = getenv("EG_BUILD_DIR");
    char path[PATH_MAX];

    if (build == NULL) {
        fprintf(stderr, "EG_BUILD_DIR is not set (ctest sets it)\n");
        return -1;
    }
    snprintf(tool, sizeof(tool), "%s/provisioning/estgate-provision", build);
    children_fast_unwind();
    if (NDEV != 1000)
        printf("\n  note: sanitizer build: a batch of %d devices, killed after %d\n", NDEV,
               KILL_AT);
    if (eg_th_create(kind, "bootstrap", &th) != 0)
        return -1;
    snprintf(dir, sizeof(dir), "%s/bs", eg_th_dir(th));
    if (mkdir(dir, 0700) != 0 || mkdir(wpath(path, "csr"), 0700) != 0)
        return -1;
    return make_ca() == 0 && make_transport() == 0 && make_batch() == 0 ? 0 : -1;
}

static int suite_clean(void)
{
    char cmd[PATH_MAX + 16];

    /* The harness removes flat directories only; ours has subdirectories. */
    if (dir[0] != 0) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", dir);
    }
    X509_free(ca);
    EVP_PKEY_free(transport);
    eg_th_destroy(th);
    return 0;
}

static CU_TestInfo tests[] = {
    {"1,000 devices, SIGKILL part-way, resumed: each issued once",
     test_batch_killed_and_resumed_issues_each_device_once},
    {"the signed batch manifest verifies with openssl cms",
     test_signed_manifest_verifies_with_openssl_cms},
    {"a tampered manifest does not verify", test_tampered_manifest_does_not_verify},
    {"a bad CSR row is refused, the others issued", test_bad_csr_row_refused_others_issued},
    {"the same serial with another CSR is refused", test_same_serial_with_other_csr_refused},
    {"an --out folder's missing parents are made", test_out_parents_are_made},
    {"a fix-up run keeps every device in the manifest",
     test_fixup_run_keeps_every_device_in_manifest},
    {"a changed model or SAN template is refused", test_changed_model_or_san_template_refused},
    {"a serial ending in .key is refused", test_serial_ending_in_key_refused},
    {"a byte-order mark is skipped", test_byte_order_mark_skipped},
    {"an input without rows is refused", test_input_without_rows_refused},
    {"JSON escapes and unknown members", test_json_escapes_and_unknown_members},
    {"a stopped run's temporary files are removed", test_leftover_temporary_files_removed},
    {"a full file system: free space first", test_full_disk_says_free_space_first},
    {"token-generated keys unwrap on the device and match",
     test_token_generated_keys_unwrap_on_the_device},
    {"token lost mid-batch, resumed: each issued once", test_token_lost_mid_batch_then_resumed},
    {"token-generated keys are never in the tool's memory",
     test_generated_keys_never_in_tool_memory},
    /* Last: it renews the factory CA's certificate in the token. */
    {"a renewed CA continues the batch; another CA is refused",
     test_renewed_ca_continues_the_batch},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
