/*
 * EST request handling without HTTP plumbing: route, check method and media
 * type, authenticate, decode, ask the core, map its answer to a status.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "est.h"
#include "server.h"
#include "wire.h"

#define EST_PREFIX      "/.well-known/est/"
#define RETRY_AFTER_MIN 1
#define LABEL_MAX       64

typedef enum est_op {
    OP_CACERTS,
    OP_SIMPLEENROLL,
    OP_SIMPLEREENROLL,
    OP_CSRATTRS,
    OP_FULLCMC,
    OP_SERVERKEYGEN,
    OP_COUNT,
} est_op;

static const struct {
    const char *name;
    const char *method;
} ops[OP_COUNT] = {
    [OP_CACERTS] = {"cacerts", "GET"},
    [OP_SIMPLEENROLL] = {"simpleenroll", "POST"},
    [OP_SIMPLEREENROLL] = {"simplereenroll", "POST"},
    [OP_CSRATTRS] = {"csrattrs", "GET"},
    [OP_FULLCMC] = {"fullcmc", "POST"},
    [OP_SERVERKEYGEN] = {"serverkeygen", "POST"},
};

struct eg_est {
    pthread_rwlock_t lock; /* requests read cfg and auth; a reload replaces them */
    const eg_config *cfg;
    eg_config *owned; /* cfg when a reload gave it; freed at the next one */
    eg_core *core;
    eg_auth *auth;
};

/* One request in flight: what routing found, for responses and audit records. */
typedef struct est_ctx {
    eg_est *est;
    const eg_http_req *req;
    eg_http_resp *resp;
    const eg_profile_cfg *profile;
    char label[LABEL_MAX + 1];
    est_op op;
} est_ctx;

void eg_http_resp_clear(eg_http_resp *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nheaders; i++)
        free(r->headers[i]);
    if (r->body_secure)
        OPENSSL_secure_clear_free(r->body, r->body_len);
    else
        free(r->body);
    free(r->content_type_owned);
    memset(r, 0, sizeof(*r));
}

int eg_est_new(const eg_config *cfg, eg_core *core, eg_est **out)
{
    eg_est *est = calloc(1, sizeof(*est));
    int rc = -1;

    if (est == NULL)
        goto out;
    if (eg_core_lock_init(&est->lock) != 0) {
        free(est);
        return -1;
    }
    est->cfg = cfg;
    est->core = core;
    if (eg_auth_new(cfg, &est->auth) != 0)
        goto out;
    *out = est;
    est = NULL;
    rc = 0;
out:
    eg_est_free(est);
    return rc;
}

void eg_est_free(eg_est *est)
{
    if (est == NULL)
        return;
    eg_auth_free(est->auth);
    eg_config_free(est->owned);
    pthread_rwlock_destroy(&est->lock);
    free(est);
}

const eg_config *eg_est_config(const eg_est *est)
{
    return est->cfg;
}

int eg_est_reload(eg_est *est, eg_config *cfg)
{
    eg_auth *auth = NULL, *old_auth;
    eg_core_next *next = NULL;
    eg_config *old_cfg;

    if (eg_auth_new(cfg, &auth) != 0) {
        fprintf(stderr, "estgated: reload: the profiles' users or client CA bundles cannot be "
                        "loaded\n");
        return -1;
    }
    /* The token's part (CA keys, serverkeygen probes) first, outside the lock: requests
       go on being answered while the token is slow, or hangs. */
    if (eg_core_reload_prepare(est->core, cfg, &next) != 0) {
        eg_auth_free(auth);
        return -1;
    }
    /* No request runs while the core and the web change together: pointers only. */
    pthread_rwlock_wrlock(&est->lock);
    eg_core_reload_commit(est->core, cfg, next);
    old_auth = est->auth;
    eg_auth_adopt_cache(auth, old_auth);
    old_cfg = est->owned;
    est->auth = auth;
    est->cfg = est->owned = cfg;
    pthread_rwlock_unlock(&est->lock);
    eg_auth_free(old_auth);
    eg_config_free(old_cfg);
    return 0;
}

static void add_header(eg_http_resp *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_header(eg_http_resp *r, const char *fmt, ...)
{
    va_list ap;
    char *h = NULL;

    if (r->nheaders == EG_HTTP_MAX_HEADERS)
        return;
    va_start(ap, fmt);
    if (vasprintf(&h, fmt, ap) >= 0)
        r->headers[r->nheaders++] = h;
    va_end(ap);
}

/* An error answer: text/plain, the reason and a newline. */
static void respond_text(eg_http_resp *r, int status, const char *reason)
{
    size_t n = strlen(reason);

    r->status = status;
    r->content_type = EG_WIRE_CT_TEXT;
    free(r->body);
    r->body_len = 0;
    if ((r->body = malloc(n + 1)) != NULL) {
        memcpy(r->body, reason, n);
        r->body[n] = '\n';
        r->body_len = n + 1;
    }
}

/* Refuses at the wire level: audited, then answered with the reason. */
static void refuse(est_ctx *c, int status, eg_audit_kind kind, const char *principal,
                   const char *reason)
{
    const char *profile = c->profile != NULL ? c->profile->name : NULL;

    eg_core_audit(c->est->core, profile, principal, c->req->peer, kind, EG_DIM_NONE, reason);
    respond_text(c->resp, status, reason);
}

/* "/.well-known/est/[label/]op": 0 with c->op and c->label, -1 when no such path. */
static int route(est_ctx *c, const char *path)
{
    const char *rest, *slash, *opname;
    size_t label_len = 0;

    if (path == NULL || strncmp(path, EST_PREFIX, strlen(EST_PREFIX)) != 0)
        return -1;
    rest = path + strlen(EST_PREFIX);
    opname = rest;
    if ((slash = strchr(rest, '/')) != NULL) {
        label_len = (size_t)(slash - rest);
        opname = slash + 1;
        if (label_len == 0 || label_len > LABEL_MAX ||
            strspn(rest, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") <
                label_len)
            return -1;
    }
    for (int i = 0; i < OP_COUNT; i++) {
        if (strcmp(opname, ops[i].name) == 0) {
            memcpy(c->label, rest, label_len);
            c->label[label_len] = '\0';
            c->op = (est_op)i;
            return 0;
        }
    }
    return -1;
}

/*
 * RFC 7030 4.4.2: multipart/mixed, the key part then the certificate part.
 * A plaintext key goes from the core's secure buffer into a secure body.
 */
static void respond_keygen(eg_http_resp *r, const eg_answer *a)
{
    eg_wire_part parts[2] = {
        {a->key_ctype, a->key, a->key_len},
        {EG_WIRE_CT_CERTS, a->der, a->der_len},
    };

    if (a->key == NULL || a->key_ctype == NULL ||
        eg_wire_multipart(parts, 2, a->key_secure, &r->body, &r->body_len,
                          &r->content_type_owned) != 0) {
        respond_text(r, 500, "out of memory");
        return;
    }
    r->body_secure = a->key_secure;
    r->status = 200;
    r->content_type = r->content_type_owned;
}

/* The core's answer as HTTP: DER as base64 on success, the reason otherwise. */
static void respond_answer(est_ctx *c, const eg_answer *a)
{
    static const int statuses[] = {
        [EG_OK] = 200,        [EG_NOTHING] = 204,         [EG_MALFORMED] = 400,
        [EG_FORBIDDEN] = 403, [EG_UNKNOWN_PROFILE] = 404, [EG_UNAVAILABLE] = 503,
        [EG_INTERNAL] = 500,  [EG_TOO_MANY] = 429,
    };
    eg_http_resp *r = c->resp;
    int status =
        (unsigned)a->status < sizeof(statuses) / sizeof(statuses[0]) ? statuses[a->status] : 500;

    if (status == 204) {
        r->status = 204;
        return;
    }
    if (status != 200) {
        /* A failure inside the appliance: the client gets its reference, the log the detail. */
        char text[200];
        const char *body = a->reason[0] ? a->reason : "internal error";

        if (status >= 500 && !a->reason_public && a->ref[0] != '\0') {
            snprintf(text, sizeof(text),
                     "ref=%s the appliance could not complete this request%s; its operator finds "
                     "what failed under this reference in the audit log",
                     a->ref, status == 503 ? " now, retry later" : "");
            body = text;
        }
        respond_text(r, status, body);
        if (status == 503 || status == 429)
            add_header(r, "Retry-After: %u",
                       a->retry_after > RETRY_AFTER_MIN ? a->retry_after : RETRY_AFTER_MIN);
        return;
    }
    if (c->op == OP_SERVERKEYGEN) {
        respond_keygen(r, a);
        return;
    }
    if (eg_wire_encode_body(a->der, a->der_len, &r->body, &r->body_len) != 0) {
        respond_text(r, 500, "out of memory");
        return;
    }
    r->status = 200;
    r->content_type = c->op == OP_CSRATTRS ? EG_WIRE_CT_CSRATTRS : EG_WIRE_CT_CERTS;
    add_header(r, EG_WIRE_CTE_BASE64);
}

static void unauthorized(est_ctx *c, const eg_auth_result *res)
{
    const char *realm = c->profile->realm;
    char fallback[96];

    if (realm == NULL) {
        snprintf(fallback, sizeof(fallback), "estgate %s", c->profile->name);
        realm = fallback;
    }
    refuse(c, 401, res->fail, res->principal[0] ? res->principal : NULL, res->reason);
    add_header(c->resp, "WWW-Authenticate: Basic realm=\"%s\", charset=\"UTF-8\"", realm);
}

/*
 * A client that kept a TLS session from before it had a certificate (a password enrollment, say)
 * and resumes it is never asked for one: resumption has no CertificateRequest. Say so, since
 * the device has a certificate and cannot see why it is not taken.
 */
#define RESUMED_WITHOUT_ONE                                                                        \
    ", and this connection resumed a TLS session made without one, so none was asked for: "        \
    "connect again without resuming that session"

/*
 * Who may enroll: a trusted client certificate, valid Basic credentials, or
 * anyone where the profile allows none; the first mode that admits wins.
 * Returns the admitting EG_AUTH_* mode, or 0 after answering the refusal.
 */
static unsigned authenticate(est_ctx *c, char *principal, size_t plen)
{
    const eg_http_req *q = c->req;
    unsigned modes = c->profile->auth;
    eg_auth_result cert = {.fail = EG_AUDIT_AUTH_MISSING}, basic = {.fail = EG_AUDIT_AUTH_MISSING};
    bool cert_tried = false, basic_tried = false;

    /* A blocked device is refused on every profile, whatever else it could show (its Basic
       password, or nothing where the profile needs nothing). */
    if (q->n_client_certs > 0 &&
        eg_auth_cert_blocked(c->est->auth, q->client_certs[0], q->client_cert_lens[0], &cert)) {
        refuse(c, 403, cert.fail, cert.principal, cert.reason);
        return 0;
    }
    if ((modes & EG_AUTH_MTLS) && q->n_client_certs > 0) {
        cert_tried = true;
        if (eg_auth_cert(c->est->auth, c->profile, q->client_certs, q->client_cert_lens,
                         q->n_client_certs, &cert) == 0) {
            snprintf(principal, plen, "%s", cert.principal);
            return EG_AUTH_MTLS;
        }
    }
    if ((modes & EG_AUTH_BASIC) && q->authorization != NULL) {
        basic_tried = true;
        if (eg_auth_basic(c->est->auth, c->profile, q->source, q->authorization, &basic) == 0) {
            snprintf(principal, plen, "%s", basic.principal);
            return EG_AUTH_BASIC;
        }
    }
    if (modes & EG_AUTH_NONE) {
        snprintf(principal, plen, "anonymous");
        return EG_AUTH_NONE;
    }
    if (basic_tried && basic.busy) {
        refuse(c, 503, basic.fail, basic.principal, basic.reason);
        add_header(c->resp, "Retry-After: 5");
    } else if (basic_tried && basic.throttled > 0) {
        refuse(c, 429, basic.fail, basic.principal, basic.reason);
        add_header(c->resp, "Retry-After: %u", basic.throttled);
    } else if (basic_tried || ((modes & EG_AUTH_BASIC) && !cert_tried)) {
        if (!basic_tried)
            snprintf(basic.reason, sizeof(basic.reason), "credentials required");
        unauthorized(c, &basic);
    } else if (cert_tried && (modes & EG_AUTH_BASIC)) {
        /* The certificate did not admit the client and a password could: ask for one (RFC 7030
           3.2.3), since clients that send credentials only when challenged (Java's, Python's,
           libest) never would after a 403. The audit keeps why the certificate failed. */
        static const char lead[] = "credentials required; ";
        size_t n = strlen(cert.reason), room = sizeof(cert.reason) - sizeof(lead);

        if (n > room)
            n = room;
        memmove(cert.reason + sizeof(lead) - 1, cert.reason, n);
        memcpy(cert.reason, lead, sizeof(lead) - 1);
        cert.reason[sizeof(lead) - 1 + n] = '\0';
        unauthorized(c, &cert);
    } else if (cert_tried) {
        refuse(c, 403, cert.fail, cert.principal, cert.reason);
    } else {
        refuse(c, 403, EG_AUDIT_AUTH_MISSING, NULL,
               q->tls_resumed ? "a client certificate is required" RESUMED_WITHOUT_ONE
                              : "a client certificate is required");
    }
    return 0;
}

/*
 * simplereenroll: only the certificate being renewed may ask (RFC 7030 4.2.2), and it may have
 * expired within the profile's renew_expired_days (*expired_s: how long ago).
 */
static unsigned authenticate_renewal(est_ctx *c, char *principal, size_t plen, long *expired_s)
{
    const eg_http_req *q = c->req;
    eg_auth_result res;

    if (q->n_client_certs == 0) {
        refuse(c, 403, EG_AUDIT_AUTH_MISSING, NULL,
               q->tls_resumed ? "simplereenroll needs the TLS client certificate being "
                                "renewed" RESUMED_WITHOUT_ONE
                              : "simplereenroll needs the TLS client certificate being renewed");
        return 0;
    }
    if (eg_auth_cert_renewal(c->est->auth, c->profile, q->client_certs, q->client_cert_lens,
                             q->n_client_certs, &res) != 0) {
        refuse(c, 403, res.fail, res.principal, res.reason);
        return 0;
    }
    snprintf(principal, plen, "%s", res.principal);
    *expired_s = res.expired_s;
    return EG_AUTH_MTLS;
}

static void enroll(est_ctx *c)
{
    const eg_http_req *q = c->req;
    eg_enroll_req er = {0};
    eg_answer a = {0};
    uint8_t *der = NULL;
    size_t der_len = 0;
    char principal[160] = "", why[200];
    unsigned mode;

    if (!eg_wire_enroll_type_ok(q->content_type)) {
        eg_wire_enroll_type_refusal(q->content_type, why, sizeof(why));
        refuse(c, 415, EG_AUDIT_LIMIT, NULL, why);
        goto out;
    }
    mode = c->op == OP_SIMPLEREENROLL
               ? authenticate_renewal(c, principal, sizeof(principal), &er.current_expired_s)
               : authenticate(c, principal, sizeof(principal));
    if (mode == 0)
        goto out;
    if (eg_wire_decode_body(q->body, q->body_len, &der, &der_len, why, sizeof(why)) != 0) {
        refuse(c, 400, EG_AUDIT_MALFORMED, principal, why);
        goto out;
    }
    er.profile = c->label;
    er.principal = principal;
    er.auth = mode;
    er.csr = der;
    er.csr_len = der_len;
    er.channel_binding_type = q->channel_binding_type;
    er.channel_binding = q->channel_binding;
    er.channel_binding_len = q->channel_binding_len;
    if (c->op == OP_SIMPLEREENROLL) {
        er.current_cert = q->client_certs[0];
        er.current_cert_len = q->client_cert_lens[0];
    }
    er.peer = q->peer;
    if ((c->op == OP_SERVERKEYGEN ? eg_core_serverkeygen(c->est->core, &er, &a)
                                  : eg_core_enroll(c->est->core, &er, &a)) != 0 &&
        a.status == EG_OK) {
        a.status = EG_INTERNAL;
        snprintf(a.reason, sizeof(a.reason), "internal error");
    }
    respond_answer(c, &a);
out:
    eg_answer_clear(&a);
    free(der);
}

/* cacerts and csrattrs: public (RFC 7030 4.1, 4.5), straight from the core. */
static void public_op(est_ctx *c)
{
    eg_answer a = {0};
    int rc = c->op == OP_CACERTS ? eg_core_cacerts(c->est->core, c->label, &a)
                                 : eg_core_csrattrs(c->est->core, c->label, &a);

    if (rc != 0 && a.status == EG_OK) {
        a.status = EG_INTERNAL;
        snprintf(a.reason, sizeof(a.reason), "internal error");
    }
    respond_answer(c, &a);
    eg_answer_clear(&a);
}

static void handle(eg_est *est, const eg_http_req *req, eg_http_resp *resp)
{
    est_ctx c = {.est = est, .req = req, .resp = resp};
    char why[160];
    bool get;

    memset(resp, 0, sizeof(*resp));
    /* No answer to a HEAD has a body, refusals included. */
    resp->head = req->method != NULL && strcmp(req->method, "HEAD") == 0;
    if (route(&c, req->path) != 0) {
        refuse(&c, 404, EG_AUDIT_MALFORMED, NULL, "no such EST resource");
        return;
    }
    if ((c.profile = eg_config_profile(est->cfg, c.label)) == NULL) {
        snprintf(why, sizeof(why), "no EST profile \"%s\"", c.label);
        refuse(&c, 404, EG_AUDIT_MALFORMED, NULL, why);
        return;
    }
    /* HEAD wherever GET (RFC 9110 9.3.2): load balancers' health checks use it. */
    get = strcmp(ops[c.op].method, "GET") == 0;
    if (!(get && resp->head) &&
        (req->method == NULL || strcmp(req->method, ops[c.op].method) != 0)) {
        snprintf(why, sizeof(why), "%s needs %s", ops[c.op].name, ops[c.op].method);
        refuse(&c, 405, EG_AUDIT_LIMIT, NULL, why);
        add_header(resp, "Allow: %s", get ? "GET, HEAD" : ops[c.op].method);
        return;
    }
    switch (c.op) {
    case OP_FULLCMC:
        refuse(&c, 501, EG_AUDIT_LIMIT, NULL, "full CMC is not supported; use simpleenroll");
        break;
    case OP_CACERTS:
    case OP_CSRATTRS:
        public_op(&c);
        break;
    default:
        enroll(&c);
        break;
    }
}

void eg_est_handle(eg_est *est, const eg_http_req *req, eg_http_resp *resp)
{
    pthread_rwlock_rdlock(&est->lock);
    handle(est, req, resp);
    pthread_rwlock_unlock(&est->lock);
}

void eg_est_audit(eg_est *est, const eg_http_req *req, eg_audit_kind kind, const char *reason)
{
    eg_core_audit(est->core, NULL, NULL, req->peer, kind, EG_DIM_NONE, reason);
}
