/*
 * nats_client.c: the NATS connection shared by the JetStream bus, the NATS trigger and the NATS
 * source: options (auth, TLS, reconnect), the worker thread, the hand-off to the loop, and the
 * reading of Argo's url/tls/auth fields. See nats_client.h for the thread model.
 */
#include "nats_client.h"

#include "common.h"
#include "plugin.h"

#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONNECT_TIMEOUT_MS 2000
#define CLOSE_WAIT_NS (2 * 1000000000ull)

/* ---- nats.c callbacks (nats.c's threads) ---- */

static void conn_event(herald_nats *c, natsConnection *nc, int ev) {
  uv_mutex_lock(&c->mu);
  c->events |= ev;
  c->connected = ev != HERALD_NATS_DISCONNECTED;
  if (ev != HERALD_NATS_DISCONNECTED) c->connects++;
  if (ev == HERALD_NATS_DISCONNECTED && nc) {
    const char *err = NULL;
    if (natsConnection_GetLastError(nc, &err) != NATS_OK && err)
      snprintf(c->last_error, sizeof c->last_error, "%s", err);
  }
  uv_cond_broadcast(&c->cond);
  uv_mutex_unlock(&c->mu);
  herald_nats_wake(c);
}

static void on_connected(natsConnection *nc, void *c) { conn_event(c, nc, HERALD_NATS_CONNECTED); }
static void on_disconnected(natsConnection *nc, void *c) { conn_event(c, nc, HERALD_NATS_DISCONNECTED); }
static void on_reconnected(natsConnection *nc, void *c) { conn_event(c, nc, HERALD_NATS_RECONNECTED); }

static void on_closed(natsConnection *nc, void *arg) {
  (void)nc;
  herald_nats *c = arg;
  uv_mutex_lock(&c->mu);
  c->closed_seen = 1;
  uv_cond_broadcast(&c->cond);
  uv_mutex_unlock(&c->mu);
}

/* Backoff: 100 ms doubling to 2 s, plus up to 25% jitter (so replicas do not reconnect in step). */
static int64_t reconnect_delay(natsConnection *nc, int attempts, void *arg) {
  (void)nc;
  herald_nats *c = arg;
  if (c->bo_first_ms) { /* a source's connectionBackoff (set before the worker started) */
    double d = c->bo_first_ms;
    for (int i = 1; i < attempts && d < c->bo_cap_ms; i++) d *= c->bo_factor;
    if (d > c->bo_cap_ms) d = c->bo_cap_ms;
    return (int64_t)(d + d * c->bo_jitter * ((double)rand() / RAND_MAX));
  }
  int64_t d = 100;
  for (int i = 1; i < attempts && d < 2000; i++) d *= 2;
  if (d > 2000) d = 2000;
  return d + (int64_t)(rand() % (int)(d / 4 + 1));
}

/* ---- any thread ---- */

const char *herald_nats_status_text(natsStatus s) {
  const char *e = nats_GetLastError(NULL);
  return e && *e ? e : natsStatus_GetText(s);
}

void herald_nats_wake(herald_nats *c) {
  uv_async_send(c->async);
}

void herald_nats_note(herald_nats *c, int level, const char *fmt, ...) {
  char line[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  uv_mutex_lock(&c->mu);
  if (c->nnotes < HERALD_NATS_MAX_NOTES) {
    c->notes[c->nnotes] = strdup(line);
    c->note_levels[c->nnotes++] = level;
  } else {
    c->notes_dropped++;
  }
  uv_mutex_unlock(&c->mu);
  herald_nats_wake(c);
}

/* ---- the worker thread ---- */

natsStatus herald_nats_connect(herald_nats *c) {
  natsOptions_SetRetryOnFailedConnect(c->opts, false, NULL, NULL);
  natsStatus s = natsConnection_Connect(&c->nc, c->opts);
  if (s != NATS_OK) {
    const char *why = herald_nats_status_text(s);
    uv_mutex_lock(&c->mu);
    snprintf(c->last_error, sizeof c->last_error, "%s", why);
    uv_mutex_unlock(&c->mu);
    herald_nats_note(c, HLOG_ERROR, "cannot connect to %s: %s (retrying)", c->url, why);
    natsOptions_SetRetryOnFailedConnect(c->opts, true, on_connected, c);
    s = natsConnection_Connect(&c->nc, c->opts);
  }
  if (s == NATS_OK) {
    conn_event(c, c->nc, HERALD_NATS_CONNECTED);
  } else if (s != NATS_NOT_YET_CONNECTED) {
    /* A configuration nats.c refuses before trying (bad URL, unreadable credentials ...). */
    herald_nats_note(c, HLOG_ERROR, "cannot connect to %s: %s", c->url, herald_nats_status_text(s));
    c->nc = NULL;
  }
  return s;
}

void herald_nats_close(herald_nats *c) {
  if (!c->nc || c->close_waited) return;
  c->close_waited = 1;
  if (!natsConnection_IsClosed(c->nc)) natsConnection_Close(c->nc);
  /* The closed callback is the last one nats.c makes; wait for it (bounded) so that no callback
   * can touch c after the loop frees it. */
  uv_mutex_lock(&c->mu);
  uint64_t deadline = uv_hrtime() + CLOSE_WAIT_NS;
  while (!c->closed_seen && uv_hrtime() < deadline) uv_cond_timedwait(&c->cond, &c->mu, 50 * 1000000ull);
  uv_mutex_unlock(&c->mu);
}

static void worker_main(void *arg) {
  herald_nats *c = arg;
  c->work(c);
  if (c->nc) {
    herald_nats_close(c);
    natsConnection_Destroy(c->nc);
    c->nc = NULL;
  }
  uv_mutex_lock(&c->mu);
  c->exited = 1;
  uv_mutex_unlock(&c->mu);
  herald_nats_wake(c);
}

/* ---- the loop side ---- */

static void release(herald_nats *c) {
  natsOptions_Destroy(c->opts);
  c->opts = NULL;
  uv_mutex_destroy(&c->mu);
  uv_cond_destroy(&c->cond);
  for (int i = 0; i < c->nnotes; i++) free(c->notes[i]);
  c->nnotes = 0;
  free(c->url);
  c->url = NULL;
}

static void async_freed(uv_handle_t *h) {
  herald_nats *c = h->data;
  free(h);
  if (!c) return; /* a failed start: c is released already */
  release(c);
  if (c->closed) c->closed(c);
}

static void on_async(uv_async_t *a) {
  herald_nats *c = a->data;
  uv_mutex_lock(&c->mu);
  int events = c->events;
  c->events = 0;
  int nnotes = c->nnotes, dropped = c->notes_dropped, exited = c->exited;
  char *notes[HERALD_NATS_MAX_NOTES];
  int levels[HERALD_NATS_MAX_NOTES];
  memcpy(notes, c->notes, sizeof notes);
  memcpy(levels, c->note_levels, sizeof levels);
  c->nnotes = c->notes_dropped = 0;
  char last_error[sizeof c->last_error];
  memcpy(last_error, c->last_error, sizeof last_error);
  uv_mutex_unlock(&c->mu);

  if (c->owner_logs_state) {
    /* the owner says it (herald_source_set_connected) */
  } else {
    if (events & HERALD_NATS_CONNECTED) herald_log(c->log, HLOG_INFO, "connected to %s", c->url);
    if (events & HERALD_NATS_DISCONNECTED)
      herald_log_limited(c->log, HLOG_WARN, "disconnected from %s%s%s: reconnecting", c->url,
                         last_error[0] ? ": " : "", last_error);
    if (events & HERALD_NATS_RECONNECTED) herald_log(c->log, HLOG_INFO, "reconnected to %s", c->url);
  }
  for (int i = 0; i < nnotes; i++) {
    if (levels[i] >= HLOG_WARN) herald_log_limited(c->log, (herald_log_level)levels[i], "%s", notes[i]);
    else herald_log(c->log, (herald_log_level)levels[i], "%s", notes[i]);
    free(notes[i]);
  }
  if (dropped) herald_log_limited(c->log, HLOG_WARN, "%d log line(s) from the NATS threads dropped", dropped);
  c->wake(c, events);
  if (exited && !uv_is_closing((uv_handle_t *)a)) {
    uv_thread_join(&c->thread);
    uv_close((uv_handle_t *)a, async_freed);
  }
}

/* The URL without its user:password@ part, for logs. */
static char *redacted_url(const char *url) {
  const char *scheme = strstr(url, "://");
  const char *start = scheme ? scheme + 3 : url;
  const char *at = strchr(start, '@');
  const char *slash = strchr(start, '/');
  if (!at || (slash && slash < at)) return herald_xstrdup(url);
  return herald_xasprintf("%.*s%s", (int)(start - url), url, at + 1);
}

static int nkey_public_from_seed(const char *text, char *pub);

/* The options for cfg, or NULL with *what naming the step nats.c refused (its status in *sp),
 * or *what NULL when the refusal is logged already. */
static natsOptions *make_options(herald_nats *c, const herald_nats_config *cfg, natsStatus *sp,
                                 const char **what) {
  natsOptions *o = NULL;
  natsStatus s = natsOptions_Create(&o);
  *what = "options";
#define STEP(name, call)                                                                                  \
  if (s == NATS_OK) {                                                                                     \
    *what = name;                                                                                         \
    s = call;                                                                                             \
  }
  STEP("url", natsOptions_SetURL(o, cfg->url));
  if (cfg->user || cfg->password) STEP("auth.basic", natsOptions_SetUserInfo(o, cfg->user, cfg->password));
  if (cfg->token) STEP("auth.token", natsOptions_SetToken(o, cfg->token));
  if (s == NATS_OK && cfg->nkey_seed_file) {
    /* nats.c signs with the seed file but wants the public key too: derive it. */
    int err = 0;
    size_t len = 0;
    char *seed = herald_read_file(cfg->nkey_seed_file, &len, &err);
    char pub[64];
    int r = seed ? nkey_public_from_seed(seed, pub) : HERALD_EINVAL;
    if (seed) {
      memset(seed, 0, len);
      free(seed);
    }
    if (r < 0) {
      herald_log(c->log, HLOG_ERROR, "auth.nkey: %s holds no valid user NKey seed (SU...)", cfg->nkey_seed_file);
      natsOptions_Destroy(o);
      *what = NULL;
      *sp = NATS_INVALID_ARG;
      return NULL;
    }
    STEP("auth.nkey", natsOptions_SetNKeyFromSeed(o, pub, cfg->nkey_seed_file));
  }
  if (cfg->creds_file) STEP("auth.credential", natsOptions_SetUserCredentialsFromFiles(o, cfg->creds_file, NULL));
  if (cfg->tls || strncmp(cfg->url, "tls://", 6) == 0) {
    STEP("tls", natsOptions_SetSecure(o, true));
    if (cfg->ca_pem) STEP("tls: CA certificates", natsOptions_SetCATrustedCertificates(o, cfg->ca_pem));
    if (cfg->cert_pem && cfg->key_pem)
      STEP("tls: client certificate", natsOptions_SetCertificatesChain(o, cfg->cert_pem, cfg->key_pem));
    if (cfg->tls_insecure) STEP("tls", natsOptions_SkipServerVerification(o, true));
  }
  STEP("options", natsOptions_SetName(o, cfg->name ? cfg->name : "herald"));
  /* Not natsOptions_SetSendAsap: measured (bench/RESULTS.md, JetStream section) it cost 25% of
   * the throughput and raised p99 on 2 vCPUs; nats.c's buffering adds ~1 ms to p50 instead. */
  STEP("options", natsOptions_SetTimeout(o, CONNECT_TIMEOUT_MS));
  STEP("options", natsOptions_SetMaxReconnect(o, cfg->max_reconnects > 0 ? cfg->max_reconnects : -1));
  if (cfg->reconnect_wait_ms > 0) {
    STEP("options", natsOptions_SetReconnectWait(o, cfg->reconnect_wait_ms));
  } else {
    STEP("options", natsOptions_SetCustomReconnectDelay(o, reconnect_delay, c));
  }
  STEP("options", natsOptions_SetDisconnectedCB(o, on_disconnected, c));
  STEP("options", natsOptions_SetReconnectedCB(o, on_reconnected, c));
  STEP("options", natsOptions_SetClosedCB(o, on_closed, c));
#undef STEP
  *sp = s;
  if (s == NATS_OK) return o;
  natsOptions_Destroy(o);
  return NULL;
}

int herald_nats_start(uv_loop_t *loop, herald_nats *c, const herald_nats_config *cfg, herald_logger *log,
                      herald_nats_work_cb work, herald_nats_wake_cb wake) {
  void *data = c->data;
  memset(c, 0, sizeof *c);
  c->data = data;
  c->log = log;
  c->work = work;
  c->wake = wake;
  c->url = redacted_url(cfg->url ? cfg->url : "");
  c->owner_logs_state = cfg->owner_logs_state;
  if (cfg->backoff_first_ms) {
    c->bo_first_ms = cfg->backoff_first_ms;
    c->bo_cap_ms = cfg->backoff_cap_ms > cfg->backoff_first_ms ? cfg->backoff_cap_ms : cfg->backoff_first_ms;
    c->bo_factor = cfg->backoff_factor >= 1 ? cfg->backoff_factor : 1;
    c->bo_jitter = cfg->backoff_jitter > 0 ? cfg->backoff_jitter : 0;
  }
  natsStatus s = NATS_OK;
  const char *what = NULL;
  if (!cfg->url || !*cfg->url) {
    herald_log(log, HLOG_ERROR, "a NATS url is needed");
    free(c->url);
    return HERALD_EINVAL;
  }
  c->opts = make_options(c, cfg, &s, &what);
  if (!c->opts) {
    if (what) herald_log(log, HLOG_ERROR, "%s %s: %s", c->url, what, herald_nats_status_text(s));
    free(c->url);
    return s == NATS_NO_MEMORY ? HERALD_ENOMEM : HERALD_EINVAL;
  }
  uv_mutex_init(&c->mu);
  uv_cond_init(&c->cond);
  c->async = herald_xmalloc(sizeof *c->async);
  if (uv_async_init(loop, c->async, on_async) != 0) {
    free(c->async);
    release(c);
    return HERALD_ENOMEM;
  }
  c->async->data = c;
  if (uv_thread_create(&c->thread, worker_main, c) != 0) {
    herald_log(log, HLOG_ERROR, "cannot start the NATS worker thread");
    c->async->data = NULL; /* the handle goes on its own */
    uv_close((uv_handle_t *)c->async, async_freed);
    release(c);
    return HERALD_ENOMEM;
  }
  return 0;
}

void herald_nats_stop(herald_nats *c, herald_nats_closed_cb closed) {
  c->closed = closed;
  uv_mutex_lock(&c->mu);
  c->stop = 1;
  uv_cond_broadcast(&c->cond);
  uv_mutex_unlock(&c->mu);
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

/* ---- Argo's url / tls / auth fields ---- */

/* The path of the readable secret file named by the SecretKeySelector in field `field` of the
 * table at idx (nats.c reads nkey seeds and credentials files itself). Returns a new string, or
 * NULL with *err = 0 when the field is absent, or < 0 after logging. stack: unchanged */
static char *secret_path_field(struct herald_engine *eng, herald_logger *lg, lua_State *L, int idx,
                               const char *field, const char *what, int *err) {
  *err = 0;
  lua_getfield(L, idx, field);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  const char *name = herald_cfg_string(L, -1, "name", NULL);
  const char *key = herald_cfg_string(L, -1, "key", NULL);
  char *p = herald_secret_path(eng, name, key, err);
  if (!p) {
    herald_log(lg, HLOG_ERROR, "%s: a secret needs a name and a key", what);
  } else {
    size_t plen = 0;
    char *probe = herald_read_file(p, &plen, err);
    if (!probe) {
      herald_log(lg, HLOG_ERROR, "%s: cannot read secret %s/%s (%s): %s", what, name, key, p, herald_strerror(*err));
      free(p);
      p = NULL;
    }
    free(probe);
  }
  lua_pop(L, 1);
  return p;
}

static int read_tls(herald_nats_config *cfg, struct herald_engine *eng, herald_logger *lg, lua_State *L, int idx) {
  int err;
  cfg->tls = 1;
  cfg->ca_pem = herald_secret_field(eng, lg, L, idx, "caCertSecret", "tls.caCertSecret", &err);
  if (err) return err;
  cfg->cert_pem = herald_secret_field(eng, lg, L, idx, "clientCertSecret", "tls.clientCertSecret", &err);
  if (err) return err;
  cfg->key_pem = herald_secret_field(eng, lg, L, idx, "clientKeySecret", "tls.clientKeySecret", &err);
  if (err) return err;
  if (!cfg->cert_pem != !cfg->key_pem) {
    herald_log(lg, HLOG_ERROR, "tls: clientCertSecret and clientKeySecret go together");
    return HERALD_EINVAL;
  }
  cfg->tls_insecure = herald_cfg_bool(L, idx, "insecureSkipVerify", 0);
  return 0;
}

static int read_auth(herald_nats_config *cfg, struct herald_engine *eng, herald_logger *lg, lua_State *L, int idx) {
  int err = 0;
  lua_getfield(L, idx, "basic");
  if (lua_istable(L, -1)) {
    int b = lua_gettop(L);
    cfg->user = herald_secret_field(eng, lg, L, b, "username", "auth.basic.username", &err);
    if (!err) cfg->password = herald_secret_field(eng, lg, L, b, "password", "auth.basic.password", &err);
  }
  lua_pop(L, 1);
  if (err) return err;
  cfg->token = herald_secret_field(eng, lg, L, idx, "token", "auth.token", &err);
  if (err) return err;
  cfg->nkey_seed_file = secret_path_field(eng, lg, L, idx, "nkey", "auth.nkey", &err);
  if (err) return err;
  cfg->creds_file = secret_path_field(eng, lg, L, idx, "credential", "auth.credential", &err);
  return err;
}

int herald_nats_config_from_lua(herald_nats_config *cfg, struct herald_engine *eng, herald_logger *lg,
                                lua_State *L, int idx) {
  memset(cfg, 0, sizeof *cfg);
  const char *url = herald_cfg_string(L, idx, "url", NULL);
  if (!url || !*url) {
    herald_log(lg, HLOG_ERROR, "a NATS url is needed");
    return HERALD_EINVAL;
  }
  cfg->url = herald_xstrdup(url);
  int r = 0;
  lua_getfield(L, idx, "tls");
  if (lua_istable(L, -1)) r = read_tls(cfg, eng, lg, L, lua_gettop(L));
  lua_pop(L, 1);
  lua_getfield(L, idx, "auth");
  if (!r && lua_istable(L, -1)) r = read_auth(cfg, eng, lg, L, lua_gettop(L));
  lua_pop(L, 1);
  if (r) herald_nats_config_free(cfg);
  return r;
}

void herald_nats_config_free(herald_nats_config *cfg) {
  const char *s[] = {cfg->url, cfg->name, cfg->user, cfg->password, cfg->token, cfg->nkey_seed_file,
                     cfg->creds_file, cfg->ca_pem, cfg->cert_pem, cfg->key_pem};
  for (size_t i = 0; i < sizeof s / sizeof *s; i++) free((char *)s[i]);
  memset(cfg, 0, sizeof *cfg);
}
