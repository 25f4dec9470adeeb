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

local luagen = require "herald.luagen"
local literal = luagen.value
_M.literal = literal

-- Conditions ---------------------------------------------------------------------------------

--- Argo's name matching in conditions: every "-" becomes "_", in the condition and in the
--- dependency names, so `dep-1a` names the dependency `dep_1a`; of two dependencies that meet
--- after the replacement the one listed later wins (Argo fills a map in spec order).
--- Returns {normalized name = dependency name}.
function _M.condition_names(deps)
  local map = {}
  for _, d in ipairs(deps) do map[(d.name:gsub("%-", "_"))] = d.name end
  return map
end

--- Parses a trigger condition ("(a || b) && c-1") into Lua over the state table `s`. `known`
--- maps normalized names to dependency names (condition_names); without it names are taken as
--- they are. Returns lua_expr, names_used | nil, err (with the 1-based column in the expression).
function _M.compile_condition(expr, known, quote)
  quote = quote or luagen.string
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
      if known then
        local real = known[(name:gsub("%-", "_"))]
        if not real then fail("unknown dependency " .. name) end
        name = real
      end
      if not seen[name] then
        seen[name] = true
        used[#used + 1] = name
      end
      next_token()
      return fmt("s[%s] ~= nil", quote(name))
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

--- Emits a comment line only for readers (herald compile, herald test and the REPL): the
--- engine loads thousands of sensors and skips them (less to generate and to parse). Every
--- comment goes through luagen.comment, the one place that makes spec text safe in a comment
--- (a newline in a name would otherwise end it and the rest would run as code); spec strings
--- are passed as arguments, quoted with show().
function Compiler:comment(line, ...)
  if self.readable then
    self.out[#self.out + 1] = luagen.comment(select("#", ...) > 0 and fmt(line, ...) or line)
  end
end

--- Spec text shown in a comment: quoted, escapes visible (see Compiler:comment).
local function show(s)
  return luagen.string(tostring(s))
end

--- Emits a line only when compiling for explanation (herald test --explain, the REPL): the
--- engine's code stays free of the bookkeeping.
function Compiler:emit_trace(line, ...)
  if self.explain then self:emit(line, ...) end
end

--- A literal in the generated code: its Lua text, or, compiling for the engine, a slot of the
--- sensor's constant table K (strings, numbers and tables; booleans and nil stay inline). Then
--- sensors that differ only in their literals generate the same code, loaded once (see _M.load).
function Compiler:lit(v, indent)
  local K = self.K
  local t = type(v)
  if not K or t == "boolean" or t == "nil" then return literal(v, indent) end
  local n = #K + 1
  K[n] = rt.copy(v) -- a fresh plain value, as its literal would build
  return "K[" .. n .. "]"
end

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
--- A script's text padded with newlines so its line numbers are the spec file's, and the
--- chunk name that makes Lua's error positions read "file.yaml:LINE:" (the real file line of
--- the error, not the script's own).
function Compiler:script_source(tbl, key, text)
  local line = self.locate(tbl, key)
  -- (bytecode stays as given, for the sandbox to refuse by its first byte)
  if not line or line < 1 or text:byte(1) == 27 then return text, nil end
  -- a block scalar (`script: |`) starts on the next line; a plain one on the key's
  local first = text:find("\n", 1, true) and line + 1 or line
  return string.rep("\n", first - 1) .. text, "=" .. self.file
end

function Compiler:fail(path, tbl, key, msg)
  local line, col = self.locate(tbl, key)
  error({ herald_compile_error = fmt("%s:%d:%d: %s: %s", self.file, line or 0, col or 0, path, msg) }, 0)
end

local DATA_TYPES = { string = true, number = true, bool = true }
local NUMBER_COMPARATORS = { [">="] = ">=", [">"] = ">", ["="] = "==", [""] = "==", ["!="] = "~=", ["<"] = "<", ["<="] = "<=" }

--- A constant holding a compiled gjson path; fails at `where` when the path does not compile.
function Compiler:path_const(path, where, tbl, key)
  local get, err = rt.path(path)
  if not get then self:fail(where, tbl, key, "invalid path: " .. tostring(err)) end
  return self:const("PATH", fmt("assert(rt.path(%s))", self:lit(path)))
end

--- A constant holding a compiled Go template.
function Compiler:template_const(text, where, tbl, key)
  local t, err = rt.template(text)
  if not t then self:fail(where, tbl, key, "invalid template: " .. tostring(err)) end
  return self:const("TEMPLATE", fmt("assert(rt.template(%s))", self:lit(text)))
end

--- For a plain dotted path (keys only: no digits-only segment, wildcard, query, modifier or
--- escape), the keys; such paths compile to direct table indexing, the fastest code in both
--- the interpreter and the JIT. Other paths go through herald.gjson.
local function plain_keys(path)
  if path == "" or path:find("[^%w_%-%.]") or path:find("%.%.") or path:sub(1, 1) == "." or path:sub(-1) == "." then
    return nil
  end
  local keys = {}
  for k in path:gmatch("[^.]+") do
    if k:match("^%d+$") then return nil end
    keys[#keys + 1] = k
  end
  return keys
end

--- Emits code that sets local `r` to the value at path in `root` (nil when missing).
function Compiler:emit_get(indent, root, path, where, tbl, key)
  local keys = plain_keys(path)
  if not keys then
    local getter = self:path_const(path, where, tbl, key)
    self:emit("%slocal r = %s(%s)", indent, getter, root)
    return
  end
  self:emit("%slocal r = %s", indent, root)
  for _, k in ipairs(keys) do
    local idx = luagen.is_name(k) and ("." .. k) or ("[" .. self:lit(k) .. "]")
    self:emit("%sif type(r) == \"table\" then r = r%s else r = nil end", indent, idx)
  end
end

function Compiler:data_filter(dpath, f, idx, var)
  local path = fmt("%s.filters.data[%d]", dpath, idx - 1)
  local typ = f.type
  if not DATA_TYPES[typ] then self:fail(path .. ".type", f, "type", "unsupported type " .. tostring(typ)) end
  local cmp = f.comparator or ""
  self:comment("    -- %s: %s is a %s%s", path, show(f.path), typ, cmp ~= "" and (" " .. show(cmp)) or "")
  self:emit("    local %s, %s_err = false, nil", var, var)
  self:emit_trace("    local %s_got -- the value compared, for --explain", var)
  self:emit("    do")
  self:emit_get("      ", "event.data", f.path, path .. ".path", f, "path")
  self:emit_trace("      %s_got = r", var)
  self:emit("      if r == nil then")
  self:emit("        %s_err = %s", var, self:lit("path " .. f.path .. " does not exist"))
  self:emit("      else")
  if typ == "number" and not f.template then
    self:emit("        local s = type(r) == \"number\" and r or res_string(r) -- ParseFloat(String()) without the round trip")
  else
    self:emit("        local s = res_string(r)")
  end
  if f.template then
    local tpl = self:template_const(f.template, path .. ".template", f, "template")
    self:comment("        -- %s.template: Go template with .Input = the value as a string", path)
    self:emit("        local out = render(%s, { Input = s })", tpl)
    self:emit("        if out == nil or out == \"\" or out == \"<no value>\" then")
    self:emit("          %s_err = %s", var, self:lit("template evaluated to empty string or no value: " .. f.template))
    self:emit("          s = nil")
    self:emit("        else")
    self:emit("          s = out")
    self:emit("        end")
  end
  self:emit("        if s ~= nil then")
  local tests = {}
  for i, val in ipairs(f.value) do
    local vpath = fmt("%s.value[%d]", path, i - 1)
    val = type(val) == "string" and val or rt.to_string(val)
    if typ == "string" then
      local m, err = rt.regex(val)
      if not m then self:fail(vpath, f.value, i, "invalid regular expression: " .. err) end
      local re = self:const("RE", fmt("assert(rt.regex(%s))", self:lit(val)))
      tests[#tests + 1] = cmp == "!=" and fmt("not %s:find(s)", re) or fmt("%s:find(s)", re)
    elseif typ == "number" then
      local num = rt.to_number(val)
      if not num then self:fail(vpath, f.value, i, "not a number: " .. val) end
      local op = NUMBER_COMPARATORS[cmp]
      if not op then self:fail(path .. ".comparator", f, "comparator", "unknown comparator " .. cmp) end
      tests[#tests + 1] = fmt("n %s %s", op, self:lit(num))
    else
      local b = rt.parse_bool(val)
      if b == nil then self:fail(vpath, f.value, i, "not a boolean: " .. val) end
      tests[#tests + 1] = fmt("b == %s", tostring(b))
    end
  end
  if typ == "string" then
    self:emit("          %s = %s", var, concat(tests, " or "))
  elseif typ == "number" then
    self:emit("          local n = to_number(s)")
    self:emit("          if n == nil then")
    self:emit("            %s_err = %s", var, self:lit("value at " .. f.path .. " is not a number"))
    self:emit("          else")
    self:emit("            %s = %s", var, concat(tests, " or "))
    self:emit("          end")
  else
    self:emit("          local b = %s", f.template and "to_bool(s)" or "res_bool(r)")
    self:emit("          %s = %s", var, concat(tests, " or "))
  end
  self:emit("        end")
  self:emit("      end")
  self:emit("    end")
  -- what it got and what it wanted: "body.total: got 3, want > 100"
  local wants = {}
  for _, val in ipairs(f.value) do
    wants[#wants + 1] = type(val) == "string" and val or rt.to_string(val)
  end
  local want = (typ == "number" and (cmp ~= "" and cmp or "=") .. " " or (cmp == "!=" and "not " or ""))
    .. concat(wants, typ == "number" and (" or " .. (cmp ~= "" and cmp or "=") .. " ") or " or ")
  if typ == "string" then want = (cmp == "!=" and "not matching " or "matching ") .. concat(wants, " or ") end
  self:emit_trace("    if trace then trace[#trace + 1] = { kind = \"data\", index = %d, passed = %s, reason = %s and \"matched\" or (%s_err or (%s .. rt.show_value(%s_got) .. %s)) } end",
    idx - 1, var, var, var, self:lit(f.path .. ": got "), var, self:lit(", want " .. want))
end

function Compiler:expr_filter(dpath, e, idx, var)
  local path = fmt("%s.filters.exprs[%d]", dpath, idx - 1)
  local fn, err, col = rt.govaluate(e.expr)
  if not fn then self:fail(path .. ".expr", e, "expr", "invalid expression: " .. tostring(err)) end
  local efn = self:const("EXPR", fmt("assert(rt.govaluate(%s))", self:lit(e.expr)))
  self:comment("    -- %s: %s", path, show(e.expr))
  self:emit("    local %s, %s_err = false, nil", var, var)
  self:emit_trace("    local %s_params -- the values the expression saw, for --explain", var)
  self:emit("    do")
  self:emit("      local params, missing = {}, nil")
  self:emit_trace("      %s_params = params", var)
  for j, field in ipairs(e.fields or {}) do
    self:emit("      do")
    self:emit_get("        ", "event.data", field.path, fmt("%s.fields[%d].path", path, j - 1), field, "path")
    self:emit("        if r == nil then missing = %s else params[%s] = r end -- JSON null stays cjson.null", self:lit(field.path), self:lit(field.name))
    self:emit("      end")
  end
  self:emit("      if missing then")
  self:emit("        %s_err = \"path \" .. missing .. \" does not exist\"", var)
  self:emit("      else")
  self:emit("        local v, e = %s(params)", efn)
  self:emit("        if e then %s_err = %s .. e end", var, self:lit(path .. ": "))
  self:emit("        %s = v == true", var)
  self:emit("      end")
  self:emit("    end")
  -- "expression is not true: total > 100 (total = 3)": the values it saw
  local names = {}
  for _, field in ipairs(e.fields or {}) do names[#names + 1] = field.name end
  self:emit_trace("    if trace then trace[#trace + 1] = { kind = \"exprs\", index = %d, passed = %s, reason = %s and \"true\" or (%s_err or (%s .. rt.show_params(%s_params, %s))) } end",
    idx - 1, var, var, var, self:lit("expression is not true: " .. e.expr), var, self:lit(names))
end

local CONTEXT_FIELDS = { "type", "subject", "source", "datacontenttype" }

--- Parses "HH:MM:SS" into seconds of the day, or nil.
local function clock_seconds(s)
  local h, m, sec = tostring(s):match("^(%d%d?):(%d%d):(%d%d)$")
  h, m, sec = tonumber(h), tonumber(m), tonumber(sec)
  if not h or h > 23 or m > 59 or sec > 59 then return nil end
  return h * 3600 + m * 60 + sec
end

--- Emits one filter group (exprs or data) as Argo's filterExpr / filterData judge it, setting
--- locals <kind>_ok and <kind>_err. With "and" the first filter that does not pass decides: an
--- error makes the group an error, a plain no-match makes it false and later filters are not
--- looked at. With "or" the first match makes it true (earlier errors are forgotten); if none
--- matched, the group is an error when any filter failed with one ("a / b"), else false. An
--- event with no data at all passes the group, as Argo's filters return true on a nil payload
--- ("data": null is data, and its paths do not exist). Compiling for explanation, every filter
--- is still evaluated and traced, but only the ones Argo would look at decide.
function Compiler:filter_group(kind, prefix, op, items)
  local ok, errv, done = kind .. "_ok", kind .. "_err", kind .. "_done"
  self:emit("    local %s, %s = %s, nil", ok, errv, op == "and" and "true" or "false")
  self:emit("    local %s = false", done)
  self:emit("    if event.data == nil then")
  self:comment("      -- no data at all: the group passes, as in Argo")
  self:emit("      %s, %s = true, true", ok, done)
  self:emit_trace("      if trace then trace[#trace + 1] = { kind = %s, index = 0, passed = true, reason = \"the event has no data: passes, as in Argo\" } end", self:lit(kind))
  self:emit("    end")
  if op == "or" then self:emit("    local %s_errs", kind) end
  for j, item in ipairs(items) do
    local var = prefix .. j
    -- the engine skips what Argo does not look at; an explanation evaluates it to trace it
    self:emit(self.explain and "    if event.data ~= nil then" or "    if not %s then", done)
    item(var)
    self:emit("      if not %s then", done)
    if op == "and" then
      self:emit("        if %s_err then %s, %s, %s = false, %s_err, true", var, ok, errv, done, var)
      self:emit("        elseif not %s then %s, %s = false, true end", var, ok, done)
    else
      self:emit("        if %s then %s, %s = true, true", var, ok, done)
      self:emit("        elseif %s_err then %s_errs = %s_errs and (%s_errs .. \" / \" .. %s_err) or %s_err end", var, kind, kind, kind, var, var)
    end
    self:emit("      end")
    self:emit("    end")
  end
  if op == "or" then self:emit("    if not %s then %s = %s_errs end", ok, errv, kind) end
end

function Compiler:dependency(dep, i)
  local dpath = fmt("spec.dependencies[%d]", i - 1)
  self:emit("")
  self:comment("-- %s %s: events from %s/%s", dpath, show(dep.name), show(dep.eventSourceName), show(dep.eventName))
  self:emit("sensor.dependencies[%d] = {", i)
  self:emit("  name = %s, eventSourceName = %s, eventName = %s,", self:lit(dep.name), self:lit(dep.eventSourceName),
    self:lit(dep.eventName))
  local tr = dep.transform
  if tr and tr.jq then
    local ok, err = rt.jq(tr.jq)
    if not ok then self:fail(dpath .. ".transform.jq", tr, "jq", "invalid jq program: " .. tostring(err)) end
    local jq = self:const("JQ", fmt("assert(rt.jq(%s))", self:lit(tr.jq)))
    self:comment("  -- %s.transform.jq: the first output (an object) replaces the event data", dpath)
    self:emit("  transform = function(event) return transform_jq(%s, event) end,", jq)
  elseif tr and tr.script then
    local where = dpath .. ".transform.script"
    local text, chunk = self:script_source(tr, "script", tr.script)
    chunk = chunk or ("=" .. where)
    local id, err = rt.script(self.name, text, chunk)
    if not id then self:fail(where, tr, "script", "script does not compile: " .. rt.lua_hint(tostring(err), tr.script)) end
    local sid = self:const("SCRIPT", fmt("assert(rt.script(%s, %s, %s))", self:lit(self.name), self:lit(text), self:lit(chunk)))
    self:comment("  -- %s: sandboxed Lua; `event` is the data, the returned table replaces it", where)
    self:emit("  transform = function(event) return transform_script(%s, %s, event) end,", self:lit(self.name), sid)
  end
  local filters = dep.filters
  local kinds = {}
  if filters then
    if filters.exprs and #filters.exprs > 0 then kinds[#kinds + 1] = "exprs" end
    if filters.data and #filters.data > 0 then kinds[#kinds + 1] = "data" end
    if filters.context then kinds[#kinds + 1] = "context" end
    if filters.time then kinds[#kinds + 1] = "time" end
    if filters.script then kinds[#kinds + 1] = "script" end
  end
  if #kinds == 0 then
    self:emit("  filter = nil, -- no filters: every event passes")
    self:emit("}")
    return
  end
  local op_all = (dep.filtersLogicalOperator or "and") == "or" and "or" or "and"
  self:comment("  -- filters in Argo's order (exprs, data, context, time, script), combined with %q", op_all)
  self:comment("  -- returns pass, reason, is_error")
  self:emit_trace("  -- `trace` (herald test --explain) collects one verdict per filter")
  self:emit("  filter = function(event, trace)")
  local vars = {}
  if filters.exprs and #filters.exprs > 0 then
    local eop = (filters.exprLogicalOperator or "and") == "or" and "or" or "and"
    self:comment("    -- %s.filters.exprs, combined with %q", dpath, eop)
    local items = {}
    for j, e in ipairs(filters.exprs) do
      if e.fields and #e.fields > 0 then
        items[#items + 1] = function(var) self:expr_filter(dpath, e, j, var) end
      else
        self:comment("    -- %s.filters.exprs[%d] has no fields: skipped, as in Argo", dpath, j - 1)
      end
    end
    self:filter_group("exprs", "e", eop, items)
    vars[#vars + 1] = "exprs"
  end
  if filters.data and #filters.data > 0 then
    local dop = (filters.dataLogicalOperator or "and") == "or" and "or" or "and"
    self:comment("    -- %s.filters.data, combined with %q", dpath, dop)
    local items = {}
    for j, f in ipairs(filters.data) do
      items[#items + 1] = function(var) self:data_filter(dpath, f, j, var) end
    end
    self:filter_group("data", "d", dop, items)
    vars[#vars + 1] = "data"
  end
  if filters.context then
    local tests, said = {}, {}
    for _, k in ipairs(CONTEXT_FIELDS) do
      if filters.context[k] ~= nil then
        tests[#tests + 1] = fmt("event.context.%s == %s", k, self:lit(filters.context[k]))
        said[#said + 1] = fmt("%s == %s", k, luagen.string(tostring(filters.context[k])))
      end
    end
    if #tests == 0 then self:fail(dpath .. ".filters.context", filters, "context", "needs at least one of type, subject, source, datacontenttype") end
    self:comment("    -- %s.filters.context: exact match on the CloudEvent attributes", dpath)
    self:emit("    local context_ok, context_err = %s, nil", concat(tests, " and "))
    self:emit_trace("    if trace then trace[#trace + 1] = { kind = \"context\", index = 0, passed = context_ok, reason = context_ok and \"matched\" or %s } end",
      self:lit("context does not match " .. concat(said, " and ")))
    vars[#vars + 1] = "context"
  end
  if filters.time then
    local tf = filters.time
    local tpath = dpath .. ".filters.time"
    local start, stop = clock_seconds(tf.start), clock_seconds(tf.stop)
    if not start then self:fail(tpath .. ".start", tf, "start", "expected HH:MM:SS, got " .. tostring(tf.start)) end
    if not stop then self:fail(tpath .. ".stop", tf, "stop", "expected HH:MM:SS, got " .. tostring(tf.stop)) end
    local tz, err = core.tz_open and core.tz_open(tf.timezone or "UTC")
    if core.tz_open and not tz then self:fail(tpath .. ".timezone", tf, "timezone", tostring(err)) end
    local zone = self:const("ZONE", fmt("assert(core.tz_open(%s))", self:lit(tf.timezone or "UTC")))
    local test = start <= stop and fmt("sod >= %d and sod < %d", start, stop) or fmt("sod >= %d or sod < %d", start, stop)
    self:comment("    -- %s: %s to %s in %s%s", tpath, show(tf.start), show(tf.stop), show(tf.timezone or "UTC"), start > stop and " (wraps midnight)" or "")
    self:emit("    local time_ok, time_err")
    self:emit("    do")
    self:emit("      local t = parse_time(event.context.time)")
    self:emit("      if t == nil then")
    self:emit("        time_ok, time_err = false, \"event time \" .. tostring(event.context.time) .. \" is not RFC 3339\"")
    self:emit("      else")
    self:emit("        local h, m, s = %s:clock(t)", zone)
    self:emit("        local sod = h * 3600 + m * 60 + s")
    self:emit("        time_ok = %s", test)
    self:emit("      end")
    self:emit("    end")
    self:emit_trace("    if trace then trace[#trace + 1] = { kind = \"time\", index = 0, passed = time_ok, reason = time_ok and \"in the window\" or (time_err or %s) } end",
      self:lit(("event time is outside %s-%s %s"):format(tf.start, tf.stop, tf.timezone or "UTC")))
    vars[#vars + 1] = "time"
  end
  if filters.script then
    local spath = dpath .. ".filters.script"
    local text, chunk = self:script_source(filters, "script", filters.script)
    chunk = chunk or ("=" .. spath)
    local id, err = rt.script(self.name, text, chunk)
    if not id then self:fail(spath, filters, "script", "script does not compile: " .. rt.lua_hint(tostring(err), filters.script)) end
    local sid = self:const("SCRIPT", fmt("assert(rt.script(%s, %s, %s))", self:lit(self.name), self:lit(text), self:lit(chunk)))
    self:comment("    -- %s (sandboxed Lua; `event` is the event data). An error fails the dependency.", spath)
    self:comment("    -- an event with no data passes without running the script, as in Argo")
    self:emit("    local script_ok, script_why, script_raised = run_script(%s, %s, event)", self:lit(self.name), sid)
    self:emit_trace("    if trace then trace[#trace + 1] = { kind = \"script\", index = 0, passed = script_ok, reason = script_ok and (event.data == nil and \"the event has no data: passes, as in Argo\" or \"returned true\") or script_why } end")
    self:emit("    if script_raised then return false, script_why, true end")
    self:emit("    local script_err = nil")
    vars[#vars + 1] = "script"
  end
  local oks, errs = {}, {}
  for _, v in ipairs(vars) do
    oks[#oks + 1] = v .. "_ok"
    errs[#errs + 1] = v .. "_err"
  end
  self:comment("    -- a group that ended in an error drops the event, with %q as with \"and\" (Argo's filterEvent)", op_all)
  if #errs > 1 then
    self:emit("    local err")
    for _, e in ipairs(errs) do
      self:emit("    if %s then err = err and (err .. \" / \" .. %s) or %s end", e, e, e)
    end
  else
    self:emit("    local err = %s", errs[1])
  end
  self:emit("    if err then return false, err, true end")
  self:emit("    if %s then return true end", concat(oks, " " .. op_all .. " "))
  self:emit("    return false, %s, false", self:lit("filters did not match"))
  self:emit("  end,")
  self:emit("}")
end

--- Compiles a parameter list into a constant: an array of resolved descriptors with the
--- paths, templates and destinations compiled once.
function Compiler:params(list, path)
  if not list or #list == 0 then return nil end
  local parts = {}
  for i, p in ipairs(list) do
    local where = fmt("%s[%d]", path, i - 1)
    local src = p.src or {}
    if not self.dep_names[src.dependencyName] then
      self:fail(where .. ".src.dependencyName", src, "dependencyName", "unknown dependency " .. tostring(src.dependencyName))
    end
    local fields = { fmt("where = %s", self:lit(where)), fmt("dep = %s", self:lit(src.dependencyName)) }
    if src.dataKey then fields[#fields + 1] = "data_get = " .. self:path_const(src.dataKey, where .. ".src.dataKey", src, "dataKey") end
    if src.contextKey then fields[#fields + 1] = "context_get = " .. self:path_const(src.contextKey, where .. ".src.contextKey", src, "contextKey") end
    if src.dataTemplate then fields[#fields + 1] = "data_tpl = " .. self:template_const(src.dataTemplate, where .. ".src.dataTemplate", src, "dataTemplate") end
    if src.contextTemplate then fields[#fields + 1] = "context_tpl = " .. self:template_const(src.contextTemplate, where .. ".src.contextTemplate", src, "contextTemplate") end
    if src.value ~= nil then fields[#fields + 1] = "value = " .. self:lit(src.value) end
    if src.useRawData then fields[#fields + 1] = "raw = true" end
    -- the key and template text, for the error when neither resolves
    if src.dataKey then fields[#fields + 1] = "data_key = " .. self:lit(src.dataKey) end
    if src.contextKey then fields[#fields + 1] = "context_key = " .. self:lit(src.contextKey) end
    if src.dataTemplate then fields[#fields + 1] = "data_template = " .. self:lit(src.dataTemplate) end
    if src.contextTemplate then fields[#fields + 1] = "context_template = " .. self:lit(src.contextTemplate) end
    local dest = p.dest or ""
    if dest ~= "" then
      local set, err = rt.setter(dest)
      if not set then self:fail(where .. ".dest", p, "dest", "invalid path: " .. tostring(err)) end
      fields[#fields + 1] = "dest = " .. self:const("DEST", fmt("assert(rt.setter(%s))", self:lit(dest)))
    end
    fields[#fields + 1] = "operation = " .. self:lit(p.operation or "overwrite")
    parts[#parts + 1] = "  { " .. concat(fields, ", ") .. " }"
  end
  return self:const("PARAMS", "{\n" .. concat(parts, ",\n") .. ",\n}")
end

-- The trigger types (triggers/<type>/<type>.lua, through herald.registry). What the compiler
-- reads from a type's module:
--   payload       true: its `payload` parameters build the message body
--   resource      true: it acts on a Kubernetes object from spec.source, and its own
--                 `parameters` apply to that object (Argo's ApplyResourceParameters), not to
--                 the trigger spec
--   copies_spec   true: the action function always copies the spec
--   prepare(c, t) optional: compiles what else the action needs before it is emitted (may set
--                 t.changes_spec, so the spec is copied per firing)
--   compile(c, t) optional: emits the end of the action function (default: the spec and the
--                 payload's body, as the executors in C read them)
-- where t = {tpath=, target=, type=, spec=, payload=, type_params=, allow=, trig=}.
local registry = require "herald.registry"

--- Go duration text or nanoseconds -> milliseconds (Argo's Int64OrString).
local function duration_ms(v)
  if v == nil then return nil end
  if type(v) == "number" then return v / 1e6 end
  local ns = core.duration_check and core.duration_check(tostring(v))
  if ns then return ns / 1e6 end
  local n = tonumber(v)
  return n and n / 1e6 or nil
end

--- The trigger-level delivery fields (retryStrategy, rateLimit, atLeastOnce, policy.status) as
--- the engine's delivery policy.
function Compiler:delivery(trig, tpath)
  local pol = { at_least_once = trig.atLeastOnce == true }
  local rs = trig.retryStrategy
  if rs then
    -- k8s wait.Backoff defaults, as Argo applies them: 5 steps of 1s, factor 1, jitter 1
    pol.steps = rs.steps ~= nil and math.max(1, rs.steps) or 5
    local d = rs.duration ~= nil and duration_ms(rs.duration) or 1000
    if not d then self:fail(tpath .. ".retryStrategy.duration", rs, "duration", "not a duration: " .. tostring(rs.duration)) end
    pol.duration_ms = d
    pol.factor = tonumber(rs.factor) or 1
    pol.jitter = rs.jitter ~= nil and tonumber(rs.jitter) or 1
  end
  local rl = trig.rateLimit
  if rl and (rl.requestsPerUnit or 0) > 0 then
    local per = ({ Second = 1, Minute = 60, Hour = 3600 })[rl.unit or "Second"] or 1
    pol.rate = rl.requestsPerUnit / per
  end
  return pol
end

--- The end of the action function of a trigger that acts on a Kubernetes object (a type module
--- with `resource`, e.g. k8s and argoWorkflow): the object from spec.source with the type's
--- parameters applied, or, for a source fetched when the trigger runs, what to fetch.
function Compiler:resource_action(t)
  local trig, tpath, type_params = t.trig, t.tpath, t.type_params
  local k8s_policy = trig.policy and trig.policy.k8s
  local policy = k8s_policy and self:lit(k8s_policy, "    ") or "nil"
  self:comment("    -- spec.source.url, .git or .s3: the trigger fetches it when it runs, then applies its parameters")
  self:emit("    if type(spec.source) == \"table\" and (spec.source.url or spec.source.git or spec.source.s3) then")
  self:emit("      return { spec = spec, fetch = spec.source, params = %s, events = events, policy = %s }, template",
    type_params or "nil", policy)
  self:emit("    end")
  self:comment("    -- the Kubernetes object: from spec.source (resource, inline, file, configmap)")
  self:emit("    local object, oerr = load_resource(spec.source)")
  self:emit("    if not object then return nil, oerr end")
  if type_params then
    self:comment("    -- %s.template.%s.parameters apply to the object", tpath, t.type)
    self:emit("    object = apply_params(object, %s, events)", type_params)
  end
  self:emit("    return { spec = spec, object = object, events = events, policy = %s }, template", policy)
end

function Compiler:trigger(trig, i, target, tpath)
  tpath = tpath or fmt("spec.triggers[%d]", i - 1)
  target = target or fmt("sensor.triggers[%d]", i)
  local tmpl = trig.template
  local ttype, tmod
  for _, e in ipairs(registry.triggers) do
    local mod = tmpl[e.name] and registry.module(e)
    if mod then ttype, tmod = e.name, mod end
  end
  if not ttype then self:fail(tpath .. ".template", trig, "template", "no supported trigger type") end
  local deps
  local cond_lua
  if tmpl.conditions and tmpl.conditions:match("%S") then
    self.cond_names = self.cond_names or _M.condition_names(self.spec.dependencies)
    local expr, used = _M.compile_condition(tmpl.conditions, self.cond_names, function(n) return self:lit(n) end)
    if not expr then self:fail(tpath .. ".template.conditions", tmpl, "conditions", used) end
    cond_lua, deps = expr, used
  else
    deps = {}
    local parts = {}
    for _, d in ipairs(self.spec.dependencies) do
      deps[#deps + 1] = d.name
      parts[#parts + 1] = fmt("s[%s] ~= nil", self:lit(d.name))
    end
    cond_lua = concat(parts, " and ")
  end
  self:emit("")
  self:comment("-- %s %s (%s)", tpath, show(tmpl.name), ttype)
  self:emit("%s = {", target)
  self:emit("  name = %s, type = %s,", self:lit(tmpl.name), self:lit(ttype))
  self:comment("  -- %s: retryStrategy, rateLimit, atLeastOnce", tpath)
  self:emit("  delivery = %s,", self:lit(self:delivery(trig, tpath), "  "))
  local allow = trig.policy and trig.policy.status and trig.policy.status.allow
  if allow then self:comment("  -- %s.policy.status.allow", tpath) end
  self:emit("  dependencies = %s,", self:lit(deps))
  self:comment("  -- %s.template.conditions: %s", tpath, tmpl.conditions and show(tmpl.conditions) or "(all dependencies)")
  self:emit("  condition = function(s) return %s end,", cond_lua)
  if tmpl.conditionsReset and #tmpl.conditionsReset > 0 then
    local resets = {}
    for j, r in ipairs(tmpl.conditionsReset) do
      local where = fmt("%s.template.conditionsReset[%d].byTime", tpath, j - 1)
      local bt = r.byTime
      if not bt or not bt.cron then self:fail(where, r, "byTime", "needs cron") end
      if core.cron_check then
        local ok, err = core.cron_check(bt.cron, bt.timezone)
        if not ok then self:fail(where .. ".cron", bt, "cron", "invalid cron: " .. tostring(err)) end
      end
      resets[#resets + 1] = { cron = bt.cron, timezone = bt.timezone }
    end
    self:comment("  -- %s.template.conditionsReset: the dependency state is cleared at these times", tpath)
    self:emit("  conditions_reset = %s,", self:lit(resets, "  "))
  end
  self:emit("  config = %s,", self:lit(tmpl[ttype], "  "))
  -- Argo applies template-level parameters first, so they may rewrite the trigger's own
  -- parameter list (a tutorial fills a placeholder dependencyName this way); Herald compiles
  -- those lists ahead of time and says so rather than reporting the placeholder
  for j, p in ipairs(trig.parameters or {}) do
    local dest = type(p.dest) == "string" and p.dest or ""
    local own = dest:match("^" .. ttype:gsub("%W", "%%%0") .. "%.(%a+)")
    if own == "parameters" or own == "payload" then
      self:fail(fmt("%s.parameters[%d].dest", tpath, j - 1), p, "dest",
        fmt("%s: a template-level parameter that rewrites the trigger's own %s is not supported by Herald yet "
          .. "(Herald compiles them ahead of time; set them in the spec)", show(dest), own))
    end
  end
  local tparams = self:params(trig.parameters, tpath .. ".parameters")
  local type_params = self:params(tmpl[ttype].parameters, fmt("%s.template.%s.parameters", tpath, ttype))
  local payload = tmod.payload and self:params(tmpl[ttype].payload, fmt("%s.template.%s.payload", tpath, ttype)) or nil
  local t = { tpath = tpath, target = target, type = ttype, spec = tmpl[ttype], payload = payload,
              type_params = type_params, allow = allow, trig = trig }
  if tmod.prepare then tmod.prepare(self, t) end
  -- the compiled parameter lists, for the REPL's :params (nil when absent)
  if self.explain or tparams or type_params or payload then
    self:emit("  params = { template = %s, type = %s, payload = %s },", tparams or "nil", type_params or "nil", payload or "nil")
  end
  self:comment("  -- builds what the %s executor does with this firing's events", ttype)
  -- the template literal is needed by trigger-level parameters and by herald test; the engine
  -- compiles without it otherwise (less code to generate and load per sensor)
  local tconst = (tparams or self.explain) and self:const("TEMPLATE", self:lit(tmpl)) or nil
  self:comment("  -- with_template: also return the template with the parameters applied (herald test)")
  self:emit("  action = function(events, with_template)")
  self:emit("    local template")
  if tparams then
    self:comment("    -- %s.parameters apply to the whole template", tpath)
    self:emit("    template = apply_params(copy(%s), %s, events)", tconst, tparams)
    self:emit("    local spec = template.%s", ttype)
  elseif type_params or t.changes_spec or tmod.resource or tmod.copies_spec or self.explain then
    self:emit("    local spec = copy(%s.config)", target)
  else
    -- nothing here changes the spec and the executor (C) only reads it: no copy per firing
    self:emit("    local spec = %s.config", target)
  end
  if type_params and not tmod.resource then
    self:emit("    spec = apply_params(spec, %s, events)", type_params)
  end
  if tconst then
    self:emit("    if with_template then")
    self:emit("      template = template or copy(%s)", tconst)
    self:emit("      template.%s = spec", ttype)
    self:emit("    end")
  end
  if tmod.compile then
    tmod.compile(self, t)
  else
    self:emit("    local body")
    if payload then
      self:comment("    -- %s.template.%s.payload builds the message", tpath, ttype)
      self:emit("    local err3")
      self:emit("    body, err3 = build_payload(%s, events)", payload)
      self:emit("    if not body then return nil, err3 end")
    end
    self:emit("    return { spec = spec, body = body, events = events, allow = %s }, template",
      allow and self:lit(allow) or "nil")
  end
  self:emit("  end,")
  self:emit("}")
  if trig.dlqTrigger then
    if target:find("%.dlq$") then self:fail(tpath .. ".dlqTrigger", trig, "dlqTrigger", "a dlqTrigger cannot have its own dlqTrigger") end
    self:comment("-- %s.dlqTrigger: runs with the same events when the retries are exhausted", tpath)
    self:trigger(trig.dlqTrigger, i, target .. ".dlq", tpath .. ".dlqTrigger")
  end
end

local PRELUDE = [[
local core = require "herald.core"
local res_string, res_bool, res_value = rt.res_string, rt.res_bool, rt.res_value
local to_number, to_bool, render, parse_time = rt.to_number, rt.to_bool, rt.render, core.parse_time
local apply_params, build_payload, copy = rt.apply_params, rt.build_payload, rt.copy
local run_script, transform_jq, transform_script = rt.run_script, rt.transform_jq, rt.transform_script
local load_resource, lua_trigger = rt.load_resource, rt.lua_trigger
]]
local HEADER = [[
-- Generated code: edit the Sensor spec, not this.
local rt = ...
]]
--- Compiles a loaded Sensor object ({name=, file=, doc=, ...}). opts.locate(tbl, key) -> line, col.
--- Returns {name=, source=} or nil, "file:line:col: path: message".
function _M.compile(obj, opts)
  opts = opts or {}
  local spec = obj.doc.spec
  local c = setmetatable({
    out = {}, consts = {}, nconst = 0, K = opts.engine and {} or nil,
    file = obj.file or "?", name = obj.name, spec = spec,
    locate = opts.locate or function() return 0, 0 end,
    explain = opts.explain or false,
    readable = opts.readable ~= false and not opts.engine,
    dep_names = {},
  }, Compiler)
  for _, d in ipairs(spec.dependencies) do c.dep_names[d.name] = true end
  local ok, err = pcall(function()
    c:emit("local sensor = { name = %s, dependencies = {}, triggers = {} }", c:lit(obj.name))
    for i, dep in ipairs(spec.dependencies) do c:dependency(dep, i) end
    for i, trig in ipairs(spec.triggers) do c:trigger(trig, i) end
    c:emit("")
    c:emit("return sensor")
  end)
  if not ok then
    if type(err) == "table" and err.herald_compile_error then return nil, err.herald_compile_error end
    error(err, 0)
  end
  -- for the engine the code names nothing of this sensor: its literals are in K
  local source = (c.K and "local rt, K = ...\n"
    or luagen.comment(fmt("-- Sensor %s, compiled by Herald from %s.", show(obj.name), show(obj.file or "?")))
       .. "\n" .. HEADER) .. PRELUDE
  if #c.consts > 0 then source = source .. "\n" .. concat(c.consts, "\n") .. "\n" end
  source = source .. "\n" .. concat(c.out, "\n") .. "\n"
  return { name = obj.name, source = source, K = c.K }
end

-- Sharing one set of function prototypes between sensors of the same shape. Compiled for the
-- engine, a sensor's literals (paths, values, names) are in its table K, so sensors that differ
-- only in literals have the same code: it is loaded once per shape and each sensor gets closures
-- over its own K. This matters with many sensors: LuaJIT traces follow prototypes, and 1,000
-- distinct filter prototypes behind one handler thrash the trace compiler
-- (bench/fanout-shapes.lua: 6x); loading each shape once is faster too.
local shapes, nshapes = {}, 0 -- source -> chunk (one per distinct shape)

--- How many distinct sensor shapes have been loaded (with opts.engine).
function _M.shape_count() return nshapes end

--- Compiles and loads a Sensor: returns the sensor table the runtime drives, or nil, err.
--- opts.engine also shares the loaded code between sensors of the same shape.
function _M.load(obj, opts)
  local compiled, err = _M.compile(obj, opts)
  if not compiled then return nil, err end
  if compiled.K then
    local fn = shapes[compiled.source]
    if not fn then
      local lerr
      fn, lerr = loadstring(compiled.source, "=sensor")
      if not fn then return nil, "internal error compiling sensor " .. obj.name .. ": " .. lerr end
      shapes[compiled.source], nshapes = fn, nshapes + 1
    end
    return fn(rt, compiled.K), nil, compiled
  end
  local fn, lerr = loadstring(compiled.source, "=sensor:" .. obj.name)
  if not fn then return nil, "internal error compiling sensor " .. obj.name .. ": " .. lerr end
  return fn(rt), nil, compiled
end

return _M
