/*
 * engine.c: the engine's lifecycle.
 *
 *   init: Lua state + stdlib, signals        configure (from the CLI): options, the bus
 *   start: every source, /metrics, replay    SIGINT/SIGTERM -> shutdown:
 *     of the spill file (spill.h)
 *     1. stop sources (no new events produced; connections already open may still post) and
 *        wait for their stop to call back (a webhook's: every publish it made answered)
 *     2. drain: wait until the sources stopped, the bus is empty and no trigger action is in
 *        flight, for at most --drain-timeout T. If that happens: go to 4.
 *     3. at 0.8 T (the deadline): the bus hands out nothing more; each trigger that is not a
 *        dlqTrigger is closed and its unfinished actions go to its dlqTrigger, or are given up
 *        (their delivery nak'd: the event stays on the bus; or, already acked under at most
 *        once, their events spilled). The dlqTriggers get until T, then are closed the same way.
 *     4. once every executor's close called back (no action holds a bus delivery any more):
 *        what the bus still holds is spilled (in-memory bus) or kept (durable bus, JetStream);
 *        the spill file is written; unsubscribe; close the bus, and once it has answered every
 *        publish, the HTTP servers and signals; uv_run returns; exit 0, or 3
 *        (HERALD_EXIT_LEFTOVER) when anything was dead-lettered, spilled or kept.
 * The bus is closed only after every trigger (an action's end acks its delivery on the bus),
 * and the servers only after the bus (a publish answered late answers an open request).
 */
#include "engine.h"
#include "common.h"
#include "lua_host.h"
#include "metrics.h"
#include "runtime.h"
#include "spill.h"
#include "tap.h"

#include <lauxlib.h>
#include <stddef.h>
#include <sys/resource.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>

typedef struct herald_source_node {
  herald_source *src;
  struct herald_source_node *next;
} source_node;

typedef struct herald_trigger_node {
  herald_trigger *t;
  struct herald_trigger_node *next;
} trigger_node;

typedef struct herald_server_entry {
  int port;
  herald_http_server *srv;
  struct herald_server_entry *next;
} server_entry;

static const herald_logger engine_log = {.name = "engine"};

static void on_signal(uv_signal_t *h, int signum) {
  herald_engine *eng = h->data;
  herald_log(&eng->log, HLOG_INFO, "received %s, draining", signum == SIGINT ? "SIGINT" : "SIGTERM");
  herald_engine_shutdown(eng);
}

static int start_one(herald_engine *eng, herald_source *src);

/* SIGHUP: reload the specs (the Lua function herald/engine.lua registered), never a kill. */
static void on_sighup(uv_signal_t *h, int signum) {
  (void)signum;
  herald_engine *eng = h->data;
  if (eng->draining) return;
  if (eng->reload_ref == LUA_NOREF) {
    herald_log(&eng->log, HLOG_WARN, "received SIGHUP: this command does not reload; ignored");
    return;
  }
  herald_log(&eng->log, HLOG_INFO, "received SIGHUP, reloading the specs");
  lua_State *L = eng->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, eng->reload_ref);
  if (lua_pcall(L, 0, 0, 0) != 0) {
    herald_log(&eng->log, HLOG_ERROR, "reload failed: %s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

int herald_engine_init(herald_engine *eng, uv_loop_t *loop, const herald_engine_opts *opts) {
  memset(eng, 0, sizeof *eng);
  eng->loop = loop;
  eng->log = engine_log;
  if (opts) eng->opts = *opts;
  if (!eng->opts.secrets_dir) eng->opts.secrets_dir = "/argo-events/secrets";
  if (!eng->opts.listen_host) eng->opts.listen_host = "127.0.0.1";
  if (!eng->opts.metrics_addr) eng->opts.metrics_addr = "127.0.0.1:7777";
  if (!eng->opts.admin_addr) eng->opts.admin_addr = "127.0.0.1:7778";
  if (!eng->opts.drain_timeout_ms) eng->opts.drain_timeout_ms = 10000;
  eng->http_limits = herald_http_default_limits;
  eng->L = herald_lua_new(eng);
  if (!eng->L) return HERALD_ENOMEM;
  uv_signal_init(loop, &eng->sigint);
  uv_signal_init(loop, &eng->sigterm);
  eng->sigint.data = eng->sigterm.data = eng;
  uv_signal_start(&eng->sigint, on_signal, SIGINT);
  uv_signal_start(&eng->sigterm, on_signal, SIGTERM);
  uv_unref((uv_handle_t *)&eng->sigint); /* signals alone do not keep the loop alive */
  uv_unref((uv_handle_t *)&eng->sigterm);
  eng->reload_ref = LUA_NOREF;
  uv_signal_init(loop, &eng->sighup);
  eng->sighup.data = eng;
  uv_signal_start(&eng->sighup, on_sighup, SIGHUP);
  uv_unref((uv_handle_t *)&eng->sighup);
  uv_timer_init(loop, &eng->drain_timer);
  eng->drain_timer.data = eng;
  return 0;
}

herald_bus *herald__engine_bus(herald_engine *eng) {
  if (eng->bus) return eng->bus;
  if (eng->opts.js.url) { /* --bus nats://... or an EventBus: JetStream (checked by configure) */
    int err = 0;
    eng->bus = herald_bus_jetstream_new(eng->loop, &eng->opts.js, &err);
  }
  if (eng->opts.js.url && eng->opts.bus_dir)
    herald_log(&eng->log, HLOG_WARN, "--bus-dir %s is for the embedded bus: JetStream keeps the events", eng->opts.bus_dir);
  if (!eng->bus && eng->opts.bus_dir && !eng->opts.js.url) {
    int err = 0;
    eng->bus = herald_bus_embedded_open(eng->loop, eng->opts.bus_capacity, eng->opts.bus_dir, &err);
    if (!eng->bus) eng->bus_error = err ? err : HERALD_EIO; /* herald_engine_start fails with it */
  }
  if (!eng->bus) eng->bus = herald_bus_embedded_new(eng->loop, eng->opts.bus_capacity);
  return eng->bus;
}

herald_source *herald__engine_find_source(herald_engine *eng, const char *es, const char *ev) {
  for (source_node *n = eng->sources; n; n = n->next)
    if (strcmp(n->src->es_name, es) == 0 && strcmp(n->src->event_name, ev) == 0) return n->src;
  return NULL;
}

void herald__engine_add_source(herald_engine *eng, herald_source *src) {
  herald__engine_bus(eng);
  source_node *n = herald_xmalloc(sizeof *n);
  n->src = src;
  n->next = eng->sources;
  eng->sources = n;
}

void herald__engine_add_trigger(herald_engine *eng, herald_trigger *t) {
  trigger_node *n = herald_xmalloc(sizeof *n);
  n->t = t;
  n->next = eng->triggers;
  eng->triggers = n;
}

herald_http_server *herald_engine_http_server(herald_engine *eng, int port, int *err) {
  for (server_entry *e = eng->servers; e; e = e->next)
    if (e->port == port) return e->srv;
  char name[32];
  snprintf(name, sizeof name, "%d", port);
  herald_http_server *srv = herald_http_server_listen(eng->loop, eng->opts.listen_host, port,
                                                      &eng->http_limits, name, err);
  if (!srv) return NULL;
  server_entry *e = herald_xmalloc(sizeof *e);
  e->port = port;
  e->srv = srv;
  e->next = eng->servers;
  eng->servers = e;
  return srv;
}

/* Bus health, read from the bus at each scrape: herald_bus_* {bus="embedded"|"jetstream"}. */
static void bus_metrics(herald_engine *eng) {
  if (!eng->bus) return;
  herald_bus_stats st;
  eng->bus->ops->stats(eng->bus, &st);
  const char *bus = eng->bus->ops->name;
  static const struct {
    const char *name, *help;
    herald_metric_kind kind;
    size_t off; /* of a uint64_t in herald_bus_stats */
  } series[] = {
      {"herald_bus_published_total", "Events the bus accepted (JetStream: PubAck received).", HERALD_COUNTER, offsetof(herald_bus_stats, published)},
      {"herald_bus_rejected_total", "Publishes refused: bus full, server unreachable or no PubAck.", HERALD_COUNTER, offsetof(herald_bus_stats, rejected)},
      {"herald_bus_delivered_total", "Deliveries handed to sensors (embedded bus: one per event for all the sensors on it).", HERALD_COUNTER, offsetof(herald_bus_stats, delivered)},
      {"herald_bus_acked_total", "Deliveries acknowledged.", HERALD_COUNTER, offsetof(herald_bus_stats, acked)},
      {"herald_bus_duplicates_total", "Redelivered events dropped because their id was already handled.", HERALD_COUNTER, offsetof(herald_bus_stats, duplicates)},
      {"herald_bus_disconnects_total", "Times the connection to the bus server was lost.", HERALD_COUNTER, offsetof(herald_bus_stats, disconnects)},
      {"herald_bus_reconnects_total", "Times the connection to the bus server was restored.", HERALD_COUNTER, offsetof(herald_bus_stats, reconnects)},
      {"herald_bus_in_flight", "Events held now (embedded) or awaiting their PubAck or ack (JetStream).", HERALD_GAUGE, offsetof(herald_bus_stats, in_bus)},
      {"herald_bus_capacity", "Bound on the events in flight; at it, publishes are refused (503).", HERALD_GAUGE, offsetof(herald_bus_stats, capacity)},
  };
  for (size_t i = 0; i < sizeof series / sizeof series[0]; i++) {
    uint64_t v;
    memcpy(&v, (const char *)&st + series[i].off, sizeof v);
    herald_metric_set(herald_metric_get(series[i].name, series[i].help, series[i].kind, "bus", bus, NULL), (double)v);
  }
  herald_metric_set(herald_metric_get("herald_bus_connected", "1 while the bus can take events, else 0.",
                                      HERALD_GAUGE, "bus", bus, NULL), st.connected ? 1 : 0);
}

/* process_* series as Prometheus' client libraries export them, read from /proc at scrape. */
static void process_metrics(void) {
  static double boot_time = -1;
  long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
  if (boot_time < 0) {
    boot_time = 0;
    FILE *f = fopen("/proc/stat", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
      if (sscanf(line, "btime %lf", &boot_time) == 1) break;
    if (f) fclose(f);
  }
  char buf[1024];
  FILE *f = fopen("/proc/self/stat", "r");
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f) fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  unsigned long utime = 0, stime = 0, vsize = 0;
  unsigned long long start = 0;
  long rss = 0;
  if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %llu %lu %ld",
                  &utime, &stime, &start, &vsize, &rss) == 5) {
    herald_metric_set(herald_metric_get("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", HERALD_COUNTER, NULL),
                      (double)(utime + stime) / (double)tck);
    herald_metric_set(herald_metric_get("process_resident_memory_bytes", "Resident memory size in bytes.", HERALD_GAUGE, NULL),
                      (double)rss * (double)page);
    herald_metric_set(herald_metric_get("process_virtual_memory_bytes", "Virtual memory size in bytes.", HERALD_GAUGE, NULL),
                      (double)vsize);
    herald_metric_set(herald_metric_get("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", HERALD_GAUGE, NULL),
                      boot_time + (double)start / (double)tck);
  }
  int fds = 0;
  uv_fs_t req;
  if (uv_fs_scandir(NULL, &req, "/proc/self/fd", 0, NULL) >= 0) {
    uv_dirent_t ent;
    while (uv_fs_scandir_next(&req, &ent) != UV_EOF) fds++;
  }
  uv_fs_req_cleanup(&req);
  herald_metric_set(herald_metric_get("process_open_fds", "Number of open file descriptors.", HERALD_GAUGE, NULL), fds);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    herald_metric_set(herald_metric_get("process_max_fds", "Maximum number of open file descriptors.", HERALD_GAUGE, NULL),
                      (double)rl.rlim_cur);
}

/* /healthz: the loop answers. */
static void healthz_handler(herald_http_req *req) {
  herald_http_respond(req, 200, "text/plain; charset=utf-8", NULL, "ok\n", 3);
}

/* /readyz: 200 once the engine started every source, none reports a lost connection, and the
 * bus takes events; else 503 with what is not ready. */
static void readyz_handler(herald_http_req *req) {
  herald_engine *eng = req->route_data;
  herald_buf b = HERALD_BUF_INIT;
  int nr = 0;
  herald_buf_puts(&b, "{\"notReady\":[");
  if (!eng->started) {
    herald_buf_puts(&b, "\"engine: starting\"");
    nr++;
  }
  if (eng->draining) {
    herald_buf_puts(&b, nr++ ? ",\"engine: stopping\"" : "\"engine: stopping\"");
  }
  if (eng->bus) {
    herald_bus_stats st;
    memset(&st, 0, sizeof st);
    eng->bus->ops->stats(eng->bus, &st);
    if (!st.connected) herald_buf_puts(&b, nr++ ? ",\"bus: not connected\"" : "\"bus: not connected\"");
  }
  for (source_node *n = eng->sources; n; n = n->next) {
    if (n->src->conn_state != -1) continue;
    if (nr++) herald_buf_putc(&b, ',');
    char *what = herald_xasprintf("source %s/%s: not connected", n->src->es_name, n->src->event_name);
    herald_buf_json_string(&b, what, strlen(what));
    free(what);
  }
  herald_buf_printf(&b, "],\"ready\":%s}\n", nr ? "false" : "true");
  herald_http_respond(req, nr ? 503 : 200, "application/json", NULL, b.data, b.len);
  herald_buf_free(&b);
}

static void metrics_handler(herald_http_req *req) {
  herald_buf b = HERALD_BUF_INIT;
  bus_metrics(req->route_data);
  process_metrics();
  herald_metrics_render(&b);
  herald_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b.data, b.len);
  herald_buf_free(&b);
}

static int start_metrics(herald_engine *eng) {
  const char *addr = eng->opts.metrics_addr;
  if (!addr || !*addr || strcmp(addr, "off") == 0) return 0;
  const char *colon = strrchr(addr, ':');
  if (!colon) {
    herald_log(&eng->log, HLOG_ERROR, "--metrics-addr %s: expected HOST:PORT", addr);
    return HERALD_EINVAL;
  }
  char host[256];
  snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
  int port = atoi(colon + 1), err = 0;
  eng->metrics_server = herald_http_server_listen(eng->loop, host, port, NULL, "metrics", &err);
  if (!eng->metrics_server) {
    herald_log(&eng->log, HLOG_ERROR, "metrics endpoint %s: cannot listen: %s", addr,
               uv_strerror(err));
    return HERALD_EIO;
  }
  herald_http_route r = {.path = "/metrics", .method = "GET", .handler = metrics_handler, .data = eng};
  herald_http_server_add_route(eng->metrics_server, &r);
  herald_http_route h = {.path = "/healthz", .method = "GET", .handler = healthz_handler, .data = eng};
  herald_http_server_add_route(eng->metrics_server, &h);
  herald_http_route rd = {.path = "/readyz", .method = "GET", .handler = readyz_handler, .data = eng};
  herald_http_server_add_route(eng->metrics_server, &rd);
  return 0;
}

int herald_engine_start(herald_engine *eng) {
  herald__engine_bus(eng);
  if (eng->bus_error) return eng->bus_error; /* --bus-dir unusable (logged) */
  int r = start_metrics(eng);
  if (r < 0) return r;
  r = herald__admin_start(eng);
  if (r < 0) return r;
  for (source_node *n = eng->sources; n; n = n->next) {
    herald_source *src = n->src;
    herald_metric_set(herald_metric_get("argo_events_event_service_running_total",
                                        "How many configured events in the event source are actively running.",
                                        HERALD_GAUGE, "eventsource_name", src->es_name, NULL),
                      0);
  }
  for (source_node *n = eng->sources; n; n = n->next) {
    r = start_one(eng, n->src);
    if (r < 0) return r;
  }
  herald__spill_replay_start(eng); /* what the last stop could not deliver */
  eng->started = 1;
  herald_log(&eng->log, HLOG_INFO, "herald started");
  return 0;
}

/* ---- reload: parts added and removed while running ---- */

static int start_one(herald_engine *eng, herald_source *src) {
  int r = src->type->start ? src->type->start(src) : 0;
  if (r < 0) {
    const char *why = herald_http_listen_error();
    herald_log(&src->log, HLOG_ERROR, "failed to start: %s", *why ? why : herald_strerror(r));
    return r;
  }
  herald_metric_add(herald_metric_get("argo_events_event_service_running_total", "", HERALD_GAUGE,
                                      "eventsource_name", src->es_name, NULL), 1);
  return 0;
}

int herald_engine_start_source(herald_engine *eng, herald_source *src) {
  if (!eng->started) return 0; /* herald_engine_start starts it with the others */
  return start_one(eng, src);
}

static void stopped_one(herald_source *src) {
  herald_engine *eng = src->engine;
  eng->sources_stopping--;
  herald_source_free(src);
}

void herald_engine_stop_source(herald_engine *eng, herald_source *src) {
  for (source_node **pp = &eng->sources; *pp; pp = &(*pp)->next) {
    if ((*pp)->src != src) continue;
    source_node *n = *pp;
    *pp = n->next;
    free(n);
    break;
  }
  herald_metric_add(herald_metric_get("argo_events_event_service_running_total", "", HERALD_GAUGE,
                                      "eventsource_name", src->es_name, NULL), -1);
  if (eng->started && src->type->stop) {
    eng->sources_stopping++;
    src->type->stop(src, stopped_one);
  } else {
    herald_source_free(src);
  }
}

static void trigger_closed(herald_trigger *t);

/* Every 20 ms while triggers are retiring: close those with nothing left to do. */
static void retire_check(uv_timer_t *h) {
  herald_engine *eng = h->data;
  int left = 0, busy = 0;
  if (eng->draining) { /* the drain closes them with the others */
    uv_timer_stop(h);
    return;
  }
  /* a retiring dlqTrigger stays open while a retiring trigger may still dead-letter to it */
  for (trigger_node *n = eng->triggers; n; n = n->next)
    if (herald__trigger_retiring(n->t) && !herald__trigger_is_dlq(n->t) && !herald__trigger_idle(n->t)) busy++;
  for (trigger_node **pp = &eng->triggers; *pp;) {
    herald_trigger *t = (*pp)->t;
    if (!herald__trigger_retiring(t)) {
      pp = &(*pp)->next;
      continue;
    }
    if (!herald__trigger_idle(t) || (busy && herald__trigger_is_dlq(t))) {
      left++;
      pp = &(*pp)->next;
      continue;
    }
    trigger_node *n = *pp;
    *pp = n->next;
    free(n);
    eng->triggers_closing++;
    if (t->type->close) t->type->close(t, trigger_closed);
    else trigger_closed(t);
  }
  if (!left) uv_timer_stop(h);
}

void herald_engine_retire_trigger(herald_engine *eng, herald_trigger *t) {
  herald__trigger_retire(t);
  if (!eng->retire_timer_ready) {
    uv_timer_init(eng->loop, &eng->retire_timer);
    eng->retire_timer.data = eng;
    eng->retire_timer_ready = 1;
  }
  uv_timer_start(&eng->retire_timer, retire_check, 0, 20);
}

/* ---- shutdown ---- */

enum { DRAIN_WAIT, DRAIN_DLQ_GRACE, DRAIN_CLOSING, DRAIN_CLOSED };

static void server_closed(void *data) {
  (void)data;
}

static void trigger_closed(herald_trigger *t) {
  herald_engine *eng = t->engine;
  herald__trigger_delivery_free(t);
  free(t->priv);
  free(t->sensor_name);
  free(t->name);
  free((char *)t->log.name);
  free(t);
  eng->triggers_closing--;
}

/* Closes the triggers still open (only those that are not a dlqTrigger when dlq_grace): their
 * unfinished actions are handed to their dlqTrigger (dlq_grace) or given up (runtime.h). */
static void close_triggers(herald_engine *eng, int dlq_grace) {
  trigger_node **pp = &eng->triggers;
  while (*pp) {
    trigger_node *n = *pp;
    if (dlq_grace && herald__trigger_is_dlq(n->t)) {
      pp = &n->next;
      continue;
    }
    *pp = n->next;
    herald_trigger *t = n->t;
    free(n);
    herald__trigger_delivery_abandon(t, dlq_grace);
    eng->triggers_closing++;
    if (t->type->close) t->type->close(t, trigger_closed);
    else trigger_closed(t);
  }
}

typedef struct leftover_ctx {
  herald_engine *eng;
  uint64_t lost;
} leftover_ctx;

static void lose_event(void *data, herald_event *ev) {
  leftover_ctx *c = data;
  herald__spill_event(c->eng, ev);
  c->lost++;
}

static herald_engine *closing_eng; /* for bus_closed (one engine per process) */

/* The bus has answered every publish: now the servers, signals and timers. */
static void bus_closed(herald_bus *bus) {
  (void)bus;
  herald_engine *eng = closing_eng;
  herald__spill_close();
  while (eng->servers) {
    server_entry *e = eng->servers;
    eng->servers = e->next;
    herald_http_server_close(e->srv, server_closed, NULL);
    free(e);
  }
  if (eng->metrics_server) herald_http_server_close(eng->metrics_server, server_closed, NULL);
  eng->metrics_server = NULL;
  herald__tap_close(eng); /* answers its waiting readers before the admin server goes */
  if (eng->admin_server) herald_http_server_close(eng->admin_server, server_closed, NULL);
  eng->admin_server = NULL;
  uv_close((uv_handle_t *)&eng->drain_timer, NULL);
  uv_close((uv_handle_t *)&eng->sigint, NULL);
  uv_close((uv_handle_t *)&eng->sigterm, NULL);
  uv_close((uv_handle_t *)&eng->sighup, NULL);
  if (eng->retire_timer_ready) uv_close((uv_handle_t *)&eng->retire_timer, NULL);
  eng->retire_timer_ready = 0;
  if (eng->every_ready) uv_close((uv_handle_t *)&eng->every_timer, NULL);
  eng->every_ready = 0;
}

/* Every trigger is closed, so no action holds a bus delivery: account for what is left, write
 * the spill file, and close the bus. */
static void finish_close(herald_engine *eng) {
  uint64_t held = 0;
  leftover_ctx lc = {eng, 0};
  if (eng->bus) {
    if (eng->bus->ops->leftover) {
      held = eng->bus->ops->leftover(eng->bus, lose_event, &lc);
    } else { /* JetStream: the server redelivers what was not acked */
      herald_bus_stats st = {0};
      eng->bus->ops->stats(eng->bus, &st);
      held = st.in_bus;
    }
  }
  uint64_t kept = held - lc.lost;
  int64_t spilled = herald__spill_write(eng);
  uint64_t dlq = eng->drain_dead_lettered;
  if (kept)
    herald_log(&eng->log, HLOG_WARN, "drain: %llu event(s) stay on the %s bus and are delivered after the restart",
               (unsigned long long)kept, eng->bus->ops->name);
  if (dlq || spilled || kept) {
    herald_log(&eng->log, HLOG_WARN, "drain incomplete: %llu action(s) dead-lettered, %lld event(s) spilled, %llu kept on the bus",
               (unsigned long long)dlq, (long long)(spilled < 0 ? -spilled : spilled), (unsigned long long)kept);
    if (eng->exit_code == 0) eng->exit_code = spilled < 0 ? 1 : HERALD_EXIT_LEFTOVER;
  }
  herald_runtime_unsubscribe_all(eng);
  herald__cron_timers_close();
  herald__leader_close();
  herald__source_defer_close();
  closing_eng = eng;
  if (eng->bus) {
    herald_bus *bus = eng->bus;
    eng->bus = NULL; /* sources publishing from now on are told the bus is closed */
    bus->ops->close(bus, bus_closed);
  } else {
    bus_closed(NULL);
  }
}

static void drain_check(uv_timer_t *t) {
  herald_engine *eng = t->data;
  uint32_t inflight = herald_runtime_inflight(eng);
  uint64_t waited = uv_now(eng->loop) - eng->drain_start_ms;
  uint64_t limit = eng->opts.drain_timeout_ms;
  switch (eng->drain_phase) {
  case DRAIN_WAIT: {
    herald_bus_stats st = {0};
    if (eng->bus) eng->bus->ops->stats(eng->bus, &st);
    if (eng->sources_stopping == 0 && st.in_bus == 0 && inflight == 0 &&
        herald__spill_replay_pending() == 0) {
      close_triggers(eng, 0); /* nothing left to abandon */
      eng->drain_phase = DRAIN_CLOSING;
    } else if (waited >= limit - limit / 5) {
      herald_log(&eng->log, HLOG_WARN,
                 "drain timed out with %llu events on the bus, %u actions in flight and %u sources stopping; "
                 "in-flight actions go to their dlqTrigger, the rest is %s",
                 (unsigned long long)st.in_bus, inflight, eng->sources_stopping,
                 eng->bus && eng->bus->ops->leftover ? "spilled or kept on the bus" : "left on the bus");
      if (eng->bus && eng->bus->ops->pause) eng->bus->ops->pause(eng->bus);
      close_triggers(eng, 1);
      eng->drain_phase = DRAIN_DLQ_GRACE;
    }
    break;
  }
  case DRAIN_DLQ_GRACE:
    if (inflight == 0 || waited >= limit) {
      close_triggers(eng, 0);
      eng->drain_phase = DRAIN_CLOSING;
    }
    break;
  case DRAIN_CLOSING:
    break;
  }
  if (eng->drain_phase == DRAIN_CLOSING && eng->triggers_closing == 0) {
    if (herald_runtime_inflight(eng))
      herald_log(&eng->log, HLOG_ERROR, "drain: %u action(s) outlived their trigger", herald_runtime_inflight(eng));
    eng->drain_phase = DRAIN_CLOSED;
    uv_timer_stop(t);
    finish_close(eng);
  }
}

static void source_stopped(herald_source *src) {
  herald_engine *eng = src->engine;
  eng->sources_stopping--;
}

void herald_engine_shutdown(herald_engine *eng) {
  if (eng->draining) return;
  eng->draining = 1;
  eng->drain_start_ms = uv_now(eng->loop);
  for (source_node *n = eng->sources; n; n = n->next) {
    if (n->src->type->stop) {
      eng->sources_stopping++;
      n->src->type->stop(n->src, source_stopped);
    }
  }
  uv_timer_start(&eng->drain_timer, drain_check, 0, 5);
}

void herald_engine_free(herald_engine *eng) {
  while (eng->sources) {
    source_node *n = eng->sources;
    eng->sources = n->next;
    herald_source_free(n->src);
    free(n);
  }
  if (eng->L) lua_close(eng->L);
  eng->L = NULL;
  herald_metrics_free();
}
