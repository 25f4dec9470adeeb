#!/usr/bin/env bash
# Benchmark: SQS (fauxqs on 127.0.0.1, spec/helpers/fauxqs.js) -> sqs source -> sensor (one
# data filter) -> log trigger, embedded bus, against a minimal client of our own doing the same
# receive (10 a call) + DeleteMessageBatch loop on the same emulator, alternated in one run.
#   per run: N messages of ~150 bytes loaded (SendMessageBatch, before the clock starts), then
#   client: drains the queue (receive 10, delete 10, sequentially; no signing): messages/s
#   herald: started on a loaded queue; from the first receive to the N-th trigger log line:
#           events/s, and herald's CPU (utime+stime) per event over the whole run
#   HERALD_BIN_BEFORE=path: a second herald build run in each round too (before/after a change)
#   herald's progress is read from its /metrics (the count of triggers), not by grepping the
#   growing trigger log every 50 ms, which cost CPU beside the process measured
# usage: bench/run-source-sqs.sh [messages=20000] [runs=3]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
RUNS=${2:-3}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-sqs-XXXXXX)
PEER=""
HPID=""
cleanup() {
  [ -n "$HPID" ] && kill "$HPID" 2>/dev/null || true
  [ -n "$PEER" ] && kill "$PEER" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# the minimal client: libcurl, one keep-alive connection, receive + delete in a loop
cat >"$OUT/client.c" <<'C'
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
typedef struct { char *p; size_t n; } buf;
static size_t w(char *d, size_t s, size_t n, void *u) {
  buf *b = u; b->p = realloc(b->p, b->n + s * n + 1); memcpy(b->p + b->n, d, s * n);
  b->n += s * n; b->p[b->n] = 0; return s * n;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
  const char *url = argv[1], *q = argv[2]; long want = atol(argv[3]);
  CURL *e = curl_easy_init();
  struct curl_slist *hr = NULL, *hd = NULL;
  hr = curl_slist_append(hr, "Content-Type: application/x-amz-json-1.0");
  hr = curl_slist_append(hr, "X-Amz-Target: AmazonSQS.ReceiveMessage");
  hd = curl_slist_append(hd, "Content-Type: application/x-amz-json-1.0");
  hd = curl_slist_append(hd, "X-Amz-Target: AmazonSQS.DeleteMessageBatch");
  char rbody[512], *dbody = malloc(65536);
  snprintf(rbody, sizeof rbody, "{\"QueueUrl\":\"%s\",\"MaxNumberOfMessages\":10,\"WaitTimeSeconds\":1,\"MessageAttributeNames\":[\"All\"]}", q);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, w);
  long got = 0; double t0 = 0, t1 = 0;
  while (got < want) {
    buf b = {0};
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hr);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, rbody);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    if (curl_easy_perform(e) != CURLE_OK) return 1;
    if (!t0) t0 = now();
    int n = 0; size_t dl = (size_t)snprintf(dbody, 65536, "{\"QueueUrl\":\"%s\",\"Entries\":[", q);
    for (char *p = b.p; p && (p = strstr(p, "\"ReceiptHandle\":\"")); n++) {
      p += 17; char *end = strchr(p, '"');
      dl += (size_t)snprintf(dbody + dl, 65536 - dl, "%s{\"Id\":\"m%d\",\"ReceiptHandle\":\"%.*s\"}", n ? "," : "", n, (int)(end - p), p);
      p = end;
    }
    free(b.p);
    if (!n) break;
    snprintf(dbody + dl, 65536 - dl, "]}");
    buf d = {0};
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, dbody);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &d);
    if (curl_easy_perform(e) != CURLE_OK) return 1;
    free(d.p);
    got += n;
    t1 = now();
  }
  printf("client_messages=%ld client_seconds=%.3f client_per_s=%.0f\n", got, t1 - t0, got / (t1 - t0));
  return 0;
}
C
cc -O2 -o "$OUT/client" "$OUT/client.c" -lcurl

node spec/helpers/fauxqs.js >"$OUT/peer.json" 2>"$OUT/peer.err" &
PEER=$!
for _ in $(seq 200); do grep -q aux "$OUT/peer.json" 2>/dev/null && break; sleep 0.05; done
PORT=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$OUT/peer.json")
EP="http://127.0.0.1:$PORT/"
# A fresh queue for each leg: a herald stopped with its long polls in flight leaves them for
# the emulator to answer into a closed connection, and the up to 20 messages it hands them stay
# invisible for the visibility timeout (30 s); on a shared queue the next leg waited for them
# (a herald leg after a herald leg took ~25 s for 10,000) or stopped 10 short (the client).
QN=0
new_queue() {
  QN=$((QN + 1))
  QURL="http://127.0.0.1:$PORT/000000000000/bench$QN"
  curl -s -o /dev/null -X POST -H 'X-Amz-Target: AmazonSQS.CreateQueue' -H 'Content-Type: application/x-amz-json-1.0' \
    -d "{\"QueueName\":\"bench$QN\",\"Attributes\":{\"VisibilityTimeout\":\"30\"}}" "$EP"
  sed -i "s/queue: bench[0-9]*,/queue: bench$QN,/" "$OUT/specs/es.yaml" 2>/dev/null || true
}

# loads N ~150-byte JSON messages, 10 a call, 16 calls at a time
load() {
  new_queue
  node -e '
const [ep, q, n] = [process.argv[1], process.argv[2], Number(process.argv[3])];
const pad = "x".repeat(80);
let next = 0;
async function worker() {
  while (next < n) {
    const entries = [];
    for (let j = 0; j < 10 && next < n; j++, next++)
      entries.push({ Id: "e" + j, MessageBody: JSON.stringify({ kind: "order.created", id: next, sku: "A-" + (next % 97), pad }) });
    const r = await fetch(ep, { method: "POST", headers: { "X-Amz-Target": "AmazonSQS.SendMessageBatch",
      "Content-Type": "application/x-amz-json-1.0" }, body: JSON.stringify({ QueueUrl: q, Entries: entries }) });
    await r.text();
  }
}
Promise.all(Array.from({ length: 16 }, worker)).then(() => process.exit(0));
' "$EP" "$QURL" "$N"
}

mkdir -p "$OUT/specs"
cat >"$OUT/specs/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: bench}
spec:
  sqs:
    ingest: {region: us-east-1, queue: bench, endpoint: "http://127.0.0.1:$PORT", jsonBody: true, waitTimeSeconds: 1}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {name: bench}
spec:
  dependencies:
    - name: order
      eventSourceName: bench
      eventName: ingest
      filters:
        data:
          - {path: body.kind, type: string, value: ["^order\\\\."]}
  triggers:
    - template: {name: log, log: {}}
YAML

MPORT=17832
run_herald() { # [binary]
  AWS_ACCESS_KEY_ID=AKIABENCH AWS_SECRET_ACCESS_KEY=x "${1:-$BIN}" run "$OUT/specs" --metrics-addr 127.0.0.1:$MPORT \
    --admin-addr 127.0.0.1:0 --admin-token-file "$OUT/admin-token" >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
  HPID=$!
  local t0="" c
  while :; do
    if [ -z "$t0" ] && grep -q '"connected: queue' "$OUT/stderr"; then t0=$(date +%s.%N); fi
    c=$(curl -s http://127.0.0.1:$MPORT/metrics | awk '/^argo_events_action_triggered_total/ {s += $2} END {print s + 0}' || true)
    [ "${c:-0}" -ge "$N" ] && break
    kill -0 $HPID 2>/dev/null || { echo "herald exited"; cat "$OUT/stderr"; exit 1; }
    sleep 0.05
  done
  local t1 ticks
  t1=$(date +%s.%N)
  ticks=$(cpu $HPID)
  kill $HPID; wait $HPID 2>/dev/null || true
  HPID=""
  awk -v n="$N" -v a="$t0" -v b="$t1" -v t="$ticks" -v hz="$TICK" \
    'BEGIN {printf "herald_events=%d herald_seconds=%.3f herald_per_s=%.0f herald_cpu_us_per_event=%.1f\n", n, b - a, n / (b - a), t / hz * 1e6 / n}'
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
echo "# machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
cl=() he=() hc=() be=() bc=()
for i in $(seq "$RUNS"); do
  load; c=$("$OUT/client" "$EP" "$QURL" "$N"); echo "run $i client: $c"
  cl+=("$(echo "$c" | sed -n 's/.*client_per_s=\([0-9.]*\).*/\1/p')")
  if [ -n "${HERALD_BIN_BEFORE:-}" ]; then
    load; h=$(run_herald "$HERALD_BIN_BEFORE"); echo "run $i herald before: $h"
    be+=("$(echo "$h" | sed -n 's/.*herald_per_s=\([0-9.]*\).*/\1/p')")
    bc+=("$(echo "$h" | sed -n 's/.*herald_cpu_us_per_event=\([0-9.]*\).*/\1/p')")
  fi
  load; h=$(run_herald); echo "run $i herald: $h"
  he+=("$(echo "$h" | sed -n 's/.*herald_per_s=\([0-9.]*\).*/\1/p')")
  hc+=("$(echo "$h" | sed -n 's/.*herald_cpu_us_per_event=\([0-9.]*\).*/\1/p')")
done
C=$(median "${cl[@]}"); E=$(median "${he[@]}"); U=$(median "${hc[@]}")
if [ -n "${HERALD_BIN_BEFORE:-}" ]; then
  BE=$(median "${be[@]}"); BU=$(median "${bc[@]}")
  echo "median before: client=$C/s herald=$BE/s ratio=$(awk -v c="$C" -v e="$BE" 'BEGIN {printf "%.0f%%", e / c * 100}') herald_cpu_us_per_event=$BU"
fi
echo "median: client=$C/s herald=$E/s ratio=$(awk -v c="$C" -v e="$E" 'BEGIN {printf "%.0f%%", e / c * 100}') herald_cpu_us_per_event=$U"
echo "# load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
