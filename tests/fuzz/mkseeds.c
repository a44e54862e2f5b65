/* mkseeds.c — writes the generated seed corpora of the fuzz targets:
 * small valid inputs in every encoding and variant, so each target starts
 * from inputs that pass its outer checks.
 *
 *   mkseeds OUTDIR   -> OUTDIR/<target>/<name> for delta, envelope, update,
 *                       modelfile, shard (text formats are committed under
 *                       tests/fuzz/corpus/<target>/ instead). */
#include <errno.h>
#include <sys/stat.h>

#include "dataset.h"
#include "delta.h"
#include "server_opt.h"
#include "error.h"
#include "fuzz_key.h"
#include "model.h"
#include "modelfile.h"
#include "rng.h"
#include "shard.h"
#include "update.h"

static const char *outdir;

static void put(const char *target, const char *name, uint8_t mode, int with_mode,
                const uint8_t *data, size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", outdir, target);
    FUZZ_CHECK(mkdir(path, 0755) == 0 || errno == EEXIST);
    snprintf(path, sizeof path, "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "wb");
    FUZZ_CHECK(f != NULL);
    if (with_mode)
        FUZZ_CHECK(fwrite(&mode, 1, 1, f) == 1);
    FUZZ_CHECK(len == 0 || fwrite(data, 1, len, f) == len);
    FUZZ_CHECK(fclose(f) == 0);
}

static fedge_delta_header header(fedge_encoding enc, uint32_t model_id, uint32_t round,
                                 uint32_t n, uint32_t block)
{
    fedge_delta_header h;
    memset(&h, 0, sizeof h);
    h.encoding = (uint8_t)enc;
    h.model_id = model_id;
    h.round = round;
    h.n_samples = 32;
    h.n_elems = n;
    h.block_size = enc == FEDGE_ENC_INT8 ? block : 0;
    for (int i = 0; i < FEDGE_HASH_LEN; i++)
        h.base_version[i] = (uint8_t)(i * 7);
    return h;
}

static void values(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = ((float)(i % 9) - 4.0f) * 0.125f + (float)i * 1e-3f;
}

static void deltas(void)
{
    static const struct {
        const char *name;
        fedge_encoding enc;
        uint32_t n, block;
        int stochastic;
    } cases[] = {
        {"fp32", FEDGE_ENC_FP32, 6, 0, 0},     {"fp16", FEDGE_ENC_FP16, 6, 0, 0},
        {"bf16", FEDGE_ENC_BF16, 6, 0, 0},     {"int8", FEDGE_ENC_INT8, 10, 4, 0},
        {"int8-sr", FEDGE_ENC_INT8, 9, 3, 1},  {"empty", FEDGE_ENC_FP32, 0, 0, 0},
        {"fp32-16", FEDGE_ENC_FP32, 16, 0, 0}, {"int8-16", FEDGE_ENC_INT8, 16, 16, 0},
    };
    float x[16];
    uint8_t buf[FEDGE_DELTA_HEADER_LEN + 16 * 4 + 64];
    fedge_rng rng;
    fedge_rng_seed(&rng, 42);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        fedge_delta_header h = header(cases[c].enc, 0x12345678u, 3, cases[c].n, cases[c].block);
        values(x, cases[c].n);
        size_t len = 0;
        FUZZ_CHECK(fedge_delta_encode(&h, x, cases[c].stochastic ? &rng : NULL, buf, sizeof buf,
                                      &len) == FEDGE_OK);
        put("delta", cases[c].name, 0, 0, buf, len);
        static const uint8_t ranges[][2] = {{0, 255}, {100, 0}, {200, 40}};
        for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
            uint8_t span[2 + sizeof buf];
            char name[64];
            memcpy(span, ranges[r], 2);
            memcpy(span + 2, buf, len);
            snprintf(name, sizeof name, "%s-r%zu", cases[c].name, r);
            put("delta_span", name, 0, 0, span, len + 2);
        }
        uint8_t aad_first[sizeof buf + FEDGE_RUN_ID_LEN];
        memcpy(aad_first, buf, FEDGE_DELTA_HEADER_LEN);
        memcpy(aad_first + FEDGE_DELTA_HEADER_LEN, fuzz_run_id, FEDGE_RUN_ID_LEN);
        memcpy(aad_first + FEDGE_UPDATE_AAD_LEN, buf + FEDGE_DELTA_HEADER_LEN,
               len - FEDGE_DELTA_HEADER_LEN);
        put("update", cases[c].name, 1, 1, aad_first, len + FEDGE_RUN_ID_LEN);

        uint8_t *frame = NULL;
        size_t frame_len = 0;
        FUZZ_CHECK(fedge_update_seal(fuzz_key(), 5, fuzz_run_id, &h, x, NULL, &frame, &frame_len) == FEDGE_OK);
        char name[64];
        snprintf(name, sizeof name, "sealed-%s", cases[c].name);
        put("update", name, 0, 1, frame, frame_len);
        put("envelope", name, 1, 1, frame, frame_len);
        put("envelope", "sealed-replayed", 11, 1, frame, frame_len);
        free(frame);
        /* the same with a training metrics block after the run id */
        static const fedge_train_metrics tm = {.present = FEDGE_TRAIN_HAS_ALL, .loss = 0.5f,
                                               .accuracy = 0.75f, .epochs = 2, .train_ms = 900};
        FUZZ_CHECK(fedge_update_seal_metrics(fuzz_key(), 6, fuzz_run_id, &tm, &h, x, NULL, &frame, &frame_len) ==
                   FEDGE_OK);
        snprintf(name, sizeof name, "sealed-metrics-%s", cases[c].name);
        put("update", name, 0, 1, frame, frame_len);
        free(frame);
    }
    /* a relay's partial sum: fp32, the flag, the head trailer */
    fedge_delta_header ph = header(FEDGE_ENC_FP32, 0x12345678u, 3, 6, 0);
    ph.flags = FEDGE_DELTA_FLAG_PARTIAL;
    for (int i = 0; i < FEDGE_HASH_LEN; i++)
        ph.partial_head[i] = (uint8_t)(0xa0 + i);
    values(x, 6);
    size_t plen = 0;
    FUZZ_CHECK(fedge_delta_encode(&ph, x, NULL, buf, sizeof buf, &plen) == FEDGE_OK);
    put("delta", "fp32-partial", 0, 0, buf, plen);
    uint8_t pspan[2 + sizeof buf] = {30, 200};
    memcpy(pspan + 2, buf, plen);
    put("delta_span", "fp32-partial", 0, 0, pspan, plen + 2);
}

/* valid blocks with every field, with some, and a near miss */
static void train_metrics(void)
{
    static const fedge_train_metrics ms[] = {
        {.present = FEDGE_TRAIN_HAS_ALL, .loss = 0.6931f, .accuracy = 0.8125f, .epochs = 3, .train_ms = 1234},
        {.present = FEDGE_TRAIN_HAS_LOSS | FEDGE_TRAIN_HAS_EPOCHS, .loss = 2.5f, .epochs = 1},
        {.present = FEDGE_TRAIN_HAS_ACCURACY, .accuracy = 1.0f},
    };
    uint8_t b[FEDGE_TRAIN_METRICS_LEN];
    char name[32];
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        FUZZ_CHECK(fedge_train_metrics_encode(&ms[i], b) == FEDGE_OK);
        snprintf(name, sizeof name, "block-%zu", i);
        put("train_metrics", name, 0, 0, b, sizeof b);
    }
    b[1] = 0x10;
    put("train_metrics", "unknown-flag", 0, 0, b, sizeof b);
}

static void models(void)
{
    static const char *const specs[] = {"softmax:4-2", "mlp:3-4-2", "softmax:2-3"};
    for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
        fedge_model_spec spec;
        fedge_model m;
        FUZZ_CHECK(fedge_model_spec_parse(specs[s], &spec) == FEDGE_OK);
        FUZZ_CHECK(fedge_model_init(&m, &spec) == FEDGE_OK);
        values(m.params, m.n_params);
        uint8_t *buf = NULL;
        size_t len = 0;
        FUZZ_CHECK(fedge_model_serialize(&m, &buf, &len, NULL) == FEDGE_OK);
        char name[64];
        snprintf(name, sizeof name, "%s", specs[s]);
        char *colon = strchr(name, ':');
        if (colon != NULL)
            *colon = '-';
        put("modelfile", name, 0, 1, buf, len);
        free(buf);
        fedge_model_free(&m);
    }
}

static void shards(void)
{
    float x[5 * 3];
    uint8_t y[5];
    for (int i = 0; i < 15; i++)
        x[i] = (float)((i * 37) % 256) / 255.0f;
    for (int i = 0; i < 5; i++)
        y[i] = (uint8_t)(i % 3);
    fedge_dataset ds = {.n = 5, .dim = 3, .n_classes = 3, .x = x, .y = y};
    size_t idx[5] = {0, 1, 2, 3, 4};
    static const struct {
        const char *name;
        int type;
        size_t count;
    } cases[] = {{"u8", FEDGE_SHARD_U8, 5}, {"f32", FEDGE_SHARD_F32, 4}, {"one", FEDGE_SHARD_U8, 1}};
    char path[1024];
    snprintf(path, sizeof path, "%s/.shard.tmp", outdir);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        FUZZ_CHECK(fedge_shard_write(path, &ds, idx, cases[c].count, cases[c].type) == FEDGE_OK);
        FILE *f = fopen(path, "rb");
        FUZZ_CHECK(f != NULL);
        uint8_t buf[512];
        size_t len = fread(buf, 1, sizeof buf, f);
        FUZZ_CHECK(len > 0 && len < sizeof buf && feof(f));
        fclose(f);
        put("shard", cases[c].name, 0, 1, buf, len);
    }
    unlink(path);
}

/* fuzz_server_opt_state: a mode byte (optimiser, 0x80: a control vector)
 * then a saved state of 8 parameters after two steps. */
static void server_opt_states(void)
{
    static const char *const names[] = {"sgd", "momentum", "adam", "yogi", "adagrad"};
    static const char *const extra_names[] = {"control"};
    for (uint8_t k = 0; k < 5; k++)
        for (uint8_t with_control = 0; with_control < 2; with_control++) {
            fedge_server_opt_params p = {.lr = 0.01, .momentum = 0.9, .beta1 = 0.9, .beta2 = 0.99, .tau = 1e-3};
            snprintf(p.name, sizeof p.name, "%s", names[k]);
            fedge_server_opt o;
            FUZZ_CHECK(fedge_server_opt_init(&o, &p, 8) == FEDGE_OK);
            float w[8], d[8], control[8];
            values(w, 8);
            values(d, 8);
            values(control, 8);
            fedge_server_opt_step(&o, w, d);
            fedge_server_opt_step(&o, w, d);
            const float *extra[] = {control};
            uint8_t buf[1024];
            size_t len = 0, n_extra = with_control;
            FUZZ_CHECK(fedge_server_opt_state_size(&o, n_extra) <= sizeof buf);
            FUZZ_CHECK(fedge_server_opt_save(&o, extra_names, extra, n_extra, buf, sizeof buf, &len) == FEDGE_OK);
            char name[32];
            snprintf(name, sizeof name, "%s%s", names[k], with_control ? "-control" : "");
            put("server_opt_state", name, (uint8_t)(k | (with_control ? 0x80 : 0)), 1, buf, len);
            fedge_server_opt_free(&o);
        }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: mkseeds OUTDIR\n");
        return 2;
    }
    fuzz_quiet();
    outdir = argv[1];
    FUZZ_CHECK(mkdir(outdir, 0755) == 0 || errno == EEXIST);
    deltas();
    server_opt_states();
    models();
    train_metrics();
    shards();
    return 0;
}
