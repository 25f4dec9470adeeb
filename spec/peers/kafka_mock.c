/*
 * spec/peers/kafka_mock.c: a Kafka cluster for tests, librdkafka's mock cluster in a process of
 * its own (its brokers listen on 127.0.0.1 and serve any client).
 *
 *   herald-peer-kafka_mock [-b brokers] [topic[:partitions] ...]
 *
 * Prints "bootstrap <host:port,...>" once listening. SIGUSR1 takes every broker down (open
 * connections closed, new ones refused) and prints "down"; SIGUSR2 brings them back and prints
 * "up". Runs until SIGTERM/SIGINT.
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t want_down, want_up, want_stop;

static void on_signal(int sig) {
  if (sig == SIGUSR1) want_down = 1;
  else if (sig == SIGUSR2) want_up = 1;
  else want_stop = 1;
}

int main(int argc, char **argv) {
  int brokers = 1, argi = 1;
  if (argc > 2 && strcmp(argv[1], "-b") == 0) {
    brokers = atoi(argv[2]);
    argi = 3;
  }
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) {
    fprintf(stderr, "rd_kafka_new: %s\n", err);
    return 1;
  }
  rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
  if (!mc) {
    fprintf(stderr, "rd_kafka_mock_cluster_new failed\n");
    return 1;
  }
  for (; argi < argc; argi++) {
    char topic[256];
    int parts = 1;
    snprintf(topic, sizeof topic, "%s", argv[argi]);
    char *colon = strchr(topic, ':');
    if (colon) {
      *colon = '\0';
      parts = atoi(colon + 1);
    }
    rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, topic, parts, 1);
    if (e) fprintf(stderr, "topic %s: %s\n", topic, rd_kafka_err2str(e));
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGUSR1, &sa, NULL);
  sigaction(SIGUSR2, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(mc));
  fflush(stdout);
  while (!want_stop) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
    if (want_down) {
      want_down = 0;
      for (int b = 1; b <= brokers; b++) rd_kafka_mock_broker_set_down(mc, b);
      printf("down\n");
      fflush(stdout);
    }
    if (want_up) {
      want_up = 0;
      for (int b = 1; b <= brokers; b++) rd_kafka_mock_broker_set_up(mc, b);
      printf("up\n");
      fflush(stdout);
    }
  }
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
