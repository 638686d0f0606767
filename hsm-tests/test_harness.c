/*
 * The token harness itself: every kind gives a token the signer opens and logs
 * in to, a p11-kit server can be killed and started again, and destroying a
 * token leaves neither its directory nor a process behind.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>

#include "p11.h"
#include "token_harness.h"

static eg_th_kind kind;

/* Whether another running process has dir in its command line (the p11-kit server has). */
static int process_mentions(const char *dir)
{
    char path[288], buf[4096];
    struct dirent *e;
    size_t n, i;
    int found = 0;
    FILE *f;
    DIR *d = opendir("/proc");

    while (d != NULL && !found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9' || atoi(e->d_name) == (int)getpid())
            continue;
        snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
        if ((f = fopen(path, "re")) == NULL)
            continue;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        for (i = 0; i < n; i++)
            buf[i] = buf[i] == 0 ? ' ' : buf[i];
        buf[n] = 0;
        found = strstr(buf, dir) != NULL;
    }
    if (d != NULL)
        closedir(d);
    return found;
}

/* No child of this process is left, running or unreaped. */
static int no_children(void)
{
    int status;

    return waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD;
}

/* Opens the token and makes a private session key, which only a logged-in user may. */
static int open_and_use(const eg_token_config *cfg)
{
    eg_keygen_spec spec = {EG_KEY_EC, 0, NID_X9_62_prime256v1, "harness", NULL, 0, false, false};
    eg_token *tok = NULL;
    eg_p11_key *key = NULL;
    int rc = -1;

    if (eg_token_open(cfg, &tok) != 0 || eg_p11_key_generate(tok, &spec, &key) != 0) {
        ERR_print_errors_fp(stderr);
        goto out;
    }
    rc = 0;
out:
    eg_p11_key_free(key);
    eg_token_free(tok);
    return rc;
}

static int file_is(const char *path, const char *want)
{
    char buf[256];
    size_t n;
    FILE *f = fopen(path, "re");

    if (f == NULL)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    return strcmp(buf, want) == 0;
}

static void test_kind_names_round_trip(void)
{
    eg_th_kind k = EG_TH_NSS;
    int i;

    for (i = EG_TH_SOFTHSM; i <= EG_TH_NSS; i++) {
        CU_ASSERT_EQUAL(eg_th_kind_parse(eg_th_kind_name((eg_th_kind)i), &k), 0);
        CU_ASSERT_EQUAL(k, (eg_th_kind)i);
    }
    k = EG_TH_P11KIT;
    CU_ASSERT_EQUAL(eg_th_kind_parse("pkcs11", &k), -1);
    CU_ASSERT_EQUAL(eg_th_kind_parse(NULL, &k), -1);
    CU_ASSERT_EQUAL(k, EG_TH_P11KIT); /* untouched on error */
    eg_th_destroy(NULL);
}

static void test_token_opens_and_logs_in(void)
{
    const eg_token_config *cfg;
    struct stat st;
    char *pin_line = NULL;
    eg_th *th = NULL;

    CU_ASSERT_EQUAL_FATAL(eg_th_create(kind, "harness-open", &th), 0);
    cfg = eg_th_config(th);
    CU_ASSERT(strstr(eg_th_dir(th), "/estgate-token-") != NULL);
    CU_ASSERT(stat(eg_th_dir(th), &st) == 0 && S_ISDIR(st.st_mode));
    CU_ASSERT(stat(cfg->pin_file, &st) == 0 && (st.st_mode & 0777) == 0600);
    CU_ASSERT(asprintf(&pin_line, "%s\n", eg_th_user_pin(th)) > 0);
    CU_ASSERT(pin_line != NULL && file_is(cfg->pin_file, pin_line));
    CU_ASSERT(access(cfg->module_path, R_OK) == 0);
    CU_ASSERT_STRING_EQUAL(cfg->token_label,
                           kind == EG_TH_NSS ? "NSS Certificate DB" : "harness-open");
    CU_ASSERT((cfg->init_args != NULL) == (kind == EG_TH_NSS));
    CU_ASSERT((eg_th_so_pin(th) != NULL) == (kind != EG_TH_NSS));
    CU_ASSERT_EQUAL(open_and_use(cfg), 0);
    free(pin_line);
    eg_th_destroy(th);
}

/* Shows that opening with a PIN file really logs in: a wrong PIN fails the open. */
static void test_wrong_pin_is_refused(void)
{
    eg_token_config cfg;
    eg_token *tok = NULL;
    char *wrong = NULL;
    eg_th *th = NULL;
    FILE *f;

    CU_ASSERT_EQUAL_FATAL(eg_th_create(kind, "harness-pin", &th), 0);
    cfg = *eg_th_config(th);
    CU_ASSERT_FATAL(asprintf(&wrong, "%s/wrong.pin", eg_th_dir(th)) > 0);
    CU_ASSERT_FATAL((f = fopen(wrong, "wx")) != NULL);
    fputs("0000-not-the-pin\n", f);
    fclose(f);
    chmod(wrong, 0600);
    cfg.pin_file = wrong;
    CU_ASSERT_NOT_EQUAL(eg_token_open(&cfg, &tok), 0);
    CU_ASSERT_PTR_NULL(tok);
    ERR_clear_error();
    CU_ASSERT_EQUAL(open_and_use(eg_th_config(th)), 0);
    free(wrong);
    eg_th_destroy(th);
}

static void test_server_kill_and_start(void)
{
    eg_token *tok = NULL;
    eg_th *th = NULL;

    CU_ASSERT_EQUAL_FATAL(eg_th_create(kind, "harness-restart", &th), 0);
    if (kind != EG_TH_P11KIT) {
        CU_ASSERT_EQUAL(eg_th_server_kill(th), -1); /* no server to kill */
        CU_ASSERT_EQUAL(eg_th_server_start(th), -1);
        eg_th_destroy(th);
        return;
    }
    CU_ASSERT_EQUAL(open_and_use(eg_th_config(th)), 0);
    CU_ASSERT(process_mentions(eg_th_dir(th)));
    CU_ASSERT_EQUAL(eg_th_server_kill(th), 0);
    CU_ASSERT(!process_mentions(eg_th_dir(th)));
    CU_ASSERT(no_children());
    CU_ASSERT_EQUAL(eg_th_server_kill(th), -1); /* not running */
    CU_ASSERT_NOT_EQUAL(eg_token_open(eg_th_config(th), &tok), 0);
    ERR_clear_error();
    CU_ASSERT_EQUAL(eg_th_server_start(th), 0);
    CU_ASSERT(process_mentions(eg_th_dir(th)));
    CU_ASSERT_EQUAL(eg_th_server_start(th), -1); /* running already */
    CU_ASSERT_EQUAL(open_and_use(eg_th_config(th)), 0);
    eg_th_destroy(th);
    CU_ASSERT(no_children());
}

static void test_destroy_leaves_nothing(void)
{
    char *dir = NULL, *conf = NULL;
    eg_th *th = NULL;
    struct stat st;

    CU_ASSERT_EQUAL_FATAL(eg_th_create(kind, "harness-destroy", &th), 0);
    CU_ASSERT_EQUAL(open_and_use(eg_th_config(th)), 0);
    dir = strdup(eg_th_dir(th));
    if (kind == EG_TH_SOFTHSM && getenv("SOFTHSM2_CONF") != NULL)
        conf = strdup(getenv("SOFTHSM2_CONF")); /* the process's shared token directory */
    CU_ASSERT_EQUAL(process_mentions(dir), kind == EG_TH_P11KIT);
    CU_ASSERT_EQUAL((conf != NULL), kind == EG_TH_SOFTHSM);
    eg_th_destroy(th);
    CU_ASSERT(stat(dir, &st) != 0 && errno == ENOENT);
    CU_ASSERT(conf == NULL || (stat(conf, &st) != 0 && errno == ENOENT));
    CU_ASSERT(!process_mentions(dir));
    CU_ASSERT(no_children());
    free(dir);
    free(conf);
}

/* The module is re-initialised for the next token: new config, address or DB. */
static void test_tokens_one_after_another(void)
{
    static const char *const labels[] = {"harness-first", "harness-second"};
    eg_th *th = NULL;
    int i;

    for (i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL_FATAL(eg_th_create(kind, labels[i], &th), 0);
        CU_ASSERT_EQUAL(open_and_use(eg_th_config(th)), 0);
        eg_th_destroy(th);
    }
}

static void test_two_live_tokens(void)
{
    eg_th *a = NULL, *b = NULL, *again = NULL;
    eg_token *tok = NULL;

    CU_ASSERT_EQUAL_FATAL(eg_th_create(kind, "harness-a", &a), 0);
    CU_ASSERT_EQUAL(eg_token_open(eg_th_config(a), &tok), 0);
    if (kind == EG_TH_P11KIT) {
        /* One P11_KIT_SERVER_ADDRESS per process. */
        CU_ASSERT_NOT_EQUAL(eg_th_create(kind, "harness-b", &b), 0);
    } else if (kind == EG_TH_SOFTHSM) {
        /* Made while the module is initialised here, and seen by it. */
        CU_ASSERT_EQUAL_FATAL(eg_th_create(kind, "harness-b", &b), 0);
        CU_ASSERT_EQUAL(open_and_use(eg_th_config(b)), 0);
        CU_ASSERT_NOT_EQUAL(eg_th_create(kind, "harness-a", &again), 0);
    } else {
        /* The signer opens one softoken DB per process; both can be made. */
        CU_ASSERT_EQUAL(eg_th_create(kind, "harness-b", &b), 0);
    }
    CU_ASSERT_PTR_NULL(again);
    eg_token_free(tok);
    ERR_clear_error();
    if (b != NULL)
        CU_ASSERT_EQUAL(open_and_use(eg_th_config(b)), 0);
    CU_ASSERT_EQUAL(open_and_use(eg_th_config(a)), 0);
    eg_th_destroy(b);
    eg_th_destroy(a);
    CU_ASSERT(no_children());
}

static CU_TestInfo tests[] = {
    {"kind names round trip", test_kind_names_round_trip},
    {"token opens and logs in", test_token_opens_and_logs_in},
    {"wrong PIN is refused", test_wrong_pin_is_refused},
    {"server can be killed and started", test_server_kill_and_start},
    {"destroy leaves nothing", test_destroy_leaves_nothing},
    {"tokens one after another", test_tokens_one_after_another},
    {"two live tokens", test_two_live_tokens},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, NULL, NULL, tests);
}
