/*
 * leader.c: active/passive replicas (Argo's leader election for Sensors and for EventSources
 * of the AP kind, replicas > 1), on the bus's leases (engine/bus.h `lease`).
 *
 *   core.leader_elect({names}, ttl_ms, on_elected)
 *     every ttl/5: each lease not held -> take (revision 0); each held -> renew (its revision)
 *     all held the first time -> on_elected() in Lua (which builds and starts the objects)
 *     a held lease taken by another, or not renewed for 4/5 of ttl_ms (the server lets it
 *     lapse only ttl_ms after it wrote the renewal, so no standby can lead before we stop) ->
 *     "lost": log, exit 1 (as Argo, whose process exits when it stops leading; the
 *     orchestrator restarts it, as a standby)
 *
 * A standby logs who leads, once per change. Leases are not given back on shutdown: a
 * standby takes over when the lease lapses (ttl_ms after the last renewal).
 */
#include "common.h"
#include "engine.h"
#include "lua_host.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct lease {
  char *name;
  uint64_t rev;         /* 0: not held */
  uint64_t renewed_ms;  /* loop time the last successful take or renewal was asked */
  uint64_t asked_ms;    /* loop time the op in flight was asked */
  int asking;           /* an op is in flight */
  char *seen_holder;    /* who held it when we last looked (for logging once) */
} lease;

static struct {
  herald_engine *eng;
  uv_timer_t timer;
  int active, closing, timer_closed;
  int asking; /* ops in flight: the leases are freed only once they have all come back */
  lease *leases;
  size_t n;
  uint64_t ttl_ms;
  char holder[300];
  int elected_ref; /* Lua callback, LUA_NOREF once called */
  herald_logger log;
} G;

static void lost(lease *l, const char *why) {
  herald_log(&G.log, HLOG_ERROR, "lost the lead of %s (%s): exiting", l->name, why);
  G.eng->exit_code = 1;
  herald_engine_shutdown(G.eng);
}

static void maybe_elected(void) {
  if (G.elected_ref == LUA_NOREF) return;
  for (size_t i = 0; i < G.n; i++)
    if (!G.leases[i].rev) return;
  for (size_t i = 0; i < G.n; i++) herald_log(&G.log, HLOG_INFO, "leading %s", G.leases[i].name);
  lua_State *L = G.eng->L;
  int ref = G.elected_ref;
  G.elected_ref = LUA_NOREF;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  herald_lua_pcall(L, 0, 0, &G.log, "leader elected");
}

static void free_if_done(void) {
  if (!G.timer_closed || G.asking) return;
  for (size_t i = 0; i < G.n; i++) free(G.leases[i].name), free(G.leases[i].seen_holder);
  free(G.leases);
  G.leases = NULL;
  G.n = 0;
  G.active = G.closing = G.timer_closed = 0;
}

static void on_lease(void *data, int status, uint64_t rev, const char *holder) {
  lease *l = data;
  l->asking = 0;
  G.asking--;
  if (G.closing) {
    free_if_done();
    return;
  }
  if (status == 0) {
    l->rev = rev;
    l->renewed_ms = l->asked_ms; /* the server counts the lease from when it wrote it: later */
    maybe_elected();
    return;
  }
  if (status == HERALD_EHELD) {
    if (l->rev) {
      lost(l, holder ? holder : "taken");
      return;
    }
    if (holder && (!l->seen_holder || strcmp(l->seen_holder, holder) != 0)) {
      herald_log(&G.log, HLOG_INFO, "%s is led by %s: standing by", l->name, holder);
      free(l->seen_holder);
      l->seen_holder = herald_xstrdup(holder);
    }
    return;
  }
  herald_log_limited(&G.log, HLOG_WARN, "lease of %s: %s", l->name, herald_strerror(status));
}

static void tick(uv_timer_t *t) {
  (void)t;
  if (G.eng->draining) return;
  herald_bus *bus = herald__engine_bus(G.eng);
  uint64_t now = uv_now(G.eng->loop);
  for (size_t i = 0; i < G.n; i++) {
    lease *l = &G.leases[i];
    /* step down a fifth of the lease early: the server lets the lease lapse ttl after it wrote
     * the renewal, which is after we asked, so a standby cannot lead while we still do */
    if (l->rev && now - l->renewed_ms >= G.ttl_ms - G.ttl_ms / 5) {
      lost(l, "not renewed in time");
      return;
    }
    if (l->asking) continue;
    l->asked_ms = now;
    if (bus->ops->lease(bus, l->name, G.holder, l->rev, G.ttl_ms, on_lease, l) == 0) {
      l->asking = 1;
      G.asking++;
    }
  }
}

static void timer_closed(uv_handle_t *h) {
  (void)h;
  G.timer_closed = 1;
  free_if_done(); /* else when the last op comes back (the bus completes them all as it closes) */
}

void herald__leader_close(void) {
  if (!G.active || G.closing) return;
  G.closing = 1;
  if (G.elected_ref != LUA_NOREF) luaL_unref(G.eng->L, LUA_REGISTRYINDEX, G.elected_ref);
  G.elected_ref = LUA_NOREF;
  uv_timer_stop(&G.timer);
  uv_close((uv_handle_t *)&G.timer, timer_closed);
}

/* core.leader_elect({names}, ttl_ms, on_elected) -> true | nil, err */
int herald__lua_leader_elect(lua_State *L) {
  herald_engine *eng = herald_engine_from_lua(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Number ttl = luaL_checknumber(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  luaL_argcheck(L, ttl >= 1000 && ttl <= 3600000, 2, "lease time out of range");
  if (G.active) return luaL_error(L, "leader election already running");
  herald_bus *bus = herald__engine_bus(eng);
  if (!bus->ops->lease) {
    lua_pushnil(L);
    lua_pushfstring(L, "the %s bus has no leases", bus->ops->name);
    return 2;
  }
  size_t n = lua_objlen(L, 1);
  G.leases = herald_xcalloc(n + 1, sizeof *G.leases);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, 1, (int)i + 1);
    G.leases[i].name = herald_xstrdup(luaL_checkstring(L, -1));
    lua_pop(L, 1);
  }
  G.n = n;
  G.eng = eng;
  G.ttl_ms = (uint64_t)ttl;
  G.log.name = "leader";
  char host[256] = "host";
  gethostname(host, sizeof host - 1);
  snprintf(G.holder, sizeof G.holder, "%s/%ld", host, (long)getpid());
  lua_pushvalue(L, 3);
  G.elected_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  uv_timer_init(eng->loop, &G.timer);
  G.active = 1;
  uint64_t every = G.ttl_ms / 5;
  uv_timer_start(&G.timer, tick, 0, every);
  herald_log(&G.log, HLOG_INFO, "campaigning as %s for %zu lease(s) of %llu ms", G.holder, n,
             (unsigned long long)G.ttl_ms);
  lua_pushboolean(L, 1);
  return 1;
}
