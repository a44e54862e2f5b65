/* sim.c — the simulation driver (see sim.h, docs/SIM.md). */
#include "sim.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/platform_util.h>

#include <sqlite3.h>

#include "agg.h"
#include "blas.h"
#include "clock.h"
#include "common.h"
#include "control.h"
#include "envelope.h"
#include "keys.h"
#include "log.h"
#include "modelfile.h"
#include "rng.h"
#include "round_info.h"
#include "shard.h"
#include "trainer.h"
#include "update.h"

/* rng streams split off the run seed, one per purpose */
enum { STREAM_CLIENT = 1, STREAM_DROPOUT, STREAM_BYZANTINE, STREAM_STRAGGLER, STREAM_ATTACK, STREAM_SEAL };

typedef struct {
    uint64_t counter;        /* last envelope counter used (the edge's counter file) */
    uint32_t started_round;  /* last round it trained for or dropped out of; 0: none */
    uint8_t busy;            /* an update of it is still on its way */
    uint8_t byzantine;
    uint8_t straggler;
} sim_client;

typedef struct {
    size_t dev;
    fedge_round_info ri;
    uint64_t counter;
    /* results */
    int status;
    char why[256];
    int diverged;
    uint64_t n_samples;
    double loss;
    double train_s;          /* measured wall seconds of the training call */
    uint8_t *sealed;
    size_t sealed_len;
    fedge_model client_control; /* SCAFFOLD: c_i, then c_i+ (params NULL otherwise) */
    int refused;             /* SCAFFOLD: an implausible c or c_i+; nothing sent (why) */
    fedge_control_status control_status; /* how c_i was loaded (warned about on the main thread) */
    int control_why;
} sim_job;

typedef struct {
    size_t dev;
    double at;               /* virtual time it reaches the aggregator */
    uint32_t for_round;
    uint64_t n_samples;
    double loss;
    uint8_t *sealed;
    size_t sealed_len;
    int has_control;         /* SCAFFOLD: c_i+ waits in <id>.control.pending */
} sim_pending;

typedef struct {
    const fedge_sim_options *o;
    fedge_aggregator a;
    int agg_open;
    double now;              /* virtual seconds */
    size_t n_dev, n_shards;
    sim_client *clients;
    fedge_edge_trainer *trainers; /* one per thread */
    int n_trainers;
    sim_job *jobs;           /* one batch: at most the round's selected */
    size_t n_jobs, cap_jobs;
    atomic_size_t next_job;
    sim_pending *pending;
    size_t n_pending, cap_pending;
    fedge_rng root;
    char state_dir[FEDGE_PATH_MAX + 16]; /* <db>.clients: the edges' --state-dir (SCAFFOLD's c_i) */
    /* the round being reported */
    long seen_rounds_done, seen_aggregated;
    size_t r_late, r_dropped;
    double r_loss_sum, r_loss_n, r_train_s, r_wall0;
    /* the run */
    double run_wall0, total_train_s;
    double agg_s;            /* wall seconds inside the aggregator's calls */
    double batch_s;          /* wall seconds of the client batches (training, sealing) */
    size_t total_late, total_dropped;
} sim;

static double real_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double real_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void fedge_sim_options_defaults(fedge_sim_options *o)
{
    memset(o, 0, sizeof *o);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    o->threads = cores < 1 ? 1 : cores > FEDGE_SIM_MAX_THREADS ? FEDGE_SIM_MAX_THREADS : (int)cores;
    o->seed = 1;
    o->straggler_factor = 10.0;
    o->attack = FEDGE_SIM_ATTACK_SIGNFLIP;
    o->attack_scale = 10.0;
    o->sample_cost_s = 1e-4;
    o->encoding = FEDGE_ENC_FP32;
}

int fedge_sim_write_keys(const char *path, long n, char *err, size_t errlen)
{
    char tmp[FEDGE_PATH_MAX + 16], line[FEDGE_KEYS_LINE_MAX];
    fedge_device_entry e;
    FILE *f = NULL;
    int ret = FEDGE_OK, fd = -1;
    if (n < 1 || n > FEDGE_KEYS_MAX_DEVICES) {
        snprintf(err, errlen, "--clients %ld: want 1..%d", n, FEDGE_KEYS_MAX_DEVICES);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (access(path, F_OK) == 0)
        return FEDGE_OK;
    memset(&e, 0, sizeof e);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || !(f = fdopen(fd, "w"))) {
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        FAIL(FEDGE_ERR_IO);
    }
    fd = -1;
    for (long i = 1; i <= n; i++) {
        snprintf(e.id, sizeof e.id, "dev-%03ld", i);
        snprintf(e.region, sizeof e.region, "eu");
        if (getrandom(e.secret, sizeof e.secret, 0) != (ssize_t)sizeof e.secret) {
            snprintf(err, errlen, "getrandom: %s", strerror(errno));
            FAIL(FEDGE_ERR_IO);
        }
        size_t len = fedge_keys_format_line(&e, line, sizeof line);
        if (len == 0 || fwrite(line, 1, len, f) != len) {
            snprintf(err, errlen, "%s: write failed", tmp);
            FAIL(FEDGE_ERR_IO);
        }
    }
    if (fclose(f) != 0) {
        f = NULL;
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        FAIL(FEDGE_ERR_IO);
    }
    f = NULL;
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        FAIL(FEDGE_ERR_IO);
    }
cleanup:
    mbedtls_platform_zeroize(&e, sizeof e);
    mbedtls_platform_zeroize(line, sizeof line);
    if (f)
        fclose(f);
    if (fd >= 0)
        close(fd);
    if (ret != FEDGE_OK)
        unlink(tmp);
    return ret;
}

static uint64_t stream_u64(const sim *s, uint64_t purpose, uint64_t a, uint64_t b)
{
    fedge_rng r;
    fedge_rng_split(&s->root, purpose * 0x9e3779b97f4a7c15ull ^ (a << 32) ^ b, &r);
    return fedge_rng_u64(&r);
}

/* Marks exactly round(frac * n) devices, chosen by a seeded shuffle. */
static int mark_fraction(sim *s, double frac, uint64_t purpose, int straggler)
{
    size_t k = (size_t)floor(frac * (double)s->n_dev + 0.5);
    if (k == 0)
        return FEDGE_OK;
    size_t *idx = malloc(s->n_dev * sizeof *idx);
    if (!idx)
        return FEDGE_ERR_NOMEM;
    fedge_rng r;
    fedge_rng_split(&s->root, purpose, &r);
    for (size_t i = 0; i < s->n_dev; i++)
        idx[i] = i;
    for (size_t i = 0; i < k; i++) {
        size_t j = i + fedge_rng_below(&r, (uint32_t)(s->n_dev - i));
        size_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
        if (straggler)
            s->clients[idx[i]].straggler = 1;
        else
            s->clients[idx[i]].byzantine = 1;
    }
    free(idx);
    return FEDGE_OK;
}

static void shard_path(const sim *s, size_t dev, char *out, size_t cap)
{
    snprintf(out, cap, "%s/shard-%03zu.bin", s->o->shards_dir, dev % s->n_shards);
}

/* The shards used: shard-000 ... consecutive, at most one per device. A gap
 * in the numbering (a shard after a missing one) is an error, not a cut. */
static int count_shards(sim *s, char *err, size_t errlen)
{
    char path[FEDGE_PATH_MAX + 32];
    s->n_shards = 0;
    for (size_t i = 0; i < s->n_dev; i++) {
        snprintf(path, sizeof path, "%s/shard-%03zu.bin", s->o->shards_dir, i);
        if (access(path, R_OK) != 0)
            break;
        s->n_shards++;
    }
    if (s->n_shards == 0) {
        snprintf(err, errlen, "no shard %s/shard-000.bin (fedge-partition --out %s)", s->o->shards_dir,
                 s->o->shards_dir);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (s->n_shards == s->n_dev)
        return FEDGE_OK;
    DIR *d = opendir(s->o->shards_dir);
    if (!d) {
        snprintf(err, errlen, "%s: %s", s->o->shards_dir, strerror(errno));
        return FEDGE_ERR_IO;
    }
    struct dirent *e;
    int ret = FEDGE_OK;
    while ((e = readdir(d)) != NULL) {
        unsigned idx;
        int used = 0;
        if (sscanf(e->d_name, "shard-%u.bin%n", &idx, &used) == 1 && used > 0 && !e->d_name[used] &&
            idx > s->n_shards) {
            snprintf(err, errlen, "%s/%s is there but shard-%03zu.bin is missing: shards must be numbered"
                     " from 000 without a gap", s->o->shards_dir, e->d_name, s->n_shards);
            ret = FEDGE_ERR_CONFIG_VALUE;
            break;
        }
    }
    closedir(d);
    return ret;
}

/* A robust rule tolerates f attackers among a round's n updates (krum,
 * multikrum, bulyan: byzantine_f; trimmed_mean: floor(beta n); median:
 * fewer than half); beyond that it runs and aggregates as usual, without an
 * error, and the attackers can steer the model. Warn when the attackers
 * expected in a round (their share of the population times the round's
 * selection) exceed it. */
static void warn_byzantine_tolerance(const sim *s, const fedge_agg_config *cfg, size_t n_byz)
{
    if (n_byz == 0)
        return;
    double per_round = (double)fedge_agg_config_round_size(cfg, s->n_dev);
    double expected = (double)n_byz * per_round / (double)s->n_dev;
    long n = (long)per_round, tolerated;
    char rule[64];
    if (!strcmp(cfg->aggregation, "krum") || !strcmp(cfg->aggregation, "multikrum") ||
        !strcmp(cfg->aggregation, "bulyan")) {
        tolerated = cfg->byzantine_f;
        snprintf(rule, sizeof rule, "byzantine_f = %ld", tolerated);
    } else if (!strcmp(cfg->aggregation, "trimmed_mean")) {
        tolerated = (long)floor(cfg->trim_beta * (double)n);
        snprintf(rule, sizeof rule, "floor(trim_beta %g x %ld) = %ld", cfg->trim_beta, n, tolerated);
    } else if (!strcmp(cfg->aggregation, "median")) {
        tolerated = (n - 1) / 2;
        snprintf(rule, sizeof rule, "fewer than half of %ld", n);
    } else {
        return; /* mean tolerates none, and claims nothing */
    }
    if (expected > (double)tolerated + 1e-9)
        FEDGE_WARN("--byzantine: %.1f attacker(s) expected among a round's %ld updates (%zu of %zu devices),"
                   " more than %s tolerates (%s): its rounds still aggregate, and the attackers can steer"
                   " the model", expected, n, n_byz, s->n_dev, cfg->aggregation, rule);
}

/* The last time the log recorded (0: a new log), so a resumed run's virtual
 * wall clock starts after it and the log's times never go backwards. */
static double logged_until(const char *db_path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    double t = 0;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db,
                           "SELECT max(coalesce((SELECT max(coalesce(closed_at, opened_at)) FROM rounds), 0),"
                           " coalesce((SELECT max(received_at) FROM updates), 0),"
                           " coalesce((SELECT max(at) FROM events), 0),"
                           " coalesce((SELECT max(created_at) FROM models), 0),"
                           " coalesce((SELECT max(signed_at) FROM audit_heads), 0))",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        t = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return t;
}

/* Each device's last accepted counter, as its edge would have it on disk. */
static int load_counters(sim *s)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->a.db, "SELECT id, last_counter FROM devices", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return FEDGE_ERR_SQL;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        const fedge_device_entry *e = id ? fedge_keys_find(&s->a.keys, id, strlen(id)) : NULL;
        if (e)
            s->clients[e - s->a.keys.devices].counter = (uint64_t)sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? FEDGE_OK : FEDGE_ERR_SQL;
}

/* A run killed between the aggregator's commit of an update and the rename
 * of its c_i+ left <id>.control.pending: the log says whether the update
 * (its device and envelope counter) counted, and the pending c_i+ is
 * committed or dropped accordingly, as the uninterrupted run would have. */
static int reconcile_pending_controls(sim *s)
{
    sqlite3_stmt *st = NULL;
    char *path = NULL;
    int ret = FEDGE_OK;
    if (sqlite3_prepare_v2(s->a.db,
                           "SELECT count(*) FROM updates WHERE device = ?1 AND counter = ?2"
                           " AND decision <> 'rejected'", -1, &st, NULL) != SQLITE_OK)
        return FEDGE_ERR_SQL;
    for (size_t d = 0; d < s->n_dev; d++) {
        const char *id = s->a.keys.devices[d].id;
        uint8_t run[FEDGE_CONTROL_RUN_ID_LEN];
        uint64_t counter = 0;
        free(path);
        path = NULL;
        CHK(fedge_edge_control_path(s->state_dir, id, &path));
        int got = fedge_edge_control_pending_info(path, run, &counter);
        if (got == FEDGE_ERR_NOT_FOUND)
            continue;
        int accepted = 0;
        if (got == FEDGE_OK && memcmp(run, s->a.run_id, sizeof run) == 0) {
            sqlite3_reset(st);
            if (sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC) != SQLITE_OK ||
                sqlite3_bind_int64(st, 2, (sqlite3_int64)counter) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW)
                FAIL(FEDGE_ERR_SQL);
            accepted = sqlite3_column_int64(st, 0) > 0;
        } else {
            FEDGE_WARN("%s.pending: %s; dropped", path,
                       got == FEDGE_OK ? "of another aggregator run" : fedge_strerror(got));
        }
        FEDGE_INFO("%s: pending c_i+ of update %llu %s", id, (unsigned long long)counter,
                   accepted ? "counted before the restart: committed" : "not counted: dropped");
        CHK(fedge_edge_control_settle(path, accepted));
    }
cleanup:
    free(path);
    sqlite3_finalize(st);
    return ret;
}

/* ---- one client's round (runs on a pool thread) --------------------------- */

static void attack(const sim *s, const sim_job *j, float *delta, size_t n)
{
    float scale = (float)s->o->attack_scale;
    if (s->o->attack == FEDGE_SIM_ATTACK_SIGNFLIP) {
        for (size_t i = 0; i < n; i++)
            delta[i] *= -scale;
        return;
    }
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; i++) {
        sum += delta[i];
        sq += (double)delta[i] * delta[i];
    }
    double mean = sum / (double)n, var = sq / (double)n - mean * mean;
    double sd = s->o->attack_scale * sqrt(var > 0 ? var : 0);
    fedge_rng r;
    fedge_rng_seed(&r, stream_u64(s, STREAM_ATTACK, j->ri.round, j->dev));
    for (size_t i = 0; i < n; i++)
        delta[i] = (float)(sd * fedge_rng_normal(&r));
}

static int run_job(const sim *s, fedge_edge_trainer *t, sim_job *j)
{
    const fedge_round_info *ri = &j->ri;
    const fedge_device_entry *dev = &s->a.keys.devices[j->dev];
    fedge_shard_reader shard;
    fedge_device_key key;
    fedge_model control;
    char *control_path = NULL;
    int shard_open = 0, have_key = 0, ret;
    memset(&control, 0, sizeof control);
    char path[FEDGE_PATH_MAX + 32];

    shard_path(s, j->dev, path, sizeof path);
    ret = fedge_shard_open(&shard, path);
    if (ret != FEDGE_OK) {
        snprintf(j->why, sizeof j->why, "%.100s: %.50s", path, fedge_strerror(ret));
        goto cleanup;
    }
    shard_open = 1;
    if (shard.dim != ri->spec.input_dim || shard.n_classes > ri->spec.classes) {
        snprintf(j->why, sizeof j->why, "%.60s has dim %d and %d classes; model %.60s does not fit it", path,
                 shard.dim, shard.n_classes, ri->spec_text);
        FAIL(FEDGE_ERR_MODEL_SHAPE);
    }
    j->n_samples = shard.n;
    CHK(fedge_edge_trainer_prepare(t, &ri->spec, ri->batch, NULL));
    /* GET /model: the aggregator's blob, unless this trainer holds it already */
    if (!t->have_global || memcmp(t->global_version, ri->model, FEDGE_HASH_LEN) != 0)
        CHK(fedge_edge_trainer_set_global(t, s->a.model_blob, s->a.model_blob_len));
    if (memcmp(t->global_version, ri->model, FEDGE_HASH_LEN) != 0) {
        snprintf(j->why, sizeof j->why, "the served model is not round %u's base", ri->round);
        FAIL(FEDGE_ERR_STATE);
    }
    uint64_t client_seed = stream_u64(s, STREAM_CLIENT, 0, j->dev);
    fedge_edge_train_params tp = {.epochs = ri->epochs,
                                  .lr = ri->lr,
                                  .momentum = ri->momentum,
                                  .weight_decay = ri->weight_decay,
                                  .seed = client_seed + ri->round};
    tp.prox_mu = ri->prox_mu;
    if (ri->has_control) {
        /* SCAFFOLD: GET /control (the server's c, checked against the round's
         * version) and this client's committed c_i, as the edge does */
        uint8_t version[FEDGE_HASH_LEN];
        CHK(fedge_edge_trainer_prepare_control(t));
        CHK(fedge_model_deserialize(s->a.control_blob, s->a.control_blob_len, &control, version));
        if (memcmp(version, ri->control, FEDGE_HASH_LEN) != 0) {
            snprintf(j->why, sizeof j->why, "the served control variate is not round %u's", ri->round);
            FAIL(FEDGE_ERR_STATE);
        }
        float bound = fedge_edge_control_bound(&t->global, ri->lr), max_abs;
        if (fedge_edge_control_check(control.params, control.n_params, bound, &max_abs) != FEDGE_OK) {
            snprintf(j->why, sizeof j->why, "the served control variate is implausible (max |c| %g, bound %g)",
                     (double)max_abs, (double)bound);
            j->refused = 1; /* the edge skips the round */
            FAIL(FEDGE_OK);
        }
        CHK(fedge_edge_control_path(s->state_dir, dev->id, &control_path));
        CHK(fedge_edge_control_load(control_path, &ri->spec, ri->run_id, bound, &j->client_control,
                                    &j->control_status, &j->control_why));
        tp.control = control.params;
        tp.client_control = j->client_control.params;
    }
    double t0 = real_now();
    ret = fedge_edge_trainer_train(t, &shard, &tp, NULL, &j->loss);
    j->train_s = real_now() - t0;
    if (ret == FEDGE_ERR_MODEL_NONFINITE) {
        j->diverged = 1; /* the edge sends nothing */
        FAIL(FEDGE_OK);
    }
    if (ret == FEDGE_ERR_CONTROL_RANGE) {
        snprintf(j->why, sizeof j->why, "training refused: %s", fedge_strerror(ret));
        j->refused = 1;
        FAIL(FEDGE_OK);
    }
    if (ret != FEDGE_OK) {
        snprintf(j->why, sizeof j->why, "training failed: %s", fedge_strerror(ret));
        goto cleanup;
    }
    if (s->clients[j->dev].byzantine)
        attack(s, j, t->delta, t->local.n_params);

    fedge_delta_header h;
    memset(&h, 0, sizeof h);
    h.encoding = (uint8_t)s->o->encoding;
    h.model_id = fedge_model_spec_id(&ri->spec);
    h.round = ri->round;
    h.n_samples = shard.n > UINT32_MAX ? UINT32_MAX : (uint32_t)shard.n;
    h.n_elems = (uint32_t)(ri->has_control ? 2 * t->local.n_params : t->local.n_params);
    h.flags = ri->has_control ? FEDGE_DELTA_FLAG_CONTROL : 0;
    h.block_size = s->o->encoding == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0;
    memcpy(h.base_version, t->global_version, FEDGE_HASH_LEN);
    CHK(fedge_envelope_derive_key(dev->secret, FEDGE_SECRET_LEN, dev->id, &key));
    have_key = 1;
    fedge_rng seal_rng;
    fedge_rng_seed(&seal_rng, stream_u64(s, STREAM_SEAL, ri->round, j->dev));
    /* the edge's training metrics (update.h), as fedge-edge sends them, less
     * the wall-clock training time (the simulation's time is virtual) */
    fedge_train_metrics tm = {0};
    if (isfinite(j->loss) && j->loss >= 0.0) {
        tm.present = FEDGE_TRAIN_HAS_LOSS | FEDGE_TRAIN_HAS_EPOCHS;
        tm.loss = (float)j->loss;
        tm.epochs = (uint32_t)ri->epochs;
    }
    if (t->accuracy >= 0.0 && t->accuracy <= 1.0) {
        tm.present |= FEDGE_TRAIN_HAS_ACCURACY;
        tm.accuracy = (float)t->accuracy;
    }
    ret = fedge_update_seal_metrics(&key, j->counter, ri->run_id, &tm, &h, t->delta, &seal_rng, &j->sealed,
                                    &j->sealed_len);
    if (ret != FEDGE_OK) {
        snprintf(j->why, sizeof j->why, "sealing failed: %s", fedge_strerror(ret));
        goto cleanup;
    }
    /* c_i+ durably pending before the update leaves (control.h) */
    if (ri->has_control) {
        ret = fedge_edge_control_write_pending(control_path, ri->run_id, j->counter, &j->client_control);
        if (ret != FEDGE_OK)
            snprintf(j->why, sizeof j->why, "%.60s.pending: %.60s", control_path, fedge_strerror(ret));
    }
cleanup:
    fedge_model_free(&control);
    free(control_path);
    if (ret != FEDGE_OK || j->diverged || j->refused)
        fedge_model_free(&j->client_control);
    if (have_key)
        fedge_device_key_wipe(&key);
    if (shard_open)
        fedge_shard_close(&shard);
    if (ret != FEDGE_OK && !j->why[0])
        snprintf(j->why, sizeof j->why, "%s", fedge_strerror(ret));
    j->status = ret;
    return ret;
}

typedef struct {
    sim *s;
    int slot;
} worker_arg;

static void *worker(void *arg)
{
    worker_arg *w = arg;
    sim *s = w->s;
    for (;;) {
        size_t i = atomic_fetch_add(&s->next_job, 1);
        if (i >= s->n_jobs)
            break;
        run_job(s, &s->trainers[w->slot], &s->jobs[i]); /* status kept in the job */
    }
    return NULL;
}

static int run_batch(sim *s)
{
    pthread_t tid[FEDGE_SIM_MAX_THREADS];
    worker_arg args[FEDGE_SIM_MAX_THREADS];
    int n = s->n_trainers < (int)s->n_jobs ? s->n_trainers : (int)s->n_jobs, started = 0;
    atomic_store(&s->next_job, 0);
    for (int k = 1; k < n; k++) {
        args[k] = (worker_arg){s, k};
        if (pthread_create(&tid[k], NULL, worker, &args[k]) != 0)
            break;
        started++;
    }
    args[0] = (worker_arg){s, 0};
    worker(&args[0]); /* this thread is slot 0, and does all when a thread would not start */
    for (int k = 1; k <= started; k++)
        pthread_join(tid[k], NULL);
    return FEDGE_OK;
}

/* ---- the driver ------------------------------------------------------------ */

static int is_async(const sim *s)
{
    return strcmp(s->a.cfg.mode, "async") == 0;
}

/* The last step that ended, from the log: in async mode the next step is
 * already open when the report is made. */
static void ended_step(const sim *s, uint32_t *round, size_t *selected, size_t *accepted, size_t *rejected)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->a.db, "SELECT id, coalesce(n_accepted, 0), coalesce(n_rejected, 0),"
                           " (SELECT count(*) FROM round_participants p WHERE p.round=r.id)"
                           " FROM rounds r WHERE status<>'open' ORDER BY id DESC LIMIT 1", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        *round = (uint32_t)sqlite3_column_int64(st, 0);
        *accepted = (size_t)sqlite3_column_int64(st, 1);
        *rejected = (size_t)sqlite3_column_int64(st, 2);
        *selected = (size_t)sqlite3_column_int64(st, 3);
    }
    sqlite3_finalize(st);
}

static void emit_round(sim *s)
{
    const fedge_aggregator *a = &s->a;
    int aggregated = a->rounds_aggregated != s->seen_aggregated;
    uint32_t round = a->round;
    size_t selected = a->n_selected, accepted = a->n_accepted, rejected = a->n_rejected;
    if (is_async(s))
        ended_step(s, &round, &selected, &accepted, &rejected);
    double wall = real_now() - s->r_wall0;
    char acc[32], loss[32];
    if (aggregated && a->last_accuracy >= 0)
        snprintf(acc, sizeof acc, "%.4f", a->last_accuracy);
    else
        snprintf(acc, sizeof acc, s->o->json ? "null" : "-");
    if (s->r_loss_n > 0)
        snprintf(loss, sizeof loss, "%.4f", s->r_loss_sum / s->r_loss_n);
    else
        snprintf(loss, sizeof loss, s->o->json ? "null" : "-");
    if (s->o->json)
        printf("{\"round\":%u,\"status\":\"%s\",\"selected\":%zu,\"accepted\":%zu,\"rejected\":%zu,"
               "\"late\":%zu,\"dropped\":%zu,\"accuracy\":%s,\"train_loss\":%s,\"virtual_s\":%.3f,"
               "\"wall_s\":%.3f,\"train_s\":%.3f,\"model\":\"%s\"}\n",
               round, aggregated ? "closed" : "failed", selected, accepted, rejected,
               s->r_late, s->r_dropped, acc, loss, s->now, wall, s->r_train_s, a->version_hex);
    else
        printf("round %3u %-6s selected %zu accepted %zu rejected %zu late %zu dropped %zu accuracy %s"
               " loss %s t=%.1fs wall %.3fs train %.3fs\n",
               round, aggregated ? "closed" : "failed", selected, accepted, rejected,
               s->r_late, s->r_dropped, acc, loss, s->now, wall, s->r_train_s);
    fflush(stdout);
    s->seen_rounds_done = a->rounds_done;
    s->seen_aggregated = a->rounds_aggregated;
    s->r_late = s->r_dropped = 0;
    s->r_loss_sum = s->r_loss_n = s->r_train_s = 0;
    s->r_wall0 = real_now();
}

/* tick or maybe_close, then report a round that closed */
static int step(sim *s, int (*fn)(fedge_aggregator *, double))
{
    double t0 = real_now();
    int ret = fn(&s->a, s->now);
    s->agg_s += real_now() - t0;
    if (ret == FEDGE_OK && s->a.rounds_done != s->seen_rounds_done)
        emit_round(s);
    return ret;
}

/* A tick that should open a round. The aggregator declines only when no
 * device is eligible (status, region), which nothing changes during a
 * simulation: stop rather than wait forever in virtual time. */
static int tick_open(sim *s, char *err, size_t errlen)
{
    int due = s->a.state == FEDGE_AGG_WAITING && s->now >= s->a.start_at && s->now >= s->a.retry_at;
    int ret = step(s, fedge_agg_tick);
    if (ret == FEDGE_OK && due && s->a.state == FEDGE_AGG_WAITING && s->a.start_at > s->now) {
        snprintf(err, errlen, "round %u cannot open: no device is eligible (device status, the policy's regions)",
                 s->a.round + 1);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    return ret;
}

static int push_pending(sim *s, const sim_pending *p)
{
    if (s->n_pending == s->cap_pending) {
        size_t cap = s->cap_pending ? 2 * s->cap_pending : 64;
        sim_pending *np = realloc(s->pending, cap * sizeof *np);
        if (!np)
            return FEDGE_ERR_NOMEM;
        s->pending = np;
        s->cap_pending = cap;
    }
    s->pending[s->n_pending++] = *p;
    return FEDGE_OK;
}

static int pending_order(const void *x, const void *y)
{
    const sim_pending *p = x, *q = y;
    if (p->at != q->at)
        return p->at < q->at ? -1 : 1;
    return p->dev < q->dev ? -1 : p->dev > q->dev;
}

/* Sync: every selected device that is free polls /round now. Async: every
 * free device asks GET /round, a tick admits some (the aggregator's ranked
 * rule), and those newly admitted poll again. Unless it drops out, each
 * trains; the batch runs on the pool and its updates are queued at their
 * virtual finish times. */
static int start_clients(sim *s, char *err, size_t errlen)
{
    fedge_aggregator *a = &s->a;
    char body[FEDGE_ROUND_BODY_MAX], why[160];
    int ret = FEDGE_OK, async = is_async(s);
    size_t need = async ? s->n_dev : a->n_selected;
    s->n_jobs = 0;
    if (s->cap_jobs < need) {
        sim_job *nj = realloc(s->jobs, need * sizeof *nj);
        if (!nj)
            return FEDGE_ERR_NOMEM;
        s->jobs = nj;
        s->cap_jobs = need;
    }
    if (async) {
        /* an edge polls about every second; asking is remembered 10 s */
        for (size_t d = 0; d < s->n_dev; d++)
            if (!s->clients[d].busy && !a->adm_step[d] && s->now - a->asked_at[d] >= 1.0)
                CHK(fedge_agg_round_info(a, a->keys.devices[d].id, s->now, body, sizeof body));
        CHK(step(s, fedge_agg_tick));
        if (a->state != FEDGE_AGG_OPEN)
            goto cleanup;
    }
    for (size_t d = 0; d < s->n_dev && s->n_jobs < s->cap_jobs; d++) {
        sim_client *c = &s->clients[d];
        if (async ? !a->adm_step[d] || c->busy || c->started_round >= a->adm_step[d]
                  : !a->selected[d] || a->submitted[d] || c->busy || c->started_round == a->round)
            continue;
        sim_job *j = &s->jobs[s->n_jobs];
        memset(j, 0, sizeof *j);
        CHK(fedge_agg_round_info(a, a->keys.devices[d].id, s->now, body, sizeof body));
        ret = fedge_round_info_parse(body, strlen(body), &j->ri, why, sizeof why);
        if (ret != FEDGE_OK) {
            snprintf(err, errlen, "GET /round for %s: %s", a->keys.devices[d].id, why);
            goto cleanup;
        }
        if (j->ri.state != FEDGE_ROUND_OPEN || !j->ri.selected)
            continue;
        if (j->ri.has_control && mkdir(s->state_dir, 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "%s: %s", s->state_dir, strerror(errno));
            FAIL(FEDGE_ERR_IO);
        }
        c->started_round = j->ri.round;
        if (s->o->dropout > 0) {
            fedge_rng r;
            fedge_rng_seed(&r, stream_u64(s, STREAM_DROPOUT, j->ri.round, d));
            if (fedge_rng_uniform_d(&r) < s->o->dropout) {
                s->r_dropped++;
                s->total_dropped++;
                continue;
            }
        }
        j->dev = d;
        j->counter = ++c->counter;
        s->n_jobs++;
    }
    if (s->n_jobs == 0)
        goto cleanup;
    double t0 = real_now();
    CHK(run_batch(s));
    s->batch_s += real_now() - t0;
    for (size_t i = 0; i < s->n_jobs; i++) {
        sim_job *j = &s->jobs[i];
        if (j->status != FEDGE_OK) {
            snprintf(err, errlen, "client %s, round %u: %s", a->keys.devices[j->dev].id, j->ri.round, j->why);
            FAIL(j->status);
        }
        if (j->ri.has_control && j->control_status == FEDGE_CONTROL_OTHER_SPEC)
            FEDGE_WARN("round %u: %s: %s/%s.control holds a control variate for another model than %s;"
                       " starting from zeros", j->ri.round, a->keys.devices[j->dev].id, s->state_dir,
                       a->keys.devices[j->dev].id, j->ri.spec_text);
        else if (j->ri.has_control && j->control_status == FEDGE_CONTROL_OTHER_RUN)
            FEDGE_WARN("round %u: %s: %s/%s.control holds a control variate of another aggregator run"
                       " (or of none); starting from zeros", j->ri.round, a->keys.devices[j->dev].id,
                       s->state_dir, a->keys.devices[j->dev].id);
        else if (j->ri.has_control && j->control_status == FEDGE_CONTROL_IMPLAUSIBLE)
            FEDGE_WARN("round %u: %s: client control variate %s/%s.control has values beyond the plausible"
                       " bound (edge/control.h); starting from zeros", j->ri.round, a->keys.devices[j->dev].id,
                       s->state_dir, a->keys.devices[j->dev].id);
        else if (j->ri.has_control && j->control_status == FEDGE_CONTROL_CORRUPT)
            FEDGE_WARN("round %u: %s: client control variate %s/%s.control unusable (%s);"
                       " starting from zeros", j->ri.round, a->keys.devices[j->dev].id, s->state_dir,
                       a->keys.devices[j->dev].id, fedge_strerror(j->control_why));
        s->r_train_s += j->train_s;
        s->total_train_s += j->train_s;
        if (j->diverged) {
            FEDGE_WARN("round %u: %s: training diverged; nothing sent", j->ri.round, a->keys.devices[j->dev].id);
            continue;
        }
        if (j->refused) {
            FEDGE_ERROR("round %u: %s: %s; nothing sent, c_i kept", j->ri.round, a->keys.devices[j->dev].id,
                        j->why);
            continue;
        }
        const sim_client *c = &s->clients[j->dev];
        double took = s->o->sample_cost_s > 0
                          ? (double)j->n_samples * j->ri.epochs * s->o->sample_cost_s
                          : j->train_s;
        if (c->straggler)
            took = took * s->o->straggler_factor + s->o->straggler_delay_s;
        sim_pending p = {j->dev, s->now + took, j->ri.round, j->n_samples, j->loss, j->sealed, j->sealed_len,
                         j->client_control.params != NULL};
        CHK(push_pending(s, &p));
        j->sealed = NULL;
        s->clients[j->dev].busy = 1;
    }
    if (s->n_pending > 1) /* none when every selected client dropped out or diverged */
        qsort(s->pending, s->n_pending, sizeof *s->pending, pending_order);
cleanup:
    for (size_t i = 0; i < s->n_jobs; i++) {
        free(s->jobs[i].sealed);
        s->jobs[i].sealed = NULL;
        fedge_model_free(&s->jobs[i].client_control);
    }
    return ret;
}

static int settle_control(sim *s, size_t dev, int has_control, int accepted)
{
    if (!has_control)
        return FEDGE_OK;
    char *path = NULL;
    int ret = fedge_edge_control_path(s->state_dir, s->a.keys.devices[dev].id, &path);
    if (ret == FEDGE_OK)
        ret = fedge_edge_control_settle(path, accepted);
    free(path);
    return ret;
}

/* POST /update for every queued update due by now, in (time, device) order. */
static int deliver_due(sim *s, char *err, size_t errlen)
{
    fedge_aggregator *a = &s->a;
    size_t done = 0;
    int ret = FEDGE_OK;
    char msg[256];
    for (; done < s->n_pending && s->pending[done].at <= s->now; done++) {
        sim_pending *p = &s->pending[done];
        int code = 0;
        s->clients[p->dev].busy = 0;
        if (a->state == FEDGE_AGG_FINISHED) {
            CHK(settle_control(s, p->dev, p->has_control, 0));
            continue;
        }
        uint32_t into = a->round;
        double t0 = real_now();
        CHK(fedge_agg_submit(a, a->keys.devices[p->dev].id, p->sealed, p->sealed_len, s->now, &code, msg,
                             sizeof msg));
        s->agg_s += real_now() - t0;
        free(p->sealed);
        p->sealed = NULL;
        /* c_i+ becomes c_i on 2.04 only (edge/control.h) */
        CHK(settle_control(s, p->dev, p->has_control, code == 204));
        if (code == 204) {
            if (p->for_round < into) {
                s->r_late++;
                s->total_late++;
            }
            s->r_loss_sum += p->loss * (double)p->n_samples;
            s->r_loss_n += (double)p->n_samples;
        } else {
            FEDGE_INFO("round %u: update of %s for round %u answered %d: %s", into, a->keys.devices[p->dev].id,
                       p->for_round, code, msg);
        }
        CHK(step(s, fedge_agg_maybe_close));
        if (a->state == FEDGE_AGG_WAITING)
            CHK(tick_open(s, err, errlen)); /* the daemon opens the next round on its next tick */
    }
cleanup:
    for (size_t i = 0; i < done; i++)
        free(s->pending[i].sealed);
    if (done > 0) {
        memmove(s->pending, s->pending + done, (s->n_pending - done) * sizeof *s->pending);
        s->n_pending -= done;
    }
    return ret;
}

static int set_clock(sim *s, double t)
{
    if (t <= s->now)
        return FEDGE_OK;
    s->now = t;
    return fedge_clock_virtual_set(t);
}

static void summary(sim *s, int exit_status, const char *outcome)
{
    const fedge_aggregator *a = &s->a;
    double wall = real_now() - s->run_wall0;
    double overhead = s->total_train_s > 0 ? 100.0 * (wall - s->total_train_s) / s->total_train_s : 0;
    char acc[32];
    if (a->last_accuracy >= 0)
        snprintf(acc, sizeof acc, "%.4f", a->last_accuracy);
    else
        snprintf(acc, sizeof acc, "null");
    if (s->o->json)
        printf("{\"summary\":true,\"rounds\":%ld,\"aggregated\":%ld,\"failed\":%ld,\"accuracy\":%s,"
               "\"model\":\"%s\",\"model_file\":\"%s/%s.fmdl\",\"late\":%zu,\"dropped\":%zu,"
               "\"virtual_s\":%.3f,\"wall_s\":%.3f,\"train_s\":%.3f,\"overhead_pct\":%.1f,\"batch_s\":%.3f,"
               "\"aggregator_s\":%.3f,\"threads\":%d,\"exit\":%d}\n",
               a->rounds_done, a->rounds_aggregated, a->rounds_done - a->rounds_aggregated, acc, a->version_hex,
               a->cfg.model_dir, a->version_hex, s->total_late, s->total_dropped, s->now, wall,
               s->total_train_s, overhead, s->batch_s, s->agg_s, s->n_trainers, exit_status);
    else
    {
        /* on more than one thread the clients' times overlap: no overhead figure */
        char over[32] = "";
        if (s->n_trainers == 1)
            snprintf(over, sizeof over, ", overhead %.1f%%", overhead);
        printf("%s\nmodel %s (%s/%s.fmdl)\nwall %.3fs, client training %.3fs summed over %d thread(s)%s"
               " (client batches %.3fs, aggregator %.3fs); virtual time %.1fs; %zu late, %zu dropped\n",
               outcome, a->version_hex, a->cfg.model_dir, a->version_hex, wall, s->total_train_s,
               s->n_trainers, over, s->batch_s, s->agg_s, s->now, s->total_late, s->total_dropped);
    }
    fflush(stdout);
}

int fedge_sim_run(const fedge_agg_config *cfg, const fedge_sim_options *o, int *exit_status, char *err,
                  size_t errlen)
{
    sim s;
    int ret = FEDGE_OK;
    memset(&s, 0, sizeof s);
    s.o = o;
    s.run_wall0 = s.r_wall0 = real_now();
    *exit_status = 1;
    if (cfg->rounds <= 0) {
        snprintf(err, errlen, "rounds must be > 0 for a simulation");
        return FEDGE_ERR_CONFIG_VALUE;
    }
    fedge_rng_seed(&s.root, o->seed);
    snprintf(s.state_dir, sizeof s.state_dir, "%s.clients", cfg->db);

    double wall0 = real_wall(), logged = logged_until(cfg->db);
    fedge_clock_virtual(logged + 1.0 > wall0 ? logged + 1.0 : wall0);
    ret = fedge_agg_init(&s.a, cfg, err, errlen);
    if (ret != FEDGE_OK)
        return ret;
    s.agg_open = 1;
    s.a.noise_seed = o->seed;
    /* WAL commits survive the process being killed without an fsync each;
     * only a power loss could lose the last ones, which a simulation redoes */
    if (sqlite3_exec(s.a.db, "PRAGMA synchronous=OFF", NULL, NULL, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    s.n_dev = s.a.keys.n;
    if (o->clients > 0 && (size_t)o->clients != s.n_dev) {
        snprintf(err, errlen, "%s lists %zu devices, --clients says %ld", cfg->keys_file, s.n_dev, o->clients);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    s.seen_rounds_done = s.a.rounds_done;
    s.seen_aggregated = s.a.rounds_aggregated;
    s.n_trainers = o->threads;
    s.clients = calloc(s.n_dev, sizeof *s.clients);
    s.trainers = calloc((size_t)s.n_trainers, sizeof *s.trainers);
    if (!s.clients || !s.trainers)
        FAIL(FEDGE_ERR_NOMEM);
    for (int k = 0; k < s.n_trainers; k++)
        fedge_edge_trainer_init(&s.trainers[k]);
    CHK(count_shards(&s, err, errlen));
    CHK(mark_fraction(&s, o->byzantine_frac, STREAM_BYZANTINE, 0));
    CHK(mark_fraction(&s, o->straggler_frac, STREAM_STRAGGLER, 1));
    CHK(load_counters(&s));
    CHK(reconcile_pending_controls(&s));
    size_t nb = 0, ns = 0;
    for (size_t d = 0; d < s.n_dev; d++) {
        nb += s.clients[d].byzantine;
        ns += s.clients[d].straggler;
    }
    warn_byzantine_tolerance(&s, cfg, nb);
    if (!o->json) {
        printf("fedge-sim: %zu devices, %zu shards, %zu byzantine (%s x%g), %zu stragglers, dropout %g,"
               " %d thread(s), seed %llu%s\n",
               s.n_dev, s.n_shards, nb, o->attack == FEDGE_SIM_ATTACK_SIGNFLIP ? "signflip" : "noise",
               o->attack_scale, ns, o->dropout, s.n_trainers, (unsigned long long)o->seed,
               s.a.rounds_done > 0 || s.a.state == FEDGE_AGG_OPEN ? " (resuming the log)" : "");
    }

    for (;;) {
        CHK(tick_open(&s, err, errlen));
        if (s.a.state == FEDGE_AGG_WAITING && s.now >= s.a.start_at && s.now >= s.a.retry_at)
            CHK(tick_open(&s, err, errlen)); /* a round closed: the next opens on the daemon's next tick */
        if (s.a.state == FEDGE_AGG_FINISHED)
            break;
        if (s.a.state == FEDGE_AGG_OPEN)
            CHK(start_clients(&s, err, errlen));
        if (s.a.state == FEDGE_AGG_FINISHED)
            break;
        double next = s.a.state != FEDGE_AGG_OPEN ? s.a.start_at : is_async(&s) ? s.now + 1.0 : s.a.deadline;
        if (s.a.retry_at > next)
            next = s.a.retry_at;
        if (s.n_pending > 0 && s.pending[0].at < next)
            next = s.pending[0].at;
        if (next <= s.now && !(s.n_pending > 0 && s.pending[0].at <= s.now))
            next = s.now + 1.0; /* nothing due: let the aggregator's clock move */
        if (s.a.busy_since > 0 && next == s.a.retry_at) {
            /* another process holds the database: that waits in real time */
            double wait = next - s.now;
            struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        }
        CHK(set_clock(&s, next));
        CHK(deliver_due(&s, err, errlen));
    }
    char outcome[256];
    *exit_status = fedge_agg_outcome(&s.a, outcome, sizeof outcome);
    summary(&s, *exit_status, outcome);
cleanup:
    if (ret != FEDGE_OK && !err[0])
        snprintf(err, errlen, "%s", fedge_strerror(ret));
    for (size_t i = 0; i < s.n_pending; i++)
        free(s.pending[i].sealed);
    free(s.pending);
    if (s.trainers)
        for (int k = 0; k < s.n_trainers; k++)
            fedge_edge_trainer_free(&s.trainers[k]);
    free(s.trainers);
    free(s.jobs);
    free(s.clients);
    if (s.agg_open)
        fedge_agg_free(&s.a);
    return ret;
}
