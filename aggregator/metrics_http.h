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
 * The HTTP thread never touches the aggregator or SQLite: the owner thread
 * renders the text (fedge_metrics_render, on its own connection, between
 * rounds' transactions) and publishes it with the health state
 * (fedge_metrics_http_publish), which the HTTP thread copies under a mutex.
 * Hostile clients are bounded by libmicrohttpd's limits: 32 connections in
 * all, 8 per IP, 10 s idle timeout, 16 KiB of memory per connection (a
 * larger request header gets 431 and the connection is closed).
 *
 * Ingest latency (fedge_ingest_latency_seconds) is observed by the server
 * (fedge_metrics_latency_observe) from the first block of an update to its
 * answer. Errors: FEDGE_ERR_CONFIG_VALUE (address), FEDGE_ERR_IO (bind),
 * FEDGE_ERR_NOMEM. */
#ifndef FEDGE_METRICS_HTTP_H
#define FEDGE_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

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

typedef struct fedge_metrics_http fedge_metrics_http;

/* listen: "HOST:PORT" (numeric). Serves 503 "starting" until the first publish. */
int fedge_metrics_http_start(const char *listen, fedge_metrics_http **out, char *err, size_t errlen);
/* Copies text (the next scrapes get it) and the health state; reason: one
 * line, shown by /healthz. */
int fedge_metrics_http_publish(fedge_metrics_http *m, const char *text, size_t len, int healthy,
                               const char *reason);
void fedge_metrics_http_stop(fedge_metrics_http *m); /* NULL is fine; joins the thread */
/* /healthz answers 503 "stale" once nothing was published for this long
 * (default FEDGE_METRICS_STALE_S). */
#define FEDGE_METRICS_STALE_S 30.0
void fedge_metrics_http_set_stale_s(fedge_metrics_http *m, double seconds);

/* Owner thread: the exposition text of a (its database, policy and state)
 * and srv (may be NULL) into *out (malloc'd, NUL-terminated, caller frees).
 * *healthy and reason: the store's state (its file and folder writable, the
 * queries ran). */
int fedge_metrics_render(fedge_aggregator *a, const fedge_metrics_server *srv, char **out, size_t *len,
                         int *healthy, char *reason, size_t reason_len);

/* Owner thread: render and publish (a failed render publishes 503 with its
 * reason and keeps the last text). */
int fedge_metrics_http_refresh(fedge_metrics_http *m, fedge_aggregator *a, const fedge_metrics_server *srv);

#endif
