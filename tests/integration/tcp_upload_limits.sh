#!/usr/bin/env bash
# Upload limits over CoAP over TLS/TCP (RFC 8323) as over DTLS
# (tests/integration/upload_limits.sh): BERT Block1 blocks reach upload.c one
# by one (tools/deps/libcoap-4.3.1-bert-block1-per-block.patch), so an
# authenticated TCP peer (tcp_bert_peer.py: openssl s_client for TLS-PSK, CoAP
# framed by hand) that
#  - streams 16 MiB of BERT blocks without Size1 gets 4.13 at the block that
#    passes max_update_bytes and for every block after, and the aggregator's
#    peak RSS barely moves; a Size1 past the limit gets 4.13 at once;
#  - opens more partial uploads than the caps (1 per device, 3 in all) gets
#    5.03 with Max-Age; a closed connection's partial upload is freed at once;
#  - finishes a body in BERT blocks has it reassembled by upload.c and
#    answered by the update path (4.00: zeros are no envelope);
# while partial uploads are held, /status counts them, other devices are
# served over TCP and DTLS (an edge's update over TCP is accepted); nothing
# the hostile peers sent is stored; the daemon stops cleanly.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

command -v openssl >/dev/null || fed_fail "openssl is not installed"
command -v coap-client-openssl >/dev/null || fed_fail "coap-client-openssl (libcoap3-bin) is not installed"
fed_setup 6
FED_PORT=$(fed_free_port)
TCP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/fedge-partition" --data fashion-mnist --clients 2 --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
# softmax:784-10: max_update_bytes is 31572 (tcp_bert_peer.py's MAX_BODY)
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 600 --upload-idle-timeout-s 30 --upload-max-partial-per-device 1 \
    --upload-max-partial-total 3 --listen-tcp "127.0.0.1:$TCP_PORT"
fed_wait_for "grep -qs 'round 1 open' '$FED_DIR/agg.log'" 30
for d in dev-001 dev-002 dev-003 dev-004 dev-005 dev-006; do
    psk=$("$BIN/fedge-keygen" psk --keys "$FED_DIR/keys" --id "$d") || fed_fail "keygen psk $d"
    printf '%s %s\n' "$d" "$(printf %s "$psk" | od -An -tx1 | tr -d ' \n')" >>"$FED_DIR/psks"
    [ "$d" = dev-006 ] && PSK6=$psk
done
state() { fed_sql "SELECT (SELECT count(*) FROM updates), (SELECT count(*) FROM audit), (SELECT sum(last_counter) FROM devices)"; }
status() { timeout 10 coap-client-openssl -u dev-006 -k "$PSK6" "coaps+tcp://127.0.0.1:$TCP_PORT/status" 2>&1; }
json() {
    status | python3 -c "import json,sys; v=json.load(sys.stdin)
for k in '$1'.split('.'): v=v[k]
print(v)" 2>/dev/null
}
before=$(state)

mkfifo "$FED_DIR/go"
# ASan's quarantine keeps freed messages: no RSS bound then
RSS_SLACK_KB=4096
case $(ldd "$BIN/fedge-aggregator") in *libasan*) RSS_SLACK_KB=0 ;; esac
RSS_SLACK_KB=$RSS_SLACK_KB python3 tests/integration/tcp_bert_peer.py "$TCP_PORT" "$FED_AGG_PID" "$FED_DIR/psks" \
    <"$FED_DIR/go" >"$FED_DIR/peer.out" 2>&1 &
peer=$!
FED_PIDS+=("$peer")
exec 3>"$FED_DIR/go"
fed_wait_for "grep -q '^held$\|^FAIL' '$FED_DIR/peer.out' || ! kill -0 $peer 2>/dev/null" 60
cat "$FED_DIR/peer.out"
grep -q '^held$' "$FED_DIR/peer.out" || fed_fail "BERT peers: $(grep FAIL "$FED_DIR/peer.out")"
kill -0 "$FED_AGG_PID" 2>/dev/null || fed_fail "the aggregator died"

# partial uploads held now: dev-003's and dev-004's
[ "$(json uploads.partial)" = 2 ] || fed_fail "/status uploads.partial: expected 2: $(status)"
[ "$(json uploads.refused_busy)" = 3 ] || fed_fail "/status uploads.refused_busy: expected 3: $(status)"
[ "$(json uploads.refused_size)" = 273 ] || fed_fail "/status uploads.refused_size: expected 273: $(status)"
[ "$(json uploads.closed)" = 1 ] || fed_fail "/status uploads.closed: expected 1: $(status)"
[ "$(json uploads.completed)" = 1 ] || fed_fail "/status uploads.completed: expected 1: $(status)"
[ "$(state)" = "$before" ] || fed_fail "hostile BERT uploads changed the database: $before -> $(state)"
out=$(timeout 10 coap-client-openssl -B 5 -u dev-006 -k "$PSK6" "coaps://127.0.0.1:$FED_PORT/round" 2>&1)
echo "$out" | grep -q "^state=open" || fed_fail "/round over DTLS while uploads are held: $out"
fed_start_edge dev-005 "$FED_DIR/shards/shard-000.bin" --transport tcp --server "127.0.0.1:$TCP_PORT"
fed_wait_for "[ \"\$(fed_sql \"SELECT decision FROM updates WHERE device='dev-005'\")\" = accepted ]" 30 ||
    fed_fail "dev-005's update over TCP while uploads are held: $(fed_sql "SELECT device, decision, reason FROM updates")"
[ "$(fed_sql "SELECT count(*) FROM updates")" = 1 ] || fed_fail "only dev-005's update may be stored"

echo >&3
exec 3>&-
wait "$peer" || fed_fail "BERT peers: $(tail -n 1 "$FED_DIR/peer.out")"
fed_wait_for "[ \"\$(json uploads.partial)\" = 0 ]" 5 || fed_fail "closed connections' uploads not freed: $(status)"
kill -0 "$FED_AGG_PID" 2>/dev/null || fed_fail "the aggregator died"
kill -TERM "$FED_AGG_PID"
fed_wait_pid "$FED_AGG_PID" 10 || fed_fail "SIGTERM should stop the aggregator cleanly"
echo ok
