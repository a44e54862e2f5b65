#!/usr/bin/env bash
# kill -9 fedge-sim in the middle of a round (updates of the open round
# already accepted) and run it again on the same database and model store: it
# resumes like the daemon and ends on the same model bytes as a run that was
# never interrupted, each round closed once, each update counted once, the
# audit chain intact. With server_optimizer = sgd (FedAvg) and, when the
# aggregator offers them, adam (its state must survive the restart) and
# SCAFFOLD (each client's c_i too: the device whose update committed just
# before the kill must find its c_i+ committed, the others theirs dropped).
# The three optimisers' runs share nothing but the keys and shards: they run
# at once (fedge-sim is CPU-bound on one thread), their output in order.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/sim.sh

sim_setup 10 10
"$BIN/fedge-keygen" aggregator --out "$SIM_DIR" >/dev/null || sim_fail "keygen aggregator"
ROUNDS=12

# interrupted NAME ARGS...: start, kill -9 once round 5 or later is open with
# at least one accepted update, start again to the end
interrupted() {
    local name=$1
    shift
    mkdir -p "$SIM_DIR/$name"
    "$BIN/fedge-sim" --keys "$SIM_DIR/keys" --shards "$SIM_DIR/shards" --test-data "$SIM_DIR/test.bin" \
        --db "$SIM_DIR/$name/fedge.db" --model-dir "$SIM_DIR/$name/models" --json "$@" \
        >"$SIM_DIR/$name.first" 2>"$SIM_DIR/$name.err" &
    local pid=$!
    disown "$pid" # killed on purpose: no "Killed" notice from the shell
    python3 - "$SIM_DIR/$name/fedge.db" "$pid" <<'PY' || { kill -9 "$pid" 2>/dev/null; sim_fail "$name: never caught mid-round"; }
import os, sqlite3, sys, time
db, pid = sys.argv[1], int(sys.argv[2])
end = time.time() + 50
while time.time() < end:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)  # finished before it could be interrupted
    try:
        c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=0.05)
        row = c.execute("SELECT r.id, (SELECT count(*) FROM updates u WHERE u.round = r.id"
                        " AND u.decision <> 'rejected') FROM rounds r WHERE r.status = 'open'").fetchone()
        c.close()
    except sqlite3.Error:
        row = None
    if row and row[0] >= 5 and row[1] >= 1:
        os.kill(pid, 9)
        sys.exit(0)
    time.sleep(0.001)
sys.exit(1)
PY
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    local open accepted
    open=$(sim_sql "$name" "SELECT id FROM rounds WHERE status='open'")
    accepted=$(sim_sql "$name" "SELECT count(*) FROM updates WHERE round='$open' AND decision<>'rejected'")
    [ -n "$open" ] && [ "$accepted" -ge 1 ] || sim_fail "$name: not killed inside a round"
    echo "$name: killed in round $open with $accepted update(s) accepted"
    sim_run "$name" "$@" || sim_fail "$name: the resumed run failed"
}

check() { # NAME REFERENCE
    local name=$1 ref=$2
    [ "$(sim_sql "$name" "SELECT group_concat(id) FROM (SELECT id FROM rounds WHERE status='closed' ORDER BY id)")" = \
      "$(seq -s, 1 $ROUNDS)" ] || sim_fail "$name: rounds 1..$ROUNDS each closed once expected"
    [ "$(sim_sql "$name" "SELECT count(*) FROM (SELECT round, device FROM updates WHERE decision<>'rejected' GROUP BY 1, 2 HAVING count(*) > 1)")" = 0 ] ||
        sim_fail "$name: an update was counted twice"
    [ "$(sim_sql "$name" "SELECT sum(n_accepted) FROM rounds")" = $((10 * ROUNDS)) ] ||
        sim_fail "$name: $((10 * ROUNDS)) accepted updates expected"
    "$BIN/fedge-audit" --db "$SIM_DIR/$name/fedge.db" --pubkey "$SIM_DIR/aggregator.pub" verify >/dev/null ||
        sim_fail "$name: audit verify"
    local got want
    got=$(sim_model_sha "$name") && want=$(sim_model_sha "$ref") || sim_fail "$name: no model file"
    [ "$got" = "$want" ] || sim_fail "$name: model $got after the restart, $want uninterrupted"
    echo "$name: same model ${got:0:16} as uninterrupted"
}

args=(--model-spec mlp:784-64-10 --rounds $ROUNDS --threads 1 --signing-key "$SIM_DIR/aggregator.key")
run_sgd() {
    sim_run sgd_ref "${args[@]}" || sim_fail "uninterrupted sgd run"
    interrupted sgd_kill "${args[@]}"
    check sgd_kill sgd_ref
}

run_adam() {
    if sim_accepts server_optimizer adam; then
        adam=("${args[@]}" --server-optimizer adam --server-lr 0.01)
        sim_run adam_ref "${adam[@]}" || sim_fail "uninterrupted adam run"
        interrupted adam_kill "${adam[@]}"
        check adam_kill adam_ref
    else
        echo "SKIP: server_optimizer = adam (fedge-aggregator does not offer it)"
    fi
}

run_scaf() {
    if sim_accepts scaffold true; then
        scaf=(--model-spec softmax:784-10 --rounds $ROUNDS --threads 1 --signing-key "$SIM_DIR/aggregator.key" --scaffold)
        sim_run scaf_ref "${scaf[@]}" || sim_fail "uninterrupted SCAFFOLD run"
        interrupted scaf_kill "${scaf[@]}"
        check scaf_kill scaf_ref
        # c_i files: the same model part (the 32-byte trailer names each run's own id)
        for f in "$SIM_DIR/scaf_ref/fedge.db.clients"/*.control; do
            g="$SIM_DIR/scaf_kill/fedge.db.clients/${f##*/}"
            cmp -s <(head -c -32 "$f") <(head -c -32 "$g") || sim_fail "scaf_kill: ${f##*/} differs from the uninterrupted run's"
        done
        [ -z "$(find "$SIM_DIR/scaf_kill/fedge.db.clients" -name '*.pending')" ] || sim_fail "scaf_kill: a pending c_i+ left"
        echo "scaf_kill: every c_i as uninterrupted"
    else
        echo "SKIP: scaffold (fedge-aggregator does not offer it)"
    fi
}

variants=(sgd adam scaf)
pids=()
for v in "${variants[@]}"; do
    ("run_$v"; exit 0) >"$SIM_DIR/$v.log" 2>&1 & # fails by sim_fail, as in a script
    pids+=("$!")
done
trap 'kill "${pids[@]}" 2>/dev/null; sim_cleanup' EXIT
failed=()
for i in "${!variants[@]}"; do wait "${pids[$i]}" || failed+=("${variants[$i]}"); done
pids=()
for v in "${variants[@]}"; do cat "$SIM_DIR/$v.log"; done
[ ${#failed[@]} = 0 ] || sim_fail "failed: ${failed[*]}"
echo ok
