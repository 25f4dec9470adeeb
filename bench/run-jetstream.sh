#!/usr/bin/env bash
# Benchmark: webhook -> JetStream (nats-server -js on this machine, file storage, one replica)
# -> sensor (one data filter) -> log trigger; the webhook answers 200 only after the PubAck.
# `herald eventsource` and `herald sensor` run as two processes with --bus nats://...
# BUS=embedded runs the same measurement on `herald run` (embedded bus), for comparison.
#   1. saturation: wrk, keep-alive, CONN connections, 152-byte JSON -> events/s, p50/p99, CPU
#   2. fixed rate: RATE events/s (bench/paced152.lua) -> p50/p99 at that load
# Checks that every event answered 200 was triggered (accepted from metrics vs log lines).
#   usage: [BUS=jetstream|embedded] [RATE=10000] bench/run-jetstream.sh [duration_s=10] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONN=${2:-64}
RATE=${RATE:-10000}
BUS=${BUS:-jetstream}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-js-XXXXXX)
NPORT=${NATS_PORT:-14222}
ES_M=17791
SE_M=17792
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

wait_http() { for _ in $(seq 500); do curl -sf -o /dev/null "$1" && return 0; sleep 0.02; done; echo "no $1" >&2; exit 1; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($1, m) == 1 {s += $2} END {print s + 0}'; }
cpu() { local s=0; for p in "$@"; do s=$((s + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $s; }
ticks() { for p in "$@"; do awk '{printf "%d ", $14 + $15}' /proc/$p/stat; done; } # per process
TICK=$(getconf CLK_TCK)

start() { # starts the processes under test; sets TESTED (pids) and ACC_PORT (metrics with events_sent)
  : >"$OUT/triggers.jsonl"
  if [ "$BUS" = embedded ]; then
    "$BIN" run bench/webhook-log/ --metrics-addr 127.0.0.1:$ES_M --log-level warn >"$OUT/triggers.jsonl" 2>"$OUT/run.err" &
    TESTED=($!)
    PIDS+=($!)
  else
    rm -rf "$OUT/js"
    nats-server -a 127.0.0.1 -p "$NPORT" -js -sd "$OUT/js" >"$OUT/nats.log" 2>&1 &
    NATS_PID=$!
    PIDS+=($!)
    for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/$NPORT) 2>/dev/null && break; sleep 0.02; done
    "$BIN" sensor bench/webhook-log/ --bus nats://127.0.0.1:$NPORT --metrics-addr 127.0.0.1:$SE_M \
      >"$OUT/triggers.jsonl" 2>"$OUT/sensor.err" &
    SPID=$!
    PIDS+=($!)
    for _ in $(seq 500); do grep -q ' ready on ' "$OUT/sensor.err" && break; sleep 0.02; done
    "$BIN" eventsource bench/webhook-log/ --bus nats://127.0.0.1:$NPORT --metrics-addr 127.0.0.1:$ES_M \
      --log-level warn >/dev/null 2>"$OUT/es.err" &
    EPID=$!
    PIDS+=($!)
    TESTED=($EPID $SPID $NATS_PID)
  fi
  wait_http http://127.0.0.1:$ES_M/metrics
  for _ in $(seq 500); do (echo >/dev/tcp/127.0.0.1/12100) 2>/dev/null && break; sleep 0.02; done
}

stop() {
  # every accepted event must reach the log trigger: wait (bounded) until the counts meet
  ACCEPTED=$(metric $ES_M argo_events_events_sent_total); ACCEPTED=${ACCEPTED:-0}
  for _ in $(seq 500); do
    TRIGGERED=$(grep -c '"triggerName":"log"' "$OUT/triggers.jsonl" || true)
    [ "$TRIGGERED" -ge "$ACCEPTED" ] && break
    sleep 0.02
  done
  RSS=$(for p in "${TESTED[@]}"; do awk '/VmHWM/ {printf "%s ", $2}' /proc/$p/status; done)
  for p in "${TESTED[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${TESTED[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

report() { # $1 = label, $2 = wrk output
  local reqs non2xx rps p50 p99 ok
  reqs=$(awk '/requests in/ {print $1}' "$2")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$2"); non2xx=${non2xx:-0}
  ok=$((reqs - non2xx))
  rps=$(awk '/Requests\/sec/ {print $2}' "$2")
  p50=$(awk '$1=="50%" {print $2}' "$2")
  p99=$(awk '$1=="99%" {print $2}' "$2")
  local cpu_s cpu_per
  cpu_s=$(awk -v a="$C0" -v b="$C1" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t}')
  cpu_per=$(awk -v c="$cpu_s" -v n="$ok" 'BEGIN {printf "%.1f", (n > 0 ? c / n * 1e6 : 0)}')
  echo "[$BUS $1] requests=$reqs ok_200=$ok non_2xx=$non2xx accepted=$ACCEPTED triggered=$TRIGGERED lost=$((ACCEPTED - TRIGGERED))"
  echo "[$BUS $1] events_per_s=$rps p50=$p50 p99=$p99 cpu_s=$cpu_s (es+sensor+nats) cpu_s_per_million=$cpu_per max_rss_kb=$RSS"
  local split="" i
  for i in "${!T0[@]}"; do split+="$(awk -v a="${T0[$i]}" -v b="${T1[$i]}" -v t="$TICK" 'BEGIN {printf "%.2f", (b - a) / t}') "; done
  echo "[$BUS $1] cpu_s per process (eventsource sensor nats-server | herald run): $split"
  grep -E 'Socket errors' "$2" || true
}

# 1. saturation
start
C0=$(cpu "${TESTED[@]}"); T0=($(ticks "${TESTED[@]}"))
wrk -t1 -c"$CONN" -d"${DUR}s" --latency -s bench/post152.lua http://127.0.0.1:12100/ingest >"$OUT/wrk.txt"
C1=$(cpu "${TESTED[@]}"); T1=($(ticks "${TESTED[@]}"))
stop
report "saturation c=$CONN ${DUR}s" "$OUT/wrk.txt"

# 2. fixed rate (fresh processes and store)
start
C0=$(cpu "${TESTED[@]}"); T0=($(ticks "${TESTED[@]}"))
RATE=$RATE wrk -t1 -c"$CONN" -d"${DUR}s" --latency -s bench/paced152.lua http://127.0.0.1:12100/ingest >"$OUT/wrk-paced.txt"
C1=$(cpu "${TESTED[@]}"); T1=($(ticks "${TESTED[@]}"))
stop
report "rate=$RATE/s c=$CONN ${DUR}s" "$OUT/wrk-paced.txt"
