/*
 * IPv6 listeners through a relay (relay.h). One thread does it all with epoll: it accepts, and
 * moves the bytes of every relayed connection both ways. Under load one epoll_wait hands it
 * the ready sockets of many connections, where a thread per connection cost two context
 * switches per request and answer. A byte written to the wake pipe at stop ends the loop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "relay.h"

#define RELAY_BUF  16384
#define MAX_EVENTS 64
#define TICK_MS    1000 /* how often idle connections are looked for */

/* A relayed connection, by the local port of its loopback leg (read by eg_relay_peer). */
typedef struct slot {
    bool used;
    unsigned local_port;
    char addr[INET6_ADDRSTRLEN];
    unsigned port;
} slot;

/* The bytes one way: read from `from` into buf, written to `to`. */
typedef struct leg {
    int from, to;
    unsigned char *buf;
    size_t len, off;
    bool eof, done;
} leg;

typedef struct pair pair;

/* What an epoll event names: one socket of a pair. */
typedef struct end {
    pair *p;
    int side; /* 0: the device's socket, 1: the loopback one to civetweb */
} end;

struct pair {
    int fd[2];
    uint32_t mask[2]; /* the events each socket is registered for; 0: not in the set */
    leg in, out;      /* device to civetweb, and back */
    end ends[2];
    int64_t last_ms; /* when a byte last moved */
    size_t slot;
    bool dead; /* closed in this batch of events; freed after it */
    pair *next_dead;
    unsigned char bufs[2 * RELAY_BUF];
};

struct eg_relay {
    int lfd, ep;
    int wake[2];
    unsigned port, to, max, idle_ms;
    pthread_t thread;
    bool thread_started;
    bool listening;       /* lfd is in the epoll set: fewer than max connections */
    pthread_mutex_t lock; /* slots, for eg_relay_peer */
    slot *slots;
    pair **pairs; /* by slot; the relay thread's own */
    unsigned active;
    pair *dead;
};

static char listen_tag, wake_tag;

static void nodelay(int fd)
{
    int one = 1;

    /* Answers go out as one write; Nagle would hold the next until an ACK. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/*
 * One step of a leg: read if `readable` and the buffer is empty, then write what the buffer
 * holds. -1 when the connection is over. Never blocks, so that one direction waiting can never
 * hold the other; a write that finds no room waits for EPOLLOUT.
 */
static int leg_step(leg *l, bool readable, bool *moved)
{
    ssize_t n;

    if (l->len == 0 && !l->eof && readable) {
        n = recv(l->from, l->buf, RELAY_BUF, MSG_DONTWAIT);
        if (n > 0) {
            l->len = (size_t)n;
            l->off = 0;
            *moved = true;
        } else if (n == 0) {
            l->eof = true;
            *moved = true;
        } else if (errno != EINTR && errno != EAGAIN) {
            return -1;
        }
    }
    if (l->len > l->off) {
        n = send(l->to, l->buf + l->off, l->len - l->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            l->off += (size_t)n;
            if (l->off == l->len)
                l->len = l->off = 0;
            *moved = true;
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

/* Registers socket `side` of p for what its legs wait for; a socket waiting for nothing is
   left out of the set, since epoll reports a hang-up whether asked or not. */
static int watch(eg_relay *r, pair *p, int side)
{
    const leg *reads = side == 0 ? &p->in : &p->out, *writes = side == 0 ? &p->out : &p->in;
    uint32_t want =
        (reads->len == 0 && !reads->eof ? EPOLLIN : 0) | (writes->len > writes->off ? EPOLLOUT : 0);
    struct epoll_event ev = {.events = want, .data.ptr = &p->ends[side]};
    int op = want == 0 ? EPOLL_CTL_DEL : p->mask[side] == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;

    if (want == p->mask[side])
        return 0;
    p->mask[side] = want;
    return epoll_ctl(r->ep, op, p->fd[side], &ev);
}

static void listen_again(eg_relay *r, bool on)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_tag};

    if (on != r->listening &&
        epoll_ctl(r->ep, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, r->lfd, &ev) == 0)
        r->listening = on;
}

/* Closes p's sockets and gives its slot back; p itself is freed after the current batch. */
static void pair_close(eg_relay *r, pair *p)
{
    if (p->dead)
        return;
    p->dead = true;
    for (int i = 0; i < 2; i++)
        close(p->fd[i]); /* which also takes it out of the epoll set */
    pthread_mutex_lock(&r->lock);
    r->slots[p->slot].used = false;
    pthread_mutex_unlock(&r->lock);
    r->pairs[p->slot] = NULL;
    r->active--;
    p->next_dead = r->dead;
    r->dead = p;
    listen_again(r, true);
}

static void pair_event(eg_relay *r, pair *p, int side, uint32_t events)
{
    bool moved = false;

    if (p->dead)
        return;
    if ((events & EPOLLERR) ||
        leg_step(&p->in, side == 0 && (events & (EPOLLIN | EPOLLHUP)), &moved) != 0 ||
        leg_step(&p->out, side == 1 && (events & (EPOLLIN | EPOLLHUP)), &moved) != 0 ||
        (p->in.done && p->out.done) || watch(r, p, 0) != 0 || watch(r, p, 1) != 0) {
        pair_close(r, p);
        return;
    }
    if (moved)
        p->last_ms = eg_mono_ms();
}

/*
 * Connects dev (from sa) to civetweb and adds the pair; closes dev if it cannot. The loopback
 * leg is bound, and its slot filled, before it connects: civetweb can accept it, and a request
 * on it be looked up, only once the slot names the device.
 */
static void pair_start(eg_relay *r, int dev, const struct sockaddr_in6 *sa)
{
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->to)};
    struct sockaddr_in me = {.sin_family = AF_INET};
    socklen_t len = sizeof(me);
    pair *p = calloc(1, sizeof(*p));
    int up = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    size_t i;

    to.sin_addr.s_addr = me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (i = 0; i < r->max && r->pairs[i] != NULL; i++)
        ;
    if (p == NULL || up < 0 || i == r->max || bind(up, (struct sockaddr *)&me, sizeof(me)) != 0 ||
        getsockname(up, (struct sockaddr *)&me, &len) != 0) {
        free(p);
        if (up >= 0)
            close(up);
        close(dev);
        return;
    }
    pthread_mutex_lock(&r->lock);
    r->slots[i].used = true;
    r->slots[i].local_port = ntohs(me.sin_port);
    r->slots[i].port = ntohs(sa->sin6_port);
    if (inet_ntop(AF_INET6, &sa->sin6_addr, r->slots[i].addr, sizeof(r->slots[i].addr)) == NULL)
        snprintf(r->slots[i].addr, sizeof(r->slots[i].addr), "::");
    pthread_mutex_unlock(&r->lock);
    p->fd[0] = dev;
    p->fd[1] = up;
    p->in = (leg){dev, up, p->bufs, 0, 0, false, false};
    p->out = (leg){up, dev, p->bufs + RELAY_BUF, 0, 0, false, false};
    p->ends[0] = (end){p, 0};
    p->ends[1] = (end){p, 1};
    p->slot = i;
    p->last_ms = eg_mono_ms();
    r->pairs[i] = p;
    r->active++;
    /* Not waited for: on loopback it is made at once, or refused, unless civetweb's listen
       queue is full, and then the other connections must not wait for it. Until it is made,
       sends to it find no room; a refusal comes as EPOLLERR. */
    if ((connect(up, (struct sockaddr *)&to, sizeof(to)) != 0 && errno != EINPROGRESS) ||
        watch(r, p, 0) != 0 || watch(r, p, 1) != 0) {
        pair_close(r, p);
        return;
    }
    nodelay(dev);
    nodelay(up);
}

static void accept_some(eg_relay *r)
{
    struct sockaddr_in6 sa;
    socklen_t len;
    int dev;

    while (r->active < r->max) {
        len = sizeof(sa);
        if ((dev = accept4(r->lfd, (struct sockaddr *)&sa, &len, SOCK_CLOEXEC | SOCK_NONBLOCK)) <
            0) {
            /* Out of descriptors or memory: the device waits in the listen queue until a
               connection closes or the next tick, while the open ones go on moving bytes. */
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                listen_again(r, false);
            return;
        }
        pair_start(r, dev, &sa);
    }
    listen_again(r, false); /* the rest wait in the listen queue */
}

static void close_idle(eg_relay *r)
{
    int64_t now = eg_mono_ms();

    for (size_t i = 0; i < r->max; i++) {
        pair *p = r->pairs[i];

        if (p != NULL && now - p->last_ms >= (int64_t)r->idle_ms)
            pair_close(r, p);
    }
}

static void bury(eg_relay *r)
{
    while (r->dead != NULL) {
        pair *p = r->dead;

        r->dead = p->next_dead;
        free(p);
    }
}

static void *relay_run(void *arg)
{
    eg_relay *r = arg;
    struct epoll_event evs[MAX_EVENTS];
    int64_t scanned = eg_mono_ms();
    bool stop = false;

    while (!stop) {
        int n = epoll_wait(r->ep, evs, MAX_EVENTS, TICK_MS);

        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &wake_tag) {
                stop = true;
            } else if (evs[i].data.ptr == &listen_tag) {
                accept_some(r);
            } else {
                end *e = evs[i].data.ptr;

                pair_event(r, e->p, e->side, evs[i].events);
            }
        }
        if (eg_mono_ms() - scanned >= TICK_MS) {
            close_idle(r);
            if (r->active < r->max)
                listen_again(r, true); /* after running out of descriptors */
            scanned = eg_mono_ms();
        }
        bury(r);
    }
    for (size_t i = 0; i < r->max; i++) {
        if (r->pairs[i] != NULL)
            pair_close(r, r->pairs[i]);
    }
    bury(r);
    return NULL;
}

int eg_relay_start(const char *address, unsigned port, unsigned to, unsigned max, unsigned idle_ms,
                   eg_relay **out, char *why, size_t whylen)
{
    eg_relay *r = calloc(1, sizeof(*r));
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &wake_tag};
    socklen_t len = sizeof(sa);
    int one = 1;

    *out = NULL;
    if (r == NULL)
        return -1;
    r->lfd = r->ep = r->wake[0] = r->wake[1] = -1;
    r->to = to;
    r->max = max ? max : 1;
    r->idle_ms = idle_ms;
    if (pthread_mutex_init(&r->lock, NULL) != 0) {
        free(r);
        return -1;
    }
    if ((r->slots = calloc(r->max, sizeof(*r->slots))) == NULL ||
        (r->pairs = calloc(r->max, sizeof(*r->pairs))) == NULL || pipe(r->wake) != 0 ||
        (r->ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        epoll_ctl(r->ep, EPOLL_CTL_ADD, r->wake[0], &ev) != 0) {
        snprintf(why, whylen, "cannot set the relay up: %s", strerror(errno));
        goto fail;
    }
    if (inet_pton(AF_INET6, address, &sa.sin6_addr) != 1) {
        snprintf(why, whylen, "%s is not an IPv6 address", address);
        goto fail;
    }
    if ((r->lfd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0 ||
        setsockopt(r->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        /* IPv6 only: [::] must not take the port from an IPv4 listener's clients */
        setsockopt(r->lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0 ||
        bind(r->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(r->lfd, 128) != 0 ||
        getsockname(r->lfd, (struct sockaddr *)&sa, &len) != 0) {
        snprintf(why, whylen, "cannot listen on [%s]:%u: %s", address, port, strerror(errno));
        goto fail;
    }
    r->port = ntohs(sa.sin6_port);
    listen_again(r, true);
    if (!r->listening || pthread_create(&r->thread, NULL, relay_run, r) != 0) {
        snprintf(why, whylen, "cannot start the relay's thread");
        goto fail;
    }
    r->thread_started = true;
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
    if (r->wake[1] >= 0 && write(r->wake[1], "x", 1) < 0)
        perror("relay: wake");
    if (r->thread_started)
        pthread_join(r->thread, NULL); /* it closes every relayed connection */
    if (r->lfd >= 0)
        close(r->lfd);
    if (r->ep >= 0)
        close(r->ep);
    for (int i = 0; i < 2; i++) {
        if (r->wake[i] >= 0)
            close(r->wake[i]);
    }
    pthread_mutex_destroy(&r->lock);
    free(r->pairs);
    free(r->slots);
    free(r);
}
