#!/usr/bin/env bash
# CPU and thread switches per event, server.shards 0 vs 2 (docs/bench/shard.md).
#
#   NO_BUILD=1 BIN=target/release bench/shard.sh [ROUNDS]
#
# Per round, for events.persist false then true, the two workloads of
# bench/lib.sh's cpu_run (fan-out 10 at 2k/s, 1 teacher at 20k/s), each
# against a fresh server with shards 0 and 2, in alternating order. Besides
# cpu_run's CPU per fanned-out event: the context switches of all the
# server's threads (/proc/PID/task/*/status, voluntary + nonvoluntary) over
# the same interval, and `uptime` before each run. One JSON line per run in
# bench/out/shard-runs.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build
ROUNDS=${1:-2}
RUNS=$OUT/shard-runs.jsonl
: >"$RUNS"

switches() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s + 0}'
}

# shard_run LABEL SHARDS PERSIST TEACHERS RATE: cpu_run's measure, plus switches.
shard_run() {
    local label=$1 shards=$2 persist=$3 teachers=$4 rate=$5 t0 t1 c0 c1 lg load
    local exams=$(( teachers == 1 ? 100 : 10 ))
    load=$(uptime | sed 's/.*load average: //')
    start_server S "" "" "EXAMWATCH__EVENTS__PERSIST=$persist EXAMWATCH__SERVER__SHARDS=$shards"
    loadgen --server "$ADDR_S" --exams $exams --students 30 --teachers "$teachers" \
        --rate "$rate" --duration 10s --prefix "sh$RANDOM-" >"$OUT/shard-$label.json" 2>"$OUT/shard-$label.log" &
    lg=$!
    started "$lg" "$OUT/shard-$label.log"
    t0=$(cpu_ticks "$PID_S"); c0=$(switches "$PID_S")
    wait $lg
    t1=$(cpu_ticks "$PID_S"); c1=$(switches "$PID_S")
    stop_server S
    python3 - "$OUT/shard-$label.json" "$label" "$shards" "$persist" "$teachers" "$rate" \
        "$((t1 - t0))" "$((c1 - c0))" "$(getconf CLK_TCK)" "$load" <<'PY' | tee -a "$RUNS"
import json, sys
report, label, shards, persist, teachers, rate, ticks, sw, tck, load = sys.argv[1:]
d = json.load(open(report))
out, sent = max(d["delivered"], 1), max(d["sent"], 1)
print(json.dumps({
    "label": label, "shards": int(shards), "persist": persist == "true",
    "teachers": int(teachers), "rate": int(rate), "sent": d["sent"], "fanned_out": d["delivered"],
    "lost": d["lost"], "p99_us": d["latency_us"]["p99"],
    "us_per_fanned_out": round(int(ticks) * 1e6 / int(tck) / out, 2),
    "switches_per_event": round(int(sw) / sent, 3),
    "switches_per_fanned_out": round(int(sw) / out, 3),
    "load": load}))
PY
}

for round in $(seq 1 "$ROUNDS"); do
    for persist in false true; do
        # Alternate which layout goes first, so a drift in the machine's
        # load does not always favour the same one.
        if [ $((round % 2)) = 1 ]; then order="0 2"; else order="2 0"; fi
        for shards in $order; do
            shard_run "r$round-p$persist-s$shards-fan10" "$shards" "$persist" 10 2000
        done
        for shards in $order; do
            shard_run "r$round-p$persist-s$shards-t1" "$shards" "$persist" 1 20000
        done
    done
done
