/* Internals shared by the wrapper's files; not for callers outside signer/. */
#ifndef EG_P11_LOCAL_H
#define EG_P11_LOCAL_H

#include <stdatomic.h>

#include "p11.h"

struct eg_p11_call {
    eg_token *tok;
    CK_FUNCTION_LIST *fl;
    CK_SESSION_HANDLE h;
    unsigned gen; /* token generation the session belongs to */
};

/*
 * Modules, shared by every token and the slot administration of p11_admin.c:
 * loaded and initialised once per process, finalised with the last reference.
 */
typedef struct eg_module eg_module;
int eg_module_get(const char *path, const char *init_args, eg_module **out);
void eg_module_put(eg_module *m);
CK_FUNCTION_LIST *eg_module_functions(const eg_module *m);

/* Token generation: object handles cached by keys are valid for one generation. */
unsigned eg_p11_call_gen(const eg_p11_call *call);
void eg_token_count_sign(eg_token *tok);

/*
 * A private key that cannot be found or used may only be hidden: someone logged the
 * token out under us. Returns CKR_USER_NOT_LOGGED_IN (recovered by logging in
 * again) when the session has lost its login, else rv.
 */
CK_RV eg_p11_call_not_found(eg_p11_call *call, CK_RV rv);

#endif
