#!/usr/bin/env bash
# tools/bench/observe_vs_poll.sh [BUILD] — datagrams and bytes on the wire
# with push (CoAP Observe on GET /round) against polling (edges with
# --no-observe), same federation both times, measured in the same run.
#
# 8 edges (DTLS, poll_ms 500: the default), softmax:784-10, ROUNDS rounds;
# 7 edges reach the aggregator through one counting relay, the straggler
# (dev-008) through another that delays every datagram DELAY_MS each way, so
# its model download and upload take seconds and the other 7 wait for it
# every round. Counts are UDP payload bytes (DTLS records) and datagrams,
# both directions, from tools/bench/udp_relay.py; everything each edge
# sends or receives is counted (handshake, /round, /model, /update).
# INSECURE=1: plain CoAP instead, and the relays also count GET /round
# requests and notifications (udp_relay.py --coap).
#   ROUNDS (5)  DELAY_MS (300)  START_DELAY_S (3)  INSECURE (unset)
set -uo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
export FEDGE_BUILD=$BUILD
. tests/lib/fed.sh

rounds=${ROUNDS:-5}
delay=${DELAY_MS:-300}
insecure=()
coap=()
if [ -n "${INSECURE:-}" ]; then
    insecure=(--insecure)
    coap=(--coap)
fi
start_delay=${START_DELAY_S:-3}
n=8
fed_setup $n
"$BIN/fedge-partition" --data fashion-mnist --clients $n --kind iid --seed 2 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail partition

one_run() { # MODE (observe|poll) -> prints "MODE seconds up_dgrams down_dgrams up_bytes down_bytes"
    local mode=$1 fast slow r1 r2 i extra=()
    [ "$mode" = poll ] && extra=(--no-observe)
    extra+=("${insecure[@]}")
    FED_PORT=$(fed_free_port)
    fast=$(fed_free_port)
    slow=$(fed_free_port)
    rm -rf "$FED_DIR/fedge.db"* "$FED_DIR/models"
    python3 tools/bench/udp_relay.py "$fast" "$FED_PORT" "$FED_DIR/$mode-fast.json" "${coap[@]}" &
    r1=$!
    python3 tools/bench/udp_relay.py "$slow" "$FED_PORT" "$FED_DIR/$mode-slow.json" --delay-ms "$delay" "${coap[@]}" &
    r2=$!
    FED_PIDS+=("$r1" "$r2")
    fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds "$rounds" \
        --round-timeout-s 120 --start-delay-s "$start_delay" --linger-s 2 --log-level warn "${insecure[@]}"
    local t0
    t0=$(date +%s.%N)
    for i in $(seq 1 $n); do
        local port=$fast
        [ "$i" = "$n" ] && port=$slow
        "$BIN/fedge-edge" --server "127.0.0.1:$port" --id "$(printf dev-%03d "$i")" \
            --keys "$(fed_edge_keys "$(printf dev-%03d "$i")")" --shard "$FED_DIR/shards/$(printf shard-%03d $((i - 1))).bin" \
            "${extra[@]}" >>"$FED_DIR/edge-$mode-$i.log" 2>&1 &
        FED_PIDS+=("$!")
        FED_EDGE_PIDS+=("$!:$(printf dev-%03d "$i")")
    done
    fed_wait_run 300 || fed_fail "the $mode run failed"
    local t1
    t1=$(date +%s.%N)
    kill -TERM "$r1" "$r2"
    wait "$r1" "$r2"
    [ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed' AND n_accepted=$n")" = "$rounds" ] ||
        fed_fail "$mode: $rounds rounds of $n updates expected: $(fed_sql "SELECT id, status, n_accepted FROM rounds")"
    python3 - "$mode" "$t0" "$t1" "$FED_DIR/$mode-fast.json" "$FED_DIR/$mode-slow.json" <<'EOF'
import json, sys
mode, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
tot = {"up_dgrams": 0, "down_dgrams": 0, "up_bytes": 0, "down_bytes": 0}
gets = notes = 0
for path in sys.argv[4:]:
    for c in json.load(open(path))["clients"].values():
        for k in tot:
            tot[k] += c[k]
        cc = c.get("coap", {})
        gets += cc.get("GET /round", 0) + cc.get("GET /round observe", 0)
        notes += cc.get("notifications", 0)
print(mode, "%.1f" % (t1 - t0), tot["up_dgrams"], tot["down_dgrams"], tot["up_bytes"], tot["down_bytes"], gets, notes)
EOF
}

obs=$(one_run observe)
poll=$(one_run poll)
python3 - "$n" "$rounds" "$obs" "$poll" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF'
import sys
n, rounds = int(sys.argv[1]), int(sys.argv[2])
rows = [line.split() for line in sys.argv[3:5]]
print("%d edges, %d rounds, straggler through a delaying relay; load average %s" % (n, rounds, sys.argv[5]))
print("per edge per round:")
print("%-8s %7s %8s %8s %9s %9s %12s %14s" % ("mode", "wall s", "dgrams", "up", "bytes", "up bytes", "GET /round", "notifications"))
vals = {}
for r in rows:
    mode, secs = r[0], float(r[1])
    ud, dd, ub, db, gets, notes = map(int, r[2:8])
    per = lambda x: x / n / rounds
    vals[mode] = (per(ud + dd), per(ub + db))
    coap = ("%12.1f %14.1f" % (per(gets), per(notes))) if gets else "%12s %14s" % ("-", "-")
    print("%-8s %7.1f %8.1f %8.1f %9.0f %9.0f %s" % (mode, secs, per(ud + dd), per(ud), per(ub + db), per(ub), coap))
o, p = vals["observe"], vals["poll"]
print("observe / poll: datagrams %.2f, bytes %.2f" % (o[0] / p[0], o[1] / p[1]))
EOF
