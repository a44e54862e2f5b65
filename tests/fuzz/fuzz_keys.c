/* fuzz_keys.c — the device keys file loader (shared/keys.h) on arbitrary
 * file contents (the file is mode 0600).
 *
 * Invariants: a failure leaves an empty table and a one-line message; every
 * loaded device has a valid id, a region that fits, is found by its id, and
 * gets a printable DTLS PSK. */
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
    fedge_keys_free(&k);
    return 0;
}
