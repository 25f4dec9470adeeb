-- Benchmark: compiled sensor filters, run inside the engine's Lua (herald lua).
--   build/herald lua bench/filter-eval.lua [seconds_per_case=1]
-- Cases (issue #3 goals in brackets):
--   1. one compiled data filter on a pre-decoded event          [>= 10M evaluations/s/core]
--   2. the same including cjson decode of a 152-byte event       [>= 500k events/s/core]
--   3. compiling 1,000 sensors (compile to Lua + load)          [< 50 ms]
--   4. one event against 1,000 sensors' filters (fan-out)        [>= 2,000 events/s]
-- Times are CPU seconds of this process (os.clock), so a busy neighbour does not count.
if os.getenv("JITOPT") then jit.opt.start("maxtrace=20000", "maxmcode=262144", "sizemcode=512", "maxsnap=1000", "maxside=400") end
local compiler = require "herald.sensor"
local cjson = require "cjson"

local SECONDS = tonumber(arg and arg[1]) or 1
local BODY = '{"type":"order.created","id":"0f8fad5b-d9cb-469f-a165-70867728950e","customer":"c-104277-xy","amount":129.95,"currency":"EUR","items":3,"priority":true}'
local RAW = '{"header":{"Content-Type":["application/json"]},"body":' .. BODY .. '}'

local function sensor(i, filters)
  return {
    kind = "Sensor", name = "s" .. i, file = "bench",
    doc = { spec = {
      dependencies = { { name = "d", eventSourceName = "es", eventName = "ev", filters = filters } },
      triggers = { { template = { name = "t", log = {} } } },
    } },
  }
end

local NUMBER = { data = { { path = "body.amount", type = "number", comparator = ">=", value = { "100" } } } }
local STRING = { data = { { path = "body.type", type = "string", value = { "^order\\." } } } }

local function event()
  return { context = { id = "x", source = "es", subject = "ev", type = "webhook",
    time = "2026-11-25T21:00:00Z", datacontenttype = "application/json", specversion = "1.0" },
    data = cjson.decode(RAW), raw = RAW }
end

--- Runs fn(n) in growing batches until SECONDS of CPU pass; returns calls per second.
local function rate(fn)
  local n, total, spent = 1000, 0, 0
  while spent < SECONDS do
    local t0 = os.clock()
    fn(n)
    spent = spent + (os.clock() - t0)
    total = total + n
    n = n * 2
  end
  return total / spent
end

local function filter_of(filters)
  local s = assert(compiler.load(sensor(1, filters), { engine = true }))
  return s.dependencies[1].filter
end

local results = {}
for _, case in ipairs{ { "number", NUMBER }, { "string regex", STRING } } do
  local f = filter_of(case[2])
  -- two different events, alternated and counted, so the JIT cannot hoist the call out
  local evs = { event(), event() }
  evs[2].data = cjson.decode((RAW:gsub("order%.created", "refund.created"):gsub("129%.95", "12.5")))
  assert(f(evs[1]) == true and f(evs[2]) ~= true, "one event passes, the other does not")
  local passed = 0
  local r1 = rate(function(n)
    for i = 1, n do
      if f(evs[(i % 2) + 1]) then passed = passed + 1 end
    end
  end)
  assert(passed > 0)
  local r2 = rate(function(n)
    for _ = 1, n do
      local e = { context = evs[1].context, data = cjson.decode(RAW), raw = RAW }
      if f(e) then passed = passed + 1 end
    end
  end)
  results[#results + 1] = ("data filter (%s): %.2fM evaluations/s pre-decoded; %.0fk events/s with decode")
    :format(case[1], r1 / 1e6, r2 / 1e3)
end

-- 3. compile 1,000 sensors
local t0 = os.clock()
local sensors = {}
for i = 1, 1000 do
  sensors[i] = assert(compiler.load(sensor(i, { data = { { path = "body.amount", type = "number", comparator = ">", value = { tostring(i) } } } }), { engine = true }))
end
local compile_ms = (os.clock() - t0) * 1e3
results[#results + 1] = ("1,000 sensors compiled and loaded in %.1f ms CPU"):format(compile_ms)

-- 4. fan-out: one event through 1,000 sensors' filters
local ev = event()
local filters = {}
for i = 1, 1000 do filters[i] = sensors[i].dependencies[1].filter end
local r4 = rate(function(n)
  for _ = 1, n do
    for i = 1, 1000 do filters[i](ev) end
  end
end)
results[#results + 1] = ("one event against 1,000 sensors: %.0f events/s (%.0f ns per sensor)"):format(r4, 1e9 / (r4 * 1000))

for _, line in ipairs(results) do print(line) end
