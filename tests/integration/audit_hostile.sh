#!/usr/bin/env bash
# fedge-audit and fedge-admin against a hostile log (copies of the
# test_audit fixture altered with sqlite3):
# - a cycle in models.parent: lineage, lineage --device, report and verify
#   end promptly (bounded memory) and report the verification failure
#   lineage_cycle, exit 1;
# - text with newlines and terminal escapes in stored strings (reasons,
#   details, device ids, regions, the policy name): every output prints it
#   escaped, so it can neither forge a table row nor drive the terminal;
# - fedge-admin refuses such a --reason and writes nothing.
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=$(cd "${FEDGE_BUILD:-build/native}" && pwd)
AUDIT=$BUILD/bin/fedge-audit
ADMIN=$BUILD/bin/fedge-admin
FIXTURE=$BUILD/tests/test_audit
T=$(mktemp -d /tmp/fedge-audit-hostile-XXXXXX)
trap 'rm -rf "$T"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
# expect_rc CODE CMD...: runs CMD with a time and memory bound (2 GB of
# address space; not under ASan, which reserves terabytes); output in
# $T/out, $T/err.
case $BUILD in *asan*) MEM_KB=unlimited ;; *) MEM_KB=2000000 ;; esac
expect_rc() {
    local want=$1 rc
    shift
    (ulimit -v "$MEM_KB"; timeout 20 "$@") >"$T/out" 2>"$T/err"
    rc=$?
    if [ "$rc" -ne "$want" ]; then
        head -c 2000 "$T/out" >&2
        cat "$T/err" >&2
        fail "'$*' exited $rc, want $want"
    fi
}
out_has() { grep -qF -- "$1" "$T/out" || { head -c 3000 "$T/out" >&2; fail "output lacks '$1'"; }; }
copy() { rm -rf "$T/$1" && cp -r "$T/fx" "$T/$1"; }

for b in "$AUDIT" "$ADMIN" "$FIXTURE"; do [ -x "$b" ] || fail "$b not built"; done
"$FIXTURE" --make-fixture "$T/fx" >"$T/fx.txt" || fail "cannot build the fixture"
PUB=$T/fx/keys/aggregator.pub
init=$(awk '$1 == "model_init" { print $2 }' "$T/fx.txt")
round1=$(awk '$1 == "model_round1" { print $2 }' "$T/fx.txt")
refine=$(awk '$1 == "model_refine" { print $2 }' "$T/fx.txt")
[ -n "$init" ] && [ -n "$refine" ] || fail "fixture versions missing"

# ---- a parent cycle ------------------------------------------------------------
for kind in loop self; do
    copy "$kind"
    DB=$T/$kind/fedge.db
    if [ "$kind" = loop ]; then
        sqlite3 "$DB" "UPDATE models SET parent = '$refine' WHERE version = '$init'" || fail sqlite3
    else
        sqlite3 "$DB" "UPDATE models SET parent = version WHERE version = '$round1'" || fail sqlite3
    fi
    A=("$AUDIT" --db "$DB" --models "$T/$kind/models")
    start=$(date +%s)
    expect_rc 1 "${A[@]}" lineage "${refine:0:8}"
    out_has "FAILED: lineage_cycle: models.parent forms a cycle: "
    out_has "${round1:0:12}"
    expect_rc 1 "${A[@]}" --json lineage "${refine:0:8}"
    python3 -c "import json,sys; d=json.load(open('$T/out')); sys.exit(0 if not d['ok'] and d['failures'][0]['kind'] == 'lineage_cycle' and len(d['models']) <= 4 else 1)" ||
        fail "lineage --json should report lineage_cycle"
    expect_rc 1 "${A[@]}" lineage --device dev-1
    out_has "lineage_cycle"
    expect_rc 1 "${A[@]}" --json lineage --device dev-1
    python3 -c "import json,sys; d=json.load(open('$T/out')); v=[m['version'] for m in d['influenced_models']]; sys.exit(0 if not d['ok'] and len(v) == len(set(v)) <= 4 else 1)" ||
        fail "lineage --device --json: each model once, and lineage_cycle"
    for fmt in md json csv html; do
        expect_rc 1 "${A[@]}" report --format "$fmt"
        out_has "lineage_cycle"
    done
    expect_rc 1 "${A[@]}" --pubkey "$PUB" verify
    out_has "lineage_cycle"
    elapsed=$(($(date +%s) - start))
    [ "$elapsed" -lt 30 ] || fail "the commands on a cyclic log took ${elapsed}s"
done
# the untouched fixture has no cycle
expect_rc 0 "$AUDIT" --db "$T/fx/fedge.db" lineage "${refine:0:8}"
grep -q lineage_cycle "$T/out" && fail "lineage_cycle reported on an intact log"

# ---- hostile text in the log ------------------------------------------------------
copy evil
DB=$T/evil/fedge.db
EVIL="char(10) || '| forged | row |' || char(27) || '[2J' || char(13) || CAST(X'C29B' AS TEXT) || '31m' || CAST(X'FF' AS TEXT)"
sqlite3 "$DB" "
  UPDATE updates SET reason = 'r ' || $EVIL WHERE id = (SELECT max(id) FROM updates WHERE device = 'dev-3');
  INSERT INTO events(at, round, device, kind, rule, detail)
      VALUES (1.0, 1, 'dev-3', 'status', 'device_status', 'd ' || $EVIL);
  INSERT INTO devices(id, region, status) VALUES ('ev' || $EVIL, 'reg' || $EVIL, 'revoked');
  INSERT INTO updates(round, device, received_at, n_samples, encoding, bytes, counter, norm,
                      decision, rule, reason)
      VALUES (1, 'ev' || $EVIL, 2.0, 1, 'fp32', 1, 1, 0.0, 'rejected', 'device_status', 'x' || $EVIL);
  UPDATE meta SET value = 'pol' || $EVIL WHERE key = 'policy_name';" || fail "sqlite3 evil rows"
A=("$AUDIT" --db "$DB" --models "$T/evil/models")
# every output: no ESC, no CR, no C1 CSI byte, no line that starts a forged row
clean() {
    # (CSV ends its lines with CRLF: only a CR elsewhere counts)
    if sed 's/\r$//' "$T/out" | LC_ALL=C grep -q $'[\x1b\r]\|\xc2\x9b' || grep -q '^| forged' "$T/out"; then
        head -c 3000 "$T/out" | od -c | head -40 >&2
        fail "$1 printed raw control characters"
    fi
}
for cmd in "decisions" "decisions --rejected" "lineage --device dev-3" "privacy" \
           "--json decisions" "--json lineage --device dev-3" "--json privacy" \
           "report --format md" "report --format json" "report --format csv" "report --format html"; do
    # shellcheck disable=SC2086
    expect_rc 0 "${A[@]}" $cmd
    clean "$cmd"
done
# the report's status is csv-quoted; the markdown and json say the same, escaped
expect_rc 0 "${A[@]}" decisions
out_has 'r \x0a| forged | row |\x1b[2J\x0d\xc2\x9b31m\xff'
out_has 'd \x0a| forged | row |'
expect_rc 0 "${A[@]}" --json decisions
python3 -c "import json,sys; d=json.load(open('$T/out')); sys.exit(0 if any('\\\\x1b[2J' in (x.get('reason') or x.get('detail') or '') for x in d['decisions']) else 1)" ||
    fail "JSON should carry the escaped text"
expect_rc 0 "${A[@]}" report
out_has '### ev\x0a| forged | row |\x1b[2J'
expect_rc 0 "${A[@]}" privacy
out_has 'policy pol\x0a| forged'
expect_rc 1 "${A[@]}" --pubkey "$PUB" verify
clean "verify"
expect_rc 1 "${A[@]}" --pubkey "$PUB" report
clean "report --pubkey"
# an error message that echoes input is escaped too
expect_rc 2 "${A[@]}" lineage --device $'nobody\n\e[2J'
LC_ALL=C grep -q $'\x1b' "$T/err" && fail "cli error printed a raw escape"
[ "$(wc -l <"$T/err")" -eq 1 ] || fail "cli error should stay one line"

# ---- fedge-admin refuses such input ------------------------------------------------
copy admin
DB=$T/admin/fedge.db
before=$(sqlite3 "$DB" "SELECT count(*) FROM events")
for reason in $'owner request\n| forged | row' $'wipe \e[2J' $'tab\there' $'c1 \xc2\x9b31m' $'bad \xff utf-8'; do
    expect_rc 2 "$ADMIN" --db "$DB" device dev-2 revoke --reason "$reason"
    grep -q "must be one line of printable text" "$T/err" || { cat "$T/err" >&2; fail "admin: no clear error"; }
done
expect_rc 2 "$ADMIN" --db "$DB" device $'dev-2\n' revoke --reason "ok"
[ "$(sqlite3 "$DB" "SELECT count(*) FROM events")" = "$before" ] || fail "a refused admin call wrote an event"
expect_rc 0 "$ADMIN" --db "$DB" device dev-2 suspend --reason "owner request — Zürich"
expect_rc 0 "$AUDIT" --db "$DB" lineage --device dev-2
out_has "owner request — Zürich"
sqlite3 "$DB" "UPDATE devices SET region = 'eu' || char(27) || '[2J' WHERE id = 'dev-2'" || fail sqlite3
expect_rc 0 "$ADMIN" --db "$DB" devices
clean "fedge-admin devices"
out_has 'eu\x1b[2J'

echo "audit_hostile: all checks passed"
