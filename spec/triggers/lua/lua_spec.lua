-- Herald's Lua trigger: a sandboxed script receives the events and returns the action.
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

describe("lua trigger", function()
  it("runs the action its script returns: an HTTP call, a log line, or nothing", function()
    local sink = sink_client.start{}
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "decide", body = ([[
        lua:
          script: |
            local body = events.d.data.body
            if body.urgent then
              return { type = "http", url = "http://127.0.0.1:%d/page", method = "PUT",
                       headers = { ["X-Who"] = body.who }, body = { who = body.who, n = body.n } }
            elseif body.skip then
              return nil
            end
            return { type = "log", message = "noted " .. body.who }
]]):format(sink.port) } } })
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(port, "/hook", '{"urgent":true,"who":"ada","n":3}')))
    assert.equal(200, (H.post_json(port, "/hook", '{"who":"bob"}')))
    assert.equal(200, (H.post_json(port, "/hook", '{"skip":true,"who":"eve"}')))
    local r = sink.wait_requests(1, 5)[1]
    assert.equal("PUT", r.method)
    assert.equal("/page", r.path)
    assert.equal("ada", r.headers["x-who"])
    assert.same({ who = "ada", n = 3 }, cjson.decode(r.body))
    local f = H.wait_firings(p, 1)[1]
    assert.equal("noted bob", f.message)
    H.wait_until(function()
      return H.metrics(p)['argo_events_action_triggered_total{sensor_name="s",trigger_name="decide"}'] == 2
    end, 5, "two actions")
    assert.equal(1, #sink.requests())
    p:kill()
    sink.stop()
  end)

  it("is sandboxed: a hostile script fails its action alone", function()
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "decide", body = [[
        lua:
          script: |
            if events.d.data.body.evil then os.execute("true") end
            return { type = "log", message = "ok" }
]] } } })
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(port, "/hook", '{"evil":true}')))
    assert.equal(200, (H.post_json(port, "/hook", '{}')))
    H.wait_firings(p, 1)
    assert.truthy(p:output("stderr"):find("os.execute is not available in Herald's Lua sandbox", 1, true))
    assert.equal(1, H.metrics(p)['argo_events_action_failed_total{sensor_name="s",trigger_name="decide"}'])
    p:kill()
  end)
end)
