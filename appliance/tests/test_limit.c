/* Per-principal issuance limits (appliance/limit.c), with the clock given by the test. */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>

#include <CUnit/CUnit.h>

#include "cu_run.h"
#include "limit.h"

static void test_window_counts_and_ends(void)
{
    eg_limiter *l = eg_limiter_new();
    time_t s = eg_limiter_window_start("p", "basic:a", 3600, 1000000);
    unsigned retry = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT(s <= 1000000 && s > 1000000 - 3600);
    CU_ASSERT(eg_limiter_take(l, "p", "basic:a", 2, 3600, s + 10, &retry));
    CU_ASSERT(eg_limiter_take(l, "p", "basic:a", 2, 3600, s + 500, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "basic:a", 2, 3600, s + 1000, &retry));
    CU_ASSERT_EQUAL(retry, 2600); /* until the window's end */
    /* others have their own counts: another principal, the same one on another profile */
    CU_ASSERT(eg_limiter_take(l, "p", "basic:b", 2, 3600, s + 1000, &retry));
    CU_ASSERT(eg_limiter_take(l, "q", "basic:a", 2, 3600, s + 1000, &retry));
    /* the window's last second, then the next window */
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "basic:a", 2, 3600, s + 3599, &retry));
    CU_ASSERT_EQUAL(retry, 1);
    CU_ASSERT(eg_limiter_take(l, "p", "basic:a", 2, 3600, s + 3600, &retry));
    CU_ASSERT(eg_limiter_take(l, "p", "basic:a", 2, 3600, s + 3601, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "basic:a", 2, 3600, s + 3602, &retry));
    CU_ASSERT_EQUAL(retry, 3598);
    eg_limiter_free(l);
}

/* Windows follow each other at a phase of the key's own, the same in every process. */
static void test_windows_have_a_phase_per_key(void)
{
    time_t a = eg_limiter_window_start("p", "basic:a", 86400, 1800000000);
    bool differ = false;
    char who[32];

    CU_ASSERT_EQUAL(eg_limiter_window_start("p", "basic:a", 86400, a), a);
    CU_ASSERT_EQUAL(eg_limiter_window_start("p", "basic:a", 86400, a + 86399), a);
    CU_ASSERT_EQUAL(eg_limiter_window_start("p", "basic:a", 86400, a + 86400), a + 86400);
    CU_ASSERT_EQUAL(eg_limiter_window_start("p", "basic:a", 86400, a - 1), a - 86400);
    for (int i = 0; i < 16 && !differ; i++) {
        snprintf(who, sizeof(who), "basic:d%d", i);
        differ = eg_limiter_window_start("p", who, 86400, 1800000000) != a;
    }
    CU_ASSERT(differ); /* not every principal's day turns over at once */
}

/* A slot taken for an issuance that failed is given back; not into a window that ended. */
static void test_give_back(void)
{
    eg_limiter *l = eg_limiter_new();
    time_t s = eg_limiter_window_start("p", "cert:ab", 60, 100000);
    unsigned retry = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT(eg_limiter_take(l, "p", "cert:ab", 1, 60, s, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "cert:ab", 1, 60, s + 1, &retry));
    eg_limiter_give_back(l, "p", "cert:ab", s + 2);
    CU_ASSERT(eg_limiter_take(l, "p", "cert:ab", 1, 60, s + 3, &retry));
    eg_limiter_give_back(l, "p", "cert:ab", s + 100); /* that window ended at s + 60 */
    eg_limiter_give_back(l, "p", "nobody", s + 100);  /* nothing taken */
    CU_ASSERT(eg_limiter_take(l, "p", "cert:ab", 1, 60, s + 120, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "cert:ab", 1, 60, s + 121, &retry));
    eg_limiter_free(l);
}

/* A reload that shortens the period: the key's window has the new length at once. */
static void test_a_shorter_period_applies_at_once(void)
{
    eg_limiter *l = eg_limiter_new();
    time_t t = 2000000000;
    unsigned retry = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT(eg_limiter_take(l, "p", "basic:r", 2, 86400, t, &retry));
    CU_ASSERT(eg_limiter_take(l, "p", "basic:r", 2, 86400, t, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "basic:r", 2, 86400, t + 1, &retry));
    /* 2/day became 2/minute: a minute later the next minute's window has room */
    t = eg_limiter_window_start("p", "basic:r", 60, t + 61);
    CU_ASSERT(eg_limiter_take(l, "p", "basic:r", 2, 60, t, &retry));
    CU_ASSERT(eg_limiter_take(l, "p", "basic:r", 2, 60, t + 1, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "basic:r", 2, 60, t + 2, &retry));
    CU_ASSERT_EQUAL(retry, 58);
    eg_limiter_free(l);
}

/* Keys differ by where the profile ends: "ab"+"c" is not "a"+"bc". */
static void test_keys_do_not_run_together(void)
{
    eg_limiter *l = eg_limiter_new();
    unsigned retry = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT(eg_limiter_take(l, "ab", "c", 1, 60, 1, &retry));
    CU_ASSERT(eg_limiter_take(l, "a", "bc", 1, 60, 1, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "ab", "c", 1, 60, 2, &retry));
    eg_limiter_free(l);
}

/* Ended windows are dropped as their bucket is passed, so many one-off principals do not pile
   up; 100,000 of them in turn, each window ended before the next batch, leave room for more. */
static void test_ended_windows_are_dropped(void)
{
    eg_limiter *l = eg_limiter_new();
    unsigned retry = 0;
    char who[32];
    bool all = true;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 100000; i++) {
            snprintf(who, sizeof(who), "basic:r%d-%d", round, i);
            all = eg_limiter_take(l, "p", who, 1, 10, 100 * round, &retry) && all;
        }
    }
    CU_ASSERT(all);
    eg_limiter_free(l);
}

typedef struct racer {
    eg_limiter *l;
    int taken;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    unsigned retry;

    for (int i = 0; i < 1000; i++)
        r->taken += eg_limiter_take(r->l, "p", "basic:shared", 500, 3600, 1, &retry);
    return NULL;
}

/* Eight threads at once take exactly the limit between them. */
static void test_threads_take_exactly_the_limit(void)
{
    racer r[8];
    pthread_t t[8];
    eg_limiter *l = eg_limiter_new();
    int total = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    for (int i = 0; i < 8; i++) {
        r[i] = (racer){.l = l};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, race, &r[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        total += r[i].taken;
    }
    CU_ASSERT_EQUAL(total, 500);
    eg_limiter_free(l);
}

/*
 * Seeding counts past issuances that fall in the running window, as take counted them, and never
 * refuses: a restart changes no count. The review's case: 2 a minute, issued at 0, 40, 60, 61 of
 * one timeline; after a restart at 62 the next two are refused, as without one.
 */
static void test_seed_counts_as_take_did(void)
{
    eg_limiter *live = eg_limiter_new(), *restarted = eg_limiter_new();
    time_t s = eg_limiter_window_start("p", "basic:a", 60, 1000000), at[4];
    unsigned retry = 0, retry2 = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(live);
    CU_ASSERT_PTR_NOT_NULL_FATAL(restarted);
    at[0] = s - 60, at[1] = s - 20, at[2] = s, at[3] = s + 1;
    for (int i = 0; i < 4; i++)
        CU_ASSERT(eg_limiter_take(live, "p", "basic:a", 2, 60, at[i], &retry));
    for (int i = 0; i < 4; i++)
        eg_limiter_seed(restarted, "p", "basic:a", 60, at[i], s + 2);
    CU_ASSERT_FALSE(eg_limiter_take(live, "p", "basic:a", 2, 60, s + 40, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(restarted, "p", "basic:a", 2, 60, s + 40, &retry2));
    CU_ASSERT_EQUAL(retry, 20);
    CU_ASSERT_EQUAL(retry2, 20);
    CU_ASSERT(eg_limiter_take(restarted, "p", "basic:a", 2, 60, s + 60, &retry2));
    /* One issued "later" than now (the clock was set back since): counted now, not for longer. */
    eg_limiter_seed(restarted, "p", "renewal:CN=x", 60, s + 86400, s + 100);
    CU_ASSERT(eg_limiter_take(restarted, "p", "renewal:CN=x", 2, 60, s + 100, &retry2));
    CU_ASSERT_FALSE(eg_limiter_take(restarted, "p", "renewal:CN=x", 2, 60, s + 100, &retry2));
    CU_ASSERT(retry2 <= 60);
    eg_limiter_free(live);
    eg_limiter_free(restarted);
}

static CU_TestInfo tests[] = {
    {"a window counts, refuses with the wait, and ends", test_window_counts_and_ends},
    {"windows have a phase per key", test_windows_have_a_phase_per_key},
    {"a failed issuance gives its slot back", test_give_back},
    {"a shorter period applies at once", test_a_shorter_period_applies_at_once},
    {"keys do not run together", test_keys_do_not_run_together},
    {"ended windows are dropped", test_ended_windows_are_dropped},
    {"threads take exactly the limit", test_threads_take_exactly_the_limit},
    {"seeding counts as take did", test_seed_counts_as_take_did},
    CU_TEST_INFO_NULL,
};

int main(void)
{
    return eg_cu_run("appliance/limit", NULL, NULL, tests);
}
