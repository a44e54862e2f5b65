#!/usr/bin/env bash
# Hostile /round answers (issue 12, review16), against a plain-CoAP stand-in
# (edge_hostile_round.py): a 1,200-byte reply without Block2, which libcoap
# discards, is reported as discarded (not as no answer) within --timeout-ms
# (not RFC 7252's default ~29 s); an Observe notification carrying only the
# first block of a longer body is no error: the edge fetches /round with GET.
set -uo pipefail
cd "$(dirname "$0")/../.."
FEDGE_BUILD=${FEDGE_BUILD:-build/native}
. tests/lib/fed.sh
fed_setup 1
"$BIN/fedge-partition" --data fashion-mnist --clients 500 --kind iid --seed 7 --out "$FED_DIR/shards" >/dev/null ||
    fed_fail "partition"
keys=$(fed_edge_keys dev-001) || exit 1
run() { # MODE SECONDS EDGE-ARGS...
    local mode=$1 secs=$2 port
    shift 2
    port=$(fed_free_port)
    python3 tests/integration/edge_hostile_round.py "$port" "$mode" "$secs" >"$FED_DIR/fake-$mode.log" 2>&1 &
    FED_PIDS+=("$!")
    sleep 0.2
    timeout -s INT "$secs" "$BIN/fedge-edge" --insecure --server "127.0.0.1:$port" --id dev-001 --keys "$keys" \
        --shard "$FED_DIR/shards/shard-000.bin" --max-rounds 1 --poll-ms 200 --log-level debug "$@" \
        >"$FED_DIR/edge-$mode.log" 2>&1
}
t0=$(date +%s%N)
run round_big 6 --timeout-ms 1000 --max-retries 0 --no-observe
rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
log="$FED_DIR/edge-round_big.log"
[ "$rc" = 1 ] || fed_fail "round_big: the edge exited $rc (1 expected: the aggregator's answers are unusable): $(tail -n 3 "$log")"
grep -q 'GET /round: no usable answer within 1000 ms: 1 reply discarded by libcoap as larger than' "$log" ||
    fed_fail "round_big: the discarded reply is not named: $(grep -m2 'WARN\|ERROR' "$log")"
[ "$ms" -lt 4000 ] || fed_fail "round_big: ${ms} ms, not within --timeout-ms 1000 (one attempt)"
run observe_block 5
rc=$?
log="$FED_DIR/edge-observe_block.log"
[ "$rc" = 0 ] || fed_fail "observe_block: the edge exited $rc: $(tail -n 3 "$log")"
grep -q 'the body is longer than one message; fetching it with GET' "$log" &&
    grep -q 'aggregator reports the run finished' "$log" ||
    fed_fail "observe_block: the longer notification was not fetched with GET: $(grep 'round' "$log" | tail -n 4)"
! grep -q 'ERROR\|exceeds 4096' "$log" || fed_fail "observe_block: an error logged: $(grep -m1 'ERROR' "$log")"
[ "$(grep -c '^REQ round' "$FED_DIR/fake-observe_block.log")" -ge 2 ] || fed_fail "observe_block: no GET /round after the notification"
echo "ok: round_big refused in ${ms} ms as discarded; a Block2 notification fetched with GET"
