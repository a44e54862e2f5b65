/* ingest_pool.h — stage (a) of ingest.h (fedge_ingest_open: AEAD, decode)
 * on worker threads, so that the CoAP I/O thread keeps answering while
 * updates are opened (issue 9 §4).
 *
 * The owner thread takes the snapshot, submits a job (snapshot + frame
 * bytes); a worker opens it in place (fedge_ingest_open_inplace: a
 * finished job holds no decoded delta); the owner takes finished jobs (in order of
 * completion) and commits them (fedge_ingest_commit_group). The pool holds
 * at most `capacity` jobs (queued, being opened, or finished and not yet
 * taken): a submit beyond that is refused with FEDGE_ERR_BUSY at once (the
 * server answers 5.03 + Max-Age; nothing blocks, nothing is dropped).
 * An eventfd (fedge_ingest_pool_fd) is readable while finished jobs wait,
 * for the owner's poll loop. Jobs never touch SQLite or the aggregator:
 * the snapshot's pointers (device key, run id) must outlive the pool.
 * Shutdown refuses new jobs (FEDGE_ERR_STATE), lets the workers open what
 * is queued, and joins them; free releases every job not taken. */
#ifndef FEDGE_INGEST_POOL_H
#define FEDGE_INGEST_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "ingest.h"

typedef struct fedge_ingest_job {
    void *owner;                 /* the caller's: whom to answer */
    int device;                  /* index into keys.devices */
    fedge_ingest_snapshot snap;
    uint8_t *body;               /* the sealed frame; owned by the job, the frame's once opened (NULL) */
    size_t len;
    fedge_ingest_frame frame;    /* stage (a)'s result, when status == FEDGE_OK */
    int status;                  /* fedge_ingest_open's return */
    double queued_at, opened_at, done_at; /* CLOCK_MONOTONIC seconds */
    struct fedge_ingest_job *next;
} fedge_ingest_job;

typedef struct fedge_ingest_pool fedge_ingest_pool;

/* workers >= 1 threads, capacity >= 1 jobs held at once. */
int fedge_ingest_pool_new(size_t workers, size_t capacity, fedge_ingest_pool **out);
/* A job with owner, device, snap, body and len set (fedge_ingest_job_new);
 * on FEDGE_OK the pool owns it until it is taken back. FEDGE_ERR_BUSY: the
 * pool holds `capacity` jobs; FEDGE_ERR_STATE: shut down. The caller keeps
 * the job on error. */
int fedge_ingest_pool_submit(fedge_ingest_pool *p, fedge_ingest_job *job);
/* Up to max finished jobs, oldest completion first, without waiting; the
 * caller owns them (fedge_ingest_job_free). Returns how many. */
size_t fedge_ingest_pool_take(fedge_ingest_pool *p, fedge_ingest_job **jobs, size_t max);
/* Waits up to timeout_ms (-1: no limit) for a finished job; 1 when one
 * waits, 0 on timeout. */
int fedge_ingest_pool_wait(fedge_ingest_pool *p, int timeout_ms);
/* Readable while finished jobs wait (take drains it). */
int fedge_ingest_pool_fd(const fedge_ingest_pool *p);
/* Jobs held: queued + being opened + finished not taken. */
size_t fedge_ingest_pool_held(fedge_ingest_pool *p);
size_t fedge_ingest_pool_capacity(const fedge_ingest_pool *p);
/* Refuses new jobs, opens the queued ones, joins the workers. */
void fedge_ingest_pool_shutdown(fedge_ingest_pool *p);
/* Shutdown, then frees the jobs not taken. NULL is fine. */
void fedge_ingest_pool_free(fedge_ingest_pool *p);

/* A job owning a copy of body (NULL on no memory). */
fedge_ingest_job *fedge_ingest_job_new(void *owner, int device, const fedge_ingest_snapshot *snap,
                                       const uint8_t *body, size_t len);
/* A job taking body (malloc'd, len bytes) as its own, without a copy (a
 * body reassembled by upload.c); NULL on no memory, body then still the
 * caller's. */
fedge_ingest_job *fedge_ingest_job_adopt(void *owner, int device, const fedge_ingest_snapshot *snap, uint8_t *body,
                                         size_t len);
void fedge_ingest_job_free(fedge_ingest_job *job);

#endif
