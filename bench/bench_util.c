#include <dlfcn.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

double eg_bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int eg_bench_module_open(const eg_token_config *cfg, const char *pin, eg_bench_module *m)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK, .pReserved = (void *)cfg->init_args};
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16, i;
    CK_TOKEN_INFO info;
    CK_RV rv;
    size_t ll = strlen(cfg->token_label);

    memset(m, 0, sizeof(*m));
    m->login = CK_INVALID_HANDLE;
    if ((m->dl = dlopen(cfg->module_path, RTLD_NOW)) == NULL)
        return -1;
    *(void **)&get_list = dlsym(m->dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(&m->fl) != CKR_OK)
        return -1;
    rv = m->fl->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
        return -1;
    m->initialized = rv == CKR_OK;
    if (m->fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return -1;
    for (i = 0; i < n; i++)
        if (m->fl->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
            memcmp(info.label, cfg->token_label, ll) == 0 && (ll == 32 || info.label[ll] == ' '))
            break;
    if (i == n)
        return -1;
    m->slot = slots[i];
    if (pin == NULL)
        return 0;
    if (m->fl->C_OpenSession(m->slot, CKF_SERIAL_SESSION, NULL, NULL, &m->login) != CKR_OK)
        return -1;
    rv = m->fl->C_Login(m->login, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin));
    return rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN ? 0 : -1;
}

void eg_bench_module_close(eg_bench_module *m)
{
    if (m->fl != NULL && m->login != CK_INVALID_HANDLE)
        m->fl->C_CloseSession(m->login);
    if (m->fl != NULL && m->initialized)
        m->fl->C_Finalize(NULL);
    if (m->dl != NULL)
        dlclose(m->dl);
    memset(m, 0, sizeof(*m));
    m->login = CK_INVALID_HANDLE;
}
