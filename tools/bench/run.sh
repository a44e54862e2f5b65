#!/usr/bin/env bash
# tools/bench/run.sh BUILD — runs every benchmark and prints its tables.
# Each program measures its own baseline in the same run and prints ratios;
# docs/BENCHMARKS.md records the figures with these commands.
set -uo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
BIN=$BUILD/bin
status=0
run() {
    echo "== $*"
    "$@" || { echo "benchmark failed: $*"; status=1; }
    echo
}
run "$BIN/bench-gemm"
run "$BIN/bench-sgd"
run "$BIN/bench-train"
run "$BIN/bench-codec"
run "$BIN/bench-crypto"
run "$BIN/bench-combine_mem"
run "$BIN/bench-upload_scale"
[ -x "$BIN/bench-aggregate" ] && run "$BIN/bench-aggregate"
[ -x tools/bench/federation.sh ] && run tools/bench/federation.sh "$BUILD"
[ -x tools/bench/slow_link.sh ] && FEDGE_BUILD=$BUILD run tools/bench/slow_link.sh
for b in "$BIN"/bench-mpi_*; do
    [ -x "$b" ] || continue
    run mpirun --allow-run-as-root --oversubscribe -np 2 "$b"
done
# fedge vs PyTorch vs scikit-learn: needs a Python venv with torch (installed
# once under build/bench-venv, several GB), so only on request.
[ "${FEDGE_BENCH_TORCH:-0}" = 1 ] && run tools/bench/vs_torch.sh "$BUILD"
exit $status
