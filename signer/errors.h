/* Signer errors: our own reason codes on the OpenSSL error stack. */
#ifndef EG_SIGNER_ERRORS_H
#define EG_SIGNER_ERRORS_H

#include <stdio.h>

#include <openssl/err.h>

#include "signer.h"

#define EG_SIGNER_REASONS(X)                                                                       \
    X(EG_R_MODULE_LOAD, "cannot load PKCS#11 module")                                              \
    X(EG_R_MODULE_INIT, "C_Initialize failed")                                                     \
    X(EG_R_TOKEN_NOT_FOUND, "token not found")                                                     \
    X(EG_R_PIN_FILE, "cannot read PIN file")                                                       \
    X(EG_R_LOGIN, "login failed")                                                                  \
    X(EG_R_SESSION, "cannot open session")                                                         \
    X(EG_R_BAD_URI, "malformed PKCS#11 URI")                                                       \
    X(EG_R_KEY_NOT_FOUND, "key not found")                                                         \
    X(EG_R_KEY_AMBIGUOUS, "URI matches more than one key")                                         \
    X(EG_R_KEY_REPLACED, "key replaced")                                                           \
    X(EG_R_KEY_UNSUPPORTED, "unsupported key type")                                                \
    X(EG_R_MECHANISM, "mechanism not supported by token")                                          \
    X(EG_R_TOKEN_CALL, "PKCS#11 call failed")                                                      \
    X(EG_R_BAD_PARAM, "invalid parameter")                                                         \
    X(EG_R_OPENSSL, "OpenSSL operation failed")

#define EG_REASON_ENUM(name, text) name,
enum eg_signer_reason { EG_R_NONE = 0, EG_SIGNER_REASONS(EG_REASON_ENUM) EG_R_MAX };
#undef EG_REASON_ENUM

/* The OpenSSL library code for estgate's signer, registered on first use. */
int eg_signer_errlib(void);
/* Pushes reason with a printf-style detail (the failing call, CK_RV name, object). */
void eg_signer_error(int reason, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * The detail of the first error of the last chain this thread pushed (eg_signer_error: the token
 * call and its CK_RV, under what the provider adds), "" when none: civetweb logs a
 * failed TLS handshake as OpenSSL's code alone (ERR_error_string), without the detail that names
 * the token call and its CK_RV. Reading it clears it.
 */
void eg_signer_last_detail(char *buf, size_t cap);
/* Pushes EG_R_TOKEN_CALL naming the C_* function and CK_RV. */
void eg_signer_p11_error(const char *call, CK_ULONG rv);

/* Errors taken off a thread's stack, oldest first (the first is where it failed). */
#define EG_ERR_MAX 16
typedef struct eg_err_list {
    unsigned long e[EG_ERR_MAX];
    char data[EG_ERR_MAX][256];
    int n;
} eg_err_list;

/* Empties this thread's error stack into l, leaving out the ENGINE and DSO noise modules leave. */
void eg_err_take(eg_err_list *l);
/*
 * One line per error for an operator, each after indent: the signer's as "reason: detail", other
 * libraries' as "library: reason: detail", never a source path. When the signer said what failed,
 * the other libraries' errors came from inside the module and are left out.
 */
void eg_err_list_print(const eg_err_list *l, FILE *f, const char *indent);
/* Takes and prints (indent "  "): what an operator reads under a one-line summary. */
void eg_err_print(FILE *f);
/* The oldest error (where it failed) in the same words, into buf; "" when the stack is empty. */
void eg_err_first_text(char *buf, size_t cap);

#endif
