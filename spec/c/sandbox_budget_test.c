/*
 * sandbox_budget_test.c: one sandboxed call returns within its CPU budget plus a little,
 * whatever the script does. Each case runs with an instruction budget too large to matter, so
 * what stops it is the watchdog (CPU time, or twice the budget in wall time on a machine too
 * busy to run it) or the metered string functions. Measured around each call: at most the
 * budget + 10 ms of CPU (+ 20 ms slack: the watchdog's own wake-up can be late on a loaded
 * machine), and 2x the budget + 10 ms of wall time (+ 100 ms slack: on a loaded machine the
 * thread is descheduled between the stop and the return).
 */
#include "lua_host.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char SCRIPT[] =
    "local core, cpu, wall = ...\n"
    "local budget_ms = 100\n"
    "local cases = {\n"
    "  { 'loop', 'while true do end' },\n"
    "  { 'pcall loop', 'while true do pcall(function() while true do end end) end' },\n"
    "  { 'backtracking find', 'return string.find(string.rep(\"a\", 20000), \".-.-.-.-b\")' },\n"
    "  { 'star pattern', 'return string.find(string.rep(\"a\", 3000), string.rep(\"a*\", 8) .. \"b\")' },\n"
    "  { 'find over 7 MB', 'local s = (\"x\"):rep(7e6) for i = 1, 1e9 do s:find(\"[y]\") end' },\n"
    "  { 'plain find over 7 MB', 'local s = (\"x\"):rep(7e6) for i = 1, 1e9 do s:find(\"y\", 1, true) end' },\n"
    "  { 'compare 4 MB strings', 'local s = (\"x\"):rep(4e6) local t = s .. \"y\" for i = 1, 1e9 do local _ = s < t end' },\n"
    "  { 'gsub callback loop', 'string.gsub(\"abc\", \".\", function() while true do end end)' },\n"
    "  { 'sort comparator loop', 'local t = {3, 2, 1} table.sort(t, function() while true do end end)' },\n"
    "  { 'big sort', 'local t = {} for i = 1, 3e5 do t[i] = -i end table.sort(t)' },\n"
    "  { 'gmatch loop', 'for a in string.gmatch(string.rep(\"a\", 1e5), \"a\") do end while true do end' },\n"
    "  { 'insert far off', 'local t = {1, 2, 3} table.insert(t, -1e9, 0)' },\n"
    "  { 'hash growth', 'local t = {} for i = 1, 1e9 do t[\"k\" .. i] = i end' },\n"
    "  { 'tostring loop', 'local t = setmetatable({}, {__tostring = function() while true do end end}) return tostring(t)' },\n"
    "}\n"
    "local failures, n = 0, 0\n"
    "do -- a transform's result is JSON as cjson writes it; empty arrays stay arrays\n"
    "  local sb = core.sandbox_new{}\n"
    "  local cases = {  -- script, event, the top-level members expected (in any order)\n"
    "    { 'return event', '{\"e\":[],\"s\":\"[]\",\"n\":[[ ],{}],\"o\":{}}', { '\"e\":[]', '\"s\":\"[]\"', '\"n\":[[],{}]', '\"o\":{}' } },\n"
    "    { 'return { a = setmetatable({}, {__is_array = true}), b = {}, c = #event.e }', '{\"e\":[ ]}', { '\"a\":[]', '\"b\":{}', '\"c\":0' } },\n"
    "  }\n"
    "  for _, c in ipairs(cases) do\n"
    "    local json, err = sb:transform(assert(sb:compile(c[1], '=json')), c[2])\n"
    "    local ok, size = json ~= nil, 1\n"
    "    for _, m in ipairs(c[3]) do ok = ok and json:find(m, 1, true) ~= nil size = size + #m + 1 end\n"
    "    n = n + 1\n"
    "    if not ok or #json ~= size then failures = failures + 1 print('FAIL json ' .. c[1] .. ': ' .. tostring(json or err)) end\n"
    "  end\n"
    "end\n"
    "do -- the state's memory cap (32 MiB), with time enough to reach it\n"
    "  local sb = core.sandbox_new{ timeout_ms = 10000 }\n"
    "  local ok, err = sb:filter(assert(sb:compile('local t = {} while true do t[#t + 1] = string.rep(\"x\", 1048576 + #t) end', '=cap')), '{}')\n"
    "  n = n + 1\n"
    "  if ok or not tostring(err):find('not enough memory', 1, true) then failures = failures + 1 print('FAIL memory cap: ' .. tostring(err)) end\n"
    "  local ok2, passed = sb:filter(assert(sb:compile('return event.a == 1', '=after')), '{\"a\":1}')\n"
    "  n = n + 1\n"
    "  if not (ok2 and passed) then failures = failures + 1 print('FAIL the sandbox after the memory cap') end\n"
    "end\n"
    "do -- one value over 8 MiB is refused before it is built\n"
    "  local sb = core.sandbox_new{}\n"
    "  for _, src in ipairs{ 'return (\"x\"):rep(1.5e7)', 'local s = (\"x\"):rep(5e6) return s .. s', 'local t = {} for i = 1, 2e6 do t[i] = i end' } do\n"
    "    local ok, err = sb:filter(assert(sb:compile(src, '=big')), '{}')\n"
    "    n = n + 1\n"
    "    if ok or not tostring(err):find('not enough memory', 1, true) then failures = failures + 1 print('FAIL ' .. src .. ': ' .. tostring(err)) end\n"
    "  end\n"
    "end\n"
    "for _, c in ipairs(cases) do\n"
    "  local sb = core.sandbox_new{ timeout_ms = budget_ms, instructions = 1e15 }\n"
    "  local id = assert(sb:compile(c[2], '=' .. c[1]))\n"
    "  local t0, w0 = cpu(), wall()\n"
    "  local ok, err = sb:filter(id, '{}')\n"
    "  local ms, wall_ms = (cpu() - t0) * 1000, (wall() - w0) * 1000\n"
    "  n = n + 1\n"
    "  local stopped = ok == nil and tostring(err):find('exceeded its CPU budget', 1, true)\n"
    "  if not stopped or ms > budget_ms + 10 + 20 or wall_ms > 2 * budget_ms + 10 + 100 then\n"
    "    failures = failures + 1\n"
    "    print(('FAIL %s: %s %s after %.1f ms of CPU, %.1f ms'):format(c[1], tostring(ok), tostring(err), ms, wall_ms))\n"
    "  else\n"
    "    print(('ok   %s: stopped after %.1f ms of CPU, %.1f ms'):format(c[1], ms, wall_ms))\n"
    "  end\n"
    "  -- the state is usable afterwards\n"
    "  local id2 = assert(sb:compile('return event.a == 1', '=after'))\n"
    "  local ok2, passed = sb:filter(id2, '{\"a\":1}')\n"
    "  n = n + 1\n"
    "  if not (ok2 and passed) then failures = failures + 1 print('FAIL the sandbox after ' .. c[1]) end\n"
    "end\n"
    "return failures, n\n";

static int l_wall(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, ts.tv_sec + ts.tv_nsec / 1e9);
  return 1;
}

static int l_cpu(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  lua_pushnumber(L, ts.tv_sec + ts.tv_nsec / 1e9);
  return 1;
}

int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, SCRIPT, sizeof SCRIPT - 1, "=sandbox_budget_test") != 0) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    return 1;
  }
  lua_newtable(L);
  herald__lua_open_sandbox(L);
  lua_pushcfunction(L, l_cpu);
  lua_pushcfunction(L, l_wall);
  if (lua_pcall(L, 3, 2, 0) != 0) {
    fprintf(stderr, "error: %s\n", lua_tostring(L, -1));
    return 1;
  }
  int failures = (int)lua_tointeger(L, -2), n = (int)lua_tointeger(L, -1);
  lua_close(L);
  printf("%d passed, %d failed\n", n - failures, failures);
  return failures ? 1 : 0;
}
