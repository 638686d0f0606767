/* The wrapped C_* calls used inside eg_token_run() callbacks, and CK_RV names. */
#include <string.h>

#include <openssl/crypto.h>

#include "errors.h"
#include "p11_local.h"

CK_RV eg_p11_find_objects(eg_p11_call *call, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out,
                          CK_ULONG max, CK_ULONG *found)
{
    CK_RV rv, rv2;

    *found = 0;
    if ((rv = call->fl->C_FindObjectsInit(call->h, tmpl, n)) != CKR_OK)
        return rv;
    rv = call->fl->C_FindObjects(call->h, out, max, found);
    rv2 = call->fl->C_FindObjectsFinal(call->h);
    return rv != CKR_OK ? rv : rv2;
}

CK_RV eg_p11_get_attributes(eg_p11_call *call, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    return call->fl->C_GetAttributeValue(call->h, obj, tmpl, n);
}

CK_RV eg_p11_get_attribute_alloc(eg_p11_call *call, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
                                 uint8_t **out, size_t *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv;

    if ((rv = eg_p11_get_attributes(call, obj, &a, 1)) != CKR_OK)
        return rv;
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    if ((a.pValue = OPENSSL_zalloc(a.ulValueLen + 1)) == NULL)
        return CKR_HOST_MEMORY;
    if ((rv = eg_p11_get_attributes(call, obj, &a, 1)) != CKR_OK) {
        OPENSSL_free(a.pValue);
        return rv;
    }
    *out = a.pValue;
    *len = a.ulValueLen;
    return CKR_OK;
}

CK_RV eg_p11_sign(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE key, const uint8_t *in,
                  size_t inlen, uint8_t *sig, size_t *siglen)
{
    CK_ULONG len = *siglen;
    CK_RV rv;

    if ((rv = call->fl->C_SignInit(call->h, mech, key)) != CKR_OK)
        return rv;
    rv = call->fl->C_Sign(call->h, (CK_BYTE *)in, inlen, sig, &len);
    if (rv == CKR_OK) {
        *siglen = len;
        eg_token_count_sign(call->tok);
    }
    return rv;
}

CK_RV eg_p11_generate_key_pair(eg_p11_call *call, CK_MECHANISM *mech, CK_ATTRIBUTE *pub,
                               CK_ULONG npub, CK_ATTRIBUTE *priv, CK_ULONG npriv,
                               CK_OBJECT_HANDLE *hpub, CK_OBJECT_HANDLE *hpriv)
{
    return call->fl->C_GenerateKeyPair(call->h, mech, pub, npub, priv, npriv, hpub, hpriv);
}

CK_RV eg_p11_generate_key(eg_p11_call *call, CK_MECHANISM *mech, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                          CK_OBJECT_HANDLE *out)
{
    return call->fl->C_GenerateKey(call->h, mech, tmpl, n, out);
}

CK_RV eg_p11_create_object(eg_p11_call *call, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out)
{
    return call->fl->C_CreateObject(call->h, tmpl, n, out);
}

CK_RV eg_p11_destroy_object(eg_p11_call *call, CK_OBJECT_HANDLE obj)
{
    return call->fl->C_DestroyObject(call->h, obj);
}

CK_RV eg_p11_wrap_key(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE wrapping,
                      CK_OBJECT_HANDLE key, uint8_t *out, size_t *outlen)
{
    CK_ULONG len = *outlen;
    CK_RV rv;

    rv = call->fl->C_WrapKey(call->h, mech, wrapping, key, out, &len);
    if (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL) /* the length it needs */
        *outlen = len;
    return rv;
}

CK_RV eg_p11_derive_key(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE base,
                        CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out)
{
    return call->fl->C_DeriveKey(call->h, mech, base, tmpl, n, out);
}

CK_RV eg_p11_generate_random(eg_p11_call *call, uint8_t *out, size_t len)
{
    return call->fl->C_GenerateRandom(call->h, out, len);
}

#define RV_NAMES(X)                                                                                \
    X(CKR_OK)                                                                                      \
    X(CKR_CANCEL)                                                                                  \
    X(CKR_HOST_MEMORY)                                                                             \
    X(CKR_SLOT_ID_INVALID)                                                                         \
    X(CKR_GENERAL_ERROR)                                                                           \
    X(CKR_FUNCTION_FAILED)                                                                         \
    X(CKR_ARGUMENTS_BAD)                                                                           \
    X(CKR_NO_EVENT)                                                                                \
    X(CKR_NEED_TO_CREATE_THREADS)                                                                  \
    X(CKR_CANT_LOCK)                                                                               \
    X(CKR_ATTRIBUTE_READ_ONLY)                                                                     \
    X(CKR_ATTRIBUTE_SENSITIVE)                                                                     \
    X(CKR_ATTRIBUTE_TYPE_INVALID)                                                                  \
    X(CKR_ATTRIBUTE_VALUE_INVALID)                                                                 \
    X(CKR_DATA_INVALID)                                                                            \
    X(CKR_DATA_LEN_RANGE)                                                                          \
    X(CKR_DEVICE_ERROR)                                                                            \
    X(CKR_DEVICE_MEMORY)                                                                           \
    X(CKR_DEVICE_REMOVED)                                                                          \
    X(CKR_ENCRYPTED_DATA_INVALID)                                                                  \
    X(CKR_ENCRYPTED_DATA_LEN_RANGE)                                                                \
    X(CKR_FUNCTION_CANCELED)                                                                       \
    X(CKR_FUNCTION_NOT_PARALLEL)                                                                   \
    X(CKR_FUNCTION_NOT_SUPPORTED)                                                                  \
    X(CKR_KEY_HANDLE_INVALID)                                                                      \
    X(CKR_KEY_SIZE_RANGE)                                                                          \
    X(CKR_KEY_TYPE_INCONSISTENT)                                                                   \
    X(CKR_KEY_NOT_NEEDED)                                                                          \
    X(CKR_KEY_CHANGED)                                                                             \
    X(CKR_KEY_NEEDED)                                                                              \
    X(CKR_KEY_INDIGESTIBLE)                                                                        \
    X(CKR_KEY_FUNCTION_NOT_PERMITTED)                                                              \
    X(CKR_KEY_NOT_WRAPPABLE)                                                                       \
    X(CKR_KEY_UNEXTRACTABLE)                                                                       \
    X(CKR_MECHANISM_INVALID)                                                                       \
    X(CKR_MECHANISM_PARAM_INVALID)                                                                 \
    X(CKR_OBJECT_HANDLE_INVALID)                                                                   \
    X(CKR_OPERATION_ACTIVE)                                                                        \
    X(CKR_OPERATION_NOT_INITIALIZED)                                                               \
    X(CKR_PIN_INCORRECT)                                                                           \
    X(CKR_PIN_INVALID)                                                                             \
    X(CKR_PIN_LEN_RANGE)                                                                           \
    X(CKR_PIN_EXPIRED)                                                                             \
    X(CKR_PIN_LOCKED)                                                                              \
    X(CKR_SESSION_CLOSED)                                                                          \
    X(CKR_SESSION_COUNT)                                                                           \
    X(CKR_SESSION_HANDLE_INVALID)                                                                  \
    X(CKR_SESSION_PARALLEL_NOT_SUPPORTED)                                                          \
    X(CKR_SESSION_READ_ONLY)                                                                       \
    X(CKR_SESSION_EXISTS)                                                                          \
    X(CKR_SESSION_READ_ONLY_EXISTS)                                                                \
    X(CKR_SESSION_READ_WRITE_SO_EXISTS)                                                            \
    X(CKR_SIGNATURE_INVALID)                                                                       \
    X(CKR_SIGNATURE_LEN_RANGE)                                                                     \
    X(CKR_TEMPLATE_INCOMPLETE)                                                                     \
    X(CKR_TEMPLATE_INCONSISTENT)                                                                   \
    X(CKR_TOKEN_NOT_PRESENT)                                                                       \
    X(CKR_TOKEN_NOT_RECOGNIZED)                                                                    \
    X(CKR_TOKEN_WRITE_PROTECTED)                                                                   \
    X(CKR_UNWRAPPING_KEY_HANDLE_INVALID)                                                           \
    X(CKR_UNWRAPPING_KEY_SIZE_RANGE)                                                               \
    X(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)                                                        \
    X(CKR_USER_ALREADY_LOGGED_IN)                                                                  \
    X(CKR_USER_NOT_LOGGED_IN)                                                                      \
    X(CKR_USER_PIN_NOT_INITIALIZED)                                                                \
    X(CKR_USER_TYPE_INVALID)                                                                       \
    X(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)                                                          \
    X(CKR_USER_TOO_MANY_TYPES)                                                                     \
    X(CKR_WRAPPED_KEY_INVALID)                                                                     \
    X(CKR_WRAPPED_KEY_LEN_RANGE)                                                                   \
    X(CKR_WRAPPING_KEY_HANDLE_INVALID)                                                             \
    X(CKR_WRAPPING_KEY_SIZE_RANGE)                                                                 \
    X(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)                                                          \
    X(CKR_RANDOM_SEED_NOT_SUPPORTED)                                                               \
    X(CKR_RANDOM_NO_RNG)                                                                           \
    X(CKR_DOMAIN_PARAMS_INVALID)                                                                   \
    X(CKR_BUFFER_TOO_SMALL)                                                                        \
    X(CKR_SAVED_STATE_INVALID)                                                                     \
    X(CKR_INFORMATION_SENSITIVE)                                                                   \
    X(CKR_STATE_UNSAVEABLE)                                                                        \
    X(CKR_CRYPTOKI_NOT_INITIALIZED)                                                                \
    X(CKR_CRYPTOKI_ALREADY_INITIALIZED)                                                            \
    X(CKR_MUTEX_BAD)                                                                               \
    X(CKR_MUTEX_NOT_LOCKED)                                                                        \
    X(CKR_FUNCTION_REJECTED)

const char *eg_p11_rv_name(CK_RV rv)
{
#define RV_CASE(name)                                                                              \
    case name:                                                                                     \
        return #name;
    switch (rv) {
        RV_NAMES(RV_CASE)
    default:
        return "CKR_VENDOR_DEFINED or unknown";
    }
#undef RV_CASE
}
