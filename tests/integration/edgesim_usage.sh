#!/usr/bin/env bash
# fedge-edgesim refuses a mistyped command line before any work, with exit
# status 2 and a message naming what is wrong: a --server that does not
# resolve (it once started every session, each failing at once, and never
# ended), a --population above the keys file's devices (was exit 1), a
# --json path it cannot write (was reported only after the whole run).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh
fed_setup 4
expect_usage() { # what, grep pattern, args...
    local what=$1 pat=$2 t0=$SECONDS rc
    shift 2
    timeout 20 "$BIN/fedge-edgesim" "$@" >"$FED_DIR/sim.log" 2>&1
    rc=$?
    [ "$rc" = 124 ] && fed_fail "$what: still running after 20 s"
    [ "$rc" = 2 ] || fed_fail "$what: exit $rc (want 2): $(tail -2 "$FED_DIR/sim.log")"
    [ $((SECONDS - t0)) -le 5 ] || fed_fail "$what: took more than 5 s to refuse"
    grep -q -- "$pat" "$FED_DIR/sim.log" || fed_fail "$what: the message does not name '$pat': $(cat "$FED_DIR/sim.log")"
}
expect_usage "unresolvable --server" "no-such-host.invalid" \
    --server no-such-host.invalid:5684 --keys "$FED_DIR/keys" --population 4 --concurrency 2
expect_usage "unresolvable --server with --duration-s" "no-such-host.invalid" \
    --server no-such-host.invalid:5684 --keys "$FED_DIR/keys" --population 4 --concurrency 2 --duration-s 2
expect_usage "--population above the keys" "fewer than --population 5" \
    --server 127.0.0.1:9 --keys "$FED_DIR/keys" --population 5 --concurrency 2
expect_usage "unwritable --json" "$FED_DIR/no/such/dir/out.json" \
    --server 127.0.0.1:9 --keys "$FED_DIR/keys" --population 4 --concurrency 2 --json "$FED_DIR/no/such/dir/out.json"
echo ok
