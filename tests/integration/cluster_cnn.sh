#!/usr/bin/env bash
# Cluster refinement of a cnn spec, CPU backend (shared-core mode: each rank's
# gradient comes from fedge_model_loss_grad, then the usual buckets, ZeRO-1
# and SGD): mpirun -np 1 and 2 give the parameters of single-process training
# on the same global batches; the gpu backend refuses a cnn with a clear status.
set -euo pipefail
BUILD=${FEDGE_BUILD:-build/native}
BIN=$BUILD/bin
CL=$BIN/fedge-cluster
MPI=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader
     --mca btl_vader_single_copy_mechanism none)
T=$(mktemp -d /tmp/fedge-cluster-cnn.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
mpi() { timeout 180 "${MPI[@]}" -np "$@"; }

[ -x "$CL" ] || fail "no $CL (build first)"
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    "$CL" make-shard --fashion-mnist train --rows 2000 --out "$T/train.shard" >/dev/null
else
    "$CL" make-shard --synthetic 2000 --dim 784 --classes 10 --out "$T/train.shard" >/dev/null
fi
SPEC=cnn:1x28x28-c4k5s2p2-p2-f16-10
"$CL" init --spec "$SPEC" --seed 3 --out "$T/m0.bin" >/dev/null
COMMON=(--model "$T/m0.bin" --data "$T/train.shard" --steps 20 --batch 32 --lr 0.05
        --momentum 0.9 --weight-decay 0.0001 --seed 9)

"$CL" reference "${COMMON[@]}" --out "$T/ref.bin" >"$T/ref.json"
grep -q '"status":"ok"' "$T/ref.json" || fail "reference run: $(cat "$T/ref.json")"
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
run np2_zero 2 --zero --bucket-mb 0.01

# the memory plan covers the cnn on cpu; the gpu backend refuses it
"$CL" memory --spec "$SPEC" --batch 64 >"$T/mem.txt" || fail "memory --spec $SPEC (cpu) failed"
grep -q ' 2 ' "$T/mem.txt" || fail "memory plan: $(cat "$T/mem.txt")"
rc=0
"$CL" memory --spec "$SPEC" --batch 64 --backend gpu >/dev/null 2>"$T/mem.err" || rc=$?
[ "$rc" -eq 2 ] && grep -q 'gpu backend trains softmax/mlp specs only' "$T/mem.err" \
    || fail "memory --backend gpu with a cnn: rc $rc, $(cat "$T/mem.err")"
rc=0
"$CL" refine "${COMMON[@]}" --backend gpu --out "$T/gpu.bin" >"$T/gpu.json" 2>"$T/gpu.err" || rc=$?
[ "$rc" -ne 0 ] || fail "refine --backend gpu with a cnn succeeded"
if grep -q 'is not in this build' "$T/gpu.err"; then
    echo "skip refine --backend gpu: no GPU backend in this build"
else
    grep -q 'gpu backend trains softmax/mlp specs only' "$T/gpu.json" \
        || fail "refine --backend gpu with a cnn: rc $rc, $(cat "$T/gpu.json")"
fi
[ ! -e "$T/gpu.bin" ] || fail "a refused run wrote its output"
echo "cluster_cnn: all passed"
