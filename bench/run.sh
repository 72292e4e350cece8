#!/usr/bin/env bash
# Benchmark scenarios, one command each:  bench/run.sh SCENARIO
#   latency   5k and 20k events/s, 100 exams x 30 students x 1 teacher
#   idle      10,000 idle student connections: server RSS per connection
#   cpu       server CPU µs per event at a fixed 20k events/s (/proc/PID/stat)
#   capacity  ramp to 19,000 idle connections on one server: RSS per connection, connect rate
# Results (JSON) land in bench/out/. Builds release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO="${1:?usage: bench/run.sh latency|idle|cpu}"
OUT=bench/out; mkdir -p "$OUT"
SECRET=bench-secret-bench-secret-bench-secret-42
PORT=${PORT:-9200}
cargo build --release --bins -q
BIN=target/release
DB="$(mktemp -d)/bench.db"

start_server() {
    EXAMWATCH__AUTH__JWT_SECRET=$SECRET EXAMWATCH__SERVER__BIND=127.0.0.1:$PORT \
    EXAMWATCH__LIMITS__MESSAGES_PER_SECOND=1000 EXAMWATCH__LOG__LEVEL=warn \
    EXAMWATCH__EXAM__IDLE_AFTER=1h EXAMWATCH__DATABASE__URL=sqlite://$DB \
        $BIN/examwatch >"$OUT/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
    echo "server did not start" >&2; exit 1
}
stop_server() { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
loadgen() { $BIN/examwatch-loadgen --server 127.0.0.1:$PORT --secret $SECRET "$@"; }
trap stop_server EXIT

case "$SCENARIO" in
latency)
    start_server
    for rate in 5000 20000; do
        loadgen --exams 100 --students 30 --teachers 1 --rate $rate --duration 10s \
            --prefix "l$rate-" --json "$OUT/latency-$rate.json" >/dev/null
    done ;;
idle)
    start_server
    before=$(rss_kb)
    loadgen --exams 100 --students 100 --teachers 0 --rate 1 --duration 20s --prefix idle- \
        >"$OUT/idle.json" 2>"$OUT/idle.log" &
    LG=$!
    until grep -q 'connections in' "$OUT/idle.log"; do sleep 0.5; done
    sleep 2
    after=$(rss_kb)
    echo "{\"connections\": 10000, \"rss_before_kb\": $before, \"rss_after_kb\": $after, \"bytes_per_connection\": $(( (after - before) * 1024 / 10000 ))}" | tee "$OUT/idle-rss.json"
    wait $LG ;;
cpu)
    start_server
    loadgen --exams 100 --students 30 --teachers 1 --rate 20000 --duration 10s --prefix cpu- \
        >"$OUT/cpu.json" 2>"$OUT/cpu.log" &
    LG=$!
    until grep -q 'connections in' "$OUT/cpu.log"; do sleep 0.2; done
    t0=$(cpu_ticks)
    wait $LG
    t1=$(cpu_ticks)
    events=$(python3 -c "import json;print(json.load(open('$OUT/cpu.json'))['delivered'])")
    echo "{\"events\": $events, \"cpu_ticks\": $((t1 - t0)), \"us_per_event\": $(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / events ))}" | tee "$OUT/cpu-us.json" ;;
capacity)
    start_server
    before=$(rss_kb)
    loadgen --exams 190 --students 100 --teachers 0 --rate 1 --duration 20s --prefix cap- \
        --sources 127.0.0.1,127.0.0.2 >"$OUT/capacity.json" 2>"$OUT/capacity.log" &
    LG=$!
    until grep -q 'connections in' "$OUT/capacity.log"; do sleep 0.5; done
    sleep 2
    after=$(rss_kb)
    secs=$(grep -o 'connections in [0-9.]*' "$OUT/capacity.log" | awk '{print $3}')
    echo "{\"connections\": 19000, \"connect_seconds\": $secs, \"rss_before_kb\": $before, \"rss_after_kb\": $after, \"bytes_per_connection\": $(( (after - before) * 1024 / 19000 ))}" | tee "$OUT/capacity-rss.json"
    wait $LG ;;
*) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac
