#!/usr/bin/env bash
# The edge's base file (<state_dir>/<id>.base, a heavy-ball round's base
# model while it trains; docs/EDGE.md "Memory"), against whoever else can
# write the state dir:
#  - round 1: the file is rewritten while the edge trains, other parameters
#    under the true header and a recomputed SHA-256 trailer: the parameters
#    do not hash to the round's model version, so the edge refuses the delta
#    (nothing sent; an error line naming the file) and stays for round 2;
#  - round 2: a symbolic link sits where the file goes: it is neither
#    followed (its target keeps its bytes) nor replaced, the write fails,
#    and the edge keeps the base in RAM for the round (the memory plan has
#    room), with a warning naming the file, and takes part.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
fed_setup 1
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 1 --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
mkdir -p "$FED_DIR/state"
base="$FED_DIR/state/dev-001.base"
printf 'precious data that is not the edge'"'"'s\n' >"$FED_DIR/victim"
cp "$FED_DIR/victim" "$FED_DIR/victim.orig"
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 2 \
    --round-timeout-s 4 --start-delay-s 1 --linger-s 1 --momentum 0.9 --local-epochs 3
# the forger: waits for round 1's base file, rewrites parameters (+1) and trailer in place
python3 - "$base" >"$FED_DIR/forger.log" 2>&1 <<'EOF' &
import hashlib, struct, sys, time
p = sys.argv[1]; end = time.time() + 30
while time.time() < end:
    try:
        b = open(p, "rb").read()
    except OSError:
        time.sleep(0.002); continue
    hl = 8 + 4 + 32 + 8
    if len(b) < hl + 32 or b[:8] != b"FEDGEBAS" or struct.unpack_from("<I", b, 8)[0] != 1:
        time.sleep(0.002); continue
    n = struct.unpack_from("<Q", b, 44)[0]
    if len(b) != hl + 4 * n + 32:
        time.sleep(0.002); continue
    body = b[:hl] + struct.pack("<%df" % n, *[x + 1.0 for x in struct.unpack_from("<%df" % n, b, hl)])
    with open(p, "r+b") as f:
        f.write(body + hashlib.sha256(body).digest())
    print("forged", n, "parameters", flush=True)
    break
EOF
forger=$!
FED_PIDS+=("$forger")
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin" --state-dir "$FED_DIR/state"
edge=${FED_EDGE_PIDS[0]%%:*}
log="$FED_DIR/edge-dev-001.log"
fed_wait_for "grep -qs 'round 1: the base model in .*dev-001.base failed its check' '$log'" 30 ||
    fed_fail "round 1: a forged base file not refused: $(grep -v DEBUG "$log" | grep 'round 1' | tail -2)"
grep -q "^forged" "$FED_DIR/forger.log" || fed_fail "the forger did not run: $(cat "$FED_DIR/forger.log")"
kill -0 "$edge" 2>/dev/null || fed_fail "the edge left after refusing a forged base"
ln -s "$FED_DIR/victim" "$base" # before round 2 (round 1 waits for its deadline)
fed_wait_run 30 || fed_fail "aggregator exited with an error"
grep -q "round 2: cannot write the base model to .*dev-001.base (.*); kept it in RAM this round" "$log" ||
    fed_fail "round 2: no fallback to RAM: $(grep -v DEBUG "$log" | grep 'round 2' | tail -2)"
cmp -s "$FED_DIR/victim" "$FED_DIR/victim.orig" || fed_fail "the link's target was overwritten"
[ -L "$base" ] || fed_fail "the link was replaced or removed"
rows=$(fed_sql "SELECT group_concat(round || ':' || decision) FROM updates")
[ "$rows" = "2:accepted" ] || fed_fail "expected only round 2's update, accepted: $rows"
for ((i = 0; i < 50; i++)); do kill -0 "$edge" 2>/dev/null || break; sleep 0.1; done
wait "$edge" || fed_fail "the edge exited with status $?"
echo ok
