-- Test tools that cannot pass by mistake (issue #17, items 1, 2, 5 and 7): test files checked
-- like specs, script errors always reported, print() shown, values in explanations, key-level
-- diffs, --update, --junit, stdin events, per-command help and "did you mean".
local H = require "helpers.herald"
local cjson = require "cjson"

local SENSOR = [[
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: s
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: order
      filters:
        script: |
          print("total is", event.body.total)
          if event.body.boom then error("boom!") end
          if event.body.nothing then return end
          return event.body.total > 100
    - name: big
      eventSourceName: shop
      eventName: big
      filters:
        data:
          - path: body.total
            type: number
            comparator: ">"
            value: ["100"]
  triggers:
    - template:
        name: ship
        conditions: order
        log: {}
    - template:
        name: audit
        conditions: big
        log: {}
]]

local function setup()
  local dir = H.tmpdir()
  H.write(dir .. "/s.yaml", SENSOR)
  return dir
end

describe("herald test (honest)", function()
  it("refuses a test file with an unknown field, naming file:line:col and a suggestion", function()
    local dir = setup()
    H.write(dir .. "/s_test.yaml", [[
sensor: s.yaml
tests:
  - name: typo
    event:
      - {source: shop, subject: order, data: {body: {total: 500}}}
    expect: []
]])
    local code, out, err = H.run{ "test", dir }
    assert.equal(2, code, out .. err)
    assert.matches("s_test%.yaml:4:5: tests%[0%]%.event: unknown field; did you mean events%?", err)
  end)

  it("refuses a test without expect (expect: [] says nothing fires)", function()
    local dir = setup()
    H.write(dir .. "/s_test.yaml", [[
sensor: s.yaml
tests:
  - name: forgot
    events:
      - {source: shop, subject: order, data: {body: {total: 500}}}
]])
    local code, _, err = H.run{ "test", dir }
    assert.equal(2, code)
    assert.matches("s_test%.yaml:3:5: tests%[0%]%.expect: required %(write `expect: %[%]`", err)
    -- and a typo inside an expected firing is caught too
    H.write(dir .. "/s_test.yaml", [[
sensor: s.yaml
tests:
  - name: typo in firing
    events: []
    expect:
      - {triger: ship}
]])
    code, _, err = H.run{ "test", dir }
    assert.equal(2, code)
    assert.matches("tests%[0%]%.expect%[0%]%.triger: unknown field; did you mean trigger%?", err)
  end)

  it("fails a test whose script raised, unless the test lists the error", function()
    local dir = setup()
    H.write(dir .. "/s_test.yaml", [[
sensor: s.yaml
tests:
  - name: raises, unexpected
    events:
      - {id: e1, source: shop, subject: order, data: {body: {total: 5, boom: true}}}
    expect: []
  - name: raises, expected
    events:
      - {id: e1, source: shop, subject: order, data: {body: {total: 5, boom: true}}}
    expect: []
    errors: ["boom!"]
  - name: expects an error that does not happen
    events:
      - {id: e1, source: shop, subject: order, data: {body: {total: 500}}}
    expect: [{trigger: ship}]
    errors: ["boom!"]
]])
    local code, out = H.run{ "test", dir }
    assert.equal(1, code, out)
    assert.matches("not ok 1 %- [^\n]*raises, unexpected\n# error %(event e1, dependency order%): [^\n]*boom!", out)
    assert.matches("\nok 2 %- [^\n]*raises, expected", out)
    assert.matches("not ok 3 %- [^\n]*\n# expected an error containing \"boom!\"; none happened", out)
    assert.matches("1 passed, 2 failed", out)
  end)

  it("reports script errors with --events on stderr and as error records, exit 1", function()
    local dir = setup()
    H.write(dir .. "/ev.jsonl",
      '{"id":"a","source":"shop","subject":"order","data":{"body":{"total":500}}}\n' ..
      '{"id":"b","source":"shop","subject":"order","data":{"body":{"total":1,"boom":true}}}\n')
    local code, out, err = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl" }
    assert.equal(1, code)
    assert.matches("error: event b, dependency order: [^\n]*boom!", err)
    local recs = {}
    for l in out:gmatch("[^\n]+") do recs[#recs + 1] = cjson.decode(l) end
    assert.equal(2, #recs)
    assert.equal("ship", recs[1].trigger)
    assert.equal("b", recs[2].event)
    assert.equal("order", recs[2].dependency)
    assert.matches("boom!", recs[2].error)
    -- print() from the script is shown, on stderr, for each run
    assert.matches("print %(sensor s%): total is\t500", err)
    assert.matches("print %(sensor s%): total is\t1", err)
  end)

  it("--update writes the expected file; then --expect passes, and a change shows a key-level diff", function()
    local dir = setup()
    H.write(dir .. "/ev.jsonl",
      '{"id":"a","source":"shop","subject":"big","data":{"body":{"total":500}}}\n' ..
      '{"id":"b","source":"shop","subject":"order","data":{"body":{"total":1,"boom":true}}}\n')
    local code, _, err = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl",
                                "--expect", dir .. "/want.jsonl", "--update" }
    assert.equal(0, code, err)
    assert.matches("wrote 2 line%(s%)", err)
    code = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl", "--expect", dir .. "/want.jsonl" }
    assert.equal(0, code) -- the error record is in the expected output: expected
    -- 300 and "300" are told apart
    local want = H.read(dir .. "/want.jsonl"):gsub('"trigger":"audit"', '"trigger":"audit","n":300')
    H.write(dir .. "/want.jsonl", want)
    code, _, err = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl", "--expect", dir .. "/want.jsonl" }
    assert.equal(1, code)
    assert.matches("n: expected 300 %(number%), got nothing", err)
  end)

  it("reads events from stdin with --events -", function()
    local dir = setup()
    H.write(dir .. "/ev.jsonl", '{"id":"x","source":"shop","subject":"big","data":{"body":{"total":500}}}\n')
    local p = io.popen(("%q test %q --events - < %q"):format(H.bin, dir .. "/s.yaml", dir .. "/ev.jsonl"))
    local out = p:read("*a")
    local ok, _, code = p:close()
    assert.is_true(ok, tostring(code))
    assert.matches('"trigger":"audit"', out)
  end)

  it("says whether a script returned false or nil, and what a data filter got and wanted", function()
    local dir = setup()
    H.write(dir .. "/ev.jsonl",
      '{"id":"a","source":"shop","subject":"order","data":{"body":{"total":5}}}\n' ..
      '{"id":"b","source":"shop","subject":"order","data":{"body":{"total":5,"nothing":true}}}\n' ..
      '{"id":"c","source":"shop","subject":"big","data":{"body":{"total":3}}}\n')
    local code, out = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl", "--explain" }
    assert.equal(0, code)
    local by = {}
    for l in out:gmatch("[^\n]+") do
      local r = cjson.decode(l)
      if r.filters then by[r.event] = r.filters[1].reason end
    end
    assert.equal("script returned false, not true", by.a)
    assert.matches("script returned nil", by.b)
    assert.matches("got 3, want > 100", by.c)
    -- an expression says the values it saw
    H.write(dir .. "/x.yaml", (SENSOR:gsub("        data:\n          %- path: body.total\n            type: number\n            comparator: \">\"\n            value: %[\"100\"%]",
      '        exprs:\n          - expr: total > 100\n            fields: [{name: total, path: body.total}]')))
    local _, xout = H.run{ "test", dir .. "/x.yaml", "--events", dir .. "/ev.jsonl", "--explain" }
    assert.truthy(xout:find("expression is not true: total > 100 (total = 3)", 1, true), xout)
  end)

  it("--explain with test files prints each dependency's verdict, and --junit writes a report", function()
    local dir = setup()
    H.write(dir .. "/s_test.yaml", [[
sensor: s.yaml
tests:
  - name: small order
    events:
      - {id: e1, source: shop, subject: big, data: {body: {total: 5}}}
    expect: []
  - name: wrong
    events:
      - {id: e2, source: shop, subject: big, data: {body: {total: 500}}}
    expect: []
]])
    local code, out = H.run{ "test", dir, "--explain", "--junit", dir .. "/junit.xml" }
    assert.equal(1, code)
    assert.matches('# explain: {"dependency":"big","event":"e1"', out)
    local x = H.read(dir .. "/junit.xml")
    assert.matches('<testsuite name="[^"]*s_test%.yaml" tests="2" failures="1">', x)
    assert.matches('<testcase name="small order" classname="[^"]*"/>', x)
    assert.matches('<testcase name="wrong" classname="[^"]*"><failure message="expected 0 firing%(s%), got 1">', x)
  end)
end)

describe("herald CLI", function()
  it("has help per command, and did-you-mean for commands and options", function()
    local code, out = H.run{ "help", "test" }
    assert.equal(0, code)
    assert.matches("^usage: herald test SENSOR", out)
    assert.not_matches("eventsource PATH", out) -- not the global help
    code, out = H.run{ "lint", "--help" }
    assert.equal(0, code)
    assert.matches("^usage: herald lint", out)
    local err
    code, _, err = H.run{ "tset" }
    assert.equal(2, code)
    assert.matches("^error: herald: unknown command tset; did you mean test%?", err)
    code, _, err = H.run{ "test", "--evnets", "x" }
    assert.equal(2, code)
    assert.matches("unknown option %-%-evnets; did you mean %-%-events%?", err)
  end)
end)

describe("herald test --watch", function()
  it("runs again when a file changes", function()
    local dir = setup()
    H.write(dir .. "/s_test.yaml", [[
sensor: s.yaml
tests:
  - name: big order
    events:
      - {source: shop, subject: big, data: {body: {total: 500}}}
    expect: [{trigger: audit}]
]])
    local p = H.start { "test", dir, "--watch" }
    p:wait_for("1 passed, 0 failed", { stream = "stdout" })
    p:wait_for("watching", { stream = "stdout" })
    -- the sensor changes so the test fails; the watcher re-runs it
    H.write(dir .. "/s.yaml", (SENSOR:gsub('value: %["100"%]', 'value: ["1000"]')))
    p:wait_for("0 passed, 1 failed", { stream = "stdout", timeout = 5 })
    p:kill()
  end)
end)

describe("script errors", function()
  it("name the real file line, and hint at common mistakes", function()
    local dir = H.tmpdir()
    local sensor = [[
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: s
spec:
  dependencies:
    - name: d
      eventSourceName: shop
      eventName: order
      filters:
        script: |
          local t = event.body.total
          if t > 100 then
            return event.body.name:uper() == "X"
          end
          return false
  triggers:
    - template:
        name: t
        log: {}
]]
    H.write(dir .. "/s.yaml", sensor)
    H.write(dir .. "/ev.jsonl", '{"source":"shop","subject":"order","data":{"body":{"total":500,"name":"x"}}}\n')
    local code, _, err = H.run { "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl" }
    assert.equal(1, code)
    -- line 14 of the file is the `:uper()` line
    assert.matches("s%.yaml:14: attempt to call method 'uper' %(a nil value%) %(hint: did you mean upper%?%)", err)
    H.write(dir .. "/s.yaml", (sensor:gsub("if t > 100", "if t != 100")))
    code, _, err = H.run { "lint", dir .. "/s.yaml" }
    assert.equal(1, code)
    assert.matches("s%.yaml:11:9: spec%.dependencies%[0%]%.filters%.script: script does not compile: [^\n]*s%.yaml:13: [^\n]*%(hint: Lua writes \"not equal\" as ~=, not !=%)", err)
  end)
end)
