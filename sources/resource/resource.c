/*
 * sources/resource/resource.c: the `resource` event source (Argo's ResourceEventSource): the
 * changes of one Kubernetes collection as events {type, body, oldBody, group, version, resource}.
 *
 *   lib/kube (kube.c) the cluster's address and credentials: kubeconfig or in-cluster, as the
 *                     k8s trigger reads them
 *   lib/kube watch.c  list, then watch from the list's resourceVersion; a watch that ends is
 *                     started again from the last version seen, 410 Gone lists again
 *   informer.lua      (herald.sources.resource.informer) the cache of objects and Argo's
 *                     filters: each list answer and watch line gives the events to publish
 *   here              those events queued and published in order; while the bus is full the
 *                     watch stops reading (the API server's TCP connection waits) and resumes
 *                     once the bus takes events again (herald_source_when_room)
 *
 * Lua runs only on the loop, inside lua_pcall: a Lua error drops that one answer (the watch is
 * started again after a backoff) and never crosses a libuv callback.
 */
#define _GNU_SOURCE /* memmem */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"

#include "kube/kube.h"

#include <lauxlib.h>
#include <string.h>

typedef struct pend {
  struct pend *next;
  size_t len;
  char json[];
} pend;

typedef struct resource_src {
  herald_source *src;
  herald_kube_client kc;
  int kc_live;
  herald_kube_watch w;
  int started, watch_live;
  int mod_ref, state_ref; /* informer module, this source's informer state */
  pend *qhead, *qtail;
  size_t qlen;
  uint32_t inflight;
  int stopping;
  herald_source_stop_cb done;
} resource_src;

#define QUEUE_HIGH 1024 /* the watch pauses while this many events wait for the bus */

/* ---- the queue ---- */

static void drain(resource_src *r);

static void on_room(herald_source *src, void *data) {
  (void)src;
  drain(data);
}

static void maybe_done(resource_src *r);

static void on_published(void *data, int status) {
  resource_src *r = data;
  r->inflight--;
  if (status < 0)
    herald_log_limited(&r->src->log, HLOG_WARN, "resource event not published: %s", herald_strerror(status));
  maybe_done(r);
}

static void drain(resource_src *r) {
  while (r->qhead && !r->stopping) {
    pend *p = r->qhead;
    int rc = herald_source_emit(r->src, p->json, p->len, on_published, r);
    if (rc == HERALD_EBUSFULL) {
      herald_kube_watch_pause(&r->w);
      herald_source_when_room(r->src, on_room, r);
      return;
    }
    if (rc == 0) r->inflight++;
    else herald_log_limited(&r->src->log, HLOG_ERROR, "resource event not published: %s", herald_strerror(rc));
    r->qhead = p->next;
    if (!r->qhead) r->qtail = NULL;
    r->qlen--;
    free(p);
  }
  if (!r->qhead && r->watch_live) herald_kube_watch_resume(&r->w);
}

static void push(resource_src *r, const char *json, size_t len) {
  pend *p = herald_xmalloc(sizeof *p + len + 1);
  p->next = NULL;
  p->len = len;
  memcpy(p->json, json, len);
  p->json[len] = 0;
  if (r->qtail) r->qtail->next = p;
  else r->qhead = p;
  r->qtail = p;
  r->qlen++;
}

/* stack: L unchanged. Queues the events in the array at idx (JSON strings), then publishes. */
static void take_events(resource_src *r, lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return;
  size_t n = lua_objlen(L, idx);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, (int)i);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (s) push(r, s, len);
    lua_pop(L, 1);
  }
  if (n) {
    drain(r);
    if (r->qlen >= QUEUE_HIGH) herald_kube_watch_pause(&r->w);
  }
}

/* ---- the informer (Lua) ---- */

static int on_list(herald_kube_watch *w, const char *body, size_t len, char **rv) {
  resource_src *r = w->data;
  lua_State *L = r->src->engine->L;
  int top = lua_gettop(L);
  /* stack: -> list, state, body -> events, rv | nil, err */
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->mod_ref);
  lua_getfield(L, -1, "list");
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->state_ref);
  lua_pushlstring(L, body, len);
  int rc = HERALD_KUBE_OK;
  if (lua_pcall(L, 2, 2, 0) != 0) {
    herald_log(&r->src->log, HLOG_ERROR, "resource list: %s", lua_tostring(L, -1));
    rc = HERALD_KUBE_BAD;
  } else if (!lua_istable(L, -2)) {
    herald_log(&r->src->log, HLOG_ERROR, "resource list: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    rc = HERALD_KUBE_BAD;
  } else {
    if (lua_type(L, -1) == LUA_TSTRING) *rv = herald_xstrdup(lua_tostring(L, -1));
    take_events(r, L, lua_gettop(L) - 1);
    herald_log(&r->src->log, HLOG_DEBUG, "listed %s at resourceVersion %s", w->path, *rv ? *rv : "?");
  }
  lua_settop(L, top);
  return rc;
}

static int on_line(herald_kube_watch *w, const char *line, size_t len, char **rv) {
  resource_src *r = w->data;
  lua_State *L = r->src->engine->L;
  int top = lua_gettop(L);
  /* stack: -> line, state, text -> events, rv, verdict, err */
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->mod_ref);
  lua_getfield(L, -1, "line");
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->state_ref);
  lua_pushlstring(L, line, len);
  int rc = HERALD_KUBE_OK;
  if (lua_pcall(L, 2, 4, 0) != 0) {
    herald_log(&r->src->log, HLOG_ERROR, "resource watch: %s", lua_tostring(L, -1));
    rc = HERALD_KUBE_BAD;
  } else {
    const char *verdict = lua_tostring(L, -2);
    if (verdict && !strcmp(verdict, "gone")) {
      rc = HERALD_KUBE_GONE;
    } else if (!verdict || strcmp(verdict, "ok") != 0) {
      herald_log_limited(&r->src->log, HLOG_WARN, "resource watch: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
      rc = HERALD_KUBE_BAD;
    } else {
      if (lua_type(L, -3) == LUA_TSTRING) *rv = herald_xstrdup(lua_tostring(L, -3));
      if (*rv && memmem(line, len, "\"BOOKMARK\"", 10))
        herald_log(&r->src->log, HLOG_DEBUG, "bookmark %s", *rv);
      take_events(r, L, lua_gettop(L) - 3);
    }
  }
  lua_settop(L, top);
  return rc;
}

static void on_state(herald_kube_watch *w, int up, const char *why) {
  resource_src *r = w->data;
  herald_source_set_connected(r->src, up, why);
}

/* ---- the source ---- */

static int resource_init(herald_source *src, lua_State *L, int cfg_idx) {
  resource_src *r = src->priv;
  r->src = src;
  r->mod_ref = r->state_ref = LUA_NOREF;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  int top = lua_gettop(L);
  /* stack: -> require, module; -> new, cfg, now -> state, path, query */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "herald.sources.resource.informer");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    herald_log(&src->log, HLOG_ERROR, "cannot load the informer: %s", lua_tostring(L, -1));
    lua_settop(L, top);
    return HERALD_ELUA;
  }
  lua_pushvalue(L, -1);
  r->mod_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, "new");
  lua_pushvalue(L, cfg_idx);
  lua_pushnumber(L, (double)herald_now_ns() / 1e9);
  if (lua_pcall(L, 2, 3, 0) != 0) {
    herald_log(&src->log, HLOG_ERROR, "resource source: %s", lua_tostring(L, -1));
    lua_settop(L, top);
    return HERALD_ELUA;
  }
  r->w.path = herald_xstrdup(lua_tostring(L, -2));
  r->w.query = lua_type(L, -1) == LUA_TSTRING ? herald_xstrdup(lua_tostring(L, -1)) : NULL;
  lua_pushvalue(L, -3);
  r->state_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, top);
  char what[300];
  snprintf(what, sizeof what, "resource event source %s", r->w.path);
  int rc = herald_kube_conn_init(&r->kc, L, &src->log, what, src->engine->loop);
  if (rc != 0) return rc;
  r->kc_live = 1;
  herald_backoff_init(&r->w.backoff, NULL, 0, NULL);
  /* HERALD_KUBE_WATCH_TIMEOUT: a watch's timeoutSeconds, for specs that need watches to end
   * (the default is client-go's 5 to 10 minutes) */
  const char *t = getenv("HERALD_KUBE_WATCH_TIMEOUT");
  if (t && atoi(t) > 0) r->w.timeout_s = atoi(t);
  return 0;
}

static int resource_start(herald_source *src) {
  resource_src *r = src->priv;
  r->w.kc = &r->kc;
  r->w.loop = src->engine->loop;
  r->w.log = &src->log;
  r->w.on_list = on_list;
  r->w.on_line = on_line;
  r->w.on_state = on_state;
  r->w.data = r;
  int rc = herald_kube_watch_start(&r->w);
  if (rc != 0) {
    herald_log(&src->log, HLOG_ERROR, "cannot watch %s: no API server address in the cluster configuration", r->w.path);
    return rc;
  }
  r->watch_live = 1;
  r->started = 1;
  herald_log(&src->log, HLOG_INFO, "watching %s%s%s on %s", r->w.path, r->w.query ? "?" : "",
             r->w.query ? r->w.query : "", r->kc.server);
  return 0;
}

static void maybe_done(resource_src *r) {
  if (!r->stopping || r->watch_live || r->inflight || !r->done) return;
  herald_source_stop_cb done = r->done;
  r->done = NULL;
  lua_State *L = r->src->engine->L;
  while (r->qhead) {
    pend *p = r->qhead;
    r->qhead = p->next;
    free(p);
  }
  if (r->state_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, r->state_ref);
  if (r->mod_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, r->mod_ref);
  r->state_ref = r->mod_ref = LUA_NOREF;
  if (r->kc_live) herald_kube_conn_free(&r->kc, L);
  r->kc_live = 0;
  done(r->src);
}

static void on_watch_stopped(herald_kube_watch *w) {
  resource_src *r = w->data;
  r->watch_live = 0;
  maybe_done(r);
}

static void resource_stop(herald_source *src, herald_source_stop_cb done) {
  resource_src *r = src->priv;
  if (r->stopping) return;
  r->stopping = 1;
  r->done = done;
  herald_source_cancel_room(src);
  if (r->qlen) herald_log(&src->log, HLOG_WARN, "stopping with %zu resource events not published", r->qlen);
  if (r->watch_live) {
    herald_kube_watch_stop(&r->w, on_watch_stopped);
  } else {
    free(r->w.path), free(r->w.query);
    r->w.path = r->w.query = NULL;
  }
  maybe_done(r);
}

const herald_source_type herald_source_resource = {
    .name = "resource",
    .event_type = "resource",
    .priv_size = sizeof(resource_src),
    .init = resource_init,
    .start = resource_start,
    .stop = resource_stop,
};
