/* Cryptoki wrapper: every C_* call of estgate goes through these functions. */
#ifndef EG_P11_H
#define EG_P11_H

#include <stdbool.h>
#include <openssl/evp.h>

#include "signer.h"

/* Tokens. */
int eg_token_open(const eg_token_config *cfg, eg_token **out);
void eg_token_free(eg_token *tok);
const char *eg_token_label(const eg_token *tok);
bool eg_token_has_mechanism(eg_token *tok, CK_MECHANISM_TYPE mech, CK_FLAGS needed);
/* EG_CALLS_CONCURRENT or EG_CALLS_SERIAL: how the token's module is called. */
eg_calls eg_token_calls(const eg_token *tok);
/* "auto", "concurrent" or "serial". */
const char *eg_calls_name(eg_calls calls);
/* What calls means for a module first loaded from module_path: CONCURRENT or SERIAL. */
eg_calls eg_calls_resolve(const char *module_path, eg_calls calls);
/* A resolved mode as the logs say it: "one at a time" or "concurrent". */
const char *eg_calls_words(eg_calls resolved);
/* What connections (0: auto) means for a module first loaded from module_path. */
unsigned eg_connections_resolve(const char *module_path, unsigned connections);
/* "1 connection", "up to 4 connections": as the logs say it. */
const char *eg_connections_words(unsigned resolved);
/* How many instances of its module the token may use (its module's number). */
unsigned eg_token_connections(const eg_token *tok);

typedef struct eg_token_stats {
    uint64_t sign_calls; /* C_Sign calls that returned CKR_OK */
    uint64_t recoveries; /* retries after a lost session, login or token connection */
    uint64_t sessions_opened;
    unsigned connections_used; /* module instances this token has opened sessions on */
} eg_token_stats;
void eg_token_get_stats(eg_token *tok, eg_token_stats *out);

/*
 * Whether the process's tokens hang: the age in milliseconds of the oldest job
 * step still under way (eg_token_run and the rest, on any token: a try at the
 * job's function, or a recovery and the try after it), 0 when no job is under
 * way. *waiting (may be NULL): how many jobs are under way. A module that
 * fails fast is not stalled; one call that never returns (an HSM gone silent
 * behind an open connection, one stopped p11-kit server process) is, however
 * many other calls keep returning.
 */
uint64_t eg_token_stalled_ms(unsigned *waiting);

/*
 * Whether a token of this process refused its PIN (C_Login answered
 * CKR_PIN_INCORRECT, CKR_PIN_LEN_RANGE, CKR_PIN_LOCKED or CKR_PIN_EXPIRED),
 * or showed a locked PIN or one a wrong login would lock
 * (CKF_USER_PIN_LOCKED, CKF_USER_PIN_FINAL_TRY), at eg_token_open or later.
 * That token tries no login again: its jobs fail at once with the refusal's
 * CK_RV. why (may be NULL) gets the first refusal, in words that say what to
 * do.
 */
bool eg_token_login_refused(char *why, size_t cap);

/*
 * Run fn with a pooled, logged-in session. If fn returns a CK_RV that says the
 * session, the login or the token connection was lost, the token is recovered
 * (sessions reopened, re-login, module re-initialised if needed) and fn runs
 * again, until cfg->recover_ms has passed. fn must be safe to repeat: it may
 * only create session objects or idempotent state before it fails.
 * Returns the last CK_RV of fn (or of the recovery).
 */
typedef CK_RV eg_p11_fn(eg_p11_call *call, void *arg);
CK_RV eg_token_run(eg_token *tok, eg_p11_fn *fn, void *arg);
/*
 * eg_token_run() for a job that may keep its session for long (an RSA key
 * generation: hundreds of milliseconds, seconds on some HSMs). With several
 * module instances, other jobs keep off the one it runs on, the ones already
 * there go first, and long jobs leave one instance to the rest, queueing
 * behind each other instead.
 */
CK_RV eg_token_run_long(eg_token *tok, eg_p11_fn *fn, void *arg);

/* Inside eg_token_run(): the session's token and the wrapped C_* calls. */
eg_token *eg_p11_call_token(eg_p11_call *call);
CK_RV eg_p11_find_objects(eg_p11_call *call, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out,
                          CK_ULONG max, CK_ULONG *found);
CK_RV eg_p11_get_attributes(eg_p11_call *call, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE *tmpl,
                            CK_ULONG n);
/* One variable-length attribute in OPENSSL_malloc'd memory, NUL-terminated for labels. */
CK_RV eg_p11_get_attribute_alloc(eg_p11_call *call, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type,
                                 uint8_t **out, size_t *len);
CK_RV eg_p11_sign(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE key, const uint8_t *in,
                  size_t inlen, uint8_t *sig, size_t *siglen);
CK_RV eg_p11_generate_key_pair(eg_p11_call *call, CK_MECHANISM *mech, CK_ATTRIBUTE *pub,
                               CK_ULONG npub, CK_ATTRIBUTE *priv, CK_ULONG npriv,
                               CK_OBJECT_HANDLE *hpub, CK_OBJECT_HANDLE *hpriv);
CK_RV eg_p11_generate_key(eg_p11_call *call, CK_MECHANISM *mech, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                          CK_OBJECT_HANDLE *out);
CK_RV eg_p11_create_object(eg_p11_call *call, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                           CK_OBJECT_HANDLE *out);
CK_RV eg_p11_destroy_object(eg_p11_call *call, CK_OBJECT_HANDLE obj);
CK_RV eg_p11_wrap_key(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE wrapping,
                      CK_OBJECT_HANDLE key, uint8_t *out, size_t *outlen);
CK_RV eg_p11_generate_random(eg_p11_call *call, uint8_t *out, size_t len);
CK_RV eg_p11_derive_key(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE base,
                        CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out);

/* CK_RV as text, e.g. "CKR_PIN_INCORRECT". */
const char *eg_p11_rv_name(CK_RV rv);

/* Keys. */
typedef struct eg_keygen_spec {
    eg_key_type type;
    unsigned bits;     /* RSA modulus bits */
    int curve_nid;     /* EC: NID_X9_62_prime256v1 or NID_secp384r1 */
    const char *label; /* CKA_LABEL of both halves */
    const uint8_t *id; /* CKA_ID of both halves; NULL: random 16 bytes */
    size_t idlen;
    bool token_object; /* CKA_TOKEN: persists in the token */
    bool wrappable;    /* CKA_EXTRACTABLE: may leave only by C_WrapKey */
} eg_keygen_spec;

/*
 * Runs a job that generates the key spec describes: with eg_token_run_long()
 * for RSA (a prime search), with eg_token_run() for EC.
 */
CK_RV eg_token_run_keygen(eg_token *tok, const eg_keygen_spec *spec, eg_p11_fn *fn, void *arg);

/* Generates a key pair in the token: sensitive, private, signing. */
int eg_p11_key_generate(eg_token *tok, const eg_keygen_spec *spec, eg_p11_key **out);
/* Finds the private key a URI names (object=, id=, type=private). */
int eg_p11_key_open(eg_token *tok, const char *uri, eg_p11_key **out);
eg_p11_key *eg_p11_key_ref(eg_p11_key *key);
void eg_p11_key_free(eg_p11_key *key);

eg_key_type eg_p11_key_type(const eg_p11_key *key);
eg_token *eg_p11_key_token(const eg_p11_key *key);
/* The public half as a software EVP_PKEY (default provider); caller frees. */
EVP_PKEY *eg_p11_key_public(const eg_p11_key *key);
/* RFC 7512 URI of the key, e.g. "pkcs11:token=CA;id=%01%02;type=private". */
const char *eg_p11_key_uri(const eg_p11_key *key);
const uint8_t *eg_p11_key_id(const eg_p11_key *key, size_t *len);
/* Raw C_Sign with the key: digest or message in, signature out (raw r||s for ECDSA). */
int eg_p11_key_sign(eg_p11_key *key, CK_MECHANISM *mech, const uint8_t *in, size_t inlen,
                    uint8_t *sig, size_t *siglen);
/* Reads CK_BBOOL attributes of the private key (for checks and listings). */
int eg_p11_key_get_bool(eg_p11_key *key, CK_ATTRIBUTE_TYPE type, bool *out);
/* Destroys the key pair in the token. The handle stays valid to free. */
int eg_p11_key_destroy(eg_p11_key *key);

/*
 * Key transport (p11_wrap.c), for use inside one eg_token_run() callback:
 * temporary session objects, wrapping, destruction. Mechanisms and key
 * usages are the caller's; these calls add only what makes an object
 * temporary (CKA_TOKEN false) and, for private and secret keys, sensitive.
 * Callers must not repeat the attributes named below. Every object made is
 * recorded in objs; eg_p11_temp_destroy() destroys them all.
 */
#define EG_P11_MAX_TEMP 8
typedef struct eg_p11_temp_objs {
    CK_OBJECT_HANDLE h[EG_P11_MAX_TEMP];
    size_t n;
} eg_p11_temp_objs;
void eg_p11_temp_init(eg_p11_temp_objs *objs);
/* Adds CKA_TOKEN false to both halves, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE true to priv. */
CK_RV eg_p11_temp_keypair(eg_p11_call *call, CK_MECHANISM *mech, const CK_ATTRIBUTE *pub,
                          CK_ULONG npub, const CK_ATTRIBUTE *priv, CK_ULONG npriv,
                          eg_p11_temp_objs *objs, CK_OBJECT_HANDLE *hpub, CK_OBJECT_HANDLE *hpriv);
/* Adds CKA_TOKEN false and CKA_SENSITIVE true (e.g. CKM_AES_KEY_GEN + CKA_VALUE_LEN). */
CK_RV eg_p11_temp_secret_key(eg_p11_call *call, CK_MECHANISM *mech, const CK_ATTRIBUTE *attrs,
                             CK_ULONG n, eg_p11_temp_objs *objs, CK_OBJECT_HANDLE *out);
/* Imports a secret key of value (CKA_CLASS, CKA_VALUE, CKA_TOKEN false added). */
CK_RV eg_p11_temp_secret_import(eg_p11_call *call, const uint8_t *value, size_t len,
                                const CK_ATTRIBUTE *attrs, CK_ULONG n, eg_p11_temp_objs *objs,
                                CK_OBJECT_HANDLE *out);
/* C_DeriveKey to a session secret key (CKA_CLASS, CKA_TOKEN false, CKA_SENSITIVE true added). */
CK_RV eg_p11_temp_derive(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE base,
                         const CK_ATTRIBUTE *attrs, CK_ULONG n, eg_p11_temp_objs *objs,
                         CK_OBJECT_HANDLE *out);
/* Imports an RSA or EC public key; adds CKA_CLASS, CKA_KEY_TYPE, CKA_TOKEN and the key values. */
CK_RV eg_p11_temp_public_key(eg_p11_call *call, const EVP_PKEY *pub, const CK_ATTRIBUTE *attrs,
                             CK_ULONG n, eg_p11_temp_objs *objs, CK_OBJECT_HANDLE *out);
/* C_WrapKey into OPENSSL_malloc'd memory (ciphertext only: nothing to wipe). */
CK_RV eg_p11_wrap_alloc(eg_p11_call *call, CK_MECHANISM *mech, CK_OBJECT_HANDLE wrapping,
                        CK_OBJECT_HANDLE key, uint8_t **out, size_t *outlen);
/* A public key object (RSA or EC) as a software EVP_PKEY (default provider). */
CK_RV eg_p11_object_public(eg_p11_call *call, CK_OBJECT_HANDLE pub, EVP_PKEY **out);
/* The uncompressed point (04 || X || Y) of an EC public key object, OPENSSL_malloc'd. */
CK_RV eg_p11_ec_point(eg_p11_call *call, CK_OBJECT_HANDLE pub, uint8_t **out, size_t *len);
/*
 * Destroys every recorded object, newest first; the first failure is returned. An object whose
 * destruction fails for a lost login is destroyed again after logging in; one that still cannot
 * be destroyed goes with its session, which is closed when the job returns (PKCS#11 destroys a
 * session's objects with it) instead of going back to the pool.
 */
CK_RV eg_p11_temp_destroy(eg_p11_call *call, eg_p11_temp_objs *objs);

/* Inside eg_token_run(): logs the session's application in again (the login was lost). */
CK_RV eg_p11_call_login(eg_p11_call *call);
/* Inside eg_token_run(): the session is closed when the job returns, with what it holds. */
void eg_p11_call_discard(eg_p11_call *call);

/* Key-pair mechanism and the public template's key parameters for a spec (RSA or EC). */
typedef struct eg_p11_keyparams {
    CK_MECHANISM mech;
    CK_ATTRIBUTE attrs[2]; /* point into this struct: do not copy it */
    CK_ULONG n;
    CK_ULONG bits;
    CK_BYTE e[3];
    unsigned char *ec_params;
} eg_p11_keyparams;
int eg_p11_keyparams_init(eg_p11_keyparams *kp, const eg_keygen_spec *spec);
void eg_p11_keyparams_clear(eg_p11_keyparams *kp);

/*
 * Slot administration (estgate-provision init-token): below eg_token, because
 * a token that is not initialised has no label to be opened by. The module is
 * loaded with init_args as eg_token_open() would load it.
 */
typedef struct eg_slot_info {
    CK_SLOT_ID id;
    bool token_present;
    bool initialized;
    char label[33]; /* without the padding; "" when not initialised */
} eg_slot_info;

/* The module's slots; *out is freed with OPENSSL_free(). 0, or -1 with an error. */
int eg_module_slots(const char *module, const char *init_args, eg_slot_info **out, size_t *n);
/*
 * C_InitToken on slot with label and so_pin, then as the SO C_InitPIN with
 * user_pin, then a user login to check it. *new_slot is where the token is
 * afterwards (SoftHSM gives it a new slot id). 0, or -1 with an error.
 */
int eg_module_init_token(const char *module, const char *init_args, CK_SLOT_ID slot,
                         const char *label, const char *so_pin, const char *user_pin,
                         CK_SLOT_ID *new_slot);

#endif
