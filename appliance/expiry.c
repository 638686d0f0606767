/* Warnings for the TLS certificate and the issuing CAs before they run out. */
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

/*
 * Whole days from now to the certificate's notAfter (negative once past) and
 * the date as YYYY-MM-DD; -1 when the file or its time cannot be read.
 */
static int days_left(const char *path, time_t now, long *days, char *date, size_t cap)
{
    X509 *x = path ? first_cert(path) : NULL;
    ASN1_TIME *t = x ? ASN1_TIME_set(NULL, now) : NULL;
    int d = 0, s = 0, rc = -1;
    struct tm tm;

    if (t != NULL && ASN1_TIME_diff(&d, &s, t, X509_get0_notAfter(x)) &&
        ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) && strftime(date, cap, "%Y-%m-%d", &tm)) {
        *days = d - (d <= 0 && s < 0 ? 1 : 0); /* a part of a day already past counts */
        rc = 0;
    }
    ASN1_TIME_free(t);
    X509_free(x);
    ERR_clear_error();
    return rc;
}

size_t eg_expiry_warn(const eg_config *cfg, time_t now, FILE *fp, const char *prefix)
{
    char date[16];
    size_t n = 0;
    long days;

    if (days_left(cfg->tls_chain_file, now, &days, date, sizeof(date)) == 0) {
        if (days < 0)
            fprintf(fp,
                    "%sthe TLS certificate (%s) expired on %s: devices refuse the handshake; "
                    "renew it with estgate-provision tls create\n",
                    prefix, cfg->tls_chain_file, date);
        else if (days < EG_EXPIRY_WARN_DAYS)
            fprintf(fp,
                    "%sthe TLS certificate (%s) expires on %s, in %ld day%s; renew it with "
                    "estgate-provision tls create\n",
                    prefix, cfg->tls_chain_file, date, days, days == 1 ? "" : "s");
        n += days < EG_EXPIRY_WARN_DAYS;
    }
    for (size_t i = 0; i < cfg->nprofiles; i++) {
        const eg_profile_cfg *p = &cfg->profiles[i];
        long ahead = p->max_days > EG_EXPIRY_WARN_DAYS ? p->max_days : EG_EXPIRY_WARN_DAYS;

        if (days_left(p->ca_chain_file, now, &days, date, sizeof(date)) != 0 || days >= ahead)
            continue;
        if (days < 0)
            fprintf(fp,
                    "%sprofile %s: the CA certificate (%s) expired on %s: the profile issues "
                    "nothing until it is renewed\n",
                    prefix, p->name, p->ca_chain_file, date);
        else
            fprintf(fp,
                    "%sprofile %s: the CA certificate (%s) expires on %s, in %ld day%s: "
                    "certificates issued now end with it (max_days = %u)\n",
                    prefix, p->name, p->ca_chain_file, date, days, days == 1 ? "" : "s",
                    p->max_days);
        n++;
    }
    fflush(fp);
    return n;
}
