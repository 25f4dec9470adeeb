/*
 * stripe.c: the `stripe` event source (Argo's StripeEventSource).
 *
 *   start: createWebhook: GET /v1/webhook_endpoints -> ours (same url)? same enabled_events:
 *     reuse | other: POST /v1/webhook_endpoints/{id} | none: POST /v1/webhook_endpoints
 *     (url, enabled_events[] = eventFilter), with apiKey as the Bearer token; the endpoint
 *     secret Stripe returns on creation becomes the signing secret when none is configured
 *   request: a signing secret known: Stripe-Signature "t=...,v1=..." checked (HMAC-SHA256 of
 *     "<t>.<body>", any v1 matching, constant time; t within 5 minutes) else 401 -> JSON
 *     event; eventFilter holds its type (else 400, as Argo) -> data {"event": <event>,
 *     "metadata": {...}}
 *
 * HERALD_STRIPE_API (default https://api.stripe.com) points the API calls elsewhere (tests).
 */
#include "webhookctx/webhookctx.h"

#include "common.h"
#include "engine.h"
#include "event.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TOLERANCE_S 300

typedef struct stripe {
  herald_whctx ctx;
  herald_hooks hooks;
  herald_source_stop_cb stop_done;
  int ctx_stopped, hooks_stopped;
  char *api_key, *signing_secret;
  char **filter;
  size_t nfilter;
  char *base, *hook_url;
  char auth_header[300];
} stripe;

static void wipe(char *s) {
  if (s) memset(s, 0, strlen(s)), free(s);
}

static void stripe_release(stripe *s) {
  herald_whctx_release(&s->ctx);
  wipe(s->api_key), wipe(s->signing_secret);
  s->api_key = s->signing_secret = NULL;
  for (size_t i = 0; i < s->nfilter; i++) free(s->filter[i]);
  free(s->filter), free(s->base), free(s->hook_url);
  s->filter = NULL, s->base = s->hook_url = NULL;
  s->nfilter = 0;
  memset(s->auth_header, 0, sizeof s->auth_header);
}

/* 1 when the Stripe-Signature header vouches for the body (Stripe's scheme v1). */
static int signature_ok(stripe *s, herald_whctx *w, herald_http_req *req) {
  const herald_http_header *h = herald_http_req_header(req, "stripe-signature");
  if (!h || !h->value_len) {
    herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "missing Stripe-Signature");
    return 0;
  }
  const char *t = NULL;
  size_t tl = 0;
  const char *p = h->value, *end = h->value + h->value_len;
  while (p < end) { /* find t= first: the signed payload needs it */
    const char *c = memchr(p, ',', (size_t)(end - p));
    const char *e = c ? c : end;
    if (e - p > 2 && p[0] == 't' && p[1] == '=') t = p + 2, tl = (size_t)(e - p - 2);
    p = e + 1;
  }
  if (!t || tl == 0 || tl > 20) {
    herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "Stripe-Signature without a timestamp");
    return 0;
  }
  char tb[24];
  memcpy(tb, t, tl), tb[tl] = '\0';
  char *te;
  long long ts = strtoll(tb, &te, 10), now = (long long)time(NULL);
  if (*te) {
    herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "bad timestamp");
    return 0;
  }
  if (ts < now - TOLERANCE_S || ts > now + TOLERANCE_S) {
    herald_whctx_reject(w, req, 401, HERALD_WHCTX_REPLAY, "timestamp outside the tolerance: refused as a replay");
    return 0;
  }
  herald_iov parts[3] = {{t, tl}, {".", 1}, {req->body, req->body_len}};
  int ok = 0;
  for (p = h->value; p < end;) {
    const char *c = memchr(p, ',', (size_t)(end - p));
    const char *e = c ? c : end;
    if (e - p > 3 && memcmp(p, "v1=", 3) == 0)
      ok |= herald_hmac_hex_ok("sha256", s->signing_secret, strlen(s->signing_secret), parts, 3,
                               p + 3, (size_t)(e - p - 3));
    p = e + 1;
  }
  if (!ok) herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "no v1 signature matches");
  return ok;
}

static void on_request(herald_whctx *w, herald_http_req *req) {
  stripe *s = w->data;
  if (s->signing_secret && !signature_ok(s, w, req)) return;
  lua_State *L = w->src->engine->L;
  int top = lua_gettop(L);
  if (herald_json_push(L, req->body, req->body_len) != 0 || !lua_istable(L, -1)) {
    lua_settop(L, top);
    herald_whctx_reject(w, req, 400, HERALD_WHCTX_BAD_REQUEST, "failed to parse the event");
    return;
  }
  const char *type = herald_cfg_string(L, -1, "type", "");
  int pass = s->nfilter == 0;
  for (size_t i = 0; !pass && i < s->nfilter; i++) pass = strcmp(type, s->filter[i]) == 0;
  lua_settop(L, top);
  if (!pass) {
    herald_whctx_reject(w, req, 400, HERALD_WHCTX_IGNORED, "invalid event");
    return;
  }
  herald_buf *d = &w->buf;
  herald_buf_reset(d);
  herald_buf_puts(d, "{\"event\":");
  herald_buf_append(d, req->body, req->body_len);
  if (w->metadata_json) herald_buf_puts(d, w->metadata_json);
  herald_buf_putc(d, '}');
  herald_whctx_emit(w, req, d->data, d->len);
}

/* ---- the webhook endpoint through Stripe's API ---- */

static const char *op_target(void *ud, size_t i) {
  (void)ud, (void)i;
  return "webhook_endpoints";
}

static void set_auth(stripe *s, herald_hook_req *r) {
  snprintf(s->auth_header, sizeof s->auth_header, "Authorization: Bearer %s", s->api_key);
  r->headers[0] = s->auth_header;
}

static void op_list(void *ud, size_t i, herald_hook_req *r) {
  stripe *s = ud;
  (void)i;
  set_auth(s, r);
  herald_buf_printf(&r->url, "%s/v1/webhook_endpoints?limit=100", s->base);
}

static int op_find(void *ud, size_t i, lua_State *L, int idx, char **id) {
  stripe *s = ud;
  (void)i;
  if (!lua_istable(L, idx)) return -2;
  lua_getfield(L, idx, "data");
  int found = -1;
  for (int k = 1; lua_istable(L, -1) && found < 0; k++) {
    lua_rawgeti(L, -1, k);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    const char *url = herald_cfg_string(L, -1, "url", "");
    if (strcmp(url, s->hook_url) == 0) {
      *id = herald_lua_strfield(L, -1, "id");
      size_t n = 0;
      int same = 1;
      lua_getfield(L, -1, "enabled_events");
      for (int e = 1; lua_istable(L, -1); e++, n++) {
        lua_rawgeti(L, -1, e);
        const char *ev = lua_tostring(L, -1);
        int in = 0;
        for (size_t f = 0; ev && f < s->nfilter; f++) in |= strcmp(ev, s->filter[f]) == 0;
        if (ev && !in && !(s->nfilter == 0 && strcmp(ev, "*") == 0)) same = 0;
        lua_pop(L, 1);
        if (!ev) break;
      }
      lua_pop(L, 1);
      if (s->nfilter && n != s->nfilter) same = 0;
      found = same ? 0 : 1;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return found;
}

static void form_body(stripe *s, herald_hook_req *r, int with_url) {
  herald_buf *b = &r->body;
  CURL *c = curl_easy_init();
  if (with_url) {
    char *u = curl_easy_escape(c, s->hook_url, 0);
    herald_buf_printf(b, "url=%s", u);
    curl_free(u);
  }
  if (s->nfilter == 0) herald_buf_printf(b, "%senabled_events[]=*", b->len ? "&" : "");
  for (size_t i = 0; i < s->nfilter; i++) {
    char *e = curl_easy_escape(c, s->filter[i], 0);
    herald_buf_printf(b, "%senabled_events[]=%s", b->len ? "&" : "", e);
    curl_free(e);
  }
  curl_easy_cleanup(c);
  r->has_body = 1;
  r->method = "POST";
  r->headers[1] = "Content-Type: application/x-www-form-urlencoded";
}

static void op_create(void *ud, size_t i, herald_hook_req *r) {
  stripe *s = ud;
  (void)i;
  set_auth(s, r);
  herald_buf_printf(&r->url, "%s/v1/webhook_endpoints", s->base);
  form_body(s, r, 1);
}

static void op_update(void *ud, size_t i, const char *id, herald_hook_req *r) {
  stripe *s = ud;
  (void)i;
  set_auth(s, r);
  herald_buf_printf(&r->url, "%s/v1/webhook_endpoints/%s", s->base, id);
  form_body(s, r, 0);
}

static char *op_id_of(void *ud, size_t i, lua_State *L, int idx) {
  stripe *s = ud;
  (void)i;
  if (!lua_istable(L, idx)) return NULL;
  if (!s->signing_secret) { /* shown once, at creation: what Stripe signs this endpoint's calls with */
    s->signing_secret = herald_lua_strfield(L, idx, "secret");
    if (s->signing_secret)
      herald_log(&s->ctx.src->log, HLOG_INFO, "Stripe-Signature checked with the new endpoint's secret");
  }
  return herald_lua_strfield(L, idx, "id");
}

static void op_remove(void *ud, size_t i, const char *id, herald_hook_req *r) {
  stripe *s = ud;
  (void)i;
  set_auth(s, r);
  r->method = "DELETE";
  herald_buf_printf(&r->url, "%s/v1/webhook_endpoints/%s", s->base, id);
}

static const herald_hooks_ops stripe_ops = {
    .target = op_target, .list = op_list, .find = op_find, .create = op_create,
    .update = op_update, .id_of = op_id_of, .remove = op_remove,
};

/* ---- lifecycle ---- */

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

static int stripe_init(herald_source *src, lua_State *L, int cfg_idx) {
  stripe *s = src->priv;
  int cfg = abs_index(L, cfg_idx);
  lua_getfield(L, cfg, "webhook");
  int r = herald_whctx_init(&s->ctx, src, L, -1, on_request, s);
  lua_pop(L, 1);
  if (r) return r;
  int err = 0;
  r = herald_whctx_read_metadata(&s->ctx, L, cfg);
  if (!r) s->api_key = herald_secret_field(src->engine, &src->log, L, cfg, "apiKey", "apiKey", &err);
  if (!r && !err) s->signing_secret = herald_secret_field(src->engine, &src->log, L, cfg, "signingSecret", "signingSecret", &err);
  if (r || err) {
    stripe_release(s);
    return r ? r : err;
  }
  lua_getfield(L, cfg, "eventFilter");
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    const char *e = lua_tostring(L, -1);
    if (e) {
      s->filter = realloc(s->filter, (s->nfilter + 1) * sizeof *s->filter);
      s->filter[s->nfilter++] = herald_xstrdup(e);
    }
    lua_pop(L, 1);
    if (!e) break;
  }
  lua_pop(L, 1);
  const char *base = getenv("HERALD_STRIPE_API");
  s->base = herald_xstrdup(base && *base ? base : "https://api.stripe.com");
  s->hook_url = herald_whctx_hook_url(&s->ctx);
  if (herald_cfg_bool(L, cfg, "createWebhook", 0) && (!s->api_key || !s->hook_url)) {
    herald_log(&src->log, HLOG_ERROR, "createWebhook needs apiKey and webhook.url");
    stripe_release(s);
    return HERALD_EINVAL;
  }
  if (!herald_cfg_bool(L, cfg, "createWebhook", 0)) wipe(s->api_key), s->api_key = NULL;
  if (!s->signing_secret && !s->api_key)
    herald_log(&src->log, HLOG_WARN, "no signingSecret: Stripe-Signature is not checked");
  return 0;
}

static int stripe_start(herald_source *src) {
  stripe *s = src->priv;
  int r = herald_whctx_start(&s->ctx);
  if (r) return r;
  if (s->api_key) herald_hooks_start(&s->hooks, src, &stripe_ops, s, 1, 0, 0);
  else s->hooks_stopped = 1;
  return 0;
}

static void maybe_done(stripe *s) {
  if (!s->ctx_stopped || !s->hooks_stopped) return;
  herald_source_stop_cb done = s->stop_done;
  herald_source *src = s->ctx.src;
  stripe_release(s);
  if (done) done(src);
}

static void ctx_stopped(herald_whctx *w) {
  stripe *s = w->data;
  s->ctx_stopped = 1;
  maybe_done(s);
}

static void hooks_stopped(herald_hooks *h) {
  stripe *s = h->ud;
  s->hooks_stopped = 1;
  maybe_done(s);
}

static void stripe_stop(herald_source *src, herald_source_stop_cb done) {
  stripe *s = src->priv;
  s->stop_done = done;
  /* hooks that never started (start failed, or the engine's did) have nothing to stop */
  int hooks = s->hooks.timer_open;
  if (!hooks) s->hooks_stopped = 1;
  herald_whctx_stop(&s->ctx, ctx_stopped);
  if (hooks) herald_hooks_stop(&s->hooks, hooks_stopped);
}

const herald_source_type herald_source_stripe = {
    .name = "stripe",
    .event_type = "stripe",
    .priv_size = sizeof(stripe),
    .init = stripe_init,
    .start = stripe_start,
    .stop = stripe_stop,
};
