/*
 * sources/generator/generator.c: the `generator` event source (Herald's own, not Argo's): emits
 * `count` events, one every `interval`, each {"seq":<1..count>,"data":<data>}; for specs,
 * examples and benchmarks that need events without an HTTP client or a clock to wait for.
 *
 *   start: first event at once --> one-shot uv_timer armed to the next due time
 *   on_timer: emit every event now due (at most BURST per wake-up, so a long stall or
 *             interval 0 does not hold the loop), then re-arm; after `count` events it stops
 *   the bus full (HERALD_EBUSFULL): that event is kept and tried again 1 ms later
 *
 * Due times are start + k * interval on the monotonic clock (as calendar.c), so the rate holds
 * over many events; interval 0 emits as fast as the bus accepts, BURST events per loop turn.
 * The schema (generator.lua) has checked every field: count >= 0 (0: until stopped), interval a
 * Go duration, data JSON text.
 */
#include "buf.h"
#include "common.h"
#include "cron.h"
#include "engine.h"
#include "plugin.h"

#include <string.h>

#define NS_PER_MS INT64_C(1000000)
#define BURST 64 /* events per timer callback at most */

typedef struct generator {
  herald_source *src;
  uv_timer_t timer;
  int64_t count;       /* events to emit; 0: until stopped */
  int64_t interval_ns; /* between events; 0: as fast as the bus takes them */
  char *data_json;     /* the `data` field (JSON text), or NULL for null */
  int64_t sent;        /* events emitted: the last seq */
  uint64_t anchor_mono;
  uint32_t pending;    /* publishes waiting for their callback */
  int started, stopping, timer_closed;
  herald_source_stop_cb stop_done;
} generator;

static int generator_init(herald_source *src, lua_State *L, int cfg_idx) {
  generator *g = src->priv;
  g->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  g->count = (int64_t)herald_cfg_number(L, cfg_idx, "count", 1);
  const char *interval = herald_cfg_string(L, cfg_idx, "interval", "0s");
  char err[200];
  if (herald_parse_duration_msg(interval, &g->interval_ns, err, sizeof err) < 0 || g->interval_ns < 0) {
    herald_log(&src->log, HLOG_ERROR, "invalid interval \"%s\": %s", interval, err);
    return HERALD_EINVAL;
  }
  const char *data = herald_cfg_string(L, cfg_idx, "data", NULL);
  g->data_json = data ? herald_xstrdup(data) : NULL;
  return 0;
}

static void maybe_done(generator *g) {
  if (g->stopping && g->timer_closed && g->pending == 0 && g->stop_done) {
    herald_source_stop_cb done = g->stop_done;
    g->stop_done = NULL;
    free(g->data_json);
    g->data_json = NULL;
    done(g->src);
  }
}

static void on_published(void *data, int status) {
  generator *g = data;
  g->pending--;
  if (status < 0)
    herald_log_limited(&g->src->log, HLOG_WARN, "generator event not published: %s",
                       herald_strerror(status));
  maybe_done(g);
}

/* Emits event seq; returns 0, or HERALD_EBUSFULL to try it again later. */
static int emit(generator *g, int64_t seq) {
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_printf(&b, "{\"seq\":%lld,\"data\":%s}", (long long)seq,
                    g->data_json ? g->data_json : "null");
  int r = herald_source_emit(g->src, b.data, b.len, on_published, g);
  herald_buf_free(&b);
  if (r == 0) {
    g->pending++;
    return 0;
  }
  if (r == HERALD_EBUSFULL) return r;
  herald_log_limited(&g->src->log, HLOG_ERROR, "generator event %lld not published: %s",
                     (long long)seq, herald_strerror(r));
  return 0; /* not retried: counted as sent */
}

static void on_timer(uv_timer_t *t);

static void arm(generator *g, uint64_t delay_ms) {
  uv_update_time(g->timer.loop);
  uv_timer_start(&g->timer, on_timer, delay_ms, 0);
}

static void on_timer(uv_timer_t *t) {
  generator *g = t->data;
  if (g->stopping) return;
  uint64_t now = herald_mono_ns();
  for (int i = 0; i < BURST; i++) {
    if (g->count > 0 && g->sent >= g->count) {
      herald_log(&g->src->log, HLOG_INFO, "generator done: %lld events", (long long)g->sent);
      return;
    }
    uint64_t due = g->anchor_mono + (uint64_t)g->sent * (uint64_t)g->interval_ns;
    if (due > now) { /* the next one is not due yet */
      arm(g, (due - now + NS_PER_MS - 1) / NS_PER_MS);
      return;
    }
    if (emit(g, g->sent + 1) == HERALD_EBUSFULL) {
      arm(g, 1);
      return;
    }
    g->sent++;
  }
  arm(g, 0); /* more are due: let the loop run first */
}

static int generator_start(herald_source *src) {
  generator *g = src->priv;
  int r = uv_timer_init(src->engine->loop, &g->timer);
  if (r < 0) return HERALD_EIO;
  g->timer.data = g;
  g->started = 1;
  g->anchor_mono = herald_mono_ns();
  herald_log(&src->log, HLOG_INFO, "generator started: %lld events, one every %.3fs",
             (long long)g->count, (double)g->interval_ns / 1e9);
  arm(g, 0);
  return 0;
}

static void on_closed(uv_handle_t *h) {
  generator *g = h->data;
  g->timer_closed = 1;
  maybe_done(g);
}

static void generator_stop(herald_source *src, herald_source_stop_cb done) {
  generator *g = src->priv;
  if (g->stopping) return;
  g->stopping = 1;
  g->stop_done = done;
  if (!g->started) {
    g->timer_closed = 1;
    maybe_done(g);
    return;
  }
  uv_timer_stop(&g->timer);
  uv_close((uv_handle_t *)&g->timer, on_closed);
}

const herald_source_type herald_source_generator = {
    .name = "generator",
    .event_type = "generator",
    .priv_size = sizeof(generator),
    .init = generator_init,
    .start = generator_start,
    .stop = generator_stop,
};
