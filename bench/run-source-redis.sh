#!/usr/bin/env bash
# Benchmark: Redis (redisStream and redis pub/sub) -> sensor (one data filter) -> log trigger,
# embedded bus, redis-server on the same machine; the webhook figure of bench/run-webhook-log.sh
# in the same run, for comparison.
#   drain:  DUR*RATE stream entries XADDed before herald starts (the group already made), then
#           the time herald takes to carry them all to the trigger: events/s, herald CPU/event
#   paced:  a producer (bench/redis_produce.lua) XADDs (or PUBLISHes) RATE messages a second
#           for DUR s, each carrying its send time: events/s, p50/p99 send -> trigger log line,
#           herald CPU/event
# Messages are ~150 bytes. usage: bench/run-source-redis.sh [rate=50000] [dur=10] [count=10]
#   (count: maxMsgCountPerRead; Argo's default is 10)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-50000}
DUR=${2:-10}
COUNT=${3:-10}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-redis-XXXXXX)
freeport() { luajit -e 'local s = require("socket").bind("127.0.0.1", 0); local _, p = s:getsockname(); print(p)'; }
RPORT=$(freeport)
MPORT=$(freeport)
APORT=$(freeport)
redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$OUT/redis.pid" --logfile "$OUT/redis.log" --dir "$OUT"
for _ in $(seq 100); do redis-cli -p $RPORT ping >/dev/null 2>&1 && break; sleep 0.05; done
HPID=""
cleanup() {
  [ -n "$HPID" ] && kill "$HPID" 2>/dev/null || true
  kill "$(cat "$OUT/redis.pid")" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

write_specs() { # $1: redisStream | redis
  mkdir -p "$OUT/$1"
  if [ "$1" = redisStream ]; then
    cat >"$OUT/$1/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: bench}
spec:
  redisStream:
    ingest: {hostAddress: "127.0.0.1:$RPORT", streams: [bench], maxMsgCountPerRead: $COUNT}
YAML
    FILTER_PATH=values.kind
  else
    cat >"$OUT/$1/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: bench}
spec:
  redis:
    ingest: {hostAddress: "127.0.0.1:$RPORT", channels: [bench], jsonBody: true}
YAML
    FILTER_PATH=body.kind
    touch "$OUT/$1/.pubsub"
  fi
  cat >"$OUT/$1/sensor.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {name: bench}
spec:
  dependencies:
    - name: order
      eventSourceName: bench
      eventName: ingest
      filters:
        data:
          - {path: $FILTER_PATH, type: string, value: ["^order\\\\."]}
  triggers:
    - template: {name: log, log: {}}
YAML
}

start_herald() { # $1: spec dir; waits until the source is connected
  "$BIN" run "$1" --metrics-addr 127.0.0.1:$MPORT --admin-addr 127.0.0.1:$APORT --log-level info \
    >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
  HPID=$!
  [ "${2:-}" = nowait ] && return
  # pub/sub: until subscribed (a message published before is heard by nobody); streams keep
  # what is XADDed meanwhile, connected is enough
  local ready='connected: 127'
  [ -f "$1/.pubsub" ] && ready='subscribed to'
  for _ in $(seq 250); do grep -q "$ready" "$OUT/stderr" 2>/dev/null && break; sleep 0.02; done
}
stop_herald() {
  kill -TERM "$HPID"; wait "$HPID" || true; HPID=""
}
triggered() { curl -s http://127.0.0.1:$MPORT/metrics | awk '/^argo_events_action_triggered_total/ {s += $2} END {print s + 0}'; }

echo "# machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); rate=$RATE/s dur=${DUR}s maxMsgCountPerRead=$COUNT"

# --- redisStream, drain of a backlog ---
write_specs redisStream
N=$((RATE * DUR))
redis-cli -p $RPORT XGROUP CREATE bench argo-events-cg '$' MKSTREAM >/dev/null
luajit bench/redis_produce.lua $RPORT xadd "$RATE" "$DUR" prefill >/dev/null
T0=$(date +%s.%N)
start_herald "$OUT/redisStream" nowait
C0=0 # from exec: the start-up (~0.05 s of CPU) is counted too
while [ "$(triggered)" -lt "$N" ]; do sleep 0.05; done
T1=$(date +%s.%N); C1=$(cpu "$HPID")
PEND=$(redis-cli -p $RPORT XPENDING bench argo-events-cg | head -1)
stop_herald
awk -v n="$N" -v t0="$T0" -v t1="$T1" -v c0="$C0" -v c1="$C1" -v tk="$TICK" -v pend="$PEND" 'BEGIN {
  printf "redisStream drain: entries=%d seconds=%.2f events_per_s=%.0f herald_cpu_us_per_event=%.2f pending_after=%s (includes start-up)\n",
    n, t1 - t0, n / (t1 - t0), (c1 - c0) / tk / n * 1e6, pend }'

# --- redisStream, paced ---
redis-cli -p $RPORT DEL bench >/dev/null
start_herald "$OUT/redisStream"
C0=$(cpu "$HPID")
luajit bench/redis_produce.lua $RPORT xadd "$RATE" "$DUR" >"$OUT/prod.txt"
for _ in $(seq 600); do [ "$(triggered)" -ge "$N" ] && break; sleep 0.05; done
C1=$(cpu "$HPID")
GOT=$(triggered)
stop_herald
LAT=$(luajit bench/redis_latency.lua <"$OUT/triggers.jsonl")
echo "redisStream paced: offered=$RATE/s $(cat "$OUT/prod.txt") $LAT herald_cpu_us_per_event=$(awk -v a="$C0" -v b="$C1" -v t="$TICK" -v n="$GOT" 'BEGIN {printf "%.2f", (b - a) / t / n * 1e6}')"

# --- redis pub/sub, paced ---
write_specs redis
start_herald "$OUT/redis"
C0=$(cpu "$HPID")
luajit bench/redis_produce.lua $RPORT publish "$RATE" "$DUR" >"$OUT/prod.txt"
# until every message Redis took has reached the trigger (or the count stops moving for 5 s: what pub/sub lost)
LASTN=-1
while :; do GOT=$(triggered); [ "$GOT" -ge "$N" ] || [ "$GOT" = "$LASTN" ] && break; LASTN=$GOT; sleep 5; done
PUBLISHED=$(curl -s http://127.0.0.1:$MPORT/metrics | awk '/^argo_events_events_sent_total/ {s += $2} END {print s + 0}')
C1=$(cpu "$HPID")
GOT=$(triggered)
stop_herald
DROPS=$(grep -c '"msg":"not connected' "$OUT/stderr" || true)
LAT=$(luajit bench/redis_latency.lua <"$OUT/triggers.jsonl")
echo "redis pub/sub paced: offered=$RATE/s $(cat "$OUT/prod.txt") $LAT published_to_bus=$PUBLISHED lost=$((N - GOT)) disconnects=$DROPS" ; echo "  herald_cpu_us_per_event=$(awk -v a="$C0" -v b="$C1" -v t="$TICK" -v n="$GOT" 'BEGIN {printf "%.2f", (n > 0 ? (b - a) / t / n * 1e6 : 0)}')"

# --- the webhook figure, same run ---
HERALD_BIN=$BIN bench/run-webhook-log.sh "$DUR" | sed 's/^/webhook-log: /'
