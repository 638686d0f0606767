#include <openssl/evp.h>
#include <openssl/obj_mac.h>

#include "test_profiles.h"

static void profile_common(eg_profile_cfg *p, const char *name, const char *label,
                           const char *ca_uri, const char *ca_path)
{
    p->name = (char *)name;
    p->label = (char *)label;
    p->ca_key_uri = (char *)ca_uri;
    p->ca_chain_file = (char *)ca_path;
    p->auth = EG_AUTH_BASIC;
}

static void add_san(eg_profile_cfg *p, eg_san_type t, const char *pattern)
{
    p->sans[p->nsans].type = t;
    p->sans[p->nsans++].pattern = (char *)pattern;
}

/* "iot": SAN rules of every type, CN, O and emailAddress allowed, client auth, 30 days, no
   rekey. */
static void profile_iot(eg_profile_cfg *p, const char *ca_uri, const char *ca_path)
{
    profile_common(p, "iot", "iot", ca_uri, ca_path);
    p->keys[p->nkeys++] = (eg_keyrule_cfg){.type = EVP_PKEY_EC, .curve_nid = NID_X9_62_prime256v1};
    p->keys[p->nkeys++] = (eg_keyrule_cfg){.type = EVP_PKEY_RSA, .min_bits = 2048};
    p->ekus[p->nekus++] = NID_client_auth;
    add_san(p, EG_SAN_DNS, ".example.com");
    add_san(p, EG_SAN_DNS, "exact.example.org");
    add_san(p, EG_SAN_DNS, "*.wild.example.net");
    add_san(p, EG_SAN_IP, "10.0.0.0/8");
    add_san(p, EG_SAN_IP, "2001:db8::/32");
    add_san(p, EG_SAN_EMAIL, "example.com");
    add_san(p, EG_SAN_URI, "urn:dev:ops:");
    p->require_san = true;
    p->subject_nids[p->nsubject_nids++] = NID_commonName;
    p->subject_nids[p->nsubject_nids++] = NID_organizationName;
    p->subject_nids[p->nsubject_nids++] = NID_pkcs9_emailAddress;
    p->max_days = 30;
}

/* "default": a subject template, challengePassword required, rekey allowed. */
static void profile_default(eg_profile_cfg *p, const char *ca_uri, const char *ca_path)
{
    profile_common(p, "default", "", ca_uri, ca_path);
    p->keys[p->nkeys++] = (eg_keyrule_cfg){.type = EVP_PKEY_EC, .curve_nid = NID_X9_62_prime256v1};
    p->ekus[p->nekus++] = NID_server_auth;
    p->ekus[p->nekus++] = NID_client_auth;
    add_san(p, EG_SAN_DNS, ".example.com");
    p->subject_template = "CN=${cn},O=Example";
    p->max_days = 7;
    p->allow_rekey = true;
    p->required_attrs[p->nrequired_attrs++] = NID_pkcs9_challengePassword;
}

/* "plain": no template or extensions, so csrattrs is a list; "bare": nothing to say. */
static void profile_plain(eg_profile_cfg *p, eg_profile_cfg *bare, const char *ca_uri,
                          const char *ca_path)
{
    profile_common(p, "plain", "plain", ca_uri, ca_path);
    p->keys[p->nkeys++] = (eg_keyrule_cfg){.type = EVP_PKEY_EC, .curve_nid = NID_secp384r1};
    p->required_attrs[p->nrequired_attrs++] = NID_pkcs9_challengePassword;
    p->max_days = 10;
    profile_common(bare, "bare", "bare", ca_uri, ca_path);
    bare->max_days = 10;
}

void eg_test_profiles(eg_profile_cfg p[EG_TEST_NPROFILES], const char *ca_uri, const char *ca_path)
{
    profile_iot(&p[0], ca_uri, ca_path);
    profile_default(&p[1], ca_uri, ca_path);
    profile_plain(&p[2], &p[3], ca_uri, ca_path);
}
