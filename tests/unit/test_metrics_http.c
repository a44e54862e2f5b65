/* The metrics endpoint (aggregator/metrics_http.h) over real loopback HTTP:
 * what is published is served, /healthz follows the health state (200 /
 * 503 with the reason), other paths and methods are refused, an oversized
 * header does not get a 200 and the server answers afterwards; and the
 * rendered text of a real aggregator's log: HELP/TYPE lines, escaped label
 * values, counts as in the database, the latency histogram cumulative, the
 * DP budget, and 503 once the store's file is gone. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agg.h"
#include "common.h"
#include "agg_fixture.h"
#include "log.h"
#include "metrics_http.h"
#include "store.h"

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &l), 0);
    close(s);
    return ntohs(a.sin_port);
}

/* Sends req whole, reads the reply until the peer closes (or cap); returns its length. */
static size_t http(int port, const char *req, size_t req_len, char *out, size_t cap)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = 5};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(s, (struct sockaddr *)&a, sizeof a), 0);
    size_t off = 0;
    while (off < req_len) {
        ssize_t n = send(s, req + off, req_len - off, MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the server may close on an oversized request */
        off += (size_t)n;
    }
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(s, out + got, cap - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    out[got] = '\0';
    close(s);
    return got;
}

static size_t get(int port, const char *method, const char *path, char *out, size_t cap)
{
    char req[256];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", method, path);
    return http(port, req, (size_t)n, out, cap);
}

static void test_serves_what_is_published(void **state)
{
    (void)state;
    int port = free_port();
    char listen[32], err[200] = "", out[4096];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    fedge_metrics_http *m = NULL;
    /* a database the refresher can read; no state is set, so it renders nothing */
    char dbp[] = "/tmp/fedge-metrics-db-XXXXXX";
    int fd = mkstemp(dbp);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(fedge_metrics_http_start(listen, dbp, &m, err, sizeof err), FEDGE_OK);

    get(port, "GET", "/healthz", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 503"));
    assert_non_null(strstr(out, "starting"));
    get(port, "GET", "/metrics", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 503"));

    static const char text[] = "# HELP fedge_x X.\n# TYPE fedge_x gauge\nfedge_x 1\n";
    assert_int_equal(fedge_metrics_http_publish(m, text, sizeof text - 1, 1, "ok: open, round 3"), FEDGE_OK);
    get(port, "GET", "/metrics", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 200"));
    assert_non_null(strstr(out, "text/plain; version=0.0.4"));
    assert_non_null(strstr(out, "\r\n\r\n# HELP fedge_x X.\n"));
    get(port, "GET", "/healthz", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 200"));
    assert_non_null(strstr(out, "ok: open, round 3\n"));

    assert_int_equal(fedge_metrics_http_publish(m, text, sizeof text - 1, 0, "store unwritable: /x/fedge.db"),
                     FEDGE_OK);
    get(port, "GET", "/healthz", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 503"));
    assert_non_null(strstr(out, "store unwritable: /x/fedge.db"));
    get(port, "GET", "/metrics", out, sizeof out); /* still served: the numbers say what is wrong */
    assert_non_null(strstr(out, "HTTP/1.1 200"));


    get(port, "GET", "/other", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 404"));
    get(port, "DELETE", "/metrics", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 405"));

    /* a 64 KiB header: over the connection's memory, never a 200 */
    size_t big_len = 70000;
    char *big = malloc(big_len);
    int h = snprintf(big, big_len, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(big + h, 'a', big_len - (size_t)h - 4);
    memcpy(big + big_len - 4, "\r\n\r\n", 4);
    http(port, big, big_len, out, sizeof out);
    assert_null(strstr(out, "HTTP/1.1 200"));
    free(big);
    get(port, "GET", "/metrics", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 200"));

    fedge_metrics_http_stop(m);
    fedge_metrics_http_stop(NULL);
    assert_int_equal(fedge_metrics_http_start("localhost:99", dbp, &m, err, sizeof err), FEDGE_ERR_CONFIG_VALUE);
    assert_null(m);
    unlink(dbp);
}

static const char *DEVICES[] = {"dev-a", "dev-b"};

static void test_render(void **state)
{
    (void)state;
    char dir[64], err[256] = "";
    fedge_agg_config cfg;
    fixture_prepare_dir(dir, sizeof dir, &cfg, "metrics", DEVICES, 2, 30, "mlp:16-8-3");
    snprintf(cfg.policy_file, sizeof cfg.policy_file, "%s/policy.yaml", dir);
    FILE *pf = fopen(cfg.policy_file, "w");
    assert_non_null(pf);
    fputs("version: 1\nprivacy:\n  enabled: true\n  clip_norm: 1.0\n  noise_multiplier: 1.0\n"
          "  epsilon_budget: 7.5\n  delta: 1e-5\n", pf);
    fclose(pf);
    assert_int_equal(fedge_agg_config_validate(&cfg, err, sizeof err), FEDGE_OK);
    fedge_aggregator a;
    assert_int_equal(fedge_agg_init(&a, &cfg, err, sizeof err), FEDGE_OK);
    /* rows as the log would hold them, one with a rule a label must escape */
    assert_int_equal(fedge_store_exec(a.db,
                                      "INSERT INTO updates(round, device, received_at, n_samples, encoding, bytes,"
                                      " counter, decision, rule, reason) VALUES"
                                      " (1, 'dev-a', 0, 5, 'fp32', 100, 1, 'accepted', 'accepted', ''),"
                                      " (1, 'dev-b', 0, 5, 'fp32', 50, 1, 'rejected', 'odd\"rule\\\n', 'x');"
                                      "UPDATE devices SET status='revoked' WHERE id='dev-b';"),
                     FEDGE_OK);
    fedge_metrics_state st = {.have_server = 1,
                              .srv = {.have_pool = 1, .ingest_held = 2, .ingest_capacity = 64, .observers = 1}};
    fedge_metrics_state_of(&a, &st);
    fedge_metrics_latency_observe(&st.srv.latency, 0.003);
    fedge_metrics_latency_observe(&st.srv.latency, 0.2);
    fedge_metrics_latency_observe(&st.srv.latency, 99.0);
    char *text = NULL, reason[256];
    size_t len = 0;
    int healthy = 0;
    assert_int_equal(fedge_metrics_render(a.db, a.cfg.db, &st, &text, &len, &healthy, reason, sizeof reason),
                     FEDGE_OK);
    assert_int_equal(strlen(text), len);
    assert_true(healthy);
    assert_non_null(strstr(reason, "ok: "));
    static const char *const want[] = {
        "# TYPE fedge_updates_total counter\n",
        "fedge_updates_total{decision=\"accepted\",rule=\"accepted\"} 1\n",
        "fedge_updates_total{decision=\"rejected\",rule=\"odd\\\"rule\\\\\\n\"} 1\n",
        "fedge_update_received_bytes_total 150\n",
        "fedge_rounds_total{status=\"closed\"} 0\n",
        "fedge_devices{status=\"allowed\"} 1\n",
        "fedge_devices{status=\"revoked\"} 1\n",
        "fedge_ingest_queue_depth 2\n",
        "fedge_ingest_queue_capacity 64\n",
        "fedge_round_observers 1\n",
        "# TYPE fedge_ingest_latency_seconds histogram\n",
        "fedge_ingest_latency_seconds_bucket{le=\"0.001\"} 0\n",
        "fedge_ingest_latency_seconds_bucket{le=\"0.005\"} 1\n",
        "fedge_ingest_latency_seconds_bucket{le=\"0.25\"} 2\n",
        "fedge_ingest_latency_seconds_bucket{le=\"10\"} 2\n",
        "fedge_ingest_latency_seconds_bucket{le=\"+Inf\"} 3\n",
        "fedge_ingest_latency_seconds_sum 99.203000000000003\n",
        "fedge_ingest_latency_seconds_count 3\n",
        "# TYPE fedge_dp_epsilon_budget gauge\n",
        "fedge_dp_epsilon_budget 7.5\n",
        "fedge_dp_epsilon_spent 0\n", /* nothing charged yet */
    };
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(want); i++)
        if (!strstr(text, want[i]))
            fail_msg("missing: %s\nin:\n%s", want[i], text);
    free(text);

    /* the database file gone: unhealthy, with the reason */
    char gone[FEDGE_PATH_MAX];
    snprintf(gone, sizeof gone, "%s/gone.db", dir);
    st.have_server = 0;
    assert_int_equal(fedge_metrics_render(a.db, gone, &st, &text, &len, &healthy, reason, sizeof reason), FEDGE_OK);
    assert_false(healthy);
    assert_non_null(strstr(reason, "store unwritable"));
    assert_null(strstr(text, "fedge_ingest_latency")); /* no server numbers given */
    free(text);

    /* the daemon's way: the owner sets its state, the refresher reads the log
     * on its own read-only connection and the HTTP thread serves the text */
    int port = free_port();
    char listen[32], out[16384] = "";
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    fedge_metrics_http *m = NULL;
    assert_int_equal(fedge_metrics_http_start(listen, a.cfg.db, &m, err, sizeof err), FEDGE_OK);
    st.have_server = 1;
    fedge_metrics_http_set_state(m, &st);
    for (int i = 0; i < 50 && !strstr(out, "HTTP/1.1 200"); i++) {
        usleep(20 * 1000);
        get(port, "GET", "/metrics", out, sizeof out);
    }
    assert_non_null(strstr(out, "fedge_updates_total{decision=\"accepted\",rule=\"accepted\"} 1\n"));
    get(port, "GET", "/healthz", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 200"));
    assert_non_null(strstr(out, "ok: "));
    /* the owner silent past the stale limit: its loop is stuck */
    fedge_metrics_http_set_stale_s(m, 0.2);
    usleep(300 * 1000);
    get(port, "GET", "/healthz", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 503"));
    assert_non_null(strstr(out, "stale: no state from"));
    fedge_metrics_http_set_state(m, &st);
    get(port, "GET", "/healthz", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 200"));
    fedge_metrics_http_stop(m);
    fedge_agg_free(&a);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_serves_what_is_published),
        cmocka_unit_test(test_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
