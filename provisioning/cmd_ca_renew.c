/*
 * `ca renew`: a new self-signed root for the token's CA, with the same key or,
 * with --new-label, with a new key and the RFC 4210 4.4 root key update
 * certificates (NewWithOld, OldWithNew) that let devices holding either root
 * verify what the other key issues; with --csr, for a CA an external root
 * certified, a request for the same key that its issuer renews and `ca import`
 * brings back. Every signature is made in the token.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "args.h"
#include "cert_build.h"
#include "files.h"
#include "report.h"
#include "token.h"

static const char ca_renew_help[] =
    "usage: estgate-provision ca renew TOKEN-OPTIONS --label LABEL --days N --out FILE\n"
    "       estgate-provision ca renew TOKEN-OPTIONS --label LABEL --new-label NEW --key TYPE\n"
    "           [--subject NAME] --days N --out FILE\n"
    "       estgate-provision ca renew TOKEN-OPTIONS --label LABEL --csr FILE [--subject NAME]\n"
    "\n"
    "Renews the self-signed root of the token CA LABEL (as made by `ca create\n"
    "--self-signed`), or with --csr asks the issuer of a CA that an external root\n"
    "certified to renew it.\n"
    "\n"
    "Without --new-label the key stays: a new root with the same subject, key and\n"
    "SKI, a new serial, valid from now for N days, replaces the old one in the\n"
    "token (stored first, the old one destroyed after) and is written to FILE.\n"
    "Devices that trust the old root verify what the CA issues from now on.\n"
    "\n"
    "With --new-label a new CA key NEW is made in the token (a token object,\n"
    "sensitive, never extractable) with its self-signed root (NewWithNew, stored\n"
    "under NEW), and the RFC 4210 root key update certificates, signed in the\n"
    "token: NewWithOld (the new key certified by the old one, until N days or the\n"
    "old root's end, whichever is first) and OldWithNew (the old key certified by\n"
    "the new one, for the old root's validity). FILE gets NewWithNew, NewWithOld,\n"
    "OldWithNew and the old root: the profile's ca_chain once its ca_key is NEW.\n"
    "\n"
    "With --csr the token is not changed: FILE gets a CSR (PEM) for LABEL's key,\n"
    "with its certificate's subject, signed in the token. Have the issuer certify\n"
    "it, then `ca import --label LABEL --chain CERTS` replaces the certificate in\n"
    "the token with the later one.\n"
    "\n"
    "  --label LABEL      the CA key whose root is renewed\n"
    "  --days N           validity of the new root in days\n"
    "  --out FILE         where to write it, or the rollover chain (PEM)\n"
    "  --new-label NEW    make a new key under NEW (must be unused) instead of keeping LABEL's\n"
    "  --key TYPE         the new key: ec-p256, ec-p384, rsa2048, rsa3072 or rsa4096\n"
    "  --subject NAME     the new root's or the CSR's subject (RFC 4514); default the\n"
    "                     current certificate's\n"
    "  --csr FILE         write a CSR for LABEL's key, for its issuer to renew\n"
    "\n" EG_PROV_TOKEN_HELP;

enum { OPT_NEW_LABEL = EG_OPT_KEY_OWN, OPT_CSR };

static const struct option ca_renew_opts[] = {
    EG_PROV_TOKEN_LONGOPTS,
    {"label", required_argument, NULL, EG_OPT_LABEL},
    {"new-label", required_argument, NULL, OPT_NEW_LABEL},
    {"key", required_argument, NULL, EG_OPT_KEY},
    {"subject", required_argument, NULL, EG_OPT_SUBJECT},
    {"days", required_argument, NULL, EG_OPT_DAYS},
    {"out", required_argument, NULL, EG_OPT_OUT},
    {"csr", required_argument, NULL, OPT_CSR},
    {NULL, 0, NULL, 0},
};

struct ca_renew {
    eg_prov_token_opts tok;
    eg_prov_key_opts k; /* no --ca-label */
    const char *new_label;
    const char *csr;
    bool help;
};

/* What the token phase works with and hands on; old is the root in the token. */
struct renewal {
    X509 *old, *root, *new_with_old, *old_with_new;
    char *uri; /* of the key the new root is for */
};

static int ca_renew_opt(void *ctx, int c, const char *arg)
{
    struct ca_renew *a = ctx;

    if (c == OPT_NEW_LABEL) {
        a->new_label = arg;
        return EG_EXIT_OK;
    }
    if (c == OPT_CSR) {
        a->csr = arg;
        return EG_EXIT_OK;
    }
    return eg_prov_key_opt(&a->k, c, arg);
}

static int ca_renew_parse(int argc, char **argv, struct ca_renew *a)
{
    int rc = eg_prov_parse_args(argc, argv, ca_renew_opts, &a->tok, ca_renew_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help || (rc = eg_prov_token_opts_check(&a->tok)) != EG_EXIT_OK)
        return rc;
    if (a->csr != NULL) {
        if (a->k.label == NULL)
            return eg_prov_usage_error("--label is required");
        if (a->k.days != 0 || a->k.out != NULL || a->new_label != NULL || a->k.have_key)
            return eg_prov_usage_error("--csr asks the CA's issuer for the certificate: it goes "
                                       "without --days, --out, --new-label and --key");
        return EG_EXIT_OK;
    }
    if (a->k.label == NULL || a->k.days == 0 || a->k.out == NULL)
        return eg_prov_usage_error("--label, --days and --out are required");
    if ((a->new_label != NULL) != a->k.have_key)
        return eg_prov_usage_error("--new-label and --key go together: a new key needs both");
    if (a->new_label == NULL && a->k.subject != NULL)
        return eg_prov_usage_error("--subject goes with --new-label: a renewed root keeps its "
                                   "subject");
    if (a->new_label != NULL && strcmp(a->new_label, a->k.label) == 0)
        return eg_prov_usage_error("--new-label must differ from --label");
    return EG_EXIT_OK;
}

static void renewal_clear(struct renewal *r)
{
    X509_free(r->old);
    X509_free(r->root);
    X509_free(r->new_with_old);
    X509_free(r->old_with_new);
    OPENSSL_free(r->uri);
    memset(r, 0, sizeof(*r));
}

/* The key's certificate in the token, which must be its own self-signed root. */
static int old_root(eg_p11_key *key, const char *label, X509 **out)
{
    X509 *x = NULL;
    char issuer[256];
    int rc;

    if ((rc = eg_prov_ca_cert(key, "only a root made by `ca create --self-signed` can be renewed",
                              &x)) != EG_EXIT_OK)
        return rc;
    if (X509_self_signed(x, 1) != 1) {
        X509_NAME_oneline(X509_get_issuer_name(x), issuer, sizeof(issuer));
        X509_free(x);
        ERR_clear_error();
        return eg_prov_fail(EG_EXIT_DATAERR,
                            "the certificate of %s is issued by %s, not self-signed: its issuer "
                            "renews it. `ca renew --label %s --csr FILE` writes the request "
                            "for the same key; `ca import` brings the new certificate back. "
                            "For a new key, `ca create --csr` under a new label",
                            eg_p11_key_uri(key), issuer, label);
    }
    *out = x;
    return EG_EXIT_OK;
}

/* The PEM of what was made into the output file, not yet committed. */
static int write_certs(eg_prov_outfile *of, const struct renewal *r)
{
    X509 *certs[4] = {r->root, r->new_with_old, r->old_with_new, r->old};
    size_t i, n = r->new_with_old != NULL ? 4 : 1;
    BIO *mem = BIO_new(BIO_s_mem());
    int rc, ok = mem != NULL;

    for (i = 0; ok && i < n; i++)
        ok = PEM_write_bio_X509(mem, certs[i]);
    if (!ok)
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot encode PEM");
    else
        rc = eg_prov_outfile_write(of, mem);
    BIO_free(mem);
    return rc;
}

static int keep_uri(eg_p11_key *key, struct renewal *r)
{
    if ((r->uri = OPENSSL_strdup(eg_p11_key_uri(key))) == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    return EG_EXIT_OK;
}

/*
 * Same key: the new root replaces the old one in the token, and the file is
 * committed; when the commit fails the old root goes back.
 */
static int renew_same_key(const struct ca_renew *a, eg_token *tok, eg_p11_key *key,
                          eg_prov_outfile *of, struct renewal *r)
{
    eg_prov_cert_spec spec = {.profile = EG_PROFILE_CA,
                              .subject = X509_get_subject_name(r->old),
                              .pubkey = X509_get0_pubkey(r->old),
                              .days = a->k.days,
                              .ski = X509_get0_subject_key_id(r->old)};
    size_t idlen;
    const uint8_t *id = eg_p11_key_id(key, &idlen);
    int rc;

    if ((rc = eg_prov_key_pkey(key, &spec.signer)) != EG_EXIT_OK ||
        (rc = eg_prov_cert_build(&spec, &r->root)) != EG_EXIT_OK ||
        (rc = write_certs(of, r)) != EG_EXIT_OK || (rc = keep_uri(key, r)) != EG_EXIT_OK ||
        (rc = eg_prov_replace_cert(tok, r->old, r->root, a->k.label, id, idlen)) != EG_EXIT_OK)
        goto out;
    if ((rc = eg_prov_outfile_commit(of)) != EG_EXIT_OK)
        eg_prov_replace_cert(tok, r->root, r->old, a->k.label, id, idlen);
out:
    EVP_PKEY_free(spec.signer);
    return rc;
}

/* NewWithOld ends with the old root at the latest; an expired old root certifies nothing. */
static int cross_end(const struct ca_renew *a, X509 *old, ASN1_TIME **out)
{
    ASN1_TIME *end = X509_time_adj_ex(NULL, a->k.days, 0, NULL);

    if (end == NULL)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot compute a validity");
    if (X509_cmp_current_time(X509_get0_notAfter(old)) <= 0) {
        ASN1_TIME_free(end);
        return eg_prov_fail(EG_EXIT_DATAERR,
                            "the root of '%s' has expired: no device can use a rollover "
                            "certificate signed by it. Make the new CA with `ca create "
                            "--self-signed` and give devices its root",
                            a->k.label);
    }
    if (ASN1_TIME_compare(end, X509_get0_notAfter(old)) > 0 &&
        ASN1_STRING_copy(end, X509_get0_notAfter(old)) != 1) {
        ASN1_TIME_free(end);
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot compute a validity");
    }
    *out = end;
    return EG_EXIT_OK;
}

/* NewWithNew, NewWithOld and OldWithNew, each signed in the token. */
static int rollover_sign(const struct ca_renew *a, const X509_NAME *subject, EVP_PKEY *old_key,
                         eg_p11_key *key, struct renewal *r)
{
    EVP_PKEY *pub = eg_p11_key_public(key), *new_key = NULL;
    eg_prov_cert_spec spec = {.profile = EG_PROFILE_CA, .subject = subject, .days = a->k.days};
    ASN1_TIME *end = NULL;
    int rc;

    if (pub == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "no public key for %s", eg_p11_key_uri(key));
        goto out;
    }
    if ((rc = cross_end(a, r->old, &end)) != EG_EXIT_OK ||
        (rc = eg_prov_key_pkey(key, &new_key)) != EG_EXIT_OK)
        goto out;
    spec.pubkey = pub;
    spec.signer = new_key;
    if ((rc = eg_prov_cert_build(&spec, &r->root)) != EG_EXIT_OK)
        goto out;
    spec.issuer = r->old;
    spec.signer = old_key;
    spec.not_after = end;
    if ((rc = eg_prov_cert_build(&spec, &r->new_with_old)) != EG_EXIT_OK)
        goto out;
    spec.subject = X509_get_subject_name(r->old);
    spec.pubkey = X509_get0_pubkey(r->old);
    spec.issuer = r->root;
    spec.signer = new_key;
    spec.ski = X509_get0_subject_key_id(r->old);
    spec.not_before = X509_get0_notBefore(r->old);
    spec.not_after = X509_get0_notAfter(r->old);
    rc = eg_prov_cert_build(&spec, &r->old_with_new);
out:
    ASN1_TIME_free(end);
    EVP_PKEY_free(new_key);
    EVP_PKEY_free(pub);
    return rc;
}

/* Stores the new root under the new key's id and commits the file; undone when either fails. */
static int rollover_keep(const struct ca_renew *a, eg_token *tok, eg_p11_key *key,
                         eg_prov_outfile *of, struct renewal *r)
{
    size_t idlen;
    const uint8_t *id = eg_p11_key_id(key, &idlen);
    int rc;

    if ((rc = eg_prov_store_cert(tok, r->root, a->new_label, id, idlen)) != EG_EXIT_OK)
        return rc;
    if ((rc = eg_prov_outfile_commit(of)) != EG_EXIT_OK)
        eg_prov_destroy_cert(tok, r->root);
    return rc;
}

/*
 * New key: generated under --new-label like `ca create` makes it; when a later
 * step fails it is destroyed again, so the label is free for the next try.
 */
static int rollover(const struct ca_renew *a, const X509_NAME *subject, eg_token *tok,
                    eg_p11_key *old_key, eg_prov_outfile *of, struct renewal *r)
{
    eg_keygen_spec spec = a->k.spec;
    EVP_PKEY *old_pkey = NULL;
    eg_p11_key *key = NULL;
    int rc;

    spec.label = a->new_label;
    spec.token_object = true;
    spec.wrappable = false; /* a CA key never leaves the token, not even wrapped */
    if ((rc = eg_prov_key_pkey(old_key, &old_pkey)) != EG_EXIT_OK)
        goto out;
    if (eg_p11_key_generate(tok, &spec, &key) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot generate the CA key '%s'", a->new_label);
        goto out;
    }
    if ((rc = rollover_sign(a, subject, old_pkey, key, r)) != EG_EXIT_OK ||
        (rc = write_certs(of, r)) != EG_EXIT_OK || (rc = keep_uri(key, r)) != EG_EXIT_OK ||
        (rc = rollover_keep(a, tok, key, of, r)) != EG_EXIT_OK)
        eg_p11_key_destroy(key);
out:
    eg_p11_key_free(key);
    EVP_PKEY_free(old_pkey);
    return rc;
}

/* The token phase: every check before the first change, then the renewal itself. */
static int renew(const struct ca_renew *a, X509_NAME *subject, eg_prov_outfile *of,
                 struct renewal *r)
{
    eg_p11_key *old_key = NULL;
    eg_token *tok = NULL;
    int rc;

    if ((rc = eg_prov_token_open(&a->tok, &tok)) != EG_EXIT_OK ||
        (rc = eg_prov_key_by_label(tok, a->k.label, &old_key)) != EG_EXIT_OK ||
        (rc = old_root(old_key, a->k.label, &r->old)) != EG_EXIT_OK)
        goto out;
    if (a->new_label == NULL) {
        rc = renew_same_key(a, tok, old_key, of, r);
        goto out;
    }
    if ((rc = eg_prov_label_unused(tok, a->new_label)) != EG_EXIT_OK)
        goto out;
    rc =
        rollover(a, subject != NULL ? subject : X509_get_subject_name(r->old), tok, old_key, of, r);
out:
    eg_p11_key_free(old_key);
    eg_prov_token_close(tok);
    return rc;
}

/*
 * --csr: a request for the CA key as it is, under its certificate's subject (or
 * --subject), signed in the token. The token does not change; *issuer gets
 * who certified the current certificate, for the message.
 */
static int renewal_request(const struct ca_renew *a, const X509_NAME *subject, X509_REQ **req,
                           char *issuer, size_t cap)
{
    EVP_PKEY *pub = NULL, *signer = NULL;
    eg_p11_key *key = NULL;
    eg_token *tok = NULL;
    X509 *cur = NULL;
    int rc;

    if ((rc = eg_prov_token_open(&a->tok, &tok)) != EG_EXIT_OK ||
        (rc = eg_prov_key_by_label(tok, a->k.label, &key)) != EG_EXIT_OK ||
        (rc = eg_prov_ca_cert(key, "make one with `ca create`", &cur)) != EG_EXIT_OK ||
        (rc = eg_prov_key_pkey(key, &signer)) != EG_EXIT_OK)
        goto out;
    if ((pub = eg_p11_key_public(key)) == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "no public key for %s", eg_p11_key_uri(key));
        goto out;
    }
    if (X509_self_signed(cur, 0) == 1)
        snprintf(issuer, cap, "the external root that is to certify it");
    else
        X509_NAME_oneline(X509_get_issuer_name(cur), issuer, (int)cap);
    rc =
        eg_prov_csr_build(subject != NULL ? subject : X509_get_subject_name(cur), pub, signer, req);
out:
    ERR_clear_error();
    X509_free(cur);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(signer);
    eg_p11_key_free(key);
    eg_prov_token_close(tok);
    return rc;
}

static int ca_renew_csr(const struct ca_renew *a, const X509_NAME *subject, eg_prov_outfile *of)
{
    X509_REQ *req = NULL;
    BIO *mem = NULL;
    char issuer[256];
    int rc;

    if ((rc = renewal_request(a, subject, &req, issuer, sizeof(issuer))) != EG_EXIT_OK)
        goto out;
    if ((mem = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509_REQ(mem, req)) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot encode PEM");
        goto out;
    }
    if ((rc = eg_prov_outfile_write(of, mem)) != EG_EXIT_OK ||
        (rc = eg_prov_outfile_commit(of)) != EG_EXIT_OK)
        goto out;
    eg_prov_note("wrote a CSR for the key of '%s' to %s: have %s certify it, then `estgate-"
                 "provision ca import --label %s --chain CERTS` replaces the certificate in the "
                 "token, and CERTS becomes the profile's ca_chain",
                 a->k.label, a->csr, issuer, a->k.label);
out:
    BIO_free(mem);
    X509_REQ_free(req);
    return rc;
}

static int ca_renew_run(const struct ca_renew *a)
{
    struct renewal r = {NULL, NULL, NULL, NULL, NULL};
    eg_prov_outfile *of = NULL;
    X509_NAME *subject = NULL;
    int rc;

    /* Everything that can fail without the token fails before it changes. */
    if ((a->k.subject != NULL && (rc = eg_prov_name_parse(a->k.subject, &subject)) != EG_EXIT_OK) ||
        (rc = eg_prov_outfile_open(a->csr != NULL ? a->csr : a->k.out, 0644, &of)) != EG_EXIT_OK)
        goto out;
    if (a->csr != NULL) {
        rc = ca_renew_csr(a, subject, of);
        goto out;
    }
    if ((rc = renew(a, subject, of, &r)) != EG_EXIT_OK)
        goto out;
    if (a->new_label == NULL) {
        eg_prov_note("renewed the root of %s", r.uri);
        eg_prov_note("wrote the new self-signed root certificate to %s", a->k.out);
    } else {
        eg_prov_note("created CA key %s", r.uri);
        eg_prov_note("wrote NewWithNew, NewWithOld, OldWithNew and OldWithOld to %s: make it the "
                     "profile's ca_chain, with ca_key = %s, and reload estgated",
                     a->k.out, r.uri);
    }
    rc = EG_EXIT_OK;
out:
    renewal_clear(&r);
    eg_prov_outfile_free(of);
    X509_NAME_free(subject);
    return rc;
}

int eg_prov_cmd_ca_renew(int argc, char **argv)
{
    struct ca_renew a;
    int rc;

    memset(&a, 0, sizeof(a));
    eg_prov_report_prefix("estgate-provision ca renew");
    if ((rc = ca_renew_parse(argc, argv, &a)) != EG_EXIT_OK)
        return rc;
    if (a.help) {
        eg_prov_help(ca_renew_help);
        return EG_EXIT_OK;
    }
    return ca_renew_run(&a);
}
