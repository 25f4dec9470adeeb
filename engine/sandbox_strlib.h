/*
 * sandbox_strlib.h: the string functions user Lua gets in the sandbox, with every unit of work
 * metered.
 *
 * LuaJIT's own string.find/match/gmatch/gsub backtrack in C where no hook can interrupt them
 * (`("a"):rep(2e4):find(".-.-.-.-b")` runs for minutes), and gsub's callbacks recurse on the
 * C stack. These replacements give the same results as LuaJIT's (spec/c/sandbox_strlib_test.c
 * compares them on thousands of generated cases) but report their work to a meter every
 * HERALD_METER_STEPS steps, which can stop them by raising a Lua error, and count the depth of
 * C -> Lua callbacks. string.rep asks the meter how much memory is left before it allocates.
 */
#ifndef HERALD_SANDBOX_STRLIB_H
#define HERALD_SANDBOX_STRLIB_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

#define HERALD_METER_STEPS 4096

typedef struct herald_meter herald_meter;
struct herald_meter {
  /* Called with the steps done since the last call (about HERALD_METER_STEPS, more for a bulk
   * operation such as a plain find or a rep, which is charged before it runs). Raises a Lua
   * error (luaL_error) to stop the caller; returns normally to let it go on. */
  void (*charge)(lua_State *L, herald_meter *m, uint64_t steps);
  /* Bytes the state may still allocate; string.rep refuses a result that could not fit. */
  size_t (*mem_left)(herald_meter *m);
  /* Nested callbacks from metered C functions (gsub's function replacement, pcall) into Lua:
   * past max_depth the call fails with "C stack depth limit" instead of overflowing the
   * C stack. */
  int depth, max_depth;
};

/* Replaces find, match, gmatch, gsub and rep in the table at index idx with metered versions
 * bound to m (which must outlive every function registered here). stack: unchanged */
void herald_strlib_register(lua_State *L, int idx, herald_meter *m);

/* Enters one level of C -> Lua callback nesting; raises "C stack depth limit" past max_depth.
 * Pair each call with herald_meter_leave once the callback returned. */
void herald_meter_enter(lua_State *L, herald_meter *m);
static inline void herald_meter_leave(herald_meter *m) { m->depth--; }

#endif
