/*
 * Error reports. The signer says what failed on the OpenSSL error stack; the exit code is derived
 * from their reasons once, here, so that every command maps a wrong PIN or a missing token the same
 * way.
 */
#include <stdarg.h>
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
    case EG_R_KEY_REPLACED:
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

static int list_exit(const eg_err_list *d)
{
    int i, code;

    for (i = 0; i < d->n; i++) {
        if ((code = error_exit(d->e[i])) != 0)
            return code;
    }
    return 0;
}

/* code 0: take it from the errors on the stack, else fallback. */
static int vfail(int code, int fallback, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static int vfail(int code, int fallback, const char *fmt, va_list ap)
{
    eg_err_list d;

    eg_err_take(&d);
    if (code == 0 && (code = list_exit(&d)) == 0)
        code = fallback;
    fprintf(stderr, "%s: ", prefix);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    eg_err_list_print(&d, stderr, "  ");
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

void eg_prov_warn(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: warning: ", prefix);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}
