-- spec/sources/amqp/amqp_spec.lua: the amqp event source (sources/amqp/) against a real
-- RabbitMQ 3.10 (spec/helpers/amqp_peer.lua, one node for the whole file: it takes seconds to
-- start): Argo's data shape, jsonBody, manual acks, auth, the broker restarted while events
-- flow, kill -9 of herald mid-stream (every message the broker accepted reaches an HTTP sink),
-- lint, and examples/amqp.
local H = require "helpers.herald"
local A = require "helpers.amqp_peer"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

local missing = A.missing()
local node

local function es(events_yaml)
  return "apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: rq\nspec:\n  amqp:\n" .. events_yaml
end

local function log_sensor()
  return H.sensor { name = "s", deps = { { name = "d", es = "rq", event = "ev" } } }
end

local function http_sensor(port)
  return H.sensor { name = "s", deps = { { name = "d", es = "rq", event = "ev" } },
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

-- One event `ev` on exchange ex (fanout unless told), a durable shared queue q, acks after the bus.
local function event(o)
  return ([[
    ev:
      url: %s
      exchangeName: %s
      exchangeType: %s
      routingKey: %s
      queueDeclare: {name: %s, durable: true, exclusive: false, arguments: '{"x-max-length": 100000}'}
      consume: {autoAck: %s}
      connectionBackoff: {duration: 200ms, factor: 1.5}
%s]]):format(o.url or node.url, o.ex, o.type or "fanout", o.key or "k", o.queue or o.ex .. "-q",
             o.auto_ack and "true" or "false", o.extra or "")
end

local function run(dir, args)
  local a = { "run", dir }
  for _, x in ipairs(args or {}) do a[#a + 1] = x end
  local p = H.start(a)
  p:wait_for("connected: ", { timeout = 15 })
  return p
end

local function gauge(p)
  local ok, m = pcall(H.metrics, p)
  return ok and m['herald_eventsource_connected{eventsource_name="rq",event_name="ev"}']
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

-- Messages ready and unacked in queue q (rabbitmqctl list_queues).
local function queue_counts(q)
  local f = H.tmpdir() .. "/lq"
  os.execute(("cd '%s' && %s rabbitmqctl -n %s -q list_queues name messages_ready messages_unacknowledged > '%s' 2>/dev/null")
    :format(node.dir, node:env(), node.node, f))
  for line in (H.read(f) or ""):gmatch("[^\n]+") do
    local name, r, u = line:match("^(%S+)%s+(%d+)%s+(%d+)")
    if name == q then return tonumber(r), tonumber(u) end
  end
end

describe("amqp source", function()
  setup(function()
    if not missing then node = A.start() end
  end)
  teardown(function()
    if node then node:shutdown() end
  end)

  it("fires with Argo's data: properties, exchange, routing key, base64 body, metadata", function()
    if missing then return pending(missing) end
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event { ex = "shape", type = "topic", key = "orders.*",
      extra = "      metadata: {team: blue}\n" }) .. "---\n" .. log_sensor())
    local p = run(dir)
    assert.is_true(node:publish("shape", "orders.new", "hello", "-p -C text/plain -E gzip -t replies"))
    assert.is_true(node:publish("shape", "billing.new", "not bound"))
    local f = H.wait_firings(p, 1, 10)
    local d = f[1].events.d
    assert.equal("amqp", d.type)
    assert.equal("rq", d.source)
    assert.equal("ev", d.subject)
    local data = d.data
    assert.equal("text/plain", data.contentType)
    assert.equal("gzip", data.contentEncoding)
    assert.equal(2, data.deliveryMode)
    assert.equal(0, data.priority)
    assert.equal("replies", data.replyTo)
    assert.equal("", data.correlationId)
    assert.equal("", data.messageId)
    assert.equal("", data.expiration)
    assert.equal("", data.type)
    assert.equal("", data.appId)
    assert.equal("0001-01-01 00:00:00 +0000 UTC", data.timestamp) -- Go's zero time, as Argo
    assert.equal("shape", data.exchange)
    assert.equal("orders.new", data.routingKey)
    assert.equal("aGVsbG8=", data.body)
    assert.same({ team = "blue" }, data.metadata)
    H.wait_until(function() local r, u = queue_counts("shape-q"); return r == 0 and u == 0 end, 10, "acked")
    assert.equal(1, gauge(p))
    assert.equal(0, p:stop())
    assert.equal(1, #H.firings(p))
  end)

  it("jsonBody: JSON bodies as they are, others dropped, counted and acked", function()
    if missing then return pending(missing) end
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event { ex = "json", extra = "      jsonBody: true\n" }) .. "---\n" .. log_sensor())
    local p = run(dir)
    assert.is_true(node:publish_lines("json", "k", { '{"a": [1, 2]}', "{oops", '"two"' }))
    local f = H.wait_firings(p, 2, 10)
    assert.same({ a = { 1, 2 } }, f[1].events.d.data.body)
    assert.equal("two", f[2].events.d.data.body)
    assert.is_nil(f[1].events.d.data.metadata) -- omitempty, as Argo
    H.wait_until(function()
      return H.metrics(p)['herald_eventsource_bad_body_total{eventsource_name="rq",event_name="ev"}'] == 1
    end, 5, "bad body counted")
    H.wait_until(function() local r, u = queue_counts("json-q"); return r == 0 and u == 0 end, 10, "all acked")
    assert.equal(0, p:stop())
    assert.equal(2, #H.firings(p))
  end)

  it("reconnects by itself when the broker restarts while events flow (no loss)", function()
    if missing then return pending(missing) end
    local sink = sink_client.start()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event { ex = "flow", extra = "      jsonBody: true\n" }) .. "---\n" .. http_sensor(sink.port))
    local p = run(dir)
    assert.is_true(node:publish_lines("flow", "k", numbered(1, 150), { persistent = true }))
    H.wait_until(function() return seen(sink) >= 20 end, 15, "first events")
    node:stop()
    p:wait_for("not connected", { timeout = 15 })
    H.wait_until(function() return gauge(p) == 0 end, 5, "gauge 0")
    node:launch()
    p:wait_for("connected: ", { after = 1, timeout = 30 })
    assert.is_true(node:publish_lines("flow", "k", numbered(151, 300), { persistent = true }))
    H.wait_until(function() return seen(sink) >= 300 end, 30, function()
      return ("300 distinct at the sink, have %d\n%s"):format(seen(sink), p:describe())
    end)
    local n, total = seen(sink)
    assert.equal(300, n)
    assert.is_true(total >= 300)
    assert.equal(1, gauge(p))
    assert.equal(0, p:stop())
    sink.stop()
  end)

  it("loses nothing when herald is killed -9 mid-stream and started again (duplicates counted)", function()
    if missing then return pending(missing) end
    local sink = sink_client.start()
    local dir, bus = H.tmpdir(), H.tmpdir()
    H.write(dir .. "/es.yaml", es(event { ex = "kill9", extra = "      jsonBody: true\n" }) .. "---\n" .. http_sensor(sink.port))
    local p = run(dir, { "--bus-dir", bus })
    local f = H.tmpdir() .. "/lines"
    H.write(f, table.concat(numbered(1, 400), "\n") .. "\n")
    local done = H.tmpdir() .. "/done"
    os.execute(("(amqp-publish -u '%s' -e kill9 -r k -p -l < '%s'; echo $? > '%s') &"):format(node.url, f, done))
    H.wait_until(function() return seen(sink) >= 50 end, 15, "first events")
    p:kill()
    local p2 = run(dir, { "--bus-dir", bus })
    H.wait_until(function() return H.read(done) end, 30, "amqp-publish done")
    assert.equal("0", H.read(done):match("%d+"))
    H.wait_until(function() return seen(sink) >= 400 end, 40, function()
      local r, u = queue_counts("kill9-q")
      return ("400 distinct at the sink, have %d (queue: %s ready, %s unacked)\n%s"):format(
        seen(sink), tostring(r), tostring(u), p2:describe():sub(-1500))
    end)
    H.wait_until(function() local r, u = queue_counts("kill9-q"); return r == 0 and u == 0 end, 10, "all acked")
    local n, total = seen(sink)
    assert.equal(400, n)
    print(("  amqp kill -9: 400 messages, %d requests at the sink (%d duplicates)"):format(total, total - n))
    assert.equal(0, p2:stop())
    sink.stop()
  end)

  it("auth: a RabbitMQ user from secrets gets in; a wrong password is refused, said and retried", function()
    if missing then return pending(missing) end
    assert.is_true(node:ctl("add_user", "alice", "wonder"))
    assert.is_true(node:ctl("set_permissions", "-p", "/", "alice", ".*", ".*", ".*"))
    local secrets = H.tmpdir()
    os.execute(("mkdir -p '%s/rq' '%s/bad'"):format(secrets, secrets))
    H.write(secrets .. "/rq/user", "alice\n")
    H.write(secrets .. "/rq/pass", "wonder\n")
    H.write(secrets .. "/bad/pass", "nope\n")
    local url = "amqp://127.0.0.1:" .. node.port
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es(event { url = url, ex = "auth",
      extra = "      auth:\n        username: {name: rq, key: user}\n        password: {name: rq, key: pass}\n" }) .. "---\n" .. log_sensor())
    local p = run(dir, { "--secrets-dir", secrets })
    assert.is_true(node:publish("auth", "k", "x"))
    H.wait_firings(p, 1, 10)
    assert.equal(0, p:stop())
    H.write(dir .. "/es.yaml", es(event { url = url, ex = "auth",
      extra = "      auth:\n        username: {name: rq, key: user}\n        password: {name: bad, key: pass}\n" }) .. "---\n" .. log_sensor())
    local p2 = H.start { "run", dir, "--secrets-dir", secrets }
    local line = p2:wait_for("not connected", { timeout = 15 })
    assert.matches("login", line)
    assert.equal(0, gauge(p2))
    assert.equal(0, p2:stop())
  end)

  it("TLS (amqps)", function()
    pending("not exercised here: the spec's node has no TLS listener (rabbitmq.conf with ssl_options would add ~5 s of start); the TLS path is rabbitmq-c's amqp_ssl_socket with the CA and client certificate from tls")
  end)

  it("lint: url or urlSecret (one), exchangeType and routingKey required, arguments a map", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", es([[
    a: {url: "amqp://h", urlSecret: {name: s, key: k}, exchangeType: fanout, routingKey: r}
    b: {url: "amqp://h"}
    c: {url: "amqp://h", exchangeType: fanout, routingKey: r, queueDeclare: {arguments: "[1, 2]"}}
    d: {url: "http://h", exchangeType: fanout, routingKey: r}
]]))
    local code, out, err = H.run { "lint", dir .. "/es.yaml" }
    assert.equal(1, code)
    local text = out .. err
    assert.matches("spec%.amqp%.a", text)
    assert.matches("spec%.amqp%.b%.exchangeType", text)
    assert.matches("spec%.amqp%.b%.routingKey", text)
    assert.matches("spec%.amqp%.c%.queueDeclare%.arguments: not a YAML or JSON map", text)
    assert.matches("spec%.amqp%.d%.url: not an AMQP URL", text)
  end)

  it("examples/amqp lints clean, its sensor test passes, and it runs against the broker", function()
    local ex = H.source_dir .. "/examples/amqp"
    local code, out, err = H.run { "lint", "--strict", ex }
    assert.equal(0, code, out .. err)
    code, out = H.run { "test", ex }
    assert.equal(0, code, out)
    assert.matches("passed, 0 failed", out)
    if missing then return pending(missing) end
    local secrets = H.tmpdir()
    os.execute(("mkdir -p '%s/my-secret'"):format(secrets))
    H.write(secrets .. "/my-secret/username", "guest")
    H.write(secrets .. "/my-secret/password", "guest")
    local dir = H.tmpdir()
    local text = H.read(ex .. "/amqp-eventsource.yaml"):gsub("amqp://rabbitmq%-service%.argo%-events:5672",
      "amqp://127.0.0.1:" .. node.port):gsub("duration: 10s", "duration: 200ms")
    H.write(dir .. "/es.yaml", text)
    H.write(dir .. "/sensor.yaml", H.read(ex .. "/amqp-sensor.yaml"))
    local p = run(dir, { "--secrets-dir", secrets })
    assert.is_true(node:publish_lines("test", "hello", { '{"message": "hi", "level": "high"}', '{"level": "low"}' }))
    local f = H.wait_firings(p, 1, 10)
    assert.equal("hi", f[1].events["test-dep"].data.body.message)
    assert.equal("test", f[1].events["test-dep"].data.exchange)
    H.wait_until(function() local r, u = queue_counts("my-queue-name"); return r == 0 and u == 0 end, 10, "acked")
    assert.equal(0, p:stop())
    assert.equal(1, #H.firings(p))
  end)
end)
