# tests/lib/sim.sh — helpers for the fedge-sim scripts (tests/integration/sim_*.sh):
# a temp dir with device keys and Fashion-MNIST shards, and fedge-sim runs in it.
# Source it; set FEDGE_BUILD (default build/native). FEDGE_KEEP=1 keeps the dir.

FEDGE_BUILD=${FEDGE_BUILD:-build/native}
BIN="$FEDGE_BUILD/bin"
SIM_DIR=""

sim_cleanup() {
    if [ -n "$SIM_DIR" ] && [ -z "${FEDGE_KEEP:-}" ]; then rm -rf "$SIM_DIR"; fi
}

sim_fail() {
    echo "FAIL: $*" >&2
    local f
    for f in "$SIM_DIR"/*.err; do
        [ -s "$f" ] && { echo "--- $f (tail) ---" >&2; tail -n 5 "$f" >&2; }
    done
    exit 1
}

# sim_setup DEVICES SHARDS [fedge-partition options]: keys for DEVICES devices,
# SHARDS Fashion-MNIST shards (iid unless options say otherwise), the test split
sim_setup() {
    local devices=$1 shards=$2
    shift 2
    SIM_DIR=$(mktemp -d /tmp/fedge-sim.XXXXXX)
    trap sim_cleanup EXIT
    "$BIN/fedge-keygen" devices --count "$devices" --prefix dev- --out "$SIM_DIR/keys" >/dev/null ||
        sim_fail "keygen"
    "$BIN/fedge-partition" --data fashion-mnist --clients "$shards" --kind iid --seed 3 \
        --out "$SIM_DIR/shards" --test-out "$SIM_DIR/test.bin" "$@" >/dev/null || sim_fail "partition"
}

# sim_run NAME ARGS...: fedge-sim with its own database and model store
# SIM_DIR/NAME; --json lines in SIM_DIR/NAME.out, stderr in NAME.err.
# Returns fedge-sim's exit status.
sim_run() {
    local name=$1
    shift
    mkdir -p "$SIM_DIR/$name"
    "$BIN/fedge-sim" --keys "$SIM_DIR/keys" --shards "$SIM_DIR/shards" --test-data "$SIM_DIR/test.bin" \
        --db "$SIM_DIR/$name/fedge.db" --model-dir "$SIM_DIR/$name/models" --json "$@" \
        >"$SIM_DIR/$name.out" 2>"$SIM_DIR/$name.err"
}

# sim_summary NAME KEY: a field of the run's summary object
sim_summary() {
    grep '"summary":true' "$SIM_DIR/$1.out" | tail -n 1 | python3 -c \
        'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print(v if v is not None else "null")' "$2"
}

# sim_sql NAME SQL
sim_sql() { sqlite3 -batch -noheader "$SIM_DIR/$1/fedge.db" "$2"; }

# sim_model_sha NAME: SHA-256 of the run's current model file
sim_model_sha() {
    local path
    path=$(sim_sql "$1" "SELECT path FROM models WHERE version=(SELECT value FROM meta WHERE key='current_version')")
    [ -n "$path" ] || return 1
    sha256sum "$SIM_DIR/$1/models/$path" | cut -d' ' -f1
}

# sim_accepts KEY VALUE: the aggregator lists KEY (--help-config) and takes
# VALUE for it (its configuration refuses a rule or optimiser it does not
# implement; the probe stops at the missing keys file, starting nothing)
sim_accepts() {
    local help said
    help=$("$BIN/fedge-aggregator" --help-config)
    grep -qE "^ +$1 " <<<"$help" || return 1
    said=$("$BIN/fedge-aggregator" "--$1=$2" 2>&1)
    ! grep -qE -- "--($1|${1//_/-}):" <<<"$said"
}
