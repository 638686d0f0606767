/* RFC 4514 subjects as operators type them, and host names, for estgate-provision. */
#include <string.h>

#include <CUnit/CUnit.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "cert_build.h"
#include "cu_run.h"
#include "provision.h"

/* The name as RFC 2253 prints it: most specific first, as it was typed. */
static void expect_name(const char *typed, const char *printed)
{
    X509_NAME *name = NULL;
    char buf[512] = "";
    BIO *bio = BIO_new(BIO_s_mem());
    int len;

    CU_ASSERT_EQUAL_FATAL(eg_prov_name_parse(typed, &name), EG_EXIT_OK);
    X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
    len = BIO_read(bio, buf, sizeof(buf) - 1);
    buf[len > 0 ? len : 0] = 0;
    CU_ASSERT_STRING_EQUAL(buf, printed);
    if (strcmp(buf, printed) != 0)
        fprintf(stderr, "\n  %s: got %s, expected %s\n", typed, buf, printed);
    BIO_free(bio);
    X509_NAME_free(name);
}

/* The value of the name's only entry of type nid. */
static void expect_value(const char *typed, int nid, const char *value)
{
    X509_NAME *name = NULL;
    const ASN1_STRING *v;
    int i;

    CU_ASSERT_EQUAL_FATAL(eg_prov_name_parse(typed, &name), EG_EXIT_OK);
    CU_ASSERT_FATAL((i = X509_NAME_get_index_by_NID(name, nid, -1)) >= 0);
    v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
    CU_ASSERT_EQUAL(ASN1_STRING_length(v), (int)strlen(value));
    CU_ASSERT(memcmp(ASN1_STRING_get0_data(v), value, strlen(value)) == 0);
    X509_NAME_free(name);
}

static void test_most_specific_first(void)
{
    X509_NAME *name = NULL;

    expect_name("CN=Example CA,O=Example", "CN=Example CA,O=Example");
    expect_name("CN = spaced , O = Example Inc ", "CN=spaced,O=Example Inc");
    /* DER holds the least specific first. */
    CU_ASSERT_EQUAL_FATAL(eg_prov_name_parse("CN=leaf,O=org,C=DE", &name), EG_EXIT_OK);
    CU_ASSERT_EQUAL(OBJ_obj2nid(X509_NAME_ENTRY_get_object(X509_NAME_get_entry(name, 0))),
                    NID_countryName);
    CU_ASSERT_EQUAL(OBJ_obj2nid(X509_NAME_ENTRY_get_object(X509_NAME_get_entry(name, 2))),
                    NID_commonName);
    X509_NAME_free(name);
}

static void test_escapes(void)
{
    expect_value("CN=a\\,b", NID_commonName, "a,b");
    expect_value("CN=Acme\\2C Inc", NID_commonName, "Acme, Inc");
    expect_value("CN=Acme\\2c Inc", NID_commonName, "Acme, Inc");
    expect_value("CN=x\\41\\42", NID_commonName, "xAB");
    expect_value("CN=back\\\\slash", NID_commonName, "back\\slash");
    expect_value("CN=caf\\C3\\A9", NID_commonName, "caf\xc3\xa9");
    /* An escaped trailing space stays; plain trailing spaces go. */
    expect_value("CN=pad\\ ", NID_commonName, "pad ");
    expect_value("CN=pad   ", NID_commonName, "pad");
    expect_value("O=a\\=b\\+c\\;d", NID_organizationName, "a=b+c;d");
}

static void test_refused(void)
{
    static const char *const bad[] = {
        "",        "CN",       "=x",       "CN=",        "CN=a\\",    "CN=a\\zz",
        "CN=a\\4", "CN=a\\4g", "CN=a+O=b", "XX=unknown", "CN=a,,O=b", "CN=a,",
    };
    X509_NAME *name;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        name = NULL;
        CU_ASSERT_EQUAL(eg_prov_name_parse(bad[i], &name), EG_EXIT_USAGE);
        CU_ASSERT_PTR_NULL(name);
        if (name != NULL)
            fprintf(stderr, "\n  accepted: '%s'\n", bad[i]);
        X509_NAME_free(name);
    }
    ERR_clear_error();
}

static void test_host_names(void)
{
    CU_ASSERT(eg_prov_host_name_ok("est.example.com", false));
    CU_ASSERT(eg_prov_host_name_ok("a-1.b2", false));
    CU_ASSERT(eg_prov_host_name_ok("*.example.com", true));
    CU_ASSERT_FALSE(eg_prov_host_name_ok("*.example.com", false));
    CU_ASSERT_FALSE(eg_prov_host_name_ok("-a.example.com", false));
    CU_ASSERT_FALSE(eg_prov_host_name_ok("a-.example.com", false));
    CU_ASSERT_FALSE(eg_prov_host_name_ok("a..b", false));
    CU_ASSERT_FALSE(eg_prov_host_name_ok("a_b.example", false));
    CU_ASSERT_FALSE(eg_prov_host_name_ok("", false));
}

static CU_TestInfo tests[] = {
    {"names are typed most specific first", test_most_specific_first},
    {"escapes: \\, \\XX hex pairs, trailing spaces", test_escapes},
    {"malformed names are refused", test_refused},
    {"host names", test_host_names},
    CU_TEST_INFO_NULL,
};

int main(void)
{
    return eg_cu_run("name", NULL, NULL, tests);
}
