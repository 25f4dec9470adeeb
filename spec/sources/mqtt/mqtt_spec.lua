-- spec/sources/mqtt/mqtt_spec.lua: the mqtt event source (sources/mqtt/) against a real
-- mosquitto (spec/helpers/mqtt_peer.lua, one broker per spec file, one more for auth and TLS):
-- Argo's data shape, wildcards, jsonBody, metadata, auth, TLS, the broker restarted while events
-- flow, kill -9 of herald mid-stream with QoS 1 (every message the broker accepted reaches an
-- HTTP sink), lint, and examples/mqtt.
local H = require "helpers.herald"
local M = require "helpers.mqtt_peer"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

local missing = M.missing()
local broker

local function es(events_yaml)
  return "apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: mq\nspec:\n  mqtt:\n" .. events_yaml
end

local function log_sensor(event)
  return H.sensor { name = "s", deps = { { name = "d", es = "mq", event = event or "ev" } } }
end

local function http_sensor(port)
  return H.sensor { name = "s", deps = { { name = "d", es = "mq", event = "ev" } },
    triggers = { { name = "call", body = ([[
        http:
          url: http://127.0.0.1:%d/in
          payload:
            - src: {dependencyName: d, dataKey: body.n}
              dest: n
]]):format(port),
      -- the bus's event is done only once the HTTP call succeeded: end to end, kill -9 included
      extra = "      atLeastOnce: true\n" } } }
end

local function event(url, topic, client, extra)
  return ("    ev:\n      url: %s\n      topic: '%s'\n      clientId: %s\n%s"):format(url, topic, client, extra or "")
end

local function run(dir, args)
  local a = { "run", dir }
  for _, x in ipairs(args or {}) do a[#a + 1] = x end
  local p = H.start(a)
  p:wait_for("connected: ", { timeout = 10 })
  return p
end

local function gauge(p)
  local ok, m = pcall(H.metrics, p)
  return ok and m['herald_eventsource_connected{eventsource_name="mq",event_name="ev"}']
end

local function seen(sink)
  local s, total = {}, 0
  for _, r in ipairs(sink.requests()) do
    local ok, b = pcall(cjson.decode, r.body)
    if ok and b.n then s[b.n] = true end
    total = total + 1
  end
  local n = 0
  for _ in pairs(s) do n = n + 1 end
  return n, total
end

local function numbered(from, to)
  local t = {}
  for i = from, to do t[#t + 1] = ('{"n": %d}'):format(i) end
  return t
end

describe("mqtt source", function()
  setup(function()
    if not missing then broker = M.start() end
  end)
  teardown(function()
    if broker then broker:stop() end
  end)

  it("fires on a wildcard topic with Argo's data: topic, messageId, base64 body, metadata", function()
    if missing then return pending(missing) end
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event(broker.url, "shape/+/x", "herald-shape",
      "      metadata: {team: blue}\n")) .. "---\n" .. log_sensor())
    local p = run(dir)
    assert.is_true(broker:publish("shape/a/x", "hello"))
    assert.is_true(broker:publish("shape/b/y", "not matched"))
    assert.is_true(broker:publish("shape/c/x", "again"))
    local f = H.wait_firings(p, 2, 10)
    local d1, d2 = f[1].events.d, f[2].events.d
    assert.equal("mqtt", d1.type)
    assert.equal("mq", d1.source)
    assert.equal("ev", d1.subject)
    assert.equal("shape/a/x", d1.data.topic)
    assert.equal("aGVsbG8=", d1.data.body) -- Go's []byte: base64
    assert.same({ team = "blue" }, d1.data.metadata)
    assert.is_true(d1.data.messageId >= 1) -- QoS 1: the packet id
    assert.equal("shape/c/x", d2.data.topic)
    assert.equal(1, gauge(p))
    assert.equal(0, p:stop())
    assert.equal(2, #H.firings(p))
  end)

  it("jsonBody: JSON bodies as they are, others dropped and counted", function()
    if missing then return pending(missing) end
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event(broker.url, "json", "herald-json", "      jsonBody: true\n"))
      .. "---\n" .. log_sensor())
    local p = run(dir)
    assert.is_true(broker:publish("json", '{"a": [1, 2]}'))
    assert.is_true(broker:publish("json", "{oops"))
    assert.is_true(broker:publish("json", '"two"'))
    local f = H.wait_firings(p, 2, 10)
    assert.same({ a = { 1, 2 } }, f[1].events.d.data.body)
    assert.equal("two", f[2].events.d.data.body)
    assert.is_nil(f[1].events.d.data.metadata) -- omitempty, as Argo
    H.wait_until(function()
      return H.metrics(p)['herald_eventsource_bad_body_total{eventsource_name="mq",event_name="ev"}'] == 1
    end, 5, "bad body counted")
    assert.equal(0, p:stop())
    assert.equal(2, #H.firings(p))
  end)

  it("keeps its session: messages sent while herald is away arrive when it is back", function()
    if missing then return pending(missing) end
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event(broker.url, "away", "herald-away", "      jsonBody: true\n"))
      .. "---\n" .. log_sensor())
    local p = run(dir)
    assert.is_true(broker:publish("away", '{"n": 1}'))
    H.wait_firings(p, 1, 10)
    assert.equal(0, p:stop())
    assert.is_true(broker:publish_lines("away", numbered(2, 4)))
    local p2 = run(dir)
    local f = H.wait_firings(p2, 3, 10)
    for i, v in ipairs(f) do assert.equal(i + 1, v.events.d.data.body.n) end
    assert.equal(0, p2:stop())
  end)

  it("reconnects by itself when the broker restarts while events flow (no loss)", function()
    if missing then return pending(missing) end
    local b = M.start()
    local sink = sink_client.start()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event(b.url, "flow", "herald-flow",
      "      jsonBody: true\n      connectionBackoff: {duration: 100ms, factor: 1.5}\n")) .. "---\n" .. http_sensor(sink.port))
    local p = run(dir)
    assert.is_true(b:publish_lines("flow", numbered(1, 150)))
    H.wait_until(function() return seen(sink) >= 20 end, 15, "first events")
    b:stop()
    p:wait_for("not connected", { timeout = 10 })
    H.wait_until(function() return gauge(p) == 0 end, 5, "gauge 0")
    b:launch()
    p:wait_for("connected: ", { after = 1, timeout = 15 })
    assert.is_true(b:publish_lines("flow", numbered(151, 300)))
    H.wait_until(function() return seen(sink) >= 300 end, 30, function()
      return ("300 distinct at the sink, have %d\n%s"):format(seen(sink), p:describe())
    end)
    local n, total = seen(sink)
    assert.equal(300, n)
    assert.is_true(total >= 300)
    assert.equal(1, gauge(p))
    assert.equal(0, p:stop())
    sink.stop()
    b:stop()
  end)

  it("loses nothing when herald is killed -9 mid-stream and started again (QoS 1; duplicates counted)", function()
    if missing then return pending(missing) end
    local sink = sink_client.start()
    local dir, bus = H.tmpdir(), H.tmpdir()
    H.write(dir .. "/es.yaml", es(event(broker.url, "kill9", "herald-kill9", "      jsonBody: true\n"))
      .. "---\n" .. http_sensor(sink.port))
    local p = run(dir, { "--bus-dir", bus })
    -- published in the background while herald consumes; mosquitto_pub -l waits for each PUBACK
    local f = H.tmpdir() .. "/lines"
    H.write(f, table.concat(numbered(1, 400), "\n") .. "\n")
    local done = H.tmpdir() .. "/done"
    os.execute(("(mosquitto_pub -h 127.0.0.1 -p %d -t kill9 -q 1 -l < '%s'; echo $? > '%s') &"):format(broker.port, f, done))
    H.wait_until(function() return seen(sink) >= 50 end, 15, "first events")
    p:kill()
    local p2 = run(dir, { "--bus-dir", bus })
    H.wait_until(function() return H.read(done) end, 30, "mosquitto_pub done")
    assert.equal("0", H.read(done):match("%d+"))
    H.wait_until(function() return seen(sink) >= 400 end, 40, function()
      return ("400 distinct at the sink, have %d\n%s"):format(seen(sink), p2:describe())
    end)
    local n, total = seen(sink)
    assert.equal(400, n)
    print(("  mqtt kill -9: 400 messages, %d requests at the sink (%d duplicates)"):format(total, total - n))
    assert.equal(0, p2:stop())
    sink.stop()
  end)

  it("auth: the password file's user gets in; a wrong password is refused, said and retried", function()
    if missing then return pending(missing) end
    local b = M.start { users = { alice = "wonder" } }
    local secrets = H.tmpdir()
    os.execute(("mkdir -p '%s/mq' '%s/bad'"):format(secrets, secrets))
    H.write(secrets .. "/mq/user", "alice\n")
    H.write(secrets .. "/mq/pass", "wonder\n")
    H.write(secrets .. "/bad/pass", "nope\n")
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event(b.url, "auth", "herald-auth",
      "      auth:\n        username: {name: mq, key: user}\n        password: {name: mq, key: pass}\n")) .. "---\n" .. log_sensor())
    local p = run(dir, { "--secrets-dir", secrets })
    assert.is_true(b:publish("auth", "x", { user = "alice", password = "wonder" }))
    H.wait_firings(p, 1, 10)
    assert.equal(0, p:stop())
    H.write(dir .. "/es.yaml", es(event(b.url, "auth", "herald-auth2",
      "      auth:\n        username: {name: mq, key: user}\n        password: {name: bad, key: pass}\n")) .. "---\n" .. log_sensor())
    local p2 = H.start { "run", dir, "--secrets-dir", secrets }
    local line = p2:wait_for("not connected", { timeout = 10 })
    assert.matches("not authori[sz]ed", line)
    assert.equal(0, gauge(p2))
    assert.equal(0, p2:stop())
    b:stop()
  end)

  it("TLS: verifies the broker with the CA from a secret", function()
    if missing then return pending(missing) end
    local b = M.start { tls = true }
    local secrets = H.tmpdir()
    os.execute(("mkdir -p '%s/tls'"):format(secrets))
    H.write(secrets .. "/tls/ca", H.read(b.certs.ca))
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event("ssl://localhost:" .. b.tls_port, "tls", "herald-tls",
      "      tls:\n        caCertSecret: {name: tls, key: ca}\n")) .. "---\n" .. log_sensor())
    local p = run(dir, { "--secrets-dir", secrets })
    assert.is_true(b:publish("tls", "over tls", { port = b.tls_port, cafile = b.certs.ca }))
    local f = H.wait_firings(p, 1, 10)
    assert.equal("b3ZlciB0bHM=", f[1].events.d.data.body)
    assert.equal(0, p:stop())
    -- without the CA the handshake fails, and says so
    H.write(dir .. "/es.yaml", es(event("ssl://localhost:" .. b.tls_port, "tls", "herald-tls2",
      "      tls:\n        enabled: true\n")) .. "---\n" .. log_sensor())
    local p2 = H.start { "run", dir, "--secrets-dir", secrets }
    p2:wait_for("not connected", { timeout = 10 })
    assert.equal(0, p2:stop())
    b:stop()
  end)

  it("lint: url, topic and clientId required; ws:// not supported", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es([[
    a: {url: "ws://h:9001", topic: t, clientId: c}
    b: {url: "tcp://h:1883"}
    c: {url: "gopher://h", topic: t, clientId: c}
]]))
    local code, out, err = H.run { "lint", dir .. "/es.yaml" }
    assert.equal(1, code)
    local text = out .. err
    assert.matches("spec%.mqtt%.a%.url: MQTT over WebSockets", text)
    assert.matches("spec%.mqtt%.b%.topic", text)
    assert.matches("spec%.mqtt%.b%.clientId", text)
    assert.matches("spec%.mqtt%.c%.url: unknown scheme", text)
  end)

  it("examples/mqtt lints clean, its sensor test passes, and it runs against the broker", function()
    local ex = H.source_dir .. "/examples/mqtt"
    local code, out, err = H.run { "lint", "--strict", ex }
    assert.equal(0, code, out .. err)
    code, out = H.run { "test", ex }
    assert.equal(0, code, out)
    assert.matches("passed, 0 failed", out)
    if missing then return pending(missing) end
    local dir = H.tmpdir()
    local text = H.read(ex .. "/mqtt-eventsource.yaml"):gsub("tcp://mqtt%.argo%-events:1883", broker.url)
    H.write(dir .. "/es.yaml", text)
    H.write(dir .. "/sensor.yaml", H.read(ex .. "/mqtt-sensor.yaml"))
    local p = run(dir)
    assert.is_true(broker:publish("bar", '{"message": "hello", "level": "high"}'))
    local f = H.wait_firings(p, 1, 10)
    assert.equal("hello", f[1].events["test-dep"].data.body.message)
    assert.equal(0, p:stop())
  end)
end)
