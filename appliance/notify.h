/*
 * Telling systemd how the service is doing (the sd_notify(3) protocol, without
 * libsystemd): READY=1 once estgated serves, RELOADING=1 and READY=1 around a
 * reload, STOPPING=1 when it stops, STATUS= lines that `systemctl status`
 * shows, and WATCHDOG=1 while the service is well, when the unit sets
 * WatchdogSec=. Under any other supervisor, or none, nothing is sent. Only the
 * main thread calls these.
 */
#ifndef EG_NOTIFY_H
#define EG_NOTIFY_H

/*
 * Takes the address in NOTIFY_SOCKET (a path, or an abstract name after '@') and
 * the watchdog's interval in WATCHDOG_USEC (when WATCHDOG_PID, if set, is this
 * process), and removes the variables from the environment, so that nothing
 * estgated starts later talks to systemd in its name. Call once, before any
 * thread starts.
 * 0, or -1 when the variable names no usable address (said on stderr; later
 * messages are then dropped).
 */
int eg_notify_init(void);

/*
 * Sends one message: lines "VAR=VALUE" separated by newlines, as printf
 * formats them. 0 when sent or when there is no one to tell; -1 when the
 * socket refused it (said on stderr once).
 */
int eg_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * The unit's WatchdogSec= in microseconds: systemd restarts the service when
 * no WATCHDOG=1 came within it. 0 when there is no watchdog (or no one to
 * tell).
 */
unsigned long long eg_notify_watchdog_usec(void);

#endif
