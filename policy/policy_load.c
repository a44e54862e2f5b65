/* policy_load.c — policy files: YAML (libyaml's document loader) into a
 * validated struct fedge_policy. A table lists every key with its kind and
 * bounds; anything not in the table is refused with its line. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "common.h"
#include "fileio.h"
#include "hash.h"
#include "policy_impl.h"
#include "text.h"

const char fedge_policy_default_text[] =
    "# fedge built-in default policy: used when no policy file is given.\n"
    "version: 1\n"
    "name: default\n"
    "update:\n"
    "  max_norm: 0            # 0: no norm limit\n"
    "  norm_action: clip\n"
    "  max_staleness: 0\n"
    "  max_samples: 100000    # largest sample count (aggregation weight) an update may state\n"
    "  rate_limit:\n"
    "    max_updates: 0       # 0: no rate limit\n"
    "    window_s: 3600\n"
    "anomaly:\n"
    "  enabled: false\n"
    "  min_updates: 4\n"
    "  max_norm_z: 3.0\n"
    "  min_cosine: -0.2\n"
    "round:\n"
    "  min_clients: 1\n"
    "  max_share: 1.0\n"
    "  deadline_s: 0          # 0: the aggregator's own deadline\n"
    "privacy:\n"
    "  enabled: false\n"
    "  clip_norm: 1.0\n"
    "  noise_multiplier: 1.0\n"
    "  epsilon_budget: 10.0\n"
    "  delta: 1e-5\n"
    "  device_epsilon_budget: 0\n";

typedef enum { K_MAP, K_DOUBLE, K_UINT, K_VERSION, K_BOOL, K_NAME, K_NORM_ACTION, K_REGIONS } key_kind;

typedef struct {
    const char *path;
    key_kind kind;
    size_t offset;
    double min, max;
    int min_open, max_open; /* exclusive bounds */
} key_spec;

#define OFF(f) offsetof(struct fedge_policy, f)

static const key_spec KEYS[] = {
    {"version", K_VERSION, 0, 1, 1, 0, 0},
    {"name", K_NAME, 0, 0, 0, 0, 0},
    {"update", K_MAP, 0, 0, 0, 0, 0},
    {"update.max_norm", K_DOUBLE, OFF(max_norm), 0, 1e30, 0, 0},
    {"update.norm_action", K_NORM_ACTION, 0, 0, 0, 0, 0},
    {"update.max_staleness", K_UINT, OFF(max_staleness), 0, 1e6, 0, 0},
    {"update.max_samples", K_UINT, OFF(max_samples), 1, 4e9, 0, 0},
    {"update.allowed_regions", K_REGIONS, 0, 0, 0, 0, 0},
    {"update.rate_limit", K_MAP, 0, 0, 0, 0, 0},
    {"update.rate_limit.max_updates", K_UINT, OFF(rate_max_updates), 0, 1e9, 0, 0},
    {"update.rate_limit.window_s", K_DOUBLE, OFF(rate_window_s), 0, 1e9, 1, 0},
    {"anomaly", K_MAP, 0, 0, 0, 0, 0},
    {"anomaly.enabled", K_BOOL, OFF(anomaly_enabled), 0, 0, 0, 0},
    {"anomaly.min_updates", K_UINT, OFF(anomaly_min_updates), 3, 1e6, 0, 0},
    {"anomaly.max_norm_z", K_DOUBLE, OFF(anomaly_max_norm_z), 0, 1e6, 1, 0},
    {"anomaly.min_cosine", K_DOUBLE, OFF(anomaly_min_cosine), -1, 1, 0, 0},
    {"round", K_MAP, 0, 0, 0, 0, 0},
    {"round.min_clients", K_UINT, OFF(min_clients), 1, 1e6, 0, 0},
    {"round.max_share", K_DOUBLE, OFF(max_share), 0, 1, 1, 0},
    {"round.deadline_s", K_DOUBLE, OFF(deadline_s), 0, 1e7, 0, 0},
    {"privacy", K_MAP, 0, 0, 0, 0, 0},
    {"privacy.enabled", K_BOOL, OFF(dp_enabled), 0, 0, 0, 0},
    {"privacy.clip_norm", K_DOUBLE, OFF(dp_clip_norm), 0, 1e30, 1, 0},
    {"privacy.noise_multiplier", K_DOUBLE, OFF(dp_noise_multiplier), 0, 1e6, 1, 0},
    {"privacy.epsilon_budget", K_DOUBLE, OFF(dp_epsilon_budget), 0, 1e6, 1, 0},
    {"privacy.delta", K_DOUBLE, OFF(dp_delta), 0, 1, 1, 1},
    {"privacy.device_epsilon_budget", K_DOUBLE, OFF(dp_device_epsilon_budget), 0, 1e6, 0, 0},
    {"privacy.max_participations", K_UINT, OFF(max_participations), 0, 1e9, 0, 0},
};
#define N_KEYS FEDGE_ARRAY_LEN(KEYS)

typedef struct {
    yaml_document_t *doc;
    struct fedge_policy *p;
    const char *origin;
    char *err;
    size_t errlen;
    unsigned char seen[N_KEYS];
    int saw_name;
} load_ctx;

static void set_defaults(struct fedge_policy *p)
{
    memset(p, 0, sizeof *p);
    p->max_norm = 0;
    p->norm_action_reject = 0;
    p->max_staleness = 0;
    p->max_samples = 100000;
    p->regions_any = 1;
    p->rate_max_updates = 0;
    p->rate_window_s = 3600;
    p->anomaly_enabled = 0;
    p->anomaly_min_updates = 4;
    p->anomaly_max_norm_z = 3.0;
    p->anomaly_min_cosine = -0.2;
    p->min_clients = 1;
    p->max_share = 1.0;
    p->deadline_s = 0;
    p->dp_enabled = 0;
    p->dp_clip_norm = 1.0;
    p->dp_noise_multiplier = 1.0;
    p->dp_epsilon_budget = 10.0;
    p->dp_delta = 1e-5;
    p->dp_device_epsilon_budget = 0;
    p->max_participations = 0;
}

static int fail_at(load_ctx *c, int code, const yaml_node_t *node, const char *key,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int fail_at(load_ctx *c, int code, const yaml_node_t *node, const char *key,
                   const char *fmt, ...)
{
    if (c->err && c->errlen > 0) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (node && key)
            snprintf(c->err, c->errlen, "%s:%zu: %s: %s", c->origin,
                     node->start_mark.line + 1, key, msg);
        else if (node)
            snprintf(c->err, c->errlen, "%s:%zu: %s", c->origin, node->start_mark.line + 1, msg);
        else
            snprintf(c->err, c->errlen, "%s: %s", c->origin, msg);
    }
    return code;
}

static const char *scalar_text(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

/* A scalar with an embedded NUL is refused (its text would be cut short). */
static int scalar_ok(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE && strlen(scalar_text(n)) == n->data.scalar.length;
}

static int ident_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == '-';
}

static int valid_ident(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!ident_char(s[i]))
            return 0;
    return 1;
}

static int bound_text(const key_spec *k, char *buf, size_t cap)
{
    return snprintf(buf, cap, "%s %g and %s %g", k->min_open ? ">" : ">=", k->min,
                    k->max_open ? "<" : "<=", k->max);
}

static int in_bounds(const key_spec *k, double v)
{
    if (k->min_open ? !(v > k->min) : !(v >= k->min))
        return 0;
    if (k->max_open ? !(v < k->max) : !(v <= k->max))
        return 0;
    return 1;
}

static int set_scalar(load_ctx *c, const key_spec *k, const yaml_node_t *v)
{
    const char *t = scalar_text(v);
    char *end = NULL;
    char bounds[96];
    switch (k->kind) {
    case K_DOUBLE: {
        errno = 0;
        double d = strtod(t, &end);
        if (t[0] == '\0' || *end != '\0' || errno == ERANGE || !isfinite(d) || !in_bounds(k, d)) {
            bound_text(k, bounds, sizeof bounds);
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, v, k->path,
                           "expected a number %s, got '%.40s'", bounds, t);
        }
        *(double *)((char *)c->p + k->offset) = d;
        return FEDGE_OK;
    }
    case K_UINT:
    case K_VERSION: {
        errno = 0;
        unsigned long long u = (t[0] >= '0' && t[0] <= '9') ? strtoull(t, &end, 10) : 0;
        int bad = !(t[0] >= '0' && t[0] <= '9') || *end != '\0' || errno == ERANGE ||
                  !in_bounds(k, (double)u);
        if (bad && k->kind == K_VERSION)
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, v, k->path,
                           "this build reads policy format version 1, got '%.40s'", t);
        if (bad) {
            bound_text(k, bounds, sizeof bounds);
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, v, k->path,
                           "expected a whole number %s, got '%.40s'", bounds, t);
        }
        if (k->kind == K_UINT)
            *(uint32_t *)((char *)c->p + k->offset) = (uint32_t)u;
        return FEDGE_OK; /* version: the bounds are the check */
    }
    case K_BOOL: {
        int b;
        if (strcmp(t, "true") == 0)
            b = 1;
        else if (strcmp(t, "false") == 0)
            b = 0;
        else
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, v, k->path,
                           "expected true or false, got '%.40s'", t);
        *(int *)((char *)c->p + k->offset) = b;
        return FEDGE_OK;
    }
    case K_NAME:
        if (!valid_ident(t, FEDGE_POLICY_NAME_MAX))
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, v, k->path,
                           "expected 1 to %d characters of [A-Za-z0-9._-], got '%.40s'",
                           FEDGE_POLICY_NAME_MAX, t);
        snprintf(c->p->name, sizeof c->p->name, "%s", t);
        c->saw_name = 1;
        return FEDGE_OK;
    case K_NORM_ACTION:
        if (strcmp(t, "clip") == 0)
            c->p->norm_action_reject = 0;
        else if (strcmp(t, "reject") == 0)
            c->p->norm_action_reject = 1;
        else
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, v, k->path,
                           "expected clip or reject, got '%.40s'", t);
        return FEDGE_OK;
    default:
        return FEDGE_ERR_INTERNAL;
    }
}

static int set_regions(load_ctx *c, const key_spec *k, const yaml_node_t *v)
{
    if (v->type != YAML_SEQUENCE_NODE)
        return fail_at(c, FEDGE_ERR_POLICY_SYNTAX, v, k->path,
                       "expected a list of regions, e.g. [eu, us]");
    struct fedge_policy *p = c->p;
    p->n_regions = 0;
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
         it++) {
        const yaml_node_t *r = yaml_document_get_node(c->doc, *it);
        if (!r || !scalar_ok(r))
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, r ? r : v, k->path,
                           "each region must be a plain word");
        const char *t = scalar_text(r);
        if (!valid_ident(t, FEDGE_POLICY_REGION_MAX))
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, r, k->path,
                           "region '%.40s' must be 1 to %d characters of [A-Za-z0-9._-]", t,
                           FEDGE_POLICY_REGION_MAX);
        for (unsigned i = 0; i < p->n_regions; i++)
            if (strcmp(p->regions[i], t) == 0)
                return fail_at(c, FEDGE_ERR_POLICY_VALUE, r, k->path,
                               "region '%s' listed twice", t);
        if (p->n_regions == FEDGE_POLICY_MAX_REGIONS)
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, r, k->path, "more than %d regions",
                           FEDGE_POLICY_MAX_REGIONS);
        snprintf(p->regions[p->n_regions++], FEDGE_POLICY_REGION_MAX + 1, "%s", t);
    }
    if (p->n_regions == 0)
        return fail_at(c, FEDGE_ERR_POLICY_VALUE, v, k->path,
                       "empty list: omit the key to allow any region");
    p->regions_any = 0;
    return FEDGE_OK;
}

static int walk_map(load_ctx *c, const yaml_node_t *map, const char *prefix);

static int walk_value(load_ctx *c, size_t ki, const yaml_node_t *v)
{
    const key_spec *k = &KEYS[ki];
    switch (k->kind) {
    case K_MAP:
        /* "anomaly:" with every sub-key commented out is an empty map. */
        if (v->type == YAML_SCALAR_NODE && v->data.scalar.length == 0 &&
            v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            return FEDGE_OK;
        if (v->type != YAML_MAPPING_NODE)
            return fail_at(c, FEDGE_ERR_POLICY_SYNTAX, v, k->path,
                           "expected a mapping of keys under it");
        return walk_map(c, v, k->path);
    case K_REGIONS:
        return set_regions(c, k, v);
    default:
        if (v->type != YAML_SCALAR_NODE)
            return fail_at(c, FEDGE_ERR_POLICY_SYNTAX, v, k->path, "expected a single value");
        if (!scalar_ok(v))
            return fail_at(c, FEDGE_ERR_POLICY_VALUE, v, k->path, "value contains a NUL byte");
        return set_scalar(c, k, v);
    }
}

static int walk_map(load_ctx *c, const yaml_node_t *map, const char *prefix)
{
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top;
         pr++) {
        const yaml_node_t *kn = yaml_document_get_node(c->doc, pr->key);
        const yaml_node_t *vn = yaml_document_get_node(c->doc, pr->value);
        if (!kn || !vn)
            return fail_at(c, FEDGE_ERR_POLICY_SYNTAX, map, NULL, "malformed mapping");
        if (!scalar_ok(kn))
            return fail_at(c, FEDGE_ERR_POLICY_SYNTAX, kn, NULL, "a key must be a plain word");
        char path[128];
        int n = prefix[0] ? snprintf(path, sizeof path, "%s.%s", prefix, scalar_text(kn))
                          : snprintf(path, sizeof path, "%s", scalar_text(kn));
        if (n < 0 || (size_t)n >= sizeof path)
            return fail_at(c, FEDGE_ERR_POLICY_UNKNOWN_KEY, kn, NULL, "unknown key '%.60s'",
                           scalar_text(kn));
        size_t ki = 0;
        while (ki < N_KEYS && strcmp(KEYS[ki].path, path) != 0)
            ki++;
        if (ki == N_KEYS)
            return fail_at(c, FEDGE_ERR_POLICY_UNKNOWN_KEY, kn, path,
                           "unknown key (docs/POLICY.md lists the keys)");
        if (c->seen[ki])
            return fail_at(c, FEDGE_ERR_POLICY_SYNTAX, kn, path, "key given twice");
        c->seen[ki] = 1;
        int ret = walk_value(c, ki, vn);
        if (ret != FEDGE_OK)
            return ret;
    }
    return FEDGE_OK;
}

/* Name default: the origin's base name without extension, when it is a
 * valid name; "policy" otherwise. */
static void default_name(struct fedge_policy *p, const char *origin)
{
    const char *base = strrchr(origin, '/');
    base = base ? base + 1 : origin;
    char buf[FEDGE_POLICY_NAME_MAX + 1];
    size_t n = strcspn(base, ".");
    if (n == 0 || n > FEDGE_POLICY_NAME_MAX) {
        snprintf(p->name, sizeof p->name, "policy");
        return;
    }
    memcpy(buf, base, n);
    buf[n] = '\0';
    snprintf(p->name, sizeof p->name, "%s", valid_ident(buf, FEDGE_POLICY_NAME_MAX) ? buf : "policy");
}

int fedge_policy_load_buffer(const char *text, size_t len, const char *origin,
                             fedge_policy **out, char *err, size_t errlen)
{
    int ret = FEDGE_OK;
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    int parser_ready = 0, doc_ready = 0, extra_ready = 0;
    struct fedge_policy *p = NULL;
    load_ctx c;
    memset(&c, 0, sizeof c);
    c.origin = origin ? origin : "policy";
    c.err = err;
    c.errlen = errlen;
    if (err && errlen)
        err[0] = '\0';
    if (!out || (!text && len > 0))
        return FEDGE_ERR_INVALID_ARG;
    *out = NULL;
    if (len > FEDGE_POLICY_MAX_FILE)
        return fail_at(&c, FEDGE_ERR_POLICY_VALUE, NULL, NULL, "larger than %d bytes",
                       FEDGE_POLICY_MAX_FILE);

    p = calloc(1, sizeof *p);
    if (!p)
        return FEDGE_ERR_NOMEM;
    set_defaults(p);
    c.p = p;

    uint8_t digest[FEDGE_HASH_LEN];
    CHK(fedge_sha256(text, len, digest));
    fedge_hash_to_hex(digest, p->sha256_hex);

    if (!yaml_parser_initialize(&parser))
        FAIL(FEDGE_ERR_NOMEM);
    parser_ready = 1;
    yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), len);
    if (!yaml_parser_load(&parser, &doc)) {
        if (err && errlen)
            snprintf(err, errlen, "%s:%zu:%zu: YAML syntax error: %s%s%s", c.origin,
                     parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                     parser.problem ? parser.problem : "unknown problem",
                     parser.context ? " " : "", parser.context ? parser.context : "");
        FAIL(FEDGE_ERR_POLICY_SYNTAX);
    }
    doc_ready = 1;
    c.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root)
        FAIL(fail_at(&c, FEDGE_ERR_POLICY_SYNTAX, NULL, NULL,
                     "empty policy (docs/POLICY.md shows the format)"));
    if (root->type != YAML_MAPPING_NODE)
        FAIL(fail_at(&c, FEDGE_ERR_POLICY_SYNTAX, root, NULL,
                     "the policy must be a mapping of keys (docs/POLICY.md)"));
    if (!yaml_parser_load(&parser, &extra)) {
        if (err && errlen)
            snprintf(err, errlen, "%s:%zu: YAML syntax error after the first document: %s",
                     c.origin, parser.problem_mark.line + 1,
                     parser.problem ? parser.problem : "unknown problem");
        FAIL(FEDGE_ERR_POLICY_SYNTAX);
    }
    extra_ready = 1;
    if (yaml_document_get_root_node(&extra))
        FAIL(fail_at(&c, FEDGE_ERR_POLICY_SYNTAX, yaml_document_get_root_node(&extra), NULL,
                     "more than one YAML document; a policy is one document"));

    CHK(walk_map(&c, root, ""));
    if (!c.saw_name)
        default_name(p, c.origin);
    snprintf(p->display_name, sizeof p->display_name, "%s@%.12s", p->name, p->sha256_hex);
    *out = p;
    p = NULL;
cleanup:
    if (ret != FEDGE_OK && err && errlen) {
        /* A YAML scalar may hold line breaks and control bytes: the message
         * stays one printable line. */
        char raw[1024];
        snprintf(raw, sizeof raw, "%s", err);
        fedge_text_escape(raw, strlen(raw), err, errlen);
    }
    if (extra_ready)
        yaml_document_delete(&extra);
    if (doc_ready)
        yaml_document_delete(&doc);
    if (parser_ready)
        yaml_parser_delete(&parser);
    free(p);
    return ret;
}

static int read_file(const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
    int ret = fedge_read_regular(path, 0, FEDGE_POLICY_MAX_FILE, buf, len);
    int e = errno;
    if (ret == FEDGE_OK)
        return ret;
    if (!err || !errlen)
        err = NULL;
    else if (ret == FEDGE_ERR_NOT_REGULAR)
        snprintf(err, errlen, "%s: not a regular file (a FIFO, device, socket or directory)", path);
    else if (ret == FEDGE_ERR_RANGE)
        snprintf(err, errlen, "%s: policy file larger than %d bytes", path, FEDGE_POLICY_MAX_FILE);
    else if (ret == FEDGE_ERR_IO)
        snprintf(err, errlen, "%s: cannot open policy file: %s", path, strerror(e));
    else
        snprintf(err, errlen, "%s: %s", path, fedge_strerror(ret));
    if (ret == FEDGE_ERR_RANGE)
        return FEDGE_ERR_POLICY_VALUE;
    if (ret == FEDGE_ERR_NOT_REGULAR)
        return FEDGE_ERR_IO;
    return ret == FEDGE_ERR_IO && e == ENOENT ? FEDGE_ERR_NOT_FOUND : ret;
}

int fedge_policy_load(const char *path, fedge_policy **out, char *err, size_t errlen)
{
    if (!out)
        return FEDGE_ERR_INVALID_ARG;
    if (!path)
        return fedge_policy_load_buffer(fedge_policy_default_text,
                                        sizeof fedge_policy_default_text - 1, "default", out,
                                        err, errlen);
    char *text = NULL;
    size_t len = 0;
    int ret = read_file(path, &text, &len, err, errlen);
    if (ret != FEDGE_OK) {
        if (err && errlen) { /* the path too: err is one printable line */
            char raw[1024];
            snprintf(raw, sizeof raw, "%s", err);
            fedge_text_escape(raw, strlen(raw), err, errlen);
        }
        return ret;
    }
    ret = fedge_policy_load_buffer(text, len, path, out, err, errlen);
    free(text);
    return ret;
}

int fedge_policy_default(fedge_policy **out)
{
    return fedge_policy_load(NULL, out, NULL, 0);
}

void fedge_policy_free(fedge_policy *p)
{
    free(p);
}
