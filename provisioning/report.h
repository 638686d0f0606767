/* Error reports: one message naming what failed, and the exit code it maps to. */
#ifndef EG_PROV_REPORT_H
#define EG_PROV_REPORT_H

/* Sets the prefix of messages, e.g. "estgate-provision ca create". */
void eg_prov_report_prefix(const char *prefix);
/*
 * Prints "prefix: message", then the details on the OpenSSL error stack (which
 * it clears), and returns code.
 */
int eg_prov_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * As eg_prov_fail, but the code comes from the errors on the stack (a signer
 * "login failed" is 77, "token not found" 69, ...); fallback when none says.
 */
int eg_prov_fail_stack(int fallback, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "prefix: message" to stdout (progress for the operator). */
void eg_prov_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "prefix: warning: message" to stderr: the command goes on. */
void eg_prov_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
