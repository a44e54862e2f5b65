/* hash.c — SHA-256 content hashes (on crypto.h's backend) and hex. */
#include "hash.h"

#include <string.h>
#if !FEDGE_FREESTANDING
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#endif

#include "common.h"
#include "crypto.h"
#include "fileio.h"

int fedge_sha256(const void *data, size_t len, uint8_t out[FEDGE_HASH_LEN])
{
    if ((data == NULL && len > 0) || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return fedge_crypto_sha256(data, len, out);
}

#if !FEDGE_FREESTANDING /* no files on a microcontroller */
int fedge_sha256_file(const char *path, uint8_t out[FEDGE_HASH_LEN])
{
    if (path == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    int ret = FEDGE_OK;
    uint8_t buf[16 * 1024];
    fedge_sha256_ctx ctx = {0};
    int fd = -1;
    ret = fedge_open_regular(path, 0, &fd, NULL);
    if (ret == FEDGE_ERR_IO && errno == ENOENT)
        ret = FEDGE_ERR_NOT_FOUND;
    if (ret != FEDGE_OK)
        goto cleanup;
    CHK(fedge_sha256_init(&ctx));
    for (;;) {
        size_t n;
        CHK(fedge_read_upto(fd, buf, sizeof buf, &n));
        if (n == 0)
            break;
        CHK(fedge_sha256_update(&ctx, buf, n));
    }
    CHK(fedge_sha256_final(&ctx, out));
cleanup:
    if (fd >= 0)
        close(fd);
    fedge_sha256_free(&ctx);
    return ret;
}
#endif

void fedge_hex_encode(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 0x0f];
    }
    out[2 * n] = '\0';
}

void fedge_hash_to_hex(const uint8_t h[FEDGE_HASH_LEN], char out[FEDGE_HASH_HEX_LEN])
{
    fedge_hex_encode(h, FEDGE_HASH_LEN, out);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int fedge_hex_decode(const char *hex, uint8_t *out, size_t n)
{
    if (hex == NULL || out == NULL || n > 64)
        return FEDGE_ERR_INVALID_ARG;
    uint8_t tmp[64];
    for (size_t i = 0; i < n; i++) {
        int hi = hex_value(hex[2 * i]);
        if (hi < 0)
            return FEDGE_ERR_INVALID_ARG; /* also stops at an early NUL */
        int lo = hex_value(hex[2 * i + 1]);
        if (lo < 0)
            return FEDGE_ERR_INVALID_ARG;
        tmp[i] = (uint8_t)(hi << 4 | lo);
    }
    if (hex[2 * n] != '\0')
        return FEDGE_ERR_INVALID_ARG;
    memcpy(out, tmp, n);
    return FEDGE_OK;
}

int fedge_hash_from_hex(const char *hex, uint8_t out[FEDGE_HASH_LEN])
{
    return fedge_hex_decode(hex, out, FEDGE_HASH_LEN);
}

int fedge_memcmp_ct(const void *a, const void *b, size_t len)
{
    const volatile uint8_t *x = a;
    const volatile uint8_t *y = b;
    uint8_t diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= (uint8_t)(x[i] ^ y[i]);
    return diff != 0;
}
