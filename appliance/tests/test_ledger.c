/* The ledger: schema, idempotent issuance, group commit, and what survives a crash. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <sqlite3.h>

#include "cu_run.h"
#include "ledger.h"
#include "ledger_local.h"
#include "tmpdir.h"

static char dir[PATH_MAX];
static char db_path[PATH_MAX + 16];

/* --- fixture: a fresh database in its own directory per test --- */

static void remove_dir(void)
{
    eg_tmpdir_remove(dir);
}

static void fresh_dir(void)
{
    if (eg_tmpdir_make(dir, sizeof(dir), NULL, "test_ledger") != 0)
        abort();
    snprintf(db_path, sizeof(db_path), "%s/ledger.db", dir);
}

/* --- requests and certificates made up from a number --- */

typedef struct req {
    eg_issue_intent in;
    char principal[32];
    char subject[48];
    uint8_t serial[8];
} req;

static void set_serial(req *r, uint32_t serial)
{
    r->serial[0] = 0x40; /* positive, no leading zero */
    for (int i = 0; i < 4; i++)
        r->serial[4 + i] = (uint8_t)(serial >> (24 - 8 * i));
    r->in.serial = r->serial;
    r->in.serial_len = sizeof(r->serial);
}

/* The request for key; its serial is key unless changed with set_serial. */
static void req_init(req *r, uint32_t key)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->principal, sizeof(r->principal), "device-%u", key % 7);
    snprintf(r->subject, sizeof(r->subject), "CN=device-%u,O=Test", key);
    r->in.profile = "iot";
    r->in.principal = r->principal;
    r->in.subject = r->subject;
    r->in.not_after = 2000000000;
    for (int i = 0; i < 4; i++)
        r->in.request_hash[i] = (uint8_t)(key >> (24 - 8 * i));
    set_serial(r, key);
}

#define CERT_MAX 700

static size_t fake_cert(uint32_t key, uint8_t *der)
{
    size_t len = 600 + key % 97;

    for (size_t i = 0; i < len; i++)
        der[i] = (uint8_t)(key * 31 + i);
    der[0] = 0x30;
    return len;
}

static eg_ledger *open_ledger(const eg_ledger_options *opt)
{
    eg_ledger *lg = NULL;

    CU_ASSERT_EQUAL_FATAL(eg_ledger_open(db_path, opt, &lg), 0);
    return lg;
}

/* begin + complete for key; 0 when it was NEW and is now issued. */
static int issue(eg_ledger *lg, uint32_t key, int64_t *id)
{
    eg_intent_result res;
    uint8_t der[CERT_MAX];
    req r;

    req_init(&r, key);
    if (eg_ledger_begin_issue(lg, &r.in, &res) != 0 || res.state != EG_INTENT_NEW)
        return -1;
    if (eg_ledger_complete_issue(lg, res.id, der, fake_cert(key, der)) != 0)
        return -1;
    if (id != NULL)
        *id = res.id;
    return 0;
}

static int has_cert(eg_ledger *lg, uint32_t key)
{
    uint8_t want[CERT_MAX], *der = NULL;
    size_t len = 0, want_len = fake_cert(key, want);
    req r;
    int ok;

    req_init(&r, key);
    ok = eg_ledger_find_serial(lg, r.serial, sizeof(r.serial), &der, &len) == 1 &&
         len == want_len && memcmp(der, want, len) == 0;
    free(der);
    return ok;
}

/* --- looking inside with a connection of our own --- */

static int64_t sql_int(const char *sql, int64_t bind)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;

    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_bind_parameter_count(st) > 0)
            sqlite3_bind_int64(st, 1, bind);
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int sql_text_is(const char *sql, const char *want)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    const unsigned char *v;
    int ok = 0;

    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
        (v = sqlite3_column_text(st, 0)) != NULL)
        ok = strcmp((const char *)v, want) == 0;
    if (!ok)
        fprintf(stderr, "\n  %s: not %s\n", sql, want);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ok;
}

static int writer_pragma_is(eg_ledger *lg, const char *name, const char *want)
{
    char *v = NULL;
    int ok = eg_ledger_writer_pragma(lg, name, &v) == 0 && strcmp(v, want) == 0;

    free(v);
    return ok;
}

/* --- schema --- */

static void test_schema_is_wal_full_sync_with_version(void)
{
    eg_ledger *lg = open_ledger(NULL);

    CU_ASSERT(writer_pragma_is(lg, "journal_mode", "wal"));
    CU_ASSERT(writer_pragma_is(lg, "synchronous", "2"));
    CU_ASSERT(writer_pragma_is(lg, "foreign_keys", "1"));
    CU_ASSERT(writer_pragma_is(lg, "user_version", "7"));
    CU_ASSERT(sql_text_is(
        "SELECT sql LIKE '%WHERE fail_reason IS NULL AND superseded IS NULL' FROM sqlite_schema"
        " WHERE name = 'issuance_key'",
        "1"));
    CU_ASSERT(sql_text_is("SELECT group_concat(name) FROM (SELECT name FROM pragma_table_info("
                          "'audit') ORDER BY cid)",
                          "id,time,type,profile,principal,peer,detail,intent_id"));
    eg_ledger_close(lg);
    lg = open_ledger(NULL); /* an existing ledger opens without migrating again */
    CU_ASSERT(writer_pragma_is(lg, "user_version", "7"));
    eg_ledger_close(lg);
}

/*
 * Completing an intent sets state, completed and cert. If any index read one of them
 * (a partial index's condition included), every completion would rewrite a random
 * leaf of that index as well as the row.
 */
static void test_completion_rewrites_no_index(void)
{
    static const char sql[] = "EXPLAIN UPDATE issuance SET state = 'issued', completed = 1,"
                              " cert = x'30' WHERE id = 1 AND state = 'pending'";
    eg_ledger *lg = open_ledger(NULL);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int steps = 0, index_writes = 0;

    eg_ledger_close(lg);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    CU_ASSERT_EQUAL_FATAL(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *opcode = (const char *)sqlite3_column_text(st, 1);

        steps++;
        index_writes += strcmp(opcode, "IdxInsert") == 0 || strcmp(opcode, "IdxDelete") == 0;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    CU_ASSERT(steps > 0);
    CU_ASSERT_EQUAL(index_writes, 0);
}

/* A row as version 1 stored it, written with a connection of our own. */
static void v1_row(sqlite3 *db, uint32_t key, const char *state, const char *reason)
{
    static const char sql[] =
        "INSERT INTO issuance (created, profile, principal, request_hash, serial, subject,"
        " not_after, state, fail_reason, completed, cert)"
        " VALUES (1, ?1, ?2, ?3, ?4, ?5, 2000000000, ?6, ?7, ?8, ?9)";
    uint8_t der[CERT_MAX];
    sqlite3_stmt *st = NULL;
    req r;

    req_init(&r, key);
    CU_ASSERT_EQUAL_FATAL(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_text(st, 1, r.in.profile, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r.in.principal, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, r.in.request_hash, sizeof(r.in.request_hash), SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, r.serial, sizeof(r.serial), SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r.in.subject, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, state, -1, SQLITE_STATIC);
    if (reason != NULL)
        sqlite3_bind_text(st, 7, reason, -1, SQLITE_STATIC);
    if (strcmp(state, "pending") != 0)
        sqlite3_bind_int64(st, 8, 2);
    if (strcmp(state, "issued") == 0)
        sqlite3_bind_blob(st, 9, der, (int)fake_cert(key, der), SQLITE_TRANSIENT);
    CU_ASSERT_EQUAL(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
}

/* begin_issue for key with a serial of its own gives want. */
static int begin_state_is(eg_ledger *lg, uint32_t key, eg_intent_state want)
{
    eg_intent_result res = {0};
    req r;
    int ok;

    req_init(&r, key);
    set_serial(&r, key + 1000); /* an old row's serial stays taken */
    ok = eg_ledger_begin_issue(lg, &r.in, &res) == 0 && res.state == want;
    free(res.cert);
    free(res.key_part);
    return ok;
}

static void test_version_1_ledger_migrates(void)
{
    sqlite3 *db = NULL;
    eg_ledger *lg;

    CU_ASSERT_EQUAL_FATAL(eg_ledger_create_at_version(db_path, 1), 0);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db_path, &db), SQLITE_OK);
    v1_row(db, 1, "failed", NULL); /* version 1 let a failure go without a reason */
    v1_row(db, 2, "failed", "token refused");
    v1_row(db, 3, "issued", NULL);
    v1_row(db, 4, "pending", NULL); /* a process died between intent and certificate */
    sqlite3_close(db);
    CU_ASSERT(sql_text_is("PRAGMA user_version", "1"));

    lg = open_ledger(NULL);
    CU_ASSERT(writer_pragma_is(lg, "user_version", "7"));
    CU_ASSERT(begin_state_is(lg, 1, EG_INTENT_NEW)); /* a failed key may be issued again */
    CU_ASSERT(begin_state_is(lg, 2, EG_INTENT_NEW));
    CU_ASSERT(begin_state_is(lg, 3, EG_INTENT_ISSUED));
    CU_ASSERT(begin_state_is(lg, 4, EG_INTENT_RETRY));
    CU_ASSERT(has_cert(lg, 3));
    eg_ledger_close(lg);
    CU_ASSERT(sql_text_is("SELECT group_concat(fail_reason, '|') FROM (SELECT fail_reason"
                          " FROM issuance WHERE state = 'failed' ORDER BY id)",
                          "no reason given|token refused"));
}

/* Version 3 named the default profile '' in issuance; version 4 names it "default", as the
   audit rows do, and a retry of an old request still gets its certificate. */
static void test_version_3_default_profile_is_named(void)
{
    sqlite3 *db = NULL;
    eg_intent_result res = {0};
    eg_ledger *lg;
    req r;

    CU_ASSERT_EQUAL_FATAL(eg_ledger_create_at_version(db_path, 3), 0);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db_path, &db), SQLITE_OK);
    v1_row(db, 1, "issued", NULL);
    v1_row(db, 2, "issued", NULL);
    CU_ASSERT_EQUAL(
        sqlite3_exec(db, "UPDATE issuance SET profile = '' WHERE id = 1", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);

    lg = open_ledger(NULL);
    req_init(&r, 1);
    r.in.profile = "default";
    set_serial(&r, 1001);
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    CU_ASSERT_EQUAL(res.state, EG_INTENT_ISSUED);
    free(res.cert);
    CU_ASSERT(begin_state_is(lg, 2, EG_INTENT_ISSUED)); /* "iot" stays "iot" */
    eg_ledger_close(lg);
    CU_ASSERT(sql_text_is("SELECT group_concat(profile, '|') FROM (SELECT profile FROM issuance"
                          " ORDER BY id)",
                          "default|iot"));
}

static void test_newer_schema_is_refused(void)
{
    eg_ledger *lg = NULL;
    sqlite3 *db = NULL;

    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db_path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    CU_ASSERT_EQUAL(eg_ledger_open(db_path, NULL, &lg), -1);
    CU_ASSERT_PTR_NULL(lg);
}

static void test_second_open_is_refused(void)
{
    eg_ledger *lg = open_ledger(NULL), *again = NULL;

    CU_ASSERT_EQUAL(eg_ledger_open(db_path, NULL, &again), -1);
    CU_ASSERT_PTR_NULL(again);
    eg_ledger_close(lg);
    lg = open_ledger(NULL);
    eg_ledger_close(lg);
}

/* A ledger restored as root is named, with its owner, to the user estgated runs as; before,
   SQLite's "attempt to write a readonly database" was all. Run as that user: as root, in a
   child that becomes nobody. */
static void test_a_ledger_this_user_cannot_write_is_named(void)
{
    char lock[PATH_MAX + 32], log[PATH_MAX + 32];
    eg_ledger *lg = open_ledger(NULL);
    pid_t pid;
    int status = -1;

    eg_ledger_close(lg);
    snprintf(lock, sizeof(lock), "%s.lock", db_path);
    snprintf(log, sizeof(log), "%s/stderr.txt", dir);
    CU_ASSERT_EQUAL_FATAL(chmod(db_path, 0644), 0);
    if (geteuid() == 0) {
        /* nobody may make the lock file, and read but not write the database */
        CU_ASSERT_EQUAL_FATAL(unlink(lock), 0);
        CU_ASSERT_EQUAL_FATAL(chmod(dir, 0777), 0);
    } else {
        CU_ASSERT_EQUAL_FATAL(chmod(db_path, 0444), 0);
    }
    fflush(NULL);
    if ((pid = fork()) == 0) {
        if ((geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) ||
            freopen(log, "w", stderr) == NULL)
            _exit(2);
        status = eg_ledger_open(db_path, NULL, &lg) == -1 ? 0 : 1;
        fflush(stderr);
        _exit(status);
    }
    CU_ASSERT_FATAL(pid > 0);
    waitpid(pid, &status, 0);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    {
        char said[4096] = {0};
        FILE *fp = fopen(log, "r");

        CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
        CU_ASSERT(fread(said, 1, sizeof(said) - 1, fp) > 0);
        fclose(fp);
        CU_ASSERT_PTR_NOT_NULL(strstr(said, "cannot be written by this user (uid "));
    }
    chmod(db_path, 0644);
    unlink(lock);
    unlink(log);
}

/* --- issuance --- */

static void test_issued_request_returns_same_certificate(void)
{
    eg_ledger *lg = open_ledger(NULL);
    uint8_t der[CERT_MAX], *found = NULL;
    size_t len = fake_cert(1, der), found_len = 0;
    eg_intent_result first, again;
    req r;

    req_init(&r, 1);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &first), 0);
    CU_ASSERT_EQUAL(first.state, EG_INTENT_NEW);
    CU_ASSERT(first.id > 0);
    CU_ASSERT_EQUAL(eg_ledger_find_serial(lg, r.serial, sizeof(r.serial), &found, &found_len),
                    0); /* pending is not a certificate */
    CU_ASSERT_EQUAL(eg_ledger_count_issued(lg), 0);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_complete_issue(lg, first.id, der, len), 0);

    set_serial(&r, 999); /* a retried request draws a new serial; the recorded one wins */
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &again), 0);
    CU_ASSERT_EQUAL(again.state, EG_INTENT_ISSUED);
    CU_ASSERT_EQUAL(again.id, first.id);
    CU_ASSERT_EQUAL_FATAL(again.cert_len, len);
    CU_ASSERT(memcmp(again.cert, der, len) == 0);
    set_serial(&r, 1);
    CU_ASSERT(again.serial_len == sizeof(r.serial) && memcmp(again.serial, r.serial, 8) == 0);
    free(again.cert);

    CU_ASSERT_EQUAL(eg_ledger_count_issued(lg), 1);
    CU_ASSERT(has_cert(lg, 1));
    CU_ASSERT_EQUAL(eg_ledger_complete_issue(lg, first.id, der, len), -1); /* not in flight */
    eg_ledger_close(lg);
}

/*
 * An issuance its caller will not send again (too old) leaves the request key with its
 * certificate kept, and the same request begins anew in the same operation; a second caller
 * superseding it too finds the new intent.
 */
static void test_a_superseded_issuance_keeps_its_certificate(void)
{
    eg_ledger *lg = open_ledger(NULL);
    uint8_t der[CERT_MAX], der2[CERT_MAX], *found = NULL;
    size_t len = fake_cert(1, der), len2 = fake_cert(2, der2), found_len = 0;
    eg_intent_result first, renewed, late;
    req r;

    req_init(&r, 1);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &first), 0);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_complete_issue(lg, first.id, der, len), 0);

    set_serial(&r, 2);
    r.in.supersede_id = first.id;
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &renewed), 0);
    CU_ASSERT_EQUAL(renewed.state, EG_INTENT_NEW);
    CU_ASSERT(renewed.id != first.id);
    /* Another caller that found the old one too: the new intent is in flight. */
    set_serial(&r, 3);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &late), 0);
    CU_ASSERT_EQUAL(late.state, EG_INTENT_BUSY);
    CU_ASSERT_EQUAL(late.id, renewed.id);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_complete_issue(lg, renewed.id, der2, len2), 0);

    /* Both certificates stay, each under its serial; the request now answers the new one. */
    CU_ASSERT_EQUAL(eg_ledger_count_issued(lg), 2);
    set_serial(&r, 1);
    CU_ASSERT_EQUAL(eg_ledger_find_serial(lg, r.serial, sizeof(r.serial), &found, &found_len), 1);
    CU_ASSERT(found_len == len && found != NULL && memcmp(found, der, len) == 0);
    free(found);
    set_serial(&r, 4);
    r.in.supersede_id = 0;
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &late), 0);
    CU_ASSERT_EQUAL(late.state, EG_INTENT_ISSUED);
    CU_ASSERT_EQUAL(late.id, renewed.id);
    CU_ASSERT(late.cert_len == len2 && memcmp(late.cert, der2, len2) == 0);
    free(late.cert);
    CU_ASSERT(sql_text_is("SELECT count(*) FROM issuance WHERE superseded IS NOT NULL", "1"));
    eg_ledger_close(lg);
}

typedef struct race {
    eg_ledger *lg;
    pthread_barrier_t *start;
    uint32_t serial;
    int rc;
    eg_intent_result res;
} race;

static void *race_begin(void *arg)
{
    race *ra = arg;
    req r;

    req_init(&r, 7);
    set_serial(&r, ra->serial);
    pthread_barrier_wait(ra->start);
    ra->rc = eg_ledger_begin_issue(ra->lg, &r.in, &ra->res);
    return NULL;
}

static void test_request_in_flight_is_busy(void)
{
    enum { N = 8 };
    eg_ledger *lg = open_ledger(NULL);
    pthread_barrier_t start;
    pthread_t t[N];
    race ra[N];
    int news = 0, busy = 0;
    int64_t id = 0;

    pthread_barrier_init(&start, NULL, N);
    for (int i = 0; i < N; i++) {
        ra[i] = (race){.lg = lg, .start = &start, .serial = 100 + i};
        pthread_create(&t[i], NULL, race_begin, &ra[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(ra[i].rc, 0);
        news += ra[i].res.state == EG_INTENT_NEW;
        busy += ra[i].res.state == EG_INTENT_BUSY;
        if (ra[i].res.state == EG_INTENT_NEW)
            id = ra[i].res.id;
    }
    pthread_barrier_destroy(&start);
    CU_ASSERT_EQUAL(news, 1);
    CU_ASSERT_EQUAL(busy, N - 1);
    for (int i = 0; i < N; i++)
        CU_ASSERT(ra[i].res.id == id);
    eg_ledger_close(lg);
}

static void test_failed_attempt_can_be_retried(void)
{
    eg_ledger *lg = open_ledger(NULL);
    eg_intent_result first, second;
    uint8_t der[CERT_MAX];
    req r;

    req_init(&r, 3);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &first), 0);
    CU_ASSERT_EQUAL(first.state, EG_INTENT_NEW);
    CU_ASSERT_EQUAL(eg_ledger_fail_issue(lg, first.id, "token refused"), 0);
    CU_ASSERT_EQUAL(eg_ledger_fail_issue(lg, first.id, "again"), -1);
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &r.in, &second), -2); /* its serial stays taken */
    set_serial(&r, 33);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &second), 0);
    CU_ASSERT_EQUAL(second.state, EG_INTENT_NEW);
    CU_ASSERT(second.id != first.id);
    CU_ASSERT_EQUAL(eg_ledger_complete_issue(lg, first.id, der, fake_cert(3, der)), -1);
    CU_ASSERT_EQUAL(eg_ledger_complete_issue(lg, second.id, der, fake_cert(3, der)), 0);
    eg_ledger_close(lg);
    CU_ASSERT(sql_text_is("SELECT state || ':' || fail_reason FROM issuance WHERE id = 1",
                          "failed:token refused"));
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance WHERE state = 'issued'", 0), 1);
}

/* The process may write no file octet while on (what a full disk does to SQLite's writes),
   and any size again once off. */
static void refuse_writes(bool on)
{
    struct rlimit rl;

    CU_ASSERT_EQUAL_FATAL(getrlimit(RLIMIT_FSIZE, &rl), 0);
    rl.rlim_cur = on ? 0 : rl.rlim_max;
    CU_ASSERT_EQUAL_FATAL(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

/*
 * The disk refuses the certificate and then the failure too: both calls fail and nothing is
 * half-written. Once the disk takes writes again, the same request is offered for retry with
 * its recorded serial, not refused as busy until a restart.
 */
static void test_refused_writes_leave_the_request_retryable(void)
{
    eg_ledger *lg = open_ledger(NULL);
    eg_intent_result first, again;
    uint8_t der[CERT_MAX];
    void (*was)(int) = signal(SIGXFSZ, SIG_IGN);
    req r;

    req_init(&r, 8);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &first), 0);
    CU_ASSERT_EQUAL(first.state, EG_INTENT_NEW);
    refuse_writes(true);
    CU_ASSERT_EQUAL(eg_ledger_complete_issue(lg, first.id, der, fake_cert(8, der)), -1);
    CU_ASSERT_EQUAL(eg_ledger_fail_issue(lg, first.id, "the certificate could not be recorded"),
                    -1);
    refuse_writes(false);
    signal(SIGXFSZ, was);

    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &again), 0);
    CU_ASSERT_EQUAL(again.state, EG_INTENT_RETRY);
    CU_ASSERT_EQUAL(again.id, first.id);
    CU_ASSERT(again.serial_len == sizeof(r.serial) && memcmp(again.serial, r.serial, 8) == 0);
    CU_ASSERT_EQUAL(eg_ledger_complete_issue(lg, again.id, der, fake_cert(8, der)), 0);
    CU_ASSERT(has_cert(lg, 8));
    CU_ASSERT_EQUAL(issue(lg, 9, NULL), 0); /* and the ledger goes on */
    eg_ledger_close(lg);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance WHERE state = 'issued'", 0), 2);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance", 0), 2);
}

/* stderr into dir/stderr.log from log_capture until log_read, which returns it (free it). */
static int saved_stderr = -1;

static void log_capture(void)
{
    char path[PATH_MAX + 16];
    int fd;

    fflush(stderr);
    snprintf(path, sizeof(path), "%s/stderr.log", dir);
    saved_stderr = dup(2);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CU_ASSERT_FATAL(fd >= 0 && saved_stderr >= 0);
    dup2(fd, 2);
    close(fd);
}

static char *log_read(void)
{
    char path[PATH_MAX + 16], *text = calloc(1, 1 << 16);
    size_t n = 0;
    FILE *f;

    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    snprintf(path, sizeof(path), "%s/stderr.log", dir);
    if (text != NULL && (f = fopen(path, "r")) != NULL) {
        n = fread(text, 1, (1 << 16) - 1, f);
        fclose(f);
    }
    if (text != NULL)
        text[n] = '\0';
    return text;
}

/* The captured log has needle; says what it has instead when not. */
static bool log_has(const char *text, const char *needle)
{
    bool has = text != NULL && strstr(text, needle) != NULL;

    if (!has)
        fprintf(stderr, "\n  the log has no \"%s\":\n%s\n", needle, text ? text : "");
    return has;
}

/*
 * Another process holds the database's write lock (a backup tool's BEGIN EXCLUSIVE): the
 * issuance fails, the log names the lock and what to do, once, and says when writes go
 * through again; nothing was recorded while it held it.
 */
static void test_a_held_lock_is_an_outage_with_a_hint(void)
{
    eg_ledger *lg = open_ledger(NULL);
    sqlite3 *other = NULL;
    char *log;

    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db_path, &other), SQLITE_OK);
    CU_ASSERT_EQUAL_FATAL(sqlite3_exec(other, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    log_capture();
    CU_ASSERT_EQUAL(issue(lg, 30, NULL), -1); /* after LEDGER_BUSY_MS */
    CU_ASSERT_EQUAL(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    CU_ASSERT_EQUAL(issue(lg, 31, NULL), 0);
    eg_ledger_close(lg);
    log = log_read();
    CU_ASSERT(log_has(log, "cannot write: database is locked; another process holds the "
                           "ledger's lock (a backup? sqlite3 -readonly with VACUUM INTO copies "
                           "it without holding it: see the operator guide)"));
    CU_ASSERT(log_has(log, "the ledger can write again, after 1 failed writes in "));
    CU_ASSERT(log != NULL && strstr(log, "ledger: begin: ") == NULL);
    free(log);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance", 0), 1);
}

/*
 * The ledger's directory removed under a running ledger: the next issuance is refused, not
 * written into the unlinked file, and the log says what happened and what to do, once. A
 * second ledger may then start on the path; the first still records nothing.
 */
static void test_a_removed_database_is_an_outage(void)
{
    eg_ledger *lg = open_ledger(NULL), *again = NULL;
    char *log, *first;

    CU_ASSERT_EQUAL(issue(lg, 40, NULL), 0);
    eg_tmpdir_remove(dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0700), 0);
    log_capture();
    CU_ASSERT_EQUAL(issue(lg, 41, NULL), -1);
    CU_ASSERT_EQUAL(issue(lg, 42, NULL), -1);
    CU_ASSERT_EQUAL(eg_ledger_open(db_path, NULL, &again), 0);
    CU_ASSERT_EQUAL(issue(lg, 43, NULL), -1);
    log = log_read();
    CU_ASSERT(log_has(log, "ledger.db: the database file was removed or replaced while estgated "
                           "ran; restart estgated after restoring it. Nothing is issued until "
                           "then; enrollments are answered 503 with Retry-After\n"));
    first = log != NULL ? strstr(log, "removed or replaced") : NULL;
    CU_ASSERT(first != NULL && strstr(first + 1, "removed or replaced") == NULL); /* said once */
    free(log);
    eg_ledger_close(again);
    eg_ledger_close(lg);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance", 0), 0);
}

/* The lock file deleted under a running ledger: a second one is still refused. */
static void test_a_removed_lock_file_still_locks(void)
{
    eg_ledger *lg = open_ledger(NULL), *again = NULL;
    char lockpath[PATH_MAX + 32];

    snprintf(lockpath, sizeof(lockpath), "%s.lock", db_path);
    CU_ASSERT_EQUAL_FATAL(unlink(lockpath), 0);
    CU_ASSERT_EQUAL(eg_ledger_open(db_path, NULL, &again), -1);
    CU_ASSERT_PTR_NULL(again);
    eg_ledger_close(again);
    CU_ASSERT_EQUAL(issue(lg, 44, NULL), 0);
    eg_ledger_close(lg);
}

/*
 * eg_ledger_stop, for a daemon that exits with requests stuck on the token: what was committed
 * stays, a write after it fails instead of touching a closed connection, and an intent left
 * pending is offered for retry at the next open.
 */
static void test_a_stopped_ledger_refuses_writes(void)
{
    eg_ledger *lg = open_ledger(NULL);
    eg_intent_result pending, again;
    req r;

    CU_ASSERT_EQUAL(issue(lg, 50, NULL), 0);
    req_init(&r, 51);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &pending), 0);
    eg_ledger_stop(lg);
    CU_ASSERT_EQUAL(issue(lg, 52, NULL), -1);
    CU_ASSERT(has_cert(lg, 50)); /* readers go on */
    eg_ledger_close(lg);
    lg = open_ledger(NULL);
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &r.in, &again), 0);
    CU_ASSERT_EQUAL(again.state, EG_INTENT_RETRY);
    CU_ASSERT_EQUAL(again.id, pending.id);
    eg_ledger_close(lg);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance", 0), 2);
}

static void test_failure_without_reason_frees_its_key(void)
{
    eg_ledger *lg = open_ledger(NULL);
    eg_intent_result res;
    req r;

    req_init(&r, 5);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    CU_ASSERT_EQUAL(eg_ledger_fail_issue(lg, res.id, NULL), 0);
    CU_ASSERT(begin_state_is(lg, 5, EG_INTENT_NEW));
    eg_ledger_close(lg);
    CU_ASSERT(sql_text_is("SELECT fail_reason FROM issuance WHERE id = 1", "no reason given"));
}

static void test_serial_collision_is_reported_apart(void)
{
    eg_ledger *lg = open_ledger(NULL);
    eg_intent_result res, untouched;
    req a, b;

    req_init(&a, 10);
    req_init(&b, 11);
    set_serial(&b, 10);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &a.in, &res), 0);
    memset(&untouched, 0xa5, sizeof(untouched));
    res = untouched;
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &b.in, &res), -2);
    CU_ASSERT(memcmp(&res, &untouched, sizeof(res)) == 0);
    set_serial(&b, 11);
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &b.in, &res), 0);
    CU_ASSERT_EQUAL(res.state, EG_INTENT_NEW);
    b.in.serial_len = 21;
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &b.in, &res), -1);
    eg_ledger_close(lg);
}

/* --- a pending row left by a process that died --- */

static void begin_and_die(int fd)
{
    eg_ledger *lg = NULL;
    eg_intent_result res;
    req r;

    req_init(&r, 42);
    if (eg_ledger_open(db_path, NULL, &lg) != 0 || eg_ledger_begin_issue(lg, &r.in, &res) != 0 ||
        res.state != EG_INTENT_NEW || write(fd, &res.id, sizeof(res.id)) != sizeof(res.id))
        _exit(1);
    _exit(0); /* no complete, no close: as if the token had hung and the process was killed */
}

static void test_pending_row_of_dead_process_is_retried(void)
{
    eg_intent_result res, busy;
    int fds[2], status = -1;
    int64_t id = 0;
    eg_ledger *lg;
    pid_t pid;
    req r;

    CU_ASSERT_EQUAL_FATAL(pipe(fds), 0);
    if ((pid = fork()) == 0)
        begin_and_die(fds[1]);
    close(fds[1]);
    CU_ASSERT_EQUAL(read(fds[0], &id, sizeof(id)), sizeof(id));
    close(fds[0]);
    CU_ASSERT_EQUAL_FATAL(waitpid(pid, &status, 0), pid);
    CU_ASSERT_FATAL(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    lg = open_ledger(NULL);
    req_init(&r, 42);
    set_serial(&r, 4242);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    CU_ASSERT_EQUAL(res.state, EG_INTENT_RETRY);
    CU_ASSERT_EQUAL(res.id, id);
    set_serial(&r, 42);
    CU_ASSERT(res.serial_len == sizeof(r.serial) && memcmp(res.serial, r.serial, 8) == 0);
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &r.in, &busy), 0); /* now it is ours */
    CU_ASSERT_EQUAL(busy.state, EG_INTENT_BUSY);
    eg_ledger_close(lg);
}

/* An enrollment's intent (key 44) and a serverkeygen one (key 45) begun, then the process dies. */
static void begin_both_and_die(void)
{
    eg_ledger *lg = NULL;
    eg_intent_result res;
    req r;

    if (eg_ledger_open(db_path, NULL, &lg) != 0)
        _exit(1);
    req_init(&r, 44);
    if (eg_ledger_begin_issue(lg, &r.in, &res) != 0 || res.state != EG_INTENT_NEW)
        _exit(1);
    req_init(&r, 45);
    r.in.serverkeygen = true;
    if (eg_ledger_begin_issue(lg, &r.in, &res) != 0 || res.state != EG_INTENT_NEW)
        _exit(1);
    _exit(0);
}

/*
 * A serverkeygen intent left pending is failed at the next open, with why: its key was a
 * session object that died with the process, so no retry can ever complete it; the device's
 * retry begins a new intent. The enrollment's intent beside it is still offered for retry.
 */
static void test_pending_serverkeygen_row_of_dead_process_is_failed(void)
{
    eg_intent_result res;
    int status = -1;
    eg_ledger *lg;
    pid_t pid;
    req r;

    if ((pid = fork()) == 0)
        begin_both_and_die();
    CU_ASSERT_EQUAL_FATAL(waitpid(pid, &status, 0), pid);
    CU_ASSERT_FATAL(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CU_ASSERT(sql_text_is("SELECT count(*) FROM issuance WHERE state = 'pending'", "2"));

    lg = open_ledger(NULL);
    CU_ASSERT(sql_text_is("SELECT group_concat(state || ':' || serverkeygen) FROM "
                          "(SELECT state, serverkeygen FROM issuance ORDER BY id)",
                          "pending:0,failed:1"));
    CU_ASSERT(sql_text_is("SELECT fail_reason LIKE '%session object in the token%' AND "
                          "completed IS NOT NULL FROM issuance WHERE serverkeygen = 1",
                          "1"));
    req_init(&r, 44);
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    CU_ASSERT_EQUAL(res.state, EG_INTENT_RETRY);
    /* The device asks again: a new intent (and so a new key), not the dead one. */
    req_init(&r, 45);
    set_serial(&r, 4545);
    r.in.serverkeygen = true;
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    CU_ASSERT_EQUAL(res.state, EG_INTENT_NEW);
    CU_ASSERT(res.serial_len == sizeof(r.serial) && memcmp(res.serial, r.serial, 8) == 0);
    eg_ledger_close(lg);
}

/* --- serverkeygen's key parts --- */

static void sql_exec(const char *sql)
{
    sqlite3 *db = NULL;

    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db_path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* An encrypted serverkeygen answer for key, issued with its key part: the part's octets. */
static size_t key_part_of(uint32_t key, uint8_t *out)
{
    size_t len = 300 + key % 13;

    for (size_t i = 0; i < len; i++)
        out[i] = (uint8_t)(key * 17 + i * 3);
    out[0] = 0x30;
    return len;
}

static int issue_with_key_part(eg_ledger *lg, uint32_t key, int64_t *id)
{
    uint8_t der[CERT_MAX], part[400];
    eg_intent_result res;
    req r;

    req_init(&r, key);
    r.in.serverkeygen = true;
    if (eg_ledger_begin_issue(lg, &r.in, &res) != 0 || res.state != EG_INTENT_NEW)
        return -1;
    *id = res.id;
    return eg_ledger_complete_issue_key(lg, res.id, der, fake_cert(key, der), part,
                                        key_part_of(key, part), NULL);
}

/* begin_issue (or, find, the look-up without an intent) for key: ISSUED, with key's part or, when
   gone is set, with none. */
static void issued_with_key_part(eg_ledger *lg, uint32_t key, bool find, bool gone)
{
    uint8_t part[400];
    size_t len = key_part_of(key, part);
    eg_intent_result res = {0};
    req r;

    req_init(&r, key);
    set_serial(&r, key + 1000);
    r.in.serverkeygen = true;
    if (find) {
        CU_ASSERT_EQUAL(eg_ledger_find_issued(lg, &r.in, &res), 1);
    } else {
        CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    }
    CU_ASSERT_EQUAL(res.state, EG_INTENT_ISSUED);
    CU_ASSERT_PTR_NOT_NULL(res.cert);
    if (gone) {
        CU_ASSERT_PTR_NULL(res.key_part);
    } else {
        CU_ASSERT(res.key_part != NULL && res.key_part_len == len &&
                  memcmp(res.key_part, part, len) == 0);
    }
    free(res.cert);
    free(res.key_part);
}

/*
 * An encrypted serverkeygen answer's key part is kept with its certificate and comes back with
 * it to the same request (begin_issue, or find_issued, which records nothing), until it is a
 * day old: then the keeper's pass clears it, the certificate kept. Enrollments have none.
 */
static void test_key_part_is_kept_for_a_day(void)
{
    eg_ledger *lg = open_ledger(NULL);
    eg_intent_result res = {0};
    uint64_t dropped = 99;
    int64_t id = 0, old = 0;
    req r;

    CU_ASSERT_EQUAL_FATAL(issue_with_key_part(lg, 8, &old), 0);
    CU_ASSERT_EQUAL_FATAL(issue_with_key_part(lg, 9, &id), 0);
    CU_ASSERT_EQUAL_FATAL(issue(lg, 10, NULL), 0);
    issued_with_key_part(lg, 8, false, false);
    issued_with_key_part(lg, 8, true, false);
    req_init(&r, 10);
    CU_ASSERT_EQUAL(eg_ledger_find_issued(lg, &r.in, &res), 1);
    CU_ASSERT_PTR_NULL(res.key_part);
    free(res.cert);
    req_init(&r, 11); /* nothing issued for it, and find_issued records nothing */
    CU_ASSERT_EQUAL(eg_ledger_find_issued(lg, &r.in, &res), 0);
    CU_ASSERT_EQUAL(eg_ledger_drop_key_parts(lg, &dropped), 0);
    CU_ASSERT_EQUAL(dropped, 0); /* none is old yet */
    eg_ledger_close(lg);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance", 0), 3);

    /* Key 8's intent recorded a day and a second ago, key 9's a second less than a day. */
    sql_exec("UPDATE issuance SET created = created - 86401 WHERE id = (SELECT min(id) FROM "
             "issuance)");
    sql_exec("UPDATE issuance SET created = created - 86399 WHERE key_part IS NOT NULL AND "
             "id <> (SELECT min(id) FROM issuance)");
    lg = open_ledger(NULL);
    /* The keeper's first pass, at open, may have cleared it already: count what is left. */
    CU_ASSERT_EQUAL(eg_ledger_drop_key_parts(lg, NULL), 0);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance WHERE key_part IS NOT NULL", 0), 1);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance WHERE key_part IS NULL AND id = ?", old),
                    1);
    issued_with_key_part(lg, 8, false, true); /* the certificate stays, its key part does not */
    issued_with_key_part(lg, 9, false, false);
    CU_ASSERT(has_cert(lg, 8));
    eg_ledger_close(lg);
}

/* A superseded issuance is never sent again: its key part goes in the operation that
   supersedes it. */
static void test_superseding_drops_the_key_part(void)
{
    eg_ledger *lg = open_ledger(NULL);
    eg_intent_result res = {0};
    int64_t id = 0;
    req r;

    CU_ASSERT_EQUAL_FATAL(issue_with_key_part(lg, 12, &id), 0);
    req_init(&r, 12);
    set_serial(&r, 1012);
    r.in.serverkeygen = true;
    r.in.supersede_id = id;
    CU_ASSERT_EQUAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    CU_ASSERT_EQUAL(res.state, EG_INTENT_NEW);
    CU_ASSERT(sql_text_is("SELECT count(*) FROM issuance WHERE superseded IS NOT NULL AND "
                          "key_part IS NULL AND cert IS NOT NULL",
                          "1"));
    eg_ledger_close(lg);
}

/* A version 6 ledger gains the key_part column, empty, and its issued rows still answer. */
static void test_version_6_ledger_migrates(void)
{
    sqlite3 *db = NULL;
    eg_ledger *lg;

    CU_ASSERT_EQUAL_FATAL(eg_ledger_create_at_version(db_path, 6), 0);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db_path, &db), SQLITE_OK);
    v1_row(db, 1, "issued", NULL);
    sqlite3_close(db);
    lg = open_ledger(NULL);
    CU_ASSERT(writer_pragma_is(lg, "user_version", "7"));
    CU_ASSERT(begin_state_is(lg, 1, EG_INTENT_ISSUED));
    eg_ledger_close(lg);
    CU_ASSERT(sql_text_is("SELECT count(*) FROM issuance WHERE key_part IS NULL", "1"));
    CU_ASSERT(
        sql_text_is("SELECT count(*) FROM sqlite_schema WHERE name = 'issuance_key_part'", "1"));
}

/* --- audit --- */

typedef struct seen {
    int n, renewals;
    char last_principal[32], last_subject[48];
    int64_t first, last;
} seen;

static int note_issued(void *arg, const char *profile, const char *principal, const char *subject,
                       bool renewal, int64_t created)
{
    seen *s = arg;

    CU_ASSERT_STRING_EQUAL(profile, "iot");
    if (s->n++ == 0)
        s->first = created;
    CU_ASSERT(created >= s->last); /* oldest first */
    s->last = created;
    s->renewals += renewal;
    snprintf(s->last_principal, sizeof(s->last_principal), "%s", principal);
    snprintf(s->last_subject, sizeof(s->last_subject), "%s", subject);
    return 0;
}

/*
 * eg_ledger_issued_since (issue_limit's counts at start): issued rows of the period only,
 * oldest first, renewals told by their audit row; pending and failed rows are not counted.
 */
static void test_issued_since(void)
{
    eg_ledger *lg;
    eg_intent_result res;
    eg_audit_event ev = {.type = "reissued", .profile = "iot", .principal = "cert:ab"};
    uint8_t der[CERT_MAX];
    sqlite3 *db;
    seen s = {0};
    req r;

    fresh_dir();
    lg = open_ledger(NULL);
    for (uint32_t k = 1; k <= 5; k++)
        CU_ASSERT_EQUAL(issue(lg, k, NULL), 0);
    /* A renewal, with its audit row in the same operation, as the core records it. */
    req_init(&r, 6);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    ev.intent_id = res.id;
    CU_ASSERT_EQUAL(eg_ledger_complete_issue_audit(lg, res.id, der, fake_cert(6, der), &ev), 0);
    /* Pending and failed: not certificates. */
    req_init(&r, 7);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    req_init(&r, 8);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    CU_ASSERT_EQUAL(eg_ledger_fail_issue(lg, res.id, "test"), 0);
    eg_ledger_close(lg);
    /* The first two were issued two days ago. */
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db_path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL(sqlite3_exec(db, "UPDATE issuance SET created = created - 172800 WHERE id <= 2",
                                 NULL, NULL, NULL),
                    SQLITE_OK);
    sqlite3_close(db);

    lg = open_ledger(NULL);
    CU_ASSERT_EQUAL(eg_ledger_issued_since(lg, (int64_t)time(NULL) - 86400, note_issued, &s), 0);
    CU_ASSERT_EQUAL(s.n, 4); /* 3, 4, 5 and the renewal 6 */
    CU_ASSERT_EQUAL(s.renewals, 1);
    CU_ASSERT_STRING_EQUAL(s.last_subject, "CN=device-6,O=Test");
    CU_ASSERT_STRING_EQUAL(s.last_principal, "device-6");
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(eg_ledger_issued_since(lg, (int64_t)time(NULL) - 3 * 86400, note_issued, &s),
                    0);
    CU_ASSERT_EQUAL(s.n, 6);
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(eg_ledger_issued_since(lg, (int64_t)time(NULL) + 60, note_issued, &s), 0);
    CU_ASSERT_EQUAL(s.n, 0);
    eg_ledger_close(lg);
}

static void test_audit_events_are_stored(void)
{
    eg_ledger *lg = open_ledger(NULL);
    int64_t id = 0;
    eg_audit_event ev = {.type = "auth.fail.basic", .peer = "192.0.2.7", .detail = "bad password"};

    CU_ASSERT_EQUAL(eg_ledger_audit(lg, &ev), 0);
    CU_ASSERT_EQUAL_FATAL(issue(lg, 5, &id), 0);
    ev = (eg_audit_event){.type = "enroll.ok",
                          .profile = "iot",
                          .principal = "device-5",
                          .peer = "192.0.2.8",
                          .detail = "CN=device-5,O=Test",
                          .intent_id = id};
    CU_ASSERT_EQUAL(eg_ledger_audit(lg, &ev), 0);
    CU_ASSERT_EQUAL(eg_ledger_audit(lg, &ev), 0);
    ev.intent_id = 999999; /* no such intent */
    CU_ASSERT_EQUAL(eg_ledger_audit(lg, &ev), -1);
    ev.type = NULL;
    CU_ASSERT_EQUAL(eg_ledger_audit(lg, &ev), -1);
    eg_ledger_close(lg);

    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM audit", 0), 3);
    CU_ASSERT_EQUAL(
        sql_int("SELECT count(*) FROM audit WHERE type = 'enroll.ok' AND intent_id = ?", id), 2);
    CU_ASSERT(sql_text_is("SELECT type || '|' || peer || '|' || detail || '|' ||"
                          " (profile IS NULL) || (intent_id IS NULL) FROM audit WHERE id = 1",
                          "auth.fail.basic|192.0.2.7|bad password|11"));
}

/* --- audit retention --- */

/* n audit rows straight into the (closed) ledger, times first, first + step, ...; intent_id 0:
   rows of no certificate. */
static void add_audit_rows(int n, int64_t first, int64_t step, int64_t intent_id)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;

    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db_path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    CU_ASSERT_EQUAL_FATAL(sqlite3_prepare_v2(db,
                                             "INSERT INTO audit (time, type, peer, intent_id)"
                                             " VALUES (?1, 'auth.missing', '192.0.2.9', ?2)",
                                             -1, &st, NULL),
                          SQLITE_OK);
    for (int i = 0; i < n; i++) {
        sqlite3_bind_int64(st, 1, first + i * step);
        if (intent_id != 0)
            sqlite3_bind_int64(st, 2, intent_id);
        else
            sqlite3_bind_null(st, 2);
        CU_ASSERT_EQUAL(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    CU_ASSERT_EQUAL(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static int64_t unlinked_rows(void)
{
    return sql_int("SELECT count(*) FROM audit WHERE intent_id IS NULL", 0);
}

/*
 * Rows of no certificate go by age, then by count, oldest first; an issuance's rows stay
 * however old. Nothing goes before limits are set.
 */
static void test_audit_retention_by_age_and_count(void)
{
    eg_ledger_retention keep = {0};
    eg_ledger *lg = open_ledger(NULL);
    int64_t id = 0, t = (int64_t)time(NULL);
    uint64_t deleted = 99;

    CU_ASSERT_EQUAL_FATAL(issue(lg, 5, &id), 0);
    eg_ledger_close(lg);
    add_audit_rows(3, t - 1000 * 86400, 1, id); /* an issuance's rows, long ago */
    add_audit_rows(100, t - 500 * 86400, 60, 0);
    add_audit_rows(100, t - 1000, 1, 0);

    lg = open_ledger(NULL);
    CU_ASSERT_EQUAL(eg_ledger_prune_audit(lg, &deleted), 0);
    CU_ASSERT_EQUAL(deleted, 0);
    CU_ASSERT_EQUAL(unlinked_rows(), 200);

    keep.keep_days = 400;
    eg_ledger_set_retention(lg, &keep);
    /* The keeper thread may have made the pass first: count what is left, not what we deleted. */
    CU_ASSERT_EQUAL(eg_ledger_prune_audit(lg, NULL), 0);
    CU_ASSERT_EQUAL(unlinked_rows(), 100);
    CU_ASSERT_EQUAL(sql_int("SELECT min(time) FROM audit WHERE intent_id IS NULL", 0), t - 1000);

    keep = (eg_ledger_retention){.keep_rows = 30};
    eg_ledger_set_retention(lg, &keep);
    CU_ASSERT_EQUAL(eg_ledger_prune_audit(lg, NULL), 0);
    CU_ASSERT_EQUAL(unlinked_rows(), 30);
    CU_ASSERT_EQUAL(sql_int("SELECT min(time) FROM audit WHERE intent_id IS NULL", 0),
                    t - 1000 + 70);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM audit WHERE intent_id = ?", id), 3);
    CU_ASSERT(has_cert(lg, 5));
    eg_ledger_close(lg);
}

/*
 * A flood of refusals in one second: once a tenth of keep_rows has come in since the last pass,
 * the keeper prunes to the newest keep_rows by id, without anyone calling it.
 */
static void test_audit_flood_is_pruned_by_itself(void)
{
    eg_ledger_retention keep = {.keep_rows = 50};
    eg_audit_event ev = {.type = "auth.missing", .peer = "192.0.2.7", .detail = "no credentials"};
    eg_ledger *lg = open_ledger(NULL);
    int64_t rows = -1, last;

    eg_ledger_set_retention(lg, &keep);
    for (int i = 0; i < 400; i++)
        CU_ASSERT_EQUAL(eg_ledger_audit(lg, &ev), 0);
    last = sql_int("SELECT max(id) FROM audit", 0);
    /* The last pass may have run before the last few rows: at most a tenth more. */
    for (int i = 0; i < 100 && (rows = unlinked_rows()) > 55; i++)
        usleep(50 * 1000);
    CU_ASSERT(rows >= 50 && rows <= 55);
    if (rows < 50 || rows > 55)
        fprintf(stderr, "\n  %lld rows left of 400, keeping 50\n", (long long)rows);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM audit WHERE id = ?", last), 1);
    CU_ASSERT_EQUAL(sql_int("SELECT max(id) - min(id) + 1 FROM audit", 0), rows);
    eg_ledger_close(lg);
}

static uint64_t keeper_passes(eg_ledger *lg)
{
    eg_ledger_stats st;

    eg_ledger_get_stats(lg, &st);
    return st.keeper_passes;
}

/*
 * Rows that grow old while the appliance runs go by the keeper's own clock (hourly; here every
 * 200 ms), with no flood to kick it and nobody calling eg_ledger_prune_audit.
 */
static void test_audit_is_pruned_on_the_keepers_clock(void)
{
    eg_ledger_options opt = {.prune_every_ms = 200};
    eg_ledger_retention keep = {.keep_days = 30};
    eg_ledger *lg = open_ledger(&opt);
    int64_t t = (int64_t)time(NULL), rows = -1;
    uint64_t passes;

    eg_ledger_set_retention(lg, &keep); /* a pass at once: nothing to remove yet */
    for (int i = 0; i < 100 && keeper_passes(lg) == 0; i++)
        usleep(20 * 1000);
    CU_ASSERT_FATAL((passes = keeper_passes(lg)) >= 1);
    /* rows written now that are already past the limit, as rows of today are in 31 days */
    add_audit_rows(20, t - 40 * 86400, 1, 0);
    add_audit_rows(5, t - 100, 1, 0);
    for (int i = 0; i < 100 && (rows = unlinked_rows()) > 5; i++)
        usleep(20 * 1000);
    CU_ASSERT_EQUAL(rows, 5);
    CU_ASSERT(keeper_passes(lg) > passes);
    eg_ledger_close(lg);
}

/* A certificate and its audit row: one operation, one commit, both or neither. */
static void test_complete_with_audit_is_one_commit(void)
{
    eg_ledger *lg = open_ledger(NULL);
    eg_ledger_stats before, after;
    eg_intent_result res;
    uint8_t der[CERT_MAX];
    size_t len = fake_cert(7, der);
    eg_audit_event ev = {.type = "issued",
                         .profile = "iot",
                         .principal = "device-0",
                         .peer = "192.0.2.9",
                         .detail = "serial=4000000000000007"};
    req r;

    req_init(&r, 7);
    CU_ASSERT_EQUAL_FATAL(eg_ledger_begin_issue(lg, &r.in, &res), 0);
    CU_ASSERT_EQUAL_FATAL(res.state, EG_INTENT_NEW);
    /* The row cannot be stored (no such intent): the certificate is not either. */
    ev.intent_id = 999999;
    CU_ASSERT_EQUAL(eg_ledger_complete_issue_audit(lg, res.id, der, len, &ev), -1);
    CU_ASSERT_FALSE(has_cert(lg, 7));
    /* The certificate cannot be stored (not in flight): the row is not either. */
    ev.intent_id = res.id;
    CU_ASSERT_EQUAL(eg_ledger_complete_issue_audit(lg, res.id + 1, der, len, &ev), -1);
    /* An event without its type is refused before anything is stored. */
    {
        eg_audit_event untyped = ev;

        untyped.type = NULL;
        CU_ASSERT_EQUAL(eg_ledger_complete_issue_audit(lg, res.id, der, len, &untyped), -1);
    }
    eg_ledger_get_stats(lg, &before);
    CU_ASSERT_EQUAL(eg_ledger_complete_issue_audit(lg, res.id, der, len, &ev), 0);
    eg_ledger_get_stats(lg, &after);
    CU_ASSERT_EQUAL(after.commits - before.commits, 1);
    CU_ASSERT_EQUAL(after.operations - before.operations, 1);
    CU_ASSERT(has_cert(lg, 7));
    /* Completed already: refused, and no second row. */
    CU_ASSERT_EQUAL(eg_ledger_complete_issue_audit(lg, res.id, der, len, &ev), -1);
    eg_ledger_close(lg);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM audit", 0), 1);
    CU_ASSERT(sql_text_is("SELECT type || '|' || profile || '|' || principal || '|' || peer ||"
                          " '|' || detail || '|' || (intent_id = (SELECT id FROM issuance"
                          " WHERE state = 'issued')) FROM audit",
                          "issued|iot|device-0|192.0.2.9|serial=4000000000000007|1"));
}

/* --- group commit --- */

typedef struct worker {
    eg_ledger *lg;
    uint32_t first;
    unsigned count;
    unsigned failed;
} worker;

static void *issue_many(void *arg)
{
    worker *w = arg;

    for (unsigned i = 0; i < w->count; i++)
        if (issue(w->lg, w->first + i, NULL) != 0)
            w->failed++;
    return NULL;
}

static void test_concurrent_issuance_is_grouped(void)
{
    enum { THREADS = 16, EACH = 200 };
    eg_ledger *lg = open_ledger(NULL);
    eg_ledger_stats st;
    pthread_t t[THREADS];
    worker w[THREADS];
    unsigned failed = 0;

    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.lg = lg, .first = 1000u * (i + 1), .count = EACH};
        pthread_create(&t[i], NULL, issue_many, &w[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        failed += w[i].failed;
    }
    eg_ledger_get_stats(lg, &st);
    printf("\n    %llu operations in %llu commits ", (unsigned long long)st.operations,
           (unsigned long long)st.commits);
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL(eg_ledger_count_issued(lg), THREADS * EACH);
    CU_ASSERT_EQUAL(st.operations, 2 * THREADS * EACH);
    CU_ASSERT(st.commits * 2 < st.operations);
    CU_ASSERT(has_cert(lg, 1000) && has_cert(lg, 16000 + EACH - 1));
    eg_ledger_close(lg);
}

typedef struct begin_arg {
    eg_ledger *lg;
    uint32_t key;
    uint32_t serial;
    int rc;
} begin_arg;

static void *begin_one(void *arg)
{
    begin_arg *b = arg;
    eg_intent_result res;
    req r;

    req_init(&r, b->key);
    set_serial(&r, b->serial);
    b->rc = eg_ledger_begin_issue(b->lg, &r.in, &res);
    return NULL;
}

/* Half the batch collides on serials; the other half must still commit, in that same batch. */
static void test_failing_operation_spares_its_batch(void)
{
    enum { N = 8 };
    eg_ledger_options opt = {.max_batch = N, .max_wait_us = 5000000};
    eg_ledger_stats before, after;
    pthread_t t[N];
    begin_arg b[N];
    eg_ledger *lg = open_ledger(NULL);

    CU_ASSERT_EQUAL_FATAL(issue(lg, 500, NULL), 0);
    eg_ledger_close(lg);
    lg = open_ledger(&opt);
    eg_ledger_get_stats(lg, &before);
    for (int i = 0; i < N; i++) {
        /* odd ones reuse the serial of key 500 */
        b[i] = (begin_arg){.lg = lg, .key = 600 + i, .serial = i % 2 ? 500 : 600 + i};
        pthread_create(&t[i], NULL, begin_one, &b[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(b[i].rc, i % 2 ? -2 : 0);
    }
    eg_ledger_get_stats(lg, &after);
    CU_ASSERT_EQUAL(after.commits - before.commits, 1);
    CU_ASSERT_EQUAL(after.operations - before.operations, N);
    eg_ledger_close(lg);
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM issuance WHERE state = 'pending'", 0), N / 2);
}

/* --- SIGKILL in the middle of issuing --- */

typedef struct crash_rec {
    int64_t id;
    uint32_t key;
    uint32_t pad;
} crash_rec;

typedef struct crash_worker {
    eg_ledger *lg;
    int fd;
    uint32_t base;
} crash_worker;

static void *crash_issue(void *arg)
{
    crash_worker *cw = arg;
    crash_rec rec = {0};

    for (uint32_t i = 0;; i++) {
        rec.key = cw->base + i;
        if (issue(cw->lg, rec.key, &rec.id) != 0)
            _exit(3);
        /* Reported only now that complete_issue returned: the client has its certificate. */
        if (write(cw->fd, &rec, sizeof(rec)) != sizeof(rec))
            _exit(4);
    }
    return NULL;
}

static void crash_child(int fd, uint32_t round)
{
    enum { THREADS = 4 };
    crash_worker cw[THREADS];
    pthread_t t[THREADS];
    eg_ledger *lg = NULL;

    if (eg_ledger_open(db_path, NULL, &lg) != 0)
        _exit(2);
    for (uint32_t i = 0; i < THREADS; i++) {
        cw[i] = (crash_worker){.lg = lg, .fd = fd, .base = (round << 24) | (i << 20)};
        pthread_create(&t[i], NULL, crash_issue, &cw[i]);
    }
    pthread_join(t[0], NULL);
    _exit(5);
}

/* Appends records to recs until EOF, killing the child deadline_ms from now; returns how many. */
static size_t collect(int fd, pid_t pid, unsigned deadline_ms, crash_rec **recs, size_t *cap,
                      size_t *total)
{
    struct timespec t0, t;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    size_t n = *total;
    int killed = 0;
    ssize_t got;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (!killed && (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >=
                           (long)deadline_ms) {
            kill(pid, SIGKILL);
            killed = 1;
        }
        if (poll(&p, 1, 10) <= 0)
            continue;
        if (n == *cap &&
            (*recs = realloc(*recs, (*cap = *cap * 2 + 1024) * sizeof(**recs))) == NULL)
            abort();
        if ((got = read(fd, &(*recs)[n], sizeof(**recs))) <= 0)
            break;
        CU_ASSERT_EQUAL_FATAL(got, sizeof(**recs)); /* pipe writes this small are atomic */
        n++;
    }
    n -= *total;
    *total += n;
    return n;
}

/* Every reported id is an issued row holding its certificate, found by id and by serial. */
static size_t count_lost(eg_ledger *lg, const crash_rec *recs, size_t n)
{
    uint8_t want[CERT_MAX];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    size_t lost = n, len;

    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT cert FROM issuance WHERE id = ? AND state = 'issued'", -1,
                           &st, NULL) != SQLITE_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        len = fake_cert(recs[i].key, want);
        sqlite3_bind_int64(st, 1, recs[i].id);
        if (sqlite3_step(st) == SQLITE_ROW && (size_t)sqlite3_column_bytes(st, 0) == len &&
            memcmp(sqlite3_column_blob(st, 0), want, len) == 0 && has_cert(lg, recs[i].key))
            lost--;
        sqlite3_reset(st);
    }
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return lost;
}

static void check_survivors(const crash_rec *recs, size_t n)
{
    eg_ledger *lg = open_ledger(NULL);

    CU_ASSERT_EQUAL(count_lost(lg, recs, n), 0);
    CU_ASSERT(eg_ledger_count_issued(lg) >= (int64_t)n);
    eg_ledger_close(lg);
    CU_ASSERT(sql_text_is("PRAGMA integrity_check", "ok"));
    CU_ASSERT_EQUAL(sql_int("SELECT count(*) FROM pragma_foreign_key_check", 0), 0);
}

static void test_acknowledged_issuance_survives_sigkill(void)
{
    crash_rec *recs = NULL;
    size_t cap = 0, total = 0;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    int fds[2], status;
    pid_t pid;

    for (uint32_t round = 1; round <= 3; round++) {
        unsigned deadline = 150 + (unsigned)rand_r(&seed) % 500;

        CU_ASSERT_EQUAL_FATAL(pipe(fds), 0);
        if ((pid = fork()) == 0) {
            close(fds[0]);
            crash_child(fds[1], round);
        }
        close(fds[1]);
        CU_ASSERT(collect(fds[0], pid, deadline, &recs, &cap, &total) > 0);
        close(fds[0]);
        CU_ASSERT_EQUAL_FATAL(waitpid(pid, &status, 0), pid);
        CU_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        check_survivors(recs, total); /* this round's and every earlier one's */
    }
    printf("\n    %zu acknowledged issuances checked after 3 kills ", total);
    free(recs);
}

static CU_TestInfo tests[] = {
    {"schema is WAL, FULL sync, versioned", test_schema_is_wal_full_sync_with_version},
    {"completion rewrites no index", test_completion_rewrites_no_index},
    {"version 1 ledger migrates", test_version_1_ledger_migrates},
    {"version 3 default profile is named", test_version_3_default_profile_is_named},
    {"newer schema is refused", test_newer_schema_is_refused},
    {"second open is refused", test_second_open_is_refused},
    {"a ledger this user cannot write is named", test_a_ledger_this_user_cannot_write_is_named},
    {"issued request returns the same certificate", test_issued_request_returns_same_certificate},
    {"a superseded issuance keeps its certificate",
     test_a_superseded_issuance_keeps_its_certificate},
    {"request in flight is busy", test_request_in_flight_is_busy},
    {"failed attempt can be retried", test_failed_attempt_can_be_retried},
    {"refused writes leave the request retryable", test_refused_writes_leave_the_request_retryable},
    {"a held lock is an outage with a hint", test_a_held_lock_is_an_outage_with_a_hint},
    {"a removed database is an outage", test_a_removed_database_is_an_outage},
    {"a removed lock file still locks", test_a_removed_lock_file_still_locks},
    {"a stopped ledger refuses writes", test_a_stopped_ledger_refuses_writes},
    {"failure without reason frees its key", test_failure_without_reason_frees_its_key},
    {"serial collision is reported apart", test_serial_collision_is_reported_apart},
    {"pending row of a dead process is retried", test_pending_row_of_dead_process_is_retried},
    {"pending serverkeygen row of a dead process is failed, and its retry begins anew",
     test_pending_serverkeygen_row_of_dead_process_is_failed},
    {"an encrypted answer's key part is kept for a day", test_key_part_is_kept_for_a_day},
    {"superseding drops the key part", test_superseding_drops_the_key_part},
    {"version 6 ledger migrates", test_version_6_ledger_migrates},
    {"audit events are stored", test_audit_events_are_stored},
    {"certificates issued since a time", test_issued_since},
    {"audit retention by age and count", test_audit_retention_by_age_and_count},
    {"audit flood is pruned by itself", test_audit_flood_is_pruned_by_itself},
    {"audit is pruned on the keeper's clock", test_audit_is_pruned_on_the_keepers_clock},
    {"complete with audit is one commit, both or neither", test_complete_with_audit_is_one_commit},
    {"concurrent issuance is grouped", test_concurrent_issuance_is_grouped},
    {"failing operation spares its batch", test_failing_operation_spares_its_batch},
    {"acknowledged issuance survives SIGKILL", test_acknowledged_issuance_survives_sigkill},
    CU_TEST_INFO_NULL,
};

int main(void)
{
    return eg_cu_run_each("ledger", fresh_dir, remove_dir, tests);
}
