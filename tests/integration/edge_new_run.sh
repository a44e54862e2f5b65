#!/usr/bin/env bash
# An edge that keeps running while the aggregator is restarted on a fresh log
# (a new run id, round numbers from 1 again) takes part in the new run's
# round 1 (issue 12, review16: it used to skip it as "done"), and
# --print-memory prints the plan again when the new round's plan differs
# although no buffer is resized (momentum 0 -> 0.9: a velocity and the base
# in RAM, without --state-dir).
set -uo pipefail
cd "$(dirname "$0")/../.."
FEDGE_BUILD=${FEDGE_BUILD:-build/native}
. tests/lib/fed.sh
fed_setup 1
"$BIN/fedge-partition" --data fashion-mnist --clients 500 --kind iid --seed 7 --out "$FED_DIR/shards" >/dev/null ||
    fed_fail "partition"
keys=$(fed_edge_keys dev-001) || exit 1
FED_PORT=$(fed_free_port)
agg() { # N MOMENTUM
    "$BIN/fedge-aggregator" --keys-file "$FED_DIR/keys" --db "$FED_DIR/a$1.db" --model-dir "$FED_DIR/m$1" \
        --signing-key "$FED_DIR/aggregator.key" --listen "127.0.0.1:$FED_PORT" --model-spec softmax:784-10 \
        --rounds 1 --quorum 1 --start-delay-s 0.1 --linger-s 5 --round-timeout-s 8 --momentum "$2" \
        >"$FED_DIR/agg$1.log" 2>&1 &
    AGG=$!
    FED_PIDS+=("$AGG")
}
agg 1 0
log="$FED_DIR/edge.log"
"$BIN/fedge-edge" --server "127.0.0.1:$FED_PORT" --id dev-001 --keys "$keys" \
    --shard "$FED_DIR/shards/shard-000.bin" --max-rounds 2 --no-exit-when-finished --poll-ms 100 \
    --no-observe --print-memory >"$log" 2>&1 &
edge=$!
FED_PIDS+=("$edge")
fed_wait_for "grep -q 'round 1: .*outcome=' '$log'" 20 || fed_fail "round 1 of run 1 did not end: $(tail -n 3 "$log")"
kill "$AGG"
wait "$AGG" 2>/dev/null
agg 2 0.9
fed_wait_pid "$edge" 20 || fed_fail "the edge did not take part in the new run's round 1: $(tail -n 4 "$log")"
grep -q 'a new aggregator run' "$log" || fed_fail "the new run is not logged"
[ "$(grep -c 'round 1: .*outcome=accepted' "$log")" = 2 ] ||
    fed_fail "not two accepted round-1 updates (one per run): $(grep 'outcome=' "$log")"
plans=$(grep -o 'memory plan.*' "$log")
[ "$(wc -l <<<"$plans")" = 2 ] || fed_fail "expected the plan printed twice (momentum 0, then 0.9): $plans"
v1=$(sed -n '1s/.* velocity=\([0-9]*\).*/\1/p' <<<"$plans")
v2=$(sed -n '2s/.* velocity=\([0-9]*\).*/\1/p' <<<"$plans")
p1=$(sed -n '1s/.*peak=\([0-9]*\).*/\1/p' <<<"$plans")
p2=$(sed -n '2s/.*peak=\([0-9]*\).*/\1/p' <<<"$plans")
[ "$v1" = 0 ] && [ "${v2:-0}" -gt 0 ] && [ "${p2:-0}" -gt "${p1:-0}" ] ||
    fed_fail "the second plan does not count the momentum round's velocity: $plans"
grep -q 'round 1: momentum 0.9 without --state-dir: the base model stays in RAM while training (one more model copy, 31400 B)' "$log" ||
    fed_fail "the momentum round without --state-dir does not say the base stays in RAM"
echo "ok: the new run's round 1 taken part in; plans printed: peak $p1 B (momentum 0), $p2 B (momentum 0.9)"
