/* Certificates and CSRs for token keys, signed in the token through the provider. */
#ifndef EG_PROV_CERT_BUILD_H
#define EG_PROV_CERT_BUILD_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

typedef enum eg_prov_profile {
    EG_PROFILE_CA,         /* CA:TRUE, keyCertSign + cRLSign */
    EG_PROFILE_TLS_SERVER, /* CA:FALSE, digitalSignature, serverAuth, SANs */
    EG_PROFILE_SIGNER,     /* CA:FALSE, digitalSignature, the bundle-signer EKU: trust bundles */
} eg_prov_profile;

typedef struct eg_prov_cert_spec {
    eg_prov_profile profile;
    const X509_NAME *subject;
    EVP_PKEY *pubkey; /* the subject key's public half (software) */
    X509 *issuer;     /* the issuing CA's certificate; NULL: self-signed */
    EVP_PKEY *signer; /* the issuing key, in the token through the provider */
    int days;
    const char *const *dns; /* subjectAltName dNSName entries */
    size_t ndns;
    const char *const *ips; /* subjectAltName iPAddress entries (IPv4 or IPv6 text) */
    size_t nips;
    /* A key certified before (a renewed or cross-certified CA) keeps its SKI; NULL: hashed. */
    const ASN1_OCTET_STRING *ski;
    const ASN1_TIME *not_before; /* NULL: now */
    const ASN1_TIME *not_after;  /* NULL: days after now */
} eg_prov_cert_spec;

/*
 * Parses an RFC 4514 name, most specific first ("CN=Example CA,O=Example").
 * Returns an exit code (EG_EXIT_USAGE for a malformed name).
 */
int eg_prov_name_parse(const char *s, X509_NAME **out);
/* RFC 1035 host names (letters, digits, inner hyphens); with wildcard, "*." in front allowed. */
bool eg_prov_host_name_ok(const char *s, bool wildcard);
/* SHA-384 for P-384 and RSA keys of 3072 bits or more, SHA-256 otherwise. */
const char *eg_prov_digest_for(const EVP_PKEY *pub);
/*
 * Builds a v3 certificate with a random positive 127-bit serial, signs it with
 * spec->signer and checks the signature with the issuer's public key.
 */
int eg_prov_cert_build(const eg_prov_cert_spec *spec, X509 **out);
/* A CSR for a CA key (asking for CA:TRUE and keyCertSign + cRLSign), signed by signer. */
int eg_prov_csr_build(const X509_NAME *subject, EVP_PKEY *pubkey, EVP_PKEY *signer, X509_REQ **out);

#endif
