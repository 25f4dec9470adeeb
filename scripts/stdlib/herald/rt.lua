-- herald/rt.lua: the runtime that compiled sensors call: reading and writing paths in event
-- data, value conversions with Go/gjson semantics, regular expressions (PCRE2), trigger
-- parameters, and user scripts in the sensor's sandbox.
--
-- Compiled sensor code (herald/sensor.lua generates it) receives this module as `rt` and keeps
-- the functions it needs in locals. Everything here runs per event: no allocation that can be
-- avoided, no string building on the success path.
local cjson = require "cjson"
local core = require "herald.core"
local json = require "herald.json"
local gjson = require "herald.gjson"
local sjson = require "herald.sjson"
local gotemplate = require "herald.gotemplate"
local govaluate = require "herald.govaluate"

local type, tostring, tonumber, pairs, ipairs = type, tostring, tonumber, pairs, ipairs
local fmt = string.format
local null = cjson.null
local encode = json.encode

local _M = {}

_M.encode = encode -- event and payload JSON (herald.json: Go's numbers, [] kept)

_M.null = null

local sandboxes = {} -- sensor name -> its sandbox (created with its first script)

--- gjson Result.String(): strings as is, numbers as Go's FormatFloat 'f', booleans as text,
--- null as "", objects and arrays as JSON.
_M.to_string = gjson.string
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

-- Empty JSON arrays: lua-cjson 2.1.0 decodes [] and {} alike; herald.json decodes empty
-- arrays marked and encodes them back as [] (see there).
_M.decode = json.decode

-- Trigger parameters ------------------------------------------------------------------------

-- Paths, templates and expressions: thin adapters over the language modules, so generated
-- sensor code does not depend on their internals. -------------------------------------------

--- Compiles a gjson path. Returns get(value) -> the value at the path (gjson's "light"
--- result: nil when it does not exist, cjson.null for JSON null), or nil, err.
_M.path = gjson.compile

--- gjson Result.String() of a path's value.
_M.res_string = gjson.string

--- gjson Result.Bool() of a path's value.
_M.res_bool = gjson.bool

--- gjson Result.Value(): the Lua value, with JSON null as nil.
function _M.res_value(v)
  if v == null then return nil end
  return v
end

--- Compiles a Go text/template; returns t or nil, err.
function _M.template(text)
  return gotemplate.compile(text)
end

--- Renders a compiled template with data; returns the text or nil, err.
function _M.render(t, data)
  return t:render(data)
end

--- Compiles a govaluate expression; returns fn(params) -> value | nil, err.
function _M.govaluate(expr)
  local c, err = govaluate.compile(expr)
  if not c then return nil, err end
  return c.fn
end

--- Compiles an sjson destination path; returns set(doc, value, operation) or nil, err.
function _M.setter(path)
  local set, err = sjson.compile(path)
  if not set then return nil, err end
  local get = gjson.compile(path)
  return function(doc, value, operation)
    if operation == "append" or operation == "prepend" then
      local cur = get(doc)
      if cur ~= nil then
        local old = to_string(cur)
        value = operation == "append" and (old .. to_string(value)) or (to_string(value) .. old)
      end
    end
    return set(doc, value)
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
  if not json then return nil, "script transform: " .. _M.lua_hint(tostring(err)) end
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
  local a = _M.decode(json)
  local kind = a.type or "none"
  if kind == "none" then return "none" end
  if kind == "log" then
    return "log", { events = events, message = a.message ~= nil and tostring(a.message) or nil }
  end
  if kind == "http" then
    if type(a.url) ~= "string" then return nil, "lua trigger: an http action needs a url" end
    local body = a.body
    if type(body) == "table" then body = encode(body) end
    -- the http trigger's own action (triggers/http/http.lua), as a compiled http trigger builds it
    return "http", require("herald.triggers.http").action(
      { url = a.url, method = a.method, headers = a.headers, timeout = a.timeout }, body, events)
  end
  return nil, "lua trigger: unknown action type " .. tostring(kind) .. " (http, log or none)"
end

-- Trigger parameters (Argo's ResolveParamValue / ApplyParams) --------------------------------

--- The event as JSON, as a parameter with no key or template resolves to it (data as JSON,
--- where Argo gives base64: docs/compat.md).
local function whole_event(ev)
  return encode({ context = ev.context, data = ev.data })
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
  for i = 1, #params do
    local p = params[i]
    local v, _, err = _M.resolve(events, p)
    if err then return nil, err end
    if v ~= nil then
      if p.dest then doc = p.dest(doc, v, p.operation) or doc
      else whole = v end
    end
  end
  if whole ~= nil then return type(whole) == "string" and whole or encode(whole) end
  return encode(doc)
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
--- A value for an explanation ("got 3", "got \"300\"", "got {\"a\":1}"): numbers as Go prints
--- them, strings quoted, tables as JSON, cut at 80 characters.
function _M.show_value(v)
  local t = type(v)
  local s
  if v == nil then s = "nothing"
  elseif v == null then s = "null"
  elseif t == "number" then s = _M.to_string(v)
  elseif t == "string" then s = encode(v)
  elseif t == "table" then s = encode(v)
  else s = tostring(v) end
  if #s > 80 then s = s:sub(1, 77) .. "..." end
  return s
end

--- " (a = 1, b = \"x\")": the named values an expression saw, for an explanation.
function _M.show_params(params, names)
  if type(params) ~= "table" or #names == 0 then return "" end
  local parts = {}
  for _, n in ipairs(names) do parts[#parts + 1] = n .. " = " .. _M.show_value(params[n]) end
  return " (" .. table.concat(parts, ", ") .. ")"
end

local print_sink

function _M.sandbox(sensor_name, limits)
  local sb = sandboxes[sensor_name]
  if not sb then
    sb = assert(core.sandbox_new(limits or {}))
    sandboxes[sensor_name] = sb
    if print_sink then sb:on_print(function(line) print_sink(sensor_name, line) end) end
  end
  return sb
end

--- Where user Lua's print() goes: fn(sensor_name, line) for every sandbox, now and later
--- (herald test and the REPL show it); nil: the engine's debug log.
function _M.on_print(fn)
  print_sink = fn
  for name, sb in pairs(sandboxes) do
    sb:on_print(fn and function(line) fn(name, line) end or nil)
  end
end

--- Compiles a script filter in the sensor's sandbox; returns an id or nil, err.
local HINT_NAMES = { "upper", "lower", "len", "sub", "find", "match", "gmatch", "gsub", "format",
  "rep", "reverse", "byte", "char", "insert", "remove", "concat", "sort", "unpack", "floor", "ceil",
  "max", "min", "abs", "sqrt", "huge", "tostring", "tonumber", "pairs", "ipairs", "type", "pcall",
  "error", "select", "next", "string", "table", "math", "event", "events" }

--- A Lua error message with a hint for the mistakes people make coming from other languages
--- (`!=`, `&&`, `||`, `uper` for `upper`); source is the script's text.
function _M.lua_hint(err, source)
  source = source or ""
  local hint
  if source:find("!=", 1, true) and (err:find("near '!'", 1, true) or err:find("'='", 1, true) or err:find("unexpected symbol", 1, true)) then
    hint = "Lua writes \"not equal\" as ~=, not !="
  elseif (source:find("&&", 1, true) or source:find("||", 1, true)) then
    hint = "Lua writes `and` / `or`, not && / ||"
  else
    local name = err:match("attempt to call field '([%w_]+)'") or err:match("attempt to call method '([%w_]+)'")
      or err:match("attempt to call global '([%w_]+)'") or err:match("attempt to index global '([%w_]+)'")
    if name then
      local ok, loader = pcall(require, "herald.loader")
      local s = ok and loader.suggest(name, HINT_NAMES)
      if s and s ~= name then hint = ("did you mean %s?"):format(s) end
    end
  end
  return hint and (err .. " (hint: " .. hint .. ")") or err
end

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
  local ok, res, returned = sb:filter(id, event.data == null and "{}" or event.raw)
  if ok == nil then return false, "script filter: " .. _M.lua_hint(tostring(res)), true end
  if res == true then return true end
  if returned == "nil" then
    return false, "script returned nil (a script filter passes only when it returns true; is a `return` missing?)"
  end
  return false, "script returned " .. tostring(returned) .. ", not true"
end

return _M
