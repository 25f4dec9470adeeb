/*
 * triggers/slack: posts a message with Slack's Web API (chat.postMessage) for each firing.
 *
 *   execute(action{spec}) -> JSON body {channel, text, attachments, blocks, username,
 *   icon_emoji|icon_url, thread_ts, reply_broadcast} -> POST <api>/chat.postMessage with
 *   "Authorization: Bearer <slackToken>" -> curl multi (curl_loop.c) -> result:
 *      200 and "ok": true    done (the message ts is kept for thread aggregation)
 *      200 and "ok": false   failed, with Slack's "error" (channel_not_found, invalid_auth ...)
 *      429, 5xx, transport   retry
 *      other statuses        failed
 *
 * Like Argo (through argoproj/notifications-engine): a leading '#' of the channel is dropped;
 * attachments and blocks are JSON strings; thread.messageAggregationKey posts every later
 * message with the same key as a reply in the thread of the first one (in this process), and
 * thread.broadcastMessageToChannel also shows those replies in the channel; sender.icon is an
 * icon URL when it starts with http(s)://, else an emoji name. Unlike Argo, the trigger's own
 * `parameters` are applied (the sensor runtime does it before execute).
 * The API base comes from HERALD_SLACK_API_URL (default https://slack.com/api).
 */
#include "buf.h"
#include "common.h"
#include "curl_loop.h"
#include "engine.h"
#include "event.h"
#include "plugin.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TIMEOUT_MS 30000L

typedef struct slack_req slack_req;

typedef struct thread_ts {
  char *key; /* channel + '\0'-free separator + aggregation key */
  char *ts;
  struct thread_ts *next;
} thread_ts;

typedef struct slack_trigger {
  char *token;
  char *url; /* <api>/chat.postMessage */
  thread_ts *threads;
  slack_req *inflight;
  int refd;
} slack_trigger;

struct slack_req {
  herald_curl_xfer x; /* x.data = this */
  herald_trigger_req *req;
  slack_trigger *st;
  struct curl_slist *headers;
  char *body;
  char *thread_key; /* set when this post should record its ts */
  herald_buf response;
  slack_req *next, *prev;
};

static int slack_init(herald_trigger *t, lua_State *L, int idx) {
  slack_trigger *st = t->priv;
  int err;
  st->token = herald_secret_field(t->engine, &t->log, L, idx, "slackToken", "slack.slackToken", &err);
  if (!st->token || !*st->token) {
    if (!err) /* otherwise logged */
      herald_log(&t->log, HLOG_ERROR, "slack.slackToken: %s",
                 st->token ? "the secret is empty" : "is required");
    free(st->token);
    return HERALD_EINVAL;
  }
  const char *api = getenv("HERALD_SLACK_API_URL");
  if (!api || !*api) api = "https://slack.com/api";
  size_t n = strlen(api);
  while (n > 0 && api[n - 1] == '/') n--;
  st->url = herald_xasprintf("%.*s/chat.postMessage", (int)n, api);
  if (herald_curl_loop_ref(t->engine->loop) != 0) {
    free(st->token), free(st->url);
    return HERALD_ENOMEM;
  }
  st->refd = 1;
  return 0;
}

static void req_release(slack_req *r) {
  slack_trigger *st = r->st;
  if (r->prev) r->prev->next = r->next;
  else st->inflight = r->next;
  if (r->next) r->next->prev = r->prev;
  herald_curl_xfer_release(&r->x);
  curl_slist_free_all(r->headers);
  free(r->body), free(r->thread_key);
  herald_buf_free(&r->response);
}

static void req_finish(slack_req *r, herald_trigger_result res, const char *reason) {
  herald_trigger_req *req = r->req;
  req_release(r);
  req->done(req, res, res == HERALD_TRIGGER_DONE ? NULL : reason);
}

/* Finds the first member `key` of the JSON text and returns a pointer to its value (after the
 * colon and spaces), or NULL. Enough for Slack's flat response objects. */
static const char *json_member(const char *json, const char *key) {
  size_t kl = strlen(key);
  for (const char *p = json; (p = strchr(p, '"')); p++) {
    if (strncmp(p + 1, key, kl) == 0 && p[kl + 1] == '"') {
      const char *v = p + kl + 2;
      while (*v == ' ' || *v == '\n' || *v == '\t' || *v == '\r') v++;
      if (*v != ':') continue;
      v++;
      while (*v == ' ' || *v == '\n' || *v == '\t' || *v == '\r') v++;
      return v;
    }
  }
  return NULL;
}

/* The string value of member key (no unescaping beyond \" and \\), new string or NULL. */
static char *json_string(const char *json, const char *key) {
  const char *v = json_member(json, key);
  if (!v || *v != '"') return NULL;
  herald_buf b = HERALD_BUF_INIT;
  for (v++; *v && *v != '"'; v++) {
    if (*v == '\\' && v[1]) v++;
    herald_buf_putc(&b, *v);
  }
  char *s = herald_xstrndup(b.data ? b.data : "", b.len);
  herald_buf_free(&b);
  return s;
}

static void remember_thread(slack_trigger *st, const char *key, const char *ts) {
  for (thread_ts *th = st->threads; th; th = th->next)
    if (strcmp(th->key, key) == 0) return;
  thread_ts *th = herald_xcalloc(1, sizeof *th);
  th->key = herald_xstrdup(key);
  th->ts = herald_xstrdup(ts);
  th->next = st->threads;
  st->threads = th;
}

static const char *find_thread(slack_trigger *st, const char *key) {
  for (thread_ts *th = st->threads; th; th = th->next)
    if (strcmp(th->key, key) == 0) return th->ts;
  return NULL;
}

static void on_done(herald_curl_xfer *x, CURLcode rc) {
  slack_req *r = x->data;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  char reason[512];
  const char *body = herald_buf_cstr(&r->response);
  if (rc != CURLE_OK) {
    snprintf(reason, sizeof reason, "slack chat.postMessage: %s",
             x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
    req_finish(r, HERALD_TRIGGER_RETRY, reason);
    return;
  }
  if (status < 200 || status >= 300) {
    snprintf(reason, sizeof reason, "slack chat.postMessage: status %ld: %.200s", status, body);
    req_finish(r, status == 429 || status >= 500 ? HERALD_TRIGGER_RETRY : HERALD_TRIGGER_FAILED,
               reason);
    return;
  }
  const char *ok = json_member(body, "ok");
  if (!ok || strncmp(ok, "true", 4) != 0) {
    char *err = json_string(body, "error");
    snprintf(reason, sizeof reason, "slack chat.postMessage: %s", err ? err : "response without \"ok\": true");
    free(err);
    req_finish(r, HERALD_TRIGGER_FAILED, reason);
    return;
  }
  if (r->thread_key) {
    char *ts = json_string(body, "ts");
    if (ts) remember_thread(r->st, r->thread_key, ts);
    free(ts);
  }
  req_finish(r, HERALD_TRIGGER_DONE, NULL);
}

/* Appends ,"name":<string field of table idx> when the field is a non-empty string. */
static void put_str(herald_buf *b, lua_State *L, int idx, const char *field, const char *name) {
  size_t n = 0;
  lua_getfield(L, idx, field);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
  if (s && n) {
    herald_buf_printf(b, ",\"%s\":", name);
    herald_buf_json_string(b, s, n);
  }
  lua_pop(L, 1);
}

/* Appends ,"name":<raw JSON> from a JSON-string field. Returns 0, or -1 if it is not JSON. */
static int put_raw_json(herald_buf *b, lua_State *L, int idx, const char *field) {
  size_t n = 0;
  lua_getfield(L, idx, field);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
  int rc = 0;
  if (s && n) {
    if (herald_json_valid(s, n, 64)) {
      herald_buf_printf(b, ",\"%s\":", field);
      herald_buf_append(b, s, n);
    } else {
      rc = -1;
    }
  }
  lua_pop(L, 1);
  return rc;
}

/* action: {spec = <slack spec after parameters>} */
static int slack_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  slack_trigger *st = t->priv;
  slack_req *r = req->priv;
  memset(r, 0, sizeof *r);
  r->req = req;
  r->st = st;
  lua_getfield(L, idx, "spec");
  int spec = lua_gettop(L);
  if (!lua_istable(L, spec)) {
    lua_pop(L, 1);
    return HERALD_EINVAL;
  }
  const char *channel = herald_cfg_string(L, spec, "channel", "");
  while (*channel == '#') channel++;
  if (!*channel) {
    herald_log_limited(&t->log, HLOG_ERROR, "slack.channel is empty");
    lua_pop(L, 1);
    return HERALD_EINVAL;
  }
  herald_buf body = HERALD_BUF_INIT;
  herald_buf_puts(&body, "{\"channel\":");
  herald_buf_json_string(&body, channel, strlen(channel));
  put_str(&body, L, spec, "message", "text");
  const char *bad = NULL;
  if (put_raw_json(&body, L, spec, "attachments") != 0) bad = "attachments";
  if (put_raw_json(&body, L, spec, "blocks") != 0) bad = "blocks";
  if (bad) {
    herald_log_limited(&t->log, HLOG_ERROR, "slack.%s is not valid JSON", bad);
    herald_buf_free(&body);
    lua_pop(L, 1);
    return HERALD_EINVAL;
  }
  lua_getfield(L, spec, "sender");
  if (lua_istable(L, -1)) {
    int s = lua_gettop(L);
    put_str(&body, L, s, "username", "username");
    const char *icon = herald_cfg_string(L, s, "icon", NULL);
    if (icon && *icon) {
      int url = strncmp(icon, "http://", 7) == 0 || strncmp(icon, "https://", 8) == 0;
      herald_buf_puts(&body, url ? ",\"icon_url\":" : ",\"icon_emoji\":");
      herald_buf_json_string(&body, icon, strlen(icon));
    }
  }
  lua_pop(L, 1);
  lua_getfield(L, spec, "thread");
  if (lua_istable(L, -1)) {
    int th = lua_gettop(L);
    const char *key = herald_cfg_string(L, th, "messageAggregationKey", NULL);
    if (key && *key) {
      char *k = herald_xasprintf("%s\n%s", channel, key);
      const char *ts = find_thread(st, k);
      if (ts) {
        herald_buf_puts(&body, ",\"thread_ts\":");
        herald_buf_json_string(&body, ts, strlen(ts));
        if (herald_cfg_bool(L, th, "broadcastMessageToChannel", 0))
          herald_buf_puts(&body, ",\"reply_broadcast\":true");
        free(k);
      } else {
        r->thread_key = k;
      }
    }
  }
  lua_pop(L, 2); /* thread, spec */
  herald_buf_putc(&body, '}');
  r->body = herald_xstrndup(body.data, body.len);
  size_t blen = body.len;
  herald_buf_free(&body);

  if (herald_curl_xfer_init(&r->x) != 0) {
    free(r->body), free(r->thread_key);
    return HERALD_ENOMEM;
  }
  r->x.data = r;
  r->next = st->inflight;
  if (st->inflight) st->inflight->prev = r;
  st->inflight = r;
  char *auth = herald_xasprintf("Authorization: Bearer %s", st->token);
  r->headers = curl_slist_append(r->headers, auth);
  free(auth);
  r->headers = curl_slist_append(r->headers, "Content-Type: application/json; charset=utf-8");
  r->headers = curl_slist_append(r->headers, "Expect:");
  CURL *e = r->x.easy;
  herald_curl_xfer_url(&r->x, st->url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, herald_curl_keep_head);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->response);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, TIMEOUT_MS);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  if (herald_curl_xfer_start(&r->x, on_done) != 0) {
    req_release(r);
    return HERALD_EIO;
  }
  return 0;
}

static void slack_close(herald_trigger *t, herald_trigger_close_cb done) {
  slack_trigger *st = t->priv;
  while (st->inflight) req_finish(st->inflight, HERALD_TRIGGER_FAILED, "engine stopped");
  while (st->threads) {
    thread_ts *th = st->threads;
    st->threads = th->next;
    free(th->key), free(th->ts), free(th);
  }
  if (st->refd) herald_curl_loop_unref();
  free(st->token), free(st->url);
  done(t);
}

const herald_trigger_type herald_trigger_slack = {
    .name = "slack",
    .priv_size = sizeof(slack_trigger),
    .req_size = sizeof(slack_req),
    .init = slack_init,
    .execute = slack_execute,
    .close = slack_close,
};
