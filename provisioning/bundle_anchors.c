/*
 * Trust anchors for a bundle, from PEM or DER files and folders of them.
 * Only CA certificates are anchors, and each only once: a device that gets a
 * leaf or a duplicate in its trust store would trust what nobody meant.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "bundle.h"
#include "provision.h"
#include "report.h"

struct eg_bundle_anchors {
    STACK_OF(X509) * certs;
    char *src[ESTGATE_BUNDLE_MAX_ANCHORS]; /* "FILE, certificate N" for messages */
};

eg_bundle_anchors *eg_bundle_anchors_new(void)
{
    eg_bundle_anchors *a = calloc(1, sizeof(*a));

    if (a != NULL && (a->certs = sk_X509_new_null()) == NULL) {
        free(a);
        a = NULL;
    }
    return a;
}

void eg_bundle_anchors_free(eg_bundle_anchors *a)
{
    int i;

    if (a == NULL)
        return;
    for (i = 0; i < sk_X509_num(a->certs); i++)
        free(a->src[i]);
    sk_X509_pop_free(a->certs, X509_free);
    free(a);
}

STACK_OF(X509) * eg_bundle_anchors_certs(const eg_bundle_anchors *a)
{
    return a->certs;
}

static int anchor_ok(const eg_bundle_anchors *a, X509 *x, const char *src)
{
    char name[256];
    int i;

    X509_NAME_oneline(X509_get_subject_name(x), name, sizeof(name));
    /* 1: basicConstraints CA:TRUE. Anything weaker (v1 roots, keyUsage only) is refused. */
    if (X509_check_ca(x) != 1)
        return eg_prov_fail(EG_EXIT_DATAERR,
                            "%s (%s) is not a CA certificate (no basicConstraints CA:TRUE); "
                            "only CA certificates can be trust anchors",
                            src, name);
    for (i = 0; i < sk_X509_num(a->certs); i++) {
        if (X509_cmp(sk_X509_value(a->certs, i), x) == 0)
            return eg_prov_fail(EG_EXIT_DATAERR, "%s (%s) is a duplicate of %s", src, name,
                                a->src[i]);
    }
    if (sk_X509_num(a->certs) == ESTGATE_BUNDLE_MAX_ANCHORS)
        return eg_prov_fail(EG_EXIT_DATAERR, "more than %d trust anchors",
                            ESTGATE_BUNDLE_MAX_ANCHORS);
    return EG_EXIT_OK;
}

/* Takes x (on success or not). */
static int add_cert(eg_bundle_anchors *a, X509 *x, const char *path, int n)
{
    char *src = NULL;
    int rc;

    if (asprintf(&src, "%s, certificate %d", path, n) < 0) {
        src = NULL;
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    if ((rc = anchor_ok(a, x, src)) != EG_EXIT_OK)
        goto out;
    if (sk_X509_push(a->certs, x) <= 0) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    a->src[sk_X509_num(a->certs) - 1] = src;
    src = NULL;
    x = NULL;
    rc = EG_EXIT_OK;
out:
    free(src);
    X509_free(x);
    return rc;
}

static int add_pem(eg_bundle_anchors *a, BIO *in, const char *path)
{
    X509 *x;
    int n = 0, rc;

    while ((x = PEM_read_bio_X509(in, NULL, NULL, NULL)) != NULL) {
        if ((rc = add_cert(a, x, path, ++n)) != EG_EXIT_OK)
            return rc;
    }
    /* The loop ends on "no start line" at the end of the file; anything else is an error. */
    if (ERR_GET_REASON(ERR_peek_last_error()) == PEM_R_NO_START_LINE && n > 0) {
        ERR_clear_error();
        return EG_EXIT_OK;
    }
    return eg_prov_fail(EG_EXIT_DATAERR, "%s: not a PEM certificate file (certificate %d)", path,
                        n + 1);
}

static int add_der(eg_bundle_anchors *a, BIO *in, const char *path)
{
    X509 *x = d2i_X509_bio(in, NULL);
    char extra;

    if (x == NULL || BIO_read(in, &extra, 1) > 0) {
        X509_free(x);
        return eg_prov_fail(EG_EXIT_DATAERR, "%s is neither a PEM nor a DER certificate", path);
    }
    return add_cert(a, x, path, 1);
}

static int add_file(eg_bundle_anchors *a, const char *path)
{
    BIO *in = BIO_new_file(path, "rb");
    char head;
    int rc, n;

    if (in == NULL) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    /* PEM files start with text; a DER certificate starts with a SEQUENCE (0x30). */
    n = BIO_read(in, &head, 1);
    if (n != 1 || BIO_seek(in, 0) != 0) {
        rc = eg_prov_fail(EG_EXIT_DATAERR, "%s is empty", path);
        goto out;
    }
    rc = head == 0x30 ? add_der(a, in, path) : add_pem(a, in, path);
out:
    BIO_free(in);
    return rc;
}

static int by_name(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* The folder's entries to take, sorted; hidden names and "." / ".." left out. */
static int list_dir(const char *path, char ***names, size_t *n)
{
    DIR *d = opendir(path);
    struct dirent *e;
    char **v = NULL, **nv;
    size_t cnt = 0, i;
    int rc;

    if (d == NULL) {
        rc = eg_prov_fail(EG_EXIT_NOINPUT, "cannot read the folder %s: %s", path, strerror(errno));
        goto out;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if ((nv = realloc(v, (cnt + 1) * sizeof(*v))) == NULL ||
            asprintf(&nv[cnt], "%s/%s", path, e->d_name) < 0) {
            v = nv != NULL ? nv : v;
            rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
            goto out;
        }
        v = nv;
        cnt++;
    }
    if (cnt > 0)
        qsort(v, cnt, sizeof(*v), by_name);
    *names = v;
    *n = cnt;
    v = NULL;
    cnt = 0;
    rc = EG_EXIT_OK;
out:
    for (i = 0; i < cnt; i++)
        free(v[i]);
    free(v);
    if (d != NULL)
        closedir(d);
    return rc;
}

static int add_dir(eg_bundle_anchors *a, const char *path)
{
    char **names = NULL;
    size_t n = 0, i, taken = 0;
    struct stat st;
    int rc;

    if ((rc = list_dir(path, &names, &n)) != EG_EXIT_OK)
        return rc;
    for (i = 0; i < n && rc == EG_EXIT_OK; i++) {
        /* Sub-folders are not descended into: a bundle's contents should be visible at a glance. */
        if (stat(names[i], &st) == 0 && S_ISDIR(st.st_mode))
            continue;
        rc = add_file(a, names[i]);
        taken++;
    }
    if (rc == EG_EXIT_OK && taken == 0)
        rc = eg_prov_fail(EG_EXIT_DATAERR, "the folder %s holds no certificate files", path);
    for (i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

int eg_bundle_anchors_add(eg_bundle_anchors *a, const char *path)
{
    struct stat st;

    if (stat(path, &st) != 0)
        return eg_prov_fail(EG_EXIT_NOINPUT, "cannot read %s: %s", path, strerror(errno));
    return S_ISDIR(st.st_mode) ? add_dir(a, path) : add_file(a, path);
}
