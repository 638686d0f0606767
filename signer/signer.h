/*
 * estgate signer: Cryptoki wrapper and OpenSSL 3 provider.
 * Umbrella header: opaque handles only. Module headers hold the prototypes.
 */
#ifndef EG_SIGNER_H
#define EG_SIGNER_H

#include <stddef.h>
#include <stdint.h>

#include <p11-kit/pkcs11.h>

/* One token (a slot found by its label) with its module, login and session pool. */
typedef struct eg_token eg_token;
/* A key in a token, named by a PKCS#11 URI; handles re-resolve after recovery. */
typedef struct eg_p11_key eg_p11_key;
/* A parsed RFC 7512 PKCS#11 URI. */
typedef struct eg_p11_uri eg_p11_uri;
/* A borrowed session, valid only inside an eg_token_run() callback. */
typedef struct eg_p11_call eg_p11_call;

/*
 * Whether the module may take two calls at once. AUTO: one at a time for
 * p11-kit's RPC client (p11-kit-client.so, see p11_token.c), concurrent for
 * any other module. A module keeps the mode it was first loaded with.
 */
typedef enum eg_calls {
    EG_CALLS_AUTO = 0,
    EG_CALLS_CONCURRENT,
    EG_CALLS_SERIAL,
} eg_calls;

/*
 * Connections: how many instances of the module to use, each its own
 * application to the token. Only a module whose every C_GetFunctionList()
 * makes a new instance can have more than one: p11-kit's RPC client, where
 * each instance is a connection of its own to the server (and a server
 * process of its own), so one call at a time per connection still lets
 * several run at once. 0 (auto): EG_CONNECTIONS_P11KIT for p11-kit-client.so,
 * 1 for any other module. A module keeps the number it was first loaded with.
 */
#define EG_CONNECTIONS_MAX    8
#define EG_CONNECTIONS_P11KIT 4

/* How to reach a token. The module and its init string are configuration. */
typedef struct eg_token_config {
    const char *module_path; /* the PKCS#11 module (.so) */
    const char *init_args;   /* C_Initialize pReserved string (NSS), or NULL */
    const char *token_label; /* CKA_LABEL of the token in its slot */
    const char *pin_file;    /* user PIN, first line of this file; NULL: no login */
    unsigned pool_size;      /* most sessions open at once; 0: default (16) */
    unsigned recover_ms;     /* how long to keep trying to reach a lost token; 0: 10000 */
    eg_calls calls;          /* concurrent or one call at a time into the module */
    unsigned connections;    /* module instances, 1..EG_CONNECTIONS_MAX; 0: auto */
} eg_token_config;

typedef enum eg_key_type {
    EG_KEY_NONE = 0,
    EG_KEY_RSA,
    EG_KEY_EC,
    EG_KEY_ED25519,
} eg_key_type;

#endif
