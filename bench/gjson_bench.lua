-- bench/gjson_bench.lua: evaluations per second of compiled gjson paths (data filter hot path).
--   luajit bench/gjson_bench.lua            (from the repository root)
local src = os.getenv("HERALD_SOURCE_DIR") or "."
package.path = src .. "/scripts/stdlib/?.lua;" .. src .. "/scripts/stdlib/?/init.lua;" .. package.path

local cjson = require "cjson"
local gjson = require "herald.gjson"
local clock = os.clock

local event = cjson.decode([[{"body":{"user":{"name":"alice","id":42},
  "items":[{"id":1,"name":"a"},{"id":2,"name":"b"},{"id":3,"name":"c"},{"id":4,"name":"d"}]},
  "header":{"X-Kind":["push"]}}]])

local function bench(label, path, n)
  local get = assert(gjson.compile(path))
  local sink = 0
  get(event)
  local t0 = clock()
  for _ = 1, n do
    if get(event) ~= nil then sink = sink + 1 end
  end
  local dt = clock() - t0
  print(string.format("%-40s %8.1f M evals/s  (%s)", label, n / dt / 1e6,
    gjson.string(get(event))))
  return sink
end

bench("dotted: body.user.name", "body.user.name", 50e6)
bench("index: body.items.0.id", "body.items.0.id", 50e6)
bench("query: body.items.#(id==3).name", "body.items.#(id==3).name", 5e6)
bench("query all: body.items.#(id>1)#.name", "body.items.#(id>1)#.name", 2e6)
bench("wildcard: body.us*.name", "body.us*.name", 2e6)
