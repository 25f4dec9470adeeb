-- herald/sensor.lua: the Sensor compiler. A validated Sensor spec becomes readable Lua source
-- (`herald compile` prints it) that LuaJIT compiles once; events then run through plain
-- functions with no interpretation of the spec at event time.
--
--   spec.dependencies[i] -> filter function (data filters, script filter) per dependency
--   spec.triggers[i]     -> condition function over the dependency state, and an action
--                           builder applying parameters (template, trigger-type, payload)
--
-- Every generated piece carries a comment naming the spec path it came from. Compile errors
-- (a bad regex, a script that does not parse, a bad condition) name file:line:col and the
-- field path. This milestone covers data filters (string/number/bool on dotted paths), script
-- filters, conditions, and parameters with dataKey/contextKey/value/useRawData/operation;
-- the schema rejects the rest of Argo's filter language until it lands here.
local core = require "herald.core"
local rt = require "herald.rt"

local fmt, concat, sort = string.format, table.concat, table.sort

local _M = {}

--- A Lua literal for a plain value (sorted keys, so output is deterministic).
local function literal(v, indent)
  indent = indent or ""
  local t = type(v)
  if t == "string" then return (fmt("%q", v):gsub("\\\n", "\\n")) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "0/0" end
    return rt.number_string(v)
  end
  if t == "boolean" or t == "nil" then return tostring(v) end
  if t ~= "table" then error("cannot write a literal of type " .. t) end
  if next(v) == nil then return "{}" end
  local parts = {}
  if #v > 0 then
    for _, x in ipairs(v) do parts[#parts + 1] = literal(x, indent .. "  ") end
    return "{ " .. concat(parts, ", ") .. " }"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local key = (type(k) == "string" and k:match("^[%a_][%w_]*$")) and k or ("[" .. literal(k) .. "]")
    parts[#parts + 1] = indent .. "  " .. key .. " = " .. literal(v[k], indent .. "  ")
  end
  return "{\n" .. concat(parts, ",\n") .. ",\n" .. indent .. "}"
end
_M.literal = literal

-- Conditions ---------------------------------------------------------------------------------

--- Parses a trigger condition ("(a || b) && c-1") into Lua over the state table `s`.
--- Returns lua_expr, names_used | nil, err (with the 1-based column in the expression).
function _M.compile_condition(expr, known)
  local pos, n = 1, #expr
  local used, seen = {}, {}
  local tok, tokval, tokpos

  local function next_token()
    while pos <= n and expr:sub(pos, pos):match("%s") do pos = pos + 1 end
    tokpos = pos
    if pos > n then tok = "eof" return end
    local two = expr:sub(pos, pos + 1)
    if two == "&&" or two == "||" then tok = two pos = pos + 2 return end
    local c = expr:sub(pos, pos)
    if c == "(" or c == ")" or c == "!" then tok = c pos = pos + 1 return end
    local name = expr:match("^[%w_%-%.]+", pos)
    if name then
      tok, tokval = "name", name
      pos = pos + #name
      return
    end
    tok = "bad"
  end

  local parse_or
  local function fail(msg) error({ msg = msg, col = tokpos }, 0) end
  local function primary()
    if tok == "(" then
      next_token()
      local e = parse_or()
      if tok ~= ")" then fail("expected )") end
      next_token()
      return "(" .. e .. ")"
    elseif tok == "!" then
      next_token()
      return "not " .. primary()
    elseif tok == "name" then
      local name = tokval
      if known and not known[name] then fail("unknown dependency " .. name) end
      if not seen[name] then
        seen[name] = true
        used[#used + 1] = name
      end
      next_token()
      return fmt("s[%q] ~= nil", name)
    end
    fail(tok == "eof" and "unexpected end of expression" or "unexpected character")
  end
  local function parse_and()
    local e = primary()
    while tok == "&&" do
      next_token()
      e = e .. " and " .. primary()
    end
    return e
  end
  function parse_or()
    local e = parse_and()
    while tok == "||" do
      next_token()
      e = e .. " or " .. parse_and()
    end
    return e
  end

  local ok, res = pcall(function()
    next_token()
    local e = parse_or()
    if tok ~= "eof" then fail("unexpected " .. (tok == "name" and tokval or tok)) end
    return e
  end)
  if not ok then
    if type(res) == "table" then return nil, fmt("%s at column %d", res.msg, res.col) end
    error(res, 0)
  end
  return res, used
end

-- The compiler ----------------------------------------------------------------------------

local Compiler = {}
Compiler.__index = Compiler

function Compiler:emit(line, ...)
  self.out[#self.out + 1] = select("#", ...) > 0 and fmt(line, ...) or line
end

--- Declares a top-level constant; returns its name.
function Compiler:const(prefix, code)
  self.nconst = self.nconst + 1
  local name = fmt("%s%d", prefix, self.nconst)
  self.consts[#self.consts + 1] = fmt("local %s = %s", name, code)
  return name
end

--- Raises a compile error positioned at field `key` of table `tbl` (spec path `path`).
function Compiler:fail(path, tbl, key, msg)
  local line, col = self.locate(tbl, key)
  error({ herald_compile_error = fmt("%s:%d:%d: %s: %s", self.file, line or 0, col or 0, path, msg) }, 0)
end

local DATA_TYPES = { string = true, number = true, bool = true }

function Compiler:data_filter(dpath, f, idx)
  local path = fmt("%s.filters.data[%d]", dpath, idx - 1)
  local keys = self:const("PATH", literal(rt.split_path(f.path)))
  local typ = f.type
  if not DATA_TYPES[typ] then self:fail(path .. ".type", f, "type", "unsupported type " .. tostring(typ)) end
  local cmp = f.comparator or ""
  self:emit("    -- %s: %s (%s)%s", path, f.path, typ, cmp ~= "" and (" " .. cmp) or "")
  self:emit("    do")
  self:emit("      local v = path_get(event.data, %s)", keys)
  self:emit("      if v == nil then ok, why = false, %q", "path " .. f.path .. " does not exist")
  self:emit("      else")
  local tests = {}
  for i, val in ipairs(f.value) do
    local vpath = fmt("%s.value[%d]", path, i - 1)
    val = type(val) == "string" and val or rt.to_string(val)
    if typ == "string" then
      local m, err = rt.regex(val)
      if not m then self:fail(vpath, f.value, i, "invalid regular expression: " .. err) end
      local re = self:const("RE", fmt("assert(rt.regex(%s))", literal(val)))
      if cmp == "!=" then tests[#tests + 1] = fmt("not %s:find(s)", re)
      else tests[#tests + 1] = fmt("%s:find(s)", re) end
    elseif typ == "number" then
      local num = rt.to_number(val)
      if not num then self:fail(vpath, f.value, i, "not a number: " .. val) end
      if cmp ~= "" and not ({ [">="] = 1, [">"] = 1, ["="] = 1, ["!="] = 1, ["<"] = 1, ["<="] = 1 })[cmp] then
        self:fail(path .. ".comparator", f, "comparator", "unknown comparator " .. cmp)
      end
      local op = (cmp == "" or cmp == "=") and "==" or (cmp == "!=" and "~=" or cmp)
      tests[#tests + 1] = fmt("n %s %s", op, literal(num))
    else
      local b = rt.parse_bool(val)
      if b == nil then self:fail(vpath, f.value, i, "not a boolean: " .. val) end
      tests[#tests + 1] = fmt("b == %s", tostring(b))
    end
  end
  if typ == "string" then
    self:emit("        local s = to_string(v)")
  elseif typ == "number" then
    self:emit("        local n = to_number(to_string(v))")
    self:emit("        if n == nil then ok, why = false, %q else", "value at " .. f.path .. " is not a number")
  else
    self:emit("        local b = to_bool(v)")
  end
  self:emit("        ok = %s", concat(tests, " or "))
  self:emit("        if not ok then why = %q end", fmt("%s: value did not match", f.path))
  if typ == "number" then self:emit("        end") end
  self:emit("      end")
  self:emit("      results[#results + 1] = ok")
  self:emit("    end")
end

function Compiler:dependency(dep, i)
  local dpath = fmt("spec.dependencies[%d]", i - 1)
  self:emit("")
  self:emit("-- %s %q: events from %s/%s", dpath, dep.name, dep.eventSourceName, dep.eventName)
  self:emit("sensor.dependencies[%d] = {", i)
  self:emit("  name = %q, eventSourceName = %q, eventName = %q,", dep.name, dep.eventSourceName, dep.eventName)
  local filters = dep.filters
  if not filters or (not filters.data and not filters.script) then
    self:emit("  filter = nil, -- no filters: every event passes")
    self:emit("}")
    return
  end
  local op_all = (dep.filtersLogicalOperator or "and") == "or" and "or" or "and"
  self:emit("  -- filters combined with %q (%s.filtersLogicalOperator)", op_all, dpath)
  self:emit("  filter = function(event)")
  self:emit("    local kinds, why = {}, nil")
  if filters.data then
    local dop = (filters.dataLogicalOperator or "and") == "or" and "or" or "and"
    self:emit("    -- %s.filters.data, combined with %q", dpath, dop)
    self:emit("    local results, ok = {}, false")
    for j, f in ipairs(filters.data) do self:data_filter(dpath, f, j) end
    self:emit("    kinds[#kinds + 1] = combine_%s(results)", dop)
  end
  if filters.script then
    local spath = dpath .. ".filters.script"
    local id, err = rt.script(self.name, filters.script, "=" .. spath)
    if not id then self:fail(spath, filters, "script", "script does not compile: " .. tostring(err)) end
    local sid = self:const("SCRIPT", fmt("assert(rt.script(%s, %s, %s))", literal(self.name), literal(filters.script), literal("=" .. spath)))
    self:emit("    -- %s (sandboxed Lua; `event` is the event data)", spath)
    self:emit("    do")
    self:emit("      local ok, reason = run_script(%q, %s, event)", self.name, sid)
    self:emit("      if not ok then why = reason end")
    self:emit("      kinds[#kinds + 1] = ok")
    self:emit("    end")
  end
  self:emit("    local pass = combine_%s(kinds)", op_all)
  self:emit("    return pass, not pass and why or nil")
  self:emit("  end,")
  self:emit("}")
end

--- Compiles a parameter list into a constant (array of {src, dest_keys, operation, where}).
function Compiler:params(list, path)
  if not list or #list == 0 then return nil end
  local out = {}
  for i, p in ipairs(list) do
    local where = fmt("%s[%d]", path, i - 1)
    local src = p.src or {}
    if src.dataTemplate or src.contextTemplate then
      self:fail(where .. ".src", p, "src", "dataTemplate/contextTemplate are not supported by Herald yet")
    end
    if not self.dep_names[src.dependencyName] then
      self:fail(where .. ".src.dependencyName", src, "dependencyName", "unknown dependency " .. tostring(src.dependencyName))
    end
    out[i] = {
      where = where,
      src = {
        dep = src.dependencyName,
        data_keys = src.dataKey and rt.split_path(src.dataKey) or nil,
        context_keys = src.contextKey and rt.split_path(src.contextKey) or nil,
        value = src.value,
        raw = src.useRawData or nil,
      },
      dest_keys = rt.split_path(p.dest or ""),
      operation = p.operation or "overwrite",
    }
  end
  return self:const("PARAMS", literal(out))
end

local TRIGGER_TYPES = { "log", "http" }

function Compiler:trigger(trig, i)
  local tpath = fmt("spec.triggers[%d]", i - 1)
  local tmpl = trig.template
  local ttype
  for _, t in ipairs(TRIGGER_TYPES) do
    if tmpl[t] then ttype = t end
  end
  if not ttype then self:fail(tpath .. ".template", trig, "template", "no supported trigger type") end
  local deps
  local cond_lua
  if tmpl.conditions and tmpl.conditions:match("%S") then
    local expr, used = _M.compile_condition(tmpl.conditions, self.dep_names)
    if not expr then self:fail(tpath .. ".template.conditions", tmpl, "conditions", used) end
    cond_lua, deps = expr, used
  else
    deps = {}
    local parts = {}
    for _, d in ipairs(self.spec.dependencies) do
      deps[#deps + 1] = d.name
      parts[#parts + 1] = fmt("s[%q] ~= nil", d.name)
    end
    cond_lua = concat(parts, " and ")
  end
  self:emit("")
  self:emit("-- %s %q (%s)", tpath, tmpl.name, ttype)
  self:emit("sensor.triggers[%d] = {", i)
  self:emit("  name = %q, type = %q,", tmpl.name, ttype)
  self:emit("  dependencies = %s,", literal(deps))
  self:emit("  -- %s.template.conditions: %s", tpath, tmpl.conditions or "(all dependencies)")
  self:emit("  condition = function(s) return %s end,", cond_lua)
  self:emit("  config = %s,", literal(tmpl[ttype], "  "))
  local tparams = self:params(trig.parameters, tpath .. ".parameters")
  local type_params = self:params(tmpl[ttype].parameters, fmt("%s.template.%s.parameters", tpath, ttype))
  local payload = ttype == "http" and self:params(tmpl.http.payload, tpath .. ".template.http.payload") or nil
  self:emit("  -- builds what the %s executor does with this firing's events", ttype)
  self:emit("  action = function(events)")
  if tparams then
    local tconst = self:const("TEMPLATE", literal(tmpl))
    self:emit("    -- %s.parameters apply to the whole template", tpath)
    self:emit("    local template = copy(%s)", tconst)
    self:emit("    local ok, err = apply_params(template, %s, events)", tparams)
    self:emit("    if not ok then return nil, err end")
    self:emit("    local spec = template.%s", ttype)
  else
    self:emit("    local spec = copy(sensor.triggers[%d].config)", i)
  end
  if type_params then
    self:emit("    local ok2, err2 = apply_params(spec, %s, events)", type_params)
    self:emit("    if not ok2 then return nil, err2 end")
  end
  if ttype == "log" then
    self:emit("    return { events = events, intervalSeconds = spec.intervalSeconds }")
  elseif ttype == "http" then
    self:emit("    local body")
    if payload then
      self:emit("    -- %s.template.http.payload builds the request body", tpath)
      self:emit("    local doc = {}")
      self:emit("    local ok3, err3 = apply_params(doc, %s, events)", payload)
      self:emit("    if not ok3 then return nil, err3 end")
      self:emit("    body = doc[\"\"] ~= nil and (type(doc[\"\"]) == \"string\" and doc[\"\"] or encode(doc[\"\"])) or encode(doc)")
    end
    self:emit("    return { url = spec.url, method = spec.method or \"POST\", headers = spec.headers,")
    self:emit("             body = body, timeout = spec.timeout }")
  end
  self:emit("  end,")
  self:emit("}")
end

local HEADER = [[
-- Sensor %q, compiled by Herald from %s.
-- Generated code: edit the Sensor spec, not this.
local rt = ...
local path_get, to_string, to_number, to_bool = rt.path_get, rt.to_string, rt.to_number, rt.to_bool
local apply_params, copy, run_script = rt.apply_params, rt.copy, rt.run_script
local encode = require("cjson").encode

local function combine_and(r)
  for i = 1, #r do if not r[i] then return false end end
  return true
end
local function combine_or(r)
  for i = 1, #r do if r[i] then return true end end
  return false
end
]]

--- Compiles a loaded Sensor object ({name=, file=, doc=, ...}). opts.locate(tbl, key) -> line, col.
--- Returns {name=, source=} or nil, "file:line:col: path: message".
function _M.compile(obj, opts)
  opts = opts or {}
  local spec = obj.doc.spec
  local c = setmetatable({
    out = {}, consts = {}, nconst = 0,
    file = obj.file or "?", name = obj.name, spec = spec,
    locate = opts.locate or function() return 0, 0 end,
    dep_names = {},
  }, Compiler)
  for _, d in ipairs(spec.dependencies) do c.dep_names[d.name] = true end
  local ok, err = pcall(function()
    c:emit("local sensor = { name = %q, dependencies = {}, triggers = {} }", obj.name)
    for i, dep in ipairs(spec.dependencies) do c:dependency(dep, i) end
    for i, trig in ipairs(spec.triggers) do c:trigger(trig, i) end
    c:emit("")
    c:emit("return sensor")
  end)
  if not ok then
    if type(err) == "table" and err.herald_compile_error then return nil, err.herald_compile_error end
    error(err, 0)
  end
  local source = fmt(HEADER, obj.name, obj.file or "?")
  if #c.consts > 0 then source = source .. "\n" .. concat(c.consts, "\n") .. "\n" end
  source = source .. "\n" .. concat(c.out, "\n") .. "\n"
  return { name = obj.name, source = source }
end

--- Compiles and loads a Sensor: returns the sensor table the runtime drives, or nil, err.
function _M.load(obj, opts)
  local compiled, err = _M.compile(obj, opts)
  if not compiled then return nil, err end
  local fn, lerr = loadstring(compiled.source, "=sensor:" .. obj.name)
  if not fn then return nil, "internal error compiling sensor " .. obj.name .. ": " .. lerr end
  return fn(rt), nil, compiled
end

return _M
