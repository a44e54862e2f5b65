#!/usr/bin/env bash
# fedge-sim samples from a large population through the aggregator's own
# selection: 1,000 devices, 10 per round; every round gets its 10 updates,
# different devices take part from round to round, and the peak memory does
# not grow with the population (O(clients per round x model)). --clients N
# without a keys file makes one of N devices beside the database.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/sim.sh

sim_setup 1000 1000 --min-size 10
"$BIN/fedge-keygen" devices --count 20 --prefix dev- --out "$SIM_DIR/keys20" >/dev/null || sim_fail "keygen 20"
args=(--model-spec softmax:784-10 --rounds 8 --clients-per-round 10 --threads 2)

/usr/bin/time -f %M -o "$SIM_DIR/rss-1000" \
    "$BIN/fedge-sim" --keys "$SIM_DIR/keys" --shards "$SIM_DIR/shards" --test-data "$SIM_DIR/test.bin" \
    --db "$SIM_DIR/big.db" --model-dir "$SIM_DIR/big-models" --json "${args[@]}" >"$SIM_DIR/big.out" \
    2>"$SIM_DIR/big.err" || sim_fail "1,000 devices"
/usr/bin/time -f %M -o "$SIM_DIR/rss-20" \
    "$BIN/fedge-sim" --keys "$SIM_DIR/keys20" --shards "$SIM_DIR/shards" --test-data "$SIM_DIR/test.bin" \
    --db "$SIM_DIR/small.db" --model-dir "$SIM_DIR/small-models" --json "${args[@]}" >"$SIM_DIR/small.out" \
    2>"$SIM_DIR/small.err" || sim_fail "20 devices"

rounds=$(grep -c '"round":' "$SIM_DIR/big.out")
full=$(grep -c '"selected":10,"accepted":10,"rejected":0' "$SIM_DIR/big.out")
[ "$rounds" = 8 ] && [ "$full" = 8 ] || sim_fail "$full of $rounds rounds had 10 selected and 10 accepted"
sql() { sqlite3 -batch -noheader "$SIM_DIR/big.db" "$1"; }
[ "$(sql "SELECT count(*) FROM (SELECT round FROM round_participants GROUP BY round HAVING count(*) = 10)")" = 8 ] ||
    sim_fail "not 10 participants in each of 8 rounds"
distinct=$(sql "SELECT count(DISTINCT device) FROM round_participants")
[ "$distinct" -ge 60 ] || sim_fail "only $distinct distinct devices over 8 rounds of 10 (of 1,000)"
[ "$(sql "SELECT count(DISTINCT device) FROM updates WHERE decision<>'rejected'")" = "$distinct" ] ||
    sim_fail "updates did not come from the selected devices"
big=$(cat "$SIM_DIR/rss-1000") small=$(cat "$SIM_DIR/rss-20")
if ldd "$BIN/fedge-sim" | grep -q libasan; then
    echo "SKIP: peak RSS under ASan (its quarantine keeps freed memory): ${big} KiB, 20 devices ${small} KiB"
else
    [ "$big" -lt $((small + 16384)) ] || sim_fail "peak RSS ${big} KiB with 1,000 devices, ${small} KiB with 20"
fi
# --clients N without a keys file: N devices in <db>.keys, made once, then reused
gen=(--shards "$SIM_DIR/shards" --test-data "$SIM_DIR/test.bin" --db "$SIM_DIR/gen.db"
     --model-dir "$SIM_DIR/gen-models" --model-spec softmax:784-10 --clients-per-round 5 --json)
"$BIN/fedge-sim" --clients 30 --rounds 2 "${gen[@]}" >"$SIM_DIR/gen.out" 2>"$SIM_DIR/gen.err" || sim_fail "--clients 30"
[ "$(grep -c '^dev-' "$SIM_DIR/gen.db.keys")" = 30 ] || sim_fail "<db>.keys does not list 30 devices"
[ "$(stat -c %a "$SIM_DIR/gen.db.keys")" = 600 ] || sim_fail "<db>.keys is not mode 0600"
before=$(sha256sum <"$SIM_DIR/gen.db.keys")
"$BIN/fedge-sim" --clients 30 --rounds 3 "${gen[@]}" >"$SIM_DIR/gen.out" 2>"$SIM_DIR/gen.err" ||
    sim_fail "--clients 30, resumed"
[ "$(sha256sum <"$SIM_DIR/gen.db.keys")" = "$before" ] || sim_fail "<db>.keys was rewritten on resume"
[ "$(sqlite3 -batch -noheader "$SIM_DIR/gen.db" "SELECT count(*) FROM rounds WHERE status='closed'")" = 3 ] ||
    sim_fail "the resumed --clients run did not reach 3 closed rounds"
"$BIN/fedge-sim" --clients 29 --rounds 4 "${gen[@]}" >/dev/null 2>"$SIM_DIR/gen.err"
[ $? = 2 ] && grep -q 'lists 30 devices' "$SIM_DIR/gen.err" || sim_fail "--clients 29 on a 30-device keys file not refused"
# a population nobody may take part in (the policy's regions) ends the run at
# once (status 2), where the daemon would wait for an operator
printf 'version: 1\nupdate:\n  allowed_regions: [us]\n' >"$SIM_DIR/us.yaml"
timeout 30 "$BIN/fedge-sim" --keys "$SIM_DIR/keys20" --rounds 2 "${gen[@]}" --db "$SIM_DIR/us.db" --model-dir "$SIM_DIR/us-models" \
    --policy-file "$SIM_DIR/us.yaml" >/dev/null 2>"$SIM_DIR/us.err"
st=$?
[ $st = 2 ] && grep -q 'no device is eligible' "$SIM_DIR/us.err" ||
    sim_fail "no eligible device: exit $st, not 2 with a reason (124: it waited forever)"
echo "ok: 8 rounds of 10 from 1,000 devices ($distinct distinct), peak RSS ${big} KiB (20 devices: ${small} KiB)"
