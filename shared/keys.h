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
    uint8_t removed; /* a reload's tombstone (fedge_keys_merge): secret wiped, never found */
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
/* O(log n) by binary search over by_id; NULL when absent or removed. */
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

/* ---- live enrolment (fedge-admin device add|remove, SIGHUP reload) ----
 *
 * fedge_keys_merge builds the table a running daemon swaps in when the keys
 * file is reloaded, keeping every index it has handed out (arrays parallel
 * to devices stay valid): cur's entries first, in cur's order, each taking
 * fresh's region and secret when fresh lists its id, else becoming a
 * tombstone (removed = 1, secret wiped); then fresh's new ids in file order.
 * A tombstone whose id comes back is live again. out->n is at most
 * FEDGE_KEYS_MAX_DEVICES (FEDGE_ERR_RANGE beyond: restart to compact).
 * diff (may be NULL) counts what changed. cur and fresh are left as they are;
 * out is owned by the caller (fedge_keys_free). */
typedef struct {
    size_t added, removed, changed, live;
} fedge_keys_diff;
int fedge_keys_merge(const fedge_keys *cur, const fedge_keys *fresh, fedge_keys *out,
                     fedge_keys_diff *diff);

/* Appends e's line to the keys file at path, or creates it, atomically
 * (temporary file, fsync, rename; mode 0600; fileio.h) under an exclusive
 * flock of PATH.lock, so two concurrent edits do not lose one. The file must
 * load as it is (fedge_keys_load: err says why) and must not list e->id yet
 * (FEDGE_ERR_DUPLICATE). Comments and other lines are kept byte for byte. */
int fedge_keys_file_add(const char *path, const fedge_device_entry *e, char *err, size_t errlen);
/* Removes id's line from the keys file, likewise; FEDGE_ERR_NOT_FOUND when
 * the file does not list id. On success *region (may be NULL, cap
 * FEDGE_REGION_MAX + 1) gets the removed device's region. */
int fedge_keys_file_remove(const char *path, const char *id, char *region, char *err, size_t errlen);

/* A device's credential bundle: a keys file holding the device's own line
 * (so `fedge-edge --keys BUNDLE --id ID` reads it too) after the comment
 * "# fedge-bundle server HOST:PORT" naming its aggregator. Written with mode
 * 0600, exclusively (FEDGE_ERR_DUPLICATE when path exists). server: at most
 * FEDGE_BUNDLE_SERVER_MAX bytes of [A-Za-z0-9.:_[]-]. */
#define FEDGE_BUNDLE_SERVER_MAX 300
int fedge_keys_bundle_write(const char *path, const fedge_device_entry *e, const char *server);
/* Reads a bundle: exactly one device (into *out, as fedge_keys_load) and its
 * server line (into server, "" when the bundle names none). err (may be
 * NULL) says why on failure: FEDGE_ERR_CONFIG_VALUE for a bundle of other
 * than one device or a malformed server line, else fedge_keys_load's. */
int fedge_keys_bundle_read(const char *path, fedge_keys *out, char server[FEDGE_BUNDLE_SERVER_MAX + 1],
                           char *err, size_t errlen);

#endif
