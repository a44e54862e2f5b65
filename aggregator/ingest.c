/* ingest.c — open, validate, admit and commit one update (ingest.h). */
#include "ingest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "combine.h"
#include "common.h"
#include "governance.h"
#include "log.h"
#include "policy.h"
#include "relay.h"
#include "scheduler.h"
#include "store.h"
#include "strategy.h"
#include "update.h"

static void reply(int *code, char *msg, size_t msglen, int c, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void reply(int *code, char *msg, size_t msglen, int c, const char *fmt, ...)
{
    va_list ap;
    *code = c;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
}

/* Maps a validation error of the sealed update to a CoAP code. */
static int code_for(int err)
{
    switch (err) {
    case FEDGE_ERR_ENV_KEY_MISMATCH:
    case FEDGE_ERR_ENV_AUTH:
        return 401;
    case FEDGE_ERR_ENV_REPLAY:
    case FEDGE_ERR_ENV_RUN:
    case FEDGE_ERR_DELTA_ROUND:
    case FEDGE_ERR_DELTA_BASE:
        return 409;
    case FEDGE_ERR_ENV_OVERSIZED:
        return 413;
    default:
        return 400;
    }
}

/* devices.last_counter and devices.status of device index d */
static int device_row(fedge_aggregator *a, int d, uint64_t *last_counter, char *status, size_t status_len)
{
    sqlite3_stmt *st = NULL;
    int ret;
    CHK(fedge_store_cached(a->db, "SELECT last_counter, status FROM devices WHERE id=?", &st));
    sqlite3_bind_text(st, 1, a->keys.devices[d].id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW)
        FAIL(FEDGE_ERR_NOT_FOUND);
    *last_counter = (uint64_t)sqlite3_column_int64(st, 0);
    snprintf(status, status_len, "%s", (const char *)sqlite3_column_text(st, 1));
cleanup:
    fedge_store_done(st);
    return ret;
}

int fedge_ingest_snapshot_take(fedge_aggregator *a, int d, fedge_ingest_snapshot *snap)
{
    char status[16];
    int ret;
    memset(snap, 0, sizeof *snap);
    CHK(device_row(a, d, &snap->last_counter, status, sizeof status));
    snap->key = a->dev_keys[d];
    snap->model_id = a->model_id;
    snap->n_params = a->model.n_params;
    snap->scaffold = a->cfg.scaffold != 0;
    snap->round = a->round;
    snap->round_window = fedge_gov_round_window(a);
    snap->max_len = a->max_update_bytes;
    snap->run_id = a->run_id;
cleanup:
    return ret;
}

static int scratch_reserve(fedge_ingest_scratch *w, size_t n)
{
    if (n <= w->cap)
        return FEDGE_OK;
    float *v = malloc(n * sizeof *v);
    if (!v)
        return FEDGE_ERR_NOMEM;
    free(w->v);
    w->v = v;
    w->cap = n;
    return FEDGE_OK;
}

void fedge_ingest_scratch_free(fedge_ingest_scratch *w)
{
    if (!w)
        return;
    free(w->v);
    w->v = NULL;
    w->cap = 0;
}

/* own NULL: the frame gets a decrypted copy and a delta buffer of its own;
 * else body is the frame's (f->owned), opened in place */
static int open_frame(const fedge_ingest_snapshot *snap, const uint8_t *body, size_t len, uint8_t *own,
                      fedge_ingest_frame *f)
{
    fedge_envelope_view view;
    int ret = FEDGE_OK;
    memset(f, 0, sizeof *f);
    f->owned = own;
    f->len = len;
    if (len > snap->max_len) {
        f->oversized = 1;
        return FEDGE_OK;
    }
    f->parse_status = fedge_envelope_parse(body, len, &view);
    if (f->parse_status != FEDGE_OK)
        return FEDGE_OK;
    f->frame_counter = view.counter;
    CHK(fedge_sha256(body, len, f->sealed_sha256));
    /* The form a SCAFFOLD round takes (the model delta and the
     * control-variate delta in one encoding) or any other round (the model
     * delta alone) is read before the frame is opened. */
    if (view.aad_len >= FEDGE_DELTA_HEADER_LEN && fedge_delta_parse_header(view.aad, &f->peek) == FEDGE_OK) {
        f->have_header = 1;
        int control = (f->peek.flags & FEDGE_DELTA_FLAG_CONTROL) != 0;
        if (snap->scaffold && (!control || f->peek.n_elems != 2 * snap->n_params))
            f->form = FEDGE_INGEST_FORM_NEEDS_CONTROL;
        else if (!snap->scaffold && control)
            f->form = FEDGE_INGEST_FORM_NO_CONTROL;
    }
    if (f->form != FEDGE_INGEST_FORM_OK)
        return FEDGE_OK;
    size_t n_elems = snap->n_params * (snap->scaffold ? 2 : 1);
    float *delta = NULL;
    if (!own) { /* in place, the norm is read from the payload: no delta */
        f->plain = malloc(len);
        if (!f->plain)
            FAIL(FEDGE_ERR_NOMEM);
        delta = f->delta = malloc(n_elems * sizeof(float));
        if (!delta)
            FAIL(FEDGE_ERR_NOMEM);
    }
    fedge_update_expect exp = {
        .model_id = snap->model_id,
        .n_elems = (uint32_t)n_elems,
        .round = snap->round,
        .round_window = snap->round_window,
        .last_counter = snap->last_counter,
        .max_len = snap->max_len,
        .run_id = snap->run_id,
    };
    f->opened = 1;
    f->encoded_len = FEDGE_DELTA_HEADER_LEN + view.ct_len;
    if (own) {
        size_t off = 0;
        f->open_status = fedge_update_open_inplace_norm(&snap->key, own, len, &exp, snap->n_params, &off,
                                                        &f->header, &f->counter, &f->norm, &f->metrics);
        if (f->open_status == FEDGE_OK)
            f->plain = own + off;
    } else {
        f->open_status = fedge_update_open_metrics(&snap->key, body, len, &exp, f->plain, &f->header, &f->counter,
                                                   delta, &f->metrics);
        if (f->open_status == FEDGE_OK)
            f->norm = fedge_l2_norm(delta, snap->n_params);
    }
    if (f->open_status == FEDGE_OK)
        CHK(fedge_sha256(f->plain, f->encoded_len, f->plain_sha256));
cleanup:
    if (ret != FEDGE_OK)
        fedge_ingest_frame_free(f);
    return ret;
}

int fedge_ingest_open(const fedge_ingest_snapshot *snap, const uint8_t *body, size_t len, fedge_ingest_frame *f)
{
    return open_frame(snap, body, len, NULL, f);
}

int fedge_ingest_open_inplace(const fedge_ingest_snapshot *snap, uint8_t *body, size_t len, fedge_ingest_frame *f)
{
    if (!body) {
        memset(f, 0, sizeof *f);
        return FEDGE_ERR_INVALID_ARG;
    }
    return open_frame(snap, body, len, body, f);
}

void fedge_ingest_frame_free(fedge_ingest_frame *f)
{
    if (f->owned) {
        memset(f->owned, 0, f->len);
        free(f->owned);
    } else if (f->plain) {
        memset(f->plain, 0, f->len);
        free(f->plain);
    }
    free(f->delta);
    f->owned = NULL;
    f->plain = NULL;
    f->delta = NULL;
}

/* A frame whose counter is not fresh may be a resend of one already
 * decided: the same sealed bytes from the same device. Its stored decision is
 * the true answer, whatever state the aggregator is in now (the round may
 * have closed, the run finished, the daemon restarted). *found = 0 when no
 * stored update has these bytes. */
static int stored_decision(fedge_aggregator *a, const char *device, uint64_t counter,
                           const uint8_t sealed_hash[FEDGE_HASH_LEN], int *found, int *accepted,
                           uint32_t *round, char *reason, size_t reason_len)
{
    sqlite3_stmt *st = NULL;
    int ret;
    *found = 0;
    CHK(fedge_store_prepare(a->db, "SELECT round, decision, rule, reason FROM updates"
                                   " WHERE device=? AND counter=? AND sealed_sha256=?"
                                   " ORDER BY id DESC LIMIT 1", &st));
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)counter);
    sqlite3_bind_blob(st, 3, sealed_hash, FEDGE_HASH_LEN, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *found = 1;
        *round = (uint32_t)sqlite3_column_int64(st, 0);
        *accepted = strcmp((const char *)sqlite3_column_text(st, 1), "rejected") != 0;
        snprintf(reason, reason_len, "%s: %s", (const char *)sqlite3_column_text(st, 2),
                 (const char *)sqlite3_column_text(st, 3));
    } else if (rc != SQLITE_DONE) {
        FAIL(fedge_store_status(rc));
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* w: where a frame opened without its own delta is decoded again */
static int commit_one(fedge_aggregator *a, int d, const char *device, const fedge_ingest_snapshot *snap,
                      fedge_ingest_frame *f, fedge_ingest_scratch *w, int *code, char *msg, size_t msglen)
{
    uint64_t last_counter = 0;
    char status[16];
    int ret = FEDGE_OK;
    if (a->keys.devices[d].removed) { /* taken out by a keys reload since the snapshot */
        reply(code, msg, msglen, 403, "unknown device");
        goto cleanup;
    }
    if (f->oversized) {
        reply(code, msg, msglen, 413, "update of %zu bytes exceeds the limit of %zu", f->len, snap->max_len);
        goto cleanup;
    }
    if (f->parse_status != FEDGE_OK) {
        reply(code, msg, msglen, code_for(f->parse_status), "malformed update: %s", fedge_strerror(f->parse_status));
        goto cleanup;
    }
    /* read again: the frame may have been opened against an older
     * snapshot, and the device's status may have changed since */
    CHK(device_row(a, d, &last_counter, status, sizeof status));
    if (f->frame_counter <= last_counter) {
        int found = 0, was_accepted = 0;
        uint32_t in_round = 0;
        char why[FEDGE_POLICY_REASON_MAX + FEDGE_POLICY_RULE_MAX + 4];
        CHK(stored_decision(a, device, f->frame_counter, f->sealed_sha256, &found, &was_accepted, &in_round, why,
                            sizeof why));
        if (found && was_accepted) {
            reply(code, msg, msglen, 204, "accepted (duplicate of the update for round %u)", in_round);
            goto cleanup;
        }
        if (found) {
            reply(code, msg, msglen, 403, "rejected (duplicate of the update for round %u): %s", in_round, why);
            goto cleanup;
        }
    }
    int admitted = 0;
    CHK(a->sched->admit(a, d, device, f->have_header ? f->peek.round : a->round, &admitted, code, msg, msglen));
    if (!admitted)
        goto cleanup;
    if (f->form == FEDGE_INGEST_FORM_NEEDS_CONTROL) {
        reply(code, msg, msglen, 400, "this run is SCAFFOLD: an update carries the model delta and the"
              " control-variate delta (flags 0x02, n_elems = 2 x %zu)", snap->n_params);
        goto cleanup;
    }
    if (f->form == FEDGE_INGEST_FORM_NO_CONTROL) {
        reply(code, msg, msglen, 400, "this run is not SCAFFOLD: an update carries the model delta alone"
              " (no control-variate flag, n_elems = %zu)", snap->n_params);
        goto cleanup;
    }
    /* valid against the snapshot; against now? (the same in the owner's
     * own path; a frame opened earlier may have gone stale) */
    int vr = f->open_status;
    uint32_t window = fedge_gov_round_window(a);
    if (vr == FEDGE_OK && f->counter <= last_counter)
        vr = FEDGE_ERR_ENV_REPLAY;
    else if (vr == FEDGE_OK && (f->header.round > a->round || a->round - f->header.round > window))
        vr = FEDGE_ERR_DELTA_ROUND;
    if (vr != FEDGE_OK) {
        if (vr == FEDGE_ERR_ENV_RUN)
            reply(code, msg, msglen, 409, "%s: this is run %.8s", fedge_strerror(vr), a->run_id_hex);
        else
            reply(code, msg, msglen, code_for(vr), "%s", fedge_strerror(vr));
        FEDGE_INFO("update from %s refused: %s", device, fedge_strerror(vr));
        goto cleanup;
    }

    /* The partial-sum form is a relay's alone, its weight bounded by the
     * relays' own limit (update.max_samples bounds the leaves). */
    if (f->header.flags & FEDGE_DELTA_FLAG_PARTIAL) {
        if (!fedge_relay_listed(&a->cfg, device)) {
            reply(code, msg, msglen, 403, "partial sum refused: %s is not a relay of this aggregator (relays)",
                  device);
            FEDGE_WARN("update from %s refused: a partial sum from a device not listed in relays", device);
            goto cleanup;
        }
        if (f->header.n_samples < 1 || (long)f->header.n_samples > a->cfg.relay_max_samples) {
            reply(code, msg, msglen, 403, "partial sum refused: stated sample count %u is outside 1..%ld"
                  " (relay_max_samples)", f->header.n_samples, a->cfg.relay_max_samples);
            FEDGE_WARN("update from relay %s refused: %u samples (relay_max_samples %ld)", device,
                       f->header.n_samples, a->cfg.relay_max_samples);
            goto cleanup;
        }
    }

    /* Authenticated from here on: the decision is logged with its reason. */
    float *delta = f->delta;
    if (!delta) {
        CHK(scratch_reserve(w, f->header.n_elems));
        if (snap->scaffold && a->control) {
            /* the same bytes fedge_update_open decoded and checked */
            CHK(fedge_delta_decode_payload(&f->header, f->plain + FEDGE_DELTA_HEADER_LEN,
                                           f->encoded_len - FEDGE_DELTA_HEADER_LEN, w->v));
            delta = w->v;
        }
    }
    char control_why[FEDGE_POLICY_REASON_MAX];
    int control_ok = 1;
    if (snap->scaffold && a->control)
        CHK(fedge_strategy_check_control(a, &f->header, delta, &control_ok, control_why, sizeof control_why));
    fedge_gov_update_in in = {
        .device_index = d,
        .device = device,
        .status = status,
        .header = &f->header,
        .delta = delta,
        .n_params = snap->n_params,
        .counter = f->counter,
        .bytes = f->len,
        .encoded = f->plain,
        .encoded_len = f->encoded_len,
        .sealed_sha256 = f->sealed_sha256,
        .control_refusal = control_ok ? NULL : control_why,
        .norm = &f->norm,
        .metrics = &f->metrics,
        .encoded_sha256 = f->plain_sha256,
        .decode_into = delta ? NULL : w->v,
    };
    int accepted = 0;
    char reason[FEDGE_POLICY_REASON_MAX + 64];
    CHK(fedge_gov_admit_update(a, &in, &accepted, reason, sizeof reason));
    a->sched->counted(a, d, accepted, f->len);
    if (accepted) {
        reply(code, msg, msglen, 204, "%s", reason);
        FEDGE_INFO("round %u: %s %s (%u samples, %s, %zu bytes)", a->round, device, reason, f->header.n_samples,
                   fedge_encoding_name((fedge_encoding)f->header.encoding), f->len);
    } else {
        reply(code, msg, msglen, 403, "%s", reason);
        FEDGE_INFO("round %u: %s rejected: %s", a->round, device, reason);
    }
cleanup:
    return ret;
}

int fedge_ingest_commit(fedge_aggregator *a, int d, const char *device, const fedge_ingest_snapshot *snap,
                        fedge_ingest_frame *f, int *code, char *msg, size_t msglen)
{
    fedge_ingest_scratch w = {0};
    int ret = commit_one(a, d, device, snap, f, &w, code, msg, msglen);
    fedge_ingest_scratch_free(&w);
    return ret;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int fedge_ingest_commit_group(fedge_aggregator *a, fedge_ingest_item *items, size_t n,
                              fedge_ingest_group_times *times)
{
    fedge_ingest_scratch w = {0};
    size_t done = 0;
    size_t n_accepted = a->n_accepted, n_rejected = a->n_rejected, in_flight = a->in_flight;
    uint64_t bytes = a->bytes_received;
    double t0 = mono_s(), t1 = t0;
    int ret;
    if (n == 0)
        return FEDGE_OK;
    CHK(fedge_store_begin(a->db));
    a->ingest_group_tx = 1;
    for (; done < n; done++) {
        fedge_ingest_item *it = &items[done];
        it->undo_submitted = a->submitted[it->device];
        it->undo_adm_step = a->adm_step ? a->adm_step[it->device] : 0;
        CHK(commit_one(a, it->device, a->keys.devices[it->device].id, it->snap, it->frame, &w, &it->code,
                       it->msg, sizeof it->msg));
    }
    t1 = mono_s();
    CHK(fedge_store_commit(a->db));
cleanup:
    a->ingest_group_tx = 0;
    if (ret != FEDGE_OK) {
        fedge_store_rollback(a->db);
        /* the item that failed has saved its undo too */
        for (size_t i = done < n ? done + 1 : n; i-- > 0;) {
            a->submitted[items[i].device] = items[i].undo_submitted;
            if (a->adm_step)
                a->adm_step[items[i].device] = items[i].undo_adm_step;
        }
        a->n_accepted = n_accepted;
        a->n_rejected = n_rejected;
        a->in_flight = in_flight;
        a->bytes_received = bytes;
        for (size_t i = 0; i < n; i++) {
            items[i].code = 503;
            snprintf(items[i].msg, sizeof items[i].msg, "%s; retry later",
                     ret == FEDGE_ERR_BUSY ? "database busy" : "aggregator error");
        }
        FEDGE_ERROR("group commit of %zu updates failed (%s): none stored, all asked to retry", n,
                    fedge_strerror(ret));
    }
    fedge_ingest_scratch_free(&w);
    if (times) {
        double t2 = mono_s();
        times->work_s = (ret == FEDGE_OK ? t1 : t2) - t0;
        times->commit_s = ret == FEDGE_OK ? t2 - t1 : 0;
    }
    return ret;
}
