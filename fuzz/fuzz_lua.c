/*
 * fuzz_lua.c: the Lua state the Lua-side fuzz targets share (see fuzz_lua.h), a stand-in for
 * herald.core with the parts the parsers use, and the hook that turns a failed soft internal
 * check into an abort libFuzzer can record.
 *
 * The state is the engine's: herald_lua_new() from lua_host.c, the stdlib compiled into this
 * binary. Only herald.core differs: the engine's (core.c) pulls in the whole engine, and the
 * parsers need only regex_compile (govaluate/expr-lang constant patterns, sprig), yaml_load,
 * now and the cron/duration checks, which are the engine's own C functions bound here as
 * core.c binds them.
 */
#include "fuzz_lua.h"

#include "common.h"
#include "cron.h"
#include "lua_host.h"
#include "yaml.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* LeakSanitizer off for the Lua targets: memory that C libraries malloc for Lua objects (cjson
 * buffers, libyaml parsers, PCRE2 codes) is referenced only from LuaJIT's own mmap'd heap,
 * which LSan does not scan, so every live one would be reported as a leak. */
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void) {
  return 1;
}

/* Replaces core.c's herald_lua_open_core, which lua_host.c registers as herald.core. */
int herald_lua_open_core(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, herald__lua_yaml_load);
  lua_setfield(L, -2, "yaml_load");
  herald__lua_open_regex(L);
  herald__lua_open_time(L); /* now, the cron/duration/zone checks, tz_open, parse_time ... (lua_time.c) */
  return 1;
}

/* Helpers every harness gets as its first argument. */
static const char prelude[] =
    "local H = {}\n"
    "H.cjson = require 'cjson'\n"
    /* Errors that are not the module's own: a runtime error located in Herald's Lua or in
     * generated code, a Lua runtime error text, a non-string error. `input` is the fuzz input:
     * a pattern the module merely echoed from it does not count. */
    "local PATS = { 'herald/[%w_]+%.lua:%d+:', '%[string \"[^\"]*\"%]:%d+:', 'internal error',\n"
    "  'attempt to ', 'stack overflow', 'bad argument #', 'C stack overflow', 'table index is',\n"
    "  'invalid key to', 'string length overflow' }\n"
    "function H.internal(msg, input)\n"
    "  if msg == nil then return nil end\n"
    "  if type(msg) ~= 'string' then return 'error object of type ' .. type(msg) .. ': ' .. tostring(msg) end\n"
    "  if msg:find('fuzz-budget', 1, true) or msg:find('not enough memory', 1, true) then return nil end\n"
    "  for _, pat in ipairs(PATS) do\n"
    "    local s, e = msg:find(pat)\n"
    "    if s and not (input and input:find(msg:sub(s, e), 1, true)) then return msg end\n"
    "  end\n"
    "  return nil\n"
    "end\n"
    /* Runs f(...) under pcall with an instruction budget (the engine bounds evaluation the same
     * way); a budget hit is not a finding. The JIT is off (below), so the hook always fires. */
    "function H.bounded(f, ...)\n"
    "  H.arm(2000)\n"
    "  local r = { pcall(f, ...) }\n"
    "  H.arm(0)\n"
    "  return unpack(r, 1, table.maxn(r))\n"
    "end\n"
    /* A fresh event-like document for evaluating what compiled. */
    "local DOC = [[{\"body\":{\"a\":1,\"b\":\"x\",\"name\":\"Joe\",\"id\":4,\"f\":1.5,\"t\":true,\"n\":null,"
    "\"arr\":[1,2,{\"c\":true,\"d\":\"e\"}],\"obj\":{\"k\":\"v\",\"k.2\":[\"a\",\"b\"]},\"empty\":[]},"
    "\"headers\":{\"Content-Type\":[\"application/json\"]},\"friends\":[{\"first\":\"Dale\",\"last\":\"Murphy\",\"age\":44},"
    "{\"first\":\"Roger\",\"last\":\"Craig\",\"age\":68}]}]]\n"
    "function H.doc() return H.cjson.decode(DOC) end\n"
    /* An error raised where the API returns nil, err: a finding unless it is the budget. */
    "function H.raised(e)\n"
    "  if type(e) == 'string' and (e:find('fuzz-budget', 1, true) or e:find('not enough memory', 1, true)) then return nil end\n"
    "  return 'raised: ' .. tostring(e)\n"
    "end\n"
    /* Generated code must not reach os/io or write globals: traps record it (spec strings
     * reaching generated code as code, issue 14). Installed after the modules are loaded. */
    "function H.trap()\n"
    "  local function mark(what) return function() H.escaped = what end end\n"
    "  for _, n in ipairs { 'execute', 'exit', 'remove', 'rename', 'getenv' } do os[n] = mark('os.' .. n) end\n"
    "  for _, n in ipairs { 'open', 'popen', 'write', 'lines' } do io[n] = mark('io.' .. n) end\n"
    "  setmetatable(_G, { __newindex = function(t, k, v) H.escaped = 'global write: ' .. tostring(k); rawset(t, k, v) end })\n"
    "end\n"
    "function H.escape() local e = H.escaped; H.escaped = nil; return e end\n"
    "return H\n";

static lua_State *L;
static int harness_ref = LUA_NOREF;

/* Lua coverage for libFuzzer. The parsers are Lua, which the compiler's instrumentation never
 * sees, so a line hook records each (previous line, line) edge of the interpreted code, AFL
 * style, in libFuzzer's extra counters: an input that takes a new path through a parser is
 * kept. The same hook counts instructions for the evaluation budget (H.bounded). */
#define NCOUNTERS (1u << 16)
__attribute__((section("__libfuzzer_extra_counters"), used)) static uint8_t counters[NCOUNTERS];
static uint32_t prev_loc;
static long budget_left = -1; /* instructions left, in units of 1000; -1 = no budget */

static void hook(lua_State *S, lua_Debug *ar) {
  if (ar->event == LUA_HOOKCOUNT) {
    if (budget_left > 0 && --budget_left == 0) {
      budget_left = -1;
      luaL_error(S, "fuzz-budget");
    }
    return;
  }
  if (!lua_getinfo(S, "S", ar)) return;
  /* chunk names are interned strings: their address names the chunk */
  uint32_t loc = (uint32_t)((uintptr_t)ar->source * 2654435761u) ^ (uint32_t)ar->currentline * 40503u;
  loc &= NCOUNTERS - 1;
  counters[loc ^ prev_loc]++;
  prev_loc = loc >> 1;
}

/* H.arm(n): from now on at most n*1000 instructions (n = 0 disarms). */
static int l_arm(lua_State *S) {
  long n = (long)luaL_checkinteger(S, 1);
  budget_left = n > 0 ? n : -1;
  return 0;
}

static void die(const char *what, const char *msg) {
  fprintf(stderr, "fuzz: %s: %s\n", what, msg ? msg : "?");
  abort();
}

void fuzz_lua_init(const char *name, const char *src) {
  if (L) return;
  L = herald_lua_new(NULL);
  if (!L) die("lua", "cannot create the state");
  /* Hooks do not fire inside compiled traces; the harness bounds evaluation with a hook. */
  luaL_dostring(L, "require('jit').off()");
  if (luaL_loadbuffer(L, prelude, sizeof prelude - 1, "=fuzz_prelude") || lua_pcall(L, 0, 1, 0))
    die("prelude", lua_tostring(L, -1));
  lua_pushcfunction(L, l_arm);
  lua_setfield(L, -2, "arm");
  if (luaL_loadbuffer(L, src, strlen(src), name)) die("harness", lua_tostring(L, -1));
  lua_insert(L, -2); /* harness chunk, H */
  if (lua_pcall(L, 1, 1, 0)) die("harness", lua_tostring(L, -1));
  if (!lua_isfunction(L, -1)) die("harness", "does not return a function");
  harness_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void fuzz_lua_run(const uint8_t *data, size_t size) {
  prev_loc = 0;
  budget_left = -1;
  lua_sethook(L, hook, LUA_MASKLINE | LUA_MASKCOUNT, 1000);
  lua_rawgeti(L, LUA_REGISTRYINDEX, harness_ref);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 1, 0)) {
    die("error raised out of the harness", lua_tostring(L, -1));
  }
  if (!lua_isnil(L, -1)) {
    fprintf(stderr, "fuzz: input: %.*s\n", (int)(size > 2000 ? 2000 : size), (const char *)data);
    die("finding", lua_tostring(L, -1));
  }
  lua_settop(L, 0);
  lua_sethook(L, NULL, 0, 0);
}
