#!/usr/bin/env bash
# Start-up and idle cost of two herald binaries side by side (issue 10), alternated run by run:
#   1. `herald version` and `herald --help` (hyperfine, -N: no shell)
#   2. `herald run` of one webhook (bench/webhook-log) to its first 200 answer: wall time and the
#      CPU time the process used until then (/proc/PID/schedstat; steadier on a busy machine)
#   3. the same with 1,000 sensors (one webhook, each sensor one data filter and a log trigger,
#      as bench/sensors-memory.sh)
#   4. idle RSS of (2), 1 s after its first 200
# Throughput (webhook -> filter -> log) is bench/run-webhook-log.sh, run for each binary in
# turn: HERALD_BIN=OLD bench/run-webhook-log.sh; HERALD_BIN=NEW ...
#   usage: bench/run-startup.sh OLD_BIN NEW_BIN [runs=20]
# OLD_BIN: e.g. a build of the commit before the change:
#   git worktree add --detach /tmp/herald-old <commit> &&
#   cmake -S /tmp/herald-old -B /tmp/herald-old/build -DBUILD_TESTING=OFF &&
#   cmake --build /tmp/herald-old/build --target herald
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(realpath "${1:?usage: bench/run-startup.sh OLD_BIN NEW_BIN [runs]}")
NEW=$(realpath "${2:?usage: bench/run-startup.sh OLD_BIN NEW_BIN [runs]}")
RUNS=${3:-20}
TMP=$(mktemp -d /tmp/herald-startup-XXXXXX)
trap 'rm -rf "$TMP"' EXIT

echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "old: $OLD"
echo "new: $NEW"

for cmd in version --help; do
  hyperfine -N -w 5 -r "$((RUNS * 5))" --export-json "$TMP/h.json" \
    -n old "$OLD $cmd" -n new "$NEW $cmd" >/dev/null
  luajit bench/startup.lua hyperfine "$TMP/h.json" "$cmd"
done

# 1,000 sensors on one webhook event (the shape of bench/sensors-memory.sh)
mkdir -p "$TMP/k"
cat >"$TMP/k/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: es}
spec:
  webhook:
    ev: {port: "12110", endpoint: /ev, method: POST}
YAML
for i in $(seq 1000); do
  printf 'apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata: {name: s%d}\nspec:\n' "$i"
  printf '  dependencies:\n    - name: d\n      eventSourceName: es\n      eventName: ev\n'
  printf '      filters:\n        data:\n          - {path: body.n, type: number, comparator: ">", value: ["%d"]}\n' "$i"
  printf '  triggers:\n    - template: {name: t, log: {}}\n---\n'
done >"$TMP/k/sensors.yaml"

b() { luajit bench/startup.lua "$@" "$OLD" "$NEW" ${EXTRA:-} 2>/dev/null; }
echo "one webhook, to first 200:    $(b first200 "$RUNS" 12100 /ingest '{"type":"order.x"}' bench/webhook-log) ms"
echo "one webhook, CPU to first 200: $(b cpu "$RUNS" 12100 /ingest '{"type":"order.x"}' bench/webhook-log) ms"
# 1,001 documents: over the default limit of one load (1,000)
EXTRA="--spec-limits documents=2000"
echo "1,000 sensors, to first 200:  $(b first200 "$((RUNS / 2))" 12110 /ev '{"n":0}' "$TMP/k") ms"
echo "1,000 sensors, CPU to first 200: $(b cpu "$((RUNS / 2))" 12110 /ev '{"n":0}' "$TMP/k") ms"
EXTRA=""
echo "one webhook, idle RSS:        $(b rss 5 12100 /ingest '{"type":"order.x"}' bench/webhook-log) KB"
