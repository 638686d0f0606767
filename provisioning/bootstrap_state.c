/*
 * The state of a bootstrap batch, in dir/bootstrap.db (SQLite, WAL,
 * synchronous=FULL): one row per device serial, written as an intent
 * (request hash, certificate serial, validity) before the token signs and
 * completed with the certificate after. Every write is its own committed
 * transaction, so a SIGKILL or power loss at any point leaves either no row,
 * an intent (signed again, identically, on the next run) or the certificate.
 * One process at a time holds dir/bootstrap.lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <sqlite3.h>

#include "bootstrap.h"
#include "provision.h"
#include "report.h"

struct eg_bs_state {
    sqlite3 *db;
    sqlite3_stmt *get, *intent, *issued;
    int lockfd;
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS batch_meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS device("
    " serial TEXT PRIMARY KEY, model TEXT NOT NULL, request_sha256 BLOB NOT NULL,"
    " cert_serial BLOB NOT NULL UNIQUE, not_before INTEGER NOT NULL, not_after INTEGER NOT NULL,"
    " intent_at INTEGER NOT NULL, cert BLOB, wrapped_key BLOB, issued_at INTEGER);";

static int db_fail(eg_bs_state *st, const char *what)
{
    return eg_prov_fail(EG_EXIT_CANTCREAT, "batch state: %s: %s", what, sqlite3_errmsg(st->db));
}

static int lock_dir(const char *dir, int *fd)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/bootstrap.lock", dir);
    if ((*fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0)
        return eg_prov_fail(EG_EXIT_CANTCREAT, "cannot create %s: %s", path, strerror(errno));
    /* Released by the kernel when the process dies, however it dies. */
    if (flock(*fd, LOCK_EX | LOCK_NB) != 0)
        return eg_prov_fail(EG_EXIT_CANTCREAT, "%s: another batch is running in %s", path, dir);
    return EG_EXIT_OK;
}

/* The CA of the first run is the CA of every later one: a batch never mixes issuers. */
static int check_ca(eg_bs_state *st, const uint8_t ca[32])
{
    sqlite3_stmt *s = NULL;
    int rc = EG_EXIT_OK, step;

    if (sqlite3_prepare_v2(st->db,
                           "INSERT INTO batch_meta(key, value) VALUES('ca_sha256', ?) "
                           "ON CONFLICT(key) DO NOTHING",
                           -1, &s, NULL) != SQLITE_OK ||
        sqlite3_bind_blob(s, 1, ca, 32, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_DONE) {
        rc = db_fail(st, "recording the CA");
        goto out;
    }
    sqlite3_finalize(s);
    if (sqlite3_prepare_v2(st->db, "SELECT value FROM batch_meta WHERE key = 'ca_sha256'", -1, &s,
                           NULL) != SQLITE_OK ||
        (step = sqlite3_step(s)) != SQLITE_ROW) {
        rc = db_fail(st, "reading the CA");
        goto out;
    }
    if (sqlite3_column_bytes(s, 0) != 32 || memcmp(sqlite3_column_blob(s, 0), ca, 32) != 0)
        rc = eg_prov_fail(EG_EXIT_DATAERR, "the output directory holds a batch of another CA; "
                                           "use a new --out directory");
out:
    sqlite3_finalize(s);
    return rc;
}

static int prepare(eg_bs_state *st)
{
    if (sqlite3_prepare_v2(st->db,
                           "SELECT request_sha256, cert_serial, not_before, not_after, cert, "
                           "wrapped_key FROM device WHERE serial = ?",
                           -1, &st->get, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(st->db,
                           "INSERT INTO device(serial, model, request_sha256, cert_serial, "
                           "not_before, not_after, intent_at) VALUES(?, ?, ?, ?, ?, ?, ?)",
                           -1, &st->intent, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(st->db,
                           "UPDATE device SET cert = ?, wrapped_key = ?, issued_at = ? "
                           "WHERE serial = ? AND cert IS NULL",
                           -1, &st->issued, NULL) != SQLITE_OK)
        return db_fail(st, "preparing statements");
    return EG_EXIT_OK;
}

int eg_bs_state_open(const char *dir, const uint8_t ca_sha256[32], eg_bs_state **out)
{
    eg_bs_state *st = OPENSSL_zalloc(sizeof(*st));
    char path[4096];
    int rc;

    if (st == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    st->lockfd = -1;
    if ((rc = lock_dir(dir, &st->lockfd)) != EG_EXIT_OK)
        goto out;
    snprintf(path, sizeof(path), "%s/bootstrap.db", dir);
    if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(st->db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
                     NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(st->db, schema, NULL, NULL, NULL) != SQLITE_OK) {
        rc = st->db != NULL ? db_fail(st, path)
                            : eg_prov_fail(EG_EXIT_CANTCREAT, "cannot open %s", path);
        goto out;
    }
    if ((rc = check_ca(st, ca_sha256)) != EG_EXIT_OK || (rc = prepare(st)) != EG_EXIT_OK)
        goto out;
    *out = st;
    st = NULL;
out:
    eg_bs_state_free(st);
    return rc;
}

void eg_bs_state_free(eg_bs_state *st)
{
    if (st == NULL)
        return;
    sqlite3_finalize(st->get);
    sqlite3_finalize(st->intent);
    sqlite3_finalize(st->issued);
    sqlite3_close(st->db);
    if (st->lockfd >= 0)
        close(st->lockfd);
    OPENSSL_free(st);
}

static uint8_t *blob_dup(sqlite3_stmt *s, int col, size_t *len)
{
    int n = sqlite3_column_bytes(s, col);
    const void *b = sqlite3_column_blob(s, col);

    *len = 0;
    if (b == NULL || n <= 0)
        return NULL;
    *len = (size_t)n;
    return OPENSSL_memdup(b, (size_t)n);
}

static int fixed_blob(sqlite3_stmt *s, int col, uint8_t *dst, size_t len)
{
    if (sqlite3_column_bytes(s, col) != (int)len)
        return -1;
    memcpy(dst, sqlite3_column_blob(s, col), len);
    return 0;
}

int eg_bs_state_get(eg_bs_state *st, const char *serial, eg_bs_record *out)
{
    eg_bs_record rec;
    int rc = EG_EXIT_OK, step;

    memset(&rec, 0, sizeof(rec));
    sqlite3_reset(st->get);
    sqlite3_bind_text(st->get, 1, serial, -1, SQLITE_STATIC);
    if ((step = sqlite3_step(st->get)) == SQLITE_DONE)
        goto done;
    if (step != SQLITE_ROW)
        return db_fail(st, "reading a device");
    if (fixed_blob(st->get, 0, rec.request, sizeof(rec.request)) != 0 ||
        fixed_blob(st->get, 1, rec.cert_serial, sizeof(rec.cert_serial)) != 0)
        return eg_prov_fail(EG_EXIT_DATAERR, "batch state: device %s: malformed record", serial);
    rec.not_before = sqlite3_column_int64(st->get, 2);
    rec.not_after = sqlite3_column_int64(st->get, 3);
    rec.phase = EG_BS_INTENT;
    if (sqlite3_column_type(st->get, 4) != SQLITE_NULL) {
        rec.phase = EG_BS_ISSUED;
        rec.cert = blob_dup(st->get, 4, &rec.certlen);
        rec.wrapped = blob_dup(st->get, 5, &rec.wrappedlen);
        if (rec.cert == NULL)
            rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    }
done:
    sqlite3_reset(st->get);
    if (rc == EG_EXIT_OK)
        *out = rec;
    else
        eg_bs_record_clear(&rec);
    return rc;
}

int eg_bs_state_intent(eg_bs_state *st, const char *serial, const char *model,
                       const eg_bs_record *rec)
{
    sqlite3_stmt *s = st->intent;
    int step;

    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, serial, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, model, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s, 3, rec->request, sizeof(rec->request), SQLITE_STATIC);
    sqlite3_bind_blob(s, 4, rec->cert_serial, sizeof(rec->cert_serial), SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, rec->not_before);
    sqlite3_bind_int64(s, 6, rec->not_after);
    sqlite3_bind_int64(s, 7, (sqlite3_int64)time(NULL));
    step = sqlite3_step(s);
    sqlite3_reset(s);
    /* Autocommit: with synchronous=FULL the intent is on disk when this returns. */
    return step == SQLITE_DONE ? EG_EXIT_OK : db_fail(st, "recording an intent");
}

int eg_bs_state_issued(eg_bs_state *st, const char *serial, const uint8_t *cert, size_t certlen,
                       const uint8_t *wrapped, size_t wrappedlen)
{
    sqlite3_stmt *s = st->issued;
    int step;

    sqlite3_reset(s);
    sqlite3_bind_blob(s, 1, cert, (int)certlen, SQLITE_STATIC);
    if (wrapped != NULL)
        sqlite3_bind_blob(s, 2, wrapped, (int)wrappedlen, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 2);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)time(NULL));
    sqlite3_bind_text(s, 4, serial, -1, SQLITE_STATIC);
    step = sqlite3_step(s);
    sqlite3_reset(s);
    if (step != SQLITE_DONE)
        return db_fail(st, "recording a certificate");
    if (sqlite3_changes(st->db) != 1)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "batch state: device %s has no open intent", serial);
    return EG_EXIT_OK;
}

void eg_bs_record_clear(eg_bs_record *rec)
{
    OPENSSL_free(rec->cert);
    OPENSSL_free(rec->wrapped);
    memset(rec, 0, sizeof(*rec));
}
