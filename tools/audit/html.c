/* html.c — the HTML report with inline SVG charts (see html.h). */
#include "html.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "common.h"
#include "graph.h"
#include "policy.h"
#include "rdp.h"
#include "text.h"

/* ---- escaping and numbers ------------------------------------------------------------- */

/* Text already made terminal-safe (text.h), written with HTML's five
 * special characters as entities. */
static void put_html(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* A string from the database: text.h escaping, then HTML's. -1 out of memory. */
static int put_db(FILE *f, const char *s)
{
    if (!s)
        return 0;
    char *safe = fedge_text_escape_dup(s);
    if (!safe) {
        cli_error("out of memory");
        return -1;
    }
    put_html(f, safe);
    free(safe);
    return 0;
}

/* At most max bytes of the escaped s, cut at a UTF-8 boundary, "…" when cut. */
static int put_db_short(FILE *f, const char *s, size_t max)
{
    char *safe = fedge_text_escape_dup(s ? s : "");
    if (!safe) {
        cli_error("out of memory");
        return -1;
    }
    size_t n = strlen(safe);
    int cut = n > max;
    if (cut) {
        n = max;
        while (n > 0 && ((unsigned char)safe[n] & 0xC0) == 0x80)
            n--;
        safe[n] = '\0';
    }
    put_html(f, safe);
    if (cut)
        fputs("\xe2\x80\xa6", f);
    free(safe);
    return 0;
}

/* The shortest form that reads back as the same double (as json_num). */
static void fmt_exact(double v, char *buf, size_t cap)
{
    if (!isfinite(v)) {
        snprintf(buf, cap, "%s", "");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
}

/* ` name="value"` with the exact number; nothing for NaN. */
static void attr_num(FILE *f, const char *name, double v)
{
    char b[40];
    if (!isfinite(v))
        return;
    fmt_exact(v, b, sizeof b);
    fprintf(f, " %s=\"%s\"", name, b);
}

static void cell_num(FILE *f, double v, const char *missing)
{
    if (isfinite(v))
        fprintf(f, "<td class=\"n\">%.6g</td>", v);
    else
        fprintf(f, "<td class=\"n\">%s</td>", missing);
}

/* A data table's wrapper: open when short, folded (still in the page) when long. */
static void fold_open(FILE *f, size_t rows)
{
    fprintf(f, "<details%s><summary>the numbers (%zu row%s)</summary>\n", rows <= 25 ? " open" : "",
            rows, rows == 1 ? "" : "s");
}

/* ---- database helpers ------------------------------------------------------------------ */

static int prep(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK) {
        cli_error("database query failed: %s", sqlite3_errmsg(db));
        *st = NULL;
        return -1;
    }
    return 0;
}

static int step_done(sqlite3 *db, int rc)
{
    if (rc != SQLITE_DONE) {
        cli_error("database query failed: %s", sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

static const char *ctext(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

/* A copy of column i's text ("" for NULL), NULL when out of memory. */
static char *ctext_dup(sqlite3_stmt *st, int i)
{
    return strdup(ctext(st, i) ? ctext(st, i) : "");
}

/* Every row of sql into a new array of elem-byte elements, each zeroed, then
 * filled by fill (0, or -1 when out of memory): 0 with *rows (caller frees)
 * and *n, or -1 said; *rows and *n then hold the elements begun so far, the
 * failed one included, for the caller's free. */
static int load_rows(sqlite3 *db, const char *sql, size_t elem, int (*fill)(sqlite3_stmt *, void *),
                     void **rows, size_t *n)
{
    sqlite3_stmt *st = NULL;
    unsigned char *a = NULL;
    size_t cap = 0;
    int rc, ret = -1;
    *rows = NULL;
    *n = 0;
    if (prep(db, sql, &st) != 0)
        return -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            unsigned char *x = realloc(a, nc * elem);
            if (!x) {
                cli_error("out of memory");
                goto cleanup;
            }
            a = x;
            cap = nc;
        }
        unsigned char *e = a + (*n)++ * elem;
        memset(e, 0, elem);
        if (fill(st, e) != 0) {
            cli_error("out of memory");
            goto cleanup;
        }
    }
    if (step_done(db, rc) != 0)
        goto cleanup;
    ret = 0;
cleanup:
    sqlite3_finalize(st);
    *rows = a;
    return ret;
}

static double cnum(sqlite3_stmt *st, int i)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL ? NAN : sqlite3_column_double(st, i);
}

/* 1 when table has column, 0 when not (or no such table), -1 on error. */
static int has_column(sqlite3 *db, const char *table, const char *column)
{
    sqlite3_stmt *st = NULL;
    char sql[128];
    int found = 0, rc;
    snprintf(sql, sizeof sql, "PRAGMA table_info(%s)", table);
    if (prep(db, sql, &st) != 0)
        return -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (ctext(st, 1) && strcmp(ctext(st, 1), column) == 0)
            found = 1;
    sqlite3_finalize(st);
    return step_done(db, rc) == 0 ? found : -1;
}

static double meta_double(sqlite3 *db, const char *key)
{
    sqlite3_stmt *st = NULL;
    double v = NAN;
    if (prep(db, "SELECT value FROM meta WHERE key = ?1", &st) != 0)
        return NAN;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && ctext(st, 0)) {
        char *end;
        v = strtod(ctext(st, 0), &end);
        if (end == ctext(st, 0) || *end)
            v = NAN;
    }
    sqlite3_finalize(st);
    return v;
}

/* ---- SVG charts -------------------------------------------------------------------------- */

enum { CW = 720, CH = 300, ML = 64, MR = 150, MT = 20, MB = 44 };

static const char *const PALETTE[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                      "#9467bd", "#8c564b", "#e377c2", "#17becf"};

/* A step of 1, 2 or 5 times a power of ten giving about n ticks over span. */
static double nice_step(double span, int n)
{
    if (!(span > 0))
        return 1;
    double raw = span / n, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

typedef struct {
    const char *name;
    const double *y; /* n values; NaN: no point */
    const char *color;
    int dashed;
} series;

typedef struct {
    double x0, x1, y0, y1;
} frame;

static double px(const frame *fr, double x)
{
    return ML + (x - fr->x0) / (fr->x1 - fr->x0) * (CW - ML - MR);
}

static double py(const frame *fr, double y)
{
    return MT + (1 - (y - fr->y0) / (fr->y1 - fr->y0)) * (CH - MT - MB);
}

static void axes(FILE *f, const frame *fr, const char *xlabel, const char *ylabel, int int_x)
{
    double ys = nice_step(fr->y1 - fr->y0, 5), xs = nice_step(fr->x1 - fr->x0, 8);
    if (int_x && xs < 1)
        xs = 1;
    fprintf(f, "<g class=\"axis\">");
    for (double y = ceil(fr->y0 / ys) * ys; y <= fr->y1 + ys * 1e-9; y += ys)
        fprintf(f,
                "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>",
                ML, CW - MR, py(fr, y), py(fr, y), ML - 6, py(fr, y) + 4, fabs(y) < ys * 1e-9 ? 0 : y);
    for (double x = ceil(fr->x0 / xs) * xs; x <= fr->x1 + xs * 1e-9; x += xs)
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.6g</text>", px(fr, x),
                CH - MB + 16, x);
    fprintf(f,
            "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" class=\"frame\"/>"
            "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" class=\"frame\"/>"
            "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>"
            "<text transform=\"translate(14 %d) rotate(-90)\" text-anchor=\"middle\">%s</text></g>\n",
            ML, CW - MR, CH - MB, CH - MB, ML, ML, MT, CH - MB, (ML + CW - MR) / 2, CH - 8, xlabel,
            (MT + CH - MB) / 2, ylabel);
}

/* A line chart of series over x[0..n); a horizontal line at hline (NaN:
 * none) labelled hlabel. Nothing drawn but a note when no value is finite. */
static void line_chart(FILE *f, const char *id, const char *aria, const double *x, size_t n,
                       const series *s, size_t ns, double hline, const char *hlabel,
                       const char *xlabel, const char *ylabel, int from_zero)
{
    frame fr = {INFINITY, -INFINITY, from_zero ? 0 : INFINITY, -INFINITY};
    size_t points = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < ns; k++)
            if (isfinite(s[k].y[i])) {
                fr.x0 = fmin(fr.x0, x[i]);
                fr.x1 = fmax(fr.x1, x[i]);
                fr.y0 = fmin(fr.y0, s[k].y[i]);
                fr.y1 = fmax(fr.y1, s[k].y[i]);
                points++;
            }
    if (!points) {
        fprintf(f, "<p class=\"note\">Nothing to draw.</p>\n");
        return;
    }
    if (isfinite(hline))
        fr.y1 = fmax(fr.y1, hline);
    if (fr.x1 <= fr.x0) {
        fr.x0 -= 1;
        fr.x1 += 1;
    }
    if (fr.y1 <= fr.y0)
        fr.y1 = fr.y0 + (fr.y0 != 0 ? fabs(fr.y0) * 0.1 : 1);
    fr.y1 += (fr.y1 - fr.y0) * 0.05;
    fprintf(f,
            "<svg id=\"%s\" class=\"chart\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" "
            "role=\"img\" aria-label=\"%s\" xmlns=\"http://www.w3.org/2000/svg\">\n",
            id, CW, CH, CW, CH, aria);
    axes(f, &fr, xlabel, ylabel, 1);
    if (isfinite(hline))
        fprintf(f,
                "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"budget\"><title>%s %.6g"
                "</title></line><text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" "
                "class=\"budget-label\">%s %.4g</text>\n",
                ML, CW - MR, py(&fr, hline), py(&fr, hline), hlabel, hline, CW - MR - 4,
                py(&fr, hline) - 5, hlabel, hline);
    for (size_t k = 0; k < ns; k++) {
        fprintf(f, "<path fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s d=\"", s[k].color,
                s[k].dashed ? " stroke-dasharray=\"6 4\"" : "");
        int pen = 0;
        for (size_t i = 0; i < n; i++) {
            if (!isfinite(s[k].y[i])) {
                pen = 0;
                continue;
            }
            fprintf(f, "%c%.1f %.1f ", pen ? 'L' : 'M', px(&fr, x[i]), py(&fr, s[k].y[i]));
            pen = 1;
        }
        fprintf(f, "\"/>\n");
        for (size_t i = 0; i < n && n <= 200; i++) { /* more: the table has them */
            if (!isfinite(s[k].y[i]))
                continue;
            char b[40];
            fmt_exact(s[k].y[i], b, sizeof b);
            fprintf(f,
                    "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\" data-series=\"%s\" "
                    "data-x=\"%.17g\" data-y=\"%s\"><title>%s, round %.6g: %.6g</title></circle>\n",
                    px(&fr, x[i]), py(&fr, s[k].y[i]), s[k].color, s[k].name, x[i], b, s[k].name,
                    x[i], s[k].y[i]);
        }
        fprintf(f,
                "<rect x=\"%d\" y=\"%zu\" width=\"14\" height=\"4\" fill=\"%s\"/>"
                "<text x=\"%d\" y=\"%zu\">%s</text>\n",
                CW - MR + 6, (size_t)MT + 18 * k + 10, s[k].color, CW - MR + 24,
                (size_t)MT + 18 * k + 15, s[k].name);
    }
    fprintf(f, "</svg>\n");
}

typedef struct {
    const char *label;  /* from the database: escaped when drawn */
    const char *group;  /* from the database (escaped when drawn): the decision, or NULL */
    double value;
    const char *color;
} bar;

/* Horizontal bars, the first max_bars of them (the table holds all). */
static int bar_chart(FILE *f, const char *id, const char *aria, const bar *b, size_t n,
                     size_t max_bars, const char *unit)
{
    size_t shown = n < max_bars ? n : max_bars;
    enum { LW = 190, BH = 18, GAP = 6, BW = 720 };
    double vmax = 0;
    for (size_t i = 0; i < shown; i++)
        vmax = fmax(vmax, b[i].value);
    if (!shown) {
        fprintf(f, "<p class=\"note\">Nothing to draw.</p>\n");
        return 0;
    }
    if (!(vmax > 0))
        vmax = 1;
    size_t h = MT + shown * (BH + GAP) + 24;
    double span = BW - LW - 90;
    fprintf(f,
            "<svg id=\"%s\" class=\"chart\" viewBox=\"0 0 %d %zu\" width=\"%d\" height=\"%zu\" "
            "role=\"img\" aria-label=\"%s\" xmlns=\"http://www.w3.org/2000/svg\">\n",
            id, BW, h, BW, h, aria);
    for (size_t i = 0; i < shown; i++) {
        size_t y = MT + i * (BH + GAP);
        double w = b[i].value / vmax * span;
        fprintf(f, "<g class=\"bar\" data-label=\"");
        if (put_db(f, b[i].label) != 0)
            return -1;
        fputc('"', f);
        if (b[i].group) {
            fprintf(f, " data-group=\"");
            if (put_db(f, b[i].group) != 0)
                return -1;
            fputc('"', f);
        }
        attr_num(f, "data-value", b[i].value);
        fprintf(f, "><title>");
        if (put_db(f, b[i].label) != 0)
            return -1;
        if (b[i].group) {
            fprintf(f, " (");
            if (put_db(f, b[i].group) != 0)
                return -1;
            fprintf(f, ")");
        }
        fprintf(f, ": %.6g%s%s</title><text x=\"%d\" y=\"%zu\" text-anchor=\"end\">",
                b[i].value, unit[0] ? " " : "", unit, LW - 8, y + BH - 5);
        if (put_db_short(f, b[i].label, 28) != 0)
            return -1;
        fprintf(f,
                "</text><rect x=\"%d\" y=\"%zu\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>"
                "<text x=\"%.1f\" y=\"%zu\">%.6g</text></g>\n",
                LW, y, fmax(w, 1), BH, b[i].color, LW + fmax(w, 1) + 6, y + BH - 5, b[i].value);
    }
    if (n > shown)
        fprintf(f, "<text x=\"%d\" y=\"%zu\">… %zu more in the table below</text>\n", LW,
                MT + shown * (BH + GAP) + 14, n - shown);
    fprintf(f, "</svg>\n");
    return 0;
}

/* ---- accuracy and loss ------------------------------------------------------------------- */

typedef struct {
    int64_t round, n_loss;
    double accuracy, loss, train_accuracy, refined;
    char status[16];
} acc_row;

static int acc_fill(sqlite3_stmt *st, void *elem)
{
    acc_row *r = elem;
    r->round = sqlite3_column_int64(st, 0);
    snprintf(r->status, sizeof r->status, "%s", ctext(st, 1) ? ctext(st, 1) : "");
    r->accuracy = cnum(st, 2);
    r->loss = cnum(st, 3);
    r->train_accuracy = cnum(st, 4);
    r->n_loss = sqlite3_column_int64(st, 5);
    r->refined = cnum(st, 6);
    return 0;
}

static int section_accuracy(FILE *f, sqlite3 *db)
{
    int ret = -1;
    size_t n = 0;
    acc_row *rows = NULL;
    double *col = NULL;
    int has_loss = has_column(db, "updates", "train_loss");
    int has_tacc = has_column(db, "updates", "train_accuracy");
    if (has_loss < 0 || has_tacc < 0)
        return -1;
    /* round 0: the initial model; refined: the latest refinement of a round's aggregate */
    char sql[1400];
    snprintf(sql, sizeof sql,
             "SELECT 0, 'init', accuracy, NULL, NULL, 0, NULL FROM"
             " (SELECT accuracy FROM models WHERE kind = 'init' ORDER BY created_at, rowid LIMIT 1)"
             " UNION ALL SELECT r.id, r.status, r.accuracy, %s, %s, %s,"
             " (SELECT accuracy FROM models m WHERE m.kind = 'refine' AND m.round = r.id"
             "   ORDER BY m.created_at DESC, m.rowid DESC LIMIT 1)"
             " FROM rounds r ORDER BY 1",
             has_loss ? "(SELECT sum(u.train_loss * u.n_samples) / sum(u.n_samples) FROM updates u"
                        " WHERE u.round = r.id AND u.decision <> 'rejected'"
                        " AND u.train_loss IS NOT NULL)"
                      : "NULL",
             has_tacc ? "(SELECT sum(u.train_accuracy * u.n_samples) / sum(u.n_samples)"
                        " FROM updates u WHERE u.round = r.id AND u.decision <> 'rejected'"
                        " AND u.train_accuracy IS NOT NULL)"
                      : "NULL",
             has_loss ? "(SELECT count(u.train_loss) FROM updates u"
                        " WHERE u.round = r.id AND u.decision <> 'rejected')"
                      : "0");
    void *p;
    int lr = load_rows(db, sql, sizeof *rows, acc_fill, &p, &n);
    rows = p;
    if (lr != 0)
        goto cleanup;
    /* the chart's columns: x, accuracy, refined, loss, train accuracy */
    col = malloc(5 * (n ? n : 1) * sizeof *col);
    if (!col) {
        cli_error("out of memory");
        goto cleanup;
    }
    double *x = col, *acc = col + n, *ref = col + 2 * n, *loss = col + 3 * n, *tacc = col + 4 * n;
    int any_loss = 0, any_refined = 0;
    for (size_t i = 0; i < n; i++) {
        x[i] = (double)rows[i].round;
        acc[i] = rows[i].accuracy;
        ref[i] = rows[i].refined;
        loss[i] = rows[i].loss;
        tacc[i] = rows[i].train_accuracy;
        any_loss |= isfinite(loss[i]);
        any_refined |= isfinite(ref[i]);
    }

    fprintf(f, "<section id=\"accuracy\"><h2>Accuracy and training loss per round</h2>\n");
    series s1[2] = {{"test accuracy", acc, PALETTE[0], 0}, {"refined model", ref, PALETTE[4], 1}};
    line_chart(f, "chart-accuracy", "test accuracy per round", x, n, s1, any_refined ? 2 : 1, NAN,
               "", "round", "test accuracy", 0);
    if (!has_loss)
        fprintf(f, "<p class=\"note\" id=\"loss-note\">Train loss: not reported (this database "
                   "has no updates.train_loss column).</p>\n");
    else if (!any_loss)
        fprintf(f, "<p class=\"note\" id=\"loss-note\">Train loss: not reported by any edge."
                   "</p>\n");
    else {
        series s2[2] = {{"train loss", loss, PALETTE[1], 0},
                        {"train accuracy", tacc, PALETTE[2], 1}};
        line_chart(f, "chart-loss", "mean train loss per round", x, n, s2, has_tacc ? 2 : 1, NAN,
                   "", "round", "train loss (mean, weighted by samples)", 1);
    }
    fold_open(f, n);
    fprintf(f, "<table id=\"accuracy-data\" class=\"data\"><thead><tr><th>round</th><th>status"
               "</th><th>test accuracy</th><th>refined model</th><th>train loss</th>"
               "<th>train accuracy</th><th>updates reporting loss</th></tr></thead><tbody>\n");
    for (size_t i = 0; i < n; i++) {
        const acc_row *r = &rows[i];
        fprintf(f, "<tr data-round=\"%" PRId64 "\" data-status=\"", r->round);
        if (put_db(f, r->status) != 0)
            goto cleanup;
        fputc('"', f);
        attr_num(f, "data-accuracy", r->accuracy);
        attr_num(f, "data-refined-accuracy", r->refined);
        attr_num(f, "data-train-loss", r->loss);
        attr_num(f, "data-train-accuracy", r->train_accuracy);
        fprintf(f, "><td class=\"n\">%" PRId64 "</td><td>", r->round);
        if (put_db(f, r->status) != 0)
            goto cleanup;
        fprintf(f, "</td>");
        cell_num(f, r->accuracy, "");
        cell_num(f, r->refined, "");
        cell_num(f, r->loss, "not reported");
        cell_num(f, r->train_accuracy, "not reported");
        fprintf(f, "<td class=\"n\">%" PRId64 "</td></tr>\n", r->n_loss);
    }
    fprintf(f, "</tbody></table></details></section>\n");
    ret = 0;
cleanup:
    free(rows);
    free(col);
    return ret;
}

/* ---- privacy --------------------------------------------------------------------------- */

typedef struct {
    char *id;
    char *region;
    double rdp[FEDGE_DP_N_ORDERS];
    double eps;
    int64_t rounds;
    int64_t rounds_without_dp; /* closed rounds without a ledger row it entered: no ε */
} dev_eps;

static int dev_cmp(const void *a, const void *b)
{
    return strcmp(((const dev_eps *)a)->id, ((const dev_eps *)b)->id);
}

static dev_eps *dev_find(dev_eps *d, size_t n, const char *id)
{
    dev_eps key = {.id = (char *)id};
    return bsearch(&key, d, n, sizeof *d, dev_cmp);
}

static int dev_fill(sqlite3_stmt *st, void *elem)
{
    dev_eps *d = elem;
    d->id = ctext_dup(st, 0);
    d->region = ctext_dup(st, 1);
    d->rounds_without_dp = sqlite3_column_int64(st, 2);
    return d->id && d->region ? 0 : -1;
}

/* Every device that has an update, sorted by id. */
static int load_devices(sqlite3 *db, dev_eps **out, size_t *n_out)
{
    void *p;
    int ret = load_rows(db,
                        "SELECT u.device, (SELECT region FROM devices WHERE id = u.device),"
                        " (SELECT count(*) FROM updates x JOIN rounds r ON r.id = x.round"
                        "   WHERE x.device = u.device AND x.decision <> 'rejected' AND r.status = 'closed'"
                        "   AND NOT EXISTS (SELECT 1 FROM dp_ledger l WHERE l.round = r.id))"
                        " FROM (SELECT DISTINCT device FROM updates) u ORDER BY u.device",
                        sizeof **out, dev_fill, &p, n_out);
    *out = p;
    return ret;
}

static void devices_free(dev_eps *d, size_t n)
{
    for (size_t i = 0; d && i < n; i++) {
        free(d[i].id);
        free(d[i].region);
    }
    free(d);
}

/* One ledger row's RDP vector at the policy orders, as fedge_dp_ledger_spent
 * reads it: the run's (the stored vector when stored at these orders), or a
 * device's (q = 1 at the row's sigma). */
static int ledger_rdp(sqlite3_stmt *st, int device, const double *orders, double *rdp)
{
    double q = sqlite3_column_double(st, 1), sigma = sqlite3_column_double(st, 2);
    double stored[FEDGE_DP_N_ORDERS];
    if (!(q > 0.0 && q <= 1.0) || !(sigma > 0.0) || isinf(sigma))
        return FEDGE_ERR_INVALID_ARG;
    if (device)
        return fedge_rdp_compute(1.0, sigma, 1, orders, FEDGE_DP_N_ORDERS, rdp);
    if (fedge_rdp_unpack(sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3), stored,
                         FEDGE_DP_N_ORDERS) == FEDGE_OK &&
        memcmp(stored, orders, sizeof stored) == 0)
        return fedge_rdp_unpack(sqlite3_column_blob(st, 4), (size_t)sqlite3_column_bytes(st, 4),
                                rdp, FEDGE_DP_N_ORDERS);
    return fedge_rdp_compute(q, sigma, 1, orders, FEDGE_DP_N_ORDERS, rdp);
}

static int section_privacy(FILE *f, sqlite3 *db, const char *headline)
{
    sqlite3_stmt *st = NULL, *who = NULL;
    dev_eps *dev = NULL;
    size_t n_dev = 0, n = 0, cap = 0;
    double *x = NULL, *glob = NULL, *dmax = NULL, *dmean = NULL, *closed = NULL; /* x's block */
    double orders[FEDGE_DP_N_ORDERS], total[FEDGE_DP_N_ORDERS] = {0}, row[FEDGE_DP_N_ORDERS];
    int ret = -1, rc;
    fprintf(f, "<section id=\"privacy\"><h2>Privacy: &epsilon; spent against the budget</h2>\n"
               "<p class=\"headline\">");
    if (put_db(f, headline) != 0)
        return -1;
    fprintf(f, "</p>\n");
    double delta = meta_double(db, "policy_delta"), budget = meta_double(db, "policy_epsilon_budget");
    double dev_budget = meta_double(db, "policy_device_epsilon_budget");
    int have_ledger = has_column(db, "dp_ledger", "rdp");
    if (have_ledger < 0)
        return -1;
    if (!have_ledger || !(delta > 0 && delta < 1)) {
        fprintf(f, "<p class=\"note\" id=\"epsilon-note\">No &epsilon; chart: %s.</p></section>\n",
                have_ledger ? "no policy with a delta is recorded in this database"
                            : "this database predates the privacy ledger");
        return 0;
    }
    fedge_policy_dp_orders(orders);
    if (load_devices(db, &dev, &n_dev) != 0)
        goto cleanup;
    if (prep(db,
             "SELECT l.round, l.q, l.sigma, l.orders, l.rdp, r.closed_at FROM dp_ledger l"
             " LEFT JOIN rounds r ON r.id = l.round ORDER BY l.round",
             &st) != 0 ||
        prep(db, "SELECT DISTINCT device FROM updates WHERE round = ?1 AND decision <> 'rejected'",
             &who) != 0)
        goto cleanup;
    size_t n_contrib = 0;
    double sum_eps = 0, max_eps = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            double *cols = malloc(5 * nc * sizeof *cols);
            if (!cols) {
                cli_error("out of memory");
                goto cleanup;
            }
            double *old[5] = {x, glob, dmax, dmean, closed};
            for (int k = 0; k < 5; k++)
                if (n)
                    memcpy(cols + k * nc, old[k], n * sizeof *cols);
            free(x);
            x = cols, glob = cols + nc, dmax = cols + 2 * nc, dmean = cols + 3 * nc;
            closed = cols + 4 * nc;
            cap = nc;
        }
        int64_t round = sqlite3_column_int64(st, 0);
        if (ledger_rdp(st, 0, orders, row) != FEDGE_OK) {
            cli_error("privacy ledger: round %" PRId64 " has a malformed row", round);
            goto cleanup;
        }
        for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++)
            total[k] += row[k];
        x[n] = (double)round;
        closed[n] = cnum(st, 5);
        if (fedge_rdp_to_epsilon(orders, total, FEDGE_DP_N_ORDERS, delta, FEDGE_RDP_CONV_IMPROVED,
                                 &glob[n], NULL) != FEDGE_OK)
            glob[n] = NAN;
        if (ledger_rdp(st, 1, orders, row) != FEDGE_OK) {
            cli_error("privacy ledger: round %" PRId64 " has a malformed row", round);
            goto cleanup;
        }
        sqlite3_reset(who);
        sqlite3_bind_int64(who, 1, round);
        while ((rc = sqlite3_step(who)) == SQLITE_ROW) {
            dev_eps *d = dev_find(dev, n_dev, ctext(who, 0) ? ctext(who, 0) : "");
            if (!d)
                continue;
            for (size_t k = 0; k < FEDGE_DP_N_ORDERS; k++)
                d->rdp[k] += row[k];
            double before = d->rounds ? d->eps : 0, eps = NAN;
            if (!d->rounds++)
                n_contrib++;
            if (fedge_rdp_to_epsilon(orders, d->rdp, FEDGE_DP_N_ORDERS, delta,
                                     FEDGE_RDP_CONV_IMPROVED, &eps, NULL) != FEDGE_OK)
                eps = NAN;
            d->eps = eps;
            sum_eps += eps - before;
            max_eps = fmax(max_eps, eps);
        }
        if (step_done(db, rc) != 0)
            goto cleanup;
        dmax[n] = n_contrib ? max_eps : NAN;
        dmean[n] = n_contrib ? sum_eps / (double)n_contrib : NAN;
        n++;
    }
    if (step_done(db, rc) != 0)
        goto cleanup;
    if (!n) {
        fprintf(f, "<p class=\"note\" id=\"epsilon-note\">No &epsilon; chart: no round released "
                   "a noised aggregate (the privacy ledger is empty).</p></section>\n");
        ret = 0;
        goto cleanup;
    }
    series g = {"run total", glob, PALETTE[0], 0};
    line_chart(f, "chart-epsilon", "epsilon spent by the run against the global budget", x, n,
               &g, 1, budget, "budget", "round (DP rounds)", "epsilon", 1);
    series ds[2] = {{"device max", dmax, PALETTE[1], 0}, {"device mean", dmean, PALETTE[3], 1}};
    line_chart(f, "chart-epsilon-devices", "per-device epsilon: largest and mean", x, n, ds, 2,
               dev_budget > 0 ? dev_budget : NAN, "device budget", "round (DP rounds)",
               "epsilon", 1);
    fold_open(f, n);
    fprintf(f, "<table id=\"epsilon-data\" class=\"data\"");
    attr_num(f, "data-budget", budget);
    attr_num(f, "data-delta", delta);
    if (dev_budget > 0)
        attr_num(f, "data-device-budget", dev_budget);
    fprintf(f, "><thead><tr><th>round</th><th>closed</th><th>&epsilon; (run)</th>"
               "<th>&epsilon; device max</th><th>&epsilon; device mean</th></tr></thead><tbody>\n");
    for (size_t i = 0; i < n; i++) {
        char when[32] = "";
        if (isfinite(closed[i]))
            out_time(closed[i], when, sizeof when);
        fprintf(f, "<tr data-round=\"%.0f\"", x[i]);
        attr_num(f, "data-epsilon", glob[i]);
        attr_num(f, "data-device-max", dmax[i]);
        attr_num(f, "data-device-mean", dmean[i]);
        attr_num(f, "data-closed-at", closed[i]);
        fprintf(f, "><td class=\"n\">%.0f</td><td>%s</td>", x[i], when);
        cell_num(f, glob[i], "");
        cell_num(f, dmax[i], "");
        cell_num(f, dmean[i], "");
        fprintf(f, "</tr>\n");
    }
    size_t n_charged = 0;
    for (size_t i = 0; i < n_dev; i++)
        n_charged += dev[i].rounds > 0;
    fprintf(f, "</tbody></table></details>\n<h3>&epsilon; per device (its DP rounds, each at q = 1)"
               "</h3>\n");
    fold_open(f, n_charged);
    fprintf(f, "<table id=\"epsilon-devices\" class=\"data\"><thead><tr><th>device</th>"
               "<th>region</th><th>DP rounds</th><th>rounds without DP</th><th>&epsilon;</th></tr>"
               "</thead><tbody>\n");
    for (size_t i = 0; i < n_dev; i++) {
        if (!dev[i].rounds)
            continue;
        fprintf(f, "<tr data-device=\"");
        if (put_db(f, dev[i].id) != 0)
            goto cleanup;
        fprintf(f, "\" data-dp-rounds=\"%" PRId64 "\" data-rounds-without-dp=\"%" PRId64 "\"",
                dev[i].rounds, dev[i].rounds_without_dp);
        if (!dev[i].rounds_without_dp)
            attr_num(f, "data-epsilon", dev[i].eps);
        fprintf(f, "><td>");
        if (put_db(f, dev[i].id) != 0)
            goto cleanup;
        fprintf(f, "</td><td>");
        if (put_db(f, dev[i].region) != 0)
            goto cleanup;
        fprintf(f, "</td><td class=\"n\">%" PRId64 "</td><td class=\"n\">%" PRId64 "</td>",
                dev[i].rounds, dev[i].rounds_without_dp);
        if (dev[i].rounds_without_dp)
            fprintf(f, "<td>none: no DP guarantee</td>");
        else
            cell_num(f, dev[i].eps, "");
        fprintf(f, "</tr>\n");
    }
    fprintf(f, "</tbody></table></details></section>\n");
    ret = 0;
cleanup:
    sqlite3_finalize(st);
    sqlite3_finalize(who);
    devices_free(dev, n_dev);
    free(x); /* one block: the five columns */
    return ret;
}

/* ---- contributions and decisions --------------------------------------------------------- */

typedef struct {
    char *label, *extra;
    int64_t count, samples;
} tally;

static void tallies_free(tally *t, size_t n)
{
    for (size_t i = 0; t && i < n; i++) {
        free(t[i].label);
        free(t[i].extra);
    }
    free(t);
}

static int tally_fill(sqlite3_stmt *st, void *elem)
{
    tally *t = elem;
    t->label = ctext_dup(st, 0);
    t->extra = ctext_dup(st, 1);
    t->count = sqlite3_column_int64(st, 2);
    t->samples = sqlite3_column_int64(st, 3);
    return t->label && t->extra ? 0 : -1;
}

/* Rows of (label, extra, count, samples) from sql. */
static int load_tallies(sqlite3 *db, const char *sql, tally **out, size_t *n_out)
{
    void *p;
    int ret = load_rows(db, sql, sizeof **out, tally_fill, &p, n_out);
    *out = p;
    return ret;
}

static int bar_larger_first(const void *a, const void *b)
{
    double x = ((const bar *)a)->value, y = ((const bar *)b)->value;
    return (x < y) - (x > y);
}

/* The largest first, so that the bars drawn are the largest. */
static int tally_bars(FILE *f, const char *id, const char *aria, const tally *t, size_t n,
                      int by_samples, const char *unit)
{
    bar *b = calloc(n ? n : 1, sizeof *b);
    if (!b) {
        cli_error("out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        b[i] = (bar){t[i].label, NULL, by_samples ? (double)t[i].samples : (double)t[i].count,
                     PALETTE[by_samples ? 2 : 0]};
    qsort(b, n, sizeof *b, bar_larger_first);
    int r = bar_chart(f, id, aria, b, n, 40, unit);
    free(b);
    return r;
}

static int tally_table(FILE *f, const char *id, const tally *t, size_t n, const char *c0,
                       const char *a0, const char *c1, const char *a1)
{
    fold_open(f, n);
    fprintf(f, "<table id=\"%s\" class=\"data\"><thead><tr><th>%s</th>%s%s%s<th>updates</th>"
               "<th>samples</th></tr></thead><tbody>\n",
            id, c0, c1 ? "<th>" : "", c1 ? c1 : "", c1 ? "</th>" : "");
    for (size_t i = 0; i < n; i++) {
        fprintf(f, "<tr data-%s=\"", a0);
        if (put_db(f, t[i].label) != 0)
            return -1;
        if (a1) {
            fprintf(f, "\" data-%s=\"", a1);
            if (put_db(f, t[i].extra) != 0)
                return -1;
        }
        fprintf(f, "\" data-updates=\"%" PRId64 "\" data-samples=\"%" PRId64 "\"><td>",
                t[i].count, t[i].samples);
        if (put_db(f, t[i].label) != 0)
            return -1;
        if (c1) {
            fprintf(f, "</td><td>");
            if (put_db(f, t[i].extra) != 0)
                return -1;
        }
        fprintf(f, "</td><td class=\"n\">%" PRId64 "</td><td class=\"n\">%" PRId64 "</td></tr>\n",
                t[i].count, t[i].samples);
    }
    fprintf(f, "</tbody></table></details>\n");
    return 0;
}

static int section_contributions(FILE *f, sqlite3 *db)
{
    tally *dev = NULL, *reg = NULL;
    size_t n_dev = 0, n_reg = 0;
    int ret = -1;
    static const char *const by_device =
        "SELECT u.device, coalesce((SELECT region FROM devices WHERE id = u.device), ''),"
        " count(*), sum(u.n_samples) FROM updates u JOIN rounds r ON r.id = u.round"
        " WHERE u.decision <> 'rejected' AND r.status = 'closed' GROUP BY u.device ORDER BY u.device";
    static const char *const by_region =
        "SELECT coalesce(d.region, ''), '', count(*), sum(u.n_samples)"
        " FROM updates u JOIN rounds r ON r.id = u.round LEFT JOIN devices d ON d.id = u.device"
        " WHERE u.decision <> 'rejected' AND r.status = 'closed'"
        " GROUP BY coalesce(d.region, '') ORDER BY 1";
    if (load_tallies(db, by_device, &dev, &n_dev) != 0 ||
        load_tallies(db, by_region, &reg, &n_reg) != 0)
        goto cleanup;
    fprintf(f, "<section id=\"contributions\"><h2>Contributions</h2>\n<p>Updates that entered "
               "an aggregate (accepted or clipped, in a closed round), per device and per region."
               "</p>\n<h3>Samples per device (the largest first)</h3>\n");
    if (tally_bars(f, "chart-devices", "samples contributed per device", dev, n_dev, 1,
                   "samples") != 0 ||
        tally_table(f, "contrib-devices", dev, n_dev, "device", "device", "region", "region") != 0)
        goto cleanup;
    fprintf(f, "<h3>Samples per region</h3>\n");
    if (tally_bars(f, "chart-regions", "samples contributed per region", reg, n_reg, 1,
                   "samples") != 0 ||
        tally_table(f, "contrib-regions", reg, n_reg, "region", "region", NULL, NULL) != 0)
        goto cleanup;
    fprintf(f, "</section>\n");
    ret = 0;
cleanup:
    tallies_free(dev, n_dev);
    tallies_free(reg, n_reg);
    return ret;
}

static const char *decision_color(const char *d)
{
    if (strcmp(d, "accepted") == 0)
        return PALETTE[2];
    if (strcmp(d, "clipped") == 0)
        return PALETTE[3];
    if (strcmp(d, "rejected") == 0)
        return PALETTE[1];
    return PALETTE[4];
}

static int section_decisions(FILE *f, sqlite3 *db)
{
    tally *t = NULL;
    size_t n = 0;
    bar *b = NULL;
    int ret = -1;
    /* label: the rule; extra: the decision (updates) or event kind */
    static const char *const sql =
        "SELECT rule, decision, count(*), 0 FROM updates GROUP BY decision, rule"
        " UNION ALL SELECT rule, 'round: ' || kind, count(*), 1 FROM events"
        " WHERE rule IS NOT NULL GROUP BY kind, rule ORDER BY 4, 2, 1";
    if (load_tallies(db, sql, &t, &n) != 0)
        goto cleanup;
    b = calloc(n ? n : 1, sizeof *b);
    if (!b) {
        cli_error("out of memory");
        goto cleanup;
    }
    fprintf(f, "<section id=\"decisions\"><h2>Decisions by rule</h2>\n<p>Per-update decisions "
               "(<span style=\"color:%s\">accepted</span>, <span style=\"color:%s\">clipped</span>, "
               "<span style=\"color:%s\">rejected</span>) and round-level decisions, counted by the "
               "rule that decided.</p>\n",
            PALETTE[2], PALETTE[3], PALETTE[1]);
    for (size_t i = 0; i < n; i++)
        b[i] = (bar){t[i].label, t[i].extra, (double)t[i].count, decision_color(t[i].extra)};
    if (bar_chart(f, "chart-decisions", "decisions by rule", b, n, 60, "") != 0)
        goto cleanup;
    fold_open(f, n);
    fprintf(f, "<table id=\"decisions-data\" class=\"data\"><thead><tr><th>source</th>"
               "<th>decision or event</th><th>rule</th><th>count</th></tr></thead><tbody>\n");
    for (size_t i = 0; i < n; i++) {
        int event = t[i].samples != 0;
        const char *what = event ? t[i].extra + strlen("round: ") : t[i].extra;
        fprintf(f, "<tr data-source=\"%s\" data-%s=\"", event ? "event" : "update",
                event ? "kind" : "decision");
        if (put_db(f, what) != 0)
            goto cleanup;
        fprintf(f, "\" data-rule=\"");
        if (put_db(f, t[i].label) != 0)
            goto cleanup;
        fprintf(f, "\" data-count=\"%" PRId64 "\"><td>%s</td><td>", t[i].count,
                event ? "round" : "update");
        if (put_db(f, what) != 0)
            goto cleanup;
        fprintf(f, "</td><td>");
        if (put_db(f, t[i].label) != 0)
            goto cleanup;
        fprintf(f, "</td><td class=\"n\">%" PRId64 "</td></tr>\n", t[i].count);
    }
    fprintf(f, "</tbody></table></details></section>\n");
    ret = 0;
cleanup:
    free(b);
    tallies_free(t, n);
    return ret;
}

/* ---- lineage ------------------------------------------------------------------------------ */

typedef struct {
    size_t idx;
    char *kind, *relays;
    int64_t round, devices, samples;
    double accuracy;
} lin_node;

static int section_lineage(FILE *f, sqlite3 *db, const char *latest)
{
    model_graph g;
    sqlite3_stmt *m = NULL, *u = NULL, *rl = NULL;
    lin_node *chain = NULL;
    unsigned char *seen = NULL;
    size_t n = 0;
    int ret = -1;
    memset(&g, 0, sizeof g);
    fprintf(f, "<section id=\"lineage\"><h2>Lineage of the latest model</h2>\n");
    if (!latest || !latest[0]) {
        fprintf(f, "<p class=\"note\">No models.</p></section>\n");
        return 0;
    }
    if (graph_load(db, &g) != 0)
        goto cleanup;
    size_t at = graph_find(&g, latest);
    chain = calloc(g.n ? g.n : 1, sizeof *chain);
    seen = calloc(g.n ? g.n : 1, 1);
    if (!chain || !seen) {
        cli_error("out of memory");
        goto cleanup;
    }
    if (prep(db, "SELECT kind, round, accuracy FROM models WHERE version = ?1", &m) != 0 ||
        prep(db,
             "SELECT count(*), coalesce(sum(u.n_samples), 0) FROM updates u"
             " WHERE u.round = (SELECT id FROM rounds WHERE new_version = ?1 ORDER BY id LIMIT 1)"
             " AND u.decision <> 'rejected'",
             &u) != 0 ||
        prep(db,
             "SELECT group_concat(device, ', ') FROM (SELECT DISTINCT e.device FROM events e"
             " WHERE e.kind = 'relay_head' AND e.round ="
             " (SELECT id FROM rounds WHERE new_version = ?1 ORDER BY id LIMIT 1) ORDER BY 1)",
             &rl) != 0)
        goto cleanup;
    /* newest first; each model once, so a parent cycle ends the walk */
    for (; at != GRAPH_NONE && !seen[at]; at = g.nodes[at].parent_idx) {
        seen[at] = 1;
        lin_node *c = &chain[n++];
        c->idx = at;
        c->accuracy = NAN;
        const char *v = g.nodes[at].version;
        sqlite3_reset(m);
        sqlite3_bind_text(m, 1, v, -1, SQLITE_STATIC);
        if (sqlite3_step(m) == SQLITE_ROW) {
            c->kind = ctext_dup(m, 0);
            c->round = sqlite3_column_int64(m, 1);
            c->accuracy = cnum(m, 2);
        } else {
            c->kind = strdup("?");
        }
        sqlite3_reset(u);
        sqlite3_bind_text(u, 1, v, -1, SQLITE_STATIC);
        if (sqlite3_step(u) == SQLITE_ROW) {
            c->devices = sqlite3_column_int64(u, 0);
            c->samples = sqlite3_column_int64(u, 1);
        }
        sqlite3_reset(rl);
        sqlite3_bind_text(rl, 1, v, -1, SQLITE_STATIC);
        c->relays = strdup(sqlite3_step(rl) == SQLITE_ROW && ctext(rl, 0) ? ctext(rl, 0) : "");
        if (!c->kind || !c->relays) {
            cli_error("out of memory");
            goto cleanup;
        }
    }
    int missing_parent = n && g.nodes[chain[n - 1].idx].parent &&
                            g.nodes[chain[n - 1].idx].parent_idx == GRAPH_NONE;
    /* drawn oldest first, left to right, wrapping every PER_ROW models */
    enum { PER_ROW = 5, BXW = 124, BXH = 74, GX = 22, GY = 30, LW = 720 };
    size_t rows = (n + PER_ROW - 1) / PER_ROW, h = rows * (BXH + GY) + 10;
    fprintf(f,
            "<p>%zu model%s from the first to the latest; arrows point from parent to "
            "child.%s</p>\n<svg id=\"chart-lineage\" class=\"chart\" viewBox=\"0 0 %d %zu\" "
            "width=\"%d\" height=\"%zu\" role=\"img\" aria-label=\"lineage of the latest model\" "
            "xmlns=\"http://www.w3.org/2000/svg\"><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" "
            "refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">"
            "<path d=\"M0 0L10 5L0 10z\" fill=\"#555\"/></marker></defs>\n",
            n, n == 1 ? "" : "s", missing_parent ? " The oldest model's parent is missing from the models table." : "",
            LW, h, LW, h);
    for (size_t k = 0; k < n; k++) {
        const lin_node *c = &chain[n - 1 - k];
        size_t col = k % PER_ROW, row = k / PER_ROW;
        double x = 10 + col * (BXW + GX), y = 5 + row * (BXH + GY);
        if (k > 0) {
            size_t pc = (k - 1) % PER_ROW, pr = (k - 1) / PER_ROW;
            double x0 = 10 + pc * (BXW + GX) + BXW, y0 = 5 + pr * (BXH + GY) + BXH / 2.0;
            if (pr == row)
                fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"edge\" "
                           "marker-end=\"url(#arrow)\"/>\n",
                        x0, y0, x - 1, y + BXH / 2.0);
            else
                fprintf(f, "<path d=\"M%.1f %.1fL%.1f %.1fL%.1f %.1fL%.1f %.1f\" class=\"edge\" "
                           "fill=\"none\" marker-end=\"url(#arrow)\"/>\n",
                        x0 - BXW / 2.0, y0 + BXH / 2.0, x0 - BXW / 2.0, y - GY / 2.0,
                        x + BXW / 2.0, y - GY / 2.0, x + BXW / 2.0, y - 1);
        }
        const char *kind = c->kind;
        const char *fill = strcmp(kind, "init") == 0      ? "#eef"
                           : strcmp(kind, "refine") == 0 ? "#fef3e0"
                                                         : "#eaf6ea";
        const char *version = g.nodes[c->idx].version;
        fprintf(f, "<g class=\"model\" data-version=\"");
        if (put_db(f, version) != 0)
            goto cleanup;
        fprintf(f, "\"><title>");
        if (put_db(f, kind) != 0)
            goto cleanup;
        fputc(' ', f);
        if (put_db(f, version) != 0)
            goto cleanup;
        fprintf(f, ", round %" PRId64, c->round);
        if (isfinite(c->accuracy))
            fprintf(f, ", accuracy %.6g", c->accuracy);
        if (strcmp(kind, "aggregate") == 0)
            fprintf(f, ", %" PRId64 " update%s, %" PRId64 " samples", c->devices,
                    c->devices == 1 ? "" : "s", c->samples);
        if (c->relays[0]) {
            fprintf(f, ", through relays ");
            if (put_db(f, c->relays) != 0)
                goto cleanup;
        }
        fprintf(f,
                "</title><rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" rx=\"6\" "
                "fill=\"%s\" stroke=\"#555\"/><text x=\"%.1f\" y=\"%.1f\" class=\"mono\">",
                x, y, BXW, BXH, fill, x + 6, y + 16);
        if (put_db_short(f, version, 12) != 0)
            goto cleanup;
        fprintf(f, "</text><text x=\"%.1f\" y=\"%.1f\">", x + 6, y + 32);
        if (put_db_short(f, kind, 12) != 0)
            goto cleanup;
        fprintf(f, " · round %" PRId64 "</text>", c->round);
        if (isfinite(c->accuracy))
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">accuracy %.4f</text>", x + 6, y + 47,
                    c->accuracy);
        if (strcmp(kind, "aggregate") == 0)
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%" PRId64 " update%s%s</text>", x + 6, y + 62,
                    c->devices, c->devices == 1 ? "" : "s", c->relays[0] ? " via relays" : "");
        fprintf(f, "</g>\n");
    }
    fprintf(f, "</svg>\n");
    fold_open(f, n);
    fprintf(f, "<table id=\"lineage-data\" class=\"data\"><thead><tr><th>version</th>"
               "<th>kind</th><th>round</th><th>accuracy</th><th>updates</th><th>samples</th>"
               "<th>relays</th><th>parent</th></tr></thead><tbody>\n");
    for (size_t k = 0; k < n; k++) {
        const lin_node *c = &chain[k];
        const graph_node *nd = &g.nodes[c->idx];
        fprintf(f, "<tr data-version=\"");
        if (put_db(f, nd->version) != 0)
            goto cleanup;
        fprintf(f, "\" data-parent=\"");
        if (put_db(f, nd->parent ? nd->parent : "") != 0)
            goto cleanup;
        fprintf(f, "\" data-kind=\"");
        if (put_db(f, c->kind) != 0)
            goto cleanup;
        fprintf(f, "\" data-round=\"%" PRId64 "\" data-updates=\"%" PRId64 "\" data-samples=\"%"
                   PRId64 "\" data-relays=\"",
                c->round, c->devices, c->samples);
        if (put_db(f, c->relays) != 0)
            goto cleanup;
        fputc('"', f);
        attr_num(f, "data-accuracy", c->accuracy);
        fprintf(f, "><td><code>");
        if (put_db_short(f, nd->version, 12) != 0)
            goto cleanup;
        fprintf(f, "</code></td><td>");
        if (put_db(f, c->kind) != 0)
            goto cleanup;
        fprintf(f, "</td><td class=\"n\">%" PRId64 "</td>", c->round);
        cell_num(f, c->accuracy, "");
        fprintf(f, "<td class=\"n\">%" PRId64 "</td><td class=\"n\">%" PRId64 "</td><td>",
                c->devices, c->samples);
        if (put_db(f, c->relays) != 0)
            goto cleanup;
        fprintf(f, "</td><td><code>");
        if (put_db_short(f, nd->parent ? nd->parent : "", 12) != 0)
            goto cleanup;
        fprintf(f, "</code></td></tr>\n");
    }
    fprintf(f, "</tbody></table></details></section>\n");
    ret = 0;
cleanup:
    for (size_t k = 0; chain && k < n; k++) {
        free(chain[k].kind);
        free(chain[k].relays);
    }
    free(chain);
    free(seen);
    sqlite3_finalize(m);
    sqlite3_finalize(u);
    sqlite3_finalize(rl);
    graph_free(&g);
    return ret;
}

/* An out_table (cells hold text.h-escaped text) as an HTML table; with
 * data_attrs each row also carries its non-null cells as data-COLUMN
 * attributes ('_' written '-'), the text the JSON report prints. */
static void table_html_attrs(FILE *f, const char *id, const out_table *t, int data_attrs)
{
    fold_open(f, t->n_rows);
    fprintf(f, "<table id=\"%s\" class=\"data\"><thead><tr>", id);
    for (size_t c = 0; c < t->n_cols; c++)
        fprintf(f, "<th>%s</th>", t->cols[c]);
    fprintf(f, "</tr></thead><tbody>\n");
    for (size_t r = 0; r < t->n_rows; r++) {
        const out_cell *row = &t->cells[r * t->n_cols];
        fprintf(f, "<tr");
        for (size_t c = 0; data_attrs && c < t->n_cols; c++) {
            if (row[c].kind == CELL_NULL || !row[c].text)
                continue;
            fprintf(f, " data-");
            for (const char *k = t->cols[c]; *k; k++)
                fputc(*k == '_' ? '-' : *k, f);
            fprintf(f, "=\"");
            put_html(f, row[c].text);
            fprintf(f, "\"");
        }
        fprintf(f, ">");
        for (size_t c = 0; c < t->n_cols; c++) {
            fprintf(f, "<td%s>", row[c].kind == CELL_INT || row[c].kind == CELL_NUM
                                     ? " class=\"n\"" : "");
            put_html(f, row[c].text ? row[c].text : "");
            fprintf(f, "</td>");
        }
        fprintf(f, "</tr>\n");
    }
    fprintf(f, "</tbody></table></details>\n");
}

static void table_html(FILE *f, const char *id, const out_table *t) { table_html_attrs(f, id, t, 0); }

/* ---- the page ------------------------------------------------------------------------------ */

static const char CSS[] =
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;"
    "max-width:980px;color:#222;padding:0 16px}"
    "h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:36px;border-bottom:1px "
    "solid #ddd;padding-bottom:4px}h3{font-size:15px}"
    "table{border-collapse:collapse;margin:10px 0;font-size:13px}"
    "th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}"
    "th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "details{margin:6px 0}summary{cursor:pointer;color:#555}"
    ".note{color:#666;font-style:italic}.headline{font-weight:600}"
    ".ok{color:#1a7f37;font-weight:700}.failed{color:#c62828;font-weight:700}"
    "svg.chart{display:block;margin:8px 0;background:#fff;border:1px solid #eee;max-width:100%;"
    "height:auto}"
    "svg text{font:12px system-ui,sans-serif;fill:#333}svg .mono{font-family:monospace}"
    "svg .grid{stroke:#eee}svg .frame{stroke:#888}svg .budget{stroke:#c62828;"
    "stroke-dasharray:4 3;stroke-width:1.5}svg .budget-label{fill:#c62828}"
    "svg .edge{stroke:#555;stroke-width:1.5}code{font-size:12px}";

int html_report(FILE *f, sqlite3 *db, const html_inputs *in)
{
    char now[32];
    out_time((double)time(NULL), now, sizeof now);
    fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
               "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
               "<meta name=\"generator\" content=\"fedge-audit\">\n"
               "<title>fedge audit report</title>\n<style>%s</style></head>\n<body>\n"
               "<h1>fedge audit report</h1>\n<p>Database <code>",
            CSS);
    if (put_db(f, in->db_path) != 0)
        return -1;
    fprintf(f, "</code>, generated %s. Self-contained: nothing on this page is fetched.</p>\n",
            now);
    fprintf(f, "<p id=\"verify\">Verification: ");
    if (in->verify_line) {
        fprintf(f, "<span class=\"%s\">%s</span> ", in->verify_failed ? "failed" : "ok",
                in->verify_failed ? "FAILED" : "OK");
        if (put_db(f, in->verify_line) != 0)
            return -1;
    } else {
        fprintf(f, "not run (give <code>--pubkey</code>).");
    }
    fprintf(f, "</p>\n");
    if (in->cycle) {
        fprintf(f, "<p id=\"cycle\" class=\"failed\">FAILED: lineage_cycle: ");
        if (put_db(f, in->cycle) != 0)
            return -1;
        fprintf(f, "</p>\n");
    }
    fprintf(f, "<section id=\"summary\"><h2>Summary</h2>\n<table id=\"summary-data\" "
               "class=\"data\"><tbody>\n");
    const out_table *t = in->summary;
    for (size_t r = 0; t && r < t->n_rows; r++) {
        const out_cell *c = &t->cells[r * t->n_cols];
        fprintf(f, "<tr data-item=\"");
        put_html(f, c[0].text);
        fprintf(f, "\"><th>");
        put_html(f, c[0].text);
        fprintf(f, "</th><td%s>", c[1].kind == CELL_INT ? " class=\"n\"" : "");
        put_html(f, c[1].text ? c[1].text : "");
        fprintf(f, "</td></tr>\n");
    }
    fprintf(f, "</tbody></table></section>\n");
    if (section_accuracy(f, db) != 0 || section_privacy(f, db, in->privacy_headline) != 0 ||
        section_contributions(f, db) != 0 || section_decisions(f, db) != 0 ||
        section_lineage(f, db, in->latest) != 0)
        return -1;
    fprintf(f, "<section id=\"refused\"><h2>Refused updates and round-level decisions</h2>\n");
    if (in->refused && in->refused->n_rows)
        table_html(f, "refused-data", in->refused);
    else
        fprintf(f, "<p class=\"note\">None.</p>\n");
    fprintf(f, "</section>\n");
    fprintf(f, "<section id=\"keys\"><h2>Keys file changes</h2>\n");
    if (in->keys && in->keys->n_rows)
        table_html_attrs(f, "keys-data", in->keys, 1);
    else
        fprintf(f, "<p class=\"note\">None recorded.</p>\n");
    fprintf(f, "</section>\n");
    fprintf(f, "</body></html>\n");
    return 0;
}
