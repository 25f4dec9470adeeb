/*
 * bitbucket.c: the `bitbucket` event source (Argo's BitbucketEventSource, Bitbucket Cloud).
 *
 *   start (auth.basic or auth.oauthToken, and webhook.url given): for each repository,
 *     GET {api}/repositories/{owner}/{slug}/hooks -> a hook with our url: PUT it back with our
 *     description, events and active (Argo deletes it and creates a new one: the same hook in
 *     the end, one call instead of two) | none: POST it; {api} is https://api.bitbucket.org/2.0,
 *     or $BITBUCKET_API_BASE_URL as the Go client Argo uses reads it
 *   request: no signature (Argo's BitbucketEventSource has no secret) -> data
 *     {"headers":{...},"body":<body>,"metadata":{...}}; a body that is not JSON: 400, as Argo
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

typedef struct bitbucket {
  herald_whctx ctx;
  herald_hooks hooks;
  herald_source_stop_cb stop_done;
  int ctx_stopped, hooks_stopped;
  char **targets, **names; /* "repositories/<owner>/<slug>" escaped; "owner/slug" */
  size_t ntargets;
  herald_buf events;       /* JSON array of the events asked for */
  int delete_on_finish;
  char *base, *hook_url;
  char *auth_header;       /* "Authorization: Basic ..." | "Authorization: Bearer ..." */
} bitbucket;

static void wipe(char *s) {
  if (s) memset(s, 0, strlen(s)), free(s);
}

static void bitbucket_release(bitbucket *b) {
  herald_whctx_release(&b->ctx);
  wipe(b->auth_header);
  b->auth_header = NULL;
  for (size_t i = 0; i < b->ntargets; i++) free(b->targets[i]), free(b->names[i]);
  free(b->targets), free(b->names);
  b->targets = b->names = NULL;
  b->ntargets = 0;
  herald_buf_free(&b->events);
  free(b->base), free(b->hook_url);
  b->base = b->hook_url = NULL;
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

/* ---- hooks (developer.atlassian.com/cloud/bitbucket/rest/api-group-repositories/#webhooks) */

static const char *op_target(void *ud, size_t i) {
  return ((bitbucket *)ud)->names[i];
}

static void set_auth(bitbucket *b, herald_hook_req *r) {
  r->headers[0] = b->auth_header;
  r->headers[1] = "Content-Type: application/json";
  r->headers[2] = "Accept: application/json";
}

static void op_list(void *ud, size_t i, herald_hook_req *r) {
  bitbucket *b = ud;
  set_auth(b, r);
  herald_buf_printf(&r->url, "%s/%s/hooks?pagelen=100", b->base, b->targets[i]);
}

static int op_find(void *ud, size_t i, lua_State *L, int idx, char **id) {
  bitbucket *b = ud;
  (void)i;
  if (!lua_istable(L, idx)) return -2;
  lua_getfield(L, idx, "values");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return -2; /* Argo: "failed to parse the list webhooks response" */
  }
  int vals = lua_gettop(L), found = -1;
  for (int k = 1; found < 0; k++) {
    lua_rawgeti(L, vals, k);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    if (strcmp(herald_cfg_string(L, -1, "url", ""), b->hook_url) == 0) {
      *id = herald_lua_strfield(L, -1, "uuid");
      found = *id ? 1 : -1;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return found;
}

static void hook_body(bitbucket *b, herald_hook_req *r) {
  herald_buf *o = &r->body;
  herald_buf_puts(o, "{\"description\":\"webhook managed by Argo-Events\",\"url\":");
  herald_json_str(o, b->hook_url);
  herald_buf_puts(o, ",\"active\":true,\"events\":");
  herald_buf_append(o, b->events.data, b->events.len);
  herald_buf_putc(o, '}');
  r->has_body = 1;
}

static void op_create(void *ud, size_t i, herald_hook_req *r) {
  bitbucket *b = ud;
  set_auth(b, r);
  r->method = "POST";
  herald_buf_printf(&r->url, "%s/%s/hooks", b->base, b->targets[i]);
  hook_body(b, r);
}

/* A hook uuid is "{...}": braces escaped in the path. */
static void put_uuid(herald_buf *u, const char *id) {
  for (; *id; id++) {
    if (*id == '{') herald_buf_puts(u, "%7B");
    else if (*id == '}') herald_buf_puts(u, "%7D");
    else herald_buf_putc(u, *id);
  }
}

static void op_update(void *ud, size_t i, const char *id, herald_hook_req *r) {
  bitbucket *b = ud;
  set_auth(b, r);
  r->method = "PUT";
  herald_buf_printf(&r->url, "%s/%s/hooks/", b->base, b->targets[i]);
  put_uuid(&r->url, id);
  hook_body(b, r);
}

static char *op_id_of(void *ud, size_t i, lua_State *L, int idx) {
  (void)ud, (void)i;
  return lua_istable(L, idx) ? herald_lua_strfield(L, idx, "uuid") : NULL;
}

static void op_remove(void *ud, size_t i, const char *id, herald_hook_req *r) {
  bitbucket *b = ud;
  set_auth(b, r);
  r->method = "DELETE";
  herald_buf_printf(&r->url, "%s/%s/hooks/", b->base, b->targets[i]);
  put_uuid(&r->url, id);
}

static const herald_hooks_ops bitbucket_ops = {
    .target = op_target, .list = op_list, .find = op_find, .create = op_create,
    .update = op_update, .id_of = op_id_of, .remove = op_remove,
};

/* ---- lifecycle ---- */

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

static void add_target(bitbucket *b, const char *owner, const char *slug) {
  CURL *c = curl_easy_init();
  char *eo = curl_easy_escape(c, owner, 0), *es = curl_easy_escape(c, slug, 0);
  herald_buf t = HERALD_BUF_INIT, n = HERALD_BUF_INIT;
  herald_buf_printf(&t, "repositories/%s/%s", eo, es);
  herald_buf_printf(&n, "%s/%s", owner, slug);
  curl_free(eo), curl_free(es);
  curl_easy_cleanup(c);
  b->targets = realloc(b->targets, (b->ntargets + 1) * sizeof *b->targets);
  b->names = realloc(b->names, (b->ntargets + 1) * sizeof *b->names);
  b->targets[b->ntargets] = t.data;
  b->names[b->ntargets++] = n.data;
}

static int bitbucket_init(herald_source *src, lua_State *L, int cfg_idx) {
  bitbucket *b = src->priv;
  int cfg = abs_index(L, cfg_idx);
  lua_getfield(L, cfg, "webhook");
  int r = herald_whctx_init(&b->ctx, src, L, -1, on_request, b);
  lua_pop(L, 1);
  if (r) return r;
  r = herald_whctx_read_metadata(&b->ctx, L, cfg);
  if (r) {
    bitbucket_release(b);
    return r;
  }
  /* auth: basic (username and password) first, else oauthToken, as Argo chooses */
  int err = 0;
  lua_getfield(L, cfg, "auth");
  if (lua_istable(L, -1)) {
    int a = lua_gettop(L);
    lua_getfield(L, a, "basic");
    if (lua_istable(L, -1)) {
      char *u = herald_secret_field(src->engine, &src->log, L, -1, "username", "auth.basic.username", &err);
      char *p = err ? NULL : herald_secret_field(src->engine, &src->log, L, -1, "password", "auth.basic.password", &err);
      if (u && p) {
        herald_buf up = HERALD_BUF_INIT, h = HERALD_BUF_INIT;
        herald_buf_printf(&up, "%s:%s", u, p);
        herald_buf_puts(&h, "Authorization: Basic ");
        herald_buf_base64(&h, up.data, up.len);
        herald_buf_putc(&h, '\0');
        memset(up.data, 0, up.len);
        herald_buf_free(&up);
        b->auth_header = h.data;
      }
      wipe(u), wipe(p);
    }
    lua_pop(L, 1);
    if (!err && !b->auth_header) {
      char *t = herald_secret_field(src->engine, &src->log, L, a, "oauthToken", "auth.oauthToken", &err);
      if (t) {
        herald_buf h = HERALD_BUF_INIT;
        herald_buf_printf(&h, "Authorization: Bearer %s", t);
        b->auth_header = h.data;
        wipe(t);
      }
    }
  }
  lua_pop(L, 1);
  if (err) {
    bitbucket_release(b);
    return err;
  }
  lua_getfield(L, cfg, "repositories");
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    add_target(b, herald_cfg_string(L, -1, "owner", ""), herald_cfg_string(L, -1, "repositorySlug", ""));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (!b->ntargets) { /* the deprecated owner + repositorySlug */
    const char *o = herald_cfg_string(L, cfg, "owner", ""), *s = herald_cfg_string(L, cfg, "repositorySlug", "");
    if (*o && *s) add_target(b, o, s);
  }
  herald_buf_putc(&b->events, '[');
  lua_getfield(L, cfg, "events");
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    const char *e = lua_tostring(L, -1);
    if (e) {
      if (i > 1) herald_buf_putc(&b->events, ',');
      herald_json_str(&b->events, e);
    }
    lua_pop(L, 1);
    if (!e) break;
  }
  lua_pop(L, 1);
  herald_buf_putc(&b->events, ']');
  b->delete_on_finish = herald_cfg_bool(L, cfg, "deleteHookOnFinish", 0);
  const char *base = getenv("BITBUCKET_API_BASE_URL");
  if (!base || !*base) base = "https://api.bitbucket.org/2.0";
  size_t bl = strlen(base);
  while (bl && base[bl - 1] == '/') bl--;
  b->base = herald_xstrndup(base, bl);
  b->hook_url = herald_whctx_hook_url(&b->ctx);
  return 0;
}

static int bitbucket_start(herald_source *src) {
  bitbucket *b = src->priv;
  int r = herald_whctx_start(&b->ctx);
  if (r) return r;
  if (b->auth_header && b->hook_url)
    herald_hooks_start(&b->hooks, src, &bitbucket_ops, b, b->ntargets, b->delete_on_finish, 0);
  else
    b->hooks_stopped = 1;
  return 0;
}

static void maybe_done(bitbucket *b) {
  if (!b->ctx_stopped || !b->hooks_stopped) return;
  herald_source_stop_cb done = b->stop_done;
  herald_source *src = b->ctx.src;
  bitbucket_release(b);
  if (done) done(src);
}

static void ctx_stopped(herald_whctx *w) {
  bitbucket *b = w->data;
  b->ctx_stopped = 1;
  maybe_done(b);
}

static void hooks_stopped(herald_hooks *h) {
  bitbucket *b = h->ud;
  b->hooks_stopped = 1;
  maybe_done(b);
}

static void bitbucket_stop(herald_source *src, herald_source_stop_cb done) {
  bitbucket *b = src->priv;
  b->stop_done = done;
  int hooks = b->hooks.timer_open;
  if (!hooks) b->hooks_stopped = 1;
  herald_whctx_stop(&b->ctx, ctx_stopped);
  if (hooks) herald_hooks_stop(&b->hooks, hooks_stopped);
}

const herald_source_type herald_source_bitbucket = {
    .name = "bitbucket",
    .event_type = "bitbucket",
    .priv_size = sizeof(bitbucket),
    .init = bitbucket_init,
    .start = bitbucket_start,
    .stop = bitbucket_stop,
};
