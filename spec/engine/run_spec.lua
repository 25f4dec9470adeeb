-- End-to-end: `herald run` on the quickstart, conditions, data filters, HTTP trigger, metrics,
-- graceful stop. Each test starts a fresh herald process and talks to it over its real ports.
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

local post, firings, wait_firings = H.post_json, H.firings, H.wait_firings

describe("herald run", function()
  it("runs the quickstart: POST /example reaches the log trigger with the event", function()
    local p = H.start{ "run", H.source_dir .. "/examples/quickstart/" }
    p:wait_for("herald started")
    local status, _, body = post(12000, "/example", '{"message":"hello"}')
    assert.equal(200, status)
    assert.equal("success", body)
    local f = wait_firings(p, 1)[1]
    assert.equal("webhook-sensor", f.sensorName)
    assert.equal("log-trigger", f.triggerName)
    local ev = f.events["example-dep"]
    assert.equal("1.0", ev.specversion)
    assert.equal("webhook-example", ev.source)
    assert.equal("example-endpoint", ev.subject)
    assert.equal("webhook", ev.type)
    assert.equal("application/json", ev.datacontenttype)
    assert.matches("^%x+$", ev.id)
    assert.equal(32, #ev.id)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d+Z$", ev.time)
    assert.same({ message = "hello" }, ev.data.body)
    assert.same({ "application/json" }, ev.data.header["Content-Type"])

    -- Argo's metric names, counted
    local m = H.metrics(p)
    assert.equal(1, m['argo_events_events_sent_total{eventsource_name="webhook-example",event_name="example-endpoint"}'])
    assert.equal(1, m['argo_events_action_triggered_total{sensor_name="webhook-sensor",trigger_name="log-trigger"}'])
    assert.equal(0, m['argo_events_action_failed_total{sensor_name="webhook-sensor",trigger_name="log-trigger"}'])
    assert.equal(1, m['argo_events_event_service_running_total{eventsource_name="webhook-example"}'])
    assert.equal(0, p:stop())
  end)

  it("exits 0 on SIGINT after delivering what it accepted", function()
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    for i = 1, 20 do assert.equal(200, (post(port, "/hook", '{"n":' .. i .. '}'))) end
    assert.equal(0, p:stop(require("posix.signal").SIGINT))
    assert.equal(20, #firings(p))
    assert.truthy(p:output("stderr"):find("herald stopped", 1, true))
  end)

  describe("conditions", function()
    local dir, port, p
    before_each(function()
      dir = H.tmpdir()
      port = H.free_port()
      H.write(dir .. "/es.yaml", H.webhook_es{ events = {
        { name = "a", endpoint = "/a", port = port },
        { name = "b", endpoint = "/b", port = port },
        { name = "c", endpoint = "/c", port = port },
      } })
      H.write(dir .. "/s.yaml", H.sensor{
        deps = { { name = "dep-a", event = "a" }, { name = "dep-b", event = "b" }, { name = "dep-c", event = "c" } },
        triggers = {
          { name = "both", conditions = "dep-a && dep-b" },
          { name = "either", conditions = "dep-a || dep-b" },
          { name = "grouped", conditions = "(dep-a || dep-b) && dep-c" },
        },
      })
      p = H.start{ "run", dir }
      p:wait_for("herald started")
    end)
    after_each(function() p:kill() end)

    local function names(fs)
      local t = {}
      for _, f in ipairs(fs) do t[#t + 1] = f.triggerName end
      table.sort(t)
      return t
    end

    it("fire exactly when their boolean expression over dependencies holds", function()
      assert.equal(200, (post(port, "/a", '{"v":1}')))
      local fs = wait_firings(p, 1)
      assert.same({ "either" }, names(fs))

      assert.equal(200, (post(port, "/a", '{"v":2}')))
      wait_firings(p, 2)
      assert.equal(200, (post(port, "/b", '{"v":3}')))
      fs = wait_firings(p, 4)
      assert.same({ "both", "either", "either", "either" }, names(fs))
      -- latest wins: `both` fired with the second event of dep-a
      for _, f in ipairs(fs) do
        if f.triggerName == "both" then
          assert.same({ v = 2 }, f.events["dep-a"].data.body)
          assert.same({ v = 3 }, f.events["dep-b"].data.body)
        end
      end

      -- grouped: (dep-a || dep-b) already satisfied by earlier events; dep-c completes it
      assert.equal(200, (post(port, "/c", '{"v":4}')))
      fs = wait_firings(p, 5)
      assert.same({ "both", "either", "either", "either", "grouped" }, names(fs))
      -- state is cleared after firing: another c alone does not fire `grouped`
      assert.equal(200, (post(port, "/c", '{"v":5}')))
      assert.equal(200, (post(port, "/a", '{"v":6}')))
      fs = wait_firings(p, 7)
      assert.same({ "both", "either", "either", "either", "either", "grouped", "grouped" }, names(fs))
      local m = H.metrics(p)
      assert.equal(1, m['argo_events_action_triggered_total{sensor_name="s",trigger_name="both"}'])
      assert.equal(4, m['argo_events_action_triggered_total{sensor_name="s",trigger_name="either"}'])
      assert.equal(2, m['argo_events_action_triggered_total{sensor_name="s",trigger_name="grouped"}'])
    end)
  end)

  it("applies data filters: string regex, number comparator, bool", function()
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d", filters = [[
      filters:
        dataLogicalOperator: and
        data:
          - path: body.kind
            type: string
            value: ["^order\\.", "^refund$"]
          - path: body.amount
            type: number
            comparator: ">="
            value: ["100"]
          - path: body.paid
            type: bool
            value: ["true"]
]] } } })
    local p = H.start{ "run", dir, "--log-level", "debug" }
    p:wait_for("herald started")
    local cases = {
      { '{"kind":"order.created","amount":150,"paid":true}', true },
      { '{"kind":"refund","amount":100,"paid":true}', true },
      { '{"kind":"refunds","amount":100,"paid":true}', false }, -- anchored $
      { '{"kind":"order.created","amount":99.5,"paid":true}', false },
      { '{"kind":"order.created","amount":"250","paid":true}', true }, -- numeric string
      { '{"kind":"order.created","amount":150,"paid":false}', false },
      { '{"kind":"xorder.created","amount":150,"paid":true}', false },
      { '{"amount":150,"paid":true}', false }, -- path missing
    }
    for i, c in ipairs(cases) do
      local body = c[1]:gsub("}$", ',"case":' .. i .. "}")
      assert.equal(200, (post(port, "/hook", body)))
    end
    local m = H.wait_until(function()
      local m = H.metrics(p)
      local f = m['herald_events_filtered_total{sensor_name="s",dependency_name="d"}'] or 0
      local t = m['argo_events_action_triggered_total{sensor_name="s",trigger_name="t"}'] or 0
      return f + t == #cases and m
    end, 5, "all cases processed")
    local fired = {}
    for _, f in ipairs(firings(p)) do fired[#fired + 1] = f.events.d.data.body.case end
    table.sort(fired)
    assert.same({ 1, 2, 5 }, fired)
    assert.equal(5, m['herald_events_filtered_total{sensor_name="s",dependency_name="d"}'])
    assert.truthy(p:output("stderr"):find("path body.kind does not exist", 1, true))
    -- the embedded bus's health: every event published, delivered once and acknowledged
    local B = '{bus="embedded"}'
    m = H.wait_until(function()
      local x = H.metrics(p)
      return x["herald_bus_acked_total" .. B] == #cases and x
    end, 5, "all deliveries acked")
    assert.equal(1, m["herald_bus_connected" .. B])
    assert.equal(#cases, m["herald_bus_published_total" .. B])
    assert.equal(#cases, m["herald_bus_delivered_total" .. B])
    assert.equal(0, m["herald_bus_in_flight" .. B])
    assert.equal(0, m["herald_bus_rejected_total" .. B])
    p:kill()
  end)

  it("delivers to an HTTP trigger with parameters and payload built from the event", function()
    local sink = sink_client.start{ status = 200 }
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "call", body = ([[
        http:
          url: http://127.0.0.1:%d/placeholder
          method: PUT
          headers:
            X-Static: yes
          payload:
            - src: {dependencyName: d, dataKey: body.user.name}
              dest: who
            - src: {dependencyName: d, dataKey: body.count, useRawData: true}
              dest: n
            - src: {dependencyName: d, dataKey: body.missing, value: "fallback"}
              dest: deep.default
            - src: {dependencyName: d, contextKey: subject}
              dest: event
      parameters:
        - src: {dependencyName: d, dataKey: body.path}
          dest: http.url
          operation: append
]]):format(sink.port) } } })
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    assert.equal(200, (post(port, "/hook", '{"user":{"name":"ada"},"count":3,"path":"/users"}')))
    local reqs = sink.wait_requests(1, 5)
    local r = reqs[1]
    assert.equal("PUT", r.method)
    assert.equal("/placeholder/users", r.path)
    assert.equal("yes", r.headers["x-static"])
    assert.equal("application/json", r.headers["content-type"])
    assert.same({ who = "ada", n = 3, deep = { default = "fallback" }, event = "ev" }, cjson.decode(r.body))
    H.wait_until(function()
      return H.metrics(p)['argo_events_action_triggered_total{sensor_name="s",trigger_name="call"}'] == 1
    end, 5, "triggered metric")
    p:kill()
    sink.stop()
  end)

  it("counts an HTTP trigger answered with 500 as failed, and keeps going", function()
    local sink = sink_client.start{ status = 200, fail_first = 1, fail_status = 500 }
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "call", body = ([[
        http:
          url: http://127.0.0.1:%d/x
]]):format(sink.port) } } })
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    assert.equal(200, (post(port, "/hook", '{"n":1}')))
    sink.wait_requests(1, 5)
    assert.equal(200, (post(port, "/hook", '{"n":2}')))
    sink.wait_requests(2, 5)
    local m = H.wait_until(function()
      local m = H.metrics(p)
      return (m['argo_events_action_triggered_total{sensor_name="s",trigger_name="call"}'] or 0) +
        (m['argo_events_action_failed_total{sensor_name="s",trigger_name="call"}'] or 0) == 2 and m
    end, 5, "two outcomes")
    assert.equal(1, m['argo_events_action_failed_total{sensor_name="s",trigger_name="call"}'])
    assert.equal(1, m['argo_events_action_triggered_total{sensor_name="s",trigger_name="call"}'])
    assert.truthy(p:output("stderr"):find("response status 500", 1, true))
    p:kill()
    sink.stop()
  end)

  it("prints the compiled Lua of a sensor with spec-path comments", function()
    local code, out = H.run{ "compile", H.source_dir .. "/bench/webhook-log/sensor.yaml" }
    assert.equal(0, code)
    assert.truthy(out:find("-- spec.dependencies[0] \"order\": events from \"bench\"/\"ingest\"", 1, true))
    assert.truthy(out:find("-- spec.dependencies[0].filters.data[0]: \"body.type\" is a string", 1, true))
    assert.truthy(out:find("-- spec.triggers[0] \"log\" (log)", 1, true))
    assert.truthy(loadstring(out), "the output is valid Lua")
  end)
end)
