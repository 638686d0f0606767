/* The device clients' command line and HTTP exchange (device.h). */
#include "device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ANSWER (256 * 1024)

int dev_fail(const char *prog, const char *what, const char *detail)
{
    fprintf(stderr, "%s: %s%s%s\n", prog, what, detail && *detail ? ": " : "",
            detail ? detail : "");
    return -1;
}

long dev_b64(const unsigned char *in, size_t n, char *out, size_t cap)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;

    if ((n + 2) / 3 * 4 + 1 > cap)
        return -1;
    for (size_t i = 0; i < n; i += 3) {
        unsigned long v = (unsigned long)in[i] << 16;

        if (i + 1 < n)
            v |= (unsigned long)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = i + 1 < n ? abc[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? abc[v & 63] : '=';
    }
    out[o] = 0;
    return (long)o;
}

static const char *const usage =
    "CA_PEM HOST PORT PATH [--out F] [--user U --pass-file F] [--cert PEM --key PEM]\n"
    "       [--new-key PEM | --csr-key PEM] [--key-type ec|rsa] [--cn NAME] [--dns NAME]\n"
    "       [--der] [--tls12] [--bind] [--suites rsa|ecdsa] [--max-fragment 1024]\n";

static const char **slot(dev_opts *o, const char *name)
{
    static const struct {
        const char *name;
        size_t off;
    } opts[] = {
        {"--out", offsetof(dev_opts, out)},
        {"--user", offsetof(dev_opts, user)},
        {"--pass-file", offsetof(dev_opts, pass_file)},
        {"--cert", offsetof(dev_opts, cert)},
        {"--key", offsetof(dev_opts, key)},
        {"--new-key", offsetof(dev_opts, new_key)},
        {"--csr-key", offsetof(dev_opts, csr_key)},
        {"--key-type", offsetof(dev_opts, key_type)},
        {"--cn", offsetof(dev_opts, cn)},
        {"--dns", offsetof(dev_opts, dns)},
        {"--suites", offsetof(dev_opts, suites)},
        {"--max-fragment", offsetof(dev_opts, max_fragment)},
    };

    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++)
        if (strcmp(name, opts[i].name) == 0)
            return (const char **)((char *)o + opts[i].off);
    return NULL;
}

int dev_parse(const char *prog, int argc, char **argv, dev_opts *o)
{
    int i;

    memset(o, 0, sizeof(*o));
    if (argc < 5)
        goto bad;
    o->ca = argv[1];
    o->host = argv[2];
    o->port = argv[3];
    o->path = argv[4];
    o->key_type = "ec";
    for (i = 5; i < argc; i++) {
        const char **s;

        if (strcmp(argv[i], "--der") == 0)
            o->der = 1;
        else if (strcmp(argv[i], "--tls12") == 0)
            o->tls12 = 1;
        else if (strcmp(argv[i], "--bind") == 0)
            o->bind = 1;
        else if ((s = slot(o, argv[i])) != NULL && i + 1 < argc)
            *s = argv[++i];
        else
            goto bad;
    }
    if ((o->user != NULL) == (o->pass_file != NULL) && (o->cert != NULL) == (o->key != NULL) &&
        (strcmp(o->key_type, "ec") == 0 || strcmp(o->key_type, "rsa") == 0) &&
        (o->suites == NULL || strcmp(o->suites, "rsa") == 0 || strcmp(o->suites, "ecdsa") == 0) &&
        (o->max_fragment == NULL || strcmp(o->max_fragment, "1024") == 0))
        return 0;
bad:
    fprintf(stderr, "usage: %s %s", prog, usage);
    return -1;
}

/* "Authorization: Basic ...\r\n" from --user and --pass-file, or "" without them. */
static int basic_header(const dev_opts *o, char *out, size_t cap)
{
    char secret[256], cred[512];
    size_t n;
    long len;
    FILE *f;

    out[0] = 0;
    if (o->user == NULL)
        return 0;
    if ((f = fopen(o->pass_file, "r")) == NULL)
        return -1;
    n = fread(secret, 1, sizeof(secret) - 1, f);
    fclose(f);
    while (n > 0 && (secret[n - 1] == '\n' || secret[n - 1] == '\r'))
        n--;
    secret[n] = 0;
    n = (size_t)snprintf(cred, sizeof(cred), "%s:%s", o->user, secret);
    memcpy(out, "Authorization: Basic ", 21);
    len = dev_b64((unsigned char *)cred, n, out + 21, cap - 23);
    memset(secret, 0, sizeof(secret));
    memset(cred, 0, sizeof(cred));
    if (len < 0)
        return -1;
    memcpy(out + 21 + len, "\r\n", 3);
    return 0;
}

static int read_answer(const char *prog, const dev_io *io, char *buf, size_t cap, size_t *len)
{
    size_t n = 0, got;

    for (;;) {
        if (io->read(io->tls, (unsigned char *)buf + n, cap - 1 - n, &got) != 0)
            return -1;
        if (got == 0)
            break;
        n += got;
        if (n == cap - 1)
            return dev_fail(prog, "the answer is larger than this client reads", NULL);
    }
    buf[n] = 0;
    *len = n;
    return 0;
}

int dev_exchange(const char *prog, const dev_io *io, const dev_opts *o, const unsigned char *csr,
                 size_t csr_len)
{
    static char answer[MAX_ANSWER], b64[8192];
    char head[2048], auth[1024];
    const unsigned char *body = csr;
    size_t blen = csr_len, alen;
    const char *payload;
    int n, status;

    if (basic_header(o, auth, sizeof(auth)) != 0)
        return dev_fail(prog, "cannot read the password file", o->pass_file);
    if (csr != NULL && !o->der) {
        long l = dev_b64(csr, csr_len, b64, sizeof(b64));

        if (l < 0)
            return dev_fail(prog, "CSR too large", NULL);
        body = (const unsigned char *)b64;
        blen = (size_t)l;
    }
    if (csr != NULL)
        n = snprintf(head, sizeof(head),
                     "POST %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: %s\r\n%s"
                     "Content-Type: application/pkcs10\r\n%sContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     o->path, prog, auth, o->der ? "" : "Content-Transfer-Encoding: base64\r\n",
                     blen);
    else
        n = snprintf(head, sizeof(head),
                     "GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: %s\r\n%s"
                     "Connection: close\r\n\r\n",
                     o->path, prog, auth);
    memset(auth, 0, sizeof(auth));
    if (n < 0 || (size_t)n >= sizeof(head))
        return dev_fail(prog, "request head too long", NULL);
    if (io->write(io->tls, (unsigned char *)head, (size_t)n) != 0 ||
        (blen > 0 && io->write(io->tls, body, blen) != 0) ||
        read_answer(prog, io, answer, sizeof(answer), &alen) != 0)
        return -1;
    if (sscanf(answer, "HTTP/1.1 %d", &status) != 1)
        return dev_fail(prog, "no HTTP status line in the answer", NULL);
    if ((payload = strstr(answer, "\r\n\r\n")) == NULL)
        return dev_fail(prog, "no end of headers in the answer", NULL);
    payload += 4;
    {
        const char *ra = strstr(answer, "\r\nRetry-After: ");

        if (ra != NULL && ra < payload)
            fprintf(stderr, "%s: Retry-After %d\n", prog, atoi(ra + 15));
    }
    if (o->out != NULL) {
        size_t plen = alen - (size_t)(payload - answer);
        FILE *f = fopen(o->out, "w");

        if (f == NULL || fwrite(payload, 1, plen, f) != plen || fclose(f) != 0)
            return dev_fail(prog, "cannot write the output file", o->out);
    }
    printf("%d\n", status);
    return 0;
}
