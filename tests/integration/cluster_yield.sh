#!/usr/bin/env bash
# Ranks sharing cores yield while they wait in MPI, even when the launcher
# does not know it oversubscribes: 4 ranks on a host list claiming 4 slots
# on fewer cores (no --oversubscribe, so Open MPI itself would busy-poll)
# train at the speed of an --oversubscribe run, not 20-60x slower; an
# explicit --mca mpi_yield_when_idle is left as given; and they pin
# themselves, consecutive local ranks to one CPU, unless
# FEDGE_CLUSTER_NO_BIND=1 (docs/CLUSTER.md, "The planner", oversubscription).
set -euo pipefail
CLUSTER_TAG=yield
. "$(dirname "$0")/../lib/cluster.sh"
cores=$(getconf _NPROCESSORS_ONLN)
if [ "$cores" -ge 4 ]; then
    echo "SKIP cluster_yield: $cores cores hold 4 ranks without sharing"
    exit 0
fi
cluster_train_shard 512
"$CL" init --spec mlp:784-64-64-32-10 --seed 3 --out "$T/m0.bin" >/dev/null
SLOTS=(mpirun --allow-run-as-root --host localhost:4 --mca btl self,vader
       --mca btl_vader_single_copy_mechanism none)
run() { # NAME [MPIRUN ARGS...]: 10 steps of TP 2 x DP 2, the fastest step in ms
    local name=$1
    shift
    timeout 120 "${SLOTS[@]}" "$@" -np 4 "$CL" refine --model "$T/m0.bin" --data "$T/train.shard" \
        --out "$T/$name.bin" --steps 10 --batch 64 --tp 2 </dev/null >"$T/$name.json" 2>&1 \
        || fail "$name: $(cat "$T/$name.json")"
    field step_ms_min "$T/$name.json"
}
fast=$(run slots)
# busy-polling ranks on shared cores wait a scheduler slice per message
# (100-260 ms steps measured here); yielding ones take a few ms
awk -v f="$fast" 'BEGIN { exit !(f > 0 && f < 40) }' \
    || fail "4 ranks on $cores cores (host list of 4 slots): fastest step $fast ms, not yielding?"
slow=$(run kept --mca mpi_yield_when_idle 0)
awk -v f="$fast" -v s="$slow" 'BEGIN { exit !(s > 3 * f) }' \
    || fail "explicit mpi_yield_when_idle 0 not kept: fastest step $slow ms against $fast ms"
# and pin themselves, consecutive local ranks to one CPU (fedge_plan_bind_cpu):
# the trial steps and the run meet one placement, not what the OS drifts to
pins=$(sed -n 's/.*local rank \([0-9]*\) of 4 pinned to CPU \([0-9]*\) .*/\1 \2/p' "$T/slots.json" | sort -n)
want=$(for r in 0 1 2 3; do echo "$r $((r * cores / 4))"; done)
[ "$pins" = "$want" ] || fail "ranks not pinned consecutively: got '$pins', want '$want'"
run unpinned -x FEDGE_CLUSTER_NO_BIND=1 >/dev/null
! grep -q 'pinned to CPU' "$T/unpinned.json" || fail "FEDGE_CLUSTER_NO_BIND=1 did not leave placement alone"
echo "cluster_yield: ok (fastest step $fast ms yielding, $slow ms with yield_when_idle 0 kept)"
