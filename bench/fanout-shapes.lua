-- Experiment behind the fan-out plan in RESULTS.md: engine-like dispatch (the caller is not
-- JIT-compiled, as when C calls each handler) of one event over 1,000 sensors whose filter is
--   gen:    the generated code loaded per sensor, one function prototype each (the engine
--           before it shared shapes)
--   engine: the generated code as the engine loads it now, one chunk per shape
--   shared: one closure prototype over per-sensor data (same logic, hand-written)
--   usage: build/herald lua bench/fanout-shapes.lua gen|engine|shared
local compiler = require "herald.sensor"
local srt = require "herald.sensor_runtime"
local cjson = require "cjson"

local RAW = '{"header":{},"body":{"type":"order.created","amount":129.95}}'
local function sensor(i)
  return { kind = "Sensor", name = "s" .. i, file = "bench",
    doc = { spec = {
      dependencies = { { name = "d", eventSourceName = "es", eventName = "ev", filters = { data = { { path = "body.amount", type = "number", comparator = ">", value = { tostring(i + 200) } } } } } },
      triggers = { { template = { name = "t", log = {} } } },
    } } }
end
local function shared(limit)
  return function(event)
    local r = event.data
    if type(r) == "table" then r = r.body else r = nil end
    if type(r) == "table" then r = r.amount else r = nil end
    if r == nil then return false, "path body.amount does not exist", true end
    local n = tonumber(r)
    if n == nil then return false, "not a number", true end
    if n > limit then return true end
    return false, "filters did not match", false
  end
end
local mode = arg[1]
local n_disc = 0
local hooks = { fire = function() end, discard = function() n_disc = n_disc + 1 end, action_error = function(t, e) error(e) end }
local handlers = {}
for i = 1, 1000 do
  local s = assert(compiler.load(sensor(i), mode == "gen" and { readable = false } or { engine = true }))
  if mode == "shared" then s.dependencies[1].filter = shared(i + 200) end
  local rt = srt.new(s, hooks)
  local dep = s.dependencies[1]
  local on_event = rt.on_event
  handlers[i] = function(event) on_event(dep, event) end
end
local ev = { context = { id = "x" }, data = cjson.decode(RAW), raw = RAW }
local function fan(n) for _ = 1, n do for i = 1, 1000 do handlers[i](ev) end end end
jit.off(fan)
local t0 = os.clock(); local n = 0
while os.clock() - t0 < 2 do fan(100); n = n + 100 end
print(("%s: %.0f events/s across 1000 sensors (%d discards)"):format(mode, n / (os.clock() - t0), n_disc))
