-- herald/test_files.lua: sensor tests kept beside the sensors, as `*_test.yaml` files, run by
-- `herald test PATH...`.
--
--   # orders_test.yaml, next to orders-sensor.yaml
--   sensor: orders-sensor.yaml          # relative to this file
--   tests:
--     - name: a large order is shipped once paid
--       events:                         # CloudEvents: source = EventSource, subject = event name
--         - {source: shop, subject: order, data: {body: {id: o-1, total: 250}}}
--         - {source: shop, subject: payment, data: {body: {order: o-1, status: succeeded}}}
--       expect:                         # the firings, in order; each lists what must match
--         - trigger: ship
--           action: {type: log}
--       errors: []                      # optional: errors this test expects (substrings)
--
-- A test file is checked like a spec (unknown fields are errors, with file:line:col), and
-- `events` and `expect` are required (`expect: []` says nothing fires), so a typo cannot make
-- a test pass. An expected firing matches when every field it gives equals the actual one
-- (objects are compared on the keys the expectation names; arrays and values exactly), and the
-- number of firings is the same. A script or transform that raised, ran out of its budget or
-- could not build its action is an error: the test fails unless `errors` lists it.
-- Output: "ok N - file: name" / "not ok N - ..." with key-level differences, then
-- "N passed, M failed". Exit status 1 when a test fails, 2 when a file is invalid.
local core = require "herald.core"
local T = require "herald.testing"

local _M = {}

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

--- The schema of a test file (herald.schema's node constructors; checked by herald.loader).
local function file_schema()
  local S = require("herald.schema").lib
  local CloudEvent = S.object({
    id = S.int_or_string { doc = "event id (default: a sequence number)" },
    source = S.str { required = true, doc = "the EventSource name" },
    subject = S.str { required = true, doc = "the event name" },
    type = S.str { doc = "CloudEvent type (default webhook)" },
    time = S.str { doc = "RFC 3339 time (default now)" },
    specversion = S.str { doc = "1.0" },
    datacontenttype = S.str { doc = "default application/json" },
    data = S.any { doc = "the event data in the source's shape" },
  }, { doc = "a CloudEvent in structured form" })
  local Firing = S.object({
    trigger = S.str { doc = "the trigger's name" },
    events = S.any { doc = "dependency -> event id" },
    template = S.any { doc = "the trigger template after its parameters" },
    action = S.any { doc = "what the trigger would do" },
    error = S.any { doc = "the action could not be built" },
  }, { doc = "an expected firing: only the keys given are compared" })
  return S.object({
    sensor = S.str { required = true, doc = "the Sensor file, relative to the test file" },
    tests = S.array(S.object({
      name = S.str { doc = "what the test shows" },
      events = S.array(CloudEvent, { doc = "the events fed in order" }),
      expect = S.array(Firing, { doc = "the firings in order (`[]`: nothing fires)" }),
      errors = S.strings { doc = "errors the test expects (each a substring of one)" },
    }), { required = true, doc = "the test cases" }),
  }, { doc = "a *_test.yaml file" })
end

--- Collects *_test.yaml files under paths (sorted, recursive).
local function collect(paths)
  local files = {}
  local function walk(p)
    local kind = core.stat(p)
    if kind == "dir" then
      local names = core.list_dir(p) or {}
      table.sort(names)
      for _, n in ipairs(names) do
        if n:sub(1, 1) ~= "." then walk((p:gsub("/+$", "")) .. "/" .. n) end
      end
    elseif kind == "file" and (p:match("_test%.ya?ml$")) then
      files[#files + 1] = p
    end
  end
  for _, p in ipairs(paths) do
    if core.stat(p) == "file" then files[#files + 1] = p else walk(p) end
  end
  return files
end
_M.collect = collect

--- Loads and checks one test file: doc, or nil and the error messages.
local function load_file(path)
  local text, err = core.read_file(path)
  if not text then return nil, { path .. ": " .. tostring(err) } end
  local docs, pos = core.yaml_load(text, path)
  if not docs then return nil, { pos } end
  if type(docs[1]) ~= "table" then return nil, { path .. ": empty test file" } end
  local loader = require "herald.loader"
  local doc = docs[1]
  local errors = loader.check_document(path, pos, file_schema(), doc)
  for i, case in ipairs(type(doc.tests) == "table" and doc.tests or {}) do
    if type(case) == "table" then
      for _, key in ipairs({ "events", "expect" }) do
        if case[key] == nil then
          local line, col = loader.position(pos, case)
          errors[#errors + 1] = loader.format_error(path, line, col, ("tests[%d].%s"):format(i - 1, key),
            key == "expect" and "required (write `expect: []` when nothing should fire)"
              or "required (the events to feed)")
        end
      end
    end
  end
  if #errors > 0 then return nil, errors end
  return doc
end

--- Runs one test case on a fresh session; returns ok, message lines, explain lines.
local function run_case(sensor_path, case, opts)
  local session, err = T.load_sensor(sensor_path)
  if not session then return nil, { tostring(err) } end
  local firings, errors, explains = {}, {}, {}
  for i, ce in ipairs(case.events or {}) do
    local ev, eerr = T.event_from_cloudevent(ce)
    if not ev then return false, { ("events[%d]: %s"):format(i - 1, eerr) } end
    for _, l in ipairs(session:feed(ev, { explain = opts.explain })) do
      if l.dependency and l.filters then
        explains[#explains + 1] = l
      elseif l.error and not l.trigger then
        errors[#errors + 1] = l
      else
        firings[#firings + 1] = l
        -- an action that could not be built is an error unless the test expects that firing
        -- to fail (`error:` in its expectation)
        local e = case.expect and case.expect[#firings]
        if l.error and not (type(e) == "table" and e.error ~= nil) then errors[#errors + 1] = l end
      end
    end
  end
  local msg = {}
  -- errors: each must be one the test expects
  local wanted = case.errors or {}
  local seen = {}
  for _, e in ipairs(errors) do
    local ok = false
    for j, w in ipairs(wanted) do
      if tostring(e.error):find(w, 1, true) then ok, seen[j] = true, true end
    end
    if not ok then
      msg[#msg + 1] = ("error (event %s%s): %s"):format(tostring(e.event or "?"),
        e.dependency and (", dependency " .. e.dependency) or e.trigger and (", trigger " .. e.trigger) or "",
        tostring(e.error))
    end
  end
  for j, w in ipairs(wanted) do
    if not seen[j] then msg[#msg + 1] = ("expected an error containing %q; none happened"):format(w) end
  end
  local expect = case.expect or {}
  if #expect ~= #firings then
    msg[#msg + 1] = ("expected %d firing(s), got %d"):format(#expect, #firings)
  end
  for i = 1, math.max(#expect, #firings) do
    local e, a = expect[i], firings[i]
    if e == nil then
      msg[#msg + 1] = ("  firing %d (unexpected): %s"):format(i - 1, T.encode(a))
    elseif a == nil then
      msg[#msg + 1] = ("  firing %d (missing): %s"):format(i - 1, T.encode(e))
    elseif not T.contains(a, e) then
      msg[#msg + 1] = ("  firing %d differs:"):format(i - 1)
      for _, d in ipairs(T.key_diff(e, a, true)) do msg[#msg + 1] = "    " .. d end
    end
  end
  return #msg == 0, msg, explains
end

local function xml(s)
  return (tostring(s):gsub("[&<>\"]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;" })
    :gsub("[%z\1-\8\11\12\14-\31]", ""))
end

--- Writes a JUnit XML report (one testsuite per file) for CI systems.
local function write_junit(path, suites)
  local out = { '<?xml version="1.0" encoding="UTF-8"?>', "<testsuites>" }
  for _, su in ipairs(suites) do
    local failures = 0
    for _, c in ipairs(su.cases) do if not c.ok then failures = failures + 1 end end
    out[#out + 1] = ('  <testsuite name="%s" tests="%d" failures="%d"%s>'):format(xml(su.file), #su.cases,
      failures, su.invalid and ' errors="1"' or "")
    if su.invalid then
      out[#out + 1] = ('    <testcase name="(file)" classname="%s"><error message="invalid test file">%s</error></testcase>')
        :format(xml(su.file), xml(table.concat(su.invalid, "\n")))
    end
    for _, c in ipairs(su.cases) do
      if c.ok then
        out[#out + 1] = ('    <testcase name="%s" classname="%s"/>'):format(xml(c.name), xml(su.file))
      else
        out[#out + 1] = ('    <testcase name="%s" classname="%s"><failure message="%s">%s</failure></testcase>')
          :format(xml(c.name), xml(su.file), xml(c.msg[1] or "failed"), xml(table.concat(c.msg, "\n")))
      end
    end
    out[#out + 1] = "  </testsuite>"
  end
  out[#out + 1] = "</testsuites>"
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  f:write(table.concat(out, "\n"), "\n")
  f:close()
  return true
end

--- Runs the test files under paths, writing to out; returns the exit status.
--- opts: {explain = bool (print each dependency's verdicts as comments), junit = path}
function _M.run(paths, out, eprint, opts)
  opts = opts or {}
  local files = collect(paths)
  if #files == 0 then
    eprint("error: herald test: no *_test.yaml files in ", table.concat(paths, " "))
    return 2
  end
  local rt = require "herald.rt"
  local printed -- print() of user Lua during the current test
  rt.on_print(function(sensor, line) printed[#printed + 1] = ("print (sensor %s): %s"):format(sensor, line) end)
  local passed, failed, n, invalid = 0, 0, 0, false
  local suites = {}
  for _, file in ipairs(files) do
    local doc, errs = load_file(file)
    local su = { file = file, cases = {} }
    suites[#suites + 1] = su
    if not doc then
      for _, e in ipairs(errs) do eprint("error: ", e) end
      su.invalid = errs
      invalid = true
    else
      local sensor_path = dirname(file) .. "/" .. doc.sensor
      for i, case in ipairs(doc.tests) do
        n = n + 1
        local name = case.name or ("tests[" .. (i - 1) .. "]")
        local full = ("%s: %s"):format(file, name)
        printed = {}
        local ok, msg, explains = run_case(sensor_path, case, opts)
        su.cases[#su.cases + 1] = { name = name, ok = ok, msg = msg }
        if ok then
          passed = passed + 1
          out:write(("ok %d - %s\n"):format(n, full))
        else
          failed = failed + 1
          out:write(("not ok %d - %s\n"):format(n, full))
          for _, m in ipairs(msg) do
            for line in tostring(m):gmatch("[^\n]+") do out:write("# ", line, "\n") end
          end
        end
        for _, p in ipairs(printed) do out:write("# ", p, "\n") end
        for _, l in ipairs(explains or {}) do out:write("# explain: ", T.encode(l), "\n") end
      end
    end
  end
  rt.on_print(nil)
  out:write(("%d passed, %d failed\n"):format(passed, failed))
  if opts.junit then
    local ok, err = write_junit(opts.junit, suites)
    if not ok then
      eprint("error: herald test: --junit: ", tostring(err))
      return 2
    end
  end
  if invalid then return 2 end
  return failed > 0 and 1 or 0
end

return _M
