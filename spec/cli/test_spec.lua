-- herald test: sensors run on events in dry run, with --explain, --expect and *_test.yaml suites.
local H = require "helpers.herald"
local cjson = require "cjson"

local EX = H.source_dir .. "/examples/filters-conditions/"

local function lines_of(text)
  local t = {}
  for l in text:gmatch("[^\n]+") do t[#t + 1] = cjson.decode(l) end
  return t
end

describe("herald test", function()
  it("passes every *_test.yaml next to the examples", function()
    local code, out, err = H.run{ "test", H.source_dir .. "/examples" }
    assert.equal("", err)
    assert.equal(0, code)
    -- every case of every examples/*/*_test.yaml passed (an example added brings its own)
    local cases = 0
    local ls = io.popen("cat " .. H.source_dir .. "/examples/*/*_test.yaml")
    for line in ls:lines() do
      if line:match("^  %- name:") then cases = cases + 1 end -- the tests list's items
    end
    ls:close()
    assert.is_true(cases >= 10, cases .. " cases")
    assert.matches("\n" .. cases .. " passed, 0 failed\n$", out)
    assert.equal(0, select(2, out:gsub("not ok", "")))
  end)

  for _, ex in ipairs{ { "quickstart", "webhook-sensor.yaml" }, { "calendar", "calendar.yaml" }, { "filters-conditions", "sensor.yaml" }, { "webhook-to-http", "sensor.yaml" }, { "course", "sensor.yaml" } } do
    it("matches the expected output checked in for examples/" .. ex[1], function()
      local d = H.source_dir .. "/examples/" .. ex[1] .. "/"
      local code, _, err = H.run{ "test", d .. ex[2], "--events", d .. "events.jsonl", "--expect", d .. "expected.jsonl" }
      assert.equal("", err)
      assert.equal(0, code)
    end)
  end

  it("prints one line per firing and matches the checked-in expected output", function()
    local code, out = H.run{ "test", EX .. "sensor.yaml", "--events", EX .. "events.jsonl", "--expect", EX .. "expected.jsonl" }
    assert.equal(0, code)
    local l = lines_of(out)
    assert.equal(3, #l)
    assert.equal("ship", l[2].trigger)
    assert.same({ ["large-order"] = "e1", ["payment-ok"] = "e2" }, l[2].events)
    assert.same({ type = "log" }, l[2].action)
    assert.equal("large-order && payment-ok", l[2].template.conditions)
  end)

  it("exits 1 with a readable diff when the output differs from --expect", function()
    local dir = H.tmpdir()
    local expected = H.read(EX .. "expected.jsonl"):gsub('"ship"', '"deliver"')
    H.write(dir .. "/expected.jsonl", expected)
    local code, _, err = H.run{ "test", EX .. "sensor.yaml", "--events", EX .. "events.jsonl", "--expect", dir .. "/expected.jsonl" }
    assert.equal(1, code)
    assert.matches("output differs from", err)
    assert.matches('%- line 2 expected: .*"trigger":"deliver"', err)
    assert.matches('%+ line 2 actual:   .*"trigger":"ship"', err)
  end)

  it("explains each filter kind's verdict with a reason", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d", filters = [[
      filters:
        exprs:
          - expr: "n > 5"
            fields: [{name: n, path: body.n}]
        data:
          - {path: body.kind, type: string, value: ["^order$"]}
        context:
          type: webhook
        time:
          start: "00:00:00"
          stop: "00:00:01"
        script: "return event.body.n == 7"
]] } } })
    H.write(dir .. "/ev.jsonl", '{"id":"x","source":"es","subject":"ev","time":"2026-11-25T12:00:00Z","data":{"body":{"n":3,"kind":"refund"}}}\n')
    local code, out = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl", "--explain" }
    assert.equal(0, code)
    local l = lines_of(out)
    assert.equal(1, #l)
    local e = l[1]
    assert.equal("x", e.event)
    assert.equal("d", e.dependency)
    assert.is_false(e.passed)
    local by = {}
    for _, f in ipairs(e.filters) do by[f.kind] = f end
    assert.is_false(by.exprs.passed)
    assert.matches("n > 5", by.exprs.reason)
    assert.is_false(by.data.passed)
    assert.matches("body.kind", by.data.reason)
    assert.is_true(by.context.passed)
    assert.is_false(by.time.passed)
    assert.matches("outside 00:00:00%-00:00:01 UTC", by.time.reason)
    assert.is_false(by.script.passed)
    assert.matches("script returned false, not true", by.script.reason)
  end)

  it("renders an HTTP trigger's request without sending it", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = { { name = "call", body = [[
        http:
          url: http://127.0.0.1:9/never
          method: PUT
          headers: {X-A: b}
          payload:
            - src: {dependencyName: d, dataKey: body.user}
              dest: who
]] } } })
    H.write(dir .. "/ev.jsonl", '{"source":"es","subject":"ev","data":{"body":{"user":"ada"}}}\n')
    local code, out = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl" }
    assert.equal(0, code)
    local a = lines_of(out)[1].action
    assert.same({ type = "http", method = "PUT", url = "http://127.0.0.1:9/never", headers = { ["X-A"] = "b" }, body = { who = "ada" } }, a)
  end)

  it("exits 2 on a bad spec or a bad event file", function()
    local dir = H.tmpdir()
    H.write(dir .. "/bad.yaml", "apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata: {name: s}\nspec: {dependencies: [], triggers: []}\n")
    H.write(dir .. "/ev.jsonl", "{not json}\n")
    local code, _, err = H.run{ "test", dir .. "/bad.yaml", "--events", dir .. "/ev.jsonl" }
    assert.equal(2, code)
    assert.matches("bad%.yaml:%d+:%d+: spec%.dependencies", err)
    code, _, err = H.run{ "test", EX .. "sensor.yaml", "--events", dir .. "/ev.jsonl" }
    assert.equal(2, code)
    assert.matches("ev%.jsonl:1: not JSON", err)
    H.write(dir .. "/ev.jsonl", '{"subject":"x"}\n')
    code, _, err = H.run{ "test", EX .. "sensor.yaml", "--events", dir .. "/ev.jsonl" }
    assert.equal(2, code)
    assert.matches("ev%.jsonl:1: source %(the EventSource name%) is required", err)
  end)

  it("reports a failing *_test.yaml case with what was expected, and exits 1", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.read(EX .. "sensor.yaml"))
    H.write(dir .. "/s_test.yaml", [[
sensor: s.yaml
tests:
  - name: wrong expectation
    events:
      - {source: shop, subject: order, data: {body: {total: 500}}}
    expect:
      - {trigger: ship}
  - name: right expectation
    events:
      - {source: shop, subject: order, data: {body: {total: 500}}}
    expect:
      - {trigger: audit}
]])
    local code, out = H.run{ "test", dir }
    assert.equal(1, code)
    assert.matches("not ok 1 %- .*s_test%.yaml: wrong expectation", out)
    assert.matches('#   firing 0 differs:\n#     trigger: expected "ship" %(string%), got "audit" %(string%)', out)
    assert.matches("ok 2 %- .*right expectation", out)
    assert.matches("1 passed, 1 failed", out)
  end)
end)
