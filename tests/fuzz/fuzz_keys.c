/* fuzz_keys.c — the device keys file loader (shared/keys.h) on arbitrary
 * file contents (the file is mode 0600).
 *
 * Invariants: a failure leaves an empty table and a one-line message; every
 * loaded device has a valid id, a region that fits, is found by its id, and
 * gets a printable DTLS PSK. A reload of the same file (fedge_keys_merge)
 * changes nothing and keeps every index; a table merged into an empty one is
 * the file's. The same bytes read as a credential bundle give one device
 * and a server of the allowed characters, or fail leaving nothing. */
#include "error.h"
#include "fuzz_util.h"
#include "text.h"
#include "keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    const char *path = fuzz_write_file(data, size);
    fedge_keys k;
    char err[512];
    err[0] = '\0';
    char server[FEDGE_BUNDLE_SERVER_MAX + 1];
    fedge_keys b;
    if (fedge_keys_bundle_read(path, &b, server, err, sizeof err) == FEDGE_OK) {
        FUZZ_CHECK(b.n == 1);
        for (const char *p = server; *p; p++)
            FUZZ_CHECK(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:_[]-", *p) != NULL);
        fedge_keys_free(&b);
    } else {
        FUZZ_CHECK(b.n == 0 && b.devices == NULL && server[0] == '\0');
    }
    err[0] = '\0';
    int ret = fedge_keys_load(path, &k, err, sizeof err);
    if (ret != FEDGE_OK) {
        FUZZ_CHECK(k.n == 0 && k.devices == NULL);
        FUZZ_CHECK(err[0] != '\0' && fedge_text_is_printable(err, strlen(err)));
        return 0;
    }
    for (size_t i = 0; i < k.n; i++) {
        const fedge_device_entry *e = &k.devices[i];
        size_t len = strnlen(e->id, sizeof e->id);
        FUZZ_CHECK(len < sizeof e->id && fedge_device_id_valid(e->id, len));
        FUZZ_CHECK(strnlen(e->region, sizeof e->region) < sizeof e->region);
        FUZZ_CHECK(fedge_keys_find(&k, e->id, len) == e);
        char psk[FEDGE_PSK_LEN + 1];
        FUZZ_CHECK(fedge_keys_dtls_psk(e->secret, e->id, psk) == FEDGE_OK);
        FUZZ_CHECK(strlen(psk) == FEDGE_PSK_LEN);
    }
    fedge_keys same, empty = {0}, fresh;
    fedge_keys_diff d;
    FUZZ_CHECK(fedge_keys_merge(&k, &k, &same, &d) == FEDGE_OK);
    FUZZ_CHECK(same.n == k.n && d.added == 0 && d.removed == 0 && d.changed == 0 && d.live == k.n);
    for (size_t i = 0; i < k.n; i++)
        FUZZ_CHECK(fedge_keys_find(&same, k.devices[i].id, strlen(k.devices[i].id)) == &same.devices[i]);
    FUZZ_CHECK(fedge_keys_merge(&empty, &k, &fresh, &d) == FEDGE_OK);
    FUZZ_CHECK(fresh.n == k.n && d.added == k.n && d.live == k.n);
    fedge_keys_free(&same);
    fedge_keys_free(&fresh);
    fedge_keys_free(&k);
    return 0;
}
