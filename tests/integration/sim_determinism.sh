#!/usr/bin/env bash
# fedge-sim is deterministic for a seed: two runs give the same final model
# bytes and the same rounds, on one thread or two, with dropout, stragglers
# arriving late and noise attackers in play; another seed gives another model.
# int8's stochastic rounding and, with DP on, the aggregator's noise are seeded
# from --seed too.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/sim.sh

sim_setup 10 10 --kind dirichlet --beta 0.5
printf 'version: 1\nupdate:\n  max_staleness: 1\n' >"$SIM_DIR/policy.yaml"
args=(--model-spec mlp:784-32-10 --rounds 6 --policy-file "$SIM_DIR/policy.yaml" --round-timeout-s 3
      --dropout 0.1 --stragglers 0.2 --straggler-factor 8 --byzantine 0.1 --attack noise --attack-scale 3)

sim_run a --threads 1 "${args[@]}" || sim_fail "run a"
sim_run b --threads 1 "${args[@]}" || sim_fail "run b"
sim_run c --threads 2 "${args[@]}" || sim_fail "run c (2 threads)"
sim_run d --threads 2 --seed 2 "${args[@]}" || sim_fail "run d (seed 2)"

[ "$(sim_summary a rounds)" = 6 ] || sim_fail "6 rounds expected"
[ "$(sim_summary a late)" -gt 0 ] || sim_fail "no late update: the stragglers did not exercise the late path"
[ "$(sim_summary a dropped)" -gt 0 ] || sim_fail "no dropout happened"
sa=$(sim_model_sha a) && sb=$(sim_model_sha b) && sc=$(sim_model_sha c) && sd=$(sim_model_sha d) ||
    sim_fail "no current model file"
[ "$sa" = "$sb" ] || sim_fail "same seed, same threads: model $sa vs $sb"
[ "$sa" = "$sc" ] || sim_fail "1 vs 2 threads: model $sa vs $sc"
[ "$sa" != "$sd" ] || sim_fail "seed 2 gave the same model as seed 1"
[ "$(sim_summary a model)" = "$(sim_summary c model)" ] || sim_fail "summaries name different models"
# every round the same: selection, counts, accuracy, virtual time (wall and training times differ)
strip() { grep -v '"summary"' "$SIM_DIR/$1.out" | sed -E 's/,"wall_s":[0-9.]+,"train_s":[0-9.]+//'; }
diff <(strip a) <(strip c) >/dev/null || { diff <(strip a) <(strip c) >&2; sim_fail "rounds differ between 1 and 2 threads"; }
[ "$(sim_sql a "SELECT group_concat(device) FROM round_participants")" = \
  "$(sim_sql c "SELECT group_concat(device) FROM round_participants")" ] || sim_fail "participants differ"

# int8 deltas: stochastic rounding, seeded per client and round
sim_run q1 --threads 1 --model-spec softmax:784-10 --rounds 3 --encoding int8 || sim_fail "int8 run 1"
sim_run q2 --threads 2 --model-spec softmax:784-10 --rounds 3 --encoding int8 || sim_fail "int8 run 2"
[ "$(sim_sql q1 "SELECT DISTINCT encoding FROM updates")" = int8 ] || sim_fail "the int8 run sent other encodings"
[ "$(sim_model_sha q1)" = "$(sim_model_sha q2)" ] || sim_fail "int8 rounding not reproducible across threads"

printf 'version: 1\nprivacy:\n  enabled: true\n  clip_norm: 1.0\n  noise_multiplier: 0.5\n  epsilon_budget: 1000\n  delta: 1e-5\n' \
    >"$SIM_DIR/dp.yaml"
dp=(--model-spec softmax:784-10 --rounds 3 --policy-file "$SIM_DIR/dp.yaml")
sim_run dp1 --threads 1 "${dp[@]}" || sim_fail "DP run 1"
sim_run dp2 --threads 2 "${dp[@]}" || sim_fail "DP run 2"
[ "$(sim_sql dp1 "SELECT count(*) FROM dp_ledger")" = 3 ] || sim_fail "DP was not applied (no ledger rows)"
s1=$(sim_model_sha dp1) && s2=$(sim_model_sha dp2) || sim_fail "no DP model file"
[ "$s1" = "$s2" ] || sim_fail "DP noise not reproducible: model $s1 vs $s2"
echo "ok: model ${sa:0:16} on 1 and 2 threads, seed 2 ${sd:0:16}, DP ${s1:0:16} twice"
