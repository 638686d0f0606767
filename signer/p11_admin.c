/*
 * Slot administration for estgate-provision: what the module's slots hold,
 * and initialising a token with its SO and user PINs. A token that is not
 * initialised has no label to open it by, so this works below eg_token, on the
 * shared module instance, with sessions of its own that it closes before
 * returning.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "errors.h"
#include "p11_local.h"

static void copy_label(const CK_UTF8CHAR *padded, char out[33])
{
    size_t n = 32;

    while (n > 0 && padded[n - 1] == ' ')
        n--;
    memcpy(out, padded, n);
    out[n] = '\0';
}

static CK_RV list_slots(CK_FUNCTION_LIST *fl, eg_slot_info **out, size_t *count)
{
    CK_SLOT_ID *ids = NULL;
    CK_ULONG n = 0, i;
    eg_slot_info *info = NULL;
    CK_RV rv;

    if ((rv = fl->C_GetSlotList(CK_FALSE, NULL, &n)) != CKR_OK)
        return rv;
    if ((ids = OPENSSL_zalloc((n + 1) * sizeof(*ids))) == NULL ||
        (info = OPENSSL_zalloc((n + 1) * sizeof(*info))) == NULL) {
        rv = CKR_HOST_MEMORY;
        goto out;
    }
    if ((rv = fl->C_GetSlotList(CK_FALSE, ids, &n)) != CKR_OK)
        goto out;
    for (i = 0; i < n; i++) {
        CK_SLOT_INFO si;
        CK_TOKEN_INFO ti;

        info[i].id = ids[i];
        if (fl->C_GetSlotInfo(ids[i], &si) != CKR_OK || !(si.flags & CKF_TOKEN_PRESENT) ||
            fl->C_GetTokenInfo(ids[i], &ti) != CKR_OK)
            continue;
        info[i].token_present = true;
        info[i].initialized = (ti.flags & CKF_TOKEN_INITIALIZED) != 0;
        if (info[i].initialized)
            copy_label(ti.label, info[i].label);
    }
    *out = info;
    *count = n;
    info = NULL;
out:
    OPENSSL_free(ids);
    OPENSSL_free(info);
    return rv;
}

int eg_module_slots(const char *module, const char *init_args, eg_slot_info **out, size_t *n)
{
    eg_module *m = NULL;
    CK_RV rv;

    if (eg_module_get(module, init_args, EG_CALLS_AUTO, 0, &m) != 0)
        return -1;
    eg_module_enter(m);
    rv = list_slots(eg_module_functions(m), out, n);
    eg_module_leave(m);
    eg_module_put(m);
    if (rv != CKR_OK) {
        eg_signer_error(EG_R_TOKEN_CALL, "C_GetSlotList of %s: %s", module, eg_p11_rv_name(rv));
        return -1;
    }
    return 0;
}

/* The slot now holding the initialised token labelled label (SoftHSM moves it). */
static CK_RV find_label(CK_FUNCTION_LIST *fl, const char *label, CK_SLOT_ID *slot)
{
    eg_slot_info *info = NULL;
    size_t n = 0, i;
    CK_RV rv = list_slots(fl, &info, &n);

    for (i = 0; rv == CKR_OK && i < n; i++) {
        if (info[i].initialized && strcmp(info[i].label, label) == 0) {
            *slot = info[i].id;
            break;
        }
    }
    if (rv == CKR_OK && i == n)
        rv = CKR_TOKEN_NOT_PRESENT;
    OPENSSL_free(info);
    return rv;
}

/* Logs in as who on a new session of slot, runs C_InitPIN when pin is set, logs out. */
static CK_RV session_step(CK_FUNCTION_LIST *fl, CK_SLOT_ID slot, CK_USER_TYPE who,
                          const char *login_pin, const char *pin, const char **step)
{
    CK_SESSION_HANDLE h;
    CK_RV rv;

    *step = "C_OpenSession";
    if ((rv = fl->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h)) !=
        CKR_OK)
        return rv;
    *step = who == CKU_SO ? "C_Login (SO)" : "C_Login (user)";
    rv = fl->C_Login(h, who, (CK_UTF8CHAR *)login_pin, strlen(login_pin));
    if (rv == CKR_OK && pin != NULL) {
        *step = "C_InitPIN";
        rv = fl->C_InitPIN(h, (CK_UTF8CHAR *)pin, strlen(pin));
    }
    if (rv == CKR_OK)
        fl->C_Logout(h);
    fl->C_CloseSession(h);
    return rv;
}

int eg_module_init_token(const char *module, const char *init_args, CK_SLOT_ID slot,
                         const char *label, const char *so_pin, const char *user_pin,
                         CK_SLOT_ID *new_slot)
{
    CK_UTF8CHAR padded[32];
    CK_FUNCTION_LIST *fl;
    eg_module *m = NULL;
    const char *step = "C_InitToken";
    size_t len = strlen(label);
    CK_RV rv;

    if (len == 0 || len > sizeof(padded)) {
        eg_signer_error(EG_R_BAD_PARAM, "a token label has 1 to 32 bytes");
        return -1;
    }
    if (eg_module_get(module, init_args, EG_CALLS_AUTO, 0, &m) != 0)
        return -1;
    fl = eg_module_functions(m);
    /* C_InitToken takes exactly 32 bytes of label, blank-padded. */
    memset(padded, ' ', sizeof(padded));
    memcpy(padded, label, len);
    eg_module_enter(m);
    rv = fl->C_InitToken(slot, (CK_UTF8CHAR *)so_pin, strlen(so_pin), padded);
    if (rv == CKR_OK) {
        step = "finding the new token";
        rv = find_label(fl, label, &slot);
    }
    if (rv == CKR_OK)
        rv = session_step(fl, slot, CKU_SO, so_pin, user_pin, &step);
    if (rv == CKR_OK) /* the new user PIN must log in */
        rv = session_step(fl, slot, CKU_USER, user_pin, NULL, &step);
    eg_module_leave(m);
    eg_module_put(m);
    if (rv != CKR_OK) {
        eg_signer_error(rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED ? EG_R_LOGIN
                                                                        : EG_R_TOKEN_CALL,
                        "initialising token '%s': %s: %s", label, step, eg_p11_rv_name(rv));
        return -1;
    }
    *new_slot = slot;
    return 0;
}
