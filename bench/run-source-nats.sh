#!/usr/bin/env bash
# Benchmark: nats source -> sensor (one data filter) -> log trigger, embedded bus, against a
# nats-server on the same machine; then bench/run-webhook-log.sh in the same run, side by side.
# A LuaJIT publisher (spec/helpers/nats_peer.lua's protocol text) sends ~150-byte JSON bodies at
# RATE messages/s for DUR seconds, in 1 ms slices stamped with the wall clock; each trigger line
# carries its own time, so publish-to-trigger latency is read from the log (p50/p99), CPU seconds
# of the herald process per million events from /proc, and loss is counted (published, flushed
# with a PING/PONG, against trigger lines).
# NATS_JS=1: through the jetstream option instead (a file stream BENCH on bench.>, a durable pull
# consumer acked once the bus holds each event; the publisher's messages are not PubAck'ed).
#   usage: [HERALD_BIN=...] [NATS_JS=1] bench/run-source-nats.sh [duration_s=10] [rate=60000] [webhook=1]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
RATE=${2:-60000}
WEBHOOK=${3:-1}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-nats-XXXXXX)
NPORT=${NATS_PORT:-$((20000 + RANDOM % 20000))}
MPORT=${METRICS_PORT:-$((40000 + RANDOM % 20000))}

JS=${NATS_JS:-0}
JSARGS=""
[ "$JS" = 1 ] && JSARGS="-js -sd $OUT/js"
# shellcheck disable=SC2086
nats-server -a 127.0.0.1 -p $NPORT $JSARGS >"$OUT/nats.log" 2>&1 &
NPID=$!
trap 'kill $NPID 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$NPORT) 2>/dev/null && break; sleep 0.02; done

mkdir -p "$OUT/specs"
EXTRA=""
if [ "$JS" = 1 ]; then
  luajit - "$NPORT" <<'LUA'
package.path = "spec/?.lua;" .. package.path
local c = assert(require("helpers.nats_peer").connect(tonumber(arg[1])))
c:js_stream("BENCH", {"bench.>"})
LUA
  EXTRA="      jetstream: {stream: BENCH, durable: bench, maxAckPending: 8192}"
fi
cat >"$OUT/specs/es.yaml" <<EOF
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: bench
spec:
  nats:
    ingest:
      url: nats://127.0.0.1:$NPORT
      subject: bench.orders
      jsonBody: true
$EXTRA
EOF
cat >"$OUT/specs/sensor.yaml" <<'EOF'
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: bench
spec:
  dependencies:
    - name: order
      eventSourceName: bench
      eventName: ingest
      filters:
        data:
          - path: body.type
            type: string
            value:
              - "^order\\."
  triggers:
    - template:
        name: log
        log: {}
EOF

"$BIN" run "$OUT/specs" --metrics-addr 127.0.0.1:$MPORT --log-level warn >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
PID=$!
trap 'kill $PID $NPID 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 300); do
  curl -s http://127.0.0.1:$MPORT/metrics | grep -q '^herald_eventsource_connected{.*} 1' && break
  sleep 0.02
done
sleep 0.2 # the SUB reaches the server with the connection's first flush

cpu() { awk '{print $14 + $15}' /proc/$PID/stat; }
TICK=$(getconf CLK_TCK)
C0=$(cpu)
T0=$(date +%s%N)
PUBLISHED=$(luajit - "$NPORT" "$RATE" "$DUR" <<'LUA'
package.path = "spec/?.lua;" .. package.path
local N = require "helpers.nats_peer"
local ffi = require "ffi"
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_ts;
  int clock_gettime(int clk, bench_ts *ts);
  int usleep(unsigned us);
]]
local ts = ffi.new("bench_ts")
local function mono() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9 end
-- wall-clock nanoseconds of the day (fits a double exactly), as the trigger lines' times
local function day_ns() ffi.C.clock_gettime(0, ts); return tonumber(ts.tv_sec % 86400) * 1e9 + tonumber(ts.tv_nsec) end
local port, rate, dur = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3])
local c = assert(N.connect(port))
local body = '{"type":"order.created","id":"0f8fad5b-d9cb-469f-a165-70867728950e","customer":"c-104277-xy","amount":129.95,"currency":"EUR","ts":%.0f}'
local per_ms = rate / 1000
local start, sent, owed = mono(), 0, 0
while mono() - start < dur do
  local due = math.floor((mono() - start) * rate) - sent
  if due > 0 then
    if due > 5 * per_ms then due = math.floor(5 * per_ms) end -- never a burst beyond 5 ms' worth
    local msg = N.pub_text("bench.orders", body:format(day_ns()))
    c:send(msg:rep(due))
    sent = sent + due
  else
    ffi.C.usleep(500)
  end
end
assert(c:flush(10))
io.write(sent)
LUA
)
C1=$(cpu)
# wait until the trigger lines stop growing
last=-1
for _ in $(seq 100); do
  n=$(wc -l <"$OUT/triggers.jsonl")
  [ "$n" = "$last" ] && break
  last=$n
  sleep 0.2
done
C2=$(cpu)
RSS=$(awk '/VmHWM/ {print $2 $3}' /proc/$PID/status)
kill -TERM $PID
wait $PID || true
TRIGGERED=$(grep -c '"triggerName":"log"' "$OUT/triggers.jsonl" || true)
# latency: trigger line time - publish time, both nanoseconds of the day
# events/s: over the time from the first publish to the last trigger line (a backlog drains
# after the publisher stopped)
read -r P50 P99 SPAN <<<"$(luajit - "$OUT/triggers.jsonl" "$T0" <<'LUA'
local t0 = tonumber(arg[2]:sub(1, -10)) % 86400 * 1e9 + tonumber(arg[2]:sub(-9))
local lat, last = {}, t0
for line in io.lines(arg[1]) do
  local h, m, s = line:match('^{"ts":"%d+%-%d+%-%d+T(%d+):(%d+):([%d.]+)Z"')
  local pub = line:match('"ts":(%d+)}')
  if h and pub then
    local t = ((h * 60 + m) * 60 + s) * 1e9
    lat[#lat + 1] = t - tonumber(pub)
    if t > last then last = t end
  end
end
table.sort(lat)
local function q(p) return #lat > 0 and lat[math.max(1, math.ceil(#lat * p))] / 1e6 or 0 end
io.write(("%.2fms %.2fms %.3f"):format(q(0.5), q(0.99), (last - t0) / 1e9))
LUA
)"
CPU_S=$(awk -v a="$C0" -v b="$C2" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t}')
CPU_PER_EV=$(awk -v c="$CPU_S" -v n="$TRIGGERED" 'BEGIN {printf "%.1f", (n > 0 ? c / n * 1e6 : 0)}')
EPS=$(awk -v n="$TRIGGERED" -v d="$DUR" -v s="$SPAN" 'BEGIN {if (s > d) d = s; printf "%.0f", n / d}')
DROPS=$( (grep -o '[0-9]* message(s) on bench.orders dropped' "$OUT/stderr" || true) | awk '{s += $1} END {print s + 0}')
echo "nats: duration=${DUR}s rate=${RATE}/s body=~150B jetstream=$JS"
SLOW=$(grep -c 'Slow Consumer' "$OUT/nats.log" || true)
echo "nats: published=$PUBLISHED triggered=$TRIGGERED lost=$((PUBLISHED - TRIGGERED)) (client slow-consumer drops logged: $DROPS; server slow-consumer events: $SLOW)"
echo "nats: events_per_s=$EPS (over ${SPAN}s) p50=$P50 p99=$P99 cpu_s=$CPU_S cpu_us_per_event=$CPU_PER_EV max_rss=$RSS"
grep -v '"level":"info"' "$OUT/stderr" | head -5 || true

if [ "$WEBHOOK" = 1 ]; then
  echo "--- bench/run-webhook-log.sh $DUR 64, same run ---"
  HERALD_BIN="$BIN" bench/run-webhook-log.sh "$DUR" 64
fi
