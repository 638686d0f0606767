/* RFC 7512 URI parsing and formatting, and CK_RV names. */
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "errors.h"
#include "cu_run.h"
#include "p11.h"
#include "p11_uri.h"

static void test_parses_path_and_query_attributes(void)
{
    eg_p11_uri *u = NULL;

    CU_ASSERT_EQUAL_FATAL(eg_p11_uri_parse("pkcs11:token=My%20CA;object=ca-key;id=%01%a2;"
                                           "type=private?pin-source=/run/pin&module-path=/x.so",
                                           &u),
                          0);
    CU_ASSERT_STRING_EQUAL(u->token, "My CA");
    CU_ASSERT_STRING_EQUAL(u->object, "ca-key");
    CU_ASSERT_EQUAL(u->idlen, 2);
    CU_ASSERT(memcmp(u->id, "\x01\xa2", 2) == 0);
    CU_ASSERT_STRING_EQUAL(u->type, "private");
    CU_ASSERT_STRING_EQUAL(u->pin_source, "/run/pin");
    CU_ASSERT_STRING_EQUAL(u->module_path, "/x.so");
    eg_p11_uri_free(u);
}

static void test_scheme_is_case_insensitive_and_empty_path_ok(void)
{
    eg_p11_uri *u = NULL;

    CU_ASSERT_EQUAL_FATAL(eg_p11_uri_parse("PKCS11:", &u), 0);
    CU_ASSERT_PTR_NULL(u->token);
    eg_p11_uri_free(u);
}

static void test_ignores_library_and_slot_attributes(void)
{
    eg_p11_uri *u = NULL;

    CU_ASSERT_EQUAL_FATAL(
        eg_p11_uri_parse("pkcs11:library-description=x;slot-id=3;token=T?foo=bar", &u), 0);
    CU_ASSERT_STRING_EQUAL(u->token, "T");
    eg_p11_uri_free(u);
}

static void expect_refused(const char *s)
{
    eg_p11_uri *u = NULL;

    ERR_clear_error();
    CU_ASSERT_EQUAL(eg_p11_uri_parse(s, &u), -1);
    CU_ASSERT_PTR_NULL(u);
    CU_ASSERT_EQUAL(ERR_GET_REASON(ERR_peek_error()), EG_R_BAD_URI);
    CU_ASSERT_EQUAL(ERR_GET_LIB(ERR_peek_error()), eg_signer_errlib());
}

static void test_refuses_malformed_uris(void)
{
    expect_refused("file:/etc/key.pem");
    expect_refused("pkcs11:token=a;token=b"); /* duplicate */
    expect_refused("pkcs11:id=%0");           /* short escape */
    expect_refused("pkcs11:id=%zz");          /* not hex */
    expect_refused("pkcs11:colour=red");      /* unknown path attribute */
    expect_refused("pkcs11:object");          /* no value */
    expect_refused("pkcs11:object=a%00b");    /* NUL in a string */
    expect_refused("pkcs11:type=privat");     /* unknown type */
    expect_refused(NULL);
}

static void test_format_round_trips(void)
{
    const uint8_t id[] = {0x00, 0xff, 0x41};
    char *s = eg_p11_uri_format("CA token;1", "ca key/é", id, sizeof(id), "private");
    eg_p11_uri *u = NULL;

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_PTR_NULL(strchr(s + 7, ' '));
    CU_ASSERT_STRING_EQUAL(s, "pkcs11:token=CA%20token%3B1;object=ca%20key%2F%C3%A9;"
                              "id=%00%FF%41;type=private");
    CU_ASSERT_EQUAL_FATAL(eg_p11_uri_parse(s, &u), 0);
    CU_ASSERT_STRING_EQUAL(u->token, "CA token;1");
    CU_ASSERT_STRING_EQUAL(u->object, "ca key/é");
    CU_ASSERT_EQUAL(u->idlen, 3);
    CU_ASSERT(memcmp(u->id, id, 3) == 0);
    eg_p11_uri_free(u);
    OPENSSL_free(s);
}

static void test_rv_names_are_readable(void)
{
    CU_ASSERT_STRING_EQUAL(eg_p11_rv_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
    CU_ASSERT_STRING_EQUAL(eg_p11_rv_name(CKR_DEVICE_REMOVED), "CKR_DEVICE_REMOVED");
    CU_ASSERT_PTR_NOT_NULL(strstr(eg_p11_rv_name(0x80001234UL), "unknown"));
}

static CU_TestInfo tests[] = {
    {"parses path and query attributes", test_parses_path_and_query_attributes},
    {"scheme is case-insensitive", test_scheme_is_case_insensitive_and_empty_path_ok},
    {"ignores library and slot attributes", test_ignores_library_and_slot_attributes},
    {"refuses malformed URIs", test_refuses_malformed_uris},
    {"format round-trips", test_format_round_trips},
    {"CK_RV names are readable", test_rv_names_are_readable},
    CU_TEST_INFO_NULL,
};

int main(void)
{
    return eg_cu_run("p11_uri", NULL, NULL, tests);
}
