/*
 * core.c: herald.core, the small typed C surface the Lua stdlib drives: files, YAML, engine
 * configuration, creating sources/triggers/subscriptions, firing, metrics and logging.
 * Only trusted code (the stdlib and generated sensors) can reach it: sandboxed user scripts
 * get none of this (sandbox.c).
 */
#include "common.h"
#include "cron.h"
#include "engine.h"
#include "lua_host.h"
#include "metrics.h"
#include "runtime.h"
#include "bus.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <string.h>
#include <sys/stat.h>

int herald__lua_yaml_load(lua_State *L); /* yaml.c */

/* core.read_file(path) -> text | nil, err */
static int l_read_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t len;
  int err;
  char *text = herald_read_file(path, &len, &err);
  if (!text) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, err == HERALD_ENOTFOUND ? "no such file" : strerror(errno));
    return 2;
  }
  lua_pushlstring(L, text, len);
  free(text);
  return 1;
}

/* core.stat(path) -> "file" | "dir" | "other" | nil */
static int l_stat(lua_State *L) {
  struct stat st;
  if (stat(luaL_checkstring(L, 1), &st) != 0) return 0;
  lua_pushstring(L, S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "dir" : "other");
  /* and what changes when the file does (herald run --watch) */
  lua_pushnumber(L, (double)st.st_mtim.tv_sec + (double)st.st_mtim.tv_nsec / 1e9);
  lua_pushnumber(L, (double)st.st_size);
  return 3;
}

/* core.every(ms, fn): calls fn every ms on the loop until the engine stops (herald run
 * --watch); does not keep the loop alive by itself. One per engine. */
static void every_tick(uv_timer_t *h) {
  herald_engine *eng = h->data;
  if (eng->draining) {
    uv_timer_stop(h);
    return;
  }
  lua_State *L = eng->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, eng->every_ref);
  if (lua_pcall(L, 0, 0, 0) != 0) {
    herald_log(&eng->log, HLOG_ERROR, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

/* core.sleep(ms): blocks the thread (herald test --watch, which runs no loop) */
static int l_sleep(lua_State *L) {
  uv_sleep((unsigned int)luaL_checknumber(L, 1));
  return 0;
}

static int l_every(lua_State *L) {
  herald_engine *eng = herald_engine_from_lua(L);
  lua_Number ms = luaL_checknumber(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_argcheck(L, !eng->every_ready, 2, "one core.every per engine");
  lua_pushvalue(L, 2);
  eng->every_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  uv_timer_init(eng->loop, &eng->every_timer);
  eng->every_timer.data = eng;
  eng->every_ready = 1;
  uv_unref((uv_handle_t *)&eng->every_timer);
  uv_timer_start(&eng->every_timer, every_tick, (uint64_t)ms, (uint64_t)ms);
  return 0;
}

/* core.list_dir(path) -> {names...} | nil, err (without "." and "..") */
static int l_list_dir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (!d) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(errno));
    return 2;
  }
  lua_newtable(L);
  int i = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    lua_pushstring(L, e->d_name);
    lua_rawseti(L, -2, ++i);
  }
  closedir(d);
  return 1;
}

/* A string field of the table at idx, copied (kept for the process's life), or NULL. */
static const char *cfg_dup(lua_State *L, int idx, const char *field) {
  const char *s = herald_cfg_string(L, idx, field, NULL);
  return s ? herald_xstrdup(s) : NULL;
}

/* bus_options = {user=, password=, token=, creds_file=, tls=, ca=, cert=, key=, insecure=,
 *                stream = {max_msgs=, max_bytes=, max_age_s=, duplicates_s=, replicas=,
 *                          retention=, discard=}}: the JetStream connection and stream (main.lua
 * builds it from the EventBus; PEM and credentials are the secrets' text). */
static void configure_jetstream(lua_State *L, int idx, herald_jetstream_config *js) {
  js->user = cfg_dup(L, idx, "user");
  js->password = cfg_dup(L, idx, "password");
  js->token = cfg_dup(L, idx, "token");
  js->creds_file = cfg_dup(L, idx, "creds_file");
  js->tls = herald_cfg_bool(L, idx, "tls", 0);
  js->ca_pem = cfg_dup(L, idx, "ca");
  js->cert_pem = cfg_dup(L, idx, "cert");
  js->key_pem = cfg_dup(L, idx, "key");
  js->tls_insecure = herald_cfg_bool(L, idx, "insecure", 0);
  lua_getfield(L, idx, "stream");
  if (lua_istable(L, -1)) {
    int st = lua_gettop(L);
    js->stream_set = 1;
    js->max_msgs = (int64_t)herald_cfg_number(L, st, "max_msgs", -2);
    js->max_bytes = (int64_t)herald_cfg_number(L, st, "max_bytes", -2);
    js->max_age_ns = (int64_t)(herald_cfg_number(L, st, "max_age_s", -2) * 1e9);
    js->duplicates_ns = (int64_t)(herald_cfg_number(L, st, "duplicates_s", -2) * 1e9);
    js->replicas = (int)herald_cfg_number(L, st, "replicas", 0);
    js->retention = (int)herald_cfg_number(L, st, "retention", 0);
    js->discard = (int)herald_cfg_number(L, st, "discard", 0);
  }
  lua_pop(L, 1);
}

/* core.configure{secrets_dir=, listen_host=, metrics_addr=, bus_capacity=, bus=, bus_options=,
 *                log_level=, http_header_timeout=, http_body_timeout=, http_idle_timeout=,
 *                http_body_deadline=, http_max_connections=, http_max_client_connections=} */
static int l_configure(lua_State *L) {
  herald_engine *eng = herald_engine_from_lua(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *s;
  if ((s = herald_cfg_string(L, 1, "secrets_dir", NULL))) eng->opts.secrets_dir = herald_xstrdup(s);
  if ((s = herald_cfg_string(L, 1, "listen_host", NULL))) eng->opts.listen_host = herald_xstrdup(s);
  if ((s = herald_cfg_string(L, 1, "metrics_addr", NULL))) eng->opts.metrics_addr = herald_xstrdup(s);
  if ((s = herald_cfg_string(L, 1, "admin_addr", NULL))) eng->opts.admin_addr = herald_xstrdup(s);
  if ((s = herald_cfg_string(L, 1, "admin_token_file", NULL))) eng->opts.admin_token_file = herald_xstrdup(s);
  if ((s = herald_cfg_string(L, 1, "bus_dir", NULL))) eng->opts.bus_dir = herald_xstrdup(s);
  if ((s = herald_cfg_string(L, 1, "spill_file", NULL))) eng->opts.spill_file = herald_xstrdup(s);
  if ((s = herald_cfg_string(L, 1, "bus", NULL)) && strcmp(s, "embedded") != 0) { /* JetStream */
    if (!((strncmp(s, "nats://", 7) == 0 && s[7]) || (strncmp(s, "tls://", 6) == 0 && s[6])))
      return luaL_error(L, "--bus %s: expected nats://HOST:PORT or tls://HOST:PORT (or \"embedded\")", s);
    eng->opts.js.url = herald_xstrdup(s);
  }
  lua_getfield(L, 1, "bus_options");
  if (lua_istable(L, -1)) configure_jetstream(L, lua_gettop(L), &eng->opts.js);
  lua_pop(L, 1);
  double n;
  if ((n = herald_cfg_number(L, 1, "bus_capacity", 0)) > 0) eng->opts.bus_capacity = (uint32_t)n;
  if ((n = herald_cfg_number(L, 1, "drain_timeout", 0)) > 0) eng->opts.drain_timeout_ms = (uint64_t)n;
  if ((n = herald_cfg_number(L, 1, "max_message_bytes", 0)) > 0) eng->opts.max_message = (size_t)n;
  if ((n = herald_cfg_number(L, 1, "http_header_timeout", 0)) > 0) eng->http_limits.header_timeout_ms = (uint64_t)n;
  if ((n = herald_cfg_number(L, 1, "http_body_timeout", 0)) > 0) eng->http_limits.body_timeout_ms = (uint64_t)n;
  if ((n = herald_cfg_number(L, 1, "http_idle_timeout", 0)) > 0) eng->http_limits.keepalive_ms = (uint64_t)n;
  if ((n = herald_cfg_number(L, 1, "http_body_deadline", 0)) > 0) eng->http_limits.body_deadline_ms = (uint64_t)n;
  if ((n = herald_cfg_number(L, 1, "http_max_connections", 0)) > 0) eng->http_limits.max_connections = (size_t)n;
  if ((n = herald_cfg_number(L, 1, "http_max_client_connections", 0)) > 0) eng->http_limits.max_client_connections = (size_t)n;
  if ((s = herald_cfg_string(L, 1, "log_level", NULL))) {
    herald_log_level lvl;
    if (herald_log_parse_level(s, &lvl) != 0) return luaL_error(L, "invalid log level %s", s);
    herald_log_set_level(lvl);
  }
  return 0;
}

/* Pushes true, or nil and the error string: the shape of every fallible core call.
 * stack: -> true | nil err */
static int push_result(lua_State *L, int r) {
  if (r < 0) {
    lua_pushnil(L);
    lua_pushstring(L, herald_strerror(r));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.source_new(type, es_name, event_name, cfg) -> source (lightuserdata) | nil, err */
static int l_source_new(lua_State *L) {
  herald_engine *eng = herald_engine_from_lua(L);
  const char *type = luaL_checkstring(L, 1);
  const char *es = luaL_checkstring(L, 2);
  const char *ev = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  herald_source *src = herald_source_new(eng, L, type, es, ev, 4);
  if (!src) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s/%s: %s event source failed to initialise", es, ev, type);
    return 2;
  }
  lua_pushlightuserdata(L, src);
  return 1;
}

/* ---- reload (herald/engine.lua `reload`) ---- */

/* core.source_start(source) -> true | nil, err: starts a source created after the engine
 * started (before: nothing to do, start starts it). */
static int l_source_start(lua_State *L) {
  herald_source *src = lua_touserdata(L, 1);
  luaL_argcheck(L, src != NULL, 1, "source expected");
  return push_result(L, herald_engine_start_source(herald_engine_from_lua(L), src));
}

/* core.source_stop(source): stops and frees it (the handle is invalid afterwards). */
static int l_source_stop(lua_State *L) {
  herald_source *src = lua_touserdata(L, 1);
  luaL_argcheck(L, src != NULL, 1, "source expected");
  herald_engine_stop_source(herald_engine_from_lua(L), src);
  return 0;
}

/* core.trigger_retire(trigger): no new actions; closed once the rest are done. */
static int l_trigger_retire(lua_State *L) {
  herald_trigger *t = lua_touserdata(L, 1);
  luaL_argcheck(L, t != NULL, 1, "trigger expected");
  herald_engine_retire_trigger(herald_engine_from_lua(L), t);
  return 0;
}

/* core.unsubscribe(sensor, name) -> true | nil, err */
static int l_unsubscribe(lua_State *L) {
  return push_result(L, herald_runtime_unsubscribe(herald_engine_from_lua(L), luaL_checkstring(L, 1),
                                                   luaL_checkstring(L, 2)));
}

/* core.on_reload(fn | nil): what SIGHUP calls. */
static int l_on_reload(lua_State *L) {
  herald_engine *eng = herald_engine_from_lua(L);
  if (eng->reload_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, eng->reload_ref);
  eng->reload_ref = LUA_NOREF;
  if (lua_isfunction(L, 1)) {
    lua_pushvalue(L, 1);
    eng->reload_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

/* core.source_filter(source, fn) -> true: fn(data_json) -> pass [, err] decides before publish */
static int l_source_filter(lua_State *L) {
  herald_source *src = lua_touserdata(L, 1);
  luaL_argcheck(L, src != NULL, 1, "source expected");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  return push_result(L, herald_source_set_filter(src, L, 2));
}

/* core.trigger_new(type, sensor, name, tmpl [, policy]) -> trigger (lightuserdata) | nil, err
 * policy: {steps=, duration_ms=, factor=, jitter=, rate=, at_least_once=} */
static int l_trigger_new(lua_State *L) {
  herald_engine *eng = herald_engine_from_lua(L);
  const char *type = luaL_checkstring(L, 1);
  const char *sensor = luaL_checkstring(L, 2);
  const char *name = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  herald_delivery_policy pol = {0};
  if (lua_istable(L, 5)) {
    pol.steps = (uint32_t)herald_cfg_number(L, 5, "steps", 1);
    pol.duration_ms = (uint64_t)herald_cfg_number(L, 5, "duration_ms", 1000);
    pol.factor = herald_cfg_number(L, 5, "factor", 1);
    pol.jitter = herald_cfg_number(L, 5, "jitter", 0);
    pol.rate = herald_cfg_number(L, 5, "rate", 0);
    pol.at_least_once = herald_cfg_bool(L, 5, "at_least_once", 0);
  }
  herald_trigger *t = herald_trigger_new(eng, L, type, sensor, name, 4, &pol);
  if (!t) {
    lua_pushnil(L);
    lua_pushfstring(L, "sensor %s: trigger %s: failed to initialise", sensor, name);
    return 2;
  }
  lua_pushlightuserdata(L, t);
  return 1;
}

/* core.trigger_dlq(trigger, dlq_trigger, builder): builder(events) -> action for the dlq */
static int l_trigger_dlq(lua_State *L) {
  herald_trigger *t = lua_touserdata(L, 1);
  herald_trigger *dlq = lua_touserdata(L, 2);
  luaL_argcheck(L, t != NULL, 1, "trigger expected");
  luaL_argcheck(L, dlq != NULL, 2, "trigger expected");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  herald_trigger_set_dlq(t, dlq, L, 3);
  return 0;
}

/* core.subscribe(sensor, name, es_name, event_name, handler [, window]) -> true | nil, err:
 * the subscription (durable consumer) "<sensor>/<name>" (herald_runtime_subscribe) */
static int l_subscribe(lua_State *L) {
  herald_engine *eng = herald_engine_from_lua(L);
  const char *sensor = luaL_checkstring(L, 1), *name = luaL_checkstring(L, 2);
  const char *es = luaL_checkstring(L, 3), *ev = luaL_checkstring(L, 4);
  luaL_checktype(L, 5, LUA_TFUNCTION);
  lua_Number window = luaL_optnumber(L, 6, 0);
  luaL_argcheck(L, window >= 0 && window <= UINT32_MAX, 6, "window out of range");
  return push_result(L, herald_runtime_subscribe(eng, L, sensor, name, es, ev, 5, (uint32_t)window));
}

/* Pushes s (then frees it), or nil and the error when s is NULL. stack: -> s | nil err */
static int push_owned(lua_State *L, char *s, int err) {
  if (!s) {
    lua_pushnil(L);
    lua_pushstring(L, herald_strerror(err));
    return 2;
  }
  lua_pushstring(L, s);
  free(s);
  return 1;
}

/* core.secret_read(name, key) -> text | nil, err: a secret's value (herald_secret_read). */
static int l_secret_read(lua_State *L) {
  int err = 0;
  char *v = herald_secret_read(herald_engine_from_lua(L), luaL_checkstring(L, 1), luaL_checkstring(L, 2), &err);
  return push_owned(L, v, err);
}

/* core.secret_path(name, key) -> path | nil, err: where a secret's file is. */
static int l_secret_path(lua_State *L) {
  int err = 0;
  char *p = herald_secret_path(herald_engine_from_lua(L), luaL_checkstring(L, 1), luaL_checkstring(L, 2), &err);
  return push_owned(L, p, err);
}

/* core.bus_kind() -> "embedded" | "jetstream": the bus this engine runs on (created now if
 * it is not yet). */
static int l_bus_kind(lua_State *L) {
  lua_pushstring(L, herald__engine_bus(herald_engine_from_lua(L))->ops->name);
  return 1;
}

/* core.fire(trigger, action) -> true | nil, err */
static int l_fire(lua_State *L) {
  herald_engine *eng = herald_engine_from_lua(L);
  herald_trigger *t = lua_touserdata(L, 1);
  luaL_argcheck(L, t != NULL, 1, "trigger expected");
  luaL_checktype(L, 2, LUA_TTABLE);
  return push_result(L, herald_trigger_fire(eng, t, L, 2));
}

/* core.start() -> true | nil, err: starts the sources and the metrics endpoint. */
static int l_start(lua_State *L) {
  herald_http_listen_error_clear();
  int r = herald_engine_start(herald_engine_from_lua(L));
  const char *why = herald_http_listen_error();
  if (r < 0 && *why) { /* a listen failure: say which address and why, not "i/o error" */
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  return push_result(L, r);
}

/* core.log(level, logger, msg) */
static int l_log(lua_State *L) {
  herald_log_level lvl;
  if (herald_log_parse_level(luaL_checkstring(L, 1), &lvl) != 0) lvl = HLOG_INFO;
  if (!herald_log_enabled(lvl)) return 0;
  herald_logger lg = {.name = luaL_checkstring(L, 2)};
  const char *msg = luaL_checkstring(L, 3);
  if (!lua_istable(L, 4)) {
    herald_log(&lg, lvl, "%s", msg);
    return 0;
  }
  /* fields {name = string|number}: queryable keys (eventID, dependencyName, triggerName ...) */
  herald_buf f = HERALD_BUF_INIT;
  lua_pushnil(L);
  while (lua_next(L, 4)) {
    if (lua_type(L, -2) == LUA_TSTRING && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
      size_t kl, vl;
      const char *k = lua_tolstring(L, -2, &kl);
      if (f.len) herald_buf_putc(&f, ',');
      herald_buf_json_string(&f, k, kl);
      herald_buf_putc(&f, ':');
      if (lua_type(L, -1) == LUA_TNUMBER) {
        herald_buf_printf(&f, "%.17g", lua_tonumber(L, -1));
      } else {
        const char *v = lua_tolstring(L, -1, &vl);
        herald_buf_json_string(&f, v, vl);
      }
    }
    lua_pop(L, 1);
  }
  herald_logf(&lg, lvl, herald_buf_cstr(&f), "%s", msg);
  herald_buf_free(&f);
  return 0;
}

/* core.log_format("json" | "text") -> true | nil, err */
static int l_log_format(lua_State *L) {
  if (herald_log_set_format(luaL_checkstring(L, 1)) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "expected json or text");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.log_enabled(level) -> boolean: whether a message at level would be written */
static int l_log_enabled(lua_State *L) {
  herald_log_level lvl;
  if (herald_log_parse_level(luaL_checkstring(L, 1), &lvl) != 0) lvl = HLOG_INFO;
  lua_pushboolean(L, herald_log_enabled(lvl));
  return 1;
}

/* core.metric(name, help, kind, k1, v1, ...) -> metric (lightuserdata); up to 3 labels. */
static int l_metric(lua_State *L) {
  const char *name = luaL_checkstring(L, 1), *help = luaL_checkstring(L, 2);
  const char *kind = luaL_checkstring(L, 3);
  herald_metric_kind k = strcmp(kind, "gauge") == 0     ? HERALD_GAUGE
                         : strcmp(kind, "summary") == 0 ? HERALD_SUMMARY
                                                        : HERALD_COUNTER;
  const char *l[6] = {0};
  int n = lua_gettop(L) - 3;
  luaL_argcheck(L, n <= 6 && n % 2 == 0, 4, "up to 3 label pairs");
  for (int i = 0; i < n; i++) l[i] = luaL_checkstring(L, 4 + i);
  herald_metric *m = herald_metric_get(name, help, k, l[0], l[1], l[2], l[3], l[4], l[5], NULL);
  lua_pushlightuserdata(L, m);
  return 1;
}

/* core.metric_add(metric, v=1) */
static int l_metric_add(lua_State *L) {
  herald_metric *m = lua_touserdata(L, 1);
  luaL_argcheck(L, m != NULL, 1, "metric expected");
  herald_metric_add(m, luaL_optnumber(L, 2, 1));
  return 0;
}

/* ---- dependency state on the bus (JetStream); absent on the embedded bus ---- */

typedef struct state_cb_ctx {
  lua_State *L;
  int ref; /* the Lua callback */
  struct herald_delivery_ctx *hold; /* the delivery acked only once the state is stored */
  herald_logger log;
  char *name;
} state_cb_ctx;

static state_cb_ctx *state_ctx(lua_State *L, const char *sensor, int fn_idx) {
  state_cb_ctx *c = herald_xcalloc(1, sizeof *c);
  c->L = L;
  c->ref = LUA_NOREF;
  if (fn_idx) {
    lua_pushvalue(L, fn_idx);
    c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  c->name = herald_xasprintf("sensor:%s", sensor);
  c->log.name = c->name;
  return c;
}

static void state_ctx_free(state_cb_ctx *c) {
  if (c->ref != LUA_NOREF) luaL_unref(c->L, LUA_REGISTRYINDEX, c->ref);
  free(c->name);
  free(c);
}

static herald_bus *state_bus(lua_State *L) {
  herald_bus *bus = herald__engine_bus(herald_engine_from_lua(L));
  return bus->ops->state_open ? bus : NULL;
}

/* stack: -> (cb pushed, called with {trigger = {dep = event}}, err) -> */
static void state_loaded(void *data, int status, const herald_bus_state_entry *entries) {
  state_cb_ctx *c = data;
  lua_State *L = c->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  lua_newtable(L);
  for (const herald_bus_state_entry *e = entries; e; e = e->next) {
    lua_getfield(L, -1, e->trigger);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_setfield(L, -3, e->trigger);
    }
    herald_runtime_push_event(L, e->ev); /* decoded as a delivered event */
    lua_setfield(L, -2, e->dep);
    lua_pop(L, 1);
  }
  if (status < 0) lua_pushstring(L, herald_strerror(status));
  else lua_pushnil(L);
  herald_lua_pcall(L, 2, 0, &c->log, "state load");
  state_ctx_free(c);
}

/* core.state_open(sensor, {deps = {{name=, source=, subject=}...}, keys = {{trigger, dep}...}}, cb)
 * -> true | nil, err ("unsupported" on the embedded bus). cb(state, err) runs on the loop before
 * any event of the bus is delivered; state = {trigger = {dep = event}}. */
static int l_state_open(lua_State *L) {
  const char *sensor = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  herald_bus *bus = state_bus(L);
  if (!bus) {
    lua_pushnil(L);
    lua_pushliteral(L, "unsupported");
    return 2;
  }
  lua_getfield(L, 2, "deps");
  lua_getfield(L, 2, "keys");
  size_t nd = lua_objlen(L, -2), nk = lua_objlen(L, -1);
  herald_bus_state_sub *subs = herald_xcalloc(nd + 1, sizeof *subs);
  herald_bus_state_key *keys = herald_xcalloc(nk + 1, sizeof *keys);
  for (size_t i = 0; i < nd; i++) { /* strings stay referenced by the spec table on the stack */
    lua_rawgeti(L, -2, (int)i + 1);
    subs[i].name = herald_cfg_string(L, lua_gettop(L), "name", "");
    subs[i].source = herald_cfg_string(L, lua_gettop(L), "source", "");
    subs[i].subject = herald_cfg_string(L, lua_gettop(L), "subject", "");
    lua_pop(L, 1);
  }
  for (size_t i = 0; i < nk; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_rawgeti(L, -3, 3);
    keys[i].trigger = luaL_checkstring(L, -3);
    keys[i].dep = luaL_checkstring(L, -2);
    keys[i].sub = luaL_checkstring(L, -1);
    lua_pop(L, 4);
  }
  herald_bus_state_spec spec = {subs, nd, keys, nk};
  state_cb_ctx *c = state_ctx(L, sensor, 3);
  int r = bus->ops->state_open(bus, sensor, &spec, state_loaded, c);
  free(subs), free(keys);
  lua_pop(L, 2);
  if (r < 0) state_ctx_free(c);
  return push_result(L, r);
}

static void state_set_done(void *data, int status) {
  state_cb_ctx *c = data;
  if (status < 0)
    herald_log(&c->log, HLOG_ERROR, "dependency state not stored: %s", herald_strerror(status));
  herald__delivery_release(c->hold); /* now the delivery may be acked */
  state_ctx_free(c);
}

/* core.state_put(sensor, trigger, dep, event) / core.state_put(sensor, trigger, dep, nil) (delete)
 * -> true | nil, err. The current delivery is acked only after the server has the change. */
static int l_state_put(lua_State *L) {
  const char *sensor = luaL_checkstring(L, 1), *trigger = luaL_checkstring(L, 2);
  const char *dep = luaL_checkstring(L, 3);
  herald_bus *bus = state_bus(L);
  if (!bus) {
    lua_pushnil(L);
    lua_pushliteral(L, "unsupported");
    return 2;
  }
  herald_event *ev = NULL;
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_getfield(L, 4, "context");
    luaL_argcheck(L, lua_istable(L, -1), 4, "event.context expected");
    int ctx = lua_gettop(L);
    lua_getfield(L, 4, "raw");
    size_t len = 0;
    const char *raw = lua_tolstring(L, -1, &len);
    if (!raw) raw = "null", len = 4;
    ev = herald_event_new_full(herald_cfg_string(L, ctx, "id", NULL), herald_cfg_string(L, ctx, "time", NULL),
                               herald_cfg_string(L, ctx, "source", ""), herald_cfg_string(L, ctx, "subject", ""),
                               herald_cfg_string(L, ctx, "type", ""),
                               herald_cfg_string(L, ctx, "datacontenttype", "application/json"), raw, len);
    lua_pop(L, 2);
    if (!ev) return push_result(L, HERALD_ENOMEM);
  }
  state_cb_ctx *c = state_ctx(L, sensor, 0);
  c->hold = herald__delivery_hold(herald_engine_from_lua(L));
  int r = bus->ops->state_set(bus, sensor, trigger, dep, ev, state_set_done, c);
  if (ev) herald_event_unref(ev); /* serialised by state_set; never seen by Lua */
  if (r < 0) {
    herald__delivery_release(c->hold);
    state_ctx_free(c);
  }
  return push_result(L, r);
}

/* stack: -> (cb pushed, called with ok, err) -> */
static void cleanup_done(void *data, int status) {
  state_cb_ctx *c = data;
  lua_State *L = c->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  lua_pushboolean(L, status == 0);
  if (status < 0) lua_pushstring(L, herald_strerror(status));
  else lua_pushnil(L);
  herald_lua_pcall(L, 2, 0, &c->log, "bus cleanup");
  state_ctx_free(c);
}

/* core.bus_cleanup(sensor, {dep names}, cb) -> true | nil, err: deletes the sensor's state
 * bucket and consumers; cb(ok, err) on the loop. */
static int l_bus_cleanup(lua_State *L) {
  const char *sensor = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  herald_bus *bus = state_bus(L);
  if (!bus) {
    lua_pushnil(L);
    lua_pushliteral(L, "unsupported");
    return 2;
  }
  size_t n = lua_objlen(L, 2);
  const char **subs = herald_xcalloc(n + 1, sizeof *subs);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, 2, (int)i + 1);
    subs[i] = luaL_checkstring(L, -1); /* referenced by the table */
    lua_pop(L, 1);
  }
  state_cb_ctx *c = state_ctx(L, sensor, 3);
  int r = bus->ops->cleanup(bus, sensor, subs, n, cleanup_done, c);
  free(subs);
  if (r < 0) state_ctx_free(c);
  return push_result(L, r);
}

/* core.shutdown(code): stops the engine (drain, close) and exits with code. */
static int l_shutdown(lua_State *L) {
  herald_engine *eng = herald_engine_from_lua(L);
  eng->exit_code = (int)luaL_optinteger(L, 1, 0);
  herald_engine_shutdown(eng);
  return 0;
}

int herald_lua_open_core(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"read_file", l_read_file},   {"stat", l_stat},
      {"list_dir", l_list_dir},     {"yaml_load", herald__lua_yaml_load},
      {"configure", l_configure},   {"source_new", l_source_new},
      {"trigger_new", l_trigger_new}, {"subscribe", l_subscribe},
      {"source_start", l_source_start}, {"source_stop", l_source_stop},
      {"trigger_retire", l_trigger_retire}, {"unsubscribe", l_unsubscribe},
      {"on_reload", l_on_reload},  {"every", l_every}, {"sleep", l_sleep},
      {"bus_kind", l_bus_kind},     {"secret_read", l_secret_read},
      {"secret_path", l_secret_path},
      {"source_filter", l_source_filter}, {"trigger_dlq", l_trigger_dlq},
      {"fire", l_fire},             {"start", l_start},
      {"log", l_log},               {"log_enabled", l_log_enabled},
      {"log_format", l_log_format},
      {"metric", l_metric},
      {"metric_add", l_metric_add},
      {"state_open", l_state_open}, {"state_put", l_state_put},
      {"bus_cleanup", l_bus_cleanup}, {"shutdown", l_shutdown},
      {"leader_elect", herald__lua_leader_elect},
      {NULL, NULL},
  };
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  herald__lua_open_regex(L);   /* stack: core -> core */
  herald__lua_open_sandbox(L); /* stack: core -> core */
  herald__lua_open_jq(L);      /* stack: core -> core */
  herald__lua_open_time(L);    /* stack: core -> core */
  herald__lua_open_repl(L);    /* stack: core -> core */
  herald__lua_open_admin(L);   /* stack: core -> core */
  return 1;
}
