/*
 * yaml.c: YAML text -> plain Lua tables, with every position kept in a side table.
 *
 *   text --libyaml parser events--> parse_node() (recursive descent over events)
 *                                      |-- pushes the Lua value of each node
 *                                      |-- pos[tbl] = {line, col, keys|items, order}
 *                                      \-- anchors[name] = {value, text, nodes}
 *
 * Typing follows the YAML 1.2 core schema, which is what a Kubernetes manifest author
 * expects (sigs.k8s.io/yaml): plain true/false -> boolean, plain integers and floats ->
 * number, plain null/~/empty -> absent, everything quoted or block-styled -> string. The
 * original text of a plain scalar typed as a number or boolean is kept in pos (`text`) so
 * the loader can turn `port: 08080` back into the string the user wrote (Argo's port is a
 * string, and sigs.k8s.io/yaml converts a number to text when the Go field is a string).
 * Keys are always strings (their source text). Merge keys (`<<: *base`) are honoured, as
 * go-yaml does. Aliases return the very same Lua value as their anchor; the number of nodes
 * aliases expand to is capped so a "billion laughs" file fails fast instead of making every
 * later tree walk exponential.
 *
 * Each call is bounded (yaml.h): bytes of text, documents, and nodes including what aliases
 * expand to, so a 10 MB generated spec is refused in milliseconds at the position where it
 * crosses a limit instead of becoming gigabytes of tables.
 *
 * libyaml state lives in a userdata with __gc, so a Lua error (out of memory) raised in the
 * middle of parsing cannot leak the parser or the current event.
 */
#define HERALD_YAML_WANT_LIBYAML
#include <yaml.h> /* engine/yaml.h, which pulls libyaml's yaml.h in after it (see there) */
#ifndef YAML_H
#error "libyaml's yaml.h was not included: compile with -I engine before the system paths"
#endif

#include <lauxlib.h>

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOADER_MT "herald.yaml_loader"

typedef struct {
  yaml_parser_t parser;
  yaml_event_t ev;
  int parser_ok; /* parser initialised: delete it */
  int have_ev;   /* ev holds an event: delete it */
} yaml_loader;

typedef struct {
  lua_State *L;
  yaml_loader *ld;
  const char *file;
  const char *text;
  size_t text_len;
  int pos_idx;     /* absolute stack index of the pos side table */
  int anchors_idx; /* absolute stack index of this document's anchors */
  long alias_nodes;
  long nodes, max_nodes; /* nodes loaded so far, and the most this call may load */
  long nodes_limit;      /* the limit as the user set it, for messages (a caller may pass
                          * what is left of a budget spread over many files) */
  const char *limit;     /* the limit that failed the load (a static string), or NULL */
  int depth;
  char err[768];
} ctx;

static int loader_gc(lua_State *L) {
  yaml_loader *ld = luaL_checkudata(L, 1, LOADER_MT);
  if (ld->have_ev) yaml_event_delete(&ld->ev);
  if (ld->parser_ok) yaml_parser_delete(&ld->parser);
  ld->have_ev = ld->parser_ok = 0;
  return 0;
}

static int fail(ctx *c, size_t line0, size_t col0, const char *fmt, ...) {
  int n = snprintf(c->err, sizeof c->err, "%s:%lu:%lu: ", c->file, (unsigned long)line0 + 1,
                   (unsigned long)col0 + 1);
  if (n < 0 || (size_t)n >= sizeof c->err) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->err + n, sizeof c->err - (size_t)n, fmt, ap);
  va_end(ap);
  return -1;
}

/* Counts one more node (n for an alias) against the nodes limit; fails at mark m past it. */
static int count_nodes(ctx *c, long n, yaml_mark_t m) {
  c->nodes += n;
  if (c->nodes <= c->max_nodes) return 0;
  c->limit = "nodes";
  return fail(c, m.line, m.column,
              "more than %ld YAML nodes (scalars, keys, mappings, sequences and what aliases "
              "expand to) in one load (limit \"nodes\")",
              c->nodes_limit);
}

/* 0-based line and column of byte offset off in the text (reader errors carry no mark). */
static void offset_to_mark(const ctx *c, size_t off, size_t *line, size_t *col) {
  size_t l = 0, start = 0;
  if (off > c->text_len) off = c->text_len;
  for (size_t i = 0; i < off; i++) {
    if (c->text[i] == '\n') {
      l++;
      start = i + 1;
    }
  }
  *line = l;
  *col = off - start;
}

static int parser_fail(ctx *c) {
  yaml_parser_t *p = &c->ld->parser;
  const char *problem = p->problem ? p->problem : "invalid YAML";
  if (p->error == YAML_READER_ERROR) {
    size_t line, col;
    offset_to_mark(c, p->problem_offset, &line, &col);
    return fail(c, line, col, "%s", problem);
  }
  if (p->error == YAML_MEMORY_ERROR) return fail(c, 0, 0, "out of memory while parsing");
  yaml_mark_t pm = p->problem_mark, cm = p->context_mark;
  const char *hint = "";
  if (pm.index < c->text_len && c->text[pm.index] == '\t')
    hint = " (a tab character; YAML indentation must use spaces)";
  if (p->context && (cm.line != pm.line || cm.column != pm.column))
    return fail(c, pm.line, pm.column, "%s%s %s (started at line %lu, column %lu)", problem,
                hint, p->context, (unsigned long)cm.line + 1, (unsigned long)cm.column + 1);
  if (p->context) return fail(c, pm.line, pm.column, "%s%s %s", problem, hint, p->context);
  return fail(c, pm.line, pm.column, "%s%s", problem, hint);
}

/* Replaces the current event with the next one. */
static int next_event(ctx *c) {
  yaml_loader *ld = c->ld;
  if (ld->have_ev) {
    yaml_event_delete(&ld->ev);
    ld->have_ev = 0;
  }
  if (!yaml_parser_parse(&ld->parser, &ld->ev)) return parser_fail(c);
  ld->have_ev = 1;
  return 0;
}

/* ---- scalar typing (YAML 1.2 core schema) ---- */

static int is_null(const char *s, size_t n) {
  return n == 0 || (n == 1 && s[0] == '~') ||
         (n == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) || !memcmp(s, "NULL", 4)));
}

/* Returns 1 for true, 0 for false, -1 for not a boolean. */
static int as_bool(const char *s, size_t n) {
  if (n == 4 && (!memcmp(s, "true", 4) || !memcmp(s, "True", 4) || !memcmp(s, "TRUE", 4)))
    return 1;
  if (n == 5 && (!memcmp(s, "false", 5) || !memcmp(s, "False", 5) || !memcmp(s, "FALSE", 5)))
    return 0;
  return -1;
}

static int all_in(const char *s, size_t n, const char *set) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if (!strchr(set, s[i]) || s[i] == '\0') return 0;
  return 1;
}

/* Parses s as a core-schema int or float into *out; returns 1 on success. */
static int as_number(const char *s, size_t n, double *out) {
  if (n == 0 || n > 64) return 0;
  char buf[72];
  memcpy(buf, s, n);
  buf[n] = '\0';
  const char *p = buf;
  size_t m = n;
  int neg = 0;
  if (*p == '-' || *p == '+') {
    neg = *p == '-';
    p++;
    m--;
  }
  /* 0o17 and 0x1F take no sign in the core schema */
  if (p == buf && m > 2 && p[0] == '0' && p[1] == 'o' && all_in(p + 2, m - 2, "01234567")) {
    *out = (double)strtoull(p + 2, NULL, 8);
    return 1;
  }
  if (p == buf && m > 2 && p[0] == '0' && p[1] == 'x' &&
      all_in(p + 2, m - 2, "0123456789abcdefABCDEF")) {
    *out = (double)strtoull(p + 2, NULL, 16);
    return 1;
  }
  if (m == 4 && p[0] == '.' &&
      (!strcmp(p + 1, "inf") || !strcmp(p + 1, "Inf") || !strcmp(p + 1, "INF"))) {
    *out = neg ? -HUGE_VAL : HUGE_VAL;
    return 1;
  }
  if (p == buf && m == 4 &&
      (!strcmp(p, ".nan") || !strcmp(p, ".NaN") || !strcmp(p, ".NAN"))) {
    *out = NAN;
    return 1;
  }
  /* [0-9]+ ( . [0-9]* )? | . [0-9]+ , then ( [eE] [-+]? [0-9]+ )? */
  size_t i = 0, digits = 0;
  while (i < m && p[i] >= '0' && p[i] <= '9') i++, digits++;
  if (i < m && p[i] == '.') {
    i++;
    while (i < m && p[i] >= '0' && p[i] <= '9') i++, digits++;
  }
  if (digits == 0) return 0;
  if (i < m && (p[i] == 'e' || p[i] == 'E')) {
    i++;
    if (i < m && (p[i] == '-' || p[i] == '+')) i++;
    size_t ed = 0;
    while (i < m && p[i] >= '0' && p[i] <= '9') i++, ed++;
    if (ed == 0) return 0;
  }
  if (i != m) return 0;
  errno = 0;
  *out = strtod(buf, NULL);
  return 1;
}

#define TAG_PREFIX "tag:yaml.org,2002:"

/* Pushes the value of the current scalar event and its text (or nil when the value is a
 * string or null). Returns 0, or -1 with c->err set.
 * stack: -> value text */
static int push_scalar(ctx *c) {
  lua_State *L = c->L;
  yaml_event_t *ev = &c->ld->ev;
  const char *s = (const char *)ev->data.scalar.value;
  size_t n = ev->data.scalar.length;
  const char *tag = (const char *)ev->data.scalar.tag;
  int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && ev->data.scalar.plain_implicit;
  const char *want = NULL; /* "str", "null", "bool", "int", "float" or NULL (resolve) */
  if (tag && strcmp(tag, "!") != 0) {
    if (!strncmp(tag, TAG_PREFIX, sizeof TAG_PREFIX - 1)) {
      const char *t = tag + sizeof TAG_PREFIX - 1;
      if (!strcmp(t, "null") || !strcmp(t, "bool") || !strcmp(t, "int") || !strcmp(t, "float"))
        want = t;
      else
        want = "str"; /* !!str, !!binary, !!timestamp: keep the text */
    } else {
      want = "str"; /* application tags: keep the text */
    }
  } else if (!plain) {
    want = "str";
  }
  if (want && !strcmp(want, "str")) {
    lua_pushlstring(L, s, n);
    lua_pushnil(L);
    return 0;
  }
  if ((!want || !strcmp(want, "null")) && is_null(s, n)) {
    lua_pushnil(L);
    lua_pushnil(L);
    return 0;
  }
  if (!want || !strcmp(want, "bool")) {
    int b = as_bool(s, n);
    if (b >= 0) {
      lua_pushboolean(L, b);
      lua_pushlstring(L, s, n);
      return 0;
    }
  }
  if (!want || !strcmp(want, "int") || !strcmp(want, "float")) {
    double d;
    if (as_number(s, n, &d)) {
      lua_pushnumber(L, d);
      lua_pushlstring(L, s, n);
      return 0;
    }
  }
  if (want)
    return fail(c, ev->start_mark.line, ev->start_mark.column, "\"%.*s\" is not a valid !!%s",
                (int)(n > 60 ? 60 : n), s, want);
  lua_pushlstring(L, s, n);
  lua_pushnil(L);
  return 0;
}

/* ---- helpers on the Lua side ---- */

/* stack: -> {line=, col=} */
static void push_mark(lua_State *L, yaml_mark_t m) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)m.line + 1);
  lua_setfield(L, -2, "line");
  lua_pushinteger(L, (lua_Integer)m.column + 1);
  lua_setfield(L, -2, "col");
}

/* Registers the value at value_idx (and its text at value_idx+1) under the anchor string at
 * anchor_idx, when there is one. stack: unchanged */
static void register_anchor(ctx *c, int anchor_idx, int value_idx, long nodes) {
  lua_State *L = c->L;
  if (lua_isnil(L, anchor_idx)) return;
  lua_pushvalue(L, anchor_idx);
  lua_createtable(L, 3, 0);
  lua_pushvalue(L, value_idx);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, value_idx + 1);
  lua_rawseti(L, -2, 2);
  lua_pushnumber(L, (lua_Number)nodes);
  lua_rawseti(L, -2, 3);
  lua_rawset(L, c->anchors_idx);
}

/* stack: -> anchor-or-nil */
static void push_anchor(lua_State *L, const yaml_char_t *anchor) {
  if (anchor)
    lua_pushstring(L, (const char *)anchor);
  else
    lua_pushnil(L);
}

static int parse_node(ctx *c, long *nodes);

/* Copies the keys of mapping src (at src_idx) that tbl (at t_idx) does not have yet: the
 * merge-key rule (explicit keys win, earlier merged mappings win over later ones). Keys
 * taken this way are recorded in the table at merged_idx so an explicit key may override
 * them. stack: unchanged */
static int merge_from(ctx *c, int t_idx, int keys_idx, int order_idx, int merged_idx,
                      int src_idx, yaml_mark_t at) {
  lua_State *L = c->L;
  lua_pushvalue(L, src_idx);
  lua_rawget(L, c->pos_idx); /* src pos record or nil */
  if (lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 1);
    return fail(c, at.line, at.column, "a merge key (<<) needs a mapping to merge");
  }
  lua_getfield(L, -1, "keys");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 2);
    return fail(c, at.line, at.column, "a merge key (<<) needs a mapping to merge, not a sequence");
  }
  lua_getfield(L, -2, "order");
  int srckeys = lua_gettop(L) - 1, srcorder = lua_gettop(L);
  size_t n = lua_objlen(L, srcorder);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, srcorder, (int)i); /* key */
    lua_pushvalue(L, -1);
    lua_rawget(L, keys_idx);
    int present = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!present) {
      lua_pushvalue(L, -1);
      lua_pushvalue(L, -1);
      lua_rawget(L, srckeys);
      lua_rawset(L, keys_idx); /* keys[k] = srckeys[k] */
      lua_pushvalue(L, -1);
      lua_rawseti(L, order_idx, (int)lua_objlen(L, order_idx) + 1);
      lua_pushvalue(L, -1);
      lua_pushvalue(L, -1);
      lua_rawget(L, src_idx);
      lua_rawset(L, t_idx); /* tbl[k] = src[k] */
      lua_pushvalue(L, -1);
      lua_pushboolean(L, 1);
      lua_rawset(L, merged_idx);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 3);
  return 0;
}

/* Pushes a new node table and its position table {line, col} with room for nrec fields;
 * returns the position table's index. stack: -> tbl pos */
static int push_node(lua_State *L, yaml_mark_t start, int nrec) {
  lua_newtable(L);
  lua_createtable(L, 0, nrec);
  int p_idx = lua_gettop(L);
  lua_pushinteger(L, (lua_Integer)start.line + 1);
  lua_setfield(L, p_idx, "line");
  lua_pushinteger(L, (lua_Integer)start.column + 1);
  lua_setfield(L, p_idx, "col");
  return p_idx;
}

/* The current event is MAPPING_START. stack: -> tbl nil */
static int parse_mapping(ctx *c, long *nodes) {
  lua_State *L = c->L;
  yaml_event_t *ev = &c->ld->ev;
  yaml_mark_t start = ev->start_mark;
  push_anchor(L, ev->data.mapping_start.anchor);
  int anchor_idx = lua_gettop(L);
  int p_idx = push_node(L, start, 5);
  int t_idx = p_idx - 1;
  lua_newtable(L);
  int keys_idx = lua_gettop(L);
  lua_pushvalue(L, keys_idx);
  lua_setfield(L, p_idx, "keys");
  lua_newtable(L);
  int order_idx = lua_gettop(L);
  lua_pushvalue(L, order_idx);
  lua_setfield(L, p_idx, "order");
  lua_newtable(L); /* keys that came from a merge (<<) and may be overridden */
  int merged_idx = lua_gettop(L);
  lua_pushvalue(L, t_idx);
  lua_pushvalue(L, p_idx);
  lua_rawset(L, c->pos_idx);
  long total = 1;

  for (;;) {
    if (next_event(c)) return -1;
    if (ev->type == YAML_MAPPING_END_EVENT) break;
    yaml_mark_t km = ev->start_mark;
    int is_merge = 0;
    if (count_nodes(c, 1, km)) return -1;
    if (ev->type == YAML_SCALAR_EVENT) {
      const char *s = (const char *)ev->data.scalar.value;
      size_t n = ev->data.scalar.length;
      is_merge = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && n == 2 && !memcmp(s, "<<", 2);
      lua_pushlstring(L, s, n);
      if (ev->data.scalar.anchor) {
        lua_pushstring(L, (const char *)ev->data.scalar.anchor);
        lua_pushvalue(L, -2);
        lua_pushnil(L);
        register_anchor(c, lua_gettop(L) - 2, lua_gettop(L) - 1, 1);
        lua_pop(L, 3);
      }
    } else if (ev->type == YAML_ALIAS_EVENT) {
      lua_pushstring(L, (const char *)ev->data.alias.anchor);
      lua_rawget(L, c->anchors_idx);
      if (lua_isnil(L, -1))
        return fail(c, km.line, km.column, "unknown anchor \"%s\"", ev->data.alias.anchor);
      lua_rawgeti(L, -1, 2); /* text of a number/bool */
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_rawgeti(L, -1, 1);
      }
      if (lua_type(L, -1) != LUA_TSTRING)
        return fail(c, km.line, km.column, "a mapping key must be a scalar, not *%s",
                    ev->data.alias.anchor);
      lua_remove(L, -2);
    } else {
      return fail(c, km.line, km.column, "a mapping key must be a scalar");
    }
    int key_idx = lua_gettop(L);
    if (next_event(c)) return -1;
    yaml_mark_t vm = ev->start_mark;
    long child = 0;
    if (parse_node(c, &child)) return -1;
    total += child;
    int v_idx = key_idx + 1; /* v_idx + 1 holds the text */
    if (is_merge) {
      int is_seq = 0;
      lua_pushvalue(L, v_idx);
      lua_rawget(L, c->pos_idx);
      if (lua_type(L, -1) == LUA_TTABLE) {
        lua_getfield(L, -1, "items");
        is_seq = !lua_isnil(L, -1);
      }
      lua_settop(L, v_idx + 1);
      if (is_seq) {
        size_t n = lua_objlen(L, v_idx);
        for (size_t i = 1; i <= n; i++) {
          lua_rawgeti(L, v_idx, (int)i);
          if (merge_from(c, t_idx, keys_idx, order_idx, merged_idx, lua_gettop(L), km)) return -1;
          lua_pop(L, 1);
        }
      } else if (merge_from(c, t_idx, keys_idx, order_idx, merged_idx, v_idx, km)) {
        return -1;
      }
      lua_settop(L, key_idx - 1);
      continue;
    }
    lua_pushvalue(L, key_idx);
    lua_rawget(L, keys_idx);
    if (!lua_isnil(L, -1)) {
      lua_pushvalue(L, key_idx);
      lua_rawget(L, merged_idx);
      int was_merged = !lua_isnil(L, -1);
      lua_pop(L, 1);
      if (!was_merged) {
        lua_getfield(L, -1, "line");
        long first = (long)lua_tointeger(L, -1);
        return fail(c, km.line, km.column, "duplicate key \"%s\" (first defined at line %ld)",
                    lua_tostring(L, key_idx), first);
      }
      lua_pushvalue(L, key_idx);
      lua_pushnil(L);
      lua_rawset(L, merged_idx);
    } else {
      lua_pushvalue(L, key_idx);
      lua_rawseti(L, order_idx, (int)lua_objlen(L, order_idx) + 1);
    }
    lua_pop(L, 1);
    /* keys[key] = {line, col, vline, vcol, text} */
    lua_pushvalue(L, key_idx);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)km.line + 1);
    lua_setfield(L, -2, "line");
    lua_pushinteger(L, (lua_Integer)km.column + 1);
    lua_setfield(L, -2, "col");
    lua_pushinteger(L, (lua_Integer)vm.line + 1);
    lua_setfield(L, -2, "vline");
    lua_pushinteger(L, (lua_Integer)vm.column + 1);
    lua_setfield(L, -2, "vcol");
    lua_pushvalue(L, v_idx + 1);
    lua_setfield(L, -2, "text");
    lua_rawset(L, keys_idx);
    /* tbl[key] = value (nil removes a merged value) */
    lua_pushvalue(L, key_idx);
    lua_pushvalue(L, v_idx);
    lua_rawset(L, t_idx);
    lua_settop(L, key_idx - 1);
  }
  lua_settop(L, t_idx);
  lua_pushnil(L);
  register_anchor(c, anchor_idx, t_idx, total);
  lua_remove(L, anchor_idx);
  *nodes = total;
  return 0;
}

/* The current event is SEQUENCE_START. stack: -> tbl nil */
static int parse_sequence(ctx *c, long *nodes) {
  lua_State *L = c->L;
  yaml_event_t *ev = &c->ld->ev;
  yaml_mark_t start = ev->start_mark;
  push_anchor(L, ev->data.sequence_start.anchor);
  int anchor_idx = lua_gettop(L);
  int p_idx = push_node(L, start, 4);
  int t_idx = p_idx - 1;
  lua_newtable(L);
  int items_idx = lua_gettop(L);
  lua_pushvalue(L, items_idx);
  lua_setfield(L, p_idx, "items");
  lua_pushvalue(L, t_idx);
  lua_pushvalue(L, p_idx);
  lua_rawset(L, c->pos_idx);
  long total = 1;
  int i = 0;
  for (;;) {
    if (next_event(c)) return -1;
    if (ev->type == YAML_SEQUENCE_END_EVENT) break;
    yaml_mark_t im = ev->start_mark;
    long child = 0;
    if (parse_node(c, &child)) return -1;
    total += child;
    i++;
    int v_idx = lua_gettop(L) - 1;
    push_mark(L, im);
    lua_pushvalue(L, v_idx + 1);
    lua_setfield(L, -2, "text");
    lua_rawseti(L, items_idx, i);
    if (lua_isnil(L, v_idx)) lua_pushlightuserdata(L, NULL); /* == cjson.null: no holes */
    else lua_pushvalue(L, v_idx);
    lua_rawseti(L, t_idx, i);
    lua_settop(L, v_idx - 1);
  }
  lua_pushinteger(L, i);
  lua_setfield(L, p_idx, "n");
  lua_settop(L, t_idx);
  lua_pushnil(L);
  register_anchor(c, anchor_idx, t_idx, total);
  lua_remove(L, anchor_idx);
  *nodes = total;
  return 0;
}

/* The current event starts a node. Leaves the current event at the node's last event.
 * Returns 0, or -1 with c->err set (the stack is then left for the caller to reset).
 * stack: -> value text */
static int parse_node(ctx *c, long *nodes) {
  lua_State *L = c->L;
  yaml_event_t *ev = &c->ld->ev;
  yaml_mark_t m = ev->start_mark;
  if (!lua_checkstack(L, 24)) return fail(c, m.line, m.column, "nesting too deep");
  if (ev->type != YAML_ALIAS_EVENT && count_nodes(c, 1, m)) return -1;
  switch (ev->type) {
  case YAML_SCALAR_EVENT: {
    if (push_scalar(c)) return -1;
    *nodes = 1;
    if (ev->data.scalar.anchor) {
      push_anchor(L, ev->data.scalar.anchor);
      register_anchor(c, lua_gettop(L), lua_gettop(L) - 2, 1);
      lua_pop(L, 1);
    }
    return 0;
  }
  case YAML_ALIAS_EVENT: {
    lua_pushstring(L, (const char *)ev->data.alias.anchor);
    lua_rawget(L, c->anchors_idx);
    if (lua_isnil(L, -1))
      return fail(c, m.line, m.column, "unknown anchor \"%s\" (an alias must follow its anchor)",
                  ev->data.alias.anchor);
    lua_rawgeti(L, -1, 3);
    long n = (long)lua_tonumber(L, -1);
    lua_pop(L, 1);
    c->alias_nodes += n;
    if (c->alias_nodes > HERALD_YAML_MAX_ALIAS_NODES)
      return fail(c, m.line, m.column,
                  "aliases expand to more than %d nodes (an alias bomb?)",
                  HERALD_YAML_MAX_ALIAS_NODES);
    if (count_nodes(c, n, m)) return -1;
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_remove(L, -3);
    *nodes = n;
    return 0;
  }
  case YAML_MAPPING_START_EVENT:
  case YAML_SEQUENCE_START_EVENT: {
    if (c->depth >= HERALD_YAML_MAX_DEPTH)
      return fail(c, m.line, m.column, "nesting deeper than %d levels", HERALD_YAML_MAX_DEPTH);
    c->depth++;
    int rc = ev->type == YAML_MAPPING_START_EVENT ? parse_mapping(c, nodes)
                                                  : parse_sequence(c, nodes);
    c->depth--;
    return rc;
  }
  default:
    return fail(c, m.line, m.column, "unexpected YAML event %d", (int)ev->type);
  }
}

/* limits[name] (0 when negative: a spent budget), or dflt when absent. stack: unchanged */
static long limit_opt(lua_State *L, int idx, const char *name, long dflt) {
  if (lua_type(L, idx) != LUA_TTABLE) return dflt;
  lua_getfield(L, idx, name);
  double d = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : (double)dflt;
  lua_pop(L, 1);
  if (!(d > 0)) return 0;
  return d > 4e18 ? (long)4e18 : (long)d;
}

/* stack: text filename [limits] -> docs pos | nil err limit */
int herald__lua_yaml_load(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *file = luaL_optstring(L, 2, "<string>");
  long max_bytes = limit_opt(L, 3, "bytes", HERALD_YAML_DEFAULT_MAX_BYTES);
  long max_docs = limit_opt(L, 3, "documents", HERALD_YAML_DEFAULT_MAX_DOCUMENTS);
  long max_nodes = limit_opt(L, 3, "nodes", HERALD_YAML_DEFAULT_MAX_NODES);
  long docs_limit = limit_opt(L, 3, "documents_limit", max_docs);
  long nodes_limit = limit_opt(L, 3, "nodes_limit", max_nodes);
  lua_settop(L, 2);

  if (len > (size_t)max_bytes) {
    /* refused before parsing: the position is where the limit is crossed */
    ctx c = {.L = L, .file = file, .text = text, .text_len = len};
    size_t line, col;
    offset_to_mark(&c, (size_t)max_bytes, &line, &col);
    fail(&c, line, col, "the file is %zu bytes, more than %ld (limit \"bytes\")", len, max_bytes);
    lua_pushnil(L);
    lua_pushstring(L, c.err);
    lua_pushliteral(L, "bytes");
    return 3;
  }

  yaml_loader *ld = lua_newuserdata(L, sizeof *ld); /* 3 */
  memset(ld, 0, sizeof *ld);
  if (luaL_newmetatable(L, LOADER_MT)) {
    lua_pushcfunction(L, loader_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, 3);
  if (!yaml_parser_initialize(&ld->parser)) return luaL_error(L, "yaml: out of memory");
  ld->parser_ok = 1;
  yaml_parser_set_input_string(&ld->parser, (const unsigned char *)text, len);
  yaml_parser_set_encoding(&ld->parser, YAML_UTF8_ENCODING);

  lua_newtable(L); /* 4: docs */
  lua_newtable(L); /* 5: pos */
  lua_newtable(L); /* 6: pos.documents */
  lua_pushvalue(L, 6);
  lua_setfield(L, 5, "documents");
  lua_newtable(L); /* 7: anchors of the current document */

  ctx c = {.L = L, .ld = ld, .file = file, .text = text, .text_len = len,
           .pos_idx = 5, .anchors_idx = 7, .max_nodes = max_nodes, .nodes_limit = nodes_limit};
  int ndocs = 0, rc = 0;
  long seen_docs = 0;
  yaml_event_t *ev = &ld->ev;
  if ((rc = next_event(&c)) == 0 && ev->type != YAML_STREAM_START_EVENT)
    rc = fail(&c, 0, 0, "not a YAML stream");
  while (rc == 0) {
    if ((rc = next_event(&c))) break;
    if (ev->type == YAML_STREAM_END_EVENT) break;
    if (ev->type != YAML_DOCUMENT_START_EVENT) {
      rc = fail(&c, ev->start_mark.line, ev->start_mark.column, "expected a document");
      break;
    }
    if (++seen_docs > max_docs) {
      c.limit = "documents";
      rc = fail(&c, ev->start_mark.line, ev->start_mark.column,
                "more than %ld YAML documents in one load (limit \"documents\")", docs_limit);
      break;
    }
    lua_newtable(L); /* anchors are per document */
    lua_replace(L, 7);
    if ((rc = next_event(&c))) break;
    yaml_mark_t root = ev->start_mark;
    long nodes = 0;
    if ((rc = parse_node(&c, &nodes))) break;
    if ((rc = next_event(&c))) break;
    if (ev->type != YAML_DOCUMENT_END_EVENT) {
      rc = fail(&c, ev->start_mark.line, ev->start_mark.column, "expected the end of the document");
      break;
    }
    /* stack: ... value text */
    if (!lua_isnil(L, -2)) {
      ndocs++;
      lua_pushvalue(L, -2);
      lua_rawseti(L, 4, ndocs);
      push_mark(L, root);
      lua_rawseti(L, 6, ndocs);
    }
    lua_settop(L, 7);
  }
  if (ld->have_ev) yaml_event_delete(&ld->ev);
  yaml_parser_delete(&ld->parser);
  ld->have_ev = ld->parser_ok = 0;
  if (rc) {
    lua_pushnil(L);
    lua_pushstring(L, c.err);
    if (c.limit) lua_pushstring(L, c.limit);
    else lua_pushnil(L);
    return 3; /* nil err limit */
  }
  lua_pushnumber(L, (lua_Number)c.nodes);
  lua_setfield(L, 5, "nodes");
  lua_pushvalue(L, 4);
  lua_pushvalue(L, 5);
  return 2; /* docs pos */
}
