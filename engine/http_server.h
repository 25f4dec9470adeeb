/*
 * http_server.h: the HTTP/1.1 server shared by webhook-style sources and /metrics, on libuv +
 * http-parser (llhttp's predecessor, as Debian ships it).
 *
 *   accept -> read -> http_parser -> on headers: route lookup, method, auth, size checks
 *          -> body (bounded) -> route handler -> herald_http_respond() (now or later)
 *          -> write -> keep-alive: parse the next request (pipelined bytes are kept)
 *
 * One server per listening address; many routes per server. Every server answers
 * GET /health with 200 "OK". Limits (reliability-and-security.md section 5.5): header block
 * 16 KiB and 100 headers (431), body per route (413, from Content-Length before reading);
 * malformed requests, chunk framing included, get 400 and the connection is closed.
 * Deadlines: the header block must arrive within 10 s in all (from the connection's accept,
 * or on a kept-alive connection from the request's first byte), the body within 60 s in all
 * (longer only for a body so large that it needs more at 64 KiB/s) and with no gap of 10 s
 * between reads; a request that misses one gets 408 and the connection is closed. A
 * connection with no bytes of a request is closed silently after 60 s idle (10 s before its
 * first request). One client address (an IPv6 /64) may hold at most a share of the port's
 * connection cap (a quarter by default), so a few slow clients cannot lock out the rest.
 * A response may be sent after the handler returns (the webhook answers once the bus has the
 * event); the connection reads nothing more until then.
 */
#ifndef HERALD_HTTP_SERVER_H
#define HERALD_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct herald_http_server herald_http_server;
typedef struct herald_http_req herald_http_req;

typedef struct herald_http_header {
  const char *name; /* as received (compare case-insensitively) */
  size_t name_len;
  const char *value;
  size_t value_len;
} herald_http_header;

struct herald_http_req {
  const char *method;       /* "GET", "POST", ... NUL-terminated */
  const char *path;         /* URL path without the query, NUL-terminated */
  const char *query;        /* raw query string without '?', NUL-terminated ("" if none) */
  const herald_http_header *headers;
  size_t nheaders;
  const char *body;         /* NUL-terminated for convenience; body_len bytes */
  size_t body_len;
  uint64_t received_ns;     /* monotonic time the request's first byte was read */
  void *route_data;         /* the matched route's data */
  void *priv;               /* the server's */
};

/* Called once per complete request that passed routing, method, auth and size checks. The
 * handler must call herald_http_respond() exactly once, now or later; req stays valid until
 * then. If the client disconnects first, the respond call is still made and is harmless. */
typedef void (*herald_http_handler)(herald_http_req *req);

typedef struct herald_http_route {
  const char *path;          /* exact path match, e.g. "/example" (copied) */
  const char *method;        /* exact method match, e.g. "POST"; NULL = any (copied) */
  size_t max_body;           /* bytes; 0 = 1 MiB */
  const char *bearer_token;  /* if set, "Authorization: Bearer <token>" is required, compared
                                in constant time (copied) */
  herald_http_handler handler;
  void *data;                /* given back as req->route_data */
} herald_http_route;

/* Zero in any field means its default. */
typedef struct herald_http_limits {
  size_t max_header_bytes;   /* 16384 */
  size_t max_headers;        /* 100 */
  uint64_t header_timeout_ms;/* 10000: the whole header block (a total, not per read) */
  uint64_t body_timeout_ms;  /* 10000: idle between body reads */
  uint64_t keepalive_ms;     /* 60000 */
  size_t max_connections;    /* 10000 */
  uint64_t body_deadline_ms; /* 60000: the whole body; a declared body too large to arrive
                                in that time at 64 KiB/s gets the time it needs at that rate */
  size_t max_client_connections; /* max_connections / 4 (at least 1): connections one client
                                    address (IPv4 address, IPv6 /64) may hold at once */
} herald_http_limits;

/* The defaults above (reliability-and-security.md 5.5); max_client_connections is 0 here and
 * derived from max_connections when the server starts. */
extern const herald_http_limits herald_http_default_limits;

/* Returns a new server bound to host:port and listening, or NULL with *err set (a negative
 * libuv error such as UV_EADDRINUSE). limits may be NULL for the defaults. `name` labels its
 * log lines. The caller closes it with herald_http_server_close(). */
herald_http_server *herald_http_server_listen(uv_loop_t *loop, const char *host, int port,
                                              const herald_http_limits *limits,
                                              const char *name, int *err);
/* What the last failed herald_http_server_listen() could not do, as "<what> HOST:PORT: <cause>"
 * (e.g. "metrics endpoint 127.0.0.1:7777: address already in use"), or "" when the last call
 * succeeded or the text was cleared. The engine's start reports it instead of a bare
 * HERALD_EIO, so the user sees which address and why. One loop thread: a plain static. */
const char *herald_http_listen_error(void);
void herald_http_listen_error_clear(void);
/* Adds a route (copied). Returns 0, or HERALD_EINVAL if path+method is already routed. */
int herald_http_server_add_route(herald_http_server *srv, const herald_http_route *route);
/* Removes a route. Returns 0 or HERALD_ENOTFOUND; a request already matched to it gets 404;
 * the route's memory is kept until the server closes. */
int herald_http_server_remove_route(herald_http_server *srv, const char *path, const char *method);
/* The port actually bound (useful with port 0). */
int herald_http_server_port(const herald_http_server *srv);

/* Sends the response to req and releases it. `headers` is extra raw header lines, each ending
 * in "\r\n" (e.g. "Retry-After: 1\r\n"), or NULL. Content-Length, Content-Type (when
 * content_type is non-NULL) and Connection are added by the server. */
void herald_http_respond(herald_http_req *req, int status, const char *content_type,
                         const char *headers, const char *body, size_t body_len);

/* Copies query parameter `name` of q (a raw query string) percent-decoded into out (cap
 * bytes, NUL-terminated, cut if longer); returns 1 if present. */
int herald_http_query_param(const char *q, const char *name, char *out, size_t cap);

/* Finds a request header (case-insensitive name); returns NULL if absent. */
const herald_http_header *herald_http_req_header(const herald_http_req *req, const char *name);

/* Stops listening and closes every idle connection; a request still awaiting its response
 * gets that response with "Connection: close" (a 503 for an event already on the bus would
 * invite a duplicate), then its connection closes. Calls cb(data) when all are closed. */
void herald_http_server_close(herald_http_server *srv, void (*cb)(void *data), void *data);

#endif
