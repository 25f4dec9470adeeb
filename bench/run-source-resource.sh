#!/usr/bin/env bash
# Benchmark: the resource event source (sources/resource/) -> sensor -> log trigger, embedded bus,
# against the fake API server (spec/peers/kube-apiserver.js, plain HTTP with a token) on the same
# machine, N ConfigMaps (default 1,000, ~300 bytes each).
#   A. backlog: the N objects exist before herald starts; the list gives N ADD events: events/s
#      from the first to the last trigger line (herald's own pace: one list answer, no server
#      round trips between events)
#   B. live: herald watching, a Node driver (32 requests in flight) patches every object R times
#      (default 5) and then deletes them all: N*(R+1) events; the driver's rate (the fake
#      server's pace) and herald's (first to last trigger line), and how far herald's last
#      event trails the driver's last answer
#   RSS of herald after A, at the end, and its peak (VmHWM); CPU seconds of herald in B.
#   usage: bench/run-source-resource.sh [n=1000] [rounds=5]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
R=${2:-5}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-resource-XXXXXX)
APORT=17830 MPORT=17831 ADMIN=17832
SPID="" HPID=""
cleanup() {
  [ -n "$HPID" ] && kill "$HPID" 2>/dev/null || true
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
TOKEN=bench-token
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
rss() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

node spec/peers/kube-apiserver.js --port $APORT --token $TOKEN >"$OUT/api.log" 2>&1 &
SPID=$!
for _ in $(seq 100); do grep -q "listening on" "$OUT/api.log" && break; sleep 0.1; done
cat >"$OUT/kubeconfig" <<KC
apiVersion: v1
kind: Config
current-context: b
clusters: [{name: f, cluster: {server: "http://127.0.0.1:$APORT"}}]
users: [{name: u, user: {token: $TOKEN}}]
contexts: [{name: b, context: {cluster: f, user: u}}]
KC

# the driver: op create|patch|delete, N objects, R rounds, 32 requests in flight, keep-alive
cat >"$OUT/drive.js" <<'JS'
const http = require("http");
const [op, n, rounds, port, token] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
function req(method, path, body, ctype) {
  return new Promise((res, rej) => {
    const r = http.request({ host: "127.0.0.1", port: Number(port), method, path, agent,
      headers: { Authorization: "Bearer " + token, "Content-Type": ctype || "application/json" } }, (s) => {
      s.resume(); s.on("end", () => (s.statusCode < 300 ? res() : rej(new Error(method + " " + path + " " + s.statusCode))));
    });
    r.on("error", rej);
    if (body) r.end(JSON.stringify(body)); else r.end();
  });
}
const base = "/api/v1/namespaces/default/configmaps";
const pad = "x".repeat(120);
async function run() {
  const jobs = [];
  for (let round = 0; round < Number(rounds); round++)
    for (let i = 0; i < Number(n); i++) jobs.push([round, i]);
  const t0 = process.hrtime.bigint();
  let next = 0;
  async function worker() {
    while (next < jobs.length) {
      const [round, i] = jobs[next++];
      const name = "cm-" + i;
      if (op === "create") await req("POST", base, { apiVersion: "v1", kind: "ConfigMap", metadata: { name, labels: { app: "bench" } }, data: { i: String(i), pad } });
      else if (op === "patch") await req("PATCH", base + "/" + name, { data: { round: String(round) } }, "application/merge-patch+json");
      else await req("DELETE", base + "/" + name);
    }
  }
  await Promise.all(Array.from({ length: 32 }, worker));
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ op, requests: jobs.length, seconds: s, per_s: jobs.length / s, end_ns: Date.now() * 1e6 }));
}
run().catch((e) => { console.error(e); process.exit(1); });
JS

cat >"$OUT/spec.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: kube
spec:
  resource:
    cms:
      namespace: default
      version: v1
      resource: configmaps
      eventTypes: [ADD, UPDATE, DELETE]
      filter:
        labels:
          - key: app
            value: bench
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: s
spec:
  dependencies:
    - name: d
      eventSourceName: kube
      eventName: cms
  triggers:
    - template:
        name: log
        log: {}
YAML

node "$OUT/drive.js" create "$N" 1 $APORT $TOKEN >"$OUT/create.json"
echo "objects=$N rounds=$R; create: $(cat "$OUT/create.json")"

lines() { wc -l <"$OUT/triggers.jsonl"; }
span() { # events/s between the first and the last trigger line's "ts" (lines $1..$2)
  sed -n "$1,$2p" "$OUT/triggers.jsonl" | luajit -e '
    local first, last, n
    local function t(l) local h, m, s = l:match("\"ts\":\"%d+%-%d+%-%d+T(%d+):(%d+):([%d.]+)Z") return h * 3600 + m * 60 + s end
    n = 0
    for l in io.lines() do n = n + 1; local x = t(l); first = first or x; last = x end
    print(string.format("%d events in %.3f s: %.0f events/s", n, last - first, (n - 1) / math.max(last - first, 1e-9)))'
}
wait_lines() { for _ in $(seq 1200); do [ "$(lines)" -ge "$1" ] && return 0; sleep 0.05; done; echo "timed out at $(lines) of $1 events" >&2; return 1; }

KUBECONFIG="$OUT/kubeconfig" "$BIN" run "$OUT/spec.yaml" --metrics-addr 127.0.0.1:$MPORT --admin-addr 127.0.0.1:$ADMIN \
  --log-level warn >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
HPID=$!
wait_lines "$N"
echo "A backlog (list): $(span 1 "$N")"
echo "  herald RSS after the list: $(rss $HPID VmRSS) kB"
C0=$(cpu $HPID)
node "$OUT/drive.js" patch "$N" "$R" $APORT $TOKEN >"$OUT/patch.json"
node "$OUT/drive.js" delete "$N" 1 $APORT $TOKEN >"$OUT/delete.json"
TOTAL=$((N + N * R + N))
wait_lines "$TOTAL"
DONE_NS=$(date +%s%N)
C1=$(cpu $HPID)
echo "B live: driver patch $(luajit -e "local j=io.read('a'); print(string.format('%.0f/s', j:match('\"per_s\":([%d.]+)')))" <"$OUT/patch.json"), delete $(luajit -e "local j=io.read('a'); print(string.format('%.0f/s', j:match('\"per_s\":([%d.]+)')))" <"$OUT/delete.json")"
echo "  herald: $(span $((N + 1)) "$TOTAL")"
LAST_DRIVER=$(luajit -e "local j=io.read('a'); print(string.format('%.0f', j:match('\"end_ns\":([%d.e+]+)')))" <"$OUT/delete.json")
echo "  herald's last event seen <= $(( (DONE_NS - LAST_DRIVER) / 1000000 )) ms after the driver's last answer (polling every 50 ms)"
echo "  herald CPU in B: $(luajit -e "print(string.format('%.2f s for $((TOTAL - N)) events: %.0f us/event', ($C1 - $C0) / $TICK, ($C1 - $C0) / $TICK / $((TOTAL - N)) * 1e6))")"
echo "  herald RSS at the end: $(rss $HPID VmRSS) kB, peak $(rss $HPID VmHWM) kB"
echo "  events: $(lines) trigger lines (expected $TOTAL)"
