/*
 * estgated's configuration: one INI file (parsed with inih), read at start and
 * on reload. Every key is documented in docs/configuration.md. Parsing never
 * stops at the first mistake: every problem is reported with file:line, the
 * section and the key, so `estgated --check-config FILE` can list them all.
 *
 *   [server]            listeners, TLS, limits, ledger, logging
 *   [token]             the PKCS#11 module and token the keys live in
 *   [profile NAME]      one per EST label; NAME "default" serves /.well-known/est/
 *
 * A parsed configuration is plain data (strings, numbers, DER blobs): no
 * token handles, no OpenSSL objects, so that it can be handed across a
 * process boundary later and freed with one call.
 */
#ifndef EG_CONFIG_H
#define EG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "blocklist.h"
#include "signer.h"

#define EG_MAX_PROFILES  64
#define EG_MAX_LISTENERS 8
#define EG_MAX_RULES     32 /* per list: key types, EKUs, SAN rules, users, ... */

/* Auth modes; a profile may combine them (any one that succeeds admits). */
enum {
    EG_AUTH_NONE = 1u << 0,  /* anyone who can reach the listener */
    EG_AUTH_BASIC = 1u << 1, /* HTTP Basic against the profile's users */
    EG_AUTH_MTLS = 1u << 2,  /* a client certificate that chains to the profile's bundle */
};

typedef struct eg_listener_cfg {
    char *address;    /* "127.0.0.1", "::", "0.0.0.0" */
    unsigned port;    /* 8443 */
    bool allow_tls12; /* TLS 1.3 only unless set: legacy devices opt in per listener */
} eg_listener_cfg;

typedef struct eg_user_cfg {
    char *name;
    char *hash; /* "$pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>", never a password */
} eg_user_cfg;

/* Allowed key: type "rsa" (min_bits..max_bits), "ec" (curve NID), "ed25519". */
typedef struct eg_keyrule_cfg {
    int type;      /* EVP_PKEY_RSA, EVP_PKEY_EC, EVP_PKEY_ED25519 */
    int min_bits;  /* RSA */
    int max_bits;  /* RSA; 0: no upper bound beyond 8192 */
    int curve_nid; /* EC */
} eg_keyrule_cfg;

/* A SAN rule. A requested SAN is allowed when some rule of its type matches. */
typedef enum eg_san_type {
    EG_SAN_DNS,   /* pattern: "example.com" exact, ".example.com" any name below,
                     "*.example.com" a one-label wildcard requested literally */
    EG_SAN_IP,    /* pattern: CIDR, "10.0.0.0/8", "2001:db8::/32" */
    EG_SAN_EMAIL, /* pattern: domain, "example.com" (local part free) */
    EG_SAN_URI,   /* pattern: prefix, "urn:dev:ops:" or "https://id.example.com/" */
} eg_san_type;

typedef struct eg_sanrule_cfg {
    eg_san_type type;
    char *pattern;
} eg_sanrule_cfg;

/* Server-side key generation (RFC 7030 4.4), per profile. */
enum {
    EG_SKG_PLAINTEXT = 1u << 0, /* the key returned as application/pkcs8 (opt-in) */
    EG_SKG_ENCRYPT = 1u << 1,   /* the key returned in a CMS EnvelopedData the token made */
};
/* Key-transport algorithms, in serverkeygen_rsa order (values of eg_skg_kt). */
enum { EG_SKG_RSA_OAEP_SHA1 = 0, EG_SKG_RSA_OAEP_SHA256 = 1, EG_SKG_RSA_PKCS1 = 2 };
#define EG_MAX_KEKS 16
/* A pre-shared key-encryption key: the DecryptKeyIdentifier that names it, and its token key. */
typedef struct eg_skg_kek_cfg {
    uint8_t id[64];
    size_t id_len;
    char *uri; /* pkcs11: URI of a CKK_AES secret key with CKA_WRAP */
    unsigned line;
} eg_skg_kek_cfg;

typedef struct eg_profile_cfg {
    char *name;  /* "default" or the label: [A-Za-z0-9_-]{1,64} */
    char *label; /* "" for default, else == name: the URL path segment */

    /* Issuing CA: a token key and its certificate chain (leaf CA first, PEM file). */
    char *ca_key_uri; /* pkcs11: URI */
    char *ca_chain_file;

    unsigned auth; /* EG_AUTH_* bits; at least one */
    char *realm;   /* Basic realm; default "estgate <name>" */
    eg_user_cfg users[EG_MAX_RULES];
    size_t nusers;
    char *client_ca_file; /* mtls: PEM trust bundle for client certificates */

    /* Policy. */
    eg_keyrule_cfg keys[EG_MAX_RULES];
    size_t nkeys;
    int ekus[EG_MAX_RULES]; /* NIDs: NID_client_auth, NID_server_auth, ...; issued as listed */
    size_t nekus;
    eg_sanrule_cfg sans[EG_MAX_RULES];
    size_t nsans;
    bool require_san;               /* refuse a CSR with no SAN */
    int subject_nids[EG_MAX_RULES]; /* subject attributes a CSR may carry (CN, O, OU, ...) */
    size_t nsubject_nids;
    char *subject_template;           /* when set: the issued subject, "CN=${cn},O=Example"; CSR
                                         subject attributes other than ${cn} are ignored */
    unsigned max_days;                /* validity; the issued notAfter is min(now+max_days, CA's) */
    bool allow_rekey;                 /* simplereenroll may change the key */
    unsigned renew_expired_days;      /* simplereenroll: a client certificate that expired up to
                                         this many days ago still renews itself (0: none may) */
    int required_attrs[EG_MAX_RULES]; /* CSR attributes that must be present, as NIDs
                                         (e.g. NID_pkcs9_challengePassword) */
    size_t nrequired_attrs;
    bool require_channel_binding; /* the CSR's challengePassword must be the base64 of the
                                     connection's tls-unique or tls-exporter (RFC 7030 3.5) */
    unsigned csr_digests;         /* bits of eg_csr_digests: what a CSR's signature may hash with;
                                     0 (not set): all of them; read with eg_profile_csr_digests */
    unsigned issue_limit;   /* at most this many new certificates per principal in a window of */
    unsigned issue_limit_s; /* this many seconds, from the first of them; 0: no limit */

    /* serverkeygen: off unless skg_modes has a bit; the *_line fields say where each key
       was set, for errors found when the token is probed. */
    unsigned skg_modes;
    unsigned skg_line;
    eg_keyrule_cfg skg_keys[EG_MAX_RULES]; /* what the token generates; default ec:P-256 */
    size_t nskg_keys;
    unsigned skg_keys_line;
    char *skg_recipients_file; /* PEM: certificates found by AsymmetricDecryptKeyIdentifier */
    bool skg_csr_key;          /* with no identifier, encrypt to the CSR's own public key */
    eg_skg_kek_cfg skg_keks[EG_MAX_KEKS];
    size_t nskg_keks;
    int skg_rsa[3]; /* EG_SKG_RSA_*, in order of preference; default oaep-sha256, oaep-sha1 */
    size_t nskg_rsa;
    unsigned skg_rsa_line;
} eg_profile_cfg;

/* The digests a profile's csr_digests may name; bit i of csr_digests is eg_csr_digests[i]. */
typedef struct eg_csr_digest {
    const char *name; /* "sha256" */
    int nid;          /* NID_sha256 */
} eg_csr_digest;

#define EG_CSR_DIGESTS     8
#define EG_CSR_DIGESTS_ALL ((1u << EG_CSR_DIGESTS) - 1) /* MD5 and older are never among them */
extern const eg_csr_digest eg_csr_digests[EG_CSR_DIGESTS];

/*
 * The signature algorithm (NID) a CSR whose key is key_type (EVP_PKEY_EC, EVP_PKEY_RSA) carries
 * when it hashes with md_nid, PKCS#1 v1.5 for RSA; NID_undef where OpenSSL 3.0 has none (ECDSA
 * with SHA-3), which estgate therefore cannot verify, or for a key type with no digest to choose.
 */
int eg_csr_signature_nid(int key_type, int md_nid);

/* The digests p accepts on a CSR's signature, as bits of eg_csr_digests. */
static inline unsigned eg_profile_csr_digests(const eg_profile_cfg *p)
{
    return p->csr_digests != 0 ? p->csr_digests : EG_CSR_DIGESTS_ALL;
}

/* The name of p's issue_limit window: "minute", "hour" or "day". */
const char *eg_issue_limit_period(const eg_profile_cfg *p);

typedef struct eg_config {
    char *path; /* the file this came from */

    /* [server] */
    eg_listener_cfg listeners[EG_MAX_LISTENERS];
    size_t nlisteners;
    char *tls_key_uri;                 /* pkcs11: URI of the TLS server key */
    char *tls_chain_file;              /* PEM: leaf then intermediates */
    size_t max_body;                   /* bytes; default 65536 */
    unsigned threads;                  /* request threads; default 16 * cores, at least 64 */
    unsigned keepalive_ms;             /* idle keep-alive; default 15000 */
    unsigned request_timeout_ms;       /* TLS handshake and each read or write; default 10000 */
    char *ledger_path;                 /* SQLite file; default /var/lib/estgate/ledger.db */
    char *blocked_certs_file;          /* client certificates refused everywhere; NULL */
    eg_blocklist *blocked;             /* that file's fingerprints, read once at load; NULL */
    unsigned auth_failures_per_minute; /* per source address (IPv6: /64); default 20, 0: off */
    unsigned audit_keep_days; /* audit rows of no certificate: age kept; default 400, 0: all */
    unsigned audit_keep_rows; /* and how many; default 1000000, 0: all */
    char *log_level;          /* "info" | "debug" | "warning" */
    unsigned log_refusals_per_second; /* refusal and failure lines a second; 100, 0: all */

    /* [token] */
    char *module_path;
    char *init_args; /* NULL unless the module needs one */
    char *token_label;
    char *pin_file;
    /* pin_file is a systemd credential that this process may not read: systemd hands
       credentials to the service's start commands, not to ExecReload's --check-config. */
    bool pin_not_here;
    unsigned pool_size;   /* 0: signer default */
    unsigned recover_ms;  /* 0: signer default */
    eg_calls calls;       /* EG_CALLS_AUTO unless set */
    unsigned connections; /* module instances; 0 (auto) unless set */
    unsigned hang_s;      /* a token call unanswered this long: it hangs; 120, 0: never */

    eg_profile_cfg profiles[EG_MAX_PROFILES];
    size_t nprofiles;
} eg_config;

/* A subject attribute a CSR or a subject template may use, by name (CN, O, OU, C, ST, L,
   serialNumber, emailAddress, UID, DC; any case); NID_undef if not one. */
int eg_subject_attr_nid(const char *name);

/* One problem found in a file: where, and what. */
typedef struct eg_config_error {
    unsigned line; /* 0: the file as a whole (missing section, unreadable file) */
    char section[80];
    char key[64];
    char message[512];
} eg_config_error;

typedef struct eg_config_errors {
    eg_config_error *items;
    size_t n;
} eg_config_errors;

/*
 * Parses and validates path. 0 and *out on success; -1 with every problem in
 * errs otherwise (errs may be NULL). Validation covers syntax, unknown
 * sections and keys, types and ranges, required keys, duplicate profiles,
 * and the files named: the CA chain and client CA bundle must parse as PEM
 * certificates, the PIN file must exist and not be world-readable. It does
 * not open the token. errs must be zeroed or earlier filled by this function;
 * it is cleared first, so one errs can serve every reload.
 */
int eg_config_load(const char *path, eg_config **out, eg_config_errors *errs);
void eg_config_free(eg_config *cfg);
void eg_config_errors_clear(eg_config_errors *errs);
/* "FILE:LINE: [section] key: message", one per line. */
void eg_config_errors_print(const eg_config_errors *errs, const char *path, FILE *fp);

/* The profile for a URL label ("" or NULL: default); NULL if none. */
const eg_profile_cfg *eg_config_profile(const eg_config *cfg, const char *label);
/* A listener's address and port as a URL writes them ("[::1]:8443" for IPv6), into buf. */
const char *eg_host_port(const char *address, unsigned port, char *buf, size_t cap);

/*
 * Password hashing for [profile] user entries: PBKDF2-HMAC-SHA256 from
 * OpenSSL's KDF API, 600000 iterations, 16-byte random salt. A verification
 * costs a few hundred milliseconds on purpose; the web layer keeps a short-lived
 * cache of verified credentials so a device's repeated requests do not pay it.
 */
int eg_password_hash(const char *password, char **out);
/* Constant-time check; false for a malformed hash. */
bool eg_password_verify(const char *password, const char *hash);
/* Whether hash has the form eg_password_hash makes (no password needed). */
bool eg_password_hash_valid(const char *hash);

/*
 * estgated's offline commands; argv as main() received it:
 *   estgated --check-config FILE   every problem, or "FILE: OK" and the profiles
 *   estgated --hash-password       first line of stdin -> a [profile] user hash
 * Returns the exit status: 0 success, 1 a bad file or password, 2 bad usage.
 */
int eg_config_check_main(int argc, char **argv);

#endif
