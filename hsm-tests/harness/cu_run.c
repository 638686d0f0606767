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
