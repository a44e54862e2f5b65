#!/usr/bin/env bash
# lean_steps.sh — what the LEAN scratch layout costs per one-sample training
# pass, this tree against BASE (another checkout, e.g. a worktree of main),
# in the same run: the scratch bytes, the instructions per pass (valgrind
# --tool=callgrind: independent of the machine's load) and the wall time
# per pass (-O2, the edge profile's defines: FEDGE_MODEL_GRAD_CHUNK=256,
# FEDGE_MODEL_XIN_ROWS=1; model.c and gemm.c are built -O2 there too).
#
#   BASE=/path/to/main-checkout tools/bench/lean_steps.sh [SPEC ...]
#   LAYOUT=min ...   the least layout each tree has (the edge profile's pick;
#                    PATCH where it is the least), with its gradient slice
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${BASE:?BASE=another checkout to compare with}"
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=(cnn:1x28x28-c8k5-p2-f64-10 cnn:1x28x28-c6k5-p2-c16k5-p2-f120-f84-10
    cnn:1x28x28-c16k3p1-p2-c32k3p1-p2-f128-10 cnn:1x28x28-c32k5-p2-c64k5-p2-f512-10)
command -v valgrind >/dev/null || { echo "lean_steps: valgrind missing (tools/deps.sh)" >&2; exit 1; }
FEDGE_BUILD=${FEDGE_BUILD:-build/native}
[ -f "$FEDGE_BUILD/lib/libfedge.a" ] || { echo "lean_steps: no $FEDGE_BUILD/lib/libfedge.a (make build-all)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in base now; do
    dir=$PWD
    [ $t = base ] && dir=$(cd "$BASE" && pwd)
    gcc -std=c11 -O2 -D_GNU_SOURCE -I"$dir/shared" -Ibuild/deps/x86_64-linux-gnu/include \
        -DFEDGE_MODEL_GRAD_CHUNK=256 -DFEDGE_MODEL_XIN_ROWS=1 -DMODEL_C="\"$dir/shared/model.c\"" \
        $( [ "${LAYOUT:-lean}" = min ] && echo -DLEAN_STEPS_MIN) \
        $(grep -q fedge_model_grad_chunk_floats_fit "$dir/shared/model.h" && echo -DLEAN_STEPS_CHUNK_FIT) \
        tools/bench/lean_steps/lean_steps.c "$dir/shared/gemm.c" "$FEDGE_BUILD/lib/libfedge.a" -lm -lmbedcrypto \
        -Wl,--allow-multiple-definition -o "$tmp/$t" || exit 1
done
printf '%-44s %9s %9s %14s %14s %6s %9s %9s %6s\n' spec base_B now_B base_instr now_instr ratio base_ms now_ms ratio
for spec in "${specs[@]}"; do
    declare -A B I M
    for t in base now; do
        read -r B[$t] M[$t] < <("$tmp/$t" "$spec" 20) || exit 1
        I[$t]=$(valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" "$tmp/$t" "$spec" 4 2>&1 |
            awk '/refs:/{gsub(",", "", $NF); print int($NF / 4)}')
    done
    printf '%-44s %9s %9s %14s %14s %6s %9s %9s %6s\n' "$spec" "${B[base]}" "${B[now]}" \
        "${I[base]}" "${I[now]}" "$(awk -v a="${I[base]}" -v b="${I[now]}" 'BEGIN{printf "%.2f", b/a}')" \
        "${M[base]}" "${M[now]}" "$(awk -v a="${M[base]}" -v b="${M[now]}" 'BEGIN{printf "%.2f", b/a}')"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
