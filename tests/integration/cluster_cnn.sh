#!/usr/bin/env bash
# Cluster refinement of a cnn spec, CPU backend (shared-core mode: each rank's
# gradient comes from fedge_model_loss_grad, then the usual buckets, ZeRO-1
# and SGD): mpirun -np 1 and 2 give the parameters of single-process training
# on the same global batches; the gpu backend refuses a cnn with a clear status.
set -euo pipefail
CLUSTER_TAG=cnn
CLUSTER_MPI_TIMEOUT=180
. "$(dirname "$0")/../lib/cluster.sh"
cluster_train_shard 2000
SPEC=cnn:1x28x28-c4k5s2p2-p2-f16-10
"$CL" init --spec "$SPEC" --seed 3 --out "$T/m0.bin" >/dev/null
COMMON=(--model "$T/m0.bin" --data "$T/train.shard" --steps 20 --batch 32 --lr 0.05
        --momentum 0.9 --weight-decay 0.0001 --seed 9)

cluster_reference

cluster_equivalent np1 1
cluster_equivalent np2 2
cluster_equivalent np2_zero 2 --zero --bucket-mb 0.01

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
