/*
 * A pass-through PKCS#11 module that gives a real token a session-object
 * quota, for tests of what estgated does when its token is full.
 *
 * Hardware HSM partitions hold a bounded number of objects and answer
 * CKR_DEVICE_MEMORY once they are full; SoftHSM and NSS's softoken keep
 * session objects in an unbounded heap, so no token here can be filled. This
 * module loads the real one (EG_P11_QUOTA_MODULE) and hands every call to it
 * unchanged, except that a call which would create a session object while
 * the quota is used up is answered CKR_DEVICE_MEMORY instead of being made.
 * Objects are really made, used and destroyed in the real token; the only
 * thing this module decides is "full".
 *
 * Environment, read by the process that loads the module:
 *   EG_P11_QUOTA_MODULE  path of the real module (required)
 *   EG_P11_QUOTA_FILE    a file holding the quota as a decimal number of
 *                        live session objects, read at every creating call;
 *                        no file, or no number in it, means no quota.
 *                        After every change the number of live session
 *                        objects is written to EG_P11_QUOTA_FILE.live, and
 *                        the number of key pairs generated through this
 *                        module (C_GenerateKeyPair calls that returned
 *                        CKR_OK) to EG_P11_QUOTA_FILE.keypairs.
 *
 * A fault on request, for tests of a login lost in the middle of a job:
 * while EG_P11_QUOTA_FILE.logout exists, the next C_WrapKey removes it and
 * first logs the application out (C_Logout on the same session), as another
 * part of the process may.
 *
 * A session limit on request, for tests of a token that has no more sessions
 * to give (a hardware HSM's limit per partition, which other applications
 * share): while EG_P11_QUOTA_FILE.sessions holds a number, C_OpenSession
 * answers CKR_SESSION_COUNT, without opening one, when that many sessions
 * opened through this module are open.
 *
 * Logins, for tests of what estgated does with a PIN the token refuses: every
 * C_Login call is counted in EG_P11_QUOTA_FILE.logins. While
 * EG_P11_QUOTA_FILE.wrong_pin exists, C_Login answers CKR_PIN_INCORRECT
 * without reaching the real token (its PIN was changed under us), and after
 * EG_P11_PIN_TRIES such answers CKR_PIN_LOCKED, with C_GetTokenInfo showing
 * CKF_USER_PIN_FINAL_TRY one try before and CKF_USER_PIN_LOCKED after, as a
 * hardware HSM's retry counter does (SoftHSM and NSS keep none). Removing the
 * file unlocks it, as the token's security officer would.
 *
 * Counted: the session objects made by C_CreateObject, C_CopyObject,
 * C_GenerateKey, C_GenerateKeyPair (each half), C_UnwrapKey and C_DeriveKey
 * through this module, until C_DestroyObject, the close of their session or
 * C_Finalize. Token objects are not counted.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define MAX_LIVE 4096

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *real_dl;
static CK_FUNCTION_LIST *real; /* the real module's list */
static CK_FUNCTION_LIST list;  /* ours: a copy with the creating calls replaced */
static struct {
    CK_SESSION_HANDLE session;
    CK_OBJECT_HANDLE object;
} live[MAX_LIVE];
static size_t nlive;
static unsigned long keypairs;
static unsigned long nsessions; /* open through this module */
static unsigned long logins, wrong_logins;
#define EG_P11_PIN_TRIES 5

/* The number in EG_P11_QUOTA_FILE with suffix (NULL: none), or -1 for none. */
static long read_limit(const char *suffix)
{
    const char *path = getenv("EG_P11_QUOTA_FILE");
    char name[4096];
    FILE *f = NULL;
    long n = -1;

    if (path != NULL && snprintf(name, sizeof(name), "%s%s%s", path, suffix ? "." : "",
                                 suffix ? suffix : "") < (int)sizeof(name))
        f = fopen(name, "r");
    if (f != NULL) {
        if (fscanf(f, "%ld", &n) != 1 || n < 0)
            n = -1;
        fclose(f);
    }
    return n;
}

/* The quota, or -1 for none. */
static long quota(void)
{
    return read_limit(NULL);
}

/* Writes n to the file beside the quota file with suffix, atomically (rename); under lock. */
static void report_one(const char *suffix, unsigned long n)
{
    const char *path = getenv("EG_P11_QUOTA_FILE");
    char tmp[4096], dst[4096];
    FILE *f;

    if (path == NULL || snprintf(dst, sizeof(dst), "%s.%s", path, suffix) >= (int)sizeof(dst) ||
        snprintf(tmp, sizeof(tmp), "%s.%s.tmp", path, suffix) >= (int)sizeof(tmp))
        return;
    if ((f = fopen(tmp, "w")) == NULL)
        return;
    fprintf(f, "%lu\n", n);
    if (fclose(f) == 0)
        rename(tmp, dst);
}

static void report(void)
{
    report_one("live", (unsigned long)nlive);
    report_one("keypairs", keypairs);
}

/* CKA_TOKEN as a template says it; def when the template does not say. */
static bool is_token(const CK_ATTRIBUTE *t, CK_ULONG n, bool def)
{
    for (CK_ULONG i = 0; t != NULL && i < n; i++)
        if (t[i].type == CKA_TOKEN && t[i].pValue != NULL && t[i].ulValueLen == sizeof(CK_BBOOL))
            return *(CK_BBOOL *)t[i].pValue == CK_TRUE;
    return def;
}

/* Takes room for want objects, or says the token is full. Locks; unlock with done(). */
static CK_RV reserve(size_t want)
{
    long q = quota();

    pthread_mutex_lock(&lock);
    if (want > 0 && ((q >= 0 && nlive + want > (size_t)q) || nlive + want > MAX_LIVE)) {
        pthread_mutex_unlock(&lock);
        return CKR_DEVICE_MEMORY;
    }
    return CKR_OK;
}

static void add(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
    live[nlive].session = s;
    live[nlive].object = o;
    nlive++;
}

static void done(void)
{
    report();
    pthread_mutex_unlock(&lock);
}

/*
 * Creating calls hold the lock across the real call, so two threads cannot
 * both take the last place: a test module, so simplicity over concurrency.
 */
static CK_RV q_CreateObject(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                            CK_OBJECT_HANDLE_PTR o)
{
    bool counted = !is_token(t, n, false);
    CK_RV rv;

    if ((rv = reserve(counted)) != CKR_OK)
        return rv;
    if ((rv = real->C_CreateObject(s, t, n, o)) == CKR_OK && counted)
        add(s, *o);
    done();
    return rv;
}

static CK_RV q_CopyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE from, CK_ATTRIBUTE_PTR t,
                          CK_ULONG n, CK_OBJECT_HANDLE_PTR o)
{
    CK_BBOOL tok = CK_FALSE;
    CK_ATTRIBUTE a = {CKA_TOKEN, &tok, sizeof(tok)};
    bool counted;
    CK_RV rv;

    if (real->C_GetAttributeValue(s, from, &a, 1) != CKR_OK)
        tok = CK_FALSE;
    counted = !is_token(t, n, tok == CK_TRUE);
    if ((rv = reserve(counted)) != CKR_OK)
        return rv;
    if ((rv = real->C_CopyObject(s, from, t, n, o)) == CKR_OK && counted)
        add(s, *o);
    done();
    return rv;
}

static CK_RV q_GenerateKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                           CK_OBJECT_HANDLE_PTR o)
{
    bool counted = !is_token(t, n, false);
    CK_RV rv;

    if ((rv = reserve(counted)) != CKR_OK)
        return rv;
    if ((rv = real->C_GenerateKey(s, m, t, n, o)) == CKR_OK && counted)
        add(s, *o);
    done();
    return rv;
}

static CK_RV q_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt,
                               CK_ULONG pn, CK_ATTRIBUTE_PTR kt, CK_ULONG kn,
                               CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv)
{
    bool cpub = !is_token(pt, pn, false), cpriv = !is_token(kt, kn, false);
    CK_RV rv;

    if ((rv = reserve((size_t)cpub + cpriv)) != CKR_OK)
        return rv;
    if ((rv = real->C_GenerateKeyPair(s, m, pt, pn, kt, kn, pub, priv)) == CKR_OK) {
        keypairs++;
        if (cpub)
            add(s, *pub);
        if (cpriv)
            add(s, *priv);
    }
    done();
    return rv;
}

static CK_RV q_UnwrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k, CK_BYTE_PTR w,
                         CK_ULONG wn, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o)
{
    bool counted = !is_token(t, n, false);
    CK_RV rv;

    if ((rv = reserve(counted)) != CKR_OK)
        return rv;
    if ((rv = real->C_UnwrapKey(s, m, k, w, wn, t, n, o)) == CKR_OK && counted)
        add(s, *o);
    done();
    return rv;
}

static CK_RV q_DeriveKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE base,
                         CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o)
{
    bool counted = !is_token(t, n, false);
    CK_RV rv;

    if ((rv = reserve(counted)) != CKR_OK)
        return rv;
    if ((rv = real->C_DeriveKey(s, m, base, t, n, o)) == CKR_OK && counted && o != NULL)
        add(s, *o);
    done();
    return rv;
}

/* Forgets objects: of one session and handle, of one session, or all. */
static void forget(bool by_session, CK_SESSION_HANDLE s, bool by_object, CK_OBJECT_HANDLE o)
{
    size_t i = 0;

    while (i < nlive) {
        if ((!by_session || live[i].session == s) && (!by_object || live[i].object == o))
            live[i] = live[--nlive];
        else
            i++;
    }
}

static CK_RV q_DestroyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
    CK_RV rv;

    pthread_mutex_lock(&lock);
    /* Handles are the token's, unique across its sessions. */
    if ((rv = real->C_DestroyObject(s, o)) == CKR_OK)
        forget(false, 0, true, o);
    done();
    return rv;
}

static CK_RV q_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                           CK_SESSION_HANDLE_PTR s)
{
    long most = read_limit("sessions");
    CK_RV rv;

    pthread_mutex_lock(&lock);
    if (most >= 0 && nsessions >= (unsigned long)most)
        rv = CKR_SESSION_COUNT;
    else if ((rv = real->C_OpenSession(slot, flags, app, notify, s)) == CKR_OK)
        nsessions++;
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV q_CloseSession(CK_SESSION_HANDLE s)
{
    CK_RV rv;

    pthread_mutex_lock(&lock);
    if ((rv = real->C_CloseSession(s)) == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID)
        forget(true, s, false, 0);
    if (rv == CKR_OK && nsessions > 0)
        nsessions--;
    done();
    return rv;
}

static CK_RV q_CloseAllSessions(CK_SLOT_ID slot)
{
    CK_RV rv;

    pthread_mutex_lock(&lock);
    if ((rv = real->C_CloseAllSessions(slot)) == CKR_OK) {
        nlive = 0; /* one token per test */
        nsessions = 0;
    }
    done();
    return rv;
}

static CK_RV q_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wrapping,
                       CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR len)
{
    const char *path = getenv("EG_P11_QUOTA_FILE");
    char fault[4096];

    if (path != NULL && snprintf(fault, sizeof(fault), "%s.logout", path) < (int)sizeof(fault) &&
        unlink(fault) == 0)
        real->C_Logout(s);
    return real->C_WrapKey(s, m, wrapping, key, out, len);
}

/* Whether the file beside the quota file with suffix exists. */
static bool beside_exists(const char *suffix)
{
    const char *path = getenv("EG_P11_QUOTA_FILE");
    char p[4096];

    return path != NULL && snprintf(p, sizeof(p), "%s.%s", path, suffix) < (int)sizeof(p) &&
           access(p, F_OK) == 0;
}

static CK_RV q_Login(CK_SESSION_HANDLE s, CK_USER_TYPE who, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    CK_RV rv;

    pthread_mutex_lock(&lock);
    logins++;
    report_one("logins", logins);
    if (!beside_exists("wrong_pin"))
        wrong_logins = 0;
    if (who == CKU_USER && beside_exists("wrong_pin")) {
        rv = wrong_logins < EG_P11_PIN_TRIES ? CKR_PIN_INCORRECT : CKR_PIN_LOCKED;
        if (rv == CKR_PIN_INCORRECT)
            wrong_logins++;
        pthread_mutex_unlock(&lock);
        return rv;
    }
    pthread_mutex_unlock(&lock);
    return real->C_Login(s, who, pin, len);
}

static CK_RV q_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
    CK_RV rv = real->C_GetTokenInfo(slot, info);

    pthread_mutex_lock(&lock);
    if (!beside_exists("wrong_pin"))
        wrong_logins = 0;
    if (rv == CKR_OK && wrong_logins + 1 == EG_P11_PIN_TRIES)
        info->flags |= CKF_USER_PIN_FINAL_TRY;
    if (rv == CKR_OK && wrong_logins >= EG_P11_PIN_TRIES)
        info->flags |= CKF_USER_PIN_LOCKED;
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV q_Finalize(CK_VOID_PTR reserved)
{
    CK_RV rv;

    pthread_mutex_lock(&lock);
    if ((rv = real->C_Finalize(reserved)) == CKR_OK) {
        nlive = 0;
        nsessions = 0;
    }
    done();
    return rv;
}

static CK_RV load(void)
{
    const char *path = getenv("EG_P11_QUOTA_MODULE");
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);

    if (real != NULL)
        return CKR_OK;
    if (path == NULL || (real_dl = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL) {
        fprintf(stderr, "p11_quota: EG_P11_QUOTA_MODULE: %s\n",
                path == NULL ? "not set" : dlerror());
        return CKR_GENERAL_ERROR;
    }
    *(void **)&get = dlsym(real_dl, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK || real == NULL) {
        fprintf(stderr, "p11_quota: %s: no C_GetFunctionList\n", path);
        real = NULL;
        return CKR_GENERAL_ERROR;
    }
    list = *real;
    list.C_Finalize = q_Finalize;
    list.C_OpenSession = q_OpenSession;
    list.C_CloseSession = q_CloseSession;
    list.C_CloseAllSessions = q_CloseAllSessions;
    list.C_CreateObject = q_CreateObject;
    list.C_CopyObject = q_CopyObject;
    list.C_DestroyObject = q_DestroyObject;
    list.C_GenerateKey = q_GenerateKey;
    list.C_GenerateKeyPair = q_GenerateKeyPair;
    list.C_UnwrapKey = q_UnwrapKey;
    list.C_DeriveKey = q_DeriveKey;
    list.C_WrapKey = q_WrapKey;
    list.C_Login = q_Login;
    list.C_GetTokenInfo = q_GetTokenInfo;
    list.C_GetFunctionList = C_GetFunctionList;
    return CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    CK_RV rv;

    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    rv = load();
    pthread_mutex_unlock(&lock);
    if (rv == CKR_OK)
        *out = &list;
    return rv;
}
