#!/usr/bin/env bash
# A lossy network: 3 edges reach the aggregator through a relay that drops
# 5% of the datagrams in each direction (seeded). DTLS retransmits, CoAP
# retransmits, lost Block1/Block2 transfers are retried by the client with
# backoff; the run completes, every update is counted exactly once, and a
# resent update after a lost reply is answered "accepted (duplicate)".
# The aggregator lingers 20 s after the last round: an edge learns that the
# run finished only from a /round answer, and on this link a poll can be lost
# (then it backs off for seconds), so a short linger made the test flaky.
# fedge-test: long
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 3
FED_PORT=$(fed_free_port)
relay_port=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 30 --kind iid --seed 4 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
python3 tools/bench/udp_relay.py "$relay_port" "$FED_PORT" "$FED_DIR/relay.json" 0.05 42 &
relay=$!
FED_PIDS+=("$relay")
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 3 \
    --round-timeout-s 120 --start-delay-s 0.3 --linger-s 20
for i in 1 2 3; do
    "$BIN/fedge-edge" --server "127.0.0.1:$relay_port" --id "dev-00$i" --keys "$(fed_edge_keys "dev-00$i")" \
        --shard "$FED_DIR/shards/shard-00$i.bin" --encoding fp16 --timeout-ms 60000 --max-retries 50 \
        >>"$FED_DIR/edge-dev-00$i.log" 2>&1 &
    FED_PIDS+=("$!")
    FED_EDGE_PIDS+=("$!:dev-00$i")
done
fed_wait_run 300 || fed_fail "aggregator failed on a lossy link"
kill -TERM "$relay"
wait "$relay"
dropped=$(python3 -c "import json; d=json.load(open('$FED_DIR/relay.json'))['dropped']; print(d['up'] + d['down'])")
[ "$dropped" -gt 0 ] || fed_fail "the relay dropped nothing; the test proves nothing"
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed' AND n_accepted=3")" = 3 ] ||
    fed_fail "3 rounds with 3 updates each expected"
[ "$(fed_sql "SELECT count(*) FROM updates")" = 9 ] || fed_fail "each update must be stored exactly once"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify"
echo "ok ($dropped datagrams dropped; $(grep -c 'duplicate' "$FED_DIR"/edge-*.log | awk -F: '{s+=$2} END {print s+0}') duplicate resends)"
