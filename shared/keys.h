/* keys.h — device keys files and the DTLS pre-shared key.
 *
 * Keys file: one device per line, "DEVICE_ID REGION SECRET_HEX" (64 hex
 * digits), '#' comments and blank lines allowed. fedge_keys_load refuses a
 * file readable by group or others (FEDGE_ERR_CONFIG_PERMS) and names the
 * line of any syntax error. Secrets are wiped by fedge_keys_free. */
#ifndef FEDGE_KEYS_H
#define FEDGE_KEYS_H

#include <stddef.h>
#include <stdint.h>

#define FEDGE_DEVICE_ID_MAX 64   /* bytes, without NUL; [A-Za-z0-9._-] only */
#define FEDGE_REGION_MAX 32
#define FEDGE_SECRET_LEN 32
#define FEDGE_PSK_LEN 32        /* ASCII hex characters of a 16-byte HKDF output */
#define FEDGE_KEYS_MAX_DEVICES 100000

typedef struct {
    char id[FEDGE_DEVICE_ID_MAX + 1];
    char region[FEDGE_REGION_MAX + 1];
    uint8_t secret[FEDGE_SECRET_LEN];
} fedge_device_entry;

typedef struct {
    size_t n;
    fedge_device_entry *devices; /* owned, in file order */
    uint32_t *by_id;             /* owned: indices into devices, sorted by id */
} fedge_keys;

/* err (may be NULL) receives a one-line reason on failure. Loading is
 * O(n log n): a duplicate id is found by sorting, and names both lines. */
int fedge_keys_load(const char *path, fedge_keys *out, char *err, size_t errlen);
void fedge_keys_free(fedge_keys *k);
/* O(log n) by binary search over by_id; NULL when absent. */
const fedge_device_entry *fedge_keys_find(const fedge_keys *k, const char *id, size_t id_len);
/* Writes one device's line ("ID REGION SECRET_HEX\n") into buf; cap must
 * hold FEDGE_KEYS_LINE_MAX bytes. Returns the line's length, 0 on error. */
#define FEDGE_KEYS_LINE_MAX (FEDGE_DEVICE_ID_MAX + 1 + FEDGE_REGION_MAX + 1 + 2 * FEDGE_SECRET_LEN + 2)
size_t fedge_keys_format_line(const fedge_device_entry *e, char *buf, size_t cap);
int fedge_device_id_valid(const char *id, size_t len);
/* The DTLS PSK: lowercase hex of HKDF-SHA256(secret, salt "fedge-v1",
 * info "fedge dtls psk" || id)[0..16), NUL-terminated. Printable on purpose,
 * so third-party clients (coap-client -k) can use it. */
int fedge_keys_dtls_psk(const uint8_t secret[FEDGE_SECRET_LEN], const char *id,
                        char psk[FEDGE_PSK_LEN + 1]);

#endif
