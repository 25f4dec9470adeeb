#!/usr/bin/env bash
# Benchmark: kafka source (librdkafka's mock cluster, same machine) -> sensor (one data filter)
# -> log trigger, embedded bus. ~150-byte JSON messages.
#   1. throughput: N messages produced first (a backlog), then herald consumes them as a
#      consumer group from the oldest offset: events/s from the first to the last firing, and
#      herald's CPU-µs per event over that span (/proc/PID/stat);
#   2. latency: messages produced at RATE/s for LAT_S seconds while herald runs: p50/p99 from
#      the producer's clock at send (in the body) to the trigger's log line;
# then, in the same run, bench/run-webhook-log.sh for the webhook figure side by side.
# The mock cluster keeps only the last ~30,000 messages of a partition (older ones are pruned),
# so the backlog is spread over 8 partitions and N stays at or below 200,000.
#   usage: bench/run-source-kafka.sh [N=200000] [RATE=20000] [LAT_S=5] [webhook_s=10]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
RATE=${2:-20000}
LAT_S=${3:-5}
WEB_S=${4:-10}
BIN=${HERALD_BIN:-build/herald}
PEERS=${PEERS:-$(dirname "$BIN")/spec}
[ -x "$PEERS/herald-peer-kafka_mock" ] || PEERS=$(dirname "$BIN")
OUT=$(mktemp -d /tmp/herald-bench-kafka-XXXXXX)
MPORT=17795

"$PEERS/herald-peer-kafka_mock" bench:8 lat:4 >"$OUT/mock.out" 2>&1 &
MOCK=$!
PID=
trap 'kill $MOCK ${PID:-} 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 100); do grep -q bootstrap "$OUT/mock.out" && break; sleep 0.05; done
BS=$(awk '/^bootstrap/ {print $2}' "$OUT/mock.out")

spec() { # topic group
  cat <<EOF
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: bench
spec:
  kafka:
    ingest:
      url: $BS
      topic: $1
      jsonBody: true
      consumerGroup: {groupName: $2, oldest: true}
      # the mock broker answers a fetch only at its max wait when it had nothing at once (a
      # real broker answers when data arrives): 5 ms instead of sarama's 500 ms keeps that
      # artifact out of the latency
      config: |
        consumer:
          maxWaitTime: 5ms
---
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
              - "^order\\\\."
  triggers:
    - template:
        name: log
        log: {}
EOF
}

BODY='{"type":"order.created","seq":{seq},"ts":{ts},"customer":"c-0042","items":3,"total":129.5,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
echo "body bytes: $(printf '%s' "$BODY" | sed 's/{seq}/100000/; s/{ts}/1790000000000000000/' | wc -c)"

# 1. throughput on a backlog
T0=$(date +%s.%N)
"$PEERS/herald-peer-kafka_consume" --produce "$BS" bench "$N" --body "$BODY" >"$OUT/prod1.out"
T1=$(date +%s.%N)
echo "produced $(tail -1 "$OUT/prod1.out" | awk '{print $2}') in $(awk -v a="$T0" -v b="$T1" 'BEGIN {printf "%.1f", b - a}') s"
spec bench g1 >"$OUT/tp.yaml"
"$BIN" run "$OUT/tp.yaml" --metrics-addr 127.0.0.1:$MPORT --admin-addr 127.0.0.1:$((MPORT + 1)) --log-level warn >"$OUT/tp.jsonl" 2>"$OUT/tp.err" &
PID=$!
cpu() { awk '{print $14 + $15}' /proc/$PID/stat; }
TICK=$(getconf CLK_TCK)
# CPU from the first firing to the last
for _ in $(seq 2000); do [ -s "$OUT/tp.jsonl" ] && break; sleep 0.01; done
C0=$(cpu); W0=$(date +%s.%N)
for _ in $(seq 6000); do
  sent=$(curl -s http://127.0.0.1:$MPORT/metrics | awk '/^argo_events_events_sent_total/ {print $2}')
  [ "${sent:-0}" -ge "$N" ] && break
  sleep 0.05
done
C1=$(cpu); W1=$(date +%s.%N)
echo "mock cluster cpu_s so far: $(awk -v t="$TICK" '{printf "%.2f", ($14 + $15) / t}' /proc/$MOCK/stat)"
sleep 0.3
RSS=$(awk '/VmHWM/ {print $2 $3}' /proc/$PID/status)
kill -TERM $PID; wait $PID || true; PID=
TRIG=$(grep -c '"triggerName":"log"' "$OUT/tp.jsonl" || true)
luajit - "$OUT/tp.jsonl" <<'LUA' >"$OUT/tp.res"
local function secs(ts) local h, m, s = ts:match("T(%d+):(%d+):([%d%.]+)Z") return h * 3600 + m * 60 + s end
local first, last, n
for line in io.lines(arg[1]) do
  local ts = line:match('^{"ts":"([^"]+)"')
  if ts and line:find('"triggered"', 1, true) then
    local s = secs(ts); first = first or s; last = s; n = (n or 0) + 1
  end
end
print(string.format("%d %.3f", n or 0, (last or 0) - (first or 0)))
LUA
read -r TN SPAN <"$OUT/tp.res"
CPU_S=$(awk -v a="$C0" -v b="$C1" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t}')
echo "throughput: produced=$N triggered=$TRIG lost=$((N - TRIG)) first_to_last=${SPAN}s events_per_s=$(awk -v n="$TN" -v s="$SPAN" 'BEGIN {printf "%.0f", (s > 0 ? n / s : 0)}') cpu_s=$CPU_S (over $(awk -v a="$W0" -v b="$W1" 'BEGIN {printf "%.2f", b - a}')s) cpu_us_per_event=$(awk -v c="$CPU_S" -v n="$TRIG" 'BEGIN {printf "%.1f", (n > 0 ? c / n * 1e6 : 0)}') max_rss=$RSS"

# 2. latency at a steady rate
spec lat g2 >"$OUT/lat.yaml"
"$BIN" run "$OUT/lat.yaml" --metrics-addr 127.0.0.1:$MPORT --admin-addr 127.0.0.1:$((MPORT + 1)) --log-level warn >"$OUT/lat.jsonl" 2>"$OUT/lat.err" &
PID=$!
# a first message proves the group is assigned before the timed run
"$PEERS/herald-peer-kafka_consume" --produce "$BS" lat 1 --body "$BODY" --start 0 >/dev/null
for _ in $(seq 600); do [ -s "$OUT/lat.jsonl" ] && break; sleep 0.05; done
LN=$((RATE * LAT_S))
C0=$(cpu)
"$PEERS/herald-peer-kafka_consume" --produce "$BS" lat "$LN" --rate "$RATE" --body "$BODY" >"$OUT/prod2.out"
for _ in $(seq 600); do
  [ "$(grep -c '"triggered"' "$OUT/lat.jsonl" || true)" -ge $((LN + 1)) ] && break
  sleep 0.05
done
C1=$(cpu)
kill -TERM $PID; wait $PID || true; PID=
luajit - "$OUT/lat.jsonl" <<'LUA'
-- latency: the trigger's log time minus the producer's send time (both CLOCK_REALTIME, ns)
local function ns(ts)
  local y, mo, d, h, mi, s, f = ts:match("(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.?(%d*)Z")
  local t = os.time{ year = y, month = mo, day = d, hour = h, min = mi, sec = s, isdst = false }
  return t, tonumber(((f or "") .. "000000000"):sub(1, 9))
end
local offset = os.time(os.date("!*t", 0)) -- os.time reads the table as local time
local lat = {}
for line in io.lines(arg[1]) do
  local ts = line:match('^{"ts":"([^"]+)"')
  local sent = line:match('"ts":(%d+),"customer"')
  local seq = line:match('"seq":(%d+)')
  if ts and sent and seq ~= "0" then
    local s, f = ns(ts)
    local t = (s - offset) * 1e9 + f
    lat[#lat + 1] = (t - tonumber(sent)) / 1e6
  end
end
table.sort(lat)
local function q(p) return lat[math.max(1, math.ceil(#lat * p))] or 0 end
print(string.format("latency: events=%d p50=%.2fms p99=%.2fms max=%.2fms", #lat, q(0.5), q(0.99), lat[#lat] or 0))
LUA
echo "latency run: rate=${RATE}/s for ${LAT_S}s cpu_us_per_event=$(awk -v a="$C0" -v b="$C1" -v t="$TICK" -v n="$LN" 'BEGIN {printf "%.1f", (b - a) / t / n * 1e6}')"

# 3. the webhook figure, same run
echo "--- webhook -> log, same run ---"
HERALD_BIN="$BIN" bench/run-webhook-log.sh "$WEB_S"
