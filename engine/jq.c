/*
 * jq.c: jq transforms (Argo's `transform.jq`, run with gojq there) on libjq.
 *
 *   core.jq_compile(program) -> jq | nil, err      (compile errors as jq reports them)
 *   jq:run(json_text) -> json_text | nil, err
 *       the first output of the program on the input; it must be an object, as in Argo
 *
 * One jq_state per program, compiled once when the sensor loads and reused for every event
 * (jq_start resets it). Programs come from the Sensor spec, not from events; libjq has no way
 * to interrupt a program, so a spec author's endless `repeat` would stall the loop (see
 * docs/compat.md).
 */
#include "buf.h"
#include "lua_host.h"

#include <jq.h>
#include <lauxlib.h>
#include <string.h>

#define JQ_MT "herald.jq"

typedef struct jq_ud {
  jq_state *jq;
  herald_buf errors; /* messages from the error callback during compile/run */
} jq_ud;

static void on_error(void *data, jv msg) {
  jq_ud *u = data;
  if (jv_get_kind(msg) == JV_KIND_STRING) {
    if (u->errors.len) herald_buf_puts(&u->errors, "; ");
    herald_buf_puts(&u->errors, jv_string_value(msg));
  }
  jv_free(msg);
}

static int l_jq_compile(lua_State *L) {
  const char *program = luaL_checkstring(L, 1);
  jq_ud *u = lua_newuserdata(L, sizeof *u);
  memset(u, 0, sizeof *u);
  luaL_getmetatable(L, JQ_MT);
  lua_setmetatable(L, -2);
  u->jq = jq_init();
  if (!u->jq) return luaL_error(L, "jq: cannot initialise");
  jq_set_error_cb(u->jq, on_error, u);
  if (!jq_compile(u->jq, program)) {
    lua_pushnil(L);
    lua_pushstring(L, u->errors.len ? herald_buf_cstr(&u->errors) : "jq: compile error");
    return 2;
  }
  return 1;
}

static int l_jq_run(lua_State *L) {
  jq_ud *u = luaL_checkudata(L, 1, JQ_MT);
  size_t len;
  const char *text = luaL_checklstring(L, 2, &len);
  herald_buf_reset(&u->errors);
  jv input = jv_parse_sized(text, (int)len);
  if (!jv_is_valid(input)) {
    jv msg = jv_invalid_get_msg(input);
    lua_pushnil(L);
    lua_pushfstring(L, "jq: invalid input: %s",
                    jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "?");
    jv_free(msg);
    return 2;
  }
  jq_start(u->jq, input, 0);
  jv out = jq_next(u->jq);
  int nret;
  if (jv_is_valid(out)) {
    if (jv_get_kind(out) != JV_KIND_OBJECT) {
      lua_pushnil(L);
      lua_pushfstring(L, "jq: the first output is %s, not an object",
                      jv_kind_name(jv_get_kind(out)));
      jv_free(out);
      nret = 2;
    } else {
      jv s = jv_dump_string(out, 0);
      lua_pushstring(L, jv_string_value(s));
      jv_free(s);
      nret = 1;
    }
  } else {
    jv msg = jv_invalid_has_msg(jv_copy(out)) ? jv_invalid_get_msg(out) : (jv_free(out), jv_null());
    lua_pushnil(L);
    if (jv_get_kind(msg) == JV_KIND_STRING) lua_pushfstring(L, "jq: %s", jv_string_value(msg));
    else if (u->errors.len) lua_pushfstring(L, "jq: %s", herald_buf_cstr(&u->errors));
    else lua_pushliteral(L, "jq: the program produced no output");
    jv_free(msg);
    nret = 2;
  }
  /* drain nothing more: the next jq_start resets the state */
  return nret;
}

static int l_jq_gc(lua_State *L) {
  jq_ud *u = luaL_checkudata(L, 1, JQ_MT);
  if (u->jq) jq_teardown(&u->jq);
  herald_buf_free(&u->errors);
  return 0;
}

void herald__lua_open_jq(lua_State *L) {
  /* stack: core -> core */
  if (luaL_newmetatable(L, JQ_MT)) {
    lua_pushcfunction(L, l_jq_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, l_jq_run);
    lua_setfield(L, -2, "run");
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_jq_compile);
  lua_setfield(L, -2, "jq_compile");
}
