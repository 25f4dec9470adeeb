/*
 * sandbox_strlib.c: metered string.find / match / gmatch / gsub / rep for the Lua sandbox.
 *
 * The matcher implements Lua 5.1's pattern language as LuaJIT 2.1 has it (classes %a %c %d %g
 * %l %p %s %u %w %x %z and their complements, sets, `%b`, `%f`, back-references, position
 * captures, at most 32 captures, 200 nested matches before "pattern too complex"), with the
 * same results and error messages. What it adds:
 *
 *   - a step counter: each pattern item tried at a subject position is a step; every
 *     HERALD_METER_STEPS steps the meter is charged and may stop the call with a Lua error, so
 *     backtracking that would run for minutes ends at the caller's budget;
 *   - bulk charges: a plain find or a rep is charged for its length before it runs;
 *   - callback depth: gsub with a function replacement counts the nesting of C -> Lua calls.
 *
 * Errors are raised with luaL_error from inside the matcher; it holds no heap memory of its
 * own (captures live in the match state on the C stack), so unwinding leaks nothing.
 */
#include "sandbox_strlib.h"

#include <lauxlib.h>
#include <string.h>

#define MAX_CAPTURES 32
#define MAX_MATCH_DEPTH 200
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)
#define ESC '%'

typedef struct match_state {
  const char *src, *src_end; /* the subject */
  const char *pat_end;
  lua_State *L;
  herald_meter *meter;
  uint32_t steps; /* since the last charge */
  int depth;      /* nested match() calls */
  int level;      /* captures opened */
  struct {
    const char *init;
    ptrdiff_t len; /* or CAP_UNFINISHED / CAP_POSITION */
  } capture[MAX_CAPTURES];
} match_state;

static inline void step(match_state *ms) {
  if (++ms->steps >= HERALD_METER_STEPS) {
    ms->meter->charge(ms->L, ms->meter, ms->steps);
    ms->steps = 0;
  }
}

/* The character classes, ASCII only (LuaJIT's are locale-independent). */
static int class_matches(int c, int cls) {
  int lower = cls | 0x20, r;
  switch (lower) {
  case 'a': r = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); break;
  case 'c': r = c < 32 || c == 127; break;
  case 'd': r = c >= '0' && c <= '9'; break;
  case 'g': r = c > 32 && c < 127; break;
  case 'l': r = c >= 'a' && c <= 'z'; break;
  case 'p': r = c > 32 && c < 127 && !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')); break;
  case 's': r = c == ' ' || (c >= '\t' && c <= '\r'); break;
  case 'u': r = c >= 'A' && c <= 'Z'; break;
  case 'w': r = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); break;
  case 'x': r = (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'); break;
  case 'z': r = c == 0; break;
  default: return cls == c; /* %. %% %( ...: the character itself */
  }
  if (cls >= 'A' && cls <= 'Z') r = !r;
  return r;
}

/* Returns the end of the single-character item at p: a class, a set or one character. */
static const char *item_end(match_state *ms, const char *p) {
  char c = *p++;
  if (c == ESC) {
    if (p >= ms->pat_end) luaL_error(ms->L, "malformed pattern (ends with '%%')");
    return p + 1;
  }
  if (c == '[') {
    if (p < ms->pat_end && *p == '^') p++;
    for (;;) { /* the first character of a set is never its end, so `[]]` is a set of ']' */
      if (p >= ms->pat_end) luaL_error(ms->L, "malformed pattern (missing ']')");
      c = *p++;
      if (c == ESC && p < ms->pat_end) p++;
      if (p >= ms->pat_end) luaL_error(ms->L, "malformed pattern (missing ']')");
      if (*p == ']') return p + 1;
    }
  }
  return p;
}

/* Does c belong to the set [p .. close], p at '[' and close at its ']'? */
static int set_matches(int c, const char *p, const char *close) {
  int in = 1;
  if (p[1] == '^') {
    in = 0;
    p++;
  }
  while (++p < close) {
    if (*p == ESC) {
      p++;
      if (class_matches(c, (unsigned char)*p)) return in;
    } else if (p[1] == '-' && p + 2 < close) {
      if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2]) return in;
      p += 2;
    } else if ((unsigned char)*p == c) {
      return in;
    }
  }
  return !in;
}

static int single_matches(match_state *ms, const char *s, const char *p, const char *ep) {
  if (s >= ms->src_end) return 0;
  int c = (unsigned char)*s;
  switch (*p) {
  case '.': return 1;
  case ESC: return class_matches(c, (unsigned char)p[1]);
  case '[': return set_matches(c, p, ep - 1);
  default: return (unsigned char)*p == c;
  }
}

static const char *do_match(match_state *ms, const char *s, const char *p);

static const char *match_balance(match_state *ms, const char *s, const char *p) {
  if (p + 1 >= ms->pat_end) luaL_error(ms->L, "unbalanced pattern");
  if (s >= ms->src_end || *s != p[0]) return NULL;
  char open = p[0], close = p[1];
  int depth = 1;
  while (++s < ms->src_end) {
    step(ms);
    if (*s == close) {
      if (--depth == 0) return s + 1;
    } else if (*s == open) {
      depth++;
    }
  }
  return NULL;
}

static const char *max_expand(match_state *ms, const char *s, const char *p, const char *ep) {
  ptrdiff_t n = 0;
  while (single_matches(ms, s + n, p, ep)) {
    step(ms);
    n++;
  }
  for (; n >= 0; n--) { /* the longest run first, then shorter ones */
    step(ms);
    const char *r = do_match(ms, s + n, ep + 1);
    if (r) return r;
  }
  return NULL;
}

static const char *min_expand(match_state *ms, const char *s, const char *p, const char *ep) {
  for (;;) {
    step(ms);
    const char *r = do_match(ms, s, ep + 1);
    if (r) return r;
    if (!single_matches(ms, s, p, ep)) return NULL;
    s++;
  }
}

static const char *open_capture(match_state *ms, const char *s, const char *p, ptrdiff_t what) {
  if (ms->level >= MAX_CAPTURES) luaL_error(ms->L, "too many captures");
  ms->capture[ms->level].init = s;
  ms->capture[ms->level].len = what;
  ms->level++;
  const char *r = do_match(ms, s, p);
  if (!r) ms->level--;
  return r;
}

static const char *close_capture(match_state *ms, const char *s, const char *p) {
  int l = ms->level - 1;
  while (l >= 0 && ms->capture[l].len != CAP_UNFINISHED) l--;
  if (l < 0) luaL_error(ms->L, "invalid pattern capture");
  ms->capture[l].len = s - ms->capture[l].init;
  const char *r = do_match(ms, s, p);
  if (!r) ms->capture[l].len = CAP_UNFINISHED;
  return r;
}

static int capture_index(match_state *ms, int c) {
  int l = c - '1';
  if (l < 0 || l >= ms->level || ms->capture[l].len == CAP_UNFINISHED)
    luaL_error(ms->L, "invalid capture index");
  return l;
}

static const char *match_backref(match_state *ms, const char *s, int c) {
  int l = capture_index(ms, c);
  ptrdiff_t len = ms->capture[l].len;
  if (len < 0) return NULL; /* a position capture matches no text */
  if (ms->src_end - s >= len && memcmp(ms->capture[l].init, s, (size_t)len) == 0) return s + len;
  return NULL;
}

/* Matches pattern p at subject position s; returns the end of the match or NULL. */
static const char *do_match(match_state *ms, const char *s, const char *p) {
  if (++ms->depth > MAX_MATCH_DEPTH) luaL_error(ms->L, "pattern too complex");
  const char *r;
  for (;;) {
    step(ms);
    if (p >= ms->pat_end) {
      r = s;
      break;
    }
    if (*p == '(') {
      r = (p + 1 < ms->pat_end && p[1] == ')') ? open_capture(ms, s, p + 2, CAP_POSITION)
                                                : open_capture(ms, s, p + 1, CAP_UNFINISHED);
      break;
    }
    if (*p == ')') {
      r = close_capture(ms, s, p + 1);
      break;
    }
    if (*p == '$' && p + 1 == ms->pat_end) {
      r = s == ms->src_end ? s : NULL;
      break;
    }
    if (*p == ESC && p + 1 < ms->pat_end) {
      char k = p[1];
      if (k == 'b') {
        s = match_balance(ms, s, p + 2);
        if (!s) {
          r = NULL;
          break;
        }
        p += 4;
        continue;
      }
      if (k == 'f') {
        p += 2;
        if (p >= ms->pat_end || *p != '[') luaL_error(ms->L, "missing '[' after '%%f' in pattern");
        const char *ep = item_end(ms, p);
        int prev = s == ms->src ? 0 : (unsigned char)s[-1];
        int cur = s < ms->src_end ? (unsigned char)*s : 0;
        if (!set_matches(prev, p, ep - 1) && set_matches(cur, p, ep - 1)) {
          p = ep;
          continue;
        }
        r = NULL;
        break;
      }
      if (k >= '0' && k <= '9') {
        s = match_backref(ms, s, (unsigned char)k);
        if (!s) {
          r = NULL;
          break;
        }
        p += 2;
        continue;
      }
    }
    /* a single-character item, maybe with a repetition suffix */
    const char *ep = item_end(ms, p);
    int m = single_matches(ms, s, p, ep);
    char suffix = ep < ms->pat_end ? *ep : '\0';
    if (suffix == '?') {
      if (m && (r = do_match(ms, s + 1, ep + 1)) != NULL) break;
      p = ep + 1;
      continue;
    }
    if (suffix == '*') {
      r = max_expand(ms, s, p, ep);
      break;
    }
    if (suffix == '+') {
      r = m ? max_expand(ms, s + 1, p, ep) : NULL;
      break;
    }
    if (suffix == '-') {
      r = min_expand(ms, s, p, ep);
      break;
    }
    if (!m) {
      r = NULL;
      break;
    }
    s++;
    p = ep;
  }
  ms->depth--;
  return r;
}

static void push_capture(match_state *ms, int i, const char *s, const char *e) {
  if (i >= ms->level) {
    if (i != 0) luaL_error(ms->L, "invalid capture index");
    lua_pushlstring(ms->L, s, (size_t)(e - s)); /* no captures: the whole match */
    return;
  }
  ptrdiff_t l = ms->capture[i].len;
  if (l == CAP_UNFINISHED) luaL_error(ms->L, "unfinished capture");
  if (l == CAP_POSITION) lua_pushinteger(ms->L, ms->capture[i].init - ms->src + 1);
  else lua_pushlstring(ms->L, ms->capture[i].init, (size_t)l);
}

/* Pushes the captures (or the whole match when there are none and s is given). */
static int push_captures(match_state *ms, const char *s, const char *e) {
  int n = (ms->level == 0 && s) ? 1 : ms->level;
  luaL_checkstack(ms->L, n, "too many captures");
  for (int i = 0; i < n; i++) push_capture(ms, i, s, e);
  return n;
}

static void ms_init(match_state *ms, lua_State *L, herald_meter *m, const char *s, size_t ls,
                    const char *p, size_t lp) {
  ms->src = s;
  ms->src_end = s + ls;
  ms->pat_end = p + lp;
  ms->L = L;
  ms->meter = m;
  ms->steps = 0;
  ms->depth = 0;
  ms->level = 0;
}

static void ms_done(match_state *ms) {
  if (ms->steps) ms->meter->charge(ms->L, ms->meter, ms->steps);
  ms->steps = 0;
}

static herald_meter *meter_of(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

/* A 1-based, possibly negative position to a 0-based offset, as Lua 5.1's posrelat. */
static ptrdiff_t rel_pos(lua_Integer pos, size_t len) {
  if (pos >= 0) return (ptrdiff_t)pos;
  if ((size_t)-pos > len) return 0;
  return (ptrdiff_t)len + (ptrdiff_t)pos + 1;
}

/* LuaJIT reads a pattern as a C string: it ends at the first NUL (use %z to match one). */
static size_t pattern_len(const char *p) { return strlen(p); }

static int has_specials(const char *p) { return strpbrk(p, "^$*+?.([%-") != NULL; }

static const char *find_plain(const char *s, size_t ls, const char *p, size_t lp) {
  if (lp == 0) return s;
  if (lp > ls) return NULL;
  const char *last = s + (ls - lp);
  for (const char *q = s; q <= last; q++) {
    q = memchr(q, p[0], (size_t)(last - q) + 1);
    if (!q) return NULL;
    if (memcmp(q + 1, p + 1, lp - 1) == 0) return q;
  }
  return NULL;
}

static int find_or_match(lua_State *L, int find) {
  herald_meter *m = meter_of(L);
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  ptrdiff_t init = rel_pos(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init < 0) init = 0;
  else if ((size_t)init > ls) init = (ptrdiff_t)ls;
  if (find && (lua_toboolean(L, 4) || !has_specials(p))) {
    m->charge(L, m, (ls - (size_t)init) / 8 + 1); /* memchr + memcmp: a few bytes per step */
    const char *q = find_plain(s + init, ls - (size_t)init, p, lp);
    if (!q) {
      lua_pushnil(L);
      return 1;
    }
    lua_pushinteger(L, q - s + 1);
    lua_pushinteger(L, q - s + (ptrdiff_t)lp);
    return 2;
  }
  match_state ms;
  lp = pattern_len(p);
  int anchor = lp > 0 && *p == '^';
  if (anchor) {
    p++;
    lp--;
  }
  ms_init(&ms, L, m, s, ls, p, lp);
  const char *s1 = s + init;
  do {
    ms.level = 0;
    ms.depth = 0;
    const char *e = do_match(&ms, s1, p);
    if (e) {
      ms_done(&ms);
      if (find) {
        lua_pushinteger(L, s1 - s + 1);
        lua_pushinteger(L, e - s);
        return push_captures(&ms, NULL, NULL) + 2;
      }
      return push_captures(&ms, s1, e);
    }
  } while (s1++ < ms.src_end && !anchor);
  ms_done(&ms);
  lua_pushnil(L);
  return 1;
}

static int s_find(lua_State *L) { return find_or_match(L, 1); }
static int s_match(lua_State *L) { return find_or_match(L, 0); }

/* gmatch's iterator. upvalues: meter, subject, pattern, next offset */
static int gmatch_next(lua_State *L) {
  herald_meter *m = meter_of(L);
  size_t ls, lp;
  const char *s = lua_tolstring(L, lua_upvalueindex(2), &ls);
  const char *p = lua_tolstring(L, lua_upvalueindex(3), &lp);
  lp = pattern_len(p);
  match_state ms;
  ms_init(&ms, L, m, s, ls, p, lp);
  for (const char *src = s + lua_tointeger(L, lua_upvalueindex(4)); src <= ms.src_end; src++) {
    ms.level = 0;
    ms.depth = 0;
    const char *e = do_match(&ms, src, p);
    if (e) {
      ms_done(&ms);
      lua_Integer next = e - s;
      if (e == src) next++; /* an empty match: move on one character */
      lua_pushinteger(L, next);
      lua_replace(L, lua_upvalueindex(4));
      return push_captures(&ms, src, e);
    }
  }
  ms_done(&ms);
  return 0;
}

static int s_gmatch(lua_State *L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, gmatch_next, 4);
  return 1;
}

/* Appends the replacement for match [s, e) to b. stack: ... -> ... (b's pieces) */
static void add_replacement(match_state *ms, luaL_Buffer *b, const char *s, const char *e) {
  lua_State *L = ms->L;
  switch (lua_type(L, 3)) {
  case LUA_TNUMBER:
  case LUA_TSTRING: {
    size_t l;
    const char *r = lua_tolstring(L, 3, &l);
    for (size_t i = 0; i < l; i++) {
      if (r[i] != ESC) {
        luaL_addchar(b, r[i]);
        continue;
      }
      i++; /* past the end this reads the terminating NUL, which is what Lua 5.1 adds */
      if (!(r[i] >= '0' && r[i] <= '9')) {
        luaL_addchar(b, r[i]);
      } else if (r[i] == '0') {
        luaL_addlstring(b, s, (size_t)(e - s));
      } else {
        push_capture(ms, r[i] - '1', s, e);
        luaL_addvalue(b);
      }
    }
    return;
  }
  case LUA_TFUNCTION: {
    herald_meter *m = ms->meter;
    lua_pushvalue(L, 3);
    int n = push_captures(ms, s, e);
    herald_meter_enter(L, m);
    lua_call(L, n, 1);
    herald_meter_leave(m);
    break;
  }
  default: /* a table, whose __index may be Lua that calls gsub again */
    push_capture(ms, 0, s, e);
    herald_meter_enter(L, ms->meter);
    lua_gettable(L, 3);
    herald_meter_leave(ms->meter);
    break;
  }
  if (!lua_toboolean(L, -1)) { /* nil or false: keep the matched text */
    lua_pop(L, 1);
    lua_pushlstring(L, s, (size_t)(e - s));
  } else if (!lua_isstring(L, -1)) {
    luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  }
  luaL_addvalue(b);
}

static int s_gsub(lua_State *L) {
  herald_meter *m = meter_of(L);
  size_t ls, lp;
  const char *src = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  int t = lua_type(L, 3);
  luaL_argcheck(L, t == LUA_TNUMBER || t == LUA_TSTRING || t == LUA_TTABLE || t == LUA_TFUNCTION,
                3, "string/function/table expected");
  lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
  lp = pattern_len(p);
  int anchor = lp > 0 && *p == '^';
  if (anchor) {
    p++;
    lp--;
  }
  match_state ms;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  ms_init(&ms, L, m, src, ls, p, lp);
  lua_Integer n = 0;
  while (n < max) {
    ms.level = 0;
    ms.depth = 0;
    const char *e = do_match(&ms, src, p);
    if (e) {
      n++;
      add_replacement(&ms, &b, src, e);
    }
    if (e && e > src) {
      src = e;
    } else if (src < ms.src_end) {
      luaL_addchar(&b, *src++);
    } else {
      break;
    }
    if (anchor) break;
  }
  ms_done(&ms);
  m->charge(L, m, (size_t)(ms.src_end - src) / 8 + 1);
  luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
  luaL_pushresult(&b);
  lua_pushinteger(L, n);
  return 2;
}

/* string.rep(s, n [, sep]): refused before allocating when the result could not fit, else
 * LuaJIT's own rep (upvalue 2), which builds the result in one buffer. */
static int s_rep(lua_State *L) {
  herald_meter *m = meter_of(L);
  size_t l, lsep = 0;
  luaL_checklstring(L, 1, &l);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_optlstring(L, 3, "", &lsep);
  if (n > 0) {
    double total = (double)l * (double)n + (double)lsep * (double)(n - 1);
    size_t left = m->mem_left(m);
    if (total > (double)left)
      return luaL_error(L, "not enough memory: string.rep would build %.0f bytes, and the sandbox has room for %d",
                        total, (int)(left > 0x7fffffff ? 0x7fffffff : left));
    m->charge(L, m, (uint64_t)(total / 8) + 1);
  }
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

void herald_meter_enter(lua_State *L, herald_meter *m) {
  if (m->depth >= m->max_depth)
    luaL_error(L, "C stack depth limit: more than %d nested calls through pcall, gsub, tostring or string.format", m->max_depth);
  m->depth++;
}

void herald_strlib_register(lua_State *L, int idx, herald_meter *m) {
  static const luaL_Reg fns[] = {{"find", s_find}, {"match", s_match}, {"gmatch", s_gmatch},
                                 {"gsub", s_gsub},   {NULL, NULL}};
  idx = idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
  for (const luaL_Reg *f = fns; f->name; f++) {
    lua_pushlightuserdata(L, m);
    lua_pushcclosure(L, f->func, 1);
    lua_setfield(L, idx, f->name);
  }
  /* rep wraps LuaJIT's own, read before anything replaced it. stack: -> meter rep -> */
  lua_pushlightuserdata(L, m);
  lua_getfield(L, LUA_GLOBALSINDEX, "string");
  if (lua_istable(L, -1)) lua_getfield(L, -1, "rep");
  else lua_pushnil(L);
  lua_remove(L, -2);
  if (!lua_isfunction(L, -1)) luaL_error(L, "herald_strlib_register: string.rep is missing");
  lua_pushcclosure(L, s_rep, 2);
  lua_setfield(L, idx, "rep");
}
