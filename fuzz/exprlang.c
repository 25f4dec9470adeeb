/*
 * exprlang.c: libFuzzer target for the expr-lang compiler (scripts/stdlib/herald/
 * exprlang.lua, EventSource `filter.expression`). The input is an expression: it must compile
 * to Lua or be refused with the module's own error, and the compiled function must run on the
 * env Argo builds from event data, returning a value or nil, err. Generated code reaching
 * os/io or writing globals is a finding.
 */
#include "fuzz_lua.h"

static const char harness[] =
    "local H = ...\n"
    "local el = require 'herald.exprlang'\n"
    "require 'herald.sprig'\n"
    "H.trap()\n"
    "return function(input)\n"
    "  local ok, c, err = pcall(el.compile, input)\n"
    "  if not ok then return 'compile raised: ' .. tostring(c) end\n"
    "  if not c then\n"
    "    if type(err) ~= 'string' then return 'no result and no error' end\n"
    "    return H.internal(err, input) or H.escape()\n"
    "  end\n"
    "  local eok, env = pcall(el.prepare_env, H.doc())\n"
    "  if not eok then return 'prepare_env raised: ' .. tostring(env) end\n"
    "  local rok, v, e = H.bounded(c.fn, env)\n"
    "  if not rok then return H.raised(v) end\n"
    "  if v == nil and e ~= nil then return H.internal(e, input) or H.escape() end\n"
    "  return H.escape()\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_init("=fuzz_exprlang", harness);
  fuzz_lua_run(data, size);
  return 0;
}
