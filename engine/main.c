/*
 * main.c: process entry. Everything the command line means is decided in Lua
 * (scripts/stdlib/herald/main.lua); C sets up the loop and the engine, hands argv over, and runs
 * the loop when the command asks for it (herald run).
 */
#include "common.h"
#include "engine.h"
#include "lua_host.h"

#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  uv_loop_t *loop = uv_default_loop();
  static herald_engine eng;
  if (herald_engine_init(&eng, loop, NULL) != 0) {
    fputs("herald: cannot initialise the engine\n", stderr);
    return 1;
  }
  lua_State *L = eng.L;
  /* stack: -> main(args) -> code, run */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "herald.main");
  int code = 1, run = 0;
  if (herald_lua_pcall(L, 1, 1, &eng.log, "loading herald.main") == 0) {
    lua_getfield(L, -1, "main");
    lua_remove(L, -2);
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i);
    }
    if (herald_lua_pcall(L, 1, 2, &eng.log, "herald") == 0) {
      code = (int)luaL_optinteger(L, -2, 0);
      run = lua_toboolean(L, -1);
      lua_pop(L, 2);
    }
  }
  if (run) {
    uv_run(loop, UV_RUN_DEFAULT);
    code = eng.exit_code;
    herald_log(&eng.log, HLOG_INFO, "herald stopped");
  } else {
    herald_engine_shutdown(&eng);
    uv_run(loop, UV_RUN_DEFAULT);
  }
  fflush(stdout);
  herald_engine_free(&eng);
  uv_loop_close(loop);
  return code;
}
