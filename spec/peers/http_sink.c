/*
 * http_sink.c: a fast HTTP sink for benchmarks and load tests: answers every request 200 at
 * once, on Herald's own HTTP server (libuv + http-parser), and prints how many requests it
 * served when it gets SIGTERM or SIGINT. Listens on 127.0.0.1 only.
 *
 *   herald-peer-http_sink PORT [PATH]     (PATH default /sink)
 */
#include "http_server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static unsigned long long served;
static herald_http_server *srv;

static void on_req(herald_http_req *req) {
  served++;
  herald_http_respond(req, 200, "text/plain", NULL, "ok", 2);
}

static void on_closed(void *data) {
  (void)data;
}

static void on_signal(uv_signal_t *h, int sig) {
  (void)sig;
  printf("served %llu\n", served);
  fflush(stdout);
  herald_http_server_close(srv, on_closed, NULL);
  uv_close((uv_handle_t *)h, NULL);
  uv_stop(h->loop);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s PORT [PATH]\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  uv_loop_t *loop = uv_default_loop();
  int err = 0;
  srv = herald_http_server_listen(loop, "127.0.0.1", atoi(argv[1]), NULL, "sink", &err);
  if (!srv) {
    fprintf(stderr, "listen: %s\n", uv_strerror(err));
    return 1;
  }
  herald_http_route r = {.path = argc > 2 ? argv[2] : "/sink", .method = NULL, .handler = on_req};
  herald_http_server_add_route(srv, &r);
  uv_signal_t s1, s2;
  uv_signal_init(loop, &s1);
  uv_signal_init(loop, &s2);
  uv_signal_start(&s1, on_signal, SIGTERM);
  uv_signal_start(&s2, on_signal, SIGINT);
  printf("listening on %s\n", argv[1]);
  fflush(stdout);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
