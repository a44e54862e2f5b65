#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "combine.h"
#include "common.h"
#include "delta.h"
#include "fileio.h"
#include "log.h"
#include "model.h"
#include "round_info.h"
#include "server_opt.h"
#include "text.h"

typedef enum { T_STR, T_LONG, T_DOUBLE, T_BOOL } field_type;

/* A string check: 0 when value is good, else the reason in why. */
typedef int (*str_check)(const char *value, char *why, size_t whylen);

typedef struct {
    const char *key;
    field_type type;
    size_t offset;
    size_t size; /* strings: buffer size */
    double min, max;
    const char *def;
    const char *help;
    str_check check; /* strings: NULL means any text, empty included (optional setting) */
} field;

static int check_listen(const char *value, char *why, size_t whylen);
static int check_nonempty(const char *value, char *why, size_t whylen);
static int check_log_level(const char *value, char *why, size_t whylen);
static int check_model_spec(const char *value, char *why, size_t whylen);
static int check_aggregation(const char *value, char *why, size_t whylen);
static int check_server_optimizer(const char *value, char *why, size_t whylen);
static int check_mode(const char *value, char *why, size_t whylen);
static int check_staleness(const char *value, char *why, size_t whylen);
static int check_upstream(const char *value, char *why, size_t whylen);
static int check_relays(const char *value, char *why, size_t whylen);
static int check_listen_tcp(const char *value, char *why, size_t whylen);

#define STR(k, d, h) {#k, T_STR, offsetof(fedge_agg_config, k), sizeof(((fedge_agg_config *)0)->k), 0, 0, d, h, NULL}
#define STRC(k, chk, d, h) {#k, T_STR, offsetof(fedge_agg_config, k), sizeof(((fedge_agg_config *)0)->k), 0, 0, d, h, chk}
#define LNG(k, lo, hi, d, h) {#k, T_LONG, offsetof(fedge_agg_config, k), 0, lo, hi, d, h, NULL}
#define DBL(k, lo, hi, d, h) {#k, T_DOUBLE, offsetof(fedge_agg_config, k), 0, lo, hi, d, h, NULL}
#define BOOL(k, d, h) {#k, T_BOOL, offsetof(fedge_agg_config, k), 0, 0, 1, d, h, NULL}

static const field FIELDS[] = {
    STRC(listen, check_listen, "127.0.0.1:5684", "UDP address:port to serve CoAP/DTLS on, numeric host ([::1]:5684 for IPv6; 5683 is usual with insecure)"),
    BOOL(insecure, "0", "serve plain CoAP without DTLS (testing only; updates are still sealed)"),
    STRC(keys_file, check_nonempty, "", "device keys file: 'DEVICE_ID REGION SECRET_HEX' per line, mode 0600 (required)"),
    STRC(db, check_nonempty, "fedge.db", "SQLite round log (its folder must exist; <db>.lock beside it holds the owner's pid)"),
    STRC(model_dir, check_nonempty, "models", "model store folder (model files named by version)"),
    STRC(model_spec, check_model_spec, "mlp:784-200-10", "model architecture for a fresh start"),
    STR(init_model, "", "start from this model file instead of a seeded random one"),
    STRC(test_data, check_nonempty, "fashion-mnist", "held-out evaluation set: a shard file, or 'fashion-mnist' (test split)"),
    STR(policy_file, "", "governance policy (YAML, docs/POLICY.md); empty: the default policy"),
    STR(signing_key, "", "ECDSA P-256 private key (PEM) that signs the audit chain head; empty: no signatures"),
    STRC(log_level, check_log_level, "info", "debug|info|warn|error"),
    STR(log_file, "", "log to this file instead of stderr"),
    LNG(seed, 0, 9.2e18, "1", "seed for the initial model and participant selection"),
    LNG(rounds, 0, 1e9, "0", "rounds to run, then stop (0: forever)"),
    LNG(clients_per_round, 0, 1e6, "0", "participants per round (0: use client_fraction)"),
    DBL(client_fraction, 0.0001, 1, "1", "fraction of allowed devices selected per round"),
    DBL(quorum, 0.0001, 1, "1", "fraction of the selected whose accepted updates close the round early"),
    LNG(min_updates, 1, 1e6, "1", "accepted updates needed to aggregate when the deadline passes"),
    DBL(round_timeout_s, 0.1, 86400, "60", "round deadline, seconds after it opens"),
    DBL(start_delay_s, 0, 3600, "0", "wait this long after start-up before opening the first round"),
    LNG(local_epochs, 1, 1000, "1", "local epochs each client trains per round"),
    DBL(lr, 1e-6, 10, "0.05", "client learning rate in round 1"),
    DBL(lr_decay, 0.01, 1, "1", "client learning rate of round r is lr * lr_decay^(r-1)"),
    DBL(momentum, 0, 0.999, "0.9", "client SGD momentum"),
    LNG(batch, 1, 65536, "32", "client minibatch size"),
    DBL(server_lr, 1e-6, 10, "1", "server step size eta of the server optimiser (sgd: w += eta * combined delta)"),
    LNG(max_update_bytes, 0, 512.0 * 1024 * 1024, "0", "largest accepted POST /update body (0: fp32 size of the model + envelope + the 32-byte trailer of a relay's partial sum)"),
    DBL(upload_idle_timeout_s, 0.5, 3600, "45", "a partial Block1 upload that receives nothing this long is freed (its next block gets 4.08); after 5 s when a new upload needs its room"),
    LNG(upload_max_partial_per_device, 1, 1000, "2", "partial Block1 uploads one device may have in progress (more get 5.03)"),
    LNG(upload_max_partial_total, 1, 65536, "256", "partial Block1 uploads in progress across all devices (more get 5.03)"),
    LNG(upload_memory_bytes, 0, 64.0 * 1024 * 1024 * 1024, "0", "memory reserved for partial uploads, by Size1 or max_update_bytes each (0: min(upload_max_partial_total x max_update_bytes, 256 MiB))"),
    LNG(udp_rcvbuf_bytes, 0, 1024.0 * 1024 * 1024, "0", "UDP socket receive buffer (0: 16 KiB per device in the keys file, within [kernel default, 64 MiB])"),
    DBL(linger_s, 0, 3600, "3", "after the last round keep answering (state=finished) this long"),
    LNG(refine_every, 0, 1e6, "0", "run cluster refinement after every k-th aggregated round (0: never)"),
    STR(refine_command, "", "refinement command; {in} {out} {round} are substituted (docs/CLUSTER.md)"),
    DBL(refine_timeout_s, 1, 86400, "600", "refinement gets killed after this long; the aggregate is kept"),
    DBL(db_busy_retry_s, 0, 86400, "300", "keep retrying a step that finds the database locked by another process this long before stopping"),
    BOOL(allow_unsigned, "0", "start without signing_key although the log has signed heads (an audited event; verify will flag the unsigned rounds)"),
    LNG(retain_deltas_rounds, 0, 1e9, "0", "keep the delta bodies of the last N rounds; older ones are dropped, their SHA-256 stay in the audit chain (0: keep all)"),
    STRC(aggregation, check_aggregation, "mean", "how a round's deltas are combined: mean|median|trimmed_mean|krum|multikrum|bulyan (docs/STRATEGIES.md)"),
    DBL(trim_beta, 0, 0.5, "0.1", "trimmed_mean: fraction of values cut at each end, [0, 0.5)"),
    LNG(byzantine_f, 0, 1e6, "1", "krum, multikrum, bulyan: attackers tolerated"),
    LNG(multikrum_m, 0, 1e6, "0", "multikrum: deltas averaged (0: n - f)"),
    LNG(aggregation_block, 1, 64.0 * 1024 * 1024, "65536", "coordinates per block a combiner reads from the stored deltas (memory: updates x block floats)"),
    STRC(server_optimizer, check_server_optimizer, "sgd", "server optimiser on the combined delta: sgd|momentum|adam|yogi|adagrad (sgd: FedAvg's w += server_lr * delta)"),
    DBL(server_momentum, 0, 1, "0.9", "momentum (FedAvgM): beta of m = beta*m + delta, [0, 1)"),
    DBL(server_beta1, 0, 1, "0.9", "adam|yogi|adagrad: first-moment decay beta1, [0, 1)"),
    DBL(server_beta2, 0, 1, "0.99", "adam|yogi: second-moment decay beta2, [0, 1)"),
    DBL(server_tau, 1e-12, 10, "1e-3", "adam|yogi|adagrad: adaptivity tau (v starts at tau^2)"),
    DBL(fedprox_mu, 0, FEDGE_ROUND_PROX_MU_MAX, "0", "FedProx mu sent to the edges with the round (0: plain local SGD; at most what an edge accepts)"),
    STRC(mode, check_mode, "sync", "run mode: sync (rounds with a chosen participant set) | async (FedBuff: buffered asynchronous aggregation steps)"),
    LNG(async_concurrency, 1, 1e6, "8", "async: devices training at once (in flight)"),
    LNG(async_buffer_k, 1, 1e6, "4", "async: accepted updates buffered per aggregation step"),
    LNG(async_max_versions, 1, 1e6, "4", "async: distinct base model versions in flight at once (admission waits otherwise)"),
    DBL(async_slot_timeout_s, 0.1, 86400, "60", "async: an admitted device that sends nothing this long frees its slot"),
    STRC(async_staleness, check_staleness, "polynomial", "discount of an update s versions old: constant (1) | polynomial ((1+s)^-a) | hinge (1 for s <= b, else 1/(a(s-b)+1))"),
    DBL(async_staleness_a, 0, 100, "0.5", "staleness discount: the exponent a of polynomial, the slope a of hinge"),
    DBL(async_staleness_b, 0, 1e6, "4", "staleness discount: hinge's b (versions without discount)"),
    BOOL(scaffold, "0", "SCAFFOLD: server control variate, updates carry the control delta (needs aggregation = mean, no DP)"),
    BOOL(no_observe, "0", "GET /round is not observable (RFC 7641): edges poll it (docs/PROTOCOL.md)"),
    STRC(upstream, check_upstream, "", "relay: the parent aggregator's HOST:PORT (numeric host); this aggregator then follows its rounds and sends it one partial sum per round (empty: a root)"),
    STR(upstream_id, "", "relay: this relay's device id at the parent (needed with upstream)"),
    STR(upstream_keys, "", "relay: keys file with upstream_id's line, as an edge has (fedge-keygen export; needed with upstream)"),
    DBL(upstream_poll_s, 0.05, 60, "0.5", "relay: how often a waiting relay asks the parent for its round (doubling, up to 30 s, while the parent does not answer)"),
    DBL(upstream_margin_s, 0, 3600, "2", "relay: a relay round closes this long before the parent's deadline, to leave time to send"),
    DBL(upstream_timeout_s, 0.5, 600, "10", "relay: the longest one request to the parent may take, a DTLS handshake included (on the relay's link thread: edges are served meanwhile)"),
    LNG(ingest_workers, -1, 256, "-1", "threads that open updates (AEAD, decode) off the I/O thread (-1: one per online core; 0: inline on the I/O thread)"),
    LNG(ingest_queue, 1, 65536, "64", "updates the ingest workers hold at once, queued or opened and awaiting commit (more get 5.03 with Max-Age); each holds up to ~3 x max_update_bytes"),
    LNG(commit_group, 1, 4096, "32", "opened updates committed in one SQLite transaction (one fsync) at most"),
    DBL(commit_wait_ms, 0, 1000, "2", "a group smaller than commit_group waits this long for more while updates are being opened"),
    STRC(relays, check_relays, "", "root: the device ids (comma-separated) that are relays; only they may send a partial sum (FEDGE_DELTA_FLAG_PARTIAL), others get 4.03 (empty: none may)"),
    LNG(relay_max_samples, 1, 4e9, "100000000", "root: the largest sample count a listed relay's partial may state (a relay's partial is exempt from update.max_samples)"),
    STRC(metrics_listen, check_upstream, "", "TCP HOST:PORT (numeric; e.g. 127.0.0.1:9464) serving Prometheus metrics at /metrics and a health check at /healthz over HTTP (empty: off)"),
    STRC(listen_tcp, check_listen_tcp, "", "TCP address:port to also serve CoAP over TLS-PSK on (RFC 8323, coaps+tcp; the DTLS keys; BERT blocks), numeric host (empty: no TCP)"),
    DBL(tcp_handshake_timeout_s, 0.1, 3600, "10", "a TCP connection whose TLS handshake and CSM exchange are not done this long after it was accepted is closed"),
    LNG(tcp_max_connections, 0, 1e6, "0", "authenticated TCP connections (TLS handshake and CSM done) held at once; past it the oldest of the device holding the most is closed, a device holds 4 at most (0: devices in the keys file + 16)"),
    LNG(db_page_size, 0, 65536, "0", "SQLite page size of a new log, a power of two 512..65536 (0: SQLite's 4096); 65536 holds an int8 delta in few pages: faster group commits, but more WAL bytes per small commit and a larger small log (docs/BENCHMARKS.md); an existing log keeps its own"),
    LNG(tcp_max_preauth, 1, 1e5, "32", "TCP connections not yet through their TLS handshake and CSM held at once (anyone can open them): past it the OLDEST such one is closed; they never displace authenticated ones, capped by tcp_max_connections"),
};

_Static_assert(FEDGE_ARRAY_LEN(FIELDS) <= FEDGE_AGG_CONFIG_MAX_KEYS, "raise FEDGE_AGG_CONFIG_MAX_KEYS");

int fedge_agg_parse_listen(const char *listen, struct sockaddr_storage *addr, socklen_t *len,
                           char *why, size_t whylen)
{
    char host[128];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen) {
        snprintf(why, whylen, "expected HOST:PORT (e.g. 127.0.0.1:5684 or [::1]:5684), got '%s'", listen);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    const char *port_text = colon + 1;
    size_t hlen = (size_t)(colon - listen);
    const char *h = listen;
    int bracketed = listen[0] == '[';
    if (bracketed) {
        if (hlen < 3 || colon[-1] != ']') {
            snprintf(why, whylen, "an IPv6 host goes in brackets: [ADDR]:PORT, got '%s'", listen);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        h++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= sizeof host) {
        snprintf(why, whylen, "expected HOST:PORT, got '%s'", listen);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    unsigned long port = 0;
    size_t ndig = strspn(port_text, "0123456789");
    if (ndig == 0 || port_text[ndig] != '\0' || ndig > 5 ||
        (port = strtoul(port_text, NULL, 10)) < 1 || port > 65535) {
        snprintf(why, whylen, "port '%s' is not a number in 1..65535", port_text);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    memset(addr, 0, sizeof *addr);
    struct sockaddr_in *v4 = (struct sockaddr_in *)addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)addr;
    if (!bracketed && inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof *v4;
    } else if (bracketed && inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof *v6;
    } else if (!bracketed && strchr(host, ':')) {
        snprintf(why, whylen, "an IPv6 host goes in brackets: [%s]:%s", host, port_text);
        return FEDGE_ERR_CONFIG_VALUE;
    } else {
        snprintf(why, whylen, "host '%s' is not a numeric IPv4 or [IPv6] address", host);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    return FEDGE_OK;
}

static int check_listen(const char *value, char *why, size_t whylen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    return fedge_agg_parse_listen(value, &ss, &len, why, whylen) == FEDGE_OK ? 0 : -1;
}

static int check_nonempty(const char *value, char *why, size_t whylen)
{
    if (value[0] != '\0')
        return 0;
    snprintf(why, whylen, "must not be empty");
    return -1;
}

static int check_log_level(const char *value, char *why, size_t whylen)
{
    fedge_log_level lvl;
    if (fedge_log_parse_level(value, &lvl) == FEDGE_OK && lvl != FEDGE_LOG_OFF)
        return 0;
    snprintf(why, whylen, "expected debug|info|warn|error, got '%s'", value);
    return -1;
}

static int check_model_spec(const char *value, char *why, size_t whylen)
{
    fedge_model_spec spec;
    if (fedge_model_spec_parse(value, &spec) == FEDGE_OK)
        return 0;
    snprintf(why, whylen, "cannot parse '%s' (e.g. mlp:784-200-10, softmax:784-10)", value);
    return -1;
}

static int check_aggregation(const char *value, char *why, size_t whylen)
{
    if (fedge_combiner_find(value))
        return 0;
    snprintf(why, whylen, "expected one of %s, got '%s'", fedge_combiner_names(), value);
    return -1;
}

static int check_server_optimizer(const char *value, char *why, size_t whylen)
{
    if (fedge_server_opt_find(value))
        return 0;
    snprintf(why, whylen, "expected one of %s, got '%s'", fedge_server_opt_names(), value);
    return -1;
}

static int check_mode(const char *value, char *why, size_t whylen)
{
    if (strcmp(value, "sync") == 0 || strcmp(value, "async") == 0)
        return 0;
    snprintf(why, whylen, "expected sync|async, got '%s'", value);
    return -1;
}

static int check_staleness(const char *value, char *why, size_t whylen)
{
    if (strcmp(value, "constant") == 0 || strcmp(value, "polynomial") == 0 || strcmp(value, "hinge") == 0)
        return 0;
    snprintf(why, whylen, "expected constant|polynomial|hinge, got '%s'", value);
    return -1;
}

/* Where a key's value came from, for messages: "FILE:LINE: key", "--key" or
 * "key" (its default). */
static void describe(const fedge_agg_config *c, size_t idx, const char *key, char *out, size_t cap)
{
    int line = idx < FEDGE_AGG_CONFIG_MAX_KEYS ? c->origin_line[idx] : 0;
    if (line > 0) {
        snprintf(out, cap, "%s:%d: %s", c->config_file, line, key);
    } else if (line < 0) {
        size_t n = (size_t)snprintf(out, cap, "--%s", key);
        for (size_t i = 2; i < n && i < cap; i++)
            if (out[i] == '_')
                out[i] = '-';
    } else {
        snprintf(out, cap, "%s", key);
    }
}

/* value's text checks; label names the key as the user gave it. */
static int set_field(fedge_agg_config *c, const field *f, const char *value, const char *label,
                     char *err, size_t errlen)
{
    char *end = NULL, why[200];
    void *p = (char *)c + f->offset;
    switch (f->type) {
    case T_STR:
        if (strlen(value) >= f->size) {
            snprintf(err, errlen, "%s: value longer than %zu bytes", label, f->size - 1);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        for (const char *q = value; *q; q++)
            if (iscntrl((unsigned char)*q)) {
                snprintf(err, errlen, "%s: control character in the value", label);
                return FEDGE_ERR_CONFIG_VALUE;
            }
        if (f->check && f->check(value, why, sizeof why) != 0) {
            snprintf(err, errlen, "%s: %s", label, why);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        memcpy(p, value, strlen(value) + 1);
        return FEDGE_OK;
    case T_BOOL:
        if (!strcmp(value, "1") || !strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "on")) {
            *(int *)p = 1;
        } else if (!strcmp(value, "0") || !strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "off")) {
            *(int *)p = 0;
        } else {
            snprintf(err, errlen, "%s: expected true or false, got '%s'", label, value);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        return FEDGE_OK;
    case T_LONG: {
        if (value[0] == '\0') {
            snprintf(err, errlen, "%s: empty value (expected an integer in [%.0f, %.0f])", label, f->min, f->max);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        errno = 0;
        long v = strtol(value, &end, 10);
        if (isspace((unsigned char)value[0]) || end == value || *end != '\0') {
            snprintf(err, errlen, "%s: expected an integer in [%.0f, %.0f], got '%s'", label,
                     f->min, f->max, value);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        if (errno == ERANGE || (double)v < f->min || (double)v > f->max) {
            snprintf(err, errlen, "%s: '%s' is out of range: expected an integer in [%.0f, %.0f]",
                     label, value, f->min, f->max);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        *(long *)p = v;
        return FEDGE_OK;
    }
    case T_DOUBLE: {
        if (value[0] == '\0') {
            snprintf(err, errlen, "%s: empty value (expected a number in [%g, %g])", label, f->min, f->max);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        errno = 0;
        double v = strtod(value, &end);
        if (isspace((unsigned char)value[0]) || end == value || *end != '\0' || strpbrk(value, "xX") ||
            (errno != ERANGE && !isfinite(v))) {
            snprintf(err, errlen, "%s: expected a number in [%g, %g], got '%s'", label, f->min,
                     f->max, value);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        if (errno == ERANGE || v < f->min || v > f->max) {
            snprintf(err, errlen, "%s: '%s' is out of range: expected a number in [%g, %g]", label,
                     value, f->min, f->max);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        *(double *)p = v;
        return FEDGE_OK;
    }
    }
    return FEDGE_ERR_INTERNAL;
}

static const field *find_field(const char *key)
{
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(FIELDS); i++)
        if (!strcmp(FIELDS[i].key, key))
            return &FIELDS[i];
    return NULL;
}

int fedge_agg_config_is_key(const char *key) { return find_field(key) != NULL; }

int fedge_agg_config_is_flag(const char *key)
{
    const field *f = find_field(key);
    return f && f->type == T_BOOL;
}

void fedge_agg_config_defaults(fedge_agg_config *c)
{
    char err[8];
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(FIELDS); i++) {
        const field *f = &FIELDS[i];
        /* defaults are not checked: keys_file's empty default means "not given" */
        if (f->type == T_STR)
            memcpy((char *)c + f->offset, f->def, strlen(f->def) + 1);
        else
            (void)set_field(c, f, f->def, f->key, err, sizeof err);
    }
}

int fedge_agg_config_set(fedge_agg_config *c, const char *key, const char *value, char *err,
                         size_t errlen)
{
    char label[80];
    const field *f = find_field(key);
    if (!f) {
        snprintf(label, sizeof label, "%.64s", key);
        for (char *q = label; *q; q++)
            if (*q == '_')
                *q = '-';
        snprintf(err, errlen, "unknown option '--%s' (see --help-config)", label);
        return FEDGE_ERR_CONFIG_UNKNOWN_KEY;
    }
    size_t idx = (size_t)(f - FIELDS);
    int saved = c->origin_line[idx];
    c->origin_line[idx] = -1;
    describe(c, idx, f->key, label, sizeof label);
    int ret = set_field(c, f, value, label, err, errlen);
    if (ret != FEDGE_OK)
        c->origin_line[idx] = saved;
    return ret;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
        *--e = '\0';
    return s;
}

int fedge_agg_config_load_file(fedge_agg_config *c, const char *path, char *err, size_t errlen)
{
    char line[2048], label[FEDGE_PATH_MAX + 96];
    size_t lineno = 0;
    int ret = FEDGE_OK;
    int seen[FEDGE_AGG_CONFIG_MAX_KEYS] = {0};
    fedge_agg_config *next = NULL; /* all or nothing: c changes only if every line is good */
    FILE *f = NULL;
    if (strlen(path) >= sizeof c->config_file) {
        snprintf(err, errlen, "config file name longer than %zu bytes", sizeof c->config_file - 1);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    ret = fedge_fopen_regular(path, 0, &f, NULL);
    if (ret != FEDGE_OK) {
        snprintf(err, errlen, "%s: %s", path,
                 ret == FEDGE_ERR_NOT_REGULAR ? "not a regular file (a FIFO, device, socket or directory)"
                                              : strerror(errno));
        return FEDGE_ERR_IO;
    }
    next = malloc(sizeof *next);
    if (!next)
        FAIL(FEDGE_ERR_NOMEM);
    *next = *c;
    snprintf(next->config_file, sizeof next->config_file, "%s", path);
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (strlen(line) == sizeof line - 1 && line[sizeof line - 2] != '\n') {
            snprintf(err, errlen, "%s:%zu: line too long", path, lineno);
            FAIL(FEDGE_ERR_CONFIG_SYNTAX);
        }
        if (lineno > 1000000) {
            snprintf(err, errlen, "%s:%zu: too many lines", path, lineno);
            FAIL(FEDGE_ERR_CONFIG_SYNTAX);
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%zu: expected 'key = value'", path, lineno);
            FAIL(FEDGE_ERR_CONFIG_SYNTAX);
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        const field *fl = find_field(key);
        if (!fl) {
            snprintf(err, errlen, "%s:%zu: unknown key '%.64s' (see --help-config)", path, lineno, key);
            FAIL(FEDGE_ERR_CONFIG_UNKNOWN_KEY);
        }
        size_t idx = (size_t)(fl - FIELDS);
        if (seen[idx]) {
            snprintf(err, errlen, "%s:%zu: %s: given twice (first at line %d)", path, lineno, key, seen[idx]);
            FAIL(FEDGE_ERR_CONFIG_SYNTAX);
        }
        seen[idx] = (int)lineno;
        next->origin_line[idx] = (int)lineno;
        describe(next, idx, fl->key, label, sizeof label);
        CHK(set_field(next, fl, value, label, err, errlen));
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        FAIL(FEDGE_ERR_IO);
    }
    /* keys from an earlier file no longer have a place to point to */
    for (size_t i = 0; i < FEDGE_AGG_CONFIG_MAX_KEYS; i++)
        if (next->origin_line[i] > 0 && !seen[i])
            next->origin_line[i] = 0;
    *c = *next;
cleanup:
    if (ret != FEDGE_OK && errlen > 0) {
        /* A line may hold control bytes: the message stays one printable line. */
        char raw[FEDGE_PATH_MAX + 512];
        snprintf(raw, sizeof raw, "%s", err);
        fedge_text_escape(raw, strlen(raw), err, errlen);
    }
    free(next);
    fclose(f);
    return ret;
}

static size_t index_of(const char *key)
{
    const field *f = find_field(key);
    return f ? (size_t)(f - FIELDS) : FEDGE_AGG_CONFIG_MAX_KEYS;
}

#define WHERE(key, buf) (describe(c, index_of(#key), #key, buf, sizeof buf), buf)

/* path must name an existing file of the given kind (S_IFREG or S_IFDIR). */
static int must_exist(const char *path, mode_t kind, const char *where, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s: %s", where, path, strerror(errno));
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if ((st.st_mode & S_IFMT) != kind) {
        snprintf(err, errlen, "%s: %s is not a %s", where, path, kind == S_IFDIR ? "folder" : "regular file");
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (kind == S_IFREG && access(path, R_OK) != 0) {
        snprintf(err, errlen, "%s: %s: %s", where, path, strerror(errno));
        return FEDGE_ERR_CONFIG_VALUE;
    }
    return FEDGE_OK;
}

/* The folder a file will be created in must exist; the file itself may not. */
static int parent_must_exist(const char *path, const char *where, char *err, size_t errlen)
{
    char dir[FEDGE_PATH_MAX];
    struct stat st;
    const char *slash = strrchr(path, '/');
    if (slash && slash[1] == '\0') {
        snprintf(err, errlen, "%s: '%s' names a folder, not a file", where, path);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: %s is a folder", where, path);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (!slash)
        return FEDGE_OK;
    snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    return must_exist(dir, S_IFDIR, where, err, errlen);
}

size_t fedge_agg_config_round_size(const fedge_agg_config *c, size_t n_eligible)
{
    size_t k = c->clients_per_round > 0 ? (size_t)c->clients_per_round
                                        : (size_t)ceil(c->client_fraction * (double)n_eligible);
    if (k > n_eligible)
        k = n_eligible;
    return k ? k : 1;
}

size_t fedge_agg_config_combiner_min(const fedge_agg_config *c, size_t n, char *why, size_t whylen)
{
    fedge_combine_params p = {.trim_beta = c->trim_beta, .f = c->byzantine_f, .m = c->multikrum_m, .block = 1};
    snprintf(p.name, sizeof p.name, "%s", c->aggregation);
    const fedge_combiner *cb = fedge_combiner_find(p.name);
    if (why && whylen)
        why[0] = '\0';
    if (!cb)
        return 0;
    /* the checks are monotone in n: the least n that passes, by bisection */
    char w[256];
    size_t lo = 0, hi = (size_t)1 << 24; /* n = lo fails (or is 0), n = hi passes */
    if (cb->check(&p, hi, w, sizeof w) != FEDGE_OK)
        return 0;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (cb->check(&p, mid, w, sizeof w) == FEDGE_OK)
            hi = mid;
        else
            lo = mid;
    }
    if (n < hi && why && whylen)
        cb->check(&p, n, why, whylen);
    return hi;
}

/* One line for each strategy key set away from its default that the
 * configured combiner does not read. */
static int check_upstream(const char *value, char *why, size_t whylen)
{
    return value[0] ? check_listen(value, why, whylen) : 0;
}

static int check_listen_tcp(const char *value, char *why, size_t whylen)
{
    return value[0] ? check_listen(value, why, whylen) : 0;
}

/* relays: device ids separated by commas, none empty */
static int check_relays(const char *value, char *why, size_t whylen)
{
    for (const char *p = value; *value;) {
        size_t n = strcspn(p, ",");
        if (n == 0 || n > FEDGE_DEVICE_ID_MAX || strcspn(p, " \t") < n) {
            snprintf(why, whylen, "expected device ids separated by commas (no spaces), got '%s'", value);
            return -1;
        }
        if (!p[n])
            break;
        p += n + 1;
    }
    return 0;
}

/* A relay sends the plain sample-weighted mean of its edges' updates
 * (docs/ARCHITECTURE.md "Aggregation tree"): what would change that is
 * refused here, with the reason. */
static int validate_relay(const fedge_agg_config *c, char *err, size_t errlen)
{
    char w[FEDGE_PATH_MAX + 96], w2[FEDGE_PATH_MAX + 96];
    int ret = FEDGE_OK;
    if (!c->upstream[0]) {
        if (c->upstream_id[0] || c->upstream_keys[0]) {
            snprintf(err, errlen, "%s is set without upstream: a root has no parent",
                     c->upstream_id[0] ? WHERE(upstream_id, w) : WHERE(upstream_keys, w));
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        }
        return FEDGE_OK;
    }
    if (!c->upstream_id[0] || !c->upstream_keys[0]) {
        snprintf(err, errlen, "%s needs %s: the relay's own device identity at the parent", WHERE(upstream, w),
                 !c->upstream_id[0] ? "upstream_id" : "upstream_keys");
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    CHK(must_exist(c->upstream_keys, S_IFREG, WHERE(upstream_keys, w), err, errlen));
    if (strcmp(c->aggregation, "mean") != 0) {
        snprintf(err, errlen, "%s = %s: a relay supports aggregation = mean only (the parent's weighted mean of"
                 " relay means is the mean over all edges; a robust rule belongs at the root, where it sees"
                 " every relay)", WHERE(aggregation, w), c->aggregation);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    if (strcmp(c->mode, "sync") != 0 || c->scaffold) {
        snprintf(err, errlen, "%s: a relay runs sync rounds that follow its parent's, without SCAFFOLD",
                 c->scaffold ? WHERE(scaffold, w) : WHERE(mode, w));
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    if (strcmp(c->server_optimizer, "sgd") != 0 || c->server_lr != 1.0) {
        snprintf(err, errlen, "%s: a relay has no model of its own to step (it needs server_optimizer = sgd,"
                 " server_lr = 1); the root's optimiser steps the model",
                 strcmp(c->server_optimizer, "sgd") != 0 ? WHERE(server_optimizer, w) : WHERE(server_lr, w));
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    if (!c->signing_key[0]) {
        snprintf(err, errlen, "%s needs %s: the parent logs the hash of the relay's signed audit head",
                 WHERE(upstream, w), WHERE(signing_key, w2));
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
cleanup:
    return ret;
}

static void warn_unused_keys(const fedge_agg_config *c)
{
    fedge_agg_config d;
    fedge_agg_config_defaults(&d);
    int f_used = strcmp(c->aggregation, "krum") == 0 || strcmp(c->aggregation, "multikrum") == 0 ||
                 strcmp(c->aggregation, "bulyan") == 0;
    if (!f_used && c->byzantine_f != d.byzantine_f)
        FEDGE_WARN("byzantine_f = %ld has no effect with aggregation = %s (krum, multikrum, bulyan read it)",
                   c->byzantine_f, c->aggregation);
    if (strcmp(c->aggregation, "multikrum") != 0 && c->multikrum_m != d.multikrum_m)
        FEDGE_WARN("multikrum_m = %ld has no effect with aggregation = %s (multikrum reads it)", c->multikrum_m,
                   c->aggregation);
    if (strcmp(c->aggregation, "trimmed_mean") != 0 && c->trim_beta != d.trim_beta)
        FEDGE_WARN("trim_beta = %g has no effect with aggregation = %s (trimmed_mean reads it)", c->trim_beta,
                   c->aggregation);
}

int fedge_agg_config_validate(const fedge_agg_config *c, char *err, size_t errlen)
{
    char w[FEDGE_PATH_MAX + 96], w2[FEDGE_PATH_MAX + 96];
    int ret = FEDGE_OK;
    if (c->keys_file[0] == '\0') {
        snprintf(err, errlen, "keys_file is required (--keys-file FILE or keys_file = FILE)");
        return FEDGE_ERR_CONFIG_VALUE;
    }
    /* the text checks again: a value set straight into the struct gets them too */
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(FIELDS); i++) {
        const field *f = &FIELDS[i];
        char why[200];
        if (f->type != T_STR || !f->check)
            continue;
        const char *v = (const char *)c + f->offset;
        if (f->check(v, why, sizeof why) != 0) {
            describe(c, i, f->key, w, sizeof w);
            snprintf(err, errlen, "%s: %s", w, why);
            return FEDGE_ERR_CONFIG_VALUE;
        }
    }
    CHK(must_exist(c->keys_file, S_IFREG, WHERE(keys_file, w), err, errlen));
    if (c->db_page_size != 0 &&
        (c->db_page_size < 512 || (c->db_page_size & (c->db_page_size - 1)) != 0)) {
        snprintf(err, errlen, "%s: %ld is not a power of two in 512..65536", WHERE(db_page_size, w),
                 c->db_page_size);
        return FEDGE_ERR_CONFIG_VALUE;
    }
    if (c->init_model[0])
        CHK(must_exist(c->init_model, S_IFREG, WHERE(init_model, w), err, errlen));
    if (strcmp(c->test_data, "fashion-mnist") != 0)
        CHK(must_exist(c->test_data, S_IFREG, WHERE(test_data, w), err, errlen));
    if (c->policy_file[0])
        CHK(must_exist(c->policy_file, S_IFREG, WHERE(policy_file, w), err, errlen));
    if (c->signing_key[0])
        CHK(must_exist(c->signing_key, S_IFREG, WHERE(signing_key, w), err, errlen));
    CHK(parent_must_exist(c->db, WHERE(db, w), err, errlen));
    if (c->log_file[0])
        CHK(parent_must_exist(c->log_file, WHERE(log_file, w), err, errlen));
    {
        struct stat st;
        if (stat(c->model_dir, &st) == 0) {
            if (!S_ISDIR(st.st_mode)) {
                snprintf(err, errlen, "%s: %s is not a folder", WHERE(model_dir, w), c->model_dir);
                FAIL(FEDGE_ERR_CONFIG_VALUE);
            }
        } else {
            CHK(parent_must_exist(c->model_dir, WHERE(model_dir, w), err, errlen));
        }
    }
    if (c->refine_every > 0 && c->refine_command[0] == '\0') {
        snprintf(err, errlen, "%s = %ld needs refine_command, which is empty", WHERE(refine_every, w),
                 c->refine_every);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    if (c->clients_per_round > 0 && c->min_updates > c->clients_per_round) {
        snprintf(err, errlen, "%s = %ld is more than %s = %ld: no round could aggregate",
                 WHERE(min_updates, w), c->min_updates, WHERE(clients_per_round, w2), c->clients_per_round);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    if (!(c->trim_beta < 0.5)) {
        snprintf(err, errlen, "%s = %g: must be below 0.5 (half cut at each end leaves nothing)",
                 WHERE(trim_beta, w), c->trim_beta);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    if (c->server_momentum >= 1 || c->server_beta1 >= 1 || c->server_beta2 >= 1) {
        snprintf(err, errlen, "%s: must be below 1",
                 c->server_momentum >= 1 ? WHERE(server_momentum, w)
                 : c->server_beta1 >= 1  ? WHERE(server_beta1, w)
                                         : WHERE(server_beta2, w));
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    if (fedge_combiner_find(c->aggregation)) {
        char why[256];
        size_t least = fedge_agg_config_combiner_min(c, (size_t)c->clients_per_round, why, sizeof why);
        if (least == 0 || (c->clients_per_round > 0 && (size_t)c->clients_per_round < least)) {
            snprintf(err, errlen, "%s = %ld: no round could aggregate (%s)", WHERE(clients_per_round, w),
                     c->clients_per_round, why);
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        }
        if (strcmp(c->mode, "async") == 0 &&
            fedge_agg_config_combiner_min(c, (size_t)c->async_buffer_k, why, sizeof why) > (size_t)c->async_buffer_k) {
            snprintf(err, errlen, "%s = %ld: no step could aggregate (%s)", WHERE(async_buffer_k, w),
                     c->async_buffer_k, why);
            FAIL(FEDGE_ERR_CONFIG_VALUE);
        }
        warn_unused_keys(c);
    }
    if (c->scaffold && strcmp(c->aggregation, "mean") != 0) {
        snprintf(err, errlen, "%s needs aggregation = mean, not %s = %s (SCAFFOLD's control variates "
                 "correct a mean of the clients' drift)", WHERE(scaffold, w), WHERE(aggregation, w2),
                 c->aggregation);
        FAIL(FEDGE_ERR_CONFIG_VALUE);
    }
    CHK(validate_relay(c, err, errlen));
cleanup:
    return ret;
}

void fedge_agg_config_print_help(FILE *out)
{
    fprintf(out, "Config keys (file: 'key = value' lines, '#' comments; command line: --key value):\n");
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(FIELDS); i++)
        fprintf(out, "  %-18s %s (default: %s)\n", FIELDS[i].key, FIELDS[i].help,
                FIELDS[i].def[0] ? FIELDS[i].def : "none");
}

int fedge_agg_config_from_args(fedge_agg_config *c, int argc, char **argv, const fedge_agg_args_extra *extra,
                               char *err, size_t errlen)
{
    int config_seen = 0, ret;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") != 0)
            continue;
        if (i + 1 >= argc || config_seen++) {
            snprintf(err, errlen, "--config: needs one file, given once");
            return FEDGE_ERR_CONFIG_VALUE;
        }
        if ((ret = fedge_agg_config_load_file(c, argv[++i], err, errlen)) != FEDGE_OK)
            return ret;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            i++;
            continue;
        }
        if (strncmp(argv[i], "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%.80s' (see --help)", argv[i]);
            return FEDGE_ERR_CONFIG_UNKNOWN_KEY;
        }
        char key[64];
        const char *name = argv[i] + 2, *value = NULL, *eq = strchr(name, '=');
        size_t klen = eq ? (size_t)(eq - name) : strlen(name);
        if (klen == 0 || klen >= sizeof key) {
            snprintf(err, errlen, "unknown option '%.80s' (see --help)", argv[i]);
            return FEDGE_ERR_CONFIG_UNKNOWN_KEY;
        }
        memcpy(key, name, klen);
        key[klen] = '\0';
        for (char *p = key; *p; p++)
            if (*p == '-')
                *p = '_';
        if (!extra && !fedge_agg_config_is_key(key)) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)klen, name);
            return FEDGE_ERR_CONFIG_UNKNOWN_KEY;
        }
        if (extra && extra->is_flag && extra->is_flag(extra->ctx, key)) {
            if (eq) {
                snprintf(err, errlen, "--%.*s takes no value", (int)klen, name);
                return FEDGE_ERR_CONFIG_VALUE;
            }
        } else if (eq) {
            value = eq + 1;
        } else if (fedge_agg_config_is_key(key) && fedge_agg_config_is_flag(key)) {
            value = "true";
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            snprintf(err, errlen, "--%.*s needs a value", (int)klen, name);
            return FEDGE_ERR_CONFIG_VALUE;
        }
        if (extra && extra->take) {
            int took = 0;
            if ((ret = extra->take(extra->ctx, key, value, &took, err, errlen)) != FEDGE_OK)
                return ret;
            if (took)
                continue;
        }
        if (!fedge_agg_config_is_key(key)) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)klen, name);
            return FEDGE_ERR_CONFIG_UNKNOWN_KEY;
        }
        if ((ret = fedge_agg_config_set(c, key, value, err, errlen)) != FEDGE_OK)
            return ret;
    }
    return FEDGE_OK;
}
