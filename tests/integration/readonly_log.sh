#!/usr/bin/env bash
# Readers of a log write nothing beside it: on a checkpointed WAL log (a
# copied or archived run: no -wal or -shm), fedge-aggregator --check and
# fedge-audit verify, report and replay create no DB-wal or DB-shm (they
# open it immutable when no writer has it open: fedge_store_open_ro).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
fed_setup 1
FED_PORT=$(fed_free_port)
fed_start_aggregator --model-spec softmax:784-10 --test-data fashion-mnist --rounds 1 \
    --round-timeout-s 0.3 --start-delay-s 0 --linger-s 0
fed_wait_pid "$FED_AGG_PID" 30
mkdir "$FED_DIR/copy" "$FED_DIR/out"
sqlite3 "$FED_DIR/fedge.db" ".backup '$FED_DIR/copy/fedge.db'"
cp -r "$FED_DIR/models" "$FED_DIR/copy/"
[ "$(sqlite3 "$FED_DIR/copy/fedge.db" 'PRAGMA journal_mode')" = wal ] || fed_fail "the copy is not a WAL log"
before=$(ls -A "$FED_DIR/copy" | tr '\n' ' ')
unchanged() {
    local after
    after=$(ls -A "$FED_DIR/copy" | tr '\n' ' ')
    [ "$after" = "$before" ] || fed_fail "$1 wrote beside the database: $before -> $after"
}
"$BIN/fedge-aggregator" --check --keys-file "$FED_DIR/keys" --db "$FED_DIR/copy/fedge.db" --signing-key "$FED_DIR/aggregator.key" \
    --model-dir "$FED_DIR/copy/models" --test-data fashion-mnist >"$FED_DIR/out/check" 2>&1 ||
    { cat "$FED_DIR/out/check"; fed_fail "--check"; }
grep -q "^database: ok" "$FED_DIR/out/check" || fed_fail "--check did not read the log"
unchanged "--check"
A=("$BIN/fedge-audit" --db "$FED_DIR/copy/fedge.db" --pubkey "$FED_DIR/aggregator.pub")
"${A[@]}" --models "$FED_DIR/copy/models" verify >"$FED_DIR/out/verify" 2>&1 ||
    { cat "$FED_DIR/out/verify"; fed_fail "verify"; }
unchanged "fedge-audit verify"
"${A[@]}" report --format html --out "$FED_DIR/out/r.html" || fed_fail "report"
unchanged "fedge-audit report"
"$BIN/fedge-audit" --db "$FED_DIR/copy/fedge.db" replay --policy tests/fuzz/corpus/policy/default.yaml \
    >"$FED_DIR/out/replay" 2>&1 || true
unchanged "fedge-audit replay"
echo "PASS: readonly_log"
