/* fuzz_key.h — the fixed device key and run id of the envelope and update
 * targets. */
#ifndef FEDGE_FUZZ_KEY_H
#define FEDGE_FUZZ_KEY_H

#include "envelope.h"
#include "fuzz_util.h"

static const uint8_t fuzz_run_id[16] = {0x72, 0x75, 0x6e, 0x2d, 0x66, 0x75, 0x7a, 0x7a,
                                         0x00, 0x01, 0x02, 0x03, 0xfc, 0xfd, 0xfe, 0xff};

static inline const fedge_device_key *fuzz_key(void)
{
    static fedge_device_key k;
    static int done;
    if (!done) {
        uint8_t secret[32];
        for (size_t i = 0; i < sizeof secret; i++)
            secret[i] = (uint8_t)(0xa5 ^ i);
        FUZZ_CHECK(fedge_envelope_derive_key(secret, sizeof secret, "dev-fuzz", &k) == 0);
        done = 1;
    }
    return &k;
}

#endif
