/* Software certificates for tests and fuzz targets that need one but no token. */
#ifndef EG_TEST_CERTS_H
#define EG_TEST_CERTS_H

#include <stdbool.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* The validity eg_test_self_signed gives: from a day ago, for ten years. */
#define EG_TEST_CERT_BACK_S  86400L
#define EG_TEST_CERT_AHEAD_S (86400L * 3650)

/*
 * A version 3 certificate for key, signed by it with SHA-256: subject and
 * issuer CN=cn, serial 1, valid EG_TEST_CERT_BACK_S before now to
 * EG_TEST_CERT_AHEAD_S after. With ca: basicConstraints critical CA:TRUE,
 * keyUsage critical keyCertSign and cRLSign, and a subject key identifier;
 * without: basicConstraints CA:FALSE. NULL on failure.
 */
X509 *eg_test_self_signed(EVP_PKEY *key, const char *cn, bool ca, time_t now);

/* eg_test_self_signed(key, cn, ca, now), appended as PEM to the file at path; 0 or -1. */
int eg_test_self_signed_append(const char *path, EVP_PKEY *key, const char *cn, bool ca);

#endif
