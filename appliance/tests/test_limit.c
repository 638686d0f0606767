/* Per-principal issuance limits (appliance/limit.c), with the clock given by the test. */
#include <pthread.h>
#include <stdio.h>

#include <CUnit/CUnit.h>

#include "cu_run.h"
#include "limit.h"

static void test_window_counts_and_ends(void)
{
    eg_limiter *l = eg_limiter_new();
    unsigned retry = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT(eg_limiter_take(l, "p", "basic:a", 2, 3600, 1000, &retry));
    CU_ASSERT(eg_limiter_take(l, "p", "basic:a", 2, 3600, 1500, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "basic:a", 2, 3600, 2000, &retry));
    CU_ASSERT_EQUAL(retry, 2600); /* the window began at the first, at 1000 */
    /* others have their own counts: another principal, the same one on another profile */
    CU_ASSERT(eg_limiter_take(l, "p", "basic:b", 2, 3600, 2000, &retry));
    CU_ASSERT(eg_limiter_take(l, "q", "basic:a", 2, 3600, 2000, &retry));
    /* the window's last second, then a new window */
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "basic:a", 2, 3600, 4599, &retry));
    CU_ASSERT_EQUAL(retry, 1);
    CU_ASSERT(eg_limiter_take(l, "p", "basic:a", 2, 3600, 4600, &retry));
    CU_ASSERT(eg_limiter_take(l, "p", "basic:a", 2, 3600, 4601, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "basic:a", 2, 3600, 4602, &retry));
    CU_ASSERT_EQUAL(retry, 3598);
    eg_limiter_free(l);
}

/* A slot taken for an issuance that failed is given back; not into a window that ended. */
static void test_give_back(void)
{
    eg_limiter *l = eg_limiter_new();
    unsigned retry = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT(eg_limiter_take(l, "p", "cert:ab", 1, 60, 100, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "cert:ab", 1, 60, 101, &retry));
    eg_limiter_give_back(l, "p", "cert:ab", 102);
    CU_ASSERT(eg_limiter_take(l, "p", "cert:ab", 1, 60, 103, &retry));
    eg_limiter_give_back(l, "p", "cert:ab", 200); /* that window ended at 160 */
    eg_limiter_give_back(l, "p", "nobody", 200);  /* nothing taken */
    CU_ASSERT(eg_limiter_take(l, "p", "cert:ab", 1, 60, 200, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "cert:ab", 1, 60, 201, &retry));
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

/* Seeding counts past issuances in the windows they fell into, as take did, and never refuses. */
static void test_seed_counts_as_take_did(void)
{
    eg_limiter *l = eg_limiter_new();
    unsigned retry = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    /* A window that ended before now (1000..4600): forgotten by the next one. */
    eg_limiter_seed(l, "p", "basic:a", 3600, 1000);
    eg_limiter_seed(l, "p", "basic:a", 3600, 1200);
    /* The running window began at 5000 and holds three, one more than the limit allows now. */
    eg_limiter_seed(l, "p", "basic:a", 3600, 5000);
    eg_limiter_seed(l, "p", "basic:a", 3600, 5100);
    eg_limiter_seed(l, "p", "basic:a", 3600, 5200);
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "basic:a", 2, 3600, 6000, &retry));
    CU_ASSERT_EQUAL(retry, 2600);
    /* One seeded in its window leaves one of two. */
    eg_limiter_seed(l, "p", "renewal:CN=x", 3600, 5500);
    CU_ASSERT(eg_limiter_take(l, "p", "renewal:CN=x", 2, 3600, 6000, &retry));
    CU_ASSERT_FALSE(eg_limiter_take(l, "p", "renewal:CN=x", 2, 3600, 6000, &retry));
    CU_ASSERT_EQUAL(retry, 3100);
    eg_limiter_free(l);
}

static CU_TestInfo tests[] = {
    {"a window counts, refuses with the wait, and ends", test_window_counts_and_ends},
    {"a failed issuance gives its slot back", test_give_back},
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
