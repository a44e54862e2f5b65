/* keys_audit.c — the keys ledger (keys_audit.h). */
#include "keys_audit.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "common.h"
#include "envelope.h"
#include "governance.h"
#include "hash.h"
#include "log.h"
#include "store.h"

#define KID_HEX FEDGE_AUDIT_KEY_ID_HEX
_Static_assert(KID_HEX == 2 * FEDGE_KEY_ID_LEN, "a key id's hex in the ledger");
_Static_assert(FEDGE_AUDIT_REGION_MAX == FEDGE_REGION_MAX, "a region in the ledger");

typedef struct {
    char id[FEDGE_DEVICE_ID_MAX + 1];
    char region[FEDGE_REGION_MAX + 1];
    char kid[KID_HEX + 1];
    int64_t order; /* the event's place in the log; unused for the keys file's side */
    int live;
} ledger_entry;

static int by_id_then_order(const void *x, const void *y)
{
    const ledger_entry *a = x, *b = y;
    int c = strcmp(a->id, b->id);
    if (c)
        return c;
    return (a->order > b->order) - (a->order < b->order);
}

/* The last audited keys state: live devices sorted by id in *out (malloc'd).
 * A keys row without an audit entry was written behind the daemon's back:
 * FEDGE_ERR_AUDIT_CHAIN naming it, so it can neither admit nor hide a device. */
static int ledger_state(sqlite3 *db, ledger_entry **out, size_t *n_out, char *err, size_t errlen)
{
    fedge_keys_ledger_row *rows = NULL;
    ledger_entry *v = NULL;
    size_t n_rows = 0, n = 0;
    int ret;
    *out = NULL;
    *n_out = 0;
    CHK(fedge_audit_keys_ledger_load(db, &rows, &n_rows));
    v = malloc((n_rows ? n_rows : 1) * sizeof *v);
    if (!v)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < n_rows; i++) {
        const fedge_keys_ledger_row *r = &rows[i];
        if (r->seq == INT64_MAX) {
            if (err)
                snprintf(err, errlen, "events row %lld: a keys event with no audit entry (not written by the "
                         "aggregator; fedge-audit verify reports it as row_unaudited): delete it or restore the log",
                         (long long)r->id);
            FAIL(FEDGE_ERR_AUDIT_CHAIN);
        }
        if (!r->parsed || !fedge_device_id_valid(r->device, strlen(r->device))) {
            if (err)
                snprintf(err, errlen, "events row %lld: a malformed keys event (fedge-audit verify says more)",
                         (long long)r->id);
            FAIL(FEDGE_ERR_AUDIT_CHAIN);
        }
        ledger_entry *e = &v[n];
        snprintf(e->id, sizeof e->id, "%s", r->device);
        snprintf(e->region, sizeof e->region, "%s", r->ev.region);
        memcpy(e->kid, r->ev.key_id, sizeof e->kid);
        e->order = (int64_t)n;
        e->live = r->ev.change != FEDGE_KEYS_REMOVED;
        n++;
    }
    if (n)
        qsort(v, n, sizeof *v, by_id_then_order);
    size_t k = 0; /* the last entry of each id, when live */
    for (size_t i = 0; i < n; i++)
        if ((i + 1 == n || strcmp(v[i].id, v[i + 1].id) != 0) && v[i].live)
            v[k++] = v[i];
    *out = v;
    *n_out = k;
    v = NULL;
cleanup:
    fedge_audit_keys_ledger_free(rows, n_rows);
    free(v);
    return ret;
}

/* The keys table's live devices with their key ids, sorted by id. */
static int file_state(const fedge_keys *keys, ledger_entry **out, size_t *n_out)
{
    ledger_entry *v = calloc(keys->n ? keys->n : 1, sizeof *v);
    size_t n = 0;
    int ret = FEDGE_OK;
    if (!v)
        return FEDGE_ERR_NOMEM;
    for (size_t i = 0; i < keys->n; i++) {
        const fedge_device_entry *d = &keys->devices[i];
        fedge_device_key k;
        if (d->removed)
            continue;
        CHK(fedge_envelope_derive_key(d->secret, FEDGE_SECRET_LEN, d->id, &k));
        fedge_hex_encode(k.key_id, FEDGE_KEY_ID_LEN, v[n].kid);
        fedge_device_key_wipe(&k);
        snprintf(v[n].id, sizeof v[n].id, "%s", d->id);
        snprintf(v[n].region, sizeof v[n].region, "%s", d->region);
        v[n].live = 1;
        n++;
    }
    if (n)
        qsort(v, n, sizeof *v, by_id_then_order);
cleanup:
    if (ret != FEDGE_OK) {
        free(v);
        return ret;
    }
    *out = v;
    *n_out = n;
    return FEDGE_OK;
}

/* One entry: change from `was` (NULL: added) to `now` (NULL: removed). */
static int append(sqlite3 *db, double at, const char *source, const char *keys_file, const ledger_entry *was,
                  const ledger_entry *now)
{
    sqlite3_stmt *st = NULL;
    fedge_keys_event ev = {0};
    char detail[FEDGE_PATH_MAX + 256]; /* the keys file path and ~180 bytes (policy/audit.h) */
    const ledger_entry *cur = now ? now : was;
    int ret;
    ev.change = !was ? FEDGE_KEYS_ADDED : !now ? FEDGE_KEYS_REMOVED
                : strcmp(was->kid, now->kid) != 0 ? FEDGE_KEYS_REKEYED : FEDGE_KEYS_MOVED;
    snprintf(ev.region, sizeof ev.region, "%s", cur->region);
    memcpy(ev.key_id, cur->kid, sizeof ev.key_id);
    if (was && now) {
        snprintf(ev.was_region, sizeof ev.was_region, "%s", was->region);
        memcpy(ev.was_key_id, was->kid, sizeof ev.was_key_id);
    }
    snprintf(ev.source, sizeof ev.source, "%s", source);
    CHK(fedge_audit_keys_event_format(&ev, keys_file, detail, sizeof detail));
    CHK(fedge_store_prepare(db, "INSERT INTO events(at, device, kind, detail) VALUES(?1, ?2, '"
                                FEDGE_AUDIT_KEYS_EVENT "', ?3)", &st));
    sqlite3_bind_double(st, 1, at);
    sqlite3_bind_text(st, 2, cur->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, detail, -1, SQLITE_STATIC);
    ret = fedge_store_insert_audited(db, st, "events");
    st = NULL;
cleanup:
    sqlite3_finalize(st);
    return ret;
}

/* The walk behind record and pending: source NULL writes nothing. */
static int walk(sqlite3 *db, const fedge_keys *keys, const char *source, const char *keys_file, double at,
                fedge_keys_audit_diff *diff, char *err, size_t errlen)
{
    ledger_entry *was = NULL, *now = NULL;
    size_t n_was = 0, n_now = 0, i = 0, j = 0;
    fedge_keys_audit_diff d = {0};
    int ret;
    CHK(ledger_state(db, &was, &n_was, err, errlen));
    CHK(file_state(keys, &now, &n_now));
    while (i < n_was || j < n_now) {
        int c = i == n_was ? 1 : j == n_now ? -1 : strcmp(was[i].id, now[j].id);
        if (c < 0) {
            if (source)
                CHK(append(db, at, source, keys_file, &was[i], NULL));
            i++;
            d.removed++;
        } else if (c > 0) {
            if (source)
                CHK(append(db, at, source, keys_file, NULL, &now[j]));
            j++;
            d.added++;
        } else {
            int rekeyed = strcmp(was[i].kid, now[j].kid) != 0, moved = strcmp(was[i].region, now[j].region) != 0;
            if (source && (rekeyed || moved))
                CHK(append(db, at, source, keys_file, &was[i], &now[j]));
            d.rekeyed += (size_t)rekeyed;
            d.moved += (size_t)(moved && !rekeyed);
            i++;
            j++;
        }
    }
    if (diff)
        *diff = d;
cleanup:
    free(was);
    free(now);
    return ret;
}

int fedge_keys_audit_record(sqlite3 *db, const fedge_keys *keys, const char *source, const char *keys_file,
                            double at, fedge_keys_audit_diff *diff, char *err, size_t errlen)
{
    if (!db || !keys || !source || !keys_file)
        return FEDGE_ERR_INVALID_ARG;
    return walk(db, keys, source, keys_file, at, diff, err, errlen);
}

int fedge_keys_audit_pending(sqlite3 *db, const fedge_keys *keys, fedge_keys_audit_diff *diff, char *err,
                             size_t errlen)
{
    if (!db || !keys || !diff)
        return FEDGE_ERR_INVALID_ARG;
    return walk(db, keys, NULL, NULL, 0, diff, err, errlen);
}

int fedge_keys_audit_startup(fedge_aggregator *a, char *err, size_t errlen)
{
    fedge_keys_audit_diff d = {0};
    int ret, in_tx = 0;
    CHK(fedge_store_begin(a->db));
    in_tx = 1;
    CHK(fedge_keys_audit_record(a->db, &a->keys, "startup", a->cfg.keys_file, fedge_wall_now(), &d, err, errlen));
    if (d.added + d.removed + d.rekeyed + d.moved)
        CHK(fedge_gov_sign_head(a, a->round));
    CHK(fedge_store_commit(a->db));
    in_tx = 0;
    FEDGE_INFO("keys file %s since the last audited keys state: %zu added, %zu removed, %zu rekeyed, %zu moved",
               a->cfg.keys_file, d.added, d.removed, d.rekeyed, d.moved);
cleanup:
    if (in_tx)
        fedge_store_rollback(a->db);
    if (ret != FEDGE_OK && err && !err[0])
        snprintf(err, errlen, "%s", fedge_strerror(ret));
    return ret;
}
