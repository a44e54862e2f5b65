/* relay.c — an inner node of an aggregation tree (relay.h). */
#include "relay.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/platform_util.h>

#include "clock.h"
#include "close.h"
#include "common.h"
#include "counter.h"
#include "envelope.h"
#include "governance.h"
#include "link.h"
#include "log.h"
#include "modelfile.h"
#include "modelstore.h"
#include "policy.h"
#include "retention.h"
#include "round_info.h"
#include "scheduler.h"
#include "store.h"
#include "strategy.h"
#include "update.h"

#define RELAY_SENT_SQL                                                                              \
    "CREATE TABLE IF NOT EXISTS relay_sent(round INTEGER PRIMARY KEY, parent_run BLOB NOT NULL,"    \
    " counter INTEGER NOT NULL, n_updates INTEGER NOT NULL, n_samples INTEGER NOT NULL,"            \
    " head_hash BLOB NOT NULL, sealed BLOB NOT NULL, sealed_sha256 BLOB NOT NULL,"                  \
    " status TEXT NOT NULL CHECK(status IN ('sealed','answered','unanswered')), code INTEGER,"      \
    " reply TEXT, sent_at REAL);"

/* What the link thread does: one job at a time, posted by the owner thread
 * and handed back through the mailbox (struct fedge_relay's mu). */
typedef enum { JOB_NONE = 0, JOB_ROUND, JOB_MODEL, JOB_POST } relay_job_kind;

typedef struct {
    relay_job_kind kind;
    double until;                 /* fedge_now(): no request past it */
    size_t max_body;              /* JOB_MODEL */
    uint32_t round;               /* JOB_POST: the relay_sent row */
    fedge_edge_blob *body;        /* JOB_POST: the sealed bytes (the thread releases it) */
    /* results */
    int rc;                       /* FEDGE_OK: a reply came */
    fedge_edge_reply reply;       /* 4 KiB: off the stack */
    char why[160];                /* the link's reason when rc != FEDGE_OK */
    fedge_model fetched;          /* JOB_MODEL: GET /model's body, parsed (the owner frees it) */
    int have_fetched;
    uint8_t fetched_version[FEDGE_HASH_LEN];
    double at;                    /* fedge_now() when the job ended */
} relay_job;

struct fedge_relay {
    fedge_edge_link *link;        /* used by the link thread alone once it runs */
    fedge_device_key key;
    char psk[FEDGE_PSK_LEN + 1];
    char host[64];
    uint16_t port;
    char id[FEDGE_DEVICE_ID_MAX + 1];
    double timeout_s;             /* upstream_timeout_s */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;           /* guards posted, done, quit and job while posted */
    pthread_cond_t cv;
    int posted, done;
    volatile sig_atomic_t quit;   /* the link's stop flag: set by fedge_relay_free */
    relay_job job;                /* the owner's while !busy, the thread's while busy and !done */
    int busy;                     /* owner: a job is posted and not yet taken back */
    /* owner thread only */
    double next_poll;             /* fedge_now() */
    unsigned failures;            /* requests to the parent failed in a row */
    int parent_known;             /* parent_run and parent_end are for the open round */
    uint8_t parent_run[FEDGE_RUN_ID_LEN];
    double parent_end;            /* the parent's deadline for the open round (fedge_now()) */
    uint32_t passed_round;        /* a parent round decided against (too late to take) */
    fedge_round_info pend_ri;     /* the round whose model is being fetched */
    double pend_end;              /* its deadline at the parent */
    uint32_t send_round;          /* the partial just sealed: sent until send_until */
    double send_until;
    int finish_after_send;        /* rounds reached: finished once send_round is answered */
};

static const volatile sig_atomic_t *g_stop; /* fedge_relay_set_stop */

void fedge_relay_set_stop(const volatile sig_atomic_t *stop)
{
    g_stop = stop;
}

static int split_host_port(const char *hp, char *host, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(hp, ':');
    if (!colon)
        return FEDGE_ERR_CONFIG_VALUE;
    const char *h = hp;
    size_t n = (size_t)(colon - hp);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= cap)
        return FEDGE_ERR_CONFIG_VALUE;
    memcpy(host, h, n);
    host[n] = '\0';
    long p = strtol(colon + 1, NULL, 10);
    if (p < 1 || p > 65535)
        return FEDGE_ERR_CONFIG_VALUE;
    *port = (uint16_t)p;
    return FEDGE_OK;
}

int fedge_relay_listed(const fedge_agg_config *cfg, const char *device)
{
    size_t len = device ? strlen(device) : 0;
    if (len == 0)
        return 0;
    for (const char *p = cfg->relays; *p;) {
        size_t n = strcspn(p, ",");
        if (n == len && memcmp(p, device, len) == 0)
            return 1;
        if (!p[n])
            break;
        p += n + 1;
    }
    return 0;
}

/* ---- the link thread: requests to the parent, nothing else ---- */

static int model_sink(void *arg, const uint8_t *data, size_t len)
{
    relay_job *j = arg;
    fedge_model_free(&j->fetched);
    memset(&j->fetched, 0, sizeof j->fetched);
    j->have_fetched = 0;
    int ret = fedge_model_deserialize(data, len, &j->fetched, j->fetched_version);
    j->have_fetched = ret == FEDGE_OK;
    return ret;
}

/* One request: at most timeout_s in all, half for a DTLS handshake when a
 * session must be opened, half for the exchange, and never past `until`. */
static int link_request(struct fedge_relay *r, relay_job *j, fedge_edge_request *req)
{
    double left = j->until - fedge_now();
    if (left > r->timeout_s / 2)
        left = r->timeout_s / 2;
    if (left <= 0.001) {
        snprintf(j->why, sizeof j->why, "no time left before the deadline");
        return FEDGE_ERR_TIMEOUT;
    }
    req->timeout_ms = (uint32_t)(left * 1000.0);
    int rc = fedge_edge_link_request(r->link, req, &j->reply, &r->quit);
    if (rc != FEDGE_OK)
        snprintf(j->why, sizeof j->why, "%s", fedge_edge_link_last_error(r->link));
    return rc;
}

/* POSTs the sealed bytes until an answer that is final or `until`. */
static int link_post(struct fedge_relay *r, relay_job *j)
{
    int rc = FEDGE_ERR_TIMEOUT;
    for (unsigned attempt = 0; fedge_now() < j->until; attempt++) {
        fedge_edge_request req = {.method = FEDGE_EDGE_POST, .path = "update", .body = j->body};
        rc = link_request(r, j, &req);
        if (rc == FEDGE_OK && j->reply.code / 100 != 5 && j->reply.code != 408)
            break;
        if (rc == FEDGE_OK && j->reply.code == 503 &&
            (strncmp(j->reply.body, "no open round", 13) == 0 || strncmp(j->reply.body, "run finished", 12) == 0))
            break; /* the parent's round is over: final */
        if (rc == FEDGE_ERR_EDGE_STOPPED)
            break;
        if (rc != FEDGE_OK)
            FEDGE_WARN("relay: POST /update to the parent: %s (%s); trying again", fedge_strerror(rc), j->why);
        double pause = 0.2 * (double)(1u << (attempt < 4 ? attempt : 4));
        if (fedge_now() + pause >= j->until)
            break;
        if (fedge_edge_link_sleep(r->link, (uint32_t)(pause * 1000.0), &r->quit) == FEDGE_ERR_EDGE_STOPPED) {
            rc = FEDGE_ERR_EDGE_STOPPED;
            break;
        }
    }
    return rc;
}

static void link_run(struct fedge_relay *r, relay_job *j)
{
    memset(&j->reply, 0, sizeof j->reply);
    j->why[0] = '\0';
    if (j->kind == JOB_ROUND) {
        fedge_edge_request req = {.method = FEDGE_EDGE_GET, .path = "round"};
        j->rc = link_request(r, j, &req);
    } else if (j->kind == JOB_MODEL) {
        fedge_edge_request req = {.method = FEDGE_EDGE_GET, .path = "model", .sink = model_sink, .sink_arg = j,
                                  .max_body = j->max_body};
        j->have_fetched = 0;
        j->rc = link_request(r, j, &req);
        if (j->rc == FEDGE_OK && (j->reply.code != 205 || !j->have_fetched))
            fedge_edge_link_reset(r->link);
    } else {
        j->rc = link_post(r, j);
        fedge_edge_blob_release(j->body);
        j->body = NULL;
    }
    j->at = fedge_now();
}

static void *link_thread(void *arg)
{
    struct fedge_relay *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->quit && !r->posted)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->quit)
            break;
        r->posted = 0;
        pthread_mutex_unlock(&r->mu);
        link_run(r, &r->job);
        pthread_mutex_lock(&r->mu);
        r->done = 1;
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Owner: hands r->job (filled) to the link thread. */
static void post_job(struct fedge_relay *r)
{
    pthread_mutex_lock(&r->mu);
    r->done = 0;
    r->posted = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    r->busy = 1;
}

/* Owner: the kind of the job the thread has finished (r->job is the
 * owner's again), or JOB_NONE while none is posted or it is still running. */
static relay_job_kind take_job(struct fedge_relay *r)
{
    if (!r->busy)
        return JOB_NONE;
    pthread_mutex_lock(&r->mu);
    int done = r->done;
    r->done = 0;
    pthread_mutex_unlock(&r->mu);
    if (!done)
        return JOB_NONE;
    r->busy = 0;
    relay_job *j = &r->job;
    r->failures = j->rc == FEDGE_OK ? 0 : r->failures + 1;
    if (j->rc != FEDGE_OK && j->rc != FEDGE_ERR_EDGE_STOPPED)
        FEDGE_WARN("relay: %s /%s to the parent: %s (%s)", j->kind == JOB_POST ? "POST" : "GET",
                   j->kind == JOB_ROUND ? "round" : j->kind == JOB_MODEL ? "model" : "update", fedge_strerror(j->rc),
                   j->why);
    return j->kind;
}

/* ---- the owner thread ---- */

int fedge_relay_open(fedge_aggregator *a, char *err, size_t errlen)
{
    fedge_keys keys;
    struct fedge_relay *r = NULL;
    int ret = FEDGE_OK, have_keys = 0, have_sync = 0;
    memset(&keys, 0, sizeof keys);
    a->relay = NULL;
    if (!a->cfg.upstream[0])
        return FEDGE_OK;
    if (fedge_policy_dp_enabled(a->policy)) {
        snprintf(err, errlen, "the policy turns DP on: a relay refuses DP (per-update clipping applies at the "
                 "relay; noise belongs to the root, which counts each relay as one client)");
        return FEDGE_ERR_CONFIG_VALUE;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        return FEDGE_ERR_NOMEM;
    snprintf(r->id, sizeof r->id, "%s", a->cfg.upstream_id);
    r->timeout_s = a->cfg.upstream_timeout_s;
    if (split_host_port(a->cfg.upstream, r->host, sizeof r->host, &r->port) != FEDGE_OK) {
        snprintf(err, errlen, "upstream: expected HOST:PORT, got '%s'", a->cfg.upstream);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    ret = fedge_keys_load(a->cfg.upstream_keys, &keys, err, errlen);
    if (ret != FEDGE_OK)
        goto cleanup;
    have_keys = 1;
    const fedge_device_entry *e = fedge_keys_find(&keys, r->id, strlen(r->id));
    if (!e) {
        snprintf(err, errlen, "upstream_keys %s has no line for upstream_id %s", a->cfg.upstream_keys, r->id);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    CHK(fedge_envelope_derive_key(e->secret, FEDGE_SECRET_LEN, r->id, &r->key));
    CHK(fedge_keys_dtls_psk(e->secret, r->id, r->psk));
    CHK(fedge_store_exec(a->db, RELAY_SENT_SQL));
    {
        /* who this log is at the parent: the cross-tier lineage's label (tiers.h) */
        sqlite3_stmt *st = NULL;
        CHK(fedge_store_prepare(a->db, "INSERT OR REPLACE INTO meta(key, value) VALUES('upstream_id', ?)", &st));
        sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
        CHK(fedge_store_step_done(a->db, st));
    }
    fedge_edge_link_config lc = {
        .host = r->host,
        .port = r->port,
        .id = r->id,
        .psk = r->psk,
        .handshake_timeout_ms = (uint32_t)(a->cfg.upstream_timeout_s * 500.0), /* half: see link_request() */
    };
    char why[256] = "";
    ret = fedge_edge_link_open(&lc, &r->link, why, sizeof why);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "upstream %s: %s", a->cfg.upstream, why);
        goto cleanup;
    }
    if (pthread_mutex_init(&r->mu, NULL) != 0)
        FAIL(FEDGE_ERR_NOMEM);
    if (pthread_cond_init(&r->cv, NULL) != 0) {
        pthread_mutex_destroy(&r->mu);
        FAIL(FEDGE_ERR_NOMEM);
    }
    have_sync = 1;
    if (pthread_create(&r->thread, NULL, link_thread, r) != 0) {
        snprintf(err, errlen, "cannot start the thread of the link to the parent");
        FAIL(FEDGE_ERR_NOMEM);
    }
    r->thread_started = 1;
    FEDGE_INFO("relay: parent %s as device %s (DTLS, own thread); rounds follow the parent's", a->cfg.upstream,
               r->id);
    a->relay = r;
    r = NULL;
cleanup:
    if (have_keys)
        fedge_keys_free(&keys);
    if (r) {
        if (have_sync) {
            pthread_cond_destroy(&r->cv);
            pthread_mutex_destroy(&r->mu);
        }
        fedge_edge_link_close(r->link);
        fedge_device_key_wipe(&r->key);
        mbedtls_platform_zeroize(r->psk, sizeof r->psk);
        free(r);
    }
    return ret;
}

void fedge_relay_free(fedge_aggregator *a)
{
    struct fedge_relay *r = a->relay;
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->quit = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->thread_started)
        pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    fedge_edge_blob_release(r->job.body);
    fedge_edge_link_close(r->link);
    fedge_model_free(&r->job.fetched);
    fedge_device_key_wipe(&r->key);
    mbedtls_platform_zeroize(r->psk, sizeof r->psk);
    free(r);
    a->relay = NULL;
}

static void post_simple(struct fedge_relay *r, relay_job_kind kind, double until, size_t max_body)
{
    fedge_model_free(&r->job.fetched);
    memset(&r->job.fetched, 0, sizeof r->job.fetched);
    r->job.have_fetched = 0;
    r->job.kind = kind;
    r->job.until = until;
    r->job.max_body = max_body;
    r->job.body = NULL;
    post_job(r);
}

/* The parent's model for round ri becomes the current one (logged as a
 * models row of kind init: it was made by the parent, not here); the
 * GET /model's answer is in r->job. */
static int adopt_fetched_model(fedge_aggregator *a, const fedge_round_info *ri, int *ok)
{
    struct fedge_relay *r = a->relay;
    relay_job *j = &r->job;
    char info[256];
    int ret = FEDGE_OK;
    *ok = 0;
    if (j->rc != FEDGE_OK)
        return FEDGE_OK;
    if (j->reply.code != 205 || !j->have_fetched) {
        FEDGE_WARN("relay: GET /model from the parent answered %d.%02d%s", j->reply.code / 100, j->reply.code % 100,
                   j->reply.sink_called && !j->have_fetched ? " with an unusable model" : "");
        return FEDGE_OK;
    }
    if (memcmp(j->fetched_version, ri->model, FEDGE_HASH_LEN) != 0) {
        FEDGE_INFO("relay: the parent served another model than its round %u's; asking again", ri->round);
        return FEDGE_OK;
    }
    if (fedge_model_spec_id(&j->fetched.spec) != a->model_id) {
        char spec[FEDGE_MODEL_SPEC_MAX];
        (void)fedge_model_spec_format(&a->model.spec, spec, sizeof spec);
        FEDGE_ERROR("relay: the parent's model is %s, not this relay's model_spec %s; round %u not served",
                    ri->spec_text, spec, ri->round);
        r->passed_round = ri->round;
        return FEDGE_OK;
    }
    snprintf(info, sizeof info, "the parent's model for its round %u (relay of %s)", ri->round, a->cfg.upstream);
    CHK(fedge_store_begin(a->db));
    CHK(fedge_modelstore_adopt(a, &j->fetched, ri->round));
    j->have_fetched = 0;
    CHK(fedge_modelstore_record(a, NULL, "init", ri->round, -1, info));
    CHK(fedge_store_commit(a->db));
    *ok = 1;
cleanup:
    if (ret != FEDGE_OK)
        fedge_modelstore_rollback(a);
    return ret;
}

/* The GET /round answer in r->job, parsed; *got = 0 when it is unusable. */
static void round_answer(struct fedge_relay *r, fedge_round_info *ri, int *got)
{
    relay_job *j = &r->job;
    char why[160] = "";
    *got = 0;
    if (j->rc != FEDGE_OK)
        return;
    if (j->reply.code != 205) {
        FEDGE_WARN("relay: GET /round from the parent answered %d.%02d", j->reply.code / 100, j->reply.code % 100);
        return;
    }
    if (j->reply.body_total > j->reply.body_len ||
        fedge_round_info_parse(j->reply.body, j->reply.body_len, ri, why, sizeof why) != FEDGE_OK) {
        FEDGE_WARN("relay: the parent's GET /round is unusable: %s", why[0] ? why : "too long");
        return;
    }
    *got = 1;
}

/* Writes the reply to a sent partial (r->job) into relay_sent and the
 * audited log. */
static int record_answer(fedge_aggregator *a)
{
    struct fedge_relay *r = a->relay;
    relay_job *j = &r->job;
    uint32_t round = j->round;
    int rc = j->rc;
    sqlite3_stmt *st = NULL;
    char detail[320], line[160];
    int ret;
    size_t k = 0;
    for (size_t i = 0; i < j->reply.body_len && k + 1 < sizeof line; i++) {
        char ch = j->reply.body[i];
        if (ch == '\n' || ch == '\r')
            break;
        line[k++] = ch >= 32 && ch < 127 ? ch : '?';
    }
    line[k] = '\0';
    int answered = rc == FEDGE_OK;
    CHK(fedge_store_begin(a->db));
    CHK(fedge_store_prepare(a->db, "UPDATE relay_sent SET status=?, code=?, reply=?, sent_at=? WHERE round=?", &st));
    sqlite3_bind_text(st, 1, answered ? "answered" : "unanswered", -1, SQLITE_STATIC);
    if (answered) {
        sqlite3_bind_int(st, 2, j->reply.code);
        sqlite3_bind_text(st, 3, line, -1, SQLITE_STATIC);
    }
    sqlite3_bind_double(st, 4, fedge_clock_wall());
    sqlite3_bind_int64(st, 5, round);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    if (answered)
        snprintf(detail, sizeof detail, "partial for the parent's round %u: %d.%02d %s", round, j->reply.code / 100,
                 j->reply.code % 100, line);
    else
        snprintf(detail, sizeof detail, "partial for the parent's round %u: no answer (%s)", round,
                 fedge_strerror(rc));
    CHK(fedge_gov_event(a, round, NULL, "relay_sent", "relay", detail));
    CHK(fedge_gov_sign_head(a, round));
    CHK(fedge_store_commit(a->db));
    if (answered && j->reply.code == 204)
        FEDGE_INFO("relay: %s", detail);
    else
        FEDGE_WARN("relay: %s", detail);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    sqlite3_finalize(st);
    return ret;
}

/* Rows left 'sealed' (logged, maybe sent, no answer recorded: the partial
 * just sealed, a crash, a busy database when the answer came) are sent
 * (again), the very same bytes; the parent answers with its stored decision
 * if it has one. *posted = 1 when a POST job was handed to the link thread. */
static int post_pending(fedge_aggregator *a, double now, int *posted)
{
    struct fedge_relay *r = a->relay;
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK;
    *posted = 0;
    CHK(fedge_store_prepare(a->db, "SELECT round, sealed FROM relay_sent WHERE status='sealed' ORDER BY round LIMIT 1",
                            &st));
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        goto cleanup;
    if (rc != SQLITE_ROW)
        FAIL(fedge_store_status(rc));
    uint32_t round = (uint32_t)sqlite3_column_int64(st, 0);
    size_t len = (size_t)sqlite3_column_bytes(st, 1);
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        FAIL(FEDGE_ERR_NOMEM);
    memcpy(copy, sqlite3_column_blob(st, 1), len);
    fedge_edge_blob *blob = NULL;
    CHK(fedge_edge_blob_new(copy, len, &blob));
    if (round == r->send_round && r->send_until > now) {
        r->job.until = r->send_until;
    } else {
        FEDGE_INFO("relay: sending the logged partial for the parent's round %u again (no answer recorded)", round);
        r->job.until = now + a->cfg.upstream_timeout_s;
    }
    fedge_model_free(&r->job.fetched);
    memset(&r->job.fetched, 0, sizeof r->job.fetched);
    r->job.kind = JOB_POST;
    r->job.round = round;
    r->job.body = blob;
    post_job(r);
    *posted = 1;
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* The parent's training parameters, passed on to this relay's edges. */
static void take_parameters(fedge_aggregator *a, const fedge_round_info *ri)
{
    a->cfg.lr = ri->lr;
    a->cfg.lr_decay = 1.0;
    a->cfg.local_epochs = ri->epochs;
    a->cfg.batch = ri->batch;
    a->cfg.momentum = ri->momentum;
    a->cfg.fedprox_mu = ri->prox_mu;
}

/* The round ri (deadline end at the parent) opens here with the model now
 * current. */
static void open_next(fedge_aggregator *a, const fedge_round_info *ri, double end, fedge_relay_next *next)
{
    struct fedge_relay *r = a->relay;
    double len = end - a->cfg.upstream_margin_s - fedge_now();
    if (len < 0.5) {
        FEDGE_WARN("relay: the parent's round %u ends in %.1fs, less than upstream_margin_s %.1fs + 0.5s;"
                   " not taking part", ri->round, end - fedge_now(), a->cfg.upstream_margin_s);
        r->passed_round = ri->round;
        return;
    }
    take_parameters(a, ri);
    memcpy(r->parent_run, ri->run_id, sizeof r->parent_run);
    r->parent_end = end;
    r->parent_known = 1;
    next->open = 1;
    next->round = ri->round;
    next->timeout_s = len;
}

/* A GET /round answer while waiting. */
static int on_round_waiting(fedge_aggregator *a, fedge_relay_next *next)
{
    struct fedge_relay *r = a->relay;
    fedge_round_info ri;
    int got = 0;
    /* an unreachable parent is asked less often */
    double wait = a->cfg.upstream_poll_s * (double)(1u << (r->failures < 6 ? r->failures : 6));
    r->next_poll = fedge_now() + (wait < 30.0 || a->cfg.upstream_poll_s >= 30.0 ? wait : 30.0);
    round_answer(r, &ri, &got);
    if (!got)
        return FEDGE_OK;
    if (ri.state == FEDGE_ROUND_FINISHED) {
        FEDGE_INFO("relay: the parent's run has finished");
        next->finished = 1;
        return FEDGE_OK;
    }
    if (ri.state != FEDGE_ROUND_OPEN || !ri.selected || ri.round <= a->round || ri.round == r->passed_round)
        return FEDGE_OK;
    double end = r->job.at + (ri.deadline_ms >= 0 ? (double)ri.deadline_ms / 1000.0 : a->cfg.round_timeout_s);
    if (end - a->cfg.upstream_margin_s - fedge_now() < 0.5) {
        open_next(a, &ri, end, next); /* refuses it, saying why */
        return FEDGE_OK;
    }
    if (memcmp(ri.model, a->version, FEDGE_HASH_LEN) == 0) {
        open_next(a, &ri, end, next);
        return FEDGE_OK;
    }
    r->pend_ri = ri;
    r->pend_end = end;
    post_simple(r, JOB_MODEL, fedge_now() + a->cfg.upstream_timeout_s,
                4 * fedge_model_spec_param_count(&ri.spec) + 64 + FEDGE_MODEL_SPEC_MAX);
    return FEDGE_OK;
}

/* What the link thread finished, taken in any state: a partial's answer is
 * recorded; *kind says what else came back for the caller. */
static int take_finished(fedge_aggregator *a, relay_job_kind *kind)
{
    struct fedge_relay *r = a->relay;
    int ret = FEDGE_OK;
    *kind = take_job(r);
    if (*kind != JOB_POST)
        return FEDGE_OK;
    if (r->job.rc == FEDGE_ERR_EDGE_STOPPED)
        return FEDGE_OK; /* stopping: the row stays 'sealed', sent again after the restart */
    CHK(record_answer(a));
    if (r->job.round == r->send_round) {
        r->send_round = 0;
        r->send_until = 0;
    }
cleanup:
    return ret;
}

int fedge_relay_poll(fedge_aggregator *a, double now, fedge_relay_next *next)
{
    struct fedge_relay *r = a->relay;
    relay_job_kind kind;
    int ret = FEDGE_OK, ok = 0, posted = 0;
    memset(next, 0, sizeof next[0]);
    CHK(take_finished(a, &kind));
    if (kind == JOB_ROUND)
        return on_round_waiting(a, next);
    if (kind == JOB_MODEL) {
        CHK(adopt_fetched_model(a, &r->pend_ri, &ok));
        fedge_model_free(&r->job.fetched);
        memset(&r->job.fetched, 0, sizeof r->job.fetched);
        if (ok)
            open_next(a, &r->pend_ri, r->pend_end, next);
        return FEDGE_OK;
    }
    if (kind == JOB_POST && r->finish_after_send && !r->send_round) {
        r->finish_after_send = 0;
        FEDGE_INFO("relay: %ld rounds done (rounds); finished", a->rounds_done);
        next->finished = 1;
        return FEDGE_OK;
    }
    if (r->busy)
        return FEDGE_OK;
    CHK(post_pending(a, now, &posted));
    if (posted || now < r->next_poll)
        return FEDGE_OK;
    post_simple(r, JOB_ROUND, now + a->cfg.upstream_timeout_s, 0);
cleanup:
    return ret;
}

int fedge_relay_check_open(fedge_aggregator *a, double now, int *gone)
{
    struct fedge_relay *r = a->relay;
    fedge_round_info ri;
    relay_job_kind kind;
    int got = 0, ret = FEDGE_OK;
    *gone = 0;
    CHK(take_finished(a, &kind));
    if (kind == JOB_MODEL) {
        fedge_model_free(&r->job.fetched);
        memset(&r->job.fetched, 0, sizeof r->job.fetched);
    }
    if (r->parent_known)
        return FEDGE_OK;
    if (kind == JOB_ROUND) {
        round_answer(r, &ri, &got);
        if (!got)
            return FEDGE_OK;
        if (ri.state != FEDGE_ROUND_OPEN || ri.round != a->round ||
            memcmp(ri.model, a->version, FEDGE_HASH_LEN) != 0) {
            *gone = 1;
            return FEDGE_OK;
        }
        take_parameters(a, &ri);
        memcpy(r->parent_run, ri.run_id, sizeof r->parent_run);
        r->parent_end = r->job.at +
                        (ri.deadline_ms >= 0 ? (double)ri.deadline_ms / 1000.0 : a->cfg.round_timeout_s);
        r->parent_known = 1;
        double mine = r->parent_end - a->cfg.upstream_margin_s;
        if (a->deadline > mine)
            a->deadline = mine;
        FEDGE_INFO("relay: resumed round %u is still open at the parent (%.1fs left)", a->round,
                   r->parent_end - fedge_now());
        return FEDGE_OK;
    }
    if (r->busy || now < r->next_poll)
        return FEDGE_OK;
    r->next_poll = now + a->cfg.upstream_poll_s;
    post_simple(r, JOB_ROUND, now + a->cfg.upstream_timeout_s, 0);
cleanup:
    return ret;
}

static int is_daemon_fault(int ret)
{
    return ret == FEDGE_ERR_SQL || ret == FEDGE_ERR_BUSY || ret == FEDGE_ERR_IO || ret == FEDGE_ERR_NOMEM;
}

/* The signed head just written (head_hash of the latest audit_heads row). */
static int latest_head(fedge_aggregator *a, uint8_t head[FEDGE_HASH_LEN])
{
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(fedge_store_prepare(a->db, "SELECT head_hash FROM audit_heads ORDER BY seq DESC LIMIT 1", &st));
    if (sqlite3_step(st) != SQLITE_ROW || sqlite3_column_bytes(st, 0) != FEDGE_HASH_LEN)
        FAIL(FEDGE_ERR_STATE);
    memcpy(head, sqlite3_column_blob(st, 0), FEDGE_HASH_LEN);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Seals the partial and logs it in relay_sent (caller's transaction). */
static int seal_partial(fedge_aggregator *a, const fedge_close_partial *p, size_t n_updates)
{
    struct fedge_relay *r = a->relay;
    sqlite3_stmt *st = NULL;
    uint8_t *sealed = NULL, sha[FEDGE_HASH_LEN];
    size_t sealed_len = 0;
    int64_t last = 0;
    int ret;
    fedge_delta_header h;
    memset(&h, 0, sizeof h);
    h.encoding = FEDGE_ENC_FP32;
    h.flags = FEDGE_DELTA_FLAG_PARTIAL;
    h.model_id = a->model_id;
    h.round = a->round;
    h.n_samples = p->n_samples > UINT32_MAX ? UINT32_MAX : (uint32_t)p->n_samples;
    h.n_elems = (uint32_t)a->model.n_params;
    memcpy(h.base_version, a->version, FEDGE_HASH_LEN);
    CHK(latest_head(a, h.partial_head));
    /* above every counter sent before, whatever the clock says */
    CHK(fedge_store_query_int64(a->db, &last, NULL, "SELECT max(counter) FROM relay_sent", ""));
    uint64_t counter = fedge_edge_now_us();
    if (counter <= (uint64_t)last)
        counter = (uint64_t)last + 1;
    CHK(fedge_update_seal(&r->key, counter, r->parent_run, &h, p->mean, NULL, &sealed, &sealed_len));
    CHK(fedge_sha256(sealed, sealed_len, sha));
    CHK(fedge_store_prepare(a->db, "INSERT INTO relay_sent(round, parent_run, counter, n_updates, n_samples,"
                            " head_hash, sealed, sealed_sha256, status) VALUES(?,?,?,?,?,?,?,?, 'sealed')", &st));
    sqlite3_bind_int64(st, 1, a->round);
    sqlite3_bind_blob(st, 2, r->parent_run, FEDGE_RUN_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (int64_t)counter);
    sqlite3_bind_int64(st, 4, (int64_t)n_updates);
    sqlite3_bind_int64(st, 5, (int64_t)h.n_samples);
    sqlite3_bind_blob(st, 6, h.partial_head, FEDGE_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, sealed, (int)sealed_len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 8, sha, FEDGE_HASH_LEN, SQLITE_STATIC);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret == FEDGE_OK) {
        char head_hex[FEDGE_HASH_HEX_LEN];
        fedge_hash_to_hex(h.partial_head, head_hex);
        FEDGE_INFO("relay: round %u partial sealed: %zu updates, %u samples, head %.16s, %zu bytes", a->round,
                   n_updates, h.n_samples, head_hex, sealed_len);
    }
cleanup:
    sqlite3_finalize(st);
    free(sealed);
    return ret;
}

int fedge_relay_close_round(fedge_aggregator *a)
{
    struct fedge_relay *r = a->relay;
    fedge_close_result res;
    fedge_close_partial p = {0};
    char reason[sizeof res.reason + 96];
    int ret, sealed = 0;
    memset(&res, 0, sizeof res);
    p.mean = malloc((a->model.n_params ? a->model.n_params : 1) * sizeof *p.mean);
    if (!p.mean)
        return FEDGE_ERR_NOMEM;
    CHK(fedge_store_begin(a->db));
    ret = fedge_close_partial_sum(a, &res, &p);
    if (ret != FEDGE_OK && !is_daemon_fault(ret)) {
        int agg_err = ret;
        fedge_store_rollback(a->db);
        memset(&res, 0, sizeof res);
        snprintf(res.reason, sizeof res.reason, "aggregation failed: %s", fedge_strerror(agg_err));
        CHK(fedge_store_begin(a->db));
        CHK(fedge_gov_event(a, a->round, NULL, "round_failed", "aggregate", res.reason));
    } else if (ret != FEDGE_OK) {
        goto cleanup;
    }
    a->n_accepted = res.ok ? res.n_used : 0;
    a->n_rejected += res.n_excluded;
    if (res.ok && (!r->parent_known || fedge_now() >= r->parent_end)) {
        res.ok = 0;
        snprintf(res.reason, sizeof res.reason, "the parent's deadline for round %u passed before the partial"
                 " was sealed; nothing sent", a->round);
    }
    if (!res.ok) {
        snprintf(reason, sizeof reason, "%s", res.reason);
        CHK(fedge_sched_finish_round(a, "failed", NULL, -1, -1, reason));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(fedge_store_commit(a->db));
        FEDGE_WARN("round %u failed: %s; nothing sent to the parent", a->round, reason);
    } else {
        snprintf(reason, sizeof reason, "partial sum of %zu updates (%llu samples) for the parent's round %u%s%s",
                 res.n_used, (unsigned long long)p.n_samples, a->round, res.reason[0] ? "; " : "", res.reason);
        CHK(fedge_sched_finish_round(a, "closed", NULL, -1, -1, reason));
        CHK(fedge_gov_sign_head(a, a->round));
        CHK(seal_partial(a, &p, res.n_used));
        CHK(fedge_store_commit(a->db));
        a->rounds_aggregated++;
        sealed = 1;
        FEDGE_INFO("round %u closed: %zu accepted, %zu rejected, %llu bytes; %s", a->round, a->n_accepted,
                   a->n_rejected, (unsigned long long)a->bytes_received, reason);
    }
    if (a->cfg.retain_deltas_rounds > 0) {
        int rr = fedge_retention_after_round(a);
        if (rr != FEDGE_OK)
            FEDGE_WARN("round %u: dropping old delta bodies failed: %s", a->round, fedge_strerror(rr));
    }
    a->rounds_done++;
    a->state = FEDGE_AGG_WAITING;
    r->parent_known = 0;
    if (sealed) {
        /* sent by the link thread, retried until the parent's deadline */
        r->send_round = a->round;
        r->send_until = r->parent_end;
        r->next_poll = 0;
    }
    if (a->cfg.rounds > 0 && a->rounds_done >= a->cfg.rounds) {
        if (sealed) {
            r->finish_after_send = 1; /* fedge_relay_poll: once the partial is answered */
        } else {
            a->state = FEDGE_AGG_FINISHED;
            a->finished_at = fedge_clock_mono();
            FEDGE_INFO("relay: %ld rounds done (rounds); finished", a->rounds_done);
        }
    }
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    free(p.mean);
    return ret;
}
