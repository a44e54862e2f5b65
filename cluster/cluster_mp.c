#include "cluster_mp.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"

#ifdef FEDGE_HAVE_CUDA
#include "gpu/gpu.h"
#include "gpu/mp_gpu.h"
#endif

/* Return the status of a call that failed; no cleanup needed in these functions. */
#define CHK_RET(expr)                \
    do {                             \
        int st_ = (expr);            \
        if (st_ != FEDGE_OK)         \
            return st_;              \
    } while (0)

#define MP_MAX_MICRO 4096 /* tags 2m, 2m+1 stay far below MPI_TAG_UB (>= 32767) */

static int mpi_ok(int rc) { return rc == MPI_SUCCESS ? FEDGE_OK : FEDGE_ERR_CLUSTER_COMM; }

/* ---- the cpu table: host memory, the shared core's math, MPI --------------- */

static int cpu_alloc(void *ctx, size_t n, float **out)
{
    (void)ctx;
    *out = calloc(n ? n : 1, sizeof(float));
    return *out != NULL ? FEDGE_OK : FEDGE_ERR_NOMEM;
}

static void cpu_free(void *ctx, float *p)
{
    (void)ctx;
    free(p);
}

static int cpu_copy(void *ctx, float *dst, const float *src, size_t n)
{
    (void)ctx;
    if (n > 0)
        memcpy(dst, src, n * sizeof(float));
    return FEDGE_OK;
}

static int cpu_zero(void *ctx, float *p, size_t n)
{
    (void)ctx;
    memset(p, 0, n * sizeof(float));
    return FEDGE_OK;
}

static int cpu_labels(void *ctx, const uint8_t *host, int rows, const uint8_t **out)
{
    (void)ctx;
    (void)rows;
    *out = host;
    return FEDGE_OK;
}

static int cpu_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                    int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    (void)ctx;
    fedge_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return FEDGE_OK;
}

static int cpu_bias_act(void *ctx, float *z, const float *b, int rows, int cols, int relu)
{
    (void)ctx;
    for (int r = 0; r < rows; r++) {
        float *zr = z + (size_t)r * (size_t)cols;
        for (int j = 0; j < cols; j++) {
            float v = zr[j] + b[j];
            zr[j] = (relu && v < 0.0f) ? 0.0f : v;
        }
    }
    return FEDGE_OK;
}

static int cpu_bias_grad(void *ctx, const float *dz, int rows, int cols, float *gb)
{
    (void)ctx;
    for (int r = 0; r < rows; r++) {
        const float *dr = dz + (size_t)r * (size_t)cols;
        for (int j = 0; j < cols; j++)
            gb[j] += dr[j];
    }
    return FEDGE_OK;
}

static int cpu_relu_back(void *ctx, float *dst, const float *src, const float *act, size_t n)
{
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        dst[i] = act[i] > 0.0f ? src[i] : 0.0f;
    return FEDGE_OK;
}

static int cpu_row_max(void *ctx, const float *z, int rows, int cols, float *mx)
{
    (void)ctx;
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * (size_t)cols;
        float m = zr[0];
        for (int j = 1; j < cols; j++)
            m = zr[j] > m ? zr[j] : m;
        mx[r] = m;
    }
    return FEDGE_OK;
}

static int cpu_softmax_sums(void *ctx, const float *z, const float *mx, const uint8_t *y, int c0,
                            int rows, int cols, double *se)
{
    (void)ctx;
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * (size_t)cols;
        const int label = y[r] - c0;
        double sum = 0.0;
        for (int j = 0; j < cols; j++)
            sum += exp((double)(zr[j] - mx[r]));
        se[2 * r] = sum;
        se[2 * r + 1] = label >= 0 && label < cols ? (double)(zr[label] - mx[r]) : 0.0;
    }
    return FEDGE_OK;
}

static int cpu_softmax_finish(void *ctx, float *z, const float *mx, const double *se, int rows,
                              int cols, double *loss)
{
    (void)ctx;
    double total = 0.0;
    for (int r = 0; r < rows; r++) {
        float *zr = z + (size_t)r * (size_t)cols;
        total += log(se[2 * r]) - se[2 * r + 1];
        for (int j = 0; j < cols; j++)
            zr[j] = (float)(exp((double)(zr[j] - mx[r])) / se[2 * r]);
    }
    *loss = total;
    return FEDGE_OK;
}

static int cpu_xent_grad(void *ctx, float *dz, const float *p, const uint8_t *y, int c0, int rows,
                         int cols, float w)
{
    (void)ctx;
    for (int r = 0; r < rows; r++) {
        const float *pr = p + (size_t)r * (size_t)cols;
        float *dr = dz + (size_t)r * (size_t)cols;
        for (int j = 0; j < cols; j++)
            dr[j] = (pr[j] - (j + c0 == y[r] ? 1.0f : 0.0f)) * w;
    }
    return FEDGE_OK;
}

static int cpu_sgd(void *ctx, const fedge_sgd_config *cfg, float *w, float *v, const float *g,
                   size_t n)
{
    (void)ctx;
    fedge_sgd_update(cfg, w, v, g, n);
    return FEDGE_OK;
}

static int cpu_nonfinite(void *ctx, const float *g, size_t n, int *bad)
{
    (void)ctx;
    int b = 0;
    for (size_t i = 0; i < n; i++)
        b |= !isfinite(g[i]);
    *bad = b;
    return FEDGE_OK;
}

static MPI_Comm axis_comm(const fedge_mp *mp, int axis)
{
    return axis == FEDGE_MP_AXIS_TP ? mp->tp_comm
                                    : axis == FEDGE_MP_AXIS_PP ? mp->pp_comm : mp->dp_comm;
}

static int cpu_allreduce(void *ctx, int axis, void *buf, size_t n, int dtype, int op)
{
    const fedge_mp *mp = ctx;
    if (n > INT_MAX)
        return FEDGE_ERR_RANGE;
    return mpi_ok(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n,
                                dtype == FEDGE_MP_DOUBLE ? MPI_DOUBLE : MPI_FLOAT,
                                op == FEDGE_MP_MAX ? MPI_MAX : MPI_SUM, axis_comm(mp, axis)));
}

static int cpu_send(void *ctx, const float *buf, size_t n, int peer, int tag, int dir, int slot)
{
    fedge_mp *mp = ctx;
    if (n > INT_MAX)
        return FEDGE_ERR_RANGE;
    MPI_Request *rq = dir == FEDGE_MP_FWD ? &mp->fsend[slot] : &mp->bsend[slot];
    return mpi_ok(MPI_Isend(buf, (int)n, MPI_FLOAT, peer, tag, mp->pp_comm, rq));
}

static int cpu_send_wait(void *ctx, int dir, int slot)
{
    fedge_mp *mp = ctx;
    MPI_Request *rq = dir == FEDGE_MP_FWD ? &mp->fsend[slot] : &mp->bsend[slot];
    return mpi_ok(MPI_Wait(rq, MPI_STATUS_IGNORE));
}

static int cpu_send_wait_all(void *ctx)
{
    fedge_mp *mp = ctx;
    int rc = MPI_Waitall(mp->slots, mp->fsend, MPI_STATUSES_IGNORE);
    if (rc == MPI_SUCCESS)
        rc = MPI_Waitall(mp->slots, mp->bsend, MPI_STATUSES_IGNORE);
    return mpi_ok(rc);
}

static int cpu_recv(void *ctx, float *buf, size_t n, int peer, int tag, double *idle_s)
{
    fedge_mp *mp = ctx;
    MPI_Request rq;
    if (n > INT_MAX)
        return FEDGE_ERR_RANGE;
    CHK_RET(mpi_ok(MPI_Irecv(buf, (int)n, MPI_FLOAT, peer, tag, mp->pp_comm, &rq)));
    double t0 = MPI_Wtime();
    int rc = MPI_Wait(&rq, MPI_STATUS_IGNORE);
    *idle_s += MPI_Wtime() - t0;
    return mpi_ok(rc);
}

static const fedge_mp_ops cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .labels = cpu_labels,
    .gemm = cpu_gemm,
    .bias_act = cpu_bias_act,
    .bias_grad = cpu_bias_grad,
    .relu_back = cpu_relu_back,
    .row_max = cpu_row_max,
    .softmax_sums = cpu_softmax_sums,
    .softmax_finish = cpu_softmax_finish,
    .xent_grad = cpu_xent_grad,
    .sgd = cpu_sgd,
    .nonfinite = cpu_nonfinite,
    .allreduce = cpu_allreduce,
    .send = cpu_send,
    .send_wait = cpu_send_wait,
    .send_wait_all = cpu_send_wait_all,
    .recv = cpu_recv,
};

/* ---- the gpu table's set-up: one NCCL communicator per grid axis ----------- */

#ifdef FEDGE_HAVE_CUDA
/* gpu_comm_mpi: the GPU table's compute with its messages staged through
 * host memory and the cpu table's MPI calls (no NCCL, so that several ranks
 * may share one GPU: the layouts can be checked on a one-GPU machine). */
static int staged_allreduce(void *ctx, int axis, void *buf, size_t n, int dtype, int op)
{
    fedge_mp *mp = fedge_mp_gpu_owner(ctx);
    const fedge_mp_ops *g = fedge_mp_gpu_ops();
    const size_t nf = dtype == FEDGE_MP_DOUBLE ? 2 * n : n;
    if (nf > mp->stage_n)
        return FEDGE_ERR_RANGE;
    CHK_RET(g->download(ctx, mp->stage, buf, nf));
    CHK_RET(cpu_allreduce(mp, axis, mp->stage, n, dtype, op));
    return g->upload(ctx, buf, mp->stage, nf);
}

static int staged_send(void *ctx, const float *buf, size_t n, int peer, int tag, int dir, int slot)
{
    fedge_mp *mp = fedge_mp_gpu_owner(ctx);
    if (n > mp->msg_n || slot < 0 || slot >= mp->slots)
        return FEDGE_ERR_RANGE;
    float *h = mp->stage_send + ((size_t)slot * 2 + (size_t)dir) * mp->msg_n;
    CHK_RET(cpu_send_wait(mp, dir, slot));
    CHK_RET(fedge_mp_gpu_ops()->download(ctx, h, buf, n));
    return cpu_send(mp, h, n, peer, tag, dir, slot);
}

static int staged_send_wait(void *ctx, int dir, int slot)
{
    return cpu_send_wait(fedge_mp_gpu_owner(ctx), dir, slot);
}

static int staged_send_wait_all(void *ctx)
{
    return cpu_send_wait_all(fedge_mp_gpu_owner(ctx));
}

static int staged_recv(void *ctx, float *buf, size_t n, int peer, int tag, double *idle_s)
{
    fedge_mp *mp = fedge_mp_gpu_owner(ctx);
    if (n > mp->stage_n)
        return FEDGE_ERR_RANGE;
    CHK_RET(cpu_recv(mp, mp->stage, n, peer, tag, idle_s));
    return fedge_mp_gpu_ops()->upload(ctx, buf, mp->stage, n);
}

/* Device state first, agreed over the world (NCCL's init would wait forever
 * for a rank that failed), then a unique id from rank 0 of each axis'
 * communicator, broadcast over it, and the three communicators. */
static int gpu_open(fedge_mp *mp)
{
    MPI_Comm comms[FEDGE_MP_AXES] = {mp->tp_comm, mp->pp_comm, mp->dp_comm};
    unsigned char ids[FEDGE_MP_AXES][FEDGE_GPU_ID_BYTES];
    int size[FEDGE_MP_AXES], rank[FEDGE_MP_AXES];
    const int nccl = !mp->cfg.gpu_comm_mpi;
    int st = fedge_mp_gpu_create(mp->cfg.local_rank, (size_t)mp->cfg.local_batch_max,
                                 (size_t)mp->rows_mb_max, mp->cfg.schedule == FEDGE_PP_GPIPE,
                                 &mp->ctx);
    memset(ids, 0, sizeof(ids));
    for (int a = 0; a < FEDGE_MP_AXES; a++) {
        MPI_Comm_size(comms[a], &size[a]);
        MPI_Comm_rank(comms[a], &rank[a]);
        if (nccl && st == FEDGE_OK && rank[a] == 0)
            st = fedge_gpu_unique_id(mp->cfg.local_rank, ids[a]);
    }
    int all = FEDGE_OK;
    if (MPI_Allreduce(&st, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (all != FEDGE_OK)
        return st != FEDGE_OK ? st : all;
    mp->ops = fedge_mp_gpu_ops();
    if (!nccl) {
        fedge_mp_gpu_set_owner(mp->ctx, mp);
        mp->staged_ops = *fedge_mp_gpu_ops();
        mp->staged_ops.allreduce = staged_allreduce;
        mp->staged_ops.send = staged_send;
        mp->staged_ops.send_wait = staged_send_wait;
        mp->staged_ops.send_wait_all = staged_send_wait_all;
        mp->staged_ops.recv = staged_recv;
        mp->ops = &mp->staged_ops;
        return FEDGE_OK;
    }
    for (int a = 0; a < FEDGE_MP_AXES; a++)
        if (MPI_Bcast(ids[a], FEDGE_GPU_ID_BYTES, MPI_BYTE, 0, comms[a]) != MPI_SUCCESS)
            return FEDGE_ERR_CLUSTER_COMM;
    return fedge_mp_gpu_connect(mp->ctx, size, rank, (const unsigned char(*)[FEDGE_GPU_ID_BYTES])ids);
}
#endif

/* ---- grid state ------------------------------------------------------------ */

void fedge_mp_destroy(fedge_mp *mp)
{
    if (mp == NULL)
        return;
    if (mp->ops != NULL && mp->ctx != NULL) {
        if (mp->fsend != NULL && mp->bsend != NULL)
            (void)mp->ops->send_wait_all(mp->ctx);
        float *bufs[] = {mp->params, mp->grads, mp->velocity, mp->act_block,
                         mp->dz,     mp->da,    mp->sm_mx,    mp->sm_se};
        for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
            if (bufs[i] != NULL)
                mp->ops->free(mp->ctx, bufs[i]);
    }
#ifdef FEDGE_HAVE_CUDA
    if (mp->cfg.gpu && mp->ctx != NULL)
        fedge_mp_gpu_destroy(mp->ctx);
#endif
    if (mp->tp_comm != MPI_COMM_NULL)
        MPI_Comm_free(&mp->tp_comm);
    if (mp->pp_comm != MPI_COMM_NULL)
        MPI_Comm_free(&mp->pp_comm);
    if (mp->dp_comm != MPI_COMM_NULL)
        MPI_Comm_free(&mp->dp_comm);
    free(mp->host_local);
    free(mp->stage);
    free(mp->stage_send);
    free(mp->act);
    free(mp->send_grad);
    free(mp->fsend);
    free(mp->bsend);
    free(mp);
}

int fedge_mp_create(const fedge_mp_config *cfg, fedge_mp **out)
{
    int ret = FEDGE_OK, rank = 0, world = 1;
    fedge_mp *mp = NULL;
    if (cfg == NULL || out == NULL || cfg->micro < 1 || cfg->micro > MP_MAX_MICRO
        || cfg->local_batch_max < cfg->micro)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
#ifndef FEDGE_HAVE_CUDA
    if (cfg->gpu)
        return FEDGE_ERR_UNSUPPORTED;
#endif
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    const fedge_grid_dims *g = &cfg->grid;
    if (g->dp * g->tp * g->pp != world)
        return FEDGE_ERR_INVALID_ARG;
    mp = calloc(1, sizeof(*mp));
    if (mp == NULL)
        return FEDGE_ERR_NOMEM;
    mp->cfg = *cfg;
    mp->tp_comm = mp->pp_comm = mp->dp_comm = MPI_COMM_NULL;
    fedge_grid_coord_of(g, rank, &mp->at);
    const fedge_grid_coord *c = &mp->at;
    /* every rank splits, even if its plan fails below: the splits are collective */
    int rc = MPI_Comm_split(MPI_COMM_WORLD, c->dp_i * g->pp + c->pp_i, c->tp_i, &mp->tp_comm);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_split(MPI_COMM_WORLD, c->dp_i * g->tp + c->tp_i, c->pp_i, &mp->pp_comm);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_split(MPI_COMM_WORLD, c->pp_i * g->tp + c->tp_i, c->dp_i, &mp->dp_comm);
    CHK(mpi_ok(rc));
    /* a failed plan still goes through the GPU set-up below: it is collective */
    ret = fedge_shard_plan_make(&cfg->shape, g->tp, c->tp_i, g->pp, c->pp_i, &mp->plan);
    mp->slots = fedge_pp_slots(cfg->schedule, cfg->micro, g->pp);
    mp->rows_mb_max = (cfg->local_batch_max + cfg->micro - 1) / cfg->micro;
    const fedge_shard_plan *p = &mp->plan;
    const size_t rows = (size_t)mp->rows_mb_max, nl = p->n_local;
    const int L = cfg->shape.n_layers;
    size_t max_dim = 1;
    for (int l = 0; l <= L; l++)
        max_dim = (size_t)cfg->shape.dims[l] > max_dim ? (size_t)cfg->shape.dims[l] : max_dim;
    mp->msg_n = rows * max_dim;
    mp->stage_n = nl > mp->msg_n ? nl : mp->msg_n;
    mp->stage_n = 4 * rows > mp->stage_n ? 4 * rows : mp->stage_n;
    if (ret == FEDGE_OK && cfg->gpu && cfg->gpu_comm_mpi) {
        mp->stage = calloc(mp->stage_n, sizeof(float));
        mp->stage_send = calloc((size_t)mp->slots * 2 * mp->msg_n, sizeof(float));
        if (mp->stage == NULL || mp->stage_send == NULL)
            ret = FEDGE_ERR_NOMEM;
    }
    /* fsend/bsend before the tables: the staged table's sends use them */
    mp->fsend = malloc((size_t)mp->slots * sizeof(MPI_Request));
    mp->bsend = malloc((size_t)mp->slots * sizeof(MPI_Request));
    if (mp->fsend == NULL || mp->bsend == NULL)
        ret = FEDGE_ERR_NOMEM;
    for (int s = 0; mp->fsend != NULL && mp->bsend != NULL && s < mp->slots; s++) {
        mp->fsend[s] = MPI_REQUEST_NULL;
        mp->bsend[s] = MPI_REQUEST_NULL;
    }
#ifdef FEDGE_HAVE_CUDA
    if (cfg->gpu) {
        /* every rank goes in, even one whose plan or allocations failed */
        int gst = gpu_open(mp);
        ret = ret != FEDGE_OK ? ret : gst;
    }
#endif
    if (!cfg->gpu) {
        mp->ops = &cpu_ops;
        mp->ctx = mp;
    }
    if (ret != FEDGE_OK)
        goto cleanup;
    const fedge_mp_ops *ops = mp->ops;
    fedge_memory_plan mplan;
    fedge_mp_memory_plan(p, mp->rows_mb_max, mp->slots, &mplan);
    size_t per_slot = (size_t)p->in_n[p->l0];
    for (int l = p->l0; l < p->l1; l++)
        per_slot += (size_t)p->out_n[l];
    if (c->pp_i > 0)
        per_slot += (size_t)p->in_n[p->l0];
    mp->act = calloc((size_t)mp->slots * (size_t)(L + 1), sizeof(float *));
    mp->send_grad = calloc((size_t)mp->slots, sizeof(float *));
    mp->host_local = calloc(nl ? nl : 1, sizeof(float));
    if (!mp->act || !mp->send_grad || !mp->host_local)
        FAIL(FEDGE_ERR_NOMEM);
    CHK(ops->alloc(mp->ctx, nl, &mp->params));
    CHK(ops->alloc(mp->ctx, nl, &mp->grads));
    CHK(ops->alloc(mp->ctx, nl, &mp->velocity));
    CHK(ops->alloc(mp->ctx, (size_t)mp->slots * per_slot * rows, &mp->act_block));
    CHK(ops->alloc(mp->ctx, rows * (size_t)p->max_local_dim, &mp->dz));
    CHK(ops->alloc(mp->ctx, rows * (size_t)p->max_local_dim, &mp->da));
    CHK(ops->alloc(mp->ctx, rows, &mp->sm_mx));
    CHK(ops->alloc(mp->ctx, 2 * rows * (sizeof(double) / sizeof(float)), &mp->sm_se));
    float *q = mp->act_block;
    for (int s = 0; s < mp->slots; s++) {
        float **a = mp->act + (size_t)s * (size_t)(L + 1);
        a[p->l0] = q;
        q += rows * (size_t)p->in_n[p->l0];
        for (int l = p->l0; l < p->l1; l++) {
            a[l + 1] = q;
            q += rows * (size_t)p->out_n[l];
        }
        if (c->pp_i > 0) {
            mp->send_grad[s] = q;
            q += rows * (size_t)p->in_n[p->l0];
        }
    }
    mp->mem_bytes = mplan.total;
    *out = mp;
    return FEDGE_OK;
cleanup:
    fedge_mp_destroy(mp);
    return ret;
}

int fedge_mp_set_params(fedge_mp *mp, const float *full)
{
    fedge_shard_get(&mp->plan, full, mp->host_local);
    return mp->ops->upload(mp->ctx, mp->params, mp->host_local, mp->plan.n_local);
}

int fedge_mp_set_optim(fedge_mp *mp, const float *full)
{
    fedge_shard_get(&mp->plan, full, mp->host_local);
    return mp->ops->upload(mp->ctx, mp->velocity, mp->host_local, mp->plan.n_local);
}

int fedge_mp_gather(fedge_mp *mp, int what, float *full, size_t n)
{
    if (n > INT_MAX)
        return FEDGE_ERR_RANGE;
    memset(full, 0, n * sizeof(float));
    int st = mp->ops->download(mp->ctx, mp->host_local, what == 0 ? mp->params : mp->velocity,
                               mp->plan.n_local);
    if (st == FEDGE_OK && mp->at.dp_i == 0)
        fedge_shard_put(&mp->plan, mp->host_local, full);
    /* a rank whose download failed still joins the allreduce; its status wins */
    int rc = MPI_Allreduce(MPI_IN_PLACE, full, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    return st != FEDGE_OK ? st : mpi_ok(rc);
}

/* ---- one micro-batch ----------------------------------------------------- */

typedef struct {
    const float *x;
    const uint8_t *y;
    int rows;          /* replica rows this step */
    float grad_weight;
    double loss;
    fedge_mp_step_stats *st;
} step_ctx;

static void mb_range(const fedge_mp *mp, const step_ctx *sc, int m, int *lo, int *n)
{
    long a = (long)sc->rows * m / mp->cfg.micro, b = (long)sc->rows * (m + 1) / mp->cfg.micro;
    *lo = (int)a;
    *n = (int)(b - a);
}

static int tp_allreduce(fedge_mp *mp, float *buf, size_t n, step_ctx *sc)
{
    if (mp->cfg.grid.tp == 1)
        return FEDGE_OK;
    double t0 = MPI_Wtime();
    int st = mp->ops->allreduce(mp->ctx, FEDGE_MP_AXIS_TP, buf, n, FEDGE_MP_FLOAT, FEDGE_MP_SUM);
    sc->st->tp_s += MPI_Wtime() - t0;
    sc->st->tp_payload += (double)n * sizeof(float);
    return st;
}

/* Softmax cross-entropy on the last stage. Over logits split by columns
 * across the TP group, z holds this rank's out_n of them per row; the row
 * maxima (MAX) and then the sums of exp with the label's logit (SUM) are
 * allreduced; the logits are never gathered. z becomes the same columns of
 * the probabilities. */
static int softmax_xent(fedge_mp *mp, step_ctx *sc, float *z, int lo, int nr)
{
    const fedge_shard_plan *p = &mp->plan;
    const fedge_mp_ops *ops = mp->ops;
    const int L = p->sh.n_layers, out = p->out_n[L - 1], c0 = p->out_lo[L - 1];
    const int split = p->mode[L - 1] == FEDGE_TP_COL;
    float *mx = mp->sm_mx;
    double *se = (double *)(void *)mp->sm_se;
    double total = 0.0, t0 = MPI_Wtime();
    CHK_RET(ops->row_max(mp->ctx, z, nr, out, mx));
    if (split)
        CHK_RET(ops->allreduce(mp->ctx, FEDGE_MP_AXIS_TP, mx, (size_t)nr, FEDGE_MP_FLOAT,
                               FEDGE_MP_MAX));
    CHK_RET(ops->softmax_sums(mp->ctx, z, mx, sc->y + lo, c0, nr, out, se));
    if (split) {
        CHK_RET(ops->allreduce(mp->ctx, FEDGE_MP_AXIS_TP, se, 2 * (size_t)nr, FEDGE_MP_DOUBLE,
                               FEDGE_MP_SUM));
        sc->st->tp_s += MPI_Wtime() - t0;
        sc->st->tp_payload += (double)nr * (sizeof(float) + 2 * sizeof(double));
    }
    CHK_RET(ops->softmax_finish(mp->ctx, z, mx, se, nr, out, &total));
    if (p->tp_i == 0)
        sc->loss += total;
    return FEDGE_OK;
}

static int forward_mb(fedge_mp *mp, step_ctx *sc, int m)
{
    const fedge_shard_plan *p = &mp->plan;
    const fedge_mp_ops *ops = mp->ops;
    const int L = p->sh.n_layers, slot = m % mp->slots;
    float **a = mp->act + (size_t)slot * (size_t)(L + 1);
    int lo, nr;
    mb_range(mp, sc, m, &lo, &nr);
    CHK_RET(ops->send_wait(mp->ctx, FEDGE_MP_FWD, slot));
    const size_t in_cnt = (size_t)nr * (size_t)p->in_n[p->l0];
    if (p->pp_i == 0)
        CHK_RET(ops->upload(mp->ctx, a[p->l0], sc->x + (size_t)lo * (size_t)p->sh.dims[0],
                            in_cnt));
    else
        CHK_RET(ops->recv(mp->ctx, a[p->l0], in_cnt, p->pp_i - 1, 2 * m, &sc->st->idle_s));
    for (int l = p->l0; l < p->l1; l++) {
        const int in = p->in_n[l], out = p->out_n[l];
        const float *W = mp->params + p->w_off[l], *b = mp->params + p->b_off[l];
        float *z = a[l + 1];
        CHK_RET(ops->gemm(mp->ctx, 0, 1, nr, out, in, 1.0f, a[l], in, W, in, 0.0f, z, out));
        if (p->mode[l] == FEDGE_TP_ROW)
            CHK_RET(tp_allreduce(mp, z, (size_t)nr * (size_t)out, sc));
        CHK_RET(ops->bias_act(mp->ctx, z, b, nr, out, l < L - 1));
    }
    if (p->l1 == L)
        return softmax_xent(mp, sc, a[L], lo, nr);
    const size_t cnt = (size_t)nr * (size_t)p->out_n[p->l1 - 1];
    CHK_RET(ops->send(mp->ctx, a[p->l1], cnt, p->pp_i + 1, 2 * m, FEDGE_MP_FWD, slot));
    sc->st->pp_payload += (double)cnt * sizeof(float);
    return FEDGE_OK;
}

static int backward_mb(fedge_mp *mp, step_ctx *sc, int m)
{
    const fedge_shard_plan *p = &mp->plan;
    const fedge_mp_ops *ops = mp->ops;
    const int L = p->sh.n_layers, slot = m % mp->slots;
    float **a = mp->act + (size_t)slot * (size_t)(L + 1);
    float *dz = mp->dz, *da = mp->da;
    int lo, nr;
    mb_range(mp, sc, m, &lo, &nr);
    if (p->l1 == L) { /* this rank's columns of the probabilities (all at tp 1) */
        CHK_RET(ops->xent_grad(mp->ctx, dz, a[L], sc->y + lo, p->out_lo[L - 1], nr,
                               p->out_n[L - 1], sc->grad_weight));
    } else {
        const size_t cnt = (size_t)nr * (size_t)p->out_n[p->l1 - 1];
        CHK_RET(ops->recv(mp->ctx, dz, cnt, p->pp_i + 1, 2 * m + 1, &sc->st->idle_s));
        CHK_RET(ops->relu_back(mp->ctx, dz, dz, a[p->l1], cnt));
    }
    for (int l = p->l1 - 1; l >= p->l0; l--) {
        const int in = p->in_n[l], out = p->out_n[l];
        float *gW = mp->grads + p->w_off[l], *gb = mp->grads + p->b_off[l];
        const float *W = mp->params + p->w_off[l];
        CHK_RET(ops->gemm(mp->ctx, 1, 0, out, in, nr, 1.0f, dz, out, a[l], in, 1.0f, gW, in));
        CHK_RET(ops->bias_grad(mp->ctx, dz, nr, out, gb));
        if (l == 0)
            break;
        CHK_RET(ops->gemm(mp->ctx, 0, 0, nr, in, out, 1.0f, dz, out, W, in, 0.0f, da, in));
        const size_t cnt = (size_t)nr * (size_t)in;
        if (p->mode[l] == FEDGE_TP_COL)
            CHK_RET(tp_allreduce(mp, da, cnt, sc));
        if (l > p->l0) {
            CHK_RET(ops->relu_back(mp->ctx, dz, da, a[l], cnt));
        } else {
            CHK_RET(ops->send_wait(mp->ctx, FEDGE_MP_BWD, slot));
            CHK_RET(ops->copy(mp->ctx, mp->send_grad[slot], da, cnt));
            CHK_RET(ops->send(mp->ctx, mp->send_grad[slot], cnt, p->pp_i - 1, 2 * m + 1,
                              FEDGE_MP_BWD, slot));
            sc->st->pp_payload += (double)cnt * sizeof(float);
        }
    }
    return FEDGE_OK;
}

int fedge_mp_step(fedge_mp *mp, const float *x, const uint8_t *y, int rows, float grad_weight,
                  double *loss_sum, fedge_mp_step_stats *st)
{
    const int M = mp->cfg.micro, P = mp->cfg.grid.pp, s = mp->at.pp_i;
    if (rows < M || rows > mp->cfg.local_batch_max)
        return FEDGE_ERR_RANGE;
    memset(st, 0, sizeof(*st));
    step_ctx sc = {x, y, rows, grad_weight, 0.0, st};
    if (mp->plan.l1 == mp->plan.sh.n_layers)
        CHK_RET(mp->ops->labels(mp->ctx, y, rows, &sc.y));
    CHK_RET(mp->ops->zero(mp->ctx, mp->grads, mp->plan.n_local));
    double t0 = MPI_Wtime();
    if (mp->cfg.schedule == FEDGE_PP_GPIPE) {
        for (int m = 0; m < M; m++)
            CHK_RET(forward_mb(mp, &sc, m));
        for (int m = M - 1; m >= 0; m--)
            CHK_RET(backward_mb(mp, &sc, m));
    } else {
        int warm = P - s - 1 < M ? P - s - 1 : M;
        for (int m = 0; m < warm; m++)
            CHK_RET(forward_mb(mp, &sc, m));
        for (int m = warm; m < M; m++) {
            CHK_RET(forward_mb(mp, &sc, m));
            CHK_RET(backward_mb(mp, &sc, m - warm));
        }
        for (int m = M - warm; m < M; m++)
            CHK_RET(backward_mb(mp, &sc, m));
    }
    st->step_s = MPI_Wtime() - t0;
    CHK_RET(mp->ops->send_wait_all(mp->ctx));
    if (mp->cfg.grid.dp > 1) {
        CHK_RET(mp->ops->allreduce(mp->ctx, FEDGE_MP_AXIS_DP, mp->grads, mp->plan.n_local,
                                   FEDGE_MP_FLOAT, FEDGE_MP_SUM));
        st->dp_payload = (double)mp->plan.n_local * sizeof(float);
    }
    *loss_sum = sc.loss;
    return FEDGE_OK;
}

int fedge_mp_grad_nonfinite(fedge_mp *mp, int *bad)
{
    return mp->ops->nonfinite(mp->ctx, mp->grads, mp->plan.n_local, bad);
}

int fedge_mp_update(fedge_mp *mp, const fedge_sgd_config *sgd)
{
    return mp->ops->sgd(mp->ctx, sgd, mp->params, mp->velocity, mp->grads, mp->plan.n_local);
}
