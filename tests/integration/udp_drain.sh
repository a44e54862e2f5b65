#!/usr/bin/env bash
# The DTLS endpoint drains its socket (issue 9 §4; the libcoap patch
# tools/deps/libcoap-4.3.1-endpoint-drain.patch): one wake of the I/O loop
# reads up to 32 queued datagrams, not one. The aggregator is stopped
# (SIGSTOP) while 96 junk datagrams and the ClientHellos of 6 real devices
# (coap-client-openssl, GET /round) queue on its UDP socket; after SIGCONT
# every device gets its answer, the daemon still answers, and GET /status
# "udp" shows the queued datagrams read in fewer wakes than datagrams, at
# most 32 and more than one per wake.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

command -v coap-client-openssl >/dev/null || fed_fail "coap-client-openssl (libcoap3-bin) is not installed"
JUNK=96
fed_setup 7
FED_PORT=$(fed_free_port)
fed_start_aggregator --model-spec softmax:784-10 --rounds 1 --round-timeout-s 600 --udp-rcvbuf-bytes 1048576
fed_wait_for "grep -qs 'round 1 open' '$FED_DIR/agg.log'" 30
declare -A PSK
for i in 1 2 3 4 5 6 7; do
    PSK[dev-00$i]=$("$BIN/fedge-keygen" psk --keys "$FED_DIR/keys" --id "dev-00$i") || fed_fail "keygen psk dev-00$i"
done
url="coaps://127.0.0.1:$FED_PORT"
status() { timeout 20 coap-client-openssl -B 10 -u dev-007 -k "${PSK[dev-007]}" "$url/status" 2>&1; }
udp() { # udp KEY: one number from a /status answer on stdin
    python3 -c "import json,sys; print(json.load(sys.stdin)['udp']['$1'])" 2>/dev/null
}

before=$(status)
reads0=$(udp reads <<<"$before") || fed_fail "no udp.reads in GET /status: $before"
wakes0=$(udp wakes <<<"$before") || fed_fail "no udp.wakes in GET /status: $before"

kill -STOP "$FED_AGG_PID" || fed_fail "cannot stop the aggregator"
# junk: DTLS handshake record headers with nothing valid after them
python3 - "$FED_PORT" "$JUNK" <<'EOF' || { kill -CONT "$FED_AGG_PID"; fed_fail "cannot send the junk datagrams"; }
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(b"\x16\xfe\xfd" + bytes([i % 256]) * 61, ("127.0.0.1", int(sys.argv[1])))
EOF
clients=()
for i in 1 2 3 4 5 6; do
    timeout 30 coap-client-openssl -B 20 -u "dev-00$i" -k "${PSK[dev-00$i]}" "$url/round" \
        >"$FED_DIR/round-$i.out" 2>&1 &
    clients+=("$!")
done
sleep 0.5 # the ClientHellos queue behind the junk
kill -CONT "$FED_AGG_PID" || fed_fail "cannot resume the aggregator"

for i in "${!clients[@]}"; do
    wait "${clients[$i]}" || fed_fail "dev-00$((i + 1)): coap-client failed: $(cat "$FED_DIR/round-$((i + 1)).out")"
    grep -q '^round=1$' "$FED_DIR/round-$((i + 1)).out" ||
        fed_fail "dev-00$((i + 1)): no /round answer: $(cat "$FED_DIR/round-$((i + 1)).out")"
done
kill -0 "$FED_AGG_PID" 2>/dev/null || fed_fail "the aggregator died"

after=$(status)
reads=$(($(udp reads <<<"$after") - reads0))
wakes=$(($(udp wakes <<<"$after") - wakes0))
most=$(udp most_reads_per_wake <<<"$after")
drops=$(udp drops <<<"$after")
echo "udp_drain: $reads datagrams read in $wakes wakes, at most $most in one; $drops dropped"
[ "$drops" = 0 ] || fed_fail "the socket dropped $drops datagrams (the test needs them all queued)"
[ "$reads" -ge $((JUNK + 6)) ] || fed_fail "$reads datagrams read; at least $((JUNK + 6)) were sent"
[ "$most" -gt 1 ] || fed_fail "one datagram per wake: the endpoint is not drained"
[ "$most" -le 32 ] || fed_fail "$most datagrams in one wake: over the bound of 32"
[ $((wakes * 2)) -lt "$reads" ] || fed_fail "$wakes wakes for $reads datagrams: not fewer than half"
echo "udp_drain: OK"
