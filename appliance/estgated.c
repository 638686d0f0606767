/*
 * estgated: the EST daemon. Loads the configuration, opens the token and the
 * ledger through the core, serves HTTPS through web/, and runs until SIGTERM
 * or SIGINT.
 *
 *   estgated [-c FILE]             run (default /etc/estgate/estgated.ini)
 *   estgated --check-config FILE   validate a configuration, list every problem
 *                                  (--no-token: without serverkeygen's token probes)
 *   estgated --hash-password       read a password on stdin, print its hash
 *
 * SIGHUP reloads the file: profiles, their users, policy, CA chains and
 * client CA bundles are replaced once the requests in flight are done; a file
 * with any error leaves the running configuration in force and says why.
 *
 * When it is ready to serve it prints one line per listener to stdout,
 * "estgated: listening on https://ADDR:PORT/", so that scripts and tests know
 * the port even when the configuration asked for port 0. Under systemd
 * (image/estgated.service.in) it also says READY=1 then, and how reloads and
 * the stop go (notify.h).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <civetweb.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "clock.h"
#include "config.h"
#include "core.h"
#include "audit.h"
#include "errors.h"
#include "expiry.h"
#include "est.h"
#include "notify.h"
#include "p11.h"
#include "provider.h"
#include "server.h"

#define EG_DEFAULT_CONFIG "/etc/estgate/estgated.ini"

/* sysexits.h */
#define EX_USAGE_   64
#define EX_CONFIG_  78
#define EX_UNAVAIL_ 69
#define EX_NOPERM_  77 /* the token refused the login: estgate-provision's code for it too */

static void usage(FILE *fp)
{
    fputs("usage: estgated [-c FILE]\n"
          "       estgated --check-config [--no-token] FILE\n"
          "       estgated --hash-password   (password on stdin)\n"
          "       estgated --version\n"
          "\n"
          "Serves EST (RFC 7030) over HTTPS with every signature made in the\n"
          "PKCS#11 token named in the configuration. Default configuration:\n"
          "  " EG_DEFAULT_CONFIG "\n"
          "Configuration reference: docs/configuration.md.\n",
          fp);
}

/* Blocks SIGTERM, SIGINT and SIGHUP in every thread; main waits for them. */
static void block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, set, NULL);
}

static bool differs(const char *a, const char *b)
{
    return strcmp(a != NULL ? a : "", b != NULL ? b : "") != 0;
}

static bool listeners_differ(const eg_config *a, const eg_config *b)
{
    bool d = a->nlisteners != b->nlisteners;

    for (size_t i = 0; !d && i < a->nlisteners; i++)
        d = differs(a->listeners[i].address, b->listeners[i].address) ||
            a->listeners[i].port != b->listeners[i].port ||
            a->listeners[i].allow_tls12 != b->listeners[i].allow_tls12;
    return d;
}

/* Settings that a reload cannot change: says which ones changed in the file. */
static void warn_restart_only(const eg_config *run, const eg_config *cfg)
{
    const struct {
        const char *name;
        bool changed;
    } keys[] = {
        {"[server] listen", listeners_differ(run, cfg)},
        {"[server] max_body", run->max_body != cfg->max_body},
        {"[server] threads", run->threads != cfg->threads},
        {"[server] keepalive_ms", run->keepalive_ms != cfg->keepalive_ms},
        {"[server] request_timeout_ms", run->request_timeout_ms != cfg->request_timeout_ms},
        {"[server] ledger", differs(run->ledger_path, cfg->ledger_path)},
        {"[token] module", differs(run->module_path, cfg->module_path)},
        {"[token] init_args", differs(run->init_args, cfg->init_args)},
        {"[token] label", differs(run->token_label, cfg->token_label)},
        {"[token] pin_file", differs(run->pin_file, cfg->pin_file)},
        {"[token] pool_size", run->pool_size != cfg->pool_size},
        {"[token] recover_ms", run->recover_ms != cfg->recover_ms},
        {"[token] calls", run->calls != cfg->calls},
        {"[token] connections", run->connections != cfg->connections},
    };

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (keys[i].changed)
            fprintf(stderr, "estgated: reload: %s changed; it takes effect at the next restart\n",
                    keys[i].name);
    }
}

/*
 * The TLS contexts for cfg, with the key its tls_key names: *key is the running key (the one
 * running->tls_key_uri names) again when the URI has not changed, else loaded now; NULL, said
 * on stderr, on failure.
 */
static eg_server_tls *tls_prepare(const eg_config *cfg, const eg_config *running, EVP_PKEY *in_use,
                                  eg_server *srv, EVP_PKEY **key)
{
    eg_server_tls *t;

    *key = NULL;
    if (!differs(running->tls_key_uri, cfg->tls_key_uri) && EVP_PKEY_up_ref(in_use))
        *key = in_use;
    else if (eg_provider_load_key(NULL, cfg->tls_key_uri, key) != 0) {
        eg_err_print(stderr);
        fprintf(stderr, "estgated: reload: cannot load the TLS key %s\n", cfg->tls_key_uri);
        return NULL;
    }
    if ((t = eg_server_tls_prepare(srv, cfg, *key)) == NULL) {
        EVP_PKEY_free(*key);
        *key = NULL;
    }
    return t;
}

/* SIGHUP: the file again; on any error the running configuration stays (false). */
static bool reload(const char *path, const eg_config *run, EVP_PKEY **tls_key, eg_est *est,
                   eg_server *srv)
{
    eg_config_errors errs = {NULL, 0};
    eg_config *cfg = NULL;
    eg_server_tls *next;
    EVP_PKEY *key;
    size_t n;

    fprintf(stderr, "estgated: SIGHUP, reloading %s\n", path);
    if (eg_config_load(path, &cfg, &errs) != 0) {
        eg_config_errors_print(&errs, path, stderr);
        eg_config_errors_clear(&errs);
        fprintf(stderr, "estgated: reload refused; the running configuration stays in force\n");
        return false;
    }
    warn_restart_only(run, cfg);
    n = cfg->nprofiles;
    /* The TLS chain is read again each time, so that a renewed certificate is served. */
    if ((next = tls_prepare(cfg, eg_est_config(est), *tls_key, srv, &key)) == NULL) {
        eg_config_free(cfg);
        fprintf(stderr, "estgated: reload failed; the running configuration stays in force\n");
        return false;
    }
    if (eg_est_reload(est, cfg) != 0) {
        eg_err_print(stderr);
        eg_server_tls_discard(next);
        EVP_PKEY_free(key);
        eg_config_free(cfg);
        fprintf(stderr, "estgated: reload failed; the running configuration stays in force\n");
        return false;
    }
    /* est holds cfg now: its tls_key names key */
    eg_server_tls_commit(srv, next);
    EVP_PKEY_free(*tls_key);
    *tls_key = key;
    eg_expiry_warn(cfg, time(NULL), stderr, "estgated: reload: warning: ");
    eg_log_set_level(eg_log_level_parse(cfg->log_level));
    eg_log_set_refusal_limit(cfg->log_refusals_per_second);
    /* est owns cfg now and keeps it until the next reload; the names follow it. */
    if (eg_server_reload(srv, cfg) != 0)
        fprintf(stderr, "estgated: reload: the client CA names offered at the handshake are "
                        "the previous ones\n");
    fprintf(stderr, "estgated: reloaded %s: %zu profile%s\n", path, n, n == 1 ? "" : "s");
    return true;
}

#define EXPIRY_CHECK_S (24 * 3600)
#define STOP_MS        5000  /* civetweb's threads after the drain: a request answered is written */
#define DRAIN_MS       10000 /* a request waiting on a token that is recovering needs up to 10 s */

/*
 * What systemd shows under "Status:" (notify.h), with READY=1: at start, and after every
 * reload, taken or refused (after: "" or the reload's outcome).
 */
/* The listeners are the ones started with (run: a reload does not change them, whatever the
   file says now); the profiles are the configuration in force (cfg). */
#define REFUSED_STATUS                                                                             \
    "Refusing requests: the token refused its PIN; fix pin_file and restart (see the log)"

static void notify_ready(const eg_config *cfg, const eg_config *run, const eg_server *srv,
                         const char *after)
{
    char hp[80], more[32] = "";
    size_t n = cfg->nprofiles;

    /* A reload does not read the PIN again: the refusal stays what systemd shows. */
    if (eg_token_login_refused(NULL, 0)) {
        eg_notify("READY=1\nSTATUS=" REFUSED_STATUS);
        return;
    }
    if (run->nlisteners > 1)
        snprintf(more, sizeof(more), " and %zu more", run->nlisteners - 1);
    eg_notify("READY=1\nSTATUS=Serving %zu profile%s on https://%s/%s%s", n, n == 1 ? "" : "s",
              eg_host_port(run->listeners[0].address, eg_server_port(srv, 0), hp, sizeof(hp)), more,
              after);
}

static void notify_reloaded(const eg_config *cfg, const eg_config *run, const eg_server *srv,
                            bool ok)
{
    char when[64], after[160];
    struct tm tm;
    time_t now = time(NULL);

    if (localtime_r(&now, &tm) == NULL || strftime(when, sizeof(when), "%F %T %Z", &tm) == 0)
        snprintf(when, sizeof(when), "%lld", (long long)now);
    if (ok)
        snprintf(after, sizeof(after), "; reloaded at %s", when);
    else
        snprintf(after, sizeof(after),
                 "; the reload at %s was refused and the configuration before it stays (see the "
                 "log)",
                 when);
    notify_ready(cfg, run, srv, after);
}

/* Whether the token hangs, and systemd's watchdog: the main loop's view (watch()). */
typedef struct watch_state {
    unsigned long long dog_ms; /* WatchdogSec=; 0: none */
    unsigned long long last_fed_ms;
    bool hung;
    unsigned long long stall_began_ms;
    bool refused; /* the token's login refusal was said */
} watch_state;

static unsigned long long mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ull + (unsigned long long)ts.tv_nsec / 1000000ull;
}

/*
 * A token with a call that has not returned for [token] hang_s is said to hang (one call stuck
 * on one connection is enough, however many others still answer), once, in the log and
 * in systemd's status, and again when it answers. Meanwhile systemd's watchdog is not fed, so that
 * a unit with WatchdogSec= restarts estgated: a new process opens the token afresh, which is what
 * an HSM that went silent behind an open connection needs. A token that fails fast does not hang
 * (its requests get 503); a reload or a stop that holds the main loop does not feed it either.
 */
static void watch(watch_state *w, const eg_config *cfg, const eg_config *run, const eg_server *srv)
{
    unsigned long long now = mono_ms(), hang_ms = (unsigned long long)cfg->hang_s * 1000ull;
    unsigned long long stalled;
    unsigned waiting;
    char why[320];

    /* A token that refused its PIN tries no login again (each wrong one counts towards locking
       it): every request needing it gets 503 until a restart. Said once. */
    if (!w->refused && eg_token_login_refused(why, sizeof(why))) {
        w->refused = true;
        fprintf(stderr, "estgated: %s\n", why);
        eg_notify("STATUS=" REFUSED_STATUS);
    }
    stalled = eg_token_stalled_ms(&waiting);
    if (hang_ms > 0 && stalled >= hang_ms && !w->hung) {
        w->hung = true;
        w->stall_began_ms = now - stalled;
        fprintf(stderr,
                "estgated: a call to the token has not returned for %llu s, with %u call%s "
                "waiting: it hangs (the HSM, its network or its server; [token] hang_s = %u). "
                "%s\n",
                stalled / 1000, waiting, waiting == 1 ? "" : "s", cfg->hang_s,
                w->dog_ms > 0 ? "systemd's watchdog is no longer fed and will restart estgated"
                              : "Requests that need it wait; restart estgated if it does not "
                                "come back");
        eg_notify("STATUS=The token has not answered for %llu s (%u call%s waiting); see the log",
                  stalled / 1000, waiting, waiting == 1 ? "" : "s");
    } else if (w->hung && (hang_ms == 0 || stalled < hang_ms)) {
        w->hung = false;
        fprintf(stderr, "estgated: the token answers again, after %llu s\n",
                (now - w->stall_began_ms) / 1000);
        notify_ready(cfg, run, srv, "; the token answers again after hanging");
    }
    if (w->dog_ms > 0 && !w->hung && now - w->last_fed_ms >= w->dog_ms / 2) {
        eg_notify("WATCHDOG=1");
        w->last_fed_ms = now;
    }
}

/* Signals; every second (or a quarter of systemd's watchdog interval, if shorter) the token's
   health and the watchdog, the count of audit lines left out and the TLS ticket keys' age, and
   once a day the certificates' expiry (they run out while estgated runs). */
static int wait_for_stop(const sigset_t *set, const char *path, const eg_config *run,
                         EVP_PKEY **tls_key, eg_est *est, eg_server *srv)
{
    struct timespec tick = {.tv_sec = 1}, mono;
    time_t next_check = eg_mono_s() + EXPIRY_CHECK_S;
    watch_state w = {.dog_ms = eg_notify_watchdog_usec() / 1000ull};
    bool ok;
    int sig;

    if (w.dog_ms > 0 && w.dog_ms < 4000) {
        tick.tv_sec = 0;
        tick.tv_nsec = (long)(w.dog_ms < 4 ? 1 : w.dog_ms / 4) * 1000000L;
    }
    watch(&w, eg_est_config(est), run, srv);
    for (;;) {
        if ((sig = sigtimedwait(set, NULL, &tick)) < 0) {
            if (errno != EAGAIN && errno != EINTR)
                return -1;
            watch(&w, eg_est_config(est), run, srv);
            eg_audit_flush();
            if (eg_server_tick(srv, eg_mono_s()) != 0)
                fprintf(stderr,
                        "estgated: cannot make a new TLS ticket key; the current one stays\n");
            if (eg_mono_s() >= next_check) {
                eg_expiry_warn(eg_est_config(est), time(NULL), stderr, "estgated: warning: ");
                next_check += EXPIRY_CHECK_S;
            }
            continue;
        }
        if (sig == SIGHUP) {
            /* MONOTONIC_USEC: systemd 253's Type=notify-reload matches it to its own signal. */
            clock_gettime(CLOCK_MONOTONIC, &mono);
            eg_notify("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Reloading %s",
                      (unsigned long long)mono.tv_sec * 1000000ull +
                          (unsigned long long)mono.tv_nsec / 1000ull,
                      path);
            ok = reload(path, run, tls_key, est, srv);
            notify_reloaded(eg_est_config(est), run, srv, ok);
            watch(&w, eg_est_config(est), run, srv);
            continue;
        }
        fprintf(stderr, "estgated: %s, stopping\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        eg_notify("STOPPING=1\nSTATUS=Stopping: answering the requests in flight (up to %u s)",
                  DRAIN_MS / 1000);
        return 0;
    }
}

static void print_listeners(const eg_config *cfg, const eg_server *srv)
{
    char hp[80];

    for (size_t i = 0; i < cfg->nlisteners; i++)
        printf("estgated: listening on https://%s/%s\n",
               eg_host_port(cfg->listeners[i].address, eg_server_port(srv, i), hp, sizeof(hp)),
               cfg->listeners[i].allow_tls12 ? " (TLS 1.2 allowed)" : "");
    fflush(stdout);
}

#define EG_SECURE_HEAP (1u << 20) /* 1 MiB: a few hundred plaintext keys in flight */

/* A one-line summary, then what the error stack says under it (parts may have spoken already). */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    eg_err_list l;
    char line[512];
    va_list ap;

    eg_err_take(&l);
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "estgated: %s%s", line, l.n > 0 ? ":\n" : "\n");
    eg_err_list_print(&l, stderr, "  ");
    eg_notify("STATUS=Failed: %s (see the log)", line);
}

/* This build and the libraries it runs with: the first thing support asks for. */
static void print_version(FILE *fp, const char *config)
{
    fprintf(fp, "estgated %s (%s, civetweb %s, SQLite %s)%s%s\n", ESTGATE_VERSION,
            OpenSSL_version(OPENSSL_VERSION), mg_version(), sqlite3_libversion(),
            config ? ", configuration " : "", config ? config : "");
    fflush(fp);
}

static void *stop_main(void *srv)
{
    eg_server_stop(srv);
    return NULL;
}

/*
 * eg_server_stop (civetweb's mg_stop, which waits for every thread of civetweb's) in a thread of
 * its own: false when it has not returned within ms, since a thread stuck in a token call that
 * does not return (a hung HSM, under a request or a handshake signing with the TLS key) would
 * keep it, and estgated, waiting for ever. The stop thread then goes on, and the caller exits
 * without it.
 */
static bool server_stopped_within(eg_server *srv, unsigned ms)
{
    struct timespec until;
    pthread_t t;

    if (pthread_create(&t, NULL, stop_main, srv) != 0) {
        eg_server_stop(srv);
        return true;
    }
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    return pthread_timedjoin_np(t, NULL, &until) == 0;
}

static int run(const char *path)
{
    eg_config_errors errs = {NULL, 0};
    eg_config *cfg = NULL;
    eg_core *core = NULL;
    eg_est *est = NULL;
    eg_server *srv = NULL;
    EVP_PKEY *tls_key = NULL;
    sigset_t set;
    unsigned left;
    int rc = EX_UNAVAIL_;

    eg_notify_init(); /* before any thread: it edits the environment */
    block_signals(&set);
    /* A file size limit (systemd's LimitFSIZE=) reached by the ledger or the log must fail that
       write, which the ledger answers as a full disk, not kill the daemon. */
    signal(SIGXFSZ, SIG_IGN);
    print_version(stdout, path);
    /* serverkeygen's plaintext keys live only here between the token and SSL_write: locked
       out of swap where RLIMIT_MEMLOCK allows (1; 2 is usable but not locked), wiped on
       free either way. */
    switch (CRYPTO_secure_malloc_init(EG_SECURE_HEAP, 64)) {
    case 1:
        break;
    case 2:
        fprintf(stderr, "estgated: the secure heap could not be locked in memory "
                        "(RLIMIT_MEMLOCK); plaintext serverkeygen keys are wiped after use but "
                        "could be swapped\n");
        break;
    default:
        fprintf(stderr, "estgated: no secure heap; plaintext serverkeygen keys are wiped after "
                        "use but live in the ordinary heap\n");
        break;
    }
    if (eg_config_load(path, &cfg, &errs) != 0) {
        eg_config_errors_print(&errs, path, stderr);
        eg_config_errors_clear(&errs);
        eg_notify("STATUS=Failed: %s has errors (see the log, or estgated --check-config %s)", path,
                  path);
        return EX_CONFIG_;
    }
    eg_log_set_level(eg_log_level_parse(cfg->log_level));
    eg_log_set_refusal_limit(cfg->log_refusals_per_second);
    eg_expiry_warn(cfg, time(NULL), stderr, "estgated: warning: ");
    if (eg_core_open(cfg, &core) != 0) {
        fail("cannot open the token, the CA keys or the ledger");
        goto out;
    }
    if (eg_provider_load_key(NULL, cfg->tls_key_uri, &tls_key) != 0) {
        fail("cannot load the TLS key %s", cfg->tls_key_uri);
        goto out;
    }
    if (eg_est_new(cfg, core, &est) != 0 || eg_server_start(cfg, est, tls_key, &srv) != 0) {
        fail("cannot start the HTTPS listeners");
        goto out;
    }
    print_listeners(cfg, srv);
    notify_ready(cfg, cfg, srv, "");
    if (wait_for_stop(&set, path, cfg, &tls_key, est, srv) != 0) {
        fail("cannot wait for signals");
        goto out;
    }
    /* Answers not written before civetweb stops are lost: let the requests in flight finish. */
    if ((left = eg_server_drain(srv, DRAIN_MS)) > 0)
        fprintf(stderr, "estgated: stopping with %u request%s still in flight after %u s\n", left,
                left == 1 ? "" : "s", DRAIN_MS / 1000);
    else
        fprintf(stderr, "estgated: every request in flight answered\n");
    if (!server_stopped_within(srv, STOP_MS)) {
        /* The ledger commits what it was given and stops; the stuck requests' intents stay
           pending and are taken up at the next start, as after a crash. */
        eg_core_stop_writes(core);
        fprintf(stderr,
                "estgated: the HTTPS threads have not stopped %u s after the drain: some wait on "
                "a token call that does not return (a request or a handshake); the ledger is "
                "closed and estgated exits without them (status %d); their devices are "
                "answered when they ask again\n",
                STOP_MS / 1000, EX_UNAVAIL_);
        fflush(NULL);
        _exit(EX_UNAVAIL_);
    }
    srv = NULL; /* stopped and freed */
    rc = 0;
out:
    if (rc != 0 && eg_token_login_refused(NULL, 0))
        rc = EX_NOPERM_; /* not restarted by systemd: another try can only lock the PIN */
    eg_server_stop(srv);
    eg_audit_flush_end();
    eg_est_free(est);
    EVP_PKEY_free(tls_key);
    eg_core_close(core);
    eg_config_free(cfg);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 &&
        (strcmp(argv[1], "--check-config") == 0 || strcmp(argv[1], "--hash-password") == 0))
        return eg_config_check_main(argc, argv);
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        print_version(stdout, NULL);
        return 0;
    }
    if (argc == 1)
        return run(EG_DEFAULT_CONFIG);
    if (argc == 3 && strcmp(argv[1], "-c") == 0)
        return run(argv[2]);
    usage(stderr);
    return EX_USAGE_;
}
