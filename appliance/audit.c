/*
 * Audit events: stable dotted names, one structured log line per event, and
 * the ledger row. Values are quoted and escaped so that a hostile principal or
 * SAN in a reason cannot forge a field or a second line.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "audit.h"
#include "clock.h"

static const char *const kind_names[] = {
    [EG_AUDIT_ISSUED] = "issued",
    [EG_AUDIT_REISSUED] = "reissued",
    [EG_AUDIT_SERVERKEYGEN] = "serverkeygen",
    [EG_AUDIT_CACERTS] = "cacerts",
    [EG_AUDIT_AUTH_MISSING] = "auth.missing",
    [EG_AUDIT_AUTH_BAD_PASSWORD] = "auth.bad_password",
    [EG_AUDIT_AUTH_UNKNOWN_USER] = "auth.unknown_user",
    [EG_AUDIT_AUTH_CERT_UNTRUSTED] = "auth.cert_untrusted",
    [EG_AUDIT_AUTH_CERT_MISMATCH] = "auth.cert_mismatch",
    [EG_AUDIT_AUTH_CERT_BLOCKED] = "auth.cert_blocked",
    [EG_AUDIT_AUTH_THROTTLED] = "auth.throttled",
    [EG_AUDIT_POLICY] = "policy",
    [EG_AUDIT_MALFORMED] = "malformed",
    [EG_AUDIT_CSR_SIGNATURE] = "csr.signature",
    [EG_AUDIT_LIMIT] = "limit",
    [EG_AUDIT_ISSUE_LIMIT] = "issue_limit",
    [EG_AUDIT_UNAVAILABLE] = "unavailable",
    [EG_AUDIT_INTERNAL] = "internal",
};

static const char *const dim_names[] = {
    [EG_DIM_NONE] = "none",       [EG_DIM_KEY] = "key",
    [EG_DIM_EKU] = "eku",         [EG_DIM_SAN] = "san",
    [EG_DIM_SUBJECT] = "subject", [EG_DIM_VALIDITY] = "validity",
    [EG_DIM_ATTRS] = "attrs",     [EG_DIM_REKEY] = "rekey",
    [EG_DIM_BINDING] = "binding", [EG_DIM_SIGNATURE] = "signature",
};

const char *eg_audit_kind_name(eg_audit_kind k)
{
    if ((unsigned)k >= sizeof(kind_names) / sizeof(kind_names[0]) || kind_names[k] == NULL)
        return "unknown";
    return kind_names[k];
}

const char *eg_policy_dim_name(eg_policy_dim d)
{
    if ((unsigned)d >= sizeof(dim_names) / sizeof(dim_names[0]) || dim_names[d] == NULL)
        return "unknown";
    return dim_names[d];
}

struct line {
    char *p;
    size_t cap, len;
};

static void put_char(struct line *l, char c)
{
    if (l->len + 1 < l->cap)
        l->p[l->len++] = c;
    l->p[l->len < l->cap ? l->len : l->cap - 1] = '\0';
}

static void put_str(struct line *l, const char *s)
{
    while (*s != '\0')
        put_char(l, *s++);
}

/* One byte of a value as the log line and the audit row write it, into out[5]: a byte that is
   not printable ASCII as \xNN, a backslash (and, in quotes, a '"') after a backslash. */
static const char *escaped(unsigned char c, bool quoted, char out[5])
{
    if (c < ' ' || c >= 0x7f)
        snprintf(out, 5, "\\x%02x", c);
    else if (c == '\\' || (quoted && c == '"'))
        snprintf(out, 5, "\\%c", c);
    else
        snprintf(out, 5, "%c", c);
    return out;
}

/* key=value, quoted when the value holds anything but a plain token; bytes that
   are not printable ASCII are written as \xNN so the line stays one line. */
static void put_field(struct line *l, const char *key, const char *value)
{
    const unsigned char *v = (const unsigned char *)value;
    bool plain = *v != '\0';
    char esc[5];

    for (; *v != '\0'; v++) {
        if (*v <= ' ' || *v >= 0x7f || *v == '"' || *v == '\\' || *v == '=')
            plain = false;
    }
    put_char(l, ' ');
    put_str(l, key);
    put_char(l, '=');
    if (plain) {
        put_str(l, value);
        return;
    }
    put_char(l, '"');
    for (v = (const unsigned char *)value; *v != '\0'; v++)
        put_str(l, escaped(*v, true, esc));
    put_char(l, '"');
}

void eg_audit_format(const eg_audit_record *rec, char *buf, size_t cap)
{
    struct line l = {buf, cap, 0};

    if (cap == 0)
        return;
    buf[0] = '\0';
    put_str(&l, "estgated audit");
    put_field(&l, "event", eg_audit_kind_name(rec->kind));
    if (rec->profile != NULL)
        put_field(&l, "profile", rec->profile[0] != '\0' ? rec->profile : "default");
    if (rec->principal != NULL)
        put_field(&l, "principal", rec->principal);
    if (rec->peer != NULL)
        put_field(&l, "peer", rec->peer);
    if (rec->dim != EG_DIM_NONE)
        put_field(&l, "dim", eg_policy_dim_name(rec->dim));
    if (rec->reason != NULL && rec->reason[0] != '\0')
        put_field(&l, "reason", rec->reason);
}

static _Atomic eg_log_level log_level = EG_LOG_INFO;

eg_log_level eg_log_level_parse(const char *name)
{
    if (name != NULL && strcmp(name, "warning") == 0)
        return EG_LOG_WARNING;
    if (name != NULL && strcmp(name, "debug") == 0)
        return EG_LOG_DEBUG;
    return EG_LOG_INFO;
}

void eg_log_set_level(eg_log_level level)
{
    log_level = level;
}

eg_log_level eg_log_get_level(void)
{
    return log_level;
}

static bool success(eg_audit_kind kind)
{
    return kind == EG_AUDIT_ISSUED || kind == EG_AUDIT_REISSUED || kind == EG_AUDIT_SERVERKEYGEN ||
           kind == EG_AUDIT_CACERTS;
}

bool eg_audit_logged(eg_audit_kind kind)
{
    return !success(kind) || log_level != EG_LOG_WARNING;
}

/*
 * The budget of refusal lines (eg_log_set_refusal_limit): per second of the monotonic clock; what
 * goes over it is counted, and said once a line is next written in a later second.
 */
static pthread_mutex_t budget_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned budget_limit = 100;
static time_t budget_second;
static unsigned budget_used;
static uint64_t left_out;
static time_t left_out_since; /* wall clock, for the note */

void eg_log_set_refusal_limit(unsigned per_second)
{
    pthread_mutex_lock(&budget_lock);
    budget_limit = per_second;
    pthread_mutex_unlock(&budget_lock);
}

/* Under budget_lock: once a new second has begun (or at the end, whatever the second), its
   budget, and in note the count of lines left out before ("" when none). */
static void budget_turn(time_t second, bool end, char *note, size_t cap)
{
    note[0] = '\0';
    if (second == budget_second && !end)
        return;
    budget_second = second;
    budget_used = 0;
    if (left_out > 0) {
        char since[32];

        eg_utc_text(left_out_since, since, sizeof(since));
        snprintf(note, cap,
                 "estgated audit: %llu line%s of refusals and failures left out since %s "
                 "(over log_refusals_per_second = %u); their ledger rows are kept\n",
                 (unsigned long long)left_out, left_out == 1 ? "" : "s", since, budget_limit);
        left_out = 0;
    }
}

static void flush(bool end)
{
    char note[256];

    pthread_mutex_lock(&budget_lock);
    budget_turn(eg_mono_s(), end, note, sizeof(note));
    pthread_mutex_unlock(&budget_lock);
    if (note[0] != '\0')
        fputs(note, stderr);
}

void eg_audit_flush(void)
{
    flush(false);
}

void eg_audit_flush_end(void)
{
    flush(true);
}

/* Whether a line of kind may be written now; note as budget_turn gives it. */
static bool budget_take(eg_audit_kind kind, char *note, size_t cap)
{
    bool ok = true;

    pthread_mutex_lock(&budget_lock);
    budget_turn(eg_mono_s(), false, note, cap);
    if (!success(kind) && budget_limit > 0 && budget_used++ >= budget_limit) {
        if (left_out++ == 0)
            left_out_since = time(NULL);
        ok = false;
    }
    pthread_mutex_unlock(&budget_lock);
    return ok;
}

void eg_audit_log(const eg_audit_record *rec)
{
    char line[1024], note[256];
    bool write;

    if (!eg_audit_logged(rec->kind))
        return;
    write = budget_take(rec->kind, note, sizeof(note));
    if (note[0] != '\0')
        fputs(note, stderr);
    if (!write)
        return;
    eg_audit_format(rec, line, sizeof(line) - 1);
    /* One write per line, so concurrent events do not interleave. */
    strcat(line, "\n");
    fputs(line, stderr);
}

/* in into out[cap] as the log line writes a value, without the quotes: a byte that is not
   printable ASCII as \xNN, a backslash doubled; an escape is never cut in two. So that every text
   column of the ledger's audit table is one printable line, whatever a device sent. */
static const char *row_text(const char *in, char *out, size_t cap)
{
    size_t n = 0;

    if (in == NULL)
        return NULL;
    for (const unsigned char *v = (const unsigned char *)in; *v != '\0'; v++) {
        char esc[5];
        size_t k = strlen(escaped(*v, false, esc));

        if (n + k >= cap)
            break;
        memcpy(out + n, esc, k);
        n += k;
    }
    out[n] = '\0';
    return out;
}

void eg_audit_event_fill(const eg_audit_record *rec, eg_audit_event *ev, eg_audit_row *row)
{
    char raw[EG_AUDIT_DETAIL_MAX];

    if (rec->dim != EG_DIM_NONE)
        snprintf(raw, sizeof(raw), "dim=%s %s", eg_policy_dim_name(rec->dim),
                 rec->reason ? rec->reason : "");
    else
        snprintf(raw, sizeof(raw), "%s", rec->reason ? rec->reason : "");
    *ev = (eg_audit_event){
        .type = eg_audit_kind_name(rec->kind),
        .profile = row_text(rec->profile, row->profile, sizeof(row->profile)),
        .principal = row_text(rec->principal, row->principal, sizeof(row->principal)),
        .peer = row_text(rec->peer, row->peer, sizeof(row->peer)),
        .detail = row_text(raw, row->detail, sizeof(row->detail)),
        .intent_id = rec->intent_id,
    };
}

int eg_audit_emit(eg_ledger *lg, const eg_audit_record *rec)
{
    eg_audit_row row;
    eg_audit_event ev;

    eg_audit_log(rec);
    if (lg == NULL || rec->kind == EG_AUDIT_CACERTS)
        return 0;
    eg_audit_event_fill(rec, &ev, &row);
    return eg_ledger_audit(lg, &ev) == 0 ? 0 : -1;
}
