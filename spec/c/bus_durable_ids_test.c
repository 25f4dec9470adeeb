/*
 * bus_durable_ids_test.c: the durable embedded bus (--bus-dir) across kill -9 when a source
 * gives stable CloudEvent ids (herald_source_emit_id) and its upstream redelivers a message the
 * bus already holds: two live records then carry one id. Every event the bus accepted must come
 * back after a crash until it is acked; acking one copy must not retire the other; an id acked
 * before must not hide a later copy.
 *
 * Each "run" of herald is a forked child that opens the bus on the same directory, takes what
 * the log hands back, publishes, acks some deliveries, lets the loop finish (every commit
 * written) and then SIGKILLs itself: the directory is left exactly as a kill -9 leaves it
 * (no close, no last commit). The child writes its check counts to a pipe first. Prints
 * "N passed, M failed" and exits non-zero on any failure.
 */
#include "bus.h"
#include "common.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int passed, failed;

#define CHECK(cond, ...)                                                                      \
  do {                                                                                        \
    if (cond) {                                                                               \
      passed++;                                                                               \
    } else {                                                                                  \
      failed++;                                                                               \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                    \
      fprintf(stderr, __VA_ARGS__);                                                           \
      fputc('\n', stderr);                                                                    \
    }                                                                                         \
  } while (0)

/* ---- one run (in a child) ---- */

#define MAXD 64

typedef struct got {
  herald_bus_delivery *d;
  char id[33];
  char data[64];
} got;

static got gots[MAXD];
static int ngot, published_ok, published_failed;
static herald_bus *bus;

static void on_deliver(herald_bus_sub *sub, herald_bus_delivery *d, herald_event *ev) {
  (void)sub;
  if (ngot == MAXD) abort();
  gots[ngot].d = d;
  snprintf(gots[ngot].id, sizeof gots[ngot].id, "%s", ev->id);
  snprintf(gots[ngot].data, sizeof gots[ngot].data, "%s", ev->data);
  ngot++;
}

static void on_published(void *data, int status) {
  (void)data;
  if (status == 0) published_ok++;
  else published_failed++;
}

static void publish(const char *id, const char *data) {
  herald_event *ev = herald_event_new_full(id, NULL, "es", "ev", "test", "application/json", data,
                                           strlen(data));
  int r = herald_bus_publish(bus, ev, on_published, NULL);
  herald_event_unref(ev);
  CHECK(r == 0, "publish %s: %d", id, r);
}

/* How many deliveries of this run carry exactly this data. */
static int count_data(const char *data) {
  int n = 0;
  for (int i = 0; i < ngot; i++) n += strcmp(gots[i].data, data) == 0;
  return n;
}

static void ack_data(const char *data) {
  for (int i = 0; i < ngot; i++)
    if (gots[i].d && strcmp(gots[i].data, data) == 0) {
      herald_bus_ack(bus, gots[i].d);
      gots[i].d = NULL;
      return;
    }
  CHECK(0, "no delivery of %s to ack", data);
}

static void ack_all(void) {
  for (int i = 0; i < ngot; i++)
    if (gots[i].d) {
      herald_bus_ack(bus, gots[i].d);
      gots[i].d = NULL;
    }
}

typedef void (*run_fn)(uv_loop_t *loop);

/* Runs fn in a child on a fresh loop and bus over dir; the child ends with SIGKILL (crash) or,
 * when clean, closes the bus first. The child's check counts come back through a pipe. */
static void run_child(const char *dir, run_fn fn, int clean) {
  int fds[2];
  if (pipe(fds) != 0) abort();
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) abort();
  if (pid == 0) {
    close(fds[0]);
    passed = failed = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    int err = 0;
    bus = herald_bus_embedded_open(&loop, 0, dir, &err);
    if (!bus) {
      CHECK(0, "open %s: %d", dir, err);
    } else {
      herald_bus_sub sub = {.durable = "s/t/d", .source = "es", .subject = "ev", .deliver = on_deliver};
      CHECK(herald_bus_subscribe(bus, &sub) == 0, "subscribe");
      uv_run(&loop, UV_RUN_DEFAULT); /* what the log handed back is delivered */
      fn(&loop);
      uv_run(&loop, UV_RUN_DEFAULT); /* every commit (publishes, done records) written */
      if (clean) {
        ack_all();
        herald_bus_unsubscribe(bus, &sub);
        bus->ops->close(bus, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
      }
    }
    char line[64];
    int n = snprintf(line, sizeof line, "%d %d\n", passed, failed);
    if (write(fds[1], line, (size_t)n) != n) abort();
    close(fds[1]);
    if (!clean) kill(getpid(), SIGKILL); /* kill -9: no drain, no close, no last commit */
    _exit(0);
  }
  close(fds[1]);
  char line[64] = {0};
  ssize_t n = read(fds[0], line, sizeof line - 1);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  int p = 0, f = 0;
  if (n <= 0 || sscanf(line, "%d %d", &p, &f) != 2) f = 1, fprintf(stderr, "FAIL: a run died early\n");
  passed += p, failed += f;
  CHECK(clean ? WIFEXITED(status) : WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
        "the run ended as planned (status %d)", status);
}

/* ids as a stable-id source makes them (32 hex characters) */
#define X(n) "00000000000000000000000000000" #n "00"

/* Run 1: six messages, all accepted; only m1 and m2 are acked before the crash. */
static void run1(uv_loop_t *loop) {
  CHECK(ngot == 0, "a fresh directory hands nothing back (got %d)", ngot);
  publish(X(1), "{\"m\":1,\"copy\":1}");
  publish(X(2), "{\"m\":2,\"copy\":1}");
  publish(X(3), "{\"m\":3,\"copy\":1}");
  publish(X(4), "{\"m\":4,\"copy\":1}");
  publish(X(5), "{\"m\":5,\"copy\":1}");
  publish(X(6), "{\"m\":6,\"copy\":1}");
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK(published_ok == 6 && published_failed == 0, "6 accepted (ok %d, failed %d)", published_ok, published_failed);
  CHECK(ngot == 6, "6 delivered (got %d)", ngot);
  ack_data("{\"m\":1,\"copy\":1}");
  ack_data("{\"m\":2,\"copy\":1}");
}

/* Run 2: the log hands back m3..m6 (not acked); the upstream, which never got its acks,
 * redelivers m1 and m3..m6 with the same ids while the replayed copies are still held. One copy
 * of m3 (the replayed one) and one of m4 (the redelivered one) are acked; then a crash. */
static void run2(uv_loop_t *loop) {
  CHECK(ngot == 4, "m3..m6 handed back after the crash (got %d)", ngot);
  for (int m = 3; m <= 6; m++) {
    char d[32];
    snprintf(d, sizeof d, "{\"m\":%d,\"copy\":1}", m);
    CHECK(count_data(d) == 1, "replayed %s", d);
  }
  CHECK(count_data("{\"m\":1,\"copy\":1}") == 0, "m1 was acked: not handed back");
  CHECK(count_data("{\"m\":2,\"copy\":1}") == 0, "m2 was acked: not handed back");
  publish(X(1), "{\"m\":1,\"copy\":2}");
  publish(X(3), "{\"m\":3,\"copy\":2}");
  publish(X(4), "{\"m\":4,\"copy\":2}");
  publish(X(5), "{\"m\":5,\"copy\":2}");
  publish(X(6), "{\"m\":6,\"copy\":2}");
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK(published_ok == 5, "5 redeliveries accepted (ok %d)", published_ok);
  /* the embedded bus delivers every copy (at least once); an id is never a reason to drop */
  CHECK(ngot == 9, "4 replayed + 5 redelivered copies delivered (got %d)", ngot);
  CHECK(count_data("{\"m\":1,\"copy\":2}") == 1, "m1's redelivery delivered");
  ack_data("{\"m\":3,\"copy\":1}");
  ack_data("{\"m\":4,\"copy\":2}");
}

/* Run 3: what was not acked comes back, each copy on its own: m3's redelivered copy, m4's
 * replayed copy, both copies of m5 and m6, m1's redelivered copy. All acked; a clean stop. */
static void run3(uv_loop_t *loop) {
  (void)loop;
  static const char *want[] = {"{\"m\":1,\"copy\":2}", "{\"m\":3,\"copy\":2}", "{\"m\":4,\"copy\":1}",
                               "{\"m\":5,\"copy\":1}", "{\"m\":5,\"copy\":2}", "{\"m\":6,\"copy\":1}",
                               "{\"m\":6,\"copy\":2}"};
  CHECK(ngot == 7, "7 unacked copies handed back (got %d)", ngot);
  for (size_t i = 0; i < sizeof want / sizeof *want; i++)
    CHECK(count_data(want[i]) == 1, "%s handed back once (got %d)", want[i], count_data(want[i]));
  CHECK(count_data("{\"m\":3,\"copy\":1}") == 0, "m3's acked copy not handed back");
  CHECK(count_data("{\"m\":4,\"copy\":2}") == 0, "m4's acked copy not handed back");
  for (int i = 0; i < ngot; i++) {
    char d[32];
    snprintf(d, sizeof d, "{\"m\":%c", gots[i].data[5]);
    CHECK(strncmp(gots[i].data, d, strlen(d)) == 0 && gots[i].id[29] == gots[i].data[5],
          "id %s goes with its data %s", gots[i].id, gots[i].data);
  }
}

/* Run 4: everything was acked: nothing comes back. */
static void run4(uv_loop_t *loop) {
  (void)loop;
  CHECK(ngot == 0, "nothing handed back once all was acked (got %d)", ngot);
}

int main(void) {
  char tmpl[] = "/tmp/herald-bus-ids-XXXXXX";
  char *dir = mkdtemp(tmpl);
  if (!dir) return 2;
  run_child(dir, run1, 0);
  run_child(dir, run2, 0);
  run_child(dir, run3, 1);
  run_child(dir, run4, 1);
  char *cmd = herald_xasprintf("rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
  free(cmd);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
