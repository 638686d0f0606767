/* Certificate chains read from PEM files: order and verification. */
#ifndef EG_PROV_CHAIN_H
#define EG_PROV_CHAIN_H

#include <openssl/x509.h>

/* Reads every certificate in a PEM file; EG_EXIT_NOINPUT / EG_EXIT_DATAERR on failure. */
int eg_prov_read_certs(const char *path, STACK_OF(X509) * *out);
/*
 * Orders certs as the path from leaf upwards (leaf, its issuer, ...), ending
 * at a self-signed root or the last issuer present. A certificate of certs
 * that is not on the path is an error: a chain file holds one chain.
 */
int eg_prov_chain_order(X509 *leaf, STACK_OF(X509) * certs, STACK_OF(X509) * *out);
/*
 * Verifies the path's signatures and validity periods, trusting its last
 * certificate (the root, or the highest issuer given).
 */
int eg_prov_chain_verify(STACK_OF(X509) * path);

#endif
