-- herald/testing.lua: run a Sensor on events without a cluster, a bus or any target: the
-- sensor's whole logic (transforms, filters, conditions, parameters, trigger rendering) in dry
-- run. `herald test` and the REPL are built on it.
--
--   local T = require "herald.testing"
--   local s = assert(T.load_sensor("sensor.yaml"))
--   for _, ev in ipairs(assert(T.read_events("events.jsonl"))) do
--     for _, line in ipairs(s:feed(ev, { explain = true })) do print(T.encode(line)) end
--   end
--
-- Output lines (one JSON object each):
--   explain: {"event":"<id>","dependency":"<name>","passed":bool,"filters":[{"kind":...,"index":0,"passed":...,"reason":...}]}
--   firing:  {"trigger":"<name>","events":{"<dependency>":"<event id>"},"template":{...},"action":{...}}
local cjson = require "cjson"
local compiler = require "herald.sensor"
local runtime = require "herald.sensor_runtime"
local rt = require "herald.rt"

local _M = {}

local null = cjson.null
local is_array = require("herald.json").is_array

local encode_raw

--- JSON text with sorted keys (deterministic output for diffs and expected files).
local function encode(v)
  return (encode_raw(v):gsub("\\/", "/")) -- cjson escapes "/"; JSON does not need it
end

function encode_raw(v)
  local t = type(v)
  if t == "table" then
    if is_array(v) then
      local parts = {}
      for i = 1, #v do parts[i] = encode_raw(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
      local x = v[k]
      if x == nil then x = v[tonumber(k)] end
      parts[#parts + 1] = cjson.encode(k) .. ":" .. encode_raw(x)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  if t == "function" or t == "userdata" and v ~= null then return cjson.encode(tostring(v)) end
  return cjson.encode(v)
end
_M.encode = encode

--- The dry-run description of what a trigger would do (herald test's "action"): the trigger
--- type's module says (triggers/<type>/<type>.lua, `describe(action, spec, D)`), with these
--- helpers.
local registry = require "herald.registry"
local describe_action
local D = {
  null = null,
  decode = function(s) return rt.decode(s) end,
  describe = function(trig, action) return describe_action(trig, action) end,
}

--- The action's body (a message payload): decoded when it is JSON text, null when absent.
function D.body(action)
  local b = action.body
  if type(b) == "string" then
    local ok, v = pcall(rt.decode, b)
    if ok then return v end
  end
  if b == nil then return null end
  return b
end

--- An action on a Kubernetes object (k8s, argoWorkflow): a source.url, .git or .s3 manifest is
--- fetched only when the trigger runs, so the dry run names it.
function D.resource(ttype, action, spec, default_operation)
  return { type = ttype, operation = spec.operation or default_operation,
    object = action.object or null,
    url = action.fetch and action.fetch.url and action.fetch.url.path or nil,
    git = action.fetch and action.fetch.git and action.fetch.git.url or nil,
    s3 = action.fetch and action.fetch.s3 and type(action.fetch.s3.bucket) == "table"
      and (tostring(action.fetch.s3.bucket.name) .. "/" .. tostring(action.fetch.s3.bucket.key)) or nil }
end

function describe_action(trig, action)
  local mod = registry.trigger_module(trig.type)
  if mod and mod.describe then return mod.describe(action, action.spec or {}, D) end
  return { type = trig.type }
end
_M.describe_action = describe_action

--- Loads, validates and compiles the Sensors in path (a file or a folder). Returns a session
--- for the first Sensor, or nil, "errors" (one per line, file:line:col).
function _M.load_sensor(path, name)
  local loader = require "herald.loader"
  local result = loader.load({ path })
  if #result.errors > 0 then return nil, table.concat(result.errors, "\n") end
  for _, obj in ipairs(result.objects) do
    if obj.kind == "Sensor" and (name == nil or obj.name == name) then
      local sensor, err = compiler.load(obj, { explain = true,
        locate = function(tbl, key) return loader.position(obj.pos, tbl, key) end })
      if not sensor then return nil, err end
      return _M.session(sensor, obj)
    end
  end
  return nil, path .. ": no Sensor" .. (name and (" named " .. name) or "")
end

--- A session over a compiled sensor: feed events, collect explain and firing lines.
function _M.session(sensor, obj)
  local s = { sensor = sensor, obj = obj, out = nil, explain = false }
  s.runtime = runtime.new(sensor, {
    fire = function(trig, action, events)
      local ok, _, template = pcall(trig.action, events, true)
      local ids = {}
      for dep, ev in pairs(events) do ids[dep] = ev.context.id end
      s.out[#s.out + 1] = { trigger = trig.name, events = ids,
        template = ok and template or null, action = describe_action(trig, action) }
    end,
    -- a filter or transform that raised (script error, budget, bad data) is reported as an
    -- error record; a filter that said no is not (that is what --explain shows)
    discard = function(dep, event, why, is_error)
      if is_error then
        s.out[#s.out + 1] = { error = why, event = event.context.id, dependency = dep.name }
      end
    end,
    action_error = function(trig, err, events)
      local ids = {}
      for dep, ev in pairs(events) do ids[dep] = ev.context.id end
      s.out[#s.out + 1] = { trigger = trig.name, events = ids, error = err }
    end,
  })

  --- The dependencies an event could match (same EventSource and event name).
  function s:dependencies_for(event)
    local deps = {}
    for _, d in ipairs(self.sensor.dependencies) do
      if d.eventSourceName == event.context.source and d.eventName == event.context.subject then
        deps[#deps + 1] = d
      end
    end
    return deps
  end

  --- Explains how dependency `dep` judges `event`: transform, then each filter's verdict.
  function s:explain_dep(dep, event)
    local line = { event = event.context.id, dependency = dep.name, passed = true, filters = {} }
    if dep.transform then
      local ok, tev, terr = pcall(dep.transform, event)
      if not ok or not tev then
        line.passed = false
        line.filters[1] = { kind = "transform", index = 0, passed = false, reason = tostring(ok and terr or tev) }
        return line, nil
      end
      event = tev
    end
    if dep.filter then
      local trace = {}
      local ok, pass, why = pcall(dep.filter, event, trace)
      if not ok then pass, why = false, pass end
      line.passed = pass == true
      line.filters = trace
      if not pass and #trace == 0 then trace[1] = { kind = "filter", index = 0, passed = false, reason = tostring(why) } end
    end
    return line, event
  end

  --- Runs one event through the sensor; returns the lines it produced (explain lines first,
  --- when opts.explain, then firings in order).
  function s:feed(event, opts)
    self.out = {}
    local lines = {}
    local deps = self:dependencies_for(event)
    if opts and opts.explain then
      for _, dep in ipairs(deps) do lines[#lines + 1] = (self:explain_dep(dep, event)) end
    end
    for _, dep in ipairs(deps) do self.runtime.on_event(dep, event) end
    for _, l in ipairs(self.out) do lines[#lines + 1] = l end
    return lines
  end

  return s
end

local seq = 0

--- Builds an event table from a structured-mode CloudEvent (a decoded JSON object), filling
--- the defaults: id (a sequence number), time (now), specversion, datacontenttype. Returns the
--- event or nil, err.
function _M.event_from_cloudevent(ce)
  if type(ce) ~= "table" then return nil, "an event must be a JSON object" end
  if type(ce.source) ~= "string" or ce.source == "" then return nil, "source (the EventSource name) is required" end
  if type(ce.subject) ~= "string" or ce.subject == "" then return nil, "subject (the event name) is required" end
  seq = seq + 1
  local now = require("herald.core").now()
  local secs = math.floor(now)
  local context = {
    id = ce.id ~= nil and tostring(ce.id) or tostring(seq),
    source = ce.source, subject = ce.subject,
    type = ce.type or "webhook",
    time = ce.time or (os.date("!%Y-%m-%dT%H:%M:%S", secs) .. (".%09dZ"):format(math.floor((now - secs) * 1e9))),
    datacontenttype = ce.datacontenttype or "application/json",
    specversion = ce.specversion or "1.0",
  }
  -- a CloudEvent without `data` has no data at all (filters pass it, transforms keep it, as in
  -- Argo); `"data": null` is data, JSON null
  local data = ce.data
  if data == nil then return { context = context } end
  return { context = context, data = data,
    raw = rt.encode(data) }
end

--- Reads a JSON-lines file of CloudEvents; returns events or nil, "file:line: message".
function _M.read_events(path)
  local f, err
  if path == "-" then f = io.stdin else f, err = io.open(path, "rb") end
  if not f then return nil, err end
  path = path == "-" and "<stdin>" or path
  local events, n = {}, 0
  for line in f:lines() do
    n = n + 1
    if line:match("%S") then
      local ok, ce = pcall(rt.decode, line) -- empty arrays stay arrays
      if not ok then
        if f ~= io.stdin then f:close() end
        return nil, ("%s:%d: not JSON: %s"):format(path, n, tostring(ce))
      end
      local ev, eerr = _M.event_from_cloudevent(ce)
      if not ev then
        if f ~= io.stdin then f:close() end
        return nil, ("%s:%d: %s"):format(path, n, eerr)
      end
      events[#events + 1] = ev
    end
  end
  if f ~= io.stdin then f:close() end
  return events
end

--- Deep equality of decoded JSON values (exact for --expect).
local function equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then
    if type(a) == "number" and type(b) == "number" then return math.abs(a - b) < 1e-9 end
    return false
  end
  for k, v in pairs(a) do if not equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
_M.equal = equal

--- Whether `actual` contains everything `expected` says (objects: keys in expected must match;
--- arrays and scalars: equal). Used by *_test.yaml files.
local function contains(actual, expected)
  if type(expected) ~= "table" then return equal(actual, expected) end
  if type(actual) ~= "table" then return false end
  if expected[1] ~= nil then return equal(actual, expected) end
  for k, v in pairs(expected) do
    if not contains(actual[k], v) then return false end
  end
  return true
end
_M.contains = contains

local function show(v)
  if v == nil then return "nothing" end
  local t = type(v)
  if t == "table" then return encode(v) end
  if v == null then return "null" end
  if t == "string" then return encode(v) .. " (string)" end
  if t == "number" then return encode(v) .. " (number)" end
  return encode(v)
end

--- Key-level differences between an expected and an actual value: "path: expected X, got Y"
--- lines (strings and numbers say which, so 300 and "300" are told apart). With `partial`,
--- objects are compared on the keys expected names (as *_test.yaml's expect is).
function _M.key_diff(expected, actual, partial, path, out)
  out = out or {}
  path = path or ""
  local function at(k)
    if type(k) == "number" then return path .. "[" .. (k - 1) .. "]" end
    if k:match("^[%a_][%w_]*$") then return path == "" and k or (path .. "." .. k) end
    return path .. "[" .. encode(k) .. "]"
  end
  if type(expected) == "table" and type(actual) == "table" and expected ~= null and actual ~= null
     and is_array(expected) == is_array(actual) then
    if is_array(expected) then
      if #expected ~= #actual then
        out[#out + 1] = ("%s: expected %d item(s), got %d: expected %s, got %s"):format(
          path == "" and "(value)" or path, #expected, #actual, encode(expected), encode(actual))
        return out
      end
      for i = 1, #expected do _M.key_diff(expected[i], actual[i], false, at(i), out) end
      return out
    end
    local keys = {}
    for k in pairs(expected) do keys[#keys + 1] = k end
    if not partial then
      for k in pairs(actual) do if expected[k] == nil then keys[#keys + 1] = k end end
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do _M.key_diff(expected[k], actual[k], partial, at(k), out) end
    return out
  end
  if not equal(expected, actual) then
    out[#out + 1] = ("%s: expected %s, got %s"):format(path == "" and "(value)" or path,
      show(expected), show(actual))
  end
  return out
end

--- A readable line diff between expected and actual output lines (arrays of tables).
function _M.diff(expected, actual)
  local out = {}
  local n = math.max(#expected, #actual)
  for i = 1, n do
    local e, a = expected[i], actual[i]
    if e == nil then
      out[#out + 1] = ("+ line %d (unexpected): %s"):format(i, encode(a))
    elseif a == nil then
      out[#out + 1] = ("- line %d (missing):    %s"):format(i, encode(e))
    elseif not equal(e, a) then
      out[#out + 1] = ("- line %d expected: %s"):format(i, encode(e))
      out[#out + 1] = ("+ line %d actual:   %s"):format(i, encode(a))
      for _, d in ipairs(_M.key_diff(e, a, false)) do out[#out + 1] = "    " .. d end
    end
  end
  return table.concat(out, "\n")
end

return _M
