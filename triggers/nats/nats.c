/*
 * triggers/nats: Argo's NATS trigger, a core NATS publish (not JetStream) of the payload to
 * `subject`, confirmed by a round trip to the server.
 *
 *   loop: execute(action) --copy subject+body--> queue --cond--> worker thread (one per trigger)
 *   worker: takes the whole queue, natsConnection_Publish each, ONE FlushTimeout (PING/PONG)
 *           for the batch --> done list --uv_async_send--> loop: req->done(DONE|RETRY|FAILED)
 *
 * Why nats.c's own threads and not its libuv adapter on our loop: with the adapter,
 * natsConnection_Connect still does the TCP connect and the INFO/CONNECT/PONG handshake
 * synchronously on the calling thread, and there is no asynchronous flush (FlushTimeout
 * blocks until the PONG, which on the loop thread could never be read: a deadlock). So the
 * loop never calls nats.c at all: a per-trigger worker owns the connection, connects in the
 * background (retry on failed connect, unlimited reconnects, all nats.c's), and answers a
 * batch of publishes with one PONG, since the server handles a connection's messages in
 * order. A PONG means the server has the messages (core NATS gives no more than that).
 *
 * Results: DONE after the PONG; RETRY when not connected (the message is not handed to
 * nats.c, so a reconnect does not replay it behind the retry; only a disconnect between the
 * status check and the PONG can still deliver it twice: at-least-once), or the PONG timed
 * out; FAILED for what a retry cannot fix (empty or invalid subject, payload above the
 * server's max_payload).
 *
 * Connection state changes (connected, disconnected, reconnected) are noted by nats.c's
 * callback thread and logged on the loop. close(): the worker closes the connection, waits for
 * nats.c's closed callback (the last one it makes), exits, and the loop joins it.
 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"

#include <lauxlib.h>
#include <nats/nats.h>
#include <openssl/evp.h>
#include <string.h>

#define FLUSH_TIMEOUT_MS 5000 /* a PONG later than this: RETRY */
#define CONNECT_TIMEOUT_MS 2000
#define RECONNECT_WAIT_MS 1000
#define CLOSE_WAIT_NS (2 * 1000000000ull)

enum { EV_CONNECTED = 1, EV_DISCONNECTED = 2, EV_RECONNECTED = 4, EV_CLOSED = 8 };

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
 * it is freed in the async handle's close callback, which then calls the engine's done. */
typedef struct nats_state {
  herald_trigger *t;
  natsOptions *opts;
  natsConnection *nc; /* the worker's only */
  char *url;
  uv_thread_t thread;
  uv_mutex_t mu;
  uv_cond_t cond;
  uv_async_t async;
  /* under mu: */
  nats_job *queue, *queue_tail; /* loop -> worker */
  nats_job *done, *done_tail;   /* worker -> loop */
  int events;                   /* EV_* seen by nats.c's callbacks, not yet logged */
  int stop;                     /* close() asked the worker to finish */
  int exited;                   /* the worker has finished with nats.c */
  int closed_cb_seen;
  char last_error[160];
  herald_trigger_close_cb close_cb;
} nats_state;

typedef struct nats_trigger {
  nats_state *st;
} nats_trigger;

/* ---- nats.c callbacks (nats.c's thread) ---- */

static void note_event(nats_state *st, natsConnection *nc, int ev) {
  uv_mutex_lock(&st->mu);
  st->events |= ev;
  if (ev == EV_DISCONNECTED && nc) {
    const char *err = NULL;
    if (natsConnection_GetLastError(nc, &err) != NATS_OK && err)
      snprintf(st->last_error, sizeof st->last_error, "%s", err);
  }
  if (ev == EV_CLOSED) {
    st->closed_cb_seen = 1;
    uv_cond_broadcast(&st->cond);
  }
  uv_mutex_unlock(&st->mu);
  if (ev != EV_CLOSED) uv_async_send(&st->async);
}

static void on_connected(natsConnection *nc, void *c) { note_event(c, nc, EV_CONNECTED); }
static void on_disconnected(natsConnection *nc, void *c) { note_event(c, nc, EV_DISCONNECTED); }
static void on_reconnected(natsConnection *nc, void *c) { note_event(c, nc, EV_RECONNECTED); }
static void on_closed(natsConnection *nc, void *c) { note_event(c, nc, EV_CLOSED); }

/* ---- the worker thread ---- */

static void job_finish(nats_job *j, herald_trigger_result res, const char *fmt, const char *detail) {
  j->res = res;
  if (fmt) snprintf(j->reason, sizeof j->reason, fmt, detail ? detail : "");
  else j->reason[0] = '\0';
}

static const char *status_text(natsStatus s) {
  const char *e = nats_GetLastError(NULL);
  return e && *e ? e : natsStatus_GetText(s);
}

static void worker_connect(nats_state *st) {
  natsStatus s = natsConnection_Connect(&st->nc, st->opts);
  if (s == NATS_OK) {
    note_event(st, st->nc, EV_CONNECTED);
  } else if (s != NATS_NOT_YET_CONNECTED) {
    /* A configuration nats.c rejects before trying (bad URL, unreadable credentials ...). */
    uv_mutex_lock(&st->mu);
    snprintf(st->last_error, sizeof st->last_error, "%s", status_text(s));
    uv_mutex_unlock(&st->mu);
    st->nc = NULL;
  }
}

/* Publishes a batch and confirms it with one round trip. */
static void worker_publish(nats_state *st, nats_job *batch) {
  int published = 0;
  char why[160];
  natsConnStatus cs = st->nc ? natsConnection_Status(st->nc) : NATS_CONN_STATUS_CLOSED;
  if (cs != NATS_CONN_STATUS_CONNECTED) {
    uv_mutex_lock(&st->mu);
    snprintf(why, sizeof why, "%.150s", st->last_error[0] ? st->last_error : "connection refused or not yet made");
    uv_mutex_unlock(&st->mu);
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
    natsStatus s = natsConnection_Publish(st->nc, j->subject, j->body, (int)j->len);
    if (s == NATS_OK) {
      j->res = HERALD_TRIGGER_DONE;
      j->reason[0] = '\0';
      published++;
    } else if (s == NATS_INVALID_SUBJECT || s == NATS_MAX_PAYLOAD || s == NATS_INVALID_ARG) {
      job_finish(j, HERALD_TRIGGER_FAILED, "publish rejected: %s", status_text(s));
    } else {
      job_finish(j, HERALD_TRIGGER_RETRY, "publish failed: %s", status_text(s));
    }
  }
  if (!published) return;
  natsStatus fs = natsConnection_FlushTimeout(st->nc, FLUSH_TIMEOUT_MS);
  if (fs == NATS_OK) return;
  snprintf(why, sizeof why, "%s", fs == NATS_TIMEOUT ? "no reply from the server in time" : status_text(fs));
  for (nats_job *j = batch; j; j = j->next)
    if (j->res == HERALD_TRIGGER_DONE) job_finish(j, HERALD_TRIGGER_RETRY, "flush failed: %s", why);
}

static void worker_main(void *arg) {
  nats_state *st = arg;
  worker_connect(st);
  for (;;) {
    uv_mutex_lock(&st->mu);
    while (!st->queue && !st->stop) uv_cond_wait(&st->cond, &st->mu);
    nats_job *batch = st->queue;
    st->queue = st->queue_tail = NULL;
    int stop = st->stop;
    uv_mutex_unlock(&st->mu);
    if (batch) {
      if (!st->nc && !stop) worker_connect(st); /* the first attempt failed for good: again */
      if (stop) {
        for (nats_job *j = batch; j; j = j->next)
          job_finish(j, HERALD_TRIGGER_FAILED, "engine stopped%s", NULL);
      } else {
        worker_publish(st, batch);
      }
      nats_job *last = batch;
      while (last->next) last = last->next;
      uv_mutex_lock(&st->mu);
      if (st->done_tail) st->done_tail->next = batch;
      else st->done = batch;
      st->done_tail = last;
      uv_mutex_unlock(&st->mu);
      uv_async_send(&st->async);
    }
    if (stop) break;
  }
  if (st->nc) {
    natsConnection_Close(st->nc);
    /* The closed callback is the last one nats.c makes; wait for it (bounded) so no callback
     * can touch st after the loop frees it. */
    uv_mutex_lock(&st->mu);
    uint64_t deadline = uv_hrtime() + CLOSE_WAIT_NS;
    while (!st->closed_cb_seen && uv_hrtime() < deadline)
      uv_cond_timedwait(&st->cond, &st->mu, 50 * 1000000ull);
    uv_mutex_unlock(&st->mu);
    natsConnection_Destroy(st->nc);
    st->nc = NULL;
  }
  uv_mutex_lock(&st->mu);
  st->exited = 1;
  uv_mutex_unlock(&st->mu);
  uv_async_send(&st->async);
}

/* ---- the loop side ---- */

static void state_free(uv_handle_t *h) {
  nats_state *st = h->data;
  herald_trigger *t = st->t;
  herald_trigger_close_cb cb = st->close_cb;
  natsOptions_Destroy(st->opts);
  uv_mutex_destroy(&st->mu);
  uv_cond_destroy(&st->cond);
  free(st->url);
  free(st);
  if (cb) cb(t);
}

static void on_async(uv_async_t *a) {
  nats_state *st = a->data;
  uv_mutex_lock(&st->mu);
  nats_job *done = st->done;
  st->done = st->done_tail = NULL;
  int events = st->events;
  st->events = 0;
  int exited = st->exited;
  char last_error[sizeof st->last_error];
  memcpy(last_error, st->last_error, sizeof last_error);
  uv_mutex_unlock(&st->mu);
  herald_trigger *t = st->t;
  if (events & EV_CONNECTED) herald_log(&t->log, HLOG_INFO, "connected to %s", st->url);
  if (events & EV_DISCONNECTED)
    herald_log_limited(&t->log, HLOG_WARN, "disconnected from %s%s%s: reconnecting", st->url,
                       last_error[0] ? ": " : "", last_error);
  if (events & EV_RECONNECTED) herald_log(&t->log, HLOG_INFO, "reconnected to %s", st->url);
  while (done) {
    nats_job *j = done;
    done = j->next;
    free(j->subject);
    j->subject = NULL;
    j->req->done(j->req, j->res, j->res == HERALD_TRIGGER_DONE ? NULL : j->reason);
  }
  if (exited && !uv_is_closing((uv_handle_t *)a)) {
    uv_thread_join(&st->thread);
    uv_close((uv_handle_t *)a, state_free);
  }
}

/* <secrets-dir>/<name>/<key> of the SecretKeySelector at idx (nats.c reads nkey seeds and
 * credentials files itself). Returns a new string, or NULL after logging. stack: unchanged */
static char *secret_path(herald_trigger *t, lua_State *L, int idx, const char *what) {
  const char *name = herald_cfg_string(L, idx, "name", NULL);
  const char *key = herald_cfg_string(L, idx, "key", NULL);
  if (!name || !key || strchr(name, '/') || strchr(key, '/')) {
    herald_log(&t->log, HLOG_ERROR, "%s: a secret needs a name and a key", what);
    return NULL;
  }
  char *p = herald_xasprintf("%s/%s/%s", t->engine->opts.secrets_dir, name, key);
  int err = 0;
  size_t plen = 0;
  char *probe = herald_read_file(p, &plen, &err);
  if (!probe) {
    herald_log(&t->log, HLOG_ERROR, "%s: cannot read secret %s/%s (%s): %s", what, name, key, p,
               herald_strerror(err));
    free(p);
    return NULL;
  }
  free(probe);
  return p;
}

/* The secret in field `field` of the table at idx (see herald_secret_field). */
static char *secret_value(herald_trigger *t, lua_State *L, int idx, const char *field, const char *what,
                          int *err) {
  return herald_secret_field(t->engine, &t->log, L, idx, field, what, err);
}

/* ---- NKey: the public key from a user seed (nats.c wants both) ---- */

static const char B32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

static uint16_t crc16_xmodem(const unsigned char *p, size_t n) {
  uint16_t crc = 0;
  for (size_t i = 0; i < n; i++) {
    crc ^= (uint16_t)(p[i] << 8);
    for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
  }
  return crc;
}

static size_t b32_decode(const char *s, size_t n, unsigned char *out, size_t cap) {
  size_t o = 0;
  unsigned buf = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    const char *c = strchr(B32, s[i]);
    if (!c || !s[i]) return 0;
    buf = (buf << 5) | (unsigned)(c - B32);
    bits += 5;
    if (bits >= 8) {
      if (o >= cap) return 0;
      out[o++] = (unsigned char)(buf >> (bits - 8));
      bits -= 8;
    }
  }
  return o;
}

static void b32_encode(const unsigned char *p, size_t n, char *out) {
  unsigned buf = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    buf = (buf << 8) | p[i];
    bits += 8;
    while (bits >= 5) {
      *out++ = B32[(buf >> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) *out++ = B32[(buf << (5 - bits)) & 31];
  *out = '\0';
}

/* Finds a user seed ("SU" + 56 base32 characters) in text and writes its public key ("U...",
 * 56 characters) into pub (57 bytes). Returns 0 or HERALD_EINVAL. */
static int nkey_public_from_seed(const char *text, char *pub) {
  const char *s = text;
  size_t n = 0;
  for (; (s = strstr(s, "SU")); s++) {
    n = strspn(s, B32);
    if (n == 58) break;
  }
  if (!s) return HERALD_EINVAL;
  unsigned char raw[40];
  if (b32_decode(s, 58, raw, sizeof raw) != 36) return HERALD_EINVAL;
  uint16_t crc = (uint16_t)(raw[34] | raw[35] << 8);
  if (crc16_xmodem(raw, 34) != crc) return HERALD_EINVAL;
  unsigned prefix = ((raw[0] & 7u) << 5) | ((raw[1] & 0xf8u) >> 3);
  EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw + 2, 32);
  unsigned char out[35];
  size_t plen = 32;
  int ok = k && EVP_PKEY_get_raw_public_key(k, out + 1, &plen) == 1 && plen == 32;
  EVP_PKEY_free(k);
  memset(raw, 0, sizeof raw);
  if (!ok) return HERALD_EINVAL;
  out[0] = (unsigned char)prefix;
  crc = crc16_xmodem(out, 33);
  out[33] = (unsigned char)(crc & 0xff);
  out[34] = (unsigned char)(crc >> 8);
  b32_encode(out, 35, pub);
  return 0;
}

/* ---- init / execute / close ---- */

/* Applies tls{} at idx to opts. Returns 0 or a negative error (logged). stack: unchanged */
static int apply_tls(herald_trigger *t, natsOptions *o, lua_State *L, int idx) {
  int err;
  natsOptions_SetSecure(o, true);
  char *ca = secret_value(t, L, idx, "caCertSecret", "tls.caCertSecret", &err);
  if (err) return err;
  if (ca) natsOptions_SetCATrustedCertificates(o, ca);
  free(ca);
  char *cert = secret_value(t, L, idx, "clientCertSecret", "tls.clientCertSecret", &err);
  if (err) return err;
  char *key = secret_value(t, L, idx, "clientKeySecret", "tls.clientKeySecret", &err);
  if (err) {
    free(cert);
    return err;
  }
  if (!cert != !key) {
    herald_log(&t->log, HLOG_ERROR, "tls: clientCertSecret and clientKeySecret go together");
    free(cert), free(key);
    return HERALD_EINVAL;
  }
  natsStatus s = NATS_OK;
  if (cert) s = natsOptions_SetCertificatesChain(o, cert, key);
  free(cert), free(key);
  if (s != NATS_OK) {
    herald_log(&t->log, HLOG_ERROR, "tls: client certificate: %s", status_text(s));
    return HERALD_EINVAL;
  }
  if (herald_cfg_bool(L, idx, "insecureSkipVerify", 0)) natsOptions_SkipServerVerification(o, true);
  return 0;
}

/* Applies auth{} at idx (one of basic, token, nkey, credential). stack: unchanged */
static int apply_auth(herald_trigger *t, natsOptions *o, lua_State *L, int idx) {
  int err;
  natsStatus s = NATS_OK;
  lua_getfield(L, idx, "basic");
  if (lua_istable(L, -1)) {
    int b = lua_gettop(L);
    char *user = secret_value(t, L, b, "username", "auth.basic.username", &err);
    char *pass = err ? NULL : secret_value(t, L, b, "password", "auth.basic.password", &err);
    if (!err) s = natsOptions_SetUserInfo(o, user, pass);
    free(user), free(pass);
    lua_pop(L, 1);
    if (err) return err;
    if (s != NATS_OK) goto nats_err;
  } else {
    lua_pop(L, 1);
  }
  char *token = secret_value(t, L, idx, "token", "auth.token", &err);
  if (err) return err;
  if (token) {
    s = natsOptions_SetToken(o, token);
    free(token);
    if (s != NATS_OK) goto nats_err;
  }
  lua_getfield(L, idx, "nkey");
  if (lua_istable(L, -1)) {
    char *path = secret_path(t, L, lua_gettop(L), "auth.nkey");
    lua_pop(L, 1);
    if (!path) return HERALD_EINVAL;
    size_t seedlen = 0;
    char *seed = herald_read_file(path, &seedlen, &err);
    char pub[64];
    int r = seed ? nkey_public_from_seed(seed, pub) : HERALD_EINVAL;
    if (seed) {
      memset(seed, 0, seedlen);
      free(seed);
    }
    if (r < 0) {
      herald_log(&t->log, HLOG_ERROR, "auth.nkey: %s holds no valid user NKey seed (SU...)", path);
      free(path);
      return r;
    }
    s = natsOptions_SetNKeyFromSeed(o, pub, path);
    free(path);
    if (s != NATS_OK) goto nats_err;
  } else {
    lua_pop(L, 1);
  }
  lua_getfield(L, idx, "credential");
  if (lua_istable(L, -1)) {
    char *path = secret_path(t, L, lua_gettop(L), "auth.credential");
    lua_pop(L, 1);
    if (!path) return HERALD_EINVAL;
    s = natsOptions_SetUserCredentialsFromFiles(o, path, NULL);
    free(path);
    if (s != NATS_OK) goto nats_err;
  } else {
    lua_pop(L, 1);
  }
  return 0;
nats_err:
  herald_log(&t->log, HLOG_ERROR, "auth: %s", status_text(s));
  return HERALD_EINVAL;
}

static int nats_init(herald_trigger *t, lua_State *L, int idx) {
  nats_trigger *nt = t->priv;
  const char *url = herald_cfg_string(L, idx, "url", NULL);
  if (!url || !*url) {
    herald_log(&t->log, HLOG_ERROR, "nats trigger needs a url");
    return HERALD_EINVAL;
  }
  natsOptions *o = NULL;
  if (natsOptions_Create(&o) != NATS_OK) return HERALD_ENOMEM;
  int r = 0;
  nats_state *st = herald_xcalloc(1, sizeof *st);
  st->t = t;
  st->url = herald_xstrdup(url);
  char *name = herald_xasprintf("herald:%s/%s", t->sensor_name, t->name);
  natsStatus s = natsOptions_SetURL(o, url);
  if (s != NATS_OK) {
    herald_log(&t->log, HLOG_ERROR, "url %s: %s", url, status_text(s));
    r = HERALD_EINVAL;
  }
  natsOptions_SetName(o, name);
  free(name);
  natsOptions_SetTimeout(o, CONNECT_TIMEOUT_MS);
  natsOptions_SetMaxReconnect(o, -1); /* forever: a trigger outlives any outage */
  natsOptions_SetReconnectWait(o, RECONNECT_WAIT_MS);
  natsOptions_SetRetryOnFailedConnect(o, true, on_connected, st);
  natsOptions_SetDisconnectedCB(o, on_disconnected, st);
  natsOptions_SetReconnectedCB(o, on_reconnected, st);
  natsOptions_SetClosedCB(o, on_closed, st);
  lua_getfield(L, idx, "tls");
  if (!r && lua_istable(L, -1)) r = apply_tls(t, o, L, lua_gettop(L));
  lua_pop(L, 1);
  lua_getfield(L, idx, "auth");
  if (!r && lua_istable(L, -1)) r = apply_auth(t, o, L, lua_gettop(L));
  lua_pop(L, 1);
  if (r) {
    natsOptions_Destroy(o);
    free(st->url);
    free(st);
    return r;
  }
  st->opts = o;
  uv_mutex_init(&st->mu);
  uv_cond_init(&st->cond);
  uv_async_init(t->engine->loop, &st->async, on_async);
  st->async.data = st;
  if (uv_thread_create(&st->thread, worker_main, st) != 0) {
    herald_log(&t->log, HLOG_ERROR, "cannot start the NATS worker thread");
    st->close_cb = NULL;
    uv_close((uv_handle_t *)&st->async, state_free);
    return HERALD_ENOMEM;
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
  uv_mutex_lock(&st->mu);
  if (st->queue_tail) st->queue_tail->next = j;
  else st->queue = j;
  st->queue_tail = j;
  uv_cond_signal(&st->cond);
  uv_mutex_unlock(&st->mu);
  return 0;
}

static void nats_close(herald_trigger *t, herald_trigger_close_cb done) {
  nats_state *st = ((nats_trigger *)t->priv)->st;
  st->close_cb = done;
  uv_mutex_lock(&st->mu);
  st->stop = 1;
  uv_cond_signal(&st->cond);
  uv_mutex_unlock(&st->mu);
  /* The worker finishes its batch, closes the connection and wakes on_async, which joins it,
   * reports the last results and frees st, then calls done(t). */
}

const herald_trigger_type herald_trigger_nats = {
    .name = "nats",
    .priv_size = sizeof(nats_trigger),
    .req_size = sizeof(nats_job),
    .init = nats_init,
    .execute = nats_execute,
    .close = nats_close,
};
