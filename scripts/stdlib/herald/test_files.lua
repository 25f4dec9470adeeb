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
--
-- An expected firing matches when every field it gives equals the actual one (objects are
-- compared on the keys the expectation names; arrays and values exactly), and the number of
-- firings is the same. Output: "ok N - file: name" / "not ok N - ..." with the difference, then
-- "N passed, M failed". Exit status 1 when a test fails, 2 when a file is invalid.
local core = require "herald.core"
local T = require "herald.testing"

local _M = {}

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
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

local function load_yaml(path)
  local text, err = core.read_file(path)
  if not text then return nil, err end
  local docs, perr = core.yaml_load(text, path)
  if not docs then return nil, perr end
  if type(docs[1]) ~= "table" then return nil, path .. ": empty test file" end
  return docs[1]
end

--- Runs one test case on a fresh session; returns ok, message.
local function run_case(sensor_path, case)
  local session, err = T.load_sensor(sensor_path)
  if not session then return nil, err end
  local lines = {}
  for i, ce in ipairs(case.events or {}) do
    local ev, eerr = T.event_from_cloudevent(ce)
    if not ev then return false, ("events[%d]: %s"):format(i - 1, eerr) end
    for _, l in ipairs(session:feed(ev)) do lines[#lines + 1] = l end
  end
  local expect = case.expect or {}
  local ok = #expect == #lines
  for i = 1, math.min(#expect, #lines) do
    if not T.contains(lines[i], expect[i]) then ok = false end
  end
  if ok then return true end
  local msg = { ("expected %d firing(s), got %d"):format(#expect, #lines) }
  for i = 1, math.max(#expect, #lines) do
    local e, a = expect[i], lines[i]
    if e == nil or a == nil or not T.contains(a, e) then
      msg[#msg + 1] = ("  firing %d expected: %s"):format(i - 1, e and T.encode(e) or "(none)")
      msg[#msg + 1] = ("  firing %d actual:   %s"):format(i - 1, a and T.encode(a) or "(none)")
    end
  end
  return false, table.concat(msg, "\n")
end

--- Runs the test files under paths, writing to out; returns the exit status.
function _M.run(paths, out, eprint)
  local files = collect(paths)
  if #files == 0 then
    eprint("herald test: no *_test.yaml files in ", table.concat(paths, " "))
    return 2
  end
  local passed, failed, n, invalid = 0, 0, 0, false
  for _, file in ipairs(files) do
    local doc, err = load_yaml(file)
    if not doc or type(doc.sensor) ~= "string" or type(doc.tests) ~= "table" then
      eprint(file, ": ", err or "expected `sensor: FILE` and `tests: [...]`")
      invalid = true
    else
      local sensor_path = dirname(file) .. "/" .. doc.sensor
      for i, case in ipairs(doc.tests) do
        n = n + 1
        local name = ("%s: %s"):format(file, case.name or ("tests[" .. (i - 1) .. "]"))
        local ok, msg = run_case(sensor_path, case)
        if ok then
          passed = passed + 1
          out:write(("ok %d - %s\n"):format(n, name))
        else
          failed = failed + 1
          out:write(("not ok %d - %s\n"):format(n, name))
          for line in tostring(msg):gmatch("[^\n]+") do out:write("# ", line, "\n") end
        end
      end
    end
  end
  out:write(("%d passed, %d failed\n"):format(passed, failed))
  if invalid then return 2 end
  return failed > 0 and 1 or 0
end

return _M
