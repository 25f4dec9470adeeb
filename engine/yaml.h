/*
 * yaml.h: YAML text -> plain Lua tables plus a side table of source positions.
 *
 * Used by the spec loader (scripts/stdlib/herald/loader.lua) through herald.core.yaml_load.
 * See yaml.c for the typing rules (YAML 1.2 core schema, as Kubernetes manifests use it).
 */
#ifndef HERALD_YAML_H
#define HERALD_YAML_H

#include <lua.h>

/* This header shares its name with libyaml's <yaml.h>, and -I engine makes <yaml.h> resolve
 * here first. yaml.c defines HERALD_YAML_WANT_LIBYAML and includes <yaml.h> (angle brackets,
 * so the search continues after engine/): libyaml's header then comes from the next include
 * directory. Other files include "yaml.h" and get only the declaration below. */
#if defined(HERALD_YAML_WANT_LIBYAML) && !defined(YAML_H)
#include_next <yaml.h>
#endif

/* Most nodes that aliases may expand to in one call (defeats "billion laughs"). */
#define HERALD_YAML_MAX_ALIAS_NODES 100000
/* Deepest nesting of mappings/sequences accepted (bounds the C recursion). */
#define HERALD_YAML_MAX_DEPTH 200

/* Defaults of the limits below (what one call loads when the caller gives none): far above
 * any real manifest (Kubernetes itself refuses objects over 1.5 MiB), low enough that a
 * hostile or generated file is refused in milliseconds instead of taking minutes and GBs. */
#define HERALD_YAML_DEFAULT_MAX_BYTES (4L * 1024 * 1024)
#define HERALD_YAML_DEFAULT_MAX_DOCUMENTS 1000L
#define HERALD_YAML_DEFAULT_MAX_NODES 1000000L

/* Lua: yaml_load(text, filename [, limits]) -> docs, pos | nil, "file:line:col: message", limit
 *
 * limits: {bytes=, documents=, nodes=} (each optional; defaults above): the most bytes of text,
 *   documents and nodes (every scalar, key, mapping and sequence, and every node an alias
 *   expands to) this call may load. A limit hit fails at the position where it was crossed,
 *   and the third result names it ("bytes", "documents" or "nodes").
 *   pos.nodes is the number of nodes loaded (a caller spreading one budget over many files
 *   passes what is left, and the whole limit as documents_limit= and nodes_limit= for the
 *   messages).
 *
 * docs: array of the non-empty documents in text, each a table, string, number or boolean.
 * pos:  side table keyed by every table in docs (weak keys not needed: it dies with docs):
 *         mapping  -> {line=, col=, keys = {[key] = {line=, col=, vline=, vcol=, text=?}},
 *                      order = {key1, key2, ...}}          (keys in source order)
 *         sequence -> {line=, col=, items = {[i] = {line=, col=, text=?}}, n = <item count>}
 *       `text` is the original text of a plain scalar that was typed as a number or boolean
 *       (so "port: 08080" can be turned back into "08080"). Null values are absent from the
 *       data table but keep their keys[key] entry; a null inside a sequence is stored as
 *       lightuserdata NULL (== cjson.null) so arrays have no holes.
 *       pos.documents[i] = {line=, col=} is where document i's root node starts.
 * Lines and columns are 1-based. Never raises for bad input (only for out of memory).
 * stack: text filename -> docs pos | nil err */
int herald__lua_yaml_load(lua_State *L);

#endif
