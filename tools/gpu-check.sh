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
#   3. with 2+ GPUs, the same with mpirun -np 2 (NCCL across devices), and
#      tensor / pipeline parallelism on the GPU (fp32; the layouts of
#      cluster_layouts.sh, over NCCL where they fit the GPUs at 1 rank per GPU,
#      and all of them with --gpu-comm mpi, ranks sharing GPUs) against
#      single-process CPU training, plus compute-sanitizer on its kernels;
#      bf16/fp16 with --tp/--pp are refused (exit 2);
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
# Tensor and pipeline parallelism on the GPU (cluster_mp.c with the table of
# gpu/mp_gpu.cu): the layouts of tests/integration/cluster_layouts.sh that fit
# the GPUs here (NCCL wants one device per rank) against single-process CPU
# training (`reference`) on the same global batches, after 5 steps. The error
# is measured relative to the update, |gpu - ref| / |ref - m0|, not to the
# parameters (5 steps move them little, so a parameter-relative bound would
# hide a lost gradient term). fp32 with another summation order (cuBLAS, NCCL
# ring sums): each GEMM is off by ~sqrt(K) eps ~ 2e-6 relative (K <= 784),
# amplified at most ~10x by momentum 0.9 over 5 steps: ~1e-4 at worst, so the
# bound is 1e-3; a wrong or dropped term (a bias gradient, a missing TP
# allreduce, a mis-routed pipeline message) moves the result by 1e-2 of the
# update or more. The first loss must agree too (5e-5 relative). Every run has
# a timeout: a pipeline that deadlocks is a failure, not a hang. Run with the
# CPU table (--backend cpu) this block measures 3.3e-7 .. 4.6e-7 and fails
# each bug injected there: layer 0's bias gradient dropped 0.09, the backward
# TP allreduce skipped 0.76, the split softmax sums not allreduced 1.66, the
# pipeline gradient without its ReLU mask 1.06 (each on the layouts it touches).
"$CL" init --spec mlp:784-64-64-32-10 --seed 3 --out "$T/mp0.bin" >/dev/null
MPC=(--data "$T/train.shard" --steps 5 --batch 64 --lr 0.05 --momentum 0.9 --weight-decay 0.0001
     --seed 9)
mp_reference() { # model -> T/mpref.bin, T/mpref.json
    "$CL" reference --model "$1" "${MPC[@]}" --out "$T/mpref.bin" >"$T/mpref.json"
}
mp_check() { # name np model args...
    local name=$1 np=$2 model=$3
    shift 3
    if ! timeout 60 "${MPI[@]}" -np "$np" "$CL" refine --model "$model" "${MPC[@]}" --backend gpu \
        --out "$T/$name.bin" "$@" >"$T/$name.json" 2>"$T/$name.err"; then
        echo "FAIL  $name: $(cat "$T/$name.json" "$T/$name.err")"
        failed=1
        return 0
    fi
    local d u l0 l1
    d=$("$CL" compare "$T/$name.bin" "$T/mpref.bin" --tol 1 | sed -n 's/.*"rel_l2":\([^,}]*\).*/\1/p' || true)
    u=$("$CL" compare "$model" "$T/mpref.bin" --tol 1 | sed -n 's/.*"rel_l2":\([^,}]*\).*/\1/p' || true)
    l0=$(sed -n 's/.*"first_loss":\([^,}]*\).*/\1/p' "$T/mpref.json")
    l1=$(sed -n 's/.*"first_loss":\([^,}]*\).*/\1/p' "$T/$name.json")
    if awk -v d="$d" -v u="$u" -v a="$l0" -v b="$l1" 'BEGIN {
            r = (u > 0) ? d / u : 1; e = (a > b ? a - b : b - a) / (a > 0 ? a : 1)
            printf "update-relative error %.3g (bound 1e-3), first loss %s vs %s\n", r, b, a
            exit !(u > 0 && r <= 1e-3 && e <= 5e-5) }' >"$T/$name.cmp"; then
        echo "PASS  $name: $(cat "$T/$name.cmp")"
    else
        echo "FAIL  $name: $(cat "$T/$name.cmp") $(cat "$T/$name.json")"
        failed=1
    fi
}
# name np args: the layouts of cluster_layouts.sh
MP_LAYOUTS=("tp2 2 --tp 2"
            "pp2_gpipe 2 --pp 2 --micro-batches 4 --pp-schedule gpipe"
            "pp2_1f1b 2 --pp 2 --micro-batches 4 --pp-schedule 1f1b"
            "tp4 4 --tp 4"
            "pp4_1f1b 4 --pp 4 --micro-batches 6 --pp-schedule 1f1b"
            "dp2_tp2 4 --tp 2"
            "dp2_pp2 4 --pp 2 --micro-batches 2 --pp-schedule gpipe"
            "tp2_pp2 4 --tp 2 --pp 2 --micro-batches 3"
            "dp2_tp2_pp2 8 --tp 2 --pp 2 --micro-batches 2")
# Messages through NCCL (one GPU per rank: the layouts that fit), and the
# same compute with its messages staged through host MPI (--gpu-comm mpi:
# every layout, ranks sharing the GPUs; on a one-GPU machine the only way to
# run the GPU table's TP/PP arithmetic).
mp_reference "$T/mp0.bin"
for lay in "${MP_LAYOUTS[@]}"; do
    read -r name np args <<<"$lay"
    # shellcheck disable=SC2086
    [ "$np" -le "$NGPU" ] && mp_check "gpu_nccl_$name" "$np" "$T/mp0.bin" $args
    # shellcheck disable=SC2086
    mp_check "gpu_staged_$name" "$np" "$T/mp0.bin" $args --gpu-comm mpi
done
mp_check gpu_micro4 1 "$T/mp0.bin" --micro-batches 4
# an odd number of layers: the last split by columns, the softmax over split logits
"$CL" init --spec mlp:784-48-32-10 --seed 4 --out "$T/mp_odd.bin" >/dev/null
mp_reference "$T/mp_odd.bin"
[ "$NGPU" -ge 2 ] && mp_check gpu_nccl_odd_tp2 2 "$T/mp_odd.bin" --tp 2 --micro-batches 3
mp_check gpu_staged_odd_tp2 2 "$T/mp_odd.bin" --tp 2 --micro-batches 3 --gpu-comm mpi
# every kernel of the GPU table under compute-sanitizer, on one rank
# (micro-batches take the model-parallel path; NCCL's own spinning kernels
# between ranks are slow under racecheck and are not what is checked here)
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
        if timeout 120 "${MPI[@]}" -np 1 compute-sanitizer --tool "$tool" --error-exitcode 9 \
            "$CL" refine --model "$T/mp_odd.bin" "${MPC[@]}" --steps 2 --backend gpu \
            --micro-batches 3 --out "$T/san.bin" >"$T/san.json" 2>"$T/san.err"; then
            echo "PASS  compute-sanitizer $tool, gpu table on one rank (3 micro-batches)"
        else
            echo "FAIL  compute-sanitizer $tool: $(tail -20 "$T/san.err")"
            failed=1
        fi
    done
fi
# the gpu table of TP/PP is fp32 only: bf16/fp16 are refused up front
set +e
"${MPI[@]}" -np 2 "$CL" refine --model "$T/mp0.bin" "${MPC[@]}" --backend gpu --tp 2 \
    --precision bf16 --out "$T/tpbf.bin" >"$T/tpbf.json" 2>"$T/tpbf.err"
rc=$?
set -e
if [ "$rc" -eq 2 ] && grep -q 'fp32 only' "$T/tpbf.err" && [ ! -e "$T/tpbf.bin" ]; then
    echo "PASS  gpu refuses --tp 2 --precision bf16 (exit 2: $(head -1 "$T/tpbf.err"))"
else
    echo "FAIL  gpu --tp 2 --precision bf16: exit $rc $(cat "$T/tpbf.json" "$T/tpbf.err")"
    failed=1
fi

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
