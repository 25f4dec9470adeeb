/*
 * tap.c: the ring of tap records and GET /tap on the admin endpoint (tap.h).
 *
 * A reader asks for the records after the last sequence number it saw, filtered by event
 * source, sensor, trigger and kind, and sampled by event id (every record of one event is kept
 * or dropped together, so a sampled event still shows its verdicts and firings). When there is
 * nothing new the request waits up to a second for the next record (long polling on the
 * respond-later contract of http_server.h). The last line of each answer is the cursor:
 * {"kind":"cursor","next":N,"dropped":D}, D counting records the ring overwrote before this
 * reader saw them.
 */
#include "tap.h"
#include "buf.h"
#include "common.h"
#include "http_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TAP_RING 8192
#define TAP_MAX_ANSWER 2000 /* records in one answer */
#define TAP_IDLE_MS 10000   /* recording stops this long after the last request */
#define TAP_WAIT_MS 1000    /* a request with nothing new waits at most this long */
/* Events a second the engine records in full; above it, it keeps one event in k (by id, so an
 * event keeps all its records), k chosen every 100 ms from the last 100 ms' rate. A person
 * reads far fewer; the budget keeps what a tap costs the engine small whatever its load
 * (bench/RESULTS.md, "herald tap"). */
#define TAP_EVENT_BUDGET 1000

typedef struct tap_rec {
  uint64_t seq;
  char *kind, *source, *sensor, *trigger;
  uint32_t eid_hash;
  int has_eid;
  char *line; /* the JSON object, without the newline */
} tap_rec;

typedef struct waiter {
  herald_http_req *req;
  uint64_t deadline;
  struct waiter *next;
} waiter;

struct herald_tap {
  herald_engine *eng;
  tap_rec ring[TAP_RING];
  uint64_t next_seq; /* of the next record; the first is 1 */
  uint64_t last_request_ms;
  waiter *waiters;
  uv_timer_t timer;
  int timer_ready;
  uint32_t k;               /* the engine's own sampling: one event in k */
  uint64_t window_ms;       /* start of the current 100 ms window */
  uint32_t window_events;   /* events seen in it */
  uint32_t outcome_n;       /* outcomes have no id: one in k by count */
};

static uint32_t fnv(const char *s) {
  uint32_t h = 2166136261u;
  for (; s && *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static char *dup_or_null(const char *s) { return s ? herald_xstrdup(s) : NULL; }

static void rec_clear(tap_rec *r) {
  free(r->kind), free(r->source), free(r->sensor), free(r->trigger), free(r->line);
  memset(r, 0, sizeof *r);
}

/* Filters and sampling of one request. */
typedef struct tap_query {
  uint64_t after;
  char source[256], sensor[256], trigger[256], kinds[128];
  uint32_t sample; /* keep 1 in `sample` events (by id); 0 or 1: all */
} tap_query;

static int matches(const tap_rec *r, const tap_query *q) {
  if (q->source[0] && (!r->source || strcmp(r->source, q->source) != 0)) return 0;
  if (q->sensor[0] && (!r->sensor || strcmp(r->sensor, q->sensor) != 0)) return 0;
  if (q->trigger[0] && (!r->trigger || strcmp(r->trigger, q->trigger) != 0)) return 0;
  if (q->kinds[0]) { /* comma list */
    size_t kl = strlen(r->kind);
    const char *p = q->kinds;
    int found = 0;
    while (*p) {
      const char *e = strchr(p, ',');
      size_t n = e ? (size_t)(e - p) : strlen(p);
      if (n == kl && strncmp(p, r->kind, n) == 0) found = 1;
      p += n + (e ? 1 : 0);
    }
    if (!found) return 0;
  }
  if (q->sample > 1 && r->has_eid && r->eid_hash % q->sample != 0) return 0;
  return 1;
}

/* Writes the records after q->after that match; returns how many. */
static size_t answer(struct herald_tap *tap, const tap_query *q, herald_buf *b) {
  uint64_t oldest = tap->next_seq > TAP_RING ? tap->next_seq - TAP_RING : 1;
  uint64_t from = q->after + 1, dropped = 0;
  if (from < oldest) {
    dropped = oldest - from;
    from = oldest;
  }
  size_t n = 0;
  uint64_t seq = from;
  for (; seq < tap->next_seq && n < TAP_MAX_ANSWER; seq++) {
    tap_rec *r = &tap->ring[seq % TAP_RING];
    if (r->seq != seq || !matches(r, q)) continue;
    herald_buf_puts(b, r->line);
    herald_buf_putc(b, '\n');
    n++;
  }
  herald_buf_printf(b, "{\"kind\":\"cursor\",\"next\":%llu,\"dropped\":%llu,\"engineSample\":%u}\n",
                    (unsigned long long)(seq - 1), (unsigned long long)dropped, tap->k ? tap->k : 1);
  return n;
}

static void parse_query(const char *qs, tap_query *q) {
  char num[32];
  memset(q, 0, sizeof *q);
  if (herald_http_query_param(qs, "after", num, sizeof num)) q->after = strtoull(num, NULL, 10);
  if (herald_http_query_param(qs, "sample", num, sizeof num)) q->sample = (uint32_t)strtoul(num, NULL, 10);
  herald_http_query_param(qs, "source", q->source, sizeof q->source);
  herald_http_query_param(qs, "sensor", q->sensor, sizeof q->sensor);
  herald_http_query_param(qs, "trigger", q->trigger, sizeof q->trigger);
  herald_http_query_param(qs, "kind", q->kinds, sizeof q->kinds);
}

static void respond(struct herald_tap *tap, herald_http_req *req) {
  tap_query q;
  parse_query(req->query, &q);
  herald_buf b = HERALD_BUF_INIT;
  answer(tap, &q, &b);
  herald_http_respond(req, 200, "application/x-ndjson", NULL, b.data, b.len);
  herald_buf_free(&b);
}

/* Every 100 ms while someone watches: answer the waiters whose second is up; stop recording
 * when nobody has asked for a while. */
static void on_timer(uv_timer_t *t) {
  struct herald_tap *tap = t->data;
  uint64_t now = uv_now(tap->eng->loop);
  for (waiter **pp = &tap->waiters; *pp;) {
    waiter *w = *pp;
    if (w->deadline > now) {
      pp = &w->next;
      continue;
    }
    *pp = w->next;
    respond(tap, w->req);
    free(w);
  }
  if (!tap->waiters && now - tap->last_request_ms > TAP_IDLE_MS) {
    tap->eng->tap_active = 0;
    uv_timer_stop(t);
  }
}

static void on_tap(herald_http_req *req) {
  herald_engine *eng = req->route_data;
  struct herald_tap *tap = eng->tap;
  tap->last_request_ms = uv_now(eng->loop);
  eng->tap_active = 1;
  uv_timer_start(&tap->timer, on_timer, 100, 100);
  tap_query q;
  parse_query(req->query, &q);
  if (q.after + 1 < tap->next_seq) { /* something to give now (maybe filtered out: then wait) */
    herald_buf b = HERALD_BUF_INIT;
    size_t n = answer(tap, &q, &b);
    if (n > 0 || q.after == 0) {
      herald_http_respond(req, 200, "application/x-ndjson", NULL, b.data, b.len);
      herald_buf_free(&b);
      return;
    }
    herald_buf_free(&b);
  }
  waiter *w = herald_xcalloc(1, sizeof *w);
  w->req = req;
  w->deadline = uv_now(eng->loop) + TAP_WAIT_MS;
  w->next = tap->waiters;
  tap->waiters = w;
}

int herald_tap_wants(herald_engine *eng, const char *event_id, int is_new_event) {
  struct herald_tap *tap = eng->tap;
  if (!tap || !eng->tap_active) return 0;
  if (is_new_event) {
    uint64_t now = uv_now(eng->loop);
    if (now - tap->window_ms >= 100) { /* tenth-of-a-second windows: a burst is caught fast */
      uint32_t k = tap->window_events / (TAP_EVENT_BUDGET / 10) + 1;
      tap->k = now - tap->window_ms < 200 ? k : 1; /* an idle gap starts again at 1 */
      tap->window_ms = now;
      tap->window_events = 0;
    }
    tap->window_events++;
  }
  if (tap->k <= 1) return 1;
  if (!event_id) return ++tap->outcome_n % tap->k == 0;
  return fnv(event_id) % tap->k == 0;
}

void herald_tap_record(herald_engine *eng, const char *kind, const char *source,
                       const char *sensor, const char *trigger, const char *event_id,
                       const char *fields) {
  struct herald_tap *tap = eng->tap;
  if (!tap || !eng->tap_active) return;
  uint64_t seq = tap->next_seq++;
  tap_rec *r = &tap->ring[seq % TAP_RING];
  rec_clear(r);
  r->seq = seq;
  r->kind = herald_xstrdup(kind);
  r->source = dup_or_null(source);
  r->sensor = dup_or_null(sensor);
  r->trigger = dup_or_null(trigger);
  r->has_eid = event_id != NULL; /* without an id (outcomes): never sampled out */
  r->eid_hash = event_id ? fnv(event_id) : 0;
  char ts[40];
  herald_format_rfc3339(herald_now_ns(), ts, sizeof ts);
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_printf(&b, "{\"seq\":%llu,\"ts\":\"%s\",\"kind\":\"%s\"", (unsigned long long)seq, ts, kind);
  if (fields && *fields) {
    herald_buf_putc(&b, ',');
    herald_buf_puts(&b, fields);
  }
  herald_buf_putc(&b, '}');
  r->line = herald_xstrdup(herald_buf_cstr(&b));
  herald_buf_free(&b);
  /* wake the waiting readers this record matters to */
  for (waiter **pp = &tap->waiters; *pp;) {
    waiter *w = *pp;
    tap_query q;
    parse_query(w->req->query, &q);
    if (!matches(r, &q)) {
      pp = &w->next;
      continue;
    }
    *pp = w->next;
    respond(tap, w->req);
    free(w);
  }
}

void herald__tap_start(herald_engine *eng, herald_http_server *admin, const char *token) {
  struct herald_tap *tap = herald_xcalloc(1, sizeof *tap);
  tap->eng = eng;
  tap->next_seq = 1;
  tap->k = 1;
  uv_timer_init(eng->loop, &tap->timer);
  tap->timer.data = tap;
  tap->timer_ready = 1;
  uv_unref((uv_handle_t *)&tap->timer);
  eng->tap = tap;
  herald_http_route r = {.path = "/tap", .method = "GET", .bearer_token = token,
                         .handler = on_tap, .data = eng};
  herald_http_server_add_route(admin, &r);
}

static void timer_closed(uv_handle_t *h) {
  struct herald_tap *tap = h->data;
  for (size_t i = 0; i < TAP_RING; i++) rec_clear(&tap->ring[i]);
  free(tap);
}

void herald__tap_close(herald_engine *eng) {
  struct herald_tap *tap = eng->tap;
  if (!tap) return;
  eng->tap = NULL;
  eng->tap_active = 0;
  while (tap->waiters) {
    waiter *w = tap->waiters;
    tap->waiters = w->next;
    respond(tap, w->req);
    free(w);
  }
  uv_timer_stop(&tap->timer);
  uv_close((uv_handle_t *)&tap->timer, timer_closed);
}
