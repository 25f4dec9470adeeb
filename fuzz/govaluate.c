/*
 * govaluate.c: libFuzzer target for the govaluate compiler (scripts/stdlib/herald/
 * govaluate.lua, Sensor `exprs` filters). The input is an expression: it must compile to Lua
 * or be refused with the module's own error (never an internal error, never generated code
 * that does not load), and the evaluator must run on event-like parameters, returning a value
 * or nil, err. Generated code reaching os/io or writing globals is a finding.
 */
#include "fuzz_lua.h"

static const char harness[] =
    "local H = ...\n"
    "local gv = require 'herald.govaluate'\n"
    "H.trap()\n"
    "return function(input)\n"
    "  local ok, c, err = pcall(gv.compile, input)\n"
    "  if not ok then return 'compile raised: ' .. tostring(c) end\n"
    "  if not c then\n"
    "    if type(err) ~= 'string' then return 'no result and no error' end\n"
    "    return H.internal(err, input) or H.escape()\n"
    "  end\n"
    "  local params = H.doc().body\n"
    "  for _, n in ipairs(c.params or {}) do if params[n] == nil then params[n] = #n % 2 == 0 and 'x' or 3 end end\n"
    "  local rok, v, e = H.bounded(c.fn, params)\n"
    "  if not rok then return H.internal(v, input) or H.escape() end\n"
    "  if v == nil then return H.internal(e, input) or H.escape() end\n"
    "  return H.escape()\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_init("=fuzz_govaluate", harness);
  fuzz_lua_run(data, size);
  return 0;
}
