/*
 * Server-side key generation (RFC 7030 4.4), the token half: what the token
 * can do (found by real operations on throwaway session objects), and one
 * key pair generated in the token for one request, returned either inside a
 * CMS EnvelopedData whose every secret part the token made (encrypt), or as
 * a PKCS#8 in OpenSSL's secure heap (plaintext, opt-in per profile).
 *
 * The request's policy, ledger and certificate are the core's (core.c); the
 * DER around the token's ciphertext is skg_cms.c's.
 */
#ifndef EG_SKG_H
#define EG_SKG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "config.h"
#include "core.h"
#include "csr.h"
#include "issue.h"
#include "p11.h"

/* What one token can do for serverkeygen; each CK_RV is what the probe's operation answered. */
typedef struct eg_skg_caps {
    CK_RV keygen_ec;  /* an extractable P-256 session key pair */
    CK_RV keygen_rsa; /* an extractable RSA-2048 session key pair; CKR_OK when not probed */
    CK_RV cbc_pad;    /* C_WrapKey(CKM_AES_CBC_PAD) of a private key under an AES-256 key:
                         the encrypted content, id-aes256-CBC */
    CK_RV cbc_pad128; /* the same under an AES-128 key: id-aes128-CBC */
    CK_RV kwp;        /* C_WrapKey(CKM_AES_KEY_WRAP_PAD) of a private key */
    CK_RV import;     /* C_CreateObject of a session AES key (plaintext's throwaway key) */
    CK_RV kt[3];      /* C_WrapKey of an AES key to an RSA public key: EG_SKG_RSA_* */
    CK_RV aes_wrap;   /* C_WrapKey(CKM_AES_KEY_WRAP) of an AES key (KEKRI, KARI) */
    CK_RV kari[2][2]; /* CKM_ECDH1_DERIVE with the X9.63 KDF to an AES-256 KEK that wraps,
                         [P-256, P-384][CKD_SHA256_KDF, CKD_SHA384_KDF] */
    CK_RV kari128;    /* the same, P-256 and CKD_SHA256_KDF, to an AES-128 KEK: id-aes128-wrap */
    bool wraps_unextractable; /* the token wrapped a CKA_EXTRACTABLE=FALSE key (NSS) */
} eg_skg_caps;

typedef struct eg_skg_profile eg_skg_profile;

/* Runs the probes; rsa: also an RSA-2048 key pair (slow on SoftHSM). 0, or -1 when the
   token could not be used at all. */
int eg_skg_probe(eg_token *tok, bool rsa, eg_skg_caps *out);

/*
 * Inside eg_token_run(): a session key pair of spec, the private half
 * sensitive and extractable (by wrapping only), for use (CKA_SIGN for a key
 * to certify, CKA_DERIVE for an ECDH ephemeral); recorded in objs.
 */
CK_RV eg_skg_temp_pair(eg_p11_call *call, const eg_keygen_spec *spec, CK_ATTRIBUTE_TYPE use,
                       eg_p11_temp_objs *objs, CK_OBJECT_HANDLE *hpub, CK_OBJECT_HANDLE *hpriv);

/*
 * The RSA size serverkeygen generates for key-type entry r and a CSR key of want
 * bits (0: the entry's smallest): 2048, 3072 or 4096 only, want itself when it is
 * one the entry allows, else the nearest above, else below. 0 when r allows none.
 */
unsigned eg_skg_rsa_bits(const eg_keyrule_cfg *r, int want);

/* Adds what p's serverkeygen needs probed: *any when it is on, *rsa when it makes RSA keys. */
void eg_skg_wants(const eg_profile_cfg *p, bool *any, bool *rsa);

/*
 * Checks p's serverkeygen settings against caps and the token (each KEK must
 * be a wrapping AES key in it); prints each problem to stderr as
 * PATH:LINE: [profile NAME] key: message (path: the configuration file);
 * returns how many.
 */
int eg_skg_check_profile(eg_token *tok, const char *path, const eg_profile_cfg *p,
                         const eg_skg_caps *caps, const eg_skg_profile *sp);

/*
 * estgated --check-config: when a profile uses serverkeygen, opens the token,
 * probes it and checks every such profile, printing each problem as
 * FILE:LINE: [profile NAME] key: message. Returns how many problems.
 */
int eg_skg_check_config(const eg_config *cfg);

/* A profile's serverkeygen state, read-only after load. */
struct eg_skg_profile {
    STACK_OF(X509) * recipients;          /* serverkeygen_recipients, found by SKI */
    struct eg_p11_uri *keks[EG_MAX_KEKS]; /* serverkeygen_kek URIs, parsed once, in order */
};

/*
 * Inside eg_token_run(): the one secret key a URI names (object= and/or id=).
 * CKR_KEY_HANDLE_INVALID when there is none, CKR_KEY_FUNCTION_NOT_PERMITTED
 * when the URI names more than one.
 */
CK_RV eg_skg_find_secret(eg_p11_call *call, const struct eg_p11_uri *uri, CK_OBJECT_HANDLE *out);

int eg_skg_profile_load(const eg_profile_cfg *cfg, eg_skg_profile *out, char *err, size_t cap);
void eg_skg_profile_clear(eg_skg_profile *p);

/* The media types of a key part. */
#define EG_SKG_CT_PKCS8     "application/pkcs8"
#define EG_SKG_CT_ENVELOPED "application/pkcs7-mime; smime-type=server-generated-key"

/* One generated key, ready for its certificate and its answer. */
typedef struct eg_skg_result {
    eg_pubkey_bits pub; /* the public half, for the certificate; pub.bits is owned here */
    uint8_t *key;       /* the key part's DER: EnvelopedData, or the PKCS#8 (secure heap) */
    size_t key_len;
    bool key_secure;       /* key is in the secure heap and holds a plaintext private key */
    const char *key_ctype; /* EG_SKG_CT_* */
    char what[128];        /* for the audit record: mode, key, recipient; never a secret */
} eg_skg_result;

void eg_skg_result_clear(eg_skg_result *r);

/*
 * How eg_skg_generate would return csr's key, decided as it decides it (the request's
 * attributes, the profile, caps) without a token call: *encrypt, or plaintext. EG_OK, or the
 * status and reason (in why) eg_skg_generate would refuse the request with.
 */
eg_status eg_skg_mode(const eg_skg_caps *caps, const eg_profile_cfg *cfg, const eg_skg_profile *sp,
                      const eg_csr *csr, bool *encrypt, char *why, size_t cap);

/*
 * Generates the key pair in the token for csr as profile cfg says, protects
 * it as the request asks (RFC 7030 4.4.1.1, 4.4.1.2) and destroys every
 * token object it made. EG_OK with *out filled, or another status with the
 * reason in why (nothing left in the token).
 */
eg_status eg_skg_generate(eg_token *tok, const eg_skg_caps *caps, const eg_profile_cfg *cfg,
                          const eg_skg_profile *sp, const eg_csr *csr, eg_skg_result *out,
                          char *why, size_t cap);

#endif
