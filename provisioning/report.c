/*
 * Error reports. The signer says what failed on the OpenSSL error stack; the exit code is derived
 * from their reasons once, here, so that every command maps a wrong PIN or a missing token the same
 * way.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

#include <openssl/err.h>

#include "errors.h"
#include "p11.h"
#include "provision.h"
#include "report.h"

static const char *prefix = "estgate-provision";

void eg_prov_report_prefix(const char *p)
{
    prefix = p;
}

static int signer_exit(int reason)
{
    switch (reason) {
    case EG_R_MODULE_LOAD:
    case EG_R_MODULE_INIT:
    case EG_R_TOKEN_NOT_FOUND:
    case EG_R_KEY_NOT_FOUND:
    case EG_R_SESSION:
    case EG_R_MECHANISM:
        return EG_EXIT_UNAVAILABLE;
    case EG_R_LOGIN:
        return EG_EXIT_NOPERM;
    case EG_R_PIN_FILE:
        return EG_EXIT_NOINPUT;
    case EG_R_BAD_URI:
    case EG_R_KEY_AMBIGUOUS:
    case EG_R_KEY_UNSUPPORTED:
        return EG_EXIT_DATAERR;
    default:
        return 0;
    }
}

static int error_exit(unsigned long e)
{
    int lib = ERR_GET_LIB(e);

    if (lib == eg_signer_errlib())
        return signer_exit(ERR_GET_REASON(e));
    return 0;
}

#define EG_MAX_ERRORS 16

struct drained {
    unsigned long e[EG_MAX_ERRORS];
    char data[EG_MAX_ERRORS][256];
    int n;
};

/* Takes the errors off the stack, oldest first (the first is where it failed). */
static void drain(struct drained *d)
{
    const char *data;
    unsigned long e;
    int flags;

    d->n = 0;
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        /*
         * SoftHSM asks OpenSSL for its rdrand engine in C_Initialize and leaves
         * the failure on our stack; estgate itself uses no engines or DSOs.
         */
        if (ERR_GET_LIB(e) == ERR_LIB_ENGINE || ERR_GET_LIB(e) == ERR_LIB_DSO)
            continue;
        if (d->n == EG_MAX_ERRORS)
            continue;
        d->e[d->n] = e;
        snprintf(d->data[d->n], sizeof(d->data[0]), "%s",
                 (flags & ERR_TXT_STRING) && data != NULL ? data : "");
        d->n++;
    }
}

static int drained_exit(const struct drained *d)
{
    int i, code;

    for (i = 0; i < d->n; i++) {
        if ((code = error_exit(d->e[i])) != 0)
            return code;
    }
    return 0;
}

static bool from_token_layer(unsigned long e)
{
    return ERR_GET_LIB(e) == eg_signer_errlib();
}

/*
 * When the signer said what failed, other libraries' errors on the
 * stack came from inside the module (SoftHSM's own OpenSSL calls on a wrong
 * PIN): noise to an operator, so only the token layer's are shown.
 */
static void print_drained(const struct drained *d)
{
    bool token_layer = false;
    char buf[256];
    int i;

    for (i = 0; i < d->n; i++)
        token_layer = token_layer || from_token_layer(d->e[i]);
    for (i = 0; i < d->n; i++) {
        unsigned long e = d->e[i];
        const char *reason = ERR_reason_error_string(e), *detail = d->data[i];

        if (token_layer && !from_token_layer(e))
            continue;
        if (ERR_GET_LIB(e) == eg_signer_errlib()) {
            fprintf(stderr, "  %s: %s\n", reason ? reason : "signer error", detail);
        } else {
            ERR_error_string_n(e, buf, sizeof(buf));
            fprintf(stderr, "  %s%s%s\n", buf, *detail ? ": " : "", detail);
        }
    }
}

/* code 0: take it from the errors on the stack, else fallback. */
static int vfail(int code, int fallback, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static int vfail(int code, int fallback, const char *fmt, va_list ap)
{
    struct drained d;

    drain(&d);
    if (code == 0 && (code = drained_exit(&d)) == 0)
        code = fallback;
    fprintf(stderr, "%s: ", prefix);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    print_drained(&d);
    return code;
}

int eg_prov_fail(int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    code = vfail(code, code, fmt, ap);
    va_end(ap);
    return code;
}

int eg_prov_fail_stack(int fallback, const char *fmt, ...)
{
    va_list ap;
    int code;

    va_start(ap, fmt);
    code = vfail(0, fallback, fmt, ap);
    va_end(ap);
    return code;
}

void eg_prov_note(const char *fmt, ...)
{
    va_list ap;

    printf("%s: ", prefix);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}
