/*
 * sandbox.c: where user-written Lua runs (script filters; later transforms and Lua triggers).
 *
 * One sandbox state per sensor, created only for sensors that have scripts (lua_host.h says
 * why). Recipe: reliability-and-security.md section 4.4.
 *   - memory: the state's allocator counts bytes and refuses past the cap (default 32 MiB),
 *     which Lua turns into a "not enough memory" error;
 *   - CPU: the JIT is off in this state, so a count hook runs every 1000 instructions and
 *     stops a call past its instruction budget or wall-clock deadline (a hook cannot interrupt
 *     JIT-compiled loops on LuaJIT 2.1); the sandbox's pcall re-raises once the budget is
 *     spent, so a script cannot swallow the stop;
 *   - surface: scripts see a fresh environment built from an allow-list, through read-only
 *     proxies; io, os (but time/date/clock), ffi, jit, debug, package/require, load*,
 *     dofile, string.dump, collectgarbage, raw*, get/setmetatable, get/setfenv and newproxy
 *     are absent, and naming one raises "<name> is not available in Herald's Lua sandbox";
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

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <string.h>

#include <lua5.1/lua-cjson.h>

#define SANDBOX_MT "herald.sandbox"
#define MAX_SOURCE (64 * 1024)
#define HOOK_EVERY 1000

typedef struct sandbox {
  lua_State *L;
  size_t mem_used, mem_limit;
  uint64_t instr_budget, instr_used;
  uint64_t timeout_ns, deadline_ns;
  int expired;
  int nscripts;
} sandbox;

static const herald_logger sandbox_log = {.name = "sandbox"};

static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sandbox *sb = ud;
  if (nsize == 0) {
    free(ptr);
    sb->mem_used -= osize;
    return NULL;
  }
  if (nsize > osize && sb->mem_used + (nsize - osize) > sb->mem_limit) return NULL;
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

static void sb_hook(lua_State *L, lua_Debug *ar) {
  sandbox *sb = sb_of(L);
  sb->instr_used += HOOK_EVERY;
  if (sb->expired || sb->instr_used > sb->instr_budget || herald_mono_ns() > sb->deadline_ns) {
    sb->expired = 1;
    luaL_error(L, "script exceeded its CPU budget (%d ms or %d instructions)",
               (int)(sb->timeout_ns / 1000000), (int)sb->instr_budget);
  }
}

/* pcall for scripts: like pcall, but a spent budget is re-raised rather than caught. */
static int sb_pcall(lua_State *L) {
  luaL_checkany(L, 1);
  int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  sandbox *sb = sb_of(L);
  if (sb->expired) return luaL_error(L, "script exceeded its CPU budget");
  lua_pushboolean(L, status == 0);
  lua_insert(L, 1);
  return lua_gettop(L);
}

/* print in scripts goes to the engine log at debug level. */
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
  herald_log(&sandbox_log, HLOG_DEBUG, "script: %s", lua_tostring(L, -1));
  return 0;
}

/* Runs in the fresh state before any user code: builds the read-only global proxy.
 * Receives the pcall and print replacements; returns a function making one script's env. */
static const char BOOTSTRAP[] =
    "local spcall, sprint = ...\n"
    "local setmetatable, error, rawget = setmetatable, error, rawget\n"
    "string.dump = nil\n"
    "local FORBIDDEN = { io = 1, os = 1, ffi = 1, jit = 1, debug = 1, package = 1, require = 1,\n"
    "  module = 1, load = 1, loadstring = 1, loadfile = 1, dofile = 1, collectgarbage = 1,\n"
    "  gcinfo = 1, getfenv = 1, setfenv = 1, newproxy = 1, rawset = 1, rawget = 1, rawequal = 1,\n"
    "  getmetatable = 1, setmetatable = 1, coroutine = 1, dump = 1, execute = 1, exit = 1,\n"
    "  getenv = 1, remove = 1, rename = 1, tmpname = 1, popen = 1, open = 1, lines = 1 }\n"
    "local function readonly(name, t)\n"
    "  return setmetatable({}, { __metatable = false,\n"
    "    __index = function(_, k)\n"
    "      local v = t[k]\n"
    "      if v == nil and FORBIDDEN[k] then error((name and name .. '.' or '') .. k ..\n"
    "        \" is not available in Herald's Lua sandbox\", 2) end\n"
    "      return v\n"
    "    end,\n"
    "    __newindex = function(_, k) error('cannot modify ' .. (name or 'global') ..\n"
    "      (name and '.' .. tostring(k) or ' ' .. tostring(k) .. ' of the sandbox library'), 2) end })\n"
    "end\n"
    "local allowed = {\n"
    "  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,\n"
    "  pcall = spcall, select = select, tonumber = tonumber, tostring = tostring, type = type,\n"
    "  unpack = unpack, print = sprint, _VERSION = _VERSION,\n"
    "  string = readonly('string', string), table = readonly('table', table),\n"
    "  math = readonly('math', math), bit = readonly('bit', bit),\n"
    "  os = readonly('os', { time = os.time, clock = os.clock, date = os.date }),\n"
    "}\n"
    "local globals = readonly(nil, allowed)\n"
    "return function()\n"
    "  return setmetatable({}, { __index = globals, __metatable = false })\n"
    "end\n";

static int open_libs(lua_State *L) {
  static const lua_CFunction libs[] = {luaopen_base, luaopen_string, luaopen_table, luaopen_math,
                                       luaopen_bit, luaopen_os};
  for (size_t i = 0; i < HERALD_ARRAY_SIZE(libs); i++) {
    lua_pushcfunction(L, libs[i]);
    lua_call(L, 0, 0);
  }
  lua_pushcfunction(L, luaopen_cjson);
  lua_call(L, 0, 1);
  lua_getfield(L, -1, "decode");
  lua_setfield(L, LUA_REGISTRYINDEX, "herald.decode");
  lua_getfield(L, -1, "encode");
  lua_setfield(L, LUA_REGISTRYINDEX, "herald.encode");
  lua_pop(L, 1);
  /* the JIT is off in this state: count hooks only interrupt interpreted code */
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  /* drop what the libraries registered globally; scripts only ever see the env proxies */
  if (luaL_loadbuffer(L, BOOTSTRAP, sizeof BOOTSTRAP - 1, "=sandbox") != 0) return lua_error(L);
  lua_pushcfunction(L, sb_pcall);
  lua_pushcfunction(L, sb_print);
  lua_call(L, 2, 1);
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
  luaL_getmetatable(L, SANDBOX_MT);
  lua_setmetatable(L, -2);
  int t = lua_istable(L, 1) ? 1 : 0;
  sb->mem_limit = (size_t)(t ? herald_cfg_number(L, 1, "memory", 32 << 20) : 32 << 20);
  sb->instr_budget = (uint64_t)(t ? herald_cfg_number(L, 1, "instructions", 50e6) : 50e6);
  sb->timeout_ns = (uint64_t)((t ? herald_cfg_number(L, 1, "timeout_ms", 200) : 200) * 1e6);
  sb->mem_limit += 1 << 20; /* headroom for the libraries themselves */
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

/* Runs script `id` (arg 2) with `event` (or the name in arg 4) = the decoded JSON (arg 3),
 * under the CPU budget.
 * On success leaves the script's first result on S's stack above `base` and returns 1; on
 * failure restores S, pushes nil, err on L and returns 0. stack(S): base -> base result */
static int sb_run(lua_State *L, sandbox *sb, int base) {
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
  lua_getfield(S, LUA_REGISTRYINDEX, "herald.decode");
  lua_pushlstring(S, json, len);
  if (lua_pcall(S, 1, 1, 0) != 0) {
    lua_pushnil(L);
    push_error(L, S);
    lua_settop(S, base);
    return 0;
  }
  lua_setfield(S, -2, luaL_optstring(L, 4, "event")); /* the global the script reads */
  lua_pop(S, 1); /* env */
  sb->expired = 0;
  sb->instr_used = 0;
  sb->deadline_ns = herald_mono_ns() + sb->timeout_ns;
  lua_sethook(S, sb_hook, LUA_MASKCOUNT, HOOK_EVERY);
  int status = lua_pcall(S, 0, 1, 0);
  lua_sethook(S, NULL, 0, 0);
  if (status != 0) {
    lua_pushnil(L);
    push_error(L, S);
    lua_settop(S, base);
    if (status == LUA_ERRMEM || sb->mem_used > sb->mem_limit / 2) lua_gc(S, LUA_GCCOLLECT, 0);
    return 0;
  }
  return 1;
}

/* sb:filter(id, data_json) -> true, passed | nil, err: passed when the script returns true. */
static int l_sandbox_filter(lua_State *L) {
  sandbox *sb = check_sb(L);
  lua_State *S = sb->L;
  int base = lua_gettop(S);
  if (!sb_run(L, sb, base)) return 2;
  int passed = lua_type(S, -1) == LUA_TBOOLEAN && lua_toboolean(S, -1);
  lua_settop(S, base);
  lua_pushboolean(L, 1);
  lua_pushboolean(L, passed);
  return 2;
}

/* sb:transform(id, data_json) -> json | nil, err: the table the script returns, as JSON
 * (encoded inside the sandbox, under its memory cap). */
static int l_sandbox_transform(lua_State *L) {
  sandbox *sb = check_sb(L);
  lua_State *S = sb->L;
  int base = lua_gettop(S);
  if (!sb_run(L, sb, base)) return 2;
  if (lua_type(S, -1) != LUA_TTABLE) {
    lua_pushnil(L);
    lua_pushfstring(L, "script transform returned %s, not a table", lua_typename(S, lua_type(S, -1)));
    lua_settop(S, base);
    return 2;
  }
  /* stack(S): result -> encode result -> json */
  lua_getfield(S, LUA_REGISTRYINDEX, "herald.encode");
  lua_insert(S, -2);
  if (lua_pcall(S, 1, 1, 0) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "script transform result cannot be encoded as JSON: ");
    push_error(L, S);
    lua_concat(L, 2);
    lua_settop(S, base);
    return 2;
  }
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
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_sandbox_new);
  lua_setfield(L, -2, "sandbox_new");
}
