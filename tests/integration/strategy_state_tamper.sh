#!/usr/bin/env bash
# strategy_state is checked against its audited event, not only against its
# own sha256 column: a state blob rewritten together with a matching sha256
# is refused at start ("the log was altered") and reported by
# fedge-audit verify (state_mismatch); the untouched run verifies.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/sim.sh

sim_setup 4 4
"$BIN/fedge-keygen" aggregator --out "$SIM_DIR/agg" >/dev/null || sim_fail "keygen"
args=(--model-spec softmax:784-10 --seed 1 --server-optimizer adam --server-lr 0.05
      --signing-key "$SIM_DIR/agg/aggregator.key")
verify() { "$BIN/fedge-audit" --db "$SIM_DIR/$1/fedge.db" --pubkey "$SIM_DIR/agg/aggregator.pub" verify; }

sim_run run --threads 1 "${args[@]}" --rounds 2 || sim_fail "first run"
verify run >"$SIM_DIR/verify0.out" 2>&1 || sim_fail "verify of the untouched run: $(tail -n 3 "$SIM_DIR/verify0.out")"

python3 - "$SIM_DIR/run/fedge.db" <<'PY' || sim_fail "tampering"
import hashlib, sqlite3, struct, sys
db = sqlite3.connect(sys.argv[1])
v, st = db.execute("SELECT version, state FROM strategy_state").fetchone()
st = bytearray(st)
n = 7850  # Adam's v, the last vector: finite values, and a matching sha256
st[-4 * n:] = struct.pack('<%df' % n, *([1e6] * n))
db.execute("UPDATE strategy_state SET state=?, sha256=? WHERE version=?", (bytes(st), hashlib.sha256(st).hexdigest(), v))
db.commit()
PY

verify run >"$SIM_DIR/verify1.out" 2>&1 && sim_fail "fedge-audit verify passed a rewritten strategy_state"
grep -q "state_mismatch" "$SIM_DIR/verify1.out" ||
    sim_fail "verify does not name the strategy_state row: $(tail -n 3 "$SIM_DIR/verify1.out")"
grep -q "its audited event says" "$SIM_DIR/verify1.out" ||
    sim_fail "verify's reason: $(grep -m1 state_mismatch "$SIM_DIR/verify1.out")"

sim_run run --threads 1 "${args[@]}" --rounds 4
rc=$?
[ "$rc" != 0 ] || sim_fail "the run resumed on a rewritten strategy_state (exit $rc)"
grep -q "its audited event says.*the log was altered" "$SIM_DIR/run.err" ||
    sim_fail "start-up's reason: $(tail -n 2 "$SIM_DIR/run.err")"
echo "PASS: strategy_state_tamper"
