/*
 * bus_embedded.c: the in-process event bus (the default; one process, no peers).
 *
 *   publish(ev) --> [publish queue] --idle pass--> route by (source, subject)
 *                                                   |-> sub A queue --deliver (<= max_inflight)
 *                                                   '-> sub B queue --deliver
 *   ack(delivery): the sub may take the next one; the event leaves the bus when every
 *   subscription that got it has acked.
 *
 * The bus holds at most `capacity` events (published, not yet fully acked). At capacity a
 * publish fails at once with HERALD_EBUSFULL, so a slow sensor slows its producers instead of
 * growing memory. Work happens in a uv_idle pass (never inside publish or ack), bounded per
 * pass so sockets keep being served under load. Events nobody subscribes to are counted and
 * dropped: the embedded bus has no retention (JetStream does).
 *
 * Durable (--bus-dir, bus_log.h): publish appends the event to the log and the publish
 * callback (the webhook's 200) runs once its group commit is on disk; only then is the event
 * routed. When every subscription has acked it, a done record is appended. At start the log
 * hands back what was published and not done, routed before anything new: the at-least-once
 * contract of JetStream (an event may be delivered again after a crash, none is lost).
 */
#include "bus.h"
#include "bus_log.h"
#include "common.h"

#include <string.h>

#define ROUTE_BUCKETS 1024
#define DEFAULT_INFLIGHT 256
#define PASS_BUDGET 2048

typedef struct emsg emsg;
typedef struct esub esub;

struct emsg {
  herald_event *ev;
  uint32_t pending; /* deliveries not yet acked */
  herald_bus_publish_cb cb;
  void *cbdata;
  int lost; /* already handed to leftover's lose() */
  int keep; /* durable: a delivery was dropped unacked, so no done record (redelivered) */
  uint32_t seg; /* durable: its log segment and sequence number */
  uint64_t seq;
  emsg *next;
};

struct herald_bus_delivery {
  emsg *msg;
  esub *sub;
  herald_bus_delivery *next;
};

struct esub {
  herald_bus_sub *pub;              /* NULL once unsubscribed (the caller may free it) */
  uint32_t bucket;                  /* in routes[] */
  uint32_t inflight, max_inflight;
  herald_bus_delivery *head, *tail; /* waiting to be delivered */
  esub *route_next;                 /* chain in the route bucket */
  esub *ready_next;
  int ready;  /* in the ready list */
  int closed; /* unsubscribed; freed when inflight drops to 0 */
};

typedef struct ebus {
  herald_bus base;
  uv_idle_t idle;
  int idle_active;
  uint32_t capacity;
  emsg *pub_head, *pub_tail;
  esub *ready_head, *ready_tail;
  esub *routes[ROUTE_BUCKETS];
  herald_bus_stats stats;
  herald_bus_close_cb close_cb;
  int closing;
  int paused;                       /* the drain's deadline: no more deliveries */
  struct nak_timer *naks;           /* delayed naks, closed with the bus */
  herald_bus_log *log;              /* durable: the log; NULL in memory */
  emsg *sync_head, *sync_tail;      /* durable: appended, waiting for their commit */
} ebus;

static uint32_t route_hash(const char *source, const char *subject) {
  uint32_t h = 2166136261u;
  for (const char *p = source; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
  h = (h ^ 0x1f) * 16777619u;
  for (const char *p = subject; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
  return h;
}

static void wake(ebus *b) {
  if (!b->idle_active && !b->closing) {
    b->idle_active = 1;
    extern void herald__bus_embedded_pass(uv_idle_t *);
    uv_idle_start(&b->idle, herald__bus_embedded_pass);
  }
}

static void mark_ready(ebus *b, esub *s) {
  if (s->ready || s->closed || b->paused) return;
  s->ready = 1;
  s->ready_next = NULL;
  if (b->ready_tail) b->ready_tail->ready_next = s;
  else b->ready_head = s;
  b->ready_tail = s;
  wake(b);
}

static void msg_release(ebus *b, emsg *m) {
  if (b->log && !m->keep) herald_bus_log_done(b->log, m->seq, m->seg);
  herald_event_unref(m->ev);
  free(m);
  b->stats.in_bus--;
}

static int eb_publish(herald_bus *bus, herald_event *ev, herald_bus_publish_cb cb, void *data) {
  ebus *b = (ebus *)bus;
  if (b->closing) return HERALD_ECLOSED;
  if (b->stats.in_bus >= b->capacity) {
    b->stats.rejected++;
    return HERALD_EBUSFULL;
  }
  emsg *m = malloc(sizeof *m);
  if (!m) return HERALD_ENOMEM;
  herald_event_ref(ev);
  m->ev = ev;
  m->pending = 0;
  m->lost = 0;
  m->keep = 0;
  m->cb = cb;
  m->cbdata = data;
  m->next = NULL;
  if (b->log) { /* routed once on disk (committed) */
    m->seq = herald_bus_log_append(b->log, ev, &m->seg);
    if (m->seq == 0) { /* the log failed a write: refuse, as JetStream without a PubAck */
      herald_event_unref(ev);
      free(m);
      b->stats.rejected++;
      return HERALD_EIO;
    }
    if (b->sync_tail) b->sync_tail->next = m;
    else b->sync_head = m;
    b->sync_tail = m;
    b->stats.in_bus++;
    b->stats.published++;
    return 0;
  }
  if (b->pub_tail) b->pub_tail->next = m;
  else b->pub_head = m;
  b->pub_tail = m;
  b->stats.in_bus++;
  b->stats.published++;
  wake(b);
  return 0;
}

/* Routes one published event into the queues of the subscriptions that match it. */
static void route(ebus *b, emsg *m) {
  uint32_t h = route_hash(m->ev->source, m->ev->subject) % ROUTE_BUCKETS;
  for (esub *s = b->routes[h]; s; s = s->route_next) {
    if (s->closed || strcmp(s->pub->source, m->ev->source) != 0 ||
        strcmp(s->pub->subject, m->ev->subject) != 0)
      continue;
    herald_bus_delivery *d = malloc(sizeof *d);
    if (HERALD_FAILS(d != NULL)) continue; /* that subscription misses this one event */
    d->msg = m;
    d->sub = s;
    d->next = NULL;
    if (s->tail) s->tail->next = d;
    else s->head = d;
    s->tail = d;
    m->pending++;
    mark_ready(b, s);
  }
  herald_bus_publish_cb cb = m->cb;
  void *cbdata = m->cbdata;
  if (m->pending == 0) {
    b->stats.unrouted++;
    msg_release(b, m);
  }
  if (cb) cb(cbdata, 0);
}

void herald__bus_embedded_pass(uv_idle_t *idle) {
  ebus *b = idle->data;
  int budget = PASS_BUDGET;
  while (b->pub_head && budget-- > 0) {
    emsg *m = b->pub_head;
    b->pub_head = m->next;
    if (!b->pub_head) b->pub_tail = NULL;
    route(b, m);
  }
  /* Deliver round-robin: each ready subscription gets up to its window, then goes to the back. */
  esub *stop_at = b->ready_tail;
  while (b->ready_head && budget > 0) {
    esub *s = b->ready_head;
    b->ready_head = s->ready_next;
    if (!b->ready_head) b->ready_tail = NULL;
    s->ready = 0;
    while (s->head && s->inflight < s->max_inflight && !s->closed && budget-- > 0) {
      herald_bus_delivery *d = s->head;
      s->head = d->next;
      if (!s->head) s->tail = NULL;
      s->inflight++;
      b->stats.delivered++;
      s->pub->deliver(s->pub, d, d->msg->ev);
    }
    if (s->head && s->inflight < s->max_inflight) mark_ready(b, s);
    if (s == stop_at) break;
  }
  if (!b->pub_head && !b->ready_head) {
    b->idle_active = 0;
    uv_idle_stop(&b->idle);
  }
}

static int eb_subscribe(herald_bus *bus, herald_bus_sub *sub) {
  ebus *b = (ebus *)bus;
  esub *s = calloc(1, sizeof *s);
  if (!s) return HERALD_ENOMEM;
  s->pub = sub;
  s->max_inflight = sub->max_inflight ? sub->max_inflight : DEFAULT_INFLIGHT;
  sub->priv = s;
  uint32_t h = route_hash(sub->source, sub->subject) % ROUTE_BUCKETS;
  s->bucket = h;
  s->route_next = b->routes[h];
  b->routes[h] = s;
  return 0;
}

/* Frees an unsubscribed subscription once nothing of it is in flight. s->pub is not touched:
 * the caller may have freed it right after unsubscribing. */
static void sub_free(ebus *b, esub *s) {
  for (esub **pp = &b->routes[s->bucket]; *pp; pp = &(*pp)->route_next) {
    if (*pp == s) {
      *pp = s->route_next;
      break;
    }
  }
  if (s->ready) { /* unlink from the ready list */
    esub *prev = NULL;
    for (esub *r = b->ready_head; r; prev = r, r = r->ready_next) {
      if (r != s) continue;
      if (prev) prev->ready_next = r->ready_next;
      else b->ready_head = r->ready_next;
      if (b->ready_tail == r) b->ready_tail = prev;
      break;
    }
  }
  free(s);
}

/* Ends a delivery: acked, or dropped (unsubscribed or closing: a durable bus keeps the event). */
static void delivery_done(ebus *b, herald_bus_delivery *d, int acked) {
  emsg *m = d->msg;
  free(d);
  if (!acked) m->keep = 1;
  else b->stats.acked++;
  if (--m->pending == 0) msg_release(b, m);
}

static void eb_unsubscribe(herald_bus *bus, herald_bus_sub *sub) {
  ebus *b = (ebus *)bus;
  esub *s = sub->priv;
  if (!s) return;
  s->closed = 1;
  sub->priv = NULL;
  s->pub = NULL;
  while (s->head) { /* undelivered events are released for this subscription */
    herald_bus_delivery *d = s->head;
    s->head = d->next;
    delivery_done(b, d, 0);
  }
  s->tail = NULL;
  if (s->inflight == 0) sub_free(b, s);
}

static void eb_ack(herald_bus *bus, herald_bus_delivery *d) {
  ebus *b = (ebus *)bus;
  esub *s = d->sub;
  delivery_done(b, d, 1);
  s->inflight--;
  if (s->closed) {
    if (s->inflight == 0) sub_free(b, s);
    return;
  }
  if (s->head) mark_ready(b, s);
}

typedef struct nak_timer {
  uv_timer_t timer;
  ebus *bus;
  herald_bus_delivery *d;
  struct nak_timer *next, *prev;
} nak_timer;

static void nak_requeue(ebus *b, herald_bus_delivery *d) {
  esub *s = d->sub;
  s->inflight--;
  if (s->closed) {
    delivery_done(b, d, 0);
    if (s->inflight == 0) sub_free(b, s);
    return;
  }
  d->next = s->head; /* redelivered first: keeps the subscription's order */
  s->head = d;
  if (!s->tail) s->tail = d;
  mark_ready(b, s);
}

static void nak_timer_close(uv_handle_t *h) {
  free(h->data);
}

static void nak_timer_unlink(ebus *b, nak_timer *nt) {
  if (nt->prev) nt->prev->next = nt->next;
  else b->naks = nt->next;
  if (nt->next) nt->next->prev = nt->prev;
}

static void nak_timer_fire(uv_timer_t *t) {
  nak_timer *nt = t->data;
  nak_timer_unlink(nt->bus, nt);
  nak_requeue(nt->bus, nt->d);
  uv_close((uv_handle_t *)t, nak_timer_close);
}

static void eb_nak(herald_bus *bus, herald_bus_delivery *d, uint64_t delay_ms) {
  ebus *b = (ebus *)bus;
  nak_timer *nt = delay_ms ? malloc(sizeof *nt) : NULL;
  if (!nt) {
    nak_requeue(b, d);
    return;
  }
  nt->bus = b;
  nt->d = d;
  nt->prev = NULL;
  nt->next = b->naks;
  if (b->naks) b->naks->prev = nt;
  b->naks = nt;
  uv_timer_init(b->base.loop, &nt->timer);
  nt->timer.data = nt;
  uv_timer_start(&nt->timer, nak_timer_fire, delay_ms, 0);
}

static void eb_stats(herald_bus *bus, herald_bus_stats *out) {
  ebus *b = (ebus *)bus;
  *out = b->stats;
  out->connected = 1;
}

/* Frees the bus once its handles (and its log) are closed. */
static void eb_finish(ebus *b) {
  while (b->pub_head) { /* durable ones were confirmed already (cb NULL) and stay in the log */
    emsg *m = b->pub_head;
    b->pub_head = m->next;
    m->keep = 1;
    if (m->cb) m->cb(m->cbdata, HERALD_ECLOSED);
    msg_release(b, m);
  }
  for (int i = 0; i < ROUTE_BUCKETS; i++) {
    while (b->routes[i]) {
      esub *s = b->routes[i];
      b->routes[i] = s->route_next;
      while (s->head) {
        herald_bus_delivery *d = s->head;
        s->head = d->next;
        delivery_done(b, d, 0);
      }
      if (s->pub) s->pub->priv = NULL;
      free(s);
    }
  }
  herald_bus_close_cb cb = b->close_cb;
  free(b);
  if (cb) cb(NULL);
}

static void log_closed(void *data) {
  ebus *b = data;
  b->log = NULL;
  eb_finish(b);
}

static void eb_closed(uv_handle_t *h) {
  ebus *b = h->data;
  if (b->log) herald_bus_log_close(b->log, log_closed, b); /* a last commit, then eb_finish */
  else eb_finish(b);
}

static void eb_close(herald_bus *bus, herald_bus_close_cb cb) {
  ebus *b = (ebus *)bus;
  b->closing = 1;
  while (b->naks) { /* a delayed nak's delivery goes back to its queue, freed with it below */
    nak_timer *nt = b->naks;
    nak_timer_unlink(b, nt);
    uv_timer_stop(&nt->timer);
    nak_requeue(b, nt->d);
    uv_close((uv_handle_t *)&nt->timer, nak_timer_close);
  }
  uv_idle_stop(&b->idle);
  b->close_cb = cb;
  uv_close((uv_handle_t *)&b->idle, eb_closed);
}

static void eb_pause(herald_bus *bus) {
  ebus *b = (ebus *)bus;
  b->paused = 1;
  for (esub *s = b->ready_head; s; s = s->ready_next) s->ready = 0;
  b->ready_head = b->ready_tail = NULL;
}

static uint64_t eb_leftover(herald_bus *bus, void (*lose)(void *data, herald_event *ev), void *data) {
  ebus *b = (ebus *)bus;
  if (b->log) return b->stats.in_bus; /* all kept in the log */
  uint64_t n = 0;
  /* Events still waiting in a subscription (never delivered, or nak'd back at the deadline);
   * those not yet routed have not been confirmed to their producer (it gets HERALD_ECLOSED). */
  for (int i = 0; i < ROUTE_BUCKETS; i++)
    for (esub *s = b->routes[i]; s; s = s->route_next)
      for (herald_bus_delivery *d = s->head; d; d = d->next)
        if (!d->msg->lost) {
          d->msg->lost = 1;
          n++;
          if (lose) lose(data, d->msg->ev);
        }
  return n;
}

static const herald_bus_ops embedded_ops = {
    .name = "embedded",
    .publish = eb_publish,
    .subscribe = eb_subscribe,
    .unsubscribe = eb_unsubscribe,
    .ack = eb_ack,
    .nak = eb_nak,
    .stats = eb_stats,
    .close = eb_close,
    .pause = eb_pause,
    .leftover = eb_leftover,
};

/* The log's group commit is done: those publishes are durable; confirm and route them. */
static void on_committed(void *data, uint64_t upto, int status) {
  ebus *b = data;
  while (b->sync_head && b->sync_head->seq <= upto) {
    emsg *m = b->sync_head;
    b->sync_head = m->next;
    if (!b->sync_head) b->sync_tail = NULL;
    m->next = NULL;
    herald_bus_publish_cb cb = m->cb;
    void *cbdata = m->cbdata;
    m->cb = NULL;
    if (status != 0) { /* not on disk: refused, as a JetStream publish without PubAck */
      m->keep = 1;
      b->stats.published--;
      b->stats.rejected++;
      msg_release(b, m);
    } else {
      if (b->pub_tail) b->pub_tail->next = m;
      else b->pub_head = m;
      b->pub_tail = m;
      wake(b);
    }
    if (cb) cb(cbdata, status);
  }
}

/* An event the log had published and not done: routed first, confirmed long ago. */
static void on_found(void *data, uint64_t seq, uint32_t seg, herald_event *ev) {
  ebus *b = data;
  emsg *m = herald_xcalloc(1, sizeof *m);
  herald_event_ref(ev);
  m->ev = ev;
  m->seq = seq;
  m->seg = seg;
  if (b->pub_tail) b->pub_tail->next = m;
  else b->pub_head = m;
  b->pub_tail = m;
  b->stats.in_bus++;
  wake(b);
}

herald_bus *herald_bus_embedded_open(uv_loop_t *loop, uint32_t capacity, const char *dir, int *err) {
  ebus *b = (ebus *)herald_bus_embedded_new(loop, capacity);
  b->log = herald_bus_log_open(loop, dir, on_found, on_committed, b, err);
  if (!b->log) {
    b->closing = 1;
    uv_idle_stop(&b->idle);
    uv_close((uv_handle_t *)&b->idle, eb_closed);
    return NULL;
  }
  return &b->base;
}

herald_bus *herald_bus_embedded_new(uv_loop_t *loop, uint32_t capacity) {
  ebus *b = herald_xcalloc(1, sizeof *b);
  b->base.ops = &embedded_ops;
  b->base.loop = loop;
  b->capacity = capacity ? capacity : 16384;
  b->stats.capacity = b->capacity;
  uv_idle_init(loop, &b->idle);
  b->idle.data = b;
  return &b->base;
}
