#!/usr/bin/env bash
# kill -9 the aggregator between rounds and restart it on the same database:
# it resumes from the last committed round with the same model version, and
# the run completes with no round lost or counted twice.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 2 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
args=(--model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 4 --round-timeout-s 60
      --start-delay-s 0.5 --linger-s 2)
fed_start_aggregator "${args[@]}"
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin" --max-retries 1000
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin" --max-retries 1000

fed_wait_for '[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status=\"closed\"" 2>/dev/null || echo 0)" -ge 2 ] 2>/dev/null' 120
kill -9 "$FED_AGG_PID"
wait "$FED_AGG_PID" 2>/dev/null
closed=$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed'")
version=$(fed_sql "SELECT version FROM models ORDER BY rowid DESC LIMIT 1")
echo "killed after $closed closed rounds at model ${version:0:16}"

fed_start_aggregator "${args[@]}"
fed_wait_for "grep -q 'resum' '$FED_DIR/agg.log'" 30
grep -q "resuming from model ${version:0:16}" "$FED_DIR/agg.log" || fed_fail "did not resume from model $version"
fed_wait_run 180 || fed_fail "restarted aggregator failed"

[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed'")" = 4 ] || fed_fail "4 closed rounds expected"
[ "$(fed_sql "SELECT group_concat(id) FROM (SELECT id FROM rounds WHERE status='closed' ORDER BY id)")" = "1,2,3,4" ] ||
    fed_fail "rounds 1..4 expected"
[ "$(fed_sql "SELECT count(*) FROM (SELECT round, device FROM updates WHERE decision<>'rejected' GROUP BY 1, 2 HAVING count(*) > 1)")" = 0 ] ||
    fed_fail "an update was counted twice"
[ "$(fed_sql "SELECT sum(n_accepted) FROM rounds WHERE status='closed'")" = 8 ] || fed_fail "8 updates expected"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify after the crash"
echo ok
