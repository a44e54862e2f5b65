/* ingest_pool.c — worker threads for stage (a) of the update path (ingest_pool.h). */
#include "ingest_pool.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

struct fedge_ingest_pool {
    pthread_mutex_t mu;
    pthread_cond_t work;
    fedge_ingest_job *queue, *queue_tail;  /* FIFO to the workers */
    fedge_ingest_job *done, *done_tail;    /* FIFO back to the owner */
    size_t held, capacity;
    int stopping;
    int efd;
    int signalled;    /* efd's counter is non-zero (written since the last read) */
    size_t n_threads;
    pthread_t *threads;
};

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *worker(void *arg)
{
    fedge_ingest_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->queue && !p->stopping)
            pthread_cond_wait(&p->work, &p->mu);
        fedge_ingest_job *j = p->queue;
        if (!j)
            break; /* stopping and nothing left to open */
        p->queue = j->next;
        if (!p->queue)
            p->queue_tail = NULL;
        pthread_mutex_unlock(&p->mu);

        j->next = NULL;
        j->opened_at = mono();
        /* decrypted in place: the frame takes the body as its own */
        j->status = fedge_ingest_open_inplace(&j->snap, j->body, j->len, &j->frame);
        j->body = NULL;

        pthread_mutex_lock(&p->mu);
        j->done_at = mono(); /* under the lock: the done list is in done_at order */
        if (p->done_tail)
            p->done_tail->next = j;
        else
            p->done = j;
        p->done_tail = j;
        if (!p->signalled) {
            uint64_t one = 1;
            /* an eventfd write only fails when the counter would overflow */
            ssize_t w = write(p->efd, &one, sizeof one);
            (void)w;
            p->signalled = 1;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int fedge_ingest_pool_new(size_t workers, size_t capacity, fedge_ingest_pool **out)
{
    int ret = FEDGE_OK;
    *out = NULL;
    if (workers < 1 || workers > 1024 || capacity < 1)
        return FEDGE_ERR_INVALID_ARG;
    fedge_ingest_pool *p = calloc(1, sizeof *p);
    if (!p)
        return FEDGE_ERR_NOMEM;
    p->efd = -1;
    p->capacity = capacity;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0)
        FAIL(FEDGE_ERR_IO);
    p->threads = calloc(workers, sizeof *p->threads);
    if (!p->threads)
        FAIL(FEDGE_ERR_NOMEM);
    for (; p->n_threads < workers; p->n_threads++)
        if (pthread_create(&p->threads[p->n_threads], NULL, worker, p) != 0)
            FAIL(FEDGE_ERR_NOMEM);
    *out = p;
cleanup:
    if (ret != FEDGE_OK)
        fedge_ingest_pool_free(p);
    return ret;
}

int fedge_ingest_pool_submit(fedge_ingest_pool *p, fedge_ingest_job *job)
{
    int ret = FEDGE_OK;
    pthread_mutex_lock(&p->mu);
    if (p->stopping)
        FAIL(FEDGE_ERR_STATE);
    if (p->held >= p->capacity)
        FAIL(FEDGE_ERR_BUSY);
    job->next = NULL;
    job->queued_at = mono();
    if (p->queue_tail)
        p->queue_tail->next = job;
    else
        p->queue = job;
    p->queue_tail = job;
    p->held++;
    pthread_cond_signal(&p->work);
cleanup:
    pthread_mutex_unlock(&p->mu);
    return ret;
}

size_t fedge_ingest_pool_take(fedge_ingest_pool *p, fedge_ingest_job **jobs, size_t max)
{
    size_t n = 0;
    uint64_t count;
    pthread_mutex_lock(&p->mu);
    if (p->signalled) { /* resets it; set again below if some stay */
        ssize_t r = read(p->efd, &count, sizeof count);
        (void)r;
        p->signalled = 0;
    }
    while (n < max && p->done) {
        fedge_ingest_job *j = p->done;
        p->done = j->next;
        j->next = NULL;
        jobs[n++] = j;
        p->held--;
    }
    if (!p->done) {
        p->done_tail = NULL;
    } else if (!p->signalled) {
        uint64_t one = 1;
        ssize_t w = write(p->efd, &one, sizeof one);
        (void)w;
        p->signalled = 1;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

int fedge_ingest_pool_wait(fedge_ingest_pool *p, int timeout_ms)
{
    struct pollfd pfd = {.fd = p->efd, .events = POLLIN};
    int r;
    do
        r = poll(&pfd, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    return r > 0;
}

int fedge_ingest_pool_fd(const fedge_ingest_pool *p) { return p->efd; }

size_t fedge_ingest_pool_held(fedge_ingest_pool *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->held;
    pthread_mutex_unlock(&p->mu);
    return n;
}

size_t fedge_ingest_pool_capacity(const fedge_ingest_pool *p) { return p->capacity; }

void fedge_ingest_pool_shutdown(fedge_ingest_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    p->n_threads = 0;
}

void fedge_ingest_pool_free(fedge_ingest_pool *p)
{
    if (!p)
        return;
    fedge_ingest_pool_shutdown(p);
    for (fedge_ingest_job *lists[2] = {p->queue, p->done}, **l = lists; l < lists + 2; l++)
        while (*l) {
            fedge_ingest_job *next = (*l)->next;
            fedge_ingest_job_free(*l);
            *l = next;
        }
    if (p->efd >= 0)
        close(p->efd);
    free(p->threads);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

fedge_ingest_job *fedge_ingest_job_adopt(void *owner, int device, const fedge_ingest_snapshot *snap, uint8_t *body,
                                         size_t len)
{
    fedge_ingest_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->body = body;
    j->owner = owner;
    j->device = device;
    j->snap = *snap;
    j->len = len;
    return j;
}

fedge_ingest_job *fedge_ingest_job_new(void *owner, int device, const fedge_ingest_snapshot *snap,
                                       const uint8_t *body, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return NULL;
    memcpy(copy, body, len);
    fedge_ingest_job *j = fedge_ingest_job_adopt(owner, device, snap, copy, len);
    if (!j)
        free(copy);
    return j;
}

void fedge_ingest_job_free(fedge_ingest_job *job)
{
    if (!job)
        return;
    fedge_ingest_frame_free(&job->frame);
    fedge_device_key_wipe(&job->snap.key);
    free(job->body);
    free(job);
}
