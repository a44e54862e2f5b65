/* backend_cpu.c — the CPU backend: host buffers, the shared core's GEMM and
 * SGD rule, MPI collectives. Gradient buckets go out as non-blocking MPI
 * collectives while the backward pass goes on; MPI_Testall after each layer
 * lets Open MPI progress them.
 *
 * A spec that is not a dense chain (a cnn) runs in shared-core mode: forward
 * computes the whole gradient with fedge_model_loss_grad (shared/model.h) and
 * the backward pass is one step (layer 0) after which every bucket goes out. */
#include "cluster_backend.h"

#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

typedef struct {
    MPI_Comm comm;
    fedge_dense_shape shape;               /* cfg.spec as dense layers */
    int shared_core;                       /* not a dense chain: fedge_model_loss_grad */
    fedge_model view;                      /* shared core: spec + params (not owned) */
    float *x, *scratch;                    /* shared core: rows x input_dim, its scratch */
    uint64_t steps;                        /* shared core: forwards so far (dropout seed) */
    float *params, *grads, *velocity;
    float *act_block;                      /* activations, one block */
    float *act[FEDGE_MODEL_MAX_LAYERS + 1]; /* act[0] input .. act[L] probabilities */
    float *dz, *da;                         /* backward scratch, rows x max dim */
    uint8_t *y;
    int rows;
    MPI_Request *reqs;
    size_t n_reqs, cap_reqs;
    int *counts;                            /* world, for reduce-scatter */
    /* ZeRO-1: an in-place reduce-scatter leaves this rank's part of bucket
     * i at grads + pend_off[i]; it is moved to its place, pend_dst[i]. */
    size_t *pend_off, *pend_dst, *pend_cnt;
} cpu_impl;

#define IMPL(be) ((cpu_impl *)(be)->impl)

static int mpi_ok(int rc) { return rc == MPI_SUCCESS ? FEDGE_OK : FEDGE_ERR_CLUSTER_COMM; }

/* ---- communication ------------------------------------------------------ */

static int cpu_buf_alloc(fedge_backend *be, size_t n, float **out)
{
    (void)be;
    *out = calloc(n ? n : 1, sizeof(float));
    return *out ? FEDGE_OK : FEDGE_ERR_NOMEM;
}

static void cpu_buf_free(fedge_backend *be, float *p)
{
    (void)be;
    free(p);
}

static int cpu_buf_upload(fedge_backend *be, float *dst, const float *host, size_t n)
{
    (void)be;
    memcpy(dst, host, n * sizeof(float));
    return FEDGE_OK;
}

static int cpu_buf_download(fedge_backend *be, float *host, const float *src, size_t n)
{
    (void)be;
    memcpy(host, src, n * sizeof(float));
    return FEDGE_OK;
}

static int cpu_allreduce(fedge_backend *be, float *buf, size_t n)
{
    if (n > INT_MAX)
        return FEDGE_ERR_RANGE;
    return mpi_ok(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, IMPL(be)->comm));
}

static int cpu_reduce_scatter(fedge_backend *be, const float *send, float *recv, size_t per_rank)
{
    if (per_rank > INT_MAX)
        return FEDGE_ERR_RANGE;
    return mpi_ok(MPI_Reduce_scatter_block(send, recv, (int)per_rank, MPI_FLOAT, MPI_SUM,
                                           IMPL(be)->comm));
}

static int cpu_all_gather(fedge_backend *be, float *buf, size_t per_rank)
{
    if (per_rank > INT_MAX)
        return FEDGE_ERR_RANGE;
    return mpi_ok(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)per_rank,
                                MPI_FLOAT, IMPL(be)->comm));
}

static int cpu_barrier(fedge_backend *be) { return mpi_ok(MPI_Barrier(IMPL(be)->comm)); }

/* ---- training state ----------------------------------------------------- */

static int cpu_set_params(fedge_backend *be, const float *host)
{
    cpu_impl *c = IMPL(be);
    const fedge_layout *lo = &be->cfg.layout;
    memcpy(c->params, host, lo->n * sizeof(float));
    memset(c->params + lo->n, 0, (lo->n_pad - lo->n) * sizeof(float));
    return FEDGE_OK;
}

static int cpu_get_params(fedge_backend *be, float *host)
{
    memcpy(host, IMPL(be)->params, be->cfg.layout.n * sizeof(float));
    return FEDGE_OK;
}

static int cpu_set_optim(fedge_backend *be, const float *host)
{
    memcpy(IMPL(be)->velocity, host, be->opt_len * sizeof(float));
    return FEDGE_OK;
}

static int cpu_get_optim(fedge_backend *be, float *host)
{
    memcpy(host, IMPL(be)->velocity, be->opt_len * sizeof(float));
    return FEDGE_OK;
}

/* ---- compute ------------------------------------------------------------ */

static int cpu_load_batch(fedge_backend *be, const float *x, const uint8_t *y, int rows)
{
    cpu_impl *c = IMPL(be);
    const fedge_dense_shape *sp = &c->shape;
    if (rows < 1 || rows > be->cfg.local_batch_max)
        return FEDGE_ERR_RANGE;
    const fedge_model_spec *spec = &be->cfg.spec;
    for (int i = 0; i < rows; i++)
        if (y[i] >= spec->classes)
            return FEDGE_ERR_DATA_LABEL;
    (void)sp;
    memcpy(c->shared_core ? c->x : c->act[0], x,
           (size_t)rows * (size_t)spec->input_dim * sizeof(float));
    memcpy(c->y, y, (size_t)rows);
    c->rows = rows;
    /* backward never writes the padding; in-place collectives may have */
    memset(c->grads + be->cfg.layout.n, 0,
           (be->cfg.layout.n_pad - be->cfg.layout.n) * sizeof(float));
    return FEDGE_OK;
}

/* Shared-core mode: the whole gradient now, scaled from the batch mean to the
 * contract's sum over rows times grad_weight. */
static int cpu_forward_shared(fedge_backend *be, float grad_weight, double *loss_sum)
{
    cpu_impl *c = IMPL(be);
    float loss = 0.0f;
    uint64_t seed = 0x5eedc0de00000000ull + c->steps++; /* the same on every rank */
    int ret = fedge_model_loss_grad(&c->view, c->x, c->y, c->rows, seed, c->scratch, c->grads,
                                    &loss);
    if (ret != FEDGE_OK)
        return ret;
    const float w = grad_weight * (float)c->rows;
    for (size_t i = 0; i < c->view.n_params; i++)
        c->grads[i] *= w;
    *loss_sum = (double)loss * c->rows;
    return FEDGE_OK;
}

static int cpu_forward(fedge_backend *be, float grad_weight, double *loss_sum)
{
    cpu_impl *c = IMPL(be);
    if (c->shared_core)
        return cpu_forward_shared(be, grad_weight, loss_sum);
    const fedge_dense_shape *sp = &c->shape;
    const int L = sp->n_layers, rows = c->rows;
    float *W[FEDGE_MODEL_MAX_LAYERS], *b[FEDGE_MODEL_MAX_LAYERS];
    fedge_dense_views(sp, c->params, W, b);
    for (int l = 0; l < L; l++) {
        const int in = sp->dims[l], out = sp->dims[l + 1];
        float *z = c->act[l + 1];
        fedge_sgemm(0, 1, rows, out, in, 1.0f, c->act[l], in, W[l], in, 0.0f, z, out);
        /* restrict locals: without them every store to z reloads b[l] */
        const float *restrict bl = b[l];
        const int relu = l < L - 1;
        for (int r = 0; r < rows; r++) {
            float *restrict zr = z + (size_t)r * (size_t)out;
            if (relu)
                for (int j = 0; j < out; j++) {
                    const float v = zr[j] + bl[j];
                    zr[j] = v < 0.0f ? 0.0f : v;
                }
            else
                for (int j = 0; j < out; j++)
                    zr[j] += bl[j];
        }
    }
    const int classes = sp->dims[L];
    double total = 0.0;
    for (int r = 0; r < rows; r++) {
        float *zr = c->act[L] + (size_t)r * (size_t)classes;
        float *dr = c->dz + (size_t)r * (size_t)classes;
        float mx = zr[0];
        for (int j = 1; j < classes; j++)
            mx = zr[j] > mx ? zr[j] : mx;
        double sum = 0.0;
        for (int j = 0; j < classes; j++)
            sum += exp((double)(zr[j] - mx));
        total += log(sum) - (double)(zr[c->y[r]] - mx);
        for (int j = 0; j < classes; j++) {
            zr[j] = (float)(exp((double)(zr[j] - mx)) / sum);
            dr[j] = (zr[j] - (j == c->y[r] ? 1.0f : 0.0f)) * grad_weight;
        }
    }
    *loss_sum = total;
    return FEDGE_OK;
}

static int cpu_progress(cpu_impl *c)
{
    if (c->n_reqs == 0)
        return FEDGE_OK;
    int done = 0;
    return mpi_ok(MPI_Testall((int)c->n_reqs, c->reqs, &done, MPI_STATUSES_IGNORE));
}

static int cpu_backward_layer(fedge_backend *be, int l)
{
    cpu_impl *c = IMPL(be);
    const fedge_dense_shape *sp = &c->shape;
    if (c->shared_core) /* forward did it all: one step, layer 0 */
        return l == 0 ? cpu_progress(c) : FEDGE_ERR_INVALID_ARG;
    if (l < 0 || l >= sp->n_layers)
        return FEDGE_ERR_INVALID_ARG;
    const int rows = c->rows, in = sp->dims[l], out = sp->dims[l + 1];
    float *W[FEDGE_MODEL_MAX_LAYERS], *b[FEDGE_MODEL_MAX_LAYERS];
    float *gW[FEDGE_MODEL_MAX_LAYERS], *gb[FEDGE_MODEL_MAX_LAYERS];
    fedge_dense_views(sp, c->params, W, b);
    fedge_dense_views(sp, c->grads, gW, gb);
    fedge_sgemm(1, 0, out, in, rows, 1.0f, c->dz, out, c->act[l], in, 0.0f, gW[l], in);
    float *restrict gbl = gb[l];
    for (int j = 0; j < out; j++)
        gbl[j] = 0.0f;
    for (int r = 0; r < rows; r++) {
        const float *restrict dr = c->dz + (size_t)r * (size_t)out;
        for (int j = 0; j < out; j++)
            gbl[j] += dr[j];
    }
    if (l > 0) {
        fedge_sgemm(0, 0, rows, in, out, 1.0f, c->dz, out, W[l], in, 0.0f, c->da, in);
        const size_t cnt = (size_t)rows * (size_t)in;
        float *restrict dz = c->dz;
        const float *restrict al = c->act[l], *restrict da = c->da;
        for (size_t i = 0; i < cnt; i++) {
            const float g = da[i]; /* loaded either way: the select vectorises */
            dz[i] = al[i] > 0.0f ? g : 0.0f;
        }
    }
    return cpu_progress(c);
}

static int cpu_grad_comm_start(fedge_backend *be, size_t off, size_t count)
{
    cpu_impl *c = IMPL(be);
    const fedge_layout *lo = &be->cfg.layout;
    if (off + count > lo->n_pad || count > INT_MAX)
        return FEDGE_ERR_RANGE;
    if (c->n_reqs == c->cap_reqs)
        return FEDGE_ERR_INTERNAL;
    MPI_Request *req = &c->reqs[c->n_reqs];
    int rc;
    if (!be->cfg.zero) {
        rc = MPI_Iallreduce(MPI_IN_PLACE, c->grads + off, (int)count, MPI_FLOAT, MPI_SUM,
                            c->comm, req);
    } else {
        /* In place: the result for this rank lands at the start of the
         * bucket; cpu_grad_comm_wait moves it to its own offset. */
        size_t mine_off = off, mine_cnt = 0;
        for (int r = 0; r < lo->world; r++) {
            size_t po, pc;
            fedge_layout_intersect(lo, r, off, count, &po, &pc);
            c->counts[r] = (int)pc;
            if (r == lo->rank) {
                mine_off = po;
                mine_cnt = pc;
            }
        }
        c->pend_off[c->n_reqs] = off;
        c->pend_dst[c->n_reqs] = mine_off;
        c->pend_cnt[c->n_reqs] = mine_cnt;
        if (off == 0 && count == lo->n_pad)
            rc = MPI_Ireduce_scatter_block(MPI_IN_PLACE, c->grads, (int)lo->shard, MPI_FLOAT,
                                           MPI_SUM, c->comm, req);
        else
            rc = MPI_Ireduce_scatter(MPI_IN_PLACE, c->grads + off, c->counts, MPI_FLOAT,
                                     MPI_SUM, c->comm, req);
    }
    if (rc != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    c->n_reqs++;
    return FEDGE_OK;
}

static int cpu_grad_comm_wait(fedge_backend *be)
{
    cpu_impl *c = IMPL(be);
    int rc = MPI_SUCCESS;
    if (c->n_reqs > 0)
        rc = MPI_Waitall((int)c->n_reqs, c->reqs, MPI_STATUSES_IGNORE);
    if (rc == MPI_SUCCESS && be->cfg.zero)
        for (size_t i = 0; i < c->n_reqs; i++)
            memmove(c->grads + c->pend_dst[i], c->grads + c->pend_off[i],
                    c->pend_cnt[i] * sizeof(float));
    c->n_reqs = 0;
    return mpi_ok(rc);
}

static int cpu_grad_nonfinite(fedge_backend *be, int *flag)
{
    cpu_impl *c = IMPL(be);
    const float *g = c->grads + be->opt_off;
    int bad = 0;
    for (size_t i = 0; i < be->opt_len; i++)
        bad |= !isfinite(g[i]);
    *flag = bad;
    return FEDGE_OK;
}

static int cpu_update(fedge_backend *be, const fedge_sgd_config *sgd, float grad_scale)
{
    cpu_impl *c = IMPL(be);
    float *g = c->grads + be->opt_off;
    if (grad_scale != 1.0f)
        for (size_t i = 0; i < be->opt_len; i++)
            g[i] *= grad_scale;
    fedge_sgd_update(sgd, c->params + be->opt_off, c->velocity, g, be->opt_len);
    return FEDGE_OK;
}

static int cpu_gather_params(fedge_backend *be)
{
    if (!be->cfg.zero)
        return FEDGE_OK;
    return cpu_all_gather(be, IMPL(be)->params, be->cfg.layout.shard);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cpu_gemm_tflops(fedge_backend *be, int m, int n, int k, int iters, double *tflops)
{
    (void)be;
    int ret = FEDGE_OK;
    if (m < 1 || n < 1 || k < 1 || iters < 1)
        return FEDGE_ERR_INVALID_ARG;
    float *a = malloc((size_t)m * (size_t)k * sizeof(float));
    float *b = malloc((size_t)k * (size_t)n * sizeof(float));
    float *cc = calloc((size_t)m * (size_t)n, sizeof(float));
    if (a == NULL || b == NULL || cc == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < (size_t)m * (size_t)k; i++)
        a[i] = (float)(i % 17) * 0.01f;
    for (size_t i = 0; i < (size_t)k * (size_t)n; i++)
        b[i] = (float)(i % 13) * 0.01f;
    fedge_sgemm(0, 1, m, n, k, 1.0f, a, k, b, k, 0.0f, cc, n); /* warm-up */
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
        fedge_sgemm(0, 1, m, n, k, 1.0f, a, k, b, k, 0.0f, cc, n);
    double dt = now_s() - t0;
    *tflops = 2.0 * m * (double)n * k * iters / (dt > 0 ? dt : 1e-9) / 1e12;
cleanup:
    free(a);
    free(b);
    free(cc);
    return ret;
}

static void cpu_destroy(fedge_backend *be)
{
    if (be == NULL)
        return;
    cpu_impl *c = IMPL(be);
    if (c != NULL) {
        if (c->n_reqs > 0)
            MPI_Waitall((int)c->n_reqs, c->reqs, MPI_STATUSES_IGNORE);
        if (c->comm != MPI_COMM_NULL)
            MPI_Comm_free(&c->comm);
        free(c->params);
        free(c->grads);
        free(c->pend_off);
        free(c->pend_dst);
        free(c->pend_cnt);
        free(c->velocity);
        free(c->act_block);
        free(c->dz);
        free(c->da);
        free(c->x);
        free(c->scratch);
        free(c->y);
        free(c->reqs);
        free(c->counts);
        free(c);
    }
    free(be);
}

static const fedge_backend_ops cpu_ops = {
    .name = "cpu",
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .buf_upload = cpu_buf_upload,
    .buf_download = cpu_buf_download,
    .allreduce = cpu_allreduce,
    .reduce_scatter = cpu_reduce_scatter,
    .all_gather = cpu_all_gather,
    .barrier = cpu_barrier,
    .set_params = cpu_set_params,
    .get_params = cpu_get_params,
    .set_optim = cpu_set_optim,
    .get_optim = cpu_get_optim,
    .load_batch = cpu_load_batch,
    .forward = cpu_forward,
    .backward_layer = cpu_backward_layer,
    .grad_comm_start = cpu_grad_comm_start,
    .grad_comm_wait = cpu_grad_comm_wait,
    .grad_nonfinite = cpu_grad_nonfinite,
    .update = cpu_update,
    .gather_params = cpu_gather_params,
    .gemm_tflops = cpu_gemm_tflops,
    .destroy = cpu_destroy,
};

int fedge_backend_cpu_create(const fedge_backend_config *cfg, fedge_backend **out)
{
    int ret = FEDGE_OK;
    fedge_backend *be = NULL;
    cpu_impl *c = NULL;
    if (cfg == NULL || out == NULL || cfg->local_batch_max < 1)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    if (cfg->precision != FEDGE_PREC_FP32)
        return FEDGE_ERR_UNSUPPORTED;
    const fedge_layout *lo = &cfg->layout;
    if (lo->n_pad > INT_MAX)
        return FEDGE_ERR_UNSUPPORTED;
    fedge_dense_shape shape;
    int shared_core = 0;
    ret = fedge_dense_shape_of(&cfg->spec, &shape);
    if (ret == FEDGE_ERR_UNSUPPORTED) { /* a cnn: the shared core trains it */
        shared_core = 1;
        memset(&shape, 0, sizeof shape);
        ret = FEDGE_OK;
    }
    if (ret != FEDGE_OK)
        return ret;
    be = calloc(1, sizeof(*be));
    c = calloc(1, sizeof(*c));
    if (be == NULL || c == NULL) {
        free(be);
        free(c);
        return FEDGE_ERR_NOMEM;
    }
    be->ops = &cpu_ops;
    be->cfg = *cfg;
    be->impl = c;
    c->comm = MPI_COMM_NULL;
    c->shape = shape;
    c->shared_core = shared_core;
    be->opt_off = cfg->zero ? lo->own_off : 0;
    be->opt_len = cfg->zero ? lo->shard : lo->n_pad;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &c->comm) != MPI_SUCCESS)
        FAIL(FEDGE_ERR_CLUSTER_COMM);

    const fedge_dense_shape *sp = &c->shape;
    const size_t rows = (size_t)cfg->local_batch_max;
    const size_t maxd = (size_t)fedge_layout_max_dim(&cfg->spec);
    fedge_memory_plan plan;
    fedge_memory_plan_make(&cfg->spec, lo, cfg->local_batch_max, cfg->precision, cfg->zero, 0, &plan);
    c->params = calloc(lo->n_pad, sizeof(float));
    c->grads = calloc(lo->n_pad, sizeof(float));
    c->velocity = calloc(be->opt_len, sizeof(float));
    if (shared_core) {
        size_t sf = fedge_model_scratch_floats(&cfg->spec, cfg->local_batch_max);
        c->x = calloc(rows * (size_t)cfg->spec.input_dim, sizeof(float));
        c->scratch = sf > 0 ? calloc(sf, sizeof(float)) : NULL;
        /* unused in this mode; allocated so the checks below stay one list */
        c->act_block = calloc(1, sizeof(float));
        c->dz = calloc(1, sizeof(float));
        c->da = calloc(1, sizeof(float));
        if (c->x == NULL || c->scratch == NULL)
            FAIL(FEDGE_ERR_NOMEM);
    } else {
        c->act_block = calloc(rows * fedge_layout_act_floats_per_row(&cfg->spec), sizeof(float));
        c->dz = calloc(rows * maxd, sizeof(float));
        c->da = calloc(rows * maxd, sizeof(float));
    }
    c->y = calloc(rows, 1);
    c->counts = calloc((size_t)lo->world, sizeof(int));
    c->cap_reqs = fedge_layout_bucket_count(lo, FEDGE_LAYOUT_ALIGN);
    c->reqs = calloc(c->cap_reqs, sizeof(MPI_Request));
    c->pend_off = calloc(c->cap_reqs, sizeof(size_t));
    c->pend_dst = calloc(c->cap_reqs, sizeof(size_t));
    c->pend_cnt = calloc(c->cap_reqs, sizeof(size_t));
    if (!c->params || !c->grads || !c->velocity || !c->act_block || !c->dz || !c->da || !c->y
        || !c->counts || !c->reqs || !c->pend_off || !c->pend_dst || !c->pend_cnt)
        FAIL(FEDGE_ERR_NOMEM);
    c->view.spec = cfg->spec;
    c->view.n_params = lo->n;
    c->view.params = c->params;
    float *p = c->act_block;
    for (int l = 0; l <= sp->n_layers; l++) {
        c->act[l] = p;
        p += rows * (size_t)sp->dims[l];
    }
    be->mem_bytes = plan.total;
    *out = be;
    return FEDGE_OK;
cleanup:
    cpu_destroy(be);
    return ret;
}
