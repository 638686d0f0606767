/*
 * `bootstrap`: factory bootstrap (IDevID-style) certificates in batches.
 * The pieces of the command, one file each: the input manifest
 * (bootstrap_input.c), the batch state (bootstrap_state.c), the certificate
 * (bootstrap_cert.c), token-generated keys and their wrapping
 * (bootstrap_keygen.c), the output files and the signed batch manifest
 * (bootstrap_out.c) and the progress display (bootstrap_progress.c).
 * The formats are described in docs/factory-line.md.
 */
#ifndef EG_PROV_BOOTSTRAP_H
#define EG_PROV_BOOTSTRAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "p11.h"

#define EG_BS_NAME_MAX   64  /* serial and model: [A-Za-z0-9._-], 1 to 64 characters */
#define EG_BS_WHY_MAX    256 /* why a row was refused */
#define EG_BS_SERIAL_LEN 16  /* certificate serial number octets */

typedef enum eg_bs_mode { EG_BS_CSR, EG_BS_KEYGEN } eg_bs_mode;

/* One row of the input manifest. A row that does not parse carries why and no mode. */
typedef struct eg_bs_row {
    size_t line;
    char serial[EG_BS_NAME_MAX + 1];
    char model[EG_BS_NAME_MAX + 1];
    eg_bs_mode mode;
    char *csr;       /* CSR mode: PEM or DER file, relative to the manifest's directory */
    char *transport; /* keygen mode: the device's RSA transport public key (PEM) */
    eg_keygen_spec key;
    char why[EG_BS_WHY_MAX]; /* non-empty: the row is refused with this */
} eg_bs_row;

typedef struct eg_bs_rows {
    eg_bs_row *v;
    size_t n;
} eg_bs_rows;

/*
 * Reads a manifest: CSV with a header line (columns serial, model, csr, key,
 * transport, in any order) or JSON lines (one object per line with the same
 * names as string members; other members ignored), told apart by the first
 * character; a UTF-8 byte-order mark is skipped. key defaults to
 * default_key. Returns an exit code; a bad row is kept with its reason.
 */
int eg_bs_input_read(const char *path, const eg_keygen_spec *default_key, eg_bs_rows **out);
void eg_bs_rows_free(eg_bs_rows *rows);
/* "ec-p256" | "ec-p384" | "rsa2048" into spec; false when unknown. */
bool eg_bs_key_name(const char *s, eg_keygen_spec *spec);

/* The batch state: a SQLite file in the output directory, locked by one process. */
typedef struct eg_bs_state eg_bs_state;

typedef enum eg_bs_phase { EG_BS_NONE, EG_BS_INTENT, EG_BS_ISSUED } eg_bs_phase;

typedef struct eg_bs_record {
    eg_bs_phase phase;
    uint8_t request[32]; /* SHA-256 of what the device asked for (CSR, or key type + transport) */
    uint8_t cert_serial[EG_BS_SERIAL_LEN];
    int64_t not_before, not_after;
    uint8_t *cert, *wrapped; /* DER; issued only; wrapped only for keygen rows */
    size_t certlen, wrappedlen;
    char model[EG_BS_NAME_MAX + 1]; /* what the certificate was made from besides the request */
    char *sans; /* the --san-template values, space-separated; NULL if issued before recorded */
} eg_bs_record;

typedef struct eg_bs_entry {
    char serial[EG_BS_NAME_MAX + 1];
    uint8_t sha256[32];
} eg_bs_entry;

/*
 * Opens or creates dir/bootstrap.db for the CA certificate ca (of SHA-256
 * ca_sha256); an exit code. A renewal of the batch's first CA certificate
 * (same key and subject) is the same CA.
 */
int eg_bs_state_open(const char *dir, X509 *ca, const uint8_t ca_sha256[32], eg_bs_state **out);
void eg_bs_state_free(eg_bs_state *st);
/* The device's record; rec->phase is EG_BS_NONE when there is none. */
int eg_bs_state_get(eg_bs_state *st, const char *serial, eg_bs_record *rec);
/* Durably records the intent (request, serial, validity) before the token signs. */
int eg_bs_state_intent(eg_bs_state *st, const char *serial, const char *model,
                       const eg_bs_record *rec);
/* Durably records the certificate (and wrapped key) of an intent, and what it was made from. */
int eg_bs_state_issued(eg_bs_state *st, const char *serial, const char *model, const char *sans,
                       const uint8_t *cert, size_t certlen, const uint8_t *wrapped,
                       size_t wrappedlen);
/* Every device of the state with a certificate, sorted by serial, for the batch manifest. */
int eg_bs_state_entries(eg_bs_state *st, eg_bs_entry **out, size_t *n);
void eg_bs_record_clear(eg_bs_record *rec);

/* The issuing side, shared by every row. */
typedef struct eg_bs_issuer {
    X509 *ca;                /* the factory CA certificate (first of --ca-cert) */
    STACK_OF(X509) * chain;  /* every certificate of --ca-cert, CA first */
    EVP_PKEY *key;           /* the CA key, in the token through the provider */
    const char *const *sans; /* --san-template values, "dns:..." or "uri:..." */
    size_t nsans;
    const char *sans_joined; /* the same, space-separated, as the state records them */
    int days;
} eg_bs_issuer;

/* Whether the SAN templates give valid names for this row (why when not). */
bool eg_bs_names_ok(const eg_bs_issuer *is, const eg_bs_row *row, char *why);
/* Whether a --san-template is usable; an exit code. */
int eg_bs_san_template_check(const char *t);
/*
 * Builds and signs (in the token) the bootstrap certificate of row for pub
 * with the recorded serial and validity, and checks the signature. An exit
 * code; EG_EXIT_DATAERR with why for a row problem (a SAN that is no name).
 */
int eg_bs_cert_build(const eg_bs_issuer *is, const eg_bs_row *row, EVP_PKEY *pub,
                     const eg_bs_record *rec, X509 **out, char *why);

/* Whether the token can make wrapped keys (prints nothing); false names the missing mechanism. */
bool eg_bs_keygen_supported(eg_token *tok, const char **missing);
/*
 * Generates the device key pair in the token, wraps it for the transport key
 * and destroys every session object. *pub is the public half (software),
 * *wrapped the DER of the wrapped-key structure. An exit code;
 * EG_EXIT_DATAERR with why when the token refuses for this row.
 */
int eg_bs_keygen(eg_token *tok, const eg_keygen_spec *spec, EVP_PKEY *transport, EVP_PKEY **pub,
                 uint8_t **wrapped, size_t *wrappedlen, char *why);

/* dir/<serial>.pem (leaf then chain) and dir/<serial>.key.pem, rewritten only when they differ. */
int eg_bs_write_device(const char *dir, const char *serial, X509 *cert, STACK_OF(X509) * chain,
                       const uint8_t *wrapped, size_t wrappedlen);

/*
 * dir/manifest.txt and dir/manifest.cms: the entries (sorted by serial) as
 * text, and as the encapsulated content of CMS SignedData signed by key,
 * signer cert included.
 */
int eg_bs_manifest_write(const char *dir, const eg_bs_entry *e, size_t n,
                         const uint8_t ca_sha256[32], X509 *signer, EVP_PKEY *key);
/*
 * Removes the temporary files (".<name>.XXXXXX") that a run killed while
 * writing <serial>.pem, <serial>.key.pem or the manifest left in dir, and
 * nothing else; the number removed, or -1 with errno when dir is unreadable.
 * Only with the batch's lock held: another run's files are never touched.
 */
int eg_bs_remove_leftovers(const char *dir);

/* Progress on stderr: a bar with rate and time left on a terminal, else a line every 5 s. */
typedef struct eg_bs_progress {
    size_t total, done;
    struct timespec start, last;
    bool tty;
} eg_bs_progress;
void eg_bs_progress_start(eg_bs_progress *p, size_t total);
void eg_bs_progress_step(eg_bs_progress *p);
void eg_bs_progress_end(eg_bs_progress *p);

/* One batch run: what every row needs, and the counts of the summary. */
typedef struct eg_bs_batch {
    const char *out; /* output directory */
    eg_token *tok;
    eg_bs_issuer issuer;
    eg_bs_state *state;
    bool keygen_ok; /* the token has what token-generated keys need */
    const char *keygen_missing;
    size_t issued, already, refused;
} eg_bs_batch;

/*
 * One row: issue, or find it issued before (outputs rewritten if missing),
 * or refuse it (EG_EXIT_DATAERR with why). Other exit codes stop the batch.
 */
int eg_bs_row_run(eg_bs_batch *b, const eg_bs_row *row, char *why);

/* Lowercase hex of len bytes into out (2 * len + 1). */
void eg_bs_hex(const uint8_t *b, size_t len, char *out);

#endif
