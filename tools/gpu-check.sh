#!/usr/bin/env bash
# tools/gpu-check.sh [BUILD] — correctness checks and benchmarks of the
# cluster GPU backend, for a machine with an NVIDIA GPU (CI has none: there
# the build alone is checked, by `make`).
#
#   1. builds fedge-cluster and the MPI benchmarks with CUDA=1;
#   2. trains the same model on the same global batches with the CPU backend
#      and with the GPU backend in fp32, bf16 and fp16 (also ZeRO-1 with
#      several buckets, and fp16 with an absurd initial loss scale so that the
#      dynamic scaling must skip steps), and checks the relative L2 distance
#      of the parameters against bounds for each precision;
#   3. with 2+ GPUs, the same with mpirun -np 2 (NCCL across devices);
#      --tp / --pp / --layout auto with the gpu backend are refused (exit 2):
#      tensor and pipeline parallelism run on the cpu backend only;
#   4. benchmarks: NCCL collective bandwidth (4 KB .. 256 MB) and training
#      throughput against the cuBLAS GEMM rate measured in the same run.
# Exit 0 when every check passed; 3 when there is no GPU (nothing checked).
set -euo pipefail
BUILD=${1:-build/native}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=$BUILD/bin
CL=$BIN/fedge-cluster
MPI=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader)
T=$(mktemp -d /tmp/fedge-gpu-check.XXXXXX)
trap 'rm -rf "$T"' EXIT
failed=0
check() { # name tol model
    if "$CL" compare "$3" "$T/cpu.bin" --tol "$2" >"$T/$1.cmp"; then
        echo "PASS  $1: $(cat "$T/$1.cmp")"
    else
        echo "FAIL  $1: $(cat "$T/$1.cmp")"
        failed=1
    fi
}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU here; nothing checked" >&2
    exit 3
fi
nvidia-smi -L
NGPU=$(nvidia-smi -L | wc -l)
make -j"$(nproc)" CUDA=1 "$CL" "$BIN/bench-mpi_allreduce" "$BIN/bench-mpi_train"

if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    "$CL" make-shard --fashion-mnist train --rows 8000 --out "$T/train.shard" >/dev/null
else
    "$CL" make-shard --synthetic 8000 --dim 784 --classes 10 --out "$T/train.shard" >/dev/null
fi
"$CL" init --spec mlp:784-256-128-10 --seed 1 --out "$T/m0.bin" >/dev/null
C=(--model "$T/m0.bin" --data "$T/train.shard" --steps 50 --batch 128 --lr 0.05 --momentum 0.9)

"${MPI[@]}" -np 1 "$CL" refine "${C[@]}" --backend cpu --out "$T/cpu.bin" >"$T/cpu.json"
run_gpu() { # name np args...
    local name=$1 np=$2
    shift 2
    if "${MPI[@]}" -np "$np" "$CL" refine "${C[@]}" --backend gpu --out "$T/$name.bin" "$@" \
        >"$T/$name.json" 2>"$T/$name.err"; then
        echo "      $name: $(cat "$T/$name.json")"
    else
        echo "FAIL  $name: $(cat "$T/$name.json" "$T/$name.err")"
        failed=1
        return 1
    fi
}
# bounds: fp32 (no TF32) differs only by summation order; bf16 keeps 8
# significant bits, fp16 11, through 50 steps of training
run_gpu fp32 1 --precision fp32 && check fp32 1e-4 "$T/fp32.bin"
run_gpu bf16 1 --precision bf16 && check bf16 5e-2 "$T/bf16.bin"
run_gpu fp16 1 --precision fp16 && check fp16 1e-2 "$T/fp16.bin"
run_gpu bf16_zero 1 --precision bf16 --zero --bucket-mb 0.1 && check bf16_zero 5e-2 "$T/bf16_zero.bin"
run_gpu fp32_zero 1 --precision fp32 --zero --bucket-mb 0.1 && check fp32_zero 1e-4 "$T/fp32_zero.bin"
if run_gpu fp16_overflow 1 --precision fp16 --loss-scale 1e12 --loss-scale-window 10; then
    skipped=$(sed -n 's/.*"skipped_steps":\([0-9]*\).*/\1/p' "$T/fp16_overflow.json")
    if [ "${skipped:-0}" -gt 0 ]; then
        echo "PASS  fp16 dynamic loss scaling skipped $skipped overflowing steps"
    else
        echo "FAIL  fp16 loss scale 1e12 skipped no step"
        failed=1
    fi
fi
# tensor and pipeline parallelism run on the cpu backend only: the gpu
# backend must refuse them up front (usage error, nothing trained)
for lay in "--tp 2" "--pp 2 --micro-batches 2" "--layout auto"; do
    set +e
    # shellcheck disable=SC2086
    "${MPI[@]}" -np 2 "$CL" refine "${C[@]}" --backend gpu --out "$T/tppp.bin" $lay \
        >"$T/tppp.json" 2>"$T/tppp.err"
    rc=$?
    set -e
    if [ "$rc" -eq 2 ] && grep -q 'cpu backend only' "$T/tppp.err" && [ ! -e "$T/tppp.bin" ]; then
        echo "PASS  gpu refuses $lay (exit 2: $(head -1 "$T/tppp.err"))"
    else
        echo "FAIL  gpu with $lay: exit $rc $(cat "$T/tppp.json" "$T/tppp.err")"
        failed=1
    fi
done

if [ "$NGPU" -ge 2 ]; then
    run_gpu np2_bf16 2 --precision bf16 && check np2_bf16 5e-2 "$T/np2_bf16.bin"
    run_gpu np2_fp32_zero 2 --precision fp32 --zero --bucket-mb 0.1 \
        && check np2_fp32_zero 1e-4 "$T/np2_fp32_zero.bin"
fi

echo "== NCCL allreduce bandwidth (busbw = algbw * 2(N-1)/N; 0 for one GPU)"
"${MPI[@]}" -np "$NGPU" "$BIN/bench-mpi_allreduce" --backend gpu --factor 2 || failed=1
echo "== training throughput vs cuBLAS GEMM rate"
for p in fp32 bf16 fp16; do
    "${MPI[@]}" -np "$NGPU" "$BIN/bench-mpi_train" --backend gpu --precision "$p" \
        --spec mlp:784-4096-4096-10 --batch 4096 --steps 50 --rows 65536 || failed=1
done
"${MPI[@]}" -np 1 "$BIN/bench-mpi_train" --backend cpu --spec mlp:784-4096-4096-10 \
    --batch 256 --steps 3 --rows 4096 || failed=1
[ "$failed" -eq 0 ] && echo "gpu-check: all passed" || echo "gpu-check: FAILED"
exit "$failed"
