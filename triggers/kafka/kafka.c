/*
 * triggers/kafka: Argo's Kafka trigger on a librdkafka producer (one per trigger), done only
 * when the broker acknowledged the message.
 *
 *   execute(action) --rd_kafka_producev(topic, key, headers, value, opaque=req)--> librdkafka
 *   librdkafka threads: batch (linger.ms = flushFrequency), send, wait for acks, retry inside
 *   message.timeout.ms --> delivery report on the main queue
 *   main queue non-empty --rdkafka writes 1 byte--> pipe --uv_poll--> rd_kafka_poll(rk, 0) on
 *   the loop --dr_msg_cb--> req->done(DONE | RETRY | FAILED)
 *
 * Delivery reports reach the loop through rd_kafka_queue_io_event_enable(): librdkafka writes
 * to our pipe when its main queue goes from empty to non-empty, so the loop wakes only when a
 * report (or a log line, an error) is waiting, with no polling timer and no extra thread. Its
 * log lines and errors travel the same queue (log.queue), so every callback runs on the loop.
 *
 * Argo's trigger is fire-and-forget (sarama AsyncProducer, produce errors only logged); here
 * the action succeeds on the delivery report only. A broker that is down makes the report
 * fail after message.timeout.ms (10 s): RETRY. Errors a retry cannot fix (message too large,
 * unknown topic, not authorised) are FAILED.
 *
 * Mapping of the spec: url -> bootstrap.servers; requiredAcks -> acks (default -1, all
 * in-sync replicas, as Argo's code does; its API doc says 1); compress -> compression.codec
 * snappy; flushFrequency (ms, as Argo documents; its code passes nanoseconds) -> linger.ms,
 * librdkafka's 5 ms when unset; partitioningKey -> message key, partitioner fnv1a_random
 * (Sarama's hash partitioner, so keys land on the partitions Argo would pick); headers and
 * secureHeaders (secretKeyRef) -> message headers; tls -> ssl.*.pem (insecureSkipVerify is
 * honoured, not forced on as in Argo); sasl -> PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512;
 * version -> broker.version.fallback (librdkafka negotiates versions itself). partition is
 * deprecated and ignored, as in Argo.
 */
#define _GNU_SOURCE /* pipe2 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <librdkafka/rdkafka.h>
#include <string.h>
#include <unistd.h>

#define MESSAGE_TIMEOUT_MS "10000" /* a delivery report later than this: RETRY */
#define CLOSE_FLUSH_MS 2000

typedef struct secure_header {
  char *name;
  char *value;
} secure_header;

/* Per-trigger state. Apart from t->priv because it lives until the poll handle is closed. */
typedef struct kafka_state {
  herald_trigger *t;
  rd_kafka_t *rk;
  int fds[2]; /* librdkafka writes to fds[1] when its main queue becomes non-empty */
  uv_poll_t poll;
  secure_header *secure;
  int nsecure;
  herald_trigger_close_cb close_cb;
} kafka_state;

typedef struct kafka_trigger {
  kafka_state *st;
} kafka_trigger;

/* ---- librdkafka callbacks (all on the loop, from rd_kafka_poll) ---- */

static herald_trigger_result classify(rd_kafka_resp_err_t e) {
  switch (e) {
  case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
  case RD_KAFKA_RESP_ERR_INVALID_MSG:
  case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
  case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
  case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
  case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
  case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
  case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:
  case RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION:
  case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
  case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
  case RD_KAFKA_RESP_ERR__INVALID_ARG:
  case RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE:
  case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    return HERALD_TRIGGER_FAILED;
  default:
    return HERALD_TRIGGER_RETRY; /* timed out, transport, no leader, all brokers down ... */
  }
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  herald_trigger_req *req = m->_private;
  if (!req) return;
  if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    req->done(req, HERALD_TRIGGER_DONE, NULL);
    return;
  }
  char reason[256];
  if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
    snprintf(reason, sizeof reason, "engine stopped before the broker acknowledged the message");
  else
    snprintf(reason, sizeof reason, "delivery to topic %s failed: %s", rd_kafka_topic_name(m->rkt),
             rd_kafka_err2str(m->err));
  req->done(req, classify(m->err), reason);
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  kafka_state *st = rd_kafka_opaque(rk);
  /* Errors also reach on_error (which logs them once); keep only the critical ones here. */
  if (level <= 2) herald_log_limited(&st->t->log, HLOG_ERROR, "librdkafka %s: %s", fac, buf);
  else if (herald_log_enabled(HLOG_DEBUG)) herald_log(&st->t->log, HLOG_DEBUG, "librdkafka %s: %s", fac, buf);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  kafka_state *st = opaque;
  herald_log_limited(&st->t->log, HLOG_WARN, "kafka: %s: %s",
                     rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void serve(kafka_state *st) {
  while (rd_kafka_poll(st->rk, 0) > 0) {
  }
}

static void on_readable(uv_poll_t *p, int status, int events) {
  kafka_state *st = p->data;
  char buf[64];
  while (read(st->fds[0], buf, sizeof buf) > 0) {
  }
  if (st->rk) serve(st);
}

/* ---- init ---- */

static int conf_set(herald_trigger *t, rd_kafka_conf_t *conf, const char *k, const char *v) {
  char err[256];
  if (rd_kafka_conf_set(conf, k, v, err, sizeof err) == RD_KAFKA_CONF_OK) return 0;
  herald_log(&t->log, HLOG_ERROR, "kafka: cannot set %s: %s", k, err);
  return HERALD_EINVAL;
}

/* The secret in field `field` of the table at idx (see herald_secret_field). */
static char *secret_value(herald_trigger *t, lua_State *L, int idx, const char *field, const char *what,
                          int *err) {
  return herald_secret_field(t->engine, &t->log, L, idx, field, what, err);
}

/* tls{} at idx -> ssl.* (PEM in memory). stack: unchanged */
static int apply_tls(herald_trigger *t, rd_kafka_conf_t *conf, lua_State *L, int idx) {
  static const struct {
    const char *field, *prop;
  } pems[] = {
      {"caCertSecret", "ssl.ca.pem"},
      {"clientCertSecret", "ssl.certificate.pem"},
      {"clientKeySecret", "ssl.key.pem"},
  };
  for (size_t i = 0; i < HERALD_ARRAY_SIZE(pems); i++) {
    int err;
    char what[64];
    snprintf(what, sizeof what, "tls.%s", pems[i].field);
    char *v = secret_value(t, L, idx, pems[i].field, what, &err);
    if (err) return err;
    int r = v ? conf_set(t, conf, pems[i].prop, v) : 0;
    if (v) memset(v, 0, strlen(v));
    free(v);
    if (r) return r;
  }
  if (herald_cfg_bool(L, idx, "insecureSkipVerify", 0)) {
    if (conf_set(t, conf, "enable.ssl.certificate.verification", "false") ||
        conf_set(t, conf, "ssl.endpoint.identification.algorithm", "none"))
      return HERALD_EINVAL;
  }
  return 0;
}

/* sasl{} at idx -> sasl.*. stack: unchanged */
static int apply_sasl(herald_trigger *t, rd_kafka_conf_t *conf, lua_State *L, int idx) {
  const char *mech = herald_cfg_string(L, idx, "mechanism", "PLAIN");
  if (strcmp(mech, "PLAIN") && strcmp(mech, "SCRAM-SHA-256") && strcmp(mech, "SCRAM-SHA-512")) {
    herald_log(&t->log, HLOG_ERROR,
               "sasl.mechanism %s is not supported by Herald's kafka trigger (use PLAIN, "
               "SCRAM-SHA-256 or SCRAM-SHA-512)", mech);
    return HERALD_EINVAL;
  }
  int err, r = conf_set(t, conf, "sasl.mechanism", mech);
  if (r) return r;
  char *user = secret_value(t, L, idx, "userSecret", "sasl.userSecret", &err);
  if (err) return err;
  char *pass = secret_value(t, L, idx, "passwordSecret", "sasl.passwordSecret", &err);
  if (!err && user) r = conf_set(t, conf, "sasl.username", user);
  if (!err && !r && pass) r = conf_set(t, conf, "sasl.password", pass);
  if (pass) memset(pass, 0, strlen(pass));
  free(user), free(pass);
  return err ? err : r;
}

/* secureHeaders[] at idx: resolved once, here. stack: unchanged */
static int load_secure_headers(herald_trigger *t, kafka_state *st, lua_State *L, int idx) {
  int n = (int)lua_objlen(L, idx);
  st->secure = herald_xcalloc((size_t)(n ? n : 1), sizeof *st->secure);
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    int h = lua_gettop(L);
    const char *name = herald_cfg_string(L, h, "name", NULL);
    char *value = NULL;
    int err = 0;
    lua_getfield(L, h, "valueFrom");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "configMapKeyRef");
      int has_cm = lua_istable(L, -1);
      lua_pop(L, 1);
      if (has_cm) {
        herald_log(&t->log, HLOG_ERROR, "secureHeaders[%d] %s: configMapKeyRef is not supported by "
                   "Herald yet (use secretKeyRef)", i - 1, name ? name : "?");
        err = HERALD_EINVAL;
      } else {
        value = secret_value(t, L, lua_gettop(L), "secretKeyRef", "secureHeaders.secretKeyRef", &err);
      }
    }
    lua_pop(L, 1);
    if (!err && (!name || !value)) {
      herald_log(&t->log, HLOG_ERROR, "secureHeaders[%d]: needs a name and valueFrom.secretKeyRef", i - 1);
      err = HERALD_EINVAL;
    }
    if (err) {
      free(value);
      lua_pop(L, 1);
      return err;
    }
    st->secure[st->nsecure].name = herald_xstrdup(name);
    st->secure[st->nsecure].value = value;
    st->nsecure++;
    lua_pop(L, 1);
  }
  return 0;
}

static void state_free(kafka_state *st) {
  for (int i = 0; i < st->nsecure; i++) free(st->secure[i].name), free(st->secure[i].value);
  free(st->secure);
  if (st->fds[0] >= 0) close(st->fds[0]);
  if (st->fds[1] >= 0) close(st->fds[1]);
  free(st);
}

static int build_conf(herald_trigger *t, kafka_state *st, rd_kafka_conf_t *conf, lua_State *L, int idx) {
  char num[32];
  const char *url = herald_cfg_string(L, idx, "url", NULL);
  if (!url || !*url) {
    herald_log(&t->log, HLOG_ERROR, "kafka trigger needs a url (comma-separated brokers)");
    return HERALD_EINVAL;
  }
  if (conf_set(t, conf, "bootstrap.servers", url) || conf_set(t, conf, "client.id", "herald") ||
      conf_set(t, conf, "message.timeout.ms", MESSAGE_TIMEOUT_MS) ||
      conf_set(t, conf, "partitioner", "fnv1a_random") || conf_set(t, conf, "log.queue", "true"))
    return HERALD_EINVAL;
  snprintf(num, sizeof num, "%d", (int)herald_cfg_number(L, idx, "requiredAcks", -1));
  if (conf_set(t, conf, "acks", num)) return HERALD_EINVAL;
  if (herald_cfg_bool(L, idx, "compress", 0) && conf_set(t, conf, "compression.codec", "snappy"))
    return HERALD_EINVAL;
  double ff = herald_cfg_number(L, idx, "flushFrequency", 0);
  if (ff > 0) {
    snprintf(num, sizeof num, "%.0f", ff);
    if (conf_set(t, conf, "linger.ms", num)) return HERALD_EINVAL;
  }
  const char *version = herald_cfg_string(L, idx, "version", NULL);
  if (version && *version) {
    char err[256];
    if (rd_kafka_conf_set(conf, "broker.version.fallback", version, err, sizeof err) != RD_KAFKA_CONF_OK)
      herald_log(&t->log, HLOG_WARN, "version %s ignored: %s", version, err);
  }
  int has_tls = 0, has_sasl = 0, r = 0;
  lua_getfield(L, idx, "tls");
  if (lua_istable(L, -1)) {
    has_tls = 1;
    r = apply_tls(t, conf, L, lua_gettop(L));
  }
  lua_pop(L, 1);
  if (r) return r;
  lua_getfield(L, idx, "sasl");
  if (lua_istable(L, -1)) {
    has_sasl = 1;
    r = apply_sasl(t, conf, L, lua_gettop(L));
  }
  lua_pop(L, 1);
  if (r) return r;
  const char *proto = has_tls ? (has_sasl ? "sasl_ssl" : "ssl") : (has_sasl ? "sasl_plaintext" : "plaintext");
  if (conf_set(t, conf, "security.protocol", proto)) return HERALD_EINVAL;
  lua_getfield(L, idx, "secureHeaders");
  if (lua_istable(L, -1)) r = load_secure_headers(t, st, L, lua_gettop(L));
  lua_pop(L, 1);
  return r;
}

static int kafka_init(herald_trigger *t, lua_State *L, int idx) {
  kafka_trigger *kt = t->priv;
  kafka_state *st = herald_xcalloc(1, sizeof *st);
  st->t = t;
  st->fds[0] = st->fds[1] = -1;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  int r = build_conf(t, st, conf, L, idx);
  if (r) {
    rd_kafka_conf_destroy(conf);
    state_free(st);
    return r;
  }
  rd_kafka_conf_set_opaque(conf, st);
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_log_cb(conf, on_log);
  rd_kafka_conf_set_error_cb(conf, on_error);
  if (pipe2(st->fds, O_NONBLOCK | O_CLOEXEC) < 0) {
    herald_log(&t->log, HLOG_ERROR, "kafka: pipe: %s", strerror(errno));
    rd_kafka_conf_destroy(conf);
    state_free(st);
    return HERALD_EIO;
  }
  char err[512];
  st->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err); /* takes conf on success */
  if (!st->rk) {
    herald_log(&t->log, HLOG_ERROR, "kafka: cannot create the producer: %s", err);
    rd_kafka_conf_destroy(conf);
    state_free(st);
    return HERALD_EINVAL;
  }
  rd_kafka_set_log_queue(st->rk, NULL); /* logs to the main queue: served on the loop */
  rd_kafka_queue_t *q = rd_kafka_queue_get_main(st->rk);
  rd_kafka_queue_io_event_enable(q, st->fds[1], "1", 1);
  rd_kafka_queue_destroy(q);
  uv_poll_init(t->engine->loop, &st->poll, st->fds[0]);
  st->poll.data = st;
  uv_poll_start(&st->poll, UV_READABLE, on_readable);
  /* The pipe is written only when the queue goes from empty to non-empty: serve what was
   * queued before the enable (start-up logs), or no wake-up would ever come. */
  serve(st);
  kt->st = st;
  return 0;
}

/* ---- execute ---- */

/* action: {spec = {topic=, partitioningKey=, headers={}, ...}, body = <json> | nil, events = {}} */
static int kafka_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  kafka_state *st = ((kafka_trigger *)t->priv)->st;
  int top = lua_gettop(L);
  lua_getfield(L, idx, "spec");
  int spec = lua_gettop(L);
  if (!lua_istable(L, spec)) {
    lua_settop(L, top);
    return HERALD_EINVAL;
  }
  const char *topic = herald_cfg_string(L, spec, "topic", NULL);
  if (!topic || !*topic) {
    lua_settop(L, top);
    req->done(req, HERALD_TRIGGER_FAILED, "empty topic");
    return 0;
  }
  size_t klen = 0, blen = 0;
  lua_getfield(L, spec, "partitioningKey");
  const char *key = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER ? lua_tolstring(L, -1, &klen) : NULL;
  lua_getfield(L, idx, "body");
  const char *body = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &blen) : "";
  rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
  lua_getfield(L, spec, "headers");
  if (lua_istable(L, -1)) {
    int h = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, h)) {
      if (lua_type(L, -2) == LUA_TSTRING && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
        size_t vlen;
        const char *v = lua_tolstring(L, -1, &vlen);
        rd_kafka_header_add(hdrs, lua_tostring(L, -2), -1, v, (ssize_t)vlen);
      }
      lua_pop(L, 1);
    }
  }
  for (int i = 0; i < st->nsecure; i++)
    rd_kafka_header_add(hdrs, st->secure[i].name, -1, st->secure[i].value, -1);
  rd_kafka_resp_err_t e = rd_kafka_producev(
      st->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_VALUE((void *)body, blen), RD_KAFKA_V_KEY((void *)key, key ? klen : 0),
      RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(req), RD_KAFKA_V_END);
  lua_settop(L, top);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    rd_kafka_headers_destroy(hdrs); /* ours again when producev fails */
    char reason[256];
    snprintf(reason, sizeof reason, "cannot produce to topic %s: %s", topic, rd_kafka_err2str(e));
    req->done(req, e == RD_KAFKA_RESP_ERR__QUEUE_FULL ? HERALD_TRIGGER_RETRY : classify(e), reason);
  }
  return 0;
}

/* ---- close ---- */

static void poll_closed(uv_handle_t *h) {
  kafka_state *st = h->data;
  herald_trigger *t = st->t;
  herald_trigger_close_cb cb = st->close_cb;
  state_free(st);
  cb(t);
}

static void kafka_close(herald_trigger *t, herald_trigger_close_cb done) {
  kafka_state *st = ((kafka_trigger *)t->priv)->st;
  st->close_cb = done;
  /* The engine drained first, so this is normally empty; the bound covers a drain that timed
   * out. Reports served here still complete their requests. */
  if (rd_kafka_outq_len(st->rk) > 0) rd_kafka_flush(st->rk, CLOSE_FLUSH_MS);
  if (rd_kafka_outq_len(st->rk) > 0) {
    rd_kafka_purge(st->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(st->rk, 500);
  }
  serve(st);
  rd_kafka_destroy(st->rk);
  st->rk = NULL;
  uv_poll_stop(&st->poll);
  uv_close((uv_handle_t *)&st->poll, poll_closed);
}

const herald_trigger_type herald_trigger_kafka = {
    .name = "kafka",
    .priv_size = sizeof(kafka_trigger),
    .req_size = 0,
    .init = kafka_init,
    .execute = kafka_execute,
    .close = kafka_close,
};
