/*
 * The monotonic clock, for timers, rate windows and deadlines that setting the
 * wall clock (NTP at boot, an operator) must not move; and wall-clock times as
 * logs and reasons print them.
 */
#ifndef EG_CLOCK_H
#define EG_CLOCK_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

static inline time_t eg_mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static inline uint64_t eg_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The CLOCK_MONOTONIC time us microseconds from now, for pthread_cond_timedwait on a condition
   made with pthread_condattr_setclock(CLOCK_MONOTONIC). */
static inline struct timespec eg_mono_deadline_us(uint64_t us)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(us / 1000000u);
    ts.tv_nsec += (long)(us % 1000000u) * 1000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* t as "2026-11-24T08:18:52Z" into buf (the seconds since 1970 if it cannot be); buf. */
static inline const char *eg_utc_text(time_t t, char *buf, size_t cap)
{
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, cap, "%lld", (long long)t);
    return buf;
}

#endif
