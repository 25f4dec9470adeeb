-- End-to-end: every Argo filter, transform, condition and parameter kind through `herald run`,
-- with events posted to real webhooks and the resolved payloads observed at an HTTP sink.
local H = require "helpers.herald"
local sink_client = require "helpers.sink_client"
local cjson = require "cjson"

local post, firings = H.post_json, H.firings

--- Starts herald with one webhook EventSource (events given as names) and the sensor YAML.
local function run(events, sensor_yaml, extra_args)
  local dir = H.tmpdir()
  local port = H.free_port()
  local evs = {}
  for _, e in ipairs(events) do
    evs[#evs + 1] = type(e) == "table" and e or { name = e, endpoint = "/" .. e }
    evs[#evs].port = port
  end
  H.write(dir .. "/es.yaml", H.webhook_es{ events = evs })
  H.write(dir .. "/s.yaml", sensor_yaml)
  local args = { "run", dir, "--log-level", "debug" }
  for _, a in ipairs(extra_args or {}) do args[#args + 1] = a end
  local p = H.start(args)
  p:wait_for("herald started")
  return p, port
end

--- Posts each body to path and waits until every event was filtered or triggered.
local function settle(p, expected_total)
  return H.wait_until(function()
    local m = H.metrics(p)
    local n = 0
    for k, v in pairs(m) do
      if k:find("^herald_events_filtered_total") or k:find("^argo_events_action_triggered_total")
        or k:find("^argo_events_action_failed_total") then n = n + v end
    end
    return n >= expected_total and m
  end, 5, function() return expected_total .. " outcomes\n" .. p:describe() end)
end

local function fired_cases(p, dep)
  local t = {}
  for _, f in ipairs(firings(p)) do t[#t + 1] = f.events[dep].data.body.case end
  table.sort(t)
  return t
end

describe("sensor filters", function()
  it("exprs: govaluate over fields bound by gjson paths, combined with exprLogicalOperator", function()
    local p, port = run({ "ev" }, H.sensor{ deps = { { name = "d", filters = [[
      filters:
        exprLogicalOperator: or
        exprs:
          - expr: a == "b" && c > 10
            fields:
              - {name: a, path: body.a}
              - {name: c, path: body.c}
          - expr: "tag =~ '^urgent-'"
            fields:
              - {name: tag, path: body.tags.0}
]] } } })
    local cases = {
      '{"a":"b","c":11,"tags":["x"]}',           -- 1: first expr
      '{"a":"b","c":10,"tags":["urgent-1"]}',    -- 2: second expr
      '{"a":"x","c":50,"tags":["normal"]}',      -- 3: neither
      '{"a":"b","c":12}',                        -- 4: first passes; second's path missing
    }
    for i, body in ipairs(cases) do
      assert.equal(200, (post(port, "/ev", body:gsub("}$", ',"case":' .. i .. "}"))))
    end
    settle(p, 4)
    assert.same({ 1, 2, 4 }, fired_cases(p, "d"))
    p:kill()
  end)

  it("data: gjson queries, a template, and dataLogicalOperator or", function()
    local p, port = run({ "ev" }, H.sensor{ deps = { { name = "d", filters = [[
      filters:
        dataLogicalOperator: or
        data:
          - path: body.items.#(sku=="A1").qty
            type: number
            comparator: ">"
            value: ["2"]
          - path: body.user
            type: string
            template: "{{ .Input | upper }}"
            value: ["^ADA$"]
]] } } })
    local cases = {
      '{"items":[{"sku":"B","qty":9},{"sku":"A1","qty":3}],"user":"bob"}', -- 1: query passes
      '{"items":[{"sku":"A1","qty":1}],"user":"ada"}',                    -- 2: template passes
      '{"items":[{"sku":"A1","qty":1}],"user":"adam"}',                   -- 3: neither
    }
    for i, body in ipairs(cases) do
      assert.equal(200, (post(port, "/ev", body:gsub("}$", ',"case":' .. i .. "}"))))
    end
    settle(p, 3)
    assert.same({ 1, 2 }, fired_cases(p, "d"))
    -- at debug level each discard is logged with its reason
    -- (with what each filter got and wanted, and the dependency as a field)
    local err = p:output("stderr")
    assert.truthy(err:find('"msg":"event discarded: body.items.#(sku==\\"A1\\").qty: got 1, want > 2; body.user: got \\"adam\\", want matching ^ADA$"', 1, true), err)
    assert.truthy(err:find('"dependencyName":"d"', 1, true))
    p:kill()
  end)

  it("discards are counted but not logged below debug level", function()
    local p, port = run({ "ev" }, H.sensor{ deps = { { name = "d", filters = [[
      filters:
        data:
          - {path: body.n, type: number, comparator: ">", value: ["5"]}
]] } } }, { "--log-level", "info" })
    assert.equal(200, (post(port, "/ev", '{"n":1,"case":1}')))
    assert.equal(200, (post(port, "/ev", '{"n":9,"case":2}')))
    local m = settle(p, 2)
    assert.same({ 2 }, fired_cases(p, "d"))
    local filtered = 0
    for k, v in pairs(m) do if k:find("^herald_events_filtered_total") then filtered = filtered + v end end
    assert.equal(1, filtered)
    assert.falsy(p:output("stderr"):find("discarded", 1, true))
    p:kill()
  end)

  it("context and time filters", function()
    local now = os.time()
    local function hms(t) return os.date("!%H:%M:%S", t) end
    local p, port = run({ "ev", "other" }, H.sensor{ deps = {
      { name = "in-window", event = "ev", filters = ([[
      filters:
        context:
          type: webhook
          subject: ev
        time:
          start: "%s"
          stop: "%s"
]]):format(hms(now - 3600), hms(now + 3600)) },
      { name = "out-of-window", event = "ev", filters = ([[
      filters:
        time:
          start: "%s"
          stop: "%s"
          timezone: Asia/Kolkata
]]):format(os.date("!%H:%M:%S", now + 7200 + 19800), os.date("!%H:%M:%S", now + 10800 + 19800)) },
      { name = "wrong-subject", event = "other", filters = [[
      filters:
        context:
          subject: ev
]] },
    }, triggers = {
      { name = "t1", conditions = "in-window" },
      { name = "t2", conditions = "out-of-window" },
      { name = "t3", conditions = "wrong-subject" },
    } })
    assert.equal(200, (post(port, "/ev", '{"case":1}')))
    assert.equal(200, (post(port, "/other", '{"case":2}')))
    settle(p, 3)
    local names = {}
    for _, f in ipairs(firings(p)) do names[#names + 1] = f.triggerName end
    assert.same({ "t1" }, names)
    p:kill()
  end)
end)

describe("transforms", function()
  it("jq and script rewrite the data before filters; a failing transform drops the event", function()
    local p, port = run({ "jq", "lua" }, H.sensor{ deps = {
      { name = "j", event = "jq", filters = [[
      transform:
        jq: "{total: (.body.items | map(.price) | add), who: .body.user}"
      filters:
        data:
          - {path: total, type: number, comparator: ">=", value: ["10"]}
]] },
      { name = "l", event = "lua", filters = [[
      transform:
        script: |
          return { shout = string.upper(event.body.msg), n = #event.body.msg }
]] },
    }, triggers = { { name = "tj", conditions = "j" }, { name = "tl", conditions = "l" } } })
    assert.equal(200, (post(port, "/jq", '{"items":[{"price":4},{"price":7}],"user":"ada"}')))
    assert.equal(200, (post(port, "/jq", '{"items":[{"price":1}],"user":"bob"}')))   -- filtered: 1 < 10
    assert.equal(200, (post(port, "/jq", '{"items":"not a list"}')))                  -- jq error: dropped
    assert.equal(200, (post(port, "/lua", '{"msg":"hello"}')))
    assert.equal(200, (post(port, "/lua", '{"nomsg":true}')))                          -- script error: dropped
    settle(p, 5)
    local by = {}
    for _, f in ipairs(firings(p)) do by[f.triggerName] = f end
    assert.same({ total = 11, who = "ada" }, by.tj.events.j.data)
    assert.same({ shout = "HELLO", n = 5 }, by.tl.events.l.data)
    assert.equal(2, #firings(p))
    local err = p:output("stderr")
    assert.truthy(err:find("transform failed", 1, true))
    p:kill()
  end)

  it("a hostile transform script fails alone and the next event is processed", function()
    local p, port = run({ "ev" }, H.sensor{ deps = { { name = "d", filters = [[
      transform:
        script: |
          if event.body.evil then while true do end end
          return event.body
]] } } })
    assert.equal(200, (post(port, "/ev", '{"evil":true}')))
    assert.equal(200, (post(port, "/ev", '{"ok":1}')))
    H.wait_firings(p, 1)
    assert.same({ ok = 1 }, firings(p)[1].events.d.data)
    assert.truthy(p:output("stderr"):find("script exceeded its CPU budget", 1, true))
    p:kill()
  end)
end)

describe("conditions", function()
  it("conditionsReset clears a half-met && condition at its cron times", function()
    local p, port = run({ "a", "b" }, H.sensor{ deps = { { name = "a", event = "a" }, { name = "b", event = "b" } },
      triggers = { { name = "both", conditions = "a && b", extra = [[
        conditionsReset:
          - byTime:
              cron: "@every 1s"
]] }, { name = "on-b", conditions = "b" } } })
    local CLEARED = "trigger:both\",\"msg\":\"conditionsReset: dependency state cleared"
    local function cleared() return p:count(CLEARED, "stderr") end
    assert.equal(200, (post(port, "/a", '{"n":1}')))
    -- a reset passes: a's event is forgotten, so b alone does not complete `a && b`
    local n = cleared()
    H.wait_until(function() return cleared() > n end, 3, "a reset")
    assert.equal(200, (post(port, "/b", '{"n":2}')))
    H.wait_firings(p, 1) -- on-b
    -- right after the next reset, a and b together (well within the second) do fire
    n = cleared()
    H.wait_until(function() return cleared() > n end, 3, "a reset")
    assert.equal(200, (post(port, "/b", '{"n":3}')))
    assert.equal(200, (post(port, "/a", '{"n":4}')))
    local fs = H.wait_firings(p, 3)
    local names = {}
    for _, f in ipairs(fs) do names[#names + 1] = f.triggerName end
    assert.same({ "on-b", "on-b", "both" }, names)
    assert.equal(4, fs[3].events.a.data.body.n)
    assert.equal(3, fs[3].events.b.data.body.n)
    p:kill()
  end)
end)

describe("EventSource filter.expression", function()
  it("drops events the expression rejects before they reach the bus", function()
    local dir = H.tmpdir()
    local port = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = port, extra = [[
      filter:
        expression: "body.kind == 'order' && int(body.n) > 1"
]] })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    assert.equal(200, (post(port, "/hook", '{"kind":"order","n":2}')))
    assert.equal(200, (post(port, "/hook", '{"kind":"order","n":1}')))
    assert.equal(200, (post(port, "/hook", '{"kind":"refund","n":5}')))
    H.wait_firings(p, 1)
    local m = H.wait_until(function()
      local m = H.metrics(p)
      return m['herald_events_source_filtered_total{eventsource_name="es",event_name="ev"}'] == 2 and m
    end, 5, "two source-filtered events")
    assert.equal(1, m['argo_events_events_sent_total{eventsource_name="es",event_name="ev"}'])
    assert.equal(1, #firings(p))
    p:kill()
  end)
end)

describe("trigger parameters", function()
  it("resolve dataKey, contextKey, templates, defaults, raw data and operations into the payload", function()
    local sink = sink_client.start{}
    local p, port = run({ "a", "b" }, H.sensor{ deps = { { name = "a", event = "a" }, { name = "b", event = "b" } },
      triggers = { { name = "call", conditions = "a || b", body = ([[
        http:
          url: http://127.0.0.1:%d/hook
          payload:
            - src: {dependencyName: a, dataKey: body.user.name}
              dest: user
            - src: {dependencyName: a, dataKey: body.items.#(sku=="A1").qty, useRawData: true}
              dest: qty
            - src: {dependencyName: a, dataTemplate: "{{ .Input.body.user.name | upper }}-{{ len .Input.body.items }}"}
              dest: tag
            - src: {dependencyName: a, contextTemplate: "{{ .Input.source }}/{{ .Input.subject }}"}
              dest: origin
            - src: {dependencyName: a, contextKey: type}
              dest: meta.type
            - src: {dependencyName: a, dataKey: body.nope, value: "fallback"}
              dest: meta.default
            - src: {dependencyName: a, dataKey: body.user.name}
              dest: greeting
            - src: {dependencyName: a, value: "Hello, "}
              dest: hello
            - src: {dependencyName: a}
              dest: whole
            - src: {dependencyName: b, dataKey: body.x, value: "b absent"}
              dest: fromb
            - src: {dependencyName: a, dataKey: body.items, useRawData: true}
              dest: items
]]):format(sink.port) } } })
    assert.equal(200, (post(port, "/a", '{"user":{"name":"ada"},"items":[{"sku":"A1","qty":3},{"sku":"B","qty":1}]}')))
    local r = sink.wait_requests(1, 5)[1]
    local body = cjson.decode(r.body)
    assert.equal("ada", body.user)
    assert.equal(3, body.qty)
    assert.equal("ADA-2", body.tag)
    assert.equal("es/a", body.origin)
    assert.same({ type = "webhook", default = "fallback" }, body.meta)
    assert.equal("ada", body.greeting)
    assert.equal("b absent", body.fromb)
    assert.same({ { sku = "A1", qty = 3 }, { sku = "B", qty = 1 } }, body.items)
    -- no key and no template: `value` when given, else the whole event as JSON
    assert.equal("Hello, ", body.hello)
    local whole = cjson.decode(body.whole)
    assert.equal("a", whole.context.subject)
    assert.equal("ada", whole.data.body.user.name)
    p:kill()
    sink.stop()
  end)
end)

describe("compile errors", function()
  local cases = {
    { "a bad regex", [[
      filters:
        data:
          - {path: body.x, type: string, value: ["(unclosed"]}
]], "spec%.dependencies%[0%]%.filters%.data%[0%]%.value%[0%]: invalid regular expression: missing closing parenthesis" },
    { "a bad expression", [[
      filters:
        exprs:
          - expr: "a == == 1"
            fields: [{name: a, path: body.a}]
]], "spec%.dependencies%[0%]%.filters%.exprs%[0%]%.expr: invalid expression: .*column" },
    { "a bad template", [[
      filters:
        data:
          - {path: body.x, type: string, value: ["x"], template: "{{ .Input | nope }}"}
]], "spec%.dependencies%[0%]%.filters%.data%[0%]%.template: invalid template: .*nope" },
    { "a bad path", [[
      filters:
        data:
          - {path: "body.#(x==", type: string, value: ["x"]}
]], "spec%.dependencies%[0%]%.filters%.data%[0%]%.path: invalid path: .*column" },
    { "a bad jq program", [[
      transform:
        jq: ".a | | ."
]], "spec%.dependencies%[0%]%.transform%.jq: invalid jq program: .*syntax error" },
    { "a bad time", [[
      filters:
        time: {start: "25:00:00", stop: "10:00:00"}
]], "spec%.dependencies%[0%]%.filters%.time%.start: expected HH:MM:SS" },
  }
  for _, c in ipairs(cases) do
    it("reports " .. c[1] .. " with file:line:col, in lint and run", function()
      local dir = H.tmpdir()
      H.write(dir .. "/es.yaml", H.webhook_es{ port = H.free_port() })
      H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d", filters = c[2] } } })
      local code, _, err = H.run{ "lint", dir }
      assert.equal(1, code)
      assert.matches("s%.yaml:%d+:%d+: " .. c[3], err)
      code, _, err = H.run{ "run", dir, "--metrics-addr", "off" }
      assert.equal(1, code)
      assert.matches("s%.yaml:%d+:%d+: " .. c[3], err)
    end)
  end
end)
