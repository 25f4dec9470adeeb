/*
 * spec/peers/kafka_consume.c: prints every message of a topic as one JSON line, to check what
 * a trigger produced:
 *
 *   herald-peer-kafka_consume <bootstrap> <topic>
 *   {"topic":"t","partition":0,"offset":0,"key":"k"|null,"headers":[["h","v"],...],"value":"..."}
 *
 * Reads from the oldest offset (consumer group "herald-spec-<pid>"), prints "assigned" once
 * partitions are assigned, and runs until SIGTERM/SIGINT.
 *
 * Producer mode, for the kafka source's specs and benchmark:
 *
 *   herald-peer-kafka_consume --produce <bootstrap> <topic> <count> [options]
 *     --rate N       messages a second at most (default: as fast as the broker takes them)
 *     --size N       pad each value to about N bytes (default: no padding)
 *     --body TEXT    the value, verbatim ({seq} and {ts} replaced), instead of the JSON below
 *     --key TEXT     the key ({seq} replaced); default "k{seq}"
 *     --header H=V   a header (repeatable)
 *     --partition N  produce to this partition (default: by key)
 *     --start N      first seq (default 1)
 *
 * Each value is {"seq":N,"ts":<CLOCK_REALTIME ns when produced>,"pad":"xxx"} unless --body.
 * Prints "acked <n>" every 1000 broker acknowledgements and "produced <acked> <failed>" at the
 * end, once every message is acknowledged or failed; a message the broker acknowledged is on it.
 */
#include "buf.h"

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) { stop = 1; }

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts,
                         void *opaque) {
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    rd_kafka_assign(rk, parts);
    printf("assigned %d\n", parts->cnt);
  } else {
    rd_kafka_assign(rk, NULL);
    printf("revoked\n");
  }
  fflush(stdout);
}

static void put_bytes(herald_buf *b, const void *p, size_t n) {
  if (!p) herald_buf_puts(b, "null");
  else herald_buf_json_string(b, p, n);
}

static long acked, failed;

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  if (m->err) failed++;
  else if (++acked % 1000 == 0) {
    printf("acked %ld\n", acked);
    fflush(stdout);
  }
}

/* Replaces {seq} and {ts} in tmpl into b. */
static void expand(herald_buf *b, const char *tmpl, long seq, long long ts) {
  for (const char *p = tmpl; *p; p++) {
    if (strncmp(p, "{seq}", 5) == 0) herald_buf_printf(b, "%ld", seq), p += 4;
    else if (strncmp(p, "{ts}", 4) == 0) herald_buf_printf(b, "%lld", ts), p += 3;
    else herald_buf_putc(b, *p);
  }
}

static long long now_ns(int clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int produce(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s --produce <bootstrap> <topic> <count> [--rate N] [--size N] [--body T] [--key T] [--header H=V] [--partition N] [--start N]\n", argv[0]);
    return 2;
  }
  const char *bootstrap = argv[2], *topic = argv[3], *body = NULL, *key = "k{seq}";
  long count = atol(argv[4]), start = 1;
  double rate = 0;
  int size = 0, partition = RD_KAFKA_PARTITION_UA;
  const char *hn[16], *hv[16];
  int nh = 0;
  for (int i = 5; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--body")) body = argv[i + 1];
    else if (!strcmp(argv[i], "--key")) key = argv[i + 1];
    else if (!strcmp(argv[i], "--partition")) partition = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--start")) start = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--header") && nh < 16) {
      char *eq = strchr(argv[i + 1], '=');
      if (eq) *eq = '\0', hn[nh] = argv[i + 1], hv[nh++] = eq + 1;
    }
  }
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof err) ||
      rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err) ||
      rd_kafka_conf_set(conf, "queue.buffering.max.messages", "1000000", err, sizeof err) ||
      rd_kafka_conf_set(conf, "message.timeout.ms", "60000", err, sizeof err) ||
      rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err)) {
    fprintf(stderr, "conf: %s\n", err);
    return 1;
  }
  rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) {
    fprintf(stderr, "rd_kafka_new: %s\n", err);
    return 1;
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  herald_buf v = HERALD_BUF_INIT, k = HERALD_BUF_INIT;
  long long t0 = now_ns(CLOCK_MONOTONIC);
  for (long i = 0; i < count && !stop; i++) {
    long seq = start + i;
    if (rate > 0) {
      long long due = t0 + (long long)(i * 1e9 / rate);
      long long now;
      while ((now = now_ns(CLOCK_MONOTONIC)) < due) {
        rd_kafka_poll(rk, 0);
        long long d = due - now;
        struct timespec ts = {0, d > 1000000 ? 1000000 : d};
        nanosleep(&ts, NULL);
      }
    }
    herald_buf_reset(&v);
    herald_buf_reset(&k);
    long long ts = now_ns(CLOCK_REALTIME);
    if (body) expand(&v, body, seq, ts);
    else {
      herald_buf_printf(&v, "{\"seq\":%ld,\"ts\":%lld,\"pad\":\"", seq, ts);
      while ((int)v.len + 2 < size) herald_buf_putc(&v, 'x');
      herald_buf_puts(&v, "\"}");
    }
    expand(&k, key, seq, ts);
    rd_kafka_headers_t *hs = rd_kafka_headers_new(nh ? nh : 1);
    for (int h = 0; h < nh; h++) rd_kafka_header_add(hs, hn[h], -1, hv[h], -1);
    rd_kafka_resp_err_t e;
    while ((e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_VALUE(v.data, v.len),
                                  RD_KAFKA_V_KEY(k.data, k.len), RD_KAFKA_V_HEADERS(hs), RD_KAFKA_V_END)) ==
           RD_KAFKA_RESP_ERR__QUEUE_FULL)
      rd_kafka_poll(rk, 10);
    if (e) {
      rd_kafka_headers_destroy(hs);
      fprintf(stderr, "produce: %s\n", rd_kafka_err2str(e));
      failed++;
    }
    rd_kafka_poll(rk, 0);
  }
  while (rd_kafka_outq_len(rk) > 0 && !stop) rd_kafka_poll(rk, 50);
  printf("produced %ld %ld\n", acked, failed);
  fflush(stdout);
  herald_buf_free(&v);
  herald_buf_free(&k);
  rd_kafka_destroy(rk);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--produce") == 0) return produce(argc, argv);
  if (argc != 3) {
    fprintf(stderr, "usage: %s <bootstrap> <topic>\n", argv[0]);
    return 2;
  }
  char err[512], group[64];
  snprintf(group, sizeof group, "herald-spec-%d", (int)getpid());
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err, sizeof err) ||
      rd_kafka_conf_set(conf, "group.id", group, err, sizeof err) ||
      rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err) ||
      rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err)) {
    fprintf(stderr, "conf: %s\n", err);
    return 1;
  }
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (!rk) {
    fprintf(stderr, "rd_kafka_new: %s\n", err);
    return 1;
  }
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, argv[2], RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (e) {
    fprintf(stderr, "subscribe: %s\n", rd_kafka_err2str(e));
    return 1;
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  herald_buf b = HERALD_BUF_INIT;
  while (!stop) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
    if (!m) continue;
    if (m->err) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) fprintf(stderr, "consume: %s\n", rd_kafka_message_errstr(m));
      rd_kafka_message_destroy(m);
      continue;
    }
    herald_buf_reset(&b);
    herald_buf_puts(&b, "{\"topic\":");
    const char *tn = rd_kafka_topic_name(m->rkt);
    herald_buf_json_string(&b, tn, strlen(tn));
    herald_buf_printf(&b, ",\"partition\":%d,\"offset\":%lld,\"key\":", (int)m->partition, (long long)m->offset);
    put_bytes(&b, m->key, m->key_len);
    herald_buf_puts(&b, ",\"headers\":[");
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      const char *name;
      const void *val;
      size_t vlen;
      for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &vlen) == RD_KAFKA_RESP_ERR_NO_ERROR; i++) {
        if (i) herald_buf_putc(&b, ',');
        herald_buf_putc(&b, '[');
        herald_buf_json_string(&b, name, strlen(name));
        herald_buf_putc(&b, ',');
        put_bytes(&b, val, vlen);
        herald_buf_putc(&b, ']');
      }
    }
    herald_buf_puts(&b, "],\"value\":");
    put_bytes(&b, m->payload, m->len);
    herald_buf_puts(&b, "}\n");
    fwrite(b.data, 1, b.len, stdout);
    fflush(stdout);
    rd_kafka_message_destroy(m);
  }
  herald_buf_free(&b);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return 0;
}
