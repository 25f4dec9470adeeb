/*
 * http_server.c: the HTTP/1.1 server behind webhook routes and /metrics (see http_server.h).
 *
 * One connection, one state machine, one timer:
 *
 *   accept --> IDLE --first byte--> HEADERS --headers complete--> BODY --message complete-->
 *      ^        (keep-alive)          | route, method, auth,          | bounded by max_body
 *      |                              | Content-Length checks         v
 *      |                              +-- 4xx (body discarded) --> HANDLER: parser paused,
 *      |                                                           reading stopped, the
 *      |                                                           handler owns req
 *      +---- WRITING <-- herald_http_respond() (now or later) <-----+
 *              | Connection: close, or a framing/limit error
 *              v
 *            LINGER: FIN sent, the rest of the input is read and dropped for a short while
 *                    (so the peer gets our response, not a RST), then close.
 *
 * Bytes are read into one buffer per server (the loop is single-threaded) and fed straight
 * to http_parser, whose callbacks copy the URL and headers into the connection's header
 * buffer and the body into its body buffer; both are reused from request to request. When a
 * request completes the parser is paused and whatever follows (pipelined requests) is kept
 * in the connection's `in` buffer, parsed once the response is written. So responses go out
 * in request order and a slow handler applies backpressure to its client.
 *
 * Timeouts use one uv_timer per connection with a lazily moved deadline: pushing the
 * deadline later is a store, and the timer re-arms itself when it fires early. Each phase of
 * a request has a total deadline (req_deadline) that no amount of trickled input moves: the
 * header block, then the body (whose idle deadline, pushed on each read, never passes it).
 * A deadline missed with bytes of a request in hand is answered 408 (RFC 9110 15.5.9); an
 * idle connection is closed silently, as RFC 9112 9.5 suggests.
 *
 * http_parser 2.9 lets sloppy chunk framing through (any two bytes where the CRLF after chunk
 * data belongs, control bytes and bare LFs in chunk extensions, unbounded extensions and
 * leading zeros), so a chunked body is also scanned here by a strict framing check that runs
 * one step ahead of the parser over the same bytes (chunk_scan); both must agree on where the
 * message ends. Trailer fields are counted against the header limit and dropped.
 *
 * Connections are counted per client address (an IPv4 address, or the /64 of an IPv6 one) in
 * a small hash table, so one client can hold only its share of the connection cap.
 */
#include "http_server.h"

#include "buf.h"
#include "common.h"
#include "log.h"

#include <http_parser.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_MAX_BODY (1024u * 1024u)
#define READ_BUF_SIZE (64u * 1024u)
#define LINGER_MS 1000u
#define POOL_MAX 64u        /* closed connections kept for reuse per server */
#define MAX_PENDING_INPUT (64 * 1024) /* pipelined input held while a response is pending */
#define KEEP_BODY_CAP 65536 /* larger body buffers are released after their request */
#define MIN_BODY_RATE (64u * 1024u) /* bytes/s a large declared body is given time for */
#define MAX_CHUNK_EXT 4096u  /* chunk-extension bytes per request (nobody sends any) */
#define MAX_CHUNK_DIGITS 16u /* hex digits of a chunk size, leading zeros included */

typedef struct route {
  struct route *next; /* hash chain, or the dead list once removed */
  char *path;
  size_t path_len;
  uint32_t hash;
  char *method; /* NULL = any */
  size_t max_body;
  char *token; /* bearer token or NULL */
  size_t token_len;
  herald_http_handler handler;
  void *data;
  int removed;
} route;

typedef enum {
  C_IDLE,    /* waiting for the first byte of a request (keep-alive idle) */
  C_HEADERS, /* reading the header block */
  C_BODY,    /* reading the body */
  C_HANDLER, /* the handler owns the request; nothing is read */
  C_WRITING, /* the response is being written */
  C_LINGER,  /* response sent, FIN sent, draining input before closing */
} conn_state;

typedef struct hdr_off {
  uint32_t name_off, name_len, value_off, value_len;
} hdr_off;

/* States of the strict chunk-framing check (RFC 9112 7.1). */
typedef enum {
  CK_OFF,         /* not a chunked body, or its end has been seen */
  CK_SKIP_LF,     /* the header block's last LF, which the parser paused on and re-reads */
  CK_SIZE_FIRST,  /* first hex digit of a chunk size */
  CK_SIZE,        /* more hex digits, ';' (extension), BWS or CR */
  CK_BWS,         /* whitespace after the size: only ';' may follow */
  CK_EXT,         /* chunk extensions, up to CR */
  CK_SIZE_LF,     /* LF ending the chunk-size line */
  CK_DATA,        /* chunk data */
  CK_DATA_CR,     /* CR after chunk data */
  CK_DATA_LF,     /* LF after chunk data */
  CK_TRAILER_START, /* start of a trailer line, or CR of the empty line ending the message */
  CK_TRAILER,     /* inside a trailer line */
  CK_TRAILER_LF,  /* LF ending a trailer line */
  CK_END_LF,      /* LF of the empty line ending the message */
} chunk_state;

typedef struct chunk_check {
  chunk_state st;
  unsigned digits;   /* hex digits of the current size */
  uint64_t left;     /* chunk-data bytes still to come (the size while it is being read) */
  size_t ext_bytes;  /* chunk-extension bytes in this request */
  size_t trailer_bytes;
} chunk_check;

/* Connections held by one client address. */
typedef struct client {
  struct client *next;
  uint8_t key[16]; /* IPv4 as ::ffff:a.b.c.d; IPv6 as its /64 prefix, the rest zero */
  uint64_t hash;
  size_t n;
} client;

typedef struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t wr;
  uv_shutdown_t shut;
  http_parser parser;
  herald_http_server *srv;
  struct conn *prev, *next;
  conn_state state;

  /* the current request */
  herald_http_req req;
  route *route;
  int reject;         /* 401/404/405 decided at headers-complete; body is discarded */
  int fail;           /* status to answer before closing (set inside parser callbacks) */
  int health;
  int keep_alive;
  int last_was_value; /* header callback bookkeeping */
  int hdrs_done;      /* headers complete: header callbacks now see trailer fields */
  int hdr_pause;      /* the parser paused at headers complete to start the chunk check */
  chunk_check ck;
  size_t hdr_bytes;   /* size of the header block so far */
  size_t discarded;   /* body bytes dropped for a rejected request */
  size_t url_len;
  herald_buf hb;      /* url \0 name \0 value \0 ... */
  hdr_off *offs;
  herald_http_header *hdrs;
  size_t nhdrs, hdrs_cap;
  char *body;
  size_t body_len, body_cap;

  /* unparsed input kept while a response is pending */
  char *in;
  size_t in_len, in_cap;
  herald_buf out;

  uint64_t deadline; /* uv_now() ms; 0 = none */
  uint64_t req_deadline; /* total deadline of the current header block or body (uv_now ms) */
  unsigned long nreq;    /* requests begun on this connection */
  client *client;        /* this connection's entry in srv->clients, or NULL */
  uint64_t timer_at; /* when the timer is armed to fire; 0 = not armed */
  int handles_open;
  int handler_pending; /* the handler has req and has not responded */
  int in_feed;
  int reading;
  int closing;
} conn;

struct herald_http_server {
  uv_tcp_t listener;
  uv_loop_t *loop;
  herald_http_limits lim;
  char *name;
  herald_logger log;
  route **buckets;
  size_t nbuckets, nroutes;
  route *dead_routes;
  conn *conns;
  size_t nconns;
  conn *pool;
  size_t npool;
  client **clients; /* per-address connection counts: hash chains */
  size_t nclient_buckets, nclients;
  uint64_t client_seed;
  int port;
  int closing;
  int close_called;
  int listener_open;
  void (*close_cb)(void *data);
  void *close_data;
  char rbuf[READ_BUF_SIZE];
};

const herald_http_limits herald_http_default_limits = {
    .max_header_bytes = 16384,
    .max_headers = 100,
    .header_timeout_ms = 10000,
    .body_timeout_ms = 10000,
    .keepalive_ms = 60000,
    .max_connections = 10000,
    .body_deadline_ms = 60000,
    .max_client_connections = 0, /* max_connections / 4 */
};

static http_parser_settings parser_settings;
static int parser_settings_ready;

static void conn_close(conn *c);
static void conn_feed(conn *c, const char *data, size_t len);
static void conn_send(conn *c, int status, const char *ctype, const char *headers,
                      const char *body, size_t body_len);
static void server_maybe_closed(herald_http_server *srv);

/* ---- routes ---- */

static uint32_t hash_path(const char *s, size_t n) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 16777619u;
  }
  return h;
}

static void routes_grow(herald_http_server *srv) {
  size_t nb = srv->nbuckets ? srv->nbuckets * 2 : 16;
  route **b = herald_xcalloc(nb, sizeof *b);
  for (size_t i = 0; i < srv->nbuckets; i++) {
    route *r = srv->buckets[i];
    while (r) {
      route *next = r->next;
      size_t k = r->hash & (nb - 1);
      r->next = b[k];
      b[k] = r;
      r = next;
    }
  }
  free(srv->buckets);
  srv->buckets = b;
  srv->nbuckets = nb;
}

/* The first route for path, or NULL; *path_known is set when some route has this path. */
static route *routes_find(herald_http_server *srv, const char *path, size_t n,
                          const char *method, int *path_known) {
  *path_known = 0;
  if (!srv->nbuckets) return NULL;
  uint32_t h = hash_path(path, n);
  for (route *r = srv->buckets[h & (srv->nbuckets - 1)]; r; r = r->next) {
    if (r->hash != h || r->path_len != n || memcmp(r->path, path, n) != 0) continue;
    *path_known = 1;
    if (!r->method || strcmp(r->method, method) == 0) return r;
  }
  return NULL;
}

static int same_method(const char *a, const char *b) {
  if (!a || !b) return a == b;
  return strcmp(a, b) == 0;
}

int herald_http_server_add_route(herald_http_server *srv, const herald_http_route *spec) {
  if (!spec || !spec->path || spec->path[0] != '/' || !spec->handler) return HERALD_EINVAL;
  size_t n = strlen(spec->path);
  uint32_t h = hash_path(spec->path, n);
  if (srv->nbuckets) {
    for (route *r = srv->buckets[h & (srv->nbuckets - 1)]; r; r = r->next)
      if (r->hash == h && r->path_len == n && memcmp(r->path, spec->path, n) == 0 &&
          (same_method(r->method, spec->method) || !r->method || !spec->method))
        return HERALD_EINVAL;
  }
  if (srv->nroutes + 1 > srv->nbuckets) routes_grow(srv);
  route *r = herald_xcalloc(1, sizeof *r);
  r->path = herald_xstrdup(spec->path);
  r->path_len = n;
  r->hash = h;
  r->method = spec->method ? herald_xstrdup(spec->method) : NULL;
  r->max_body = spec->max_body ? spec->max_body : DEFAULT_MAX_BODY;
  if (spec->bearer_token) {
    r->token = herald_xstrdup(spec->bearer_token);
    r->token_len = strlen(r->token);
  }
  r->handler = spec->handler;
  r->data = spec->data;
  size_t k = h & (srv->nbuckets - 1);
  r->next = srv->buckets[k];
  srv->buckets[k] = r;
  srv->nroutes++;
  return 0;
}

/* Not yet in http_server.h: removes the route for path+method (method NULL = the any-method
 * route). A request already matched to it and still being read gets 404; requests already
 * handed to the handler are unaffected. The route's memory lives until the server closes, so
 * no connection is left pointing at freed memory. Returns 0 or HERALD_ENOTFOUND. */
int herald_http_server_remove_route(herald_http_server *srv, const char *path,
                                    const char *method);
int herald_http_server_remove_route(herald_http_server *srv, const char *path,
                                    const char *method) {
  if (!srv->nbuckets || !path) return HERALD_ENOTFOUND;
  size_t n = strlen(path);
  uint32_t h = hash_path(path, n);
  for (route **pp = &srv->buckets[h & (srv->nbuckets - 1)]; *pp; pp = &(*pp)->next) {
    route *r = *pp;
    if (r->hash == h && r->path_len == n && memcmp(r->path, path, n) == 0 &&
        same_method(r->method, method)) {
      *pp = r->next;
      r->removed = 1;
      r->next = srv->dead_routes;
      srv->dead_routes = r;
      srv->nroutes--;
      return 0;
    }
  }
  return HERALD_ENOTFOUND;
}

static void route_free(route *r) {
  free(r->path);
  free(r->method);
  if (r->token) {
    memset(r->token, 0, r->token_len);
    free(r->token);
  }
  free(r);
}

/* Constant time in the length of the configured token, whatever the candidate. */
static int token_equal(const route *r, const char *cand, size_t cand_len) {
  unsigned diff = (unsigned)(cand_len != r->token_len);
  for (size_t i = 0; i < r->token_len; i++) {
    unsigned char c = i < cand_len ? (unsigned char)cand[i] : 0;
    diff |= (unsigned)(c ^ (unsigned char)r->token[i]);
  }
  return diff == 0;
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t);

/* Sets the deadline to the absolute time d (uv_now() ms). */
static void conn_set_deadline_at(conn *c, uint64_t d) {
  uint64_t now = uv_now(c->srv->loop);
  c->deadline = d;
  if (c->timer_at == 0 || c->timer_at > d) {
    uv_timer_start(&c->timer, on_timer, d > now ? d - now : 0, 0);
    c->timer_at = d;
  }
}

static void conn_set_deadline(conn *c, uint64_t ms) {
  conn_set_deadline_at(c, uv_now(c->srv->loop) + ms);
}

/* While a body is read: the idle deadline, but never past the body's total deadline. */
static void conn_body_deadline(conn *c) {
  uint64_t d = uv_now(c->srv->loop) + c->srv->lim.body_timeout_ms;
  conn_set_deadline_at(c, d < c->req_deadline ? d : c->req_deadline);
}

static void conn_fail(conn *c, int status);

static void conn_clear_deadline(conn *c) {
  c->deadline = 0; /* the armed timer, if any, fires and finds nothing to do */
}

static void on_timer(uv_timer_t *t) {
  conn *c = t->data;
  c->timer_at = 0;
  if (c->closing || c->deadline == 0) return;
  uint64_t now = uv_now(c->srv->loop);
  if (now < c->deadline) {
    uv_timer_start(&c->timer, on_timer, c->deadline - now, 0);
    c->timer_at = c->deadline;
    return;
  }
  if (c->state == C_HEADERS || c->state == C_BODY) {
    /* Part of a request came in and the rest did not in time: say so (408), then close. */
    herald_log_limited(&c->srv->log, HLOG_DEBUG, "request timeout: %s",
                       c->state == C_HEADERS ? "header block" : "body");
    conn_fail(c, 408);
    return;
  }
  conn_close(c); /* idle (no bytes of a request), or a response or linger that took too long */
}

/* ---- connections per client address ---- */

/* The key of the peer's address (see client.key); returns 0, or -1 if it has none. */
static int client_key(uv_tcp_t *tcp, uint8_t key[16]) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0) return -1;
  memset(key, 0, 16);
  if (ss.ss_family == AF_INET) {
    key[10] = key[11] = 0xff;
    memcpy(key + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    return 0;
  }
  if (ss.ss_family == AF_INET6) {
    const uint8_t *a = ((struct sockaddr_in6 *)&ss)->sin6_addr.s6_addr;
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, v4mapped, 12) == 0) memcpy(key, a, 16);
    else memcpy(key, a, 8); /* one host usually owns a whole /64 */
    return 0;
  }
  return -1;
}

/* Keyed with a per-server seed so that colliding addresses cannot be picked in advance. */
static uint64_t client_hash(const herald_http_server *srv, const uint8_t key[16]) {
  uint64_t a, b;
  memcpy(&a, key, 8);
  memcpy(&b, key + 8, 8);
  uint64_t h = srv->client_seed ^ a;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h ^= b;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

static void clients_grow(herald_http_server *srv) {
  size_t nb = srv->nclient_buckets ? srv->nclient_buckets * 2 : 64;
  client **b = herald_xcalloc(nb, sizeof *b);
  for (size_t i = 0; i < srv->nclient_buckets; i++) {
    client *e = srv->clients[i];
    while (e) {
      client *next = e->next;
      size_t k = e->hash & (nb - 1);
      e->next = b[k];
      b[k] = e;
      e = next;
    }
  }
  free(srv->clients);
  srv->clients = b;
  srv->nclient_buckets = nb;
}

/* The entry for key, created (with n = 0) if missing. */
static client *client_get(herald_http_server *srv, const uint8_t key[16]) {
  uint64_t h = client_hash(srv, key);
  if (srv->nclient_buckets) {
    for (client *e = srv->clients[h & (srv->nclient_buckets - 1)]; e; e = e->next)
      if (e->hash == h && memcmp(e->key, key, 16) == 0) return e;
  }
  if (srv->nclients + 1 > srv->nclient_buckets) clients_grow(srv);
  client *e = herald_xcalloc(1, sizeof *e);
  memcpy(e->key, key, 16);
  e->hash = h;
  size_t k = h & (srv->nclient_buckets - 1);
  e->next = srv->clients[k];
  srv->clients[k] = e;
  srv->nclients++;
  return e;
}

/* One connection of e's address is gone; the entry goes with the last one. */
static void client_release(herald_http_server *srv, client *e) {
  if (--e->n > 0) return;
  for (client **pp = &srv->clients[e->hash & (srv->nclient_buckets - 1)]; *pp; pp = &(*pp)->next) {
    if (*pp == e) {
      *pp = e->next;
      srv->nclients--;
      free(e);
      return;
    }
  }
}

static void client_describe(const uint8_t key[16], char *out, size_t n) {
  static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (memcmp(key, v4mapped, 12) == 0) {
    uv_inet_ntop(AF_INET, key + 12, out, n);
  } else {
    uv_inet_ntop(AF_INET6, key, out, n);
    size_t l = strlen(out);
    if (l + 4 <= n) memcpy(out + l, "/64", 4);
  }
}

/* ---- connection lifetime ---- */

/* Frees a connection and its buffers (conn_free pools them instead while it can). */
static void conn_destroy(conn *c) {
  herald_buf_free(&c->hb);
  herald_buf_free(&c->out);
  free(c->offs);
  free(c->hdrs);
  free(c->body);
  free(c->in);
  free(c);
}

static void conn_free(conn *c) {
  herald_http_server *srv = c->srv;
  if (c->client) {
    client_release(srv, c->client);
    c->client = NULL;
  }
  if (c->prev) c->prev->next = c->next;
  else srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->nconns--;
  if (!srv->closing && srv->npool < POOL_MAX) {
    /* keep the buffers: the next connection reuses them */
    c->next = srv->pool;
    srv->pool = c;
    srv->npool++;
  } else {
    conn_destroy(c);
  }
  server_maybe_closed(srv);
}

static void conn_maybe_free(conn *c) {
  if (c->closing && c->handles_open == 0 && !c->handler_pending) conn_free(c);
}

static void on_handle_closed(uv_handle_t *h) {
  conn *c = h->data;
  c->handles_open--;
  conn_maybe_free(c);
}

static void conn_close(conn *c) {
  if (c->closing) return;
  c->closing = 1;
  c->reading = 0;
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn *c = h->data;
  buf->base = c->srv->rbuf;
  buf->len = READ_BUF_SIZE;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_read_start(conn *c) {
  if (c->reading || c->closing) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
  else conn_close(c);
}

static void conn_read_stop(conn *c) {
  if (!c->reading) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn *c = req->data;
  if (status < 0) conn_close(c);
}

/* After a response that ends the connection: send FIN, drop whatever the peer still sends
 * for a short while, then close (closing with unread input would reset the connection and
 * the peer could lose our response). */
static void conn_linger(conn *c) {
  if (c->closing) return;
  c->state = C_LINGER;
  c->shut.data = c;
  if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  conn_read_start(c);
  uint64_t ms = c->srv->lim.body_timeout_ms < LINGER_MS ? c->srv->lim.body_timeout_ms : LINGER_MS;
  conn_set_deadline(c, ms ? ms : 1);
}

static void save_leftover(conn *c, const char *data, size_t len) {
  if (len == 0) return;
  if (c->in && data >= c->in && data < c->in + c->in_cap) { /* no arithmetic on NULL */
    memmove(c->in, data, len); /* a suffix of the buffer itself */
  } else {
    if (c->in_len + len > c->in_cap) {
      size_t cap = c->in_cap ? c->in_cap : 4096;
      while (cap < c->in_len + len) cap *= 2;
      char *p = realloc(c->in, cap);
      if (!p) {
        conn_close(c);
        return;
      }
      c->in = p;
      c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, data, len);
    len += c->in_len;
  }
  c->in_len = len;
}

/* The response is fully written: close, or go back to parsing (pipelined bytes first). */
static void conn_sent(conn *c) {
  if (c->body_cap > KEEP_BODY_CAP) {
    free(c->body);
    c->body = NULL;
    c->body_cap = 0;
  }
  if (!c->keep_alive || c->srv->closing) {
    conn_linger(c);
    return;
  }
  c->state = C_IDLE;
  conn_set_deadline(c, c->srv->lim.keepalive_ms);
  if (c->in_feed) return; /* conn_feed's loop carries on with the bytes it holds */
  http_parser_pause(&c->parser, 0);
  if (c->in_len) {
    size_t n = c->in_len;
    c->in_len = 0;
    conn_feed(c, c->in, n);
  } else {
    conn_read_start(c);
  }
}

static void on_write(uv_write_t *w, int status) {
  conn *c = w->data;
  if (c->closing) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  conn_sent(c);
}

static void conn_write_out(conn *c) {
  uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (n == (int)c->out.len) {
    conn_sent(c);
    return;
  }
  if (n < 0 && n != UV_EAGAIN) {
    conn_close(c);
    return;
  }
  if (n > 0) {
    b.base += n;
    b.len -= (unsigned)n;
  }
  c->wr.data = c;
  if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
    conn_close(c);
    return;
  }
  conn_set_deadline(c, c->srv->lim.body_timeout_ms);
}

static void conn_send(conn *c, int status, const char *ctype, const char *headers,
                      const char *body, size_t body_len) {
  c->state = C_WRITING;
  conn_clear_deadline(c);
  if (c->srv->closing) c->keep_alive = 0;
  herald_buf *o = &c->out;
  herald_buf_reset(o);
  /* formatted by hand: this runs once per request on the hot path */
  char num[24];
  char *e = num + sizeof num, *d = e;
  size_t v = body_len;
  do *--d = (char)('0' + v % 10); while ((v /= 10) != 0);
  char st[4] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                (char)('0' + status % 10), ' '};
  herald_buf_append(o, "HTTP/1.1 ", 9);
  herald_buf_append(o, st, 4);
  herald_buf_puts(o, http_status_str((enum http_status)status));
  if (ctype) {
    herald_buf_append(o, "\r\nContent-Type: ", 16);
    herald_buf_puts(o, ctype);
  }
  herald_buf_append(o, "\r\nContent-Length: ", 18);
  herald_buf_append(o, d, (size_t)(e - d));
  if (c->keep_alive) herald_buf_append(o, "\r\nConnection: keep-alive\r\n", 26);
  else herald_buf_append(o, "\r\nConnection: close\r\n", 21);
  if (headers) herald_buf_puts(o, headers);
  herald_buf_append(o, "\r\n", 2);
  if (body_len) herald_buf_append(o, body, body_len);
  conn_write_out(c);
}

static void conn_send_text(conn *c, int status, const char *headers, const char *text) {
  conn_send(c, status, "text/plain; charset=utf-8", headers, text, strlen(text));
}

/* Answers an error that ends the connection (framing errors, limits). */
static void conn_fail(conn *c, int status) {
  c->keep_alive = 0;
  c->handler_pending = 0;
  const char *text;
  switch (status) {
  case 413: text = "request body too large\n"; break;
  case 431: text = "request header fields too large\n"; break;
  case 401: text = "unauthorized\n"; break;
  case 404: text = "404 page not found\n"; break;
  case 405: text = "method not allowed\n"; break;
  case 408: text = "request timeout\n"; break;
  default: text = "bad request\n"; break;
  }
  herald_log_limited(&c->srv->log, HLOG_DEBUG, "answering %d and closing the connection",
                     status);
  conn_send_text(c, status, NULL, text);
}

/* ---- parser callbacks ---- */

static int on_message_begin(http_parser *p) {
  conn *c = p->data;
  c->state = C_HEADERS;
  c->route = NULL;
  c->reject = c->fail = c->health = 0;
  c->last_was_value = 0;
  c->hdrs_done = 0;
  c->hdr_pause = 0;
  c->ck.st = CK_OFF;
  c->hdr_bytes = 0;
  c->discarded = 0;
  c->url_len = 0;
  c->nhdrs = 0;
  c->body_len = 0;
  herald_buf_reset(&c->hb);
  c->req.received_ns = uv_hrtime();
  /* The first request's headers are due header_timeout after the accept (set there), so
   * waiting before the first byte buys no extra time; a later one's from its first byte. */
  if (c->nreq++ > 0) {
    c->req_deadline = uv_now(c->srv->loop) + c->srv->lim.header_timeout_ms;
    conn_set_deadline_at(c, c->req_deadline);
  }
  return 0;
}

static int header_bytes_add(conn *c, size_t n) {
  c->hdr_bytes += n;
  if (c->hdr_bytes > c->srv->lim.max_header_bytes) {
    c->fail = 431;
    return -1;
  }
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
  conn *c = p->data;
  if (header_bytes_add(c, n)) return -1;
  herald_buf_append(&c->hb, at, n);
  c->url_len += n;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
  conn *c = p->data;
  if (header_bytes_add(c, n)) return -1;
  /* A trailer field (after a chunked body): counted, not kept. Keeping it would grow the
   * header buffers that req->headers and req->path already point into. */
  if (c->hdrs_done) return 0;
  if (c->nhdrs == 0 || c->last_was_value) {
    if (c->nhdrs >= c->srv->lim.max_headers) {
      c->fail = 431;
      return -1;
    }
    if (c->nhdrs == c->hdrs_cap) {
      size_t cap = c->hdrs_cap ? c->hdrs_cap * 2 : 16;
      hdr_off *o = realloc(c->offs, cap * sizeof *o);
      if (!o) return -1;
      c->offs = o;
      herald_http_header *h = realloc(c->hdrs, cap * sizeof *h);
      if (!h) return -1;
      c->hdrs = h;
      c->hdrs_cap = cap;
    }
    herald_buf_putc(&c->hb, '\0'); /* ends the url or the previous value */
    hdr_off *o = &c->offs[c->nhdrs++];
    o->name_off = (uint32_t)c->hb.len;
    o->name_len = 0;
    o->value_off = 0;
    o->value_len = 0;
    c->last_was_value = 0;
    if (header_bytes_add(c, 4)) return -1; /* ": " and CRLF */
  }
  herald_buf_append(&c->hb, at, n);
  c->offs[c->nhdrs - 1].name_len += (uint32_t)n;
  return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  conn *c = p->data;
  if (header_bytes_add(c, n)) return -1;
  if (c->hdrs_done) return 0; /* a trailer field */
  hdr_off *o = &c->offs[c->nhdrs - 1];
  if (!c->last_was_value) {
    herald_buf_putc(&c->hb, '\0');
    o->value_off = (uint32_t)c->hb.len;
    c->last_was_value = 1;
  }
  herald_buf_append(&c->hb, at, n);
  o->value_len += (uint32_t)n;
  return 0;
}

static int ieq(const char *a, size_t an, const char *b) {
  size_t bn = strlen(b);
  return an == bn && strncasecmp(a, b, an) == 0;
}

/* Splits the URL into path and query inside c->hb (both NUL-terminated there). */
static int split_url(conn *c) {
  char *url = c->hb.data;
  size_t n = c->url_len;
  url[n] = '\0'; /* the byte after the url is the '\0' written before the first header */
  char *path = url;
  if (n && url[0] != '/') {
    /* absolute-form (http://host/path?q) or '*' */
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, n, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH))) return -1;
    path = url + u.field_data[UF_PATH].off;
  }
  if (path[0] != '/') return -1;
  char *frag = strchr(path, '#');
  if (frag) *frag = '\0';
  char *q = strchr(path, '?');
  if (q) {
    *q = '\0';
    c->req.query = q + 1;
  } else {
    c->req.query = url + n; /* "" */
  }
  c->req.path = path;
  return 0;
}

static int on_headers_complete(http_parser *p) {
  conn *c = p->data;
  herald_http_server *srv = c->srv;
  if (header_bytes_add(c, 2)) return -1;
  if (c->nhdrs == 0) herald_buf_putc(&c->hb, '\0');
  herald_buf_putc(&c->hb, '\0'); /* ends the last value */

  int host = 0, auth = 0, expect = 0;
  const herald_http_header *authz = NULL;
  for (size_t i = 0; i < c->nhdrs; i++) {
    hdr_off *o = &c->offs[i];
    herald_http_header *h = &c->hdrs[i];
    h->name = c->hb.data + o->name_off;
    h->name_len = o->name_len;
    char *v = o->value_len ? c->hb.data + o->value_off : c->hb.data + o->name_off + o->name_len;
    size_t vl = o->value_len;
    /* http_parser has already dropped leading whitespace and replaced any obs-fold with SP
     * (RFC 9112 5.2 allows that instead of a 400); trailing whitespace goes here. */
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
    if (o->value_len) v[vl] = '\0';
    h->value = v;
    h->value_len = vl;
    if (ieq(h->name, h->name_len, "host")) host++;
    else if (ieq(h->name, h->name_len, "authorization")) {
      auth++;
      authz = h;
    } else if (ieq(h->name, h->name_len, "expect") && ieq(v, vl, "100-continue")) {
      expect = 1;
    }
  }
  c->req.headers = c->hdrs;
  c->req.nheaders = c->nhdrs;
  c->req.method = http_method_str((enum http_method)p->method);

  if (split_url(c) != 0 || (p->http_major == 1 && p->http_minor >= 1 && host != 1) ||
      host > 1) {
    c->fail = 400;
    return -1;
  }

  size_t limit = DEFAULT_MAX_BODY;
  if (p->method == HTTP_GET && strcmp(c->req.path, "/health") == 0) {
    c->health = 1;
  } else {
    int known;
    route *r = routes_find(srv, c->req.path, strlen(c->req.path), c->req.method, &known);
    if (!r) {
      c->reject = known ? 405 : 404;
    } else if (r->token) {
      static const char bearer[] = "Bearer ";
      size_t bl = sizeof bearer - 1;
      if (auth != 1 || authz->value_len < bl || memcmp(authz->value, bearer, bl) != 0 ||
          !token_equal(r, authz->value + bl, authz->value_len - bl))
        c->reject = 401;
    }
    if (r && !c->reject) {
      c->route = r;
      limit = r->max_body;
    }
  }

  int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length);
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > limit) {
    c->fail = c->reject ? c->reject : 413;
    return -1;
  }
  if (expect && has_body) {
    if (c->reject) {
      c->fail = c->reject; /* the client waits for 100: answer now and close */
      return -1;
    }
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n != (int)b.len) {
      c->fail = 400;
      return -1;
    }
  }
  if (c->route && (p->flags & F_CONTENTLENGTH) && p->content_length + 1 > c->body_cap) {
    char *nb = realloc(c->body, p->content_length + 1);
    if (!nb) {
      c->fail = 413;
      return -1;
    }
    c->body = nb;
    c->body_cap = p->content_length + 1;
  }
  c->hdrs_done = 1;
  if (has_body) {
    c->state = C_BODY;
    /* The whole body is due body_deadline_ms from now, or, for a declared body too large for
     * that at MIN_BODY_RATE, the time it takes at that rate (a chunked body may be as large
     * as the route allows). */
    uint64_t want = (p->flags & F_CHUNKED) ? (c->route ? c->route->max_body : DEFAULT_MAX_BODY)
                                             : p->content_length;
    uint64_t total = srv->lim.body_deadline_ms;
    if (want / MIN_BODY_RATE * 1000u > total) total = want / MIN_BODY_RATE * 1000u;
    c->req_deadline = uv_now(srv->loop) + total;
    conn_body_deadline(c);
  }
  if (p->flags & F_CHUNKED) {
    /* Pause so that conn_feed starts the framing check exactly where the body starts: the
     * parser stops on the header block's last LF (and reads it again when resumed). */
    c->ck = (chunk_check){.st = CK_SKIP_LF};
    c->hdr_pause = 1;
    http_parser_pause(p, 1);
  }
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  conn *c = p->data;
  if (!c->route) {
    c->discarded += n;
    if (c->discarded > DEFAULT_MAX_BODY) {
      c->fail = c->reject ? c->reject : 413;
      return -1;
    }
    return 0;
  }
  if (c->body_len + n > c->route->max_body) {
    c->fail = 413;
    return -1;
  }
  if (c->body_len + n + 1 > c->body_cap) {
    size_t cap = c->body_cap ? c->body_cap : 1024;
    while (cap < c->body_len + n + 1) cap *= 2;
    if (cap > c->route->max_body + 1) cap = c->route->max_body + 1;
    char *nb = realloc(c->body, cap);
    if (!nb) {
      c->fail = 413;
      return -1;
    }
    c->body = nb;
    c->body_cap = cap;
  }
  memcpy(c->body + c->body_len, at, n);
  c->body_len += n;
  return 0;
}

static int on_message_complete(http_parser *p) {
  conn *c = p->data;
  c->keep_alive = http_should_keep_alive(p) && !p->upgrade;
  http_parser_pause(p, 1);
  return 0;
}

/* ---- strict chunk framing ---- */

static int hexval(unsigned char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Scans the next bytes of a chunked body. Returns how many belong to this message (len, or
 * fewer when its end is among them; the check is then CK_OFF), or -1 when the framing breaks
 * RFC 9112 7.1 (*why says how). */
static ptrdiff_t chunk_scan(conn *c, const char *data, size_t len, const char **why) {
  chunk_check *k = &c->ck;
  size_t i = 0;
  while (i < len) {
    unsigned char ch = (unsigned char)data[i];
    switch (k->st) {
    case CK_OFF:
      return (ptrdiff_t)i;
    case CK_SKIP_LF:
      k->st = CK_SIZE_FIRST;
      if (ch == '\n') break;
      continue; /* a parser that consumed the LF itself: this byte is the size */
    case CK_SIZE_FIRST:
      if (hexval(ch) < 0) {
        *why = "chunk size expected";
        return -1;
      }
      k->st = CK_SIZE;
      k->digits = 0;
      k->left = 0;
      continue;
    case CK_SIZE: {
      int v = hexval(ch);
      if (v >= 0) {
        if (++k->digits > MAX_CHUNK_DIGITS) {
          *why = "chunk size too long";
          return -1;
        }
        k->left = k->left * 16 + (uint64_t)v;
      } else if (ch == ';') {
        k->st = CK_EXT;
      } else if (ch == ' ' || ch == '\t') {
        k->st = CK_BWS;
      } else if (ch == '\r') {
        k->st = CK_SIZE_LF;
      } else {
        *why = "bad character in chunk size";
        return -1;
      }
      break;
    }
    case CK_BWS:
      if (ch == ';') k->st = CK_EXT;
      else if (ch != ' ' && ch != '\t') {
        *why = "whitespace after a chunk size not followed by an extension";
        return -1;
      }
      break;
    case CK_EXT:
      if (ch == '\r') {
        k->st = CK_SIZE_LF;
      } else if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
        *why = "control character in a chunk extension";
        return -1;
      } else if (++k->ext_bytes > MAX_CHUNK_EXT) {
        *why = "chunk extensions too long";
        return -1;
      }
      break;
    case CK_SIZE_LF:
      if (ch != '\n') {
        *why = "chunk-size line not ended by CRLF";
        return -1;
      }
      k->st = k->left ? CK_DATA : CK_TRAILER_START;
      break;
    case CK_DATA: {
      size_t take = len - i;
      if (take > k->left) take = (size_t)k->left;
      k->left -= take;
      i += take;
      if (k->left == 0) k->st = CK_DATA_CR;
      continue;
    }
    case CK_DATA_CR:
    case CK_DATA_LF:
      if (ch != (k->st == CK_DATA_CR ? '\r' : '\n')) {
        *why = "chunk data not followed by CRLF";
        return -1;
      }
      k->st = k->st == CK_DATA_CR ? CK_DATA_LF : CK_SIZE_FIRST;
      break;
    case CK_TRAILER_START:
    case CK_TRAILER:
      if (ch == '\r') {
        k->st = k->st == CK_TRAILER_START ? CK_END_LF : CK_TRAILER_LF;
        break;
      }
      if (ch == '\n' || (k->st == CK_TRAILER_START && (ch == ' ' || ch == '\t'))) {
        *why = ch == '\n' ? "bare LF in the trailer section" : "folded trailer line";
        return -1;
      }
      if (++k->trailer_bytes > c->srv->lim.max_header_bytes) {
        *why = "trailer section too large";
        return -1;
      }
      k->st = CK_TRAILER;
      break;
    case CK_TRAILER_LF:
    case CK_END_LF:
      if (ch != '\n') {
        *why = "trailer line not ended by CRLF";
        return -1;
      }
      if (k->st == CK_END_LF) {
        k->st = CK_OFF;
        return (ptrdiff_t)(i + 1);
      }
      k->st = CK_TRAILER_START;
      break;
    }
    i++;
  }
  return (ptrdiff_t)len;
}

/* A complete request: answer it or give it to its handler. */
static void conn_dispatch(conn *c) {
  c->state = C_HANDLER;
  conn_clear_deadline(c); /* reading goes on: stopping and restarting costs two syscalls */
  if (c->health) {
    conn_send_text(c, 200, NULL, "OK");
    return;
  }
  if (c->route && c->route->removed) {
    c->route = NULL;
    c->reject = 404;
  }
  if (c->reject) {
    herald_log_limited(&c->srv->log, HLOG_DEBUG, "%s %s: %d", c->req.method, c->req.path,
                       c->reject);
    if (c->reject == 401) conn_send_text(c, 401, NULL, "unauthorized\n");
    else if (c->reject == 405) conn_send_text(c, 405, NULL, "method not allowed\n");
    else conn_send_text(c, 404, NULL, "404 page not found\n");
    return;
  }
  if (!c->body) {
    c->body = malloc(1024);
    if (!c->body) {
      conn_fail(c, 500);
      return;
    }
    c->body_cap = 1024;
  }
  c->body[c->body_len] = '\0';
  c->req.body = c->body;
  c->req.body_len = c->body_len;
  c->req.route_data = c->route->data;
  c->req.priv = c;
  c->handler_pending = 1;
  c->route->handler(&c->req);
}

static void conn_feed(conn *c, const char *data, size_t len) {
  c->in_feed = 1;
  while (len > 0 && !c->closing && c->state != C_LINGER && c->state != C_WRITING &&
         c->state != C_HANDLER) {
    /* A chunked body: the framing check sees the bytes first and says how many of them are
     * this message's; the parser then gets just those and must end the message where the
     * check did. */
    size_t feed = len;
    int checked = c->ck.st != CK_OFF;
    if (checked) {
      const char *why = NULL;
      ptrdiff_t m = chunk_scan(c, data, len, &why);
      if (m < 0) {
        herald_log_limited(&c->srv->log, HLOG_DEBUG, "malformed chunked body: %s", why);
        conn_fail(c, 400);
        break;
      }
      feed = (size_t)m;
    }
    size_t n = http_parser_execute(&c->parser, &parser_settings, data, feed);
    data += n;
    len -= n;
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->fail) {
      conn_fail(c, c->fail);
      break;
    }
    if (e == HPE_PAUSED && c->hdr_pause) {
      c->hdr_pause = 0; /* headers complete on a chunked request: the check starts here */
      http_parser_pause(&c->parser, 0);
      continue;
    }
    if (checked && e != HPE_OK && e != HPE_PAUSED) {
      /* the parser's own error (below) */
    } else if (checked && (e == HPE_PAUSED) != (c->ck.st == CK_OFF && n == feed)) {
      herald_log_limited(&c->srv->log, HLOG_DEBUG,
                         "malformed chunked body: the parser and the framing check disagree");
      conn_fail(c, 400);
      break;
    }
    if (e == HPE_PAUSED) {
      conn_dispatch(c);
      if (c->state != C_IDLE) break; /* the response is pending or being written */
      http_parser_pause(&c->parser, 0);
      continue;
    }
    if (e != HPE_OK || n == 0) {
      herald_log_limited(&c->srv->log, HLOG_DEBUG, "malformed request: %s",
                         http_errno_description(e));
      conn_fail(c, e == HPE_HEADER_OVERFLOW ? 431 : 400);
      break;
    }
  }
  c->in_feed = 0;
  if (c->closing || c->state == C_LINGER) return;
  if (c->state == C_HANDLER || c->state == C_WRITING) {
    /* Pipelined bytes wait for the response; past a bound, stop reading (backpressure). */
    save_leftover(c, data, len);
    if (c->in_len > MAX_PENDING_INPUT) conn_read_stop(c);
  } else {
    conn_read_start(c);
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *c = s->data;
  if (nread == UV_EOF && (c->state == C_HANDLER || c->state == C_WRITING)) {
    /* The peer finished sending (a half-close) while its response is pending: answer it,
     * then close. */
    c->keep_alive = 0;
    conn_read_stop(c);
    return;
  }
  if (nread < 0) {
    conn_close(c); /* EOF or error; a request cut short is dropped */
    return;
  }
  if (nread == 0 || c->state == C_LINGER) return;
  conn_feed(c, buf->base, (size_t)nread);
  if (!c->closing && c->state == C_BODY) conn_body_deadline(c);
}

/* ---- public API ---- */

void herald_http_respond(herald_http_req *req, int status, const char *content_type,
                         const char *headers, const char *body, size_t body_len) {
  conn *c = req->priv;
  if (HERALD_FAILS(c && c->handler_pending)) return;
  c->handler_pending = 0;
  if (c->closing) {
    conn_maybe_free(c); /* the client went away (or the server closed) meanwhile */
    return;
  }
  conn_send(c, status, content_type, headers, body, body_len);
}

/* Copies query parameter `name` (percent-decoding) into out; returns 1 if present. */
int herald_http_query_param(const char *q, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  for (const char *p = q; p && *p;) {
    const char *amp = strchr(p, '&');
    size_t len = amp ? (size_t)(amp - p) : strlen(p);
    if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
      size_t o = 0;
      for (size_t i = nl + 1; i < len && o + 1 < cap; i++) {
        char c = p[i];
        if (c == '%' && i + 2 < len) {
          char hex[3] = {p[i + 1], p[i + 2], 0};
          c = (char)strtol(hex, NULL, 16);
          i += 2;
        } else if (c == '+') {
          c = ' ';
        }
        out[o++] = c;
      }
      out[o] = '\0';
      return 1;
    }
    p = amp ? amp + 1 : NULL;
  }
  return 0;
}

const herald_http_header *herald_http_req_header(const herald_http_req *req, const char *name) {
  size_t n = strlen(name);
  for (size_t i = 0; i < req->nheaders; i++) {
    const herald_http_header *h = &req->headers[i];
    if (h->name_len == n && strncasecmp(h->name, name, n) == 0) return h;
  }
  return NULL;
}

int herald_http_server_port(const herald_http_server *srv) {
  return srv->port;
}

static void on_connection(uv_stream_t *ls, int status) {
  herald_http_server *srv = ls->data;
  if (status < 0) {
    herald_log_limited(&srv->log, HLOG_WARN, "accept failed: %s", uv_strerror(status));
    return;
  }
  conn *c;
  if (srv->pool) {
    c = srv->pool;
    srv->pool = c->next;
    srv->npool--;
    /* keep the buffers, clear the rest */
    herald_buf hb = c->hb, out = c->out;
    hdr_off *offs = c->offs;
    herald_http_header *hdrs = c->hdrs;
    size_t hdrs_cap = c->hdrs_cap, body_cap = c->body_cap, in_cap = c->in_cap;
    char *body = c->body, *in = c->in;
    memset(c, 0, sizeof *c);
    c->hb = hb;
    c->out = out;
    c->offs = offs;
    c->hdrs = hdrs;
    c->hdrs_cap = hdrs_cap;
    c->body = body;
    c->body_cap = body_cap;
    c->in = in;
    c->in_cap = in_cap;
  } else {
    c = calloc(1, sizeof *c);
    if (!c) return;
  }
  c->srv = srv;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles_open = 2;
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  if (srv->nconns > srv->lim.max_connections || srv->closing) {
    herald_log_limited(&srv->log, HLOG_WARN, "connection limit (%zu) reached: refusing one",
                       srv->lim.max_connections);
    conn_close(c);
    return;
  }
  uint8_t key[16];
  if (client_key(&c->tcp, key) != 0) {
    conn_close(c);
    return;
  }
  client *cl = client_get(srv, key);
  if (cl->n >= srv->lim.max_client_connections) {
    char addr[INET6_ADDRSTRLEN + 4];
    client_describe(key, addr, sizeof addr);
    herald_log_limited(&srv->log, HLOG_WARN,
                       "client %s holds its share of connections (%zu): refusing one", addr,
                       srv->lim.max_client_connections);
    conn_close(c);
    return;
  }
  cl->n++;
  c->client = cl;
  uv_tcp_nodelay(&c->tcp, 1);
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->state = C_IDLE;
  c->req.query = "";
  c->req_deadline = uv_now(srv->loop) + srv->lim.header_timeout_ms;
  conn_set_deadline_at(c, c->req_deadline);
  conn_read_start(c);
}

static char listen_error[320];

/* name: "metrics", "admin", or a webhook's port number (engine.c names servers so). */
static void set_listen_error(const char *name, const char *host, int port, const char *cause) {
  const char *what = "server";
  if (name && strcmp(name, "metrics") == 0) what = "metrics endpoint (--metrics-addr)";
  else if (name && strcmp(name, "admin") == 0) what = "admin endpoint (--admin-addr)";
  else if (name && *name >= '0' && *name <= '9') what = "webhook server";
  int v6 = strchr(host, ':') != NULL;
  snprintf(listen_error, sizeof listen_error, "%s %s%s%s:%d: cannot listen: %s", what,
           v6 ? "[" : "", host, v6 ? "]" : "", port, cause);
}

const char *herald_http_listen_error(void) { return listen_error; }
void herald_http_listen_error_clear(void) { listen_error[0] = 0; }

herald_http_server *herald_http_server_listen(uv_loop_t *loop, const char *host, int port,
                                              const herald_http_limits *limits,
                                              const char *name, int *err) {
  if (!parser_settings_ready) {
    http_parser_settings_init(&parser_settings);
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;
    parser_settings_ready = 1;
  }
  int e = 0;
  if (!host || !*host || strcmp(host, "localhost") == 0) host = "127.0.0.1";
  listen_error[0] = 0;
  struct sockaddr_storage ss;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
    set_listen_error(name, host, port, "not an IP address");
    if (err) *err = UV_EINVAL;
    return NULL;
  }
  herald_http_server *srv = herald_xcalloc(1, sizeof *srv);
  srv->loop = loop;
  srv->lim = limits ? *limits : herald_http_default_limits;
  if (!srv->lim.max_header_bytes) srv->lim.max_header_bytes = herald_http_default_limits.max_header_bytes;
  if (!srv->lim.max_headers) srv->lim.max_headers = herald_http_default_limits.max_headers;
  if (!srv->lim.header_timeout_ms) srv->lim.header_timeout_ms = herald_http_default_limits.header_timeout_ms;
  if (!srv->lim.body_timeout_ms) srv->lim.body_timeout_ms = herald_http_default_limits.body_timeout_ms;
  if (!srv->lim.keepalive_ms) srv->lim.keepalive_ms = herald_http_default_limits.keepalive_ms;
  if (!srv->lim.max_connections) srv->lim.max_connections = herald_http_default_limits.max_connections;
  if (!srv->lim.body_deadline_ms) srv->lim.body_deadline_ms = herald_http_default_limits.body_deadline_ms;
  if (!srv->lim.max_client_connections) {
    srv->lim.max_client_connections = srv->lim.max_connections / 4;
    if (!srv->lim.max_client_connections) srv->lim.max_client_connections = 1;
  }
  if (uv_random(NULL, NULL, &srv->client_seed, sizeof srv->client_seed, 0, NULL) != 0)
    srv->client_seed = uv_hrtime() ^ ((uint64_t)(uintptr_t)srv << 17);
  size_t nl = strlen(name ? name : "") + 6;
  srv->name = herald_xmalloc(nl);
  snprintf(srv->name, nl, "http:%s", name ? name : "");
  srv->log.name = srv->name;
  uv_tcp_init(loop, &srv->listener);
  srv->listener.data = srv;
  srv->listener_open = 1;
  e = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&ss, 0);
  if (e == 0) e = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
  if (e != 0) {
    set_listen_error(name, host, port, uv_strerror(e));
    /* the listener is closed on the loop; srv goes with it */
    herald_http_server_close(srv, NULL, NULL);
    if (err) *err = e;
    return NULL;
  }
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen) == 0) {
    srv->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&bound)->sin_port);
  } else {
    srv->port = port;
  }
  herald_log(&srv->log, HLOG_DEBUG, "listening on %s:%d", host, srv->port);
  if (err) *err = 0;
  return srv;
}

static void server_maybe_closed(herald_http_server *srv) {
  if (!srv->closing || srv->listener_open || srv->nconns) return;
  while (srv->pool) {
    conn *c = srv->pool;
    srv->pool = c->next;
    conn_destroy(c);
  }
  for (size_t i = 0; i < srv->nbuckets; i++) {
    route *r = srv->buckets[i];
    while (r) {
      route *next = r->next;
      route_free(r);
      r = next;
    }
  }
  while (srv->dead_routes) {
    route *next = srv->dead_routes->next;
    route_free(srv->dead_routes);
    srv->dead_routes = next;
  }
  free(srv->buckets);
  free(srv->clients); /* empty: every connection has released its entry */
  void (*cb)(void *) = srv->close_cb;
  void *data = srv->close_data;
  free(srv->name);
  free(srv);
  if (cb) cb(data);
}

static void on_listener_closed(uv_handle_t *h) {
  herald_http_server *srv = h->data;
  srv->listener_open = 0;
  server_maybe_closed(srv);
}

void herald_http_server_close(herald_http_server *srv, void (*cb)(void *data), void *data) {
  if (HERALD_FAILS(!srv->close_called)) return;
  srv->close_called = 1;
  srv->closing = 1;
  srv->close_cb = cb;
  srv->close_data = data;
  uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
  /* Connections whose request is with a handler, or whose response is being written, finish
   * that response (with Connection: close) and then close. */
  conn *c = srv->conns;
  while (c) {
    conn *next = c->next;
    if (c->state != C_HANDLER && c->state != C_WRITING) conn_close(c);
    c = next;
  }
}
