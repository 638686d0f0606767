/*
 * estgate fleet trust bundles, device side: checks a bundle made by
 * `estgate-provision bundle create` before a device trusts its anchors.
 *
 * Self-contained: a device firmware includes this header and links the static
 * library libestgate_bundle.a and OpenSSL 3's libcrypto; nothing else of
 * estgate. The formats are described in docs/trust-bundles.md.
 *
 * A bundle is three files, read by the caller (the library does no I/O):
 *   manifest.cms      CMS SignedData (DER) holding the manifest text, with
 *                     the bundle signer's certificate and any CA certificates
 *                     that link it to the device's trust
 *   trust-bundle.pem  the trust anchors, PEM
 *   trust-bundle.p7b  the same anchors, PKCS#7 certs-only (DER)
 */
#ifndef ESTGATE_BUNDLE_H
#define ESTGATE_BUNDLE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/x509.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ESTGATE_BUNDLE_MANIFEST_FILE "manifest.cms"
#define ESTGATE_BUNDLE_PEM_FILE      "trust-bundle.pem"
#define ESTGATE_BUNDLE_P7B_FILE      "trust-bundle.p7b"

/*
 * The extended key usage that makes a certificate a bundle signer's, and
 * that only `estgate-provision bundle signer create` puts in one: without
 * it, any certificate from the devices' CA (a device's, or one estgated
 * issued with emailProtection) could sign a bundle. estgate has no
 * registered OID arc, so this is an OID made from a UUID (ITU-T X.667,
 * arc 2.25): UUID e7dafde7-89d1-471d-9282-ba10b5ac4e7b, generated once for
 * this purpose, as one decimal integer. Never change it: every signer
 * certificate and every device carries it.
 */
#define ESTGATE_BUNDLE_SIGNER_EKU_OID "2.25.308188737535463871406835120740393307771"

/* Limits a device can size its buffers by. */
#define ESTGATE_BUNDLE_MAX_ANCHORS  256
#define ESTGATE_BUNDLE_MAX_FILE     (1024 * 1024)
#define ESTGATE_BUNDLE_MAX_VERSION  999999999999999999ULL /* 18 digits */
#define ESTGATE_BUNDLE_MAX_MANIFEST 32768

/* Why a bundle was refused; each has its own code so a device can report it. */
typedef enum estgate_bundle_status {
    ESTGATE_BUNDLE_OK = 0,
    ESTGATE_BUNDLE_MALFORMED,        /* not a bundle: unparsable CMS, manifest or certificates */
    ESTGATE_BUNDLE_UNTRUSTED_SIGNER, /* the signer does not chain to the trust, or is no
                                        bundle signer (ESTGATE_BUNDLE_SIGNER_EKU_OID) */
    ESTGATE_BUNDLE_TAMPERED,         /* a file or the signed manifest changed after signing */
    ESTGATE_BUNDLE_EXPIRED,          /* now is after the manifest's not-after */
    ESTGATE_BUNDLE_NOT_YET_VALID,    /* now is before the manifest's issued-at */
    ESTGATE_BUNDLE_ROLLBACK,         /* version not newer than the installed one */
    ESTGATE_BUNDLE_INTERNAL,         /* out of memory, or a bad argument */
} estgate_bundle_status;

/* A short name for the status ("tampered", "rollback", ...). */
const char *estgate_bundle_status_name(estgate_bundle_status s);

/* The manifest's content (see docs/trust-bundles.md for its text form). */
typedef struct estgate_bundle_manifest {
    uint64_t version;  /* positive */
    int64_t issued_at; /* seconds since the epoch, UTC */
    int64_t not_after;
    unsigned char pem_sha256[32]; /* SHA-256 of the trust-bundle.pem file */
    unsigned char p7b_sha256[32]; /* SHA-256 of the trust-bundle.p7b file */
    size_t anchor_count;          /* 1 to ESTGATE_BUNDLE_MAX_ANCHORS */
    unsigned char anchor_sha256[ESTGATE_BUNDLE_MAX_ANCHORS][32]; /* of each anchor's DER */
} estgate_bundle_manifest;

/*
 * Parses manifest text strictly (every line, in order, nothing more). On
 * failure returns ESTGATE_BUNDLE_MALFORMED and, when why is not NULL, says
 * where in why. *m is written only on success.
 */
estgate_bundle_status estgate_bundle_manifest_parse(const unsigned char *text, size_t len,
                                                    estgate_bundle_manifest *m, char *why,
                                                    size_t whylen);
/* The manifest's text, in OPENSSL_malloc'd memory (free with OPENSSL_free); NULL on error. */
char *estgate_bundle_manifest_format(const estgate_bundle_manifest *m, size_t *len);

/* "YYYY-MM-DDTHH:MM:SSZ" (exactly; UTC) to seconds since the epoch; 0 or -1. */
int estgate_bundle_time_parse(const char *s, size_t len, int64_t *out);
/* Seconds since the epoch (year 1970 to 9999) to "YYYY-MM-DDTHH:MM:SSZ" in buf; 0 or -1. */
int estgate_bundle_time_format(int64_t t, char buf[21]);

/* The bundle's files as bytes, read by the caller. */
typedef struct estgate_bundle_files {
    const unsigned char *manifest_cms;
    size_t manifest_cms_len;
    const unsigned char *pem;
    size_t pem_len;
    const unsigned char *p7b;
    size_t p7b_len;
} estgate_bundle_files;

/* What the device trusts and knows. */
typedef struct estgate_bundle_policy {
    /*
     * The bundle signer's certificate, or the CA(s) that issued it. Each is
     * trusted as given (a signer certificate need not be self-signed).
     */
    STACK_OF(X509) * trusted;
    time_t now;                 /* the device's clock: validity of the signer and the bundle */
    uint64_t installed_version; /* the bundle version installed, 0 when none */
} estgate_bundle_policy;

/* A verified bundle. */
typedef struct estgate_bundle_verified {
    estgate_bundle_manifest manifest;
    STACK_OF(X509) * anchors; /* the anchors of trust-bundle.pem, in order */
    X509 *signer;             /* the certificate that signed the manifest */
} estgate_bundle_verified;

/*
 * Verifies a bundle: the CMS signature over the manifest by a bundle signer
 * (ESTGATE_BUNDLE_SIGNER_EKU_OID) that chains to policy->trusted at
 * policy->now, through the certificates in the CMS; the SHA-256 of both files and of
 * every anchor in them against the manifest; the validity period; and that
 * the version is newer than policy->installed_version. Returns the first
 * problem found (in that order), with a sentence in why (when not NULL).
 * *out is written only on success; free it with estgate_bundle_verified_free.
 */
estgate_bundle_status estgate_bundle_verify(const estgate_bundle_files *files,
                                            const estgate_bundle_policy *policy,
                                            estgate_bundle_verified **out, char *why,
                                            size_t whylen);
void estgate_bundle_verified_free(estgate_bundle_verified *v);

#ifdef __cplusplus
}
#endif

#endif
