/*
 * source_kit.c: what every event source that talks to a server needs, written once.
 *
 * The message-system and cloud sources (nats, kafka, redis, mqtt, amqp, sqs, pubSub ...) all
 * reconnect for ever with Argo's connectionBackoff, report their connection state the same way
 * (one log line per change, /metrics gauge), stop reading while the bus is full and resume by
 * themselves, bound message sizes, and encode the body as Argo does (raw JSON with jsonBody,
 * else Go's []byte: a base64 string). Declared in plugin.h ("helpers for sources").
 */
#include "common.h"
#include "cron.h"
#include "engine.h"
#include "buf.h"
#include "metrics.h"
#include "plugin.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- connectionBackoff ---- */

void herald_backoff_init(herald_backoff *b, lua_State *L, int cfg_idx, const char *field) {
  /* Argo's default for a source's connection: 1 s, then doubling up to a cap, jitter 0.1 */
  b->first_ms = 1000;
  b->factor = 2;
  b->jitter = 0.1;
  b->cap_ms = 60000;
  b->attempt = 0;
  b->delay_ms = 0;
  if (!L || !field) return;
  lua_getfield(L, cfg_idx, field);
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    lua_getfield(L, t, "duration");
    if (lua_type(L, -1) == LUA_TNUMBER) {
      double ns = lua_tonumber(L, -1);
      if (ns > 0) b->first_ms = (uint64_t)(ns / 1e6) ? (uint64_t)(ns / 1e6) : 1;
    } else if (lua_type(L, -1) == LUA_TSTRING) {
      int64_t ns;
      if (herald_parse_duration(lua_tostring(L, -1), &ns) == 0 && ns > 0)
        b->first_ms = (uint64_t)(ns / 1000000) ? (uint64_t)(ns / 1000000) : 1;
    }
    lua_pop(L, 1);
    double f = herald_cfg_number(L, t, "factor", 0);
    if (f >= 1) b->factor = f;
    else if (f > 0) b->factor = 1;
    double j = herald_cfg_number(L, t, "jitter", -1);
    if (j >= 0) b->jitter = j;
  }
  lua_pop(L, 1);
  if (b->cap_ms < b->first_ms) b->cap_ms = b->first_ms;
}

uint64_t herald_backoff_next(herald_backoff *b) {
  double d;
  if (b->attempt == 0) d = (double)b->first_ms;
  else d = (double)b->delay_ms * b->factor;
  if (d > (double)b->cap_ms) d = (double)b->cap_ms;
  b->delay_ms = (uint64_t)d;
  b->attempt++;
  double jit = b->jitter > 0 ? d * b->jitter * ((double)rand() / RAND_MAX) : 0;
  return (uint64_t)(d + jit);
}

void herald_backoff_reset(herald_backoff *b) {
  b->attempt = 0;
  b->delay_ms = 0;
}

/* ---- connection state ---- */

void herald_source_set_connected(herald_source *src, int up, const char *reason) {
  if (!src->m_connected)
    src->m_connected = herald_metric_get("herald_eventsource_connected",
                                         "1 while the source is connected to its server.",
                                         HERALD_GAUGE, "eventsource_name", src->es_name,
                                         "event_name", src->event_name, NULL);
  int was = src->conn_state;
  herald_metric_set(src->m_connected, up ? 1 : 0);
  if (up) {
    if (was != 1) herald_log(&src->log, HLOG_INFO, "connected%s%s", reason ? ": " : "",
                             reason ? reason : "");
    src->conn_state = 1;
    return;
  }
  /* the first failure says why at warn; repeats of the same state are rate-limited */
  if (was != -1) herald_log(&src->log, HLOG_WARN, "not connected: %s", reason ? reason : "?");
  else herald_log_limited(&src->log, HLOG_DEBUG, "still not connected: %s", reason ? reason : "?");
  src->conn_state = -1;
}

/* ---- waiting for room on the bus ---- */

typedef struct room_wait {
  uv_timer_t timer;
  herald_source *src;
  void (*cb)(herald_source *src, void *data);
  void *data;
} room_wait;

static void room_closed(uv_handle_t *h) { free(h->data); }

static void room_tick(uv_timer_t *t) {
  room_wait *w = t->data;
  herald_bus *bus = w->src->engine->bus;
  herald_bus_stats st;
  memset(&st, 0, sizeof st);
  bus->ops->stats(bus, &st);
  if (!st.connected || (st.capacity && st.in_bus >= st.capacity)) return; /* keep waiting */
  uv_timer_stop(t);
  herald_source *src = w->src;
  void (*cb)(herald_source *, void *) = w->cb;
  void *data = w->data;
  src->room_wait = NULL;
  uv_close((uv_handle_t *)t, room_closed);
  cb(src, data);
}

int herald_source_when_room(herald_source *src, void (*cb)(herald_source *src, void *data),
                            void *data) {
  if (src->room_wait) return HERALD_EINVAL;
  room_wait *w = herald_xcalloc(1, sizeof *w);
  w->src = src;
  w->cb = cb;
  w->data = data;
  uv_timer_init(src->engine->loop, &w->timer);
  w->timer.data = w;
  src->room_wait = w;
  /* 5 ms: a full bus drains at tens of thousands of events a second, so a short poll resumes
   * promptly without a hook in every bus's ack path */
  uv_timer_start(&w->timer, room_tick, 5, 5);
  return 0;
}

void herald_source_cancel_room(herald_source *src) {
  room_wait *w = src->room_wait;
  if (!w) return;
  src->room_wait = NULL;
  uv_timer_stop(&w->timer);
  uv_close((uv_handle_t *)&w->timer, room_closed);
}

/* ---- bodies and metadata ---- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void herald_buf_base64(herald_buf *b, const void *data, size_t n) {
  const unsigned char *p = data;
  char q[4];
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    q[0] = B64[v >> 18], q[1] = B64[(v >> 12) & 63], q[2] = B64[(v >> 6) & 63], q[3] = B64[v & 63];
    herald_buf_append(b, q, 4);
  }
  if (i < n) {
    uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
    q[0] = B64[v >> 18], q[1] = B64[(v >> 12) & 63];
    q[2] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
    q[3] = '=';
    herald_buf_append(b, q, 4);
  }
}

int herald_source_put_body(herald_source *src, herald_buf *b, const void *body, size_t len,
                           int json_body) {
  if (json_body) {
    /* herald_json_valid says 1 for valid; 256 levels as the CloudEvent decoder allows */
    if (len == 0 || !herald_json_valid(body, len, 256)) {
      if (!src->m_bad_body)
        src->m_bad_body = herald_metric_get("herald_eventsource_bad_body_total",
                                            "Messages dropped because jsonBody is set and the body is not JSON.",
                                            HERALD_COUNTER, "eventsource_name", src->es_name,
                                            "event_name", src->event_name, NULL);
      herald_metric_inc(src->m_bad_body);
      herald_log_limited(&src->log, HLOG_WARN,
                         "message dropped: jsonBody is set and its body (%zu bytes) is not JSON",
                         len);
      return HERALD_EINVAL;
    }
    /* compacted, as Go's json.Marshal writes a json.RawMessage: a trailing newline (amqp-publish
     * -l, echo) or pretty-printing would otherwise reach one-line consumers such as the log
     * trigger */
    const char *p = body;
    size_t i = 0, from = 0;
    int in_str = 0;
    for (; i < len; i++) {
      char c = p[i];
      if (in_str) {
        if (c == '\\') i++;
        else if (c == '"') in_str = 0;
      } else if (c == '"') {
        in_str = 1;
      } else if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
        if (i > from) herald_buf_append(b, p + from, i - from);
        from = i + 1;
      }
    }
    if (len > from) herald_buf_append(b, p + from, len - from);
    return 0;
  }
  herald_buf_putc(b, '"');
  herald_buf_base64(b, body, len);
  herald_buf_putc(b, '"');
  return 0;
}

int herald_source_too_big(herald_source *src, size_t len) {
  size_t max = src->engine->opts.max_message ? src->engine->opts.max_message : HERALD_DEFAULT_MAX_MESSAGE;
  if (len <= max) return 0;
  if (!src->m_too_big)
    src->m_too_big = herald_metric_get("herald_eventsource_oversize_total",
                                       "Messages dropped for being larger than the engine's message size limit.",
                                       HERALD_COUNTER, "eventsource_name", src->es_name,
                                       "event_name", src->event_name, NULL);
  herald_metric_inc(src->m_too_big);
  herald_log_limited(&src->log, HLOG_WARN,
                     "message dropped: %zu bytes is over the limit of %zu (herald run --max-message-bytes)",
                     len, max);
  return 1;
}

char *herald_cfg_metadata_json(lua_State *L, int cfg_idx) {
  lua_getfield(L, cfg_idx, "metadata");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  int t = lua_gettop(L);
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_putc(&b, '{');
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t kl, vl;
      const char *k = lua_tolstring(L, -2, &kl);
      const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vl) : NULL;
      if (v) {
        if (n++) herald_buf_putc(&b, ',');
        herald_buf_json_string(&b, k, kl);
        herald_buf_putc(&b, ':');
        herald_buf_json_string(&b, v, vl);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  herald_buf_putc(&b, '}');
  char *s = herald_xstrdup(herald_buf_cstr(&b));
  herald_buf_free(&b);
  return s;
}
