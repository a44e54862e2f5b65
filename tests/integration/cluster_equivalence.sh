#!/usr/bin/env bash
# Cluster refinement, CPU backend: mpirun -np 1, 2 and 3 (with and without
# ZeRO-1, with several gradient buckets) give the parameters of plain
# single-process training on the same global batches; bad input fails with
# a clear status and writes nothing.
set -euo pipefail
CLUSTER_TAG=eq
. "$(dirname "$0")/../lib/cluster.sh"
cluster_train_shard 4000
"$CL" init --spec mlp:784-64-10 --seed 3 --out "$T/m0.bin" >/dev/null
COMMON=(--model "$T/m0.bin" --data "$T/train.shard" --steps 40 --batch 64 --lr 0.05
        --momentum 0.9 --weight-decay 0.0001 --seed 9)

cluster_reference

cluster_equivalent np1 1
cluster_equivalent np2 2
cluster_equivalent np2_buckets 2 --bucket-mb 0.02
cluster_equivalent np2_zero 2 --zero --bucket-mb 0.02
cluster_equivalent np3_zero 3 --zero --bucket-mb 0.05
cluster_equivalent np4_zero 4 --zero
"$CL" compare "$T/np2_zero.bin" "$T/np2.bin" --tol 1e-6 >/dev/null \
    || fail "ZeRO-1 run differs from the unsharded run"

# ZeRO-1 holds less state per rank than the unsharded run at the same N
z=$(field mem_per_rank_bytes "$T/np2_zero.json")
u=$(field mem_per_rank_bytes "$T/np2.json")
[ "$z" -lt "$u" ] || fail "ZeRO-1 per-rank memory $z not below unsharded $u"
zo=$(field optimizer_bytes "$T/np4_zero.json")
uo=$(field optimizer_bytes "$T/np1.json")
[ $((zo * 4)) -le $((uo + 4 * 256)) ] || fail "np4 optimizer slice $zo is not a quarter of $uo"

# the evaluation numbers are there and sane
mpi 2 "$CL" refine "${COMMON[@]}" --out "$T/ev.bin" --eval "$T/train.shard" >"$T/ev.json" 2>/dev/null
acc=$(field eval_accuracy "$T/ev.json")
awk -v a="$acc" 'BEGIN { exit !(a > 0.5 && a <= 1.0) }' || fail "eval accuracy $acc"

# bad input: a clear error, exit 1, no output written
printf 'not a shard' >"$T/bad.shard"
set +e
mpi 2 "$CL" refine --model "$T/m0.bin" --data "$T/bad.shard" --out "$T/bad.bin" --steps 2 \
    >"$T/bad.json" 2>/dev/null
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "bad data accepted"
grep -q '"status":"error"' "$T/bad.json" || fail "no error summary: $(cat "$T/bad.json")"
grep -q '"where":"training data"' "$T/bad.json" || fail "error does not name the data: $(cat "$T/bad.json")"
[ ! -e "$T/bad.bin" ] || fail "output written despite the error"
# a model whose input size does not match the data
"$CL" init --spec mlp:100-8-10 --out "$T/small.bin" >/dev/null
set +e
mpi 1 "$CL" refine --model "$T/small.bin" --data "$T/train.shard" --out "$T/bad2.bin" --steps 2 \
    >"$T/bad2.json" 2>/dev/null
rc=$?
"$CL" refine --model "$T/m0.bin" --data "$T/train.shard" --out "$T/x.bin" --batch 0 >/dev/null 2>&1
rc_usage=$?
set -e
[ "$rc" -eq 1 ] || fail "shape mismatch: exit $rc"
grep -q '"error":"model shape mismatch"' "$T/bad2.json" || fail "shape mismatch: $(cat "$T/bad2.json")"
[ "$rc_usage" -eq 2 ] || fail "usage error gave exit $rc_usage"
echo "cluster_equivalence: all passed"
