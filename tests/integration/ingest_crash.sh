#!/usr/bin/env bash
# kill -9 the aggregator while the ingest pool commits groups of updates
# (docs/AGGREGATOR.md "Ingest"): 60 devices send one update each at once
# (commit_group 8, commit_wait_ms 20, so groups form); once some devices
# have heard 2.04 the daemon is killed, restarted on the same database, and
# every device sends the same frame again. Asserts: every device that heard
# 2.04 before the kill has its accepted row (nothing answered was lost);
# after the resends every device has exactly one accepted row and the
# updates table nothing else (nothing counted twice; a resend of a
# committed frame is answered as a duplicate); the audit chain verifies.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

N=60
fed_setup $N
FED_PORT=$(fed_free_port)
DRIVER="$BIN/bench-ingest_rate"
[ -x "$DRIVER" ] || DRIVER=build/native/bin/bench-ingest_rate # an ASan build has no bench programs
[ -x "$DRIVER" ] || fed_fail "bench-ingest_rate is not built"
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 1 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
args=(--model-spec mlp:784-200-10 --test-data "$FED_DIR/test.bin" --rounds 1 --round-timeout-s 120
      --linger-s 30 --ingest-workers 2 --commit-group 8 --commit-wait-ms 20)
fed_start_aggregator "${args[@]}"
fed_wait_for "grep -qs 'round 1 open' $FED_DIR/agg.log" 30

"$DRIVER" --server "127.0.0.1:$FED_PORT" --keys "$FED_DIR/keys" --n $N --answers "$FED_DIR/answers1" \
    --timeout-s 20 >"$FED_DIR/driver1.log" 2>&1 &
drv=$!
FED_PIDS+=("$drv")
told() { local n; n=$(grep -c ' 204$' "$FED_DIR/answers1" 2>/dev/null); echo "${n:-0}"; }
for _ in $(seq 3000); do [ "$(told)" -ge 3 ] && break; sleep 0.01; done
kill -9 "$FED_AGG_PID"
wait "$FED_AGG_PID" 2>/dev/null
sleep 0.3 # the last answers in flight
told=$(told)
stored=$(fed_sql "SELECT count(*) FROM updates WHERE decision='accepted'")
echo "killed with $told devices told 2.04, $stored accepted rows"
[ "$told" -lt $N ] || fed_fail "the kill came after the whole burst: nothing was in flight"
while read -r dev code; do
    [ "$code" = 204 ] || continue
    [ "$(fed_sql "SELECT count(*) FROM updates WHERE device='$dev' AND decision='accepted'")" = 1 ] ||
        fed_fail "$dev was told 2.04 but its update is not in the log"
done <"$FED_DIR/answers1"
kill "$drv" 2>/dev/null
wait "$drv" 2>/dev/null

fed_start_aggregator "${args[@]}"
fed_wait_for '[ "$(grep -c "listening on" "$FED_DIR/agg.log")" -ge 2 ]' 30
"$DRIVER" --server "127.0.0.1:$FED_PORT" --keys "$FED_DIR/keys" --n $N --answers "$FED_DIR/answers2" \
    --timeout-s 30 >"$FED_DIR/driver2.log" 2>&1 || { cat "$FED_DIR/driver2.log" >&2; fed_fail "the resends did not all get 2.04"; }
[ "$(fed_sql "SELECT count(*) FROM updates")" = $N ] || fed_fail "$N rows expected, got $(fed_sql "SELECT count(*) FROM updates")"
[ "$(fed_sql "SELECT count(DISTINCT device) FROM updates WHERE decision='accepted'")" = $N ] || fed_fail "one accepted row per device"
fed_wait_for "grep -qs 'round 1 closed: $N accepted' $FED_DIR/agg.log" 30
kill "$FED_AGG_PID"; wait "$FED_AGG_PID" 2>/dev/null
"$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify >/dev/null || fed_fail "audit verify"
echo ok
