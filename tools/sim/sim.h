/* sim.h — a whole federation in one process (fedge-sim, docs/SIM.md).
 *
 * The real aggregator core (agg.h: state machine, policy, strategies, DP,
 * SQLite log, audit) driven in-process on the virtual clock (clock.h), and
 * virtual clients, one per device of the keys file, that do what an edge
 * does: parse GET /round's text (round_info.h), load the model blob, train
 * their shard with the edge's trainer (trainer.h), seal with their device key
 * (update.h) and submit. Clients of a round train on a pool of threads; their
 * updates are submitted in (virtual finish time, device index) order, so a
 * seed gives the same model bytes whatever the thread count.
 *
 * fedge_sim_run owns the process's clock: it switches it to virtual time
 * before fedge_agg_init and never back. It returns FEDGE_OK when the run
 * ended (*exit_status: fedge_agg_outcome's 0 or 3) and an error when the
 * aggregator or a client failed (err says why). */
#ifndef FEDGE_SIM_H
#define FEDGE_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "delta.h"

typedef enum { FEDGE_SIM_ATTACK_SIGNFLIP = 0, FEDGE_SIM_ATTACK_NOISE = 1 } fedge_sim_attack;

#define FEDGE_SIM_MAX_THREADS 256

typedef struct {
    char shards_dir[FEDGE_PATH_MAX];  /* DIR/shard-000.bin ... (fedge-partition) */
    int threads;                      /* 1 .. FEDGE_SIM_MAX_THREADS */
    uint64_t seed;                    /* clients' shuffles, dropout, attackers, DP noise */
    double dropout;                   /* [0, 1]: a selected client never answers */
    double straggler_frac;            /* [0, 1] of the population, fixed for the run */
    double straggler_factor;          /* >= 1: a straggler's training takes this much longer */
    double straggler_delay_s;         /* >= 0: and this much more */
    double byzantine_frac;            /* [0, 1] of the population, fixed for the run */
    fedge_sim_attack attack;
    double attack_scale;              /* > 0 */
    double sample_cost_s;             /* virtual seconds per sample and epoch; 0: measured */
    fedge_encoding encoding;
    int json;                         /* one JSON object per round + a summary */
    long clients;                     /* 0, or the devices the keys file must list */
} fedge_sim_options;

#define FEDGE_SIM_KEYS_SUFFIX ".keys"  /* --clients without a keys file: <db>.keys */

void fedge_sim_options_defaults(fedge_sim_options *o);
/* A keys file of n devices dev-001 ... (region "eu", secrets from getrandom),
 * mode 0600, written to a temporary name and renamed; an existing path is
 * left alone (FEDGE_OK: the run's own file from before is reused). */
int fedge_sim_write_keys(const char *path, long n, char *err, size_t errlen);

/* cfg: the aggregator's configuration, validated (fedge_agg_config_validate). */
int fedge_sim_run(const fedge_agg_config *cfg, const fedge_sim_options *o, int *exit_status,
                  char *err, size_t errlen);

#endif
