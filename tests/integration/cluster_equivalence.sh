#!/usr/bin/env bash
# Cluster refinement, CPU backend: mpirun -np 1, 2 and 3 (with and without
# ZeRO-1, with several gradient buckets) give the parameters of plain
# single-process training on the same global batches; bad input fails with
# a clear status and writes nothing.
set -euo pipefail
BUILD=${FEDGE_BUILD:-build/native}
BIN=$BUILD/bin
CL=$BIN/fedge-cluster
MPI=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader
     --mca btl_vader_single_copy_mechanism none)
T=$(mktemp -d /tmp/fedge-cluster-eq.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
mpi() { timeout 120 "${MPI[@]}" -np "$@"; }
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" "$2"; }

[ -x "$CL" ] || fail "no $CL (build first)"
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    "$CL" make-shard --fashion-mnist train --rows 4000 --out "$T/train.shard" >/dev/null
else
    "$CL" make-shard --synthetic 4000 --dim 784 --classes 10 --out "$T/train.shard" >/dev/null
fi
"$CL" init --spec mlp:784-64-10 --seed 3 --out "$T/m0.bin" >/dev/null
COMMON=(--model "$T/m0.bin" --data "$T/train.shard" --steps 40 --batch 64 --lr 0.05
        --momentum 0.9 --weight-decay 0.0001 --seed 9)

"$CL" reference "${COMMON[@]}" --out "$T/ref.bin" >"$T/ref.json"
grep -q '"status":"ok"' "$T/ref.json" || fail "reference run: $(cat "$T/ref.json")"
# training moved the parameters (so the comparisons below mean something)
if "$CL" compare "$T/m0.bin" "$T/ref.bin" --tol 1e-3 >/dev/null; then
    fail "reference training did not change the model"
fi

run() { # name np extra-args...
    local name=$1 np=$2
    shift 2
    mpi "$np" "$CL" refine "${COMMON[@]}" --out "$T/$name.bin" "$@" >"$T/$name.json" \
        2>"$T/$name.err" || fail "$name: exit $? $(cat "$T/$name.json" "$T/$name.err")"
    grep -q '"status":"ok"' "$T/$name.json" || fail "$name: $(cat "$T/$name.json")"
    "$CL" compare "$T/$name.bin" "$T/ref.bin" --tol 1e-5 >"$T/$name.cmp" \
        || fail "$name differs from single-process training: $(cat "$T/$name.cmp")"
    echo "ok  $name: $(cat "$T/$name.cmp")"
}
run np1 1
run np2 2
run np2_buckets 2 --bucket-mb 0.02
run np2_zero 2 --zero --bucket-mb 0.02
run np3_zero 3 --zero --bucket-mb 0.05
run np4_zero 4 --zero
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
