/*
 * Token administration through libp11: token and PIN set-up, enumerating
 * objects. Certificates are stored through the signer instead: libp11 0.4.12
 * leaves CKA_SERIAL_NUMBER out of the template, and NSS's softoken refuses
 * such a certificate (CKR_TEMPLATE_INCOMPLETE).
 *
 * libp11 initialises the module itself and finalises it on unload, and it
 * closes all sessions of a slot when it lets go of it; either would pull the
 * sessions from under the signer's wrapper in the same process. So a command
 * uses libp11 and the wrapper one after the other, never both at once: free
 * one before opening the other.
 */
#ifndef EG_PROV_P11LIB_H
#define EG_PROV_P11LIB_H

#include <stdbool.h>

/*
 * libp11 0.4.12's header declares legacy RSA_METHOD/EC_KEY_METHOD getters that
 * estgate never calls; OPENSSL_NO_DEPRECATED hides those types, so they are
 * named opaquely here for the header to compile.
 */
typedef struct rsa_meth_st RSA_METHOD;
typedef struct ec_key_method_st EC_KEY_METHOD;
#include <libp11.h>

#include "provision.h"

typedef struct eg_prov_p11lib {
    PKCS11_CTX *ctx;
    PKCS11_SLOT *slots;
    unsigned nslots;
    PKCS11_SLOT *slot; /* the token's slot, once found */
    bool loaded;
} eg_prov_p11lib;

/* Loads the module (with its init string) and lists its slots. Returns an exit code. */
int eg_prov_p11lib_load(const char *module, const char *init_args, eg_prov_p11lib **out);
/* Lists the slots again (a token initialised in a free slot may move to another). */
int eg_prov_p11lib_refresh(eg_prov_p11lib *l);
/* The slot holding the token labelled label, or NULL. */
PKCS11_SLOT *eg_prov_p11lib_find(eg_prov_p11lib *l, const char *label);
/* Logs in to slot as the user (so false) or security officer, PIN from a file. */
int eg_prov_p11lib_login(PKCS11_SLOT *slot, bool so, const char *pin_file);
/* Load, find the token by label and log in as the user: the usual start. */
int eg_prov_p11lib_open(const eg_prov_token_opts *o, eg_prov_p11lib **out);
/* Releases the slots and unloads the module (C_Finalize). */
void eg_prov_p11lib_free(eg_prov_p11lib *l);

#endif
