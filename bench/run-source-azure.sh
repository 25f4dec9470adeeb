#!/usr/bin/env bash
# Benchmark: Azure Queue Storage (azurite's queue service on 127.0.0.1) -> azureQueueStorage
# source -> sensor (one data filter) -> log trigger, embedded bus, against a minimal client of our
# own doing a receive (32 a call) + delete (one per message: the API has no batch delete) loop on
# the same azurite, alternated in one run.
#   per run: N messages of ~150 bytes put (4 putters, before the clock starts), then
#   client: drains the queue (get 32, delete each, sequentially, one keep-alive connection,
#           Shared Key signed as herald signs): messages/s, and its own CPU per message
#   herald: started on a loaded queue; from "connected" to the N-th trigger log line: events/s,
#           and herald's CPU (utime+stime) per event over the whole run
# usage: bench/run-source-azure.sh [messages=3000] [runs=3]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}
RUNS=${2:-3}
BIN=${HERALD_BIN:-build/herald}
OUT=$(mktemp -d /tmp/herald-bench-azure-XXXXXX)
PEER=""
HPID=""
cleanup() {
  [ -n "$HPID" ] && kill "$HPID" 2>/dev/null || true
  [ -n "$PEER" ] && { kill "$PEER" 2>/dev/null; wait "$PEER" 2>/dev/null; } || true
  rm -rf "$OUT"
}
trap cleanup EXIT
TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# the minimal client (and the putter): libcurl, one keep-alive connection, Shared Key signing
cat >"$OUT/client.c" <<'C'
#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
typedef struct { char *p; size_t n; } buf;
static size_t w(char *d, size_t s, size_t n, void *u) {
  buf *b = u; b->p = realloc(b->p, b->n + s * n + 1); memcpy(b->p + b->n, d, s * n);
  b->n += s * n; b->p[b->n] = 0; return s * n;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static unsigned char key[64]; static int keylen;
static const char *base; /* http://127.0.0.1:PORT */
static CURL *e;
/* one signed request; canon_q: the canonicalized query lines ("\nname:value" each, sorted) */
static long req(const char *method, const char *path, const char *query, const char *canon_q,
                const char *body, buf *out) {
  char date[64], sts[2048], url[1024], auth[256], dh[96];
  time_t t = time(NULL); struct tm tm; gmtime_r(&t, &tm);
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  size_t bl = body ? strlen(body) : 0;
  char cl[32] = ""; if (bl) snprintf(cl, sizeof cl, "%zu", bl);
  snprintf(sts, sizeof sts, "%s\n\n\n%s\n\n%s\n\n\n\n\n\n\nx-ms-date:%s\nx-ms-version:2018-03-28\n/devstoreaccount1/devstoreaccount1%s%s",
           method, cl, bl ? "application/xml" : "", date, path, canon_q);
  unsigned char mac[32]; unsigned int ml = 32;
  HMAC(EVP_sha256(), key, keylen, (unsigned char *)sts, strlen(sts), mac, &ml);
  char b64[64]; EVP_EncodeBlock((unsigned char *)b64, mac, 32);
  snprintf(auth, sizeof auth, "Authorization: SharedKey devstoreaccount1:%s", b64);
  snprintf(dh, sizeof dh, "x-ms-date: %s", date);
  struct curl_slist *h = NULL;
  h = curl_slist_append(h, dh); h = curl_slist_append(h, "x-ms-version: 2018-03-28");
  h = curl_slist_append(h, auth); h = curl_slist_append(h, "Expect:");
  if (bl) h = curl_slist_append(h, "Content-Type: application/xml");
  snprintf(url, sizeof url, "%s/devstoreaccount1%s%s%s", base, path, query ? "?" : "", query ? query : "");
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
  if (bl) curl_easy_setopt(e, CURLOPT_POSTFIELDS, body); else curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  if (strcmp(method, "GET") && strcmp(method, "POST")) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, w);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, out);
  long st = 0;
  if (curl_easy_perform(e) == CURLE_OK) curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
  curl_slist_free_all(h);
  return st;
}
static void enc(char *o, const char *s) { /* percent-encode a pop receipt for the URL */
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~') *o++ = (char)c;
    else o += sprintf(o, "%%%02X", c);
  }
  *o = 0;
}
int main(int argc, char **argv) {
  base = argv[1]; const char *mode = argv[2], *q = argv[3]; long n = atol(argv[4]), from = argc > 5 ? atol(argv[5]) : 0;
  keylen = EVP_DecodeBlock(key, (const unsigned char *)getenv("AZ_KEY"), (int)strlen(getenv("AZ_KEY")));
  keylen -= 2; /* the key ends in "==" */
  e = curl_easy_init();
  char path[256];
  if (!strcmp(mode, "create")) { snprintf(path, sizeof path, "/%s", q); buf b = {0}; printf("%ld\n", req("PUT", path, NULL, "", NULL, &b)); return 0; }
  snprintf(path, sizeof path, "/%s/messages", q);
  if (!strcmp(mode, "put")) {
    char body[512];
    for (long i = from; i < from + n; i++) {
      snprintf(body, sizeof body, "<QueueMessage><MessageText>{\"kind\":\"order.created\",\"id\":%ld,\"sku\":\"A-%ld\",\"pad\":\"%s\"}</MessageText></QueueMessage>",
               i, i % 97, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
      buf b = {0}; if (req("POST", path, NULL, "", body, &b) != 201) { fprintf(stderr, "put failed\n"); return 1; } free(b.p);
    }
    return 0;
  }
  long got = 0; double t0 = now(), t1 = t0;
  while (got < n) {
    buf b = {0};
    if (req("GET", path, "numofmessages=32&visibilitytimeout=120", "\nnumofmessages:32\nvisibilitytimeout:120", NULL, &b) != 200) return 1;
    int k = 0;
    for (char *p = b.p; p && (p = strstr(p, "<MessageId>")); k++) {
      char id[128], pop[256], epop[768], dpath[512], dq[800], cq[400];
      p += 11; char *x = strstr(p, "</MessageId>"); snprintf(id, sizeof id, "%.*s", (int)(x - p), p);
      char *r = strstr(x, "<PopReceipt>") + 12; char *y = strstr(r, "</PopReceipt>");
      snprintf(pop, sizeof pop, "%.*s", (int)(y - r), r);
      enc(epop, pop);
      snprintf(dpath, sizeof dpath, "%s/%s", path, id);
      snprintf(dq, sizeof dq, "popreceipt=%s", epop);
      snprintf(cq, sizeof cq, "\npopreceipt:%s", pop);
      buf d = {0}; if (req("DELETE", dpath, dq, cq, NULL, &d) != 204) return 1; free(d.p);
      p = y;
    }
    free(b.p);
    if (!k) break;
    got += k; t1 = now();
  }
  struct rusage ru; getrusage(RUSAGE_SELF, &ru);
  double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  printf("client_messages=%ld client_seconds=%.3f client_per_s=%.0f client_cpu_us_per_msg=%.1f\n", got, t1 - t0, got / (t1 - t0), cpu * 1e6 / (got ? got : 1));
  return 0;
}
C
cc -O2 -o "$OUT/client" "$OUT/client.c" -lcurl -lcrypto
export AZ_KEY="$KEY"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
node spec/peers/npm/node_modules/azurite/dist/src/queue/main.js --queueHost 127.0.0.1 --queuePort "$PORT" \
  --location "$OUT/azurite" --skipApiVersionCheck --silent >"$OUT/peer.out" 2>"$OUT/peer.err" &
PEER=$!
for _ in $(seq 400); do grep -q "successfully listens" "$OUT/peer.out" 2>/dev/null && break; sleep 0.05; done
BASE="http://127.0.0.1:$PORT"
[ "$("$OUT/client" "$BASE" create bench 0)" = 201 ] || { echo "cannot create the queue"; exit 1; }

load() {
  local per=$((N / 4)) pids=()
  for k in 0 1 2 3; do
    local cnt=$per; [ $k = 3 ] && cnt=$((N - 3 * per))
    "$OUT/client" "$BASE" put bench "$cnt" $((k * per)) & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

mkdir -p "$OUT/specs" "$OUT/secrets/az"
printf '%s' "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$KEY;QueueEndpoint=$BASE/devstoreaccount1;" >"$OUT/secrets/az/cs"
cat >"$OUT/specs/es.yaml" <<YAML
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: bench}
spec:
  azureQueueStorage:
    ingest: {connectionString: {name: az, key: cs}, queueName: bench, jsonBody: true, waitTimeInSeconds: 1}
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

run_herald() {
  "$BIN" run "$OUT/specs" --secrets-dir "$OUT/secrets" --metrics-addr 127.0.0.1:0 \
    --admin-addr 127.0.0.1:0 --admin-token-file "$OUT/admin-token" >"$OUT/triggers.jsonl" 2>"$OUT/stderr" &
  HPID=$!
  local t0="" c
  while :; do
    if [ -z "$t0" ] && grep -q '"msg":"connected"' "$OUT/stderr"; then t0=$(date +%s.%N); fi
    c=$(grep -c '"msg":"triggered"' "$OUT/triggers.jsonl" || true)
    [ "$c" -ge "$N" ] && break
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
cl=() cc=() he=() hc=()
for i in $(seq "$RUNS"); do
  load; c=$("$OUT/client" "$BASE" drain bench "$N"); echo "run $i client: $c"
  cl+=("$(echo "$c" | sed -n 's/.*client_per_s=\([0-9.]*\).*/\1/p')")
  cc+=("$(echo "$c" | sed -n 's/.*client_cpu_us_per_msg=\([0-9.]*\).*/\1/p')")
  load; h=$(run_herald); echo "run $i herald: $h"
  he+=("$(echo "$h" | sed -n 's/.*herald_per_s=\([0-9.]*\).*/\1/p')")
  hc+=("$(echo "$h" | sed -n 's/.*herald_cpu_us_per_event=\([0-9.]*\).*/\1/p')")
done
C=$(median "${cl[@]}"); CU=$(median "${cc[@]}"); E=$(median "${he[@]}"); U=$(median "${hc[@]}")
echo "median: client=$C/s herald=$E/s ratio=$(awk -v c="$C" -v e="$E" 'BEGIN {printf "%.0f%%", e / c * 100}') herald_cpu_us_per_event=$U client_cpu_us_per_msg=$CU"
