/* round_config.c — the round-shaping configuration as an audited event
 * (round_config.h). */
#include "round_config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "common.h"
#include "error.h"

int fedge_round_config_format(const fedge_agg_config *cfg, char *buf, size_t cap)
{
    if (!cfg || !buf)
        return FEDGE_ERR_INVALID_ARG;
    int n = snprintf(buf, cap,
                     FEDGE_ROUND_CONFIG_PREFIX "mode=%s min_updates=%ld buffer_k=%ld staleness=%s staleness_a=%.17g"
                                               " staleness_b=%.17g aggregation=%s",
                     cfg->mode, cfg->min_updates, cfg->async_buffer_k, cfg->async_staleness, cfg->async_staleness_a,
                     cfg->async_staleness_b, cfg->aggregation);
    return n < 0 || (size_t)n >= cap ? FEDGE_ERR_INVALID_ARG : FEDGE_OK;
}

static int word_ok(const char *v, size_t len, size_t cap)
{
    if (len == 0 || len >= cap)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= '0' && v[i] <= '9') || v[i] == '_' || v[i] == '-'))
            return 0;
    return 1;
}

static int number(const char *v, size_t len, double lo, double hi, double *out)
{
    char tmp[48], *end = NULL;
    if (len == 0 || len >= sizeof tmp)
        return 0;
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    double x = strtod(tmp, &end);
    if (*end || !isfinite(x) || x < lo || x > hi)
        return 0;
    *out = x;
    return 1;
}

int fedge_round_config_parse(const char *detail, fedge_agg_config *cfg)
{
    static const char *const keys[] = {"mode", "min_updates", "buffer_k", "staleness",
                                       "staleness_a", "staleness_b", "aggregation"};
    unsigned seen = 0;
    fedge_agg_config c;
    if (!detail || !cfg)
        return FEDGE_ERR_INVALID_ARG;
    size_t plen = strlen(FEDGE_ROUND_CONFIG_PREFIX);
    if (strncmp(detail, FEDGE_ROUND_CONFIG_PREFIX, plen) != 0)
        return FEDGE_ERR_DATA_FORMAT;
    c = *cfg;
    const char *p = detail + plen;
    while (*p) {
        const char *sp = strchr(p, ' '), *eq = strchr(p, '=');
        size_t tok = sp ? (size_t)(sp - p) : strlen(p);
        if (!eq || (size_t)(eq - p) >= tok)
            return FEDGE_ERR_DATA_FORMAT;
        size_t klen = (size_t)(eq - p), vlen = tok - klen - 1;
        const char *v = eq + 1;
        size_t k = 0;
        while (k < FEDGE_ARRAY_LEN(keys) && !(strlen(keys[k]) == klen && !strncmp(keys[k], p, klen)))
            k++;
        if (k == FEDGE_ARRAY_LEN(keys) || (seen & (1u << k)))
            return FEDGE_ERR_DATA_FORMAT;
        seen |= 1u << k;
        double x = 0;
        switch (k) {
        case 0:
            if (!((vlen == 4 && !strncmp(v, "sync", 4)) || (vlen == 5 && !strncmp(v, "async", 5))))
                return FEDGE_ERR_DATA_FORMAT;
            snprintf(c.mode, sizeof c.mode, "%.*s", (int)vlen, v);
            break;
        case 1:
        case 2:
            if (!number(v, vlen, 1, 1e6, &x) || x != floor(x))
                return FEDGE_ERR_DATA_FORMAT;
            *(k == 1 ? &c.min_updates : &c.async_buffer_k) = (long)x;
            break;
        case 3:
            if (!((vlen == 8 && !strncmp(v, "constant", 8)) || (vlen == 10 && !strncmp(v, "polynomial", 10)) ||
                  (vlen == 5 && !strncmp(v, "hinge", 5))))
                return FEDGE_ERR_DATA_FORMAT;
            snprintf(c.async_staleness, sizeof c.async_staleness, "%.*s", (int)vlen, v);
            break;
        case 4:
        case 5:
            if (!number(v, vlen, 0, k == 4 ? 100 : 1e6, &x))
                return FEDGE_ERR_DATA_FORMAT;
            *(k == 4 ? &c.async_staleness_a : &c.async_staleness_b) = x;
            break;
        default:
            if (!word_ok(v, vlen, sizeof c.aggregation))
                return FEDGE_ERR_DATA_FORMAT;
            snprintf(c.aggregation, sizeof c.aggregation, "%.*s", (int)vlen, v);
            break;
        }
        p += tok;
        if (*p == ' ' && !*++p)
            return FEDGE_ERR_DATA_FORMAT; /* a trailing space */
    }
    if (seen != (1u << FEDGE_ARRAY_LEN(keys)) - 1)
        return FEDGE_ERR_DATA_FORMAT;
    *cfg = c;
    return FEDGE_OK;
}

int fedge_round_config_record(sqlite3 *db, const fedge_agg_config *cfg, double at, int *recorded)
{
    sqlite3_stmt *st = NULL;
    char detail[256];
    int ret;
    if (!db || !cfg || !recorded)
        return FEDGE_ERR_INVALID_ARG;
    *recorded = 0;
    CHK(fedge_round_config_format(cfg, detail, sizeof detail));
    if (sqlite3_prepare_v2(db, "SELECT detail FROM events WHERE kind=?1 ORDER BY id DESC LIMIT 1", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_bind_text(st, 1, FEDGE_ROUND_CONFIG_EVENT, -1, SQLITE_STATIC) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *last = (const char *)sqlite3_column_text(st, 0);
        if (last && !strcmp(last, detail))
            goto cleanup;
    } else if (rc != SQLITE_DONE) {
        FAIL(FEDGE_ERR_SQL);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO events(at, round, device, kind, rule, detail) VALUES(?1, NULL, NULL, ?2,"
                               " NULL, ?3)", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_double(st, 1, at) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, FEDGE_ROUND_CONFIG_EVENT, -1, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(st, 3, detail, -1, SQLITE_TRANSIENT) != SQLITE_OK || sqlite3_step(st) != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    CHK(fedge_audit_append_id(db, "events", sqlite3_last_insert_rowid(db)));
    *recorded = 1;
cleanup:
    sqlite3_finalize(st);
    return ret;
}
