/*
 * github.c: the `github` event source (Argo's GithubEventSource).
 *
 *   start: route on the shared server (lib/webhookctx) + hooks (lib/webhookctx/hooks.c): for
 *     each repository (owner/name) or organization, GET .../hooks -> ours (config.url equal)?
 *     same events: reuse | other events: PATCH | none: POST; apiToken ("Authorization: token")
 *     or githubApp (an RS256 JWT exchanged for an installation token, renewed before expiry)
 *   request: Content-Type json | form (field `payload`) -> X-Hub-Signature-256 (else
 *     X-Hub-Signature, SHA-1, as go-github accepts it) checked in constant time when a
 *     webhookSecret is set (or a signature is sent) -> data {"headers":{...},"body":<payload +
 *     X-GitHub-Event, X-GitHub-Delivery>,"metadata":{...}} -> bus -> 200
 *     missing signature: 401; wrong: 403; not a GitHub payload: 400 (none emits an event)
 *   stop: 503 from then on; deleteHookOnFinish deletes the hooks registered
 */
#include "webhookctx/webhookctx.h"

#include "common.h"
#include "engine.h"
#include "event.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TOKEN_LIFE_S (50 * 60) /* installation tokens last an hour: renew with 10 min to spare */

typedef struct github {
  herald_whctx ctx;
  herald_hooks hooks;
  herald_source_stop_cb stop_done;
  int ctx_stopped, hooks_stopped, manage_hooks;
  char *secret;              /* webhookSecret, or NULL */
  char **targets;            /* "repos/owner/name" | "orgs/org" */
  size_t ntargets;
  char *events_json;         /* ["push",...] */
  char **events;             /* sorted, for comparison */
  size_t nevents;
  int active, insecure, delete_on_finish;
  char *content_type;        /* "json" | "form" | NULL */
  char *base;                /* API base URL ending in '/' */
  char *hook_url;
  char *api_token;           /* apiToken, or the App's installation token */
  char *app_id, *app_installation, *app_key;
  uint64_t token_at;         /* when the installation token was obtained (s), 0 = never */
  char auth_header[512];
} github;

static void free_list(char **l, size_t n) {
  for (size_t i = 0; i < n; i++) free(l[i]);
  free(l);
}

static void wipe(char *s) {
  if (s) memset(s, 0, strlen(s)), free(s);
}

static void github_release(github *g) {
  herald_whctx_release(&g->ctx);
  wipe(g->secret), wipe(g->api_token), wipe(g->app_key);
  g->secret = g->api_token = g->app_key = NULL;
  free_list(g->targets, g->ntargets);
  free_list(g->events, g->nevents);
  g->targets = g->events = NULL;
  g->ntargets = g->nevents = 0;
  free(g->events_json), free(g->content_type), free(g->base), free(g->hook_url);
  free(g->app_id), free(g->app_installation);
  g->events_json = g->content_type = g->base = g->hook_url = g->app_id = g->app_installation = NULL;
  memset(g->auth_header, 0, sizeof g->auth_header);
}

/* ---- requests ---- */

/* Appends the payload (a JSON object) with X-GitHub-Event and X-GitHub-Delivery added, as
 * Argo adds them to the body (it re-marshals the map; Herald keeps the sender's key order). */
static void put_payload(herald_buf *d, const char *p, size_t n, const herald_http_req *req) {
  size_t end = n;
  while (end && (p[end - 1] == ' ' || p[end - 1] == '\n' || p[end - 1] == '\r' || p[end - 1] == '\t')) end--;
  end--; /* the closing brace */
  size_t i = 1;
  while (i < end && (p[i] == ' ' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t')) i++;
  int empty = i == end;
  herald_buf_append(d, p, end);
  static const char *const names[] = {"X-GitHub-Event", "X-GitHub-Delivery"};
  for (int k = 0; k < 2; k++) {
    const herald_http_header *h = herald_http_req_header(req, names[k]);
    if (!empty || k) herald_buf_putc(d, ',');
    herald_json_str(d, names[k]);
    herald_buf_putc(d, ':');
    herald_buf_json_string(d, h ? h->value : "", h ? h->value_len : 0);
  }
  herald_buf_putc(d, '}');
}

static int json_object(const char *p, size_t n) {
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t')) i++;
  return i < n && p[i] == '{' && herald_json_valid(p, n, 64);
}

/* The media type of Content-Type, without parameters, lower-cased into out. */
static void media_type(const herald_http_req *req, char *out, size_t cap) {
  const herald_http_header *h = herald_http_req_header(req, "content-type");
  size_t o = 0;
  if (h)
    for (size_t i = 0; i < h->value_len && h->value[i] != ';' && o + 1 < cap; i++)
      if (h->value[i] != ' ' && h->value[i] != '\t')
        out[o++] = (char)((h->value[i] >= 'A' && h->value[i] <= 'Z') ? h->value[i] + 32 : h->value[i]);
  out[o] = '\0';
}

static void on_request(herald_whctx *w, herald_http_req *req) {
  github *g = w->data;
  char mt[64];
  media_type(req, mt, sizeof mt);
  int form = strcmp(mt, "application/x-www-form-urlencoded") == 0;
  if (!form && strcmp(mt, "application/json") != 0) {
    herald_whctx_reject(w, req, 400, HERALD_WHCTX_BAD_REQUEST,
                        "webhook request has unsupported Content-Type");
    return;
  }
  const herald_http_header *sig = herald_http_req_header(req, "x-hub-signature-256");
  if (!sig || !sig->value_len) sig = herald_http_req_header(req, "x-hub-signature");
  if (sig && !sig->value_len) sig = NULL;
  if (g->secret || sig) { /* go-github checks a signature sent even without a secret */
    if (!sig) {
      herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "missing signature");
      return;
    }
    const char *eq = memchr(sig->value, '=', sig->value_len);
    char algo[8] = "";
    size_t al = eq ? (size_t)(eq - sig->value) : 0;
    if (al && al < sizeof algo) memcpy(algo, sig->value, al), algo[al] = '\0';
    herald_iov body = {req->body, req->body_len};
    const char *key = g->secret ? g->secret : "";
    if (!eq || (strcmp(algo, "sha256") && strcmp(algo, "sha1") && strcmp(algo, "sha512")) ||
        !herald_hmac_hex_ok(algo, key, strlen(key), &body, 1, eq + 1,
                            sig->value_len - al - 1)) {
      herald_whctx_reject(w, req, 403, HERALD_WHCTX_BAD_SIGNATURE,
                          "payload signature check failed");
      return;
    }
  }
  herald_buf *d = &w->buf;
  herald_buf_reset(d);
  const char *p = req->body;
  size_t n = req->body_len;
  herald_buf form_payload = HERALD_BUF_INIT;
  if (form) {
    herald_whctx_form_get(req->body, req->body_len, "payload", &form_payload);
    p = form_payload.data ? form_payload.data : "";
    n = form_payload.len;
  }
  if (!json_object(p, n)) {
    herald_buf_free(&form_payload);
    herald_whctx_reject(w, req, 400, HERALD_WHCTX_BAD_REQUEST, "the payload is not a JSON object");
    return;
  }
  herald_buf_puts(d, "{\"headers\":");
  herald_whctx_put_headers(w, d, req);
  herald_buf_puts(d, ",\"body\":");
  put_payload(d, p, n, req);
  herald_buf_free(&form_payload);
  if (w->metadata_json) herald_buf_puts(d, w->metadata_json);
  herald_buf_putc(d, '}');
  herald_whctx_emit(w, req, d->data, d->len);
}

/* ---- hooks through GitHub's REST API ---- */

static const char *op_target(void *ud, size_t i) {
  github *g = ud;
  const char *t = g->targets[i];
  return strchr(t, '/') + 1;
}

static void set_auth(github *g, herald_hook_req *r) {
  snprintf(g->auth_header, sizeof g->auth_header, "Authorization: token %s", g->api_token ? g->api_token : "");
  r->headers[0] = g->auth_header;
  r->headers[1] = "Accept: application/vnd.github+json";
  r->headers[2] = "Content-Type: application/json";
}

static int op_auth(void *ud, herald_hook_req *r) {
  github *g = ud;
  if (!g->app_id) return 0;
  uint64_t now = uv_now(g->ctx.src->engine->loop) / 1000;
  if (g->api_token && now - g->token_at < TOKEN_LIFE_S) return 0;
  herald_buf jwt = HERALD_BUF_INIT;
  const char *why = NULL;
  herald_buf_puts(&jwt, "Authorization: Bearer ");
  if (herald_github_app_jwt(&jwt, g->app_id, g->app_key, &why) != 0) {
    herald_log_limited(&g->ctx.src->log, HLOG_ERROR, "%s", why);
    herald_buf_free(&jwt);
    return 0; /* the list call then fails for want of a token, and is retried */
  }
  snprintf(g->auth_header, sizeof g->auth_header, "%s", herald_buf_cstr(&jwt));
  herald_buf_free(&jwt);
  r->method = "POST";
  herald_buf_printf(&r->url, "%sapp/installations/%s/access_tokens", g->base, g->app_installation);
  r->has_body = 1;
  r->headers[0] = g->auth_header;
  r->headers[1] = "Accept: application/vnd.github+json";
  return 1;
}

static int op_auth_done(void *ud, long status, lua_State *L, int idx) {
  github *g = ud;
  (void)status;
  if (!lua_istable(L, idx)) return -1;
  char *t = herald_lua_strfield(L, idx, "token");
  if (!t || !*t) {
    free(t);
    return -1;
  }
  wipe(g->api_token);
  g->api_token = t;
  g->token_at = uv_now(g->ctx.src->engine->loop) / 1000;
  return 0;
}

static void op_list(void *ud, size_t i, herald_hook_req *r) {
  github *g = ud;
  set_auth(g, r);
  herald_buf_printf(&r->url, "%s%s/hooks?per_page=100", g->base, g->targets[i]);
}

static int str_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Our hook: config.url equal to ours; 0 when its events (as a set) and active are ours too. */
static int op_find(void *ud, size_t i, lua_State *L, int idx, char **id) {
  github *g = ud;
  (void)i;
  if (!lua_istable(L, idx)) return -2;
  int found = -1;
  for (int k = 1; found < 0; k++) {
    lua_rawgeti(L, idx, k);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    int h = lua_gettop(L);
    lua_getfield(L, h, "config");
    char *url = lua_istable(L, -1) ? herald_lua_strfield(L, -1, "url") : NULL;
    lua_pop(L, 1);
    if (url && strcmp(url, g->hook_url) == 0) {
      *id = herald_lua_strfield(L, h, "id");
      char *ev[64];
      size_t ne = 0;
      lua_getfield(L, h, "events");
      for (int e = 1; lua_istable(L, -1); e++) {
        lua_rawgeti(L, -1, e);
        const char *s = lua_tostring(L, -1);
        if (s && ne < 64) ev[ne++] = herald_xstrdup(s);
        lua_pop(L, 1);
        if (!s) break;
      }
      lua_pop(L, 1);
      qsort(ev, ne, sizeof *ev, str_cmp);
      int same = ne == g->nevents;
      for (size_t e = 0; same && e < ne; e++) same = strcmp(ev[e], g->events[e]) == 0;
      for (size_t e = 0; e < ne; e++) free(ev[e]);
      lua_getfield(L, h, "active");
      if (lua_isboolean(L, -1) && lua_toboolean(L, -1) != g->active) same = 0;
      lua_pop(L, 1);
      found = same ? 0 : 1;
    }
    free(url);
    lua_pop(L, 1);
  }
  return found;
}

static void hook_body(github *g, herald_hook_req *r) {
  herald_buf *b = &r->body;
  herald_buf_puts(b, "{\"name\":\"web\",\"active\":");
  herald_buf_puts(b, g->active ? "true" : "false");
  herald_buf_printf(b, ",\"events\":%s,\"config\":{\"url\":", g->events_json);
  herald_json_str(b, g->hook_url);
  if (g->content_type) {
    herald_buf_puts(b, ",\"content_type\":");
    herald_json_str(b, g->content_type);
  }
  herald_buf_printf(b, ",\"insecure_ssl\":\"%d\"", g->insecure ? 1 : 0);
  if (g->secret) {
    herald_buf_puts(b, ",\"secret\":");
    herald_json_str(b, g->secret);
  }
  herald_buf_puts(b, "}}");
  r->has_body = 1;
}

static void op_create(void *ud, size_t i, herald_hook_req *r) {
  github *g = ud;
  set_auth(g, r);
  r->method = "POST";
  herald_buf_printf(&r->url, "%s%s/hooks", g->base, g->targets[i]);
  hook_body(g, r);
}

static void op_update(void *ud, size_t i, const char *id, herald_hook_req *r) {
  github *g = ud;
  set_auth(g, r);
  r->method = "PATCH";
  herald_buf_printf(&r->url, "%s%s/hooks/%s", g->base, g->targets[i], id);
  hook_body(g, r);
}

static char *op_id_of(void *ud, size_t i, lua_State *L, int idx) {
  (void)ud, (void)i;
  return lua_istable(L, idx) ? herald_lua_strfield(L, idx, "id") : NULL;
}

static void op_remove(void *ud, size_t i, const char *id, herald_hook_req *r) {
  github *g = ud;
  set_auth(g, r);
  r->method = "DELETE";
  herald_buf_printf(&r->url, "%s%s/hooks/%s", g->base, g->targets[i], id);
}

static const herald_hooks_ops github_ops = {
    .auth = op_auth, .auth_done = op_auth_done, .target = op_target, .list = op_list,
    .find = op_find, .create = op_create, .update = op_update, .id_of = op_id_of,
    .remove = op_remove,
};

/* ---- lifecycle ---- */

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

static void push_target(github *g, const char *fmt, const char *a, const char *b) {
  char buf[600];
  snprintf(buf, sizeof buf, fmt, a, b);
  g->targets = realloc(g->targets, (g->ntargets + 1) * sizeof *g->targets);
  g->targets[g->ntargets++] = herald_xstrdup(buf);
}

static int github_init(herald_source *src, lua_State *L, int cfg_idx) {
  github *g = src->priv;
  int cfg = abs_index(L, cfg_idx);
  lua_getfield(L, cfg, "webhook");
  int r = herald_whctx_init(&g->ctx, src, L, -1, on_request, g);
  lua_pop(L, 1);
  if (r) return r;
  r = herald_whctx_read_metadata(&g->ctx, L, cfg);
  int err = 0;
  if (!r) g->secret = herald_secret_field(src->engine, &src->log, L, cfg, "webhookSecret", "webhookSecret", &err);
  if (!r && !err) g->api_token = herald_secret_field(src->engine, &src->log, L, cfg, "apiToken", "apiToken", &err);
  if (!r && !err) {
    lua_getfield(L, cfg, "githubApp");
    if (lua_istable(L, -1)) {
      int a = lua_gettop(L);
      g->app_key = herald_secret_field(src->engine, &src->log, L, a, "privateKey", "githubApp.privateKey", &err);
      g->app_id = herald_lua_strfield(L, a, "appID");
      g->app_installation = herald_lua_strfield(L, a, "installationID");
    }
    lua_pop(L, 1);
  }
  if (r || err) {
    github_release(g);
    return r ? r : err;
  }
  /* repositories (or the deprecated owner + repository), organizations */
  lua_getfield(L, cfg, "repositories");
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    const char *owner = herald_cfg_string(L, -1, "owner", "");
    lua_getfield(L, -1, "names");
    for (int k = 1; lua_istable(L, -1); k++) {
      lua_rawgeti(L, -1, k);
      const char *name = lua_tostring(L, -1);
      if (name) push_target(g, "repos/%s/%s", owner, name);
      lua_pop(L, 1);
      if (!name) break;
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  if (!g->ntargets) {
    const char *owner = herald_cfg_string(L, cfg, "owner", NULL);
    const char *repo = herald_cfg_string(L, cfg, "repository", NULL);
    if (owner && repo && *owner && *repo) push_target(g, "repos/%s/%s", owner, repo);
  }
  lua_getfield(L, cfg, "organizations");
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    const char *org = lua_tostring(L, -1);
    if (org) push_target(g, "orgs/%s%s", org, "");
    lua_pop(L, 1);
    if (!org) break;
  }
  lua_pop(L, 1);
  /* events: kept as JSON for the hook, sorted for comparing with a listed hook */
  herald_buf ev = HERALD_BUF_INIT;
  herald_buf_putc(&ev, '[');
  lua_getfield(L, cfg, "events");
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    const char *e = lua_tostring(L, -1);
    if (e) {
      if (i > 1) herald_buf_putc(&ev, ',');
      herald_json_str(&ev, e);
      g->events = realloc(g->events, (g->nevents + 1) * sizeof *g->events);
      g->events[g->nevents++] = herald_xstrdup(e);
    }
    lua_pop(L, 1);
    if (!e) break;
  }
  lua_pop(L, 1);
  herald_buf_putc(&ev, ']');
  g->events_json = ev.data;
  if (g->nevents) qsort(g->events, g->nevents, sizeof *g->events, str_cmp);
  g->active = herald_cfg_bool(L, cfg, "active", 0);
  g->insecure = herald_cfg_bool(L, cfg, "insecure", 0);
  g->delete_on_finish = herald_cfg_bool(L, cfg, "deleteHookOnFinish", 0);
  const char *ct = herald_cfg_string(L, cfg, "contentType", NULL);
  g->content_type = ct && *ct ? herald_xstrdup(ct) : NULL;
  const char *base = herald_cfg_string(L, cfg, "githubBaseURL", NULL);
  if (!base || !*base) base = "https://api.github.com/";
  size_t bl = strlen(base);
  g->base = herald_xmalloc(bl + 2);
  snprintf(g->base, bl + 2, "%s%s", base, base[bl - 1] == '/' ? "" : "/");
  g->hook_url = herald_whctx_hook_url(&g->ctx);
  /* Argo: hooks are managed when there are credentials and a public url */
  g->manage_hooks = (g->api_token || g->app_key) && g->hook_url;
  if (g->manage_hooks && g->app_key && (!g->app_id || !g->app_installation)) {
    herald_log(&src->log, HLOG_ERROR, "githubApp: appID and installationID are required");
    github_release(g);
    return HERALD_EINVAL;
  }
  if (g->app_key && g->api_token) { /* apiToken first, as Argo's chooseAuthStrategy */
    wipe(g->app_key);
    g->app_key = NULL;
    free(g->app_id), g->app_id = NULL;
  }
  return 0;
}

static int github_start(herald_source *src) {
  github *g = src->priv;
  int r = herald_whctx_start(&g->ctx);
  if (r) return r;
  if (g->manage_hooks)
    herald_hooks_start(&g->hooks, src, &github_ops, g, g->ntargets, g->delete_on_finish, 0);
  else
    g->hooks_stopped = 1;
  return 0;
}

static void maybe_done(github *g) {
  if (!g->ctx_stopped || !g->hooks_stopped) return;
  herald_source_stop_cb done = g->stop_done;
  herald_source *src = g->ctx.src;
  github_release(g);
  if (done) done(src);
}

static void ctx_stopped(herald_whctx *w) {
  github *g = w->data;
  g->ctx_stopped = 1;
  maybe_done(g);
}

static void hooks_stopped(herald_hooks *h) {
  github *g = h->ud;
  g->hooks_stopped = 1;
  maybe_done(g);
}

static void github_stop(herald_source *src, herald_source_stop_cb done) {
  github *g = src->priv;
  g->stop_done = done;
  /* hooks that never started (start failed, or the engine's did) have nothing to stop */
  int hooks = g->hooks.timer_open;
  if (!hooks) g->hooks_stopped = 1;
  herald_whctx_stop(&g->ctx, ctx_stopped);
  if (hooks) herald_hooks_stop(&g->hooks, hooks_stopped);
}

const herald_source_type herald_source_github = {
    .name = "github",
    .event_type = "github",
    .priv_size = sizeof(github),
    .init = github_init,
    .start = github_start,
    .stop = github_stop,
};
