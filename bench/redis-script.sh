#!/usr/bin/env bash
# Redis's own CPU per event for the numbering script, measured as CPU time
# (INFO cpu, user + sys), so other load on the machine barely moves it:
# a private redis-server, two subscribers on the exam's channel (two
# instances), and redis-benchmark calling the script. Compares the
# per-event script of commit 9508da4 (one call, one PUBLISH per event) with
# the batch script of src/broker/publish.rs at 1, 2, 5, 20 and 100 events
# per call. A ~300-byte student event; every call a new draft / batch.
#   bench/redis-script.sh  ->  one line per case, µs of Redis CPU per event
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-40000}
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" >/dev/null
cli() { redis-cli -p "$port" "$@"; }
for _ in $(seq 1 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
subs=()
trap '[ ${#subs[@]} -eq 0 ] || kill "${subs[@]}" 2>/dev/null; cli shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
cpu() { cli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }
lua_of() { awk '/_LUA: &str = r#"/ {f = 1; next} /^"#;/ {f = 0} f'; }

old=$(cli script load "$(git show 9508da4:src/broker/redis.rs | lua_of)")
new=$(cli script load "$(lua_of <src/broker/publish.rs)")
before='{"type":"student","seq":'
after=',"cause":"progress","at":1764620000000,"student":{"student_id":"s1","name":"Student 1","connected":true,"status":"active","current_question":12,"answered":11,"connections":1,"focus_lost":0,"tab_hidden":0,"last_seen":1764620000000,"flags":[],"network":"ok","client":"Mozilla/5.0 (X11; Linux x86_64)"}}'

# run LABEL EVENTS_PER_CALL ARGS...: Redis CPU µs per event over $EVENTS events.
run() {
    local label=$1 per=$2 r0 r1; shift 2
    local calls=$((EVENTS / per))
    r0=$(cpu)
    redis-benchmark -p "$port" -q -n "$calls" -c 4 -P 16 -r 1000000000 "$@" >/dev/null
    r1=$(cpu)
    python3 -c "print('$label: events/call=$per calls=$calls redis_cpu_us_per_event=' + str(round(($r1 - $r0) * 1e6 / ($calls * $per), 2)))"
}

for kind in subscribe ssubscribe; do
    channel='exam:e'; [ $kind = ssubscribe ] && channel='exam:{e}'
    for _ in 1 2; do redis-cli -p "$port" $kind "$channel" >/dev/null & subs+=($!); done
    sleep 0.3
    if [ $kind = subscribe ]; then
        run "before (9508da4)" 1 EVALSHA "$old" 5 '{e}:seq' "$channel" '{e}:history' '{e}:students' \
            '{e}:draft:__rand_int__' 0 "${before}0${after}" node-a student s1 1024
    else
        for per in 1 2 5 20 100; do
            args=()
            for i in $(seq 1 "$per"); do args+=("" student "s$i" 0 "$before" "$after"); done
            run "batched" "$per" EVALSHA "$new" 5 '{e}:seq' "$channel" '{e}:history' '{e}:students' \
                '{e}:batches' 'p__rand_int__' 1 1024 node-a "${args[@]}"
        done
    fi
    kill "${subs[@]}" 2>/dev/null || true; subs=()
done
