#!/usr/bin/env bash
# Benchmark: github (X-Hub-Signature-256 checked) against the plain webhook, in the same
# engine run: 2 KB JSON push payloads, webhook -> data filter -> log trigger, wrk keep-alive.
# Runs alternate (webhook, github) ROUNDS times and prints each run and the medians, plus
# the github/webhook ratio, and checks every event answered 200 reached its trigger.
#   usage: bench/run-source-github.sh [duration_s=5] [rounds=3] [connections=32]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
ROUNDS=${2:-3}
CONN=${3:-32}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-gh-XXXXXX)
MPORT=17791
SECRET="bench-secret-$$"
mkdir -p "$OUT/secrets/bench-gh"
printf '%s' "$SECRET" >"$OUT/secrets/bench-gh/secret"

# a 2 KB push-like payload (2048 bytes exactly)
python3 - "$OUT/body.json" <<'PY'
import json, sys
commits = [{"id": "%040x" % i, "message": "commit %d" % i, "author": {"name": "dev", "email": "dev@example.com"}} for i in range(12)]
body = {"ref": "refs/heads/main", "repository": {"full_name": "bench/repo"}, "commits": commits, "pad": ""}
s = json.dumps(body, separators=(",", ":"))
body["pad"] = "x" * (2048 - len(s))
s = json.dumps(body, separators=(",", ":"))
assert len(s) == 2048, len(s)
open(sys.argv[1], "w").write(s)
PY
SIG=$(openssl dgst -sha256 -hmac "$SECRET" -r <"$OUT/body.json" | cut -d' ' -f1)

"$BIN" run bench/source-github/ --secrets-dir "$OUT/secrets" --metrics-addr 127.0.0.1:$MPORT \
  --log-level warn >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 200); do curl -sf -o /dev/null http://127.0.0.1:12111/health && break; sleep 0.02; done
kill -0 $PID 2>/dev/null || { cat "$OUT/stderr" >&2; exit 1; }

cpu() { awk '{print $14 + $15}' /proc/$PID/stat; }
TICK=$(getconf CLK_TCK)
run() { # name port path headers
  local c0 c1
  c0=$(cpu)
  BODY_FILE="$OUT/body.json" HDRS="$4" wrk -t1 -c"$CONN" -d"${DUR}s" -s bench/source-github/post.lua \
    "http://127.0.0.1:$2$3" >"$OUT/wrk.txt"
  c1=$(cpu)
  kill -0 $PID 2>/dev/null || { tail -5 "$OUT/stderr" >&2; exit 1; }
  local rps non reqs us
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
  reqs=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
  non=$(awk '/Non-2xx/ {print $5}' "$OUT/wrk.txt")
  us=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v n="$reqs" 'BEGIN {printf "%.1f", (b - a) / t / n * 1e6}')
  echo "$1 events_per_s=$rps non_2xx=${non:-0} herald_cpu_us_per_event=$us" >&2
  echo "$rps $us" >>"$OUT/$1.runs"
  echo "$rps"
}
W=() G=()
for r in $(seq "$ROUNDS"); do
  W+=("$(run webhook 12110 /ingest "X-GitHub-Event: push")")
  G+=("$(run github 12111 /push "X-GitHub-Event: push|X-GitHub-Delivery: 1|X-Hub-Signature-256: sha256=$SIG")")
done
sleep 0.5
M=$(curl -s http://127.0.0.1:$MPORT/metrics)
kill -TERM $PID
wait $PID || true
trap 'rm -rf "$OUT"' EXIT
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
WM=$(median "${W[@]}")
GM=$(median "${G[@]}")
SENT=$(echo "$M" | awk '/^argo_events_events_sent_total/ {s+=$2} END {print s+0}')
TRIG=$(grep -c '"triggerName":"log"' "$OUT/triggers.jsonl" || true)
REJ=$(echo "$M" | awk '/^herald_eventsource_rejected_total/ {s+=$2} END {print s+0}')
echo "duration=${DUR}s rounds=$ROUNDS connections=$CONN body=2048B"
echo "webhook runs: ${W[*]}"
echo "github runs:  ${G[*]}"
WC=$(median $(awk '{print $2}' "$OUT/webhook.runs"))
GC=$(median $(awk '{print $2}' "$OUT/github.runs"))
echo "median cpu_us_per_event webhook=$WC github=$GC (github costs $(awk -v a="$GC" -v b="$WC" 'BEGIN {printf "%.2f", a / b}')x)"
echo "median webhook=$WM github=$GM ratio=$(awk -v a="$GM" -v b="$WM" 'BEGIN {printf "%.2f", a / b}')"
echo "accepted=$SENT triggered=$TRIG lost=$((SENT - TRIG)) rejected=$REJ"
