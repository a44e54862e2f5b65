/* out.c — tables and JSON for fedge-audit (see out.h). */
#include "out.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text.h"

void out_table_init(out_table *t, size_t n_cols, const char *const *cols)
{
    memset(t, 0, sizeof *t);
    if (n_cols > OUT_MAX_COLS) {
        t->failed = 1;
        n_cols = OUT_MAX_COLS;
    }
    t->n_cols = n_cols;
    for (size_t i = 0; i < n_cols; i++)
        t->cols[i] = cols[i];
}

void out_table_free(out_table *t)
{
    for (size_t i = 0; i < t->n_rows * t->n_cols; i++)
        free(t->cells[i].text);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

int out_table_failed(const out_table *t) { return t->failed; }

void out_row(out_table *t)
{
    if (t->failed)
        return;
    if (t->n_rows == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        out_cell *c = realloc(t->cells, cap * t->n_cols * sizeof *c);
        if (!c) {
            t->failed = 1;
            return;
        }
        t->cells = c;
        t->cap = cap;
    }
    memset(&t->cells[t->n_rows * t->n_cols], 0, t->n_cols * sizeof *t->cells);
    t->n_rows++;
}

static void set_cell(out_table *t, size_t col, cell_kind kind, const char *s)
{
    if (t->failed || t->n_rows == 0 || col >= t->n_cols)
        return;
    out_cell *c = &t->cells[(t->n_rows - 1) * t->n_cols + col];
    free(c->text);
    c->text = NULL;
    c->kind = CELL_NULL;
    if (!s)
        return;
    c->text = fedge_text_escape_dup(s); /* display text: never raw bytes from the log */
    if (!c->text) {
        t->failed = 1;
        return;
    }
    c->kind = kind;
}

void out_text(out_table *t, size_t col, const char *s) { set_cell(t, col, CELL_TEXT, s); }

void out_textf(out_table *t, size_t col, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    set_cell(t, col, CELL_TEXT, buf);
}

void out_num(out_table *t, size_t col, double v)
{
    char buf[64];
    if (!isfinite(v)) {
        set_cell(t, col, CELL_NULL, NULL);
        return;
    }
    snprintf(buf, sizeof buf, "%.6g", v);
    set_cell(t, col, CELL_NUM, buf);
    if (!t->failed && t->n_rows > 0 && col < t->n_cols)
        t->cells[(t->n_rows - 1) * t->n_cols + col].num = v;
}

void out_int(out_table *t, size_t col, int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    set_cell(t, col, CELL_INT, buf);
}

static const out_cell *cell(const out_table *t, size_t r, size_t c)
{
    return &t->cells[r * t->n_cols + c];
}

/* Display width in characters (UTF-8 continuation bytes do not count). */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

void out_print_text(FILE *f, const out_table *t, const char *indent)
{
    size_t w[OUT_MAX_COLS];
    for (size_t c = 0; c < t->n_cols; c++) {
        w[c] = width(t->cols[c]);
        for (size_t r = 0; r < t->n_rows; r++) {
            const out_cell *x = cell(t, r, c);
            size_t n = x->text ? width(x->text) : 1;
            if (n > w[c])
                w[c] = n;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        size_t rows = pass == 0 ? 1 : t->n_rows;
        for (size_t r = 0; r < rows; r++) {
            fputs(indent ? indent : "", f);
            for (size_t c = 0; c < t->n_cols; c++) {
                const char *s;
                int right = 0;
                if (pass == 0) {
                    s = t->cols[c];
                } else {
                    const out_cell *x = cell(t, r, c);
                    s = x->text ? x->text : "-";
                    right = x->kind == CELL_NUM || x->kind == CELL_INT;
                }
                size_t pad = w[c] - width(s);
                int last = c + 1 == t->n_cols;
                if (right)
                    fprintf(f, "%*s%s", (int)pad, "", s);
                else
                    fprintf(f, "%s%*s", s, last ? 0 : (int)pad, "");
                if (!last)
                    fputs("  ", f);
            }
            fputc('\n', f);
        }
    }
}

static void md_escaped(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", f);
        else if (*s == '\n')
            fputc(' ', f);
        else
            fputc(*s, f);
    }
}

void out_print_md(FILE *f, const out_table *t)
{
    fputc('|', f);
    for (size_t c = 0; c < t->n_cols; c++)
        fprintf(f, " %s |", t->cols[c]);
    fputs("\n|", f);
    for (size_t c = 0; c < t->n_cols; c++) {
        int num = 0;
        for (size_t r = 0; r < t->n_rows; r++) {
            cell_kind k = cell(t, r, c)->kind;
            if (k == CELL_TEXT) {
                num = 0;
                break;
            }
            num |= k == CELL_NUM || k == CELL_INT;
        }
        fputs(num ? " ---: |" : " --- |", f);
    }
    fputc('\n', f);
    for (size_t r = 0; r < t->n_rows; r++) {
        fputc('|', f);
        for (size_t c = 0; c < t->n_cols; c++) {
            const out_cell *x = cell(t, r, c);
            fputc(' ', f);
            md_escaped(f, x->text ? x->text : "");
            fputs(" |", f);
        }
        fputc('\n', f);
    }
}

static void csv_field(FILE *f, const char *s)
{
    if (!s)
        return;
    if (strpbrk(s, ",\"\r\n") == NULL) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

void out_print_csv(FILE *f, const out_table *t, const char *section, int header)
{
    if (header) {
        fputs("section", f);
        for (size_t c = 0; c < t->n_cols; c++) {
            fputc(',', f);
            csv_field(f, t->cols[c]);
        }
        fputs("\r\n", f);
    }
    char safe_section[256];
    fedge_text_escape(section ? section : "", section ? strlen(section) : 0, safe_section,
                      sizeof safe_section);
    for (size_t r = 0; r < t->n_rows; r++) {
        csv_field(f, safe_section);
        for (size_t c = 0; c < t->n_cols; c++) {
            const out_cell *x = cell(t, r, c);
            fputc(',', f);
            if (x->kind == CELL_NUM)
                fprintf(f, "%.15g", x->num);
            else
                csv_field(f, x->text);
        }
        fputs("\r\n", f);
    }
}

/* ---- JSON ----------------------------------------------------------------- */

void json_init(json_w *j, FILE *f)
{
    memset(j, 0, sizeof *j);
    j->f = f;
    j->first[0] = 1;
}

static void indent(json_w *j)
{
    fputc('\n', j->f);
    for (int i = 0; i < j->depth; i++)
        fputs("  ", j->f);
}

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

static void key_prefix(json_w *j, const char *key)
{
    if (j->depth > 0) {
        if (!j->first[j->depth])
            fputc(',', j->f);
        indent(j);
    }
    j->first[j->depth] = 0;
    if (key) {
        json_string(j->f, key);
        fputs(": ", j->f);
    }
}

static void open_(json_w *j, const char *key, char ch)
{
    key_prefix(j, key);
    fputc(ch, j->f);
    if (j->depth < 31)
        j->depth++;
    j->first[j->depth] = 1;
}

static void close_(json_w *j, char ch)
{
    int empty = j->first[j->depth];
    if (j->depth > 0)
        j->depth--;
    if (!empty)
        indent(j);
    fputc(ch, j->f);
}

void json_obj(json_w *j, const char *key) { open_(j, key, '{'); }
void json_obj_end(json_w *j) { close_(j, '}'); }
void json_arr(json_w *j, const char *key) { open_(j, key, '['); }
void json_arr_end(json_w *j) { close_(j, ']'); }

void json_str(json_w *j, const char *key, const char *v)
{
    key_prefix(j, key);
    char *safe = v ? fedge_text_escape_dup(v) : NULL;
    if (safe)
        json_string(j->f, safe);
    else
        fputs(v ? "\"\"" : "null", j->f);
    free(safe);
}

void json_cell(json_w *j, const char *key, const char *escaped)
{
    key_prefix(j, key);
    if (escaped)
        json_string(j->f, escaped);
    else
        fputs("null", j->f);
}

void json_num(json_w *j, const char *key, double v)
{
    key_prefix(j, key);
    if (!isfinite(v)) {
        fputs("null", j->f);
        return;
    }
    /* The shortest form that reads back as the same double. */
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    fputs(buf, j->f);
}

void json_int(json_w *j, const char *key, int64_t v)
{
    key_prefix(j, key);
    fprintf(j->f, "%" PRId64, v);
}

void json_bool(json_w *j, const char *key, int v)
{
    key_prefix(j, key);
    fputs(v ? "true" : "false", j->f);
}

void json_null(json_w *j, const char *key)
{
    key_prefix(j, key);
    fputs("null", j->f);
}

void json_table(json_w *j, const char *key, const out_table *t)
{
    json_arr(j, key);
    for (size_t r = 0; r < t->n_rows; r++) {
        json_obj(j, NULL);
        for (size_t c = 0; c < t->n_cols; c++) {
            const out_cell *x = cell(t, r, c);
            if (x->kind == CELL_NULL) {
                json_null(j, t->cols[c]);
            } else if (x->kind == CELL_NUM) {
                json_num(j, t->cols[c], x->num);
            } else if (x->kind == CELL_INT) {
                key_prefix(j, t->cols[c]);
                fputs(x->text, j->f);
            } else { /* cells hold escaped display text already */
                key_prefix(j, t->cols[c]);
                json_string(j->f, x->text);
            }
        }
        json_obj_end(j);
    }
    json_arr_end(j);
}

void json_done(json_w *j) { fputc('\n', j->f); }

void out_time(double unix_s, char *buf, size_t cap)
{
    if (!isfinite(unix_s) || unix_s < 0 || unix_s > 253402300799.0) {
        snprintf(buf, cap, "-");
        return;
    }
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
