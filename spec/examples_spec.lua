-- Every example in examples/ is valid, and each one runs and does what its comments say.
local H = require "helpers.herald"

local post, firings = H.post_json, H.firings

describe("examples/", function()
  it("all lint clean (no errors, no warnings)", function()
    -- examples/course holds the course's manifests as the course gives them: they lint with
    -- warnings (fields Argo no longer needs), checked in spec/examples/course_spec.lua
    local dirs = {}
    for _, d in ipairs{ "quickstart", "calendar", "filters-conditions", "webhook-to-http" } do
      dirs[#dirs + 1] = H.source_dir .. "/examples/" .. d
    end
    local code, out, err = H.run{ "lint", "--strict", unpack(dirs) }
    assert.equal("", err)
    assert.equal(0, code)
    -- quickstart (2) + calendar (2) + filters-conditions (2) + webhook-to-http (2)
    assert.matches("^8 object%(s%) valid", out)
  end)

  it("course: the three manifests lint (warnings allowed) and its sensor test passes", function()
    local code, out, err = H.run{ "lint", H.source_dir .. "/examples/course" }
    assert.equal(0, code, err)
    assert.matches("^3 object%(s%) valid", out)
    local tcode, tout = H.run{ "test", H.source_dir .. "/examples/course" }
    assert.equal(0, tcode)
    assert.matches("\n2 passed, 0 failed\n$", tout)
  end)

  it("calendar ticks and logs each tick with its metadata", function()
    local p = H.start{ "run", H.source_dir .. "/examples/calendar/" }
    p:wait_for('"triggerName":"log-tick"', { stream = "stdout", timeout = 8 })
    local f = firings(p)[1]
    local ev = f.events.tick
    assert.equal("calendar", ev.type)
    assert.equal("every-5s", ev.subject)
    assert.same({ owner = "examples" }, ev.data.metadata)
    assert.matches("CES?T$", ev.data.eventTime)
    assert.equal(0, p:stop())
  end)

  it("filters-conditions ships a large paid order and audits failures", function()
    local p = H.start{ "run", H.source_dir .. "/examples/filters-conditions/" }
    p:wait_for("herald started")
    assert.equal(200, (post(12001, "/order", '{"id":"o-1","total":50}')))       -- too small: nothing
    assert.equal(200, (post(12001, "/payment", '{"order":"o-1","status":"declined"}'))) -- audit
    H.wait_until(function() return #firings(p) == 1 end, 5, "audit of the declined payment")
    assert.equal(200, (post(12001, "/order", '{"id":"o-2","total":250}')))      -- audit
    assert.equal(200, (post(12001, "/payment", '{"order":"o-2","status":"succeeded"}'))) -- ship
    local fs = H.wait_until(function() local f = firings(p) return #f == 3 and f end, 5, "ship")
    local names = {}
    for _, f in ipairs(fs) do names[#names + 1] = f.triggerName end
    assert.same({ "audit", "audit", "ship" }, names)
    assert.equal("o-2", fs[3].events["large-order"].data.body.id)
    assert.equal("succeeded", fs[3].events["payment-ok"].data.body.status)
    assert.equal(0, p:stop())
  end)
end)
