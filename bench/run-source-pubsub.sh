#!/usr/bin/env bash
# Benchmark: GCP Pub/Sub (Google's emulator) -> pubSub source -> one data filter -> log trigger,
# against a minimal pull+ack client of our own on the same emulator, alternated, medians
# (bench/pubsub_bench.lua). The emulator (Java) is the limit of both: the goal is herald at
# >= 80% of the minimal client's rate and <= 50 CPU-us per event.
#   usage: [HERALD_BIN=build/herald] bench/run-source-pubsub.sh [messages=20000] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${HERALD_BIN:-build/herald}
HERALD_BIN=$BIN HERALD_SOURCE_DIR=$PWD luajit bench/pubsub_bench.lua "$BIN" "${1:-20000}" "${2:-3}"
