#!/usr/bin/env bash
# tools/bench/dp_sweep.sh BUILD — accuracy against privacy cost.
# The demo pipeline (tools/demo.sh: real processes, DTLS, SQLite, audit) with
# 32 IID clients, 16 sampled per round (q = 0.5), softmax:784-10, 20 rounds,
# under DP-FedAvg with clip C and noise multiplier z from a policy file; z = 0
# is the baseline (same clipping and weighting, no noise: epsilon infinite),
# measured in the same run. Prints final accuracy and the RDP epsilon at
# delta = 1e-5 that the aggregator logged.
set -uo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
OUT=run/dp-sweep
mkdir -p "$OUT"
printf '%-8s %-8s %10s %12s\n' clip_C noise_z accuracy epsilon
for z in 0 0.5 1.0 2.0; do
    if [ "$z" = 0 ]; then
        printf 'version: 1\nname: clip-only\nupdate: {max_norm: 1.0, norm_action: clip}\n' >"$OUT/policy-$z.yaml"
    else
        printf 'version: 1\nname: dp-z%s\nprivacy:\n  enabled: true\n  clip_norm: 1.0\n  noise_multiplier: %s\n  epsilon_budget: 1000\n  delta: 1e-5\n' \
            "$z" "$z" >"$OUT/policy-$z.yaml"
    fi
    DEMO_DIR="$OUT/z$z" DEMO_CLIENTS=32 DEMO_PER_ROUND=16 DEMO_KIND=iid DEMO_SPEC=softmax:784-10 DEMO_EPOCHS=1 \
        DEMO_LR=0.05 DEMO_LR_DECAY=1 DEMO_TARGET=0 DEMO_PORT=$((5700 + ${z%%.*} * 10 + ${z##*.})) \
        DEMO_POLICY="$(pwd)/$OUT/policy-$z.yaml" tools/demo.sh "$BUILD" >"$OUT/z$z.log" 2>&1 ||
        { echo "run z=$z failed (see $OUT/z$z.log)"; continue; }
    db="$OUT/z$z/fedge.db"
    acc=$(sqlite3 "$db" "SELECT printf('%.4f', accuracy) FROM models ORDER BY rowid DESC LIMIT 1")
    eps=$(sqlite3 "$db" "SELECT CASE WHEN max(epsilon) IS NULL THEN 'inf' ELSE printf('%.3f', max(epsilon)) END FROM rounds WHERE status='closed'")
    printf '%-8s %-8s %10s %12s\n' 1.0 "$z" "$acc" "$eps"
done
