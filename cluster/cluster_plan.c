#include "cluster_plan.h"

#include <math.h>
#include <mpi.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "cluster_loader.h"
#include "shard.h"
#include "cluster_backend.h"
#include "cluster_mp.h"
#include "cluster_plan_model.h"
#include "cluster_trainer.h"
#include "modelfile.h"
#include "model.h"
#include "optim.h"
#include "rng.h"

/* Return a failed status; for functions with nothing to clean up. */
#define CHK_T(expr)                  \
    do {                             \
        int st_ = (expr);            \
        if (st_ != FEDGE_OK)         \
            return st_;              \
    } while (0)

/* Whether this rank times its compute in `turn` (0 .. share-1): with
 * share > 1 the ranks sharing a core take turns, one per core at once. */
static int my_turn(int share, int node_rank, int turn)
{
    return share <= 1 || node_rank % share == turn;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- one pipeline stage's compute, run as the model-parallel path runs it */

#define STAGE_CACHE 256
#define STAGE_PASSES_MIN 7
#define STAGE_PASSES_MAX 60
#define STAGE_PROBE_S 0.06

typedef struct {
    int tp, pp, pp_i, rows;
    double fwd_s, bwd_s, upd_s;
} stage_entry;

/* The pieces of a stage's micro-batch, each keeping its median pass: the
 * forward of layer l (GEMM, bias + ReLU), the softmax, the output gradient
 * (or ReLU mask) and the backward of layer l (its GEMMs and loops). */
enum {
    PIECE_SOFTMAX = FEDGE_MODEL_MAX_LAYERS,
    PIECE_TOP,
    PIECE_UPDATE,
    PIECE_BWD,
    STAGE_PIECES = PIECE_BWD + FEDGE_MODEL_MAX_LAYERS
};

static int piece_ran(const fedge_shard_plan *p, int k)
{
    if (k < PIECE_SOFTMAX)
        return k >= p->l0 && k < p->l1;
    if (k == PIECE_SOFTMAX)
        return p->l1 == p->sh.n_layers;
    if (k == PIECE_TOP || k == PIECE_UPDATE)
        return 1;
    return k - PIECE_BWD >= p->l0 && k - PIECE_BWD < p->l1;
}

typedef struct {
    stage_entry e[STAGE_CACHE];
    int n;
} stage_cache;

/* One micro-batch of `rows` through stage p's layers at their 1/T widths,
 * forward then backward, on buffers laid out as cluster_mp.c's (the stage's
 * parameter and gradient vectors, one activation per layer boundary, the
 * input-gradient pair), with the loops it runs around each GEMM (bias +
 * ReLU, softmax and its gradient on the last stage, bias gradient, ReLU
 * mask): the step's own cache traffic, which single GEMMs timed alone on
 * warm operands miss (the stage's weights stream from L3 in the step). The
 * TP allreduces and pipeline messages between are timed apart
 * (coll_probe). Each piece (a layer's forward, the softmax, the output
 * gradient, a layer's backward) keeps its median of STAGE_PASSES_MIN..MAX
 * passes (at least STAGE_PROBE_S in all), after one warm-up pass: the
 * typical pass, as the step a user runs meets it (the fastest pass
 * predicted the best step, 0.8x the mean one). Every rank at once (in
 * turns when oversubscribed), the slowest rank's median counting: a
 * synchronous step waits for its slowest rank, and the median already
 * ignores the passes another job disturbed. */
static int stage_probe(stage_cache *sc, const fedge_plan_links *L, const fedge_shard_plan *p,
                       int rows, double *fwd_s, double *bwd_s, double *upd_s)
{
    for (int i = 0; i < sc->n; i++) {
        const stage_entry *e = &sc->e[i];
        if (e->tp == p->tp && e->pp == p->pp && e->pp_i == p->pp_i && e->rows == rows) {
            *fwd_s = e->fwd_s;
            *bwd_s = e->bwd_s;
            *upd_s = e->upd_s;
            return FEDGE_OK;
        }
    }
    const int nl = p->sh.n_layers, last = p->l1 == nl;
    const size_t dim = (size_t)p->max_local_dim > (size_t)p->sh.dims[0]
                           ? (size_t)p->max_local_dim : (size_t)p->sh.dims[0];
    float *w = calloc(p->n_local, sizeof(float)), *g = calloc(p->n_local, sizeof(float));
    float *vel = calloc(p->n_local, sizeof(float));
    const fedge_sgd_config sgd = {1e-6f, 0.9f, 1e-4f};
    float *act[FEDGE_MODEL_MAX_LAYERS + 1] = {0};
    float *dz = calloc((size_t)rows * dim, sizeof(float));
    float *da = calloc((size_t)rows * dim, sizeof(float));
    float *mx = calloc((size_t)rows, sizeof(float));
    double *se = calloc(2 * (size_t)rows, sizeof(double));
    int bad = w == NULL || g == NULL || vel == NULL || dz == NULL || da == NULL || mx == NULL || se == NULL;
    for (int l = p->l0; l <= p->l1 && !bad; l++) {
        const int width = l < nl ? p->in_n[l] : p->out_n[nl - 1];
        act[l] = calloc((size_t)rows * (size_t)(l == p->l1 ? p->out_n[l - 1] : width),
                        sizeof(float));
        bad = act[l] == NULL;
    }
    double best[3] = {0, 0, 0}, all[3] = {0, 0, 0}, pt[STAGE_PIECES][STAGE_PASSES_MAX];
    int npass = 0;
    const int share = L->share > 1 ? L->share : 1;
    volatile double sink = 0.0;
    int any = 0;
    if (MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        any = 1, bad = 2;
    if (any && !bad)
        bad = 1; /* another rank's: nobody times */
    for (size_t i = 0; !bad && i < p->n_local; i++)
        w[i] = 0.01f * (float)((int)(i % 17) - 8);
    for (size_t i = 0; !bad && i < (size_t)rows * (size_t)p->in_n[p->l0]; i++)
        act[p->l0][i] = (float)(i % 255) * (1.0f / 255.0f);
    for (int turn = 0; turn < share && !bad; turn++) {
        if (share > 1 && MPI_Barrier(MPI_COMM_WORLD) != MPI_SUCCESS) {
            bad = 2;
            break;
        }
        if (!my_turn(share, L->node_rank, turn))
            continue;
        const double t_begin = now_s();
        for (int pass = 0; pass <= STAGE_PASSES_MAX; pass++) { /* pass 0 warms up */
            double tc = now_s(), tn, piece[STAGE_PIECES];
#define PIECE(k) (tn = now_s(), piece[k] = tn - tc, tc = tn)
            for (int l = p->l0; l < p->l1; l++) {
                const int in = p->in_n[l], out = p->out_n[l];
                float *z = act[l + 1];
                const float *b = w + p->b_off[l];
                fedge_sgemm(0, 1, rows, out, in, 1.0f, act[l], in, w + p->w_off[l], in, 0.0f, z,
                            out);
                for (int r = 0; r < rows; r++)
                    for (int j = 0; j < out; j++) {
                        float v = z[(size_t)r * out + j] + b[j];
                        z[(size_t)r * out + j] = (l < nl - 1 && v < 0.0f) ? 0.0f : v;
                    }
                PIECE(l);
            }
            if (last) { /* row maxima, sums of exp, the probabilities */
                const int out = p->out_n[nl - 1];
                float *z = act[nl];
                double tot = 0.0;
                for (int r = 0; r < rows; r++) {
                    float m = z[(size_t)r * out];
                    for (int j = 1; j < out; j++)
                        m = z[(size_t)r * out + j] > m ? z[(size_t)r * out + j] : m;
                    mx[r] = m;
                    double sum = 0.0;
                    for (int j = 0; j < out; j++)
                        sum += exp((double)(z[(size_t)r * out + j] - m));
                    se[2 * r] = sum;
                    tot += log(sum);
                    for (int j = 0; j < out; j++)
                        z[(size_t)r * out + j] =
                            (float)(exp((double)(z[(size_t)r * out + j] - m)) / sum);
                }
                sink = tot;
                PIECE(PIECE_SOFTMAX);
            }
            {
                const int top = p->out_n[p->l1 - 1];
                const size_t cnt = (size_t)rows * (size_t)top;
                for (size_t i = 0; i < cnt; i++) /* xent gradient, or the ReLU mask */
                    dz[i] = last ? (act[p->l1][i] - (i % (size_t)top == 0 ? 1.0f : 0.0f)) * 1e-3f
                                 : (act[p->l1][i] > 0.0f ? 1e-3f : 0.0f);
                PIECE(PIECE_TOP);
            }
            for (int l = p->l1 - 1; l >= p->l0; l--) {
                const int in = p->in_n[l], out = p->out_n[l];
                float *gb = g + p->b_off[l];
                fedge_sgemm(1, 0, out, in, rows, 1.0f, dz, out, act[l], in, 1.0f,
                            g + p->w_off[l], in);
                for (int r = 0; r < rows; r++)
                    for (int j = 0; j < out; j++)
                        gb[j] += dz[(size_t)r * out + j];
                if (l == 0) {
                    PIECE(PIECE_BWD + l);
                    break;
                }
                fedge_sgemm(0, 0, rows, in, out, 1.0f, dz, out, w + p->w_off[l], in, 0.0f, da,
                            in);
                const size_t cnt = (size_t)rows * (size_t)in;
                if (l > p->l0) {
                    for (size_t i = 0; i < cnt; i++)
                        dz[i] = act[l][i] > 0.0f ? da[i] : 0.0f;
                } else {
                    memcpy(dz, da, cnt * sizeof(float)); /* into the send buffer */
                }
                PIECE(PIECE_BWD + l);
            }
            fedge_sgd_update(&sgd, w, vel, g, p->n_local); /* after the step: cold */
            PIECE(PIECE_UPDATE);
#undef PIECE
            if (pass > 0 && npass < STAGE_PASSES_MAX) {
                for (int k = 0; k < STAGE_PIECES; k++)
                    if (piece_ran(p, k))
                        pt[k][npass] = piece[k];
                npass++;
                if (npass >= STAGE_PASSES_MAX
                    || (pass >= STAGE_PASSES_MIN && tc - t_begin >= STAGE_PROBE_S))
                    break;
            }
        }
    }
    for (int k = 0; !bad && npass > 0 && k < STAGE_PIECES; k++)
        if (piece_ran(p, k))
            best[k < PIECE_TOP ? 0 : k == PIECE_UPDATE ? 2 : 1] +=
                fedge_plan_median(pt[k], npass);
    (void)sink;
    free(w);
    free(g);
    free(vel);
    free(dz);
    free(da);
    free(mx);
    free(se);
    for (int l = 0; l <= FEDGE_MODEL_MAX_LAYERS; l++)
        free(act[l]);
    if (bad == 2 || any)
        return bad == 2 ? FEDGE_ERR_CLUSTER_COMM : FEDGE_ERR_NOMEM;
    if (MPI_Allreduce(best, all, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (sc->n < STAGE_CACHE)
        sc->e[sc->n++] = (stage_entry){p->tp, p->pp, p->pp_i, rows, all[0], all[1], all[2]};
    *fwd_s = all[0];
    *bwd_s = all[1];
    *upd_s = all[2];
    return FEDGE_OK;
}

/* Per-element costs of the loops around the GEMMs, on every rank at once;
 * the median of ELEM_PASSES passes, the slowest rank's (as stage_probe). */
#define ELEM_PASSES 7
static int probe_elementwise(fedge_plan_links *L)
{
    const size_t n = 1 << 18;
    float *a = calloc(n, sizeof(float)), *b = calloc(n, sizeof(float));
    float *c = calloc(n, sizeof(float));
    uint8_t *u = calloc(n, 1);
    double t[5] = {0, 0, 0, 0, 0}, all[5], reps[5][ELEM_PASSES];
    int bad = !a || !b || !c || !u, any = 0, rc = MPI_SUCCESS, nrep = 0;
    if (MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        any = 1, rc = MPI_ERR_OTHER;
    if (!any) {
        fedge_sgd_config sgd = {0.01f, 0.9f, 1e-4f};
        volatile double sink = 0.0;
        for (size_t i = 0; i < n; i++) {
            a[i] = (float)(i % 13) - 6.0f;
            b[i] = 0.01f * (float)(i % 7);
            u[i] = (uint8_t)i;
        }
        for (int rep = 0; rep < ELEM_PASSES * (L->share > 1 ? L->share : 1); rep++) {
            /* oversubscribed, in turns */
            if (L->share > 1) {
                if ((rc = MPI_Barrier(MPI_COMM_WORLD)) != MPI_SUCCESS)
                    break;
                if (!my_turn(L->share, L->node_rank, rep % L->share))
                    continue;
            }
            double t0 = now_s();
            for (size_t i = 0; i < n; i++) {
                float v = a[i] + b[i & 1023];
                c[i] = v < 0.0f ? 0.0f : v;
            }
            double t1 = now_s();
            double acc = 0.0;
            for (size_t i = 0; i < n / 4; i++)
                acc += exp((double)(a[i] * 0.1f));
            sink = acc;
            double t2 = now_s();
            fedge_sgd_update(&sgd, a, b, c, n);
            double t3 = now_s();
            for (size_t i = 0; i < n; i++)
                c[i] = (float)u[i] * (1.0f / 255.0f);
            double t4 = now_s();
            int bad_v = 0; /* the non-finite check (cluster_mp.c's cpu_nonfinite) */
            for (size_t i = 0; i < n; i++)
                bad_v |= !isfinite(c[i]);
            sink += bad_v;
            double t5 = now_s();
            const double d[5] = {(t1 - t0) / (double)n, (t2 - t1) / (double)(n / 4),
                                 (t3 - t2) / (double)n, (t4 - t3) / (double)n,
                                 (t5 - t4) / (double)n};
            for (int k = 0; k < 5 && nrep < ELEM_PASSES; k++)
                reps[k][nrep] = d[k];
            nrep += nrep < ELEM_PASSES;
        }
        for (int k = 0; k < 5 && nrep > 0; k++)
            t[k] = fedge_plan_median(reps[k], nrep);
        (void)sink;
    }
    free(a);
    free(b);
    free(c);
    free(u);
    if (rc != MPI_SUCCESS
        || MPI_Allreduce(t, all, 5, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (any)
        return FEDGE_ERR_NOMEM;
    L->elem_s = all[0];
    L->exp_s = all[1];
    L->sgd_s = all[2];
    L->load_s = all[3];
    L->check_s = all[4];
    return FEDGE_OK;
}

/* A u8 shard of `rows` synthetic rows of `dim` inputs (labels i % classes)
 * at `path`, for the loader probe and the trial runs. */
static int synth_shard_write(const char *path, int dim, int classes, int rows)
{
    fedge_dataset ds;
    size_t *idx = calloc((size_t)rows, sizeof(size_t));
    int ret = FEDGE_OK;
    memset(&ds, 0, sizeof(ds));
    ds.n = (size_t)rows;
    ds.dim = dim;
    ds.n_classes = classes;
    ds.x = calloc((size_t)rows * (size_t)dim, sizeof(float));
    ds.y = calloc((size_t)rows, 1);
    if (idx == NULL || ds.x == NULL || ds.y == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < (size_t)rows; i++) {
        idx[i] = i;
        ds.y[i] = (uint8_t)(i % (size_t)classes);
        for (int j = 0; j < dim; j++)
            ds.x[i * (size_t)dim + (size_t)j] = (float)((i + (size_t)j) % 256) / 255.0f;
    }
    ret = fedge_shard_write(path, &ds, idx, (size_t)rows, FEDGE_SHARD_U8);
cleanup:
    free(idx);
    free(ds.x);
    free(ds.y);
    return ret;
}

/* The loader's work per row, on the trainer's own loader (cluster_loader.c,
 * no prefetch: its get is the thread's work): a u8 shard of ROW_FILE_ROWS
 * synthetic rows of `dim` inputs written to TMPDIR (else /tmp) and unlinked
 * once open, ROW_STEPS steps of `batch` rows (the keyed order, one pread per
 * row, the conversion); the median step over batch, the slowest rank's. */
#define ROW_FILE_ROWS 2048
#define ROW_STEPS 8
static int probe_row_read(int dim, int classes, int batch, fedge_plan_links *L)
{
    const char *dir = getenv("TMPDIR");
    char path[512];
    fedge_loader ld;
    double best = 0.0, all = 0.0, st[ROW_STEPS];
    int ret = FEDGE_OK, opened = 0, nst = 0;
    memset(&ld, 0, sizeof(ld));
    snprintf(path, sizeof(path), "%s/fedge-plan-%ld.shard", dir != NULL && *dir ? dir : "/tmp",
             (long)getpid());
    ret = synth_shard_write(path, dim, classes, ROW_FILE_ROWS);
    if (ret == FEDGE_OK) {
        ret = fedge_loader_open(&ld, path, 1, batch, 1, 0, 0);
        opened = ret == FEDGE_OK;
        unlink(path);
    }
    for (int step = 0; ret == FEDGE_OK && step <= ROW_STEPS; step++) { /* step 0 warms up */
        const float *x;
        const uint8_t *y;
        int rows = 0;
        const double t0 = now_s();
        ret = fedge_loader_get(&ld, (uint64_t)step, &x, &y, &rows);
        const double dt = (now_s() - t0) / (rows > 0 ? rows : 1);
        if (step > 0 && ret == FEDGE_OK)
            st[nst++] = dt;
    }
    if (nst > 0)
        best = fedge_plan_median(st, nst);
    if (opened)
        fedge_loader_close(&ld);
    int bad = ret != FEDGE_OK, any = 0;
    if (MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS
        || MPI_Allreduce(&best, &all, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (any)
        return ret != FEDGE_OK ? ret : FEDGE_ERR_IO;
    L->row_read_s = all;
    return FEDGE_OK;
}

#define LINK_TRIALS 6
static int probe_links(fedge_plan_links *L)
{
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    L->probe_ranks = world;
    const int big = 1 << 18; /* floats: 1 MiB */
    float *buf = calloc((size_t)big, sizeof(float));
    int ret = buf != NULL ? FEDGE_OK : FEDGE_ERR_NOMEM, any = 0;
    if (MPI_Allreduce(&ret, &any, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        ret = FEDGE_ERR_CLUSTER_COMM;
    if (ret != FEDGE_OK || any != FEDGE_OK) {
        free(buf);
        return ret != FEDGE_OK ? ret : any;
    }
    if (world == 1) {
        float *dst = malloc((size_t)big * sizeof(float));
        double t0 = now_s();
        for (int i = 0; dst != NULL && i < 20; i++)
            memcpy(dst, buf, (size_t)big * sizeof(float));
        double dt = now_s() - t0;
        free(dst);
        L->p2p_alpha = L->ar_alpha = 5e-6;
        L->p2p_beta = L->ar_beta = dt > 0 ? 20.0 * big * sizeof(float) / dt : 1e9;
        free(buf);
        return FEDGE_OK;
    }
    int rc = MPI_SUCCESS;
    const int counts[2] = {2, big}, reps[2] = {100, 10};
    double pp_t[2][LINK_TRIALS] = {{0}}, ar_t[2][LINK_TRIALS] = {{0}};
    for (int trial = 0; trial < LINK_TRIALS && rc == MPI_SUCCESS; trial++) /* the median counts */
    for (int s = 0; s < 2 && rc == MPI_SUCCESS; s++) {
        rc = MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (int i = 0; i < reps[s] && rc == MPI_SUCCESS && rank < 2; i++) {
            if (rank == 0) {
                rc = MPI_Send(buf, counts[s], MPI_FLOAT, 1, 7, MPI_COMM_WORLD);
                if (rc == MPI_SUCCESS)
                    rc = MPI_Recv(buf, counts[s], MPI_FLOAT, 1, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                rc = MPI_Recv(buf, counts[s], MPI_FLOAT, 0, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                if (rc == MPI_SUCCESS)
                    rc = MPI_Send(buf, counts[s], MPI_FLOAT, 0, 7, MPI_COMM_WORLD);
            }
        }
        double one_way = (MPI_Wtime() - t0) / reps[s] / 2.0;
        pp_t[s][trial] = one_way;
        if (rc == MPI_SUCCESS)
            rc = MPI_Barrier(MPI_COMM_WORLD);
        t0 = MPI_Wtime();
        for (int i = 0; i < reps[s] && rc == MPI_SUCCESS; i++)
            rc = MPI_Allreduce(MPI_IN_PLACE, buf, counts[s], MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double ar = (MPI_Wtime() - t0) / reps[s];
        ar_t[s][trial] = ar;
    }
    free(buf);
    if (rc != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    /* rank 0's figures for everyone */
    double v[4] = {fedge_plan_median(pp_t[0], LINK_TRIALS), fedge_plan_median(pp_t[1], LINK_TRIALS),
                   fedge_plan_median(ar_t[0], LINK_TRIALS), fedge_plan_median(ar_t[1], LINK_TRIALS)};
    if (MPI_Bcast(v, 4, MPI_DOUBLE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    const double bytes = (double)big * sizeof(float), ring = 2.0 * (world - 1) / world;
    L->p2p_alpha = v[0];
    L->p2p_beta = v[1] > v[0] ? bytes / (v[1] - v[0]) : 1e10;
    L->ar_alpha = v[2];
    L->ar_beta = v[3] > v[2] ? ring * bytes / (v[3] - v[2]) : 1e10;
    return FEDGE_OK;
}

/* ---- collectives at the layouts' own sizes ---------------------------- */

#define COLL_WANT_MAX 1024
#define COLL_GRID 12    /* sizes measured per (kind, group) when more are asked */
#define COLL_ROUNDS 12 /* rounds over all sizes, spread in time */
#define COLL_TRIALS 2  /* trials per size per round */
#define PP_EAGER_BYTES 4096.0

typedef struct {
    stage_cache *sc;
    fedge_plan_links *L;
    int collect;        /* 1: record the collective sizes asked for, time nothing */
    int n_want;
    fedge_plan_coll want[COLL_WANT_MAX];
} plan_ctx;

static int coll_cmp(const void *a, const void *b)
{
    const fedge_plan_coll *x = a, *y = b;
    if (x->kind != y->kind)
        return x->kind - y->kind;
    if (x->group != y->group)
        return x->group - y->group;
    return x->bytes < y->bytes ? -1 : x->bytes > y->bytes ? 1 : 0;
}

/* Seconds of one collective: an allreduce of `bytes` over `group` ranks or
 * a one-way message (group 2). While collecting, records the size. */
static int coll_time(plan_ctx *pc, int kind, int group, double bytes, double *out)
{
    *out = 0.0;
    if (bytes < 4.0)
        bytes = 4.0;
    if (pc->collect) {
        for (int i = 0; i < pc->n_want; i++)
            if (pc->want[i].kind == kind && pc->want[i].group == group
                && pc->want[i].bytes == bytes)
                return FEDGE_OK;
        if (pc->n_want >= COLL_WANT_MAX)
            return FEDGE_OK; /* read off the neighbouring sizes measured */
        pc->want[pc->n_want++] = (fedge_plan_coll){kind, group, bytes, 0.0};
        return FEDGE_OK;
    }
    const fedge_plan_links *L = pc->L;
    double xs[FEDGE_PLAN_MAX_COLL], ys[FEDGE_PLAN_MAX_COLL];
    int n = 0;
    for (int i = 0; i < L->n_coll; i++)
        if (L->coll[i].kind == kind && L->coll[i].group == group) {
            xs[n] = L->coll[i].bytes;
            ys[n++] = L->coll[i].s;
        }
    if (n == 0) { /* not measured (one rank, or a group the ranks at hand cannot form) */
        if (kind == FEDGE_PLAN_P2P)
            *out = L->p2p_alpha + bytes / L->p2p_beta;
        else
            *out = L->ar_alpha + 2.0 * (group - 1) / group * bytes / L->ar_beta;
        return FEDGE_OK;
    }
    *out = fedge_plan_loglog(xs, ys, n, bytes);
    return *out >= 0.0 ? FEDGE_OK : FEDGE_ERR_INTERNAL;
}

/* Chooses the sizes to measure: every size asked for, or COLL_GRID sizes
 * spaced evenly in log between the smallest and the largest of a (kind,
 * group) asked for more; past FEDGE_PLAN_MAX_COLL sizes in all, a group
 * keeps the alpha-beta fit. */
static int coll_choose(plan_ctx *pc)
{
    fedge_plan_links *L = pc->L;
    qsort(pc->want, (size_t)pc->n_want, sizeof(pc->want[0]), coll_cmp);
    L->n_coll = 0;
    L->n_coll_asked = pc->n_want;
    for (int i = 0; i < pc->n_want;) {
        int j = i;
        while (j < pc->n_want && pc->want[j].kind == pc->want[i].kind
               && pc->want[j].group == pc->want[i].group)
            j++;
        const int k = j - i, take = k <= COLL_GRID ? k : COLL_GRID;
        if (L->n_coll + take > FEDGE_PLAN_MAX_COLL) { /* this group keeps the alpha-beta fit */
            i = j;
            continue;
        }
        const double lo = log(pc->want[i].bytes), hi = log(pc->want[j - 1].bytes);
        for (int t = 0; t < take; t++) {
            fedge_plan_coll c = pc->want[i + t];
            if (k > COLL_GRID)
                c.bytes = 4.0 * ceil(exp(lo + (hi - lo) * t / (COLL_GRID - 1)) / 4.0);
            L->coll[L->n_coll++] = c;
        }
        i = j;
    }
    return FEDGE_OK;
}

/* Times every chosen size on all ranks at once: allreduces over groups of
 * `group` neighbouring ranks (all groups together, as a layout's TP or DP
 * groups run), messages ping-ponged between ranks 2i and 2i+1 (all pairs
 * together); the median of the COLL_ROUNDS rounds' medians of COLL_TRIALS
 * trials (the typical round), the slowest rank's. */
static int coll_probe(fedge_plan_links *L)
{
    int rank = 0, world = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    size_t max_floats = 1;
    for (int i = 0; i < L->n_coll; i++)
        if (L->coll[i].bytes / 4.0 > (double)max_floats)
            max_floats = (size_t)(L->coll[i].bytes / 4.0);
    float *buf = calloc(max_floats, sizeof(float));
    double *mine = calloc((size_t)L->n_coll + 1, sizeof(double));
    double *all = calloc((size_t)L->n_coll + 1, sizeof(double));
    double *tr = calloc(((size_t)L->n_coll + 1) * COLL_ROUNDS * COLL_TRIALS, sizeof(double));
    int bad = buf == NULL || mine == NULL || all == NULL || tr == NULL, any = 0, ret = FEDGE_OK;
    if (MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        ret = FEDGE_ERR_CLUSTER_COMM;
    else if (any)
        ret = FEDGE_ERR_NOMEM;
    MPI_Comm comm = MPI_COMM_NULL;
    int comm_group = 0, rc = MPI_SUCCESS;
    for (int round = 0; round < COLL_ROUNDS && ret == FEDGE_OK && rc == MPI_SUCCESS; round++)
    for (int i = 0; i < L->n_coll && ret == FEDGE_OK && rc == MPI_SUCCESS; i++) {
        const fedge_plan_coll *c = &L->coll[i];
        const int count = (int)(c->bytes / 4.0);
        const int reps = c->bytes < 65536.0 ? 10 : c->bytes < 1048576.0 ? 3 : 1;
        if (c->kind == FEDGE_PLAN_ALLREDUCE && c->group != comm_group) {
            if (comm != MPI_COMM_NULL)
                MPI_Comm_free(&comm);
            rc = MPI_Comm_split(MPI_COMM_WORLD, rank / c->group, rank, &comm);
            comm_group = c->group;
            if (rc != MPI_SUCCESS)
                break;
        }
        double *t = tr + (size_t)i * COLL_ROUNDS * COLL_TRIALS + (size_t)round * COLL_TRIALS;
        for (int trial = 0; trial < COLL_TRIALS && rc == MPI_SUCCESS; trial++) {
            rc = MPI_Barrier(MPI_COMM_WORLD);
            const double t0 = MPI_Wtime();
            if (c->kind == FEDGE_PLAN_ALLREDUCE) {
                for (int r = 0; r < reps && rc == MPI_SUCCESS; r++)
                    rc = MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, comm);
                t[trial] = (MPI_Wtime() - t0) / reps;
            } else {
                const int peer = rank ^ 1;
                for (int r = 0; r < reps && rc == MPI_SUCCESS && peer < world; r++) {
                    if (rank % 2 == 0) {
                        rc = MPI_Send(buf, count, MPI_FLOAT, peer, 9, MPI_COMM_WORLD);
                        if (rc == MPI_SUCCESS)
                            rc = MPI_Recv(buf, count, MPI_FLOAT, peer, 9, MPI_COMM_WORLD,
                                          MPI_STATUS_IGNORE);
                    } else {
                        rc = MPI_Recv(buf, count, MPI_FLOAT, peer, 9, MPI_COMM_WORLD,
                                      MPI_STATUS_IGNORE);
                        if (rc == MPI_SUCCESS)
                            rc = MPI_Send(buf, count, MPI_FLOAT, peer, 9, MPI_COMM_WORLD);
                    }
                }
                t[trial] = peer < world ? (MPI_Wtime() - t0) / reps / 2.0 : 0.0;
            }
        }
    }
    if (comm != MPI_COMM_NULL)
        MPI_Comm_free(&comm);
    if (ret == FEDGE_OK && rc != MPI_SUCCESS)
        ret = FEDGE_ERR_CLUSTER_COMM;
    for (int i = 0; ret == FEDGE_OK && i < L->n_coll; i++)
        mine[i] = fedge_plan_median_of_medians(tr + (size_t)i * COLL_ROUNDS * COLL_TRIALS,
                                               COLL_ROUNDS * COLL_TRIALS, COLL_TRIALS);
    if (ret == FEDGE_OK
        && MPI_Allreduce(mine, all, L->n_coll, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        ret = FEDGE_ERR_CLUSTER_COMM;
    for (int i = 0; ret == FEDGE_OK && i < L->n_coll; i++)
        L->coll[i].s = all[i] > 1e-9 ? all[i] : 1e-9;
    for (int i = 0; ret == FEDGE_OK && i < L->n_coll;) { /* sorted by kind, group, bytes */
        int j = i;
        double ys[FEDGE_PLAN_MAX_COLL];
        while (j < L->n_coll && L->coll[j].kind == L->coll[i].kind
               && L->coll[j].group == L->coll[i].group) {
            ys[j - i] = L->coll[j].s;
            j++;
        }
        fedge_plan_monotone(ys, j - i);
        for (int k = i; k < j; k++)
            L->coll[k].s = ys[k - i];
        i = j;
    }
    free(buf);
    free(mine);
    free(all);
    free(tr);
    return ret;
}

/* One pure data-parallel step of `rows` rows per rank on the trainer's own
 * cpu backend (its loops, its buffers, its collective), every rank at once:
 * the median of DP_PASSES passes for each compute phase and for the
 * gradient allreduce (from a barrier), each the slowest rank's: the step is
 * synchronous, it waits for its slowest rank, and a median resists the one
 * pass another job disturbed. The backend's operations
 * fail only on arguments, which are the same on every rank: a failure
 * inside a pass is every rank's. */
#define DP_PASSES 24
static int probe_dp_step(const fedge_model_spec *spec, int rows, fedge_plan_links *L)
{
    int rank = 0, world = 1, ret = FEDGE_OK, bad = 0, any = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    const size_t n = fedge_model_spec_param_count(spec);
    fedge_backend_config bc;
    fedge_backend *be = NULL;
    float *x = NULL;
    fedge_model m;
    fedge_rng rng;
    uint8_t *y = NULL;
    double mine[6] = {0}, all[6] = {0};
    memset(&bc, 0, sizeof(bc));
    bc.spec = *spec;
    bc.local_batch_max = rows;
    bc.precision = FEDGE_PREC_FP32;
    memset(&m, 0, sizeof(m));
    fedge_rng_seed(&rng, 1);
    ret = fedge_layout_init(&bc.layout, n, world, rank);
    if (ret == FEDGE_OK)
        ret = fedge_backend_create("cpu", &bc, &be);
    if (ret == FEDGE_OK)
        ret = fedge_model_init(&m, spec);
    if (ret == FEDGE_OK) /* the initialisation `init` gives: real activations, no denormals */
        ret = fedge_model_randomize(&m, &rng);
    x = calloc((size_t)rows * (size_t)spec->input_dim, sizeof(float));
    y = calloc((size_t)rows, 1);
    if (ret == FEDGE_OK && (x == NULL || y == NULL))
        ret = FEDGE_ERR_NOMEM;
    if (ret == FEDGE_OK) {
        for (size_t i = 0; i < (size_t)rows * (size_t)spec->input_dim; i++)
            x[i] = (float)(i % 255) * (1.0f / 255.0f);
        for (int i = 0; i < rows; i++)
            y[i] = (uint8_t)(i % spec->classes);
        ret = be->ops->set_params(be, m.params);
    }
    bad = ret != FEDGE_OK;
    if (MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        ret = FEDGE_ERR_CLUSTER_COMM;
    else if (any && ret == FEDGE_OK)
        ret = FEDGE_ERR_CLUSTER_COMM; /* another rank's failure */
    fedge_dense_shape sh;
    if (ret == FEDGE_OK)
        ret = fedge_dense_shape_of(spec, &sh);
    const fedge_sgd_config sgd = {1e-6f, 0.9f, 0.0f};
    double ph[5][DP_PASSES], ar[DP_PASSES];
    int nph = 0;
    const int share = L->share > 1 ? L->share : 1, passes = DP_PASSES * share;
    for (int pass = 0; pass <= passes && ret == FEDGE_OK; pass++) { /* pass 0 warms up */
        /* oversubscribed: one rank per core computes at a time (the model
         * multiplies by share); the allreduce always runs on all ranks */
        const int active = pass == 0 || my_turn(share, L->node_rank, pass % share);
        double loss = 0.0, t[8] = {0};
        int flag = 0;
        if (MPI_Barrier(MPI_COMM_WORLD) != MPI_SUCCESS)
            FAIL(FEDGE_ERR_CLUSTER_COMM);
        t[0] = now_s();
        if (active) {
            CHK(be->ops->load_batch(be, x, y, rows));
            t[1] = now_s();
            CHK(be->ops->forward(be, 1.0f / (float)(rows * world), &loss));
            t[2] = now_s();
            for (int l = sh.n_layers - 1; l >= 0; l--)
                CHK(be->ops->backward_layer(be, l));
            t[3] = now_s();
        }
        /* the allreduce from a barrier, as the other collectives are timed:
         * without it, it also held the other rank's late compute (a rank
         * slowed by another job), 3-16 ms against 1.2 on a quiet machine */
        if (MPI_Barrier(MPI_COMM_WORLD) != MPI_SUCCESS)
            FAIL(FEDGE_ERR_CLUSTER_COMM);
        t[4] = now_s();
        CHK(be->ops->grad_comm_start(be, 0, bc.layout.n_pad));
        CHK(be->ops->grad_comm_wait(be));
        t[5] = now_s();
        if (active) {
            CHK(be->ops->grad_nonfinite(be, &flag));
            t[6] = now_s();
            CHK(be->ops->update(be, &sgd, 1.0f));
        }
        t[7] = now_s();
        if (pass == 0)
            continue;
        if (pass <= DP_PASSES)
            ar[pass - 1] = t[5] - t[4];
        if (!active || nph >= DP_PASSES)
            continue;
        const double d[5] = {t[2] - t[1], t[3] - t[2], t[1] - t[0], t[7] - t[6], t[6] - t[5]};
        for (int k = 0; k < 5; k++)
            ph[k][nph] = d[k];
        nph++;
    }
    if (ret == FEDGE_OK) {
        for (int k = 0; k < 5 && nph > 0; k++)
            mine[k] = fedge_plan_median(ph[k], nph);
        mine[5] = fedge_plan_median(ar, DP_PASSES);
    }
cleanup:
    bad = ret != FEDGE_OK;
    fedge_backend_destroy(be);
    fedge_model_free(&m);
    free(x);
    free(y);
    if (MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS
        || MPI_Allreduce(mine, all, 6, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (any)
        return ret != FEDGE_OK ? ret : FEDGE_ERR_CLUSTER_COMM;
    L->dp_rows = rows;
    L->dp_fwd_s = all[0];
    L->dp_bwd_s = all[1];
    L->dp_copy_s = all[2];
    L->dp_update_s = all[3];
    L->dp_check_s = all[4];
    L->dp_ar_s = world > 1 ? all[5] : 0.0;
    return FEDGE_OK;
}

/* ---- trial steps: oversubscribed, the layouts are run, not modelled ---- */

#define TRIAL_S 0.2          /* the steps after the first span about this, by the model */
#define TRIAL_STEPS_MIN 20
#define TRIAL_STEPS_MAX 120
#define TRIAL_FILE_ROWS 2048

/* Each rank's inputs for the trial runs, in TMPDIR (else /tmp), named by its
 * pid (ranks on other nodes see other file systems): the model as `init`
 * makes it and a u8 shard of synthetic rows; the trainer opens them by
 * path, so they are unlinked only after the last trial. */
typedef struct {
    char model[512], data[512];
    int have_model, have_data;
} trial_files;

static int trial_files_make(const fedge_model_spec *spec, trial_files *tf)
{
    const char *dir = getenv("TMPDIR");
    const char *d = dir != NULL && *dir ? dir : "/tmp";
    uint8_t version[FEDGE_HASH_LEN];
    fedge_model m;
    fedge_rng rng;
    int ret = FEDGE_OK;
    memset(&m, 0, sizeof(m));
    snprintf(tf->model, sizeof(tf->model), "%s/fedge-plan-%ld.model", d, (long)getpid());
    snprintf(tf->data, sizeof(tf->data), "%s/fedge-plan-%ld-trial.shard", d, (long)getpid());
    fedge_rng_seed(&rng, 1);
    CHK(fedge_model_init(&m, spec));
    CHK(fedge_model_randomize(&m, &rng)); /* the initialisation `init` gives */
    tf->have_model = 1;
    CHK(fedge_model_save(&m, tf->model, version));
    tf->have_data = 1;
    CHK(synth_shard_write(tf->data, spec->input_dim, spec->classes, TRIAL_FILE_ROWS));
cleanup:
    fedge_model_free(&m);
    return ret;
}

static void trial_files_remove(trial_files *tf)
{
    if (tf->have_model)
        unlink(tf->model);
    if (tf->have_data)
        unlink(tf->data);
    tf->have_model = tf->have_data = 0;
}

/* Whole training steps of one layout on the ranks at hand, run by the
 * trainer itself (fedge_refine_run on the trial files, `refine`'s defaults:
 * the loader with its prefetch thread, the status agreements, the update,
 * 1F1B) and timed as `refine` times them: *mean_s the mean of the steps
 * after the first (fedge_plan_trial_mean_ms), *fast_s the fastest step,
 * rank 0's figures for all; *steps_run the steps run. With more ranks than cores the OS scheduler
 * decides who runs while a rank waits in MPI (Open MPI yields when
 * oversubscribed) and a loader thread wakes, which no per-operation model
 * captured (docs/BENCHMARKS.md, planner2); the mean over a whole window
 * counts every descheduling in it, as a user's run does, where the median
 * of short rounds dropped them (docs/CLUSTER.md, "The planner"). */
static int trial_steps(const trial_files *tf, int batch, const fedge_plan_layout *o,
                       double *mean_s, double *fast_s, int *steps_run)
{
    int rank = 0, steps = fedge_plan_trial_steps(o->predict_ms, TRIAL_S, TRIAL_STEPS_MIN,
                                                  TRIAL_STEPS_MAX);
    fedge_refine_config cfg;
    fedge_refine_summary sum;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (MPI_Bcast(&steps, 1, MPI_INT, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    fedge_refine_config_defaults(&cfg);
    cfg.model_in = tf->model;
    cfg.data_path = tf->data;
    cfg.model_out = NULL;
    cfg.steps = (uint64_t)steps;
    cfg.global_batch = batch;
    cfg.sgd.lr = 1e-6f; /* the weights barely move: no step turns non-finite */
    cfg.tp = o->tp;
    cfg.pp = o->pp;
    cfg.micro = o->micro;
    cfg.pp_schedule = FEDGE_PP_1F1B;
    int ret = fedge_refine_run(&cfg, &sum); /* collective; fails on every rank alike */
    if (ret != FEDGE_OK)
        return ret;
    double v[2] = {1e-3 * fedge_plan_trial_mean_ms(sum.seconds, sum.step_ms_first,
                                                   (int)sum.steps_run),
                   1e-3 * sum.step_ms_min};
    if (MPI_Bcast(v, 2, MPI_DOUBLE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    if (!(v[0] > 0.0))
        return FEDGE_ERR_INTERNAL;
    *mean_s = v[0];
    *fast_s = v[1];
    *steps_run = steps;
    return FEDGE_OK;
}

/* Ranks per node and the cores they may run on: the union of the node's
 * ranks' affinity masks (a rank bound to one core is not oversubscribed
 * when its peers are bound to others). */
static int probe_node(fedge_plan_links *L)
{
    MPI_Comm node;
    int nr = 1, me = 0, cores = 0, v[2], all[2];
    cpu_set_t set, uni;
    CPU_ZERO(&set);
    CPU_ZERO(&uni);
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node)
        != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    MPI_Comm_size(node, &nr);
    MPI_Comm_rank(node, &me);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        for (long i = 0; i < c && i < CPU_SETSIZE; i++)
            CPU_SET((int)i, &set);
    }
    int rc = MPI_Allreduce(&set, &uni, (int)sizeof(set), MPI_BYTE, MPI_BOR, node);
    MPI_Comm_free(&node);
    if (rc != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    cores = CPU_COUNT(&uni);
    v[0] = nr;
    v[1] = -cores;
    if (MPI_Allreduce(v, all, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
        return FEDGE_ERR_CLUSTER_COMM;
    L->node_ranks = all[0];
    L->cores = -all[1];
    L->node_rank = me;
    L->share = fedge_plan_share(L->node_ranks, L->cores);
    return FEDGE_OK;
}

/* ---- the step model ---------------------------------------------------- */

/* One micro-batch of `rows` on stage p (TP rank p->tp_i): forward (GEMMs,
 * elementwise work, row-parallel allreduces, the split softmax's two) and
 * backward (GEMMs, elementwise, column-parallel allreduces), split into
 * compute and communication; the boundary message sizes. */
typedef struct {
    double fwd_c, fwd_m, bwd_c, bwd_m;
    double upd_c; /* the SGD update of the stage's parameters, after its step */
    double send_bytes; /* to the next stage (its gradient comes back the same size) */
} stage_cost;

static int stage_time(plan_ctx *pc, const fedge_shard_plan *p, int rows, stage_cost *o)
{
    const fedge_plan_links *L = pc->L;
    const int T = p->tp;
    double t;
    memset(o, 0, sizeof(*o));
    if (!pc->collect) /* GEMMs and the loops around them, as the step runs them */
        CHK_T(stage_probe(pc->sc, L, p, rows, &o->fwd_c, &o->bwd_c, &o->upd_c));
    for (int l = p->l0; l < p->l1; l++) {
        if (T > 1 && p->mode[l] == FEDGE_TP_ROW) {
            CHK_T(coll_time(pc, FEDGE_PLAN_ALLREDUCE, T, rows * (double)p->sh.dims[l + 1] * 4.0,
                            &t));
            o->fwd_m += t;
        }
        if (T > 1 && p->mode[l] == FEDGE_TP_COL && l == p->sh.n_layers - 1) {
            /* split softmax: the row maxima (floats), the sums and label logits (doubles) */
            CHK_T(coll_time(pc, FEDGE_PLAN_ALLREDUCE, T, rows * 4.0, &t));
            o->fwd_m += t;
            CHK_T(coll_time(pc, FEDGE_PLAN_ALLREDUCE, T, rows * 16.0, &t));
            o->fwd_m += t;
        }
        if (T > 1 && p->mode[l] == FEDGE_TP_COL && l > 0) {
            CHK_T(coll_time(pc, FEDGE_PLAN_ALLREDUCE, T, rows * (double)p->sh.dims[l] * 4.0, &t));
            o->bwd_m += t;
        }
    }
    if (p->pp_i == 0)
        o->fwd_c += L->elem_s * (double)rows * p->sh.dims[0]; /* the input rows, copied in */
    if (p->pp_i < p->pp - 1)
        o->send_bytes = rows * (double)p->out_n[p->l1 - 1] * 4.0;
    return FEDGE_OK;
}

static int predict(plan_ctx *pc, const fedge_model_spec *spec, const fedge_dense_shape *sh,
                   int batch, int world, double budget_mb, fedge_plan_layout *o)
{
    const int R = batch / o->dp, M = o->micro, P = o->pp;
    const int rows = R / M;
    double comp_sum = 0.0, comm_sum = 0.0, t, upd_max = 0.0;
    fedge_pp_sim sim;
    size_t n_local_max = 0;
    memset(&sim, 0, sizeof(sim));
    o->fwd_ms = o->bwd_ms = 0.0;
    const int dp_measured = o->tp == 1 && P == 1 && M == 1 && pc->L->dp_rows == R;
    const int share = pc->L->share > 1 ? pc->L->share : 1;
    sim.schedule = FEDGE_PP_1F1B;
    sim.pp = P;
    sim.micro = M;
    for (int s = 0; s < P; s++) {
        fedge_shard_plan p;
        stage_cost c;
        CHK_T(fedge_shard_plan_make(sh, o->tp, o->tp - 1, P, s, &p));
        CHK_T(stage_time(pc, &p, rows, &c));
        if (dp_measured) { /* the trainer's own loops, measured (probe_dp_step) */
            c.fwd_c = pc->L->dp_fwd_s;
            c.bwd_c = pc->L->dp_bwd_s;
        }
        /* oversubscribed: compute serialised over the ranks sharing a core */
        sim.fwd[s] = fedge_plan_oversub_time(c.fwd_c, c.fwd_m, share);
        sim.bwd[s] = fedge_plan_oversub_time(c.bwd_c, c.bwd_m, share);
        if (s < P - 1) {
            CHK_T(coll_time(pc, FEDGE_PLAN_P2P, 2, c.send_bytes, &t));
            sim.send_fwd[s] = sim.send_bwd[s] = t;
            comm_sum += 2.0 * t;
        }
        /* Open MPI over shared memory sends up to its eager limit (4 KiB)
         * at once, larger messages only while the sender waits */
        if (s < P - 1 && c.send_bytes >= PP_EAGER_BYTES)
            sim.progress_in_wait = 1;
        o->fwd_ms = fmax(o->fwd_ms, 1e3 * M * sim.fwd[s]);
        o->bwd_ms = fmax(o->bwd_ms, 1e3 * M * sim.bwd[s]);
        comp_sum += share * (c.fwd_c + c.bwd_c);
        comm_sum += sim.fwd[s] + sim.bwd[s] - share * (c.fwd_c + c.bwd_c);
        if (p.n_local > n_local_max)
            n_local_max = p.n_local;
        upd_max = c.upd_c > upd_max ? c.upd_c : upd_max;
    }
    /* per step: the pure DP path agrees once (loss and status), the
     * model-parallel one four times (batch status, non-finite check, loss,
     * update) */
    const int mp_path = !(o->tp == 1 && o->pp == 1 && M == 1);
    double small = 0.0, dp = 0.0, pipe = 0.0;
    double busy[FEDGE_GRID_MAX_PP];
    CHK_T(coll_time(pc, FEDGE_PLAN_ALLREDUCE, world, 16.0, &small));
    small *= mp_path ? 4.0 : 1.0;
    /* as the trainer issues it (MPI_Iallreduce); oversubscribed, the
     * blocking allreduce's figure: the probe's passes in turns measured the
     * Iallreduce at 39 ms against the trainer's 4.6 ms (4 ranks, 2 cores) */
    if (o->dp > 1 && dp_measured && pc->L->probe_ranks == o->dp && share == 1)
        dp = pc->L->dp_ar_s;
    else if (o->dp > 1)
        CHK_T(coll_time(pc, FEDGE_PLAN_ALLREDUCE, o->dp, (double)n_local_max * 4.0, &dp));
    if (pc->collect)
        return FEDGE_OK;
    CHK_T(fedge_pp_simulate(&sim, &pipe, busy));
    o->bubble = 0.0;
    for (int s = 0; s < P && pipe > 0; s++)
        o->bubble += (1.0 - busy[s] / pipe) / P;
    /* read the rows, zero the gradients, check and update the parameters */
    double check_ms = 0.0;
    o->load_ms = 1e3 * pc->L->load_s * (double)R * sh->dims[0];
    /* the non-finite check goes with the status allreduces, as the trainer times it */
    o->update_ms = 1e3 * upd_max; /* probed with the stage, its buffers cold */
    check_ms = 1e3 * pc->L->check_s * (double)n_local_max * share;
    if (dp_measured) {
        o->load_ms += 1e3 * pc->L->dp_copy_s;
        o->update_ms = 1e3 * pc->L->dp_update_s;
        check_ms = 1e3 * pc->L->dp_check_s * share;
    }
    o->load_ms *= share;
    o->update_ms *= share;
    o->grad_ar_ms = 1e3 * dp;
    o->status_ms = 1e3 * small + check_ms;
    const double step_fixed = 1e-3 * (o->load_ms + o->update_ms + check_ms);
    o->pipe_ms = 1e3 * pipe;
    /* the loader threads (one per rank, prefetching the next step's rows)
     * run on the ranks' cores when none is spare: each core's share of
     * them lengthens the step (measured: --no-prefetch's load phase, 0.34
     * ms for 256 rows, 0.20 ms for 128) */
    o->loader_ms = 1e3 * fedge_plan_loader_time(pc->L->node_ranks, pc->L->cores, R,
                                                pc->L->row_read_s);
    o->predict_ms = 1e3 * (pipe + step_fixed + small + dp) + o->loader_ms;
    o->compute_ms = 1e3 * (comp_sum * M / P + step_fixed);
    o->comm_ms = 1e3 * (comm_sum * M / P + small + dp);
    fedge_memory_plan mp;
    if (!mp_path) {
        fedge_layout lo;
        CHK_T(fedge_layout_init(&lo, fedge_model_spec_param_count(spec), o->dp, 0));
        fedge_memory_plan_make(spec, &lo, (batch + o->dp - 1) / o->dp, FEDGE_PREC_FP32, 0, 0,
                               &mp);
    } else {
        CHK_T(fedge_mp_memory_max(sh, o->tp, o->pp, (R + M - 1) / M,
                                  fedge_pp_slots(FEDGE_PP_1F1B, M, P), &mp));
    }
    o->mem_bytes = mp.total;
    o->fits = !(budget_mb > 0) || (double)mp.total <= budget_mb * 1048576.0;
    return FEDGE_OK;
}

static int cmp_layout(const void *a, const void *b)
{
    const fedge_plan_layout *x = a, *y = b;
    return x->predict_ms < y->predict_ms ? -1 : x->predict_ms > y->predict_ms ? 1 : 0;
}

/* The candidate layouts (dp, tp, pp, micro), without predictions. */
static void enumerate(const fedge_dense_shape *sh, int batch, int world, fedge_plan_result *out)
{
    for (int tp = 1; tp <= world; tp++) {
        if (world % tp != 0)
            continue;
        for (int pp = 1; pp <= world / tp && pp <= sh->n_layers; pp++) {
            if ((world / tp) % pp != 0)
                continue;
            const int dp = world / (tp * pp);
            if (batch < dp)
                continue;
            const int micros[3] = {1, 2, 4};
            for (int mi = 0; mi < (pp > 1 ? 3 : 1); mi++) {
                const int M = pp > 1 ? pp * micros[mi] : 1;
                if (batch / dp < M || out->n >= FEDGE_PLAN_MAX)
                    continue;
                fedge_shard_plan probe;
                int ok = 1;
                for (int s = 0; s < pp && ok; s++)
                    ok = fedge_shard_plan_make(sh, tp, tp - 1, pp, s, &probe) == FEDGE_OK;
                if (!ok)
                    continue;
                fedge_plan_layout *o = &out->cand[out->n++];
                memset(o, 0, sizeof(*o));
                o->dp = dp;
                o->tp = tp;
                o->pp = pp;
                o->micro = M;
            }
        }
    }
}

int fedge_plan_run(const fedge_model_spec *spec, int batch, int world, double budget_mb,
                   fedge_plan_result *out)
{
    fedge_dense_shape sh;
    plan_ctx *pc = NULL;
    int ret = FEDGE_OK, probed = 1;
    memset(out, 0, sizeof(*out));
    out->choice = -1;
    if (spec == NULL || batch < 1 || world < 1)
        return FEDGE_ERR_INVALID_ARG;
    CHK_T(fedge_dense_shape_of(spec, &sh));
    MPI_Comm_size(MPI_COMM_WORLD, &probed);
    CHK_T(probe_node(&out->links));
    CHK_T(probe_links(&out->links));
    CHK_T(probe_elementwise(&out->links));
    CHK_T(probe_row_read(sh.dims[0], spec->classes, batch, &out->links));
    if (batch >= world)
        CHK_T(probe_dp_step(spec, batch / world, &out->links));
    pc = calloc(1, sizeof(*pc));
    if (pc == NULL)
        return FEDGE_ERR_NOMEM;
    pc->sc = calloc(1, sizeof(*pc->sc));
    if (pc->sc == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    pc->L = &out->links;
    enumerate(&sh, batch, world, out);
    /* the collectives' sizes, measured on the ranks at hand: a group larger
     * than them (plan --ranks) keeps the alpha-beta fit */
    pc->collect = 1;
    for (int i = 0; i < out->n; i++)
        CHK(predict(pc, spec, &sh, batch, world, budget_mb, &out->cand[i]));
    {
        int keep = 0;
        for (int i = 0; i < pc->n_want; i++)
            if (probed > 1 && pc->want[i].group <= probed && probed % pc->want[i].group == 0)
                pc->want[keep++] = pc->want[i];
        pc->n_want = keep;
    }
    CHK(coll_choose(pc));
    CHK(coll_probe(&out->links));
    pc->collect = 0;
    for (int i = 0; i < out->n; i++)
        CHK(predict(pc, spec, &sh, batch, world, budget_mb, &out->cand[i]));
    if (out->links.share > 1 && world == probed) {
        trial_files tf;
        int bad = 0, any = 0;
        memset(&tf, 0, sizeof(tf));
        ret = trial_files_make(spec, &tf);
        bad = ret != FEDGE_OK;
        if (MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS)
            ret = FEDGE_ERR_CLUSTER_COMM;
        else if (any && ret == FEDGE_OK)
            ret = FEDGE_ERR_IO;
        for (int i = 0; ret == FEDGE_OK && i < out->n; i++) {
            fedge_plan_layout *o = &out->cand[i];
            double mean_s = 0.0, fast_s = 0.0;
            int steps = 0;
            if (!o->fits)
                continue;
            ret = trial_steps(&tf, batch, o, &mean_s, &fast_s, &steps);
            if (ret == FEDGE_OK) {
                o->trial = 1;
                o->model_ms = o->predict_ms;
                o->predict_ms = 1e3 * mean_s; /* the loader threads ran in it */
                o->trial_fast_ms = 1e3 * fast_s;
                o->trial_steps = steps;
            }
        }
        trial_files_remove(&tf);
        if (ret != FEDGE_OK)
            goto cleanup;
    }
    qsort(out->cand, (size_t)out->n, sizeof(out->cand[0]), cmp_layout);
    for (int i = 0; i < out->n; i++)
        if (out->cand[i].fits) {
            out->choice = i;
            break;
        }
cleanup:
    if (pc != NULL)
        free(pc->sc);
    free(pc);
    return ret;
}

void fedge_plan_print(FILE *f, const fedge_plan_result *r, double budget_mb)
{
    const fedge_plan_links *L = &r->links;
    fprintf(f, "# probes on %d rank(s): p2p %.1f us + %.2f GB/s, allreduce %.1f us + %.2f GB/s "
               "(ring bus); memory budget %s\n",
            L->probe_ranks, 1e6 * L->p2p_alpha, L->p2p_beta / 1e9, 1e6 * L->ar_alpha,
            L->ar_beta / 1e9, budget_mb > 0 ? "per rank" : "none");
    fprintf(f, "# per element: bias+relu %.2f ns, exp %.2f ns, sgd %.2f ns, load %.2f ns, "
               "non-finite check %.2f ns; loader per row: %.2f us%s\n",
            1e9 * L->elem_s, 1e9 * L->exp_s, 1e9 * L->sgd_s, 1e9 * L->load_s, 1e9 * L->check_s,
            1e6 * L->row_read_s,
            L->node_ranks >= L->cores ? " (no core spare for the loader threads: charged to "
                                        "the step)" : "");
    if (L->share > 1)
        fprintf(f, "# oversubscribed: %d ranks on a node, %d cores (sched_getaffinity): the model "
                   "has compute x %d (probed one rank per core at a time) and collectives as "
                   "measured on all %d ranks at once, but the OS scheduler decides who runs while "
                   "a rank waits in MPI or a loader thread wakes; each layout that fits is run by "
                   "the trainer (loader and prefetch included) for %d-%d trial steps (about %.0f "
                   "ms by the model) and predicted by the mean of the steps after the first\n",
                L->node_ranks, L->cores, L->share, L->probe_ranks, TRIAL_STEPS_MIN,
                TRIAL_STEPS_MAX, 1e3 * TRIAL_S);
    if (L->dp_rows > 0)
        fprintf(f, "# data-parallel step on the trainer's cpu backend, %d rows per rank: forward "
                   "%.3f ms, backward %.3f ms, copy-in %.3f ms, non-finite check %.3f ms, update "
                   "%.3f ms, gradient allreduce %.3f ms\n",
                L->dp_rows, 1e3 * L->dp_fwd_s, 1e3 * L->dp_bwd_s, 1e3 * L->dp_copy_s,
                1e3 * L->dp_check_s, 1e3 * L->dp_update_s, 1e3 * L->dp_ar_s);
    fprintf(f, "# collectives at the layouts' sizes: %d distinct, %d measured (the median of %d "
               "rounds' medians of %d trials, slowest rank; log-log interpolation between)\n",
            L->n_coll_asked, L->n_coll, COLL_ROUNDS, COLL_TRIALS);
    for (int i = 0; i < L->n_coll;) {
        const fedge_plan_coll *c = &L->coll[i];
        if (c->kind == FEDGE_PLAN_P2P)
            fprintf(f, "#   message:");
        else
            fprintf(f, "#   allreduce over %d:", c->group);
        int j = i;
        for (; j < L->n_coll && L->coll[j].kind == c->kind && L->coll[j].group == c->group; j++)
            fprintf(f, " %.0fB=%.1fus", L->coll[j].bytes, 1e6 * L->coll[j].s);
        fprintf(f, "\n");
        i = j;
    }
    fprintf(f, "# %3s %3s %3s %5s %12s %11s %9s %8s %12s %5s\n", "dp", "tp", "pp", "micro",
            "predict_ms", "compute_ms", "comm_ms", "bubble", "mem_bytes", "fits");
    for (int i = 0; i < r->n; i++) {
        const fedge_plan_layout *o = &r->cand[i];
        char note[96] = "";
        if (o->trial)
            snprintf(note, sizeof(note), "  trial steps (%d run, fastest %.3f; model %.3f)",
                     o->trial_steps, o->trial_fast_ms, o->model_ms);
        else if (L->share > 1 && o->fits)
            snprintf(note, sizeof(note), "  model, unverified: oversubscribed, %s",
                     "not probed on these ranks");
        fprintf(f, "  %3d %3d %3d %5d %12.3f %11.3f %9.3f %8.3f %12zu %5s%s%s\n", o->dp, o->tp,
                o->pp, o->micro, o->predict_ms, o->compute_ms, o->comm_ms, o->bubble,
                o->mem_bytes, o->fits ? "yes" : "no", note, i == r->choice ? "  <- chosen" : "");
    }
    fprintf(f, "# terms (ms): %3s %3s %3s %5s %8s %8s %8s %8s %8s %8s %8s %8s\n", "dp", "tp",
            "pp", "micro", "forward", "backward", "grad_ar", "status", "update", "load",
            "pipeline", "loader");
    for (int i = 0; i < r->n; i++) {
        const fedge_plan_layout *o = &r->cand[i];
        fprintf(f,
                "# terms (ms): %3d %3d %3d %5d %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f\n",
                o->dp, o->tp, o->pp, o->micro, o->fwd_ms, o->bwd_ms, o->grad_ar_ms, o->status_ms,
                o->update_ms, o->load_ms, o->pipe_ms, o->loader_ms);
    }
}
