-- Code injection through spec strings (issue 14, item 1). The sensor compiler writes readable
-- Lua; spec text must reach it only as quoted constants, and the comments that name spec paths
-- must not let a newline, `]]` or `--[[` end them. Hostile text goes into every string field
-- that reaches generated code, through every mode that compiles a sensor (compile, lint, test
-- with and without --explain, a *_test.yaml suite, the REPL with -e and on stdin, run), and
-- through the compiler directly (names the loader would refuse, `herald lua`). Each run has its
-- own marker file: the payloads try to create it, and it must never exist. Names with control
-- characters are refused at load with their position; legitimate names with quotes, brackets
-- and `%` keep working.
local H = require "helpers.herald"

-- Double-quoted YAML for any bytes.
local function yq(s)
  return '"' .. s:gsub('[%c"\\\127]', function(c)
    if c == "\n" then return "\\n" end
    if c == "\r" then return "\\r" end
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return ("\\x%02X"):format(c:byte())
  end) .. '"'
end

-- gjson/sjson path that reads the key `s` literally (every non-alphanumeric byte escaped).
local function path_escape(s)
  return (s:gsub("[^%w]", function(c)
    if c:match("%c") then return c end -- a control byte needs no escape
    return "\\" .. c
  end))
end

-- A regular expression matching `s` literally.
local function regex_escape(s)
  return (s:gsub("%p", "\\%0"))
end

-- A govaluate string literal.
local function gv_string(s)
  return '"' .. s:gsub("[\\\"']", "\\%0") .. '"'
end

-- The payloads: each tries to leave a comment or a string and run os.execute.
local PAYLOADS = {
  "x\nos.execute('touch MARK') --[[\n]] --",
  "x\ros.execute('touch MARK')\r--",
  "]] os.execute('touch MARK') --[[",
  "\"); os.execute('touch MARK') --",
  "\\\"); os.execute('touch MARK') --\\",
  "%s%d%q%% x\nos.execute('touch MARK')--",
  "\1\27\127\nos.execute('touch MARK') --",
  "]=] ]==]\n--[==[\nos.execute('touch MARK') --]==]\n",
  "\0\nos.execute('touch MARK')",
}

-- The same payload without control characters, for names (which may hold anything else).
local function printable(p) return (p:gsub("%c", " ")) end

local function no_marker(mark, what)
  assert.is_nil(H.read(mark), "payload ran (" .. mark .. " exists) via " .. what)
end

-- A Sensor with payload p in every string field that reaches the generated code and still
-- validates (names take the printable form: the loader refuses control characters in names).
local function hostile_sensor(p, opts)
  local n = printable(p)
  local tpl = p .. "{{ `" .. p:gsub("`", "") .. "` }}{{/* " .. p:gsub("%*/", "") .. " */}}{{ .Input }}"
  local ctpl = p .. "{{ `" .. p:gsub("`", "") .. "` }}{{ .Input.source }}"
  local jq = ". | .\n# " .. p:gsub("\r", ""):gsub("\n", "%0# ") -- jq refuses a bare CR
  local script = "local s = " .. ("%q"):format(p) .. " return true"
  local tscript = "local s = " .. ("%q"):format(p) .. " return event"
  local lua_script = "local s = " .. ("%q"):format(p) .. " return {}"
  -- conditions name dependencies with letters, digits, '-', '_' and '.' only: the dependency
  -- with the hostile name is one that parameters use
  local dep_a, dep_b, dep_c, dep_d = "dep-a_1", "dep.b", "dep-c", "dep " .. n
  return table.concat({
    "apiVersion: argoproj.io/v1alpha1",
    "kind: Sensor",
    "metadata: {name: hostile}",
    "spec:",
    "  dependencies:",
    "    - name: " .. yq(dep_a),
    "      eventSourceName: es",
    "      eventName: ev",
    "      filtersLogicalOperator: or",
    "      filters:",
    "        dataLogicalOperator: or",
    "        data:",
    "          - path: " .. yq("body." .. path_escape(p)),
    "            type: string",
    "            value: [" .. yq(regex_escape(p)) .. ", " .. yq("^" .. regex_escape(p) .. "$") .. "]",
    "          - path: body.n",
    "            type: string",
    "            value: [" .. yq(".*") .. "]",
    "            template: " .. yq(tpl),
    "          - path: body.n",
    "            type: number",
    "            comparator: \">=\"",
    "            value: [\"0\"]",
    -- the hostile path does not exist in the event: that expression errors, and an error in
    -- any group drops the event (as Argo), unless a later expression of an `or` group matches
    "        exprLogicalOperator: or",
    "        exprs:",
    "          - expr: " .. yq("n >= 0 || s == " .. gv_string(p)),
    "            fields:",
    "              - {name: n, path: body.n}",
    "              - {name: s, path: " .. yq(path_escape(p)) .. "}",
    "          - expr: n >= 0",
    "            fields:",
    "              - {name: n, path: body.n}",
    "        script: " .. yq(script),
    "      transform:",
    "        jq: " .. yq(jq),
    "    - name: " .. yq(dep_b),
    "      eventSourceName: es",
    "      eventName: ev",
    "      transform:",
    "        script: " .. yq(tscript),
    "    - name: " .. yq(dep_d),
    "      eventSourceName: es",
    "      eventName: ev",
    "    - name: " .. yq(dep_c),
    "      eventSourceName: es",
    "      eventName: ev",
    "      filters:",
    "        context: {type: " .. yq(p) .. ", subject: " .. yq(p) .. ", source: " .. yq(p) .. ", datacontenttype: " .. yq(p) .. "}",
    "        time: {start: \"00:00:00\", stop: \"00:00:00\", timezone: UTC}",
    "  triggers:",
    "    - template:",
    "        name: " .. yq("log " .. n),
    "        conditions: " .. yq(dep_a .. "\n&&\n(" .. dep_b .. " ||\n" .. dep_a .. ")"),
    "        log: {}",
    "      parameters:",
    "        - src: {dependencyName: " .. yq(dep_d) .. ", value: " .. yq(p) .. "}",
    "          dest: " .. yq("log.x" .. path_escape(p)),
    "      retryStrategy: {steps: 1}",
    "      dlqTrigger:",
    "        template:",
    "          name: " .. yq("dlq " .. n),
    "          log: {}",
    "    - template:",
    "        name: " .. yq("http " .. n),
    "        conditions: " .. yq(dep_a),
    "        http:",
    "          url: " .. yq("http://127.0.0.1:9/" .. p),
    "          method: POST",
    "          headers: {" .. yq(p) .. ": " .. yq(p) .. ", X-Ok: " .. yq(p) .. "}",
    "          payload:",
    "            - src: {dependencyName: " .. yq(dep_d) .. ", dataKey: " .. yq(path_escape(p)) .. ", value: " .. yq(p) .. "}",
    "              dest: " .. yq(path_escape(p)),
    "            - src: {dependencyName: " .. yq(dep_a) .. ", dataTemplate: " .. yq(tpl) .. "}",
    "              dest: a",
    "            - src: {dependencyName: " .. yq(dep_a) .. ", contextKey: " .. yq(path_escape(p)) .. ", value: " .. yq(p) .. "}",
    "              dest: b",
    "            - src: {dependencyName: " .. yq(dep_a) .. ", contextTemplate: " .. yq(ctpl) .. "}",
    "              dest: c",
    "          parameters:",
    "            - src: {dependencyName: " .. yq(dep_a) .. ", dataTemplate: " .. yq(tpl) .. "}",
    "              dest: " .. yq("headers." .. path_escape(p)),
    "          dynamicHeaders:",
    "            - src: {dependencyName: " .. yq(dep_a) .. ", value: " .. yq(p) .. "}",
    "              dest: " .. yq(path_escape(p)),
    "    - template:",
    "        name: " .. yq("lua " .. n),
    "        conditions: " .. yq(dep_a),
    "        lua: {script: " .. yq(lua_script) .. "}",
  } , "\n") .. "\n" .. (opts and opts.no_k8s and "" or table.concat({
    "    - template:",
    "        name: " .. yq("k8s " .. n),
    "        conditions: " .. yq(dep_a),
    "        k8s:",
    "          operation: create",
    "          source:",
    "            resource: {apiVersion: v1, kind: ConfigMap, metadata: {name: x}, data: {" .. yq(p) .. ": " .. yq(p) .. "}}",
    "          parameters:",
    "            - src: {dependencyName: " .. yq(dep_a) .. ", value: " .. yq(p) .. "}",
    "              dest: " .. yq("data." .. path_escape(p)),
    "",
  }, "\n"))
end

local EVENT = '{"id":"e1","source":"es","subject":"ev","type":"webhook","data":{"body":{"n":1}}}\n'

-- One directory with a sensor per payload (sensor-N.yaml, MARK replaced by a marker path of
-- its own), each with a *_test.yaml suite, and an events file. Returns dir, markers.
local function setup(opts)
  local dir = H.tmpdir()
  local marks = {}
  for i, p in ipairs(PAYLOADS) do
    marks[i] = dir .. "/owned-" .. i
    p = p:gsub("MARK", marks[i])
    H.write(("%s/sensor-%d.yaml"):format(dir, i), (hostile_sensor(p, opts):gsub("name: hostile", "name: hostile-" .. i)))
    if not (opts and opts.no_tests) then
      H.write(("%s/sensor-%d_test.yaml"):format(dir, i), table.concat({
        ("sensor: sensor-%d.yaml"):format(i),
        "tests:",
        "  - name: " .. yq("hostile " .. printable(p)),
        "    events:",
        "      - {id: e1, source: es, subject: ev, type: webhook, data: {body: {n: 1}}}",
        "    expect: []",
        "",
      }, "\n"))
    end
  end
  if not (opts and opts.no_tests) then H.write(dir .. "/events.jsonl", EVENT) end
  return dir, marks
end

local function no_markers(marks, what)
  for _, m in ipairs(marks) do no_marker(m, what) end
end

describe("spec strings cannot inject code", function()
  local dir, marks
  before_each(function()
    if not dir then dir, marks = setup() end
  end)

  it("herald lint", function()
    local code, out, err = H.run{ "lint", dir }
    assert.equal(0, code, err)
    assert.equal(("%d object(s) valid\n"):format(#PAYLOADS), out)
    no_markers(marks, "lint")
  end)

  for i in ipairs(PAYLOADS) do
    it(("payload %d: herald compile (the output is valid Lua; the payload only in comments and strings) and herald test --events --explain"):format(i), function()
      local sensor = ("%s/sensor-%d.yaml"):format(dir, i)
      local code, out, err = H.run{ "compile", sensor }
      assert.equal(0, code, err)
      for line in out:gmatch("[^\n]*") do
        assert.falsy(line:find("^%s*os%.execute"), "payload on a line of its own: " .. line)
      end
      local path = ("%s/compiled-%d.lua"):format(dir, i)
      H.write(path, out)
      assert.truthy(loadfile(path))
      code, out, err = H.run{ "test", sensor, "--events", dir .. "/events.jsonl", "--explain" }
      assert.equal(0, code, err)
      assert.truthy(out:find('"trigger":', 1, true), out .. err)
      no_marker(marks[i], "compile, test --explain")
    end)
  end

  it("herald test SENSOR --events (without --explain)", function()
    for i = 1, #PAYLOADS do
      local code, out, err = H.run{ "test", ("%s/sensor-%d.yaml"):format(dir, i), "--events", dir .. "/events.jsonl" }
      assert.equal(0, code, err)
      assert.truthy(out:find('"trigger":', 1, true), out .. err)
      if i == 3 then break end -- the same compiled code as with --explain: three are enough
    end
    no_markers(marks, "test --events")
  end)

  it("herald test DIR (*_test.yaml suites)", function()
    local code, out, err = H.run{ "test", dir }
    assert.truthy(code == 0 or code == 1, err) -- whether the expectations hold is not the point
    local n = 0
    for line in out:gmatch("[^\n]+") do
      if line:find("^ok %d+ %- ") or line:find("^not ok %d+ %- ") then n = n + 1 end
    end
    assert.equal(#PAYLOADS, n, out .. err) -- each suite ran (its sensor loaded)
    assert.truthy(out:find("%d+ passed, %d+ failed\n$"), out)
    no_markers(marks, "test DIR")
  end)

  it("herald repl -e and a script on stdin, loading every sensor", function()
    local lines = {}
    for i = 1, #PAYLOADS do
      lines[#lines + 1] = (":load %s/sensor-%d.yaml"):format(dir, i)
      lines[#lines + 1] = ":filter"
      lines[#lines + 1] = "print(#sensor.triggers)"
    end
    local script = table.concat(lines, "\n")
    local code, out, err = H.run{ "repl", dir .. "/sensor-1.yaml", "--events", dir .. "/events.jsonl", "-e", script }
    assert.equal(0, code, err)
    local _, n = out:gsub("\n4\n", "")
    assert.equal(#PAYLOADS, n, out)
    no_markers(marks, "repl -e")
    H.write(dir .. "/in.lua", script .. "\n")
    local sh = io.popen(("%s repl %s/sensor-1.yaml --events %s/events.jsonl < %s/in.lua 2>&1; echo \"rc=$?\""):format(
      H.bin, dir, dir, dir))
    local res = sh:read("*a")
    sh:close()
    assert.truthy(res:find("4\nrc=0", 1, true), res)
    no_markers(marks, "repl stdin")
  end)

  it("herald run: every hostile sensor at once, an event flowing through the filters", function()
    local rdir, rmarks = setup({ no_k8s = true, no_tests = true }) -- (a k8s trigger needs a cluster)
    local port = H.free_port()
    H.write(rdir .. "/es.yaml", H.webhook_es{ name = "es", event = "ev", port = port })
    local proc = H.start{ "run", rdir }
    proc:wait_for("herald started")
    assert.equal(200, (H.post_json(port, "/hook", '{"n":1}')))
    H.wait_until(function()
      local _, n = proc:output("stdout"):gsub('"triggerName":"log ', "")
      return n >= #PAYLOADS
    end, 10, function() return "a log firing per sensor\n" .. proc:describe() end)
    assert.equal(0, proc:stop())
    no_markers(rmarks, "run")
  end)

  it("the compiler itself quotes names the loader would refuse (herald lua)", function()
    local dir = H.tmpdir()
    local mark = dir .. "/owned-direct"
    local driver = [==[
      local sensor = require "herald.sensor"
      local mark = ...
      local payloads = PAYLOADS
      local n = 0
      for _, p in ipairs(payloads) do
        p = p:gsub("MARK", mark)
        local spec = {
          dependencies = { { name = p, eventSourceName = p, eventName = p,
            filters = { data = { { path = "body.n", type = "number", value = { "0" }, comparator = ">=" } },
                        exprs = { { expr = "n >= 0", fields = { { name = p, path = "body.n" }, { name = "n", path = "body.n" } } } } } } },
          triggers = { { template = { name = p, conditions = p:match("%S") and nil, log = {} },
                         parameters = { { src = { dependencyName = p, value = p }, dest = "log.x" } },
                         dlqTrigger = { template = { name = p .. "dlq", log = {} } } } },
        }
        for _, opts in ipairs({ { explain = true }, { readable = true }, { engine = true } }) do
          local obj = { name = p, file = p, doc = { spec = spec } }
          local s, err = sensor.load(obj, opts)
          assert(s, err)
          local ev = { context = { id = "1", source = p, subject = p, type = "webhook" }, data = { body = { n = 1 } } }
          local ok = s.dependencies[1].filter(ev, {})
          assert(ok == true, "filter did not pass")
          assert(s.triggers[1].name == p)
          assert(s.triggers[1].dependencies[1] == p)
          n = n + 1
        end
      end
      print("compiled " .. n)
    ]==]
    local lits = {}
    for i, p in ipairs(PAYLOADS) do lits[i] = ("%q"):format(p):gsub("\\\n", "\\n") end
    driver = driver:gsub("PAYLOADS", function() return "{ " .. table.concat(lits, ", ") .. " }" end)
    H.write(dir .. "/driver.lua", driver)
    local code, out, err = H.run{ "lua", dir .. "/driver.lua", mark }
    assert.equal(0, code, out .. err)
    assert.equal(("compiled %d\n"):format(#PAYLOADS * 3), out)
    no_marker(mark, "herald lua (compiler directly)")
  end)
end)

describe("names with control characters", function()
  -- Each case: the YAML of a sensor with one hostile name, and the field path named in the error.
  local function sensor_with(o)
    return table.concat({
      "apiVersion: argoproj.io/v1alpha1",
      "kind: Sensor",
      "metadata: {name: s}",
      "spec:",
      "  dependencies:",
      "    - name: " .. (o.dep or "d"),
      "      eventSourceName: " .. (o.es or "es"),
      "      eventName: " .. (o.ev or "ev"),
      o.exprs and ("      filters: {exprs: [{expr: \"true\", fields: [{name: " .. o.exprs .. ", path: body.n}]}]}") or "",
      "  triggers:",
      "    - template:",
      "        name: " .. (o.trig or "t"),
      "        log: {}",
      o.param and ("      parameters: [{src: {dependencyName: " .. o.param .. ", value: x}, dest: log.x}]") or "",
      "",
    }, "\n")
  end
  local bad = yq("x\nos.execute('touch MARK') --[[\n]] --")
  local cases = {
    { "dependency name", { dep = bad }, "6:13: spec.dependencies[0].name" },
    { "eventSourceName", { es = bad }, "7:24: spec.dependencies[0].eventSourceName", lint_only = true },
    { "eventName", { ev = bad }, "8:18: spec.dependencies[0].eventName", lint_only = true },
    { "trigger name", { trig = bad }, "12:15: spec.triggers[0].template.name" },
    { "expression field name", { exprs = bad }, "spec.dependencies[0].filters.exprs[0].fields[0].name", lint_only = true },
    { "parameter dependencyName", { param = bad }, "spec.triggers[0].parameters[0].src.dependencyName", lint_only = true },
    { "a tab in a trigger name", { trig = yq("a\tb") }, "12:15: spec.triggers[0].template.name", lint_only = true },
    { "DEL in a dependency name", { dep = yq("a\127b") }, "6:13: spec.dependencies[0].name" },
  }
  for _, c in ipairs(cases) do
    it("refuses " .. c[1] .. " at load, with its position" .. (c.lint_only and "" or ", in every mode"), function()
      local dir = H.tmpdir()
      local mark = dir .. "/owned"
      H.write(dir .. "/sensor.yaml", (sensor_with(c[2]):gsub("MARK", mark)))
      H.write(dir .. "/events.jsonl", EVENT)
      H.write(dir .. "/s_test.yaml", "sensor: sensor.yaml\ntests: [{name: t, events: [{source: es, subject: ev, data: {}}], expect: []}]\n")
      local code, _, err = H.run{ "lint", dir .. "/sensor.yaml" }
      assert.equal(1, code, err)
      assert.truthy(err:find(c[3], 1, true), err)
      assert.truthy(err:find("control character", 1, true), err)
      -- the message shows the name escaped, on one line
      for line in err:gmatch("[^\n]+") do assert.falsy(line:find("^os%.execute"), err) end
      if c.lint_only then return no_marker(mark, c[1]) end
      for _, args in ipairs({
        { "compile", dir .. "/sensor.yaml" },
        { "test", dir .. "/sensor.yaml", "--events", dir .. "/events.jsonl" },
        { "test", dir .. "/sensor.yaml", "--events", dir .. "/events.jsonl", "--explain" },
        { "test", dir },
        { "repl", dir .. "/sensor.yaml", "-e", "print(1)" },
      }) do
        local out
        code, out, err = H.run(args)
        assert.are_not.equal(0, code, args[1])
        -- (a *_test.yaml suite reports a sensor that does not load on stdout, as a failed test)
        assert.truthy((out .. err):find(c[3], 1, true), table.concat(args, " ") .. ": " .. out .. err)
      end
      no_marker(mark, c[1])
    end)
  end

  it("refuses an EventSource event name with a control character", function()
    local dir = H.tmpdir()
    H.write(dir .. "/es.yaml", "apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata: {name: es}\nspec:\n  webhook:\n    \"a\\nb\": {endpoint: /x, method: POST, port: \"12000\"}\n")
    local code, _, err = H.run{ "lint", dir .. "/es.yaml" }
    assert.equal(1, code, err)
    assert.truthy(err:find("es.yaml:6:5: spec.webhook.a\\nb: ", 1, true), err)
    assert.truthy(err:find("control character", 1, true), err)
  end)

  it("keeps legitimate names and strings with quotes, brackets, percent signs and backslashes", function()
    local dir = H.tmpdir()
    local trig = [[it's "quoted" [x] ]] .. "]] --[[ %s %d \\ ok"
    local dep = "dep-a_b.c"
    H.write(dir .. "/sensor.yaml", table.concat({
      "apiVersion: argoproj.io/v1alpha1",
      "kind: Sensor",
      "metadata: {name: s}",
      "spec:",
      "  dependencies:",
      "    - name: " .. yq(dep),
      "      eventSourceName: es",
      "      eventName: ev",
      "      filters:",
      "        data:",
      "          - {path: body.msg, type: string, value: [" .. yq("^a \\]\\] \"b\" %d\\\\$") .. "]}",
      -- Lua keywords as keys: generated code must not write r.end or { end = ... }
      "          - {path: body.end.function, type: string, value: [\"^x$\"]}",
      "  triggers:",
      "    - template:",
      "        name: " .. yq(trig),
      "        conditions: " .. yq(dep),
      "        http: {url: \"http://127.0.0.1:9/\", headers: {end: x, function: y, \"a b\": z}}",
      "",
    }, "\n"))
    H.write(dir .. "/events.jsonl",
      '{"id":"1","source":"es","subject":"ev","type":"webhook","data":{"body":{"end":{"function":"x"},"msg":"a ]] \\"b\\" %d\\\\"}}}\n' ..
      '{"id":"2","source":"es","subject":"ev","type":"webhook","data":{"body":{"msg":"no"}}}\n')
    local code, out, err = H.run{ "test", dir .. "/sensor.yaml", "--events", dir .. "/events.jsonl" }
    assert.equal(0, code, err)
    local cjson = require "cjson"
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = cjson.decode(l) end
    assert.equal(1, #lines, out)
    assert.equal(trig, lines[1].trigger)
    assert.equal("1", lines[1].events[dep])
    assert.same({ ["end"] = "x", ["function"] = "y", ["a b"] = "z" }, lines[1].action.headers)
    code, out, err = H.run{ "lint", dir .. "/sensor.yaml" }
    assert.equal(0, code, err)
  end)
end)
