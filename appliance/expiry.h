/*
 * Certificates that run out, or have not begun: the TLS certificate and each
 * profile's issuing CA. estgated says so at start, at each reload and once a day, and
 * --check-config says so too, weeks before devices would notice.
 */
#ifndef EG_EXPIRY_H
#define EG_EXPIRY_H

#include <stddef.h>
#include <stdio.h>
#include <time.h>

#include "config.h"

/* How far ahead an expiry is worth a warning. */
#define EG_EXPIRY_WARN_DAYS 30

/*
 * One line on fp per certificate that has expired or expires within
 * EG_EXPIRY_WARN_DAYS of now (for a CA: or before a certificate issued now
 * with the profile's max_days would end), or that begins after now (the
 * clock is not set: an appliance whose clock battery has run out starts in
 * the past), each after prefix. Returns how many lines it wrote.
 */
size_t eg_expiry_warn(const eg_config *cfg, time_t now, FILE *fp, const char *prefix);

#endif
