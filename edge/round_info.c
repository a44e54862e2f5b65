/* round_info.c — parse the body of GET /round (see round_info.h). */
#include "round_info.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

enum {
    K_STATE,
    K_ROUND,
    K_SELECTED,
    K_DEADLINE,
    K_MODEL,
    K_SPEC,
    K_EPOCHS,
    K_LR,
    K_BATCH,
    K_MOMENTUM,
    K_WEIGHT_DECAY,
    K_RUN,
    K_PROX_MU,
    K_CONTROL,
    K_COUNT
};

static const char *const key_names[K_COUNT] = {
    "state", "round", "selected", "deadline_ms", "model", "spec",
    "epochs", "lr", "batch", "momentum", "weight_decay", "run",
    "prox_mu", "control",
};

static int set_err(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int set_err(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

static int is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.';
}

/* Unsigned decimal, digits only, no sign, no overflow past max. */
static int parse_uint(const char *s, uint64_t max, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_float(const char *s, float lo, float hi, int lo_inclusive, float *out)
{
    if (!*s || is_space(*s))
        return -1;
    errno = 0;
    char *end;
    float v = strtof(s, &end);
    if (errno || *end || !isfinite(v) || v > hi || v < lo || (!lo_inclusive && v == lo))
        return -1;
    *out = v;
    return 0;
}

static int parse_value(fedge_round_info *r, int key, const char *v, char *err, size_t errlen)
{
    uint64_t u;
    switch (key) {
    case K_STATE:
        if (strcmp(v, "open") == 0)
            r->state = FEDGE_ROUND_OPEN;
        else if (strcmp(v, "waiting") == 0)
            r->state = FEDGE_ROUND_WAITING;
        else if (strcmp(v, "finished") == 0)
            r->state = FEDGE_ROUND_FINISHED;
        else
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "state='%.32s' is not open|waiting|finished", v);
        return FEDGE_OK;
    case K_ROUND:
        if (parse_uint(v, UINT32_MAX, &u))
            break;
        r->round = (uint32_t)u;
        r->has_round = 1;
        return FEDGE_OK;
    case K_SELECTED:
        if (parse_uint(v, 1, &u))
            break;
        r->selected = (int)u;
        return FEDGE_OK;
    case K_DEADLINE:
        if (parse_uint(v, INT64_MAX, &u))
            break;
        r->deadline_ms = (int64_t)u;
        return FEDGE_OK;
    case K_MODEL:
        if (strlen(v) != 2 * FEDGE_HASH_LEN || fedge_hash_from_hex(v, r->model) != FEDGE_OK)
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "model= must be 64 hex digits");
        r->has_model = 1;
        return FEDGE_OK;
    case K_CONTROL:
        if (strlen(v) != 2 * FEDGE_HASH_LEN || fedge_hash_from_hex(v, r->control) != FEDGE_OK)
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "control= must be 64 hex digits");
        r->has_control = 1;
        return FEDGE_OK;
    case K_PROX_MU:
        if (parse_float(v, 0.0f, FEDGE_ROUND_PROX_MU_MAX, 1, &r->prox_mu))
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "prox_mu='%.32s' is not a number in [0, %g]", v,
                           (double)FEDGE_ROUND_PROX_MU_MAX);
        return FEDGE_OK;
    case K_RUN:
        if (strlen(v) != 2 * FEDGE_RUN_ID_LEN || fedge_hex_decode(v, r->run_id, FEDGE_RUN_ID_LEN) != FEDGE_OK)
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "run= must be %d hex digits", 2 * FEDGE_RUN_ID_LEN);
        r->has_run = 1;
        return FEDGE_OK;
    case K_SPEC:
        if (strlen(v) >= sizeof r->spec_text || fedge_model_spec_parse(v, &r->spec) != FEDGE_OK)
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "spec='%.64s' is not a model spec", v);
        snprintf(r->spec_text, sizeof r->spec_text, "%s", v);
        r->has_spec = 1;
        return FEDGE_OK;
    case K_EPOCHS:
        if (parse_uint(v, FEDGE_ROUND_EPOCHS_MAX, &u) || u == 0)
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "epochs='%.32s' is not in 1..%d", v, FEDGE_ROUND_EPOCHS_MAX);
        r->epochs = (int)u;
        return FEDGE_OK;
    case K_BATCH:
        if (parse_uint(v, FEDGE_ROUND_BATCH_MAX, &u) || u == 0)
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "batch='%.32s' is not in 1..%d", v, FEDGE_ROUND_BATCH_MAX);
        r->batch = (int)u;
        return FEDGE_OK;
    case K_LR:
        if (parse_float(v, 0.0f, 100.0f, 0, &r->lr))
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "lr='%.32s' is not a number in (0, 100]", v);
        return FEDGE_OK;
    case K_MOMENTUM:
    case K_WEIGHT_DECAY: {
        float f;
        if (parse_float(v, 0.0f, 1.0f, 1, &f) || f >= 1.0f)
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                           "%s='%.32s' is not a number in [0, 1)", key_names[key], v);
        if (key == K_MOMENTUM)
            r->momentum = f;
        else
            r->weight_decay = f;
        return FEDGE_OK;
    }
    default:
        return FEDGE_ERR_INTERNAL;
    }
    return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE,
                   "%s='%.32s' is not a valid unsigned integer in range", key_names[key], v);
}

int fedge_round_info_parse(const char *text, size_t len, fedge_round_info *out, char *err,
                           size_t errlen)
{
    fedge_round_info r;
    int seen[K_COUNT] = {0};
    char line[FEDGE_ROUND_LINE_MAX + 1];
    size_t pos = 0, lineno = 0;
    int ret;

    if (!out || (!text && len))
        return set_err(err, errlen, FEDGE_ERR_INVALID_ARG, "no /round body");
    if (len > FEDGE_ROUND_BODY_MAX)
        return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_SYNTAX,
                       "/round body is %zu bytes (limit %d)", len, FEDGE_ROUND_BODY_MAX);
    memset(&r, 0, sizeof r);
    r.deadline_ms = -1;

    while (pos < len) {
        size_t end = pos;
        while (end < len && text[end] != '\n')
            end++;
        size_t n = end - pos;
        lineno++;
        if (n > FEDGE_ROUND_LINE_MAX)
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_SYNTAX,
                           "line %zu longer than %d bytes", lineno, FEDGE_ROUND_LINE_MAX);
        if (memchr(text + pos, '\0', n))
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_SYNTAX,
                           "line %zu contains a NUL byte", lineno);
        memcpy(line, text + pos, n);
        line[n] = '\0';
        pos = end + 1;

        char *p = line;
        while (is_space(*p))
            p++;
        if (*p == '\0' || *p == '#')
            continue;
        char *eq = strchr(p, '=');
        if (!eq || eq == p)
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_SYNTAX,
                           "line %zu is not key=value", lineno);
        *eq = '\0';
        for (char *k = p; *k; k++)
            if (!is_key_char(*k))
                return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_SYNTAX,
                               "line %zu: bad character in key", lineno);
        int key = -1;
        for (int k = 0; k < K_COUNT; k++)
            if (strcmp(p, key_names[k]) == 0)
                key = k;
        if (key < 0)
            continue; /* unknown key, whatever its value: forward compatible */
        char *v = eq + 1;
        /* The value ends at the first blank; only a '#' comment may follow. */
        char *ve = v;
        while (*ve && !is_space(*ve))
            ve++;
        char *rest = ve;
        while (is_space(*rest))
            rest++;
        if (*rest != '\0' && *rest != '#')
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_SYNTAX,
                           "line %zu: text after the value of %s", lineno, key_names[key]);
        *ve = '\0';
        if (seen[key])
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_DUPLICATE,
                           "key %s given twice", key_names[key]);
        seen[key] = 1;
        if (*v == '\0')
            return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_VALUE, "%s has an empty value",
                           key_names[key]);
        ret = parse_value(&r, key, v, err, errlen);
        if (ret != FEDGE_OK)
            return ret;
    }

    if (!seen[K_STATE])
        return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_MISSING, "missing key state");
    if (r.state == FEDGE_ROUND_OPEN) {
        static const int required[] = {K_ROUND, K_SELECTED, K_MODEL, K_SPEC,
                                       K_EPOCHS, K_LR,    K_BATCH, K_RUN};
        for (size_t i = 0; i < FEDGE_ARRAY_LEN(required); i++)
            if (!seen[required[i]])
                return set_err(err, errlen, FEDGE_ERR_EDGE_ROUND_MISSING,
                               "state=open without key %s", key_names[required[i]]);
    }
    *out = r;
    return FEDGE_OK;
}

const char *fedge_round_state_name(fedge_round_state s)
{
    switch (s) {
    case FEDGE_ROUND_OPEN: return "open";
    case FEDGE_ROUND_WAITING: return "waiting";
    case FEDGE_ROUND_FINISHED: return "finished";
    }
    return "unknown";
}
