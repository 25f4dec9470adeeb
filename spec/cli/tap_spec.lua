-- herald tap (issue #17): attached to a live engine, it shows the events leaving each source,
-- each dependency's verdict with its filters' reasons, the firings with their rendered action,
-- and each action's outcome; filters and sampling; the engine runs the same with it attached.
local H = require "helpers.herald"
local cjson = require "cjson"

local function engine()
  local port = H.free_port()
  local dir = H.tmpdir()
  H.write(dir .. "/es.yaml", H.webhook_es { port = port })
  H.write(dir .. "/s.yaml", H.sensor { name = "s", deps = {
    { name = "big", filters = "      filters:\n        data:\n          - {path: body.n, type: number, comparator: \">\", value: [\"10\"]}\n" } },
    triggers = { { name = "t", conditions = "big" } } })
  H.write(dir .. "/other.yaml", H.sensor { name = "other", deps = { { name = "any" } }, triggers = { { name = "u" } } })
  local p = H.start { "run", dir }
  H.wait_port(port)
  return p, port
end

local function tap(p, args)
  local argv = { "tap", "--admin-addr", "127.0.0.1:" .. p.admin_port, "--admin-token-file", p.admin_token_file,
                 "--format", "json" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local t = H.start(argv)
  return t
end

-- A tap attaches at "now": wait until the engine has seen its first request.
local function attached(t)
  t:wait_for("tap: attached to", { timeout = 10 })
end

local function records(t)
  local out = {}
  for l in t:output("stdout"):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(l) end
  return out
end

describe("herald tap", function()
  it("streams events, verdicts with reasons, firings and outcomes", function()
    local p, port = engine()
    local t = tap(p, { "--count", "7" })
    attached(t)
    assert.equal(200, (H.post_json(port, "/hook", '{"n":50}'))) -- event, 2 verdicts, 2 firings, 2 outcomes
    assert.equal(0, t:wait_exit(5))
    local recs = records(t)
    assert.equal(7, #recs)
    local by = {}
    for _, r in ipairs(recs) do by[r.kind] = (by[r.kind] or 0) + 1 end
    assert.same({ event = 1, verdict = 2, firing = 2, outcome = 2 }, by)
    local ev = recs[1]
    assert.equal("event", ev.kind)
    assert.equal("es", ev.eventSourceName)
    assert.equal(50, ev.data.body.n)
    for _, r in ipairs(recs) do
      if r.kind == "firing" and r.triggerName == "t" then
        assert.equal(ev.eventID, r.events.big)
        assert.same({ type = "log" }, r.action)
      end
      if r.kind == "outcome" then assert.equal("done", r.status) end
    end
    -- a discard says what each filter got and wanted; --sensor and --kind filter
    t = tap(p, { "--count", "1", "--sensor", "s", "--kind", "verdict" })
    attached(t)
    assert.equal(200, (H.post_json(port, "/hook", '{"n":3}')))
    assert.equal(0, t:wait_exit(5))
    local v = records(t)[1]
    assert.equal("verdict", v.kind)
    assert.equal("s", v.sensorName)
    assert.is_false(v.passed)
    assert.equal("data", v.filters[1].kind)
    assert.equal("body.n: got 3, want > 10", v.filters[1].reason)
    p:stop()
  end)

  it("samples by event id, keeping each sampled event's records together", function()
    local p, port = engine()
    local t = tap(p, { "--sample", "4", "--kind", "event,firing", "--sensor", "s" })
    local t2 = tap(p, { "--sample", "4", "--kind", "event" })
    attached(t)
    attached(t2)
    for i = 1, 80 do assert.equal(200, (H.post_json(port, "/hook", '{"n":' .. (20 + i) .. '}'))) end
    H.wait_until(function() return #records(t2) > 0 end, 5)
    require("socket").sleep(1.2)
    t:kill()
    t2:kill()
    local evs = records(t2)
    -- about a quarter of 80 (ids are random): well below all, above none
    assert.is_true(#evs > 5 and #evs < 45, #evs .. " sampled events")
    -- the sensor-filtered tap sees firings only for events it sampled... and no events (they
    -- belong to no sensor), so its records are the firings of sampled events
    for _, r in ipairs(records(t)) do assert.equal("firing", r.kind) end
    p:stop()
  end)

  it("says where it tried when the engine is not there", function()
    local port = H.free_port()
    local dir = H.tmpdir()
    H.write(dir .. "/token", "0123456789abcdef0123\n")
    local code, _, err = H.run { "tap", "--admin-addr", "127.0.0.1:" .. port, "--admin-token-file", dir .. "/token" }
    assert.equal(1, code)
    assert.matches("error: herald tap: cannot reach the admin endpoint at 127%.0%.0%.1:" .. port, err)
  end)
end)
