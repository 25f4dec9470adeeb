/*
 * sandbox_strlib_test.c: the sandbox's metered string functions (engine/sandbox_strlib.c)
 * against LuaJIT's own, on hand-picked cases and on thousands of generated patterns and
 * subjects: same results, same errors. Then the meter: pathological patterns stop at the budget
 * in bounded time, string.rep refuses what would not fit, gsub callbacks nest only so deep.
 */
#include "sandbox_strlib.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t budget, used;
static size_t mem_left = (size_t)1 << 40;

static void charge(lua_State *L, herald_meter *m, uint64_t steps) {
  used += steps;
  if (used > budget) luaL_error(L, "budget spent");
}
static size_t left(herald_meter *m) { return mem_left; }

static herald_meter meter = {.charge = charge, .mem_left = left, .max_depth = 50};

static int l_reset(lua_State *L) {
  budget = (uint64_t)luaL_checknumber(L, 1);
  used = 0;
  meter.depth = 0;
  return 0;
}
static int l_used(lua_State *L) {
  lua_pushnumber(L, (double)used);
  return 1;
}
static int l_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, ts.tv_sec + ts.tv_nsec / 1e9);
  return 1;
}

static const char SCRIPT[] =
    "local B, reset, used, clock = ...\n"
    "local failures, cases = 0, 0\n"
    "local function norm(ok, ...)\n"
    "  local r = { ok, select('#', ...), ... }\n"
    "  if not ok then r[3] = tostring(r[3]):gsub('^sandbox_strlib_test:%d+: ', ''):gsub(\"^bad argument #(%d+) to '[^']*'\", 'bad argument #%1') end\n"
    "  for i = 1, #r do r[i] = type(r[i]) == 'string' and ('%q'):format(r[i]) or tostring(r[i]) end\n"
    "  return table.concat(r, ',')\n"
    "end\n"
    "local function same(fn, ...)\n"
    "  cases = cases + 1\n"
    "  reset(1e12)\n"
    "  local want = norm(pcall(string[fn], ...))\n"
    "  local got = norm(pcall(B[fn], ...))\n"
    "  if want ~= got then\n"
    "    failures = failures + 1\n"
    "    if failures <= 20 then\n"
    "      local a = {} for i = 1, select('#', ...) do a[i] = ('%q'):format(tostring((select(i, ...)))) end\n"
    "      print(('MISMATCH %s(%s)\\n  luajit: %s\\n  ours:   %s'):format(fn, table.concat(a, ', '), want, got))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local function gm(s, p) local r = {} for a, b, c in B.gmatch(s, p) do r[#r+1] = tostring(a)..'|'..tostring(b)..'|'..tostring(c) end return table.concat(r, ';') end\n"
    "local function gm_ref(s, p) local r = {} for a, b, c in string.gmatch(s, p) do r[#r+1] = tostring(a)..'|'..tostring(b)..'|'..tostring(c) end return table.concat(r, ';') end\n"
    "B.gm, string.gm = gm, gm_ref\n"
    /* hand-picked */
    "local subjects = { '', 'a', 'abc', 'hello world', 'THE (quick) fox', 'key = value', 'a.b-c',\n"
    "  'aaa', 'a\\0b', '[x]', 'x^y$', '  trim  ', '%d', '(()())', 'caf\\195\\169', '1,2,,3', 'a]b' }\n"
    "local patterns = { '', 'a', '.', '%a+', '%d*', '(%w+)%s*=%s*(%w+)', '^a', 'c$', '^$', '()', '(a)(b)',\n"
    "  '%((%a+)%)', '[a-c]+', '[^%s]+', '[]]', '[a-]', '[%a-]', '%bxy', '%b()', '%f[%w]%w+', '%f[%W]',\n"
    "  '(a*(.)%w(%s*))', 'a-b', 'a?b', '.-', '.-$', '(.)%1', '%z', '%g+', '%p', '%x+', '%u%l',\n"
    "  '%', '[a', '(', ')', '%1', '(()', '%b', '%ba', '%f', '%fa', '[%', '%0', 'a**', '$a', 'a$b',\n"
    "  '^', '^^', '[^]]', '[]', '%S+', '%C', '%.', '%%', '(a)%2', '((a)%2)', '\\0', '[\\0-\\1]', '%Z' }\n"
    "for _, s in ipairs(subjects) do for _, p in ipairs(patterns) do\n"
    "  same('find', s, p) same('find', s, p, 2) same('find', s, p, -2) same('find', s, p, 10)\n"
    "  same('find', s, p, 1, true) same('match', s, p) same('match', s, p, 3)\n"
    "  same('gsub', s, p, '<%0>') same('gsub', s, p, '%1') same('gsub', s, p, '%2-%1', 2)\n"
    "  same('gsub', s, p, { a = 'A', abc = false }) same('gsub', s, p, function(x) return x and x:upper() end)\n"
    "  same('gsub', s, p, '%') same('gsub', s, p, 7) same('gsub', s, p, 'x', 0) same('gm', s, p)\n"
    "end end\n"
    "same('gsub', 'abc', 'b', true) same('gsub', 'abc', 'b') same('gsub', 'abc', 'b', function() return {} end)\n"
    "same('gsub', 'abc', '%w', function() return 1.5 end) same('find', 'abc') same('find', nil, 'a')\n"
    "same('find', 123, 2) same('gsub', 'abc', '', '-') same('gsub', 'abc', '', 'x', -1) same('gsub', 'abc', '', 'x', 1.7)\n"
    "for n = 195, 205 do same('find', ('a'):rep(300), ('a?'):rep(n)) same('find', ('a'):rep(300), ('a*'):rep(n))\n"
    "  same('find', ('a'):rep(300), ('a-'):rep(n)) same('find', ('a'):rep(300), ('(a)'):rep(n % 40)) end\n"
    "same('rep', 'x', 3) same('rep', 'x', 3, ',') same('rep', '', 5) same('rep', 'ab', 0) same('rep', 'ab', -1)\n"
    "same('rep', '', 3, '-') same('rep', 'x', 2.9) same('rep') same('rep', 'x')\n"
    /* generated: random patterns over a small alphabet, so that they often match */
    "math.randomseed(42)\n"
    "local atoms = { 'a', 'b', '.', '%a', '%d', '%s', '%A', '[ab]', '[^a]', '[a-c]', '%b()', '%f[a]', '%f[%s]',\n"
    "  '(', ')', '()', '%1', '%2', '^', '$', '%', '[', ']', '-', '%.', '1', ' ', '(a)', '(b*)' }\n"
    "local sufx = { '', '', '', '*', '+', '-', '?' }\n"
    "local chars = { 'a', 'b', 'c', '1', ' ', '(', ')', '.', '%', '\\0', '\\255' }\n"
    "for i = 1, 6000 do\n"
    "  local p = {} for j = 1, math.random(1, 6) do p[j] = atoms[math.random(#atoms)] .. sufx[math.random(#sufx)] end\n"
    "  local s = {} for j = 1, math.random(0, 12) do s[j] = chars[math.random(#chars)] end\n"
    "  p, s = table.concat(p), table.concat(s)\n"
    "  local init = math.random(-4, 14)\n"
    "  same('find', s, p, init) same('match', s, p, init) same('gsub', s, p, '[%0%1]') same('gm', s, p)\n"
    "end\n"
    /* the meter */
    "local function stops(fn, ...)\n"
    "  reset(5e6) local t0 = clock()\n"
    "  local ok, err = pcall(B[fn], ...)\n"
    "  local dt = clock() - t0\n"
    "  if ok or not tostring(err):find('budget spent', 1, true) or dt > 1 then\n"
    "    failures = failures + 1 print(('NOT STOPPED %s: %s %s after %.3f s'):format(fn, tostring(ok), tostring(err), dt))\n"
    "  end\n"
    "  cases = cases + 1\n"
    "end\n"
    "stops('find', ('a'):rep(3000), ('a*'):rep(8) .. 'b')\n"
    "stops('find', ('a'):rep(20000), '.-.-.-.-b')\n"
    "stops('match', ('a'):rep(20000), '(.-)(.-)(.-)b')\n"
    "stops('gsub', ('a'):rep(20000), '.-.-.-b', '')\n"
    "stops('gm', ('a'):rep(20000), '.-.-.-b')\n"
    "stops('find', ('('):rep(5000), '%b()%b()x')\n"
    "local big = ('x'):rep(1.5e7)\n"
    "reset(1e7) local t0 = clock() local ok, err = pcall(function() for i = 1, 1e9 do B.find(big, '[y]') end end)\n"
    "cases = cases + 1 if ok or not err:find('budget spent') or clock() - t0 > 2 then failures = failures + 1 print(('find over 15 MB not stopped in time: %s %s %.3f s'):format(tostring(ok), tostring(err), clock() - t0)) end\n"
    "reset(4e6) ok, err = pcall(function() for i = 1, 1e9 do B.find(big, 'y', 1, true) end end)\n"
    "cases = cases + 1 if ok or not err:find('budget spent') then failures = failures + 1 print('plain find not charged') end\n"
    "reset(1e12) local function f(s) return B.gsub('ab', '.', f) end\n"
    "ok, err = pcall(f, 'x')\n"
    "cases = cases + 1 if ok or not tostring(err):find('C stack depth limit', 1, true) then failures = failures + 1 print('gsub recursion: ' .. tostring(err)) end\n"
    "return failures, cases\n";

int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, SCRIPT, sizeof SCRIPT - 1, "=sandbox_strlib_test") != 0) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    return 1;
  }
  lua_newtable(L);
  herald_strlib_register(L, -1, &meter);
  lua_pushcfunction(L, l_reset);
  lua_pushcfunction(L, l_used);
  lua_pushcfunction(L, l_clock);
  if (lua_pcall(L, 4, 2, 0) != 0) {
    fprintf(stderr, "error: %s\n", lua_tostring(L, -1));
    return 1;
  }
  int failures = (int)lua_tointeger(L, -2), cases = (int)lua_tointeger(L, -1);
  /* rep refuses before allocating */
  mem_left = 1000;
  lua_getglobal(L, "pcall");
  lua_newtable(L);
  herald_strlib_register(L, -1, &meter);
  lua_getfield(L, -1, "rep");
  lua_remove(L, -2);
  lua_pushliteral(L, "x");
  lua_pushnumber(L, 1e9);
  lua_call(L, 3, 2);
  cases++;
  if (lua_toboolean(L, -2) || !strstr(lua_tostring(L, -1), "not enough memory: string.rep")) {
    failures++;
    printf("rep past the memory left: %s\n", lua_tostring(L, -1));
  }
  lua_close(L);
  printf("%d passed, %d failed\n", cases - failures, failures);
  return failures ? 1 : 0;
}
