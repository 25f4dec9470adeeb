/*
 * sources/pubSub/pubSub.c: Argo's `pubSub` event source (GCP Pub/Sub), pulling over Pub/Sub's
 * REST API on the curl loop (lib/cloud): no gRPC runtime.
 *
 *   start -> [projectID from the metadata server] -> [access token] -> subscription check:
 *     emulator: GET subscription; else :testIamPermissions (Argo's trick: no get permission
 *     needed) -> exists: verify its topic (when one is given) | missing: create it, creating
 *     the topic first when that is missing too -> running
 *   running: PULLS pulls in flight, each for up to PULL_MAX messages while fewer than
 *     MAX_OUTSTANDING are unacknowledged -> each message -> event data {id, body, attributes,
 *     publishTime[, metadata]} -> herald_source_emit_id (the id hashed from the subscription and
 *     the message id, so a redelivery is the same CloudEvent) -> on the bus: its ackId joins
 *     the ack batch; one :acknowledge request at a time carries everything batched meanwhile.
 *   the bus full: messages wait here in order, pulling stops, herald_source_when_room resumes.
 *   every DEADLINE_TICK_MS, messages received more than EXTEND_AFTER_S ago and not yet on the
 *     bus get :modifyAckDeadline (EXTEND_TO_S), so a slow bus does not cause redelivery.
 *   any failure -> "not connected", connectionBackoff, then setup again from the check (a
 *     restarted emulator has lost the subscription: it is created again).
 *   stop: pulls abandoned (their messages come back after the ack deadline), acks flushed (at
 *     most STOP_FLUSH_MS), the subscription deleted with deleteSubscriptionOnFinish, then done.
 *
 * Credentials: PUBSUB_EMULATOR_HOST set -> that host over http, no auth (as Google's clients);
 * credentialSecret (a service-account JSON key) or the file GOOGLE_APPLICATION_CREDENTIALS
 * names -> a JWT signed RS256 traded at the key's token_uri for an access token; otherwise the
 * metadata server's token (GKE workload identity, GCE). Tokens are refreshed before expiry.
 */
#include "buf.h"
#include "cloud/cloud.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"
#include "sigv4.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PULLS 2
#define PULL_MAX 1000
#define MAX_OUTSTANDING 4000
#define ACK_BATCH 2000 /* ackIds per :acknowledge (the API allows 512 KB per request) */
#define PULL_TIMEOUT_MS 90000L
#define API_TIMEOUT_MS 30000L
#define DEADLINE_TICK_MS 2000
#define EXTEND_AFTER_S 5 /* the smallest ack deadline is 10 s */
#define EXTEND_TO_S 20 /* short: after a crash, what was pending comes back soon */
#define STOP_FLUSH_MS 2000
#define SCOPE "https://www.googleapis.com/auth/pubsub"
#define DEFAULT_TOKEN_URI "https://oauth2.googleapis.com/token"

typedef struct pmsg pmsg;
typedef struct pubsub pubsub;

/* One received message not yet acknowledged. */
struct pmsg {
  pubsub *ps;
  pmsg *prev, *next;  /* the outstanding list, oldest first */
  char *ack_id;
  char *data;         /* the event data while it waits for room on the bus, else NULL */
  size_t len;
  char id[33];        /* the CloudEvent id */
  uint64_t due_ns;    /* when its ack deadline should be extended */
  int emitted;        /* handed to the bus, waiting for its callback */
};

enum { ST_IDLE, ST_SETUP, ST_RUNNING, ST_WAIT, ST_STOPPING };
enum { AUTH_NONE, AUTH_KEY, AUTH_METADATA };

struct pubsub {
  herald_source *src;
  /* config */
  char *project, *topic_project, *topic, *sub_id, *key_json, *metadata_json, *sub_name, *spec_json;
  int json_body, delete_on_finish, explicit_sub;
  /* where and how */
  char *api;          /* "https://pubsub.googleapis.com/v1" or the emulator's */
  char *meta_host;    /* the metadata server's host */
  int auth;
  char *sa_email, *sa_key, *sa_kid, *token_uri;
  char *token;        /* "Authorization: Bearer ..." */
  uint64_t token_refresh_ns;
  /* requests */
  cloud_req setup, tok, pull[PULLS], ack, modack, del;
  void (*after_token)(pubsub *);
  int state, stopping, timers_closed, setup_step;
  uv_timer_t retry, tick, flush_timer;
  herald_backoff backoff;
  /* messages */
  pmsg *head, *tail;  /* outstanding, in order received */
  pmsg *held;         /* the first outstanding message not yet handed to the bus */
  uint32_t outstanding, inflight_emits;
  herald_buf acks;    /* ackIds batched: "\"id\",\"id\"" */
  uint32_t nacks;
  int waiting_room;
  uint64_t received, acked;
  uint64_t stop_deadline_ns;
  /* The CloudEvent id hashed from the message (a redelivery is then dropped as a duplicate)
   * only on JetStream: the embedded bus's --bus-dir log keys deliveries by id, and a
   * redelivered copy of an event it already held was lost after a crash (the kill -9 spec lost
   * 60-190 of 1500 with stable ids, none with fresh ones). */
  int stable_ids;
  herald_source_stop_cb stop_done;
};

/* ---- small helpers ---- */

static char *env_dup(const char *name) {
  const char *v = getenv(name);
  return v && *v ? herald_xstrdup(v) : NULL;
}

static int is_auth_status(long st) { return st == 401 || st == 403; }

/* A short reason from an API answer: Google's {"error":{"message":...}} or the status. */
static void api_reason(cloud_req *r, long status, CURLcode rc, char *out, size_t n) {
  if (!status) {
    snprintf(out, n, "%s", r->x.errbuf[0] ? r->x.errbuf : curl_easy_strerror(rc));
    return;
  }
  cj_doc d = {0};
  if (cj_parse(&d, r->resp.data ? r->resp.data : "", r->resp.len) == 0) {
    int m = cj_get(&d, cj_get(&d, 0, "error"), "message");
    if (m >= 0) {
      herald_buf b = HERALD_BUF_INIT;
      cj_append(&d, m, &b);
      snprintf(out, n, "HTTP %ld: %.*s", status, (int)(b.len > 300 ? 300 : b.len), b.data ? b.data : "");
      herald_buf_free(&b);
      cj_free(&d);
      return;
    }
  }
  cj_free(&d);
  snprintf(out, n, "HTTP %ld", status);
}

static struct curl_slist *api_headers(pubsub *ps) {
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
  h = curl_slist_append(h, "Expect:");
  if (ps->token) h = curl_slist_append(h, ps->token);
  return h;
}

static int api_call(pubsub *ps, cloud_req *r, const char *method, const char *path, const char *body,
                    long timeout_ms, cloud_req_cb cb) {
  herald_buf url = HERALD_BUF_INIT;
  herald_buf_printf(&url, "%s/%s", ps->api, path);
  char *b = body ? herald_xstrdup(body) : NULL;
  int rc = cloud_req_start(r, method, herald_buf_cstr(&url), api_headers(ps), b, b ? strlen(b) : 0,
                           timeout_ms, cb);
  herald_buf_free(&url);
  return rc;
}

/* Go's encoding/json string (HTML-safe escapes included), for the subscription name hash. */
static void go_json_string(herald_buf *b, const char *s) {
  herald_buf_putc(b, '"');
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    unsigned char c = *p;
    if (c == '"' || c == '\\') {
      herald_buf_putc(b, '\\');
      herald_buf_putc(b, (char)c);
    } else if (c == '\n') herald_buf_puts(b, "\\n");
    else if (c == '\r') herald_buf_puts(b, "\\r");
    else if (c == '\t') herald_buf_puts(b, "\\t");
    else if (c < 0x20 || c == '<' || c == '>' || c == '&') herald_buf_printf(b, "\\u00%02x", c);
    else if (c == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
      herald_buf_printf(b, "\\u202%c", p[2] == 0xA8 ? '8' : '9');
      p += 2;
    } else herald_buf_putc(b, (char)c);
  }
  herald_buf_putc(b, '"');
}

/* ---- configuration ---- */

static char *cfg_dup(lua_State *L, int idx, const char *field) {
  const char *v = herald_cfg_string(L, idx, field, NULL);
  return v && *v ? herald_xstrdup(v) : NULL;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The EventSource's fields as Go's json.Marshal writes Argo's PubSubEventSource, less the
 * projects (filled in later): Argo hashes that text to name a subscription it creates. */
static char *spec_tail_json(lua_State *L, int idx) {
  herald_buf b = HERALD_BUF_INIT;
  lua_getfield(L, idx, "credentialSecret");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    herald_buf_puts(&b, ",\"credentialSecret\":{");
    const char *name = herald_cfg_string(L, t, "name", NULL), *key = herald_cfg_string(L, t, "key", "");
    if (name && *name) {
      herald_buf_puts(&b, "\"name\":");
      go_json_string(&b, name);
      herald_buf_putc(&b, ',');
    }
    herald_buf_puts(&b, "\"key\":");
    go_json_string(&b, key);
    lua_getfield(L, t, "optional");
    if (lua_isboolean(L, -1)) herald_buf_puts(&b, lua_toboolean(L, -1) ? ",\"optional\":true" : ",\"optional\":false");
    lua_pop(L, 1);
    herald_buf_putc(&b, '}');
  }
  lua_pop(L, 1);
  if (herald_cfg_bool(L, idx, "deleteSubscriptionOnFinish", 0)) herald_buf_puts(&b, ",\"deleteSubscriptionOnFinish\":true");
  if (herald_cfg_bool(L, idx, "jsonBody", 0)) herald_buf_puts(&b, ",\"jsonBody\":true");
  lua_getfield(L, idx, "metadata");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    char **keys = NULL;
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        keys = realloc(keys, (n + 1) * sizeof *keys);
        keys[n++] = herald_xstrdup(lua_tostring(L, -2));
      }
      lua_pop(L, 1);
    }
    if (n) {
      qsort(keys, n, sizeof *keys, cmp_str);
      herald_buf_puts(&b, ",\"metadata\":{");
      for (size_t i = 0; i < n; i++) {
        if (i) herald_buf_putc(&b, ',');
        go_json_string(&b, keys[i]);
        herald_buf_putc(&b, ':');
        go_json_string(&b, herald_cfg_string(L, t, keys[i], ""));
        free(keys[i]);
      }
      herald_buf_putc(&b, '}');
    }
    free(keys);
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "filter");
  if (lua_istable(L, -1)) {
    const char *e = herald_cfg_string(L, lua_gettop(L), "expression", NULL);
    herald_buf_puts(&b, ",\"filter\":{");
    if (e && *e) {
      herald_buf_puts(&b, "\"expression\":");
      go_json_string(&b, e);
    }
    herald_buf_putc(&b, '}');
  }
  lua_pop(L, 1);
  char *s = herald_xstrdup(herald_buf_cstr(&b));
  herald_buf_free(&b);
  return s;
}

/* Reads a service-account JSON key; returns 0 or -1 after logging why (never its contents). */
static int load_key(pubsub *ps, const char *json, const char *whence) {
  cj_doc d = {0};
  int rc = -1;
  if (cj_parse(&d, json, strlen(json)) != 0 || d.t[0].type != CJ_OBJECT) {
    herald_log(&ps->src->log, HLOG_ERROR, "%s: not a JSON service-account key", whence);
    goto out;
  }
  int type = cj_get(&d, 0, "type");
  if (type >= 0 && !cj_streq(&d, type, "service_account")) {
    herald_log(&ps->src->log, HLOG_ERROR, "%s: only service_account keys are supported (this one is another type)", whence);
    goto out;
  }
  ps->sa_email = cj_strdup(&d, cj_get(&d, 0, "client_email"));
  ps->sa_key = cj_strdup(&d, cj_get(&d, 0, "private_key"));
  ps->sa_kid = cj_strdup(&d, cj_get(&d, 0, "private_key_id"));
  ps->token_uri = cj_strdup(&d, cj_get(&d, 0, "token_uri"));
  if (!ps->token_uri) ps->token_uri = herald_xstrdup(DEFAULT_TOKEN_URI);
  if (!ps->sa_email || !ps->sa_key) {
    herald_log(&ps->src->log, HLOG_ERROR, "%s: the key has no client_email or private_key", whence);
    goto out;
  }
  if (!ps->project) ps->project = cj_strdup(&d, cj_get(&d, 0, "project_id"));
  rc = 0;
out:
  cj_free(&d);
  return rc;
}

static int pubsub_init(herald_source *src, lua_State *L, int cfg_idx) {
  pubsub *ps = src->priv;
  ps->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  ps->project = cfg_dup(L, cfg_idx, "projectID");
  ps->topic_project = cfg_dup(L, cfg_idx, "topicProjectID");
  ps->topic = cfg_dup(L, cfg_idx, "topic");
  ps->sub_id = cfg_dup(L, cfg_idx, "subscriptionID");
  ps->explicit_sub = ps->sub_id != NULL;
  ps->json_body = herald_cfg_bool(L, cfg_idx, "jsonBody", 0);
  ps->delete_on_finish = herald_cfg_bool(L, cfg_idx, "deleteSubscriptionOnFinish", 0);
  ps->metadata_json = herald_cfg_metadata_json(L, cfg_idx);
  ps->spec_json = spec_tail_json(L, cfg_idx);
  herald_backoff_init(&ps->backoff, NULL, 0, NULL);

  char *emu = env_dup("PUBSUB_EMULATOR_HOST");
  if (emu) {
    herald_buf u = HERALD_BUF_INIT;
    herald_buf_printf(&u, "http://%s/v1", emu);
    ps->api = herald_xstrdup(herald_buf_cstr(&u));
    herald_buf_free(&u);
    free(emu);
    ps->auth = AUTH_NONE;
  } else {
    char *ep = env_dup("HERALD_PUBSUB_ENDPOINT");
    if (ep) {
      size_t n = strlen(ep);
      while (n && ep[n - 1] == '/') ep[--n] = 0;
      herald_buf u = HERALD_BUF_INIT;
      herald_buf_printf(&u, "%s/v1", ep);
      ps->api = herald_xstrdup(herald_buf_cstr(&u));
      herald_buf_free(&u);
      free(ep);
    } else {
      ps->api = herald_xstrdup("https://pubsub.googleapis.com/v1");
    }
    int err = 0;
    char *key = herald_secret_field(src->engine, &src->log, L, cfg_idx, "credentialSecret",
                                    "credentialSecret", &err);
    if (err < 0) return HERALD_EINVAL;
    if (key) {
      int r = load_key(ps, key, "credentialSecret");
      memset(key, 0, strlen(key));
      free(key);
      if (r != 0) return HERALD_EINVAL;
      ps->auth = AUTH_KEY;
    } else {
      char *path = env_dup("GOOGLE_APPLICATION_CREDENTIALS");
      if (path) {
        FILE *f = fopen(path, "rb");
        herald_buf b = HERALD_BUF_INIT;
        if (f) {
          char chunk[4096];
          size_t n;
          while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) herald_buf_append(&b, chunk, n);
          fclose(f);
        }
        int r = f ? load_key(ps, herald_buf_cstr(&b), "GOOGLE_APPLICATION_CREDENTIALS") : -1;
        if (!f) herald_log(&src->log, HLOG_ERROR, "GOOGLE_APPLICATION_CREDENTIALS: cannot read %s", path);
        if (b.data) memset(b.data, 0, b.len);
        herald_buf_free(&b);
        free(path);
        if (r != 0) return HERALD_EINVAL;
        ps->auth = AUTH_KEY;
      } else {
        ps->auth = AUTH_METADATA;
      }
    }
  }
  char *mh = env_dup("GCE_METADATA_HOST");
  ps->meta_host = mh ? mh : herald_xstrdup("169.254.169.254");
  return 0;
}

/* ---- lifecycle plumbing ---- */

static void fail(pubsub *ps, const char *why);
static void setup_begin(pubsub *ps);
static void pull_more(pubsub *ps);
static void flush_acks(pubsub *ps);
static void emit_held(pubsub *ps);

static void on_retry(uv_timer_t *t) {
  pubsub *ps = t->data;
  if (ps->state == ST_WAIT) setup_begin(ps);
}

static void fail(pubsub *ps, const char *why) {
  if (ps->state == ST_STOPPING) return;
  herald_source_set_connected(ps->src, 0, why);
  for (int i = 0; i < PULLS; i++) cloud_req_cancel(&ps->pull[i]);
  cloud_req_cancel(&ps->setup);
  cloud_req_cancel(&ps->tok);
  ps->state = ST_WAIT;
  uint64_t ms = herald_backoff_next(&ps->backoff);
  uv_timer_start(&ps->retry, on_retry, ms, 0);
}

/* ---- access tokens ---- */

static void token_then(pubsub *ps, void (*then)(pubsub *));

static void on_token(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (ps->state == ST_STOPPING) return;
  char why[400];
  if (status != 200) {
    api_reason(r, status, rc, why, sizeof why);
    char msg[480];
    snprintf(msg, sizeof msg, "access token: %s", why);
    fail(ps, msg);
    return;
  }
  cj_doc d = {0};
  char *tok = NULL;
  double ttl = 3600;
  if (cj_parse(&d, r->resp.data, r->resp.len) == 0) {
    tok = cj_strdup(&d, cj_get(&d, 0, "access_token"));
    ttl = cj_number(&d, cj_get(&d, 0, "expires_in"), 3600);
  }
  cj_free(&d);
  if (!tok || !*tok) {
    free(tok);
    fail(ps, "access token: the answer has no access_token");
    return;
  }
  herald_buf h = HERALD_BUF_INIT;
  herald_buf_printf(&h, "Authorization: Bearer %s", tok);
  memset(tok, 0, strlen(tok));
  free(tok);
  free(ps->token);
  ps->token = herald_xstrdup(herald_buf_cstr(&h));
  memset(h.data, 0, h.len);
  herald_buf_free(&h);
  /* refresh with a quarter of its life left (at most 5 minutes before it ends), as Google's
   * clients refresh ahead of expiry */
  double margin = ttl / 4 < 300 ? ttl / 4 : 300;
  ps->token_refresh_ns = herald_mono_ns() + (uint64_t)((ttl - margin) * 1e9);
  herald_log(&ps->src->log, HLOG_DEBUG, "access token obtained, valid %.0f s", ttl);
  void (*then)(pubsub *) = ps->after_token;
  ps->after_token = NULL;
  if (then) then(ps);
}

static void form_escape(herald_buf *b, const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~')
      herald_buf_putc(b, (char)c);
    else herald_buf_printf(b, "%%%02X", c);
  }
}

/* Calls then(ps) with a valid token in ps->token (at once when it has one). */
static void token_then(pubsub *ps, void (*then)(pubsub *)) {
  if (ps->auth == AUTH_NONE || (ps->token && herald_mono_ns() < ps->token_refresh_ns)) {
    then(ps);
    return;
  }
  if (ps->tok.busy) { /* a refresh is under way: chain after it */
    ps->after_token = then;
    return;
  }
  ps->after_token = then;
  ps->tok.data = ps;
  int r;
  if (ps->auth == AUTH_KEY) {
    long long now = (long long)time(NULL);
    herald_buf claims = HERALD_BUF_INIT;
    herald_buf_puts(&claims, "{\"iss\":");
    herald_buf_json_string(&claims, ps->sa_email, strlen(ps->sa_email));
    herald_buf_puts(&claims, ",\"scope\":\"" SCOPE "\",\"aud\":");
    herald_buf_json_string(&claims, ps->token_uri, strlen(ps->token_uri));
    herald_buf_printf(&claims, ",\"iat\":%lld,\"exp\":%lld}", now, now + 3600);
    char err[160];
    char *jwt = cloud_jwt_rs256(ps->sa_key, ps->sa_kid, herald_buf_cstr(&claims), err, sizeof err);
    herald_buf_free(&claims);
    if (!jwt) {
      char msg[220];
      snprintf(msg, sizeof msg, "service-account key: %s", err);
      fail(ps, msg);
      return;
    }
    herald_buf body = HERALD_BUF_INIT;
    herald_buf_puts(&body, "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=");
    form_escape(&body, jwt);
    free(jwt);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/x-www-form-urlencoded");
    h = curl_slist_append(h, "Expect:");
    size_t n = body.len;
    char *b = herald_xstrdup(herald_buf_cstr(&body));
    herald_buf_free(&body);
    r = cloud_req_start(&ps->tok, "POST", ps->token_uri, h, b, n, API_TIMEOUT_MS, on_token);
  } else {
    herald_buf url = HERALD_BUF_INIT;
    herald_buf_printf(&url, "http://%s/computeMetadata/v1/instance/service-accounts/default/token",
                      ps->meta_host);
    struct curl_slist *h = curl_slist_append(NULL, "Metadata-Flavor: Google");
    r = cloud_req_start(&ps->tok, "GET", herald_buf_cstr(&url), h, NULL, 0, 10000L, on_token);
    herald_buf_free(&url);
  }
  if (r != 0) fail(ps, "access token: cannot start the request");
}

/* ---- setup: project, subscription, topic ---- */

static void running(pubsub *ps);
static void step_check(pubsub *ps);
static void step_create_sub(pubsub *ps);

static void sub_path(pubsub *ps, herald_buf *b) { herald_buf_printf(b, "%s", ps->sub_name); }

static void topic_name(pubsub *ps, herald_buf *b) {
  herald_buf_printf(b, "projects/%s/topics/%s", ps->topic_project, ps->topic);
}

static void name_subscription(pubsub *ps) {
  if (!ps->topic_project && ps->topic) ps->topic_project = herald_xstrdup(ps->project);
  if (!ps->sub_id) {
    /* Argo: eventName + "-" + FNV-32a(eventName + json.Marshal(spec with projects filled)) */
    herald_buf j = HERALD_BUF_INIT;
    herald_buf_puts(&j, ps->src->event_name);
    herald_buf_puts(&j, "{\"projectID\":");
    go_json_string(&j, ps->project);
    herald_buf_puts(&j, ",\"topicProjectID\":");
    go_json_string(&j, ps->topic_project ? ps->topic_project : "");
    herald_buf_puts(&j, ",\"topic\":");
    go_json_string(&j, ps->topic ? ps->topic : "");
    herald_buf_puts(&j, ",\"subscriptionID\":\"\"");
    herald_buf_puts(&j, ps->spec_json);
    herald_buf_putc(&j, '}');
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < j.len; i++) h = (h ^ (unsigned char)j.data[i]) * 16777619u;
    herald_buf_free(&j);
    herald_buf n = HERALD_BUF_INIT;
    herald_buf_printf(&n, "%s-%u", ps->src->event_name, h);
    ps->sub_id = herald_xstrdup(herald_buf_cstr(&n));
    herald_buf_free(&n);
    herald_log(&ps->src->log, HLOG_INFO, "subscriptionID not given: using %s (as Argo names it)", ps->sub_id);
  }
  herald_buf s = HERALD_BUF_INIT;
  herald_buf_printf(&s, "projects/%s/subscriptions/%s", ps->project, ps->sub_id);
  free(ps->sub_name);
  ps->sub_name = herald_xstrdup(herald_buf_cstr(&s));
  herald_buf_free(&s);
}

static void on_project(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (ps->state == ST_STOPPING) return;
  if (status != 200 || r->resp.len == 0) {
    char why[300], msg[400];
    api_reason(r, status, rc, why, sizeof why);
    snprintf(msg, sizeof msg, "projectID is not given and the metadata server did not tell it: %s", why);
    fail(ps, msg);
    return;
  }
  ps->project = herald_xstrdup(herald_buf_cstr(&r->resp));
  name_subscription(ps);
  token_then(ps, step_check);
}

static void setup_begin(pubsub *ps) {
  if (ps->state == ST_STOPPING) return;
  ps->state = ST_SETUP;
  ps->setup.data = ps;
  if (!ps->project) {
    herald_buf url = HERALD_BUF_INIT;
    herald_buf_printf(&url, "http://%s/computeMetadata/v1/project/project-id", ps->meta_host);
    struct curl_slist *h = curl_slist_append(NULL, "Metadata-Flavor: Google");
    int r = cloud_req_start(&ps->setup, "GET", herald_buf_cstr(&url), h, NULL, 0, 10000L, on_project);
    herald_buf_free(&url);
    if (r != 0) fail(ps, "metadata server: cannot start the request");
    return;
  }
  if (!ps->sub_name) name_subscription(ps);
  token_then(ps, step_check);
}

static void setup_failed(pubsub *ps, cloud_req *r, long status, CURLcode rc, const char *what) {
  char why[400], msg[600];
  api_reason(r, status, rc, why, sizeof why);
  snprintf(msg, sizeof msg, "%s: %s", what, why);
  if (is_auth_status(status)) { /* the token may have been revoked: take a new one next time */
    free(ps->token);
    ps->token = NULL;
  }
  fail(ps, msg);
}

static void on_topic_created(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (ps->state == ST_STOPPING) return;
  if (status != 200 && status != 409) {
    herald_buf t = HERALD_BUF_INIT;
    topic_name(ps, &t);
    char what[400];
    snprintf(what, sizeof what, "cannot create topic %s", herald_buf_cstr(&t));
    herald_buf_free(&t);
    setup_failed(ps, r, status, rc, what);
    return;
  }
  ps->setup_step = 1; /* the topic exists now: a second 404 is an error */
  step_create_sub(ps);
}

static void on_sub_created(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (ps->state == ST_STOPPING) return;
  if (status == 200 || status == 409) {
    if (status == 200) herald_log(&ps->src->log, HLOG_INFO, "created subscription %s", ps->sub_name);
    running(ps);
    return;
  }
  if (status == 404 && !ps->setup_step) { /* the topic does not exist either: create it */
    herald_buf p = HERALD_BUF_INIT;
    topic_name(ps, &p);
    int rr = api_call(ps, &ps->setup, "PUT", herald_buf_cstr(&p), "{}", API_TIMEOUT_MS, on_topic_created);
    herald_buf_free(&p);
    if (rr != 0) fail(ps, "cannot start a request");
    return;
  }
  char what[400];
  snprintf(what, sizeof what, "cannot create subscription %s", ps->sub_name);
  setup_failed(ps, r, status, rc, what);
}

static void step_create_sub(pubsub *ps) {
  herald_buf body = HERALD_BUF_INIT, p = HERALD_BUF_INIT;
  herald_buf_puts(&body, "{\"topic\":\"");
  topic_name(ps, &body);
  herald_buf_puts(&body, "\"}");
  sub_path(ps, &p);
  int r = api_call(ps, &ps->setup, "PUT", herald_buf_cstr(&p), herald_buf_cstr(&body), API_TIMEOUT_MS,
                   on_sub_created);
  herald_buf_free(&body);
  herald_buf_free(&p);
  if (r != 0) fail(ps, "cannot start a request");
}

static void on_sub_get(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (ps->state == ST_STOPPING) return;
  if (status == 404) { /* missing */
    if (!ps->topic) {
      char msg[300];
      snprintf(msg, sizeof msg, "subscription %s does not exist and no topic is given to create it", ps->sub_name);
      fail(ps, msg);
      return;
    }
    ps->setup_step = 0;
    step_create_sub(ps);
    return;
  }
  if (status != 200) {
    setup_failed(ps, r, status, rc, "cannot check the subscription");
    return;
  }
  if (!ps->topic) {
    running(ps);
    return;
  }
  cj_doc d = {0};
  herald_buf want = HERALD_BUF_INIT, got = HERALD_BUF_INIT;
  topic_name(ps, &want);
  if (cj_parse(&d, r->resp.data, r->resp.len) == 0) cj_append(&d, cj_get(&d, 0, "topic"), &got);
  cj_free(&d);
  int ok = got.len == want.len && memcmp(got.data, want.data, got.len) == 0;
  char msg[600];
  if (!ok) {
    if (got.len && strcmp(herald_buf_cstr(&got), "_deleted-topic_") == 0)
      snprintf(msg, sizeof msg, "the topic of subscription %s has been deleted", ps->sub_name);
    else
      snprintf(msg, sizeof msg, "subscription %s belongs to another topic (%s), not %s", ps->sub_name,
               herald_buf_cstr(&got), herald_buf_cstr(&want));
  }
  herald_buf_free(&want);
  herald_buf_free(&got);
  if (ok) running(ps);
  else fail(ps, msg);
}

static void on_iam(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (ps->state == ST_STOPPING) return;
  if (status == 404) {
    on_sub_get(r, status, rc); /* missing */
    return;
  }
  if (status != 200) {
    setup_failed(ps, r, status, rc, "cannot test the permissions on the subscription");
    return;
  }
  cj_doc d = {0};
  int n = 0;
  if (cj_parse(&d, r->resp.data, r->resp.len) == 0) {
    int a = cj_get(&d, 0, "permissions");
    for (int e = cj_first(&d, a); e >= 0; e = cj_next(&d, a, e)) n++;
  }
  cj_free(&d);
  if (n != 1) {
    char msg[300];
    snprintf(msg, sizeof msg, "no permission to pull from %s", ps->sub_name);
    fail(ps, msg);
    return;
  }
  if (!ps->topic) {
    running(ps);
    return;
  }
  /* verify its topic */
  herald_buf p = HERALD_BUF_INIT;
  sub_path(ps, &p);
  int rr = api_call(ps, &ps->setup, "GET", herald_buf_cstr(&p), NULL, API_TIMEOUT_MS, on_sub_get);
  herald_buf_free(&p);
  if (rr != 0) fail(ps, "cannot start a request");
}

static void step_check(pubsub *ps) {
  herald_buf p = HERALD_BUF_INIT;
  sub_path(ps, &p);
  int r;
  if (ps->auth == AUTH_NONE) {
    r = api_call(ps, &ps->setup, "GET", herald_buf_cstr(&p), NULL, API_TIMEOUT_MS, on_sub_get);
  } else {
    herald_buf_puts(&p, ":testIamPermissions");
    r = api_call(ps, &ps->setup, "POST", herald_buf_cstr(&p),
                 "{\"permissions\":[\"pubsub.subscriptions.consume\"]}", API_TIMEOUT_MS, on_iam);
  }
  herald_buf_free(&p);
  if (r != 0) fail(ps, "cannot start a request");
}

static void running(pubsub *ps) {
  ps->state = ST_RUNNING;
  herald_backoff_reset(&ps->backoff);
  herald_source_set_connected(ps->src, 1, ps->sub_name);
  pull_more(ps);
}

/* ---- messages ---- */

static void unlink_msg(pubsub *ps, pmsg *m) {
  if (m->prev) m->prev->next = m->next;
  else ps->head = m->next;
  if (m->next) m->next->prev = m->prev;
  else ps->tail = m->prev;
  if (ps->held == m) ps->held = m->next;
  ps->outstanding--;
}

static void free_msg(pmsg *m) {
  free(m->ack_id);
  free(m->data);
  free(m);
}

static void queue_ack(pubsub *ps, const char *ack_id) {
  if (ps->nacks) herald_buf_putc(&ps->acks, ',');
  herald_buf_json_string(&ps->acks, ack_id, strlen(ack_id));
  ps->nacks++;
}

static void on_emitted(void *data, int status) {
  pmsg *m = data;
  pubsub *ps = m->ps;
  ps->inflight_emits--;
  if (status == 0) {
    queue_ack(ps, m->ack_id);
    ps->acked++;
  } else {
    /* the bus refused it (JetStream down): Pub/Sub redelivers it after its ack deadline */
    herald_log_limited(&ps->src->log, HLOG_WARN, "message %s not published: %s (left for redelivery)",
                       m->ack_id, herald_strerror(status));
  }
  unlink_msg(ps, m);
  free_msg(m);
  if (ps->state == ST_STOPPING) return; /* the stop's flush timer sends what is batched */
  flush_acks(ps);
  pull_more(ps);
}

static void on_room(herald_source *src, void *data) {
  (void)src;
  pubsub *ps = data;
  ps->waiting_room = 0;
  emit_held(ps);
  pull_more(ps);
}

/* Hands the held messages to the bus, in order, until it is full. */
static void emit_held(pubsub *ps) {
  while (ps->held && ps->state != ST_STOPPING) {
    pmsg *m = ps->held;
    int r = herald_source_emit_id(ps->src, ps->stable_ids ? m->id : NULL, m->data, m->len, on_emitted, m);
    if (r == HERALD_EBUSFULL) {
      if (!ps->waiting_room && herald_source_when_room(ps->src, on_room, ps) == 0) ps->waiting_room = 1;
      return;
    }
    ps->held = m->next;
    free(m->data);
    m->data = NULL;
    if (r == 0) {
      m->emitted = 1;
      ps->inflight_emits++;
    } else { /* not publishable (out of memory): leave it to redelivery */
      unlink_msg(ps, m);
      free_msg(m);
    }
  }
}

/* Go's time.Time.String() of an RFC 3339 UTC time: "2006-01-02 15:04:05.999999999 +0000 UTC". */
static void go_time_string(herald_buf *b, const char *t, size_t n) {
  if (n < 20 || t[10] != 'T' || t[n - 1] != 'Z') {
    herald_buf_append(b, t, n);
    return;
  }
  herald_buf_append(b, t, 10);
  herald_buf_putc(b, ' ');
  herald_buf_append(b, t + 11, 8);
  if (t[19] == '.') {
    size_t e = n - 1;
    while (e > 20 && t[e - 1] == '0') e--;
    if (e > 20) herald_buf_append(b, t + 19, e - 19);
  }
  herald_buf_puts(b, " +0000 UTC");
}

/* Builds one message's event data; returns 0, or -1 to drop it (counted and logged). */
static int build_event(pubsub *ps, cj_doc *d, int msg, herald_buf *out, herald_buf *tmp) {
  int id = cj_get(d, msg, "messageId");
  int data = cj_get(d, msg, "data");
  int attrs = cj_get(d, msg, "attributes");
  int pt = cj_get(d, msg, "publishTime");
  herald_buf_puts(out, "{\"id\":");
  if (id >= 0) {
    herald_buf_reset(tmp);
    cj_append(d, id, tmp);
    herald_buf_json_string(out, tmp->data ? tmp->data : "", tmp->len);
  } else herald_buf_puts(out, "\"\"");
  herald_buf_puts(out, ",\"body\":");
  size_t dlen = data >= 0 ? d->t[data].end - d->t[data].start : 0;
  if (herald_source_too_big(ps->src, dlen / 4 * 3)) return -1;
  if (ps->json_body) {
    herald_buf_reset(tmp);
    if (data >= 0 && cloud_base64_decode(d->s + d->t[data].start, dlen, 0, tmp) != 0) {
      herald_log_limited(&ps->src->log, HLOG_WARN, "message dropped: its data is not base64");
      return -1;
    }
    if (herald_source_put_body(ps->src, out, tmp->data ? tmp->data : "", tmp->len, 1) != 0) return -1;
  } else if (dlen) {
    /* the REST API's data is already the standard base64 Go writes for a []byte */
    herald_buf_putc(out, '"');
    herald_buf_append(out, d->s + d->t[data].start, dlen);
    herald_buf_putc(out, '"');
  } else {
    herald_buf_puts(out, "null"); /* Go: a nil []byte */
  }
  herald_buf_puts(out, ",\"attributes\":");
  if (attrs >= 0 && cj_first(d, attrs) >= 0) {
    herald_buf_putc(out, '{');
    int k = 0;
    for (int e = cj_first(d, attrs); e >= 0; e = cj_next(d, attrs, e)) {
      if (k++) herald_buf_putc(out, ',');
      herald_buf_reset(tmp);
      cj_append(d, e, tmp);
      herald_buf_json_string(out, tmp->data ? tmp->data : "", tmp->len);
      herald_buf_putc(out, ':');
      herald_buf_reset(tmp);
      cj_append(d, e + 1, tmp);
      herald_buf_json_string(out, tmp->data ? tmp->data : "", tmp->len);
    }
    herald_buf_putc(out, '}');
  } else {
    herald_buf_puts(out, "null"); /* Go: a nil map */
  }
  herald_buf_puts(out, ",\"publishTime\":\"");
  if (pt >= 0) {
    herald_buf_reset(tmp);
    cj_append(d, pt, tmp);
    herald_buf t2 = HERALD_BUF_INIT;
    go_time_string(&t2, tmp->data ? tmp->data : "", tmp->len);
    herald_buf_json_escape(out, t2.data ? t2.data : "", t2.len);
    herald_buf_free(&t2);
  } else {
    herald_buf_puts(out, "0001-01-01 00:00:00 +0000 UTC");
  }
  herald_buf_putc(out, '"');
  if (ps->metadata_json) {
    herald_buf_puts(out, ",\"metadata\":");
    herald_buf_puts(out, ps->metadata_json);
  }
  herald_buf_putc(out, '}');
  return 0;
}

static void on_pull(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (ps->state != ST_RUNNING) return;
  if (status != 200) {
    if (status == 404) { /* the subscription is gone (a restarted emulator): set it up again */
      free(ps->sub_name);
      ps->sub_name = NULL;
    }
    char why[400], msg[500];
    api_reason(r, status, rc, why, sizeof why);
    snprintf(msg, sizeof msg, "pull: %s", why);
    if (is_auth_status(status)) {
      free(ps->token);
      ps->token = NULL;
    }
    fail(ps, msg);
    return;
  }
  cj_doc d = {0};
  if (cj_parse(&d, r->resp.data ? r->resp.data : "{}", r->resp.len ? r->resp.len : 2) != 0) {
    cj_free(&d);
    fail(ps, "pull: the answer is not JSON");
    return;
  }
  herald_buf ev = HERALD_BUF_INIT, tmp = HERALD_BUF_INIT;
  uint64_t now = herald_mono_ns();
  int list = cj_get(&d, 0, "receivedMessages");
  for (int e = cj_first(&d, list); e >= 0; e = cj_next(&d, list, e)) {
    int ack = cj_get(&d, e, "ackId"), msg = cj_get(&d, e, "message");
    if (ack < 0) continue;
    ps->received++;
    herald_buf_reset(&ev);
    char *ack_id = cj_strdup(&d, ack);
    if (msg < 0 || build_event(ps, &d, msg, &ev, &tmp) != 0) {
      /* dropped (counted and logged): acknowledged so it does not come back for ever */
      queue_ack(ps, ack_id);
      free(ack_id);
      continue;
    }
    pmsg *m = herald_xcalloc(1, sizeof *m);
    m->ps = ps;
    m->ack_id = ack_id;
    m->due_ns = now + (uint64_t)EXTEND_AFTER_S * 1000000000u;
    m->len = ev.len;
    m->data = herald_xmalloc(ev.len + 1);
    memcpy(m->data, ev.data, ev.len);
    m->data[ev.len] = 0;
    /* the CloudEvent id: the same for a redelivery of this message to this subscription */
    herald_buf idsrc = HERALD_BUF_INIT;
    herald_buf_printf(&idsrc, "%s:%s:%s:", ps->src->es_name, ps->src->event_name, ps->sub_name);
    cj_append(&d, cj_get(&d, msg, "messageId"), &idsrc);
    char hex[65];
    herald_sigv4_sha256_hex(idsrc.data, idsrc.len, hex);
    herald_buf_free(&idsrc);
    memcpy(m->id, hex, 32);
    m->id[32] = 0;
    m->prev = ps->tail;
    if (ps->tail) ps->tail->next = m;
    else ps->head = m;
    ps->tail = m;
    if (!ps->held) ps->held = m;
    ps->outstanding++;
  }
  herald_buf_free(&ev);
  herald_buf_free(&tmp);
  cj_free(&d);
  emit_held(ps);
  flush_acks(ps);
  pull_more(ps);
}

static void pull_more(pubsub *ps) {
  if (ps->state != ST_RUNNING || ps->held) return;
  for (int i = 0; i < PULLS; i++) {
    cloud_req *r = &ps->pull[i];
    if (r->busy) continue;
    if (ps->outstanding + PULL_MAX > MAX_OUTSTANDING) return;
    if (ps->auth != AUTH_NONE && (!ps->token || herald_mono_ns() >= ps->token_refresh_ns)) {
      token_then(ps, pull_more);
      return;
    }
    r->data = ps;
    herald_buf p = HERALD_BUF_INIT;
    sub_path(ps, &p);
    herald_buf_puts(&p, ":pull");
    char body[64];
    snprintf(body, sizeof body, "{\"maxMessages\":%d}", PULL_MAX);
    int rc = api_call(ps, r, "POST", herald_buf_cstr(&p), body, PULL_TIMEOUT_MS, on_pull);
    herald_buf_free(&p);
    if (rc != 0) {
      fail(ps, "cannot start a pull");
      return;
    }
  }
}

/* ---- acknowledgements and deadlines ---- */

static void on_acked(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (status != 200) {
    char why[400];
    api_reason(r, status, rc, why, sizeof why);
    herald_log_limited(&ps->src->log, HLOG_WARN,
                       "acknowledge failed: %s (those messages will be delivered again)", why);
  }
  flush_acks(ps);
}

static void flush_acks(pubsub *ps) {
  if (!ps->nacks || ps->ack.busy || !ps->sub_name) return;
  ps->ack.data = ps;
  herald_buf body = HERALD_BUF_INIT, p = HERALD_BUF_INIT;
  herald_buf_puts(&body, "{\"ackIds\":[");
  herald_buf_append(&body, ps->acks.data, ps->acks.len);
  herald_buf_puts(&body, "]}");
  herald_buf_reset(&ps->acks);
  ps->nacks = 0;
  sub_path(ps, &p);
  herald_buf_puts(&p, ":acknowledge");
  int r = api_call(ps, &ps->ack, "POST", herald_buf_cstr(&p), herald_buf_cstr(&body),
                   API_TIMEOUT_MS, on_acked);
  herald_buf_free(&body);
  herald_buf_free(&p);
  if (r != 0) herald_log_limited(&ps->src->log, HLOG_WARN, "cannot start an acknowledge request");
}

static void on_modacked(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (status != 200) {
    char why[400];
    api_reason(r, status, rc, why, sizeof why);
    herald_log_limited(&ps->src->log, HLOG_WARN, "modifyAckDeadline failed: %s", why);
  }
}

static void on_tick(uv_timer_t *t) {
  pubsub *ps = t->data;
  if (ps->state != ST_RUNNING || ps->modack.busy || !ps->sub_name) return;
  uint64_t now = herald_mono_ns();
  herald_buf body = HERALD_BUF_INIT;
  int n = 0;
  herald_buf_puts(&body, "{\"ackIds\":[");
  for (pmsg *m = ps->head; m && n < ACK_BATCH; m = m->next) {
    if (m->due_ns > now) continue;
    if (n++) herald_buf_putc(&body, ',');
    herald_buf_json_string(&body, m->ack_id, strlen(m->ack_id));
    m->due_ns = now + (uint64_t)(EXTEND_TO_S / 2) * 1000000000u;
  }
  herald_buf_printf(&body, "],\"ackDeadlineSeconds\":%d}", EXTEND_TO_S);
  if (n) {
    ps->modack.data = ps;
    herald_buf p = HERALD_BUF_INIT;
    sub_path(ps, &p);
    herald_buf_puts(&p, ":modifyAckDeadline");
    herald_log(&ps->src->log, HLOG_DEBUG, "extending the ack deadline of %d messages still on their way to the bus", n);
    if (api_call(ps, &ps->modack, "POST", herald_buf_cstr(&p), herald_buf_cstr(&body), API_TIMEOUT_MS,
                 on_modacked) != 0)
      herald_log_limited(&ps->src->log, HLOG_WARN, "cannot start a modifyAckDeadline request");
    herald_buf_free(&p);
  }
  herald_buf_free(&body);
}

/* ---- start and stop ---- */

static int pubsub_start(herald_source *src) {
  pubsub *ps = src->priv;
  if (herald_curl_loop_ref(src->engine->loop) != 0) return HERALD_ENOMEM;
  uv_timer_init(src->engine->loop, &ps->retry);
  uv_timer_init(src->engine->loop, &ps->tick);
  uv_timer_init(src->engine->loop, &ps->flush_timer);
  ps->retry.data = ps->tick.data = ps->flush_timer.data = ps;
  uv_timer_start(&ps->tick, on_tick, DEADLINE_TICK_MS, DEADLINE_TICK_MS);
  herald_bus *bus = src->engine->bus;
  ps->stable_ids = bus && bus->ops && bus->ops->name && strcmp(bus->ops->name, "jetstream") == 0;
  herald_log(&src->log, HLOG_INFO, "pubSub source starting (%s%s)", ps->api,
             ps->auth == AUTH_NONE ? ", emulator: no auth" : ps->auth == AUTH_KEY ? ", service-account key" : ", metadata-server credentials");
  setup_begin(ps);
  return 0;
}

static void free_all(pubsub *ps) {
  for (pmsg *m = ps->head, *n; m; m = n) {
    n = m->next;
    free_msg(m);
  }
  ps->head = ps->tail = ps->held = NULL;
  cloud_req_free(&ps->setup);
  cloud_req_free(&ps->tok);
  for (int i = 0; i < PULLS; i++) cloud_req_free(&ps->pull[i]);
  cloud_req_free(&ps->ack);
  cloud_req_free(&ps->modack);
  cloud_req_free(&ps->del);
  herald_buf_free(&ps->acks);
  char **strs[] = {&ps->project, &ps->topic_project, &ps->topic, &ps->sub_id, &ps->key_json,
                   &ps->metadata_json, &ps->sub_name, &ps->spec_json, &ps->api, &ps->meta_host,
                   &ps->sa_email, &ps->sa_key, &ps->sa_kid, &ps->token_uri, &ps->token};
  for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
    if (*strs[i]) memset(*strs[i], 0, strlen(*strs[i]));
    free(*strs[i]);
    *strs[i] = NULL;
  }
}

static void final_done(pubsub *ps) {
  herald_source_stop_cb done = ps->stop_done;
  ps->stop_done = NULL;
  herald_curl_loop_unref();
  free_all(ps);
  if (done) done(ps->src);
}

static void on_timer_closed(uv_handle_t *h) {
  pubsub *ps = h->data;
  if (--ps->timers_closed == 0) final_done(ps);
}

static void close_timers(pubsub *ps) {
  ps->timers_closed = 3;
  uv_close((uv_handle_t *)&ps->retry, on_timer_closed);
  uv_close((uv_handle_t *)&ps->tick, on_timer_closed);
  uv_close((uv_handle_t *)&ps->flush_timer, on_timer_closed);
}

static void finish(pubsub *ps) {
  cloud_req_cancel(&ps->ack);
  cloud_req_cancel(&ps->modack);
  cloud_req_cancel(&ps->del);
  uv_timer_stop(&ps->flush_timer);
  close_timers(ps);
}

static void on_deleted(cloud_req *r, long status, CURLcode rc) {
  pubsub *ps = r->data;
  if (status == 200) herald_log(&ps->src->log, HLOG_INFO, "deleted subscription %s", ps->sub_name);
  else {
    char why[400];
    api_reason(r, status, rc, why, sizeof why);
    herald_log(&ps->src->log, HLOG_WARN, "cannot delete subscription %s: %s", ps->sub_name, why);
  }
  finish(ps);
}

static void delete_sub(pubsub *ps) {
  herald_buf p = HERALD_BUF_INIT;
  sub_path(ps, &p);
  ps->del.data = ps;
  int r = api_call(ps, &ps->del, "DELETE", herald_buf_cstr(&p), NULL, 5000L, on_deleted);
  herald_buf_free(&p);
  if (r != 0) finish(ps);
}

/* Waits for the bus's answers on the messages handed to it (their callbacks point here), and,
 * at most STOP_FLUSH_MS, for their acks to be sent; then deletes the subscription or finishes. */
static void on_flush_wait(uv_timer_t *t) {
  pubsub *ps = t->data;
  if (ps->inflight_emits) return;
  if (ps->nacks) flush_acks(ps);
  if ((ps->ack.busy || ps->nacks) && herald_mono_ns() < ps->stop_deadline_ns) return;
  uv_timer_stop(t);
  cloud_req_cancel(&ps->ack);
  if (ps->delete_on_finish && ps->sub_name) delete_sub(ps);
  else finish(ps);
}

static void pubsub_stop(herald_source *src, herald_source_stop_cb done) {
  pubsub *ps = src->priv;
  if (ps->state == ST_STOPPING) return;
  int started = ps->retry.loop != NULL;
  ps->state = ST_STOPPING;
  ps->stop_done = done;
  if (!started) {
    free_all(ps);
    done(src);
    return;
  }
  herald_source_cancel_room(src);
  uv_timer_stop(&ps->retry);
  uv_timer_stop(&ps->tick);
  for (int i = 0; i < PULLS; i++) cloud_req_cancel(&ps->pull[i]);
  cloud_req_cancel(&ps->setup);
  cloud_req_cancel(&ps->tok);
  /* messages held here were never handed to the bus: Pub/Sub redelivers them */
  for (pmsg *m = ps->held; m;) {
    pmsg *n = m->next;
    unlink_msg(ps, m);
    free_msg(m);
    m = n;
  }
  flush_acks(ps);
  ps->stop_deadline_ns = herald_mono_ns() + (uint64_t)STOP_FLUSH_MS * 1000000u;
  ps->flush_timer.data = ps;
  uv_timer_start(&ps->flush_timer, on_flush_wait, 0, 20);
}

const herald_source_type herald_source_pubSub = {
    .name = "pubSub",
    .event_type = "pubsub",
    .priv_size = sizeof(pubsub),
    .init = pubsub_init,
    .start = pubsub_start,
    .stop = pubsub_stop,
};
