#!/usr/bin/env bash
# Memory and start-up cost of many sensors in one process (the shared-state decision in
# engine/lua_host.h). Generates N sensors (1 dependency, 1 data filter, 1 log trigger) and,
# separately, N sensors that also carry a script filter (one sandbox state each), starts
# `herald run`, and reports RSS once started and the time from exec to "herald started".
#   usage: bench/sensors-memory.sh [N=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
BIN=${HERALD_BIN:-build/herald}
TMP=$(mktemp -d /tmp/herald-sensors-XXXXXX)
trap 'rm -rf "$TMP"' EXIT

gen() { # $1 = dir, $2 = with_script (0/1)
  mkdir -p "$1"
  cat >"$1/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: es}
spec:
  webhook:
    ev: {port: "12110", endpoint: /ev, method: POST}
YAML
  for i in $(seq "$N"); do
    {
      printf 'apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata: {name: s%d}\nspec:\n' "$i"
      printf '  dependencies:\n    - name: d\n      eventSourceName: es\n      eventName: ev\n'
      printf '      filters:\n        data:\n          - {path: body.n, type: number, comparator: ">", value: ["%d"]}\n' "$i"
      if [ "$2" = 1 ]; then printf '        script: "return event.body.n %% 2 == 0"\n'; fi
      printf '  triggers:\n    - template: {name: t, log: {}}\n---\n'
    } >>"$1/sensors.yaml"
  done
}

measure() { # $1 = label, $2 = dir
  local start end pid rss
  start=$(date +%s%N)
  "$BIN" run "$2" --metrics-addr off --log-level info >/dev/null 2>"$TMP/err" &
  pid=$!
  while ! grep -q "herald started" "$TMP/err" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { cat "$TMP/err"; exit 1; }
    sleep 0.002
  done
  end=$(date +%s%N)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  kill -TERM $pid; wait $pid || true
  printf '%-34s start_ms=%-6d rss_kb=%d\n' "$1" $(((end - start) / 1000000)) "$rss"
  echo "$rss"  >"$TMP/rss.$1"
}

mkdir -p "$TMP/zero"
gen "$TMP/zero" 0 && sed -i '/^apiVersion: argoproj.io\/v1alpha1$/,$!d' "$TMP/zero/es.yaml" && rm "$TMP/zero/sensors.yaml"
gen "$TMP/plain" 0
gen "$TMP/script" 1
measure "0 sensors (1 webhook)" "$TMP/zero"
measure "$N sensors, data filter" "$TMP/plain"
measure "$N sensors, data + script filter" "$TMP/script"
z=$(cat "$TMP/rss.0 sensors (1 webhook)")
p=$(cat "$TMP/rss.$N sensors, data filter")
s=$(cat "$TMP/rss.$N sensors, data + script filter")
echo "per sensor (shared engine state): $(( (p - z) * 1024 / N )) bytes"
echo "per sensor with a sandbox state:  $(( (s - z) * 1024 / N )) bytes"
