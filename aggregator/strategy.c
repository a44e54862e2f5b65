/* strategy.c — the strategy's description and persisted state (strategy.h). */
#include "strategy.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "combine.h"
#include "common.h"
#include "governance.h"
#include "log.h"
#include "modelfile.h"
#include "policy.h"
#include "store.h"

static const char *const CONTROL_NAMES[] = {"control"};

static int append(char *buf, size_t cap, size_t *off, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int append(char *buf, size_t cap, size_t *off, const char *fmt, ...)
{
    va_list ap;
    if (*off >= cap)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    if (*off > 0) {
        buf[(*off)++] = '+';
        buf[*off] = '\0';
    }
    va_start(ap, fmt);
    int n = vsnprintf(buf + *off, cap - *off, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *off)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    *off += (size_t)n;
    return FEDGE_OK;
}

int fedge_strategy_describe(const fedge_agg_config *c, int dp, char *buf, size_t cap)
{
    char opt[160];
    size_t off = 0;
    int ret;
    fedge_server_opt_params p = {.lr = c->server_lr, .momentum = c->server_momentum, .beta1 = c->server_beta1,
                                 .beta2 = c->server_beta2, .tau = c->server_tau};
    if (cap == 0)
        return FEDGE_ERR_BUFFER_TOO_SMALL;
    buf[0] = '\0';
    snprintf(p.name, sizeof p.name, "%s", c->server_optimizer);
    CHK(fedge_server_opt_describe(&p, opt, sizeof opt));
    if (strcmp(c->aggregation, "median") == 0)
        CHK(append(buf, cap, &off, "median"));
    else if (strcmp(c->aggregation, "trimmed_mean") == 0)
        CHK(append(buf, cap, &off, "trimmed_mean(beta=%g)", c->trim_beta));
    else if (strcmp(c->aggregation, "krum") == 0 || strcmp(c->aggregation, "bulyan") == 0)
        CHK(append(buf, cap, &off, "%s(f=%ld)", c->aggregation, c->byzantine_f));
    else if (strcmp(c->aggregation, "multikrum") == 0)
        CHK(append(buf, cap, &off, "multikrum(f=%ld,m=%ld)", c->byzantine_f, c->multikrum_m));
    else if (strcmp(c->aggregation, "mean") != 0)
        CHK(append(buf, cap, &off, "%s", c->aggregation));
    if (c->fedprox_mu > 0)
        CHK(append(buf, cap, &off, "fedprox(mu=%g)", c->fedprox_mu));
    if (c->scaffold)
        CHK(append(buf, cap, &off, "scaffold"));
    if (dp)
        CHK(append(buf, cap, &off, "dp-%s", opt));
    else if (off == 0 || strcmp(opt, "fedavg") != 0)
        CHK(append(buf, cap, &off, "%s", opt));
cleanup:
    return ret;
}

static int needs_state(const fedge_aggregator *a)
{
    return a->opt.impl->n_vectors > 0 || a->cfg.scaffold;
}

/* c as a model file of the model's spec: its bytes and version (hash). */
static int publish_control(fedge_aggregator *a)
{
    fedge_model m = {.spec = a->model.spec, .n_params = a->model.n_params, .params = a->control};
    uint8_t *blob = NULL;
    size_t len = 0;
    uint8_t version[FEDGE_HASH_LEN];
    int ret = fedge_model_serialize(&m, &blob, &len, version);
    if (ret != FEDGE_OK)
        return ret;
    free(a->control_blob);
    a->control_blob = blob;
    a->control_blob_len = len;
    memcpy(a->control_version, version, FEDGE_HASH_LEN);
    fedge_hash_to_hex(version, a->control_version_hex);
    return FEDGE_OK;
}

void fedge_strategy_name(fedge_aggregator *a)
{
    int dp = fedge_policy_dp_enabled(a->policy);
    if (fedge_strategy_describe(&a->cfg, dp, a->strategy, sizeof a->strategy) != FEDGE_OK)
        snprintf(a->strategy, sizeof a->strategy, "%s", dp ? "dp-fedavg" : "fedavg");
}

static int state_params(const fedge_agg_config *c, fedge_server_opt_params *p)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", c->server_optimizer);
    p->lr = c->server_lr;
    p->momentum = c->server_momentum;
    p->beta1 = c->server_beta1;
    p->beta2 = c->server_beta2;
    p->tau = c->server_tau;
    return FEDGE_OK;
}

static int reset_event(fedge_aggregator *a, const char *detail)
{
    int ret;
    FEDGE_WARN("%s", detail);
    CHK(fedge_store_begin(a->db));
    ret = fedge_gov_event(a, 0, NULL, "strategy_state_reset", "strategy", detail);
    if (ret == FEDGE_OK)
        ret = fedge_store_commit(a->db);
cleanup:
    if (ret != FEDGE_OK)
        fedge_store_rollback(a->db);
    return ret;
}

int fedge_strategy_init(fedge_aggregator *a, char *err, size_t errlen)
{
    fedge_server_opt_params p;
    sqlite3_stmt *st = NULL;
    char detail[1024];
    size_t n = a->model.n_params;
    int ret;
    state_params(&a->cfg, &p);
    CHK(fedge_server_opt_init(&a->opt, &p, n));
    if (a->cfg.scaffold) {
        a->control = calloc(n, sizeof(float));
        a->control_next = calloc(n, sizeof(float));
        if (!a->control || !a->control_next)
            FAIL(FEDGE_ERR_NOMEM);
    }
    if (!needs_state(a)) {
        /* a stateless strategy now: a saved state (SCAFFOLD's c, an
         * optimiser's vectors) is dropped, and that is said */
        int have = 0;
        int64_t n_rows = 0;
        CHK(fedge_store_query_int64(a->db, &n_rows, &have, "SELECT count(*) FROM strategy_state WHERE version=?", "t",
                                    a->version_hex));
        if (n_rows > 0) {
            snprintf(detail, sizeof detail, "strategy state of model %.16s not used: %.200s keeps none",
                     a->version_hex, a->strategy);
            CHK(reset_event(a, detail));
            CHK(fedge_store_exec(a->db, "DELETE FROM strategy_state"));
        }
        goto cleanup;
    }
    CHK(fedge_store_prepare(a->db, "SELECT strategy, state, sha256, round FROM strategy_state WHERE version=?", &st));
    sqlite3_bind_text(st, 1, a->version_hex, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        if (a->model_round > 0) {
            snprintf(detail, sizeof detail,
                     "no saved strategy state for model %.16s (round %u): %.200s starts fresh%s", a->version_hex,
                     a->model_round, a->strategy, a->cfg.scaffold ? " (SCAFFOLD's c at zero)" : "");
            sqlite3_finalize(st);
            st = NULL;
            CHK(reset_event(a, detail));
        }
    } else if (rc == SQLITE_ROW) {
        const uint8_t *blob = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        char why[320];
        int ok = 0;
        CHK(fedge_audit_strategy_state_check(a->db, a->version_hex, blob, len,
                                             (const char *)sqlite3_column_text(st, 2), &ok, why, sizeof why));
        if (!ok) {
            snprintf(err, errlen, "%s: the log was altered", why);
            FAIL(FEDGE_ERR_STRATEGY_STATE);
        }
        ret = fedge_server_opt_load(&a->opt, CONTROL_NAMES, &a->control, a->cfg.scaffold ? 1 : 0, blob, len,
                                    why, sizeof why);
        if (ret == FEDGE_ERR_STRATEGY_STATE) {
            snprintf(detail, sizeof detail, "strategy state of model %.16s (saved by %.80s) not used: %.160s; %.160s starts "
                     "fresh%s", a->version_hex, (const char *)sqlite3_column_text(st, 0), why, a->strategy,
                     a->cfg.scaffold ? " (SCAFFOLD's c at zero)" : "");
            sqlite3_finalize(st);
            st = NULL;
            CHK(reset_event(a, detail));
        } else if (ret != FEDGE_OK) {
            goto cleanup;
        } else {
            FEDGE_INFO("strategy %s: state of model %.16s loaded (%llu steps)", a->strategy, a->version_hex,
                       (unsigned long long)a->opt.steps);
        }
    } else {
        FAIL(fedge_store_status(rc));
    }
    if (a->cfg.scaffold)
        CHK(publish_control(a));
cleanup:
    sqlite3_finalize(st);
    if (ret != FEDGE_OK && err[0] == '\0')
        snprintf(err, errlen, "strategy state: %s", fedge_strerror(ret));
    return ret;
}

void fedge_strategy_free(fedge_aggregator *a)
{
    fedge_server_opt_free(&a->opt);
    fedge_server_opt_free(&a->opt_next);
    free(a->control);
    free(a->control_next);
    free(a->control_blob);
    a->control = a->control_next = NULL;
    a->control_blob = NULL;
    a->has_next = 0;
}

int fedge_strategy_begin_step(fedge_aggregator *a)
{
    fedge_strategy_discard(a);
    int ret = fedge_server_opt_copy(&a->opt_next, &a->opt);
    if (ret != FEDGE_OK)
        return ret;
    /* the step sizes as configured now (the state does not depend on them) */
    fedge_server_opt_params p;
    state_params(&a->cfg, &p);
    if (strcmp(p.name, a->opt_next.p.name) == 0)
        a->opt_next.p = p;
    if (a->control)
        memcpy(a->control_next, a->control, a->model.n_params * sizeof(float));
    a->has_next = 1;
    return FEDGE_OK;
}

int fedge_strategy_save(fedge_aggregator *a, uint32_t round)
{
    sqlite3_stmt *st = NULL;
    uint8_t *blob = NULL, h[FEDGE_HASH_LEN];
    char hex[FEDGE_HASH_HEX_LEN], detail[512];
    size_t len = 0;
    int ret = FEDGE_OK;
    if (!a->has_next)
        return FEDGE_ERR_STATE;
    if (needs_state(a)) {
        size_t n_extra = a->cfg.scaffold ? 1 : 0;
        const float *extra[] = {a->control_next};
        size_t cap = fedge_server_opt_state_size(&a->opt_next, n_extra);
        blob = malloc(cap);
        if (!blob)
            FAIL(FEDGE_ERR_NOMEM);
        CHK(fedge_server_opt_save(&a->opt_next, CONTROL_NAMES, extra, n_extra, blob, cap, &len));
        CHK(fedge_sha256(blob, len, h));
        fedge_hash_to_hex(h, hex);
        CHK(fedge_store_prepare(a->db, "INSERT OR REPLACE INTO strategy_state(version, round, strategy, state, sha256)"
                                       " VALUES(?,?,?,?,?)", &st));
        sqlite3_bind_text(st, 1, a->version_hex, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, round);
        sqlite3_bind_text(st, 3, a->strategy, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 4, blob, (int)len, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, hex, -1, SQLITE_STATIC);
        ret = fedge_store_step_done(a->db, st);
        st = NULL;
        if (ret != FEDGE_OK)
            goto cleanup;
        snprintf(detail, sizeof detail, "model %s: %.256s state after %llu steps, %zu bytes, sha256 %s", a->version_hex,
                 a->strategy, (unsigned long long)a->opt_next.steps, len, hex);
        CHK(fedge_gov_event(a, round, NULL, "strategy_state", "strategy", detail));
    }
    /* SCAFFOLD keeps the c of every version a late update may be based on:
     * one per round of the window, and the newest */
    CHK(fedge_store_prepare(a->db, "DELETE FROM strategy_state WHERE version<>?1 AND round NOT IN"
                                   " (SELECT DISTINCT round FROM strategy_state ORDER BY round DESC LIMIT ?2)", &st));
    sqlite3_bind_text(st, 1, a->version_hex, -1, SQLITE_STATIC);
    /* (async: no round window; the staleness rule bounds the base's age) */
    uint32_t window = fedge_gov_async(a) ? fedge_policy_max_staleness(a->policy) : fedge_gov_round_window(a);
    sqlite3_bind_int64(st, 2, a->cfg.scaffold ? (sqlite3_int64)window + 1 : 0);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
cleanup:
    sqlite3_finalize(st);
    free(blob);
    return ret;
}

int fedge_strategy_commit(fedge_aggregator *a)
{
    if (!a->has_next)
        return FEDGE_OK;
    fedge_server_opt t = a->opt;
    a->opt = a->opt_next;
    a->opt_next = t;
    fedge_server_opt_free(&a->opt_next);
    a->has_next = 0;
    if (!a->control)
        return FEDGE_OK;
    float *c = a->control;
    a->control = a->control_next;
    a->control_next = c;
    return publish_control(a);
}

void fedge_strategy_discard(fedge_aggregator *a)
{
    fedge_server_opt_free(&a->opt_next);
    a->has_next = 0;
}

int fedge_strategy_carry(fedge_aggregator *a, const char *from, const char *to)
{
    sqlite3_stmt *st = NULL;
    int ret;
    if (!needs_state(a) || strcmp(from, to) == 0)
        return FEDGE_OK;
    CHK(fedge_store_prepare(a->db, "INSERT OR REPLACE INTO strategy_state(version, round, strategy, state, sha256)"
                                   " SELECT ?2, round, strategy, state, sha256 FROM strategy_state WHERE version=?1",
                            &st));
    sqlite3_bind_text(st, 1, from, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, to, -1, SQLITE_TRANSIENT);
    ret = fedge_store_step_done(a->db, st);
    st = NULL;
    if (ret != FEDGE_OK)
        goto cleanup;
    /* the carried row's own audited event, which the load checks it against */
    CHK(fedge_store_prepare(a->db, "SELECT round, sha256 FROM strategy_state WHERE version=?", &st));
    sqlite3_bind_text(st, 1, to, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW) {
        char detail[256];
        uint32_t round = (uint32_t)sqlite3_column_int64(st, 0);
        snprintf(detail, sizeof detail, "model %.64s: carried over from %.64s, sha256 %.64s", to, from,
                 (const char *)sqlite3_column_text(st, 1));
        sqlite3_finalize(st);
        st = NULL;
        CHK(fedge_gov_event(a, round, NULL, "strategy_state", "strategy", detail));
    }
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* Bound on |x − decoded| for coordinate i of a vector decoded from encoding
 * enc (int8: the block's scale, recovered from the block's largest decoded
 * magnitude, 127 steps; stochastic rounding errs by less than one step, and
 * the two halves' errors add up: honest edges were measured at 0.99 step). */
static double encoding_error(const fedge_delta_header *h, const float *v, size_t i, size_t n_elems,
                             const double *block_max)
{
    double x = fabs((double)v[i]);
    switch ((fedge_encoding)h->encoding) {
    case FEDGE_ENC_FP16:
        return x * 0x1p-10 + 0x1p-24;
    case FEDGE_ENC_BF16:
        return x * 0x1p-7 + 0x1p-133;
    case FEDGE_ENC_INT8:
        (void)n_elems;
        return 1.5 * block_max[i / h->block_size] / 127.0; /* margin: measured up to 0.99 step */
    default:
        return 0.0;
    }
}

/* A float parameter as the edge has it: the aggregator sends "%g" text. */
static float as_sent(double v)
{
    char text[32];
    snprintf(text, sizeof text, "%g", v);
    return strtof(text, NULL);
}

int fedge_scaffold_control_check(const fedge_delta_header *h, const float *delta, const float *c_base, size_t n,
                                 double lr, double momentum, long epochs, long batch, int *ok, char *why,
                                 size_t whylen)
{
    double *block_max = NULL;
    int ret = FEDGE_OK;
    *ok = 0;
    if (!h || !delta || !c_base || n == 0 || epochs < 1 || batch < 1 || !why || whylen == 0)
        return FEDGE_ERR_INVALID_ARG;
    if (h->encoding == FEDGE_ENC_INT8) {
        if (h->block_size == 0)
            return FEDGE_ERR_INVALID_ARG;
        size_t n_blocks = (2 * n + h->block_size - 1) / h->block_size;
        block_max = calloc(n_blocks, sizeof *block_max);
        if (!block_max)
            return FEDGE_ERR_NOMEM;
        for (size_t i = 0; i < 2 * n; i++) {
            double x = fabs((double)delta[i]);
            if (x > block_max[i / h->block_size])
                block_max[i / h->block_size] = x;
        }
    }
    /* the edge's arithmetic (trainer.c): float, its lr and momentum as sent */
    uint64_t per_epoch = h->n_samples / (uint64_t)batch + (h->n_samples % (uint64_t)batch != 0);
    float lr_f = as_sent(lr), mom_f = as_sent(momentum);
    float steps = (float)((uint64_t)epochs * per_epoch);
    double inv_step = (double)((1.0f - mom_f) / (steps * lr_f));
    if (per_epoch == 0 || !isfinite(inv_step) || !(inv_step > 0)) {
        snprintf(why, whylen, "SCAFFOLD control half: %u samples give no local step to check it against",
                 h->n_samples);
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        double y = delta[i], dc = delta[n + i], c = c_base[i];
        if (!isfinite(dc)) {
            snprintf(why, whylen, "SCAFFOLD control half is not finite at %zu", i);
            goto cleanup;
        }
        double expect = -y * inv_step - c;
        /* rounding: of each half in the encoding, of the edge's float
         * arithmetic, and of lr and momentum in their "%g" text */
        double tol = encoding_error(h, delta, i, 2 * n, block_max) * inv_step +
                     encoding_error(h, delta, n + i, 2 * n, block_max) +
                     1e-5 * fabs(y) * inv_step + 8 * FLT_EPSILON * (fabs(c) + fabs(dc)) + 1e-30;
        if (!(fabs(dc - expect) <= tol)) {
            snprintf(why, whylen,
                     "SCAFFOLD control half is not the one its model half implies: coordinate %zu is %.6g,"
                     " expected %.6g +- %.2g (-c - dy(1-momentum)/(K lr), K = %.0f local steps)",
                     i, dc, expect, tol, (double)steps);
            goto cleanup;
        }
    }
    *ok = 1;
cleanup:
    free(block_max);
    return ret;
}

/* c of model version hex from its kept strategy_state row: *found = 0 when
 * there is none or it cannot be read as this run's state. */
static int control_of_version(fedge_aggregator *a, const char *hex, float *c, int *found, char *why, size_t whylen)
{
    sqlite3_stmt *st = NULL;
    fedge_server_opt o;
    fedge_server_opt_params p;
    int ret;
    memset(&o, 0, sizeof o);
    *found = 0;
    CHK(fedge_store_prepare(a->db, "SELECT state, sha256 FROM strategy_state WHERE version=?", &st));
    sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        int64_t init = 0;
        int have = 0;
        sqlite3_finalize(st);
        st = NULL;
        CHK(fedge_store_query_int64(a->db, &init, &have, "SELECT count(*) FROM models WHERE version=? AND kind='init'",
                                    "t", hex));
        if (init > 0) { /* c starts at zero */
            memset(c, 0, a->model.n_params * sizeof *c);
            *found = 1;
        } else {
            snprintf(why, whylen, "the server control variate of base model %.16s is no longer kept", hex);
        }
        goto cleanup;
    }
    if (rc != SQLITE_ROW)
        FAIL(fedge_store_status(rc));
    const uint8_t *blob = sqlite3_column_blob(st, 0);
    size_t len = (size_t)sqlite3_column_bytes(st, 0);
    char reason[256];
    int intact = 0;
    CHK(fedge_audit_strategy_state_check(a->db, hex, blob, len, (const char *)sqlite3_column_text(st, 1), &intact,
                                         reason, sizeof reason));
    if (!intact) {
        snprintf(why, whylen, "the saved control variate of base model %.16s is not usable: %.160s", hex, reason);
        goto cleanup;
    }
    state_params(&a->cfg, &p);
    CHK(fedge_server_opt_init(&o, &p, a->model.n_params));
    ret = fedge_server_opt_load(&o, CONTROL_NAMES, &c, 1, blob, len, reason, sizeof reason);
    if (ret == FEDGE_ERR_STRATEGY_STATE) {
        ret = FEDGE_OK;
        snprintf(why, whylen, "the saved control variate of base model %.16s is not usable: %.160s", hex, reason);
        goto cleanup;
    }
    CHK(ret);
    *found = 1;
cleanup:
    sqlite3_finalize(st);
    fedge_server_opt_free(&o);
    return ret;
}

int fedge_strategy_check_control(fedge_aggregator *a, const fedge_delta_header *h, const float *delta, int *ok,
                                 char *why, size_t whylen)
{
    size_t n = a->model.n_params;
    float *c_old = NULL;
    const float *c_base = a->control;
    int ret = FEDGE_OK;
    *ok = 0;
    if (!a->control)
        return FEDGE_ERR_STATE;
    if (memcmp(h->base_version, a->version, FEDGE_HASH_LEN) != 0) {
        char hex[FEDGE_HASH_HEX_LEN];
        int found = 0;
        fedge_hash_to_hex(h->base_version, hex);
        c_old = malloc(n * sizeof *c_old);
        if (!c_old)
            FAIL(FEDGE_ERR_NOMEM);
        CHK(control_of_version(a, hex, c_old, &found, why, whylen));
        if (!found)
            goto cleanup;
        c_base = c_old;
    }
    double lr = a->cfg.lr * pow(a->cfg.lr_decay, h->round > 0 ? h->round - 1.0 : 0.0);
    CHK(fedge_scaffold_control_check(h, delta, c_base, n, lr, a->cfg.momentum, a->cfg.local_epochs, a->cfg.batch, ok,
                                     why, whylen));
cleanup:
    free(c_old);
    return ret;
}
