/*
 * A PKCS#10 certification request as the appliance reads it.
 *
 * OpenSSL 3.0's d2i_X509_REQ decodes the public key through a decoder chain
 * that it builds anew for every request: about 174 us of CPU per P-256 CSR
 * on our hardware, more than the token's signature. This reader keeps the
 * SubjectPublicKeyInfo as bytes and makes the EVP_PKEY from its fields with
 * EVP_PKEY_fromdata (RSA, EC on a named curve, Ed25519), which costs a few
 * microseconds. The signed bytes are kept as received, so a request that is
 * BER rather than DER in its attributes still verifies.
 */
#ifndef EG_CSR_H
#define EG_CSR_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

typedef struct eg_csr eg_csr;

/* Parses one DER request (all of der). 0, or -1 when it is not a PKCS#10 request. */
int eg_csr_parse(const unsigned char *der, size_t len, eg_csr **out);
void eg_csr_free(eg_csr *csr);

/*
 * The public key's algorithm (EVP_PKEY_RSA, EVP_PKEY_EC, EVP_PKEY_ED25519, or
 * another NID), and the key itself; NULL when the algorithm is not one the
 * appliance can use, or the key's fields are bad.
 */
int eg_csr_key_type(const eg_csr *csr);
EVP_PKEY *eg_csr_pubkey(const eg_csr *csr);

/* 1 when the request's signature verifies with its own public key. */
int eg_csr_verify(const eg_csr *csr);

/*
 * The digest the request's signature uses, as a NID (NID_sha256, NID_md5, ...; for RSASSA-PSS
 * the one its parameters name); NID_undef for an algorithm that hashes for itself (Ed25519,
 * Ed448); -1 for a signature algorithm OpenSSL does not know.
 */
int eg_csr_signature_digest(const eg_csr *csr);

const X509_NAME *eg_csr_subject(const eg_csr *csr);

/* The requested extensions, owned by csr (NULL when there are none). */
const STACK_OF(X509_EXTENSION) * eg_csr_extensions(const eg_csr *csr);

/* The request's attributes, for X509at_get_attr_by_NID and friends. */
const STACK_OF(X509_ATTRIBUTE) * eg_csr_attributes(const eg_csr *csr);

/* Sets the request's SubjectPublicKeyInfo, as received, into cert. 0 or -1. */
int eg_csr_copy_pubkey(const eg_csr *csr, X509 *cert);

#endif
