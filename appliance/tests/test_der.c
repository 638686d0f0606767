/* The hand DER writer against OpenSSL's encoder, at the length and sign boundaries. */
#include <string.h>

#include <CUnit/CUnit.h>
#include <openssl/asn1.h>
#include <openssl/bn.h>

#include "cu_run.h"
#include "der.h"

/* eg_der_uint of v against i2d_ASN1_INTEGER of the same value. */
static void same_integer(const uint8_t *v, size_t len)
{
    BIGNUM *bn = BN_bin2bn(v, (int)len, NULL);
    ASN1_INTEGER *ai = bn != NULL ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    unsigned char *want = NULL, *got = NULL;
    int wlen = ai != NULL ? i2d_ASN1_INTEGER(ai, &want) : -1;
    size_t glen = 0;
    eg_der d = {0};

    eg_der_uint(&d, v, len);
    CU_ASSERT_EQUAL_FATAL(eg_der_finish(&d, &got, &glen), 0);
    CU_ASSERT(wlen > 0 && glen == (size_t)wlen && memcmp(got, want, glen) == 0);
    OPENSSL_free(got);
    OPENSSL_free(want);
    ASN1_INTEGER_free(ai);
    BN_free(bn);
}

static void test_integers(void)
{
    uint8_t big[600];
    const uint8_t cases[][3] = {{0, 0, 0},       {0, 0, 1},    {0, 0, 0x7f},      {0, 0, 0x80},
                                {0, 0xff, 0xff}, {0x80, 0, 0}, {0x7f, 0xff, 0xff}};

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        same_integer(cases[i], 3);
    memset(big, 0xa5, sizeof(big)); /* a long form length, and a sign octet */
    same_integer(big, 257);
    same_integer(big, sizeof(big));
}

/* eg_der_wrap_from and eg_der_wrap give an OCTET STRING OpenSSL encodes the same way. */
static void test_lengths(void)
{
    static const size_t lens[] = {0, 1, 127, 128, 255, 256, 65535, 65536, 70000};
    static uint8_t content[70000];

    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();
        unsigned char *want = NULL, *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        eg_der inside = {0}, outside = {0}, child = {0};
        int wlen;

        memset(content, (int)i, lens[i]);
        CU_ASSERT_FATAL(os != NULL && ASN1_OCTET_STRING_set(os, content, (int)lens[i]) == 1);
        wlen = i2d_ASN1_OCTET_STRING(os, &want);
        eg_der_put(&inside, content, lens[i]);
        eg_der_wrap_from(&inside, 0, EG_DER_OCTET_STRING);
        eg_der_put(&child, content, lens[i]);
        eg_der_wrap(&outside, EG_DER_OCTET_STRING, &child);
        CU_ASSERT_EQUAL(eg_der_finish(&inside, &a, &alen), 0);
        CU_ASSERT_EQUAL(eg_der_finish(&outside, &b, &blen), 0);
        CU_ASSERT(wlen > 0 && alen == (size_t)wlen && memcmp(a, want, alen) == 0);
        CU_ASSERT(blen == alen && memcmp(a, b, alen) == 0);
        OPENSSL_free(a);
        OPENSSL_free(b);
        OPENSSL_free(want);
        ASN1_OCTET_STRING_free(os);
    }
}

/* A failure sticks: the child's carries into its parent, and finish refuses. */
static void test_failure_sticks(void)
{
    eg_der parent = {0}, child = {0};
    uint8_t *out = (uint8_t *)"x";
    size_t len = 7;

    eg_der_put(&child, "ab", 2);
    child.bad = true;
    eg_der_wrap(&parent, EG_DER_SEQUENCE, &child);
    eg_der_put(&parent, "cd", 2);
    CU_ASSERT_EQUAL(eg_der_finish(&parent, &out, &len), -1);
    CU_ASSERT(parent.p == NULL && parent.len == 0 && child.p == NULL);
}

static CU_TestInfo tests[] = {
    {"INTEGER as OpenSSL encodes it", test_integers},
    {"lengths short and long, inside out and outside in", test_lengths},
    {"a failure sticks", test_failure_sticks},
    CU_TEST_INFO_NULL,
};

int main(void)
{
    return eg_cu_run("appliance/der", NULL, NULL, tests);
}
