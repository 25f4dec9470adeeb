#!/usr/bin/env bash
# Quick start: installs what is missing, builds, and runs the Argo Events webhook example on
# the embedded bus. In another terminal:
#   curl -d '{"message":"hello"}' -H "Content-Type: application/json" -X POST http://localhost:12000/example
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
scripts/build.sh
exec build/herald run examples/quickstart/ "$@"
