/* fuzz_key.h — the fixed device key of the envelope and update targets. */
#ifndef FEDGE_FUZZ_KEY_H
#define FEDGE_FUZZ_KEY_H

#include "envelope.h"
#include "fuzz_util.h"

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
