/* audit_keys.c — the keys ledger's entries (audit.h "the keys ledger"):
 * their one text form, and verify's per-device replay of them. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_impl.h"
#include "common.h"

static const char *const CHANGE_NAMES[] = {"?", "added", "removed", "rekeyed", "moved"};

const char *fedge_keys_change_name(fedge_keys_change c)
{
    return c >= FEDGE_KEYS_ADDED && c <= FEDGE_KEYS_MOVED ? CHANGE_NAMES[c] : "?";
}

static int region_ok(const char *r)
{
    size_t n = strlen(r);
    return n >= 1 && n <= FEDGE_AUDIT_REGION_MAX && !strpbrk(r, " \t\r\n");
}

static int key_id_ok(const char *k)
{
    return strlen(k) == FEDGE_AUDIT_KEY_ID_HEX && strspn(k, "0123456789abcdef") == FEDGE_AUDIT_KEY_ID_HEX;
}

static int source_ok(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n < 16 && strspn(s, "abcdefghijklmnopqrstuvwxyz") == n;
}

static int event_ok(const fedge_keys_event *ev)
{
    int was = ev->change == FEDGE_KEYS_REKEYED || ev->change == FEDGE_KEYS_MOVED;
    if (ev->change < FEDGE_KEYS_ADDED || ev->change > FEDGE_KEYS_MOVED || !region_ok(ev->region) ||
        !key_id_ok(ev->key_id) || !source_ok(ev->source))
        return 0;
    if (!was)
        return !ev->was_region[0] && !ev->was_key_id[0];
    if (!region_ok(ev->was_region) || !key_id_ok(ev->was_key_id))
        return 0;
    int same_key = strcmp(ev->key_id, ev->was_key_id) == 0;
    return ev->change == FEDGE_KEYS_REKEYED ? !same_key : same_key && strcmp(ev->region, ev->was_region) != 0;
}

int fedge_audit_keys_event_format(const fedge_keys_event *ev, const char *keys_file, char *out, size_t cap)
{
    if (!ev || !keys_file || !out || !event_ok(ev))
        return FEDGE_ERR_INVALID_ARG;
    int n;
    if (ev->was_region[0])
        n = snprintf(out, cap, "%s region %s key id %s, was region %s key id %s (%s; keys file %s)",
                     fedge_keys_change_name(ev->change), ev->region, ev->key_id, ev->was_region, ev->was_key_id,
                     ev->source, keys_file);
    else
        n = snprintf(out, cap, "%s region %s key id %s (%s; keys file %s)", fedge_keys_change_name(ev->change),
                     ev->region, ev->key_id, ev->source, keys_file);
    return n < 0 || (size_t)n >= cap ? FEDGE_ERR_BUFFER_TOO_SMALL : FEDGE_OK;
}

/* Copies the token at *p up to `stop` (not included) into out (cap bytes
 * with the NUL); 0 when it is empty, too long, or `stop` never comes. */
static int take(const char **p, char stop, char *out, size_t cap)
{
    const char *e = strchr(*p, stop);
    if (!e || e == *p || (size_t)(e - *p) >= cap)
        return 0;
    memcpy(out, *p, (size_t)(e - *p));
    out[e - *p] = '\0';
    *p = e;
    return 1;
}

static int lit(const char **p, const char *s)
{
    size_t n = strlen(s);
    if (strncmp(*p, s, n) != 0)
        return 0;
    *p += n;
    return 1;
}

/* The 16 hex digits of a key id at *p (checked by event_ok). */
static int take_key_id(const char **p, char out[FEDGE_AUDIT_KEY_ID_HEX + 1])
{
    if (strlen(*p) < FEDGE_AUDIT_KEY_ID_HEX)
        return 0;
    memcpy(out, *p, FEDGE_AUDIT_KEY_ID_HEX);
    out[FEDGE_AUDIT_KEY_ID_HEX] = '\0';
    *p += FEDGE_AUDIT_KEY_ID_HEX;
    return 1;
}

int fedge_audit_keys_event_parse(const char *detail, fedge_keys_event *ev)
{
    char change[16];
    const char *p = detail;
    if (!detail || !ev)
        return FEDGE_ERR_INVALID_ARG;
    memset(ev, 0, sizeof *ev);
    if (!take(&p, ' ', change, sizeof change) || !lit(&p, " region ") ||
        !take(&p, ' ', ev->region, sizeof ev->region) || !lit(&p, " key id ") || !take_key_id(&p, ev->key_id))
        return FEDGE_ERR_AUDIT_CHAIN;
    for (int c = FEDGE_KEYS_ADDED; c <= FEDGE_KEYS_MOVED; c++)
        if (strcmp(change, CHANGE_NAMES[c]) == 0)
            ev->change = (fedge_keys_change)c;
    if (lit(&p, ", was region ") && (!take(&p, ' ', ev->was_region, sizeof ev->was_region) ||
                                     !lit(&p, " key id ") || !take_key_id(&p, ev->was_key_id)))
        return FEDGE_ERR_AUDIT_CHAIN;
    /* the path: whatever lies between "; keys file " and the closing ')' */
    if (!lit(&p, " (") || !take(&p, ';', ev->source, sizeof ev->source) || !lit(&p, "; keys file ") ||
        strlen(p) < 2 || p[strlen(p) - 1] != ')' || !event_ok(ev))
        return FEDGE_ERR_AUDIT_CHAIN;
    return FEDGE_OK;
}

/* ---- verify: the replay ---- */

typedef fedge_keys_ledger_row ledger_row;

int fedge_audit_keys_ledger_load(sqlite3 *db, fedge_keys_ledger_row **out, size_t *n_out)
{
    sqlite3_stmt *st = NULL;
    ledger_row *v = NULL;
    size_t n = 0, cap = 0;
    int ret = FEDGE_OK, rc;
    *out = NULL;
    *n_out = 0;
    if (sqlite3_prepare_v2(db, "SELECT e.id, e.device, e.detail, (SELECT min(a.seq) FROM audit a WHERE a.tbl = "
                               "'events' AND a.row_key = CAST(e.id AS TEXT)) FROM events e WHERE e.kind = '"
                               FEDGE_AUDIT_KEYS_EVENT "' ORDER BY e.id", -1, &st, NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? 2 * cap : 64;
            ledger_row *nv = realloc(v, ncap * sizeof *nv);
            if (!nv)
                FAIL(FEDGE_ERR_NOMEM);
            v = nv;
            cap = ncap;
        }
        const char *dev = (const char *)sqlite3_column_text(st, 1);
        ledger_row *r = &v[n];
        r->id = sqlite3_column_int64(st, 0);
        r->seq = sqlite3_column_type(st, 3) == SQLITE_NULL ? INT64_MAX : sqlite3_column_int64(st, 3);
        r->device = strdup(dev ? dev : "");
        if (!r->device)
            FAIL(FEDGE_ERR_NOMEM);
        n++;
        r->parsed = dev && dev[0] &&
                    fedge_audit_keys_event_parse((const char *)sqlite3_column_text(st, 2), &r->ev) == FEDGE_OK;
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
    *out = v;
    *n_out = n;
    v = NULL;
    n = 0;
cleanup:
    sqlite3_finalize(st);
    fedge_audit_keys_ledger_free(v, n);
    return ret;
}

void fedge_audit_keys_ledger_free(fedge_keys_ledger_row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(rows[i].device);
    free(rows);
}

static int by_device_then_id(const void *x, const void *y)
{
    const ledger_row *a = x, *b = y;
    int c = strcmp(a->device, b->device);
    if (c)
        return c;
    return (a->id > b->id) - (a->id < b->id);
}

static void fail_row(fedge_audit_report *rep, const ledger_row *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail_row(fedge_audit_report *rep, const ledger_row *r, const char *fmt, ...)
{
    char key[24], msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(key, sizeof key, "%" PRId64, r->id);
    audit_report_failure(rep, FEDGE_AUDIT_FAIL_KEYS_LEDGER, -1, "events", key, msg);
}

static int by_device_then_seq(const void *x, const void *y)
{
    const ledger_row *a = x, *b = y;
    int c = strcmp(a->device, b->device);
    if (c)
        return c;
    return (a->seq > b->seq) - (a->seq < b->seq);
}

/* Every accepted or clipped update (a relay's partial is one at its parent)
 * comes from a device the ledger lists at the update's place in the chain
 * (its first audit entry): the device's last audited keys entry before it is
 * not "removed". Updates before the ledger's first audited entry (a log from
 * before the ledger) are not checked. v: the keys rows, re-sorted here. */
static int check_admitted(sqlite3 *db, ledger_row *v, size_t n, fedge_audit_report *rep)
{
    sqlite3_stmt *st = NULL;
    int ret = FEDGE_OK, rc;
    int64_t first = INT64_MAX;
    for (size_t i = 0; i < n; i++)
        if (v[i].parsed && v[i].seq < first)
            first = v[i].seq;
    if (first == INT64_MAX)
        return FEDGE_OK;
    qsort(v, n, sizeof *v, by_device_then_seq);
    if (sqlite3_prepare_v2(db, "SELECT u.id, u.device, s FROM (SELECT id, device, (SELECT min(a.seq) FROM audit a "
                               "WHERE a.tbl = 'updates' AND a.row_key = CAST(updates.id AS TEXT)) AS s FROM updates "
                               "WHERE decision IN ('accepted', 'clipped')) u WHERE s > ?1 ORDER BY s", -1, &st,
                           NULL) != SQLITE_OK)
        FAIL(FEDGE_ERR_SQL);
    sqlite3_bind_int64(st, 1, first);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0), seq = sqlite3_column_int64(st, 2);
        const char *dev = (const char *)sqlite3_column_text(st, 1);
        const ledger_row *last = NULL; /* dev's last well-formed audited entry before seq */
        size_t lo = 0, hi = n;
        dev = dev ? dev : "";
        while (lo < hi) { /* the first row of dev, or past it */
            size_t mid = lo + (hi - lo) / 2;
            if (strcmp(v[mid].device, dev) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t i = lo; i < n && strcmp(v[i].device, dev) == 0 && v[i].seq < seq; i++)
            if (v[i].parsed)
                last = &v[i];
        if (last && last->ev.change != FEDGE_KEYS_REMOVED)
            continue;
        char key[24], msg[400];
        snprintf(key, sizeof key, "%" PRId64, id);
        if (last)
            snprintf(msg, sizeof msg, "updates row %" PRId64 " (audit entry %" PRId64 ") is accepted from %.64s, "
                     "which the keys ledger removed at events row %" PRId64, id, seq, dev, last->id);
        else
            snprintf(msg, sizeof msg, "updates row %" PRId64 " (audit entry %" PRId64 ") is accepted from %.64s, "
                     "which the keys ledger had not admitted (no audited 'added' entry before it)", id, seq, dev);
        audit_report_failure(rep, FEDGE_AUDIT_FAIL_NOT_ADMITTED, seq, "updates", key, msg);
    }
    if (rc != SQLITE_DONE)
        FAIL(FEDGE_ERR_SQL);
cleanup:
    sqlite3_finalize(st);
    return ret;
}

int audit_check_keys_ledger(sqlite3 *db, fedge_audit_report *rep)
{
    ledger_row *v = NULL;
    size_t n = 0;
    int ret;
    CHK(fedge_audit_keys_ledger_load(db, &v, &n));
    if (n)
        qsort(v, n, sizeof *v, by_device_then_id);
    const ledger_row *prev = NULL; /* the device's last well-formed entry */
    for (size_t i = 0; i < n; i++) {
        const ledger_row *r = &v[i];
        if (i > 0 && strcmp(v[i - 1].device, r->device) != 0)
            prev = NULL;
        if (!r->parsed) {
            fail_row(rep, r, "events row %" PRId64 " (keys): not a keys ledger entry (device, then \"<change> "
                     "region R key id K ... (<source>; keys file P)\")", r->id);
            continue;
        }
        int live = prev && prev->ev.change != FEDGE_KEYS_REMOVED;
        const fedge_keys_event *e = &r->ev;
        if (e->change == FEDGE_KEYS_ADDED) {
            if (live)
                fail_row(rep, r, "events row %" PRId64 ": %s added while listed since events row %" PRId64, r->id,
                         r->device, prev->id);
        } else if (!live) {
            fail_row(rep, r, "events row %" PRId64 ": %s %s but not listed (no earlier 'added' entry in force)",
                     r->id, r->device, fedge_keys_change_name(e->change));
        } else {
            const char *wr = e->change == FEDGE_KEYS_REMOVED ? e->region : e->was_region;
            const char *wk = e->change == FEDGE_KEYS_REMOVED ? e->key_id : e->was_key_id;
            if (strcmp(wr, prev->ev.region) != 0 || strcmp(wk, prev->ev.key_id) != 0)
                fail_row(rep, r, "events row %" PRId64 ": %s %s from region %s key id %s, but events row %" PRId64
                         " left it at region %s key id %s", r->id, r->device, fedge_keys_change_name(e->change),
                         wr, wk, prev->id, prev->ev.region, prev->ev.key_id);
        }
        prev = r;
    }
    if (n)
        CHK(check_admitted(db, v, n, rep));
cleanup:
    fedge_audit_keys_ledger_free(v, n);
    return ret;
}
