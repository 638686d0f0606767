/* Internals shared by the wrapper's files; not for callers outside signer/. */
#ifndef EG_P11_LOCAL_H
#define EG_P11_LOCAL_H

#include <stdbool.h>
#include <stdatomic.h>

#include "p11.h"

struct eg_p11_call {
    eg_token *tok;
    CK_FUNCTION_LIST *fl;
    CK_SESSION_HANDLE h;
    unsigned lane; /* the module instance (connection) the session is on */
    unsigned gen;  /* the token's generation on that instance */
    bool discard;  /* close the session when the job returns, not back to the pool */
};

/*
 * Modules, shared by every token and the slot administration of p11_admin.c:
 * loaded and initialised once per process, finalised with the last reference.
 */
typedef struct eg_module eg_module;
int eg_module_get(const char *path, const char *init_args, eg_calls calls, unsigned connections,
                  eg_module **out);
void eg_module_put(eg_module *m);
/*
 * Around every use of m's first instance's functions (the only one outside
 * eg_token_run): shared against re-initialisation, and one at a time when the
 * module is called serially (eg_calls).
 */
void eg_module_enter(eg_module *m);
void eg_module_leave(eg_module *m);
CK_FUNCTION_LIST *eg_module_functions(const eg_module *m);

/*
 * Token generation on the call's module instance: object handles cached by
 * keys are valid for one instance and one generation of it.
 */
unsigned eg_p11_call_gen(const eg_p11_call *call);
unsigned eg_p11_call_lane(const eg_p11_call *call);
/*
 * eg_token_run() on one module instance: for session objects, which only the
 * instance that made them can see. lane < 0: any instance, as eg_token_run().
 */
CK_RV eg_token_run_lane(eg_token *tok, int lane, eg_p11_fn *fn, void *arg);
void eg_token_count_sign(eg_token *tok);

/*
 * A private key that cannot be found or used may only be hidden: someone logged the
 * token out under us. Returns CKR_USER_NOT_LOGGED_IN (recovered by logging in
 * again) when the session has lost its login, else rv.
 */
CK_RV eg_p11_call_not_found(eg_p11_call *call, CK_RV rv);

/*
 * Software public keys (default provider) from token attributes, for keys
 * opened by URI (p11_key.c) and for objects made in a callback (p11_wrap.c).
 * NULL when the values do not make a key.
 */
EVP_PKEY *eg_p11_public_rsa(const uint8_t *n, size_t nlen, const uint8_t *e, size_t elen);
/* params: CKA_EC_PARAMS (a curve OID); point: CKA_EC_POINT, wrapped or raw. */
EVP_PKEY *eg_p11_public_ec(eg_key_type type, const uint8_t *params, size_t plen,
                           const uint8_t *point, size_t ptlen);
/* The point inside a CKA_EC_POINT OCTET STRING (or the value itself when it is raw). */
const uint8_t *eg_p11_unwrap_point(const uint8_t *p, size_t len, size_t *outlen);

#endif
