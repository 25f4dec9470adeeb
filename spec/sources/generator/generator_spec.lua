-- spec/sources/generator/generator_spec.lua: the generator event source (sources/generator/):
-- count events at an interval, each {"seq", "data"}; as fast as the bus takes them with
-- interval 0s; its schema's checks; and examples/generator.
local H = require "helpers.herald"
local socket = require "socket"

local function spec(events_yaml)
  return "apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: gen\nspec:\n  generator:\n"
    .. events_yaml .. "---\n" .. H.sensor { name = "s", deps = { { name = "d", es = "gen", event = "ticks" } } }
end

describe("generator source", function()
  it("emits count events, one every interval, each with its seq and the data", function()
    local dir = H.tmpdir()
    H.write(dir .. "/gen.yaml", spec("    ticks:\n      count: 5\n      interval: 50ms\n      data: '{\"a\": [1, 2]}'\n"))
    local t0 = socket.gettime()
    local p = H.start { "run", dir }
    local f = H.wait_firings(p, 5, 10)
    local elapsed = socket.gettime() - t0
    p:wait_for("generator done: 5 events")
    assert.equal(5, #f)
    for i, v in ipairs(f) do
      local ev = v.events.d
      assert.equal("generator", ev.type)
      assert.equal("ticks", ev.subject)
      assert.equal(i, ev.data.seq)
      assert.same({ a = { 1, 2 } }, ev.data.data)
    end
    -- the first at once, the fifth 4 intervals later (200 ms)
    assert.is_true(elapsed >= 0.2, "took " .. elapsed .. " s")
    assert.equal(0, p:stop())
    assert.equal(5, #H.firings(p)) -- and no more
  end)

  it("with interval 0s emits as fast as the bus takes them; data defaults to null", function()
    local dir = H.tmpdir()
    H.write(dir .. "/gen.yaml", spec("    ticks:\n      count: 500\n      interval: 0s\n"))
    local p = H.start { "run", dir }
    p:wait_for("generator done: 500 events", { timeout = 20 })
    local f = H.wait_firings(p, 500, 20)
    assert.equal(500, #f)
    local seen = {}
    for _, v in ipairs(f) do
      seen[v.events.d.data.seq] = true
      assert.equal(require("cjson").null, v.events.d.data.data) -- JSON null
    end
    for i = 1, 500 do assert.is_true(seen[i], "seq " .. i) end
    assert.equal(0, p:stop())
  end)

  it("lint checks interval, count and data", function()
    local dir = H.tmpdir()
    H.write(dir .. "/bad.yaml", spec("    a:\n      interval: soon\n    b:\n      count: -1\n    c:\n      data: '{oops'\n"))
    local code, out, err = H.run { "lint", dir .. "/bad.yaml" }
    assert.equal(1, code)
    local text = out .. err
    assert.matches("spec%.generator%.a%.interval: invalid interval", text)
    assert.matches("spec%.generator%.b%.count: ", text)
    assert.matches("spec%.generator%.c%.data: not JSON text", text)
  end)

  it("examples/generator lints clean and its sensor test passes", function()
    local ex = H.source_dir .. "/examples/generator"
    local code, out, err = H.run { "lint", "--strict", ex }
    assert.equal(0, code, err)
    assert.matches("^2 object%(s%) valid", out)
    code, out = H.run { "test", ex }
    assert.equal(0, code, out)
    assert.matches("1 passed, 0 failed", out)
  end)
end)
