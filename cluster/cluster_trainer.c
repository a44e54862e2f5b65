#include "cluster_trainer.h"

#include <inttypes.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster_backend.h"
#include "cluster_checkpoint.h"
#include "common.h"
#include "cluster_loader.h"
#include "cluster_mp.h"
#include "log.h"
#include "modelfile.h"

#define LOSS_SCALE_MAX 16777216.0 /* 2^24 */

void fedge_refine_config_defaults(fedge_refine_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->backend = "cpu";
    cfg->precision = FEDGE_PREC_FP32;
    cfg->zero = 0;
    cfg->epochs = 1.0;
    cfg->global_batch = 64;
    cfg->sgd.lr = 0.05f;
    cfg->sgd.momentum = 0.9f;
    cfg->sgd.weight_decay = 0.0f;
    cfg->seed = 1;
    cfg->bucket_mb = 25.0;
    cfg->ckpt_keep = 2;
    cfg->prefetch = 1;
    cfg->loss_scale = 65536.0;
    cfg->loss_scale_window = 1000;
    cfg->fail_at_step = -1;
    cfg->fail_rank = 1;
    cfg->log_every = 0;
    cfg->tp = 1;
    cfg->pp = 1;
    cfg->micro = 1;
    cfg->pp_schedule = FEDGE_PP_1F1B;
}

double fedge_refine_step_flops(const fedge_model_spec *spec, int rows)
{
    double f = 0.0;
    int first = 1;
    for (int i = 0; i < spec->n_layers; i++) {
        double mac = fedge_layer_macs(&spec->layer[i]);
        if (mac == 0.0)
            continue;
        f += 2.0 * (double)rows * mac * (first ? 2.0 : 3.0); /* forward, dW, dX above the first */
        first = 0;
    }
    return f;
}

/* Every rank's status folded into one: the first failure wins everywhere. */
static int agree(int st)
{
    int all = FEDGE_OK;
    if (MPI_Allreduce(&st, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    return st != FEDGE_OK ? st : all;
}

static int mpi_barrier(void)
{
    return MPI_Barrier(MPI_COMM_WORLD) == MPI_SUCCESS ? FEDGE_OK : FEDGE_ERR_CLUSTER_COMM;
}

static void set_where(fedge_refine_summary *sum, const char *what)
{
    if (sum->where[0] == 0)
        snprintf(sum->where, sizeof(sum->where), "%s", what);
}

/* Job identity: input model version, the data file's trailing SHA-256, and
 * everything that defines the sample order and the update rule. */
static int job_id(const fedge_refine_config *cfg, const uint8_t model_version[FEDGE_HASH_LEN],
                  int data_fd, char out[FEDGE_HASH_HEX_LEN])
{
    uint8_t data_hash[FEDGE_HASH_LEN], h[FEDGE_HASH_LEN];
    char mv[FEDGE_HASH_HEX_LEN], dh[FEDGE_HASH_HEX_LEN], text[512];
    off_t end = lseek(data_fd, 0, SEEK_END);
    if (end < FEDGE_HASH_LEN
        || pread(data_fd, data_hash, FEDGE_HASH_LEN, end - FEDGE_HASH_LEN) != FEDGE_HASH_LEN)
        return FEDGE_ERR_IO;
    fedge_hash_to_hex(model_version, mv);
    fedge_hash_to_hex(data_hash, dh);
    int k = snprintf(text, sizeof(text),
                     "model=%s data=%s batch=%d seed=%" PRIu64 " lr=%.9g momentum=%.9g wd=%.9g",
                     mv, dh, cfg->global_batch, cfg->seed, (double)cfg->sgd.lr,
                     (double)cfg->sgd.momentum, (double)cfg->sgd.weight_decay);
    if (k < 0 || (size_t)k >= sizeof(text))
        return FEDGE_ERR_INTERNAL;
    int ret = fedge_sha256(text, (size_t)k, h);
    if (ret == FEDGE_OK)
        fedge_hash_to_hex(h, out);
    return ret;
}

typedef struct {
    const fedge_refine_config *cfg;
    fedge_refine_summary *sum;
    fedge_backend *be;        /* data-parallel path */
    fedge_mp *mp;             /* model-parallel path (tp, pp or micro > 1) */
    fedge_grid_dims grid;
    fedge_grid_coord at;
    fedge_model model;        /* host copy: input, checkpoints, output */
    float *optim_host;        /* opt_len floats; n on the model-parallel path */
    fedge_layout lo;
    char spec_text[FEDGE_MODEL_SPEC_MAX];
    char job[FEDGE_HASH_HEX_LEN];
    uint64_t total_steps;
    double loss_scale;
    uint64_t good_steps, skipped;
    double last_loss;
    int base_batch;           /* of the linear lr scaling */
    double idle_s, step_s, tp_s, pay_tp, pay_pp, pay_dp; /* model-parallel sums */
    double phase_s[FEDGE_PHASES], phase_min[FEDGE_PHASES];
    uint64_t phase_steps;
} run_state;

/* Adds one step's phase times to the sums; a step that ran every phase also
 * to the minima. */
static void phase_commit(run_state *rs, const double cur[FEDGE_PHASES], int whole)
{
    for (int k = 0; k < FEDGE_PHASES; k++) {
        rs->phase_s[k] += cur[k];
        if (whole && (rs->phase_steps == 0 || cur[k] < rs->phase_min[k]))
            rs->phase_min[k] = cur[k];
    }
    rs->phase_steps += whole;
}

static fedge_sgd_config sgd_at(const run_state *rs, uint64_t step)
{
    fedge_sgd_config c = rs->cfg->sgd;
    c.lr = (float)fedge_lr_at(rs->cfg->sgd.lr, rs->cfg->lr_scaling, rs->cfg->global_batch,
                              rs->base_batch, rs->cfg->warmup_steps, step);
    return c;
}

static int write_checkpoint(run_state *rs, uint64_t step)
{
    const fedge_refine_config *cfg = rs->cfg;
    fedge_backend *be = rs->be;
    char dir[FEDGE_CKPT_PATH_MAX];
    int ret = FEDGE_OK;
    if (rs->lo.rank == 0)
        ret = fedge_ckpt_begin(cfg->ckpt_dir, step, dir, sizeof(dir));
    if (MPI_Bcast(&ret, 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (ret != FEDGE_OK)
        return ret;
    ret = fedge_ckpt_dir(cfg->ckpt_dir, step, 1, dir, sizeof(dir));
    const int shards = cfg->zero ? rs->lo.world : 1;
    if (ret == FEDGE_OK && rs->mp != NULL) {
        /* full tensors, so that any layout can resume from them */
        ret = fedge_mp_gather(rs->mp, 1, rs->optim_host, rs->lo.n);
        if (ret == FEDGE_OK)
            ret = fedge_mp_gather(rs->mp, 0, rs->model.params, rs->lo.n);
        if (ret == FEDGE_OK && rs->lo.rank == 0)
            ret = fedge_ckpt_write_optim(dir, 0, 1, step, rs->lo.n, 0, rs->lo.n, rs->optim_host);
    } else if (ret == FEDGE_OK && (cfg->zero || rs->lo.rank == 0)) {
        size_t off = be->opt_off < rs->lo.n ? be->opt_off : rs->lo.n;
        size_t end = be->opt_off + be->opt_len < rs->lo.n ? be->opt_off + be->opt_len : rs->lo.n;
        ret = be->ops->get_optim(be, rs->optim_host);
        if (ret == FEDGE_OK)
            ret = fedge_ckpt_write_optim(dir, cfg->zero ? rs->lo.rank : 0, shards, step,
                                         rs->lo.n, off, end - off, rs->optim_host);
    }
    if (ret == FEDGE_OK && rs->lo.rank == 0) {
        char path[FEDGE_CKPT_PATH_MAX];
        uint8_t version[FEDGE_HASH_LEN];
        fedge_ckpt_state st;
        memset(&st, 0, sizeof(st));
        if (rs->mp == NULL)
            ret = be->ops->get_params(be, rs->model.params);
        if (ret == FEDGE_OK && (size_t)snprintf(path, sizeof(path), "%s/model.bin", dir)
                                   >= sizeof(path))
            ret = FEDGE_ERR_BUFFER_TOO_SMALL;
        if (ret == FEDGE_OK)
            ret = fedge_model_save(&rs->model, path, version);
        if (ret == FEDGE_OK) {
            st.step = step;
            st.world = rs->lo.world;
            st.optim_shards = shards;
            st.zero = cfg->zero;
            st.global_batch = cfg->global_batch;
            st.seed = cfg->seed;
            st.total_steps = rs->total_steps;
            st.loss_scale = rs->loss_scale;
            st.good_steps = rs->good_steps;
            st.skipped_steps = rs->skipped;
            st.last_loss = rs->last_loss;
            snprintf(st.spec, sizeof(st.spec), "%s", rs->spec_text);
            snprintf(st.job, sizeof(st.job), "%s", rs->job);
            fedge_hash_to_hex(version, st.params_sha);
            ret = fedge_ckpt_write_state(dir, &st);
        }
    }
    ret = agree(ret);
    if (ret == FEDGE_OK && rs->lo.rank == 0) {
        ret = fedge_ckpt_commit(cfg->ckpt_dir, step);
        if (ret == FEDGE_OK)
            ret = fedge_ckpt_prune(cfg->ckpt_dir, cfg->ckpt_keep);
    }
    if (MPI_Bcast(&ret, 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (ret == FEDGE_OK && rs->lo.rank == 0)
        FEDGE_INFO("checkpoint step %" PRIu64 " written", step);
    return ret;
}

/* Resume from the newest complete checkpoint of this job, if there is one:
 * *start = its step (0 when starting fresh). */
static int try_resume(run_state *rs, uint64_t *start)
{
    const fedge_refine_config *cfg = rs->cfg;
    fedge_backend *be = rs->be;
    int64_t found = -1;
    char dir[FEDGE_CKPT_PATH_MAX];
    int ret = FEDGE_OK;
    fedge_ckpt_state st;
    fedge_model ck;
    memset(&ck, 0, sizeof(ck));
    *start = 0;
    if (rs->lo.rank == 0) {
        uint64_t s;
        int st0 = fedge_ckpt_latest(cfg->ckpt_dir, &s, dir, sizeof(dir));
        if (st0 == FEDGE_OK)
            found = (int64_t)s;
        else if (st0 != FEDGE_ERR_NOT_FOUND)
            found = -2 + st0; /* an error: below -1 */
    }
    if (MPI_Bcast(&found, 1, MPI_INT64_T, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (found == -1)
        return FEDGE_OK;
    if (found < -1)
        return (int)(found + 2);
    CHK(fedge_ckpt_dir(cfg->ckpt_dir, (uint64_t)found, 0, dir, sizeof(dir)));
    CHK(fedge_ckpt_read_state(dir, &st));
    if (strcmp(st.job, rs->job) != 0 || strcmp(st.spec, rs->spec_text) != 0) {
        FEDGE_ERROR("checkpoint %s belongs to another job (input model, data or "
                    "hyperparameters differ)", dir);
        FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
    }
    if (st.step != (uint64_t)found || st.step > rs->total_steps)
        FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
    {
        char path[FEDGE_CKPT_PATH_MAX], hex[FEDGE_HASH_HEX_LEN];
        uint8_t version[FEDGE_HASH_LEN];
        if ((size_t)snprintf(path, sizeof(path), "%s/model.bin", dir) >= sizeof(path))
            FAIL(FEDGE_ERR_BUFFER_TOO_SMALL);
        CHK(fedge_model_load(path, &ck, version));
        fedge_hash_to_hex(version, hex);
        if (ck.n_params != rs->lo.n || strcmp(hex, st.params_sha) != 0)
            FAIL(FEDGE_ERR_CLUSTER_CHECKPOINT);
    }
    if (rs->mp != NULL) { /* re-shard the full tensors for this layout */
        CHK(fedge_mp_set_params(rs->mp, ck.params));
        CHK(fedge_ckpt_read_optim(dir, st.optim_shards, rs->lo.n, 0, rs->lo.n, rs->optim_host));
        CHK(fedge_mp_set_optim(rs->mp, rs->optim_host));
    } else {
        CHK(be->ops->set_params(be, ck.params));
        CHK(fedge_ckpt_read_optim(dir, st.optim_shards, rs->lo.n, be->opt_off, be->opt_len,
                                  rs->optim_host));
        CHK(be->ops->set_optim(be, rs->optim_host));
    }
    rs->loss_scale = cfg->precision == FEDGE_PREC_FP16 ? st.loss_scale : 1.0;
    rs->good_steps = st.good_steps;
    rs->skipped = st.skipped_steps;
    rs->last_loss = st.last_loss;
    *start = st.step;
cleanup:
    fedge_model_free(&ck);
    ret = agree(ret);
    if (ret == FEDGE_OK && rs->lo.rank == 0)
        FEDGE_INFO("resumed from %s (written by %d ranks, now %d)", dir, st.world,
                   rs->lo.world);
    return ret;
}

/* Accuracy and mean loss of the host model on the eval file, rows split
 * over the ranks. */
static int evaluate(const run_state *rs, const char *path, double *acc, double *loss)
{
    fedge_loader ld;
    float *x = NULL, *scratch = NULL;
    uint8_t *y = NULL;
    int ret = FEDGE_OK;
    const int chunk = 256;
    double sums[3] = {0, 0, 0}, all[3];
    int ld_open = 0;
    ret = fedge_loader_open(&ld, path, 0, rs->lo.world, rs->lo.world, rs->lo.rank, 0);
    if (ret == FEDGE_OK) {
        ld_open = 1;
        if (ld.reader.dim != rs->model.spec.input_dim
            || ld.reader.n_classes > rs->model.spec.classes)
            ret = FEDGE_ERR_MODEL_SHAPE;
    }
    if (ret == FEDGE_OK) {
        x = malloc((size_t)chunk * (size_t)ld.reader.dim * sizeof(float));
        y = malloc((size_t)chunk);
        size_t sf = fedge_model_scratch_floats(&rs->model.spec, chunk);
        scratch = sf ? malloc(sf * sizeof(float)) : NULL;
        if (sf == 0)
            ret = FEDGE_ERR_MODEL_SPEC; /* activations over the model's limit */
        else if (x == NULL || y == NULL || scratch == NULL)
            ret = FEDGE_ERR_NOMEM;
    }
    if (ret == FEDGE_OK) {
        uint64_t n = ld.reader.n;
        uint64_t first = n * (uint64_t)rs->lo.rank / (uint64_t)rs->lo.world;
        uint64_t last = n * (uint64_t)(rs->lo.rank + 1) / (uint64_t)rs->lo.world;
        for (uint64_t r = first; r < last && ret == FEDGE_OK; r += (uint64_t)chunk) {
            int cnt = (int)(last - r < (uint64_t)chunk ? last - r : (uint64_t)chunk);
            size_t correct = 0;
            double ls = 0.0;
            ret = fedge_loader_read_rows(&ld, r, cnt, x, y);
            if (ret == FEDGE_OK)
                ret = fedge_model_evaluate(&rs->model, x, y, (size_t)cnt, chunk, scratch,
                                           &correct, &ls);
            sums[0] += (double)correct;
            sums[1] += ls;
            sums[2] += cnt;
        }
    }
    if (ld_open)
        fedge_loader_close(&ld);
    free(x);
    free(y);
    free(scratch);
    ret = agree(ret);
    if (ret != FEDGE_OK)
        return ret;
    if (MPI_Allreduce(sums, all, 3, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    *acc = all[2] > 0 ? all[0] / all[2] : 0.0;
    *loss = all[2] > 0 ? all[1] / all[2] : 0.0;
    return FEDGE_OK;
}

static int local_rank_of(void)
{
    MPI_Comm node;
    int r = 0;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node)
        != MPI_SUCCESS)
        return 0;
    MPI_Comm_rank(node, &r);
    MPI_Comm_free(&node);
    return r;
}

/* One optimisation step; *skipped = 1 when fp16 overflow skipped it. */
static int train_step(run_state *rs, fedge_loader *ld, uint64_t step, size_t bucket_floats,
                      int *skipped, double *mean_loss)
{
    const fedge_refine_config *cfg = rs->cfg;
    fedge_backend *be = rs->be;
    const fedge_model_spec *sp = &rs->model.spec;
    fedge_dense_shape sh;
    int n_steps = 1; /* backward steps: dense layers, or one for the shared core (a cnn) */
    if (fedge_dense_shape_of(sp, &sh) == FEDGE_OK)
        n_steps = sh.n_layers;
    const float *x;
    const uint8_t *y;
    int rows = 0, err = FEDGE_OK, bad = 0;
    double loss_sum = 0.0;

    double ph[FEDGE_PHASES] = {0}, tc = MPI_Wtime(), tn;
#define PHASE(k) (tn = MPI_Wtime(), ph[k] += tn - tc, tc = tn)
    err = fedge_loader_get(ld, step, &x, &y, &rows);
    PHASE(FEDGE_PHASE_LOAD);
    if (err == FEDGE_OK)
        err = be->ops->load_batch(be, x, y, rows);
    PHASE(FEDGE_PHASE_COPY);
    if (err == FEDGE_OK)
        err = be->ops->forward(be, (float)(rs->loss_scale / cfg->global_batch), &loss_sum);
    PHASE(FEDGE_PHASE_FWD);
    /* Buckets go out as soon as every layer they overlap is done; a rank that
     * failed above still takes part so nobody waits forever, and the combined
     * status below stops everyone before the update. */
    size_t nb = fedge_layout_bucket_count(&rs->lo, bucket_floats), next = 0;
    for (int l = n_steps - 1; l >= 0; l--) {
        if (err == FEDGE_OK)
            err = be->ops->backward_layer(be, l);
        PHASE(FEDGE_PHASE_BWD);
        size_t ready_from = fedge_layout_layer_offset(sp, l);
        while (next < nb) {
            size_t off, cnt;
            fedge_layout_bucket(&rs->lo, bucket_floats, next, &off, &cnt);
            if (off < ready_from)
                break;
            int st = be->ops->grad_comm_start(be, off, cnt);
            if (st != FEDGE_OK)
                return st; /* the collective itself failed: nothing more to agree on */
            next++;
        }
        PHASE(FEDGE_PHASE_GRAD_AR);
    }
    int st = be->ops->grad_comm_wait(be);
    if (st != FEDGE_OK)
        return st;
    PHASE(FEDGE_PHASE_GRAD_AR);
    if (err == FEDGE_OK)
        err = be->ops->grad_nonfinite(be, &bad);
    double mine[3] = {loss_sum, (double)bad, err != FEDGE_OK ? 1.0 : 0.0}, all[3];
    if (MPI_Allreduce(mine, all, 3, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    PHASE(FEDGE_PHASE_STATUS);
    if (all[2] > 0)
        return err != FEDGE_OK ? err : FEDGE_ERR_CLUSTER_COMM;
    *mean_loss = all[0] / cfg->global_batch;
    *skipped = 0;
    if (all[1] > 0) {
        if (cfg->precision != FEDGE_PREC_FP16)
            return FEDGE_ERR_MODEL_NONFINITE; /* diverged: nothing to rescale */
        *skipped = 1;
        rs->skipped++;
        rs->good_steps = 0;
        rs->loss_scale = rs->loss_scale > 2.0 ? rs->loss_scale / 2.0 : 1.0;
        phase_commit(rs, ph, 0);
        return FEDGE_OK;
    }
    const fedge_sgd_config sgd = sgd_at(rs, step);
    int ret = be->ops->update(be, &sgd, (float)(1.0 / rs->loss_scale));
    if (ret == FEDGE_OK && cfg->zero)
        ret = be->ops->gather_params(be);
    PHASE(FEDGE_PHASE_UPDATE);
#undef PHASE
    phase_commit(rs, ph, 1);
    if (cfg->precision == FEDGE_PREC_FP16 && ++rs->good_steps >= (uint64_t)cfg->loss_scale_window) {
        rs->good_steps = 0;
        if (rs->loss_scale * 2.0 <= LOSS_SCALE_MAX)
            rs->loss_scale *= 2.0;
    }
    return ret;
}

/* One step on the model-parallel path. The batch's status is agreed on
 * first: the pipeline's point-to-point messages cannot be skipped halfway. */
static int train_step_mp(run_state *rs, fedge_loader *ld, uint64_t step, double *mean_loss)
{
    const fedge_refine_config *cfg = rs->cfg;
    const float *x = NULL;
    const uint8_t *y = NULL;
    int rows = 0;
    double loss_sum = 0.0;
    fedge_mp_step_stats st;
    double ph[FEDGE_PHASES] = {0}, tc = MPI_Wtime(), tn;
#define PHASE(k) (tn = MPI_Wtime(), ph[k] += tn - tc, tc = tn)
    int err = fedge_loader_get(ld, step, &x, &y, &rows);
    for (int i = 0; err == FEDGE_OK && i < rows; i++)
        if (y[i] >= rs->model.spec.classes)
            err = FEDGE_ERR_DATA_LABEL;
    PHASE(FEDGE_PHASE_LOAD);
    err = agree(err);
    PHASE(FEDGE_PHASE_STATUS);
    if (err != FEDGE_OK)
        return err;
    err = fedge_mp_step(rs->mp, x, y, rows, (float)(1.0 / cfg->global_batch), &loss_sum, &st);
    PHASE(FEDGE_PHASE_GRAD_AR);
    ph[FEDGE_PHASE_PIPE] = st.step_s; /* inside fedge_mp_step; the rest is its DP allreduce */
    ph[FEDGE_PHASE_GRAD_AR] -= st.step_s;
    if (err != FEDGE_OK)
        return err;
    int bad = 0;
    err = agree(fedge_mp_grad_nonfinite(rs->mp, &bad));
    if (err != FEDGE_OK)
        return err;
    double mine[2] = {loss_sum, (double)bad}, all[2];
    if (MPI_Allreduce(mine, all, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    PHASE(FEDGE_PHASE_STATUS);
    if (all[1] > 0)
        return FEDGE_ERR_MODEL_NONFINITE;
    *mean_loss = all[0] / cfg->global_batch;
    const fedge_sgd_config sgd = sgd_at(rs, step);
    err = agree(fedge_mp_update(rs->mp, &sgd));
    PHASE(FEDGE_PHASE_UPDATE);
#undef PHASE
    if (err != FEDGE_OK)
        return err;
    phase_commit(rs, ph, 1);
    rs->idle_s += st.idle_s;
    rs->step_s += st.step_s;
    rs->tp_s += st.tp_s;
    rs->pay_tp += st.tp_payload;
    rs->pay_pp += st.pp_payload;
    rs->pay_dp += st.dp_payload;
    return FEDGE_OK;
}

/* Bubble per stage and bytes per step, summed over the ranks. */
static int mp_report(run_state *rs, fedge_refine_summary *sum, int rows)
{
    const int P = rs->grid.pp;
    double v[2 * FEDGE_MODEL_MAX_LAYERS + 6], all[2 * FEDGE_MODEL_MAX_LAYERS + 6];
    const int n = 2 * P + 6;
    const double steps = sum->steps_run > 0 ? (double)sum->steps_run : 1.0;
    fedge_mp_comm an;
    memset(v, 0, sizeof(v));
    v[rs->at.pp_i] = rs->idle_s;
    v[P + rs->at.pp_i] = rs->step_s;
    fedge_mp_comm_volume(&rs->mp->plan, rs->grid.dp, rows, rs->cfg->micro, &an);
    v[2 * P] = rs->pay_tp / steps;
    v[2 * P + 1] = rs->pay_pp / steps;
    v[2 * P + 2] = rs->pay_dp / steps;
    v[2 * P + 3] = an.tp_bytes;
    v[2 * P + 4] = an.pp_bytes;
    v[2 * P + 5] = an.dp_bytes;
    if (MPI_Allreduce(v, all, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    for (int s = 0; s < P; s++)
        sum->bubble[s] = all[P + s] > 0 ? all[s] / all[P + s] : 0.0;
    sum->bubble_theory = fedge_pp_bubble_theory(P, rs->cfg->micro);
    if (fedge_pp_bubble_model(&rs->mp->plan.sh, P, rs->cfg->micro, sum->bubble_model) != FEDGE_OK)
        return FEDGE_ERR_INTERNAL;
    sum->step_ms = 1e3 * rs->step_s / steps;
    if (MPI_Allreduce(&rs->tp_s, &sum->tp_seconds, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD)
        != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    sum->bytes_tp = all[2 * P];
    sum->bytes_pp = all[2 * P + 1];
    sum->bytes_dp = all[2 * P + 2];
    sum->bytes_tp_an = all[2 * P + 3];
    sum->bytes_pp_an = all[2 * P + 4];
    sum->bytes_dp_an = all[2 * P + 5];
    return FEDGE_OK;
}

/* The layout's per-rank memory; refused (with the breakdown on stderr) when
 * a budget is set and it does not fit. */
static int check_memory(run_state *rs, const fedge_memory_plan *plan, fedge_refine_summary *sum)
{
    const fedge_refine_config *cfg = rs->cfg;
    double need = (double)plan->total / 1048576.0;
    if (!(cfg->memory_budget_mb > 0) || need <= cfg->memory_budget_mb)
        return FEDGE_OK;
    if (rs->lo.rank == 0)
        FEDGE_ERROR("layout dp=%d tp=%d pp=%d needs %.2f MiB per rank (params %zu + grads %zu + "
                    "momentum %zu + activations %zu bytes), over --memory-per-rank-mb %.2f",
                    rs->grid.dp, rs->grid.tp, rs->grid.pp, need, plan->params, plan->grads,
                    plan->optimizer, plan->activations, cfg->memory_budget_mb);
    snprintf(sum->where, sizeof(sum->where),
             "memory: dp=%d tp=%d pp=%d needs %.2f MiB per rank, over --memory-per-rank-mb %.2f;"
             " split the model with --tp/--pp",
             rs->grid.dp, rs->grid.tp, rs->grid.pp, need, cfg->memory_budget_mb);
    return FEDGE_ERR_CLUSTER_MEMORY;
}

/* The model-parallel path's state: the layout's memory checked against the
 * budget before anything is allocated, then the grid (collective). */
static int setup_mp(run_state *rs, const fedge_loader *ld, const fedge_dense_shape *shape,
                    fedge_refine_summary *sum)
{
    const fedge_refine_config *cfg = rs->cfg;
    int ret;
    const int rows_mb = (ld->local_max + cfg->micro - 1) / cfg->micro;
    const int slots = fedge_pp_slots(cfg->pp_schedule, cfg->micro, cfg->pp);
    fedge_memory_plan worst;
    fedge_mp_config mc;
    ret = fedge_mp_memory_max(shape, cfg->tp, cfg->pp, rows_mb, slots, &worst);
    if (ret != FEDGE_OK) {
        set_where(sum, "layout: a tensor-parallel layer is narrower than --tp");
        return ret;
    }
    ret = check_memory(rs, &worst, sum);
    if (ret != FEDGE_OK)
        return ret;
    memset(&mc, 0, sizeof(mc));
    mc.shape = *shape;
    mc.grid = rs->grid;
    mc.micro = cfg->micro;
    mc.schedule = cfg->pp_schedule;
    mc.local_batch_max = ld->local_max;
    mc.gpu = strcmp(cfg->backend, "gpu") == 0;
    mc.gpu_comm_mpi = cfg->gpu_comm_mpi;
    mc.local_rank = local_rank_of();
    ret = agree(fedge_mp_create(&mc, &rs->mp));
    if (ret != FEDGE_OK) {
        set_where(sum, "model-parallel setup");
        return ret;
    }
    fedge_mp_memory_plan(&rs->mp->plan, rows_mb, slots, &sum->plan);
    fedge_memory_plan_make(&rs->model.spec, &rs->lo, ld->local_max, cfg->precision, 0, 0,
                           &sum->unsharded);
    sum->mem_bytes = rs->mp->mem_bytes;
    ret = fedge_mp_set_params(rs->mp, rs->model.params);
    rs->optim_host = calloc(rs->lo.n, sizeof(float));
    ret = agree(ret != FEDGE_OK ? ret : rs->optim_host ? FEDGE_OK : FEDGE_ERR_NOMEM);
    if (ret != FEDGE_OK) {
        set_where(sum, "backend state");
        return ret;
    }
    return FEDGE_OK;
}

/* The data-parallel path's backend, after the same memory check. */
static int setup_dp(run_state *rs, const fedge_loader *ld, fedge_refine_summary *sum)
{
    const fedge_refine_config *cfg = rs->cfg;
    int ret;
    fedge_backend_config bc;
    memset(&bc, 0, sizeof(bc));
    bc.spec = rs->model.spec;
    bc.layout = rs->lo;
    bc.local_batch_max = ld->local_max;
    bc.precision = cfg->precision;
    bc.zero = cfg->zero;
    bc.local_rank = local_rank_of();
    fedge_memory_plan_make(&rs->model.spec, &rs->lo, ld->local_max, cfg->precision, cfg->zero,
                           strcmp(cfg->backend, "gpu") == 0, &sum->plan);
    fedge_memory_plan_make(&rs->model.spec, &rs->lo, ld->local_max, cfg->precision, 0,
                           strcmp(cfg->backend, "gpu") == 0, &sum->unsharded);
    ret = check_memory(rs, &sum->plan, sum);
    if (ret != FEDGE_OK)
        return ret;
    ret = fedge_backend_create(cfg->backend, &bc, &rs->be);
    if (ret != FEDGE_OK) {
        set_where(sum, "backend");
        return ret;
    }
    sum->mem_bytes = rs->be->mem_bytes;
    rs->optim_host = calloc(rs->be->opt_len, sizeof(float));
    ret = agree(rs->optim_host ? FEDGE_OK : FEDGE_ERR_NOMEM);
    if (ret == FEDGE_OK)
        ret = agree(rs->be->ops->set_params(rs->be, rs->model.params));
    if (ret != FEDGE_OK) {
        set_where(sum, "backend state");
        return ret;
    }
    return FEDGE_OK;
}

int fedge_refine_run(const fedge_refine_config *cfg, fedge_refine_summary *sum)
{
    run_state rs;
    fedge_loader ld;
    int ld_open = 0, ret = FEDGE_OK, rank = 0, world = 1;
    uint8_t version[FEDGE_HASH_LEN];
    memset(&rs, 0, sizeof(rs));
    memset(sum, 0, sizeof(*sum));
    rs.cfg = cfg;
    rs.sum = sum;
    rs.loss_scale = cfg->precision == FEDGE_PREC_FP16 ? cfg->loss_scale : 1.0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    sum->world = world;
    const int mp_mode = cfg->tp > 1 || cfg->pp > 1 || cfg->micro > 1;
    fedge_dense_shape shape;
    memset(&shape, 0, sizeof(shape));
    if (fedge_grid_make(world, cfg->tp, cfg->pp, &rs.grid) != FEDGE_OK || cfg->micro < 1) {
        snprintf(sum->where, sizeof(sum->where),
                 "layout: --tp %d x --pp %d does not divide %d ranks", cfg->tp, cfg->pp, world);
        ret = FEDGE_ERR_INVALID_ARG;
        goto cleanup;
    }
    fedge_grid_coord_of(&rs.grid, rank, &rs.at);
    sum->dp = rs.grid.dp;
    sum->tp = rs.grid.tp;
    sum->pp = rs.grid.pp;
    sum->micro = cfg->micro;
    sum->effective_batch = cfg->global_batch;
    rs.base_batch = cfg->lr_base_batch > 0 ? cfg->lr_base_batch
                                           : cfg->global_batch / (rs.grid.dp * cfg->micro);
    if (rs.base_batch < 1)
        rs.base_batch = 1;
    sum->lr_base_batch = rs.base_batch;
    sum->lr_final = cfg->sgd.lr;
    if (cfg->global_batch < rs.grid.dp * cfg->micro) {
        snprintf(sum->where, sizeof(sum->where),
                 "layout: batch %d is smaller than dp %d x micro-batches %d", cfg->global_batch,
                 rs.grid.dp, cfg->micro);
        ret = FEDGE_ERR_INVALID_ARG;
        goto cleanup;
    }

    /* ---- inputs (every rank reads them; any failure stops all) */
    if (cfg->model_in == NULL || cfg->data_path == NULL
        || cfg->global_batch < world || (cfg->precision == FEDGE_PREC_FP16 && !(cfg->loss_scale >= 1.0))
        || cfg->loss_scale_window < 1 || cfg->ckpt_keep < 1)
        ret = FEDGE_ERR_INVALID_ARG;
    if (ret == FEDGE_OK && (ret = fedge_model_load(cfg->model_in, &rs.model, version)) != FEDGE_OK)
        set_where(sum, "input model");
    if (ret == FEDGE_OK) {
        ret = fedge_loader_open(&ld, cfg->data_path, cfg->seed, cfg->global_batch, rs.grid.dp,
                                rs.at.dp_i, cfg->prefetch);
        if (ret != FEDGE_OK)
            set_where(sum, "training data");
        else
            ld_open = 1;
    }
    if (ret == FEDGE_OK && (ld.reader.dim != rs.model.spec.input_dim
                            || ld.reader.n_classes > rs.model.spec.classes)) {
        ret = FEDGE_ERR_MODEL_SHAPE;
        set_where(sum, "training data does not fit the model");
    }
    if (ret == FEDGE_OK && mp_mode) {
        if (fedge_dense_shape_of(&rs.model.spec, &shape) != FEDGE_OK) {
            ret = FEDGE_ERR_UNSUPPORTED;
            set_where(sum, "layout: tensor/pipeline parallelism trains softmax/mlp specs only");
        } else if (strcmp(cfg->backend, "cpu") != 0 && cfg->precision != FEDGE_PREC_FP32) {
            ret = FEDGE_ERR_UNSUPPORTED;
            set_where(sum, "layout: tensor/pipeline parallelism on the gpu computes in fp32 only "
                           "(drop --precision bf16/fp16)");
        } else if (cfg->zero) {
            ret = FEDGE_ERR_INVALID_ARG;
            set_where(sum, "layout: --zero shards pure data parallelism only");
        } else if (cfg->pp > shape.n_layers) {
            ret = FEDGE_ERR_INVALID_ARG;
            set_where(sum, "layout: more pipeline stages than dense layers");
        }
    }
    if (ret == FEDGE_OK && strcmp(cfg->backend, "cpu") != 0) {
        fedge_dense_shape sh;
        ret = fedge_dense_shape_of(&rs.model.spec, &sh);
        if (ret != FEDGE_OK)
            set_where(sum, "model: the gpu backend trains softmax/mlp specs only, not a cnn");
    }
    if (ret == FEDGE_OK)
        ret = fedge_model_spec_format(&rs.model.spec, rs.spec_text, sizeof(rs.spec_text));
    if (ret == FEDGE_OK)
        ret = job_id(cfg, version, ld.reader.fd, rs.job);
    if (ret == FEDGE_OK)
        ret = fedge_layout_init(&rs.lo, rs.model.n_params, world, rank);
    ret = agree(ret);
    if (ret != FEDGE_OK) {
        set_where(sum, "setup");
        goto cleanup;
    }
    if (cfg->steps > 0) {
        rs.total_steps = cfg->steps;
    } else {
        double s = ceil(cfg->epochs * (double)ld.reader.n / cfg->global_batch);
        rs.total_steps = s > 0 ? (uint64_t)s : 0;
    }
    sum->total_steps = rs.total_steps;

    /* ---- backend and state */
    ret = mp_mode ? setup_mp(&rs, &ld, &shape, sum) : setup_dp(&rs, &ld, sum);
    if (ret != FEDGE_OK)
        goto cleanup;
    if (cfg->eval_path != NULL) {
        ret = evaluate(&rs, cfg->eval_path, &sum->eval_acc_before, &sum->eval_loss);
        if (ret != FEDGE_OK) {
            set_where(sum, "evaluation data");
            goto cleanup;
        }
    }
    uint64_t start = 0;
    if (cfg->ckpt_dir != NULL) {
        ret = try_resume(&rs, &start);
        if (ret != FEDGE_OK) {
            set_where(sum, "checkpoint");
            goto cleanup;
        }
        sum->resumed = start > 0;
    }
    sum->start_step = start;

    /* ---- training */
    size_t bucket_floats = fedge_layout_bucket_floats(cfg->bucket_mb, rs.lo.n_pad);
    double t0 = MPI_Wtime();
    for (uint64_t step = start; step < rs.total_steps; step++) {
        if (cfg->fail_at_step >= 0 && step == (uint64_t)cfg->fail_at_step && rank == cfg->fail_rank) {
            FEDGE_ERROR("rank %d aborting at step %" PRIu64 " (--fail-at-step)", rank, step);
            fflush(NULL);
            abort();
        }
        int skipped = 0;
        double loss = 0.0;
        double ts = MPI_Wtime();
        if (rs.mp != NULL)
            ret = train_step_mp(&rs, &ld, step, &loss);
        else
            ret = train_step(&rs, &ld, step, bucket_floats, &skipped, &loss);
        ts = 1e3 * (MPI_Wtime() - ts);
        if (sum->step_ms_min == 0.0 || ts < sum->step_ms_min)
            sum->step_ms_min = ts;
        if (sum->steps_run == 0)
            sum->step_ms_first = ts;
        sum->lr_final = sgd_at(&rs, step).lr;
        if (ret != FEDGE_OK) {
            set_where(sum, "training step");
            goto cleanup;
        }
        if (!skipped) {
            if (sum->steps_run == 0)
                sum->first_loss = loss;
            rs.last_loss = loss;
        }
        sum->steps_run++;
        if (rank == 0 && cfg->log_every > 0 && (step + 1) % (uint64_t)cfg->log_every == 0)
            FEDGE_INFO("step %" PRIu64 "/%" PRIu64 " loss %.5f%s", step + 1,
                       rs.total_steps, loss, skipped ? " (skipped: fp16 overflow)" : "");
        if (cfg->ckpt_dir != NULL && cfg->ckpt_every > 0 && (step + 1) % cfg->ckpt_every == 0) {
            ret = write_checkpoint(&rs, step + 1);
            if (ret != FEDGE_OK) {
                set_where(sum, "writing checkpoint");
                goto cleanup;
            }
            sum->checkpoints++;
        }
    }
    ret = rs.mp != NULL ? agree(mpi_barrier()) : agree(rs.be->ops->barrier(rs.be));
    sum->seconds = MPI_Wtime() - t0;
    if (ret == FEDGE_OK && rs.mp != NULL)
        ret = mp_report(&rs, sum, ld.local_max);
    if (ret == FEDGE_OK && sum->steps_run > 0) {
        double v[2 * FEDGE_PHASES], all[2 * FEDGE_PHASES];
        for (int k = 0; k < FEDGE_PHASES; k++) {
            v[k] = rs.phase_s[k] * 1e3 / (double)sum->steps_run;
            v[FEDGE_PHASES + k] = rs.phase_min[k] * 1e3;
        }
        if (MPI_Allreduce(v, all, 2 * FEDGE_PHASES, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD)
            != MPI_SUCCESS)
            ret = FEDGE_ERR_CLUSTER_COMM;
        memcpy(sum->phase_ms, all, sizeof(sum->phase_ms));
        memcpy(sum->phase_ms_min, all + FEDGE_PHASES, sizeof(sum->phase_ms_min));
    }
    if (sum->steps_run > 0 && sum->seconds > 0) {
        sum->samples_per_s = (double)sum->steps_run * cfg->global_batch / sum->seconds;
        sum->achieved_tflops = fedge_refine_step_flops(&rs.model.spec, cfg->global_batch)
                               * (double)sum->steps_run / sum->seconds / 1e12;
    }
    sum->last_loss = rs.last_loss;
    sum->skipped_steps = rs.skipped;
    sum->loss_scale = rs.loss_scale;

    /* ---- output (none for the planner's trial runs) */
    const int out = ret == FEDGE_OK && cfg->model_out != NULL;
    if (out && rs.mp != NULL)
        ret = agree(fedge_mp_gather(rs.mp, 0, rs.model.params, rs.lo.n));
    else if (out)
        ret = agree(rs.be->ops->get_params(rs.be, rs.model.params));
    if (out && ret == FEDGE_OK) {
        int st = FEDGE_OK;
        if (rank == 0)
            st = fedge_model_save(&rs.model, cfg->model_out, version);
        ret = agree(st);
        if (ret != FEDGE_OK)
            set_where(sum, "writing output model");
    }
    if (ret == FEDGE_OK) {
        if (MPI_Bcast(version, FEDGE_HASH_LEN, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
            ret = FEDGE_ERR_CLUSTER_COMM;
        fedge_hash_to_hex(version, sum->version_hex);
    }
    if (ret == FEDGE_OK && cfg->eval_path != NULL) {
        ret = evaluate(&rs, cfg->eval_path, &sum->eval_acc, &sum->eval_loss);
        sum->evaluated = ret == FEDGE_OK;
        if (ret != FEDGE_OK)
            set_where(sum, "evaluation");
    }
cleanup:
    if (ld_open)
        fedge_loader_close(&ld);
    fedge_backend_destroy(rs.be);
    fedge_mp_destroy(rs.mp);
    free(rs.optim_host);
    fedge_model_free(&rs.model);
    return ret;
}
