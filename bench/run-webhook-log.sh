#!/usr/bin/env bash
# Benchmark: webhook -> sensor (one data filter) -> log trigger, embedded bus.
# wrk with keep-alive, 64 connections, 152-byte JSON bodies, on the same machine.
# Reports events/s and latency (wrk), CPU seconds per million events and max RSS (/proc),
# and checks that every event answered 200 reached the trigger (metrics), so none is lost.
#   usage: [HERALD_ARGS=...] [TAP=1] bench/run-webhook-log.sh [duration_s=10] [connections=64] [wrk_threads=1]
# TAP=1 attaches `herald tap --format json` (every record, written to a file) for the run.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONN=${2:-64}
THREADS=${3:-1}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-XXXXXX)
MPORT=17790

# HERALD_ARGS: more options for herald run, e.g. "--bus-dir DIR" (bench/run-durable.sh)
# shellcheck disable=SC2086
"$BIN" run bench/webhook-log/ --metrics-addr 127.0.0.1:$MPORT --log-level warn \
  --admin-addr 127.0.0.1:17791 --admin-token-file "$OUT/token" ${HERALD_ARGS:-} >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
PID=$!
TAPPID=
trap 'kill $PID $TAPPID 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 200); do curl -sf -o /dev/null http://127.0.0.1:12100/health && break; sleep 0.02; done
if [ "${TAP:-0}" = 1 ]; then
  "$BIN" tap --admin-addr 127.0.0.1:17791 --admin-token-file "$OUT/token" --format json >"$OUT/tap.jsonl" 2>"$OUT/tap.err" &
  TAPPID=$!
  for _ in $(seq 200); do grep -q attached "$OUT/tap.err" 2>/dev/null && break; sleep 0.02; done
fi

cpu() { awk '{print $14 + $15}' /proc/$PID/stat; }
TICK=$(getconf CLK_TCK)
C0=$(cpu)
wrk -t"$THREADS" -c"$CONN" -d"${DUR}s" --latency -s bench/post152.lua http://127.0.0.1:12100/ingest >"$OUT/wrk.txt"
C1=$(cpu)
# let in-flight events reach the trigger, then stop cleanly (drains the bus)
sleep 0.5
RSS=$(awk '/VmHWM/ {print $2 $3}' /proc/$PID/status)
ACCEPTED=$(curl -s http://127.0.0.1:$MPORT/metrics | awk '/^argo_events_events_sent_total/ {print $2}')
kill -TERM $PID
wait $PID || true
TAPPED=0
if [ -n "$TAPPID" ]; then kill $TAPPID 2>/dev/null || true; TAPPED=$(wc -l <"$OUT/tap.jsonl"); fi
trap 'rm -rf "$OUT"' EXIT

REQS=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
NON2XX=$(awk '/Non-2xx/ {print $5}' "$OUT/wrk.txt"); NON2XX=${NON2XX:-0}
OK=$((REQS - NON2XX))
TRIGGERED=$(grep -c '"triggerName":"log"' "$OUT/triggers.jsonl" || true)
RPS=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
P50=$(awk '$1=="50%" {print $2}' "$OUT/wrk.txt")
P99=$(awk '$1=="99%" {print $2}' "$OUT/wrk.txt")
CPU_S=$(awk -v a="$C0" -v b="$C1" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t}')
CPU_PER_M=$(awk -v c="$CPU_S" -v n="$OK" 'BEGIN {printf "%.1f", (n > 0 ? c / n * 1e6 : 0)}')
echo "duration=${DUR}s connections=$CONN wrk_threads=$THREADS body=152B"
echo "requests=$REQS ok_200=$OK non_2xx=$NON2XX accepted=$ACCEPTED triggered=$TRIGGERED lost=$((ACCEPTED - TRIGGERED))"
echo "events_per_s=$RPS p50=$P50 p99=$P99 cpu_s=$CPU_S cpu_s_per_million=$CPU_PER_M max_rss=$RSS"
[ -n "$TAPPID" ] && echo "tap_records=$TAPPED (dropped ones are said in the tap's stderr: $(grep -c dropped "$OUT/tap.err" || true) notices)"
grep -E 'Socket errors' "$OUT/wrk.txt" || true
