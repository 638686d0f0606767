/* Token administration through libp11; see p11lib.h for why it never overlaps the wrapper. */
#include <dlfcn.h>
#include <string.h>

#include <openssl/crypto.h>

#include "files.h"
#include "p11lib.h"
#include "report.h"

int eg_prov_p11lib_load(const char *module, const char *init_args, eg_prov_p11lib **out)
{
    eg_prov_p11lib *l = OPENSSL_zalloc(sizeof(*l));
    int rc;

    if (l == NULL || (l->ctx = PKCS11_CTX_new()) == NULL) {
        rc = eg_prov_fail(EG_EXIT_SOFTWARE, "out of memory");
        goto out;
    }
    /* NSS's softoken cannot start without its configuration string. */
    if (init_args != NULL)
        PKCS11_CTX_init_args(l->ctx, init_args);
    /*
     * Pin the module in memory, as the signer does: libp11 unloads it at the
     * end, and the module's exit handlers and a leak checker's stack traces
     * need its code still mapped. The handle is deliberately kept.
     */
    (void)dlopen(module, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (PKCS11_CTX_load(l->ctx, module) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_UNAVAILABLE, "cannot load PKCS#11 module %s", module);
        goto out;
    }
    l->loaded = true;
    if ((rc = eg_prov_p11lib_refresh(l)) != EG_EXIT_OK)
        goto out;
    *out = l;
    l = NULL;
    rc = EG_EXIT_OK;
out:
    eg_prov_p11lib_free(l);
    return rc;
}

int eg_prov_p11lib_refresh(eg_prov_p11lib *l)
{
    if (l->slots != NULL)
        PKCS11_release_all_slots(l->ctx, l->slots, l->nslots);
    l->slots = NULL;
    l->nslots = 0;
    l->slot = NULL;
    if (PKCS11_enumerate_slots(l->ctx, &l->slots, &l->nslots) != 0) {
        l->slots = NULL;
        l->nslots = 0;
        return eg_prov_fail_stack(EG_EXIT_UNAVAILABLE, "cannot list the module's slots");
    }
    return EG_EXIT_OK;
}

PKCS11_SLOT *eg_prov_p11lib_find(eg_prov_p11lib *l, const char *label)
{
    unsigned i;

    for (i = 0; i < l->nslots; i++) {
        PKCS11_TOKEN *t = l->slots[i].token;

        if (t != NULL && t->initialized && t->label != NULL && strcmp(t->label, label) == 0)
            return &l->slots[i];
    }
    return NULL;
}

int eg_prov_p11lib_login(PKCS11_SLOT *slot, bool so, const char *pin_file)
{
    const char *who = so ? "SO PIN" : "PIN";
    char *pin = NULL;
    int rc;

    if ((rc = eg_prov_pin_read(pin_file, who, &pin)) != EG_EXIT_OK)
        goto out;
    if (PKCS11_login(slot, so ? 1 : 0, pin) != 0) {
        rc = eg_prov_fail_stack(EG_EXIT_NOPERM, "token '%s' refused the %s from %s",
                                slot->token->label, who, pin_file);
        goto out;
    }
    rc = EG_EXIT_OK;
out:
    eg_prov_pin_free(pin);
    return rc;
}

int eg_prov_p11lib_open(const eg_prov_token_opts *o, eg_prov_p11lib **out)
{
    eg_prov_p11lib *l = NULL;
    int rc;

    if ((rc = eg_prov_p11lib_load(o->module, o->init_args, &l)) != EG_EXIT_OK)
        goto out;
    if ((l->slot = eg_prov_p11lib_find(l, o->token)) == NULL) {
        rc = eg_prov_fail(EG_EXIT_UNAVAILABLE, "no token labelled '%s' in %s", o->token, o->module);
        goto out;
    }
    if ((rc = eg_prov_p11lib_login(l->slot, false, o->pin_file)) != EG_EXIT_OK)
        goto out;
    *out = l;
    l = NULL;
    rc = EG_EXIT_OK;
out:
    eg_prov_p11lib_free(l);
    return rc;
}

void eg_prov_p11lib_free(eg_prov_p11lib *l)
{
    if (l == NULL)
        return;
    if (l->slots != NULL)
        PKCS11_release_all_slots(l->ctx, l->slots, l->nslots);
    if (l->loaded)
        PKCS11_CTX_unload(l->ctx);
    if (l->ctx != NULL)
        PKCS11_CTX_free(l->ctx);
    OPENSSL_free(l);
}
