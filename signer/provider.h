/*
 * The estgate OpenSSL 3 provider: token keys as ordinary EVP_PKEYs.
 * Keymgmt, signature (RSA PKCS#1 v1.5 and PSS, ECDSA, Ed25519) and a store
 * loader for "pkcs11:" URIs. Private keys never leave the token.
 */
#ifndef EG_PROVIDER_H
#define EG_PROVIDER_H

#include <openssl/evp.h>
#include <openssl/provider.h>

#include "signer.h"

/* Property string that selects the estgate provider's implementations. */
#define EG_PROVIDER_NAME  "estgate"
#define EG_PROVIDER_PROPQ "provider=estgate"

/*
 * Loads the built-in estgate provider (and the default provider, for digests
 * and verification) into libctx (NULL: the default library context). Safe to
 * call more than once.
 */
int eg_provider_init(OSSL_LIB_CTX *libctx);
/* Makes tok's keys reachable through "pkcs11:token=<label>;..." URIs in libctx. */
int eg_provider_add_token(OSSL_LIB_CTX *libctx, eg_token *tok);
/* Forgets tok in libctx (before eg_token_free). */
void eg_provider_remove_token(OSSL_LIB_CTX *libctx, eg_token *tok);
/* Loads the private key that uri names, as an EVP_PKEY backed by the token. */
int eg_provider_load_key(OSSL_LIB_CTX *libctx, const char *uri, EVP_PKEY **out);
/* Wraps an opened key as an EVP_PKEY in libctx (takes a reference on key). */
int eg_provider_key_pkey(OSSL_LIB_CTX *libctx, eg_p11_key *key, EVP_PKEY **out);

#endif
