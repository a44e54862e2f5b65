#!/usr/bin/env bash
# A finished run copied elsewhere still audits: a real federation (2 edges,
# 2 rounds over DTLS), its database and model store copied to another
# directory, the original deleted; `fedge-audit verify` passes with
# --models DIR, and by default when the models folder sits beside the
# database. Model paths in the log are file names in the model store.
# An old log's absolute paths are found by file name in --models too. An
# edited updates.sealed_sha256 fails verify, named.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
FED_END_LINGER=1 # the linger is for the edges: it ends when they have all exited 0

fed_setup 2
FED_PORT=$(fed_free_port)
"$BIN/fedge-partition" --data fashion-mnist --clients 40 --kind iid --seed 3 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"
fed_start_aggregator --model-spec softmax:784-10 --test-data "$FED_DIR/test.bin" --rounds 2 \
    --round-timeout-s 120 --start-delay-s 0.3 --linger-s 2
fed_start_edge dev-001 "$FED_DIR/shards/shard-000.bin"
fed_start_edge dev-002 "$FED_DIR/shards/shard-001.bin"
fed_wait_run 180 || fed_fail "aggregator exited with an error"
[ "$(fed_sql "SELECT count(*) FROM models")" = 3 ] || fed_fail "init + 2 aggregates expected"
[ "$(fed_sql "SELECT count(*) FROM models WHERE path LIKE '%/%' OR path <> version || '.fmdl'")" = 0 ] ||
    fed_fail "model paths should be '<version>.fmdl': $(fed_sql "SELECT path FROM models")"
# each edge was given a keys file holding its own secret only
for id in dev-001 dev-002; do
    [ "$(grep -c . "$FED_DIR/keys-$id")" = 1 ] && grep -q "^$id " "$FED_DIR/keys-$id" ||
        fed_fail "keys-$id should hold $id's line only"
    [ "$(stat -c %a "$FED_DIR/keys-$id")" = 600 ] || fed_fail "keys-$id should be mode 0600"
done

C=$(mktemp -d /tmp/fedge-moved-XXXXXX)
trap 'rm -rf "$C"; fed_cleanup' EXIT
mkdir -p "$C/run" "$C/elsewhere"
cp "$FED_DIR/fedge.db" "$FED_DIR/aggregator.pub" "$C/run/" || fed_fail "copy db"
cp -r "$FED_DIR/models" "$C/run/models" || fed_fail "copy models"
cp -r "$FED_DIR/models" "$C/elsewhere/store" || fed_fail "copy models"
rm -rf "$FED_DIR/models" "$FED_DIR/fedge.db"

AUDIT=$(cd "$BIN" && pwd)/fedge-audit
out=$("$AUDIT" --db "$C/run/fedge.db" --pubkey "$C/run/aggregator.pub" --models "$C/run/models" verify 2>&1) ||
    fed_fail "verify --models on the copied run: $out"
echo "$out" | grep -q "OK: every check holds" || fed_fail "verify output: $out"
echo "$out" | grep -q "model files    3 re-hashed" || fed_fail "3 model files should be re-hashed: $out"
out=$(cd / && "$AUDIT" --db "$C/run/fedge.db" --pubkey "$C/run/aggregator.pub" verify 2>&1) ||
    fed_fail "verify with the default --models (DB_DIR/models): $out"
out=$("$AUDIT" --db "$C/run/fedge.db" --pubkey "$C/run/aggregator.pub" --models "$C/elsewhere/store" verify 2>&1) ||
    fed_fail "verify --models elsewhere: $out"
# a missing store is named, file by file
out=$("$AUDIT" --db "$C/run/fedge.db" --pubkey "$C/run/aggregator.pub" --models "$C/nowhere" --json verify 2>&1)
[ $? = 1 ] || fed_fail "verify against a missing model store should fail"
echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if [f['kind'] for f in d['failures']] == ['file_missing'] * 3 else 1)" ||
    fed_fail "three file_missing failures expected: $out"

# an old log stored absolute paths: a moved copy is found by file name
cp "$C/run/fedge.db" "$C/run/old.db"
sqlite3 "$C/run/old.db" "UPDATE models SET path = '/var/lib/fedge-gone/models/' || path" || fed_fail sqlite3
out=$("$AUDIT" --db "$C/run/old.db" --pubkey "$C/run/aggregator.pub" --models "$C/run/models" --json verify 2>&1)
echo "$out" | python3 -c "import json,sys; d=json.load(sys.stdin); k={f['kind'] for f in d['failures']}; sys.exit(0 if 'file_missing' not in k and 'file_mismatch' not in k and d['model_files'] == 3 else 1)" ||
    fed_fail "absolute paths of an old log should resolve in --models: $out"
# the daemon tells a resend from a replay by updates.sealed_sha256: in the
# chain (canon FCN2), so an edit of it is named
[ "$(sqlite3 "$C/run/fedge.db" "SELECT count(*) FROM audit WHERE substr(canon, 1, 4) <> CAST('FCN2' AS BLOB)")" = 0 ] ||
    fed_fail "every entry of a new log should be FCN2"
id=$(sqlite3 "$C/run/fedge.db" "SELECT min(id) FROM updates WHERE length(sealed_sha256) = 32")
[ -n "$id" ] || fed_fail "the run's updates should carry sealed_sha256"
cp "$C/run/fedge.db" "$C/run/sealed.db"
sqlite3 "$C/run/sealed.db" "UPDATE updates SET sealed_sha256 = zeroblob(32) WHERE id = $id" || fed_fail sqlite3
out=$("$AUDIT" --db "$C/run/sealed.db" --pubkey "$C/run/aggregator.pub" --models "$C/run/models" verify 2>&1)
[ $? = 1 ] || fed_fail "verify should fail on an edited sealed_sha256: $out"
echo "$out" | grep -q "row_modified: updates row $id was modified after audit entry [0-9]*: column sealed_sha256 is <32 bytes 0000000000000000...>" ||
    fed_fail "verify should name updates row $id and its sealed_sha256: $out"
echo "audit_moved_run: all checks passed"
