/*
 * Programs run as children by the end-to-end tests: estgate-provision,
 * estgated, curl, openssl, java. posix_spawn, no shell; the child inherits the
 * environment, which is how a p11kit-kind token's server address reaches it.
 */
#ifndef EG_CHILD_H
#define EG_CHILD_H

#include <stddef.h>
#include <stdbool.h>
#include <sys/types.h>

typedef struct eg_child_result {
    int code; /* exit status, or 128 + signal; -1 when it did not run */
    char out[65536];
    char err[16384];
} eg_child_result;

/* The class path of hsm-tests/java/EstClient.java: Debian's Bouncy Castle jars (EST client,
   provider, utilities, and its TLS for channel bindings). */
#define EG_BC_CLASSPATH                                                                            \
    "/usr/share/java/bcpkix.jar:/usr/share/java/bcprov.jar:/usr/share/java/bcutil.jar:"            \
    "/usr/share/java/bctls.jar"

/* A built program: $EG_BUILD_DIR/rel (ctest sets EG_BUILD_DIR), into buf (PATH_MAX). */
const char *eg_child_built(const char *rel, char *buf);
/* The first of names found on PATH, into buf (PATH_MAX); NULL if none. */
const char *eg_child_which(const char *name, char *buf);

/*
 * Runs argv (NULL-terminated; argv[0] a path or a name looked up on PATH) to
 * completion with stdout and stderr captured through files in dir. stdin is
 * /dev/null unless in_path is given. Prints the command and stderr when it
 * fails. Returns r->code.
 */
int eg_child_run(const char *dir, const char *in_path, char *const argv[], eg_child_result *r);

/* Runs first, then the rest of a NULL-terminated argument list, as eg_child_run. */
int eg_child_cmd(const char *dir, eg_child_result *r, const char *first, ...)
    __attribute__((sentinel));

/* A whole file, NUL-terminated, in malloc'd memory; *len (if not NULL) its size. */
char *eg_file_read(const char *path, size_t *len);
/* How many times needle occurs in the file at path (a daemon's log); 0 when unreadable. */
int eg_file_count(const char *path, const char *needle);
/* Whether a line of the file at path holds both a and b (an audit line's reference and detail). */
bool eg_file_line_has(const char *path, const char *a, const char *b);
/*
 * The reference ("ref=" and 8 hex digits) an answer's body quotes for a failure
 * inside the appliance, NUL-terminated in ref[13]; 0, or -1 when the body has none.
 */
int eg_answer_ref(const char *body, char ref[13]);
/* Writes text to path with its first from replaced by to (a configuration told apart from
   another); 0, or -1 when from is not in text or path cannot be written. */
int eg_file_write_replaced(const char *path, const char *text, const char *from, const char *to);
/* Writes data to path (created or truncated) with mode; 0 or -1. */
int eg_file_write(const char *path, const void *data, size_t len, mode_t mode);

/* Starts argv in the background with stdout and stderr appended to log_path. */
int eg_child_start(char *const argv[], const char *log_path, pid_t *pid);
/* Waits for pid; exit status or 128 + signal, -1 on error. */
int eg_child_wait(pid_t pid);

#endif
