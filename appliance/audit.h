/*
 * Audit: one event per outcome, stored in the ledger and written as one
 * structured line on stderr ("estgated audit event=... key=value ...").
 */
#ifndef EG_AUDIT_H
#define EG_AUDIT_H

#include <stdbool.h>
#include <stdint.h>

#include "core.h"
#include "ledger.h"

typedef struct eg_audit_record {
    eg_audit_kind kind;
    eg_policy_dim dim;
    const char *profile;   /* NULL when not known */
    const char *principal; /* NULL when not known */
    const char *peer;      /* NULL when not known */
    const char *reason;    /* never a secret, never a whole CSR */
    int64_t intent_id;     /* 0 when none */
} eg_audit_record;

/* Writes the log line and, unless lg is NULL or the kind is not stored, the ledger row.
   0 when stored (or not meant to be), -1 when the ledger refused it. */
int eg_audit_emit(eg_ledger *lg, const eg_audit_record *rec);

/* The two halves of eg_audit_emit, for a caller that stores the row with other ledger work
   (eg_ledger_complete_issue_audit): the log line alone, and the row, whose text columns are
   written into row (ev points into it) escaped as the log line escapes a value, so that each is
   printable ASCII however hostile the principal, peer or reason. */
#define EG_AUDIT_DETAIL_MAX 320
typedef struct eg_audit_row {
    char detail[EG_AUDIT_DETAIL_MAX];
    char profile[128], principal[320], peer[128];
} eg_audit_row;
void eg_audit_log(const eg_audit_record *rec);
void eg_audit_event_fill(const eg_audit_record *rec, eg_audit_event *ev, eg_audit_row *row);

/* Formats the log line into buf (always NUL-terminated); for tests and the emitter. */
void eg_audit_format(const eg_audit_record *rec, char *buf, size_t cap);

/*
 * [server] log_level. warning: no line for an answer that succeeded (issued, reissued,
 * serverkeygen; their ledger rows are kept all the same); info (the default): a line for every
 * event; debug: also civetweb's line for each connection closed before its TLS handshake (a load
 * balancer's TCP check, a port scan), which the other levels leave out.
 */
typedef enum eg_log_level { EG_LOG_WARNING, EG_LOG_INFO, EG_LOG_DEBUG } eg_log_level;

/* "warning", "info" or "debug" (NULL: info); anything else is info. */
eg_log_level eg_log_level_parse(const char *name);
/* Process-wide; set at start and at each reload, read by every request thread. */
void eg_log_set_level(eg_log_level level);
eg_log_level eg_log_get_level(void);
/* Whether the line of an event of kind is written at the current level. */
bool eg_audit_logged(eg_audit_kind kind);

/*
 * [server] log_refusals_per_second (default 100, 0: no limit): at most this many lines of
 * refusals and failures a second on stderr, so that a flood of garbage cannot drown the journal
 * (whose own rate limit would then drop every line, issued ones and token failures included).
 * The rest are counted, and one line says how many once a line is next written in a later
 * second. Lines of successes are never left out; every event's ledger row is kept.
 */
void eg_log_set_refusal_limit(unsigned per_second);
/* Says how many lines were left out, if any, once their second is over: estgated calls it every
   second, so the count of a flood that has stopped is not left waiting for the next line. */
void eg_audit_flush(void);
/* The same at the end, in the second that is not over yet: once no request can write a line, so
   that the count of a flood met while stopping is not lost with the process. */
void eg_audit_flush_end(void);

#endif
