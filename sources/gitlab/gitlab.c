/*
 * gitlab.c: the `gitlab` event source (Argo's GitlabEventSource).
 *
 *   start (accessToken and webhook.url given): for each project and group, GET
 *     {gitlabBaseURL}/api/v4/{projects|groups}/{id}/hooks -> a hook with our url: reuse (as
 *     Argo) | none: POST it with the events asked for (PushEvents -> push_events: true, every
 *     other event false), enable_ssl_verification and the secret token; PRIVATE-TOKEN auth
 *   request: secretToken set: X-Gitlab-Token compared in constant time (missing: 401, wrong:
 *     403) -> data {"headers":{...},"body":<body>,"metadata":{...}}
 *   stop: deleteHookOnFinish deletes the hooks registered
 */
#include "webhookctx/webhookctx.h"

#include "common.h"
#include "engine.h"
#include "event.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct gitlab {
  herald_whctx ctx;
  herald_hooks hooks;
  herald_source_stop_cb stop_done;
  int ctx_stopped, hooks_stopped;
  char *access_token, *secret_token;
  char **targets, **names; /* "projects/<escaped id>" | "groups/<escaped id>"; as written */
  size_t ntargets;
  herald_buf events;       /* ,"push_events":true,... for the hook body */
  int ssl_verify, delete_on_finish;
  char *base, *hook_url;
  char auth_header[300];
} gitlab;

static void wipe(char *s) {
  if (s) memset(s, 0, strlen(s)), free(s);
}

static void gitlab_release(gitlab *g) {
  herald_whctx_release(&g->ctx);
  wipe(g->access_token), wipe(g->secret_token);
  g->access_token = g->secret_token = NULL;
  for (size_t i = 0; i < g->ntargets; i++) free(g->targets[i]), free(g->names[i]);
  free(g->targets), free(g->names);
  g->targets = g->names = NULL;
  g->ntargets = 0;
  herald_buf_free(&g->events);
  free(g->base), free(g->hook_url);
  g->base = g->hook_url = NULL;
  memset(g->auth_header, 0, sizeof g->auth_header);
}

static void on_request(herald_whctx *w, herald_http_req *req) {
  gitlab *g = w->data;
  if (g->secret_token) {
    const herald_http_header *t = herald_http_req_header(req, "x-gitlab-token");
    if (!t) {
      herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "token missing");
      return;
    }
    if (!herald_ct_equal(t->value, t->value_len, g->secret_token, strlen(g->secret_token))) {
      herald_whctx_reject(w, req, 403, HERALD_WHCTX_BAD_SIGNATURE, "token mismatch");
      return;
    }
  }
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

/* ---- hooks ---- */

static const char *op_target(void *ud, size_t i) {
  return ((gitlab *)ud)->names[i];
}

static void set_auth(gitlab *g, herald_hook_req *r) {
  snprintf(g->auth_header, sizeof g->auth_header, "PRIVATE-TOKEN: %s", g->access_token);
  r->headers[0] = g->auth_header;
  r->headers[1] = "Content-Type: application/json";
}

static void op_list(void *ud, size_t i, herald_hook_req *r) {
  gitlab *g = ud;
  set_auth(g, r);
  herald_buf_printf(&r->url, "%s%s/hooks?per_page=100", g->base, g->targets[i]);
}

static int op_find(void *ud, size_t i, lua_State *L, int idx, char **id) {
  gitlab *g = ud;
  (void)i;
  if (!lua_istable(L, idx)) return -2;
  for (int k = 1;; k++) {
    lua_rawgeti(L, idx, k);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      return -1;
    }
    int same = strcmp(herald_cfg_string(L, -1, "url", ""), g->hook_url) == 0;
    if (same) *id = herald_lua_strfield(L, -1, "id");
    lua_pop(L, 1);
    if (same) return 0;
  }
}

static void op_create(void *ud, size_t i, herald_hook_req *r) {
  gitlab *g = ud;
  set_auth(g, r);
  r->method = "POST";
  herald_buf_printf(&r->url, "%s%s/hooks", g->base, g->targets[i]);
  herald_buf *b = &r->body;
  herald_buf_puts(b, "{\"url\":");
  herald_json_str(b, g->hook_url);
  herald_buf_printf(b, ",\"enable_ssl_verification\":%s", g->ssl_verify ? "true" : "false");
  herald_buf_append(b, g->events.data, g->events.len);
  if (g->secret_token) {
    herald_buf_puts(b, ",\"token\":");
    herald_json_str(b, g->secret_token);
  }
  herald_buf_putc(b, '}');
  r->has_body = 1;
}

static char *op_id_of(void *ud, size_t i, lua_State *L, int idx) {
  (void)ud, (void)i;
  return lua_istable(L, idx) ? herald_lua_strfield(L, idx, "id") : NULL;
}

static void op_remove(void *ud, size_t i, const char *id, herald_hook_req *r) {
  gitlab *g = ud;
  set_auth(g, r);
  r->method = "DELETE";
  herald_buf_printf(&r->url, "%s%s/hooks/%s", g->base, g->targets[i], id);
}

static const herald_hooks_ops gitlab_ops = {
    .target = op_target, .list = op_list, .find = op_find, .create = op_create,
    .id_of = op_id_of, .remove = op_remove,
};

/* ---- lifecycle ---- */

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

static void add_target(gitlab *g, const char *kind, const char *v) {
  CURL *c = curl_easy_init();
  char *esc = curl_easy_escape(c, v, 0); /* "group/project" -> group%2Fproject */
  herald_buf t = HERALD_BUF_INIT;
  herald_buf_printf(&t, "%s/%s", kind, esc);
  curl_free(esc);
  curl_easy_cleanup(c);
  g->targets = realloc(g->targets, (g->ntargets + 1) * sizeof *g->targets);
  g->names = realloc(g->names, (g->ntargets + 1) * sizeof *g->names);
  g->targets[g->ntargets] = t.data;
  g->names[g->ntargets++] = herald_xstrdup(v);
}

static void add_targets(gitlab *g, lua_State *L, int cfg, const char *field, const char *kind) {
  lua_getfield(L, cfg, field);
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    const char *v = lua_tostring(L, -1);
    if (v) add_target(g, kind, v);
    lua_pop(L, 1);
    if (!v) break;
  }
  lua_pop(L, 1);
}

/* PushEvents -> push_events (go-gitlab's option fields and their JSON names). */
static void snake(herald_buf *b, const char *s) {
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') {
      if (i) herald_buf_putc(b, '_');
      c = (char)(c + 32);
    }
    herald_buf_putc(b, c);
  }
}

static int gitlab_init(herald_source *src, lua_State *L, int cfg_idx) {
  gitlab *g = src->priv;
  int cfg = abs_index(L, cfg_idx);
  lua_getfield(L, cfg, "webhook");
  int r = herald_whctx_init(&g->ctx, src, L, -1, on_request, g);
  lua_pop(L, 1);
  if (r) return r;
  int err = 0;
  r = herald_whctx_read_metadata(&g->ctx, L, cfg);
  if (!r) g->access_token = herald_secret_field(src->engine, &src->log, L, cfg, "accessToken", "accessToken", &err);
  if (!r && !err) g->secret_token = herald_secret_field(src->engine, &src->log, L, cfg, "secretToken", "secretToken", &err);
  if (r || err) {
    gitlab_release(g);
    return r ? r : err;
  }
  add_targets(g, L, cfg, "projects", "projects");
  if (!g->ntargets) { /* the deprecated projectID */
    const char *pid = herald_cfg_string(L, cfg, "projectID", NULL);
    if (pid && *pid) add_target(g, "projects", pid);
  }
  add_targets(g, L, cfg, "groups", "groups");
  static const char *const all[] = {"PushEvents", "IssuesEvents", "ConfidentialIssuesEvents",
                                    "MergeRequestsEvents", "TagPushEvents", "NoteEvents",
                                    "ConfidentialNoteEvents", "JobEvents", "PipelineEvents",
                                    "WikiPageEvents", "EmojiEvents"};
  for (size_t a = 0; a < sizeof all / sizeof *all; a++) {
    int on = 0;
    lua_getfield(L, cfg, "events");
    for (int i = 1; lua_istable(L, -1); i++) {
      lua_rawgeti(L, -1, i);
      const char *e = lua_tostring(L, -1);
      if (e && strcmp(e, all[a]) == 0) on = 1;
      lua_pop(L, 1);
      if (!e) break;
    }
    lua_pop(L, 1);
    herald_buf_puts(&g->events, ",\"");
    snake(&g->events, all[a]);
    herald_buf_printf(&g->events, "\":%s", on ? "true" : "false");
  }
  g->ssl_verify = herald_cfg_bool(L, cfg, "enableSSLVerification", 0);
  g->delete_on_finish = herald_cfg_bool(L, cfg, "deleteHookOnFinish", 0);
  const char *base = herald_cfg_string(L, cfg, "gitlabBaseURL", NULL);
  if (!base || !*base) base = "https://gitlab.com";
  size_t bl = strlen(base);
  while (bl && base[bl - 1] == '/') bl--;
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_append(&b, base, bl);
  if (!(bl >= 7 && memcmp(base + bl - 7, "/api/v4", 7) == 0)) herald_buf_puts(&b, "/api/v4");
  herald_buf_putc(&b, '/');
  g->base = b.data;
  g->hook_url = herald_whctx_hook_url(&g->ctx);
  return 0;
}

static int gitlab_start(herald_source *src) {
  gitlab *g = src->priv;
  int r = herald_whctx_start(&g->ctx);
  if (r) return r;
  if (g->access_token && g->hook_url)
    herald_hooks_start(&g->hooks, src, &gitlab_ops, g, g->ntargets, g->delete_on_finish,
                       0);
  else
    g->hooks_stopped = 1;
  return 0;
}

static void maybe_done(gitlab *g) {
  if (!g->ctx_stopped || !g->hooks_stopped) return;
  herald_source_stop_cb done = g->stop_done;
  herald_source *src = g->ctx.src;
  gitlab_release(g);
  if (done) done(src);
}

static void ctx_stopped(herald_whctx *w) {
  gitlab *g = w->data;
  g->ctx_stopped = 1;
  maybe_done(g);
}

static void hooks_stopped(herald_hooks *h) {
  gitlab *g = h->ud;
  g->hooks_stopped = 1;
  maybe_done(g);
}

static void gitlab_stop(herald_source *src, herald_source_stop_cb done) {
  gitlab *g = src->priv;
  g->stop_done = done;
  /* hooks that never started (start failed, or the engine's did) have nothing to stop */
  int hooks = g->hooks.timer_open;
  if (!hooks) g->hooks_stopped = 1;
  herald_whctx_stop(&g->ctx, ctx_stopped);
  if (hooks) herald_hooks_stop(&g->hooks, hooks_stopped);
}

const herald_source_type herald_source_gitlab = {
    .name = "gitlab",
    .event_type = "gitlab",
    .priv_size = sizeof(gitlab),
    .init = gitlab_init,
    .start = gitlab_start,
    .stop = gitlab_stop,
};
