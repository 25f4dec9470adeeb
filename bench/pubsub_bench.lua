-- bench/pubsub_bench.lua: what bench/run-source-pubsub.sh runs. Against one Google Pub/Sub
-- emulator, alternately: (a) a minimal client of our own (keep-alive HTTP, :pull 1000, then
-- :acknowledge them all) and (b) herald (pubSub -> one data filter -> log trigger, stdout to
-- /dev/null), each consuming N ~150-byte messages published beforehand (publishing is not
-- timed). Prints events/s for both, herald's CPU-us per event (utime+stime from /proc), and
-- the ratio; medians over the rounds.
--   luajit bench/pubsub_bench.lua HERALD_BIN N ROUNDS
package.path = "spec/?.lua;" .. package.path
local H = require "helpers.herald"
local P = require "helpers.pubsub_peer"
local cjson = require "cjson"
local socket = require "socket"
local mime = require "mime"

local BIN, N, ROUNDS = arg[1], tonumber(arg[2] or 20000), tonumber(arg[3] or 3)
local emu = assert(P.start(H))
emu.create_topic("bench-topic")

local BODY = '{"kind":"order","id":%6d,"customer":"c-%05d","amount":%4d,"currency":"EUR","items":[{"sku":"sku-1","n":2},{"sku":"sku-2","n":1}],"note":"bench"}'
-- Publishes N messages to the topic: every subscription on it gets them all.
local function fill()
  local c = H.connect(emu.port, 30)
  for k = 1, N / 1000 do
    local msgs = {}
    for i = 1, 1000 do
      local n = (k - 1) * 1000 + i
      msgs[i] = { data = (mime.b64(BODY:format(n, n % 99999, n % 1000))) }
    end
    local st = H.http{ conn = c, port = emu.port, path = "/v1/projects/test-proj/topics/bench-topic:publish",
      headers = { ["Content-Type"] = "application/json" }, body = cjson.encode({ messages = msgs }) }
    assert(st == 200, "publish " .. tostring(st))
  end
  c:close()
end

local function minimal(sub)
  local c = H.connect(emu.port, 30)
  local got, t0 = 0, socket.gettime()
  local path = "/v1/projects/test-proj/subscriptions/" .. sub
  while got < N do
    local st, _, body = H.http{ conn = c, port = emu.port, path = path .. ":pull",
      headers = { ["Content-Type"] = "application/json" }, body = '{"maxMessages":1000}' }
    assert(st == 200)
    local ids = {}
    for i, m in ipairs(cjson.decode(body).receivedMessages or {}) do ids[i] = m.ackId end
    if #ids > 0 then
      local st2 = H.http{ conn = c, port = emu.port, path = path .. ":acknowledge",
        headers = { ["Content-Type"] = "application/json" }, body = cjson.encode({ ackIds = ids }) }
      assert(st2 == 200)
      got = got + #ids
    end
  end
  c:close()
  return N / (socket.gettime() - t0)
end

local function cpu_ticks(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  local s = f:read("*a")
  f:close()
  local fields = {}
  for x in s:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = x end
  return tonumber(fields[12]) + tonumber(fields[13])
end

local function herald(sub)
  local dir = H.tmpdir()
  H.write(dir .. "/b.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: ps
spec:
  pubSub:
    ev:
      projectID: test-proj
      subscriptionID: %s
      jsonBody: true
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: s
spec:
  dependencies:
    - name: d
      eventSourceName: ps
      eventName: ev
      filters:
        data:
          - path: body.kind
            type: string
            value: ["order"]
  triggers:
    - template:
        name: t
        log: {}
]]):format(sub))
  local p = H.start({ "run", dir, "--log-level", "warn" }, { env = { PUBSUB_EMULATOR_HOST = emu.host } })
  H.wait_until(function() return p.metrics_port and pcall(H.metrics, p) end, 10, "metrics")
  local tick = 100
  local c0, t0 = cpu_ticks(p.pid), socket.gettime()
  local key = 'argo_events_action_triggered_total{sensor_name="s",trigger_name="t"}'
  H.wait_until(function() return (H.metrics(p)[key] or 0) >= N end, 300, "all triggered")
  local t1, c1 = socket.gettime(), cpu_ticks(p.pid)
  p:stop()
  return N / (t1 - t0), (c1 - c0) / tick * 1e6 / N
end

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

local mins, hers, cpus = {}, {}, {}
for r = 1, ROUNDS do
  local a, b = "bench-min-" .. r, "bench-her-" .. r
  emu.create_sub(a, "bench-topic")
  emu.create_sub(b, "bench-topic")
  fill()
  if r % 2 == 1 then
    mins[r] = minimal(a)
    hers[r], cpus[r] = herald(b)
  else
    hers[r], cpus[r] = herald(b)
    mins[r] = minimal(a)
  end
  emu.api("DELETE", "/subscriptions/" .. a)
  emu.api("DELETE", "/subscriptions/" .. b)
  print(("round %d: minimal client %.0f msg/s, herald %.0f events/s (%.0f%%), %.1f CPU-us/event"):format(
    r, mins[r], hers[r], 100 * hers[r] / mins[r], cpus[r]))
end
local m, h, c = median(mins), median(hers), median(cpus)
print(("median over %d rounds of %d messages: minimal client %.0f msg/s, herald %.0f events/s (%.0f%% of it), herald %.1f CPU-us/event"):format(
  ROUNDS, N, m, h, 100 * h / m, c))
emu.stop()
