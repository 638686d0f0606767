/*
 * The ledger: every certificate estgated issues and every audit event, in
 * SQLite (WAL, synchronous=FULL). An issuance is recorded as an intent before
 * the token signs and completed with the certificate before the response
 * leaves, so nothing a client received is ever missing after a crash.
 * Commits from concurrent callers are grouped: one writer thread commits a
 * batch in one transaction (one fsync) and wakes every caller in it.
 */
#ifndef EG_LEDGER_H
#define EG_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct eg_ledger eg_ledger;

typedef struct eg_ledger_options {
    unsigned max_batch;      /* most operations per commit; 0: 256 */
    unsigned max_wait_us;    /* how long a batch may wait to fill; 0: commit at once */
    unsigned prune_every_ms; /* the keeper's age-based pass at least this often; 0: hourly */
} eg_ledger_options;

/* Opens (creating and migrating as needed) the ledger at path. One process at a time: open
 * holds a lock on "<path>.lock" and on the database file, because a pending intent that no open
 * ledger has in flight is taken to be left by a crashed process and is offered for retry; a pending
 * serverkeygen intent is marked failed instead, since its key died with that process (the same
 * request then begins anew). */
int eg_ledger_open(const char *path, const eg_ledger_options *opt, eg_ledger **out);
void eg_ledger_close(eg_ledger *lg);
/*
 * For a process about to exit while some of its threads are stuck (in a token call that does
 * not return): the operations queued are committed, then the writer and the keeper stop and
 * the writer's connection closes. lg stays valid, so that a stuck thread that comes back gets
 * -1 from any write instead of touching freed memory; eg_ledger_close still frees it. Intents
 * left pending are taken up at the next open, as after a crash.
 */
void eg_ledger_stop(eg_ledger *lg);

/* What a caller is about to issue. The idempotency key is (profile, principal, request_hash). */
typedef struct eg_issue_intent {
    const char *profile;      /* profile label */
    const char *principal;    /* who asked: Basic user or client certificate fingerprint */
    uint8_t request_hash[32]; /* SHA-256 of the request (the CSR's DER; serverkeygen's apart) */
    const uint8_t *serial;    /* the certificate's serial: DER INTEGER content, 1-20 octets */
    size_t serial_len;
    const char *subject; /* RFC 2253 subject, for operators */
    int64_t not_after;   /* Unix time */
    /* Not 0: the id of an issuance of this key that begin_issue answered EG_INTENT_ISSUED and
       the caller will not send again (too old); it leaves the key, certificate kept, before
       the intent is looked up, so the same request begins anew. */
    int64_t supersede_id;
    /* The key is one serverkeygen made in the token: an intent of it that a crash leaves
       pending is failed at the next open, not offered for retry (its key died with it). */
    bool serverkeygen;
} eg_issue_intent;

typedef enum eg_intent_state {
    EG_INTENT_NEW = 0, /* recorded durably; sign and complete it */
    EG_INTENT_ISSUED,  /* the same request was issued before: *cert holds that certificate */
    EG_INTENT_RETRY,   /* an earlier attempt stopped before completing: sign again with
                          the serial returned in *serial (the recorded one) */
    EG_INTENT_BUSY,    /* the same request is being issued right now by another caller
                          in this process: answer "try again later" */
} eg_intent_state;

typedef struct eg_intent_result {
    eg_intent_state state;
    int64_t id;    /* the intent's row id */
    uint8_t *cert; /* EG_INTENT_ISSUED: DER certificate; free with free() */
    size_t cert_len;
    /* EG_INTENT_ISSUED: the serverkeygen key part stored with it (eg_ledger_complete_issue_key),
       NULL when there was none or it has been dropped; free with free() */
    uint8_t *key_part;
    size_t key_part_len;
    uint8_t serial[20]; /* EG_INTENT_RETRY/ISSUED: the recorded serial */
    size_t serial_len;
} eg_intent_result;

/* Records an intent durably, or finds the earlier one for the same key. 0: *out is filled (id
 * and serial in every state); -2: the serial is already recorded for another intent, so draw a
 * new one and call again; -1: error. */
int eg_ledger_begin_issue(eg_ledger *lg, const eg_issue_intent *in, eg_intent_result *out);
/* Completes an intent with its certificate, durably, before the response leaves. id must be
 * in flight: returned by begin_issue as NEW or RETRY, and neither completed nor failed. */
int eg_ledger_complete_issue(eg_ledger *lg, int64_t id, const uint8_t *der, size_t len);
/* Marks an intent failed (signing refused or failed): no half-written record stays. The key
 * may be issued again; the serial stays taken. id must be in flight, as for complete. A NULL
 * reason is stored as "no reason given". Even when it fails (the disk refusing writes), id is
 * no longer in flight afterwards: its row stays pending, and the same request is offered for
 * retry with the recorded serial, as after a crash. */
int eg_ledger_fail_issue(eg_ledger *lg, int64_t id, const char *reason);

/* Looks a certificate up by serial (DER INTEGER content); 1 found, 0 not found, -1 error. */
int eg_ledger_find_serial(eg_ledger *lg, const uint8_t *serial, size_t len, uint8_t **der,
                          size_t *der_len);
/* Counts certificates in the ledger (completed intents); -1 on error. */
int64_t eg_ledger_count_issued(eg_ledger *lg);

/*
 * The certificates issued since `since` (Unix time, when each intent was recorded), oldest
 * first: fn gets each one's profile, principal, subject (RFC 2253, as recorded), whether it
 * renewed a certificate (its audit row is "reissued") and its time. Reads only that period's
 * rows. 0; -1 on error, or as soon as fn returns nonzero.
 */
typedef int (*eg_ledger_issued_fn)(void *arg, const char *profile, const char *principal,
                                   const char *subject, bool renewal, int64_t created);
int eg_ledger_issued_since(eg_ledger *lg, int64_t since, eg_ledger_issued_fn fn, void *arg);

typedef struct eg_audit_event {
    const char *type;      /* e.g. "enroll.ok", "auth.fail.basic", "policy.deny.san" */
    const char *profile;   /* NULL when not known */
    const char *principal; /* NULL when not known */
    const char *peer;      /* client address */
    const char *detail;    /* human-readable, never a secret */
    int64_t intent_id;     /* 0 when none */
} eg_audit_event;

/* Stores an audit event (grouped with other commits; durable on return). */
int eg_ledger_audit(eg_ledger *lg, const eg_audit_event *ev);
/* eg_ledger_complete_issue and, when ev is not NULL, eg_ledger_audit(ev) as one operation: the
 * certificate and the audit row of its issue go into the same commit, both or neither, with one
 * wait instead of two. */
int eg_ledger_complete_issue_audit(eg_ledger *lg, int64_t id, const uint8_t *der, size_t len,
                                   const eg_audit_event *ev);

/*
 * How long a serverkeygen key part is kept after its intent was recorded: no retry is answered
 * from it later (core.c's replay window is at most this). The keeper clears older ones at open
 * and on each hourly pass, whatever the audit retention.
 */
#define EG_LEDGER_KEY_PART_KEEP_S 86400

/* As eg_ledger_complete_issue_audit, and key_part (not NULL: an encrypted serverkeygen answer's
 * key part, never a plaintext key) kept with the certificate, for a retry of the same request
 * while it is young. */
int eg_ledger_complete_issue_key(eg_ledger *lg, int64_t id, const uint8_t *der, size_t len,
                                 const uint8_t *key_part, size_t key_part_len,
                                 const eg_audit_event *ev);
/* Looks up, without recording anything, the issued certificate of in's key (profile, principal,
 * request_hash; the rest of in is not read): 1 found, with *out as begin_issue's
 * EG_INTENT_ISSUED (cert and key_part to free); 0 none, or only an intent; -1 error. For a caller
 * that would otherwise make something costly before begin_issue. */
int eg_ledger_find_issued(eg_ledger *lg, const eg_issue_intent *in, eg_intent_result *out);
/* Clears now, in the caller's thread, the key parts older than EG_LEDGER_KEY_PART_KEEP_S;
 * *dropped (may be NULL) counts them. */
int eg_ledger_drop_key_parts(eg_ledger *lg, uint64_t *dropped);

/*
 * Retention of the audit rows that belong to no certificate (refusals, and failures before an
 * intent): a client without credentials can add thousands a second. The rows of an issuance
 * stay with it. A thread of the ledger prunes, oldest first and in small writer operations, when
 * the limits are set, every hour, and whenever a tenth of keep_rows has been added since its last
 * pass.
 */
typedef struct eg_ledger_retention {
    unsigned keep_days; /* rows older than this many days go; 0: no age limit */
    unsigned keep_rows; /* only the newest this many stay; 0: no count limit */
} eg_ledger_retention;
/* Until it is called, nothing is pruned. */
void eg_ledger_set_retention(eg_ledger *lg, const eg_ledger_retention *keep);
/* One pass now, in the caller's thread; *deleted (may be NULL) counts the rows removed. */
int eg_ledger_prune_audit(eg_ledger *lg, uint64_t *deleted);

typedef struct eg_ledger_stats {
    uint64_t commits;       /* transactions committed (each one fsync) */
    uint64_t operations;    /* operations carried by them */
    uint64_t keeper_passes; /* audit-retention passes the keeper thread has finished */
} eg_ledger_stats;
void eg_ledger_get_stats(eg_ledger *lg, eg_ledger_stats *out);

#endif
