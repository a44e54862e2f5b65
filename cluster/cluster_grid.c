#include "cluster_grid.h"

#include <stdint.h>
#include <string.h>

#include "common.h"

int fedge_grid_make(int world, int tp, int pp, fedge_grid_dims *out)
{
    if (out == NULL || world < 1 || tp < 1 || pp < 1 || world % (tp * pp) != 0)
        return FEDGE_ERR_INVALID_ARG;
    out->tp = tp;
    out->pp = pp;
    out->dp = world / (tp * pp);
    return FEDGE_OK;
}

void fedge_grid_coord_of(const fedge_grid_dims *g, int rank, fedge_grid_coord *c)
{
    c->tp_i = rank % g->tp;
    c->pp_i = (rank / g->tp) % g->pp;
    c->dp_i = rank / (g->tp * g->pp);
}

int fedge_grid_rank_of(const fedge_grid_dims *g, int dp_i, int tp_i, int pp_i)
{
    return (dp_i * g->pp + pp_i) * g->tp + tp_i;
}

const char *fedge_tp_mode_name(int mode)
{
    switch (mode) {
    case FEDGE_TP_COL: return "column";
    case FEDGE_TP_ROW: return "row";
    default: return "replicated";
    }
}

/* Work of a layer per row: forward and weight-gradient GEMMs, and the
 * input-gradient GEMM above the first layer. */
static double layer_cost(const fedge_dense_shape *sh, int l)
{
    return (double)sh->dims[l + 1] * ((double)sh->dims[l] + 1.0) * (l == 0 ? 2.0 : 3.0);
}

int fedge_pp_stages(const fedge_dense_shape *sh, int pp, int first[FEDGE_GRID_MAX_PP + 1])
{
    const int L = sh->n_layers;
    if (pp < 1 || pp > L || L > FEDGE_MODEL_MAX_LAYERS)
        return FEDGE_ERR_INVALID_ARG;
    /* best[k][j]: smallest largest-stage cost putting layers [0, j) into k stages */
    double best[FEDGE_GRID_MAX_PP + 1][FEDGE_MODEL_MAX_LAYERS + 1];
    int cut[FEDGE_GRID_MAX_PP + 1][FEDGE_MODEL_MAX_LAYERS + 1];
    double prefix[FEDGE_MODEL_MAX_LAYERS + 1];
    prefix[0] = 0.0;
    for (int l = 0; l < L; l++)
        prefix[l + 1] = prefix[l] + layer_cost(sh, l);
    for (int j = 0; j <= L; j++) {
        best[1][j] = prefix[j];
        cut[1][j] = 0;
    }
    for (int k = 2; k <= pp; k++) {
        for (int j = 0; j <= L; j++) {
            best[k][j] = -1.0;
            cut[k][j] = 0;
            for (int i = k - 1; i < j; i++) { /* stage k-1 = [i, j), nonempty */
                double a = best[k - 1][i], b = prefix[j] - prefix[i];
                double m = a > b ? a : b;
                if (best[k - 1][i] >= 0.0 && (best[k][j] < 0.0 || m < best[k][j])) {
                    best[k][j] = m;
                    cut[k][j] = i;
                }
            }
        }
    }
    first[pp] = L;
    for (int k = pp, j = L; k >= 1; k--) {
        first[k - 1] = k == 1 ? 0 : cut[k][j];
        j = first[k - 1];
    }
    return FEDGE_OK;
}

int fedge_shard_plan_make(const fedge_dense_shape *sh, int tp, int tp_i, int pp, int pp_i,
                          fedge_shard_plan *p)
{
    if (sh == NULL || p == NULL || tp < 1 || tp_i < 0 || tp_i >= tp || pp < 1 || pp_i < 0
        || pp_i >= pp)
        return FEDGE_ERR_INVALID_ARG;
    memset(p, 0, sizeof(*p));
    p->sh = *sh;
    p->tp = tp;
    p->tp_i = tp_i;
    p->pp = pp;
    p->pp_i = pp_i;
    int ret = fedge_pp_stages(sh, pp, p->first);
    if (ret != FEDGE_OK)
        return ret;
    p->l0 = p->first[pp_i];
    p->l1 = p->first[pp_i + 1];
    const int L = sh->n_layers;
    for (int l = 0; l < L; l++) {
        const int in = sh->dims[l], out = sh->dims[l + 1];
        int mode = FEDGE_TP_FULL;
        if (tp > 1) /* pairs; an unpaired last layer is column-parallel too */
            mode = (l % 2 == 1) ? FEDGE_TP_ROW : FEDGE_TP_COL;
        p->mode[l] = mode;
        p->out_lo[l] = 0;
        p->out_n[l] = out;
        p->in_lo[l] = 0;
        p->in_n[l] = in;
        if (mode == FEDGE_TP_COL) {
            if (out < tp)
                return FEDGE_ERR_INVALID_ARG;
            p->out_lo[l] = (int)((long)out * tp_i / tp);
            p->out_n[l] = (int)((long)out * (tp_i + 1) / tp) - p->out_lo[l];
        } else if (mode == FEDGE_TP_ROW) {
            if (in < tp)
                return FEDGE_ERR_INVALID_ARG;
            p->in_lo[l] = (int)((long)in * tp_i / tp);
            p->in_n[l] = (int)((long)in * (tp_i + 1) / tp) - p->in_lo[l];
        }
    }
    size_t off = 0;
    int maxd = 0;
    for (int l = p->l0; l < p->l1; l++) {
        p->w_off[l] = off;
        off += (size_t)p->out_n[l] * (size_t)p->in_n[l];
        p->b_off[l] = off;
        off += (size_t)p->out_n[l];
        if (p->out_n[l] > maxd)
            maxd = p->out_n[l];
        if (p->in_n[l] > maxd)
            maxd = p->in_n[l];
    }
    p->n_local = off;
    p->max_local_dim = maxd < 4 ? 4 : maxd; /* the split softmax keeps 2 doubles a row there */
    return FEDGE_OK;
}

/* Copies between the full vector and the local one; to_full writes only
 * what this rank owns. */
static void shard_copy(const fedge_shard_plan *p, float *full, float *local, int to_full)
{
    const fedge_dense_shape *sh = &p->sh;
    float *W[FEDGE_MODEL_MAX_LAYERS], *b[FEDGE_MODEL_MAX_LAYERS];
    fedge_dense_views(sh, full, W, b);
    for (int l = p->l0; l < p->l1; l++) {
        const int in = sh->dims[l];
        const int owner = p->mode[l] == FEDGE_TP_COL || p->tp_i == 0;
        float *lw = local + p->w_off[l], *lb = local + p->b_off[l];
        if (p->mode[l] == FEDGE_TP_FULL && to_full && !owner)
            continue;
        for (int j = 0; j < p->out_n[l]; j++) {
            float *row = W[l] + (size_t)(p->out_lo[l] + j) * (size_t)in + p->in_lo[l];
            float *lrow = lw + (size_t)j * (size_t)p->in_n[l];
            if (to_full)
                memcpy(row, lrow, (size_t)p->in_n[l] * sizeof(float));
            else
                memcpy(lrow, row, (size_t)p->in_n[l] * sizeof(float));
        }
        if (to_full && !owner)
            continue;
        if (to_full)
            memcpy(b[l] + p->out_lo[l], lb, (size_t)p->out_n[l] * sizeof(float));
        else
            memcpy(lb, b[l] + p->out_lo[l], (size_t)p->out_n[l] * sizeof(float));
    }
}

void fedge_shard_get(const fedge_shard_plan *p, const float *full, float *local)
{
    shard_copy(p, (float *)(uintptr_t)full, local, 0);
}

void fedge_shard_put(const fedge_shard_plan *p, const float *local, float *full)
{
    shard_copy(p, full, (float *)(uintptr_t)local, 1);
}

int fedge_pp_slots(int schedule, int micro, int pp)
{
    if (schedule == FEDGE_PP_1F1B)
        return micro < pp ? micro : pp;
    return micro;
}

double fedge_pp_bubble_theory(int pp, int micro)
{
    return (double)(pp - 1) / (double)(micro + pp - 1);
}

int fedge_pp_bubble_model(const fedge_dense_shape *sh, int pp, int micro,
                          double idle[FEDGE_GRID_MAX_PP])
{
    int first[FEDGE_GRID_MAX_PP + 1];
    double c[FEDGE_GRID_MAX_PP], sum = 0.0, worst = 0.0;
    int ret = fedge_pp_stages(sh, pp, first);
    if (ret != FEDGE_OK || micro < 1)
        return ret != FEDGE_OK ? ret : FEDGE_ERR_INVALID_ARG;
    for (int s = 0; s < pp; s++) {
        c[s] = 0.0;
        for (int l = first[s]; l < first[s + 1]; l++)
            c[s] += layer_cost(sh, l);
        sum += c[s];
        worst = c[s] > worst ? c[s] : worst;
    }
    const double total = sum + (micro - 1) * worst;
    for (int s = 0; s < pp; s++)
        idle[s] = total > 0 ? 1.0 - micro * c[s] / total : 0.0;
    return FEDGE_OK;
}

void fedge_mp_memory_plan(const fedge_shard_plan *p, int rows_mb, int slots,
                          fedge_memory_plan *plan)
{
    const size_t rows = rows_mb > 0 ? (size_t)rows_mb : 0;
    size_t per_slot = (size_t)p->in_n[p->l0];        /* stage input */
    for (int l = p->l0; l < p->l1; l++)
        per_slot += (size_t)p->out_n[l];              /* each layer's output */
    if (p->pp_i > 0)
        per_slot += (size_t)p->in_n[p->l0];           /* input gradient being sent */
    memset(plan, 0, sizeof(*plan));
    plan->params = p->n_local * sizeof(float);
    plan->grads = p->n_local * sizeof(float);
    plan->optimizer = p->n_local * sizeof(float);
    plan->activations = ((size_t)slots * per_slot + 2 * (size_t)p->max_local_dim) * rows
                        * sizeof(float);
    plan->total = plan->params + plan->grads + plan->optimizer + plan->activations;
}

int fedge_mp_memory_max(const fedge_dense_shape *sh, int tp, int pp, int rows_mb, int slots,
                        fedge_memory_plan *plan)
{
    memset(plan, 0, sizeof(*plan));
    for (int s = 0; s < pp; s++)
        for (int t = 0; t < tp; t++) {
            fedge_shard_plan sp;
            fedge_memory_plan m;
            int ret = fedge_shard_plan_make(sh, tp, t, pp, s, &sp);
            if (ret != FEDGE_OK)
                return ret;
            fedge_mp_memory_plan(&sp, rows_mb, slots, &m);
            if (m.total > plan->total)
                *plan = m;
        }
    return FEDGE_OK;
}

void fedge_mp_comm_volume(const fedge_shard_plan *p, int dp, int rows, int micro,
                          fedge_mp_comm *out)
{
    memset(out, 0, sizeof(*out));
    for (int l = p->l0; l < p->l1 && p->tp > 1; l++) {
        if (p->mode[l] == FEDGE_TP_COL && l == p->sh.n_layers - 1) {
            /* split softmax: per-row max (f32), then sum-exp and label logit (f64) */
            out->tp_bytes += (double)rows * (4.0 + 16.0);
            out->tp_allreduces += 2 * micro;
        }
        if (p->mode[l] == FEDGE_TP_ROW) {
            out->tp_bytes += (double)rows * p->sh.dims[l + 1] * 4.0;
            out->tp_allreduces += micro;
        } else if (p->mode[l] == FEDGE_TP_COL && l > 0) {
            out->tp_bytes += (double)rows * p->sh.dims[l] * 4.0;
            out->tp_allreduces += micro;
        }
    }
    if (p->pp_i < p->pp - 1) {
        out->pp_bytes += (double)rows * p->out_n[p->l1 - 1] * 4.0;
        out->pp_messages += micro;
    }
    if (p->pp_i > 0) {
        out->pp_bytes += (double)rows * p->in_n[p->l0] * 4.0;
        out->pp_messages += micro;
    }
    out->dp_bytes = dp > 1 ? (double)p->n_local * 4.0 : 0.0;
}

double fedge_lr_at(double lr, int scaling, int effective_batch, int base_batch,
                   unsigned long long warmup, unsigned long long step)
{
    if (scaling != FEDGE_LR_LINEAR || base_batch < 1)
        return lr;
    double target = lr * (double)effective_batch / (double)base_batch;
    if (step >= warmup)
        return target;
    return lr + (target - lr) * (double)step / (double)warmup;
}
