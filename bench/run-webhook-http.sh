#!/usr/bin/env bash
# Benchmark: webhook -> sensor (one data filter) -> HTTP trigger (payload from parameters) ->
# a local HTTP sink (herald-peer-http_sink, keep-alive connections reused by libcurl), side by
# side with the same path ending in the log trigger (run-webhook-log.sh).
#   usage: bench/run-webhook-http.sh [duration_s=10] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONN=${2:-64}
BIN=${HERALD_BIN:-build/herald}
SINK=${HERALD_SINK:-build/spec/herald-peer-http_sink}
OUT=$(mktemp -d /tmp/herald-bench-XXXXXX)
MPORT=17791

"$SINK" 12102 /sink >"$OUT/sink.out" &
SPID=$!
"$BIN" run bench/webhook-http/ --metrics-addr 127.0.0.1:$MPORT --admin-addr off --log-level warn >/dev/null 2>"$OUT/stderr" &
PID=$!
trap 'kill $PID $SPID 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 200); do curl -sf -o /dev/null http://127.0.0.1:12101/health && break; sleep 0.02; done

cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
TICK=$(getconf CLK_TCK)
C0=$(cpu $PID); S0=$(cpu $SPID)
wrk -t1 -c"$CONN" -d"${DUR}s" --latency -s bench/post152.lua http://127.0.0.1:12101/ingest >"$OUT/wrk.txt"
C1=$(cpu $PID); S1=$(cpu $SPID)
# wait until every accepted event's action finished (or 10 s)
metric() { curl -s http://127.0.0.1:$MPORT/metrics | awk -v m="$1" '$1 ~ "^"m {s += $2} END {print s + 0}'; }
for _ in $(seq 500); do
  A=$(metric argo_events_events_sent_total); T=$(metric argo_events_action_triggered_total); F=$(metric argo_events_action_failed_total)
  [ "$A" = "$((T + F))" ] && break; sleep 0.02
done
RSS=$(awk '/VmHWM/ {print $2 $3}' /proc/$PID/status)
kill -TERM $PID; wait $PID || true
kill -TERM $SPID; wait $SPID || true
trap 'rm -rf "$OUT"' EXIT
SERVED=$(awk '/served/ {print $2}' "$OUT/sink.out")
REQS=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
NON2XX=$(awk '/Non-2xx/ {print $5}' "$OUT/wrk.txt"); NON2XX=${NON2XX:-0}
RPS=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
P50=$(awk '$1=="50%" {print $2}' "$OUT/wrk.txt")
P99=$(awk '$1=="99%" {print $2}' "$OUT/wrk.txt")
CPU_S=$(awk -v a="$C0" -v b="$C1" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t}')
SINK_CPU=$(awk -v a="$S0" -v b="$S1" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t}')
echo "duration=${DUR}s connections=$CONN body=152B trigger=http"
echo "requests=$REQS non_2xx=$NON2XX accepted=$A triggered=$T failed=$F sink_served=$SERVED lost=$((A - T - F))"
echo "events_per_s=$RPS p50=$P50 p99=$P99 herald_cpu_s=$CPU_S sink_cpu_s=$SINK_CPU max_rss=$RSS"
