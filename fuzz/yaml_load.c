/*
 * yaml_load.c: libFuzzer target for the YAML loader: engine/yaml.c (herald.core.yaml_load,
 * YAML text -> Lua tables + positions) and then the spec loader that reads those tables
 * (scripts/stdlib/herald/loader.lua with its schema checks). The input is a spec file. yaml_load
 * must return docs and a position for every table in them, or nil and
 * "fuzz.yaml:LINE:COL: message"; the loader must report problems as errors, never raise or
 * fail internally.
 */
#include "fuzz_lua.h"

static const char harness[] =
    "local H = ...\n"
    "local core = require 'herald.core'\n"
    "local loader = require 'herald.loader'\n"
    "H.trap()\n"
    "local function check_pos(v, pos, seen)\n"
    "  if type(v) ~= 'table' or seen[v] then return nil end\n"
    "  seen[v] = true\n"
    "  local p = pos[v]\n"
    "  if type(p) ~= 'table' or type(p.line) ~= 'number' or type(p.col) ~= 'number' then\n"
    "    return 'a table without its position'\n"
    "  end\n"
    "  for k, x in pairs(v) do\n"
    "    local e = check_pos(x, pos, seen)\n"
    "    if e then return e end\n"
    "  end\n"
    "end\n"
    "local fs = { stat = function() return 'file' end, list_dir = function() return {} end,\n"
    "  yaml_load = core.yaml_load }\n"
    "return function(input)\n"
    "  local ok, docs, pos = pcall(core.yaml_load, input, 'fuzz.yaml')\n"
    "  if not ok then return H.raised(docs) end\n"
    "  if not docs then\n"
    "    if type(pos) ~= 'string' or not pos:find('^fuzz%.yaml:%d+:%d+: ') then\n"
    "      return 'error without a position: ' .. tostring(pos)\n"
    "    end\n"
    "    return nil\n"
    "  end\n"
    "  if type(pos) ~= 'table' or type(pos.documents) ~= 'table' then return 'no position table' end\n"
    "  local seen = {}\n"
    "  for i, d in ipairs(docs) do\n"
    "    if not pos.documents[i] then return 'document ' .. i .. ' without a position' end\n"
    "    local e = check_pos(d, pos, seen)\n"
    "    if e then return e end\n"
    "  end\n"
    "  fs.read_file = function() return input end\n"
    "  local lok, res = H.bounded(loader.load, { 'fuzz.yaml' }, fs)\n"
    "  if not lok then return H.raised(res) end\n"
    "  for _, list in ipairs { res.errors, res.warnings } do\n"
    "    for _, e in ipairs(list) do\n"
    "      local m = H.internal(e, input)\n"
    "      if m then return 'loader: ' .. m end\n"
    "    end\n"
    "  end\n"
    "  return H.escape()\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_init("=fuzz_yaml_load", harness);
  fuzz_lua_run(data, size);
  return 0;
}
