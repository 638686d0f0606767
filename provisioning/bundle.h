/*
 * Fleet trust bundles on the provisioning side: anchors gathered from files,
 * the bundle built and signed in the token, and the exit codes of
 * `bundle verify`. The device side is device/estgate_bundle.h.
 */
#ifndef EG_PROV_BUNDLE_H
#define EG_PROV_BUNDLE_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "estgate_bundle.h"

/* Exit codes of `bundle verify` beyond the common ones (a malformed bundle is 65). */
#define EG_BUNDLE_EXIT_CODES(X)                                                                    \
    X(EG_EXIT_BUNDLE_SIGNER, 80,                                                                   \
      "bundle verify: the signer is not trusted (another key signed, or not a bundle signer)")     \
    X(EG_EXIT_BUNDLE_TAMPERED, 81, "bundle verify: a file or the manifest changed after signing")  \
    X(EG_EXIT_BUNDLE_EXPIRED, 82, "bundle verify: the bundle has expired")                         \
    X(EG_EXIT_BUNDLE_NOT_YET_VALID, 83, "bundle verify: the bundle is not valid yet")              \
    X(EG_EXIT_BUNDLE_ROLLBACK, 84, "bundle verify: not newer than the installed version")

#define EG_BUNDLE_EXIT_ENUM(name, value, text) name = value,
enum eg_bundle_exit { EG_BUNDLE_EXIT_CODES(EG_BUNDLE_EXIT_ENUM) };
#undef EG_BUNDLE_EXIT_ENUM

/* Prints the common exit codes and those of `bundle verify` (for its --help). */
void eg_bundle_print_exit_codes(void);

/* Trust anchors in the order given, each with the file it came from. */
typedef struct eg_bundle_anchors eg_bundle_anchors;

eg_bundle_anchors *eg_bundle_anchors_new(void);
void eg_bundle_anchors_free(eg_bundle_anchors *a);
/*
 * Adds the certificates of a PEM or DER file, or of every such file in a
 * folder (not recursive; names starting with '.' skipped; in name order).
 * Refuses, with a message naming the file, what is not a CA certificate, a
 * certificate already added, and files that hold no certificate.
 */
int eg_bundle_anchors_add(eg_bundle_anchors *a, const char *path);
/* The anchors so far (borrowed). */
STACK_OF(X509) * eg_bundle_anchors_certs(const eg_bundle_anchors *a);

/* A bundle's three files, in memory. */
typedef struct eg_bundle_files {
    BIO *pem;      /* trust-bundle.pem */
    BIO *p7b;      /* trust-bundle.p7b */
    BIO *manifest; /* manifest.cms */
} eg_bundle_files;

typedef struct eg_bundle_spec {
    STACK_OF(X509) * anchors;
    uint64_t version;
    int64_t issued_at, not_after;
    X509 *signer_cert;
    EVP_PKEY *signer_key; /* in the token, through the provider */
    /* CA certificates carried beside the signer's: its issuer chain and rollover links. */
    STACK_OF(X509) * chain;
    /* What devices trust, read from trust_file; NULL: the signer's certificate alone. */
    STACK_OF(X509) * trust;
    const char *trust_file;
} eg_bundle_spec;

/*
 * Builds the files and signs the manifest with spec->signer_key, with the
 * signer's certificate and spec->chain in the CMS, then checks the result
 * with the device library as a device that trusts spec->trust would.
 */
int eg_bundle_build(const eg_bundle_spec *spec, eg_bundle_files *out);
void eg_bundle_files_clear(eg_bundle_files *f);
/*
 * Writes the files into dir (made when missing), each atomically and the
 * manifest last; refuses a folder that already holds any of them.
 */
int eg_bundle_write(const char *dir, const eg_bundle_files *f);

/* A bundle version: digits only, no leading zero, at most 18 digits; 0 only when zero_ok. */
int eg_bundle_parse_version(const char *opt, const char *s, bool zero_ok, uint64_t *out);

/* The subcommands beside `bundle create`. */
int eg_prov_cmd_bundle_verify(int argc, char **argv);
int eg_prov_cmd_bundle_signer(int argc, char **argv);

/* A bundle folder read whole and verified as a device does. */
typedef struct eg_bundle_checked {
    unsigned char *manifest, *pem, *p7b;
    estgate_bundle_files in; /* points into the three above */
    estgate_bundle_verified *v;
} eg_bundle_checked;

/*
 * Reads dir and verifies it with the device library: signer chaining to the
 * certificates in trust, hashes, validity at time at, newer than installed.
 * An exit code, with the refusal reported; out is filled only on success.
 */
int eg_bundle_check(const char *dir, const char *trust, uint64_t installed, time_t at,
                    eg_bundle_checked *out);
void eg_bundle_checked_clear(eg_bundle_checked *c);

int eg_prov_cmd_bundle_install(int argc, char **argv);

/* Reads a bundle file into memory; EG_EXIT_NOINPUT when it cannot be read. */
int eg_bundle_read_file(const char *dir, const char *name, unsigned char **data, size_t *len);

#endif
