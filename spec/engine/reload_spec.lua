-- Reload without restart (issue #17, item 6): SIGHUP and `herald run --watch` validate the
-- changed specs first (a bad edit keeps the running version and says why), then swap what
-- changed, keeping the dependency state of unchanged sensors, and losing no accepted event.
local H = require "helpers.herald"
local signal = require "posix.signal"

local function sensor(name, deps, conditions, trig)
  return H.sensor { name = name, deps = deps, triggers = { { name = trig or "t", conditions = conditions } } }
end

local function hup(p) signal.kill(p.pid, signal.SIGHUP) end

describe("reload", function()
  it("SIGHUP swaps a changed sensor, keeps an unchanged one's state, and survives a bad edit", function()
    local port = H.free_port()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", H.webhook_es { port = port, events = {
      { name = "a", endpoint = "/a", port = port }, { name = "b", endpoint = "/b", port = port } } })
    -- "keep" waits for a and b: its held event for a must survive the reload
    H.write(dir .. "/keep.yaml", sensor("keep", { { name = "da", event = "a" }, { name = "db", event = "b" } }, "da && db"))
    H.write(dir .. "/change.yaml", sensor("change", { { name = "d", event = "a" } }, nil, "before"))
    local p = H.start { "run", dir }
    H.wait_port(port)
    assert.equal(200, (H.post_json(port, "/a", '{"n":1}'))) -- fires change/before; keep holds da
    H.wait_firings(p, 1)
    -- a bad edit: nothing changes, the error names file:line:col
    H.write(dir .. "/change.yaml", sensor("change", { { name = "d", event = "a" } }, nil, "after") .. "  bogus: 1\n")
    hup(p)
    p:wait_for("reload: 1 error(s); keeping the running version", { plain = true })
    assert.truthy(p:output("stderr"):find("change.yaml:%d+:%d+: spec.bogus: unknown field"))
    -- a good edit: the trigger is renamed
    H.write(dir .. "/change.yaml", sensor("change", { { name = "d", event = "a" } }, nil, "after"))
    hup(p)
    p:wait_for("reloaded in", { plain = true })
    assert.truthy(p:output("stderr"):find('"unchanged":2', 1, true), p:output("stderr"))
    assert.truthy(p:output("stderr"):find('"changed":1', 1, true))
    assert.equal(200, (H.post_json(port, "/b", '{"n":2}'))) -- completes keep (state kept)
    assert.equal(200, (H.post_json(port, "/a", '{"n":3}'))) -- fires change/after, not before
    H.wait_firings(p, 3)
    local out = p:output("stderr")
    local by = {}
    for l in out:gmatch("[^\n]+") do
      local trig = l:match('"logger":"sensor:[%w-]+/trigger:([%w-]+)","msg":"Successfully processed')
      if trig then by[trig] = (by[trig] or 0) + 1 end
    end
    assert.equal(1, by.before, out)
    assert.equal(1, by.after, out)
    assert.equal(1, by.t, out) -- keep's trigger fired from the event held across the reload
    p:stop()
  end)

  it("adds and removes event sources and sensors; --watch reloads on save", function()
    local p1, p2 = H.free_port(), H.free_port()
    local dir = H.tmpdir()
    H.write(dir .. "/es1.yaml", H.webhook_es { name = "one", port = p1 })
    H.write(dir .. "/s1.yaml", sensor("s1", { { name = "d", es = "one" } }))
    local p = H.start { "run", dir, "--watch" }
    H.wait_port(p1)
    H.write(dir .. "/es2.yaml", H.webhook_es { name = "two", port = p2 })
    H.write(dir .. "/s2.yaml", sensor("s2", { { name = "d", es = "two" } }))
    H.wait_port(p2, 5) -- the new source listens
    p:wait_for("reloaded in", { plain = true })
    os.remove(dir .. "/es1.yaml")
    os.remove(dir .. "/s1.yaml")
    -- the removed source's route is gone (its port may stay open for other routes)
    H.wait_until(function()
      local code = H.post_json(p1, "/hook", '{"x":0}')
      return code ~= 200
    end, 5, function() return "the route on " .. p1 .. " to go\n" .. p:describe() end)
    assert.truthy(p:output("stderr"):find('"removed":2', 1, true))
    assert.equal(200, (H.post_json(p2, "/hook", '{"x":1}')))
    H.wait_firings(p, 1)
    p:stop()
  end)

  it("loses no accepted event while reloading under load", function()
    local port = H.free_port()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", H.webhook_es { port = port })
    H.write(dir .. "/s.yaml", sensor("s", { { name = "d" } }))
    H.write(dir .. "/other.yaml", sensor("other", { { name = "d" } }, nil, "o1"))
    local p = H.start { "run", dir }
    H.wait_port(port)
    local accepted = 0
    for i = 1, 300 do
      if H.post_json(port, "/hook", '{"i":' .. i .. '}') == 200 then accepted = accepted + 1 end
      if i % 60 == 0 then -- "other" changes under load; "s" stays and must see every event
        H.write(dir .. "/other.yaml", sensor("other", { { name = "d" } }, nil, "o" .. (math.floor(i / 60) + 1)))
        hup(p)
      end
    end
    assert.equal(300, accepted)
    -- counted at the sink: the log trigger's lines on stdout, one per firing of s/t
    local function delivered() return p:count('"sensorName":"s","triggerName":"t"', "stdout") end
    H.wait_until(function() return delivered() >= 300 end, 10, function() return p:describe() end)
    local seen = {}
    for _, l in ipairs(p:lines("stdout")) do
      local i = l:match('"sensorName":"s","triggerName":"t".-"body":{"i":(%d+)}')
      if i then seen[tonumber(i)] = true end
    end
    for i = 1, 300 do assert.is_true(seen[i] == true, "event " .. i .. " reached the sink") end
    p:stop()
  end)
end)
