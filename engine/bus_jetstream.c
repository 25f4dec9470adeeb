/*
 * bus_jetstream.c: the event bus on NATS JetStream (`herald run|eventsource|sensor --bus nats://...`),
 * wire-compatible with Argo Events' JetStream bus.
 *
 *   stream "default", subjects "default.*.*"; one message per event on
 *   "default.<eventSourceName>.<eventName>", body = the structured CloudEvent JSON,
 *   header Nats-Msg-Id = event id (server-side de-dup inside the 300 s duplicates window).
 *
 *   loop: publish(ev) --JSON, window check--> pub queue --cond--> conn worker
 *   conn worker: js_PublishMsgAsync (no wait) ... nats.c thread: PubAck/timeout --> done list
 *   --uv_async_send--> loop: cb(data, 0 | HERALD_EIO)
 *
 *   fetch worker (one per subscription): durable pull consumer "<sensor>/<dep>" made safe,
 *   natsSubscription_Fetch(up to 128, room in the window) --decode CloudEvent--> ready list
 *   --uv_async_send--> loop: de-dup by id, sub->deliver --> ack/nak --> ack queue
 *   --cond--> conn worker: natsMsg_Ack / natsMsg_NakWithDelay (asynchronous, never AckSync)
 *
 * The loop never calls nats.c (connect, flushes and full socket buffers could block it); the
 * workers never touch Lua or herald_event refcounts. Publish is windowed: at most `window`
 * events wait for their PubAck; beyond that publish refuses at once with HERALD_EBUSFULL (the
 * webhook answers 503). While the connection is down, queued publishes complete at once with
 * HERALD_EIO (not handed to nats.c, so a reconnect does not replay them); one in nats.c's hands
 * when the connection drops completes with its PubAck after the reconnect, or HERALD_EIO after
 * PUBACK_TIMEOUT_MS. nats.c reconnects for ever with a capped, jittered backoff; the pull
 * consumers live on the server, so fetching simply resumes.
 *
 * A redelivered event (same id) that a subscription already processed, or is processing, is
 * acked without being delivered again (per-subscription ring of the last DEDUP_SLOTS ids).
 */
#include "buf.h"
#include "bus.h"
#include "common.h"
#include "log.h"

#include <nats/nats.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define STREAM_NAME "default"
#define STREAM_SUBJECTS "default.*.*"
#define DEFAULT_WINDOW 4096
#define DEFAULT_INFLIGHT 256
#define FETCH_BATCH 128
#define FETCH_EXPIRY_MS 500
#define PUBACK_TIMEOUT_MS 5000
#define ACK_WAIT_NS (60 * 1000000000LL)
#define RETRY_WAIT_NS (250 * 1000000ull)
#define CLOSE_WAIT_NS (2 * 1000000000ull)
#define DEDUP_SLOTS 4096
#define PUB_BUCKETS 4096
#define MAX_NOTES 32

enum { EV_CONNECTED = 1, EV_DISCONNECTED = 2, EV_RECONNECTED = 4 };

typedef struct jbus jbus;
typedef struct jsub jsub;

/* One publish: built on the loop, published by the conn worker, completed on the loop. */
typedef struct jpub {
  herald_bus_publish_cb cb;
  void *cbdata;
  char *subject; /* one allocation: subject NUL body */
  char *body;
  size_t len;
  char id[33];
  natsMsg *msg; /* while nats.c holds it (key of the pending table) */
  int status;
  struct jpub *next;  /* queue / done list */
  struct jpub *hnext; /* pending table chain */
} jpub;

/* One fetched message. Made by a fetch worker; delivered, then acked or naked, on the loop;
 * the ack itself is sent by the conn worker, which frees it. */
struct herald_bus_delivery {
  jsub *sub;
  natsMsg *msg;
  herald_event *ev;  /* NULL once handed back to the conn worker */
  int64_t nak_delay; /* < 0: ack; >= 0: nak with this delay (ms) */
  herald_bus_delivery *next;
};

typedef struct dedup_slot {
  char id[33];
  int32_t next; /* next slot in the bucket, -1 = end */
  uint32_t bucket;
} dedup_slot;

struct jsub {
  jbus *bus;
  herald_bus_sub *pub; /* the caller's; NULL once unsubscribed (loop only) */
  char *consumer;      /* the durable name made safe for NATS */
  char *filter;        /* default.<source>.<subject> */
  char *label;         /* for logs: the durable as given */
  uint32_t max_inflight;
  natsSubscription *ns; /* the fetch worker's */
  uv_thread_t thread;
  uv_cond_t cond;
  /* under bus->mu: */
  uint32_t outstanding; /* fetched and not yet acked or naked */
  int closed;
  /* loop only: */
  dedup_slot *slots;
  int32_t *buckets;
  uint32_t ring_pos;
  jsub *next;
};

struct jbus {
  herald_bus base;
  herald_logger log;
  char *url;
  uint32_t window;
  natsOptions *opts;
  natsConnection *nc;
  jsCtx *js;
  uv_thread_t thread;
  uv_mutex_t mu;
  uv_cond_t cond;
  uv_async_t async;
  /* under mu: */
  jpub *pub_head, *pub_tail;                  /* loop -> conn worker */
  herald_bus_delivery *ack_head, *ack_tail;   /* loop -> conn worker */
  jpub *done_head, *done_tail;                /* nats.c -> loop */
  herald_bus_delivery *ready_head, *ready_tail; /* fetch workers -> loop */
  jpub *pending[PUB_BUCKETS];                 /* in nats.c, by natsMsg pointer */
  char *notes[MAX_NOTES];                     /* log lines from other threads */
  int note_levels[MAX_NOTES];
  int nnotes, notes_dropped;
  int events;
  int connected, stream_ready, stop, exited, closed_seen;
  /* loop only: */
  jsub *subs;
  uint32_t pubs_inflight, deliveries_inflight;
  herald_bus_stats stats;
  uint64_t duplicates;
  int closing;
  herald_bus_close_cb close_cb;
};

/* ---- helpers usable from any thread ---- */

/* Queues a log line for the loop (workers must not log themselves: loggers are not shared). */
static void note(jbus *b, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note(jbus *b, int level, const char *fmt, ...) {
  char line[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  uv_mutex_lock(&b->mu);
  if (b->nnotes < MAX_NOTES) {
    b->notes[b->nnotes] = strdup(line);
    b->note_levels[b->nnotes++] = level;
  } else {
    b->notes_dropped++;
  }
  uv_mutex_unlock(&b->mu);
  uv_async_send(&b->async);
}

static const char *status_text(natsStatus s) {
  const char *e = nats_GetLastError(NULL);
  return e && *e ? e : natsStatus_GetText(s);
}

static size_t pub_bucket(const natsMsg *m) {
  return ((uintptr_t)m >> 4) % PUB_BUCKETS;
}

/* A token of a NATS subject: non-empty, no separator, wildcard or whitespace. */
static int subject_token_ok(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (*s == '.' || *s == '*' || *s == '>' || (unsigned char)*s <= ' ' || *s == 0x7f) return 0;
  return 1;
}

/* ---- nats.c callbacks (nats.c's threads) ---- */

static void conn_event(jbus *b, int ev) {
  uv_mutex_lock(&b->mu);
  b->events |= ev;
  b->connected = ev != EV_DISCONNECTED;
  if (ev != EV_DISCONNECTED) b->stream_ready = 0; /* re-check the stream after a (re)connect */
  uv_cond_broadcast(&b->cond);
  uv_mutex_unlock(&b->mu);
  uv_async_send(&b->async);
}

static void on_connected(natsConnection *nc, void *c) { (void)nc, conn_event(c, EV_CONNECTED); }
static void on_disconnected(natsConnection *nc, void *c) { (void)nc, conn_event(c, EV_DISCONNECTED); }
static void on_reconnected(natsConnection *nc, void *c) { (void)nc, conn_event(c, EV_RECONNECTED); }

static void on_closed(natsConnection *nc, void *c) {
  (void)nc;
  jbus *b = c;
  uv_mutex_lock(&b->mu);
  b->closed_seen = 1;
  uv_cond_broadcast(&b->cond);
  uv_mutex_unlock(&b->mu);
}

/* Backoff: 100 ms doubling to 2 s, plus up to 25% jitter; attempts are unlimited. */
static int64_t reconnect_delay(natsConnection *nc, int attempts, void *c) {
  (void)nc, (void)c;
  int64_t d = 100;
  for (int i = 1; i < attempts && d < 2000; i++) d *= 2;
  if (d > 2000) d = 2000;
  return d + (int64_t)(rand() % (int)(d / 4 + 1));
}

/* PubAck, server error or timeout for one js_PublishMsgAsync. */
static void on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *c) {
  (void)js;
  jbus *b = c;
  uv_mutex_lock(&b->mu);
  jpub *p = NULL;
  char id[33] = "?";
  for (jpub **pp = &b->pending[pub_bucket(msg)]; *pp; pp = &(*pp)->hnext) {
    if ((*pp)->msg == msg) {
      p = *pp;
      *pp = p->hnext;
      break;
    }
  }
  if (p) {
    memcpy(id, p->id, sizeof id);
    p->msg = NULL;
    p->status = pa ? 0 : HERALD_EIO;
    p->next = NULL;
    if (b->done_tail) b->done_tail->next = p;
    else b->done_head = p;
    b->done_tail = p;
  }
  uv_mutex_unlock(&b->mu);
  if (!pa && pae)
    note(b, HLOG_WARN, "event %s not stored: %s", id,
         pae->ErrText && *pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
  natsMsg_Destroy(msg);
  uv_async_send(&b->async);
}

/* ---- the conn worker ---- */

/* Looks up the stream; creates it with Argo's defaults when it is missing. */
static int ensure_stream(jbus *b) {
  jsStreamInfo *si = NULL;
  jsErrCode jerr = 0;
  natsStatus s = js_GetStreamInfo(&si, b->js, STREAM_NAME, NULL, &jerr);
  if (s == NATS_OK) {
    jsStreamInfo_Destroy(si);
    return 1;
  }
  if (s != NATS_NOT_FOUND) {
    note(b, HLOG_WARN, "cannot look up stream %s: %s", STREAM_NAME, status_text(s));
    return 0;
  }
  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  const char *subjects[] = {STREAM_SUBJECTS};
  sc.Name = STREAM_NAME;
  sc.Subjects = subjects;
  sc.SubjectsLen = 1;
  sc.Storage = js_FileStorage;
  sc.Retention = js_LimitsPolicy;
  sc.Discard = js_DiscardOld;
  sc.MaxMsgs = 1000000;
  sc.MaxBytes = 1024LL * 1024 * 1024;
  sc.MaxAge = 72LL * 3600 * 1000000000LL;
  sc.Duplicates = 300LL * 1000000000LL;
  sc.Replicas = 1;
  s = js_AddStream(&si, b->js, &sc, NULL, &jerr);
  if (s != NATS_OK && jerr != JSStreamNameExistErr) {
    note(b, HLOG_WARN, "cannot create stream %s: %s", STREAM_NAME, status_text(s));
    return 0;
  }
  if (si) jsStreamInfo_Destroy(si);
  note(b, HLOG_INFO, "created stream %s (subjects %s, file storage, duplicates window 300s)",
       STREAM_NAME, STREAM_SUBJECTS);
  return 1;
}

static void finish_pub(jbus *b, jpub *p, int status) {
  p->status = status;
  p->next = NULL;
  uv_mutex_lock(&b->mu);
  if (b->done_tail) b->done_tail->next = p;
  else b->done_head = p;
  b->done_tail = p;
  uv_mutex_unlock(&b->mu);
}

static void worker_publish(jbus *b, jpub *batch, int stop) {
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = PUBACK_TIMEOUT_MS;
  int failed_down = 0;
  while (batch) {
    jpub *p = batch;
    batch = p->next;
    if (stop) {
      finish_pub(b, p, HERALD_ECLOSED);
      continue;
    }
    if (!b->js || natsConnection_Status(b->nc) != NATS_CONN_STATUS_CONNECTED) {
      finish_pub(b, p, HERALD_EIO); /* fail fast: not handed to nats.c */
      failed_down++;
      continue;
    }
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, p->subject, NULL, p->body, (int)p->len);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, "Nats-Msg-Id", p->id);
    if (s != NATS_OK) {
      natsMsg_Destroy(m);
      finish_pub(b, p, HERALD_ENOMEM);
      continue;
    }
    p->msg = m;
    uv_mutex_lock(&b->mu); /* registered before publishing: the PubAck may come at once */
    size_t h = pub_bucket(m);
    p->hnext = b->pending[h];
    b->pending[h] = p;
    uv_mutex_unlock(&b->mu);
    natsMsg *owned = m;
    s = js_PublishMsgAsync(b->js, &owned, &po);
    if (s != NATS_OK) {
      uv_mutex_lock(&b->mu);
      for (jpub **pp = &b->pending[h]; *pp; pp = &(*pp)->hnext)
        if (*pp == p) {
          *pp = p->hnext;
          break;
        }
      uv_mutex_unlock(&b->mu);
      natsMsg_Destroy(owned); /* no-op if nats.c kept it */
      p->msg = NULL;
      note(b, HLOG_WARN, "publish of event %s failed: %s", p->id, status_text(s));
      finish_pub(b, p, HERALD_EIO);
    }
  }
  if (failed_down) note(b, HLOG_WARN, "%d event(s) refused: not connected to %s", failed_down, b->url);
}

static void worker_acks(jbus *b, herald_bus_delivery *d) {
  while (d) {
    herald_bus_delivery *next = d->next;
    natsStatus s = d->nak_delay < 0 ? natsMsg_Ack(d->msg, NULL)
                                    : natsMsg_NakWithDelay(d->msg, d->nak_delay, NULL);
    if (s != NATS_OK) /* the server redelivers it after AckWait; de-dup keeps triggers quiet */
      note(b, HLOG_DEBUG, "ack not sent: %s", status_text(s));
    natsMsg_Destroy(d->msg);
    free(d);
    d = next;
  }
}

static void worker_main(void *arg) {
  jbus *b = arg;
  natsStatus s = natsConnection_Connect(&b->nc, b->opts);
  if (s == NATS_OK) conn_event(b, EV_CONNECTED);
  else if (s != NATS_NOT_YET_CONNECTED) note(b, HLOG_ERROR, "cannot connect to %s: %s", b->url, status_text(s));
  if (b->nc) {
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = PUBACK_TIMEOUT_MS;
    jo.PublishAsync.MaxPending = (int64_t)b->window * 2;
    jo.PublishAsync.AckHandler = on_puback;
    jo.PublishAsync.AckHandlerClosure = b;
    jsCtx *js = NULL;
    if (natsConnection_JetStream(&js, b->nc, &jo) != NATS_OK) js = NULL;
    uv_mutex_lock(&b->mu);
    b->js = js;
    uv_mutex_unlock(&b->mu);
  }
  for (;;) {
    uv_mutex_lock(&b->mu);
    while (!b->pub_head && !b->ack_head && !b->stop && !(b->js && b->connected && !b->stream_ready))
      uv_cond_wait(&b->cond, &b->mu);
    jpub *pubs = b->pub_head;
    herald_bus_delivery *acks = b->ack_head;
    b->pub_head = b->pub_tail = NULL;
    b->ack_head = b->ack_tail = NULL;
    int stop = b->stop, need_stream = b->js && b->connected && !b->stream_ready;
    uv_mutex_unlock(&b->mu);
    if (need_stream && !stop) {
      int ok = ensure_stream(b);
      uv_mutex_lock(&b->mu);
      if (ok) b->stream_ready = 1;
      uv_cond_broadcast(&b->cond); /* fetch workers wait for the stream */
      if (!ok && !b->stop) uv_cond_timedwait(&b->cond, &b->mu, RETRY_WAIT_NS * 4);
      uv_mutex_unlock(&b->mu);
    }
    if (acks) worker_acks(b, acks);
    if (pubs) {
      worker_publish(b, pubs, stop);
      uv_async_send(&b->async);
    }
    if (stop) break;
  }
  /* Closing: wake and join the fetch workers, send the last acks, wait (bounded) for the
   * PubAcks still due, close. The loop no longer adds subscriptions. */
  for (jsub *s2 = b->subs; s2; s2 = s2->next) {
    uv_mutex_lock(&b->mu);
    uv_cond_broadcast(&s2->cond);
    uv_mutex_unlock(&b->mu);
  }
  for (jsub *s2 = b->subs; s2; s2 = s2->next) uv_thread_join(&s2->thread);
  uv_mutex_lock(&b->mu);
  herald_bus_delivery *acks = b->ack_head;
  b->ack_head = b->ack_tail = NULL;
  jpub *pubs = b->pub_head;
  b->pub_head = b->pub_tail = NULL;
  uv_mutex_unlock(&b->mu);
  worker_acks(b, acks);
  if (pubs) worker_publish(b, pubs, 1);
  if (b->nc) {
    if (natsConnection_Status(b->nc) == NATS_CONN_STATUS_CONNECTED) {
      if (b->js) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 2000;
        js_PublishAsyncComplete(b->js, &po);
      }
      natsConnection_FlushTimeout(b->nc, 1000);
    }
    natsConnection_Close(b->nc);
    uv_mutex_lock(&b->mu);
    uint64_t deadline = uv_hrtime() + CLOSE_WAIT_NS;
    while (!b->closed_seen && uv_hrtime() < deadline) uv_cond_timedwait(&b->cond, &b->mu, 50 * 1000000ull);
    uv_mutex_unlock(&b->mu);
  }
  for (jsub *s2 = b->subs; s2; s2 = s2->next) {
    natsSubscription_Destroy(s2->ns); /* destroy only: the durable consumer stays on the server */
    s2->ns = NULL;
  }
  if (b->js) jsCtx_Destroy(b->js);
  b->js = NULL;
  /* PubAcks that never came: nats.c calls no handler after the close. */
  uv_mutex_lock(&b->mu);
  for (int i = 0; i < PUB_BUCKETS; i++) {
    while (b->pending[i]) {
      jpub *p = b->pending[i];
      b->pending[i] = p->hnext;
      p->msg = NULL;
      p->status = HERALD_ECLOSED;
      p->next = NULL;
      if (b->done_tail) b->done_tail->next = p;
      else b->done_head = p;
      b->done_tail = p;
    }
  }
  b->exited = 1;
  uv_mutex_unlock(&b->mu);
  if (b->nc) natsConnection_Destroy(b->nc);
  b->nc = NULL;
  uv_async_send(&b->async);
}

/* ---- CloudEvent decoding (fetch workers) ---- */

/* Skips one JSON value at p (the whole text was validated first); returns the end. */
static const char *skip_value(const char *p, const char *end) {
  int depth = 0;
  do {
    if (p >= end) return end;
    char c = *p;
    if (c == '"') {
      for (p++; p < end && *p != '"'; p++)
        if (*p == '\\') p++;
      p++;
    } else if (c == '{' || c == '[') {
      depth++, p++;
    } else if (c == '}' || c == ']') {
      depth--, p++;
    } else if (c == ',' || c == ':' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      if (depth == 0) return p;
      p++;
    } else {
      while (p < end && !strchr(",}] \t\r\n", *p)) p++;
    }
  } while (depth > 0);
  return p;
}

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

static void put_utf8(herald_buf *b, unsigned cp) {
  char u[4];
  if (cp < 0x80) {
    herald_buf_putc(b, (char)cp);
  } else if (cp < 0x800) {
    u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f));
    herald_buf_append(b, u, 2);
  } else if (cp < 0x10000) {
    u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[2] = (char)(0x80 | (cp & 0x3f));
    herald_buf_append(b, u, 3);
  } else {
    u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f));
    herald_buf_append(b, u, 4);
  }
}

static unsigned hex4(const char *p) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v = v * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
  }
  return v;
}

/* Decodes the (validated) JSON string [p, end) starting at its quote into out (NUL-terminated);
 * returns 0, or -1 when it holds a NUL (not a usable attribute). */
static int json_string(const char *p, const char *end, herald_buf *out) {
  out->len = 0;
  for (p++; p < end && *p != '"'; p++) {
    if (*p != '\\') {
      herald_buf_putc(out, *p);
      continue;
    }
    p++;
    switch (*p) {
    case 'b': herald_buf_putc(out, '\b'); break;
    case 'f': herald_buf_putc(out, '\f'); break;
    case 'n': herald_buf_putc(out, '\n'); break;
    case 'r': herald_buf_putc(out, '\r'); break;
    case 't': herald_buf_putc(out, '\t'); break;
    case 'u': {
      unsigned cp = hex4(p + 1);
      p += 4;
      if (cp >= 0xd800 && cp < 0xdc00 && p + 6 < end && p[1] == '\\' && p[2] == 'u') {
        unsigned lo = hex4(p + 3);
        if (lo >= 0xdc00 && lo < 0xe000) {
          cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          p += 6;
        }
      }
      if (cp == 0) return -1;
      put_utf8(out, cp);
      break;
    }
    default: herald_buf_putc(out, *p); break;
    }
  }
  herald_buf_putc(out, '\0');
  return 0;
}

enum { F_ID, F_TIME, F_SOURCE, F_SUBJECT, F_TYPE, F_CT, F_N };
static const char *const field_names[F_N] = {"id", "time", "source", "subject", "type",
                                             "datacontenttype"};

/* Returns a new event from a structured-mode CloudEvent, or NULL with *why set. */
static herald_event *decode_event(const char *text, size_t len, const char **why) {
  if (!herald_json_valid(text, len, 256)) {
    *why = "not JSON";
    return NULL;
  }
  const char *p = skip_ws(text, text + len), *end = text + len;
  if (p >= end || *p != '{') {
    *why = "not a JSON object";
    return NULL;
  }
  herald_buf f[F_N];
  for (int i = 0; i < F_N; i++) f[i] = (herald_buf)HERALD_BUF_INIT;
  herald_buf key = HERALD_BUF_INIT;
  const char *data = "null";
  size_t data_len = 4;
  herald_event *ev = NULL;
  *why = "malformed attribute";
  p++;
  for (;;) {
    p = skip_ws(p, end);
    if (p < end && *p == '}') break;
    if (p >= end || *p != '"') goto out;
    const char *kend = skip_value(p, end);
    if (json_string(p, kend, &key) != 0) goto out;
    p = skip_ws(kend, end);
    if (p >= end || *p != ':') goto out;
    p = skip_ws(p + 1, end);
    const char *vend = skip_value(p, end);
    if (strcmp(key.data, "data") == 0) {
      data = p;
      data_len = (size_t)(vend - p);
    } else {
      for (int i = 0; i < F_N; i++) {
        if (strcmp(key.data, field_names[i]) != 0) continue;
        if (*p != '"' || json_string(p, vend, &f[i]) != 0) goto out;
      }
    }
    p = skip_ws(vend, end);
    if (p < end && *p == ',') p++;
  }
  for (int i = F_ID; i <= F_SUBJECT; i++) {
    if (!f[i].len) {
      *why = "missing id, time, source or subject";
      goto out;
    }
  }
  ev = herald_event_new_full(f[F_ID].data, f[F_TIME].data, f[F_SOURCE].data, f[F_SUBJECT].data,
                             f[F_TYPE].len ? f[F_TYPE].data : "",
                             f[F_CT].len ? f[F_CT].data : "application/json", data, data_len);
  if (!ev) *why = "out of memory";
out:
  for (int i = 0; i < F_N; i++) herald_buf_free(&f[i]);
  herald_buf_free(&key);
  return ev;
}

/* ---- fetch workers ---- */

static int sub_subscribe(jsub *s) {
  jbus *b = s->bus;
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = STREAM_NAME;
  so.Config.Durable = s->consumer;
  so.Config.AckPolicy = js_AckExplicit;
  so.Config.DeliverPolicy = js_DeliverNew; /* as Argo: events before the consumer are not seen */
  so.Config.MaxAckPending = (int64_t)s->max_inflight;
  so.Config.AckWait = ACK_WAIT_NS;
  jsErrCode jerr = 0;
  natsStatus st = js_PullSubscribe(&s->ns, b->js, s->filter, s->consumer, NULL, &so, &jerr);
  if (st != NATS_OK) {
    note(b, HLOG_WARN, "%s: cannot create consumer %s on %s: %s", s->label, s->consumer, s->filter,
         status_text(st));
    s->ns = NULL;
    return 0;
  }
  note(b, HLOG_INFO, "%s: consumer %s ready on %s", s->label, s->consumer, s->filter);
  return 1;
}

static void fetch_main(void *arg) {
  jsub *s = arg;
  jbus *b = s->bus;
  for (;;) {
    uv_mutex_lock(&b->mu);
    while (!b->stop && !s->closed &&
           (!b->connected || !b->stream_ready || !b->js || s->outstanding >= s->max_inflight))
      uv_cond_timedwait(&s->cond, &b->mu, RETRY_WAIT_NS); /* connection changes are polled */
    int done = b->stop || s->closed;
    uint32_t room = s->max_inflight - s->outstanding;
    uv_mutex_unlock(&b->mu);
    if (done) break;
    if (!s->ns && !sub_subscribe(s)) {
      uv_mutex_lock(&b->mu);
      if (!b->stop && !s->closed) uv_cond_timedwait(&s->cond, &b->mu, RETRY_WAIT_NS * 4);
      uv_mutex_unlock(&b->mu);
      continue;
    }
    natsMsgList list = {0};
    jsErrCode jerr = 0;
    natsStatus st = natsSubscription_Fetch(&list, s->ns, (int)(room < FETCH_BATCH ? room : FETCH_BATCH),
                                           FETCH_EXPIRY_MS, &jerr);
    if (st != NATS_OK && st != NATS_TIMEOUT && list.Count == 0) {
      uv_mutex_lock(&b->mu);
      int quiet = b->stop || !b->connected;
      if (!b->stop && !s->closed) uv_cond_timedwait(&s->cond, &b->mu, RETRY_WAIT_NS);
      uv_mutex_unlock(&b->mu);
      if (!quiet) note(b, HLOG_WARN, "%s: fetch failed: %s", s->label, status_text(st));
      continue;
    }
    herald_bus_delivery *head = NULL, *tail = NULL;
    uint32_t n = 0;
    for (int i = 0; i < list.Count; i++) {
      natsMsg *m = list.Msgs[i];
      list.Msgs[i] = NULL;
      const char *why = NULL;
      herald_event *ev = decode_event(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &why);
      herald_bus_delivery *d = ev ? malloc(sizeof *d) : NULL;
      if (!d) {
        if (ev) herald_event_unref(ev); /* never seen by Lua: no hook work */
        note(b, HLOG_WARN, "%s: dropping message on %s: %s", s->label, natsMsg_GetSubject(m),
             why ? why : "out of memory");
        if (why) natsMsg_Term(m, NULL); /* a retry cannot fix it */
        natsMsg_Destroy(m);
        continue;
      }
      d->sub = s;
      d->msg = m;
      d->ev = ev;
      d->nak_delay = -1;
      d->next = NULL;
      if (tail) tail->next = d;
      else head = d;
      tail = d;
      n++;
    }
    natsMsgList_Destroy(&list);
    if (!head) continue;
    uv_mutex_lock(&b->mu);
    s->outstanding += n;
    if (b->ready_tail) b->ready_tail->next = head;
    else b->ready_head = head;
    b->ready_tail = tail;
    uv_mutex_unlock(&b->mu);
    uv_async_send(&b->async);
  }
}

/* ---- de-dup ring (loop) ---- */

static uint32_t id_hash(const char *id) {
  uint32_t h = 2166136261u;
  for (; *id; id++) h = (h ^ (unsigned char)*id) * 16777619u;
  return h % (DEDUP_SLOTS * 2);
}

static int32_t dedup_find(jsub *s, const char *id, int32_t **link) {
  int32_t *pp = &s->buckets[id_hash(id)];
  while (*pp >= 0) {
    if (strcmp(s->slots[*pp].id, id) == 0) {
      if (link) *link = pp;
      return *pp;
    }
    pp = &s->slots[*pp].next;
  }
  return -1;
}

static void dedup_unlink(jsub *s, int32_t i) {
  dedup_slot *sl = &s->slots[i];
  if (!sl->id[0]) return;
  for (int32_t *pp = &s->buckets[sl->bucket]; *pp >= 0; pp = &s->slots[*pp].next) {
    if (*pp == i) {
      *pp = sl->next;
      break;
    }
  }
  sl->id[0] = '\0';
}

static void dedup_add(jsub *s, const char *id) {
  int32_t i = (int32_t)(s->ring_pos++ % DEDUP_SLOTS);
  dedup_unlink(s, i);
  dedup_slot *sl = &s->slots[i];
  snprintf(sl->id, sizeof sl->id, "%s", id);
  sl->bucket = id_hash(id);
  sl->next = s->buckets[sl->bucket];
  s->buckets[sl->bucket] = i;
}

/* ---- the loop side ---- */

static void give_back(jbus *b, herald_bus_delivery *d, int64_t nak_delay) {
  jsub *s = d->sub;
  if (d->ev) herald_event_unref(d->ev); /* on the loop: the release hook touches Lua */
  d->ev = NULL;
  d->nak_delay = nak_delay;
  d->next = NULL;
  uv_mutex_lock(&b->mu);
  if (b->ack_tail) b->ack_tail->next = d;
  else b->ack_head = d;
  b->ack_tail = d;
  s->outstanding--;
  uv_cond_signal(&b->cond);
  uv_cond_signal(&s->cond);
  uv_mutex_unlock(&b->mu);
}

static void free_sub(jsub *s) {
  uv_cond_destroy(&s->cond);
  free(s->consumer), free(s->filter), free(s->label), free(s->slots), free(s->buckets);
  free(s);
}

static void bus_freed(uv_handle_t *h) {
  jbus *b = h->data;
  herald_bus_close_cb cb = b->close_cb;
  while (b->subs) {
    jsub *s = b->subs;
    b->subs = s->next;
    free_sub(s);
  }
  natsOptions_Destroy(b->opts);
  uv_mutex_destroy(&b->mu);
  uv_cond_destroy(&b->cond);
  free(b->url);
  free(b);
  if (cb) cb(NULL);
}

static void on_async(uv_async_t *a) {
  jbus *b = a->data;
  uv_mutex_lock(&b->mu);
  jpub *done = b->done_head;
  b->done_head = b->done_tail = NULL;
  herald_bus_delivery *ready = b->ready_head;
  b->ready_head = b->ready_tail = NULL;
  int events = b->events;
  b->events = 0;
  int nnotes = b->nnotes, dropped = b->notes_dropped, exited = b->exited;
  char *notes[MAX_NOTES];
  int levels[MAX_NOTES];
  memcpy(notes, b->notes, sizeof notes);
  memcpy(levels, b->note_levels, sizeof levels);
  b->nnotes = b->notes_dropped = 0;
  uv_mutex_unlock(&b->mu);

  if (events & EV_DISCONNECTED) herald_log_limited(&b->log, HLOG_WARN, "disconnected from %s: reconnecting", b->url);
  if (events & EV_CONNECTED) herald_log(&b->log, HLOG_INFO, "connected to %s", b->url);
  if (events & EV_RECONNECTED) herald_log(&b->log, HLOG_INFO, "reconnected to %s", b->url);
  for (int i = 0; i < nnotes; i++) {
    if (levels[i] >= HLOG_WARN) herald_log_limited(&b->log, (herald_log_level)levels[i], "%s", notes[i]);
    else herald_log(&b->log, (herald_log_level)levels[i], "%s", notes[i]);
    free(notes[i]);
  }
  if (dropped) herald_log_limited(&b->log, HLOG_WARN, "%d log line(s) from the bus threads dropped", dropped);

  while (done) {
    jpub *p = done;
    done = p->next;
    b->pubs_inflight--;
    if (p->status == 0) b->stats.published++;
    else b->stats.rejected++;
    if (p->cb) p->cb(p->cbdata, p->status);
    free(p->subject);
    free(p);
  }
  while (ready) {
    herald_bus_delivery *d = ready;
    ready = d->next;
    d->next = NULL;
    jsub *s = d->sub;
    if (!s->pub || b->closing) { /* unsubscribed meanwhile: let another consumer have it */
      give_back(b, d, 0);
      continue;
    }
    if (dedup_find(s, d->ev->id, NULL) >= 0) {
      b->duplicates++;
      herald_log(&b->log, HLOG_DEBUG, "%s: event %s redelivered, already processed: acked", s->label,
                 d->ev->id);
      give_back(b, d, -1);
      continue;
    }
    dedup_add(s, d->ev->id);
    b->stats.delivered++;
    b->deliveries_inflight++;
    s->pub->deliver(s->pub, d, d->ev);
  }
  if (exited && !uv_is_closing((uv_handle_t *)a)) {
    uv_thread_join(&b->thread);
    /* Deliveries the worker's last pass left (it is gone: nothing sends their acks). */
    uv_mutex_lock(&b->mu);
    herald_bus_delivery *acks = b->ack_head;
    b->ack_head = b->ack_tail = NULL;
    uv_mutex_unlock(&b->mu);
    while (acks) {
      herald_bus_delivery *d = acks;
      acks = d->next;
      natsMsg_Destroy(d->msg);
      free(d);
    }
    uv_close((uv_handle_t *)a, bus_freed);
  }
}

static int jb_publish(herald_bus *bus, herald_event *ev, herald_bus_publish_cb cb, void *data) {
  jbus *b = (jbus *)bus;
  if (b->closing) return HERALD_ECLOSED;
  if (!subject_token_ok(ev->source) || !subject_token_ok(ev->subject)) {
    herald_log_limited(&b->log, HLOG_ERROR,
                       "cannot publish: EventSource %s / event %s: names on the JetStream bus must "
                       "not be empty or contain spaces, '.', '*' or '>'",
                       ev->source, ev->subject);
    b->stats.rejected++;
    return HERALD_EINVAL;
  }
  if (b->pubs_inflight >= b->window) {
    b->stats.rejected++;
    return HERALD_EBUSFULL;
  }
  jpub *p = malloc(sizeof *p);
  if (!p) return HERALD_ENOMEM;
  herald_buf body = HERALD_BUF_INIT;
  herald_buf_printf(&body, "%s.%s.%s", STREAM_NAME, ev->source, ev->subject);
  herald_buf_putc(&body, '\0');
  size_t off = body.len;
  herald_event_to_json(ev, &body);
  p->cb = cb;
  p->cbdata = data;
  p->subject = body.data; /* taken over: freed with free() */
  p->body = body.data + off;
  p->len = body.len - off;
  snprintf(p->id, sizeof p->id, "%s", ev->id);
  p->msg = NULL;
  p->status = 0;
  p->next = p->hnext = NULL;
  b->pubs_inflight++;
  uv_mutex_lock(&b->mu);
  if (b->pub_tail) b->pub_tail->next = p;
  else b->pub_head = p;
  b->pub_tail = p;
  uv_cond_signal(&b->cond);
  uv_mutex_unlock(&b->mu);
  return 0;
}

/* "<sensor>/<dependency>" -> a durable name NATS accepts: [A-Za-z0-9_-] kept, the rest '_',
 * plus a hash of the original when anything was replaced (so "a/b_c" and "a_b/c" differ). */
static char *consumer_name(const char *durable) {
  herald_buf b = HERALD_BUF_INIT;
  int replaced = 0;
  for (const char *p = durable; *p; p++) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    herald_buf_putc(&b, ok ? c : '_');
    replaced |= !ok;
  }
  if (replaced) {
    uint32_t h = 2166136261u;
    for (const char *p = durable; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    herald_buf_printf(&b, "-%08x", h);
  }
  herald_buf_putc(&b, '\0');
  return b.data;
}

static int jb_subscribe(herald_bus *bus, herald_bus_sub *sub) {
  jbus *b = (jbus *)bus;
  if (b->closing) return HERALD_ECLOSED;
  if (!subject_token_ok(sub->source) || !subject_token_ok(sub->subject)) {
    herald_log(&b->log, HLOG_ERROR,
               "%s: eventSourceName %s / eventName %s cannot be used on the JetStream bus: names "
               "must not be empty or contain spaces, '.', '*' or '>'",
               sub->durable, sub->source, sub->subject);
    return HERALD_EINVAL;
  }
  jsub *s = herald_xcalloc(1, sizeof *s);
  s->bus = b;
  s->pub = sub;
  s->consumer = consumer_name(sub->durable);
  s->filter = herald_xasprintf("%s.%s.%s", STREAM_NAME, sub->source, sub->subject);
  s->label = herald_xstrdup(sub->durable);
  s->max_inflight = sub->max_inflight ? sub->max_inflight : DEFAULT_INFLIGHT;
  s->slots = herald_xcalloc(DEDUP_SLOTS, sizeof *s->slots);
  s->buckets = herald_xmalloc(DEDUP_SLOTS * 2 * sizeof *s->buckets);
  for (int i = 0; i < DEDUP_SLOTS * 2; i++) s->buckets[i] = -1;
  uv_cond_init(&s->cond);
  if (uv_thread_create(&s->thread, fetch_main, s) != 0) {
    free_sub(s);
    return HERALD_ENOMEM;
  }
  sub->priv = s;
  s->next = b->subs;
  b->subs = s;
  return 0;
}

static void jb_unsubscribe(herald_bus *bus, herald_bus_sub *sub) {
  jbus *b = (jbus *)bus;
  jsub *s = sub->priv;
  if (!s) return;
  s->pub = NULL; /* the caller may free sub now; s lives until the bus closes */
  sub->priv = NULL;
  uv_mutex_lock(&b->mu);
  s->closed = 1;
  uv_cond_signal(&s->cond);
  uv_mutex_unlock(&b->mu);
}

static void jb_ack(herald_bus *bus, herald_bus_delivery *d) {
  jbus *b = (jbus *)bus;
  b->deliveries_inflight--;
  b->stats.acked++;
  give_back(b, d, -1);
}

static void jb_nak(herald_bus *bus, herald_bus_delivery *d, uint64_t delay_ms) {
  jbus *b = (jbus *)bus;
  int32_t *link;
  int32_t i = dedup_find(d->sub, d->ev->id, &link);
  if (i >= 0) dedup_unlink(d->sub, i); /* its redelivery must be delivered */
  b->deliveries_inflight--;
  give_back(b, d, (int64_t)delay_ms);
}

static void jb_stats(herald_bus *bus, herald_bus_stats *out) {
  jbus *b = (jbus *)bus;
  *out = b->stats;
  out->in_bus = b->pubs_inflight + b->deliveries_inflight;
  out->capacity = b->window;
}

static void jb_close(herald_bus *bus, herald_bus_close_cb cb) {
  jbus *b = (jbus *)bus;
  b->closing = 1;
  b->close_cb = cb;
  uv_mutex_lock(&b->mu);
  b->stop = 1;
  uv_cond_broadcast(&b->cond);
  for (jsub *s = b->subs; s; s = s->next) uv_cond_broadcast(&s->cond);
  uv_mutex_unlock(&b->mu);
}

static const herald_bus_ops jetstream_ops = {
    .name = "jetstream",
    .publish = jb_publish,
    .subscribe = jb_subscribe,
    .unsubscribe = jb_unsubscribe,
    .ack = jb_ack,
    .nak = jb_nak,
    .stats = jb_stats,
    .close = jb_close,
};

herald_bus *herald_bus_jetstream_new(uv_loop_t *loop, const char *url, uint32_t window, int *err) {
  jbus *b = herald_xcalloc(1, sizeof *b);
  b->base.ops = &jetstream_ops;
  b->base.loop = loop;
  b->log.name = "bus:jetstream";
  b->url = herald_xstrdup(url);
  b->window = window ? window : DEFAULT_WINDOW;
  natsOptions *o = NULL;
  natsStatus s = natsOptions_Create(&o);
  if (s == NATS_OK) s = natsOptions_SetURL(o, url);
  if (s == NATS_OK) s = natsOptions_SetName(o, "herald");
  if (s == NATS_OK) s = natsOptions_SetTimeout(o, 2000);
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(o, -1);
  if (s == NATS_OK) s = natsOptions_SetCustomReconnectDelay(o, reconnect_delay, b);
  if (s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(o, true, on_connected, b);
  if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(o, on_disconnected, b);
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(o, on_reconnected, b);
  if (s == NATS_OK) s = natsOptions_SetClosedCB(o, on_closed, b);
  if (s != NATS_OK) {
    herald_log(NULL, HLOG_ERROR, "bus %s: %s", url, status_text(s));
    natsOptions_Destroy(o);
    free(b->url);
    free(b);
    *err = HERALD_EINVAL;
    return NULL;
  }
  b->opts = o;
  uv_mutex_init(&b->mu);
  uv_cond_init(&b->cond);
  uv_async_init(loop, &b->async, on_async);
  b->async.data = b;
  if (uv_thread_create(&b->thread, worker_main, b) != 0) HERALD_ASSERT(!"cannot start the bus thread");
  return &b->base;
}
