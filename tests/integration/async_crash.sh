#!/usr/bin/env bash
# Async mode: kill -9 the aggregator while its buffer is half full (2 of
# K = 3 updates accepted), restart it on the same database: the step closes
# with exactly the 2 buffered updates and the third, none lost or counted
# twice, and the audit chain verifies.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 3
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 3 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
args=(--mode async --async-concurrency 3 --async-buffer-k 3 --model-spec softmax:784-10
      --test-data "$FED_DIR/test.bin" --rounds 1 --linger-s 2)
fed_start_aggregator "${args[@]}"
for i in 1 2; do
    fed_start_edge "dev-00$i" "$FED_DIR/shards/shard-00$((i - 1)).bin" --max-rounds 1 --poll-ms 100
done
fed_wait_for '[ "$(fed_sql "SELECT count(*) FROM updates WHERE decision<>\"rejected\"" 2>/dev/null || echo 0)" = 2 ] 2>/dev/null' 60
kill -9 "$FED_AGG_PID"
wait "$FED_AGG_PID" 2>/dev/null
[ "$(fed_sql "SELECT status FROM rounds WHERE id=1")" = open ] || fed_fail "step 1 should still be open at the kill"
for e in "${FED_EDGE_PIDS[@]}"; do fed_wait_pid "${e%%:*}" 30 >/dev/null; done
FED_EDGE_PIDS=()

fed_start_aggregator "${args[@]}"
fed_wait_for "grep -q 'resuming open round 1: 0 selected, 2 accepted' '$FED_DIR/agg.log'" 30
fed_start_edge dev-003 "$FED_DIR/shards/shard-002.bin" --max-rounds 1 --poll-ms 100
fed_wait_run 60 || fed_fail "restarted aggregator failed"

[ "$(fed_sql "SELECT status || ':' || n_accepted FROM rounds WHERE id=1")" = closed:3 ] ||
    fed_fail "step 1 should close with exactly 3 updates: $(fed_sql "SELECT status, n_accepted FROM rounds")"
[ "$(fed_sql "SELECT group_concat(device) FROM (SELECT device FROM updates WHERE round=1 AND decision<>'rejected' ORDER BY id)")" = \
  "$(fed_sql "SELECT group_concat(device) FROM (SELECT device FROM updates ORDER BY id)")" ] || fed_fail "an update outside the step"
[ "$(fed_sql "SELECT count(DISTINCT device) FROM updates WHERE round=1")" = 3 ] || fed_fail "3 devices expected"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify after the crash"
echo ok
