/*
 * sources/minio/minio.c: Argo's `minio` event source: MinIO's ListenBucketNotification
 * streaming API, on the curl loop (lib/cloud), signed with SigV4 (engine/sigv4.c).
 *
 *   start -> GET {scheme}://{endpoint}/{bucket}?events=...&ping=10&prefix=...&suffix=...
 *     (the query minio-go's ListenBucketNotification sends; signed for S3 with region, else
 *     us-east-1) -> the answer streams for ever: one JSON object a line, {"Records":[...]}, with
 *     blank lines or {} as keep-alives -> each line with records -> one event, data
 *     {notification: [records][, metadata]} as Argo -> herald_source_emit.
 *   the bus full: lines wait here in order; past HOLD_MAX the stream is paused (curl keeps the
 *     rest in the socket), herald_source_when_room resumes it.
 *   the stream ends (MinIO restarted, a proxy's timeout) -> a new listen at once when it lasted,
 *     else connectionBackoff; any failure, or IDLE_MS with not even a keep-alive ->
 *     "not connected", connectionBackoff, listen again.
 *   stop: the stream abandoned, the bus's answers waited for, then done.
 *
 * MinIO keeps no backlog for a listener: a record made while no stream is open is never sent
 * (the same as Argo's minio-go client); there is nothing to acknowledge.
 */
#include "buf.h"
#include "cloud/cloud.h"
#include "common.h"
#include "engine.h"
#include "metrics.h"
#include "plugin.h"
#include "sigv4.h"

#include <stdlib.h>
#include <string.h>

#define PING_S 10                /* minio-go asks MinIO for a keep-alive every 10 s */
#define IDLE_MS (3 * PING_S * 1000) /* silent this long: the stream is dead */
#define HOLD_MAX 1000            /* events waiting for the bus before the stream is paused
                                    (HERALD_MINIO_HOLD_MAX: specs) */
#define LASTED_MS 2000           /* a stream that lasted this long ends by reconnecting at once */

typedef struct mev mev;
struct mev {
  mev *next;
  char *data;
  size_t len;
};

enum { ST_IDLE, ST_LISTENING, ST_WAIT, ST_STOPPING };

typedef struct minio {
  herald_source *src;
  /* config */
  char *endpoint, *bucket, *region, *prefix, *suffix, *metadata_json, *ca_file;
  char **events;
  size_t nevents;
  int insecure;
  char *access_key, *secret_key;
  /* the stream */
  cloud_req listen;
  herald_buf line;        /* a line still arriving */
  herald_buf err_body;    /* a refused listen's answer, for the reason */
  uv_timer_t retry, idle, flush_timer;
  herald_backoff backoff;
  int state, paused, waiting_room, closing, got_data;
  uint64_t started_ns, last_ns;
  mev *held, *held_tail;  /* events waiting for room on the bus, in order */
  uint32_t nheld, inflight, hold_max;
  herald_source_stop_cb stop_done;
} minio;

static void free_str(char **p) {
  if (*p) memset(*p, 0, strlen(*p));
  free(*p);
  *p = NULL;
}

static char *cfg_dup(lua_State *L, int idx, const char *field) {
  const char *v = herald_cfg_string(L, idx, field, NULL);
  return v && *v ? herald_xstrdup(v) : NULL;
}

static int minio_init(herald_source *src, lua_State *L, int cfg_idx) {
  minio *m = src->priv;
  m->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  m->endpoint = cfg_dup(L, cfg_idx, "endpoint");
  m->region = cfg_dup(L, cfg_idx, "region");
  m->insecure = herald_cfg_bool(L, cfg_idx, "insecure", 0);
  lua_getfield(L, cfg_idx, "bucket");
  if (lua_istable(L, -1)) m->bucket = cfg_dup(L, lua_gettop(L), "name");
  lua_pop(L, 1);
  lua_getfield(L, cfg_idx, "filter");
  if (lua_istable(L, -1)) {
    m->prefix = cfg_dup(L, lua_gettop(L), "prefix");
    m->suffix = cfg_dup(L, lua_gettop(L), "suffix");
  }
  lua_pop(L, 1);
  lua_getfield(L, cfg_idx, "events");
  if (lua_istable(L, -1)) {
    size_t n = lua_objlen(L, -1);
    m->events = herald_xcalloc(n + 1, sizeof *m->events);
    for (size_t i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, (int)i);
      if (lua_type(L, -1) == LUA_TSTRING) m->events[m->nevents++] = herald_xstrdup(lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  m->metadata_json = herald_cfg_metadata_json(L, cfg_idx);
  if (m->metadata_json && strcmp(m->metadata_json, "{}") == 0) free_str(&m->metadata_json);
  herald_backoff_init(&m->backoff, NULL, 0, NULL);
  const char *hm = getenv("HERALD_MINIO_HOLD_MAX"); /* test-only: reach the pause with few events */
  m->hold_max = hm && atoi(hm) > 0 ? (uint32_t)atoi(hm) : HOLD_MAX;
  if (!m->endpoint || !m->bucket) {
    herald_log(&src->log, HLOG_ERROR, "minio: endpoint and bucket.name are needed");
    return HERALD_EINVAL;
  }
  int err = 0;
  m->access_key = herald_secret_field(src->engine, &src->log, L, cfg_idx, "accessKey", "accessKey", &err);
  if (err < 0) return HERALD_EINVAL;
  m->secret_key = herald_secret_field(src->engine, &src->log, L, cfg_idx, "secretKey", "secretKey", &err);
  if (err < 0) return HERALD_EINVAL;
  if (!m->access_key || !m->secret_key) {
    herald_log(&src->log, HLOG_ERROR, "minio: accessKey and secretKey are needed");
    return HERALD_EINVAL;
  }
  lua_getfield(L, cfg_idx, "caCertificate");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    m->ca_file = herald_secret_path(src->engine, herald_cfg_string(L, t, "name", ""),
                                    herald_cfg_string(L, t, "key", ""), &err);
  }
  lua_pop(L, 1);
  if (err < 0) {
    herald_log(&src->log, HLOG_ERROR, "caCertificate: not a usable secret name and key");
    return HERALD_EINVAL;
  }
  return 0;
}

/* ---- the stream ---- */

static void listen_start(minio *m);
static void emit_held(minio *m);

static void on_retry(uv_timer_t *t) {
  minio *m = t->data;
  if (m->state == ST_WAIT) listen_start(m);
}

static void wait_then_listen(minio *m, uint64_t ms) {
  m->state = ST_WAIT;
  uv_timer_stop(&m->idle);
  uv_timer_start(&m->retry, on_retry, ms, 0);
}

static void fail(minio *m, const char *why) {
  if (m->state == ST_STOPPING) return;
  herald_source_set_connected(m->src, 0, why);
  cloud_req_cancel(&m->listen);
  m->paused = 0;
  wait_then_listen(m, herald_backoff_next(&m->backoff));
}

static void on_idle(uv_timer_t *t) {
  minio *m = t->data;
  if (m->state != ST_LISTENING || m->paused) return;
  if (herald_mono_ns() - m->last_ns >= (uint64_t)IDLE_MS * 1000000u)
    fail(m, "the notification stream went silent (no keep-alive for 30 s)");
}

static void on_emitted(void *data, int status) {
  minio *m = data;
  m->inflight--;
  if (status != 0) {
    /* the bus refused it (JetStream down): MinIO cannot send it again */
    herald_metric_inc(m->src->m_processing_failed);
    herald_log_limited(&m->src->log, HLOG_WARN, "a notification was not published: %s (lost)",
                       herald_strerror(status));
  }
}

static void on_room(herald_source *src, void *data) {
  (void)src;
  minio *m = data;
  m->waiting_room = 0;
  emit_held(m);
}

/* Hands the held events to the bus, in order, until it is full; resumes a paused stream. */
static void emit_held(minio *m) {
  while (m->held && m->state != ST_STOPPING) {
    mev *e = m->held;
    int r = herald_source_emit(m->src, e->data, e->len, on_emitted, m);
    if (r == HERALD_EBUSFULL) {
      if (!m->waiting_room && herald_source_when_room(m->src, on_room, m) == 0) m->waiting_room = 1;
      return;
    }
    m->held = e->next;
    if (!m->held) m->held_tail = NULL;
    m->nheld--;
    if (r == 0) m->inflight++;
    else herald_log_limited(&m->src->log, HLOG_WARN, "a notification was not published: %s", herald_strerror(r));
    free(e->data);
    free(e);
  }
  if (m->paused && m->nheld < m->hold_max / 2 + 1 && m->state == ST_LISTENING) {
    herald_log(&m->src->log, HLOG_DEBUG, "the stream resumed (%u notifications wait for the bus)", m->nheld);
    m->paused = 0;
    m->last_ns = herald_mono_ns();
    cloud_req_resume(&m->listen); /* may deliver at once (on_data runs from here) */
  }
}

/* One line of the stream: keep-alives skipped, records made into an event and held. */
static void on_line(minio *m, const char *s, size_t n) {
  while (n && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
  while (n && (*s == ' ' || *s == '\t')) s++, n--;
  if (!n) return; /* a blank keep-alive */
  if (herald_source_too_big(m->src, n)) return;
  cj_doc d = {0};
  if (cj_parse(&d, s, n) != 0 || d.t[0].type != CJ_OBJECT) {
    cj_free(&d);
    herald_metric_inc(m->src->m_processing_failed);
    herald_log_limited(&m->src->log, HLOG_WARN, "invalid notification (not a JSON object): skipped");
    return;
  }
  /* Go's json is case-insensitive on field names: minio-go's Info.Records takes "records" too */
  int recs = cj_get(&d, 0, "Records");
  if (recs < 0) recs = cj_get(&d, 0, "records");
  if (recs < 0 || d.t[recs].type != CJ_ARRAY || cj_first(&d, recs) < 0) {
    cj_free(&d); /* {} or {"Records":null}: a keep-alive */
    return;
  }
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_puts(&b, "{\"notification\":");
  herald_buf_append(&b, d.s + d.t[recs].start, d.t[recs].end - d.t[recs].start);
  if (m->metadata_json) {
    herald_buf_puts(&b, ",\"metadata\":");
    herald_buf_puts(&b, m->metadata_json);
  }
  herald_buf_putc(&b, '}');
  cj_free(&d);
  mev *e = herald_xcalloc(1, sizeof *e);
  e->len = b.len;
  e->data = herald_xstrdup(herald_buf_cstr(&b));
  herald_buf_free(&b);
  if (m->held_tail) m->held_tail->next = e;
  else m->held = e;
  m->held_tail = e;
  m->nheld++;
}

static int on_data(cloud_req *r, const char *p, size_t n) {
  minio *m = r->data;
  if (m->state != ST_LISTENING) return 1;
  if (r->status != 200) { /* a refusal's body: kept for the reason */
    if (m->err_body.len < 4096) herald_buf_append(&m->err_body, p, n);
    return 0;
  }
  if (m->nheld >= m->hold_max) { /* the bus is behind: leave the rest in the socket */
    if (!m->paused)
      herald_log(&m->src->log, HLOG_DEBUG, "the stream paused (%u notifications wait for the bus)", m->nheld);
    m->paused = 1;
    return CLOUD_REQ_PAUSE;
  }
  m->last_ns = herald_mono_ns();
  if (!m->got_data) {
    m->got_data = 1;
    herald_backoff_reset(&m->backoff);
    herald_source_set_connected(m->src, 1, NULL);
  }
  size_t max = HERALD_DEFAULT_MAX_MESSAGE * 4;
  while (n) {
    const char *nl = memchr(p, '\n', n);
    size_t k = nl ? (size_t)(nl - p) : n;
    if (m->line.len + k <= max) herald_buf_append(&m->line, p, k);
    else m->line.len = max + 1; /* too long: dropped whole below */
    if (!nl) break;
    if (m->line.len <= max) on_line(m, m->line.data ? m->line.data : "", m->line.len);
    else herald_source_too_big(m->src, m->line.len);
    herald_buf_reset(&m->line);
    p = nl + 1;
    n -= k + 1;
  }
  emit_held(m);
  return 0;
}

static void on_listen_done(cloud_req *r, long status, CURLcode rc) {
  minio *m = r->data;
  if (m->state != ST_LISTENING) return;
  herald_buf_reset(&m->line);
  char why[400];
  if (status == 200 && (rc == CURLE_OK || rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR)) {
    uint64_t lasted_ms = (herald_mono_ns() - m->started_ns) / 1000000u;
    herald_log(&m->src->log, HLOG_INFO, "the notification stream ended (%s): listening again",
               rc == CURLE_OK ? "closed by the server" : curl_easy_strerror(rc));
    if (lasted_ms >= LASTED_MS) {
      wait_then_listen(m, 0);
      return;
    }
    snprintf(why, sizeof why, "the notification stream ended after %llu ms", (unsigned long long)lasted_ms);
  } else if (status) {
    herald_buf t = HERALD_BUF_INIT;
    const char *code = NULL, *msg = NULL;
    const char *s = m->err_body.data ? herald_buf_cstr(&m->err_body) : "";
    const char *a = strstr(s, "<Code>"), *b = a ? strstr(a, "</Code>") : NULL;
    if (a && b) code = a + 6;
    const char *c = strstr(s, "<Message>"), *d = c ? strstr(c, "</Message>") : NULL;
    if (c && d) msg = c + 9;
    snprintf(why, sizeof why, "listen on bucket %s: HTTP %ld%s%.*s%s%.*s", m->bucket, status,
             code ? ": " : "", code ? (int)(b - code) : 0, code ? code : "", msg ? ": " : "",
             msg ? (int)((d - msg) > 200 ? 200 : (d - msg)) : 0, msg ? msg : "");
    herald_buf_free(&t);
  } else {
    snprintf(why, sizeof why, "listen on bucket %s: %s", m->bucket,
             r->x.errbuf[0] ? r->x.errbuf : curl_easy_strerror(rc));
  }
  fail(m, why);
}

static void query_param(herald_buf *q, const char *k, const char *v) {
  if (q->len) herald_buf_putc(q, '&');
  herald_buf_puts(q, k);
  herald_buf_putc(q, '=');
  herald_sigv4_uri_encode(q, v, strlen(v), 0);
}

static void listen_start(minio *m) {
  /* minio-go: url.Values{events..., ping, prefix, suffix}.Encode(), sorted by name */
  herald_buf q = HERALD_BUF_INIT, path = HERALD_BUF_INIT, url = HERALD_BUF_INIT;
  for (size_t i = 0; i < m->nevents; i++) query_param(&q, "events", m->events[i]);
  char ping[8];
  snprintf(ping, sizeof ping, "%d", PING_S);
  query_param(&q, "ping", ping);
  query_param(&q, "prefix", m->prefix ? m->prefix : "");
  query_param(&q, "suffix", m->suffix ? m->suffix : "");
  herald_buf_putc(&path, '/');
  herald_sigv4_uri_encode(&path, m->bucket, strlen(m->bucket), 0);
  herald_buf_printf(&url, "%s://%s%s?%s", m->insecure ? "http" : "https", m->endpoint,
                    herald_buf_cstr(&path), herald_buf_cstr(&q));

  char date[17];
  herald_sigv4_amz_date(herald_now_ns(), date);
  /* the Host header as minio-go signs it: the endpoint without a default port */
  size_t hl = strlen(m->endpoint);
  const char *dflt = m->insecure ? ":80" : ":443";
  if (hl > strlen(dflt) && strcmp(m->endpoint + hl - strlen(dflt), dflt) == 0) hl -= strlen(dflt);
  char *host_h = herald_xasprintf("host: %.*s", (int)hl, m->endpoint);
  char date_h[40];
  snprintf(date_h, sizeof date_h, "x-amz-date: %s", date);
  const char *sha_h = "x-amz-content-sha256: " SIGV4_EMPTY_SHA256;
  const char *h[3] = {host_h, sha_h, date_h};
  herald_sigv4_req sr = {.method = "GET", .path = herald_buf_cstr(&path), .query = herald_buf_cstr(&q),
                         .headers = h, .nheaders = 3, .region = m->region ? m->region : "us-east-1",
                         .service = "s3", .amz_date = date, .s3 = 1};
  herald_sigv4_creds creds = {.access_key = m->access_key, .secret_key = m->secret_key};
  herald_buf auth = HERALD_BUF_INIT;
  herald_buf_puts(&auth, "Authorization: ");
  herald_sigv4_authorization(&sr, &creds, &auth);
  struct curl_slist *hs = NULL;
  hs = curl_slist_append(hs, host_h);
  hs = curl_slist_append(hs, sha_h);
  hs = curl_slist_append(hs, date_h);
  hs = curl_slist_append(hs, herald_buf_cstr(&auth));
  hs = curl_slist_append(hs, "Expect:");
  memset(auth.data, 0, auth.len);
  herald_buf_free(&auth);
  free(host_h);

  m->listen.data = m;
  m->listen.on_data = on_data;
  m->listen.insecure = 0;
  m->listen.ca_file = m->ca_file;
  m->got_data = 0;
  m->paused = 0;
  herald_buf_reset(&m->err_body);
  herald_buf_reset(&m->line);
  m->state = ST_LISTENING;
  m->started_ns = m->last_ns = herald_mono_ns();
  int rc = cloud_req_start(&m->listen, "GET", herald_buf_cstr(&url), hs, NULL, 0, 0, on_listen_done);
  herald_buf_free(&q);
  herald_buf_free(&path);
  herald_buf_free(&url);
  if (rc != 0) {
    fail(m, "cannot start the listen request");
    return;
  }
  uv_timer_start(&m->idle, on_idle, 1000, 1000);
}

/* ---- start and stop ---- */

static int minio_start(herald_source *src) {
  minio *m = src->priv;
  if (herald_curl_loop_ref(src->engine->loop) != 0) return HERALD_ENOMEM;
  uv_loop_t *loop = src->engine->loop;
  uv_timer_init(loop, &m->retry);
  uv_timer_init(loop, &m->idle);
  uv_timer_init(loop, &m->flush_timer);
  m->retry.data = m->idle.data = m->flush_timer.data = m;
  herald_log(&src->log, HLOG_INFO, "minio source starting (bucket %s at %s://%s)", m->bucket,
             m->insecure ? "http" : "https", m->endpoint);
  listen_start(m);
  return 0;
}

static void free_all(minio *m) {
  cloud_req_free(&m->listen);
  herald_buf_free(&m->line);
  herald_buf_free(&m->err_body);
  for (mev *e = m->held, *n; e; e = n) {
    n = e->next;
    free(e->data);
    free(e);
  }
  m->held = m->held_tail = NULL;
  for (size_t i = 0; i < m->nevents; i++) free(m->events[i]);
  free(m->events);
  m->events = NULL;
  char **strs[] = {&m->endpoint, &m->bucket, &m->region, &m->prefix, &m->suffix,
                   &m->metadata_json, &m->ca_file, &m->access_key, &m->secret_key};
  for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) free_str(strs[i]);
}

static void on_closed(uv_handle_t *h) {
  minio *m = h->data;
  if (--m->closing) return;
  herald_source_stop_cb done = m->stop_done;
  free_all(m);
  herald_curl_loop_unref();
  if (done) done(m->src);
}

static void on_flush_wait(uv_timer_t *t) {
  minio *m = t->data;
  if (m->inflight) return;
  uv_timer_stop(t);
  m->closing = 3;
  uv_close((uv_handle_t *)&m->retry, on_closed);
  uv_close((uv_handle_t *)&m->idle, on_closed);
  uv_close((uv_handle_t *)&m->flush_timer, on_closed);
}

static void minio_stop(herald_source *src, herald_source_stop_cb done) {
  minio *m = src->priv;
  if (m->state == ST_STOPPING) return;
  int started = m->retry.loop != NULL;
  m->state = ST_STOPPING;
  m->stop_done = done;
  if (!started) {
    free_all(m);
    done(src);
    return;
  }
  herald_source_cancel_room(src);
  cloud_req_cancel(&m->listen);
  uv_timer_stop(&m->retry);
  uv_timer_stop(&m->idle);
  if (m->nheld)
    herald_log(&src->log, HLOG_WARN, "%u notifications never reached the bus (stopping while it was full)", m->nheld);
  uv_timer_start(&m->flush_timer, on_flush_wait, 0, 20);
}

const herald_source_type herald_source_minio = {
    .name = "minio",
    .event_type = "minio",
    .priv_size = sizeof(minio),
    .init = minio_init,
    .start = minio_start,
    .stop = minio_stop,
};
