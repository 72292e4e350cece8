#!/usr/bin/env bash
# Two examwatch builds A/B alternated against Node `ws`, on the CPU benchmark's
# two workloads (cpu_run of bench/lib.sh: 100 exams x 30 x 1 teacher at 20k/s,
# and 10 exams x 30 x 10 teachers at 2k/s), for a before/after claim:
#   bench/ab-bins.sh BASE_DIR NEW_DIR [ROUNDS]     (default 3 rounds)
# BASE_DIR and NEW_DIR hold an `examwatch` binary each (e.g. copies of
# target/release from two commits). CONFIG_FROM=COMMIT runs both on that
# commit's config/default.toml (an older binary refuses a newer file's keys).
# EXTRA="VAR=value ..." adds settings to both. Prints one line per run.
set -euo pipefail
BASE=$(realpath "${1:?usage: bench/ab-bins.sh BASE_DIR NEW_DIR [ROUNDS]}")
NEW=$(realpath "${2:?usage: bench/ab-bins.sh BASE_DIR NEW_DIR [ROUNDS]}")
ROUNDS=${3:-3}
cd "$(dirname "$0")/.."
REPO=$PWD
LOADGEN=${LOADGEN:-$REPO/target/release/examwatch-loadgen}
[ -d bench/peers/node-ws/node_modules ] || (cd bench/peers/node-ws && npm ci --silent)
if [ -n "${CONFIG_FROM:-}" ]; then
    root=$(mktemp -d)
    mkdir "$root/config"
    git show "$CONFIG_FROM:config/default.toml" >"$root/config/default.toml"
    ln -s "$REPO/bench" "$root/bench"
    cd "$root"
fi
source bench/lib.sh
trap 'kill ${PIDS[@]} 2>/dev/null' EXIT
us() { python3 -c "import json,sys;print(json.load(sys.stdin)['us_per_event'])"; }
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="base new node"; else order="node new base"; fi
    for b in $order; do
        case $b in
            node) start_peer A node-ws ;;
            base) BIN=$BASE start_server A "" "" "${EXTRA:-}" ;;
            new) BIN=$NEW start_server A "" "" "${EXTRA:-}" ;;
        esac
        one=$(cpu_run A "$ADDR_A" ab1 examwatch | us)
        p99=$(json_field "$OUT/cpu-ab1.json" "['latency_us']['p99']")
        fan=$(cpu_run A "$ADDR_A" ab10 examwatch 10 2000 | us)
        echo "round=$round server=$b us_per_event_1teacher=$one p99_20k_us=$p99 us_per_fanned_out_event=$fan load=$(cut -d' ' -f1 /proc/loadavg)"
        kill "$PID_A"; wait "$PID_A" 2>/dev/null || true
    done
done
