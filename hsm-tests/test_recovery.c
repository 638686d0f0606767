/*
 * The signer recovers from a lost session, a lost login and a lost token
 * server without the caller restarting. Each loss is caused for real: through
 * the module's own function list (another application on the same token would
 * do the same), or by killing the p11-kit server process.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>

#include "child.h"
#include "clock.h"
#include "errors.h"
#include "p11.h"
#include "provider.h"
#include "token_harness.h"

static eg_th_kind kind;
static eg_th *th;
static eg_token *tok;
static eg_p11_key *key;
static EVP_PKEY *pkey;

static int suite_init(void)
{
    eg_keygen_spec spec = {EG_KEY_EC, 0, NID_X9_62_prime256v1, "recovery", NULL, 0, true, false};

    if (eg_th_create(kind, "recovery", &th) != 0 || eg_token_open(eg_th_config(th), &tok) != 0 ||
        eg_p11_key_generate(tok, &spec, &key) != 0 || eg_provider_init(NULL) != 0 ||
        eg_provider_add_token(NULL, tok) != 0 || eg_provider_key_pkey(NULL, key, &pkey) != 0) {
        ERR_print_errors_fp(stderr);
        return -1;
    }
    return 0;
}

static int suite_clean(void)
{
    EVP_PKEY_free(pkey);
    eg_p11_key_free(key);
    if (tok != NULL)
        eg_provider_remove_token(NULL, tok);
    eg_token_free(tok);
    eg_th_destroy(th);
    return 0;
}

/* Signs a message through the provider and checks it against the public key. */
static int sign_and_verify(void)
{
    static const unsigned char msg[] = "to be signed";
    unsigned char sig[256];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY *pub = eg_p11_key_public(key);
    int ok;

    ok = ctx != NULL && EVP_DigestSignInit_ex(ctx, NULL, "SHA256", NULL, NULL, pkey, NULL) == 1 &&
         EVP_DigestSign(ctx, sig, &siglen, msg, sizeof(msg)) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        ERR_print_errors_fp(stderr);
    if (ok) {
        ctx = EVP_MD_CTX_new();
        ok = ctx != NULL &&
             EVP_DigestVerifyInit_ex(ctx, NULL, "SHA256", NULL, "provider=default", pub, NULL) ==
                 1 &&
             EVP_DigestVerify(ctx, sig, siglen, msg, sizeof(msg)) == 1;
        EVP_MD_CTX_free(ctx);
    }
    EVP_PKEY_free(pub);
    return ok ? 0 : -1;
}

/* The module instance the signer uses, as another application in this process sees it. */
static CK_FUNCTION_LIST *module_functions(CK_SLOT_ID *slot)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    const eg_token_config *cfg = eg_th_config(th);
    CK_FUNCTION_LIST *fl = NULL;
    CK_SLOT_ID slots[8];
    CK_ULONG n = 8, i;
    CK_TOKEN_INFO info;
    void *dl = dlopen(cfg->module_path, RTLD_NOW | RTLD_NOLOAD);

    if (dl == NULL)
        return NULL;
    *(void **)&get_list = dlsym(dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(&fl) != CKR_OK ||
        fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return NULL;
    for (i = 0; i < n; i++) {
        if (fl->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
            memcmp(info.label, cfg->token_label, strlen(cfg->token_label)) == 0) {
            *slot = slots[i];
            return fl;
        }
    }
    return NULL;
}

static void test_recovers_when_all_sessions_are_closed(void)
{
    eg_token_stats before, after;
    CK_FUNCTION_LIST *fl;
    CK_SLOT_ID slot;

    if (kind == EG_TH_P11KIT) {
        /* Each C_GetFunctionList() of the p11-kit client is its own unconnected
         * application, so nothing in this process can reach our sessions; the
         * server restart below is how that token loses them. */
        fprintf(stderr, "(not reachable through the p11-kit client) ");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(sign_and_verify(), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fl = module_functions(&slot));
    eg_token_get_stats(tok, &before);
    /* Closes the signer's pooled sessions under it, and with them the login. */
    CU_ASSERT_EQUAL_FATAL(fl->C_CloseAllSessions(slot), CKR_OK);
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
    eg_token_get_stats(tok, &after);
    CU_ASSERT(after.recoveries > before.recoveries);
    CU_ASSERT(after.sessions_opened > before.sessions_opened);
}

/* Jobs that each use their session, then keep it POOL_JOB_MS: how many ran at once. */
#define POOL_JOBS   16 /* the signer's default pool_size */
#define POOL_JOB_MS 200

static atomic_int jobs_inside, jobs_most;

static CK_RV hold_session(eg_p11_call *call, void *arg)
{
    CK_OBJECT_HANDLE obj;
    CK_ULONG found = 0;
    CK_RV rv = eg_p11_find_objects(call, NULL, 0, &obj, 1, &found); /* a dead session fails */
    int now, most;

    (void)arg;
    if (rv != CKR_OK)
        return rv;
    now = atomic_fetch_add(&jobs_inside, 1) + 1;
    most = atomic_load(&jobs_most);
    while (now > most && !atomic_compare_exchange_weak(&jobs_most, &most, now))
        ;
    usleep(POOL_JOB_MS * 1000);
    atomic_fetch_sub(&jobs_inside, 1);
    return CKR_OK;
}

static eg_token *jobs_tok; /* the token parallel_jobs runs on */

static void *pool_job_thread(void *arg)
{
    *(CK_RV *)arg = eg_token_run(jobs_tok, hold_session, NULL);
    return NULL;
}

/* POOL_JOBS jobs at once on token on, each holding a session: how many ran at once. */
static int parallel_jobs(eg_token *on)
{
    pthread_t t[POOL_JOBS];
    CK_RV rv[POOL_JOBS];
    int i, failed = 0;

    jobs_tok = on;
    atomic_store(&jobs_most, 0);
    for (i = 0; i < POOL_JOBS; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, pool_job_thread, &rv[i]), 0);
    for (i = 0; i < POOL_JOBS; i++) {
        pthread_join(t[i], NULL);
        failed += rv[i] != CKR_OK;
    }
    CU_ASSERT_EQUAL(failed, 0);
    return atomic_load(&jobs_most);
}

/*
 * After another application closed every session (and so logged out), the pool lets each dead
 * session's slot go: all of pool_size run at once again, instead of the dead ones staying
 * counted and every job after queueing for the few slots left.
 */
static void test_the_pool_is_whole_after_its_sessions_are_closed(void)
{
    CK_FUNCTION_LIST *fl;
    CK_SLOT_ID slot;
    int before, after;

    if (kind == EG_TH_P11KIT) {
        fprintf(stderr, "(not reachable through the p11-kit client) ");
        return;
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(fl = module_functions(&slot));
    before = parallel_jobs(tok); /* also fills the pool with sessions */
    CU_ASSERT_EQUAL_FATAL(fl->C_CloseAllSessions(slot), CKR_OK);
    parallel_jobs(tok); /* each finds its session dead, and recovers */
    after = parallel_jobs(tok);
    printf("(%d jobs at once before, %d after) ", before, after);
    CU_ASSERT_EQUAL(before, POOL_JOBS);
    CU_ASSERT_EQUAL(after, POOL_JOBS);
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
}

static void test_recovers_when_logged_out(void)
{
    eg_token_stats before, after;
    CK_SESSION_HANDLE h;
    CK_FUNCTION_LIST *fl;
    CK_SLOT_ID slot;

    if (kind == EG_TH_P11KIT) {
        /* Each C_GetFunctionList() of the p11-kit client is its own unconnected
         * application, so nothing in this process can reach our sessions; the
         * server restart below is how that token loses them. */
        fprintf(stderr, "(not reachable through the p11-kit client) ");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(sign_and_verify(), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fl = module_functions(&slot));
    eg_token_get_stats(tok, &before);
    /* Login state is per application: a logout on any session logs out the signer's. */
    CU_ASSERT_EQUAL_FATAL(fl->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_OK);
    CU_ASSERT_EQUAL(fl->C_Logout(h), CKR_OK);
    fl->C_CloseSession(h);
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
    eg_token_get_stats(tok, &after);
    CU_ASSERT(after.recoveries > before.recoveries);
}

/* A thread that signs and verifies until stopped, pause_us apart, timing each signature. */
struct signer_thread {
    pthread_t tid;
    atomic_int stop;
    unsigned pause_us;
    atomic_ulong ok, bad;
    uint64_t max_ms; /* read after the join */
};

static void *sign_loop(void *arg)
{
    struct signer_thread *t = arg;
    uint64_t t0, ms;

    while (!atomic_load(&t->stop)) {
        t0 = eg_mono_ms();
        if (sign_and_verify() == 0)
            atomic_fetch_add(&t->ok, 1);
        else
            atomic_fetch_add(&t->bad, 1);
        ms = eg_mono_ms() - t0;
        if (ms > t->max_ms)
            t->max_ms = ms;
        if (t->pause_us > 0)
            usleep(t->pause_us);
    }
    return NULL;
}

static void test_recovers_when_token_server_restarts(void)
{
    /* Four signers: through p11-kit they spread over several connections, and each
     * connection must come back on its own. */
    struct signer_thread t[4];
    unsigned long ok_before, ok_after = 0;
    eg_token_stats before, after;
    int i;

    if (kind != EG_TH_P11KIT) {
        printf("(only the p11-kit-served token has a server to kill) ");
        return;
    }
    eg_token_get_stats(tok, &before);
    memset(t, 0, sizeof(t));
    for (i = 0; i < 4; i++) {
        t[i].pause_us = 2000;
        pthread_create(&t[i].tid, NULL, sign_loop, &t[i]);
    }
    usleep(300000);
    ok_before = t[0].ok + t[1].ok + t[2].ok + t[3].ok;
    CU_ASSERT_EQUAL_FATAL(eg_th_server_kill(th), 0);
    usleep(500000); /* callers wait, bounded by recover_ms, while the token is away */
    CU_ASSERT_EQUAL_FATAL(eg_th_server_start(th), 0);
    usleep(1500000);
    for (i = 0; i < 4; i++) {
        atomic_store(&t[i].stop, 1);
        pthread_join(t[i].tid, NULL);
        ok_after += t[i].ok;
        CU_ASSERT_EQUAL(t[i].bad, 0);
    }
    eg_token_get_stats(tok, &after);
    CU_ASSERT(ok_before > 0);
    CU_ASSERT(ok_after > ok_before + 10);
    CU_ASSERT(after.recoveries > before.recoveries);
    CU_ASSERT(after.connections_used >= 2);
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
}

/* Only p11-kit's client is called one call at a time unless configured otherwise. */
static void test_calls_mode_follows_the_module(void)
{
    CU_ASSERT_EQUAL(eg_token_calls(tok),
                    kind == EG_TH_P11KIT ? EG_CALLS_SERIAL : EG_CALLS_CONCURRENT);
}

/* Another token on the loaded module: the same mode opens, the other is refused by name. */
static void test_module_keeps_its_calls_mode(void)
{
    eg_token_config cfg = *eg_th_config(th);
    eg_calls mode = eg_token_calls(tok);
    eg_calls other = mode == EG_CALLS_SERIAL ? EG_CALLS_CONCURRENT : EG_CALLS_SERIAL;
    const eg_calls same[] = {EG_CALLS_AUTO, mode};
    char expected[64];
    const char *reason = NULL;
    eg_token *second = NULL;

    for (size_t i = 0; i < 2; i++) {
        cfg.calls = same[i];
        CU_ASSERT_EQUAL_FATAL(eg_token_open(&cfg, &second), 0);
        CU_ASSERT_EQUAL(eg_token_calls(second), mode);
        eg_token_free(second);
        second = NULL;
    }
    cfg.calls = other;
    ERR_clear_error();
    CU_ASSERT_NOT_EQUAL(eg_token_open(&cfg, &second), 0);
    CU_ASSERT_PTR_NULL(second);
    ERR_peek_last_error_data(&reason, NULL);
    snprintf(expected, sizeof(expected), "already loaded with calls = %s", eg_calls_name(mode));
    CU_ASSERT_PTR_NOT_NULL_FATAL(reason);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, expected));
    if (strstr(reason, expected) == NULL)
        fprintf(stderr, "\n  reason: %s\n", reason);
    ERR_clear_error();
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
}

/* ---- several connections ---- */

/* A job that keeps its session (and, called one at a time, its connection) until released. */
struct holder {
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered, release, returned;
    bool long_job; /* run with eg_token_run_long, as an RSA key generation */
};

/* The CLOCK_REALTIME time 10 s from now: how long a holder holds, or is waited for, at most. */
static struct timespec ten_seconds_on(void)
{
    struct timespec t;

    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += 10;
    return t;
}

static CK_RV hold_fn(eg_p11_call *call, void *arg)
{
    struct holder *h = arg;
    struct timespec until = ten_seconds_on();

    (void)call;
    pthread_mutex_lock(&h->mu);
    h->entered = 1;
    pthread_cond_broadcast(&h->cv);
    while (!h->release && pthread_cond_timedwait(&h->cv, &h->mu, &until) == 0)
        ;
    pthread_mutex_unlock(&h->mu);
    return CKR_OK;
}

static void *hold_thread(void *arg)
{
    struct holder *h = arg;

    if (h->long_job)
        eg_token_run_long(tok, hold_fn, h);
    else
        eg_token_run(tok, hold_fn, h);
    pthread_mutex_lock(&h->mu);
    h->returned = 1;
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* Starts a holder without waiting for its job to run. */
static int hold_launch(struct holder *h, bool long_job)
{
    memset(h, 0, sizeof(*h));
    h->long_job = long_job;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    if (pthread_create(&h->tid, NULL, hold_thread, h) != 0) {
        pthread_mutex_destroy(&h->mu);
        pthread_cond_destroy(&h->cv);
        return -1;
    }
    return 0;
}

static int hold_entered(struct holder *h)
{
    int entered;

    pthread_mutex_lock(&h->mu);
    entered = h->entered;
    pthread_mutex_unlock(&h->mu);
    return entered;
}

/* Starts a holder and waits until its job is running. */
static int hold_start(struct holder *h)
{
    struct timespec until;
    int entered;

    if (hold_launch(h, false) != 0)
        return -1;
    until = ten_seconds_on();
    pthread_mutex_lock(&h->mu);
    while (!h->entered && pthread_cond_timedwait(&h->cv, &h->mu, &until) == 0)
        ;
    entered = h->entered;
    pthread_mutex_unlock(&h->mu);
    return entered ? 0 : -1;
}

/* Lets the holder go; whether it was still holding (or waiting to). */
static int hold_release(struct holder *h)
{
    int held;

    pthread_mutex_lock(&h->mu);
    held = !h->returned;
    h->release = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    return held;
}

static void hold_join(struct holder *h)
{
    pthread_join(h->tid, NULL);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
}

/* Releases the holder; whether it was still holding. */
static int hold_stop(struct holder *h)
{
    int held = hold_release(h);

    hold_join(h);
    return held;
}

/* For test_a_connection_the_server_refuses_is_passed_over: lets the holder go after a while. */
static struct holder *hold_for_release;

static void *release_after(void *arg)
{
    const struct timespec *delay = arg;
    struct holder *h;

    nanosleep(delay, NULL);
    h = hold_for_release;
    pthread_mutex_lock(&h->mu);
    h->release = 1;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/*
 * A call that holds its connection does not hold up the next: through p11-kit's
 * client, called one call at a time, the next call takes a connection of its own
 * (a long RSA key generation for serverkeygen must not stop every enrollment).
 */
static void test_a_call_runs_beside_one_that_holds_a_connection(void)
{
    eg_token_stats stats;
    struct holder h;

    CU_ASSERT_EQUAL(eg_token_connections(tok), kind == EG_TH_P11KIT ? EG_CONNECTIONS_P11KIT : 1);
    CU_ASSERT_EQUAL_FATAL(hold_start(&h), 0);
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
    /* Signed while the holder still held: not after its 10 s ran out. */
    CU_ASSERT_EQUAL(hold_stop(&h), 1);
    eg_token_get_stats(tok, &stats);
    if (kind == EG_TH_P11KIT) {
        CU_ASSERT(stats.connections_used >= 2);
    } else {
        CU_ASSERT_EQUAL(stats.connections_used, 1);
    }
}

/*
 * One call stuck on one connection while the others keep answering is a hang: the
 * watchdog's measure (eg_token_stalled_ms) is the age of the oldest call still
 * waiting, not the time since any call returned, which traffic on the other
 * connections (or sessions) would keep near 0. Once the stuck call returns, and
 * nothing else is under way, nothing is stalled.
 */
static void test_one_stuck_call_is_seen_beside_calls_that_answer(void)
{
    struct timespec began, now;
    uint64_t stalled = 0;
    unsigned waiting = 0, signed_ok = 0;
    long held_ms = 0;
    struct holder h;

    CU_ASSERT_EQUAL_FATAL(hold_start(&h), 0);
    clock_gettime(CLOCK_MONOTONIC, &began);
    do {
        if (sign_and_verify() == 0)
            signed_ok++;
        clock_gettime(CLOCK_MONOTONIC, &now);
        held_ms = (now.tv_sec - began.tv_sec) * 1000 + (now.tv_nsec - began.tv_nsec) / 1000000;
    } while (held_ms < 1500);
    stalled = eg_token_stalled_ms(&waiting);
    CU_ASSERT(signed_ok > 0);                      /* the other calls answered meanwhile */
    CU_ASSERT(stalled >= 1400 && stalled < 10000); /* whole milliseconds, two clocks */
    CU_ASSERT(waiting >= 1);
    if (stalled < 1400)
        fprintf(stderr, "\n  stalled %llu ms with a call held %ld ms (%u signatures beside it)\n",
                (unsigned long long)stalled, held_ms, signed_ok);
    CU_ASSERT_EQUAL(hold_stop(&h), 1);
    CU_ASSERT_EQUAL(eg_token_stalled_ms(&waiting), 0);
    CU_ASSERT_EQUAL(waiting, 0);
}

/*
 * Long jobs (RSA key generations for serverkeygen) keep to themselves: through
 * p11-kit's client, called one call at a time, signatures keep off the
 * connections they hold, and as many long jobs as there are connections leave
 * one to the signatures, the last of them waiting for another long job instead.
 * In-process, where calls run concurrently, they all run at once.
 */
#define NLONG 4

static void test_long_jobs_leave_the_signatures_a_connection(void)
{
    unsigned nconn = eg_token_connections(tok), want = nconn > 1 ? nconn - 1 : NLONG, entered = 0;
    struct timespec pause = {0, 50 * 1000000L};
    struct signer_thread t[8];
    struct holder h[NLONG];
    unsigned long before = 0, after = 0, bad = 0;
    unsigned nsign = 2 * nconn > 8 ? 8 : 2 * nconn;
    uint64_t max_ms = 0;
    int i, launched = 0, held = 0;

    /* Connections an earlier test made the server refuse are passed over for a second. */
    sleep(1);
    /* Signers first, so every connection has calls on it when the long jobs come. */
    memset(t, 0, sizeof(t));
    for (i = 0; i < (int)nsign; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i].tid, NULL, sign_loop, &t[i]), 0);
    /* Every connection open, and any that failed to start meanwhile up again (SoftHSM behind
       the server can refuse logins made at the same moment by several of its processes; the
       signer passes such a connection over for a second): a long job chooses its connection
       once, and one that came while a connection was down would queue behind another. */
    for (int tries = 0; tries < 100; tries++) {
        eg_token_stats stats;

        eg_token_get_stats(tok, &stats);
        if (stats.connections_used >= nconn)
            break;
        nanosleep(&pause, NULL);
    }
    for (i = 0; i < 26; i++)
        nanosleep(&pause, NULL);
    for (i = 0; i < NLONG && hold_launch(&h[i], true) == 0; i++)
        launched++;
    CU_ASSERT_EQUAL(launched, NLONG);
    /* Until the long jobs that can run are running (10 s at most)... */
    for (int tries = 0; tries < 200 && entered < want; tries++) {
        nanosleep(&pause, NULL);
        for (entered = 0, i = 0; i < launched; i++)
            entered += (unsigned)hold_entered(&h[i]);
    }
    CU_ASSERT_EQUAL(entered, want);
    /* ...then a second of signatures beside them. */
    for (i = 0; i < (int)nsign; i++)
        before += atomic_load(&t[i].ok);
    for (i = 0; i < 20; i++)
        nanosleep(&pause, NULL);
    for (entered = 0, i = 0; i < launched; i++)
        entered += (unsigned)hold_entered(&h[i]);
    CU_ASSERT_EQUAL(entered, want);
    for (i = 0; i < (int)nsign; i++)
        atomic_store(&t[i].stop, 1);
    for (i = 0; i < (int)nsign; i++) {
        pthread_join(t[i].tid, NULL);
        after += t[i].ok;
        bad += t[i].bad;
        if (t[i].max_ms > max_ms)
            max_ms = t[i].max_ms;
    }
    /* All at once: the one still waiting queues behind another. */
    for (i = 0; i < launched; i++)
        held += hold_release(&h[i]);
    for (i = 0; i < launched; i++)
        hold_join(&h[i]);
    /* No long job ran out its 10 s, the signatures went on, none waited for a long job. */
    CU_ASSERT_EQUAL(held, launched);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(after > before + 10);
    if (max_ms >= 1000)
        fprintf(stderr, "a signature waited %llu ms beside the long jobs\n",
                (unsigned long long)max_ms);
    CU_ASSERT(max_ms < 1000);
}

static CK_RV random_fn(eg_p11_call *call, void *arg)
{
    return eg_p11_generate_random(call, arg, 16);
}

/*
 * A token server that takes fewer connections than estgated asks for: the
 * connections it refuses are passed over and calls wait for one that works,
 * instead of retrying a refused one until recover_ms runs out. Run first, while
 * only the first connection is open: new connections are refused by moving the
 * server's socket away, which leaves the open one working.
 */
static void test_a_connection_the_server_refuses_is_passed_over(void)
{
    eg_token_config cfg = *eg_th_config(th);
    char sock[4096], away[4200];
    eg_token *quick = NULL;
    eg_token_stats stats;
    struct holder h;
    uint8_t random[16];
    CK_RV rv;

    if (kind != EG_TH_P11KIT) {
        printf("(only p11-kit's client has connections to refuse) ");
        return;
    }
    eg_token_get_stats(tok, &stats);
    CU_ASSERT_EQUAL_FATAL(stats.connections_used, 1);
    /* Another token on the same module and connections, that gives up after 1.5 s. */
    cfg.recover_ms = 1500;
    CU_ASSERT_EQUAL_FATAL(eg_token_open(&cfg, &quick), 0);
    snprintf(sock, sizeof(sock), "%s/p11kit.sock", eg_th_dir(th));
    snprintf(away, sizeof(away), "%s.away", sock);
    CU_ASSERT_EQUAL_FATAL(hold_start(&h), 0); /* on the first connection, for 10 s at most */
    CU_ASSERT_EQUAL_FATAL(rename(sock, away), 0);
    /* The holder lets go after 2.5 s, past quick's recover_ms: only a call that waits
     * for the first connection, rather than retrying the refused ones, gets through. */
    struct timespec until = {2, 500000000};
    pthread_t releaser;
    hold_for_release = &h;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&releaser, NULL, release_after, &until), 0);
    rv = eg_token_run(quick, random_fn, random);
    CU_ASSERT_EQUAL(rv, CKR_OK);
    if (rv != CKR_OK)
        fprintf(stderr, "\n  with new connections refused: %s\n", eg_p11_rv_name(rv));
    pthread_join(releaser, NULL);
    hold_stop(&h);
    CU_ASSERT_EQUAL_FATAL(rename(away, sock), 0);
    eg_token_free(quick);
    ERR_clear_error();
    /* The refused connections are tried again after a second, and now open. */
    usleep(1100000);
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
}

/*
 * A session object exists only for the connection that made it: a key made as
 * one on a second connection is used there, not on the first.
 */
static void test_a_session_key_stays_on_its_connection(void)
{
    eg_keygen_spec spec = {EG_KEY_EC, 0, NID_X9_62_prime256v1, "session", NULL, 0, false, false};
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    uint8_t digest[32], sig[128];
    eg_p11_key *skey = NULL;
    struct holder h;
    size_t siglen;

    memset(digest, 0x42, sizeof(digest));
    /* The first connection is busy, so the key is made on another. */
    CU_ASSERT_EQUAL_FATAL(hold_start(&h), 0);
    CU_ASSERT_EQUAL(eg_p11_key_generate(tok, &spec, &skey), 0);
    CU_ASSERT_EQUAL(hold_stop(&h), 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(skey);
    /* Now the first connection is free, and the least busy. */
    for (int i = 0; i < 3; i++) {
        siglen = sizeof(sig);
        CU_ASSERT_EQUAL(eg_p11_key_sign(skey, &mech, digest, sizeof(digest), sig, &siglen), 0);
    }
    CU_ASSERT_EQUAL(eg_p11_key_destroy(skey), 0);
    eg_p11_key_free(skey);
    ERR_clear_error();
}

/* Whether sig (raw r||s, as the token makes it) is pub's signature on the digest. */
static bool ecdsa_verifies(EVP_PKEY *pub, const uint8_t *digest, size_t dlen, const uint8_t *sig,
                           size_t siglen)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)(siglen / 2), NULL);
    BIGNUM *s = BN_bin2bn(sig + siglen / 2, (int)(siglen / 2), NULL);
    EVP_PKEY_CTX *ctx = NULL;
    unsigned char *der = NULL;
    int len = 0;
    bool ok = false;

    if (es != NULL && r != NULL && s != NULL && ECDSA_SIG_set0(es, r, s) == 1) {
        r = s = NULL;
        len = i2d_ECDSA_SIG(es, &der);
    }
    if (len > 0 && (ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, "provider=default")) != NULL &&
        EVP_PKEY_verify_init(ctx) == 1)
        ok = EVP_PKEY_verify(ctx, der, (size_t)len, digest, dlen) == 1;
    EVP_PKEY_CTX_free(ctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    BN_free(r);
    BN_free(s);
    ERR_clear_error();
    return ok;
}

/* Signs the digest with k: 0 with the signature, or -1 with the signer's first reason and text. */
static int sign_digest(eg_p11_key *k, const uint8_t *digest, uint8_t *sig, size_t *siglen,
                       int *reason, char *text, size_t cap)
{
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    const char *data = NULL;
    int flags = 0;

    ERR_clear_error();
    if (eg_p11_key_sign(k, &mech, digest, 32, sig, siglen) == 0)
        return 0;
    *reason = ERR_GET_REASON(ERR_peek_error_data(&data, &flags));
    snprintf(text, cap, "%s", (flags & ERR_TXT_STRING) && data != NULL ? data : "");
    ERR_clear_error();
    return -1;
}

/*
 * A key deleted from the token under a running signer is reported as gone, with no C_Sign
 * made. One made again under the same id and label (an operator's slip, a restore from the
 * wrong backup) is another key: the signer refuses it rather than sign with it what the key's
 * certificate does not vouch for, and says why.
 */
static void test_a_replaced_key_does_not_sign(void)
{
    static const uint8_t id[] = {0x72, 0x65, 0x70, 0x6c, 0x61, 0x63, 0x65, 0x64};
    eg_keygen_spec spec = {EG_KEY_EC, 0,    NID_X9_62_prime256v1, "replaced", id, sizeof(id),
                           true,      false};
    eg_p11_key *signer = NULL, *other = NULL, *again = NULL;
    uint8_t digest[32], sig[128];
    size_t siglen = sizeof(sig);
    EVP_PKEY *pub = NULL;
    char text[256];
    int reason = 0;

    memset(digest, 0x5a, sizeof(digest));
    CU_ASSERT_EQUAL_FATAL(eg_p11_key_generate(tok, &spec, &signer), 0);
    pub = eg_p11_key_public(signer);
    /* A first signature leaves the key's handle cached, as in a running estgated. */
    CU_ASSERT_EQUAL(sign_digest(signer, digest, sig, &siglen, &reason, text, sizeof(text)), 0);
    CU_ASSERT(ecdsa_verifies(pub, digest, sizeof(digest), sig, siglen));
    /* Deleted through another handle on it, as another application would. */
    CU_ASSERT_EQUAL_FATAL(eg_p11_key_open(tok, eg_p11_key_uri(signer), &other), 0);
    CU_ASSERT_EQUAL_FATAL(eg_p11_key_destroy(other), 0);
    siglen = sizeof(sig);
    CU_ASSERT_EQUAL(sign_digest(signer, digest, sig, &siglen, &reason, text, sizeof(text)), -1);
    CU_ASSERT_EQUAL(reason, EG_R_KEY_NOT_FOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "is no longer in the token"));
    CU_ASSERT_PTR_NULL(strstr(text, "C_Sign"));
    /* Another key under the same id and label. */
    CU_ASSERT_EQUAL_FATAL(eg_p11_key_generate(tok, &spec, &again), 0);
    siglen = sizeof(sig);
    if (sign_digest(signer, digest, sig, &siglen, &reason, text, sizeof(text)) == 0) {
        CU_FAIL("signed with the key that replaced it");
        CU_ASSERT(ecdsa_verifies(pub, digest, sizeof(digest), sig, siglen));
    } else {
        CU_ASSERT_EQUAL(reason, EG_R_KEY_REPLACED);
        CU_ASSERT_PTR_NOT_NULL(strstr(text, "is no longer the key loaded at start"));
    }
    /* The new key, opened for what it is, signs. */
    siglen = sizeof(sig);
    CU_ASSERT_EQUAL(sign_digest(again, digest, sig, &siglen, &reason, text, sizeof(text)), 0);
    CU_ASSERT_EQUAL(eg_p11_key_destroy(again), 0);
    eg_p11_key_free(again);
    eg_p11_key_free(other);
    eg_p11_key_free(signer);
    EVP_PKEY_free(pub);
    ERR_clear_error();
}

/*
 * More than one connection needs a module whose C_GetFunctionList makes a new
 * instance each time; a loaded module keeps its number.
 */
static void test_connections_the_module_can_have(void)
{
    eg_token_config cfg = *eg_th_config(th);
    const char *reason = NULL;
    eg_token *second = NULL;
    char copy[4096], cmd[8300];

    if (kind == EG_TH_SOFTHSM) {
        /* A copy of SoftHSM loads afresh: one instance, however often asked. */
        snprintf(copy, sizeof(copy), "%s/one-instance.so", eg_th_dir(th));
        snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", cfg.module_path, copy);
        CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
        cfg.module_path = copy;
        cfg.connections = 2;
        ERR_clear_error();
        CU_ASSERT_NOT_EQUAL(eg_token_open(&cfg, &second), 0);
        ERR_peek_last_error_data(&reason, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(reason);
        CU_ASSERT_PTR_NOT_NULL(strstr(reason, "one instance"));
        CU_ASSERT_PTR_NOT_NULL(strstr(reason, "only one connection"));
        ERR_clear_error();
        cfg = *eg_th_config(th);
    }
    cfg.connections = eg_token_connections(tok) == 1 ? 2 : 1;
    ERR_clear_error();
    CU_ASSERT_NOT_EQUAL(eg_token_open(&cfg, &second), 0);
    ERR_peek_last_error_data(&reason, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(reason);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason, "already loaded with connections = "));
    ERR_clear_error();
    cfg.connections = eg_token_connections(tok);
    CU_ASSERT_EQUAL_FATAL(eg_token_open(&cfg, &second), 0);
    eg_token_free(second);
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
}

/*
 * A token with no more sessions to give (a hardware HSM's limit per partition, which other
 * applications share) answers C_OpenSession CKR_SESSION_COUNT: jobs then take turns on the
 * sessions already open instead of failing, and a token that gives none at all is said to.
 * The token is this suite's, behind the quota module (harness/p11_quota.c) with a limit of 2.
 */
static void test_a_token_out_of_sessions_shares_those_open(void)
{
    eg_token_config cfg = *eg_th_config(th);
    char limit[PATH_MAX + 16], quota[PATH_MAX];
    const char *reason = NULL;
    eg_token_stats st;
    eg_token *q = NULL;

    if (kind == EG_TH_P11KIT) {
        /* The quota module loads its module once: one instance of p11-kit's client. */
        fprintf(stderr, "(the quota module wraps in-process modules) ");
        return;
    }
    snprintf(quota, sizeof(quota), "%s/quota", eg_th_dir(th));
    snprintf(limit, sizeof(limit), "%s.sessions", quota);
    setenv("EG_P11_QUOTA_MODULE", cfg.module_path, 1);
    setenv("EG_P11_QUOTA_FILE", quota, 1);
    cfg.module_path = EG_P11_QUOTA_PATH;
    CU_ASSERT_EQUAL_FATAL(eg_file_write(limit, "0\n", 2, 0600), 0);
    ERR_clear_error();
    CU_ASSERT_NOT_EQUAL(eg_token_open(&cfg, &q), 0);
    ERR_peek_error_data(&reason, NULL);
    CU_ASSERT_PTR_NOT_NULL(reason != NULL ? strstr(reason, "has no session to give") : NULL);
    ERR_clear_error();
    CU_ASSERT_EQUAL_FATAL(eg_file_write(limit, "2\n", 2, 0600), 0);
    CU_ASSERT_EQUAL_FATAL(eg_token_open(&cfg, &q), 0);
    /* 16 jobs at once, each holding its session a while: 2 at a time, none failed. */
    CU_ASSERT_EQUAL(parallel_jobs(q), 2);
    eg_token_get_stats(q, &st);
    CU_ASSERT_EQUAL(st.sessions_opened, 2);
    eg_token_free(q);
    unlink(limit);
    /* The quota module finalised the module this suite's token shares: it recovers. */
    CU_ASSERT_EQUAL(sign_and_verify(), 0);
}

static CU_TestInfo tests[] = {
    /* First: it needs the later connections not opened yet. */
    {"a connection the server refuses is passed over",
     test_a_connection_the_server_refuses_is_passed_over},
    {"recovers when all sessions are closed", test_recovers_when_all_sessions_are_closed},
    {"the pool is whole after its sessions are closed",
     test_the_pool_is_whole_after_its_sessions_are_closed},
    {"recovers when logged out", test_recovers_when_logged_out},
    {"recovers when the token server restarts", test_recovers_when_token_server_restarts},
    {"calls mode follows the module", test_calls_mode_follows_the_module},
    {"a module keeps its calls mode", test_module_keeps_its_calls_mode},
    {"a call runs beside one that holds a connection",
     test_a_call_runs_beside_one_that_holds_a_connection},
    {"one stuck call is seen beside calls that answer",
     test_one_stuck_call_is_seen_beside_calls_that_answer},
    {"a session key stays on its connection", test_a_session_key_stays_on_its_connection},
    {"long jobs leave the signatures a connection",
     test_long_jobs_leave_the_signatures_a_connection},
    {"the connections a module can have", test_connections_the_module_can_have},
    {"a replaced key does not sign", test_a_replaced_key_does_not_sign},
    /* Last: it finalises the module this suite's token uses. */
    {"a token out of sessions shares those open", test_a_token_out_of_sessions_shares_those_open},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv)
{
    return eg_th_run(argc, argv, &kind, suite_init, suite_clean, tests);
}
