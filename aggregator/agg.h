/* agg.h — the aggregator's state machine, independent of the transport.
 *
 * The CoAP server (server.c) maps requests onto these calls; tests and
 * fedge-sim drive them directly. Each call is glue over one module (module
 * map: docs/AGGREGATOR.md): the scheduler (scheduler.h: rounds), ingest
 * (ingest.h: one update), the round close (close.h), the model store
 * (modelstore.h), governance (governance.h: policy, DP, audit). All calls
 * belong to one thread, the one that owns the database handle. All durable state lives in the SQLite log (store.h) and the
 * model store; the in-memory state can always be rebuilt from them
 * (fedge_agg_init resumes an open round after a crash).
 *
 * Round life: WAITING -> OPEN (participants chosen, rounds row inserted) ->
 * closed at quorum or deadline (aggregate, evaluate, new model, audit head
 * signed) or failed (no usable update: the model stays, the log says why)
 * -> OPEN next ... -> FINISHED after `rounds` rounds or when the privacy
 * budget refuses the next round.
 *
 * Time: every `now` argument is fedge_now(), a monotonic clock, so stepping
 * the wall clock moves no deadline; the log records wall time
 * (fedge_wall_now()).
 *
 * Faults: nothing an authenticated device sends can make these calls fail;
 * an unusable update is refused or excluded with an audited reason, and a
 * round that cannot aggregate fails with one. A busy database (another
 * process holding the lock) is transient: tick retries the step that hit it
 * until busy_retry_s has passed. Only a persistent fault (I/O, a corrupt
 * log) is returned to the caller. */
#ifndef FEDGE_AGG_H
#define FEDGE_AGG_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "dataset.h"
#include "envelope.h"
#include "hash.h"
#include "keys.h"
#include "model.h"
#include "rng.h"
#include "server_opt.h"

struct fedge_policy;
struct fedge_relay;
struct fedge_sched;
struct fedge_signer;

typedef enum { FEDGE_AGG_WAITING = 0, FEDGE_AGG_OPEN = 1, FEDGE_AGG_FINISHED = 2 } fedge_agg_state;

typedef struct {
    fedge_agg_config cfg;
    sqlite3 *db;
    fedge_keys keys;
    fedge_device_key *dev_keys;   /* parallel to keys.devices */
    uint8_t *selected;            /* parallel to keys.devices: in the open round */
    uint8_t *submitted;           /* parallel: accepted update in the open round */
    /* async mode (sched_async.c), parallel to keys.devices, in memory only:
     * the step a device holds a slot from (0: none), when it got it, when
     * it last asked (fedge_now(); 0: never) */
    uint32_t *adm_step;
    double *adm_at, *asked_at;
    size_t in_flight;
    struct fedge_policy *policy;
    struct fedge_signer *signer;  /* NULL: audit heads not signed */

    fedge_model model;
    uint32_t model_id;
    uint8_t version[FEDGE_HASH_LEN];
    char version_hex[FEDGE_HASH_HEX_LEN];
    uint32_t model_round;         /* round that produced the current model */
    uint8_t *model_blob;          /* serialized current model, for GET /model */
    size_t model_blob_len;
    size_t max_update_bytes;

    fedge_dataset test;
    float *eval_scratch;
    int eval_batch;           /* rows per evaluation chunk: EVAL_BATCH or fewer for a wide model */

    uint8_t run_id[16];           /* meta 'run_id': binds updates to this log */
    char run_id_hex[33];

    const struct fedge_sched *sched; /* the run mode's scheduler (scheduler.h) */
    fedge_agg_state state;
    uint32_t round;               /* open round id, or last round when not open */
    double opened_at, deadline, finished_at, start_at; /* fedge_now() seconds */
    double busy_since;            /* first FEDGE_ERR_BUSY of the current streak; 0: none */
    double retry_at;              /* tick does nothing before this */
    long rounds_aggregated;       /* rounds that closed with a new model */
    double round_timeout_cfg_s;   /* round_timeout_s as configured (a policy may override it) */
    size_t n_selected, n_accepted, n_rejected;
    uint64_t bytes_received;
    long rounds_done;
    double last_accuracy;
    fedge_rng rng;
    /* DP noise: 0 draws each round's seed from getrandom (the daemon);
     * nonzero derives it from this seed and the round, for a simulation
     * that must give the same model twice (fedge-sim --seed). */
    uint64_t noise_seed;

    /* The strategy (strategy.h): its canonical description (rounds.strategy),
     * the server optimiser's state, SCAFFOLD's server control variate c.
     * A close computes the next state aside (*_next, has_next) and makes it
     * current only once its transaction has committed. */
    char strategy[256];
    fedge_server_opt opt, opt_next;
    int has_next;
    float *control, *control_next;    /* n_params each; NULL unless scaffold */
    uint8_t *control_blob;            /* c as a model file, for GET /control */
    size_t control_blob_len;
    uint8_t control_version[FEDGE_HASH_LEN];
    char control_version_hex[FEDGE_HASH_HEX_LEN];
    /* Bumped where every device's view of GET /round changes beyond state,
     * round and versions; the server notifies all /round observers when any
     * of them moves. A change to one device's view goes to view_changed. */
    uint64_t round_epoch;

    struct fedge_relay *relay;        /* relay mode (relay.h): the parent's link; NULL: a root */
    /* fedge_ingest_commit_group's transaction is open: the per-update
     * writes (fedge_gov_admit_update) join it instead of committing */
    int ingest_group_tx;
    /* Devices whose GET /round answer changed alone (async: admitted, slot
     * freed), each listed once: fedge_sched_view_changed appends, the
     * server notifies just their observations and empties the list. NULL
     * when the mode has no per-device view (sync). */
    uint32_t *view_changed;       /* keys.n entries at most */
    uint8_t *view_changed_mark;   /* parallel to keys.devices: listed */
    size_t n_view_changed;
    /* sync: selected devices a keys reload took out before they reported
     * (they never will); the round closes once the others have */
    size_t n_selected_gone;
    /* async admission's index (sched_async.c), so that a pass visits the
     * devices asking and the slot holders, never the whole population:
     * askers lists every device whose asked_at is recent (and some whose
     * is not, dropped on the next walk), holders every device with a slot
     * (and some freed since); async_mark says who is listed (bit 1: askers,
     * bit 2: holders); rank[d] is d's rank in step rank_step[d] (0: none).
     * The arrays cover async_n devices; a keys reload that adds devices
     * rebuilds them on the next tick. */
    uint32_t *askers, *holders;
    size_t n_askers, n_holders, async_n;
    uint8_t *async_mark;
    uint64_t *rank;
    uint32_t *rank_step;
    double slot_min_at;     /* no slot was given before this (a lower bound) */
    double admit_eval_at;   /* the last admission evaluation */
    int admit_dirty;        /* something that can change who is admitted changed since */
    uint64_t async_visits;  /* list entries walked by the ticks so far (tests) */
} fedge_aggregator;

/* Index of device `id` in keys.devices (and the arrays parallel to it); -1
 * when id is NULL or unknown. */
static inline int fedge_agg_device_index(const fedge_aggregator *a, const char *id)
{
    if (!id)
        return -1;
    const fedge_device_entry *e = fedge_keys_find(&a->keys, id, strlen(id));
    return e ? (int)(e - a->keys.devices) : -1;
}

/* Everything needed before serving: keys, database (resuming an open round),
 * current model, test set, policy. cfg is copied. On failure err names why. */
int fedge_agg_init(fedge_aggregator *a, const fedge_agg_config *cfg, char *err, size_t errlen);
void fedge_agg_free(fedge_aggregator *a);

/* Advance by the clock: open the first round, close at the deadline. */
int fedge_agg_tick(fedge_aggregator *a, double now);
/* Close the open round now if its quorum is reached (called after accepts). */
int fedge_agg_maybe_close(fedge_aggregator *a, double now);

/* GET /round body for `device` (NULL or unknown: selected=0). */
int fedge_agg_round_info(fedge_aggregator *a, const char *device, double now, char *buf,
                         size_t cap);
/* GET /status body (JSON). */
int fedge_agg_status_json(const fedge_aggregator *a, char *buf, size_t cap);

/* POST /update. *coap_code gets the CoAP response class*100+detail (204,
 * 400, 401, 403, 409, 413, 503) and msg a one-line reason. Returns FEDGE_OK
 * when a reply was produced (accepted or not); an error only when the
 * aggregator itself failed (database error), which the server reports as 5.00. */
int fedge_agg_submit(fedge_aggregator *a, const char *device, const uint8_t *body, size_t len,
                     double now, int *coap_code, char *msg, size_t msglen);

/* Reload the policy file (SIGHUP). Keeps the old policy when the new fails. */
int fedge_agg_reload_policy(fedge_aggregator *a);

double fedge_now(void);      /* CLOCK_MONOTONIC seconds: every timer */
double fedge_wall_now(void); /* Unix seconds for the log: the wall clock at the first
                                call, advanced monotonically (steps are not followed) */

/* Exit status for a daemon whose run has ended: 0 when at least one round
 * aggregated (or none was due), 3 when the run finished without any round
 * producing a model; msg says what happened. */
int fedge_agg_outcome(const fedge_aggregator *a, char *msg, size_t msglen);

/* Keys reload (SIGHUP; docs/AGGREGATOR.md "Live enrolment"): the keys file
 * is read again and merged into the running table (fedge_keys_merge: every
 * device keeps its index, so sessions, rounds and the parallel arrays stay
 * as they are; a removed device becomes a tombstone no lookup finds, so its
 * sessions can no longer submit and no round selects it; a new one is
 * appended and can be selected from the next round). prepare reads the file
 * and builds the new table and arrays, writing nothing; record then writes
 * the devices table, the audited events and the keys ledger in one
 * transaction with a signed head (call it after everything else that can
 * fail, abort on its failure); nothing the daemon serves from changes until
 * commit, which cannot fail. On a prepare or record failure (a malformed or
 * unreadable file, no devices, the database) r->err says why and the
 * running keys stay. Owner thread only. */
typedef struct {
    fedge_keys keys;
    fedge_keys_diff diff;
    fedge_device_key *dev_keys;
    uint8_t *selected, *submitted;
    uint32_t *adm_step;
    double *adm_at, *asked_at;
    uint32_t *view_changed;
    uint8_t *view_changed_mark;
    char err[512];
} fedge_agg_keys_reload;
int fedge_agg_keys_prepare(fedge_aggregator *a, fedge_agg_keys_reload *r);
void fedge_agg_keys_commit(fedge_aggregator *a, fedge_agg_keys_reload *r);
int fedge_agg_keys_record(fedge_aggregator *a, fedge_agg_keys_reload *r);
void fedge_agg_keys_abort(fedge_agg_keys_reload *r);
/* prepare and commit, logging why on failure (the server's
 * fedge_server_reload_keys also resizes its per-device tables). */
int fedge_agg_reload_keys(fedge_aggregator *a);

#endif
