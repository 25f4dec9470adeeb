/*
 * fuzz_lua.h: what the Lua-side fuzz targets share: a Lua state made as the engine makes its
 * own (herald_lua_new: standard libraries, the compiled-in stdlib in package.preload, cjson),
 * and a runner that calls a harness function with each input and aborts on a finding.
 *
 * A harness is Lua source returning function(input) -> nil when all is well, or a string
 * describing a finding (an internal error, a broken invariant). An error raised out of the
 * harness is a finding too. fuzz_lua_internal(msg) in the harness environment tells a
 * module's own error ("gjson: ... at column 3") from an internal one ("herald/x.lua:12:
 * attempt to index a nil value"), see fuzz_lua.c.
 */
#ifndef HERALD_FUZZ_LUA_H
#define HERALD_FUZZ_LUA_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/* Loads the harness `src` (named `name`) into the process's state once. */
void fuzz_lua_init(const char *name, const char *src);
/* Runs the harness on data[0..size); aborts on a finding. */
void fuzz_lua_run(const uint8_t *data, size_t size);

#endif
