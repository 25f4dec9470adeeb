/*
 * lua_time.c: time for the sensor runtime: zones, RFC 3339 parsing, and cron timers.
 *
 *   core.tz_open(name) -> tz | nil, err        tz:clock(t) -> hour, minute, second, offset
 *   core.parse_time(rfc3339) -> seconds | nil   (fractional seconds since the epoch)
 *   core.now() -> seconds since the epoch; core.cron_check(expr, tz), core.duration_check(s),
 *   core.tz_check(name): the checks the loader makes (also what the fuzz targets reach)
 *   core.cron_timer(expr, tz, fn) -> true | nil, err
 *       calls fn() at every time the 5-field cron expression matches in zone tz (absolute due
 *       times, re-armed after each run, so no drift); used by conditionsReset. Timers do not keep
 *       the loop alive and are closed at shutdown (herald__cron_timers_close).
 */
#include "common.h"
#include "cron.h"
#include "engine.h"
#include "lua_host.h"

#include <lauxlib.h>
#include <string.h>
#include <time.h>

#define TZ_MT "herald.tz"

typedef struct tz_ud {
  herald_tz *tz;
} tz_ud;

static int l_tz_open(lua_State *L) {
  const char *name = luaL_optstring(L, 1, "UTC");
  char err[256];
  herald_tz *tz = NULL;
  if (herald_tz_load(name, &tz, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  tz_ud *u = lua_newuserdata(L, sizeof *u);
  u->tz = tz;
  luaL_getmetatable(L, TZ_MT);
  lua_setmetatable(L, -2);
  return 1;
}

static int l_tz_clock(lua_State *L) {
  tz_ud *u = luaL_checkudata(L, 1, TZ_MT);
  double t = luaL_checknumber(L, 2);
  herald_civil c;
  herald_tz_civil(u->tz, (int64_t)(t * 1e9), &c);
  lua_pushinteger(L, c.hour);
  lua_pushinteger(L, c.minute);
  lua_pushinteger(L, c.second);
  lua_pushinteger(L, c.offset);
  return 4;
}

static int l_tz_gc(lua_State *L) {
  tz_ud *u = luaL_checkudata(L, 1, TZ_MT);
  if (u->tz) herald_tz_free(u->tz);
  u->tz = NULL;
  return 0;
}

/* RFC 3339: 2006-01-02T15:04:05[.fraction](Z|±hh:mm) */
static int l_parse_time(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int y, mo, d, h, mi, se;
  if (n < 20 || !herald_digits(s, 4, &y) || s[4] != '-' || !herald_digits(s + 5, 2, &mo) ||
      s[7] != '-' || !herald_digits(s + 8, 2, &d) ||
      (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || !herald_digits(s + 11, 2, &h) ||
      s[13] != ':' || !herald_digits(s + 14, 2, &mi) || s[16] != ':' ||
      !herald_digits(s + 17, 2, &se))
    return 0;
  size_t i = 19;
  double frac = 0, scale = 0.1;
  if (i < n && s[i] == '.') {
    for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, scale /= 10) frac += (s[i] - '0') * scale;
  }
  int offset = 0;
  if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
    i++;
  } else if (i + 6 <= n && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
    int oh, om;
    if (!herald_digits(s + i + 1, 2, &oh) || !herald_digits(s + i + 4, 2, &om)) return 0;
    offset = (oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
    i += 6;
  } else {
    return 0;
  }
  if (i != n) return 0;
  struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                  .tm_min = mi, .tm_sec = se};
  lua_pushnumber(L, (double)(timegm(&tm) - offset) + frac);
  return 1;
}

/* ---- cron timers ---- */

typedef struct cron_timer {
  uv_timer_t timer;
  herald_cron *cron;
  lua_State *L;
  int fn_ref;
  int64_t due_ns;
  struct cron_timer *next;
} cron_timer;

static cron_timer *timers;
static const herald_logger cron_log = {.name = "conditionsReset"};

static void arm(cron_timer *ct);

static void on_cron(uv_timer_t *t) {
  cron_timer *ct = t->data;
  if (herald_now_ns() + 1000000 < ct->due_ns) { /* woke early (wall clock moved): re-arm */
    arm(ct);
    return;
  }
  lua_rawgeti(ct->L, LUA_REGISTRYINDEX, ct->fn_ref);
  herald_lua_pcall(ct->L, 0, 0, &cron_log, "conditionsReset");
  arm(ct);
}

static void arm(cron_timer *ct) {
  ct->due_ns = herald_cron_next(ct->cron, herald_now_ns());
  if (ct->due_ns <= 0) return; /* never fires again */
  int64_t wait_ms = (ct->due_ns - herald_now_ns()) / 1000000;
  if (wait_ms < 0) wait_ms = 0;
  if (wait_ms > 60000) wait_ms = 60000; /* re-check at least every minute: wall clocks move */
  uv_timer_start(&ct->timer, on_cron, (uint64_t)wait_ms, 0);
}

static int l_cron_timer(lua_State *L) {
  const char *expr = luaL_checkstring(L, 1);
  const char *tz = luaL_optstring(L, 2, NULL);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  herald_engine *eng = herald_engine_from_lua(L);
  char err[256];
  herald_cron *c = NULL;
  if (herald_cron_parse(expr, tz && *tz ? tz : NULL, HERALD_CRON_DESCRIPTORS, &c, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  cron_timer *ct = herald_xcalloc(1, sizeof *ct);
  ct->cron = c;
  ct->L = L;
  lua_pushvalue(L, 3);
  ct->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  uv_timer_init(eng->loop, &ct->timer);
  ct->timer.data = ct;
  uv_unref((uv_handle_t *)&ct->timer);
  ct->next = timers;
  timers = ct;
  arm(ct);
  lua_pushboolean(L, 1);
  return 1;
}

static void cron_closed(uv_handle_t *h) {
  cron_timer *ct = h->data;
  herald_cron_free(ct->cron);
  free(ct);
}

void herald__cron_timers_close(void) {
  while (timers) {
    cron_timer *ct = timers;
    timers = ct->next;
    luaL_unref(ct->L, LUA_REGISTRYINDEX, ct->fn_ref);
    uv_close((uv_handle_t *)&ct->timer, cron_closed);
  }
}

/* core.now() -> seconds since the epoch (float, ns precision where representable) */
static int l_now(lua_State *L) {
  lua_pushnumber(L, (double)herald_now_ns() / 1e9);
  return 1;
}

/* core.cron_check(expr, tz) -> true | nil, err: parses a calendar schedule as the source will. */
static int l_cron_check(lua_State *L) {
  const char *expr = luaL_checkstring(L, 1);
  const char *tz = luaL_optstring(L, 2, NULL);
  char err[256];
  herald_cron *c = NULL;
  if (herald_cron_parse(expr, tz, HERALD_CRON_DESCRIPTORS, &c, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  herald_cron_free(c);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.duration_check(s) -> nanoseconds | nil, err (Go's time.ParseDuration) */
static int l_duration_check(lua_State *L) {
  int64_t ns;
  char err[256];
  if (herald_parse_duration_msg(luaL_checkstring(L, 1), &ns, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushnumber(L, (double)ns);
  return 1;
}

/* core.tz_check(name) -> true | nil, err (an IANA zone from the system tz database) */
static int l_tz_check(lua_State *L) {
  herald_tz *tz = NULL;
  char err[256];
  if (herald_tz_load(luaL_checkstring(L, 1), &tz, err, sizeof err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  herald_tz_free(tz);
  lua_pushboolean(L, 1);
  return 1;
}

void herald__lua_open_time(lua_State *L) {
  /* stack: core -> core */
  if (luaL_newmetatable(L, TZ_MT)) {
    lua_pushcfunction(L, l_tz_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, l_tz_clock);
    lua_setfield(L, -2, "clock");
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_tz_open);
  lua_setfield(L, -2, "tz_open");
  lua_pushcfunction(L, l_parse_time);
  lua_setfield(L, -2, "parse_time");
  lua_pushcfunction(L, l_cron_timer);
  lua_setfield(L, -2, "cron_timer");
  static const luaL_Reg checks[] = {{"now", l_now},
                                    {"cron_check", l_cron_check},
                                    {"duration_check", l_duration_check},
                                    {"tz_check", l_tz_check},
                                    {NULL, NULL}};
  for (const luaL_Reg *r = checks; r->name; r++) {
    lua_pushcfunction(L, r->func);
    lua_setfield(L, -2, r->name);
  }
}
