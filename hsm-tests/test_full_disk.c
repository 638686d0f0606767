/*
 * The ledger's file system fills up under a running estgated, for real: the
 * ledger lives on a small tmpfs of its own, in a mount namespace of this test
 * (a user namespace too when the test does not run as root), and a filler
 * file takes its last free page.
 * - Every enrollment is answered: 200 with a certificate that is in the
 *   ledger, or 503 with Retry-After and the reason; refusals and /cacerts are
 *   still answered; the log says once which file system is full, not once
 *   per request.
 * - Once space is free again the same requests succeed without a restart,
 *   each device gets one certificate (a retry is answered with the same
 *   one), and the ledger passes SQLite's integrity check with nothing left
 *   pending.
 * - estgated started on the full file system warns at once, answers what
 *   needs no write, and issues to a new device as soon as there is room.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <sqlite3.h>

#include "child.h"
#include "estgated_fixture.h"
#include "token_harness.h"

#define DEVICES 12

static eg_th_kind kind;
static eg_th *th;
static char dir[EG_FX_DIR_MAX], mnt[PATH_MAX], ini[PATH_MAX], ca[PATH_MAX], pass[PATH_MAX],
    daemon_log[PATH_MAX], ledger[PATH_MAX + 16], filler[PATH_MAX + 16], user[160];
static eg_child_result *res;

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

#define cmd(...) eg_child_cmd(dir, res, __VA_ARGS__)

/* ---- a file system of its own for the ledger ---- */

static int write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? write(fd, text, strlen(text)) : -1;

    if (fd >= 0)
        close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/*
 * A private mount namespace (and, when not root, a user namespace in which this user is root)
 * with a 4 MiB tmpfs at mnt. Before any thread starts: unshare(2) wants a single thread.
 */
static int small_fs_enter(void)
{
    uid_t uid = getuid();
    gid_t gid = getgid();
    char map[64];

    if (geteuid() == 0) {
        if (unshare(CLONE_NEWNS) != 0)
            goto fail;
    } else {
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
            goto fail;
        snprintf(map, sizeof(map), "0 %u 1\n", (unsigned)uid);
        if (write_text("/proc/self/uid_map", map) != 0 ||
            write_text("/proc/self/setgroups", "deny") != 0)
            goto fail;
        snprintf(map, sizeof(map), "0 %u 1\n", (unsigned)gid);
        if (write_text("/proc/self/gid_map", map) != 0)
            goto fail;
    }
    /* Nothing mounted here shows outside, and it goes with the namespace. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        goto fail;
    snprintf(mnt, sizeof(mnt), "%s/estgate-full-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(mnt) == NULL)
        goto fail;
    if (mount("estgate-test", mnt, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0700") != 0) {
        rmdir(mnt);
        goto fail;
    }
    return 0;
fail:
    fprintf(stderr,
            "test_full_disk: cannot mount a tmpfs in a namespace of its own (%s); it needs root "
            "or unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)\n",
            strerror(errno));
    return -1;
}

/* Takes every free page of mnt's file system; 0 once a write found no space. */
static int fill(void)
{
    static const char page[4096];
    int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ssize_t n;

    if (fd < 0)
        return -1;
    while ((n = write(fd, page, sizeof(page))) == (ssize_t)sizeof(page))
        ;
    /* Then byte by byte into the last page, should a write have been short. */
    while (n > 0)
        n = write(fd, page, 1);
    close(fd);
    return n < 0 && errno == ENOSPC ? 0 : -1;
}

/* ---- the daemon ---- */

static int suite_init(void)
{
    const eg_fx_suite s = {&th, &res, dir, ini, ca, pass, daemon_log};
    char *text, *pw;
    int rc;

    snprintf(ledger, sizeof(ledger), "%s/ledger.db", mnt);
    snprintf(filler, sizeof(filler), "%s/filler", mnt);
    if (eg_fx_suite_open(kind, "fulldisk", "CN=full disk CA,O=estgate tests", &s) != 0 ||
        (text = eg_fx_basic_config(th, ca, "line", pass)) == NULL)
        return -1;
    if (eg_fx_ini_set(&text, "ledger", ledger) != 0) { /* on the tmpfs */
        free(text);
        return -1;
    }
    rc = eg_file_write(ini, text, strlen(text), 0600);
    free(text);
    if (rc != 0 || (pw = eg_file_read(pass, NULL)) == NULL)
        return -1;
    snprintf(user, sizeof(user), "line:%s", pw);
    free(pw);
    /* The devices' keys and CSRs, made before the daemon runs. */
    for (int i = 0; i <= DEVICES; i++) { /* the last one for test_starting_on_a_full_disk */
        char csr[PATH_MAX], name[32];

        snprintf(name, sizeof(name), "dev%d", i);
        if (eg_fx_device_csr(dir, res, name, csr) != 0)
            return -1;
    }
    return 0;
}

static int suite_clean(void)
{
    eg_th_destroy(th);
    free(res);
    umount(mnt);
    rmdir(mnt);
    return 0;
}

/* POSTs device i's CSR to simpleenroll as user u; the status, the answer in dev<i>.<tag>.p7
   and its headers in dev<i>.<tag>.head. -1 when curl failed. */
static int enroll(unsigned port, int i, const char *tag, const char *u)
{
    char url[128], body[PATH_MAX + 1], out[PATH_MAX], head[PATH_MAX], name[48];

    snprintf(url, sizeof(url), "https://127.0.0.1:%u/.well-known/est/simpleenroll", port);
    snprintf(name, sizeof(name), "dev%d.der", i);
    body[0] = '@';
    tpath(body + 1, name);
    snprintf(name, sizeof(name), "dev%d.%s.p7", i, tag);
    tpath(out, name);
    snprintf(name, sizeof(name), "dev%d.%s.head", i, tag);
    tpath(head, name);
    if (cmd("curl", "-sS", "-o", out, "-D", head, "-w", "%{http_code}", "--cacert", ca, "-u", u,
            "-H", "Content-Type: application/pkcs10", "--data-binary", body, url, NULL) != 0)
        return -1;
    return atoi(res->out);
}

static char *answer_file(int i, const char *tag, const char *ext, char *buf)
{
    char name[48];

    snprintf(name, sizeof(name), "dev%d.%s.%s", i, tag, ext);
    return tpath(buf, name);
}

/* One integer the ledger answers to sql (read-only, beside or after the daemon); -1 if none. */
static long long ledger_int(const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long n = -1;

    if (sqlite3_open_v2(ledger, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* The certificate in a base64 certs-only answer as PEM in pem; 0 or -1. */
static int answer_pem(const char *p7, const char *pem)
{
    return cmd("sh", "-c",
               "tr -d '\\r' < \"$1\" | base64 -d | openssl pkcs7 -inform DER -print_certs -out "
               "\"$2\"",
               "sh", p7, pem, NULL) == 0
               ? 0
               : -1;
}

/* Whether the certificate in pem is stored in the ledger, byte for byte, as issued. */
static bool in_ledger(const char *pem)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char der_path[PATH_MAX], *der;
    size_t len = 0;
    bool found = false;

    if (cmd("openssl", "x509", "-in", pem, "-outform", "DER", "-out", tpath(der_path, "check.der"),
            NULL) != 0 ||
        (der = eg_file_read(der_path, &len)) == NULL)
        return false;
    if (sqlite3_open_v2(ledger, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM issuance WHERE state = 'issued' AND cert = ?",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_bind_blob(st, 1, der, (int)len, SQLITE_STATIC) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        found = sqlite3_column_int64(st, 0) == 1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(der);
    return found;
}

/* ---- tests ---- */

static void test_a_full_ledger_disk_answers_503_and_loses_nothing(void)
{
    char path[PATH_MAX], pem[PATH_MAX], ref[13], *head, *body;
    int status[DEVICES], ok = 0, refused = 0, i;
    unsigned port = 0;
    pid_t pid = 0;

    CU_ASSERT_EQUAL_FATAL(eg_fx_daemon_start(ini, daemon_log, &pid, &port, 1), 0);
    CU_ASSERT_EQUAL(enroll(port, 0, "first", user), 200);

    CU_ASSERT_EQUAL_FATAL(fill(), 0);
    for (i = 1; i < DEVICES; i++) {
        status[i] = enroll(port, i, "full", user);
        if (status[i] == 200) {
            ok++;
            continue;
        }
        CU_ASSERT_EQUAL(status[i], 503);
        refused++;
        head = eg_file_read(answer_file(i, "full", "head", path), NULL);
        body = eg_file_read(answer_file(i, "full", "p7", path), NULL);
        CU_ASSERT_PTR_NOT_NULL(head && strstr(head, "\r\nRetry-After: "));
        /* The device is told to come back; the audit line under its reference says why. */
        CU_ASSERT_PTR_NOT_NULL(body &&
                               strstr(body, "could not complete this request now, retry later"));
        CU_ASSERT(body && eg_answer_ref(body, ref) == 0 &&
                  eg_file_line_has(daemon_log, ref, "the ledger did not record"));
        free(head);
        free(body);
    }
    printf("(on the full disk: %d answered 200, %d 503) ", ok, refused);
    /* SQLite may still fit a commit or two into pages its files already hold; not eleven. */
    CU_ASSERT(refused >= DEVICES - 3);
    /* What needs no ledger write is answered as usual; a refusal too, though its audit row
       cannot be stored. */
    CU_ASSERT_EQUAL(eg_fx_cacerts_status(dir, res, ca, port), 200);
    CU_ASSERT_EQUAL(enroll(port, 1, "wrongpw", "line:not-the-password"), 401);
    /* The operator learns which file system is full, once, not once a request. */
    CU_ASSERT(eg_file_line_has(daemon_log, "cannot write: database or disk is full", ledger));
    CU_ASSERT(eg_file_line_has(daemon_log, "KiB free: make room there", ledger));
    CU_ASSERT_EQUAL(eg_file_count(daemon_log, "ledger.db: cannot write: "), 1);
    CU_ASSERT_EQUAL(eg_file_count(daemon_log, "commit: database or disk is full"), 0);

    /* Space again: the same devices ask again and get their certificates, no restart. */
    CU_ASSERT_EQUAL_FATAL(unlink(filler), 0);
    for (i = 1; i < DEVICES; i++) {
        char before[PATH_MAX], again[PATH_MAX];

        CU_ASSERT_EQUAL(enroll(port, i, "again", user), 200);
        if (status[i] == 200) {
            /* A device whose 200 came on the full disk gets that same certificate again. */
            char *a = eg_file_read(answer_file(i, "full", "p7", before), NULL),
                 *b = eg_file_read(answer_file(i, "again", "p7", again), NULL);

            CU_ASSERT(a != NULL && b != NULL && strcmp(a, b) == 0);
            free(a);
            free(b);
        }
    }
    CU_ASSERT(eg_file_count(daemon_log, "the ledger can write again") >= 1);
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&pid, SIGTERM), 0);

    /* Every certificate a device holds is in the ledger, one per device, nothing pending. */
    CU_ASSERT_EQUAL(answer_pem(answer_file(0, "first", "p7", path), tpath(pem, "got.pem")), 0);
    CU_ASSERT(in_ledger(pem));
    for (i = 1; i < DEVICES; i++) {
        CU_ASSERT_EQUAL(answer_pem(answer_file(i, "again", "p7", path), tpath(pem, "got.pem")), 0);
        CU_ASSERT(in_ledger(pem));
    }
    CU_ASSERT_EQUAL(ledger_int("SELECT count(*) FROM issuance WHERE state = 'issued'"), DEVICES);
    CU_ASSERT_EQUAL(ledger_int("SELECT count(*) FROM issuance WHERE state = 'pending'"), 0);
    CU_ASSERT_EQUAL(ledger_int("SELECT count(*) FROM issuance i JOIN audit a ON a.intent_id = i.id"
                               " WHERE i.state = 'issued' AND a.type IN ('issued')"),
                    DEVICES);
    {
        sqlite3 *db = NULL;
        sqlite3_stmt *st = NULL;
        const char *check = NULL;

        CU_ASSERT_EQUAL(sqlite3_open_v2(ledger, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        CU_ASSERT_EQUAL(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
        if (sqlite3_step(st) == SQLITE_ROW)
            check = (const char *)sqlite3_column_text(st, 0);
        CU_ASSERT_STRING_EQUAL(check ? check : "(none)", "ok");
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
}

/*
 * estgated started on a full file system: it warns at once, serves what needs no write (a
 * certificate already issued, asked for again), answers 503 to a new device, and issues to it
 * as soon as there is room.
 */
static void test_starting_on_a_full_disk(void)
{
    char log[PATH_MAX];
    unsigned port = 0;
    pid_t pid = 0;

    CU_ASSERT_EQUAL_FATAL(fill(), 0);
    CU_ASSERT_EQUAL_FATAL(
        eg_fx_daemon_start(ini, tpath(log, "estgated-restart.log"), &pid, &port, 1), 0);
    CU_ASSERT(eg_file_line_has(log, "warning: its file system has 0 KiB free", ledger));
    CU_ASSERT_EQUAL(enroll(port, 0, "restart", user), 200);
    CU_ASSERT_EQUAL(enroll(port, DEVICES, "restart", user), 503);
    CU_ASSERT(eg_file_line_has(log, "cannot write: database or disk is full", ledger));
    CU_ASSERT_EQUAL(unlink(filler), 0);
    CU_ASSERT_EQUAL(enroll(port, DEVICES, "restart", user), 200);
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&pid, SIGTERM), 0);
    CU_ASSERT_EQUAL(ledger_int("SELECT count(*) FROM issuance WHERE state = 'issued'"),
                    DEVICES + 1);
    CU_ASSERT_EQUAL(ledger_int("SELECT count(*) FROM issuance WHERE state = 'pending'"), 0);
}

int main(int argc, char **argv)
{
    CU_TestInfo tests[] = {
        {"a full ledger disk answers 503 and loses nothing",
         test_a_full_ledger_disk_answers_503_and_loses_nothing},
        {"starting on a full disk", test_starting_on_a_full_disk},
        CU_TEST_INFO_NULL,
    };

    if (small_fs_enter() != 0)
        return 1;
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
