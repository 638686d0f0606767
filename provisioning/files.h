/* Files: PIN files in, certificates out (atomically). */
#ifndef EG_PROV_FILES_H
#define EG_PROV_FILES_H

#include <sys/types.h>

#include <openssl/bio.h>

/*
 * Reads the PIN on the first line of path; a file others may read is refused.
 * what names the PIN in messages ("SO PIN"). Returns an exit code; free *out
 * with eg_prov_pin_free.
 */
int eg_prov_pin_read(const char *path, const char *what, char **out);
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

/* Makes dir and any missing parents (mkdir -p); 0, or -1 with errno. */
int eg_prov_mkdirs(const char *dir, mode_t mode);

#endif
