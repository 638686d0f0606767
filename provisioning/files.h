/* Files: PIN files in, certificates out (atomically). */
#ifndef EG_PROV_FILES_H
#define EG_PROV_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <openssl/bio.h>

/*
 * How messages name the file of a secret (what: "PIN", "SO PIN", "key") given
 * to option ("--pin-file"), into buf: "PIN file PATH", or, for a value with no
 * '/', "the PIN file given to --pin-file". Such a value may be the secret
 * itself typed where its file belongs (--pin-file 1234), so it is never
 * repeated.
 */
const char *eg_prov_secret_file_name(const char *path, const char *option, const char *what,
                                     char *buf, size_t cap);
/*
 * Opens a secret's file for reading: a regular file others cannot read, or an
 * exit code after saying what is wrong (named as above). With fd NULL only
 * checks; otherwise the caller closes *fd.
 */
int eg_prov_secret_open(const char *path, const char *option, const char *what, int *fd);
/*
 * Reads the PIN on the first line of path, given to option; a file others may
 * read is refused. what names the PIN in messages ("SO PIN"). Returns an exit
 * code; free *out with eg_prov_pin_free.
 */
int eg_prov_pin_read(const char *path, const char *option, const char *what, char **out);
void eg_prov_pin_free(char *pin);

/*
 * An output file written atomically: a temporary file in the target directory,
 * renamed over path only by commit, so a reader never sees half a file and a
 * failed command leaves nothing behind.
 */
typedef struct eg_prov_outfile eg_prov_outfile;

/* Creates the temporary file now, so an unwritable target fails before any token change. */
int eg_prov_outfile_open(const char *path, mode_t mode, eg_prov_outfile **out);
/* Appends the contents of a memory BIO. */
int eg_prov_outfile_write(eg_prov_outfile *f, BIO *mem);
/* fchmod, fsync, rename over the target, fsync the directory. */
int eg_prov_outfile_commit(eg_prov_outfile *f);
/* Removes the temporary file unless committed. */
void eg_prov_outfile_free(eg_prov_outfile *f);

/*
 * Whether a write of this process failed because its file system was full
 * (ENOSPC, EDQUOT, SQLite's SQLITE_FULL): running the command again cannot
 * succeed until space is freed, and the operator is told so.
 */
bool eg_prov_disk_full(void);
/* Records such a failure (outfile does for its own writes). */
void eg_prov_disk_full_seen(void);

/* Makes dir and any missing parents (mkdir -p); 0, or -1 with errno. */
int eg_prov_mkdirs(const char *dir, mode_t mode);

#endif
