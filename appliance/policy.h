/*
 * Profile policy over a PKCS#10 request: key type and size, requested EKUs,
 * SAN rules per type, subject attributes or the subject template, required
 * CSR attributes. Every refusal names its dimension and what was wrong.
 */
#ifndef EG_POLICY_H
#define EG_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "csr.h"
#include "core.h"

/* One attribute of a subject template: a fixed value, or the CSR's CN ("${cn}"). */
typedef struct eg_subject_rdn {
    int nid;
    bool from_cn;
    char value[128];
} eg_subject_rdn;

typedef struct eg_subject_tmpl {
    eg_subject_rdn rdns[EG_MAX_RULES];
    size_t n;
    bool uses_cn;
} eg_subject_tmpl;

/* Parses "CN=${cn},O=Example" (comma-separated, no escapes). 0, or -1 with err. */
int eg_subject_tmpl_parse(const char *text, eg_subject_tmpl *out, char *err, size_t cap);

/* A profile's policy, ready to apply: the profile and its parsed template. */
typedef struct eg_policy {
    const eg_profile_cfg *cfg;
    eg_subject_tmpl tmpl; /* n == 0 when the profile has no template */
} eg_policy;

typedef struct eg_policy_verdict {
    eg_policy_dim dim;
    char reason[256];
} eg_policy_verdict;

/* 0: allowed; 1: refused, *v says why; -1: could not be checked (internal). */
int eg_policy_check(const eg_policy *pol, const eg_csr *csr, eg_policy_verdict *v);
/* The same without the key rules: serverkeygen ignores the CSR's key (RFC 7030 4.4.1). */
int eg_policy_check_request(const eg_policy *pol, const eg_csr *csr, eg_policy_verdict *v);

/*
 * The validity a CSR asks for, in days rounded up (Windows certreq's
 * ValidityPeriod and ValidityPeriodUnits enrollment attributes); 0 when it
 * asks for none. More than the profile's max_days is refused by the policy.
 */
unsigned eg_policy_requested_days(const eg_csr *csr);
/* The key rules in force: the profile's, or the defaults (RSA >= 2048, P-256, P-384, Ed25519). */
void eg_policy_keyrules(const eg_profile_cfg *p, const eg_keyrule_cfg **rules, size_t *n);

/*
 * A subject attribute's value as a certificate carries it (RFC 5280 4.1.2.4): a DirectoryString
 * as a PrintableString when it was one and is valid, else a UTF8String; countryName,
 * serialNumber and dnQualifier as PrintableString, emailAddress and domainComponent as
 * IA5String. The same text, re-encoded; NULL when the value cannot be read or does not fit.
 */
ASN1_STRING *eg_policy_name_value(int nid, const ASN1_STRING *in);

/* The CSR's requested SANs (a copy, or NULL when it asks for none). */
GENERAL_NAMES *eg_policy_csr_sans(const eg_csr *csr);

/* "dns:example.com", "ip:10.0.0.1", ... with unprintable bytes replaced; for reasons. */
void eg_policy_san_text(const GENERAL_NAME *gn, char *buf, size_t cap);

/*
 * The profile's CsrAttrs (RFC 7030 4.5, RFC 8951, RFC 9908), DER, in csrattrs.c:
 * the RFC 9908 template when the profile fixes the subject or extensions (which
 * every profile read from a file does: its eku defaults to clientAuth), else a
 * list of OIDs and key-type attributes. *len 0 (and *der NULL) when there is
 * nothing to say (only a profile built in code, without EKUs, can be so).
 * 0, or -1 on failure.
 */
int eg_csrattrs_der(const eg_policy *pol, uint8_t **der, size_t *len);

#endif
