#!/usr/bin/env bash
# tools/bench/plan_accuracy.sh [BUILD] — the planner's predicted step time
# against the measured one, for every layout `fedge-cluster plan` lists.
#
# Runs `plan` once on NP ranks, then `refine` with each listed layout RUNS
# times (STEPS steps each, Fashion-MNIST rows), and prints per layout: the
# prediction, the mean step (seconds / steps, averaged over the runs), the
# fastest step (step_ms_min, fastest over the runs), both ratios, and how many
# layouts are within 20% by each; for pipelines also the stages' mean idle
# fraction, predicted (the plan's simulated schedule) and measured (the
# runs' `bubble`, averaged). For the pure data-parallel layout, each phase of
# the step as the planner predicts it (its `# terms` line) against the
# trainer's per-phase timers (phase_ms_min: each phase's fastest step, the
# fastest over the runs; phases sum to about the fastest step, and a phase's
# minimum is the figure least disturbed by other jobs). The load average is
# printed before and after: on a shared machine the measured figures are the
# machine's.
#
# Environment: NP (2), SPEC (mlp:784-512-512-256-10), BATCH (256), STEPS (100),
# RUNS (3), ROWS (10000), OUT (run/plan-accuracy).
set -uo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
BIN="$(pwd)/$BUILD/bin/fedge-cluster"
NP=${NP:-2}
SPEC=${SPEC:-mlp:784-512-512-256-10}
BATCH=${BATCH:-256}
STEPS=${STEPS:-100}
RUNS=${RUNS:-3}
ROWS=${ROWS:-10000}
OUT=${OUT:-run/plan-accuracy}
MPI=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader
     --mca btl_vader_single_copy_mechanism none --mca mpi_yield_when_idle 1)
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no $BIN (make build-all)" >&2; exit 2; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
field() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" "$2"; }

[ -f "$OUT/data.shard" ] || "$BIN" make-shard --fashion-mnist train --rows "$ROWS" \
    --out "$OUT/data.shard" >"$OUT/shard.log" 2>&1 ||
    { echo "make-shard failed (see $OUT/shard.log)" >&2; exit 1; }
"$BIN" init --spec "$SPEC" --seed 1 --out "$OUT/model.bin" >"$OUT/init.log" 2>&1 ||
    { echo "init failed (see $OUT/init.log)" >&2; exit 1; }

echo "# $SPEC, batch $BATCH, np $NP, $STEPS steps x $RUNS runs; load average before: $(load)"
t0=$(date +%s.%N)
"${MPI[@]}" -np "$NP" "$BIN" plan --spec "$SPEC" --batch "$BATCH" >"$OUT/plan.txt" 2>&1 ||
    { cat "$OUT/plan.txt" >&2; exit 1; }
t1=$(date +%s.%N)
grep '^# probes\|^# per element\|^# collectives\|^# oversubscribed\|^# data-parallel' "$OUT/plan.txt"
printf '# plan took %.2f s\n' "$(echo "$t1 - $t0" | bc -l)"
printf '%3s %3s %3s %5s %12s %9s %11s %10s %13s %11s %11s\n' dp tp pp micro predicted_ms mean_ms \
    fastest_ms mean/pred fastest/pred bubble_pred bubble_meas
n=0 in_mean=0 in_fast=0 phases=""
while read -r dp tp pp micro pred _ _ bub_pred _; do
    sum_mean=0 fast="" sum_bub=0
    for r in $(seq 1 "$RUNS"); do
        log="$OUT/dp$dp-tp$tp-pp$pp-m$micro-$r.json"
        "${MPI[@]}" -np "$NP" "$BIN" refine --model "$OUT/model.bin" --data "$OUT/data.shard" \
            --out "$OUT/o.bin" --steps "$STEPS" --batch "$BATCH" --tp "$tp" --pp "$pp" \
            --micro-batches "$micro" </dev/null >"$log" 2>&1 || { echo "refine failed: $log" >&2; continue 2; }
        s=$(field seconds "$log")
        f=$(field step_ms_min "$log")
        sum_mean=$(echo "$sum_mean + 1000 * $s / $STEPS" | bc -l)
        b=$(sed -n 's/.*"bubble":\[\([0-9.,]*\)\].*/\1/p' "$log" | tr ',' '\n' |
            awk '{s += $1; n++} END {printf "%.4f", n ? s / n : 0}')
        sum_bub=$(echo "$sum_bub + $b" | bc -l)
        if [ -z "$fast" ] || [ "$(echo "$f < $fast" | bc -l)" = 1 ]; then fast=$f; fi
    done
    if [ "$tp" = 1 ] && [ "$pp" = 1 ]; then
        # the fastest of each phase over the runs
        ph=$(for r in $(seq 1 "$RUNS"); do
                 sed -n 's/.*"phase_ms_min":{\([^}]*\)}.*/\1/p' "$OUT/dp$dp-tp$tp-pp$pp-m$micro-$r.json"
             done | tr ',' '\n' | tr -d '"' | awk -F: '{if (!($1 in m) || $2 < m[$1]) m[$1] = $2}
                 END {printf "%.3f %.3f %.3f %.3f %.3f %.3f", m["forward"], m["backward"],
                      m["grad_allreduce"], m["status"], m["update"], m["load"] + m["copy"]}')
        terms=$(awk -v d="$dp" '$1 == "#" && $2 == "terms" && $4 == d && $5 == 1 && $6 == 1 {
                 printf "%s %s %s %s %s %s", $8, $9, $10, $11, $12, $13}' "$OUT/plan.txt")
        phases="$terms|$ph"
    fi
    mean=$(echo "$sum_mean / $RUNS" | bc -l)
    rm=$(echo "$mean / $pred" | bc -l)
    rf=$(echo "$fast / $pred" | bc -l)
    n=$((n + 1))
    [ "$(echo "$rm >= 0.8 && $rm <= 1.2" | bc -l)" = 1 ] && in_mean=$((in_mean + 1))
    [ "$(echo "$rf >= 0.8 && $rf <= 1.2" | bc -l)" = 1 ] && in_fast=$((in_fast + 1))
    printf '%3d %3d %3d %5d %12.3f %9.3f %11.3f %10.2f %13.2f %11.3f %11.3f\n' "$dp" "$tp" "$pp" \
        "$micro" "$pred" "$mean" "$fast" "$rm" "$rf" "$bub_pred" "$(echo "$sum_bub / $RUNS" | bc -l)"
done < <(grep -E '^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ ' "$OUT/plan.txt")
echo "# within 20%: $in_mean of $n by the mean step, $in_fast of $n by the fastest step"
if [ -n "$phases" ]; then
    echo "# pure data parallelism, ms per step: predicted term vs measured phase (fastest)"
    printf '%-14s %10s %10s %8s\n' phase predicted measured ratio
    paste <(echo forward backward grad_allreduce status update load+copy | tr ' ' '\n') \
          <(echo "${phases%%|*}" | tr ' ' '\n') <(echo "${phases##*|}" | tr ' ' '\n') |
        awk '{printf "%-14s %10.3f %10.3f %8s\n", $1, $2, $3, ($2 > 0 ? sprintf("%.2f", $3 / $2) : "-")}'
fi
echo "# load average after: $(load)"
