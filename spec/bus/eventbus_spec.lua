-- An EventBus object with jetstreamExotic selects the JetStream bus, as in Argo: the
-- EventSource and the Sensor name it (eventBusName, default "default"), no --bus flag needed.
local H = require "helpers.herald"

local has_server = os.execute("command -v nats-server >/dev/null 2>&1")
if has_server ~= true and has_server ~= 0 then has_server = false end

describe("EventBus jetstreamExotic", function()
  if not has_server then
    pending("nats-server is not installed")
    return
  end

  it("carries events between an eventsource and a sensor process that name it", function()
    local port = H.free_port()
    local srv = H.spawn("nats-server", { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", H.tmpdir() })
    H.wait_port(port, 10)
    local dir = H.tmpdir()
    local wport = H.free_port()
    H.write(dir .. "/bus.yaml", ([[
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstreamExotic:
    url: nats://127.0.0.1:%d
]]):format(port))
    H.write(dir .. "/es.yaml", H.webhook_es{ port = wport })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local sensor = H.start{ "sensor", dir }
    sensor:wait_for("JetStream at nats://127.0.0.1:" .. port, { timeout = 10 })
    sensor:wait_for(" ready on ", { timeout = 10 })
    local es = H.start{ "eventsource", dir }
    es:wait_for("listening for", { timeout = 10 })
    assert.equal(200, (H.post_json(wport, "/hook", '{"via":"eventbus"}')))
    local f = H.wait_firings(sensor, 1, 10)[1]
    assert.equal("eventbus", f.events.d.data.body.via)
    es:kill()
    sensor:kill()
    srv:kill()
  end)

  it("still refuses component mode with neither --bus nor an EventBus", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local code, _, err = H.run{ "sensor", dir }
    assert.equal(2, code)
    assert.matches("never meet", err)
  end)

  it("rejects what Herald does not support yet in a JetStream EventBus", function()
    local dir = H.tmpdir()
    H.write(dir .. "/bus.yaml", [[
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstreamExotic:
    url: nats://127.0.0.1:4222
    streamConfig: |
      maxAge: 24h
]])
    local code, _, err = H.run{ "lint", dir }
    assert.equal(1, code)
    assert.matches("bus%.yaml:%d+:%d+: spec%.jetstreamExotic%.streamConfig: not supported by Herald yet", err)
  end)
end)
