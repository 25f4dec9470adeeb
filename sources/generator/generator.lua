-- sources/generator/generator.lua: the generator event source's Lua half (the C is
-- generator.c). Herald's own type (not in Argo): `count` events, one every `interval`, each
-- {"seq": 1..count, "data": <data>}, for specs, examples and benchmarks.
local _M = {}

_M.what = "generator event source"
_M.extension = true -- Herald's own: Argo Events has no such type

function _M.schema(S)
  local core = S.core
  return S.object({
    count = S.int { min = 0, default = 1, doc = "how many events (0: until stopped)" },
    interval = S.str { default = "0s", doc = "Go duration between events, e.g. 100ms (0s: as fast as the bus takes them)",
      check = S.engine_check(function(v)
        local ns, err = core.duration_check(v)
        if not ns then return "invalid interval: " .. err end
        if ns < 0 then return "interval must not be negative" end
      end) },
    data = S.str { doc = "JSON text: each event's data field (default null)",
      check = function(v)
        local ok = pcall(require("cjson").decode, v)
        if not ok then return "not JSON text (quote it in YAML, e.g. data: '{\"a\": 1}')" end
      end },
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }, { doc = "Herald extension: emits count events at a rate" })
end

return _M
