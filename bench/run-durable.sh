#!/usr/bin/env bash
# Benchmark: the durable embedded bus (--bus-dir) against the in-memory one, alternated in one
# run so both see the same machine: webhook -> sensor (one data filter) -> log trigger
# (bench/run-webhook-log.sh, wrk, 64 keep-alive connections, 152-byte bodies). Each durable run
# starts on a fresh directory under BUS_PARENT (default /var/tmp: a real disk, not tmpfs, so
# every group commit pays a real fdatasync). Prints each run and the medians and their ratio.
#   usage: bench/run-durable.sh [runs=3] [duration_s=5] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
DUR=${2:-5}
CONN=${3:-64}
PARENT=${BUS_PARENT:-/var/tmp}
mem=() dur=()
for i in $(seq "$RUNS"); do
  m=$(bench/run-webhook-log.sh "$DUR" "$CONN")
  echo "memory  run $i: $(echo "$m" | grep -E 'events_per_s|lost=' | tr '\n' ' ')"
  mem+=("$(echo "$m" | sed -n 's/.*events_per_s=\([0-9.]*\).*/\1/p')")
  D=$(mktemp -d "$PARENT/herald-bus-XXXXXX")
  d=$(HERALD_ARGS="--bus-dir $D" bench/run-webhook-log.sh "$DUR" "$CONN")
  echo "durable run $i: $(echo "$d" | grep -E 'events_per_s|lost=' | tr '\n' ' ') log_bytes=$(du -sb "$D" | cut -f1)"
  dur+=("$(echo "$d" | sed -n 's/.*events_per_s=\([0-9.]*\).*/\1/p')")
  rm -rf "$D"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
M=$(median "${mem[@]}")
D=$(median "${dur[@]}")
echo "median events/s: memory=$M durable=$D ratio=$(awk -v m="$M" -v d="$D" 'BEGIN {printf "%.0f%%", d / m * 100}')"
