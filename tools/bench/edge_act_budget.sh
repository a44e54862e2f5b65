#!/usr/bin/env bash
# edge_act_budget.sh — what the edge profile's activation budget costs in
# training time, and what --act-budget-kb buys back: shipped-profile edges
# (make EDGE_TRIM=1 edge) in the same rounds against one aggregator, one at
# the build's budget, one with --act-budget-kb KB, and (when it is built) the
# native edge with the portable GEMM (NATIVE_EDGE, default
# build/noblas/bin/fedge-edge: make BLAS=none BUILD=build/noblas
# build/noblas/bin/fedge-edge; -O2, the native 128 KiB / 4 P budget), the
# speed the shipped edge should reach when its budget allows; prints each
# edge's total train_ms and the ratios.
#
#   tools/bench/edge_act_budget.sh [SPEC] [KB] [ROUNDS]   (mlp:784-200-10 1024 3)
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
SPEC=${1:-mlp:784-200-10}
KB=${2:-1024}
ROUNDS=${3:-3}
EDGE_BUILD=${FEDGE_EDGE_BUILD:-build/edge-$(uname -m)}
NATIVE_EDGE=${NATIVE_EDGE:-build/noblas/bin/fedge-edge}
[ -x "$EDGE_BUILD/bin/fedge-edge" ] || fed_fail "no $EDGE_BUILD/bin/fedge-edge (make EDGE_TRIM=1 edge)"
n=2
[ -x "$NATIVE_EDGE" ] && n=3
fed_setup $n
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 60 --kind iid --seed 7 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec "$SPEC" --test-data "$FED_DIR/test.bin" --rounds "$ROUNDS" \
    --round-timeout-s 120 --quorum 1 --start-delay-s 0.5 --linger-s 1
FED_EDGE_BIN="$EDGE_BUILD/bin/fedge-edge" # the shipped-profile binary
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin"
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin" --act-budget-kb "$KB"
if [ $n = 3 ]; then
    FED_EDGE_BIN="$NATIVE_EDGE"
    fed_start_edge dev-003 "$FED_DIR/shards/shard-002.bin"
fi
fed_wait_run 900 || fed_fail "run failed"
train_ms() { sed -n 's/.*round \([0-9]*\): .*train_ms=\([0-9]*\).*/\2/p' "$FED_DIR/edge-$1.log" | paste -sd+ | bc; }
t1=$(train_ms dev-001)
t2=$(train_ms dev-002)
echo "spec $SPEC, $ROUNDS rounds of 1000 rows, edge $EDGE_BUILD, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "build budget:        train_ms total $t1"
echo "--act-budget-kb $KB: train_ms total $t2"
echo "ratio (build / --act-budget-kb) = $(echo "scale=2; $t1 / $t2" | bc)"
if [ $n = 3 ]; then
    t3=$(train_ms dev-003)
    echo "native, portable GEMM ($NATIVE_EDGE): train_ms total $t3"
    echo "ratio (--act-budget-kb / native portable) = $(echo "scale=2; $t2 / $t3" | bc)"
fi
fed_cleanup 2>/dev/null || true
