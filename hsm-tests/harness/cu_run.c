#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/Basic.h>

#include "cu_run.h"

static int run(CU_SuiteInfo *suites)
{
    unsigned failures;

    if (CU_initialize_registry() != CUE_SUCCESS || CU_register_suites(suites) != CUE_SUCCESS)
        return 2;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failures = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    CU_cleanup_registry();
    return failures == 0 ? 0 : 1;
}

int eg_cu_run(const char *suite, CU_InitializeFunc init, CU_CleanupFunc clean, CU_TestInfo *tests)
{
    CU_SuiteInfo suites[] = {
        {suite, init, clean, NULL, NULL, tests},
        CU_SUITE_INFO_NULL,
    };

    return run(suites);
}

int eg_cu_run_each(const char *suite, CU_SetUpFunc setup, CU_TearDownFunc teardown,
                   CU_TestInfo *tests)
{
    CU_SuiteInfo suites[] = {
        {suite, NULL, NULL, setup, teardown, tests},
        CU_SUITE_INFO_NULL,
    };

    return run(suites);
}

#define CAPTURE_MAX (1 << 20)
static char capture_path[64];
static int saved_stderr = -1;

void eg_stderr_capture(void)
{
    int fd;

    fflush(stderr);
    saved_stderr = dup(2);
    snprintf(capture_path, sizeof(capture_path), "/tmp/eg_stderr.XXXXXX");
    fd = mkstemp(capture_path);
    CU_ASSERT_FATAL(fd >= 0 && saved_stderr >= 0);
    dup2(fd, 2);
    close(fd);
}

char *eg_stderr_release(void)
{
    char *text = calloc(1, CAPTURE_MAX);
    FILE *f;
    size_t n = 0;

    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    saved_stderr = -1;
    if (text != NULL && (f = fopen(capture_path, "r")) != NULL) {
        n = fread(text, 1, CAPTURE_MAX - 1, f);
        fclose(f);
    }
    unlink(capture_path);
    if (text != NULL)
        text[n] = '\0';
    return text;
}

int eg_text_count(const char *text, const char *needle)
{
    int n = 0;

    for (const char *p = text; p != NULL && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}
