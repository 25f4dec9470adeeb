/*
 * sjson_path.c: libFuzzer target for sjson paths (scripts/stdlib/herald/sjson.lua), which
 * trigger parameters use as `dest`. The input is a path: it must compile or be refused with
 * the module's own error, and the setter must set a value in an event-like document, an
 * empty table, an array, a scalar and nothing, returning a doc or nil, err without raising.
 */
#include "fuzz_lua.h"

static const char harness[] =
    "local H = ...\n"
    "local sjson = require 'herald.sjson'\n"
    "H.trap()\n"
    "return function(input)\n"
    "  local ok, fn, err = pcall(sjson.compile, input)\n"
    "  if not ok then return 'compile raised: ' .. tostring(fn) end\n"
    "  if not fn then\n"
    "    if type(err) ~= 'string' then return 'no setter and no error' end\n"
    "    return H.internal(err, input) or H.escape()\n"
    "  end\n"
    "  for _, doc in ipairs { H.doc(), {}, { 1, 2, 3 }, 'text', false } do\n"
    "    local rok, d, e = H.bounded(fn, doc, 'v')\n"
    "    if not rok then return H.raised(d) end\n"
    "    if d == nil and H.internal(e, input) then return H.internal(e, input) end\n"
    "    rok, d, e = H.bounded(fn, doc, { x = { 1 } })\n"
    "    if not rok then return H.raised(d) end\n"
    "  end\n"
    "  local rok, d, e = H.bounded(fn, nil, nil)\n"
    "  if not rok then return H.raised(d) end\n"
    "  return H.escape()\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_init("=fuzz_sjson_path", harness);
  fuzz_lua_run(data, size);
  return 0;
}
