#!/usr/bin/env bash
# The aggregator is killed (-9) and restarted on the same port before its
# first round, while an edge that polls /round holds its DTLS session. The edge reaches it through a
# loopback relay, so it never sees an ICMP "port unreachable" for the
# moments the daemon is down: its next GET /round goes over the old session
# to a daemon that has never heard of it and drops the records. Over a fast
# link the edge must take that silence for a restart after two unanswered
# transmissions and open a new session, not wait out the request's whole
# deadline (12.5 s at a 1 s ACK timeout), which made it miss rounds and,
# when the run ended within that time, the run's end (kill_storm.sh, once).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 1
FED_PORT=$(fed_free_port)
relay_port=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 20 --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
python3 tools/bench/udp_relay.py "$relay_port" "$FED_PORT" "$FED_DIR/relay.json" &
relay=$!
FED_PIDS+=("$relay")
args=(--model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 --round-timeout-s 60
      --linger-s 2 --no-observe)
fed_start_aggregator "${args[@]}" --start-delay-s 30
"$BIN/fedge-edge" --server "127.0.0.1:$relay_port" --id dev-001 --keys "$(fed_edge_keys dev-001)" \
    --shard "$FED_DIR/shards/shard-000.bin" --poll-ms 300 --max-retries 100 \
    >>"$FED_DIR/edge-dev-001.log" 2>&1 &
FED_PIDS+=("$!")
FED_EDGE_PIDS+=("$!:dev-001")

fed_wait_for "grep -q 'polling every' '$FED_DIR/edge-dev-001.log' 2>/dev/null" 30
kill -9 "$FED_AGG_PID"
wait "$FED_AGG_PID" 2>/dev/null
t0=$(date +%s%N)
fed_start_aggregator "${args[@]}" --start-delay-s 0.2
fed_wait_for "grep -q 'round 1: dev-001 accepted' '$FED_DIR/agg.log'" 30
ms=$((($(date +%s%N) - t0) / 1000000))
echo "round 1's update accepted ${ms} ms after the restart"
[ "$ms" -lt 9000 ] ||
    fed_fail "the edge took ${ms} ms to reach the restarted aggregator (a stale session waited out its deadline)"
grep -q 'the server may have restarted' "$FED_DIR/edge-dev-001.log" ||
    fed_fail "the edge did not say why it dropped its session"
fed_wait_run 60 || fed_fail "the restarted aggregator failed"
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed' AND n_accepted=1")" = 1 ] ||
    fed_fail "round 1 closed with dev-001's update expected"
echo ok
