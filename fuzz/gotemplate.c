/*
 * gotemplate.c: libFuzzer target for the Go text/template compiler (scripts/stdlib/herald/
 * gotemplate.lua, data filter `template` and trigger `dataTemplate`/`contextTemplate`). The
 * input is a template: it must compile or be refused with "template: NAME:LINE:COL: ..." (an
 * internal error wrapped as "template: NAME: herald/gotemplate.lua:123: attempt to ..." is a
 * finding), and what compiles must render event-like data, returning text or nil, err.
 * Generated code reaching os/io or writing globals is a finding.
 */
#include "fuzz_lua.h"

static const char harness[] =
    "local H = ...\n"
    "local tpl = require 'herald.gotemplate'\n"
    "require 'herald.sprig'\n"
    "H.trap()\n"
    "return function(input)\n"
    "  local ok, t, err = pcall(tpl.compile, input, { name = 'fuzz' })\n"
    "  if not ok then return 'compile raised: ' .. tostring(t) end\n"
    "  if not t then\n"
    "    if type(err) ~= 'string' then return 'no result and no error' end\n"
    "    return H.internal(err, input) or H.escape()\n"
    "  end\n"
    "  local doc = H.doc()\n"
    "  local rok, s, e = H.bounded(t.render, t, { Input = doc.body, Body = doc.body, Header = doc.headers })\n"
    "  if not rok then return H.raised(s) end\n"
    "  if s == nil then return H.internal(e, input) or H.escape() end\n"
    "  if type(s) ~= 'string' then return 'render returned ' .. type(s) end\n"
    "  return H.escape()\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_init("=fuzz_gotemplate", harness);
  fuzz_lua_run(data, size);
  return 0;
}
