/*
 * Fuzz target: estgated's configuration file, as `estgated --check-config`
 * and a reload read it. The input is written as estgated.ini beside the
 * files a configuration names (ca.pem, tls.pem, clients.pem, recipients.pem,
 * pin, module.so), then loaded. Besides not crashing: a file is either
 * loaded or refused with at least one error, each with a message and a line
 * inside the file; a loaded one yields each profile's CsrAttrs as one DER
 * SEQUENCE. The token is not opened (a `module` line names any library).
 * Built by eg_fuzz_target (top CMakeLists.txt); see docs/fuzzing.md.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "policy.h"
#include "test_certs.h"
#include "tmpdir.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[256], ini[PATH_MAX];

static void in_dir(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static void remove_dir(void)
{
    eg_tmpdir_remove(dir);
}

static void write_file(const char *name, const char *text, mode_t mode)
{
    char path[PATH_MAX];
    FILE *f;

    in_dir(path, sizeof(path), name);
    if ((f = fopen(path, "w")) == NULL || fputs(text, f) < 0 || fclose(f) != 0 ||
        chmod(path, mode) != 0)
        abort();
}

/* A self-signed certificate for key, a CA or not, appended as PEM to name. */
static void write_cert(EVP_PKEY *key, const char *name, const char *cn, bool ca)
{
    char path[PATH_MAX];

    in_dir(path, sizeof(path), name);
    if (eg_test_self_signed_append(path, key, cn, ca) != 0)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    EVP_PKEY *ec = EVP_EC_gen("P-256"), *rsa = EVP_RSA_gen(2048);

    if (ec == NULL || rsa == NULL || eg_tmpdir_make(dir, sizeof(dir), base, "fuzz_config") != 0)
        abort();
    atexit(remove_dir);
    in_dir(ini, sizeof(ini), "estgated.ini");
    write_cert(ec, "ca.pem", "Fuzz Issuing CA", true);
    write_cert(ec, "ca.pem", "Fuzz Root CA", true);
    write_cert(ec, "tls.pem", "localhost", false);
    write_cert(ec, "clients.pem", "Device Maker CA", true);
    write_cert(rsa, "recipients.pem", "device key transport", false);
    write_cert(ec, "recipients.pem", "device key agreement", false);
    write_file("pin", "1234\n", 0600);
    write_file("module.so", "", 0644);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(rsa);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *devnull;
    eg_config_errors errs = {0};
    eg_config *cfg = NULL;
    size_t lines = 1;
    FILE *f = fopen(ini, "wb");

    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    for (size_t i = 0; i < size; i++)
        lines += data[i] == '\n';
    if (devnull == NULL && (devnull = fopen("/dev/null", "w")) == NULL)
        abort();
    if (eg_config_load(ini, &cfg, &errs) != 0) {
        if (cfg != NULL || errs.n == 0)
            abort(); /* refused, and not one word on why */
        for (size_t i = 0; i < errs.n; i++)
            if (errs.items[i].message[0] == '\0' || errs.items[i].line > lines)
                abort();
        eg_config_errors_print(&errs, ini, devnull);
        eg_config_errors_clear(&errs);
        return 0;
    }
    if (cfg == NULL || errs.n != 0)
        abort();
    for (size_t i = 0; i < cfg->nprofiles; i++) {
        eg_policy pol = {.cfg = &cfg->profiles[i]};
        uint8_t *der = NULL;
        size_t len = 0;
        char err[256];

        if (eg_config_profile(cfg, cfg->profiles[i].label) != &cfg->profiles[i])
            abort(); /* every profile answers at its own label */
        if (pol.cfg->subject_template != NULL &&
            eg_subject_tmpl_parse(pol.cfg->subject_template, &pol.tmpl, err, sizeof(err)) != 0)
            abort(); /* the loader checks templates */
        if (eg_csrattrs_der(&pol, &der, &len) == 0 && len > 0) {
            const unsigned char *q = der;
            STACK_OF(ASN1_TYPE) *seq = d2i_ASN1_SEQUENCE_ANY(NULL, &q, (long)len);

            if (seq == NULL || q != der + len)
                abort(); /* CsrAttrs is one DER SEQUENCE, nothing after it */
            sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
        }
        OPENSSL_free(der);
    }
    eg_config_free(cfg);
    return 0;
}
