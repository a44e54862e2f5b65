/* commands.c — verify, lineage, privacy, decisions, report (see cli.h).
 * Each command gathers its answer into out_tables first, then prints them
 * as text, JSON, Markdown or CSV, so `report` reuses the same gathering. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit.h"
#include "cli.h"
#include "common.h"
#include "graph.h"
#include "html.h"
#include "out.h"
#include "tiers.h"
#include "policy.h"
#include "rdp.h"
#include "text.h"

void cli_error(const char *fmt, ...)
{
    char msg[1024], safe_msg[4 * sizeof msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fedge_text_escape(msg, strlen(msg), safe_msg, sizeof safe_msg);
    fprintf(stderr, "fedge-audit: %s\n", safe_msg);
}

/* s escaped for printing (text.h): strings from the database or the
 * command line never reach the terminal raw. Four buffers in rotation, so
 * one printf may take several; long strings are truncated. */
static const char *safe(const char *s)
{
    static char buf[4][1024];
    static int next;
    char *b = buf[next];
    next = (next + 1) % 4;
    if (!s)
        s = "-";
    fedge_text_escape(s, strlen(s), b, sizeof buf[0]);
    return b;
}

/* ---- database helpers ------------------------------------------------------- */

static int prep(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK) {
        cli_error("database query failed: %s", sqlite3_errmsg(db));
        *st = NULL;
        return -1;
    }
    return 0;
}

static const char *ctext(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

static int cnull(sqlite3_stmt *st, int i)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL;
}

/* 1 found, 0 absent, -1 error. escape: the value as display text (text.h). */
static int meta_fetch(sqlite3 *db, const char *key, char *buf, size_t cap, int escape)
{
    sqlite3_stmt *st = NULL;
    int found = 0;
    buf[0] = '\0';
    if (prep(db, "SELECT value FROM meta WHERE key = ?1", &st) != 0)
        return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && ctext(st, 0)) {
        if (escape)
            fedge_text_escape(ctext(st, 0), strlen(ctext(st, 0)), buf, cap);
        else
            snprintf(buf, cap, "%s", ctext(st, 0));
        found = 1;
    }
    sqlite3_finalize(st);
    return found;
}

/* Escaped: meta values are printed as they are fetched. */
static int meta_get(sqlite3 *db, const char *key, char *buf, size_t cap)
{
    return meta_fetch(db, key, buf, cap, 1);
}

static int64_t count_of(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (prep(db, sql, &st) != 0)
        return -1;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void short_hex(const char *v, char *buf, size_t cap)
{
    snprintf(buf, cap, "%.12s", v ? v : "-");
}

static void out_time_cell(out_table *t, size_t col, sqlite3_stmt *st, int i)
{
    if (cnull(st, i)) {
        out_text(t, col, NULL);
        return;
    }
    char buf[32];
    out_time(sqlite3_column_double(st, i), buf, sizeof buf);
    out_text(t, col, buf);
}

static void out_real_cell(out_table *t, size_t col, sqlite3_stmt *st, int i)
{
    if (cnull(st, i))
        out_text(t, col, NULL);
    else
        out_num(t, col, sqlite3_column_double(st, i));
}

static void out_int_cell(out_table *t, size_t col, sqlite3_stmt *st, int i)
{
    if (cnull(st, i))
        out_text(t, col, NULL);
    else
        out_int(t, col, sqlite3_column_int64(st, i));
}

static int table_ok(const out_table *t)
{
    if (out_table_failed(t)) {
        cli_error("out of memory");
        return 0;
    }
    return 1;
}

static void section_text(const char *title)
{
    printf("\n%s\n", title);
}

/* models.parent must be a forest: the aggregator only ever adds a child of
 * an existing model. A cycle means the log was altered; it is reported as
 * the verification failure `lineage_cycle`. 1 cycle (described in buf),
 * 0 none, -1 error. */
static int parent_cycle(sqlite3 *db, char *buf, size_t cap)
{
    model_graph g;
    int rc = graph_load(db, &g);
    if (rc == 0)
        rc = graph_cycle(&g, buf, cap);
    graph_free(&g);
    return rc;
}

#define LINEAGE_CYCLE "lineage_cycle"

static void cycle_message(const char *cycle, char *buf, size_t cap)
{
    snprintf(buf, cap, "models.parent forms a cycle: %s (the aggregator never writes one; "
                       "the log was altered)",
             cycle);
}

/* ---- verify ------------------------------------------------------------------------ */

static int is_verify_failure(int rc)
{
    return rc == FEDGE_ERR_AUDIT_CHAIN || rc == FEDGE_ERR_AUDIT_SIGNATURE ||
           rc == FEDGE_ERR_AUDIT_FILE;
}

/* Runs verify; 0 when it ran (whatever it found), 2 when it could not. */
static int run_verify(sqlite3 *db, const cli_opts *o, fedge_audit_report *rep)
{
    int rc = fedge_audit_verify(db, o->pubkey, o->models, rep);
    if (rc == FEDGE_OK || is_verify_failure(rc))
        return 0;
    if (rc == FEDGE_ERR_NOT_FOUND || rc == FEDGE_ERR_IO)
        cli_error("cannot read public key %s", o->pubkey);
    else if (rc == FEDGE_ERR_CRYPTO)
        cli_error("%s is not an EC P-256 public key PEM", o->pubkey);
    else
        cli_error("cannot verify %s: %s", o->db_path, fedge_strerror(rc));
    return EXIT_USAGE;
}

static void failures_table(const fedge_audit_report *rep, const char *cycle, out_table *t)
{
    static const char *const cols[] = {"kind", "table", "row_key", "seq", "path", "message"};
    out_table_init(t, 6, cols);
    if (cycle) {
        char msg[600];
        cycle_message(cycle, msg, sizeof msg);
        out_row(t);
        out_text(t, 0, LINEAGE_CYCLE);
        out_text(t, 1, "models");
        out_text(t, 5, msg);
    }
    size_t n = rep->n_failures < FEDGE_AUDIT_MAX_FAILURES ? rep->n_failures
                                                            : FEDGE_AUDIT_MAX_FAILURES;
    for (size_t i = 0; i < n; i++) {
        const fedge_audit_failure *f = &rep->failures[i];
        out_row(t);
        out_text(t, 0, fedge_audit_fail_name(f->kind));
        out_text(t, 1, f->table[0] ? f->table : NULL);
        out_text(t, 2, f->row_key[0] ? f->row_key : NULL);
        if (f->seq >= 0)
            out_int(t, 3, f->seq);
        out_text(t, 4, f->path[0] ? f->path : NULL);
        out_text(t, 5, f->message);
    }
}

static void verify_json(json_w *j, const char *key, const fedge_audit_report *rep,
                        const char *cycle)
{
    json_obj(j, key);
    json_bool(j, "ok", rep->ok && !cycle);
    json_int(j, "entries", (int64_t)rep->n_entries);
    json_int(j, "last_seq", rep->last_seq);
    json_int(j, "signed_heads", (int64_t)rep->n_heads);
    if (rep->last_head_seq >= 0) {
        json_obj(j, "last_head");
        json_int(j, "seq", rep->last_head_seq);
        json_int(j, "round", rep->last_head_round);
        json_str(j, "hash", rep->last_head_hash);
        json_obj_end(j);
    } else {
        json_null(j, "last_head");
    }
    json_int(j, "unsigned_tail", (int64_t)rep->unsigned_tail);
    json_int(j, "key_rotations", (int64_t)rep->n_rotations);
    if (rep->key_anchor[0])
        json_str(j, "key_anchor", rep->key_anchor);
    else
        json_null(j, "key_anchor");
    if (rep->key_in_force[0])
        json_str(j, "key_in_force", rep->key_in_force);
    else
        json_null(j, "key_in_force");
    json_int(j, "rows", (int64_t)rep->n_rows);
    json_int(j, "rows_older_canon", (int64_t)rep->n_rows_older_canon);
    json_int(j, "model_files", (int64_t)rep->n_files);
    json_int(j, "failures_total", (int64_t)rep->n_failures + (cycle != NULL));
    out_table t;
    failures_table(rep, cycle, &t);
    json_table(j, "failures", &t);
    out_table_free(&t);
    json_obj_end(j);
}

static void verify_text(const fedge_audit_report *rep, const char *cycle, const char *indent)
{
    size_t n_failures = rep->n_failures + (cycle != NULL);
    if (n_failures == 0) {
        printf("%sOK: every check holds\n", indent);
    } else {
        printf("%sFAILED: %zu problem%s; the first is\n", indent, n_failures,
               n_failures == 1 ? "" : "s");
        char msg[600];
        if (cycle)
            cycle_message(cycle, msg, sizeof msg);
        printf("%s  %s: %s\n", indent,
               cycle ? LINEAGE_CYCLE : fedge_audit_fail_name(rep->failures[0].kind),
               safe(cycle ? msg : rep->failures[0].message));
    }
    printf("%s  audit chain    %zu entries (seq 1..%" PRId64 ")\n", indent, rep->n_entries,
           rep->last_seq);
    if (rep->last_head_seq >= 0)
        printf("%s  signed heads   %zu; the last covers seq %" PRId64 " (round %" PRId64
               "), head %.16s...\n",
               indent, rep->n_heads, rep->last_head_seq, rep->last_head_round,
               rep->last_head_hash);
    else
        printf("%s  signed heads   none\n", indent);
    printf("%s  unsigned tail  %zu entr%s after the last signed head%s\n", indent,
           rep->unsigned_tail, rep->unsigned_tail == 1 ? "y" : "ies",
           rep->unsigned_tail ? " (chained, not yet signed: a round is in progress)" : "");
    if (rep->n_rotations)
        printf("%s  signing keys   %zu rotation%s followed from the key given (sha256 %.16s...); heads now signed by"
               " sha256 %.16s...\n",
               indent, rep->n_rotations, rep->n_rotations == 1 ? "" : "s", rep->key_anchor, rep->key_in_force);
    printf("%s  rows           %zu audited rows compared with their latest entries\n", indent,
           rep->n_rows);
    if (rep->n_rows_older_canon)
        printf("%s  older canon    %zu row%s last logged in an older canon format (FCN1): updates.sealed_sha256"
               " is outside their entries, so an edit of it is not seen (docs/AUDIT.md \"Canon versions\")\n",
               indent, rep->n_rows_older_canon, rep->n_rows_older_canon == 1 ? "" : "s");
    printf("%s  model files    %zu re-hashed against models.sha256\n", indent, rep->n_files);
    if (n_failures) {
        out_table t;
        failures_table(rep, cycle, &t);
        printf("\n");
        out_print_text(stdout, &t, indent);
        out_table_free(&t);
        if (rep->n_failures > FEDGE_AUDIT_MAX_FAILURES)
            printf("%s... and %zu more\n", indent,
                   rep->n_failures - FEDGE_AUDIT_MAX_FAILURES);
    }
}

int cmd_verify(sqlite3 *db, const cli_opts *o)
{
    if (!o->pubkey) {
        cli_error("verify needs --pubkey PEM: the aggregator's public key "
                  "(fedge-keygen aggregator writes aggregator.pub)");
        return EXIT_USAGE;
    }
    fedge_audit_report *rep = malloc(sizeof *rep);
    if (!rep) {
        cli_error("out of memory");
        return EXIT_USAGE;
    }
    int rc = run_verify(db, o, rep);
    char cycle[512];
    int has_cycle = rc == 0 ? parent_cycle(db, cycle, sizeof cycle) : 0;
    if (has_cycle < 0)
        rc = EXIT_USAGE;
    if (rc == 0) {
        const char *cyc = has_cycle ? cycle : NULL;
        if (o->json) {
            json_w j;
            json_init(&j, stdout);
            verify_json(&j, NULL, rep, cyc);
            json_done(&j);
        } else {
            printf("fedge-audit verify %s\n", safe(o->db_path));
            verify_text(rep, cyc, "");
        }
        rc = rep->ok && !cyc ? EXIT_OK : EXIT_VERIFY_FAILED;
    }
    free(rep);
    return rc;
}

/* ---- lineage ------------------------------------------------------------------------- */

typedef struct {
    char version[FEDGE_HASH_HEX_LEN + 1];
    out_table models;        /* newest first */
    out_table contributions; /* updates that entered each aggregate */
    size_t n_devices, n_rounds, n_refines;
    int64_t samples;
    char (*devices)[80];
    size_t devices_cap;
    int has_cycle; /* models.parent has a cycle somewhere: a verification failure */
    char cycle[512];
} lineage;

static void lineage_free(lineage *l)
{
    out_table_free(&l->models);
    out_table_free(&l->contributions);
    free(l->devices);
    memset(l, 0, sizeof *l);
}

static int note_device(lineage *l, const char *dev)
{
    for (size_t i = 0; i < l->n_devices; i++)
        if (strcmp(l->devices[i], dev) == 0)
            return 0;
    if (l->n_devices == l->devices_cap) {
        size_t cap = l->devices_cap ? 2 * l->devices_cap : 16;
        char(*d)[80] = realloc(l->devices, cap * sizeof *d);
        if (!d)
            return -1;
        l->devices = d;
        l->devices_cap = cap;
    }
    snprintf(l->devices[l->n_devices++], 80, "%s", dev);
    return 0;
}

/* A full version or a unique prefix of at least 4 hex digits. */
static int resolve_version(sqlite3 *db, const char *arg, char out[FEDGE_HASH_HEX_LEN + 1])
{
    size_t n = strlen(arg);
    if (n < 4 || n > 64) {
        cli_error("model version '%s': give at least 4 hex digits of it", arg);
        return EXIT_USAGE;
    }
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)arg[i])) {
            cli_error("model version '%s' is not hexadecimal", arg);
            return EXIT_USAGE;
        }
    sqlite3_stmt *st = NULL;
    if (prep(db, "SELECT version FROM models WHERE substr(version, 1, ?2) = lower(?1) "
                 "ORDER BY version LIMIT 2",
             &st) != 0)
        return EXIT_USAGE;
    sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, (int)n);
    int found = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (found++ == 0)
            snprintf(out, FEDGE_HASH_HEX_LEN + 1, "%s", ctext(st, 0));
    }
    sqlite3_finalize(st);
    if (found == 0) {
        cli_error("no model version %s in %s", arg, "this database");
        return EXIT_USAGE;
    }
    if (found > 1) {
        cli_error("model version prefix %s is ambiguous: give more digits", arg);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

static int gather_lineage(sqlite3 *db, const char *version_arg, lineage *l)
{
    static const char *const mcols[] = {"version", "kind", "round", "parent", "accuracy",
                                        "created", "round_status", "epsilon", "devices",
                                        "samples", "refused", "info"};
    static const char *const ccols[] = {"model", "round", "update", "device", "n_samples",
                                        "decision", "rule"};
    sqlite3_stmt *m = NULL, *r = NULL, *u = NULL, *rej = NULL;
    int rc = EXIT_USAGE;
    model_graph g;
    unsigned char *visited = NULL;
    memset(l, 0, sizeof *l);
    memset(&g, 0, sizeof g);
    out_table_init(&l->models, 12, mcols);
    out_table_init(&l->contributions, 7, ccols);
    if (resolve_version(db, version_arg, l->version) != EXIT_OK)
        return EXIT_USAGE;
    if (graph_load(db, &g) != 0)
        goto cleanup;
    l->has_cycle = graph_cycle(&g, l->cycle, sizeof l->cycle);
    visited = calloc(g.n ? g.n : 1, 1);
    if (!visited) {
        cli_error("out of memory");
        goto cleanup;
    }
    if (prep(db, "SELECT version, parent, kind, round, accuracy, created_at, info FROM models "
                 "WHERE version = ?1", &m) != 0 ||
        prep(db, "SELECT id, status, epsilon FROM rounds WHERE new_version = ?1 "
                 "ORDER BY id LIMIT 1", &r) != 0 ||
        prep(db, "SELECT id, device, n_samples, decision, rule FROM updates "
                 "WHERE round = ?1 AND decision <> 'rejected' ORDER BY id", &u) != 0 ||
        prep(db, "SELECT count(*) FROM updates WHERE round = ?1 AND decision = 'rejected'",
             &rej) != 0)
        goto cleanup;

    char cur[FEDGE_HASH_HEX_LEN + 1];
    snprintf(cur, sizeof cur, "%s", l->version);
    /* Each model at most once: the walk ends after g.n steps, cycle or not. */
    while (cur[0]) {
        size_t idx = graph_find(&g, cur);
        if (idx != GRAPH_NONE) {
            if (visited[idx])
                break; /* a cycle: l->has_cycle reports it */
            visited[idx] = 1;
        }
        sqlite3_reset(m);
        sqlite3_bind_text(m, 1, cur, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(m) != SQLITE_ROW) {
            out_row(&l->models);
            out_text(&l->models, 0, cur);
            out_text(&l->models, 11, "missing from the models table");
            break;
        }
        const char *kind = ctext(m, 2);
        int64_t mround = sqlite3_column_int64(m, 3);
        char sh[16];
        short_hex(ctext(m, 0), sh, sizeof sh);
        out_row(&l->models);
        out_text(&l->models, 0, ctext(m, 0));
        out_text(&l->models, 1, kind);
        out_int(&l->models, 2, mround);
        out_text(&l->models, 3, ctext(m, 1));
        out_real_cell(&l->models, 4, m, 4);
        out_time_cell(&l->models, 5, m, 5);
        out_text(&l->models, 11, ctext(m, 6));
        if (kind && strcmp(kind, "refine") == 0)
            l->n_refines++;
        if (kind && strcmp(kind, "aggregate") == 0) {
            int64_t rid = mround;
            sqlite3_reset(r);
            sqlite3_bind_text(r, 1, cur, -1, SQLITE_TRANSIENT);
            if (sqlite3_step(r) == SQLITE_ROW) {
                rid = sqlite3_column_int64(r, 0);
                out_text(&l->models, 6, ctext(r, 1));
                out_real_cell(&l->models, 7, r, 2);
            }
            l->n_rounds++;
            int64_t n_dev = 0, samples = 0;
            sqlite3_reset(u);
            sqlite3_bind_int64(u, 1, rid);
            while (sqlite3_step(u) == SQLITE_ROW) {
                const char *dev = ctext(u, 1) ? ctext(u, 1) : "";
                out_row(&l->contributions);
                out_text(&l->contributions, 0, sh);
                out_int(&l->contributions, 1, rid);
                out_int(&l->contributions, 2, sqlite3_column_int64(u, 0));
                out_text(&l->contributions, 3, dev);
                out_int(&l->contributions, 4, sqlite3_column_int64(u, 2));
                out_text(&l->contributions, 5, ctext(u, 3));
                out_text(&l->contributions, 6, ctext(u, 4));
                n_dev++;
                samples += sqlite3_column_int64(u, 2);
                if (note_device(l, dev) != 0)
                    goto cleanup;
            }
            sqlite3_reset(rej);
            sqlite3_bind_int64(rej, 1, rid);
            int64_t refused = sqlite3_step(rej) == SQLITE_ROW ? sqlite3_column_int64(rej, 0) : 0;
            out_int(&l->models, 8, n_dev);
            out_int(&l->models, 9, samples);
            out_int(&l->models, 10, refused);
            l->samples += samples;
        }
        const char *parent = ctext(m, 1);
        snprintf(cur, sizeof cur, "%s", parent ? parent : "");
    }
    rc = table_ok(&l->models) && table_ok(&l->contributions) ? EXIT_OK : EXIT_USAGE;
cleanup:
    free(visited);
    graph_free(&g);
    sqlite3_finalize(m);
    sqlite3_finalize(r);
    sqlite3_finalize(u);
    sqlite3_finalize(rej);
    return rc;
}

static void lineage_summary(const lineage *l, char *buf, size_t cap)
{
    snprintf(buf, cap,
             "%zu device%s contributed %" PRId64 " samples over %zu aggregation round%s; "
             "%zu refinement%s; %zu model%s back to the first",
             l->n_devices, l->n_devices == 1 ? "" : "s", l->samples, l->n_rounds,
             l->n_rounds == 1 ? "" : "s", l->n_refines, l->n_refines == 1 ? "" : "s",
             l->models.n_rows, l->models.n_rows == 1 ? "" : "s");
}

/* The lineage_cycle finding as JSON: "failures": [] when there is none. */
static void cycle_json(json_w *j, int has_cycle, const char *cycle)
{
    json_bool(j, "ok", !has_cycle);
    json_arr(j, "failures");
    if (has_cycle) {
        char msg[600];
        cycle_message(cycle, msg, sizeof msg);
        json_obj(j, NULL);
        json_str(j, "kind", LINEAGE_CYCLE);
        json_str(j, "table", "models");
        json_str(j, "message", msg);
        json_obj_end(j);
    }
    json_arr_end(j);
}

static void cycle_text(int has_cycle, const char *cycle)
{
    if (!has_cycle)
        return;
    char msg[600];
    cycle_message(cycle, msg, sizeof msg);
    printf("FAILED: " LINEAGE_CYCLE ": %s\n", safe(msg));
}

/* ts: the relays' tiers (tiers.h), or NULL. */
static void lineage_json(json_w *j, const char *key, const lineage *l, const tiers *ts)
{
    json_obj(j, key);
    json_str(j, "version", l->version);
    cycle_json(j, l->has_cycle, l->cycle);
    json_int(j, "aggregation_rounds", (int64_t)l->n_rounds);
    json_int(j, "refinements", (int64_t)l->n_refines);
    json_int(j, "total_samples", l->samples);
    json_arr(j, "devices");
    for (size_t i = 0; i < l->n_devices; i++)
        json_str(j, NULL, l->devices[i]);
    json_arr_end(j);
    json_table(j, "models", &l->models);
    json_table(j, "contributions", &l->contributions);
    if (ts) {
        json_bool(j, "relays_ok", ts->ok);
        tiers_json(j, "relays", ts);
    }
    json_obj_end(j);
}

/* Text tables show 12 hex digits of each version. */
static void shorten_versions(out_table *t, size_t col)
{
    for (size_t r = 0; r < t->n_rows; r++) {
        out_cell *c = &t->cells[r * t->n_cols + col];
        if (c->text && strlen(c->text) > 12)
            c->text[12] = '\0';
    }
}

static void lineage_text(lineage *l)
{
    char summary[256];
    lineage_summary(l, summary, sizeof summary);
    cycle_text(l->has_cycle, l->cycle);
    printf("lineage of model %s\n  %s\n", safe(l->version), summary);
    section_text("models, newest first:");
    shorten_versions(&l->models, 0);
    shorten_versions(&l->models, 3);
    out_print_text(stdout, &l->models, "  ");
    section_text("updates that entered each aggregate:");
    if (l->contributions.n_rows)
        out_print_text(stdout, &l->contributions, "  ");
    else
        printf("  none\n");
}

/* The revocation view: every model version a device's accepted updates
 * reached, directly or through descendants. */
typedef struct {
    char device[80];
    int known;
    out_table info, influenced, updates, events;
    int has_cycle;
    char cycle[512];
} device_view;

/* A model the device's updates reached: depth 0 directly (its round's
 * aggregate), else through a chain of descendants. */
typedef struct {
    size_t idx;
    size_t depth;
    size_t from;       /* the model it descends from (depth > 0) */
    int64_t update_id; /* depth 0 */
    int64_t round;
    double created;
} reach;

static int reach_cmp(const void *a, const void *b)
{
    const reach *x = a, *y = b;
    if (x->depth != y->depth)
        return x->depth < y->depth ? -1 : 1;
    if (x->created != y->created)
        return x->created < y->created ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

static void device_view_free(device_view *v)
{
    out_table_free(&v->info);
    out_table_free(&v->influenced);
    out_table_free(&v->updates);
    out_table_free(&v->events);
}

static int gather_device(sqlite3 *db, const char *device, device_view *v)
{
    static const char *const icols[] = {"device", "region", "status", "epsilon_spent"};
    static const char *const mcols[] = {"version", "kind", "round", "via", "created"};
    static const char *const ucols[] = {"update", "round", "received", "decision", "rule",
                                        "reason"};
    static const char *const ecols[] = {"event", "at", "kind", "rule", "detail"};
    sqlite3_stmt *st = NULL;
    int rc = EXIT_USAGE;
    model_graph g;
    unsigned char *seen = NULL;
    reach *queue = NULL;
    memset(&g, 0, sizeof g);
    memset(v, 0, sizeof *v);
    fedge_text_escape(device, strlen(device), v->device, sizeof v->device);
    out_table_init(&v->info, 4, icols);
    out_table_init(&v->influenced, 5, mcols);
    out_table_init(&v->updates, 6, ucols);
    out_table_init(&v->events, 5, ecols);

    if (prep(db, "SELECT id, region, status, epsilon_spent FROM devices WHERE id = ?1", &st) != 0)
        goto cleanup;
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        v->known = 1;
        out_row(&v->info);
        out_text(&v->info, 0, ctext(st, 0));
        out_text(&v->info, 1, ctext(st, 1));
        out_text(&v->info, 2, ctext(st, 2));
        out_real_cell(&v->info, 3, st, 3);
    }
    sqlite3_finalize(st);

    /* Breadth first from the aggregates of its rounds down the children
     * links: every model once (a visited mark), so the walk is bounded by
     * the number of models even when the log holds a parent cycle. */
    if (graph_load(db, &g) != 0)
        goto cleanup;
    v->has_cycle = graph_cycle(&g, v->cycle, sizeof v->cycle);
    seen = calloc(g.n ? g.n : 1, 1);
    queue = malloc((g.n ? g.n : 1) * sizeof *queue);
    if (!seen || !queue) {
        cli_error("out of memory");
        goto cleanup;
    }
    if (prep(db,
             "SELECT r.new_version, u.id, u.round FROM updates u JOIN rounds r ON r.id = u.round"
             " WHERE u.device = ?1 AND u.decision IN ('accepted', 'clipped')"
             "   AND r.new_version IS NOT NULL ORDER BY u.id",
             &st) != 0)
        goto cleanup;
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    size_t n_reached = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        size_t idx = graph_find(&g, ctext(st, 0));
        if (idx == GRAPH_NONE || seen[idx])
            continue;
        seen[idx] = 1;
        queue[n_reached++] = (reach){.idx = idx, .depth = 0, .from = GRAPH_NONE,
                                     .update_id = sqlite3_column_int64(st, 1),
                                     .round = sqlite3_column_int64(st, 2)};
    }
    sqlite3_finalize(st);
    st = NULL;
    for (size_t head = 0; head < n_reached; head++) {
        reach q = queue[head];
        for (size_t c = g.child_start[q.idx]; c < g.child_start[q.idx + 1]; c++) {
            size_t child = g.children[c];
            if (seen[child])
                continue;
            seen[child] = 1;
            queue[n_reached++] = (reach){.idx = child, .depth = q.depth + 1, .from = q.idx};
        }
    }
    if (prep(db, "SELECT kind, round, created_at FROM models WHERE version = ?1", &st) != 0)
        goto cleanup;
    for (size_t i = 0; i < n_reached; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, g.nodes[queue[i].idx].version, -1, SQLITE_STATIC);
        queue[i].created = 0;
        if (sqlite3_step(st) == SQLITE_ROW)
            queue[i].created = sqlite3_column_double(st, 2);
    }
    qsort(queue, n_reached, sizeof *queue, reach_cmp);
    for (size_t i = 0; i < n_reached; i++) {
        const reach *q = &queue[i];
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, g.nodes[q->idx].version, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_ROW)
            continue;
        out_row(&v->influenced);
        out_text(&v->influenced, 0, g.nodes[q->idx].version);
        out_text(&v->influenced, 1, ctext(st, 0));
        out_int_cell(&v->influenced, 2, st, 1);
        if (q->depth == 0)
            out_textf(&v->influenced, 3, "update %" PRId64 " in round %" PRId64, q->update_id,
                      q->round);
        else
            out_textf(&v->influenced, 3, "descends from %.12s", g.nodes[q->from].version);
        out_time_cell(&v->influenced, 4, st, 2);
    }
    sqlite3_finalize(st);
    st = NULL;

    if (prep(db, "SELECT id, round, received_at, decision, rule, reason FROM updates "
                 "WHERE device = ?1 ORDER BY id", &st) != 0)
        goto cleanup;
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    while (sqlite3_step(st) == SQLITE_ROW) {
        out_row(&v->updates);
        out_int(&v->updates, 0, sqlite3_column_int64(st, 0));
        out_int(&v->updates, 1, sqlite3_column_int64(st, 1));
        out_time_cell(&v->updates, 2, st, 2);
        out_text(&v->updates, 3, ctext(st, 3));
        out_text(&v->updates, 4, ctext(st, 4));
        out_text(&v->updates, 5, ctext(st, 5));
    }
    sqlite3_finalize(st);

    if (prep(db, "SELECT id, at, kind, rule, detail FROM events WHERE device = ?1 ORDER BY id",
             &st) != 0)
        goto cleanup;
    sqlite3_bind_text(st, 1, device, -1, SQLITE_STATIC);
    while (sqlite3_step(st) == SQLITE_ROW) {
        out_row(&v->events);
        out_int(&v->events, 0, sqlite3_column_int64(st, 0));
        out_time_cell(&v->events, 1, st, 1);
        out_text(&v->events, 2, ctext(st, 2));
        out_text(&v->events, 3, ctext(st, 3));
        out_text(&v->events, 4, ctext(st, 4));
    }
    if (!v->known && v->updates.n_rows == 0 && v->events.n_rows == 0) {
        cli_error("no device %s in this database", device);
        goto cleanup;
    }
    rc = table_ok(&v->info) && table_ok(&v->influenced) && table_ok(&v->updates) &&
                 table_ok(&v->events)
             ? EXIT_OK
             : EXIT_USAGE;
cleanup:
    sqlite3_finalize(st);
    free(seen);
    free(queue);
    graph_free(&g);
    return rc;
}

static void device_json(json_w *j, const char *key, const device_view *v)
{
    json_obj(j, key);
    json_cell(j, "device", v->device); /* escaped when gathered */
    cycle_json(j, v->has_cycle, v->cycle);
    if (v->info.n_rows) {
        json_cell(j, "region", v->info.cells[1].text);
        json_cell(j, "status", v->info.cells[2].text);
        json_num(j, "epsilon_spent", v->info.cells[3].kind == CELL_NUM ? v->info.cells[3].num : NAN);
    }
    json_table(j, "influenced_models", &v->influenced);
    json_table(j, "updates", &v->updates);
    json_table(j, "events", &v->events);
    json_obj_end(j);
}

static void device_text(device_view *v)
{
    cycle_text(v->has_cycle, v->cycle);
    if (v->info.n_rows)
        printf("device %s: region %s, status %s\n", v->device,
               v->info.cells[1].text ? v->info.cells[1].text : "-",
               v->info.cells[2].text ? v->info.cells[2].text : "-");
    else
        printf("device %s (not in the devices table)\n", v->device);
    section_text("model versions its accepted updates influenced (directly or through "
                 "descendants):");
    if (v->influenced.n_rows) {
        shorten_versions(&v->influenced, 0);
        out_print_text(stdout, &v->influenced, "  ");
    } else {
        printf("  none\n");
    }
    section_text("its updates:");
    if (v->updates.n_rows)
        out_print_text(stdout, &v->updates, "  ");
    else
        printf("  none\n");
    section_text("events about it:");
    if (v->events.n_rows)
        out_print_text(stdout, &v->events, "  ");
    else
        printf("  none\n");
}

int cmd_lineage(sqlite3 *db, const cli_opts *o)
{
    if (o->device) {
        device_view v;
        int rc = gather_device(db, o->device, &v);
        if (rc == EXIT_OK) {
            if (o->json) {
                json_w j;
                json_init(&j, stdout);
                device_json(&j, NULL, &v);
                json_done(&j);
            } else {
                device_text(&v);
            }
            if (v.has_cycle)
                rc = EXIT_VERIFY_FAILED;
        }
        device_view_free(&v);
        return rc;
    }
    lineage l;
    tiers t;
    memset(&t, 0, sizeof t);
    int rc = gather_lineage(db, o->version, &l);
    if (rc == EXIT_OK && o->n_relay_db)
        rc = tiers_gather(db, &l.contributions, o->relay_db, o->relay_pubkey, o->n_relay_db, &t);
    if (rc == EXIT_OK) {
        if (o->json) {
            json_w j;
            json_init(&j, stdout);
            lineage_json(&j, NULL, &l, o->n_relay_db ? &t : NULL);
            json_done(&j);
        } else {
            lineage_text(&l);
            tiers_text(&t);
        }
        if (l.has_cycle || (o->n_relay_db && !t.ok))
            rc = EXIT_VERIFY_FAILED;
    }
    tiers_free(&t);
    lineage_free(&l);
    return rc;
}

/* ---- privacy -------------------------------------------------------------------------- */

/* epsilon comes from the privacy ledger (dp_ledger: each DP round's own q,
 * sigma and RDP vector, composed by addition, converted at the policy's
 * delta), not from the current policy's settings. A closed round without a
 * ledger row released an aggregate without noise: no DP guarantee covers the
 * data it used, which is said, never shown as epsilon 0. */
typedef struct {
    int have_policy, dp; /* dp: the recorded policy has DP on */
    char name[96], sha[80];
    double clip, z, delta, budget, device_budget;
    int have_ledger;     /* the database has a dp_ledger table */
    int64_t dp_rounds;   /* ledger rows */
    int64_t nodp_rounds; /* closed rounds without a ledger row */
    int64_t first_nodp, last_nodp;
    int have_spent;
    double spent; /* epsilon of the ledger sum */
    int64_t spent_round;
    out_table rounds, devices, refused;
} privacy;

static double meta_num(sqlite3 *db, const char *key, int *ok)
{
    char buf[64];
    if (meta_get(db, key, buf, sizeof buf) != 1) {
        *ok = 0;
        return NAN;
    }
    char *end;
    double v = strtod(buf, &end);
    if (*end != '\0')
        *ok = 0;
    return v;
}

/* Epsilon of the ledger (device NULL) or of a device's ledger rounds; NaN
 * when it cannot be computed (no delta, a malformed row: said on stderr). */
static double ledger_epsilon(sqlite3 *db, const char *device, double delta, int64_t *rounds)
{
    fedge_dp_spent spent;
    double orders[FEDGE_DP_N_ORDERS], eps = NAN;
    int r = fedge_dp_ledger_spent(db, device, &spent);
    *rounds = 0;
    if (r != FEDGE_OK) {
        cli_error("privacy ledger%s%s: %s", device ? " of device " : "", device ? device : "",
                  fedge_strerror(r));
        return NAN;
    }
    *rounds = spent.rounds;
    if (spent.rounds == 0)
        return 0.0;
    fedge_policy_dp_orders(orders);
    if (fedge_rdp_to_epsilon(orders, spent.rdp, FEDGE_DP_N_ORDERS, delta, FEDGE_RDP_CONV_IMPROVED,
                             &eps, NULL) != FEDGE_OK)
        return NAN;
    return eps;
}

static int gather_privacy(sqlite3 *db, privacy *p)
{
    static const char *const rcols[] = {"round", "status", "accepted", "dp",
                                        "q", "noise_multiplier", "epsilon_after"};
    static const char *const dcols[] = {"device", "region", "status", "dp_rounds",
                                        "rounds_without_dp", "epsilon", "budget", "remaining",
                                        "used_pct"};
    static const char *const fcols[] = {"round", "reason"};
    sqlite3_stmt *st = NULL;
    int rc = EXIT_USAGE;
    memset(p, 0, sizeof *p);
    out_table_init(&p->rounds, 7, rcols);
    out_table_init(&p->devices, 9, dcols);
    out_table_init(&p->refused, 2, fcols);
    char flag[16];
    int ok = 1;
    p->have_policy = meta_get(db, "policy_name", p->name, sizeof p->name) == 1;
    meta_get(db, "policy_sha256", p->sha, sizeof p->sha);
    p->dp = meta_get(db, "policy_dp_enabled", flag, sizeof flag) == 1 && strcmp(flag, "1") == 0;
    p->clip = meta_num(db, "policy_clip_norm", &ok);
    p->z = meta_num(db, "policy_noise_multiplier", &ok);
    p->delta = meta_num(db, "policy_delta", &ok);
    p->budget = meta_num(db, "policy_epsilon_budget", &ok);
    p->device_budget = meta_num(db, "policy_device_epsilon_budget", &ok);
    if (p->have_policy && !ok)
        p->have_policy = 0;
    p->have_ledger = count_of(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                                  " AND name = 'dp_ledger'") == 1;

    const char *rounds_sql =
        p->have_ledger
            ? "SELECT r.id, r.status, r.n_accepted, l.round IS NOT NULL, l.q, l.sigma, r.epsilon"
              " FROM rounds r LEFT JOIN dp_ledger l ON l.round = r.id ORDER BY r.id"
            : "SELECT id, status, n_accepted, epsilon IS NOT NULL, NULL, NULL, epsilon"
              " FROM rounds ORDER BY id";
    if (prep(db, rounds_sql, &st) != 0)
        goto cleanup;
    while (sqlite3_step(st) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        const char *status = ctext(st, 1);
        int charged = sqlite3_column_int(st, 3);
        out_row(&p->rounds);
        out_int(&p->rounds, 0, id);
        out_text(&p->rounds, 1, status);
        out_int_cell(&p->rounds, 2, st, 2);
        if (status && strcmp(status, "closed") == 0)
            out_text(&p->rounds, 3, charged ? "yes" : "no");
        out_real_cell(&p->rounds, 4, st, 4);
        out_real_cell(&p->rounds, 5, st, 5);
        out_real_cell(&p->rounds, 6, st, 6);
        if (charged) {
            p->spent_round = id;
            if (!p->have_ledger) {
                p->dp_rounds++;
                p->have_spent = 1;
                p->spent = sqlite3_column_double(st, 6);
            }
        } else if (status && strcmp(status, "closed") == 0) {
            if (!p->nodp_rounds++)
                p->first_nodp = id;
            p->last_nodp = id;
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    if (p->have_ledger && p->have_policy) {
        p->spent = ledger_epsilon(db, NULL, p->delta, &p->dp_rounds);
        if (isnan(p->spent))
            goto cleanup;
        p->have_spent = p->dp_rounds > 0;
    }

    if (prep(db, "SELECT id, reason FROM rounds WHERE status = 'refused' ORDER BY id", &st) != 0)
        goto cleanup;
    while (sqlite3_step(st) == SQLITE_ROW) {
        out_row(&p->refused);
        out_int(&p->refused, 0, sqlite3_column_int64(st, 0));
        out_text(&p->refused, 1, ctext(st, 1));
    }
    sqlite3_finalize(st);
    st = NULL;

    /* rounds a device's update entered: closed, not rejected; split by
     * whether the round is in the ledger */
    const char *dev_sql =
        p->have_ledger
            ? "SELECT d.id, d.region, d.status, d.epsilon_spent,"
              " (SELECT count(*) FROM updates u JOIN rounds r ON r.id = u.round"
              "   WHERE u.device = d.id AND u.decision <> 'rejected' AND r.status = 'closed'"
              "   AND NOT EXISTS (SELECT 1 FROM dp_ledger l WHERE l.round = r.id))"
              " FROM devices d ORDER BY d.id"
            : "SELECT d.id, d.region, d.status, d.epsilon_spent,"
              " (SELECT count(*) FROM updates u JOIN rounds r ON r.id = u.round"
              "   WHERE u.device = d.id AND u.decision <> 'rejected' AND r.status = 'closed'"
              "   AND r.epsilon IS NULL)"
              " FROM devices d ORDER BY d.id";
    if (prep(db, dev_sql, &st) != 0)
        goto cleanup;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *id = ctext(st, 0);
        int64_t dp_rounds = 0, nodp = sqlite3_column_int64(st, 4);
        double eps = sqlite3_column_double(st, 3);
        if (p->have_ledger && p->have_policy) {
            eps = ledger_epsilon(db, id ? id : "", p->delta, &dp_rounds);
            if (isnan(eps))
                goto cleanup;
        }
        out_row(&p->devices);
        out_text(&p->devices, 0, id);
        out_text(&p->devices, 1, ctext(st, 1));
        out_text(&p->devices, 2, ctext(st, 2));
        if (p->have_ledger)
            out_int(&p->devices, 3, dp_rounds);
        out_int(&p->devices, 4, nodp);
        /* no epsilon where the device's data went out without noise */
        if (nodp == 0 && (p->dp || dp_rounds > 0))
            out_num(&p->devices, 5, eps);
        if (nodp == 0 && p->have_policy && p->dp && p->device_budget > 0) {
            out_num(&p->devices, 6, p->device_budget);
            out_num(&p->devices, 7, p->device_budget - eps);
            out_num(&p->devices, 8, 100.0 * eps / p->device_budget);
        }
    }
    rc = table_ok(&p->rounds) && table_ok(&p->devices) && table_ok(&p->refused) ? EXIT_OK
                                                                                : EXIT_USAGE;
cleanup:
    sqlite3_finalize(st);
    return rc;
}

static void privacy_free(privacy *p)
{
    out_table_free(&p->rounds);
    out_table_free(&p->devices);
    out_table_free(&p->refused);
}

/* A DP guarantee covers the run: no closed round went out without noise,
 * and DP is on or has charged rounds. */
static int privacy_guaranteed(const privacy *p)
{
    return p->have_policy && p->nodp_rounds == 0 && (p->dp || p->dp_rounds > 0);
}

static void privacy_headline(const privacy *p, char *buf, size_t cap)
{
    char range[64] = "";
    if (p->nodp_rounds > 1 && p->last_nodp - p->first_nodp + 1 == p->nodp_rounds)
        snprintf(range, sizeof range, " (rounds %" PRId64 "..%" PRId64 ")", p->first_nodp,
                 p->last_nodp);
    else if (p->nodp_rounds > 1)
        snprintf(range, sizeof range, " (the first round %" PRId64 ", the last round %" PRId64 ")",
                 p->first_nodp, p->last_nodp);
    else if (p->nodp_rounds == 1)
        snprintf(range, sizeof range, " (round %" PRId64 ")", p->first_nodp);
    if (!p->have_policy)
        snprintf(buf, cap, "no policy recorded in this database (the aggregator writes the "
                           "policy_* meta keys when it loads one)");
    else if (p->nodp_rounds > 0 && p->dp_rounds == 0)
        snprintf(buf, cap,
                 "NO DP GUARANTEE: %" PRId64 " closed round%s%s ran without differential "
                 "privacy; epsilon is undefined, not 0",
                 p->nodp_rounds, p->nodp_rounds == 1 ? "" : "s", range);
    else if (p->nodp_rounds > 0)
        snprintf(buf, cap,
                 "NO DP GUARANTEE for the whole run: %" PRId64 " closed round%s%s ran without "
                 "differential privacy; the %" PRId64 " DP round%s spent epsilon %.4g of budget "
                 "%.6g at delta %.3g",
                 p->nodp_rounds, p->nodp_rounds == 1 ? "" : "s", range, p->dp_rounds,
                 p->dp_rounds == 1 ? "" : "s", p->spent, p->budget, p->delta);
    else if (!p->dp && !p->have_spent)
        snprintf(buf, cap,
                 "differential privacy is off in policy %s: no DP guarantee applies (no round "
                 "has closed)",
                 p->name);
    else if (!p->have_spent)
        snprintf(buf, cap, "no DP round has closed yet; global budget %.6g at delta %.3g",
                 p->budget, p->delta);
    else
        snprintf(buf, cap,
                 "epsilon spent %.4g of budget %.6g (%.1f%%) at delta %.3g after %" PRId64
                 " DP round%s (last: round %" PRId64 ")%s",
                 p->spent, p->budget, 100.0 * p->spent / p->budget, p->delta, p->dp_rounds,
                 p->dp_rounds == 1 ? "" : "s", p->spent_round,
                 p->dp ? "" : "; DP is now off: a further round would carry no guarantee");
}

static void privacy_json(json_w *j, const char *key, const privacy *p)
{
    char head[400];
    privacy_headline(p, head, sizeof head);
    json_obj(j, key);
    if (p->have_policy) {
        json_obj(j, "policy");
        json_str(j, "name", p->name);
        json_str(j, "sha256", p->sha);
        json_bool(j, "dp_enabled", p->dp);
        json_num(j, "clip_norm", p->clip);
        json_num(j, "noise_multiplier", p->z);
        json_num(j, "delta", p->delta);
        json_num(j, "epsilon_budget", p->budget);
        if (p->device_budget > 0)
            json_num(j, "device_epsilon_budget", p->device_budget);
        else
            json_null(j, "device_epsilon_budget");
        json_obj_end(j);
    } else {
        json_null(j, "policy");
    }
    json_obj(j, "global");
    json_bool(j, "dp", privacy_guaranteed(p));
    if (privacy_guaranteed(p))
        json_num(j, "epsilon", p->have_spent ? p->spent : 0.0);
    else
        json_null(j, "epsilon");
    if (p->have_spent)
        json_num(j, "epsilon_spent", p->spent);
    else
        json_null(j, "epsilon_spent");
    if (p->have_policy && p->dp)
        json_num(j, "epsilon_budget", p->budget);
    else
        json_null(j, "epsilon_budget");
    json_int(j, "dp_rounds", p->dp_rounds);
    json_int(j, "rounds_without_dp", p->nodp_rounds);
    json_bool(j, "ledger", p->have_ledger);
    json_str(j, "summary", head);
    json_obj_end(j);
    json_table(j, "rounds", &p->rounds);
    json_table(j, "refused_rounds", &p->refused);
    json_table(j, "devices", &p->devices);
    json_obj_end(j);
}

static void privacy_text(const privacy *p)
{
    char head[400];
    privacy_headline(p, head, sizeof head);
    if (p->have_policy)
        printf("policy %s (sha256 %.16s...)%s\n", p->name, p->sha,
               p->dp ? "" : ": differential privacy off");
    if (p->have_policy && p->dp && p->device_budget > 0)
        printf("DP-FedAvg: clipping norm %.6g, noise multiplier %.6g, delta %.3g, per-device "
               "budget %.6g\n",
               p->clip, p->z, p->delta, p->device_budget);
    else if (p->have_policy && p->dp)
        printf("DP-FedAvg: clipping norm %.6g, noise multiplier %.6g, delta %.3g, no per-device "
               "budget\n",
               p->clip, p->z, p->delta);
    printf("global: %s\n", head);
    if (!p->have_ledger)
        printf("note: this database predates the privacy ledger; epsilon is as each round "
               "recorded it\n");
    if (p->refused.n_rows) {
        section_text("rounds refused by the budget:");
        out_print_text(stdout, &p->refused, "  ");
    }
    section_text("per device (epsilon composed over the DP rounds it contributed to; none where "
                 "it contributed to a round without DP):");
    if (p->devices.n_rows)
        out_print_text(stdout, &p->devices, "  ");
    else
        printf("  no devices\n");
}

int cmd_privacy(sqlite3 *db, const cli_opts *o)
{
    privacy p;
    int rc = gather_privacy(db, &p);
    if (rc == EXIT_OK) {
        if (o->json) {
            json_w j;
            json_init(&j, stdout);
            privacy_json(&j, NULL, &p);
            json_done(&j);
        } else {
            privacy_text(&p);
        }
    }
    privacy_free(&p);
    return rc;
}

/* ---- decisions ----------------------------------------------------------------------------- */

static int gather_decisions(sqlite3 *db, int have_round, int64_t round, const char *device,
                            int rejected, out_table *t)
{
    static const char *const cols[] = {"source", "id", "round", "device", "at",
                                       "decision", "rule", "reason"};
    sqlite3_stmt *st = NULL;
    out_table_init(t, 8, cols);
    if (prep(db,
             "SELECT 'update', id, round, device, received_at, decision, rule, reason"
             "  FROM updates WHERE (?1 IS NULL OR round = ?1) AND (?2 IS NULL OR device = ?2)"
             "   AND (?3 = 0 OR decision = 'rejected')"
             " UNION ALL "
             "SELECT 'event', id, round, device, at, kind, rule, detail"
             "  FROM events WHERE rule IS NOT NULL"
             "   AND (?1 IS NULL OR round = ?1) AND (?2 IS NULL OR device = ?2)"
             "   AND (?3 = 0 OR kind LIKE '%refused%' OR kind LIKE '%rejected%'"
             "        OR kind LIKE '%failed%')"
             " ORDER BY 3, 5, 1 DESC, 2",
             &st) != 0)
        return EXIT_USAGE;
    if (have_round)
        sqlite3_bind_int64(st, 1, round);
    if (device)
        sqlite3_bind_text(st, 2, device, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, rejected);
    while (sqlite3_step(st) == SQLITE_ROW) {
        out_row(t);
        out_text(t, 0, ctext(st, 0));
        out_int(t, 1, sqlite3_column_int64(st, 1));
        out_int_cell(t, 2, st, 2);
        out_text(t, 3, ctext(st, 3));
        out_time_cell(t, 4, st, 4);
        out_text(t, 5, ctext(st, 5));
        out_text(t, 6, ctext(st, 6));
        out_text(t, 7, ctext(st, 7));
    }
    sqlite3_finalize(st);
    return table_ok(t) ? EXIT_OK : EXIT_USAGE;
}

/* "7 decisions: 4 accepted, 1 clipped, 2 rejected (region 1, device_status 1)". */
static void decisions_summary(const out_table *t, char *buf, size_t cap)
{
    size_t acc = 0, clip = 0, rej = 0, ev = 0;
    struct {
        const char *rule;
        size_t n;
    } rules[32];
    size_t n_rules = 0;
    for (size_t r = 0; r < t->n_rows; r++) {
        const char *src = t->cells[r * t->n_cols].text;
        const char *dec = t->cells[r * t->n_cols + 5].text;
        const char *rule = t->cells[r * t->n_cols + 6].text;
        if (src && strcmp(src, "event") == 0) {
            ev++;
            continue;
        }
        if (dec && strcmp(dec, "accepted") == 0)
            acc++;
        else if (dec && strcmp(dec, "clipped") == 0)
            clip++;
        else {
            rej++;
            size_t i = 0;
            while (i < n_rules && strcmp(rules[i].rule, rule ? rule : "?") != 0)
                i++;
            if (i == n_rules && n_rules < 32) {
                rules[n_rules].rule = rule ? rule : "?";
                rules[n_rules++].n = 0;
            }
            if (i < 32)
                rules[i].n++;
        }
    }
    int n = snprintf(buf, cap, "%zu update decision%s: %zu accepted, %zu clipped, %zu rejected",
                     acc + clip + rej, acc + clip + rej == 1 ? "" : "s", acc, clip, rej);
    for (size_t i = 0; i < n_rules && n > 0 && (size_t)n < cap; i++)
        n += snprintf(buf + n, cap - (size_t)n, "%s%s %zu", i == 0 ? " (" : ", ", rules[i].rule,
                      rules[i].n);
    if (n_rules && n > 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, ")");
    if (n > 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, "; %zu round-level decision%s", ev, ev == 1 ? "" : "s");
}

int cmd_decisions(sqlite3 *db, const cli_opts *o)
{
    out_table t;
    int rc = gather_decisions(db, o->have_round, o->round, o->device, o->rejected, &t);
    if (rc == EXIT_OK) {
        char summary[512];
        decisions_summary(&t, summary, sizeof summary);
        if (o->json) {
            json_w j;
            json_init(&j, stdout);
            json_obj(&j, NULL);
            json_obj(&j, "filter");
            if (o->have_round)
                json_int(&j, "round", o->round);
            else
                json_null(&j, "round");
            json_str(&j, "device", o->device);
            json_bool(&j, "rejected_only", o->rejected);
            json_obj_end(&j);
            json_str(&j, "summary", summary);
            json_table(&j, "decisions", &t);
            json_obj_end(&j);
            json_done(&j);
        } else {
            printf("%s\n", summary);
            if (t.n_rows)
                out_print_text(stdout, &t, "  ");
        }
    }
    out_table_free(&t);
    return rc;
}

/* ---- report -------------------------------------------------------------------------------- */

static int gather_summary(sqlite3 *db, const char *db_path, out_table *t, char *latest,
                          size_t latest_cap)
{
    static const char *const cols[] = {"item", "value"};
    static const struct {
        const char *item, *sql;
    } counts[] = {
        {"rounds closed", "SELECT count(*) FROM rounds WHERE status = 'closed'"},
        {"rounds failed", "SELECT count(*) FROM rounds WHERE status = 'failed'"},
        {"rounds refused", "SELECT count(*) FROM rounds WHERE status = 'refused'"},
        {"rounds open", "SELECT count(*) FROM rounds WHERE status = 'open'"},
        {"updates accepted", "SELECT count(*) FROM updates WHERE decision = 'accepted'"},
        {"updates clipped", "SELECT count(*) FROM updates WHERE decision = 'clipped'"},
        {"updates rejected", "SELECT count(*) FROM updates WHERE decision = 'rejected'"},
        {"delta bodies dropped by retention", "SELECT count(*) FROM updates WHERE delta_pruned_round IS NOT NULL"},
        {"models", "SELECT count(*) FROM models"},
        {"devices", "SELECT count(*) FROM devices"},
        {"devices revoked", "SELECT count(*) FROM devices WHERE status = 'revoked'"},
        {"devices suspended", "SELECT count(*) FROM devices WHERE status = 'suspended'"},
        {"audit entries", "SELECT count(*) FROM audit"},
        {"signed heads", "SELECT count(*) FROM audit_heads"},
    };
    char buf[160];
    out_table_init(t, 2, cols);
    out_row(t);
    out_text(t, 0, "database");
    out_text(t, 1, db_path);
    if (meta_fetch(db, "created_at", buf, sizeof buf, 0) == 1) { /* cells escape */
        out_row(t);
        out_text(t, 0, "database created");
        out_text(t, 1, buf);
    }
    if (meta_fetch(db, "model_spec", buf, sizeof buf, 0) == 1) { /* cells escape */
        out_row(t);
        out_text(t, 0, "model spec");
        out_text(t, 1, buf);
    }
    if (meta_fetch(db, "policy_name", buf, sizeof buf, 0) == 1) { /* cells escape */
        out_row(t);
        out_text(t, 0, "policy");
        out_text(t, 1, buf);
    }
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(counts); i++) {
        int64_t n = count_of(db, counts[i].sql);
        if (n < 0)
            return EXIT_USAGE;
        out_row(t);
        out_text(t, 0, counts[i].item);
        out_int(t, 1, n);
    }
    sqlite3_stmt *st = NULL;
    /* the strategies the rounds ran, with their parameters (rounds.strategy) */
    if (prep(db, "SELECT strategy, min(id), max(id), count(*) FROM rounds GROUP BY strategy ORDER BY min(id)",
             &st) != 0)
        return EXIT_USAGE;
    while (sqlite3_step(st) == SQLITE_ROW) {
        out_row(t);
        out_text(t, 0, "strategy");
        out_textf(t, 1, "%s: %lld round%s (%lld-%lld)", ctext(st, 0), (long long)sqlite3_column_int64(st, 3),
                  sqlite3_column_int64(st, 3) == 1 ? "" : "s", (long long)sqlite3_column_int64(st, 1),
                  (long long)sqlite3_column_int64(st, 2));
    }
    sqlite3_finalize(st);
    st = NULL;
    latest[0] = '\0';
    if (prep(db, "SELECT version, kind, round FROM models ORDER BY created_at DESC, rowid DESC "
                 "LIMIT 1", &st) != 0)
        return EXIT_USAGE;
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(latest, latest_cap, "%s", ctext(st, 0));
        out_row(t);
        out_text(t, 0, "latest model");
        out_textf(t, 1, "%s (%s, round %lld)", ctext(st, 0), ctext(st, 1),
                  (long long)sqlite3_column_int64(st, 2));
    }
    sqlite3_finalize(st);
    return table_ok(t) ? EXIT_OK : EXIT_USAGE;
}

/* Per round (or async step) that edges reported training metrics for
 * (round_training; a log written before it has none): the sample-weighted
 * mean and standard deviation of their loss and accuracy, and the test
 * accuracy of the round's model. */
static int gather_training(sqlite3 *db, out_table *t)
{
    static const char *const cols[] = {"round", "status", "reports", "samples", "train_loss",
                                       "train_loss_sd", "train_accuracy", "train_accuracy_sd",
                                       "test_accuracy"};
    sqlite3_stmt *st = NULL;
    out_table_init(t, FEDGE_ARRAY_LEN(cols), cols);
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE name = 'round_training'", -1, &st, NULL) !=
        SQLITE_OK)
        return EXIT_USAGE;
    int have = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (!have)
        return table_ok(t) ? EXIT_OK : EXIT_USAGE;
    if (prep(db, "SELECT t.round, r.status, t.reports, t.samples, t.train_loss, t.train_loss_sd,"
                 " t.train_accuracy, t.train_accuracy_sd, r.accuracy FROM round_training t"
                 " LEFT JOIN rounds r ON r.id = t.round ORDER BY t.round", &st) != 0)
        return EXIT_USAGE;
    while (sqlite3_step(st) == SQLITE_ROW) {
        out_row(t);
        out_int(t, 0, sqlite3_column_int64(st, 0));
        out_text(t, 1, ctext(st, 1));
        out_int(t, 2, sqlite3_column_int64(st, 2));
        out_int(t, 3, sqlite3_column_int64(st, 3));
        for (int i = 4; i <= 8; i++)
            out_real_cell(t, (size_t)i, st, i);
    }
    sqlite3_finalize(st);
    return table_ok(t) ? EXIT_OK : EXIT_USAGE;
}

/* The keys ledger (policy/audit.h): one row per keys event, its detail in
 * columns; a detail that does not parse is shown whole in `change` (verify
 * reports it as keys_ledger). */
static int gather_keys(sqlite3 *db, out_table *t)
{
    static const char *const cols[] = {"device", "change", "region", "key_id", "was_region",
                                       "was_key_id", "source", "at", "event"};
    sqlite3_stmt *st = NULL;
    out_table_init(t, FEDGE_ARRAY_LEN(cols), cols);
    if (prep(db, "SELECT device, detail, at, id FROM events WHERE kind = '" FEDGE_AUDIT_KEYS_EVENT
                 "' ORDER BY id", &st) != 0)
        return EXIT_USAGE;
    while (sqlite3_step(st) == SQLITE_ROW) {
        fedge_keys_event ev;
        const char *detail = ctext(st, 1);
        int ok = detail && fedge_audit_keys_event_parse(detail, &ev) == FEDGE_OK;
        out_row(t);
        out_text(t, 0, ctext(st, 0));
        out_text(t, 1, ok ? fedge_keys_change_name(ev.change) : detail);
        out_text(t, 2, ok ? ev.region : NULL);
        out_text(t, 3, ok ? ev.key_id : NULL);
        out_text(t, 4, ok && ev.was_region[0] ? ev.was_region : NULL);
        out_text(t, 5, ok && ev.was_key_id[0] ? ev.was_key_id : NULL);
        out_text(t, 6, ok ? ev.source : NULL);
        out_time_cell(t, 7, st, 2);
        out_int(t, 8, sqlite3_column_int64(st, 3));
    }
    sqlite3_finalize(st);
    return table_ok(t) ? EXIT_OK : EXIT_USAGE;
}

/* Revoked devices, each with its influence view. */
static int revoked_devices(sqlite3 *db, char (**ids)[80], size_t *n)
{
    sqlite3_stmt *st = NULL;
    *ids = NULL;
    *n = 0;
    size_t cap = 0;
    if (prep(db, "SELECT id FROM devices WHERE status = 'revoked' ORDER BY id", &st) != 0)
        return EXIT_USAGE;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 8;
            char(*x)[80] = realloc(*ids, cap * sizeof *x);
            if (!x) {
                sqlite3_finalize(st);
                cli_error("out of memory");
                return EXIT_USAGE;
            }
            *ids = x;
        }
        snprintf((*ids)[(*n)++], 80, "%s", ctext(st, 0));
    }
    sqlite3_finalize(st);
    return EXIT_OK;
}

typedef struct {
    out_table summary, decisions;
    privacy priv;
    lineage lin;
    int have_lineage;
    fedge_audit_report *rep;
    int verified;
    char (*revoked)[80];
    size_t n_revoked;
    device_view *views;
    int has_cycle; /* lineage_cycle: a verification failure, with or without --pubkey */
    char cycle[512];
    out_table training;
    out_table keys;
} report;

static void report_free(report *r)
{
    out_table_free(&r->summary);
    out_table_free(&r->decisions);
    out_table_free(&r->training);
    out_table_free(&r->keys);
    privacy_free(&r->priv);
    if (r->have_lineage)
        lineage_free(&r->lin);
    for (size_t i = 0; r->views && i < r->n_revoked; i++)
        device_view_free(&r->views[i]);
    free(r->views);
    free(r->revoked);
    free(r->rep);
}

static void report_md(const report *r, const cli_opts *o)
{
    char now[32], line[512];
    out_time((double)time(NULL), now, sizeof now);
    printf("# fedge audit report\n\nDatabase `%s`, generated %s.\n\n## Summary\n\n", safe(o->db_path),
           now);
    out_print_md(stdout, &r->summary);
    if (r->has_cycle) {
        char msg[600];
        cycle_message(r->cycle, msg, sizeof msg);
        printf("\n**FAILED**: `" LINEAGE_CYCLE "`: %s.\n", safe(msg));
    }
    printf("\n## Verification\n\n");
    if (!r->verified) {
        printf("Not run: give `--pubkey` (the aggregator's public key) to verify the chain, "
               "the signatures and the model files.\n");
    } else {
        const fedge_audit_report *v = r->rep;
        printf("**%s**: %zu audit entries, %zu signed heads (the last covers entry %" PRId64
               ", round %" PRId64 "), %zu entries after it, %zu rows compared, %zu model files "
               "re-hashed.\n",
               v->ok && !r->has_cycle ? "OK" : "FAILED", v->n_entries, v->n_heads, v->last_head_seq,
               v->last_head_round, v->unsigned_tail, v->n_rows, v->n_files);
        if (v->last_head_seq >= 0)
            printf("\nLast signed head: `%s`.\n", v->last_head_hash);
        if (!v->ok || r->has_cycle) {
            out_table t;
            failures_table(v, r->has_cycle ? r->cycle : NULL, &t);
            printf("\n");
            out_print_md(stdout, &t);
            out_table_free(&t);
        }
    }
    printf("\n## Privacy\n\n");
    privacy_headline(&r->priv, line, sizeof line);
    printf("%s.\n\n", line);
    if (r->priv.have_policy && r->priv.dp)
        printf("DP-FedAvg with clipping norm %.6g, noise multiplier %.6g, delta %.3g; "
               "per-device budget %.6g (0: none).\n\n",
               r->priv.clip, r->priv.z, r->priv.delta, r->priv.device_budget);
    if (r->priv.refused.n_rows) {
        printf("Rounds refused by the budget:\n\n");
        out_print_md(stdout, &r->priv.refused);
        printf("\n");
    }
    if (r->priv.devices.n_rows)
        out_print_md(stdout, &r->priv.devices);
    printf("\n## Refused and round-level decisions\n\n");
    decisions_summary(&r->decisions, line, sizeof line);
    printf("%s.\n\n", line);
    if (r->decisions.n_rows)
        out_print_md(stdout, &r->decisions);
    printf("\n## Training reported by the edges\n\n");
    if (r->training.n_rows)
        out_print_md(stdout, &r->training);
    else
        printf("None.\n");
    printf("\n## Keys file changes\n\n");
    if (r->keys.n_rows)
        out_print_md(stdout, &r->keys);
    else
        printf("None recorded.\n");
    printf("\n## Revoked devices\n\n");
    if (!r->n_revoked)
        printf("None.\n");
    for (size_t i = 0; i < r->n_revoked; i++) {
        printf("### %s\n\nModel versions its accepted updates influenced:\n\n", safe(r->revoked[i]));
        if (r->views[i].influenced.n_rows)
            out_print_md(stdout, &r->views[i].influenced);
        else
            printf("None.\n");
        printf("\n");
    }
    printf("\n## Lineage of the latest model\n\n");
    if (!r->have_lineage) {
        printf("No models.\n");
        return;
    }
    lineage_summary(&r->lin, line, sizeof line);
    printf("Model `%s`: %s.\n\n", safe(r->lin.version), line);
    out_print_md(stdout, &r->lin.models);
    printf("\n");
    if (r->lin.contributions.n_rows)
        out_print_md(stdout, &r->lin.contributions);
}

static void report_json(const report *r, const cli_opts *o)
{
    char now[32];
    out_time((double)time(NULL), now, sizeof now);
    json_w j;
    json_init(&j, stdout);
    json_obj(&j, NULL);
    json_str(&j, "database", o->db_path);
    json_str(&j, "generated_at", now);
    json_table(&j, "summary", &r->summary);
    cycle_json(&j, r->has_cycle, r->cycle);
    if (r->verified)
        verify_json(&j, "verify", r->rep, r->has_cycle ? r->cycle : NULL);
    else
        json_null(&j, "verify");
    privacy_json(&j, "privacy", &r->priv);
    json_table(&j, "decisions", &r->decisions);
    json_table(&j, "training", &r->training);
    json_table(&j, "keys_changes", &r->keys);
    json_arr(&j, "revoked_devices");
    for (size_t i = 0; i < r->n_revoked; i++)
        device_json(&j, NULL, &r->views[i]);
    json_arr_end(&j);
    if (r->have_lineage)
        lineage_json(&j, "lineage", &r->lin, NULL);
    else
        json_null(&j, "lineage");
    json_obj_end(&j);
    json_done(&j);
}

static void report_csv(const report *r)
{
    out_print_csv(stdout, &r->summary, "summary", 1);
    if (r->verified) {
        static const char *const cols[] = {"ok", "entries", "signed_heads", "unsigned_tail",
                                           "rows", "model_files", "failures"};
        out_table t;
        out_table_init(&t, 7, cols);
        out_row(&t);
        out_text(&t, 0, r->rep->ok && !r->has_cycle ? "true" : "false");
        out_int(&t, 1, (int64_t)r->rep->n_entries);
        out_int(&t, 2, (int64_t)r->rep->n_heads);
        out_int(&t, 3, (int64_t)r->rep->unsigned_tail);
        out_int(&t, 4, (int64_t)r->rep->n_rows);
        out_int(&t, 5, (int64_t)r->rep->n_files);
        out_int(&t, 6, (int64_t)r->rep->n_failures + r->has_cycle);
        fputs("\r\n", stdout);
        out_print_csv(stdout, &t, "verify", 1);
        out_table_free(&t);
    }
    if (r->verified || r->has_cycle) {
        static const fedge_audit_report none = {.ok = 1};
        out_table t;
        failures_table(r->verified ? r->rep : &none, r->has_cycle ? r->cycle : NULL, &t);
        fputs("\r\n", stdout);
        out_print_csv(stdout, &t, "verify_failures", 1);
        out_table_free(&t);
    }
    fputs("\r\n", stdout);
    out_print_csv(stdout, &r->priv.rounds, "privacy_rounds", 1);
    fputs("\r\n", stdout);
    out_print_csv(stdout, &r->priv.devices, "privacy_devices", 1);
    fputs("\r\n", stdout);
    out_print_csv(stdout, &r->decisions, "decisions", 1);
    fputs("\r\n", stdout);
    out_print_csv(stdout, &r->training, "training", 1);
    fputs("\r\n", stdout);
    out_print_csv(stdout, &r->keys, "keys_changes", 1);
    for (size_t i = 0; i < r->n_revoked; i++) {
        fputs("\r\n", stdout);
        out_print_csv(stdout, &r->views[i].influenced, r->revoked[i], 1);
    }
    if (r->have_lineage) {
        fputs("\r\n", stdout);
        out_print_csv(stdout, &r->lin.models, "lineage_models", 1);
        fputs("\r\n", stdout);
        out_print_csv(stdout, &r->lin.contributions, "lineage_contributions", 1);
    }
}

/* The page goes to a temporary file beside FILE, renamed over it when
 * complete: a failed run leaves no partial report. */
static int report_html(sqlite3 *db, const report *r, const cli_opts *o, const char *latest)
{
    char head[400], verify[600], tmp[4200], cycle[600];
    privacy_headline(&r->priv, head, sizeof head);
    html_inputs in = {.db_path = o->db_path, .summary = &r->summary, .privacy_headline = head,
                      .latest = latest, .refused = &r->decisions, .keys = &r->keys};
    if (r->has_cycle) {
        cycle_message(r->cycle, cycle, sizeof cycle);
        in.cycle = cycle;
    }
    if (r->verified) {
        const fedge_audit_report *v = r->rep;
        snprintf(verify, sizeof verify,
                 "%zu audit entries, %zu signed heads (the last covers entry %" PRId64
                 ", round %" PRId64 "), %zu entries after it, %zu rows compared, %zu model files "
                 "re-hashed, %zu failure%s",
                 v->n_entries, v->n_heads, v->last_head_seq, v->last_head_round, v->unsigned_tail,
                 v->n_rows, v->n_files, v->n_failures + (size_t)r->has_cycle,
                 v->n_failures + (size_t)r->has_cycle == 1 ? "" : "s");
        size_t n = strlen(verify);
        if (v->n_rotations)
            snprintf(verify + n, sizeof verify - n,
                     "; signing keys: %zu rotation%s followed from the key given (sha256 %.16s...), heads now "
                     "signed by sha256 %.16s...",
                     v->n_rotations, v->n_rotations == 1 ? "" : "s", v->key_anchor, v->key_in_force);
        in.verify_line = verify;
        in.verify_failed = !v->ok || r->has_cycle;
    }
    if (!o->out) {
        if (html_report(stdout, db, &in) != 0)
            return EXIT_USAGE;
        return EXIT_OK;
    }
    int n = snprintf(tmp, sizeof tmp, "%s.XXXXXX", o->out);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        cli_error("--out %s: path too long", o->out);
        return EXIT_USAGE;
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        cli_error("cannot write %s: %s", o->out, strerror(errno));
        return EXIT_USAGE;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        cli_error("cannot write %s: %s", o->out, strerror(errno));
        close(fd);
        unlink(tmp);
        return EXIT_USAGE;
    }
    int rc = html_report(f, db, &in) == 0 ? EXIT_OK : EXIT_USAGE;
    int werr = ferror(f) || fchmod(fd, 0644) != 0 || fflush(f) != 0 || fsync(fd) != 0;
    int saved = errno;
    if (fclose(f) != 0 && !werr) {
        werr = 1;
        saved = errno;
    }
    if (rc == EXIT_OK && werr) {
        cli_error("cannot write %s: %s", o->out, strerror(saved));
        rc = EXIT_USAGE;
    }
    if (rc == EXIT_OK && rename(tmp, o->out) != 0) {
        cli_error("cannot write %s: %s", o->out, strerror(errno));
        rc = EXIT_USAGE;
    }
    if (rc != EXIT_OK)
        unlink(tmp);
    return rc;
}

int cmd_report(sqlite3 *db, const cli_opts *o)
{
    report r;
    char latest[FEDGE_HASH_HEX_LEN + 1];
    int rc;
    memset(&r, 0, sizeof r);
    const char *format = o->format ? o->format : (o->json ? "json" : "md");
    if (strcmp(format, "md") != 0 && strcmp(format, "json") != 0 && strcmp(format, "csv") != 0 &&
        strcmp(format, "html") != 0) {
        cli_error("--format must be md, json, csv or html, not '%s'", format);
        return EXIT_USAGE;
    }
    rc = gather_summary(db, o->db_path, &r.summary, latest, sizeof latest);
    if (rc == EXIT_OK) {
        r.has_cycle = parent_cycle(db, r.cycle, sizeof r.cycle);
        if (r.has_cycle < 0)
            rc = EXIT_USAGE;
    }
    if (rc == EXIT_OK && o->pubkey) {
        r.rep = malloc(sizeof *r.rep);
        if (!r.rep) {
            cli_error("out of memory");
            rc = EXIT_USAGE;
        } else {
            rc = run_verify(db, o, r.rep);
            r.verified = rc == EXIT_OK;
        }
    }
    if (rc == EXIT_OK)
        rc = gather_privacy(db, &r.priv);
    if (rc == EXIT_OK)
        rc = gather_decisions(db, 0, 0, NULL, 1, &r.decisions);
    if (rc == EXIT_OK)
        rc = gather_training(db, &r.training);
    if (rc == EXIT_OK)
        rc = gather_keys(db, &r.keys);
    if (rc == EXIT_OK)
        rc = revoked_devices(db, &r.revoked, &r.n_revoked);
    if (rc == EXIT_OK && r.n_revoked) {
        r.views = calloc(r.n_revoked, sizeof *r.views);
        if (!r.views) {
            cli_error("out of memory");
            rc = EXIT_USAGE;
        }
        for (size_t i = 0; rc == EXIT_OK && i < r.n_revoked; i++)
            rc = gather_device(db, r.revoked[i], &r.views[i]);
    }
    if (rc == EXIT_OK && latest[0]) {
        rc = gather_lineage(db, latest, &r.lin);
        r.have_lineage = 1;
    }
    if (rc == EXIT_OK && strcmp(format, "html") == 0) {
        rc = report_html(db, &r, o, latest);
        if (rc == EXIT_OK && ((r.verified && !r.rep->ok) || r.has_cycle))
            rc = EXIT_VERIFY_FAILED;
    } else if (rc == EXIT_OK) {
        if (strcmp(format, "json") == 0)
            report_json(&r, o);
        else if (strcmp(format, "csv") == 0)
            report_csv(&r);
        else
            report_md(&r, o);
        rc = (r.verified && !r.rep->ok) || r.has_cycle ? EXIT_VERIFY_FAILED : EXIT_OK;
    }
    report_free(&r);
    return rc;
}
