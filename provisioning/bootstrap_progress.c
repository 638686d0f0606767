/*
 * Progress of a long batch on stderr: a redrawn bar with rate and time left
 * when stderr is a terminal, otherwise a plain line every few seconds (a
 * factory station's log should not fill with carriage returns).
 */
#include <stdio.h>
#include <unistd.h>

#include "bootstrap.h"

#define EG_BS_BAR      30
#define EG_BS_TTY_MS   200
#define EG_BS_PLAIN_MS 5000

static double ms_between(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e3 + (double)(b->tv_nsec - a->tv_nsec) / 1e6;
}

void eg_bs_progress_start(eg_bs_progress *p, size_t total)
{
    p->total = total;
    p->done = 0;
    p->tty = isatty(STDERR_FILENO) == 1;
    clock_gettime(CLOCK_MONOTONIC, &p->start);
    p->last = p->start;
}

static void show(eg_bs_progress *p, const struct timespec *now)
{
    double secs = ms_between(&p->start, now) / 1e3;
    double rate = secs > 0 ? (double)p->done / secs : 0;
    double left = rate > 0 ? (double)(p->total - p->done) / rate : 0;
    size_t fill = p->total ? p->done * EG_BS_BAR / p->total : EG_BS_BAR, i;
    char bar[EG_BS_BAR + 1];

    if (!p->tty) {
        fprintf(stderr, "bootstrap: %zu/%zu devices, %.0f/min, about %.0f s left\n", p->done,
                p->total, rate * 60, left);
        return;
    }
    for (i = 0; i < EG_BS_BAR; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[EG_BS_BAR] = 0;
    fprintf(stderr, "\r[%s] %zu/%zu  %.0f/min  %02d:%02d left ", bar, p->done, p->total, rate * 60,
            (int)left / 60, (int)left % 60);
}

void eg_bs_progress_step(eg_bs_progress *p)
{
    struct timespec now;

    p->done++;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (ms_between(&p->last, &now) < (p->tty ? EG_BS_TTY_MS : EG_BS_PLAIN_MS))
        return;
    p->last = now;
    show(p, &now);
}

void eg_bs_progress_end(eg_bs_progress *p)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    /* Long batches end with a final line; short ones never showed anything. */
    if (ms_between(&p->start, &now) < (p->tty ? EG_BS_TTY_MS : EG_BS_PLAIN_MS))
        return;
    show(p, &now);
    if (p->tty)
        fputc('\n', stderr);
}
