#!/usr/bin/env bash
# Benchmark: MQTT (mosquitto) and AMQP (RabbitMQ) -> sensor (one data filter) -> log trigger,
# embedded bus, brokers on the same machine, ~150-byte JSON messages; the webhook figure of
# bench/run-webhook-log.sh in the same run, for comparison.
#   For each broker: herald runs once to create its persistent session / durable queue and
#   stops; N messages are published into it (the broker alone: publish rate; for MQTT also a
#   mosquitto_sub draining a queued session of N, the broker's delivery rate alone); then herald
#   starts and carries the backlog to the trigger: events/s (first to last trigger line), herald
#   CPU per event (/proc), p50/p99 from the source's event time to the trigger's log line.
#   usage: bench/run-source-mqtt-amqp.sh [n=100000]
# STATUS: unfinished. In its first runs (loaded machine, load average 9-13) the herald MQTT leg
# carried 0 of the backlog (no error logged) although spec/sources/mqtt's "keeps its session"
# case does the same steps and passes; the cause was not found in the time given. The AMQP and
# webhook legs were not reached. See bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-mqamqp-XXXXXX)
MQ=17810 RQ=17811 RQDIST=17812 EPMD=17813 MPORT=17814
HPID="" MPID=""
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

# ~150-byte messages, every one passing the filter
luajit -e "for i = 1, $N do io.write(('{\"type\":\"order.created\",\"id\":%d,\"customer\":\"c-%06d\",\"total\":129.95,\"currency\":\"EUR\",\"items\":[\"sku-1\",\"sku-2\"],\"pad\":\"xxxxxxxxxxxxxxxxxxxxxx\"}\n'):format(i, i % 1000000)) end" > "$OUT/msgs"
echo "messages=$N bytes_each~$(head -1 "$OUT/msgs" | wc -c)"

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
now() { date +%s.%N; }

# run_herald DIR: starts herald, waits for N trigger lines, prints the figures
run_herald() {
  "$BIN" run "$1" bench/mqtt-amqp/sensor.yaml --metrics-addr 127.0.0.1:$MPORT --log-level warn >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
  HPID=$!
  local c0 t0
  c0=$(cpu $HPID)
  for _ in $(seq ${WAIT_STEPS:-1200}); do
    [ "$(wc -l < "$OUT/triggers.jsonl")" -ge "$N" ] && break; sleep 0.05
  done
  local c1
  c1=$(cpu $HPID)
  kill -TERM $HPID; wait $HPID || true; HPID=""
  grep -v '"level":"info"' "$OUT/stderr" | head -3 >&2 || true
  luajit -e '
    local cj = require "cjson"
    local function t(s) local y,mo,d,h,mi,se = s:match("(%d+)-(%d+)-(%d+)T(%d+):(%d+):([%d.]+)Z")
      return os.time{year=y,month=mo,day=d,hour=h,min=mi,sec=0} + tonumber(se) end
    local lat, first, last = {}, nil, nil
    for line in io.lines(arg[1]) do
      local ok, v = pcall(cj.decode, line)
      if ok and v.msg == "triggered" then
        local ts = t(v.ts)
        first = first or ts; last = ts
        lat[#lat + 1] = ts - t(v.events.order.time)
      end
    end
    table.sort(lat)
    local n = #lat
    if n == 0 then io.write("triggered=0 (nothing reached the trigger) "); return end
    local p = function(q) return n > 0 and lat[math.max(1, math.ceil(n * q))] * 1000 or 0 end
    io.write(("triggered=%d events_per_s=%.0f p50_ms=%.2f p99_ms=%.2f "):format(n, n / math.max(last - first, 1e-6), p(0.5), p(0.99)))
  ' "$OUT/triggers.jsonl"
  awk -v a="$c0" -v b="$c1" -v t="$TICK" -v n="$N" 'BEGIN {printf "cpu_us_per_event=%.1f\n", (b - a) / t / n * 1e6}'
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
sleep 0.5
cat > "$OUT/es-mq/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: bench}
spec:
  mqtt:
    ingest: {url: "tcp://127.0.0.1:$MQ", topic: bench, clientId: herald-bench, jsonBody: true}
YAML
# the session, then the backlog
"$BIN" run "$OUT/es-mq" bench/mqtt-amqp/sensor.yaml --metrics-addr 127.0.0.1:$MPORT >/dev/null 2>"$OUT/s0" & HPID=$!
for _ in $(seq 100); do grep -q '"connected' "$OUT/s0" && break; sleep 0.05; done
sleep 1 # the SUBACK: a stop right after CONNACK may leave the session without its subscription
kill -TERM $HPID; wait $HPID || true; HPID=""
mosquitto_sub -h 127.0.0.1 -p $MQ -t bench -q 1 -c -i bench-sub -E
t0=$(now); mosquitto_pub -h 127.0.0.1 -p $MQ -t bench -q 1 -l < "$OUT/msgs"; t1=$(now)
echo "mqtt broker alone: publish (QoS 1, one connection) $(awk -v a=$t0 -v b=$t1 -v n=$N 'BEGIN{printf "%.0f", n/(b-a)}') msg/s"
t0=$(now); mosquitto_sub -h 127.0.0.1 -p $MQ -t bench -q 1 -c -i bench-sub -C $N > /dev/null; t1=$(now)
echo "mqtt broker alone: mosquitto_sub drains the queued session (QoS 1) $(awk -v a=$t0 -v b=$t1 -v n=$N 'BEGIN{printf "%.0f", n/(b-a)}') msg/s"
echo -n "mqtt herald: "; run_herald "$OUT/es-mq"
kill $MPID; wait $MPID 2>/dev/null || true; MPID=""

# ---- AMQP ----
mkdir -p "$OUT/rq" "$OUT/es-rq"; chown rabbitmq: "$OUT/rq"; echo '[].' > "$OUT/rq/plugins"
RQENV="ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=$EPMD RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$RQ RABBITMQ_DIST_PORT=$RQDIST RABBITMQ_NODENAME=bench$RQ@localhost RABBITMQ_MNESIA_BASE=$OUT/rq/mnesia RABBITMQ_LOG_BASE=$OUT/rq/log RABBITMQ_FEATURE_FLAGS_FILE=$OUT/rq/ff RABBITMQ_ENABLED_PLUGINS_FILE=$OUT/rq/plugins RABBITMQ_PID_FILE=$OUT/rq/pid"
(cd "$OUT/rq" && eval "$RQENV rabbitmq-server" >/dev/null 2>&1 &)
for _ in $(seq 600); do amqp-publish -u amqp://guest:guest@127.0.0.1:$RQ -e '' -r ping -b x >/dev/null 2>&1 && break; sleep 0.1; done
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
"$BIN" run "$OUT/es-rq" bench/mqtt-amqp/sensor.yaml --metrics-addr 127.0.0.1:$MPORT >/dev/null 2>"$OUT/s1" & HPID=$!
for _ in $(seq 100); do grep -q '"connected' "$OUT/s1" && break; sleep 0.05; done
kill -TERM $HPID; wait $HPID || true; HPID=""
t0=$(now); amqp-publish -u amqp://guest:guest@127.0.0.1:$RQ -e bench -r k -l < "$OUT/msgs"; t1=$(now)
echo "amqp broker alone: amqp-publish (transient, one connection) $(awk -v a=$t0 -v b=$t1 -v n=$N 'BEGIN{printf "%.0f", n/(b-a)}') msg/s"
echo -n "amqp herald (manual ack, prefetch 512): "; run_herald "$OUT/es-rq"

# ---- webhook, same run ----
echo -n "webhook (bench/run-webhook-log.sh 10 s): "
HERALD_BIN="$BIN" bench/run-webhook-log.sh 10 | grep events_per_s
