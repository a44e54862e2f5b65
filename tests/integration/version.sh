#!/usr/bin/env bash
# Every fedge-* program in the build's bin/ answers --version with
# "NAME VERSION" (VERSION from shared/version.h) on stdout and exit status 0,
# without needing any other argument, file or network.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${FEDGE_BUILD:-build/native}/bin
want=$(sed -n 's/^#define FEDGE_VERSION "\(.*\)"$/\1/p' shared/version.h)
[ -n "$want" ] || { echo "FAIL: no FEDGE_VERSION in shared/version.h" >&2; exit 1; }
n=0 bad=0
for b in "$BIN"/fedge-*; do
    [ -x "$b" ] || continue
    name=$(basename "$b")
    n=$((n + 1))
    out=$(timeout 10 "$b" --version 2>/dev/null </dev/null)
    rc=$?
    if [ "$rc" -ne 0 ] || [ "$(printf '%s\n' "$out" | head -n 1)" != "$name $want" ]; then
        echo "FAIL: $name --version: exit $rc, output '$(printf '%s' "$out" | head -c 200)' (want '$name $want')" >&2
        bad=$((bad + 1))
    fi
done
[ "$n" -ge 3 ] || { echo "FAIL: only $n fedge-* programs in $BIN" >&2; exit 1; }
[ "$bad" -eq 0 ] || exit 1
echo "ok: $n programs answer --version ($want)"
