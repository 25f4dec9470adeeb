/*
 * calendar.c: the `calendar` event source (argo-events.md section 2.3 row `calendar`, data shape
 * in 2.4): an event on a cron schedule or every interval.
 *
 *   init: schedule (robfig cron, wins) | interval (Go duration), timezone, exclusionDates,
 *         metadata --> one due time
 *   one-shot uv_timer armed to (due - now) --on_timer--> due reached?
 *       no  --> re-arm for the rest (the timer woke early, or the wall clock moved)
 *       yes --> skip ticks already missed (loop blocked), skip excluded dates,
 *               emit {"eventTime":"<Go time.String() of the tick>","metadata":{...}},
 *               due = next tick, re-arm
 *
 * Due times are absolute, never "now + period": a repeating libuv timer re-arms relative to
 * the callback and drifts (performance.md section 6). Interval ticks are start + k * interval on
 * the monotonic clock (start rounded down to the second, as Argo's first Next() does), so hours
 * of ticks never accumulate lateness and wall-clock steps do not disturb them. Cron ticks are
 * wall-clock times, so the timer is capped at a minute and the wall clock re-read on waking.
 */
#include "buf.h"
#include "common.h"
#include "cron.h"
#include "engine.h"
#include "plugin.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#define NS_PER_MS INT64_C(1000000)
#define NS_PER_S INT64_C(1000000000)
/* Cron schedules follow the wall clock, which can step; re-read it at least this often. */
#define CRON_MAX_SLEEP_MS 60000

typedef struct calendar {
  herald_source *src;
  uv_timer_t timer;
  herald_cron *cron;    /* schedule, or NULL for an interval */
  int64_t interval_ns;  /* when cron is NULL */
  herald_tz *tz;        /* timezone: eventTime's zone and the default zone of the schedule */
  int32_t *exdates;     /* excluded dates as yyyymmdd (UTC, as Argo parses them) */
  size_t nexdates;
  char *metadata_json;  /* `,"metadata":{...}` or NULL */
  /* interval: tick k is due at anchor + k * interval (mono clock; wall for eventTime) */
  uint64_t anchor_mono;
  int64_t anchor_wall;
  int64_t k;
  /* cron: the next due wall-clock time */
  int64_t due_wall;
  uint64_t dropped;     /* ticks refused by a full bus */
  uint32_t pending;     /* publishes waiting for their callback */
  int started, stopping, timer_closed;
  herald_source_stop_cb stop_done;
} calendar;

/* ---- config ---- */

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* metadata: map string -> string, rendered with sorted keys as Go's json.Marshal does. */
static int read_metadata(calendar *c, lua_State *L, int idx) {
  lua_getfield(L, idx, "metadata");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    herald_log(&c->src->log, HLOG_ERROR, "metadata must be a map of strings");
    return HERALD_EINVAL;
  }
  int t = lua_gettop(L);
  size_t n = 0, cap = 8;
  const char **keys = herald_xmalloc(cap * sizeof *keys);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int vt = lua_type(L, -1);
    if (lua_type(L, -2) != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER && vt != LUA_TBOOLEAN)) {
      lua_pop(L, 3);
      free(keys);
      herald_log(&c->src->log, HLOG_ERROR, "metadata must be a map of strings");
      return HERALD_EINVAL;
    }
    if (n == cap) keys = realloc(keys, (cap *= 2) * sizeof *keys);
    HERALD_ASSERT(keys);
    keys[n++] = lua_tostring(L, -2); /* stays alive: the table holds the key */
    lua_pop(L, 1);
  }
  if (n > 0) {
    qsort(keys, n, sizeof *keys, cmp_str);
    herald_buf b = HERALD_BUF_INIT;
    herald_buf_puts(&b, ",\"metadata\":{");
    for (size_t i = 0; i < n; i++) {
      lua_getfield(L, t, keys[i]);
      size_t vl;
      const char *v;
      if (lua_type(L, -1) == LUA_TBOOLEAN) v = lua_toboolean(L, -1) ? "true" : "false", vl = strlen(v);
      else v = lua_tolstring(L, -1, &vl);
      if (i) herald_buf_putc(&b, ',');
      herald_buf_json_string(&b, keys[i], strlen(keys[i]));
      herald_buf_putc(&b, ':');
      herald_buf_json_string(&b, v, vl);
      lua_pop(L, 1);
    }
    herald_buf_putc(&b, '}');
    c->metadata_json = herald_xstrdup(herald_buf_cstr(&b));
    herald_buf_free(&b);
  }
  free(keys);
  lua_pop(L, 1);
  return 0;
}

/* "20060102T150405Z" (Go time.Parse with that layout: fixed digits, ranges checked). */
static int parse_exdate(const char *s, size_t n, int32_t *ymd) {
  int y, mo, d, h, mi, sec;
  if (n != 16 || s[8] != 'T' || s[15] != 'Z') return 0;
  if (!herald_digits(s, 4, &y) || !herald_digits(s + 4, 2, &mo) || !herald_digits(s + 6, 2, &d) ||
      !herald_digits(s + 9, 2, &h) || !herald_digits(s + 11, 2, &mi) || !herald_digits(s + 13, 2, &sec))
    return 0;
  static const int dm[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (mo < 1 || mo > 12 || d < 1 || d > dm[mo - 1] || h > 23 || mi > 59 || sec > 59) return 0;
  if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 0;
  *ymd = y * 10000 + mo * 100 + d;
  return 1;
}

/* exclusionDates: ["EXDATE:20060102T150405Z,20060103T000000Z", ...]. As in Argo, values without
 * the EXDATE: prefix are ignored, and a tick is skipped when its date (in the timezone) is the
 * date of an exclusion (its time of day does not matter). */
static int read_exdates(calendar *c, lua_State *L, int idx) {
  lua_getfield(L, idx, "exclusionDates");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    herald_log(&c->src->log, HLOG_ERROR, "exclusionDates must be a list of strings");
    return HERALD_EINVAL;
  }
  size_t cap = 0;
  int r = 0;
  for (int i = 1;; i++) {
    lua_rawgeti(L, -1, i);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    if (lua_type(L, -1) != LUA_TSTRING) {
      herald_log(&c->src->log, HLOG_ERROR, "exclusionDates[%d] must be a string", i - 1);
      lua_pop(L, 1);
      r = HERALD_EINVAL;
      break;
    }
    size_t len;
    const char *v = lua_tolstring(L, -1, &len);
    if (len >= 7 && memcmp(v, "EXDATE:", 7) == 0) {
      const char *p = v + 7, *end = v + len;
      for (;;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        int32_t ymd;
        if (!parse_exdate(p, (size_t)(e - p), &ymd)) {
          herald_log(&c->src->log, HLOG_ERROR,
                     "exclusionDates[%d]: cannot parse \"%.*s\" as a date-time like "
                     "20060102T150405Z (the format is EXDATE:<date>[,<date>...])",
                     i - 1, (int)(e - p), p);
          r = HERALD_EINVAL;
          break;
        }
        if (c->nexdates == cap) {
          cap = cap ? cap * 2 : 8;
          c->exdates = realloc(c->exdates, cap * sizeof *c->exdates);
          HERALD_ASSERT(c->exdates);
        }
        c->exdates[c->nexdates++] = ymd;
        if (!comma) break;
        p = comma + 1;
      }
    } else {
      herald_log(&c->src->log, HLOG_WARN,
                 "exclusionDates[%d] ignored: it does not start with EXDATE: (as in Argo)", i - 1);
    }
    lua_pop(L, 1);
    if (r) break;
  }
  lua_pop(L, 1);
  return r;
}

static void calendar_free(calendar *c) {
  herald_cron_free(c->cron);
  herald_tz_free(c->tz);
  free(c->exdates);
  free(c->metadata_json);
  c->cron = NULL;
  c->tz = NULL;
  c->exdates = NULL;
  c->metadata_json = NULL;
}

static int calendar_init(herald_source *src, lua_State *L, int cfg_idx) {
  calendar *c = src->priv;
  c->src = src;
  if (cfg_idx < 0) cfg_idx = lua_gettop(L) + cfg_idx + 1;
  const char *schedule = herald_cfg_string(L, cfg_idx, "schedule", "");
  const char *interval = herald_cfg_string(L, cfg_idx, "interval", "");
  const char *zone = herald_cfg_string(L, cfg_idx, "timezone", "");
  char err[400];
  int r;

  if ((r = herald_tz_load(zone, &c->tz, err, sizeof err)) < 0) {
    herald_log(&src->log, HLOG_ERROR, "failed to load timezone \"%s\": %s", zone, err);
    return HERALD_EINVAL;
  }
  if (*schedule) {
    /* Descriptors (@daily, @every 1h) are accepted though Argo's parser rejects them. */
    r = herald_cron_parse(schedule, c->tz ? herald_tz_name(c->tz) : NULL, HERALD_CRON_DESCRIPTORS,
                          &c->cron, err, sizeof err);
    if (r < 0) {
      herald_log(&src->log, HLOG_ERROR, "failed to parse schedule \"%s\": %s", schedule, err);
      goto fail;
    }
    if (herald_cron_next(c->cron, herald_now_ns()) == 0) {
      herald_log(&src->log, HLOG_ERROR,
                 "schedule \"%s\" never fires (no matching time in the next five years)", schedule);
      goto fail;
    }
  } else if (*interval) {
    if (herald_parse_duration_msg(interval, &c->interval_ns, err, sizeof err) < 0) {
      herald_log(&src->log, HLOG_ERROR, "failed to parse interval \"%s\": %s", interval, err);
      goto fail;
    }
    if (c->interval_ns < NS_PER_MS) {
      herald_log(&src->log, HLOG_ERROR,
                 "interval \"%s\" must be at least 1ms (timers have millisecond resolution)",
                 interval);
      goto fail;
    }
  } else {
    herald_log(&src->log, HLOG_ERROR,
               "calendar event must contain either a schedule or an interval "
               "(e.g. schedule: \"*/5 * * * *\" or interval: \"10s\")");
    goto fail;
  }
  if ((r = read_exdates(c, L, cfg_idx)) < 0) goto fail;
  if ((r = read_metadata(c, L, cfg_idx)) < 0) goto fail;
  return 0;
fail:
  calendar_free(c);
  return HERALD_EINVAL;
}

/* ---- ticking ---- */

static int excluded(const calendar *c, int64_t t_ns) {
  if (!c->nexdates) return 0;
  herald_civil cv;
  herald_tz_civil(c->tz, t_ns, &cv);
  int32_t ymd = (int32_t)(cv.year * 10000 + cv.month * 100 + cv.day);
  for (size_t i = 0; i < c->nexdates; i++)
    if (c->exdates[i] == ymd) return 1;
  return 0;
}

static void maybe_done(calendar *c) {
  if (c->stopping && c->timer_closed && c->pending == 0 && c->stop_done) {
    herald_source_stop_cb done = c->stop_done;
    c->stop_done = NULL;
    calendar_free(c);
    done(c->src);
  }
}

static void on_published(void *data, int status) {
  calendar *c = data;
  c->pending--;
  if (status < 0)
    herald_log_limited(&c->src->log, HLOG_WARN, "calendar event not published: %s",
                       herald_strerror(status));
  maybe_done(c);
}

static void emit_tick(calendar *c, int64_t tick_ns) {
  char when[96];
  herald_time_format_go(tick_ns, c->tz, when, sizeof when);
  if (excluded(c, tick_ns)) {
    herald_log(&c->src->log, HLOG_DEBUG, "tick %s skipped: excluded date", when);
    return;
  }
  herald_buf b = HERALD_BUF_INIT;
  herald_buf_puts(&b, "{\"eventTime\":");
  herald_buf_json_string(&b, when, strlen(when));
  if (c->metadata_json) herald_buf_puts(&b, c->metadata_json);
  herald_buf_putc(&b, '}');
  int r = herald_source_emit(c->src, b.data, b.len, on_published, c);
  herald_buf_free(&b);
  if (r == 0) {
    c->pending++;
    herald_log(&c->src->log, HLOG_DEBUG, "dispatched calendar event %s", when);
  } else if (r == HERALD_EBUSFULL) {
    c->dropped++;
    herald_log_limited(&c->src->log, HLOG_WARN,
                       "calendar tick %s dropped: the bus is full (%llu dropped so far)", when,
                       (unsigned long long)c->dropped);
  } else {
    herald_log_limited(&c->src->log, HLOG_ERROR, "calendar tick %s not published: %s", when,
                       herald_strerror(r));
  }
}

static void on_timer(uv_timer_t *t);

/* Arms the timer so it fires no earlier than `due` on the loop's (monotonic) clock. */
static void arm_mono(calendar *c, uint64_t due_mono) {
  uv_loop_t *loop = c->timer.loop;
  uv_update_time(loop);
  uint64_t due_ms = (due_mono + NS_PER_MS - 1) / NS_PER_MS;
  uint64_t now_ms = uv_now(loop);
  uv_timer_start(&c->timer, on_timer, due_ms > now_ms ? due_ms - now_ms : 0, 0);
}

static void arm_wall(calendar *c) {
  int64_t left = c->due_wall - herald_now_ns();
  uint64_t ms = left <= 0 ? 0 : (uint64_t)((left + NS_PER_MS - 1) / NS_PER_MS);
  if (ms > CRON_MAX_SLEEP_MS) ms = CRON_MAX_SLEEP_MS;
  uv_update_time(c->timer.loop);
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void interval_tick(calendar *c) {
  uint64_t now = herald_mono_ns();
  uint64_t due = c->anchor_mono + (uint64_t)c->k * (uint64_t)c->interval_ns;
  if (now < due) { /* woke early */
    arm_mono(c, due);
    return;
  }
  /* Ticks whose time has fully passed while the loop was busy are skipped, not burst out. */
  int64_t behind = (int64_t)((now - due) / (uint64_t)c->interval_ns);
  if (behind > 0) {
    herald_log_limited(&c->src->log, HLOG_WARN,
                       "skipped %lld missed interval ticks (the event loop was blocked for %.3fs)",
                       (long long)behind, (double)(now - due) / 1e9);
    c->k += behind;
  }
  emit_tick(c, c->anchor_wall + c->k * c->interval_ns);
  c->k++;
  if (!c->stopping)
    arm_mono(c, c->anchor_mono + (uint64_t)c->k * (uint64_t)c->interval_ns);
}

static void cron_tick(calendar *c) {
  int64_t now = herald_now_ns();
  if (now < c->due_wall) { /* woke early, capped sleep, or the clock stepped back */
    arm_wall(c);
    return;
  }
  int64_t tick = c->due_wall;
  int64_t next = herald_cron_next(c->cron, tick);
  if (next != 0 && next <= now) {
    /* Missed ticks (loop blocked, clock stepped forward, machine suspended): fire the latest. */
    int64_t latest = herald_cron_prev(c->cron, now);
    if (latest > tick) {
      char a[96], b[96];
      herald_time_format_go(tick, c->tz, a, sizeof a);
      herald_time_format_go(latest, c->tz, b, sizeof b);
      herald_log_limited(&c->src->log, HLOG_WARN, "skipped missed schedule ticks from %s to before %s",
                         a, b);
      tick = latest;
    }
    next = herald_cron_next(c->cron, tick);
  }
  emit_tick(c, tick);
  if (next == 0) {
    herald_log(&c->src->log, HLOG_WARN, "schedule has no further activation; calendar stopped");
    return;
  }
  c->due_wall = next;
  if (!c->stopping) arm_wall(c);
}

static void on_timer(uv_timer_t *t) {
  calendar *c = t->data;
  if (c->stopping) return;
  if (c->cron) cron_tick(c);
  else interval_tick(c);
}

static int calendar_start(herald_source *src) {
  calendar *c = src->priv;
  int r = uv_timer_init(src->engine->loop, &c->timer);
  if (r < 0) return HERALD_EIO;
  c->timer.data = c;
  c->started = 1;
  int64_t now_wall = herald_now_ns();
  uint64_t now_mono = herald_mono_ns();
  char when[96];
  if (c->cron) {
    c->due_wall = herald_cron_next(c->cron, now_wall);
    herald_time_format_go(c->due_wall, c->tz, when, sizeof when);
    arm_wall(c);
  } else {
    /* Argo's first tick is Next(now) = now rounded down to the second + interval. */
    c->anchor_wall = now_wall - now_wall % NS_PER_S;
    c->anchor_mono = now_mono - (uint64_t)(now_wall - c->anchor_wall);
    c->k = (now_wall - c->anchor_wall) / c->interval_ns + 1;
    herald_time_format_go(c->anchor_wall + c->k * c->interval_ns, c->tz, when, sizeof when);
    arm_mono(c, c->anchor_mono + (uint64_t)c->k * (uint64_t)c->interval_ns);
  }
  herald_log(&src->log, HLOG_INFO, "calendar started; first event at %s", when);
  return 0;
}

static void on_closed(uv_handle_t *h) {
  calendar *c = h->data;
  c->timer_closed = 1;
  maybe_done(c);
}

static void calendar_stop(herald_source *src, herald_source_stop_cb done) {
  calendar *c = src->priv;
  if (c->stopping) return;
  c->stopping = 1;
  c->stop_done = done;
  if (!c->started) {
    c->timer_closed = 1;
    maybe_done(c);
    return;
  }
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_closed);
}

const herald_source_type herald_source_calendar = {
    .name = "calendar",
    .event_type = "calendar",
    .priv_size = sizeof(calendar),
    .init = calendar_init,
    .start = calendar_start,
    .stop = calendar_stop,
};
