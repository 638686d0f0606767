/*
 * Password hashes for [profile] users: PBKDF2-HMAC-SHA256 through OpenSSL's
 * KDF API, stored as
 *   $pbkdf2-sha256$<iterations>$<salt>$<derived key>
 * with salt and key in standard base64 (RFC 4648 section 4, "+/" and "="
 * padding, no line breaks).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "config.h"
#include "password_local.h"

#define PREFIX      "$pbkdf2-sha256$"
#define ITERATIONS  600000u
#define ITER_MIN    10000u
#define ITER_MAX    10000000u
#define SALT_LEN    16
#define SALT_MAX    64
#define DERIVED_LEN 32 /* SHA-256 output: more would only slow the defender down */
#define B64_LEN(n)  (4 * (((n) + 2) / 3))
#define B64_MAX     B64_LEN(SALT_MAX)

typedef struct parsed_hash {
    unsigned iterations;
    unsigned char salt[SALT_MAX];
    size_t salt_len;
    unsigned char key[DERIVED_LEN];
} parsed_hash;

static int pbkdf2(const char *password, const unsigned char *salt, size_t salt_len,
                  unsigned iterations, unsigned char *out)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "PBKDF2", NULL);
    EVP_KDF_CTX *ctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[5];
    int rc = -1;

    if (ctx == NULL)
        goto out;
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD, (void *)password,
                                                  strlen(password));
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
    params[2] = OSSL_PARAM_construct_uint(OSSL_KDF_PARAM_ITER, &iterations);
    params[3] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    params[4] = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(ctx, out, DERIVED_LEN, params) != 1)
        goto out;
    rc = 0;
out:
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return rc;
}

/* Strict base64: whole quanta, the alphabet, "=" only as the last one or two. */
static int b64_decode(const char *s, size_t len, unsigned char *out, size_t max, size_t *outlen)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char buf[B64_MAX];
    size_t pad = 0;
    int n;

    if (len == 0 || len % 4 != 0 || len > B64_MAX)
        return -1;
    while (pad < 2 && s[len - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < len - pad; i++)
        if (s[i] == '\0' || strchr(alphabet, s[i]) == NULL)
            return -1;
    n = EVP_DecodeBlock(buf, (const unsigned char *)s, (int)len);
    if (n < 0 || (size_t)n < pad || (size_t)n - pad > max)
        return -1;
    memcpy(out, buf, (size_t)n - pad);
    *outlen = (size_t)n - pad;
    OPENSSL_cleanse(buf, sizeof(buf));
    return 0;
}

static int parse_uint(const char *s, size_t len, unsigned *out)
{
    unsigned long v = 0;

    if (len == 0 || len > 8 || s[0] == '0')
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    *out = (unsigned)v;
    return 0;
}

static int parse_hash(const char *hash, parsed_hash *p)
{
    const char *iter, *salt, *key;
    size_t key_len;

    if (hash == NULL || strncmp(hash, PREFIX, strlen(PREFIX)) != 0)
        return -1;
    iter = hash + strlen(PREFIX);
    if ((salt = strchr(iter, '$')) == NULL || (key = strchr(++salt, '$')) == NULL)
        return -1;
    key++;
    if (strchr(key, '$') != NULL)
        return -1;
    if (parse_uint(iter, (size_t)(salt - 1 - iter), &p->iterations) != 0 ||
        p->iterations < ITER_MIN || p->iterations > ITER_MAX)
        return -1;
    if (b64_decode(salt, (size_t)(key - 1 - salt), p->salt, sizeof(p->salt), &p->salt_len) != 0 ||
        p->salt_len < SALT_LEN)
        return -1;
    if (b64_decode(key, strlen(key), p->key, sizeof(p->key), &key_len) != 0 ||
        key_len != DERIVED_LEN)
        return -1;
    return 0;
}

bool eg_password_hash_valid(const char *hash)
{
    parsed_hash p;
    bool ok = parse_hash(hash, &p) == 0;

    OPENSSL_cleanse(&p, sizeof(p));
    return ok;
}

int eg_password_hash_cost(const char *password, unsigned iterations, char **out)
{
    unsigned char salt[SALT_LEN], key[DERIVED_LEN];
    char salt64[B64_LEN(SALT_LEN) + 1], key64[B64_LEN(DERIVED_LEN) + 1];
    char *s = NULL;
    int rc = -1;

    /* An empty password is a mistake, never a choice: refuse to make one. */
    if (password == NULL || password[0] == '\0' || iterations < ITER_MIN || iterations > ITER_MAX)
        goto out;
    if (RAND_bytes(salt, sizeof(salt)) != 1 ||
        pbkdf2(password, salt, sizeof(salt), iterations, key) != 0)
        goto out;
    EVP_EncodeBlock((unsigned char *)salt64, salt, sizeof(salt));
    EVP_EncodeBlock((unsigned char *)key64, key, sizeof(key));
    if (asprintf(&s, PREFIX "%u$%s$%s", iterations, salt64, key64) < 0) {
        s = NULL;
        goto out;
    }
    *out = s;
    rc = 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(key64, sizeof(key64));
    return rc;
}

int eg_password_hash(const char *password, char **out)
{
    return eg_password_hash_cost(password, ITERATIONS, out);
}

bool eg_password_verify(const char *password, const char *hash)
{
    parsed_hash p;
    unsigned char key[DERIVED_LEN];
    bool ok = false;

    if (password == NULL || parse_hash(hash, &p) != 0)
        goto out;
    if (pbkdf2(password, p.salt, p.salt_len, p.iterations, key) != 0)
        goto out;
    /* Both are DERIVED_LEN bytes: parse_hash checked the stored length. */
    ok = CRYPTO_memcmp(key, p.key, DERIVED_LEN) == 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(&p, sizeof(p));
    return ok;
}
