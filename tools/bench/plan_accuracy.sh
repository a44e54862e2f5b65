#!/usr/bin/env bash
# tools/bench/plan_accuracy.sh [BUILD] — the planner's predicted step time
# against the measured one, for every layout `fedge-cluster plan` lists.
#
# Runs `plan` PLANS times back to back on NP ranks (the prediction of a
# layout is the median over them; its spread, (max - min) / median, shows how
# steady the probes are), then `refine` with each listed layout RUNS times
# (STEPS steps each, Fashion-MNIST rows), and prints per layout: the
# prediction, the mean step (seconds / steps, averaged over the runs), the
# fastest step (step_ms_min, fastest over the runs), their ratios and that of
# the mean of the steps after the first (step_ms_first taken out), and how many
# layouts are within 20% by each; for pipelines also the stages' mean idle
# fraction, predicted (the plan's simulated schedule) and measured (the
# runs' `bubble`, averaged). Then, per layout, each phase of the step as the
# planner predicts it (its `# terms` lines, the median over the plans)
# against the trainer's per-phase timers: fastest (phase_ms_min, the fastest
# over the runs: the figure least disturbed by other jobs) and mean
# (phase_ms, averaged over the runs). compute is forward + backward on the
# data-parallel path, the pipeline (first forward to last backward, TP
# allreduces and messages in it) on the model-parallel one. The load average is
# printed before and after: on a shared machine the measured figures are the
# machine's.
#
# With BASE (another build folder, e.g. one of main) the baseline's planner
# is run too, its plans interleaved with this build's (plan 1, base plan 1,
# plan 2, ...), and its predictions are set against the same measured runs
# in a last table (`# baseline ...`): the two planners compared in the same
# period, on the same runs, on a machine whose load moves.
#
# With INTERLEAVE=1, plan r is run just before run r of every layout (the
# layouts: those plan 1 lists as fitting) instead of all plans first: this
# machine's speed drifts ~20% over minutes (docs/BENCHMARKS.md), and plans
# first then runs turns a drift into a one-sided error.
#
# Environment: NP (2), SPEC (mlp:784-512-512-256-10), BATCH (256), STEPS (100),
# RUNS (3), PLANS (3), ROWS (10000), OUT (run/plan-accuracy), BASE (none),
# INTERLEAVE (0), MPI_EXTRA (more mpirun options for every plan and run, e.g.
# "--rankfile FILE": with more ranks than cores, which ranks share a core
# sets the step time; unbound, the OS moves them between such placements).
set -uo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
BIN="$(pwd)/$BUILD/bin/fedge-cluster"
NP=${NP:-2}
SPEC=${SPEC:-mlp:784-512-512-256-10}
BATCH=${BATCH:-256}
STEPS=${STEPS:-100}
RUNS=${RUNS:-3}
PLANS=${PLANS:-3}
ROWS=${ROWS:-10000}
OUT=${OUT:-run/plan-accuracy}
BASE=${BASE:-}
BASE_BIN=${BASE:+$(pwd)/$BASE/bin/fedge-cluster}
MPI=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader
     --mca btl_vader_single_copy_mechanism none --mca mpi_yield_when_idle 1)
# shellcheck disable=SC2206 # MPI_EXTRA: more mpirun options, e.g. a rankfile binding
[ -n "${MPI_EXTRA:-}" ] && MPI+=($MPI_EXTRA)
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no $BIN (make build-all)" >&2; exit 2; }
[ -z "$BASE" ] || [ -x "$BASE_BIN" ] || { echo "no $BASE_BIN (BASE)" >&2; exit 2; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
field() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" "$2"; }

[ -f "$OUT/data.shard" ] || "$BIN" make-shard --fashion-mnist train --rows "$ROWS" \
    --out "$OUT/data.shard" >"$OUT/shard.log" 2>&1 ||
    { echo "make-shard failed (see $OUT/shard.log)" >&2; exit 1; }
"$BIN" init --spec "$SPEC" --seed 1 --out "$OUT/model.bin" >"$OUT/init.log" 2>&1 ||
    { echo "init failed (see $OUT/init.log)" >&2; exit 1; }

echo "# $SPEC, batch $BATCH, np $NP, $STEPS steps x $RUNS runs, $PLANS plans; load average before: $(load)"
plan_one() { # p: plan p (and the baseline's plan p)
    local p=$1 t0 t1 t2
    t0=$(date +%s.%N)
    "${MPI[@]}" -np "$NP" "$BIN" plan --spec "$SPEC" --batch "$BATCH" >"$OUT/plan-$p.txt" 2>&1 ||
        { cat "$OUT/plan-$p.txt" >&2; exit 1; }
    t1=$(date +%s.%N)
    printf '# plan %d took %.2f s, load %s\n' "$p" "$(echo "$t1 - $t0" | bc -l)" "$(load)"
    [ -n "$BASE" ] || return 0
    "${MPI[@]}" -np "$NP" "$BASE_BIN" plan --spec "$SPEC" --batch "$BATCH" >"$OUT/base-plan-$p.txt" 2>&1 ||
        { cat "$OUT/base-plan-$p.txt" >&2; exit 1; }
    t2=$(date +%s.%N)
    printf '# baseline plan %d took %.2f s, load %s\n' "$p" "$(echo "$t2 - $t1" | bc -l)" "$(load)"
}
run_one() { # dp tp pp micro r: refine with that layout, its summary in $OUT/dpD-tpT-ppP-mM-R.json
    "${MPI[@]}" -np "$NP" "$BIN" refine --model "$OUT/model.bin" --data "$OUT/data.shard" \
        --out "$OUT/o.bin" --steps "$STEPS" --batch "$BATCH" --tp "$2" --pp "$3" \
        --micro-batches "$4" </dev/null >"$OUT/dp$1-tp$2-pp$3-m$4-$5.json" 2>&1
}
rm -f "$OUT"/plan-*.txt "$OUT"/base-plan-*.txt "$OUT"/dp*-tp*-pp*-m*-*.json
if [ "${INTERLEAVE:-0}" = 1 ]; then
    # plan r, then run r of every layout: a machine whose speed drifts over
    # minutes moves the predictions and the runs alike
    plan_one 1
    grep -E '^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ .* yes( |$)' "$OUT/plan-1.txt" |
        awk '{ print $1, $2, $3, $4 }' >"$OUT/run-list.txt"
    for r in $(seq 1 "$RUNS"); do
        [ "$r" -gt 1 ] && [ "$r" -le "$PLANS" ] && plan_one "$r"
        while read -r dp tp pp micro; do
            run_one "$dp" "$tp" "$pp" "$micro" "$r" || echo "refine failed: $OUT/dp$dp-tp$tp-pp$pp-m$micro-$r.json" >&2
        done <"$OUT/run-list.txt"
    done
    for p in $(seq $((RUNS + 1)) "$PLANS"); do plan_one "$p"; done
else
    for p in $(seq 1 "$PLANS"); do plan_one "$p"; done
fi
cp "$OUT/plan-1.txt" "$OUT/plan.txt"
grep '^# probes\|^# per element\|^# collectives\|^# oversubscribed\|^# data-parallel' \
    "$OUT/plan-1.txt"
# per layout over the plans: median prediction, spread, median of each term, bubble, note
layouts() { awk '
    /^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ / { k = $1 " " $2 " " $3 " " $4
        if (!(k in seen)) { seen[k] = 1; order[++n] = k }
        pred[k] = pred[k] " " $5; bub[k] = bub[k] " " $8
        note[k] = ($0 ~ /trial steps/) ? "trial" : ($0 ~ /unverified/) ? "unverified" : "-" }
    $1 == "#" && $2 == "terms" && $4 ~ /^[0-9]+$/ { k = $4 " " $5 " " $6 " " $7
        for (i = 8; i <= 15; i++) term[k, i] = term[k, i] " " $i }
    function med(s,   a, m, i, j, t) { m = split(s, a, " ")
        for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j] + 0 < a[j - 1] + 0; j--) {
            t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
    function spread(s,   a, m, i, lo, hi) { m = split(s, a, " "); lo = hi = a[1]
        for (i = 2; i <= m; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
        return med(s) > 0 ? (hi - lo) / med(s) : 0 }
    END { for (i = 1; i <= n; i++) { k = order[i]; printf "%s %.3f %.4f %.3f %s", k, med(pred[k]),
              spread(pred[k]), med(bub[k]), note[k]
              for (j = 8; j <= 15; j++) printf " %.3f", med(term[k, j]); printf "\n" } }
' "$@" | sort -k5,5g; }
layouts "$OUT"/plan-*.txt >"$OUT/layouts.txt"
printf '%3s %3s %3s %5s %12s %7s %9s %11s %10s %13s %10s %11s %11s %s\n' dp tp pp micro predicted_ms \
    spread mean_ms fastest_ms mean/pred fastest/pred later/pred bubble_pred bubble_meas note
n=0 in_mean=0 in_fast=0 in_later=0 max_spread=0
: >"$OUT/phases.txt"
: >"$OUT/measured.txt"
while read -r dp tp pp micro pred spr bub_pred note t_f t_b t_ar t_st t_up t_ld t_pipe t_lt; do
    sum_mean=0 fast="" sum_bub=0 sum_later=0
    for r in $(seq 1 "$RUNS"); do
        log="$OUT/dp$dp-tp$tp-pp$pp-m$micro-$r.json"
        if [ "${INTERLEAVE:-0}" != 1 ]; then
            run_one "$dp" "$tp" "$pp" "$micro" "$r" || { echo "refine failed: $log" >&2; continue 2; }
        fi
        grep -q '"seconds":' "$log" 2>/dev/null || { echo "refine failed: $log" >&2; continue 2; }
        s=$(field seconds "$log")
        f=$(field step_ms_min "$log")
        sum_mean=$(echo "$sum_mean + 1000 * $s / $STEPS" | bc -l)
        first=$(field step_ms_first "$log")
        sum_later=$(echo "$sum_later + (1000 * $s - ${first:-0}) / ($STEPS - 1)" | bc -l)
        b=$(sed -n 's/.*"bubble":\[\([0-9.,]*\)\].*/\1/p' "$log" | tr ',' '\n' |
            awk '{s += $1; n++} END {printf "%.4f", n ? s / n : 0}')
        sum_bub=$(echo "$sum_bub + $b" | bc -l)
        if [ -z "$fast" ] || [ "$(echo "$f < $fast" | bc -l)" = 1 ]; then fast=$f; fi
    done
    # each phase: the fastest over the runs (of phase_ms_min) and the mean (of phase_ms)
    ph=$(for r in $(seq 1 "$RUNS"); do
             f="$OUT/dp$dp-tp$tp-pp$pp-m$micro-$r.json"
             sed -n 's/.*"phase_ms":{\([^}]*\)}.*/\1/p' "$f" | tr ',' '\n' | sed 's/^/mean /'
             sed -n 's/.*"phase_ms_min":{\([^}]*\)}.*/\1/p' "$f" | tr ',' '\n' | sed 's/^/min /'
         done | tr -d '"' | tr ':' ' ' | awk -v runs="$RUNS" '
             $1 == "mean" { s[$2] += $3 / runs }
             $1 == "min" { if (!($2 in m) || $3 < m[$2]) m[$2] = $3 }
             END { printf "%.3f %.3f %.3f %.3f %.3f %.3f %.3f %.3f %.3f %.3f",
                   m["forward"] + m["backward"] + m["pipeline"], s["forward"] + s["backward"] + s["pipeline"],
                   m["grad_allreduce"], s["grad_allreduce"], m["status"], s["status"],
                   m["update"], s["update"], m["load"] + m["copy"], s["load"] + s["copy"] }')
    if [ "$tp" = 1 ] && [ "$pp" = 1 ] && [ "$micro" = 1 ]; then comp=$(echo "$t_f + $t_b" | bc -l); else comp=$t_pipe; fi
    echo "$dp $tp $pp $micro $comp $t_ar $t_st $t_up $t_ld $ph $t_lt" >>"$OUT/phases.txt"
    mean=$(echo "$sum_mean / $RUNS" | bc -l)
    rm=$(echo "$mean / $pred" | bc -l)
    rf=$(echo "$fast / $pred" | bc -l)
    rl=$(echo "$sum_later / $RUNS / $pred" | bc -l)
    echo "$dp $tp $pp $micro $mean $(echo "$sum_later / $RUNS" | bc -l)" >>"$OUT/measured.txt"
    n=$((n + 1))
    [ "$(echo "$rl >= 0.8 && $rl <= 1.2" | bc -l)" = 1 ] && in_later=$((in_later + 1))
    [ "$(echo "$rm >= 0.8 && $rm <= 1.2" | bc -l)" = 1 ] && in_mean=$((in_mean + 1))
    [ "$(echo "$rf >= 0.8 && $rf <= 1.2" | bc -l)" = 1 ] && in_fast=$((in_fast + 1))
    [ "$(echo "$spr > $max_spread" | bc -l)" = 1 ] && max_spread=$spr
    printf '%3d %3d %3d %5d %12.3f %6.1f%% %9.3f %11.3f %10.2f %13.2f %10.2f %11.3f %11.3f %s\n' "$dp" \
        "$tp" "$pp" "$micro" "$pred" "$(echo "100 * $spr" | bc -l)" "$mean" "$fast" "$rm" "$rf" "$rl" "$bub_pred" \
        "$(echo "$sum_bub / $RUNS" | bc -l)" "$note"
done <"$OUT/layouts.txt"
echo "# within 20%: $in_mean of $n by the mean step, $in_fast of $n by the fastest step, $in_later of $n by the mean of steps 2..$STEPS"
echo "# (later/pred: the mean step without the run's first, step_ms_first: buffers first touched, first batch unprefetched)"
printf '# predictions over %d plans: largest spread (max - min) / median %.1f%%\n' "$PLANS" \
    "$(echo "100 * $max_spread" | bc -l)"
echo "# phases, ms per step: predicted / measured fastest / measured mean (compute: forward + backward,"
echo "# or the pipeline); loader: the loader threads' reading charged to the step when no core is spare"
echo "# (predicted only: the trainer's load phase times the wait for the batch, the thread's work"
echo "# shows in the other phases)"
printf '%3s %3s %3s %5s %23s %23s %23s %23s %23s %7s\n' dp tp pp micro compute grad_allreduce status update \
    load+copy loader
awk '{ printf "%3d %3d %3d %5d", $1, $2, $3, $4
       for (i = 0; i < 5; i++) printf " %7.3f/%7.3f/%7.3f", $(5 + i), $(10 + 2 * i), $(11 + 2 * i)
       printf " %7.3f\n", $20 }' "$OUT/phases.txt"
if [ -n "$BASE" ]; then
    layouts "$OUT"/base-plan-*.txt >"$OUT/base-layouts.txt"
    echo "# baseline ($BASE) predictions, its $PLANS plans interleaved with these, against the same runs:"
    printf '%3s %3s %3s %5s %12s %7s %9s %10s %10s %s\n' dp tp pp micro predicted_ms spread mean_ms \
        mean/pred later/pred note
    awk 'NR == FNR { m[$1 " " $2 " " $3 " " $4] = $5 " " $6; next }
         { k = $1 " " $2 " " $3 " " $4; if (!(k in m)) next; split(m[k], v, " ")
           n++; rm = v[1] / $5; rl = v[2] / $5; if (rm >= 0.8 && rm <= 1.2) im++
           if (rl >= 0.8 && rl <= 1.2) il++; if ($6 > sp) sp = $6
           printf "%3d %3d %3d %5d %12.3f %6.1f%% %9.3f %10.2f %10.2f %s\n", $1, $2, $3, $4, $5,
                  100 * $6, v[1], rm, rl, $8 }
         END { printf "# baseline within 20%%: %d of %d by the mean step, %d of %d by the mean of steps 2..N; " \
                      "largest spread %.1f%%\n", im, n, il, n, 100 * sp }' "$OUT/measured.txt" "$OUT/base-layouts.txt"
fi
echo "# load average after: $(load)"
