#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (ctest: busted specs that
# start the real binary and real peers on 127.0.0.1, and C unit tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
# npm peers (fauxqs, azurite, s3rver): installed from the lockfile when it changed
peers=spec/peers/npm
if [ ! -f $peers/node_modules/.package-lock.json ] ||
   [ $peers/package-lock.json -nt $peers/node_modules/.package-lock.json ]; then
  (cd $peers && npm ci --no-audit --no-fund --loglevel=error)
fi
scripts/build.sh
cd build
ctest --output-on-failure -j"$(nproc)" "$@"
