-- Dependency state on the JetStream bus: a half-met `a && b` kept in the sensor's key-value
-- bucket survives a kill -9 of the sensor; firing clears it; a dependency removed from the spec
-- loses its state and consumer; `herald sensor --cleanup` deletes the bucket and the consumers.
local H = require "helpers.herald"
local nats_sub = require "helpers.nats_sub"
local cjson = require "cjson"

local has_server = os.execute("command -v nats-server >/dev/null 2>&1")
has_server = has_server == true or has_server == 0

-- One JetStream API request over the raw protocol; returns the decoded reply.
local function js_api(port, subject)
  local sub = assert(nats_sub.connect(port))
  assert(sub:subscribe("_INBOX.spec"))
  sub.c:send(("PUB %s _INBOX.spec 0\r\n\r\n"):format(subject))
  local msgs = sub:wait(1, 5)
  sub:close()
  return cjson.decode(msgs[1].payload)
end

local function consumers(port)
  local r = js_api(port, "$JS.API.CONSUMER.NAMES.default")
  local t = {}
  for _, n in ipairs(type(r.consumers) == "table" and r.consumers or {}) do t[n] = true end
  return t
end

local function streams(port)
  local r = js_api(port, "$JS.API.STREAM.NAMES")
  local t = {}
  for _, n in ipairs(type(r.streams) == "table" and r.streams or {}) do t[n] = true end
  return t
end

local function start_sensor(dir, url, n)
  local p = H.start{ "sensor", dir, "--bus", url, "--log-level", "debug" }
  H.wait_until(function()
    if p:exited() then error("herald sensor exited\n" .. p:describe()) end
    return p:count(" ready on ") >= n
  end, 10, function() return "consumers ready\n" .. p:describe() end)
  return p
end

describe("jetstream dependency state", function()
  if not has_server then
    pending("nats-server is not installed")
    return
  end

  local nats_port, url, srv, hook_port, sdir, es

  local function sensor_ab()
    return H.sensor{
      deps = { { name = "a", event = "e1" }, { name = "b", event = "e2" } },
      triggers = { { name = "t", conditions = "a && b" } },
    }
  end

  before_each(function()
    srv, nats_port, url = H.nats_server()
    hook_port = H.free_port()
    sdir = H.tmpdir()
    local edir = H.tmpdir()
    H.write(edir .. "/es.yaml", H.webhook_es{ events = {
      { name = "e1", endpoint = "/one", port = hook_port },
      { name = "e2", endpoint = "/two", port = hook_port },
    } })
    es = H.start{ "eventsource", edir, "--bus", url }
    es:wait_for("listening for", { timeout = 10 })
  end)

  after_each(function()
    es:stop()
    srv:stop()
  end)

  it("keeps a half-met && condition across a kill -9, and clears it on firing", function()
    H.write(sdir .. "/s.yaml", sensor_ab())
    local s1 = start_sensor(sdir, url, 2)
    assert.equal(200, (H.post_json(hook_port, "/one", '{"x":1}')))
    s1:wait_for("state t/a stored", { timeout = 10 })
    s1:kill()
    assert.equal(0, #H.firings(s1))

    local s2 = start_sensor(sdir, url, 2)
    s2:wait_for("restored 1 held event", { timeout = 10 })
    assert.equal(200, (H.post_json(hook_port, "/two", '{"y":2}')))
    local f = H.wait_firings(s2, 1, 10)[1]
    assert.equal(1, f.events.a.data.body.x)
    assert.equal(2, f.events.b.data.body.y)
    assert.equal("e1", f.events.a.subject)
    s2:wait_for("state t/a deleted", { timeout = 10 })
    s2:kill()

    -- fired: nothing held any more, so b alone does not fire after another restart
    local s3 = start_sensor(sdir, url, 2)
    assert.equal(200, (H.post_json(hook_port, "/two", '{"y":3}')))
    s3:wait_for("state t/b stored", { timeout = 10 })
    assert.equal(0, #H.firings(s3))
    assert.equal(0, s3:stop())
  end)

  it("drops the state and consumer of a dependency removed from the spec", function()
    H.write(sdir .. "/s.yaml", sensor_ab())
    local s1 = start_sensor(sdir, url, 2)
    assert.equal(200, (H.post_json(hook_port, "/one", '{"x":1}')))
    s1:wait_for("state t/a stored", { timeout = 10 })
    assert.equal(0, s1:stop())
    local before = consumers(nats_port)
    local n_before = 0
    for _ in pairs(before) do n_before = n_before + 1 end
    assert.equal(2, n_before)

    H.write(sdir .. "/s.yaml", H.sensor{
      deps = { { name = "b", event = "e2" }, { name = "c", event = "e1" } },
      triggers = { { name = "t", conditions = "b && c" } },
    })
    local s2 = start_sensor(sdir, url, 2)
    s2:wait_for("state t/a removed (no longer in the spec)", { timeout = 10 })
    s2:wait_for("(dependency removed)", { timeout = 10 })
    assert.equal(0, s2:count("restored"))
    local after = consumers(nats_port)
    local t_a, t_b, t_c = H.consumer_name("s", "t", "a"), H.consumer_name("s", "t", "b"), H.consumer_name("s", "t", "c")
    assert.is_truthy(before[t_a])
    assert.is_nil(after[t_a])
    assert.is_truthy(after[t_b])
    assert.is_truthy(after[t_c])
    -- the remaining dependency still works: c (e1) then b (e2) fire with both
    assert.equal(200, (H.post_json(hook_port, "/one", '{"x":5}')))
    assert.equal(200, (H.post_json(hook_port, "/two", '{"y":6}')))
    local f = H.wait_firings(s2, 1, 10)[1]
    assert.equal(5, f.events.c.data.body.x)
    assert.equal(0, s2:stop())
  end)

  it("sensor --cleanup deletes the bucket and the consumers", function()
    H.write(sdir .. "/s.yaml", sensor_ab())
    local s1 = start_sensor(sdir, url, 2)
    assert.equal(200, (H.post_json(hook_port, "/one", '{"x":1}')))
    s1:wait_for("state t/a stored", { timeout = 10 })
    assert.equal(0, s1:stop())
    assert.is_truthy(streams(nats_port)["KV_s"])
    assert.is_truthy(next(consumers(nats_port)))
    local code, _, err = H.run({ "sensor", sdir, "--bus", url, "--cleanup" }, { timeout = 20 })
    assert.equal(0, code, err)
    assert.is_nil(streams(nats_port)["KV_s"])
    assert.is_nil(next(consumers(nats_port)))
    assert.truthy(streams(nats_port)["default"])
  end)
end)
