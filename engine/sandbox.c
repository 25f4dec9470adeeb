/*
 * sandbox.c: where user-written Lua runs (script filters, script transforms, Lua triggers).
 *
 * One sandbox state per sensor, created only for sensors that have scripts (lua_host.h says
 * why). Recipe: reliability-and-security.md section 4.4. Every call is bounded:
 *   - memory: the state's allocator counts bytes and refuses past the cap (default 32 MiB),
 *     and any single block over 8 MiB, which Lua turns into a "not enough memory" error;
 *     string.rep refuses before allocating;
 *   - CPU: the JIT is off in this state, so a count hook runs every 1000 instructions and
 *     stops a call past its instruction budget or its wall-clock stop (a hook cannot
 *     interrupt JIT-compiled loops on LuaJIT 2.1); the sandbox's pcall re-raises once the
 *     budget is spent, so a script cannot swallow the stop;
 *   - time: the budget (default 200 ms) is CPU time of the calling thread, so a busy machine
 *     does not fail scripts that would pass on an idle one, and a call also stops at twice the
 *     budget in wall time. A watchdog thread (one per process) enforces both: it arms a
 *     count-1 hook when the budget is spent, and the very next instruction stops the script,
 *     where a thousand instructions that each copy or compare megabytes could otherwise run
 *     long between two hooks. C code a hook cannot reach is either bounded by the memory cap
 *     (one string operation) or metered: pattern matching is our own (sandbox_strlib.c) and
 *     charges its steps to the same budget, and table.sort / move / foreach run as
 *     interpreted Lua;
 *   - C stack: the C functions that call back into Lua (pcall, gsub with a function or table,
 *     tostring and string.format through __tostring) nest at most MAX_DEPTH deep;
 *   - surface: scripts see a fresh environment built from an allow-list, through read-only
 *     proxies (which the table library also refuses to write); io, os (but time/date/clock),
 *     ffi, jit, debug, package/require, load*, dofile, string.dump, collectgarbage, raw*,
 *     getmetatable, get/setfenv, coroutine and newproxy are absent, and naming one raises
 *     "<name> is not available in Herald's Lua sandbox". setmetatable is there (Argo's way to
 *     return an empty array is `setmetatable({}, {__is_array = true})`, which the JSON
 *     encoder honours); the proxies' metatables are locked, and no string or library
 *     metatable can be reached without getmetatable;
 *   - text only: luaL_loadbufferx(..., "t") refuses bytecode; sources are capped at 64 KiB.
 * The event reaches the script as the global `event` (its data, decoded in this state).
 *
 *   core.sandbox_new{memory=, instructions=, timeout_ms=} -> sb
 *   sb:compile(source, chunkname) -> id | nil, err
 *   sb:filter(id, data_json) -> true, result_is_true | nil, err
 *   sb:transform(id, data_json [, global]) -> json_of_returned_table | nil, err
 *       (global: the name the decoded JSON gets, "event" by default; "events" for Lua triggers)
 *   sb:memory() -> bytes in use
 */
#include "common.h"
#include "log.h"
#include "lua_host.h"
#include "plugin.h"
#include "buf.h"
#include "sandbox_strlib.h"

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include <lua5.1/lua-cjson.h>

#define SANDBOX_MT "herald.sandbox"
#define MAX_SOURCE (64 * 1024)
#define HOOK_EVERY 1000
#define MAX_DEPTH 64
/* The largest single allocation (a string, a table's array): one operation on a value this
 * big (a copy, a compare, a scan) is what the budget cannot interrupt, and on a VM with costly
 * page faults building 16 MB once takes ~100 ms of CPU; 8 MiB keeps that under ~25 ms. Event
 * data is far smaller (a webhook accepts 1 MiB by default). */
#define MAX_BLOCK ((size_t)8 << 20)
/* What one allocated block costs the full collection that follows a failed call with a big
 * heap (measured here: 90 ms for 262k blocks, ~340 ns each, more in a fresh process). The
 * watchdog counts the blocks in the state as time spent, so a script that piles up objects
 * stops early enough that script + collection stay within the budget. */
#define GC_NS_PER_BLOCK 450

typedef struct sandbox sandbox;
struct sandbox {
  lua_State *L;
  size_t mem_used, mem_limit;
  uint64_t instr_budget, instr_used;
  uint64_t timeout_ns;  /* the CPU budget of one call */
  uint64_t deadline_ns; /* wall clock: 2x the budget with the watchdog, 1x without */
  clockid_t cpu_clock;  /* the calling thread's CPU clock, read by the watchdog */
  uint64_t blocks;      /* allocated now: what a full collection walks (read racily by the watchdog) */
  uint64_t cpu_start_ns, check_ns;
  int expired;
  int nscripts;
  herald_meter meter; /* the string functions' view of the budget */
  lua_State *host;    /* the caller's state during a run (for print) */
  size_t printed;     /* bytes printed to the sink in this call (bounded: PRINT_MAX) */
  int print_ref;      /* in host's registry: a function print lines go to, or LUA_NOREF */
  /* the watchdog's part, under wd.mu; fired is also read without it */
  atomic_int fired;
  int armed;
  sandbox *wd_prev, *wd_next;
};

static const herald_logger sandbox_log = {.name = "sandbox"};

#define PRINT_MAX 16384 /* print() bytes shown per call (herald test, the REPL) */

static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sandbox *sb = ud;
  if (nsize == 0) {
    if (ptr) sb->blocks--;
    free(ptr);
    sb->mem_used -= osize;
    return NULL;
  }
  if (nsize > osize && (nsize > MAX_BLOCK || sb->mem_used + (nsize - osize) > sb->mem_limit)) return NULL;
  if (!ptr) sb->blocks++;
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  sb->mem_used = sb->mem_used - osize + nsize;
  return p;
}

static sandbox *sb_of(lua_State *L) {
  void *ud;
  lua_getallocf(L, &ud);
  return ud;
}

static int sb_over(sandbox *sb) {
  return sb->expired || atomic_load_explicit(&sb->fired, memory_order_relaxed) ||
         sb->instr_used > sb->instr_budget || herald_mono_ns() > sb->deadline_ns;
}

static int sb_stop(lua_State *L, sandbox *sb) {
  sb->expired = 1;
  return luaL_error(L, "script exceeded its CPU budget (%d ms or %f instructions)",
                    (int)(sb->timeout_ns / 1000000), (lua_Number)sb->instr_budget);
}

static void sb_hook(lua_State *L, lua_Debug *ar) {
  sandbox *sb = sb_of(L);
  sb->instr_used += HOOK_EVERY;
  if (sb_over(sb)) sb_stop(L, sb);
}

/* The meter the string functions charge: steps count as instructions. */
static void meter_charge(lua_State *L, herald_meter *m, uint64_t steps) {
  sandbox *sb = (sandbox *)((char *)m - offsetof(sandbox, meter));
  sb->instr_used += steps;
  if (sb_over(sb)) sb_stop(L, sb);
}

static size_t meter_mem_left(herald_meter *m) {
  sandbox *sb = (sandbox *)((char *)m - offsetof(sandbox, meter));
  size_t left = sb->mem_used < sb->mem_limit ? sb->mem_limit - sb->mem_used : 0;
  return left < MAX_BLOCK ? left : MAX_BLOCK;
}

/*
 * The watchdog: one thread for the process, sleeping until the next moment a running call
 * could have spent its CPU budget. Then it reads the calling thread's CPU clock: a call that
 * has used its budget (or reached 2x the budget in wall time, on a machine so busy that it
 * barely ran) is marked fired and gets a count-1 hook, the way luajit.c's Ctrl-C handler
 * interrupts a running chunk: the next instruction the interpreter dispatches runs sb_hook,
 * which stops the script. A call that was descheduled meanwhile is looked at again when its
 * remaining budget could be spent. Arming and disarming take the mutex; the thread is woken
 * only when a call's first check is earlier than its alarm, so a steady stream of short calls
 * costs one lock round and one CPU-clock read per call, and no wake-ups.
 */
static uint64_t cpu_now(clockid_t c) {
  struct timespec ts;
  if (clock_gettime(c, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct {
  pthread_once_t once;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  sandbox *armed;  /* doubly linked */
  uint64_t wake_ns; /* when the thread wakes next; UINT64_MAX while idle */
  int ok;
} wd = {.once = PTHREAD_ONCE_INIT, .mu = PTHREAD_MUTEX_INITIALIZER, .wake_ns = UINT64_MAX};

static void *wd_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&wd.mu);
  for (;;) {
    uint64_t now = herald_mono_ns(), next = UINT64_MAX;
    for (sandbox *sb = wd.armed; sb; sb = sb->wd_next) {
      if (atomic_load(&sb->fired)) continue;
      if (sb->check_ns <= now) {
        uint64_t used = cpu_now(sb->cpu_clock) - sb->cpu_start_ns + sb->blocks * GC_NS_PER_BLOCK;
        if (used >= sb->timeout_ns || now >= sb->deadline_ns) {
          atomic_store(&sb->fired, 1);
          lua_sethook(sb->L, sb_hook, LUA_MASKCOUNT, 1);
          continue;
        }
        uint64_t left = sb->timeout_ns - used;
        sb->check_ns = now + (left > 500000 ? left : 500000);
        if (sb->check_ns > sb->deadline_ns) sb->check_ns = sb->deadline_ns;
      }
      if (sb->check_ns < next) next = sb->check_ns;
    }
    wd.wake_ns = next;
    if (next == UINT64_MAX) {
      pthread_cond_wait(&wd.cv, &wd.mu);
    } else {
      struct timespec ts = {.tv_sec = (time_t)(next / 1000000000u), .tv_nsec = (long)(next % 1000000000u)};
      pthread_cond_timedwait(&wd.cv, &wd.mu, &ts);
    }
  }
  return NULL;
}

static void wd_start(void) {
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* herald_mono_ns's clock */
  pthread_cond_init(&wd.cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_t t;
  pthread_attr_t ta;
  pthread_attr_init(&ta);
  pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&ta, 64 * 1024);
  wd.ok = pthread_create(&t, &ta, wd_main, NULL) == 0;
  pthread_attr_destroy(&ta);
  if (!wd.ok) herald_log(&sandbox_log, HLOG_WARN, "no watchdog thread: scripts are bounded by the count hook only");
}

/* Starts the call's clocks: with the watchdog, a CPU budget and a wall-clock stop at twice
 * it; without, a wall-clock stop at the budget, checked by the hook. */
static void wd_arm(sandbox *sb) {
  pthread_once(&wd.once, wd_start);
  atomic_store(&sb->fired, 0);
  uint64_t now = herald_mono_ns();
  if (!wd.ok || pthread_getcpuclockid(pthread_self(), &sb->cpu_clock) != 0) {
    sb->deadline_ns = now + sb->timeout_ns;
    return;
  }
  sb->cpu_start_ns = cpu_now(sb->cpu_clock);
  sb->deadline_ns = now + 2 * sb->timeout_ns;
  sb->check_ns = now + sb->timeout_ns;
  pthread_mutex_lock(&wd.mu);
  sb->wd_prev = NULL;
  sb->wd_next = wd.armed;
  if (wd.armed) wd.armed->wd_prev = sb;
  wd.armed = sb;
  sb->armed = 1;
  if (sb->check_ns < wd.wake_ns) {
    wd.wake_ns = sb->check_ns;
    pthread_cond_signal(&wd.cv);
  }
  pthread_mutex_unlock(&wd.mu);
}

/* After disarming, the watchdog no longer touches sb (or its hook). */
static void wd_disarm(sandbox *sb) {
  if (!sb->armed) return;
  pthread_mutex_lock(&wd.mu);
  if (sb->wd_prev) sb->wd_prev->wd_next = sb->wd_next;
  else wd.armed = sb->wd_next;
  if (sb->wd_next) sb->wd_next->wd_prev = sb->wd_prev;
  sb->armed = 0;
  pthread_mutex_unlock(&wd.mu);
}

/* pcall for scripts: like pcall, but a spent budget is re-raised rather than caught. */
static int sb_pcall(lua_State *L) {
  luaL_checkany(L, 1);
  sandbox *sb = sb_of(L);
  int depth = sb->meter.depth;
  herald_meter_enter(L, &sb->meter);
  int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  sb->meter.depth = depth; /* also when the callee raised through a gsub in between */
  if (sb->expired) return luaL_error(L, "script exceeded its CPU budget");
  lua_pushboolean(L, status == 0);
  lua_insert(L, 1);
  return lua_gettop(L);
}

/* enter() / leave(): one level of callback nesting, for the Lua wrappers of tostring and
 * string.format (which may call a __tostring metamethod: one that formats itself would
 * otherwise recurse on the C stack until Lua's stack overflows, and unwinding twenty thousand
 * C frames takes longer than the budget). The wrappers are Lua so that errors keep naming
 * 'format' and 'tostring'. A raised error skips leave(); whoever catches it restores the depth. */
static int sb_enter(lua_State *L) {
  herald_meter_enter(L, &sb_of(L)->meter);
  return 0;
}

static int sb_leave(lua_State *L) {
  herald_meter_leave(&sb_of(L)->meter);
  return 0;
}

/* print in scripts goes to the sink set with sb:on_print (herald test, the REPL), else to the
 * engine log at debug level. */
static int sb_print(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= lua_gettop(L); i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    size_t n;
    const char *s = lua_type(L, i) == LUA_TSTRING || lua_type(L, i) == LUA_TNUMBER
                        ? lua_tolstring(L, i, &n)
                        : (n = strlen(lua_typename(L, lua_type(L, i))), lua_typename(L, lua_type(L, i)));
    luaL_addlstring(&b, s, n > 1024 ? 1024 : n);
  }
  luaL_pushresult(&b);
  sandbox *sb = sb_of(L);
  if (sb->host && sb->print_ref != LUA_NOREF) {
    /* the sink is the caller's Lua; a failing sink must not fail the script. A script that
     * prints in a loop gets PRINT_MAX bytes a call shown, then one line saying the rest went */
    size_t n;
    const char *line = lua_tolstring(L, -1, &n);
    if (sb->printed > PRINT_MAX) return 0;
    sb->printed += n + 1;
    if (sb->printed > PRINT_MAX) {
      line = "... (over 16 KiB printed in one call: the rest of this call's output is dropped)";
      n = strlen(line);
    }
    lua_rawgeti(sb->host, LUA_REGISTRYINDEX, sb->print_ref);
    lua_pushlstring(sb->host, line, n);
    if (lua_pcall(sb->host, 1, 0, 0) != 0) lua_pop(sb->host, 1);
    return 0;
  }
  herald_log(&sandbox_log, HLOG_DEBUG, "script: %s", lua_tostring(L, -1));
  return 0;
}

/* Runs in the fresh state before any user code: replaces the table functions that write raw
 * or loop in C with ones that refuse the library proxies and run as interpreted (hooked) Lua,
 * then builds the read-only global proxy. Receives the pcall and print replacements; returns a
 * function making one script's env. */
static const char BOOTSTRAP[] =
    "local spcall, sprint, NULL, enter, leave = ...\n"
    "do\n"
    "  local format = string.format\n"
    "  string.format = function(...) enter() local s = format(...) leave() return s end\n"
    "end\n"
    "local function stostring(...) enter() local tostring = tostring local s = tostring(...) leave() return s end\n"
    "local setmetatable, getmetatable, rawget = setmetatable, getmetatable, rawget\n"
    "local error, type, floor = error, type, math.floor\n"
    "local tremove, select, tonumber = table.remove, select, tonumber\n"
    "string.dump = nil\n"
    "local PROTECTED = setmetatable({}, { __mode = 'k' })\n"
    "local function writable(t, fn, i)\n"
    "  if PROTECTED[t] then error('cannot modify a library table of the sandbox (table.' .. fn .. ')', 3) end\n"
    "  if type(t) ~= 'table' then\n"
    "    error(\"bad argument #\" .. i .. \" to '\" .. fn .. \"' (table expected, got \" .. type(t) .. ')', 3)\n"
    "  end\n"
    "end\n"
    /* insert as Lua 5.1 does it, shifting in Lua: LuaJIT's C insert shifts from #t+1 down to a
     * position as far off as -1e9 where no hook can stop it */
    "function table.insert(t, ...)\n"
    "  writable(t, 'insert', 1)\n"
    "  local n = select('#', ...)\n"
    "  if n == 1 then t[#t + 1] = ... return end\n"
    "  if n ~= 2 then error(\"wrong number of arguments to 'insert'\", 2) end\n"
    "  local pos, v = ...\n"
    "  local p = tonumber(pos)\n"
    "  if p == nil then\n"
    "    error(\"bad argument #2 to 'insert' (number expected, got \" .. type(pos) .. ')', 2)\n"
    "  end\n"
    "  p = p >= 0 and floor(p) or -floor(-p)\n"
    "  local e = #t + 1\n"
    "  if p > e then e = p end\n"
    "  for i = e, p + 1, -1 do t[i] = t[i - 1] end\n"
    "  t[p] = v\n"
    "end\n"
    "function table.remove(t, ...) writable(t, 'remove', 1) return tremove(t, ...) end\n"
    "local function less(a, b) return a < b end\n"
    "function table.sort(t, lt)\n" /* heapsort: no recursion, no C loop a hook cannot stop */
    "  writable(t, 'sort', 1)\n"
    "  if lt == nil then lt = less elseif type(lt) ~= 'function' then\n"
    "    error(\"bad argument #2 to 'sort' (function expected, got \" .. type(lt) .. ')', 2)\n"
    "  end\n"
    "  local n = #t\n"
    "  local function sift(root, last)\n"
    "    while true do\n"
    "      local child = root * 2\n"
    "      if child > last then return end\n"
    "      if child < last and lt(t[child], t[child + 1]) then child = child + 1 end\n"
    "      if not lt(t[root], t[child]) then return end\n"
    "      t[root], t[child] = t[child], t[root]\n"
    "      root = child\n"
    "    end\n"
    "  end\n"
    "  for i = floor(n / 2), 1, -1 do sift(i, n) end\n"
    "  for last = n, 2, -1 do t[1], t[last] = t[last], t[1] sift(1, last - 1) end\n"
    "end\n"
    "function table.move(a1, f, e, t, a2)\n"
    "  a2 = a2 == nil and a1 or a2\n"
    "  writable(a1, 'move', 1) writable(a2, 'move', 5)\n"
    "  if e >= f then\n"
    "    if t > f or t > e or a1 ~= a2 then for i = 0, e - f do a2[t + i] = a1[f + i] end\n"
    "    else for i = e - f, 0, -1 do a2[t + i] = a1[f + i] end end\n"
    "  end\n"
    "  return a2\n"
    "end\n"
    "function table.foreach(t, f)\n"
    "  for k, v in pairs(t) do local r = f(k, v) if r ~= nil then return r end end\n"
    "end\n"
    "function table.foreachi(t, f)\n"
    "  for i = 1, #t do local r = f(i, t[i]) if r ~= nil then return r end end\n"
    "end\n"
    "local FORBIDDEN = { io = 1, os = 1, ffi = 1, jit = 1, debug = 1, package = 1, require = 1,\n"
    "  module = 1, load = 1, loadstring = 1, loadfile = 1, dofile = 1, collectgarbage = 1,\n"
    "  gcinfo = 1, getfenv = 1, setfenv = 1, newproxy = 1, rawset = 1, rawget = 1, rawequal = 1,\n"
    "  getmetatable = 1, coroutine = 1, dump = 1, execute = 1, exit = 1,\n"
    "  getenv = 1, remove = 1, rename = 1, tmpname = 1, popen = 1, open = 1, lines = 1 }\n"
    "local function readonly(name, t)\n"
    "  local proxy = setmetatable({}, { __metatable = false,\n"
    "    __index = function(_, k)\n"
    "      local v = t[k]\n"
    "      if v == nil and FORBIDDEN[k] then error((name and name .. '.' or '') .. k ..\n"
    "        \" is not available in Herald's Lua sandbox\", 2) end\n"
    "      return v\n"
    "    end,\n"
    "    __newindex = function(_, k) error('cannot modify ' .. (name or 'global') ..\n"
    "      (name and '.' .. tostring(k) or ' ' .. tostring(k) .. ' of the sandbox library'), 2) end })\n"
    "  PROTECTED[proxy] = true\n"
    "  return proxy\n"
    "end\n"
    "local allowed = {\n"
    "  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,\n"
    "  pcall = spcall, select = select, tonumber = tonumber, tostring = stostring, type = type,\n"
    "  unpack = unpack, print = sprint, _VERSION = _VERSION, setmetatable = setmetatable,\n"
    "  string = readonly('string', string), table = readonly('table', table),\n"
    "  math = readonly('math', math), bit = readonly('bit', bit),\n"
    "  os = readonly('os', { time = os.time, clock = os.clock, date = os.date }),\n"
    "}\n"
    "local globals = readonly(nil, allowed)\n"
    /* JSON as cjson writes it (%.14g numbers, {} for an empty table, the same errors), but in
     * interpreted Lua: a huge result runs out of budget or memory instead of stalling in C. */
    "local format, gsub, concat, tostring, pairs = string.format, string.gsub, table.concat, tostring, pairs\n"
    "local huge = math.huge\n"
    "local ESC = { ['\"'] = '\\\\\"', ['\\\\'] = '\\\\\\\\', ['/'] = '\\\\/', ['\\b'] = '\\\\b',\n"
    "  ['\\f'] = '\\\\f', ['\\n'] = '\\\\n', ['\\r'] = '\\\\r', ['\\t'] = '\\\\t' }\n"
    "for i = 0, 31 do local c = string.char(i) ESC[c] = ESC[c] or format('\\\\u%04x', i) end\n"
    "ESC['\\127'] = '\\\\u007f'\n"
    "local function num(n)\n"
    "  if n ~= n or n == huge or n == -huge then error('Cannot serialise number: must not be NaN or Inf', 0) end\n"
    "  return format('%.14g', n)\n"
    "end\n"
    "local function put(v, out, depth)\n"
    "  local t = type(v)\n"
    "  if t == 'string' then out[#out + 1] = '\"' .. gsub(v, '[%c\"\\\\/]', ESC) .. '\"'\n"
    "  elseif t == 'number' then out[#out + 1] = num(v)\n"
    "  elseif t == 'boolean' then out[#out + 1] = tostring(v)\n"
    "  elseif v == NULL then out[#out + 1] = 'null'\n"
    "  elseif t == 'table' then\n"
    "    if depth >= 1000 then error('Cannot serialise, excessive nesting (1001)', 0) end\n"
    "    local max, n = 0, 0\n"
    "    local mt = getmetatable(v)\n"
    "    local is_array = type(mt) == 'table' and rawget(mt, '__is_array')\n"
    "    for k in pairs(v) do\n"
    "      if type(k) == 'number' and k > 0 and k == floor(k) then\n"
    "        if k > max then max = k end n = n + 1\n"
    "      else max = -1 break end\n"
    "    end\n"
    "    if max > 0 or (is_array and max == 0) then\n"
    "      if max > 10 and max > n * 2 then error('Cannot serialise table: excessively sparse array', 0) end\n"
    "      out[#out + 1] = '['\n"
    "      for i = 1, max do if i > 1 then out[#out + 1] = ',' end put(rawget(v, i), out, depth + 1) end\n"
    "      out[#out + 1] = ']'\n"
    "    else\n"
    "      out[#out + 1] = '{'\n"
    "      local first = true\n"
    "      for k, x in pairs(v) do\n"
    "        local kt = type(k)\n"
    "        if kt == 'number' then k = num(k) elseif kt ~= 'string' then\n"
    "          error('Cannot serialise ' .. kt .. ': table key must be a number or string', 0)\n"
    "        end\n"
    "        if not first then out[#out + 1] = ',' end first = false\n"
    "        put(k, out, depth + 1) out[#out + 1] = ':' put(x, out, depth + 1)\n"
    "      end\n"
    "      out[#out + 1] = '}'\n"
    "    end\n"
    "  elseif v == nil then out[#out + 1] = 'null'\n"
    "  else error('Cannot serialise ' .. t .. ': type not supported', 0) end\n"
    "end\n"
    "local function encode(v) local out = {} put(v, out, 0) return concat(out) end\n"
    "local SENTINEL, ARRAY_MT = '\\0herald:empty-array\\0', { __is_array = true }\n"
    "local function unmark(v)\n"
    "  if type(v) ~= 'table' then return v end\n"
    "  if v[1] == SENTINEL and v[2] == nil then return setmetatable({}, ARRAY_MT) end\n"
    "  for k, x in pairs(v) do if type(x) == 'table' then v[k] = unmark(x) end end\n"
    "  return v\n"
    "end\n"
    "return function()\n"
    "  return setmetatable({}, { __index = globals, __metatable = false })\n"
    "end, encode, unmark\n";

static int open_libs(lua_State *L) {
  static const lua_CFunction libs[] = {luaopen_base, luaopen_string, luaopen_table, luaopen_math,
                                       luaopen_bit, luaopen_os};
  for (size_t i = 0; i < HERALD_ARRAY_SIZE(libs); i++) {
    lua_pushcfunction(L, libs[i]);
    lua_call(L, 0, 0);
  }
  /* the string table the string metatable indexes too: ("x"):rep(...) gets the metered rep */
  lua_getglobal(L, "string");
  herald_strlib_register(L, -1, &sb_of(L)->meter);
  lua_pop(L, 1);
  lua_pushcfunction(L, luaopen_cjson);
  lua_call(L, 0, 1);
  lua_getfield(L, -1, "decode");
  lua_setfield(L, LUA_REGISTRYINDEX, "herald.decode");
  lua_getfield(L, -1, "null");
  lua_setfield(L, LUA_REGISTRYINDEX, "herald.null");
  lua_pop(L, 1);
  /* the JIT is off in this state: count hooks only interrupt interpreted code */
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  /* drop what the libraries registered globally; scripts only ever see the env proxies */
  if (luaL_loadbuffer(L, BOOTSTRAP, sizeof BOOTSTRAP - 1, "=sandbox") != 0) return lua_error(L);
  lua_pushcfunction(L, sb_pcall);
  lua_pushcfunction(L, sb_print);
  lua_getfield(L, LUA_REGISTRYINDEX, "herald.null");
  lua_pushcfunction(L, sb_enter);
  lua_pushcfunction(L, sb_leave);
  lua_call(L, 5, 3);
  lua_setfield(L, LUA_REGISTRYINDEX, "herald.unmark");
  lua_setfield(L, LUA_REGISTRYINDEX, "herald.encode");
  lua_setfield(L, LUA_REGISTRYINDEX, "herald.newenv");
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, "herald.scripts");
  const char *drop[] = {"io", "os", "jit", "debug", "package", "require", "load", "loadstring",
                        "loadfile", "dofile", "collectgarbage", "newproxy", "getfenv", "setfenv"};
  for (size_t i = 0; i < HERALD_ARRAY_SIZE(drop); i++) {
    lua_pushnil(L);
    lua_setglobal(L, drop[i]);
  }
  return 0;
}

static int l_sandbox_new(lua_State *L) {
  sandbox *sb = lua_newuserdata(L, sizeof *sb);
  memset(sb, 0, sizeof *sb);
  sb->print_ref = LUA_NOREF;
  luaL_getmetatable(L, SANDBOX_MT);
  lua_setmetatable(L, -2);
  int t = lua_istable(L, 1) ? 1 : 0;
  sb->mem_limit = (size_t)(t ? herald_cfg_number(L, 1, "memory", 32 << 20) : 32 << 20);
  sb->instr_budget = (uint64_t)(t ? herald_cfg_number(L, 1, "instructions", 50e6) : 50e6);
  sb->timeout_ns = (uint64_t)((t ? herald_cfg_number(L, 1, "timeout_ms", 200) : 200) * 1e6);
  sb->mem_limit += 1 << 20; /* headroom for the libraries themselves */
  sb->meter = (herald_meter){.charge = meter_charge, .mem_left = meter_mem_left, .max_depth = MAX_DEPTH};
  sb->L = lua_newstate(sb_alloc, sb);
  if (!sb->L) return luaL_error(L, "cannot create a sandbox state");
  if (lua_cpcall(sb->L, open_libs, NULL) != 0) {
    const char *msg = lua_tostring(sb->L, -1);
    lua_pushfstring(L, "sandbox set-up failed: %s", msg ? msg : "?");
    lua_close(sb->L);
    sb->L = NULL;
    return lua_error(L);
  }
  lua_gc(sb->L, LUA_GCCOLLECT, 0);
  return 1;
}

static sandbox *check_sb(lua_State *L) {
  sandbox *sb = luaL_checkudata(L, 1, SANDBOX_MT);
  if (!sb->L) luaL_error(L, "sandbox is closed");
  return sb;
}

/* Copies the error at the top of S (without running metamethods) to L, capped. */
static void push_error(lua_State *L, lua_State *S) {
  size_t n = 0;
  const char *msg = lua_type(S, -1) == LUA_TSTRING ? lua_tolstring(S, -1, &n) : NULL;
  if (msg) lua_pushlstring(L, msg, n > 1024 ? 1024 : n);
  else lua_pushfstring(L, "script raised a %s value", lua_typename(S, lua_type(S, -1)));
  lua_pop(S, 1);
}

static int l_sandbox_compile(lua_State *L) {
  sandbox *sb = check_sb(L);
  size_t len;
  const char *src = luaL_checklstring(L, 2, &len);
  const char *name = luaL_optstring(L, 3, "=script");
  lua_State *S = sb->L;
  if (len > MAX_SOURCE) {
    lua_pushnil(L);
    lua_pushfstring(L, "script is %d bytes; the limit is %d", (int)len, MAX_SOURCE);
    return 2;
  }
  if (len > 0 && src[0] == LUA_SIGNATURE[0]) {
    lua_pushnil(L);
    lua_pushliteral(L, "bytecode is not accepted: a script must be Lua source text");
    return 2;
  }
  /* stack(S): -> fn -> (stored) */
  if (luaL_loadbufferx(S, src, len, name, "t") != 0) {
    lua_pushnil(L);
    push_error(L, S);
    return 2;
  }
  lua_getfield(S, LUA_REGISTRYINDEX, "herald.newenv");
  lua_call(S, 0, 1);
  lua_setfenv(S, -2);
  lua_getfield(S, LUA_REGISTRYINDEX, "herald.scripts");
  lua_insert(S, -2);
  lua_rawseti(S, -2, ++sb->nscripts);
  lua_pop(S, 1);
  lua_pushinteger(L, sb->nscripts);
  return 1;
}

/* cjson decodes an empty JSON array to an empty table, which encodes back as {}. As Herald's
 * own decoder does (herald.json), "[]" outside strings becomes a one-element array holding a
 * sentinel, and the bootstrap's unmark() turns each into an empty table carrying the array
 * metatable the encoder honours. Returns 1 and fills out when json has an empty array. */
#define EMPTY_ARRAY_SENTINEL "\\u0000herald:empty-array\\u0000"
static int mark_empty_arrays(const char *json, size_t len, herald_buf *out) {
  size_t from = 0;
  int found = 0;
  for (size_t i = 0; i < len; i++) {
    if (json[i] == '"') { /* skip the string, escapes included */
      for (i++; i < len && json[i] != '"'; i++)
        if (json[i] == '\\') i++;
      continue;
    }
    if (json[i] != '[') continue;
    size_t j = i + 1;
    while (j < len && (json[j] == ' ' || json[j] == '\t' || json[j] == '\n' || json[j] == '\r')) j++;
    if (j >= len || json[j] != ']') continue;
    herald_buf_append(out, json + from, i + 1 - from);
    herald_buf_puts(out, "\"" EMPTY_ARRAY_SENTINEL "\"]");
    from = j + 1;
    i = j;
    found = 1;
  }
  if (found) herald_buf_append(out, json + from, len - from);
  return found;
}

enum { RUN_FILTER, RUN_TRANSFORM };

/* Runs script `id` (arg 2) with `event` (or the name in arg 4) = the decoded JSON (arg 3),
 * under the CPU budget; for RUN_TRANSFORM the result is a table and is encoded as JSON inside
 * the same budget (by the sandbox's own encoder, whose output counts against the memory cap).
 * On success leaves the script's first result (or the JSON) on S's stack above `base` and
 * returns 1; on failure restores S, pushes nil, err on L and returns 0.
 * stack(S): base -> base result */
static int sb_run(lua_State *L, sandbox *sb, int base, int mode) {
  int id = (int)luaL_checkinteger(L, 2);
  size_t len;
  const char *json = luaL_checklstring(L, 3, &len);
  lua_State *S = sb->L;
  lua_getfield(S, LUA_REGISTRYINDEX, "herald.scripts");
  lua_rawgeti(S, -1, id);
  lua_remove(S, -2);
  if (!lua_isfunction(S, -1)) {
    lua_settop(S, base);
    return luaL_error(L, "no script %d in this sandbox", id);
  }
  lua_getfenv(S, -1);
  herald_buf marked = HERALD_BUF_INIT;
  int has_empty = mark_empty_arrays(json, len, &marked);
  /* stack(S): fn env -> fn env unmark? decode json -> fn env data */
  if (has_empty) lua_getfield(S, LUA_REGISTRYINDEX, "herald.unmark");
  lua_getfield(S, LUA_REGISTRYINDEX, "herald.decode");
  if (has_empty) lua_pushlstring(S, marked.data, marked.len);
  else lua_pushlstring(S, json, len);
  herald_buf_free(&marked);
  int rc = lua_pcall(S, 1, 1, 0);
  if (rc == 0 && has_empty) rc = lua_pcall(S, 1, 1, 0);
  if (rc != 0) {
    lua_pushnil(L);
    push_error(L, S);
    lua_settop(S, base);
    return 0;
  }
  lua_setfield(S, -2, luaL_optstring(L, 4, "event")); /* the global the script reads */
  lua_pop(S, 1); /* env */
  sb->expired = 0;
  sb->instr_used = 0;
  sb->meter.depth = 0;
  lua_sethook(S, sb_hook, LUA_MASKCOUNT, HOOK_EVERY);
  wd_arm(sb);
  sb->host = L;
  sb->printed = 0;
  int status = lua_pcall(S, 0, 1, 0);
  sb->host = NULL;
  const char *context = NULL;
  if (status == 0 && mode == RUN_TRANSFORM) {
    if (lua_type(S, -1) != LUA_TTABLE) {
      wd_disarm(sb);
      lua_sethook(S, NULL, 0, 0);
      lua_pushnil(L);
      lua_pushfstring(L, "script transform returned %s, not a table", lua_typename(S, lua_type(S, -1)));
      lua_settop(S, base);
      return 0;
    }
    /* stack(S): result -> encode result -> json */
    lua_getfield(S, LUA_REGISTRYINDEX, "herald.encode");
    lua_insert(S, -2);
    status = lua_pcall(S, 1, 1, 0);
    if (status != 0 && !sb->expired) context = "script transform result cannot be encoded as JSON: ";
  }
  wd_disarm(sb);
  lua_sethook(S, NULL, 0, 0);
  if (status != 0) {
    lua_pushnil(L);
    if (context) lua_pushstring(L, context);
    push_error(L, S);
    if (context) lua_concat(L, 2);
    lua_settop(S, base);
    if (status == LUA_ERRMEM || sb->mem_used > sb->mem_limit / 2) lua_gc(S, LUA_GCCOLLECT, 0);
    return 0;
  }
  return 1;
}

/* sb:filter(id, data_json) -> true, passed, returned | nil, err: passed when the script
 * returns true; `returned` names what it returned otherwise ("false", "nil", "a string" ...). */
static int l_sandbox_filter(lua_State *L) {
  sandbox *sb = check_sb(L);
  lua_State *S = sb->L;
  int base = lua_gettop(S);
  if (!sb_run(L, sb, base, RUN_FILTER)) return 2;
  int t = lua_type(S, -1);
  int passed = t == LUA_TBOOLEAN && lua_toboolean(S, -1);
  lua_settop(S, base);
  lua_pushboolean(L, 1);
  lua_pushboolean(L, passed);
  if (passed) return 2;
  if (t == LUA_TBOOLEAN) lua_pushliteral(L, "false");
  else if (t == LUA_TNIL) lua_pushliteral(L, "nil");
  else lua_pushfstring(L, "a %s", lua_typename(L, t));
  return 3;
}

/* sb:on_print(fn | nil): where the scripts' print lines go (fn(line)); nil: the debug log. */
static int l_sandbox_on_print(lua_State *L) {
  sandbox *sb = check_sb(L);
  if (sb->print_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, sb->print_ref);
  sb->print_ref = LUA_NOREF;
  if (lua_isfunction(L, 2)) {
    lua_pushvalue(L, 2);
    sb->print_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

/* sb:transform(id, data_json) -> json | nil, err: the table the script returns, as JSON. */
static int l_sandbox_transform(lua_State *L) {
  sandbox *sb = check_sb(L);
  lua_State *S = sb->L;
  int base = lua_gettop(S);
  if (!sb_run(L, sb, base, RUN_TRANSFORM)) return 2;
  size_t n;
  const char *json = lua_tolstring(S, -1, &n);
  lua_pushlstring(L, json, n);
  lua_settop(S, base);
  return 1;
}

static int l_sandbox_memory(lua_State *L) {
  sandbox *sb = check_sb(L);
  lua_pushnumber(L, (double)sb->mem_used);
  return 1;
}

static int l_sandbox_gc(lua_State *L) {
  sandbox *sb = luaL_checkudata(L, 1, SANDBOX_MT);
  wd_disarm(sb);
  if (sb->L) lua_close(sb->L);
  sb->L = NULL;
  return 0;
}

void herald__lua_open_sandbox(lua_State *L) {
  /* stack: core -> core */
  if (luaL_newmetatable(L, SANDBOX_MT)) {
    lua_pushcfunction(L, l_sandbox_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, l_sandbox_compile);
    lua_setfield(L, -2, "compile");
    lua_pushcfunction(L, l_sandbox_filter);
    lua_setfield(L, -2, "filter");
    lua_pushcfunction(L, l_sandbox_transform);
    lua_setfield(L, -2, "transform");
    lua_pushcfunction(L, l_sandbox_memory);
    lua_setfield(L, -2, "memory");
    lua_pushcfunction(L, l_sandbox_on_print);
    lua_setfield(L, -2, "on_print");
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_sandbox_new);
  lua_setfield(L, -2, "sandbox_new");
}
