#!/usr/bin/env bash
# The aggregator chooses the model and the batch, so a spec whose buffers
# exceed what an edge may spend (--max-memory-mb) must not end the edge or
# let it allocate: it skips the round, says why, and keeps polling; an edge
# with room takes part. Before the ceiling an edge allocated whatever the
# plan said (a hostile spec of 1 MB of parameters planned 25 GB).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 2 --kind iid --seed 7 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
# 4.6 MiB of parameters per copy, 27 MiB of buffers at batch 32: over a 16 MiB
# ceiling, within the default 256 MiB.
spec=cnn:1x28x28-c8k5-p2-f1024-10
fed_start_aggregator --model-spec "$spec" --test-data "$FED_DIR/test.bin" --rounds 2 \
    --round-timeout-s 25 --quorum 0.5 --start-delay-s 0.5 --linger-s 2
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin" --max-memory-mb 16 --print-memory
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin" --print-memory
fed_wait_run 200 || fed_fail "run failed (an edge exited?)"

grep -q "round 1: $spec at batch 32 needs [0-9]* MiB of buffers, more than --max-memory-mb 16; skipping the round" \
    "$FED_DIR/edge-dev-001.log" || fed_fail "dev-001 did not refuse the round's memory plan"
grep -q "round 2: .*skipping the round" "$FED_DIR/edge-dev-001.log" || fed_fail "dev-001 did not stay up for round 2"
! grep -q "memory plan" "$FED_DIR/edge-dev-001.log" || fed_fail "dev-001 sized its buffers anyway"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE device='dev-001'")" = 0 ] || fed_fail "dev-001 sent an update"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE device='dev-002' AND decision='accepted'")" = 2 ] ||
    fed_fail "dev-002 should have 2 accepted updates"
echo ok
