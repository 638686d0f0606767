/*
 * The IPv6 relay on real sockets: a TCP server on 127.0.0.1 stands where
 * civetweb would, clients connect over [::1]. Bytes arrive whole both ways
 * (a megabyte each, so that both buffers fill), a half-close still gets its
 * answer, the relay names each connection's device, waits for room past its
 * limit, stops with connections open, and closes a device's connection when
 * nothing listens where it relays.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "cu_run.h"
#include "relay.h"

#define MB (1024 * 1024)

static int server_fd = -1;
static unsigned server_port;

/* A listening socket on 127.0.0.1 (port 0: a free one); its port into *port. */
static int listen_v4(unsigned *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        return -1;
    *port = ntohs(sa.sin_port);
    return fd;
}

/* A client of [::1]:port, with a 10 s receive timeout (a relay that loses bytes fails) and a
   receive buffer of rcvbuf octets (0: the default). */
static int connect_v6(unsigned port, int rcvbuf)
{
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = 10};
    int fd = socket(AF_INET6, SOCK_STREAM, 0);

    sa.sin6_addr = in6addr_loopback;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) != 0) ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* The server side of one connection, accepted: its fd and the peer's port (the relay's leg). */
static int accept_one(unsigned *peer_port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    struct timeval tv = {.tv_sec = 10};
    int fd = accept(server_fd, (struct sockaddr *)&sa, &len);

    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    *peer_port = fd >= 0 ? ntohs(sa.sin_port) : 0;
    return fd;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    ssize_t w;

    while (n > 0) {
        if ((w = send(fd, p, n, MSG_NOSIGNAL)) <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads until EOF (or cap); the count. */
static size_t read_to_end(int fd, unsigned char *p, size_t cap)
{
    size_t got = 0;
    ssize_t r;

    while (got < cap && (r = recv(fd, p + got, cap - got, 0)) > 0)
        got += (size_t)r;
    return got;
}

typedef struct writer {
    int fd;
    const unsigned char *data;
    size_t len;
    bool shut; /* shutdown(SHUT_WR) after */
    int rc;
} writer;

static void *write_run(void *arg)
{
    writer *w = arg;

    w->rc = write_all(w->fd, w->data, w->len);
    if (w->shut)
        shutdown(w->fd, SHUT_WR);
    return NULL;
}

static unsigned char *pattern(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n);

    for (size_t i = 0; p != NULL && i < n; i++)
        p[i] = (unsigned char)((i * 131u + seed) >> 3);
    return p;
}

/* A relay to the server (max connections, idle_ms), with one device connected: its socket in
 *c, the server's side in *s, the relay's loopback port in *leg. NULL if any step fails. */
static eg_relay *relay_with_device(unsigned max, unsigned idle_ms, int rcvbuf, int *c, int *s,
                                   unsigned *leg)
{
    char why[128];
    eg_relay *r = NULL;

    *c = *s = -1;
    if (eg_relay_start("::1", 0, server_port, max, idle_ms, &r, why, sizeof(why)) != 0) {
        fprintf(stderr, "relay: %s\n", why);
        return NULL;
    }
    if ((*c = connect_v6(eg_relay_port(r), rcvbuf)) < 0 || (*s = accept_one(leg)) < 0) {
        if (*c >= 0)
            close(*c);
        eg_relay_stop(r);
        return NULL;
    }
    return r;
}

static int suite_init(void)
{
    return (server_fd = listen_v4(&server_port)) < 0 ? -1 : 0;
}

static int suite_clean(void)
{
    if (server_fd >= 0)
        close(server_fd);
    return 0;
}

/*
 * n octets each way at once, each side writing while the other reads only its own direction
 * first: the server's side reads the device's whole megabyte before the device reads anything,
 * so the relay must keep moving bytes one way while the other way waits, also when the device
 * reads through a small buffer and the bytes to it are more than the kernel's buffers hold.
 * Each side half-closes after writing. The relay names the device: [::1] and its port.
 */
static void bytes_both_ways(int rcvbuf, size_t n)
{
    unsigned char *up = pattern(n, 1), *down = pattern(n, 2), *got_up = malloc(n + 1),
                  *got_down = malloc(n + 1);
    char addr[64];
    struct sockaddr_in6 me;
    socklen_t len = sizeof(me);
    unsigned leg_port = 0, dev_port = 0;
    pthread_t t1, t2;
    int c, s;
    eg_relay *r = relay_with_device(4, 60000, rcvbuf, &c, &s, &leg_port);

    CU_ASSERT_FATAL(up && down && got_up && got_down && r != NULL);
    CU_ASSERT_EQUAL(getsockname(c, (struct sockaddr *)&me, &len), 0);
    CU_ASSERT_TRUE(eg_relay_peer(r, server_port, leg_port, addr, sizeof(addr), &dev_port));
    CU_ASSERT_STRING_EQUAL(addr, "::1");
    CU_ASSERT_EQUAL(dev_port, ntohs(me.sin6_port));
    CU_ASSERT_FALSE(eg_relay_peer(r, server_port, leg_port + 1, addr, sizeof(addr), &dev_port));
    CU_ASSERT_FALSE(eg_relay_peer(r, server_port + 1, leg_port, addr, sizeof(addr), &dev_port));

    writer wc = {c, up, n, true, -1}, ws = {s, down, n, true, -1};

    pthread_create(&t1, NULL, write_run, &wc);
    pthread_create(&t2, NULL, write_run, &ws);
    CU_ASSERT_EQUAL(read_to_end(s, got_up, n + 1), n);
    CU_ASSERT_EQUAL(read_to_end(c, got_down, n + 1), n);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CU_ASSERT_EQUAL(wc.rc, 0);
    CU_ASSERT_EQUAL(ws.rc, 0);
    CU_ASSERT_EQUAL(memcmp(got_up, up, n), 0);
    CU_ASSERT_EQUAL(memcmp(got_down, down, n), 0);
    close(c);
    close(s);
    eg_relay_stop(r);
    free(up);
    free(down);
    free(got_up);
    free(got_down);
}

static void test_bytes_arrive_whole_both_ways(void)
{
    bytes_both_ways(0, MB);
}

static void test_a_slow_reader_does_not_stop_the_other_way(void)
{
    bytes_both_ways(4096, 16 * MB); /* more than the kernel buffers on the way hold */
}

/* A device that half-closes after its request still gets the whole answer. */
static void test_half_close_gets_its_answer(void)
{
    unsigned char buf[64];
    unsigned leg;
    int c, s;
    eg_relay *r = relay_with_device(4, 60000, 0, &c, &s, &leg);

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(write_all(c, (const unsigned char *)"ask", 3), 0);
    shutdown(c, SHUT_WR);
    CU_ASSERT_EQUAL(read_to_end(s, buf, sizeof(buf)), 3); /* the request, then its end */
    CU_ASSERT_EQUAL(write_all(s, (const unsigned char *)"answer", 6), 0);
    close(s);
    CU_ASSERT_EQUAL(read_to_end(c, buf, sizeof(buf)), 6);
    CU_ASSERT_EQUAL(memcmp(buf, "answer", 6), 0);
    close(c);
    eg_relay_stop(r);
}

/* Past max connections, the next waits in the listen queue until one ends; then it is relayed. */
static void test_connections_past_the_limit_wait(void)
{
    unsigned char buf[8];
    unsigned leg1, leg2;
    int c1, c2, s1, s2;
    eg_relay *r = relay_with_device(1, 60000, 0, &c1, &s1, &leg1);

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_FATAL((c2 = connect_v6(eg_relay_port(r), 0)) >= 0); /* the kernel's queue takes it */
    CU_ASSERT_EQUAL(write_all(c2, (const unsigned char *)"2", 1), 0);
    usleep(200000);
    /* Not relayed yet: nothing waits at the server. */
    {
        struct timeval tv = {0, 100000};
        fd_set rd;

        FD_ZERO(&rd);
        FD_SET(server_fd, &rd);
        CU_ASSERT_EQUAL(select(server_fd + 1, &rd, NULL, NULL, &tv), 0);
    }
    close(c1);
    CU_ASSERT_EQUAL(read_to_end(s1, buf, sizeof(buf)), 0);
    close(s1);
    CU_ASSERT_FATAL((s2 = accept_one(&leg2)) >= 0);
    CU_ASSERT_EQUAL(recv(s2, buf, 1, 0), 1);
    CU_ASSERT_EQUAL(buf[0], '2');
    close(c2);
    close(s2);
    eg_relay_stop(r);
}

/* Milliseconds for n one-octet round trips from c through the relay to s and back. */
static long round_trips_ms(int c, int s, int n)
{
    struct timespec t0, t1;
    unsigned char b;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        if (send(c, "x", 1, MSG_NOSIGNAL) != 1 || recv(s, &b, 1, 0) != 1 ||
            send(s, &b, 1, MSG_NOSIGNAL) != 1 || recv(c, &b, 1, 0) != 1)
            return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
}

/*
 * Out of descriptors, a device that cannot be accepted waits in the listen queue while the open
 * connections go on at full speed (the relay once slept 100 ms per try, for every connection);
 * once descriptors are free again it is relayed.
 */
static void test_out_of_descriptors_holds_up_no_one(void)
{
    struct rlimit was, tight;
    struct pollfd pf = {.events = POLLIN};
    unsigned char buf[8];
    unsigned leg, leg2;
    int c, s, c2, s2, fill[256], nfill = 0;
    long ms;
    eg_relay *r = relay_with_device(4, 60000, 0, &c, &s, &leg);

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_FATAL((c2 = socket(AF_INET6, SOCK_STREAM, 0)) >= 0);
    CU_ASSERT_EQUAL_FATAL(getrlimit(RLIMIT_NOFILE, &was), 0);
    tight = was;
    tight.rlim_cur = (rlim_t)c2 + 1; /* the newest descriptor is the last one allowed */
    CU_ASSERT_EQUAL_FATAL(setrlimit(RLIMIT_NOFILE, &tight), 0);
    /* and the ones below it that earlier tests closed are taken too */
    while (nfill < 256 && (fill[nfill] = dup(0)) >= 0)
        nfill++;
    {
        struct sockaddr_in6 sa = {.sin6_family = AF_INET6,
                                  .sin6_port = htons((uint16_t)eg_relay_port(r))};

        sa.sin6_addr = in6addr_loopback;
        CU_ASSERT_EQUAL(connect(c2, (struct sockaddr *)&sa, sizeof(sa)), 0); /* queued */
    }
    usleep(100000); /* the relay has tried to accept it by now */
    ms = round_trips_ms(c, s, 20);
    CU_ASSERT(ms >= 0 && ms < 500);
    if (ms < 0 || ms >= 500)
        printf("\n  20 round trips took %ld ms while out of descriptors\n", ms);
    while (nfill > 0)
        close(fill[--nfill]);
    CU_ASSERT_EQUAL(setrlimit(RLIMIT_NOFILE, &was), 0);
    /* within a tick the relay listens again and takes it */
    CU_ASSERT_EQUAL(write_all(c2, (const unsigned char *)"2", 1), 0);
    pf.fd = server_fd;
    CU_ASSERT_FATAL(poll(&pf, 1, 5000) == 1);
    CU_ASSERT_FATAL((s2 = accept_one(&leg2)) >= 0);
    CU_ASSERT_EQUAL(recv(s2, buf, 1, 0), 1);
    CU_ASSERT_EQUAL(buf[0], '2');
    close(c2);
    close(s2);
    close(c);
    close(s);
    eg_relay_stop(r);
}

/* Stopping with a connection open closes it at once: the device sees the end. */
static void test_stop_closes_open_connections(void)
{
    unsigned char buf[8];
    unsigned leg;
    struct timespec t0, t1;
    int c, s;
    eg_relay *r = relay_with_device(4, 60000, 0, &c, &s, &leg);

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    eg_relay_stop(r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CU_ASSERT(t1.tv_sec - t0.tv_sec < 2);
    CU_ASSERT(recv(c, buf, sizeof(buf), 0) <= 0);
    CU_ASSERT_EQUAL(read_to_end(s, buf, sizeof(buf)), 0);
    close(c);
    close(s);
}

/* A connection that moves nothing for idle_ms is closed. */
static void test_idle_connection_closed(void)
{
    unsigned char buf[8];
    unsigned leg;
    int c, s;
    eg_relay *r = relay_with_device(4, 300, 0, &c, &s, &leg);

    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(read_to_end(s, buf, sizeof(buf)), 0); /* within the 10 s receive timeout */
    CU_ASSERT(recv(c, buf, sizeof(buf), 0) <= 0);
    close(c);
    close(s);
    eg_relay_stop(r);
}

/*
 * Nothing listens where the relay sends (civetweb gone): the device's connection is closed at
 * once, not left open until it is idle.
 */
static void test_refused_target_closes_the_device(void)
{
    char why[128];
    unsigned char buf[8];
    unsigned dead_port;
    int fd = listen_v4(&dead_port), c;
    eg_relay *r = NULL;

    CU_ASSERT_FATAL(fd >= 0);
    close(fd); /* the port is free again: connecting to it is refused */
    CU_ASSERT_EQUAL_FATAL(eg_relay_start("::1", 0, dead_port, 4, 60000, &r, why, sizeof(why)), 0);
    CU_ASSERT_FATAL((c = connect_v6(eg_relay_port(r), 0)) >= 0);
    /* 0: closed by the relay; a receive timeout (10 s) would be -1 */
    CU_ASSERT_EQUAL(recv(c, buf, sizeof(buf), 0), 0);
    close(c);
    eg_relay_stop(r);
}

static void test_bad_address_refused(void)
{
    char why[128];
    eg_relay *r = NULL;

    CU_ASSERT_EQUAL(eg_relay_start("10.0.0.1", 0, server_port, 4, 1000, &r, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "is not an IPv6 address"));
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"a megabyte each way arrives whole; the device is named",
         test_bytes_arrive_whole_both_ways},
        {"a device reading through a small buffer does not stop the other way",
         test_a_slow_reader_does_not_stop_the_other_way},
        {"a half-closed request gets its whole answer", test_half_close_gets_its_answer},
        {"connections past the limit wait their turn", test_connections_past_the_limit_wait},
        {"out of descriptors, a waiting device holds up no one, then is relayed",
         test_out_of_descriptors_holds_up_no_one},
        {"stopping closes open connections", test_stop_closes_open_connections},
        {"an idle connection is closed", test_idle_connection_closed},
        {"a refused target closes the device's connection", test_refused_target_closes_the_device},
        {"an address that is not IPv6 is refused", test_bad_address_refused},
        CU_TEST_INFO_NULL,
    };

    return eg_cu_run("web/relay", suite_init, suite_clean, tests);
}
