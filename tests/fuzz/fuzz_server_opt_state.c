/* fuzz_server_opt_state.c — the server optimiser's state blob
 * (aggregator/server_opt.h fedge_server_opt_load), read back from the
 * strategy_state table at every start.
 *
 * Input: one byte choosing the optimiser and whether a SCAFFOLD control
 * vector is expected, then the blob. Invariants: a refused blob leaves the
 * state and the extra vector exactly as they were; an accepted blob holds
 * only finite values and saves back to exactly the same bytes. */
#include <math.h>

#include "error.h"
#include "fuzz_util.h"
#include "server_opt.h"

#define N 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"sgd", "momentum", "adam", "yogi", "adagrad"};
    static const char *const extra_names[] = {"control"};
    fuzz_quiet();
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    fedge_server_opt_params p = {.lr = 0.01, .momentum = 0.9, .beta1 = 0.9, .beta2 = 0.99, .tau = 1e-3};
    snprintf(p.name, sizeof p.name, "%s", names[(mode & 0x7f) % 5]);
    size_t n_extra = (mode & 0x80) ? 1 : 0;
    fedge_server_opt o;
    FUZZ_CHECK(fedge_server_opt_init(&o, &p, N) == FEDGE_OK);
    float control[N], before_ctl[N];
    for (size_t i = 0; i < N; i++)
        control[i] = before_ctl[i] = 0.25f * (float)i;
    fedge_server_opt before;
    FUZZ_CHECK(fedge_server_opt_copy(&before, &o) == FEDGE_OK);
    float *extra[] = {control};
    char why[256];
    int ret = fedge_server_opt_load(&o, extra_names, extra, n_extra, data, size, why, sizeof why);
    if (ret != FEDGE_OK) {
        FUZZ_CHECK(ret == FEDGE_ERR_STRATEGY_STATE);
        FUZZ_CHECK(o.steps == before.steps);
        for (size_t v = 0; v < o.impl->n_vectors; v++)
            FUZZ_CHECK(memcmp(o.vec[v], before.vec[v], N * sizeof(float)) == 0);
        FUZZ_CHECK(memcmp(control, before_ctl, sizeof control) == 0);
    } else {
        for (size_t v = 0; v < o.impl->n_vectors; v++)
            for (size_t i = 0; i < N; i++)
                FUZZ_CHECK(isfinite(o.vec[v][i]));
        size_t cap = fedge_server_opt_state_size(&o, n_extra), len = 0;
        FUZZ_CHECK(cap == size);
        uint8_t *out = malloc(cap);
        FUZZ_CHECK(out != NULL);
        FUZZ_CHECK(fedge_server_opt_save(&o, extra_names, (const float *const *)extra, n_extra, out, cap, &len) ==
                   FEDGE_OK);
        FUZZ_CHECK(len == size && memcmp(out, data, size) == 0);
        free(out);
    }
    fedge_server_opt_free(&before);
    fedge_server_opt_free(&o);
    return 0;
}
