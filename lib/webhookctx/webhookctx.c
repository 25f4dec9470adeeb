/*
 * lib/webhookctx/webhookctx.c: Argo's WebhookContext on the engine's shared HTTP server, for
 * every webhook-style source (see webhookctx.h for the flow), and the data helpers that render
 * a request the way Argo's Go code marshals it (http.Header, url.Values).
 *
 * The server checks path, method, authSecret and sizes before a request reaches the source, so
 * a handler only checks what its vendor adds (a signature) and shapes the data. The response
 * waits for the bus: a 200 means the event is on it.
 */
#include "webhookctx/webhookctx.h"

#include "buf.h"
#include "common.h"
#include "engine.h"
#include "event.h"
#include "metrics.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_MAX_PAYLOAD 1048576
#define JSON_MAX_DEPTH 64

typedef herald_whctx_kv kv;

/* ---- multimaps rendered as Go's json.Marshal renders map[string][]string ---- */

static int kv_push(herald_whctx *w, uint32_t koff, uint32_t klen, uint32_t voff, uint32_t vlen) {
  if (w->nkvs == w->kvs_cap) {
    size_t cap = w->kvs_cap ? w->kvs_cap * 2 : 32;
    kv *p = realloc(w->kvs, cap * sizeof *p);
    if (!p) return HERALD_ENOMEM;
    w->kvs = p;
    w->kvs_cap = cap;
  }
  w->kvs[w->nkvs] = (kv){koff, klen, voff, vlen, (uint32_t)w->nkvs};
  w->nkvs++;
  return 0;
}

static const char *sort_base; /* qsort has no context argument; single-threaded */

static int kv_cmp(const void *a, const void *b) {
  const kv *x = a, *y = b;
  size_t n = x->klen < y->klen ? x->klen : y->klen;
  int c = memcmp(sort_base + x->koff, sort_base + y->koff, n);
  if (c) return c;
  if (x->klen != y->klen) return x->klen < y->klen ? -1 : 1;
  return x->order < y->order ? -1 : (x->order > y->order);
}

/* Appends {"k":["v",...],...} with keys sorted bytewise (Go sorts map keys), values in order. */
static void kv_render(herald_whctx *w, herald_buf *out) {
  const char *base = w->strs.data;
  if (w->nkvs > 1) {
    sort_base = base;
    qsort(w->kvs, w->nkvs, sizeof *w->kvs, kv_cmp);
  }
  herald_buf_putc(out, '{');
  for (size_t i = 0; i < w->nkvs; i++) {
    const kv *e = &w->kvs[i];
    int first = i == 0 || e->klen != w->kvs[i - 1].klen ||
                memcmp(base + e->koff, base + w->kvs[i - 1].koff, e->klen) != 0;
    if (first) {
      if (i) herald_buf_append(out, "],", 2);
      herald_buf_json_string(out, base + e->koff, e->klen);
      herald_buf_append(out, ":[", 2);
    } else {
      herald_buf_putc(out, ',');
    }
    herald_buf_json_string(out, base + e->voff, e->vlen);
  }
  if (w->nkvs) herald_buf_putc(out, ']');
  herald_buf_putc(out, '}');
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Go's url.QueryUnescape into b: '+' is a space, a bad %-escape fails (-1, b unchanged). */
static int unescape_into(herald_buf *b, const char *s, size_t n) {
  size_t start = b->len;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%') {
      int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
      int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        b->len = start;
        return -1;
      }
      herald_buf_putc(b, (char)(hi * 16 + lo));
      i += 2;
    } else {
      herald_buf_putc(b, c == '+' ? ' ' : c);
    }
  }
  return 0;
}

static int unescape(herald_whctx *w, const char *s, size_t n, uint32_t *off, uint32_t *len) {
  size_t start = w->strs.len;
  if (unescape_into(&w->strs, s, n) != 0) return -1;
  *off = (uint32_t)start;
  *len = (uint32_t)(w->strs.len - start);
  herald_buf_putc(&w->strs, '\0');
  return 0;
}

/* Go's url.ParseQuery: pairs split on '&'; a pair with ';' or a bad escape is skipped. */
static void parse_query(herald_whctx *w, const char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const char *amp = memchr(s + i, '&', n - i);
    size_t end = amp ? (size_t)(amp - s) : n;
    const char *pair = s + i;
    size_t plen = end - i;
    i = end + 1;
    if (plen == 0 || memchr(pair, ';', plen)) continue;
    const char *eq = memchr(pair, '=', plen);
    size_t klen = eq ? (size_t)(eq - pair) : plen;
    const char *v = eq ? eq + 1 : pair + plen;
    size_t vlen = eq ? plen - klen - 1 : 0;
    uint32_t ko, kl, vo, vl;
    size_t mark = w->strs.len;
    if (unescape(w, pair, klen, &ko, &kl) != 0) continue;
    if (unescape(w, v, vlen, &vo, &vl) != 0) {
      w->strs.len = mark;
      continue;
    }
    if (kv_push(w, ko, kl, vo, vl) != 0) return;
  }
}

int herald_whctx_form_get(const char *s, size_t n, const char *key, herald_buf *out) {
  size_t kn = strlen(key), i = 0;
  herald_buf k = HERALD_BUF_INIT;
  int found = -1;
  while (i < n && found < 0) {
    const char *amp = memchr(s + i, '&', n - i);
    size_t end = amp ? (size_t)(amp - s) : n;
    const char *pair = s + i;
    size_t plen = end - i;
    i = end + 1;
    if (plen == 0 || memchr(pair, ';', plen)) continue;
    const char *eq = memchr(pair, '=', plen);
    size_t klen = eq ? (size_t)(eq - pair) : plen;
    herald_buf_reset(&k);
    if (unescape_into(&k, pair, klen) != 0 || k.len != kn || memcmp(k.data, key, kn) != 0)
      continue;
    if (unescape_into(out, eq ? eq + 1 : pair + plen, eq ? plen - klen - 1 : 0) == 0) found = 0;
  }
  herald_buf_free(&k);
  return found;
}

void herald_whctx_put_values(herald_whctx *w, herald_buf *out, const char *s, size_t n) {
  herald_buf_reset(&w->strs);
  w->nkvs = 0;
  parse_query(w, s, n);
  kv_render(w, out);
}

static int is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
  return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Go's textproto.CanonicalMIMEHeaderKey into w->strs ("content-type" -> "Content-Type"); a
 * name with a byte outside the token set is kept as it is. */
static void canonical_key(herald_whctx *w, const char *s, size_t n, uint32_t *off) {
  *off = (uint32_t)w->strs.len;
  int valid = 1;
  for (size_t i = 0; i < n; i++)
    if (!is_tchar((unsigned char)s[i])) valid = 0;
  herald_buf_append(&w->strs, s, n);
  if (valid) {
    char *p = w->strs.data + *off;
    int upper = 1;
    for (size_t i = 0; i < n; i++) {
      char c = p[i];
      if (upper && c >= 'a' && c <= 'z') c = (char)(c - 32);
      else if (!upper && c >= 'A' && c <= 'Z') c = (char)(c + 32);
      p[i] = c;
      upper = c == '-';
    }
  }
  herald_buf_putc(&w->strs, '\0');
}

static int name_is(const herald_http_header *h, const char *name) {
  size_t n = strlen(name);
  return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

int herald_whctx_is_form(const herald_http_header *ct) {
  static const char form[] = "application/x-www-form-urlencoded";
  size_t n = sizeof form - 1;
  if (!ct || ct->value_len < n || strncasecmp(ct->value, form, n) != 0) return 0;
  const char *rest = ct->value + n;
  size_t rl = ct->value_len - n;
  while (rl && (*rest == ' ' || *rest == '\t')) rest++, rl--;
  return rl == 0 || *rest == ';';
}

void herald_whctx_put_headers(herald_whctx *w, herald_buf *out, const herald_http_req *req) {
  herald_buf_reset(&w->strs);
  w->nkvs = 0;
  /* Go's server moves Host to r.Host and drops Transfer-Encoding from r.Header; the bearer
   * token is the secret, so it stays out of the event. */
  for (size_t i = 0; i < req->nheaders; i++) {
    const herald_http_header *h = &req->headers[i];
    if (name_is(h, "host") || name_is(h, "transfer-encoding")) continue;
    if (w->token && name_is(h, "authorization")) continue;
    uint32_t ko, vo;
    canonical_key(w, h->name, h->name_len, &ko);
    vo = (uint32_t)w->strs.len;
    herald_buf_append(&w->strs, h->value, h->value_len);
    herald_buf_putc(&w->strs, '\0');
    if (kv_push(w, ko, (uint32_t)h->name_len, vo, (uint32_t)h->value_len) != 0) break;
  }
  kv_render(w, out);
}

void herald_whctx_put_body(herald_buf *out, const char *body, size_t len) {
  if (len == 0) herald_buf_append(out, "null", 4);
  else if (herald_json_valid(body, len, JSON_MAX_DEPTH)) herald_buf_append(out, body, len);
  else herald_buf_json_string(out, body, len);
}

/* ---- request handling ---- */

static void request_done(herald_whctx *w) {
  w->inflight--;
  if (w->stopped && w->inflight == 0 && w->stop_done) {
    herald_whctx_stop_cb done = w->stop_done;
    w->stop_done = NULL;
    done(w);
  }
}

static void on_published(void *data, int status) {
  herald_http_req *req = data;
  herald_whctx *w = req->route_data;
  if (status == 0) {
    herald_http_respond(req, 200, "text/plain; charset=utf-8", NULL, "success", 7);
  } else if (status == HERALD_EIO || status == HERALD_EBUSFULL || status == HERALD_ECLOSED ||
             status == HERALD_ETIMEDOUT) { /* the bus is down or busy (JetStream): retry later */
    herald_log_limited(&w->src->log, HLOG_WARN, "failed to record event: %s",
                       herald_strerror(status));
    static const char msg[] = "event bus unavailable, retry later";
    herald_http_respond(req, 503, "text/plain; charset=utf-8", "Retry-After: 1\r\n", msg,
                        sizeof msg - 1);
  } else {
    herald_log_limited(&w->src->log, HLOG_WARN, "failed to record event: %s",
                       herald_strerror(status));
    static const char msg[] = "failed to record event";
    herald_http_respond(req, 500, "text/plain; charset=utf-8", NULL, msg, sizeof msg - 1);
  }
  request_done(w);
}

void herald_whctx_emit(herald_whctx *w, herald_http_req *req, const char *json, size_t len) {
  w->inflight++;
  int r = herald_source_emit(w->src, json, len, on_published, req);
  if (r == 0) return;
  if (r == HERALD_EBUSFULL) {
    static const char msg[] = "event bus is full, retry later";
    herald_http_respond(req, 503, "text/plain; charset=utf-8", "Retry-After: 1\r\n", msg,
                        sizeof msg - 1);
  } else {
    static const char msg[] = "failed to record event";
    herald_http_respond(req, 500, "text/plain; charset=utf-8", NULL, msg, sizeof msg - 1);
  }
  request_done(w);
}

static const char *const reason_names[] = {"signature", "replay", "bad_request", "ignored"};

void herald_whctx_reject(herald_whctx *w, herald_http_req *req, int status,
                         herald_whctx_reason why, const char *msg) {
  if ((unsigned)why > HERALD_WHCTX_IGNORED) why = HERALD_WHCTX_BAD_REQUEST;
  if (!w->m_rejected[why])
    w->m_rejected[why] = herald_metric_get(
        "herald_eventsource_rejected_total",
        "Webhook requests refused by the source (reason: signature, replay, bad_request, ignored).",
        HERALD_COUNTER, "eventsource_name", w->src->es_name, "event_name", w->src->event_name,
        "reason", reason_names[why], NULL);
  herald_metric_inc(w->m_rejected[why]);
  herald_log_limited(&w->src->log,
                     why == HERALD_WHCTX_BAD_SIGNATURE || why == HERALD_WHCTX_REPLAY ? HLOG_WARN
                                                                                     : HLOG_DEBUG,
                     "request refused (%d): %s", status, msg);
  herald_http_respond(req, status, "text/plain; charset=utf-8", NULL, msg, strlen(msg));
}

static void on_request(herald_http_req *req) {
  herald_whctx *w = req->route_data;
  if (w->stopped) {
    static const char msg[] = "event source is stopping, retry later";
    herald_http_respond(req, 503, "text/plain; charset=utf-8", "Retry-After: 1\r\n", msg,
                        sizeof msg - 1);
    return;
  }
  w->handler(w, req);
}

/* ---- lifecycle ---- */

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

void herald_whctx_release(herald_whctx *w) {
  herald_buf_free(&w->buf);
  herald_buf_free(&w->strs);
  free(w->kvs);
  w->kvs = NULL;
  w->kvs_cap = w->nkvs = 0;
  free(w->endpoint);
  free(w->method);
  free(w->url);
  free(w->metadata_json);
  w->endpoint = w->method = w->url = w->metadata_json = NULL;
  if (w->token) {
    memset(w->token, 0, strlen(w->token));
    free(w->token);
    w->token = NULL;
  }
}

/* stack: unchanged */
int herald_whctx_read_metadata(herald_whctx *w, lua_State *L, int idx) {
  idx = abs_index(L, idx);
  lua_getfield(L, idx, "metadata");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    herald_log(&w->src->log, HLOG_ERROR, "metadata: expected a map of strings");
    return HERALD_EINVAL;
  }
  herald_buf_reset(&w->strs);
  w->nkvs = 0;
  int t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) != LUA_TSTRING ||
        (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)) {
      lua_pop(L, 3);
      herald_log(&w->src->log, HLOG_ERROR, "metadata: expected a map of strings");
      return HERALD_EINVAL;
    }
    size_t kl, vl;
    const char *k = lua_tolstring(L, -2, &kl);
    lua_pushvalue(L, -1);
    const char *v = lua_tolstring(L, -1, &vl); /* converts a copy, not the key's value */
    uint32_t ko = (uint32_t)w->strs.len;
    herald_buf_append(&w->strs, k, kl);
    uint32_t vo = (uint32_t)w->strs.len;
    herald_buf_append(&w->strs, v, vl);
    kv_push(w, ko, (uint32_t)kl, vo, (uint32_t)vl);
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  if (!w->nkvs) return 0;
  sort_base = w->strs.data;
  qsort(w->kvs, w->nkvs, sizeof *w->kvs, kv_cmp);
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_puts(&b, ",\"metadata\":{");
  for (size_t i = 0; i < w->nkvs; i++) {
    if (i) herald_buf_putc(&b, ',');
    herald_buf_json_string(&b, w->strs.data + w->kvs[i].koff, w->kvs[i].klen);
    herald_buf_putc(&b, ':');
    herald_buf_json_string(&b, w->strs.data + w->kvs[i].voff, w->kvs[i].vlen);
  }
  herald_buf_putc(&b, '}');
  free(w->metadata_json);
  w->metadata_json = b.data;
  w->nkvs = 0;
  return 0;
}

int herald_whctx_init(herald_whctx *w, herald_source *src, lua_State *L, int ctx_idx,
                      herald_whctx_handler handler, void *data) {
  w->src = src;
  w->handler = handler;
  w->data = data;
  int cfg = abs_index(L, ctx_idx);
  if (!lua_istable(L, cfg)) {
    herald_log(&src->log, HLOG_ERROR, "webhook: required (the endpoint to serve)");
    return HERALD_EINVAL;
  }
  const char *endpoint = herald_cfg_string(L, cfg, "endpoint", NULL);
  const char *method = herald_cfg_string(L, cfg, "method", NULL);
  const char *url = herald_cfg_string(L, cfg, "url", NULL);
  lua_getfield(L, cfg, "port");
  const char *port = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
  char portbuf[16] = "";
  if (port) snprintf(portbuf, sizeof portbuf, "%s", port);
  lua_pop(L, 1);

  if (!endpoint || !*endpoint) {
    herald_log(&src->log, HLOG_ERROR, "endpoint: required (the URL path to serve, e.g. /example)");
    return HERALD_EINVAL;
  }
  if (endpoint[0] != '/') {
    herald_log(&src->log, HLOG_ERROR, "endpoint: %s must start with '/'", endpoint);
    return HERALD_EINVAL;
  }
  if (!method || !*method) {
    herald_log(&src->log, HLOG_ERROR, "method: required (the HTTP method to accept, e.g. POST)");
    return HERALD_EINVAL;
  }
  for (const char *m = method; *m; m++) {
    if (*m >= 'a' && *m <= 'z') {
      herald_log(&src->log, HLOG_WARN,
                 "method: %s is matched exactly and HTTP methods are upper case; did you mean "
                 "an upper-case method?", method);
      break;
    }
  }
  char *end = NULL;
  long p = portbuf[0] ? strtol(portbuf, &end, 10) : -1;
  if (!portbuf[0] || *end || p < 1 || p > 65535) {
    herald_log(&src->log, HLOG_ERROR, "port: %s%s%s must be a number from 1 to 65535",
               portbuf[0] ? "\"" : "", portbuf[0] ? portbuf : "(missing)", portbuf[0] ? "\"" : "");
    return HERALD_EINVAL;
  }
  double maxp = herald_cfg_number(L, cfg, "maxPayloadSize", DEFAULT_MAX_PAYLOAD);
  if (maxp <= 0) maxp = DEFAULT_MAX_PAYLOAD;
  if (maxp > (double)(1ull << 40)) maxp = (double)(1ull << 40);

  w->endpoint = herald_xstrdup(endpoint);
  w->method = herald_xstrdup(method);
  w->url = url && *url ? herald_xstrdup(url) : NULL;
  w->port = (int)p;
  w->max_payload = (size_t)maxp;
  int err = 0;
  w->token = herald_secret_field(src->engine, &src->log, L, cfg, "authSecret", "authSecret", &err);
  if (err) {
    herald_whctx_release(w);
    return err;
  }
  if (w->token && !*w->token)
    herald_log(&src->log, HLOG_WARN,
               "authSecret is empty: requests need \"Authorization: Bearer \" only");
  return 0;
}

int herald_whctx_start(herald_whctx *w) {
  herald_source *src = w->src;
  herald_engine *eng = src->engine;
  int err = 0;
  w->srv = herald_engine_http_server(eng, w->port, &err);
  if (!w->srv) {
    herald_log(&src->log, HLOG_ERROR, "cannot listen on %s:%d: %s", eng->opts.listen_host,
               w->port, err < 0 && err > -4096 ? uv_strerror(err) : herald_strerror(err));
    return HERALD_EIO;
  }
  herald_http_route route = {
      .path = w->endpoint,
      .method = w->method,
      .max_body = w->max_payload,
      .bearer_token = w->token,
      .handler = on_request,
      .data = w,
  };
  if (herald_http_server_add_route(w->srv, &route) != 0) {
    herald_log(&src->log, HLOG_ERROR,
               "endpoint %s with method %s on port %d is already served by another event; "
               "give each event its own endpoint, method or port",
               w->endpoint, w->method, w->port);
    return HERALD_EINVAL;
  }
  herald_log(&src->log, HLOG_INFO, "listening for %s %s on port %d", w->method, w->endpoint,
             w->port);
  return 0;
}

/* The route stays on the shared server (the engine closes the servers after draining); from
 * now on it answers 503 + Retry-After so senders retry against the next instance. */
void herald_whctx_stop(herald_whctx *w, herald_whctx_stop_cb done) {
  w->stopped = 1;
  if (w->inflight == 0) {
    if (done) done(w);
  } else {
    w->stop_done = done;
  }
}

char *herald_whctx_hook_url(const herald_whctx *w) {
  if (!w->url) return NULL;
  size_t n = strlen(w->url);
  while (n && w->url[n - 1] == '/') n--;
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_append(&b, w->url, n);
  herald_buf_puts(&b, w->endpoint);
  return b.data;
}
