#!/usr/bin/env bash
# fedge-sim drives async mode (FedBuff) on its virtual clock: 20 devices,
# 6 slots, a buffer of 4, 5 steps, with stragglers (their updates arrive
# several versions late and are discounted, or refused past max_staleness)
# and dropout (their slots time out). The run is deterministic: the same
# model bytes and steps on 1 and 2 threads; another seed gives another model.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/sim.sh

sim_setup 20 10 --kind dirichlet --beta 0.5
printf 'version: 1\nupdate:\n  max_staleness: 2\n' >"$SIM_DIR/policy.yaml"
args=(--mode async --async-concurrency 6 --async-buffer-k 4 --async-max-versions 3 --async-slot-timeout-s 30
      --model-spec mlp:784-32-10 --rounds 5 --policy-file "$SIM_DIR/policy.yaml"
      --dropout 0.1 --stragglers 0.3 --straggler-factor 6)

sim_run a --threads 1 "${args[@]}" || sim_fail "run a"
sim_run b --threads 2 "${args[@]}" || sim_fail "run b (2 threads)"
sim_run c --threads 2 --seed 2 "${args[@]}" || sim_fail "run c (seed 2)"

[ "$(sim_summary a rounds)" = 5 ] || sim_fail "5 steps expected"
[ "$(sim_summary a aggregated)" = 5 ] || sim_fail "5 aggregated steps expected"
[ "$(sim_sql a "SELECT count(*) FROM rounds WHERE status='closed' AND n_accepted=4")" = 5 ] ||
    sim_fail "each step aggregates exactly 4 updates"
[ "$(sim_summary a late)" -gt 0 ] || sim_fail "no stale update was accepted: the stragglers did not exercise staleness"
[ "$(sim_summary a dropped)" -gt 0 ] || sim_fail "no dropout happened"
sa=$(sim_model_sha a) && sb=$(sim_model_sha b) && sc=$(sim_model_sha c) || sim_fail "no current model file"
[ "$sa" = "$sb" ] || sim_fail "1 vs 2 threads: model $sa vs $sb"
[ "$sa" != "$sc" ] || sim_fail "seed 2 gave the same model as seed 1"
strip() { grep -v '"summary"' "$SIM_DIR/$1.out" | sed -E 's/,"wall_s":[0-9.]+,"train_s":[0-9.]+//'; }
diff <(strip a) <(strip b) >/dev/null || { diff <(strip a) <(strip b) >&2; sim_fail "steps differ between 1 and 2 threads"; }
[ "$(sim_sql a "SELECT group_concat(round || ':' || device) FROM round_participants")" = \
  "$(sim_sql b "SELECT group_concat(round || ':' || device) FROM round_participants")" ] || sim_fail "admissions differ"
acc=$(sim_summary a accuracy)
echo "ok: model ${sa:0:16} on 1 and 2 threads, accuracy $acc, $(sim_summary a late) late," \
    "$(sim_sql a "SELECT count(*) FROM updates WHERE rule='staleness'") refused as stale"
