#!/usr/bin/env bash
# The privacy accountant charges what was run: a real federation (aggregator
# + 3 edges over CoAP/DTLS, softmax:784-10, 2000-row shards, every device in
# every round so q = 1) under a DP policy with noise_multiplier 1. After 3
# rounds the policy file is rewritten with noise_multiplier 4 and the
# aggregator gets SIGHUP; once a round has closed at z = 4, DP is switched
# off the same way. Checks: each DP round's own (q, sigma) is in the audited
# privacy ledger; epsilon never falls from round to round; fedge-audit's
# epsilon equals the conversion of the per-round RDP sum computed here
# independently (q = 1: RDP(a) = a / (2 sigma^2)); the device charges are the
# same composition; and once a round ran without DP the audit says there is
# no DP guarantee (epsilon null), never epsilon 0. Then a fresh run whose
# noise is lowered while its first round is open: the budget is checked
# again at close with the settings the round is released under, so the round
# fails, nothing is charged, and the next round is refused.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 3
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 30 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"

POLICY=$FED_DIR/policy.yaml
write_policy() { # ENABLED Z [BUDGET]
    cat >"$POLICY.tmp" <<YAML
name: dp-ledger-$2
round:
  min_clients: 3
privacy:
  enabled: $1
  clip_norm: 1.0
  noise_multiplier: $2
  epsilon_budget: ${3:-1000}
  delta: 1e-5
  device_epsilon_budget: 1000
YAML
    mv "$POLICY.tmp" "$POLICY"
}
write_policy true 1

fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 8 \
    --clients-per-round 3 --round-timeout-s 60 --start-delay-s 0.5 --local-epochs 1 --lr 0.05 \
    --linger-s 3 --policy-file "$POLICY"
# The edges poll (--no-observe): a pushed round closes in milliseconds, and
# the two reloads below must land while rounds are left.
for i in 0 1 2; do
    fed_start_edge "dev-00$((i + 1))" "$FED_DIR/shards/shard-00$i.bin" --seed "$i" --no-observe
done

sql() { sqlite3 -batch -noheader -cmd ".timeout 10000" "$FED_DIR/fedge.db" "$@"; }
closed() { sql "SELECT count(*) FROM rounds WHERE status='closed'" 2>/dev/null || echo 0; }
fed_wait_for '[ "$(closed)" -ge 3 ]' 120
write_policy true 4
kill -HUP "$FED_AGG_PID"
fed_wait_for '[ "$(sql "SELECT count(*) FROM dp_ledger WHERE sigma = 4" 2>/dev/null || echo 0)" -ge 1 ]' 120
write_policy false 4
kill -HUP "$FED_AGG_PID"
fed_wait_run 240 || fed_fail "aggregator exited with an error"

[ "$(closed)" = 8 ] || fed_fail "8 closed rounds expected, got $(closed)"
grep -q "policy dp-ledger-4@" "$FED_DIR/agg.log" || fed_fail "the reload was not logged"
AUDIT=("$BIN/fedge-audit" --db "$FED_DIR/fedge.db" --pubkey "$FED_DIR/aggregator.pub")
"${AUDIT[@]}" verify >/dev/null || fed_fail "audit verify (ledger rows are audited)"
[ "$(fed_sql "SELECT count(*) FROM audit WHERE tbl='dp_ledger'")" = "$(fed_sql "SELECT count(*) FROM dp_ledger")" ] ||
    fed_fail "every ledger row should have an audit entry"
"${AUDIT[@]}" --json privacy >"$FED_DIR/privacy.json" || fed_fail "fedge-audit privacy"
"${AUDIT[@]}" privacy >"$FED_DIR/privacy.txt" || fed_fail "fedge-audit privacy (text)"
fed_sql "SELECT r.id, ifnull(l.q, ''), ifnull(l.sigma, ''), ifnull(r.epsilon, '') FROM rounds r
         LEFT JOIN dp_ledger l ON l.round = r.id ORDER BY r.id" >"$FED_DIR/ledger.txt"
fed_sql "SELECT id, epsilon_spent FROM devices ORDER BY id" >"$FED_DIR/devices.txt"

python3 - "$FED_DIR" <<'PY' || fed_fail "privacy accounting checks (above)"
import json, math, sys
d = sys.argv[1]
rows = [l.split("|") for l in open(d + "/ledger.txt").read().split()]
dp = [(int(r), float(q), float(s), float(e)) for r, q, s, e in rows if q]
nodp = [int(r) for r, q, s, e in rows if not q]
orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
def eps(sigmas):  # q = 1: RDP(a) = a / (2 sigma^2) per round, improved conversion
    best = math.inf
    for a in orders:
        rdp = sum(a / (2 * s * s) for s in sigmas)
        best = min(best, rdp - (math.log(1e-5) + math.log(a)) / (a - 1) + math.log((a - 1) / a))
    return max(best, 0.0)
bad = []
def check(ok, what):
    if not ok:
        bad.append(what)
check(all(q == 1.0 for _, q, _, _ in dp), "every device in every round: q = 1")
sig = [s for _, _, s, _ in dp]
check(sig[:3] == [1.0] * 3 and 4.0 in sig and set(sig) == {1.0, 4.0},
      "rounds 1-3 at sigma 1, then sigma 4: %s" % sig)
check(len(nodp) >= 1 and min(nodp) > max(r for r, *_ in dp), "rounds after DP off: %s" % nodp)
# each round's epsilon is the composition of the rounds so far, never falling
for i, (r, _, _, e) in enumerate(dp):
    want = eps(sig[: i + 1])
    check(abs(e - want) <= 1e-9 * want, "round %d epsilon %.12g, want %.12g" % (r, e, want))
    check(i == 0 or e >= dp[i - 1][3], "round %d epsilon fell: %.6g -> %.6g" % (r, dp[i - 1][3], e))
total = eps(sig)
after3 = dp[2][3]
old = eps([sig[-1]] * len(sig))  # every round re-priced at the last sigma: the old accountant
check(total > after3 and old < after3 / 2, "total %.4g, after 3 %.4g, re-priced %.4g" % (total, after3, old))
p = json.load(open(d + "/privacy.json"))
g = p["global"]
check(g["dp"] is False and g["epsilon"] is None, "a run with a non-DP round has no DP guarantee: %s" % g)
check(abs(g["epsilon_spent"] - total) <= 1e-9 * total, "audit epsilon_spent %s, want %.12g" % (g["epsilon_spent"], total))
check(g["dp_rounds"] == len(dp) and g["rounds_without_dp"] == len(nodp), "round counts %s" % g)
check("NO DP GUARANTEE" in g["summary"], "summary: %s" % g["summary"])
for dev in p["devices"]:
    check(dev["epsilon"] is None and dev["rounds_without_dp"] == len(nodp) and dev["dp_rounds"] == len(dp),
          "device row %s" % dev)
# the aggregator's own device charge: the same composition (every device in every DP round)
for line in open(d + "/devices.txt").read().split():
    dev, e = line.split("|")
    check(abs(float(e) - total) <= 1e-9 * total, "%s epsilon_spent %s, want %.12g" % (dev, e, total))
check("NO DP GUARANTEE" in open(d + "/privacy.txt").read(), "text output says so")
print("epsilon after 3 rounds at z=1: %.4f; after %d DP rounds (sigma %s): %.4f; re-priced at z=%g: %.4f"
      % (after3, len(dp), sig, total, sig[-1], old))
for b in bad:
    print("FAIL:", b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY

# A run that never had DP: the audit says no guarantee applies, not epsilon 0.
cp "$FED_DIR/fedge.db" "$FED_DIR/nodp.db"
sqlite3 "$FED_DIR/nodp.db" "DELETE FROM dp_ledger; UPDATE meta SET value='0' WHERE key='policy_dp_enabled'" ||
    fed_fail "sqlite3"
"$BIN/fedge-audit" --db "$FED_DIR/nodp.db" --json privacy >"$FED_DIR/nodp.json" || fed_fail "privacy on the no-DP copy"
python3 -c "
import json, sys
g = json.load(open('$FED_DIR/nodp.json'))['global']
sys.exit(0 if g['dp'] is False and g['epsilon'] is None and g['epsilon_spent'] is None
         and g['rounds_without_dp'] == 8 and 'NO DP GUARANTEE' in g['summary'] else 1)" ||
    { cat "$FED_DIR/nodp.json" >&2; fed_fail "no-DP run must report no guarantee"; }
"$BIN/fedge-audit" --db "$FED_DIR/nodp.db" privacy | grep -q "epsilon is undefined, not 0" ||
    fed_fail "text output of the no-DP run"

# ---- the budget at close: z 4 admitted round 1 (epsilon ~1.0 of 3), z 0.5
# (epsilon ~10.7 for one round) is what it would be released under.
mv "$FED_DIR/fedge.db" "$FED_DIR/run1.db"
rm -f "$FED_DIR"/fedge.db-*
write_policy true 4 3
FED_PORT=$(fed_free_port)
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 3 \
    --clients-per-round 3 --round-timeout-s 60 --start-delay-s 0.5 --linger-s 3 --policy-file "$POLICY"
fed_wait_for '[ "$(sql "SELECT count(*) FROM rounds WHERE status='"'open'"'" 2>/dev/null || echo 0)" -ge 1 ]' 60
write_policy true 0.5 3
kill -HUP "$FED_AGG_PID"
fed_wait_for 'grep -q "policy dp-ledger-0.5@" "$FED_DIR/agg.log"' 30
for i in 0 1 2; do
    fed_start_edge "dev-00$((i + 1))" "$FED_DIR/shards/shard-00$i.bin" --seed "$i"
done
fed_wait_run 120
rc=$?
[ "$rc" = 3 ] || fed_fail "a run in which no round aggregated exits 3, got $rc"
[ "$(sql "SELECT status FROM rounds WHERE id = 1")" = failed ] || fed_fail "round 1 must fail at close"
sql "SELECT reason FROM rounds WHERE id = 1" | grep -q "^privacy_budget: this round would bring epsilon to" ||
    fed_fail "round 1's reason: $(sql "SELECT reason FROM rounds WHERE id = 1")"
[ "$(sql "SELECT count(*) FROM dp_ledger")" = 0 ] || fed_fail "a round not released is not charged"
[ "$(sql "SELECT count(*) FROM devices WHERE epsilon_spent <> 0")" = 0 ] || fed_fail "no device is charged"
[ "$(sql "SELECT count(*) FROM events WHERE kind = 'round_rejected' AND rule = 'privacy_budget' AND round = 1")" = 1 ] ||
    fed_fail "the refusal at close is an audited event"
[ "$(sql "SELECT status FROM rounds WHERE id = 2")" = refused ] || fed_fail "round 2 must be refused at admission"
"${AUDIT[@]}" verify >/dev/null || fed_fail "audit verify of the refused run"

# ---- a log from before the ledger (run 1 without its dp_ledger table): its
# DP rounds cannot be re-priced, so no further DP round is admitted.
mv "$FED_DIR/fedge.db" "$FED_DIR/run2.db"
rm -f "$FED_DIR"/fedge.db-*
# how many DP rounds run 1 closed depends on when the reloads landed
dp_rounds=$(sqlite3 "$FED_DIR/run1.db" "SELECT count(*) FROM dp_ledger") || fed_fail "sqlite3"
[ "$dp_rounds" -ge 2 ] || fed_fail "run 1 should have closed DP rounds, got $dp_rounds"
sqlite3 "$FED_DIR/run1.db" "DROP TABLE dp_ledger" || fed_fail "sqlite3"
mv "$FED_DIR/run1.db" "$FED_DIR/fedge.db"
write_policy true 4
FED_PORT=$(fed_free_port)
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 12 \
    --clients-per-round 3 --round-timeout-s 60 --linger-s 0 --policy-file "$POLICY"
fed_wait_pid "$FED_AGG_PID" 60
[ "$(sql "SELECT status FROM rounds WHERE id = 9")" = refused ] || fed_fail "round 9 must be refused"
sql "SELECT reason FROM rounds WHERE id = 9" | grep -q "^$dp_rounds DP round(s) closed before this log had a privacy ledger" ||
    fed_fail "round 9's reason: $(sql "SELECT reason FROM rounds WHERE id = 9")"
echo ok
