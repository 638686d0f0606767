/*
 * estgated as a systemd service, on a fresh token, without systemd: the test
 * plays systemd's part.
 * - The notification socket (sd_notify(3)): READY=1 once the daemon serves,
 *   RELOADING=1 and READY=1 around a reload, taken or refused, STOPPING=1 at
 *   SIGTERM, and a STATUS line for each, which `systemctl status` shows; a
 *   configuration with errors says so before estgated exits.
 * - The token PIN from a systemd credential (pin_file = credential:NAME and
 *   $CREDENTIALS_DIRECTORY, as LoadCredential= gives it).
 * image/tests/test_unit checks the unit file itself with systemd's tools.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "child.h"
#include "estgated_fixture.h"
#include "token_harness.h"

static eg_th_kind kind;
static eg_th *th;
static char dir[EG_FX_DIR_MAX], ini[PATH_MAX], ca[PATH_MAX], pass[PATH_MAX], daemon_log[PATH_MAX];
static char *config_text; /* the working configuration, as written to ini */
static eg_child_result *res;

static char *tpath(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

#define cmd(...) eg_child_cmd(dir, res, __VA_ARGS__)

/* The configuration with pin_file as given (NULL: the harness token's own file). */
static char *config(const char *pin_file)
{
    char *text = eg_fx_basic_config(th, ca, "line", pass);

    if (text != NULL && pin_file != NULL && eg_fx_ini_set(&text, "pin_file", pin_file) != 0) {
        free(text);
        text = NULL;
    }
    return text;
}

static int suite_init(void)
{
    const eg_fx_suite s = {&th, &res, dir, ini, ca, pass, daemon_log};

    if (eg_fx_suite_open(kind, "service", "CN=service CA,O=estgate tests", &s) != 0 ||
        (config_text = config(NULL)) == NULL)
        return -1;
    return eg_file_write(ini, config_text, strlen(config_text), 0600);
}

static int suite_clean(void)
{
    eg_th_destroy(th);
    free(config_text);
    free(res);
    return 0;
}

/* ---- systemd's end of the notification socket ---- */

/* A datagram socket at path, or at an abstract name when path starts with '@'; -1 on failure. */
static int notify_listen(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || n >= sizeof(a.sun_path))
        goto fail;
    memcpy(a.sun_path, path, n);
    if (path[0] == '@')
        a.sun_path[0] = 0;
    else
        unlink(path);
    if (bind(fd, (struct sockaddr *)&a,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] != '@'))) != 0)
        goto fail;
    return fd;
fail:
    perror("notify socket");
    if (fd >= 0)
        close(fd);
    return -1;
}

/* The next message, NUL-terminated, within timeout_ms; false when none came. */
static bool notify_next(int fd, char *buf, size_t cap, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    ssize_t n;

    buf[0] = 0;
    if (poll(&p, 1, timeout_ms) != 1 || (n = recv(fd, buf, cap - 1, 0)) < 0)
        return false;
    buf[n] = 0;
    return true;
}

/* The next message holds every needle (a NULL-terminated list); says what came if not. */
static bool expect_message(int fd, const char *what, ...) __attribute__((sentinel));

static bool expect_message(int fd, const char *what, ...)
{
    char msg[2048];
    const char *needle;
    bool ok;
    va_list ap;

    if (!notify_next(fd, msg, sizeof(msg), 20000)) {
        fprintf(stderr, "\n  no notification: expected %s\n", what);
        return false;
    }
    ok = true;
    va_start(ap, what);
    while ((needle = va_arg(ap, const char *)) != NULL)
        ok = ok && strstr(msg, needle) != NULL;
    va_end(ap);
    if (!ok)
        fprintf(stderr, "\n  expected %s, got:\n%s\n", what, msg);
    return ok;
}

/* Starts the daemon with NOTIFY_SOCKET=addr in its environment only. */
static int start_notified(const char *addr, pid_t *pid, unsigned *port)
{
    int rc;

    setenv("NOTIFY_SOCKET", addr, 1);
    rc = eg_fx_daemon_start(ini, daemon_log, pid, port, 1);
    unsetenv("NOTIFY_SOCKET");
    return rc;
}

/* ---- tests ---- */

static void test_systemd_hears_ready_reloading_and_stopping(void)
{
    char sock[PATH_MAX], serving[128];
    unsigned port = 0;
    pid_t pid = 0;
    int fd;

    fd = notify_listen(tpath(sock, "notify.sock"));
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL_FATAL(start_notified(sock, &pid, &port), 0);
    snprintf(serving, sizeof(serving), "STATUS=Serving 1 profile on https://127.0.0.1:%u/", port);
    CU_ASSERT(expect_message(fd, "READY=1", "READY=1", serving, NULL));
    /* Ready means serving. */
    CU_ASSERT_EQUAL(eg_fx_cacerts_status(dir, res, ca, port), 200);

    /* systemctl reload: the file as it is. */
    CU_ASSERT_EQUAL(kill(pid, SIGHUP), 0);
    CU_ASSERT(expect_message(fd, "RELOADING=1", "RELOADING=1\n",
                             "MONOTONIC_USEC=", "STATUS=Reloading ", NULL));
    CU_ASSERT(expect_message(fd, "READY=1 after the reload", "READY=1\n", serving, "; reloaded at ",
                             NULL));

    /* A broken edit: refused, and systemd hears READY again with the reason. */
    CU_ASSERT_EQUAL(eg_file_write(ini, "[server]\nlisten = nowhere\n", 26, 0600), 0);
    CU_ASSERT_EQUAL(kill(pid, SIGHUP), 0);
    CU_ASSERT(expect_message(fd, "RELOADING=1", "RELOADING=1\n", NULL));
    CU_ASSERT(expect_message(fd, "READY=1 after a refused reload", "READY=1\n", serving,
                             "was refused and the configuration before it stays (see the log)",
                             NULL));
    CU_ASSERT_EQUAL(eg_file_write(ini, config_text, strlen(config_text), 0600), 0);
    CU_ASSERT_EQUAL(eg_fx_cacerts_status(dir, res, ca, port), 200);

    CU_ASSERT_EQUAL(kill(pid, SIGTERM), 0);
    CU_ASSERT(expect_message(fd, "STOPPING=1", "STOPPING=1\n", "STATUS=Stopping", NULL));
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&pid, 0), 0);
    close(fd);
}

/* systemd may give an abstract name ("@..."); the same messages go there. */
static void test_an_abstract_socket_name(void)
{
    char name[64];
    unsigned port = 0;
    pid_t pid = 0;
    int fd;

    snprintf(name, sizeof(name), "@estgate-test-%ld", (long)getpid());
    fd = notify_listen(name);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL_FATAL(start_notified(name, &pid, &port), 0);
    CU_ASSERT(expect_message(fd, "READY=1", "READY=1\n", "STATUS=Serving 1 profile", NULL));
    CU_ASSERT_EQUAL(kill(pid, SIGTERM), 0);
    CU_ASSERT(expect_message(fd, "STOPPING=1", "STOPPING=1\n", NULL));
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&pid, 0), 0);
    close(fd);
}

/* A file with errors: estgated exits 78 (EX_CONFIG), and systemctl status says why. */
static void test_a_broken_configuration_says_why(void)
{
    char sock[PATH_MAX], bin[PATH_MAX], bad[PATH_MAX], want[PATH_MAX + 64];
    int fd;

    fd = notify_listen(tpath(sock, "notify-bad.sock"));
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL_FATAL(
        eg_file_write(tpath(bad, "bad.ini"), "[server]\nthreads = many\n", 24, 0600), 0);
    setenv("NOTIFY_SOCKET", sock, 1);
    CU_ASSERT_EQUAL(cmd(eg_child_built("appliance/estgated", bin), "-c", bad, NULL), 78);
    unsetenv("NOTIFY_SOCKET");
    snprintf(want, sizeof(want), "STATUS=Failed: %s has errors (see the log", bad);
    CU_ASSERT(expect_message(fd, "the failure", want, NULL));
    close(fd);
}

/*
 * LoadCredential=token-pin:FILE and pin_file = credential:token-pin: the daemon logs in with
 * the PIN systemd put in $CREDENTIALS_DIRECTORY and signs; outside the service the check says
 * where the PIN comes from.
 */
static void test_token_pin_from_a_systemd_credential(void)
{
    const eg_token_config *c = eg_th_config(th);
    char creds[PATH_MAX], pinpath[PATH_MAX + 16], key[PATH_MAX], csr[PATH_MAX], url[128],
        bin[PATH_MAX];
    char user[160], *pin, *text;
    unsigned port = 0;
    pid_t pid = 0;
    int rc;

    CU_ASSERT_EQUAL_FATAL(mkdir(tpath(creds, "credentials"), 0700), 0);
    pin = eg_file_read(c->pin_file, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pin);
    snprintf(pinpath, sizeof(pinpath), "%s/token-pin", creds);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(pinpath, pin, strlen(pin), 0400), 0);
    free(pin);
    text = config("credential:token-pin");
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL_FATAL(eg_file_write(ini, text, strlen(text), 0600), 0);

    /* An operator's shell, not the service: said, nothing opened. */
    unsetenv("CREDENTIALS_DIRECTORY");
    CU_ASSERT_EQUAL(cmd(eg_child_built("appliance/estgated", bin), "--check-config", ini, NULL), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->err, "'credential:token-pin' is read from systemd's "
                                            "credentials, but CREDENTIALS_DIRECTORY is not set"));

    setenv("CREDENTIALS_DIRECTORY", creds, 1);
    rc = eg_fx_daemon_start(ini, daemon_log, &pid, &port, 1);
    unsetenv("CREDENTIALS_DIRECTORY");
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    /* An enrollment: the CA key signed in the token the credential's PIN logged in to. */
    CU_ASSERT_EQUAL(cmd("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", tpath(key, "cred.key"),
                        "-subj", "/CN=cred.example.com", "-addext",
                        "subjectAltName=DNS:cred.example.com", "-outform", "DER", "-out",
                        tpath(csr, "cred.der"), NULL),
                    0);
    pin = eg_file_read(pass, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pin);
    snprintf(user, sizeof(user), "line:%s", pin);
    free(pin);
    snprintf(url, sizeof(url), "https://127.0.0.1:%u/.well-known/est/simpleenroll", port);
    {
        char body[PATH_MAX + 1];

        snprintf(body, sizeof(body), "@%s", csr);
        CU_ASSERT_EQUAL(cmd("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
                            "-u", user, "-H", "Content-Type: application/pkcs10", "--data-binary",
                            body, url, NULL),
                        0);
        CU_ASSERT_STRING_EQUAL(res->out, "200");
    }
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&pid, SIGTERM), 0);
    CU_ASSERT_EQUAL(eg_file_write(ini, config_text, strlen(config_text), 0600), 0);
    free(text);
}

int main(int argc, char **argv)
{
    CU_TestInfo tests[] = {
        {"systemd hears READY, RELOADING and STOPPING",
         test_systemd_hears_ready_reloading_and_stopping},
        {"an abstract socket name", test_an_abstract_socket_name},
        {"a broken configuration says why", test_a_broken_configuration_says_why},
        {"the token PIN from a systemd credential", test_token_pin_from_a_systemd_credential},
        CU_TEST_INFO_NULL,
    };

    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
