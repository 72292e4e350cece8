# Helpers shared by bench/run.sh and bench/ab.sh (sourced, not run).
OUT=bench/out; mkdir -p "$OUT"
SECRET=bench-secret-bench-secret-bench-secret-42
BIN=${BIN:-target/release}
PIDS=()

# The server and the load generator (bench/loadgen, a workspace member).
# NO_BUILD=1 or SKIP_BUILD=1 (with BIN=dir) runs binaries built elsewhere,
# e.g. a baseline, or while a cargo command holds the build directory's lock.
build() { [ -n "${NO_BUILD:-}${SKIP_BUILD:-}" ] || cargo build --release --locked --workspace --bins -q; }
# The Rust peers are cargo projects of their own (own workspace and lock
# file, outside the server's): built into target/peers.
PEER_BIN=target/peers/release
build_rust_peer() { [ -n "${NO_BUILD:-}${SKIP_BUILD:-}" ] || cargo build --release --locked -q --manifest-path "bench/peers/$1/Cargo.toml" --target-dir target/peers; }

# start_server NAME [REDIS_URL] [DATABASE_URL] [ENV] [PORT] [ADMIN_PORT]:
# sets PID_NAME, ADDR_NAME, ADMIN_NAME (the operators' listener, for
# metrics) and DB_NAME. ENV: extra space-separated VAR=value settings, e.g.
# "EXAMWATCH__EVENTS__PERSIST=false". PORT and ADMIN_PORT start it again
# where it was (a restart). Other EXAMWATCH__ variables in the environment
# reach it too.
start_server() {
    local name=$1 redis=${2:-} db=${3:-} extra=${4:-} port=${5:-} admin=${6:-}
    [ -n "$port" ] || port=$(free_port)
    [ -n "$admin" ] || admin=$(free_port)
    [ -n "$db" ] || db="sqlite://$(mktemp -d)/bench.db"
    EXAMWATCH__AUTH__JWT_SECRET=$SECRET EXAMWATCH__SERVER__BIND=127.0.0.1:$port \
    EXAMWATCH__SERVER__ADMIN_BIND=127.0.0.1:$admin \
    EXAMWATCH__LIMITS__MESSAGES_PER_SECOND=1000 EXAMWATCH__LIMITS__HANDSHAKES_PER_IP=0 EXAMWATCH__LIMITS__CONNECTIONS_PER_IP=0 EXAMWATCH__LOG__LEVEL=warn \
    EXAMWATCH__EXAM__IDLE_AFTER=1h EXAMWATCH__DATABASE__URL=$db \
    EXAMWATCH__BROKER__REDIS_URL=$redis EXAMWATCH__DATABASE__INSTANCE_ID=bench-$name \
        env $extra $BIN/examwatch >"$OUT/server-$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    printf -v "PID_$name" %s "$pid"; printf -v "ADDR_$name" %s "127.0.0.1:$port"
    printf -v "ADMIN_$name" %s "127.0.0.1:$admin"; printf -v "DB_$name" %s "$db"
    wait_http "127.0.0.1:$port"
}

# restart_server NAME [REDIS_URL]: SIGTERM (the drain: 1012 over
# server.drain_window), wait for the exit, start again on the same ports
# and database.
restart_server() {
    local addr_var="ADDR_$1" admin_var="ADMIN_$1" db_var="DB_$1"
    stop_server "$1"
    start_server "$1" "${2:-}" "${!db_var}" "" "${!addr_var##*:}" "${!admin_var##*:}"
}

# start_peer NAME DIR [REDIS_URL]: a peer from bench/peers/DIR: Node.js
# (server.js), or Rust (Cargo.toml, built by build_rust_peer).
start_peer() {
    local name=$1 dir=$2 redis=${3:-} port
    port=$(free_port)
    if [ -f "bench/peers/$dir/Cargo.toml" ]; then
        PORT=$port REDIS_URL=$redis "$PEER_BIN/examwatch-peer-$dir" >"$OUT/peer-$name.log" 2>&1 &
    else
        [ -d "bench/peers/$dir/node_modules" ] || (cd "bench/peers/$dir" && npm ci --silent)
        PORT=$port REDIS_URL=$redis node "bench/peers/$dir/server.js" >"$OUT/peer-$name.log" 2>&1 &
    fi
    local pid=$!
    PIDS+=("$pid")
    printf -v "PID_$name" %s "$pid"; printf -v "ADDR_$name" %s "127.0.0.1:$port"
    wait_http "127.0.0.1:$port"
}

wait_http() {
    for _ in $(seq 1 100); do curl -fs "http://$1/healthz" >/dev/null && return; sleep 0.1; done
    echo "server on $1 did not start" >&2; exit 1
}

stop_server() {
    local pid_var="PID_$1"
    kill -TERM "${!pid_var}" 2>/dev/null || true
    wait "${!pid_var}" 2>/dev/null || true
}

cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -z "${REDIS_PORT:-}" ] || redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    for p in "${CLUSTER_PORTS[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
}
CLUSTER_PORTS=()
trap cleanup EXIT

# A free port below the kernel's ephemeral range (32768 up): a restarted
# server gets its port back even while the load generator's thousands of
# client sockets hold ephemeral ports (one of which could be its old port).
free_port() {
    python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(1000):
    p = random.randrange(10000, max(low, 10001))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()
'
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# metric NAME ADMIN_ADDR: one examwatch metric (labelled with instance_id).
metric() { curl -fs "http://$2/metrics" | awk -v m="examwatch_$1" 'index($1, m "{") == 1 {print $2}'; }
# LOADGEN: another load generator binary (default: this tree's).
loadgen() { ${LOADGEN:-$BIN/examwatch-loadgen} --secret $SECRET "$@"; }
json_field() { python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(eval('d'+sys.argv[2]))" "$1" "$2"; }

start_redis() {
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --logfile "$PWD/$OUT/redis.log" >/dev/null
    for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
}

# redis_cpu: Redis's own CPU seconds so far (INFO cpu, user + sys).
redis_cpu() { redis-cli -p "$REDIS_PORT" info cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }

# redis_run RATE: students on A, teachers on B, through Redis, at RATE
# events/s for 10 s (100 exams x 30 students x 1 teacher). Besides the load
# generator's report, what each event sent cost while sending (and
# draining): Redis CPU (INFO cpu), Redis commands (INFO commandstats, reset
# when sending starts), and each instance's CPU (/proc/PID/stat).
redis_run() {
    local rate=$1 a0 b0 r0 a1 b1 r1 lg
    loadgen --server "$ADDR_A" --teacher-server "$ADDR_B" --exams 100 --students 30 --teachers 1 \
        --rate "$rate" --duration 10s --prefix "r$rate-$RANDOM-" --json "$OUT/redis-$rate.json" \
        >/dev/null 2>"$OUT/redis-$rate.log" &
    lg=$!
    until grep -q 'sending' "$OUT/redis-$rate.log"; do sleep 0.2; done
    redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
    a0=$(cpu_ticks "$PID_A"); b0=$(cpu_ticks "$PID_B"); r0=$(redis_cpu)
    wait $lg
    a1=$(cpu_ticks "$PID_A"); b1=$(cpu_ticks "$PID_B"); r1=$(redis_cpu)
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' >"$OUT/redis-$rate-commandstats.txt"
    python3 - "$OUT/redis-$rate.json" "$OUT/redis-$rate-commandstats.txt" "$rate" \
        "$((a1 - a0))" "$((b1 - b0))" "$r0" "$r1" "$(getconf CLK_TCK)" <<'PY' | tee "$OUT/redis-$rate-cost.json"
import json, sys
report, stats, rate, a, b, r0, r1, tck = sys.argv[1:]
d = json.load(open(report))
sent = max(d["sent"], 1)
cmds = {}
for line in open(stats):
    if line.startswith("cmdstat_"):
        name, fields = line[len("cmdstat_"):].strip().split(":", 1)
        f = dict(kv.split("=") for kv in fields.split(","))
        cmds[name] = {"calls_per_event": round(int(f["calls"]) / sent, 3),
                      "usec_per_call": float(f["usec_per_call"]),
                      "usec_per_event": round(int(f["usec"]) / sent, 2)}
print(json.dumps({
    "rate": int(rate), "sent": d["sent"], "delivered": d["delivered"], "lost": d["lost"],
    "duplicated": d["duplicated"], "resyncs": d["resyncs"], "p50_us": d["latency_us"]["p50"],
    "p99_us": d["latency_us"]["p99"], "max_us": d["latency_us"]["max"],
    "redis_cpu_us_per_event": round((float(r1) - float(r0)) * 1e6 / sent, 2),
    "a_cpu_us_per_event": round(int(a) * 1e6 / int(tck) / sent, 2),
    "b_cpu_us_per_event": round(int(b) * 1e6 / int(tck) / sent, 2),
    "commands": cmds}))
PY
}

# A free port whose cluster bus port (port + 10000) is free as well.
free_cluster_port() {
    python3 -c '
import socket
while True:
    a, b = socket.socket(), socket.socket()
    a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    if p + 10000 > 65535: continue
    try: b.bind(("127.0.0.1", p + 10000))
    except OSError: continue
    print(p); break'
}

# start_redis_cluster [REPLICAS]: a Redis Cluster of 3 primaries (and
# REPLICAS replicas of each, default 0) on free ports, nothing kept on
# disk; waits for cluster_state:ok on every node. Sets CLUSTER_PORTS and
# CLUSTER_URL (redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3, the
# primaries, for broker.redis_url).
start_redis_cluster() {
    local replicas=${1:-0} dir port p addrs=() ok
    dir=$(mktemp -d)
    for _ in $(seq 1 $(( 3 * (1 + replicas) ))); do
        port=$(free_cluster_port)
        redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file "$dir/nodes-$port.conf" --dir "$dir" --save "" --appendonly no \
            --daemonize yes --logfile "$PWD/$OUT/redis-cluster-$port.log" >/dev/null
        CLUSTER_PORTS+=("$port"); addrs+=("127.0.0.1:$port")
    done
    for p in "${CLUSTER_PORTS[@]}"; do
        for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes \
        >"$OUT/redis-cluster-create.log" 2>&1
    for p in "${CLUSTER_PORTS[@]}"; do
        ok=
        for _ in $(seq 1 100); do
            redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && { ok=1; break; }
            sleep 0.1
        done
        [ -n "$ok" ] || { echo "redis cluster node $p never reached cluster_state:ok" >&2; exit 1; }
    done
    CLUSTER_URL="redis+cluster://$(IFS=,; echo "${addrs[*]:0:3}")"
}

pg_db() {
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $1" >/dev/null
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $1" >/dev/null
}

# started PID LOG: waits until the load generator PID says it is sending;
# fails (with its log's last lines) if it ended before that.
started() {
    until grep -qs 'sending' "$2"; do
        if ! kill -0 "$1" 2>/dev/null; then
            echo "load generator ended before sending: $(grep -v '^ ' "$2" | tail -3)" >&2
            return 1
        fi
        sleep 0.2
    done
}

# drained ADMIN_ADDR: waits (up to 120 s) until examwatch's database writer
# has nothing pending, so a measure does not pay for the previous one's
# backlog (nor get refused with 503 past database.queue_limit).
drained() {
    for _ in $(seq 1 600); do
        [ "$(metric db_pending_writes "$1")" = 0 ] && return 0
        sleep 0.2
    done
    echo "examwatch's database writer did not drain within 120 s" >&2
}

# cpu_run NAME ADDR LABEL [FRAMING] [TEACHERS] [RATE]: server CPU µs per
# fanned-out event (events x teachers per exam) at RATE (default 20k/s,
# 100 exams x 30 students x 1 teacher).
cpu_run() {
    local pid_var="PID_$1" t0 t1 events teachers=${5:-1} rate=${6:-20000}
    local exams=$(( teachers == 1 ? 100 : 10 ))
    loadgen --server "$2" --framing "${4:-examwatch}" --exams $exams --students 30 --teachers "$teachers" \
        --rate "$rate" --duration 10s --prefix "cpu$RANDOM-" >"$OUT/cpu-$3.json" 2>"$OUT/cpu-$3.log" &
    local lg=$!
    started "$lg" "$OUT/cpu-$3.log" || return 1
    t0=$(cpu_ticks "${!pid_var}")
    wait $lg
    t1=$(cpu_ticks "${!pid_var}")
    events=$(json_field "$OUT/cpu-$3.json" "['delivered']")
    echo "{\"server\": \"$3\", \"teachers_per_exam\": $teachers, \"fanned_out\": $events, \"cpu_ticks\": $((t1 - t0)), \"us_per_event\": $(python3 -c "print(round(($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / $events, 2))")}" \
        | tee "$OUT/cpu-$3-us.json"
}

# idle_run NAME ADDR N LABEL [FRAMING]: RSS per idle connection, read after
# the connections have sat idle for 12 s (allocators return freed handshake
# memory lazily: jemalloc after ~10 s, so an earlier reading varies by 2x).
idle_run() {
    local pid_var="PID_$1" before after
    before=$(rss_kb "${!pid_var}")
    loadgen --server "$2" --framing "${5:-examwatch}" --exams $(($3 / 100)) --students 100 --teachers 0 \
        --rate 1 --duration 16s --prefix "idle$RANDOM-" >"$OUT/idle-$4.json" 2>"$OUT/idle-$4.log" &
    local lg=$!
    started "$lg" "$OUT/idle-$4.log" || return 1
    sleep 12
    after=$(rss_kb "${!pid_var}")
    wait $lg
    echo "{\"server\": \"$4\", \"connections\": $3, \"rss_before_kb\": $before, \"rss_after_kb\": $after, \"bytes_per_connection\": $(( (after - before) * 1024 / $3 ))}" \
        | tee "$OUT/idle-$4-rss.json"
}

# step_rates NAME ADDR LABEL: raise the rate until p99 > 10 ms or a loss.
step_rates() {
    local rate p99 lost
    for rate in 5000 10000 15000 20000 30000 40000 60000 80000 100000 150000; do
        loadgen --server "$2" --framing "${FRAMING:-examwatch}" --exams 100 --students 30 --teachers 1 --rate $rate --duration 10s \
            --processes 2 --prefix "t$rate-$RANDOM-" --json "$OUT/$3-$rate.json" >/dev/null 2>&1 || true
        p99=$(json_field "$OUT/$3-$rate.json" "['latency_us']['p99']")
        lost=$(json_field "$OUT/$3-$rate.json" "['lost']")
        echo "$3 rate=$rate achieved=$(json_field "$OUT/$3-$rate.json" "['achieved_rate']") p99_us=$p99 lost=$lost"
        if [ "$p99" -gt 10000 ] || [ "$lost" -gt 0 ]; then break; fi
    done
}
