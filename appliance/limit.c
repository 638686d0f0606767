/* Per-principal issuance limits (limit.h): a chained hash table of aligned fixed windows. */
#include "limit.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#define BUCKETS 4096
/* About 55 MB at the longest principal and profile names; far more devices than enroll in one
   window. */
#define MAX_ENTRIES 200000

typedef struct entry {
    struct entry *next;
    time_t start; /* the window's start (eg_limiter_window_start) */
    time_t end;   /* its end, at the length it had when it began: the entry may go then */
    unsigned used;
    char key[]; /* profile NUL principal NUL */
} entry;

struct eg_limiter {
    pthread_mutex_t lock;
    uint64_t seed; /* so that nobody can choose principals that share a bucket */
    size_t n;
    bool said_full;
    entry *b[BUCKETS];
};

eg_limiter *eg_limiter_new(void)
{
    eg_limiter *l = calloc(1, sizeof(*l));

    if (l == NULL || pthread_mutex_init(&l->lock, NULL) != 0 ||
        RAND_bytes((unsigned char *)&l->seed, sizeof(l->seed)) != 1) {
        free(l);
        return NULL;
    }
    return l;
}

void eg_limiter_free(eg_limiter *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < BUCKETS; i++) {
        for (entry *e = l->b[i], *next; e != NULL; e = next) {
            next = e->next;
            free(e);
        }
    }
    pthread_mutex_destroy(&l->lock);
    free(l);
}

/* FNV-1a from h over the key: both strings with their NULs. */
static uint64_t fnv1a(uint64_t h, const char *profile, const char *principal)
{
    for (const char *s = profile;; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211u;
        if (*s == '\0')
            break;
    }
    for (const char *s = principal;; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211u;
        if (*s == '\0')
            break;
    }
    return h;
}

#define FNV_BASIS 14695981039346656037u

/* Seeded, so that nobody can choose principals that share a bucket. */
static size_t bucket(const eg_limiter *l, const char *profile, const char *principal)
{
    return (size_t)(fnv1a(FNV_BASIS ^ l->seed, profile, principal) % BUCKETS);
}

time_t eg_limiter_window_start(const char *profile, const char *principal, unsigned window_s,
                               time_t t)
{
    time_t w = window_s > 0 ? (time_t)window_s : 1;
    /* Unseeded: the same phase in every process, and after a restart. */
    time_t phase = (time_t)(fnv1a(FNV_BASIS, profile, principal) % (uint64_t)w);
    time_t off = (t - phase) % w;

    return t - (off < 0 ? off + w : off);
}

static bool same(const entry *e, const char *profile, const char *principal)
{
    size_t pl = strlen(profile);

    return strcmp(e->key, profile) == 0 && strcmp(e->key + pl + 1, principal) == 0;
}

/* The entry for the key in bucket i, dropping the bucket's ended windows on the way. */
static entry *find(eg_limiter *l, size_t i, const char *profile, const char *principal, time_t now)
{
    entry **pp = &l->b[i], *found = NULL;

    while (*pp != NULL) {
        entry *e = *pp;

        if (same(e, profile, principal)) {
            found = e;
            pp = &e->next;
        } else if (now >= e->end) {
            *pp = e->next;
            free(e);
            l->n--;
        } else {
            pp = &e->next;
        }
    }
    return found;
}

/*
 * The entry of the key, counting from zero when its window is not the one that holds now (it
 * ended, or a reload changed the window's length); NULL when the table is full (said once).
 * Called with the lock held.
 */
static entry *entry_now(eg_limiter *l, const char *profile, const char *principal,
                        unsigned window_s, time_t now)
{
    size_t i = bucket(l, profile, principal), pl = strlen(profile), ql = strlen(principal);
    time_t start = eg_limiter_window_start(profile, principal, window_s, now);
    entry *e;

    if ((e = find(l, i, profile, principal, now)) != NULL && e->start != start) {
        e->start = start;
        e->end = start + (time_t)window_s;
        e->used = 0;
    }
    if (e == NULL) {
        if (l->n >= MAX_ENTRIES || (e = malloc(sizeof(*e) + pl + ql + 2)) == NULL) {
            if (!l->said_full)
                fprintf(stderr,
                        "estgated: issue_limit: more principals than it can count at "
                        "once (%d); the ones past that are not limited\n",
                        MAX_ENTRIES);
            l->said_full = true;
            return NULL;
        }
        memcpy(e->key, profile, pl + 1);
        memcpy(e->key + pl + 1, principal, ql + 1);
        e->start = start;
        e->end = start + (time_t)window_s;
        e->used = 0;
        e->next = l->b[i];
        l->b[i] = e;
        l->n++;
    }
    return e;
}

bool eg_limiter_take(eg_limiter *l, const char *profile, const char *principal, unsigned count,
                     unsigned window_s, time_t now, unsigned *retry_after)
{
    bool ok = true;
    entry *e;

    pthread_mutex_lock(&l->lock);
    if ((e = entry_now(l, profile, principal, window_s, now)) != NULL) {
        if (e->used >= count) {
            *retry_after = (unsigned)(e->start + (time_t)window_s - now);
            ok = false;
        } else {
            e->used++;
        }
    }
    pthread_mutex_unlock(&l->lock);
    return ok;
}

void eg_limiter_seed(eg_limiter *l, const char *profile, const char *principal, unsigned window_s,
                     time_t at, time_t now)
{
    entry *e;

    if (at > now)
        at = now; /* the clock was set back since: count it now rather than lock out for longer */
    if (eg_limiter_window_start(profile, principal, window_s, at) !=
        eg_limiter_window_start(profile, principal, window_s, now))
        return; /* its window has ended */
    pthread_mutex_lock(&l->lock);
    if ((e = entry_now(l, profile, principal, window_s, now)) != NULL)
        e->used++;
    pthread_mutex_unlock(&l->lock);
}

void eg_limiter_give_back(eg_limiter *l, const char *profile, const char *principal, time_t now)
{
    entry *e;

    pthread_mutex_lock(&l->lock);
    e = find(l, bucket(l, profile, principal), profile, principal, now);
    if (e != NULL && now < e->end && e->used > 0)
        e->used--;
    pthread_mutex_unlock(&l->lock);
}
