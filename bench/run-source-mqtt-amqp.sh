#!/usr/bin/env bash
# Benchmark: MQTT (mosquitto) and AMQP (RabbitMQ) -> sensor (one data filter) -> log trigger,
# embedded bus, brokers on the same machine, ~150-byte JSON messages; the webhook figure of
# bench/run-webhook-log.sh in the same run, for comparison.
#   For each broker: herald runs once to create its persistent session / durable queue and
#   stops; N messages are published into it (the broker alone: publish rate; for MQTT also a
#   mosquitto_sub draining a queued session of N, the broker's delivery rate alone); then herald
#   starts and carries the backlog to the trigger: events/s (first to last trigger line), herald
#   CPU per event (/proc), p50/p99 from the source's event time to the trigger's log line.
#   Then a paced leg per broker: herald connected, a generator publishing RATE msg/s for DUR s
#   through mosquitto_pub -l / amqp-publish -l, each message carrying its send time (t): p50/p99
#   from that time to the trigger's log line, and herald CPU per event over the leg.
#   For MQTT the broker alone in the same paced leg too: mosquitto_pub -> mosquitto_sub, p50/p99.
#   usage: bench/run-source-mqtt-amqp.sh [n=50000] [rate=5000] [dur_s=5]
# n stays below 65,535: mosquitto 2.0 numbers a queued QoS 1 message for an offline session
# when it queues it, and of a 100,000 backlog a mosquitto_sub session got back 34,468 (the 16-bit
# packet ids wrapped). rate 5,000: mosquitto_pub -l fed through a pipe falls behind at 10,000/s
# (the broker alone, pub -> sub, then shows p50 2.4 ms and p99 119 ms), so its figures there are
# the publisher's.
# History: the first version reported "triggered=0" for MQTT although herald had carried the whole
# backlog: its parser ran as `luajit -e '...' FILE`, where luajit runs FILE as a second script
# (a syntax error on the first JSON line) and arg[1] is nil, so io.lines read an empty stdin;
# the non-zero exit then ended the script under set -e before the AMQP leg.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50000}
RATE=${2:-5000}
DUR=${3:-5}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-mqamqp-XXXXXX)
MQ=17810 RQ=17811 RQDIST=17812 EPMD=17813 MPORT=17814 APORT=17815
HPID="" MPID="" RQENV=""
cleanup() {
  [ -n "$HPID" ] && kill "$HPID" 2>/dev/null || true
  [ -n "$MPID" ] && kill "$MPID" 2>/dev/null || true
  if [ -f "$OUT/rq/pid" ]; then
    (cd "$OUT/rq" && eval "$RQENV rabbitmqctl -n bench$RQ@localhost stop" >/dev/null 2>&1) || true
    ERL_EPMD_PORT=$EPMD epmd -kill >/dev/null 2>&1 || true
  fi
  rm -rf "$OUT"
}
trap cleanup EXIT

# ~150-byte messages, every one passing the filter; t = 0 in the backlog (no latency from those)
luajit -e "for i = 1, $N do io.write(('{\"type\":\"order.created\",\"id\":%d,\"t\":0,\"customer\":\"c-%06d\",\"total\":129.95,\"currency\":\"EUR\",\"items\":[\"sku-1\",\"sku-2\"],\"pad\":\"xxxxxxxxxxxxxxxxx\"}\n'):format(i, i % 1000000)) end" > "$OUT/msgs"
echo "# machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); backlog=$N paced=$RATE/s x ${DUR}s bytes_each~$(head -1 "$OUT/msgs" | wc -c)"

# The paced generator: RATE lines a second for DUR s on stdout, each with its send time (epoch s).
cat > "$OUT/paced.lua" <<'LUA'
local ffi = require "ffi"
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_ts;
  int clock_gettime(int clk, bench_ts *ts);
  int usleep(unsigned int us);
]]
local ts = ffi.new("bench_ts")
local function now() ffi.C.clock_gettime(0, ts); return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9 end
local rate, dur = tonumber(arg[1]), tonumber(arg[2])
ffi.C.usleep(300000) -- the publisher (mosquitto_pub, amqp-publish) connects meanwhile: not counted as latency
local n, t0, sent = rate * dur, now(), 0
local fmt = '{"type":"order.created","id":%d,"t":%.6f,"customer":"c-%06d","total":129.95,"currency":"EUR","items":["sku-1","sku-2"],"pad":"x"}\n'
while sent < n do
  local t = now()
  local due = math.min(n, math.floor((t - t0) * rate) + 1)
  if due > sent then
    local b = {}
    for i = sent + 1, due do b[#b + 1] = fmt:format(i, t, i % 1000000) end
    io.stdout:write(table.concat(b)); io.stdout:flush()
    sent = due
  else
    ffi.C.usleep(500)
  end
end
io.stderr:write(("offered=%d in %.2fs\n"):format(n, now() - t0))
LUA

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
now() { date +%s.%N; }
# counted by herald itself (the metrics endpoint), not by re-reading the growing log
triggered() { curl -s http://127.0.0.1:$MPORT/metrics | awk '/^argo_events_action_triggered_total/ {s += $2} END {print s + 0}'; }
wait_triggered() { # n, max seconds
  local end=$(( $(date +%s) + $2 ))
  while [ "$(triggered)" -lt "$1" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.1; done
}
start_herald() { # es dir, log file
  "$BIN" run "$1" bench/mqtt-amqp/sensor.yaml --metrics-addr 127.0.0.1:$MPORT --admin-addr 127.0.0.1:$APORT \
    --log-level warn >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
  HPID=$!
}
stop_herald() {
  kill -TERM "$HPID"; wait "$HPID" || true; HPID=""
  grep -v '"level":"info"' "$OUT/stderr" | head -3 >&2 || true
}
stats() { luajit bench/redis_latency.lua <"$OUT/triggers.jsonl"; }
us_per_event() { awk -v a="$1" -v b="$2" -v t="$TICK" -v n="$3" 'BEGIN {printf "%.1f", (n > 0 ? (b - a) / t / n * 1e6 : 0)}'; }

# drain LABEL ES_DIR: herald started on a queued backlog of N; events/s first to last trigger line,
# CPU per event from exec (start-up included)
drain() {
  start_herald "$2"
  wait_triggered "$N" 120
  local c1 got; c1=$(cpu "$HPID"); got=$(triggered)
  stop_herald
  local st; st=$(stats)
  local span; span=$(echo "$st" | sed -n 's/.*span_s=\([0-9.]*\).*/\1/p')
  echo "$1 drain: triggered=$got/$N events_per_s=$(awk -v n="$got" -v s="$span" 'BEGIN {printf "%.0f", (s > 0 ? n / s : 0)}') span_s=$span cpu_us_per_event=$(us_per_event 0 "$c1" "$got") (start-up included)"
}

# paced LABEL ES_DIR READY PUBLISH_CMD: herald connected, RATE msg/s for DUR s through PUBLISH_CMD
paced() {
  start_herald "$2"
  for _ in $(seq 200); do grep -q "$3" "$OUT/stderr" 2>/dev/null && break; sleep 0.05; done
  sleep 0.3 # the SUBACK / basic.consume-ok after the connected line
  local c0 c1 got; c0=$(cpu "$HPID")
  luajit "$OUT/paced.lua" "$RATE" "$DUR" 2>"$OUT/offered" | eval "$4"
  wait_triggered $((RATE * DUR)) 60
  c1=$(cpu "$HPID"); got=$(triggered)
  stop_herald
  echo "$1 paced: $(cat "$OUT/offered") $(stats) cpu_us_per_event=$(us_per_event "$c0" "$c1" "$got")"
}

# ---- MQTT ----
mkdir -p "$OUT/mq" "$OUT/es-mq"
cat > "$OUT/mq/mosquitto.conf" <<CONF
user root
persistence false
max_queued_messages 0
max_inflight_messages 1000
listener $MQ 127.0.0.1
allow_anonymous true
CONF
mosquitto -c "$OUT/mq/mosquitto.conf" >/dev/null 2>&1 &
MPID=$!
for _ in $(seq 100); do mosquitto_pub -h 127.0.0.1 -p $MQ -t ping -n 2>/dev/null && break; sleep 0.05; done
cat > "$OUT/es-mq/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: bench}
spec:
  mqtt:
    ingest: {url: "tcp://127.0.0.1:$MQ", topic: bench, clientId: herald-bench, jsonBody: true}
YAML
# herald's persistent session (and its subscription), then the broker alone, then the backlog
paced mqtt "$OUT/es-mq" '"connected' "mosquitto_pub -h 127.0.0.1 -p $MQ -t bench -q 1 -M 1000 -l"
# the broker alone, paced: mosquitto_pub -> mosquitto_sub, each line timed as it arrives
cat > "$OUT/sublat.lua" <<'LUA'
local ffi = require "ffi"
ffi.cdef [[ typedef struct { long tv_sec; long tv_nsec; } sub_ts; int clock_gettime(int clk, sub_ts *ts); ]]
local ts, lat = ffi.new("sub_ts"), {}
for line in io.lines() do
  ffi.C.clock_gettime(0, ts)
  local t = tonumber(line:match('"t":([%d.]+)'))
  if t and t > 0 then lat[#lat + 1] = (tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9 - t) * 1000 end
end
table.sort(lat)
local n = #lat
io.write(("received=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n"):format(n, lat[math.max(1, math.ceil(n * 0.5))] or 0,
  lat[math.max(1, math.ceil(n * 0.99))] or 0, lat[n] or 0))
LUA
timeout 60 mosquitto_sub -h 127.0.0.1 -p $MQ -t lat -q 1 -C $((RATE * DUR)) | luajit "$OUT/sublat.lua" >"$OUT/sublat" &
SUBPID=$!
sleep 0.3
luajit "$OUT/paced.lua" "$RATE" "$DUR" 2>"$OUT/offered" | mosquitto_pub -h 127.0.0.1 -p $MQ -t lat -q 1 -M 1000 -l
wait $SUBPID || true
echo "mqtt broker alone paced (mosquitto_pub -> mosquitto_sub, QoS 1): $(cat "$OUT/offered") $(cat "$OUT/sublat")"
mosquitto_sub -h 127.0.0.1 -p $MQ -t bench -q 1 -c -i bench-sub -E
t0=$(now); mosquitto_pub -h 127.0.0.1 -p $MQ -t bench -q 1 -M 1000 -l < "$OUT/msgs"; t1=$(now)
echo "mqtt broker alone: mosquitto_pub -l (QoS 1, one connection, 1000 in flight) $(awk -v a=$t0 -v b=$t1 -v n=$N 'BEGIN{printf "%.0f", n/(b-a)}') msg/s"
t0=$(now); mosquitto_sub -h 127.0.0.1 -p $MQ -t bench -q 1 -c -i bench-sub -C $N > /dev/null; t1=$(now)
echo "mqtt broker alone: mosquitto_sub drains its queued session (QoS 1) $(awk -v a=$t0 -v b=$t1 -v n=$N 'BEGIN{printf "%.0f", n/(b-a)}') msg/s"
drain mqtt "$OUT/es-mq"
kill $MPID; wait $MPID 2>/dev/null || true; MPID=""

# ---- AMQP ----
# rabbitmq-server started as root runs as the rabbitmq user: it must reach its directory
mkdir -p "$OUT/rq" "$OUT/es-rq"; chmod 755 "$OUT"; echo '[].' > "$OUT/rq/plugins"
chown -R rabbitmq: "$OUT/rq" 2>/dev/null || true; chmod 755 "$OUT/rq"
RQENV="ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=$EPMD RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$RQ RABBITMQ_DIST_PORT=$RQDIST RABBITMQ_NODENAME=bench$RQ@localhost RABBITMQ_MNESIA_BASE=$OUT/rq/mnesia RABBITMQ_LOG_BASE=$OUT/rq/log RABBITMQ_FEATURE_FLAGS_FILE=$OUT/rq/ff RABBITMQ_ENABLED_PLUGINS_FILE=$OUT/rq/plugins RABBITMQ_PID_FILE=$OUT/rq/pid RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'"
(cd "$OUT/rq" && eval "$RQENV rabbitmq-server" >"$OUT/rq.out" 2>&1 &)
up=0
for _ in $(seq 600); do amqp-publish -u amqp://guest:guest@127.0.0.1:$RQ -e '' -r ping -b x >/dev/null 2>&1 && up=1 && break; sleep 0.1; done
[ $up = 1 ] || { echo "rabbitmq did not start:" >&2; tail -5 "$OUT/rq.out" >&2; exit 1; }
cat > "$OUT/es-rq/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: bench}
spec:
  amqp:
    ingest:
      url: "amqp://guest:guest@127.0.0.1:$RQ"
      exchangeName: bench
      exchangeType: fanout
      routingKey: k
      jsonBody: true
      queueDeclare: {name: bench, durable: true, exclusive: false}
      consume: {autoAck: false}
YAML
# herald declares and binds its queue in the paced leg, then the backlog
paced amqp "$OUT/es-rq" '"connected' "amqp-publish -u amqp://guest:guest@127.0.0.1:$RQ -e bench -r k -l"
t0=$(now); amqp-publish -u amqp://guest:guest@127.0.0.1:$RQ -e bench -r k -l < "$OUT/msgs"; t1=$(now)
echo "amqp broker alone: amqp-publish -l (transient, one connection) $(awk -v a=$t0 -v b=$t1 -v n=$N 'BEGIN{printf "%.0f", n/(b-a)}') msg/s"
drain "amqp (manual ack)" "$OUT/es-rq"

# ---- webhook, same run ----
echo -n "webhook (bench/run-webhook-log.sh $DUR s): "
HERALD_BIN="$BIN" bench/run-webhook-log.sh "$DUR" | grep events_per_s
