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

--- strconv.ParseFloat on gjson's String() of v: a number, or nil.
function _M.to_number(v)
  if type(v) == "number" then return v end
  if type(v) == "string" then
    if v:find("^%s") or v:find("%s$") or v:find("^0[xX]") then return nil end
    return tonumber(v)
  end
  return nil
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

--- Resolves a parameter source against the events of one firing. src is the compiled form:
--- {dep=, data_keys=, context_keys=, value=, raw=}. Returns the value, or nil, reason.
--- Argo's order: template, then key, then `value` as the default.
function _M.resolve(events, src)
  local ev = events[src.dep]
  if ev then
    if src.context_keys then
      local v = _M.path_get(ev.context, src.context_keys)
      if v ~= nil and v ~= null then return to_string(v) end
    elseif src.data_keys then
      local v = _M.path_get(ev.data, src.data_keys)
      if v ~= nil then
        if src.raw and type(v) ~= "string" then return v end
        return to_string(v)
      end
    elseif src.value == nil then
      -- no key: the whole event as JSON (with data as JSON, not base64: see docs/compat.md)
      return encode({ context = ev.context, data = ev.data })
    end
  end
  if src.value ~= nil then return src.value end
  if not ev then return nil, "dependency " .. src.dep .. " has no event in this firing" end
  return nil, "key not found and no default value"
end

--- Applies compiled parameters (array of {src=, dest_keys=, operation=}) to target.
--- Returns true, or nil, reason for the first parameter that cannot be resolved.
function _M.apply_params(target, params, events)
  for i = 1, #params do
    local p = params[i]
    local v, err = _M.resolve(events, p.src)
    if v == nil then
      -- Argo skips a parameter whose dependency did not fire; anything else fails the action.
      if events[p.src.dep] ~= nil then return nil, ("parameter %s: %s"):format(p.where, err) end
    else
      _M.set_path(target, p.dest_keys, v, p.operation)
    end
  end
  return true
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

local sandboxes = {}

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

--- Runs a compiled script filter on the event's data. Returns true/false, and a reason when
--- it did not pass. A script that raises (or hits its CPU or memory limit) raises here too:
--- the dependency's whole filter then fails, as a script error always does in Argo.
function _M.run_script(sensor_name, id, event)
  local sb = sandboxes[sensor_name]
  local ok, res = sb:filter(id, event.raw)
  if ok == nil then error("script filter: " .. tostring(res), 0) end
  return res == true, res ~= true and "script did not return true" or nil
end

return _M
