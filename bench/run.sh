#!/usr/bin/env bash
# Benchmark scenarios, one command each:  bench/run.sh SCENARIO
#   latency      5k and 20k events/s, 100 exams x 30 students x 1 teacher, one instance
#   cpu          server CPU µs per event at a fixed 20k events/s (/proc/PID/stat), and per
#                fanned-out event with 10 teachers per exam (2k events/s x 10)
#   idle         10,000 idle student connections: server RSS per connection
#   capacity     ramp to 19,000 idle connections on one server: RSS per connection, connect rate
#   throughput   step the rate up (100 exams x 30 students) until p99 > 10 ms or an event is lost
#   redis        5k, 10k and 20k events/s, students on instance A, teachers on instance B, through Redis
#   storm        19,000 clients drop and reconnect at once: time until all are back, events lost
#   slow         one teacher stops reading: server RSS over time, other teachers' p99 with and without
#   persistence  the throughput steps with the SQLite writer and with the PostgreSQL writer
# PEER=node-ws or PEER=socketio runs capacity, throughput or slow against that
# Node.js peer instead (the other scenarios need examwatch's resume, Redis
# numbering or persistence). Peers (bench/peers/*) also run side by side in
# bench/ab.sh. Results (JSON)
# land in bench/out/. Builds release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
SCENARIO="${1:?usage: bench/run.sh latency|cpu|idle|capacity|throughput|redis|storm|slow|persistence}"
build
PEER=${PEER:-}
FRAMING=examwatch; [ "$PEER" = socketio ] && FRAMING=socketio
# start_target NAME: examwatch, or the peer named by $PEER.
start_target() { if [ -n "$PEER" ]; then start_peer "$1" "$PEER"; else start_server "$1"; fi; }
LABEL=${PEER:-examwatch}

case "$SCENARIO" in
latency)
    start_server A
    for rate in 5000 20000; do
        loadgen --server "$ADDR_A" --exams 100 --students 30 --teachers 1 --rate $rate --duration 10s \
            --prefix "l$rate-" --json "$OUT/latency-$rate.json" >/dev/null
    done ;;
cpu)
    start_server A
    cpu_run A "$ADDR_A" examwatch
    # Fan-out: 10 exams x 30 students x 10 teachers, 2k events/s = 20k frames/s out.
    cpu_run A "$ADDR_A" examwatch-fanout10 examwatch 10 2000 ;;
idle)
    start_server A
    idle_run A "$ADDR_A" 10000 examwatch ;;
capacity)
    start_target A
    before=$(rss_kb "$PID_A")
    loadgen --server "$ADDR_A" --framing $FRAMING --exams 190 --students 100 --teachers 0 --rate 1 --duration 20s --prefix cap- \
        --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --processes 2 \
        >"$OUT/capacity-$LABEL.json" 2>"$OUT/capacity.log" &
    LG=$!
    until grep -q 'sending' "$OUT/capacity.log"; do sleep 0.5; done
    sleep 12  # idle long enough for freed handshake memory to be returned (see idle_run)
    after=$(rss_kb "$PID_A")
    secs=$(grep -o 'connections in [0-9.]*' "$OUT/capacity.log" | awk '{print $3}' | sort -n | tail -1)
    echo "{\"connections\": 19000, \"connect_seconds\": $secs, \"rss_before_kb\": $before, \"rss_after_kb\": $after, \"bytes_per_connection\": $(( (after - before) * 1024 / 19000 ))}" | tee "$OUT/capacity-$LABEL-rss.json"
    wait $LG ;;
throughput)
    start_target A
    step_rates A "$ADDR_A" "throughput-$LABEL" ;;
redis)
    start_redis
    start_server A "$REDIS_URL"
    start_server B "$REDIS_URL"
    for rate in 5000 10000 20000; do redis_run $rate; done ;;
storm)
    start_server A
    loadgen --server "$ADDR_A" --exams 188 --students 100 --teachers 1 --rate 1000 --duration 20s \
        --storm-after 8s --processes 2 --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 \
        --connect-concurrency 64 --prefix storm- --json "$OUT/storm.json" >/dev/null ;;
slow)
    start_target A
    for slow in 0 1; do
        loadgen --server "$ADDR_A" --framing $FRAMING --exams 10 --students 30 --teachers 2 --rate 10000 \
            --duration 20s --slow-teachers $slow --prefix "slow$slow-" --json "$OUT/slow-$LABEL-$slow.json" \
            >/dev/null 2>"$OUT/slow-$slow.log" &
        LG=$!
        : >"$OUT/slow-$slow-rss.txt"
        while kill -0 $LG 2>/dev/null; do rss_kb "$PID_A" >>"$OUT/slow-$slow-rss.txt"; sleep 0.5; done
        wait $LG
        echo "$LABEL slow=$slow rss_kb min/max: $(sort -n "$OUT/slow-$slow-rss.txt" | sed -n '1p;$p' | paste -sd/) p99_us=$(json_field "$OUT/slow-$LABEL-$slow.json" "['latency_us']['p99']") lost=$(json_field "$OUT/slow-$LABEL-$slow.json" "['lost']") slow_closes=$(metric slow_consumer_closes_total "$ADMIN_A" || echo n/a)"
    done ;;
persistence)
    start_server A
    step_rates A "$ADDR_A" persistence-sqlite
    stop_server A
    pg_db examwatch_bench
    start_server A "" "postgres://postgres@127.0.0.1:5432/examwatch_bench"
    step_rates A "$ADDR_A" persistence-postgres ;;
*) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac
