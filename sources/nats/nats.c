/*
 * sources/nats: Argo's `nats` event source, a core NATS subscription on `subject` (wildcards,
 * optional queue group), and Herald's `jetstream` option: a durable pull consumer on a stream,
 * each message acked only once the bus holds its event, so nothing is lost across a crash.
 * Event data as Argo's NATSEventData: {"subject", "body", "header"?, "metadata"?}.
 *
 *   control worker (engine/nats_client's thread): connect, subscribe (core: once, nats.c
 *     resubscribes after a reconnect; jetstream: js_PullSubscribe once connected, again when
 *     the consumer went away), acks and naks handed back by the loop, drops reported
 *   reader thread: NextMsg (core) or a no-wait Fetch then a one-message waiting Fetch
 *     (jetstream), each message turned into the event JSON here (base64 or the raw JSON body,
 *     headers sorted as Go's map, metadata), ready list --herald_nats_wake--> loop
 *   loop: herald_source_emit_id (jetstream: id <es>:<event>:<stream>:<seq>, so the JetStream
 *     bus de-duplicates a redelivery) --bus callback 0--> ack list (flushed once per loop turn)
 *     --cond--> control worker: natsMsg_Ack
 *
 * Back-pressure: at most MAX_OUTSTANDING messages are between the reader and the bus; the
 * reader stops reading beyond that, and the loop stops emitting on HERALD_EBUSFULL until
 * herald_source_when_room. Core NATS has no flow control: while the reader waits, messages pile
 * up in nats.c (its pending limits, 65,536 messages / 64 MiB), then nats.c drops them as a slow
 * consumer; the control worker logs how many. With jetstream the server keeps them.
 *
 * The loop never calls nats.c; the threads never touch Lua, metrics or loggers (they queue log
 * lines with herald_nats_note). A bad message (jsonBody and not JSON, or over the engine's
 * --max-message-bytes) is counted and logged on the loop by source_kit, and acked (jetstream)
 * since a retry cannot fix it. Reconnects are nats.c's, for ever, waiting as connectionBackoff
 * says; the connection state goes to herald_eventsource_connected.
 */
#include "buf.h"
#include "common.h"
#include "cron.h"
#include "engine.h"
#include "event.h"
#include "nats_client.h"
#include "plugin.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_OUTSTANDING 4096 /* messages read and not yet on the bus */
#define BATCH 256            /* messages the reader hands over at a time, at most */
#define READ_WAIT_MS 250     /* a read waits this long, so a stop is seen promptly */
#define FETCH_NOWAIT_MS 1000 /* bound on a no-wait fetch's answer */
#define RETRY_NS (250 * 1000000ull)
/* After a short batch the reader lets messages gather this long before reading again: at
 * moderate rates one hand-off (three thread wake-ups: nats.c's, the reader's, the loop's) then
 * carries tens of messages instead of one; it costs at most this much latency. */
#define COALESCE_NS (500 * 1000ull)
#define JSON_DEPTH 256

enum { ITEM_EVENT, ITEM_TOO_BIG, ITEM_BAD_BODY };

/* One message on its way: made by the reader, emitted by the loop, acked by the control worker. */
typedef struct nitem {
  struct nitem *next;
  natsMsg *msg;     /* jetstream: acked or nak'd by the control worker; core: NULL */
  struct nstate *st;
  unsigned char kind, nak;
  size_t len;       /* bytes at data: the event JSON, or the raw body (ITEM_BAD_BODY) */
  size_t size;      /* the body's size (ITEM_TOO_BIG) */
  const char *id;   /* jetstream: the event id, after the JSON in data */
  char data[];
} nitem;

typedef struct nstate {
  herald_source *src;
  herald_nats client; /* client.mu guards the shared part below */
  /* configuration, read-only once started */
  herald_nats_config cfg;
  char *subject, *queue, *meta;  /* meta: `,"metadata":{...}` or NULL */
  char *stream, *durable, *id_prefix;
  int json_body, js, deliver_new;
  int64_t ack_wait_ns;
  int64_t max_ack_pending;
  size_t max_message;
  /* shared: guarded by client.mu */
  natsSubscription *sub;
  jsCtx *jsc;
  int sub_broken, hold, reader_waiting;
  nitem *ready, *ready_tail;  /* reader -> loop */
  nitem *acks, *acks_tail;    /* loop -> control worker */
  uint32_t outstanding;       /* read and not yet finished by the loop */
  uv_cond_t reader_cond;
  uv_thread_t reader;
  int reader_started;
  /* loop only */
  nitem *pending, *pending_tail; /* taken from ready, not yet emitted */
  nitem *lacks, *lacks_tail;     /* finished, to hand to the control worker */
  uint32_t lfinished;            /* finished since the last hand-off */
  uint32_t inflight;             /* emitted, bus callback not yet run */
  int started, paused, stopping, client_stopped, client_closed, prep_closed;
  uv_prepare_t prep;
  herald_source_stop_cb stop_done;
} nstate;

typedef struct nsrc {
  nstate *st;
} nsrc;

#define note(st, ...) herald_nats_note(&(st)->client, __VA_ARGS__)

/* ---- the reader thread: messages into event JSON ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Go's json.Marshal of http.Header-like map[string][]string: keys sorted. */
static void put_headers(herald_buf *b, natsMsg *m) {
  const char **keys = NULL;
  int nkeys = 0;
  if (natsMsgHeader_Keys(m, &keys, &nkeys) != NATS_OK || nkeys <= 0) {
    free((void *)keys);
    return;
  }
  qsort(keys, (size_t)nkeys, sizeof *keys, cmp_str);
  herald_buf_puts(b, ",\"header\":{");
  for (int i = 0; i < nkeys; i++) {
    if (i) herald_buf_putc(b, ',');
    herald_buf_json_string(b, keys[i], strlen(keys[i]));
    herald_buf_puts(b, ":[");
    const char **vals = NULL;
    int nvals = 0;
    if (natsMsgHeader_Values(m, keys[i], &vals, &nvals) == NATS_OK) {
      for (int j = 0; j < nvals; j++) {
        if (j) herald_buf_putc(b, ',');
        herald_buf_json_string(b, vals[j], strlen(vals[j]));
      }
    }
    free((void *)vals);
    herald_buf_putc(b, ']');
  }
  free((void *)keys);
  herald_buf_putc(b, '}');
}

/* A valid JSON text without the blanks between tokens, as Go's json.Marshal writes a
 * json.RawMessage (as source_kit's herald_source_put_body, which runs on the loop): a
 * pretty-printed body or a trailing newline would otherwise reach one-line consumers. */
static void append_compact(herald_buf *b, const char *p, size_t len) {
  size_t from = 0;
  int in_str = 0;
  for (size_t i = 0; i < len; i++) {
    char ch = p[i];
    if (in_str) {
      if (ch == '\\') i++;
      else if (ch == '"') in_str = 0;
    } else if (ch == '"') {
      in_str = 1;
    } else if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t') {
      if (i > from) herald_buf_append(b, p + from, i - from);
      from = i + 1;
    }
  }
  if (len > from) herald_buf_append(b, p + from, len - from);
}

/* The item for message m (which the caller keeps or destroys), b a scratch buffer. */
static nitem *make_item(nstate *st, natsMsg *m, herald_buf *b) {
  const char *data = natsMsg_GetData(m);
  size_t len = (size_t)natsMsg_GetDataLength(m);
  nitem *it;
  if (len > st->max_message) {
    it = herald_xcalloc(1, sizeof *it);
    it->kind = ITEM_TOO_BIG;
    it->size = len;
    return it;
  }
  if (st->json_body && (len == 0 || !herald_json_valid(data, len, JSON_DEPTH))) {
    it = herald_xmalloc(sizeof *it + len + 1);
    memset(it, 0, sizeof *it);
    it->kind = ITEM_BAD_BODY;
    if (len) memcpy(it->data, data, len);
    it->data[len] = '\0';
    it->len = len;
    return it;
  }
  herald_buf_reset(b);
  herald_buf_puts(b, "{\"subject\":");
  const char *subj = natsMsg_GetSubject(m);
  herald_buf_json_string(b, subj, strlen(subj));
  herald_buf_puts(b, ",\"body\":");
  if (st->json_body) {
    append_compact(b, data, len);
  } else {
    herald_buf_putc(b, '"');
    herald_buf_base64(b, data, len);
    herald_buf_putc(b, '"');
  }
  put_headers(b, m);
  if (st->meta) herald_buf_puts(b, st->meta);
  herald_buf_putc(b, '}');
  size_t jlen = b->len;
  if (st->js) {
    jsMsgMetaData *md = NULL;
    herald_buf_putc(b, '\0');
    if (natsMsg_GetMetaData(&md, m) == NATS_OK) {
      herald_buf_printf(b, "%s%s:%llu", st->id_prefix, md->Stream, (unsigned long long)md->Sequence.Stream);
      jsMsgMetaData_Destroy(md);
    }
  }
  it = herald_xmalloc(sizeof *it + b->len + 1);
  memset(it, 0, sizeof *it);
  memcpy(it->data, b->data, b->len);
  it->data[b->len] = '\0';
  it->len = jlen;
  if (st->js && b->len > jlen + 1) it->id = it->data + jlen + 1;
  return it;
}

/* Appends item it for message m; jetstream keeps m for the ack, core destroys it. */
static void add_item(nstate *st, natsMsg *m, herald_buf *b, nitem **head, nitem **tail) {
  nitem *it = make_item(st, m, b);
  it->st = st;
  if (st->js) it->msg = m;
  else natsMsg_Destroy(m);
  if (*tail) (*tail)->next = it;
  else *head = it;
  *tail = it;
}

/* Core: one message waited for, then whatever nats.c holds already, up to max. */
static int read_core(nstate *st, natsSubscription *sub, int max, herald_buf *b, nitem **head, nitem **tail) {
  natsMsg *m = NULL;
  natsStatus s = natsSubscription_NextMsg(&m, sub, READ_WAIT_MS);
  if (s == NATS_TIMEOUT || s == NATS_SLOW_CONSUMER) return 0; /* drops: the control worker says */
  if (s != NATS_OK) return -1;
  add_item(st, m, b, head, tail);
  int n = 1, more = 0;
  if (natsSubscription_GetPending(sub, &more, NULL) != NATS_OK) more = 0;
  while (n < max && more-- > 0 && natsSubscription_NextMsg(&m, sub, 1) == NATS_OK) {
    add_item(st, m, b, head, tail);
    n++;
  }
  return n;
}

/* JetStream: what the consumer has now (no-wait), else wait for one message. */
static int read_js(nstate *st, natsSubscription *sub, int max, herald_buf *b, nitem **head, nitem **tail) {
  natsMsgList list = {0};
  jsFetchRequest req;
  jsFetchRequest_Init(&req);
  req.Batch = max;
  req.NoWait = true;
  req.Expires = (int64_t)FETCH_NOWAIT_MS * 1000000;
  natsStatus s = natsSubscription_FetchRequest(&list, sub, &req);
  if (s != NATS_OK || list.Count == 0) {
    natsMsgList_Destroy(&list);
    jsErrCode jerr = 0;
    s = natsSubscription_Fetch(&list, sub, 1, READ_WAIT_MS, &jerr);
  }
  if (s == NATS_TIMEOUT) return 0;
  if (s != NATS_OK) return -1;
  int n = 0;
  for (int i = 0; i < list.Count; i++) {
    add_item(st, list.Msgs[i], b, head, tail);
    list.Msgs[i] = NULL;
    n++;
  }
  natsMsgList_Destroy(&list);
  return n;
}

static void reader_main(void *arg) {
  nstate *st = arg;
  herald_nats *c = &st->client;
  herald_buf b = HERALD_BUF_INIT;
  int failures = 0;
  for (;;) {
    uv_mutex_lock(&c->mu);
    while (!c->stop && (st->hold || !st->sub || st->sub_broken || st->outstanding >= MAX_OUTSTANDING ||
                        (st->js && !c->connected))) {
      st->reader_waiting = 1;
      uv_cond_timedwait(&st->reader_cond, &c->mu, RETRY_NS);
    }
    st->reader_waiting = 0;
    int stop = c->stop;
    natsSubscription *sub = st->sub;
    uint32_t room = MAX_OUTSTANDING - st->outstanding;
    uv_mutex_unlock(&c->mu);
    if (stop) break;
    nitem *head = NULL, *tail = NULL;
    int max = (int)(room < BATCH ? room : BATCH);
    int n = st->js ? read_js(st, sub, max, &b, &head, &tail) : read_core(st, sub, max, &b, &head, &tail);
    if (n < 0) {
      /* not connected (nats.c reconnects) or the consumer went away: wait, and with jetstream
       * let the control worker subscribe again after a few failures while connected */
      uv_mutex_lock(&c->mu);
      if (st->js && c->connected && ++failures >= 3) {
        st->sub_broken = 1;
        failures = 0;
        uv_cond_broadcast(&c->cond);
      }
      if (!c->stop) uv_cond_timedwait(&st->reader_cond, &c->mu, RETRY_NS);
      uv_mutex_unlock(&c->mu);
      continue;
    }
    failures = 0;
    if (!head) continue;
    uv_mutex_lock(&c->mu);
    st->outstanding += (uint32_t)n;
    if (st->ready_tail) st->ready_tail->next = head;
    else st->ready = head;
    st->ready_tail = tail;
    uv_mutex_unlock(&c->mu);
    herald_nats_wake(c);
    if (n < max / 2) {
      struct timespec ts = {0, (long)COALESCE_NS};
      nanosleep(&ts, NULL);
    }
  }
  herald_buf_free(&b);
}

/* ---- the control worker ---- */

static void free_items(nitem *it) {
  while (it) {
    nitem *next = it->next;
    if (it->msg) natsMsg_Destroy(it->msg);
    free(it);
    it = next;
  }
}

/* Acks (or naks) the jetstream messages of the finished items, and frees them. */
static void send_acks(nstate *st, nitem *it) {
  while (it) {
    nitem *next = it->next;
    if (it->msg) {
      natsStatus s = it->nak ? natsMsg_Nak(it->msg, NULL) : natsMsg_Ack(it->msg, NULL);
      if (s != NATS_OK) /* the server redelivers it after ackWait; the bus de-duplicates */
        note(st, HLOG_DEBUG, "ack not sent: %s", herald_nats_status_text(s));
      natsMsg_Destroy(it->msg);
    }
    free(it);
    it = next;
  }
}

static int subscribe(nstate *st) {
  herald_nats *c = &st->client;
  natsSubscription *sub = NULL;
  natsStatus s;
  if (!st->js) {
    s = st->queue ? natsConnection_QueueSubscribeSync(&sub, c->nc, st->subject, st->queue)
                  : natsConnection_SubscribeSync(&sub, c->nc, st->subject);
    if (s != NATS_OK) {
      note(st, HLOG_ERROR, "cannot subscribe to %s: %s", st->subject, herald_nats_status_text(s));
      return 0;
    }
    /* a round trip, so "subscribed" means the server has the SUB (core NATS keeps nothing for
     * a subscription it has not seen yet) */
    if (natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED) natsConnection_FlushTimeout(c->nc, 2000);
    note(st, HLOG_INFO, "subscribed to %s%s%s", st->subject, st->queue ? " in queue group " : "",
         st->queue ? st->queue : "");
  } else {
    if (!st->jsc && natsConnection_JetStream(&st->jsc, c->nc, NULL) != NATS_OK) {
      st->jsc = NULL;
      note(st, HLOG_ERROR, "cannot use JetStream: %s", herald_nats_status_text(NATS_ERR));
      return 0;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = st->stream;
    so.Config.Durable = st->durable;
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.DeliverPolicy = st->deliver_new ? js_DeliverNew : js_DeliverAll;
    so.Config.AckWait = st->ack_wait_ns;
    so.Config.MaxAckPending = st->max_ack_pending;
    jsErrCode jerr = 0;
    s = js_PullSubscribe(&sub, st->jsc, st->subject, st->durable, NULL, &so, &jerr);
    if (s != NATS_OK) {
      note(st, HLOG_ERROR, "jetstream: cannot consume %s%s%s as %s: %s (retrying)", st->subject,
           st->stream ? " from stream " : "", st->stream ? st->stream : "", st->durable,
           herald_nats_status_text(s));
      return 0;
    }
    note(st, HLOG_INFO, "jetstream: consuming %s%s%s as durable %s", st->subject,
         st->stream ? " from stream " : "", st->stream ? st->stream : "", st->durable);
  }
  uv_mutex_lock(&c->mu);
  st->sub = sub;
  uv_cond_broadcast(&st->reader_cond);
  uv_mutex_unlock(&c->mu);
  return 1;
}

/* Core NATS: says how many messages nats.c dropped since the last call (slow consumer). */
static void report_drops(nstate *st, int64_t *seen) {
  int64_t dropped = 0;
  if (st->js || !st->sub || natsSubscription_GetDropped(st->sub, &dropped) != NATS_OK || dropped <= *seen) return;
  note(st, HLOG_WARN,
       "%lld message(s) on %s dropped by the NATS client while the bus was full or slow (core NATS "
       "has no flow control; the jetstream option keeps them on the server)",
       (long long)(dropped - *seen), st->subject);
  *seen = dropped;
}

static void control_main(herald_nats *c) {
  nstate *st = c->data;
  herald_nats_connect(c); /* notes why a first attempt failed; nats.c keeps trying */
  if (uv_thread_create(&st->reader, reader_main, st) == 0) st->reader_started = 1;
  else note(st, HLOG_ERROR, "cannot start the NATS reader thread");
  herald_backoff bo;
  herald_backoff_init(&bo, NULL, 0, NULL);
  bo.first_ms = 250, bo.cap_ms = 5000;
  int64_t dropped_seen = 0;
  uint64_t retry_at = 0;
  for (;;) {
    uv_mutex_lock(&c->mu);
    uint64_t now = uv_hrtime();
    int want_sub = (!st->sub || st->sub_broken) && c->nc && (!st->js || c->connected);
    if (!c->stop && !st->acks && !(want_sub && now >= retry_at)) {
      /* woken by the loop (acks, stop) or a connection change; else a look at drops and
       * retries now and then */
      uint64_t wait = RETRY_NS * 4;
      if (want_sub && retry_at - now < wait) wait = retry_at - now;
      uv_cond_timedwait(&c->cond, &c->mu, wait);
    }
    nitem *acks = st->acks;
    st->acks = st->acks_tail = NULL;
    int stop = c->stop;
    int need_sub = (!st->sub || st->sub_broken) && c->nc && (!st->js || c->connected) && uv_hrtime() >= retry_at;
    natsSubscription *broken = NULL;
    if (need_sub && st->sub_broken) {
      broken = st->sub;
      st->sub = NULL;
      st->sub_broken = 0;
    }
    uv_mutex_unlock(&c->mu);
    if (acks) send_acks(st, acks);
    if (stop) break;
    if (broken) natsSubscription_Destroy(broken); /* the reader no longer holds it */
    if (!c->nc) { /* nats.c refused the configuration for good: try again later */
      retry_at = uv_hrtime() + herald_backoff_next(&bo) * 1000000ull;
      herald_nats_connect(c);
      continue;
    }
    if (need_sub) {
      if (subscribe(st)) herald_backoff_reset(&bo);
      else retry_at = uv_hrtime() + herald_backoff_next(&bo) * 1000000ull;
    }
    report_drops(st, &dropped_seen);
  }
  report_drops(st, &dropped_seen); /* the last ones too */
  /* stopping: the reader first, then the last acks, then the items nobody emitted */
  uv_mutex_lock(&c->mu);
  uv_cond_broadcast(&st->reader_cond);
  uv_mutex_unlock(&c->mu);
  if (st->reader_started) uv_thread_join(&st->reader);
  uv_mutex_lock(&c->mu);
  nitem *acks = st->acks, *ready = st->ready;
  st->acks = st->acks_tail = st->ready = st->ready_tail = NULL;
  uv_mutex_unlock(&c->mu);
  send_acks(st, acks);
  free_items(ready); /* not acked: the server redelivers them after ackWait */
  if (c->nc && natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED) natsConnection_FlushTimeout(c->nc, 1000);
  if (st->sub && !st->js) natsSubscription_Unsubscribe(st->sub);
  herald_nats_close(c);
  if (st->sub) natsSubscription_Destroy(st->sub); /* jetstream: the durable consumer stays */
  st->sub = NULL;
  if (st->jsc) jsCtx_Destroy(st->jsc);
  st->jsc = NULL;
}

/* ---- the loop ---- */

static void pump(nstate *st);

/* Hands the finished items and the count to the threads; once per loop turn (uv_prepare). */
static void hand_back(nstate *st) {
  if (!st->lfinished && !st->lacks) return;
  herald_nats *c = &st->client;
  uv_mutex_lock(&c->mu);
  if (st->lacks) {
    if (st->acks_tail) st->acks_tail->next = st->lacks;
    else st->acks = st->lacks;
    st->acks_tail = st->lacks_tail;
    uv_cond_broadcast(&c->cond);
  }
  st->outstanding -= st->lfinished;
  if (st->reader_waiting && st->outstanding < MAX_OUTSTANDING / 2) uv_cond_signal(&st->reader_cond);
  uv_mutex_unlock(&c->mu);
  st->lacks = st->lacks_tail = NULL;
  st->lfinished = 0;
}

static void on_prepare(uv_prepare_t *h) { hand_back(h->data); }

/* An item is done with: jetstream messages go back to be acked (or nak'd), the rest is freed. */
static void finish(nstate *st, nitem *it, int nak) {
  st->lfinished++;
  it->next = NULL;
  if (!it->msg) {
    free(it);
    return;
  }
  it->nak = (unsigned char)nak;
  if (st->lacks_tail) st->lacks_tail->next = it;
  else st->lacks = it;
  st->lacks_tail = it;
}

static void maybe_stopped(nstate *st);

static void resume(herald_source *src, void *data);

static void on_emitted(void *data, int status) {
  nitem *it = data;
  nstate *st = it->st;
  st->inflight--;
  if (status < 0) {
    if (st->js) {
      herald_log_limited(&st->src->log, HLOG_WARN, "event not taken by the bus (%s): the message will be redelivered",
                         herald_strerror(status));
      finish(st, it, 1);
    } else if (!st->stopping) {
      /* core NATS cannot deliver it again: keep it and try again when the bus has room */
      it->next = st->pending;
      st->pending = it;
      if (!st->pending_tail) st->pending_tail = it;
      if (!st->paused) {
        st->paused = 1;
        herald_source_when_room(st->src, resume, st);
      }
      return;
    } else {
      finish(st, it, 0);
    }
  } else {
    finish(st, it, 0);
  }
  if (st->stopping) maybe_stopped(st);
}

static void resume(herald_source *src, void *data) {
  (void)src;
  nstate *st = data;
  st->paused = 0;
  pump(st);
}

static void pump(nstate *st) {
  herald_source *src = st->src;
  while (st->pending && !st->paused && !st->stopping) {
    nitem *it = st->pending;
    if (it->kind == ITEM_EVENT) {
      int r = herald_source_emit_id(src, it->id, it->data, it->len, on_emitted, it);
      if (r == HERALD_EBUSFULL || r == HERALD_EIO || r == HERALD_ECLOSED) {
        /* the bus is full or down: keep it, read no more, resume when there is room */
        st->paused = 1;
        herald_source_when_room(src, resume, st);
        return;
      }
      st->pending = it->next;
      if (!st->pending) st->pending_tail = NULL;
      if (r == 0) {
        st->inflight++;
        continue;
      }
      finish(st, it, st->js); /* logged by emit */
      continue;
    }
    st->pending = it->next;
    if (!st->pending) st->pending_tail = NULL;
    if (it->kind == ITEM_TOO_BIG) {
      herald_source_too_big(src, it->size);
    } else {
      herald_buf tmp = HERALD_BUF_INIT;
      herald_source_put_body(src, &tmp, it->data, it->len, 1); /* counts and logs it */
      herald_buf_free(&tmp);
    }
    finish(st, it, 0); /* acked: a redelivery would be just as bad */
  }
}

static void on_wake(herald_nats *c, int events) {
  nstate *st = c->data;
  herald_source *src = st->src;
  uv_mutex_lock(&c->mu);
  nitem *ready = st->ready;
  nitem *ready_tail = st->ready_tail;
  st->ready = st->ready_tail = NULL;
  int connected = c->connected;
  char why[sizeof c->last_error];
  memcpy(why, c->last_error, sizeof why);
  uv_mutex_unlock(&c->mu);

  if (st->stopping) {
    /* the close's own disconnect is not news */
  } else if (connected && (src->conn_state != 1 || (events & HERALD_NATS_RECONNECTED))) {
    herald_source_set_connected(src, 1, c->url);
  } else if (!connected && src->conn_state != -1 && (why[0] || (events & HERALD_NATS_DISCONNECTED))) {
    char lost[300];
    snprintf(lost, sizeof lost, "connection to %s lost%s%s (reconnecting)", c->url, why[0] ? ": " : "", why);
    herald_source_set_connected(src, 0, lost);
  }

  if (!ready) return;
  if (st->stopping) {
    while (ready) {
      nitem *next = ready->next;
      finish(st, ready, 1);
      ready = next;
    }
    hand_back(st);
    return;
  }
  if (st->pending_tail) st->pending_tail->next = ready;
  else st->pending = ready;
  st->pending_tail = ready_tail;
  if (!st->paused) pump(st);
}

/* ---- init / start / stop ---- */

static char *opt_string(lua_State *L, int idx, const char *field) {
  const char *v = herald_cfg_string(L, idx, field, NULL);
  return v && *v ? herald_xstrdup(v) : NULL;
}

/* A consumer name nats-server accepts: bytes outside [A-Za-z0-9_-] become '_'. */
static char *durable_name(const char *es, const char *ev) {
  char *d = herald_xasprintf("herald-%s-%s", es, ev);
  for (char *p = d; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
      *p = '_';
  return d;
}

static void state_free(nstate *st) {
  herald_nats_config_free(&st->cfg);
  free(st->subject);
  free(st->queue);
  free(st->meta);
  free(st->stream);
  free(st->durable);
  free(st->id_prefix);
  free(st);
}

static int nats_init(herald_source *src, lua_State *L, int idx) {
  nsrc *ns = src->priv;
  if (idx < 0) idx = lua_gettop(L) + idx + 1;
  nstate *st = herald_xcalloc(1, sizeof *st);
  st->src = src;
  int r = herald_nats_config_from_lua(&st->cfg, src->engine, &src->log, L, idx);
  if (r) {
    free(st);
    return r;
  }
  /* Argo uses one auth method, the first set of basic, token, nkey, credential */
  herald_nats_config *cf = &st->cfg;
  if (cf->user || cf->password || cf->token || cf->nkey_seed_file) {
    free((char *)cf->creds_file), cf->creds_file = NULL;
    if (cf->user || cf->password || cf->token) free((char *)cf->nkey_seed_file), cf->nkey_seed_file = NULL;
    if (cf->user || cf->password) free((char *)cf->token), cf->token = NULL;
  }
  st->cfg.name = herald_xasprintf("herald:%s/%s", src->es_name, src->event_name);
  st->cfg.owner_logs_state = 1;
  herald_backoff bo;
  herald_backoff_init(&bo, L, idx, "connectionBackoff");
  st->cfg.backoff_first_ms = (unsigned)bo.first_ms;
  st->cfg.backoff_cap_ms = (unsigned)bo.cap_ms;
  st->cfg.backoff_factor = bo.factor;
  st->cfg.backoff_jitter = bo.jitter;
  st->subject = opt_string(L, idx, "subject");
  st->queue = opt_string(L, idx, "queue");
  st->json_body = herald_cfg_bool(L, idx, "jsonBody", 0);
  char *meta = herald_cfg_metadata_json(L, idx);
  if (meta && strcmp(meta, "{}") != 0) st->meta = herald_xasprintf(",\"metadata\":%s", meta);
  free(meta);
  st->max_message = src->engine->opts.max_message ? src->engine->opts.max_message : HERALD_DEFAULT_MAX_MESSAGE;
  lua_getfield(L, idx, "jetstream");
  if (lua_istable(L, -1)) {
    int j = lua_gettop(L);
    st->js = 1;
    st->stream = opt_string(L, j, "stream");
    st->durable = opt_string(L, j, "durable");
    if (!st->durable) st->durable = durable_name(src->es_name, src->event_name);
    const char *dp = herald_cfg_string(L, j, "deliverPolicy", "all");
    st->deliver_new = strcmp(dp, "new") == 0;
    const char *aw = herald_cfg_string(L, j, "ackWait", "30s");
    int64_t wait_ns = 0;
    char err[160];
    if (herald_parse_duration_msg(aw, &wait_ns, err, sizeof err) < 0 || wait_ns <= 0) wait_ns = 30 * 1000000000LL;
    st->ack_wait_ns = wait_ns;
    st->max_ack_pending = (int64_t)herald_cfg_number(L, j, "maxAckPending", 1000);
    st->id_prefix = herald_xasprintf("%s:%s:", src->es_name, src->event_name);
  }
  lua_pop(L, 1);
  if (!st->subject) {
    herald_log(&src->log, HLOG_ERROR, "subject must be specified");
    state_free(st);
    return HERALD_EINVAL;
  }
  ns->st = st;
  return 0;
}

static int nats_start(herald_source *src) {
  nstate *st = ((nsrc *)src->priv)->st;
  uv_cond_init(&st->reader_cond);
  st->client.data = st;
  int r = herald_nats_start(src->engine->loop, &st->client, &st->cfg, &src->log, control_main, on_wake);
  if (r) {
    uv_cond_destroy(&st->reader_cond);
    return r;
  }
  uv_prepare_init(src->engine->loop, &st->prep);
  st->prep.data = st;
  uv_prepare_start(&st->prep, on_prepare);
  uv_unref((uv_handle_t *)&st->prep);
  st->started = 1;
  herald_log(&src->log, HLOG_INFO, "%s %s on %s%s%s", st->js ? "consuming" : "subscribing to", st->subject,
             st->client.url, st->queue ? " in queue group " : "", st->queue ? st->queue : "");
  return 0;
}

static void maybe_done(nstate *st) {
  if (!st->client_closed || !st->prep_closed || !st->stop_done) return;
  herald_source *src = st->src;
  herald_source_stop_cb done = st->stop_done;
  st->stop_done = NULL;
  ((nsrc *)src->priv)->st = NULL;
  uv_cond_destroy(&st->reader_cond);
  /* what came back after the control worker's last look: never acked, redelivered */
  free_items(st->acks);
  free_items(st->ready);
  free_items(st->lacks);
  state_free(st);
  done(src);
}

static void on_prep_closed(uv_handle_t *h) {
  nstate *st = h->data;
  st->prep_closed = 1;
  maybe_done(st);
}

static void on_client_closed(herald_nats *c) {
  nstate *st = c->data;
  st->client_closed = 1;
  uv_close((uv_handle_t *)&st->prep, on_prep_closed);
}

/* Once the bus has answered for every emitted event, the last acks go and the client stops. */
static void maybe_stopped(nstate *st) {
  if (st->inflight || st->client_stopped) return;
  hand_back(st);
  st->client_stopped = 1;
  herald_nats_stop(&st->client, on_client_closed);
}

static void nats_stop(herald_source *src, herald_source_stop_cb done) {
  nstate *st = ((nsrc *)src->priv)->st;
  if (!st) {
    done(src);
    return;
  }
  if (st->stopping) return;
  st->stopping = 1;
  st->stop_done = done;
  if (!st->started) {
    ((nsrc *)src->priv)->st = NULL;
    state_free(st);
    done(src);
    return;
  }
  herald_source_cancel_room(src);
  uv_mutex_lock(&st->client.mu);
  st->hold = 1; /* the reader reads no more */
  uv_mutex_unlock(&st->client.mu);
  while (st->pending) { /* read, never emitted: redelivered (jetstream) */
    nitem *it = st->pending;
    st->pending = it->next;
    finish(st, it, 1);
  }
  st->pending_tail = NULL;
  maybe_stopped(st);
}

const herald_source_type herald_source_nats = {
    .name = "nats",
    .event_type = "nats",
    .priv_size = sizeof(nsrc),
    .init = nats_init,
    .start = nats_start,
    .stop = nats_stop,
};
