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
#   national     100,000 students in 1,000 exams on 6 instances over a 3-primary Redis Cluster,
#                one event per student every 10 s for 60 s, one instance restarted mid-run
#                (scale: NATIONAL_* below; docs/bench/national.md)
# PEER=node-ws or PEER=socketio runs capacity, throughput or slow against that
# Node.js peer instead (the other scenarios need examwatch's resume, Redis
# numbering or persistence). Peers (bench/peers/*) also run side by side in
# bench/ab.sh. Results (JSON)
# land in bench/out/. Builds release binaries first.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
SCENARIO="${1:?usage: bench/run.sh latency|cpu|idle|capacity|throughput|redis|storm|slow|persistence|national}"
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
national)
    # Scale (defaults: the issue's national exam). Smoke: NATIONAL_STUDENTS=2000 NATIONAL_EXAMS=20.
    students=${NATIONAL_STUDENTS:-100000}; exams=${NATIONAL_EXAMS:-1000}
    instances=${NATIONAL_INSTANCES:-6}; duration=${NATIONAL_DURATION:-60}
    restart_at=${NATIONAL_RESTART_AT:-$(( duration / 2 ))}  # seconds after sending starts
    procs=${NATIONAL_PROCESSES:-$(( students / 12500 + 1 ))}; nsrc=${NATIONAL_SOURCES:-$procs}
    per_exam=$(( students / exams )); rate=$(( students / 10 ))  # one event per student every 10 s
    export EXAMWATCH__SERVER__DRAIN_WINDOW=${NATIONAL_DRAIN_WINDOW:-10s}
    # The broker: a 3-primary Redis Cluster, or (NATIONAL_REDIS=single) one plain Redis.
    if [ "${NATIONAL_REDIS:-cluster}" = single ]; then start_redis; broker=$REDIS_URL
    else start_redis_cluster "${NATIONAL_REPLICAS:-0}"; broker=$CLUSTER_URL; fi
    # One database for the fleet, as deployed: PostgreSQL (NATIONAL_DB=sqlite: one shared file).
    if [ "${NATIONAL_DB:-postgres}" = sqlite ]; then db="sqlite://$(mktemp -d)/national.db"
    else pg_db examwatch_national; db="postgres://postgres@127.0.0.1:5432/examwatch_national"; fi
    names=(); servers=()
    for i in $(seq 1 "$instances"); do
        start_server "N$i" "$broker" "$db"; names+=("N$i"); a="ADDR_N$i"; servers+=("${!a}")
    done
    sources=$(for i in $(seq 1 "$nsrc"); do printf '127.0.0.%d\n' "$i"; done | paste -sd,)
    victim=N$(( instances > 1 ? 2 : 1 ))
    log="$OUT/national.log"; : >"$log"
    loadgen --server "$(IFS=,; echo "${servers[*]}")" --exams "$exams" --students "$per_exam" --teachers 1 \
        --rate "$rate" --duration "${duration}s" --processes "$procs" --sources "$sources" --acked \
        --connect-concurrency 64 --prefix "nat$RANDOM-" --json "$OUT/national.json" >/dev/null 2>"$log" &
    LG=$!
    until grep -q 'connected; go\|sending' "$log"; do
        kill -0 $LG 2>/dev/null || { echo "the load generator failed:" >&2; tail -5 "$log" >&2; exit 1; }
        sleep 0.5
    done
    ticks() { local t=0 n p; for n in "${names[@]}"; do p="PID_$n"; t=$(( t + $(cpu_ticks "${!p}") )); done; echo $t; }
    t0=$(ticks); s0=$(date +%s.%N)
    sleep "$restart_at"
    t1=$(ticks); s1=$(date +%s.%N)
    rss="{"; for n in "${names[@]}"; do p="PID_$n"; rss+="\"$n\": $(rss_kb "${!p}"),"; done; rss="${rss%,}}"
    echo "national: restarting $victim (SIGTERM: 1012 over $EXAMWATCH__SERVER__DRAIN_WINDOW, then start on the same port)" >&2
    restart_started=$(date +%s.%N)
    restart_server "$victim" "$broker"
    restart_seconds=$(python3 -c "print(round($(date +%s.%N) - $restart_started, 2))")
    wait $LG || true
    # Server CPU over the steady part (sending started .. the restart), all instances together.
    us=$(python3 -c "print(round(($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / ($rate * ($s1 - $s0)), 2))")
    cores=$(python3 -c "print(round(($t1 - $t0) / $(getconf CLK_TCK) / ($s1 - $s0), 2))")
    python3 - "$OUT/national.json" "$students" "$exams" "$instances" "$rate" "$broker" "$rss" "$us" "$restart_seconds" "$victim" "$cores" <<'PY' | tee "$OUT/national-summary.json"
import json, sys
r = json.load(open(sys.argv[1]))
students, exams, instances, rate = map(int, sys.argv[2:6])
out = {
    "students": students, "exams": exams, "instances": instances, "offered_rate": rate,
    "broker": sys.argv[6].split("://")[0], "connections": r["connections"],
    "expected_connections": students + exams, "connect_errors": r["connect_errors"],
    "connect_seconds": r["connect_seconds"], "connect_retries": r.get("connect_retries", 0), "sent": r["sent"], "delivered": r["delivered"],
    "expected": r["expected"], "lost": r["lost"], "duplicated": r["duplicated"],
    "latency_us": r["latency_us"], "rss_kb_before_restart": json.loads(sys.argv[7]),
    "server_cpu_us_per_event": float(sys.argv[8]), "server_cpu_cores": float(sys.argv[11]),
    "restarted": sys.argv[10],
    "restart_process_seconds": float(sys.argv[9]), "moved": r.get("moved"),
}
json.dump(out, open(sys.argv[1].replace("national.json", "national-result.json"), "w"), indent=2)
m = out["moved"] or {}
l = out["latency_us"]
print(json.dumps(out))
print(f"national: {out['connections']}/{out['expected_connections']} connected ({out['connect_retries']} retries), sent {out['sent']}, "
      f"lost {out['lost']}, duplicated {out['duplicated']}, p50/p99/max {l['p50']}/{l['p99']}/{l['max']} us, "
      f"cpu {out['server_cpu_us_per_event']} us/event ({out['server_cpu_cores']} cores), rss kB {out['rss_kb_before_restart']}, "
      f"restarted {out['restarted']}: {m.get('back', 0)}/{m.get('clients', 0)} clients back in "
      f"{m.get('all_back_seconds', 0)} s (longest away {m.get('max_away_seconds', 0)} s)", file=sys.stderr)
PY
    ;;
*) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac
