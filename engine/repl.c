/*
 * repl.c: line editing for `herald repl` on libedit (placeholder; being written).
 */
#include "lua_host.h"

void herald__lua_open_repl(lua_State *L) {
  (void)L;
}
