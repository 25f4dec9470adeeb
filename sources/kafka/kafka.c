/*
 * sources/kafka/kafka.c: Argo's kafka event source on a librdkafka consumer, on the loop, with
 * each offset committed only once the bus holds its event.
 *
 *   librdkafka threads fetch --> consumer queue (main queue, logs, stats and rebalances
 *   forwarded to it) --1 byte when it goes from empty to non-empty--> pipe --uv_poll--> pump()
 *   pump: rd_kafka_consumer_poll(rk, 0) up to BUDGET messages a turn (uv_idle for the rest)
 *     message --> rec {json, id, partition, offset} --> pending FIFO --> herald_source_emit_id
 *     bus full (HERALD_EBUSFULL): pause every assigned partition, herald_source_when_room,
 *     then publish the pending ones and resume
 *   emit callback status 0: rec done; the partition's in-flight FIFO advances over the done
 *     head(s) and the offset after the last one is stored (rd_kafka_offsets_store, in a
 *     uv_check once per loop turn); librdkafka's auto-commit (every second, as sarama's)
 *     commits only stored offsets, so a later message acked before an earlier one never
 *     commits past the earlier; a failed publish is published again, never skipped
 *
 * Modes as Argo: consumerGroup (subscribe; groupName, oldest -> auto.offset.reset,
 * rebalanceStrategy range | roundrobin | sticky = librdkafka's cooperative-sticky) or one
 * `partition` read from the newest offset, with nothing committed (Argo's partition consumer
 * keeps no offsets either). The event id is a digest of Argo's
 * es:event:firstBroker:topic:partition:offset (see id_digest), so the JetStream bus drops
 * redeliveries. Data is KafkaEventData as Go marshals it: {topic,
 * key, partition, body, timestamp (time.Time.String() in UTC), headers (sorted, last value of
 * a repeated key), metadata}. limitEventsPerSecond spaces messages as Argo's sleep does.
 * The connection gauge follows librdkafka's broker states (statistics every second) and its
 * all-brokers-down error; librdkafka reconnects by itself (connectionBackoff ->
 * reconnect.backoff.ms). On stop: publishes in flight are awaited, offsets stored, and the
 * consumer closed (leave the group, final commit) on libuv's thread pool, off the loop.
 */
#define _GNU_SOURCE /* pipe2 */
#include "buf.h"
#include "common.h"
#include "engine.h"
#include "plugin.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BUDGET 512 /* messages per loop turn at most, so one busy topic does not hold the loop */

typedef struct kafka_src kafka_src;
typedef struct kpart kpart;

/* One message from its fetch until the bus holds its event (and its offset can be stored). */
typedef struct rec {
  struct rec *next;      /* in its partition's in-flight FIFO */
  struct rec *next_pend; /* in the pending (not yet accepted by the bus) FIFO */
  kafka_src *ks;
  kpart *part; /* NULL once the partition was revoked: then nothing is stored for it */
  int64_t offset;
  char *json, *id;
  size_t len;
  int done;
} rec;

struct kpart {
  int32_t id;
  int assigned;
  rec *head, *tail; /* in offset order */
  int64_t store;    /* the offset to store next (after the last done one), -1 none */
  int dirty;
};

struct kafka_src {
  herald_source *src;
  rd_kafka_t *rk;
  rd_kafka_queue_t *q;
  int fds[2];
  uv_poll_t poll;
  uv_idle_t more;
  uv_check_t store_check;
  uv_timer_t rate_timer;
  uv_work_t close_work;
  int group, cooperative;
  int32_t partition; /* partition mode */
  char *topic, *first_broker, *metadata_json;
  int json_body;
  uint64_t gap_ns, next_ok_ns; /* limitEventsPerSecond */
  kpart **parts;
  int nparts;
  rec *pend_head, *pend_tail;
  int paused, waiting_room, store_dirty;
  uint32_t inflight; /* publishes waiting for their callback */
  int started, stopping, closing, close_begun, handles_open;
  herald_source_stop_cb stop_done;
  /* the configuration, kept until start */
  rd_kafka_conf_t *conf;
};

/* ---- partitions and offsets ---- */

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (!q) abort(); /* as herald_xcalloc: out of memory is fatal */
  return q;
}

static void on_store_check(uv_check_t *h);
static void on_more(uv_idle_t *h);

static kpart *part_get(kafka_src *ks, int32_t id) {
  if (id < 0) return NULL;
  if (id >= ks->nparts) {
    int n = ks->nparts ? ks->nparts : 8;
    while (n <= id) n *= 2;
    ks->parts = xrealloc(ks->parts, (size_t)n * sizeof *ks->parts);
    memset(ks->parts + ks->nparts, 0, (size_t)(n - ks->nparts) * sizeof *ks->parts);
    ks->nparts = n;
  }
  if (!ks->parts[id]) {
    kpart *p = herald_xcalloc(1, sizeof *p);
    p->id = id;
    p->store = -1;
    ks->parts[id] = p;
  }
  return ks->parts[id];
}

static void rec_free(rec *r) {
  free(r->json);
  free(r->id);
  free(r);
}

/* Pops the done records at the head of p's FIFO; the offset after the last one is stored. */
static void part_advance(kafka_src *ks, kpart *p) {
  while (p->head && p->head->done) {
    rec *r = p->head;
    p->head = r->next;
    if (!p->head) p->tail = NULL;
    p->store = r->offset + 1;
    p->dirty = 1;
    ks->store_dirty = 1;
    rec_free(r);
  }
  if (ks->store_dirty && ks->group && !uv_is_active((uv_handle_t *)&ks->store_check))
    uv_check_start(&ks->store_check, on_store_check);
}

/* Stores the advanced offsets of every assigned partition (librdkafka commits them). */
static void store_offsets(kafka_src *ks) {
  if (!ks->store_dirty || !ks->rk) return;
  ks->store_dirty = 0;
  if (!ks->group) return;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
  for (int i = 0; i < ks->nparts; i++) {
    kpart *p = ks->parts[i];
    if (!p || !p->dirty) continue;
    p->dirty = 0;
    if (!p->assigned || p->store < 0) continue;
    rd_kafka_topic_partition_list_add(l, ks->topic, p->id)->offset = p->store;
  }
  if (l->cnt > 0) {
    rd_kafka_resp_err_t e = rd_kafka_offsets_store(ks->rk, l);
    if (e && e != RD_KAFKA_RESP_ERR__STATE)
      herald_log_limited(&ks->src->log, HLOG_WARN, "cannot store offsets: %s", rd_kafka_err2str(e));
  }
  rd_kafka_topic_partition_list_destroy(l);
}

static void on_store_check(uv_check_t *h) {
  kafka_src *ks = h->data;
  uv_check_stop(h);
  store_offsets(ks);
}

/* ---- publishing ---- */

static void pump(kafka_src *ks);
static void maybe_finish_stop(kafka_src *ks);

static void set_paused(kafka_src *ks, int pause) {
  if (ks->paused == pause || !ks->rk) return;
  rd_kafka_topic_partition_list_t *l = NULL;
  if (rd_kafka_assignment(ks->rk, &l) == RD_KAFKA_RESP_ERR_NO_ERROR && l) {
    if (l->cnt > 0) {
      if (pause) rd_kafka_pause_partitions(ks->rk, l);
      else rd_kafka_resume_partitions(ks->rk, l);
    }
    rd_kafka_topic_partition_list_destroy(l);
  }
  ks->paused = pause;
  herald_log(&ks->src->log, HLOG_DEBUG, pause ? "bus full: partitions paused" : "partitions resumed");
}

static void on_room(herald_source *src, void *data) {
  kafka_src *ks = data;
  ks->waiting_room = 0;
  pump(ks);
}

static void retry_later(kafka_src *ks) {
  if (ks->waiting_room || ks->stopping) return;
  if (herald_source_when_room(ks->src, on_room, ks) == 0) ks->waiting_room = 1;
}

static void on_published(void *data, int status) {
  rec *r = data;
  kafka_src *ks = r->ks;
  ks->inflight--;
  if (status != 0) {
    if (!ks->stopping) {
      /* the bus did not take it: publish it again, never skip it (its offset stays uncommitted) */
      herald_log_limited(&ks->src->log, HLOG_WARN, "event for offset %lld not on the bus (%s): publishing it again",
                         (long long)r->offset, herald_strerror(status));
      r->next_pend = NULL;
      if (ks->pend_tail) ks->pend_tail->next_pend = r;
      else ks->pend_head = r;
      ks->pend_tail = r;
      retry_later(ks);
      return;
    }
    /* stopping: left uncommitted (not done: nothing is stored past it), read again next start */
    free(r->json), r->json = NULL;
    free(r->id), r->id = NULL;
    if (!r->part) rec_free(r); /* else freed with its partition's FIFO */
    maybe_finish_stop(ks);
    return;
  }
  free(r->json), r->json = NULL;
  free(r->id), r->id = NULL;
  r->done = 1;
  if (r->part) part_advance(ks, r->part);
  else rec_free(r);
  if (ks->stopping) maybe_finish_stop(ks);
}

/* Publishes the pending records in order. Returns 0 when none is left, 1 when the bus is full
 * (the rest wait for room). */
static int publish_pending(kafka_src *ks) {
  while (ks->pend_head) {
    rec *r = ks->pend_head;
    int e = herald_source_emit_id(ks->src, r->id, r->json, r->len, on_published, r);
    if (e == HERALD_EBUSFULL || e == HERALD_ENOMEM || e == HERALD_EIO) return 1;
    if (e == HERALD_ECLOSED) return 1; /* the engine is stopping: left uncommitted */
    ks->pend_head = r->next_pend;
    if (!ks->pend_head) ks->pend_tail = NULL;
    if (e == 0) {
      ks->inflight++;
      continue;
    }
    /* refused for good (not a bus state): counted by emit; skipped as Argo skips it */
    r->done = 1;
    free(r->json), r->json = NULL;
    if (r->part) part_advance(ks, r->part);
    else rec_free(r);
  }
  return 0;
}

/* A message that is not published (too big, bad body): its offset is still stored in order. */
static void skip_offset(kafka_src *ks, kpart *p, int64_t offset) {
  if (!p) return;
  rec *r = herald_xcalloc(1, sizeof *r);
  r->ks = ks;
  r->part = p;
  r->offset = offset;
  r->done = 1;
  if (p->tail) p->tail->next = r;
  else p->head = r;
  p->tail = r;
  part_advance(ks, p);
}

/* Go's time.Time.String() of a Kafka timestamp (ms), in UTC: "2006-01-02 15:04:05.999 +0000 UTC". */
static void put_timestamp(herald_buf *b, int64_t ms) {
  int64_t sec = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
  int frac = (int)(ms - sec * 1000);
  time_t t = (time_t)sec;
  struct tm tm;
  gmtime_r(&t, &tm);
  herald_buf_printf(b, "\"%04d-%02d-%02d %02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                    tm.tm_hour, tm.tm_min, tm.tm_sec);
  if (frac) {
    char f[8];
    snprintf(f, sizeof f, "%03d", frac);
    int n = 3;
    while (n > 0 && f[n - 1] == '0') f[--n] = '\0';
    herald_buf_printf(b, ".%s", f);
  }
  herald_buf_puts(b, " +0000 UTC\"");
}

typedef struct hdr {
  const char *name;
  const void *val;
  size_t len;
  size_t idx;
} hdr;

static int hdr_cmp(const void *a, const void *b) {
  const hdr *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  if (c) return c;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static void put_headers(herald_buf *b, const rd_kafka_message_t *m) {
  herald_buf_putc(b, '{');
  rd_kafka_headers_t *hs = NULL;
  if (rd_kafka_message_headers(m, &hs) == RD_KAFKA_RESP_ERR_NO_ERROR && hs) {
    size_t n = rd_kafka_header_cnt(hs);
    hdr small[16];
    hdr *v = n <= 16 ? small : herald_xcalloc(n, sizeof *v);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
      if (rd_kafka_header_get_all(hs, i, &v[k].name, &v[k].val, &v[k].len)) break;
      v[k].idx = i;
      k++;
    }
    qsort(v, k, sizeof *v, hdr_cmp);
    int first = 1;
    for (size_t i = 0; i < k; i++) {
      /* Go's map: a repeated key keeps its last value */
      if (i + 1 < k && strcmp(v[i].name, v[i + 1].name) == 0) continue;
      if (!first) herald_buf_putc(b, ',');
      first = 0;
      herald_buf_json_string(b, v[i].name, strlen(v[i].name));
      herald_buf_putc(b, ':');
      herald_buf_json_string(b, v[i].val ? v[i].val : "", v[i].val ? v[i].len : 0);
    }
    if (v != small) free(v);
  }
  herald_buf_putc(b, '}');
}

/* The event id: Argo's es:event:firstBroker:topic:partition:offset names the message, but a
 * Herald event id is 32 characters (engine/event.h), and cutting the name there would give
 * the messages of one partition the same id (the JetStream bus would drop them as duplicates).
 * So the id is a 128-bit digest of Argo's name in 32 hex digits: the same message always gets
 * the same id, and a redelivery is still dropped by id. Two FNV-1a passes with different
 * bases, each finished with splitmix64's mixer. */
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static void id_digest(const char *name, char out[33]) {
  uint64_t h1 = UINT64_C(0xcbf29ce484222325), h2 = UINT64_C(0x84222325cbf29ce4) ^ strlen(name);
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
    h1 = (h1 ^ *p) * UINT64_C(0x100000001b3);
    h2 = (h2 ^ (uint64_t)(*p + 0x9e)) * UINT64_C(0x100000001b3);
  }
  snprintf(out, 33, "%016llx%016llx", (unsigned long long)mix64(h1), (unsigned long long)mix64(h2 ^ h1 >> 17));
}

/* Turns one message into a pending record (or skips it). */
static void take_message(kafka_src *ks, rd_kafka_message_t *m) {
  kpart *p = ks->group ? part_get(ks, m->partition) : NULL;
  if (p && !p->assigned) p = NULL; /* a message of a partition revoked meanwhile */
  if (herald_source_too_big(ks->src, m->len)) {
    skip_offset(ks, p, m->offset);
    return;
  }
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_puts(&b, "{\"topic\":");
  const char *tn = rd_kafka_topic_name(m->rkt);
  herald_buf_json_string(&b, tn, strlen(tn));
  herald_buf_puts(&b, ",\"key\":");
  herald_buf_json_string(&b, m->key ? m->key : "", m->key ? m->key_len : 0);
  herald_buf_printf(&b, ",\"partition\":%d,\"body\":", (int)m->partition);
  if (ks->json_body && (!m->payload || m->len == 0)) {
    herald_buf_puts(&b, "null"); /* Go: a nil json.RawMessage marshals as null */
  } else if (!ks->json_body && !m->payload) {
    herald_buf_puts(&b, "null"); /* Go: a nil []byte */
  } else if (herald_source_put_body(ks->src, &b, m->payload, m->len, ks->json_body) != 0) {
    /* counted and logged; Argo's marshal fails and the message is skipped */
    herald_buf_free(&b);
    skip_offset(ks, p, m->offset);
    return;
  }
  rd_kafka_timestamp_type_t tt;
  int64_t ts = rd_kafka_message_timestamp(m, &tt);
  herald_buf_puts(&b, ",\"timestamp\":");
  put_timestamp(&b, ts);
  herald_buf_puts(&b, ",\"headers\":");
  put_headers(&b, m);
  if (ks->metadata_json) {
    herald_buf_puts(&b, ",\"metadata\":");
    herald_buf_puts(&b, ks->metadata_json);
  }
  herald_buf_putc(&b, '}');
  rec *r = herald_xcalloc(1, sizeof *r);
  r->ks = ks;
  r->part = p;
  r->offset = m->offset;
  r->len = b.len;
  r->json = b.data; /* takes the buffer */
  char *argo_id = herald_xasprintf("%s:%s:%s:%s:%d:%lld", ks->src->es_name, ks->src->event_name,
                                  ks->first_broker, tn, (int)m->partition, (long long)m->offset);
  r->id = herald_xmalloc(33);
  id_digest(argo_id, r->id);
  free(argo_id);
  if (p) {
    if (p->tail) p->tail->next = r;
    else p->head = r;
    p->tail = r;
  }
  if (ks->pend_tail) ks->pend_tail->next_pend = r;
  else ks->pend_head = r;
  ks->pend_tail = r;
}

static void on_rate(uv_timer_t *t) { pump(t->data); }

/* Reads and publishes until the queue is empty, the bus full, the budget spent or the rate
 * limit reached. */
static void pump(kafka_src *ks) {
  if (ks->stopping || !ks->rk) return;
  if (publish_pending(ks)) {
    set_paused(ks, 1);
    retry_later(ks);
    return;
  }
  if (ks->paused) set_paused(ks, 0);
  for (int n = 0; n < BUDGET; n++) {
    if (ks->gap_ns) {
      uint64_t now = herald_mono_ns();
      if (now < ks->next_ok_ns) {
        uv_timer_start(&ks->rate_timer, on_rate, (ks->next_ok_ns - now + 999999) / 1000000, 0);
        return;
      }
    }
    rd_kafka_message_t *m = rd_kafka_consumer_poll(ks->rk, 0);
    if (!m) {
      /* NULL also comes after serving a callback (stats, a log line) with messages still
       * queued; stopping then would wait for a wake-up that never comes once the prefetch
       * queue is full (nothing more is enqueued) */
      if (rd_kafka_queue_length(ks->q) > 0) continue;
      uv_idle_stop(&ks->more);
      return;
    }
    if (m->err) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        herald_log_limited(&ks->src->log, HLOG_WARN, "kafka: %s", rd_kafka_message_errstr(m));
      rd_kafka_message_destroy(m);
      continue;
    }
    if (ks->src->conn_state != 1) herald_source_set_connected(ks->src, 1, NULL);
    take_message(ks, m);
    rd_kafka_message_destroy(m);
    if (ks->gap_ns) ks->next_ok_ns = herald_mono_ns() + ks->gap_ns;
    if (publish_pending(ks)) {
      set_paused(ks, 1);
      retry_later(ks);
      return;
    }
    if (ks->stopping) return;
  }
  uv_idle_start(&ks->more, on_more);
}

/* ---- librdkafka callbacks (on the loop, from rd_kafka_consumer_poll) ---- */

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts,
                         void *opaque) {
  kafka_src *ks = opaque;
  if (ks->closing) { /* from rd_kafka_consumer_close on the thread pool: the loop side is gone */
    if (ks->cooperative) {
      rd_kafka_error_t *e = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? rd_kafka_incremental_assign(rk, parts)
                                                                        : rd_kafka_incremental_unassign(rk, parts);
      if (e) rd_kafka_error_destroy(e);
    } else {
      rd_kafka_assign(rk, err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS ? parts : NULL);
    }
    return;
  }
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    for (int i = 0; i < parts->cnt; i++) {
      kpart *p = part_get(ks, parts->elems[i].partition);
      if (p) p->assigned = 1;
    }
    if (ks->cooperative) {
      rd_kafka_error_t *e = rd_kafka_incremental_assign(rk, parts);
      if (e) {
        herald_log(&ks->src->log, HLOG_WARN, "assign: %s", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
      }
    } else {
      rd_kafka_assign(rk, parts);
    }
    if (ks->paused && parts->cnt) rd_kafka_pause_partitions(rk, parts);
    herald_log(&ks->src->log, HLOG_INFO, "assigned %d partition(s) of %s", parts->cnt, ks->topic);
    herald_source_set_connected(ks->src, 1, NULL);
    return;
  }
  /* revoked: what the bus holds is stored now, so the commit on revocation covers it; what is
   * in flight is no longer ours to commit (the next owner reads it again: a duplicate the
   * JetStream bus drops by id) */
  store_offsets(ks);
  for (int i = 0; i < parts->cnt; i++) {
    kpart *p = part_get(ks, parts->elems[i].partition);
    if (!p) continue;
    p->assigned = 0;
    for (rec *r = p->head; r;) {
      rec *next = r->next;
      r->part = NULL;
      r->next = NULL;
      if (r->done) rec_free(r);
      r = next;
    }
    p->head = p->tail = NULL;
    p->store = -1;
    p->dirty = 0;
  }
  if (ks->cooperative) {
    rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
    if (e) rd_kafka_error_destroy(e);
  } else {
    rd_kafka_assign(rk, NULL);
  }
  herald_log(&ks->src->log, HLOG_INFO, "revoked %d partition(s) of %s", parts->cnt, ks->topic);
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  kafka_src *ks = rd_kafka_opaque(rk);
  if (level <= 3) herald_log_limited(&ks->src->log, HLOG_WARN, "librdkafka %s: %s", fac, buf);
  else if (herald_log_enabled(HLOG_DEBUG)) herald_log(&ks->src->log, HLOG_DEBUG, "librdkafka %s: %s", fac, buf);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  kafka_src *ks = opaque;
  if (ks->closing) return;
  if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || err == RD_KAFKA_RESP_ERR__AUTHENTICATION ||
      err == RD_KAFKA_RESP_ERR__RESOLVE || err == RD_KAFKA_RESP_ERR__SSL) {
    herald_source_set_connected(ks->src, 0, reason);
    return;
  }
  herald_log_limited(&ks->src->log, HLOG_WARN, "kafka: %s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* Statistics (once a second): connected while a broker (not the internal one) is UP. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
  kafka_src *ks = opaque;
  if (ks->closing) return 0;
  const char *brokers = strstr(json, "\"brokers\":");
  int up = brokers && strstr(brokers, "\"state\":\"UP\"") != NULL;
  if (up && ks->src->conn_state != 1) herald_source_set_connected(ks->src, 1, NULL);
  else if (!up && ks->src->conn_state == 1) herald_source_set_connected(ks->src, 0, "no broker is up");
  return 0;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  kafka_src *ks = h->data;
  char buf[64];
  while (read(ks->fds[0], buf, sizeof buf) > 0) {
  }
  if (ks->waiting_room) return; /* the bus is full: read again once it has room */
  pump(ks);
}

static void on_more(uv_idle_t *h) {
  kafka_src *ks = h->data;
  if (ks->waiting_room) {
    uv_idle_stop(h);
    return;
  }
  pump(ks);
}

/* ---- init ---- */

static int conf_set(kafka_src *ks, rd_kafka_conf_t *conf, const char *k, const char *v) {
  char err[256];
  if (rd_kafka_conf_set(conf, k, v, err, sizeof err) == RD_KAFKA_CONF_OK) return 0;
  herald_log(&ks->src->log, HLOG_ERROR, "kafka: cannot set %s: %s", k, err);
  return HERALD_EINVAL;
}

/* tls{} at idx -> ssl.* (PEM in memory). stack: unchanged */
static int apply_tls(kafka_src *ks, rd_kafka_conf_t *conf, lua_State *L, int idx) {
  static const struct {
    const char *field, *prop;
  } pems[] = {
      {"caCertSecret", "ssl.ca.pem"},
      {"clientCertSecret", "ssl.certificate.pem"},
      {"clientKeySecret", "ssl.key.pem"},
  };
  for (size_t i = 0; i < HERALD_ARRAY_SIZE(pems); i++) {
    int err;
    char what[64];
    snprintf(what, sizeof what, "tls.%s", pems[i].field);
    char *v = herald_secret_field(ks->src->engine, &ks->src->log, L, idx, pems[i].field, what, &err);
    if (err) return err;
    int r = v ? conf_set(ks, conf, pems[i].prop, v) : 0;
    if (v) memset(v, 0, strlen(v));
    free(v);
    if (r) return r;
  }
  if (herald_cfg_bool(L, idx, "insecureSkipVerify", 0)) {
    if (conf_set(ks, conf, "enable.ssl.certificate.verification", "false") ||
        conf_set(ks, conf, "ssl.endpoint.identification.algorithm", "none"))
      return HERALD_EINVAL;
  }
  return 0;
}

/* sasl{} at idx -> sasl.* (the schema allowed PLAIN and SCRAM only). stack: unchanged */
static int apply_sasl(kafka_src *ks, rd_kafka_conf_t *conf, lua_State *L, int idx) {
  const char *mech = herald_cfg_string(L, idx, "mechanism", "PLAIN");
  if (!*mech) mech = "PLAIN";
  int err, r = conf_set(ks, conf, "sasl.mechanism", mech);
  if (r) return r;
  char *user = herald_secret_field(ks->src->engine, &ks->src->log, L, idx, "userSecret", "sasl.userSecret", &err);
  if (err) return err;
  char *pass = herald_secret_field(ks->src->engine, &ks->src->log, L, idx, "passwordSecret", "sasl.passwordSecret", &err);
  if (!err && user) r = conf_set(ks, conf, "sasl.username", user);
  if (!err && !r && pass) r = conf_set(ks, conf, "sasl.password", pass);
  if (pass) memset(pass, 0, strlen(pass));
  free(user), free(pass);
  return err ? err : r;
}

/* The `config` text's librdkafka properties, from kafka.lua (which refused the rest at load).
 * stack: unchanged */
static int apply_config(kafka_src *ks, rd_kafka_conf_t *conf, lua_State *L, const char *text) {
  int top = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "herald.sources.kafka");
  if (lua_pcall(L, 1, 1, 0) != 0) goto fail;
  lua_getfield(L, -1, "rdkafka_props");
  lua_pushstring(L, text);
  if (lua_pcall(L, 1, 1, 0) != 0 || !lua_istable(L, -1)) goto fail;
  int n = (int)lua_objlen(L, -1);
  for (int i = 1; i + 1 <= n; i += 2) {
    lua_rawgeti(L, -1, i);
    lua_rawgeti(L, -2, i + 1);
    const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
    int r = k && v ? conf_set(ks, conf, k, v) : 0;
    lua_pop(L, 2);
    if (r) {
      lua_settop(L, top);
      return r;
    }
  }
  lua_settop(L, top);
  return 0;
fail:
  herald_log(&ks->src->log, HLOG_ERROR, "config: %s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
  lua_settop(L, top);
  return HERALD_EINVAL;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* metadata as Go marshals a map[string]string: keys sorted. stack: unchanged */
static char *metadata_json(lua_State *L, int idx) {
  lua_getfield(L, idx, "metadata");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  int t = lua_gettop(L), n = 0, cap = 8;
  const char **keys = herald_xcalloc((size_t)cap, sizeof *keys);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
      if (n == cap) keys = xrealloc(keys, (size_t)(cap *= 2) * sizeof *keys);
      keys[n++] = lua_tostring(L, -2); /* alive: referenced by the table */
    }
    lua_pop(L, 1);
  }
  char *out = NULL;
  if (n > 0) {
    qsort(keys, (size_t)n, sizeof *keys, cmp_str);
    herald_buf b = HERALD_BUF_INIT;
    herald_buf_putc(&b, '{');
    for (int i = 0; i < n; i++) {
      lua_getfield(L, t, keys[i]);
      size_t vl;
      const char *v = lua_tolstring(L, -1, &vl);
      if (i) herald_buf_putc(&b, ',');
      herald_buf_json_string(&b, keys[i], strlen(keys[i]));
      herald_buf_putc(&b, ':');
      herald_buf_json_string(&b, v, vl);
      lua_pop(L, 1);
    }
    herald_buf_putc(&b, '}');
    out = herald_xstrdup(herald_buf_cstr(&b));
    herald_buf_free(&b);
  }
  free(keys);
  lua_pop(L, 1);
  return out;
}

static int build_conf(kafka_src *ks, rd_kafka_conf_t *conf, lua_State *L, int idx) {
  herald_source *src = ks->src;
  const char *url = herald_cfg_string(L, idx, "url", "");
  char num[32];
  /* sarama takes the brokers as given; librdkafka wants no spaces */
  char *servers = herald_xstrdup(url), *w = servers;
  for (const char *c = url; *c; c++)
    if (*c != ' ' && *c != '\t') *w++ = *c;
  *w = '\0';
  const char *comma = strchr(url, ',');
  ks->first_broker = comma ? herald_xasprintf("%.*s", (int)(comma - url), url) : herald_xstrdup(url);
  int r = conf_set(ks, conf, "bootstrap.servers", servers);
  free(servers);
  if (r) return r;
  const char *group = NULL;
  lua_getfield(L, idx, "consumerGroup");
  int gi = lua_gettop(L);
  if (lua_istable(L, gi)) {
    group = herald_cfg_string(L, gi, "groupName", NULL);
    ks->group = 1;
    const char *strat = herald_cfg_string(L, gi, "rebalanceStrategy", "range");
    const char *a = "range";
    if (strcmp(strat, "roundrobin") == 0) a = "roundrobin";
    else if (strcmp(strat, "sticky") == 0) a = "cooperative-sticky", ks->cooperative = 1;
    if (conf_set(ks, conf, "group.id", group) || conf_set(ks, conf, "partition.assignment.strategy", a) ||
        conf_set(ks, conf, "auto.offset.reset", herald_cfg_bool(L, gi, "oldest", 0) ? "earliest" : "latest")) {
      lua_pop(L, 1);
      return HERALD_EINVAL;
    }
  }
  lua_pop(L, 1);
  if (!ks->group) {
    /* librdkafka wants a group to serve the consumer queue; nothing is committed to it */
    char *g = herald_xasprintf("herald-partition-%s.%s", src->es_name, src->event_name);
    r = conf_set(ks, conf, "group.id", g);
    free(g);
    if (r) return r;
    const char *p = herald_cfg_string(L, idx, "partition", "0");
    ks->partition = (int32_t)strtol(p, NULL, 10);
  }
  if (conf_set(ks, conf, "client.id", "herald") || conf_set(ks, conf, "enable.auto.commit", ks->group ? "true" : "false") ||
      conf_set(ks, conf, "enable.auto.offset.store", "false") ||
      conf_set(ks, conf, "auto.commit.interval.ms", "1000") || /* sarama's default */
      conf_set(ks, conf, "isolation.level", "read_uncommitted") || /* sarama's default */
      /* sarama's defaults too (librdkafka's 45 s would hold a rebalance after a crash that long) */
      conf_set(ks, conf, "session.timeout.ms", "10000") || conf_set(ks, conf, "heartbeat.interval.ms", "3000") ||
      conf_set(ks, conf, "statistics.interval.ms", "1000") || conf_set(ks, conf, "log.queue", "true"))
    return HERALD_EINVAL;
  herald_backoff bo;
  herald_backoff_init(&bo, L, idx, "connectionBackoff");
  snprintf(num, sizeof num, "%llu", (unsigned long long)bo.first_ms);
  if (conf_set(ks, conf, "reconnect.backoff.ms", num) || conf_set(ks, conf, "reconnect.backoff.max.ms", "60000"))
    return HERALD_EINVAL;
  const char *version = herald_cfg_string(L, idx, "version", "1.0.0");
  if (version && *version) {
    char err[256];
    if (rd_kafka_conf_set(conf, "broker.version.fallback", version, err, sizeof err) != RD_KAFKA_CONF_OK)
      herald_log(&src->log, HLOG_WARN, "version %s: %s", version, err);
    if (strncmp(version, "0.8", 3) == 0 || strncmp(version, "0.9", 3) == 0)
      conf_set(ks, conf, "api.version.request", "false");
  }
  int has_tls = 0, has_sasl = 0;
  r = 0;
  lua_getfield(L, idx, "tls");
  if (lua_istable(L, -1)) has_tls = 1, r = apply_tls(ks, conf, L, lua_gettop(L));
  lua_pop(L, 1);
  if (r) return r;
  lua_getfield(L, idx, "sasl");
  if (lua_istable(L, -1)) has_sasl = 1, r = apply_sasl(ks, conf, L, lua_gettop(L));
  lua_pop(L, 1);
  if (r) return r;
  const char *proto = has_tls ? (has_sasl ? "sasl_ssl" : "ssl") : (has_sasl ? "sasl_plaintext" : "plaintext");
  if (conf_set(ks, conf, "security.protocol", proto)) return HERALD_EINVAL;
  const char *cfg = herald_cfg_string(L, idx, "config", NULL);
  if (cfg && *cfg && (r = apply_config(ks, conf, L, cfg))) return r;
  /* consumerGroup.oldest wins over consumer.offsets.initial, as in Argo */
  lua_getfield(L, idx, "consumerGroup");
  if (lua_istable(L, -1) && herald_cfg_bool(L, lua_gettop(L), "oldest", 0)) conf_set(ks, conf, "auto.offset.reset", "earliest");
  lua_pop(L, 1);
  return 0;
}

static int kafka_init(herald_source *src, lua_State *L, int idx) {
  kafka_src *ks = src->priv;
  if (idx < 0) idx = lua_gettop(L) + idx + 1;
  ks->src = src;
  ks->fds[0] = ks->fds[1] = -1;
  ks->topic = herald_xstrdup(herald_cfg_string(L, idx, "topic", ""));
  ks->json_body = herald_cfg_bool(L, idx, "jsonBody", 0);
  double lim = herald_cfg_number(L, idx, "limitEventsPerSecond", 0);
  if (lim > 0) ks->gap_ns = (uint64_t)(1e9 / lim);
  ks->metadata_json = metadata_json(L, idx);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  int r = build_conf(ks, conf, L, idx);
  if (r) {
    rd_kafka_conf_destroy(conf);
    return r;
  }
  rd_kafka_conf_set_opaque(conf, ks);
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  rd_kafka_conf_set_log_cb(conf, on_log);
  rd_kafka_conf_set_error_cb(conf, on_error);
  rd_kafka_conf_set_stats_cb(conf, on_stats);
  ks->conf = conf;
  return 0;
}

/* ---- start ---- */

static int kafka_start(herald_source *src) {
  kafka_src *ks = src->priv;
  uv_loop_t *loop = src->engine->loop;
  char err[512];
  if (pipe2(ks->fds, O_NONBLOCK | O_CLOEXEC) < 0) {
    herald_log(&src->log, HLOG_ERROR, "kafka: pipe: %s", strerror(errno));
    return HERALD_EIO;
  }
  ks->rk = rd_kafka_new(RD_KAFKA_CONSUMER, ks->conf, err, sizeof err); /* takes conf on success */
  if (!ks->rk) {
    herald_log(&src->log, HLOG_ERROR, "kafka: cannot create the consumer: %s", err);
    return HERALD_EINVAL;
  }
  ks->conf = NULL;
  rd_kafka_set_log_queue(ks->rk, NULL); /* logs to the main queue ... */
  rd_kafka_poll_set_consumer(ks->rk);   /* ... which is forwarded to the consumer queue */
  ks->q = rd_kafka_queue_get_consumer(ks->rk);
  rd_kafka_queue_io_event_enable(ks->q, ks->fds[1], "1", 1);
  uv_poll_init(loop, &ks->poll, ks->fds[0]);
  uv_idle_init(loop, &ks->more);
  uv_check_init(loop, &ks->store_check);
  uv_timer_init(loop, &ks->rate_timer);
  ks->poll.data = ks->more.data = ks->store_check.data = ks->rate_timer.data = ks;
  ks->handles_open = 4;
  ks->started = 1;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_resp_err_t e;
  if (ks->group) {
    rd_kafka_topic_partition_list_add(l, ks->topic, RD_KAFKA_PARTITION_UA);
    e = rd_kafka_subscribe(ks->rk, l);
  } else {
    rd_kafka_topic_partition_list_add(l, ks->topic, ks->partition)->offset = RD_KAFKA_OFFSET_END;
    e = rd_kafka_assign(ks->rk, l);
  }
  rd_kafka_topic_partition_list_destroy(l);
  if (e) {
    herald_log(&src->log, HLOG_ERROR, "kafka: cannot %s topic %s: %s", ks->group ? "subscribe to" : "assign",
               ks->topic, rd_kafka_err2str(e));
    return HERALD_EINVAL;
  }
  uv_poll_start(&ks->poll, UV_READABLE, on_readable);
  if (ks->group)
    herald_log(&src->log, HLOG_INFO, "consuming %s as group member", ks->topic);
  else
    herald_log(&src->log, HLOG_INFO, "consuming %s partition %d from the newest offset", ks->topic, (int)ks->partition);
  /* the pipe is written only when the queue goes from empty to non-empty: serve what is there */
  pump(ks);
  return 0;
}

/* ---- stop ---- */

static void free_all(kafka_src *ks) {
  while (ks->pend_head) {
    rec *r = ks->pend_head;
    ks->pend_head = r->next_pend;
    if (!r->part) rec_free(r); /* the others are freed with their partition's FIFO */
  }
  for (int i = 0; i < ks->nparts; i++) {
    kpart *p = ks->parts[i];
    if (!p) continue;
    for (rec *r = p->head; r;) {
      rec *n = r->next;
      rec_free(r);
      r = n;
    }
    free(p);
  }
  free(ks->parts);
  ks->parts = NULL;
  ks->nparts = 0;
  if (ks->fds[0] >= 0) close(ks->fds[0]);
  if (ks->fds[1] >= 0) close(ks->fds[1]);
  ks->fds[0] = ks->fds[1] = -1;
  free(ks->topic), free(ks->first_broker), free(ks->metadata_json);
  ks->topic = ks->first_broker = ks->metadata_json = NULL;
  if (ks->conf) rd_kafka_conf_destroy(ks->conf);
  ks->conf = NULL;
}

static void finish(kafka_src *ks) {
  herald_source_stop_cb done = ks->stop_done;
  ks->stop_done = NULL;
  free_all(ks);
  if (done) done(ks->src);
}

static void close_work(uv_work_t *w) {
  kafka_src *ks = w->data;
  /* leaves the group and commits the stored offsets; rebalance callbacks run here (closing) */
  rd_kafka_consumer_close(ks->rk);
  rd_kafka_destroy(ks->rk);
}

static void close_work_done(uv_work_t *w, int status) {
  kafka_src *ks = w->data;
  ks->rk = NULL;
  herald_log(&ks->src->log, HLOG_INFO, "consumer closed%s", ks->group ? " (left the group, offsets committed)" : "");
  finish(ks);
}

static void handle_closed(uv_handle_t *h) {
  kafka_src *ks = h->data;
  if (--ks->handles_open > 0) return;
  if (!ks->rk) {
    finish(ks);
    return;
  }
  ks->closing = 1;
  ks->close_work.data = ks;
  if (uv_queue_work(ks->src->engine->loop, &ks->close_work, close_work, close_work_done) != 0) {
    close_work(&ks->close_work);
    close_work_done(&ks->close_work, 0);
  }
}

static void maybe_finish_stop(kafka_src *ks) {
  if (!ks->stopping || ks->inflight > 0 || ks->close_begun || !ks->stop_done) return;
  ks->close_begun = 1;
  store_offsets(ks);
  if (ks->q) {
    rd_kafka_queue_io_event_enable(ks->q, -1, NULL, 0);
    rd_kafka_queue_destroy(ks->q);
    ks->q = NULL;
  }
  if (!ks->started) {
    if (ks->rk) rd_kafka_destroy(ks->rk), ks->rk = NULL;
    finish(ks);
    return;
  }
  uv_close((uv_handle_t *)&ks->poll, handle_closed);
  uv_close((uv_handle_t *)&ks->more, handle_closed);
  uv_close((uv_handle_t *)&ks->store_check, handle_closed);
  uv_close((uv_handle_t *)&ks->rate_timer, handle_closed);
}

static void kafka_stop(herald_source *src, herald_source_stop_cb done) {
  kafka_src *ks = src->priv;
  if (ks->stopping) return;
  ks->stopping = 1;
  ks->stop_done = done;
  herald_source_cancel_room(src);
  ks->waiting_room = 0;
  if (ks->started) {
    uv_poll_stop(&ks->poll);
    uv_idle_stop(&ks->more);
    uv_timer_stop(&ks->rate_timer);
  }
  /* not yet on the bus: dropped here, not committed, read again at the next start */
  rec *r = ks->pend_head;
  ks->pend_head = ks->pend_tail = NULL;
  while (r) {
    rec *n = r->next_pend;
    if (r->part) { /* keep its place in the FIFO, but never store past it */
      r->part = NULL;
    } else {
      rec_free(r);
    }
    r = n;
  }
  maybe_finish_stop(ks);
}

const herald_source_type herald_source_kafka = {
    .name = "kafka",
    .event_type = "kafka",
    .priv_size = sizeof(kafka_src),
    .init = kafka_init,
    .start = kafka_start,
    .stop = kafka_stop,
};
