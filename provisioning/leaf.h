/*
 * A key pair made in the token under the token CA, with its certificate
 * stored beside it and written out as a chain: what `tls create` and
 * `bundle signer create` both do, with different certificates.
 */
#ifndef EG_PROV_LEAF_H
#define EG_PROV_LEAF_H

#include <stddef.h>

#include <openssl/x509.h>

#include "cert_build.h"
#include "p11.h"
#include "provision.h"

typedef struct eg_prov_leaf_req {
    const eg_prov_token_opts *tok;
    const char *label;    /* CKA_LABEL of the new key pair and its certificate (must be unused) */
    const char *ca_label; /* the issuing CA key; its certificate must be in the token */
    const char *what;     /* the key in messages: "TLS key", "bundle signing key" */
    eg_keygen_spec key;   /* type and size; made a token object, never extractable */
    /* The certificate: profile, subject, days and SANs; the keys and issuer are filled in. */
    eg_prov_cert_spec cert;
    const char *out; /* the chain file: the certificate, then the CA's (PEM) */
} eg_prov_leaf_req;

/*
 * Opens the output file, makes the key pair in the token, issues and stores
 * its certificate, then writes the chain. When a step after the key
 * generation fails the key is destroyed again, and the file is written only
 * at the end. Says what it made; returns an exit code.
 */
int eg_prov_leaf_create(const eg_prov_leaf_req *r);

#endif
