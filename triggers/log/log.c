/*
 * triggers/log: writes one JSON line per firing on stdout, carrying every event of the firing
 * (Argo's log trigger, made for debugging sensors):
 *
 *   {"ts":"...","level":"info","logger":"sensor:s/trigger:t","msg":"triggered",
 *    "sensorName":"s","triggerName":"t","events":{"<dependency>":{<CloudEvent JSON>}}}
 *
 * Lines go to one process-wide stdout buffer flushed once per loop iteration, just before the
 * loop blocks (uv_prepare), so a burst of firings costs one write() and no line waits for the
 * next wake-up. `intervalSeconds` throttles: at most one line per interval,
 * the firings in between are counted and reported on the next line ("skipped").
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"

#include <lauxlib.h>
#include <string.h>
#include <unistd.h>

typedef struct log_trigger {
  double interval_s;
  uint64_t last_ns;
  uint64_t skipped;
} log_trigger;

static herald_buf out = HERALD_BUF_INIT;
static uv_prepare_t flusher;
static int flusher_refs;

static void flush_out(void) {
  size_t off = 0;
  while (off < out.len) {
    ssize_t w = write(STDOUT_FILENO, out.data + off, out.len - off);
    if (w <= 0) break; /* stdout gone: drop rather than spin */
    off += (size_t)w;
  }
  herald_buf_reset(&out);
}

static void on_prepare(uv_prepare_t *h) {
  if (out.len) flush_out();
}

static int log_init(herald_trigger *t, lua_State *L, int idx) {
  log_trigger *lt = t->priv;
  lt->interval_s = herald_cfg_number(L, idx, "intervalSeconds", 0);
  if (flusher_refs++ == 0) {
    uv_prepare_init(t->engine->loop, &flusher);
    uv_prepare_start(&flusher, on_prepare);
    uv_unref((uv_handle_t *)&flusher);
  }
  return 0;
}

static void put_field(herald_buf *b, lua_State *L, int idx, const char *k, int first) {
  lua_getfield(L, idx, k);
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  if (!first) herald_buf_putc(b, ',');
  herald_buf_putc(b, '"');
  herald_buf_puts(b, k);
  herald_buf_puts(b, "\":");
  herald_buf_json_string(b, s ? s : "", s ? n : 0);
  lua_pop(L, 1);
}

/* Appends the CloudEvent JSON of the event table at idx. stack: unchanged */
static void put_event(herald_buf *b, lua_State *L, int idx) {
  herald_buf_putc(b, '{');
  lua_getfield(L, idx, "context");
  int ctx = lua_gettop(L);
  if (lua_istable(L, ctx)) {
    put_field(b, L, ctx, "specversion", 1);
    put_field(b, L, ctx, "id", 0);
    put_field(b, L, ctx, "source", 0);
    put_field(b, L, ctx, "subject", 0);
    put_field(b, L, ctx, "type", 0);
    put_field(b, L, ctx, "time", 0);
    put_field(b, L, ctx, "datacontenttype", 0);
    herald_buf_putc(b, ',');
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "raw");
  size_t n;
  const char *raw = lua_tolstring(L, -1, &n);
  herald_buf_puts(b, "\"data\":");
  if (raw) herald_buf_append(b, raw, n);
  else herald_buf_puts(b, "null");
  lua_pop(L, 1);
  herald_buf_putc(b, '}');
}

static int log_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  log_trigger *lt = t->priv;
  if (lt->interval_s > 0) {
    uint64_t now = herald_mono_ns();
    if (lt->last_ns && (double)(now - lt->last_ns) < lt->interval_s * 1e9) {
      lt->skipped++;
      return 1;
    }
    lt->last_ns = now;
  }
  char ts[40];
  size_t tslen = herald_format_rfc3339(herald_now_ns(), ts, sizeof ts);
  herald_buf_puts(&out, "{\"ts\":\"");
  herald_buf_append(&out, ts, tslen);
  herald_buf_puts(&out, "\",\"level\":\"info\",\"logger\":");
  herald_buf_json_string(&out, t->log.name, strlen(t->log.name));
  herald_buf_puts(&out, ",\"msg\":\"triggered\",\"sensorName\":");
  herald_buf_json_string(&out, t->sensor_name, strlen(t->sensor_name));
  herald_buf_puts(&out, ",\"triggerName\":");
  herald_buf_json_string(&out, t->name, strlen(t->name));
  lua_getfield(L, idx, "message"); /* a Lua trigger's own message */
  if (lua_type(L, -1) == LUA_TSTRING) {
    size_t mn;
    const char *m = lua_tolstring(L, -1, &mn);
    herald_buf_puts(&out, ",\"message\":");
    herald_buf_json_string(&out, m, mn);
  }
  lua_pop(L, 1);
  if (lt->skipped) {
    herald_buf_printf(&out, ",\"skipped\":%llu", (unsigned long long)lt->skipped);
    lt->skipped = 0;
  }
  herald_buf_puts(&out, ",\"events\":{");
  lua_getfield(L, idx, "events");
  int evs = lua_gettop(L);
  int first = 1;
  if (lua_istable(L, evs)) {
    /* stack: events -> events key value */
    lua_pushnil(L);
    while (lua_next(L, evs)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1)) {
        size_t kn;
        const char *k = lua_tolstring(L, -2, &kn);
        if (!first) herald_buf_putc(&out, ',');
        first = 0;
        herald_buf_json_string(&out, k, kn);
        herald_buf_putc(&out, ':');
        put_event(&out, L, lua_gettop(L));
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  herald_buf_puts(&out, "}}\n");
  if (out.len > 1 << 20) flush_out(); /* bound the buffer within one loop iteration */
  return 1;
}

static void log_close(herald_trigger *t, herald_trigger_close_cb done) {
  if (--flusher_refs == 0) {
    flush_out();
    herald_buf_free(&out);
    uv_close((uv_handle_t *)&flusher, NULL);
  }
  done(t);
}

const herald_trigger_type herald_trigger_log = {
    .name = "log",
    .priv_size = sizeof(log_trigger),
    .init = log_init,
    .execute = log_execute,
    .close = log_close,
};
