/*
 * gjson_path.c: libFuzzer target for gjson paths (scripts/stdlib/herald/gjson.lua), which
 * Sensors use in data filters, expr fields and trigger parameters. The input is a path: it
 * must compile or be refused with the module's own error, and what compiles must evaluate
 * on an event-like document, a scalar and nothing, returning a value without raising.
 */
#include "fuzz_lua.h"

static const char harness[] =
    "local H = ...\n"
    "local gjson = require 'herald.gjson'\n"
    "H.trap()\n"
    "return function(input)\n"
    "  local ok, fn, err = pcall(gjson.compile, input)\n"
    "  if not ok then return 'compile raised: ' .. tostring(fn) end\n"
    "  if not fn then\n"
    "    if type(err) ~= 'string' then return 'no getter and no error' end\n"
    "    return H.internal(err, input) or H.escape()\n"
    "  end\n"
    "  for _, doc in ipairs { H.doc(), 'text', 42 } do\n"
    "    local rok, v = H.bounded(fn, doc)\n"
    "    if not rok then return H.raised(v) end\n"
    "    local sok, s = H.bounded(gjson.string, v)\n"
    "    if not sok then return H.raised(s) end\n"
    "  end\n"
    "  local rok, v = H.bounded(fn, nil)\n"
    "  if not rok then return H.raised(v) end\n"
    "  return H.escape()\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_init("=fuzz_gjson_path", harness);
  fuzz_lua_run(data, size);
  return 0;
}
