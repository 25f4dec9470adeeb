/*
 * slack.c: the `slack` event source (Argo's SlackEventSource).
 *
 *   request -> signingSecret set: X-Slack-Request-Timestamp within 5 minutes of now (else a
 *     replay: 401) and X-Slack-Signature = "v0=" + hex HMAC-SHA256("v0:" ts ":" body),
 *     compared in constant time (else 401)
 *   -> form body: `payload` (an interaction) -> data: the payload's JSON
 *                 `command` (a slash command) -> data: the command's fields (slack-go's
 *                 SlashCommand)
 *   -> JSON body: `token` checked against the verification token when one is set;
 *                 url_verification -> answer the challenge, no event;
 *                 event_callback -> data: {"type": <inner type>, "Data": <inner event>}
 *                 (slack-go's EventsAPIInnerEvent); other types -> 200, no event
 */
#include "webhookctx/webhookctx.h"

#include "common.h"
#include "engine.h"
#include "event.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_AGE_S (5 * 60)

typedef struct slack {
  herald_whctx ctx;
  herald_source_stop_cb stop_done;
  char *signing_secret, *token;
} slack;

static void wipe(char *s) {
  if (s) memset(s, 0, strlen(s)), free(s);
}

static void slack_release(slack *s) {
  herald_whctx_release(&s->ctx);
  wipe(s->signing_secret), wipe(s->token);
  s->signing_secret = s->token = NULL;
}

static int verify(slack *s, herald_whctx *w, herald_http_req *req) {
  const herald_http_header *ts = herald_http_req_header(req, "x-slack-request-timestamp");
  const herald_http_header *sig = herald_http_req_header(req, "x-slack-signature");
  if (!ts || !sig || !ts->value_len || !sig->value_len) {
    herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "missing signature headers");
    return -1;
  }
  char tsbuf[24];
  size_t tl = ts->value_len < sizeof tsbuf - 1 ? ts->value_len : sizeof tsbuf - 1;
  memcpy(tsbuf, ts->value, tl);
  tsbuf[tl] = '\0';
  char *end;
  long long t = strtoll(tsbuf, &end, 10);
  long long now = (long long)time(NULL);
  if (*end || tl == 0) {
    herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "bad timestamp");
    return -1;
  }
  if (t > now + MAX_AGE_S || t < now - MAX_AGE_S) {
    herald_whctx_reject(w, req, 401, HERALD_WHCTX_REPLAY, "timestamp too old (or too far ahead): refused as a replay");
    return -1;
  }
  herald_iov parts[4] = {{"v0:", 3}, {ts->value, ts->value_len}, {":", 1}, {req->body, req->body_len}};
  if (sig->value_len < 3 || memcmp(sig->value, "v0=", 3) != 0 ||
      !herald_hmac_hex_ok("sha256", s->signing_secret, strlen(s->signing_secret), parts, 4,
                          sig->value + 3, sig->value_len - 3)) {
    herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "signature check failed");
    return -1;
  }
  return 0;
}

/* Slash command fields as slack-go's SlashCommand marshals them (omitempty on enterprise_*). */
static void put_command(herald_buf *d, const char *b, size_t n) {
  static const char *const fields[] = {"token", "team_id", "team_domain", "enterprise_id",
                                       "enterprise_name", "is_enterprise_install", "channel_id",
                                       "channel_name", "user_id", "user_name", "command", "text",
                                       "response_url", "trigger_id", "api_app_id"};
  herald_buf v = HERALD_BUF_INIT;
  herald_buf_putc(d, '{');
  int first = 1;
  for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
    herald_buf_reset(&v);
    int have = herald_whctx_form_get(b, n, fields[i], &v) == 0;
    if (!have && (i == 3 || i == 4)) continue;
    if (!first) herald_buf_putc(d, ',');
    first = 0;
    herald_json_str(d, fields[i]);
    herald_buf_putc(d, ':');
    if (i == 5) herald_buf_puts(d, have && v.len == 4 && memcmp(v.data, "true", 4) == 0 ? "true" : "false");
    else herald_buf_json_string(d, v.data ? v.data : "", v.len);
  }
  herald_buf_putc(d, '}');
  herald_buf_free(&v);
}

static void on_request(herald_whctx *w, herald_http_req *req) {
  slack *s = w->data;
  if (s->signing_secret && *s->signing_secret && verify(s, w, req) != 0) return;
  herald_buf *d = &w->buf;
  herald_buf_reset(d);
  if (herald_whctx_is_form(herald_http_req_header(req, "content-type"))) {
    herald_buf v = HERALD_BUF_INIT;
    if (herald_whctx_form_get(req->body, req->body_len, "payload", &v) == 0 && v.len) {
      if (!herald_json_valid(v.data, v.len, 64)) {
        herald_buf_free(&v);
        herald_whctx_reject(w, req, 500, HERALD_WHCTX_BAD_REQUEST, "failed to parse interaction event");
        return;
      }
      herald_buf_append(d, v.data, v.len);
    } else {
      herald_buf_reset(&v);
      if (herald_whctx_form_get(req->body, req->body_len, "command", &v) != 0 || !v.len) {
        herald_buf_free(&v);
        herald_whctx_reject(w, req, 500, HERALD_WHCTX_BAD_REQUEST, "could not determine slack type from form parameters");
        return;
      }
      put_command(d, req->body, req->body_len);
    }
    herald_buf_free(&v);
    herald_whctx_emit(w, req, d->data, d->len);
    return;
  }
  lua_State *L = w->src->engine->L;
  int top = lua_gettop(L);
  if (herald_json_push(L, req->body, req->body_len) != 0 || !lua_istable(L, -1)) {
    lua_settop(L, top);
    herald_whctx_reject(w, req, 500, HERALD_WHCTX_BAD_REQUEST, "failed to extract event");
    return;
  }
  int t = lua_gettop(L);
  if (s->token && *s->token) {
    lua_getfield(L, t, "token");
    size_t tl = 0;
    const char *tok = lua_tolstring(L, -1, &tl);
    int ok = tok && herald_ct_equal(tok, tl, s->token, strlen(s->token));
    lua_pop(L, 1);
    if (!ok) {
      lua_settop(L, top);
      herald_whctx_reject(w, req, 401, HERALD_WHCTX_BAD_SIGNATURE, "invalid verification token");
      return;
    }
  }
  const char *type = herald_cfg_string(L, t, "type", "");
  if (strcmp(type, "url_verification") == 0) {
    size_t cl = 0;
    lua_getfield(L, t, "challenge");
    const char *c = lua_tolstring(L, -1, &cl);
    herald_http_respond(req, 200, "text", NULL, c ? c : "", c ? cl : 0);
    lua_settop(L, top);
    return;
  }
  if (strcmp(type, "event_callback") != 0) {
    lua_settop(L, top);
    herald_http_respond(req, 200, "text/plain; charset=utf-8", NULL, "success", 7);
    return;
  }
  lua_settop(L, top);
  /* re-encode the inner event with cjson: the sender's text of a nested value is not at hand
   * without a second parser, and cjson keeps every field Slack sent */
  herald_json_push(L, req->body, req->body_len);
  lua_getfield(L, -1, "event");
  if (!lua_istable(L, -1)) {
    lua_settop(L, top);
    herald_whctx_reject(w, req, 500, HERALD_WHCTX_BAD_REQUEST, "event_callback without an event");
    return;
  }
  const char *itype = herald_cfg_string(L, -1, "type", "");
  herald_buf_puts(d, "{\"type\":");
  herald_json_str(d, itype);
  herald_buf_puts(d, ",\"Data\":");
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    lua_settop(L, top);
    herald_whctx_reject(w, req, 500, HERALD_WHCTX_BAD_REQUEST, "cannot encode the event");
    return;
  }
  lua_getfield(L, -1, "encode");
  lua_pushvalue(L, -3);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    lua_settop(L, top);
    herald_whctx_reject(w, req, 500, HERALD_WHCTX_BAD_REQUEST, "cannot encode the event");
    return;
  }
  size_t el;
  const char *enc = lua_tolstring(L, -1, &el);
  herald_buf_append(d, enc, el);
  herald_buf_putc(d, '}');
  lua_settop(L, top);
  herald_whctx_emit(w, req, d->data, d->len);
}

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

static int slack_init(herald_source *src, lua_State *L, int cfg_idx) {
  slack *s = src->priv;
  int cfg = abs_index(L, cfg_idx);
  lua_getfield(L, cfg, "webhook");
  int r = herald_whctx_init(&s->ctx, src, L, -1, on_request, s);
  lua_pop(L, 1);
  if (r) return r;
  int err = 0;
  r = herald_whctx_read_metadata(&s->ctx, L, cfg);
  if (!r) s->signing_secret = herald_secret_field(src->engine, &src->log, L, cfg, "signingSecret", "signingSecret", &err);
  if (!r && !err) s->token = herald_secret_field(src->engine, &src->log, L, cfg, "token", "token", &err);
  if (r || err) {
    slack_release(s);
    return r ? r : err;
  }
  if (!s->signing_secret)
    herald_log(&src->log, HLOG_WARN, "no signingSecret: requests are not authenticated");
  return 0;
}

static int slack_start(herald_source *src) {
  slack *s = src->priv;
  return herald_whctx_start(&s->ctx);
}

static void stopped(herald_whctx *w) {
  slack *s = w->data;
  herald_source_stop_cb done = s->stop_done;
  slack_release(s);
  if (done) done(w->src);
}

static void slack_stop(herald_source *src, herald_source_stop_cb done) {
  slack *s = src->priv;
  s->stop_done = done;
  herald_whctx_stop(&s->ctx, stopped);
}

const herald_source_type herald_source_slack = {
    .name = "slack",
    .event_type = "slack",
    .priv_size = sizeof(slack),
    .init = slack_init,
    .start = slack_start,
    .stop = slack_stop,
};
