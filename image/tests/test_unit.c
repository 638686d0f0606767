/*
 * What the image takes from the build, checked with systemd's own tools:
 * `cmake --install` into a scratch root puts the programs, estgated's unit,
 * its system user and the documentation where Debian keeps them; the unit
 * passes `systemd-analyze verify` with the installed programs; its sandbox
 * scores an exposure under 2.0 in `systemd-analyze security` (DESIGN.md's
 * target, where systemd-resolved stands); and `systemd-sysusers` makes the
 * user the unit runs as. The unit's behaviour under systemd (READY=1 and the
 * rest) is estgated's, and hsm-tests/test_service drives it.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "child.h"
#include "cu_run.h"
#include "tmpdir.h"

static char dir[PATH_MAX], root[PATH_MAX + 8];
static char unit_path[PATH_MAX + 64]; /* the installed unit with the root's paths */
static eg_child_result *res;
static bool installed;

static const char *in_root(char *buf, const char *rel)
{
    snprintf(buf, PATH_MAX + 128, "%s%s", root, rel);
    return buf;
}

static bool executable(const char *rel)
{
    char p[PATH_MAX + 128];
    struct stat st;

    return stat(in_root(p, rel), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111) != 0;
}

static bool regular(const char *rel)
{
    char p[PATH_MAX + 128];
    struct stat st;

    return stat(in_root(p, rel), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

static int suite_init(void)
{
    char build[PATH_MAX];
    const char *b = getenv("EG_BUILD_DIR");

    if ((res = calloc(1, sizeof(*res))) == NULL || b == NULL ||
        eg_tmpdir_make(dir, sizeof(dir), NULL, "unit") != 0)
        return -1;
    snprintf(build, sizeof(build), "%s", b);
    snprintf(root, sizeof(root), "%s/root", dir);
    /* As an image build does: DESTDIR is the image's root. */
    setenv("DESTDIR", root, 1);
    installed = eg_child_cmd(dir, res, EG_CMAKE, "--install", build, NULL) == 0;
    unsetenv("DESTDIR");
    return 0;
}

static int suite_clean(void)
{
    if (dir[0] != 0)
        eg_child_cmd("/", res, "rm", "-rf", dir, NULL);
    free(res);
    return 0;
}

static void test_install_puts_everything_in_place(void)
{
    CU_ASSERT_FATAL(installed);
    CU_ASSERT(executable(EG_BINDIR "/estgated"));
    CU_ASSERT(executable(EG_BINDIR "/estgate-provision"));
    CU_ASSERT(regular(EG_UNITDIR "/estgated.service"));
    CU_ASSERT(regular(EG_SYSUSERSDIR "/estgate.conf"));
    CU_ASSERT(regular(EG_DOCDIR "/operator-guide.md"));
    CU_ASSERT(regular(EG_DOCDIR "/configuration.md"));
    CU_ASSERT(regular(EG_DOCDIR "/estgated.example.ini"));
    /* The installed program runs, and names its build. */
    {
        char p[PATH_MAX + 128];

        CU_ASSERT_EQUAL(
            eg_child_cmd(dir, res, in_root(p, EG_BINDIR "/estgated"), "--version", NULL), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(res->out, "estgated " ESTGATE_VERSION " (OpenSSL 3."));
    }
}

/*
 * The installed unit with its programs' paths moved into the scratch root, so that systemd's
 * checks find the files the unit names; nothing else changes.
 */
static int unit_in_root(void)
{
    char p[PATH_MAX + 128], *text, *at, *out;
    const char *bin = EG_BINDIR "/", *s;
    size_t len, n = 0, rl = strlen(root), bl = strlen(bin);
    int rc;

    if ((text = eg_file_read(in_root(p, EG_UNITDIR "/estgated.service"), &len)) == NULL)
        return -1;
    if ((out = malloc(len * 2 + 4096)) == NULL) { /* a few ExecStart= lines gain the root */
        free(text);
        return -1;
    }
    for (s = text; (at = strstr(s, bin)) != NULL; s = at + bl) {
        memcpy(out + n, s, (size_t)(at - s));
        n += (size_t)(at - s);
        memcpy(out + n, root, rl);
        n += rl;
        memcpy(out + n, bin, bl);
        n += bl;
    }
    memcpy(out + n, s, strlen(s));
    n += strlen(s);
    snprintf(unit_path, sizeof(unit_path), "%s/estgated.service", dir);
    rc = eg_file_write(unit_path, out, n, 0644);
    free(out);
    free(text);
    return rc;
}

static void test_unit_passes_systemd_analyze_verify(void)
{
    char tool[PATH_MAX];

    CU_ASSERT_FATAL(installed);
    if (eg_child_which("systemd-analyze", tool) == NULL) {
        CU_FAIL("systemd-analyze is not installed (sh image/deps.sh test)");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(unit_in_root(), 0);
    CU_ASSERT_EQUAL(eg_child_cmd(dir, res, tool, "verify", unit_path, NULL), 0);
    /* verify passes with warnings (a misspelt key, a missing program): none here. */
    if (res->err[0] != 0)
        fprintf(stderr, "\n  systemd-analyze verify said:\n%s", res->err);
    CU_ASSERT_EQUAL(res->err[0], 0);
}

static void test_unit_exposure_is_under_2(void)
{
    char tool[PATH_MAX];
    const char *tag = "Overall exposure level for estgated.service: ", *p;
    double level;

    CU_ASSERT_FATAL(installed);
    if (eg_child_which("systemd-analyze", tool) == NULL) {
        CU_FAIL("systemd-analyze is not installed (sh image/deps.sh test)");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(unit_in_root(), 0);
    /* The threshold is in tenths: 19 fails a unit at 2.0 or above. */
    CU_ASSERT_EQUAL(eg_child_cmd(dir, res, tool, "security", "--offline=yes", "--threshold=19",
                                 "--no-pager", unit_path, NULL),
                    0);
    p = strstr(res->out, tag);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    level = strtod(p + strlen(tag), NULL);
    printf("(exposure %.1f) ", level);
    CU_ASSERT(level > 0.0 && level < 2.0);
}

/* Whether the unit's RestartPreventExitStatus= line lists code. */
static bool restart_prevented(const char *unit, int code)
{
    const char *line = strstr(unit, "\nRestartPreventExitStatus=");
    char word[16];
    size_t n, w;

    if (line == NULL)
        return false;
    line += strlen("\nRestartPreventExitStatus=");
    n = strcspn(line, "\n");
    snprintf(word, sizeof(word), "%d", code);
    w = strlen(word);
    for (const char *at = line; at < line + n; at += strcspn(at, " ") + 1)
        if (strncmp(at, word, w) == 0 && (at[w] == ' ' || at[w] == '\n'))
            return true;
    return false;
}

/*
 * A start that can never succeed is not retried for ever (each try may log in to the HSM, and
 * wrong PINs lock it): the unit bounds its starts, the code estgated gives for a configuration it
 * refuses and 77 for a refused login end the restarts, and ExecStartPre, whose exit code
 * RestartPreventExitStatus= does not read, checks the file without logging in.
 */
static void test_a_start_that_cannot_succeed_is_not_retried_for_ever(void)
{
    char p[PATH_MAX + 128], missing[PATH_MAX + 32], *unit, *svc;
    int daemon_code, check_code;
    char *pre;

    CU_ASSERT_FATAL(installed);
    unit = eg_file_read(in_root(p, EG_UNITDIR "/estgated.service"), NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(unit);
    svc = strstr(unit, "\n[Service]");
    CU_ASSERT_PTR_NOT_NULL_FATAL(svc);
    /* systemd reads the start limit in [Unit] only. */
    {
        char *limit = strstr(unit, "\nStartLimitBurst="), *interval;

        interval = strstr(unit, "\nStartLimitIntervalSec=");
        CU_ASSERT(limit != NULL && limit < svc && atoi(limit + 17) > 0);
        CU_ASSERT(interval != NULL && interval < svc);
    }
    snprintf(missing, sizeof(missing), "%s/no-such.ini", dir);
    eg_child_cmd(dir, res, in_root(p, EG_BINDIR "/estgated"), "-c", missing, NULL);
    daemon_code = res->code;
    eg_child_cmd(dir, res, in_root(p, EG_BINDIR "/estgated"), "--check-config", missing, NULL);
    check_code = res->code;
    CU_ASSERT(daemon_code > 0 && restart_prevented(unit, daemon_code));
    CU_ASSERT(check_code > 0);
    CU_ASSERT(restart_prevented(unit, 77)); /* the token refused the login */
    pre = strstr(unit, "\nExecStartPre=");
    CU_ASSERT(pre != NULL && strstr(pre, " --check-config --no-token ") != NULL &&
              strstr(pre, " --check-config --no-token ") < strchr(pre + 1, '\n'));
    if (!restart_prevented(unit, daemon_code))
        fprintf(stderr, "\n  estgated exits %d, --check-config %d, for a missing file\n",
                daemon_code, check_code);
    free(unit);
}

static void test_sysusers_makes_the_units_user(void)
{
    char tool[PATH_MAX], p[PATH_MAX + 128], *passwd;

    CU_ASSERT_FATAL(installed);
    if (eg_child_which("systemd-sysusers", tool) == NULL) {
        CU_FAIL("systemd-sysusers is not installed (sh image/deps.sh test)");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(mkdir(in_root(p, "/etc"), 0755), 0);
    CU_ASSERT_EQUAL(eg_child_cmd(dir, res, tool, "--root", root,
                                 in_root(p, EG_SYSUSERSDIR "/estgate.conf"), NULL),
                    0);
    passwd = eg_file_read(in_root(p, "/etc/passwd"), NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(passwd);
    /* The unit's User= and StateDirectory=, and no login. */
    CU_ASSERT_PTR_NOT_NULL(strstr(passwd, "estgate:x:"));
    CU_ASSERT_PTR_NOT_NULL(strstr(passwd, ":/var/lib/estgate:/usr/sbin/nologin\n"));
    free(passwd);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"cmake --install puts everything in place", test_install_puts_everything_in_place},
        {"the unit passes systemd-analyze verify", test_unit_passes_systemd_analyze_verify},
        {"the unit's exposure is under 2.0", test_unit_exposure_is_under_2},
        {"a start that cannot succeed is not retried for ever",
         test_a_start_that_cannot_succeed_is_not_retried_for_ever},
        {"systemd-sysusers makes the unit's user", test_sysusers_makes_the_units_user},
        CU_TEST_INFO_NULL,
    };

    return eg_cu_run("image", suite_init, suite_clean, tests);
}
