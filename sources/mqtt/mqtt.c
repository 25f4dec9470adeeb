/*
 * sources/mqtt/mqtt.c: the `mqtt` event source (Argo's MQTTEventSource) on libmosquitto,
 * driven from the loop: one event per PUBLISH on `topic` (wildcards allowed), data
 * {"topic", "messageId", "body", "metadata"} as Argo marshals it.
 *
 *   start --> connect on libuv's thread pool (mosquitto_connect: DNS, TCP, TLS handshake are
 *             blocking) --> uv_poll on mosquitto_socket(): readable -> mosquitto_loop_read,
 *             writable -> mosquitto_loop_write; a 1 s timer runs mosquitto_loop_misc (keepalive)
 *   CONNACK --> SUBSCRIBE topic at QoS 1; each PUBLISH --> on_message --> herald_source_emit
 *   lost / refused --> close the poll, connectionBackoff, connect again (for ever)
 *
 * Beyond Argo (which subscribes at QoS 0 with a clean session): QoS 1 on a persistent session
 * (clean_session false, so the broker keeps the subscription and queues messages while Herald
 * is away), and a PUBACK leaves only once the bus holds the message. libmosquitto 2.0 has no
 * manual ack (mosquitto_manual_ack came with 2.1): it queues the PUBACK itself as it reads the
 * PUBLISH. With mosquitto_threaded_set(true) a queued packet is not written at once, only by
 * mosquitto_loop_write, and the queue is FIFO; so this file writes the queue only while no
 * message is between receipt and the bus's callback (`pending` 0, nothing held). The broker's
 * in-flight window (max_inflight_messages, or our MQTT receive maximum) bounds how far reading
 * runs ahead of the acks. A publish the bus refuses after taking it (callback status < 0) makes
 * us drop the connection without writing: the queued PUBACKs die with it and the broker
 * redelivers on the next session. On HERALD_EBUSFULL the message is held, reading stops, and
 * herald_source_when_room resumes it. Duplicates are possible (a crash after the bus held a
 * message and before its PUBACK left); losses are not.
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"

#include <mosquitto.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define KEEPALIVE_S 30 /* paho's default in Argo */

typedef struct held_msg {
  struct held_msg *next;
  size_t len;
  char json[];
} held_msg;

typedef enum { ST_IDLE, ST_CONNECTING, ST_SOCKET, ST_WAITING } mqtt_state;

typedef struct mqtt_src {
  herald_source *src;
  struct mosquitto *m;
  /* config */
  char *host, *client_id, *topic, *user, *pass, *ca, *cert, *key, *metadata;
  int port, tls, insecure, json_body;
  herald_backoff bo;
  /* loop side */
  mqtt_state state;
  uv_poll_t poll;
  int poll_open, poll_events;
  uv_timer_t timer; /* keepalive tick while the socket is up, backoff wait otherwise */
  uv_work_t work;
  int work_rc, work_errno;
  uint32_t pending;       /* emitted, bus callback not yet run */
  held_msg *held, **held_tail; /* refused with HERALD_EBUSFULL, in order */
  int paused, poisoned, refused;
  char reason[200];
  int stopping, timer_closed;
  herald_source_stop_cb stop_done;
} mqtt_src;

static void update_io(mqtt_src *q);
static void on_poll(uv_poll_t *p, int status, int events);
static void connect_now(mqtt_src *q);

/* ---- config ---- */

/* The path of the secret file named by the SecretKeySelector in field `field` (libmosquitto
 * reads certificates from files). NULL when absent (*err 0) or unreadable (*err < 0, logged). */
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

/* url: [tcp|mqtt|ssl|tls|mqtts|tcps://]host[:port]; the schema refused ws:// and others. */
static int parse_url(mqtt_src *q, const char *url) {
  const char *p = strstr(url, "://");
  const char *hp = url;
  if (p) {
    size_t sl = (size_t)(p - url);
    if ((sl == 3 && !strncmp(url, "ssl", 3)) || (sl == 3 && !strncmp(url, "tls", 3)) ||
        (sl == 5 && !strncmp(url, "mqtts", 5)) || (sl == 4 && !strncmp(url, "tcps", 4)))
      q->tls = 1;
    hp = p + 3;
  }
  q->port = q->tls ? 8883 : 1883;
  size_t n = strcspn(hp, "/");
  char *hostport = herald_xmalloc(n + 1);
  memcpy(hostport, hp, n);
  hostport[n] = 0;
  char *colon = strrchr(hostport, ':');
  if (hostport[0] == '[') { /* [v6]:port */
    char *rb = strchr(hostport, ']');
    colon = rb && rb[1] == ':' ? rb + 1 : NULL;
    if (rb) *rb = 0;
    memmove(hostport, hostport + 1, strlen(hostport));
    if (colon) colon--;
  }
  if (colon) {
    *colon = 0;
    q->port = atoi(colon + 1);
  }
  if (!hostport[0] || q->port <= 0 || q->port > 65535) {
    free(hostport);
    return HERALD_EINVAL;
  }
  q->host = hostport;
  return 0;
}

static int mqtt_init(herald_source *src, lua_State *L, int cfg_idx) {
  mqtt_src *q = src->priv;
  q->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  const char *url = herald_cfg_string(L, cfg_idx, "url", "");
  if (parse_url(q, url) < 0) {
    herald_log(&src->log, HLOG_ERROR, "invalid url \"%s\"", url);
    return HERALD_EINVAL;
  }
  q->topic = herald_xstrdup(herald_cfg_string(L, cfg_idx, "topic", ""));
  q->client_id = herald_xstrdup(herald_cfg_string(L, cfg_idx, "clientId", ""));
  q->json_body = herald_cfg_bool(L, cfg_idx, "jsonBody", 0);
  q->metadata = herald_cfg_metadata_json(L, cfg_idx);
  herald_backoff_init(&q->bo, L, cfg_idx, "connectionBackoff");
  int err = 0;
  lua_getfield(L, cfg_idx, "auth");
  if (lua_istable(L, -1)) {
    int a = lua_gettop(L);
    q->user = herald_secret_field(src->engine, &src->log, L, a, "username", "auth.username", &err);
    if (!err) q->pass = herald_secret_field(src->engine, &src->log, L, a, "password", "auth.password", &err);
  }
  lua_pop(L, 1);
  if (err) return HERALD_EINVAL;
  lua_getfield(L, cfg_idx, "tls");
  if (lua_istable(L, -1)) {
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
  return err ? HERALD_EINVAL : 0;
}

/* ---- messages ---- */

static void maybe_done(mqtt_src *q);

static void on_published(void *data, int status) {
  mqtt_src *q = data;
  q->pending--;
  if (status < 0 && !q->poisoned) {
    /* the bus did not take it: its PUBACK is queued behind others and must never leave */
    herald_log_limited(&q->src->log, HLOG_WARN,
                       "the bus did not take a message (%s): dropping the connection so the broker redelivers it",
                       herald_strerror(status));
    q->poisoned = 1;
    if (q->state == ST_SOCKET) shutdown(mosquitto_socket(q->m), SHUT_RDWR);
  }
  if (q->stopping) maybe_done(q);
  else update_io(q);
}

/* Emits one event's JSON; returns 0 (taken or dropped) or HERALD_EBUSFULL. */
static int emit_json(mqtt_src *q, const char *json, size_t len) {
  int r = herald_source_emit(q->src, json, len, on_published, q);
  if (r == 0) {
    q->pending++;
    return 0;
  }
  if (r == HERALD_EBUSFULL) return r;
  herald_log_limited(&q->src->log, HLOG_ERROR, "message not published: %s", herald_strerror(r));
  return 0;
}

static void hold(mqtt_src *q, const char *json, size_t len) {
  held_msg *h = herald_xmalloc(sizeof *h + len + 1);
  h->next = NULL;
  h->len = len;
  memcpy(h->json, json, len);
  h->json[len] = 0;
  if (!q->held_tail) q->held_tail = &q->held;
  *q->held_tail = h;
  q->held_tail = &h->next;
}

static void on_room(herald_source *src, void *data) {
  mqtt_src *q = data;
  (void)src;
  while (q->held) {
    held_msg *h = q->held;
    if (emit_json(q, h->json, h->len) == HERALD_EBUSFULL) {
      herald_source_when_room(q->src, on_room, q);
      return;
    }
    q->held = h->next;
    if (!q->held) q->held_tail = &q->held;
    free(h);
  }
  q->paused = 0;
  update_io(q);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg) {
  mqtt_src *q = obj;
  (void)m;
  if (q->stopping) { /* not taken: its PUBACK must never leave, so nothing more is written */
    q->poisoned = 1;
    return;
  }
  size_t plen = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
  if (herald_source_too_big(q->src, plen)) return; /* acked: it would come back for ever */
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_puts(&b, "{\"topic\":");
  herald_buf_json_string(&b, msg->topic, strlen(msg->topic));
  herald_buf_printf(&b, ",\"messageId\":%d,\"body\":", msg->mid);
  if (herald_source_put_body(q->src, &b, msg->payload, plen, q->json_body) < 0) {
    herald_buf_free(&b);
    return; /* counted and logged; dropped as Argo drops it */
  }
  if (q->metadata) {
    herald_buf_puts(&b, ",\"metadata\":");
    herald_buf_puts(&b, q->metadata);
  }
  herald_buf_putc(&b, '}');
  if (q->paused || emit_json(q, b.data, b.len) == HERALD_EBUSFULL) {
    hold(q, b.data, b.len);
    if (!q->paused) {
      q->paused = 1;
      herald_source_when_room(q->src, on_room, q);
    }
  }
  herald_buf_free(&b);
}

static void on_connect(struct mosquitto *m, void *obj, int rc) {
  mqtt_src *q = obj;
  if (rc != 0) {
    q->refused = 1;
    snprintf(q->reason, sizeof q->reason, "broker refused the connection: %s", mosquitto_connack_string(rc));
    return;
  }
  int r = mosquitto_subscribe(m, NULL, q->topic, 1);
  if (r != MOSQ_ERR_SUCCESS) {
    snprintf(q->reason, sizeof q->reason, "subscribe %s: %s", q->topic, mosquitto_strerror(r));
    q->refused = 1;
    return;
  }
  herald_backoff_reset(&q->bo);
  char what[300];
  snprintf(what, sizeof what, "%s:%d, topic %s", q->host, q->port, q->topic);
  herald_source_set_connected(q->src, 1, what);
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted) {
  mqtt_src *q = obj;
  (void)m, (void)mid;
  if (n >= 1 && granted[0] == 0x80)
    herald_log(&q->src->log, HLOG_ERROR, "the broker refused the subscription to %s", q->topic);
  else if (n >= 1 && granted[0] == 0)
    herald_log(&q->src->log, HLOG_WARN, "the broker granted QoS 0 only on %s: messages may be lost across restarts", q->topic);
}

/* ---- the socket on the loop ---- */

static void on_poll_closed(uv_handle_t *h) {
  mqtt_src *q = h->data;
  q->poll_open = 0;
  if (q->stopping) maybe_done(q);
}

static void on_timer(uv_timer_t *t);

/* The connection is gone (or never came): close the poll, count, wait, connect again. */
static void lost(mqtt_src *q, const char *why) {
  if (q->state != ST_SOCKET) return;
  q->state = ST_WAITING;
  if (q->poll_open) {
    uv_poll_stop(&q->poll);
    uv_close((uv_handle_t *)&q->poll, on_poll_closed);
  }
  uv_timer_stop(&q->timer);
  const char *r = q->reason[0] ? q->reason : why;
  herald_source_set_connected(q->src, 0, r);
  q->reason[0] = 0;
  if (q->stopping) {
    maybe_done(q);
    return;
  }
  uint64_t d = herald_backoff_next(&q->bo);
  uv_timer_start(&q->timer, on_timer, d, 0);
}

static void lost_rc(mqtt_src *q, int rc, int err) {
  char why[200];
  if (rc == MOSQ_ERR_ERRNO) snprintf(why, sizeof why, "%s", strerror(err));
  else snprintf(why, sizeof why, "%s", mosquitto_strerror(rc));
  lost(q, why);
}

/* Writes libmosquitto's queue when every message read so far is held by the bus (see the top
 * of the file), and sets the poll's interest. */
static void update_io(mqtt_src *q) {
  if (q->state != ST_SOCKET || !q->poll_open) return;
  int may_write = q->pending == 0 && !q->held && !q->poisoned;
  if (may_write && mosquitto_want_write(q->m)) {
    int rc = mosquitto_loop_write(q->m, 1);
    if (rc != MOSQ_ERR_SUCCESS) {
      lost_rc(q, rc, errno);
      return;
    }
  }
  int ev = q->paused ? 0 : UV_READABLE;
  if (may_write && mosquitto_want_write(q->m)) ev |= UV_WRITABLE;
  if (q->poisoned) ev = UV_READABLE; /* read to the EOF the shutdown causes */
  if (ev != q->poll_events) {
    q->poll_events = ev;
    if (ev) uv_poll_start(&q->poll, ev, on_poll);
    else uv_poll_stop(&q->poll);
  }
}

static void on_poll(uv_poll_t *p, int status, int events) {
  mqtt_src *q = p->data;
  if (q->state != ST_SOCKET) return;
  if (status < 0) {
    lost(q, uv_strerror(status));
    return;
  }
  if (events & UV_READABLE) {
    int rc = mosquitto_loop_read(q->m, 1);
    if (rc == MOSQ_ERR_SUCCESS && q->refused) rc = MOSQ_ERR_CONN_REFUSED;
    if (rc != MOSQ_ERR_SUCCESS) {
      int e = errno;
      if (q->poisoned && !q->reason[0]) snprintf(q->reason, sizeof q->reason, "dropped after a bus failure");
      lost_rc(q, rc, e);
      return;
    }
  }
  update_io(q);
}

static void restart_poll(mqtt_src *q);

static void on_timer(uv_timer_t *t) {
  mqtt_src *q = t->data;
  if (q->stopping) return;
  if (q->state == ST_WAITING) {
    if (q->poll_open) { /* the old poll is still closing: try again shortly */
      uv_timer_start(&q->timer, on_timer, 10, 0);
      return;
    }
    connect_now(q);
    return;
  }
  if (q->state == ST_SOCKET) {
    int rc = mosquitto_loop_misc(q->m);
    if (rc != MOSQ_ERR_SUCCESS) {
      lost_rc(q, rc, errno);
      return;
    }
    update_io(q);
  }
}

/* ---- connecting (on the thread pool) ---- */

static void work_connect(uv_work_t *w) {
  mqtt_src *q = w->data;
  errno = 0;
  q->work_rc = mosquitto_connect(q->m, q->host, q->port, KEEPALIVE_S);
  q->work_errno = errno;
}

static void restart_poll(mqtt_src *q) {
  int fd = mosquitto_socket(q->m);
  uv_poll_init(q->src->engine->loop, &q->poll, fd);
  q->poll.data = q;
  q->poll_open = 1;
  q->poll_events = 0;
  q->state = ST_SOCKET;
  update_io(q);
  uv_timer_start(&q->timer, on_timer, 1000, 1000);
}

static void after_connect(uv_work_t *w, int status) {
  mqtt_src *q = w->data;
  q->state = ST_WAITING;
  if (q->stopping) {
    maybe_done(q);
    return;
  }
  if (status < 0 || q->work_rc != MOSQ_ERR_SUCCESS) {
    char why[300];
    if (q->work_rc == MOSQ_ERR_ERRNO)
      snprintf(why, sizeof why, "%s:%d: %s", q->host, q->port, strerror(q->work_errno));
    else
      snprintf(why, sizeof why, "%s:%d: %s", q->host, q->port, mosquitto_strerror(q->work_rc));
    herald_source_set_connected(q->src, 0, why);
    uv_timer_start(&q->timer, on_timer, herald_backoff_next(&q->bo), 0);
    return;
  }
  q->poisoned = 0;
  q->refused = 0;
  restart_poll(q);
}

static void connect_now(mqtt_src *q) {
  q->state = ST_CONNECTING;
  q->work.data = q;
  if (uv_queue_work(q->src->engine->loop, &q->work, work_connect, after_connect) < 0) {
    q->state = ST_WAITING;
    uv_timer_start(&q->timer, on_timer, herald_backoff_next(&q->bo), 0);
  }
}

static int mqtt_start(herald_source *src) {
  mqtt_src *q = src->priv;
  static int lib_ready;
  if (!lib_ready) {
    mosquitto_lib_init();
    lib_ready = 1;
  }
  /* clean_session false: the broker keeps our QoS 1 subscription and queue between sessions */
  q->m = mosquitto_new(q->client_id, false, q);
  if (!q->m) {
    herald_log(&src->log, HLOG_ERROR, "cannot create the MQTT client: %s", strerror(errno));
    return HERALD_EINVAL;
  }
  mosquitto_threaded_set(q->m, true); /* queued packets wait for mosquitto_loop_write */
  mosquitto_connect_callback_set(q->m, on_connect);
  mosquitto_message_callback_set(q->m, on_message);
  mosquitto_subscribe_callback_set(q->m, on_subscribe);
  if (q->user) mosquitto_username_pw_set(q->m, q->user, q->pass);
  if (q->tls) {
    int rc = MOSQ_ERR_SUCCESS;
    if (!q->ca) mosquitto_int_option(q->m, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
    if (q->ca || q->cert) rc = mosquitto_tls_set(q->m, q->ca, NULL, q->cert, q->key, NULL);
    if (rc == MOSQ_ERR_SUCCESS && q->insecure) {
      mosquitto_tls_opts_set(q->m, 0 /* SSL_VERIFY_NONE */, NULL, NULL);
      mosquitto_tls_insecure_set(q->m, true);
    }
    if (rc != MOSQ_ERR_SUCCESS) {
      herald_log(&src->log, HLOG_ERROR, "tls: %s", mosquitto_strerror(rc));
      return HERALD_EINVAL;
    }
  }
  uv_timer_init(src->engine->loop, &q->timer);
  q->timer.data = q;
  q->held_tail = &q->held;
  herald_log(&src->log, HLOG_INFO, "mqtt source: %s:%d%s, topic %s, client id %s", q->host, q->port,
             q->tls ? " (TLS)" : "", q->topic, q->client_id);
  connect_now(q);
  return 0;
}

/* ---- stopping ---- */

static void on_timer_closed(uv_handle_t *h) {
  mqtt_src *q = h->data;
  q->timer_closed = 1;
  maybe_done(q);
}

static void maybe_done(mqtt_src *q) {
  if (!q->stopping || !q->stop_done) return;
  if (q->state == ST_CONNECTING || q->pending) return;
  if (q->state == ST_SOCKET) {
    /* every message read is held by the bus: send the PUBACKs and a clean DISCONNECT */
    if (!q->poisoned && !q->held) {
      mosquitto_disconnect(q->m);
      mosquitto_loop_write(q->m, 1);
    }
    q->state = ST_IDLE;
    if (q->poll_open) {
      uv_poll_stop(&q->poll);
      uv_close((uv_handle_t *)&q->poll, on_poll_closed);
    }
  }
  if (q->poll_open) return;
  if (!q->timer_closed) {
    if (!uv_is_closing((uv_handle_t *)&q->timer)) {
      uv_timer_stop(&q->timer);
      uv_close((uv_handle_t *)&q->timer, on_timer_closed);
    }
    return;
  }
  if (q->m) mosquitto_destroy(q->m);
  q->m = NULL;
  while (q->held) {
    held_msg *h = q->held;
    q->held = h->next;
    free(h);
  }
  free(q->host), free(q->client_id), free(q->topic), free(q->user), free(q->pass);
  free(q->ca), free(q->cert), free(q->key), free(q->metadata);
  herald_source_stop_cb done = q->stop_done;
  q->stop_done = NULL;
  done(q->src);
}

static void mqtt_stop(herald_source *src, herald_source_stop_cb done) {
  mqtt_src *q = src->priv;
  if (q->stopping) return;
  q->stopping = 1;
  q->stop_done = done;
  herald_source_cancel_room(src);
  if (!q->m) { /* never started */
    free(q->host), free(q->client_id), free(q->topic), free(q->user), free(q->pass);
    free(q->ca), free(q->cert), free(q->key), free(q->metadata);
    q->stop_done = NULL;
    done(src);
    return;
  }
  maybe_done(q);
}

const herald_source_type herald_source_mqtt = {
    .name = "mqtt",
    .event_type = "mqtt",
    .priv_size = sizeof(mqtt_src),
    .init = mqtt_init,
    .start = mqtt_start,
    .stop = mqtt_stop,
};
