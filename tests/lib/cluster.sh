# tests/lib/cluster.sh — helpers for the fedge-cluster scripts. Source it
# after `set -euo pipefail`, with CLUSTER_TAG (names the temp dir) and
# optionally CLUSTER_MPI_TIMEOUT (seconds per mpirun, default 120) set.
# Gives CL, T (a temp dir removed on exit), fail, mpi NP ..., field KEY FILE,
# cluster_train_shard ROWS, and, once COMMON holds the run's arguments,
# cluster_reference and cluster_equivalent NAME NP [ARGS...].
BUILD=${FEDGE_BUILD:-build/native}
CL=$BUILD/bin/fedge-cluster
MPI=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader
     --mca btl_vader_single_copy_mechanism none)
T=$(mktemp -d "/tmp/fedge-cluster-$CLUSTER_TAG.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
mpi() { timeout "${CLUSTER_MPI_TIMEOUT:-120}" "${MPI[@]}" -np "$@"; }
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" "$2"; }

[ -x "$CL" ] || fail "no $CL (build first)"

# T/train.shard: ROWS rows of Fashion-MNIST's train split, or synthetic
# 784-feature rows where the data set is not installed.
cluster_train_shard() {
    if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        "$CL" make-shard --fashion-mnist train --rows "$1" --out "$T/train.shard" >/dev/null
    else
        "$CL" make-shard --synthetic "$1" --dim 784 --classes 10 --out "$T/train.shard" >/dev/null
    fi
}

# Single-process training on COMMON into T/ref.bin; it must move the model
# (so the comparisons with it mean something).
cluster_reference() {
    "$CL" reference "${COMMON[@]}" --out "$T/ref.bin" >"$T/ref.json"
    grep -q '"status":"ok"' "$T/ref.json" || fail "reference run: $(cat "$T/ref.json")"
    if "$CL" compare "$T/m0.bin" "$T/ref.bin" --tol 1e-3 >/dev/null; then
        fail "reference training did not change the model"
    fi
}

# `refine` on NP ranks with COMMON and ARGS into T/NAME.bin: it must succeed
# and give T/ref.bin's parameters to 1e-5.
cluster_equivalent() {
    local name=$1 np=$2
    shift 2
    mpi "$np" "$CL" refine "${COMMON[@]}" --out "$T/$name.bin" "$@" >"$T/$name.json" \
        2>"$T/$name.err" || fail "$name: exit $? $(cat "$T/$name.json" "$T/$name.err")"
    grep -q '"status":"ok"' "$T/$name.json" || fail "$name: $(cat "$T/$name.json")"
    "$CL" compare "$T/$name.bin" "$T/ref.bin" --tol 1e-5 >"$T/$name.cmp" \
        || fail "$name differs from single-process training: $(cat "$T/$name.cmp")"
    echo "ok  $name: $(cat "$T/$name.cmp")"
}
