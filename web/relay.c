/*
 * IPv6 listeners through a relay (relay.h). One thread accepts; each relayed
 * connection has a thread of its own that moves bytes both ways with poll(),
 * as civetweb gives each connection a thread on its side. A byte written to
 * the wake pipe at stop makes every poll() return.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "relay.h"

#define RELAY_BUF 16384

/* A relayed connection, by the local port of its loopback leg. */
typedef struct slot {
    bool used;
    unsigned local_port;
    char addr[INET6_ADDRSTRLEN];
    unsigned port;
} slot;

struct eg_relay {
    int lfd;
    int wake[2];
    unsigned port, to, max, idle_ms;
    pthread_t acceptor;
    bool acceptor_started;
    pthread_mutex_t lock;
    pthread_cond_t changed; /* a connection ended, or the relay is stopping */
    unsigned active;
    bool stopping;
    slot *slots;
};

typedef struct pair {
    eg_relay *r;
    int dev, up; /* the device's socket, and the loopback one to civetweb */
    size_t slot;
} pair;

/* The bytes one way: read from `from` into buf, written to `to`. */
typedef struct leg {
    int from, to;
    unsigned char *buf;
    size_t len, off;
    bool eof, done;
} leg;

static void nodelay(int fd)
{
    int one = 1;

    /* Answers go out as one write; Nagle would hold the next until an ACK. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* One step of a leg after poll(): read if readable and empty, write if writable and full.
   -1 when the connection is over. Never blocks, so that one direction waiting can never hold
   the other (poll() reports a socket writable with room for some octets, not all of ours). */
static int leg_step(leg *l, short rev_from, short rev_to)
{
    ssize_t n;

    if (l->len == 0 && !l->eof && (rev_from & (POLLIN | POLLHUP))) {
        n = recv(l->from, l->buf, RELAY_BUF, MSG_DONTWAIT);
        if (n > 0) {
            l->len = (size_t)n;
            l->off = 0;
        } else if (n == 0) {
            l->eof = true;
        } else if (errno != EINTR && errno != EAGAIN) {
            return -1;
        }
    }
    if (l->len > l->off && (rev_to & POLLOUT)) {
        n = send(l->to, l->buf + l->off, l->len - l->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            l->off += (size_t)n;
            if (l->off == l->len)
                l->len = l->off = 0;
        } else if (n < 0 && errno != EINTR && errno != EAGAIN) {
            return -1;
        }
    }
    if (l->eof && l->len == 0 && !l->done) {
        shutdown(l->to, SHUT_WR); /* the other side reads to its end, then answers or closes */
        l->done = true;
    }
    return 0;
}

static void slot_release(eg_relay *r, size_t i);

static void *pair_run(void *arg)
{
    pair *p = arg;
    eg_relay *r = p->r;
    unsigned char *bufs = malloc(2 * RELAY_BUF);
    leg in = {p->dev, p->up, bufs, 0, 0, false, false};
    leg out = {p->up, p->dev, bufs ? bufs + RELAY_BUF : NULL, 0, 0, false, false};
    struct pollfd pf[3];
    size_t mine;
    int n;

    while (bufs != NULL && !(in.done && out.done)) {
        pf[0] = (struct pollfd){p->dev, 0, 0};
        pf[1] = (struct pollfd){p->up, 0, 0};
        pf[2] = (struct pollfd){r->wake[0], POLLIN, 0};
        if (in.len == 0 && !in.eof)
            pf[0].events |= POLLIN;
        if (out.len > out.off)
            pf[0].events |= POLLOUT;
        if (out.len == 0 && !out.eof)
            pf[1].events |= POLLIN;
        if (in.len > in.off)
            pf[1].events |= POLLOUT;
        /* A socket with nothing asked of it is left out: the hang-up it may report (a FIN
           each way, with bytes still to read) would wake poll() again and again. */
        for (int i = 0; i < 2; i++) {
            if (pf[i].events == 0)
                pf[i].fd = -1;
        }
        if ((n = poll(pf, 3, (int)r->idle_ms)) < 0 && errno == EINTR)
            continue;
        /* stopping, idle for too long, or a side reset */
        if (n <= 0 || pf[2].revents != 0 ||
            ((pf[0].revents | pf[1].revents) & (POLLERR | POLLNVAL)))
            break;
        if (leg_step(&in, pf[0].revents, pf[1].revents) != 0 ||
            leg_step(&out, pf[1].revents, pf[0].revents) != 0)
            break;
    }
    free(bufs);
    close(p->dev);
    close(p->up);
    mine = p->slot;
    free(p);
    slot_release(r, mine); /* r may be freed from here on */
    return NULL;
}

static void slot_release(eg_relay *r, size_t i)
{
    pthread_mutex_lock(&r->lock);
    r->slots[i].used = false;
    r->active--;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->lock);
}

/*
 * Connects dev (from sa) to civetweb and starts its thread; closes dev if it cannot. The
 * loopback leg is bound, and its slot filled, before it connects: civetweb can accept it, and
 * a request on it be looked up, only once the slot names the device.
 */
static void pair_start(eg_relay *r, int dev, const struct sockaddr_in6 *sa)
{
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->to)};
    struct sockaddr_in me = {.sin_family = AF_INET};
    socklen_t len = sizeof(me);
    pthread_attr_t attr;
    pair *p = calloc(1, sizeof(*p));
    int up = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool held = false, started = false;
    size_t i;

    to.sin_addr.s_addr = me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (p == NULL || up < 0 || bind(up, (struct sockaddr *)&me, sizeof(me)) != 0 ||
        getsockname(up, (struct sockaddr *)&me, &len) != 0)
        goto out;
    pthread_mutex_lock(&r->lock);
    for (i = 0; i < r->max && r->slots[i].used; i++)
        ;
    if (i < r->max) { /* always: the acceptor waits for room */
        slot *s = &r->slots[i];

        s->used = true;
        s->local_port = ntohs(me.sin_port);
        s->port = ntohs(sa->sin6_port);
        if (inet_ntop(AF_INET6, &sa->sin6_addr, s->addr, sizeof(s->addr)) == NULL)
            snprintf(s->addr, sizeof(s->addr), "::");
        r->active++;
        held = true;
    }
    pthread_mutex_unlock(&r->lock);
    if (!held || connect(up, (struct sockaddr *)&to, sizeof(to)) != 0)
        goto out;
    nodelay(dev);
    nodelay(up);
    *p = (pair){r, dev, up, i};
    if (pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = pthread_create(&(pthread_t){0}, &attr, pair_run, p) == 0;
        pthread_attr_destroy(&attr);
    }
out:
    if (!started) {
        if (held)
            slot_release(r, i);
        free(p);
        if (up >= 0)
            close(up);
        close(dev);
    }
}

static void *acceptor_run(void *arg)
{
    eg_relay *r = arg;
    struct sockaddr_in6 sa;
    socklen_t len;
    struct pollfd pf[2];
    int dev;

    for (;;) {
        pthread_mutex_lock(&r->lock);
        while (r->active >= r->max && !r->stopping)
            pthread_cond_wait(&r->changed, &r->lock); /* the rest wait in the listen queue */
        if (r->stopping) {
            pthread_mutex_unlock(&r->lock);
            return NULL;
        }
        pthread_mutex_unlock(&r->lock);
        pf[0] = (struct pollfd){r->lfd, POLLIN, 0};
        pf[1] = (struct pollfd){r->wake[0], POLLIN, 0};
        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            return NULL;
        if (pf[1].revents != 0)
            return NULL;
        if (!(pf[0].revents & POLLIN))
            continue;
        len = sizeof(sa);
        if ((dev = accept4(r->lfd, (struct sockaddr *)&sa, &len, SOCK_CLOEXEC)) < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL); /* until fds free up */
            continue;
        }
        pair_start(r, dev, &sa);
    }
}

int eg_relay_start(const char *address, unsigned port, unsigned to, unsigned max, unsigned idle_ms,
                   eg_relay **out, char *why, size_t whylen)
{
    eg_relay *r = calloc(1, sizeof(*r));
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    socklen_t len = sizeof(sa);
    int one = 1;

    *out = NULL;
    if (r == NULL)
        return -1;
    r->lfd = r->wake[0] = r->wake[1] = -1;
    r->to = to;
    r->max = max ? max : 1;
    r->idle_ms = idle_ms;
    if (pthread_mutex_init(&r->lock, NULL) != 0) {
        free(r);
        return -1;
    }
    pthread_cond_init(&r->changed, NULL);
    if ((r->slots = calloc(r->max, sizeof(*r->slots))) == NULL || pipe(r->wake) != 0) {
        snprintf(why, whylen, "out of memory");
        goto fail;
    }
    if (inet_pton(AF_INET6, address, &sa.sin6_addr) != 1) {
        snprintf(why, whylen, "%s is not an IPv6 address", address);
        goto fail;
    }
    if ((r->lfd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        setsockopt(r->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        /* IPv6 only: [::] must not take the port from an IPv4 listener's clients */
        setsockopt(r->lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0 ||
        bind(r->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(r->lfd, 128) != 0 ||
        getsockname(r->lfd, (struct sockaddr *)&sa, &len) != 0) {
        snprintf(why, whylen, "cannot listen on [%s]:%u: %s", address, port, strerror(errno));
        goto fail;
    }
    r->port = ntohs(sa.sin6_port);
    if (pthread_create(&r->acceptor, NULL, acceptor_run, r) != 0) {
        snprintf(why, whylen, "cannot start a thread");
        goto fail;
    }
    r->acceptor_started = true;
    *out = r;
    return 0;
fail:
    eg_relay_stop(r);
    return -1;
}

unsigned eg_relay_port(const eg_relay *r)
{
    return r->port;
}

bool eg_relay_peer(eg_relay *r, unsigned server_port, unsigned local_port, char *addr, size_t cap,
                   unsigned *port)
{
    bool found = false;

    if (server_port != r->to)
        return false;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->max && !found; i++) {
        const slot *s = &r->slots[i];

        if (s->used && s->local_port == local_port) {
            snprintf(addr, cap, "%s", s->addr);
            *port = s->port;
            found = true;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return found;
}

void eg_relay_stop(eg_relay *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    r->stopping = true;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->lock);
    if (r->wake[1] >= 0 && write(r->wake[1], "x", 1) < 0)
        perror("relay: wake");
    if (r->acceptor_started)
        pthread_join(r->acceptor, NULL);
    pthread_mutex_lock(&r->lock);
    while (r->active > 0)
        pthread_cond_wait(&r->changed, &r->lock);
    pthread_mutex_unlock(&r->lock);
    if (r->lfd >= 0)
        close(r->lfd);
    for (int i = 0; i < 2; i++) {
        if (r->wake[i] >= 0)
            close(r->wake[i]);
    }
    pthread_cond_destroy(&r->changed);
    pthread_mutex_destroy(&r->lock);
    free(r->slots);
    free(r);
}
