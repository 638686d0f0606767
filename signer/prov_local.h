/* Internals shared by the estgate provider's files; not for callers outside signer/. */
#ifndef EG_PROV_LOCAL_H
#define EG_PROV_LOCAL_H

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/evp.h>

#include "signer.h"

/*
 * Property query for the software half of the work (digests, verification,
 * public keys): anything but ourselves, so a fetch never loops back here.
 */
#define EG_PROV_SOFTWARE_PROPQ "provider!=estgate"

/*
 * Import parameter that hands an opened eg_p11_key to the keymgmt: a ticket
 * from eg_prov_handoff_put(), never a pointer, so stray parameters cannot
 * make the provider dereference arbitrary memory.
 */
#define EG_PROV_PARAM_KEY_TICKET "estgate-key-ticket"

typedef struct eg_prov_ctx {
    OSSL_LIB_CTX *libctx; /* the real context, never NULL */
} eg_prov_ctx;

/* A dispatch table entry, so every table reads alike. */
#define EG_FN(id, fn)                                                                              \
    {                                                                                              \
        id, (void (*)(void))(fn)                                                                   \
    }

#define EG_PROV_KEY_MAGIC 0x45475056u

/* The keydata of estgate's keymgmt: immutable once made, shared by threads. */
typedef struct eg_prov_key {
    uint32_t magic;
    eg_key_type type;
    eg_prov_ctx *provctx;
    eg_p11_key *p11; /* NULL: a public key imported only to be compared */
    EVP_PKEY *pub;   /* software public half (default provider) */
} eg_prov_key;

extern const OSSL_DISPATCH eg_rsa_keymgmt_functions[];
extern const OSSL_DISPATCH eg_ec_keymgmt_functions[];
extern const OSSL_DISPATCH eg_ed25519_keymgmt_functions[];
extern const OSSL_DISPATCH eg_rsa_signature_functions[];
extern const OSSL_DISPATCH eg_ecdsa_signature_functions[];
extern const OSSL_DISPATCH eg_ed25519_signature_functions[];
extern const OSSL_DISPATCH eg_pkcs11_store_functions[];

/* Keymgmt name of a key type ("RSA", "EC", "ED25519"), NULL if unsupported. */
const char *eg_prov_key_type_name(eg_key_type type);
/* A token-backed key object: takes a reference on p11 and its public half. */
int eg_prov_key_from_p11(eg_prov_ctx *provctx, eg_p11_key *p11, eg_prov_key **out);
void eg_prov_key_free(eg_prov_key *key);

/* The token registered for provctx's library context labelled label (NULL: the only one). */
int eg_prov_find_token(eg_prov_ctx *provctx, const char *label, eg_token **out);
/* Parks a key reference for the keymgmt's import; returns a nonzero ticket. */
uint64_t eg_prov_handoff_put(eg_p11_key *key);
/* Takes the parked key of ticket (the caller owns the reference); NULL if none. */
eg_p11_key *eg_prov_handoff_take(uint64_t ticket);

#endif
