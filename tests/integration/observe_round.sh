#!/usr/bin/env bash
# Push instead of polling (CoAP Observe on GET /round, RFC 7641), over plain
# CoAP through tools/bench/udp_relay.py --coap, which counts each request by
# path and the server's notifications:
#  1. 3 edges observe /round, 2 of them selected each round: 3 rounds
#     complete with exactly the selected devices' updates (each notification
#     is its device's own view), the rounds and the finish reach them as
#     notifications, and they send far fewer GET /round than
#     polling would (registration + the 10 x poll_ms fallback only) while
#     the first round's start is delayed 4 s.
#  2. Finished stays finished: each edge wrote <state_dir>/<id>.finished with
#     the run id; restarted after the daemon exited, an edge exits 0 at once;
#     a daemon restarted on the finished database says state=finished at once;
#     the same run raised to more rounds clears the marker.
#  3. A new run (new run id) clears the marker.
#  4. Polling fallback: the same edges against an aggregator with
#     --no-observe poll every --poll-ms and the run completes.
#  5. A peer that answers a registration with 4.02 Bad Option (a few lines of
#     Python here): the edge retries without Observe and goes on polling.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 3
FED_PORT=$(fed_free_port)
relay_port=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 3 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
poll=200
relay_pid=""
start_relay() { # STATS_FILE
    python3 tools/bench/udp_relay.py "$relay_port" "$FED_PORT" "$1" --coap &
    relay_pid=$!
    FED_PIDS+=("$relay_pid")
}
stop_relay() {
    kill -TERM "$relay_pid"
    wait "$relay_pid"
}
# count FILE KEY: that CoAP count summed over the relay's clients
count() {
    python3 -c "import json,sys; d=json.load(open(sys.argv[1]))['clients']
print(sum(c.get('coap', {}).get(sys.argv[2], 0) for c in d.values()))" "$1" "$2"
}
start_edges() { # EXTRA ARGS...
    local i
    for i in 1 2 3; do
        mkdir -p "$FED_DIR/state-$i"
        "$BIN/fedge-edge" --server "127.0.0.1:$relay_port" --id "dev-00$i" --keys "$(fed_edge_keys dev-00$i)" \
            --shard "$FED_DIR/shards/shard-00$((i - 1)).bin" --insecure --poll-ms "$poll" \
            --state-dir "$FED_DIR/state-$i" "$@" >>"$FED_DIR/edge-dev-00$i.log" 2>&1 &
        FED_PIDS+=("$!")
        FED_EDGE_PIDS+=("$!:dev-00$i")
    done
}
agg_args=(--insecure --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin"
    --round-timeout-s 30 --local-epochs 1 --batch 64)

# 1. Observe.
start_relay "$FED_DIR/relay-observe.json"
fed_start_aggregator "${agg_args[@]}" --rounds 3 --start-delay-s 4 --linger-s 1 --clients-per-round 2
t0=$(date +%s.%N)
start_edges
fed_wait_run 60 || fed_fail "the run with Observe failed"
t1=$(date +%s.%N)
stop_relay
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed' AND n_accepted=2")" = 3 ] ||
    fed_fail "3 rounds with 2 updates each expected: $(fed_sql "SELECT id, status, n_accepted FROM rounds")"
[ "$(fed_sql "SELECT count(*) FROM updates")" = 6 ] || fed_fail "an unselected device sent an update: $(fed_sql "SELECT round, device, decision FROM updates")"
[ "$(fed_sql "SELECT count(*) FROM updates u JOIN round_participants p ON p.round = u.round AND p.device = u.device")" = 6 ] ||
    fed_fail "updates from devices outside their round's participants"
for i in 1 2 3; do
    ! grep -q "outcome=rejected" "$FED_DIR/edge-dev-00$i.log" || fed_fail "dev-00$i: $(grep "outcome=rejected" "$FED_DIR/edge-dev-00$i.log")"
done
[ "$(cat "$FED_DIR"/edge-dev-00*.log | grep -c "outcome=accepted")" = 6 ] || fed_fail "6 accepted updates expected in the edges' logs"
for i in 1 2 3; do
    grep -q "GET /round: observing" "$FED_DIR/edge-dev-00$i.log" || fed_fail "dev-00$i did not observe /round"
done
obs_gets=$(( $(count "$FED_DIR/relay-observe.json" "GET /round observe") + $(count "$FED_DIR/relay-observe.json" "GET /round") ))
notes=$(count "$FED_DIR/relay-observe.json" notifications)
elapsed=$(python3 -c "print($t1 - $t0)")
# polling would send elapsed / 0.2 s per edge; Observe: 1 registration, one
# per fallback (2 s), one after a notification that could not be used
limit=$(python3 -c "print(int(3 * (2 + $elapsed / 2.0)))")
echo "observe: ${elapsed}s, GET /round $obs_gets (limit $limit, polling ~$(python3 -c "print(int(3 * $elapsed / 0.2))")), notifications $notes"
[ "$obs_gets" -le "$limit" ] || fed_fail "GET /round sent $obs_gets times with Observe (at most $limit expected)"
# each edge hears at least round 1 opening, round 2, round 3 and the finish
[ "$notes" -ge 9 ] || fed_fail "only $notes notifications reached the edges"

# 2. Finished stays finished.
run=$(fed_sql "SELECT value FROM meta WHERE key='run_id'")
for i in 1 2 3; do
    [ "$(cat "$FED_DIR/state-$i/dev-00$i.finished")" = "run=$run" ] ||
        fed_fail "dev-00$i: marker $(cat "$FED_DIR/state-$i/dev-00$i.finished" 2>&1), run $run expected"
done
s=$(date +%s.%N)
"$BIN/fedge-edge" --server "127.0.0.1:$FED_PORT" --id dev-001 --keys "$(fed_edge_keys dev-001)" \
    --shard "$FED_DIR/shards/shard-000.bin" --insecure --state-dir "$FED_DIR/state-1" --timeout-ms 2000 \
    >"$FED_DIR/edge-again.log" 2>&1 || fed_fail "restarted edge with a marker: exit $? ($(tail -2 "$FED_DIR/edge-again.log"))"
took=$(python3 -c "print(round($(date +%s.%N) - $s, 1))")
grep -q "unreachable .* finished" "$FED_DIR/edge-again.log" || fed_fail "restarted edge: $(cat "$FED_DIR/edge-again.log")"
python3 -c "import sys; sys.exit(not $took < 5)" || fed_fail "the restarted edge took ${took}s to exit"
echo "edge restarted with the marker, aggregator gone: exit 0 after ${took}s"
# the daemon restarted on the finished run's database: finished at once
fed_start_aggregator "${agg_args[@]}" --rounds 3 --linger-s 30
mkdir -p "$FED_DIR/state-x"
"$BIN/fedge-edge" --server "127.0.0.1:$FED_PORT" --id dev-002 --keys "$(fed_edge_keys dev-002)" \
    --shard "$FED_DIR/shards/shard-001.bin" --insecure --state-dir "$FED_DIR/state-x" \
    >"$FED_DIR/edge-restarted-agg.log" 2>&1 || fed_fail "edge against the restarted daemon failed"
grep -q "reports the run finished; 0 rounds" "$FED_DIR/edge-restarted-agg.log" ||
    fed_fail "restarted daemon: $(cat "$FED_DIR/edge-restarted-agg.log")"
[ "$(cat "$FED_DIR/state-x/dev-002.finished")" = "run=$run" ] || fed_fail "no marker from the restarted daemon"
kill "$FED_AGG_PID"
wait "$FED_AGG_PID"
# the same run raised to 4 rounds goes on: the marker goes
fed_start_aggregator "${agg_args[@]}" --rounds 4 --start-delay-s 60
"$BIN/fedge-edge" --server "127.0.0.1:$FED_PORT" --id dev-002 --keys "$(fed_edge_keys dev-002)" \
    --shard "$FED_DIR/shards/shard-001.bin" --insecure --state-dir "$FED_DIR/state-x" \
    >"$FED_DIR/edge-goes-on.log" 2>&1 &
goes_on=$!
FED_PIDS+=("$goes_on")
fed_wait_for "grep -q 'the run goes on: .*dev-002.finished removed' '$FED_DIR/edge-goes-on.log'" 10
[ ! -e "$FED_DIR/state-x/dev-002.finished" ] || fed_fail "the marker of a run that goes on is still there"
kill "$goes_on" "$FED_AGG_PID"
wait "$goes_on" "$FED_AGG_PID"

# 3 and 4. A new run (a fresh database) without Observe on the aggregator:
# the edges' markers name the old run, so they take part, and poll.
mv "$FED_DIR/fedge.db" "$FED_DIR/old.db"
rm -rf "$FED_DIR/models"
start_relay "$FED_DIR/relay-poll.json"
fed_start_aggregator "${agg_args[@]}" --rounds 1 --start-delay-s 4 --linger-s 1 --no-observe
# (an edge with a marker that finds no aggregator exits: wait until it listens)
fed_wait_for "[ \$(grep -c 'listening on' '$FED_DIR/agg.log') = 4 ]" 20
t0=$(date +%s.%N)
start_edges
fed_wait_run 60 || fed_fail "the polled run failed"
t1=$(date +%s.%N)
stop_relay
[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed' AND n_accepted=3")" = 1 ] ||
    fed_fail "the polled run: $(fed_sql "SELECT id, status, n_accepted FROM rounds")"
run2=$(fed_sql "SELECT value FROM meta WHERE key='run_id'")
[ "$run2" != "$run" ] || fed_fail "a new database should be a new run"
for i in 1 2 3; do
    grep -q "a new run: .*dev-00$i.finished removed" "$FED_DIR/edge-dev-00$i.log" ||
        fed_fail "dev-00$i did not clear the old run's marker"
    [ "$(cat "$FED_DIR/state-$i/dev-00$i.finished")" = "run=$run2" ] || fed_fail "dev-00$i: no marker for the new run"
    grep -q "does not push (no Observe); polling every $poll ms" "$FED_DIR/edge-dev-00$i.log" ||
        fed_fail "dev-00$i did not fall back to polling"
done
poll_gets=$(count "$FED_DIR/relay-poll.json" "GET /round observe")
notes=$(count "$FED_DIR/relay-poll.json" notifications)
elapsed=$(python3 -c "print($t1 - $t0)")
echo "polling: ${elapsed}s, GET /round $poll_gets, notifications $notes"
[ "$notes" = 0 ] || fed_fail "an aggregator with --no-observe sent $notes notifications"
# the 4 s start delay (less the daemon's own start-up) is over 6 polls per edge
[ "$poll_gets" -ge 18 ] || fed_fail "only $poll_gets GET /round while polling every $poll ms"

# 5. 4.02 to a registration; 2.05 state=finished to a plain GET.
fake_port=$(fed_free_port)
python3 - "$fake_port" "$FED_DIR/fake.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
log = open(sys.argv[2], "w", buffering=1)
log.write("listening\n")
while True:
    d, a = s.recvfrom(2048)
    if len(d) < 4 or d[0] >> 6 != 1 or (d[0] >> 4) & 3 != 0:
        continue
    tkl, i, num, observe = d[0] & 15, 4 + (d[0] & 15), 0, False
    while i < len(d) and d[i] != 0xFF:  # options (short forms are all the edge sends)
        delta, length = d[i] >> 4, d[i] & 15
        i += 1
        if delta == 13:
            delta, i = d[i] + 13, i + 1
        if length == 13:
            length, i = d[i] + 13, i + 1
        num += delta
        observe |= num == 6
        i += length
    head = bytes([0x60 | tkl]) + d[2:4] + d[4:4 + tkl]
    if observe:
        log.write("registration refused\n")
        s.sendto(head[:1] + bytes([0x82]) + head[1:], a)
    else:
        log.write("plain GET\n")
        s.sendto(head[:1] + bytes([0x45]) + head[1:] + b"\xffstate=finished\nrun=00112233445566778899aabbccddeeff\n", a)
PY
FED_PIDS+=("$!")
fed_wait_for "[ -s '$FED_DIR/fake.log' ]" 10
mkdir -p "$FED_DIR/state-fake"
"$BIN/fedge-edge" --server "127.0.0.1:$fake_port" --id dev-001 --keys "$(fed_edge_keys dev-001)" \
    --shard "$FED_DIR/shards/shard-000.bin" --insecure --state-dir "$FED_DIR/state-fake" \
    >"$FED_DIR/edge-fake.log" 2>&1 || fed_fail "edge against a peer refusing Observe: $(cat "$FED_DIR/edge-fake.log")"
grep -q "GET /round with Observe answered 4.02; polling without Observe" "$FED_DIR/edge-fake.log" &&
    grep -q "reports the run finished" "$FED_DIR/edge-fake.log" ||
    fed_fail "edge against a peer refusing Observe: $(cat "$FED_DIR/edge-fake.log")"
[ "$(cat "$FED_DIR/fake.log")" = "listening
registration refused
plain GET" ] || fed_fail "the fake peer saw: $(cat "$FED_DIR/fake.log")"
echo ok
