/* The token through the signer's wrapper and provider: keys, their certificates, labels. */
#ifndef EG_PROV_TOKEN_H
#define EG_PROV_TOKEN_H

#include <stdbool.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "p11.h"
#include "provision.h"

/*
 * Opens the token (logging in with the PIN file) and makes its keys reachable
 * through the provider in the default library context. Returns an exit code.
 */
int eg_prov_token_open(const eg_prov_token_opts *o, eg_token **out);
/* Forgets the token in the provider and closes it; every key and EVP_PKEY must be freed first. */
void eg_prov_token_close(eg_token *tok);
/* EG_EXIT_CANTCREAT, with a message, when some object in the token already has this label. */
int eg_prov_label_unused(eg_token *tok, const char *label);
/* Opens the private key labelled label; EG_EXIT_UNAVAILABLE when there is none. */
int eg_prov_key_by_label(eg_token *tok, const char *label, eg_p11_key **out);
/*
 * The certificate stored under the key's CKA_ID; *out is NULL when there is
 * none. When an interrupted renewal left more than one, the one that ends last.
 */
int eg_prov_key_cert(eg_p11_key *key, X509 **out);
/*
 * The CA key's certificate, which must be there (EG_EXIT_UNAVAILABLE, the
 * message ending with hint) and be for that key (EG_EXIT_DATAERR).
 */
int eg_prov_ca_cert(eg_p11_key *key, const char *hint, X509 **out);
/* The key as an EVP_PKEY whose signatures are made in the token by the provider. */
int eg_prov_key_pkey(eg_p11_key *key, EVP_PKEY **out);

/* Whether the token already holds this exact certificate (same DER). */
int eg_prov_cert_present(eg_token *tok, X509 *cert, bool *present);
/*
 * Stores cert as a token object with CKA_LABEL label and CKA_ID id (none when
 * idlen is 0), with CKA_SUBJECT, CKA_ISSUER and CKA_SERIAL_NUMBER filled in.
 * A certificate already there (same DER) is left as it is.
 */
int eg_prov_store_cert(eg_token *tok, X509 *cert, const char *label, const uint8_t *id,
                       size_t idlen);
/* Destroys the certificate object holding exactly cert (same DER); none there is no error. */
int eg_prov_destroy_cert(eg_token *tok, X509 *cert);
/*
 * Replaces the certificate old with cert under label and id: cert is stored
 * first and old destroyed after, so the key is never left without one; when
 * old cannot be destroyed, cert is destroyed again and old stays. Any other
 * certificate under id (left by an interrupted replacement) is destroyed too.
 */
int eg_prov_replace_cert(eg_token *tok, X509 *old, X509 *cert, const char *label, const uint8_t *id,
                         size_t idlen);

#endif
