/*
 * Issuances per second through the ledger: begin_issue + complete_issue with
 * a 1 KiB certificate, durable on return, with 1, 2, 8 and 32 threads on a
 * fresh database each. commits/s shows the group commit at work: without it
 * issuances/s could not pass half the disk's fsync rate, measured first. CPU
 * us/issuance is the whole process's user and system time (callers and the
 * writer thread) per issuance.
 *
 * usage: bench_ledger [directory] [seconds per run]
 *   directory: where the databases go (default /var/tmp); a fresh
 *   subdirectory is made there and removed afterwards.
 */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "issue.h"
#include "ledger.h"
#include "tmpdir.h"

#define CERT_LEN 1024

struct run {
    eg_ledger *lg;
    atomic_int stop;
};

struct worker {
    struct run *run;
    uint32_t index;
    unsigned long issued;
    int failed;
};

/* splitmix64: cheap, and distinct outputs for distinct inputs. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

/*
 * Serials come from estgated's own generator (time first, then random bits).
 * Request hashes are random in service, so each insert lands on a different
 * leaf of their index; counting ones would touch one leaf.
 */
static int issue_one(eg_ledger *lg, uint32_t thread, uint32_t n, const uint8_t *cert)
{
    uint8_t serial[EG_SERIAL_LEN];
    char principal[32];
    eg_issue_intent in = {.profile = "bench", .principal = principal, .subject = "CN=bench"};
    eg_intent_result res;
    uint64_t a = mix(((uint64_t)thread << 32) | n), b = mix(a);

    if (eg_issue_serial(serial) != 0)
        return -1;
    for (size_t i = 0; i < sizeof(in.request_hash); i++)
        in.request_hash[i] = (uint8_t)((i < 16 ? a : b) >> (8 * (i % 8)) ^ i);
    snprintf(principal, sizeof(principal), "device-%u", thread);
    in.serial = serial;
    in.serial_len = sizeof(serial);
    in.not_after = 2000000000;
    if (eg_ledger_begin_issue(lg, &in, &res) != 0 || res.state != EG_INTENT_NEW)
        return -1;
    return eg_ledger_complete_issue(lg, res.id, cert, CERT_LEN);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint8_t cert[CERT_LEN];

    for (size_t i = 0; i < sizeof(cert); i++)
        cert[i] = (uint8_t)(i * 7 + w->index);
    while (!atomic_load(&w->run->stop)) {
        if (issue_one(w->run->lg, w->index, (uint32_t)w->issued, cert) != 0) {
            w->failed = 1;
            break;
        }
        w->issued++;
    }
    return NULL;
}

/* User plus system CPU seconds of the whole process (workers and the ledger's writer). */
static double cpu_s(const struct rusage *ru)
{
    return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec * 1e-6 +
           (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec * 1e-6;
}

/* One row of the table; -1 if anything failed. */
static int bench_threads(const char *dir, unsigned threads, double seconds)
{
    char path[PATH_MAX + 32];
    struct run run = {0};
    struct worker *w = calloc(threads, sizeof(*w));
    pthread_t *t = calloc(threads, sizeof(*t));
    eg_ledger_stats st0, st1;
    struct rusage ru0, ru1;
    unsigned long issued = 0;
    unsigned started = 0;
    int rc = -1, failed = 0;
    double t0, elapsed;

    snprintf(path, sizeof(path), "%s/bench-%u.db", dir, threads);
    if (w == NULL || t == NULL || eg_ledger_open(path, NULL, &run.lg) != 0)
        goto out;
    eg_ledger_get_stats(run.lg, &st0);
    getrusage(RUSAGE_SELF, &ru0);
    t0 = eg_bench_now();
    for (; started < threads; started++) {
        w[started] = (struct worker){.run = &run, .index = started};
        if (pthread_create(&t[started], NULL, worker_main, &w[started]) != 0)
            break;
    }
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&run.stop, 1);
    for (unsigned i = 0; i < started; i++) {
        pthread_join(t[i], NULL);
        issued += w[i].issued;
        failed |= w[i].failed;
    }
    elapsed = eg_bench_now() - t0;
    getrusage(RUSAGE_SELF, &ru1);
    eg_ledger_get_stats(run.lg, &st1);
    if (failed || started < threads)
        goto out;
    printf("| %7u | %11.0f | %9.0f | %10.1f | %10.2f | %9.1f |\n", threads,
           (double)issued / elapsed, (double)(st1.commits - st0.commits) / elapsed,
           (double)(st1.operations - st0.operations) / (double)(st1.commits - st0.commits),
           elapsed * 1e3 * threads / (double)issued,
           (cpu_s(&ru1) - cpu_s(&ru0)) * 1e6 / (double)issued);
    rc = 0;
out:
    eg_ledger_close(run.lg);
    free(w);
    free(t);
    return rc;
}

/* The disk's own rate: 4 KiB appended and fdatasync'd, as a WAL commit does. */
static double fsync_rate(const char *dir)
{
    char path[PATH_MAX + 32], block[4096] = {0};
    unsigned long n = 0;
    double t0, rate = 0;
    int fd;

    snprintf(path, sizeof(path), "%s/fsync-probe", dir);
    if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
        return 0;
    t0 = eg_bench_now();
    while (eg_bench_now() - t0 < 1.0) {
        if (write(fd, block, sizeof(block)) != sizeof(block) || fdatasync(fd) != 0)
            break;
        n++;
    }
    rate = (double)n / (eg_bench_now() - t0);
    close(fd);
    unlink(path);
    return rate;
}

int main(int argc, char **argv)
{
    static const unsigned threads[] = {1, 2, 8, 32};
    char dir[PATH_MAX];
    double seconds = argc > 2 ? atof(argv[2]) : 3.0;
    int rc = 1;

    if (argc > 3 || seconds <= 0) {
        fprintf(stderr, "usage: %s [directory] [seconds per run]\n", argv[0]);
        return 2;
    }
    if (eg_tmpdir_make(dir, sizeof(dir), argc > 1 ? argv[1] : "/var/tmp", "bench_ledger") != 0)
        return 1;
    printf("ledger in %s, %.1f s per run, begin + complete (1 KiB cert) per issuance\n", dir,
           seconds);
    printf("disk: %.0f fsync/s (4 KiB append + fdatasync)\n\n", fsync_rate(dir));
    printf("| threads | issuances/s | commits/s | ops/commit | latency ms | CPU us/issuance |\n");
    printf("|---------|-------------|-----------|------------|------------|-----------------|\n");
    for (size_t i = 0; i < sizeof(threads) / sizeof(threads[0]); i++) {
        if (bench_threads(dir, threads[i], seconds) != 0) {
            fprintf(stderr, "bench: %u threads failed\n", threads[i]);
            goto out;
        }
    }
    rc = 0;
out:
    eg_tmpdir_remove(dir);
    return rc;
}
