/*
 * estgated's unit under a real systemd: the image's files, installed with `cmake --install` into
 * an overlay of this machine's root, booted with systemd-nspawn (its own network, so that its
 * 8443 is its own), and set up as docs/operator-guide.md "Running under systemd" says: the
 * system user from sysusers, a SoftHSM token given over to it, the PIN as a systemd credential
 * (LoadCredential=), the guide's drop-in. Then what an operator does with systemctl: start
 * (Type=notify: active once it serves), enroll, reload (ExecReload= checks the file first),
 * a broken file refused by reload while the daemon keeps serving, the watchdog restarting a
 * daemon that stops answering, and stop.
 *
 * It needs root, overlayfs and systemd-nspawn (Debian's systemd-container). Run without root,
 * or where the kernel refuses root an overlay (an unprivileged container), it says why and exits
 * 77, which ctest reports as skipped, not passed; any other failure to boot fails every test
 * with the reason.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "child.h"
#include "cu_run.h"
#include "tmpdir.h"

static char dir[PATH_MAX], root[PATH_MAX + 16], leader[16], nspawn_log[PATH_MAX + 16];
static const char *why_not; /* why the container could not be booted */
static pid_t nspawn_pid;
static bool mounted;
static eg_child_result *res;

/* Runs a shell command inside the container (all its namespaces); its exit status. */
static int in_box(const char *script)
{
    return eg_child_cmd(dir, res, "nsenter", "-t", leader, "-a", "/bin/sh", "-c", script, NULL);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The container's init: the child of systemd-nspawn. */
static bool find_leader(void)
{
    char path[64], buf[64];
    FILE *fp;

    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)nspawn_pid, (int)nspawn_pid);
    if ((fp = fopen(path, "r")) == NULL)
        return false;
    buf[0] = 0;
    if (fgets(buf, sizeof(buf), fp) == NULL)
        buf[0] = 0;
    fclose(fp);
    if (sscanf(buf, "%15s", leader) != 1)
        return false;
    return true;
}

static int write_text(const char *rel, const char *text, mode_t mode)
{
    char p[PATH_MAX + 128];

    snprintf(p, sizeof(p), "%s%s", root, rel);
    return eg_file_write(p, text, strlen(text), mode);
}

/*
 * Inside the container, as an operator following the guide: the user, a token with a CA and a
 * TLS key given over to it, the configuration with the PIN as a credential, the drop-in.
 */
static const char setup_script[] =
    "set -e\n"
    "M=/usr/lib/softhsm/libsofthsm2.so\n"
    "P=" EG_BINDIR "/estgate-provision\n"
    "systemd-sysusers\n"
    "install -d -m 0750 -g estgate /etc/estgate\n"
    "cd /etc/estgate\n"
    "(umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n' > so.pin;"
    " head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n' > user.pin)\n"
    "$P init-token --module $M --label fleet --so-pin-file so.pin --pin-file user.pin\n"
    "$P ca create --module $M --token fleet --pin-file user.pin --label ca --key ec-p256"
    " --subject 'CN=Fleet CA,O=Example' --self-signed --days 3650 --out ca.pem\n"
    "$P tls create --module $M --token fleet --pin-file user.pin --label tls --key ec-p256"
    " --ca-label ca --dns localhost --ip 127.0.0.1 --days 825 --out tls-chain.pem\n"
    "chgrp estgate ca.pem tls-chain.pem && chmod 0640 ca.pem tls-chain.pem\n"
    "chown -R estgate: /var/lib/softhsm/tokens/*\n"
    "printf 'pass-for-dev\\n' > basic.pass\n"
    "H=$(" EG_BINDIR "/estgated --hash-password < basic.pass)\n"
    "cat > estgated.ini <<EOF\n"
    "[server]\n"
    "listen = 127.0.0.1:8443\n"
    "tls_key = pkcs11:token=fleet;object=tls;type=private\n"
    "tls_chain = /etc/estgate/tls-chain.pem\n"
    "[token]\n"
    "module = $M\n"
    "label = fleet\n"
    "pin_file = credential:token-pin\n"
    "[profile default]\n"
    "ca_key = pkcs11:token=fleet;object=ca;type=private\n"
    "ca_chain = /etc/estgate/ca.pem\n"
    "auth = basic\n"
    "user = dev:$H\n"
    "san = dns:.example.com\n"
    "eku = clientAuth\n"
    "max_days = 90\n"
    "[profile keygen]\n"
    "ca_key = pkcs11:token=fleet;object=ca;type=private\n"
    "ca_chain = /etc/estgate/ca.pem\n"
    "auth = basic\n"
    "user = dev:$H\n"
    "san = dns:.example.com\n"
    "eku = clientAuth\n"
    "serverkeygen = plaintext\n"
    "serverkeygen_key_types = ec:P-256\n"
    "EOF\n"
    "chgrp estgate estgated.ini && chmod 0640 estgated.ini\n"
    "mkdir -p /etc/systemd/system/estgated.service.d\n"
    "cat > /etc/systemd/system/estgated.service.d/override.conf <<EOF\n"
    "[Service]\n"
    "LoadCredential=token-pin:/etc/estgate/user.pin\n"
    "ReadWritePaths=/var/lib/softhsm/tokens\n"
    "SupplementaryGroups=softhsm\n"
    "EOF\n"
    "systemctl daemon-reload\n";

static int boot(void)
{
    char upper[PATH_MAX + 16], work[PATH_MAX + 16], opts[3 * PATH_MAX + 64], mid[64];
    char machine[32];
    char *argv[16];
    int n = 0;

    if (eg_child_which("systemd-nspawn", upper) == NULL)
        return why_not = "systemd-nspawn is not installed (sh image/deps.sh test)", -1;
    snprintf(upper, sizeof(upper), "%s/upper", dir);
    snprintf(work, sizeof(work), "%s/work", dir);
    snprintf(root, sizeof(root), "%s/root", dir);
    if (mkdir(upper, 0755) != 0 || mkdir(work, 0755) != 0 || mkdir(root, 0755) != 0)
        return why_not = "cannot make the overlay's directories", -1;
    /* This machine's root, read through an overlay: what the test writes stays in upper. */
    snprintf(opts, sizeof(opts), "lowerdir=/,upperdir=%s,workdir=%s", upper, work);
    if (mount("overlay", root, "overlay", 0, opts) != 0)
        return why_not = "the kernel refuses an overlay of / here", -1;
    mounted = true;
    /* The image's files, as an image build puts them. */
    setenv("DESTDIR", root, 1);
    n = eg_child_cmd(dir, res, EG_CMAKE, "--install", getenv("EG_BUILD_DIR"), NULL);
    unsetenv("DESTDIR");
    if (n != 0)
        return why_not = "cmake --install into the overlay failed", -1;
    /* A machine id of its own, so that its journal is not taken for this machine's. */
    if (eg_child_cmd(dir, res, "systemd-id128", "new", NULL) != 0 ||
        snprintf(mid, sizeof(mid), "%.32s\n", res->out) != 33 ||
        write_text("/etc/machine-id", mid, 0444) != 0)
        return why_not = "cannot give the container a machine id", -1;
    snprintf(machine, sizeof(machine), "eg-unit-%d", (int)getpid());
    snprintf(nspawn_log, sizeof(nspawn_log), "%s/nspawn.log", dir);
    n = 0;
    argv[n++] = "systemd-nspawn";
    argv[n++] = "-q";
    argv[n++] = "--register=no"; /* no machined here */
    argv[n++] = "--keep-unit";
    argv[n++] = "--private-network"; /* its 127.0.0.1:8443 is its own */
    argv[n++] = "-D";
    argv[n++] = root;
    argv[n++] = "-M";
    argv[n++] = machine;
    argv[n++] = "-b";
    argv[n++] = "--";
    argv[n++] = "--unit=basic.target"; /* none of this machine's own services */
    argv[n] = NULL;
    if (eg_child_start(argv, nspawn_log, &nspawn_pid) != 0)
        return why_not = "systemd-nspawn did not start", -1;
    for (int i = 0; i < 300 && !find_leader(); i++)
        sleep_ms(100);
    if (leader[0] == 0)
        return why_not = "systemd-nspawn started no init (see nspawn.log)", -1;
    /* Up when systemd says so: running, or degraded if one of its own units failed. */
    for (int i = 0; i < 120; i++) {
        in_box("systemctl is-system-running");
        if (strncmp(res->out, "running", 7) == 0 || strncmp(res->out, "degraded", 8) == 0)
            break;
        sleep_ms(250);
    }
    if (strncmp(res->out, "running", 7) != 0 && strncmp(res->out, "degraded", 8) != 0)
        return why_not = "the container's systemd did not finish booting", -1;
    if (in_box(setup_script) != 0)
        return why_not = "the guide's set-up failed inside the container", -1;
    return 0;
}

static int suite_init(void)
{
    if ((res = calloc(1, sizeof(*res))) == NULL || getenv("EG_BUILD_DIR") == NULL ||
        eg_tmpdir_make(dir, sizeof(dir), NULL, "systemd") != 0)
        return -1;
    if (boot() != 0)
        fprintf(stderr, "\n  no container: %s\n", why_not);
    return 0;
}

static int suite_clean(void)
{
    if (nspawn_pid > 0) {
        if (leader[0] != 0)
            in_box("systemctl poweroff --no-block");
        for (int i = 0; i < 100 && waitpid(nspawn_pid, NULL, WNOHANG) == 0; i++)
            sleep_ms(100);
        if (kill(nspawn_pid, 0) == 0) {
            kill(nspawn_pid, SIGKILL);
            eg_child_wait(nspawn_pid);
        }
    }
    if (mounted && umount2(root, MNT_DETACH) != 0)
        fprintf(stderr, "cannot unmount %s: %s\n", root, strerror(errno));
    if (dir[0] != 0)
        eg_child_cmd("/", res, "rm", "-rf", dir, NULL);
    free(res);
    return 0;
}

#define NEED_BOX()                                                                                 \
    do {                                                                                           \
        if (why_not != NULL) {                                                                     \
            CU_FAIL(why_not);                                                                      \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* A property of the unit, e.g. "ActiveState", into buf. */
static const char *prop(const char *name, char *buf, size_t cap)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "systemctl show -p %s --value estgated", name);
    buf[0] = 0;
    if (in_box(cmd) == 0)
        snprintf(buf, cap, "%.*s", (int)strcspn(res->out, "\n"), res->out);
    return buf;
}

static void test_start_is_ready_once_it_serves(void)
{
    char v[256];

    NEED_BOX();
    CU_ASSERT_EQUAL(in_box("systemctl start estgated"), 0);
    CU_ASSERT_STRING_EQUAL(prop("ActiveState", v, sizeof(v)), "active");
    CU_ASSERT_STRING_EQUAL(prop("StatusText", v, sizeof(v)),
                           "Serving 2 profiles on https://127.0.0.1:8443/");
    /* ExecStartPre's check read the credential, and so did the daemon. */
    CU_ASSERT_EQUAL(in_box("journalctl -u estgated -o cat | grep -q 'estgated.ini: OK'"), 0);
}

static const char enroll_script[] =
    "set -e\n"
    "cd /root && B=https://127.0.0.1:8443/.well-known/est\n"
    "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem"
    " -subj /CN=d1.example.com -addext subjectAltName=DNS:d1.example.com -out r.csr 2>/dev/null\n"
    "curl -sS --fail --cacert /etc/estgate/ca.pem -u dev:pass-for-dev"
    " -H 'Content-Type: application/pkcs10' --data-binary @r.csr $B/simpleenroll -o c.b64\n"
    "tr -d '\\r\\n' < c.b64 | base64 -d | openssl pkcs7 -inform der -print_certs > c.pem\n"
    "openssl verify -CAfile /etc/estgate/ca.pem c.pem\n"
    "curl -sS --fail --cacert /etc/estgate/ca.pem -u dev:pass-for-dev"
    " -H 'Content-Type: application/pkcs10' --data-binary @r.csr $B/keygen/serverkeygen"
    " -o skg.txt\n"
    "grep -q 'application/pkcs8' skg.txt\n";

static void test_devices_enroll_through_the_sandbox(void)
{
    NEED_BOX();
    CU_ASSERT_EQUAL(in_box(enroll_script), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "c.pem: OK"));
}

static void test_reload_checks_the_file_then_applies_it(void)
{
    char v[256];

    NEED_BOX();
    /* ExecReload='s --check-config runs without the service's credentials: the PIN file it
       cannot read must not fail the reload. */
    CU_ASSERT_EQUAL(in_box("systemctl reload estgated"), 0);
    CU_ASSERT_EQUAL(in_box("journalctl -u estgated -o cat | grep -q 'reloaded /etc/estgate/"
                           "estgated.ini: 2 profiles'"),
                    0);
    CU_ASSERT_PTR_NOT_NULL(strstr(prop("StatusText", v, sizeof(v)), "reloaded at"));
    /* A broken edit fails the reload, and the daemon keeps serving what it had. */
    CU_ASSERT_EQUAL(in_box("cp /etc/estgate/estgated.ini /root/good.ini && "
                           "echo 'max_days = many' >> /etc/estgate/estgated.ini"),
                    0);
    CU_ASSERT_NOT_EQUAL(in_box("systemctl reload estgated"), 0);
    CU_ASSERT_STRING_EQUAL(prop("ActiveState", v, sizeof(v)), "active");
    CU_ASSERT_EQUAL(in_box("cp /root/good.ini /etc/estgate/estgated.ini"), 0);
    CU_ASSERT_EQUAL(in_box(enroll_script), 0);
}

static void test_the_watchdog_restarts_a_daemon_that_stopped(void)
{
    char before[32], after[32], v[64];

    NEED_BOX();
    /* A short interval, so that the test need not wait the unit's 60 s. */
    CU_ASSERT_EQUAL(in_box("mkdir -p /run/systemd/system/estgated.service.d && printf "
                           "'[Service]\\nWatchdogSec=4s\\n' > "
                           "/run/systemd/system/estgated.service.d/watchdog.conf && "
                           "systemctl daemon-reload && systemctl restart estgated"),
                    0);
    prop("WatchdogTimestampMonotonic", before, sizeof(before));
    sleep_ms(3000); /* pings every 2 s */
    prop("WatchdogTimestampMonotonic", after, sizeof(after));
    CU_ASSERT(strtoull(after, NULL, 10) > strtoull(before, NULL, 10));
    /* A daemon that stops answering stops feeding it: systemd kills and restarts it. */
    prop("MainPID", before, sizeof(before));
    CU_ASSERT_EQUAL(in_box("kill -STOP $(systemctl show -p MainPID --value estgated)"), 0);
    for (int i = 0; i < 120; i++) {
        sleep_ms(250);
        if (strcmp(prop("NRestarts", v, sizeof(v)), "1") == 0 &&
            strcmp(prop("ActiveState", v, sizeof(v)), "active") == 0)
            break;
    }
    CU_ASSERT_STRING_EQUAL(prop("NRestarts", v, sizeof(v)), "1");
    CU_ASSERT_STRING_EQUAL(prop("ActiveState", v, sizeof(v)), "active");
    CU_ASSERT_STRING_NOT_EQUAL(prop("MainPID", after, sizeof(after)), before);
    CU_ASSERT_EQUAL(in_box("journalctl -u estgated -o cat | grep -q 'Watchdog timeout'"), 0);
    CU_ASSERT_EQUAL(in_box(enroll_script), 0);
    in_box("rm -f /run/systemd/system/estgated.service.d/watchdog.conf && "
           "systemctl daemon-reload");
}

static void test_stop_answers_what_is_in_flight(void)
{
    char v[64];

    NEED_BOX();
    CU_ASSERT_EQUAL(in_box("systemctl stop estgated"), 0);
    CU_ASSERT_STRING_EQUAL(prop("ActiveState", v, sizeof(v)), "inactive");
    CU_ASSERT_STRING_EQUAL(prop("Result", v, sizeof(v)), "success");
    CU_ASSERT_EQUAL(
        in_box("journalctl -u estgated -o cat | grep -q 'every request in flight answered'"), 0);
}

/* Whether root may mount an overlay here (an unprivileged container's root may not). */
static bool may_mount(void)
{
    char tmp[] = "/tmp/eg-mount.XXXXXX";
    bool ok = mkdtemp(tmp) != NULL && mount("none", tmp, "tmpfs", 0, "size=64k") == 0;

    if (ok)
        umount2(tmp, MNT_DETACH);
    rmdir(tmp);
    return ok;
}

int main(void)
{
    /* ctest's SKIP_RETURN_CODE (image/tests/CMakeLists.txt): said, not passed. */
    if (geteuid() != 0 || !may_mount()) {
        printf("image/systemd skipped: %s\n",
               geteuid() != 0 ? "it needs root (systemd-nspawn, an overlay of /); run the tests "
                                "as root to check the unit under systemd"
                              : "root may not mount here (an unprivileged container)");
        return 77;
    }
    CU_TestInfo tests[] = {
        {"systemctl start: ready once it serves", test_start_is_ready_once_it_serves},
        {"devices enroll through the sandbox", test_devices_enroll_through_the_sandbox},
        {"systemctl reload: checked, then applied", test_reload_checks_the_file_then_applies_it},
        {"the watchdog restarts a daemon that stopped",
         test_the_watchdog_restarts_a_daemon_that_stopped},
        {"systemctl stop answers what is in flight", test_stop_answers_what_is_in_flight},
        CU_TEST_INFO_NULL,
    };

    return eg_cu_run("systemd", suite_init, suite_clean, tests);
}
