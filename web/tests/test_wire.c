/*
 * Request bodies as real EST clients send them decode to the same DER; garbage
 * is refused with a reason that says what and where; responses are base64 in
 * CRLF lines of 64 characters.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "cu_run.h"
#include "wire.h"

static uint8_t *csr_der;
static size_t csr_len;
static char csr_b64[4096]; /* one line, padded */

static int suite_init(void)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_NAME_new();
    int rc = -1, n;

    if (key == NULL || req == NULL || name == NULL ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"dev-1", -1,
                                    -1, 0) ||
        !X509_REQ_set_subject_name(req, name) || !X509_REQ_set_pubkey(req, key) ||
        !X509_REQ_sign(req, key, EVP_sha256()))
        goto out;
    n = i2d_X509_REQ(req, &csr_der);
    if (n <= 0)
        goto out;
    csr_len = (size_t)n;
    EVP_EncodeBlock((unsigned char *)csr_b64, csr_der, n);
    rc = 0;
out:
    X509_NAME_free(name);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    return rc;
}

static int suite_clean(void)
{
    OPENSSL_free(csr_der);
    return 0;
}

/* csr_b64 in lines of width columns, each ended by eol. */
static void wrap(char *out, size_t width, const char *eol)
{
    size_t n = strlen(csr_b64);

    out[0] = '\0';
    for (size_t i = 0; i < n; i += width) {
        strncat(out, csr_b64 + i, n - i < width ? n - i : width);
        strcat(out, eol);
    }
}

static void expect_csr(const char *body)
{
    uint8_t *der = NULL;
    size_t len = 0;
    char why[256] = "";
    int rc = eg_wire_decode_body((const uint8_t *)body, strlen(body), &der, &len, why, sizeof(why));

    if (rc != 0)
        fprintf(stderr, "refused: %s\n", why);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(len, csr_len);
    CU_ASSERT(len == csr_len && memcmp(der, csr_der, len) == 0);
    free(der);
}

static void expect_refused(const char *body, size_t len, const char *reason)
{
    uint8_t *der = NULL;
    size_t der_len = 0;
    char why[256] = "";

    CU_ASSERT_EQUAL(
        eg_wire_decode_body((const uint8_t *)body, len, &der, &der_len, why, sizeof(why)), -1);
    CU_ASSERT_PTR_NULL(der);
    if (strstr(why, reason) == NULL)
        fprintf(stderr, "reason \"%s\" lacks \"%s\"\n", why, reason);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, reason));
}

static void test_base64_variants_give_same_der(void)
{
    char body[8192];
    char *unpadded;

    expect_csr(csr_b64);
    wrap(body, 64, "\n");
    expect_csr(body);
    wrap(body, 76, "\r\n");
    expect_csr(body);
    wrap(body, 64, "  \r\n");
    strcat(body, "\r\n\t ");
    expect_csr(body);
    snprintf(body, sizeof(body), "\r\n  %s\n\n", csr_b64);
    expect_csr(body);
    unpadded = strdup(csr_b64);
    CU_ASSERT_PTR_NOT_NULL_FATAL(unpadded);
    for (size_t n = strlen(unpadded); n > 0 && unpadded[n - 1] == '='; n--)
        unpadded[n - 1] = '\0';
    expect_csr(unpadded);
    free(unpadded);
}

static void test_pem_csrs_give_same_der(void)
{
    char lines[8192], body[8192 + 128];

    wrap(lines, 64, "\n");
    snprintf(body, sizeof(body),
             "-----BEGIN CERTIFICATE REQUEST-----\n%s-----END CERTIFICATE REQUEST-----\n", lines);
    expect_csr(body);
    wrap(lines, 64, "\r\n");
    snprintf(body, sizeof(body),
             "\r\n-----BEGIN NEW CERTIFICATE REQUEST-----\r\n%s"
             "-----END NEW CERTIFICATE REQUEST-----\r\n\r\n",
             lines);
    expect_csr(body);
}

/* A binary DER CSR, as `curl --data-binary @csr.der` sends it; only when it is exactly that. */
static void test_binary_der_is_taken_as_it_is(void)
{
    uint8_t *der = NULL, body[8192];
    size_t len = 0;
    char why[256] = "", reason[64];

    CU_ASSERT_FATAL(csr_len + 1 < sizeof(body) && (csr_der[1] == 0x81 || csr_der[1] == 0x82));
    CU_ASSERT_EQUAL_FATAL(eg_wire_decode_body(csr_der, csr_len, &der, &len, why, sizeof(why)), 0);
    CU_ASSERT(len == csr_len && memcmp(der, csr_der, len) == 0);
    free(der);
    /* Anything more or less than the one SEQUENCE is read as base64, and is not. */
    snprintf(reason, sizeof(reason), "invalid byte 0x%02x at offset 1", csr_der[1]);
    memcpy(body, csr_der, csr_len);
    body[csr_len] = '\n';
    expect_refused((const char *)body, csr_len + 1, reason);
    expect_refused((const char *)body, csr_len - 1, reason);
    expect_refused((const char *)body, 3, reason);
}

static void test_garbage_refused_with_reason(void)
{
    char body[8192];

    snprintf(body, sizeof(body), "%s", csr_b64);
    body[17] = '*';
    expect_refused(body, strlen(body), "invalid character '*' at offset 17");
    body[17] = '\0';
    expect_refused(body, 18, "invalid byte 0x00 at offset 17");
    expect_refused("", 0, "body is empty");
    expect_refused(" \r\n ", 4, "body is empty");
    expect_refused("TWFu=TWFu", 9, "data after padding at offset 5");
    expect_refused("TWFuT", 5, "truncated");
    expect_refused("TWE===", 6, "truncated");
    snprintf(body, sizeof(body), "-----BEGIN CERTIFICATE-----\n%s\n-----END CERTIFICATE-----\n",
             csr_b64);
    expect_refused(body, strlen(body), "is a \"CERTIFICATE\", not a CERTIFICATE REQUEST");
    /* A label with control bytes and invalid UTF-8 is named printably: the reason goes into the
       log line and the ledger's audit row. */
    expect_refused("-----BEGIN \n99|issued|\xff\xfe\x1b[2K\"x-----\n", 36,
                   "is a \"?99|issued|???[2K?x\", not");
    snprintf(body, sizeof(body), "-----BEGIN %050d-----\n", 7);
    expect_refused(body, strlen(body), "is a \"0000000000000000000000000000000000000000...\"");
    snprintf(body, sizeof(body), "-----BEGIN CERTIFICATE REQUEST-----\n%s\n", csr_b64);
    expect_refused(body, strlen(body), "no \"-----END CERTIFICATE REQUEST-----\" line");
    snprintf(body, sizeof(body),
             "-----BEGIN CERTIFICATE REQUEST-----\n%s\n-----END CERTIFICATE REQUEST-----\nxyz",
             csr_b64);
    expect_refused(body, strlen(body), "data after its END line");
    expect_refused("-----BEGIN CERTIFICATE REQUEST", 30, "no end to its BEGIN line");
}

static void test_encode_wraps_crlf_64(void)
{
    uint8_t *b64 = NULL, *der = NULL;
    size_t len = 0, der_len = 0, col = 0;
    char why[256];

    CU_ASSERT_EQUAL_FATAL(eg_wire_encode_body(csr_der, csr_len, &b64, &len), 0);
    CU_ASSERT(len > 66);
    for (size_t i = 0; i < len; i++) {
        if (b64[i] == '\r') {
            CU_ASSERT(i + 1 < len && b64[i + 1] == '\n');
            CU_ASSERT(col == 64 || i + 2 == len);
            col = 0;
            i++;
            continue;
        }
        CU_ASSERT(b64[i] != '\n');
        col++;
    }
    CU_ASSERT_EQUAL(col, 0); /* ends with CRLF */
    CU_ASSERT_EQUAL_FATAL(eg_wire_decode_body(b64, len, &der, &der_len, why, sizeof(why)), 0);
    CU_ASSERT(der_len == csr_len && memcmp(der, csr_der, csr_len) == 0);
    free(der);
    free(b64);
    CU_ASSERT_EQUAL_FATAL(eg_wire_encode_body(csr_der, 48, &b64, &len), 0);
    CU_ASSERT_EQUAL(len, 66);
    free(b64);
}

static void test_media_types(void)
{
    CU_ASSERT(eg_wire_enroll_type_ok("application/pkcs10"));
    CU_ASSERT(eg_wire_enroll_type_ok("Application/PKCS10; charset=binary"));
    CU_ASSERT(eg_wire_enroll_type_ok(" application/pkcs10 ;x=y"));
    CU_ASSERT(eg_wire_enroll_type_ok("application/x-pem-file"));
    CU_ASSERT(eg_wire_enroll_type_ok("application/x-pkcs10"));
    CU_ASSERT_FALSE(eg_wire_enroll_type_ok(NULL));
    CU_ASSERT_FALSE(eg_wire_enroll_type_ok(""));
    CU_ASSERT_FALSE(eg_wire_enroll_type_ok("application/pkcs10x"));
    CU_ASSERT_FALSE(eg_wire_enroll_type_ok("application/json"));
    CU_ASSERT_FALSE(eg_wire_enroll_type_ok("application/pkcs7-mime"));
}

/* A 415 names what the client sent, so that curl's default form type shows itself. */
static void test_media_type_refusal_names_what_was_sent(void)
{
    char why[200], long_type[200];

    eg_wire_enroll_type_refusal("application/x-www-form-urlencoded", why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "application/pkcs10"));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "not \"application/x-www-form-urlencoded\""));
    eg_wire_enroll_type_refusal(NULL, why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "the request has none"));
    eg_wire_enroll_type_refusal("text/\"x\"\x01", why, sizeof(why));
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "not \"text/?x??\""));
    memset(long_type, 'a', sizeof(long_type) - 1);
    long_type[sizeof(long_type) - 1] = '\0';
    eg_wire_enroll_type_refusal(long_type, why, sizeof(why));
    CU_ASSERT(strlen(why) < 160 && strstr(why, "aaa...\"") != NULL);
}

/*
 * Two parts read back the way a MIME parser reads them (RFC 2046 5.1.1):
 * split at the boundary from the Content-Type header, headers up to the
 * empty line, the base64 decoded by the request decoder.
 */
static void test_multipart_reads_back(void)
{
    static const uint8_t a[] = {0x30, 0x03, 0x02, 0x01, 0x05};
    uint8_t b[300], *body = NULL, *der = NULL;
    eg_wire_part parts[2] = {{"application/pkcs8", a, sizeof(a)}, {EG_WIRE_CT_CERTS, b, sizeof(b)}};
    char *ctype = NULL, *text, delim[80], *p, *q, *end, why[128], *again = NULL;
    size_t len, der_len, i;

    for (i = 0; i < sizeof(b); i++)
        b[i] = (uint8_t)(i * 7);
    CU_ASSERT_EQUAL_FATAL(eg_wire_multipart(parts, 2, false, &body, &len, &ctype), 0);
    CU_ASSERT_FATAL(strncmp(ctype, "multipart/mixed; boundary=", 26) == 0);
    snprintf(delim, sizeof(delim), "--%s", ctype + 26);
    CU_ASSERT_FATAL((text = malloc(len + 1)) != NULL);
    memcpy(text, body, len);
    text[len] = 0;
    CU_ASSERT(strncmp(text, delim, strlen(delim)) == 0); /* no preamble */
    snprintf(why, sizeof(why), "%s--\r\n", delim);
    CU_ASSERT(len > strlen(why) && strcmp(text + len - strlen(why), why) == 0); /* the close */
    p = text;
    for (i = 0; i < 2; i++) {
        p = strstr(p, delim);
        CU_ASSERT_FATAL(p != NULL);
        p += strlen(delim) + 2;
        q = strstr(p, "\r\n\r\n");
        CU_ASSERT_FATAL(q != NULL);
        *q = 0;
        snprintf(why, sizeof(why), "Content-Type: %s\r\n" EG_WIRE_CTE_BASE64,
                 parts[i].content_type);
        CU_ASSERT_STRING_EQUAL(p, why);
        p = q + 4;
        end = strstr(p, delim);
        CU_ASSERT_FATAL(end != NULL);
        CU_ASSERT_EQUAL_FATAL(
            eg_wire_decode_body((uint8_t *)p, (size_t)(end - p), &der, &der_len, why, sizeof(why)),
            0);
        CU_ASSERT(der_len == parts[i].len && memcmp(der, parts[i].der, der_len) == 0);
        free(der);
        p = end;
    }
    /* A second answer has another boundary. */
    free(body);
    CU_ASSERT_EQUAL_FATAL(eg_wire_multipart(parts, 2, false, &body, &len, &again), 0);
    CU_ASSERT(strcmp(again, ctype) != 0);
    free(again);
    free(body);
    free(ctype);
    free(text);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"base64 variants give the same DER", test_base64_variants_give_same_der},
        {"PEM CSRs give the same DER", test_pem_csrs_give_same_der},
        {"a binary DER CSR is taken as it is", test_binary_der_is_taken_as_it_is},
        {"garbage is refused with a reason", test_garbage_refused_with_reason},
        {"responses are base64 in CRLF lines of 64", test_encode_wraps_crlf_64},
        {"enroll media types", test_media_types},
        {"a media type refusal names what was sent", test_media_type_refusal_names_what_was_sent},
        {"multipart answers read back", test_multipart_reads_back},
        CU_TEST_INFO_NULL,
    };

    return eg_cu_run("web/wire", suite_init, suite_clean, tests);
}
