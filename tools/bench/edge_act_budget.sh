#!/usr/bin/env bash
# edge_act_budget.sh — what the edge profile's activation budget costs in
# training time, and what --act-budget-kb buys back: two shipped-profile edges
# (make EDGE_TRIM=1 edge) in the same rounds against one aggregator, one at the
# build's budget, one with --act-budget-kb KB; prints each round's train_ms
# and the ratio.
#
#   tools/bench/edge_act_budget.sh [SPEC] [KB] [ROUNDS]   (mlp:784-200-10 1024 3)
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
SPEC=${1:-mlp:784-200-10}
KB=${2:-1024}
ROUNDS=${3:-3}
EDGE_BUILD=${FEDGE_EDGE_BUILD:-build/edge-$(uname -m)}
[ -x "$EDGE_BUILD/bin/fedge-edge" ] || fed_fail "no $EDGE_BUILD/bin/fedge-edge (make EDGE_TRIM=1 edge)"
fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 60 --kind iid --seed 7 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec "$SPEC" --test-data "$FED_DIR/test.bin" --rounds "$ROUNDS" \
    --round-timeout-s 120 --quorum 1 --start-delay-s 0.5 --linger-s 1
FED_EDGE_BIN="$EDGE_BUILD/bin/fedge-edge" # the shipped-profile binary
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin"
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin" --act-budget-kb "$KB"
fed_wait_run 900 || fed_fail "run failed"
t1=$(sed -n 's/.*round \([0-9]*\): .*train_ms=\([0-9]*\).*/\2/p' "$FED_DIR/edge-dev-001.log" | paste -sd+ | bc)
t2=$(sed -n 's/.*round \([0-9]*\): .*train_ms=\([0-9]*\).*/\2/p' "$FED_DIR/edge-dev-002.log" | paste -sd+ | bc)
echo "spec $SPEC, $ROUNDS rounds of 1000 rows, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "build budget:        train_ms total $t1"
echo "--act-budget-kb $KB: train_ms total $t2"
echo "ratio (build / --act-budget-kb) = $(echo "scale=2; $t1 / $t2" | bc)"
fed_cleanup 2>/dev/null || true
