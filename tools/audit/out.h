/* out.h — fedge-audit's output: tables printed as aligned text, Markdown
 * or CSV, and a small streaming JSON writer. A table owns copies of its
 * cells; free with out_table_free. Allocation failures are sticky: the
 * table records them and out_table_failed() reports it. Every string a cell
 * or json_str receives is stored and printed escaped (text.h): control
 * characters, C1 controls and invalid UTF-8 as \xNN, a backslash as \\. */
#ifndef FEDGE_AUDIT_OUT_H
#define FEDGE_AUDIT_OUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define OUT_MAX_COLS 12

typedef enum { CELL_NULL = 0, CELL_TEXT, CELL_NUM, CELL_INT } cell_kind;

typedef struct {
    cell_kind kind;
    char *text; /* owned display text; NULL for CELL_NULL */
    double num; /* CELL_NUM: the exact value, for JSON */
} out_cell;

typedef struct {
    size_t n_cols;
    const char *cols[OUT_MAX_COLS]; /* static strings */
    size_t n_rows, cap;
    out_cell *cells; /* n_rows * n_cols */
    int failed;
} out_table;

void out_table_init(out_table *t, size_t n_cols, const char *const *cols);
void out_table_free(out_table *t);
int out_table_failed(const out_table *t);
/* Starts a row; then set its cells (unset cells are NULL). */
void out_row(out_table *t);
void out_text(out_table *t, size_t col, const char *s);  /* NULL: CELL_NULL */
void out_textf(out_table *t, size_t col, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void out_num(out_table *t, size_t col, double v);        /* shown %.6g; NaN: NULL */
void out_int(out_table *t, size_t col, int64_t v);

void out_print_text(FILE *f, const out_table *t, const char *indent);
void out_print_md(FILE *f, const out_table *t);
/* Every row starts with a "section" column holding `section`. */
void out_print_csv(FILE *f, const out_table *t, const char *section, int header);

/* ---- JSON ----------------------------------------------------------------- */

typedef struct {
    FILE *f;
    int depth;
    int first[32];
} json_w;

void json_init(json_w *j, FILE *f);
void json_obj(json_w *j, const char *key); /* key NULL inside arrays / at top */
void json_obj_end(json_w *j);
void json_arr(json_w *j, const char *key);
void json_arr_end(json_w *j);
void json_str(json_w *j, const char *key, const char *v); /* NULL: null */
/* A string escaped already (a cell's text): JSON quoting only. */
void json_cell(json_w *j, const char *key, const char *escaped);
void json_num(json_w *j, const char *key, double v);      /* NaN/Inf: null */
void json_int(json_w *j, const char *key, int64_t v);
void json_bool(json_w *j, const char *key, int v);
void json_null(json_w *j, const char *key);
/* A table as an array of objects keyed by column name. */
void json_table(json_w *j, const char *key, const out_table *t);
void json_done(json_w *j); /* final newline */

/* ISO 8601 UTC ("2026-11-25T19:40:01Z") of Unix seconds. */
void out_time(double unix_s, char *buf, size_t cap);

#endif
