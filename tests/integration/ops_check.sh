#!/usr/bin/env bash
# Operating without starting a run: fedge-aggregator --check, fedge-policy
# validate, and fedge-audit replay --policy, on the log of a real short
# federation (aggregator + 3 edges over CoAP/DTLS, softmax:784-10, 2 rounds
# with every device, DP on at z = 1, signed audit heads).
#   --check: ok on the good setup (also while the daemon runs, its instance
#   lock held), then one error line, exit 1, for a short secret, a device
#   listed twice, an
#   unknown config key, a bad policy line, another signing key, a newer
#   schema, a model store without the current model and a file that is not
#   a database; exit 2 for a bad option. The
#   database's bytes and mtime never change.
#   fedge-policy validate: the daemon's loader; the normalised output loads
#   back to the same settings; a bad line is named.
#   replay: under the recorded policy nothing changes and epsilon equals the
#   recorded one; a smaller DP clip_norm changes every clip and no epsilon;
#   under max_norm (reject) between the recorded norms exactly
#   the updates above it flip to rejected by max_norm; max_norm just under the
#   largest norm leaves its round 2 updates, fewer than the recorded
#   min_updates 3: that round fails as the daemon fails it (on a copy without
#   the config event: still closed, and said in the assumptions); min_clients 4 fails
#   every round by k_anonymity; the anomaly rule's z-score and cosine flag
#   the updates computed here from the stored deltas; z = 2 with a budget that holds one round
#   gives round 1 the epsilon of the sampled Gaussian at q = 1 (computed
#   here: RDP(a) = a / (2 z^2)) and refuses round 2 by privacy_budget; on a
#   hostile copy an unreadable stored delta is refused by integrity.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 3
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 30 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
D=$FED_DIR
DB=$D/fedge.db

cat >"$D/policy.yaml" <<'YAML'
name: recorded
privacy:
  enabled: true
  clip_norm: 1.0
  noise_multiplier: 1.0
  epsilon_budget: 1000
  delta: 1e-5
YAML
mkdir -p "$D/models"
cat >"$D/agg.conf" <<CONF
keys_file = $D/keys
db = $DB
model_dir = $D/models
signing_key = $D/aggregator.key
policy_file = $D/policy.yaml
model_spec = softmax:784-10
test_data = $D/test.bin
listen = 127.0.0.1:$FED_PORT
rounds = 2
clients_per_round = 3
round_timeout_s = 60
start_delay_s = 0.3
local_epochs = 1
lr = 0.05
min_updates = 3
linger_s = 4
CONF

fail() { fed_fail "$*"; }
# expect_rc CODE CMD...: runs CMD, output in $D/out and $D/err.
expect_rc() {
    local want=$1
    shift
    "$@" >"$D/out" 2>"$D/err"
    local rc=$?
    [ "$rc" -eq "$want" ] || { cat "$D/out" "$D/err" >&2; fail "'$*' exited $rc, want $want"; }
}
out_has() { grep -qF -- "$1" "$D/out" || { cat "$D/out" >&2; fail "output lacks '$1'"; }; }
CHECK=("$BIN/fedge-aggregator" --check)

# ---- --check before the first start: no database yet ------------------------
expect_rc 0 "${CHECK[@]}" --config "$D/agg.conf"
out_has "database: ok ($DB does not exist yet"
[ ! -e "$DB" ] || fail "--check created the database"

# ---- the run ------------------------------------------------------------------
"$BIN/fedge-aggregator" --config "$D/agg.conf" >>"$D/agg.log" 2>&1 &
FED_AGG_PID=$!
FED_PIDS+=("$FED_AGG_PID")
for i in 0 1 2; do
    fed_start_edge "dev-00$((i + 1))" "$D/shards/shard-00$i.bin" --seed "$i"
done
sql() { sqlite3 -batch -noheader -cmd ".timeout 10000" "$DB" "$@"; }
fed_wait_for '[ "$(sql "SELECT count(*) FROM rounds WHERE status=\"closed\"" 2>/dev/null || echo 0)" = 2 ]' 60
# lingering: the daemon holds the instance lock; --check reads beside it
kill -0 "$FED_AGG_PID" 2>/dev/null || fail "the daemon should still linger"
expect_rc 0 "${CHECK[@]}" --config "$D/agg.conf"
out_has "database: ok ($DB: schema 3"
kill -0 "$FED_AGG_PID" 2>/dev/null || fail "the daemon stopped while --check ran"
fed_wait_run 30 || fail "aggregator exited with an error"

# ---- --check on the finished log: nothing is written ---------------------------
before=$(sha256sum "$DB" | cut -d' ' -f1)$(stat -c %Y.%s "$DB")
expect_rc 0 "${CHECK[@]}" --config "$D/agg.conf"
[ "$(grep -c ': ok' "$D/out")" = 6 ] || { cat "$D/out" >&2; fail "6 ok lines expected"; }
out_has "keys_ledger: ok (the keys file is the last audited keys state)"
out_has "signing_key: ok ($D/aggregator.key: signed the log's last signed head)"
out_has "rounds, last round 2 closed"
out_has "policy: ok ($D/policy.yaml: recorded@"

check_fails() { # WHAT TEXT ARGS...: exit 1 and the named check's error line has TEXT
    local what=$1 text=$2
    shift 2
    expect_rc 1 "${CHECK[@]}" --config "$D/agg.conf" "$@"
    grep -qF -- "$what: error: $text" "$D/out" || { cat "$D/out" >&2; fail "no '$what: error: $text'"; }
}
# a keys line whose secret is short
{ cat "$D/keys"; echo "dev-009 eu 00ff"; } >"$D/keys-bad" && chmod 600 "$D/keys-bad"
check_fails keys "$D/keys-bad:$(wc -l <"$D/keys-bad"): secret must be 64 hex digits" --keys-file "$D/keys-bad"
# a device listed twice
{ cat "$D/keys"; grep -m1 '^dev-001 ' "$D/keys"; } >"$D/keys-dup" && chmod 600 "$D/keys-dup"
check_fails keys "$D/keys-dup:$(wc -l <"$D/keys-dup"): device dev-001 listed twice" --keys-file "$D/keys-dup"
# an unknown key in the config file
{ cat "$D/agg.conf"; echo "max_nrom = 3"; } >"$D/agg-bad.conf"
expect_rc 1 "${CHECK[@]}" --config "$D/agg-bad.conf"
grep -qF "config: error: $D/agg-bad.conf:$(wc -l <"$D/agg-bad.conf"): unknown key 'max_nrom'" "$D/out" || { cat "$D/out" >&2; fail "unknown key"; }
# a bad policy line
printf 'name: bad\nupdate:\n  max_norm: ten\n' >"$D/policy-bad.yaml"
check_fails policy "$D/policy-bad.yaml:3: update.max_norm: expected a number" --policy-file "$D/policy-bad.yaml"
# a policy no round could satisfy with 3 devices
printf 'round:\n  min_clients: 4\n' >"$D/policy-k4.yaml"
check_fails policy "$D/policy-k4.yaml (policy-k4@" --policy-file "$D/policy-k4.yaml"
out_has "): policy round.min_clients 4 is more than clients_per_round 3: no round could aggregate"
# another signing key
mkdir -p "$D/other" && "$BIN/fedge-keygen" aggregator --out "$D/other" >/dev/null || fail "keygen"
check_fails signing_key "signing_key $D/other/aggregator.key did not sign this log" --signing-key "$D/other/aggregator.key"
# a log a schema 2 build wrote: read as it is; a start marks it 3 (review19 F1)
cp "$DB" "$D/schema2.db" && sqlite3 "$D/schema2.db" "UPDATE meta SET value='2' WHERE key='fedge_schema'" || fail "sqlite3"
expect_rc 0 "${CHECK[@]}" --config "$D/agg.conf" --db "$D/schema2.db"
out_has "database: ok ($D/schema2.db: schema 2, audit head seq"
out_has "(schema 2: a start marks it 3, after which fedge builds of schema 2 refuse it)"
# a log written by a newer schema
cp "$DB" "$D/newer.db" && sqlite3 "$D/newer.db" "UPDATE meta SET value='4' WHERE key='fedge_schema'" || fail "sqlite3"
check_fails database "$D/newer.db has schema version 4, newer than this build reads (3)" --db "$D/newer.db"
# a model store without the log's current model
mkdir -p "$D/empty-models"
check_fails database "$DB: current model $D/empty-models/" --model-dir "$D/empty-models"
# a file that is not a database
echo "not a database" >"$D/text.db"
check_fails database "$D/text.db is not a fedge database: not an SQLite file" --db "$D/text.db"
# a bad option is a usage error
expect_rc 2 "${CHECK[@]}" --config "$D/agg.conf" --no-such-key 1
[ "$before" = "$(sha256sum "$DB" | cut -d' ' -f1)$(stat -c %Y.%s "$DB")" ] || fail "--check changed the database"

# ---- fedge-policy validate -------------------------------------------------------
expect_rc 0 "$BIN/fedge-policy" validate "$D/policy.yaml"
out_has "# $D/policy.yaml: ok recorded@"
out_has "  noise_multiplier: 1"
grep -v '^#' "$D/out" >"$D/normalised.yaml"
expect_rc 0 "$BIN/fedge-policy" show "$D/normalised.yaml"
tail -n 1 "$D/out" >"$D/summary2"
expect_rc 0 "$BIN/fedge-policy" show "$D/policy.yaml"
[ "$(tail -n 1 "$D/out" | cut -d: -f2-)" = "$(cut -d: -f2- "$D/summary2")" ] || fail "the normalised policy has other settings"
expect_rc 1 "$BIN/fedge-policy" validate "$D/policy-bad.yaml"
grep -qF "$D/policy-bad.yaml:3: update.max_norm: expected a number" "$D/err" || { cat "$D/err" >&2; fail "validate bad"; }
expect_rc 2 "$BIN/fedge-policy" validate

# ---- replay --------------------------------------------------------------------------
A=("$BIN/fedge-audit" --db "$DB")
expect_rc 0 "${A[@]}" replay --policy "$D/policy.yaml" --format json
cp "$D/out" "$D/same.json"
python3 - "$D/same.json" <<'PY' || fail "replay under the recorded policy should change nothing"
import json, sys
d = json.load(open(sys.argv[1]))
s = d["summary"]
assert s["accepted_to_rejected"] == 0 and s["rejected_to_accepted"] == 0 and s["clipping_changed"] == 0, s
assert s["rounds_changed"] == 0 and d["changes"] == [], d
assert abs(s["epsilon_recorded"] - s["epsilon_replayed"]) < 1e-9, s
assert s["rounds_with_recorded_config"] == 2, s
assert any("the one recorded (an audited config event)" in a for a in d["assumptions"]), d["assumptions"]
PY
# max_norm between the recorded norms, action reject
norms=$(sql "SELECT id || ' ' || norm FROM updates ORDER BY norm")
mid=$(echo "$norms" | awk '{ n[NR] = $2 } END { printf "%.9g", (n[3] + n[4]) / 2 }')
above=$(echo "$norms" | awk -v m="$mid" '$2 > m { print $1 }' | sort -n | tr '\n' ' ')
cat >"$D/strict.yaml" <<YAML
name: strict
update:
  max_norm: $mid
  norm_action: reject
privacy:
  enabled: true
  clip_norm: 1.0
  noise_multiplier: 1.0
  epsilon_budget: 1000
  delta: 1e-5
YAML
expect_rc 0 "${A[@]}" replay --policy "$D/strict.yaml" --format json
python3 - "$D/out" "$above" <<'PY' || fail "max_norm replay"
import json, sys
d = json.load(open(sys.argv[1]))
want = sorted(int(x) for x in sys.argv[2].split())
flipped = sorted(c["update"] for c in d["changes"] if c["replayed"] == "rejected (max_norm)" and c["recorded"].startswith("clipped"))
assert want and flipped == want, (flipped, want)
assert d["summary"]["accepted_to_rejected"] == len(want), d["summary"]
PY
# max_norm just under the largest norm: its round keeps 2 updates, fewer than
# the recorded min_updates 3, and fails as the round close fails it
top=$(sql "SELECT id || ' ' || round || ' ' || norm FROM updates ORDER BY norm DESC LIMIT 2")
read -r top_id top_round top_norm second_norm <<<"$(echo $top | awk '{ print $1, $2, $3, $6 }')"
sed "s/max_norm: .*/max_norm: $(python3 -c "print(($top_norm + $second_norm) / 2)")/; s/name: strict/name: top1/" \
    "$D/strict.yaml" >"$D/top1.yaml"
expect_rc 0 "${A[@]}" replay --policy "$D/top1.yaml" --format json
python3 - "$D/out" "$top_id" "$top_round" <<'PY' || fail "min_updates replay"
import json, sys
d = json.load(open(sys.argv[1])); top, rnd = int(sys.argv[2]), int(sys.argv[3])
assert [(c["update"], c["replayed"]) for c in d["changes"]] == [(top, "rejected (max_norm)")], d["changes"]
for r in d["rounds"]:
    if r["round"] == rnd:
        assert (r["replayed"], r["accepted_replayed"], r["changed"]) == ("failed", 2, "yes"), r
        assert r["note"] == "2 usable updates, fewer than min_updates 3", r
    else:
        assert (r["replayed"], r["accepted_replayed"], r["changed"]) == ("closed", 3, "no"), r
PY
# a log without the config event (as before it was recorded): the round stays
# closed, and the assumptions say why
cp "$DB" "$D/noconfig.db" && sqlite3 "$D/noconfig.db" "DELETE FROM events WHERE kind = 'config'" || fail "sqlite3"
expect_rc 0 "$BIN/fedge-audit" --db "$D/noconfig.db" replay --policy "$D/top1.yaml" --format json
python3 - "$D/out" "$top_round" <<'PY' || fail "replay without a recorded configuration"
import json, sys
d = json.load(open(sys.argv[1])); rnd = int(sys.argv[2])
assert d["summary"]["rounds_with_recorded_config"] == 0, d["summary"]
r = [x for x in d["rounds"] if x["round"] == rnd][0]
assert (r["replayed"], r["accepted_replayed"]) == ("closed", 2), r
assert any(a.startswith("rounds without a recorded configuration") for a in d["assumptions"]), d["assumptions"]
PY
expect_rc 0 "${A[@]}" replay --policy "$D/strict.yaml"
out_has "| rejected (max_norm) |"
out_has "## Assumptions"
# a smaller DP clipping norm: every update is clipped to 0.5 instead of 1, and
# epsilon (same z, same q) does not move
printf 'name: c05\nprivacy:\n  enabled: true\n  clip_norm: 0.5\n  noise_multiplier: 1.0\n  epsilon_budget: 1000\n' >"$D/c05.yaml"
expect_rc 0 "${A[@]}" replay --policy "$D/c05.yaml" --format json
python3 -c "
import json; d = json.load(open('$D/out')); s = d['summary']; c = d['changes']
assert s['clipping_changed'] == 6 and s['rounds_changed'] == 0 and len(c) == 6, s
assert all(abs(x['norm_after_recorded'] - 1) < 1e-5 and abs(x['norm_after'] - 0.5) < 1e-12 for x in c), c
assert all(x['recorded'] == x['replayed'] == 'clipped (dp_clip)' for x in c), c" || fail "clip_norm replay"
# min_clients 4 of 3 devices: every round fails by k_anonymity
printf 'name: k4\nround:\n  min_clients: 4\nprivacy:\n  enabled: true\n' >"$D/k4.yaml"
expect_rc 0 "${A[@]}" replay --policy "$D/k4.yaml" --format json
python3 - "$D/out" <<'PY' || fail "min_clients replay"
import json, sys
d = json.load(open(sys.argv[1]))
r = d["rounds"]
assert [x["replayed"] for x in r] == ["failed", "failed"], r
assert all(x["note"].startswith("k_anonymity") for x in r), r
assert all(x["epsilon_replayed"] is None for x in r), r
PY
# the anomaly rule without DP, on the recorded pre-clip norms and the stored
# deltas' directions: thresholds between the values computed here flag
# exactly the updates computed here (z-score first, then cosine)
sql "SELECT id, round, norm, hex(delta) FROM updates ORDER BY id" >"$D/rows.txt"
python3 - "$D/rows.txt" >"$D/anomaly.txt" <<'PY' || fail "anomaly expectations"
import math, struct, sys
rows = {}
for line in open(sys.argv[1]):
    i, r, n, h = line.strip().split("|")
    b = bytes.fromhex(h)[64:]
    v = struct.unpack("<%df" % (len(b) // 4), b)
    k = float(n) / math.sqrt(sum(x * x for x in v))
    rows.setdefault(int(r), []).append((int(i), float(n), [x * k for x in v]))
zs, coss = [], []
for r, us in rows.items():
    for a, (i, n, d) in enumerate(us):
        o = [u[1] for b, u in enumerate(us) if b != a]
        m = sum(o) / len(o)
        sd = math.sqrt(sum((x - m) ** 2 for x in o) / (len(o) - 1))
        zs.append(((n - m) / max(sd, 0.05 * m), i))
        rest = [sum(u[2][e] for b, u in enumerate(us) if b != a) for e in range(len(d))]
        coss.append((sum(x * y for x, y in zip(d, rest)) / (n * math.sqrt(sum(x * x for x in rest))), i))
zs.sort(); coss.sort()
print("%.9g %d" % ((zs[-1][0] + zs[-2][0]) / 2, zs[-1][1]))
print("%.9g %d" % ((coss[0][0] + coss[1][0]) / 2, coss[0][1]))
PY
{ read -r zt zid; read -r ct cid; } <"$D/anomaly.txt"
printf 'name: zs\nanomaly:\n  enabled: true\n  min_updates: 3\n  max_norm_z: %s\n  min_cosine: -1\n' "$zt" >"$D/z.yaml"
expect_rc 0 "${A[@]}" replay --policy "$D/z.yaml" --format json
python3 -c "
import json, sys; d = json.load(open('$D/out'))
f = [c for c in d['changes'] if c['replayed'] == 'rejected (anomaly)']
assert [c['update'] for c in f] == [$zid] and 'norm z-score' in f[0]['reason'], d['changes']" || fail "anomaly z replay"
printf 'name: cos\nanomaly:\n  enabled: true\n  min_updates: 3\n  max_norm_z: 1e6\n  min_cosine: %s\n' "$ct" >"$D/cos.yaml"
expect_rc 0 "${A[@]}" replay --policy "$D/cos.yaml" --format json
python3 -c "
import json, sys; d = json.load(open('$D/out'))
f = [c for c in d['changes'] if c['replayed'] == 'rejected (anomaly)']
assert [c['update'] for c in f] == [$cid] and 'cosine' in f[0]['reason'], d['changes']" || fail "anomaly cosine replay"
# z = 2, a budget that holds one round (q = 1: every device is selected)
python3 - >"$D/eps.txt" <<'PY'
import math
orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
def eps(rounds, z, delta=1e-5):
    return min(max(0.0, rounds * a / (2 * z * z) - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a))
               for a in orders)
print(f"{eps(1, 2.0):.12g} {eps(2, 2.0):.12g}")
PY
read -r eps1 eps2 <"$D/eps.txt"
budget=$(python3 -c "print(($eps1 + $eps2) / 2)")
printf 'name: tight\nprivacy:\n  enabled: true\n  clip_norm: 1.0\n  noise_multiplier: 2.0\n  epsilon_budget: %s\n  delta: 1e-5\n' \
    "$budget" >"$D/tight.yaml"
expect_rc 0 "${A[@]}" replay --policy "$D/tight.yaml" --format json
python3 - "$D/out" "$eps1" "$D/same.json" <<'PY' || fail "DP replay"
import json, sys
d = json.load(open(sys.argv[1])); eps1 = float(sys.argv[2]); same = json.load(open(sys.argv[3]))
r = d["rounds"]
assert r[0]["replayed"] == "closed" and abs(r[0]["epsilon_replayed"] - eps1) < 1e-6 * eps1, (r[0], eps1)
assert abs(r[0]["epsilon_recorded"] - same["rounds"][0]["epsilon_recorded"]) < 1e-12
assert r[0]["epsilon_recorded"] > r[0]["epsilon_replayed"], r[0]  # z = 1 recorded costs more
assert r[1]["replayed"] == "refused" and r[1]["note"].startswith("privacy_budget"), r[1]
assert all(c["replayed"] == "rejected (privacy_budget)" for c in d["changes"]), d["changes"]
assert len(d["changes"]) == r[1]["accepted_recorded"], d["changes"]
PY
# a hostile copy: an unreadable stored delta is refused as the round close
# refuses it (integrity), a NULL text column is read as empty
cp "$DB" "$D/hostile.db" && sqlite3 "$D/hostile.db" "UPDATE updates SET delta = X'00ff' WHERE id = 1;
    UPDATE rounds SET reason = NULL, base_version = 'zz'" || fail "sqlite3"
expect_rc 0 "$BIN/fedge-audit" --db "$D/hostile.db" replay --policy "$D/policy.yaml" --format json
python3 -c "
import json; d = json.load(open('$D/out'))
assert [(c['update'], c['replayed']) for c in d['changes']] == [(1, 'rejected (integrity)')], d['changes']" ||
    fail "hostile replay"
expect_rc 2 "${A[@]}" replay
expect_rc 2 "${A[@]}" replay --policy "$D/policy-bad.yaml"
grep -qF "policy-bad.yaml:3: update.max_norm" "$D/err" || { cat "$D/err" >&2; fail "replay bad policy"; }
[ "$before" = "$(sha256sum "$DB" | cut -d' ' -f1)$(stat -c %Y.%s "$DB")" ] || fail "replay changed the database"
echo "PASS ops_check"
