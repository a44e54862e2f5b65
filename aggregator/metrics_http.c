/* metrics_http.c — Prometheus metrics and /healthz (metrics_http.h). */
#include "metrics_http.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common.h"
#include "config.h"
#include "policy.h"
#include "store.h"

const double fedge_metrics_latency_bounds[FEDGE_METRICS_LATENCY_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0};

void fedge_metrics_latency_observe(fedge_metrics_latency *l, double seconds)
{
    if (l == NULL || !(seconds >= 0.0))
        return;
    l->count++;
    l->sum_s += seconds;
    for (size_t i = 0; i < FEDGE_METRICS_LATENCY_BUCKETS; i++)
        if (seconds <= fedge_metrics_latency_bounds[i]) {
            l->bucket[i]++;
            return;
        }
    /* above the last bound: counted in count (+Inf) only */
}

/* ---- the HTTP side ------------------------------------------------------- */

#define MAX_CONNECTIONS 32u
#define MAX_PER_IP 8u
#define IDLE_TIMEOUT_S 10u
#define CONNECTION_MEMORY (16u * 1024u)
/* A request must be read and answered within this many seconds of its
 * connection's start or the previous response, however the bytes trickle
 * (the idle timeout restarts at each byte: a slowloris would hold every
 * slot); the refresher thread shuts down older ones each second. */
#define REQUEST_MAX_S 5.0

typedef struct {
    int used;
    int fd;       /* MHD's socket; shut down (never closed) here */
    double since; /* mono_s() of the connection's start or its last response */
} conn_slot;

struct fedge_metrics_http {
    struct MHD_Daemon *d;
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* the refresher sleeps on it; stop wakes it */
    char *text;          /* the published exposition */
    size_t len;
    int healthy;
    char reason[256];
    double stale_s;      /* no state from the owner for this long: /healthz says stuck */
    /* the owner's side, under mu */
    fedge_metrics_state state;
    int have_state;
    double state_at;     /* CLOCK_MONOTONIC s of the last set_state */
    int stop;
    /* the refresher's own */
    pthread_t thread;
    int thread_started;
    sqlite3 *db;         /* read-only */
    char db_path[FEDGE_PATH_MAX];
    /* open connections (MHD's thread adds and drops them, the refresher
     * sweeps), under conn_mu, taken after mu when both are held */
    pthread_mutex_t conn_mu;
    conn_slot conns[2 * MAX_CONNECTIONS];
};

static double mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned code, const char *type, const char *body,
                               size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size,
                              void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    fedge_metrics_http *m = cls;
    static const char text_type[] = "text/plain; charset=utf-8";
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        static const char msg[] = "only GET and HEAD\n";
        return respond(c, MHD_HTTP_METHOD_NOT_ALLOWED, text_type, msg, sizeof msg - 1);
    }
    if (strcmp(url, "/metrics") == 0) {
        pthread_mutex_lock(&m->mu);
        enum MHD_Result r = m->text != NULL
                                ? respond(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", m->text, m->len)
                                : respond(c, MHD_HTTP_SERVICE_UNAVAILABLE, text_type, "starting\n", 9);
        pthread_mutex_unlock(&m->mu);
        return r;
    }
    if (strcmp(url, "/healthz") == 0) {
        char body[300];
        pthread_mutex_lock(&m->mu);
        int ok = m->healthy;
        double age = mono_s() - m->state_at;
        int n;
        if (m->have_state && age > m->stale_s) {
            ok = 0;
            n = snprintf(body, sizeof body, "stale: no state from the daemon's loop for %.0f s\n", age);
        } else {
            n = snprintf(body, sizeof body, "%s\n", m->reason);
        }
        pthread_mutex_unlock(&m->mu);
        return respond(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text_type, body,
                       n > 0 && (size_t)n < sizeof body ? (size_t)n : strlen(body));
    }
    static const char msg[] = "not found: /metrics and /healthz are served\n";
    return respond(c, MHD_HTTP_NOT_FOUND, text_type, msg, sizeof msg - 1);
}

static void *refresher(void *arg);

static void on_connection(void *cls, struct MHD_Connection *c, void **ctx, enum MHD_ConnectionNotificationCode code)
{
    fedge_metrics_http *m = cls;
    pthread_mutex_lock(&m->conn_mu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        for (size_t i = 0; ci != NULL && i < sizeof m->conns / sizeof m->conns[0]; i++)
            if (!m->conns[i].used) {
                m->conns[i] = (conn_slot){.used = 1, .fd = ci->connect_fd, .since = mono_s()};
                *ctx = &m->conns[i];
                break;
            }
    } else if (*ctx != NULL) { /* closed: before MHD closes the socket */
        ((conn_slot *)*ctx)->used = 0;
        *ctx = NULL;
    }
    pthread_mutex_unlock(&m->conn_mu);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_ctx, enum MHD_RequestTerminationCode toe)
{
    fedge_metrics_http *m = cls;
    (void)req_ctx;
    (void)toe;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    pthread_mutex_lock(&m->conn_mu);
    if (ci != NULL && ci->socket_context != NULL)
        ((conn_slot *)ci->socket_context)->since = mono_s(); /* the next request's clock starts */
    pthread_mutex_unlock(&m->conn_mu);
}

/* Connections whose request has taken longer than REQUEST_MAX_S: shut
 * down, so MHD's next read sees the end and closes them. */
static void sweep_slow(fedge_metrics_http *m)
{
    double now = mono_s();
    pthread_mutex_lock(&m->conn_mu);
    for (size_t i = 0; i < sizeof m->conns / sizeof m->conns[0]; i++)
        if (m->conns[i].used && now - m->conns[i].since > REQUEST_MAX_S) {
            shutdown(m->conns[i].fd, SHUT_RDWR);
            m->conns[i].since = now; /* once is enough */
        }
    pthread_mutex_unlock(&m->conn_mu);
}

int fedge_metrics_http_start(const char *listen, const char *db_path, fedge_metrics_http **out, char *err,
                             size_t errlen)
{
    if (listen == NULL || db_path == NULL || out == NULL || strlen(db_path) >= FEDGE_PATH_MAX)
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    struct sockaddr_storage ss;
    socklen_t sl;
    char why[160];
    if (fedge_agg_parse_listen(listen, &ss, &sl, why, sizeof why) != FEDGE_OK) {
        snprintf(err, errlen, "metrics_listen %s: %s", listen, why);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    fedge_metrics_http *m = calloc(1, sizeof *m);
    if (m == NULL)
        return FEDGE_ERR_NOMEM;
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m);
        return FEDGE_ERR_NOMEM;
    }
    if (pthread_cond_init(&m->cv, NULL) != 0) {
        pthread_mutex_destroy(&m->mu);
        free(m);
        return FEDGE_ERR_NOMEM;
    }
    if (pthread_mutex_init(&m->conn_mu, NULL) != 0) {
        pthread_cond_destroy(&m->cv);
        pthread_mutex_destroy(&m->mu);
        free(m);
        return FEDGE_ERR_NOMEM;
    }
    snprintf(m->reason, sizeof m->reason, "starting");
    m->stale_s = FEDGE_METRICS_STALE_S;
    snprintf(m->db_path, sizeof m->db_path, "%s", db_path);
    if (sqlite3_open_v2(db_path, &m->db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "metrics: cannot open %s read-only: %s", db_path,
                 m->db ? sqlite3_errmsg(m->db) : "no memory");
        fedge_metrics_http_stop(m);
        return FEDGE_ERR_SQL;
    }
    sqlite3_busy_timeout(m->db, 1000);
    if (pthread_create(&m->thread, NULL, refresher, m) != 0) {
        fedge_metrics_http_stop(m);
        return FEDGE_ERR_NOMEM;
    }
    m->thread_started = 1;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    m->d = MHD_start_daemon(flags, 0, NULL, NULL, handle, m, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_CONNECTION_LIMIT, MAX_CONNECTIONS, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                            MAX_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT, IDLE_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, m, MHD_OPTION_NOTIFY_COMPLETED,
                            on_completed, m, MHD_OPTION_END);
    if (m->d == NULL) {
        snprintf(err, errlen, "metrics_listen %s: cannot listen (address in use or not local?)", listen);
        fedge_metrics_http_stop(m);
        return FEDGE_ERR_IO;
    }
    *out = m;
    return FEDGE_OK;
}

int fedge_metrics_http_publish(fedge_metrics_http *m, const char *text, size_t len, int healthy,
                               const char *reason)
{
    if (m == NULL || (text == NULL && len > 0))
        return FEDGE_ERR_INVALID_ARG;
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return FEDGE_ERR_NOMEM;
    if (len > 0)
        memcpy(copy, text, len);
    copy[len] = '\0';
    pthread_mutex_lock(&m->mu);
    char *old = m->text;
    m->text = copy;
    m->len = len;
    m->healthy = healthy != 0;
    snprintf(m->reason, sizeof m->reason, "%s", reason ? reason : (healthy ? "ok" : "unhealthy"));
    pthread_mutex_unlock(&m->mu);
    free(old);
    return FEDGE_OK;
}

void fedge_metrics_http_stop(fedge_metrics_http *m)
{
    if (m == NULL)
        return;
    if (m->d != NULL)
        MHD_stop_daemon(m->d);
    if (m->thread_started) {
        pthread_mutex_lock(&m->mu);
        m->stop = 1;
        pthread_cond_signal(&m->cv);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->thread, NULL);
    }
    sqlite3_close_v2(m->db);
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    pthread_mutex_destroy(&m->conn_mu);
    free(m->text);
    free(m);
}

void fedge_metrics_state_of(const fedge_aggregator *a, fedge_metrics_state *st)
{
    st->round = a->round;
    st->open = a->state == FEDGE_AGG_OPEN;
    st->finished = a->state == FEDGE_AGG_FINISHED;
    st->dp_enabled = a->policy != NULL && fedge_policy_dp_enabled(a->policy);
    st->epsilon_budget = st->dp_enabled ? fedge_policy_epsilon_budget(a->policy) : 0.0;
}

void fedge_metrics_http_set_state(fedge_metrics_http *m, const fedge_metrics_state *st)
{
    if (m == NULL || st == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    int first = !m->have_state;
    m->state = *st;
    m->have_state = 1;
    m->state_at = mono_s();
    if (first)
        pthread_cond_signal(&m->cv); /* the first text at once */
    pthread_mutex_unlock(&m->mu);
}

/* Renders every 20 x the render's time (the queries scan the log), 1 to
 * 10 s apart, from the owner's latest state; stops when told. */
static void *refresher(void *arg)
{
    fedge_metrics_http *m = arg;
    double next_at = 0.0;
    pthread_mutex_lock(&m->mu);
    while (!m->stop) {
        sweep_slow(m);
        double now = mono_s();
        if (!m->have_state || now < next_at) {
            double until = m->have_state && next_at < now + 1.0 ? next_at : now + 1.0;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            double wait = until - now;
            ts.tv_sec += (time_t)wait;
            ts.tv_nsec += (long)((wait - (double)(time_t)wait) * 1e9);
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&m->cv, &m->mu, &ts);
            continue;
        }
        fedge_metrics_state st = m->state;
        pthread_mutex_unlock(&m->mu);
        char *text = NULL, reason[256];
        size_t len = 0;
        int healthy = 0;
        double t0 = mono_s();
        int ret = fedge_metrics_render(m->db, m->db_path, &st, &text, &len, &healthy, reason, sizeof reason);
        double gap = 20.0 * (mono_s() - t0);
        next_at = t0 + (gap < 1.0 ? 1.0 : gap > 10.0 ? 10.0 : gap);
        if (ret == FEDGE_OK) {
            if (fedge_metrics_http_publish(m, text, len, healthy, reason) != FEDGE_OK)
                ret = FEDGE_ERR_NOMEM;
        }
        free(text);
        pthread_mutex_lock(&m->mu);
        if (ret != FEDGE_OK) { /* the last text stays; health says why */
            m->healthy = 0;
            snprintf(m->reason, sizeof m->reason, "%s", ret == FEDGE_ERR_NOMEM ? "out of memory" : reason);
        }
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* ---- rendering (owner thread) ---------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *q = realloc(b->p, cap);
        if (q == NULL) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

/* A label value: backslash, double quote and line feed escaped. */
static void sb_label(sbuf *b, const char *v)
{
    for (const char *s = v ? v : ""; *s; s++) {
        if (*s == '\\')
            sb_printf(b, "\\\\");
        else if (*s == '"')
            sb_printf(b, "\\\"");
        else if (*s == '\n')
            sb_printf(b, "\\n");
        else
            sb_printf(b, "%c", *s);
    }
}

static void head(sbuf *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A metric with one unlabelled integer sample. */
static void metric_count(sbuf *b, const char *name, const char *type, const char *help, unsigned long long v)
{
    head(b, name, type, help);
    sb_printf(b, "%s %llu\n", name, v);
}

/* Prometheus' float text: NaN, +Inf, -Inf, else shortest round-trip-ish. */
static void sb_value(sbuf *b, double v)
{
    if (isnan(v))
        sb_printf(b, "NaN\n");
    else if (isinf(v))
        sb_printf(b, "%sInf\n", v > 0 ? "+" : "-");
    else
        sb_printf(b, "%.17g\n", v);
}

/* One gauge from a query's first column of its first row (NaN when NULL or no row). */
static int query_double(sqlite3 *db, const char *sql, double *out, int *found)
{
    sqlite3_stmt *st = NULL;
    int ret = fedge_store_prepare(db, sql, &st);
    if (ret != FEDGE_OK)
        return ret;
    *out = NAN;
    *found = 0;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        *out = sqlite3_column_double(st, 0);
        *found = 1;
    } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        ret = fedge_store_status(rc);
    }
    sqlite3_finalize(st);
    return ret;
}

static int table_exists(sqlite3 *db, const char *name, int *exists)
{
    sqlite3_stmt *st = NULL;
    int ret = fedge_store_prepare(db, "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", &st);
    if (ret != FEDGE_OK)
        return ret;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *exists = rc == SQLITE_ROW;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? FEDGE_OK : fedge_store_status(rc);
}

/* name{label="..."} value for each row of sql (text label column(s), then a number). */
static int labelled(sbuf *b, sqlite3 *db, const char *name, const char *const *labels, int n_labels,
                    const char *sql)
{
    sqlite3_stmt *st = NULL;
    int ret = fedge_store_prepare(db, sql, &st), rc;
    if (ret != FEDGE_OK)
        return ret;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sb_printf(b, "%s{", name);
        for (int i = 0; i < n_labels; i++) {
            sb_printf(b, "%s%s=\"", i ? "," : "", labels[i]);
            sb_label(b, (const char *)sqlite3_column_text(st, i));
            sb_printf(b, "\"");
        }
        sb_printf(b, "} ");
        sb_value(b, sqlite3_column_double(st, n_labels));
    }
    if (rc != SQLITE_DONE)
        ret = fedge_store_status(rc);
    sqlite3_finalize(st);
    return ret;
}

/* The store can take writes: the database file and its folder (journal, WAL). */
static int store_writable(const char *path, char *why, size_t cap)
{
    char dir[FEDGE_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    if (access(path, W_OK) != 0) {
        snprintf(why, cap, "store unwritable: %s", path);
        return 0;
    }
    if (access(dir, W_OK) != 0) {
        snprintf(why, cap, "store unwritable: its folder %s", dir);
        return 0;
    }
    return 1;
}

int fedge_metrics_render(sqlite3 *db, const char *db_path, const fedge_metrics_state *st, char **out,
                         size_t *len, int *healthy, char *reason, size_t reason_len)
{
    if (db == NULL || db_path == NULL || st == NULL || out == NULL || len == NULL || healthy == NULL ||
        reason == NULL)
        return FEDGE_ERR_INVALID_ARG;
    const fedge_metrics_server *srv = st->have_server ? &st->srv : NULL;
    *out = NULL;
    *len = 0;
    sbuf b = {.p = malloc(4096), .cap = 4096};
    if (b.p == NULL)
        return FEDGE_ERR_NOMEM;
    b.p[0] = '\0';
    int ret = FEDGE_OK, found = 0, exists = 0;
    double v;

    metric_count(&b, "fedge_round", "gauge",
                 "The open round (async: aggregation step), or the last one when none is open.", st->round);
    metric_count(&b, "fedge_round_open", "gauge", "1 while a round (or async step) is open.", st->open);
    metric_count(&b, "fedge_run_finished", "gauge", "1 once the run has finished.", st->finished);

    static const char *const status_l[] = {"status"};
    static const char *const update_l[] = {"decision", "rule"};
    head(&b, "fedge_rounds_total", "counter", "Rounds (async: steps) in the log, by how they ended.");
    CHK(labelled(&b, db, "fedge_rounds_total", status_l, 1,
                 "SELECT s, (SELECT count(*) FROM rounds WHERE status = s) FROM"
                 " (SELECT 'closed' AS s UNION ALL SELECT 'failed' UNION ALL SELECT 'refused')"));
    head(&b, "fedge_updates_total", "counter", "Updates logged, by decision and the rule that decided.");
    CHK(labelled(&b, db, "fedge_updates_total", update_l, 2,
                 "SELECT decision, rule, count(*) FROM updates GROUP BY decision, rule ORDER BY decision, rule"));
    head(&b, "fedge_update_received_bytes_total", "counter", "Bytes of the sealed updates logged.");
    CHK(query_double(db, "SELECT coalesce(sum(bytes), 0) FROM updates", &v, &found));
    sb_printf(&b, "fedge_update_received_bytes_total ");
    sb_value(&b, v);

    head(&b, "fedge_model_accuracy", "gauge",
         "Test accuracy (ratio) of the last closed round's model on the held-out set.");
    CHK(query_double(db, "SELECT accuracy FROM rounds WHERE status='closed' AND accuracy IS NOT NULL"
                         " ORDER BY id DESC LIMIT 1", &v, &found));
    if (found) {
        sb_printf(&b, "fedge_model_accuracy ");
        sb_value(&b, v);
    }
    CHK(table_exists(db, "round_training", &exists));
    if (exists) {
        static const struct {
            const char *name, *col, *help;
        } tr[] = {
            {"fedge_train_loss", "train_loss",
             "Edges' local training loss, sample-weighted mean over the last round that reported."},
            {"fedge_train_loss_stddev", "train_loss_sd", "Sample-weighted standard deviation of that loss."},
            {"fedge_train_accuracy", "train_accuracy",
             "Edges' accuracy (ratio) on their own data, sample-weighted mean over the last round that reported."},
        };
        for (size_t i = 0; i < FEDGE_ARRAY_LEN(tr); i++) {
            char sql[160];
            snprintf(sql, sizeof sql, "SELECT %s FROM round_training WHERE %s IS NOT NULL ORDER BY round DESC LIMIT 1",
                     tr[i].col, tr[i].col);
            CHK(query_double(db, sql, &v, &found));
            head(&b, tr[i].name, "gauge", tr[i].help);
            if (found) {
                sb_printf(&b, "%s ", tr[i].name);
                sb_value(&b, v);
            }
        }
    }
    if (st->dp_enabled) {
        head(&b, "fedge_dp_epsilon_spent", "gauge", "The run's differential-privacy epsilon after the last charged round.");
        CHK(query_double(db, "SELECT epsilon FROM rounds WHERE epsilon IS NOT NULL ORDER BY id DESC LIMIT 1", &v,
                         &found));
        sb_printf(&b, "fedge_dp_epsilon_spent ");
        sb_value(&b, found ? v : 0.0);
        head(&b, "fedge_dp_epsilon_budget", "gauge", "The policy's epsilon budget for the run.");
        sb_printf(&b, "fedge_dp_epsilon_budget ");
        sb_value(&b, st->epsilon_budget);
    }
    head(&b, "fedge_devices", "gauge", "Devices in the log, by status.");
    CHK(labelled(&b, db, "fedge_devices", status_l, 1,
                 "SELECT s, (SELECT count(*) FROM devices WHERE status = s) FROM"
                 " (SELECT 'allowed' AS s UNION ALL SELECT 'suspended' UNION ALL SELECT 'revoked')"));

    if (srv != NULL) {
        if (srv->have_pool) {
            metric_count(&b, "fedge_ingest_queue_depth", "gauge",
                         "Updates held by the ingest workers (queued or opened).", srv->ingest_held);
            metric_count(&b, "fedge_ingest_queue_capacity", "gauge",
                         "The most updates the ingest workers hold (ingest_queue).", srv->ingest_capacity);
        }
        metric_count(&b, "fedge_uploads_in_progress", "gauge",
                     "Block1 uploads being received.", srv->uploads_in_progress);
        metric_count(&b, "fedge_round_observers", "gauge", "Devices observing GET /round (RFC 7641).", srv->observers);
        metric_count(&b, "fedge_round_notifications_total", "counter",
                     "Notifications sent to /round observers.", srv->notifications);
        head(&b, "fedge_ingest_latency_seconds", "histogram",
             "From an update's last block to its answer (opened, judged, committed), since start.");
        uint64_t cum = 0;
        for (size_t i = 0; i < FEDGE_METRICS_LATENCY_BUCKETS; i++) {
            cum += srv->latency.bucket[i];
            sb_printf(&b, "fedge_ingest_latency_seconds_bucket{le=\"%g\"} %llu\n", fedge_metrics_latency_bounds[i],
                      (unsigned long long)cum);
        }
        sb_printf(&b, "fedge_ingest_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
                  (unsigned long long)srv->latency.count);
        sb_printf(&b, "fedge_ingest_latency_seconds_sum ");
        sb_value(&b, srv->latency.sum_s);
        sb_printf(&b, "fedge_ingest_latency_seconds_count %llu\n", (unsigned long long)srv->latency.count);
    }
    if (b.failed)
        FAIL(FEDGE_ERR_NOMEM);
    *healthy = store_writable(db_path, reason, reason_len);
    if (*healthy)
        snprintf(reason, reason_len, "ok: %s, round %u", st->finished ? "finished" : st->open ? "open" : "waiting",
                 st->round);
    *out = b.p;
    *len = b.len;
    b.p = NULL;
cleanup:
    if (ret != FEDGE_OK) {
        *healthy = 0;
        snprintf(reason, reason_len, "database: %s", fedge_strerror(ret));
    }
    free(b.p);
    return ret;
}

void fedge_metrics_http_set_stale_s(fedge_metrics_http *m, double seconds)
{
    if (m == NULL || !(seconds > 0.0))
        return;
    pthread_mutex_lock(&m->mu);
    m->stale_s = seconds;
    pthread_mutex_unlock(&m->mu);
}
