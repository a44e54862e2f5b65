/* fedge-edgesim — many virtual devices in one process, each a real fedge-edge
 * client (edge/client.c, fedge_edge_run_device) over real DTLS/CoAP to a real
 * fedge-aggregator. docs/EDGESIM.md describes the model.
 *
 * Threads: S session threads (small stacks) wait on their slot; the main
 * thread runs the arrival process (plan.h), hands a device to an idle slot,
 * raises a session's stop flag when its time budget ends or its dropout
 * point passes, prints progress once a second and stops everything when the
 * aggregator reports the run finished (a session that ends by itself before
 * its rounds are done) or --duration-s passes. Devices live in memory: keys
 * derived once from one keys file, a slice of one data file, the replay
 * counter carried from one session to the next. */
#include <errno.h>
#include <netdb.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/platform_util.h>

#include "blas.h"
#include "client.h"
#include "clock.h"
#include "common.h"
#include "envelope.h"
#include "keys.h"
#include "log.h"
#include "model.h"
#include "partition.h"
#include "plan.h"
#include "rng.h"
#include "shard.h"
#include "version.h"

#define TICK_NS 5000000L          /* the main thread's timer resolution */
#define SAMPLES_MAX (1u << 22)    /* latency samples kept (each kind) */
#define N_CODES 8
static const int codes[N_CODES] = {400, 401, 403, 408, 409, 413, 503, 0}; /* 0: any other */

typedef struct {
    char id[FEDGE_DEVICE_ID_MAX + 1];
    fedge_device_key key;
    char psk[FEDGE_PSK_LEN + 1];
    uint64_t counter;            /* the replay counter, across sessions */
    uint64_t first, count;       /* contiguous rows of the data (when not partitioned) */
    double speed;
} sim_device;

typedef struct sim sim;

typedef struct {
    sim *s;
    pthread_t th;
    pthread_cond_t wake;
    int started;
    int has_job;                  /* under s->lock */
    uint32_t device;
    int dropping;                 /* this session vanishes during its upload */
    volatile sig_atomic_t stop;
    _Atomic uint64_t end_at_us;   /* session budget (0: none) */
    _Atomic uint64_t drop_at_us;  /* armed when the upload starts (0: not armed) */
    atomic_int busy;
    uint32_t posted;              /* rounds done this session (uploads ended, or not sent) */
} slot;

typedef struct {
    double *v;
    size_t n, cap;
} samples;

struct sim {
    fedge_edgesim_options o;
    fedge_edge_config base;
    sim_device *dev;
    fedge_dataset ds;
    int have_ds;
    fedge_partition part;
    int have_part;
    fedge_model_spec spec;
    slot *slots;
    uint32_t *idle;
    uint32_t n_idle;
    fedge_edgesim_pool pool;
    fedge_rng rng;
    pthread_mutex_t lock;
    int closing;
    atomic_int finished;
    double t0;
    /* counters */
    atomic_ulong sessions, sessions_ended, sent, accepted, duplicates, no_answer, cut_mid_post,
        dropped_sessions, refused[N_CODES], bytes_up, bytes_down, handshakes, models_fetched,
        session_errors, arrivals_late, not_sent;
    atomic_int active, max_active;
    _Atomic uint64_t post_ewma_us;
    samples post_ms, session_ms;   /* under lock */
    int err_code[16];
    unsigned long err_count[16];   /* under lock */
};

static uint64_t now_us(void) { return (uint64_t)(fedge_clock_mono() * 1e6); }

static void sample_add(sim *s, samples *a, double v)
{
    pthread_mutex_lock(&s->lock);
    if (a->n == a->cap && a->cap < SAMPLES_MAX) {
        size_t cap = a->cap ? a->cap * 2 : 4096;
        double *nv = realloc(a->v, cap * sizeof *nv);
        if (nv) {
            a->v = nv;
            a->cap = cap;
        }
    }
    if (a->n < a->cap)
        a->v[a->n++] = v;
    pthread_mutex_unlock(&s->lock);
}

static void note_error(sim *s, int code)
{
    atomic_fetch_add(&s->session_errors, 1);
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < 16; i++) {
        if (s->err_count[i] && s->err_code[i] != code)
            continue;
        s->err_code[i] = code;
        s->err_count[i]++;
        break;
    }
    pthread_mutex_unlock(&s->lock);
}

/* Sleep ms in short steps, ending early when *stop is raised. */
static int sim_sleep(double ms, const volatile sig_atomic_t *stop)
{
    double end = fedge_clock_mono() + ms / 1000.0;
    for (;;) {
        if (stop && *stop)
            return FEDGE_ERR_EDGE_STOPPED;
        double left = end - fedge_clock_mono();
        if (left <= 0)
            return FEDGE_OK;
        struct timespec ts = {0, (long)(fmin(left, 0.01) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* --train none: a seeded N(0, 0.01^2) delta of the model's shape (sealed
 * and sent for real), after compute_ms x the device's speed. */
static int train_none(void *arg, fedge_edge_trainer *t, fedge_shard_reader *shard,
                      const fedge_edge_train_params *p, const volatile sig_atomic_t *stop,
                      double *mean_loss)
{
    slot *sl = arg;
    sim *s = sl->s;
    fedge_rng base, r;
    fedge_rng_seed(&base, s->o.seed ^ p->seed);
    fedge_rng_split(&base, sl->device, &r);
    t->delta = t->grad ? t->grad : t->local.params; /* where the trainer leaves its delta */
    for (size_t i = 0; i < t->local.n_params; i++)
        t->delta[i] = 0.01f * (float)fedge_rng_normal(&r);
    *mean_loss = NAN; /* nothing trained: the update carries no training metrics */
    return sim_sleep(s->o.compute_ms * s->dev[sl->device].speed, stop);
}

/* --train sgd: the real trainer, then (speed - 1) x its time asleep. */
static int train_sgd(void *arg, fedge_edge_trainer *t, fedge_shard_reader *shard,
                     const fedge_edge_train_params *p, const volatile sig_atomic_t *stop,
                     double *mean_loss)
{
    slot *sl = arg;
    double t0 = fedge_clock_mono();
    int ret = fedge_edge_trainer_train(t, shard, p, stop, mean_loss);
    if (ret != FEDGE_OK)
        return ret;
    double took_ms = (fedge_clock_mono() - t0) * 1000.0;
    return sim_sleep(took_ms * (sl->s->dev[sl->device].speed - 1.0), stop);
}

static int code_index(int code)
{
    for (int i = 0; i < N_CODES - 1; i++)
        if (codes[i] == code)
            return i;
    return N_CODES - 1;
}

static void on_event(void *arg, const fedge_edge_event *ev)
{
    slot *sl = arg;
    sim *s = sl->s;
    switch (ev->kind) {
    case FEDGE_EDGE_EV_FETCHED:
        atomic_fetch_add(&s->models_fetched, 1);
        atomic_fetch_add(&s->bytes_down, ev->bytes);
        break;
    case FEDGE_EDGE_EV_POSTING:
        atomic_fetch_add(&s->sent, 1);
        atomic_fetch_add(&s->bytes_up, ev->bytes);
        if (sl->dropping) {
            /* somewhere in the upload: U(0, 1) x the recent reply latency */
            uint64_t est = atomic_load(&s->post_ewma_us);
            pthread_mutex_lock(&s->lock);
            double u = fedge_rng_uniform_d(&s->rng);
            pthread_mutex_unlock(&s->lock);
            atomic_store(&sl->drop_at_us, now_us() + 1 + (uint64_t)(u * (double)est));
        }
        break;
    case FEDGE_EDGE_EV_POSTED:
        sl->posted++;
        if (ev->status == FEDGE_ERR_EDGE_STOPPED) {
            atomic_fetch_add(&s->cut_mid_post, 1);
            break;
        }
        if (ev->status != FEDGE_OK || ev->code == 0) {
            atomic_fetch_add(&s->no_answer, 1);
            break;
        }
        sample_add(s, &s->post_ms, (double)ev->latency_ms);
        uint64_t ewma = atomic_load(&s->post_ewma_us);
        atomic_store(&s->post_ewma_us, (ewma * 7 + ev->latency_ms * 1000) / 8);
        if (ev->code == 204) {
            if (strstr(ev->reason, "duplicate"))
                atomic_fetch_add(&s->duplicates, 1);
            else
                atomic_fetch_add(&s->accepted, 1);
        } else {
            atomic_fetch_add(&s->refused[code_index(ev->code)], 1);
        }
        break;
    case FEDGE_EDGE_EV_END:
        atomic_fetch_add(&s->handshakes, ev->handshakes);
        break;
    case FEDGE_EDGE_EV_NOT_SENT:
        sl->posted++; /* a round done: the run-finished test counts it */
        atomic_fetch_add(&s->not_sent, 1);
        break;
    }
}

/* The session's rows: metadata only for --train none (nothing is read),
 * the slice written to a short-lived shard file and opened for sgd. */
static int open_rows(sim *s, uint32_t d, fedge_shard_reader *rd, int *opened)
{
    int ret = FEDGE_OK;
    size_t *idx = NULL, count;
    char path[PATH_MAX];
    const sim_device *dv = &s->dev[d];
    *opened = 0;
    count = s->have_part ? s->part.sizes[d] : (size_t)dv->count;
    if (s->o.train == EDGESIM_TRAIN_NONE) {
        memset(rd, 0, sizeof *rd);
        rd->fd = -1;
        rd->n = count;
        rd->dim = s->have_ds ? s->ds.dim : s->spec.input_dim;
        rd->n_classes = s->have_ds ? s->ds.n_classes : s->spec.classes;
        rd->feature_type = FEDGE_SHARD_U8;
        rd->record_size = 1 + (size_t)rd->dim;
        return count ? FEDGE_OK : FEDGE_ERR_RANGE;
    }
    if (!count)
        return FEDGE_ERR_RANGE;
    if (s->have_part) {
        idx = s->part.indices[d];
    } else {
        idx = malloc(count * sizeof *idx);
        if (!idx)
            return FEDGE_ERR_NOMEM;
        for (size_t i = 0; i < count; i++)
            idx[i] = (size_t)dv->first + i;
    }
    if (snprintf(path, sizeof path, "%s/edgesim-%ld-%s.shard", s->o.tmp_dir, (long)getpid(),
                 dv->id) >= (int)sizeof path)
        FAIL(FEDGE_ERR_RANGE);
    CHK(fedge_shard_write(path, &s->ds, idx, count, FEDGE_SHARD_U8));
    ret = fedge_shard_open(rd, path);
    unlink(path);
    if (ret == FEDGE_OK)
        *opened = 1;
cleanup:
    if (!s->have_part)
        free(idx);
    return ret;
}

static void run_session(slot *sl)
{
    sim *s = sl->s;
    sim_device *dv = &s->dev[sl->device];
    fedge_shard_reader rd;
    int opened = 0;
    double t0 = fedge_clock_mono();
    fedge_log_set_thread_tag(dv->id);
    int ret = open_rows(s, sl->device, &rd, &opened);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("device %s: no rows: %s", dv->id, fedge_strerror(ret));
        note_error(s, ret);
        return;
    }
    fedge_edge_config cfg = s->base;
    cfg.id = dv->id;
    cfg.seed = s->o.seed + sl->device;
    fedge_edge_device ed = {
        .key = &dv->key,
        .psk = dv->psk,
        .shard = &rd,
        .counter_last = &dv->counter,
        .train = s->o.train == EDGESIM_TRAIN_SGD ? train_sgd : train_none,
        .event = on_event,
        .arg = sl,
    };
    ret = fedge_edge_run_device(&cfg, &ed, &sl->stop);
    sample_add(s, &s->session_ms, (fedge_clock_mono() - t0) * 1000.0);
    if (ret != FEDGE_OK)
        note_error(s, ret);
    else if (!sl->stop && (s->o.rounds == 0 || sl->posted < s->o.rounds))
        atomic_store(&s->finished, 1); /* it saw state=finished */
    if (opened)
        fedge_shard_close(&rd);
}

static void *session_thread(void *arg)
{
    slot *sl = arg;
    sim *s = sl->s;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!sl->has_job && !s->closing)
            pthread_cond_wait(&sl->wake, &s->lock);
        if (!sl->has_job) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        pthread_mutex_unlock(&s->lock);

        int a = atomic_fetch_add(&s->active, 1) + 1, m = atomic_load(&s->max_active);
        while (a > m && !atomic_compare_exchange_weak(&s->max_active, &m, a))
            ;
        run_session(sl);
        atomic_fetch_sub(&s->active, 1);
        atomic_fetch_add(&s->sessions_ended, 1);

        pthread_mutex_lock(&s->lock);
        atomic_store(&sl->busy, 0);
        sl->has_job = 0;
        if (fedge_edgesim_pool_put(&s->pool, sl->device) != FEDGE_OK)
            FEDGE_ERROR("device %u returned twice", sl->device); /* a bug: never expected */
        s->idle[s->n_idle++] = (uint32_t)(sl - s->slots);
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

/* Keys of the first P devices, derived once; their rows and speeds. */
static int load_devices(sim *s)
{
    int ret = FEDGE_OK;
    fedge_keys keys;
    char err[256] = "";
    const fedge_edgesim_options *o = &s->o;
    ret = fedge_keys_load(o->keys_path, &keys, err, sizeof err);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-edgesim: keys: %s\n", err[0] ? err : fedge_strerror(ret));
        return ret;
    }
    if (keys.n < o->population) {
        fprintf(stderr, "fedge-edgesim: %s holds %zu devices, fewer than --population %u\n",
                o->keys_path, keys.n, o->population);
        FAIL(FEDGE_ERR_EDGE_USAGE);
    }
    s->dev = calloc(o->population, sizeof *s->dev);
    if (!s->dev)
        FAIL(FEDGE_ERR_NOMEM);
    uint64_t rows = s->have_ds ? s->ds.n : (uint64_t)o->samples * o->population;
    for (uint32_t d = 0; d < o->population; d++) {
        sim_device *dv = &s->dev[d];
        const fedge_device_entry *e = &keys.devices[d];
        snprintf(dv->id, sizeof dv->id, "%s", e->id);
        CHK(fedge_envelope_derive_key(e->secret, FEDGE_SECRET_LEN, e->id, &dv->key));
        CHK(fedge_keys_dtls_psk(e->secret, e->id, dv->psk));
        fedge_edgesim_slice(rows, o->population, d, &dv->first, &dv->count);
        dv->speed = fedge_edgesim_speed(o, d);
    }
cleanup:
    fedge_keys_free(&keys);
    return ret;
}

static int load_data(sim *s)
{
    const fedge_edgesim_options *o = &s->o;
    int ret = fedge_model_spec_parse(o->model_spec, &s->spec);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-edgesim: --model-spec %s: %s\n", o->model_spec,
                fedge_strerror(ret));
        return ret;
    }
    if (!o->data_path)
        return FEDGE_OK;
    ret = fedge_shard_load(o->data_path, &s->ds);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-edgesim: --data %s: %s\n", o->data_path, fedge_strerror(ret));
        return ret;
    }
    s->have_ds = 1;
    if (s->ds.n < o->population) {
        fprintf(stderr, "fedge-edgesim: --data has %zu rows, fewer than the %u devices\n",
                s->ds.n, o->population);
        return FEDGE_ERR_RANGE;
    }
    if (o->beta > 0.0) {
        fedge_partition_config pc = {
            .kind = FEDGE_PARTITION_DIRICHLET,
            .n_clients = (int)o->population,
            .beta = o->beta,
            .min_size = 1,
            .seed = o->seed,
        };
        ret = fedge_partition_make(&s->ds, &pc, &s->part);
        if (ret != FEDGE_OK) {
            fprintf(stderr, "fedge-edgesim: Dirichlet(%g) slices: %s\n", o->beta,
                    fedge_strerror(ret));
            return ret;
        }
        s->have_part = 1;
    }
    return FEDGE_OK;
}

static void raise_nofile(uint32_t sessions)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)sessions * 4 + 64; /* socket, epoll, timerfd per context */
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
        fprintf(stderr, "fedge-edgesim: warning: only %lu file descriptors for %u sessions\n",
                (unsigned long)rl.rlim_cur, sessions);
}

static unsigned long refused_total(sim *s)
{
    unsigned long n = 0;
    for (int i = 0; i < N_CODES; i++)
        n += atomic_load(&s->refused[i]);
    return n;
}

static void progress(sim *s, double now)
{
    fprintf(stderr,
            "edgesim: %6.1fs active %4d sessions %lu sent %lu accepted %lu refused %lu "
            "cut %lu errors %lu\n",
            now - s->t0, atomic_load(&s->active), atomic_load(&s->sessions),
            atomic_load(&s->sent), atomic_load(&s->accepted), refused_total(s),
            atomic_load(&s->cut_mid_post), atomic_load(&s->session_errors));
}

static int write_json(sim *s, double wall_s)
{
    const fedge_edgesim_options *o = &s->o;
    FILE *f = fopen(o->json_path, "w");
    if (!f) {
        fprintf(stderr, "fedge-edgesim: cannot write %s\n", o->json_path);
        return FEDGE_ERR_IO;
    }
    double p50 = fedge_edgesim_quantile(s->post_ms.v, s->post_ms.n, 0.5);
    double p99 = fedge_edgesim_quantile(s->post_ms.v, s->post_ms.n, 0.99);
    double s50 = fedge_edgesim_quantile(s->session_ms.v, s->session_ms.n, 0.5);
    double s99 = fedge_edgesim_quantile(s->session_ms.v, s->session_ms.n, 0.99);
    fprintf(f, "{\n  \"population\": %u, \"concurrency\": %u, \"seed\": %llu,\n", o->population,
            o->concurrency, (unsigned long long)o->seed);
    if (o->arrival == EDGESIM_ARRIVAL_POISSON)
        fprintf(f, "  \"arrival\": \"poisson:%g\",", o->rate);
    else
        fprintf(f, "  \"arrival\": \"all\",");
    fprintf(f, " \"train\": \"%s\", \"dropout\": %g,\n",
            o->train == EDGESIM_TRAIN_SGD ? "sgd" : "none", o->dropout);
    fprintf(f, "  \"wall_s\": %.3f, \"finished\": %s,\n", wall_s,
            atomic_load(&s->finished) ? "true" : "false");
    fprintf(f, "  \"sessions\": %lu, \"sessions_ended\": %lu, \"max_active\": %d, "
               "\"dropped_sessions\": %lu, \"arrivals_late\": %lu,\n",
            atomic_load(&s->sessions), atomic_load(&s->sessions_ended),
            atomic_load(&s->max_active), atomic_load(&s->dropped_sessions),
            atomic_load(&s->arrivals_late));
    fprintf(f, "  \"updates\": {\"sent\": %lu, \"accepted\": %lu, \"accepted_duplicate\": %lu, "
               "\"no_answer\": %lu, \"cut_mid_post\": %lu, \"not_sent\": %lu, \"refused\": {",
            atomic_load(&s->sent), atomic_load(&s->accepted), atomic_load(&s->duplicates),
            atomic_load(&s->no_answer), atomic_load(&s->cut_mid_post), atomic_load(&s->not_sent));
    for (int i = 0; i < N_CODES; i++) {
        if (codes[i])
            fprintf(f, "%s\"%d.%02d\": %lu", i ? ", " : "", codes[i] / 100, codes[i] % 100,
                    atomic_load(&s->refused[i]));
        else
            fprintf(f, ", \"other\": %lu", atomic_load(&s->refused[i]));
    }
    fprintf(f, "}, \"refused_total\": %lu},\n", refused_total(s));
    fprintf(f, "  \"latency_ms\": {\"post_p50\": %.1f, \"post_p99\": %.1f, \"post_n\": %zu, "
               "\"session_p50\": %.1f, \"session_p99\": %.1f},\n",
            p50, p99, s->post_ms.n, s50, s99);
    fprintf(f, "  \"bytes\": {\"up\": %lu, \"down\": %lu}, \"models_fetched\": %lu, "
               "\"handshakes\": %lu,\n",
            atomic_load(&s->bytes_up), atomic_load(&s->bytes_down),
            atomic_load(&s->models_fetched), atomic_load(&s->handshakes));
    fprintf(f, "  \"errors\": {");
    for (int i = 0; i < 16 && s->err_count[i]; i++)
        fprintf(f, "%s\"%s\": %lu", i ? ", " : "", fedge_strerror(s->err_code[i]),
                s->err_count[i]);
    fprintf(f, "}, \"session_errors\": %lu\n}\n", atomic_load(&s->session_errors));
    return fclose(f) == 0 ? FEDGE_OK : FEDGE_ERR_IO;
}

static volatile sig_atomic_t g_signal;
static void on_signal(int sig) { g_signal = sig; }

/* Hand devices to idle slots as the arrival process says. Under s->lock. */
static void dispatch(sim *s, double now, double *next_arrival)
{
    const fedge_edgesim_options *o = &s->o;
    while (now >= *next_arrival && s->n_idle && s->pool.n) {
        uint32_t d;
        if (fedge_edgesim_pool_take(&s->pool, &s->rng, &d) != FEDGE_OK)
            break;
        slot *sl = &s->slots[s->idle[--s->n_idle]];
        sl->device = d;
        sl->dropping = o->dropout > 0.0 && fedge_rng_uniform_d(&s->rng) < o->dropout;
        sl->stop = 0;
        sl->posted = 0;
        atomic_store(&sl->drop_at_us, 0);
        /* U(0.5, 1.5) x the budget: sessions started together do not all end together */
        double budget_s = o->session_s * (0.5 + fedge_rng_uniform_d(&s->rng));
        atomic_store(&sl->end_at_us, o->session_s > 0 ? now_us() + (uint64_t)(budget_s * 1e6) : 0);
        atomic_store(&sl->busy, 1);
        sl->has_job = 1;
        atomic_fetch_add(&s->sessions, 1);
        pthread_cond_signal(&sl->wake);
        *next_arrival += fedge_edgesim_gap_s(o, &s->rng);
    }
    if (o->arrival == EDGESIM_ARRIVAL_POISSON && now - *next_arrival > 1.0) {
        /* every slot busy (or every device in a session) for a second: the
         * backlog is dropped, not released later as a burst */
        while (now - *next_arrival > 1.0) {
            atomic_fetch_add(&s->arrivals_late, 1);
            *next_arrival += fedge_edgesim_gap_s(o, &s->rng);
        }
    }
}

static void check_timers(sim *s)
{
    uint64_t t = now_us();
    for (uint32_t i = 0; i < s->o.concurrency; i++) {
        slot *sl = &s->slots[i];
        if (!atomic_load(&sl->busy) || sl->stop)
            continue;
        uint64_t drop = atomic_load(&sl->drop_at_us), end = atomic_load(&sl->end_at_us);
        if (drop && t >= drop) {
            atomic_fetch_add(&s->dropped_sessions, 1);
            sl->stop = 1;
        } else if (end && t >= end) {
            sl->stop = 1;
        }
    }
}

static void *probe_thread(void *arg) { return arg; }

/* glibc carves the static TLS (gemm.c's packing buffers, 640 KiB, untouched
 * unless the thread trains) out of a thread's stack mapping and refuses a
 * mapping that cannot hold it (EINVAL): the smallest mapping that starts a
 * thread, so the stack asked for comes on top of it. */
static size_t static_tls_bytes(void)
{
    pthread_attr_t a;
    pthread_t t;
    size_t size = (size_t)64 << 10;
    pthread_attr_init(&a);
    for (; size < ((size_t)64 << 20); size += (size_t)64 << 10) {
        if (pthread_attr_setstacksize(&a, size) != 0)
            continue;
        if (pthread_create(&t, &a, probe_thread, NULL) == 0) {
            pthread_join(t, NULL);
            break;
        }
    }
    pthread_attr_destroy(&a);
    return size;
}

static int run(sim *s)
{
    int ret = FEDGE_OK;
    const fedge_edgesim_options *o = &s->o;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    size_t stack = static_tls_bytes() + (size_t)o->stack_kib * 1024;
    pthread_attr_setstacksize(&attr, stack);
    s->slots = calloc(o->concurrency, sizeof *s->slots);
    s->idle = calloc(o->concurrency, sizeof *s->idle);
    if (!s->slots || !s->idle)
        FAIL(FEDGE_ERR_NOMEM);
    for (uint32_t i = 0; i < o->concurrency; i++) {
        slot *sl = &s->slots[i];
        sl->s = s;
        pthread_cond_init(&sl->wake, NULL);
        int rc = pthread_create(&sl->th, &attr, session_thread, sl);
        if (rc != 0) {
            fprintf(stderr, "fedge-edgesim: cannot start session thread %u of %u: %s\n", i,
                    o->concurrency, strerror(rc));
            FAIL(FEDGE_ERR_NOMEM);
        }
        sl->started = 1;
        pthread_mutex_lock(&s->lock);
        s->idle[s->n_idle++] = o->concurrency - 1 - i;
        pthread_mutex_unlock(&s->lock);
    }
    fprintf(stderr, "edgesim: %u session threads, %zu KiB mappings (%u KiB stack + static TLS)\n",
            o->concurrency, stack >> 10, o->stack_kib);
    s->t0 = fedge_clock_mono();
    double next_arrival = s->t0, last_progress = s->t0;
    for (;;) {
        double now = fedge_clock_mono();
        if (g_signal || atomic_load(&s->finished) ||
            (o->duration_s > 0 && now - s->t0 >= o->duration_s))
            break;
        pthread_mutex_lock(&s->lock);
        dispatch(s, now, &next_arrival);
        pthread_mutex_unlock(&s->lock);
        check_timers(s);
        if (now - last_progress >= 1.0) {
            progress(s, now);
            last_progress = now;
        }
        struct timespec ts = {0, TICK_NS};
        nanosleep(&ts, NULL);
    }
cleanup:
    if (s->slots) {
        pthread_mutex_lock(&s->lock);
        s->closing = 1;
        for (uint32_t i = 0; i < o->concurrency; i++) {
            s->slots[i].stop = 1;
            pthread_cond_signal(&s->slots[i].wake);
        }
        pthread_mutex_unlock(&s->lock);
        for (uint32_t i = 0; i < o->concurrency; i++)
            if (s->slots[i].started)
                pthread_join(s->slots[i].th, NULL);
        for (uint32_t i = 0; i < o->concurrency; i++)
            pthread_cond_destroy(&s->slots[i].wake);
        progress(s, fedge_clock_mono());
    }
    pthread_attr_destroy(&attr);
    return ret;
}

int main(int argc, char **argv)
{
    static sim s; /* large and zeroed */
    char err[256] = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--version")) {
            printf("fedge-edgesim %s\n", FEDGE_VERSION);
            return 0;
        }
    }
    int ret = fedge_edgesim_parse(argc, argv, &s.o, err, sizeof err);
    if (ret != FEDGE_OK) {
        fprintf(stderr, "fedge-edgesim: %s\n", err);
        fedge_edgesim_usage(stderr, argv[0]);
        return 2;
    }
    if (s.o.help) {
        fedge_edgesim_usage(stdout, argv[0]);
        return 0;
    }
    fedge_log_set_level(s.o.log_level);
    fedge_log_set_tag("edgesim");
    fedge_blas_set_threads(1); /* many trainers at once: one BLAS thread each */
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    raise_nofile(s.o.concurrency);
    pthread_mutex_init(&s.lock, NULL);
    fedge_rng_seed(&s.rng, s.o.seed);
    atomic_store(&s.post_ewma_us, 20000);

    fedge_edge_config_defaults(&s.base);
    snprintf(s.base.host, sizeof s.base.host, "%s", s.o.host);
    s.base.port = s.o.port;
    s.base.encoding = s.o.encoding;
    s.base.poll_ms = s.o.poll_ms;
    s.base.timeout_ms = s.o.timeout_ms;
    s.base.max_retries = s.o.max_retries;
    s.base.log_level = s.o.log_level;
    s.base.max_rounds = s.o.rounds;
    s.base.exit_when_finished = 1;
    s.base.tcp = s.o.tcp;

    /* what a mistyped command line gets wrong fails before any work */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM}, *ai = NULL;
    char port_text[8];
    snprintf(port_text, sizeof port_text, "%u", (unsigned)s.o.port);
    int gai = getaddrinfo(s.o.host, port_text, &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "fedge-edgesim: --server %s: cannot resolve: %s\n", s.o.host, gai_strerror(gai));
        FAIL(FEDGE_ERR_EDGE_USAGE);
    }
    freeaddrinfo(ai);
    if (s.o.json_path) {
        FILE *jf = fopen(s.o.json_path, "w");
        if (!jf) {
            fprintf(stderr, "fedge-edgesim: --json %s: %s\n", s.o.json_path, strerror(errno));
            FAIL(FEDGE_ERR_EDGE_USAGE);
        }
        fclose(jf);
    }
    double t_load = fedge_clock_mono();
    CHK(load_data(&s));
    CHK(load_devices(&s));
    CHK(fedge_edgesim_pool_init(&s.pool, s.o.population));
    fprintf(stderr, "edgesim: %u devices (keys, slices) ready in %.2f s; %u sessions at once\n",
            s.o.population, fedge_clock_mono() - t_load, s.o.concurrency);
    CHK(run(&s));
    if (s.o.json_path)
        CHK(write_json(&s, fedge_clock_mono() - s.t0));
cleanup:
    if (s.dev) {
        for (uint32_t d = 0; d < s.o.population; d++)
            fedge_device_key_wipe(&s.dev[d].key);
        mbedtls_platform_zeroize(s.dev, s.o.population * sizeof *s.dev);
    }
    free(s.dev);
    free(s.slots);
    free(s.idle);
    free(s.post_ms.v);
    free(s.session_ms.v);
    fedge_edgesim_pool_free(&s.pool);
    if (s.have_part)
        fedge_partition_free(&s.part);
    if (s.have_ds)
        fedge_dataset_free(&s.ds);
    pthread_mutex_destroy(&s.lock);
    return ret == FEDGE_OK ? 0 : ret == FEDGE_ERR_EDGE_USAGE ? 2 : 1;
}
