/*
 * CsrAttrs: what a client should put in its CSR (RFC 7030 4.5 as corrected
 * by RFC 8951, and RFC 9908's CertificationRequestInfoTemplate).
 *
 *   CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
 *   AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }
 *   CertificationRequestInfoTemplate ::= SEQUENCE {
 *       version INTEGER (0), subject NameTemplate OPTIONAL,
 *       subjectPKInfo [0] IMPLICIT SubjectPublicKeyInfoTemplate OPTIONAL,
 *       attributes [1] IMPLICIT Attributes }
 *   NameTemplate: RDNs of SingleAttributeTemplate { type, value ANY OPTIONAL }
 *       (no value: the client fills it in)
 *   ExtensionTemplate ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE,
 *       extnValue OCTET STRING OPTIONAL }
 *
 * The encoding is small and fixed in shape, so it is written as DER directly:
 * every SET here has one member, so no DER sorting is needed.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include "der.h"
#include "policy.h"

#define OID_TEMPLATE         "1.2.840.113549.1.9.16.2.61" /* id-aa-certificationRequestInfoTemplate */
#define OID_EXT_REQ_TEMPLATE "1.2.840.113549.1.9.16.2.62" /* id-aa-extensionReqTemplate */

static void der_i2d_obj(eg_der *d, ASN1_OBJECT *o)
{
    unsigned char *buf = NULL;
    int n = o ? i2d_ASN1_OBJECT(o, &buf) : -1;

    if (n <= 0)
        d->bad = true;
    else
        eg_der_put(d, buf, (size_t)n);
    OPENSSL_free(buf);
}

static void der_oid(eg_der *d, int nid)
{
    der_i2d_obj(d, OBJ_nid2obj(nid));
}

static void der_oid_txt(eg_der *d, const char *txt)
{
    ASN1_OBJECT *o = OBJ_txt2obj(txt, 1);

    der_i2d_obj(d, o);
    ASN1_OBJECT_free(o);
}

static void der_small_int(eg_der *d, unsigned v)
{
    const uint8_t be[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};

    eg_der_uint(d, be, sizeof(be));
}

/* ---- the template ---- */

static void single_attr(eg_der *name, int nid, const char *value)
{
    eg_der sat = {0}, rdn = {0}, v = {0};

    der_oid(&sat, nid);
    if (value != NULL) {
        eg_der_put(&v, value, strlen(value));
        eg_der_wrap(&sat, EG_DER_UTF8STRING, &v);
    }
    eg_der_wrap(&rdn, EG_DER_SEQUENCE, &sat);
    eg_der_wrap(name, EG_DER_SET, &rdn);
}

static bool allows_cn(const eg_profile_cfg *p)
{
    for (size_t i = 0; i < p->nsubject_nids; i++)
        if (p->subject_nids[i] == NID_commonName)
            return true;
    return p->nsubject_nids == 0; /* the default: a CN and nothing else */
}

static void name_template(eg_der *t, const eg_policy *pol)
{
    eg_der name = {0};
    size_t i;

    for (i = 0; i < pol->tmpl.n; i++) {
        const eg_subject_rdn *r = &pol->tmpl.rdns[i];

        single_attr(&name, r->nid, r->from_cn ? NULL : r->value);
    }
    /* No template: an attribute the client fills in, one the profile takes. A CN where it is
       allowed (the default); else the profile's subject attributes (a profile of serial
       numbers asked for a CN, which it then refused). */
    if (pol->tmpl.n == 0 && allows_cn(pol->cfg))
        single_attr(&name, NID_commonName, NULL);
    for (i = 0; pol->tmpl.n == 0 && !allows_cn(pol->cfg) && i < pol->cfg->nsubject_nids; i++)
        single_attr(&name, pol->cfg->subject_nids[i], NULL);
    eg_der_wrap(t, EG_DER_SEQUENCE, &name);
}

/* AlgorithmIdentifier of the one allowed key type, inside subjectPKInfo [0]. */
static void spki_template(eg_der *t, const eg_keyrule_cfg *k)
{
    eg_der alg = {0}, spki = {0};
    static const uint8_t null[] = {EG_DER_NULL, 0x00};

    if (k->type == EVP_PKEY_EC) {
        der_oid(&alg, NID_X9_62_id_ecPublicKey);
        der_oid(&alg, k->curve_nid);
    } else if (k->type == EVP_PKEY_RSA) {
        der_oid(&alg, NID_rsaEncryption);
        eg_der_put(&alg, null, sizeof(null));
    } else {
        der_oid(&alg, NID_ED25519);
    }
    eg_der_wrap(&spki, EG_DER_SEQUENCE, &alg);
    eg_der_wrap(t, EG_DER_CTX0_C, &spki);
}

static void eku_template(eg_der *exts, const eg_profile_cfg *p)
{
    eg_der ext = {0}, eku = {0}, val = {0};
    size_t i;

    for (i = 0; i < p->nekus; i++)
        der_oid(&eku, p->ekus[i]);
    eg_der_wrap(&val, EG_DER_SEQUENCE, &eku);
    der_oid(&ext, NID_ext_key_usage);
    eg_der_wrap(&ext, EG_DER_OCTET_STRING, &val);
    eg_der_wrap(exts, EG_DER_SEQUENCE, &ext);
}

static void attributes_template(eg_der *t, const eg_profile_cfg *p)
{
    eg_der attrs = {0}, attr = {0}, set = {0}, exts = {0}, san = {0};

    if (p->nsans > 0 || p->require_san) {
        der_oid(&san, NID_subject_alt_name); /* no value: the client supplies its names */
        eg_der_wrap(&exts, EG_DER_SEQUENCE, &san);
    }
    if (p->nekus > 0)
        eku_template(&exts, p);
    if (exts.len > 0 || exts.bad) {
        eg_der_wrap(&set, EG_DER_SEQUENCE, &exts);
        der_oid_txt(&attr, OID_EXT_REQ_TEMPLATE);
        eg_der_wrap(&attr, EG_DER_SET, &set);
        eg_der_wrap(&attrs, EG_DER_SEQUENCE, &attr);
    }
    eg_der_wrap(t, EG_DER_CTX1_C, &attrs);
}

static void template_attr(eg_der *items, const eg_policy *pol)
{
    const eg_profile_cfg *p = pol->cfg;
    eg_der t = {0}, tseq = {0}, attr = {0};

    der_small_int(&t, 0);
    name_template(&t, pol);
    if (p->nkeys == 1)
        spki_template(&t, &p->keys[0]);
    attributes_template(&t, p);
    eg_der_wrap(&tseq, EG_DER_SEQUENCE, &t);
    der_oid_txt(&attr, OID_TEMPLATE);
    eg_der_wrap(&attr, EG_DER_SET, &tseq);
    eg_der_wrap(items, EG_DER_SEQUENCE, &attr);
}

/* ---- the OID list ---- */

static void key_type_attrs(eg_der *items, const eg_profile_cfg *p)
{
    size_t i;

    for (i = 0; i < p->nkeys; i++) {
        const eg_keyrule_cfg *k = &p->keys[i];
        eg_der attr = {0}, val = {0};

        if (k->type == EVP_PKEY_ED25519) {
            der_oid(items, NID_ED25519);
            continue;
        }
        if (k->type == EVP_PKEY_EC) {
            der_oid(&attr, NID_X9_62_id_ecPublicKey);
            der_oid(&val, k->curve_nid);
        } else {
            der_oid(&attr, NID_rsaEncryption);
            der_small_int(&val, (unsigned)k->min_bits);
        }
        eg_der_wrap(&attr, EG_DER_SET, &val);
        eg_der_wrap(items, EG_DER_SEQUENCE, &attr);
    }
}

/*
 * RFC 7030 4.5.2 (RFC 8951): a CA that requires a hash algorithm MUST say so,
 * as the OIDs of the signature algorithms a CSR may use. Said only when the
 * profile's csr_digests narrows the default; one OID per allowed digest and key
 * family, as policy checks them. Ed25519 has no digest to choose, and a pair
 * OpenSSL 3.0 has no signature algorithm for (ECDSA with SHA-3) is left out.
 */
static void signature_oids(eg_der *items, const eg_profile_cfg *p)
{
    static const int types[] = {EVP_PKEY_EC, EVP_PKEY_RSA};
    unsigned digests = eg_profile_csr_digests(p);
    const eg_keyrule_cfg *rules;
    size_t nrules;

    if (digests == EG_CSR_DIGESTS_ALL)
        return;
    eg_policy_keyrules(p, &rules, &nrules);
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        bool allowed = false;

        for (size_t i = 0; i < nrules && !allowed; i++)
            allowed = rules[i].type == types[t];
        for (size_t d = 0; allowed && d < EG_CSR_DIGESTS; d++) {
            int sig = eg_csr_signature_nid(types[t], eg_csr_digests[d].nid);

            if ((digests & (1u << d)) && sig != NID_undef)
                der_oid(items, sig);
        }
    }
}

static bool required(const eg_profile_cfg *p, int nid)
{
    for (size_t i = 0; i < p->nrequired_attrs; i++)
        if (p->required_attrs[i] == nid)
            return true;
    return false;
}

int eg_csrattrs_der(const eg_policy *pol, uint8_t **der_out, size_t *len)
{
    const eg_profile_cfg *p = pol->cfg;
    eg_der items = {0}, all = {0};
    size_t i;
    int rc = -1;

    /*
     * The required attributes, challengePassword and the signature algorithms stay RFC 7030
     * elements even beside a template: RFC 9908's template has attributes only with values
     * (a challengePassword's is the client's connection's) and no field for the signature
     * algorithm. A client that reads only the template misses them (docs/operator-guide.md).
     */
    for (i = 0; i < p->nrequired_attrs; i++)
        der_oid(&items, p->required_attrs[i]);
    /* RFC 7030 3.5: the challengePassword OID asks the client to link its request to TLS. */
    if (p->require_channel_binding && !required(p, NID_pkcs9_challengePassword))
        der_oid(&items, NID_pkcs9_challengePassword);
    if (pol->tmpl.n > 0 || p->nekus > 0 || p->nsans > 0 || p->require_san)
        template_attr(&items, pol);
    else
        key_type_attrs(&items, p);
    signature_oids(&items, p);
    if (items.len == 0 && !items.bad) { /* nothing to say: 204 */
        *der_out = NULL;
        *len = 0;
        rc = 0;
        goto out;
    }
    eg_der_wrap(&all, EG_DER_SEQUENCE, &items);
    rc = eg_der_finish(&all, der_out, len);
out:
    eg_der_free(&items);
    eg_der_free(&all);
    return rc;
}
