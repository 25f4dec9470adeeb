/*
 * lua_host.c: creating the engine's Lua state, the compiled-in stdlib, and the one
 * protected-call helper every C->Lua call goes through (Neovim's nlua_pcall pattern).
 */
#include "lua_host.h"
#include "common.h"
#include "engine.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <string.h>

#include <lua5.1/lua-cjson.h>

struct herald_stdlib_module {
  const char *name;
  const char *chunk;
  const unsigned char *code;
  size_t size;
};
extern const struct herald_stdlib_module herald_stdlib_modules[];

/* package.preload loader for one stdlib module: upvalue 1 is its index.
 * stack: name -> module */
static int load_stdlib_module(lua_State *L) {
  const struct herald_stdlib_module *m = &herald_stdlib_modules[lua_tointeger(L, lua_upvalueindex(1))];
  if (luaL_loadbuffer(L, (const char *)m->code, m->size, m->chunk) != 0) return lua_error(L);
  lua_pushstring(L, m->name);
  lua_call(L, 1, 1);
  return 1;
}

void herald_lua_preload_stdlib(lua_State *L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  for (int i = 0; herald_stdlib_modules[i].name; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, load_stdlib_module, 1);
    lua_setfield(L, -2, herald_stdlib_modules[i].name);
  }
  lua_pushcfunction(L, luaopen_cjson);
  lua_setfield(L, -2, "cjson");
  lua_pushcfunction(L, herald_lua_open_core);
  lua_setfield(L, -2, "herald.core");
  lua_pop(L, 2);
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_type(L, 1) == LUA_TNIL ? "nil error" : "(error object is not a string)";
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int herald_lua_pcall(lua_State *L, int nargs, int nresults, const herald_logger *lg,
                     const char *what) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int r = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (r == 0) return 0;
  size_t len = 0;
  const char *msg = lua_tolstring(L, -1, &len);
  if (len > 4096) len = 4096; /* cap what a hostile value can put in the log */
  herald_log(lg, HLOG_ERROR, "%s: %.*s", what ? what : "lua", (int)len, msg ? msg : "?");
  lua_pop(L, 1);
  return HERALD_ELUA;
}

lua_State *herald_lua_new(herald_engine *eng) {
  lua_State *L = luaL_newstate();
  if (!L) return NULL;
  luaL_openlibs(L); /* trusted state: Herald's own and generated code only (see lua_host.h) */
  herald_lua_preload_stdlib(L);
  /* Modules come from the binary only: never from files near the working directory. */
  lua_getglobal(L, "package");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  lua_pushlightuserdata(L, eng);
  lua_setfield(L, LUA_REGISTRYINDEX, "herald.engine");
  return L;
}

herald_engine *herald_engine_from_lua(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, "herald.engine");
  herald_engine *eng = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return eng;
}
