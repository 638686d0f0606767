/*
 * Fuzz target: a DER PKCS#10 request through everything estgated does with
 * one short of signing it. Parsing, the key and its signature check, the
 * requested validity and SANs, serverkeygen's recipient attributes, then for
 * each of four profiles the policy (the key rules too, although core checks
 * the signature first: serverkeygen does not) and, where the policy admits
 * the request, the certificate build and the lint, with a software CA. The
 * profiles are the core tests' (SAN rules of every type, a subject template,
 * required attributes, the default key rules).
 *
 * Besides not crashing: every refusal names a reason, and a verified request
 * the policy admits yields a certificate, which the lint passes (otherwise a
 * device would get a 500 for a request its profile allows).
 * Built by eg_fuzz_target (top CMakeLists.txt); see docs/fuzzing.md.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "csr.h"
#include "issue.h"
#include "policy.h"
#include "skg_cms.h"
#include "test_certs.h"
#include "test_profiles.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { NPROFILES = EG_TEST_NPROFILES };

static eg_profile_cfg profiles[NPROFILES];
static eg_policy policies[NPROFILES];
static eg_issue_ca ca;

/* The profiles of estgated's core tests (hsm-tests/harness/test_profiles.c). */
static void make_profiles(void)
{
    eg_test_profiles(profiles, NULL, NULL);
    for (int i = 0; i < NPROFILES; i++) {
        char err[256];

        policies[i].cfg = &profiles[i];
        if (profiles[i].subject_template != NULL &&
            eg_subject_tmpl_parse(profiles[i].subject_template, &policies[i].tmpl, err,
                                  sizeof(err)) != 0)
            abort();
    }
}

/* A self-signed P-256 CA, made ready to issue. */
static void make_ca(void)
{
    time_t now = time(NULL);

    if ((ca.key = EVP_EC_gen("P-256")) == NULL ||
        (ca.cert = eg_test_self_signed(ca.key, "fuzz CA", true, now)) == NULL)
        abort();
    ca.md = "SHA256";
    ca.not_before = now - EG_TEST_CERT_BACK_S;
    ca.not_after = now + EG_TEST_CERT_AHEAD_S;
    if (eg_issue_ca_ready(&ca) != 0)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    make_profiles();
    make_ca();
    return 0;
}

static void refused_with_reason(int rc, const eg_policy_verdict *v)
{
    if (rc == 1 && v->reason[0] == '\0')
        abort();
}

/* Build and lint for one profile; a request the policy admitted must pass both. */
static void issue(const eg_policy *pol, const eg_csr *csr, unsigned asked, int admitted)
{
    static const uint8_t serial[EG_SERIAL_LEN] = {0x40, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    char why[256] = "";
    X509_NAME *subject = eg_issue_subject(pol, csr);
    eg_validity val;
    X509 *x = NULL;

    if (subject == NULL)
        goto out;
    if (eg_issue_validity(pol, &ca, time(NULL), asked, &val, why, sizeof(why)) != 0)
        abort(); /* the CA is valid for years: only a bug refuses here */
    x = eg_issue_build(pol, &ca, csr, NULL, subject, serial, sizeof(serial), &val, why,
                       sizeof(why));
    if (admitted && (x == NULL || eg_issue_lint(pol, &ca, x, why, sizeof(why)) != 0)) {
        fprintf(stderr, "profile %s admitted a request it cannot issue: %s\n", pol->cfg->name, why);
        abort();
    }
    if (!admitted && x != NULL)
        (void)eg_issue_lint(pol, &ca, x, why, sizeof(why));
out:
    X509_free(x);
    X509_NAME_free(subject);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eg_csr *csr = NULL;
    GENERAL_NAMES *sans;
    eg_skg_protect prot;
    eg_policy_verdict v;
    char text[512], why[256];
    unsigned asked;
    bool verified;
    int rc;

    if (eg_csr_parse(data, size, &csr) != 0)
        return 0;
    (void)eg_csr_key_type(csr);
    verified = eg_csr_pubkey(csr) != NULL && eg_csr_verify(csr) == 1;
    (void)eg_csr_signature_digest(csr);
    asked = eg_policy_requested_days(csr);
    if ((sans = eg_policy_csr_sans(csr)) != NULL) {
        for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++)
            eg_policy_san_text(sk_GENERAL_NAME_value(sans, i), text, sizeof(text));
        GENERAL_NAMES_free(sans);
    }
    why[0] = '\0';
    if (eg_skg_protect_read(eg_csr_attributes(csr), &prot, why, sizeof(why)) == 0)
        eg_skg_protect_clear(&prot);
    else if (why[0] == '\0')
        abort();
    for (int i = 0; i < NPROFILES; i++) {
        memset(&v, 0, sizeof(v));
        rc = eg_policy_check(&policies[i], csr, &v);
        refused_with_reason(rc, &v);
        /* What estgated would sign: a verified request with its own key. */
        if (rc == 0 && verified)
            issue(&policies[i], csr, asked, 1);
        else if (rc != -1)
            issue(&policies[i], csr, asked, 0);
        memset(&v, 0, sizeof(v));
        refused_with_reason(eg_policy_check_request(&policies[i], csr, &v), &v);
    }
    eg_csr_free(csr);
    return 0;
}
