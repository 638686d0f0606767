/* CSR attributes that only some clients send, for tests. */
#include <openssl/asn1.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "csr_attrs.h"

/* SEQUENCE { name BMPString, value BMPString } as DER; ASCII in, UTF-16BE out. */
static int name_value_der(const char *name, const char *value, unsigned char **der)
{
    STACK_OF(ASN1_TYPE) *seq = sk_ASN1_TYPE_new_null();
    const char *texts[2] = {name, value};
    unsigned char bmp[128];
    int k, len = -1;

    for (k = 0; seq != NULL && k < 2; k++) {
        ASN1_STRING *str = ASN1_STRING_type_new(V_ASN1_BMPSTRING);
        ASN1_TYPE *t = ASN1_TYPE_new();
        size_t i;

        for (i = 0; texts[k][i] != 0 && 2 * i + 1 < sizeof(bmp); i++) {
            bmp[2 * i] = 0;
            bmp[2 * i + 1] = (unsigned char)texts[k][i];
        }
        if (str == NULL || t == NULL || ASN1_STRING_set(str, bmp, (int)(2 * i)) != 1) {
            ASN1_STRING_free(str);
            ASN1_TYPE_free(t);
            goto out;
        }
        ASN1_TYPE_set(t, V_ASN1_BMPSTRING, str);
        if (sk_ASN1_TYPE_push(seq, t) <= 0) {
            ASN1_TYPE_free(t);
            goto out;
        }
    }
    len = i2d_ASN1_SEQUENCE_ANY(seq, der);
out:
    sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
    return len;
}

int eg_csr_add_ms_validity(X509_REQ *req, const char *unit, const char *count)
{
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.6.1.4.1.311.13.2.1", 1);
    X509_ATTRIBUTE *attr = X509_ATTRIBUTE_new();
    unsigned char *d1 = NULL, *d2 = NULL;
    int l1 = name_value_der("ValidityPeriod", unit, &d1);
    int l2 = name_value_der("ValidityPeriodUnits", count, &d2);
    int ok = attr != NULL && oid != NULL && X509_ATTRIBUTE_set1_object(attr, oid) == 1 && l1 > 0 &&
             l2 > 0 && X509_ATTRIBUTE_set1_data(attr, V_ASN1_SEQUENCE, d1, l1) == 1 &&
             X509_ATTRIBUTE_set1_data(attr, V_ASN1_SEQUENCE, d2, l2) == 1 &&
             X509_REQ_add1_attr(req, attr) == 1;

    OPENSSL_free(d1);
    OPENSSL_free(d2);
    X509_ATTRIBUTE_free(attr);
    ASN1_OBJECT_free(oid);
    return ok ? 0 : -1;
}
