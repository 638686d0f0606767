/*
 * One end-entity certificate: build from the CSR and the profile, lint, sign
 * in the token. The CA objects are shared by every request thread and only
 * read here.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "clock.h"
#include "errors.h"
#include "issue.h"

#define DEFAULT_DAYS 365

static int fail(char *reason, size_t cap, const char *what)
{
    char err[220]; /* room for a key's URI and what an operator does about it */

    eg_err_first_text(err, sizeof(err)); /* the first: the most specific */
    snprintf(reason, cap, "%s%s%s", what, *err ? ": " : "", err);
    ERR_clear_error();
    return -1;
}

int eg_issue_validity(const eg_policy *pol, const eg_issue_ca *ca, time_t now, unsigned asked,
                      eg_validity *out, char *reason, size_t cap)
{
    char clock[32], when[32];
    unsigned days = pol->cfg->max_days ? pol->cfg->max_days : DEFAULT_DAYS;

    /* A shorter validity asked for in the CSR is granted; a longer one was refused. */
    if (asked > 0 && asked < days)
        days = asked;
    eg_validity v = {now - EG_ISSUE_CLOCK_SKEW_S, now + (time_t)days * 86400};

    if (ca->not_before > now) {
        snprintf(reason, cap,
                 "the appliance's clock reads %s, before its CA certificate begins (%s): is the "
                 "clock set?",
                 eg_utc_text(now, clock, sizeof(clock)),
                 eg_utc_text(ca->not_before, when, sizeof(when)));
        return -2;
    }
    if (ca->not_after <= now) {
        snprintf(reason, cap, "the CA certificate expired at %s",
                 eg_utc_text(ca->not_after, when, sizeof(when)));
        return -1;
    }
    /* Back-dated for clients with slow clocks, but never before the CA itself. */
    if (v.not_before < ca->not_before)
        v.not_before = ca->not_before;
    if (v.not_after > ca->not_after)
        v.not_after = ca->not_after;
    *out = v;
    return 0;
}

int eg_issue_serial(uint8_t out[EG_SERIAL_LEN])
{
    uint8_t s[EG_SERIAL_LEN];
    struct timespec now;
    uint64_t ms;

    if (clock_gettime(CLOCK_REALTIME, &now) != 0 ||
        RAND_bytes(s + EG_SERIAL_TIME_LEN, EG_SERIAL_LEN - EG_SERIAL_TIME_LEN) != 1)
        return -1;
    /*
     * Milliseconds first, so that the ledger's serial index grows at its end as
     * its row table does, instead of one random leaf per certificate. The 0x40
     * keeps the first octet non-zero and the sign bit clear (DER minimal and
     * positive) until the year 4199; the 80 bits after it are random.
     */
    ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
    for (int i = 0; i < EG_SERIAL_TIME_LEN; i++)
        s[i] = (uint8_t)(ms >> (8 * (EG_SERIAL_TIME_LEN - 1 - i)));
    s[0] = (uint8_t)((s[0] & 0x3f) | 0x40);
    memcpy(out, s, sizeof(s));
    return 0;
}

static bool subject_nid_allowed(const eg_profile_cfg *p, int nid)
{
    size_t i;

    if (p->nsubject_nids == 0)
        return nid == NID_commonName;
    for (i = 0; i < p->nsubject_nids; i++) {
        if (p->subject_nids[i] == nid)
            return true;
    }
    return false;
}

/* Adds the value as the certificate must carry it (eg_policy_name_value); 1 on success. */
static int add_value(X509_NAME *out, const ASN1_OBJECT *obj, const ASN1_STRING *v, int set)
{
    ASN1_STRING *s = eg_policy_name_value(OBJ_obj2nid(obj), v);
    int ok = s != NULL &&
             X509_NAME_add_entry_by_OBJ(out, obj, ASN1_STRING_type(s), ASN1_STRING_get0_data(s),
                                        ASN1_STRING_length(s), -1, set) == 1;

    ASN1_STRING_free(s);
    return ok ? 1 : 0;
}

static int add_template_rdn(X509_NAME *out, const eg_subject_rdn *r, const X509_NAME *csr)
{
    int i;

    if (!r->from_cn)
        return X509_NAME_add_entry_by_NID(out, r->nid, MBSTRING_UTF8,
                                          (const unsigned char *)r->value, -1, -1, 0);
    i = X509_NAME_get_index_by_NID(csr, NID_commonName, -1);
    if (i < 0)
        return 0;
    return add_value(out, OBJ_nid2obj(r->nid),
                     X509_NAME_ENTRY_get_data(X509_NAME_get_entry(csr, i)), 0);
}

/*
 * The CSR's values are re-encoded, not copied: RFC 5280 4.1.2.4 has CAs write a DirectoryString
 * as a PrintableString or UTF8String, and devices still send TeletexString and BMPString.
 */
X509_NAME *eg_issue_subject(const eg_policy *pol, const eg_csr *req)
{
    const X509_NAME *csr = eg_csr_subject(req);
    X509_NAME *out = X509_NAME_new();
    int i, prev, ok = out != NULL;
    size_t j;

    for (j = 0; ok && j < pol->tmpl.n; j++)
        ok = add_template_rdn(out, &pol->tmpl.rdns[j], csr) == 1;
    /* The CSR's RDNs as it grouped them: a multi-valued one (CN=a+O=b) stays one RDN. */
    for (i = 0, prev = -1; ok && pol->tmpl.n == 0 && i < X509_NAME_entry_count(csr); i++) {
        const X509_NAME_ENTRY *e = X509_NAME_get_entry(csr, i);
        int set = X509_NAME_ENTRY_set(e);

        if (subject_nid_allowed(pol->cfg, OBJ_obj2nid(X509_NAME_ENTRY_get_object(e))))
            ok = add_value(out, X509_NAME_ENTRY_get_object(e), X509_NAME_ENTRY_get_data(e),
                           set == prev && X509_NAME_entry_count(out) > 0 ? -1 : 0) == 1;
        prev = set;
    }
    if (!ok) {
        X509_NAME_free(out);
        return NULL;
    }
    return out;
}

static int add_eku(X509 *x, const eg_profile_cfg *p)
{
    EXTENDED_KEY_USAGE *eku;
    size_t i;
    int ok;

    if (p->nekus == 0)
        return 0;
    eku = sk_ASN1_OBJECT_new_null();
    ok = eku != NULL;
    for (i = 0; ok && i < p->nekus; i++) {
        ASN1_OBJECT *o = OBJ_nid2obj(p->ekus[i]);

        ok = o != NULL && sk_ASN1_OBJECT_push(eku, o) > 0;
    }
    ok = ok && X509_add1_ext_i2d(x, NID_ext_key_usage, eku, 0, X509V3_ADD_APPEND) == 1;
    sk_ASN1_OBJECT_free(eku); /* OBJ_nid2obj objects are static */
    return ok ? 0 : -1;
}

static int add_san(X509 *x, const eg_csr *req)
{
    GENERAL_NAMES *gens = eg_policy_csr_sans(req);
    /* RFC 5280 4.2.1.6: with an empty subject the SAN is critical. */
    int crit = X509_NAME_entry_count(X509_get_subject_name(x)) == 0;
    int ok = sk_GENERAL_NAME_num(gens) <= 0 ||
             X509_add1_ext_i2d(x, NID_subject_alt_name, gens, crit, X509V3_ADD_APPEND) == 1;

    GENERAL_NAMES_free(gens);
    return ok ? 0 : -1;
}

/*
 * The certificate's key type from its SubjectPublicKeyInfo algorithm, without
 * decoding the key: OpenSSL 3.0 builds a decoder chain for every decode, and
 * that was half of an enrollment's CPU time.
 */
static int key_type(X509 *x)
{
    const ASN1_OBJECT *alg = NULL;

    if (X509_PUBKEY_get0_param((ASN1_OBJECT **)&alg, NULL, NULL, NULL, X509_get_X509_PUBKEY(x)) !=
        1)
        return NID_undef;
    return OBJ_obj2nid(alg); /* EVP_PKEY_RSA, EVP_PKEY_EC, EVP_PKEY_ED25519 are these NIDs */
}

/*
 * The extensions that are the same in every certificate, encoded once: made
 * from their configuration strings per certificate, with a SHA-1 fetch for
 * the subject key identifier, the extension work took 21 us a certificate
 * instead of 9 (docs/benchmarks.md).
 */
static struct {
    pthread_once_t once;
    X509_EXTENSION *bc;     /* critical, CA:FALSE */
    X509_EXTENSION *ku_sig; /* critical, digitalSignature */
    X509_EXTENSION *ku_rsa; /* critical, digitalSignature, keyEncipherment */
    EVP_MD *sha1;           /* RFC 5280 4.2.1.2 (1): the subject key identifier */
} fixed = {.once = PTHREAD_ONCE_INIT};

static void fixed_make(void)
{
    fixed.bc = X509V3_EXT_conf_nid(NULL, NULL, NID_basic_constraints, "critical,CA:FALSE");
    fixed.ku_sig = X509V3_EXT_conf_nid(NULL, NULL, NID_key_usage, "critical,digitalSignature");
    fixed.ku_rsa =
        X509V3_EXT_conf_nid(NULL, NULL, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    fixed.sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
}

static int fixed_ready(void)
{
    return pthread_once(&fixed.once, fixed_make) == 0 && fixed.bc != NULL && fixed.ku_sig != NULL &&
                   fixed.ku_rsa != NULL && fixed.sha1 != NULL
               ? 0
               : -1;
}

/* SHA-1 of the subjectPublicKey bits: what OpenSSL's "hash" makes, without its fetch. */
static ASN1_OCTET_STRING *key_id(const X509_PUBKEY *pub)
{
    const unsigned char *bits;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    ASN1_OCTET_STRING *id;
    int len;

    if (X509_PUBKEY_get0_param(NULL, &bits, &len, NULL, (X509_PUBKEY *)pub) != 1 ||
        EVP_Digest(bits, (size_t)len, md, &mdlen, fixed.sha1, NULL) != 1 ||
        (id = ASN1_OCTET_STRING_new()) == NULL)
        return NULL;
    if (ASN1_OCTET_STRING_set(id, md, (int)mdlen) != 1) {
        ASN1_OCTET_STRING_free(id);
        return NULL;
    }
    return id;
}

static int add_ski(X509 *x)
{
    ASN1_OCTET_STRING *id = key_id(X509_get_X509_PUBKEY(x));
    int ok = id != NULL &&
             X509_add1_ext_i2d(x, NID_subject_key_identifier, id, 0, X509V3_ADD_APPEND) == 1;

    ASN1_OCTET_STRING_free(id);
    return ok ? 0 : -1;
}

/* basicConstraints, keyUsage and the AKI are the ones eg_issue_ca_ready encoded. */
static int add_extensions(X509 *x, const eg_policy *pol, const eg_issue_ca *ca, const eg_csr *req)
{
    if (ca->aki == NULL || X509_add_ext(x, fixed.bc, -1) != 1 ||
        X509_add_ext(x, key_type(x) == EVP_PKEY_RSA ? fixed.ku_rsa : fixed.ku_sig, -1) != 1 ||
        add_eku(x, pol->cfg) != 0 || add_san(x, req) != 0 || add_ski(x) != 0 ||
        X509_add_ext(x, ca->aki, -1) != 1)
        return -1;
    return 0;
}

static int set_serial(X509 *x, const uint8_t *serial, size_t len)
{
    BIGNUM *bn = BN_bin2bn(serial, (int)len, NULL);
    ASN1_INTEGER *ai = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    int ok = ai != NULL && X509_set_serialNumber(x, ai) == 1;

    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return ok ? 0 : -1;
}

static int set_pubkey(X509 *x, const eg_pubkey_bits *k)
{
    ASN1_OBJECT *alg =
        OBJ_nid2obj(k->type == EVP_PKEY_RSA ? NID_rsaEncryption : NID_X9_62_id_ecPublicKey);
    ASN1_OBJECT *curve = k->type == EVP_PKEY_EC ? OBJ_nid2obj(k->curve_nid) : NULL;
    unsigned char *bits = OPENSSL_memdup(k->bits, k->len);

    if (alg != NULL && bits != NULL && (k->type == EVP_PKEY_RSA || curve != NULL) &&
        X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), alg,
                               k->type == EVP_PKEY_RSA ? V_ASN1_NULL : V_ASN1_OBJECT, curve, bits,
                               (int)k->len) == 1)
        return 0;
    OPENSSL_free(bits); /* OBJ_nid2obj objects are static */
    return -1;
}

X509 *eg_issue_build(const eg_policy *pol, const eg_issue_ca *ca, const eg_csr *req,
                     const eg_pubkey_bits *key, const X509_NAME *subject, const uint8_t *serial,
                     size_t serial_len, const eg_validity *val, char *reason, size_t cap)
{
    X509 *x = X509_new();

    if (x == NULL || X509_set_version(x, X509_VERSION_3) != 1 ||
        set_serial(x, serial, serial_len) != 0 ||
        X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) != 1 ||
        X509_set_subject_name(x, subject) != 1 ||
        ASN1_TIME_set(X509_getm_notBefore(x), val->not_before) == NULL ||
        ASN1_TIME_set(X509_getm_notAfter(x), val->not_after) == NULL ||
        (key != NULL ? set_pubkey(x, key) : eg_csr_copy_pubkey(req, x)) != 0) {
        fail(reason, cap, "cannot build the certificate");
        goto err;
    }
    if (add_extensions(x, pol, ca, req) != 0) {
        fail(reason, cap, "cannot add the certificate's extensions");
        goto err;
    }
    return x;
err:
    X509_free(x);
    return NULL;
}

/* ---- lint ---- */

static int lint_serial(X509 *x, char *reason, size_t cap)
{
    const ASN1_INTEGER *s = X509_get0_serialNumber(x);
    const unsigned char *d = ASN1_STRING_get0_data(s);
    int len = ASN1_STRING_length(s);
    /* DER content length: a high first bit needs a leading zero octet. */
    int der = len + (len > 0 && (d[0] & 0x80) ? 1 : 0);

    if (ASN1_STRING_type(s) != V_ASN1_INTEGER || len <= 0 || (len == 1 && d[0] == 0)) {
        snprintf(reason, cap, "lint: the serial number is not positive");
        return -1;
    }
    if (der > 20) {
        snprintf(reason, cap, "lint: the serial number has %d octets, more than 20", der);
        return -1;
    }
    return 0;
}

static int lint_validity(const eg_issue_ca *ca, X509 *x, char *reason, size_t cap)
{
    const ASN1_TIME *nb = X509_get0_notBefore(x), *na = X509_get0_notAfter(x);

    if (ASN1_TIME_compare(nb, na) >= 0) {
        snprintf(reason, cap, "lint: notBefore is not before notAfter");
        return -1;
    }
    if (ASN1_TIME_compare(nb, X509_get0_notBefore(ca->cert)) < 0 ||
        ASN1_TIME_compare(na, X509_get0_notAfter(ca->cert)) > 0) {
        snprintf(reason, cap, "lint: the validity is not inside the CA certificate's");
        return -1;
    }
    return 0;
}

static int lint_ca_flag(X509 *x, char *reason, size_t cap)
{
    int crit = -1;
    BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, &crit, NULL);
    int rc = -1;

    if (bc == NULL)
        snprintf(reason, cap, "lint: basicConstraints is missing");
    else if (bc->ca || bc->pathlen != NULL)
        snprintf(reason, cap, "lint: the certificate would be a CA");
    else if (crit != 1)
        snprintf(reason, cap, "lint: basicConstraints is not critical");
    else
        rc = 0;
    BASIC_CONSTRAINTS_free(bc);
    return rc;
}

static int lint_key_usage(X509 *x, char *reason, size_t cap)
{
    ASN1_BIT_STRING *ku = X509_get_ext_d2i(x, NID_key_usage, NULL, NULL);
    int type = key_type(x), rc = -1;

    /* Bits: 0 digitalSignature, 2 keyEncipherment, 5 keyCertSign, 6 cRLSign. */
    if (ku == NULL)
        snprintf(reason, cap, "lint: keyUsage is missing");
    else if (!ASN1_BIT_STRING_get_bit(ku, 0))
        snprintf(reason, cap, "lint: keyUsage lacks digitalSignature");
    else if (ASN1_BIT_STRING_get_bit(ku, 5) || ASN1_BIT_STRING_get_bit(ku, 6))
        snprintf(reason, cap, "lint: keyUsage allows certificate or CRL signing");
    else if (type != EVP_PKEY_RSA && ASN1_BIT_STRING_get_bit(ku, 2))
        snprintf(reason, cap, "lint: keyEncipherment with a key that cannot encrypt");
    else
        rc = 0;
    ASN1_BIT_STRING_free(ku);
    return rc;
}

static int lint_names(const eg_policy *pol, const eg_issue_ca *ca, X509 *x, char *reason,
                      size_t cap)
{
    int crit = -1, rc = -1;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, &crit, NULL);
    bool empty_subject = X509_NAME_entry_count(X509_get_subject_name(x)) == 0;

    if (X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(ca->cert)) != 0)
        snprintf(reason, cap, "lint: the issuer is not the CA's subject");
    else if (pol->cfg->require_san && sk_GENERAL_NAME_num(gens) <= 0)
        snprintf(reason, cap, "lint: the profile requires a SAN and the certificate has none");
    else if (empty_subject && (sk_GENERAL_NAME_num(gens) <= 0 || crit != 1))
        snprintf(reason, cap, "lint: an empty subject needs a critical SAN");
    else if (X509_get_ext_by_NID(x, NID_subject_key_identifier, -1) < 0 ||
             X509_get_ext_by_NID(x, NID_authority_key_identifier, -1) < 0)
        snprintf(reason, cap, "lint: the key identifiers are missing");
    else
        rc = 0;
    GENERAL_NAMES_free(gens);
    return rc;
}

int eg_issue_lint(const eg_policy *pol, const eg_issue_ca *ca, X509 *cert, char *reason, size_t cap)
{
    int rc = -1;

    if (X509_get_version(cert) != X509_VERSION_3)
        snprintf(reason, cap, "lint: not a v3 certificate");
    else if (lint_serial(cert, reason, cap) == 0 && lint_validity(ca, cert, reason, cap) == 0 &&
             lint_ca_flag(cert, reason, cap) == 0 && lint_key_usage(cert, reason, cap) == 0 &&
             lint_names(pol, ca, cert, reason, cap) == 0)
        rc = 0;
    ERR_clear_error();
    return rc;
}

/*
 * Everything per CA that certificates reuse, made once at profile load: the
 * digest-sign context eg_issue_sign copies, and the encoded AKI.
 */
int eg_issue_ca_ready(eg_issue_ca *ca)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(ca->cert);
    X509_EXTENSION *aki = NULL;
    int rc = -1;

    if (mctx == NULL || akid == NULL || fixed_ready() != 0 ||
        EVP_DigestSignInit_ex(mctx, NULL, ca->md, NULL, NULL, ca->key, NULL) != 1)
        goto out;
    /* keyid:always, once: the CA's own key identifier, else the hash of its key. */
    akid->keyid = ski != NULL ? ASN1_OCTET_STRING_dup(ski) : key_id(X509_get_X509_PUBKEY(ca->cert));
    if (akid->keyid == NULL ||
        (aki = X509V3_EXT_i2d(NID_authority_key_identifier, 0, akid)) == NULL)
        goto out;
    EVP_MD_CTX_free(ca->sign);
    X509_EXTENSION_free(ca->aki);
    ca->sign = mctx;
    ca->aki = aki;
    mctx = NULL;
    aki = NULL;
    rc = 0;
out:
    AUTHORITY_KEYID_free(akid);
    X509_EXTENSION_free(aki);
    EVP_MD_CTX_free(mctx);
    return rc;
}

void eg_issue_ca_clear(eg_issue_ca *ca)
{
    EVP_MD_CTX_free(ca->sign);
    X509_EXTENSION_free(ca->aki);
    EVP_PKEY_free(ca->key);
    X509_free(ca->cert);
    memset(ca, 0, sizeof(*ca));
}

/*
 * Whether the signer's first error says the CA key is gone from the token or is another key
 * now: no retry succeeds until an operator puts it back or reloads.
 */
static bool ca_key_lost(void)
{
    unsigned long e = ERR_peek_error();

    return ERR_GET_LIB(e) == eg_signer_errlib() &&
           (ERR_GET_REASON(e) == EG_R_KEY_NOT_FOUND || ERR_GET_REASON(e) == EG_R_KEY_REPLACED);
}

/*
 * A new context per certificate made OpenSSL 3.0 fetch the key management,
 * the signature and the digest again, under its method store's locks: +21% per
 * P-256 signature in-process (docs/benchmarks.md). A copy of the context made
 * at load only duplicates the provider's context. Many threads copy ca->sign
 * at once: copying reads it and takes references, nothing more. X509_sign_ctx
 * sets the algorithm identifiers from the copy, and FINALISE lets the one
 * signature finish the copy's own hash instead of duplicating it again.
 */
int eg_issue_sign(const eg_issue_ca *ca, X509 *cert, char *reason, size_t cap)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int rc = -1;

    if (mctx == NULL || ca->sign == NULL || EVP_MD_CTX_copy_ex(mctx, ca->sign) != 1) {
        fail(reason, cap, "no signing context for the CA key");
        goto out;
    }
    EVP_MD_CTX_set_flags(mctx, EVP_MD_CTX_FLAG_FINALISE);
    if (X509_sign_ctx(cert, mctx) <= 0) {
        rc = ca_key_lost() ? -2 : -1;
        fail(reason, cap, "the token did not sign");
        goto out;
    }
    rc = 0;
out:
    EVP_MD_CTX_free(mctx);
    return rc;
}
