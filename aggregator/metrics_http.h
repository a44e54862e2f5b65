/* metrics_http.h — Prometheus text-format metrics (exposition format
 * 0.0.4) and a health check over HTTP/1.1, served by libmicrohttpd on its
 * own thread at `metrics_listen` (docs/OPERATIONS.md "Metrics and health").
 *
 *   GET /metrics  200 text/plain; version=0.0.4: the last published text
 *   GET /healthz  200 "ok ..." while serving; 503 with the reason otherwise
 *                 (also when nothing was published for 30 s: the owner's
 *                 loop is stuck)
 *   (HEAD alike; another path 404, another method 405)
 *
 * Neither the HTTP thread nor the refresher touches the aggregator: the
 * owner thread sets a small copy of its state each pass of its loop
 * (fedge_metrics_http_set_state, under a mutex); the refresher thread
 * renders from it and the log through its own read-only SQLite connection
 * (WAL: it never blocks the writer) and stores the text; the HTTP thread
 * serves the stored text. The owner never waits on a query.
 * Hostile clients are bounded by libmicrohttpd's limits: 32 connections in
 * all, 8 per IP, 10 s idle timeout, 16 KiB of memory per connection (a
 * larger request header gets 431 and the connection is closed).
 *
 * Ingest latency (fedge_ingest_latency_seconds) is observed by the server
 * (fedge_metrics_latency_observe), with ingest workers, from an update's
 * complete body (its last block) to its answer: queue, open, group commit.
 * Errors: FEDGE_ERR_CONFIG_VALUE (address), FEDGE_ERR_SQL (the read-only
 * connection), FEDGE_ERR_IO (bind), FEDGE_ERR_NOMEM. */
#ifndef FEDGE_METRICS_HTTP_H
#define FEDGE_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "agg.h"

#define FEDGE_METRICS_LATENCY_BUCKETS 12 /* upper bounds below, then +Inf */

typedef struct {
    uint64_t bucket[FEDGE_METRICS_LATENCY_BUCKETS]; /* not cumulative: by upper bound */
    uint64_t count;
    double sum_s;
} fedge_metrics_latency;

/* Bucket upper bounds in seconds: 1 ms .. 10 s. */
extern const double fedge_metrics_latency_bounds[FEDGE_METRICS_LATENCY_BUCKETS];
void fedge_metrics_latency_observe(fedge_metrics_latency *l, double seconds);

/* What the CoAP front end knows (server.c fills it). */
typedef struct {
    int have_pool;                      /* ingest workers run */
    size_t ingest_held, ingest_capacity; /* updates held by the pool / its bound */
    size_t uploads_in_progress;         /* partial Block1 bodies */
    size_t observers;                   /* GET /round observations */
    uint64_t notifications;
    fedge_metrics_latency latency;
} fedge_metrics_server;

/* The owner thread's state, copied to the refresher (no pointer into the
 * aggregator is kept). */
typedef struct {
    uint32_t round;
    int open, finished;
    int dp_enabled;
    double epsilon_budget;
    int have_server;
    fedge_metrics_server srv;
} fedge_metrics_state;

/* Owner thread: a's part of the state (srv left alone). */
void fedge_metrics_state_of(const fedge_aggregator *a, fedge_metrics_state *st);

typedef struct fedge_metrics_http fedge_metrics_http;

/* listen: "HOST:PORT" (numeric); db_path: the log, opened read-only by the
 * refresher thread. Serves 503 "starting" until the first refresh. */
int fedge_metrics_http_start(const char *listen, const char *db_path, fedge_metrics_http **out, char *err,
                             size_t errlen);
/* Owner thread, every pass of its loop: a copy of st (cheap). The refresher
 * renders from the latest copy and its own connection, every 20 x the
 * render's time (the queries scan the log), 1 to 10 s apart. */
void fedge_metrics_http_set_state(fedge_metrics_http *m, const fedge_metrics_state *st);
/* /healthz answers 503 "stale" once the owner has not set its state for this
 * long (default FEDGE_METRICS_STALE_S): its loop is stuck or busy. */
#define FEDGE_METRICS_STALE_S 30.0
void fedge_metrics_http_set_stale_s(fedge_metrics_http *m, double seconds);
/* Copies text (the next scrapes get it) and the health state; reason: one
 * line, shown by /healthz. The refresher's own output; for tests. */
int fedge_metrics_http_publish(fedge_metrics_http *m, const char *text, size_t len, int healthy,
                               const char *reason);
void fedge_metrics_http_stop(fedge_metrics_http *m); /* NULL is fine; joins the threads */

/* The exposition text of the log db (read-only is enough) and st into *out
 * (malloc'd, NUL-terminated, caller frees). *healthy and reason: the
 * store's state (db_path and its folder writable, the queries ran). */
int fedge_metrics_render(sqlite3 *db, const char *db_path, const fedge_metrics_state *st, char **out,
                         size_t *len, int *healthy, char *reason, size_t reason_len);

#endif
