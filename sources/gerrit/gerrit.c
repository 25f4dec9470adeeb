/*
 * gerrit.c: the `gerrit` event source (Argo's GerritEventSource): hooks managed through
 * Gerrit's webhooks plugin (plugins/webhooks, "remotes" of a project).
 *
 *   start (auth and webhook.url given): for each project, basic auth, so Gerrit's
 *     authenticated "/a/" prefix as the Go client Argo uses adds it:
 *     GET {gerritBaseURL}/a/config/server/webhooks~projects/{project}/remotes/ ->
 *     a remote named hookName with our url: reuse | else PUT .../remotes/{hookName}/ with
 *     {url, events, sslVerify, maxTries} (creates it or replaces one pointing elsewhere)
 *   request: no signature (Gerrit's webhooks plugin signs nothing) -> data
 *     {"headers":{...},"body":<body>,"metadata":{...}}; a body that is not JSON: 400, as Argo
 *   stop: deleteHookOnFinish: DELETE .../remotes/{hookName}/ for each project registered
 */
#include "webhookctx/webhookctx.h"

#include "common.h"
#include "engine.h"
#include "event.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct gerrit {
  herald_whctx ctx;
  herald_hooks hooks;
  herald_source_stop_cb stop_done;
  int ctx_stopped, hooks_stopped;
  char **targets, **names; /* escaped project; as written */
  size_t ntargets;
  herald_buf config;       /* the remote's JSON config */
  int delete_on_finish, insecure;
  char *base, *hook_url, *hook_name, *hook_name_esc;
  char *auth_header;
} gerrit;

static void wipe(char *s) {
  if (s) memset(s, 0, strlen(s)), free(s);
}

static void gerrit_release(gerrit *g) {
  herald_whctx_release(&g->ctx);
  wipe(g->auth_header);
  g->auth_header = NULL;
  for (size_t i = 0; i < g->ntargets; i++) free(g->targets[i]), free(g->names[i]);
  free(g->targets), free(g->names);
  g->targets = g->names = NULL;
  g->ntargets = 0;
  herald_buf_free(&g->config);
  free(g->base), free(g->hook_url), free(g->hook_name), free(g->hook_name_esc);
  g->base = g->hook_url = g->hook_name = g->hook_name_esc = NULL;
}

static void on_request(herald_whctx *w, herald_http_req *req) {
  if (!req->body_len || !herald_json_valid(req->body, req->body_len, 64)) {
    herald_whctx_reject(w, req, 400, HERALD_WHCTX_BAD_REQUEST, "invalid event");
    return;
  }
  herald_buf *d = &w->buf;
  herald_buf_reset(d);
  herald_buf_puts(d, "{\"headers\":");
  herald_whctx_put_headers(w, d, req);
  herald_buf_puts(d, ",\"body\":");
  herald_buf_append(d, req->body, req->body_len);
  if (w->metadata_json) herald_buf_puts(d, w->metadata_json);
  herald_buf_putc(d, '}');
  herald_whctx_emit(w, req, d->data, d->len);
}

/* ---- hooks (plugins/webhooks/src/main/resources/Documentation/rest-api-config.md) ---- */

static const char *op_target(void *ud, size_t i) {
  return ((gerrit *)ud)->names[i];
}

static void set_auth(gerrit *g, herald_hook_req *r) {
  r->headers[0] = g->auth_header;
  r->headers[1] = "Content-Type: application/json";
  r->headers[2] = "Accept: application/json";
}

static void remote_url(gerrit *g, size_t i, herald_hook_req *r) {
  herald_buf_printf(&r->url, "%s/a/config/server/webhooks~projects/%s/remotes/%s/", g->base,
                    g->targets[i], g->hook_name_esc);
}

static void op_list(void *ud, size_t i, herald_hook_req *r) {
  gerrit *g = ud;
  set_auth(g, r);
  herald_buf_printf(&r->url, "%s/a/config/server/webhooks~projects/%s/remotes/", g->base,
                    g->targets[i]);
}

/* The answer is {remote name: config}: ours is found when hookName points at our url. */
static int op_find(void *ud, size_t i, lua_State *L, int idx, char **id) {
  gerrit *g = ud;
  (void)i;
  if (!lua_istable(L, idx)) return -2;
  lua_getfield(L, idx, g->hook_name);
  int same = lua_istable(L, -1) && strcmp(herald_cfg_string(L, -1, "url", ""), g->hook_url) == 0;
  lua_pop(L, 1);
  if (!same) return -1;
  *id = herald_xstrdup(g->hook_name);
  return 0;
}

static void op_create(void *ud, size_t i, herald_hook_req *r) {
  gerrit *g = ud;
  set_auth(g, r);
  r->method = "PUT";
  remote_url(g, i, r);
  herald_buf_append(&r->body, g->config.data, g->config.len);
  r->has_body = 1;
}

static char *op_id_of(void *ud, size_t i, lua_State *L, int idx) {
  (void)i, (void)L, (void)idx;
  return herald_xstrdup(((gerrit *)ud)->hook_name);
}

static void op_remove(void *ud, size_t i, const char *id, herald_hook_req *r) {
  gerrit *g = ud;
  (void)id;
  set_auth(g, r);
  r->method = "DELETE";
  remote_url(g, i, r);
}

static const herald_hooks_ops gerrit_ops = {
    .target = op_target, .list = op_list, .find = op_find, .create = op_create,
    .id_of = op_id_of, .remove = op_remove,
};

/* ---- lifecycle ---- */

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

static char *escape(const char *s) {
  CURL *c = curl_easy_init();
  char *e = curl_easy_escape(c, s, 0); /* "team/app" -> team%2Fapp, as Go's QueryEscape */
  char *out = herald_xstrdup(e ? e : "");
  curl_free(e);
  curl_easy_cleanup(c);
  return out;
}

static int gerrit_init(herald_source *src, lua_State *L, int cfg_idx) {
  gerrit *g = src->priv;
  int cfg = abs_index(L, cfg_idx);
  lua_getfield(L, cfg, "webhook");
  int r = herald_whctx_init(&g->ctx, src, L, -1, on_request, g);
  lua_pop(L, 1);
  if (r) return r;
  r = herald_whctx_read_metadata(&g->ctx, L, cfg);
  int err = 0;
  lua_getfield(L, cfg, "auth");
  if (!r && lua_istable(L, -1)) {
    char *u = herald_secret_field(src->engine, &src->log, L, -1, "username", "auth.username", &err);
    char *p = err ? NULL : herald_secret_field(src->engine, &src->log, L, -1, "password", "auth.password", &err);
    if (!err) {
      herald_buf up = HERALD_BUF_INIT, h = HERALD_BUF_INIT;
      herald_buf_printf(&up, "%s:%s", u ? u : "", p ? p : "");
      herald_buf_puts(&h, "Authorization: Basic ");
      herald_buf_base64(&h, up.data, up.len);
      herald_buf_putc(&h, '\0');
      memset(up.data, 0, up.len);
      herald_buf_free(&up);
      g->auth_header = h.data;
    }
    wipe(u), wipe(p);
  }
  lua_pop(L, 1);
  if (r || err) {
    gerrit_release(g);
    return r ? r : err;
  }
  lua_getfield(L, cfg, "projects");
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    const char *v = lua_tostring(L, -1);
    if (v) {
      g->targets = realloc(g->targets, (g->ntargets + 1) * sizeof *g->targets);
      g->names = realloc(g->names, (g->ntargets + 1) * sizeof *g->names);
      g->targets[g->ntargets] = escape(v);
      g->names[g->ntargets++] = herald_xstrdup(v);
    }
    lua_pop(L, 1);
    if (!v) break;
  }
  lua_pop(L, 1);
  g->hook_name = herald_xstrdup(herald_cfg_string(L, cfg, "hookName", ""));
  g->hook_name_esc = escape(g->hook_name);
  g->hook_url = herald_whctx_hook_url(&g->ctx);
  /* the remote as Argo's ProjectHookConfigs marshals it (omitempty fields left out) */
  herald_buf *c = &g->config;
  herald_buf_puts(c, "{\"url\":");
  herald_json_str(c, g->hook_url ? g->hook_url : "");
  lua_getfield(L, cfg, "events");
  int nev = 0;
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    const char *e = lua_tostring(L, -1);
    if (e) {
      herald_buf_puts(c, nev++ ? "," : ",\"events\":[");
      herald_json_str(c, e);
    }
    lua_pop(L, 1);
    if (!e) break;
  }
  lua_pop(L, 1);
  if (nev) herald_buf_putc(c, ']');
  double tries = herald_cfg_number(L, cfg, "maxTries", 0);
  if (tries != 0) herald_buf_printf(c, ",\"maxTries\":%.0f", tries);
  if (herald_cfg_bool(L, cfg, "sslVerify", 0)) herald_buf_puts(c, ",\"sslVerify\":true");
  herald_buf_putc(c, '}');
  g->delete_on_finish = herald_cfg_bool(L, cfg, "deleteHookOnFinish", 0);
  const char *base = herald_cfg_string(L, cfg, "gerritBaseURL", "");
  size_t bl = strlen(base);
  while (bl && base[bl - 1] == '/') bl--;
  g->base = herald_xstrndup(base, bl);
  return 0;
}

static int gerrit_start(herald_source *src) {
  gerrit *g = src->priv;
  int r = herald_whctx_start(&g->ctx);
  if (r) return r;
  if (g->auth_header && g->hook_url && *g->base)
    herald_hooks_start(&g->hooks, src, &gerrit_ops, g, g->ntargets, g->delete_on_finish, 0);
  else
    g->hooks_stopped = 1;
  return 0;
}

static void maybe_done(gerrit *g) {
  if (!g->ctx_stopped || !g->hooks_stopped) return;
  herald_source_stop_cb done = g->stop_done;
  herald_source *src = g->ctx.src;
  gerrit_release(g);
  if (done) done(src);
}

static void ctx_stopped(herald_whctx *w) {
  gerrit *g = w->data;
  g->ctx_stopped = 1;
  maybe_done(g);
}

static void hooks_stopped(herald_hooks *h) {
  gerrit *g = h->ud;
  g->hooks_stopped = 1;
  maybe_done(g);
}

static void gerrit_stop(herald_source *src, herald_source_stop_cb done) {
  gerrit *g = src->priv;
  g->stop_done = done;
  int hooks = g->hooks.timer_open;
  if (!hooks) g->hooks_stopped = 1;
  herald_whctx_stop(&g->ctx, ctx_stopped);
  if (hooks) herald_hooks_stop(&g->hooks, hooks_stopped);
}

const herald_source_type herald_source_gerrit = {
    .name = "gerrit",
    .event_type = "gerrit",
    .priv_size = sizeof(gerrit),
    .init = gerrit_init,
    .start = gerrit_start,
    .stop = gerrit_stop,
};
