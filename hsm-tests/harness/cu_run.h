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

#endif
