/*
 * lua_host.h: the engine's Lua state and the protected-call helper every C->Lua call uses.
 *
 * Why one shared state for sensors: the Lua that runs per event in the engine state is code
 * Herald generates from specs (filters, conditions, parameters), never user text, so there is
 * nothing to isolate it from; sharing lets one decoded event serve every sensor, and a compiled
 * sensor costs ~4 KB of Lua heap (1000 sensors: 4.1 MB heap after start-up) where a state of
 * its own costs ~46 KB more (bench/sensors-memory.sh; bench/RESULTS.md). User-written Lua
 * (script filters, later transforms) never runs here: it runs in a sandbox state per sensor
 * (sandbox.c), created only for sensors that have scripts, with its own memory cap and CPU
 * budget, so one sensor's script can neither see, corrupt nor starve another's. Isolation is
 * what the extra ~46 KB per scripted sensor buys.
 */
#ifndef HERALD_LUA_HOST_H
#define HERALD_LUA_HOST_H

#include "log.h"

#include <lua.h>

typedef struct herald_engine herald_engine;

/* Returns a new trusted state: standard libraries, the stdlib modules in package.preload
 * ("herald.*"), cjson, and herald.core bound to eng. NULL when out of memory. */
lua_State *herald_lua_new(herald_engine *eng);

/* Registers the compiled-in stdlib modules (and cjson) in package.preload of L. */
void herald_lua_preload_stdlib(lua_State *L);

/* lua_pcall with a traceback. On error logs "<what>: <message + traceback>" with lg, pops
 * the error and returns HERALD_ELUA; on success leaves nresults values. stack: f args -> results */
int herald_lua_pcall(lua_State *L, int nargs, int nresults, const herald_logger *lg,
                     const char *what);

/* Opens herald.core (the C functions the stdlib calls) for eng; defined in core.c.
 * stack: -> core table */
int herald_lua_open_core(lua_State *L);

/* Add core.regex_* (regex.c) and core.sandbox_* (sandbox.c). stack: core -> core */
void herald__lua_open_regex(lua_State *L);
void herald__lua_open_sandbox(lua_State *L);
void herald__lua_open_jq(lua_State *L);
void herald__lua_open_time(lua_State *L);
void herald__lua_open_repl(lua_State *L);
void herald__lua_open_admin(lua_State *L);
/* Closes the conditionsReset timers (lua_time.c), at shutdown. */
void herald__cron_timers_close(void);

#endif
