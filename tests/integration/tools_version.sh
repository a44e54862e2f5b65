#!/usr/bin/env bash
# Every operator tool answers --version with the release in shared/version.h
# (exit 0, one line "NAME VERSION"), whatever else is on the command line.
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${FEDGE_BUILD:-build/native}
want=$(sed -n 's/^#define FEDGE_VERSION "\(.*\)"$/\1/p' shared/version.h)
[ -n "$want" ] || { echo "FAIL: no FEDGE_VERSION in shared/version.h" >&2; exit 1; }
for tool in fedge-audit fedge-admin fedge-keygen fedge-partition; do
    out=$("$BUILD/bin/$tool" --version 2>&1) || { echo "FAIL: $tool --version exited $?: $out" >&2; exit 1; }
    [ "$out" = "$tool $want" ] || { echo "FAIL: $tool --version printed '$out', want '$tool $want'" >&2; exit 1; }
done
echo "tools_version: all checks passed"
