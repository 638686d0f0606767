/*
 * `init-token`: initialises a token in a free slot and sets its user PIN.
 * It never re-initialises a token that is already set up: that would destroy
 * every key in it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "files.h"
#include "p11lib.h"
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

static int slot_by_id(eg_prov_p11lib *l, unsigned long id, PKCS11_SLOT **out)
{
    unsigned i;

    for (i = 0; i < l->nslots; i++) {
        if (PKCS11_get_slotid_from_slot(&l->slots[i]) == id) {
            *out = &l->slots[i];
            return EG_EXIT_OK;
        }
    }
    return eg_prov_fail(EG_EXIT_UNAVAILABLE, "the module has no slot %lu", id);
}

/* --slot, or the first slot whose token is not initialised. */
static int choose_slot(const struct init_token *a, eg_prov_p11lib *l, PKCS11_SLOT **out)
{
    PKCS11_SLOT *s = NULL;
    unsigned i;
    int rc;

    if (a->have_slot && (rc = slot_by_id(l, a->slot, &s)) != EG_EXIT_OK)
        return rc;
    for (i = 0; !a->have_slot && i < l->nslots && s == NULL; i++) {
        if (l->slots[i].token != NULL && !l->slots[i].token->initialized)
            s = &l->slots[i];
    }
    if (s == NULL)
        return eg_prov_fail(EG_EXIT_UNAVAILABLE,
                            "%s has no free slot (NSS's softoken never has one: make its token "
                            "with certutil -N -d sql:DIR instead)",
                            a->tok.module);
    if (s->token == NULL)
        return eg_prov_fail(EG_EXIT_UNAVAILABLE, "slot %lu holds no token", a->slot);
    if (s->token->initialized)
        return eg_prov_fail(EG_EXIT_CANTCREAT,
                            "slot %lu holds the initialised token '%s'; "
                            "init-token never re-initialises a token (that "
                            "would destroy its keys)",
                            PKCS11_get_slotid_from_slot(s), s->token->label);
    *out = s;
    return EG_EXIT_OK;
}

/* As the SO on the new token: sets the user PIN, then checks it logs in. */
static int set_user_pin(const struct init_token *a, eg_prov_p11lib *l, const char *so_pin,
                        const char *pin)
{
    PKCS11_SLOT *s;

    /* SoftHSM moves a token it initialised to a new slot id: look again. */
    if (eg_prov_p11lib_refresh(l) != EG_EXIT_OK || (s = eg_prov_p11lib_find(l, a->label)) == NULL)
        return eg_prov_fail(EG_EXIT_SOFTWARE, "token '%s' was initialised but is not found",
                            a->label);
    if (PKCS11_login(s, 1, so_pin) != 0)
        return eg_prov_fail_stack(EG_EXIT_NOPERM, "the new token refused its SO PIN");
    if (PKCS11_init_pin(s->token, pin) != 0)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot set the user PIN of '%s'", a->label);
    if (PKCS11_logout(s) != 0 || PKCS11_login(s, 0, pin) != 0)
        return eg_prov_fail_stack(EG_EXIT_SOFTWARE, "the new user PIN of '%s' does not log in",
                                  a->label);
    eg_prov_note("initialised token '%s' in slot %lu and set its user PIN", a->label,
                 PKCS11_get_slotid_from_slot(s));
    return EG_EXIT_OK;
}

static int init_token_run(const struct init_token *a)
{
    char *so_pin = NULL, *pin = NULL, label[33];
    eg_prov_p11lib *l = NULL;
    PKCS11_SLOT *slot = NULL;
    int rc;

    if ((rc = eg_prov_pin_read(a->so_pin_file, "SO PIN", &so_pin)) != EG_EXIT_OK ||
        (rc = eg_prov_pin_read(a->tok.pin_file, "PIN", &pin)) != EG_EXIT_OK ||
        (rc = eg_prov_p11lib_load(a->tok.module, a->tok.init_args, &l)) != EG_EXIT_OK)
        goto out;
    if ((slot = eg_prov_p11lib_find(l, a->label)) != NULL) {
        rc = eg_prov_fail(EG_EXIT_CANTCREAT, "a token labelled '%s' already exists (slot %lu)",
                          a->label, PKCS11_get_slotid_from_slot(slot));
        goto out;
    }
    if ((rc = choose_slot(a, l, &slot)) != EG_EXIT_OK)
        goto out;
    /*
     * C_InitToken reads exactly 32 bytes of label, blank-padded. libp11 0.4.12
     * passes our string through as it is, so a bare "demo" would carry a NUL
     * and whatever follows it into the token's label.
     */
    snprintf(label, sizeof(label), "%-32s", a->label);
    if (PKCS11_init_token(slot->token, so_pin, label) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_SOFTWARE, "cannot initialise the token in slot %lu",
                                PKCS11_get_slotid_from_slot(slot));
        goto out;
    }
    rc = set_user_pin(a, l, so_pin, pin);
out:
    eg_prov_p11lib_free(l);
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
