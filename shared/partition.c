/* partition.c — IID, Dirichlet label-skew and quantity-skew client splits.
 *
 * Dirichlet follows the common FL benchmarks (Hsu et al. 2019; NIID-Bench,
 * Li et al. 2022): for each class, proportions p ~ Dir(beta) over clients,
 * zeroed for clients that already hold n / N rows, split the shuffled class
 * rows at the cumulative proportions; resample until every client holds
 * min_size rows. After PARTITION_MAX_ATTEMPTS draws (fewer for very many
 * clients, to bound the time) the last draw is repaired by moving rows from
 * the largest clients instead, so the call always terminates. Quantity skew draws client sizes ~ Dir(beta) the same
 * way and deals a shuffled copy of the rows.
 *
 * Label-quantity skew (#C = k) and feature-noise skew follow NIID-Bench's
 * partition code: client i takes label i % K, then k - 1 distinct labels by
 * rejection (NIID-Bench can leave a label unheld when N < K; fedge first deals
 * labels N..K-1 round-robin so none is); the noise std of client i is
 * sigma * i / n_clients. */
#include "partition.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "rng.h"
#include "shard.h"

#define PARTITION_MAX_CLIENTS 100000
#define PARTITION_MAX_CLASSES 256
#define PARTITION_MAX_ATTEMPTS 200
#define PARTITION_MAX_DRAWS 2e7

int fedge_partition_parse_kind(const char *text, fedge_partition_kind *out)
{
    if (!text || !out)
        return FEDGE_ERR_INVALID_ARG;
    if (strcmp(text, "iid") == 0)
        *out = FEDGE_PARTITION_IID;
    else if (strcmp(text, "dirichlet") == 0)
        *out = FEDGE_PARTITION_DIRICHLET;
    else if (strcmp(text, "quantity") == 0)
        *out = FEDGE_PARTITION_QUANTITY;
    else if (strcmp(text, "labels") == 0)
        *out = FEDGE_PARTITION_LABELS;
    else if (strcmp(text, "noise") == 0)
        *out = FEDGE_PARTITION_NOISE;
    else
        return FEDGE_ERR_INVALID_ARG;
    return FEDGE_OK;
}

static void shuffle(size_t *a, size_t n, fedge_rng *rng)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = fedge_rng_below(rng, (uint32_t)i);
        size_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

/* log of a Gamma(shape, 1) draw. Below shape 1 it applies the boost
 * G(a) = G(a + 1) * U^(1/a) in log space: for a = 1e-5, U^(1/a) is about
 * e^-100000, which underflows to 0 as a double but is an ordinary log. */
static double log_gamma_draw(fedge_rng *rng, double shape)
{
    if (shape >= 1.0)
        return log(fedge_rng_gamma(rng, shape));
    double u;
    do
        u = fedge_rng_uniform_d(rng);
    while (u == 0.0);
    return log(fedge_rng_gamma(rng, shape + 1.0)) + log(u) / shape;
}

/* p[0..n) ~ Dir(beta), with p[j] forced to 0 where mask[j] (if mask is set;
 * a mask over every client is ignored). Normalised by log-sum-exp, so the
 * largest draw is exp(0) = 1 and the sum never underflows whatever beta
 * (>= FEDGE_PARTITION_MIN_BETA). */
static void dirichlet(fedge_rng *rng, double beta, int n, const unsigned char *mask, double *p)
{
    double top = -INFINITY, masked_top = -INFINITY;
    for (int j = 0; j < n; j++) {
        p[j] = log_gamma_draw(rng, beta);
        if (p[j] > top)
            top = p[j];
        if ((!mask || !mask[j]) && p[j] > masked_top)
            masked_top = p[j];
    }
    int use_mask = mask && isfinite(masked_top);
    double m = use_mask ? masked_top : top;
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
        p[j] = (use_mask && mask[j]) || !isfinite(m) ? 0.0 : exp(p[j] - m);
        sum += p[j];
    }
    if (!(sum > 0.0) || !isfinite(sum)) {
        for (int j = 0; j < n; j++)
            p[j] = 1.0;
        sum = n;
    }
    for (int j = 0; j < n; j++)
        p[j] /= sum;
}

/* counts[j] = rows of `total` that proportion p[j] gets: cuts at
 * floor(cumsum(p) * total), the last client takes the remainder. */
static void split_counts(const double *p, int n, size_t total, size_t *counts)
{
    double cum = 0.0;
    size_t prev = 0;
    for (int j = 0; j < n; j++) {
        size_t cut;
        cum += p[j];
        if (j == n - 1) {
            cut = total;
        } else {
            double c = floor(cum * (double)total);
            cut = c <= 0.0 ? 0 : c >= (double)total ? total : (size_t)c;
            if (cut < prev)
                cut = prev;
        }
        counts[j] = cut - prev;
        prev = cut;
    }
}

static size_t min_of(const size_t *a, int n)
{
    size_t m = a[0];
    for (int j = 1; j < n; j++)
        if (a[j] < m)
            m = a[j];
    return m;
}

/* Max-heap of client ids by size (ties: lower id first). */
static int heap_above(const size_t *sizes, int a, int b)
{
    return sizes[a] > sizes[b] || (sizes[a] == sizes[b] && a < b);
}

static void heap_sift_down(int *heap, int len, int at, const size_t *sizes)
{
    for (;;) {
        int best = at, l = 2 * at + 1, r = l + 1;
        if (l < len && heap_above(sizes, heap[l], heap[best]))
            best = l;
        if (r < len && heap_above(sizes, heap[r], heap[best]))
            best = r;
        if (best == at)
            return;
        int t = heap[at];
        heap[at] = heap[best];
        heap[best] = t;
        at = best;
    }
}

/* Brings every client to min_size by moving rows from the currently largest
 * client. With `counts` (class x client, Dirichlet), rows move from the
 * donor's most frequent class, which keeps the donor's skew. The caller has
 * checked total >= n * min_size, so the largest client always has spare. */
static int repair(size_t *sizes, int n, size_t min_size, size_t *counts, int n_classes)
{
    int *heap = malloc((size_t)n * sizeof *heap), len = 0;
    if (!heap)
        return FEDGE_ERR_NOMEM;
    /* Short clients only ever grow to min_size, so they never donate. */
    for (int j = 0; j < n; j++)
        if (sizes[j] >= min_size)
            heap[len++] = j;
    for (int i = len / 2 - 1; i >= 0; i--)
        heap_sift_down(heap, len, i, sizes);

    for (int j = 0; j < n; j++) {
        while (sizes[j] < min_size) {
            int d = heap[0];
            size_t spare = sizes[d] - min_size, need = min_size - sizes[j];
            size_t t = spare < need ? spare : need;
            if (counts) {
                int kb = 0;
                for (int k = 1; k < n_classes; k++)
                    if (counts[(size_t)k * n + d] > counts[(size_t)kb * n + d])
                        kb = k;
                if (counts[(size_t)kb * n + d] < t)
                    t = counts[(size_t)kb * n + d];
                counts[(size_t)kb * n + d] -= t;
                counts[(size_t)kb * n + j] += t;
            }
            sizes[d] -= t;
            sizes[j] += t;
            heap_sift_down(heap, len, 0, sizes);
        }
    }
    free(heap);
    return FEDGE_OK;
}

static int alloc_clients(fedge_partition *out, int n_clients)
{
    out->n_clients = n_clients;
    out->sizes = calloc((size_t)n_clients, sizeof *out->sizes);
    out->indices = calloc((size_t)n_clients, sizeof *out->indices);
    return out->sizes && out->indices ? FEDGE_OK : FEDGE_ERR_NOMEM;
}

static int alloc_client_rows(fedge_partition *out, const size_t *sizes)
{
    for (int j = 0; j < out->n_clients; j++) {
        out->sizes[j] = sizes[j];
        out->indices[j] = malloc(sizes[j] * sizeof(size_t));
        if (!out->indices[j])
            return FEDGE_ERR_NOMEM;
    }
    return FEDGE_OK;
}

static int make_iid(const fedge_dataset *ds, int n_clients, fedge_rng *rng, fedge_partition *out)
{
    int ret = FEDGE_OK;
    size_t *perm = NULL, *sizes = NULL;
    const size_t n = ds->n;

    perm = malloc(n * sizeof *perm);
    sizes = malloc((size_t)n_clients * sizeof *sizes);
    if (!perm || !sizes)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    shuffle(perm, n, rng);
    for (int j = 0; j < n_clients; j++)
        sizes[j] = n / (size_t)n_clients + ((size_t)j < n % (size_t)n_clients);
    CHK(alloc_client_rows(out, sizes));
    for (size_t i = 0; i < n; i++)
        out->indices[i % (size_t)n_clients][i / (size_t)n_clients] = perm[i];

cleanup:
    free(perm);
    free(sizes);
    return ret;
}

static int make_quantity(const fedge_dataset *ds, const fedge_partition_config *cfg,
                         size_t min_size, fedge_rng *rng, fedge_partition *out)
{
    int ret = FEDGE_OK;
    const int nc = cfg->n_clients;
    const size_t n = ds->n;
    size_t *perm = NULL, *sizes = NULL;
    double *p = NULL;

    perm = malloc(n * sizeof *perm);
    sizes = malloc((size_t)nc * sizeof *sizes);
    p = malloc((size_t)nc * sizeof *p);
    if (!perm || !sizes || !p)
        FAIL(FEDGE_ERR_NOMEM);

    int ok = 0;
    for (int attempt = 0; attempt < PARTITION_MAX_ATTEMPTS && !ok; attempt++) {
        dirichlet(rng, cfg->beta, nc, NULL, p);
        split_counts(p, nc, n, sizes);
        ok = min_of(sizes, nc) >= min_size;
    }
    if (!ok)
        CHK(repair(sizes, nc, min_size, NULL, 0));

    for (size_t i = 0; i < n; i++)
        perm[i] = i;
    shuffle(perm, n, rng);
    CHK(alloc_client_rows(out, sizes));
    size_t at = 0;
    for (int j = 0; j < nc; j++) {
        memcpy(out->indices[j], perm + at, sizes[j] * sizeof(size_t));
        at += sizes[j];
    }

cleanup:
    free(perm);
    free(sizes);
    free(p);
    return ret;
}

/* by_class: the rows grouped by class (counting sort), each class shuffled
 * once; class k's rows are by_class[class_start[k] .. class_start[k + 1]).
 * class_start (K + 1) must come zeroed. */
static int group_by_class(const fedge_dataset *ds, fedge_rng *rng, size_t *by_class,
                          size_t *class_start)
{
    const int K = ds->n_classes;
    size_t *cursor = calloc((size_t)K, sizeof *cursor);
    if (!cursor)
        return FEDGE_ERR_NOMEM;
    for (size_t i = 0; i < ds->n; i++)
        class_start[ds->y[i] + 1]++;
    for (int k = 0; k < K; k++)
        class_start[k + 1] += class_start[k];
    for (size_t i = 0; i < ds->n; i++)
        by_class[class_start[ds->y[i]] + cursor[ds->y[i]]++] = i;
    for (int k = 0; k < K; k++)
        shuffle(by_class + class_start[k], class_start[k + 1] - class_start[k], rng);
    free(cursor);
    return FEDGE_OK;
}

static int make_dirichlet(const fedge_dataset *ds, const fedge_partition_config *cfg,
                          size_t min_size, fedge_rng *rng, fedge_partition *out)
{
    int ret = FEDGE_OK;
    const int nc = cfg->n_clients, K = ds->n_classes;
    const size_t n = ds->n;
    size_t *by_class = NULL, *class_start = NULL, *counts = NULL, *sizes = NULL;
    size_t *fill = NULL;
    double *p = NULL;
    unsigned char *full = NULL;

    by_class = malloc(n * sizeof *by_class);
    class_start = calloc((size_t)K + 1, sizeof *class_start);
    counts = malloc((size_t)K * (size_t)nc * sizeof *counts);
    sizes = malloc((size_t)nc * sizeof *sizes);
    fill = calloc((size_t)nc, sizeof *fill);
    p = malloc((size_t)nc * sizeof *p);
    full = malloc((size_t)nc);
    if (!by_class || !class_start || !counts || !sizes || !fill || !p || !full)
        FAIL(FEDGE_ERR_NOMEM);

    CHK(group_by_class(ds, rng, by_class, class_start));

    const double fair_share = (double)n / nc;
    /* Bound the gamma draws (K * nc per attempt) for very many clients. */
    const double draws = (double)K * nc;
    const int max_attempts = draws * PARTITION_MAX_ATTEMPTS <= PARTITION_MAX_DRAWS
                                 ? PARTITION_MAX_ATTEMPTS
                                 : draws >= PARTITION_MAX_DRAWS ? 1
                                                                : (int)(PARTITION_MAX_DRAWS / draws);
    int ok = 0;
    for (int attempt = 0; attempt < max_attempts && !ok; attempt++) {
        memset(sizes, 0, (size_t)nc * sizeof *sizes);
        for (int k = 0; k < K; k++) {
            size_t class_n = class_start[k + 1] - class_start[k];
            for (int j = 0; j < nc; j++)
                full[j] = (double)sizes[j] >= fair_share;
            dirichlet(rng, cfg->beta, nc, full, p);
            split_counts(p, nc, class_n, counts + (size_t)k * nc);
            for (int j = 0; j < nc; j++)
                sizes[j] += counts[(size_t)k * nc + j];
        }
        ok = min_of(sizes, nc) >= min_size;
    }
    if (!ok)
        CHK(repair(sizes, nc, min_size, counts, K));

    CHK(alloc_client_rows(out, sizes));
    for (int k = 0; k < K; k++) {
        size_t at = class_start[k];
        for (int j = 0; j < nc; j++) {
            size_t c = counts[(size_t)k * nc + j];
            memcpy(out->indices[j] + fill[j], by_class + at, c * sizeof(size_t));
            fill[j] += c;
            at += c;
        }
    }
    /* Mix the classes within each client, for readers that do not shuffle. */
    for (int j = 0; j < nc; j++)
        shuffle(out->indices[j], out->sizes[j], rng);

cleanup:
    free(by_class);
    free(class_start);
    free(counts);
    free(sizes);
    free(fill);
    free(p);
    free(full);
    return ret;
}

/* Label-quantity skew #C = k: held[j * K + c] says client j holds class c;
 * class c's rows are dealt in contiguous runs to its holders in client
 * order, the first (rows % holders) of them one row more. */
static int make_labels(const fedge_dataset *ds, const fedge_partition_config *cfg,
                       size_t min_size, fedge_rng *rng, fedge_partition *out)
{
    int ret = FEDGE_OK;
    const int nc = cfg->n_clients, K = ds->n_classes, k = cfg->classes_per_client;
    size_t *by_class = NULL, *class_start = NULL, *holders = NULL, *sizes = NULL;
    unsigned char *held = NULL;

    by_class = malloc(ds->n * sizeof *by_class);
    class_start = calloc((size_t)K + 1, sizeof *class_start);
    holders = calloc((size_t)K, sizeof *holders);
    sizes = calloc((size_t)nc, sizeof *sizes);
    held = calloc((size_t)nc * (size_t)K, 1);
    if (!by_class || !class_start || !holders || !sizes || !held)
        FAIL(FEDGE_ERR_NOMEM);

    for (int j = 0; j < nc; j++)
        held[(size_t)j * K + j % K] = 1;
    /* Fewer clients than labels: labels nc..K-1, shuffled, are dealt
     * round-robin first, so every label is held when nc * k >= K. */
    int *rest = NULL;
    int n_rest = K > nc ? K - nc : 0;
    if (n_rest > 0 && (long)nc * k >= K) {
        rest = malloc((size_t)n_rest * sizeof *rest);
        if (!rest)
            FAIL(FEDGE_ERR_NOMEM);
        for (int i = 0; i < n_rest; i++)
            rest[i] = nc + i;
        for (int i = n_rest; i > 1; i--) {
            int r = (int)fedge_rng_below(rng, (uint32_t)i), t = rest[i - 1];
            rest[i - 1] = rest[r];
            rest[r] = t;
        }
        for (int i = 0; i < n_rest; i++)
            held[(size_t)(i % nc) * K + rest[i]] = 1;
        free(rest);
    }
    for (int j = 0; j < nc; j++) {
        unsigned char *h = held + (size_t)j * K;
        int got = 0;
        for (int c = 0; c < K; c++)
            got += h[c];
        while (got < k) {
            uint32_t c = fedge_rng_below(rng, (uint32_t)K);
            if (!h[c]) {
                h[c] = 1;
                got++;
            }
        }
        for (int c = 0; c < K; c++)
            holders[c] += h[c];
    }
    CHK(group_by_class(ds, rng, by_class, class_start));
    for (int c = 0; c < K; c++) {
        size_t rows = class_start[c + 1] - class_start[c], rank = 0;
        for (int j = 0; j < nc; j++)
            if (held[(size_t)j * K + c])
                sizes[j] += rows / holders[c] + (rank++ < rows % holders[c]);
    }
    if (min_of(sizes, nc) < min_size)
        FAIL(FEDGE_ERR_RANGE);

    CHK(alloc_client_rows(out, sizes));
    memset(sizes, 0, (size_t)nc * sizeof *sizes); /* now the fill level */
    for (int c = 0; c < K; c++) {
        size_t rows = class_start[c + 1] - class_start[c], at = class_start[c], rank = 0;
        for (int j = 0; j < nc; j++) {
            if (!held[(size_t)j * K + c])
                continue;
            size_t take = rows / holders[c] + (rank++ < rows % holders[c]);
            memcpy(out->indices[j] + sizes[j], by_class + at, take * sizeof(size_t));
            sizes[j] += take;
            at += take;
        }
    }
    for (int j = 0; j < nc; j++)
        shuffle(out->indices[j], out->sizes[j], rng);

cleanup:
    free(by_class);
    free(class_start);
    free(holders);
    free(sizes);
    free(held);
    return ret;
}

int fedge_partition_make(const fedge_dataset *ds, const fedge_partition_config *cfg,
                         fedge_partition *out)
{
    int ret = FEDGE_OK;
    fedge_rng rng;

    if (!out)
        return FEDGE_ERR_INVALID_ARG;
    memset(out, 0, sizeof *out);
    if (!ds || !cfg || !ds->y || ds->n == 0)
        return FEDGE_ERR_INVALID_ARG;
    if (cfg->kind != FEDGE_PARTITION_IID && cfg->kind != FEDGE_PARTITION_DIRICHLET &&
        cfg->kind != FEDGE_PARTITION_QUANTITY && cfg->kind != FEDGE_PARTITION_LABELS &&
        cfg->kind != FEDGE_PARTITION_NOISE)
        return FEDGE_ERR_INVALID_ARG;
    if (cfg->n_clients < 1 || cfg->n_clients > PARTITION_MAX_CLIENTS)
        return FEDGE_ERR_RANGE;
    if ((cfg->kind == FEDGE_PARTITION_DIRICHLET || cfg->kind == FEDGE_PARTITION_QUANTITY) &&
        !(cfg->beta >= FEDGE_PARTITION_MIN_BETA && isfinite(cfg->beta)))
        return FEDGE_ERR_RANGE;
    if (ds->n > FEDGE_DATASET_MAX_ROWS || ds->n_classes < 1 ||
        ds->n_classes > PARTITION_MAX_CLASSES)
        return FEDGE_ERR_RANGE;
    if (cfg->kind == FEDGE_PARTITION_LABELS &&
        (cfg->classes_per_client < 1 || cfg->classes_per_client > ds->n_classes))
        return FEDGE_ERR_RANGE;
    if (cfg->kind == FEDGE_PARTITION_NOISE &&
        !(cfg->noise_sigma >= 0.0 && isfinite(cfg->noise_sigma)))
        return FEDGE_ERR_RANGE;
    for (size_t i = 0; i < ds->n; i++)
        if (ds->y[i] >= ds->n_classes)
            return FEDGE_ERR_DATA_LABEL;
    /* Every client gets at least one row even when min_size is 0. */
    const size_t min_size = cfg->min_size > 0 ? cfg->min_size : 1;
    if (min_size > ds->n / (size_t)cfg->n_clients)
        return FEDGE_ERR_RANGE;

    fedge_rng_seed(&rng, cfg->seed);
    CHK(alloc_clients(out, cfg->n_clients));
    switch (cfg->kind) {
    case FEDGE_PARTITION_IID:
    case FEDGE_PARTITION_NOISE: CHK(make_iid(ds, cfg->n_clients, &rng, out)); break;
    case FEDGE_PARTITION_DIRICHLET: CHK(make_dirichlet(ds, cfg, min_size, &rng, out)); break;
    case FEDGE_PARTITION_QUANTITY: CHK(make_quantity(ds, cfg, min_size, &rng, out)); break;
    case FEDGE_PARTITION_LABELS: CHK(make_labels(ds, cfg, min_size, &rng, out)); break;
    }

cleanup:
    if (ret != FEDGE_OK)
        fedge_partition_free(out);
    return ret;
}

int fedge_partition_client_data(const fedge_dataset *ds, const fedge_partition *p,
                                const fedge_partition_config *cfg, int client, int clip_u8,
                                fedge_dataset *out)
{
    int ret = FEDGE_OK;
    fedge_dataset d = {0};
    fedge_rng base, rng;

    if (!ds || !p || !cfg || !out || !ds->x || !ds->y || client < 0 || client >= p->n_clients ||
        !p->sizes || !p->indices)
        return FEDGE_ERR_INVALID_ARG;
    if (ds->dim < 1 || (size_t)ds->dim > FEDGE_DATASET_MAX_DIM)
        return FEDGE_ERR_RANGE;
    if (cfg->kind == FEDGE_PARTITION_NOISE &&
        !(cfg->noise_sigma >= 0.0 && isfinite(cfg->noise_sigma)))
        return FEDGE_ERR_RANGE;
    const size_t n = p->sizes[client], dim = (size_t)ds->dim;
    if (n == 0 || n > ds->n)
        return FEDGE_ERR_RANGE;
    const double std = cfg->kind == FEDGE_PARTITION_NOISE
                           ? cfg->noise_sigma * client / p->n_clients
                           : 0.0;

    d.n = n;
    d.dim = ds->dim;
    d.n_classes = ds->n_classes;
    d.x = malloc(n * dim * sizeof *d.x);
    d.y = malloc(n);
    if (!d.x || !d.y)
        FAIL(FEDGE_ERR_NOMEM);
    fedge_rng_seed(&base, cfg->seed);
    fedge_rng_split(&base, (uint64_t)client, &rng);
    for (size_t i = 0; i < n; i++) {
        size_t row = p->indices[client][i];
        if (row >= ds->n)
            FAIL(FEDGE_ERR_RANGE);
        d.y[i] = ds->y[row];
        const float *src = ds->x + row * dim;
        float *dst = d.x + i * dim;
        if (std == 0.0) {
            memcpy(dst, src, dim * sizeof *dst);
            continue;
        }
        for (size_t f = 0; f < dim; f++) {
            double v = (double)src[f] + std * fedge_rng_normal(&rng);
            if (clip_u8) {
                double b = nearbyint(v * 255.0);
                v = (double)((float)(b < 0.0 ? 0.0 : b > 255.0 ? 255.0 : b) * FEDGE_SHARD_U8_SCALE);
            }
            dst[f] = (float)v;
        }
    }
    *out = d;
    d.x = NULL;
    d.y = NULL;

cleanup:
    free(d.x);
    free(d.y);
    return ret;
}

void fedge_partition_label_histogram(const fedge_partition *p, const fedge_dataset *ds,
                                     size_t *hist)
{
    if (!p || !ds || !hist)
        return;
    const size_t K = (size_t)ds->n_classes;
    memset(hist, 0, (size_t)p->n_clients * K * sizeof *hist);
    for (int j = 0; j < p->n_clients; j++)
        for (size_t i = 0; i < p->sizes[j]; i++)
            hist[(size_t)j * K + ds->y[p->indices[j][i]]]++;
}

int fedge_partition_label_tv(const fedge_partition *p, const fedge_dataset *ds, double *tv)
{
    int ret = FEDGE_OK;
    size_t *hist = NULL, *global = NULL;

    if (!p || !ds || !tv || p->n_clients < 1 || ds->n_classes < 1)
        return FEDGE_ERR_INVALID_ARG;
    const size_t K = (size_t)ds->n_classes;
    hist = malloc((size_t)p->n_clients * K * sizeof *hist);
    global = calloc(K, sizeof *global);
    if (!hist || !global)
        FAIL(FEDGE_ERR_NOMEM);
    fedge_partition_label_histogram(p, ds, hist);
    size_t total = 0;
    for (int j = 0; j < p->n_clients; j++) {
        for (size_t k = 0; k < K; k++)
            global[k] += hist[(size_t)j * K + k];
        total += p->sizes[j];
    }
    if (total == 0)
        FAIL(FEDGE_ERR_INVALID_ARG);
    double sum_tv = 0.0;
    for (int j = 0; j < p->n_clients; j++) {
        double d = 0.0;
        for (size_t k = 0; k < K; k++) {
            double q = p->sizes[j] ? (double)hist[(size_t)j * K + k] / (double)p->sizes[j] : 0.0;
            d += fabs(q - (double)global[k] / (double)total);
        }
        sum_tv += 0.5 * d;
    }
    *tv = sum_tv / p->n_clients;

cleanup:
    free(hist);
    free(global);
    return ret;
}

void fedge_partition_free(fedge_partition *p)
{
    if (!p)
        return;
    if (p->indices)
        for (int j = 0; j < p->n_clients; j++)
            free(p->indices[j]);
    free(p->indices);
    free(p->sizes);
    memset(p, 0, sizeof *p);
}
