-- Active/passive replicas on the JetStream bus (Argo's leader election): with `replicas: 2`, two
-- `herald sensor` processes run the same Sensor, one leads (fires) and the other stands by;
-- when the leader is killed the standby takes over once the lease lapses; a leader that cannot
-- renew its lease (server gone) steps down and exits 1. EventSources: a calendar one elects a
-- leader, a webhook-only one runs every replica.
local H = require "helpers.herald"
local nats_sub = require "helpers.nats_sub"
local cjson = require "cjson"

local has_server = os.execute("command -v nats-server >/dev/null 2>&1")
has_server = has_server == true or has_server == 0

local LEASE = { LEADER_ELECTION_LEASE_DURATION = "2s" } -- Argo's variable; 5s by default

describe("jetstream leader election", function()
  if not has_server then
    pending("nats-server is not installed")
    return
  end

  local nats_port, url, srv, hook_port

  before_each(function()
    srv, nats_port, url = H.nats_server()
    hook_port = H.free_port()
  end)

  after_each(function()
    srv:stop()
  end)

  local function sensor_dir()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } } .. "  replicas: 2\n")
    return dir
  end

  it("one sensor replica fires, the other stands by and takes over when the leader dies", function()
    local sdir, edir = sensor_dir(), H.tmpdir()
    H.write(edir .. "/es.yaml", H.webhook_es{ port = hook_port })
    local es = H.start{ "eventsource", edir, "--bus", url }
    es:wait_for("listening for", { timeout = 10 })
    local a = H.start({ "sensor", sdir, "--bus", url }, { env = LEASE })
    a:wait_for("leading sensor-s", { timeout = 10 })
    a:wait_for(" ready on ", { timeout = 10 })
    local b = H.start({ "sensor", sdir, "--bus", url }, { env = LEASE })
    b:wait_for("sensor-s is led by ", { timeout = 10 })
    for i = 1, 3 do assert.equal(200, (H.post_json(hook_port, "/hook", cjson.encode{ n = i }))) end
    H.wait_firings(a, 3, 10)
    assert.equal(0, b:count(" ready on "), "the standby subscribed to nothing")
    assert.equal(0, #H.firings(b))
    a:kill()
    local t0 = H.now()
    b:wait_for("leading sensor-s", { timeout = 10 })
    local took = H.now() - t0
    assert.is_true(took < 4, ("took over after %.1f s (lease 2 s)"):format(took))
    b:wait_for(" ready on ", { timeout = 10 })
    for i = 4, 5 do assert.equal(200, (H.post_json(hook_port, "/hook", cjson.encode{ n = i }))) end
    local f = H.wait_firings(b, 2, 10)
    assert.equal(4, f[1].events.d.data.body.n)
    assert.equal(5, f[2].events.d.data.body.n)
    -- the lease lives in the bucket herald_leases, with the lease time as its TTL
    local c = assert(nats_sub.connect(nats_port))
    assert(c:subscribe("_INBOX.info"))
    c.c:send("PUB $JS.API.STREAM.INFO.KV_herald_leases _INBOX.info 0\r\n\r\n")
    local info = cjson.decode(c:wait(1, 5)[1].payload)
    c:close()
    assert.equal(2e9, info.config.max_age)
    assert.equal(0, b:stop())
    es:stop()
  end)

  it("a leader that cannot renew its lease steps down and exits 1", function()
    local a = H.start({ "sensor", sensor_dir(), "--bus", url }, { env = LEASE })
    a:wait_for("leading sensor-s", { timeout = 10 })
    -- running (its state bucket made, its consumer ready) before the server goes: a server killed
    -- in the middle of a synchronous JetStream request holds the bus's close up to nats.c's
    -- request timeout (5 s)
    a:wait_for(" ready on ", { timeout = 10 })
    srv:stop()
    a:wait_exit(15)
    assert.equal(1, a.code)
    assert.truthy(a:output("stderr"):find("lost the lead of sensor-s (not renewed in time): exiting", 1, true))
  end)

  it("a calendar EventSource elects a leader; a webhook-only one runs every replica", function()
    local cal, web = H.tmpdir(), H.tmpdir()
    H.write(cal .. "/es.yaml", "apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: tick\n"
      .. "spec:\n  replicas: 2\n  calendar:\n    every:\n      interval: 200ms\n")
    H.write(web .. "/es.yaml", H.webhook_es{ port = hook_port } .. "  replicas: 2\n")
    local c1 = H.start({ "eventsource", cal, "--bus", url }, { env = LEASE })
    c1:wait_for("leading eventsource-tick", { timeout = 10 })
    local c2 = H.start({ "eventsource", cal, "--bus", url }, { env = LEASE })
    c2:wait_for("eventsource-tick is led by ", { timeout = 10 })
    -- ticks come from the leader only: its name is in the events' source... both publish the
    -- same source, so count them: 200 ms apart from one process, not twice as many
    local sub = assert(nats_sub.connect(nats_port))
    assert(sub:subscribe("default.tick.every"))
    local t0 = H.now()
    local msgs = sub:wait(6, 5)
    local span = H.now() - t0
    sub:close()
    assert.is_true(span >= 0.9, ("6 ticks in %.2f s: more than one replica ticking"):format(span))
    assert.is_nil(c2:output("stderr"):find("leading eventsource-tick", 1, true))
    assert.equal(6, #msgs)
    local w = H.start({ "eventsource", web, "--bus", url }, { env = LEASE })
    w:wait_for("listening for", { timeout = 10 })
    assert.is_nil(w:output("stderr"):find("campaigning", 1, true))
    for _, p in ipairs{ c1, c2, w } do assert.equal(0, p:stop()) end
  end)
end)
