-- The JetStream bus end to end: a real nats-server (-js, temp store), a webhook EventSource in
-- one `herald eventsource` process and a Sensor in another `herald sensor` process, meeting only
-- on the stream "default" (subjects default.<es>.<event>, Nats-Msg-Id = event id, as Argo).
local H = require "helpers.herald"
local nats_sub = require "helpers.nats_sub"
local cjson = require "cjson"

local has_server = os.execute("command -v nats-server >/dev/null 2>&1")
has_server = has_server == true or has_server == 0

local function start_nats(port, store)
  local srv = H.spawn("nats-server", { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", store })
  H.wait_port(port, 10)
  return srv
end

-- Starts `herald sensor` on dir and waits until every one of its n consumers is ready.
local function start_sensor(dir, url, n)
  local p = H.start{ "sensor", dir, "--bus", url }
  H.wait_until(function()
    if p:exited() then error("herald sensor exited\n" .. p:describe()) end
    return p:count("consumer ") >= (n or 1) and p:count(" ready on ") >= (n or 1)
  end, 10, function() return "consumers ready\n" .. p:describe() end)
  return p
end

local function start_es(dir, url)
  local p = H.start{ "eventsource", dir, "--bus", url }
  p:wait_for("listening for", { timeout = 10 })
  return p
end

local function body_of(firing, dep)
  return firing.events[dep or "d"].data.body
end

describe("jetstream bus", function()
  if not has_server then
    pending("nats-server is not installed")
    return
  end

  local nats_port, url, store, srv, hook_port

  before_each(function()
    nats_port = H.free_port()
    url = "nats://127.0.0.1:" .. nats_port
    store = H.tmpdir()
    srv = start_nats(nats_port, store)
    hook_port = H.free_port()
  end)

  after_each(function()
    srv:stop()
  end)

  it("requires --bus for the component commands", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local code, _, err = H.run{ "sensor", dir }
    assert.equal(2, code)
    assert.matches("--bus nats://HOST:PORT (or a JetStream EventBus among the specs) is required", err, 1, true)
    assert.matches("never meet", err, 1, true)
    code, _, err = H.run{ "eventsource", dir, "--bus", "http://x" }
    assert.equal(1, code)
    assert.matches("expected nats://HOST:PORT", err, 1, true)
  end)

  it("carries webhook events from an eventsource process to a sensor process", function()
    local sdir, edir = H.tmpdir(), H.tmpdir()
    H.write(sdir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    H.write(edir .. "/es.yaml", H.webhook_es{ port = hook_port })
    -- a plain NATS subscriber sees what is on the stream's subject
    local sub = assert(nats_sub.connect(nats_port))
    assert(sub:subscribe("default.es.ev"))
    local sensor = start_sensor(sdir, url)
    local es = start_es(edir, url)
    for i = 1, 2 do
      local status, _, body = H.post_json(hook_port, "/hook", cjson.encode{ n = i })
      assert.equal(200, status, body)
    end
    local firings = H.wait_firings(sensor, 2, 10)
    local msgs = sub:wait(2, 5)
    sub:close()
    assert.equal(2, #firings)
    assert.are_not.equal(firings[1].events.d.id, firings[2].events.d.id)
    for i = 1, 2 do
      local published = cjson.decode(msgs[i].payload)
      local got = firings[i].events.d
      assert.equal("1.0", published.specversion)
      assert.equal(published.id, got.id)
      assert.equal(published.time, got.time)
      assert.equal("es", got.source)
      assert.equal("ev", got.subject)
      assert.equal("webhook", got.type)
      assert.same(published.data, got.data)
      assert.equal(i, body_of(firings[i]).n)
    end
    -- exactly once per event, and a clean shutdown of both halves
    assert.equal(0, es:stop())
    assert.equal(0, sensor:stop())
    assert.equal(2, #H.firings(sensor))
  end)

  it("evaluates && conditions across two dependencies in the sensor process", function()
    local sdir, edir = H.tmpdir(), H.tmpdir()
    H.write(sdir .. "/s.yaml", H.sensor{
      deps = { { name = "a", event = "e1" }, { name = "b", event = "e2" } },
      triggers = { { name = "t", conditions = "a && b" } },
    })
    H.write(edir .. "/es.yaml", H.webhook_es{ events = {
      { name = "e1", endpoint = "/one", port = hook_port },
      { name = "e2", endpoint = "/two", port = hook_port },
    } })
    local sensor = start_sensor(sdir, url, 2)
    local es = start_es(edir, url)
    assert.equal(200, (H.post_json(hook_port, "/one", '{"x":1}')))
    -- only one side so far: the sensor holds it and does not fire
    assert.equal(200, (H.post_json(hook_port, "/two", '{"y":2}')))
    local f = H.wait_firings(sensor, 1, 10)[1]
    assert.equal(1, body_of(f, "a").x)
    assert.equal(2, body_of(f, "b").y)
    assert.equal("e1", f.events.a.subject)
    assert.equal("e2", f.events.b.subject)
    es:stop()
    sensor:stop()
  end)

  it("gives each trigger its own consumer: a stuck trigger does not hold back another", function()
    local socket = require "socket"
    -- a target that takes connections and never answers
    local hang = assert(socket.bind("127.0.0.1", 0))
    local _, hang_port = hang:getsockname()
    local sdir, edir = H.tmpdir(), H.tmpdir()
    H.write(sdir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = {
      { name = "fast" },
      { name = "stuck", body = ("        http:\n          url: http://127.0.0.1:%d/x\n" ..
        "          method: POST\n          timeout: 120\n"):format(hang_port),
        extra = "      atLeastOnce: true\n" },
    } })
    H.write(edir .. "/es.yaml", H.webhook_es{ port = hook_port })
    local sensor = start_sensor(sdir, url, 2)
    local es = start_es(edir, url)
    -- more events than one consumer has in flight (256): with one subscription shared by both
    -- triggers, the stuck one's unacknowledged events would stop the other at 256
    local n = 300
    for i = 1, n do assert.equal(200, (H.post_json(hook_port, "/hook", cjson.encode{ n = i }))) end
    local firings = H.wait_firings(sensor, n, 20)
    local seen = {}
    for _, f in ipairs(firings) do
      assert.equal("fast", f.triggerName)
      seen[body_of(f).n] = true
    end
    for i = 1, n do assert.is_true(seen[i], "event " .. i) end
    local c = assert(nats_sub.connect(nats_port))
    assert(c:subscribe("_INBOX.names"))
    c.c:send("PUB $JS.API.CONSUMER.NAMES.default _INBOX.names 0\r\n\r\n")
    local names = {}
    for _, name in ipairs(cjson.decode(c:wait(1, 5)[1].payload).consumers) do names[name] = true end
    c:close()
    assert.is_true(names[H.consumer_name("s", "fast", "d")])
    assert.is_true(names[H.consumer_name("s", "stuck", "d")])
    es:stop()
    sensor:kill()
    hang:close()
  end)

  it("de-duplicates by Nats-Msg-Id on the server and by event id in the sensor", function()
    local sdir = H.tmpdir()
    H.write(sdir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local sensor = start_sensor(sdir, url)
    -- a tiny JetStream publisher: core NATS text protocol with headers (HPUB), PubAck on a reply
    local socket = require "socket"
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", nats_port))
    assert(c:receive("*l"):match("^INFO "))
    c:send('CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1,"lang":"lua"}\r\n')
    c:send("SUB _INBOX.spec.> 1\r\n")
    local n = 0
    local function publish(msg_id, ev_id, data)
      n = n + 1
      local payload = cjson.encode{ specversion = "1.0", id = ev_id, source = "es", subject = "ev",
        type = "webhook", time = "2026-01-02T03:04:05.000000006Z", datacontenttype = "application/json",
        data = data }
      local hdr = "NATS/1.0\r\nNats-Msg-Id: " .. msg_id .. "\r\n\r\n"
      c:send(("HPUB default.es.ev _INBOX.spec.%d %d %d\r\n%s%s\r\n"):format(n, #hdr, #hdr + #payload, hdr, payload))
      while true do
        local line = assert(c:receive("*l"))
        if line == "PING" then c:send("PONG\r\n") end
        assert.is_nil(line:match("^%-ERR"), line)
        local size = line:match("^MSG .- (%d+)%s*$")
        if size then
          local ack = c:receive(tonumber(size))
          c:receive("*l")
          return cjson.decode(ack)
        end
      end
    end
    local first = publish("m-1", "aaaa0000000000000000000000000001", { k = 1 })
    assert.is_nil(first.duplicate)
    local again = publish("m-1", "aaaa0000000000000000000000000001", { k = 1 })
    assert.is_true(again.duplicate)                -- the server kept one copy
    assert.equal(first.seq, again.seq)
    -- same event id under another message id (a redelivery the server cannot recognise)
    local other = publish("m-2", "aaaa0000000000000000000000000001", { k = 1 })
    assert.is_nil(other.duplicate)
    publish("m-3", "bbbb0000000000000000000000000002", { k = 2 })  -- the sentinel
    c:close()
    -- one consumer delivers in stream order: once the sentinel fired, m-2 was handled
    local f = H.wait_firings(sensor, 2, 10)
    assert.equal(2, #H.firings(sensor))
    assert.equal("aaaa0000000000000000000000000001", f[1].events.d.id)
    assert.equal("2026-01-02T03:04:05.000000006Z", f[1].events.d.time)
    assert.same({ k = 1 }, f[1].events.d.data)
    assert.equal("bbbb0000000000000000000000000002", f[2].events.d.id)
    sensor:stop()
  end)

  it("answers 200 only after the PubAck: 503 while nats-server is down, 200 again after", function()
    local sdir, edir = H.tmpdir(), H.tmpdir()
    H.write(sdir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    H.write(edir .. "/es.yaml", H.webhook_es{ port = hook_port })
    local sensor = start_sensor(sdir, url)
    local es = start_es(edir, url)
    assert.equal(200, (H.post_json(hook_port, "/hook", '{"phase":"before"}')))
    local B = '{bus="jetstream"}'
    local m = H.metrics(es)
    assert.equal(1, m["herald_bus_connected" .. B])
    assert.equal(1, m["herald_bus_published_total" .. B])
    assert.equal(0, m["herald_bus_disconnects_total" .. B])
    srv:stop()
    local status, headers, body = H.http{ port = hook_port, method = "POST", path = "/hook",
      body = '{"phase":"down"}', headers = { ["Content-Type"] = "application/json" }, timeout = 15 }
    assert.equal(503, status, body)
    assert.equal("1", headers["retry-after"])
    -- the bus health metrics say so
    m = H.wait_until(function()
      local x = H.metrics(es)
      return x["herald_bus_connected" .. B] == 0 and x
    end, 10, "herald_bus_connected 0")
    assert.equal(1, m["herald_bus_disconnects_total" .. B])
    assert.is_true(m["herald_bus_rejected_total" .. B] >= 1)
    srv = start_nats(nats_port, store)
    local i = 0
    local marker = H.wait_until(function()
      i = i + 1
      local m = "after-" .. i
      local st = H.http{ port = hook_port, method = "POST", path = "/hook", body = cjson.encode{ phase = m },
        headers = { ["Content-Type"] = "application/json" }, timeout = 15 }
      if st == 200 then return m end
      assert.equal(503, st)
      H.sleep_poll(0.05)
    end, 20, "a 200 after nats-server came back")
    H.wait_until(function()
      for _, f in ipairs(H.firings(sensor)) do
        if body_of(f).phase == marker then return true end
      end
    end, 15, function() return marker .. " in the sensor\n" .. sensor:describe() end)
    assert.equal("before", body_of(H.firings(sensor)[1]).phase)
    m = H.metrics(es)
    assert.equal(1, m["herald_bus_connected" .. B])
    assert.equal(1, m["herald_bus_reconnects_total" .. B])
    assert.equal(1, H.metrics(sensor)["herald_bus_reconnects_total" .. B])
    es:stop()
    sensor:stop()
  end)

  it("delivers to a restarted sensor what was published while it was down (durable consumer)", function()
    local sdir, edir = H.tmpdir(), H.tmpdir()
    H.write(sdir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    H.write(edir .. "/es.yaml", H.webhook_es{ port = hook_port })
    local sensor = start_sensor(sdir, url)
    local es = start_es(edir, url)
    assert.equal(200, (H.post_json(hook_port, "/hook", '{"n":0}')))
    H.wait_firings(sensor, 1, 10)
    sensor:kill() -- SIGKILL: no drain, no goodbye
    for n = 1, 3 do
      assert.equal(200, (H.post_json(hook_port, "/hook", cjson.encode{ n = n })))
    end
    local again = start_sensor(sdir, url)
    local f = H.wait_firings(again, 3, 15)
    local seen = {}
    for _, x in ipairs(f) do seen[#seen + 1] = body_of(x).n end
    assert.same({ 1, 2, 3 }, seen)
    es:stop()
    again:stop()
  end)
end)
