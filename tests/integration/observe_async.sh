#!/usr/bin/env bash
# Observe in async mode (FedBuff): 10 edges observe /round over plain CoAP
# through tools/bench/udp_relay.py --coap (which counts the server's
# notifications), 2 slots, a buffer of 2, 6 steps (the first after 3 s, so
# that every edge observes from the start). A device's own change
# (admitted, slot freed) is pushed to that device alone; only a new step (or
# the finish) goes to every observer. Asserts: the run completes with every
# update admitted and none refused (no edge is told selected=1 for an
# admission already used: 4.09), every edge hears at least the first step
# and the finish, and the notifications stay within 10 x (steps + 2) +
# 2 x admissions (notifying every observer on each admission and freed
# slot, as before, sends up to 6 x that many).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

N=10
fed_setup "$N"
FED_PORT=$(fed_free_port)
relay_port=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients "$N" --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
printf 'version: 1\nname: async\nupdate:\n  max_staleness: 3\n' >"$FED_DIR/policy.yaml"
python3 tools/bench/udp_relay.py "$relay_port" "$FED_PORT" "$FED_DIR/relay.json" --coap &
relay_pid=$!
FED_PIDS+=("$relay_pid")

fed_start_aggregator --insecure --mode async --async-concurrency 2 --async-buffer-k 2 \
    --policy-file "$FED_DIR/policy.yaml" --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" \
    --rounds 6 --start-delay-s 3 --local-epochs 1 --batch 64 --linger-s 1
for i in $(seq "$N"); do
    id=$(printf 'dev-%03d' "$i")
    "$BIN/fedge-edge" --server "127.0.0.1:$relay_port" --id "$id" --keys "$(fed_edge_keys "$id")" \
        --shard "$FED_DIR/shards/shard-$(printf '%03d' $((i - 1))).bin" --insecure --poll-ms 200 \
        >>"$FED_DIR/edge-$id.log" 2>&1 &
    FED_PIDS+=("$!")
    FED_EDGE_PIDS+=("$!:$id")
done
fed_wait_run 60 || fed_fail "the async run with Observe failed"
kill -TERM "$relay_pid"
wait "$relay_pid"

[ "$(fed_sql "SELECT count(*) FROM rounds WHERE status='closed' AND n_accepted=2")" = 6 ] ||
    fed_fail "6 steps of 2 updates expected: $(fed_sql "SELECT id, status, n_accepted FROM rounds")"
[ "$(fed_sql "SELECT count(*) FROM updates u LEFT JOIN round_participants p ON p.device=u.device
              AND p.round<=u.round WHERE p.device IS NULL")" = 0 ] || fed_fail "an update without an admission"
refused=$(cat "$FED_DIR"/edge-dev-*.log | grep -c "outcome=rejected")
[ "$refused" = 0 ] || fed_fail "refused updates: $(cat "$FED_DIR"/edge-dev-*.log | grep "outcome=rejected" | head -3)"
for i in $(seq "$N"); do
    grep -q "GET /round: observing" "$FED_DIR/edge-$(printf 'dev-%03d' "$i").log" || fed_fail "dev-$i did not observe"
done
per=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1]))['clients']
print(' '.join(str(c.get('coap', {}).get('notifications', 0)) for c in d.values()))" "$FED_DIR/relay.json")
notes=0
for k in $per; do
    notes=$((notes + k))
    [ "$k" -ge 2 ] || fed_fail "an edge heard $k notifications (per edge: $per); the first step and the finish expected"
done
steps=$(fed_sql "SELECT count(*) FROM rounds")
adm=$(fed_sql "SELECT count(*) FROM round_participants")
limit=$((N * (steps + 2) + 2 * adm))
echo "observe_async: $steps steps, $adm admissions, $notes notifications (per edge: $per; limit $limit)"
[ "$notes" -le "$limit" ] || fed_fail "$notes notifications for $adm admissions in $steps steps (at most $limit expected)"
echo ok
