#!/usr/bin/env bash
# FEDGE_BLAS_THREADS (README "Matrix products and threads"): the edge, the
# cluster trainer and the aggregator accept a count 1..1024 and exit 2 naming
# the variable on anything else, before doing any work.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${FEDGE_BUILD:-build/native}/bin
bad=0
for name in fedge-edge fedge-cluster fedge-aggregator; do
    b=$BIN/$name
    [ -x "$b" ] || { echo "FAIL: $b missing" >&2; exit 1; }
    for v in 1 4 1024 ""; do
        if ! FEDGE_BLAS_THREADS=$v timeout 10 "$b" --version >/dev/null 2>&1 </dev/null; then
            echo "FAIL: $name with FEDGE_BLAS_THREADS='$v' did not start" >&2
            bad=$((bad + 1))
        fi
    done
    for v in 0 -1 1025 abc 2x " 2" 99999999999999999999; do
        err=$(FEDGE_BLAS_THREADS=$v timeout 10 "$b" --version 2>&1 >/dev/null </dev/null)
        rc=$?
        if [ "$rc" -ne 2 ] || ! grep -q FEDGE_BLAS_THREADS <<<"$err"; then
            echo "FAIL: $name with FEDGE_BLAS_THREADS='$v': exit $rc, stderr '$err' (want 2, naming the variable)" >&2
            bad=$((bad + 1))
        fi
    done
done
[ "$bad" -eq 0 ] || exit 1
echo "ok: FEDGE_BLAS_THREADS checked by edge, cluster and aggregator"
