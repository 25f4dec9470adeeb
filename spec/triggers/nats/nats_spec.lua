-- The NATS trigger end to end: a webhook event fires a Sensor whose trigger publishes to a real
-- nats-server on 127.0.0.1; a small subscriber (helpers/nats_sub.lua) checks the exact subject
-- and payload (numbers arrive as strings without useRawData, as in Argo). Auth (token, NKey), a server that is down, and recovery when it comes up.
local H = require "helpers.herald"
local nats_sub = require "helpers.nats_sub"
local cjson = require "cjson"

local has_server = os.execute("command -v nats-server >/dev/null 2>&1")
has_server = has_server == true or has_server == 0

local function start_server(port, extra)
  local args = { "-a", "127.0.0.1", "-p", tostring(port) }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local srv = H.spawn("nats-server", args)
  H.wait_port(port, 10)
  return srv
end

-- A webhook EventSource on `port` and a Sensor "s" with dependency "d" and the nats trigger
-- "t" whose body (yaml under `nats:`, indented 10) is given.
local function setup(dir, port, nats_body)
  H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
  H.write(dir .. "/s.yaml", H.sensor{
    deps = { { name = "d" } },
    triggers = { { name = "t", body = "        nats:\n" .. nats_body } },
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
            - src:
                dependencyName: d
                dataKey: body.n
              dest: n
]]

describe("nats trigger", function()
  if not has_server then
    pending("nats-server is not installed")
    return
  end

  local procs
  before_each(function() procs = {} end)
  after_each(function()
    for _, p in ipairs(procs) do p:kill() end
  end)
  local function track(p)
    procs[#procs + 1] = p
    return p
  end

  it("publishes the payload built from parameters to a subject taken from the event", function()
    local nport, wport, dir = H.free_port(), H.free_port(), H.tmpdir()
    track(start_server(nport))
    local sub = assert(nats_sub.connect(nport))
    assert(sub:subscribe(">"))
    setup(dir, wport, ([[
          url: nats://127.0.0.1:%d
          subject: default.subject
          parameters:
            - src:
                dependencyName: d
                dataKey: body.room
              dest: subject
              operation: append
]]):format(nport) .. PAYLOAD)
    local p = track(H.start{ "run", dir })
    p:wait_for("herald started")
    p:wait_for("connected to nats://127.0.0.1:" .. nport) -- a firing before is a RETRY (and fails)
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"hello","n":7,"room":".kitchen"}')))
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"again","n":8,"room":".hall"}')))
    local msgs = sub:wait(2, 5)
    assert.equal("default.subject.kitchen", msgs[1].subject)
    assert.same({ message = "hello", n = "7" }, cjson.decode(msgs[1].payload))
    assert.equal("default.subject.hall", msgs[2].subject)
    assert.same({ message = "again", n = "8" }, cjson.decode(msgs[2].payload))
    H.wait_until(function() return metric(p, "action_triggered_total") == 2 end, 5, p:describe())
    assert.equal(0, metric(p, "action_failed_total"))
    sub:close()
    assert.equal(0, p:stop())
  end)

  it("authenticates with a token from a Secret", function()
    local nport, wport, dir, secrets = H.free_port(), H.free_port(), H.tmpdir(), H.tmpdir()
    track(start_server(nport, { "--auth", "s3cret-token" }))
    assert.is_nil((nats_sub.connect(nport, { token = "wrong" })))
    local sub = assert(nats_sub.connect(nport, { token = "s3cret-token" }))
    assert(sub:subscribe("events.token"))
    os.execute("mkdir -p " .. secrets .. "/nats-auth")
    H.write(secrets .. "/nats-auth/token", "s3cret-token\n")
    setup(dir, wport, ([[
          url: nats://127.0.0.1:%d
          subject: events.token
          auth:
            token:
              name: nats-auth
              key: token
]]):format(nport) .. PAYLOAD)
    local p = track(H.start{ "run", dir, "--secrets-dir", secrets })
    p:wait_for("herald started")
    p:wait_for("connected to nats://127.0.0.1:" .. nport)
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"authed","n":1}')))
    local msgs = sub:wait(1, 5)
    assert.equal("events.token", msgs[1].subject)
    assert.same({ message = "authed", n = "1" }, cjson.decode(msgs[1].payload))
    H.wait_until(function() return metric(p, "action_triggered_total") == 1 end, 5, p:describe())
    sub:close()
    assert.equal(0, p:stop())
  end)

  it("authenticates with an NKey seed from a Secret (public key derived from the seed)", function()
    -- the NKey pair nats-server's and nats.c's own tests use
    local seed = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"
    local pub = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
    local nport, wport, dir, secrets = H.free_port(), H.free_port(), H.tmpdir(), H.tmpdir()
    local conf = H.write(H.tmpdir() .. "/nats.conf", ([[
authorization {
  users = [ { nkey: %s }, { user: spec, password: pw } ]
}
]]):format(pub))
    track(start_server(nport, { "-c", conf }))
    local sub = assert(nats_sub.connect(nport, { user = "spec", pass = "pw" }))
    assert(sub:subscribe("events.nkey"))
    os.execute("mkdir -p " .. secrets .. "/nats-nkey")
    H.write(secrets .. "/nats-nkey/seed", seed .. "\n")
    setup(dir, wport, ([[
          url: nats://127.0.0.1:%d
          subject: events.nkey
          auth:
            nkey:
              name: nats-nkey
              key: seed
]]):format(nport) .. PAYLOAD)
    local p = track(H.start{ "run", dir, "--secrets-dir", secrets })
    p:wait_for("herald started")
    -- connected first: a firing before that is a RETRY, and without a retryStrategy it fails
    p:wait_for("connected to nats://127.0.0.1:" .. nport)
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"nkey","n":2}')))
    local msgs = sub:wait(1, 5)
    assert.same({ message = "nkey", n = "2" }, cjson.decode(msgs[1].payload))
    H.wait_until(function() return metric(p, "action_triggered_total") == 1 end, 5, p:describe())
    sub:close()
    assert.equal(0, p:stop())
  end)

  it("counts failed actions while the server is down and delivers once it is up", function()
    local nport, wport, dir = H.free_port(), H.free_port(), H.tmpdir()
    setup(dir, wport, ([[
          url: nats://127.0.0.1:%d
          subject: events.later
]]):format(nport) .. PAYLOAD)
    local p = track(H.start{ "run", dir })
    p:wait_for("herald started")
    for i = 1, 3 do
      assert.equal(200, (H.post_json(wport, "/hook", '{"message":"lost","n":' .. i .. '}')))
    end
    H.wait_until(function() return metric(p, "action_failed_total") == 3 end, 10, p:describe())
    assert.equal(0, metric(p, "action_triggered_total"))
    assert.truthy(p:output("stderr"):find("not connected to the NATS server", 1, true))
    assert.is_false((p:exited()))

    -- the server comes up: nats.c reconnects on its own, the next firing goes through
    track(start_server(nport))
    local sub = assert(nats_sub.connect(nport))
    assert(sub:subscribe("events.>"))
    p:wait_for("connected to nats://127.0.0.1:" .. nport, { timeout = 10 })
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"arrives","n":4}')))
    local msgs = sub:wait(1, 5)
    assert.equal("events.later", msgs[1].subject)
    assert.same({ message = "arrives", n = "4" }, cjson.decode(msgs[1].payload))
    H.wait_until(function() return metric(p, "action_triggered_total") == 1 end, 5, p:describe())
    assert.equal(3, metric(p, "action_failed_total"))
    sub:close()
    assert.equal(0, p:stop())
  end)

  it("fails over to RETRY when the server goes away mid-run, and recovers", function()
    local nport, wport, dir = H.free_port(), H.free_port(), H.tmpdir()
    local srv = track(start_server(nport))
    setup(dir, wport, ([[
          url: nats://127.0.0.1:%d
          subject: events.flaky
]]):format(nport) .. PAYLOAD)
    local p = track(H.start{ "run", dir })
    p:wait_for("connected to nats://127.0.0.1:" .. nport)
    srv:kill()
    p:wait_for("disconnected from nats://127.0.0.1:" .. nport, { timeout = 10 })
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"dropped","n":1}')))
    H.wait_until(function() return metric(p, "action_failed_total") == 1 end, 10, p:describe())
    track(start_server(nport))
    p:wait_for("reconnected to nats://127.0.0.1:" .. nport, { timeout = 10 })
    local sub = assert(nats_sub.connect(nport))
    assert(sub:subscribe("events.flaky"))
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"back","n":2}')))
    local msgs = sub:wait(1, 5)
    -- the failed firing was not buffered and replayed behind our back
    assert.equal(1, #msgs)
    assert.same({ message = "back", n = "2" }, cjson.decode(msgs[1].payload))
    H.wait_until(function() return metric(p, "action_triggered_total") == 1 end, 5, p:describe())
    sub:close()
    assert.equal(0, p:stop())
  end)

  it("stops promptly (exit 0) while the server is unreachable", function()
    local nport, wport, dir = H.free_port(), H.free_port(), H.tmpdir()
    setup(dir, wport, ([[
          url: nats://127.0.0.1:%d
          subject: events.none
]]):format(nport) .. PAYLOAD)
    local p = track(H.start{ "run", dir })
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(wport, "/hook", '{"message":"x","n":1}')))
    H.wait_until(function() return metric(p, "action_failed_total") == 1 end, 10, p:describe())
    local t0 = H.now()
    assert.equal(0, p:stop())
    assert.is_true(H.now() - t0 < 5, "took " .. (H.now() - t0) .. " s")
  end)

  it("refuses to start when a referenced secret is missing", function()
    local wport, dir, secrets = H.free_port(), H.tmpdir(), H.tmpdir()
    setup(dir, wport, [[
          url: nats://127.0.0.1:4222
          subject: x
          auth:
            token:
              name: absent
              key: token
]] .. PAYLOAD)
    local code, _, err = H.run({ "run", dir, "--secrets-dir", secrets })
    assert.is_not.equal(0, code)
    assert.truthy(err:find("auth.token: cannot read secret absent/token", 1, true))
  end)
end)
