#!/usr/bin/env bash
# Runs fuzz targets for a while each, at most two at a time, under nice (the machine is
# shared): fuzz/run.sh BUILD_DIR SECONDS TARGET...
# Each target fuzzes its own corpus BUILD_DIR/corpus/<t> (new inputs are kept there) seeded
# from the specs (fuzz/seed_corpus.lua) in fork mode, so a crash is recorded in
# BUILD_DIR/artifacts/<t>/ and fuzzing goes on; the log is BUILD_DIR/logs/<t>.log.
# FUZZ_MAX_LEN overrides the per-target input size limit.
set -euo pipefail
build=$1 secs=$2
shift 2
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$build/logs"
luajit "$src/fuzz/seed_corpus.lua" "$src" "$build/seeds" >/dev/null
maxlen() {
  if [ -n "${FUZZ_MAX_LEN:-}" ]; then echo "$FUZZ_MAX_LEN"; return; fi
  case $1 in
    http_request|yaml_load) echo 16384 ;;
    cloudevent) echo 8192 ;;
    *) echo 2048 ;;
  esac
}
run_one() {
  local t=$1
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t"
  local dict=""
  [ -f "$src/fuzz/dict/$t.dict" ] && dict="-dict=$src/fuzz/dict/$t.dict"
  nice -n 19 "$build/fuzz/fuzz_$t" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$(maxlen "$t")" \
    -print_final_stats=1 $dict -artifact_prefix="$build/artifacts/$t/" \
    "$build/corpus/$t" "$build/seeds/$t" >"$build/logs/$t.log" 2>&1 || true
  echo "$t done: $(grep -c 'CRASH\|TIMEOUT\|OOM' "$build/logs/$t.log" || true) crash/timeout/oom lines"
}
running=0
for t in "$@"; do
  run_one "$t" &
  running=$((running + 1))
  if [ $running -ge 2 ]; then wait -n; running=$((running - 1)); fi
done
wait
