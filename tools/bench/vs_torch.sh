#!/usr/bin/env bash
# tools/bench/vs_torch.sh [BUILD] — one epoch of Fashion-MNIST training, one
# thread each, fedge (bench-epoch) against PyTorch (CPU) and scikit-learn in
# the same run; prints samples/s, test accuracy and fedge's ratio to each.
#
#   SPECS    model specs (default: mlp:784-200-10 and the CNN
#            cnn:1x28x28-c32k5-p2-c64k5-p2-f512-10; a spec this build cannot
#            parse is reported as failed and the rest still run)
#   BATCHES  default "32 256";  LR, MOMENTUM, SEED: default 0.02 0.9 1
#   REPEAT   epochs per case, the fastest reported (default 3; 1 for cnn specs)
#
# Python packages (torch, scikit-learn, numpy) go into a virtual environment
# build/bench-venv, made once and reused (a stamp records a finished install);
# `make demo` and `make test` never need it. PyTorch's CPU-only index is tried
# first, then PyPI (whose Linux wheel also pulls the CUDA runtime packages:
# several GB, installed once).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build/native}
SPECS=${SPECS:-"mlp:784-200-10 cnn:1x28x28-c32k5-p2-c64k5-p2-f512-10"}
BATCHES=${BATCHES:-"32 256"}
LR=${LR:-0.02}
MOMENTUM=${MOMENTUM:-0.9}
SEED=${SEED:-1}
VENV=build/bench-venv
PY=$VENV/bin/python

if [ ! -f "$VENV/.installed" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --progress-bar off --timeout 15 --retries 0 \
        --index-url https://download.pytorch.org/whl/cpu torch 2>/dev/null ||
        "$VENV/bin/pip" install -q --progress-bar off torch
    "$VENV/bin/pip" install -q --progress-bar off numpy scikit-learn threadpoolctl
    "$PY" -c 'import torch, sklearn, numpy, threadpoolctl' && touch "$VENV/.installed"
fi
[ -x "$BUILD/bin/bench-epoch" ] || make --no-print-directory "$BUILD/bin/bench-epoch"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "# $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $("$PY" -c 'import torch; print("torch", torch.__version__, "|", torch.__config__.show().splitlines()[3].strip(), "| CPU capability", torch.backends.cpu.get_cpu_capability())')"
for spec in $SPECS; do
    case $spec in cnn:*) rep=${REPEAT:-1} ;; *) rep=${REPEAT:-3} ;; esac
    for b in $BATCHES; do
        best=""
        for _ in $(seq "$rep"); do
            line=$("$BUILD/bin/bench-epoch" "$spec" "$b" "$LR" "$MOMENTUM" "$SEED" 2>&1) ||
                line="impl=fedge spec=$spec batch=$b failed=$(echo "$line" | tr ' ' '_')"
            sps=$(sed -n 's/.*samples_per_s=\([0-9]*\).*/\1/p' <<<"$line")
            if [ -z "$best" ] || { [ -n "$sps" ] && [ "$sps" -gt "$(sed -n 's/.*samples_per_s=\([0-9]*\).*/\1/p' <<<"$best")" ]; }; then
                best=$line
            fi
        done
        echo "$best" | tee -a "$out"
        for impl in torch sklearn; do
            "$PY" tools/bench/vs_torch.py "$impl" "$spec" "$b" "$LR" "$MOMENTUM" "$SEED" "$rep" 2>&1 |
                grep '^impl=' | tee -a "$out" ||
                echo "impl=$impl spec=$spec batch=$b failed" | tee -a "$out"
        done
    done
done
echo
"$PY" tools/bench/vs_torch.py table <"$out"
