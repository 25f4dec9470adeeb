/*
 * http_request.c: libFuzzer target for the webhook's HTTP/1.1 request handling
 * (engine/http_server.c: http_parser callbacks, header and URL handling, routing, auth, body
 * limits, pipelining, keep-alive and connection reuse).
 *
 * engine/http_server.c is compiled into this file, and each input is one loopback TCP
 * connection made by the harness itself (connect + accept on a plain socket) and handed to the
 * server's own accept path (on_connection) the way its listener would (libuv's uv_accept takes
 * the listener's accepted_fd); the server's listener never sees traffic. The client end is
 * closed with a reset, and each connection comes from a new 127.1.x.y address, so the
 * server's TIME_WAITs never exhaust the ports. The input is written in chunks whose size the
 * first byte picks (so requests are also split across reads), then that end is shut down and
 * the loop runs until the server has closed the connection. Routes: POST /sync (answered in
 * the handler), /later with a bearer token (answered on the next loop turn) and GET /small
 * with a 16-byte body limit. Everything the handler receives is read in full (ASan checks
 * the bounds) and checked for the documented invariants; every response must start with a
 * status line.
 */
#define _GNU_SOURCE /* accept4 */
#include "../engine/http_server.c"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static uv_loop_t loop;
static herald_http_server *server;
static uv_timer_t later_timer;
static herald_http_req *later_req;
static uv_poll_t peer_poll;
static int peer_fd = -1;
static int lfd = -1; /* the harness's own listening socket */
static struct sockaddr_in laddr;
static char out_head[16];
static size_t out_len;
static int verbose; /* FUZZ_VERBOSE=1: the responses go to stderr (triage) */

static void bad(const char *what) {
  fprintf(stderr, "fuzz: %s\n", what);
  abort();
}

/* Reads every byte the server hands over, as a handler might. */
static unsigned touch_request(herald_http_req *req) {
  unsigned sum = 0;
  if (!req->method || !req->path || !req->query) bad("request without method, path or query");
  if (req->path[0] != '/') bad("path does not start with /");
  for (const char *p = req->method; *p; p++) sum += (unsigned char)*p;
  for (const char *p = req->path; *p; p++) sum += (unsigned char)*p;
  for (const char *p = req->query; *p; p++) sum += (unsigned char)*p;
  for (size_t i = 0; i < req->nheaders; i++) {
    const herald_http_header *h = &req->headers[i];
    for (size_t j = 0; j < h->name_len; j++) sum += (unsigned char)h->name[j];
    for (size_t j = 0; j < h->value_len; j++) sum += (unsigned char)h->value[j];
  }
  if (!req->body || req->body[req->body_len] != '\0') bad("body is not NUL-terminated");
  for (size_t j = 0; j < req->body_len; j++) sum += (unsigned char)req->body[j];
  if (herald_http_req_header(req, "content-type")) sum++;
  return sum;
}

static void on_sync(herald_http_req *req) {
  char body[32];
  int n = snprintf(body, sizeof body, "%u\n", touch_request(req));
  herald_http_respond(req, 200, "text/plain", NULL, body, (size_t)n);
}

static void on_later_timer(uv_timer_t *t) {
  herald_http_req *req = later_req;
  later_req = NULL;
  herald_http_respond(req, 202, NULL, "Retry-After: 1\r\n", "", 0);
}

static void on_later(herald_http_req *req) {
  touch_request(req);
  if (later_req) bad("two requests with the handler on one connection");
  later_req = req;
  uv_timer_start(&later_timer, on_later_timer, 0, 0);
}

static void on_peer_readable(uv_poll_t *h, int status, int events) {
  char buf[65536];
  for (;;) {
    ssize_t n = read(peer_fd, buf, sizeof buf);
    if (n <= 0) break;
    for (ssize_t i = 0; i < n && out_len < sizeof out_head; i++) out_head[out_len++] = buf[i];
    if (verbose) fwrite(buf, 1, (size_t)n, stderr);
  }
}

static void setup(void) {
  signal(SIGPIPE, SIG_IGN); /* as the engine does */
  verbose = getenv("FUZZ_VERBOSE") != NULL;
  uv_loop_init(&loop);
  herald_log_set_level(HLOG_ERROR);
  int err = 0;
  server = herald_http_server_listen(&loop, "127.0.0.1", 0, NULL, "fuzz", &err);
  if (!server) bad("cannot listen");
  herald_http_route r = {.path = "/sync", .method = "POST", .handler = on_sync};
  herald_http_server_add_route(server, &r);
  herald_http_route l = {.path = "/later", .bearer_token = "s3cret", .max_body = 4096,
                         .handler = on_later};
  herald_http_server_add_route(server, &l);
  herald_http_route s = {.path = "/small", .method = "GET", .max_body = 16, .handler = on_sync};
  herald_http_server_add_route(server, &s);
  uv_timer_init(&loop, &later_timer);
  lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&laddr, 0, sizeof laddr);
  laddr.sin_family = AF_INET;
  laddr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof laddr;
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&laddr, sizeof laddr) != 0 || listen(lfd, 16) != 0 ||
      getsockname(lfd, (struct sockaddr *)&laddr, &al) != 0)
    bad("cannot listen on the loopback");
}

/* A connected loopback pair: *client for the harness, the return value for the server. */
static int tcp_pair(int *client) {
  /* The server's end closes first when it answers with Connection: close, and its TIME_WAIT
   * blocks that client port for a minute: at ~2,000 connections a second one source address
   * would run out of ports. The client takes a new loopback address each time instead. */
  static uint32_t n;
  n = (n + 1) & 0xffff;
  struct sockaddr_in src = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(0x7f010000u | n | 1u)}; /* 127.1.x.y */
  int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (cfd < 0 || bind(cfd, (struct sockaddr *)&src, sizeof src) != 0 ||
      connect(cfd, (struct sockaddr *)&laddr, sizeof laddr) != 0)
    bad("connect");
  int sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (sfd < 0) bad("accept");
  fcntl(cfd, F_SETFL, fcntl(cfd, F_GETFL) | O_NONBLOCK);
  *client = cfd;
  return sfd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!server) setup();
  if (size < 1) return 0;
  /* chunk sizes: the whole input, or 1..127 bytes per write */
  size_t chunk = data[0] & 0x7f ? (size_t)(data[0] & 0x7f) : size;
  data++, size--;

  int sfd = tcp_pair(&peer_fd);
  out_len = 0;
  uv_poll_init(&loop, &peer_poll, peer_fd);
  uv_poll_start(&peer_poll, UV_READABLE, on_peer_readable);

  size_t before = server->nconns;
  server->listener.accepted_fd = sfd;
  on_connection((uv_stream_t *)&server->listener, 0);
  if (server->nconns != before + 1) bad("connection not accepted");

  size_t off = 0;
  int turns = 0;
  while (off < size) {
    size_t n = size - off < chunk ? size - off : chunk;
    ssize_t w = send(peer_fd, data + off, n, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN) break; /* the server closed its end */
    if (w > 0) off += (size_t)w;
    uv_run(&loop, UV_RUN_NOWAIT);
    if (++turns > 100000) bad("the server stopped reading");
  }
  shutdown(peer_fd, SHUT_WR);
  /* The server must close the connection by itself once the input has ended. */
  while (server->nconns > before || later_req) {
    uv_run(&loop, UV_RUN_ONCE);
    if (++turns > 200000) bad("the connection never closes");
  }
  on_peer_readable(&peer_poll, 0, UV_READABLE);
  if (out_len && (out_len < 9 || memcmp(out_head, "HTTP/1.1 ", 9) != 0))
    bad("a response that does not start with a status line");
  uv_poll_stop(&peer_poll);
  uv_close((uv_handle_t *)&peer_poll, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  struct linger lg = {1, 0}; /* reset: no TIME_WAIT */
  setsockopt(peer_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(peer_fd);
  peer_fd = -1;
  return 0;
}
