/*
 * regex.c: regular expressions for filters (Argo's data filters use Go's RE2, unanchored),
 * on PCRE2 with its JIT and a match limit so that no pattern can stall the loop.
 *
 *   core.regex_compile(pattern) -> re | nil, "message at offset N"
 *   re:find(subject) -> true | false [, err]     (false, "match limit exceeded" on runaway)
 *   re:match(subject [, init]) -> start, end, captures | nil [, err]
 *       1-based inclusive positions of the first match at or after byte `init`; captures is an
 *       array of the groups' strings (false for a group that did not take part)
 */
#include "lua_host.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <lauxlib.h>
#include <pcre2.h>
#include <string.h>

#define REGEX_MT "herald.regex"
#define MATCH_LIMIT 1000000
#define DEPTH_LIMIT 10000

typedef struct regex_ud {
  pcre2_code *code;
  pcre2_match_data *md;
} regex_ud;

static pcre2_match_context *mctx;

static int l_regex_compile(lua_State *L) {
  size_t len;
  const char *pat = luaL_checklstring(L, 1, &len);
  int errcode;
  PCRE2_SIZE erroff;
  pcre2_code *code = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_MATCH_INVALID_UTF,
                                   &errcode, &erroff, NULL);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(errcode, msg, sizeof msg);
    lua_pushnil(L);
    lua_pushfstring(L, "%s at offset %d", (const char *)msg, (int)erroff);
    return 2;
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if it can't */
  regex_ud *re = lua_newuserdata(L, sizeof *re);
  re->code = code;
  re->md = pcre2_match_data_create_from_pattern(code, NULL);
  luaL_getmetatable(L, REGEX_MT);
  lua_setmetatable(L, -2);
  return 1;
}

static int l_regex_find(lua_State *L) {
  regex_ud *re = luaL_checkudata(L, 1, REGEX_MT);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  if (!mctx) {
    mctx = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(mctx, MATCH_LIMIT);
    pcre2_set_depth_limit(mctx, DEPTH_LIMIT);
  }
  int rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, 0, 0, re->md, mctx);
  if (rc >= 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  if (rc == PCRE2_ERROR_NOMATCH) return 1;
  PCRE2_UCHAR msg[256];
  pcre2_get_error_message(rc, msg, sizeof msg);
  lua_pushstring(L, (const char *)msg);
  return 2;
}

static int l_regex_match(lua_State *L) {
  regex_ud *re = luaL_checkudata(L, 1, REGEX_MT);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  lua_Integer init = luaL_optinteger(L, 3, 1);
  if (init < 1) init = 1;
  if ((size_t)init > len + 1) return 0;
  if (!mctx) {
    mctx = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(mctx, MATCH_LIMIT);
    pcre2_set_depth_limit(mctx, DEPTH_LIMIT);
  }
  int rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, (PCRE2_SIZE)(init - 1), 0, re->md, mctx);
  if (rc < 0) {
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    lua_pushnil(L);
    lua_pushstring(L, (const char *)msg);
    return 2;
  }
  PCRE2_SIZE *ov = pcre2_get_ovector_pointer(re->md);
  uint32_t groups = pcre2_get_ovector_count(re->md);
  lua_pushinteger(L, (lua_Integer)ov[0] + 1);
  lua_pushinteger(L, (lua_Integer)ov[1]);
  uint32_t ncap = 0;
  pcre2_pattern_info(re->code, PCRE2_INFO_CAPTURECOUNT, &ncap);
  lua_createtable(L, (int)ncap, 0);
  for (uint32_t i = 1; i <= ncap; i++) {
    if (i < groups && ov[2 * i] != PCRE2_UNSET) lua_pushlstring(L, s + ov[2 * i], ov[2 * i + 1] - ov[2 * i]);
    else lua_pushboolean(L, 0);
    lua_rawseti(L, -2, (int)i);
  }
  return 3;
}

static int l_regex_gc(lua_State *L) {
  regex_ud *re = luaL_checkudata(L, 1, REGEX_MT);
  if (re->md) pcre2_match_data_free(re->md);
  if (re->code) pcre2_code_free(re->code);
  re->md = NULL;
  re->code = NULL;
  return 0;
}

void herald__lua_open_regex(lua_State *L) {
  /* stack: core -> core */
  if (luaL_newmetatable(L, REGEX_MT)) {
    lua_pushcfunction(L, l_regex_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushcfunction(L, l_regex_find);
    lua_setfield(L, -2, "find");
    lua_pushcfunction(L, l_regex_match);
    lua_setfield(L, -2, "match");
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_regex_compile);
  lua_setfield(L, -2, "regex_compile");
}
