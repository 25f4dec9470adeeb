/*
 * sources/sqs/sqs.c: the `sqs` event source (Argo's SQSEventSource): an AWS SQS queue read
 * with long polling over SQS's JSON protocol, on libcurl driven by the loop.
 *
 *   start -> credentials (lib/aws: static keys | env | web identity | IMDS, then roleARN)
 *         -> GetQueueUrl (queueAccountId) -> GetQueueAttributes (its VisibilityTimeout)
 *   poll:    ReceiveMessage (10 at most, WaitTimeSeconds: the long poll) -> one event per
 *            message, data {messageId, messageAttributes, body[, metadata]} as Argo marshals
 *            it; on JetStream the CloudEvent id is the MessageId (a redelivery is dropped as
 *            a duplicate) -> herald_source_emit_id
 *   emit callback, status 0 (the bus holds it) -> DeleteMessageBatch (10 a call)
 *   still waiting for the bus after half the visibility timeout -> ChangeMessageVisibilityBatch
 *            (so a slow or full bus does not make SQS hand the message out again)
 *
 * RECEIVERS receives are in flight at once (the next starts as soon as one answers), overlapping
 * the emits and deletes, until MAX_OUTSTANDING messages are between receive and delete; a full bus stops emitting
 * (herald_source_when_room) and so, soon, receiving. Errors: reconnect with connectionBackoff;
 * ExpiredToken re-reads the secrets and fetches credentials again; a queue that disappeared is
 * looked up again. A message Herald cannot turn into an event (jsonBody and not JSON, over the
 * size limit) is counted, logged and deleted, or, with dlq, left for the queue's redrive policy
 * to move to its dead-letter queue (as Argo).
 */
#include "aws/aws.h"
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "event.h"
#include "metrics.h"
#include "plugin.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_OUTSTANDING 200   /* messages received and not yet deleted */
#define RECEIVERS 2           /* long polls in flight: one answers while the other travels */
#define MAX_RESPONSE (64u << 20)
#define DEFAULT_VISIBILITY 30 /* s, when GetQueueAttributes does not say */

enum { K_URL, K_ATTR, K_RECV, K_DEL, K_VIS };
static const char *const TARGET[] = {"GetQueueUrl", "GetQueueAttributes", "ReceiveMessage",
                                     "DeleteMessageBatch", "ChangeMessageVisibilityBatch"};

/* message states */
enum { M_PENDING, M_EMITTING, M_DELETE, M_DELETING };

typedef struct sqs sqs;
typedef struct sqs_msg sqs_msg;
typedef struct sqs_call sqs_call;

struct sqs_msg {
  sqs *q;
  char *id, *receipt;
  char eid[33]; /* CloudEvent id: the MessageId (a UUID) without its dashes, as Herald's ids */
  char *data;
  size_t len;
  int state;
  int drop;        /* not an event: delete without emitting */
  uint64_t ext_ms; /* when its visibility was last set (received or extended) */
  sqs_msg *prev, *next;
};

struct sqs_call {
  herald_curl_xfer x;
  sqs *q;
  int kind;
  struct curl_slist *hdrs;
  herald_buf body, resp;
  sqs_msg *msgs[10];
  int nmsgs;
  herald_aws_waiter w;
  sqs_call *prev, *next;
};

typedef struct msg_list {
  sqs_msg *head, *tail;
  size_t n;
} msg_list;

struct sqs {
  herald_source *src;
  char *region, *queue, *account, *role_arn;
  int wait_s, json_body, dlq;
  char *metadata_json;
  /* secrets, kept by name to re-read them after an ExpiredToken */
  char *ak_name, *ak_key, *sk_name, *sk_key, *tok_name, *tok_key;
  herald_aws_endpoint ep;
  herald_aws_creds *creds;
  herald_backoff backoff;
  char *queue_url;
  int vis_s;
  int have_attrs;
  /* messages between receive and delete, by state */
  msg_list pending;  /* to emit, in order */
  msg_list emitting; /* handed to the bus */
  msg_list to_delete;
  size_t outstanding;
  sqs_call *calls; /* in flight */
  int receiving, resolving, waiting_room, retry_armed, stopping, deletes;
  uv_timer_t retry, ext, flush;
  int timers_open, closing_timers;
  /* the MessageId as CloudEvent id only on JetStream (a redelivery dropped as a duplicate):
   * the embedded bus's --bus-dir log keys deliveries by id and lost a redelivered copy of an
   * event it already held after a crash (found by the pubSub source's kill -9 spec) */
  int stable_ids;
  herald_source_stop_cb stop_done;
  herald_buf scratch, body;
};

/* ---- lists ---- */

static void list_push(msg_list *l, sqs_msg *m) {
  m->next = NULL;
  m->prev = l->tail;
  if (l->tail) l->tail->next = m;
  else l->head = m;
  l->tail = m;
  l->n++;
}

static void list_remove(msg_list *l, sqs_msg *m) {
  if (m->prev) m->prev->next = m->next;
  else l->head = m->next;
  if (m->next) m->next->prev = m->prev;
  else l->tail = m->prev;
  m->prev = m->next = NULL;
  l->n--;
}

static void msg_free(sqs_msg *m) {
  m->q->outstanding--;
  free(m->id), free(m->receipt), free(m->data);
  free(m);
}

static void poll_queue(sqs *q);
static void pump(sqs *q);
static void maybe_done(sqs *q);
static void flush_deletes(sqs *q);
static void on_ext(uv_timer_t *t);

/* ---- calls ---- */

static size_t on_body(char *ptr, size_t size, size_t n, void *data) {
  herald_buf *b = data;
  size_t len = size * n;
  if (b->len + len > MAX_RESPONSE) return 0; /* aborts the transfer */
  herald_buf_append(b, ptr, len);
  return len;
}

static void call_free(sqs_call *c) {
  sqs *q = c->q;
  if (c->w.queued) herald_aws_creds_cancel(q->creds, &c->w);
  herald_curl_xfer_release(&c->x);
  curl_slist_free_all(c->hdrs);
  herald_buf_free(&c->body), herald_buf_free(&c->resp);
  if (c->prev) c->prev->next = c->next;
  else q->calls = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
}

static void on_call_done(herald_curl_xfer *x, CURLcode rc);
static void call_failed(sqs_call *c, const char *why, const char *code);

static void call_send(sqs_call *c) {
  sqs *q = c->q;
  herald_sigv4_creds cr = herald_aws_creds_current(q->creds);
  char target[80];
  snprintf(target, sizeof target, "X-Amz-Target: AmazonSQS.%s", TARGET[c->kind]);
  const char *extra[] = {"Content-Type: application/x-amz-json-1.0", target};
  herald_buf url = HERALD_BUF_INIT;
  c->hdrs = herald_aws_sign(NULL, &q->ep, "POST", "/", NULL, extra, 2, c->body.data, c->body.len,
                            q->region, "sqs", &cr, &url);
  if (herald_curl_xfer_init(&c->x) != 0) {
    herald_buf_free(&url);
    call_failed(c, "out of memory", NULL);
    return;
  }
  c->x.data = c;
  CURL *e = c->x.easy;
  herald_curl_xfer_url(&c->x, herald_buf_cstr(&url));
  herald_buf_free(&url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->hdrs);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body.data);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body.len);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &c->resp);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(c->kind == K_RECV ? q->wait_s + 30 : 30) * 1000L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  if (herald_curl_xfer_start(&c->x, on_call_done) != 0) call_failed(c, "cannot start the request", NULL);
}

static void on_creds(herald_aws_waiter *w, int status, const char *why) {
  sqs_call *c = w->data;
  if (status != 0) {
    call_failed(c, why ? why : "no credentials", "credentials");
    return;
  }
  call_send(c);
}

/* A new call of kind whose JSON body the caller writes into c->body, then call_start. */
static sqs_call *call_new(sqs *q, int kind) {
  sqs_call *c = herald_xcalloc(1, sizeof *c);
  c->q = q;
  c->kind = kind;
  c->w.cb = on_creds;
  c->w.data = c;
  c->next = q->calls;
  if (q->calls) q->calls->prev = c;
  q->calls = c;
  return c;
}

static void call_start(sqs_call *c) {
  int r = herald_aws_creds_get(c->q->creds, &c->w);
  if (r == 1) call_send(c);
  else if (r < 0) call_failed(c, "no AWS credentials (see the warning above)", "credentials");
}

/* ---- retries ---- */

static void on_retry(uv_timer_t *t) {
  sqs *q = t->data;
  q->retry_armed = 0;
  poll_queue(q);
}

static void retry_later(sqs *q) {
  if (q->stopping || q->retry_armed) return;
  q->retry_armed = 1;
  uv_timer_start(&q->retry, on_retry, herald_backoff_next(&q->backoff), 0);
}

/* The error code of an SQS JSON error answer ("QueueDoesNotExist" from
 * {"__type":"com.amazonaws.sqs#QueueDoesNotExist",...}) into code. */
static void error_code(const herald_buf *resp, char *code, size_t cap, char *msg, size_t mcap) {
  code[0] = msg[0] = '\0';
  if (!resp->len || !herald_json_valid(resp->data, resp->len, 16)) {
    snprintf(msg, mcap, "%.*s", (int)(resp->len < 200 ? resp->len : 200), resp->data ? resp->data : "");
    return;
  }
  herald_aws_json v = {resp->data, resp->data + resp->len}, f;
  herald_buf b = HERALD_BUF_INIT;
  if (herald_aws_json_get(v, "__type", &f) == 0 && herald_aws_json_str(f, &b) == 0) {
    const char *s = herald_buf_cstr(&b), *h = strrchr(s, '#');
    snprintf(code, cap, "%s", h ? h + 1 : s);
  }
  herald_buf_reset(&b);
  if ((herald_aws_json_get(v, "message", &f) == 0 || herald_aws_json_get(v, "Message", &f) == 0) &&
      herald_aws_json_str(f, &b) == 0)
    snprintf(msg, mcap, "%s", herald_buf_cstr(&b));
  herald_buf_free(&b);
}

static void reread_secrets(sqs *q) {
  herald_engine *eng = q->src->engine;
  int err;
  char *ak = q->ak_name ? herald_secret_read(eng, q->ak_name, q->ak_key, &err) : NULL;
  char *sk = q->sk_name ? herald_secret_read(eng, q->sk_name, q->sk_key, &err) : NULL;
  char *tok = q->tok_name ? herald_secret_read(eng, q->tok_name, q->tok_key, &err) : NULL;
  if (ak && sk) herald_aws_creds_set_static(q->creds, ak, sk, tok);
  else herald_aws_creds_expire(q->creds);
  if (ak) memset(ak, 0, strlen(ak)), free(ak);
  if (sk) memset(sk, 0, strlen(sk)), free(sk);
  if (tok) memset(tok, 0, strlen(tok)), free(tok);
}

/* Messages of a failed delete or visibility call go back where they were. */
static void call_failed(sqs_call *c, const char *why, const char *code) {
  sqs *q = c->q;
  int kind = c->kind;
  if (code && (strcmp(code, "ExpiredToken") == 0 || strcmp(code, "InvalidClientTokenId") == 0 ||
               strcmp(code, "UnrecognizedClientException") == 0)) {
    herald_log_limited(&q->src->log, HLOG_INFO, "credentials %s: reading them again",
                       strcmp(code, "ExpiredToken") == 0 ? "expired" : "refused");
    reread_secrets(q);
  }
  if (kind == K_DEL) {
    /* not deleted: SQS hands them out again after the visibility timeout (a duplicate, never a
     * loss); nothing more to do with them here */
    herald_log_limited(&q->src->log, HLOG_WARN, "DeleteMessageBatch failed (%d messages will "
                       "come again): %s", c->nmsgs, why);
    for (int i = 0; i < c->nmsgs; i++) msg_free(c->msgs[i]);
    q->deletes--;
  } else if (kind == K_VIS) {
    herald_log_limited(&q->src->log, HLOG_WARN, "ChangeMessageVisibilityBatch failed: %s", why);
  } else {
    char reason[600];
    snprintf(reason, sizeof reason, "%s: %s", TARGET[kind], why);
    herald_source_set_connected(q->src, 0, reason);
    if (kind == K_RECV) q->receiving--;
    else q->resolving = 0;
    if (code && (strcmp(code, "QueueDoesNotExist") == 0 ||
                 strcmp(code, "AWS.SimpleQueueService.NonExistentQueue") == 0)) {
      free(q->queue_url); /* look it up again: the queue may come back */
      q->queue_url = NULL;
      q->have_attrs = 0;
    }
  }
  call_free(c);
  if (kind == K_URL || kind == K_ATTR || kind == K_RECV) retry_later(q);
  maybe_done(q);
}

/* ---- the requests ---- */

static void put_url(sqs *q, herald_buf *b) {
  herald_buf_puts(b, "{\"QueueUrl\":");
  herald_buf_json_string(b, q->queue_url, strlen(q->queue_url));
}

static void start_get_url(sqs *q) {
  sqs_call *c = call_new(q, K_URL);
  herald_buf_puts(&c->body, "{\"QueueName\":");
  herald_buf_json_string(&c->body, q->queue, strlen(q->queue));
  if (q->account) {
    herald_buf_puts(&c->body, ",\"QueueOwnerAWSAccountId\":");
    herald_buf_json_string(&c->body, q->account, strlen(q->account));
  }
  herald_buf_putc(&c->body, '}');
  q->resolving = 1;
  call_start(c);
}

static void start_get_attrs(sqs *q) {
  sqs_call *c = call_new(q, K_ATTR);
  put_url(q, &c->body);
  herald_buf_puts(&c->body, ",\"AttributeNames\":[\"VisibilityTimeout\"]}");
  q->resolving = 1;
  call_start(c);
}

static void start_receive(sqs *q) {
  sqs_call *c = call_new(q, K_RECV);
  put_url(q, &c->body);
  herald_buf_printf(&c->body, ",\"MaxNumberOfMessages\":10,\"WaitTimeSeconds\":%d,"
                    "\"MessageAttributeNames\":[\"All\"]}", q->wait_s);
  q->receiving++;
  call_start(c);
}

/* Sends the batch of msgs (their receipts) for kind K_DEL or K_VIS. */
static void start_batch(sqs *q, int kind, sqs_msg **msgs, int n) {
  sqs_call *c = call_new(q, kind);
  put_url(q, &c->body);
  herald_buf_puts(&c->body, ",\"Entries\":[");
  for (int i = 0; i < n; i++) {
    c->msgs[i] = msgs[i];
    herald_buf_printf(&c->body, "%s{\"Id\":\"m%d\",\"ReceiptHandle\":", i ? "," : "", i);
    herald_buf_json_string(&c->body, msgs[i]->receipt, strlen(msgs[i]->receipt));
    if (kind == K_VIS) herald_buf_printf(&c->body, ",\"VisibilityTimeout\":%d", q->vis_s);
    herald_buf_putc(&c->body, '}');
  }
  c->nmsgs = kind == K_DEL ? n : 0; /* a visibility call does not own its messages */
  herald_buf_puts(&c->body, "]}");
  if (kind == K_DEL) q->deletes++;
  call_start(c);
}

/* ---- building events ---- */

typedef struct attr {
  herald_aws_json key, val;
  const char *k; /* decoded key in scratch: offset below */
  size_t koff, klen;
} attr;

/* Appends a member of an SQS MessageAttributeValue as Go's encoding/json writes the SDK struct:
 * the JSON protocol's value is already what Go writes ([]byte base64, strings), or null. */
static void put_member(herald_buf *d, herald_aws_json v, const char *name) {
  herald_aws_json f;
  if (herald_aws_json_get(v, name, &f) == 0) herald_buf_append(d, f.p, (size_t)(f.end - f.p));
  else herald_buf_append(d, "null", 4);
}

static int attr_cmp(const void *a, const void *b) {
  const attr *x = a, *y = b;
  size_t n = x->klen < y->klen ? x->klen : y->klen;
  int c = memcmp(x->k, y->k, n);
  return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

/* attrs: the message's MessageAttributes member ({NULL} when it has none). */
static void put_attributes(sqs *q, herald_buf *d, herald_aws_json attrs) {
  if (!attrs.p || *attrs.p != '{') {
    herald_buf_append(d, "null", 4); /* Go's nil map */
    return;
  }
  attr a[64];
  size_t n = 0;
  herald_buf_reset(&q->scratch);
  herald_aws_json_iter it = {0};
  herald_aws_json k, v;
  while (n < HERALD_ARRAY_SIZE(a) && herald_aws_json_next(attrs, &it, &k, &v)) {
    a[n].key = k, a[n].val = v;
    a[n].koff = q->scratch.len;
    herald_aws_json_str(k, &q->scratch);
    a[n].klen = q->scratch.len - a[n].koff;
    n++;
  }
  for (size_t i = 0; i < n; i++) a[i].k = q->scratch.data + a[i].koff;
  qsort(a, n, sizeof *a, attr_cmp); /* Go writes map keys sorted */
  herald_buf_putc(d, '{');
  for (size_t i = 0; i < n; i++) {
    if (i) herald_buf_putc(d, ',');
    herald_buf_json_string(d, a[i].k, a[i].klen);
    herald_buf_puts(d, ":{\"BinaryListValues\":");
    put_member(d, a[i].val, "BinaryListValues");
    herald_buf_puts(d, ",\"BinaryValue\":");
    put_member(d, a[i].val, "BinaryValue");
    herald_buf_puts(d, ",\"DataType\":");
    put_member(d, a[i].val, "DataType");
    herald_buf_puts(d, ",\"StringListValues\":");
    put_member(d, a[i].val, "StringListValues");
    herald_buf_puts(d, ",\"StringValue\":");
    put_member(d, a[i].val, "StringValue");
    herald_buf_putc(d, '}');
  }
  herald_buf_putc(d, '}');
}

/* One received message into an sqs_msg (queued on pending, or to_delete when it cannot be an
 * event and dlq is off). */
static void take_message(sqs *q, herald_aws_json m) {
  /* the members used, found in one pass (one herald_aws_json_get each walked the message from
   * its start, over the body and the receipt handle, four times) */
  herald_aws_json f_id = {0}, f_rh = {0}, f_body = {0}, f_attrs = {0}, k, val;
  herald_aws_json_iter it = {0};
  while (herald_aws_json_next(m, &it, &k, &val)) {
    if (it.started != '{') break;
    if (!f_id.p && herald_aws_json_is(k, "MessageId")) f_id = val;
    else if (!f_rh.p && herald_aws_json_is(k, "ReceiptHandle")) f_rh = val;
    else if (!f_body.p && herald_aws_json_is(k, "Body")) f_body = val;
    else if (!f_attrs.p && herald_aws_json_is(k, "MessageAttributes")) f_attrs = val;
  }
  herald_buf id = HERALD_BUF_INIT, rh = HERALD_BUF_INIT;
  if (!f_id.p || herald_aws_json_str(f_id, &id) != 0 || !f_rh.p || herald_aws_json_str(f_rh, &rh) != 0) {
    herald_log_limited(&q->src->log, HLOG_WARN, "a message without MessageId or ReceiptHandle: skipped");
    herald_buf_free(&id), herald_buf_free(&rh);
    return;
  }
  sqs_msg *msg = herald_xcalloc(1, sizeof *msg);
  msg->q = q;
  msg->id = herald_xstrdup(herald_buf_cstr(&id));
  msg->receipt = herald_xstrdup(herald_buf_cstr(&rh));
  size_t n = 0;
  for (const char *c = msg->id; *c && n < 32; c++)
    if (*c != '-') msg->eid[n++] = *c;
  msg->eid[n] = '\0';
  msg->ext_ms = uv_now(q->src->engine->loop);
  herald_buf_free(&id), herald_buf_free(&rh);
  q->outstanding++;

  herald_buf_reset(&q->body);
  if (f_body.p) herald_aws_json_str(f_body, &q->body);
  herald_buf d = HERALD_BUF_INIT;
  int bad = herald_source_too_big(q->src, q->body.len);
  if (!bad) {
    herald_buf_puts(&d, "{\"messageId\":");
    herald_buf_json_string(&d, msg->id, strlen(msg->id));
    herald_buf_puts(&d, ",\"messageAttributes\":");
    put_attributes(q, &d, f_attrs);
    herald_buf_puts(&d, ",\"body\":");
    bad = herald_source_put_body(q->src, &d, q->body.data ? q->body.data : "", q->body.len,
                                 q->json_body) != 0;
  }
  if (bad) {
    herald_buf_free(&d);
    if (q->src->m_processing_failed) herald_metric_inc(q->src->m_processing_failed);
    if (q->dlq) { /* left in the queue: its redrive policy moves it to the dead-letter queue */
      msg_free(msg);
      return;
    }
    msg->drop = 1;
    msg->state = M_DELETE;
    list_push(&q->to_delete, msg);
    return;
  }
  if (q->metadata_json) {
    herald_buf_puts(&d, ",\"metadata\":");
    herald_buf_puts(&d, q->metadata_json);
  }
  herald_buf_putc(&d, '}');
  msg->data = d.data;
  msg->len = d.len;
  msg->state = M_PENDING;
  list_push(&q->pending, msg);
}

static void on_receive(sqs *q, sqs_call *c, int json) {
  herald_buf *r = &c->resp;
  if (!json) {
    call_failed(c, "the answer is not JSON", NULL);
    return;
  }
  herald_aws_json v = {r->data, r->data + r->len}, msgs, m;
  if (herald_aws_json_get(v, "Messages", &msgs) == 0) {
    herald_aws_json_iter it = {0};
    while (herald_aws_json_next(msgs, &it, NULL, &m)) take_message(q, m);
  }
  call_free(c);
  q->receiving--;
  herald_backoff_reset(&q->backoff);
  pump(q);
  flush_deletes(q);
  poll_queue(q);
}

static void on_call_done(herald_curl_xfer *x, CURLcode rc) {
  sqs_call *c = x->data;
  sqs *q = c->q;
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  char why[700], code[128], msg[400];
  if (rc != CURLE_OK) {
    snprintf(why, sizeof why, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
    call_failed(c, why, NULL);
    return;
  }
  if (status != 200) {
    error_code(&c->resp, code, sizeof code, msg, sizeof msg);
    snprintf(why, sizeof why, "status %ld%s%s%s%s", status, code[0] ? " " : "", code,
             msg[0] ? ": " : "", msg);
    call_failed(c, why, code);
    return;
  }
  herald_aws_json v = {c->resp.data, c->resp.data + c->resp.len}, f;
  /* validated once here; the receives' answers, the bulk of the bytes, were validated a second
   * time in on_receive (6% of the process's instructions in a drain, callgrind) */
  int json = c->resp.len && herald_json_valid(c->resp.data, c->resp.len, 64);
  switch (c->kind) {
  case K_URL: {
    herald_buf u = HERALD_BUF_INIT;
    if (!json || herald_aws_json_get(v, "QueueUrl", &f) != 0 || herald_aws_json_str(f, &u) != 0) {
      herald_buf_free(&u);
      call_failed(c, "no QueueUrl in the answer", NULL);
      return;
    }
    free(q->queue_url);
    q->queue_url = herald_xstrdup(herald_buf_cstr(&u));
    herald_buf_free(&u);
    herald_log(&q->src->log, HLOG_DEBUG, "queue %s is %s", q->queue, q->queue_url);
    call_free(c);
    q->resolving = 0;
    poll_queue(q);
    return;
  }
  case K_ATTR: {
    herald_buf s = HERALD_BUF_INIT;
    herald_aws_json a;
    int vis = 0;
    if (json && herald_aws_json_get(v, "Attributes", &a) == 0 &&
        herald_aws_json_get(a, "VisibilityTimeout", &f) == 0 && herald_aws_json_str(f, &s) == 0)
      vis = atoi(herald_buf_cstr(&s));
    herald_buf_free(&s);
    q->vis_s = vis > 0 ? vis : DEFAULT_VISIBILITY;
    q->have_attrs = 1;
    call_free(c);
    q->resolving = 0;
    char what[300];
    snprintf(what, sizeof what, "queue %s (visibility timeout %d s)", q->queue, q->vis_s);
    herald_source_set_connected(q->src, 1, what);
    uint64_t every = (uint64_t)q->vis_s * 1000 / 4;
    uv_timer_start(&q->ext, on_ext, every < 250 ? 250 : every, every < 250 ? 250 : every);
    poll_queue(q);
    return;
  }
  case K_RECV:
    on_receive(q, c, json);
    return;
  case K_DEL: {
    /* a failed entry is not deleted: it comes again (a duplicate, not a loss) */
    herald_aws_json failed;
    if (json && herald_aws_json_get(v, "Failed", &failed) == 0) {
      herald_aws_json_iter it = {0};
      herald_aws_json e;
      int nf = 0;
      while (herald_aws_json_next(failed, &it, NULL, &e)) nf++;
      if (nf) herald_log_limited(&q->src->log, HLOG_WARN, "DeleteMessageBatch: %d of %d not deleted (they will come again)", nf, c->nmsgs);
    }
    for (int i = 0; i < c->nmsgs; i++) msg_free(c->msgs[i]);
    c->nmsgs = 0;
    q->deletes--;
    call_free(c);
    flush_deletes(q);
    poll_queue(q); /* room again below MAX_OUTSTANDING */
    maybe_done(q);
    return;
  }
  case K_VIS:
    call_free(c);
    maybe_done(q);
    return;
  }
}

/* ---- emitting and deleting ---- */

static void on_room(herald_source *src, void *data) {
  (void)src;
  sqs *q = data;
  q->waiting_room = 0;
  pump(q);
  poll_queue(q);
}

static void on_flush(uv_timer_t *t) { flush_deletes(t->data); }

static void on_published(void *data, int status) {
  sqs_msg *m = data;
  sqs *q = m->q;
  list_remove(&q->emitting, m);
  if (status == 0) {
    m->state = M_DELETE;
    list_push(&q->to_delete, m);
    /* gather a batch: deletes go out at 10, or on the next loop turn */
    if (q->to_delete.n >= 10) flush_deletes(q);
    else if (!uv_is_active((uv_handle_t *)&q->flush)) uv_timer_start(&q->flush, on_flush, 0, 0);
  } else {
    /* the bus lost it (down, timed out): emit it again when it takes events */
    herald_log_limited(&q->src->log, HLOG_WARN, "the bus did not take message %s: %s (retrying)",
                       m->id, herald_strerror(status));
    m->state = M_PENDING;
    list_push(&q->pending, m);
    if (!q->stopping && !q->waiting_room &&
        herald_source_when_room(q->src, on_room, q) == 0)
      q->waiting_room = 1;
  }
  maybe_done(q);
}

static void pump(sqs *q) {
  while (q->pending.head && !q->waiting_room && !q->stopping) {
    sqs_msg *m = q->pending.head;
    int r = herald_source_emit_id(q->src, q->stable_ids ? m->eid : NULL, m->data, m->len, on_published, m);
    if (r == 0) {
      list_remove(&q->pending, m);
      m->state = M_EMITTING;
      list_push(&q->emitting, m);
      continue;
    }
    if (r == HERALD_EBUSFULL || r == HERALD_EIO || r == HERALD_ECLOSED) {
      if (herald_source_when_room(q->src, on_room, q) == 0) q->waiting_room = 1;
      return;
    }
    /* cannot be published at all (e.g. the data is refused): count it, then as a bad body */
    herald_log_limited(&q->src->log, HLOG_WARN, "message %s not published: %s", m->id,
                       herald_strerror(r));
    if (q->src->m_processing_failed) herald_metric_inc(q->src->m_processing_failed);
    list_remove(&q->pending, m);
    if (q->dlq) {
      msg_free(m);
    } else {
      m->drop = 1;
      m->state = M_DELETE;
      list_push(&q->to_delete, m);
    }
  }
}

static void flush_deletes(sqs *q) {
  if (!q->queue_url) return;
  while (q->to_delete.n) {
    sqs_msg *batch[10];
    int n = 0;
    while (n < 10 && q->to_delete.head) {
      sqs_msg *m = q->to_delete.head;
      list_remove(&q->to_delete, m);
      m->state = M_DELETING;
      batch[n++] = m;
    }
    start_batch(q, K_DEL, batch, n);
  }
}

/* Extends the visibility of messages still on their way to the bus. */
static void on_ext(uv_timer_t *t) {
  sqs *q = t->data;
  if (!q->queue_url || q->stopping) return;
  uint64_t now = uv_now(q->src->engine->loop), half = (uint64_t)q->vis_s * 500;
  sqs_msg *batch[10];
  int n = 0;
  msg_list *lists[] = {&q->pending, &q->emitting};
  for (int l = 0; l < 2; l++) {
    for (sqs_msg *m = lists[l]->head; m; m = m->next) {
      if (now - m->ext_ms < half) continue;
      m->ext_ms = now;
      batch[n++] = m;
      if (n == 10) {
        start_batch(q, K_VIS, batch, n);
        n = 0;
      }
    }
  }
  if (n) start_batch(q, K_VIS, batch, n);
}

static void poll_queue(sqs *q) {
  if (q->stopping || q->resolving || q->retry_armed) return;
  if (!q->queue_url) {
    if (q->receiving) return; /* a receive still out will fail the same way */
    start_get_url(q);
    return;
  }
  if (!q->have_attrs) {
    if (!q->receiving) start_get_attrs(q);
    return;
  }
  while (q->receiving < RECEIVERS && !q->waiting_room && q->outstanding < MAX_OUTSTANDING &&
         !q->retry_armed)
    start_receive(q);
}

/* ---- lifecycle ---- */

static char *selector_part(lua_State *L, int cfg, const char *field, const char *part) {
  lua_getfield(L, cfg, field);
  char *s = NULL;
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, part);
    if (lua_isstring(L, -1)) s = herald_xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return s;
}

static void sqs_release(sqs *q) {
  free(q->region), free(q->queue), free(q->account), free(q->role_arn), free(q->metadata_json);
  free(q->ak_name), free(q->ak_key), free(q->sk_name), free(q->sk_key);
  free(q->tok_name), free(q->tok_key), free(q->queue_url);
  q->region = q->queue = q->account = q->role_arn = q->metadata_json = q->queue_url = NULL;
  herald_aws_endpoint_free(&q->ep);
  herald_buf_free(&q->scratch), herald_buf_free(&q->body);
  if (q->creds) herald_aws_creds_free(q->creds);
  q->creds = NULL;
}

static int sqs_init(herald_source *src, lua_State *L, int cfg_idx) {
  sqs *q = src->priv;
  q->src = src;
  int cfg = cfg_idx < 0 && cfg_idx > LUA_REGISTRYINDEX ? lua_gettop(L) + cfg_idx + 1 : cfg_idx;
  q->region = herald_xstrdup(herald_cfg_string(L, cfg, "region", ""));
  q->queue = herald_xstrdup(herald_cfg_string(L, cfg, "queue", ""));
  const char *acct = herald_cfg_string(L, cfg, "queueAccountId", NULL);
  q->account = acct && *acct ? herald_xstrdup(acct) : NULL;
  const char *role = herald_cfg_string(L, cfg, "roleARN", NULL);
  q->role_arn = role && *role ? herald_xstrdup(role) : NULL;
  int wait = (int)herald_cfg_number(L, cfg, "waitTimeSeconds", 0);
  q->wait_s = wait <= 0 ? 3 : wait > 20 ? 20 : wait; /* Argo: 0 means 3 s; SQS allows 20 */
  q->json_body = herald_cfg_bool(L, cfg, "jsonBody", 0);
  q->dlq = herald_cfg_bool(L, cfg, "dlq", 0);
  q->metadata_json = herald_cfg_metadata_json(L, cfg);
  q->vis_s = DEFAULT_VISIBILITY;
  herald_backoff_init(&q->backoff, NULL, 0, NULL);
  q->ak_name = selector_part(L, cfg, "accessKey", "name");
  q->ak_key = selector_part(L, cfg, "accessKey", "key");
  q->sk_name = selector_part(L, cfg, "secretKey", "name");
  q->sk_key = selector_part(L, cfg, "secretKey", "key");
  q->tok_name = selector_part(L, cfg, "sessionToken", "name");
  q->tok_key = selector_part(L, cfg, "sessionToken", "key");
  const char *endpoint = herald_cfg_string(L, cfg, "endpoint", NULL);
  if (herald_aws_endpoint_init(&q->ep, "sqs", q->region, endpoint) != 0) {
    herald_log(&src->log, HLOG_ERROR, "sqs.endpoint: %s is not a URL", endpoint ? endpoint : "");
    sqs_release(q);
    return HERALD_EINVAL;
  }
  int err = 0;
  char *ak = herald_secret_field(src->engine, &src->log, L, cfg, "accessKey", "sqs.accessKey", &err);
  char *sk = err ? NULL : herald_secret_field(src->engine, &src->log, L, cfg, "secretKey", "sqs.secretKey", &err);
  char *tok = err ? NULL : herald_secret_field(src->engine, &src->log, L, cfg, "sessionToken", "sqs.sessionToken", &err);
  const char *why = NULL;
  if (!err) {
    herald_aws_creds_opts o = {.region = q->region, .access_key = ak, .secret_key = sk,
                               .session_token = tok, .role_arn = q->role_arn,
                               .log = &src->log, .who = "sqs"};
    q->creds = herald_aws_creds_new(src->engine->loop, &o, &why);
  }
  if (ak) memset(ak, 0, strlen(ak)), free(ak);
  if (sk) memset(sk, 0, strlen(sk)), free(sk);
  if (tok) memset(tok, 0, strlen(tok)), free(tok);
  if (!q->creds) {
    if (why) herald_log(&src->log, HLOG_ERROR, "sqs: %s", why);
    sqs_release(q);
    return HERALD_EINVAL;
  }
  return 0;
}

static int sqs_start(herald_source *src) {
  sqs *q = src->priv;
  uv_loop_t *loop = src->engine->loop;
  uv_timer_init(loop, &q->retry);
  uv_timer_init(loop, &q->ext);
  uv_timer_init(loop, &q->flush);
  q->retry.data = q->ext.data = q->flush.data = q;
  q->timers_open = 3;
  herald_bus *bus = src->engine->bus;
  q->stable_ids = bus && bus->ops && bus->ops->name && strcmp(bus->ops->name, "jetstream") == 0;
  herald_log(&src->log, HLOG_INFO, "reading queue %s at %s", q->queue, q->ep.base);
  poll_queue(q);
  return 0;
}

static void on_timer_closed(uv_handle_t *h) {
  sqs *q = h->data;
  q->timers_open--;
  maybe_done(q);
}

/* Done once the bus has answered every emit and the deletes those allowed have been sent and
 * answered (bounded by their 30 s timeout); what is still pending stays in the queue and comes
 * again after its visibility timeout. */
static void maybe_done(sqs *q) {
  if (!q->stopping || !q->stop_done) return;
  if (q->emitting.n) return;
  if (q->to_delete.n) flush_deletes(q);
  if (q->deletes) return;
  if (!q->closing_timers) {
    q->closing_timers = 1;
    uv_close((uv_handle_t *)&q->retry, on_timer_closed);
    uv_close((uv_handle_t *)&q->ext, on_timer_closed);
    uv_close((uv_handle_t *)&q->flush, on_timer_closed);
    return;
  }
  if (q->timers_open > 0) return;
  /* nothing else is in flight but abandoned calls (receive, visibility) */
  while (q->calls) call_free(q->calls);
  while (q->pending.head) {
    sqs_msg *m = q->pending.head;
    list_remove(&q->pending, m);
    msg_free(m);
  }
  herald_source_stop_cb done = q->stop_done;
  q->stop_done = NULL;
  sqs_release(q);
  done(q->src);
}

static void sqs_stop(herald_source *src, herald_source_stop_cb done) {
  sqs *q = src->priv;
  q->stopping = 1;
  q->stop_done = done;
  if (q->waiting_room) herald_source_cancel_room(src);
  q->waiting_room = 0;
  uv_timer_stop(&q->retry);
  uv_timer_stop(&q->ext);
  /* the long poll is abandoned: what it would bring stays in the queue */
  for (sqs_call *c = q->calls, *next; c; c = next) {
    next = c->next;
    if (c->kind != K_DEL) call_free(c);
  }
  q->receiving = q->resolving = 0;
  maybe_done(q);
}

const herald_source_type herald_source_sqs = {
    .name = "sqs",
    .event_type = "sqs",
    .priv_size = sizeof(sqs),
    .init = sqs_init,
    .start = sqs_start,
    .stop = sqs_stop,
};
