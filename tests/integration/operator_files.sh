#!/usr/bin/env bash
# Files an operator names are read only when they are regular files: a FIFO
# (or a device) as the keys file, the policy, the config, a bundle, a signing
# key or rotate's --new-key is refused at once with a clear error instead of
# blocking in open(2) for a writer that never comes (shared/fileio.h,
# fedge_open_regular). The daemon sent SIGHUP with its keys file replaced by
# a FIFO logs the refusal, keeps its previous keys and goes on serving
# /healthz. A bundle's malformed server line is named in full; a policy
# error is escaped once.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/fed.sh

fed_setup 2
mkfifo -m 600 "$FED_DIR/fifo"
F="$FED_DIR/fifo"
# each command must answer within 5 s (timeout's 124 is a hang) and fail with 1 or 2
refused() { # WHAT EXPECTED_TEXT CMD...
    local what=$1 want=$2 rc
    shift 2
    timeout 5 "$@" >"$FED_DIR/out" 2>&1
    rc=$?
    [ $rc != 124 ] || fed_fail "$what: hung on a FIFO"
    [ $rc != 0 ] || fed_fail "$what: a FIFO was accepted"
    grep -q "$want" "$FED_DIR/out" || { cat "$FED_DIR/out"; fed_fail "$what: no '$want' in the error"; }
}
# a bundle with two server lines: the refusal names the whole tag
{ echo "# fedge-bundle server 127.0.0.1:5684"; echo "# fedge-bundle server 127.0.0.1:5685"
  grep '^dev-001 ' "$FED_DIR/keys"; } >"$FED_DIR/b.bundle"
chmod 600 "$FED_DIR/b.bundle"
refused "two bundle server lines" "'# fedge-bundle server'" "$BIN/fedge-edge" --bundle "$FED_DIR/b.bundle" \
    --shard /nonexistent
# a policy error is escaped once (the loader's message is printable already)
printf 'version: 1\nname: a\xe2\x80\xaeb\n' >"$FED_DIR/bidi.yaml"
"$BIN/fedge-policy" validate "$FED_DIR/bidi.yaml" >/dev/null 2>"$FED_DIR/out" && fed_fail "a bidi name was accepted"
grep -qF "got 'a\xe2\x80\xaeb'" "$FED_DIR/out" || { cat "$FED_DIR/out"; fed_fail "policy error not escaped once"; }
CHK=("$BIN/fedge-aggregator" --check --db "$FED_DIR/fedge.db")
refused "--check keys" "keys: error: .*not a regular file" "${CHK[@]}" --keys-file "$F"
refused "--check policy" "policy: error: .*not a regular file" "${CHK[@]}" --keys-file "$FED_DIR/keys" --policy-file "$F"
refused "--check config" "not a regular file" "${CHK[@]}" --config "$F"
refused "--check signing key" "signing_key: error" "${CHK[@]}" --keys-file "$FED_DIR/keys" --signing-key "$F"
refused "--check database" "database: error: .*not a regular file" "$BIN/fedge-aggregator" --check \
    --keys-file "$FED_DIR/keys" --db "$F"
refused "fedge-policy validate" "not a regular file" "$BIN/fedge-policy" validate "$F"
refused "fedge-edge --bundle" "not a regular file" "$BIN/fedge-edge" --bundle "$F" --shard /nonexistent
# the log itself (every program opens it through fedge_store_open_db)
refused "fedge-audit --db" "not a regular file" "$BIN/fedge-audit" --db "$F" verify
refused "fedge-admin --db" "not a regular file" "$BIN/fedge-admin" --db "$F" devices
refused "fedge-aggregator --db" "not a regular file" "$BIN/fedge-aggregator" --keys-file "$FED_DIR/keys" \
    --db "$F" --model-dir "$FED_DIR/fm" --listen "127.0.0.1:$(fed_free_port)" --model-spec softmax:784-10

FED_PORT=$(fed_free_port)
MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# the test data as a FIFO: the start fails at once instead of hanging
timeout 10 "$BIN/fedge-aggregator" --keys-file "$FED_DIR/keys" --db "$FED_DIR/fifo.db" --model-dir "$FED_DIR/fm" \
    --listen "127.0.0.1:$FED_PORT" --model-spec softmax:784-10 --test-data "$F" >"$FED_DIR/out" 2>&1
rc=$?
[ $rc != 124 ] || fed_fail "--test-data a FIFO: the start hung"
[ $rc != 0 ] || fed_fail "--test-data a FIFO: the start succeeded"
grep -q "not a regular file" "$FED_DIR/out" || { cat "$FED_DIR/out"; fed_fail "--test-data a FIFO: no clear error"; }

# SIGHUP with the keys file a FIFO: refused, previous keys kept, still serving
fed_start_aggregator --model-spec softmax:784-10 --test-data fashion-mnist --rounds 1000 \
    --round-timeout-s 1 --metrics-listen "127.0.0.1:$MPORT"
health() { python3 -c 'import sys, urllib.request as u
try: print(u.urlopen("http://127.0.0.1:%s/healthz" % sys.argv[1], timeout=2).read().decode().strip())
except Exception as e: print("ERR", e)' "$MPORT"; }
fed_wait_for '[ "$(health | cut -c1-3)" = "ok:" ]' 20
mv "$FED_DIR/keys" "$FED_DIR/keys.real"
mv "$F" "$FED_DIR/keys"
kill -HUP "$FED_AGG_PID"
fed_wait_for "grep -q 'keys reload: .*not a regular file.*keeping the previous keys' '$FED_DIR/agg.log'" 5
r0=$(fed_sql "SELECT max(id) FROM rounds")
fed_wait_for "[ \$(fed_sql 'SELECT max(id) FROM rounds') -gt $r0 ]" 5
h=$(health)
case "$h" in ok:*) ;; *) fed_fail "healthz after SIGHUP with a FIFO keys file: $h" ;; esac
[ "$(fed_sql "SELECT count(*) FROM devices WHERE status='allowed'")" = 2 ] ||
    fed_fail "the refused reload changed the devices"
refused "fedge-admin device add --keys" "not a regular file" "$BIN/fedge-admin" --db "$FED_DIR/fedge.db" \
    device add dev-009 --region eu --keys "$FED_DIR/keys"
kill -TERM "$FED_AGG_PID"
fed_wait_pid "$FED_AGG_PID" 10
mkfifo -m 600 "$F"
refused "fedge-admin rotate --new-key" "not a regular file" "$BIN/fedge-admin" --db "$FED_DIR/fedge.db" \
    signing-key rotate --key "$FED_DIR/aggregator.key" --new-key "$F"
echo "PASS: operator_files"
