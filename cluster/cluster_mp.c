#include "cluster_mp.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"

/* Return the status of a call that failed; no cleanup needed in these functions. */
#define CHK_RET(expr)                \
    do {                             \
        int st_ = (expr);            \
        if (st_ != FEDGE_OK)         \
            return st_;              \
    } while (0)

#define MP_MAX_MICRO 4096 /* tags 2m, 2m+1 stay far below MPI_TAG_UB (>= 32767) */

static int mpi_ok(int rc) { return rc == MPI_SUCCESS ? FEDGE_OK : FEDGE_ERR_CLUSTER_COMM; }

void fedge_mp_destroy(fedge_mp *mp)
{
    if (mp == NULL)
        return;
    if (mp->fsend != NULL && mp->bsend != NULL) {
        MPI_Waitall(mp->slots, mp->fsend, MPI_STATUSES_IGNORE);
        MPI_Waitall(mp->slots, mp->bsend, MPI_STATUSES_IGNORE);
    }
    if (mp->tp_comm != MPI_COMM_NULL)
        MPI_Comm_free(&mp->tp_comm);
    if (mp->pp_comm != MPI_COMM_NULL)
        MPI_Comm_free(&mp->pp_comm);
    if (mp->dp_comm != MPI_COMM_NULL)
        MPI_Comm_free(&mp->dp_comm);
    free(mp->params);
    free(mp->grads);
    free(mp->velocity);
    free(mp->act_block);
    free(mp->dz);
    free(mp->da);
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
    CHK(fedge_shard_plan_make(&cfg->shape, g->tp, c->tp_i, g->pp, c->pp_i, &mp->plan));
    mp->slots = fedge_pp_slots(cfg->schedule, cfg->micro, g->pp);
    mp->rows_mb_max = (cfg->local_batch_max + cfg->micro - 1) / cfg->micro;

    const fedge_shard_plan *p = &mp->plan;
    const size_t rows = (size_t)mp->rows_mb_max, nl = p->n_local;
    const int L = cfg->shape.n_layers;
    fedge_memory_plan mplan;
    fedge_mp_memory_plan(p, mp->rows_mb_max, mp->slots, &mplan);
    size_t per_slot = (size_t)p->in_n[p->l0];
    for (int l = p->l0; l < p->l1; l++)
        per_slot += (size_t)p->out_n[l];
    if (c->pp_i > 0)
        per_slot += (size_t)p->in_n[p->l0];
    mp->params = calloc(nl, sizeof(float));
    mp->grads = calloc(nl, sizeof(float));
    mp->velocity = calloc(nl, sizeof(float));
    mp->act_block = calloc((size_t)mp->slots * per_slot * rows, sizeof(float));
    mp->dz = calloc(rows * (size_t)p->max_local_dim, sizeof(float));
    mp->da = calloc(rows * (size_t)p->max_local_dim, sizeof(float));
    mp->act = calloc((size_t)mp->slots * (size_t)(L + 1), sizeof(float *));
    mp->send_grad = calloc((size_t)mp->slots, sizeof(float *));
    mp->fsend = malloc((size_t)mp->slots * sizeof(MPI_Request));
    mp->bsend = malloc((size_t)mp->slots * sizeof(MPI_Request));
    if (!mp->params || !mp->grads || !mp->velocity || !mp->act_block || !mp->dz || !mp->da
        || !mp->act || !mp->send_grad || !mp->fsend || !mp->bsend)
        FAIL(FEDGE_ERR_NOMEM);
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
        mp->fsend[s] = MPI_REQUEST_NULL;
        mp->bsend[s] = MPI_REQUEST_NULL;
    }
    mp->mem_bytes = mplan.total;
    *out = mp;
    return FEDGE_OK;
cleanup:
    fedge_mp_destroy(mp);
    return ret;
}

void fedge_mp_set_params(fedge_mp *mp, const float *full)
{
    fedge_shard_get(&mp->plan, full, mp->params);
}

void fedge_mp_set_optim(fedge_mp *mp, const float *full)
{
    fedge_shard_get(&mp->plan, full, mp->velocity);
}

int fedge_mp_gather(fedge_mp *mp, int what, float *full, size_t n)
{
    if (n > INT_MAX)
        return FEDGE_ERR_RANGE;
    memset(full, 0, n * sizeof(float));
    if (mp->at.dp_i == 0)
        fedge_shard_put(&mp->plan, what == 0 ? mp->params : mp->velocity, full);
    return mpi_ok(MPI_Allreduce(MPI_IN_PLACE, full, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
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

static int timed_wait(MPI_Request *req, double *acc)
{
    double t0 = MPI_Wtime();
    int rc = MPI_Wait(req, MPI_STATUS_IGNORE);
    *acc += MPI_Wtime() - t0;
    return mpi_ok(rc);
}

static int tp_allreduce(fedge_mp *mp, float *buf, size_t n, step_ctx *sc)
{
    if (mp->cfg.grid.tp == 1)
        return FEDGE_OK;
    if (n > INT_MAX)
        return FEDGE_ERR_RANGE;
    double t0 = MPI_Wtime();
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, mp->tp_comm);
    sc->st->tp_s += MPI_Wtime() - t0;
    sc->st->tp_payload += (double)n * sizeof(float);
    return mpi_ok(rc);
}

/* Softmax cross-entropy over logits split by columns across the TP group:
 * z holds this rank's out_n of them per row; it is replaced by the same
 * columns of the probabilities. Row maxima (MAX) and then the sums of exp with
 * the label's logit (SUM) are allreduced; the logits are never gathered. */
static int split_softmax(fedge_mp *mp, step_ctx *sc, float *z, int lo, int nr)
{
    const fedge_shard_plan *p = &mp->plan;
    const int L = p->sh.n_layers, out = p->out_n[L - 1], c0 = p->out_lo[L - 1];
    float *mx = mp->da;                      /* nr floats of scratch */
    double *se = (double *)(void *)mp->dz;   /* 2 nr doubles: sum exp, label logit - max */
    if (nr > INT_MAX / 2)
        return FEDGE_ERR_RANGE;
    for (int r = 0; r < nr; r++) {
        const float *zr = z + (size_t)r * (size_t)out;
        float m = zr[0];
        for (int j = 1; j < out; j++)
            m = zr[j] > m ? zr[j] : m;
        mx[r] = m;
    }
    double t0 = MPI_Wtime();
    int rc = MPI_Allreduce(MPI_IN_PLACE, mx, nr, MPI_FLOAT, MPI_MAX, mp->tp_comm);
    for (int r = 0; r < nr && rc == MPI_SUCCESS; r++) {
        const float *zr = z + (size_t)r * (size_t)out;
        const int label = sc->y[lo + r] - c0;
        double sum = 0.0;
        for (int j = 0; j < out; j++)
            sum += exp((double)(zr[j] - mx[r]));
        se[2 * r] = sum;
        se[2 * r + 1] = label >= 0 && label < out ? (double)(zr[label] - mx[r]) : 0.0;
    }
    if (rc == MPI_SUCCESS)
        rc = MPI_Allreduce(MPI_IN_PLACE, se, 2 * nr, MPI_DOUBLE, MPI_SUM, mp->tp_comm);
    sc->st->tp_s += MPI_Wtime() - t0;
    sc->st->tp_payload += (double)nr * (sizeof(float) + 2 * sizeof(double));
    if (rc != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    double total = 0.0;
    for (int r = 0; r < nr; r++) {
        float *zr = z + (size_t)r * (size_t)out;
        total += log(se[2 * r]) - se[2 * r + 1];
        for (int j = 0; j < out; j++)
            zr[j] = (float)(exp((double)(zr[j] - mx[r])) / se[2 * r]);
    }
    if (p->tp_i == 0)
        sc->loss += total;
    return FEDGE_OK;
}

static int forward_mb(fedge_mp *mp, step_ctx *sc, int m)
{
    const fedge_shard_plan *p = &mp->plan;
    const int L = p->sh.n_layers, slot = m % mp->slots;
    float **a = mp->act + (size_t)slot * (size_t)(L + 1);
    int lo, nr;
    mb_range(mp, sc, m, &lo, &nr);
    CHK_RET(mpi_ok(MPI_Wait(&mp->fsend[slot], MPI_STATUS_IGNORE)));
    const size_t in_cnt = (size_t)nr * (size_t)p->in_n[p->l0];
    if (p->pp_i == 0) {
        memcpy(a[p->l0], sc->x + (size_t)lo * (size_t)p->sh.dims[0], in_cnt * sizeof(float));
    } else {
        MPI_Request rq;
        CHK_RET(mpi_ok(MPI_Irecv(a[p->l0], (int)in_cnt, MPI_FLOAT, p->pp_i - 1, 2 * m,
                                 mp->pp_comm, &rq)));
        CHK_RET(timed_wait(&rq, &sc->st->idle_s));
    }
    for (int l = p->l0; l < p->l1; l++) {
        const int in = p->in_n[l], out = p->out_n[l];
        const float *W = mp->params + p->w_off[l], *b = mp->params + p->b_off[l];
        float *z = a[l + 1];
        fedge_sgemm(0, 1, nr, out, in, 1.0f, a[l], in, W, in, 0.0f, z, out);
        if (p->mode[l] == FEDGE_TP_ROW)
            CHK_RET(tp_allreduce(mp, z, (size_t)nr * (size_t)out, sc));
        for (int r = 0; r < nr; r++) {
            float *zr = z + (size_t)r * (size_t)out;
            for (int j = 0; j < out; j++) {
                float v = zr[j] + b[j];
                zr[j] = (l < L - 1 && v < 0.0f) ? 0.0f : v;
            }
        }
    }
    if (p->l1 == L && p->mode[L - 1] == FEDGE_TP_COL) {
        CHK_RET(split_softmax(mp, sc, a[L], lo, nr));
    } else if (p->l1 == L) { /* softmax cross-entropy on the complete logits */
        const int classes = p->sh.dims[L];
        double total = 0.0;
        for (int r = 0; r < nr; r++) {
            float *zr = a[L] + (size_t)r * (size_t)classes;
            const int label = sc->y[lo + r];
            float mx = zr[0];
            for (int j = 1; j < classes; j++)
                mx = zr[j] > mx ? zr[j] : mx;
            double sum = 0.0;
            for (int j = 0; j < classes; j++)
                sum += exp((double)(zr[j] - mx));
            total += log(sum) - (double)(zr[label] - mx);
            for (int j = 0; j < classes; j++)
                zr[j] = (float)(exp((double)(zr[j] - mx)) / sum);
        }
        if (p->tp_i == 0)
            sc->loss += total;
    } else {
        const size_t cnt = (size_t)nr * (size_t)p->out_n[p->l1 - 1];
        CHK_RET(mpi_ok(MPI_Isend(a[p->l1], (int)cnt, MPI_FLOAT, p->pp_i + 1, 2 * m, mp->pp_comm,
                                 &mp->fsend[slot])));
        sc->st->pp_payload += (double)cnt * sizeof(float);
    }
    return FEDGE_OK;
}

static int backward_mb(fedge_mp *mp, step_ctx *sc, int m)
{
    const fedge_shard_plan *p = &mp->plan;
    const int L = p->sh.n_layers, slot = m % mp->slots;
    float **a = mp->act + (size_t)slot * (size_t)(L + 1);
    float *dz = mp->dz, *da = mp->da;
    int lo, nr;
    mb_range(mp, sc, m, &lo, &nr);
    if (p->l1 == L) { /* this rank's columns of the probabilities (all at tp 1) */
        const int classes = p->out_n[L - 1], c0 = p->out_lo[L - 1];
        for (int r = 0; r < nr; r++) {
            const float *pr = a[L] + (size_t)r * (size_t)classes;
            float *dr = dz + (size_t)r * (size_t)classes;
            for (int j = 0; j < classes; j++)
                dr[j] = (pr[j] - (j + c0 == sc->y[lo + r] ? 1.0f : 0.0f)) * sc->grad_weight;
        }
    } else {
        const int out = p->out_n[p->l1 - 1];
        const size_t cnt = (size_t)nr * (size_t)out;
        MPI_Request rq;
        CHK_RET(mpi_ok(MPI_Irecv(dz, (int)cnt, MPI_FLOAT, p->pp_i + 1, 2 * m + 1, mp->pp_comm,
                                 &rq)));
        CHK_RET(timed_wait(&rq, &sc->st->idle_s));
        const float *act = a[p->l1];
        for (size_t i = 0; i < cnt; i++)
            dz[i] = act[i] > 0.0f ? dz[i] : 0.0f;
    }
    for (int l = p->l1 - 1; l >= p->l0; l--) {
        const int in = p->in_n[l], out = p->out_n[l];
        float *gW = mp->grads + p->w_off[l], *gb = mp->grads + p->b_off[l];
        const float *W = mp->params + p->w_off[l];
        fedge_sgemm(1, 0, out, in, nr, 1.0f, dz, out, a[l], in, 1.0f, gW, in);
        for (int r = 0; r < nr; r++) {
            const float *dr = dz + (size_t)r * (size_t)out;
            for (int j = 0; j < out; j++)
                gb[j] += dr[j];
        }
        if (l == 0)
            break;
        fedge_sgemm(0, 0, nr, in, out, 1.0f, dz, out, W, in, 0.0f, da, in);
        const size_t cnt = (size_t)nr * (size_t)in;
        if (p->mode[l] == FEDGE_TP_COL)
            CHK_RET(tp_allreduce(mp, da, cnt, sc));
        if (l > p->l0) {
            for (size_t i = 0; i < cnt; i++)
                dz[i] = a[l][i] > 0.0f ? da[i] : 0.0f;
        } else {
            CHK_RET(mpi_ok(MPI_Wait(&mp->bsend[slot], MPI_STATUS_IGNORE)));
            memcpy(mp->send_grad[slot], da, cnt * sizeof(float));
            CHK_RET(mpi_ok(MPI_Isend(mp->send_grad[slot], (int)cnt, MPI_FLOAT, p->pp_i - 1,
                                     2 * m + 1, mp->pp_comm, &mp->bsend[slot])));
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
    memset(mp->grads, 0, mp->plan.n_local * sizeof(float));
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
    CHK_RET(mpi_ok(MPI_Waitall(mp->slots, mp->fsend, MPI_STATUSES_IGNORE)));
    CHK_RET(mpi_ok(MPI_Waitall(mp->slots, mp->bsend, MPI_STATUSES_IGNORE)));
    if (mp->cfg.grid.dp > 1) {
        if (mp->plan.n_local > INT_MAX)
            return FEDGE_ERR_RANGE;
        CHK_RET(mpi_ok(MPI_Allreduce(MPI_IN_PLACE, mp->grads, (int)mp->plan.n_local, MPI_FLOAT,
                                     MPI_SUM, mp->dp_comm)));
        st->dp_payload = (double)mp->plan.n_local * sizeof(float);
    }
    *loss_sum = sc.loss;
    return FEDGE_OK;
}

int fedge_mp_grad_nonfinite(const fedge_mp *mp)
{
    int bad = 0;
    for (size_t i = 0; i < mp->plan.n_local; i++)
        bad |= !isfinite(mp->grads[i]);
    return bad;
}

void fedge_mp_update(fedge_mp *mp, const fedge_sgd_config *sgd)
{
    fedge_sgd_update(sgd, mp->params, mp->velocity, mp->grads, mp->plan.n_local);
}
