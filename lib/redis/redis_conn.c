/*
 * lib/redis/redis_conn.c: one Redis connection on the loop (see redis_conn.h for the flow).
 *
 * Each attempt is a `redis_link` (resolver request, TCP handle, TLS state, reply parser,
 * queue of commands waiting for replies). A link that fails is abandoned at once (the owner
 * hears on_down and a fresh link is made after the backoff) and freed only when its handles
 * have closed, so a late libuv callback always finds valid memory: it sees l->r == NULL and
 * does nothing.
 */
#include "redis_conn.h"

#include "buf.h"
#include "common.h"
#include "engine.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

enum { ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_SETUP, ST_READY };

typedef struct pending_cmd {
  herald_redis_reply_cb cb;
  void *data;
} pending_cmd;

typedef struct redis_link {
  herald_redis *r;     /* the owner while this link is its current one; NULL once abandoned */
  herald_redis *owner; /* the owner for good: told when the link is freed */
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  uv_tcp_t tcp;
  int gai_active, tcp_open, reading, stage, setup_pending;
  SSL *ssl;
  BIO *rbio, *wbio; /* network side of the TLS session: rbio in from the socket, wbio out */
  redisReader *reader;
  pending_cmd *q; /* ring of commands waiting for their reply */
  size_t qhead, qlen, qcap;
  char rbuf[65536];
  char tbuf[16384]; /* TLS plaintext */
} redis_link;

typedef struct write_req {
  uv_write_t req;
  redis_link *l;
  char data[];
} write_req;

static void link_freed(herald_redis *r);
static void link_abandon(herald_redis *r);
static void dispatch(redis_link *l);
static void start_attempt(herald_redis *r);

/* ---- configuration ---- */

static char *secret_path_of(herald_source *src, lua_State *L, int t, const char *field, int *err) {
  *err = 0;
  lua_getfield(L, t, field);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  const char *name = herald_cfg_string(L, lua_gettop(L), "name", NULL);
  const char *key = herald_cfg_string(L, lua_gettop(L), "key", NULL);
  char *p = (name && key) ? herald_secret_path(src->engine, name, key, err) : NULL;
  if (!p) {
    if (!*err) *err = HERALD_EINVAL;
    herald_log(&src->log, HLOG_ERROR, "tls.%s: secret %s/%s cannot be used", field,
               name ? name : "?", key ? key : "?");
  }
  lua_pop(L, 1);
  return p;
}

static const char *ssl_err(void) {
  static char buf[256];
  unsigned long e = ERR_get_error();
  if (!e) return "unknown TLS error";
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

/* Builds the TLS context from Argo's TLSConfig at t. Returns 0 or a negative error (logged). */
static int tls_init(herald_redis *r, lua_State *L, int t) {
  herald_source *src = r->src;
  int insecure = herald_cfg_bool(L, t, "insecureSkipVerify", 0);
  int err = 0, rc = HERALD_EINVAL;
  char *ca = secret_path_of(src, L, t, "caCertSecret", &err);
  if (err) return err;
  char *cert = secret_path_of(src, L, t, "clientCertSecret", &err);
  char *key = err ? NULL : secret_path_of(src, L, t, "clientKeySecret", &err);
  SSL_CTX *ctx = NULL;
  if (err) goto out;
  ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) goto tls_fail;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (ca) {
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
      herald_log(&src->log, HLOG_ERROR, "tls.caCertSecret: %s", ssl_err());
      goto out;
    }
  } else {
    SSL_CTX_set_default_verify_paths(ctx);
  }
  if (cert && key) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
      herald_log(&src->log, HLOG_ERROR, "tls.clientCertSecret: %s", ssl_err());
      goto out;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      herald_log(&src->log, HLOG_ERROR, "tls.clientKeySecret: %s", ssl_err());
      goto out;
    }
  }
  SSL_CTX_set_verify(ctx, insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
  r->tls_verify = !insecure;
  r->ssl_ctx = ctx;
  ctx = NULL;
  rc = 0;
  goto out;
tls_fail:
  herald_log(&src->log, HLOG_ERROR, "tls: %s", ssl_err());
out:
  if (ctx) SSL_CTX_free(ctx);
  free(ca);
  free(cert);
  free(key);
  return rc;
}

int herald_redis_init(herald_redis *r, herald_source *src, lua_State *L, int cfg_idx) {
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  r->src = src;
  /* hostAddress is host:port ([v6]:port), checked by the schema */
  const char *addr = herald_cfg_string(L, cfg_idx, "hostAddress", "");
  const char *colon = strrchr(addr, ':');
  if (!colon || colon == addr || !colon[1]) {
    herald_log(&src->log, HLOG_ERROR, "hostAddress \"%s\" is not host:port", addr);
    return HERALD_EINVAL;
  }
  const char *h = addr, *he = colon;
  if (*h == '[' && he > h + 1 && he[-1] == ']') h++, he--;
  r->host = herald_xcalloc(1, (size_t)(he - h) + 1);
  memcpy(r->host, h, (size_t)(he - h));
  r->port = herald_xstrdup(colon + 1);
  r->db = (int)herald_cfg_number(L, cfg_idx, "db", 0);
  const char *user = herald_cfg_string(L, cfg_idx, "username", NULL);
  if (user && *user) r->username = herald_xstrdup(user);
  int err = 0;
  r->password = herald_secret_field(src->engine, &src->log, L, cfg_idx, "password", "password", &err);
  if (err) return err;
  lua_getfield(L, cfg_idx, "tls");
  if (lua_istable(L, -1)) {
    int rc = tls_init(r, L, lua_gettop(L));
    if (rc < 0) {
      lua_pop(L, 1);
      return rc;
    }
  }
  lua_pop(L, 1);
  /* Argo's Redis types have no connectionBackoff: the kit's defaults (1 s doubling to 60 s) */
  herald_backoff_init(&r->backoff, NULL, 0, NULL);
  return 0;
}

char *herald_redis_metadata_json(lua_State *L, int cfg_idx) {
  lua_getfield(L, cfg_idx, "metadata");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  int t = lua_gettop(L);
  size_t n = 0, cap = 8;
  const char **keys = herald_xcalloc(cap, sizeof *keys);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
      if (n == cap) {
        cap *= 2;
        keys = realloc(keys, cap * sizeof *keys);
        if (!keys) abort();
      }
      keys[n++] = lua_tostring(L, -2); /* anchored in the table, which stays on the stack */
    }
    lua_pop(L, 1);
  }
  char *out = NULL;
  if (n) {
    /* Go writes a map's keys in sorted (byte) order */
    for (size_t i = 1; i < n; i++)
      for (size_t j = i; j > 0 && strcmp(keys[j - 1], keys[j]) > 0; j--) {
        const char *k = keys[j];
        keys[j] = keys[j - 1];
        keys[j - 1] = k;
      }
    herald_buf b = HERALD_BUF_INIT;
    herald_buf_putc(&b, '{');
    for (size_t i = 0; i < n; i++) {
      size_t vl;
      lua_getfield(L, t, keys[i]);
      const char *v = lua_tolstring(L, -1, &vl);
      if (i) herald_buf_putc(&b, ',');
      herald_buf_json_string(&b, keys[i], strlen(keys[i]));
      herald_buf_putc(&b, ':');
      herald_buf_json_string(&b, v, vl);
      lua_pop(L, 1);
    }
    herald_buf_putc(&b, '}');
    out = herald_xstrdup(herald_buf_cstr(&b));
    herald_buf_free(&b);
  }
  free(keys);
  lua_pop(L, 1);
  return out;
}

/* ---- writing ---- */

static void on_written(uv_write_t *req, int status) {
  write_req *w = req->data;
  redis_link *l = w->l;
  free(w);
  if (status < 0 && l->r) {
    char why[160];
    snprintf(why, sizeof why, "write: %s", uv_strerror(status));
    herald_redis_fail(l->r, why);
  }
}

static void raw_write(redis_link *l, const char *p, size_t n) {
  uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
  int w = uv_try_write((uv_stream_t *)&l->tcp, &b, 1);
  if (w >= 0 && (size_t)w == n) return;
  if (w < 0) w = 0; /* EAGAIN, or an error uv_write reports again */
  size_t rest = n - (size_t)w;
  write_req *wr = malloc(sizeof *wr + rest);
  if (!wr) abort();
  wr->l = l;
  wr->req.data = wr;
  memcpy(wr->data, p + w, rest);
  b = uv_buf_init(wr->data, (unsigned)rest);
  int rc = uv_write(&wr->req, (uv_stream_t *)&l->tcp, &b, 1, on_written);
  if (rc < 0) {
    free(wr);
    if (l->r) herald_redis_fail(l->r, uv_strerror(rc));
  }
}

/* Sends what the TLS session has written to its network BIO. */
static void flush_tls(redis_link *l) {
  size_t n;
  while ((n = BIO_ctrl_pending(l->wbio)) > 0) {
    write_req *wr = malloc(sizeof *wr + n);
    if (!wr) abort();
    int got = BIO_read(l->wbio, wr->data, (int)n);
    if (got <= 0) {
      free(wr);
      return;
    }
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)got);
    int w = uv_try_write((uv_stream_t *)&l->tcp, &b, 1);
    if (w == got) {
      free(wr);
      continue;
    }
    if (w < 0) w = 0;
    memmove(wr->data, wr->data + w, (size_t)(got - w));
    b = uv_buf_init(wr->data, (unsigned)(got - w));
    wr->l = l;
    wr->req.data = wr;
    if (uv_write(&wr->req, (uv_stream_t *)&l->tcp, &b, 1, on_written) < 0) {
      free(wr);
      if (l->r) herald_redis_fail(l->r, "write failed");
      return;
    }
  }
}

static void link_write(redis_link *l, const char *p, size_t n) {
  if (!l->ssl) {
    raw_write(l, p, n);
    return;
  }
  ERR_clear_error(); /* SSL_get_error reads the thread's queue: no stale entry of another link */
  if (SSL_write(l->ssl, p, (int)n) <= 0) {
    if (l->r) herald_redis_fail(l->r, ssl_err());
    return;
  }
  flush_tls(l);
}

static void link_send(redis_link *l, int argc, const char **argv, const size_t *argvlen,
                      herald_redis_reply_cb cb, void *data, int waits) {
  char *cmd = NULL;
  int len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
  if (len < 0 || !cmd) abort(); /* out of memory */
  if (!waits) {
    link_write(l, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return;
  }
  if (l->qlen == l->qcap) {
    size_t ncap = l->qcap ? l->qcap * 2 : 16;
    pending_cmd *nq = herald_xcalloc(ncap, sizeof *nq);
    for (size_t i = 0; i < l->qlen; i++) nq[i] = l->q[(l->qhead + i) % l->qcap];
    free(l->q);
    l->q = nq;
    l->qhead = 0;
    l->qcap = ncap;
  }
  l->q[(l->qhead + l->qlen) % l->qcap] = (pending_cmd){cb, data};
  l->qlen++;
  link_write(l, cmd, (size_t)len);
  redisFreeCommand(cmd);
}

int herald_redis_command(herald_redis *r, int argc, const char **argv, const size_t *argvlen,
                         herald_redis_reply_cb cb, void *data) {
  if (!r->ready || !r->link || r->closing) return HERALD_ECLOSED;
  link_send(r->link, argc, argv, argvlen, cb, data, 1);
  return 0;
}

int herald_redis_subscribe(herald_redis *r, int argc, const char **argv, const size_t *argvlen) {
  if (!r->ready || !r->link || r->closing) return HERALD_ECLOSED;
  link_send(r->link, argc, argv, argvlen, NULL, NULL, 0);
  return 0;
}

/* ---- the connection's life ---- */

static void link_maybe_free(redis_link *l) {
  if (l->gai_active || l->tcp_open) return;
  herald_redis *owner = l->owner;
  if (l->ssl) SSL_free(l->ssl); /* frees both BIOs */
  if (l->reader) redisReaderFree(l->reader);
  free(l->q);
  free(l);
  link_freed(owner);
}

static void on_tcp_closed(uv_handle_t *h) {
  redis_link *l = h->data;
  l->tcp_open = 0;
  link_maybe_free(l);
}

/* Detaches the current link from r: the callbacks of its pending commands get NULL, its
 * handles close, and it is freed later. */
static void link_abandon(herald_redis *r) {
  redis_link *l = r->link;
  if (!l) return;
  r->link = NULL;
  r->ready = 0;
  l->r = NULL;
  while (l->qlen) {
    pending_cmd c = l->q[l->qhead];
    l->qhead = (l->qhead + 1) % l->qcap;
    l->qlen--;
    if (c.cb) c.cb(r, NULL, c.data);
  }
  if (l->gai_active) uv_cancel((uv_req_t *)&l->gai); /* on_resolved still runs, and frees */
  if (l->tcp_open && !uv_is_closing((uv_handle_t *)&l->tcp))
    uv_close((uv_handle_t *)&l->tcp, on_tcp_closed);
  link_maybe_free(l);
}

static void on_retry(uv_timer_t *t) {
  herald_redis *r = t->data;
  if (!r->closing) start_attempt(r);
}

void herald_redis_fail(herald_redis *r, const char *reason) {
  if (r->closing) return;
  link_abandon(r);
  herald_source_set_connected(r->src, 0, reason);
  if (r->on_down) r->on_down(r, reason);
  if (!r->closing) uv_timer_start(&r->retry, on_retry, herald_backoff_next(&r->backoff), 0);
}

static void become_ready(redis_link *l) {
  herald_redis *r = l->r;
  l->stage = ST_READY;
  r->ready = 1;
  herald_backoff_reset(&r->backoff);
  char where[300];
  snprintf(where, sizeof where, "%s:%s%s", r->host, r->port, l->ssl ? " (TLS)" : "");
  herald_source_set_connected(r->src, 1, where);
  if (r->on_ready) r->on_ready(r);
}

static void on_setup_reply(herald_redis *r, redisReply *reply, void *data) {
  const char *what = data;
  if (!reply) return; /* the link is gone; its failure was reported */
  if (reply->type == REDIS_REPLY_ERROR) {
    char why[400];
    snprintf(why, sizeof why, "%s: %s", what, reply->str);
    freeReplyObject(reply);
    herald_redis_fail(r, why);
    return;
  }
  freeReplyObject(reply);
  redis_link *l = r->link;
  if (l && --l->setup_pending == 0) become_ready(l);
}

/* After connect (and TLS): AUTH and SELECT as go-redis does, then ready. */
static void start_setup(redis_link *l) {
  herald_redis *r = l->r;
  l->stage = ST_SETUP;
  if (r->password && *r->password) {
    l->setup_pending++;
    if (r->username) {
      const char *argv[] = {"AUTH", r->username, r->password};
      size_t lens[] = {4, strlen(r->username), strlen(r->password)};
      link_send(l, 3, argv, lens, on_setup_reply, "AUTH", 1);
    } else {
      const char *argv[] = {"AUTH", r->password};
      size_t lens[] = {4, strlen(r->password)};
      link_send(l, 2, argv, lens, on_setup_reply, "AUTH", 1);
    }
  }
  if (r->db) {
    char dbs[16];
    snprintf(dbs, sizeof dbs, "%d", r->db);
    const char *argv[] = {"SELECT", dbs};
    size_t lens[] = {6, strlen(dbs)};
    l->setup_pending++;
    link_send(l, 2, argv, lens, on_setup_reply, "SELECT", 1);
  }
  if (l->setup_pending == 0) become_ready(l);
}

static void dispatch(redis_link *l) {
  while (l->r && !l->r->paused) {
    herald_redis *r = l->r;
    void *rep = NULL;
    if (redisReaderGetReply(l->reader, &rep) != REDIS_OK) {
      char why[200];
      snprintf(why, sizeof why, "protocol error: %s", l->reader->errstr);
      herald_redis_fail(r, why);
      return;
    }
    if (!rep) return;
    if (l->qlen) {
      pending_cmd c = l->q[l->qhead];
      l->qhead = (l->qhead + 1) % l->qcap;
      l->qlen--;
      if (c.cb) c.cb(r, rep, c.data);
      else freeReplyObject(rep);
    } else if (r->on_push) {
      r->on_push(r, rep);
    } else {
      freeReplyObject(rep);
    }
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  redis_link *l = h->data;
  *buf = uv_buf_init(l->rbuf, sizeof l->rbuf);
}

static void tls_failed(redis_link *l, const char *stage) {
  char why[512];
  long v = SSL_get_verify_result(l->ssl);
  if (v != X509_V_OK && l->r->tls_verify)
    snprintf(why, sizeof why, "%s: certificate verify failed: %s", stage,
             X509_verify_cert_error_string(v));
  else
    snprintf(why, sizeof why, "%s: %s", stage, ssl_err());
  ERR_clear_error();
  herald_redis_fail(l->r, why);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  redis_link *l = s->data;
  if (!l->r || nread == 0) return;
  if (nread < 0) {
    char why[160];
    snprintf(why, sizeof why, "%s", nread == UV_EOF ? "the server closed the connection"
                                                    : uv_strerror((int)nread));
    herald_redis_fail(l->r, why);
    return;
  }
  if (!l->ssl) {
    redisReaderFeed(l->reader, buf->base, (size_t)nread);
  } else {
    BIO_write(l->rbio, buf->base, (int)nread);
    if (l->stage == ST_HANDSHAKE) {
      ERR_clear_error();
      int rc = SSL_do_handshake(l->ssl);
      flush_tls(l);
      if (!l->r) return;
      if (rc != 1) {
        if (SSL_get_error(l->ssl, rc) == SSL_ERROR_WANT_READ) return;
        tls_failed(l, "TLS handshake");
        return;
      }
      start_setup(l);
      if (!l->r) return;
    }
    for (;;) {
      ERR_clear_error();
      int n = SSL_read(l->ssl, l->tbuf, sizeof l->tbuf);
      if (n > 0) {
        redisReaderFeed(l->reader, l->tbuf, (size_t)n);
        continue;
      }
      int e = SSL_get_error(l->ssl, n);
      if (e == SSL_ERROR_WANT_READ) break;
      if (e == SSL_ERROR_ZERO_RETURN) herald_redis_fail(l->r, "the server closed the TLS session");
      else tls_failed(l, "TLS");
      return;
    }
    flush_tls(l);
    if (!l->r) return;
  }
  dispatch(l);
}

static void start_reading(redis_link *l) {
  if (l->reading || !l->tcp_open || (l->r && l->r->paused)) return;
  if (uv_read_start((uv_stream_t *)&l->tcp, on_alloc, on_read) == 0) l->reading = 1;
}

static void on_connected(uv_connect_t *req, int status) {
  redis_link *l = req->data;
  if (!l->r) return;
  herald_redis *r = l->r;
  if (status < 0) {
    char why[300];
    snprintf(why, sizeof why, "connect to %s:%s: %s", r->host, r->port, uv_strerror(status));
    herald_redis_fail(r, why);
    return;
  }
  uv_tcp_nodelay(&l->tcp, 1);
  start_reading(l);
  if (!r->ssl_ctx) {
    start_setup(l);
    return;
  }
  l->stage = ST_HANDSHAKE;
  l->ssl = SSL_new(r->ssl_ctx);
  l->rbio = BIO_new(BIO_s_mem());
  l->wbio = BIO_new(BIO_s_mem());
  if (!l->ssl || !l->rbio || !l->wbio) abort();
  SSL_set_bio(l->ssl, l->rbio, l->wbio);
  /* name checks as Go's crypto/tls does for the host of hostAddress: SNI and the certificate's
   * names for a host name, its IP SANs for an address */
  unsigned char ipbuf[16];
  int is_ip = inet_pton(AF_INET, r->host, ipbuf) == 1 || inet_pton(AF_INET6, r->host, ipbuf) == 1;
  if (!is_ip) SSL_set_tlsext_host_name(l->ssl, r->host);
  if (r->tls_verify) {
    if (is_ip) X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(l->ssl), r->host);
    else SSL_set1_host(l->ssl, r->host);
  }
  SSL_set_connect_state(l->ssl);
  ERR_clear_error();
  int rc = SSL_do_handshake(l->ssl);
  if (rc != 1 && SSL_get_error(l->ssl, rc) != SSL_ERROR_WANT_READ) {
    tls_failed(l, "TLS handshake");
    return;
  }
  flush_tls(l);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  redis_link *l = req->data;
  l->gai_active = 0;
  herald_redis *r = l->r;
  if (!r) {
    if (res) uv_freeaddrinfo(res);
    link_maybe_free(l);
    return;
  }
  if (status < 0 || !res) {
    char why[300];
    snprintf(why, sizeof why, "resolve %s: %s", r->host, uv_strerror(status));
    if (res) uv_freeaddrinfo(res);
    herald_redis_fail(r, why);
    return;
  }
  l->stage = ST_CONNECTING;
  uv_tcp_init(r->src->engine->loop, &l->tcp);
  l->tcp.data = l;
  l->tcp_open = 1;
  l->creq.data = l;
  int rc = uv_tcp_connect(&l->creq, &l->tcp, res->ai_addr, on_connected);
  uv_freeaddrinfo(res);
  if (rc < 0) {
    char why[300];
    snprintf(why, sizeof why, "connect to %s:%s: %s", r->host, r->port, uv_strerror(rc));
    herald_redis_fail(r, why);
  }
}

static void start_attempt(herald_redis *r) {
  redis_link *l = herald_xcalloc(1, sizeof *l);
  l->r = r;
  l->owner = r;
  l->reader = redisReaderCreate();
  if (!l->reader) abort();
  r->link = l;
  r->links_alive++;
  l->stage = ST_RESOLVING;
  l->gai.data = l;
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  l->gai_active = 1;
  int rc = uv_getaddrinfo(r->src->engine->loop, &l->gai, on_resolved, r->host, r->port, &hints);
  if (rc < 0) {
    l->gai_active = 0;
    char why[300];
    snprintf(why, sizeof why, "resolve %s: %s", r->host, uv_strerror(rc));
    herald_redis_fail(r, why);
  }
}

int herald_redis_start(herald_redis *r) {
  uv_timer_init(r->src->engine->loop, &r->retry);
  r->retry.data = r;
  r->started = 1;
  start_attempt(r);
  return 0;
}

void herald_redis_pause(herald_redis *r) {
  r->paused = 1;
  redis_link *l = r->link;
  if (l && l->reading) {
    uv_read_stop((uv_stream_t *)&l->tcp);
    l->reading = 0;
  }
}

void herald_redis_resume(herald_redis *r) {
  r->paused = 0;
  redis_link *l = r->link;
  if (!l || l->stage < ST_HANDSHAKE) return;
  dispatch(l);
  if (r->link == l && !r->paused) start_reading(l);
}

static void maybe_closed(herald_redis *r) {
  if (!r->closing || !r->timer_closed || r->links_alive || !r->close_cb) return;
  void (*cb)(herald_redis *) = r->close_cb;
  r->close_cb = NULL;
  if (r->ssl_ctx) SSL_CTX_free(r->ssl_ctx);
  r->ssl_ctx = NULL;
  free(r->host);
  free(r->port);
  free(r->username);
  if (r->password) {
    memset(r->password, 0, strlen(r->password));
    free(r->password);
  }
  r->host = r->port = r->username = r->password = NULL;
  cb(r);
}

/* a link of r's is freed: close waits for every one */
static void link_freed(herald_redis *r) {
  r->links_alive--;
  maybe_closed(r);
}

static void on_timer_closed(uv_handle_t *h) {
  herald_redis *r = h->data;
  r->timer_closed = 1;
  maybe_closed(r);
}

void herald_redis_close(herald_redis *r, void (*cb)(herald_redis *r)) {
  if (r->closing) return;
  r->closing = 1;
  r->close_cb = cb;
  link_abandon(r);
  if (r->started) {
    uv_timer_stop(&r->retry);
    uv_close((uv_handle_t *)&r->retry, on_timer_closed);
  } else {
    r->timer_closed = 1;
  }
  maybe_closed(r);
}
