#!/usr/bin/env bash
# fedge-sim's clients follow the round's strategy as the edge does: FedProx's
# mu (GET /round prox_mu=) reaches the trainer, and a SCAFFOLD round gets the
# server's control variate, the client's committed c_i (<db>.clients/ID.control,
# mode 0600, written only once the update was accepted) and control deltas
# sealed after the model delta; both reproducible across thread counts. Each
# part is skipped with a SKIP line while the aggregator does not offer its key.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/sim.sh

sim_setup 10 10 --kind dirichlet --beta 0.5
args=(--model-spec softmax:784-10 --rounds 6)
ran=0

if sim_accepts fedprox_mu 0.01; then
    sim_run plain --threads 2 "${args[@]}" || sim_fail "plain run"
    sim_run prox1 --threads 1 "${args[@]}" --fedprox-mu 0.01 || sim_fail "FedProx run"
    sim_run prox2 --threads 2 "${args[@]}" --fedprox-mu 0.01 || sim_fail "FedProx run, 2 threads"
    [ "$(sim_model_sha prox1)" = "$(sim_model_sha prox2)" ] || sim_fail "FedProx: 1 and 2 threads differ"
    [ "$(sim_model_sha prox1)" != "$(sim_model_sha plain)" ] || sim_fail "FedProx: mu had no effect on the model"
    echo "FedProx: accuracy $(sim_summary prox1 accuracy) (plain $(sim_summary plain accuracy))"
    ran=$((ran + 1))
else
    echo "SKIP: fedprox_mu (fedge-aggregator does not offer it)"
fi

if sim_accepts scaffold true; then
    sim_run scaf1 --threads 1 "${args[@]}" --scaffold || sim_fail "SCAFFOLD run"
    sim_run scaf2 --threads 2 "${args[@]}" --scaffold || sim_fail "SCAFFOLD run, 2 threads"
    [ "$(sim_model_sha scaf1)" = "$(sim_model_sha scaf2)" ] || sim_fail "SCAFFOLD: 1 and 2 threads differ"
    [ "$(sim_summary scaf1 aggregated)" = 6 ] || sim_fail "SCAFFOLD: not every round aggregated"
    [ "$(sim_sql scaf1 "SELECT count(*) FROM updates WHERE decision='rejected'")" = 0 ] ||
        sim_fail "SCAFFOLD: updates refused (control deltas not in the form the round expects)"
    dir="$SIM_DIR/scaf1/fedge.db.clients"
    n=$(find "$dir" -name '*.control' -perm 600 | wc -l)
    [ "$n" = 10 ] || sim_fail "SCAFFOLD: $n client variates of mode 0600 in $dir, 10 expected"
    # the last 32 bytes bind the file to its run (edge/control.h): each run has its own id
    cmp -s <(head -c -32 "$dir/dev-001.control") <(head -c -32 "$SIM_DIR/scaf2/fedge.db.clients/dev-001.control") ||
        sim_fail "SCAFFOLD: client variates differ between 1 and 2 threads"
    [ -z "$(find "$dir" -name '*.pending')" ] || sim_fail "SCAFFOLD: a pending c_i+ left after the run"
    echo "SCAFFOLD: accuracy $(sim_summary scaf1 accuracy)"
    ran=$((ran + 1))
else
    echo "SKIP: scaffold (fedge-aggregator does not offer it)"
fi
echo "ok: $ran of 2 strategies simulated"
