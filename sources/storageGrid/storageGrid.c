/*
 * storageGrid.c: the `storageGrid` event source (Argo's StorageGridEventSource): NetApp
 * StorageGRID posts bucket notifications to an "endpoint" (an SNS-like topic URN) the way SNS
 * does: a form body Action=Publish&Message=<JSON>&TopicArn=...&Version=...
 *
 *   start (as Argo's PostActivate), through the tenant API with "Authorization: Bearer
 *     authToken", retried with backoff, never fatal:
 *     1. GET {apiURL}/org/endpoints -> an endpoint whose endpointURN is topicArn: reuse |
 *        none: POST {apiURL}/org/endpoints {displayName: event name, endpointURI: hook url,
 *        endpointURN: topicArn, authType: anonymous, insecureTLS: true}
 *     2. PUT {apiURL}/org/containers/{bucket}/notification {"notification": "<Notification
 *        Configuration><TopicConfiguration><Id>event name</Id><Topic>topicArn</Topic><Event>
 *        ...</Event>..."}
 *     Nothing is removed at stop (Argo's PostInactivate does nothing either).
 *   request: the form decoded as Argo's qson does (a value that is JSON becomes that JSON) and
 *     shaped as Argo's StorageGridNotification struct marshals (unknown fields dropped, missing
 *     ones zero) -> filter.prefix/suffix on Records[0].s3.object.key -> data
 *     {"notification":{...},"metadata":{...}}
 */
#include "webhookctx/webhookctx.h"

#include "common.h"
#include "engine.h"
#include "event.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct storagegrid {
  herald_whctx ctx;
  herald_hooks hooks;
  herald_source_stop_cb stop_done;
  int ctx_stopped, hooks_stopped;
  char *auth_header, *api, *hook_url, *topic, *bucket, *bucket_esc;
  char *prefix, *suffix;
  herald_buf notification; /* {"notification":"<NotificationConfiguration>..."} */
  herald_buf form;         /* scratch: one decoded form value */
} storagegrid;

static void wipe(char *s) {
  if (s) memset(s, 0, strlen(s)), free(s);
}

static void sg_release(storagegrid *g) {
  herald_whctx_release(&g->ctx);
  wipe(g->auth_header);
  free(g->api), free(g->hook_url), free(g->topic), free(g->bucket), free(g->bucket_esc);
  free(g->prefix), free(g->suffix);
  g->auth_header = g->api = g->hook_url = g->topic = g->bucket = g->bucket_esc = NULL;
  g->prefix = g->suffix = NULL;
  herald_buf_free(&g->notification);
  herald_buf_free(&g->form);
}

/* ---- Argo's StorageGridNotification, field by field, as encoding/json marshals it ---- */

enum { F_STR, F_INT, F_TIME, F_OBJ, F_ARR };
typedef struct field {
  const char *name;
  int kind;
  const struct field *sub; /* F_OBJ: its fields; F_ARR: the element's fields (objects) */
} field;

#define END {NULL, 0, NULL}
static const field f_principal[] = {{"principalId", F_STR, NULL}, END};
static const field f_reqp[] = {{"sourceIPAddress", F_STR, NULL}, END};
static const field f_resp[] = {{"x-amz-request-id", F_STR, NULL}, END};
static const field f_bucket[] = {{"name", F_STR, NULL}, {"ownerIdentity", F_OBJ, f_principal},
                                 {"arn", F_STR, NULL}, END};
static const field f_object[] = {{"key", F_STR, NULL}, {"size", F_INT, NULL},
                                 {"eTag", F_STR, NULL}, {"sequencer", F_STR, NULL}, END};
static const field f_s3[] = {{"s3SchemaVersion", F_STR, NULL}, {"configurationId", F_STR, NULL},
                             {"bucket", F_OBJ, f_bucket}, {"object", F_OBJ, f_object}, END};
static const field f_record[] = {{"eventVersion", F_STR, NULL},
                                 {"storageGridEventSource", F_STR, NULL},
                                 {"eventTime", F_TIME, NULL},
                                 {"eventName", F_STR, NULL},
                                 {"userIdentity", F_OBJ, f_principal},
                                 {"requestParameters", F_OBJ, f_reqp},
                                 {"responseElements", F_OBJ, f_resp},
                                 {"s3", F_OBJ, f_s3},
                                 END};
static const field f_message[] = {{"Records", F_ARR, f_record}, END};
static const field f_notification[] = {{"Action", F_STR, NULL}, {"Message", F_OBJ, f_message},
                                       {"TopicArn", F_STR, NULL}, {"Version", F_STR, NULL}, END};

/* Writes the value at the top of L as kind f; -1 when its type cannot unmarshal into it (Go's
 * json.Unmarshal then fails, and Argo drops the request). */
static int put_fields(herald_buf *o, lua_State *L, const field *fs);

static int put_value(herald_buf *o, lua_State *L, const field *f) {
  int t = lua_type(L, -1);
  int absent = t == LUA_TNIL || t == LUA_TLIGHTUSERDATA; /* missing or JSON null: zero value */
  switch (f->kind) {
  case F_STR:
  case F_TIME:
    if (absent) {
      herald_buf_puts(o, f->kind == F_STR ? "\"\"" : "\"0001-01-01T00:00:00Z\"");
      return 0;
    }
    if (t != LUA_TSTRING) return -1;
    herald_buf_json_string(o, lua_tostring(L, -1), lua_objlen(L, -1));
    return 0;
  case F_INT:
    if (absent) {
      herald_buf_putc(o, '0');
      return 0;
    }
    if (t != LUA_TNUMBER) return -1;
    herald_buf_printf(o, "%.0f", lua_tonumber(L, -1));
    return 0;
  case F_OBJ:
    if (absent) {
      lua_pop(L, 1);
      lua_newtable(L);
    } else if (t != LUA_TTABLE) {
      return -1;
    }
    return put_fields(o, L, f->sub);
  case F_ARR:
    if (absent) {
      herald_buf_puts(o, "null");
      return 0;
    }
    if (t != LUA_TTABLE) return -1;
    herald_buf_putc(o, '[');
    int n = (int)lua_objlen(L, -1);
    for (int i = 1; i <= n; i++) {
      if (i > 1) herald_buf_putc(o, ',');
      lua_rawgeti(L, -1, i);
      field el = {NULL, F_OBJ, f->sub};
      int r = put_value(o, L, &el);
      lua_pop(L, 1);
      if (r) return r;
    }
    herald_buf_putc(o, ']');
    return 0;
  }
  return -1;
}

static int put_fields(herald_buf *o, lua_State *L, const field *fs) {
  herald_buf_putc(o, '{');
  for (const field *f = fs; f->name; f++) {
    if (f != fs) herald_buf_putc(o, ',');
    herald_json_str(o, f->name);
    herald_buf_putc(o, ':');
    lua_getfield(L, -1, f->name);
    int r = put_value(o, L, f);
    lua_pop(L, 1);
    if (r) return r;
  }
  herald_buf_putc(o, '}');
  return 0;
}

/* Records[0].s3.object.key of the notification table at the top of L, or NULL. */
static const char *first_key(lua_State *L) {
  static const char *const path[] = {"Message", "Records", NULL, "s3", "object", "key"};
  int top = lua_gettop(L);
  const char *k = NULL;
  lua_pushvalue(L, -1);
  for (size_t i = 0; i < sizeof path / sizeof *path; i++) {
    if (!lua_istable(L, -1)) goto out;
    if (path[i]) lua_getfield(L, -1, path[i]);
    else lua_rawgeti(L, -1, 1);
  }
  if (lua_type(L, -1) == LUA_TSTRING) k = lua_tostring(L, -1); /* kept alive by the table */
out:
  lua_settop(L, top);
  return k;
}

static int ends_with(const char *s, const char *suf) {
  size_t n = strlen(s), m = strlen(suf);
  return n >= m && memcmp(s + n - m, suf, m) == 0;
}

static void on_request(herald_whctx *w, herald_http_req *req) {
  storagegrid *g = w->data;
  lua_State *L = w->src->engine->L;
  int top = lua_gettop(L);
  /* the form as qson decodes it: each field's value, JSON when it parses as JSON */
  lua_newtable(L);
  static const char *const keys[] = {"Action", "Message", "TopicArn", "Version"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
    herald_buf_reset(&g->form);
    if (herald_whctx_form_get(req->body, req->body_len, keys[i], &g->form) != 0) continue;
    if (g->form.len && herald_json_push(L, g->form.data, g->form.len) == 0) {
      /* ok: the JSON value */
    } else {
      lua_pushlstring(L, g->form.data ? g->form.data : "", g->form.len);
    }
    lua_setfield(L, -2, keys[i]);
  }
  herald_buf *d = &w->buf;
  herald_buf_reset(d);
  herald_buf_puts(d, "{\"notification\":");
  field root = {NULL, F_OBJ, f_notification};
  if (put_value(d, L, &root) != 0) {
    lua_settop(L, top);
    herald_whctx_reject(w, req, 400, HERALD_WHCTX_BAD_REQUEST, "not a StorageGRID notification");
    return;
  }
  int pass = 1;
  if ((g->prefix && *g->prefix) || (g->suffix && *g->suffix)) {
    const char *k = first_key(L);
    pass = k && (!g->prefix || strncmp(k, g->prefix, strlen(g->prefix)) == 0) &&
           (!g->suffix || ends_with(k, g->suffix));
  }
  lua_settop(L, top);
  if (!pass) {
    /* StorageGRID must not retry it: 200, no event, counted as ignored */
    herald_whctx_reject(w, req, 200, HERALD_WHCTX_IGNORED, "filtered out");
    return;
  }
  if (w->metadata_json) herald_buf_puts(d, w->metadata_json);
  herald_buf_putc(d, '}');
  herald_whctx_emit(w, req, d->data, d->len);
}

/* ---- registration: target 0 the endpoint, target 1 the bucket's notification ---- */

static const char *op_target(void *ud, size_t i) {
  storagegrid *g = ud;
  return i == 0 ? g->topic : g->bucket;
}

static void set_auth(storagegrid *g, herald_hook_req *r) {
  r->headers[0] = g->auth_header;
  r->headers[1] = "Content-Type: application/json";
  r->headers[2] = "Accept: application/json";
}

static void op_list(void *ud, size_t i, herald_hook_req *r) {
  storagegrid *g = ud;
  set_auth(g, r);
  if (i == 0) herald_buf_printf(&r->url, "%s/org/endpoints", g->api);
  else herald_buf_printf(&r->url, "%s/org/containers/%s/notification", g->api, g->bucket_esc);
}

static int op_find(void *ud, size_t i, lua_State *L, int idx, char **id) {
  storagegrid *g = ud;
  if (!lua_istable(L, idx)) return -2;
  if (i == 1) { /* the bucket's configuration is always put (as Argo) */
    *id = herald_xstrdup(g->bucket);
    return 1;
  }
  lua_getfield(L, idx, "data");
  int data = lua_gettop(L), found = -1;
  for (int k = 1; lua_istable(L, data); k++) {
    lua_rawgeti(L, data, k);
    if (!lua_istable(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    if (strcmp(herald_cfg_string(L, -1, "endpointURN", ""), g->topic) == 0) {
      *id = herald_lua_strfield(L, -1, "id");
      if (!*id) *id = herald_xstrdup(g->topic);
      found = 0;
    }
    lua_pop(L, 1);
    if (found == 0) break;
  }
  lua_pop(L, 1);
  return found;
}

static void op_create(void *ud, size_t i, herald_hook_req *r) {
  storagegrid *g = ud;
  (void)i; /* only the endpoint is created: the notification is found (put) always */
  set_auth(g, r);
  r->method = "POST";
  herald_buf_printf(&r->url, "%s/org/endpoints", g->api);
  herald_buf *b = &r->body;
  herald_buf_puts(b, "{\"displayName\":");
  herald_json_str(b, g->ctx.src->event_name);
  herald_buf_puts(b, ",\"endpointURI\":");
  herald_json_str(b, g->hook_url);
  herald_buf_puts(b, ",\"endpointURN\":");
  herald_json_str(b, g->topic);
  herald_buf_puts(b, ",\"authType\":\"anonymous\",\"insecureTLS\":true}");
  r->has_body = 1;
}

static void op_update(void *ud, size_t i, const char *id, herald_hook_req *r) {
  storagegrid *g = ud;
  (void)i, (void)id;
  set_auth(g, r);
  r->method = "PUT";
  herald_buf_printf(&r->url, "%s/org/containers/%s/notification", g->api, g->bucket_esc);
  herald_buf_append(&r->body, g->notification.data, g->notification.len);
  r->has_body = 1;
}

static char *op_id_of(void *ud, size_t i, lua_State *L, int idx) {
  (void)ud, (void)i;
  if (!lua_istable(L, idx)) return NULL;
  lua_getfield(L, idx, "data");
  char *id = lua_istable(L, -1) ? herald_lua_strfield(L, -1, "id") : NULL;
  lua_pop(L, 1);
  return id;
}

static void op_remove(void *ud, size_t i, const char *id, herald_hook_req *r) {
  (void)ud, (void)i, (void)id, (void)r; /* never called: nothing is deleted at stop */
}

static const herald_hooks_ops sg_ops = {
    .target = op_target, .list = op_list, .find = op_find, .create = op_create,
    .update = op_update, .id_of = op_id_of, .remove = op_remove,
};

/* ---- lifecycle ---- */

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

static int sg_init(herald_source *src, lua_State *L, int cfg_idx) {
  storagegrid *g = src->priv;
  int cfg = abs_index(L, cfg_idx);
  lua_getfield(L, cfg, "webhook");
  int r = herald_whctx_init(&g->ctx, src, L, -1, on_request, g);
  lua_pop(L, 1);
  if (r) return r;
  int err = 0;
  r = herald_whctx_read_metadata(&g->ctx, L, cfg);
  char *tok = r ? NULL : herald_secret_field(src->engine, &src->log, L, cfg, "authToken", "authToken", &err);
  if (r || err) {
    sg_release(g);
    return r ? r : err;
  }
  if (tok) {
    herald_buf h = HERALD_BUF_INIT;
    herald_buf_printf(&h, "Authorization: Bearer %s", tok);
    g->auth_header = h.data;
    wipe(tok);
  }
  const char *api = herald_cfg_string(L, cfg, "apiURL", "");
  size_t al = strlen(api);
  while (al && api[al - 1] == '/') al--;
  g->api = herald_xstrndup(api, al);
  g->topic = herald_xstrdup(herald_cfg_string(L, cfg, "topicArn", ""));
  g->bucket = herald_xstrdup(herald_cfg_string(L, cfg, "bucket", ""));
  CURL *c = curl_easy_init();
  char *e = curl_easy_escape(c, g->bucket, 0);
  g->bucket_esc = herald_xstrdup(e ? e : "");
  curl_free(e);
  curl_easy_cleanup(c);
  lua_getfield(L, cfg, "filter");
  if (lua_istable(L, -1)) {
    g->prefix = herald_xstrdup(herald_cfg_string(L, -1, "prefix", ""));
    g->suffix = herald_xstrdup(herald_cfg_string(L, -1, "suffix", ""));
  }
  lua_pop(L, 1);
  g->hook_url = herald_whctx_hook_url(&g->ctx);
  /* Argo's notificationBodyTemplate: the XML StorageGRID's S3 PutBucketNotification takes */
  herald_buf x = HERALD_BUF_INIT;
  herald_buf_printf(&x, "\n<NotificationConfiguration>\n\t<TopicConfiguration>\n\t  <Id>%s</Id>\n"
                        "\t  <Topic>%s</Topic>\n\t  ", src->event_name, g->topic);
  lua_getfield(L, cfg, "events");
  for (int i = 1; lua_istable(L, -1); i++) {
    lua_rawgeti(L, -1, i);
    const char *ev = lua_tostring(L, -1);
    if (ev) herald_buf_printf(&x, "%s<Event>%s</Event>", i > 1 ? "\n" : "", ev);
    lua_pop(L, 1);
    if (!ev) break;
  }
  lua_pop(L, 1);
  herald_buf_puts(&x, "\n\t</TopicConfiguration>\n</NotificationConfiguration>\n\n");
  herald_buf_puts(&g->notification, "{\"notification\":");
  herald_buf_json_string(&g->notification, x.data, x.len);
  herald_buf_putc(&g->notification, '}');
  herald_buf_free(&x);
  return 0;
}

static int sg_start(herald_source *src) {
  storagegrid *g = src->priv;
  int r = herald_whctx_start(&g->ctx);
  if (r) return r;
  if (g->auth_header && g->hook_url && *g->api)
    herald_hooks_start(&g->hooks, src, &sg_ops, g, 2, 0, 0);
  else
    g->hooks_stopped = 1;
  return 0;
}

static void maybe_done(storagegrid *g) {
  if (!g->ctx_stopped || !g->hooks_stopped) return;
  herald_source_stop_cb done = g->stop_done;
  herald_source *src = g->ctx.src;
  sg_release(g);
  if (done) done(src);
}

static void ctx_stopped(herald_whctx *w) {
  storagegrid *g = w->data;
  g->ctx_stopped = 1;
  maybe_done(g);
}

static void hooks_stopped(herald_hooks *h) {
  storagegrid *g = h->ud;
  g->hooks_stopped = 1;
  maybe_done(g);
}

static void sg_stop(herald_source *src, herald_source_stop_cb done) {
  storagegrid *g = src->priv;
  g->stop_done = done;
  int hooks = g->hooks.timer_open;
  if (!hooks) g->hooks_stopped = 1;
  herald_whctx_stop(&g->ctx, ctx_stopped);
  if (hooks) herald_hooks_stop(&g->hooks, hooks_stopped);
}

const herald_source_type herald_source_storageGrid = {
    .name = "storageGrid",
    .event_type = "storagegrid", /* Argo's StorageGridEvent */
    .priv_size = sizeof(storagegrid),
    .init = sg_init,
    .start = sg_start,
    .stop = sg_stop,
};
