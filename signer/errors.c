/* Signer error codes on the OpenSSL error stack. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

#include "signer.h"
#include "errors.h"
#include "p11.h"

#define EG_REASON_STRING(name, text) {ERR_PACK(0, 0, name), text},
static ERR_STRING_DATA eg_reason_strings[] = {EG_SIGNER_REASONS(EG_REASON_STRING){0, NULL}};
#undef EG_REASON_STRING

static int eg_lib;
static pthread_once_t eg_lib_once = PTHREAD_ONCE_INIT;

static void eg_errlib_init(void)
{
    static ERR_STRING_DATA lib_name[2];

    eg_lib = ERR_get_next_error_library();
    lib_name[0].error = ERR_PACK(eg_lib, 0, 0);
    lib_name[0].string = "estgate signer";
    ERR_load_strings(eg_lib, lib_name);
    ERR_load_strings(eg_lib, eg_reason_strings);
}

int eg_signer_errlib(void)
{
    pthread_once(&eg_lib_once, eg_errlib_init);
    return eg_lib;
}

static _Thread_local char last_detail[256];

void eg_signer_last_detail(char *buf, size_t cap)
{
    snprintf(buf, cap, "%s", last_detail);
    last_detail[0] = '\0';
}

void eg_signer_error(int reason, const char *fmt, ...)
{
    char detail[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    /* The first of a chain names the token call; the layers above it add their own words. */
    if (ERR_peek_error() == 0 || last_detail[0] == '\0')
        snprintf(last_detail, sizeof(last_detail), "%s", detail);
    ERR_new();
    ERR_set_debug(OPENSSL_FILE, OPENSSL_LINE, OPENSSL_FUNC);
    ERR_set_error(eg_signer_errlib(), reason, "%s", detail);
}

void eg_signer_p11_error(const char *call, CK_ULONG rv)
{
    eg_signer_error(EG_R_TOKEN_CALL, "%s: %s (0x%lx)", call, eg_p11_rv_name(rv), rv);
}

void eg_err_take(eg_err_list *l)
{
    const char *data;
    unsigned long e;
    int flags;

    l->n = 0;
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        /*
         * SoftHSM asks OpenSSL for its rdrand engine in C_Initialize and leaves
         * the failure on our stack; estgate itself uses no engines or DSOs.
         */
        if (ERR_GET_LIB(e) == ERR_LIB_ENGINE || ERR_GET_LIB(e) == ERR_LIB_DSO)
            continue;
        if (l->n == EG_ERR_MAX)
            continue;
        l->e[l->n] = e;
        snprintf(l->data[l->n], sizeof(l->data[0]), "%s",
                 (flags & ERR_TXT_STRING) && data != NULL ? data : "");
        l->n++;
    }
}

/* One error in an operator's words: "reason: detail", or "library: reason: detail". */
static void err_text(unsigned long e, const char *detail, char *buf, size_t cap)
{
    const char *reason = ERR_reason_error_string(e), *lname = NULL;
    const char *sep = *detail ? ": " : "";
    char code[64];

    if (ERR_GET_LIB(e) == eg_signer_errlib()) {
        if (reason == NULL)
            reason = "signer error";
    } else {
        lname = ERR_lib_error_string(e);
        if (reason == NULL) {
            ERR_error_string_n(e, code, sizeof(code));
            reason = code;
        }
    }
    snprintf(buf, cap, "%s%s%s%s%s", lname ? lname : "", lname ? ": " : "", reason, sep, detail);
}

void eg_err_list_print(const eg_err_list *l, FILE *f, const char *indent)
{
    int lib = eg_signer_errlib(), i;
    int signer_said = 0;
    char line[512];

    for (i = 0; i < l->n; i++)
        signer_said |= ERR_GET_LIB(l->e[i]) == lib;
    for (i = 0; i < l->n; i++) {
        if (signer_said && ERR_GET_LIB(l->e[i]) != lib)
            continue;
        err_text(l->e[i], l->data[i], line, sizeof(line));
        fprintf(f, "%s%s\n", indent, line);
    }
}

void eg_err_first_text(char *buf, size_t cap)
{
    const char *data = NULL;
    int flags = 0;
    unsigned long e = ERR_peek_error_all(NULL, NULL, NULL, &data, &flags);

    if (cap == 0)
        return;
    *buf = '\0';
    if (e != 0)
        err_text(e, (flags & ERR_TXT_STRING) && data != NULL ? data : "", buf, cap);
}

void eg_err_print(FILE *f)
{
    eg_err_list l;

    eg_err_take(&l);
    eg_err_list_print(&l, f, "  ");
}
