#!/usr/bin/env bash
# Delta retention with real processes: the same 10-round federation (3 edges
# over DTLS, mlp:784-32-10, fp32 deltas of ~100 KB) without retention and
# with retain_deltas_rounds = 2. Without, the database keeps all 30 bodies;
# with, only the last two rounds' 6 and the file stays a fraction of the
# size. On the pruned log `verify` passes, `lineage` still answers for the
# first aggregate and for a device, the report counts the dropped bodies, and
# a changed kept hash is still caught.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 3
"$BIN/fedge-partition" --data fashion-mnist --clients 30 --kind iid --seed 5 \
    --out "$FED_DIR/shards" --test-out "$FED_DIR/test.bin" >/dev/null || fed_fail "partition"

sql() { sqlite3 -batch -noheader "$FED_DIR/$1.db" "$2"; }
db_bytes() { # the database and its WAL, if any
    local n=0 f
    for f in "$FED_DIR/$1.db" "$FED_DIR/$1.db-wal"; do
        [ -e "$f" ] && n=$((n + $(stat -c %s "$f")))
    done
    echo "$n"
}

run() { # NAME AGGREGATOR_ARGS...
    local name=$1 i
    shift
    FED_PORT=$(fed_free_port)
    fed_start_aggregator --db "$FED_DIR/$name.db" --model-dir "$FED_DIR/models-$name" \
        --model-spec mlp:784-32-10 --test-data "$FED_DIR/test.bin" --rounds 10 \
        --round-timeout-s 120 --start-delay-s 0.5 --linger-s 1 "$@"
    for i in 0 1 2; do
        fed_start_edge "dev-00$((i + 1))" "$FED_DIR/shards/shard-00$i.bin" --seed "$i" --poll-ms 100
    done
    fed_wait_run 300 || fed_fail "$name: aggregator exited with an error"
    [ "$(sql "$name" "SELECT count(*) FROM rounds WHERE status='closed'")" = 10 ] ||
        fed_fail "$name: 10 closed rounds expected"
    [ "$(sql "$name" "SELECT count(*) FROM updates WHERE decision<>'rejected'")" = 30 ] ||
        fed_fail "$name: 30 accepted updates expected"
}

t0=$(date +%s)
run keep
run pruned --retain-deltas-rounds 2
keep=$(db_bytes keep)
pruned=$(db_bytes pruned)
body=$(sql keep "SELECT max(length(delta)) FROM updates")
echo "10 rounds x 3 fp32 updates of $body bytes: database $keep bytes without retention," \
    "$pruned bytes with retain_deltas_rounds = 2 ($(($(date +%s) - t0)) s for both runs)"

[ "$(sql keep "SELECT count(*) FROM updates WHERE delta IS NOT NULL")" = 30 ] ||
    fed_fail "without retention every body stays"
[ "$(sql pruned "SELECT count(*) FROM updates WHERE delta IS NOT NULL AND round >= 9")" = 6 ] ||
    fed_fail "rounds 9 and 10 keep their bodies"
[ "$(sql pruned "SELECT count(*) FROM updates WHERE delta IS NULL AND length(delta_sha256) = 32 AND round <= 8")" = 24 ] ||
    fed_fail "rounds 1-8 lose their bodies and keep their hashes"
[ "$(sql pruned "SELECT count(*) FROM events WHERE kind='delta_pruned'")" = 8 ] ||
    fed_fail "one delta_pruned event per round from round 3"
[ "$(sql pruned "PRAGMA auto_vacuum")" = 2 ] || fed_fail "a new database has incremental auto_vacuum"
[ "$keep" -ge $((30 * body)) ] || fed_fail "without retention the file holds every body"
[ "$pruned" -lt $((12 * body)) ] || fed_fail "with retention the file should hold about 6 bodies, is $pruned bytes"
grep -q "dropped 3 delta bodies of rounds 8-8" "$FED_DIR/agg.log" || fed_fail "the drop is logged"

audit() { "$BIN/fedge-audit" --db "$FED_DIR/pruned.db" --pubkey "$FED_DIR/aggregator.pub" \
    --models "$FED_DIR/models-pruned" "$@"; }
audit verify >/dev/null || { audit verify; fed_fail "verify on the pruned log"; }
first=$(sql pruned "SELECT new_version FROM rounds WHERE id=1")
n=$(audit --json lineage "${first:0:12}" |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(len(d['contributions']))") ||
    fed_fail "lineage of the round-1 aggregate"
[ "$n" = 3 ] || fed_fail "lineage of the round-1 aggregate lists its 3 updates (got $n)"
audit lineage --device dev-002 >/dev/null || fed_fail "lineage --device on the pruned log"
report=$(audit report --format md) || fed_fail "report on the pruned log"
grep -q "delta bodies dropped by retention *| *24" <<<"$report" || fed_fail "the report counts the dropped bodies"

cp "$FED_DIR/pruned.db" "$FED_DIR/tampered.db"
sqlite3 "$FED_DIR/tampered.db" "UPDATE updates SET delta_sha256 = zeroblob(32) WHERE id = 1"
out=$("$BIN/fedge-audit" --db "$FED_DIR/tampered.db" --pubkey "$FED_DIR/aggregator.pub" \
    --models "$FED_DIR/models-pruned" verify)
[ $? -eq 1 ] || fed_fail "a changed kept hash must fail verify"
grep -q "row_modified: updates row 1 " <<<"$out" || fed_fail "verify names the row: $out"
echo ok
