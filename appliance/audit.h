/*
 * Audit: one event per outcome, stored in the ledger and written as one
 * structured line on stderr ("estgated audit event=... key=value ...").
 */
#ifndef EG_AUDIT_H
#define EG_AUDIT_H

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
   (eg_ledger_complete_issue_audit): the log line alone, and the row, whose detail is written
   into detail[cap] (EG_AUDIT_DETAIL_MAX). */
#define EG_AUDIT_DETAIL_MAX 320
void eg_audit_log(const eg_audit_record *rec);
void eg_audit_event_fill(const eg_audit_record *rec, eg_audit_event *ev, char *detail, size_t cap);

/* Formats the log line into buf (always NUL-terminated); for tests and the emitter. */
void eg_audit_format(const eg_audit_record *rec, char *buf, size_t cap);

#endif
