#!/usr/bin/env bash
# The slow-link benchmark of issue 8: 3 edges, softmax:784-10, through
# tools/bench/udp_relay.py with LOSS (default 0.20) in each direction and
# DELAY_MS (default 200) one way; ROUNDS (default 5) rounds. Runs
# tests/integration/slow_link.sh with those settings and prints each round's
# time (the aggregator's opened_at -> closed_at) and the relay's counts.
#   FEDGE_BUILD=build/native ROUNDS=5 LOSS=0.20 DELAY_MS=200 tools/bench/slow_link.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
timing=$(mktemp)
trap 'rm -f "$timing"' EXIT
start=$(date +%s)
SLOW_LINK_ROUNDS=${ROUNDS:-5} SLOW_LINK_LOSS=${LOSS:-0.20} SLOW_LINK_DELAY_MS=${DELAY_MS:-200} \
    SLOW_LINK_ENCODING=${ENCODING:-fp16} SLOW_LINK_TIMING="$timing" \
    bash tests/integration/slow_link.sh
echo "wall time: $(($(date +%s) - start)) s (including the aggregator's 15 s linger)"
echo "round  seconds (open -> closed)"
grep -v '^{' "$timing" | tr '|' ' ' | awk '{printf "%5s  %s\n", $1, $2; s += $2; n++} END {if (n) printf "mean   %.1f\n", s / n}'
python3 - "$timing" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{"):
        d = json.loads(line)
        up = sum(c["up_bytes"] for c in d["clients"].values())
        down = sum(c["down_bytes"] for c in d["clients"].values())
        dg = sum(c["up_dgrams"] + c["down_dgrams"] for c in d["clients"].values())
        print(f"relay: {up} B up, {down} B down, {dg} datagrams, dropped {d['dropped']}")
PY
