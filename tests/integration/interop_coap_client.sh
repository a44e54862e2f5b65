#!/usr/bin/env bash
# Interop with a third-party CoAP/DTLS stack: Debian's coap-client (libcoap
# built against OpenSSL, and GnuTLS when present) fetches /status and /model
# from the aggregator over DTLS-PSK, and posts malformed updates with Block1.
# Also: a wrong PSK and an unknown identity fail the handshake, and nothing
# any of these requests sent changes the database.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

clients=()
for c in coap-client-openssl coap-client-gnutls; do
    command -v "$c" >/dev/null && clients+=("$c")
done
[ ${#clients[@]} -gt 0 ] || fed_fail "coap-client-openssl (libcoap3-bin) is not installed"

fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 2 --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 600
fed_wait_for "grep -q 'round 1 open' '$FED_DIR/agg.log'" 30
psk=$("$BIN/fedge-keygen" psk --keys "$FED_DIR/keys" --id dev-001) || fed_fail "keygen psk"
url="coaps://127.0.0.1:$FED_PORT"
state_before=$(fed_sql "SELECT (SELECT count(*) FROM updates), (SELECT count(*) FROM audit), (SELECT sum(last_counter) FROM devices)")

for c in "${clients[@]}"; do
    out=$(timeout 20 "$c" -B 10 -u dev-001 -k "$psk" "$url/status" 2>&1) || fed_fail "$c GET /status: $out"
    echo "$out" | grep -q '"state":"open"' || fed_fail "$c /status: unexpected body: $out"
    echo "$out" | python3 -m json.tool >/dev/null || fed_fail "$c /status is not JSON: $out"

    timeout 30 "$c" -B 20 -u dev-001 -k "$psk" -o "$FED_DIR/model-$c.bin" "$url/model" >/dev/null 2>&1 ||
        fed_fail "$c GET /model"
    current=$FED_DIR/models/$(fed_sql "SELECT path FROM models ORDER BY rowid DESC LIMIT 1")
    cmp -s "$FED_DIR/model-$c.bin" "$current" || fed_fail "$c: /model body differs from the model file (Block2)"

    out=$(timeout 20 "$c" -B 10 -u dev-001 -k "$psk" "$url/round" 2>&1)
    echo "$out" | grep -q '^selected=1$' || fed_fail "$c /round for dev-001: $out"

    # malformed update bodies over Block1: each refused with a reason
    head -c 3000 /dev/urandom >"$FED_DIR/junk.bin"
    out=$(timeout 20 "$c" -B 10 -m post -b 512 -u dev-001 -k "$psk" -f "$FED_DIR/junk.bin" "$url/update" 2>&1)
    echo "$out" | grep -q "4.00" || fed_fail "$c junk update: expected 4.00, got: $out"
    head -c 20 /dev/zero >"$FED_DIR/short.bin"
    out=$(timeout 20 "$c" -B 10 -m post -u dev-001 -k "$psk" -f "$FED_DIR/short.bin" "$url/update" 2>&1)
    echo "$out" | grep -q "4.00" || fed_fail "$c truncated update: expected 4.00, got: $out"
    max=$(( $(stat -c %s "$current") * 2 ))
    head -c "$max" /dev/zero >"$FED_DIR/huge.bin"
    out=$(timeout 60 "$c" -B 40 -m post -b 1024 -u dev-001 -k "$psk" -f "$FED_DIR/huge.bin" "$url/update" 2>&1)
    echo "$out" | grep -q "4.13" || fed_fail "$c oversized update: expected 4.13, got: $out"

    # wrong key and unknown identity: no DTLS session, so no answer at all
    out=$(timeout 20 "$c" -B 3 -u dev-001 -k "0000000000000000ffffffffffffffff" "$url/status" 2>&1)
    echo "$out" | grep -q '"state"' && fed_fail "$c: a wrong PSK got an answer"
    out=$(timeout 20 "$c" -B 3 -u mallory -k "$psk" "$url/status" 2>&1)
    echo "$out" | grep -q '"state"' && fed_fail "$c: an unknown identity got an answer"
done
grep -q "unknown identity 'mallory'" "$FED_DIR/agg.log" || fed_fail "unknown identity not logged"
state_after=$(fed_sql "SELECT (SELECT count(*) FROM updates), (SELECT count(*) FROM audit), (SELECT sum(last_counter) FROM devices)")
[ "$state_before" = "$state_after" ] || fed_fail "bad requests changed the database: $state_before -> $state_after"
kill -TERM "$FED_AGG_PID"
fed_wait_pid "$FED_AGG_PID" 10 || fed_fail "SIGTERM should stop the aggregator cleanly"
grep -q "stopped" "$FED_DIR/agg.log" || fed_fail "no clean stop logged"
echo ok
