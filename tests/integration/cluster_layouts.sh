#!/usr/bin/env bash
# Cluster layouts, CPU backend: data, tensor and pipeline parallelism and
# their compositions (np up to 4, and the 2x2x2 grid on 8 oversubscribed
# ranks) each give the parameters of single-process training on the same
# global batches; a checkpoint written under one layout resumes under
# another; a per-rank memory budget refuses pure DP and admits TP; linear lr
# scaling with warm-up matches the reference with the same schedule; bad
# layouts are refused with their reason; a model with an odd number of
# layers trains with its last layer split (softmax over split logits).
# The GPU path of TP/PP is checked by tools/gpu-check.sh on a lent GPU.
set -euo pipefail
CLUSTER_TAG=layouts
. "$(dirname "$0")/../lib/cluster.sh"
cluster_train_shard 2000
# four dense layers: two TP pairs, and up to four pipeline stages
"$CL" init --spec mlp:784-64-64-32-10 --seed 3 --out "$T/m0.bin" >/dev/null
COMMON=(--model "$T/m0.bin" --data "$T/train.shard" --steps 20 --batch 64 --lr 0.05
        --momentum 0.9 --weight-decay 0.0001 --seed 9)

cluster_reference

grid_is() { # NAME DP TP PP
    grep -q "\"dp\":$2,\"tp\":$3,\"pp\":$4," "$T/$1.json" \
        || fail "$1: grid is not ${2}x${3}x${4}: $(cat "$T/$1.json")"
}

cluster_equivalent dp2 2
cluster_equivalent tp2 2 --tp 2
grid_is tp2 1 2 1
# pure DP times its step's phases (the planner's terms are set against them)
for ph in load copy forward backward grad_allreduce status update; do
    v=$(sed -n "s/.*\"phase_ms_min\":{[^}]*\"$ph\":\([0-9.]*\).*/\1/p" "$T/dp2.json")
    [ -n "$v" ] || fail "dp2: no phase $ph: $(cat "$T/dp2.json")"
done
fwd=$(sed -n 's/.*"phase_ms":{[^}]*"forward":\([0-9.]*\).*/\1/p' "$T/dp2.json")
awk -v f="$fwd" 'BEGIN {exit !(f > 0)}' || fail "dp2: forward phase $fwd ms"
# the model-parallel path times its pipeline (first forward to last backward) as one phase
pipe=$(sed -n 's/.*"phase_ms_min":{[^}]*"pipeline":\([0-9.]*\).*/\1/p' "$T/tp2.json")
tfwd=$(sed -n 's/.*"phase_ms":{[^}]*"forward":\([0-9.]*\).*/\1/p' "$T/tp2.json")
awk -v p="$pipe" -v f="$tfwd" 'BEGIN {exit !(p > 0 && f == 0)}' \
    || fail "tp2: pipeline phase '$pipe' ms, forward '$tfwd': $(cat "$T/tp2.json")"
cluster_equivalent tp4 4 --tp 4
cluster_equivalent pp2_gpipe 2 --pp 2 --micro-batches 4 --pp-schedule gpipe
cluster_equivalent pp2_1f1b 2 --pp 2 --micro-batches 4 --pp-schedule 1f1b
cluster_equivalent pp4_1f1b 4 --pp 4 --micro-batches 6 --pp-schedule 1f1b
grid_is pp4_1f1b 1 1 4
cluster_equivalent dp2_tp2 4 --tp 2
grid_is dp2_tp2 2 2 1
cluster_equivalent dp2_pp2 4 --pp 2 --micro-batches 2 --pp-schedule gpipe
grid_is dp2_pp2 2 1 2
cluster_equivalent tp2_pp2 4 --tp 2 --pp 2 --micro-batches 3
grid_is tp2_pp2 1 2 2
cluster_equivalent dp2_tp2_pp2 8 --tp 2 --pp 2 --micro-batches 2
grid_is dp2_tp2_pp2 2 2 2

# each split layer is 1/T per rank: TP 4 holds about a quarter of the parameters
tp4=$(field mem_per_rank_bytes "$T/tp4.json")
un=$(field mem_unsharded_bytes "$T/tp4.json")
[ "$tp4" -lt "$un" ] || fail "tp4 per-rank memory $tp4 not below one replica's $un"
# 1F1B keeps min(M, P) = 2 micro-batches of activations, GPipe all 4
g=$(field mem_per_rank_bytes "$T/pp2_gpipe.json")
o=$(field mem_per_rank_bytes "$T/pp2_1f1b.json")
[ "$o" -lt "$g" ] || fail "1f1b per-rank memory $o not below gpipe's $g"
# analytic bytes per step equal what was handed to MPI
for n in tp2 pp2_1f1b dp2_tp2_pp2; do
    for ax in tp pp dp; do
        m=$(sed -n "s/.*\"bytes_per_step\":{[^}]*\"$ax\":\([0-9]*\).*/\1/p" "$T/$n.json")
        a=$(sed -n "s/.*\"${ax}_analytic\":\([0-9]*\).*/\1/p" "$T/$n.json")
        [ "$m" = "$a" ] || fail "$n: $ax bytes $m, analytic $a"
    done
done
# a pipeline reports its bubble per stage and the theory
grep -q '"bubble":\[[0-9.]*,[0-9.]*,[0-9.]*,[0-9.]*\],"bubble_model":\[[0-9.,]*\],"bubble_theory":0.3333' "$T/pp4_1f1b.json" \
    || fail "pp4 bubble report: $(cat "$T/pp4_1f1b.json")"

# a checkpoint of one layout resumes under another and ends on the reference
ck=$T/ck
mpi 4 "$CL" refine "${COMMON[@]}" --steps 10 --out "$T/half.bin" --tp 2 --pp 2 --micro-batches 2 \
    --checkpoint-dir "$ck" --checkpoint-every 5 >"$T/half.json" 2>"$T/half.err" \
    || fail "tp2 x pp2 first half: $(cat "$T/half.json" "$T/half.err")"
[ -f "$ck/step-0000000010/DONE" ] || fail "no checkpoint at step 10"
cluster_equivalent resume_pp2 2 --pp 2 --micro-batches 4 --pp-schedule gpipe --checkpoint-dir "$ck"
grep -q '"start_step":10' "$T/resume_pp2.json" || fail "did not resume at 10: $(cat "$T/resume_pp2.json")"
# ... and into pure DP (ZeRO-1 shards read from the full-tensor checkpoint)
ck2=$T/ck2
cp -r "$ck" "$ck2"
cluster_equivalent resume_dp3_zero 3 --zero --checkpoint-dir "$ck2"
grep -q '"start_step":10' "$T/resume_dp3_zero.json" || fail "dp3 did not resume at 10"
# a DP checkpoint resumed under TP
ck3=$T/ck3
mpi 2 "$CL" refine "${COMMON[@]}" --steps 10 --out "$T/half2.bin" --zero \
    --checkpoint-dir "$ck3" --checkpoint-every 10 >/dev/null 2>&1 || fail "dp2 first half"
cluster_equivalent resume_tp2 2 --tp 2 --checkpoint-dir "$ck3"
grep -q '"start_step":10' "$T/resume_tp2.json" || fail "tp2 did not resume at 10"

# memory budget: 4 DP replicas of the whole model do not fit 0.75 MiB a rank,
# dp 2 x tp 2 does (and still trains exactly)
set +e
mpi 4 "$CL" refine "${COMMON[@]}" --out "$T/big.bin" --memory-per-rank-mb 0.75 >"$T/big.json" \
    2>"$T/big.err"
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "pure DP over the memory budget: exit $rc"
grep -q '"code":-143' "$T/big.json" || fail "memory refusal: $(cat "$T/big.json")"
grep -q '"where":"memory: dp=4 tp=1 pp=1 needs' "$T/big.json" || fail "memory refusal text: $(cat "$T/big.json")"
[ ! -e "$T/big.bin" ] || fail "output written despite the memory refusal"
cluster_equivalent budget_tp2 4 --tp 2 --memory-per-rank-mb 0.75

# the planner: pure DP does not fit that budget, the chosen layout does, and
# refine --layout auto trains with it
mkdir -p "$T/plantmp"
TMPDIR="$T/plantmp" mpi 4 "$CL" plan --spec mlp:784-64-64-32-10 --batch 64 --memory-per-rank-mb 0.75 \
    >"$T/plan.txt" 2>"$T/plan.err" || fail "plan: $(cat "$T/plan.txt" "$T/plan.err")"
# its probe shard and trial inputs are gone once it ends
[ -z "$(ls -A "$T/plantmp")" ] || fail "plan left files in TMPDIR: $(ls -A "$T/plantmp")"
grep -Eq '^ +4 +1 +1 +1 .* no *$' "$T/plan.txt" || fail "plan: pure DP should not fit: $(cat "$T/plan.txt")"
grep -q '<- chosen' "$T/plan.txt" || fail "plan chose nothing: $(cat "$T/plan.txt")"
pm=$(sed -n 's/.*"mem_per_rank_bytes":\([0-9]*\).*/\1/p' "$T/plan.txt")
[ "$pm" -le $((786432)) ] || fail "plan chose a layout over the budget: $pm"
[ "$(grep -c '^  ' "$T/plan.txt")" -ge 10 ] || fail "plan listed too few layouts: $(cat "$T/plan.txt")"
# the pure DP layout measured on the trainer's own backend; 4 ranks on fewer
# cores said to be oversubscribed (their compute scaled), on 4 or more not
grep -q "^# data-parallel step on the trainer's cpu backend, 16 rows per rank" "$T/plan.txt" \
    || fail "plan: no DP-step probe: $(cat "$T/plan.txt")"
cores=$(nproc)
if [ "$cores" -lt 4 ]; then
    grep -q "^# oversubscribed: 4 ranks on a node, $cores cores" "$T/plan.txt" \
        || fail "plan: 4 ranks on $cores cores not called oversubscribed: $(cat "$T/plan.txt")"
    # there every layout that fits is run by the trainer for 20-120 trial
    # steps, and each row says so
    fit=$(grep -Ec '^ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ .* yes' "$T/plan.txt")
    tri=$(grep -Ec ' yes  trial steps \(([2-9][0-9]|1[01][0-9]|120) run, fastest [0-9.]+; model [0-9.]+\)' \
          "$T/plan.txt" || true)
    [ "$fit" -ge 1 ] && [ "$tri" = "$fit" ] \
        || fail "plan: $tri of $fit fitting layouts run for trial steps: $(cat "$T/plan.txt")"
else
    ! grep -q '^# oversubscribed' "$T/plan.txt" || fail "plan: 4 ranks on $cores cores oversubscribed?"
    ! grep -q 'trial steps' "$T/plan.txt" || fail "plan: trial steps without oversubscription"
fi
cluster_equivalent auto 4 --layout auto --memory-per-rank-mb 0.75
grep -q '"dp":4,"tp":1,"pp":1' "$T/auto.json" && fail "--layout auto picked pure DP over the budget"

# linear lr scaling with warm-up: effective batch 64 over base 32 = 2x lr after 5 steps (4x diverges on Fashion-MNIST)
"$CL" reference "${COMMON[@]}" --lr-scaling linear --warmup-steps 5 --lr-base-batch 32 \
    --out "$T/ref_lr.bin" >/dev/null
mpi 4 "$CL" refine "${COMMON[@]}" --out "$T/lr.bin" --tp 2 --pp 2 --micro-batches 2 \
    --lr-scaling linear --warmup-steps 5 --lr-base-batch 32 >"$T/lr.json" 2>/dev/null \
    || fail "lr scaling run: $(cat "$T/lr.json")"
"$CL" compare "$T/lr.bin" "$T/ref_lr.bin" --tol 1e-5 >"$T/lr.cmp" || fail "lr scaling differs from reference: $(cat "$T/lr.cmp")"
"$CL" compare "$T/lr.bin" "$T/ref.bin" --tol 1e-3 >/dev/null && fail "lr scaling changed nothing"
grep -q '"effective_batch":64,"lr_scaling":"linear","lr_base_batch":32' "$T/lr.json" || fail "lr fields: $(cat "$T/lr.json")"
grep -q '"lr_final":0.100000001' "$T/lr.json" || fail "scaled lr: $(cat "$T/lr.json")"

# bad layouts: refused with their reason
set +e
mpi 3 "$CL" refine "${COMMON[@]}" --out "$T/b1.bin" --tp 2 >"$T/b1.json" 2>/dev/null; rc1=$?
mpi 2 "$CL" refine "${COMMON[@]}" --out "$T/b2.bin" --pp 2 --micro-batches 4 --batch 3 >"$T/b2.json" 2>/dev/null; rc2=$?
"$CL" refine "${COMMON[@]}" --out "$T/b3.bin" --backend gpu --tp 2 --precision bf16 >/dev/null 2>"$T/b3.err"; rc3=$?
# gpu with tp/pp is no longer refused: without a GPU it fails cleanly (no CUDA
# in the build: refused at the start; CUDA but no device: the set-up fails on
# every rank together), it does not hang
if ! nvidia-smi -L >/dev/null 2>&1; then
    mpi 2 "$CL" refine "${COMMON[@]}" --out "$T/b6.bin" --backend gpu --tp 2 >"$T/b6.json" 2>"$T/b6.err"; rc6=$?
    mpi 2 "$CL" refine "${COMMON[@]}" --out "$T/b7.bin" --backend gpu --pp 2 --gpu-comm mpi \
        >"$T/b7.json" 2>"$T/b7.err"; rc7=$?
else
    rc6=skip rc7=skip
fi
"$CL" refine "${COMMON[@]}" --out "$T/b8.bin" --gpu-comm shm >/dev/null 2>&1; rc8=$?
"$CL" refine "${COMMON[@]}" --out "$T/b9.bin" --backend gpu --layout auto >/dev/null 2>"$T/b9.err"; rc9=$?
mpi 5 "$CL" refine "${COMMON[@]}" --out "$T/b4.bin" --pp 5 >"$T/b4.json" 2>/dev/null; rc4=$?
"$CL" init --spec cnn:1x28x28-c4k5s2p2-p2-f16-10 --out "$T/cnn.bin" >/dev/null
mpi 2 "$CL" refine "${COMMON[@]}" --model "$T/cnn.bin" --out "$T/b5.bin" --tp 2 >"$T/b5.json" 2>/dev/null; rc5=$?
set -e
[ "$rc1" -eq 1 ] && grep -q '"where":"layout: --tp 2 x --pp 1 does not divide 3 ranks"' "$T/b1.json" \
    || fail "tp 2 on 3 ranks: $rc1 $(cat "$T/b1.json")"
[ "$rc2" -eq 1 ] && grep -q '"where":"layout: batch 3 is smaller' "$T/b2.json" || fail "tiny batch: $(cat "$T/b2.json")"
[ "$rc3" -eq 2 ] && grep -q 'gpu backend compute in fp32 only (drop --precision bf16)' "$T/b3.err" \
    || fail "gpu bf16 with tp: $rc3 $(cat "$T/b3.err")"
for b in b6 b7; do
    rc=$([ "$b" = b6 ] && echo "$rc6" || echo "$rc7")
    case $rc in
    skip) ;;
    2) grep -q 'not in this build' "$T/$b.err" || fail "$b: gpu without CUDA: $(cat "$T/$b.err")" ;;
    1) grep -q '"where":"model-parallel setup"' "$T/$b.json" \
           || fail "$b: gpu without a GPU: $(cat "$T/$b.json" "$T/$b.err")" ;;
    *) fail "$b: gpu without a GPU: exit $rc $(cat "$T/$b.json" "$T/$b.err")" ;;
    esac
done
[ "$rc8" -eq 2 ] || fail "--gpu-comm shm accepted: $rc8"
[ "$rc9" -eq 2 ] && grep -q 'layout auto measures the cpu backend' "$T/b9.err" \
    || fail "gpu with --layout auto: $rc9 $(cat "$T/b9.err")"
[ "$rc4" -eq 1 ] && grep -q 'more pipeline stages than dense layers' "$T/b4.json" || fail "pp 5: $(cat "$T/b4.json")"
[ "$rc5" -eq 1 ] && grep -q 'parallelism trains softmax/mlp specs only' "$T/b5.json" || fail "cnn with tp: $(cat "$T/b5.json")"
for b in b1 b2 b3 b4 b5 b6 b7 b8 b9; do [ ! -e "$T/$b.bin" ] || fail "$b wrote output"; done
# an odd number of layers: the last is column-parallel and the softmax
# cross-entropy is computed from allreduced row maxima and sums of exp
for spec in mlp:784-48-32-10 softmax:784-10; do
    "$CL" init --spec "$spec" --seed 4 --out "$T/m0.bin" >/dev/null
    cluster_reference
    cluster_equivalent "odd_tp2_${spec%%:*}" 2 --tp 2 --micro-batches 3
    grep -q '"tp":[1-9][0-9]*,"pp":0,"dp":0,"tp_analytic"' "$T/odd_tp2_${spec%%:*}.json" \
        || fail "$spec: no TP traffic: $(cat "$T/odd_tp2_${spec%%:*}.json")"
    [ "$spec" = softmax:784-10 ] || cluster_equivalent odd_tp2_pp2 4 --tp 2 --pp 2 --micro-batches 2
done
echo "cluster_layouts: all passed"
