#!/usr/bin/env bash
# A long link without loss: the edge reaches the aggregator through a relay
# that delays every datagram by 120 ms each way (240 ms round trip). The
# 31 KB softmax model takes 31 Block2 round trips (~7.5 s) and the update 16
# Block1 round trips; the edge's request deadlines follow the measured RTT,
# so both arrive on the first attempt, with the default --timeout-ms.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

delay=${SLOW_RTT_DELAY_MS:-120}
fed_setup 1
FED_PORT=$(fed_free_port)
relay_port=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 30 --kind iid --seed 4 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
python3 tools/bench/udp_relay.py "$relay_port" "$FED_PORT" "$FED_DIR/relay.json" 0 1 \
    --delay-ms "$delay" &
relay=$!
FED_PIDS+=("$relay")
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 90 --start-delay-s 0.3 --linger-s 5
"$BIN/fedge-edge" --server "127.0.0.1:$relay_port" --id dev-001 --keys "$FED_DIR/keys" \
    --shard "$FED_DIR/shards/shard-001.bin" --encoding fp16 >>"$FED_DIR/edge-dev-001.log" 2>&1 &
FED_PIDS+=("$!")
FED_EDGE_PIDS+=("$!:dev-001")
fed_wait_run 120 || fed_fail "aggregator failed on a slow link"
log="$FED_DIR/edge-dev-001.log"
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed' AND n_accepted=1")" = 1 ] || {
    tail -n 20 "$log" >&2
    fed_fail "round 1 must close with the edge's update"
}
if grep -q "GET /model:.*retrying\|no model" "$log"; then
    tail -n 20 "$log" >&2
    fed_fail "the model fetch needed retries on a link without loss"
fi
grep -q "outcome=accepted" "$log" || { tail -n 20 "$log" >&2; fed_fail "no accepted update in the edge log"; }
rtt=$(sed -n 's/.*link: RTT \([0-9]*\) ms.*/\1/p' "$log" | tail -n 1)
[ -n "$rtt" ] && [ "$rtt" -ge $((2 * delay)) ] || fed_fail "the edge did not measure the RTT (got '${rtt}')"
echo "ok (RTT measured ${rtt} ms)"
