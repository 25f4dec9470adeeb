/*
 * bench/curl_floor.c: what libcurl alone costs per HTTP request, for the HTTP-trigger
 * comparison in RESULTS.md: N keep-alive POSTs of a small JSON body over at most K connections
 * to a local sink, driven by curl_multi_perform, with pooled easy handles reset per request as
 * the engine does. Prints the process's CPU time per request (user + system, client side only).
 *
 *   cc -O2 -o /tmp/curl_floor bench/curl_floor.c -lcurl
 *   build/spec/herald-peer-http_sink 12199 /sink &
 *   /tmp/curl_floor http://127.0.0.1:12199/sink 20000 16
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static size_t discard(char *p, size_t size, size_t n, void *u) {
  (void)p, (void)u;
  return size * n;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s URL REQUESTS CONNECTIONS\n", argv[0]);
    return 2;
  }
  const char *url = argv[1];
  int total = atoi(argv[2]), par = atoi(argv[3]);
  if (total < 1 || par < 1) return 2;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURLM *m = curl_multi_init();
  curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)par);
  curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)par * 4);
  const char *body = "{\"type\":\"order.created\",\"amount\":129.95}";
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
  h = curl_slist_append(h, "Expect:");
  CURL **pool = calloc((size_t)par, sizeof *pool);
  for (int i = 0; i < par; i++) pool[i] = curl_easy_init();
  int npool = par, started = 0, done = 0, failed = 0;
  clock_t c0 = clock();
  while (done < total) {
    while (npool && started < total) {
      CURL *e = pool[--npool];
      curl_easy_reset(e);
      curl_easy_setopt(e, CURLOPT_URL, url);
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
      curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
      curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
      curl_multi_add_handle(m, e);
      started++;
    }
    int running;
    curl_multi_perform(m, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left))) {
      if (msg->msg != CURLMSG_DONE) continue;
      if (msg->data.result != CURLE_OK) failed++;
      CURL *e = msg->easy_handle;
      curl_multi_remove_handle(m, e);
      pool[npool++] = e;
      done++;
    }
    if (npool && started < total) continue; /* refill before waiting */
    curl_multi_poll(m, NULL, 0, 1000, NULL);
  }
  double cpu = (double)(clock() - c0) / CLOCKS_PER_SEC;
  printf("%d requests (%d failed), %.2f CPU s, %.1f us CPU per request\n", total, failed, cpu,
         cpu / total * 1e6);
  return failed ? 1 : 0;
}
