#!/usr/bin/env bash
# The aggregator's (D)TLS is libcoap on OpenSSL (tools/deps.sh,
# COAP_OSSL_PSK_CIPHERS); docs/PROTOCOL.md "Transports". Against a real
# fedge-aggregator with Debian's openssl s_client and the device PSK:
#  - TLS over TCP: a client listing ECDHE-PSK and PSK ChaCha20-Poly1305
#    first, then AES-256-GCM and AES-128-GCM (mbedTLS 2.28's order, the
#    edges' libcoap) gets PSK-AES256-GCM-SHA384 (the mbedTLS server chose
#    ChaCha20: software, the top cost of TLS ingest); one offering only
#    ChaCha20 is refused;
#  - DTLS: TLS_PSK_WITH_AES_128_CCM_8 alone (the shipped edges' one suite,
#    edge/mbedtls_config_edge.h) is negotiated, through the HelloVerify
#    cookie exchange;
#  - TLS 1.3 (OpenSSL's client order; libcoap sets no TLS 1.3 list) gets
#    TLS_CHACHA20_POLY1305_SHA256, the first suite of SHA-256, the PSK's hash;
#  - a wrong key fails the TLS handshake; nothing is stored by any of it;
#  - then two devices of bench-ingest_rate (libcoap on mbedTLS: it gets
#    TLS_PSK_WITH_AES_256_GCM_SHA384) send their
#    updates over TLS as BERT messages of 63 KiB, four TLS records each
#    (libcoap 4.3.1 on mbedTLS wrote the first record of a message and lost
#    the rest; tools/deps' patch writes them all): both accepted;
#  - a peer whose CSM announces Max-Message-Size 65536 and BERT gets GET
#    /model in messages past one TLS record (the aggregator on mbedTLS cut
#    every TCP session to 1,152 bytes);
#  - tcp_max_preauth 2: a peer that sent its ClientHello and stalls, then two
#    bare connections: the older bare one is closed, the one whose
#    ClientHello OpenSSL read is kept (server.c's tcp_hello_seen).
# The mbedTLS edges against this aggregator: e2e_dtls.sh, tcp_transport.sh,
# cross_edge.sh.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

command -v openssl >/dev/null || fed_fail "openssl is not installed"
fed_setup 2
FED_PORT=$(fed_free_port)
TCP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec mlp:784-64-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
    --round-timeout-s 60 --listen-tcp "127.0.0.1:$TCP_PORT" --tcp-max-preauth 2
fed_wait_for "grep -qs 'round 1 open' '$FED_DIR/agg.log'" 20
psk=$("$BIN/fedge-keygen" psk --keys "$FED_DIR/keys" --id dev-001) || fed_fail "keygen psk"
hex=$(printf %s "$psk" | od -An -tx1 | tr -d ' \n')
state() { fed_sql "SELECT (SELECT count(*) FROM updates), (SELECT count(*) FROM audit), (SELECT sum(last_counter) FROM devices)"; }
before=$(state)

# PROTO CIPHERS [KEY]: the suite the handshake settled on, or "(NONE)"
negotiated() {
    local proto=$1 ciphers=$2 key=${3:-$hex} port=$TCP_PORT
    [ "$proto" = -dtls1_2 ] && port=$FED_PORT
    [ "$proto" = -tls1_3 ] && ciphers=ALL # TLS 1.3 suites are not in -cipher
    timeout 5 openssl s_client "$proto" -connect "127.0.0.1:$port" -psk_identity dev-001 -psk "$key" \
        -cipher "$ciphers" -brief </dev/null 2>&1 | sed -n 's/^Ciphersuite: //p' | head -1 | grep . || echo "(NONE)"
}
mbedtls_order="ECDHE-PSK-CHACHA20-POLY1305:PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256"
got=$(negotiated -tls1_2 "$mbedtls_order")
[ "$got" = PSK-AES256-GCM-SHA384 ] || fed_fail "TLS with mbedTLS's suite order: $got negotiated, PSK-AES256-GCM-SHA384 expected"
got=$(negotiated -tls1_2 "PSK-AES128-GCM-SHA256")
[ "$got" = PSK-AES128-GCM-SHA256 ] || fed_fail "TLS with AES-128-GCM: $got negotiated"
got=$(negotiated -tls1_2 "PSK-CHACHA20-POLY1305:ECDHE-PSK-CHACHA20-POLY1305")
[ "$got" = "(NONE)" ] || fed_fail "a ChaCha20-only client should be refused; $got negotiated"
got=$(negotiated -dtls1_2 "PSK-AES128-CCM8")
[ "$got" = PSK-AES128-CCM8 ] || fed_fail "DTLS with the edges' TLS_PSK_WITH_AES_128_CCM_8: $got negotiated"
got=$(negotiated -tls1_2 "PSK-AES128-GCM-SHA256" "00${hex:2}")
[ "$got" = "(NONE)" ] || fed_fail "a wrong key should fail the handshake; $got negotiated"
python3 - "$TCP_PORT" <<'EOF' || fed_fail "tcp_max_preauth: a connection whose ClientHello was read should outlast bare ones"
import os, socket, sys, time
port = int(sys.argv[1])
body = b"\x03\x03" + os.urandom(32) + b"\x00" + b"\x00\x02\x00\xa8" + b"\x01\x00"  # PSK-AES128-GCM-SHA256
hs = b"\x01" + len(body).to_bytes(3, "big") + body
hello = socket.create_connection(("127.0.0.1", port))
hello.sendall(b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs)
hello.settimeout(2)
if not hello.recv(5).startswith(b"\x16\x03\x03"):
    sys.exit("no ServerHello")
bare = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
time.sleep(0.5)
def closed(s):
    s.settimeout(0.2)
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except socket.timeout:
        return False
    except OSError:
        return True
if not closed(bare[0]):
    sys.exit("the oldest bare connection is still open")
if closed(hello):
    sys.exit("the connection that sent a ClientHello was closed")
print("preauth: the bare connection went, the ClientHello's stayed")
EOF
kill -0 "$FED_AGG_PID" 2>/dev/null || fed_fail "the aggregator stopped"
got=$(negotiated -tls1_3 ALL)
[ "$got" = TLS_CHACHA20_POLY1305_SHA256 ] || fed_fail "TLS 1.3 with the PSK: $got negotiated"
[ "$(state)" = "$before" ] || fed_fail "handshakes alone changed the log: $before -> $(state)"

DRIVER="$BIN/bench-ingest_rate"
[ -x "$DRIVER" ] || DRIVER=build/native/bin/bench-ingest_rate # an ASan build has no bench programs
"$DRIVER" --server "127.0.0.1:$TCP_PORT" --transport tcp --tcp-mtu 65536 --keys "$FED_DIR/keys" --n 2 \
    --raw 0 --timeout-s 10 >"$FED_DIR/driver.log" 2>&1 || { cat "$FED_DIR/driver.log" >&2; fed_fail "bench-ingest_rate over TCP, 63 KiB messages"; }
grep -q "^suite    TLS-PSK-WITH-AES-256-GCM-SHA384 " "$FED_DIR/driver.log" ||
    fed_fail "the mbedTLS driver's TLS suite: $(grep "^suite" "$FED_DIR/driver.log")"
grep -q "^ingest   2 of 2 answered 2.04" "$FED_DIR/driver.log" ||
    fed_fail "updates in 63 KiB TLS messages not accepted: $(cat "$FED_DIR/driver.log")"
[ "$(fed_sql "SELECT count(*) FROM updates WHERE decision='accepted'")" = 2 ] ||
    fed_fail "2 accepted updates expected: $(fed_sql "SELECT device, decision, reason FROM updates")"

(printf '\x50\xe1\x23\x01\x00\x00\x20'; sleep 0.3; printf '\x60\x01\xb5model'; exec sleep 1) 2>/dev/null |
    timeout 5 openssl s_client -connect "127.0.0.1:$TCP_PORT" -psk_identity dev-001 -psk "$hex" \
        -tls1_2 -quiet 2>/dev/null >"$FED_DIR/model.out"
python3 tests/lib/coap_tcp_block2.py "$FED_DIR/model.out" 7 7 16384 65536 || fed_fail "GET /model to a peer with Max-Message-Size 65536 and BERT"

echo ok
