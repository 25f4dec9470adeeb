/*
 * triggers/nats: Argo's NATS trigger, a core NATS publish (not JetStream) of the payload to
 * `subject`, confirmed by a round trip to the server.
 *
 *   loop: execute(action) --copy subject+body--> queue --cond--> worker thread (one per trigger)
 *   worker: takes the whole queue, natsConnection_Publish each, ONE FlushTimeout (PING/PONG)
 *           for the batch --> done list --uv_async_send--> loop: req->done(DONE|RETRY|FAILED)
 *
 * The connection, its options (auth, TLS, reconnect for ever) and the worker thread with its
 * hand-off to the loop are engine/nats_client's, shared with the JetStream bus: the loop never
 * calls nats.c. The worker owns the queue, answers a batch of publishes with one PONG, since
 * the server handles a connection's messages in order. A PONG means the server has the
 * messages (core NATS gives no more than that).
 *
 * Results: DONE after the PONG; RETRY when not connected (the message is not handed to
 * nats.c, so a reconnect does not replay it behind the retry; only a disconnect between the
 * status check and the PONG can still deliver it twice: at-least-once), or the PONG timed
 * out; FAILED for what a retry cannot fix (empty or invalid subject, payload above the
 * server's max_payload).
 *
 * close(): the worker finishes its batch and returns; nats_client closes the connection, joins
 * the thread and then frees the state.
 */
#include "common.h"
#include "engine.h"
#include "nats_client.h"
#include "plugin.h"

#include <lauxlib.h>
#include <string.h>

#define FLUSH_TIMEOUT_MS 5000 /* a PONG later than this: RETRY */
#define RECONNECT_WAIT_MS 1000

/* One action; lives in req->priv. The worker fills res/reason, then hands it back. */
typedef struct nats_job {
  herald_trigger_req *req;
  char *subject; /* one allocation: subject, NUL, body */
  const char *body;
  size_t len;
  herald_trigger_result res;
  char reason[256];
  struct nats_job *next;
} nats_job;

/* Per-trigger state. Allocated apart from t->priv because it outlives close()'s caller:
 * it is freed once the client is closed, which then calls the engine's done. */
typedef struct nats_state {
  herald_trigger *t;
  herald_nats client; /* client.mu guards the lists */
  nats_job *queue, *queue_tail; /* loop -> worker */
  nats_job *done, *done_tail;   /* worker -> loop */
  herald_trigger_close_cb close_cb;
} nats_state;

typedef struct nats_trigger {
  nats_state *st;
} nats_trigger;

/* ---- the worker thread ---- */

static void job_finish(nats_job *j, herald_trigger_result res, const char *fmt, const char *detail) {
  j->res = res;
  if (fmt) snprintf(j->reason, sizeof j->reason, fmt, detail ? detail : "");
  else j->reason[0] = '\0';
}

/* Publishes a batch and confirms it with one round trip. */
static void worker_publish(nats_state *st, nats_job *batch) {
  herald_nats *c = &st->client;
  int published = 0;
  char why[160];
  natsConnStatus cs = c->nc ? natsConnection_Status(c->nc) : NATS_CONN_STATUS_CLOSED;
  if (cs != NATS_CONN_STATUS_CONNECTED) {
    uv_mutex_lock(&c->mu);
    snprintf(why, sizeof why, "%.150s", c->last_error[0] ? c->last_error : "connection refused or not yet made");
    uv_mutex_unlock(&c->mu);
  }
  for (nats_job *j = batch; j; j = j->next) {
    if (!*j->subject) {
      job_finish(j, HERALD_TRIGGER_FAILED, "empty subject%s", NULL);
      continue;
    }
    if (cs != NATS_CONN_STATUS_CONNECTED) {
      /* Not published, so nats.c buffers nothing that a reconnect would send again. */
      job_finish(j, HERALD_TRIGGER_RETRY, "not connected to the NATS server: %s", why);
      continue;
    }
    natsStatus s = natsConnection_Publish(c->nc, j->subject, j->body, (int)j->len);
    if (s == NATS_OK) {
      j->res = HERALD_TRIGGER_DONE;
      j->reason[0] = '\0';
      published++;
    } else if (s == NATS_INVALID_SUBJECT || s == NATS_MAX_PAYLOAD || s == NATS_INVALID_ARG) {
      job_finish(j, HERALD_TRIGGER_FAILED, "publish rejected: %s", herald_nats_status_text(s));
    } else {
      job_finish(j, HERALD_TRIGGER_RETRY, "publish failed: %s", herald_nats_status_text(s));
    }
  }
  if (!published) return;
  natsStatus fs = natsConnection_FlushTimeout(c->nc, FLUSH_TIMEOUT_MS);
  if (fs == NATS_OK) return;
  snprintf(why, sizeof why, "%s", fs == NATS_TIMEOUT ? "no reply from the server in time" : herald_nats_status_text(fs));
  for (nats_job *j = batch; j; j = j->next)
    if (j->res == HERALD_TRIGGER_DONE) job_finish(j, HERALD_TRIGGER_RETRY, "flush failed: %s", why);
}

static void worker_main(herald_nats *c) {
  nats_state *st = c->data;
  herald_nats_connect(c);
  for (;;) {
    uv_mutex_lock(&c->mu);
    while (!st->queue && !c->stop) uv_cond_wait(&c->cond, &c->mu);
    nats_job *batch = st->queue;
    st->queue = st->queue_tail = NULL;
    int stop = c->stop;
    uv_mutex_unlock(&c->mu);
    if (batch) {
      if (!c->nc && !stop) herald_nats_connect(c); /* the first attempt failed for good: again */
      if (stop) {
        for (nats_job *j = batch; j; j = j->next)
          job_finish(j, HERALD_TRIGGER_FAILED, "engine stopped%s", NULL);
      } else {
        worker_publish(st, batch);
      }
      nats_job *last = batch;
      while (last->next) last = last->next;
      uv_mutex_lock(&c->mu);
      if (st->done_tail) st->done_tail->next = batch;
      else st->done = batch;
      st->done_tail = last;
      uv_mutex_unlock(&c->mu);
      herald_nats_wake(c);
    }
    if (stop) break;
  }
}

/* ---- the loop side ---- */

static void state_free(herald_nats *c) {
  nats_state *st = c->data;
  herald_trigger *t = st->t;
  herald_trigger_close_cb cb = st->close_cb;
  free(st);
  if (cb) cb(t);
}

static void on_wake(herald_nats *c, int events) {
  nats_state *st = c->data;
  uv_mutex_lock(&c->mu);
  nats_job *done = st->done;
  st->done = st->done_tail = NULL;
  uv_mutex_unlock(&c->mu);
  while (done) {
    nats_job *j = done;
    done = j->next;
    free(j->subject);
    j->subject = NULL;
    j->req->done(j->req, j->res, j->res == HERALD_TRIGGER_DONE ? NULL : j->reason);
  }
}

/* ---- init / execute / close ---- */

static int nats_init(herald_trigger *t, lua_State *L, int idx) {
  nats_trigger *nt = t->priv;
  herald_nats_config cfg;
  int r = herald_nats_config_from_lua(&cfg, t->engine, &t->log, L, idx);
  if (r) return r;
  cfg.name = herald_xasprintf("herald:%s/%s", t->sensor_name, t->name);
  cfg.reconnect_wait_ms = RECONNECT_WAIT_MS; /* and for ever: a trigger outlives any outage */
  nats_state *st = herald_xcalloc(1, sizeof *st);
  st->t = t;
  st->client.data = st;
  r = herald_nats_start(t->engine->loop, &st->client, &cfg, &t->log, worker_main, on_wake);
  herald_nats_config_free(&cfg);
  if (r) {
    free(st);
    return r;
  }
  nt->st = st;
  return 0;
}

/* action: {spec = {subject=, ...}, body = <json text> | nil, events = {...}} */
static int nats_execute(herald_trigger *t, herald_trigger_req *req, lua_State *L, int idx) {
  nats_state *st = ((nats_trigger *)t->priv)->st;
  nats_job *j = req->priv;
  j->req = req;
  lua_getfield(L, idx, "spec");
  const char *subject = lua_istable(L, -1) ? herald_cfg_string(L, -1, "subject", "") : "";
  size_t slen = strlen(subject);
  lua_getfield(L, idx, "body");
  size_t blen = 0;
  const char *body = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &blen) : "";
  j->subject = malloc(slen + 1 + blen + 1);
  if (!j->subject) {
    lua_pop(L, 2);
    return HERALD_ENOMEM;
  }
  memcpy(j->subject, subject, slen + 1);
  memcpy(j->subject + slen + 1, body, blen);
  j->subject[slen + 1 + blen] = '\0';
  j->body = j->subject + slen + 1;
  j->len = blen;
  lua_pop(L, 2);
  uv_mutex_lock(&st->client.mu);
  if (st->queue_tail) st->queue_tail->next = j;
  else st->queue = j;
  st->queue_tail = j;
  uv_cond_signal(&st->client.cond);
  uv_mutex_unlock(&st->client.mu);
  return 0;
}

static void nats_close(herald_trigger *t, herald_trigger_close_cb done) {
  nats_state *st = ((nats_trigger *)t->priv)->st;
  st->close_cb = done;
  /* The worker finishes its batch and returns; the client reports the last results through
   * on_wake, closes the connection, joins the worker and calls state_free, which calls done(t). */
  herald_nats_stop(&st->client, state_free);
}

const herald_trigger_type herald_trigger_nats = {
    .name = "nats",
    .priv_size = sizeof(nats_trigger),
    .req_size = sizeof(nats_job),
    .init = nats_init,
    .execute = nats_execute,
    .close = nats_close,
};
