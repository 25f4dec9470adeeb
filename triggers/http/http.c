/*
 * triggers/http: the HTTP trigger, on libcurl's multi interface driven by the libuv loop.
 *
 *   execute(action) -> easy handle (pooled) -> curl multi -> uv_poll per socket + one uv_timer
 *   -> completion: 2xx = done (Argo counts every status as success: see docs/compat.md),
 *      other statuses = failed, transport errors (refused, timeout) = retry.
 *
 * One multi handle per process, so keep-alive connections are reused across firings and
 * triggers (libcurl's connection cache). Requests in flight are bounded by the bus (each
 * unfinished action holds its delivery) and connections per host by CURLMOPT_MAX_HOST_CONNECTIONS.
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"

#include <curl/curl.h>
#include <lauxlib.h>
#include <string.h>

#define MAX_HOST_CONNECTIONS 64
#define MAX_RESPONSE_KEEP 4096 /* bytes of a failed response kept for the log */

typedef struct http_trigger {
  int unused;
} http_trigger;

typedef struct http_req {
  herald_trigger_req *req;
  CURL *easy;
  struct curl_slist *headers;
  char *body;
  herald_buf response;
  char errbuf[CURL_ERROR_SIZE];
  struct http_req *next; /* in the in-flight list */
  struct http_req *prev;
} http_req;

typedef struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
} sock_ctx;

static struct {
  CURLM *multi;
  uv_loop_t *loop;
  uv_timer_t timer;
  int refs;
  http_req *inflight;
  CURL *pool[64];
  int npool;
} G;

static void check_done(void);

static void poll_closed(uv_handle_t *h) {
  free(h->data);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_ctx *s = p->data;
  int flags = 0, running;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(G.multi, s->fd, flags, &running);
  check_done();
}

static int on_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp) {
  sock_ctx *s = socketp;
  if (action == CURL_POLL_REMOVE) {
    if (s) {
      uv_poll_stop(&s->poll);
      curl_multi_assign(G.multi, fd, NULL);
      uv_close((uv_handle_t *)&s->poll, poll_closed);
    }
    return 0;
  }
  if (!s) {
    s = malloc(sizeof *s);
    if (!s) return -1;
    s->fd = fd;
    uv_poll_init_socket(G.loop, &s->poll, fd);
    s->poll.data = s;
    curl_multi_assign(G.multi, fd, s);
  }
  int ev = 0;
  if (action == CURL_POLL_IN || action == CURL_POLL_INOUT) ev |= UV_READABLE;
  if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT) ev |= UV_WRITABLE;
  uv_poll_start(&s->poll, ev, on_poll);
  return 0;
}

static void on_timer(uv_timer_t *t) {
  int running;
  curl_multi_socket_action(G.multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done();
}

static int on_timeout_change(CURLM *multi, long timeout_ms, void *userp) {
  if (timeout_ms < 0) uv_timer_stop(&G.timer);
  else uv_timer_start(&G.timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

static size_t on_body(char *ptr, size_t size, size_t n, void *userdata) {
  http_req *hr = userdata;
  size_t len = size * n;
  if (hr->response.len < MAX_RESPONSE_KEEP) {
    size_t keep = MAX_RESPONSE_KEEP - hr->response.len;
    herald_buf_append(&hr->response, ptr, len < keep ? len : keep);
  }
  return len;
}

static void req_release(http_req *hr) {
  if (hr->prev) hr->prev->next = hr->next;
  else G.inflight = hr->next;
  if (hr->next) hr->next->prev = hr->prev;
  curl_multi_remove_handle(G.multi, hr->easy);
  if (G.npool < (int)HERALD_ARRAY_SIZE(G.pool)) {
    curl_easy_reset(hr->easy);
    G.pool[G.npool++] = hr->easy;
  } else {
    curl_easy_cleanup(hr->easy);
  }
  curl_slist_free_all(hr->headers);
  free(hr->body);
  herald_buf_free(&hr->response);
}

static void check_done(void) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(G.multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    http_req *hr = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&hr);
    CURLcode rc = msg->data.result;
    long status = 0;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
    herald_trigger_req *req = hr->req;
    herald_trigger_result res;
    char reason[256 + CURL_ERROR_SIZE];
    if (rc != CURLE_OK) {
      res = HERALD_TRIGGER_RETRY;
      snprintf(reason, sizeof reason, "request failed: %s", hr->errbuf[0] ? hr->errbuf : curl_easy_strerror(rc));
    } else if (status >= 200 && status < 300) {
      res = HERALD_TRIGGER_DONE;
      reason[0] = '\0';
    } else {
      res = HERALD_TRIGGER_FAILED;
      snprintf(reason, sizeof reason, "response status %ld: %.*s", status,
               (int)(hr->response.len < 200 ? hr->response.len : 200),
               hr->response.data ? hr->response.data : "");
    }
    req_release(hr);
    req->done(req, res, res == HERALD_TRIGGER_DONE ? NULL : reason);
  }
}

static int http_init(herald_trigger *t, lua_State *L, int idx) {
  if (G.refs++ == 0) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    G.loop = t->engine->loop;
    G.multi = curl_multi_init();
    curl_multi_setopt(G.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(G.multi, CURLMOPT_TIMERFUNCTION, on_timeout_change);
    curl_multi_setopt(G.multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)MAX_HOST_CONNECTIONS);
    uv_timer_init(G.loop, &G.timer);
  }
  const char *url = herald_cfg_string(L, idx, "url", NULL);
  if (!url || !*url) {
    herald_log(&t->log, HLOG_ERROR, "http trigger needs a url");
    G.refs--;
    return HERALD_EINVAL;
  }
  return 0;
}

/* action: {url=, method=, headers={}, body=, timeout=} */
static int http_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  http_req *hr = req->priv;
  memset(hr, 0, sizeof *hr);
  hr->req = req;
  const char *url = herald_cfg_string(L, idx, "url", NULL);
  if (!url) return HERALD_EINVAL;
  const char *method = herald_cfg_string(L, idx, "method", "POST");
  double timeout = herald_cfg_number(L, idx, "timeout", 60);
  hr->easy = G.npool ? G.pool[--G.npool] : curl_easy_init();
  if (!hr->easy) return HERALD_ENOMEM;
  CURL *e = hr->easy;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, hr);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, hr->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, hr);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout > 0 ? timeout * 1000 : 60000));
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  lua_getfield(L, idx, "body");
  size_t blen = 0;
  const char *body = lua_tolstring(L, -1, &blen);
  if (body) {
    hr->body = herald_xstrndup(body, blen);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, hr->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
  } else if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
  }
  lua_pop(L, 1);
  if (strcmp(method, "GET") == 0) curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  else if (strcmp(method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  /* Headers: the spec's, plus a JSON content type when the spec sets none. */
  int has_ct = 0;
  lua_getfield(L, idx, "headers");
  if (lua_istable(L, -1)) {
    int h = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, h)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        const char *k = lua_tostring(L, -2);
        const char *v = lua_tostring(L, -1);
        if (v && !strpbrk(k, "\r\n:") && !strpbrk(v, "\r\n")) {
          herald_buf line = HERALD_BUF_INIT;
          herald_buf_printf(&line, "%s: %s", k, v);
          hr->headers = curl_slist_append(hr->headers, line.data);
          herald_buf_free(&line);
          if (strcasecmp(k, "Content-Type") == 0) has_ct = 1;
        }
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (!has_ct && body) hr->headers = curl_slist_append(hr->headers, "Content-Type: application/json");
  hr->headers = curl_slist_append(hr->headers, "Expect:"); /* no 100-continue round trip */
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hr->headers);
  hr->next = G.inflight;
  if (G.inflight) G.inflight->prev = hr;
  G.inflight = hr;
  CURLMcode mc = curl_multi_add_handle(G.multi, e);
  if (mc != CURLM_OK) {
    req_release(hr);
    return HERALD_EIO;
  }
  return 0;
}

static void timer_closed(uv_handle_t *h) {
  curl_multi_cleanup(G.multi);
  G.multi = NULL;
  while (G.npool) curl_easy_cleanup(G.pool[--G.npool]);
}

static void http_close(herald_trigger *t, herald_trigger_close_cb done) {
  /* Abandon this trigger's requests still in flight (the drain already waited for them). */
  for (http_req *hr = G.inflight, *next; hr; hr = next) {
    next = hr->next;
    if (hr->req->trigger != t) continue;
    herald_trigger_req *req = hr->req;
    req_release(hr);
    req->done(req, HERALD_TRIGGER_FAILED, "engine stopped");
  }
  if (--G.refs == 0) {
    uv_timer_stop(&G.timer);
    uv_close((uv_handle_t *)&G.timer, timer_closed);
  }
  done(t);
}

const herald_trigger_type herald_trigger_http = {
    .name = "http",
    .priv_size = sizeof(http_trigger),
    .req_size = sizeof(http_req),
    .init = http_init,
    .execute = http_execute,
    .close = http_close,
};
