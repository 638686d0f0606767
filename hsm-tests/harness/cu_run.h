/* The CUnit main every test program shares. */
#ifndef EG_CU_RUN_H
#define EG_CU_RUN_H

#include <CUnit/CUnit.h>

/*
 * Registers one suite of tests (ended by CU_TEST_INFO_NULL), runs it verbosely
 * and returns the process exit status: 0 when every test and the suite's
 * set-up and clean-up passed, 1 otherwise, 2 when CUnit itself failed.
 */
int eg_cu_run(const char *suite, CU_InitializeFunc init, CU_CleanupFunc clean, CU_TestInfo *tests);
/* The same with set-up and tear-down run around every test. */
int eg_cu_run_each(const char *suite, CU_SetUpFunc setup, CU_TearDownFunc teardown,
                   CU_TestInfo *tests);

/*
 * What a test's code under test writes to stderr (log and audit lines): eg_stderr_capture sends
 * it to a fresh file, eg_stderr_release puts stderr back and returns what came (malloc'd,
 * NUL-terminated, up to 1 MiB; NULL when it cannot be read). One capture at a time.
 */
void eg_stderr_capture(void);
char *eg_stderr_release(void);
/* How many times needle occurs in text (not overlapping). */
int eg_text_count(const char *text, const char *needle);

#endif
