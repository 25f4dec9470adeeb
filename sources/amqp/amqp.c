/*
 * sources/amqp/amqp.c: the `amqp` event source (Argo's AMQPEventSource) on librabbitmq
 * (rabbitmq-c): one event per delivery from a queue bound to an exchange, data in Argo's shape
 * {contentType, contentEncoding, deliveryMode, priority, correlationId, replyTo, expiration,
 * messageId, timestamp, type, appId, exchange, routingKey, body, metadata}.
 *
 *   start --> on libuv's thread pool (rabbitmq-c's RPCs block): TCP/TLS, login, channel 1,
 *             exchange.declare, queue.declare, queue.bind, basic.qos, basic.consume
 *         --> on the loop: uv_poll readable on the socket --> amqp_consume_message with a zero
 *             timeout until it says "nothing buffered" (at most BURST a turn)
 *         --> herald_source_emit; its callback marks the delivery; a uv_prepare acks the
 *             longest settled prefix with one basic.ack(multiple) per loop turn
 *   connection or channel closed --> close the poll, connectionBackoff, set up again (for ever)
 *
 * Acks: unless consume.autoAck (Argo's default when `consume` is absent), a delivery is acked
 * only after the bus holds it; basic.qos (PREFETCH) bounds the unacked deliveries, so a slow or
 * full bus stops the broker rather than filling memory. A delivery the bus refused after taking
 * it is rejected with requeue. Deliveries of a connection that died are never acked (their tags
 * mean nothing on the next one): the broker requeues them, so a crash gives duplicates, not
 * losses. On HERALD_EBUSFULL the event is held, reading stops, herald_source_when_room resumes.
 * A 1 s tick drives rabbitmq-c's heartbeats (10 s, as Argo) while reading.
 *
 * Known blocking corner: once a basic.deliver is read, rabbitmq-c reads its header and body
 * frames with a blocking wait; the broker writes them together, so this is a wait of
 * microseconds, unless the broker dies mid-message (the socket's close ends it).
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PREFETCH 512      /* basic.qos: unacked deliveries the broker may send us */
#define RING (2 * PREFETCH) /* deliveries of this and of a dead connection awaiting the bus */
#define BURST 256         /* deliveries read per loop turn at most */
#define HEARTBEAT_S 10    /* Argo's amqp091 config */
#define FRAME_MAX 131072

typedef struct amqp_src amqp_src;

/* One delivery between receipt and the bus's callback (the callback's data). */
typedef struct slot {
  amqp_src *q;
  uint64_t tag;
  uint32_t gen; /* the connection it came on */
  uint8_t st;   /* 0 waiting for the bus, 1 held by the bus, 2 refused */
} slot;

typedef struct held_msg {
  struct held_msg *next;
  slot *s; /* NULL with autoAck */
  size_t len;
  char json[];
} held_msg;

typedef enum { ST_IDLE, ST_CONNECTING, ST_SOCKET, ST_WAITING } amqp_state;

typedef struct qarg { /* one queueDeclare argument */
  char *key, *str;
  int kind; /* 0 string, 1 integer, 2 float, 3 bool */
  double num;
} qarg;

struct amqp_src {
  herald_source *src;
  /* config */
  char *url, *exchange, *exchange_type, *routing_key, *queue, *consumer_tag, *user, *pass;
  char *ca, *cert, *key, *metadata;
  int ex_durable, ex_auto_delete, ex_internal;
  int q_durable, q_auto_delete, q_exclusive;
  int auto_ack, c_exclusive, no_local, tls, insecure, json_body;
  qarg *args;
  int nargs;
  herald_backoff bo;
  /* connection */
  amqp_connection_state_t conn, next_conn; /* next_conn: set up by the worker */
  char endpoint[300];
  amqp_state state;
  uint32_t gen;
  uv_poll_t poll;
  int poll_open, polling;
  uv_timer_t timer;
  uv_prepare_t prep;
  uv_work_t work;
  char werr[300];
  /* deliveries */
  slot ring[RING];
  uint32_t head, count; /* ring[head] is the oldest */
  uint64_t ack_upto;    /* settle with basic.ack(multiple) up to this tag (0: nothing) */
  uint32_t pending;     /* publishes waiting for their callback */
  held_msg *held, **held_tail;
  int paused;
  int stopping, timer_closed, prep_closed;
  herald_source_stop_cb stop_done;
};

static void maybe_done(amqp_src *q);
static void update_poll(amqp_src *q);
static void connect_now(amqp_src *q);
static void read_some(amqp_src *q);

/* ---- config ---- */

static char *secret_path_field(herald_source *src, lua_State *L, int idx, const char *field,
                               const char *what, int *err) {
  *err = 0;
  lua_getfield(L, idx, field);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  const char *name = herald_cfg_string(L, -1, "name", NULL);
  const char *key = herald_cfg_string(L, -1, "key", NULL);
  char *p = herald_secret_path(src->engine, name, key, err);
  if (p) {
    size_t n;
    char *probe = herald_read_file(p, &n, err);
    if (!probe) {
      herald_log(&src->log, HLOG_ERROR, "%s: cannot read secret %s/%s (%s): %s", what, name, key, p,
                 herald_strerror(*err));
      free(p);
      p = NULL;
    }
    free(probe);
  } else {
    herald_log(&src->log, HLOG_ERROR, "%s: a secret needs a name and a key", what);
  }
  lua_pop(L, 1);
  return p;
}

static char *dup_field(lua_State *L, int idx, const char *field, const char *dflt) {
  const char *s = herald_cfg_string(L, idx, field, dflt);
  return s ? herald_xstrdup(s) : NULL;
}

/* queueDeclare.arguments: a YAML (or JSON) map as a string, as Argo takes it; the schema has
 * checked it parses to a map of scalars. stack: unchanged */
static int read_args(amqp_src *q, lua_State *L, const char *text) {
  int top = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "herald.core");
  if (lua_pcall(L, 1, 1, 0) != 0) goto fail;
  lua_getfield(L, -1, "yaml_load");
  lua_pushstring(L, text);
  lua_pushliteral(L, "queueDeclare.arguments");
  if (lua_pcall(L, 2, 1, 0) != 0 || !lua_istable(L, -1)) goto fail;
  lua_rawgeti(L, -1, 1);
  if (!lua_istable(L, -1)) goto fail;
  int t = lua_gettop(L);
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) n++, lua_pop(L, 1);
  q->args = herald_xcalloc((size_t)n + 1, sizeof *q->args);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      qarg *a = &q->args[q->nargs];
      a->key = herald_xstrdup(lua_tostring(L, -2));
      switch (lua_type(L, -1)) {
      case LUA_TNUMBER: {
        double v = lua_tonumber(L, -1);
        a->num = v;
        a->kind = (v == (double)(int64_t)v) ? 1 : 2;
        break;
      }
      case LUA_TBOOLEAN: a->kind = 3, a->num = lua_toboolean(L, -1); break;
      default: a->kind = 0, a->str = herald_xstrdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : ""); break;
      }
      q->nargs++;
    }
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  return 0;
fail:
  herald_log(&q->src->log, HLOG_ERROR, "queueDeclare.arguments: not a map: %s",
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
  lua_settop(L, top);
  return HERALD_EINVAL;
}

static int amqp_init(herald_source *src, lua_State *L, int cfg_idx) {
  amqp_src *q = src->priv;
  q->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  int err = 0;
  q->url = dup_field(L, cfg_idx, "url", NULL);
  if (!q->url || !q->url[0]) {
    free(q->url);
    q->url = herald_secret_field(src->engine, &src->log, L, cfg_idx, "urlSecret", "urlSecret", &err);
    if (err || !q->url) return HERALD_EINVAL;
  }
  q->exchange = dup_field(L, cfg_idx, "exchangeName", "");
  q->exchange_type = dup_field(L, cfg_idx, "exchangeType", "");
  q->routing_key = dup_field(L, cfg_idx, "routingKey", "");
  q->json_body = herald_cfg_bool(L, cfg_idx, "jsonBody", 0);
  q->metadata = herald_cfg_metadata_json(L, cfg_idx);
  herald_backoff_init(&q->bo, L, cfg_idx, "connectionBackoff");
  /* Argo's defaults when a block is absent (setDefaults in its amqp/start.go) */
  q->ex_durable = 1;
  q->q_exclusive = 1;
  q->auto_ack = 1;
  lua_getfield(L, cfg_idx, "exchangeDeclare");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    q->ex_durable = herald_cfg_bool(L, t, "durable", 0);
    q->ex_auto_delete = herald_cfg_bool(L, t, "autoDelete", 0);
    q->ex_internal = herald_cfg_bool(L, t, "internal", 0);
  }
  lua_pop(L, 1);
  lua_getfield(L, cfg_idx, "queueDeclare");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    q->queue = dup_field(L, t, "name", "");
    q->q_durable = herald_cfg_bool(L, t, "durable", 0);
    q->q_auto_delete = herald_cfg_bool(L, t, "autoDelete", 0);
    q->q_exclusive = herald_cfg_bool(L, t, "exclusive", 0);
    const char *args = herald_cfg_string(L, t, "arguments", NULL);
    if (args && args[0] && read_args(q, L, args) < 0) err = HERALD_EINVAL;
  }
  lua_pop(L, 1);
  if (!q->queue) q->queue = herald_xstrdup("");
  lua_getfield(L, cfg_idx, "consume");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    q->consumer_tag = dup_field(L, t, "consumerTag", "");
    q->auto_ack = herald_cfg_bool(L, t, "autoAck", 0);
    q->c_exclusive = herald_cfg_bool(L, t, "exclusive", 0);
    q->no_local = herald_cfg_bool(L, t, "noLocal", 0);
  }
  lua_pop(L, 1);
  if (!q->consumer_tag) q->consumer_tag = herald_xstrdup("");
  lua_getfield(L, cfg_idx, "auth");
  if (!err && lua_istable(L, -1)) {
    int a = lua_gettop(L);
    q->user = herald_secret_field(src->engine, &src->log, L, a, "username", "auth.username", &err);
    if (!err) q->pass = herald_secret_field(src->engine, &src->log, L, a, "password", "auth.password", &err);
  }
  lua_pop(L, 1);
  lua_getfield(L, cfg_idx, "tls");
  if (!err && lua_istable(L, -1)) {
    int t = lua_gettop(L);
    q->tls = 1;
    q->ca = secret_path_field(src, L, t, "caCertSecret", "tls.caCertSecret", &err);
    if (!err) q->cert = secret_path_field(src, L, t, "clientCertSecret", "tls.clientCertSecret", &err);
    if (!err) q->key = secret_path_field(src, L, t, "clientKeySecret", "tls.clientKeySecret", &err);
    q->insecure = herald_cfg_bool(L, t, "insecureSkipVerify", 0);
    if (!err && (!q->cert) != (!q->key)) {
      herald_log(&src->log, HLOG_ERROR, "tls: clientCertSecret and clientKeySecret go together");
      err = HERALD_EINVAL;
    }
  }
  lua_pop(L, 1);
  if (!err) { /* the URL's shape now, not at the first connect */
    struct amqp_connection_info ci;
    char *u = herald_xstrdup(q->url);
    if (amqp_parse_url(u, &ci) != AMQP_STATUS_OK) {
      herald_log(&src->log, HLOG_ERROR, "invalid url (amqp://user:pass@host:5672/vhost or amqps://...)");
      err = HERALD_EINVAL;
    } else {
      snprintf(q->endpoint, sizeof q->endpoint, "%s:%d/%s", ci.host, ci.port, ci.vhost);
    }
    free(u);
  }
  return err ? HERALD_EINVAL : 0;
}

/* ---- setting up a connection (thread pool) ---- */

static int rpc_failed(amqp_connection_state_t c, const char *step, char *err, size_t n) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL: return 0;
  case AMQP_RESPONSE_NONE: snprintf(err, n, "%s: no reply", step); break;
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    snprintf(err, n, "%s: %s", step, amqp_error_string2(r.library_error));
    break;
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      amqp_connection_close_t *m = r.reply.decoded;
      snprintf(err, n, "%s: server closed the connection: %u %.*s", step, m->reply_code,
               (int)m->reply_text.len, (char *)m->reply_text.bytes);
    } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      amqp_channel_close_t *m = r.reply.decoded;
      snprintf(err, n, "%s: server closed the channel: %u %.*s", step, m->reply_code,
               (int)m->reply_text.len, (char *)m->reply_text.bytes);
    } else {
      snprintf(err, n, "%s: server error (method 0x%08x)", step, r.reply.id);
    }
    break;
  }
  return 1;
}

static void work_connect(uv_work_t *w) {
  amqp_src *q = w->data;
  char *err = q->werr;
  size_t en = sizeof q->werr;
  err[0] = 0;
  struct amqp_connection_info ci;
  char *u = herald_xstrdup(q->url);
  amqp_parse_url(u, &ci); /* checked at init */
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t *s;
  int tls = q->tls || ci.ssl;
  if (tls) {
    s = amqp_ssl_socket_new(c);
    if (s) {
      amqp_ssl_socket_set_verify_peer(s, !q->insecure);
      amqp_ssl_socket_set_verify_hostname(s, !q->insecure);
      if (q->ca && amqp_ssl_socket_set_cacert(s, q->ca) != AMQP_STATUS_OK)
        snprintf(err, en, "tls: cannot use the CA certificate");
      if (!err[0] && q->cert && amqp_ssl_socket_set_key(s, q->cert, q->key) != AMQP_STATUS_OK)
        snprintf(err, en, "tls: cannot use the client certificate and key");
    }
  } else {
    s = amqp_tcp_socket_new(c);
  }
  if (!s && !err[0]) snprintf(err, en, "cannot create a socket");
  struct timeval tmo = {5, 0}, rpc = {10, 0};
  if (!err[0]) {
    amqp_set_handshake_timeout(c, &tmo);
    amqp_set_rpc_timeout(c, &rpc);
    int st = amqp_socket_open_noblock(s, ci.host, ci.port, &tmo);
    if (st != AMQP_STATUS_OK) snprintf(err, en, "connect %s:%d: %s", ci.host, ci.port, amqp_error_string2(st));
  }
  if (!err[0]) {
    const char *user = q->user ? q->user : ci.user, *pass = q->user ? (q->pass ? q->pass : "") : ci.password;
    amqp_rpc_reply_t r = amqp_login(c, ci.vhost, 0, FRAME_MAX, HEARTBEAT_S, AMQP_SASL_METHOD_PLAIN, user, pass);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        snprintf(err, en, "login as %s: %s", user, amqp_error_string2(r.library_error));
      else
        rpc_failed(c, "login", err, en);
    }
  }
  if (!err[0]) {
    amqp_channel_open(c, 1);
    rpc_failed(c, "channel.open", err, en);
  }
  if (!err[0] && q->exchange[0]) {
    amqp_exchange_declare(c, 1, amqp_cstring_bytes(q->exchange), amqp_cstring_bytes(q->exchange_type),
                          0, q->ex_durable, q->ex_auto_delete, q->ex_internal, amqp_empty_table);
    rpc_failed(c, "exchange.declare", err, en);
  }
  amqp_bytes_t queue = amqp_empty_bytes;
  if (!err[0]) {
    amqp_table_entry_t *e = q->nargs ? calloc((size_t)q->nargs, sizeof *e) : NULL;
    for (int i = 0; i < q->nargs; i++) {
      e[i].key = amqp_cstring_bytes(q->args[i].key);
      switch (q->args[i].kind) {
      case 1: e[i].value.kind = AMQP_FIELD_KIND_I64, e[i].value.value.i64 = (int64_t)q->args[i].num; break;
      case 2: e[i].value.kind = AMQP_FIELD_KIND_F64, e[i].value.value.f64 = q->args[i].num; break;
      case 3: e[i].value.kind = AMQP_FIELD_KIND_BOOLEAN, e[i].value.value.boolean = q->args[i].num != 0; break;
      default: e[i].value.kind = AMQP_FIELD_KIND_UTF8, e[i].value.value.bytes = amqp_cstring_bytes(q->args[i].str); break;
      }
    }
    amqp_table_t args = {q->nargs, e};
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(c, 1, amqp_cstring_bytes(q->queue), 0, q->q_durable,
                                                     q->q_exclusive, q->q_auto_delete, args);
    free(e);
    if (!rpc_failed(c, "queue.declare", err, en) && ok) queue = amqp_bytes_malloc_dup(ok->queue);
  }
  if (!err[0] && q->exchange[0]) {
    amqp_queue_bind(c, 1, queue, amqp_cstring_bytes(q->exchange), amqp_cstring_bytes(q->routing_key),
                    amqp_empty_table);
    rpc_failed(c, "queue.bind", err, en);
  }
  if (!err[0] && !q->auto_ack) {
    amqp_basic_qos(c, 1, 0, PREFETCH, 0);
    rpc_failed(c, "basic.qos", err, en);
  }
  if (!err[0]) {
    amqp_basic_consume(c, 1, queue, amqp_cstring_bytes(q->consumer_tag), q->no_local, q->auto_ack,
                       q->c_exclusive, amqp_empty_table);
    rpc_failed(c, "basic.consume", err, en);
  }
  if (!err[0]) {
    snprintf(q->endpoint, sizeof q->endpoint, "%s:%d/%s, queue %.*s", ci.host, ci.port, ci.vhost,
             (int)queue.len, (char *)queue.bytes);
    q->next_conn = c;
  } else {
    amqp_destroy_connection(c);
    q->next_conn = NULL;
  }
  amqp_bytes_free(queue);
  free(u);
}

/* ---- acks ---- */

static void flush_acks(amqp_src *q) {
  if (!q->ack_upto || q->state != ST_SOCKET) {
    q->ack_upto = 0;
    return;
  }
  int r = amqp_basic_ack(q->conn, 1, q->ack_upto, 1);
  q->ack_upto = 0;
  if (r != AMQP_STATUS_OK)
    herald_log_limited(&q->src->log, HLOG_WARN, "basic.ack: %s", amqp_error_string2(r));
}

/* Settles the oldest deliveries whose bus callback has run, in order. */
static void advance(amqp_src *q) {
  while (q->count) {
    slot *s = &q->ring[q->head];
    if (s->st == 0) break;
    if (s->gen == q->gen && q->state == ST_SOCKET) {
      if (s->st == 1) {
        q->ack_upto = s->tag;
      } else { /* refused by the bus: back to the queue, after acking what came before it */
        flush_acks(q);
        amqp_basic_reject(q->conn, 1, s->tag, 1);
      }
    }
    s->st = 0;
    s->q = NULL;
    q->head = (q->head + 1) % RING;
    q->count--;
  }
}

/* Once per loop turn: the acks settled since the last turn, and the deliveries rabbitmq-c has
 * already read into its buffer (the poll does not announce those: a burst cut at BURST, or
 * deliveries that came in with the setup's replies). */
static void on_prepare(uv_prepare_t *p) {
  amqp_src *q = p->data;
  if (q->ack_upto) flush_acks(q);
  if (q->state == ST_SOCKET && !q->paused && q->count < RING &&
      (amqp_data_in_buffer(q->conn) || amqp_frames_enqueued(q->conn)))
    read_some(q);
}

static void on_published(void *data, int status) {
  slot *s = data;
  amqp_src *q = s->q;
  q->pending--;
  s->st = status < 0 ? 2 : 1;
  if (status < 0)
    herald_log_limited(&q->src->log, HLOG_WARN, "the bus did not take a delivery (%s): requeued",
                       herald_strerror(status));
  advance(q);
  if (q->stopping) maybe_done(q);
  else if (q->count < RING && !q->paused) update_poll(q);
}

static void on_published_auto(void *data, int status) {
  amqp_src *q = data;
  q->pending--;
  if (status < 0)
    herald_log_limited(&q->src->log, HLOG_WARN, "the bus did not take a delivery (%s): lost (consume.autoAck)",
                       herald_strerror(status));
  if (q->stopping) maybe_done(q);
}

/* ---- deliveries ---- */

static int emit_json(amqp_src *q, slot *s, const char *json, size_t len) {
  int r = s ? herald_source_emit(q->src, json, len, on_published, s)
            : herald_source_emit(q->src, json, len, on_published_auto, q);
  if (r == 0) {
    q->pending++;
    return 0;
  }
  if (r == HERALD_EBUSFULL) return r;
  herald_log_limited(&q->src->log, HLOG_ERROR, "delivery not published: %s", herald_strerror(r));
  if (s) s->st = 1; /* dropped for good: ack it, it would fail again */
  return 0;
}

static void on_room(herald_source *src, void *data) {
  amqp_src *q = data;
  (void)src;
  while (q->held) {
    held_msg *h = q->held;
    if (h->s && h->s->gen != q->gen) { /* its connection died: the broker redelivers it */
      h->s->st = 2;
    } else if (emit_json(q, h->s, h->json, h->len) == HERALD_EBUSFULL) {
      herald_source_when_room(q->src, on_room, q);
      return;
    }
    q->held = h->next;
    free(h);
  }
  q->held_tail = &q->held;
  q->paused = 0;
  advance(q);
  update_poll(q);
  read_some(q); /* the library may hold buffered deliveries the poll will not announce */
}

static void put_str(herald_buf *b, const char *name, amqp_basic_properties_t *p, amqp_flags_t flag,
                    amqp_bytes_t v) {
  herald_buf_puts(b, name);
  if (p->_flags & flag) herald_buf_json_string(b, v.bytes, v.len);
  else herald_buf_puts(b, "\"\"");
}

static void handle(amqp_src *q, amqp_envelope_t *env) {
  slot *s = NULL;
  if (!q->auto_ack) {
    uint32_t i = (q->head + q->count) % RING;
    s = &q->ring[i];
    s->q = q, s->tag = env->delivery_tag, s->gen = q->gen, s->st = 0;
    q->count++;
  }
  amqp_bytes_t body = env->message.body;
  if (herald_source_too_big(q->src, body.len)) {
    if (s) s->st = 1; /* acked: it would come back for ever */
    return;
  }
  amqp_basic_properties_t *p = &env->message.properties;
  herald_buf b = HERALD_BUF_INIT;
  put_str(&b, "{\"contentType\":", p, AMQP_BASIC_CONTENT_TYPE_FLAG, p->content_type);
  put_str(&b, ",\"contentEncoding\":", p, AMQP_BASIC_CONTENT_ENCODING_FLAG, p->content_encoding);
  herald_buf_printf(&b, ",\"deliveryMode\":%d,\"priority\":%d",
                    (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) ? p->delivery_mode : 0,
                    (p->_flags & AMQP_BASIC_PRIORITY_FLAG) ? p->priority : 0);
  put_str(&b, ",\"correlationId\":", p, AMQP_BASIC_CORRELATION_ID_FLAG, p->correlation_id);
  put_str(&b, ",\"replyTo\":", p, AMQP_BASIC_REPLY_TO_FLAG, p->reply_to);
  put_str(&b, ",\"expiration\":", p, AMQP_BASIC_EXPIRATION_FLAG, p->expiration);
  put_str(&b, ",\"messageId\":", p, AMQP_BASIC_MESSAGE_ID_FLAG, p->message_id);
  /* Go's time.Time.String() of the AMQP timestamp (seconds), in UTC as a pod runs; the zero
   * time when absent, as amqp091 leaves it */
  if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) {
    time_t t = (time_t)p->timestamp;
    struct tm tm;
    char ts[64];
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S +0000 UTC", &tm);
    herald_buf_printf(&b, ",\"timestamp\":\"%s\"", ts);
  } else {
    herald_buf_puts(&b, ",\"timestamp\":\"0001-01-01 00:00:00 +0000 UTC\"");
  }
  put_str(&b, ",\"type\":", p, AMQP_BASIC_TYPE_FLAG, p->type);
  put_str(&b, ",\"appId\":", p, AMQP_BASIC_APP_ID_FLAG, p->app_id);
  herald_buf_puts(&b, ",\"exchange\":");
  herald_buf_json_string(&b, env->exchange.bytes, env->exchange.len);
  herald_buf_puts(&b, ",\"routingKey\":");
  herald_buf_json_string(&b, env->routing_key.bytes, env->routing_key.len);
  herald_buf_puts(&b, ",\"body\":");
  if (herald_source_put_body(q->src, &b, body.bytes, body.len, q->json_body) < 0) {
    herald_buf_free(&b);
    if (s) s->st = 1; /* counted and logged; dropped as Argo drops it */
    return;
  }
  if (q->metadata) {
    herald_buf_puts(&b, ",\"metadata\":");
    herald_buf_puts(&b, q->metadata);
  }
  herald_buf_putc(&b, '}');
  if (q->paused || emit_json(q, s, b.data, b.len) == HERALD_EBUSFULL) {
    held_msg *h = herald_xmalloc(sizeof *h + b.len + 1);
    h->next = NULL, h->s = s, h->len = b.len;
    memcpy(h->json, b.data, b.len);
    h->json[b.len] = 0;
    *q->held_tail = h;
    q->held_tail = &h->next;
    if (!q->paused) {
      q->paused = 1;
      herald_source_when_room(q->src, on_room, q);
      update_poll(q);
    }
  }
  herald_buf_free(&b);
}

/* ---- the socket on the loop ---- */

static void on_poll_closed(uv_handle_t *h) {
  amqp_src *q = h->data;
  q->poll_open = 0;
  if (q->stopping) maybe_done(q);
}

static void on_timer(uv_timer_t *t);

static void lost(amqp_src *q, const char *why) {
  if (q->state != ST_SOCKET) return;
  q->state = ST_WAITING;
  q->gen++; /* deliveries still with the bus are never acked: the broker requeues them */
  q->ack_upto = 0;
  if (q->poll_open) {
    uv_poll_stop(&q->poll);
    uv_close((uv_handle_t *)&q->poll, on_poll_closed);
  }
  amqp_destroy_connection(q->conn);
  q->conn = NULL;
  uv_timer_stop(&q->timer);
  herald_source_set_connected(q->src, 0, why);
  advance(q);
  if (q->stopping) {
    maybe_done(q);
    return;
  }
  uv_timer_start(&q->timer, on_timer, herald_backoff_next(&q->bo), 0);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  amqp_src *q = p->data;
  (void)events;
  if (status < 0) {
    lost(q, uv_strerror(status));
    return;
  }
  read_some(q);
}

static void update_poll(amqp_src *q) {
  if (q->state != ST_SOCKET || !q->poll_open) return;
  int want = !q->paused && q->count < RING;
  if (want == q->polling) return;
  q->polling = want;
  if (want) uv_poll_start(&q->poll, UV_READABLE, on_poll);
  else uv_poll_stop(&q->poll);
}

/* Reads what the socket and rabbitmq-c's buffer hold, without blocking. */
static void read_some(amqp_src *q) {
  for (int i = 0; i < BURST && q->state == ST_SOCKET && !q->paused && q->count < RING; i++) {
    amqp_envelope_t env;
    struct timeval zero = {0, 0};
    amqp_maybe_release_buffers(q->conn);
    amqp_rpc_reply_t r = amqp_consume_message(q->conn, &env, &zero, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
      handle(q, &env);
      amqp_destroy_envelope(&env);
      continue;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) break;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
      /* a method other than basic.deliver: a close or a cancel ends this connection */
      amqp_frame_t f;
      if (amqp_simple_wait_frame_noblock(q->conn, &f, &zero) != AMQP_STATUS_OK) continue;
      if (f.frame_type != AMQP_FRAME_METHOD) continue;
      char why[300];
      switch (f.payload.method.id) {
      case AMQP_CHANNEL_CLOSE_METHOD: {
        amqp_channel_close_t *m = f.payload.method.decoded;
        snprintf(why, sizeof why, "server closed the channel: %u %.*s", m->reply_code,
                 (int)m->reply_text.len, (char *)m->reply_text.bytes);
        lost(q, why);
        return;
      }
      case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_t *m = f.payload.method.decoded;
        snprintf(why, sizeof why, "server closed the connection: %u %.*s", m->reply_code,
                 (int)m->reply_text.len, (char *)m->reply_text.bytes);
        lost(q, why);
        return;
      }
      case AMQP_BASIC_CANCEL_METHOD:
        lost(q, "the server cancelled the consumer (queue deleted?)");
        return;
      default: continue;
      }
    }
    lost(q, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION ? amqp_error_string2(r.library_error)
                                                            : "unexpected reply");
    return;
  }
  advance(q); /* dropped ones (too big, not JSON) settle here */
  update_poll(q);
}

static void after_connect(uv_work_t *w, int status) {
  amqp_src *q = w->data;
  q->state = ST_WAITING;
  if (q->stopping) {
    if (q->next_conn) amqp_destroy_connection(q->next_conn);
    q->next_conn = NULL;
    maybe_done(q);
    return;
  }
  if (status < 0 || !q->next_conn) {
    herald_source_set_connected(q->src, 0, q->werr[0] ? q->werr : "cancelled");
    uv_timer_start(&q->timer, on_timer, herald_backoff_next(&q->bo), 0);
    return;
  }
  q->conn = q->next_conn;
  q->next_conn = NULL;
  q->state = ST_SOCKET;
  herald_backoff_reset(&q->bo);
  herald_source_set_connected(q->src, 1, q->endpoint);
  uv_poll_init(q->src->engine->loop, &q->poll, amqp_get_sockfd(q->conn));
  q->poll.data = q;
  q->poll_open = 1;
  q->polling = 0;
  update_poll(q);
  uv_timer_start(&q->timer, on_timer, 1000, 1000);
  read_some(q); /* the setup's replies may have brought deliveries along */
}

static void on_timer(uv_timer_t *t) {
  amqp_src *q = t->data;
  if (q->stopping) return;
  if (q->state == ST_WAITING) {
    if (q->poll_open) {
      uv_timer_start(&q->timer, on_timer, 10, 0);
      return;
    }
    connect_now(q);
  } else if (q->state == ST_SOCKET) {
    read_some(q); /* also sends and checks heartbeats */
  }
}

static void connect_now(amqp_src *q) {
  q->state = ST_CONNECTING;
  q->work.data = q;
  if (uv_queue_work(q->src->engine->loop, &q->work, work_connect, after_connect) < 0) {
    q->state = ST_WAITING;
    uv_timer_start(&q->timer, on_timer, herald_backoff_next(&q->bo), 0);
  }
}

static int amqp_start(herald_source *src) {
  amqp_src *q = src->priv;
  q->held_tail = &q->held;
  uv_timer_init(src->engine->loop, &q->timer);
  q->timer.data = q;
  uv_prepare_init(src->engine->loop, &q->prep);
  q->prep.data = q;
  uv_prepare_start(&q->prep, on_prepare);
  q->gen = 1;
  herald_log(&src->log, HLOG_INFO, "amqp source: %s, exchange %s (%s), routing key %s%s", q->endpoint,
             q->exchange, q->exchange_type, q->routing_key, q->auto_ack ? ", autoAck" : "");
  connect_now(q);
  return 0;
}

/* ---- stopping ---- */

static void free_cfg(amqp_src *q) {
  free(q->url), free(q->exchange), free(q->exchange_type), free(q->routing_key), free(q->queue);
  free(q->consumer_tag), free(q->user), free(q->pass), free(q->ca), free(q->cert), free(q->key);
  free(q->metadata);
  for (int i = 0; i < q->nargs; i++) free(q->args[i].key), free(q->args[i].str);
  free(q->args);
  while (q->held) {
    held_msg *h = q->held;
    q->held = h->next;
    free(h);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  amqp_src *q = h->data;
  if (h == (uv_handle_t *)&q->timer) q->timer_closed = 1;
  else q->prep_closed = 1;
  maybe_done(q);
}

static void maybe_done(amqp_src *q) {
  if (!q->stopping || !q->stop_done) return;
  if (q->state == ST_CONNECTING || q->pending) return;
  if (q->state == ST_SOCKET) {
    /* every delivery read is settled with the bus: ack them, close politely */
    flush_acks(q);
    amqp_channel_close(q->conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(q->conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(q->conn);
    q->conn = NULL;
    q->state = ST_IDLE;
    if (q->poll_open) {
      uv_poll_stop(&q->poll);
      uv_close((uv_handle_t *)&q->poll, on_poll_closed);
    }
  }
  if (q->poll_open) return;
  if (!q->timer_closed || !q->prep_closed) {
    if (!uv_is_closing((uv_handle_t *)&q->timer)) {
      uv_timer_stop(&q->timer);
      uv_close((uv_handle_t *)&q->timer, on_handle_closed);
      uv_prepare_stop(&q->prep);
      uv_close((uv_handle_t *)&q->prep, on_handle_closed);
    }
    return;
  }
  free_cfg(q);
  herald_source_stop_cb done = q->stop_done;
  q->stop_done = NULL;
  done(q->src);
}

static void amqp_stop(herald_source *src, herald_source_stop_cb done) {
  amqp_src *q = src->priv;
  if (q->stopping) return;
  q->stopping = 1;
  q->stop_done = done;
  herald_source_cancel_room(src);
  if (!q->held_tail) { /* never started */
    free_cfg(q);
    q->stop_done = NULL;
    done(src);
    return;
  }
  /* held deliveries never reached the bus: rejected with requeue (before any later ack with
   * `multiple` could cover them); the ones the bus has are acked once it answers */
  while (q->held) {
    held_msg *h = q->held;
    q->held = h->next;
    if (h->s) h->s->st = 2;
    free(h);
  }
  q->held_tail = &q->held;
  advance(q);
  maybe_done(q);
}

const herald_source_type herald_source_amqp = {
    .name = "amqp",
    .event_type = "amqp",
    .priv_size = sizeof(amqp_src),
    .init = amqp_init,
    .start = amqp_start,
    .stop = amqp_stop,
};
