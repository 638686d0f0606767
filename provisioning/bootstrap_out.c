/*
 * What a bootstrap batch leaves in its output directory: per device
 * <serial>.pem (certificate, then the --ca-cert chain) and, for
 * token-generated keys, <serial>.key.pem (the wrapped key); per batch
 * manifest.txt and manifest.cms (the same text as the encapsulated content
 * of CMS SignedData). Files are derived from the batch state, so a run after
 * a crash rewrites any that are missing or differ.
 */
#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/cms.h>
#include <openssl/pem.h>

#include "bootstrap.h"
#include "files.h"
#include "provision.h"
#include "report.h"

void eg_bs_hex(const uint8_t *b, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < len; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * len] = 0;
}

/* Whether path already holds exactly the bytes of mem. */
static bool same_file(const char *path, BIO *mem)
{
    char *want, *have = NULL;
    long wlen = BIO_get_mem_data(mem, &want);
    FILE *f = fopen(path, "rb");
    bool same = false;

    if (f == NULL)
        return false;
    if ((have = malloc((size_t)wlen + 1)) != NULL)
        same = fread(have, 1, (size_t)wlen + 1, f) == (size_t)wlen &&
               memcmp(have, want, (size_t)wlen) == 0;
    free(have);
    fclose(f);
    return same;
}

static int write_if_changed(const char *path, BIO *mem)
{
    eg_prov_outfile *of = NULL;
    int rc;

    if (same_file(path, mem))
        return EG_EXIT_OK;
    if ((rc = eg_prov_outfile_open(path, 0644, &of)) == EG_EXIT_OK &&
        (rc = eg_prov_outfile_write(of, mem)) == EG_EXIT_OK)
        rc = eg_prov_outfile_commit(of);
    eg_prov_outfile_free(of);
    return rc;
}

static int write_chain(const char *dir, const char *serial, X509 *cert, STACK_OF(X509) * chain)
{
    BIO *mem = BIO_new(BIO_s_mem());
    char path[4096];
    int i, ok, rc;

    ok = mem != NULL && PEM_write_bio_X509(mem, cert);
    for (i = 0; ok && i < sk_X509_num(chain); i++)
        ok = PEM_write_bio_X509(mem, sk_X509_value(chain, i));
    snprintf(path, sizeof(path), "%s/%s.pem", dir, serial);
    rc = ok ? write_if_changed(path, mem) : eg_prov_fail_stack(EG_EXIT_SOFTWARE, "PEM encoding");
    BIO_free(mem);
    return rc;
}

static int write_wrapped(const char *dir, const char *serial, const uint8_t *der, size_t len)
{
    BIO *mem = BIO_new(BIO_s_mem());
    char path[4096];
    int rc;

    snprintf(path, sizeof(path), "%s/%s.key.pem", dir, serial);
    if (mem == NULL ||
        PEM_write_bio(mem, "ESTGATE WRAPPED KEY", "", (const unsigned char *)der, (long)len) <= 0)
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "PEM encoding");
    else
        rc = write_if_changed(path, mem);
    BIO_free(mem);
    return rc;
}

int eg_bs_write_device(const char *dir, const char *serial, X509 *cert, STACK_OF(X509) * chain,
                       const uint8_t *wrapped, size_t wrappedlen)
{
    int rc = write_chain(dir, serial, cert, chain);

    if (rc == EG_EXIT_OK && wrapped != NULL)
        rc = write_wrapped(dir, serial, wrapped, wrappedlen);
    return rc;
}

/* "estgate-bootstrap-manifest 1", the CA, the count, then "<serial> <sha256>" lines. */
static BIO *manifest_text(const eg_bs_entry *e, size_t n, const uint8_t ca[32])
{
    BIO *mem = BIO_new(BIO_s_mem());
    char hex[65];
    size_t i;
    int ok;

    eg_bs_hex(ca, 32, hex);
    ok = mem != NULL &&
         BIO_printf(mem, "estgate-bootstrap-manifest 1\nca-sha256 %s\ncount %zu\n", hex, n) > 0;
    for (i = 0; ok && i < n; i++) {
        eg_bs_hex(e[i].sha256, 32, hex);
        ok = BIO_printf(mem, "%s %s\n", e[i].serial, hex) > 0;
    }
    if (!ok) {
        BIO_free(mem);
        mem = NULL;
    }
    return mem;
}

/* CMS SignedData over text, signed in the token; DER into a memory BIO. */
static BIO *manifest_cms(BIO *text, X509 *signer, EVP_PKEY *key)
{
    BIO *in = NULL, *out = BIO_new(BIO_s_mem());
    CMS_ContentInfo *cms = NULL;
    char *p;
    long len = BIO_get_mem_data(text, &p);

    /* CMS_BINARY: the exact bytes of manifest.txt, no MIME canonicalisation. */
    if (out == NULL || (in = BIO_new_mem_buf(p, (int)len)) == NULL ||
        (cms = CMS_sign(signer, key, NULL, in, CMS_BINARY | CMS_NOSMIMECAP)) == NULL ||
        i2d_CMS_bio(out, cms) != 1) {
        BIO_free(out);
        out = NULL;
    }
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return out;
}

int eg_bs_manifest_write(const char *dir, const eg_bs_entry *e, size_t n,
                         const uint8_t ca_sha256[32], X509 *signer, EVP_PKEY *key)
{
    BIO *text = manifest_text(e, n, ca_sha256), *cms = NULL;
    char path[4096];
    int rc;

    if (text == NULL) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot build the batch manifest");
        goto out;
    }
    if ((cms = manifest_cms(text, signer, key)) == NULL) {
        rc = eg_prov_fail_stack(EG_EXIT_UNAVAILABLE, "cannot sign the batch manifest in the token");
        goto out;
    }
    snprintf(path, sizeof(path), "%s/manifest.txt", dir);
    if ((rc = write_if_changed(path, text)) != EG_EXIT_OK)
        goto out;
    snprintf(path, sizeof(path), "%s/manifest.cms", dir);
    rc = write_if_changed(path, cms);
out:
    BIO_free(text);
    BIO_free(cms);
    return rc;
}

/* The file names this tool writes in a batch directory (before mkstemp's suffix). */
static bool own_name(const char *s, size_t n)
{
    size_t i;

    if ((n == 12 && (memcmp(s, "manifest.txt", 12) == 0 || memcmp(s, "manifest.cms", 12) == 0)))
        return true;
    /* <serial>.pem or <serial>.key.pem: serial characters, then .pem */
    if (n < 5 || n > EG_BS_NAME_MAX + 8 || memcmp(s + n - 4, ".pem", 4) != 0 || s[0] == '.' ||
        s[0] == '-')
        return false;
    for (i = 0; i < n - 4; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return false;
    }
    return true;
}

/* ".<own name>.XXXXXX", as eg_prov_outfile_open makes them. */
static bool leftover_name(const char *s)
{
    size_t n = strlen(s), i;

    if (n < 9 || s[0] != '.' || s[n - 7] != '.')
        return false;
    for (i = n - 6; i < n; i++) {
        if (!isalnum((unsigned char)s[i]))
            return false;
    }
    return own_name(s + 1, n - 8);
}

int eg_bs_remove_leftovers(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4096];
    int n = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_type != DT_REG && e->d_type != DT_UNKNOWN)
            continue;
        if (!leftover_name(e->d_name))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (unlink(path) == 0)
            n++;
    }
    closedir(d);
    return n;
}
