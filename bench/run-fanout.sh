#!/usr/bin/env bash
# Benchmark: one event against N sensors in the real engine (issue #3's fan-out goal).
# Generates N sensors on one webhook event, each with a number data filter on body.amount
# (amount is 129.95; sensor i passes when i < PASS), and a log trigger. wrk posts the 152-byte
# event for DUR seconds; the script then waits until the engine has gone idle (its CPU time
# stops moving) and divides the engine's CPU seconds by the events it accepted. The result is
# the per-core capacity: events/s that one core can run through all N sensors' filters.
#   usage: bench/run-fanout.sh [N=1000] [PASS=0] [duration_s=5] [connections=4]
#   PERF="perf record -o FILE --" runs the engine under a profiler (the CPU figures then read 0)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
PASS=${2:-0}
DUR=${3:-5}
CONN=${4:-4}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-fanout-XXXXXX)
MPORT=17791
trap 'rm -rf "$OUT"' EXIT

cat >"$OUT/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: es}
spec:
  webhook:
    ev: {port: "12111", endpoint: /ev, method: POST}
YAML
for i in $(seq "$N"); do
  if [ "$i" -le "$PASS" ]; then limit=1; else limit=1000; fi
  printf 'apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata: {name: s%d}\nspec:\n  dependencies:\n    - name: d\n      eventSourceName: es\n      eventName: ev\n      filters:\n        data:\n          - {path: body.amount, type: number, comparator: ">", value: ["%d"]}\n  triggers:\n    - template: {name: t, log: {}}\n---\n' "$i" "$limit"
done >"$OUT/sensors.yaml"

${PERF:-} "$BIN" run "$OUT/es.yaml" "$OUT/sensors.yaml" --metrics-addr 127.0.0.1:$MPORT --log-level warn >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 500); do curl -sf -o /dev/null http://127.0.0.1:$MPORT/metrics && break; sleep 0.02; done

cpu() { awk '{print $14 + $15}' /proc/$PID/stat; }
TICK=$(getconf CLK_TCK)
C0=$(cpu)
wrk -t1 -c"$CONN" -d"${DUR}s" -s bench/post152.lua http://127.0.0.1:12111/ev >"$OUT/wrk.txt"
# wait until the engine has worked through the accepted events: CPU time still for 0.3 s
prev=-1
while :; do
  now=$(cpu)
  [ "$now" = "$prev" ] && break
  prev=$now
  sleep 0.3
done
C1=$(cpu)
ACCEPTED=$(curl -s http://127.0.0.1:$MPORT/metrics | awk '/^argo_events_events_sent_total/ {print $2}')
kill -TERM $PID
wait $PID || true
trap 'rm -rf "$OUT"' EXIT
TRIGGERED=$(grep -c '"triggerName":"t"' "$OUT/triggers.jsonl" || true)
CPU_S=$(awk -v a="$C0" -v b="$C1" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t}')
echo "sensors=$N passing=$PASS accepted=$ACCEPTED triggered=$TRIGGERED (expected $((ACCEPTED * PASS)))"
awk -v c="$CPU_S" -v n="$ACCEPTED" -v s="$N" 'BEGIN {
  printf "cpu_s=%.2f events_per_cpu_s=%.0f ns_per_event_per_sensor=%.0f\n", c, n / c, c / n / s * 1e9 }'
