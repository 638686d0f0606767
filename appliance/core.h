/*
 * The core: profiles, policy, issuance, ledger and audit behind a
 * message-shaped API. Requests are plain structs of bytes and strings,
 * answers are a status, a reason and DER: nothing here knows HTTP, and no
 * pointer crosses in either direction that a socketpair could not carry.
 * The web layer authenticates; the core trusts what it is told about who
 * asked (principal, auth kind) but enforces the profile's policy on every
 * request itself, so a compromised front end cannot mint what a profile
 * forbids.
 */
#ifndef EG_CORE_H
#define EG_CORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct eg_core eg_core;

/* Outcomes; the web layer maps them to HTTP statuses (in parentheses). */
typedef enum eg_status {
    EG_OK = 0,          /* (200) */
    EG_NOTHING,         /* (204) csrattrs: nothing to say */
    EG_MALFORMED,       /* (400) unparsable CSR, bad signature on the CSR */
    EG_FORBIDDEN,       /* (403) refused by policy: reason names the dimension */
    EG_UNKNOWN_PROFILE, /* (404) */
    EG_UNAVAILABLE,     /* (503) token or ledger unavailable; retry_after set */
    EG_TOO_MANY,        /* (429) the profile's issue_limit for this principal; retry_after set */
    EG_INTERNAL,        /* (500) */
} eg_status;

/* What the core's audit events are; also the web layer's (auth, wire) events. */
typedef enum eg_audit_kind {
    EG_AUDIT_ISSUED,       /* certificate issued (or re-sent for an idempotent retry) */
    EG_AUDIT_REISSUED,     /* simplereenroll issued */
    EG_AUDIT_SERVERKEYGEN, /* serverkeygen: a key generated in the token and certified */
    EG_AUDIT_CACERTS,      /* not stored: too frequent; logged at debug */
    EG_AUDIT_AUTH_MISSING, /* no credentials where some were needed */
    EG_AUDIT_AUTH_BAD_PASSWORD,
    EG_AUDIT_AUTH_UNKNOWN_USER,
    EG_AUDIT_AUTH_CERT_UNTRUSTED, /* client certificate does not chain to this profile */
    EG_AUDIT_AUTH_CERT_MISMATCH,  /* reenroll: subject/SAN differ from the certificate */
    EG_AUDIT_AUTH_CERT_BLOCKED,   /* client certificate listed in [server] blocked_certs */
    EG_AUDIT_AUTH_THROTTLED,      /* too many wrong passwords from this source: not checked */
    EG_AUDIT_POLICY,              /* refused by policy; dimension says which */
    EG_AUDIT_MALFORMED,           /* unparsable request or CSR */
    EG_AUDIT_CSR_SIGNATURE,       /* the CSR's own signature does not verify */
    EG_AUDIT_LIMIT,               /* body too large, CL+TE, wrong media type, wrong method */
    EG_AUDIT_ISSUE_LIMIT,         /* the profile's issue_limit reached for this principal */
    EG_AUDIT_UNAVAILABLE,         /* token or ledger down */
    EG_AUDIT_INTERNAL,
} eg_audit_kind;

/* Policy dimensions named in EG_AUDIT_POLICY events and 403 reasons. */
typedef enum eg_policy_dim {
    EG_DIM_NONE = 0,
    EG_DIM_KEY,       /* key type or size */
    EG_DIM_EKU,       /* requested EKU not allowed */
    EG_DIM_SAN,       /* a SAN not allowed, or none where one is required */
    EG_DIM_SUBJECT,   /* subject attribute not allowed */
    EG_DIM_VALIDITY,  /* requested validity too long (CSR asks via extension) */
    EG_DIM_ATTRS,     /* a required CSR attribute is missing */
    EG_DIM_REKEY,     /* reenroll with a new key where the profile forbids it */
    EG_DIM_BINDING,   /* the CSR does not carry the connection's channel binding */
    EG_DIM_SIGNATURE, /* the CSR is signed with a digest the profile does not accept */
} eg_policy_dim;

const char *eg_audit_kind_name(eg_audit_kind k); /* "issued", "auth.bad_password", ... */
const char *eg_policy_dim_name(eg_policy_dim d); /* "key", "eku", "san", ... */

/* One answer. Free with eg_answer_clear(). */
typedef struct eg_answer {
    eg_status status;
    eg_audit_kind event;
    eg_policy_dim dim;
    char reason[256];     /* for the log; never a secret. For the client too, but see below */
    unsigned retry_after; /* seconds, with EG_UNAVAILABLE */
    /*
     * EG_UNAVAILABLE and EG_INTERNAL from enroll and serverkeygen: a reference
     * (8 hex digits) that starts the reason as "ref=..." in the audit line. The
     * client is told the reason itself only when reason_public; otherwise the
     * reason names internals (PKCS#11 calls and URIs, return codes, the
     * ledger) and the client gets the reference to quote instead.
     */
    char ref[9];
    bool reason_public;
    uint8_t *der; /* EG_OK: certs-only PKCS#7 (DER) holding the issued certificate
                     (enroll) or the CA chain (cacerts); CsrAttrs (csrattrs) */
    size_t der_len;
    /* serverkeygen, EG_OK: the key part (RFC 7030 4.4.2) and its media type. When
       key_secure, key is a plaintext PKCS#8 in OpenSSL's secure heap: copy it only
       into secure memory; eg_answer_clear wipes it. */
    uint8_t *key;
    size_t key_len;
    bool key_secure;
    const char *key_ctype;
} eg_answer;

void eg_answer_clear(eg_answer *a);

typedef struct eg_enroll_req {
    const char *profile;   /* URL label; "" is the default profile */
    const char *principal; /* who, as authenticated: "basic:alice", "cert:<sha256 hex>",
                              "anonymous" */
    unsigned auth;         /* the EG_AUTH_* mode that admitted the request */
    const uint8_t *csr;    /* PKCS#10, DER */
    size_t csr_len;
    /* simplereenroll: the client certificate that authenticated the request
       (DER); the core checks Subject and SAN equality and rekey policy. NULL
       for simpleenroll. */
    const uint8_t *current_cert;
    size_t current_cert_len;
    /* How many seconds ago current_cert expired, when the profile's renew_expired_days let it
       renew itself anyway (the audit says so); 0 otherwise. */
    long current_expired_s;
    const char *peer; /* client address, for the audit record */
    /* The TLS connection's channel binding, checked against the CSR's challengePassword when
       the profile requires it (RFC 7030 3.5): "tls-unique" or "tls-exporter" (RFC 9266);
       type NULL when the transport did not say; length 0 when it has no binding to trust (TLS
       1.2 without the extended master secret, RFC 7627). */
    const char *channel_binding_type;
    const uint8_t *channel_binding;
    size_t channel_binding_len;
} eg_enroll_req;

/*
 * Opens the token (from cfg's [token]), loads every profile's CA key through
 * the provider and its chain, and opens the ledger. The core keeps its own
 * copy of what it needs from cfg.
 */
int eg_core_open(const eg_config *cfg, eg_core **out);
void eg_core_close(eg_core *core);
/*
 * For a process that exits without eg_core_close because requests are stuck in token calls:
 * the ledger commits what is queued and stops writing (eg_ledger_stop); a stuck request that
 * comes back fails instead of writing. The core stays allocated.
 */
void eg_core_stop_writes(eg_core *core);

/* A reload's profiles, loaded and checked but not yet serving. */
typedef struct eg_core_next eg_core_next;

/*
 * A reload's first step: loads cfg's profiles (CA keys from the token already
 * open, chains, CSR attributes) and checks the serverkeygen ones against the
 * token, probing it when they ask for more than it was probed for. Nothing
 * changes for the requests in flight, so call it without any lock they take:
 * a slow or hung token then delays the reload, not them. 0 with *out, or -1
 * with the reason on stderr and the running profiles unchanged. One reload at
 * a time: a prepared one is committed before the next prepare.
 */
int eg_core_reload_prepare(eg_core *core, const eg_config *cfg, eg_core_next **out);
/* The second: puts next in place of the running profiles once the calls in flight are done
   with those, and takes cfg's audit retention. Touches no token; cannot fail. */
void eg_core_reload_commit(eg_core *core, const eg_config *cfg, eg_core_next *next);

/* A readers-writer lock that prefers writers: a reload must not wait behind a
   steady stream of requests. */
int eg_core_lock_init(pthread_rwlock_t *lock);

/* simpleenroll / simplereenroll: policy, lint, serial, ledger intent, sign, ledger.
   These three return 0 with *out filled for every outcome (the status says which; one
   audit event per enroll), -1 only for NULL arguments. */
int eg_core_enroll(eg_core *core, const eg_enroll_req *req, eg_answer *out);
/*
 * serverkeygen (RFC 7030 4.4): as simpleenroll, but the key pair is generated
 * in the token for the request and returned in *out's key part, encrypted or
 * (where the profile opts in) in plaintext; the CSR's own key and signature
 * are ignored (4.4.1). Every request gets a new key and certificate: a retry
 * is never answered from the ledger, because the earlier key is gone.
 */
int eg_core_serverkeygen(eg_core *core, const eg_enroll_req *req, eg_answer *out);
/* cacerts: the profile's CA chain as certs-only PKCS#7 (DER), built once at open. */
int eg_core_cacerts(eg_core *core, const char *profile, eg_answer *out);
/* csrattrs: the profile's CsrAttrs (DER), with the RFC 9908 template when the
   profile fixes the subject or extensions; EG_NOTHING when there is nothing to say. */
int eg_core_csrattrs(eg_core *core, const char *profile, eg_answer *out);

/* Counters for tests and the admin API. */
typedef struct eg_core_stats {
    uint64_t token_signatures; /* C_Sign calls the core's token handle made */
    int64_t certificates;      /* certificates in the ledger; -1 if it could not count */
} eg_core_stats;
void eg_core_get_stats(eg_core *core, eg_core_stats *out);

/*
 * Records an event the web layer saw (auth failures, malformed wire input) in
 * the ledger and the log, in the same form as the core's own.
 */
void eg_core_audit(eg_core *core, const char *profile, const char *principal, const char *peer,
                   eg_audit_kind kind, eg_policy_dim dim, const char *reason);

#endif
