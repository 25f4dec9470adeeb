/*
 * runtime.c: sensor subscriptions, event hand-off to Lua, trigger firing and acks.
 * See runtime.h for the flow.
 */
#include "runtime.h"
#include "common.h"
#include "lua_host.h"
#include "metrics.h"

#include <lauxlib.h>
#include <string.h>

typedef struct herald_delivery_ctx {
  herald_bus *bus;
  herald_bus_delivery *d;
  uint32_t holds; /* the handler itself + each firing not yet finished */
} delivery_ctx;

typedef struct sensor_sub {
  herald_bus_sub sub;
  herald_engine *eng;
  int handler_ref;
  char *durable, *source, *subject;
  herald_logger log;
  struct sensor_sub *next;
} sensor_sub;

static sensor_sub *subs;
static uint32_t total_inflight;
static int cjson_decode_ref = LUA_NOREF;
static lua_State *event_L; /* the state holding cached decoded events */

static void release(delivery_ctx *c) {
  if (--c->holds) return;
  herald_bus_ack(c->bus, c->d);
  free(c);
}

static void event_release_hook(herald_event *ev) {
  if (ev->lua_ref != LUA_NOREF && event_L) luaL_unref(event_L, LUA_REGISTRYINDEX, ev->lua_ref);
}

static void push_str(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

void herald_runtime_push_event(lua_State *L, herald_event *ev) {
  if (ev->lua_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ev->lua_ref);
    return;
  }
  lua_createtable(L, 0, 3);
  lua_createtable(L, 0, 7);
  push_str(L, "id", ev->id);
  push_str(L, "source", ev->source);
  push_str(L, "subject", ev->subject);
  push_str(L, "type", ev->type);
  push_str(L, "time", ev->time);
  push_str(L, "datacontenttype", ev->datacontenttype);
  push_str(L, "specversion", ev->specversion);
  lua_setfield(L, -2, "context");
  lua_pushlstring(L, ev->data, ev->data_len);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "raw");
  /* stack: event raw -> event data */
  if (cjson_decode_ref == LUA_NOREF) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    cjson_decode_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, cjson_decode_ref);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != 0) { /* sources only publish valid JSON; keep the text if not */
    lua_pop(L, 1);
    lua_pushlstring(L, ev->data, ev->data_len);
  }
  lua_setfield(L, -2, "data");
  lua_pushvalue(L, -1);
  ev->lua_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  event_L = L;
}

static void on_deliver(herald_bus_sub *bsub, herald_bus_delivery *d, herald_event *ev) {
  sensor_sub *s = bsub->data;
  herald_engine *eng = s->eng;
  lua_State *L = eng->L;
  delivery_ctx *c = malloc(sizeof *c);
  if (HERALD_FAILS(c != NULL)) {
    herald_bus_nak(eng->bus, d, 100); /* try again shortly rather than lose it */
    return;
  }
  c->bus = eng->bus;
  c->d = d;
  c->holds = 1;
  delivery_ctx *prev = eng->current;
  eng->current = c;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->handler_ref);
  herald_runtime_push_event(L, ev);
  herald_lua_pcall(L, 1, 0, &s->log, "sensor handler");
  eng->current = prev;
  release(c);
}

int herald_runtime_subscribe(herald_engine *eng, lua_State *L, const char *sensor,
                             const char *dependency, const char *es_name, const char *event_name,
                             int handler_idx) {
  herald_event_set_release_hook(event_release_hook);
  sensor_sub *s = herald_xcalloc(1, sizeof *s);
  s->durable = herald_xasprintf("%s/%s", sensor, dependency);
  s->source = herald_xstrdup(es_name);
  s->subject = herald_xstrdup(event_name);
  s->eng = eng;
  s->log.name = s->durable;
  lua_pushvalue(L, handler_idx);
  s->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  s->sub.data = s;
  s->sub.durable = s->durable;
  s->sub.source = s->source;
  s->sub.subject = s->subject;
  s->sub.deliver = on_deliver;
  int r = herald_bus_subscribe(herald__engine_bus(eng), &s->sub);
  if (r < 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, s->handler_ref);
    free(s->durable), free(s->source), free(s->subject), free(s);
    return r;
  }
  s->next = subs;
  subs = s;
  return 0;
}

void herald_runtime_unsubscribe_all(herald_engine *eng) {
  while (subs) {
    sensor_sub *s = subs;
    subs = s->next;
    herald_bus_unsubscribe(eng->bus, &s->sub);
    luaL_unref(eng->L, LUA_REGISTRYINDEX, s->handler_ref);
    free(s->durable), free(s->source), free(s->subject), free(s);
  }
}

uint32_t herald_runtime_inflight(herald_engine *eng) {
  return total_inflight;
}

/* ---- triggers ---- */

herald_trigger *herald_trigger_new(herald_engine *eng, lua_State *L, const char *type,
                                   const char *sensor, const char *name, int tmpl_idx) {
  const herald_trigger_type *tt = herald_trigger_type_find(type);
  if (!tt) {
    herald_log(&eng->log, HLOG_ERROR, "sensor %s: trigger %s: unknown trigger type %s", sensor,
               name, type);
    return NULL;
  }
  herald_trigger *t = herald_xcalloc(1, sizeof *t);
  t->type = tt;
  t->engine = eng;
  t->sensor_name = herald_xstrdup(sensor);
  t->name = herald_xstrdup(name);
  char *logname = herald_xasprintf("sensor:%s/trigger:%s", sensor, name);
  t->log.name = logname;
  t->priv = tt->priv_size ? herald_xcalloc(1, tt->priv_size) : NULL;
  t->m_triggered = herald_metric_get("argo_events_action_triggered_total",
                                     "How many actions have been triggered successfully.",
                                     HERALD_COUNTER, "sensor_name", sensor, "trigger_name", name, NULL);
  t->m_failed = herald_metric_get("argo_events_action_failed_total",
                                  "How many actions failed.", HERALD_COUNTER, "sensor_name", sensor,
                                  "trigger_name", name, NULL);
  t->m_retries_failed = herald_metric_get("argo_events_action_retries_failed_total",
                                          "How many actions failed after the retries have been exhausted.",
                                          HERALD_COUNTER, "sensor_name", sensor, "trigger_name",
                                          name, NULL);
  t->m_duration = herald_metric_get("argo_events_action_duration_milliseconds",
                                    "Summary of durations of trigger actions.", HERALD_SUMMARY,
                                    "sensor_name", sensor, "trigger_name", name, NULL);
  if (tt->init && tt->init(t, L, tmpl_idx) != 0) {
    free(t->priv), free(t->sensor_name), free(t->name), free(logname), free(t);
    return NULL;
  }
  herald__engine_add_trigger(eng, t);
  return t;
}

static void finish(herald_trigger_req *req, herald_trigger_result res, const char *reason) {
  herald_trigger *t = req->trigger;
  herald_metric_observe(t->m_duration, (double)(herald_mono_ns() - req->start_ns) / 1e6);
  if (res == HERALD_TRIGGER_DONE) {
    herald_metric_inc(t->m_triggered);
    if (herald_log_enabled(HLOG_DEBUG))
      herald_log(&t->log, HLOG_DEBUG, "Successfully processed trigger '%s'", t->name);
  } else {
    /* Retries, backoff and dead-lettering belong to the delivery layer (a later milestone);
     * until then a failed attempt is final, counted and logged. */
    herald_metric_inc(t->m_failed);
    herald_metric_inc(t->m_retries_failed);
    herald_log_limited(&t->log, HLOG_ERROR, "trigger failed: %s", reason ? reason : "unknown");
  }
  t->inflight--;
  total_inflight--;
  delivery_ctx *c = req->data;
  free(req);
  if (c) release(c);
}

int herald_trigger_fire(herald_engine *eng, herald_trigger *t, lua_State *L, int action_idx) {
  herald_trigger_req *req = calloc(1, sizeof *req + t->type->req_size);
  if (!req) return HERALD_ENOMEM;
  req->trigger = t;
  req->done = finish;
  req->start_ns = herald_mono_ns();
  req->priv = t->type->req_size ? (void *)(req + 1) : NULL;
  req->data = eng->current;
  if (eng->current) eng->current->holds++;
  t->inflight++;
  total_inflight++;
  int r = t->type->execute(t, req, L, action_idx);
  if (r == 1) {
    finish(req, HERALD_TRIGGER_DONE, NULL);
    return 0;
  }
  if (r < 0) {
    finish(req, HERALD_TRIGGER_FAILED, herald_strerror(r));
    return r;
  }
  return 0;
}
