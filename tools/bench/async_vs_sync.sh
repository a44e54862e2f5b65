#!/usr/bin/env bash
# tools/bench/async_vs_sync.sh [BUILD] — synchronous rounds against FedBuff
# (mode = async) on the same data, through fedge-sim (docs/SIM.md): N devices
# (ASYNC_DEVICES, default 100), Fashion-MNIST Dirichlet 0.5, mlp:784-64-10,
# 30% stragglers (+5 virtual seconds), 10% dropout, policy max_staleness 4.
# Sync: N/10 clients per round, 10 s deadline, 30 rounds. Async: concurrency
# N/5, buffer K = N/10, at most 5 versions in flight, 10 s slots, 120 steps.
# Prints test accuracy at virtual-time marks, then each run's totals.
set -uo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
B="$BUILD/bin"
N=${ASYNC_DEVICES:-100}
[ -x "$B/fedge-sim" ] || { echo "build first: make (no $B/fedge-sim)"; exit 1; }
D=$(mktemp -d /tmp/fedge-async.XXXXXX)
trap 'rm -rf "$D"' EXIT
mkdir -p "$D/sync" "$D/async"
"$B/fedge-keygen" devices --count "$N" --prefix dev- --out "$D/keys" >/dev/null || exit 1
"$B/fedge-partition" --data fashion-mnist --clients "$N" --kind dirichlet --beta 0.5 --seed 3 \
    --out "$D/shards" --test-out "$D/test.bin" >/dev/null || exit 1
printf 'version: 1\nupdate:\n  max_staleness: 4\n' >"$D/policy.yaml"
common=(--keys "$D/keys" --shards "$D/shards" --test-data "$D/test.bin" --policy-file "$D/policy.yaml"
        --model-spec mlp:784-64-10 --threads 2 --seed 1 --stragglers 0.3 --straggler-factor 1
        --straggler-delay 5 --dropout 0.1 --json --lr 0.05)
t0=$(date +%s.%N)
"$B/fedge-sim" "${common[@]}" --db "$D/sync/fedge.db" --model-dir "$D/sync/models" --rounds 30 \
    --clients-per-round $((N / 10)) --round-timeout-s 10 >"$D/sync.out" || exit 1
t1=$(date +%s.%N)
"$B/fedge-sim" "${common[@]}" --db "$D/async/fedge.db" --model-dir "$D/async/models" --rounds 120 \
    --mode async --async-concurrency $((N / 5)) --async-buffer-k $((N / 10)) --async-max-versions 5 \
    --async-slot-timeout-s 10 >"$D/async.out" || exit 1
t2=$(date +%s.%N)
python3 - "$D/sync.out" "$D/async.out" "$N" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" <<'PY'
import json, sys
runs = []
for path in sys.argv[1:3]:
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    runs.append(([r for r in rows if not r.get("summary")], [r for r in rows if r.get("summary")][-1]))
print("%s devices: test accuracy at virtual time (last closed round or step at or before it)" % sys.argv[3])
print("%-10s %8s %8s" % ("virtual_s", "sync", "async"))
for mark in (10, 25, 50, 100, 200):
    cells = []
    for rows, _ in runs:
        done = [r for r in rows if r.get("accuracy") is not None and r["virtual_s"] <= mark]
        cells.append("%.3f" % done[-1]["accuracy"] if done else "-")
    print("%-10d %8s %8s" % (mark, cells[0], cells[1]))
for name, (rows, s), wall in zip(("sync", "async"), runs, sys.argv[4:6]):
    print("%-6s %4d rounds/steps, accuracy %.4f, virtual %.0f s, wall %.1f s" %
          (name, len(rows), s["accuracy"], s["virtual_s"], float(wall)))
PY
