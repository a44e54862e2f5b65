/* tiers.c — the lineage across an aggregation tree (tiers.h). */
#include "tiers.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "audit.h"
#include "cli.h"
#include "close.h"
#include "common.h"
#include "hash.h"
#include "store.h"
#include "text.h"

static const char *const HEAD_COLS[] = {"root_round", "update", "head", "match"};
static const char *const CONTRIB_COLS[] = {"relay", "root_round", "device", "n_samples"};

static size_t col_of(const out_table *t, const char *name)
{
    for (size_t i = 0; i < t->n_cols; i++)
        if (strcmp(t->cols[i], name) == 0)
            return i;
    return t->n_cols;
}

static const char *cell(const out_table *t, size_t row, size_t col)
{
    return col < t->n_cols ? t->cells[row * t->n_cols + col].text : NULL;
}

static void fail(tier *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(tier *t, const char *fmt, ...)
{
    t->verified = 0;
    if (t->failure[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->failure, sizeof t->failure, fmt, ap);
    va_end(ap);
}

/* The relay database's model store: DB_DIR/models when it exists. */
static void models_dir(const char *db_path, char *out, size_t cap)
{
    const char *slash = strrchr(db_path, '/');
    char dir[2048];
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash == db_path ? 1 : slash - db_path), db_path);
    snprintf(out, cap, "%s/models", dir);
    struct stat st;
    if (stat(out, &st) != 0 || !S_ISDIR(st.st_mode))
        snprintf(out, cap, "%s", dir);
}

/* The head hash the root logged for update `id` (its relay_head event). */
static int root_head(sqlite3 *root, const char *update, char hex[FEDGE_HASH_HEX_LEN], int *found)
{
    sqlite3_stmt *st = NULL;
    char prefix[48];
    *found = 0;
    snprintf(prefix, sizeof prefix, "update %s: ", update);
    if (sqlite3_prepare_v2(root, "SELECT detail FROM events WHERE kind=?1 AND substr(detail, 1, length(?2)) = ?2"
                                 " ORDER BY id DESC LIMIT 1", -1, &st, NULL) != SQLITE_OK) {
        cli_error("database query failed: %s", sqlite3_errmsg(root));
        return EXIT_USAGE;
    }
    sqlite3_bind_text(st, 1, FEDGE_CLOSE_RELAY_HEAD_EVENT, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, prefix, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *d = (const char *)sqlite3_column_text(st, 0);
        const char *h = d ? strstr(d, " head ") : NULL;
        if (h && strlen(h + 6) == FEDGE_HASH_HEX_LEN - 1) {
            snprintf(hex, FEDGE_HASH_HEX_LEN, "%s", h + 6);
            *found = 1;
        }
    }
    sqlite3_finalize(st);
    return 0;
}

/* One relay database against the root's contributions. */
static int gather_one(sqlite3 *root, const out_table *contrib, tier *t)
{
    sqlite3 *rdb = NULL;
    sqlite3_stmt *st = NULL;
    fedge_audit_report *rep = NULL;
    char models[2200];
    int rc = EXIT_USAGE;
    t->verified = 1;
    if (fedge_store_open_db(t->db_path, 1, &rdb) != FEDGE_OK) {
        cli_error("cannot open relay database %s", t->db_path);
        goto cleanup;
    }
    if (sqlite3_prepare_v2(rdb, "SELECT value FROM meta WHERE key='upstream_id'", -1, &st, NULL) != SQLITE_OK)
        goto sql_error;
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(t->relay, sizeof t->relay, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    st = NULL;
    if (!t->relay[0])
        fail(t, "%s is not a relay's database (no meta upstream_id)", t->db_path);

    rep = malloc(sizeof *rep);
    if (!rep) {
        cli_error("out of memory");
        goto cleanup;
    }
    models_dir(t->db_path, models, sizeof models);
    int vr = fedge_audit_verify(rdb, t->pubkey, models, rep);
    if (vr != FEDGE_OK && rep->n_failures == 0) {
        cli_error("cannot verify relay database %s with %s: %s", t->db_path, t->pubkey, fedge_strerror(vr));
        goto cleanup;
    }
    t->chain_ok = rep->ok;
    if (!rep->ok)
        fail(t, "the relay's log does not verify: %s", rep->failures[0].message);

    size_t c_round = col_of(contrib, "round"), c_update = col_of(contrib, "update"),
           c_device = col_of(contrib, "device");
    if (sqlite3_prepare_v2(rdb, "SELECT count(*) FROM audit_heads WHERE round=? AND hex(head_hash)=upper(?)", -1,
                           &st, NULL) != SQLITE_OK)
        goto sql_error;
    sqlite3_stmt *ups = NULL;
    if (sqlite3_prepare_v2(rdb, "SELECT device, n_samples FROM updates WHERE round=? AND decision<>'rejected'"
                                " ORDER BY device", -1, &ups, NULL) != SQLITE_OK)
        goto sql_error;
    for (size_t r = 0; r < contrib->n_rows; r++) {
        const char *dev = cell(contrib, r, c_device), *round = cell(contrib, r, c_round),
                   *update = cell(contrib, r, c_update);
        if (!dev || !round || !update || !t->relay[0] || strcmp(dev, t->relay) != 0)
            continue;
        char hex[FEDGE_HASH_HEX_LEN] = "";
        int found = 0;
        if (root_head(root, update, hex, &found) != 0) {
            sqlite3_finalize(ups);
            goto cleanup;
        }
        long long rn = strtoll(round, NULL, 10);
        int match = 0;
        t->n_heads++;
        if (found) {
            sqlite3_reset(st);
            sqlite3_bind_int64(st, 1, rn);
            sqlite3_bind_text(st, 2, hex, -1, SQLITE_STATIC);
            match = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) > 0;
        }
        out_row(&t->heads);
        out_int(&t->heads, 0, rn);
        out_text(&t->heads, 1, update);
        out_text(&t->heads, 2, found ? hex : NULL);
        out_text(&t->heads, 3, match ? "yes" : "no");
        if (match) {
            t->n_matched++;
        } else if (!found) {
            fail(t, "the root logged no relay head for update %s (round %lld)", update, rn);
        } else {
            fail(t, "the root logged head %s for this relay's round %lld; no signed head of the relay's log has it",
                 hex, rn);
        }
        sqlite3_reset(ups);
        sqlite3_bind_int64(ups, 1, rn);
        while (sqlite3_step(ups) == SQLITE_ROW) {
            out_row(&t->contributions);
            out_text(&t->contributions, 0, t->relay);
            out_int(&t->contributions, 1, rn);
            out_text(&t->contributions, 2, (const char *)sqlite3_column_text(ups, 0));
            out_int(&t->contributions, 3, sqlite3_column_int64(ups, 1));
        }
    }
    sqlite3_finalize(ups);
    if (t->n_heads == 0)
        fail(t, "relay %s has no partial sum in this model's lineage", t->relay);
    if (out_table_failed(&t->heads) || out_table_failed(&t->contributions)) {
        cli_error("out of memory");
        goto cleanup;
    }
    rc = 0;
    goto cleanup;
sql_error:
    cli_error("relay database %s: query failed: %s", t->db_path, sqlite3_errmsg(rdb));
cleanup:
    sqlite3_finalize(st);
    free(rep);
    if (rdb)
        sqlite3_close_v2(rdb);
    return rc;
}

int tiers_gather(sqlite3 *root, const out_table *contrib, const char *const *dbs, const char *const *pubkeys,
                 size_t n, tiers *out)
{
    memset(out, 0, sizeof *out);
    out->ok = 1;
    if (n > TIERS_MAX) {
        cli_error("at most %d --relay-db", TIERS_MAX);
        return EXIT_USAGE;
    }
    for (size_t i = 0; i < n; i++) {
        tier *t = &out->t[i];
        t->db_path = dbs[i];
        t->pubkey = pubkeys[i];
        out_table_init(&t->heads, 4, HEAD_COLS);
        out_table_init(&t->contributions, 4, CONTRIB_COLS);
        out->n = i + 1;
        if (gather_one(root, contrib, t) != 0)
            return EXIT_USAGE;
        out->ok &= t->verified;
    }
    return 0;
}

void tiers_free(tiers *t)
{
    for (size_t i = 0; i < t->n; i++) {
        out_table_free(&t->t[i].heads);
        out_table_free(&t->t[i].contributions);
    }
    t->n = 0;
}

void tiers_json(json_w *j, const char *key, const tiers *ts)
{
    json_arr(j, key);
    for (size_t i = 0; i < ts->n; i++) {
        const tier *t = &ts->t[i];
        json_obj(j, NULL);
        json_str(j, "relay", t->relay[0] ? t->relay : NULL);
        json_str(j, "db", t->db_path);
        json_bool(j, "verified", t->verified);
        json_bool(j, "chain_ok", t->chain_ok);
        json_str(j, "failure", t->failure[0] ? t->failure : NULL);
        json_arr(j, "heads");
        for (size_t r = 0; r < t->heads.n_rows; r++) {
            json_obj(j, NULL);
            json_int(j, "root_round", strtoll(cell(&t->heads, r, 0), NULL, 10));
            json_cell(j, "update", cell(&t->heads, r, 1));
            json_cell(j, "head", cell(&t->heads, r, 2));
            json_bool(j, "match", strcmp(cell(&t->heads, r, 3), "yes") == 0);
            json_obj_end(j);
        }
        json_arr_end(j);
        json_table(j, "contributions", &t->contributions);
        json_obj_end(j);
    }
    json_arr_end(j);
}

void tiers_text(const tiers *ts)
{
    for (size_t i = 0; i < ts->n; i++) {
        const tier *t = &ts->t[i];
        char *relay = fedge_text_escape_dup(t->relay[0] ? t->relay : "?");
        char *db = fedge_text_escape_dup(t->db_path);
        char *why = fedge_text_escape_dup(t->failure);
        printf("\nrelay %s (%s): %s, %zu of %zu heads match the root's\n", relay ? relay : "?", db ? db : "?",
               t->verified ? "OK" : "FAILED", t->n_matched, t->n_heads);
        if (!t->verified && why)
            printf("  FAILED: %s\n", why);
        if (t->heads.n_rows)
            out_print_text(stdout, &t->heads, "  ");
        if (t->contributions.n_rows)
            out_print_text(stdout, &t->contributions, "  ");
        free(relay);
        free(db);
        free(why);
    }
}
