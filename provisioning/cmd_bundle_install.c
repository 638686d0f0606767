/*
 * `bundle install`: puts a verified fleet trust bundle into an estgated
 * profile's client-certificate trust and has the daemon reload.
 *
 * The bundle is verified with the device library first, against the version
 * installed before (kept beside the bundle file as FILE.version), so a
 * tampered, foreign, expired or older bundle is refused and the file in
 * force is not touched. The PEM goes in atomically (temporary file, fsync,
 * rename), then the version file, then SIGHUP: a crash between the two
 * leaves the new anchors with the old version, and installing the same
 * bundle again completes it.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include <openssl/bio.h>

#include "args.h"
#include "bundle.h"
#include "config.h"
#include "files.h"
#include "report.h"

static const char bundle_install_help[] =
    "usage: estgate-provision bundle install --dir DIR --trust FILE --config INI\n"
    "           --profile NAME [--pid PID | --pid-file FILE]\n"
    "\n"
    "Verifies the bundle in DIR as a device does (see `bundle verify`), newer than\n"
    "the version installed in the profile before, then writes its PEM over the\n"
    "profile's client_ca file (atomically), records the version beside it\n"
    "(CLIENT_CA.version) and sends estgated SIGHUP, after which the profile trusts\n"
    "exactly the bundle's anchors. A bundle that fails verification changes\n"
    "nothing and the exit code says why. A client_ca file that estgated also reads as\n"
    "something else (a ca_chain, the tls_chain, ...) is refused: give the profile a\n"
    "file of its own first. Without --pid or --pid-file the files are\n"
    "installed and estgated must be reloaded by hand (systemctl reload estgated).\n"
    "\n"
    "  --dir DIR          the bundle folder (from `bundle create`)\n"
    "  --trust FILE       PEM: the bundle signer's certificate or the CA that issued it\n"
    "  --config INI       estgated's configuration file\n"
    "  --profile NAME     the profile whose client_ca gets the bundle (\"default\" or a label)\n"
    "  --pid PID          the estgated process to reload\n"
    "  --pid-file FILE    a file holding that process id\n";

enum { OPT_DIR = EG_OPT_OWN, OPT_TRUST, OPT_CONFIG, OPT_PROFILE, OPT_PID, OPT_PID_FILE };

static const struct option bundle_install_opts[] = {
    {"dir", required_argument, NULL, OPT_DIR},
    {"trust", required_argument, NULL, OPT_TRUST},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"profile", required_argument, NULL, OPT_PROFILE},
    {"pid", required_argument, NULL, OPT_PID},
    {"pid-file", required_argument, NULL, OPT_PID_FILE},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

struct bundle_install {
    const char *dir, *trust, *config, *profile, *pid_file;
    long pid;
    bool help;
};

static int parse_pid(const char *s, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || (*end != '\0' && *end != '\n') || v <= 1)
        return -1;
    *out = v;
    return 0;
}

static int bundle_install_opt(void *ctx, int c, const char *arg)
{
    struct bundle_install *a = ctx;

    switch (c) {
    case OPT_DIR:
        a->dir = arg;
        return EG_EXIT_OK;
    case OPT_TRUST:
        a->trust = arg;
        return EG_EXIT_OK;
    case OPT_CONFIG:
        a->config = arg;
        return EG_EXIT_OK;
    case OPT_PROFILE:
        a->profile = arg;
        return EG_EXIT_OK;
    case OPT_PID:
        if (parse_pid(arg, &a->pid) != 0)
            return eg_prov_usage_error("--pid %s: give a process id", arg);
        return EG_EXIT_OK;
    case OPT_PID_FILE:
        a->pid_file = arg;
        return EG_EXIT_OK;
    default:
        return EG_EXIT_USAGE;
    }
}

/* Whether path names the file real (a realpath) once links and ".." are resolved. */
static bool same_file(const char *real, const char *path)
{
    char buf[PATH_MAX];

    return path != NULL && realpath(path, buf) != NULL && strcmp(buf, real) == 0;
}

static int refuse_shared(const eg_profile_cfg *p, const char *as, const eg_config *cfg)
{
    return eg_prov_fail(EG_EXIT_CONFIG,
                        "profile %s's client_ca %s is also %s; the bundle would replace that file. "
                        "Nothing was written. Give the profile a client_ca file of its own (a "
                        "copy of the certificates it trusts now), set client_ca to it in %s, "
                        "reload estgated, then install the bundle again",
                        p->name, p->client_ca_file, as, cfg->path);
}

/*
 * The bundle replaces the client_ca file whole. A file estgated also reads as
 * something else would be replaced with it: with client_ca and ca_chain one
 * file, the issuing chain is gone, the reload fails and the next start exits.
 * So that is refused. Other profiles trusting the same file get the new
 * anchors too, which is allowed but said.
 */
static int check_client_ca_alone(const eg_config *cfg, const eg_profile_cfg *p)
{
    char real[PATH_MAX], as[256];
    const struct {
        const char *path, *what;
    } server[] = {
        {cfg->path, "estgated's configuration file"},
        {cfg->tls_chain_file, "[server] tls_chain (the TLS certificate chain)"},
        {cfg->blocked_certs_file, "[server] blocked_certs"},
        {cfg->ledger_path, "[server] ledger"},
        {cfg->module_path, "[token] module"},
        {cfg->pin_file, "[token] pin_file"},
    };
    const eg_profile_cfg *q;
    size_t i;

    if (realpath(p->client_ca_file, real) == NULL)
        return eg_prov_fail(EG_EXIT_NOINPUT, "profile %s's client_ca %s: %s", p->name,
                            p->client_ca_file, strerror(errno));
    for (i = 0; i < sizeof(server) / sizeof(server[0]); i++) {
        if (same_file(real, server[i].path))
            return refuse_shared(p, server[i].what, cfg);
    }
    for (i = 0; i < cfg->nprofiles; i++) {
        q = &cfg->profiles[i];
        if (same_file(real, q->ca_chain_file)) {
            snprintf(as, sizeof(as), "profile %s's ca_chain (its issuing CA chain)", q->name);
            return refuse_shared(p, as, cfg);
        }
        if (same_file(real, q->skg_recipients_file)) {
            snprintf(as, sizeof(as), "profile %s's serverkeygen_recipients", q->name);
            return refuse_shared(p, as, cfg);
        }
    }
    for (i = 0; i < cfg->nprofiles; i++) {
        q = &cfg->profiles[i];
        if (q != p && same_file(real, q->client_ca_file))
            eg_prov_warn("profile %s has the same client_ca file %s: after the reload it trusts "
                         "the bundle's anchors too; give it a file of its own if it should not",
                         q->name, q->client_ca_file);
    }
    return EG_EXIT_OK;
}

/* The profile's client CA file, from estgated's own configuration parser. */
static int client_ca_path(const struct bundle_install *a, char **out)
{
    eg_config_errors errs = {NULL, 0};
    eg_config *cfg = NULL;
    const eg_profile_cfg *p;
    int rc;

    if (eg_config_load(a->config, &cfg, &errs) != 0) {
        eg_config_errors_print(&errs, a->config, stderr);
        eg_config_errors_clear(&errs);
        return eg_prov_fail(EG_EXIT_CONFIG, "%s has errors; fix them first", a->config);
    }
    p = eg_config_profile(cfg, strcmp(a->profile, "default") == 0 ? "" : a->profile);
    if (p == NULL)
        rc = eg_prov_fail(EG_EXIT_CONFIG, "%s has no profile %s", a->config, a->profile);
    else if (p->client_ca_file == NULL)
        rc = eg_prov_fail(EG_EXIT_CONFIG, "profile %s has no client_ca (it does not use mtls)",
                          a->profile);
    else if ((rc = check_client_ca_alone(cfg, p)) == EG_EXIT_OK &&
             (*out = strdup(p->client_ca_file)) == NULL)
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    eg_config_free(cfg);
    return rc;
}

/* The version installed before: 0 when there is none. */
static int installed_version(const char *path, uint64_t *out)
{
    char buf[32] = "";
    FILE *f = fopen(path, "r");
    int rc = EG_EXIT_OK;

    *out = 0;
    if (f == NULL)
        return errno == ENOENT ? EG_EXIT_OK
                               : eg_prov_fail(EG_EXIT_NOINPUT, "%s: %s", path, strerror(errno));
    if (fgets(buf, sizeof(buf), f) == NULL)
        buf[0] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    if (eg_bundle_parse_version(path, buf, false, out) != EG_EXIT_OK)
        rc = eg_prov_fail(EG_EXIT_DATAERR,
                          "%s does not hold a bundle version; remove it only if "
                          "no bundle was ever installed",
                          path);
    fclose(f);
    return rc;
}

static int write_atomically(const char *path, const void *data, size_t len)
{
    eg_prov_outfile *f = NULL;
    BIO *mem = BIO_new_mem_buf(data, (int)len);
    int rc;

    if (mem == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
    if ((rc = eg_prov_outfile_open(path, 0644, &f)) == EG_EXIT_OK &&
        (rc = eg_prov_outfile_write(f, mem)) == EG_EXIT_OK)
        rc = eg_prov_outfile_commit(f);
    eg_prov_outfile_free(f);
    BIO_free(mem);
    return rc;
}

static int reload_daemon(const struct bundle_install *a)
{
    long pid = a->pid;
    char buf[32] = "";
    FILE *f;

    if (a->pid_file != NULL) {
        if ((f = fopen(a->pid_file, "r")) == NULL)
            return eg_prov_fail(EG_EXIT_NOINPUT, "%s: %s", a->pid_file, strerror(errno));
        if (fgets(buf, sizeof(buf), f) == NULL || parse_pid(buf, &pid) != 0)
            pid = 0;
        fclose(f);
        if (pid == 0)
            return eg_prov_fail(EG_EXIT_DATAERR, "%s does not hold a process id", a->pid_file);
    }
    if (pid == 0) {
        eg_prov_note("installed; reload estgated to apply it (systemctl reload estgated)");
        return EG_EXIT_OK;
    }
    if (kill((pid_t)pid, SIGHUP) != 0)
        return eg_prov_fail(EG_EXIT_UNAVAILABLE,
                            "installed, but estgated (pid %ld) could not be told to reload: %s; "
                            "reload it by hand",
                            pid, strerror(errno));
    eg_prov_note("installed; estgated (pid %ld) told to reload (its log says \"reloaded\")", pid);
    return EG_EXIT_OK;
}

static int bundle_install_run(const struct bundle_install *a)
{
    char *ca = NULL, *vpath = NULL, vtext[32];
    uint64_t installed = 0;
    eg_bundle_checked c = {0};
    int rc, n;

    if ((rc = client_ca_path(a, &ca)) != EG_EXIT_OK)
        goto out;
    if ((vpath = malloc(strlen(ca) + sizeof(".version"))) == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    sprintf(vpath, "%s.version", ca);
    if ((rc = installed_version(vpath, &installed)) != EG_EXIT_OK ||
        (rc = eg_bundle_check(a->dir, a->trust, installed, time(NULL), &c)) != EG_EXIT_OK)
        goto out;
    n = snprintf(vtext, sizeof(vtext), "%" PRIu64 "\n", c.v->manifest.version);
    if ((rc = write_atomically(ca, c.pem, c.in.pem_len)) != EG_EXIT_OK ||
        (rc = write_atomically(vpath, vtext, (size_t)n)) != EG_EXIT_OK)
        goto out;
    eg_prov_note("bundle version %" PRIu64 " (%zu anchors) is now %s's client CA bundle %s",
                 c.v->manifest.version, c.v->manifest.anchor_count, a->profile, ca);
    rc = reload_daemon(a);
out:
    eg_bundle_checked_clear(&c);
    free(vpath);
    free(ca);
    return rc;
}

int eg_prov_cmd_bundle_install(int argc, char **argv)
{
    struct bundle_install a;
    int rc;

    memset(&a, 0, sizeof(a));
    eg_prov_report_prefix("estgate-provision bundle install");
    rc = eg_prov_parse_args(argc, argv, bundle_install_opts, NULL, bundle_install_opt, &a, &a.help);
    if (rc != EG_EXIT_OK)
        return rc;
    if (a.help) {
        fputs(bundle_install_help, stdout);
        eg_bundle_print_exit_codes();
        return EG_EXIT_OK;
    }
    if (a.dir == NULL || a.trust == NULL || a.config == NULL || a.profile == NULL)
        return eg_prov_usage_error("--dir, --trust, --config and --profile are required");
    if (a.pid != 0 && a.pid_file != NULL)
        return eg_prov_usage_error("give --pid or --pid-file, not both");
    return bundle_install_run(&a);
}
