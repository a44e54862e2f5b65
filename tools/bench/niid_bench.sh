#!/usr/bin/env bash
# tools/bench/niid_bench.sh [BUILD] — the NIID-Bench-style table for fedge
# (issue 10; Li, Diao, Chen, He, "Federated Learning on Non-IID Data Silos: An
# Experimental Study", ICDE 2022): 10 parties on Fashion-MNIST, partitions
# IID / Dirichlet 0.5 / #C=2 / #C=3, strategies FedAvg, FedProx, SCAFFOLD,
# FedAdam and FedAvgM, NIID_SEEDS seeds each (the seed drives the partition,
# the initial model, the clients' shuffles), all through fedge-sim (the real
# aggregator core; docs/SIM.md). Prints one line per run and then the table of
# final test accuracy, mean ± std over the seeds, and the mean wall time.
#
# Environment (defaults in brackets):
#   NIID_SPEC [mlp:784-200-10]  NIID_ROUNDS [50]  NIID_EPOCHS [1]
#   NIID_BATCH [64]  NIID_LR [0.01]  NIID_MOMENTUM [0.9]   (NIID-Bench: batch 64,
#   lr 0.01, momentum 0.9, 10 local epochs, a simple CNN)
#   NIID_SEEDS ["1 2 3"]  NIID_PARTS ["iid dir0.5 c2 c3"]
#   NIID_STRATS ["fedavg fedprox scaffold fedadam fedavgm"]
#   NIID_JOBS [1] runs at once (each fedge-sim on NIID_THREADS [1] threads)
#   NIID_OUT [a temporary folder]: keeps every run's JSON there
set -uo pipefail
BUILD=${1:-build/native}
cd "$(dirname "$0")/../.."
BIN="$PWD/$BUILD/bin"
SPEC=${NIID_SPEC:-mlp:784-200-10} ROUNDS=${NIID_ROUNDS:-50} EPOCHS=${NIID_EPOCHS:-1}
BATCH=${NIID_BATCH:-64} LR=${NIID_LR:-0.01} MOM=${NIID_MOMENTUM:-0.9}
SEEDS=${NIID_SEEDS:-1 2 3} PARTS=${NIID_PARTS:-iid dir0.5 c2 c3}
STRATS=${NIID_STRATS:-fedavg fedprox scaffold fedadam fedavgm}
JOBS=${NIID_JOBS:-1} THREADS=${NIID_THREADS:-1}
for p in fedge-sim fedge-partition fedge-keygen; do
    [ -x "$BIN/$p" ] || { echo "build first: make (no $BIN/$p)"; exit 1; }
done
if [ -n "${NIID_OUT:-}" ]; then OUT=$NIID_OUT; mkdir -p "$OUT"; else
    OUT=$(mktemp -d /tmp/fedge-niid.XXXXXX); trap 'rm -rf "$OUT"' EXIT; fi

strategy_args() { # name -> fedge-sim aggregator overrides
    case $1 in
    fedavg) ;;
    fedprox) echo "--fedprox-mu 0.01" ;;
    scaffold) echo "--scaffold" ;;
    fedadam) echo "--server-optimizer adam --server-lr 0.01 --server-beta1 0.9 --server-beta2 0.99 --server-tau 1e-3" ;;
    fedavgm) echo "--server-optimizer momentum --server-momentum 0.9 --server-lr 0.3" ;;
    *) echo "unknown strategy $1" >&2; return 1 ;;
    esac
}
partition_args() {
    case $1 in
    iid) echo "--kind iid" ;;
    dir*) echo "--kind dirichlet --beta ${1#dir}" ;;
    c*) echo "--kind labels --classes-per-client ${1#c}" ;;
    *) echo "unknown partition $1" >&2; return 1 ;;
    esac
}

"$BIN/fedge-keygen" devices --count 10 --out "$OUT/keys" >/dev/null || exit 1
for part in $PARTS; do
    for seed in $SEEDS; do
        d="$OUT/shards-$part-$seed"
        [ -f "$d/shard-009.bin" ] && continue
        # shellcheck disable=SC2046
        "$BIN/fedge-partition" --data fashion-mnist --clients 10 $(partition_args "$part") --seed "$seed" \
            --out "$d" --test-out "$OUT/test.bin" >/dev/null || exit 1
    done
done

run_one() { # part strat seed
    local part=$1 strat=$2 seed=$3 r="$OUT/run-$1-$2-$3"
    rm -rf "$r" && mkdir -p "$r"
    # shellcheck disable=SC2046
    "$BIN/fedge-sim" --keys "$OUT/keys" --shards "$OUT/shards-$part-$seed" --test-data "$OUT/test.bin" \
        --db "$r/fedge.db" --model-dir "$r/models" --model-spec "$SPEC" --rounds "$ROUNDS" \
        --local-epochs "$EPOCHS" --batch "$BATCH" --lr "$LR" --momentum "$MOM" --seed "$seed" \
        --threads "$THREADS" $(strategy_args "$strat") --json >"$r/out.json" 2>"$r/err.log"
    local rc=$?
    local s
    s=$(grep '"summary":true' "$r/out.json" | tail -1)
    python3 - "$part" "$strat" "$seed" "$rc" "$s" <<'PY'
import json, sys
part, strat, seed, rc, line = sys.argv[1:6]
try:
    s = json.loads(line)
    print("RUN %-6s %-9s seed %s  acc %.4f  wall %6.1fs  rounds %d  exit %s" % (part, strat, seed, s["accuracy"], s["wall_s"], s["aggregated"], rc))
except Exception:
    print("RUN %-6s %-9s seed %s  FAILED exit %s" % (part, strat, seed, rc))
PY
    rm -rf "$r/models" "$r/fedge.db"*
}

echo "NIID-Bench-style runs: 10 parties, $SPEC, $ROUNDS rounds, $EPOCHS local epoch(s), batch $BATCH, lr $LR, momentum $MOM"
jobs_running() { jobs -rp | wc -l; }
for part in $PARTS; do
    for strat in $STRATS; do
        for seed in $SEEDS; do
            while [ "$(jobs_running)" -ge "$JOBS" ]; do sleep 0.5; done
            run_one "$part" "$strat" "$seed" >>"$OUT/runs.txt" &
        done
    done
done
wait
sort "$OUT/runs.txt"
python3 - "$OUT/runs.txt" "$PARTS" "$STRATS" <<'PY'
import collections, statistics, sys
path, parts, strats = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
acc = collections.defaultdict(list); wall = collections.defaultdict(list)
for line in open(path):
    f = line.split()
    if len(f) > 8 and f[5] == "acc":
        acc[(f[1], f[2])].append(float(f[6])); wall[(f[1], f[2])].append(float(f[8].rstrip("s")))
names = {"iid": "IID", "c2": "#C=2", "c3": "#C=3"}
print()
print("| partition | " + " | ".join(strats) + " |")
print("| --- |" + " --- |" * len(strats))
for p in parts:
    cells = []
    for s in strats:
        a = acc.get((p, s), [])
        if not a:
            cells.append("failed")
        elif len(a) == 1:
            cells.append("%.1f%%" % (100 * a[0]))
        else:
            cells.append("%.1f%% ± %.1f%%" % (100 * statistics.mean(a), 100 * statistics.stdev(a)))
    label = names.get(p, "Dir(%s)" % p[3:] if p.startswith("dir") else p)
    print("| %s | %s |" % (label, " | ".join(cells)))
print()
print("mean wall seconds per run: " + ", ".join("%s %.0f" % (s, statistics.mean(sum((wall[(p, s)] for p in parts), [])))
      for s in strats if any(wall[(p, s)] for p in parts)))
PY
