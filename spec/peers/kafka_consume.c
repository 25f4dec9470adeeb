/*
 * spec/peers/kafka_consume.c: prints every message of a topic as one JSON line, to check what
 * a trigger produced:
 *
 *   herald-peer-kafka_consume <bootstrap> <topic>
 *   {"topic":"t","partition":0,"offset":0,"key":"k"|null,"headers":[["h","v"],...],"value":"..."}
 *
 * Reads from the oldest offset (consumer group "herald-spec-<pid>"), prints "assigned" once
 * partitions are assigned, and runs until SIGTERM/SIGINT.
 */
#include "buf.h"

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
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

int main(int argc, char **argv) {
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
