/*
 * curl_loop.c: the libcurl multi <-> libuv glue (see curl_loop.h).
 *
 *   curl asks to watch a socket (CURLMOPT_SOCKETFUNCTION) -> uv_poll on it -> readiness ->
 *   curl_multi_socket_action(fd) ; curl asks for a timeout (CURLMOPT_TIMERFUNCTION) -> uv_timer
 *   -> curl_multi_socket_action(TIMEOUT) ; after each action, finished transfers are read with
 *   curl_multi_info_read and handed to their done callback.
 *
 * Lanes: transfers to one origin (scheme://authority) beyond HERALD_CURL_PER_ORIGIN (also
 * libcurl's per-host connection cap) wait in the origin's FIFO here, not in libcurl: libcurl
 * parks such a transfer as pending and, for each one, scans the host's connection cache again
 * when a connection frees up, which made the HTTP trigger ~45% slower at 256 actions in flight.
 * A finished transfer starts the next one of its lane.
 */
#include "curl_loop.h"
#include "buf.h"

#include "common.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_HOST_CONNECTIONS HERALD_CURL_PER_ORIGIN
#define POOL_SIZE 256 /* a trigger's actions in flight (delivery.c) */

typedef struct herald_curl_lane {
  struct herald_curl_lane *next;
  int active;                    /* its transfers in the multi */
  herald_curl_xfer *head, *tail; /* waiting */
  char origin[];
} lane;

typedef struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
} sock_ctx;

static struct {
  CURLM *multi;
  uv_loop_t *loop;
  uv_timer_t timer;
  int refs;
  CURL *pool[POOL_SIZE];
  int npool;
  /* Poll handles by fd, kept (stopped) when libcurl stops watching a socket and closed with
   * the socket: a kept-alive connection is dropped from the watch after each transfer and
   * taken up again by the next, and a poll handle made and closed each time cost ~5% of the
   * HTTP trigger's CPU. */
  sock_ctx **socks;
  int nsocks;
  lane *lanes;
} G;

static lane *lane_get(const char *origin) {
  for (lane *l = G.lanes; l; l = l->next)
    if (strcmp(l->origin, origin) == 0) return l;
  size_t n = strlen(origin) + 1;
  lane *l = calloc(1, sizeof *l + n);
  if (!l) return NULL;
  memcpy(l->origin, origin, n);
  l->next = G.lanes;
  G.lanes = l;
  return l;
}

static void lane_drop_if_idle(lane *l) {
  if (l->active || l->head) return;
  for (lane **pp = &G.lanes; *pp; pp = &(*pp)->next) {
    if (*pp == l) {
      *pp = l->next;
      free(l);
      return;
    }
  }
}

static void lane_unqueue(lane *l, herald_curl_xfer *x) {
  if (x->qprev) x->qprev->qnext = x->qnext;
  else l->head = x->qnext;
  if (x->qnext) x->qnext->qprev = x->qprev;
  else l->tail = x->qprev;
  x->qprev = x->qnext = NULL;
}

/* x goes into the multi as one of lane l's transfers; -1 if the multi refuses it. */
static int lane_admit(lane *l, herald_curl_xfer *x) {
  if (curl_multi_add_handle(G.multi, x->easy) != CURLM_OK) return -1;
  x->active = 1;
  x->lane = l;
  l->active++;
  return 0;
}

/* A transfer of lane l left the multi: the next waiting one goes in. One the multi refuses
 * finishes with CURLE_OUT_OF_MEMORY, its done called once the lane is settled (a done may
 * release transfers of this lane, and the lane may be gone by then). */
static void lane_next(lane *l) {
  herald_curl_xfer *failed = NULL;
  l->active--;
  while (l->head && l->active < MAX_HOST_CONNECTIONS) {
    herald_curl_xfer *x = l->head;
    lane_unqueue(l, x);
    if (lane_admit(l, x) != 0) {
      x->lane = NULL;
      x->qnext = failed;
      failed = x;
    }
  }
  lane_drop_if_idle(l);
  while (failed) {
    herald_curl_xfer *x = failed;
    failed = x->qnext;
    x->qnext = NULL;
    x->done(x, CURLE_OUT_OF_MEMORY);
  }
}

static void check_done(void) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(G.multi, &left))) {
    if (msg->msg != CURLMSG_DONE) continue;
    herald_curl_xfer *x = NULL;
    CURL *easy = msg->easy_handle;
    CURLcode rc = msg->data.result;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
    curl_multi_remove_handle(G.multi, easy); /* invalidates msg */
    if (HERALD_FAILS(x != NULL)) continue;
    x->active = 0;
    lane *l = x->lane;
    x->lane = NULL;
    if (l) lane_next(l);
    x->done(x, rc);
  }
}

static void poll_closed(uv_handle_t *h) {
  free(h->data);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_ctx *s = p->data;
  int flags = 0, running;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(G.multi, s->fd, flags, &running);
  check_done();
}

/* The poll handle for fd: the one kept from before (stopped), or a new one. */
static sock_ctx *sock_get(curl_socket_t fd) {
  if (fd >= 0 && fd < G.nsocks && G.socks[fd]) return G.socks[fd];
  sock_ctx *s = malloc(sizeof *s);
  if (!s) return NULL;
  s->fd = fd;
  if (uv_poll_init_socket(G.loop, &s->poll, fd) != 0) {
    free(s);
    return NULL;
  }
  s->poll.data = s;
  if (fd >= G.nsocks) {
    int n = G.nsocks ? G.nsocks : 64;
    while (n <= fd) n *= 2;
    sock_ctx **t = realloc(G.socks, (size_t)n * sizeof *t);
    if (!t) return s; /* works, just not kept */
    memset(t + G.nsocks, 0, (size_t)(n - G.nsocks) * sizeof *t);
    G.socks = t;
    G.nsocks = n;
  }
  G.socks[fd] = s;
  return s;
}

/* Closes the kept poll handles (the multi handle is going away). */
static void socks_close(void) {
  for (int i = 0; i < G.nsocks; i++) {
    if (!G.socks[i]) continue;
    uv_close((uv_handle_t *)&G.socks[i]->poll, poll_closed);
    G.socks[i] = NULL;
  }
  free(G.socks);
  G.socks = NULL;
  G.nsocks = 0;
}

/* CURLOPT_CLOSESOCKETFUNCTION: the kept poll handle goes with its socket (closed first, while
 * the fd is still this socket's). */
static int on_close_socket(void *clientp, curl_socket_t fd) {
  (void)clientp;
  if (fd >= 0 && fd < G.nsocks && G.socks[fd]) {
    uv_close((uv_handle_t *)&G.socks[fd]->poll, poll_closed);
    G.socks[fd] = NULL;
  }
  return close(fd);
}

static int on_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp) {
  sock_ctx *s = socketp;
  if (action == CURL_POLL_REMOVE) {
    if (s) { /* stopped; kept for the socket's next transfer until on_close_socket */
      uv_poll_stop(&s->poll);
      curl_multi_assign(G.multi, fd, NULL);
      if (!(fd >= 0 && fd < G.nsocks && G.socks[fd] == s)) uv_close((uv_handle_t *)&s->poll, poll_closed);
    }
    return 0;
  }
  if (!s) {
    s = sock_get(fd);
    if (!s) return -1;
    curl_multi_assign(G.multi, fd, s);
  }
  int ev = 0;
  if (action == CURL_POLL_IN || action == CURL_POLL_INOUT) ev |= UV_READABLE;
  if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT) ev |= UV_WRITABLE;
  uv_poll_start(&s->poll, ev, on_poll);
  return 0;
}

static void on_timer(uv_timer_t *t) {
  int running;
  curl_multi_socket_action(G.multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done();
}

static int on_timeout_change(CURLM *multi, long timeout_ms, void *userp) {
  if (timeout_ms < 0) uv_timer_stop(&G.timer);
  else uv_timer_start(&G.timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

int herald_curl_loop_ref(uv_loop_t *loop) {
  if (G.refs == 0) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    G.multi = curl_multi_init();
    if (!G.multi) return HERALD_ENOMEM;
    G.loop = loop;
    curl_multi_setopt(G.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(G.multi, CURLMOPT_TIMERFUNCTION, on_timeout_change);
    curl_multi_setopt(G.multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)MAX_HOST_CONNECTIONS);
    /* Keep idle connections for reuse: by default the cache is sized from the transfers in
     * flight, so between bursts libcurl closed them and reconnected (thousands of TIME-WAIT
     * sockets and a third of the HTTP trigger's throughput, measured in bench/RESULTS.md). */
    curl_multi_setopt(G.multi, CURLMOPT_MAXCONNECTS, (long)(4 * MAX_HOST_CONNECTIONS));
    uv_timer_init(G.loop, &G.timer);
  }
  G.refs++;
  return 0;
}

static void timer_closed(uv_handle_t *h) {
  /* A new user may have arrived while the timer was closing (engine restarted in-process). */
  if (G.refs > 0) return;
  curl_multi_cleanup(G.multi);
  G.multi = NULL;
  while (G.npool) curl_easy_cleanup(G.pool[--G.npool]);
}

void herald_curl_loop_unref(void) {
  if (HERALD_FAILS(G.refs > 0)) return;
  if (--G.refs == 0) {
    uv_timer_stop(&G.timer);
    socks_close();
    uv_close((uv_handle_t *)&G.timer, timer_closed);
  }
}

int herald_curl_xfer_init(herald_curl_xfer *x) {
  x->easy = G.npool ? G.pool[--G.npool] : curl_easy_init();
  if (!x->easy) return HERALD_ENOMEM;
  x->active = 0;
  x->errbuf[0] = '\0';
  x->origin[0] = '\0';
  x->lane = NULL;
  x->qprev = x->qnext = NULL;
  curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
  curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(x->easy, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
  return 0;
}

void herald_curl_xfer_url(herald_curl_xfer *x, const char *url) {
  curl_easy_setopt(x->easy, CURLOPT_URL, url);
  /* scheme://authority; a longer one is cut, which at worst puts two origins in one lane */
  const char *p = strstr(url, "://");
  size_t n = p ? strcspn(p + 3, "/?#") + (size_t)(p + 3 - url) : strlen(url);
  if (n >= sizeof x->origin) n = sizeof x->origin - 1;
  memcpy(x->origin, url, n);
  x->origin[n] = '\0';
}

int herald_curl_xfer_start(herald_curl_xfer *x, herald_curl_done_cb done) {
  x->done = done;
  lane *l = lane_get(x->origin);
  if (!l) return HERALD_EIO;
  if (l->active >= MAX_HOST_CONNECTIONS) {
    x->lane = l;
    x->qnext = NULL;
    x->qprev = l->tail;
    if (l->tail) l->tail->qnext = x;
    else l->head = x;
    l->tail = x;
    return 0;
  }
  if (lane_admit(l, x) != 0) {
    lane_drop_if_idle(l);
    return HERALD_EIO;
  }
  return 0;
}

void herald_curl_xfer_release(herald_curl_xfer *x) {
  if (!x->easy) return;
  lane *l = x->lane;
  x->lane = NULL;
  if (x->active) {
    curl_multi_remove_handle(G.multi, x->easy);
    if (l) lane_next(l);
  } else if (l) {
    lane_unqueue(l, x);
    lane_drop_if_idle(l);
  }
  x->active = 0;
  if (G.npool < POOL_SIZE) {
    curl_easy_reset(x->easy);
    G.pool[G.npool++] = x->easy;
  } else {
    curl_easy_cleanup(x->easy);
  }
  x->easy = NULL;
}

size_t herald_curl_keep_head(char *ptr, size_t size, size_t n, void *buf) {
  herald_buf *b = buf;
  size_t len = size * n;
  if (b->len < HERALD_CURL_KEEP) {
    size_t keep = HERALD_CURL_KEEP - b->len;
    herald_buf_append(b, ptr, len < keep ? len : keep);
  }
  return len;
}
