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
 *   fetch worker (one per subscription): durable pull consumer "<sensor>/<name>" made safe
 *   (the engine names a subscription "<trigger>/<dependency>"),
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
 * consumers live on the server, so fetching simply resumes. The connection, its options and
 * the conn worker's thread with its hand-off to the loop are engine/nats_client's (shared with
 * the NATS trigger); client.mu guards the lists below as well.
 *
 * A redelivered event (same id) that a subscription already processed, or is processing, is
 * acked without being delivered again (per-subscription ring of the last DEDUP_SLOTS ids).
 */
#include "buf.h"
#include "bus.h"
#include "common.h"
#include "log.h"
#include "nats_client.h"

#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
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
#define DEDUP_SLOTS 4096
#define PUB_BUCKETS 4096

/* Worker log lines go through the client's hand-off. */
#define note(b, ...) herald_nats_note(&(b)->client, __VA_ARGS__)

typedef struct jbus jbus;
typedef struct jsub jsub;
typedef struct jkv_op jkv_op;         /* dependency state (the KV section below) */
typedef struct jkv_bucket jkv_bucket;
static void kv_worker_run(jbus *b);
static void kv_worker_close(jbus *b);
static void kv_loop_drain(jbus *b);

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
  uint32_t window;
  herald_jetstream_config stream; /* the stream_* settings (no strings kept) */
  herald_nats client;             /* the connection and the conn worker */
  jsCtx *js;
  /* under client.mu: */
  jpub *pub_head, *pub_tail;                  /* loop -> conn worker */
  herald_bus_delivery *ack_head, *ack_tail;   /* loop -> conn worker */
  jpub *done_head, *done_tail;                /* nats.c -> loop */
  herald_bus_delivery *ready_head, *ready_tail; /* fetch workers -> loop */
  jpub *pending[PUB_BUCKETS];                 /* in nats.c, by natsMsg pointer */
  unsigned stream_gen; /* client.connects when the stream was last found or made */
  /* loop only: */
  jsub *subs;
  uint32_t pubs_inflight, deliveries_inflight;
  herald_bus_stats stats;
  uint64_t duplicates;
  int closing;
  herald_bus_close_cb close_cb;
  /* dependency state: ops queue and done list under client.mu; buckets are the conn worker's */
  jkv_op *kv_head, *kv_tail, *kv_done_head, *kv_done_tail;
  int kv_gate; /* state loads not yet handed to the loop: fetch workers wait (under mu) */
  jkv_bucket *kv_buckets;
  kvStore *lease_kv;             /* the leases bucket, once opened (conn worker) */
};

/* (under client.mu) The stream was checked on this connection: a (re)connect checks it again. */
static int stream_ready(const jbus *b) {
  return b->client.connected && b->stream_gen == b->client.connects;
}

/* ---- helpers usable from any thread ---- */

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

/* PubAck, server error or timeout for one js_PublishMsgAsync. */
static void on_puback(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *c) {
  (void)js;
  jbus *b = c;
  uv_mutex_lock(&b->client.mu);
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
  uv_mutex_unlock(&b->client.mu);
  if (!pa && pae)
    note(b, HLOG_WARN, "event %s not stored: %s", id,
         pae->ErrText && *pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
  natsMsg_Destroy(msg);
  herald_nats_wake(&b->client);
}

/* ---- the conn worker ---- */

/* Looks up the stream; creates it when it is missing (Herald's defaults, or streamConfig over
 * them), and with a streamConfig updates an existing one to it, as Argo does. */
static int ensure_stream(jbus *b) {
  jsStreamInfo *si = NULL;
  jsErrCode jerr = 0;
  const herald_jetstream_config *c = &b->stream;
  natsStatus s = js_GetStreamInfo(&si, b->js, STREAM_NAME, NULL, &jerr);
  int exists = s == NATS_OK;
  if (exists) jsStreamInfo_Destroy(si);
  si = NULL;
  if (exists && !c->stream_set) return 1;
  if (!exists && s != NATS_NOT_FOUND) {
    note(b, HLOG_WARN, "cannot look up stream %s: %s", STREAM_NAME, herald_nats_status_text(s));
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
  /* HERALD_JS_REPLICAS (1-5, default 1): replicas of a stream we create, e.g. 3 on a cluster. */
  const char *rep = getenv("HERALD_JS_REPLICAS");
  sc.Replicas = rep && atoi(rep) >= 1 && atoi(rep) <= 5 ? atoi(rep) : 1;
  if (c->stream_set) { /* validated by the loader */
    if (c->max_msgs != -2) sc.MaxMsgs = c->max_msgs;
    if (c->max_bytes != -2) sc.MaxBytes = c->max_bytes;
    if (c->max_age_ns >= 0) sc.MaxAge = c->max_age_ns;
    if (c->duplicates_ns >= 0) sc.Duplicates = c->duplicates_ns;
    if (c->replicas > 0) sc.Replicas = c->replicas;
    sc.Retention = c->retention == 1 ? js_InterestPolicy : js_LimitsPolicy;
    sc.Discard = c->discard == 1 ? js_DiscardNew : js_DiscardOld;
  }
  s = exists ? js_UpdateStream(&si, b->js, &sc, NULL, &jerr) : js_AddStream(&si, b->js, &sc, NULL, &jerr);
  if (si) jsStreamInfo_Destroy(si);
  if (s != NATS_OK && !exists && jerr == JSStreamNameExistErr) return 1; /* another process won */
  if (s != NATS_OK && exists) { /* e.g. a change the server refuses: keep using the stream */
    note(b, HLOG_WARN, "cannot update stream %s to the EventBus streamConfig: %s (using it as it is)",
         STREAM_NAME, herald_nats_status_text(s));
    return 1;
  }
  if (s != NATS_OK) {
    note(b, HLOG_WARN, "cannot create stream %s: %s", STREAM_NAME, herald_nats_status_text(s));
    return 0;
  }
  note(b, HLOG_INFO,
       "%s stream %s (subjects %s, file storage, %d replica(s), max %lld msgs, %lld bytes, age %llds, "
       "duplicates window %llds)",
       exists ? "updated" : "created", STREAM_NAME, STREAM_SUBJECTS, (int)sc.Replicas, (long long)sc.MaxMsgs,
       (long long)sc.MaxBytes, (long long)(sc.MaxAge / 1000000000LL), (long long)(sc.Duplicates / 1000000000LL));
  return 1;
}

static void finish_pub(jbus *b, jpub *p, int status) {
  p->status = status;
  p->next = NULL;
  uv_mutex_lock(&b->client.mu);
  if (b->done_tail) b->done_tail->next = p;
  else b->done_head = p;
  b->done_tail = p;
  uv_mutex_unlock(&b->client.mu);
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
    if (!b->js || natsConnection_Status(b->client.nc) != NATS_CONN_STATUS_CONNECTED) {
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
    uv_mutex_lock(&b->client.mu); /* registered before publishing: the PubAck may come at once */
    size_t h = pub_bucket(m);
    p->hnext = b->pending[h];
    b->pending[h] = p;
    uv_mutex_unlock(&b->client.mu);
    natsMsg *owned = m;
    s = js_PublishMsgAsync(b->js, &owned, &po);
    if (s != NATS_OK) {
      uv_mutex_lock(&b->client.mu);
      for (jpub **pp = &b->pending[h]; *pp; pp = &(*pp)->hnext)
        if (*pp == p) {
          *pp = p->hnext;
          break;
        }
      uv_mutex_unlock(&b->client.mu);
      natsMsg_Destroy(owned); /* no-op if nats.c kept it */
      p->msg = NULL;
      note(b, HLOG_WARN, "publish of event %s failed: %s", p->id, herald_nats_status_text(s));
      finish_pub(b, p, HERALD_EIO);
    }
  }
  if (failed_down) note(b, HLOG_WARN, "%d event(s) refused: not connected to %s", failed_down, b->client.url);
}

static void worker_acks(jbus *b, herald_bus_delivery *d) {
  while (d) {
    herald_bus_delivery *next = d->next;
    natsStatus s = d->nak_delay < 0 ? natsMsg_Ack(d->msg, NULL)
                                    : natsMsg_NakWithDelay(d->msg, d->nak_delay, NULL);
    if (s != NATS_OK) /* the server redelivers it after AckWait; de-dup keeps triggers quiet */
      note(b, HLOG_DEBUG, "ack not sent: %s", herald_nats_status_text(s));
    natsMsg_Destroy(d->msg);
    free(d);
    d = next;
  }
}

static void worker_main(herald_nats *c) {
  jbus *b = c->data;
  herald_nats_connect(c); /* logs why a first attempt failed, then retries in the background */
  if (c->nc) {
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = PUBACK_TIMEOUT_MS;
    jo.PublishAsync.MaxPending = (int64_t)b->window * 2;
    jo.PublishAsync.AckHandler = on_puback;
    jo.PublishAsync.AckHandlerClosure = b;
    jsCtx *js = NULL;
    if (natsConnection_JetStream(&js, c->nc, &jo) != NATS_OK) js = NULL;
    uv_mutex_lock(&b->client.mu);
    b->js = js;
    uv_mutex_unlock(&b->client.mu);
  }
  for (;;) {
    uv_mutex_lock(&b->client.mu);
    while (!b->pub_head && !b->ack_head && !c->stop && !(b->js && c->connected && !stream_ready(b)) &&
           !(b->kv_head && b->js && c->connected))
      uv_cond_wait(&c->cond, &c->mu);
    jpub *pubs = b->pub_head;
    herald_bus_delivery *acks = b->ack_head;
    b->pub_head = b->pub_tail = NULL;
    b->ack_head = b->ack_tail = NULL;
    int stop = c->stop, need_stream = b->js && c->connected && !stream_ready(b);
    unsigned gen = c->connects;
    uv_mutex_unlock(&c->mu);
    if (need_stream && !stop) {
      int ok = ensure_stream(b);
      uv_mutex_lock(&c->mu);
      if (ok) b->stream_gen = gen;
      uv_cond_broadcast(&b->client.cond); /* fetch workers wait for the stream */
      if (!ok && !b->client.stop) uv_cond_timedwait(&b->client.cond, &b->client.mu, RETRY_WAIT_NS * 4);
      uv_mutex_unlock(&b->client.mu);
    }
    if (acks) worker_acks(b, acks);
    if (pubs) {
      worker_publish(b, pubs, stop);
      herald_nats_wake(c);
    }
    if (!stop) kv_worker_run(b);
    if (stop) break;
  }
  /* Closing: wake and join the fetch workers, send the last acks, wait (bounded) for the
   * PubAcks still due, close. The loop no longer adds subscriptions. */
  for (jsub *s2 = b->subs; s2; s2 = s2->next) {
    uv_mutex_lock(&b->client.mu);
    uv_cond_broadcast(&s2->cond);
    uv_mutex_unlock(&b->client.mu);
  }
  for (jsub *s2 = b->subs; s2; s2 = s2->next) uv_thread_join(&s2->thread);
  uv_mutex_lock(&b->client.mu);
  herald_bus_delivery *acks = b->ack_head;
  b->ack_head = b->ack_tail = NULL;
  jpub *pubs = b->pub_head;
  b->pub_head = b->pub_tail = NULL;
  uv_mutex_unlock(&b->client.mu);
  worker_acks(b, acks);
  if (pubs) worker_publish(b, pubs, 1);
  if (c->nc && natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED) {
    if (b->js) {
      jsPubOptions po;
      jsPubOptions_Init(&po);
      po.MaxWait = 2000;
      js_PublishAsyncComplete(b->js, &po);
    }
    natsConnection_FlushTimeout(c->nc, 1000);
  }
  herald_nats_close(c); /* before the subscriptions and the context go; destroyed after us */
  for (jsub *s2 = b->subs; s2; s2 = s2->next) {
    natsSubscription_Destroy(s2->ns); /* destroy only: the durable consumer stays on the server */
    s2->ns = NULL;
  }
  kv_worker_close(b);
  if (b->js) jsCtx_Destroy(b->js);
  b->js = NULL;
  /* PubAcks that never came: nats.c calls no handler after the close. */
  uv_mutex_lock(&b->client.mu);
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
  uv_mutex_unlock(&c->mu);
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
  /* HERALD_JS_ACK_WAIT_MS: how long a message fetched by a process that died stays unacked
   * before the server redelivers it (default 60 s; the fault specs shorten it). */
  const char *aw = getenv("HERALD_JS_ACK_WAIT_MS");
  so.Config.AckWait = aw && atoll(aw) > 0 ? atoll(aw) * 1000000LL : ACK_WAIT_NS;
  jsErrCode jerr = 0;
  natsStatus st = js_PullSubscribe(&s->ns, b->js, s->filter, s->consumer, NULL, &so, &jerr);
  if (st != NATS_OK) {
    note(b, HLOG_WARN, "%s: cannot create consumer %s on %s: %s", s->label, s->consumer, s->filter,
         herald_nats_status_text(st));
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
    uv_mutex_lock(&b->client.mu);
    while (!b->client.stop && !s->closed &&
           (!stream_ready(b) || !b->js || s->outstanding >= s->max_inflight ||
            b->kv_gate > 0))
      uv_cond_timedwait(&s->cond, &b->client.mu, RETRY_WAIT_NS); /* connection changes are polled */
    int done = b->client.stop || s->closed;
    uint32_t room = s->max_inflight - s->outstanding;
    uv_mutex_unlock(&b->client.mu);
    if (done) break;
    if (!s->ns && !sub_subscribe(s)) {
      uv_mutex_lock(&b->client.mu);
      if (!b->client.stop && !s->closed) uv_cond_timedwait(&s->cond, &b->client.mu, RETRY_WAIT_NS * 4);
      uv_mutex_unlock(&b->client.mu);
      continue;
    }
    natsMsgList list = {0};
    jsErrCode jerr = 0;
    natsStatus st = natsSubscription_Fetch(&list, s->ns, (int)(room < FETCH_BATCH ? room : FETCH_BATCH),
                                           FETCH_EXPIRY_MS, &jerr);
    if (st != NATS_OK && st != NATS_TIMEOUT && list.Count == 0) {
      uv_mutex_lock(&b->client.mu);
      int quiet = b->client.stop || !b->client.connected;
      if (!b->client.stop && !s->closed) uv_cond_timedwait(&s->cond, &b->client.mu, RETRY_WAIT_NS);
      uv_mutex_unlock(&b->client.mu);
      if (!quiet) note(b, HLOG_WARN, "%s: fetch failed: %s", s->label, herald_nats_status_text(st));
      continue;
    }
    herald_bus_delivery *head = NULL, *tail = NULL;
    uint32_t n = 0;
    for (int i = 0; i < list.Count; i++) {
      natsMsg *m = list.Msgs[i];
      list.Msgs[i] = NULL;
      const char *why = NULL;
      herald_event *ev = herald_event_from_json(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &why);
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
    uv_mutex_lock(&b->client.mu);
    s->outstanding += n;
    if (b->ready_tail) b->ready_tail->next = head;
    else b->ready_head = head;
    b->ready_tail = tail;
    uv_mutex_unlock(&b->client.mu);
    herald_nats_wake(&b->client);
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
  uv_mutex_lock(&b->client.mu);
  if (b->ack_tail) b->ack_tail->next = d;
  else b->ack_head = d;
  b->ack_tail = d;
  s->outstanding--;
  uv_cond_signal(&b->client.cond);
  uv_cond_signal(&s->cond);
  uv_mutex_unlock(&b->client.mu);
}

static void free_sub(jsub *s) {
  uv_cond_destroy(&s->cond);
  free(s->consumer), free(s->filter), free(s->label), free(s->slots), free(s->buckets);
  free(s);
}

/* (loop, last) The client is closed and its worker joined. */
static void bus_freed(herald_nats *c) {
  jbus *b = c->data;
  herald_bus_close_cb cb = b->close_cb;
  /* Deliveries the worker's last pass left (it is gone: nothing sends their acks). */
  while (b->ack_head) {
    herald_bus_delivery *d = b->ack_head;
    b->ack_head = d->next;
    natsMsg_Destroy(d->msg);
    free(d);
  }
  while (b->subs) {
    jsub *s = b->subs;
    b->subs = s->next;
    free_sub(s);
  }
  free(b->client.url);
  free(b);
  if (cb) cb(NULL);
}

/* (loop) After each hand-off: connection changes, notes (logged by the client), finished
 * state ops, PubAcks, fetched messages. */
static void on_wake(herald_nats *c, int events) {
  jbus *b = c->data;
  kv_loop_drain(b); /* before any delivery: loaded state comes first */
  uv_mutex_lock(&c->mu);
  jpub *done = b->done_head;
  b->done_head = b->done_tail = NULL;
  herald_bus_delivery *ready = b->ready_head;
  b->ready_head = b->ready_tail = NULL;
  uv_mutex_unlock(&c->mu);
  if (events & HERALD_NATS_DISCONNECTED) b->stats.disconnects++;
  if (events & HERALD_NATS_RECONNECTED) b->stats.reconnects++;

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
  uv_mutex_lock(&b->client.mu);
  if (b->pub_tail) b->pub_tail->next = p;
  else b->pub_head = p;
  b->pub_tail = p;
  uv_cond_signal(&b->client.cond);
  uv_mutex_unlock(&b->client.mu);
  return 0;
}

/* "<sensor>/<subscription>" -> a durable name NATS accepts: [A-Za-z0-9_-] kept, the rest '_',
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
  uv_mutex_lock(&b->client.mu);
  s->closed = 1;
  uv_cond_signal(&s->cond);
  uv_mutex_unlock(&b->client.mu);
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
  out->duplicates = b->duplicates;
  uv_mutex_lock(&b->client.mu);
  out->connected = stream_ready(b);
  uv_mutex_unlock(&b->client.mu);
}

static void jb_close(herald_bus *bus, herald_bus_close_cb cb) {
  jbus *b = (jbus *)bus;
  b->closing = 1;
  b->close_cb = cb;
  herald_nats_stop(&b->client, bus_freed); /* the conn worker then wakes the fetch workers */
  uv_mutex_lock(&b->client.mu);
  for (jsub *s = b->subs; s; s = s->next) uv_cond_broadcast(&s->cond);
  uv_mutex_unlock(&b->client.mu);
}

/* ---- dependency state: a key-value bucket per sensor ----
 *
 *   loop: state_open / state_set / cleanup --op queue (call order)--> conn worker:
 *   kvStore_* (synchronous, on the worker only) --done list--> loop: callbacks
 *
 * Bucket: the sensor name made safe (as consumer names). Keys: "Deps" (one line per
 * subscription, "name\tsource\tsubject", to find removed or changed ones on the next start) and
 * "<trigger>/<dependency>" (each name with bytes outside [A-Za-z0-9_-] written "=XX"), whose
 * value is the event's CloudEvent JSON, decoded on load as a fetched message is. Until a load
 * has reached the loop, kv_gate keeps every fetch worker from fetching, so a restored half-met
 * condition is in place before the first event. An op that fails while connected is retried
 * KV_TRIES times, then completes with HERALD_EIO; while disconnected it waits at the head of
 * the queue (so the ops on one key keep their order). */

#define KV_TRIES 8
#define KV_DEPS_KEY "Deps"
#define LEASE_BUCKET "herald_leases"

enum { KV_OPEN, KV_SET, KV_CLEANUP, KV_LEASE };

struct jkv_op {
  int kind;
  char *sensor;
  char *key;   /* KV_SET */
  char *value; /* KV_SET: CloudEvent JSON, NULL = delete */
  size_t len;
  char *deps_text;                /* KV_OPEN: the new "Deps" value; KV_CLEANUP: names, '\n' ended */
  char **keys, **key_trig, **key_dep, **key_sub; /* KV_OPEN: the spec's keys, encoded and as given */
  size_t nkeys;
  int tries, status;
  herald_bus_state_entry *entries; /* KV_OPEN result */
  herald_bus_state_load_cb load_cb;
  herald_bus_state_cb cb;
  uint64_t rev, ttl_ms;            /* KV_LEASE: the revision held (0: none) -> the new one */
  int lease_status;                /* KV_LEASE: 0 or HERALD_EHELD */
  herald_bus_lease_cb lease_cb;    /* KV_LEASE; `value` is the holder, `key` the lease */
  void *data;
  jkv_op *next;
};

struct jkv_bucket {
  char *sensor;
  kvStore *kv;
  jkv_bucket *next;
};

static void kv_encode(herald_buf *out, const char *name) {
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
    int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
             *p == '_' || *p == '-';
    if (ok) herald_buf_putc(out, (char)*p);
    else herald_buf_printf(out, "=%02X", *p);
  }
}

/* Returns a new "<trigger>/<dep>" key; the caller frees it. */
static char *kv_key(const char *trigger, const char *dep) {
  herald_buf k = HERALD_BUF_INIT;
  kv_encode(&k, trigger);
  herald_buf_putc(&k, '/');
  kv_encode(&k, dep);
  herald_buf_putc(&k, '\0');
  return k.data;
}

static char *consumer_name(const char *durable);

static void kv_free_entries(herald_bus_state_entry *e) {
  while (e) {
    herald_bus_state_entry *n = e->next;
    if (e->ev) herald_event_unref(e->ev); /* on the loop (release hook) or never seen by Lua */
    free(e);
    e = n;
  }
}

static void kv_op_free(jkv_op *op) {
  for (size_t i = 0; i < op->nkeys; i++)
    free(op->keys[i]), free(op->key_trig[i]), free(op->key_dep[i]), free(op->key_sub[i]);
  free(op->keys), free(op->key_trig), free(op->key_dep), free(op->key_sub);
  free(op->sensor), free(op->key), free(op->value), free(op->deps_text);
  kv_free_entries(op->entries);
  free(op);
}

/* (worker) Opens the key-value bucket `name` or, when it is missing and `create`, makes it
 * (history 1, file storage, one replica; entries lapse after ttl_ns when it is not 0). Another
 * process making it at the same time is fine. *created tells whether this call made it. */
static natsStatus kv_open(jbus *b, const char *name, int create, int64_t ttl_ns, kvStore **kv, int *created) {
  *created = 0;
  natsStatus st = js_KeyValue(kv, b->js, name);
  if (st != NATS_NOT_FOUND || !create) return st;
  kvConfig kc;
  kvConfig_Init(&kc);
  kc.Bucket = name;
  kc.History = 1;
  kc.TTL = ttl_ns; /* the stream's MaxAge */
  kc.StorageType = js_FileStorage;
  kc.Replicas = 1;
  st = js_CreateKeyValue(kv, b->js, &kc);
  if (st == NATS_OK) *created = 1;
  else st = js_KeyValue(kv, b->js, name); /* made meanwhile */
  return st;
}

/* (worker) The sensor's bucket, opened (or created when `create`) once and kept. */
static kvStore *kv_bucket(jbus *b, const char *sensor, int create, natsStatus *st) {
  for (jkv_bucket *k = b->kv_buckets; k; k = k->next)
    if (strcmp(k->sensor, sensor) == 0) return k->kv;
  char *name = consumer_name(sensor);
  kvStore *kv = NULL;
  int created;
  *st = kv_open(b, name, create, 0, &kv, &created);
  if (created) note(b, HLOG_INFO, "sensor %s: created state bucket %s", sensor, name);
  free(name);
  if (*st != NATS_OK) return NULL;
  jkv_bucket *k = herald_xcalloc(1, sizeof *k);
  k->sensor = herald_xstrdup(sensor);
  k->kv = kv;
  k->next = b->kv_buckets;
  b->kv_buckets = k;
  return kv;
}

static void kv_forget_bucket(jbus *b, const char *sensor) {
  for (jkv_bucket **pp = &b->kv_buckets; *pp; pp = &(*pp)->next) {
    if (strcmp((*pp)->sensor, sensor) == 0) {
      jkv_bucket *k = *pp;
      *pp = k->next;
      kvStore_Destroy(k->kv);
      free(k->sensor), free(k);
      return;
    }
  }
}

/* (worker) Deletes the durable consumer of sensor/sub; a missing one is fine. */
static natsStatus kv_delete_consumer(jbus *b, const char *sensor, const char *sub, const char *why) {
  char *durable = herald_xasprintf("%s/%s", sensor, sub);
  char *name = consumer_name(durable);
  jsErrCode jerr = 0;
  natsStatus st = js_DeleteConsumer(b->js, STREAM_NAME, name, NULL, &jerr);
  if (st == NATS_OK) note(b, HLOG_INFO, "%s: consumer %s deleted (%s)", durable, name, why);
  if (st == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) st = NATS_OK;
  free(durable), free(name);
  return st;
}

/* Finds the line "name\t..." in a "Deps" text; returns its start or NULL. */
static const char *deps_find(const char *text, const char *name, size_t nlen) {
  for (const char *p = text; p && *p;) {
    const char *eol = strchr(p, '\n');
    if (strncmp(p, name, nlen) == 0 && p[nlen] == '\t') return p;
    p = eol ? eol + 1 : NULL;
  }
  return NULL;
}

static size_t line_len(const char *p) {
  const char *eol = strchr(p, '\n');
  return eol ? (size_t)(eol - p) : strlen(p);
}

/* (worker) Deletes the consumers named in an old "Deps" text that `keep` (a new one, or NULL)
 * does not have with the same source and subject; returns the changed/removed names, one
 * per line (caller frees), or NULL on a server error. */
static char *kv_prune_deps(jbus *b, const char *sensor, const char *old, const char *keep, natsStatus *st) {
  herald_buf gone = HERALD_BUF_INIT;
  herald_buf_putc(&gone, '\n');
  *st = NATS_OK;
  for (const char *p = old; p && *p;) {
    size_t len = line_len(p);
    const char *tab = memchr(p, '\t', len);
    if (tab) {
      size_t nlen = (size_t)(tab - p);
      const char *now = keep ? deps_find(keep, p, nlen) : NULL;
      if (!now || line_len(now) != len || memcmp(now, p, len) != 0) {
        char *sub = herald_xasprintf("%.*s", (int)nlen, p);
        *st = kv_delete_consumer(b, sensor, sub, !keep ? "cleanup" : now ? "dependency changed" : "dependency removed");
        if (now) herald_buf_printf(&gone, "%s\n", sub);
        free(sub);
        if (*st != NATS_OK) break;
      }
    }
    p = p[len] ? p + len + 1 : NULL;
  }
  herald_buf_putc(&gone, '\0');
  if (*st != NATS_OK) {
    herald_buf_free(&gone);
    return NULL;
  }
  return gone.data;
}

/* (worker) Reads a key's value as a new NUL-terminated string; NULL when missing. */
static char *kv_get_text(kvStore *kv, const char *key, natsStatus *st) {
  kvEntry *e = NULL;
  *st = kvStore_Get(&e, kv, key);
  if (*st == NATS_NOT_FOUND) {
    *st = NATS_OK;
    return NULL;
  }
  if (*st != NATS_OK) return NULL;
  char *t = herald_xasprintf("%.*s", kvEntry_ValueLen(e), (const char *)kvEntry_Value(e));
  kvEntry_Destroy(e);
  return t;
}

static natsStatus kv_do_open(jbus *b, jkv_op *op) {
  natsStatus st;
  kvStore *kv = kv_bucket(b, op->sensor, 1, &st);
  if (!kv) return st;
  char *old = kv_get_text(kv, KV_DEPS_KEY, &st);
  if (st != NATS_OK) return st;
  char *changed = kv_prune_deps(b, op->sensor, old ? old : "", op->deps_text, &st);
  free(old);
  if (!changed) return st;
  uint64_t rev;
  st = kvStore_Put(&rev, kv, KV_DEPS_KEY, op->deps_text, (int)strlen(op->deps_text));
  kvKeysList keys = {0};
  if (st == NATS_OK) {
    st = kvStore_Keys(&keys, kv, NULL);
    if (st == NATS_NOT_FOUND) st = NATS_OK;
  }
  for (int i = 0; st == NATS_OK && i < keys.Count; i++) {
    const char *k = keys.Keys[i];
    if (strcmp(k, KV_DEPS_KEY) == 0) continue;
    size_t j = 0;
    while (j < op->nkeys && strcmp(op->keys[j], k) != 0) j++;
    herald_event *ev = NULL;
    const char *why = "no longer in the spec";
    if (j < op->nkeys) {
      char *needle = herald_xasprintf("\n%s\n", op->key_sub[j]);
      if (strstr(changed, needle)) why = "dependency changed";
      free(needle);
    }
    if (j < op->nkeys && strcmp(why, "dependency changed") != 0) {
      kvEntry *e = NULL;
      st = kvStore_Get(&e, kv, k);
      if (st == NATS_NOT_FOUND) { /* deleted meanwhile */
        st = NATS_OK;
        continue;
      }
      if (st != NATS_OK) break;
      why = NULL;
      ev = herald_event_from_json(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e), &why);
      kvEntry_Destroy(e);
      if (ev) {
        herald_bus_state_entry *en = herald_xcalloc(1, sizeof *en);
        en->trigger = op->key_trig[j];
        en->dep = op->key_dep[j];
        en->ev = ev;
        en->next = op->entries;
        op->entries = en;
        continue;
      }
    }
    st = kvStore_Purge(kv, k, NULL);
    if (st == NATS_OK) note(b, HLOG_INFO, "sensor %s: state %s removed (%s)", op->sensor, k, why);
  }
  kvKeysList_Destroy(&keys);
  free(changed);
  if (st != NATS_OK) {
    kv_free_entries(op->entries); /* retried from scratch */
    op->entries = NULL;
  }
  return st;
}

static natsStatus kv_do_cleanup(jbus *b, jkv_op *op) {
  natsStatus st;
  kv_forget_bucket(b, op->sensor);
  kvStore *kv = NULL;
  char *bucket = consumer_name(op->sensor);
  st = js_KeyValue(&kv, b->js, bucket);
  char *old = NULL;
  if (st == NATS_OK) {
    old = kv_get_text(kv, KV_DEPS_KEY, &st);
    kvStore_Destroy(kv);
  } else if (st == NATS_NOT_FOUND) {
    st = NATS_OK;
  }
  herald_buf all = HERALD_BUF_INIT; /* remembered subscriptions + the given ones, as "name\t" lines */
  if (old) herald_buf_printf(&all, "%s\n", old);
  for (const char *p = op->deps_text; p && *p; p += line_len(p) + 1)
    herald_buf_printf(&all, "%.*s\t\n", (int)line_len(p), p);
  herald_buf_putc(&all, '\0');
  char *gone = st == NATS_OK ? kv_prune_deps(b, op->sensor, all.data, NULL, &st) : NULL;
  free(gone), free(old);
  herald_buf_free(&all);
  if (st == NATS_OK) {
    st = js_DeleteKeyValue(b->js, bucket);
    if (st == NATS_OK) note(b, HLOG_INFO, "sensor %s: state bucket %s deleted", op->sensor, bucket);
    if (st == NATS_NOT_FOUND) st = NATS_OK;
  }
  free(bucket);
  return st;
}

/* (worker) Leader election: the leases bucket (TTL = the lease time: a lease not renewed
 * lapses) holds one key per elected thing, whose value names the holder. Create takes a lapsed
 * or free lease; Update renews ours only if nobody took it since (revision check). The outcome
 * is NATS_OK with lease_status 0 (op->rev the new revision) or HERALD_EHELD (op->value the
 * holder); anything else is a server error. */
static natsStatus kv_do_lease(jbus *b, jkv_op *op) {
  natsStatus st = NATS_OK;
  if (!b->lease_kv) {
    int created;
    st = kv_open(b, LEASE_BUCKET, 1, (int64_t)op->ttl_ms * 1000000, &b->lease_kv, &created);
    if (st != NATS_OK) return st;
  }
  int len = (int)strlen(op->value);
  uint64_t rev = 0;
  st = op->rev ? kvStore_Update(&rev, b->lease_kv, op->key, op->value, len, op->rev)
               : kvStore_Create(&rev, b->lease_kv, op->key, op->value, len);
  if (st != NATS_OK) {
    kvEntry *e = NULL;
    natsStatus gs = kvStore_Get(&e, b->lease_kv, op->key);
    if (gs == NATS_NOT_FOUND && op->rev) { /* ours lapsed and nobody took it: take it again */
      st = kvStore_Create(&rev, b->lease_kv, op->key, op->value, len);
      if (st != NATS_OK) gs = kvStore_Get(&e, b->lease_kv, op->key);
    }
    if (st != NATS_OK && gs == NATS_OK) {
      free(op->value);
      op->value = herald_xasprintf("%.*s", kvEntry_ValueLen(e), (const char *)kvEntry_Value(e));
      kvEntry_Destroy(e);
      op->lease_status = HERALD_EHELD;
      return NATS_OK;
    }
    if (st != NATS_OK) return st;
  }
  op->rev = rev;
  op->lease_status = 0;
  return NATS_OK;
}

static natsStatus kv_do(jbus *b, jkv_op *op) {
  if (op->kind == KV_OPEN) return kv_do_open(b, op);
  if (op->kind == KV_LEASE) return kv_do_lease(b, op);
  if (op->kind == KV_CLEANUP) return kv_do_cleanup(b, op);
  natsStatus st;
  kvStore *kv = kv_bucket(b, op->sensor, 1, &st);
  if (!kv) return st;
  if (op->value) {
    uint64_t rev;
    st = kvStore_Put(&rev, kv, op->key, op->value, (int)op->len);
  } else {
    st = kvStore_Delete(kv, op->key);
  }
  if (st == NATS_OK)
    note(b, HLOG_DEBUG, "sensor %s: state %s %s", op->sensor, op->key, op->value ? "stored" : "deleted");
  return st;
}

static void kv_finish(jbus *b, jkv_op *op, int status) {
  op->status = status;
  op->next = NULL;
  if (b->kv_done_tail) b->kv_done_tail->next = op;
  else b->kv_done_head = op;
  b->kv_done_tail = op;
}

/* (worker) Runs the queued ops in order while connected. */
static void kv_worker_run(jbus *b) {
  for (;;) {
    uv_mutex_lock(&b->client.mu);
    jkv_op *op = b->kv_head;
    int go = op && b->js && b->client.connected && !b->client.stop;
    uv_mutex_unlock(&b->client.mu);
    if (!go) return;
    natsStatus st = kv_do(b, op);
    uv_mutex_lock(&b->client.mu);
    if (st != NATS_OK && !b->client.connected) { /* stays at the head until the connection is back */
      uv_mutex_unlock(&b->client.mu);
      return;
    }
    if (st != NATS_OK && op->kind != KV_LEASE && ++op->tries < KV_TRIES) { /* a lease is asked again anyway */
      uv_mutex_unlock(&b->client.mu);
      if (op->tries == 1) note(b, HLOG_WARN, "sensor %s: state: %s: retrying", op->sensor, herald_nats_status_text(st));
      uv_mutex_lock(&b->client.mu);
      if (!b->client.stop) uv_cond_timedwait(&b->client.cond, &b->client.mu, RETRY_WAIT_NS);
      uv_mutex_unlock(&b->client.mu);
      continue;
    }
    b->kv_head = op->next;
    if (!b->kv_head) b->kv_tail = NULL;
    kv_finish(b, op, st == NATS_OK ? 0 : HERALD_EIO);
    uv_mutex_unlock(&b->client.mu);
    if (st != NATS_OK && op->kind != KV_LEASE)
      note(b, HLOG_ERROR, "sensor %s: state: %s: giving up", op->sensor, herald_nats_status_text(st));
    herald_nats_wake(&b->client);
  }
}

/* (worker, closing) Completes what is left with HERALD_ECLOSED and drops the buckets. */
static void kv_worker_close(jbus *b) {
  uv_mutex_lock(&b->client.mu);
  while (b->kv_head) {
    jkv_op *op = b->kv_head;
    b->kv_head = op->next;
    kv_finish(b, op, HERALD_ECLOSED);
  }
  b->kv_tail = NULL;
  uv_mutex_unlock(&b->client.mu);
  while (b->kv_buckets) kv_forget_bucket(b, b->kv_buckets->sensor);
  if (b->lease_kv) kvStore_Destroy(b->lease_kv);
  b->lease_kv = NULL;
}

/* (loop) Runs the callbacks of finished ops, in order. */
static void kv_loop_drain(jbus *b) {
  uv_mutex_lock(&b->client.mu);
  jkv_op *op = b->kv_done_head;
  b->kv_done_head = b->kv_done_tail = NULL;
  uv_mutex_unlock(&b->client.mu);
  while (op) {
    jkv_op *next = op->next;
    if (op->kind == KV_OPEN) {
      if (op->status < 0)
        herald_log(&b->log, HLOG_ERROR, "sensor %s: cannot load the dependency state: %s", op->sensor,
                   herald_strerror(op->status));
      op->load_cb(op->data, op->status, op->entries);
      uv_mutex_lock(&b->client.mu);
      b->kv_gate--;
      for (jsub *s = b->subs; s; s = s->next) uv_cond_signal(&s->cond);
      uv_mutex_unlock(&b->client.mu);
    } else if (op->kind == KV_LEASE) {
      op->lease_cb(op->data, op->status < 0 ? op->status : op->lease_status, op->rev, op->value);
    } else if (op->cb) {
      op->cb(op->data, op->status);
    }
    kv_op_free(op);
    op = next;
  }
}

static int kv_queue(jbus *b, jkv_op *op) {
  uv_mutex_lock(&b->client.mu);
  if (op->kind == KV_OPEN) b->kv_gate++;
  if (b->kv_tail) b->kv_tail->next = op;
  else b->kv_head = op;
  b->kv_tail = op;
  uv_cond_signal(&b->client.cond);
  uv_mutex_unlock(&b->client.mu);
  return 0;
}

static int jb_state_open(herald_bus *bus, const char *sensor, const herald_bus_state_spec *spec,
                         herald_bus_state_load_cb cb, void *data) {
  jbus *b = (jbus *)bus;
  if (b->closing) return HERALD_ECLOSED;
  jkv_op *op = herald_xcalloc(1, sizeof *op);
  op->kind = KV_OPEN;
  op->sensor = herald_xstrdup(sensor);
  herald_buf deps = HERALD_BUF_INIT;
  for (size_t i = 0; i < spec->nsubs; i++)
    herald_buf_printf(&deps, "%s\t%s\t%s\n", spec->subs[i].name, spec->subs[i].source, spec->subs[i].subject);
  herald_buf_putc(&deps, '\0');
  op->deps_text = deps.data;
  op->nkeys = spec->nkeys;
  op->keys = herald_xcalloc(spec->nkeys + 1, sizeof *op->keys);
  op->key_trig = herald_xcalloc(spec->nkeys + 1, sizeof *op->key_trig);
  op->key_dep = herald_xcalloc(spec->nkeys + 1, sizeof *op->key_dep);
  op->key_sub = herald_xcalloc(spec->nkeys + 1, sizeof *op->key_sub);
  for (size_t i = 0; i < spec->nkeys; i++) {
    op->keys[i] = kv_key(spec->keys[i].trigger, spec->keys[i].dep);
    op->key_trig[i] = herald_xstrdup(spec->keys[i].trigger);
    op->key_dep[i] = herald_xstrdup(spec->keys[i].dep);
    op->key_sub[i] = herald_xstrdup(spec->keys[i].sub);
  }
  op->load_cb = cb;
  op->data = data;
  return kv_queue(b, op);
}

static int jb_state_set(herald_bus *bus, const char *sensor, const char *trigger, const char *dep,
                        herald_event *ev, herald_bus_state_cb cb, void *data) {
  jbus *b = (jbus *)bus;
  if (b->closing) return HERALD_ECLOSED;
  jkv_op *op = herald_xcalloc(1, sizeof *op);
  op->kind = KV_SET;
  op->sensor = herald_xstrdup(sensor);
  op->key = kv_key(trigger, dep);
  if (ev) {
    herald_buf v = HERALD_BUF_INIT;
    herald_event_to_json(ev, &v);
    op->len = v.len;
    herald_buf_putc(&v, '\0');
    op->value = v.data;
  }
  op->cb = cb;
  op->data = data;
  return kv_queue(b, op);
}

static int jb_cleanup(herald_bus *bus, const char *sensor, const char *const *subs, size_t nsubs,
                      herald_bus_state_cb cb, void *data) {
  jbus *b = (jbus *)bus;
  if (b->closing) return HERALD_ECLOSED;
  jkv_op *op = herald_xcalloc(1, sizeof *op);
  op->kind = KV_CLEANUP;
  op->sensor = herald_xstrdup(sensor);
  herald_buf names = HERALD_BUF_INIT;
  for (size_t i = 0; i < nsubs; i++) herald_buf_printf(&names, "%s\n", subs[i]);
  herald_buf_putc(&names, '\0');
  op->deps_text = names.data;
  op->cb = cb;
  op->data = data;
  return kv_queue(b, op);
}

static int jb_lease(herald_bus *bus, const char *name, const char *holder, uint64_t revision,
                    uint64_t ttl_ms, herald_bus_lease_cb cb, void *data) {
  jbus *b = (jbus *)bus;
  if (b->closing) return HERALD_ECLOSED;
  jkv_op *op = herald_xcalloc(1, sizeof *op);
  op->kind = KV_LEASE;
  op->sensor = herald_xstrdup(name); /* for logs */
  herald_buf k = HERALD_BUF_INIT;
  kv_encode(&k, name);
  herald_buf_putc(&k, '\0');
  op->key = k.data;
  op->value = herald_xstrdup(holder);
  op->rev = revision;
  op->ttl_ms = ttl_ms;
  op->lease_cb = cb;
  op->data = data;
  return kv_queue(b, op);
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
    .state_open = jb_state_open,
    .state_set = jb_state_set,
    .cleanup = jb_cleanup,
    .lease = jb_lease,
};

herald_bus *herald_bus_jetstream_new(uv_loop_t *loop, const herald_jetstream_config *cfg, int *err) {
  jbus *b = herald_xcalloc(1, sizeof *b);
  b->base.ops = &jetstream_ops;
  b->base.loop = loop;
  b->log.name = "bus:jetstream";
  b->window = cfg->window ? cfg->window : DEFAULT_WINDOW;
  b->stream = *cfg;
  b->stream.url = b->stream.user = b->stream.password = b->stream.token = b->stream.creds_file = NULL;
  b->stream.ca_pem = b->stream.cert_pem = b->stream.key_pem = NULL;
  herald_nats_config nc = {
      .url = cfg->url,
      .user = cfg->user,
      .password = cfg->user ? (cfg->password ? cfg->password : "") : NULL, /* as given, or none */
      .token = cfg->token,
      .creds_file = cfg->creds_file,
      .tls = cfg->tls,
      .ca_pem = cfg->ca_pem,
      .cert_pem = cfg->cert_pem,
      .key_pem = cfg->key_pem,
      .tls_insecure = cfg->tls_insecure,
      /* reconnect_wait_ms 0, max_reconnects 0: backoff, for ever (a bus outlives any outage) */
  };
  b->client.data = b;
  int r = herald_nats_start(loop, &b->client, &nc, &b->log, worker_main, on_wake);
  if (r) {
    free(b);
    *err = r;
    return NULL;
  }
  return &b->base;
}
