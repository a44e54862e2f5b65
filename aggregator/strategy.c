/* strategy.c — the strategy's description and persisted state (strategy.h). */
#include "strategy.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    if (!needs_state(a))
        goto cleanup;
    CHK(fedge_store_prepare(a->db, "SELECT strategy, state, sha256, round FROM strategy_state WHERE version=?", &st));
    sqlite3_bind_text(st, 1, a->version_hex, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        if (a->model_round > 0) {
            snprintf(detail, sizeof detail,
                     "no saved strategy state for model %.16s (round %u): %.200s starts fresh", a->version_hex,
                     a->model_round, a->strategy);
            sqlite3_finalize(st);
            st = NULL;
            CHK(reset_event(a, detail));
        }
    } else if (rc == SQLITE_ROW) {
        const uint8_t *blob = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        uint8_t h[FEDGE_HASH_LEN];
        char hex[FEDGE_HASH_HEX_LEN], why[320];
        CHK(fedge_sha256(blob, len, h));
        fedge_hash_to_hex(h, hex);
        const char *want = (const char *)sqlite3_column_text(st, 2);
        if (!want || strcmp(hex, want) != 0) {
            snprintf(err, errlen, "strategy_state of model %.16s does not match its sha256: the log was altered",
                     a->version_hex);
            FAIL(FEDGE_ERR_STRATEGY_STATE);
        }
        ret = fedge_server_opt_load(&a->opt, CONTROL_NAMES, &a->control, a->cfg.scaffold ? 1 : 0, blob, len,
                                    why, sizeof why);
        if (ret == FEDGE_ERR_STRATEGY_STATE) {
            snprintf(detail, sizeof detail, "strategy state of model %.16s (saved by %.80s) not used: %.160s; %.160s starts "
                     "fresh", a->version_hex, (const char *)sqlite3_column_text(st, 0), why, a->strategy);
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
    CHK(fedge_store_prepare(a->db, "DELETE FROM strategy_state WHERE version<>?", &st));
    sqlite3_bind_text(st, 1, a->version_hex, -1, SQLITE_STATIC);
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
cleanup:
    sqlite3_finalize(st);
    return ret;
}
