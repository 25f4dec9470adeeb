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
  int abandoned;  /* a firing was given up at the drain's deadline: nak, do not ack */
} delivery_ctx;

typedef struct sensor_sub {
  herald_bus_sub sub;
  herald_engine *eng;
  int handler_ref;
  char *durable, *source, *subject;
  herald_logger log;
  int retired; /* unsubscribed by a reload */
  struct sensor_sub *next;
} sensor_sub;

static sensor_sub *subs;
static int cjson_decode_ref = LUA_NOREF;
static lua_State *event_L; /* the state holding cached decoded events */

static void release(delivery_ctx *c) {
  if (--c->holds) return;
  /* An abandoned delivery stays on the bus (paused by then): spilled by the in-memory bus,
   * kept by a durable one or the JetStream server, and delivered again after the restart. */
  if (c->abandoned) herald_bus_nak(c->bus, c->d, 0);
  else herald_bus_ack(c->bus, c->d);
  free(c);
}

struct herald_delivery_ctx *herald__delivery_hold(herald_engine *eng) {
  if (eng->current) eng->current->holds++;
  return eng->current;
}

void herald__delivery_release(struct herald_delivery_ctx *c) {
  if (c) release(c);
}

void herald__delivery_abandon(struct herald_delivery_ctx *c) {
  if (!c) return;
  c->abandoned = 1;
  release(c);
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
  if (ev->data_len == 0) { /* a CloudEvent with no data at all: no raw, no data (not JSON null) */
    lua_pushvalue(L, -1);
    ev->lua_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    event_L = L;
    return;
  }
  lua_pushlstring(L, ev->data, ev->data_len);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "raw");
  /* stack: event raw -> event data */
  if (cjson_decode_ref == LUA_NOREF) {
    /* herald.rt's decode: cjson's, except that empty arrays stay marked as arrays */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "herald.rt");
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
  c->abandoned = 0;
  delivery_ctx *prev = eng->current;
  eng->current = c;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->handler_ref);
  herald_runtime_push_event(L, ev);
  herald_lua_pcall(L, 1, 0, &s->log, "sensor handler");
  eng->current = prev;
  release(c);
}

int herald_runtime_subscribe(herald_engine *eng, lua_State *L, const char *sensor,
                             const char *name, const char *es_name, const char *event_name,
                             int handler_idx, uint32_t window) {
  herald_event_set_release_hook(event_release_hook);
  sensor_sub *s = herald_xcalloc(1, sizeof *s);
  s->durable = herald_xasprintf("%s/%s", sensor, name);
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
  s->sub.max_inflight = window;
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

int herald_runtime_unsubscribe(herald_engine *eng, const char *sensor, const char *name) {
  size_t sl = strlen(sensor);
  for (sensor_sub *s = subs; s; s = s->next) {
    if (s->retired || strncmp(s->durable, sensor, sl) != 0 || s->durable[sl] != '/' ||
        strcmp(s->durable + sl + 1, name) != 0)
      continue;
    /* kept (not freed) until the engine stops: deliveries in flight still point at it */
    herald_bus_unsubscribe(eng->bus, &s->sub);
    s->retired = 1;
    return 0;
  }
  return HERALD_EINVAL;
}

void herald_runtime_unsubscribe_all(herald_engine *eng) {
  while (subs) {
    sensor_sub *s = subs;
    subs = s->next;
    if (!s->retired) herald_bus_unsubscribe(eng->bus, &s->sub);
    luaL_unref(eng->L, LUA_REGISTRYINDEX, s->handler_ref);
    free(s->durable), free(s->source), free(s->subject), free(s);
  }
}


