/* graph.h — the model graph (models.parent) held in memory, so that every
 * walk over it is bounded by the number of rows: lookups by binary search,
 * children by index, and a linear-time check for a parent cycle (which
 * the aggregator never writes: a cycle means the log was altered). */
#ifndef FEDGE_AUDIT_GRAPH_H
#define FEDGE_AUDIT_GRAPH_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#define GRAPH_NONE SIZE_MAX

typedef struct {
    char *version;     /* owned */
    char *parent;      /* owned; NULL for a model without parent */
    size_t parent_idx; /* GRAPH_NONE when no parent or the parent is not a row */
} graph_node;

typedef struct {
    size_t n;
    graph_node *nodes;   /* sorted by version */
    size_t *child_start; /* n + 1: children of i are children[child_start[i]..[i+1]) */
    size_t *children;
} model_graph;

/* Reads every models row. 0 done, -1 database error or out of memory (the
 * reason is on stderr). Free with graph_free, also after a failure. */
int graph_load(sqlite3 *db, model_graph *g);
void graph_free(model_graph *g);
/* Index of version, or GRAPH_NONE. */
size_t graph_find(const model_graph *g, const char *version);
/* 1 when parent links form a cycle: buf gets "a -> b -> a" (12 hex digits
 * each, shortened after 8 steps); 0 when they do not. */
int graph_cycle(const model_graph *g, char *buf, size_t cap);

#endif
