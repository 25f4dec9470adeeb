-- spec/sources/kafka/kafka_spec.lua: the kafka event source (sources/kafka/) against librdkafka's
-- mock cluster in a process of its own (spec/peers/kafka_mock.c), fed by the producer mode of
-- spec/peers/kafka_consume.c: Argo's example shape, consumer group and partition modes, the
-- event data and ids, offsets committed only for what the bus holds (restart, kill -9 counted at
-- an HTTP sink), the brokers down and up while events flow, jsonBody with bad bodies, and the
-- sarama `config` keys mapped or refused at load with their position.
local H = require "helpers.herald"
local cjson = require "cjson"
local signal = require "posix.signal"

local function peer(name)
  local dir = H.bin:match("^(.*)/[^/]+$") or "."
  for _, p in ipairs{ dir .. "/herald-peer-" .. name, dir .. "/spec/herald-peer-" .. name } do
    local f = io.open(p)
    if f then
      f:close()
      return p
    end
  end
end

local MOCK, PRODUCE = peer("kafka_mock"), peer("kafka_consume")

local function es(name, events_yaml)
  return ("apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: %s\nspec:\n  kafka:\n"):format(name)
    .. events_yaml
end

-- Produces count messages and waits until the broker acknowledged them all; returns how many.
local function produce(bootstrap, topic, count, opts)
  local args = { "--produce", bootstrap, topic, tostring(count) }
  for k, v in pairs(opts or {}) do
    if k == "headers" then
      for _, h in ipairs(v) do args[#args + 1], args[#args + 2] = "--header", h end
    else
      args[#args + 1], args[#args + 2] = "--" .. k, tostring(v)
    end
  end
  local p = H.spawn(PRODUCE, args)
  return p
end

local function produced(p, timeout)
  local line = p:wait_for("^produced ", { stream = "stdout", plain = false, timeout = timeout or 20, allow_exit = true })
  local acked, failed = line:match("^produced (%d+) (%d+)")
  return tonumber(acked), tonumber(failed)
end

local function metric(p, name, ev)
  return H.metrics(p)[('%s{eventsource_name="k",event_name="%s"}'):format(name, ev or "e")] or 0
end

-- The seqs of the firings' bodies, and how many times each came.
local function seqs(firings, dep)
  local n, seen = 0, {}
  for _, f in ipairs(firings) do
    local body = f.events[dep or "d"].data.body
    seen[body.seq] = (seen[body.seq] or 0) + 1
    n = n + 1
  end
  return seen, n
end

describe("kafka source", function()
  if not (MOCK and PRODUCE) then
    pending("the kafka peers (herald-peer-kafka_mock, herald-peer-kafka_consume) are not built (librdkafka missing)")
    return
  end

  local cluster, bootstrap
  local procs = {}
  setup(function()
    cluster = H.spawn(MOCK, { "orders:3", "single:2", "restart:3", "flow:2", "crash:3", "bad:1", "example:2", "limit:1" })
    bootstrap = cluster:wait_for("bootstrap ", { stream = "stdout", timeout = 10 }):match("^bootstrap (%S+)")
  end)
  teardown(function() cluster:kill() end)
  after_each(function()
    for i = #procs, 1, -1 do procs[i]:kill() end
    procs = {}
  end)
  local function track(p)
    procs[#procs + 1] = p
    return p
  end

  it("runs Argo's example (one partition, jsonBody) and fires its sensor", function()
    local dir = H.tmpdir()
    local text = H.read(H.source_dir .. "/examples/kafka/kafka.yaml")
    text = text:gsub("url: localhost:9092", "url: " .. bootstrap):gsub("topic: topic%-2", "topic: example")
    H.write(dir .. "/kafka.yaml", text)
    local p = track(H.start{ "run", dir })
    p:wait_for("consuming example partition 1")
    -- partition mode starts at the newest offset (as Argo): produce until the first one fires
    local n = 0
    H.wait_until(function()
      n = n + 1
      produced(produce(bootstrap, "example", 1, { partition = 1, body = '{"order":0,"total":500}' }))
      return #H.firings(p) > 0
    end, 20, p:describe())
    local before = #H.firings(p)
    produced(produce(bootstrap, "example", 4, { partition = 1, body = '{"order":{seq},"total":{seq}00}' }))
    produced(produce(bootstrap, "example", 3, { partition = 0, body = '{"order":9,"total":900}' })) -- not ours
    local f = H.wait_until(function() -- orders 2, 3, 4 (total > 100)
      local f = H.firings(p)
      return f[#f].events["test-dep"].data.body.order == 4 and f
    end, 10, p:describe())
    local orders = {}
    for i = before + 1, #f do
      local d = f[i].events["test-dep"].data
      assert.equal("example", d.topic)
      assert.equal(1, d.partition)
      if d.body.order ~= 0 then orders[#orders + 1] = d.body.order end -- 0: the warm-up ones
    end
    assert.same({ 2, 3, 4 }, orders)
    assert.equal(0, p:stop())
    assert.equal(#f, #H.firings(p))
  end)

  it("consumes as a consumer group: Argo's data shape, ids, and offsets committed on the way", function()
    produced(produce(bootstrap, "orders", 30, { headers = { "x-b=2", "x-a=1", "x-a=3" } }))
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("k", [[
    e:
      url: ]] .. bootstrap .. [[, 127.0.0.1:1
      topic: orders
      jsonBody: true
      metadata: {zeta: "z", alpha: "a"}
      consumerGroup:
        groupName: herald-orders
        oldest: true
        rebalanceStrategy: roundrobin
]]) .. "---\n" .. H.sensor{ deps = { { name = "d", es = "k", event = "e" } } })
    local p = track(H.start{ "run", dir })
    local f = H.wait_firings(p, 30, 20)
    local seen, n = seqs(f)
    assert.equal(30, n)
    local ids, parts = {}, {}
    for i = 1, 30 do assert.equal(1, seen[i], "seq " .. i) end
    for _, fi in ipairs(f) do
      local ev = fi.events.d
      assert.equal("kafka", ev.type)
      assert.equal("k", ev.source)
      assert.equal("e", ev.subject)
      assert.matches("^%x+$", ev.id)
      assert.is_nil(ids[ev.id], "duplicate id " .. ev.id)
      ids[ev.id] = true
      local d = ev.data
      assert.equal("orders", d.topic)
      assert.equal("k" .. d.body.seq, d.key)
      assert.same({ ["x-a"] = "3", ["x-b"] = "2" }, d.headers) -- a repeated key keeps its last value
      assert.same({ alpha = "a", zeta = "z" }, d.metadata)
      assert.matches("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d[%.%d]* %+0000 UTC$", d.timestamp)
      parts[d.partition] = true
    end
    assert.is_true(parts[0] and parts[1] and parts[2] and true or false, "messages from the 3 partitions")
    -- the order of keys in the data is Go's (struct order, then sorted maps)
    local raw
    for _, line in ipairs(p:lines("stdout")) do if line:find('"triggered"') then raw = line break end end
    assert.matches('"data":{"topic":"orders","key":"k%d+","partition":%d,"body":{.-},"timestamp":"[^"]+","headers":{"x%-a":"3","x%-b":"2"},"metadata":{"alpha":"a","zeta":"z"}}', raw)
    assert.equal(1, metric(p, "herald_eventsource_connected"))
    assert.equal(0, p:stop())
    -- a restart of the same group reads nothing again, then only the new messages
    local p2 = track(H.start{ "run", dir })
    p2:wait_for("assigned 3 partition(s)", { timeout = 30 })
    produced(produce(bootstrap, "orders", 5, { start = 31 }))
    local f2 = H.wait_firings(p2, 5, 15)
    local seen2, n2 = seqs(f2)
    assert.equal(5, n2)
    for i = 31, 35 do assert.equal(1, seen2[i], "seq " .. i) end
    assert.equal(0, p2:stop())
    assert.equal(5, #H.firings(p2))
  end)

  it("reconnects by itself when the brokers go down and come back, losing nothing", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("k", [[
    e:
      url: ]] .. bootstrap .. [[

      topic: flow
      jsonBody: true
      connectionBackoff: {duration: 100ms}
      consumerGroup: {groupName: herald-flow, oldest: true}
]]) .. "---\n" .. H.sensor{ deps = { { name = "d", es = "k", event = "e" } } })
    local p = track(H.start{ "run", dir })
    local prod = track(produce(bootstrap, "flow", 600, { rate = 150 }))
    H.wait_firings(p, 50, 20)
    H.wait_until(function() return metric(p, "herald_eventsource_connected") == 1 end, 10, p:describe())
    signal.kill(cluster.pid, signal.SIGUSR1)
    cluster:wait_for("^down", { stream = "stdout", plain = false })
    H.wait_until(function() return metric(p, "herald_eventsource_connected") == 0 end, 15, p:describe())
    local during = #H.firings(p)
    signal.kill(cluster.pid, signal.SIGUSR2)
    cluster:wait_for("^up", { stream = "stdout", plain = false })
    H.wait_until(function() return metric(p, "herald_eventsource_connected") == 1 end, 20, p:describe())
    local acked = produced(prod, 60)
    assert.equal(600, acked)
    local f = H.wait_firings(p, 600, 30)
    local seen, n = seqs(f)
    for i = 1, 600 do assert.is_truthy(seen[i], "seq " .. i .. " lost") end
    assert.is_true(during < 600)
    assert.is_truthy(p:output("stderr"):find("not connected", 1, true))
    assert.equal(0, p:stop())
    print(("\n  brokers down/up: 600 produced, %d events (%d duplicates)"):format(n, n - 600))
  end)

  it("loses nothing across kill -9: every acknowledged message reaches the HTTP sink", function()
    local sink = require("helpers.sink_client").start{}
    track(sink.proc)
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("k", [[
    e:
      url: ]] .. bootstrap .. [[

      topic: crash
      jsonBody: true
      consumerGroup: {groupName: herald-crash, oldest: true}
]]) .. "---\n" .. H.sensor{ deps = { { name = "d", es = "k", event = "e" } }, triggers = { { name = "t",
      extra = "      atLeastOnce: true\n", body = ([[
        http:
          url: http://127.0.0.1:%d/sink
          method: POST
          payload:
            - src: {dependencyName: d, dataKey: body.seq}
              dest: seq
]]):format(sink.port) } } })
    local prod = track(produce(bootstrap, "crash", 3000, { rate = 1000 }))
    -- the durable embedded bus: what it acknowledged (and the offset committed) survives -9
    -- and atLeastOnce lets an event go only once its HTTP call succeeded
    local busdir = H.tmpdir()
    local p = track(H.start{ "run", dir, "--bus-dir", busdir })
    sink.wait_requests(500, 20)
    p:kill() -- SIGKILL mid-stream
    local at_kill = #sink.requests()
    local p2 = track(H.start{ "run", dir, "--bus-dir", busdir })
    assert.equal(3000, (produced(prod, 60)))
    local got = {}
    H.wait_until(function()
      got = {}
      for _, r in ipairs(sink.requests()) do
        local seq = tonumber(cjson.decode(r.body).seq)
        got[seq] = (got[seq] or 0) + 1
      end
      for i = 1, 3000 do if not got[i] then return false end end
      return true
    end, 60, function()
      local n = 0
      for _ in pairs(got) do n = n + 1 end
      return ("all 3000 at the sink (%d distinct, %d requests)\n%s\nsent %s"):format(n, #sink.requests(), p2:describe(),
        tostring(metric(p2, "argo_events_events_sent_total")))
    end)
    local total = #sink.requests()
    assert.equal(0, p2:stop())
    print(("\n  kill -9 after %d requests: 3000 produced, %d at the sink, %d duplicates, 0 lost"):format(at_kill, total, total - 3000))
  end)

  it("counts and drops the bodies that are not JSON with jsonBody, and keeps going", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("k", [[
    e:
      url: ]] .. bootstrap .. [[

      topic: bad
      jsonBody: true
      consumerGroup: {groupName: herald-bad, oldest: true}
]]) .. "---\n" .. H.sensor{ deps = { { name = "d", es = "k", event = "e" } } })
    produced(produce(bootstrap, "bad", 3, { body = "not json {seq}" }))
    produced(produce(bootstrap, "bad", 2, { body = '{"seq":{seq}}', start = 4 }))
    local p = track(H.start{ "run", dir })
    local f = H.wait_firings(p, 2, 20)
    assert.same({ 4, 5 }, { f[1].events.d.data.body.seq, f[2].events.d.data.body.seq })
    H.wait_until(function() return metric(p, "herald_eventsource_bad_body_total") == 3 end, 5, p:describe())
    assert.is_truthy(p:output("stderr"):find("not JSON", 1, true))
    assert.equal(0, p:stop())
  end)

  it("without jsonBody the body is base64, as Go marshals []byte; limitEventsPerSecond spaces events", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("k", [[
    e:
      url: ]] .. bootstrap .. [[

      topic: limit
      limitEventsPerSecond: 20
      consumerGroup: {groupName: herald-limit, oldest: true}
]]) .. "---\n" .. H.sensor{ deps = { { name = "d", es = "k", event = "e" } } })
    produced(produce(bootstrap, "limit", 10, { body = "hi {seq}" }))
    local p = track(H.start{ "run", dir })
    local f = H.wait_firings(p, 10, 20)
    assert.equal("aGkgMQ==", f[1].events.d.data.body) -- "hi 1"
    local t1, t10 = f[1].ts, f[10].ts
    local function secs(ts)
      local h, m, s = ts:match("T(%d+):(%d+):([%d%.]+)Z$")
      return tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s)
    end
    assert.is_true(secs(t10) - secs(t1) >= 0.4, "10 events at 20/s took " .. (secs(t10) - secs(t1)) .. " s")
    assert.equal(0, p:stop())
  end)

  it("maps the sarama config keys librdkafka has and refuses the others with their position", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es("k", [[
    e:
      url: 127.0.0.1:9092
      topic: t
      consumerGroup: {groupName: g}
      config: |
        clientID: my-client
        consumer:
          fetch:
            min: 1
          maxWaitTime: 250ms
          offsets:
            retention: 1h
        net:
          sasl:
            enable: true
          readTimeout: 10s
        producer:
          retry:
            max: 3
    bad:
      url: 127.0.0.1:9092
      topic: t
      version: two
      sasl: {mechanism: OAUTHBEARER}
      schemaRegistry: {url: "http://localhost:8081"}
]]))
    local code, out, err = H.run{ "lint", dir .. "/es.yaml" }
    local text = out .. err
    assert.equal(1, code)
    assert.matches("es%.yaml:18:13: spec%.kafka%.e%.config consumer%.offsets%.retention: has no librdkafka equivalent", text)
    assert.matches("es%.yaml:20:11: spec%.kafka%.e%.config net%.sasl: not taken from config by Herald: use the sasl field", text)
    assert.matches("es%.yaml:25:13: spec%.kafka%.e%.config producer%.retry%.max: has no librdkafka equivalent", text)
    assert.matches("spec%.kafka%.bad: consumerGroup or partition must be specified", text)
    assert.matches("spec%.kafka%.bad%.version: invalid version", text)
    assert.matches("spec%.kafka%.bad%.sasl%.mechanism: sasl%.mechanism OAUTHBEARER is not supported by Herald yet", text)
    assert.matches("spec%.kafka%.bad%.schemaRegistry: not supported by Herald yet", text)
    assert.is_nil(text:find("clientID", 1, true))
    assert.is_nil(text:find("maxWaitTime", 1, true))
    assert.is_nil(text:find("readTimeout", 1, true))
    -- the mapped ones reach librdkafka (a bad value there is refused at load too)
    H.write(dir .. "/ok.yaml", es("k", ([[
    e:
      url: %s
      topic: orders
      consumerGroup: {groupName: g-config, oldest: true}
      config: |
        clientID: my-client
        consumer:
          fetch: {min: 1}
          maxWaitTime: 250ms
          group: {session: {timeout: 20s}}
]]):format(bootstrap)) .. "---\n" .. H.sensor{ deps = { { name = "d", es = "k", event = "e" } } })
    local p = track(H.start{ "run", dir .. "/ok.yaml" })
    H.wait_firings(p, 30, 20)
    assert.equal(0, p:stop())
  end)
end)
