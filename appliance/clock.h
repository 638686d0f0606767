/*
 * The monotonic clock, for timers, rate windows and deadlines that setting the
 * wall clock (NTP at boot, an operator) must not move.
 */
#ifndef EG_CLOCK_H
#define EG_CLOCK_H

#include <stdint.h>
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

#endif
