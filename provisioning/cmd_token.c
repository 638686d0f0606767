/*
 * `init-token`: initialises a token in a free slot and sets its user PIN.
 * It never re-initialises a token that is already set up: that would destroy
 * every key in it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "args.h"
#include "files.h"
#include "p11.h"
#include "report.h"

static const char init_token_help[] =
    "usage: estgate-provision init-token --module PATH [--init-args STR] --label LABEL\n"
    "           --so-pin-file FILE --pin-file FILE [--slot N]\n"
    "\n"
    "Initialises the token in a free slot (the first one with an uninitialised\n"
    "token, or slot id N) with LABEL and the SO PIN, and sets the user PIN. A slot\n"
    "whose token is already initialised is refused, as is a LABEL already in use.\n"
    "This is for modules with free slots, such as SoftHSMv2. NSS's softoken has\n"
    "none: its token is made with `certutil -N -d sql:DIR -f PINFILE`, whose\n"
    "database password is the user PIN.\n"
    "\n"
    "  --module PATH      the PKCS#11 module (.so)\n"
    "  --init-args STR    C_Initialize init string, for modules that need one\n"
    "  --label LABEL      the new token's label (at most 32 bytes)\n"
    "  --so-pin-file FILE the security officer PIN, first line\n"
    "  --pin-file FILE    the user PIN, first line\n"
    "  --slot N           the slot id to use instead of the first free one\n"
    "PIN files must not be world-readable; PINs are never taken from the command\n"
    "line or the environment.\n";

enum { OPT_LABEL = EG_OPT_OWN, OPT_SO_PIN_FILE, OPT_SLOT };

static const struct option init_token_opts[] = {
    {"module", required_argument, NULL, EG_OPT_MODULE},
    {"init-args", required_argument, NULL, EG_OPT_INIT_ARGS},
    {"pin-file", required_argument, NULL, EG_OPT_PIN_FILE},
    {"label", required_argument, NULL, OPT_LABEL},
    {"so-pin-file", required_argument, NULL, OPT_SO_PIN_FILE},
    {"slot", required_argument, NULL, OPT_SLOT},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

struct init_token {
    eg_prov_token_opts tok; /* module, init_args, pin_file */
    const char *label, *so_pin_file;
    bool have_slot, help;
    unsigned long slot;
};

static int init_token_opt(void *ctx, int c, const char *arg)
{
    struct init_token *a = ctx;
    char *end;

    switch (c) {
    case OPT_LABEL:
        a->label = arg;
        return EG_EXIT_OK;
    case OPT_SO_PIN_FILE:
        a->so_pin_file = arg;
        return EG_EXIT_OK;
    case OPT_SLOT:
        errno = 0;
        a->slot = strtoul(arg, &end, 0);
        if (errno != 0 || end == arg || *end != 0)
            return eg_prov_usage_error("--slot %s: not a slot id", arg);
        a->have_slot = true;
        return EG_EXIT_OK;
    default:
        return EG_EXIT_USAGE;
    }
}

static int init_token_parse(int argc, char **argv, struct init_token *a)
{
    int rc = eg_prov_parse_args(argc, argv, init_token_opts, &a->tok, init_token_opt, a, &a->help);

    if (rc != EG_EXIT_OK || a->help)
        return rc;
    if (a->tok.module == NULL || a->label == NULL || a->so_pin_file == NULL ||
        a->tok.pin_file == NULL)
        return eg_prov_usage_error("--module, --label, --so-pin-file and --pin-file are required");
    if (strlen(a->label) == 0 || strlen(a->label) > 32)
        return eg_prov_usage_error("--label must be 1 to 32 bytes");
    return EG_EXIT_OK;
}

/* --slot, or the first slot whose token is not initialised. */
static int choose_slot(const struct init_token *a, const eg_slot_info *slots, size_t n,
                       CK_SLOT_ID *out)
{
    const eg_slot_info *s = NULL;
    size_t i;

    for (i = 0; i < n && s == NULL; i++) {
        if (a->have_slot ? slots[i].id == a->slot : slots[i].token_present && !slots[i].initialized)
            s = &slots[i];
    }
    if (s == NULL && a->have_slot)
        return eg_prov_fail(EG_EXIT_UNAVAILABLE, "the module has no slot %lu", a->slot);
    if (s == NULL)
        return eg_prov_fail(EG_EXIT_UNAVAILABLE,
                            "%s has no free slot (NSS's softoken never has one: make its token "
                            "with certutil -N -d sql:DIR instead)",
                            a->tok.module);
    if (!s->token_present)
        return eg_prov_fail(EG_EXIT_UNAVAILABLE, "slot %lu holds no token", s->id);
    if (s->initialized)
        return eg_prov_fail(EG_EXIT_CANTCREAT,
                            "slot %lu holds the initialised token '%s'; "
                            "init-token never re-initialises a token (that "
                            "would destroy its keys)",
                            s->id, s->label);
    *out = s->id;
    return EG_EXIT_OK;
}

static int init_token_run(const struct init_token *a)
{
    char *so_pin = NULL, *pin = NULL;
    eg_slot_info *slots = NULL;
    CK_SLOT_ID slot = 0, now = 0;
    size_t n = 0, i;
    int rc;

    if ((rc = eg_prov_pin_read(a->so_pin_file, "--so-pin-file", "SO PIN", &so_pin)) != EG_EXIT_OK ||
        (rc = eg_prov_pin_read(a->tok.pin_file, "--pin-file", "PIN", &pin)) != EG_EXIT_OK)
        goto out;
    if (eg_module_slots(a->tok.module, a->tok.init_args, &slots, &n) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_UNAVAILABLE, "cannot list the slots of %s", a->tok.module);
        goto out;
    }
    for (i = 0; i < n; i++) {
        if (slots[i].initialized && strcmp(slots[i].label, a->label) == 0) {
            rc = eg_prov_fail(EG_EXIT_CANTCREAT, "a token labelled '%s' already exists (slot %lu)",
                              a->label, slots[i].id);
            goto out;
        }
    }
    if ((rc = choose_slot(a, slots, n, &slot)) != EG_EXIT_OK)
        goto out;
    if (eg_module_init_token(a->tok.module, a->tok.init_args, slot, a->label, so_pin, pin, &now) !=
        0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot initialise the token in slot %lu", slot);
        goto out;
    }
    eg_prov_note("initialised token '%s' in slot %lu and set its user PIN", a->label, now);
    rc = EG_EXIT_OK;
out:
    OPENSSL_free(slots);
    eg_prov_pin_free(so_pin);
    eg_prov_pin_free(pin);
    return rc;
}

int eg_prov_cmd_init_token(int argc, char **argv)
{
    struct init_token a;
    int rc;

    memset(&a, 0, sizeof(a));
    eg_prov_report_prefix("estgate-provision init-token");
    if ((rc = init_token_parse(argc, argv, &a)) != EG_EXIT_OK)
        return rc;
    if (a.help) {
        eg_prov_help(init_token_help);
        return EG_EXIT_OK;
    }
    return init_token_run(&a);
}
