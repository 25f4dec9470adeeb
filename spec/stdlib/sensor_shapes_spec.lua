-- spec/stdlib/sensor_shapes_spec.lua: sensors that differ only in their literals share one set
-- of function prototypes in the engine (herald.sensor load with opts.engine), and each still
-- judges events by its own values.
require "helpers.stdlib"
local compiler = require "herald.sensor"

local function sensor(name, data, trigger)
  return {
    kind = "Sensor", name = name, file = "spec",
    doc = { spec = {
      dependencies = { { name = "d", eventSourceName = "es", eventName = "ev", filters = { data = data } } },
      triggers = { { template = trigger or { name = "t", log = {} } } },
    } },
  }
end

local function event(body)
  return { context = { id = "1", source = "es", subject = "ev" }, data = { body = body } }
end

describe("sensor shapes", function()
  it("shares one loaded chunk between sensors that differ only in values", function()
    local before = compiler.shape_count()
    local a = assert(compiler.load(sensor("a", { { path = "body.n", type = "number", comparator = ">", value = { "10" } } }), { engine = true }))
    local b = assert(compiler.load(sensor("b", { { path = "body.n", type = "number", comparator = ">", value = { "7.5" } } }), { engine = true }))
    local c = assert(compiler.load(sensor("c", { { path = "body.s", type = "string", value = { "^x\"y\\\\z\n$" } } }), { engine = true }))
    assert.equal(before + 2, compiler.shape_count()) -- a and b share; c is another shape
    assert.equal("a", a.name)
    assert.equal("b", b.name)
    local fa, fb = a.dependencies[1].filter, b.dependencies[1].filter
    assert.is_true(fa(event({ n = 11 })))
    assert.is_false((fa(event({ n = 10 }))))
    assert.is_true(fb(event({ n = 8 })))
    assert.is_false((fb(event({ n = 7.5 }))))
    local d = assert(compiler.load(sensor("d", { { path = "body.n", type = "number", comparator = ">", value = { "-2.5e1" } } }), { engine = true }))
    assert.is_true(d.dependencies[1].filter(event({ n = -24 })))
    assert.is_false((d.dependencies[1].filter(event({ n = -26 }))))
    -- a literal with escapes keeps its exact value
    assert.is_true(c.dependencies[1].filter(event({ s = "x\"y\\z\n" })))
    assert.is_false((c.dependencies[1].filter(event({ s = "x\"y\\z" }))))
    -- error reasons carry each sensor's own path
    local _, why = fa(event({}))
    assert.equal("path body.n does not exist", why)
  end)

  it("keeps every name and value of the sensor out of the engine's code", function()
    local spec = sensor("zz-name", { { path = "body.qq", type = "string", value = { "yy-value" } } },
      { name = "tt-trig", conditions = "d", http = { url = "http://xx-host/" } })
    spec.doc.spec.dependencies[1].filters.context = { type = "ww-type" }
    local compiled = assert(compiler.compile(spec, { engine = true }))
    for _, lit in ipairs{ "zz%-name", "yy%-value", "tt%-trig", "xx%-host", "ww%-type", '"d"', '"es"', '"ev"' } do
      assert.is_nil(compiled.source:find(lit), lit)
    end
    assert.is_nil(compiled.source:find("%-%-%s")) -- and no comments
    -- so another sensor with other names, values and dependency names has the same code
    local other = sensor("other", { { path = "body.qq", type = "string", value = { "other" } } },
      { name = "t2", conditions = "e", http = { url = "http://other/" } })
    other.doc.spec.dependencies[1].name = "e"
    other.doc.spec.dependencies[1].filters.context = { type = "t" }
    assert.equal(compiled.source, assert(compiler.compile(other, { engine = true })).source)
  end)

  it("compiles the same result without sharing (herald test, the REPL)", function()
    local s = assert(compiler.load(sensor("plain", { { path = "body.n", type = "number", comparator = "<", value = { "3" } } })))
    assert.is_true(s.dependencies[1].filter(event({ n = 2 })))
    assert.is_false((s.dependencies[1].filter(event({ n = 3 }))))
  end)
end)
