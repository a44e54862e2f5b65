#!/usr/bin/env bash
# fedge-audit and fedge-keygen as an operator and a compliance officer use
# them, on a real fixture database (test_audit --make-fixture: three rounds,
# a revoked device, a refused round, signed heads, model files). Checks exit
# codes, that --json output parses and says the right things, Markdown and
# CSV reports, one-line errors for a missing or non-fedge database, tamper
# detection through the CLI (sqlite3 edits on copies), a mixed log (canon
# formats FCN1 then FCN2) read by every command, and keygen's files.
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=$(cd "${FEDGE_BUILD:-build/native}" && pwd)
AUDIT=$BUILD/bin/fedge-audit
KEYGEN=$BUILD/bin/fedge-keygen
FIXTURE=$BUILD/tests/test_audit
T=$(mktemp -d /tmp/fedge-audit-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
# expect_rc CODE CMD...: runs CMD, output in $T/out and $T/err.
expect_rc() {
    local want=$1
    shift
    "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    if [ "$rc" -ne "$want" ]; then
        cat "$T/out" "$T/err" >&2
        fail "'$*' exited $rc, want $want"
    fi
}
out_has() { grep -qF -- "$1" "$T/out" || { cat "$T/out" >&2; fail "output lacks '$1'"; }; }
err_is_one_line() {
    [ "$(wc -l <"$T/err")" -eq 1 ] || { cat "$T/err" >&2; fail "error should be one line"; }
    grep -qF -- "$1" "$T/err" || { cat "$T/err" >&2; fail "error lacks '$1'"; }
}
json_check() { # python expression over d (the parsed output)
    python3 -c "import json,sys; d=json.load(open('$T/out')); sys.exit(0 if ($1) else 1)" ||
        { cat "$T/out" >&2; fail "JSON check failed: $1"; }
}

for b in "$AUDIT" "$KEYGEN" "$FIXTURE"; do [ -x "$b" ] || fail "$b not built"; done
"$FIXTURE" --make-fixture "$T/fx" >"$T/fx.txt" || fail "cannot build the fixture"
DB=$T/fx/fedge.db
PUB=$T/fx/keys/aggregator.pub
MODELS=$T/fx/models
refine=$(awk '$1 == "model_refine" { print $2 }' "$T/fx.txt")
round1=$(awk '$1 == "model_round1" { print $2 }' "$T/fx.txt")
A=("$AUDIT" --db "$DB" --pubkey "$PUB" --models "$MODELS")

# ---- an untouched database --------------------------------------------------
expect_rc 0 "${A[@]}" verify
out_has "OK: every check holds"
out_has "signed heads   3"
# Without --models relative model paths start from the database's directory.
(cd / && "$AUDIT" --db "$DB" --pubkey "$PUB" verify >/dev/null) || fail "verify from / without --models"
expect_rc 0 "${A[@]}" --json verify
json_check "d['ok'] is True and d['entries'] == 24 and d['failures'] == [] and d['last_head']['round'] == 3"

expect_rc 0 "${A[@]}" --json lineage "${refine:0:8}"
json_check "d['version'] == '$refine' and sorted(d['devices']) == ['dev-1','dev-2','dev-3','dev-5'] and d['total_samples'] == 2480 and d['refinements'] == 1 and [m['kind'] for m in d['models']] == ['refine','aggregate','aggregate','init']"
expect_rc 0 "${A[@]}" lineage "${refine:0:8}"
out_has "4 devices contributed 2480 samples over 2 aggregation rounds; 1 refinement"
# aligned columns: in the contributions table every row's device starts under "device"
awk '/^updates that entered/ { on = 1; next }
     on && !col { col = index($0, "device"); next }
     on && NF { rows++; if (substr($0, col - 1, 1) != " " || substr($0, col, 4) != "dev-") bad = 1 }
     END { exit !(col > 0 && rows == 5 && !bad) }' "$T/out" || fail "lineage table columns not aligned"

expect_rc 0 "${A[@]}" --json lineage --device dev-3
json_check "d['status'] == 'revoked' and len(d['influenced_models']) == 3 and d['influenced_models'][0]['version'] == '$round1' and any(u['rule'] == 'device_status' for u in d['updates'])"
expect_rc 0 "${A[@]}" lineage --device dev-3
out_has "device dev-3: region eu, status revoked"

expect_rc 0 "${A[@]}" --json privacy
json_check "d['policy']['dp_enabled'] and abs(d['global']['epsilon_spent'] - 5.1159) < 1e-3 and d['global']['epsilon_budget'] == 6 and d['refused_rounds'][0]['round'] == 3 and len(d['devices']) == 5"
expect_rc 0 "${A[@]}" privacy
out_has "global: epsilon spent 5.116 of budget 6"

expect_rc 0 "${A[@]}" --json decisions --rejected
json_check "sorted(x['rule'] for x in d['decisions']) == ['anomaly','device_status','privacy_budget','region']"
expect_rc 0 "${A[@]}" --json decisions --round 2 --device dev-3
json_check "len(d['decisions']) == 1 and d['decisions'][0]['reason'] == 'device dev-3 was revoked; its updates are refused'"
expect_rc 0 "${A[@]}" decisions
out_has "8 update decisions: 4 accepted, 1 clipped, 3 rejected"

expect_rc 0 "${A[@]}" report
out_has "## Verification"
out_has "**OK**"
out_has "### dev-3"
expect_rc 0 "${A[@]}" report --format json
json_check "d['verify']['ok'] and d['lineage']['version'] == '$refine' and len(d['revoked_devices']) == 1"
expect_rc 0 "${A[@]}" report --format csv
python3 - "$T/out" <<'EOF' || fail "CSV report does not parse into its sections"
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1], newline="")) if r]
sections = {r[0] for r in rows if r[0] != "section"}
need = {"summary", "verify", "privacy_rounds", "privacy_devices", "decisions", "lineage_models"}
sys.exit(0 if need <= sections else 1)
EOF
# html (audit_html.sh renders it): the fixture's refinement and its refused updates
expect_rc 0 "${A[@]}" report --format html
out_has 'data-round="2" data-status="closed" data-accuracy="0.6" data-refined-accuracy="0.8"'
out_has '<table id="refused-data"'
out_has 'class="ok">OK'
expect_rc 2 "${A[@]}" report --format pdf
err_is_one_line "--format must be md, json, csv or html, not 'pdf'"
# Without --pubkey the report still runs and says verification was not run.
expect_rc 0 "$AUDIT" --db "$DB" report
out_has "Not run: give \`--pubkey\`"

# ---- clear errors, exit 2 ---------------------------------------------------
expect_rc 2 "$AUDIT" --db "$T/missing.db" privacy
err_is_one_line "cannot read database $T/missing.db: No such file or directory"
[ ! -e "$T/missing.db" ] || fail "a missing database must not be created"
echo "not a database" >"$T/text.db"
expect_rc 2 "$AUDIT" --db "$T/text.db" verify --pubkey "$PUB"
err_is_one_line "is not a fedge database: not an SQLite file"
sqlite3 "$T/other.db" "CREATE TABLE t(x)"
expect_rc 2 "$AUDIT" --db "$T/other.db" --json privacy
err_is_one_line "an SQLite file without fedge's schema marker"
: >"$T/empty.db"
expect_rc 2 "$AUDIT" --db "$T/empty.db" decisions
err_is_one_line "the file is empty"
[ ! -s "$T/empty.db" ] || fail "an empty file must stay empty"
expect_rc 2 "$AUDIT" --db "$DB" verify
err_is_one_line "verify needs --pubkey"
expect_rc 2 "$AUDIT" --db "$DB" --pubkey "$T/nope.pem" verify
err_is_one_line "cannot read public key"
expect_rc 2 "$AUDIT" --db "$DB" lineage ffff
err_is_one_line "no model version ffff"
expect_rc 2 "$AUDIT" --db "$DB" frobnicate
expect_rc 2 "$AUDIT" --db "$DB" decisions --round minus-one
expect_rc 2 "$AUDIT" privacy
expect_rc 0 "$AUDIT" --help

# ---- tampering, each on a fresh copy -------------------------------------------
tamper() { # name, sql (may be empty)
    rm -rf "$T/$1"
    cp -r "$T/fx" "$T/$1"
    [ -z "$2" ] || sqlite3 "$T/$1/fedge.db" "$2" || fail "sqlite3 $2"
}
tamper changed "UPDATE updates SET n_samples = 9999 WHERE id = 2"
expect_rc 1 "$AUDIT" --db "$T/changed/fedge.db" --pubkey "$PUB" --models "$T/changed/models" verify
out_has "row_modified: updates row 2 was modified after audit entry"
out_has "column n_samples is 9999 in the table but 450 in the audit log"
expect_rc 1 "$AUDIT" --db "$T/changed/fedge.db" --pubkey "$PUB" --models "$T/changed/models" --json verify
json_check "d['ok'] is False and d['failures'][0]['kind'] == 'row_modified' and d['failures'][0]['table'] == 'updates' and d['failures'][0]['row_key'] == '2'"
expect_rc 1 "$AUDIT" --db "$T/changed/fedge.db" --pubkey "$PUB" --models "$T/changed/models" report
out_has "**FAILED**"

# the hash of the sealed frame (resend vs replay) is in the chain (FCN2)
tamper sealed "UPDATE updates SET sealed_sha256 = NULL WHERE id = 2"
expect_rc 1 "$AUDIT" --db "$T/sealed/fedge.db" --pubkey "$PUB" --models "$T/sealed/models" verify
out_has "row_modified: updates row 2 was modified after audit entry"
out_has "column sealed_sha256 is NULL in the table but <32 bytes"

tamper deleted "DELETE FROM updates WHERE id = 4"
expect_rc 1 "$AUDIT" --db "$T/deleted/fedge.db" --pubkey "$PUB" --models "$T/deleted/models" verify
out_has "row_deleted: updates row 4 was deleted"

tamper swapped ""
cp "$T/swapped/models/$round1.fmdl" "$T/swapped/models/$refine.fmdl"
expect_rc 1 "$AUDIT" --db "$T/swapped/fedge.db" --pubkey "$PUB" --models "$T/swapped/models" verify
out_has "file_mismatch: model ${refine:0:16}: file $T/swapped/models/$refine.fmdl has sha256"

tamper truncated "DELETE FROM audit WHERE seq > 20"
expect_rc 1 "$AUDIT" --db "$T/truncated/fedge.db" --pubkey "$PUB" --models "$T/truncated/models" verify
out_has "the chain was truncated"

# ---- a mixed log: FCN1 up to round 1, then FCN2 (an upgrade) --------------------
"$FIXTURE" --make-fixture "$T/mx" --mixed >/dev/null || fail "cannot build the mixed fixture"
[ "$(sqlite3 "$T/mx/fedge.db" "SELECT group_concat(f || ' ' || n, ', ') FROM (SELECT CAST(substr(canon, 1, 4) AS TEXT) f,
    count(*) n FROM audit GROUP BY f ORDER BY f)")" = "FCN1 10, FCN2 14" ] || fail "the mixed fixture should hold both formats"
M=("$AUDIT" --db "$T/mx/fedge.db" --pubkey "$T/mx/keys/aggregator.pub" --models "$T/mx/models")
expect_rc 0 "${M[@]}" verify
out_has "OK: every check holds"
# ... and says which rows it cannot fully cover (review19: it said nothing of them)
out_has "older canon    4 rows last logged in an older canon format (FCN1): updates.sealed_sha256 is outside"
expect_rc 0 "${M[@]}" --json verify
json_check "d['rows_older_canon'] == 4"
expect_rc 0 "${A[@]}" --json verify
json_check "d['rows_older_canon'] == 0"
# every command reads it as it reads the same log written in FCN2 alone
for cmd in "lineage ${refine:0:8}" "lineage --device dev-3" privacy decisions "report --format json"; do
    "${A[@]}" --json $cmd >"$T/one.json" 2>&1 || fail "$cmd on the FCN2 fixture"
    expect_rc 0 "${M[@]}" --json $cmd
    python3 - "$T/one.json" "$T/out" <<'EOF' || fail "$cmd differs on the mixed log"
import json, sys
def norm(d):  # what depends on the file, the key or the chain's bytes
    if isinstance(d, dict) and "verify" in d:
        for k in ("last_head", "key_anchor", "key_in_force", "rows_older_canon"):
            d["verify"].pop(k, None)
        d.pop("database", None)
        d.pop("generated_at", None)
        d["summary"] = [x for x in d.get("summary", []) if not x.get("item", "").startswith("database")]
    return d
a, b = (norm(json.load(open(f))) for f in sys.argv[1:])
sys.exit(0 if a == b else 1)
EOF
done
expect_rc 0 "${M[@]}" report --format html
out_has 'class="ok">OK'
# sealed_sha256 of a row logged in FCN2 is covered; of one logged in FCN1 it is not (docs/AUDIT.md)
cp -r "$T/mx" "$T/mx-sealed"
sqlite3 "$T/mx-sealed/fedge.db" "UPDATE updates SET sealed_sha256 = zeroblob(32) WHERE id IN (1, 5)" || fail sqlite3
expect_rc 1 "$AUDIT" --db "$T/mx-sealed/fedge.db" --pubkey "$T/mx/keys/aggregator.pub" --models "$T/mx/models" --json verify
json_check "[(f['kind'], f['row_key']) for f in d['failures']] == [('row_modified', '5')] and 'column sealed_sha256' in d['failures'][0]['message']"

# ---- keygen ---------------------------------------------------------------------
expect_rc 0 "$KEYGEN" aggregator --out "$T/k"
[ "$(stat -c %a "$T/k/aggregator.key")" = 600 ] || fail "private key must be mode 0600"
grep -q "BEGIN PUBLIC KEY" "$T/k/aggregator.pub" || fail "public key PEM expected"
expect_rc 2 "$KEYGEN" aggregator --out "$T/k"
grep -q "use --force" "$T/err" || fail "refusing to overwrite should say --force"
# Another key's public half: every signature fails.
expect_rc 1 "$AUDIT" --db "$DB" --pubkey "$T/k/aggregator.pub" --models "$MODELS" verify
out_has "does not verify with the public key"

expect_rc 0 "$KEYGEN" devices --count 5 --regions eu,us --out "$T/k/devices.keys"
[ "$(stat -c %a "$T/k/devices.keys")" = 600 ] || fail "keys file must be mode 0600"
[ "$(wc -l <"$T/k/devices.keys")" = 5 ] || fail "5 device lines expected"
grep -Evq '^dev-00[1-5] (eu|us) [0-9a-f]{64}$' "$T/k/devices.keys" && fail "bad keys line"
[ "$(cut -d' ' -f2 "$T/k/devices.keys" | tr '\n' ' ')" = "eu us eu us eu " ] ||
    fail "regions should be assigned round-robin"
[ "$(cut -d' ' -f3 "$T/k/devices.keys" | sort -u | wc -l)" = 5 ] || fail "secrets must differ"
expect_rc 2 "$KEYGEN" devices --count 2 --out "$T/k/devices.keys"
expect_rc 0 "$KEYGEN" devices --count 2 --prefix sensor- --out "$T/k/devices.keys" --force
[ "$(cut -d' ' -f1,2 "$T/k/devices.keys" | tr '\n' ' ')" = "sensor-001 eu sensor-002 eu " ] ||
    fail "--force should replace the file; default region eu"
expect_rc 2 "$KEYGEN" devices --count 2 --prefix "bad id" --out "$T/k/x.keys"
expect_rc 2 "$KEYGEN" devices --count 0 --out "$T/k/x.keys"
[ ! -e "$T/k/x.keys" ] || fail "a refused command must not write a file"

# export: one device's keys file for its edge
expect_rc 0 "$KEYGEN" export --keys "$T/k/devices.keys" --id sensor-002 --out "$T/k/sensor-002.key"
[ "$(stat -c %a "$T/k/sensor-002.key")" = 600 ] || fail "exported keys file must be mode 0600"
[ "$(cat "$T/k/sensor-002.key")" = "$(grep '^sensor-002 ' "$T/k/devices.keys")" ] ||
    fail "the exported file should hold exactly sensor-002's line"
expect_rc 0 "$KEYGEN" psk --keys "$T/k/sensor-002.key" --id sensor-002
psk_export=$(cat "$T/out")
expect_rc 0 "$KEYGEN" psk --keys "$T/k/devices.keys" --id sensor-002
[ "$(cat "$T/out")" = "$psk_export" ] || fail "the exported secret should derive the same PSK"
expect_rc 2 "$KEYGEN" export --keys "$T/k/devices.keys" --id sensor-002 --out "$T/k/sensor-002.key"
grep -q "use --force" "$T/err" || fail "export must not overwrite without --force"
expect_rc 2 "$KEYGEN" export --keys "$T/k/devices.keys" --id sensor-009 --out "$T/k/x.keys"
grep -q "has no device 'sensor-009'" "$T/err" || fail "export of an unknown device should say so"
expect_rc 2 "$KEYGEN" export --keys "$T/k/devices.keys" --id sensor-001
[ ! -e "$T/k/x.keys" ] || fail "a refused export must not write a file"

echo "audit_cli: all checks passed"
