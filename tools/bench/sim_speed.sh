#!/usr/bin/env bash
# tools/bench/sim_speed.sh [BUILD] — fedge-sim's speed against its clients'
# training (docs/SIM.md, docs/BENCHMARKS.md): a 10-party, 50-round
# Fashion-MNIST run (Dirichlet 0.5 shards, the demo's model and client
# settings), once on 1 thread and once on 2. Prints, per run: wall seconds,
# seconds per round, the clients' training seconds summed (measured around
# each client's training call in the same run), the overhead of everything
# else over that sum, and its two parts: the client batches beyond training
# (model load, sealing, shard open) and the aggregator core's calls (update
# checks, SQLite log, aggregation, evaluation on the 10,000-row test split).
# SIM_ROUNDS (50), SIM_SPEC (mlp:784-200-10) and SIM_EPOCHS (2) change it.
set -uo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
BIN="$BUILD/bin"
ROUNDS=${SIM_ROUNDS:-50} SPEC=${SIM_SPEC:-mlp:784-200-10} EPOCHS=${SIM_EPOCHS:-2}
[ -x "$BIN/fedge-sim" ] || { echo "build first: make (no $BIN/fedge-sim)"; exit 1; }
DIR=$(mktemp -d /tmp/fedge-simbench.XXXXXX)
trap 'rm -rf "$DIR"' EXIT
"$BIN/fedge-keygen" devices --count 10 --out "$DIR/keys" >/dev/null || exit 1
"$BIN/fedge-partition" --data fashion-mnist --clients 10 --kind dirichlet --beta 0.5 --seed 1 \
    --out "$DIR/shards" --test-out "$DIR/test.bin" >/dev/null || exit 1
echo "fedge-sim: 10 parties, $ROUNDS rounds, $SPEC, $EPOCHS local epochs, Dirichlet 0.5 shards"
printf '%-8s %9s %9s %10s %9s %12s %12s %9s\n' threads wall_s s/round train_s overhead batch_extra aggregator accuracy
for threads in 1 2; do
    mkdir -p "$DIR/t$threads"
    "$BIN/fedge-sim" --keys "$DIR/keys" --shards "$DIR/shards" --test-data "$DIR/test.bin" \
        --db "$DIR/t$threads/fedge.db" --model-dir "$DIR/t$threads/models" --model-spec "$SPEC" \
        --rounds "$ROUNDS" --local-epochs "$EPOCHS" --lr 0.02 --lr-decay 0.95 --momentum 0.9 \
        --threads "$threads" --json >"$DIR/t$threads.out" 2>"$DIR/t$threads.err" ||
        { tail -n 5 "$DIR/t$threads.err"; exit 1; }
    grep '"summary":true' "$DIR/t$threads.out" | python3 -c '
import json, sys
s = json.load(sys.stdin)
# overhead over the summed training is meaningful on one thread only: with
# more, the clients train side by side and their times overlap the wall time
one = s["threads"] == 1
print("%-8d %9.2f %9.3f %10.2f %9s %12s %11.2fs %9.4f" % (s["threads"], s["wall_s"], s["wall_s"] / s["rounds"],
      s["train_s"], "%.1f%%" % s["overhead_pct"] if one else "-",
      "%.2fs" % (s["batch_s"] - s["train_s"]) if one else "-", s["aggregator_s"], s["accuracy"]))'
done
m1=$(grep '"summary":true' "$DIR/t1.out" | sed 's/.*"model":"\([0-9a-f]*\)".*/\1/')
m2=$(grep '"summary":true' "$DIR/t2.out" | sed 's/.*"model":"\([0-9a-f]*\)".*/\1/')
echo "final model: ${m1:0:16} (1 thread), ${m2:0:16} (2 threads)$([ "$m1" = "$m2" ] && echo ', identical')"
