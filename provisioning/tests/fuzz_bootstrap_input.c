/*
 * Fuzz target: the factory line's input manifest (estgate-provision
 * bootstrap --manifest), CSV with a header or JSON lines. The input is
 * written to a file and read as the command reads it. Besides not crashing:
 * every row is either refused with a reason or has a mode and its file;
 * rows keep the order and the numbers of the lines they came from, so the
 * batch report points at the right line. A refused manifest is reported on
 * stderr as the command reports it: run libFuzzer with -close_fd_mask=2.
 * Built by eg_fuzz_target (top CMakeLists.txt); see docs/fuzzing.md.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/obj_mac.h>

#include "bootstrap.h"
#include "provision.h"
#include "tmpdir.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[256], path[PATH_MAX];

static void remove_dir(void)
{
    eg_tmpdir_remove(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

    if (eg_tmpdir_make(dir, sizeof(dir), base, "fuzz_bootstrap_input") != 0)
        abort();
    snprintf(path, sizeof(path), "%s/manifest", dir);
    atexit(remove_dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eg_keygen_spec key = {.type = EG_KEY_EC, .curve_nid = NID_X9_62_prime256v1};
    eg_bs_rows *rows = NULL;
    size_t lines = 0, last = 0;
    FILE *f = fopen(path, "wb");

    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    for (size_t i = 0; i < size; i++)
        lines += data[i] == '\n';
    lines += size > 0 && data[size - 1] != '\n'; /* a last line without its newline */
    if (eg_bs_input_read(path, &key, &rows) != EG_EXIT_OK)
        return 0;
    for (size_t i = 0; i < rows->n; i++) {
        const eg_bs_row *r = &rows->v[i];

        if (r->line <= last || r->line > lines)
            abort();
        last = r->line;
        if (memchr(r->why, '\0', sizeof(r->why)) == NULL)
            abort();
        if (r->why[0] == '\0' &&
            !(r->mode == EG_BS_CSR
                  ? r->csr != NULL && r->transport == NULL
                  : r->mode == EG_BS_KEYGEN && r->transport != NULL && r->csr == NULL))
            abort();
    }
    eg_bs_rows_free(rows);
    return 0;
}
