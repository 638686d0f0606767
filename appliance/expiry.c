/* Warnings for the TLS certificate and the issuing CAs before they run out. */
#include <stdbool.h>

#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "expiry.h"

/* The first certificate in a PEM file (the TLS leaf, or the profile's CA). */
static X509 *first_cert(const char *path)
{
    BIO *bio = BIO_new_file(path, "r");
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;

    BIO_free(bio);
    return x;
}

/* t as YYYY-MM-DD into date; 0 or -1. */
static int day_of(const ASN1_TIME *t, char *date, size_t cap)
{
    struct tm tm;

    return ASN1_TIME_to_tm(t, &tm) && strftime(date, cap, "%Y-%m-%d", &tm) ? 0 : -1;
}

/* A certificate's validity seen from now. */
typedef struct span {
    long days;      /* whole days to notAfter, negative once past */
    bool early;     /* now is before notBefore */
    char end[16];   /* notAfter as YYYY-MM-DD */
    char start[16]; /* notBefore as YYYY-MM-DD */
    bool root;      /* self-signed: estgate renews it; else its issuer does */
} span;

/* The first certificate of the file at path, seen from now; -1 when it or its times cannot
   be read. */
static int span_of(const char *path, time_t now, span *out)
{
    X509 *x = path ? first_cert(path) : NULL;
    ASN1_TIME *t = x ? ASN1_TIME_set(NULL, now) : NULL;
    int d = 0, s = 0, rc = -1;

    if (t != NULL && ASN1_TIME_diff(&d, &s, t, X509_get0_notAfter(x)) &&
        day_of(X509_get0_notAfter(x), out->end, sizeof(out->end)) == 0 &&
        day_of(X509_get0_notBefore(x), out->start, sizeof(out->start)) == 0) {
        out->days = d - (d <= 0 && s < 0 ? 1 : 0); /* a part of a day already past counts */
        out->early = ASN1_TIME_compare(t, X509_get0_notBefore(x)) < 0;
        out->root = X509_self_signed(x, 0) == 1;
        rc = 0;
    }
    ASN1_TIME_free(t);
    X509_free(x);
    ERR_clear_error();
    return rc;
}

size_t eg_expiry_warn(const eg_config *cfg, time_t now, FILE *fp, const char *prefix)
{
    char clock[16] = "";
    struct tm tm;
    size_t n = 0;
    span v;

    if (gmtime_r(&now, &tm) != NULL)
        strftime(clock, sizeof(clock), "%Y-%m-%d", &tm);
    if (span_of(cfg->tls_chain_file, now, &v) == 0) {
        if (v.early)
            fprintf(fp,
                    "%sthe system clock reads %s, before the TLS certificate (%s) begins on %s: "
                    "is the clock set? Until it is, client certificates look not yet valid "
                    "too\n",
                    prefix, clock, cfg->tls_chain_file, v.start);
        else if (v.days < 0)
            fprintf(fp,
                    "%sthe TLS certificate (%s) expired on %s: devices refuse the handshake; "
                    "renew it with estgate-provision tls create and reload\n",
                    prefix, cfg->tls_chain_file, v.end);
        else if (v.days < EG_EXPIRY_WARN_DAYS)
            fprintf(fp,
                    "%sthe TLS certificate (%s) expires on %s, in %ld day%s; renew it with "
                    "estgate-provision tls create and reload\n",
                    prefix, cfg->tls_chain_file, v.end, v.days, v.days == 1 ? "" : "s");
        n += v.early || v.days < EG_EXPIRY_WARN_DAYS;
    }
    for (size_t i = 0; i < cfg->nprofiles; i++) {
        const eg_profile_cfg *p = &cfg->profiles[i];
        long ahead = p->max_days > EG_EXPIRY_WARN_DAYS ? p->max_days : EG_EXPIRY_WARN_DAYS;
        const char *how;

        if (span_of(p->ca_chain_file, now, &v) != 0 || (!v.early && v.days >= ahead))
            continue;
        how = v.root ? "estgate-provision ca renew"
                     : "estgate-provision ca renew --csr (its issuer certifies the request, "
                       "ca import brings the certificate back)";
        if (v.early)
            fprintf(fp,
                    "%sprofile %s: the system clock reads %s, before the CA certificate (%s) "
                    "begins on %s: is the clock set? The profile issues nothing until it is\n",
                    prefix, p->name, clock, p->ca_chain_file, v.start);
        else if (v.days < 0)
            fprintf(fp,
                    "%sprofile %s: the CA certificate (%s) expired on %s: the profile issues "
                    "nothing until it is renewed (%s) and reloaded\n",
                    prefix, p->name, p->ca_chain_file, v.end, how);
        else
            fprintf(fp,
                    "%sprofile %s: the CA certificate (%s) expires on %s, in %ld day%s: "
                    "certificates issued now end with it (max_days = %u); renew it with "
                    "%s and reload\n",
                    prefix, p->name, p->ca_chain_file, v.end, v.days, v.days == 1 ? "" : "s",
                    p->max_days, how);
        n++;
    }
    fflush(fp);
    return n;
}
