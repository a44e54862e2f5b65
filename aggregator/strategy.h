/* strategy.h — the aggregator's strategy as one composition: a combiner
 * (combine.h), a server optimiser (server_opt.h), FedProx's μ sent to the
 * edges, and SCAFFOLD's server control variate c (docs/STRATEGIES.md).
 *
 * Description: the canonical text recorded in rounds.strategy, parts joined
 * by '+': the combiner unless mean ("median", "trimmed_mean(beta=0.1)",
 * "krum(f=1)", "multikrum(f=1,m=0)", "bulyan(f=1)"), "fedprox(mu=0.01)" when
 * μ > 0, "scaffold", then the server optimiser ("fedavg", "fedavg(lr=0.5)",
 * "fedavgm(lr=1,momentum=0.9)", "fedadam(lr=..,beta1=..,beta2=..,tau=..)",
 * ...), "dp-" before it under a DP policy. Plain "fedavg" is left out when
 * another part says what the round does ("median", "scaffold").
 *
 * State: the optimiser's vectors and c are saved with every close that
 * produces a model, in the close's transaction, as one strategy_state row
 * keyed by the model version produced (store.h), with an audited event
 * carrying the blob's SHA-256; rows of earlier versions are dropped then,
 * except under SCAFFOLD, which keeps the rows of the versions an update may
 * still be based on (the newest round_window + 1 rounds' rows) so a late
 * update's control half is checked against the c it trained with.
 * At start the row of the current model is loaded. No row for a model that
 * a round produced, or a row saved under another description (the config
 * changed the strategy), starts the state fresh with an audited
 * strategy_state_reset event; a row whose bytes do not match its SHA-256 is
 * refused (FEDGE_ERR_STRATEGY_STATE): the log was altered. */
#ifndef FEDGE_STRATEGY_H
#define FEDGE_STRATEGY_H

#include <stddef.h>

#include "agg.h"
#include "delta.h"

int fedge_strategy_describe(const fedge_agg_config *c, int dp, char *buf, size_t cap);
/* a->strategy = the description for the config and the current policy's DP
 * (after fedge_gov_init and after each policy reload). */
void fedge_strategy_name(fedge_aggregator *a);

/* Allocates the state for a->model and loads the current version's row
 * (call after the current model and the policy are loaded). */
int fedge_strategy_init(fedge_aggregator *a, char *err, size_t errlen);
void fedge_strategy_free(fedge_aggregator *a);

/* Start of a close: a->opt_next = a copy of a->opt, control_next = control. */
int fedge_strategy_begin_step(fedge_aggregator *a);
/* In the close's transaction, once a->version_hex is the new model: writes
 * the next state's row and its audited event, drops the other rows. */
int fedge_strategy_save(fedge_aggregator *a, uint32_t round);
/* After the commit: the next state becomes current (and c's model file). */
int fedge_strategy_commit(fedge_aggregator *a);
/* The close failed or was rolled back: the next state is dropped. */
void fedge_strategy_discard(fedge_aggregator *a);
/* A refinement published `to` from `from`: the state carries over (caller's
 * transaction). */
int fedge_strategy_carry(fedge_aggregator *a, const char *from, const char *to);

/* SCAFFOLD option II: an honest control half is determined by the model
 * half, Δc = −c_base − Δy·(1 − momentum)/(K·lr) with K = epochs ×
 * ceil(n_samples / batch) the edge's steps, computed as the edge computes it
 * (edge/trainer.c). *ok = 0 and why (one line) when some coordinate of the
 * control half (delta[n .. 2n), decoded from h's encoding) is farther from
 * that than the rounding of the encoding and of float arithmetic allows, or
 * is not finite. Pure: no I/O. */
int fedge_scaffold_control_check(const fedge_delta_header *h, const float *delta, const float *c_base, size_t n,
                                 double lr, double momentum, long epochs, long batch, int *ok, char *why,
                                 size_t whylen);
/* The same for an update to a: c_base is the variate of h's base model (the
 * current c, a kept strategy_state row, or zero for the model the run started
 * from); a base whose c is no longer kept gives *ok = 0 and says so. */
int fedge_strategy_check_control(fedge_aggregator *a, const fedge_delta_header *h, const float *delta, int *ok,
                                 char *why, size_t whylen);

#endif
