#!/usr/bin/env bash
# Cluster refinement, kill and restart: one rank aborts mid-job; a rerun
# resumes from the newest complete checkpoint (at most K steps lost), also
# with a different number of ranks and with/without ZeRO-1 (the optimizer
# state is re-sharded), and ends with the parameters of an uninterrupted
# run. Torn and foreign checkpoints are refused or ignored, never half-used.
set -euo pipefail
CLUSTER_TAG=rs
. "$(dirname "$0")/../lib/cluster.sh"
"$CL" make-shard --synthetic 3000 --dim 64 --classes 10 --seed 5 --out "$T/train.shard" >/dev/null
"$CL" init --spec mlp:64-48-32-10 --seed 4 --out "$T/m0.bin" >/dev/null
COMMON=(--model "$T/m0.bin" --data "$T/train.shard" --steps 60 --batch 48 --lr 0.05
        --momentum 0.9 --seed 2 --bucket-mb 0.004)

mpi 2 "$CL" refine "${COMMON[@]}" --zero --out "$T/full.bin" >"$T/full.json" 2>/dev/null \
    || fail "uninterrupted run: $(cat "$T/full.json")"

# ---- A: np 2 + ZeRO-1, rank 1 dies at step 35; restart with np 3 + ZeRO-1
set +e
mpi 2 "$CL" refine "${COMMON[@]}" --zero --out "$T/a.bin" --checkpoint-dir "$T/ckA" \
    --checkpoint-every 10 --fail-at-step 35 --fail-rank 1 >"$T/a1.json" 2>"$T/a1.err"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "the job with a dead rank exited 0"
[ ! -e "$T/a.bin" ] || fail "a dead job wrote its output"
[ -f "$T/ckA/step-0000000030/DONE" ] || fail "no checkpoint at step 30: $(ls "$T/ckA")"
[ ! -e "$T/ckA/step-0000000040" ] || fail "checkpoint past the failure"
[ ! -e "$T/ckA/step-0000000010" ] || fail "old checkpoints not pruned (keep 2)"
# a torn checkpoint (crash while writing step 40) must be ignored
mkdir "$T/ckA/step-0000000040.tmp"
cp "$T/ckA/step-0000000030/model.bin" "$T/ckA/step-0000000040.tmp/"
mpi 3 "$CL" refine "${COMMON[@]}" --zero --out "$T/a.bin" --checkpoint-dir "$T/ckA" \
    --checkpoint-every 10 >"$T/a2.json" 2>"$T/a2.err" || fail "restart: $(cat "$T/a2.json" "$T/a2.err")"
[ "$(field resumed "$T/a2.json")" = true ] || fail "did not resume: $(cat "$T/a2.json")"
[ "$(field start_step "$T/a2.json")" = 30 ] || fail "resumed from step $(field start_step "$T/a2.json")"
[ "$(field steps_run "$T/a2.json")" = 30 ] || fail "ran $(field steps_run "$T/a2.json") steps"
"$CL" compare "$T/a.bin" "$T/full.bin" --tol 1e-5 >"$T/a.cmp" \
    || fail "restarted run (2 -> 3 ranks) differs: $(cat "$T/a.cmp")"
echo "ok  kill at 35 with np 2, resume with np 3: $(cat "$T/a.cmp")"

# ---- B: np 3 + ZeRO-1, rank 2 dies at step 25; restart with np 1 unsharded
set +e
mpi 3 "$CL" refine "${COMMON[@]}" --zero --out "$T/b.bin" --checkpoint-dir "$T/ckB" \
    --checkpoint-every 10 --fail-at-step 25 --fail-rank 2 >/dev/null 2>&1
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "B: the job with a dead rank exited 0"
ls "$T/ckB"/step-0000000020/optim-rank-2-of-3.bin >/dev/null || fail "B: no 3-way shards"
mpi 1 "$CL" refine "${COMMON[@]}" --out "$T/b.bin" --checkpoint-dir "$T/ckB" \
    --checkpoint-every 10 >"$T/b2.json" 2>/dev/null || fail "B restart: $(cat "$T/b2.json")"
[ "$(field start_step "$T/b2.json")" = 20 ] || fail "B resumed from $(field start_step "$T/b2.json")"
"$CL" compare "$T/b.bin" "$T/full.bin" --tol 1e-5 >"$T/b.cmp" \
    || fail "restarted run (3 ZeRO -> 1 unsharded) differs: $(cat "$T/b.cmp")"
echo "ok  kill at 25 with np 3, resume with np 1: $(cat "$T/b.cmp")"
ls "$T/ckB"/step-0000000060/optim-rank-0-of-1.bin >/dev/null || fail "B: no unsharded state written"

# ---- a checkpoint of another job (other learning rate) is refused
set +e
mpi 2 "$CL" refine "${COMMON[@]/0.05/0.01}" --out "$T/c.bin" --checkpoint-dir "$T/ckA" \
    >"$T/c.json" 2>/dev/null
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "foreign checkpoint: exit $rc"
grep -q '"where":"checkpoint"' "$T/c.json" || fail "foreign checkpoint: $(cat "$T/c.json")"
[ ! -e "$T/c.bin" ] || fail "foreign checkpoint: output written"

# ---- a corrupted optimizer slice is refused, and the files are left as they were
latest=$(ls -d "$T/ckA"/step-* | grep -v '\.tmp$' | tail -1)
f="$latest/optim-rank-1-of-3.bin"
sum_before=$(sha256sum "$latest"/* | sha256sum)
printf '\x55' | dd of="$f" bs=1 seek=100 conv=notrunc status=none
sum_corrupt=$(sha256sum "$latest"/* | sha256sum)
set +e
mpi 2 "$CL" refine "${COMMON[@]}" --zero --out "$T/d.bin" --checkpoint-dir "$T/ckA" \
    --steps 70 >"$T/d.json" 2>/dev/null
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "corrupt checkpoint: exit $rc"
grep -q '"code":-141' "$T/d.json" || fail "corrupt checkpoint: $(cat "$T/d.json")"
[ "$(sha256sum "$latest"/* | sha256sum)" = "$sum_corrupt" ] || fail "checkpoint files changed"
[ "$sum_before" != "$sum_corrupt" ] || fail "corruption did not change the file"
echo "cluster_restart: all passed"
