/*
 * source.c: what every event source shares: turning data into a published CloudEvent (with
 * Argo's EventSource metrics), secrets from the mounted-secrets directory, config readers,
 * and the registry lookups.
 *
 *   source plugin --herald_source_emit(json)--> CloudEvent --bus publish--> cb(status)
 *                                                   '-> events_sent_total / _failed_total
 */
#include "common.h"
#include "engine.h"
#include "lua_host.h"
#include "runtime.h"
#include "metrics.h"
#include "plugin.h"
#include "tap.h"

#include <lauxlib.h>
#include <lua.h>
#include <string.h>

herald_source *herald_source_new(herald_engine *eng, lua_State *L, const char *type,
                                 const char *es, const char *ev, int cfg_idx) {
  const herald_source_type *st = herald_source_type_find(type);
  if (!st) {
    herald_log(&eng->log, HLOG_ERROR, "%s/%s: unknown event source type %s", es, ev, type);
    return NULL;
  }
  herald_source *src = herald_xcalloc(1, sizeof *src);
  src->type = st;
  src->engine = eng;
  src->es_name = herald_xstrdup(es);
  src->event_name = herald_xstrdup(ev);
  src->log.name = herald_xasprintf("source:%s:%s/%s", type, es, ev);
  src->priv = st->priv_size ? herald_xcalloc(1, st->priv_size) : NULL;
  src->m_sent = herald_metric_get("argo_events_events_sent_total",
                                  "How many events have been sent successfully.", HERALD_COUNTER,
                                  "eventsource_name", es, "event_name", ev, NULL);
  src->m_sent_failed = herald_metric_get("argo_events_events_sent_failed_total",
                                         "How many events failed to send.", HERALD_COUNTER,
                                         "eventsource_name", es, "event_name", ev, NULL);
  src->m_processing_failed = herald_metric_get("argo_events_events_processing_failed_total",
                                               "How many events failed to process.", HERALD_COUNTER,
                                               "eventsource_name", es, "event_name", ev, NULL);
  src->m_duration = herald_metric_get("argo_events_event_processing_duration_milliseconds",
                                      "Summary of durations of event processing.", HERALD_SUMMARY,
                                      "eventsource_name", es, "event_name", ev, NULL);
  src->filter_ref = LUA_NOREF;
  if (st->init && st->init(src, L, cfg_idx) != 0) {
    herald_source_free(src);
    return NULL;
  }
  herald__engine_add_source(eng, src);
  return src;
}

int herald_source_set_filter(herald_source *src, lua_State *L, int fn_idx) {
  lua_pushvalue(L, fn_idx);
  src->filter_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  src->m_filtered = herald_metric_get("herald_events_source_filtered_total",
                                      "Events an EventSource filter.expression dropped.",
                                      HERALD_COUNTER, "eventsource_name", src->es_name,
                                      "event_name", src->event_name, NULL);
  return 0;
}

void herald_source_free(herald_source *src) {
  free(src->priv);
  free(src->es_name);
  free(src->event_name);
  free((char *)src->log.name);
  free(src);
}

typedef struct emit_ctx {
  herald_source *src;
  herald_bus_publish_cb cb;
  void *cbdata;
  uint64_t start_ns;
} emit_ctx;

static void emit_done(void *data, int status) {
  emit_ctx *c = data;
  herald_source *src = c->src;
  if (status == 0) {
    herald_metric_inc(src->m_sent);
  } else {
    herald_metric_inc(src->m_sent_failed);
    herald_metric_inc(src->m_processing_failed);
  }
  herald_metric_observe(src->m_duration, (double)(herald_mono_ns() - c->start_ns) / 1e6);
  herald_bus_publish_cb cb = c->cb;
  void *cbdata = c->cbdata;
  free(c);
  if (cb) cb(cbdata, status);
}

/* Completions of events the source filter dropped: reported on the next loop pass, never from
 * inside herald_source_emit (a function taking a callback does not call it before returning). */
typedef struct deferred {
  herald_bus_publish_cb cb;
  void *cbdata;
  struct deferred *next;
} deferred;

static uv_idle_t defer_idle;
static int defer_ready;
static deferred *defer_head, *defer_tail;

static void run_deferred(uv_idle_t *h) {
  deferred *d = defer_head;
  defer_head = defer_tail = NULL;
  uv_idle_stop(h);
  while (d) {
    deferred *next = d->next;
    if (d->cb) d->cb(d->cbdata, 0);
    free(d);
    d = next;
  }
}

static int defer_done(herald_engine *eng, herald_bus_publish_cb cb, void *cbdata) {
  deferred *d = malloc(sizeof *d);
  if (!d) return HERALD_ENOMEM;
  d->cb = cb;
  d->cbdata = cbdata;
  d->next = NULL;
  if (!defer_ready) {
    uv_idle_init(eng->loop, &defer_idle);
    uv_unref((uv_handle_t *)&defer_idle);
    defer_ready = 1;
  }
  if (defer_tail) defer_tail->next = d;
  else defer_head = d;
  defer_tail = d;
  uv_idle_start(&defer_idle, run_deferred);
  return 0;
}

void herald__source_defer_close(void) {
  if (defer_ready) {
    run_deferred(&defer_idle);
    uv_close((uv_handle_t *)&defer_idle, NULL);
    defer_ready = 0;
  }
}

/* Runs the EventSource filter on the data; returns 1 to publish, 0 to drop. */
static int source_filter_passes(herald_source *src, const char *json, size_t len) {
  lua_State *L = src->engine->L;
  /* stack: -> fn json -> ok [err] */
  lua_rawgeti(L, LUA_REGISTRYINDEX, src->filter_ref);
  lua_pushlstring(L, json, len);
  if (herald_lua_pcall(L, 1, 2, &src->log, "filter.expression") != 0) return 0;
  int pass = lua_toboolean(L, -2);
  if (!pass && lua_isstring(L, -1))
    herald_log_limited(&src->log, HLOG_WARN, "filter.expression failed: %s", lua_tostring(L, -1));
  lua_pop(L, 2);
  return pass;
}

/* `herald tap`: an event as it leaves its source (data up to 64 KiB inline). */
static void tap_event(herald_source *src, const herald_event *ev, const char *json, size_t len) {
  herald_buf f = HERALD_BUF_INIT;
  herald_buf_puts(&f, "\"eventSourceName\":");
  herald_buf_json_string(&f, src->es_name, strlen(src->es_name));
  herald_buf_puts(&f, ",\"eventName\":");
  herald_buf_json_string(&f, src->event_name, strlen(src->event_name));
  herald_buf_puts(&f, ",\"type\":");
  herald_buf_json_string(&f, src->type->name, strlen(src->type->name));
  herald_buf_puts(&f, ",\"eventID\":");
  herald_buf_json_string(&f, ev->id, strlen(ev->id));
  if (len <= 65536) {
    herald_buf_puts(&f, ",\"data\":");
    herald_buf_append(&f, json, len);
  } else {
    herald_buf_printf(&f, ",\"dataBytes\":%zu", len);
  }
  herald_tap_record(src->engine, "event", src->es_name, NULL, NULL, ev->id, herald_buf_cstr(&f));
  herald_buf_free(&f);
}

int herald_source_emit(herald_source *src, const char *json, size_t len, herald_bus_publish_cb cb,
                       void *cbdata) {
  return herald_source_emit_id(src, NULL, json, len, cb, cbdata);
}

int herald_source_emit_id(herald_source *src, const char *id, const char *json, size_t len,
                          herald_bus_publish_cb cb, void *cbdata) {
  if (src->filter_ref != LUA_NOREF && !source_filter_passes(src, json, len)) {
    herald_metric_inc(src->m_filtered);
    return defer_done(src->engine, cb, cbdata);
  }
  emit_ctx *c = malloc(sizeof *c);
  if (!c) return HERALD_ENOMEM;
  herald_event *ev = herald_event_new_full(id, NULL, src->es_name, src->event_name,
                                         src->type->event_type, "application/json", json, len);
  if (!ev) {
    free(c);
    return HERALD_ENOMEM;
  }
  c->src = src;
  c->cb = cb;
  c->cbdata = cbdata;
  c->start_ns = ev->received_mono_ns;
  int r = herald_bus_publish(src->engine->bus, ev, emit_done, c);
  if (r == 0 && herald_tap_on(src->engine) && herald_tap_wants(src->engine, ev->id, 1))
    tap_event(src, ev, json, len);
  herald_event_unref(ev); /* the bus holds its own reference */
  if (r < 0) {
    free(c);
    herald_metric_inc(src->m_sent_failed);
    herald_metric_inc(src->m_processing_failed);
    herald_log_limited(&src->log, HLOG_WARN, "event not published: %s", herald_strerror(r));
  }
  return r;
}

char *herald_secret_field(herald_engine *eng, const herald_logger *lg, lua_State *L, int idx,
                          const char *field, const char *what, int *err) {
  *err = 0;
  lua_getfield(L, idx, field);
  char *v = NULL;
  if (lua_istable(L, -1)) {
    int sel = lua_gettop(L);
    const char *name = herald_cfg_string(L, sel, "name", NULL);
    const char *key = herald_cfg_string(L, sel, "key", NULL);
    if (!name || !key) {
      *err = HERALD_EINVAL;
      herald_log(lg, HLOG_ERROR, "%s: expected a secret key selector {name: <secret>, key: <key>}",
                 what);
    } else if (!(v = herald_secret_read(eng, name, key, err))) {
      /* the file, and how to fix it: the reader sees one path, the spec another */
      herald_log(lg, HLOG_ERROR,
                 "%s: cannot read secret %s/%s: %s (file %s/%s/%s; create it or fix %s, the "
                 "secrets directory is set with --secrets-dir)",
                 what, name, key, herald_strerror(*err), eng->opts.secrets_dir, name, key, what);
    }
  } else if (!lua_isnil(L, -1)) {
    *err = HERALD_EINVAL;
    herald_log(lg, HLOG_ERROR, "%s: expected a secret key selector {name: <secret>, key: <key>}",
               what);
  }
  lua_pop(L, 1);
  return v;
}

char *herald_secret_path(herald_engine *eng, const char *name, const char *key, int *err) {
  if (!name || !key || !*name || !*key || strchr(name, '/') || strchr(key, '/') ||
      strcmp(name, "..") == 0 || strcmp(key, "..") == 0) {
    *err = HERALD_EINVAL;
    return NULL;
  }
  return herald_xasprintf("%s/%s/%s", eng->opts.secrets_dir, name, key);
}

char *herald_secret_read(herald_engine *eng, const char *name, const char *key, int *err) {
  char *path = herald_secret_path(eng, name, key, err);
  if (!path) return NULL;
  size_t len = 0;
  char *v = herald_read_file(path, &len, err);
  free(path);
  if (v && len > 0 && v[len - 1] == '\n') v[--len] = '\0';
  if (v && len > 0 && v[len - 1] == '\r') v[--len] = '\0';
  return v;
}

const herald_source_type *herald_source_type_find(const char *name) {
  for (const herald_source_type *const *t = herald_source_types; *t; t++)
    if (strcmp((*t)->name, name) == 0) return *t;
  return NULL;
}

const herald_trigger_type *herald_trigger_type_find(const char *name) {
  for (const herald_trigger_type *const *t = herald_trigger_types; *t; t++)
    if (strcmp((*t)->name, name) == 0) return *t;
  return NULL;
}

const char *herald_cfg_string(lua_State *L, int idx, const char *field, const char *dflt) {
  lua_getfield(L, idx, field);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : dflt;
  lua_pop(L, 1); /* the string stays alive: it is still referenced by the config table */
  return s;
}

double herald_cfg_number(lua_State *L, int idx, const char *field, double dflt) {
  lua_getfield(L, idx, field);
  double v = dflt;
  if (lua_type(L, -1) == LUA_TNUMBER) v = lua_tonumber(L, -1);
  else if (lua_type(L, -1) == LUA_TSTRING && lua_isnumber(L, -1)) v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

int herald_cfg_bool(lua_State *L, int idx, const char *field, int dflt) {
  lua_getfield(L, idx, field);
  int v = lua_type(L, -1) == LUA_TBOOLEAN ? lua_toboolean(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}
