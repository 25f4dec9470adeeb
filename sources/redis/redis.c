/*
 * sources/redis/redis.c: the `redis` event source (Argo's RedisEventSource): Redis pub/sub.
 *
 *   lib/redis connection --ready--> SUBSCRIBE channel... (plain names, as Argo: no patterns)
 *   "message" push --> {"channel","pattern","body"[,"metadata"]} --> herald_source_emit
 *   bus full: the message is kept, the connection stops reading (Redis buffers for us, up
 *             to its client-output-buffer-limit for pub/sub) and goes on when the bus has room
 *   dropped connection: reconnect for ever (lib/redis), SUBSCRIBE again
 *
 * Pub/sub has no acknowledgement: a message published while Herald is not subscribed is not
 * seen (as in Argo). The data is what Argo's json.Marshal of events.RedisEventData writes:
 * body a JSON string, or with jsonBody the message itself (not JSON: counted, dropped);
 * pattern always "" (Argo subscribes with SUBSCRIBE, so go-redis's Pattern is empty).
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "metrics.h"
#include "plugin.h"
#include "redis/redis_conn.h"

#include <stdlib.h>
#include <string.h>

typedef struct redis_src {
  herald_source *src;
  herald_redis conn;
  char **channels;
  size_t nchannels, subscribed;
  int json_body;
  char *metadata_json; /* sorted, NULL when none */
  redisReply *held;    /* the message the full bus did not take yet */
  herald_buf buf;      /* the event data being built (reused) */
  uint32_t inflight;   /* publishes waiting for their callback */
  int stopping, conn_closed;
  herald_source_stop_cb stop_done;
} redis_src;

static int redis_init(herald_source *src, lua_State *L, int cfg_idx) {
  redis_src *s = src->priv;
  s->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  int r = herald_redis_init(&s->conn, src, L, cfg_idx);
  if (r < 0) return r;
  s->json_body = herald_cfg_bool(L, cfg_idx, "jsonBody", 0);
  s->metadata_json = herald_redis_metadata_json(L, cfg_idx);
  lua_getfield(L, cfg_idx, "channels");
  size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
  s->channels = herald_xcalloc(n ? n : 1, sizeof *s->channels);
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    s->channels[s->nchannels++] = herald_xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

static void maybe_done(redis_src *s) {
  if (!s->stopping || !s->conn_closed || s->inflight || !s->stop_done) return;
  herald_source_stop_cb done = s->stop_done;
  s->stop_done = NULL;
  for (size_t i = 0; i < s->nchannels; i++) free(s->channels[i]);
  free(s->channels);
  free(s->metadata_json);
  herald_buf_free(&s->buf);
  if (s->held) freeReplyObject(s->held);
  s->held = NULL;
  done(s->src);
}

static void on_published(void *data, int status) {
  redis_src *s = data;
  s->inflight--;
  if (status < 0)
    herald_log_limited(&s->src->log, HLOG_WARN, "redis message not published: %s",
                       herald_strerror(status));
  maybe_done(s);
}

static int is_str(const redisReply *r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* Publishes one "message" push. Returns HERALD_EBUSFULL to be tried again when the bus has
 * room (the caller keeps it), else 0 (sent, or dropped with a count and a log line). */
static int handle_message(redis_src *s, const redisReply *m) {
  const redisReply *ch = m->element[1], *body = m->element[2];
  if (!is_str(ch) || !is_str(body)) return 0;
  if (herald_source_too_big(s->src, body->len)) return 0;
  herald_buf *b = &s->buf;
  herald_buf_reset(b);
  herald_buf_puts(b, "{\"channel\":");
  herald_buf_json_string(b, ch->str, ch->len);
  herald_buf_puts(b, ",\"pattern\":\"\",\"body\":");
  if (s->json_body) {
    if (herald_source_put_body(s->src, b, body->str, body->len, 1) < 0) {
      herald_metric_inc(s->src->m_processing_failed);
      return 0;
    }
  } else {
    herald_buf_json_string(b, body->str, body->len); /* Go's string: a JSON string */
  }
  if (s->metadata_json) {
    herald_buf_puts(b, ",\"metadata\":");
    herald_buf_puts(b, s->metadata_json);
  }
  herald_buf_putc(b, '}');
  int r = herald_source_emit(s->src, b->data, b->len, on_published, s);
  if (r == 0) {
    s->inflight++;
    return 0;
  }
  if (r == HERALD_EBUSFULL) return r;
  herald_log_limited(&s->src->log, HLOG_WARN, "redis message not published: %s", herald_strerror(r));
  return 0;
}

static void on_room(herald_source *src, void *data);

/* Takes ownership of rep. */
static void on_push(herald_redis *c, redisReply *rep) {
  redis_src *s = c->data;
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 || !is_str(rep->element[0])) {
    freeReplyObject(rep);
    return;
  }
  const char *kind = rep->element[0]->str;
  if (strcmp(kind, "message") == 0) {
    if (!s->stopping && handle_message(s, rep) == HERALD_EBUSFULL) {
      s->held = rep;
      herald_redis_pause(&s->conn);
      herald_source_when_room(s->src, on_room, s);
      return;
    }
  } else if (strcmp(kind, "subscribe") == 0) {
    if (++s->subscribed == s->nchannels)
      herald_log(&s->src->log, HLOG_INFO, "subscribed to %zu channel%s", s->nchannels,
                 s->nchannels == 1 ? "" : "s");
  }
  freeReplyObject(rep);
}

static void on_room(herald_source *src, void *data) {
  (void)src;
  redis_src *s = data;
  if (s->stopping || !s->held) return;
  if (handle_message(s, s->held) == HERALD_EBUSFULL) {
    herald_source_when_room(s->src, on_room, s);
    return;
  }
  freeReplyObject(s->held);
  s->held = NULL;
  herald_redis_resume(&s->conn);
}

static void on_ready(herald_redis *c) {
  redis_src *s = c->data;
  s->subscribed = 0;
  const char **argv = herald_xcalloc(s->nchannels + 1, sizeof *argv);
  size_t *lens = herald_xcalloc(s->nchannels + 1, sizeof *lens);
  argv[0] = "SUBSCRIBE";
  lens[0] = 9;
  for (size_t i = 0; i < s->nchannels; i++) {
    argv[i + 1] = s->channels[i];
    lens[i + 1] = strlen(s->channels[i]);
  }
  /* the confirmations, one per channel, and then the messages all arrive as pushes */
  herald_redis_subscribe(c, (int)s->nchannels + 1, argv, lens);
  free(argv);
  free(lens);
}

static int redis_start(herald_source *src) {
  redis_src *s = src->priv;
  s->conn.data = s;
  s->conn.on_ready = on_ready;
  s->conn.on_push = on_push;
  herald_log(&src->log, HLOG_INFO, "connecting to %s:%s%s", s->conn.host, s->conn.port,
             s->conn.ssl_ctx ? " (TLS)" : "");
  return herald_redis_start(&s->conn);
}

static void on_conn_closed(herald_redis *c) {
  redis_src *s = c->data;
  s->conn_closed = 1;
  maybe_done(s);
}

static void redis_stop(herald_source *src, herald_source_stop_cb done) {
  redis_src *s = src->priv;
  if (s->stopping) return;
  s->stopping = 1;
  s->stop_done = done;
  herald_source_cancel_room(src);
  s->conn.data = s;
  herald_redis_close(&s->conn, on_conn_closed);
}

const herald_source_type herald_source_redis = {
    .name = "redis",
    .event_type = "redis",
    .priv_size = sizeof(redis_src),
    .init = redis_init,
    .start = redis_start,
    .stop = redis_stop,
};
