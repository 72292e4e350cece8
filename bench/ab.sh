#!/usr/bin/env bash
# examwatch side by side with its peers, A/B alternated in one run:
#   bench/ab.sh [ROUNDS]       (default 3 rounds; the order reverses every other round)
#   bench/ab.sh idle [ROUNDS]  only the idle-memory comparison
# Servers: examwatch (SQLite persistence, the default), examwatch-mem (the same
# binary with events.persist = false: no per-event database work, like for
# like with the in-memory peers), Node `ws`, Socket.IO, and socketioxide (Rust).
# Per round and server: p99 at 5k and 20k events/s, server CPU µs per event at
# 20k/s and per fanned-out event with 10 teachers per exam, RSS per idle connection (10,000 sockets); and the two-instance case
# through Redis (examwatch x2, examwatch-mem x2, Socket.IO + @socket.io/redis-adapter x2,
# socketioxide + socketioxide-redis x2).
# Then the latency curve (p50/p99 vs offered rate) for the plot.
# Writes bench/out/ab-*.json; bench/ab-report.py turns them into tables and
# docs/img/latency-vs-rate.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
MODE=all
if [ "${1:-}" = idle ]; then MODE=idle; shift; fi
ROUNDS=${1:-3}
build
build_rust_peer socketioxide
for d in node-ws socketio; do
    [ -d "bench/peers/$d/node_modules" ] || (cd "bench/peers/$d" && npm ci --silent)
done
MEM="EXAMWATCH__EVENTS__PERSIST=false"
ONE="examwatch examwatch-mem node-ws socketio socketioxide"
TWO="examwatch examwatch-mem socketio socketioxide"
reverse() { local out=; for w in $1; do out="$w $out"; done; echo $out; }
framing_of() { case $1 in socketio|socketioxide) echo socketio ;; *) echo examwatch ;; esac; }

one_instance() { # LABEL ROUND
    local label=$1 r=$2 framing
    framing=$(framing_of "$label")
    case $label in
        examwatch) start_server S ;;
        examwatch-mem) start_server S "" "" "$MEM" ;;
        *) start_peer S "$label" ;;
    esac
    # examwatch (not the peers): let the database writer catch up between steps.
    settle() { [ -z "${ADMIN_S:-}" ] || [ "${label#examwatch}" = "$label" ] || drained "$ADMIN_S"; }
    for rate in 5000 20000; do
        settle
        loadgen --server "$ADDR_S" --framing $framing --exams 100 --students 30 --teachers 1 --rate $rate \
            --duration 10s --prefix "ab$rate-" --json "$OUT/ab-$label-lat$rate-r$r.json" >/dev/null 2>&1 \
            || echo "ab: $label at $rate/s: the load generator failed" >&2
    done
    settle
    cpu_run S "$ADDR_S" "$label-r$r" $framing >/dev/null && cp "$OUT/cpu-$label-r$r-us.json" "$OUT/ab-$label-cpu-r$r.json"
    settle
    cpu_run S "$ADDR_S" "$label-fan-r$r" $framing 10 2000 >/dev/null && cp "$OUT/cpu-$label-fan-r$r-us.json" "$OUT/ab-$label-cpufan-r$r.json"
    stop_server S
    idle_only "$label" "$r"
}

two_instances() { # LABEL ROUND
    local label=$1 r=$2 framing
    framing=$(framing_of "$label")
    start_redis
    case $label in
        examwatch) start_server A "$REDIS_URL"; start_server B "$REDIS_URL" ;;
        examwatch-mem) start_server A "$REDIS_URL" "" "$MEM"; start_server B "$REDIS_URL" "" "$MEM" ;;
        *) start_peer A "$label" "$REDIS_URL"; start_peer B "$label" "$REDIS_URL" ;;
    esac
    for rate in 5000 20000; do
        loadgen --server "$ADDR_A" --teacher-server "$ADDR_B" --framing $framing --exams 100 --students 30 \
            --teachers 1 --rate $rate --duration 10s --prefix "ab2$rate-" \
            --json "$OUT/ab-$label-redis$rate-r$r.json" >/dev/null 2>&1 \
            || echo "ab: $label x2 at $rate/s: the load generator failed" >&2
    done
    stop_server A; stop_server B
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    REDIS_PORT=
}

idle_only() { # LABEL ROUND
    local label=$1 r=$2 framing
    framing=$(framing_of "$label")
    case $label in
        examwatch) start_server S ;;
        examwatch-mem) start_server S "" "" "$MEM" ;;
        *) start_peer S "$label" ;;
    esac
    idle_run S "$ADDR_S" 10000 "$label-r$r" $framing >/dev/null && cp "$OUT/idle-$label-r$r-rss.json" "$OUT/ab-$label-idle-r$r.json"
    stop_server S
}

if [ $MODE = idle ]; then
    rm -f "$OUT"/ab-*-idle-r*.json
    for r in $(seq 1 "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then order=$ONE; else order=$(reverse "$ONE"); fi
        for label in $order; do echo "ab: round $r, $label, idle"; idle_only "$label" "$r"; done
    done
    python3 bench/ab-report.py
    exit 0
fi

for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order=$ONE; else order=$(reverse "$ONE"); fi
    for label in $order; do echo "ab: round $r, $label, one instance"; one_instance "$label" "$r"; done
    if [ $((r % 2)) = 1 ]; then order=$TWO; else order=$(reverse "$TWO"); fi
    for label in $order; do echo "ab: round $r, $label, two instances through Redis"; two_instances "$label" "$r"; done
done

# The curve: one server each, rates alternating between them.
start_server E; start_peer N node-ws
for rate in 2000 5000 10000 20000 30000 40000 60000; do
    for label in examwatch node-ws; do
        addr=$ADDR_E; [ $label = node-ws ] && addr=$ADDR_N
        echo "ab: curve $label $rate/s"
        loadgen --server "$addr" --exams 100 --students 30 --teachers 1 --rate $rate --duration 8s \
            --processes 2 --prefix "c$rate-" --json "$OUT/ab-$label-curve$rate.json" >/dev/null 2>&1 || true
    done
done
python3 bench/ab-report.py
