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
#include <openssl/err.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "bootstrap.h"
#include "files.h"
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
    " intent_at INTEGER NOT NULL, cert BLOB, wrapped_key BLOB, issued_at INTEGER,"
    " san_templates TEXT);";

static int db_fail(eg_bs_state *st, const char *what)
{
    if (sqlite3_errcode(st->db) == SQLITE_FULL)
        eg_prov_disk_full_seen();
    return eg_prov_fail(EG_EXIT_CANTCREAT, "batch state: %s: %s", what, sqlite3_errmsg(st->db));
}

/*
 * What a certificate was made from besides its request: the model is in the
 * first schema, the SAN templates came later. NULL there means "issued before
 * they were recorded".
 */
static int add_san_column(eg_bs_state *st)
{
    sqlite3_stmt *s = NULL;

    if (sqlite3_prepare_v2(st->db, "SELECT san_templates FROM device LIMIT 0", -1, &s, NULL) ==
        SQLITE_OK) {
        sqlite3_finalize(s);
        return EG_EXIT_OK;
    }
    if (sqlite3_exec(st->db, "ALTER TABLE device ADD COLUMN san_templates TEXT", NULL, NULL,
                     NULL) != SQLITE_OK)
        return db_fail(st, "adding the SAN templates to the state");
    return EG_EXIT_OK;
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

static int meta_put(eg_bs_state *st, const char *key, const void *v, int len)
{
    sqlite3_stmt *s = NULL;
    int ok = sqlite3_prepare_v2(st->db,
                                "INSERT INTO batch_meta(key, value) VALUES(?, ?) "
                                "ON CONFLICT(key) DO NOTHING",
                                -1, &s, NULL) == SQLITE_OK &&
             sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC) == SQLITE_OK &&
             sqlite3_bind_blob(s, 2, v, len, SQLITE_STATIC) == SQLITE_OK &&
             sqlite3_step(s) == SQLITE_DONE;

    sqlite3_finalize(s);
    return ok ? EG_EXIT_OK : db_fail(st, "recording the CA");
}

/* A batch_meta value, allocated; *v NULL when there is none. */
static int meta_get(eg_bs_state *st, const char *key, uint8_t **v, size_t *len)
{
    sqlite3_stmt *s = NULL;
    int rc = EG_EXIT_OK, step;

    *v = NULL;
    *len = 0;
    if (sqlite3_prepare_v2(st->db, "SELECT value FROM batch_meta WHERE key = ?", -1, &s, NULL) !=
            SQLITE_OK ||
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC) != SQLITE_OK ||
        ((step = sqlite3_step(s)) != SQLITE_ROW && step != SQLITE_DONE))
        rc = db_fail(st, "reading the CA");
    else if (step == SQLITE_ROW && (*v = blob_dup(s, 0, len)) == NULL)
        rc = eg_prov_fail(EG_EXIT_DATAERR, "batch state: malformed %s", key);
    sqlite3_finalize(s);
    return rc;
}

/* What makes the CA the same CA across a renewal: its key and its subject. */
struct ca_id {
    uint8_t sha256[32], key_sha256[32];
    unsigned char *subject; /* DER */
    int subjectlen;
};

static int ca_id_of(X509 *ca, const uint8_t sha256[32], struct ca_id *id)
{
    unsigned int n = 0;

    memcpy(id->sha256, sha256, 32);
    id->subject = NULL;
    if (X509_pubkey_digest(ca, EVP_sha256(), id->key_sha256, &n) != 1 || n != 32 ||
        (id->subjectlen = i2d_X509_NAME(X509_get_subject_name(ca), &id->subject)) <= 0)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot read the CA certificate's key");
    return EG_EXIT_OK;
}

static bool same_subject(const uint8_t *der, size_t len, X509 *ca)
{
    const unsigned char *p = der;
    X509_NAME *n = d2i_X509_NAME(NULL, &p, (long)len);
    bool same = n != NULL && X509_NAME_cmp(n, X509_get_subject_name(ca)) == 0;

    X509_NAME_free(n);
    return same;
}

/*
 * A state from before the CA's key and subject were recorded: the CA is the
 * same when a certificate the batch issued names it as issuer and verifies
 * with its key.
 */
static bool issued_by(eg_bs_state *st, X509 *ca)
{
    sqlite3_stmt *s = NULL;
    const unsigned char *p;
    X509 *x = NULL;
    bool same = false;

    if (sqlite3_prepare_v2(st->db, "SELECT cert FROM device WHERE cert IS NOT NULL LIMIT 1", -1, &s,
                           NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW && (p = sqlite3_column_blob(s, 0)) != NULL &&
        (x = d2i_X509(NULL, &p, sqlite3_column_bytes(s, 0))) != NULL)
        same = X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca)) == 0 &&
               X509_verify(x, X509_get0_pubkey(ca)) == 1;
    ERR_clear_error();
    X509_free(x);
    sqlite3_finalize(s);
    return same;
}

static int other_ca(const char *dir, const uint8_t *first, const uint8_t *now)
{
    char a[65], b[65];

    eg_bs_hex(first, 32, a);
    eg_bs_hex(now, 32, b);
    return eg_prov_fail(EG_EXIT_DATAERR,
                        "%s holds a batch of another CA: it was started with the CA certificate "
                        "of SHA-256 %s, and this --ca-cert (SHA-256 %s) has another key or "
                        "subject. Finish this batch with --ca-cert of SHA-256 %s (or a renewal "
                        "of it: same key and subject). A new --out directory starts a new batch "
                        "and issues every device of the manifest again: a second certificate for "
                        "each serial already issued here",
                        dir, a, b, a);
}

/*
 * The CA of the first run is the CA of every later one: a batch never mixes
 * issuers. A renewal of it (`ca renew`: same key and subject, a new
 * certificate) is the same CA, so a batch outlives its CA certificate's
 * renewal instead of sending the operator to a new directory that would
 * issue every device again.
 */
static int check_ca(eg_bs_state *st, const char *dir, X509 *ca, const uint8_t sha256[32])
{
    struct ca_id id;
    uint8_t *first = NULL, *key = NULL, *subject = NULL;
    size_t firstlen, keylen, subjectlen;
    char hex[65];
    int rc;

    if ((rc = ca_id_of(ca, sha256, &id)) != EG_EXIT_OK ||
        (rc = meta_put(st, "ca_sha256", id.sha256, 32)) != EG_EXIT_OK ||
        (rc = meta_get(st, "ca_sha256", &first, &firstlen)) != EG_EXIT_OK ||
        (rc = meta_get(st, "ca_key_sha256", &key, &keylen)) != EG_EXIT_OK ||
        (rc = meta_get(st, "ca_subject", &subject, &subjectlen)) != EG_EXIT_OK)
        goto out;
    if (first == NULL || firstlen != 32) {
        rc = eg_prov_fail(EG_EXIT_DATAERR, "batch state: malformed ca_sha256");
        goto out;
    }
    if (memcmp(first, id.sha256, 32) != 0) {
        bool same = key != NULL && subject != NULL
                        ? keylen == 32 && memcmp(key, id.key_sha256, 32) == 0 &&
                              same_subject(subject, subjectlen, ca)
                        : issued_by(st, ca);

        if (!same) {
            rc = other_ca(dir, first, id.sha256);
            goto out;
        }
        eg_bs_hex(first, 32, hex);
        eg_prov_note("--ca-cert is a renewal of the batch's CA certificate (SHA-256 %s): same "
                     "key and subject; the batch goes on",
                     hex);
    }
    if ((rc = meta_put(st, "ca_key_sha256", id.key_sha256, 32)) == EG_EXIT_OK)
        rc = meta_put(st, "ca_subject", id.subject, id.subjectlen);
out:
    OPENSSL_free(id.subject);
    OPENSSL_free(first);
    OPENSSL_free(key);
    OPENSSL_free(subject);
    return rc;
}

static int prepare(eg_bs_state *st)
{
    if (sqlite3_prepare_v2(st->db,
                           "SELECT request_sha256, cert_serial, not_before, not_after, cert, "
                           "wrapped_key, model, san_templates FROM device WHERE serial = ?",
                           -1, &st->get, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(st->db,
                           "INSERT INTO device(serial, model, request_sha256, cert_serial, "
                           "not_before, not_after, intent_at) VALUES(?, ?, ?, ?, ?, ?, ?)",
                           -1, &st->intent, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(st->db,
                           "UPDATE device SET cert = ?, wrapped_key = ?, issued_at = ?, "
                           "model = ?, san_templates = ? WHERE serial = ? AND cert IS NULL",
                           -1, &st->issued, NULL) != SQLITE_OK)
        return db_fail(st, "preparing statements");
    return EG_EXIT_OK;
}

int eg_bs_state_open(const char *dir, X509 *ca, const uint8_t ca_sha256[32], eg_bs_state **out)
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
        sqlite3_exec(st->db, schema, NULL, NULL, NULL) != SQLITE_OK ||
        (rc = add_san_column(st)) != EG_EXIT_OK) {
        if (rc == EG_EXIT_OK)
            rc = st->db != NULL ? db_fail(st, path)
                                : eg_prov_fail(EG_EXIT_CANTCREAT, "cannot open %s", path);
        goto out;
    }
    if ((rc = check_ca(st, dir, ca, ca_sha256)) != EG_EXIT_OK || (rc = prepare(st)) != EG_EXIT_OK)
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
    snprintf(rec.model, sizeof(rec.model), "%s", (const char *)sqlite3_column_text(st->get, 6));
    if (sqlite3_column_type(st->get, 7) != SQLITE_NULL &&
        (rec.sans = OPENSSL_strdup((const char *)sqlite3_column_text(st->get, 7))) == NULL)
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    if (sqlite3_column_type(st->get, 4) != SQLITE_NULL) {
        rec.phase = EG_BS_ISSUED;
        rec.cert = blob_dup(st->get, 4, &rec.certlen);
        rec.wrapped = blob_dup(st->get, 5, &rec.wrappedlen);
        if (rec.cert == NULL && rc == EG_EXIT_OK)
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

int eg_bs_state_issued(eg_bs_state *st, const char *serial, const char *model, const char *sans,
                       const uint8_t *cert, size_t certlen, const uint8_t *wrapped,
                       size_t wrappedlen)
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
    sqlite3_bind_text(s, 4, model, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 5, sans, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 6, serial, -1, SQLITE_STATIC);
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
    OPENSSL_free(rec->sans);
    memset(rec, 0, sizeof(*rec));
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const eg_bs_entry *)a)->serial, ((const eg_bs_entry *)b)->serial);
}

int eg_bs_state_entries(eg_bs_state *st, eg_bs_entry **out, size_t *n)
{
    sqlite3_stmt *s = NULL;
    eg_bs_entry *v = NULL, *grown;
    size_t cap = 0, k = 0;
    int rc = EG_EXIT_OK, step = SQLITE_DONE;

    if (sqlite3_prepare_v2(st->db, "SELECT serial, cert FROM device WHERE cert IS NOT NULL", -1, &s,
                           NULL) != SQLITE_OK)
        return db_fail(st, "reading the issued devices");
    while (rc == EG_EXIT_OK && (step = sqlite3_step(s)) == SQLITE_ROW) {
        const char *serial = (const char *)sqlite3_column_text(s, 0);
        const void *cert = sqlite3_column_blob(s, 1);

        if (k == cap) {
            cap = cap ? cap * 2 : 256;
            if ((grown = OPENSSL_realloc(v, cap * sizeof(*v))) == NULL) {
                rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
                break;
            }
            v = grown;
        }
        if (serial == NULL || strlen(serial) > EG_BS_NAME_MAX || cert == NULL) {
            rc = eg_prov_fail(EG_EXIT_DATAERR, "batch state: malformed device record");
            break;
        }
        strcpy(v[k].serial, serial);
        if (EVP_Digest(cert, (size_t)sqlite3_column_bytes(s, 1), v[k].sha256, NULL, EVP_sha256(),
                       NULL) != 1)
            rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "SHA-256");
        k++;
    }
    if (rc == EG_EXIT_OK && step != SQLITE_DONE)
        rc = db_fail(st, "reading the issued devices");
    sqlite3_finalize(s);
    if (rc != EG_EXIT_OK) {
        OPENSSL_free(v);
        return rc;
    }
    /* In memory, not in SQL: the manifest's order is strcmp's whatever the state's collation. */
    if (k > 0)
        qsort(v, k, sizeof(*v), entry_cmp);
    *out = v;
    *n = k;
    return EG_EXIT_OK;
}
