#!/usr/bin/env bash
# Nothing a user types goes raw to the terminal: every program's usage
# errors echo bad arguments escaped (an ESC sequence that would clear the
# screen, a newline that would forge a second line).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${FEDGE_BUILD:-build/native}/bin
evil=$(printf 'x\033[2J\nforged line')
fail() { echo "FAIL: $*" >&2; exit 1; }
check() { # NAME ARGS...: stderr must hold no ESC and be escaped where it echoes
    local name=$1 out
    shift
    out=$(timeout 10 "$BIN/$name" "$@" 2>&1 >/dev/null </dev/null)
    printf '%s' "$out" | grep -q $'\033' && fail "$name $* printed a raw escape sequence: $(printf '%q' "$out")"
    printf '%s\n' "$out" | grep -q '^forged line' && fail "$name $* let a newline forge a line: $(printf '%q' "$out")"
    printf '%s' "$out" | grep -qF '\x1b' || fail "$name $*: the bad argument is not echoed escaped: $(printf '%q' "$out")"
    n=$((n + 1))
}
n=0
check fedge-edge "--$evil"
check fedge-edge --server "$evil" --id d --keys k --shard s
check fedge-partition --kind "$evil"
check fedge-audit --db /nonexistent.db "$evil"
check fedge-aggregator "--$evil"
check fedge-aggregator "$evil"
check fedge-keygen "--$evil"
check fedge-keygen devices --count "5$evil" --out /nonexistent/keys
if [ -x "$BIN/fedge-cluster" ]; then
    check fedge-cluster "$evil"
    check fedge-cluster refine "--$evil"
    check fedge-cluster refine --steps "$evil"
fi
echo "ok: $n bad arguments echoed escaped"
