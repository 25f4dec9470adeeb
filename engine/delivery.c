/*
 * delivery.c: how a trigger's actions are delivered. The engine owns this, not the executors
 * (Fluent Bit's FLB_OUTPUT_RETURN model): an executor only says done, retry or failed.
 *
 *   fire(action) -> job --[queue]--> rate limit (token bucket, no bursts) --> execute
 *        ^                                   |                                   |
 *        |      retry timer (backoff) <------+--- retry, attempts left <---------+
 *        |                                   |                                   |
 *   bus delivery held ...                    +--- exhausted -> dlqTrigger (same events)
 *   ... released at receipt (atLeastOnce: false) or after the outcome/dead-letter (true)
 *
 * Backpressure: a job keeps a hold on its bus delivery while it waits for a token or for a
 * free execution slot (max_inflight), so a rate-limited or slow trigger stops the sensor from
 * taking more from the bus instead of queueing without bound (Argo's at-most-once path spawns
 * goroutines without limit). With atLeastOnce the hold lasts until the action succeeded or was
 * dead-lettered; without it, until the action starts.
 *
 * Argo's semantics kept: retryStrategy {steps, duration, factor, jitter} with
 * k8s.io wait.Backoff's meaning (steps = attempts in all; each wait is duration*(1 + jitter*r),
 * then duration *= factor); action_failed_total counts every failed attempt,
 * action_retries_failed_total the actions whose retries ran out. Fixed (docs/compat.md):
 * retries and the dead letter apply whatever atLeastOnce says; an executor's "failed for good"
 * (e.g. an HTTP 4xx) is not retried.
 */
#include "common.h"
#include "lua_host.h"
#include "metrics.h"
#include "runtime.h"
#include "tap.h"
#include "spill.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct job job;

typedef struct trigger_rt {
  uv_timer_t timer;     /* first: the close callback frees the struct through it */
  herald_delivery_policy pol;
  double tokens;
  uint64_t refill_ns;   /* when tokens were last topped up */
  int timer_armed;      /* the timer wakes the queue when a token is due */
  job *head, *tail;     /* waiting for a slot or a token */
  uint32_t executing;
  herald_trigger *dlq;
  int dlq_builder_ref;
  int is_dlq;           /* another trigger's dlqTrigger (closed last at the drain's deadline) */
  int closing;
  int retiring;         /* a reload removed its sensor: no new actions, the rest finish */
  int abandoning;       /* 0; 1: give up unfinished actions; 2: hand them to the dlqTrigger */
  struct herald_metric *m_dead_lettered;
} trigger_rt;

struct job {
  herald_trigger *t;
  int action_ref;                 /* the action table (re-executed on retry) */
  uint32_t attempt;               /* attempts made */
  uint64_t first_ns;              /* when it was fired (for the log line) */
  struct herald_delivery_ctx *hold;
  uv_timer_t *retry_timer;
  job *next;
  job *all_next, *all_prev;       /* every live job of the engine (for close) */
};

static uint32_t live_jobs;
static job *all_jobs;

uint32_t herald_runtime_inflight(herald_engine *eng) {
  (void)eng;
  return live_jobs;
}

static void pump(herald_trigger *t);

/* ---- instances ---- */

herald_trigger *herald_trigger_new(herald_engine *eng, lua_State *L, const char *type,
                                   const char *sensor, const char *name, int tmpl_idx,
                                   const herald_delivery_policy *pol) {
  const herald_trigger_type *tt = herald_trigger_type_find(type);
  if (!tt) {
    herald_log(&eng->log, HLOG_ERROR, "sensor %s: trigger %s: unknown trigger type %s", sensor,
               name, type);
    return NULL;
  }
  herald_trigger *t = herald_xcalloc(1, sizeof *t);
  t->type = tt;
  t->engine = eng;
  t->sensor_name = herald_xstrdup(sensor);
  t->name = herald_xstrdup(name);
  char *logname = herald_xasprintf("sensor:%s/trigger:%s", sensor, name);
  t->log.name = logname;
  t->priv = tt->priv_size ? herald_xcalloc(1, tt->priv_size) : NULL;
  t->m_triggered = herald_metric_get("argo_events_action_triggered_total",
                                     "How many actions have been triggered successfully.",
                                     HERALD_COUNTER, "sensor_name", sensor, "trigger_name", name, NULL);
  t->m_failed = herald_metric_get("argo_events_action_failed_total",
                                  "How many actions failed.", HERALD_COUNTER, "sensor_name", sensor,
                                  "trigger_name", name, NULL);
  t->m_retries_failed = herald_metric_get("argo_events_action_retries_failed_total",
                                          "How many actions failed after the retries have been exhausted.",
                                          HERALD_COUNTER, "sensor_name", sensor, "trigger_name",
                                          name, NULL);
  t->m_duration = herald_metric_get("argo_events_action_duration_milliseconds",
                                    "Summary of durations of trigger actions.", HERALD_SUMMARY,
                                    "sensor_name", sensor, "trigger_name", name, NULL);
  trigger_rt *rt = herald_xcalloc(1, sizeof *rt);
  rt->pol = pol ? *pol : (herald_delivery_policy){0};
  if (rt->pol.steps == 0) rt->pol.steps = 1;
  if (rt->pol.max_inflight == 0) rt->pol.max_inflight = 256;
  if (rt->pol.factor <= 0) rt->pol.factor = 1;
  rt->tokens = 1;
  rt->refill_ns = herald_mono_ns();
  rt->dlq_builder_ref = LUA_NOREF;
  rt->m_dead_lettered = herald_metric_get("herald_action_dead_lettered_total",
                                          "Actions handed to the dlqTrigger after their retries ran out.",
                                          HERALD_COUNTER, "sensor_name", sensor, "trigger_name", name, NULL);
  uv_timer_init(eng->loop, &rt->timer);
  rt->timer.data = t;
  t->data = rt;
  if (tt->init && tt->init(t, L, tmpl_idx) != 0) {
    uv_close((uv_handle_t *)&rt->timer, (uv_close_cb)free);
    t->data = NULL;
    free(t->priv), free(t->sensor_name), free(t->name), free(logname), free(t);
    return NULL;
  }
  herald__engine_add_trigger(eng, t);
  return t;
}

void herald_trigger_set_dlq(herald_trigger *t, herald_trigger *dlq, lua_State *L, int builder_idx) {
  trigger_rt *rt = t->data;
  rt->dlq = dlq;
  ((trigger_rt *)dlq->data)->is_dlq = 1;
  lua_pushvalue(L, builder_idx);
  rt->dlq_builder_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ---- jobs ---- */

static void job_free(job *j) {
  herald_engine *eng = j->t->engine;
  if (j->action_ref != LUA_NOREF) luaL_unref(eng->L, LUA_REGISTRYINDEX, j->action_ref);
  herald__delivery_release(j->hold);
  if (j->all_prev) j->all_prev->all_next = j->all_next;
  else all_jobs = j->all_next;
  if (j->all_next) j->all_next->all_prev = j->all_prev;
  live_jobs--;
  free(j);
}

static void enqueue(trigger_rt *rt, job *j, int front) {
  j->next = NULL;
  if (front) {
    j->next = rt->head;
    rt->head = j;
    if (!rt->tail) rt->tail = j;
  } else {
    if (rt->tail) rt->tail->next = j;
    else rt->head = j;
    rt->tail = j;
  }
}

int herald_trigger_fire(herald_engine *eng, herald_trigger *t, lua_State *L, int action_idx) {
  trigger_rt *rt = t->data;
  if (rt->closing || rt->retiring) return HERALD_ECLOSED;
  job *j = calloc(1, sizeof *j);
  if (!j) return HERALD_ENOMEM;
  j->t = t;
  j->first_ns = herald_mono_ns();
  lua_pushvalue(L, action_idx);
  j->action_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  j->hold = herald__delivery_hold(eng);
  j->all_next = all_jobs;
  if (all_jobs) all_jobs->all_prev = j;
  all_jobs = j;
  live_jobs++;
  enqueue(rt, j, 0);
  pump(t);
  return 0;
}

/* Tops the bucket up (capacity 1: actions are spaced, never bursted) and takes a token if one
 * is there; else returns the ms until the next one. */
static int take_token(trigger_rt *rt, uint64_t *wait_ms) {
  if (rt->pol.rate <= 0) return 1;
  uint64_t now = herald_mono_ns();
  rt->tokens += (double)(now - rt->refill_ns) / 1e9 * rt->pol.rate;
  rt->refill_ns = now;
  if (rt->tokens > 1) rt->tokens = 1;
  if (rt->tokens >= 1 - 1e-9) {
    rt->tokens -= 1;
    return 1;
  }
  *wait_ms = (uint64_t)ceil((1 - rt->tokens) / rt->pol.rate * 1000);
  if (*wait_ms == 0) *wait_ms = 1;
  return 0;
}

static void on_token(uv_timer_t *timer) {
  herald_trigger *t = timer->data;
  trigger_rt *rt = t->data;
  rt->timer_armed = 0;
  pump(t);
}

static void start(herald_trigger *t, job *j);

/* Starts queued jobs while there is a slot and a token. */
static void pump(herald_trigger *t) {
  trigger_rt *rt = t->data;
  while (rt->head && rt->executing < rt->pol.max_inflight && !rt->closing) {
    uint64_t wait_ms = 0;
    if (!take_token(rt, &wait_ms)) {
      if (!rt->timer_armed) {
        rt->timer_armed = 1;
        uv_timer_start(&rt->timer, on_token, wait_ms, 0);
      }
      return;
    }
    job *j = rt->head;
    rt->head = j->next;
    if (!rt->head) rt->tail = NULL;
    start(t, j);
  }
}

static void finish(herald_trigger_req *req, herald_trigger_result res, const char *reason);

/* `herald tap`: how one attempt of an action ended, and what happens next. */
static void tap_outcome(herald_trigger *t, job *j, herald_trigger_result res, const char *why) {
  trigger_rt *rt = t->data;
  int again = res == HERALD_TRIGGER_RETRY && j->attempt < rt->pol.steps && !rt->closing;
  const char *status = res == HERALD_TRIGGER_DONE ? "done" : again ? "retrying" : "failed";
  herald_buf f = HERALD_BUF_INIT;
  herald_buf_puts(&f, "\"sensorName\":");
  herald_buf_json_string(&f, t->sensor_name, strlen(t->sensor_name));
  herald_buf_puts(&f, ",\"triggerName\":");
  herald_buf_json_string(&f, t->name, strlen(t->name));
  herald_buf_printf(&f, ",\"status\":\"%s\",\"attempt\":%u,\"attempts\":%u,\"durationMs\":%.3f", status,
                    j->attempt, rt->pol.steps, (double)(herald_mono_ns() - j->first_ns) / 1e6);
  if (res != HERALD_TRIGGER_DONE) {
    herald_buf_puts(&f, ",\"reason\":");
    herald_buf_json_string(&f, why, strlen(why));
    if (!again) herald_buf_printf(&f, ",\"deadLettered\":%s", rt->dlq && !rt->closing ? "true" : "false");
  }
  herald_tap_record(t->engine, "outcome", NULL, t->sensor_name, t->name, NULL, herald_buf_cstr(&f));
  herald_buf_free(&f);
}

static void start(herald_trigger *t, job *j) {
  trigger_rt *rt = t->data;
  herald_engine *eng = t->engine;
  lua_State *L = eng->L;
  if (!rt->pol.at_least_once && j->hold) { /* at most once: the bus delivery is done at receipt */
    herald__delivery_release(j->hold);
    j->hold = NULL;
  }
  herald_trigger_req *req = calloc(1, sizeof *req + t->type->req_size);
  if (HERALD_FAILS(req != NULL)) {
    enqueue(rt, j, 1);
    return;
  }
  req->trigger = t;
  req->done = finish;
  req->start_ns = herald_mono_ns();
  req->priv = t->type->req_size ? (void *)(req + 1) : NULL;
  req->data = j;
  j->attempt++;
  rt->executing++;
  t->inflight++;
  /* stack: -> action -> */
  lua_rawgeti(L, LUA_REGISTRYINDEX, j->action_ref);
  int r = t->type->execute(t, req, L, lua_gettop(L));
  lua_pop(L, 1);
  if (r == 1) finish(req, HERALD_TRIGGER_DONE, NULL);
  else if (r < 0) finish(req, HERALD_TRIGGER_FAILED, herald_strerror(r));
}

static void on_retry(uv_timer_t *timer) {
  job *j = timer->data;
  uv_close((uv_handle_t *)timer, (uv_close_cb)free);
  j->retry_timer = NULL;
  trigger_rt *rt = j->t->data;
  if (rt->closing) {
    job_free(j);
    return;
  }
  enqueue(rt, j, 1); /* a retry goes before newer work, keeping this trigger's order */
  pump(j->t);
}

/* k8s.io wait.Backoff: the n-th wait is duration * factor^(n-1), plus up to jitter of it. */
static uint64_t backoff_ms(const herald_delivery_policy *p, uint32_t attempt) {
  double d = (double)p->duration_ms * pow(p->factor, (double)(attempt - 1));
  if (p->jitter > 0) d += d * p->jitter * ((double)rand() / RAND_MAX);
  if (d > 3600e3) d = 3600e3;
  return (uint64_t)d;
}

/* Hands the job's events to the dead-letter trigger; the job's hold passes to it. Returns 0,
 * or a negative error when the dead-letter action could not be queued. */
static int dead_letter(herald_trigger *t, job *j) {
  trigger_rt *rt = t->data;
  herald_engine *eng = t->engine;
  lua_State *L = eng->L;
  herald_metric_inc(rt->m_dead_lettered);
  /* stack: -> builder events -> action [err] */
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->dlq_builder_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, j->action_ref);
  lua_getfield(L, -1, "events");
  lua_remove(L, -2);
  if (herald_lua_pcall(L, 1, 2, &t->log, "dlqTrigger") != 0) return HERALD_ELUA;
  if (!lua_istable(L, -2)) {
    herald_log(&t->log, HLOG_ERROR, "dlqTrigger %s: cannot build the action: %s", rt->dlq->name,
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_pop(L, 2);
    return HERALD_ELUA;
  }
  struct herald_delivery_ctx *prev = eng->current;
  eng->current = j->hold; /* the dead letter now holds the delivery */
  int r = herald_trigger_fire(eng, rt->dlq, L, lua_gettop(L) - 1);
  eng->current = prev;
  if (r < 0) herald_log(&t->log, HLOG_ERROR, "dlqTrigger %s: %s", rt->dlq->name, herald_strerror(r));
  lua_pop(L, 2);
  return r;
}

/* The drain's deadline: j will not finish here. Hands it to the dlqTrigger when allowed, else
 * leaves its event on the bus (nak) or, its delivery already acked, spills its events. Frees j. */
static void abandon(herald_trigger *t, job *j) {
  trigger_rt *rt = t->data;
  herald_engine *eng = t->engine;
  if (rt->abandoning == 2 && rt->dlq && dead_letter(t, j) == 0) {
    eng->drain_dead_lettered++;
    job_free(j);
    return;
  }
  if (j->hold) {
    herald__delivery_abandon(j->hold);
    j->hold = NULL;
  } else {
    lua_rawgeti(eng->L, LUA_REGISTRYINDEX, j->action_ref);
    eng->drain_spilled_actions += herald__spill_action(eng, eng->L, lua_gettop(eng->L));
    lua_pop(eng->L, 1);
  }
  job_free(j);
}

static void finish(herald_trigger_req *req, herald_trigger_result res, const char *reason) {
  herald_trigger *t = req->trigger;
  trigger_rt *rt = t->data;
  job *j = req->data;
  herald_metric_observe(t->m_duration, (double)(herald_mono_ns() - req->start_ns) / 1e6);
  /* reason may point into the executor's request memory: keep a copy before freeing it */
  char why[512];
  snprintf(why, sizeof why, "%s", reason ? reason : "unknown");
  free(req);
  rt->executing--;
  t->inflight--;
  if (res != HERALD_TRIGGER_DONE && rt->abandoning) { /* ended by the executor's close */
    abandon(t, j);
    return;
  }
  if (herald_tap_on(t->engine) && herald_tap_wants(t->engine, NULL, 0)) tap_outcome(t, j, res, why);
  if (res == HERALD_TRIGGER_DONE) {
    herald_metric_inc(t->m_triggered);
    /* each firing at info with its outcome, as Argo logs them (docs/logging.md) */
    if (herald_log_enabled(HLOG_INFO)) {
      herald_buf f = HERALD_BUF_INIT;
      herald_buf_puts(&f, "\"sensorName\":");
      herald_buf_json_string(&f, t->sensor_name, strlen(t->sensor_name));
      herald_buf_puts(&f, ",\"triggerName\":");
      herald_buf_json_string(&f, t->name, strlen(t->name));
      herald_buf_printf(&f, ",\"attempts\":%u,\"durationMs\":%.3f", j->attempt,
                        (double)(herald_mono_ns() - j->first_ns) / 1e6);
      herald_logf(&t->log, HLOG_INFO, herald_buf_cstr(&f), "Successfully processed trigger '%s'", t->name);
      herald_buf_free(&f);
    }
    job_free(j);
  } else {
    herald_metric_inc(t->m_failed);
    int again = res == HERALD_TRIGGER_RETRY && j->attempt < rt->pol.steps && !rt->closing;
    if (again) {
      uint64_t wait = backoff_ms(&rt->pol, j->attempt);
      herald_log_limited(&t->log, HLOG_WARN, "attempt %u of %u failed (%s); retrying in %llu ms",
                         j->attempt, rt->pol.steps, why,
                         (unsigned long long)wait);
      j->retry_timer = malloc(sizeof *j->retry_timer);
      if (j->retry_timer) {
        uv_timer_init(t->engine->loop, j->retry_timer);
        j->retry_timer->data = j;
        uv_timer_start(j->retry_timer, on_retry, wait, 0);
      } else {
        enqueue(rt, j, 1);
      }
    } else {
      herald_metric_inc(t->m_retries_failed);
      herald_log_limited(&t->log, HLOG_ERROR, "action failed%s after %u attempt(s): %s",
                         res == HERALD_TRIGGER_FAILED ? " for good" : "", j->attempt, why);
      if (rt->dlq && !rt->closing) dead_letter(t, j);
      job_free(j);
    }
  }
  pump(t);
}

void herald__trigger_delivery_abandon(herald_trigger *t, int to_dlq) {
  trigger_rt *rt = t->data;
  if (!rt || rt->closing) return;
  rt->closing = 1;
  rt->abandoning = to_dlq ? 2 : 1;
  uint32_t n = 0;
  while (rt->head) {
    job *j = rt->head;
    rt->head = j->next;
    if (!rt->head) rt->tail = NULL;
    abandon(t, j);
    n++;
  }
  rt->tail = NULL;
  for (job *j = all_jobs, *next; j; j = next) {
    next = j->all_next;
    if (j->t == t && j->retry_timer) {
      uv_timer_stop(j->retry_timer);
      uv_close((uv_handle_t *)j->retry_timer, (uv_close_cb)free);
      j->retry_timer = NULL;
      abandon(t, j); /* frees j only; a dead-letter job goes to the list's head */
      n++;
    }
  }
  if (n || rt->executing)
    herald_log(&t->log, HLOG_WARN, "engine stopping: %u action(s) not started and %u executing are %s",
               n, rt->executing, rt->abandoning == 2 && rt->dlq ? "handed to the dlqTrigger" : "given up (kept on the bus or spilled)");
}

void herald__trigger_retire(herald_trigger *t) {
  trigger_rt *rt = t->data;
  if (rt) rt->retiring = 1;
}

int herald__trigger_retiring(herald_trigger *t) {
  trigger_rt *rt = t->data;
  return rt && rt->retiring;
}

int herald__trigger_idle(herald_trigger *t) {
  trigger_rt *rt = t->data;
  if (!rt) return 1;
  if (rt->head || rt->executing) return 0;
  for (job *j = all_jobs; j; j = j->all_next) /* waiting to retry, or a dead letter on its way */
    if (j->t == t) return 0;
  return 1;
}

int herald__trigger_is_dlq(herald_trigger *t) {
  trigger_rt *rt = t->data;
  return rt && rt->is_dlq;
}

void herald__trigger_delivery_free(herald_trigger *t) {
  trigger_rt *rt = t->data;
  if (!rt) return;
  if (rt->dlq_builder_ref != LUA_NOREF) luaL_unref(t->engine->L, LUA_REGISTRYINDEX, rt->dlq_builder_ref);
  rt->dlq_builder_ref = LUA_NOREF;
  uv_timer_stop(&rt->timer);
  uv_close((uv_handle_t *)&rt->timer, (uv_close_cb)free);
  t->data = NULL;
}
