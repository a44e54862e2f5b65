/* graph.c — the models.parent graph (see graph.h). */
#include "graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int node_cmp(const void *a, const void *b)
{
    return strcmp(((const graph_node *)a)->version, ((const graph_node *)b)->version);
}

void graph_free(model_graph *g)
{
    for (size_t i = 0; g->nodes && i < g->n; i++) {
        free(g->nodes[i].version);
        free(g->nodes[i].parent);
    }
    free(g->nodes);
    free(g->child_start);
    free(g->children);
    memset(g, 0, sizeof *g);
}

size_t graph_find(const model_graph *g, const char *version)
{
    size_t lo = 0, hi = g->n;
    while (version && lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->nodes[mid].version, version);
        if (c == 0)
            return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return GRAPH_NONE;
}

static char *dup_or_null(const unsigned char *s, int *oom)
{
    if (!s)
        return NULL;
    char *d = strdup((const char *)s);
    if (!d)
        *oom = 1;
    return d;
}

int graph_load(sqlite3 *db, model_graph *g)
{
    sqlite3_stmt *st = NULL;
    size_t cap = 0;
    int oom = 0, rc;
    memset(g, 0, sizeof *g);
    if (sqlite3_prepare_v2(db, "SELECT version, parent FROM models", -1, &st, NULL) != SQLITE_OK) {
        cli_error("database query failed: %s", sqlite3_errmsg(db));
        return -1;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (g->n == cap) {
            size_t ncap = cap ? 2 * cap : 64;
            graph_node *x = realloc(g->nodes, ncap * sizeof *x);
            if (!x) {
                oom = 1;
                break;
            }
            g->nodes = x;
            cap = ncap;
        }
        graph_node *nd = &g->nodes[g->n];
        nd->version = dup_or_null(sqlite3_column_text(st, 0), &oom);
        nd->parent = dup_or_null(sqlite3_column_text(st, 1), &oom);
        nd->parent_idx = GRAPH_NONE;
        if (!nd->version && !oom)
            nd->version = strdup("");
        if (!nd->version)
            oom = 1;
        g->n++;
        if (oom)
            break;
    }
    sqlite3_finalize(st);
    if (oom) {
        cli_error("out of memory");
        return -1;
    }
    if (rc != SQLITE_DONE) {
        cli_error("database query failed: %s", sqlite3_errmsg(db));
        return -1;
    }
    if (g->n)
        qsort(g->nodes, g->n, sizeof *g->nodes, node_cmp);
    g->child_start = calloc(g->n + 1, sizeof *g->child_start);
    g->children = malloc((g->n ? g->n : 1) * sizeof *g->children);
    if (!g->child_start || !g->children) {
        cli_error("out of memory");
        return -1;
    }
    for (size_t i = 0; i < g->n; i++) {
        size_t p = graph_find(g, g->nodes[i].parent);
        g->nodes[i].parent_idx = p;
        if (p != GRAPH_NONE)
            g->child_start[p + 1]++;
    }
    for (size_t i = 0; i < g->n; i++)
        g->child_start[i + 1] += g->child_start[i];
    size_t *fill = calloc(g->n ? g->n : 1, sizeof *fill);
    if (!fill) {
        cli_error("out of memory");
        return -1;
    }
    for (size_t i = 0; i < g->n; i++) {
        size_t p = g->nodes[i].parent_idx;
        if (p != GRAPH_NONE)
            g->children[g->child_start[p] + fill[p]++] = i;
    }
    free(fill);
    return 0;
}

int graph_cycle(const model_graph *g, char *buf, size_t cap)
{
    /* Each node has at most one parent: follow parents from every node not
     * yet settled, marking the current walk; meeting the walk again is a
     * cycle. Every node is walked once: O(n). */
    unsigned char *state = calloc(g->n ? g->n : 1, 1); /* 0 new, 1 on this walk, 2 settled */
    if (!state) {
        snprintf(buf, cap, "(out of memory while checking models.parent)");
        return 1;
    }
    int found = 0;
    for (size_t s = 0; s < g->n && !found; s++) {
        size_t i = s;
        while (i != GRAPH_NONE && state[i] == 0) {
            state[i] = 1;
            i = g->nodes[i].parent_idx;
        }
        if (i != GRAPH_NONE && state[i] == 1) {
            found = 1;
            size_t at = 0, j = i, steps = 0;
            buf[0] = '\0';
            do {
                int n = snprintf(buf + at, cap - at, "%.12s -> ", g->nodes[j].version);
                if (n < 0 || (size_t)n >= cap - at)
                    break;
                at += (size_t)n;
                j = g->nodes[j].parent_idx;
                if (++steps == 8 && j != i) {
                    n = snprintf(buf + at, cap - at, "... -> ");
                    if (n > 0 && (size_t)n < cap - at)
                        at += (size_t)n;
                    break;
                }
            } while (j != i);
            snprintf(buf + at, cap - at, "%.12s", g->nodes[i].version);
        }
        for (size_t k = s; k != GRAPH_NONE && state[k] == 1; k = g->nodes[k].parent_idx)
            state[k] = 2;
    }
    free(state);
    return found;
}
