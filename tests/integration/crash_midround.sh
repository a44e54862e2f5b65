#!/usr/bin/env bash
# kill -9 the aggregator while its edges train, and restart it at once: the
# edges then upload on DTLS sessions the new process does not know, which it
# never answers. A block transfer that hears nothing for one exchange's worth
# of time must give up on that session and retry on a new one while the round
# is still open, so the resumed round aggregates both updates in time (before
# the fix an edge waited out the whole round on the dead session).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 2 --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
args=(--model-spec mlp:784-32-10 --test-data "$FED_DIR/test.bin" --rounds 2 --round-timeout-s 75
      --local-epochs 6 --start-delay-s 0.5 --linger-s 2)
fed_start_aggregator "${args[@]}"
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin" --max-retries 1000 --poll-ms 200
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin" --max-retries 1000 --poll-ms 200

# Both edges train for seconds (6 local epochs) while the aggregator dies.
fed_wait_for 'grep -q "round 1: training" "$FED_DIR/edge-dev-001.log" && grep -q "round 1: training" "$FED_DIR/edge-dev-002.log"' 60 ||
    fed_fail "edges did not start training round 1"
kill -9 "$FED_AGG_PID"
wait "$FED_AGG_PID" 2>/dev/null
[ "$(fed_sql "SELECT count(*) FROM updates")" = 0 ] || fed_fail "an update arrived before the kill; the edges trained too fast"
fed_start_aggregator "${args[@]}"
fed_wait_run 200 || fed_fail "restarted aggregator failed"

for r in 1 2; do
    n=$(fed_sql "SELECT n_accepted FROM rounds WHERE id=$r AND status='closed'")
    [ "$n" = 2 ] || fed_fail "round $r: $n accepted updates, 2 expected"
done
grep -h "no answer for" "$FED_DIR"/edge-dev-00*.log || fed_fail "no upload met the dead session"
! grep -h "giving up" "$FED_DIR"/edge-dev-00*.log || fed_fail "an edge gave up"
echo ok
