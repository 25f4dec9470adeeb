/*
 * sources/redisStream/redisStream.c: the `redisStream` event source (Argo's
 * RedisStreamEventSource): Redis Streams read through a consumer group, acknowledged only once
 * the bus holds each event.
 *
 *   connected --> XGROUP CREATE <stream> <group> $ MKSTREAM for each stream (BUSYGROUP: fine)
 *     --> XREADGROUP GROUP <group> argo-events-worker COUNT n BLOCK 2000 STREAMS s... id...
 *         id "0-0" first: this consumer's pending entries (read before a crash or a dropped
 *         connection, never acknowledged), then, once a stream answers none, ">" (new ones)
 *     --> each entry --> {"stream","message_id","values"[,"metadata"]} --> herald_source_emit
 *     --> the bus's callback, status 0 --> its id joins the stream's XACK list
 *     --> when the whole batch is on the bus: XACK ... and the next XREADGROUP, pipelined
 *
 *   bus full: the batch waits where it stopped (herald_source_when_room), nothing more is read
 *   publish failed: not acknowledged; that stream goes back to reading its pending entries
 *   connection dropped: reconnect for ever; acknowledgements owed are sent on the next one
 *
 * So an entry is acknowledged only after the bus holds it, and one read but not acknowledged
 * when Herald dies is read again at the next start: at least once, duplicates possible.
 * The consumer name is Argo's fixed "argo-events-worker" (one active replica), so entries an
 * Argo event source left pending are picked up too. `values` is written as Go's json.Marshal
 * writes a map[string]interface{} of strings: keys sorted, a repeated field's last value.
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "metrics.h"
#include "plugin.h"
#include "redis/redis_conn.h"

#include <stdlib.h>
#include <string.h>

#define CONSUMER "argo-events-worker" /* Argo's */
#define BLOCK_MS "2000"                /* Argo's XREADGROUP Block */

typedef struct id_list {
  char **ids;
  size_t n, cap;
} id_list;

typedef struct field_ref {
  const redisReply *k, *v;
  size_t idx;
} field_ref;

typedef struct rs_src {
  herald_source *src;
  herald_redis conn;
  char **streams;
  size_t nstreams;
  char **read_id; /* per stream: "0-0" / the last pending id read (pending phase) or ">" */
  id_list *acks;  /* per stream: ids the bus holds, to XACK */
  char *group;
  char count[24];
  char *metadata_json;
  redisReply *batch; /* the XREADGROUP answer being published */
  size_t bi, ei;     /* where in it */
  int group_ready;   /* XGROUP CREATE done on this connection */
  int setup_pending, reading, room_wait;
  uint32_t inflight;
  field_ref *fields;
  size_t fields_cap;
  herald_buf buf;
  int stopping, conn_closed, closing_conn, acks_out;
  herald_source_stop_cb stop_done;
} rs_src;

typedef struct emit_ctx {
  rs_src *s;
  size_t stream;
  char id[]; /* the entry's id */
} emit_ctx;

static void pump(rs_src *s);
static void process(rs_src *s);

static int rs_init(herald_source *src, lua_State *L, int cfg_idx) {
  rs_src *s = src->priv;
  s->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  int r = herald_redis_init(&s->conn, src, L, cfg_idx);
  if (r < 0) return r;
  s->metadata_json = herald_redis_metadata_json(L, cfg_idx);
  const char *g = herald_cfg_string(L, cfg_idx, "consumerGroup", "");
  s->group = herald_xstrdup(*g ? g : "argo-events-cg");
  long n = (long)herald_cfg_number(L, cfg_idx, "maxMsgCountPerRead", 10);
  snprintf(s->count, sizeof s->count, "%ld", n > 0 ? n : 10);
  lua_getfield(L, cfg_idx, "streams");
  size_t ns = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
  s->streams = herald_xcalloc(ns ? ns : 1, sizeof *s->streams);
  s->read_id = herald_xcalloc(ns ? ns : 1, sizeof *s->read_id);
  s->acks = herald_xcalloc(ns ? ns : 1, sizeof *s->acks);
  for (size_t i = 0; i < ns; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    s->streams[s->nstreams] = herald_xstrdup(lua_tostring(L, -1));
    s->read_id[s->nstreams++] = herald_xstrdup("0-0");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

static void set_read_id(rs_src *s, size_t i, const char *id, size_t len) {
  free(s->read_id[i]);
  s->read_id[i] = herald_xcalloc(1, len + 1);
  memcpy(s->read_id[i], id, len);
}

static int pending_phase(rs_src *s, size_t i) { return strcmp(s->read_id[i], ">") != 0; }

static void ack_push(rs_src *s, size_t i, const char *id, size_t len) {
  id_list *a = &s->acks[i];
  if (a->n == a->cap) {
    a->cap = a->cap ? a->cap * 2 : 64;
    a->ids = realloc(a->ids, a->cap * sizeof *a->ids);
    if (!a->ids) abort();
  }
  char *c = malloc(len + 1);
  if (!c) abort();
  memcpy(c, id, len);
  c[len] = 0;
  a->ids[a->n++] = c;
}

/* ---- stopping ---- */

static void free_all(rs_src *s) {
  for (size_t i = 0; i < s->nstreams; i++) {
    free(s->streams[i]);
    free(s->read_id[i]);
    for (size_t j = 0; j < s->acks[i].n; j++) free(s->acks[i].ids[j]);
    free(s->acks[i].ids);
  }
  free(s->streams);
  free(s->read_id);
  free(s->acks);
  free(s->group);
  free(s->metadata_json);
  free(s->fields);
  herald_buf_free(&s->buf);
  if (s->batch) freeReplyObject(s->batch);
  s->batch = NULL;
}

static void on_conn_closed(herald_redis *c) {
  rs_src *s = c->data;
  s->conn_closed = 1;
  if (s->stop_done && s->inflight == 0) {
    herald_source_stop_cb done = s->stop_done;
    s->stop_done = NULL;
    free_all(s);
    done(s->src);
  }
}

static void close_conn(rs_src *s) {
  if (s->closing_conn) return;
  s->closing_conn = 1;
  herald_redis_close(&s->conn, on_conn_closed);
}

/* ---- acknowledging ---- */

static void on_ack(herald_redis *c, redisReply *reply, void *data) {
  rs_src *s = c->data;
  const char *stream = data;
  if (reply && reply->type == REDIS_REPLY_ERROR)
    herald_log_limited(&s->src->log, HLOG_WARN, "XACK on stream %s failed: %s", stream, reply->str);
  if (reply) freeReplyObject(reply);
  s->acks_out--;
  if (s->stopping && s->acks_out == 0) close_conn(s);
}

/* Sends XACK for every id the bus holds (kept for the next connection when there is none). */
static void flush_acks(rs_src *s) {
  if (!s->conn.ready) return;
  for (size_t i = 0; i < s->nstreams; i++) {
    id_list *a = &s->acks[i];
    if (!a->n) continue;
    size_t argc = a->n + 3;
    const char **argv = malloc(argc * sizeof *argv);
    size_t *lens = malloc(argc * sizeof *lens);
    if (!argv || !lens) abort();
    argv[0] = "XACK", lens[0] = 4;
    argv[1] = s->streams[i], lens[1] = strlen(s->streams[i]);
    argv[2] = s->group, lens[2] = strlen(s->group);
    for (size_t j = 0; j < a->n; j++) argv[j + 3] = a->ids[j], lens[j + 3] = strlen(a->ids[j]);
    if (herald_redis_command(&s->conn, (int)argc, argv, lens, on_ack, s->streams[i]) == 0) {
      s->acks_out++;
      for (size_t j = 0; j < a->n; j++) free(a->ids[j]);
      a->n = 0;
    }
    free(argv);
    free(lens);
  }
}

/* ---- publishing ---- */

static void on_published(void *data, int status) {
  emit_ctx *e = data;
  rs_src *s = e->s;
  s->inflight--;
  if (status == 0) {
    ack_push(s, e->stream, e->id, strlen(e->id));
  } else {
    herald_log_limited(&s->src->log, HLOG_WARN,
                       "stream %s entry %s not published (%s): not acknowledged, read again",
                       s->streams[e->stream], e->id, herald_strerror(status));
    if (!s->stopping) set_read_id(s, e->stream, "0-0", 3);
  }
  free(e);
  if (s->inflight) return;
  if (s->stopping) {
    if (s->stop_done && s->conn_closed) on_conn_closed(&s->conn);
    else if (!s->closing_conn) {
      flush_acks(s);
      if (s->acks_out == 0) close_conn(s);
    }
    return;
  }
  pump(s);
}

static int cmp_field(const void *a, const void *b) {
  const field_ref *x = a, *y = b;
  size_t n = x->k->len < y->k->len ? x->k->len : y->k->len;
  int c = memcmp(x->k->str, y->k->str, n);
  if (c) return c;
  if (x->k->len != y->k->len) return x->k->len < y->k->len ? -1 : 1;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int is_str(const redisReply *r) {
  return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* Publishes one entry [id, [field, value, ...]] of stream i. Returns HERALD_EBUSFULL to be
 * tried again when the bus has room, else 0 (sent; or acknowledged and dropped, logged). */
static int emit_entry(rs_src *s, size_t i, const redisReply *e) {
  if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || !is_str(e->element[0])) return 0;
  const redisReply *id = e->element[0], *f = e->element[1];
  if (f->type != REDIS_REPLY_ARRAY) {
    /* a pending entry deleted since (XDEL, MAXLEN): nothing to publish; acknowledge it */
    ack_push(s, i, id->str, id->len);
    return 0;
  }
  size_t np = f->elements / 2, total = 0;
  if (np > s->fields_cap) {
    s->fields_cap = np * 2;
    free(s->fields);
    s->fields = herald_xcalloc(s->fields_cap, sizeof *s->fields);
  }
  size_t n = 0;
  for (size_t j = 0; j < np; j++) {
    const redisReply *k = f->element[2 * j], *v = f->element[2 * j + 1];
    if (!is_str(k)) continue;
    s->fields[n++] = (field_ref){k, v, j};
    total += k->len + (is_str(v) ? v->len : 0);
  }
  if (herald_source_too_big(s->src, total)) {
    ack_push(s, i, id->str, id->len);
    return 0;
  }
  if (n > 1) qsort(s->fields, n, sizeof *s->fields, cmp_field);
  herald_buf *b = &s->buf;
  herald_buf_reset(b);
  herald_buf_puts(b, "{\"stream\":");
  herald_buf_json_string(b, s->streams[i], strlen(s->streams[i]));
  herald_buf_puts(b, ",\"message_id\":");
  herald_buf_json_string(b, id->str, id->len);
  herald_buf_puts(b, ",\"values\":{");
  int first = 1;
  for (size_t j = 0; j < n; j++) {
    /* equal keys are adjacent, in order: the map keeps the last */
    if (j + 1 < n && s->fields[j + 1].k->len == s->fields[j].k->len &&
        memcmp(s->fields[j + 1].k->str, s->fields[j].k->str, s->fields[j].k->len) == 0)
      continue;
    if (!first) herald_buf_putc(b, ',');
    first = 0;
    herald_buf_json_string(b, s->fields[j].k->str, s->fields[j].k->len);
    herald_buf_putc(b, ':');
    const redisReply *v = s->fields[j].v;
    if (is_str(v)) herald_buf_json_string(b, v->str, v->len);
    else herald_buf_puts(b, "null");
  }
  herald_buf_putc(b, '}');
  if (s->metadata_json) {
    herald_buf_puts(b, ",\"metadata\":");
    herald_buf_puts(b, s->metadata_json);
  }
  herald_buf_putc(b, '}');
  emit_ctx *ctx = malloc(sizeof *ctx + id->len + 1);
  if (!ctx) abort();
  ctx->s = s;
  ctx->stream = i;
  memcpy(ctx->id, id->str, id->len);
  ctx->id[id->len] = 0;
  int r = herald_source_emit(s->src, b->data, b->len, on_published, ctx);
  if (r == 0) {
    s->inflight++;
    return 0;
  }
  free(ctx);
  if (r == HERALD_EBUSFULL) return r;
  /* not published (e.g. the bus is closing): left pending, read again later */
  herald_log_limited(&s->src->log, HLOG_WARN, "stream %s entry %.*s not published: %s",
                     s->streams[i], (int)id->len, id->str, herald_strerror(r));
  set_read_id(s, i, "0-0", 3);
  return 0;
}

static void on_room(herald_source *src, void *data) {
  (void)src;
  rs_src *s = data;
  s->room_wait = 0;
  if (!s->stopping) process(s);
}

static ssize_t stream_index(rs_src *s, const redisReply *name) {
  if (!is_str(name)) return -1;
  for (size_t i = 0; i < s->nstreams; i++)
    if (strlen(s->streams[i]) == name->len && memcmp(s->streams[i], name->str, name->len) == 0)
      return (ssize_t)i;
  return -1;
}

/* Publishes the batch from where it stopped. */
static void process(rs_src *s) {
  redisReply *bt = s->batch;
  while (bt && s->bi < bt->elements) {
    const redisReply *sr = bt->element[s->bi];
    ssize_t i = (sr->type == REDIS_REPLY_ARRAY && sr->elements >= 2) ? stream_index(s, sr->element[0]) : -1;
    const redisReply *entries = i >= 0 ? sr->element[1] : NULL;
    if (!entries || entries->type != REDIS_REPLY_ARRAY) {
      s->bi++, s->ei = 0;
      continue;
    }
    /* no pending entry left on this stream: read new ones from now on */
    if (s->ei == 0 && entries->elements == 0 && pending_phase(s, (size_t)i))
      set_read_id(s, (size_t)i, ">", 1);
    while (s->ei < entries->elements) {
      const redisReply *e = entries->element[s->ei];
      if (emit_entry(s, (size_t)i, e) == HERALD_EBUSFULL) {
        s->room_wait = 1;
        herald_source_when_room(s->src, on_room, s);
        return;
      }
      s->ei++;
      /* pending entries come in id order: go on after the last one */
      if (pending_phase(s, (size_t)i) && e->type == REDIS_REPLY_ARRAY && e->elements >= 1 &&
          is_str(e->element[0]))
        set_read_id(s, (size_t)i, e->element[0]->str, e->element[0]->len);
    }
    s->bi++, s->ei = 0;
  }
  if (bt) freeReplyObject(bt);
  s->batch = NULL;
  if (s->inflight == 0) pump(s);
}

/* ---- reading ---- */

static void on_read(herald_redis *c, redisReply *reply, void *data) {
  (void)data;
  rs_src *s = c->data;
  s->reading = 0;
  if (!reply) return; /* connection dropped: on_ready starts again */
  if (s->stopping) {
    freeReplyObject(reply);
    return;
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    char why[400];
    snprintf(why, sizeof why, "XREADGROUP: %s", reply->str);
    freeReplyObject(reply);
    herald_redis_fail(c, why); /* NOGROUP (the stream or group deleted): made again */
    return;
  }
  if (reply->type != REDIS_REPLY_ARRAY) { /* nil: BLOCK timed out, nothing new */
    freeReplyObject(reply);
    pump(s);
    return;
  }
  s->batch = reply;
  s->bi = s->ei = 0;
  process(s);
}

/* Reads the next batch once the last one is on the bus and acknowledged. */
static void pump(rs_src *s) {
  if (s->stopping || !s->group_ready || !s->conn.ready || s->reading || s->batch ||
      s->inflight || s->room_wait)
    return;
  flush_acks(s);
  size_t ns = s->nstreams, argc = 9 + 2 * ns;
  const char **argv = malloc(argc * sizeof *argv);
  size_t *lens = malloc(argc * sizeof *lens);
  if (!argv || !lens) abort();
  size_t k = 0;
#define ARG(x) (argv[k] = (x), lens[k] = strlen(argv[k]), k++)
  ARG("XREADGROUP"), ARG("GROUP"), ARG(s->group), ARG(CONSUMER), ARG("COUNT"), ARG(s->count);
  ARG("BLOCK"), ARG(BLOCK_MS), ARG("STREAMS");
  for (size_t i = 0; i < ns; i++) ARG(s->streams[i]);
  for (size_t i = 0; i < ns; i++) ARG(s->read_id[i]);
#undef ARG
  if (herald_redis_command(&s->conn, (int)k, argv, lens, on_read, NULL) == 0) s->reading = 1;
  free(argv);
  free(lens);
}

static void on_group(herald_redis *c, redisReply *reply, void *data) {
  rs_src *s = c->data;
  const char *stream = data;
  if (!reply) return;
  if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "BUSYGROUP", 9) != 0) {
    char why[400];
    snprintf(why, sizeof why, "XGROUP CREATE %s %s: %s", stream, s->group, reply->str);
    freeReplyObject(reply);
    herald_redis_fail(c, why);
    return;
  }
  if (reply->type != REDIS_REPLY_ERROR)
    herald_log(&s->src->log, HLOG_INFO, "created consumer group %s on stream %s", s->group, stream);
  freeReplyObject(reply);
  if (--s->setup_pending == 0) {
    s->group_ready = 1;
    pump(s);
  }
}

static void on_ready(herald_redis *c) {
  rs_src *s = c->data;
  s->group_ready = 0;
  s->reading = 0;
  /* after any (re)connection, this consumer's pending entries first */
  for (size_t i = 0; i < s->nstreams; i++) set_read_id(s, i, "0-0", 3);
  s->setup_pending = (int)s->nstreams;
  for (size_t i = 0; i < s->nstreams; i++) {
    const char *argv[] = {"XGROUP", "CREATE", s->streams[i], s->group, "$", "MKSTREAM"};
    size_t lens[6];
    for (int k = 0; k < 6; k++) lens[k] = strlen(argv[k]);
    herald_redis_command(c, 6, argv, lens, on_group, s->streams[i]);
  }
}

static void on_down(herald_redis *c, const char *reason) {
  (void)reason;
  rs_src *s = c->data;
  s->group_ready = 0;
  s->reading = 0;
}

static int rs_start(herald_source *src) {
  rs_src *s = src->priv;
  s->conn.data = s;
  s->conn.on_ready = on_ready;
  s->conn.on_down = on_down;
  herald_log(&src->log, HLOG_INFO, "connecting to %s:%s%s, group %s", s->conn.host,
             s->conn.port, s->conn.ssl_ctx ? " (TLS)" : "", s->group);
  return herald_redis_start(&s->conn);
}

static void rs_stop(herald_source *src, herald_source_stop_cb done) {
  rs_src *s = src->priv;
  if (s->stopping) return;
  s->stopping = 1;
  s->stop_done = done;
  s->conn.data = s;
  if (s->room_wait) herald_source_cancel_room(src);
  s->room_wait = 0;
  /* what was read and not published stays pending upstream: read again at the next start */
  if (s->batch) freeReplyObject(s->batch);
  s->batch = NULL;
  if (s->inflight) return; /* on_published finishes: XACK what the bus holds, then close */
  flush_acks(s);
  if (s->acks_out == 0) close_conn(s);
}

const herald_source_type herald_source_redisStream = {
    .name = "redisStream",
    .event_type = "redisStream",
    .priv_size = sizeof(rs_src),
    .init = rs_init,
    .start = rs_start,
    .stop = rs_stop,
};
