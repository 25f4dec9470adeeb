/*
 * lib/kube/watch.c: list + watch of one Kubernetes collection (client-go's reflector), for the
 * resource event source and any other type that follows objects. kube.h describes the phases.
 *
 * Everything runs on the loop: the list and the watch are transfers on engine/curl_loop.h with
 * the cluster's credentials (herald__kube_auth). A watch is a chunked response of JSON lines;
 * each complete line goes to the owner at once, so events reach the bus as the API server sends
 * them. The owner keeps the cache (what was listed and watched) and decides what each line
 * means; this file keeps only the resourceVersion to resume from, and starts again where the
 * API server says to: from that version after a watch ended, with a new list after 410 Gone.
 */
#include "kube.h"

#include "common.h"

#include <stdlib.h>
#include <string.h>

#define MAX_BODY (256u << 20) /* a list (or one watch line) bigger than this is refused */

enum { IDLE, LISTING, WATCHING, WAITING };

static void begin_list(herald_kube_watch *w);
static void begin_watch(herald_kube_watch *w);

static void release(herald_kube_watch *w) {
  if (w->x_live) herald_curl_xfer_release(&w->x);
  w->x_live = 0;
  curl_slist_free_all(w->headers);
  w->headers = NULL;
  herald_buf_reset(&w->body);
}

static void on_timer(uv_timer_t *t) {
  herald_kube_watch *w = t->data;
  if (w->stopping) return;
  if (w->listed && w->rv) begin_watch(w);
  else begin_list(w);
}

/* The list or watch failed: say so, and try again after the backoff. */
static void retry(herald_kube_watch *w, const char *why) {
  if (w->on_state) w->on_state(w, 0, why);
  w->phase = WAITING;
  uint64_t ms = herald_backoff_next(&w->backoff);
  herald_log(w->log, HLOG_DEBUG, "Kubernetes %s: %s; again in %llu ms", w->path, why, (unsigned long long)ms);
  uv_timer_start(&w->timer, on_timer, ms, 0);
}

/* ---- watch lines ---- */

/* Hands each complete line in w->body to the owner, until it pauses. Returns OK, GONE or BAD. */
static int process_lines(herald_kube_watch *w) {
  size_t off = 0;
  int r = HERALD_KUBE_OK;
  while (!w->paused && off < w->body.len) {
    char *nl = memchr(w->body.data + off, '\n', w->body.len - off);
    if (!nl) break;
    size_t len = (size_t)(nl - (w->body.data + off));
    if (len) {
      char *rv = NULL;
      w->lines++;
      r = w->on_line(w, w->body.data + off, len, &rv);
      if (rv) {
        free(w->rv);
        w->rv = rv;
      }
    }
    off += len + 1;
    if (r != HERALD_KUBE_OK) break;
  }
  if (off) {
    memmove(w->body.data, w->body.data + off, w->body.len - off);
    w->body.len -= off;
  }
  if (r == HERALD_KUBE_OK && w->body.len > MAX_BODY) r = HERALD_KUBE_BAD;
  return r;
}

static size_t on_data(char *p, size_t sz, size_t n, void *ud) {
  herald_kube_watch *w = ud;
  size_t len = sz * n;
  if (w->phase == LISTING) {
    if (w->body.len + len > MAX_BODY) return 0;
    herald_buf_append(&w->body, p, len);
    return len;
  }
  if (w->paused) return CURL_WRITEFUNC_PAUSE;
  herald_buf_append(&w->body, p, len);
  int r = process_lines(w);
  if (r != HERALD_KUBE_OK) {
    w->verdict = r;
    return 0; /* aborts the transfer: on_watch_done sees why */
  }
  return len;
}

/* The watch is over with verdict r (OK: it ended by itself). */
static void watch_over(herald_kube_watch *w, int r, const char *why) {
  release(w);
  if (w->stopping) return;
  if (r == HERALD_KUBE_GONE) {
    herald_log(w->log, HLOG_INFO, "Kubernetes %s: resourceVersion %s is too old (410 Gone): listing again",
               w->path, w->rv ? w->rv : "?");
    w->listed = 0;
    w->relists++;
    begin_list(w);
  } else if (r == HERALD_KUBE_BAD) {
    retry(w, why ? why : "the watch sent what could not be read");
  } else if (w->lines == w->lines_at_watch) {
    /* ended with nothing sent: not at once again, or a server that closes every watch would
     * have us asking in a loop */
    w->phase = WAITING;
    w->rewatches++;
    uv_timer_start(&w->timer, on_timer, 1000, 0);
  } else {
    w->rewatches++;
    begin_watch(w);
  }
}

static void on_watch_done(herald_curl_xfer *x, CURLcode rc) {
  herald_kube_watch *w = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  int r = w->verdict;
  w->verdict = HERALD_KUBE_OK;
  char why[CURL_ERROR_SIZE + 64];
  why[0] = 0;
  if (r == HERALD_KUBE_OK) {
    if (status == 410) {
      r = HERALD_KUBE_GONE;
    } else if (rc != CURLE_OK && !(status == 200 && rc == CURLE_OPERATION_TIMEDOUT)) {
      snprintf(why, sizeof why, "watch: %s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
      r = HERALD_KUBE_BAD;
    } else if (status != 200) {
      snprintf(why, sizeof why, "watch answered HTTP %ld", status);
      r = HERALD_KUBE_BAD;
    }
  }
  if (r == HERALD_KUBE_OK) herald_backoff_reset(&w->backoff);
  watch_over(w, r, why[0] ? why : NULL);
}

/* ---- requests ---- */

static CURL *begin(herald_kube_watch *w, const char *url, herald_curl_done_cb done, long timeout_ms) {
  if (herald_curl_xfer_init(&w->x) != 0) return NULL;
  w->x_live = 1;
  w->x.data = w;
  CURL *e = w->x.easy;
  herald_curl_xfer_url(&w->x, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, w);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, "herald");
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  w->headers = curl_slist_append(w->headers, "Accept: application/json");
  herald__kube_auth(w->kc, e, &w->headers);
  (void)done;
  return e;
}

static void on_list_done(herald_curl_xfer *x, CURLcode rc) {
  herald_kube_watch *w = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  char why[CURL_ERROR_SIZE + 64];
  if (rc != CURLE_OK) {
    snprintf(why, sizeof why, "list: %s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
  } else if (status != 200) {
    const char *b = herald_buf_cstr(&w->body);
    const char *m = strstr(b, "\"message\":\"");
    int ml = m ? (int)strcspn(m + 11, "\"") : 0;
    snprintf(why, sizeof why, "list answered HTTP %ld%s%.*s", status, m ? ": " : "", ml > 200 ? 200 : ml, m ? m + 11 : "");
  } else {
    char *rv = NULL;
    int r = w->on_list(w, w->body.data ? w->body.data : "", w->body.len, &rv);
    release(w);
    if (w->stopping) {
      free(rv);
      return;
    }
    if (r != HERALD_KUBE_OK || !rv) {
      free(rv);
      retry(w, "the list answer could not be read");
      return;
    }
    free(w->rv);
    w->rv = rv;
    w->listed = 1;
    herald_backoff_reset(&w->backoff);
    if (w->on_state) w->on_state(w, 1, NULL);
    begin_watch(w);
    return;
  }
  release(w);
  if (!w->stopping) retry(w, why);
}

static void begin_list(herald_kube_watch *w) {
  w->phase = LISTING;
  herald_buf_reset(&w->body);
  char *url = herald_xasprintf("%s%s%s%s", w->kc->server, w->path, w->query ? "?" : "", w->query ? w->query : "");
  CURL *e = begin(w, url, on_list_done, 120000L);
  free(url);
  if (!e || herald_curl_xfer_start(&w->x, on_list_done) != 0) {
    release(w);
    retry(w, "cannot start the list request");
  }
}

static void begin_watch(herald_kube_watch *w) {
  w->phase = WATCHING;
  w->lines_at_watch = w->lines;
  herald_buf_reset(&w->body);
  long t = w->timeout_s > 0 ? w->timeout_s : 300 + rand() % 300;
  char *url = herald_xasprintf("%s%s?watch=true&allowWatchBookmarks=true&resourceVersion=%s&timeoutSeconds=%ld%s%s",
                               w->kc->server, w->path, w->rv ? w->rv : "0", t, w->query ? "&" : "",
                               w->query ? w->query : "");
  /* a watch that stops sending (and whose TCP keepalive does not notice) ends a little after
   * its own timeout, and is started again */
  CURL *e = begin(w, url, on_watch_done, (t + 30) * 1000L);
  free(url);
  if (!e || herald_curl_xfer_start(&w->x, on_watch_done) != 0) {
    release(w);
    retry(w, "cannot start the watch request");
  }
}

/* ---- the owner's controls ---- */

int herald_kube_watch_start(herald_kube_watch *w) {
  if (!w->kc || !w->kc->server) return HERALD_EINVAL;
  uv_timer_init(w->loop, &w->timer);
  w->timer.data = w;
  w->timer_open = 1;
  begin_list(w);
  return 0;
}

void herald_kube_watch_pause(herald_kube_watch *w) { w->paused = 1; }

void herald_kube_watch_resume(herald_kube_watch *w) {
  if (!w->paused) return;
  w->paused = 0;
  if (w->phase != WATCHING || w->stopping) return;
  int r = process_lines(w);
  if (r != HERALD_KUBE_OK) {
    watch_over(w, r, NULL);
    return;
  }
  if (!w->paused && w->x_live) {
    /* lines delivered during the un-pause may end the watch: the transfer then finishes with
     * a write error, and on_watch_done reads the verdict */
    curl_easy_pause(w->x.easy, CURLPAUSE_CONT);
  }
}

static void on_timer_closed(uv_handle_t *h) {
  herald_kube_watch *w = h->data;
  w->timer_open = 0;
  free(w->path), free(w->query), free(w->rv);
  w->path = w->query = w->rv = NULL;
  herald_buf_free(&w->body);
  if (w->stop_done) w->stop_done(w);
}

void herald_kube_watch_stop(herald_kube_watch *w, void (*done)(herald_kube_watch *w)) {
  w->stopping = 1;
  w->stop_done = done;
  release(w);
  if (w->timer_open) {
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, on_timer_closed);
  } else {
    free(w->path), free(w->query), free(w->rv);
    w->path = w->query = w->rv = NULL;
    herald_buf_free(&w->body);
    if (done) done(w);
  }
}
