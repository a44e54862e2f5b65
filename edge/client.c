/* client.c — the edge client's round loop (see client.h). */
#include "client.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/platform_util.h>

#include "backoff.h"
#include "common.h"
#include "control.h"
#include "counter.h"
#include "envelope.h"
#include "keys.h"
#include "link.h"
#include "log.h"
#include "modelfile.h"
#include "observe.h"
#include "round_info.h"
#include "trainer.h"
#include "update.h"

#define MAX_AGE_CAP_MS 60000u      /* never wait longer than this on a 5.03 */
#define BYTES_PER_TIMEOUT 65536u   /* --timeout-ms covers each started 64 KiB (a floor) */
#define TIMEOUT_CAP_MS 1800000u
#define RTT_LOG_CHANGE 2u          /* log the RTT again when it changed by this factor */

/* The server control variate c of SCAFFOLD rounds (GET /control), cached
 * with its version like the global model. spec: the round's, set before a
 * fetch. */
typedef struct {
    const fedge_model_spec *spec;
    fedge_model m;
    int have;
    uint8_t version[FEDGE_HASH_LEN];
} cached_control;

/* SCAFFOLD's state: the server variate c (GET /control) and the client
 * variate c_i of the round (read from control_path each round: the file is
 * the committed c_i, written only once the aggregator accepted an update).
 * Allocated by the first SCAFFOLD round, freed by a plain round: a plain
 * round does not hold its two model structs (FEDGE_EDGE_SCAFFOLD_HEAP). */
typedef struct {
    cached_control control;
    int control_without_etag;
    fedge_model client_control;
} scaffold_state;
_Static_assert(sizeof(scaffold_state) + 16 <= FEDGE_EDGE_SCAFFOLD_HEAP,
               "the SCAFFOLD plan counts this state");

typedef struct {
    const fedge_edge_config *cfg;
    const volatile sig_atomic_t *stop;
    fedge_device_key key;
    char psk[FEDGE_PSK_LEN + 1];
    fedge_shard_reader shard;
    int shard_open;
    fedge_edge_counter counter;
    fedge_edge_link *link;
    fedge_edge_trainer trainer;
    fedge_backoff backoff;
    fedge_rng jitter;
    /* Per-run state: a new run id (an aggregator started on a fresh log)
     * starts again from round 1, so what the client did is keyed by run. */
    int have_run;
    uint8_t run_id[FEDGE_RUN_ID_LEN]; /* the run last heard in /round */
    int have_done_round;
    uint32_t done_round;      /* the last round of run_id taken part in */
    int fetch_without_etag;   /* next GET /model: no ETag (after a failed one) */
    uint32_t rounds_taken;
    /* The round being taken part in: its end on the monotonic clock (from
     * /round's deadline_ms), 0 outside a round or when the server gave none. */
    uint64_t round_end_ms;
    uint32_t round_id;        /* that round's id, while round_end_ms is set */
    uint64_t polled_ms;       /* when the last /round answer arrived */
    uint32_t rtt_logged_ms;   /* the RTT last logged (0: none yet) */
    fedge_edge_reply reply;
    scaffold_state *scaffold; /* NULL outside SCAFFOLD rounds */
    char *control_path;       /* <state_dir>/<id>.control; NULL without --state-dir */
    /* push (CoAP Observe on /round) and the finished marker */
    char *finished_path;      /* <state_dir>/<id>.finished; NULL without --state-dir */
    char *base_path;          /* <state_dir>/<id>.base (a momentum round's base model);
                                 NULL without --state-dir or with --base-in-ram */
    int marker;               /* the marker names marker_run */
    uint8_t marker_run[FEDGE_RUN_ID_LEN];
    int heard;                /* a usable /round answer came in this process */
    int observe_off;          /* --no-observe, or the server refused a registration */
    int pushed_logged;        /* -1: nothing logged yet; else the last mode logged */
    const fedge_edge_device *dev; /* NULL: keys, shard and counter from files */
    int plan_printed;         /* a --print-memory line was logged ... */
    uint8_t plan_digest[FEDGE_HASH_LEN]; /* ... its SHA-256 (the struct is in the plan's base heap) */
    int base_ram_noted;       /* the base-in-RAM-without-state-dir line was logged */
} edge_client;

static void emit(const edge_client *c, fedge_edge_event *ev)
{
    if (c->dev && c->dev->event) {
        if (!ev->reason)
            ev->reason = "";
        c->dev->event(c->dev->arg, ev);
    }
}

static void not_sent(const edge_client *c, uint32_t round, int why)
{
    fedge_edge_event ev = {.kind = FEDGE_EDGE_EV_NOT_SENT, .round = round, .status = why};
    emit(c, &ev);
}

/* Outcome of one round, for the log line and the loop. */
typedef enum {
    ROUND_DONE,      /* update answered (accepted or refused) or given up */
    ROUND_SKIPPED,   /* nothing sent; this round will not be tried again */
    ROUND_REPOLL,    /* the round moved on under us: poll again at once */
} round_result;

static uint32_t scaled_timeout(uint32_t timeout_ms, size_t bytes)
{
    uint64_t chunks = bytes ? 1 + (bytes - 1) / BYTES_PER_TIMEOUT : 1;
    uint64_t t = (uint64_t)timeout_ms * chunks;
    return t > TIMEOUT_CAP_MS ? TIMEOUT_CAP_MS : (uint32_t)t;
}

/* Milliseconds left in the round being taken part in; UINT32_MAX when its
 * end is unknown, 0 once it has passed. */
static uint32_t round_left_ms(const edge_client *c)
{
    if (!c->round_end_ms)
        return UINT32_MAX;
    uint64_t now = fedge_edge_link_now_ms();
    if (now >= c->round_end_ms)
        return 0;
    uint64_t left = c->round_end_ms - now;
    return left > UINT32_MAX - 1 ? UINT32_MAX - 1 : (uint32_t)left;
}

/* The deadline of a request carrying `bytes` (either way): from the RTT and
 * block pace measured so far, at least --timeout-ms per started 64 KiB, and
 * never past the end of the round (link_rtt.h). */
static uint32_t request_timeout_ms(const edge_client *c, size_t bytes)
{
    fedge_link_rtt rtt;
    fedge_edge_link_rtt(c->link, &rtt);
    uint32_t left = round_left_ms(c);
    if (!rtt.has_rtt) {
        /* nothing measured: RFC 7252's default timers would stretch a request
         * to ~29 s; --timeout-ms is what the user asked for */
        uint32_t t = scaled_timeout(c->cfg->timeout_ms, bytes);
        return left != UINT32_MAX && left < t ? (left ? left : 1) : t;
    }
    return fedge_link_rtt_deadline_ms(&rtt, bytes, FEDGE_EDGE_BLOCK_BYTES,
                                      scaled_timeout(c->cfg->timeout_ms, bytes),
                                      left == UINT32_MAX ? 0 : left ? left : 1);
}

static void log_rtt(edge_client *c)
{
    fedge_link_rtt rtt;
    fedge_edge_link_rtt(c->link, &rtt);
    if (!rtt.has_rtt)
        return;
    uint32_t was = c->rtt_logged_ms;
    if (was && rtt.srtt_ms < was * RTT_LOG_CHANGE && rtt.srtt_ms * RTT_LOG_CHANGE > was)
        return;
    c->rtt_logged_ms = rtt.srtt_ms ? rtt.srtt_ms : 1;
    FEDGE_INFO("link: RTT %u ms (+-%u ms, %u clean samples), CoAP ACK timeout %u ms", rtt.srtt_ms,
               rtt.rttvar_ms, rtt.samples, fedge_edge_link_ack_timeout_ms(c->link));
}

/* One printable line of a reply body, for logs. */
static void reply_line(const fedge_edge_reply *r, char *out, size_t cap)
{
    size_t j = 0;
    for (size_t i = 0; i < r->body_len && j + 1 < cap; i++) {
        unsigned char ch = (unsigned char)r->body[i];
        if (ch == '\n' || ch == '\r')
            break;
        out[j++] = isprint(ch) ? (char)ch : '?';
    }
    out[j] = '\0';
}

static void code_text(int code, char out[8])
{
    snprintf(out, 8, "%d.%02d", code / 100 % 10, code % 100);
}

/* 5.xx: the server cannot answer now (5.03 no open round, 5.00 retry
 * later). 4.08 Request Entity Incomplete: the server saw only part of a
 * Block1 body (a lost block transfer), which resending completes. */
static int retryable_code(int code)
{
    return code / 100 == 5 || code == 408;
}

/* A 5.03 that means the round is gone ("no open round", "run finished",
 * docs/PROTOCOL.md), as opposed to a transient one (the database busy, too
 * many uploads in progress) that is worth retrying within the round. */
static int round_is_over(const fedge_edge_reply *r)
{
    return r->code == 503 && (strncmp(r->body, "no open round", 13) == 0 || strncmp(r->body, "run finished", 12) == 0);
}

/* Inside a round, a pushed /round (not yet handed over) saying the run has
 * finished: the daemon is about to exit, so retrying cannot help (an update
 * it counted stays counted). Any other change is no reason to stop: a
 * resend after the round closed is still answered from the log, and in
 * async mode an update may outlive the step it was admitted in. */
static int round_over_pushed(const edge_client *c)
{
    if (!c->round_end_ms)
        return 0;
    const fedge_edge_reply *n = fedge_edge_link_observe_peek(c->link);
    if (!n || n->code / 100 != 2)
        return 0;
    fedge_round_info ri;
    char err[128];
    if (fedge_round_info_parse(n->body, n->body_len, &ri, err, sizeof err) != FEDGE_OK)
        return 0;
    return ri.state == FEDGE_ROUND_FINISHED;
}

/* Send req until an answer that retryable_code() does not cover arrives.
 * Returns FEDGE_OK with c->reply filled (a retryable code when retries ran
 * out on those), the transport error of the last attempt once retries are
 * exhausted, or FEDGE_ERR_EDGE_STOPPED. Inside a round (c->round_end_ms set)
 * timeouts (a slow or lossy link) are retried while the round has time left,
 * --max-retries or not; answers and refusals still count against
 * --max-retries; nothing is retried once the round's time is up. With
 * final_503 a 5.03 saying the round is over is returned at once (a busy
 * one is retried). Each attempt's
 * deadline comes from request_timeout_ms(bytes) at that moment. *attempts
 * counts the requests sent; each resends the very same request (for POST,
 * the same sealed bytes). */
static int request_with_retry(edge_client *c, const fedge_edge_request *req_in, size_t bytes,
                              int final_503, const char *what, unsigned *attempts)
{
    const fedge_edge_config *cfg = c->cfg;
    fedge_edge_request req_copy = *req_in, *req = &req_copy;
    *attempts = 0;
    for (unsigned attempt = 0;; attempt++) {
        req->timeout_ms = request_timeout_ms(c, bytes);
        int rc = fedge_edge_link_request(c->link, req, &c->reply, c->stop);
        (*attempts)++;
        uint32_t delay = fedge_backoff_delay_ms(&c->backoff, attempt, &c->jitter);
        if (rc == FEDGE_OK && (!retryable_code(c->reply.code) || (final_503 && round_is_over(&c->reply))))
            return FEDGE_OK;
        if (rc == FEDGE_ERR_EDGE_STOPPED)
            return rc;
        if (rc != FEDGE_OK && rc != FEDGE_ERR_TIMEOUT && rc != FEDGE_ERR_IO) {
            FEDGE_ERROR("%s: %s (%s)", what, fedge_strerror(rc),
                        fedge_edge_link_last_error(c->link));
            return rc;
        }
        if (round_over_pushed(c)) {
            FEDGE_INFO("%s: the run has finished (pushed by the aggregator); not retrying round %u", what,
                       c->round_id);
            return rc;
        }
        uint32_t left = round_left_ms(c);
        int counted_out = cfg->max_retries >= 0 && attempt >= (unsigned)cfg->max_retries;
        int out_of_retries = left == UINT32_MAX
                                 ? counted_out
                                 : left <= delay || (counted_out && rc != FEDGE_ERR_TIMEOUT);
        if (rc == FEDGE_OK) {
            char line[128], code[8];
            reply_line(&c->reply, line, sizeof line);
            code_text(c->reply.code, code);
            if (c->reply.has_max_age) {
                uint64_t ma = (uint64_t)c->reply.max_age_s * 1000u;
                if (ma > delay)
                    delay = ma > MAX_AGE_CAP_MS ? MAX_AGE_CAP_MS : (uint32_t)ma;
            }
            if (out_of_retries) {
                FEDGE_WARN("%s: %s %s; giving up after %u attempts", what, code, line,
                           *attempts);
                return FEDGE_OK;
            }
            FEDGE_INFO("%s: %s %s; retrying in %u ms", what, code, line, (unsigned)delay);
        } else {
            if (out_of_retries) {
                FEDGE_WARN("%s: %s; giving up after %u attempts", what,
                           fedge_edge_link_last_error(c->link), *attempts);
                return rc;
            }
            FEDGE_WARN("%s: %s (attempt %u); retrying in %u ms", what,
                       fedge_edge_link_last_error(c->link), *attempts, (unsigned)delay);
        }
        int src = fedge_edge_link_sleep(c->link, delay, c->stop);
        if (src != FEDGE_OK)
            return src;
    }
}

/* ETags are opaque, but a server may send the 8 version bytes as a CoAP
 * uint (leading zero bytes dropped): compare them as big-endian numbers. */
static int same_etag(const uint8_t *got, size_t got_len, const uint8_t want[FEDGE_EDGE_ETAG_MAX])
{
    size_t skip = 0;
    while (skip < FEDGE_EDGE_ETAG_MAX && want[skip] == 0)
        skip++;
    while (got_len > 0 && got[0] == 0) {
        got++;
        got_len--;
    }
    return got_len == FEDGE_EDGE_ETAG_MAX - skip && memcmp(got, want + skip, got_len) == 0;
}

static int same_spec_text(const fedge_model_spec *a, const fedge_model_spec *b)
{
    char ta[FEDGE_MODEL_SPEC_MAX], tb[FEDGE_MODEL_SPEC_MAX];
    return fedge_model_spec_format(a, ta, sizeof ta) == FEDGE_OK &&
           fedge_model_spec_format(b, tb, sizeof tb) == FEDGE_OK && strcmp(ta, tb) == 0;
}

static void model_drop(void *arg)
{
    fedge_edge_trainer_drop_global(arg);
}

static int model_take(void *arg, uint8_t *data, size_t len)
{
    return fedge_edge_trainer_take_global(arg, data, len);
}

static void control_drop(cached_control *cc)
{
    fedge_model_free(&cc->m);
    memset(&cc->m, 0, sizeof cc->m);
    cc->have = 0;
    memset(cc->version, 0, sizeof cc->version);
}

static void scaffold_free(edge_client *c)
{
    if (!c->scaffold)
        return;
    control_drop(&c->scaffold->control);
    fedge_model_free(&c->scaffold->client_control);
    free(c->scaffold);
    c->scaffold = NULL;
}

/* Like fedge_edge_trainer_set_global: the old copy goes first (memory stays
 * bounded), and a body for another spec is refused. */
static int control_sink(void *arg, const uint8_t *data, size_t len)
{
    cached_control *cc = arg;
    control_drop(cc);
    fedge_model m;
    uint8_t version[FEDGE_HASH_LEN];
    memset(&m, 0, sizeof m);
    int ret = fedge_model_deserialize(data, len, &m, version);
    if (ret != FEDGE_OK)
        return ret;
    if (!same_spec_text(&m.spec, cc->spec)) {
        fedge_model_free(&m);
        return FEDGE_ERR_MODEL_SHAPE;
    }
    cc->m = m;
    memcpy(cc->version, version, sizeof version);
    cc->have = 1;
    return FEDGE_OK;
}

/* A /round naming another run than the last one heard: nothing done in the
 * old run counts in the new one (its round numbers start again), and no
 * copy cached from it (base model, server control variate) is trusted. */
static void follow_run(edge_client *c, const fedge_round_info *ri)
{
    if (!ri->has_run || (c->have_run && memcmp(c->run_id, ri->run_id, FEDGE_RUN_ID_LEN) == 0))
        return;
    if (c->have_run) {
        char hex[2 * FEDGE_RUN_ID_LEN + 1];
        fedge_hex_encode(ri->run_id, FEDGE_RUN_ID_LEN, hex);
        FEDGE_INFO("a new aggregator run %s: rounds taken part in before do not count in it", hex);
        c->trainer.have_global = 0;
        memset(c->trainer.global_version, 0, sizeof c->trainer.global_version);
        if (c->scaffold)
            control_drop(&c->scaffold->control);
        c->fetch_without_etag = 0;
        c->round_end_ms = 0;
    }
    c->have_done_round = 0;
    c->have_run = 1;
    memcpy(c->run_id, ri->run_id, FEDGE_RUN_ID_LEN);
}

/* --print-memory: the plan of every round whose plan differs from the one
 * printed last (spec, batch, encoding, SCAFFOLD, momentum/FedProx velocity,
 * the base on storage or in RAM), not only when buffers are resized. */
static void print_memory_plan(edge_client *c, const fedge_round_info *ri,
                              const fedge_edge_memory *m)
{
    char line[512], full[1024];
    uint8_t digest[FEDGE_HASH_LEN];
    fedge_edge_memory_format(m, line, sizeof line);
    snprintf(full, sizeof full, "memory plan (%s, batch %d, %s%s): %s", ri->spec_text, ri->batch,
             fedge_encoding_name(c->cfg->encoding), ri->has_control ? ", SCAFFOLD" : "", line);
    if (fedge_sha256(full, strlen(full), digest) == FEDGE_OK) {
        if (c->plan_printed && memcmp(digest, c->plan_digest, sizeof digest) == 0)
            return;
        memcpy(c->plan_digest, digest, sizeof digest);
        c->plan_printed = 1;
    }
    FEDGE_INFO("%s", full);
}

/* One versioned file of the round: GET /model (the base model) or GET
 * /control (SCAFFOLD's server variate), a model file whose version (its
 * hash) /round announced. */
typedef struct {
    const char *path;           /* "model" or "control" */
    const char *noun;           /* for the log */
    const char *announced;      /* where /round announced the version */
    const uint8_t *want;        /* that version */
    const int *have;            /* the cached copy ... */
    const uint8_t *version;     /* ... and its version */
    fedge_edge_body_sink sink;  /* or take */
    fedge_edge_body_take take;
    void *sink_arg;
    void (*drop)(void *);       /* drops the cached copy (may be NULL) */
    int *without_etag;          /* next fetch without an ETag (after a failed one) */
} versioned_fetch;

/* GET the file unless the cached copy is current. FEDGE_OK with *usable = 1
 * when the cached copy is the announced version; a served copy of another
 * version is never used (ROUND_REPOLL: poll /round and fetch again). */
static int fetch_versioned(edge_client *c, const fedge_round_info *ri, const versioned_fetch *f,
                           round_result *result, int *usable)
{
    uint8_t etag[FEDGE_EDGE_ETAG_MAX];
    char hex[FEDGE_HASH_HEX_LEN], code[8], line[128], what[32];
    unsigned attempts;
    *usable = 0;
    snprintf(what, sizeof what, "GET /%s", f->path);
    /* Send the ETag only when the cached copy is the announced one, the one
     * case where it can validate. A stale ETag is legal CoAP, but libcoap
     * 4.3.1 repeats it in every Block2 follow-up request, its server then
     * leaves the ETag off the later blocks, and the client's reassembly
     * gives up ("Not all blocks have ETag option"). */
    int send_etag = *f->have && !*f->without_etag &&
                    memcmp(f->version, f->want, FEDGE_HASH_LEN) == 0;
    *f->without_etag = 0;
    if (send_etag)
        memcpy(etag, f->version, sizeof etag);
    else if (f->drop)
        f->drop(f->sink_arg); /* a 2.05 replaces it anyway: the two never coexist */
    fedge_edge_request req = {
        .method = FEDGE_EDGE_GET,
        .path = f->path,
        .etag = send_etag ? etag : NULL,
        .etag_len = send_etag ? sizeof etag : 0,
        .sink = f->sink,
        .take = f->take,
        .sink_arg = f->sink_arg,
        /* a model file: header, spec text, float32 parameters, checksum */
        .max_body = 4 * fedge_model_spec_param_count(&ri->spec) + 64 + FEDGE_MODEL_SPEC_MAX,
    };
    int rc = request_with_retry(c, &req, 4 * fedge_model_spec_param_count(&ri->spec),
                                0, what, &attempts);
    if (rc == FEDGE_ERR_TIMEOUT || rc == FEDGE_ERR_IO) {
        /* Already logged. GET /round decides whether the server is gone: a
         * restarted aggregator resumes the open round, and an edge that
         * skipped it here would sit the round out. */
        FEDGE_ERROR("round %u: no %s after %u attempts; polling /round again", ri->round,
                    f->noun, attempts);
        fedge_edge_link_reset(c->link);
        *result = ROUND_REPOLL;
        return FEDGE_OK;
    }
    if (rc != FEDGE_OK)
        return rc;
    const fedge_edge_reply *r = &c->reply;
    code_text(r->code, code);
    reply_line(r, line, sizeof line);
    if (r->code == 203) {
        if (!send_etag || !*f->have ||
            (r->etag_len && !same_etag(r->etag, r->etag_len, etag))) {
            FEDGE_WARN("round %u: 2.03 Valid for a %s this client does not hold",
                       ri->round, f->noun);
            fedge_edge_link_reset(c->link);
            *result = ROUND_REPOLL;
            return FEDGE_OK;
        }
        FEDGE_DEBUG("round %u: cached %s still valid (2.03)", ri->round, f->noun);
    } else if (r->code == 205) {
        if (!r->sink_called || r->sink_status != FEDGE_OK) {
            int why = r->sink_called ? r->sink_status : FEDGE_ERR_MODEL_FILE_TRUNCATED;
            FEDGE_ERROR("round %u: %s body of %zu bytes refused: %s", ri->round, what,
                        r->body_total, fedge_strerror(why));
            /* libcoap may have left block mode for this session: start afresh. */
            fedge_edge_link_reset(c->link);
            if (send_etag) {
                *f->without_etag = 1; /* once more, as a plain GET */
                *result = ROUND_REPOLL;
            } else {
                /* cut short (the server went away mid-transfer): the round
                 * may resume; a body that arrived whole and is invalid will
                 * be the same next time */
                *result = r->sink_called ? ROUND_SKIPPED : ROUND_REPOLL;
            }
            return FEDGE_OK;
        }
    } else {
        FEDGE_ERROR("round %u: %s answered %s %s", ri->round, what, code, line);
        *result = r->code / 100 == 5 ? ROUND_REPOLL : ROUND_SKIPPED;
        return FEDGE_OK;
    }
    if (!*f->have || memcmp(f->version, f->want, FEDGE_HASH_LEN) != 0) {
        fedge_hash_to_hex(f->version, hex);
        FEDGE_INFO("round %u: served %s %.16s is not the round's %s; polling again",
                   ri->round, f->noun, *f->have ? hex : "(none)", f->announced);
        *result = ROUND_REPOLL;
        return FEDGE_OK;
    }
    *usable = 1;
    return FEDGE_OK;
}

static int fetch_model(edge_client *c, const fedge_round_info *ri, round_result *result,
                       int *usable)
{
    fedge_edge_trainer *t = &c->trainer;
    versioned_fetch f = {
        .path = "model",
        .noun = "model",
        .announced = "base",
        .want = ri->model,
        .have = &t->have_global,
        .version = t->global_version,
        .take = model_take,
        .sink_arg = t,
        .drop = model_drop,
        .without_etag = &c->fetch_without_etag,
    };
    return fetch_versioned(c, ri, &f, result, usable);
}

static int fetch_control(edge_client *c, const fedge_round_info *ri, round_result *result,
                         int *usable)
{
    cached_control *cc = &c->scaffold->control;
    cc->spec = &ri->spec;
    if (cc->have && !same_spec_text(&cc->m.spec, &ri->spec))
        control_drop(cc);
    versioned_fetch f = {
        .path = "control",
        .noun = "control variate",
        .announced = "control=",
        .want = ri->control,
        .have = &cc->have,
        .version = cc->version,
        .sink = control_sink,
        .sink_arg = cc,
        .without_etag = &c->scaffold->control_without_etag,
    };
    return fetch_versioned(c, ri, &f, result, usable);
}

/* The client control variate c_i for this round into c->scaffold->client_control
 * (control.h): the committed file, or zeros with a word why. */
static int load_client_control(edge_client *c, const fedge_round_info *ri, float bound)
{
    fedge_control_status st;
    int why;
    int ret = fedge_edge_control_load(c->control_path, &ri->spec, ri->run_id, bound,
                                      &c->scaffold->client_control, &st, &why);
    if (ret != FEDGE_OK)
        return ret;
    switch (st) {
    case FEDGE_CONTROL_LOADED:
        break;
    case FEDGE_CONTROL_NEW:
        FEDGE_INFO("round %u: no client control variate yet (%s); starting from zeros",
                   ri->round, c->control_path);
        break;
    case FEDGE_CONTROL_OTHER_SPEC:
        FEDGE_WARN("round %u: %s holds a control variate for another model than %s; "
                   "starting from zeros", ri->round, c->control_path, ri->spec_text);
        break;
    case FEDGE_CONTROL_OTHER_RUN:
        FEDGE_WARN("round %u: %s holds a control variate of another aggregator run than this "
                   "round's run= (or of none); starting from zeros", ri->round, c->control_path);
        break;
    case FEDGE_CONTROL_IMPLAUSIBLE:
        FEDGE_WARN("round %u: client control variate %s has values beyond the plausible bound %g; "
                   "starting from zeros", ri->round, c->control_path, (double)bound);
        break;
    case FEDGE_CONTROL_CORRUPT:
        FEDGE_WARN("round %u: client control variate %s unusable (%s); starting from zeros",
                   ri->round, c->control_path, fedge_strerror(why));
        break;
    }
    return FEDGE_OK;
}

static int read_sealed(void *arg, size_t off, uint8_t *dst, size_t len)
{
    return fedge_update_stream_read(arg, off, dst, len);
}

static int take_part(edge_client *c, const fedge_round_info *ri, round_result *result)
{
    const fedge_edge_config *cfg = c->cfg;
    fedge_edge_trainer *t = &c->trainer;
    fedge_edge_blob *blob = NULL;
    fedge_update_stream *sealed = NULL;
    double loss = 0.0;
    unsigned attempts = 0;
    char outcome[256], code[8], line[128];
    int ret = FEDGE_OK, resized = 0, usable = 0, accepted = 0;
    *result = ROUND_SKIPPED;

    if (c->shard.dim != ri->spec.input_dim || c->shard.n_classes > ri->spec.classes) {
        FEDGE_ERROR("round %u: shard has dim %d and %d classes; model %s does not fit it",
                    ri->round, c->shard.dim, c->shard.n_classes, ri->spec_text);
        return FEDGE_ERR_MODEL_SHAPE;
    }
    int scaffold = ri->has_control;
    if (scaffold && !c->control_path) {
        FEDGE_ERROR("round %u: a SCAFFOLD round needs --state-dir (the client control variate "
                    "must outlive the round); skipping the round", ri->round);
        return FEDGE_OK;
    }
    /* The aggregator picks spec and batch: a plan over the ceiling (or one
     * the allocator refuses) skips the round, it does not end the client. */
    size_t ceiling = (size_t)cfg->max_memory_mb * 1024u * 1024u;
    fedge_edge_round_plan rp;
    memset(&rp, 0, sizeof rp);
    ret = fedge_edge_plan_round(&ri->spec, ri->batch, c->shard.record_size, cfg->encoding, scaffold,
                                ri->momentum, ri->prox_mu, c->base_path != NULL,
                                ceiling, NULL, &rp);
    fedge_edge_memory plan = rp.mem;
    fedge_edge_velocity velocity = rp.velocity;
    if (ret != FEDGE_OK || plan.peak > ceiling) {
        if (ret == FEDGE_OK)
            FEDGE_ERROR("round %u: %s at batch %d needs %zu MiB of buffers, more than "
                        "--max-memory-mb %u; skipping the round", ri->round, ri->spec_text,
                        ri->batch, (plan.peak + (1024u * 1024u - 1)) / (1024u * 1024u),
                        (unsigned)cfg->max_memory_mb);
        else
            FEDGE_ERROR("round %u: no memory plan for %s at batch %d (%s); skipping the round",
                        ri->round, ri->spec_text, ri->batch, fedge_strerror(ret));
        return FEDGE_OK;
    }
    if (velocity == FEDGE_EDGE_VELOCITY_RAM && ri->momentum > 0.0f && !cfg->state_dir && !c->base_ram_noted &&
        !(ri->prox_mu > 0.0f) && !scaffold) {
        FEDGE_INFO("round %u: momentum %g without --state-dir: the base model stays in RAM while "
                   "training (one more model copy, %zu B); --state-dir DIR keeps it on storage",
                   ri->round, (double)ri->momentum, plan.local);
        c->base_ram_noted = 1;
    }
    /* where the base file cannot be written this round, the base stays in
     * RAM only if the plan with a RAM velocity fits too */
    int base_ram_ok = 0;
    if (velocity == FEDGE_EDGE_VELOCITY_BASE_FILE) {
        fedge_edge_memory ram;
        base_ram_ok = fedge_edge_memory_plan_pass(&ri->spec, ri->batch, c->shard.record_size,
                                                  cfg->encoding, scaffold, FEDGE_EDGE_VELOCITY_RAM,
                                                  rp.micro, rp.act_budget, &ram) == FEDGE_OK &&
                      ram.peak <= ceiling;
    }
    int replanned = 0;
    if (!scaffold && (t->control_delta || c->scaffold)) {
        /* back to a plain round: nothing SCAFFOLD's stays resident */
        fedge_edge_trainer_drop_control(t);
        scaffold_free(c);
        replanned = 1;
    }
    if (scaffold && !c->scaffold && !(c->scaffold = calloc(1, sizeof *c->scaffold)))
        ret = FEDGE_ERR_NOMEM;
    if (ret == FEDGE_OK)
        ret = fedge_edge_trainer_prepare_pass(t, &ri->spec, ri->batch, rp.micro, rp.act_budget,
                                              &resized);
    resized |= replanned;
    if (ret == FEDGE_OK && scaffold && !t->control_delta) {
        ret = fedge_edge_trainer_prepare_control(t);
        resized = 1;
    }
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("round %u: cannot allocate buffers for %s batch %d: %s; skipping the round",
                    ri->round, ri->spec_text, ri->batch, fedge_strerror(ret));
        return ret == FEDGE_ERR_NOMEM ? FEDGE_OK : ret;
    }
    if (cfg->print_memory)
        print_memory_plan(c, ri, &plan);

    c->round_id = ri->round;
    if (ri->deadline_ms >= 0)
        c->round_end_ms = c->polled_ms + (uint64_t)ri->deadline_ms;
    CHK(fetch_model(c, ri, result, &usable));
    if (!usable)
        goto cleanup;
    fedge_edge_event fetched = {.kind = FEDGE_EDGE_EV_FETCHED, .round = ri->round,
                                .bytes = c->reply.code == 205 ? c->reply.body_total : 0};
    emit(c, &fetched);
    if (scaffold) {
        CHK(fetch_control(c, ri, result, &usable));
        if (!usable)
            goto cleanup;
        /* a served c out of all proportion to the model is not trained on:
         * c_i+ would carry it into the file for good (control.h) */
        float bound = fedge_edge_control_bound(&t->global, ri->lr), max_abs;
        const fedge_model *cm = &c->scaffold->control.m;
        if (fedge_edge_control_check(cm->params, cm->n_params, bound, &max_abs) !=
            FEDGE_OK) {
            FEDGE_ERROR("round %u: the served control variate is implausible (max |c| %g, bound %g = "
                        "%g x max(1, max|w|) / lr); skipping the round", ri->round, (double)max_abs,
                        (double)bound, (double)FEDGE_CONTROL_STEP_BOUND);
            goto cleanup;
        }
        ret = load_client_control(c, ri, bound);
        if (ret != FEDGE_OK) {
            FEDGE_ERROR("round %u: no client control variate: %s", ri->round,
                        fedge_strerror(ret));
            goto cleanup;
        }
    }

    fedge_edge_train_params tp = {
        .epochs = ri->epochs,
        .lr = ri->lr,
        .momentum = ri->momentum,
        .weight_decay = ri->weight_decay,
        .seed = cfg->seed + ri->round,
        .prox_mu = ri->prox_mu,
        .control = scaffold ? c->scaffold->control.m.params : NULL,
        .client_control = scaffold ? c->scaffold->client_control.params : NULL,
        .base_file = c->base_path,
        .round = ri->round,
        .base_ram_fallback = base_ram_ok,
    };
    FEDGE_INFO("round %u: training %d epochs on %llu samples%s%s", ri->round, ri->epochs,
               (unsigned long long)c->shard.n, ri->prox_mu > 0.0f ? " (FedProx)" : "",
               scaffold ? " (SCAFFOLD)" : "");
    uint64_t train_t0 = fedge_edge_link_now_ms();
    t->accuracy = -1.0;
    ret = c->dev && c->dev->train
              ? c->dev->train(c->dev->arg, t, &c->shard, &tp, c->stop, &loss)
              : fedge_edge_trainer_train(t, &c->shard, &tp, c->stop, &loss);
    uint64_t train_ms = fedge_edge_link_now_ms() - train_t0;
    if (ret == FEDGE_ERR_MODEL_NONFINITE) {
        FEDGE_INFO("round %u: samples=%llu loss=nan sent=0 B encoding=%s outcome=not sent "
                   "(training diverged)", ri->round, (unsigned long long)c->shard.n,
                   fedge_encoding_name(cfg->encoding));
        ret = FEDGE_OK;
        *result = ROUND_DONE;
        not_sent(c, ri->round, FEDGE_ERR_MODEL_NONFINITE);
        goto cleanup;
    }
    if (ret == FEDGE_ERR_NOMEM) {
        /* the pass's buffers and the velocity are allocated by train() */
        FEDGE_ERROR("round %u: cannot allocate the training buffers for %s batch %d: %s; skipping "
                    "the round", ri->round, ri->spec_text, ri->batch, fedge_strerror(ret));
        not_sent(c, ri->round, ret);
        ret = FEDGE_OK;
        *result = ROUND_SKIPPED;
        goto cleanup;
    }
    if (ret == FEDGE_ERR_CONTROL_RANGE) {
        FEDGE_ERROR("round %u: training refused: %s; nothing sent, c_i kept", ri->round,
                    fedge_strerror(ret));
        not_sent(c, ri->round, ret);
        ret = FEDGE_OK;
        *result = ROUND_DONE;
        goto cleanup;
    }
    if (t->base_write_errno && (ret == FEDGE_OK || ret == FEDGE_ERR_BASE_WRITE)) {
        if (ret == FEDGE_OK)
            FEDGE_WARN("round %u: cannot write the base model to %s (%s); kept it in RAM this round "
                       "(the --max-memory-mb plan has room for it)", ri->round, c->base_path,
                       strerror(t->base_write_errno));
        else
            FEDGE_ERROR("round %u: cannot write the base model to %s (%s), and the --max-memory-mb plan "
                        "has no room for it in RAM; nothing sent, skipping the round", ri->round,
                        c->base_path, strerror(t->base_write_errno));
    }
    if (ret == FEDGE_ERR_MODEL_FILE_CHECKSUM && t->spilled)
        FEDGE_ERROR("round %u: the base model in %s failed its check (altered, truncated, or not the "
                    "round's model); nothing sent, skipping the round", ri->round, c->base_path);
    if (ret == FEDGE_ERR_BASE_WRITE || (ret == FEDGE_ERR_MODEL_FILE_CHECKSUM && t->spilled)) {
        not_sent(c, ri->round, ret);
        ret = FEDGE_OK;
        *result = ROUND_DONE;
        goto cleanup;
    }
    if (ret != FEDGE_OK) {
        if (ret != FEDGE_ERR_EDGE_STOPPED)
            FEDGE_ERROR("round %u: training failed: %s", ri->round, fedge_strerror(ret));
        goto cleanup;
    }

    fedge_delta_header h;
    memset(&h, 0, sizeof h);
    h.encoding = (uint8_t)cfg->encoding;
    h.model_id = fedge_model_spec_id(&ri->spec);
    h.round = ri->round;
    h.n_samples = c->shard.n > UINT32_MAX ? UINT32_MAX : (uint32_t)c->shard.n;
    h.n_elems = (uint32_t)(t->local.n_params * (scaffold ? 2 : 1)); /* dy, then dc */
    h.flags = scaffold ? FEDGE_DELTA_FLAG_CONTROL : 0;
    h.block_size = cfg->encoding == FEDGE_ENC_INT8 ? FEDGE_DELTA_DEFAULT_BLOCK : 0;
    memcpy(h.base_version, t->global_version, FEDGE_HASH_LEN);
    uint64_t counter;
    ret = fedge_edge_counter_next(&c->counter, fedge_edge_now_us(), &counter);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("round %u: cannot persist the update counter (%s): %s", ri->round,
                    c->counter.path ? c->counter.path : "-", fedge_strerror(ret));
        goto cleanup;
    }
    if (c->dev && c->dev->counter_last)
        *c->dev->counter_last = counter;
    fedge_rng rounding, *rng = NULL;
    if (cfg->stochastic) {
        fedge_rng base;
        fedge_rng_seed(&base, cfg->seed + ri->round);
        fedge_rng_split(&base, 1, &rounding);
        rng = &rounding;
    }
    /* what training gave, in the update's authenticated metadata (update.h);
     * a trainer hook that gives no loss (NaN: fedge-edgesim --train none)
     * trained nothing and reports nothing */
    fedge_train_metrics tm = {0};
    if (isfinite(loss) && loss >= 0.0) {
        tm.present = FEDGE_TRAIN_HAS_LOSS | FEDGE_TRAIN_HAS_EPOCHS | FEDGE_TRAIN_HAS_MS;
        tm.loss = (float)loss;
        tm.epochs = (uint32_t)ri->epochs;
        tm.train_ms = train_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)train_ms;
    }
    if (t->accuracy >= 0.0 && t->accuracy <= 1.0) {
        tm.present |= FEDGE_TRAIN_HAS_ACCURACY;
        tm.accuracy = (float)t->accuracy;
    }
    /* sealed block by block as Block1 sends them; a retry seals the same bytes again */
    ret = fedge_update_stream_new_metrics(&c->key, counter, ri->run_id, &tm, &h, t->delta, rng, &sealed);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("round %u: cannot seal the update: %s", ri->round, fedge_strerror(ret));
        not_sent(c, ri->round, ret);
        *result = ROUND_DONE;
        ret = ret == FEDGE_ERR_RANGE || ret == FEDGE_ERR_DELTA_NONFINITE ? FEDGE_OK : ret;
        goto cleanup;
    }
    CHK(fedge_edge_blob_new_reader(fedge_update_stream_size(sealed), read_sealed, sealed, &blob));

    fedge_edge_request req = {
        .method = FEDGE_EDGE_POST,
        .path = "update",
        .body = blob,
    };
    fedge_edge_event posted = {.kind = FEDGE_EDGE_EV_POSTING, .round = ri->round,
                               .bytes = blob->len};
    emit(c, &posted);
    uint64_t post_ms = fedge_edge_link_now_ms();
    ret = request_with_retry(c, &req, blob->len, 1, "POST /update", &attempts);
    posted.kind = FEDGE_EDGE_EV_POSTED;
    posted.latency_ms = fedge_edge_link_now_ms() - post_ms;
    posted.status = ret;
    if (ret == FEDGE_OK) {
        posted.code = c->reply.code;
        reply_line(&c->reply, line, sizeof line);
        posted.reason = line;
    }
    emit(c, &posted);
    if (ret == FEDGE_ERR_EDGE_STOPPED)
        goto cleanup;
    *result = ROUND_DONE;
    if (ret != FEDGE_OK) {
        snprintf(outcome, sizeof outcome, "gave up after %u attempts (%s)", attempts,
                 fedge_edge_link_last_error(c->link));
        ret = FEDGE_OK;
    } else {
        code_text(c->reply.code, code);
        reply_line(&c->reply, line, sizeof line);
        accepted = c->reply.code == 204;
        if (c->reply.code == 204)
            snprintf(outcome, sizeof outcome, "%s", line[0] ? line : "accepted");
        else if (retryable_code(c->reply.code))
            snprintf(outcome, sizeof outcome, "gave up after %u attempts (%s %s)", attempts,
                     code, line);
        else
            snprintf(outcome, sizeof outcome, "rejected %s %s", code, line);
    }
    char acc[16] = "-";
    if (tm.present & FEDGE_TRAIN_HAS_ACCURACY)
        snprintf(acc, sizeof acc, "%.4f", (double)tm.accuracy);
    FEDGE_INFO("round %u: samples=%llu loss=%.4f accuracy=%s epochs=%u train_ms=%u sent=%zu B encoding=%s%s "
               "attempts=%u outcome=%s", ri->round, (unsigned long long)c->shard.n, loss, acc, tm.epochs,
               tm.train_ms, blob->len,
               fedge_encoding_name(cfg->encoding),
               cfg->stochastic ? "(stochastic)" : "", attempts, outcome);
    /* c_i+ becomes c_i only with an accepted update: the server's c is the
     * mean of the c_i it has counted, so a refused or lost update must leave
     * c_i as it was (the next round reads the file again). */
    if (scaffold && accepted) {
        fedge_edge_blob_release(blob);
        blob = NULL;
        fedge_update_stream_free(sealed);
        sealed = NULL;
        ret = fedge_edge_control_commit(c->control_path, ri->run_id, &c->scaffold->client_control);
        if (ret != FEDGE_OK) {
            FEDGE_ERROR("round %u: cannot persist the client control variate %s: %s; stopping "
                        "(the aggregator has counted this round's control delta)", ri->round,
                        c->control_path, fedge_strerror(ret));
            goto cleanup;
        }
    }
cleanup:
    c->round_end_ms = 0;
    if (c->scaffold) /* c_i is read again next round: the file is c_i */
        fedge_model_free(&c->scaffold->client_control);
    fedge_edge_blob_release(blob);
    fedge_update_stream_free(sealed);
    return ret;
}

/* The in-memory device's keys, shard and counter (fedge_edge_device). */
static int setup_device(edge_client *c)
{
    const fedge_edge_device *d = c->dev;
    if (!d->key || !d->psk || strlen(d->psk) > FEDGE_PSK_LEN || !d->shard || d->shard->n == 0)
        return FEDGE_ERR_INVALID_ARG;
    c->key = *d->key;
    snprintf(c->psk, sizeof c->psk, "%s", d->psk);
    c->shard = *d->shard;
    if (d->counter_last)
        c->counter.last = *d->counter_last;
    return FEDGE_OK;
}

static int setup(edge_client *c)
{
    const fedge_edge_config *cfg = c->cfg;
    fedge_keys keys;
    char err[256];
    int ret;
    if (c->dev) {
        ret = setup_device(c);
        if (ret != FEDGE_OK) {
            FEDGE_ERROR("device %s: incomplete in-memory device", cfg->id);
            return ret;
        }
        goto link;
    }
    ret = fedge_keys_load(cfg->keys_path, &keys, err, sizeof err);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("keys: %s", err[0] ? err : fedge_strerror(ret));
        return ret;
    }
    const fedge_device_entry *e = fedge_keys_find(&keys, cfg->id, strlen(cfg->id));
    if (!e) {
        FEDGE_ERROR("keys: %s has no line for device %s", cfg->keys_path, cfg->id);
        fedge_keys_free(&keys);
        return FEDGE_ERR_NOT_FOUND;
    }
    ret = fedge_envelope_derive_key(e->secret, FEDGE_SECRET_LEN, cfg->id, &c->key);
    if (ret == FEDGE_OK)
        ret = fedge_keys_dtls_psk(e->secret, cfg->id, c->psk);
    fedge_keys_free(&keys);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("keys: cannot derive the device keys: %s", fedge_strerror(ret));
        return ret;
    }

    ret = fedge_shard_verify(cfg->shard_path);
    if (ret == FEDGE_OK)
        ret = fedge_shard_open(&c->shard, cfg->shard_path);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("shard %s: %s", cfg->shard_path, fedge_strerror(ret));
        return ret;
    }
    c->shard_open = 1;

    ret = fedge_edge_counter_open(&c->counter, cfg->state_dir, cfg->id, err, sizeof err);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("state: %s", err[0] ? err : fedge_strerror(ret));
        return ret;
    }
    if (cfg->state_dir) {
        ret = fedge_edge_control_path(cfg->state_dir, cfg->id, &c->control_path);
        if (ret != FEDGE_OK)
            return ret;
        ret = fedge_finished_marker_path(cfg->state_dir, cfg->id, &c->finished_path);
        if (ret != FEDGE_OK)
            return ret;
        if (!cfg->base_in_ram) {
            size_t n = strlen(cfg->state_dir) + 1 + strlen(cfg->id) + sizeof ".base";
            if (!(c->base_path = malloc(n)))
                return FEDGE_ERR_NOMEM;
            snprintf(c->base_path, n, "%s/%s.base", cfg->state_dir, cfg->id);
            unlink(c->base_path); /* a crashed round's: never read, it would fail its check */
        }
        ret = fedge_finished_marker_read(c->finished_path, c->marker_run, &c->marker);
        if (ret != FEDGE_OK) {
            FEDGE_WARN("%s: %s; ignored", c->finished_path, fedge_strerror(ret));
            c->marker = 0;
        }
    }
link:;

    fedge_edge_link_config lc = {
        .host = cfg->host,
        .port = cfg->port,
        .insecure = cfg->insecure,
        .id = cfg->id,
        .psk = cfg->insecure ? NULL : c->psk,
        .ack_timeout_ms = 0, /* from the measured RTT */
        .handshake_timeout_ms = cfg->timeout_ms > FEDGE_EDGE_HANDSHAKE_MS ? cfg->timeout_ms : 0,
        .verbose = cfg->log_level == FEDGE_LOG_DEBUG,
        .tcp = cfg->tcp,
    };
    ret = fedge_edge_link_open(&lc, &c->link, err, sizeof err);
    if (ret != FEDGE_OK) {
        FEDGE_ERROR("server %s:%u: %s", cfg->host, (unsigned)cfg->port, err);
        return ret;
    }
    FEDGE_INFO("device %s: server %s:%u (%s), shard %s (%llu rows, dim %d), encoding %s",
               cfg->id, cfg->host, (unsigned)cfg->port, cfg->tcp ? (cfg->insecure ? "plain CoAP over TCP" : "CoAP over TLS/TCP")
                                                     : cfg->insecure ? "plain CoAP" : "DTLS",
               cfg->shard_path ? cfg->shard_path : "(in memory)", (unsigned long long)c->shard.n,
               c->shard.dim,
               fedge_encoding_name(cfg->encoding));
    return FEDGE_OK;
}

static void teardown(edge_client *c)
{
    fedge_edge_trainer_free(&c->trainer);
    scaffold_free(c);
    free(c->control_path);
    c->control_path = NULL;
    free(c->finished_path);
    c->finished_path = NULL;
    free(c->base_path);
    c->base_path = NULL;
    fedge_edge_counter_close(&c->counter);
    if (c->dev) {
        fedge_edge_event end = {.kind = FEDGE_EDGE_EV_END,
                                .handshakes = fedge_edge_link_handshakes(c->link)};
        emit(c, &end);
        if (c->shard.n) /* setup_device took it: hand back its position; the caller closes it */
            *c->dev->shard = c->shard;
    }
    fedge_edge_link_close(c->link);
    c->link = NULL;
    if (c->shard_open)
        fedge_shard_close(&c->shard);
    fedge_device_key_wipe(&c->key);
    mbedtls_platform_zeroize(c->psk, sizeof c->psk);
}

/* the longest /round body taken: the reply buffer, or the parser's limit */
#define ROUND_REPLY_MAX (FEDGE_EDGE_REPLY_MAX < FEDGE_ROUND_BODY_MAX ? FEDGE_EDGE_REPLY_MAX : FEDGE_ROUND_BODY_MAX)

/* The /round body in c->reply (a response or a notification), parsed. A
 * reply that cannot be used counts as one more failed attempt of
 * *bad_replies. */
static int read_round(edge_client *c, const char *what, fedge_round_info *ri, unsigned *bad_replies)
{
    char err[160], code[8], line[128];
    int rc = FEDGE_OK;
    const fedge_edge_reply *r = &c->reply;
    if (r->code == 205) {
        if (r->body_total > r->body_len)
            snprintf(err, sizeof err, "a body of %s%zu bytes exceeds the %d bytes /round may have here",
                     r->body_total == FEDGE_EDGE_REPLY_MAX + 1 ? "more than " : "",
                     r->body_total == FEDGE_EDGE_REPLY_MAX + 1 ? (size_t)FEDGE_EDGE_REPLY_MAX : r->body_total,
                     ROUND_REPLY_MAX);
        else
            rc = fedge_round_info_parse(r->body, r->body_len, ri, err, sizeof err);
        if (r->body_total <= r->body_len && rc == FEDGE_OK) {
            *bad_replies = 0;
            c->heard = 1;
            return FEDGE_OK;
        }
        FEDGE_ERROR("%s: unusable reply: %s", what, err);
    } else {
        code_text(r->code, code);
        reply_line(r, line, sizeof line);
        FEDGE_ERROR("%s answered %s %s", what, code, line);
        if (r->code / 100 == 4)
            return FEDGE_ERR_REJECTED; /* this device is not welcome: retrying will not help */
    }
    (*bad_replies)++;
    return FEDGE_ERR_PROTO;
}

/* While observing, a poll every 10 x --poll-ms, and at least every 60 s
 * (RFC 7641 §3.3.1: /round carries no Max-Age, so its default, 60 s, is when
 * the client should register again) unless --poll-ms is longer. */
#define OBSERVE_FALLBACK_FACTOR 10u
#define OBSERVE_MAX_AGE_MS 60000u

static uint32_t observe_fallback_ms(const edge_client *c)
{
    uint64_t ms = (uint64_t)c->cfg->poll_ms * OBSERVE_FALLBACK_FACTOR;
    uint32_t cap = c->cfg->poll_ms > OBSERVE_MAX_AGE_MS ? c->cfg->poll_ms : OBSERVE_MAX_AGE_MS;
    return ms > cap ? cap : (uint32_t)ms;
}

static void log_push_mode(edge_client *c)
{
    int pushed = fedge_edge_link_observing(c->link);
    if (pushed == c->pushed_logged)
        return;
    c->pushed_logged = pushed;
    if (pushed)
        FEDGE_INFO("GET /round: observing (the server pushes changes; fallback poll every %u ms)",
                   observe_fallback_ms(c));
    else if (c->observe_off)
        FEDGE_INFO("GET /round: polling every %u ms", c->cfg->poll_ms);
    else
        FEDGE_INFO("GET /round: the server does not push (no Observe); polling every %u ms",
                   c->cfg->poll_ms);
}

/* GET /round (registering Observe unless observe_off) and parse it. once:
 * a single attempt, no retries (an edge with a finished marker that has not
 * reached the aggregator yet in this process). */
static int poll_round(edge_client *c, fedge_round_info *ri, unsigned *bad_replies, int once)
{
    unsigned attempts;
    fedge_edge_request req = {
        .method = FEDGE_EDGE_GET,
        .path = "round",
        .observe = !c->observe_off,
    };
    c->round_end_ms = 0;
    int rc;
    if (once) {
        req.timeout_ms = c->cfg->timeout_ms;
        req.handshake_timeout_ms = c->cfg->timeout_ms;
        rc = fedge_edge_link_request(c->link, &req, &c->reply, c->stop);
    } else {
        rc = request_with_retry(c, &req, 0, 0, "GET /round", &attempts);
    }
    if (rc != FEDGE_OK)
        return rc;
    if (req.observe && c->reply.code / 100 == 4) {
        char code[8];
        code_text(c->reply.code, code);
        FEDGE_WARN("GET /round with Observe answered %s; polling without Observe from now on", code);
        c->observe_off = 1;
        return poll_round(c, ri, bad_replies, once);
    }
    c->polled_ms = fedge_edge_link_now_ms();
    log_rtt(c);
    log_push_mode(c);
    return read_round(c, "GET /round", ri, bad_replies);
}

/* Until /round may have changed: a notification (*pushed = 1, *ri filled),
 * or, while observing, the fallback interval without one,
 * or the observation's end; without an observation, --poll-ms. */
static int wait_round(edge_client *c, fedge_round_info *ri, int *pushed, unsigned *bad_replies)
{
    const fedge_edge_config *cfg = c->cfg;
    *pushed = 0;
    if (!fedge_edge_link_observing(c->link))
        return fedge_edge_link_sleep(c->link, cfg->poll_ms, c->stop);
    int got = 0;
    int rc = fedge_edge_link_observe_wait(c->link, observe_fallback_ms(c), &c->reply, &got, c->stop);
    if (rc != FEDGE_OK || !got) {
        if (rc == FEDGE_OK && !fedge_edge_link_observing(c->link))
            FEDGE_DEBUG("GET /round: the observation ended; polling to register again");
        return rc;
    }
    c->polled_ms = c->reply.at_ms;
    if (c->reply.code == 205 && c->reply.body_total > c->reply.body_len) {
        /* a notification carries one block of a longer body (Block2 M=1,
         * RFC 7959 section 2.6): the body is fetched with a GET */
        FEDGE_DEBUG("/round notification: the body is longer than one message; fetching it with GET");
        return FEDGE_OK;
    }
    if (read_round(c, "/round notification", ri, bad_replies) == FEDGE_OK)
        *pushed = 1;
    return FEDGE_OK;
}

/* The finished marker follows what the aggregator reports: a new run id
 * clears it (so does the same run going on: its rounds were raised),
 * state=finished writes it. */
static void track_finished(edge_client *c, const fedge_round_info *ri)
{
    if (!c->finished_path || !ri->has_run)
        return;
    int same = c->marker && memcmp(c->marker_run, ri->run_id, FEDGE_RUN_ID_LEN) == 0;
    if (c->marker && (!same || ri->state != FEDGE_ROUND_FINISHED)) {
        int rc = fedge_finished_marker_clear(c->finished_path);
        if (rc != FEDGE_OK)
            FEDGE_WARN("cannot remove %s: %s", c->finished_path, fedge_strerror(rc));
        else
            FEDGE_INFO("%s: %s removed", same ? "the run goes on" : "a new run", c->finished_path);
        c->marker = 0;
    }
    if (ri->state == FEDGE_ROUND_FINISHED && !c->marker) {
        int rc = fedge_finished_marker_write(c->finished_path, ri->run_id);
        if (rc != FEDGE_OK) {
            FEDGE_WARN("cannot write %s: %s", c->finished_path, fedge_strerror(rc));
            return;
        }
        c->marker = 1;
        memcpy(c->marker_run, ri->run_id, FEDGE_RUN_ID_LEN);
    }
}

int fedge_edge_run(const fedge_edge_config *cfg, const volatile sig_atomic_t *stop)
{
    return fedge_edge_run_device(cfg, NULL, stop);
}

int fedge_edge_run_device(const fedge_edge_config *cfg, const fedge_edge_device *dev,
                          const volatile sig_atomic_t *stop)
{
    edge_client *c = calloc(1, sizeof *c);
    int ret = FEDGE_OK;
    unsigned bad_replies = 0;
    if (!c)
        return FEDGE_ERR_NOMEM;
    c->cfg = cfg;
    c->dev = dev;
    c->stop = stop;
    c->backoff = fedge_backoff_default();
    c->observe_off = cfg->no_observe;
    c->pushed_logged = -1;
    fedge_edge_trainer_init(&c->trainer);
    /* Jitter must differ between devices and restarts; nothing else uses it. */
    uint8_t idh[FEDGE_HASH_LEN];
    uint64_t mix = fedge_edge_now_us() ^ ((uint64_t)getpid() << 32);
    if (fedge_sha256(cfg->id, strlen(cfg->id), idh) == FEDGE_OK)
        for (int i = 0; i < 8; i++)
            mix ^= (uint64_t)idh[i] << (8 * i);
    fedge_rng_seed(&c->jitter, mix);

    CHK(setup(c));
    fedge_round_info ri;
    int pushed = 0;
    for (;;) {
        if (stop && *stop)
            break;
        /* with a finished marker, until the aggregator is heard: one attempt */
        int marked = c->marker && !c->heard && cfg->exit_when_finished;
        if (pushed)
            pushed = 0; /* ri holds the notification */
        else
            ret = poll_round(c, &ri, &bad_replies, marked);
        if (marked && (ret == FEDGE_ERR_TIMEOUT || ret == FEDGE_ERR_IO)) {
            char hex[2 * FEDGE_RUN_ID_LEN + 1];
            fedge_hex_encode(c->marker_run, FEDGE_RUN_ID_LEN, hex);
            FEDGE_INFO("the aggregator is unreachable (%s) and run %s finished (%s); exiting",
                       fedge_edge_link_last_error(c->link), hex, c->finished_path);
            ret = FEDGE_OK;
            break;
        }
        if (ret == FEDGE_ERR_PROTO) {
            if (cfg->max_retries >= 0 && bad_replies > (unsigned)cfg->max_retries) {
                FEDGE_ERROR("GET /round: %u unusable replies in a row; giving up", bad_replies);
                goto cleanup;
            }
            ret = fedge_edge_link_sleep(c->link, cfg->poll_ms, stop);
            if (ret != FEDGE_OK)
                break;
            continue;
        }
        if (ret != FEDGE_OK) {
            if (ret != FEDGE_ERR_EDGE_STOPPED)
                FEDGE_ERROR("aggregator at %s:%u unreachable or refusing; stopping", cfg->host,
                            (unsigned)cfg->port);
            break;
        }
        track_finished(c, &ri);
        follow_run(c, &ri);
        if (ri.state == FEDGE_ROUND_FINISHED && cfg->exit_when_finished) {
            FEDGE_INFO("aggregator reports the run finished; %u rounds taken part in",
                       c->rounds_taken);
            break;
        }
        int wanted = ri.state == FEDGE_ROUND_OPEN && ri.selected &&
                     !(c->have_done_round && c->done_round == ri.round);
        if (!wanted) {
            FEDGE_DEBUG("round %u: state=%s selected=%d; waiting", ri.round,
                        fedge_round_state_name(ri.state), ri.selected);
            ret = wait_round(c, &ri, &pushed, &bad_replies);
            if (ret != FEDGE_OK)
                break;
            continue;
        }
        FEDGE_DEBUG("round %u: selected (deadline %lld ms, %s, %d epochs, lr %g, batch %d)",
                    ri.round, (long long)ri.deadline_ms, ri.spec_text, ri.epochs,
                    (double)ri.lr, ri.batch);
        round_result result;
        ret = take_part(c, &ri, &result);
        if (ret != FEDGE_OK)
            break;
        if (result == ROUND_REPOLL) {
            /* The round moved on between /round and /model (or the server
             * misbehaves): wait one poll interval rather than spin. */
            ret = fedge_edge_link_sleep(c->link, cfg->poll_ms, stop);
            if (ret != FEDGE_OK)
                break;
            continue;
        }
        c->have_done_round = 1;
        c->done_round = ri.round;
        if (result == ROUND_DONE) {
            c->rounds_taken++;
            if (cfg->max_rounds && c->rounds_taken >= cfg->max_rounds) {
                FEDGE_INFO("took part in %u rounds (--max-rounds); stopping", c->rounds_taken);
                break;
            }
        }
        /* observing: what changed meanwhile was pushed (or is, later) */
        if (fedge_edge_link_observing(c->link)) {
            ret = wait_round(c, &ri, &pushed, &bad_replies);
            if (ret != FEDGE_OK)
                break;
        }
    }
    if (ret == FEDGE_ERR_EDGE_STOPPED || (stop && *stop)) {
        FEDGE_INFO("stopping on signal");
        ret = FEDGE_OK;
    }
cleanup:
    teardown(c);
    free(c);
    return ret;
}
