/*
 * estgated as a systemd service, on a fresh token, without systemd: the test
 * plays systemd's part.
 * - The notification socket (sd_notify(3)): READY=1 once the daemon serves,
 *   RELOADING=1 and READY=1 around a reload, taken or refused, STOPPING=1 at
 *   SIGTERM, and a STATUS line for each, which `systemctl status` shows; a
 *   configuration with errors says so before estgated exits.
 * - The token PIN from a systemd credential (pin_file = credential:NAME and
 *   $CREDENTIALS_DIRECTORY, as LoadCredential= gives it).
 * - The watchdog (WatchdogSec=, WATCHDOG_USEC): fed while the daemon is well,
 *   no longer when its token hangs (the p11-kit server stopped with SIGSTOP:
 *   an HSM gone silent behind an open connection), and again once the token
 *   answers.
 * image/tests/test_unit checks the unit file itself with systemd's tools.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
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

    /* The watchdog's messages come between the others when it is on. */
    do {
        if (!notify_next(fd, msg, sizeof(msg), 20000)) {
            fprintf(stderr, "\n  no notification: expected %s\n", what);
            return false;
        }
    } while (strcmp(msg, "WATCHDOG=1") == 0 && strcmp(what, "WATCHDOG=1") != 0);
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

/*
 * What curl needs to send simpleenroll a new P-256 CSR for NAME.example.com (DER, in NAME.der)
 * with Basic auth: user "line:PASSWORD" (160), url (128) and body "@FILE" (PATH_MAX + 1). 0 or -1.
 */
static int enroll_args(const char *name, unsigned port, char *user, char *url, char *body)
{
    char csr[PATH_MAX], *pw;

    if (eg_fx_device_csr(dir, res, name, csr) != 0 || (pw = eg_file_read(pass, NULL)) == NULL)
        return -1;
    snprintf(user, 160, "line:%s", pw);
    free(pw);
    snprintf(url, 128, "https://127.0.0.1:%u/.well-known/est/simpleenroll", port);
    snprintf(body, PATH_MAX + 1, "@%s", csr);
    return 0;
}

/* A configuration of its own at path with [token] hang_s, and the password now in pass (config()
   writes a new one). 0 or -1. */
static int hang_config(const char *path, unsigned hang_s)
{
    char *text = config(NULL), line[48];
    int rc;

    if (text == NULL)
        return -1;
    snprintf(line, sizeof(line), "\n[token]\nhang_s = %u\n", hang_s);
    rc = eg_file_write_replaced(path, text, "\n[token]\n", line);
    free(text);
    return rc;
}

/* Starts curl sending that enrollment in the background (its status code into log). */
static int start_enroll(char *user, char *url, char *body, const char *log, pid_t *curl)
{
    char *const argv[] = {"curl",
                          "-sS",
                          "-o",
                          "/dev/null",
                          "-w",
                          "%{http_code}",
                          "--max-time",
                          "60",
                          "--cacert",
                          ca,
                          "-u",
                          user,
                          "-H",
                          "Content-Type: application/pkcs10",
                          "--data-binary",
                          body,
                          url,
                          NULL};

    return eg_child_start(argv, log, curl);
}

/* ---- tests ---- */

static void test_systemd_hears_ready_reloading_and_stopping(void)
{
    char sock[PATH_MAX], serving[128], now_serving[160];
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

    /* Listeners changed in the file take effect at the next restart: the status names the ones
       that serve, not the file's. */
    CU_ASSERT_EQUAL(eg_file_write_replaced(ini, config_text, "listen = 127.0.0.1:0\n",
                                           "listen = 127.0.0.1:0\nlisten = 127.0.0.1:0 tls12\n"),
                    0);
    CU_ASSERT_EQUAL(kill(pid, SIGHUP), 0);
    CU_ASSERT(expect_message(fd, "RELOADING=1", "RELOADING=1\n", NULL));
    snprintf(now_serving, sizeof(now_serving), "%s; reloaded at ", serving);
    CU_ASSERT(expect_message(fd, "READY=1 with the listeners that serve", "READY=1\n", now_serving,
                             NULL));
    CU_ASSERT_EQUAL(eg_file_write(ini, config_text, strlen(config_text), 0600), 0);

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

/* Every message that comes within ms; how many held needle (and all of them in *other when it is
   not NULL: those that did not). */
static int count_messages(int fd, int ms, const char *needle, int *other)
{
    char msg[2048];
    int n = 0, rest;
    unsigned long long until;
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    until = (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000 + ms;
    if (other != NULL)
        *other = 0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        rest = (int)(until - ((unsigned long long)ts.tv_sec * 1000 +
                              (unsigned long long)ts.tv_nsec / 1000000));
        if (rest <= 0 || (unsigned long long)rest > (unsigned long long)ms ||
            !notify_next(fd, msg, sizeof(msg), rest))
            return n;
        if (strstr(msg, needle) != NULL)
            n++;
        else if (other != NULL)
            (*other)++;
    }
}

/*
 * WatchdogSec=1s and [token] hang_s = 2. An enrollment sent while the p11-kit server is stopped
 * waits on its token call; 2 s on, the daemon says the token hangs, in its log and its status,
 * and stops feeding the watchdog, which is what makes systemd restart it. Once the server runs
 * again the enrollment is answered, the token is said to answer again, and the watchdog is fed.
 */
static void test_the_watchdog_is_fed_until_the_token_hangs(void)
{
    char sock[PATH_MAX], hung_ini[PATH_MAX], body[PATH_MAX + 1], curl_log[PATH_MAX], url[128],
        user[160], *pw;
    unsigned port = 0;
    pid_t pid = 0, curl = 0;
    int fd, other, rc;

    if (kind != EG_TH_P11KIT) {
        printf("(only a p11-kit server can be stopped to make a token hang) ");
        return;
    }
    fd = notify_listen(tpath(sock, "notify-dog.sock"));
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL_FATAL(hang_config(tpath(hung_ini, "hang.ini"), 2), 0);
    setenv("NOTIFY_SOCKET", sock, 1);
    setenv("WATCHDOG_USEC", "1000000", 1);
    rc = eg_fx_daemon_start(hung_ini, daemon_log, &pid, &port, 1);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT(expect_message(fd, "READY=1", "READY=1\n", NULL));
    /* Fed every half interval: 4 or 5 times in 2.2 s, and nothing else said. */
    CU_ASSERT(count_messages(fd, 2200, "WATCHDOG=1", &other) >= 3);
    CU_ASSERT_EQUAL(other, 0);

    /* The token hangs under a request that needs it. Idle, a stopped server is not noticed. */
    CU_ASSERT_EQUAL_FATAL(enroll_args("dog", port, user, url, body), 0);
    CU_ASSERT_EQUAL_FATAL(eg_th_server_signal(th, SIGSTOP), 0);
    CU_ASSERT_EQUAL_FATAL(start_enroll(user, url, body, tpath(curl_log, "dog.curl"), &curl), 0);
    CU_ASSERT(expect_message(fd, "the token hangs", "STATUS=The token has not answered for ",
                             "(1 call waiting)", NULL));
    /* Not fed while it hangs: 2.5 s, two and a half intervals, without a WATCHDOG=1. */
    CU_ASSERT_EQUAL(count_messages(fd, 2500, "WATCHDOG=1", NULL), 0);
    CU_ASSERT_EQUAL(eg_file_count(daemon_log, "it hangs (the HSM, its network or its server; "
                                              "[token] hang_s = 2). systemd's watchdog is no "
                                              "longer fed and will restart estgated"),
                    1);

    CU_ASSERT_EQUAL(eg_th_server_signal(th, SIGCONT), 0);
    CU_ASSERT_EQUAL(eg_child_wait(curl), 0);
    pw = eg_file_read(curl_log, NULL);
    CU_ASSERT(pw != NULL && strstr(pw, "200") != NULL);
    if (pw == NULL || strstr(pw, "200") == NULL)
        fprintf(stderr, "\n  curl said: %s\n", pw ? pw : "(nothing)");
    free(pw);
    CU_ASSERT(expect_message(fd, "READY=1 once the token answers", "READY=1\n",
                             "; the token answers again after hanging", NULL));
    CU_ASSERT(count_messages(fd, 2200, "WATCHDOG=1", NULL) >= 3);
    CU_ASSERT_EQUAL(eg_file_count(daemon_log, "estgated: the token answers again, after "), 1);

    CU_ASSERT_EQUAL(kill(pid, SIGTERM), 0);
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&pid, 0), 0);
    close(fd);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Reaps pid if it exits within ms: its exit status (128 + signal when killed), or -1. */
static int exits_within(pid_t pid, int ms)
{
    int status;

    for (int waited = 0; waited < ms; waited += 50) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(50000);
    }
    return -1;
}

/*
 * SIGTERM while an enrollment waits on a hung token (the p11-kit server stopped, so its TLS
 * handshake waits on the token's TLS key): after the drain the daemon gives civetweb's threads
 * 5 s, says why it does not wait longer, and exits 69, instead of waiting for the token for
 * ever. The next daemon serves the same request.
 */
static void test_sigterm_leaves_a_request_stuck_on_the_token(void)
{
    char stuck_ini[PATH_MAX], stuck_log[PATH_MAX], body[PATH_MAX + 1], curl_log[PATH_MAX], url[128],
        user[160];
    unsigned port = 0;
    pid_t pid = 0, curl = 0;
    uint64_t t0;
    int rc, i;

    if (kind != EG_TH_P11KIT) {
        printf("(only a p11-kit server can be stopped to make a token hang) ");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(hang_config(tpath(stuck_ini, "stuck.ini"), 1), 0);
    CU_ASSERT_EQUAL_FATAL(
        eg_fx_daemon_start(stuck_ini, tpath(stuck_log, "stuck.log"), &pid, &port, 1), 0);
    CU_ASSERT_EQUAL_FATAL(enroll_args("stuck", port, user, url, body), 0);
    CU_ASSERT_EQUAL_FATAL(eg_th_server_signal(th, SIGSTOP), 0);
    CU_ASSERT_EQUAL_FATAL(start_enroll(user, url, body, tpath(curl_log, "stuck.curl"), &curl), 0);
    for (i = 0; i < 200 && eg_file_count(stuck_log, ": it hangs (the HSM") == 0; i++)
        usleep(50000);
    CU_ASSERT(eg_file_count(stuck_log, ": it hangs (the HSM") >= 1);

    t0 = mono_ms();
    CU_ASSERT_EQUAL(kill(pid, SIGTERM), 0);
    rc = exits_within(pid, 18000);
    CU_ASSERT_EQUAL(rc, 69);
    CU_ASSERT(mono_ms() - t0 < 18000); /* the drain, 10 s, and 5 s for the threads */
    if (rc < 0) {                      /* the old way: waiting on the token for ever */
        kill(pid, SIGKILL);
        eg_child_wait(pid);
    }
    CU_ASSERT_EQUAL(eg_file_count(stuck_log, "estgated: the HTTPS threads have not stopped 5 s "
                                             "after the drain: some wait on a token call that "
                                             "does not return (a request or a handshake); the "
                                             "ledger is closed and estgated exits without them "
                                             "(status 69)"),
                    1);
    CU_ASSERT_EQUAL(eg_th_server_signal(th, SIGCONT), 0);
    eg_child_wait(curl);

    /* The same request to the next daemon: the pending intent is taken up. */
    CU_ASSERT_EQUAL_FATAL(eg_fx_daemon_start(stuck_ini, stuck_log, &pid, &port, 1), 0);
    snprintf(url, sizeof(url), "https://127.0.0.1:%u/.well-known/est/simpleenroll", port);
    CU_ASSERT_EQUAL(cmd("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
                        "-u", user, "-H", "Content-Type: application/pkcs10", "--data-binary", body,
                        url, NULL),
                    0);
    CU_ASSERT_STRING_EQUAL(res->out, "200");
    CU_ASSERT_EQUAL(eg_fx_daemon_stop(&pid, SIGTERM), 0);
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
    char creds[PATH_MAX], pinpath[PATH_MAX + 16], url[128], body[PATH_MAX + 1], bin[PATH_MAX];
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
    CU_ASSERT_EQUAL_FATAL(enroll_args("cred", port, user, url, body), 0);
    CU_ASSERT_EQUAL(cmd("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca,
                        "-u", user, "-H", "Content-Type: application/pkcs10", "--data-binary", body,
                        url, NULL),
                    0);
    CU_ASSERT_STRING_EQUAL(res->out, "200");
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
        {"the watchdog is fed until the token hangs",
         test_the_watchdog_is_fed_until_the_token_hangs},
        {"SIGTERM leaves a request stuck on the token",
         test_sigterm_leaves_a_request_stuck_on_the_token},
        CU_TEST_INFO_NULL,
    };

    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
