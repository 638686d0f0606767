/*
 * IPv6 listeners through a relay. Debian 12's civetweb 1.15 is built without
 * IPv6, so estgated listens on an IPv6 address itself and passes each
 * connection's bytes, TLS and all, to a civetweb listener on 127.0.0.1. The
 * relay remembers which device each of its loopback connections carries, so
 * that audit lines and the per-address password limit see the device's
 * address rather than the loopback's.
 */
#ifndef EG_RELAY_H
#define EG_RELAY_H

#include <stdbool.h>
#include <stddef.h>

typedef struct eg_relay eg_relay;

/*
 * Listens on [address]:port (port 0: a free one) and relays each connection to
 * 127.0.0.1:to, at most max connections at a time (the rest wait in the
 * listen queue); a connection that moves no byte for idle_ms is closed. 0, or
 * -1 with the reason in why.
 */
int eg_relay_start(const char *address, unsigned port, unsigned to, unsigned max, unsigned idle_ms,
                   eg_relay **out, char *why, size_t whylen);
/* The port the relay listens on. */
unsigned eg_relay_port(const eg_relay *r);
/*
 * For a connection civetweb accepted on server_port from 127.0.0.1:local_port:
 * the device's address (without brackets) into addr, and its port. false if
 * server_port is not the relay's target or no relayed connection has that
 * local port.
 */
bool eg_relay_peer(eg_relay *r, unsigned server_port, unsigned local_port, char *addr, size_t cap,
                   unsigned *port);
/* Stops listening, closes every relayed connection, waits for the relay's thread, frees.
   NULL: no-op. */
void eg_relay_stop(eg_relay *r);

#endif
