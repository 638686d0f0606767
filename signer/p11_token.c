/*
 * Tokens: module loading, login, the session pool and recovery.
 *
 * A module is loaded and initialised once per process however many tokens use
 * it. It may have several instances ("lanes"), each its own application to the
 * token with its own sessions, login and object handles: p11-kit's client gives
 * each instance a connection (and a server process) of its own. A token is a
 * slot found by its label. Sessions are opened lazily, per instance up to
 * pool_size, and reused; a caller borrows one on the least busy instance for
 * the length of an eg_token_run() callback. When a call reports that the
 * session, the login or the token connection is gone, the session is dropped,
 * the token re-logged or that instance re-initialised (a p11-kit server that
 * restarted), and the callback runs again until recover_ms has passed.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include "errors.h"
#include "p11_local.h"

#define EG_PIN_MAX      256
#define EG_POOL_DEFAULT 16
#define EG_RECOVER_MS   10000
#define EG_LANE_DOWN_MS 1000 /* how long an instance that failed to start is passed over */
#define EG_SHORT_MS     1000 /* how long a token's CKR_SESSION_COUNT caps the pool */
/*
 * A long job (eg_token_run_long) weighs as much as this many short ones when
 * jobs choose an instance, and waits at most EG_LONG_DRAIN_S for the short
 * jobs already on its instance to go first.
 */
#define EG_LONG_WEIGHT  65536u
#define EG_LONG_DRAIN_S 2

static uint64_t now_ms(void);

/* One instance of a module: its function list and what guards calls into it. */
typedef struct eg_lane {
    CK_FUNCTION_LIST *fl;
    atomic_uint gen; /* bumped at every re-initialisation */
    atomic_int initialized;
    atomic_uint load;      /* eg_token_run jobs on it or waiting for it */
    atomic_uint long_jobs; /* of those, eg_token_run_long jobs */
    /*
     * Until when (CLOCK_MONOTONIC ms) jobs pass it over: it could not be
     * initialised or lost its token (a server that takes fewer connections
     * than we ask for, or one that is away), so another instance serves them
     * meanwhile. Cleared when a session opens on it.
     */
    _Atomic uint64_t down_until;
    pthread_mutex_t lock;
    /*
     * Calls into the instance hold it shared; re-initialisation holds it
     * exclusive, so no call is in flight while C_Finalize tears the instance's
     * state (a p11-kit client's socket) down under it.
     */
    pthread_rwlock_t calls;
    /*
     * Held, besides calls, around every use of an instance that cannot take
     * two calls at once: one configured so (eg_calls), or p11-kit's RPC client
     * by default. That client (0.24.1) multiplexes concurrent calls over one
     * socket; when the socket breaks under two of them, the one waiting for
     * its reply is never woken (rpc_socket_read returns an error without
     * signalling read_code_cond), and re-initialisation then waits on it for
     * ever. One call at a time leaves no one waiting.
     */
    pthread_mutex_t serial_lock;
    /* A long job waiting for the short jobs before it: signalled as they leave. */
    pthread_mutex_t quiet_lock;
    pthread_cond_t quiet;
} eg_lane;

struct eg_module {
    struct eg_module *next;
    char *path;
    char *init_args;
    void *dl;
    unsigned refs;
    bool serial;
    unsigned nlanes;
    /*
     * Initialisations and logins, one at a time across the instances: SoftHSM
     * processes behind a p11-kit server that start or log in at the same time
     * can miss the token (no slot, CKR_GENERAL_ERROR).
     */
    pthread_mutex_t setup;
    pthread_mutex_t long_pick; /* long jobs choose and join one at a time */
    eg_lane lane[EG_CONNECTIONS_MAX];
};

/* A token on one module instance: its slot there, login and pooled sessions. */
typedef struct tok_lane {
    pthread_cond_t cond;     /* a session came back (or the generation was dropped) */
    CK_SESSION_HANDLE *idle; /* pooled sessions of generation gen */
    unsigned nidle;
    unsigned nopen; /* sessions of generation gen, idle or borrowed */
    /*
     * The most sessions the token lately let us open here, when that was fewer than pool_size
     * (CKR_SESSION_COUNT: its limit, shared with other applications); 0 when none was met.
     * Until short_until (CLOCK_MONOTONIC ms) jobs wait for one of those instead of asking
     * for more.
     */
    unsigned short_limit;
    uint64_t short_until;
    unsigned gen;
    unsigned mod_gen; /* instance generation the slot was found in */
    int have_slot;
    CK_SLOT_ID slot;
    int logged_in;
    int used; /* a session was ever opened here */
} tok_lane;

struct eg_token {
    eg_module *mod;
    char *label;
    char *pin; /* NULL: no login */
    size_t pinlen;
    unsigned pool_size; /* per instance */
    unsigned recover_ms;

    pthread_mutex_t lock;
    tok_lane lane[EG_CONNECTIONS_MAX];
    CK_MECHANISM_TYPE *mechs;
    CK_MECHANISM_INFO *mech_info;
    CK_ULONG nmechs;

    atomic_uint_fast64_t sign_calls;
    atomic_uint_fast64_t recoveries;
    atomic_uint_fast64_t sessions_opened;
    /*
     * Not CKR_OK once the token refused the PIN (or said it would lock at the
     * next wrong one): what every later login answers, without calling
     * C_Login, for the life of the token. Under lock.
     */
    CK_RV login_refused;
};

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static eg_module *modules;

/*
 * The process's token jobs under way, on every token, and when each began its
 * current step (its first try at fn, or a recovery and the try after it): what
 * eg_token_stalled_ms() reads for the daemon's watchdog. The oldest step still under way is what
 * counts, not the last call to return: one call stuck on one connection (a p11-kit server process
 * stopped, one HSM link dead) must be seen while the other connections keep answering. A job takes
 * a free slot (0) with one compare-and-swap, at the one its thread used last when that is free, so
 * a job costs a few atomics and clock reads; the watchdog scans them all once a second. A job that
 * finds none free (more at once than EG_JOB_SLOTS) is counted but not timed.
 */
#define EG_JOB_SLOTS 1024
static atomic_uint jobs_under_way;
static _Atomic uint64_t job_step_ms[EG_JOB_SLOTS];
static _Thread_local unsigned job_slot_hint;

/* The process's first login refusal, for eg_token_login_refused(): said once, kept. */
static pthread_mutex_t refusal_lock = PTHREAD_MUTEX_INITIALIZER;
static char refusal[320];

/*
 * An instance is initialised with OS locking (SoftHSM turns its locks off
 * without it), one instance at a time (eg_module.setup).
 */
static CK_RV lane_initialize(eg_module *m, eg_lane *lane)
{
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = m->init_args;
    pthread_mutex_lock(&m->setup);
    /* SoftHSM asks OpenSSL for an rdrand engine that Debian does not ship and
     * leaves the failure on our error stack: not ours to report. */
    ERR_set_mark();
    rv = lane->fl->C_Initialize(&args);
    ERR_pop_to_mark();
    pthread_mutex_unlock(&m->setup);
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
        rv = CKR_OK; /* another library in this process got there first */
    if (rv == CKR_OK)
        lane->initialized = 1;
    else
        atomic_store(&lane->down_until, now_ms() + EG_LANE_DOWN_MS);
    return rv;
}

static void lane_locks_init(eg_lane *lane)
{
    pthread_rwlockattr_t attr;
    pthread_condattr_t cattr;

    pthread_mutex_init(&lane->lock, NULL);
    pthread_mutex_init(&lane->serial_lock, NULL);
    pthread_mutex_init(&lane->quiet_lock, NULL);
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
    pthread_cond_init(&lane->quiet, &cattr);
    pthread_condattr_destroy(&cattr);
    pthread_rwlockattr_init(&attr);
    /* A busy signer must not keep a re-initialisation waiting for ever. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&lane->calls, &attr);
    pthread_rwlockattr_destroy(&attr);
}

static void module_free(eg_module *m)
{
    unsigned i;

    if (m == NULL)
        return;
    for (i = 0; i < EG_CONNECTIONS_MAX; i++) {
        eg_lane *lane = &m->lane[i];

        if (lane->initialized)
            lane->fl->C_Finalize(NULL);
        pthread_rwlock_destroy(&lane->calls);
        pthread_mutex_destroy(&lane->serial_lock);
        pthread_cond_destroy(&lane->quiet);
        pthread_mutex_destroy(&lane->quiet_lock);
        pthread_mutex_destroy(&lane->lock);
    }
    if (m->dl != NULL)
        dlclose(m->dl);
    pthread_mutex_destroy(&m->setup);
    pthread_mutex_destroy(&m->long_pick);
    free(m->path);
    free(m->init_args);
    free(m);
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');

    return slash != NULL ? slash + 1 : path;
}

eg_calls eg_calls_resolve(const char *module_path, eg_calls calls)
{
    if (calls == EG_CALLS_AUTO)
        return strcmp(base_name(module_path), "p11-kit-client.so") == 0 ? EG_CALLS_SERIAL
                                                                        : EG_CALLS_CONCURRENT;
    return calls;
}

const char *eg_calls_words(eg_calls resolved)
{
    return resolved == EG_CALLS_SERIAL ? "one at a time" : "concurrent";
}

unsigned eg_connections_resolve(const char *module_path, unsigned connections)
{
    if (connections == 0)
        return strcmp(base_name(module_path), "p11-kit-client.so") == 0 ? EG_CONNECTIONS_P11KIT : 1;
    return connections;
}

const char *eg_connections_words(unsigned resolved)
{
    static const char *const words[EG_CONNECTIONS_MAX + 1] = {
        "no connection",       "1 connection",        "up to 2 connections",
        "up to 3 connections", "up to 4 connections", "up to 5 connections",
        "up to 6 connections", "up to 7 connections", "up to 8 connections",
    };

    return resolved <= EG_CONNECTIONS_MAX ? words[resolved] : "too many connections";
}

const char *eg_calls_name(eg_calls calls)
{
    switch (calls) {
    case EG_CALLS_CONCURRENT:
        return "concurrent";
    case EG_CALLS_SERIAL:
        return "serial";
    default:
        return "auto";
    }
}

static int module_load(const char *path, const char *init_args, bool serial, unsigned nlanes,
                       eg_module **out)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    eg_module *m;
    CK_RV rv;
    unsigned i;
    int rc = -1;

    if ((m = calloc(1, sizeof(*m))) == NULL)
        return -1;
    pthread_mutex_init(&m->setup, NULL);
    pthread_mutex_init(&m->long_pick, NULL);
    for (i = 0; i < EG_CONNECTIONS_MAX; i++)
        lane_locks_init(&m->lane[i]);
    m->path = strdup(path);
    m->init_args = init_args ? strdup(init_args) : NULL;
    m->serial = serial;
    m->nlanes = nlanes;
    if (m->path == NULL || (init_args && m->init_args == NULL))
        goto out;
    if (nlanes < 1 || nlanes > EG_CONNECTIONS_MAX) {
        eg_signer_error(EG_R_BAD_PARAM, "%s: connections must be 1 to %d", path,
                        EG_CONNECTIONS_MAX);
        goto out;
    }
    /*
     * RTLD_NODELETE: modules register atexit handlers and thread keys, and leak
     * checkers need their symbols after we let go; unloading buys nothing.
     */
    if ((m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE)) == NULL) {
        eg_signer_error(EG_R_MODULE_LOAD, "%s: %s", path, dlerror());
        goto out;
    }
    *(void **)&get_list = dlsym(m->dl, "C_GetFunctionList");
    for (i = 0; i < nlanes; i++) {
        if (get_list == NULL || (rv = get_list(&m->lane[i].fl)) != CKR_OK ||
            m->lane[i].fl == NULL) {
            eg_signer_error(EG_R_MODULE_LOAD, "%s: no usable C_GetFunctionList", path);
            goto out;
        }
        if (i > 0 && m->lane[i].fl == m->lane[0].fl) {
            eg_signer_error(EG_R_MODULE_LOAD,
                            "%s has one instance (C_GetFunctionList gives the same functions "
                            "every time): it can have only one connection",
                            path);
            goto out;
        }
    }
    /* The first instance now, so that a module that cannot start says so at once; the
     * others when calls first need them. */
    if ((rv = lane_initialize(m, &m->lane[0])) != CKR_OK) {
        eg_signer_error(EG_R_MODULE_INIT, "%s: C_Initialize: %s", path, eg_p11_rv_name(rv));
        goto out;
    }
    *out = m;
    m = NULL;
    rc = 0;
out:
    module_free(m);
    return rc;
}

static void lane_enter(const eg_module *m, eg_lane *lane)
{
    pthread_rwlock_rdlock(&lane->calls);
    if (m->serial)
        pthread_mutex_lock(&lane->serial_lock);
}

static void lane_leave(const eg_module *m, eg_lane *lane)
{
    if (m->serial)
        pthread_mutex_unlock(&lane->serial_lock);
    pthread_rwlock_unlock(&lane->calls);
}

void eg_module_enter(eg_module *m)
{
    lane_enter(m, &m->lane[0]);
}

void eg_module_leave(eg_module *m)
{
    lane_leave(m, &m->lane[0]);
}

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int eg_module_get(const char *path, const char *init_args, eg_calls calls, unsigned connections,
                  eg_module **out)
{
    bool serial = eg_calls_resolve(path, calls) == EG_CALLS_SERIAL;
    unsigned nlanes = eg_connections_resolve(path, connections);
    eg_module *m;
    int rc = -1;

    pthread_mutex_lock(&modules_lock);
    for (m = modules; m != NULL; m = m->next) {
        if (strcmp(m->path, path) != 0)
            continue;
        if (!same_str(m->init_args, init_args)) {
            /* Cryptoki is initialised once per process: one init string per module. */
            eg_signer_error(EG_R_MODULE_INIT, "%s already loaded with another init string", path);
            goto out;
        }
        /* The locks cannot come or go under calls in flight. AUTO takes what is there. */
        if (calls != EG_CALLS_AUTO && m->serial != serial) {
            eg_signer_error(EG_R_MODULE_INIT, "%s already loaded with calls = %s", path,
                            eg_calls_name(m->serial ? EG_CALLS_SERIAL : EG_CALLS_CONCURRENT));
            goto out;
        }
        if (connections != 0 && m->nlanes != nlanes) {
            eg_signer_error(EG_R_MODULE_INIT, "%s already loaded with connections = %u", path,
                            m->nlanes);
            goto out;
        }
        break;
    }
    if (m == NULL) {
        if (module_load(path, init_args, serial, nlanes, &m) != 0)
            goto out;
        m->next = modules;
        modules = m;
    }
    m->refs++;
    *out = m;
    rc = 0;
out:
    pthread_mutex_unlock(&modules_lock);
    return rc;
}

void eg_module_put(eg_module *m)
{
    eg_module **p;

    if (m == NULL)
        return;
    pthread_mutex_lock(&modules_lock);
    if (--m->refs == 0) {
        for (p = &modules; *p != NULL; p = &(*p)->next) {
            if (*p == m) {
                *p = m->next;
                break;
            }
        }
        module_free(m);
    }
    pthread_mutex_unlock(&modules_lock);
}

/*
 * Re-initialises an instance whose token connection was lost, once per loss:
 * seen_gen is the generation the failing caller used.
 */
static CK_RV lane_reinit(eg_module *m, eg_lane *lane, unsigned seen_gen)
{
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&lane->lock);
    pthread_rwlock_wrlock(&lane->calls);
    if (lane->gen == seen_gen) {
        if (lane->initialized)
            lane->fl->C_Finalize(NULL);
        lane->initialized = 0;
        lane->gen++;
    }
    if (!lane->initialized)
        rv = lane_initialize(m, lane);
    pthread_rwlock_unlock(&lane->calls);
    pthread_mutex_unlock(&lane->lock);
    return rv;
}

/* Initialises an instance not used before, or one whose re-initialisation failed. */
static void lane_start(eg_module *m, eg_lane *lane)
{
    pthread_mutex_lock(&lane->lock);
    pthread_rwlock_wrlock(&lane->calls);
    if (!lane->initialized)
        lane_initialize(m, lane); /* a failure shows as CKR_CRYPTOKI_NOT_INITIALIZED below */
    pthread_rwlock_unlock(&lane->calls);
    pthread_mutex_unlock(&lane->lock);
}

/*
 * A PIN file's path as messages show it: one with no '/' may be a PIN typed
 * where its file belongs, so it is not repeated.
 */
static const char *pin_file_shown(const char *path)
{
    return strchr(path, '/') != NULL ? path : "the PIN file given";
}

static int read_pin_file(const char *path, char **pin, size_t *pinlen)
{
    char buf[EG_PIN_MAX + 2];
    const char *shown = pin_file_shown(path);
    struct stat st;
    ssize_t n;
    size_t len;
    int fd = -1, rc = -1;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st) != 0) {
        eg_signer_error(EG_R_PIN_FILE, "%s: %s", shown, strerror(errno));
        goto out;
    }
    if (st.st_mode & S_IROTH) {
        eg_signer_error(EG_R_PIN_FILE, "%s is readable by everyone; chmod o-rwx it", shown);
        goto out;
    }
    if ((n = read(fd, buf, sizeof(buf) - 1)) < 0) {
        eg_signer_error(EG_R_PIN_FILE, "%s: %s", shown, strerror(errno));
        goto out;
    }
    buf[n] = 0;
    len = strcspn(buf, "\r\n");
    if (len == 0 || len > EG_PIN_MAX) {
        eg_signer_error(EG_R_PIN_FILE, "%s: PIN is empty or longer than %d bytes", shown,
                        EG_PIN_MAX);
        goto out;
    }
    if ((*pin = OPENSSL_malloc(len + 1)) == NULL)
        goto out;
    memcpy(*pin, buf, len);
    (*pin)[len] = 0;
    *pinlen = len;
    rc = 0;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Token labels are 32 bytes padded with spaces. */
static int label_matches(const CK_UTF8CHAR *padded, const char *label)
{
    size_t n = 32, len = strlen(label);

    while (n > 0 && padded[n - 1] == ' ')
        n--;
    return n == len && memcmp(padded, label, len) == 0;
}

static void load_mechanisms(eg_token *tok, CK_FUNCTION_LIST *fl, CK_SLOT_ID slot)
{
    CK_ULONG n = 0, i;

    OPENSSL_free(tok->mechs);
    OPENSSL_free(tok->mech_info);
    tok->mechs = NULL;
    tok->mech_info = NULL;
    tok->nmechs = 0;
    if (fl->C_GetMechanismList(slot, NULL, &n) != CKR_OK || n == 0)
        return;
    tok->mechs = OPENSSL_zalloc(n * sizeof(*tok->mechs));
    tok->mech_info = OPENSSL_zalloc(n * sizeof(*tok->mech_info));
    if (tok->mechs == NULL || tok->mech_info == NULL ||
        fl->C_GetMechanismList(slot, tok->mechs, &n) != CKR_OK)
        return;
    for (i = 0; i < n; i++)
        fl->C_GetMechanismInfo(slot, tok->mechs[i], &tok->mech_info[i]);
    tok->nmechs = n;
}

/* Finds the slot holding the token on instance l; called with tok->lock held. */
static CK_RV find_slot(eg_token *tok, unsigned l)
{
    CK_FUNCTION_LIST *fl = tok->mod->lane[l].fl;
    tok_lane *tl = &tok->lane[l];
    CK_SLOT_ID *slots = NULL;
    CK_TOKEN_INFO info;
    CK_ULONG n = 0, i;
    CK_RV rv;

    if ((rv = fl->C_GetSlotList(CK_TRUE, NULL, &n)) != CKR_OK)
        goto out;
    if ((slots = calloc(n ? n : 1, sizeof(*slots))) == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    if ((rv = fl->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK)
        goto out;
    rv = CKR_TOKEN_NOT_PRESENT;
    for (i = 0; i < n; i++) {
        if (fl->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
            label_matches(info.label, tok->label)) {
            tl->slot = slots[i];
            tl->have_slot = 1;
            tl->mod_gen = tok->mod->lane[l].gen;
            if (l == 0) /* the same token on every instance */
                load_mechanisms(tok, fl, slots[i]);
            rv = CKR_OK;
            break;
        }
    }
out:
    free(slots);
    return rv;
}

/*
 * For a label that matched nothing: which tokens the module does show, pushed as an error of its
 * own (a wrong label, or the module reading another configuration, shows here at once).
 */
static void say_tokens_present(eg_module *mod)
{
    CK_FUNCTION_LIST *fl = mod->lane[0].fl;
    CK_SLOT_ID slots[32];
    CK_ULONG n = 32, i, fresh = 0;
    CK_TOKEN_INFO info;
    char seen[200] = "";
    size_t used = 0;
    int len;

    if (fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return;
    for (i = 0; i < n; i++) {
        if (fl->C_GetTokenInfo(slots[i], &info) != CKR_OK)
            continue;
        if (!(info.flags & CKF_TOKEN_INITIALIZED)) {
            fresh++;
            continue;
        }
        len = (int)sizeof(info.label);
        while (len > 0 && info.label[len - 1] == ' ')
            len--;
        if (used < sizeof(seen)) {
            int w = snprintf(seen + used, sizeof(seen) - used, "%s'%.*s'", used ? ", " : "", len,
                             (const char *)info.label);
            used += w > 0 ? (size_t)w : 0;
        }
    }
    if (used > 0)
        eg_signer_error(EG_R_TOKEN_NOT_FOUND, "the module shows %s%s", seen,
                        used >= sizeof(seen) ? "..." : "");
    else
        eg_signer_error(EG_R_TOKEN_NOT_FOUND,
                        "the module shows no initialised token (%lu empty slot%s): is it reading "
                        "the configuration that holds the token, and may this user read the "
                        "token's files?",
                        (unsigned long)fresh, fresh == 1 ? "" : "s");
}

/* Forgets every session of instance l's current generation (they died with it). */
static void drop_generation(eg_token *tok, unsigned l)
{
    tok_lane *tl = &tok->lane[l];

    tl->gen++;
    tl->nidle = 0;
    tl->nopen = 0;
    tl->short_limit = 0;
    tl->have_slot = 0;
    tl->logged_in = 0;
    pthread_cond_broadcast(&tl->cond);
}

/* What C_Login answers for a PIN the token will not take: trying it again only counts down. */
static int pin_refused(CK_RV rv)
{
    return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_LOCKED ||
           rv == CKR_PIN_EXPIRED;
}

/*
 * Stops the token's logins for good after rv: said once, on the error stack now and to
 * eg_token_login_refused() for the daemon's log and status. Called with tok->lock held.
 */
static CK_RV refuse_logins(eg_token *tok, CK_RV rv, const char *why)
{
    char msg[sizeof(refusal)];

    tok->login_refused = rv;
    snprintf(msg, sizeof(msg),
             "token '%s': %s; no login is tried again until estgated restarts, and every "
             "request that needs the token is refused meanwhile",
             tok->label, why);
    eg_signer_error(EG_R_LOGIN, "%s", msg);
    pthread_mutex_lock(&refusal_lock);
    if (refusal[0] == 0)
        memcpy(refusal, msg, sizeof(refusal));
    pthread_mutex_unlock(&refusal_lock);
    return rv;
}

/*
 * Logs instance l in on h. A real HSM locks its user PIN after a few wrong
 * ones, and every job and TLS handshake comes here: so the token's flags are
 * read first (a locked PIN, or one more wrong one locks it: not tried), and
 * once the token refuses the PIN no login is tried again (refuse_logins).
 * The PIN is read at start only, so nothing short of a restart can change
 * the answer.
 */
static CK_RV login(eg_token *tok, unsigned l, CK_SESSION_HANDLE h)
{
    CK_FUNCTION_LIST *fl = tok->mod->lane[l].fl;
    tok_lane *tl = &tok->lane[l];
    CK_TOKEN_INFO info;
    char why[200];
    CK_RV rv;

    if (tok->pin == NULL || tl->logged_in)
        return CKR_OK;
    if (tok->login_refused != CKR_OK)
        return tok->login_refused;
    pthread_mutex_lock(&tok->mod->setup);
    if (fl->C_GetTokenInfo(tl->slot, &info) != CKR_OK)
        info.flags = 0; /* the login says what is wrong, if anything */
    if (info.flags & CKF_USER_PIN_LOCKED)
        rv = CKR_PIN_LOCKED;
    else if (info.flags & CKF_USER_PIN_FINAL_TRY)
        rv = CKR_PIN_INCORRECT;
    else
        rv = fl->C_Login(h, CKU_USER, (CK_UTF8CHAR *)tok->pin, tok->pinlen);
    pthread_mutex_unlock(&tok->mod->setup);
    if (info.flags & CKF_USER_PIN_LOCKED)
        return refuse_logins(tok, rv,
                             "the token's user PIN is locked (CKF_USER_PIN_LOCKED): its security "
                             "officer must unlock it");
    if (info.flags & CKF_USER_PIN_FINAL_TRY)
        return refuse_logins(tok, rv,
                             "one more wrong PIN locks the token (CKF_USER_PIN_FINAL_TRY), so "
                             "none was tried: check pin_file before restarting");
    if (pin_refused(rv)) {
        snprintf(why, sizeof(why),
                 "C_Login refused the PIN (%s): check pin_file against the token's user PIN "
                 "(changed on the token?)%s",
                 eg_p11_rv_name(rv),
                 rv == CKR_PIN_LOCKED ? "; it is now locked: its security officer must unlock it"
                                      : "");
        return refuse_logins(tok, rv, why);
    }
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        rv = CKR_OK;
    if (rv == CKR_OK)
        tl->logged_in = 1;
    return rv;
}

/* Opens a new session on instance l and logs in; called with tok->lock held. */
static CK_RV open_session(eg_token *tok, unsigned l, CK_SESSION_HANDLE *h)
{
    CK_FUNCTION_LIST *fl = tok->mod->lane[l].fl;
    tok_lane *tl = &tok->lane[l];
    CK_RV rv;

    if (!tok->mod->lane[l].initialized)
        return CKR_CRYPTOKI_NOT_INITIALIZED; /* eg_token_run re-initialises, unlocked */
    if (!tl->have_slot && (rv = find_slot(tok, l)) != CKR_OK)
        return rv;
    rv = fl->C_OpenSession(tl->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, h);
    if (rv != CKR_OK)
        return rv;
    atomic_fetch_add(&tok->sessions_opened, 1);
    if ((rv = login(tok, l, *h)) != CKR_OK) {
        fl->C_CloseSession(*h);
        return rv;
    }
    tl->nopen++;
    tl->used = 1;
    atomic_store(&tok->mod->lane[l].down_until, 0); /* it reaches the token */
    return CKR_OK;
}

static int session_lost(CK_RV rv);

/*
 * How many sessions instance l may have open now: pool_size, or fewer for a while after the
 * token said it had no more (tl->short_limit); then it is asked again, as other applications
 * may have closed theirs. Called with tok->lock held.
 */
static unsigned pool_limit(const eg_token *tok, tok_lane *tl)
{
    if (tl->short_limit > 0 && now_ms() >= tl->short_until)
        tl->short_limit = 0;
    return tl->short_limit > 0 && tl->short_limit < tok->pool_size ? tl->short_limit
                                                                   : tok->pool_size;
}

static CK_RV session_get(eg_token *tok, unsigned l, eg_p11_call *call)
{
    tok_lane *tl = &tok->lane[l];
    CK_SESSION_HANDLE h;
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&tok->lock);
    for (;;) {
        if (tl->have_slot && tl->mod_gen != tok->mod->lane[l].gen)
            drop_generation(tok, l);
        if (tl->nidle > 0) {
            h = tl->idle[--tl->nidle];
            if ((rv = login(tok, l, h)) == CKR_OK)
                break;
            if (session_lost(rv)) {
                /* Closed under us (another application's C_CloseAllSessions, which logs out
                   too): let its slot go and try the next one, or a new session. */
                tok->mod->lane[l].fl->C_CloseSession(h);
                tl->nopen--;
                continue;
            }
            tl->idle[tl->nidle++] = h; /* still good; the login is what failed */
            break;
        }
        if (tl->nopen < pool_limit(tok, tl)) {
            rv = open_session(tok, l, &h);
            if (rv == CKR_SESSION_COUNT && tl->nopen > 0) {
                /* The token has no more for us (other applications may hold the rest): the
                   sessions we have are the pool for now, and the job waits for one. */
                tl->short_limit = tl->nopen;
                tl->short_until = now_ms() + EG_SHORT_MS;
                continue;
            }
            if (rv == CKR_SESSION_COUNT)
                eg_signer_error(EG_R_SESSION,
                                "token '%s' has no session to give (CKR_SESSION_COUNT): other "
                                "applications hold all it allows; close some, or raise its "
                                "session limit",
                                tok->label);
            break;
        }
        pthread_cond_wait(&tl->cond, &tok->lock);
    }
    if (rv == CKR_OK) {
        call->tok = tok;
        call->fl = tok->mod->lane[l].fl;
        call->h = h;
        call->lane = l;
        call->gen = tl->gen;
        call->discard = false;
    }
    pthread_mutex_unlock(&tok->lock);
    return rv;
}

static int session_lost(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

/* The module or the token behind it is gone: a restarted server, a pulled HSM. */
static int connection_lost(CK_RV rv)
{
    return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_ERROR ||
           rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_SLOT_ID_INVALID ||
           rv == CKR_TOKEN_NOT_RECOGNIZED || rv == CKR_GENERAL_ERROR;
}

static int recoverable(CK_RV rv)
{
    return session_lost(rv) || connection_lost(rv) || rv == CKR_USER_NOT_LOGGED_IN;
}

CK_RV eg_p11_call_login(eg_p11_call *call)
{
    eg_token *tok = call->tok;
    CK_RV rv;

    pthread_mutex_lock(&tok->lock);
    tok->lane[call->lane].logged_in = 0;
    rv = login(tok, call->lane, call->h);
    pthread_mutex_unlock(&tok->lock);
    return rv;
}

void eg_p11_call_discard(eg_p11_call *call)
{
    call->discard = true;
}

static void session_put(eg_token *tok, eg_p11_call *call, CK_RV rv)
{
    tok_lane *tl = &tok->lane[call->lane];

    pthread_mutex_lock(&tok->lock);
    if (call->gen != tl->gen) {
        /* The generation was dropped while we held it: the handle is dead. */
    } else if (session_lost(rv) || connection_lost(rv) || call->discard) {
        call->fl->C_CloseSession(call->h);
        tl->nopen--;
        /* Closing an application's last session logs it out (PKCS#11 5.6). */
        tl->logged_in = 0;
    } else {
        if (rv == CKR_USER_NOT_LOGGED_IN)
            tl->logged_in = 0;
        tl->idle[tl->nidle++] = call->h;
    }
    pthread_cond_signal(&tl->cond);
    pthread_mutex_unlock(&tok->lock);
}

/* Makes the next session_get() on instance l reach the token again after rv. */
static void recover(eg_token *tok, unsigned l, unsigned mod_gen, CK_RV rv)
{
    atomic_fetch_add(&tok->recoveries, 1);
    if (!connection_lost(rv))
        return; /* a lost session was dropped in session_put; a lost login redone in get */
    /* Until a session opens on it again, jobs try the other instances first. */
    atomic_store(&tok->mod->lane[l].down_until, now_ms() + EG_LANE_DOWN_MS);
    pthread_mutex_lock(&tok->lock);
    if (tok->lane[l].mod_gen == mod_gen)
        drop_generation(tok, l);
    pthread_mutex_unlock(&tok->lock);
    lane_reinit(tok->mod, &tok->mod->lane[l], mod_gen);
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

/*
 * The instance a job runs on: the one with the fewest jobs on it or waiting
 * for it, the first of those if several tie, so that one caller at a time
 * keeps to the first instance and others open only when calls overlap. A long
 * job counts as EG_LONG_WEIGHT short ones, so short jobs keep off an instance
 * that has one; and long jobs leave the last instance without one to the
 * short jobs, queueing behind each other instead. An instance that lately
 * failed to start or lost its token is passed over while another is up, so
 * that a server taking fewer connections than configured costs nothing but a
 * wait; when none is up, all are candidates and recovery goes on.
 */
static unsigned lane_pick(eg_module *m, bool is_long)
{
    uint64_t now = now_ms();
    unsigned i, pass, best = 0, least, score, nlong, free_lanes = 0;
    bool up[EG_CONNECTIONS_MAX], found = false;

    for (i = 0; i < m->nlanes; i++) {
        up[i] = atomic_load(&m->lane[i].down_until) <= now;
        /* Only a long job keeps the reserve, so only it counts the free instances. */
        if (is_long && up[i] && atomic_load(&m->lane[i].long_jobs) == 0)
            free_lanes++;
    }
    /* Pass 0 keeps the reserve; 1 takes any instance that is up; 2 any at all. */
    for (pass = 0; pass < 3 && !found; pass++) {
        least = UINT_MAX;
        for (i = 0; i < m->nlanes; i++) {
            if (pass < 2 && !up[i])
                continue;
            nlong = atomic_load(&m->lane[i].long_jobs);
            if (pass == 0 && is_long && nlong == 0 && free_lanes == 1)
                continue;
            score = atomic_load(&m->lane[i].load) + nlong * EG_LONG_WEIGHT;
            if (score < least) {
                least = score;
                best = i;
                found = true;
                if (score == 0)
                    break;
            }
        }
    }
    return best;
}

/* Short jobs on the instance besides its long ones. */
static unsigned short_jobs(eg_lane *lane)
{
    unsigned load = atomic_load(&lane->load), nlong = atomic_load(&lane->long_jobs);

    return load > nlong ? load - nlong : 0;
}

/*
 * A long job on an instance that takes one call at a time lets the short jobs
 * already there go first, while new ones keep off: the instance's lock does
 * not queue its waiters in order, and a signature that queued a moment before
 * a key generation could otherwise wait all of it. Bounded, so that a long job
 * is never starved (on an instance that new short jobs cannot avoid, because
 * every other one is down).
 */
static void lane_wait_quiet(eg_lane *lane)
{
    struct timespec until;

    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += EG_LONG_DRAIN_S;
    pthread_mutex_lock(&lane->quiet_lock);
    while (short_jobs(lane) > 0 &&
           pthread_cond_timedwait(&lane->quiet, &lane->quiet_lock, &until) == 0)
        ;
    pthread_mutex_unlock(&lane->quiet_lock);
}

/* Takes a place on an instance: counted for lane_pick, and for the long jobs there. */
static void lane_join(eg_lane *lane, bool is_long)
{
    if (is_long)
        atomic_fetch_add(&lane->long_jobs, 1);
    atomic_fetch_add(&lane->load, 1);
}

static void lane_part(eg_lane *lane, bool is_long)
{
    atomic_fetch_sub(&lane->load, 1);
    if (is_long) {
        atomic_fetch_sub(&lane->long_jobs, 1);
    } else if (atomic_load(&lane->long_jobs) > 0) {
        pthread_mutex_lock(&lane->quiet_lock);
        pthread_cond_broadcast(&lane->quiet);
        pthread_mutex_unlock(&lane->quiet_lock);
    }
}

/*
 * The instance for a job, joined. A short job that finds a long one joined its
 * instance between the choice and the join moves once to a better instance,
 * rather than queue behind it.
 */
static unsigned lane_choose(eg_module *m, int pinned, bool is_long)
{
    unsigned l, again;

    if (pinned >= 0 && (unsigned)pinned < m->nlanes) {
        lane_join(&m->lane[pinned], is_long);
        return (unsigned)pinned;
    }
    if (is_long) {
        /* One at a time, so that two long jobs cannot both take the last free instance. */
        pthread_mutex_lock(&m->long_pick);
        l = lane_pick(m, true);
        lane_join(&m->lane[l], true);
        pthread_mutex_unlock(&m->long_pick);
        return l;
    }
    l = lane_pick(m, false);
    lane_join(&m->lane[l], false);
    if (atomic_load(&m->lane[l].long_jobs) > 0) {
        again = lane_pick(m, false);
        if (again != l) {
            lane_part(&m->lane[l], false);
            lane_join(&m->lane[again], false);
            l = again;
        }
    }
    return l;
}

/* A slot for a job that begins at now (never 0: 0 is free); EG_JOB_SLOTS when none is free. */
static unsigned job_slot_take(uint64_t now)
{
    uint64_t free_slot = 0, stamp = now ? now : 1;
    unsigned i = job_slot_hint;

    if (i < EG_JOB_SLOTS && atomic_compare_exchange_strong(&job_step_ms[i], &free_slot, stamp))
        return i;
    for (i = 0; i < EG_JOB_SLOTS; i++) {
        free_slot = 0;
        if (atomic_compare_exchange_strong(&job_step_ms[i], &free_slot, stamp)) {
            job_slot_hint = i;
            return i;
        }
    }
    return EG_JOB_SLOTS;
}

/* The job in slot i begins a new step at now. */
static void job_slot_step(unsigned i, uint64_t now)
{
    if (i < EG_JOB_SLOTS)
        atomic_store(&job_step_ms[i], now ? now : 1);
}

static void job_slot_give(unsigned i)
{
    if (i < EG_JOB_SLOTS)
        atomic_store(&job_step_ms[i], 0);
}

static CK_RV run_job(eg_token *tok, int pinned, bool is_long, eg_p11_fn *fn, void *arg)
{
    uint64_t start = now_ms(), deadline = start + tok->recover_ms;
    unsigned backoff = 0, mod_gen, l, slot;
    eg_module *m = tok->mod;
    eg_p11_call call;
    eg_lane *lane;
    CK_RV rv;

    atomic_fetch_add(&jobs_under_way, 1);
    slot = job_slot_take(start);
    for (;;) {
        /* One instance (every module but p11-kit's client): nothing to choose or count. */
        l = m->nlanes == 1 ? 0 : lane_choose(m, pinned, is_long);
        lane = &m->lane[l];
        if (!lane->initialized)
            lane_start(m, lane);
        if (is_long && m->serial && m->nlanes > 1)
            lane_wait_quiet(lane);
        lane_enter(m, lane);
        mod_gen = lane->gen;
        rv = session_get(tok, l, &call);
        if (rv == CKR_OK) {
            rv = fn(&call, arg);
            session_put(tok, &call, rv);
        }
        lane_leave(m, lane);
        if (m->nlanes > 1)
            lane_part(lane, is_long);
        if (!recoverable(rv) || now_ms() >= deadline) {
            job_slot_give(slot);
            atomic_fetch_sub(&jobs_under_way, 1);
            return rv;
        }
        /* Recovery (a re-initialisation may wait on the module too), then another try. */
        job_slot_step(slot, now_ms());
        recover(tok, l, mod_gen, rv);
        /* Retry at once after a lost session; back off while a token is away. */
        if (connection_lost(rv)) {
            sleep_ms(backoff);
            backoff = backoff ? (backoff * 2 > 500 ? 500 : backoff * 2) : 20;
        }
    }
}

CK_RV eg_token_run_lane(eg_token *tok, int pinned, eg_p11_fn *fn, void *arg)
{
    return run_job(tok, pinned, false, fn, arg);
}

CK_RV eg_token_run_long(eg_token *tok, eg_p11_fn *fn, void *arg)
{
    return run_job(tok, -1, true, fn, arg);
}

CK_RV eg_token_run_keygen(eg_token *tok, const eg_keygen_spec *spec, eg_p11_fn *fn, void *arg)
{
    return run_job(tok, -1, spec->type == EG_KEY_RSA, fn, arg);
}

CK_RV eg_token_run(eg_token *tok, eg_p11_fn *fn, void *arg)
{
    return eg_token_run_lane(tok, -1, fn, arg);
}

/*
 * A module that talks to its token over a socket (p11-kit client, network HSMs)
 * gets SIGPIPE when the other end dies; that must be a recoverable error, not
 * the end of the process. Only a default disposition is changed.
 */
static void ignore_sigpipe(void)
{
    struct sigaction sa;

    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);
    }
}

int eg_token_open(const eg_token_config *cfg, eg_token **out)
{
    eg_token *tok = NULL;
    unsigned l;
    CK_RV rv;
    int rc = -1;

    if (cfg == NULL || cfg->module_path == NULL || cfg->token_label == NULL) {
        eg_signer_error(EG_R_BAD_PARAM, "token config needs module_path and token_label");
        goto out;
    }
    ignore_sigpipe();
    if ((tok = OPENSSL_zalloc(sizeof(*tok))) == NULL)
        goto out;
    pthread_mutex_init(&tok->lock, NULL);
    for (l = 0; l < EG_CONNECTIONS_MAX; l++)
        pthread_cond_init(&tok->lane[l].cond, NULL);
    tok->pool_size = cfg->pool_size ? cfg->pool_size : EG_POOL_DEFAULT;
    tok->recover_ms = cfg->recover_ms ? cfg->recover_ms : EG_RECOVER_MS;
    if ((tok->label = OPENSSL_strdup(cfg->token_label)) == NULL)
        goto out;
    for (l = 0; l < EG_CONNECTIONS_MAX; l++)
        if ((tok->lane[l].idle = OPENSSL_zalloc(tok->pool_size * sizeof(CK_SESSION_HANDLE))) ==
            NULL)
            goto out;
    if (cfg->pin_file != NULL && read_pin_file(cfg->pin_file, &tok->pin, &tok->pinlen) != 0)
        goto out;
    if (eg_module_get(cfg->module_path, cfg->init_args, cfg->calls, cfg->connections, &tok->mod) !=
        0)
        goto out;
    eg_module_enter(tok->mod);
    pthread_mutex_lock(&tok->lock);
    rv = find_slot(tok, 0);
    pthread_mutex_unlock(&tok->lock);
    eg_module_leave(tok->mod);
    if (rv != CKR_OK) {
        eg_signer_error(EG_R_TOKEN_NOT_FOUND, "no token labelled '%s' in %s (%s)", tok->label,
                        cfg->module_path, eg_p11_rv_name(rv));
        if (rv == CKR_TOKEN_NOT_PRESENT) {
            eg_module_enter(tok->mod);
            say_tokens_present(tok->mod);
            eg_module_leave(tok->mod);
        }
        goto out;
    }
    /* Log in now so that a wrong PIN is reported at start, not at first use. */
    if (tok->pin != NULL) {
        eg_p11_call call;

        eg_module_enter(tok->mod);
        if ((rv = session_get(tok, 0, &call)) == CKR_OK)
            session_put(tok, &call, CKR_OK);
        eg_module_leave(tok->mod);
        if (rv != CKR_OK) {
            /* A refused login said so itself (refuse_logins). */
            if (tok->login_refused == CKR_OK)
                eg_signer_error(EG_R_SESSION, "token '%s': %s", tok->label, eg_p11_rv_name(rv));
            goto out;
        }
    }
    *out = tok;
    tok = NULL;
    rc = 0;
out:
    eg_token_free(tok);
    return rc;
}

void eg_token_free(eg_token *tok)
{
    unsigned i, l;

    if (tok == NULL)
        return;
    for (l = 0; tok->mod != NULL && l < tok->mod->nlanes; l++) {
        eg_lane *lane = &tok->mod->lane[l];
        tok_lane *tl = &tok->lane[l];

        lane_enter(tok->mod, lane);
        if (lane->initialized && tl->mod_gen == lane->gen) {
            for (i = 0; i < tl->nidle; i++)
                lane->fl->C_CloseSession(tl->idle[i]);
        }
        lane_leave(tok->mod, lane);
    }
    eg_module_put(tok->mod);
    if (tok->pin != NULL)
        OPENSSL_clear_free(tok->pin, tok->pinlen);
    OPENSSL_free(tok->label);
    for (l = 0; l < EG_CONNECTIONS_MAX; l++) {
        OPENSSL_free(tok->lane[l].idle);
        pthread_cond_destroy(&tok->lane[l].cond);
    }
    OPENSSL_free(tok->mechs);
    OPENSSL_free(tok->mech_info);
    pthread_mutex_destroy(&tok->lock);
    OPENSSL_free(tok);
}

const char *eg_token_label(const eg_token *tok)
{
    return tok->label;
}

bool eg_token_has_mechanism(eg_token *tok, CK_MECHANISM_TYPE mech, CK_FLAGS needed)
{
    bool found = false;
    CK_ULONG i;

    pthread_mutex_lock(&tok->lock);
    for (i = 0; i < tok->nmechs; i++) {
        if (tok->mechs[i] == mech) {
            found = (tok->mech_info[i].flags & needed) == needed;
            break;
        }
    }
    pthread_mutex_unlock(&tok->lock);
    return found;
}

eg_calls eg_token_calls(const eg_token *tok)
{
    return tok->mod->serial ? EG_CALLS_SERIAL : EG_CALLS_CONCURRENT;
}

unsigned eg_token_connections(const eg_token *tok)
{
    return tok->mod->nlanes;
}

void eg_token_get_stats(eg_token *tok, eg_token_stats *out)
{
    out->sign_calls = atomic_load(&tok->sign_calls);
    out->recoveries = atomic_load(&tok->recoveries);
    out->sessions_opened = atomic_load(&tok->sessions_opened);
    out->connections_used = 0;
    pthread_mutex_lock(&tok->lock);
    for (unsigned l = 0; l < EG_CONNECTIONS_MAX; l++)
        out->connections_used += tok->lane[l].used ? 1 : 0;
    pthread_mutex_unlock(&tok->lock);
}

uint64_t eg_token_stalled_ms(unsigned *waiting)
{
    uint64_t oldest = UINT64_MAX, now = now_ms(), t;

    if (waiting != NULL)
        *waiting = atomic_load(&jobs_under_way);
    for (unsigned i = 0; i < EG_JOB_SLOTS; i++)
        if ((t = atomic_load(&job_step_ms[i])) != 0 && t < oldest)
            oldest = t;
    return oldest == UINT64_MAX || now <= oldest ? 0 : now - oldest;
}

bool eg_token_login_refused(char *why, size_t cap)
{
    bool refused;

    pthread_mutex_lock(&refusal_lock);
    refused = refusal[0] != 0;
    if (refused && why != NULL && cap > 0)
        snprintf(why, cap, "%s", refusal);
    pthread_mutex_unlock(&refusal_lock);
    return refused;
}

void eg_token_count_sign(eg_token *tok)
{
    atomic_fetch_add(&tok->sign_calls, 1);
}

eg_token *eg_p11_call_token(eg_p11_call *call)
{
    return call->tok;
}

unsigned eg_p11_call_gen(const eg_p11_call *call)
{
    return call->gen;
}

unsigned eg_p11_call_lane(const eg_p11_call *call)
{
    return call->lane;
}

CK_RV eg_p11_call_not_found(eg_p11_call *call, CK_RV rv)
{
    CK_SESSION_INFO info;
    CK_RV srv;

    if (call->tok->pin == NULL)
        return rv;
    srv = call->fl->C_GetSessionInfo(call->h, &info);
    if (srv != CKR_OK)
        return srv; /* the session itself is gone: recovered as such */
    if (info.state == CKS_RO_PUBLIC_SESSION || info.state == CKS_RW_PUBLIC_SESSION)
        return CKR_USER_NOT_LOGGED_IN;
    return rv;
}

CK_FUNCTION_LIST *eg_module_functions(const eg_module *m)
{
    return m->lane[0].fl;
}
