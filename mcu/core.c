/* core.c — the bare-metal round: caller buffers, fused SGD steps, the delta
 * in place, the sealed update's stream (core.h). */
#include "core.h"

#include <string.h>

#include "common.h"

#define ALIGN8(n) (((n) + 7u) & ~(size_t)7u)

static fedge_delta_header update_header(const fedge_model_spec *spec, fedge_encoding enc)
{
    fedge_delta_header h;
    memset(&h, 0, sizeof h);
    h.encoding = (uint8_t)enc;
    h.n_elems = (uint32_t)spec->n_params;
    h.block_size = enc == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0;
    return h;
}

int fedge_core_plan_bytes(const fedge_model_spec *spec, int batch, const fedge_sgd_config *cfg,
                          fedge_encoding enc, fedge_core_plan *out)
{
    if (spec == NULL || cfg == NULL || out == NULL || batch < 1)
        return FEDGE_ERR_INVALID_ARG;
    size_t n = fedge_model_spec_param_count(spec);
    size_t chunk = fedge_model_grad_chunk_floats(spec);
    size_t scratch = fedge_model_scratch_floats(spec, batch);
    if (n == 0 || chunk == 0 || scratch == 0)
        return FEDGE_ERR_MODEL_SPEC;
    fedge_delta_header h = update_header(spec, enc);
    size_t stream = fedge_update_stream_bytes(&h);
    if (stream == 0)
        return FEDGE_ERR_INVALID_ARG;
    fedge_core_plan p;
    p.params = n * sizeof(float);
    p.velocity = (cfg->momentum > 0.0f ? n : chunk) * sizeof(float);
    p.chunk = chunk * sizeof(float);
    p.scratch = scratch * sizeof(float);
    p.stream = stream;
    p.total = ALIGN8(p.params) + ALIGN8(p.velocity) + ALIGN8(p.chunk) + ALIGN8(p.scratch) +
              ALIGN8(p.stream);
    *out = p;
    return FEDGE_OK;
}

int fedge_core_init(fedge_core *c, const fedge_model_spec *spec, int batch,
                    const fedge_sgd_config *cfg, fedge_encoding enc, const fedge_platform *pf,
                    void *buf, size_t buf_len)
{
    if (c == NULL || pf == NULL || pf->random == NULL || pf->now_us == NULL || buf == NULL ||
        ((uintptr_t)buf & 7u) != 0)
        return FEDGE_ERR_INVALID_ARG;
    fedge_core_plan p;
    int ret = fedge_core_plan_bytes(spec, batch, cfg, enc, &p);
    if (ret != FEDGE_OK)
        return ret;
    if (buf_len < p.total)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    memset(c, 0, sizeof *c);
    uint8_t *at = buf;
    float *params = (float *)at;
    at += ALIGN8(p.params);
    c->velocity = (float *)at;
    at += ALIGN8(p.velocity);
    c->chunk = (float *)at;
    at += ALIGN8(p.chunk);
    c->scratch = (float *)at;
    at += ALIGN8(p.scratch);
    c->stream_mem = at;
    c->stream_len = p.stream;
    ret = fedge_model_bind(&c->model, spec, params);
    if (ret != FEDGE_OK)
        return ret;
    c->sgd = *cfg;
    c->enc = enc;
    c->batch = batch;
    c->platform = *pf;
    return FEDGE_OK;
}

int fedge_core_begin(fedge_core *c, const float *global, size_t global_len)
{
    if (c == NULL || c->model.params == NULL || global == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (global_len != c->model.n_params)
        return FEDGE_ERR_MODEL_SHAPE;
    memcpy(c->model.params, global, c->model.n_params * sizeof(float));
    if (c->sgd.momentum > 0.0f)
        memset(c->velocity, 0, c->model.n_params * sizeof(float));
    c->steps = 0;
    c->samples = 0;
    c->train_us = 0;
    return FEDGE_OK;
}

/* One gradient slice: the optimizer's step on it (optim.h), in place. */
static int step_slice(void *arg, size_t off, float *g, size_t n)
{
    fedge_core *c = arg;
    float *v = c->velocity + off;
    if (!(c->sgd.momentum > 0.0f)) {
        v = c->velocity; /* momentum 0: the velocity is the step itself, kept nowhere */
        memset(v, 0, n * sizeof(float));
    }
    fedge_sgd_update(&c->sgd, c->model.params + off, v, g, n);
    return FEDGE_OK;
}

/* One step: x (float) or xu8 (u8 * scale), the other NULL. */
static int core_step(fedge_core *c, const float *x, const uint8_t *xu8, size_t x_len, float scale,
                     const uint8_t *y, size_t y_len, int rows, float *loss)
{
    if (c == NULL || c->model.params == NULL || (x == NULL && xu8 == NULL) || y == NULL ||
        rows < 1 || rows > c->batch)
        return FEDGE_ERR_INVALID_ARG;
    if (x_len / (size_t)c->model.spec.input_dim < (size_t)rows || y_len < (size_t)rows)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    float l = 0.0f;
    uint64_t t0 = c->platform.now_us(c->platform.ctx);
    int ret = x != NULL ? fedge_model_loss_grad_sliced(&c->model, x, y, rows, 0, c->scratch,
                                                       c->chunk, step_slice, c, &l)
                        : fedge_model_loss_grad_sliced_u8(&c->model, xu8, scale, y, rows, 0,
                                                          c->scratch, c->chunk, step_slice, c, &l);
    c->train_us += c->platform.now_us(c->platform.ctx) - t0;
    if (loss != NULL)
        *loss = l;
    if (ret != FEDGE_OK)
        return ret;
    c->steps++;
    c->samples += (uint32_t)rows;
    return FEDGE_OK;
}

int fedge_core_step(fedge_core *c, const float *x, size_t x_len, const uint8_t *y, size_t y_len,
                    int rows, float *loss)
{
    if (x == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return core_step(c, x, NULL, x_len, 0.0f, y, y_len, rows, loss);
}

int fedge_core_step_u8(fedge_core *c, const uint8_t *x, size_t x_len, float scale, const uint8_t *y,
                       size_t y_len, int rows, float *loss)
{
    if (x == NULL)
        return FEDGE_ERR_INVALID_ARG;
    return core_step(c, NULL, x, x_len, scale, y, y_len, rows, loss);
}

int fedge_core_seal(fedge_core *c, const float *global, size_t global_len, const fedge_core_update *u,
                    fedge_update_stream **out)
{
    if (c == NULL || c->model.params == NULL || global == NULL || u == NULL || u->key == NULL ||
        u->run_id == NULL || u->base_version == NULL || out == NULL)
        return FEDGE_ERR_INVALID_ARG;
    if (global_len != c->model.n_params)
        return FEDGE_ERR_MODEL_SHAPE;
    fedge_delta_header h = update_header(&c->model.spec, c->enc);
    h.model_id = fedge_model_spec_id(&c->model.spec);
    h.round = u->round;
    h.n_samples = c->samples;
    memcpy(h.base_version, u->base_version, FEDGE_HASH_LEN);
    float *w = c->model.params;
    for (size_t i = 0; i < c->model.n_params; i++)
        w[i] -= global[i];
    uint8_t seed[8];
    if (c->platform.random(c->platform.ctx, seed, sizeof seed) != 0)
        return FEDGE_ERR_CRYPTO;
    uint64_t s = 0;
    for (int i = 0; i < 8; i++)
        s = s << 8 | seed[i];
    fedge_rng rng;
    fedge_rng_seed(&rng, s);
    return fedge_update_stream_init(c->stream_mem, c->stream_len, u->key, u->counter, u->run_id,
                                    &h, w, &rng, out);
}
