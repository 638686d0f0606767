/* Scratch directories for tests and benchmarks that need no token. */
#ifndef EG_TMPDIR_H
#define EG_TMPDIR_H

#include <stddef.h>

/* Makes $TMPDIR (or /tmp, or base when not NULL)/NAME.XXXXXX in buf; 0 or -1. */
int eg_tmpdir_make(char *buf, size_t len, const char *base, const char *name);
/* Removes dir and the files in it (no subdirectories); NULL or "" does nothing. */
void eg_tmpdir_remove(const char *dir);

#endif
