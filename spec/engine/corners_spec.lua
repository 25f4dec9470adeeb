-- Argo's semantics in four corners (issue 11), and a parameter that cannot be resolved:
--   1. events with no data at all (not "data": null) pass data, expr and script filters, and
--      jq and Lua transforms return them unchanged;
--   2. filter errors: any group (exprs, data, time) that ends in an error drops the event, also
--      under filtersLogicalOperator: or; inside a group, "and" stops at the first filter that
--      does not pass and "or" at the first match;
--   3. an empty array in event data stays [] through a useRawData parameter;
--   4. "-" and "_" are the same in conditions (the later of two colliding dependencies wins);
--   and a parameter whose key does not resolve fails the firing (nothing is sent).
-- Most cases run under `herald test` (the compiled sensor, no servers); the ones that matter
-- for the engine's own compilation (no tracing, literals in K) run under `herald run`.
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

local function lines_of(text)
  local t = {}
  for l in text:gmatch("[^\n]+") do t[#t + 1] = cjson.decode(l) end
  return t
end

--- herald test SENSOR --events EVENTS [--explain]: returns the decoded lines.
local function test(sensor_yaml, events, explain)
  local dir = H.tmpdir()
  H.write(dir .. "/s.yaml", sensor_yaml)
  H.write(dir .. "/ev.jsonl", table.concat(events, "\n") .. "\n")
  local args = { "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl" }
  if explain then args[#args + 1] = "--explain" end
  local code, out, err = H.run(args)
  -- 1: a filter raised (reported as an error record and on stderr, which these cases expect)
  assert.is_true(code == 0 or (code == 1 and err:match("^error: ") ~= nil), err)
  return lines_of(out)
end

--- The firing lines only, as "trigger:event ids" strings.
local function fired(lines)
  local t = {}
  for _, l in ipairs(lines) do
    if l.trigger and not l.error then
      local ids = {}
      for dep, id in pairs(l.events) do ids[#ids + 1] = dep .. "=" .. id end
      table.sort(ids)
      t[#t + 1] = l.trigger .. ":" .. table.concat(ids, ",")
    end
  end
  return t
end

local function ev(id, data_json)
  if data_json == nil then return ('{"source":"es","subject":"ev","id":"%s"}'):format(id) end
  return ('{"source":"es","subject":"ev","id":"%s","data":%s}'):format(id, data_json)
end

describe("events with no data", function()
  it("pass data, expr and script filters; \"data\": null does not", function()
    local lines = test(H.sensor{ deps = {
      { name = "data", filters = "      filters:\n        data:\n          - {path: body.a, type: string, value: [x]}\n" },
      { name = "expr", filters = "      filters:\n        exprs:\n          - expr: a == 'x'\n            fields: [{name: a, path: body.a}]\n" },
      { name = "script", filters = "      filters:\n        script: return event.body.a == 'x'\n" },
    }, triggers = {
      { name = "t1", conditions = "data" }, { name = "t2", conditions = "expr" }, { name = "t3", conditions = "script" },
    } }, { ev("none"), ev("null", "null") }, true)
    assert.same({ "t1:data=none", "t2:expr=none", "t3:script=none" }, fired(lines))
    local verdicts = {}
    for _, l in ipairs(lines) do
      if l.dependency and l.filters then verdicts[l.dependency .. "/" .. l.event] = l end
    end
    assert.is_true(verdicts["data/none"].passed)
    assert.matches("no data", verdicts["data/none"].filters[1].reason)
    assert.is_true(verdicts["script/none"].passed)
    assert.is_false(verdicts["data/null"].passed)
    assert.matches("does not exist", verdicts["data/null"].filters[1].reason)
    assert.is_false(verdicts["expr/null"].passed)
    -- with null data the script sees an empty table, as Argo's (indexing it raises)
    assert.is_false(verdicts["script/null"].passed)
    assert.not_matches("userdata", verdicts["script/null"].filters[1].reason)
  end)

  it("are returned unchanged by jq and Lua transforms", function()
    local body = [[
        http:
          url: http://127.0.0.1:9/
          payload:
            - src: {dependencyName: %s}
]]
    local lines = test(H.sensor{ deps = {
      { name = "jq", filters = "      transform:\n        jq: '{x: 1}'\n" },
      { name = "lua", filters = "      transform:\n        script: return {x = 1}\n" },
    }, triggers = {
      { name = "tj", conditions = "jq", body = body:format("jq") },
      { name = "tl", conditions = "lua", body = body:format("lua") },
    } }, { ev("none"), ev("some", '{"y":2}') })
    local bodies = {}
    for _, l in ipairs(lines) do bodies[l.trigger .. "/" .. l.events[l.trigger == "tj" and "jq" or "lua"]] = l.action.body end
    -- no data: the whole event (context only) went through untouched
    assert.is_nil(bodies["tj/none"].data)
    assert.equal("none", bodies["tj/none"].context.id)
    assert.is_nil(bodies["tl/none"].data)
    -- with data, both transforms replaced it
    assert.same({ x = 1 }, bodies["tj/some"].data)
    assert.same({ x = 1 }, bodies["tl/some"].data)
  end)
end)

describe("filter errors", function()
  local function dep(extra)
    return { name = "d", filters = "      filtersLogicalOperator: or\n      filters:\n" .. extra }
  end
  local PASSING_EXPR = "        exprs:\n          - expr: k == 1\n            fields: [{name: k, path: body.k}]\n"

  it("under filtersLogicalOperator or, a group that errors drops the event even if another passed", function()
    local lines = test(H.sensor{ deps = { dep(PASSING_EXPR ..
      "        data:\n          - {path: body.missing, type: string, value: [x]}\n") } },
      { ev("e1", '{"body":{"k":1}}') }, true)
    assert.same({}, fired(lines))
    assert.is_false(lines[1].passed)
  end)

  it("in an and group the first filter that does not match decides: later errors are not looked at", function()
    local lines = test(H.sensor{ deps = { dep(PASSING_EXPR .. [[
        data:
          - {path: body.k, type: number, value: ["2"]}
          - {path: body.missing, type: string, value: [x]}
]]) } }, { ev("e1", '{"body":{"k":1}}') })
    assert.same({ "t:d=e1" }, fired(lines)) -- data is false without error; exprs passed
  end)

  it("in an and group an error before any mismatch makes the group an error", function()
    local lines = test(H.sensor{ deps = { dep(PASSING_EXPR .. [[
        data:
          - {path: body.missing, type: string, value: [x]}
          - {path: body.k, type: number, value: ["2"]}
]]) } }, { ev("e1", '{"body":{"k":1}}') })
    assert.same({}, fired(lines))
  end)

  it("in an or group the first match wins over earlier errors; no match with an error is an error", function()
    local OR_DATA = [[
        dataLogicalOperator: or
        data:
          - {path: body.missing, type: string, value: [x]}
          - {path: body.k, type: number, value: ["%s"]}
]]
    local lines = test(H.sensor{ deps = {
      { name = "d", filters = "      filters:\n" .. OR_DATA:format("1") },
      { name = "e", filters = "      filtersLogicalOperator: or\n      filters:\n" .. PASSING_EXPR .. OR_DATA:format("2") },
    }, triggers = { { name = "td", conditions = "d" }, { name = "te", conditions = "e" } } },
      { ev("e1", '{"body":{"k":1}}') })
    assert.same({ "td:d=e1" }, fired(lines))
  end)

  it("a data template that renders empty is an error", function()
    local lines = test(H.sensor{ deps = { dep(PASSING_EXPR .. [[
        data:
          - {path: body.k, type: string, value: [x], template: "{{ if eq .Input \"9\" }}yes{{ end }}"}
]]) } }, { ev("e1", '{"body":{"k":1}}') }, true)
    assert.same({}, fired(lines))
    assert.matches("empty string or no value", lines[1].filters[2].reason)
  end)

  it("the engine's compiled filters drop and pass the same events (herald run)", function()
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { dep(PASSING_EXPR .. [[
        data:
          - {path: body.k, type: number, value: ["2"]}
          - {path: body.missing, type: string, value: [x]}
]]) } })
    local p = H.start{ "run", dir, "--log-level", "debug" }
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(port, "/hook", '{"k":1}'))) -- data false without error: fires
    assert.equal(200, (H.post_json(port, "/hook", '{"k":3,"missing":"x"}'))) -- all false: dropped
    assert.equal(200, (H.post_json(port, "/hook", '{"j":1}'))) -- exprs error: dropped
    H.wait_until(function()
      local m = H.metrics(p)
      return (m['herald_events_filtered_total{sensor_name="s",dependency_name="d"}'] or 0) >= 2 and m
    end, 5, function() return p:describe() end)
    local f = H.wait_firings(p, 1)
    assert.equal(1, #f)
    assert.equal(1, f[1].events.d.data.body.k)
    -- the error is a warning, the plain mismatch a debug line
    local warn = cjson.decode(p:wait_for("event not processed: path body.k does not exist", { plain = true, timeout = 1 }))
    assert.equal("warn", warn.level)
    local dbg = cjson.decode(p:wait_for("event discarded: ", { plain = true, timeout = 1 }))
    assert.equal("debug", dbg.level)
    p:stop()
  end)
end)

describe("empty arrays", function()
  it("a useRawData parameter keeps [] in the payload (herald test and the request sent)", function()
    local sink = sink_client.start{}
    local sensor = H.sensor{ deps = { { name = "d" } }, triggers = { { name = "t", body = ([[
        http:
          url: http://127.0.0.1:%d/x
          payload:
            - src: {dependencyName: d, dataKey: body.items, useRawData: true}
              dest: items
            - src: {dependencyName: d, dataKey: body.nested, useRawData: true}
              dest: nested
]]):format(sink.port) } } }
    local lines = test(sensor, { ev("e1", '{"body":{"items":[],"nested":{"a":[],"b":"[]","c":{}}}}') })
    assert.equal(1, #lines)
    local l = lines[1]
    -- herald test prints what the trigger would send: [] stays []
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", sensor)
    H.write(dir .. "/ev.jsonl", ev("e1", '{"body":{"items":[],"nested":{"a":[],"b":"[]","c":{}}}}') .. "\n")
    local _, out = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl" }
    assert.matches('"items":%[%]', out)
    assert.matches('"a":%[%]', out)
    assert.matches('"c":{}', out)
    assert.equal("[]", l.action.body.nested.b)
    -- and herald run sends it
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    local p = H.start{ "run", dir .. "/es.yaml", dir .. "/s.yaml" }
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(port, "/hook", '{"items":[],"nested":{"a":[],"b":"[]","c":{}}}')))
    local r = sink.wait_requests(1, 5)[1]
    assert.matches('"items":%[%]', r.body)
    assert.matches('"a":%[%]', r.body)
    assert.matches('"c":{}', r.body)
    p:stop()
    sink.stop()
  end)
end)

describe("empty arrays from a Lua transform", function()
  it("setmetatable({}, {__is_array = true}) reaches a useRawData parameter as [], {} stays {}", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d", filters = [[
      transform:
        script: return {items = setmetatable({}, {__is_array = true}), obj = {}}
]] } }, triggers = { { name = "t", body = [[
        http:
          url: http://127.0.0.1:9/
          payload:
            - src: {dependencyName: d, dataKey: items, useRawData: true}
              dest: items
            - src: {dependencyName: d, dataKey: obj, useRawData: true}
              dest: obj
]] } } })
    H.write(dir .. "/ev.jsonl", ev("e1", '{"body":{}}') .. "\n")
    local code, out = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl" }
    assert.equal(0, code)
    assert.matches('"body":{"items":[],"obj":{}}', out, 1, true)
  end)
end)

describe("- and _ in conditions", function()
  it("match as the same name, the later of two colliding dependencies winning; lint warns", function()
    local sensor = [[
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {name: s}
spec:
  dependencies:
    - {name: dep-1a, eventSourceName: es, eventName: a}
    - {name: dep_1a, eventSourceName: es, eventName: b}
    - {name: x_y, eventSourceName: es, eventName: c}
  triggers:
    - template:
        name: t
        conditions: "dep-1a && x-y"
        log: {}
]]
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", sensor)
    local code, _, err = H.run{ "lint", dir .. "/s.yaml" }
    assert.equal(0, code)
    assert.matches('conditions: "dep%-1a" means dependency "dep_1a"', err)
    H.write(dir .. "/ev.jsonl", table.concat({
      '{"source":"es","subject":"a","id":"1","data":{}}',
      '{"source":"es","subject":"c","id":"2","data":{}}',
      '{"source":"es","subject":"b","id":"3","data":{}}',
    }, "\n") .. "\n")
    local c2, out = H.run{ "test", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl" }
    assert.equal(0, c2)
    local l = lines_of(out)
    assert.equal(1, #l)
    assert.same({ dep_1a = "3", x_y = "2" }, l[1].events)
  end)
end)

describe("a parameter that cannot be resolved", function()
  local function sensor(url)
    return H.sensor{ deps = { { name = "pr" } }, triggers = { { name = "notify", body = ([[
        http:
          url: %s
          payload:
            - src: {dependencyName: pr, dataKey: body.pr.titel}
              dest: title
]]):format(url) }, { name = "fallback", body = ([[
        http:
          url: %s
          payload:
            - src: {dependencyName: pr, dataKey: body.pr.titel, value: untitled}
              dest: title
]]):format(url) } } }
  end

  it("fails the firing under herald test --explain, naming the dependency and the key", function()
    local lines = test(sensor("http://127.0.0.1:9/"), { ev("e1", '{"body":{"pr":{"title":"secret"}}}') }, true)
    local by = {}
    for _, l in ipairs(lines) do if l.trigger then by[l.trigger] = l end end
    assert.matches("unable to resolve 'pr' parameter value: key body.pr.titel does not exist", by.notify.error)
    assert.is_nil(by.notify.action)
    assert.same({ title = "untitled" }, by.fallback.action.body) -- `value` is the fallback
  end)

  it("shows the error on the parameter's row in the REPL's :params", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", sensor("http://127.0.0.1:9/"))
    H.write(dir .. "/ev.jsonl", ev("e1", '{"body":{"pr":{"title":"secret"}}}') .. "\n")
    local code, out = H.run{ "repl", dir .. "/s.yaml", "--events", dir .. "/ev.jsonl", "-e", ":params notify" }
    assert.equal(0, code)
    assert.matches("error: unable to resolve 'pr' parameter value: key body.pr.titel does not exist", out, 1, true)
    assert.not_matches("secret", out)
  end)

  it("fails the firing under herald run: nothing sent, counted, logged with dependency, key and trigger", function()
    local sink = sink_client.start{}
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port })
    H.write(dir .. "/s.yaml", sensor(("http://127.0.0.1:%d/x"):format(sink.port)))
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(port, "/hook", '{"pr":{"title":"secret"}}')))
    local reqs = sink.wait_requests(1, 5)
    local line = p:wait_for("unable to resolve 'pr' parameter value", { plain = true })
    assert.matches("notify", line)
    assert.matches("body.pr.titel", line, 1, true)
    local m = H.wait_until(function()
      local mm = H.metrics(p)
      return mm['argo_events_action_failed_total{sensor_name="s",trigger_name="notify"}'] == 1 and mm
    end, 5, function() return p:describe() end)
    assert.equal(1, m['argo_events_action_triggered_total{sensor_name="s",trigger_name="fallback"}'])
    assert.equal(1, #reqs) -- only the fallback's request; the event never leaked
    assert.equal('{"title":"untitled"}', reqs[1].body)
    assert.not_matches("secret", reqs[1].body)
    p:stop()
    sink.stop()
  end)
end)
