/*
 * The token harness: throwaway tokens made with the tokens' own tools
 * (softhsm2-util, certutil, p11-kit server), run as children without a shell.
 * Errors are printed to stderr where they happen, naming the command or path.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "p11.h"
#include "token_harness.h"

/* Fixed test PINs: every token is made fresh, so nothing secret is committed. */
#define TH_USER_PIN  "1234-user-pin"
#define TH_SO_PIN    "5678-so-pin"
#define TH_NSS_LABEL "NSS Certificate DB"
#define TH_LABEL_MAX 32    /* CK_TOKEN_INFO label bytes */
#define TH_START_MS  10000 /* how long a p11-kit server may take to accept */

static const char *const softhsm_paths[] = {
    "/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", NULL};
static const char *const p11kit_client_paths[] = {
    "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so", "/usr/lib/pkcs11/p11-kit-client.so",
    NULL};
static const char *const nss_paths[] = {"/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
                                        "/usr/lib/x86_64-linux-gnu/nss/libsoftokn3.so", NULL};
static const char *const kind_names[] = {
    [EG_TH_SOFTHSM] = "softhsm", [EG_TH_P11KIT] = "p11kit", [EG_TH_NSS] = "nss"};

struct eg_th {
    eg_th_kind kind;
    char *dir;
    char *pin_file;
    char *label;
    char *init_args;      /* nss */
    char *conf;           /* p11kit: the softhsm2.conf the server reads */
    char *sock;           /* p11kit */
    char *log;            /* p11kit: the server's stdout and stderr */
    const char *provider; /* p11kit: the module the server serves */
    pid_t server;         /* p11kit: running server, leader of its process group; 0: none */
    int joined;           /* counted in the process-wide state below */
    eg_token_config cfg;
};

/*
 * SoftHSM takes its token directory from SOFTHSM2_CONF, a process-wide
 * setting read at C_Initialize, so the softhsm tokens of a process share one
 * directory. Token files stay in it until the last of them is destroyed, so a
 * label may be used once per directory, or the signer could find a stale token.
 */
static pthread_mutex_t th_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char *dir;
    char *conf;
    unsigned live;
    char **labels;
    size_t nlabels;
} shared;
static unsigned p11kit_live;

static void th_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void th_err(const char *fmt, ...)
{
    va_list ap;

    fputs("token harness: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static char *str_printf(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0) {
        th_err("out of memory");
        s = NULL;
    }
    va_end(ap);
    return s;
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- Files ---- */

static const char *first_existing(const char *const *paths, const char *what)
{
    size_t i;

    for (i = 0; paths[i] != NULL; i++) {
        if (access(paths[i], R_OK) == 0)
            return paths[i];
    }
    th_err("%s not found; looked for:", what);
    for (i = 0; paths[i] != NULL; i++)
        fprintf(stderr, "  %s\n", paths[i]);
    return NULL;
}

/* The absolute path of a program in PATH: exec in the child must not search. */
static char *find_program(const char *name)
{
    const char *path = getenv("PATH");
    char *copy, *dir, *save = NULL, *cand, *found = NULL;

    if (path == NULL || *path == 0)
        path = "/usr/local/bin:/usr/bin:/bin";
    if ((copy = str_printf("%s", path)) == NULL)
        return NULL;
    for (dir = strtok_r(copy, ":", &save); dir != NULL && found == NULL;
         dir = strtok_r(NULL, ":", &save)) {
        if ((cand = str_printf("%s/%s", dir, name)) != NULL && access(cand, X_OK) == 0)
            found = cand;
        else
            free(cand);
    }
    if (found == NULL)
        th_err("%s not found in PATH (%s)", name, path);
    free(copy);
    return found;
}

/* Creates path (it must not exist) with mode 0600 whatever the umask. */
static int write_file(const char *path, const char *text)
{
    size_t len = strlen(text), done = 0;
    ssize_t n;
    int fd, rc = -1;

    if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0 ||
        fchmod(fd, 0600) != 0) {
        th_err("create %s: %s", path, strerror(errno));
        goto out;
    }
    while (done < len) {
        if ((n = write(fd, text + done, len - done)) < 0 && errno != EINTR) {
            th_err("write %s: %s", path, strerror(errno));
            goto out;
        }
        done += n > 0 ? (size_t)n : 0;
    }
    rc = 0;
out:
    if (fd >= 0 && close(fd) != 0 && rc == 0) {
        th_err("close %s: %s", path, strerror(errno));
        rc = -1;
    }
    return rc;
}

static char *make_temp_dir(void)
{
    const char *base = getenv("TMPDIR");
    char *dir;

    if (base == NULL || *base == 0)
        base = "/tmp";
    if ((dir = str_printf("%s/estgate-token-XXXXXX", base)) != NULL && mkdtemp(dir) == NULL) {
        th_err("mkdtemp %s: %s", dir, strerror(errno));
        free(dir);
        dir = NULL;
    }
    return dir;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    if (remove(path) != 0 && errno != ENOENT) {
        th_err("remove %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static void remove_tree(const char *dir)
{
    if (dir != NULL)
        nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Copies a server log to stderr, so that a failed start says why. */
static void dump_log(const char *path)
{
    char buf[4096];
    size_t n;
    FILE *f = fopen(path, "re");

    if (f == NULL)
        return;
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    fprintf(stderr, "--- %s ---\n", path);
    fwrite(buf, 1, n, stderr);
    fprintf(stderr, "--- end ---\n");
}

/* ---- Child processes ---- */

struct th_spawn {
    char *const *argv; /* argv[0] is an absolute path */
    char **envp;
    const char *out; /* stdout and stderr go here; NULL: stdout to /dev/null, stderr kept */
    int server;      /* own process group, killed when the creating thread dies */
};

/* environ with the NAME=value entries of set replacing or adding to it; borrowed strings. */
static char **env_with(const char *const *set)
{
    size_t n, m, i, j, k, len;
    char **env;

    for (n = 0; environ[n] != NULL; n++)
        ;
    for (m = 0; set[m] != NULL; m++)
        ;
    if ((env = calloc(n + m + 1, sizeof(*env))) == NULL) {
        th_err("out of memory");
        return NULL;
    }
    for (i = 0, j = 0; i < n; i++) {
        for (k = 0; k < m; k++) {
            len = (size_t)(strchr(set[k], '=') - set[k]) + 1;
            if (strncmp(environ[i], set[k], len) == 0)
                break;
        }
        if (k == m)
            env[j++] = environ[i];
    }
    for (k = 0; k < m; k++)
        env[j++] = (char *)set[k];
    return env;
}

/* After fork: only async-signal-safe calls until execve. */
static void spawn_child(const struct th_spawn *sp, pid_t parent) __attribute__((noreturn));
static void spawn_child(const struct th_spawn *sp, pid_t parent)
{
    sigset_t none;
    int in, out;

    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL); /* the signer ignores it in the test process */
    if (sp->server) {
        setpgid(0, 0);
        /* A test that crashes must not leave its server behind. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
            _exit(127);
    }
    in = open("/dev/null", O_RDONLY);
    out = open(sp->out != NULL ? sp->out : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in < 0 || out < 0 || dup2(in, STDIN_FILENO) < 0 || dup2(out, STDOUT_FILENO) < 0 ||
        (sp->out != NULL && dup2(out, STDERR_FILENO) < 0))
        _exit(127);
    /* A test's descriptors (a client's socket to an old server) must not live on here. */
    close_range(3, ~0U, 0);
    execve(sp->argv[0], sp->argv, sp->envp);
    _exit(127);
}

static int spawn(const struct th_spawn *sp, pid_t *out)
{
    pid_t parent = getpid(), pid;
    int rc = -1;

    if ((pid = fork()) < 0) {
        th_err("fork for %s: %s", sp->argv[0], strerror(errno));
        goto out;
    }
    if (pid == 0)
        spawn_child(sp, parent);
    if (sp->server)
        setpgid(pid, pid); /* also here, so that a kill right away reaches the group */
    *out = pid;
    rc = 0;
out:
    return rc;
}

static int reap(pid_t pid, int *status)
{
    while (waitpid(pid, status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return 0;
}

static void report_status(const char *what, int status)
{
    if (WIFEXITED(status))
        th_err("%s exited with status %d%s", what, WEXITSTATUS(status),
               WEXITSTATUS(status) == 127 ? " (could not be started)" : "");
    else if (WIFSIGNALED(status))
        th_err("%s was killed by signal %d", what, WTERMSIG(status));
}

/* Runs a tool to completion; what names it in errors (never its PIN arguments). */
static int run_tool(char *const *argv, const char *const *set, const char *what)
{
    struct th_spawn sp = {argv, NULL, NULL, 0};
    int status, rc = -1;
    pid_t pid;

    if ((sp.envp = env_with(set)) == NULL || spawn(&sp, &pid) != 0)
        goto out;
    if (reap(pid, &status) != 0) {
        th_err("waitpid for %s: %s", what, strerror(errno));
        goto out;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        report_status(what, status);
        goto out;
    }
    rc = 0;
out:
    free(sp.envp);
    return rc;
}

/* ---- SoftHSM ---- */

/* A SoftHSM config in dir whose tokens live in dir/tokens. */
static int softhsm_conf_write(const char *dir, char **out)
{
    char *tokens = NULL, *conf = NULL, *text = NULL;
    int rc = -1;

    if ((tokens = str_printf("%s/tokens", dir)) == NULL ||
        (conf = str_printf("%s/softhsm2.conf", dir)) == NULL ||
        (text = str_printf("directories.tokendir = %s\nobjectstore.backend = file\n"
                           "log.level = ERROR\n",
                           tokens)) == NULL)
        goto out;
    if (mkdir(tokens, 0700) != 0) {
        th_err("mkdir %s: %s", tokens, strerror(errno));
        goto out;
    }
    if (write_file(conf, text) != 0)
        goto out;
    *out = conf;
    conf = NULL;
    rc = 0;
out:
    free(tokens);
    free(conf);
    free(text);
    return rc;
}

static int softhsm_util_init(const char *conf, const char *label)
{
    char *util = find_program("softhsm2-util"), *env = str_printf("SOFTHSM2_CONF=%s", conf);
    /* softhsm2-util takes PINs only as arguments or at a prompt; these are test PINs. */
    char *argv[] = {util,    "--init-token", "--free",   "--label", (char *)label,
                    "--pin", TH_USER_PIN,    "--so-pin", TH_SO_PIN, NULL};
    const char *set[] = {env, NULL};
    int rc = -1;

    if (util != NULL && env != NULL)
        rc = run_tool(argv, set, "softhsm2-util --init-token");
    free(util);
    free(env);
    return rc;
}

/* The SoftHSM of this process if it is loaded and initialised; *dl to dlclose. */
static CK_FUNCTION_LIST *softhsm_in_process(const char *module, void **dl)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    CK_FUNCTION_LIST *fl = NULL;
    CK_ULONG n = 0;
    void *h = dlopen(module, RTLD_NOW | RTLD_NOLOAD);

    if (h == NULL)
        goto out;
    *(void **)&get_list = dlsym(h, "C_GetFunctionList");
    if (get_list == NULL || get_list(&fl) != CKR_OK || fl == NULL ||
        fl->C_GetSlotList(CK_FALSE, NULL, &n) == CKR_CRYPTOKI_NOT_INITIALIZED) {
        fl = NULL;
        goto out;
    }
    *dl = h;
    h = NULL;
out:
    if (h != NULL)
        dlclose(h);
    return fl;
}

/* The slot whose token has this padded label, or with NULL the first uninitialised one. */
static CK_RV slot_find(CK_FUNCTION_LIST *fl, const CK_UTF8CHAR *label, CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64, i;
    CK_TOKEN_INFO info;
    CK_RV rv;
    int init;

    if ((rv = fl->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK)
        goto out;
    rv = CKR_TOKEN_NOT_PRESENT;
    for (i = 0; i < n; i++) {
        if (fl->C_GetTokenInfo(slots[i], &info) != CKR_OK)
            continue;
        init = (info.flags & CKF_TOKEN_INITIALIZED) != 0;
        if (label != NULL ? init && memcmp(info.label, label, TH_LABEL_MAX) == 0 : !init) {
            *out = slots[i];
            rv = CKR_OK;
            break;
        }
    }
out:
    return rv;
}

/* What softhsm2-util --init-token does, through the module this process has initialised. */
static int softhsm_init_in_module(CK_FUNCTION_LIST *fl, const char *label)
{
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    CK_UTF8CHAR padded[TH_LABEL_MAX];
    const char *step;
    CK_SLOT_ID slot;
    CK_RV rv;
    int rc = -1;

    memset(padded, ' ', sizeof(padded));
    memcpy(padded, label, strlen(label));
    step = "find a free slot";
    if ((rv = slot_find(fl, NULL, &slot)) != CKR_OK)
        goto out;
    step = "C_InitToken";
    if ((rv = fl->C_InitToken(slot, (CK_UTF8CHAR *)TH_SO_PIN, strlen(TH_SO_PIN), padded)) != CKR_OK)
        goto out;
    step = "find the new token"; /* SoftHSM may give an initialised token a new slot ID */
    if ((rv = slot_find(fl, padded, &slot)) != CKR_OK)
        goto out;
    step = "C_OpenSession";
    if ((rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h)) !=
        CKR_OK)
        goto out;
    step = "C_Login(CKU_SO)";
    if ((rv = fl->C_Login(h, CKU_SO, (CK_UTF8CHAR *)TH_SO_PIN, strlen(TH_SO_PIN))) != CKR_OK)
        goto out;
    step = "C_InitPIN";
    if ((rv = fl->C_InitPIN(h, (CK_UTF8CHAR *)TH_USER_PIN, strlen(TH_USER_PIN))) != CKR_OK)
        goto out;
    rc = 0;
out:
    if (h != CK_INVALID_HANDLE)
        fl->C_CloseSession(h); /* and with the last session, the SO login */
    if (rc != 0)
        th_err("SoftHSM in this process, token '%s': %s: %s", label, step, eg_p11_rv_name(rv));
    return rc;
}

static void shared_remove(void)
{
    size_t i;

    remove_tree(shared.dir);
    for (i = 0; i < shared.nlabels; i++)
        free(shared.labels[i]);
    free(shared.labels);
    free(shared.dir);
    free(shared.conf);
    memset(&shared, 0, sizeof(shared));
    unsetenv("SOFTHSM2_CONF");
}

/* Joins the shared SoftHSM directory, making it for the first token; th_lock held. */
static int shared_join(const char *label)
{
    char **labels;
    size_t i;
    int rc = -1;

    for (i = 0; i < shared.nlabels; i++) {
        if (strcmp(shared.labels[i], label) == 0) {
            th_err("label '%s' was used before by a softhsm token of this process; its files "
                   "stay until the last softhsm token is destroyed: pick another label",
                   label);
            goto out;
        }
    }
    if (shared.dir == NULL && ((shared.dir = make_temp_dir()) == NULL ||
                               softhsm_conf_write(shared.dir, &shared.conf) != 0 ||
                               setenv("SOFTHSM2_CONF", shared.conf, 1) != 0))
        goto out;
    if ((labels = realloc(shared.labels, (shared.nlabels + 1) * sizeof(*labels))) == NULL)
        goto out;
    shared.labels = labels;
    if ((labels[shared.nlabels] = str_printf("%s", label)) == NULL)
        goto out;
    shared.nlabels++;
    shared.live++;
    rc = 0;
out:
    if (rc != 0 && shared.live == 0)
        shared_remove();
    return rc;
}

static void shared_leave(void)
{
    if (--shared.live == 0)
        shared_remove();
}

static int create_softhsm(eg_th *th)
{
    const char *module = first_existing(softhsm_paths, "SoftHSM module");
    CK_FUNCTION_LIST *fl;
    void *dl = NULL;
    int rc = -1;

    pthread_mutex_lock(&th_lock);
    if (module == NULL || shared_join(th->label) != 0)
        goto out;
    th->joined = 1;
    /* SoftHSM reads its token directory only at C_Initialize: a token that
     * softhsm2-util adds later stays invisible to a module initialised here. */
    fl = softhsm_in_process(module, &dl);
    if (fl != NULL ? softhsm_init_in_module(fl, th->label) != 0
                   : softhsm_util_init(shared.conf, th->label) != 0)
        goto out;
    th->cfg.module_path = module;
    rc = 0;
out:
    if (dl != NULL)
        dlclose(dl);
    pthread_mutex_unlock(&th_lock);
    return rc;
}

/* ---- p11-kit server ---- */

/* "pkcs11:token=<label>" with everything but RFC 3986 unreserved characters escaped. */
static char *token_uri(const char *label)
{
    static const char hex[] = "0123456789ABCDEF";
    static const char prefix[] = "pkcs11:token=";
    size_t len = strlen(label), i;
    unsigned char c;
    char *uri, *p;

    if ((uri = malloc(sizeof(prefix) + 3 * len)) == NULL)
        return NULL;
    memcpy(uri, prefix, sizeof(prefix) - 1);
    p = uri + sizeof(prefix) - 1;
    for (i = 0; i < len; i++) {
        c = (unsigned char)label[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            strchr("-._~", c) != NULL) {
            *p++ = (char)c;
        } else {
            *p++ = '%';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        }
    }
    *p = 0;
    return uri;
}

static int sock_accepts(const char *path)
{
    struct sockaddr_un sa;
    int fd, ok;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path)); /* length checked at create */
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return 0;
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* Waits until the server accepts a connection, has died, or TH_START_MS passed. */
static int server_wait_ready(eg_th *th)
{
    uint64_t deadline = now_ms() + TH_START_MS;
    int status, rc = -1;

    for (;;) {
        if (sock_accepts(th->sock)) {
            rc = 0;
            break;
        }
        if (waitpid(th->server, &status, WNOHANG) == th->server) {
            th->server = 0;
            report_status("p11-kit server", status);
            dump_log(th->log);
            break;
        }
        if (now_ms() >= deadline) {
            th_err("p11-kit server did not accept on %s within %d ms", th->sock, TH_START_MS);
            dump_log(th->log);
            break;
        }
        sleep_ms(10);
    }
    return rc;
}

/*
 * The server forks a process per client connection into its group. Kill the
 * group and reap all of it: as a child subreaper this process inherits the
 * connection processes when the server dies, before the server can be reaped.
 */
static int server_stop(eg_th *th)
{
    pid_t pgid = th->server;
    int status, rc = -1;

    if (pgid <= 0) {
        rc = 0;
        goto out;
    }
    if (kill(-pgid, SIGKILL) != 0 && errno != ESRCH) {
        th_err("kill p11-kit server group %d: %s", (int)pgid, strerror(errno));
        goto out;
    }
    while (waitpid(-pgid, &status, 0) > 0 || errno == EINTR)
        ;
    if (errno != ECHILD) {
        th_err("waitpid p11-kit server group %d: %s", (int)pgid, strerror(errno));
        goto out;
    }
    th->server = 0;
    rc = 0;
out:
    return rc;
}

static int server_start(eg_th *th)
{
    char *prog = find_program("p11-kit"), *env = str_printf("SOFTHSM2_CONF=%s", th->conf);
    char *uri = token_uri(th->label);
    char *argv[] = {prog, "server", "-f", "--provider", (char *)th->provider,
                    "-n", th->sock, uri,  NULL};
    const char *set[] = {env, NULL};
    struct th_spawn sp = {argv, NULL, th->log, 1};
    int rc = -1;

    if (prog == NULL || env == NULL || uri == NULL || (sp.envp = env_with(set)) == NULL)
        goto out;
    /* A killed server leaves its socket file behind; only a live listener may answer. */
    if (unlink(th->sock) != 0 && errno != ENOENT) {
        th_err("unlink %s: %s", th->sock, strerror(errno));
        goto out;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
        th_err("prctl(PR_SET_CHILD_SUBREAPER): %s", strerror(errno));
        goto out;
    }
    if (spawn(&sp, &th->server) != 0)
        goto out;
    if (server_wait_ready(th) != 0) {
        server_stop(th);
        goto out;
    }
    rc = 0;
out:
    free(prog);
    free(env);
    free(uri);
    free(sp.envp);
    return rc;
}

static int create_p11kit(eg_th *th)
{
    const char *client = first_existing(p11kit_client_paths, "p11-kit client module");
    char *addr = NULL;
    int rc = -1;

    pthread_mutex_lock(&th_lock);
    if (p11kit_live > 0) {
        th_err("a p11kit token is live in this process already (P11_KIT_SERVER_ADDRESS is "
               "process-wide): destroy it first");
        goto out;
    }
    if (client == NULL || (th->provider = first_existing(softhsm_paths, "SoftHSM module")) == NULL)
        goto out;
    if ((th->sock = str_printf("%s/p11kit.sock", th->dir)) == NULL ||
        (th->log = str_printf("%s/p11kit.log", th->dir)) == NULL ||
        (addr = str_printf("unix:path=%s", th->sock)) == NULL)
        goto out;
    if (strlen(th->sock) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        th_err("%s: too long for a unix socket; set a shorter TMPDIR", th->sock);
        goto out;
    }
    if (softhsm_conf_write(th->dir, &th->conf) != 0 ||
        softhsm_util_init(th->conf, th->label) != 0 || server_start(th) != 0)
        goto out;
    /* Read by p11-kit-client.so when the signer initialises it in this process. */
    if (setenv("P11_KIT_SERVER_ADDRESS", addr, 1) != 0) {
        th_err("setenv P11_KIT_SERVER_ADDRESS: %s", strerror(errno));
        goto out;
    }
    p11kit_live++;
    th->joined = 1;
    th->cfg.module_path = client;
    rc = 0;
out:
    pthread_mutex_unlock(&th_lock);
    free(addr);
    return rc;
}

/* ---- NSS softoken ---- */

static int create_nss(eg_th *th)
{
    const char *module = first_existing(nss_paths, "NSS softoken");
    char *certutil = find_program("certutil"), *db = str_printf("%s/nssdb", th->dir);
    char *dbarg = db != NULL ? str_printf("sql:%s", db) : NULL;
    char *argv[] = {certutil, "-N", "-d", dbarg, "-f", th->pin_file, NULL};
    /* Test DBs only: one PBKDF2 round per key use instead of thousands (~33 ms). */
    const char *set[] = {"NSS_MAX_MP_PBE_ITERATION_COUNT=1", NULL};
    int rc = -1;

    if (module == NULL || certutil == NULL || dbarg == NULL)
        goto out;
    if (strchr(db, '\'') != NULL) {
        th_err("%s: an NSS init string cannot quote a path with ' in it", db);
        goto out;
    }
    if (mkdir(db, 0700) != 0) {
        th_err("mkdir %s: %s", db, strerror(errno));
        goto out;
    }
    if (run_tool(argv, set, "certutil -N") != 0)
        goto out;
    /* The softoken in this process reads it too, whenever it stores a key. */
    if (setenv("NSS_MAX_MP_PBE_ITERATION_COUNT", "1", 1) != 0 ||
        (th->init_args = str_printf("configdir='%s' certPrefix='' keyPrefix='' "
                                    "secmod='secmod.db' flags=",
                                    dbarg)) == NULL)
        goto out;
    th->cfg.module_path = module;
    th->cfg.init_args = th->init_args;
    rc = 0;
out:
    free(certutil);
    free(db);
    free(dbarg);
    return rc;
}

/* ---- API ---- */

int eg_th_kind_parse(const char *name, eg_th_kind *out)
{
    size_t i;
    int rc = -1;

    for (i = 0; name != NULL && i < sizeof(kind_names) / sizeof(kind_names[0]); i++) {
        if (strcmp(name, kind_names[i]) == 0) {
            *out = (eg_th_kind)i;
            rc = 0;
            break;
        }
    }
    return rc;
}

const char *eg_th_kind_name(eg_th_kind kind)
{
    if ((size_t)kind >= sizeof(kind_names) / sizeof(kind_names[0]))
        return "unknown";
    return kind_names[kind];
}

static int create_kind(eg_th *th)
{
    switch (th->kind) {
    case EG_TH_SOFTHSM:
        return create_softhsm(th);
    case EG_TH_P11KIT:
        return create_p11kit(th);
    case EG_TH_NSS:
        return create_nss(th);
    }
    th_err("unknown token kind %d", (int)th->kind);
    return -1;
}

int eg_th_create(eg_th_kind kind, const char *label, eg_th **out)
{
    eg_th *th = NULL;
    int rc = -1;

    if (kind == EG_TH_NSS)
        label = TH_NSS_LABEL; /* the softoken names its key slot itself */
    if (label == NULL || *label == 0 || strlen(label) > TH_LABEL_MAX) {
        th_err("token label must be 1-%d bytes: '%s'", TH_LABEL_MAX, label ? label : "(null)");
        goto out;
    }
    if ((th = calloc(1, sizeof(*th))) == NULL) {
        th_err("out of memory");
        goto out;
    }
    th->kind = kind;
    if ((th->label = str_printf("%s", label)) == NULL || (th->dir = make_temp_dir()) == NULL ||
        (th->pin_file = str_printf("%s/user.pin", th->dir)) == NULL ||
        write_file(th->pin_file, TH_USER_PIN "\n") != 0)
        goto out;
    th->cfg.token_label = th->label;
    th->cfg.pin_file = th->pin_file;
    if (create_kind(th) != 0)
        goto out;
    *out = th;
    th = NULL;
    rc = 0;
out:
    eg_th_destroy(th);
    return rc;
}

void eg_th_destroy(eg_th *th)
{
    if (th == NULL)
        return;
    server_stop(th);
    remove_tree(th->dir);
    pthread_mutex_lock(&th_lock);
    if (th->joined && th->kind == EG_TH_SOFTHSM) {
        shared_leave();
    } else if (th->joined && th->kind == EG_TH_P11KIT) {
        p11kit_live--;
        unsetenv("P11_KIT_SERVER_ADDRESS");
    }
    pthread_mutex_unlock(&th_lock);
    free(th->dir);
    free(th->pin_file);
    free(th->label);
    free(th->init_args);
    free(th->conf);
    free(th->sock);
    free(th->log);
    free(th);
}

const eg_token_config *eg_th_config(const eg_th *th)
{
    return &th->cfg;
}

const char *eg_th_dir(const eg_th *th)
{
    return th->dir;
}

const char *eg_th_so_pin(const eg_th *th)
{
    return th->kind == EG_TH_NSS ? NULL : TH_SO_PIN;
}

const char *eg_th_user_pin(const eg_th *th)
{
    return TH_USER_PIN;
}

int eg_th_server_kill(eg_th *th)
{
    int rc = -1;

    if (th == NULL || th->kind != EG_TH_P11KIT) {
        th_err("server_kill: only a p11kit token has a server");
        goto out;
    }
    if (th->server == 0) {
        th_err("server_kill: the p11-kit server of %s is not running", th->dir);
        goto out;
    }
    rc = server_stop(th);
out:
    return rc;
}

int eg_th_server_start(eg_th *th)
{
    int rc = -1;

    if (th == NULL || th->kind != EG_TH_P11KIT) {
        th_err("server_start: only a p11kit token has a server");
        goto out;
    }
    if (th->server != 0) {
        th_err("server_start: the p11-kit server of %s is running already", th->dir);
        goto out;
    }
    rc = server_start(th);
out:
    return rc;
}

int eg_th_server_signal(eg_th *th, int sig)
{
    if (th == NULL || th->kind != EG_TH_P11KIT || th->server <= 0) {
        th_err("server_signal: no p11-kit server is running");
        return -1;
    }
    if (kill(-th->server, sig) != 0) {
        th_err("signal %d to p11-kit server group %d: %s", sig, (int)th->server, strerror(errno));
        return -1;
    }
    return 0;
}

int eg_th_main_kind(int argc, char **argv, eg_th_kind *out)
{
    const char *name = argc > 1 ? argv[1] : getenv("EG_TOKEN_KIND");
    int rc = -1;

    if (name != NULL && eg_th_kind_parse(name, out) == 0) {
        rc = 0;
    } else {
        fprintf(stderr, "usage: %s softhsm|p11kit|nss\n  (or set EG_TOKEN_KIND)\n",
                argc > 0 ? argv[0] : "test");
        if (name != NULL)
            fprintf(stderr, "unknown token kind '%s'\n", name);
    }
    return rc;
}

int eg_th_run(int argc, char **argv, eg_th_kind *kind, CU_InitializeFunc init, CU_CleanupFunc clean,
              CU_TestInfo *tests)
{
    if (eg_th_main_kind(argc, argv, kind) != 0)
        return 64;
    return eg_cu_run(eg_th_kind_name(*kind), init, clean, tests);
}
