#!/usr/bin/env bash
# CoAP over TLS/TCP (RFC 8323) beside DTLS on one aggregator (listen_tcp):
#  - tcp_max_connections and tcp_max_preauth are cut to what RLIMIT_NOFILE
#    allows (a connection holds a descriptor; the log and the model store
#    need theirs);
#  - hostile peers first: 12 TCP connections that never start TLS (past
#    tcp_max_preauth: the oldest closed; the others past
#    tcp_handshake_timeout_s); one device holding 5 authenticated
#    connections: its oldest closed;
#    an authenticated peer whose message header announces 1 MB (over the
#    CSM Max-Message-Size): closed at once; one whose CSM announces a
#    Max-Message-Size of 512: its GET /model answered in 512-byte blocks
#    (the peer's limit honoured), one announcing 64 (too few for fedge's
#    answers): an Abort saying so, connection closed; one that sends half of a
#    message and stops: the daemon keeps serving everyone else meanwhile;
#    nothing is stored;
#  - Debian's coap-client over coaps+tcp with the device PSK: GET /status,
#    GET /model (Block2, byte-identical; the GnuTLS build too), POST junk
#    (4.00) and an oversized body (BERT Block1 blocks, 4.13; the GnuTLS
#    build's libcoap client cannot send a 64 KiB BERT message, so OpenSSL's);
#  - an edge asked to use TCP where nothing listens on TCP fails clearly;
#  - a round: two devices' updates from bench-ingest_rate over TCP (libcoap's
#    BERT client), each sent again and answered 2.04 as a duplicate; two
#    edges over TCP (fp32, int8: BERT blocks) and one over DTLS, all
#    accepted and logged alike, while a peer with no key keeps 40 bare TCP
#    connections open (reopening each one closed): it never keeps a device
#    from its handshake (docs/PROTOCOL.md "Transports").
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

command -v coap-client-openssl >/dev/null || fed_fail "coap-client-openssl (libcoap3-bin) is not installed"
command -v openssl >/dev/null || fed_fail "openssl is not installed"
fed_setup 5
FED_PORT=$(fed_free_port)
tcp_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
TCP_PORT=$(tcp_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 3 --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
# with 128 descriptors at most, 1000 connections cannot be held
(ulimit -Sn 128 && ulimit -Hn 128 && exec "$BIN/fedge-aggregator" --keys-file "$FED_DIR/keys" \
    --db "$FED_DIR/capped.db" --model-dir "$FED_DIR/capped-models" --listen "127.0.0.1:$FED_PORT" \
    --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --listen-tcp "127.0.0.1:$TCP_PORT" \
    --tcp-max-connections 1000 >"$FED_DIR/capped.log" 2>&1) &
capped=$!
FED_PIDS+=("$capped")
fed_wait_for "grep -qs 'listening on TCP' '$FED_DIR/capped.log'" 20
grep -q "TCP connections capped at 48 authenticated + 16 in handshake: 128 file descriptors allowed" "$FED_DIR/capped.log" ||
    fed_fail "tcp_max_connections not cut to RLIMIT_NOFILE: $(grep TCP "$FED_DIR/capped.log")"
kill "$capped"
wait "$capped" 2>/dev/null

fed_start_aggregator --model-spec mlp:784-64-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 60 --start-delay-s 0.5 --linger-s 1 --listen-tcp "127.0.0.1:$TCP_PORT" \
    --tcp-max-connections 4 --tcp-max-preauth 4 --tcp-handshake-timeout-s 1
fed_wait_for "grep -qs 'round 1 open' '$FED_DIR/agg.log'" 20
psk=$("$BIN/fedge-keygen" psk --keys "$FED_DIR/keys" --id dev-001) || fed_fail "keygen psk"
url="coaps+tcp://127.0.0.1:$TCP_PORT"
state() { fed_sql "SELECT (SELECT count(*) FROM updates), (SELECT count(*) FROM audit), (SELECT sum(last_counter) FROM devices)"; }
status() { timeout 10 coap-client-openssl -u dev-001 -k "$psk" "$url/status" 2>&1; }
tcp_stat() { status | python3 -c "import json,sys; print(json.load(sys.stdin)['tcp']['$1'])"; }
before=$(state)

# an authenticated peer: CSM, then a message announcing 1 MB, 3000 bytes, silence
hex=$(printf %s "$psk" | od -An -tx1 | tr -d ' \n')
# (the feeder's pid in big.feeder: it is stopped once the server has closed)
(echo "$BASHPID" >"$FED_DIR/big.feeder"; printf '\x00\xe1'; sleep 0.3; printf '\xf0\x00\x0e\x41\x33\x02'
 head -c 3000 /dev/zero; exec sleep 6) 2>/dev/null |
    timeout 10 openssl s_client -connect "127.0.0.1:$TCP_PORT" -psk_identity dev-001 -psk "$hex" \
        -tls1_2 -quiet >"$FED_DIR/big.out" 2>&1 &
big_pid=$!
for ((i = 0; i < 40; i++)); do kill -0 "$big_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$big_pid" 2>/dev/null && fed_fail "the server kept the connection of an oversized message open"
kill "$(cat "$FED_DIR/big.feeder")" 2>/dev/null
wait "$big_pid"
grep -q "pdu too big" "$FED_DIR/agg.log" || fed_fail "oversized message not refused"
kill -0 "$FED_AGG_PID" || fed_fail "aggregator died"

# 12 connections that send nothing: at most 4 held, the oldest closed at
# once, the held ones after 1 s (watched for 2 s, or until all are closed)
python3 - "$TCP_PORT" <<'EOF' || fed_fail "stalling client"
import select, socket, sys, time
conns = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(12)]
end = time.monotonic() + 2
live = list(conns)
while live and time.monotonic() < end:
    ready, _, _ = select.select(live, [], [], max(0.0, end - time.monotonic()))
    for c in ready:
        try:
            gone = c.recv(1) == b""
        except ConnectionResetError:
            gone = True
        if gone:
            live.remove(c)
closed = sum(c not in live for c in conns[:4])
sys.exit(0 if closed == 4 else f"{closed} of the first 4 stalled connections closed by the server")
EOF
[ "$(tcp_stat preauth_evicted)" -ge 2 ] || fed_fail "connections past tcp_max_preauth should be closed: $(status)"
[ "$(tcp_stat timed_out)" -ge 4 ] || fed_fail "stalled handshakes should time out: $(status)"
grep -q "no TLS handshake and CSM within 1.0 s" "$FED_DIR/agg.log" || fed_fail "handshake timeout not logged"

# an authenticated peer that sends half of a 5000-byte message and stops:
# the daemon keeps serving everyone else meanwhile (the requests below)
(printf '\x00\xe1'; sleep 0.3; printf '\xe0\x12\x7b\x02'; head -c 100 /dev/zero; exec sleep 10) 2>/dev/null |
    timeout 12 openssl s_client -connect "127.0.0.1:$TCP_PORT" -psk_identity dev-001 -psk "$hex" \
        -tls1_2 -quiet >/dev/null 2>&1 &
half_pid=$!
sleep 0.5

# coap-client (libcoap + OpenSSL) over coaps+tcp
out=$(status)
echo "$out" | python3 -m json.tool >/dev/null || fed_fail "GET /status over TCP: $out"
for c in coap-client-openssl coap-client-gnutls; do
    command -v "$c" >/dev/null || continue
    timeout 20 "$c" -u dev-001 -k "$psk" -o "$FED_DIR/model-$c.bin" "$url/model" >/dev/null 2>&1 ||
        fed_fail "$c GET /model over TCP"
    cmp -s "$FED_DIR/model-$c.bin" "$FED_DIR/models/$(fed_sql "SELECT path FROM models")" ||
        fed_fail "$c: /model over TCP differs from the model file"
done
head -c 3000 /dev/urandom >"$FED_DIR/junk.bin"
out=$(timeout 20 coap-client-openssl -m post -u dev-001 -k "$psk" -f "$FED_DIR/junk.bin" "$url/update" 2>&1)
echo "$out" | grep -q "^4.00" || fed_fail "junk update over TCP: expected 4.00, got: $out"
head -c 400000 /dev/zero >"$FED_DIR/huge.bin"
out=$(timeout 20 coap-client-openssl -m post -u dev-001 -k "$psk" -f "$FED_DIR/huge.bin" "$url/update" 2>&1)
echo "$out" | grep -q "^4.13" || fed_fail "oversized update over TCP (BERT): expected 4.13, got: $out"
[ "$(state)" = "$before" ] || fed_fail "hostile and malformed requests changed the database: $before -> $(state)"
kill -0 "$half_pid" 2>/dev/null || fed_fail "the half-sent message's connection should still be open"
kill "$half_pid" 2>/dev/null

# a peer whose CSM says Max-Message-Size 512: GET /model's first Block2
# message fits in it (512-byte blocks, not fedge's 1024); the peer hangs up
# (-no_ign_eof) once 256 bytes are in, or at 5 s
: >"$FED_DIR/mms.out"
(printf '\x30\xe1\x22\x02\x00'; sleep 0.3; printf '\x60\x01\xb5model'
 for ((i = 0; i < 45; i++)); do [ "$(wc -c <"$FED_DIR/mms.out")" -ge 256 ] && break; sleep 0.1; done
 exec sleep 0.3) 2>/dev/null |
    timeout 5 openssl s_client -connect "127.0.0.1:$TCP_PORT" -psk_identity dev-001 -psk "$hex" \
        -tls1_2 -quiet -no_ign_eof 2>/dev/null >"$FED_DIR/mms.out"
python3 tests/lib/coap_tcp_block2.py "$FED_DIR/mms.out" 0 5 0 512 || fed_fail "a peer's Max-Message-Size 512 not honoured"
# one whose CSM says 64 bytes, too few for a /round answer: an Abort (7.05)
# saying why, and the connection closed
(printf '\x20\xe1\x21\x40'; sleep 0.3; printf '\x60\x01\xb5round'; exec sleep 3) 2>/dev/null |
    timeout 5 openssl s_client -connect "127.0.0.1:$TCP_PORT" -psk_identity dev-001 -psk "$hex" \
        -tls1_2 -quiet 2>/dev/null >"$FED_DIR/mms64.out"
[ $? -eq 124 ] && fed_fail "the connection of a peer with Max-Message-Size 64 was kept open"
grep -aq "Max-Message-Size below 512 bytes" "$FED_DIR/mms64.out" &&
    od -An -tx1 "$FED_DIR/mms64.out" | tr -d '\n' | grep -q " e5 ff 4d 61 78" ||
    fed_fail "no Abort for Max-Message-Size 64: $(od -An -tx1 "$FED_DIR/mms64.out" | head -3)"

# one device, 5 authenticated connections (TLS, then a CSM): the oldest goes
refused=$(tcp_stat refused)
hex2=$(printf %s "$("$BIN/fedge-keygen" psk --keys "$FED_DIR/keys" --id dev-002)" | od -An -tx1 | tr -d ' \n')
five=()
for ((i = 0; i < 5; i++)); do
    (printf '\x00\xe1'; exec sleep 8) 2>/dev/null |
        timeout 10 openssl s_client -connect "127.0.0.1:$TCP_PORT" -psk_identity dev-002 -psk "$hex2" \
            -tls1_2 -quiet >/dev/null 2>&1 &
    five+=("$!")
    sleep 0.2
done
kill -0 "${five[0]}" 2>/dev/null && fed_fail "a device's 5th authenticated connection should close its oldest"
for p in "${five[@]:1}"; do kill -0 "$p" 2>/dev/null || fed_fail "a device's 4 newest connections should be kept"; done
kill "${five[@]:1}" 2>/dev/null
grep -q "closed: its device holds 4 newer ones" "$FED_DIR/agg.log" || fed_fail "the per-device cap not logged"
[ "$(tcp_stat refused)" -gt "$refused" ] || fed_fail "the per-device close not counted"

# an edge told to use TCP where nothing listens on TCP
out=$(timeout 20 "$BIN/fedge-edge" --server "127.0.0.1:$(tcp_free_port)" --transport tcp --id dev-005 \
    --keys "$(fed_edge_keys dev-005)" --shard "$FED_DIR/shards/shard-002.bin" --max-retries 0 2>&1)
[ $? -ne 0 ] || fed_fail "an edge without a TCP listener should fail"
echo "$out" | grep -q "listen_tcp" || fed_fail "no clear reason for the missing TCP listener: $out"

# a round over both transports; the separate answer after the commit and
# the duplicate answer as over DTLS
DRIVER="$BIN/bench-ingest_rate"
[ -x "$DRIVER" ] || DRIVER=build/native/bin/bench-ingest_rate # an ASan build has no bench programs
"$DRIVER" --server "127.0.0.1:$TCP_PORT" --transport tcp --keys "$FED_DIR/keys" --n 2 --resend 1 --raw 0 \
    --timeout-s 30 >"$FED_DIR/driver.log" 2>&1 || { cat "$FED_DIR/driver.log" >&2; fed_fail "bench-ingest_rate over TCP"; }
grep -q "^resend   2 of 2 answered 2.04 as duplicates" "$FED_DIR/driver.log" ||
    fed_fail "resends over TCP not answered as duplicates: $(cat "$FED_DIR/driver.log")"
# a peer with no key fills tcp_max_preauth (4) ten times over meanwhile
python3 - "$TCP_PORT" <<'EOF' &
import select, socket, sys
port = int(sys.argv[1]); conns = []
while True:
    while len(conns) < 40:
        try:
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            break
    r, _, _ = select.select(conns, [], [], 0.02)
    for c in r:
        try:
            d = c.recv(1)
        except OSError:
            d = b""
        if d == b"":
            conns.remove(c); c.close()
EOF
flood=$!
FED_PIDS+=("$flood")
sleep 0.5
fed_start_edge dev-003 "$FED_DIR/shards/shard-000.bin" --encoding fp32 --transport tcp \
    --server "127.0.0.1:$TCP_PORT"
fed_start_edge dev-004 "$FED_DIR/shards/shard-001.bin" --encoding int8 --transport tcp \
    --server "127.0.0.1:$TCP_PORT"
fed_start_edge dev-005 "$FED_DIR/shards/shard-002.bin" --encoding int8
fed_wait_run 60 || fed_fail "aggregator exited with an error"
kill -0 "$flood" 2>/dev/null || fed_fail "the key-less flood stopped early"
kill "$flood"
grep -q "closed before its handshake: .* in handshake (tcp_max_preauth" "$FED_DIR/agg.log" ||
    fed_fail "the flood's connections were not closed as tcp_max_preauth says"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE decision='accepted' AND round=1")" = 5 ] ||
    fed_fail "5 accepted updates expected: $(fed_sql "SELECT device, decision, reason FROM updates")"
[ "$(fed_sql "SELECT count(*) FROM updates")" = 5 ] || fed_fail "one row per device expected"
# each edge's row: its encoding and the bytes it says it sent, whatever the transport
for de in dev-003:fp32 dev-004:int8 dev-005:int8; do
    d=${de%%:*}
    sent=$(sed -n 's/.*round 1: .* sent=\([0-9]*\) B encoding=.*/\1/p' "$FED_DIR/edge-$d.log" | tail -1)
    [ -n "$sent" ] && [ "$(fed_sql "SELECT encoding || ':' || bytes FROM updates WHERE device='$d'")" = "${de#*:}:$sent" ] ||
        fed_fail "updates logged for $d (sent ${sent:-?} B): $(fed_sql "SELECT device, encoding, bytes FROM updates")"
done
[ "$(fed_sql "SELECT count(DISTINCT bytes) FROM updates WHERE device IN ('dev-004','dev-005')")" = 1 ] ||
    fed_fail "the int8 updates over TCP and DTLS differ in size"
[ "$(fed_sql "SELECT status FROM rounds WHERE id=1")" = closed ] || fed_fail "round 1 not closed"
grep -q "CoAP over TLS/TCP" "$FED_DIR/edge-dev-003.log" || fed_fail "edge did not use TCP"
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null ||
    fed_fail "audit verify"
echo ok
