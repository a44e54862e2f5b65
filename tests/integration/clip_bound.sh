#!/usr/bin/env bash
# clip_bound.sh — a clipped update's norm never passes the bound (DP's
# sensitivity; review18 F2: scaling by float(bound / norm) left it a few ulps
# over). Run 1: 9 devices send one int8 mlp:784-64-10 update each over real
# DTLS, no policy; every stored norm equals its body's norm bit for bit.
# Run 2: the same updates under update.max_norm = the second smallest norm
# (norm_action clip): the two at or under it stored as sent, the others
# clipped to fp32 bodies of run 1's values times one float factor, each with
# a norm <= the bound (tests/lib/clip_check.py); verify passes on both logs.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
N=9
fed_setup $N
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 1 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
one_run() { # name, extra aggregator args...
    local name=$1
    shift
    FED_PORT=$(fed_free_port)
    rm -rf "$FED_DIR/models" "$FED_DIR/fedge.db"*
    : >"$FED_DIR/agg.log"
    fed_start_aggregator --model-spec mlp:784-64-10 --test-data "$FED_DIR/test.bin" --rounds 1 \
        --round-timeout-s 60 --linger-s 30 --ingest-workers 2 --commit-group 8 "$@"
    fed_wait_for "grep -qs 'round 1 open' $FED_DIR/agg.log" 30
    "$BIN/bench-ingest_rate" --server "127.0.0.1:$FED_PORT" --keys "$FED_DIR/keys" --n $N --status 1 \
        --timeout-s 30 >"$FED_DIR/driver-$name.log" 2>&1 ||
        { cat "$FED_DIR/driver-$name.log" >&2; fed_fail "driver ($name)"; }
    fed_wait_for "grep -qs 'round 1 closed' $FED_DIR/agg.log" 30
    kill "$FED_AGG_PID"
    wait "$FED_AGG_PID" 2>/dev/null
    "$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub" verify \
        >"$FED_DIR/verify-$name.log" 2>&1 || { cat "$FED_DIR/verify-$name.log"; fed_fail "verify ($name)"; }
    mv "$FED_DIR/fedge.db" "$FED_DIR/$name.db"
}
one_run run1
python3 tests/lib/clip_check.py norms "$FED_DIR/run1.db" >"$FED_DIR/norms" ||
    { cat "$FED_DIR/norms"; fed_fail "stored norms"; }
B=$(sort -k2 -g "$FED_DIR/norms" | sed -n 2p | cut -d' ' -f2)
printf 'name: clip_bound\nupdate:\n  max_norm: %s\n  norm_action: clip\n' "$B" >"$FED_DIR/policy.yaml"
one_run run2 --policy-file "$FED_DIR/policy.yaml"
python3 tests/lib/clip_check.py clips "$FED_DIR/run1.db" "$FED_DIR/run2.db" "$B" ||
    fed_fail "a clipped update is over its bound or not one scaling of what was sent"
echo "PASS: clip_bound"
