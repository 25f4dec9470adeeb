#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (ctest: busted specs that
# start the real binary and real peers on 127.0.0.1, and C unit tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
scripts/build.sh
cd build
ctest --output-on-failure -j"$(nproc)" "$@"
