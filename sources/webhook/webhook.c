/*
 * webhook.c: the `webhook` event source (Argo's WebhookContext, argo-events.md sections 2.2
 * and 2.4).
 *
 *   HTTP server (shared per port) --route: endpoint + method, bearer, maxPayloadSize-->
 *   on_request: data = {"header":{Canonical-Key:[v...]},"body":<body>,"metadata":{...}}
 *     --herald_source_emit--> bus --on_published--> 200 "success" | 503 (bus unreachable,
 *     PubAck timeout) | 500
 *     (bus full at emit time --> 503 + Retry-After: 1)
 *
 * The server checks path, method, auth and sizes before a request reaches us, so the handler
 * only shapes the data. The response waits for the bus: a 200 means the event is on it.
 * Several events (even of different EventSources) share one server when they share a port.
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "event.h"
#include "http_server.h"
#include "plugin.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_MAX_PAYLOAD 1048576
#define JSON_MAX_DEPTH 64

/* One key/value of a multimap (headers, query, form), as offsets into a scratch buffer. */
typedef struct kv {
  uint32_t koff, klen, voff, vlen;
  uint32_t order; /* arrival order: values of a key keep it (Go appends) */
} kv;

typedef struct webhook {
  herald_source *src;
  char *endpoint;
  char *method;
  int port;
  size_t max_payload;
  char *token;         /* authSecret, or NULL */
  char *metadata_json; /* ,"metadata":{...} or NULL */
  herald_http_server *srv;
  int stopped;
  uint32_t inflight; /* requests waiting for the bus */
  herald_source_stop_cb stop_done;
  /* scratch reused by every request (the loop is single-threaded) */
  herald_buf data;
  herald_buf strs;
  kv *kvs;
  size_t nkvs, kvs_cap;
} webhook;

/* ---- multimaps rendered as Go's json.Marshal renders map[string][]string ---- */

static int kv_push(webhook *w, uint32_t koff, uint32_t klen, uint32_t voff, uint32_t vlen) {
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
static void kv_render(webhook *w, herald_buf *out) {
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

/* Go's url.QueryUnescape into w->strs: '+' is a space, a bad %-escape fails (-1). */
static int unescape(webhook *w, const char *s, size_t n, uint32_t *off, uint32_t *len) {
  size_t start = w->strs.len;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%') {
      int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
      int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        w->strs.len = start;
        return -1;
      }
      herald_buf_putc(&w->strs, (char)(hi * 16 + lo));
      i += 2;
    } else {
      herald_buf_putc(&w->strs, c == '+' ? ' ' : c);
    }
  }
  *off = (uint32_t)start;
  *len = (uint32_t)(w->strs.len - start);
  herald_buf_putc(&w->strs, '\0');
  return 0;
}

/* Go's url.ParseQuery: pairs split on '&'; a pair with ';' or a bad escape is skipped. */
static void parse_query(webhook *w, const char *s, size_t n) {
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

static int is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
  return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Go's textproto.CanonicalMIMEHeaderKey into w->strs ("content-type" -> "Content-Type"); a
 * name with a byte outside the token set is kept as it is. */
static void canonical_key(webhook *w, const char *s, size_t n, uint32_t *off) {
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

/* The media type of Content-Type is application/x-www-form-urlencoded (parameters ignored). */
static int is_form(const herald_http_header *ct) {
  static const char form[] = "application/x-www-form-urlencoded";
  size_t n = sizeof form - 1;
  if (!ct || ct->value_len < n || strncasecmp(ct->value, form, n) != 0) return 0;
  const char *rest = ct->value + n;
  size_t rl = ct->value_len - n;
  while (rl && (*rest == ' ' || *rest == '\t')) rest++, rl--;
  return rl == 0 || *rest == ';';
}

/* Builds the event data for req into w->data. */
static void build_data(webhook *w, const herald_http_req *req) {
  herald_buf *d = &w->data;
  herald_buf_reset(d);
  herald_buf_reset(&w->strs);
  w->nkvs = 0;

  /* Go's server moves Host to r.Host and drops Transfer-Encoding from r.Header; the bearer
   * token is the secret, so it stays out of the event. */
  const herald_http_header *ctype = NULL;
  for (size_t i = 0; i < req->nheaders; i++) {
    const herald_http_header *h = &req->headers[i];
    if (name_is(h, "host") || name_is(h, "transfer-encoding")) continue;
    if (w->token && name_is(h, "authorization")) continue;
    if (!ctype && name_is(h, "content-type")) ctype = h;
    uint32_t ko, vo = 0;
    canonical_key(w, h->name, h->name_len, &ko);
    vo = (uint32_t)w->strs.len;
    herald_buf_append(&w->strs, h->value, h->value_len);
    herald_buf_putc(&w->strs, '\0');
    if (kv_push(w, ko, (uint32_t)h->name_len, vo, (uint32_t)h->value_len) != 0) break;
  }
  herald_buf_append(d, "{\"header\":", 10);
  kv_render(w, d);
  herald_buf_append(d, ",\"body\":", 8);

  if (strcmp(req->method, "GET") == 0) {
    herald_buf_reset(&w->strs);
    w->nkvs = 0;
    parse_query(w, req->query, strlen(req->query));
    kv_render(w, d);
  } else if (is_form(ctype)) {
    herald_buf_reset(&w->strs);
    w->nkvs = 0;
    parse_query(w, req->body, req->body_len);
    kv_render(w, d);
  } else if (req->body_len == 0) {
    herald_buf_append(d, "null", 4);
  } else if (herald_json_valid(req->body, req->body_len, JSON_MAX_DEPTH)) {
    herald_buf_append(d, req->body, req->body_len);
  } else {
    herald_buf_json_string(d, req->body, req->body_len);
  }
  if (w->metadata_json) herald_buf_puts(d, w->metadata_json);
  herald_buf_putc(d, '}');
}

/* ---- request handling ---- */

/* Frees what init allocated once the source is stopped and idle (priv itself is the
 * engine's). */
static void webhook_release(webhook *w) {
  herald_buf_free(&w->data);
  herald_buf_free(&w->strs);
  free(w->kvs);
  w->kvs = NULL;
  w->kvs_cap = w->nkvs = 0;
  free(w->endpoint);
  free(w->method);
  free(w->metadata_json);
  w->endpoint = w->method = w->metadata_json = NULL;
  if (w->token) {
    memset(w->token, 0, strlen(w->token));
    free(w->token);
    w->token = NULL;
  }
}

static void request_done(webhook *w) {
  w->inflight--;
  if (w->stopped && w->inflight == 0 && w->stop_done) {
    herald_source_stop_cb done = w->stop_done;
    w->stop_done = NULL;
    webhook_release(w);
    done(w->src);
  }
}

static void on_published(void *data, int status) {
  herald_http_req *req = data;
  webhook *w = req->route_data;
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

static void on_request(herald_http_req *req) {
  webhook *w = req->route_data;
  if (w->stopped) {
    static const char msg[] = "event source is stopping, retry later";
    herald_http_respond(req, 503, "text/plain; charset=utf-8", "Retry-After: 1\r\n", msg,
                        sizeof msg - 1);
    return;
  }
  build_data(w, req);
  w->inflight++;
  int r = herald_source_emit(w->src, w->data.data, w->data.len, on_published, req);
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

/* ---- lifecycle ---- */

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

/* stack: unchanged */
static int read_metadata(webhook *w, lua_State *L, int cfg) {
  lua_getfield(L, cfg, "metadata");
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
  w->metadata_json = b.data;
  w->nkvs = 0;
  return 0;
}

/* stack: unchanged */
static int read_auth(webhook *w, lua_State *L, int cfg) {
  int err = 0;
  w->token = herald_secret_field(w->src->engine, &w->src->log, L, cfg, "authSecret",
                                 "authSecret", &err);
  if (err) return err;
  if (w->token && !*w->token)
    herald_log(&w->src->log, HLOG_WARN,
               "authSecret is empty: requests need \"Authorization: Bearer \" only");
  return 0;
}

static int webhook_init(herald_source *src, lua_State *L, int cfg_idx) {
  webhook *w = src->priv;
  w->src = src;
  int cfg = abs_index(L, cfg_idx);

  const char *endpoint = herald_cfg_string(L, cfg, "endpoint", NULL);
  const char *method = herald_cfg_string(L, cfg, "method", NULL);
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
  w->port = (int)p;
  w->max_payload = (size_t)maxp;
  int r = read_auth(w, L, cfg);
  if (r == 0) r = read_metadata(w, L, cfg);
  if (r < 0) webhook_release(w); /* stop is not called for a source that failed init */
  return r;
}

static int webhook_start(herald_source *src) {
  webhook *w = src->priv;
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
static void webhook_stop(herald_source *src, herald_source_stop_cb done) {
  webhook *w = src->priv;
  w->stopped = 1;
  if (w->inflight == 0) {
    webhook_release(w);
    if (done) done(src);
  } else {
    w->stop_done = done;
  }
}

const herald_source_type herald_source_webhook = {
    .name = "webhook",
    .event_type = "webhook",
    .priv_size = sizeof(webhook),
    .init = webhook_init,
    .start = webhook_start,
    .stop = webhook_stop,
};
