/* trainer.c — local training over a streamed shard (see trainer.h). */
#include "trainer.h"

#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/ssl.h>

#include "common.h"
#include "crypto.h"
#include "envelope.h"
#include "fileio.h"
#include "modelfile.h"
#include "update.h"

/* The round's base model in the state dir (see trainer.h): magic, round,
 * version, n, the parameters (native floats: the file never leaves the
 * device), then the SHA-256 of everything before it. */
#define BASE_MAGIC "FEDGEBAS"
#define BASE_HEADER_LEN (8 + 4 + FEDGE_HASH_LEN + 8)

/* Model file: magic, version, spec_len | spec | u64 n_params | params | sha256. */
static size_t model_file_size(const fedge_model_spec *spec)
{
    char text[FEDGE_MODEL_SPEC_MAX];
    if (fedge_model_spec_format(spec, text, sizeof text) != FEDGE_OK)
        return 0;
    return 12 + strlen(text) + 8 + 4 * fedge_model_spec_param_count(spec) + FEDGE_HASH_LEN;
}

static size_t encoded_size(const fedge_model_spec *spec, fedge_encoding enc, size_t per_param,
                           fedge_delta_header *h)
{
    size_t n = fedge_model_spec_param_count(spec);
    if (n == 0 || n > FEDGE_DELTA_MAX_ELEMS / per_param)
        return 0;
    memset(h, 0, sizeof *h);
    h->encoding = (uint8_t)enc;
    h->n_elems = (uint32_t)(n * per_param);
    h->block_size = enc == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0;
    return fedge_delta_encoded_size(h);
}

static size_t sealed_size(const fedge_model_spec *spec, fedge_encoding enc, size_t per_param)
{
    fedge_delta_header h;
    size_t enc_len = encoded_size(spec, enc, per_param, &h);
    if (enc_len < FEDGE_DELTA_HEADER_LEN)
        return 0;
    return fedge_envelope_sealed_size(FEDGE_UPDATE_AAD_LEN + FEDGE_TRAIN_METRICS_LEN, enc_len - FEDGE_DELTA_HEADER_LEN);
}

size_t fedge_edge_sealed_size(const fedge_model_spec *spec, fedge_encoding enc)
{
    return sealed_size(spec, enc, 1);
}

/* The streaming sealer's heap and the blob that hands it to the link. */
static size_t stream_size(const fedge_model_spec *spec, fedge_encoding enc, size_t per_param)
{
    fedge_delta_header h;
    if (encoded_size(spec, enc, per_param, &h) == 0)
        return 0;
    size_t s = fedge_update_stream_bytes(&h);
    return s ? s + FEDGE_EDGE_BLOB_HEAP : 0;
}

size_t fedge_edge_base_heap(void)
{
#if MBEDTLS_SSL_IN_CONTENT_LEN <= 4096 /* edge/mbedtls_config_edge.h */
    return FEDGE_EDGE_BASE_HEAP_TRIMMED;
#else
    return FEDGE_EDGE_BASE_HEAP;
#endif
}

static size_t g_act_budget; /* 0: the build's default */

void fedge_edge_set_act_budget(size_t bytes)
{
    g_act_budget = bytes;
}

void fedge_edge_build_profile(fedge_edge_profile *p)
{
    p->act_budget = FEDGE_EDGE_ACT_BUDGET;
    p->act_grows = FEDGE_EDGE_ACT_GROWS;
    p->link = fedge_edge_base_heap();
}

static size_t act_budget_of(const fedge_model_spec *spec, const fedge_edge_profile *p)
{
    size_t budget = g_act_budget;
    if (budget == 0) {
        budget = p->act_grows ? fedge_model_spec_param_count(spec) * sizeof(float) : 0;
        if (budget < p->act_budget)
            budget = p->act_budget;
    }
    return budget;
}

static size_t act_budget(const fedge_model_spec *spec)
{
    fedge_edge_profile p;
    fedge_edge_build_profile(&p);
    return act_budget_of(spec, &p);
}

/* Rows by the small-GEMM layout (the GEMM's blocking then takes the rest of
 * the budget); the lean layout only when one row of that is over it. */
static size_t rows_floats(const fedge_model_spec *spec, int rows)
{
    return fedge_model_scratch_floats_layout(spec, rows, FEDGE_SCRATCH_SMALL_GEMM);
}

static int micro_batch_at(const fedge_model_spec *spec, int batch, size_t budget)
{
    size_t whole = rows_floats(spec, batch);
    if (whole == 0)
        return 0;
    if (whole * sizeof(float) <= budget)
        return batch;
    int lo = 1, hi = batch - 1, fits = 1; /* the scratch grows with the rows: bisect */
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        size_t f = rows_floats(spec, mid);
        if (f != 0 && f * sizeof(float) <= budget) {
            fits = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return fits;
}

int fedge_edge_micro_batch(const fedge_model_spec *spec, int batch)
{
    return micro_batch_at(spec, batch, act_budget(spec));
}

static size_t scratch_floats_at(const fedge_model_spec *spec, int micro, size_t budget)
{
    size_t f = fedge_model_scratch_floats_fit(spec, micro, budget / sizeof(float));
    return f ? f : fedge_model_scratch_floats_min(spec, micro); /* one row over the budget */
}

size_t fedge_edge_scratch_floats(const fedge_model_spec *spec, int micro)
{
    return scratch_floats_at(spec, micro, act_budget(spec));
}

static size_t chunk_floats_at(const fedge_model_spec *spec, int micro, size_t budget)
{
    if (micro < 1)
        return 0;
    size_t scratch = scratch_floats_at(spec, micro, budget);
    size_t min = fedge_model_grad_chunk_floats_fit(spec, micro, scratch);
    size_t n = fedge_model_spec_param_count(spec);
    if (min == 0)
        return 0;
    size_t full = FEDGE_EDGE_FULL_CHUNK < n ? FEDGE_EDGE_FULL_CHUNK : n;
    if (full > min && scratch == fedge_model_scratch_floats(spec, micro))
        return full;
    return min;
}

size_t fedge_edge_chunk_floats(const fedge_model_spec *spec, int micro)
{
    return chunk_floats_at(spec, micro, act_budget(spec));
}

static int memory_plan(const fedge_model_spec *spec, int batch, size_t record_size,
                       fedge_encoding enc, int scaffold, fedge_edge_velocity velocity, int micro,
                       size_t budget, size_t link, fedge_edge_memory *out)
{
    if (!spec || !out || batch < 1 || micro < 0 || micro > batch ||
        velocity < FEDGE_EDGE_VELOCITY_NONE ||
        velocity > FEDGE_EDGE_VELOCITY_BASE_FILE ||
        (scaffold && velocity == FEDGE_EDGE_VELOCITY_BASE_FILE))
        return FEDGE_ERR_INVALID_ARG;
    size_t n = fedge_model_spec_param_count(spec);
    size_t scratch = micro ? scratch_floats_at(spec, micro, budget) : 0;
    size_t chunk = micro ? chunk_floats_at(spec, micro, budget) : 0;
    size_t sealed = stream_size(spec, enc, scaffold ? 2 : 1);
    size_t body = model_file_size(spec);
    if (n == 0 || scratch == 0 || chunk == 0 || sealed == 0 || body == 0)
        return FEDGE_ERR_MODEL_SPEC;
    fedge_edge_memory m;
    memset(&m, 0, sizeof m);
    m.local = m.global = n * sizeof(float);
    /* micro-batches accumulate the minibatch's gradient in the velocity */
    m.velocity = velocity == FEDGE_EDGE_VELOCITY_NONE && micro == batch ? 0 : n * sizeof(float);
    if (velocity == FEDGE_EDGE_VELOCITY_BASE_FILE)
        m.base_file = BASE_HEADER_LEN + n * sizeof(float) + FEDGE_SHA256_LEN;
    m.grad = chunk * sizeof(float);
    m.scratch = scratch * sizeof(float);
    /* the features as stored (u8: dim bytes, f32: 4 dim), and the labels */
    m.batch = (size_t)batch * record_size;
    m.record = record_size;
    m.model_body = body;
    m.sealed = sealed;
    m.link = link;
    if (scaffold) {
        m.link += FEDGE_EDGE_SCAFFOLD_HEAP;
        m.control = m.client_control = m.control_delta = n * sizeof(float);
        m.grad += n * sizeof(float); /* the model delta, before dc */
    }
    /* Beside the local model, one phase at a time: GET /model's body (the
     * cached global is dropped first), which becomes the global model;
     * training: the velocity (allocated by train()) and the global model,
     * unless it went to the base file; POST /update: the sealer, and the
     * global model unless it went to the file. */
    size_t base = velocity == FEDGE_EDGE_VELOCITY_BASE_FILE ? 0 : m.global;
    /* a training pass's buffers exist only inside train(), after the base
     * went to the file */
    size_t pass = chunk * sizeof(float) + m.scratch + m.batch;
    size_t phase = body;
    if (m.global > phase)
        phase = m.global;
    if (pass + m.velocity + base > phase)
        phase = pass + m.velocity + base;
    if (sealed + base > phase)
        phase = sealed + base;
    m.peak = m.link + m.local + (m.grad - chunk * sizeof(float)) + m.record + m.control +
             m.client_control + m.control_delta + phase;
    /* the start-up shard check (fedge_shard_verify) holds its block beside the link alone */
    if (m.link + fedge_shard_verify_bytes(record_size) > m.peak)
        m.peak = m.link + fedge_shard_verify_bytes(record_size);
    *out = m;
    return FEDGE_OK;
}

int fedge_edge_memory_plan(const fedge_model_spec *spec, int batch, size_t record_size,
                           fedge_encoding enc, fedge_edge_memory *out)
{
    return fedge_edge_memory_plan_pass(spec, batch, record_size, enc, 0, FEDGE_EDGE_VELOCITY_RAM, 0,
                                       0, out);
}

int fedge_edge_memory_plan_scaffold(const fedge_model_spec *spec, int batch, size_t record_size,
                                    fedge_encoding enc, fedge_edge_memory *out)
{
    return fedge_edge_memory_plan_pass(spec, batch, record_size, enc, 1, FEDGE_EDGE_VELOCITY_RAM, 0,
                                       0, out);
}

int fedge_edge_memory_plan_round(const fedge_model_spec *spec, int batch, size_t record_size,
                                 fedge_encoding enc, int scaffold, fedge_edge_velocity velocity,
                                 fedge_edge_memory *out)
{
    return fedge_edge_memory_plan_pass(spec, batch, record_size, enc, scaffold, velocity, 0, 0, out);
}

int fedge_edge_memory_plan_pass(const fedge_model_spec *spec, int batch, size_t record_size,
                                fedge_encoding enc, int scaffold, fedge_edge_velocity velocity,
                                int micro, size_t act_budget_bytes, fedge_edge_memory *out)
{
    if (!spec || batch < 1 || micro < 0 || micro > batch)
        return FEDGE_ERR_INVALID_ARG;
    size_t budget = act_budget_bytes ? act_budget_bytes : act_budget(spec);
    if (micro == 0)
        micro = micro_batch_at(spec, batch, budget);
    return memory_plan(spec, batch, record_size, enc, scaffold != 0, velocity, micro, budget,
                       fedge_edge_base_heap(), out);
}

size_t fedge_edge_heap_bound(const fedge_model_spec *spec, int batch, size_t record_size)
{
    size_t n = spec ? fedge_model_spec_param_count(spec) : 0;
    if (n == 0 || batch < 1)
        return 0;
    return 2 * n * sizeof(float) + (size_t)batch * record_size + FEDGE_EDGE_BOUND_SLACK;
}

static int plan_at(const fedge_model_spec *spec, int batch, size_t record_size, fedge_encoding enc,
                   int scaffold, float momentum, float prox_mu, int have_base_file, int micro,
                   size_t budget, const fedge_edge_profile *p, fedge_edge_round_plan *out)
{
    if (micro == 0)
        return FEDGE_ERR_MODEL_SPEC;
    fedge_edge_velocity v =
        fedge_edge_velocity_of(momentum, prox_mu, scaffold, have_base_file, micro < batch);
    int ret = memory_plan(spec, batch, record_size, enc, scaffold, v, micro, budget, p->link, &out->mem);
    if (ret != FEDGE_OK)
        return ret;
    out->act_budget = budget;
    out->micro = micro;
    out->velocity = v;
    return FEDGE_OK;
}

/* The fastest layout a pass of rows holds in budget bytes, and a rank:
 * faster layouts first, then more rows per pass. */
static int pass_rank(const fedge_model_spec *spec, int rows, size_t budget, int batch)
{
    int layout = FEDGE_SCRATCH_PATCH;
    for (int l = FEDGE_SCRATCH_FULL; l <= FEDGE_SCRATCH_PATCH; l++) {
        size_t f = fedge_model_scratch_floats_layout(spec, rows, (fedge_scratch_layout)l);
        if (f != 0 && f * sizeof(float) <= budget) {
            layout = l;
            break;
        }
    }
    return layout * (batch + 1) + (batch - rows);
}

int fedge_edge_plan_round(const fedge_model_spec *spec, int batch, size_t record_size,
                          fedge_encoding enc, int scaffold, float momentum, float prox_mu,
                          int have_base_file, size_t cap, const fedge_edge_profile *profile,
                          fedge_edge_round_plan *out)
{
    fedge_edge_profile build;
    if (!spec || !out || batch < 1)
        return FEDGE_ERR_INVALID_ARG;
    if (!profile) {
        fedge_edge_build_profile(&build);
        profile = &build;
    }
    scaffold = scaffold != 0;
    size_t least = act_budget_of(spec, profile);
    int ret = plan_at(spec, batch, record_size, enc, scaffold, momentum, prox_mu, have_base_file,
                      micro_batch_at(spec, batch, least), least, profile, out);
    if (ret != FEDGE_OK || g_act_budget != 0 || profile->act_grows)
        return ret;
    size_t bound = fedge_edge_heap_bound(spec, batch, record_size);
    size_t margin = bound / 100 > FEDGE_EDGE_BOUND_MARGIN ? bound / 100 : FEDGE_EDGE_BOUND_MARGIN;
    if (bound <= margin)
        return FEDGE_OK;
    size_t limit = bound - margin;
    if (cap && cap < limit)
        limit = cap;
    /* each layout for the whole minibatch and for halves of it down to the
     * least budget's rows (never fewer rows per pass: a dense layer reads its
     * weights once per pass), fastest first: the first whole plan within the
     * limit that beats the least budget's pass */
    int best = pass_rank(spec, out->micro, out->act_budget, batch);
    /* a minibatch in one small-GEMM pass already is the fast case (softmax:
     * the full layout's slices would cost issue 12's 128 KB goal) */
    if (out->micro == batch && best / (batch + 1) <= FEDGE_SCRATCH_SMALL_GEMM)
        return FEDGE_OK;
    for (int layout = FEDGE_SCRATCH_FULL; layout <= FEDGE_SCRATCH_PATCH; layout++) {
        for (int rows = batch; rows >= out->micro; rows = rows > 1 ? (rows + 1) / 2 : 0) {
            size_t f = fedge_model_scratch_floats_layout(spec, rows, (fedge_scratch_layout)layout);
            if (f == 0 || f > SIZE_MAX / sizeof(float))
                continue;
            size_t budget = f * sizeof(float);
            fedge_edge_round_plan c;
            if (pass_rank(spec, rows, budget, batch) < best &&
                plan_at(spec, batch, record_size, enc, scaffold, momentum, prox_mu, have_base_file,
                        rows, budget, profile, &c) == FEDGE_OK &&
                c.mem.peak <= limit) {
                *out = c;
                return FEDGE_OK;
            }
        }
    }
    return FEDGE_OK;
}

fedge_edge_velocity fedge_edge_velocity_of(float momentum, float prox_mu, int scaffold,
                                           int have_base_file, int micro)
{
    if (!(momentum > 0.0f) && !micro)
        return FEDGE_EDGE_VELOCITY_NONE;
    if (have_base_file && !(prox_mu > 0.0f) && !scaffold)
        return FEDGE_EDGE_VELOCITY_BASE_FILE;
    return FEDGE_EDGE_VELOCITY_RAM;
}

void fedge_edge_memory_format(const fedge_edge_memory *m, char *buf, size_t cap)
{
    char control[128] = "";
    if (m->control)
        snprintf(control, sizeof control, "control=%zu client_control=%zu control_delta=%zu ",
                 m->control, m->client_control, m->control_delta);
    else if (m->base_file)
        snprintf(control, sizeof control, "base_file=%zu (not heap) ", m->base_file);
    snprintf(buf, cap,
             "model=%zu global=%zu grad=%zu velocity=%zu scratch=%zu batch=%zu record=%zu "
             "model_body=%zu sealed=%zu link=%zu %speak=%zu bytes",
             m->local, m->global, m->grad, m->velocity, m->scratch, m->batch, m->record,
             m->model_body, m->sealed, m->link, control, m->peak);
}

void fedge_edge_trainer_init(fedge_edge_trainer *t)
{
    memset(t, 0, sizeof *t);
}

static void free_pass(fedge_edge_trainer *t)
{
    free(t->gchunk);
    free(t->scratch);
    free(t->xbatch);
    free(t->xbatch_u8);
    free(t->ybatch);
    t->gchunk = t->scratch = t->xbatch = NULL;
    t->xbatch_u8 = t->ybatch = NULL;
}

/* The buffers of a training pass, which train() holds only while it trains:
 * the gradient slice, the model's scratch for t->micro rows, and one
 * minibatch of features as the shard stores them (u8 stays u8) and labels. */
static int alloc_pass(fedge_edge_trainer *t, int feature_type)
{
    const fedge_model_spec *spec = &t->local.spec;
    size_t rows = (size_t)t->batch * (size_t)spec->input_dim;
    t->gchunk = malloc(t->chunk_floats * sizeof(float));
    t->scratch = malloc(t->scratch_floats * sizeof(float));
    t->ybatch = malloc((size_t)t->batch);
    if (feature_type == FEDGE_SHARD_U8)
        t->xbatch_u8 = malloc(rows);
    else
        t->xbatch = malloc(rows * sizeof(float));
    if (!t->gchunk || !t->scratch || !t->ybatch || (!t->xbatch_u8 && !t->xbatch)) {
        free_pass(t);
        return FEDGE_ERR_NOMEM;
    }
    return FEDGE_OK;
}

static void drop_global(fedge_edge_trainer *t)
{
    fedge_model_free(&t->global);
    memset(&t->global, 0, sizeof t->global);
    t->have_global = 0;
    memset(t->global_version, 0, sizeof t->global_version);
}

void fedge_edge_trainer_drop_global(fedge_edge_trainer *t)
{
    if (t)
        drop_global(t);
}

void fedge_edge_trainer_free(fedge_edge_trainer *t)
{
    if (!t)
        return;
    fedge_model_free(&t->local);
    drop_global(t);
    fedge_sgd_free(&t->opt);
    free(t->grad);
    free_pass(t);
    memset(t, 0, sizeof *t);
}

static int same_spec(const fedge_model_spec *a, const fedge_model_spec *b)
{
    char ta[FEDGE_MODEL_SPEC_MAX], tb[FEDGE_MODEL_SPEC_MAX];
    return fedge_model_spec_format(a, ta, sizeof ta) == FEDGE_OK &&
           fedge_model_spec_format(b, tb, sizeof tb) == FEDGE_OK && strcmp(ta, tb) == 0;
}

int fedge_edge_trainer_prepare(fedge_edge_trainer *t, const fedge_model_spec *spec, int batch,
                               int *resized)
{
    return fedge_edge_trainer_prepare_pass(t, spec, batch, 0, 0, resized);
}

int fedge_edge_trainer_prepare_pass(fedge_edge_trainer *t, const fedge_model_spec *spec,
                                    int batch, int micro, size_t act_budget_bytes, int *resized)
{
    int ret = FEDGE_OK;
    if (resized)
        *resized = 0;
    if (!t || !spec || batch < 1 || micro < 0 || micro > batch)
        return FEDGE_ERR_INVALID_ARG;
    size_t budget = act_budget_bytes ? act_budget_bytes : act_budget(spec);
    if (micro == 0)
        micro = micro_batch_at(spec, batch, budget);
    int spec_same = t->sized && same_spec(&t->local.spec, spec);
    if (spec_same && t->batch == batch && t->act_budget == budget && t->micro == micro)
        return FEDGE_OK;
    size_t n = fedge_model_spec_param_count(spec);
    size_t scratch = micro ? scratch_floats_at(spec, micro, budget) : 0;
    if (n == 0 || scratch == 0)
        return FEDGE_ERR_MODEL_SPEC;
    if (!spec_same) {
        /* New shape: everything sized by the parameter count goes. */
        fedge_model_free(&t->local);
        drop_global(t);
        fedge_sgd_free(&t->opt);
        free(t->grad);
        t->grad = NULL;
        t->control_delta = NULL;
        t->delta = NULL;
    }
    free_pass(t);
    t->sized = 0;

    if (!spec_same) {
        CHK(fedge_model_init(&t->local, spec));
        t->opt.n = n; /* the velocity is allocated by train() when momentum needs it */
    }
    t->chunk_floats = chunk_floats_at(spec, micro, budget);
    t->act_budget = budget;
    t->batch = batch;
    t->micro = micro;
    t->scratch_floats = scratch;
    t->sized = 1;
    if (resized)
        *resized = 1;
cleanup:
    if (ret != FEDGE_OK) {
        /* Leave a consistent, empty trainer rather than half-sized buffers. */
        fedge_edge_trainer_free(t);
    }
    return ret;
}

int fedge_edge_trainer_prepare_control(fedge_edge_trainer *t)
{
    if (!t || !t->sized)
        return FEDGE_ERR_INVALID_ARG;
    if (t->control_delta)
        return FEDGE_OK;
    size_t n = t->local.n_params;
    if (n > SIZE_MAX / (2 * sizeof(float)))
        return FEDGE_ERR_NOMEM;
    float *both = malloc(2 * n * sizeof(float));
    if (!both)
        return FEDGE_ERR_NOMEM;
    t->grad = both;
    t->control_delta = both + n;
    return FEDGE_OK;
}

void fedge_edge_trainer_drop_control(fedge_edge_trainer *t)
{
    if (!t || !t->control_delta)
        return;
    if (t->delta == t->grad)
        t->delta = NULL;
    free(t->grad);
    t->grad = NULL;
    t->control_delta = NULL;
}

static int adopt_global(fedge_edge_trainer *t, int ret, fedge_model *m,
                        const uint8_t version[FEDGE_HASH_LEN])
{
    if (ret != FEDGE_OK)
        return ret;
    if (!same_spec(&m->spec, &t->local.spec)) {
        fedge_model_free(m);
        return FEDGE_ERR_MODEL_SHAPE;
    }
    t->global = *m;
    memcpy(t->global_version, version, FEDGE_HASH_LEN);
    t->have_global = 1;
    return FEDGE_OK;
}

int fedge_edge_trainer_set_global(fedge_edge_trainer *t, const uint8_t *body, size_t len)
{
    if (!t || !t->sized || !body)
        return FEDGE_ERR_INVALID_ARG;
    drop_global(t);
    fedge_model m;
    uint8_t version[FEDGE_HASH_LEN];
    memset(&m, 0, sizeof m);
    return adopt_global(t, fedge_model_deserialize(body, len, &m, version), &m, version);
}

int fedge_edge_trainer_take_global(fedge_edge_trainer *t, uint8_t *body, size_t len)
{
    if (!t || !t->sized || !body) {
        free(body);
        return FEDGE_ERR_INVALID_ARG;
    }
    drop_global(t);
    fedge_model m;
    uint8_t version[FEDGE_HASH_LEN];
    memset(&m, 0, sizeof m);
    return adopt_global(t, fedge_model_deserialize_owned(body, len, &m, version), &m, version);
}

/* One slice of the gradient: FedProx and SCAFFOLD terms, then the SGD step
 * on those parameters (per element what a whole gradient and
 * fedge_sgd_step did). A non-finite loss is refused before any slice. */
typedef struct {
    const fedge_sgd_config *cfg;
    float *velocity; /* NULL: momentum 0, the step needs none */
    float *w;
    const float *w_global;
    float mu;
    const float *correction;
} step_ctx;

static int step_slice(void *arg, size_t off, float *g, size_t n)
{
    step_ctx *sc = arg;
    if (sc->mu > 0.0f)
        for (size_t i = 0; i < n; i++)
            g[i] += sc->mu * (sc->w[off + i] - sc->w_global[off + i]);
    if (sc->correction)
        for (size_t i = 0; i < n; i++)
            g[i] += sc->correction[off + i];
    if (sc->velocity) {
        fedge_sgd_update(sc->cfg, sc->w + off, sc->velocity + off, g, n);
        return FEDGE_OK;
    }
    /* momentum 0: v = g + wd w, w -= lr v (fedge_sgd_update's 0 * v_old adds nothing) */
    const float lr = sc->cfg->lr, wd = sc->cfg->weight_decay;
    float *w = sc->w + off;
    for (size_t i = 0; i < n; i++)
        w[i] -= lr * (g[i] + wd * w[i]);
    return FEDGE_OK;
}

static void base_header(uint8_t hdr[BASE_HEADER_LEN], uint32_t round,
                        const uint8_t version[FEDGE_HASH_LEN], uint64_t n)
{
    memcpy(hdr, BASE_MAGIC, 8);
    memcpy(hdr + 8, &round, 4);
    memcpy(hdr + 12, version, FEDGE_HASH_LEN);
    memcpy(hdr + 12 + FEDGE_HASH_LEN, &n, 8);
}

int fedge_edge_base_write(const char *path, uint32_t round, const uint8_t version[FEDGE_HASH_LEN],
                      const float *w, size_t n)
{
    int ret = FEDGE_OK;
    uint8_t hdr[BASE_HEADER_LEN], digest[FEDGE_SHA256_LEN];
    fedge_sha256_ctx sha;
    memset(&sha, 0, sizeof sha);
    fedge_atomic_file f;
    /* never through a link: a temporary file renamed over the name */
    ret = fedge_atomic_open(path, 0600, 0, &f);
    if (ret != FEDGE_OK)
        return ret;
    base_header(hdr, round, version, (uint64_t)n);
    CHK(fedge_sha256_init(&sha));
    CHK(fedge_sha256_update(&sha, hdr, sizeof hdr));
    CHK(fedge_sha256_update(&sha, w, n * sizeof(float)));
    CHK(fedge_sha256_final(&sha, digest));
    CHK(fedge_write_all(f.fd, hdr, sizeof hdr));
    CHK(fedge_write_all(f.fd, w, n * sizeof(float)));
    CHK(fedge_write_all(f.fd, digest, sizeof digest));
    ret = fedge_atomic_commit(&f);
cleanup:
    fedge_sha256_free(&sha);
    fedge_atomic_abort(&f);
    return ret;
}

int fedge_edge_base_delta(const char *path, uint32_t round, const fedge_model_spec *spec,
                          const uint8_t version[FEDGE_HASH_LEN], float *w, size_t n, float *buf,
                          size_t cap)
{
    int ret = FEDGE_OK;
    uint8_t hdr[BASE_HEADER_LEN], want[BASE_HEADER_LEN];
    uint8_t digest[FEDGE_SHA256_LEN], stored[FEDGE_SHA256_LEN], got_version[FEDGE_HASH_LEN];
    fedge_sha256_ctx sha, vsha;
    memset(&sha, 0, sizeof sha);
    memset(&vsha, 0, sizeof vsha);
    if (n == 0 || cap == 0 || !w || !buf || !spec || !version)
        return FEDGE_ERR_INVALID_ARG;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT || errno == ELOOP ? FEDGE_ERR_MODEL_FILE_CHECKSUM : FEDGE_ERR_IO;
    base_header(want, round, version, (uint64_t)n);
    CHK(fedge_pread_all(fd, hdr, sizeof hdr, 0, FEDGE_ERR_MODEL_FILE_CHECKSUM));
    if (memcmp(hdr, want, sizeof hdr) != 0)
        FAIL(FEDGE_ERR_MODEL_FILE_CHECKSUM);
    /* the parameters read back must BE the round's model: its version is
     * SHA-256 over spec and parameters (fedge_model_version), which no one
     * rewriting the file can make match */
    if (fedge_model_version_begin(&vsha, spec, n) != FEDGE_OK)
        FAIL(FEDGE_ERR_MODEL_FILE_CHECKSUM);
    CHK(fedge_sha256_init(&sha));
    CHK(fedge_sha256_update(&sha, hdr, sizeof hdr));
    for (size_t i = 0; i < n; i += cap) {
        size_t m = n - i < cap ? n - i : cap;
        CHK(fedge_pread_all(fd, buf, m * sizeof(float), BASE_HEADER_LEN + i * sizeof(float),
                            FEDGE_ERR_MODEL_FILE_CHECKSUM));
        CHK(fedge_sha256_update(&sha, buf, m * sizeof(float)));
        CHK(fedge_model_version_update(&vsha, buf, m));
        for (size_t j = 0; j < m; j++)
            w[i + j] -= buf[j];
    }
    CHK(fedge_pread_all(fd, stored, sizeof stored, BASE_HEADER_LEN + n * sizeof(float),
                        FEDGE_ERR_MODEL_FILE_CHECKSUM));
    CHK(fedge_sha256_final(&sha, digest));
    CHK(fedge_sha256_final(&vsha, got_version));
    if (memcmp(digest, stored, sizeof digest) != 0 || memcmp(got_version, version, FEDGE_HASH_LEN) != 0)
        FAIL(FEDGE_ERR_MODEL_FILE_CHECKSUM);
    if (pread(fd, stored, 1, BASE_HEADER_LEN + n * sizeof(float) + sizeof stored) != 0)
        FAIL(FEDGE_ERR_MODEL_FILE_CHECKSUM); /* longer than written */
cleanup:
    fedge_sha256_free(&sha);
    fedge_sha256_free(&vsha);
    close(fd);
    return ret;
}

/* Micro-batches: slice by slice v = momentum v + share g for the first,
 * v += share g for the others (share: its rows / the minibatch's), then
 * step_full adds the weight decay, FedProx and SCAFFOLD terms and steps. */
typedef struct {
    float *v;
    float momentum;
    float share;
    int first;
} accum_ctx;

static int accum_slice(void *arg, size_t off, float *g, size_t n)
{
    accum_ctx *a = arg;
    float *v = a->v + off;
    if (a->first)
        for (size_t i = 0; i < n; i++)
            v[i] = a->momentum * v[i] + a->share * g[i];
    else
        for (size_t i = 0; i < n; i++)
            v[i] += a->share * g[i];
    return FEDGE_OK;
}

static void step_full(const step_ctx *sc, size_t n)
{
    const float lr = sc->cfg->lr, wd = sc->cfg->weight_decay;
    float *w = sc->w, *v = sc->velocity;
    for (size_t i = 0; i < n; i++) {
        float g = wd * w[i];
        if (sc->mu > 0.0f)
            g += sc->mu * (w[i] - sc->w_global[i]);
        if (sc->correction)
            g += sc->correction[i];
        v[i] += g;
        w[i] -= lr * v[i];
    }
}

/* One minibatch of got rows in micro-batches of t->micro (see trainer.h). */
static int train_micro(fedge_edge_trainer *t, int got, uint64_t dropout_seed, step_ctx *sc,
                       float *loss)
{
    int ret = FEDGE_OK;
    size_t dim = (size_t)t->local.spec.input_dim;
    accum_ctx a = {sc->velocity, sc->cfg->momentum, 0.0f, 1};
    double sum = 0.0;
    for (int r0 = 0; r0 < got; r0 += t->micro) {
        int rows = got - r0 < t->micro ? got - r0 : t->micro;
        float l;
        a.share = (float)rows / (float)got;
        uint64_t seed = dropout_seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)r0);
        if (t->xbatch_u8)
            CHK(fedge_model_loss_grad_sliced_u8_n(&t->local, t->xbatch_u8 + (size_t)r0 * dim,
                                                  FEDGE_SHARD_U8_SCALE, t->ybatch + r0, rows,
                                                  seed, t->scratch, t->scratch_floats, t->gchunk,
                                                  t->chunk_floats, accum_slice, &a, &l));
        else
            CHK(fedge_model_loss_grad_sliced_n(&t->local, t->xbatch + (size_t)r0 * dim,
                                               t->ybatch + r0, rows, seed, t->scratch,
                                               t->scratch_floats, t->gchunk, t->chunk_floats,
                                               accum_slice, &a, &l));
        a.first = 0;
        sum += (double)l * rows;
    }
    step_full(sc, t->local.n_params);
    *loss = (float)(sum / got);
cleanup:
    return ret;
}

static uint64_t epoch_seed(uint64_t seed, int epoch)
{
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t)(epoch + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int fedge_edge_trainer_train(fedge_edge_trainer *t, fedge_shard_reader *shard,
                             const fedge_edge_train_params *p,
                             const volatile sig_atomic_t *stop, double *mean_loss)
{
    if (!t || !shard || !p || !t->sized || p->epochs < 1 || !isfinite(p->prox_mu) ||
        p->prox_mu < 0.0f || (p->control == NULL) != (p->client_control == NULL) ||
        (p->control && !(p->lr > 0.0f)))
        return FEDGE_ERR_INVALID_ARG;
    if (!t->have_global || (p->control && !t->control_delta))
        return FEDGE_ERR_STATE;
    const fedge_model_spec *spec = &t->local.spec;
    if (shard->dim != spec->input_dim || shard->n_classes > spec->classes ||
        shard->n == 0)
        return FEDGE_ERR_MODEL_SHAPE;

    int ret = FEDGE_OK;
    size_t n = t->local.n_params;
    if (!(p->momentum >= 0.0f && p->momentum < 1.0f))
        return FEDGE_ERR_INVALID_ARG;
    memcpy(t->local.params, t->global.params, n * sizeof(float));
    t->opt.cfg.lr = p->lr;
    t->opt.cfg.momentum = p->momentum;
    t->opt.cfg.weight_decay = p->weight_decay;
    const float mu = p->prox_mu;
    /* the base goes to the file only where no step reads it (heavy-ball
     * without FedProx or SCAFFOLD); then the velocity takes its place */
    int micro = t->micro < t->batch;
    int spill = fedge_edge_velocity_of(p->momentum, mu, p->control != NULL, p->base_file != NULL,
                                       micro) == FEDGE_EDGE_VELOCITY_BASE_FILE;
    const float *w_global = t->global.params;
    float *w = t->local.params;
    t->spilled = 0;
    /* SCAFFOLD's correction c - c_i is fixed for the round: it lives in the
     * dc buffer until the round's dc replaces it. */
    float *correction = NULL;
    float bound = 0.0f;
    if (p->control) {
        /* an implausible c or c_i (control.h) is refused before any step */
        bound = fedge_edge_control_bound(&t->global, p->lr);
        if (fedge_edge_control_check(p->control, n, bound, NULL) != FEDGE_OK ||
            fedge_edge_control_check(p->client_control, n, bound, NULL) != FEDGE_OK)
            return FEDGE_ERR_CONTROL_RANGE;
        correction = t->control_delta;
        for (size_t i = 0; i < n; i++)
            correction[i] = p->control[i] - p->client_control[i];
    }
    t->steps = 0;
    t->delta = NULL;
    t->accuracy = -1.0;
    t->base_write_errno = 0;
    if (spill) {
        /* a failed write (state dir full, a link in the way): the base stays
         * in RAM this round where the caller's memory plan allows it */
        int wr = fedge_edge_base_write(p->base_file, p->round, t->global_version, t->global.params, n);
        if (wr != FEDGE_OK) {
            t->base_write_errno = wr == FEDGE_ERR_NOT_REGULAR ? ELOOP : errno ? errno : EIO;
            if (!p->base_ram_fallback)
                return FEDGE_ERR_BASE_WRITE;
            spill = 0;
        }
    }
    if (spill) {
        fedge_model_free(&t->global); /* the version stays: the update names it */
        t->have_global = 0;
        t->spilled = 1;
        w_global = NULL;
    }
    CHK(alloc_pass(t, shard->feature_type));
    if (p->momentum > 0.0f || micro) {
        t->opt.velocity = calloc(n, sizeof(float));
        if (!t->opt.velocity)
            FAIL(FEDGE_ERR_NOMEM);
    }
    step_ctx sc = {&t->opt.cfg, t->opt.velocity, w, w_global, mu, correction};

    double loss_sum = 0.0;
    uint64_t rows = 0, step = 0;
    for (int e = 0; e < p->epochs; e++) {
        fedge_shard_rewind(shard, 1, epoch_seed(p->seed, e));
        loss_sum = 0.0;
        rows = 0;
        for (;;) {
            if (stop && *stop)
                FAIL(FEDGE_ERR_EDGE_STOPPED);
            int got = 0;
            float loss;
            if (t->xbatch_u8)
                CHK(fedge_shard_next_batch_u8(shard, t->batch, t->xbatch_u8, t->ybatch, &got));
            else
                CHK(fedge_shard_next_batch(shard, t->batch, t->xbatch, t->ybatch, &got));
            if (got == 0)
                break;
            /* the step's dropout masks: a function of the round seed and the step */
            uint64_t dropout_seed = epoch_seed(p->seed ^ 0x6a09e667f3bcc908ull, (int)(step++ & 0x7fffffff));
            if (got > t->micro)
                CHK(train_micro(t, got, dropout_seed, &sc, &loss));
            else if (t->xbatch_u8)
                CHK(fedge_model_loss_grad_sliced_u8_n(&t->local, t->xbatch_u8, FEDGE_SHARD_U8_SCALE,
                                                      t->ybatch, got, dropout_seed, t->scratch,
                                                      t->scratch_floats, t->gchunk,
                                                      t->chunk_floats, step_slice, &sc, &loss));
            else
                CHK(fedge_model_loss_grad_sliced_n(&t->local, t->xbatch, t->ybatch, got,
                                                   dropout_seed, t->scratch, t->scratch_floats,
                                                   t->gchunk, t->chunk_floats, step_slice, &sc,
                                                   &loss));
            t->steps++;
            loss_sum += (double)loss * got;
            rows += (uint64_t)got;
        }
    }
    /* what the edge reports (update.h's metrics): the trained model on a
     * random sample of its own shard. A u8 shard's rows are made floats a
     * few at a time in the gradient slice, free once training is done. */
    {
        size_t correct = 0, seen = 0, dim = (size_t)spec->input_dim;
        size_t per = t->xbatch_u8 ? t->chunk_floats / dim : (size_t)t->batch;
        if (per > (size_t)t->micro) /* t->scratch holds t->micro rows */
            per = (size_t)t->micro;
        fedge_shard_rewind(shard, 1, epoch_seed(p->seed, p->epochs));
        while (per > 0 && seen < FEDGE_EDGE_ACCURACY_ROWS) {
            if (stop && *stop)
                FAIL(FEDGE_ERR_EDGE_STOPPED);
            int got = 0;
            if (t->xbatch_u8)
                CHK(fedge_shard_next_batch_u8(shard, t->batch, t->xbatch_u8, t->ybatch, &got));
            else
                CHK(fedge_shard_next_batch(shard, t->batch, t->xbatch, t->ybatch, &got));
            if (got == 0)
                break;
            size_t take = (size_t)got < FEDGE_EDGE_ACCURACY_ROWS - seen ? (size_t)got : FEDGE_EDGE_ACCURACY_ROWS - seen;
            for (size_t r = 0; r < take; r += per) {
                size_t k = take - r < per ? take - r : per, nc = 0;
                double ls = 0.0;
                const float *x = t->xbatch ? t->xbatch + r * dim : t->gchunk;
                if (t->xbatch_u8)
                    for (size_t i = 0; i < k * dim; i++)
                        t->gchunk[i] = (float)t->xbatch_u8[r * dim + i] * FEDGE_SHARD_U8_SCALE;
                CHK(fedge_model_evaluate_n(&t->local, x, t->ybatch + r, k, (int)k, t->scratch,
                                           t->scratch_floats, &nc, &ls));
                correct += nc;
            }
            seen += take;
        }
        t->accuracy = seen ? (double)correct / (double)seen : -1.0;
    }
    free(t->opt.velocity);
    t->opt.velocity = NULL;
    /* the delta: in the local model's place (SCAFFOLD: before dc, in grad) */
    float *delta = p->control ? t->grad : t->local.params;
    if (t->spilled) {
        CHK(fedge_edge_base_delta(p->base_file, p->round, spec, t->global_version, delta, n, t->gchunk,
                                  t->chunk_floats));
        for (size_t i = 0; i < n; i++)
            if (!isfinite(delta[i]))
                FAIL(FEDGE_ERR_MODEL_NONFINITE);
    } else {
        for (size_t i = 0; i < n; i++) {
            float d = t->local.params[i] - t->global.params[i];
            if (!isfinite(d))
                FAIL(FEDGE_ERR_MODEL_NONFINITE);
            delta[i] = d;
        }
    }
    t->delta = delta;
    if (p->control) {
        /* dc = (1 - momentum)(x - y) / (K lr) - c; checked whole before c_i moves. */
        float inv_step = (1.0f - p->momentum) / ((float)t->steps * p->lr);
        for (size_t i = 0; i < n; i++) {
            float dc = -delta[i] * inv_step - p->control[i];
            if (!isfinite(dc) || !isfinite(p->client_control[i] + dc))
                FAIL(FEDGE_ERR_MODEL_NONFINITE);
            if (fabsf(p->client_control[i] + dc) > bound)
                FAIL(FEDGE_ERR_CONTROL_RANGE);
            t->control_delta[i] = dc;
        }
        for (size_t i = 0; i < n; i++)
            p->client_control[i] += t->control_delta[i];
    }
    if (mean_loss)
        *mean_loss = rows ? loss_sum / (double)rows : 0.0;
cleanup:
    free(t->opt.velocity);
    t->opt.velocity = NULL;
    free_pass(t);
    if (t->spilled) {
        unlink(p->base_file); /* read once; a stale one would fail its check anyway */
        if (ret != FEDGE_OK)
            t->delta = NULL;
    }
    return ret;
}
