/*
 * Reading another process's memory, to show that a secret is not in it.
 * The process should be stopped (SIGSTOP) while it is read, and be ours to
 * trace (a child of the test).
 */
#ifndef EG_PROCMEM_H
#define EG_PROCMEM_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/*
 * Every mapping of pid that could hold data it made: anonymous ones, the
 * heap and stacks, and writable file mappings (libraries' .data and .bss);
 * read-only file mappings (code, constants) and mappings over 1 GiB
 * (sanitizer shadow memory) are left out. Concatenated in
 * malloc'd memory; 0, or -1 when /proc/PID/maps or /proc/PID/mem cannot be
 * opened or nothing could be read.
 */
int eg_procmem_dump(pid_t pid, unsigned char **out, size_t *len);

/* Whether needle (nlen > 0) occurs in hay. */
bool eg_mem_contains(const unsigned char *hay, size_t hlen, const void *needle, size_t nlen);

#endif
