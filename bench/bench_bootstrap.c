/*
 * Devices per minute of `estgate-provision bootstrap` on a fresh SoftHSM
 * token: a CSR-mode batch (P-256 CSRs made here in software) and a
 * token-generated key batch (P-256 keys wrapped for an RSA-2048 transport
 * key). Each timing is one run of the real tool, state and files included.
 *   bench_bootstrap [CSR-DEVICES [KEYGEN-DEVICES]]   (defaults 1000 and 300)
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "bench_util.h"
#include "child.h"
#include "token_harness.h"

static char tool[PATH_MAX], dir[1024], ca_uri[256];
static eg_th *th;

static int make_csrs(int n, FILE *f)
{
    char path[PATH_MAX];
    int i, rc = 0;

    fprintf(f, "serial,model,csr\n");
    for (i = 0; rc == 0 && i < n; i++) {
        EVP_PKEY *k = EVP_EC_gen("P-256");
        X509_REQ *req = X509_REQ_new();
        BIO *b = NULL;

        snprintf(path, sizeof(path), "%s/c%d.csr", dir, i);
        if (k == NULL || req == NULL || X509_REQ_set_pubkey(req, k) != 1 ||
            X509_REQ_sign(req, k, EVP_sha256()) <= 0 || (b = BIO_new_file(path, "w")) == NULL ||
            !PEM_write_bio_X509_REQ(b, req))
            rc = -1;
        BIO_free(b);
        fprintf(f, "C%d,bench,c%d.csr\n", i, i);
        X509_REQ_free(req);
        EVP_PKEY_free(k);
    }
    return rc;
}

static int make_keygen(int n, FILE *f)
{
    char path[PATH_MAX];
    EVP_PKEY *t = EVP_RSA_gen(2048);
    BIO *b;
    int i, ok;

    snprintf(path, sizeof(path), "%s/transport.pem", dir);
    if (t == NULL || (b = BIO_new_file(path, "w")) == NULL)
        return -1;
    ok = PEM_write_bio_PUBKEY(b, t);
    BIO_free(b);
    EVP_PKEY_free(t);
    fprintf(f, "serial,model,key,transport\n");
    for (i = 0; i < n; i++)
        fprintf(f, "K%d,bench,ec-p256,transport.pem\n", i);
    return ok ? 0 : -1;
}

/* Runs one batch; prints devices per minute. */
static int run(const char *label, const char *manifest, const char *out, int n)
{
    const eg_token_config *c = eg_th_config(th);
    eg_child_result *r = calloc(1, sizeof(*r));
    char m[PATH_MAX], o[PATH_MAX], ca[PATH_MAX];
    double t0, dt;
    int rc;

    snprintf(m, sizeof(m), "%s/%s", dir, manifest);
    snprintf(o, sizeof(o), "%s/%s", dir, out);
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    if (r == NULL)
        return -1;
    t0 = eg_bench_now();
    rc = eg_child_cmd(dir, r, tool, "bootstrap", "--module", c->module_path, "--token",
                      c->token_label, "--pin-file", c->pin_file, "--manifest", m, "--out", o,
                      "--ca-key", ca_uri, "--ca-cert", ca, "--days", "365", "--san-template",
                      "dns:{serial}.devices.example.com", NULL);
    dt = eg_bench_now() - t0;
    if (rc == 0)
        printf("%-24s %6d devices  %7.2f s  %8.0f devices/min\n", label, n, dt, n * 60.0 / dt);
    free(r);
    return rc;
}

static int setup(void)
{
    const eg_token_config *c = eg_th_config(th);
    eg_child_result *r = calloc(1, sizeof(*r));
    char ca[PATH_MAX];
    int rc;

    snprintf(dir, sizeof(dir), "%s/bench", eg_th_dir(th));
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    snprintf(ca_uri, sizeof(ca_uri), "pkcs11:token=%s;object=factory-ca;type=private",
             c->token_label);
    rc = r == NULL || mkdir(dir, 0700) != 0 ||
         eg_child_cmd(dir, r, tool, "ca", "create", "--module", c->module_path, "--token",
                      c->token_label, "--pin-file", c->pin_file, "--label", "factory-ca", "--key",
                      "ec-p256", "--subject", "CN=Bench Factory CA", "--self-signed", "--days",
                      "3650", "--out", ca, NULL) != 0;
    free(r);
    return rc ? -1 : 0;
}

int main(int argc, char **argv)
{
    int ncsr = argc > 1 ? atoi(argv[1]) : 1000, nkey = argc > 2 ? atoi(argv[2]) : 300, rc = 1;
    char path[PATH_MAX];
    FILE *f1 = NULL, *f2 = NULL;

    if (eg_child_built("provisioning/estgate-provision", tool) == NULL ||
        eg_th_create(EG_TH_SOFTHSM, "bench-bootstrap", &th) != 0 || setup() != 0)
        goto out;
    snprintf(path, sizeof(path), "%s/csr.csv", dir);
    if ((f1 = fopen(path, "w")) == NULL || make_csrs(ncsr, f1) != 0)
        goto out;
    fclose(f1);
    f1 = NULL;
    snprintf(path, sizeof(path), "%s/keygen.csv", dir);
    if ((f2 = fopen(path, "w")) == NULL || make_keygen(nkey, f2) != 0)
        goto out;
    fclose(f2);
    f2 = NULL;
    printf("estgate-provision bootstrap on SoftHSM 2.6.1 (EC P-256 factory CA)\n");
    if (run("CSR mode (P-256)", "csr.csv", "out-csr", ncsr) != 0 ||
        run("token keygen (P-256)", "keygen.csv", "out-keygen", nkey) != 0)
        goto out;
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "bench_bootstrap failed (is EG_BUILD_DIR set to the build directory?)\n");
    if (f1 != NULL)
        fclose(f1);
    if (f2 != NULL)
        fclose(f2);
    /* The harness removes flat directories only; the outputs are in subdirectories. */
    snprintf(path, sizeof(path), "rm -rf '%s'", dir);
    if (dir[0] != 0 && system(path) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    eg_th_destroy(th);
    return rc;
}
