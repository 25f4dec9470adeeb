-- herald/rt.lua: the runtime that compiled sensors call: reading and writing paths in event
-- data, value conversions with Go/gjson semantics, regular expressions (PCRE2), trigger
-- parameters, and user scripts in the sensor's sandbox.
--
-- Compiled sensor code (herald/sensor.lua generates it) receives this module as `rt` and keeps
-- the functions it needs in locals. Everything here runs per event: no allocation that can be
-- avoided, no string building on the success path.
local cjson = require "cjson"
local core = require "herald.core"

local type, tostring, tonumber, pairs, ipairs = type, tostring, tonumber, pairs, ipairs
local floor, huge = math.floor, math.huge
local fmt, concat = string.format, table.concat
local null = cjson.null
local encode = cjson.encode

local _M = {}

_M.null = null

local has_empty_array, encode_marked -- defined with the empty-array codec below
local has_gjson_early, gjson_early = pcall(require, "herald.gjson")

local sandboxes = {} -- sensor name -> its sandbox (created with its first script)

--- Splits a simple gjson path ("body.items.0.name", with "\." for a literal dot) into keys.
--- Numeric segments are kept as strings here; path_get tries them as array indexes.
---@param path string
---@return string[]
function _M.split_path(path)
  local keys, cur = {}, {}
  local i, n = 1, #path
  while i <= n do
    local c = path:sub(i, i)
    if c == "\\" and i < n then
      cur[#cur + 1] = path:sub(i + 1, i + 1)
      i = i + 2
    elseif c == "." then
      keys[#keys + 1] = concat(cur)
      cur = {}
      i = i + 1
    else
      cur[#cur + 1] = c
      i = i + 1
    end
  end
  keys[#keys + 1] = concat(cur)
  return keys
end

local function is_array(t)
  -- cjson decodes JSON arrays to tables with only 1..n keys; an empty table counts as both.
  return t[1] ~= nil or next(t) == nil
end

--- Reads keys (from split_path) in a decoded JSON value. Returns the value, or nil when the
--- path does not exist (JSON null is returned as cjson.null: it exists).
function _M.path_get(v, keys)
  for i = 1, #keys do
    if type(v) ~= "table" then return nil end
    local k = keys[i]
    local nv = v[k]
    if nv == nil and is_array(v) then
      local idx = tonumber(k)
      if idx and idx >= 0 and floor(idx) == idx then nv = v[idx + 1] end
    end
    v = nv
    if v == nil then return nil end
  end
  return v
end

--- A number as Go's strconv.FormatFloat(f, 'f', -1, 64) prints it for the common cases
--- (integers without a decimal point, others with the shortest round-trip digits).
local function number_string(n)
  if n == floor(n) and n > -1e21 and n < 1e21 then return fmt("%d", n) end
  for prec = 15, 17 do
    local s = fmt("%." .. prec .. "g", n)
    if tonumber(s) == n then return s end
  end
  return fmt("%.17g", n)
end
_M.number_string = number_string

--- gjson Result.String(): strings as is, numbers and booleans as text, null as "", objects
--- and arrays as JSON.
function _M.to_string(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return number_string(v) end
  if t == "boolean" then return v and "true" or "false" end
  if v == null or v == nil then return "" end
  return encode(v)
end
local to_string = _M.to_string

--- gjson Result.Bool(): true, non-zero numbers, and strings strconv.ParseBool accepts as true.
local TRUE_STRINGS = { ["1"] = true, t = true, T = true, TRUE = true, ["true"] = true, True = true }
function _M.to_bool(v)
  local t = type(v)
  if t == "boolean" then return v end
  if t == "number" then return v ~= 0 end
  if t == "string" then return TRUE_STRINGS[v] == true end
  return false
end

--- strconv.ParseBool: returns true/false, or nil for anything else.
local PARSE_BOOL = { ["1"] = true, t = true, T = true, TRUE = true, ["true"] = true, True = true,
  ["0"] = false, f = false, F = false, FALSE = false, ["false"] = false, False = false }
function _M.parse_bool(s)
  return PARSE_BOOL[s]
end

--- strconv.ParseFloat on gjson's String() of v: a number, or nil. Byte checks rather than
--- patterns: this runs per event and string.find with a pattern is not JIT-compiled.
local byte = string.byte
function _M.to_number(v)
  if type(v) == "number" then return v end
  if type(v) ~= "string" or v == "" then return nil end
  local first, last = byte(v, 1), byte(v, -1)
  -- Go rejects surrounding spaces; Lua's tonumber would accept them, and hex integers
  if first <= 32 or last <= 32 then return nil end
  if first == 48 and (byte(v, 2) == 120 or byte(v, 2) == 88) then return nil end -- 0x..
  return tonumber(v)
end

--- Compares a and b with an Argo comparator (">=", ">", "=", "!=", "<", "<=", "" means "=").
function _M.compare(a, op, b)
  if op == "" or op == "=" then return a == b end
  if op == "!=" then return a ~= b end
  if op == ">" then return a > b end
  if op == ">=" then return a >= b end
  if op == "<" then return a < b end
  if op == "<=" then return a <= b end
  return false
end

--- Compiles a regular expression (RE2/Go syntax is close to PCRE2's for what filters use).
--- Returns a matcher object or nil, err (with the offset in the pattern).
function _M.regex(pattern)
  return core.regex_compile(pattern)
end

-- Empty JSON arrays ---------------------------------------------------------------------------
-- lua-cjson 2.1.0 (Debian 12) decodes [] and {} to the same empty table and encodes it as {}:
-- it has neither cjson.empty_array nor array metatables. An empty array in event data (or one a
-- Lua transform returns) would come out of a parameter as {}. So JSON text that holds an empty
-- array is decoded with it marked by gjson's array metatable (the one marker every Herald
-- module honours: gjson, sjson, testing, kube), and a value holding a marked empty table is
-- encoded by encode_marked. Text without "[]" takes cjson's fast path untouched.

local ARRAY_MT = has_gjson_early and gjson_early.array_mt or { __name = "herald.gjson.array" }
_M.ARRAY_MT = ARRAY_MT
local EMPTY_MARK = "\0herald:empty-array\0" -- a string no event carries in practice
local find, sub, byte = string.find, string.sub, string.byte

--- Replaces the marker strings that stand for empty arrays by marked empty tables.
local function unmark(v)
  if type(v) ~= "table" then return v end
  if v[1] == EMPTY_MARK and v[2] == nil then return setmetatable({}, ARRAY_MT) end
  for k, x in pairs(v) do
    if type(x) == "table" then v[k] = unmark(x) end
  end
  return v
end

--- cjson.decode, except that empty arrays come out marked (see above). Raises as cjson does.
function _M.decode(json)
  if type(json) ~= "string" or not find(json, "%[%s*%]") then return cjson.decode(json) end
  local parts, from, i, n = {}, 1, 1, #json
  while i <= n do
    local a = find(json, '["%[]', i)
    if not a then break end
    if byte(json, a) == 34 then -- a string: skip it whole, escapes included
      local j = a + 1
      while true do
        local q = find(json, '["\\]', j)
        if not q then return cjson.decode(json) end -- unterminated: cjson says why
        if byte(json, q) == 92 then j = q + 2 else i = q + 1 break end
      end
    else
      local _, e = find(json, "^%s*%]", a + 1)
      if e then
        parts[#parts + 1] = sub(json, from, a)
        parts[#parts + 1] = '"\\u0000herald:empty-array\\u0000"]'
        from = e + 1
        i = e + 1
      else
        i = a + 1
      end
    end
  end
  if #parts == 0 then return cjson.decode(json) end
  parts[#parts + 1] = sub(json, from)
  return unmark(cjson.decode(concat(parts)))
end

--- Whether v holds a marked empty table (which cjson would print as {}).
function has_empty_array(v)
  if type(v) ~= "table" then return false end
  if next(v) == nil then return getmetatable(v) == ARRAY_MT end
  for _, x in pairs(v) do
    if type(x) == "table" and has_empty_array(x) then return true end
  end
  return false
end
_M.has_empty_array = has_empty_array

--- JSON text of v with marked empty tables as [] (cjson for everything else).
function encode_marked(v)
  if type(v) ~= "table" then return encode(v) end
  if next(v) == nil then return getmetatable(v) == ARRAY_MT and "[]" or "{}" end
  local parts = {}
  if v[1] ~= nil then
    for i = 1, #v do parts[i] = encode_marked(v[i]) end
    return "[" .. concat(parts, ",") .. "]"
  end
  for k, x in pairs(v) do parts[#parts + 1] = encode(tostring(k)) .. ":" .. encode_marked(x) end
  return "{" .. concat(parts, ",") .. "}"
end
_M.encode_marked = encode_marked

-- Trigger parameters ------------------------------------------------------------------------

--- Writes value at the sjson-style dotted path in t (creating intermediate tables; "-1"
--- appends to an array). operation: "overwrite" (default), "append", "prepend" (string
--- concatenation with the existing value, as Argo does).
function _M.set_path(t, keys, value, operation)
  for i = 1, #keys - 1 do
    local k = keys[i]
    local idx = tonumber(k)
    if idx and type(t) == "table" and is_array(t) and next(t) ~= nil then k = idx + 1 end
    local nxt = t[k]
    if type(nxt) ~= "table" then
      nxt = {}
      t[k] = nxt
    end
    t = nxt
  end
  local k = keys[#keys]
  local idx = tonumber(k)
  if k == "-1" then
    t[#t + 1] = value
    return
  elseif idx and is_array(t) and next(t) ~= nil then
    k = idx + 1
  end
  if operation == "append" and t[k] ~= nil then
    value = to_string(t[k]) .. to_string(value)
  elseif operation == "prepend" and t[k] ~= nil then
    value = to_string(value) .. to_string(t[k])
  end
  t[k] = value
end

-- Paths, templates and expressions: thin adapters over the language modules, so generated
-- sensor code does not depend on their internals. -------------------------------------------

local has_gjson, gjson = pcall(require, "herald.gjson")
local has_sjson, sjson = pcall(require, "herald.sjson")
local has_tpl, gotemplate = pcall(require, "herald.gotemplate")
local has_gv, govaluate = pcall(require, "herald.govaluate")

--- Compiles a gjson path. Returns get(value) -> the value at the path (gjson's "light"
--- result: nil when it does not exist, cjson.null for JSON null), or nil, err.
function _M.path(path)
  if has_gjson then return gjson.compile(path) end
  local keys = _M.split_path(path)
  return function(v) return _M.path_get(v, keys) end
end

--- gjson Result.String() of a path's value.
_M.res_string = has_gjson and gjson.string or to_string

--- gjson Result.Bool() of a path's value.
_M.res_bool = has_gjson and gjson.bool or _M.to_bool

--- gjson Result.Value(): the Lua value, with JSON null as nil.
function _M.res_value(v)
  if v == null then return nil end
  return v
end

--- Compiles a Go text/template; returns t or nil, err.
function _M.template(text)
  if not has_tpl then return nil, "Go templates are not available" end
  return gotemplate.compile(text)
end

--- Renders a compiled template with data; returns the text or nil, err.
function _M.render(t, data)
  return t:render(data)
end

--- Compiles a govaluate expression; returns fn(params) -> value | nil, err.
function _M.govaluate(expr)
  if not has_gv then return nil, "govaluate expressions are not available" end
  local c, err = govaluate.compile(expr)
  if not c then return nil, err end
  return c.fn
end

--- Compiles an sjson destination path; returns set(doc, value, operation) or nil, err.
function _M.setter(path)
  if has_sjson then
    local set, err = sjson.compile(path)
    if not set then return nil, err end
    local get = has_gjson and gjson.compile(path) or nil
    return function(doc, value, operation)
      if operation == "append" or operation == "prepend" then
        local cur = get and get(doc)
        if cur ~= nil then
          local old = gjson.string(cur)
          value = operation == "append" and (old .. to_string(value)) or (to_string(value) .. old)
        end
      end
      return set(doc, value)
    end
  end
  local keys = _M.split_path(path)
  return function(doc, value, operation)
    _M.set_path(doc, keys, value, operation)
    return doc
  end
end

--- Compiles a jq program (libjq); returns it or nil, err.
function _M.jq(program)
  return core.jq_compile(program)
end

--- A new event with the same context and `json` as its data.
local function with_data(event, json)
  local ok, data = pcall(_M.decode, json)
  if not ok then return nil, "transform produced invalid JSON" end
  return { context = event.context, data = data, raw = json }
end

--- Applies a compiled jq program to the event: the first output replaces the data. An event
--- with no data at all (event.data == nil; not JSON null) is returned unchanged, as Argo does.
function _M.transform_jq(jq, event)
  if event.data == nil then return event end
  local json, err = jq:run(event.raw)
  if not json then return nil, err end
  return with_data(event, json)
end

--- Applies a sandboxed transform script: the table it returns replaces the data. An event with
--- no data is returned unchanged; with JSON null as data the script's `event` is an empty table
--- (Argo decodes null into an empty map).
function _M.transform_script(sensor_name, id, event)
  if event.data == nil then return event end
  local json, err = sandboxes[sensor_name]:transform(id, event.data == null and "{}" or event.raw)
  if not json then return nil, "script transform: " .. tostring(err) end
  return with_data(event, json)
end

--- Runs a Lua trigger's script (Herald's extension) in the sensor's sandbox with the global
--- `events` = {dependency = {context = ..., data = ...}}. The script returns the action:
---   {type = "http", url =, method =, headers =, body = (string or table)}
---   {type = "log", message = ...}    or nil / {type = "none"} to do nothing.
--- Returns dispatch ("http" | "log" | "none"), the executor's action table; or nil, err.
function _M.lua_trigger(sensor_name, id, events)
  local view = {}
  for dep, ev in pairs(events) do view[dep] = { context = ev.context, data = ev.data } end
  local json, err = sandboxes[sensor_name]:transform(id, encode(view), "events")
  if not json then
    if err and err:find("returned nil, not a table", 1, true) then return "none" end
    return nil, "lua trigger: " .. tostring(err)
  end
  local a = cjson.decode(json)
  local kind = a.type or "none"
  if kind == "none" then return "none" end
  if kind == "log" then
    return "log", { events = events, message = a.message ~= nil and tostring(a.message) or nil }
  end
  if kind == "http" then
    if type(a.url) ~= "string" then return nil, "lua trigger: an http action needs a url" end
    local body = a.body
    if type(body) == "table" then body = (encode(body):gsub("\\/", "/")) end
    return "http", { url = a.url, method = a.method or "POST", headers = a.headers, body = body,
      timeout = a.timeout, events = events }
  end
  return nil, "lua trigger: unknown action type " .. tostring(kind) .. " (http, log or none)"
end

-- Trigger parameters (Argo's ResolveParamValue / ApplyParams) --------------------------------

--- The event as JSON, as a parameter with no key or template resolves to it (data as JSON,
--- where Argo gives base64: docs/compat.md).
local function whole_event(ev)
  local v = { context = ev.context, data = ev.data }
  return has_empty_array(ev.data) and encode_marked(v) or encode(v)
end

--- Resolves one compiled parameter source (see Compiler:params) in Argo's order
--- (ResolveParamValue). Returns value [, is_raw]; nil when the parameter is skipped (its
--- dependency did not fire and it has no `value`: normal with || conditions); or nil, nil, err
--- when it cannot be resolved, which fails the firing as in Argo ("unable to resolve '<dep>'
--- parameter value"): sending the whole event in place of a mistyped key would leak it.
---   no key and no template: `value`, else the whole event as JSON
---   otherwise: the template's output, else the key's value, else `value`, else an error
function _M.resolve(events, p)
  local ev = events[p.dep]
  if not ev then return p.value end
  if not (p.data_get or p.context_get or p.data_tpl or p.context_tpl) then
    if p.value ~= nil then return p.value end
    return whole_event(ev)
  end
  local input, get, tpl, key, tpl_text = ev.context, p.context_get, p.context_tpl, p.context_key, p.context_template
  if p.data_get or p.data_tpl then
    input, get, tpl, key, tpl_text = ev.data, p.data_get, p.data_tpl, p.data_key, p.data_template
    if input == nil then -- no data at all: Argo cannot render it as JSON
      if p.value ~= nil then return p.value end
      return nil, nil, fmt("unable to resolve '%s' parameter value: the event has no data (%s)",
        tostring(p.dep), tostring(p.where))
    end
  end
  local why
  if tpl then
    local out, terr = tpl:render({ Input = input })
    if out ~= nil and out ~= "" and out ~= "<no value>" then return out end
    why = out == nil and ("template: " .. tostring(terr))
      or ("template " .. tostring(tpl_text) .. " evaluated to empty string or no value")
  end
  if get then
    local r = get(input)
    if r ~= nil then
      if p.raw and type(r) ~= "string" then return r, true end
      return _M.res_string(r)
    end
    local w = ("key %s does not exist in the event %s"):format(tostring(key), (p.data_get or p.data_tpl) and "data" or "context")
    why = why and (why .. "; " .. w) or w
  end
  if p.value ~= nil then return p.value end
  return nil, nil, fmt("unable to resolve '%s' parameter value: %s (%s)", tostring(p.dep), why or "no value", tostring(p.where))
end

--- Applies compiled parameters to target (a table) and returns it. A parameter whose
--- dependency did not fire and that has no `value` is skipped, as in Argo; one that cannot be
--- resolved raises its error (the action is built under pcall: the firing fails).
function _M.apply_params(target, params, events)
  for i = 1, #params do
    local p = params[i]
    local v, _, err = _M.resolve(events, p)
    if err then error(err, 0) end
    if v ~= nil and p.dest then target = p.dest(target, v, p.operation) or target end
  end
  return target
end

--- Builds an HTTP (or other) payload from compiled parameters, starting from {} as Argo does;
--- a parameter without `dest` makes its value the whole body. Returns the body text or nil, err.
function _M.build_payload(params, events)
  local doc = {}
  local whole
  local marked = false -- a raw value may hold an empty array: the slower encoder keeps it []
  for i = 1, #params do
    local p = params[i]
    local v, raw, err = _M.resolve(events, p)
    if err then return nil, err end
    if v ~= nil then
      if raw and type(v) == "table" and not marked then marked = has_empty_array(v) end
      if p.dest then doc = p.dest(doc, v, p.operation) or doc
      else whole = v end
    end
  end
  local enc = marked and encode_marked or encode
  if whole ~= nil then return type(whole) == "string" and whole or (enc(whole):gsub("\\/", "/")) end
  return (enc(doc):gsub("\\/", "/")) -- cjson escapes "/", which JSON allows but does not need
end

--- The Kubernetes object an ArtifactLocation (`source` of a k8s / argoWorkflow trigger) holds:
--- `resource` (inline object), `inline` (YAML or JSON text), `file` ({path}), `configmap`
--- ({name, key}, read where Argo mounts it: /argo-events/config/<name>/<key>, or
--- $HERALD_CONFIG_DIR). Returns a fresh table (parameters change it) or nil, err.
function _M.load_resource(source)
  if type(source) ~= "table" then return nil, "the trigger has no source" end
  if type(source.resource) == "table" then return _M.copy(source.resource) end
  local text, err
  if type(source.inline) == "string" then
    text = source.inline
  elseif type(source.file) == "table" and source.file.path then
    text, err = core.read_file(source.file.path)
  elseif type(source.configmap) == "table" and source.configmap.name then
    local dir = os.getenv("HERALD_CONFIG_DIR") or "/argo-events/config"
    text, err = core.read_file(dir .. "/" .. source.configmap.name .. "/" .. tostring(source.configmap.key))
  else
    return nil, "source: only resource, inline, file and configmap are supported"
  end
  if not text then return nil, err end
  local docs, perr = core.yaml_load(text, "source")
  if not docs then return nil, perr end
  if type(docs[1]) ~= "table" then return nil, "source: not a Kubernetes object" end
  return docs[1]
end

--- Deep copy of a plain table (templates are copied per firing before parameters touch them).
local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end
_M.copy = copy

-- Sandboxed user scripts --------------------------------------------------------------------

--- Returns the sandbox of a sensor (created on first use: only sensors with scripts pay).
function _M.sandbox(sensor_name, limits)
  local sb = sandboxes[sensor_name]
  if not sb then
    sb = assert(core.sandbox_new(limits or {}))
    sandboxes[sensor_name] = sb
  end
  return sb
end

--- Compiles a script filter in the sensor's sandbox; returns an id or nil, err.
function _M.script(sensor_name, source, chunkname)
  local sb = _M.sandbox(sensor_name)
  return sb:compile(source, chunkname)
end

--- Runs a compiled script filter on the event's data. Returns passed, reason, raised: a script
--- that raises (or hits its CPU or memory limit) fails the dependency's whole filter, as a
--- script error always does in Argo.
function _M.run_script(sensor_name, id, event)
  if event.data == nil then return true end -- no data at all: passes without running, as in Argo
  local sb = sandboxes[sensor_name]
  local ok, res = sb:filter(id, event.data == null and "{}" or event.raw)
  if ok == nil then return false, "script filter: " .. tostring(res), true end
  return res == true, res ~= true and "script did not return true" or nil
end

return _M
