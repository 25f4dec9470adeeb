-- The two halves on one host: `herald eventsource` and `herald sensor` default to different
-- metrics and admin ports, and a port that cannot be used is named in the error with its cause
-- (never a bare "i/o error").
local H = require "helpers.herald"
local socket = require "socket"

local has_server = os.execute("command -v nats-server >/dev/null 2>&1")
if has_server ~= true and has_server ~= 0 then has_server = false end

-- Is 127.0.0.1:port free right now?
local function free(port)
  local s = socket.tcp()
  s:setoption("reuseaddr", true)
  local ok = s:bind("127.0.0.1", port)
  s:close()
  return ok == 1
end

-- Holds 127.0.0.1:port (a listening socket) until closed.
local function occupy(port)
  local s = assert(socket.bind("127.0.0.1", port))
  return s
end

local function specs(dir, wport)
  H.write(dir .. "/es.yaml", H.webhook_es{ port = wport })
  H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
end

describe("component modes", function()
  it("document distinct default ports in --help", function()
    local code, out = H.run{ "--help" }
    assert.equal(0, code)
    assert.matches("default 127.0.0.1:7777; herald sensor:%s+127.0.0.1:7779", out)
    assert.matches("default 127.0.0.1:7778; herald%s+sensor: 127.0.0.1:7780", out)
  end)

  it("name the metrics address and the cause when the port is taken", function()
    if not has_server then return pending("nats-server is not installed") end
    local srv, _, url = H.nats_server()
    local dir = H.tmpdir()
    specs(dir, H.free_port())
    local mport = H.free_port()
    local hold = occupy(mport)
    local code, _, err = H.run{ "sensor", dir, "--bus", url, "--metrics-addr", "127.0.0.1:" .. mport }
    hold:close()
    srv:kill()
    assert.equal(1, code)
    assert.matches("herald sensor: failed to start: metrics endpoint %(%-%-metrics%-addr%) 127%.0%.0%.1:"
      .. mport .. ": cannot listen: address already in use", err)
    assert.is_nil(err:find("i/o error", 1, true))
  end)

  it("name the webhook address and the cause when its port is taken", function()
    if not has_server then return pending("nats-server is not installed") end
    local srv, _, url = H.nats_server()
    local dir = H.tmpdir()
    local wport = H.free_port()
    specs(dir, wport)
    local hold = occupy(wport)
    local code, _, err = H.run{ "eventsource", dir, "--bus", url }
    hold:close()
    srv:kill()
    assert.equal(1, code)
    assert.matches("herald eventsource: failed to start: webhook server 127%.0%.0%.1:" .. wport
      .. ": cannot listen: address already in use", err)
    assert.is_nil(err:find("i/o error", 1, true))
  end)

  it("run both halves on one host with their default ports", function()
    if not has_server then return pending("nats-server is not installed") end
    for _, p in ipairs({ 7777, 7778, 7779, 7780 }) do
      -- another herald (or spec) on this machine has a default port: not this test's subject
      if not free(p) then return pending("port " .. p .. " is in use on this machine") end
    end
    local srv, _, url = H.nats_server()
    local dir = H.tmpdir()
    local wport = H.free_port()
    specs(dir, wport)
    local env = { XDG_STATE_HOME = H.tmpdir() } -- the admin tokens go there
    local sensor = H.spawn(H.bin, { "sensor", dir, "--bus", url }, { env = env })
    sensor:wait_for("herald started", { timeout = 10 })
    local es = H.spawn(H.bin, { "eventsource", dir, "--bus", url }, { env = env })
    es:wait_for("herald started", { timeout = 10 })
    -- each half holds its own pair: the eventsource 7777/7778, the sensor 7779/7780
    for _, p in ipairs({ 7777, 7778, 7779, 7780 }) do assert.is_false(free(p)) end
    assert.equal(200, (H.post_json(wport, "/hook", '{"n":1}')))
    local f = H.wait_firings(sensor, 1, 10)[1]
    assert.equal(1, f.events.d.data.body.n)
    assert.equal(200, (H.http{ port = 7779, method = "GET", path = "/metrics" }))
    es:kill()
    sensor:kill()
    srv:kill()
  end)
end)
