#include "cluster_loader.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bytes.h"
#include "common.h"
#include "fileio.h"

#define SHARD_HEADER_BYTES 32 /* magic, version, n, dim, n_classes, type, reserved */
#define NO_STEP UINT64_MAX

static uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Keyed Feistel bijection on [0, 2^(2h)), 4 rounds. */
static uint64_t feistel(uint64_t x, int h, uint64_t key)
{
    const uint64_t mask = (h >= 32) ? 0xFFFFFFFFull : ((1ull << h) - 1);
    uint64_t left = (x >> h) & mask, right = x & mask;
    for (uint64_t round = 0; round < 4; round++) {
        uint64_t f = mix64(key ^ mix64(right + (round << 56))) & mask;
        uint64_t t = left ^ f;
        left = right;
        right = t;
    }
    return (left << h) | right;
}

uint64_t fedge_sample_row(uint64_t n, uint64_t seed, uint64_t g)
{
    if (n <= 1)
        return 0;
    uint64_t epoch = g / n, pos = g % n;
    uint64_t key = mix64(seed ^ mix64(epoch ^ 0x5EED5EED5EEDull));
    int bits = 64 - __builtin_clzll(n - 1);
    int h = (bits + 1) / 2;
    uint64_t x = pos;
    do {
        x = feistel(x, h, key);
    } while (x >= n);
    return x;
}

void fedge_batch_slice(int global_batch, int world, int rank, int *lo, int *hi)
{
    *lo = (int)((int64_t)global_batch * rank / world);
    *hi = (int)((int64_t)global_batch * (rank + 1) / world);
}

static int read_row(fedge_loader *ld, uint64_t row, uint8_t *rec, float *x, uint8_t *y)
{
    const fedge_shard_reader *r = &ld->reader;
    int ret = fedge_pread_all(r->fd, rec, r->record_size,
                              SHARD_HEADER_BYTES + row * (uint64_t)r->record_size,
                              FEDGE_ERR_DATA_TRUNCATED);
    if (ret != FEDGE_OK)
        return ret;
    if (rec[0] >= r->n_classes)
        return FEDGE_ERR_DATA_LABEL;
    *y = rec[0];
    if (r->feature_type == FEDGE_SHARD_U8) {
        for (int j = 0; j < r->dim; j++)
            x[j] = (float)rec[1 + j] * (1.0f / 255.0f);
    } else {
        for (int j = 0; j < r->dim; j++) {
            x[j] = fedge_get_f32(rec + 1 + 4 * (size_t)j);
            if (!isfinite(x[j]))
                return FEDGE_ERR_DATA_FORMAT;
        }
    }
    return FEDGE_OK;
}

static int fill_slot(fedge_loader *ld, fedge_loader_slot *s, uint64_t step)
{
    int lo, hi, ret = FEDGE_OK;
    fedge_batch_slice(ld->global_batch, ld->world, ld->rank, &lo, &hi);
    uint64_t base = step * (uint64_t)ld->global_batch;
    const size_t dim = (size_t)ld->reader.dim;
    for (int i = lo; i < hi; i++) {
        uint64_t row = fedge_sample_row(ld->reader.n, ld->seed, base + (uint64_t)i);
        CHK(read_row(ld, row, s->rec, s->x + (size_t)(i - lo) * dim, s->y + (i - lo)));
    }
cleanup:
    s->rows = hi - lo;
    s->status = ret;
    s->step = step;
    return ret;
}

static void *prefetch_main(void *arg)
{
    fedge_loader *ld = arg;
    pthread_mutex_lock(&ld->mu);
    for (;;) {
        while (!ld->quit && ld->want == NO_STEP)
            pthread_cond_wait(&ld->cv, &ld->mu);
        if (ld->quit)
            break;
        uint64_t step = ld->want;
        fedge_loader_slot *s = &ld->slot[ld->fill];
        ld->want = NO_STEP;
        ld->busy = 1;
        pthread_mutex_unlock(&ld->mu);
        fill_slot(ld, s, step);
        pthread_mutex_lock(&ld->mu);
        ld->busy = 0;
        pthread_cond_broadcast(&ld->cv);
    }
    pthread_mutex_unlock(&ld->mu);
    return NULL;
}

int fedge_loader_open(fedge_loader *ld, const char *path, uint64_t seed, int global_batch,
                      int world, int rank, int prefetch)
{
    int ret = FEDGE_OK;
    if (ld == NULL || path == NULL || world < 1 || rank < 0 || rank >= world
        || global_batch < world)
        return FEDGE_ERR_INVALID_ARG;
    memset(ld, 0, sizeof(*ld));
    ld->reader.fd = -1;
    CHK(fedge_shard_open(&ld->reader, path));
    ld->open = 1;
    if (ld->reader.n == 0)
        FAIL(FEDGE_ERR_DATA_FORMAT);
    ld->seed = seed;
    ld->global_batch = global_batch;
    ld->world = world;
    ld->rank = rank;
    ld->local_max = (global_batch + world - 1) / world;
    ld->want = NO_STEP;
    const size_t dim = (size_t)ld->reader.dim;
    for (int i = 0; i < 2; i++) {
        ld->slot[i].step = NO_STEP;
        ld->slot[i].x = malloc((size_t)ld->local_max * dim * sizeof(float));
        ld->slot[i].y = malloc((size_t)ld->local_max);
        ld->slot[i].rec = malloc(ld->reader.record_size);
        if (!ld->slot[i].x || !ld->slot[i].y || !ld->slot[i].rec)
            FAIL(FEDGE_ERR_NOMEM);
    }
    ld->eval_rec = malloc(ld->reader.record_size);
    if (ld->eval_rec == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    pthread_mutex_init(&ld->mu, NULL);
    pthread_cond_init(&ld->cv, NULL);
    ld->prefetch = prefetch;
    if (prefetch) {
        if (pthread_create(&ld->thread, NULL, prefetch_main, ld) != 0)
            ld->prefetch = 0; /* fall back to synchronous reads */
        else
            ld->thread_started = 1;
    }
    return FEDGE_OK;
cleanup:
    fedge_loader_close(ld);
    return ret;
}

void fedge_loader_close(fedge_loader *ld)
{
    if (ld == NULL)
        return;
    if (ld->thread_started) {
        pthread_mutex_lock(&ld->mu);
        ld->quit = 1;
        pthread_cond_broadcast(&ld->cv);
        pthread_mutex_unlock(&ld->mu);
        pthread_join(ld->thread, NULL);
        ld->thread_started = 0;
    }
    if (ld->eval_rec != NULL) {
        pthread_mutex_destroy(&ld->mu);
        pthread_cond_destroy(&ld->cv);
    }
    for (int i = 0; i < 2; i++) {
        free(ld->slot[i].x);
        free(ld->slot[i].y);
        free(ld->slot[i].rec);
        ld->slot[i].x = NULL;
        ld->slot[i].y = NULL;
        ld->slot[i].rec = NULL;
    }
    free(ld->eval_rec);
    ld->eval_rec = NULL;
    if (ld->open)
        fedge_shard_close(&ld->reader);
    ld->open = 0;
}

int fedge_loader_get(fedge_loader *ld, uint64_t step, const float **x, const uint8_t **y,
                     int *rows)
{
    if (ld == NULL || x == NULL || y == NULL || rows == NULL || step == NO_STEP)
        return FEDGE_ERR_INVALID_ARG;
    pthread_mutex_lock(&ld->mu);
    while (ld->busy || ld->want != NO_STEP)
        pthread_cond_wait(&ld->cv, &ld->mu);
    int other = 1 - ld->cur;
    if (ld->slot[other].step == step)
        ld->cur = other;
    else if (ld->slot[ld->cur].step != step)
        fill_slot(ld, &ld->slot[ld->cur], step);
    if (ld->prefetch) {
        ld->fill = 1 - ld->cur;
        ld->want = step + 1;
        pthread_cond_broadcast(&ld->cv);
    }
    fedge_loader_slot *s = &ld->slot[ld->cur];
    pthread_mutex_unlock(&ld->mu);
    if (s->status != FEDGE_OK) {
        int st = s->status;
        s->step = NO_STEP; /* retry reads it again */
        return st;
    }
    *x = s->x;
    *y = s->y;
    *rows = s->rows;
    return FEDGE_OK;
}

int fedge_loader_read_rows(fedge_loader *ld, uint64_t first, int count, float *x, uint8_t *y)
{
    if (ld == NULL || count < 0 || first > ld->reader.n || (uint64_t)count > ld->reader.n - first)
        return FEDGE_ERR_RANGE;
    const size_t dim = (size_t)ld->reader.dim;
    for (int i = 0; i < count; i++) {
        int st = read_row(ld, first + (uint64_t)i, ld->eval_rec, x + (size_t)i * dim, y + i);
        if (st != FEDGE_OK)
            return st;
    }
    return FEDGE_OK;
}
