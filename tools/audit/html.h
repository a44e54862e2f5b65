/* html.h — `fedge-audit report --format html`: the report as one
 * self-contained HTML page. Inline CSS, charts as inline SVG drawn here,
 * no script and nothing fetched at view time.
 *
 * Every string from the database is escaped for a terminal first (text.h)
 * and then for HTML (& < > " ' as entities), so a device id or a reason such
 * as "<script>" shows as text, never as markup.
 *
 * Charts, each followed by a table that carries its numbers: the rows hold
 * them in data-* attributes at full precision (the shortest form that reads
 * back as the same double, as the JSON report prints them) and the marks
 * have <title> tooltips:
 *   - test accuracy per round (round 0: the initial model; a refined
 *     model's as a second series) and the mean train loss per round,
 *     weighted by sample count over the updates that were not rejected
 *     (updates.train_loss; "not reported" when the column or the values
 *     are absent);
 *   - epsilon after each DP round from the privacy ledger (dp_ledger), the
 *     run's total against the global budget, and the largest and mean
 *     per-device epsilon (each device's own rounds at q = 1, as `privacy`
 *     composes them) against the per-device budget; a device that entered
 *     a closed round without DP has no epsilon in the table (no guarantee);
 *   - updates and samples per device and per region (not rejected, in
 *     closed rounds);
 *   - updates by decision and rule, and round-level decisions by rule;
 *   - the lineage of the latest model (graph.h): its versions back to the
 *     first, with rounds, contributors and the relays behind each aggregate;
 * then the refused updates and round-level decisions with their reasons,
 * and the keys ledger (every audited change of the keys file: table
 * keys-data, the columns of the JSON report's keys_changes).
 * Table ids and attribute names are listed in docs/AUDIT.md. */
#ifndef FEDGE_AUDIT_HTML_H
#define FEDGE_AUDIT_HTML_H

#include <sqlite3.h>
#include <stdio.h>

#include "out.h"

typedef struct {
    const char *db_path;
    const out_table *summary;     /* the report's summary table */
    const char *privacy_headline; /* the `privacy` headline */
    const char *verify_line;      /* the verification result; NULL: not run */
    int verify_failed;
    const char *cycle;            /* the lineage_cycle finding, or NULL */
    const char *latest;           /* the latest model's version; "" when none */
    const out_table *refused;     /* `decisions --rejected`: shown with reasons */
    const out_table *keys;        /* the keys ledger (`report`'s keys_changes); NULL: none */
} html_inputs;

/* Writes the page to f. 0 done; -1 database error or out of memory, the
 * reason on stderr (a write error is left to the caller's ferror/fclose). */
int html_report(FILE *f, sqlite3 *db, const html_inputs *in);

#endif
