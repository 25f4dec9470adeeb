-- The Kafka trigger end to end: a webhook event fires a Sensor whose trigger produces to a
-- librdkafka mock cluster running in its own process (spec/peers/kafka_mock.c); a consumer
-- peer (spec/peers/kafka_consume.c) prints what arrived, so the tests check topic, key,
-- headers and payload. A broker that goes down makes the delivery fail (counted), and the
-- trigger recovers when it comes back. Success is the broker's acknowledgement, not "queued".
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

local MOCK, CONSUME = peer("kafka_mock"), peer("kafka_consume")

-- A mock cluster with the given topics ("name:partitions"); returns the process and its
-- bootstrap servers.
local function start_cluster(topics)
  local p = H.spawn(MOCK, topics)
  local line = p:wait_for("bootstrap ", { stream = "stdout", timeout = 10 })
  return p, line:match("^bootstrap (%S+)")
end

-- The messages the consumer printed so far, decoded.
local function consumed(c)
  local t = {}
  for _, line in ipairs(c:lines("stdout")) do
    if line:sub(1, 1) == "{" then t[#t + 1] = cjson.decode(line) end
  end
  return t
end

local function wait_consumed(c, n, timeout)
  return H.wait_until(function()
    local t = consumed(c)
    return #t >= n and t
  end, timeout or 15, function() return n .. " Kafka messages\n" .. c:output("stdout") .. c:output("stderr") end)
end

local function headers_map(list)
  local t = {}
  for _, kv in ipairs(list) do t[kv[1]] = kv[2] end
  return t
end

local function setup(dir, port, kafka_body)
  H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
  H.write(dir .. "/s.yaml", H.sensor{
    deps = { { name = "d" } },
    triggers = { { name = "t", body = "        kafka:\n" .. kafka_body } },
  })
end

local function metric(p, name)
  return H.metrics(p)[('argo_events_%s{sensor_name="s",trigger_name="t"}'):format(name)] or 0
end

local PAYLOAD = [[
          payload:
            - src:
                dependencyName: d
                dataKey: body.message
              dest: message
]]

describe("kafka trigger", function()
  if not (MOCK and CONSUME) then
    pending("the kafka peers (herald-peer-kafka_mock, herald-peer-kafka_consume) are not built")
    return
  end

  local procs
  before_each(function() procs = {} end)
  after_each(function()
    for i = #procs, 1, -1 do procs[i]:kill() end
  end)
  local function track(p)
    procs[#procs + 1] = p
    return p
  end

  it("produces topic, key, headers and payload, and counts success on the broker's ack", function()
    local cluster, bootstrap = start_cluster{ "orders:3" }
    track(cluster)
    local consumer = track(H.spawn(CONSUME, { bootstrap, "orders" }))
    local wport, dir, secrets = H.free_port(), H.tmpdir(), H.tmpdir()
    os.execute("mkdir -p " .. secrets .. "/kafka-hdr")
    H.write(secrets .. "/kafka-hdr/token", "tok-123\n")
    setup(dir, wport, ([[
          url: %s
          topic: orders
          partitioningKey: default-key
          requiredAcks: 1
          compress: true
          flushFrequency: 20
          headers:
            x-origin: herald
          secureHeaders:
            - name: x-token
              valueFrom:
                secretKeyRef:
                  name: kafka-hdr
                  key: token
          parameters:
            - src:
                dependencyName: d
                dataKey: body.customer
              dest: partitioningKey
]]):format(bootstrap) .. PAYLOAD)
    local p = track(H.start{ "run", dir, "--secrets-dir", secrets })
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"first","customer":"c-42"}')))
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"second","customer":"c-42"}')))
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"third","customer":"c-7"}')))
    H.wait_until(function() return metric(p, "action_triggered_total") == 3 end, 15, p:describe())
    local msgs = wait_consumed(consumer, 3)
    table.sort(msgs, function(a, b) return cjson.decode(a.value).message < cjson.decode(b.value).message end)
    local first, second, third = msgs[1], msgs[2], msgs[3]
    assert.equal("orders", first.topic)
    assert.equal("c-42", first.key)
    assert.same({ message = "first" }, cjson.decode(first.value))
    assert.same({ ["x-origin"] = "herald", ["x-token"] = "tok-123" }, headers_map(first.headers))
    assert.equal("c-42", second.key)
    assert.equal(first.partition, second.partition) -- same key, same partition
    assert.equal("c-7", third.key)
    assert.same({ message = "third" }, cjson.decode(third.value))
    assert.equal(0, metric(p, "action_failed_total"))
    assert.equal(0, p:stop())
  end)

  it("fails the action when the broker is down, and delivers again once it is back", function()
    local cluster, bootstrap = start_cluster{ "alerts:1" }
    track(cluster)
    local wport, dir = H.free_port(), H.tmpdir()
    setup(dir, wport, ([[
          url: %s
          topic: alerts
]]):format(bootstrap) .. PAYLOAD)
    local p = track(H.start{ "run", dir })
    p:wait_for("herald started")
    -- a first message proves the path works before the outage
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"before"}')))
    H.wait_until(function() return metric(p, "action_triggered_total") == 1 end, 15, p:describe())

    signal.kill(cluster.pid, signal.SIGUSR1)
    cluster:wait_for("down", { stream = "stdout" })
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"during"}')))
    -- message.timeout.ms is 10 s: the delivery report fails, the action is counted as failed
    H.wait_until(function() return metric(p, "action_failed_total") == 1 end, 25, p:describe())
    assert.equal(1, metric(p, "action_triggered_total"))
    assert.truthy(p:output("stderr"):find("delivery to topic alerts failed", 1, true))
    assert.is_false((p:exited()))

    signal.kill(cluster.pid, signal.SIGUSR2)
    cluster:wait_for("up", { stream = "stdout" })
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"after"}')))
    H.wait_until(function() return metric(p, "action_triggered_total") == 2 end, 20, p:describe())
    local consumer = track(H.spawn(CONSUME, { bootstrap, "alerts" }))
    local msgs = wait_consumed(consumer, 2)
    local seen = {}
    for _, m in ipairs(msgs) do seen[#seen + 1] = cjson.decode(m.value).message end
    table.sort(seen)
    assert.same({ "after", "before" }, seen)
    assert.equal(1, metric(p, "action_failed_total"))
    assert.equal(0, p:stop())
  end)

  it("stops within the drain bound with a message in flight to an unreachable broker, losing nothing silently", function()
    local wport, dir, state = H.free_port(), H.tmpdir(), H.tmpdir()
    setup(dir, wport, ([[
          url: 127.0.0.1:%d
          topic: nowhere
]]):format(H.free_port()) .. PAYLOAD)
    local p = track(H.start{ "run", dir, "--state-dir", state })
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"x"}')))
    local t0 = H.now()
    local code = p:stop()
    assert.is_true(H.now() - t0 < 15, "took " .. (H.now() - t0) .. " s")
    if code == 0 then
      -- the delivery report (message.timeout.ms) reported the action as failed before the drain ended
      assert.truthy(p:output("stderr"):find("delivery to topic nowhere failed", 1, true), p:describe())
    else
      -- the drain timed out with the message in flight: it is in the spill file, and exit 3 says so
      assert.equal(3, code, p:describe())
      local spill = assert(H.read(state .. "/spill.jsonl"), "the spill file")
      assert.truthy(spill:find('"message":"x"', 1, true), spill)
    end
  end)

  it("rejects schemaRegistry, which Herald does not implement", function()
    local wport, dir = H.free_port(), H.tmpdir()
    setup(dir, wport, [[
          url: 127.0.0.1:9092
          topic: x
          schemaRegistry:
            url: http://127.0.0.1:8081
            schemaId: 1
]] .. PAYLOAD)
    local code, _, err = H.run({ "run", dir })
    assert.is_not.equal(0, code)
    assert.truthy(err:find("schemaRegistry", 1, true))
    assert.truthy(err:find("not supported by Herald yet", 1, true))
  end)

  it("rejects a SASL mechanism it cannot serve, naming the supported ones", function()
    local wport, dir = H.free_port(), H.tmpdir()
    setup(dir, wport, [[
          url: 127.0.0.1:9092
          topic: x
          sasl:
            mechanism: GSSAPI
]] .. PAYLOAD)
    local code, _, err = H.run({ "run", dir })
    assert.is_not.equal(0, code)
    assert.truthy(err:find("sasl.mechanism GSSAPI is not supported", 1, true))
  end)
end)
