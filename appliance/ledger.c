/*
 * The ledger (see ledger.h).
 *
 * One writer thread owns the write connection. Callers queue an operation and
 * sleep; the writer takes up to max_batch of them, runs each in its own
 * SAVEPOINT inside one BEGIN IMMEDIATE ... COMMIT (so a constraint violation
 * fails only its own caller), and wakes every caller after the COMMIT, which in
 * WAL mode with synchronous=FULL has reached the disk. While one batch's fsync
 * runs, the next one fills, so the commit rate bounds batches, not callers.
 *
 * Intents in flight (between begin and complete/fail) are a set of row ids that
 * only the writer thread touches, so deciding NEW/BUSY/RETRY and changing the
 * set happen in the order the batch commits them. Reads use a pool of
 * read-only connections, which WAL lets run beside the writer.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "clock.h"
#include "ledger.h"
#include "ledger_local.h"

#define LEDGER_SCHEMA_VERSION 7
#define LEDGER_BATCH_DEFAULT  256
#define LEDGER_BUSY_MS        5000
#define LEDGER_SERIAL_MAX     20
#define PRUNE_EVERY_S         3600        /* age-based pruning runs at least this often */
#define LOW_SPACE_KIB         (64 * 1024) /* less free space than this is warned of */
#define PRUNE_CHUNK           500         /* rows deleted per writer operation */

/*
 * Schema migrations: migrations[v] takes user_version v to v + 1. Append only.
 * The CHECKs make a half-written row impossible: an issued row has its
 * certificate, a pending one has no completion time.
 */
static const char *const migrations[LEDGER_SCHEMA_VERSION] = {
    "CREATE TABLE issuance ("
    " id INTEGER PRIMARY KEY,"
    " created INTEGER NOT NULL,"
    " profile TEXT NOT NULL,"
    " principal TEXT NOT NULL,"
    " request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),"
    " serial BLOB NOT NULL UNIQUE CHECK (length(serial) BETWEEN 1 AND 20),"
    " subject TEXT NOT NULL,"
    " not_after INTEGER NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'issued', 'failed')),"
    " fail_reason TEXT,"
    " completed INTEGER,"
    " cert BLOB," /* last: counting by state need not read it */
    " CHECK ((state = 'issued') = (cert IS NOT NULL)),"
    " CHECK ((state = 'pending') = (completed IS NULL)));"
    /* A failed attempt leaves the index, so the same request can be retried. */
    "CREATE UNIQUE INDEX issuance_key ON issuance (profile, principal, request_hash)"
    " WHERE state <> 'failed';"
    "CREATE TABLE audit ("
    " id INTEGER PRIMARY KEY,"
    " time INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " profile TEXT,"
    " principal TEXT,"
    " peer TEXT,"
    " detail TEXT,"
    " intent_id INTEGER REFERENCES issuance (id));"
    "CREATE INDEX audit_intent ON audit (intent_id) WHERE intent_id IS NOT NULL;",
    /*
     * The request key's index no longer names state: completing an intent sets state,
     * and SQLite rewrites a partial index whose condition reads a column an UPDATE
     * sets, one more random leaf per issuance. Only failing an intent sets
     * fail_reason, and every failed row has one.
     */
    "UPDATE issuance SET fail_reason = 'no reason given' WHERE state = 'failed'"
    " AND fail_reason IS NULL;"
    "DROP INDEX issuance_key;"
    "CREATE UNIQUE INDEX issuance_key ON issuance (profile, principal, request_hash)"
    " WHERE fail_reason IS NULL;",
    /*
     * Audit rows of no certificate (refusals) are pruned by age and count, oldest first; the
     * rows of an issuance stay with it and are not in this index.
     */
    "CREATE INDEX audit_unlinked ON audit (time) WHERE intent_id IS NULL;",
    /*
     * Issuances named the default profile by its URL label, '', and audit rows by its name;
     * both use the name now. The request key moves with it, so retries stay idempotent.
     */
    "UPDATE issuance SET profile = 'default' WHERE profile = '';",
    /*
     * A certificate is sent again to the same request only while it is young (the caller
     * decides); after that the same request gets a new one, and the earlier issuance leaves the
     * request key, its certificate kept: superseded is when.
     */
    "ALTER TABLE issuance ADD COLUMN superseded INTEGER;"
    "DROP INDEX issuance_key;"
    "CREATE UNIQUE INDEX issuance_key ON issuance (profile, principal, request_hash)"
    " WHERE fail_reason IS NULL AND superseded IS NULL;",
    /*
     * A serverkeygen intent's key is a session object in the token, gone with the process
     * that made it: one found pending at open can never be retried, and is failed there
     * (fail_orphans). Rows from before this version are taken to be enrollments.
     */
    "ALTER TABLE issuance ADD COLUMN serverkeygen INTEGER NOT NULL DEFAULT 0;",
    /*
     * An encrypted serverkeygen answer's key part (the EnvelopedData: ciphertext only the
     * client's key or a pre-shared key opens), so that a retry gets the same key and
     * certificate instead of one more live certificate. Kept only while a retry may be
     * answered from it: cleared when its issuance is superseded and, by the keeper, a day
     * after it was recorded; the index holds only the rows that still have one.
     */
    "ALTER TABLE issuance ADD COLUMN key_part BLOB;"
    "CREATE INDEX issuance_key_part ON issuance (created) WHERE key_part IS NOT NULL;",
};

enum {
    W_BEGIN,
    W_COMMIT,
    W_ROLLBACK,
    W_SAVEPOINT,
    W_RELEASE,
    W_ROLLBACK_TO,
    W_FIND_KEY,
    W_SUPERSEDE,
    W_INSERT,
    W_COMPLETE,
    W_COMPLETE_KEY,
    W_FAIL,
    W_AUDIT,
    W_PRUNE,
    W_DROP_KEYS,
    W_NSTMT
};

static const char *const writer_sql[W_NSTMT] = {
    [W_BEGIN] = "BEGIN IMMEDIATE",
    [W_COMMIT] = "COMMIT",
    [W_ROLLBACK] = "ROLLBACK",
    [W_SAVEPOINT] = "SAVEPOINT op",
    [W_RELEASE] = "RELEASE op",
    [W_ROLLBACK_TO] = "ROLLBACK TO op",
    /* The fail_reason and superseded terms let the planner use the partial index. */
    [W_FIND_KEY] = "SELECT id, state = 'issued', serial, cert, key_part FROM issuance"
                   " WHERE profile = ?1 AND principal = ?2 AND request_hash = ?3"
                   " AND fail_reason IS NULL AND superseded IS NULL",
    /* A superseded issuance is never sent again: its key part goes with it. */
    [W_SUPERSEDE] = "UPDATE issuance SET superseded = ?1, key_part = NULL"
                    " WHERE id = ?2 AND state = 'issued' AND superseded IS NULL",
    [W_INSERT] = "INSERT INTO issuance (created, profile, principal, request_hash, serial,"
                 " subject, not_after, serverkeygen, state)"
                 " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')",
    [W_COMPLETE] = "UPDATE issuance SET state = 'issued', completed = ?1, cert = ?2"
                   " WHERE id = ?3 AND state = 'pending'",
    /* Apart from W_COMPLETE, so that an enrollment's completion touches no key_part index. */
    [W_COMPLETE_KEY] = "UPDATE issuance SET state = 'issued', completed = ?1, cert = ?2,"
                       " key_part = ?4 WHERE id = ?3 AND state = 'pending'",
    [W_FAIL] = "UPDATE issuance SET state = 'failed', completed = ?1,"
               " fail_reason = coalesce(?2, 'no reason given')"
               " WHERE id = ?3 AND state = 'pending'",
    [W_AUDIT] = "INSERT INTO audit (time, type, profile, principal, peer, detail, intent_id)"
                " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    /* Oldest first, up to (time, id) = (?1, ?2), at most ?3 rows; the first term keeps
       the scan on audit_unlinked. */
    [W_PRUNE] = "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE intent_id IS NULL"
                " AND time <= ?1 AND (time < ?1 OR id <= ?2) ORDER BY time, id LIMIT ?3)",
    /* Key parts recorded at or before ?1, at most ?2 rows, found by issuance_key_part. */
    [W_DROP_KEYS] = "UPDATE issuance SET key_part = NULL WHERE id IN (SELECT id FROM issuance"
                    " WHERE key_part IS NOT NULL AND created <= ?1 LIMIT ?2)",
};

enum { R_FIND_SERIAL, R_COUNT_ISSUED, R_PRUNE_CUT, R_FIND_KEY, R_OLD_KEYS, R_NSTMT };

static const char *const reader_sql[R_NSTMT] = {
    [R_FIND_SERIAL] = "SELECT cert FROM issuance WHERE serial = ?1 AND state = 'issued'",
    [R_COUNT_ISSUED] = "SELECT count(*) FROM issuance WHERE state = 'issued'",
    /* The newest row of no certificate past the ?1 to keep. */
    [R_PRUNE_CUT] = "SELECT time, id FROM audit WHERE intent_id IS NULL"
                    " ORDER BY time DESC, id DESC LIMIT 1 OFFSET ?1",
    [R_FIND_KEY] = "SELECT id, state = 'issued', serial, cert, key_part FROM issuance"
                   " WHERE profile = ?1 AND principal = ?2 AND request_hash = ?3"
                   " AND fail_reason IS NULL AND superseded IS NULL",
    [R_OLD_KEYS] = "SELECT EXISTS (SELECT 1 FROM issuance WHERE key_part IS NOT NULL"
                   " AND created <= ?1)",
};

typedef enum op_kind {
    OP_BEGIN,
    OP_COMPLETE,
    OP_FAIL,
    OP_AUDIT,
    OP_PRAGMA,
    OP_PRUNE,
    OP_DROP_KEYS
} op_kind;

/* One caller's operation; lives on the caller's stack until done is posted. */
typedef struct ledger_op {
    struct ledger_op *next;
    op_kind kind;
    const eg_issue_intent *intent; /* OP_BEGIN */
    int64_t id;                    /* OP_COMPLETE, OP_FAIL; OP_PRUNE: last id at cut_time */
    int64_t cut_time;              /* OP_PRUNE: rows up to (cut_time, id); OP_DROP_KEYS: created */
    int64_t changed;               /* OP_PRUNE: rows deleted; OP_DROP_KEYS: key parts cleared */
    const uint8_t *der;            /* OP_COMPLETE */
    size_t der_len;
    const uint8_t *key_part; /* OP_COMPLETE: NULL, or serverkeygen's key part to keep */
    size_t key_part_len;
    const char *text;            /* OP_FAIL: reason; OP_PRAGMA: name */
    const eg_audit_event *event; /* OP_AUDIT; OP_COMPLETE: NULL, or stored with it */
    eg_intent_result res;        /* OP_BEGIN */
    char *value;                 /* OP_PRAGMA */
    int64_t flight_added;        /* undone if the batch does not commit */
    int64_t flight_removed;
    int rc;
    sem_t done; /* posted by the writer once the batch has committed or failed */
} ledger_op;

typedef struct ledger_reader {
    struct ledger_reader *next;
    sqlite3 *db;
    sqlite3_stmt *st[R_NSTMT];
} ledger_reader;

struct eg_ledger {
    char *path;
    unsigned max_batch;
    unsigned max_wait_us;
    int lock_fd;
    int db_fd;    /* the database file, flock()ed too, and what the path must still name */
    dev_t db_dev; /* ...its identity at open: a batch checks the path still leads there */
    ino_t db_ino;
    sqlite3 *db; /* the writer's: used only by the writer thread while it runs */
    sqlite3_stmt *st[W_NSTMT];

    /* Intents in flight, writer thread only. A plain array: it holds at most one
     * id per caller waiting on the token, and a scan of that is nothing beside an fsync. */
    int64_t *flight;
    size_t nflight;
    size_t flight_cap;

    int sync_ready;
    pthread_mutex_t lock; /* the queue, stopping, stats */
    pthread_cond_t wake;  /* the writer waits here for work */
    ledger_op *head;
    ledger_op *tail;
    unsigned queued;
    int stopping;
    int running;
    pthread_t writer;
    eg_ledger_stats stats;

    pthread_mutex_t rlock; /* idle readers */
    ledger_reader *readers;

    /* Audit retention (eg_ledger_set_retention), under lock. The keeper thread prunes when
       kicked, and every prune_every_ms (PRUNE_EVERY_S unless a test asks for less). */
    eg_ledger_retention keep;
    uint64_t unlinked_since; /* audit rows of no certificate committed since the last pass */
    unsigned prune_every_ms;
    int keeper_kick;
    int keeper_stop;
    int keeper_running;
    pthread_cond_t keeper_wake;
    pthread_t keeper;
    pthread_mutex_t prune_lock; /* one pass at a time */

    /* The disk would not take the writer's commits (full, failing, read-only), writer thread
       only: said once when it starts, again each minute it lasts, and when it ends. */
    int outage_code; /* SQLite's code of the first failure, or OUTAGE_GONE; 0: can write */
    uint64_t outage_since_ms, outage_said_ms, outage_failed;
    uint64_t low_said_ms; /* space_check's last warning; at open, then keeper thread only */
};

/*
 * In the writer thread a full, failing or read-only disk, or another process holding the
 * database's lock past LEDGER_BUSY_MS, fails every statement of a batch and then the next
 * batch: the writer says it once per outage (outage_*), and log_db keeps only its code here
 * instead of a line per statement.
 */
static __thread bool in_writer;
static __thread int writer_disk_error;

static bool disk_error(int code)
{
    code &= 0xff;
    return code == SQLITE_FULL || code == SQLITE_IOERR || code == SQLITE_READONLY ||
           code == SQLITE_BUSY || code == SQLITE_LOCKED;
}

static void log_db(sqlite3 *db, const char *what)
{
    int code = sqlite3_extended_errcode(db);

    if (in_writer && disk_error(code)) {
        writer_disk_error = code;
        return;
    }
    fprintf(stderr, "ledger: %s: %s\n", what, sqlite3_errmsg(db));
}

static void stmt_clear(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Runs a statement that returns no rows; 0 or SQLite's (extended) code. */
static int stmt_run(sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_DONE)
        rc = SQLITE_OK;
    else if (what != NULL)
        log_db(sqlite3_db_handle(st), what);
    stmt_clear(st);
    return rc;
}

static int64_t now(void)
{
    return (int64_t)time(NULL);
}

/* --- the in-flight set (writer thread only) --- */

static int flight_has(const eg_ledger *lg, int64_t id)
{
    for (size_t i = 0; i < lg->nflight; i++)
        if (lg->flight[i] == id)
            return 1;
    return 0;
}

static int flight_add(eg_ledger *lg, int64_t id)
{
    int rc = -1;
    size_t cap = lg->flight_cap ? lg->flight_cap * 2 : 64;
    int64_t *grown;

    if (lg->nflight == lg->flight_cap) {
        if ((grown = realloc(lg->flight, cap * sizeof(*grown))) == NULL) {
            fprintf(stderr, "ledger: in-flight set: out of memory\n");
            goto out;
        }
        lg->flight = grown;
        lg->flight_cap = cap;
    }
    lg->flight[lg->nflight++] = id;
    rc = 0;
out:
    return rc;
}

static void flight_del(eg_ledger *lg, int64_t id)
{
    for (size_t i = 0; i < lg->nflight; i++) {
        if (lg->flight[i] == id) {
            lg->flight[i] = lg->flight[--lg->nflight];
            break;
        }
    }
}

/* --- operations, run by the writer inside the batch's transaction --- */

/* A copy of column col's blob into *out (NULL for SQL NULL); 0, or -1 out of memory. */
static int column_copy(sqlite3_stmt *st, int col, uint8_t **out, size_t *len)
{
    const void *blob = sqlite3_column_blob(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col);

    *out = NULL;
    *len = 0;
    if (blob == NULL)
        return 0;
    if ((*out = malloc(n)) == NULL)
        return -1;
    memcpy(*out, blob, n);
    *len = n;
    return 0;
}

/* With st (W_FIND_KEY or R_FIND_KEY), the live (not failed, not superseded) intent with in's
   key: 1 found, 0 none, -1 error. */
static int find_key_with(sqlite3_stmt *st, const eg_issue_intent *in, eg_intent_result *res)
{
    const void *serial;
    size_t slen;
    int rc = -1, step;

    sqlite3_bind_text(st, 1, in->profile, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, in->principal, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, in->request_hash, sizeof(in->request_hash), SQLITE_STATIC);
    if ((step = sqlite3_step(st)) == SQLITE_DONE) {
        rc = 0;
        goto out;
    }
    if (step != SQLITE_ROW) {
        log_db(sqlite3_db_handle(st), "find request");
        goto out;
    }
    res->id = sqlite3_column_int64(st, 0);
    /* A pending row: BUSY unless the caller finds it is not in flight. */
    res->state = sqlite3_column_int(st, 1) ? EG_INTENT_ISSUED : EG_INTENT_BUSY;
    serial = sqlite3_column_blob(st, 2);
    slen = (size_t)sqlite3_column_bytes(st, 2);
    res->serial_len = slen <= sizeof(res->serial) ? slen : sizeof(res->serial);
    memcpy(res->serial, serial, res->serial_len);
    if (res->state == EG_INTENT_ISSUED &&
        (column_copy(st, 3, &res->cert, &res->cert_len) != 0 ||
         column_copy(st, 4, &res->key_part, &res->key_part_len) != 0)) {
        fprintf(stderr, "ledger: find request: out of memory\n");
        free(res->cert);
        res->cert = NULL;
        goto out;
    }
    rc = 1;
out:
    stmt_clear(st);
    return rc;
}

static int find_key(eg_ledger *lg, const eg_issue_intent *in, eg_intent_result *res)
{
    return find_key_with(lg->st[W_FIND_KEY], in, res);
}

/* Inserts a pending intent: 0, -2 when the serial is taken, -1 on error. */
static int insert_intent(eg_ledger *lg, const eg_issue_intent *in, int64_t *id)
{
    sqlite3_stmt *st = lg->st[W_INSERT];
    int rc = -1, step;

    sqlite3_bind_int64(st, 1, now());
    sqlite3_bind_text(st, 2, in->profile, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, in->principal, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, in->request_hash, sizeof(in->request_hash), SQLITE_STATIC);
    sqlite3_bind_blob(st, 5, in->serial, (int)in->serial_len, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, in->subject, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, in->not_after);
    sqlite3_bind_int(st, 8, in->serverkeygen ? 1 : 0);
    step = sqlite3_step(st);
    /* The key was looked up first in this transaction, so a UNIQUE failure is the serial. */
    if (step == SQLITE_CONSTRAINT_UNIQUE) {
        rc = -2;
        goto out;
    }
    if (step != SQLITE_DONE) {
        log_db(lg->db, "begin_issue: insert");
        goto out;
    }
    *id = sqlite3_last_insert_rowid(lg->db);
    rc = 0;
out:
    stmt_clear(st);
    return rc;
}

static int op_begin(eg_ledger *lg, ledger_op *op)
{
    eg_intent_result *res = &op->res;
    int rc = -1, found;

    /* An issuance the caller found too old to send again leaves the key (a concurrent caller
       may have done so already), and the same request begins anew. */
    if (op->intent->supersede_id != 0) {
        sqlite3_bind_int64(lg->st[W_SUPERSEDE], 1, now());
        sqlite3_bind_int64(lg->st[W_SUPERSEDE], 2, op->intent->supersede_id);
        if (stmt_run(lg->st[W_SUPERSEDE], "begin_issue: supersede") != SQLITE_OK)
            goto out;
    }
    if ((found = find_key(lg, op->intent, res)) < 0)
        goto out;
    if (found && (res->state == EG_INTENT_ISSUED || flight_has(lg, res->id))) {
        rc = 0; /* ISSUED or BUSY: nothing changes */
        goto out;
    }
    if (!found) {
        if ((rc = insert_intent(lg, op->intent, &res->id)) != 0)
            goto out;
        rc = -1;
        memcpy(res->serial, op->intent->serial, op->intent->serial_len);
        res->serial_len = op->intent->serial_len;
    }
    if (flight_add(lg, res->id) != 0)
        goto out;
    op->flight_added = res->id;
    res->state = found ? EG_INTENT_RETRY : EG_INTENT_NEW;
    rc = 0;
out:
    return rc;
}

/* Completes (der != NULL) or fails an intent in flight. */
static int op_finish(eg_ledger *lg, ledger_op *op)
{
    const char *what = op->kind == OP_COMPLETE ? "complete_issue" : "fail_issue";
    sqlite3_stmt *st = lg->st[op->kind == OP_FAIL    ? W_FAIL
                              : op->key_part != NULL ? W_COMPLETE_KEY
                                                     : W_COMPLETE];
    int rc = -1;

    if (!flight_has(lg, op->id)) {
        fprintf(stderr, "ledger: %s: intent %lld is not in flight\n", what, (long long)op->id);
        goto out;
    }
    /* A failing caller lets its intent go whether or not the row can say so (the disk may be
       refusing writes): not undone with the batch, so the same request is offered for retry
       with its serial as after a crash, instead of being refused as busy until a restart. */
    if (op->kind == OP_FAIL)
        flight_del(lg, op->id);
    sqlite3_bind_int64(st, 1, now());
    if (op->kind == OP_COMPLETE)
        sqlite3_bind_blob(st, 2, op->der, (int)op->der_len, SQLITE_STATIC);
    if (op->kind == OP_COMPLETE && op->key_part != NULL)
        sqlite3_bind_blob(st, 4, op->key_part, (int)op->key_part_len, SQLITE_STATIC);
    else if (op->kind == OP_FAIL)
        sqlite3_bind_text(st, 2, op->text, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, op->id);
    if (stmt_run(st, what) != SQLITE_OK)
        goto out;
    if (sqlite3_changes(lg->db) != 1) {
        fprintf(stderr, "ledger: %s: intent %lld is not pending\n", what, (long long)op->id);
        goto out;
    }
    if (op->kind == OP_COMPLETE) {
        flight_del(lg, op->id);
        op->flight_removed = op->id;
    }
    rc = 0;
out:
    return rc;
}

static int op_audit(eg_ledger *lg, ledger_op *op)
{
    const eg_audit_event *ev = op->event;
    sqlite3_stmt *st = lg->st[W_AUDIT];

    sqlite3_bind_int64(st, 1, now());
    sqlite3_bind_text(st, 2, ev->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, ev->profile, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, ev->principal, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, ev->peer, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, ev->detail, -1, SQLITE_STATIC);
    if (ev->intent_id != 0)
        sqlite3_bind_int64(st, 7, ev->intent_id);
    return stmt_run(st, "audit") == SQLITE_OK ? 0 : -1;
}

/* Test hook; prepared per call, as nothing in service uses it. */
static int op_pragma(eg_ledger *lg, ledger_op *op)
{
    sqlite3_stmt *st = NULL;
    char sql[64];
    int rc = -1;

    if (strspn(op->text, "abcdefghijklmnopqrstuvwxyz_") != strlen(op->text) ||
        snprintf(sql, sizeof(sql), "PRAGMA %s", op->text) >= (int)sizeof(sql))
        goto out;
    if (sqlite3_prepare_v2(lg->db, sql, -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        log_db(lg->db, sql);
        goto out;
    }
    if ((op->value = strdup((const char *)sqlite3_column_text(st, 0))) == NULL)
        goto out;
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static int op_prune(eg_ledger *lg, ledger_op *op)
{
    sqlite3_stmt *st = lg->st[W_PRUNE];

    sqlite3_bind_int64(st, 1, op->cut_time);
    sqlite3_bind_int64(st, 2, op->id);
    sqlite3_bind_int(st, 3, PRUNE_CHUNK);
    if (stmt_run(st, "prune audit") != SQLITE_OK)
        return -1;
    op->changed = sqlite3_changes(lg->db);
    return 0;
}

static int op_drop_keys(eg_ledger *lg, ledger_op *op)
{
    sqlite3_stmt *st = lg->st[W_DROP_KEYS];

    sqlite3_bind_int64(st, 1, op->cut_time);
    sqlite3_bind_int(st, 2, PRUNE_CHUNK);
    if (stmt_run(st, "drop key parts") != SQLITE_OK)
        return -1;
    op->changed = sqlite3_changes(lg->db);
    return 0;
}

static int op_exec(eg_ledger *lg, ledger_op *op)
{
    switch (op->kind) {
    case OP_BEGIN:
        return op_begin(lg, op);
    case OP_COMPLETE:
        /* The audit row first: if completing fails, the savepoint takes the row back, and
           the in-flight set, which only completing changes, stays as it was. */
        if (op->event != NULL && op_audit(lg, op) != 0)
            return -1;
        return op_finish(lg, op);
    case OP_FAIL:
        return op_finish(lg, op);
    case OP_AUDIT:
        return op_audit(lg, op);
    case OP_PRAGMA:
        return op_pragma(lg, op);
    case OP_PRUNE:
        return op_prune(lg, op);
    case OP_DROP_KEYS:
        return op_drop_keys(lg, op);
    }
    return -1;
}

/* --- the writer --- */

/* Runs one operation in its own savepoint; -1 only if the whole transaction was lost. */
static int run_op(eg_ledger *lg, ledger_op *op)
{
    op->rc = -1;
    if (stmt_run(lg->st[W_SAVEPOINT], "savepoint") == SQLITE_OK) {
        op->rc = op_exec(lg, op);
        if (op->rc != 0)
            stmt_run(lg->st[W_ROLLBACK_TO], "rollback to savepoint");
        stmt_run(lg->st[W_RELEASE], "release savepoint");
    }
    /* I/O errors and SQLITE_FULL may roll the whole transaction back. */
    return sqlite3_get_autocommit(lg->db) ? -1 : 0;
}

/* The batch did not commit: every caller in it fails, and what it did to memory is undone. */
static void abandon_batch(eg_ledger *lg, ledger_op *batch)
{
    if (!sqlite3_get_autocommit(lg->db))
        stmt_run(lg->st[W_ROLLBACK], "rollback");
    /* In one batch at most one operation touches an id (completing or failing one takes
     * a caller who got it from an earlier batch), so the undoing may go in any order;
     * dropping the added ids first leaves room for the removed ones without growing. */
    for (ledger_op *op = batch; op != NULL; op = op->next)
        if (op->flight_added != 0)
            flight_del(lg, op->flight_added);
    for (ledger_op *op = batch; op != NULL; op = op->next) {
        if (op->flight_removed != 0)
            flight_add(lg, op->flight_removed);
        free(op->res.cert);
        op->res.cert = NULL;
        free(op->res.key_part);
        op->res.key_part = NULL;
        free(op->value);
        op->value = NULL;
        op->rc = -1;
    }
}

/* Waits until a full batch is queued or max_wait_us has passed since the first one came. */
static void wait_to_fill(eg_ledger *lg)
{
    struct timespec deadline = eg_mono_deadline_us(lg->max_wait_us);

    while (lg->queued < lg->max_batch && !lg->stopping)
        if (pthread_cond_timedwait(&lg->wake, &lg->lock, &deadline) == ETIMEDOUT)
            break;
}

/* Takes up to max_batch queued operations; NULL when closing and nothing is left. */
static ledger_op *take_batch(eg_ledger *lg, unsigned *n)
{
    ledger_op *batch, *last = NULL, *op;
    unsigned count = 0;

    pthread_mutex_lock(&lg->lock);
    while (lg->head == NULL && !lg->stopping)
        pthread_cond_wait(&lg->wake, &lg->lock);
    if (lg->head != NULL && lg->max_wait_us > 0)
        wait_to_fill(lg);
    batch = lg->head;
    for (op = batch; op != NULL && count < lg->max_batch; op = op->next) {
        last = op;
        count++;
    }
    if (last != NULL) {
        lg->head = last->next;
        if (lg->head == NULL)
            lg->tail = NULL;
        last->next = NULL;
        lg->queued -= count;
    }
    pthread_mutex_unlock(&lg->lock);
    *n = count;
    return batch;
}

static void deliver(eg_ledger *lg, ledger_op *batch, unsigned n, int committed)
{
    ledger_op *op, *next;
    uint64_t unlinked = 0;

    if (committed) {
        for (op = batch; op != NULL; op = op->next)
            unlinked += op->kind == OP_AUDIT && op->rc == 0 && op->event->intent_id == 0;
        pthread_mutex_lock(&lg->lock);
        lg->stats.commits++;
        lg->stats.operations += n;
        lg->unlinked_since += unlinked;
        /* A tenth of the rows to keep, past the last pass: a flood of refusals cannot take
           the disk before the next hourly pass. */
        if (unlinked > 0 && lg->keep.keep_rows > 0 &&
            lg->unlinked_since > lg->keep.keep_rows / 10 && !lg->keeper_kick) {
            lg->keeper_kick = 1;
            pthread_cond_signal(&lg->keeper_wake);
        }
        pthread_mutex_unlock(&lg->lock);
    }
    /* A semaphore each, not a condition variable on the queue's lock: the woken callers
       do not queue up for that lock again, against each other and the next batch. */
    for (op = batch; op != NULL; op = next) {
        next = op->next; /* op belongs to its caller again once done is posted */
        sem_post(&op->done);
    }
}

/* The free space the ledger's file system gives unprivileged writers, in KiB; -1 if unknown. */
static long long free_kib(const eg_ledger *lg)
{
    struct statvfs fs;
    char dir[PATH_MAX];
    const char *slash = strrchr(lg->path, '/');

    snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - lg->path) + 1 : 1,
             slash ? lg->path : ".");
    if (statvfs(dir, &fs) != 0)
        return -1;
    return (long long)((unsigned long long)fs.f_bavail * fs.f_frsize / 1024);
}

/* Warns, at most once an hour, when the ledger's file system is short of space: at open and on
   each keeper pass (hourly), before a full disk stops issuance. */
static void space_check(eg_ledger *lg)
{
    long long kib = free_kib(lg);
    uint64_t t = eg_mono_ms();

    if (kib < 0 || kib >= LOW_SPACE_KIB ||
        (lg->low_said_ms != 0 && t - lg->low_said_ms < PRUNE_EVERY_S * 1000u))
        return;
    fprintf(stderr,
            "ledger: %s: warning: its file system has %lld KiB free; when that runs out, nothing "
            "can be issued\n",
            lg->path, kib);
    lg->low_said_ms = t;
}

/* run_batch's outage code when the ledger's path no longer leads to the database it writes. */
#define OUTAGE_GONE (-1)

/*
 * Whether the path still names the database file opened: one stat() a batch. Deleted (the
 * file, or its directory) or replaced under a running estgated, SQLite would go on writing
 * into a file no one will read, and a second estgated could open the path anew.
 */
static bool db_still_there(const eg_ledger *lg)
{
    struct stat st;

    return stat(lg->path, &st) == 0 && st.st_dev == lg->db_dev && st.st_ino == lg->db_ino;
}

static const char *outage_what(int code)
{
    return code == OUTAGE_GONE ? "the database file was removed or replaced" : sqlite3_errstr(code);
}

/* What the operator can do about code, for the first line of an outage. */
static void outage_hint(const eg_ledger *lg, int code, char *out, size_t cap)
{
    long long kib;

    if ((code & 0xff) == SQLITE_FULL) {
        if ((kib = free_kib(lg)) >= 0)
            snprintf(out, cap, "; its file system has %lld KiB free: make room there", kib);
        else
            snprintf(out, cap, "; make room on its file system");
    } else if ((code & 0xff) == SQLITE_READONLY) {
        snprintf(out, cap, "; is its file system mounted read-only (the kernel log says why)?");
    } else if ((code & 0xff) == SQLITE_BUSY || (code & 0xff) == SQLITE_LOCKED) {
        snprintf(out, cap,
                 "; another process holds the ledger's lock (a backup? sqlite3 -readonly with "
                 "VACUUM INTO copies it without holding it: see the operator guide)");
    } else {
        snprintf(out, cap, "; the disk reports errors: see the kernel log");
    }
}

/* A batch did not commit for a reason of the disk's (code), or, with code 0, one did. */
static void outage_note(eg_ledger *lg, int code)
{
    uint64_t t = eg_mono_ms();
    char hint[256];

    if (code == 0) {
        if (lg->outage_code != 0)
            fprintf(stderr,
                    "ledger: %s: the ledger can write again, after %llu failed writes in %llu s\n",
                    lg->path, (unsigned long long)lg->outage_failed,
                    (unsigned long long)(t - lg->outage_since_ms + 500) / 1000);
        lg->outage_code = 0;
        return;
    }
    if (lg->outage_code == 0) {
        if (code == OUTAGE_GONE) {
            fprintf(stderr,
                    "ledger: %s: the database file was removed or replaced while estgated ran; "
                    "restart estgated after restoring it. Nothing is issued until then; "
                    "enrollments are answered 503 with Retry-After\n",
                    lg->path);
        } else {
            outage_hint(lg, code, hint, sizeof(hint));
            fprintf(stderr,
                    "ledger: %s: cannot write: %s%s. Nothing is issued until it can; "
                    "enrollments are answered 503 with Retry-After\n",
                    lg->path, sqlite3_errstr(code), hint);
        }
        lg->outage_code = code;
        lg->outage_since_ms = lg->outage_said_ms = t;
        lg->outage_failed = 0;
    } else if (t - lg->outage_said_ms >= 60000) {
        fprintf(stderr, "ledger: %s: still cannot write: %s (%llu writes failed in %llu s)\n",
                lg->path, outage_what(code), (unsigned long long)lg->outage_failed + 1,
                (unsigned long long)(t - lg->outage_since_ms + 500) / 1000);
        lg->outage_said_ms = t;
    }
    lg->outage_failed++;
}

static void run_batch(eg_ledger *lg, ledger_op *batch, unsigned n)
{
    int committed = 0;

    writer_disk_error = 0;
    if (!db_still_there(lg)) {
        writer_disk_error = OUTAGE_GONE;
        goto out;
    }
    if (stmt_run(lg->st[W_BEGIN], "begin") != SQLITE_OK)
        goto out;
    for (ledger_op *op = batch; op != NULL; op = op->next)
        if (run_op(lg, op) != 0)
            goto out;
    if (stmt_run(lg->st[W_COMMIT], "commit") != SQLITE_OK)
        goto out;
    committed = 1;
out:
    if (!committed)
        abandon_batch(lg, batch);
    if (committed || writer_disk_error != 0)
        outage_note(lg, committed ? 0 : writer_disk_error);
    deliver(lg, batch, n, committed);
}

static void *writer_main(void *arg)
{
    eg_ledger *lg = arg;
    ledger_op *batch;
    unsigned n;

    in_writer = true;
    while ((batch = take_batch(lg, &n)) != NULL)
        run_batch(lg, batch, n);
    return NULL;
}

/* Queues op and sleeps until the writer has committed (or abandoned) its batch. */
static int submit(eg_ledger *lg, ledger_op *op)
{
    int rc = -1, queued = 0;

    if (sem_init(&op->done, 0, 0) != 0)
        return -1;
    pthread_mutex_lock(&lg->lock);
    if (!lg->stopping) {
        if (lg->tail != NULL)
            lg->tail->next = op;
        else
            lg->head = op;
        lg->tail = op;
        lg->queued++;
        pthread_cond_signal(&lg->wake);
        queued = 1;
    }
    pthread_mutex_unlock(&lg->lock);
    if (queued) {
        while (sem_wait(&op->done) != 0 && errno == EINTR)
            ;
        rc = op->rc;
    } else {
        fprintf(stderr, "ledger: operation after close\n");
    }
    sem_destroy(&op->done);
    return rc;
}

/* --- readers --- */

static void reader_free(ledger_reader *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < R_NSTMT; i++)
        sqlite3_finalize(r->st[i]);
    sqlite3_close(r->db);
    free(r);
}

static ledger_reader *reader_open(const char *path)
{
    ledger_reader *r = NULL, *ret = NULL;

    if ((r = calloc(1, sizeof(*r))) == NULL)
        goto out;
    if (sqlite3_open_v2(path, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        log_db(r->db, "open reader");
        goto out;
    }
    sqlite3_busy_timeout(r->db, LEDGER_BUSY_MS);
    for (int i = 0; i < R_NSTMT; i++) {
        if (sqlite3_prepare_v3(r->db, reader_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &r->st[i],
                               NULL) != SQLITE_OK) {
            log_db(r->db, reader_sql[i]);
            goto out;
        }
    }
    ret = r;
    r = NULL;
out:
    reader_free(r);
    return ret;
}

/* Borrows an idle reader, or opens one: the pool grows to the number of concurrent readers. */
static ledger_reader *reader_get(eg_ledger *lg)
{
    ledger_reader *r;

    pthread_mutex_lock(&lg->rlock);
    if ((r = lg->readers) != NULL)
        lg->readers = r->next;
    pthread_mutex_unlock(&lg->rlock);
    return r != NULL ? r : reader_open(lg->path);
}

static void reader_put(eg_ledger *lg, ledger_reader *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&lg->rlock);
    r->next = lg->readers;
    lg->readers = r;
    pthread_mutex_unlock(&lg->rlock);
}

/* --- audit retention --- */

/* Where a pass cuts: rows of no certificate up to (time, id), oldest first. 1: a cut, 0: none. */
static int prune_cut(eg_ledger *lg, const eg_ledger_retention *keep, int64_t *time_out,
                     int64_t *id_out)
{
    ledger_reader *r = NULL;
    sqlite3_stmt *st = NULL;
    int64_t t = INT64_MIN, id = INT64_MIN;
    int rc = -1, step;

    if (keep->keep_days > 0) {
        t = now() - (int64_t)keep->keep_days * 86400 - 1;
        id = INT64_MAX;
    }
    if (keep->keep_rows > 0) {
        if ((r = reader_get(lg)) == NULL)
            goto out;
        st = r->st[R_PRUNE_CUT];
        sqlite3_bind_int64(st, 1, (int64_t)keep->keep_rows);
        if ((step = sqlite3_step(st)) == SQLITE_ROW) {
            int64_t rt = sqlite3_column_int64(st, 0), rid = sqlite3_column_int64(st, 1);

            if (rt > t || (rt == t && rid > id)) {
                t = rt;
                id = rid;
            }
        } else if (step != SQLITE_DONE) {
            log_db(r->db, "prune audit: find the cut");
            goto out;
        }
    }
    *time_out = t;
    *id_out = id;
    rc = t != INT64_MIN;
out:
    if (st != NULL)
        stmt_clear(st);
    reader_put(lg, r);
    return rc;
}

static int keeper_stopping(eg_ledger *lg)
{
    int stop;

    pthread_mutex_lock(&lg->lock);
    stop = lg->keeper_stop;
    pthread_mutex_unlock(&lg->lock);
    return stop;
}

/* Runs a chunked keeper op (OP_PRUNE, OP_DROP_KEYS) through the writer until a chunk comes
   back short or the keeper stops; *total gains the rows each changed. */
static int submit_chunks(eg_ledger *lg, ledger_op *op, uint64_t *total)
{
    for (;;) {
        op->next = NULL;
        op->changed = 0;
        if (submit(lg, op) != 0)
            return -1;
        *total += (uint64_t)op->changed;
        if (op->changed < PRUNE_CHUNK || keeper_stopping(lg))
            return 0;
    }
}

/* One pass: finds the cut on a reader, then deletes in chunks through the writer, so that
   other callers' operations go between them. */
static int prune_pass(eg_ledger *lg, uint64_t *deleted)
{
    eg_ledger_retention keep;
    ledger_op op = {.kind = OP_PRUNE};
    uint64_t total = 0;
    int rc = -1, cut;

    pthread_mutex_lock(&lg->prune_lock);
    pthread_mutex_lock(&lg->lock);
    keep = lg->keep;
    lg->unlinked_since = 0;
    pthread_mutex_unlock(&lg->lock);
    if ((cut = prune_cut(lg, &keep, &op.cut_time, &op.id)) < 0)
        goto out;
    if (cut && submit_chunks(lg, &op, &total) != 0)
        goto out;
    rc = 0;
out:
    if (total > 0) {
        char line[200];
        int n = snprintf(line, sizeof(line),
                         "ledger: removed %llu audit row%s of no certificate (keeping",
                         (unsigned long long)total, total == 1 ? "" : "s");

        if (keep.keep_days > 0)
            n += snprintf(line + n, sizeof(line) - (size_t)n, " %u days", keep.keep_days);
        if (keep.keep_rows > 0)
            n += snprintf(line + n, sizeof(line) - (size_t)n, "%s the newest %u",
                          keep.keep_days > 0 ? " and at most" : "", keep.keep_rows);
        snprintf(line + n, sizeof(line) - (size_t)n, ")\n");
        fputs(line, stderr); /* one write: other threads' lines do not cut into it */
    }
    pthread_mutex_unlock(&lg->prune_lock);
    if (deleted != NULL)
        *deleted = total;
    return rc;
}

/* Clears the serverkeygen key parts recorded more than EG_LEDGER_KEY_PART_KEEP_S ago, when no
   retry may be answered from them any more, in chunks through the writer. */
static int drop_pass(eg_ledger *lg, uint64_t *dropped)
{
    ledger_op op = {.kind = OP_DROP_KEYS, .cut_time = now() - EG_LEDGER_KEY_PART_KEEP_S};
    ledger_reader *r = reader_get(lg);
    uint64_t total = 0;
    int rc = -1, any = -1;

    /* Looked for on a reader first: most passes find none, and then cost the writer nothing. */
    if (r != NULL) {
        sqlite3_bind_int64(r->st[R_OLD_KEYS], 1, op.cut_time);
        if (sqlite3_step(r->st[R_OLD_KEYS]) == SQLITE_ROW)
            any = sqlite3_column_int(r->st[R_OLD_KEYS], 0);
        else
            log_db(r->db, "drop key parts: find them");
        stmt_clear(r->st[R_OLD_KEYS]);
        reader_put(lg, r);
    }
    if (any < 0 || (any && submit_chunks(lg, &op, &total) != 0))
        goto out;
    rc = 0;
out:
    if (dropped != NULL)
        *dropped = total;
    return rc;
}

static void *keeper_main(void *arg)
{
    eg_ledger *lg = arg;
    struct timespec deadline;
    int active;

    pthread_mutex_lock(&lg->lock);
    while (!lg->keeper_stop) {
        deadline = eg_mono_deadline_us((uint64_t)lg->prune_every_ms * 1000u);
        while (!lg->keeper_stop && !lg->keeper_kick)
            if (pthread_cond_timedwait(&lg->keeper_wake, &lg->lock, &deadline) == ETIMEDOUT)
                break;
        lg->keeper_kick = 0;
        if (lg->keeper_stop)
            continue;
        active = lg->keep.keep_days > 0 || lg->keep.keep_rows > 0;
        pthread_mutex_unlock(&lg->lock);
        space_check(lg);
        /* Whatever the audit retention: keys wrapped under a pre-shared key are not kept. */
        drop_pass(lg, NULL);
        if (active)
            prune_pass(lg, NULL);
        pthread_mutex_lock(&lg->lock);
        lg->stats.keeper_passes += active;
    }
    pthread_mutex_unlock(&lg->lock);
    return NULL;
}

/* --- open and close --- */

static eg_ledger *ledger_new(const char *path, const eg_ledger_options *opt)
{
    eg_ledger *lg = NULL, *ret = NULL;
    pthread_condattr_t ca;

    if ((lg = calloc(1, sizeof(*lg))) == NULL)
        goto out;
    lg->lock_fd = lg->db_fd = -1;
    if ((lg->path = strdup(path)) == NULL)
        goto out;
    lg->max_batch = opt != NULL && opt->max_batch != 0 ? opt->max_batch : LEDGER_BATCH_DEFAULT;
    lg->max_wait_us = opt != NULL ? opt->max_wait_us : 0;
    lg->prune_every_ms =
        opt != NULL && opt->prune_every_ms != 0 ? opt->prune_every_ms : PRUNE_EVERY_S * 1000u;
    if (pthread_condattr_init(&ca) != 0)
        goto out;
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
        pthread_cond_init(&lg->wake, &ca) == 0) {
        if (pthread_cond_init(&lg->keeper_wake, &ca) == 0) {
            pthread_mutex_init(&lg->lock, NULL);
            pthread_mutex_init(&lg->rlock, NULL);
            pthread_mutex_init(&lg->prune_lock, NULL);
            lg->sync_ready = 1;
        } else {
            pthread_cond_destroy(&lg->wake);
        }
    }
    pthread_condattr_destroy(&ca);
    if (!lg->sync_ready)
        goto out;
    ret = lg;
    lg = NULL;
out:
    if (ret == NULL)
        fprintf(stderr, "ledger: open %s: out of memory\n", path);
    eg_ledger_close(lg);
    return ret;
}

/* Only one process may hold intents in flight, or RETRY would hand one out twice. */
static int lock_ledger(eg_ledger *lg)
{
    char lockpath[PATH_MAX];
    struct stat st;
    int rc = -1;

    if (snprintf(lockpath, sizeof(lockpath), "%s.lock", lg->path) >= (int)sizeof(lockpath)) {
        fprintf(stderr, "ledger: %s: path too long\n", lg->path);
        goto out;
    }
    if ((lg->lock_fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
        fprintf(stderr, "ledger: open %s: %s\n", lockpath, strerror(errno));
        goto out;
    }
    if (flock(lg->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "ledger: %s is in use (%s held): %s\n", lg->path, lockpath,
                strerror(errno));
        goto out;
    }
    /*
     * The database file too: the lock file can be deleted under a running estgated, and a
     * second one would then take a new one and issue beside it. flock() locks are apart from
     * SQLite's fcntl() locks on the same file on Linux. This descriptor stays open until SQLite
     * has closed the file: closing any descriptor of a file drops the process's fcntl() locks.
     */
    if ((lg->db_fd = open(lg->path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644)) < 0) {
        fprintf(stderr, "ledger: open %s: %s\n", lg->path, strerror(errno));
        goto out;
    }
    if (flock(lg->db_fd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "ledger: %s is in use (the database file is locked): %s\n", lg->path,
                strerror(errno));
        goto out;
    }
    if (fstat(lg->db_fd, &st) != 0) {
        fprintf(stderr, "ledger: %s: %s\n", lg->path, strerror(errno));
        goto out;
    }
    lg->db_dev = st.st_dev;
    lg->db_ino = st.st_ino;
    rc = 0;
out:
    return rc;
}

/* Reads one integer or text PRAGMA on db into buf. */
static int pragma_get(sqlite3 *db, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *v;
    int rc = -1;

    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW ||
        (v = sqlite3_column_text(st, 0)) == NULL) {
        log_db(db, sql);
        goto out;
    }
    snprintf(buf, len, "%s", (const char *)v);
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

static int exec_sql(sqlite3 *db, const char *sql, const char *what)
{
    int rc = -1;

    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
        log_db(db, what);
        goto out;
    }
    rc = 0;
out:
    return rc;
}

static int open_writer(eg_ledger *lg)
{
    char mode[16];
    int rc = -1;

    if (sqlite3_open_v2(lg->path, &lg->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        fprintf(stderr, "ledger: open %s: %s\n", lg->path,
                lg->db != NULL ? sqlite3_errmsg(lg->db) : "out of memory");
        goto out;
    }
    sqlite3_extended_result_codes(lg->db, 1); /* tells a taken serial from other failures */
    sqlite3_busy_timeout(lg->db, LEDGER_BUSY_MS);
    if (pragma_get(lg->db, "PRAGMA journal_mode = WAL", mode, sizeof(mode)) != 0)
        goto out;
    if (strcmp(mode, "wal") != 0) {
        fprintf(stderr, "ledger: %s: cannot use WAL (journal_mode is %s)\n", lg->path, mode);
        goto out;
    }
    if (exec_sql(lg->db, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON", "pragmas") != 0)
        goto out;
    rc = 0;
out:
    return rc;
}

/* Takes db's schema to version target (at most LEDGER_SCHEMA_VERSION) in one transaction. */
static int migrate_db(sqlite3 *db, const char *path, int target)
{
    char buf[32];
    int rc = -1, in_tx = 0, version;

    if (exec_sql(db, "BEGIN IMMEDIATE", "migrate: begin") != 0)
        goto out;
    in_tx = 1;
    if (pragma_get(db, "PRAGMA user_version", buf, sizeof(buf)) != 0)
        goto out;
    version = atoi(buf);
    if (version < 0 || version > LEDGER_SCHEMA_VERSION) {
        fprintf(stderr, "ledger: %s: schema version %d is not one this build knows (0-%d)\n", path,
                version, LEDGER_SCHEMA_VERSION);
        goto out;
    }
    for (int v = version; v < target; v++) {
        snprintf(buf, sizeof(buf), "migrate to version %d", v + 1);
        if (exec_sql(db, migrations[v], buf) != 0)
            goto out;
    }
    snprintf(buf, sizeof(buf), "PRAGMA user_version = %d", target);
    if (version < target && exec_sql(db, buf, "migrate: version") != 0)
        goto out;
    if (exec_sql(db, "COMMIT", "migrate: commit") != 0)
        goto out;
    in_tx = 0;
    rc = 0;
out:
    if (in_tx)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int eg_ledger_create_at_version(const char *path, int version)
{
    sqlite3 *db = NULL;
    int rc = -1;

    if (version < 0 || version > LEDGER_SCHEMA_VERSION ||
        sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK)
        goto out;
    rc = migrate_db(db, path, version);
out:
    sqlite3_close(db);
    return rc;
}

static int prepare_writer(eg_ledger *lg)
{
    int rc = -1;

    for (int i = 0; i < W_NSTMT; i++) {
        if (sqlite3_prepare_v3(lg->db, writer_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &lg->st[i],
                               NULL) != SQLITE_OK) {
            log_db(lg->db, writer_sql[i]);
            goto out;
        }
    }
    rc = 0;
out:
    return rc;
}

/*
 * Pending serverkeygen intents at open were left by a process that stopped
 * between the intent and its certificate (we hold the lock, so none is in
 * flight). Their key was a session object in the token and went with that
 * process, so nothing can complete them as they are. Failed here, with why,
 * they leave the request key, and the device's retry begins a new intent
 * with a new key.
 */
static int fail_orphans(eg_ledger *lg)
{
    sqlite3_stmt *st = NULL;
    int rc = -1, n;

    if (sqlite3_prepare_v2(lg->db,
                           "UPDATE issuance SET state = 'failed', completed = ?1,"
                           " fail_reason = ?2 WHERE state = 'pending' AND serverkeygen = 1",
                           -1, &st, NULL) != SQLITE_OK) {
        log_db(lg->db, "fail orphaned serverkeygen intents");
        goto out;
    }
    sqlite3_bind_int64(st, 1, now());
    sqlite3_bind_text(st, 2,
                      "serverkeygen: the process stopped before the certificate; its key was a "
                      "session object in the token and went with it",
                      -1, SQLITE_STATIC);
    if (stmt_run(st, "fail orphaned serverkeygen intents") != SQLITE_OK)
        goto out;
    if ((n = sqlite3_changes(lg->db)) > 0)
        fprintf(stderr,
                "ledger: %s: %d serverkeygen intent%s left pending by an earlier process marked "
                "failed (the key went with that process; the device must ask again)\n",
                lg->path, n, n == 1 ? "" : "s");
    rc = 0;
out:
    sqlite3_finalize(st);
    return rc;
}

/* SQLite syncs the directory for a new WAL but not for a new database or our lock file. */
static int sync_parent_dir(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd = -1, rc = -1;

    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0 || fsync(fd) != 0) {
        fprintf(stderr, "ledger: sync directory %s: %s\n", dir, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

/*
 * A ledger restored as root, or a state directory made by hand, is one the daemon's user cannot
 * write: SQLite then said only "attempt to write a readonly database" at the first write. Said
 * here with the owner, the mode and the user estgated runs as. (As root, access() passes. A
 * directory it cannot write fails before, at the lock file.)
 */
static bool writable(const char *path)
{
    struct stat st;

    if (stat(path, &st) == 0 && access(path, W_OK) != 0) {
        fprintf(stderr,
                "ledger: %s cannot be written by this user (uid %u; the file is uid %u's, mode "
                "%04o): estgated writes its ledger as the user it runs as (under systemd: chown "
                "estgate: on it and on its -wal and -shm files)\n",
                path, (unsigned)geteuid(), (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
        return false;
    }
    return true;
}

int eg_ledger_open(const char *path, const eg_ledger_options *opt, eg_ledger **out)
{
    eg_ledger *lg = NULL;
    int rc = -1;

    if (path == NULL || out == NULL) {
        fprintf(stderr, "ledger: open: no path or no handle to return\n");
        goto out;
    }
    /* Connections are NOMUTEX (each used by one thread at a time), which needs this. */
    if (!sqlite3_threadsafe()) {
        fprintf(stderr, "ledger: SQLite is built without thread support\n");
        goto out;
    }
    if ((lg = ledger_new(path, opt)) == NULL || lock_ledger(lg) != 0 || !writable(path) ||
        open_writer(lg) != 0 || migrate_db(lg->db, lg->path, LEDGER_SCHEMA_VERSION) != 0 ||
        prepare_writer(lg) != 0 || fail_orphans(lg) != 0 || sync_parent_dir(path) != 0)
        goto out;
    space_check(lg);
    /* One reader now, so that a database readers cannot open fails here, not later. */
    if ((lg->readers = reader_open(path)) == NULL)
        goto out;
    if (pthread_create(&lg->writer, NULL, writer_main, lg) != 0) {
        fprintf(stderr, "ledger: open %s: cannot start the writer thread\n", path);
        goto out;
    }
    lg->running = 1;
    lg->keeper_kick = 1; /* a first pass at once: key parts that aged while estgated was down */
    if (pthread_create(&lg->keeper, NULL, keeper_main, lg) != 0) {
        fprintf(stderr, "ledger: open %s: cannot start the pruning thread\n", path);
        goto out;
    }
    lg->keeper_running = 1;
    *out = lg;
    lg = NULL;
    rc = 0;
out:
    eg_ledger_close(lg);
    return rc;
}

/* The keeper and the writer stopped, after the writer has run what is queued; the writer's
   connection closed. Later writes fail with "operation after close". */
static void stop_writing(eg_ledger *lg)
{
    /* The keeper first: its passes go through the writer. */
    if (lg->keeper_running) {
        pthread_mutex_lock(&lg->lock);
        lg->keeper_stop = 1;
        pthread_cond_signal(&lg->keeper_wake);
        pthread_mutex_unlock(&lg->lock);
        pthread_join(lg->keeper, NULL);
        lg->keeper_running = 0;
    }
    pthread_mutex_lock(&lg->lock);
    lg->stopping = 1;
    pthread_cond_signal(&lg->wake);
    pthread_mutex_unlock(&lg->lock);
    if (lg->running) {
        pthread_join(lg->writer, NULL);
        lg->running = 0;
    }
    for (int i = 0; i < W_NSTMT; i++) {
        sqlite3_finalize(lg->st[i]);
        lg->st[i] = NULL;
    }
    if (lg->db != NULL && sqlite3_close(lg->db) != SQLITE_OK)
        log_db(lg->db, "close");
    lg->db = NULL;
}

void eg_ledger_stop(eg_ledger *lg)
{
    if (lg != NULL && lg->sync_ready)
        stop_writing(lg);
}

void eg_ledger_close(eg_ledger *lg)
{
    ledger_reader *r;

    if (lg == NULL)
        return;
    if (lg->sync_ready)
        stop_writing(lg);
    while ((r = lg->readers) != NULL) {
        lg->readers = r->next;
        reader_free(r);
    }
    /* Intents still in flight stay pending and are offered for retry at the next open (a
       serverkeygen one is failed there instead: fail_orphans). */
    free(lg->flight);
    if (lg->db_fd >= 0)
        close(lg->db_fd); /* after the database, for SQLite's locks; and before the... */
    if (lg->lock_fd >= 0)
        close(lg->lock_fd); /* ...lock file, after it: the next owner must not overlap us */
    if (lg->sync_ready) {
        pthread_cond_destroy(&lg->wake);
        pthread_cond_destroy(&lg->keeper_wake);
        pthread_mutex_destroy(&lg->prune_lock);
        pthread_mutex_destroy(&lg->lock);
        pthread_mutex_destroy(&lg->rlock);
    }
    free(lg->path);
    free(lg);
}

/* --- the API --- */

static int intent_valid(const eg_issue_intent *in)
{
    return in != NULL && in->profile != NULL && in->principal != NULL && in->serial != NULL &&
           in->serial_len >= 1 && in->serial_len <= LEDGER_SERIAL_MAX && in->subject != NULL;
}

int eg_ledger_begin_issue(eg_ledger *lg, const eg_issue_intent *in, eg_intent_result *out)
{
    ledger_op op = {.kind = OP_BEGIN, .intent = in};
    int rc = -1;

    if (lg == NULL || out == NULL || !intent_valid(in)) {
        fprintf(stderr, "ledger: begin_issue: incomplete intent or serial not 1-20 octets\n");
        goto out;
    }
    if ((rc = submit(lg, &op)) != 0)
        goto out;
    *out = op.res;
out:
    return rc;
}

int eg_ledger_complete_issue(eg_ledger *lg, int64_t id, const uint8_t *der, size_t len)
{
    return eg_ledger_complete_issue_audit(lg, id, der, len, NULL);
}

int eg_ledger_complete_issue_audit(eg_ledger *lg, int64_t id, const uint8_t *der, size_t len,
                                   const eg_audit_event *ev)
{
    return eg_ledger_complete_issue_key(lg, id, der, len, NULL, 0, ev);
}

int eg_ledger_complete_issue_key(eg_ledger *lg, int64_t id, const uint8_t *der, size_t len,
                                 const uint8_t *key_part, size_t key_part_len,
                                 const eg_audit_event *ev)
{
    ledger_op op = {.kind = OP_COMPLETE,
                    .id = id,
                    .der = der,
                    .der_len = len,
                    .key_part = key_part,
                    .key_part_len = key_part_len,
                    .event = ev};

    if (lg == NULL || der == NULL || len == 0 || len > INT_MAX ||
        (key_part != NULL && (key_part_len == 0 || key_part_len > INT_MAX)) ||
        (ev != NULL && ev->type == NULL)) {
        fprintf(stderr, "ledger: complete_issue: no certificate, or an audit event without type\n");
        return -1;
    }
    return submit(lg, &op);
}

int eg_ledger_fail_issue(eg_ledger *lg, int64_t id, const char *reason)
{
    ledger_op op = {.kind = OP_FAIL, .id = id, .text = reason};
    int rc = -1;

    if (lg == NULL)
        goto out;
    rc = submit(lg, &op);
out:
    return rc;
}

int eg_ledger_audit(eg_ledger *lg, const eg_audit_event *ev)
{
    ledger_op op = {.kind = OP_AUDIT, .event = ev};
    int rc = -1;

    if (lg == NULL || ev == NULL || ev->type == NULL) {
        fprintf(stderr, "ledger: audit: event without a type\n");
        goto out;
    }
    rc = submit(lg, &op);
out:
    return rc;
}

int eg_ledger_writer_pragma(eg_ledger *lg, const char *name, char **value)
{
    ledger_op op = {.kind = OP_PRAGMA, .text = name};
    int rc = -1;

    if (lg == NULL || name == NULL || value == NULL || submit(lg, &op) != 0)
        goto out;
    *value = op.value;
    rc = 0;
out:
    return rc;
}

int eg_ledger_find_serial(eg_ledger *lg, const uint8_t *serial, size_t len, uint8_t **der,
                          size_t *der_len)
{
    ledger_reader *r = NULL;
    sqlite3_stmt *st = NULL;
    const void *blob;
    uint8_t *copy = NULL;
    size_t n;
    int rc = -1, step;

    if (lg == NULL || serial == NULL || len > INT_MAX || der == NULL || der_len == NULL ||
        (r = reader_get(lg)) == NULL)
        goto out;
    st = r->st[R_FIND_SERIAL];
    sqlite3_bind_blob(st, 1, serial, (int)len, SQLITE_STATIC);
    if ((step = sqlite3_step(st)) == SQLITE_DONE) {
        rc = 0;
        goto out;
    }
    if (step != SQLITE_ROW) {
        log_db(r->db, "find_serial");
        goto out;
    }
    blob = sqlite3_column_blob(st, 0);
    n = (size_t)sqlite3_column_bytes(st, 0);
    if ((copy = malloc(n)) == NULL)
        goto out;
    memcpy(copy, blob, n);
    *der = copy;
    *der_len = n;
    copy = NULL;
    rc = 1;
out:
    if (st != NULL)
        stmt_clear(st); /* ends the read transaction, so WAL checkpoints can pass it */
    reader_put(lg, r);
    free(copy);
    return rc;
}

int64_t eg_ledger_count_issued(eg_ledger *lg)
{
    ledger_reader *r = NULL;
    sqlite3_stmt *st = NULL;
    int64_t rc = -1;

    if (lg == NULL || (r = reader_get(lg)) == NULL)
        goto out;
    st = r->st[R_COUNT_ISSUED];
    if (sqlite3_step(st) != SQLITE_ROW) {
        log_db(r->db, "count_issued");
        goto out;
    }
    rc = sqlite3_column_int64(st, 0);
out:
    if (st != NULL)
        stmt_clear(st);
    reader_put(lg, r);
    return rc;
}

int eg_ledger_issued_since(eg_ledger *lg, int64_t since, eg_ledger_issued_fn fn, void *arg)
{
    /* The period's first row by a backward walk of the row ids (intents are recorded in time
       order), not a scan of the whole table; the audit row by its intent index. */
    static const char sql[] =
        "SELECT i.profile, i.principal, i.subject, i.created,"
        " EXISTS (SELECT 1 FROM audit a WHERE a.intent_id = i.id AND a.type = 'reissued')"
        " FROM issuance i"
        " WHERE i.id > coalesce((SELECT id FROM issuance WHERE created < ?1"
        " ORDER BY id DESC LIMIT 1), 0)"
        " AND i.created >= ?1 AND i.state = 'issued' ORDER BY i.id";
    ledger_reader *r = NULL;
    sqlite3_stmt *st = NULL;
    int rc = -1, step;

    if (lg == NULL || fn == NULL || (r = reader_get(lg)) == NULL)
        goto out;
    if (sqlite3_prepare_v2(r->db, sql, -1, &st, NULL) != SQLITE_OK) {
        log_db(r->db, "issued_since");
        goto out;
    }
    sqlite3_bind_int64(st, 1, since);
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (fn(arg, (const char *)sqlite3_column_text(st, 0),
               (const char *)sqlite3_column_text(st, 1), (const char *)sqlite3_column_text(st, 2),
               sqlite3_column_int(st, 4) != 0, sqlite3_column_int64(st, 3)) != 0)
            goto out;
    }
    if (step != SQLITE_DONE) {
        log_db(r->db, "issued_since");
        goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(st); /* ends the read transaction */
    reader_put(lg, r);
    return rc;
}

void eg_ledger_get_stats(eg_ledger *lg, eg_ledger_stats *out)
{
    if (lg == NULL || out == NULL)
        return;
    pthread_mutex_lock(&lg->lock);
    *out = lg->stats;
    pthread_mutex_unlock(&lg->lock);
}

void eg_ledger_set_retention(eg_ledger *lg, const eg_ledger_retention *keep)
{
    if (lg == NULL || keep == NULL)
        return;
    pthread_mutex_lock(&lg->lock);
    lg->keep = *keep;
    lg->keeper_kick = 1; /* a pass now, with the new limits */
    pthread_cond_signal(&lg->keeper_wake);
    pthread_mutex_unlock(&lg->lock);
}

int eg_ledger_drop_key_parts(eg_ledger *lg, uint64_t *dropped)
{
    if (dropped != NULL)
        *dropped = 0;
    return lg != NULL ? drop_pass(lg, dropped) : -1;
}

int eg_ledger_find_issued(eg_ledger *lg, const eg_issue_intent *in, eg_intent_result *out)
{
    eg_intent_result res = {0};
    ledger_reader *r = NULL;
    int rc = -1;

    if (lg == NULL || in == NULL || in->profile == NULL || in->principal == NULL || out == NULL ||
        (r = reader_get(lg)) == NULL)
        goto out;
    if ((rc = find_key_with(r->st[R_FIND_KEY], in, &res)) == 1 && res.state != EG_INTENT_ISSUED)
        rc = 0; /* pending: begin_issue decides between BUSY and RETRY */
    if (rc == 1) {
        *out = res;
        memset(&res, 0, sizeof(res));
    }
out:
    free(res.cert);
    free(res.key_part);
    reader_put(lg, r);
    return rc;
}

int eg_ledger_prune_audit(eg_ledger *lg, uint64_t *deleted)
{
    if (deleted != NULL)
        *deleted = 0;
    return lg != NULL ? prune_pass(lg, deleted) : -1;
}
