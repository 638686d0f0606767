/*
 * main() for a fuzz target built without libFuzzer: runs
 * LLVMFuzzerTestOneInput once on every file named, or in the directories
 * named (not recursively), so a target's corpus is a regression test under
 * ctest. With -DESTGATE_FUZZ=ON libFuzzer supplies main() instead
 * (docs/fuzzing.md).
 */
#include <dirent.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A target without an initializer links this one. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    return 0;
}

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    long len;
    int rc = -1;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0)
        goto out;
    /* One byte more, so an empty file is still a buffer libFuzzer could have given. */
    if ((data = malloc((size_t)len + 1)) == NULL || fread(data, 1, (size_t)len, f) != (size_t)len)
        goto out;
    LLVMFuzzerTestOneInput(data, (size_t)len);
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "fuzz replay: cannot read %s\n", path);
    free(data);
    if (f != NULL)
        fclose(f);
    return rc;
}

/* Every regular file in dir; the number run, or -1. */
static long run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[PATH_MAX];
    struct stat st;
    long n = 0;

    if (d == NULL) {
        fprintf(stderr, "fuzz replay: cannot open %s\n", dir);
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (run_file(path) != 0) {
            n = -1;
            break;
        }
        n++;
    }
    closedir(d);
    return n;
}

int main(int argc, char **argv)
{
    struct stat st;
    long total = 0, n;

    LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "fuzz replay: no such file or directory: %s\n", argv[i]);
            return 1;
        }
        n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]) == 0 ? 1 : -1;
        if (n < 0)
            return 1;
        total += n;
    }
    if (total == 0) {
        fprintf(stderr, "fuzz replay: no inputs\n");
        return 1;
    }
    printf("fuzz replay: %ld inputs, no failure\n", total);
    return 0;
}
