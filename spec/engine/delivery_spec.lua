-- Delivery semantics owned by the engine: retryStrategy (with backoff timing), dead letters,
-- policy.status.allow, permanent failures, rateLimit spacing, metrics.
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"

local function run(trigger_yaml, sink)
  local dir = H.tmpdir()
  local port = H.free_port()
  H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
  H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = {
    { name = "call", body = ("        http:\n          url: http://127.0.0.1:%d/x\n"):format(sink.port),
      extra = trigger_yaml } } })
  local p = H.start{ "run", dir }
  p:wait_for("herald started")
  return p, port
end

local function metric(p, name, trigger)
  return H.metrics(p)[('%s{sensor_name="s",trigger_name="%s"}'):format(name, trigger or "call")] or 0
end

describe("delivery", function()
  it("retries a failed action with the backoff of retryStrategy, then succeeds", function()
    local sink = sink_client.start{ fail_first = 2, fail_status = 503 }
    local p, port = run([[
      retryStrategy: {steps: 3, duration: 200ms, factor: 2, jitter: 0}
]], sink)
    assert.equal(200, (H.post_json(port, "/hook", '{"n":1}')))
    local reqs = sink.wait_requests(3, 10)
    -- waits of 200 ms, then 400 ms
    local d1, d2 = reqs[2].t - reqs[1].t, reqs[3].t - reqs[2].t
    assert.is_true(d1 >= 0.19 and d1 < 0.6, "first wait " .. d1)
    assert.is_true(d2 >= 0.39 and d2 < 1.0, "second wait " .. d2)
    H.wait_until(function() return metric(p, "argo_events_action_triggered_total") == 1 end, 5, "triggered")
    assert.equal(2, metric(p, "argo_events_action_failed_total"))
    assert.equal(0, metric(p, "argo_events_action_retries_failed_total"))
    p:kill()
    sink.stop()
  end)

  it("hands the events to the dlqTrigger when the retries are exhausted", function()
    local sink = sink_client.start{ status = 500 }
    local p, port = run([[
      retryStrategy: {steps: 2, duration: 50ms}
      dlqTrigger:
        template:
          name: dead
          log: {}
]], sink)
    assert.equal(200, (H.post_json(port, "/hook", '{"order":42}')))
    local f = H.wait_firings(p, 1, 10)[1]
    assert.equal("dead", f.triggerName)
    assert.equal(42, f.events.d.data.body.order)
    assert.equal(2, #sink.requests())
    assert.equal(2, metric(p, "argo_events_action_failed_total"))
    assert.equal(1, metric(p, "argo_events_action_retries_failed_total"))
    assert.equal(1, metric(p, "herald_action_dead_lettered_total"))
    assert.equal(1, metric(p, "argo_events_action_triggered_total", "dead"))
    p:kill()
    sink.stop()
  end)

  it("does not retry a permanent failure (4xx), and counts it", function()
    local sink = sink_client.start{ status = 400 }
    local p, port = run([[
      retryStrategy: {steps: 5, duration: 20ms}
]], sink)
    assert.equal(200, (H.post_json(port, "/hook", '{}')))
    H.wait_until(function() return metric(p, "argo_events_action_retries_failed_total") == 1 end, 5, "given up")
    assert.equal(1, #sink.requests())
    assert.equal(1, metric(p, "argo_events_action_failed_total"))
    p:kill()
    sink.stop()
  end)

  it("counts only the statuses in policy.status.allow as success", function()
    local sink = sink_client.start{ status = 200 }
    local p, port = run([[
      policy:
        status:
          allow: [202]
]], sink)
    assert.equal(200, (H.post_json(port, "/hook", '{}')))
    H.wait_until(function() return metric(p, "argo_events_action_failed_total") == 1 end, 5, "failed")
    assert.equal(0, metric(p, "argo_events_action_triggered_total"))
    assert.truthy(p:output("stderr"):find("response status 200", 1, true))
    p:kill()
    sink.stop()
  end)

  it("retries when the target refuses connections, then gives up", function()
    local closed = { port = H.free_port() } -- nothing listens there
    local p, port = run([[
      retryStrategy: {steps: 3, duration: 20ms}
]], closed)
    assert.equal(200, (H.post_json(port, "/hook", '{}')))
    H.wait_until(function() return metric(p, "argo_events_action_retries_failed_total") == 1 end, 5, "given up")
    assert.equal(3, metric(p, "argo_events_action_failed_total"))
    assert.truthy(p:output("stderr"):find("Connection refused", 1, true) or p:output("stderr"):find("Couldn't connect", 1, true))
    p:kill()
  end)

  it("spaces actions to rateLimit and holds the rest back", function()
    local sink = sink_client.start{}
    local p, port = run([[
      rateLimit: {unit: Second, requestsPerUnit: 10}
]], sink)
    for i = 1, 6 do assert.equal(200, (H.post_json(port, "/hook", '{"i":' .. i .. '}'))) end
    local reqs = sink.wait_requests(6, 10)
    for i = 2, 6 do
      local gap = reqs[i].t - reqs[i - 1].t
      assert.is_true(gap >= 0.085, ("gap %d is %.3f s"):format(i, gap))
    end
    assert.is_true(reqs[6].t - reqs[1].t >= 0.45)
    p:kill()
    sink.stop()
  end)

  -- engine/curl_loop.c: past 64 transfers to one origin, the rest wait in that origin's queue;
  -- every one is sent in the end, over at most 64 connections, and another origin's transfers
  -- do not wait behind them.
  it("queues transfers past 64 per origin, sends them all, and does not hold back other origins", function()
    local slow, fast = sink_client.start{ delay_ms = 1000 }, sink_client.start{}
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = {
      { name = "slow", body = ("        http:\n          url: http://127.0.0.1:%d/x\n          payload:\n" ..
        "            - src: {dependencyName: d, dataKey: body.n}\n              dest: n\n"):format(slow.port) },
      { name = "fast", body = ("        http:\n          url: http://127.0.0.1:%d/y\n"):format(fast.port) },
    } })
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    local N = 200 -- 64 at once to the slow sink: it needs four rounds of 1 s
    local t0 = H.now()
    for i = 1, N do assert.equal(200, (H.post_json(port, "/hook", ('{"n":%d}'):format(i)))) end
    fast.wait_requests(N, 10)
    local fast_took = H.now() - t0
    assert.is_true(#slow.requests() < N, "the slow origin is still working through its queue")
    local reqs = slow.wait_requests(N, 20)
    local conns, seen = {}, {}
    for _, r in ipairs(reqs) do
      conns[r.conn] = true
      assert.is_true(r.open <= 64, "open connections: " .. r.open)
      seen[tonumber(require("cjson").decode(r.body).n)] = true -- Argo's parameters are strings
    end
    local nconns = 0
    for _ in pairs(conns) do nconns = nconns + 1 end
    assert.is_true(nconns <= 64, nconns .. " connections")
    for i = 1, N do assert.is_true(seen[i], "event " .. i) end
    assert.is_true(fast_took < 3.5, ("the fast origin took %.2f s"):format(fast_took))
    H.wait_until(function() return metric(p, "argo_events_action_triggered_total", "slow") == N end, 5, "all triggered")
    assert.equal(0, metric(p, "argo_events_action_failed_total", "slow"))
    p:kill()
    slow.stop()
    fast.stop()
  end)

  -- On the embedded bus the sensors on one event share a delivery (herald/engine.lua); a slow
  -- sensor must still not hold back the others, as its own subscription would not have.
  it("a sensor whose triggers are slow does not hold back another on the same event", function()
    local sink = sink_client.start{ delay_ms = 3000 }
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ name = "slow", deps = { { name = "d" } }, triggers = {
      { name = "call", body = ("        http:\n          url: http://127.0.0.1:%d/x\n"):format(sink.port),
        extra = "      atLeastOnce: true\n" } } } .. "---\n" .. H.sensor{ name = "fast", deps = { { name = "d" } } })
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    local N = 400 -- more than a subscription's default window (256)
    local t0 = H.now()
    for i = 1, N do assert.equal(200, (H.post_json(port, "/hook", ('{"n":%d}'):format(i)))) end
    H.wait_firings(p, N, 10)
    local took = H.now() - t0
    -- every slow request takes 3 s and at most 64 run at once, so the slow sensor is far from
    -- done; the fast one did not wait for it
    assert.is_true(took < 2.5, ("the fast sensor took %.2f s"):format(took))
    assert.is_true(#sink.requests() < N, "the slow sensor is still working")
    assert.equal(N, H.metrics(p)['argo_events_action_triggered_total{sensor_name="fast",trigger_name="t"}'])
    p:kill()
    sink.stop()
  end)
end)
