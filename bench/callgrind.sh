#!/usr/bin/env bash
# Instruction counts per function (valgrind --tool=callgrind), repeatable
# whatever else the machine does: the server runs under callgrind with
# instrumentation off; after a warm-up connect it is switched on for
# 10 exams x 30 students x 1 teacher at 200 events/s for 10 s (2,000 events,
# plus the 310 handshakes), then off; the profile is written at shutdown.
#   bench/callgrind.sh  ->  bench/out/callgrind.out, top functions printed
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build
port=$(free_port)
EXAMWATCH__AUTH__JWT_SECRET=$SECRET EXAMWATCH__SERVER__BIND=127.0.0.1:$port EXAMWATCH__SERVER__ADMIN_BIND=127.0.0.1:$(free_port) \
EXAMWATCH__LIMITS__MESSAGES_PER_SECOND=1000 EXAMWATCH__LIMITS__HANDSHAKES_PER_IP=0 EXAMWATCH__LIMITS__CONNECTIONS_PER_IP=0 EXAMWATCH__LOG__LEVEL=warn EXAMWATCH__EXAM__IDLE_AFTER=1h \
EXAMWATCH__DATABASE__URL="sqlite://$(mktemp -d)/cg.db" \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --instr-atstart=no \
    $BIN/examwatch >"$OUT/callgrind-server.log" 2>&1 &
VPID=$!
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done  # slow under valgrind
loadgen --server "127.0.0.1:$port" --exams 10 --students 30 --teachers 1 --rate 1 --duration 1s --prefix w- >/dev/null 2>&1
callgrind_control -i on $VPID >/dev/null
loadgen --server "127.0.0.1:$port" --exams 10 --students 30 --teachers 1 --rate 200 --duration 10s \
    --prefix cg- --json "$OUT/callgrind-load.json" >/dev/null 2>&1
callgrind_control -i off $VPID >/dev/null
kill -TERM $VPID; wait $VPID || true
callgrind_annotate --inclusive=yes "$OUT/callgrind.out" | sed -n '/PROGRAM TOTALS/,+40p' | cut -c1-180
