#!/usr/bin/env bash
# A relay whose parent goes silent (killed; a UDP socket that never answers
# holds its port: no reply, no ICMP) keeps answering its own edges: the
# relay's round closes with an edge's update, the partial is sealed and
# retried to the silent parent until the parent's deadline, then the relay
# polls the silent parent; throughout, an edge's GET /round at the relay is
# answered within 1 s (the relay's requests to its parent run on their own
# thread, relay.h). Ends with the partial recorded 'unanswered' after
# several tries and the GET /round to the parent failing.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 2
D=$FED_DIR
"$BIN/fedge-partition" --data fashion-mnist --clients 4 --kind iid --seed 5 \
    --out "$D/shards" --test-out "$D/test.bin" >/dev/null || fed_fail "partition"
"$BIN/fedge-keygen" devices --count 1 --prefix relay- --regions eu --out "$D/relays.keys" >/dev/null ||
    fed_fail "keygen relays"
mkdir -p "$D/r1" "$D/root"
"$BIN/fedge-keygen" aggregator --out "$D/r1" >/dev/null || fed_fail "keygen relay"
"$BIN/fedge-keygen" export --keys "$D/relays.keys" --id relay-001 --out "$D/r1/upstream.keys" >/dev/null ||
    fed_fail "export relay"
P_ROOT=$(fed_free_port)
P_R1=$(fed_free_port)
COMMON=(--model-spec softmax:784-10 --test-data "$D/test.bin" --client-fraction 1 --log-level info)
"$BIN/fedge-aggregator" "${COMMON[@]}" --keys-file "$D/relays.keys" --db "$D/root/fedge.db" \
    --model-dir "$D/root/models" --signing-key "$D/aggregator.key" --listen "127.0.0.1:$P_ROOT" --rounds 1 \
    --quorum 1 --round-timeout-s 12 --relays relay-001 >>"$D/root.log" 2>&1 &
ROOT=$!
FED_PIDS+=("$ROOT")
# two edges selected, quorum one: dev-001's update closes the relay's round
"$BIN/fedge-aggregator" "${COMMON[@]}" --keys-file "$D/keys" --db "$D/r1/fedge.db" --model-dir "$D/r1/models" \
    --signing-key "$D/r1/aggregator.key" --listen "127.0.0.1:$P_R1" --quorum 0.5 --round-timeout-s 600 \
    --upstream "127.0.0.1:$P_ROOT" --upstream-id relay-001 --upstream-keys "$D/r1/upstream.keys" \
    --upstream-poll-s 0.2 --upstream-margin-s 3 --upstream-timeout-s 4 >>"$D/r1.log" 2>&1 &
RELAY=$!
FED_PIDS+=("$RELAY")
fail() {
    echo "--- relay log (tail) ---" >&2
    grep -v DEBUG "$D/r1.log" | tail -n 25 >&2
    fed_fail "$@"
}
fed_wait_for "grep -q 'round 1 open' '$D/r1.log'" 30 || fail "the relay did not open round 1"
kill -9 "$ROOT"
wait "$ROOT" 2>/dev/null
python3 -c 'import socket,sys,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(("127.0.0.1",int(sys.argv[1]))); time.sleep(60)' \
    "$P_ROOT" &
FED_PIDS+=("$!")
keys=$(fed_edge_keys dev-001) || exit 1
"$BIN/fedge-edge" --server "127.0.0.1:$P_R1" --id dev-001 --keys "$keys" --shard "$D/shards/shard-000.bin" \
    --encoding fp32 --seed 7 --poll-ms 100 >>"$D/edge.log" 2>&1 &
FED_PIDS+=("$!")
fed_wait_for "grep -q 'partial sealed' '$D/r1.log'" 20 || fail "the relay sealed no partial"

psk=$("$BIN/fedge-keygen" psk --keys "$D/keys" --id dev-002) || fed_fail "keygen psk"
worst=0
sealed_seen=0
probe() { # one GET /round at the relay as dev-002; worst = the slowest answer (ms)
    local t0 out ms
    t0=$(date +%s%N)
    out=$(timeout 10 coap-client-openssl -B 8 -u dev-002 -k "$psk" "coaps://127.0.0.1:$P_R1/round" 2>&1)
    ms=$((($(date +%s%N) - t0) / 1000000))
    echo "$out" | grep -q '^state=' || fail "GET /round at the relay: no answer after $ms ms: $(echo "$out" | head -c 160)"
    [ "$ms" -gt "$worst" ] && worst=$ms
}
# while the partial is being retried, then while the relay polls the silent parent
end=$((SECONDS + 15))
while [ "$SECONDS" -lt "$end" ]; do
    probe
    [ "$(sqlite3 -batch -noheader "$D/r1/fedge.db" "SELECT status FROM relay_sent WHERE round=1" 2>/dev/null)" = sealed ] &&
        sealed_seen=1
    sleep 0.5
done
kill -0 "$RELAY" 2>/dev/null || fail "the relay exited"
echo "slowest GET /round at the relay: $worst ms"
[ "$sealed_seen" = 1 ] || fail "the partial was never seen in flight ('sealed') while the edges were served"
[ "$worst" -le 1000 ] ||
    fail "an edge's GET /round at the relay waited $worst ms while the relay's parent was silent (want <= 1000 ms)"
[ "$(grep -c 'POST /update to the parent' "$D/r1.log")" -ge 2 ] || fail "the partial was not retried"
[ "$(sqlite3 -batch -noheader "$D/r1/fedge.db" "SELECT status FROM relay_sent WHERE round=1")" = unanswered ] ||
    fail "the partial is not recorded unanswered after the parent's deadline"
# the partial's retries end first (their length grows with the machine's load)
for _ in $(seq 1 60); do
    grep -q "relay: GET /round to the parent: " "$D/r1.log" && break
    probe
    sleep 0.5
done
grep -q "relay: GET /round to the parent: " "$D/r1.log" || fail "the relay never polled the silent parent"
[ "$worst" -le 1000 ] ||
    fail "an edge's GET /round at the relay waited $worst ms while the relay polled its silent parent (want <= 1000 ms)"
echo ok
