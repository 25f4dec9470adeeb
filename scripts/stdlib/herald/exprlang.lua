-- herald/exprlang.lua: expr-lang (antonmedv/expr v1.15, the engine behind EventSource
-- `filter.expression`) compiled to Lua source.
--
--   local el = require "herald.exprlang"
--   local c, err = el.compile('body.id == 4 && body.name != "Joe"')
--   local env = el.prepare_env(event_data)   -- top-level "-" -> "_", dotted keys expanded
--   c.fn(env)    --> true | false | any value, or nil and an error
--
-- Argo evaluates with expr.Eval (no type checker), so names, types and builtins are checked
-- at run time; so are they here. The parser follows expr's operator table (or 10, and 15,
-- comparisons/in/matches/contains/startsWith/endsWith 20, .. 25, + - 30, * / % 60, ** ^ 100
-- right-assoc, ?? 500; unary not/! 50, -/+ 90; ternary lowest). The generated code is one
-- Lua function of the env with predicates (all, filter, map, ...) as inline loops; runtime
-- errors are raised by the helpers and turned into `nil, err` by c.fn.
local gv = require "herald.govaluate"

local _M = {}

local type, tostring, tonumber, pairs, ipairs, select, error, pcall = type, tostring, tonumber, pairs, ipairs, select, error, pcall
local fmt, concat, sort = string.format, table.concat, table.sort
local byte, sub, find = string.byte, string.sub, string.find
local floor, ceil, huge, fmod = math.floor, math.ceil, math.huge, math.fmod

local GR = gv.runtime
local NULL = GR.NULL
local is_array, go_v = GR.is_array, GR.go_v
local cjson = require "cjson"
local json = require "herald.json"
local gjson = require "herald.gjson"

---------------------------------------------------------------------------------------------
-- Runtime (the generated code calls these through the upvalue L)
---------------------------------------------------------------------------------------------

local L = {}
_M.runtime = L
L.NULL = NULL

local new_array = json.array
L.new_array = new_array

local function isnil(v) return v == nil or v == NULL end

--- Go's %T for a decoded JSON value.
local function gotype(v)
  local t = type(v)
  if t == "number" then return (v == floor(v) and v > -2 ^ 63 and v < 2 ^ 63) and "int" or "float64" end
  if t == "string" then return "string" end
  if t == "boolean" then return "bool" end
  if isnil(v) then return "<nil>" end
  if t == "table" then return is_array(v) and "[]interface {}" or "map[string]interface {}" end
  if t == "function" then return "func(...interface {}) (interface {}, error)" end
  return t
end
L.gotype = gotype

local function raise(msg) error({ expr_error = msg }, 0) end
L.raise = raise

--- A bool where expr needs one (and, or, not, ?:, predicates).
function L.B(v)
  if v == true or v == false then return v end
  raise(fmt("interface conversion: interface {} is %s, not bool", isnil(v) and "nil" or gotype(v)))
end

local function S(v, op)
  if type(v) == "string" then return v end
  raise(fmt("interface conversion: interface {} is %s, not string", isnil(v) and "nil" or gotype(v)))
end
L.S = S

local function N(v, what)
  if type(v) == "number" then return v end
  raise(fmt("invalid operation: %s", what or gotype(v)))
end

local function toint(v)
  if type(v) ~= "number" then raise(fmt("invalid operation: int(%s)", gotype(v))) end
  if v >= 0 then return floor(v) end
  return ceil(v)
end
L.toint = toint

local function eq(a, b)
  if a == b then return true end
  if isnil(a) then return isnil(b) end
  if isnil(b) then return false end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  local aa, ba = is_array(a), is_array(b)
  if aa ~= ba then return false end
  if aa then
    if #a ~= #b then return false end
    for i = 1, #a do if not eq(a[i], b[i]) then return false end end
    return true
  end
  for k, v in pairs(a) do if b[k] == nil or not eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
L.eq = eq

local function binerr(a, op, b) raise(fmt("invalid operation: %s %s %s", gotype(a), op, gotype(b))) end

function L.lt(a, b)
  local ta, tb = type(a), type(b)
  if (ta == "number" and tb == "number") or (ta == "string" and tb == "string") then return a < b end
  binerr(a, "<", b)
end
function L.le(a, b)
  local ta, tb = type(a), type(b)
  if (ta == "number" and tb == "number") or (ta == "string" and tb == "string") then return a <= b end
  binerr(a, "<=", b)
end
function L.gt(a, b)
  local ta, tb = type(a), type(b)
  if (ta == "number" and tb == "number") or (ta == "string" and tb == "string") then return a > b end
  binerr(a, ">", b)
end
function L.ge(a, b)
  local ta, tb = type(a), type(b)
  if (ta == "number" and tb == "number") or (ta == "string" and tb == "string") then return a >= b end
  binerr(a, ">=", b)
end
function L.add(a, b)
  local ta, tb = type(a), type(b)
  if ta == "number" and tb == "number" then return a + b end
  if ta == "string" and tb == "string" then return a .. b end
  binerr(a, "+", b)
end
function L.sub(a, b)
  if type(a) == "number" and type(b) == "number" then return a - b end
  binerr(a, "-", b)
end
function L.mul(a, b)
  if type(a) == "number" and type(b) == "number" then return a * b end
  binerr(a, "*", b)
end
function L.div(a, b)
  if type(a) == "number" and type(b) == "number" then return a / b end
  binerr(a, "/", b)
end
function L.mod(a, b)
  if type(a) == "number" and type(b) == "number" then
    local x, y = toint(a), toint(b)
    if y == 0 then raise("integer divide by zero") end
    return fmod(x, y)
  end
  binerr(a, "%", b)
end
function L.pow(a, b)
  if type(a) == "number" and type(b) == "number" then return a ^ b end
  binerr(a, "**", b)
end
function L.neg(a)
  if type(a) == "number" then return -a end
  raise(fmt("invalid operation: -%s", gotype(a)))
end
function L.plus(a)
  if type(a) == "number" then return a end
  raise(fmt("invalid operation: +%s", gotype(a)))
end

--- runtime.Fetch: a.b, a["b"], a[0], a[-1].
function L.fetch(from, key)
  local tf = type(from)
  if tf == "table" and from ~= NULL then
    if type(key) == "string" then
      if from[1] ~= nil then raise(fmt("cannot fetch %s from %s", key, gotype(from))) end
      return from[key]
    end
    if type(key) == "number" then
      if not is_array(from) then return nil end
      local n = #from
      local i = toint(key)
      if i < 0 then i = n + i end
      if i < 0 or i >= n then raise(fmt("index out of range: %d (array length is %d)", i, n)) end
      return from[i + 1]
    end
    raise(fmt("cannot fetch %s from %s", go_v(key), gotype(from)))
  elseif tf == "string" and type(key) == "number" then
    local n = #from
    local i = toint(key)
    if i < 0 then i = n + i end
    if i < 0 or i >= n then raise(fmt("index out of range: %d (array length is %d)", i, n)) end
    return byte(from, i + 1)
  end
  raise(fmt("cannot fetch %s from %s", go_v(key), gotype(from)))
end

--- runtime.Slice: a[from:to] on arrays and strings.
function L.slice(v, from, to)
  local n
  if type(v) == "string" then n = #v
  elseif is_array(v) then n = #v
  else raise(fmt("cannot slice %s", gotype(v))) end
  local a = from == nil and 0 or toint(from)
  local b = to == nil and n or toint(to)
  if a < 0 then a = n + a end
  if b < 0 then b = n + b end
  if b > n then b = n end
  if a > b then a = b end
  if a < 0 then raise(fmt("slice bounds out of range [%d:%d]", a, b)) end
  if type(v) == "string" then return sub(v, a + 1, b) end
  local out = new_array()
  for i = a + 1, b do out[#out + 1] = v[i] end
  return out
end

--- runtime.In: membership in an array (by ==) or a map (by key).
function L.in_(needle, coll)
  if isnil(coll) then return false end
  if type(coll) == "table" then
    if is_array(coll) then
      for i = 1, #coll do if eq(coll[i], needle) then return true end end
      return false
    end
    if type(needle) ~= "string" then raise(fmt("cannot use %s as index to %s", gotype(needle), gotype(coll))) end
    return coll[needle] ~= nil
  end
  raise(fmt("operator \"in\" not defined on %s", gotype(coll)))
end

function L.range(a, b)
  local x, y = toint(a), toint(b)
  local out = new_array()
  for i = x, y do out[#out + 1] = i end
  return out
end

local regex_cache = setmetatable({}, { __mode = "v" })
function L.matches(s, pattern)
  S(s); S(pattern)
  local re = regex_cache[pattern]
  if not re then
    local err
    re, err = GR.regex_compile(pattern)
    if not re then raise("error parsing regexp: " .. tostring(err)) end
    regex_cache[pattern] = re
  end
  return (re:find(s)) == true
end
function L.const_regex(pattern) return assert(GR.regex_compile(pattern)) end

function L.contains(a, b) return find(S(a), S(b), 1, true) ~= nil end
function L.starts(a, b) S(a); S(b); return sub(a, 1, #b) == b end
function L.ends(a, b) S(a); S(b); return #b == 0 or sub(a, -#b) == b end

--- The array a predicate iterates over (expr: arrays and slices only).
function L.iter(v, name)
  if type(v) == "table" and v ~= NULL and is_array(v) then return v end
  raise(fmt("cannot iterate over %s in %s()", gotype(v), name))
end

function L.call(f, name, ...)
  if type(f) == "function" then return f(...) end
  raise(fmt("%s is not a function (%s)", name, gotype(f)))
end

-- JSON (encoding/json.Marshal: sorted keys, HTML-safe escapes, Go float format) ------------

--- encoding/json.MarshalIndent (indent given) or Marshal: sorted keys, HTML-safe escapes.
local function to_json(v, indent)
  local ok, s = pcall(json.encode, v, true, indent)
  if not ok then raise(tostring(s)) end
  return s
end
L.to_json = to_json

-- Builtins ----------------------------------------------------------------------------------

local B = {}
L.builtins = B

local function argn(name, args, lo, hi)
  local n = args.n
  if n < lo or n > (hi or lo) then
    raise(fmt("invalid number of arguments for %s (expected %d, got %d)", name, lo, n))
  end
end

local function pack(...) return { n = select("#", ...), ... } end

function B.len(...)
  local a = pack(...)
  argn("len", a, 1)
  local v = a[1]
  if type(v) == "string" then return #v end
  if type(v) == "table" and v ~= NULL then
    if is_array(v) then return #v end
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    return n
  end
  raise(fmt("invalid argument for len (type %s)", gotype(v)))
end

local function b_int(...)
  local a = pack(...)
  argn("int", a, 1)
  local v = a[1]
  if type(v) == "number" then return toint(v) end
  if type(v) == "string" then
    if v:match("^[+-]?%d+$") then return tonumber(v) end
    raise(fmt("strconv.Atoi: parsing %q: invalid syntax", v))
  end
  raise(fmt("invalid argument for int (type %s)", gotype(v)))
end
B.int = b_int

local function b_float(...)
  local a = pack(...)
  argn("float", a, 1)
  local v = a[1]
  if type(v) == "number" then return v end
  if type(v) == "string" then
    local low = v:lower()
    if low == "inf" or low == "+inf" or low == "infinity" or low == "+infinity" then return huge end
    if low == "-inf" or low == "-infinity" then return -huge end
    if low == "nan" then return 0 / 0 end
    local n = (not v:find("^%s") and not v:find("%s$") and not low:find("^[+-]?0x")) and tonumber(v) or nil
    if n then return n end
    raise(fmt("strconv.ParseFloat: parsing %q: invalid syntax", v))
  end
  raise(fmt("invalid argument for float (type %s)", gotype(v)))
end
B.float = b_float

function B.string(...)
  local a = pack(...)
  argn("string", a, 1)
  return go_v(a[1])
end

function B.abs(x)
  if type(x) ~= "number" then raise(fmt("invalid argument for abs (type %s)", gotype(x))) end
  return x < 0 and -x or x
end
function B.ceil(x) return ceil(N(x, "ceil(" .. gotype(x) .. ")")) end
function B.floor(x) return floor(N(x, "floor(" .. gotype(x) .. ")")) end
function B.round(x)
  N(x, "round(" .. gotype(x) .. ")")
  if x < 0 then return -floor(-x + 0.5) end
  return floor(x + 0.5)
end
function B.max(...)
  local a = pack(...)
  if a.n == 0 then raise("not enough arguments to call max") end
  local m = N(a[1], "max(" .. gotype(a[1]) .. ")")
  for i = 2, a.n do local v = N(a[i], "max(" .. gotype(a[i]) .. ")"); if v > m then m = v end end
  return m
end
function B.min(...)
  local a = pack(...)
  if a.n == 0 then raise("not enough arguments to call min") end
  local m = N(a[1], "min(" .. gotype(a[1]) .. ")")
  for i = 2, a.n do local v = N(a[i], "min(" .. gotype(a[i]) .. ")"); if v < m then m = v end end
  return m
end

function B.upper(s) return S(s):upper() end
function B.lower(s) return S(s):lower() end
function B.trim(s, cutset)
  S(s)
  if cutset == nil then return (s:gsub("^%s+", ""):gsub("%s+$", "")) end
  if S(cutset) == "" then return s end
  -- Go's strings.Trim: the cutset is a set of runes (sprig's trimAll is the same function)
  return require("herald.sprig").trim_set(s, cutset, true, true)
end
function B.trimPrefix(s, p)
  S(s); S(p)
  if sub(s, 1, #p) == p then return sub(s, #p + 1) end
  return s
end
function B.trimSuffix(s, p)
  S(s); S(p)
  if #p > 0 and sub(s, -#p) == p then return sub(s, 1, #s - #p) end
  return s
end
local function split(s, sep, n, after)
  S(s); S(sep)
  n = n == nil and -1 or toint(n)
  local out = new_array()
  if n == 0 then return out end
  if sep == "" then
    for ch in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do
      if n > 0 and #out == n - 1 then out[#out + 1] = sub(s, #concat(out) + 1); return out end
      out[#out + 1] = ch
    end
    return out
  end
  local i = 1
  while true do
    if n > 0 and #out == n - 1 then break end
    local a, b = find(s, sep, i, true)
    if not a then break end
    out[#out + 1] = sub(s, i, after and b or a - 1)
    i = b + 1
  end
  out[#out + 1] = sub(s, i)
  return out
end
function B.split(s, sep, n) return split(s, sep, n, false) end
function B.splitAfter(s, sep, n) return split(s, sep, n, true) end
function B.replace(s, old, new)
  S(s); S(old); S(new)
  if old == "" then return s end
  local out, i = {}, 1
  while true do
    local a, b = find(s, old, i, true)
    if not a then break end
    out[#out + 1] = sub(s, i, a - 1)
    out[#out + 1] = new
    i = b + 1
  end
  out[#out + 1] = sub(s, i)
  return concat(out)
end
function B.repeat_(s, n)
  S(s)
  n = toint(n)
  if n < 0 then raise("strings: negative Repeat count") end
  return s:rep(n)
end
B["repeat"] = B.repeat_
B.repeat_ = nil
function B.indexOf(s, sub_)
  local a = find(S(s), S(sub_), 1, true)
  return a and a - 1 or -1
end
function B.lastIndexOf(s, sub_)
  S(s); S(sub_)
  local last = -1
  local i = 1
  while true do
    local a = find(s, sub_, i, true)
    if not a then break end
    last = a - 1
    i = a + 1
  end
  return last
end
function B.hasPrefix(s, p) return L.starts(s, p) end
function B.hasSuffix(s, p) return L.ends(s, p) end
function B.join(arr, glue)
  glue = glue == nil and "" or S(glue)
  if type(arr) ~= "table" or not is_array(arr) then raise(fmt("invalid argument for join (type %s)", gotype(arr))) end
  local parts = {}
  for i = 1, #arr do parts[i] = S(arr[i]) end
  return concat(parts, glue)
end
function B.keys(m)
  if type(m) ~= "table" or m == NULL or (m[1] ~= nil) then raise(fmt("cannot get keys from %s", gotype(m))) end
  local out = new_array()
  for k in pairs(m) do out[#out + 1] = k end
  sort(out)
  return out
end
function B.values(m)
  if type(m) ~= "table" or m == NULL or (m[1] ~= nil) then raise(fmt("cannot get values from %s", gotype(m))) end
  local keys = B.keys(m)
  local out = new_array()
  for i, k in ipairs(keys) do out[i] = m[k] end
  return out
end
function B.first(v)
  if type(v) == "table" and is_array(v) then local x = v[1]; return x end
  if isnil(v) then return nil end
  raise(fmt("cannot get first element from %s", gotype(v)))
end
function B.last(v)
  if type(v) == "table" and is_array(v) then return v[#v] end
  if isnil(v) then return nil end
  raise(fmt("cannot get last element from %s", gotype(v)))
end
function B.get(v, k)
  if type(v) ~= "table" or v == NULL then return nil end
  if type(k) == "number" then
    if not is_array(v) then return nil end
    local i = toint(k)
    if i < 0 then i = #v + i end
    return v[i + 1]
  end
  if type(k) == "string" and v[1] == nil then return v[k] end
  return nil
end
function B.take(v, n)
  if type(v) ~= "table" or not is_array(v) then raise(fmt("cannot take from %s", gotype(v))) end
  n = toint(n)
  local out = new_array()
  for i = 1, math.min(n, #v) do out[i] = v[i] end
  return out
end
function B.toJSON(v) return to_json(v, "  ") end
function B.fromJSON(s)
  S(s)
  local v, err = json.try_decode(s)
  if err then raise(err) end
  return v
end
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
function B.toBase64(s)
  S(s)
  return ((s:gsub(".", function(x)
    local r, b = "", byte(x)
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (sub(x, i, i) == "1" and 2 ^ (6 - i) or 0) end
    return sub(B64, c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end
function B.fromBase64(s)
  S(s)
  if #s % 4 ~= 0 or s:find("[^%w%+/=]") then raise("illegal base64 data at input byte 0") end
  local data = s:gsub("=", "")
  return (data:gsub(".", function(x)
    local f = find(B64, x, 1, true) - 1
    local r = ""
    for i = 6, 1, -1 do r = r .. (f % 2 ^ i - f % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end):gsub("%d%d%d?%d?%d?%d?%d?%d?", function(x)
    if #x ~= 8 then return "" end
    local c = 0
    for i = 1, 8 do c = c + (sub(x, i, i) == "1" and 2 ^ (8 - i) or 0) end
    return string.char(c)
  end))
end

-- Argo's env helpers -------------------------------------------------------------------------

L.asInt = b_int
L.asFloat = b_float
--- Argo's toJson: json.Marshal, "" when the value cannot be marshalled.
function L.toJson(v)
  local ok, s = pcall(to_json, v)
  if ok then return s end
  return ""
end

--- A JSONPath subset ($, .key, ['key'], [n], [*], .*) over a decoded value.
local function jsonpath_query(root, path)
  if sub(path, 1, 1) ~= "$" then raise("jsonpath: invalid path, expected '$' or '@'") end
  local cur, multi = { root }, false
  local i, n = 2, #path
  local function step(fn)
    local nxt = {}
    for _, v in ipairs(cur) do fn(v, nxt) end
    cur = nxt
  end
  while i <= n do
    local c = sub(path, i, i)
    local key, idx, star
    if c == "." then
      if sub(path, i + 1, i + 1) == "*" then star = true; i = i + 2
      else
        local name = path:match("^[^%.%[]+", i + 1)
        if not name then raise("jsonpath: invalid path " .. path) end
        key = name
        i = i + 1 + #name
      end
    elseif c == "[" then
      local inner, close = path:match("^%[%s*(.-)%s*%]()", i)
      if not inner then raise("jsonpath: invalid path " .. path) end
      i = close
      if inner == "*" then star = true
      elseif inner:match("^'.*'$") or inner:match('^".*"$') then key = sub(inner, 2, -2)
      elseif inner:match("^%-?%d+$") then idx = tonumber(inner)
      else raise("jsonpath: unsupported expression [" .. inner .. "]") end
    else
      raise("jsonpath: invalid path " .. path)
    end
    if star then
      multi = true
      step(function(v, out)
        if type(v) == "table" and v ~= NULL then
          if is_array(v) then for _, x in ipairs(v) do out[#out + 1] = x end
          else
            local keys = {}
            for k in pairs(v) do keys[#keys + 1] = k end
            sort(keys)
            for _, k in ipairs(keys) do out[#out + 1] = v[k] end
          end
        end
      end)
    elseif key then
      step(function(v, out)
        if type(v) == "table" and v ~= NULL and v[1] == nil and v[key] ~= nil then out[#out + 1] = v[key]
        elseif not multi then raise("key: invalid token key '" .. key .. "' not found") end
      end)
    else
      step(function(v, out)
        if type(v) == "table" and is_array(v) then
          local k = idx < 0 and #v + idx or idx
          if k >= 0 and k < #v then out[#out + 1] = v[k + 1]
          elseif not multi then raise("index: invalid token out of range") end
        elseif not multi then raise("index: invalid token target. expected [array map slice] got [" .. gotype(v) .. "]") end
      end)
    end
  end
  if multi then
    local out = new_array()
    for k, v in ipairs(cur) do out[k] = v end
    return out
  end
  return cur[1]
end
_M.jsonpath_query = jsonpath_query

--- Argo's jsonpath(jsonStr, path): paths starting with "$" are JSONPath (Argo uses
--- evilmonkeyinc/jsonpath); other paths are read with herald.gjson.
function L.jsonpath(s, path)
  S(s); S(path)
  local data, err = json.try_decode(s)
  if err then raise(err) end
  if sub(path, 1, 1) == "$" then return jsonpath_query(data, path) end
  return gjson.get(data, path)
end

local sprig_mod
--- sprig.<fn>: looked up in herald.sprig (name -> Lua function).
function L.sprig(name, ...)
  sprig_mod = sprig_mod or require "herald.sprig"
  local f = sprig_mod[name]
  if type(f) ~= "function" then raise("sprig function '" .. name .. "' is not available") end
  local v, err = f(...)
  if v == nil and type(err) == "string" then raise(err) end
  return v
end

local ENV_HELPERS = { asInt = "L.asInt", asFloat = "L.asFloat", toJson = "L.toJson", jsonpath = "L.jsonpath" }

---------------------------------------------------------------------------------------------
-- Lexer
---------------------------------------------------------------------------------------------

local KEYWORD_OPS = { ["not"] = true, ["and"] = true, ["or"] = true, ["in"] = true, matches = true,
  contains = true, startsWith = true, endsWith = true }
local OPS3 = { ["..."] = false }
local OPS2 = { ["**"] = true, [".."] = true, ["?."] = true, ["??"] = true, ["=="] = true, ["!="] = true,
  ["<="] = true, [">="] = true, ["&&"] = true, ["||"] = true }
local OPS1 = "+-*/%^<>!?:.,()[]{}#|"

local function column(s, i)
  local col = 0
  for j = 1, i - 1 do
    local b = byte(s, j)
    if b < 0x80 or b >= 0xC0 then col = col + 1 end
  end
  return col + 1
end

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then return string.char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return string.char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

local SIMPLE_ESC = { a = "\a", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", v = "\v", ["\\"] = "\\", ["'"] = "'", ['"'] = '"' }

local function lex(s)
  local toks, i, n = {}, 1, #s
  local function fail(msg, at) error({ msg = msg .. " at column " .. column(s, at) }) end
  while true do
    -- whitespace and comments
    while i <= n do
      local c = sub(s, i, i)
      if c:match("%s") then i = i + 1
      elseif sub(s, i, i + 1) == "//" then
        local e = find(s, "\n", i, true)
        i = e and e + 1 or n + 1
      elseif sub(s, i, i + 1) == "/*" then
        local e = find(s, "*/", i + 2, true)
        if not e then fail("unclosed comment", i) end
        i = e + 2
      else break end
    end
    if i > n then break end
    local start = i
    local c = sub(s, i, i)
    local tok
    if c:match("%d") or (c == "." and sub(s, i + 1, i + 1):match("%d")) then
      local text
      if sub(s, i, i + 1):lower() == "0x" then
        text = s:match("^0[xX][%x_]+", i)
        if not text then fail("invalid hex number", i) end
        tok = { kind = "num", value = tonumber((text:gsub("_", ""):sub(3)), 16), int = true }
      elseif sub(s, i, i + 1):lower() == "0o" or sub(s, i, i + 1):lower() == "0b" then
        local base = sub(s, i + 1, i + 1):lower() == "o" and 8 or 2
        text = s:match("^0[oObB][%d_]+", i)
        if not text then fail("invalid number", i) end
        tok = { kind = "num", value = tonumber((text:gsub("_", ""):sub(3)), base), int = true }
      else
        text = s:match("^[%d_]*", i)
        local j = i + #text
        local is_float = false
        if sub(s, j, j) == "." and sub(s, j + 1, j + 1) ~= "." then
          local frac = s:match("^%.[%d_]*", j)
          text = text .. frac
          j = j + #frac
          is_float = true
        end
        local e = s:match("^[eE][+-]?%d+", j)
        if e then text = text .. e; j = j + #e; is_float = true end
        local v = tonumber((text:gsub("_", "")))
        if not v then fail("invalid number '" .. text .. "'", i) end
        tok = { kind = "num", value = v, int = not is_float }
      end
      i = i + #text
      if sub(s, i, i):match("[%a_]") then fail("bad number syntax: '" .. text .. sub(s, i, i) .. "'", start) end
    elseif c == '"' or c == "'" then
      local out = {}
      i = i + 1
      while true do
        if i > n then fail("literal not terminated", start) end
        local ch = sub(s, i, i)
        if ch == c then i = i + 1 break end
        if ch == "\\" then
          local e = sub(s, i + 1, i + 1)
          if SIMPLE_ESC[e] then out[#out + 1] = SIMPLE_ESC[e]; i = i + 2
          elseif e == "x" then
            local h = s:match("^%x%x", i + 2)
            if not h then fail("invalid char escape", i) end
            out[#out + 1] = string.char(tonumber(h, 16)); i = i + 4
          elseif e == "u" or e == "U" then
            local len = e == "u" and 4 or 8
            local h = s:match("^" .. ("%x"):rep(len), i + 2)
            if not h then fail("invalid char escape", i) end
            out[#out + 1] = utf8_char(tonumber(h, 16)); i = i + 2 + len
          elseif e:match("[0-7]") then
            local o = s:match("^[0-7][0-7][0-7]", i + 1)
            if not o then fail("invalid char escape", i) end
            out[#out + 1] = string.char(tonumber(o, 8) % 256); i = i + 4
          else
            fail("invalid char escape", i)
          end
        else
          out[#out + 1] = ch
          i = i + 1
        end
      end
      tok = { kind = "str", value = concat(out) }
    elseif c == "`" then
      local e = find(s, "`", i + 1, true)
      if not e then fail("literal not terminated", i) end
      tok = { kind = "str", value = sub(s, i + 1, e - 1) }
      i = e + 1
    elseif c:match("[%a_$]") then
      local word = s:match("^[%w_$]+", i)
      i = i + #word
      if word == "true" or word == "false" then tok = { kind = "bool", value = word == "true" }
      elseif word == "nil" then tok = { kind = "nil" }
      elseif KEYWORD_OPS[word] then tok = { kind = "op", value = word }
      else tok = { kind = "ident", value = word } end
    else
      local two = sub(s, i, i + 1)
      if OPS2[two] then
        tok = { kind = "op", value = two }; i = i + 2
      elseif find(OPS1, c, 1, true) then
        tok = { kind = "op", value = c }; i = i + 1
      else
        fail("unrecognized character: U+" .. fmt("%04X", byte(c)) .. " '" .. c .. "'", i)
      end
    end
    tok.col = column(s, start)
    tok.pos = start
    toks[#toks + 1] = tok
  end
  toks[#toks + 1] = { kind = "eof", col = column(s, n + 1) }
  return toks
end

---------------------------------------------------------------------------------------------
-- Parser
---------------------------------------------------------------------------------------------

local BINARY = {
  ["or"] = { 10 }, ["||"] = { 10 }, ["and"] = { 15 }, ["&&"] = { 15 },
  ["=="] = { 20 }, ["!="] = { 20 }, ["<"] = { 20 }, [">"] = { 20 }, ["<="] = { 20 }, [">="] = { 20 },
  ["in"] = { 20 }, matches = { 20 }, contains = { 20 }, startsWith = { 20 }, endsWith = { 20 },
  [".."] = { 25 }, ["+"] = { 30 }, ["-"] = { 30 }, ["*"] = { 60 }, ["/"] = { 60 }, ["%"] = { 60 },
  ["**"] = { 100, true }, ["^"] = { 100, true }, ["??"] = { 500 },
}
local UNARY = { ["not"] = 50, ["!"] = 50, ["-"] = 90, ["+"] = 90 }
local NEGATABLE = { ["in"] = true, matches = true, contains = true, startsWith = true, endsWith = true }
local PREDICATES = { all = true, none = true, any = true, one = true, filter = true, map = true, count = true,
  find = true, findIndex = true, findLast = true, findLastIndex = true }

local function tok_text(t)
  if t.kind == "eof" then return "end of expression" end
  if t.kind == "str" then return fmt("%q", t.value) end
  if t.kind == "nil" then return "nil" end
  return tostring(t.value)
end

local function parse(toks)
  local pos = 1
  local closure_depth = 0
  local function cur() return toks[pos] end
  local function fail(t, msg)
    t = t or toks[pos]
    local default = t.kind == "eof" and "unexpected end of expression" or ("unexpected token '" .. tok_text(t) .. "'")
    error({ msg = (msg or default) .. " at column " .. t.col })
  end
  local function is_op(v, t) t = t or toks[pos]; return t.kind == "op" and t.value == v end
  local function expect(v)
    if not is_op(v) then fail(nil, "expected '" .. v .. "', found '" .. tok_text(toks[pos]) .. "'") end
    pos = pos + 1
  end

  local parse_expr

  local function parse_args(close)
    local args = {}
    if is_op(close) then pos = pos + 1 return args end
    while true do
      args[#args + 1] = parse_expr(0)
      if is_op(",") then
        pos = pos + 1
        if is_op(close) then pos = pos + 1 return args end -- trailing comma
      else
        expect(close)
        return args
      end
    end
  end

  local function parse_postfix(node)
    while true do
      local t = cur()
      if is_op(".") or is_op("?.") then
        local optional = t.value == "?."
        pos = pos + 1
        local nt = cur()
        if optional and is_op("[") then
          pos = pos + 1
          local key = parse_expr(0)
          expect("]")
          node = { op = "member", obj = node, key = key, optional = true, col = t.col }
        else
          if nt.kind ~= "ident" and not (nt.kind == "op" and KEYWORD_OPS[nt.value]) and nt.kind ~= "bool" and nt.kind ~= "nil" then
            fail(nt, "expected name")
          end
          pos = pos + 1
          local name = nt.kind == "bool" and tostring(nt.value) or (nt.kind == "nil" and "nil" or nt.value)
          node = { op = "member", obj = node, key = { op = "lit", value = name }, optional = optional, col = nt.col, name = name }
          if is_op("(") then
            pos = pos + 1
            node = { op = "call", callee = node, args = parse_args(")"), col = nt.col }
          end
        end
      elseif is_op("[") then
        pos = pos + 1
        if is_op(":") then
          pos = pos + 1
          local to
          if not is_op("]") then to = parse_expr(0) end
          expect("]")
          node = { op = "slice", obj = node, to = to, col = t.col }
        else
          local from = parse_expr(0)
          if is_op(":") then
            pos = pos + 1
            local to
            if not is_op("]") then to = parse_expr(0) end
            expect("]")
            node = { op = "slice", obj = node, from = from, to = to, col = t.col }
          else
            expect("]")
            node = { op = "member", obj = node, key = from, col = t.col }
          end
        end
      else
        return node
      end
    end
  end

  local function parse_closure()
    closure_depth = closure_depth + 1
    local braces = is_op("{")
    if braces then pos = pos + 1 end
    local body = parse_expr(0)
    if braces then expect("}") end
    closure_depth = closure_depth - 1
    return body
  end

  local function parse_primary()
    local t = cur()
    if t.kind == "op" and UNARY[t.value] then
      pos = pos + 1
      local e = parse_expr(UNARY[t.value])
      return parse_postfix({ op = "unary", sym = t.value, e = e, col = t.col })
    end
    if is_op("(") then
      pos = pos + 1
      local e = parse_expr(0)
      expect(")")
      return parse_postfix(e)
    end
    pos = pos + 1
    local node
    if t.kind == "num" then node = { op = "lit", value = t.value, int = t.int }
    elseif t.kind == "str" then node = { op = "lit", value = t.value }
    elseif t.kind == "bool" then node = { op = "lit", value = t.value }
    elseif t.kind == "nil" then node = { op = "lit", value = nil }
    elseif t.kind == "ident" then
      if is_op("(") then
        pos = pos + 1
        local name = t.value
        if PREDICATES[name] then
          local arr = parse_expr(0)
          expect(",")
          local body = parse_closure()
          if is_op(",") then pos = pos + 1 end
          expect(")")
          node = { op = "predicate", name = name, arr = arr, body = body, col = t.col }
        elseif B[name] then
          node = { op = "builtin", name = name, args = parse_args(")"), col = t.col }
        elseif ENV_HELPERS[name] then
          node = { op = "helper", name = name, args = parse_args(")"), col = t.col }
        else
          node = { op = "call", callee = { op = "ident", name = name }, args = parse_args(")"), col = t.col }
        end
      else
        node = { op = "ident", name = t.value, col = t.col }
      end
    elseif t.kind == "op" and t.value == "#" then
      if closure_depth == 0 then fail(t, "cannot use pointer accessor outside closure") end
      node = { op = "pointer", col = t.col }
    elseif t.kind == "op" and t.value == "." then
      if closure_depth == 0 then fail(t) end
      local nt = cur()
      if nt.kind ~= "ident" then fail(nt, "expected name") end
      pos = pos + 1
      node = { op = "member", obj = { op = "pointer" }, key = { op = "lit", value = nt.value }, col = nt.col }
    elseif t.kind == "op" and t.value == "[" then
      node = { op = "array", items = parse_args("]"), col = t.col }
    elseif t.kind == "op" and t.value == "{" then
      local entries = {}
      while not is_op("}") do
        local kt = cur()
        local key
        if kt.kind == "ident" or kt.kind == "str" then key = { op = "lit", value = kt.value }; pos = pos + 1
        elseif kt.kind == "num" then key = { op = "lit", value = go_v(kt.value) }; pos = pos + 1
        elseif is_op("(") then pos = pos + 1; key = parse_expr(0); expect(")")
        else fail(kt, "a map key must be a quoted string, a number, a identifier, or an expression enclosed in parentheses") end
        expect(":")
        entries[#entries + 1] = { key, parse_expr(0) }
        if is_op(",") then pos = pos + 1 elseif not is_op("}") then fail() end
      end
      pos = pos + 1
      node = { op = "map", entries = entries, col = t.col }
    else
      pos = pos - 1
      fail(t)
    end
    return parse_postfix(node)
  end

  local function parse_conditional(node)
    while is_op("?") do
      local t = cur()
      pos = pos + 1
      local a, b
      if is_op(":") then
        pos = pos + 1
        a = node
        b = parse_expr(0)
      else
        a = parse_expr(0)
        expect(":")
        b = parse_expr(0)
      end
      node = { op = "cond", c = node, a = a, b = b, col = t.col }
    end
    return node
  end

  function parse_expr(prec)
    local left = parse_primary()
    while true do
      local t = cur()
      if t.kind ~= "op" then break end
      local negate = false
      local opt = t
      if t.value == "not" then
        local nt = toks[pos + 1]
        if nt.kind == "op" and NEGATABLE[nt.value] then
          negate = true
          opt = nt
        else
          break
        end
      end
      local op = BINARY[opt.value]
      if not op or op[1] < prec then break end
      pos = pos + (negate and 2 or 1)
      local right = op[2] and parse_expr(op[1]) or parse_expr(op[1] + 1)
      left = { op = "bin", sym = opt.value, l = left, r = right, col = opt.col }
      if negate then left = { op = "unary", sym = "not", e = left, col = t.col } end
    end
    if prec == 0 then left = parse_conditional(left) end
    return left
  end

  local ok, res = pcall(function()
    local node = parse_expr(0)
    if toks[pos].kind ~= "eof" then fail() end
    return node
  end)
  if not ok then
    if type(res) == "table" and res.msg then return nil, res.msg end
    error(res, 0)
  end
  return res
end

---------------------------------------------------------------------------------------------
-- Code generation
---------------------------------------------------------------------------------------------

local luagen = require "herald.luagen"
local lua_string, lua_literal = luagen.string, luagen.scalar

local BIN_HELPER = { ["<"] = "L.lt", ["<="] = "L.le", [">"] = "L.gt", [">="] = "L.ge", ["+"] = "L.add",
  ["-"] = "L.sub", ["*"] = "L.mul", ["/"] = "L.div", ["%"] = "L.mod", ["**"] = "L.pow", ["^"] = "L.pow",
  ["in"] = "L.in_", contains = "L.contains", startsWith = "L.starts", endsWith = "L.ends",
  [".."] = "L.range", matches = "L.matches" }

local function generate(root)
  local out, header = {}, {}
  local depth, ntmp, nconst = 1, 0, 0
  local static = {}
  local pointers = {} -- stack of loop item variables
  local names, seen = {}, {}

  local function emit(line) out[#out + 1] = ("  "):rep(depth) .. line end
  local function tmp() ntmp = ntmp + 1; return "t" .. ntmp end
  local function const(code)
    nconst = nconst + 1
    header[#header + 1] = "local K" .. nconst .. " = " .. code
    return "K" .. nconst
  end
  local function typed(t, ty) static[t] = ty; return t end

  local gen

  local function gen_args(args)
    local vals = {}
    for i, a in ipairs(args) do vals[i] = gen(a) end
    return concat(vals, ", ")
  end

  -- a postfix chain with ?. : the whole chain is nil when an optional link meets nil
  local function has_optional(n)
    while n.op == "member" or n.op == "slice" or (n.op == "call" and n.callee.op == "member") do
      if n.optional then return true end
      n = n.op == "call" and n.callee or n.obj
    end
    return false
  end

  local chain_exit = {} -- stack: true when inside a chain's repeat block

  local function gen_member(n)
    local obj = gen(n.obj)
    if n.optional then
      emit("if " .. obj .. " == nil or " .. obj .. " == NULL then break end")
    end
    local key = gen(n.key)
    local t = tmp()
    emit("local " .. t .. " = L.fetch(" .. obj .. ", " .. key .. ")")
    return t
  end

  function gen(n)
    local op = n.op
    if op == "lit" then
      local text = lua_literal(n.value)
      if n.value ~= nil then static[text] = type(n.value) end
      return text
    end
    if op == "ident" then
      local name = n.name
      if name == "sprig" then return "L.sprig_table" end
      if not seen[name] then seen[name] = true; names[#names + 1] = name end
      local t = tmp()
      emit("local " .. t .. " = e[" .. lua_string(name) .. "]")
      return t
    end
    if op == "pointer" then
      local p = pointers[#pointers]
      if not p then error({ msg = "cannot use pointer accessor outside closure" }) end
      return p
    end
    if (op == "member" or op == "slice" or op == "call") and has_optional(n) and not n.in_chain then
      local t = tmp()
      emit("local " .. t)
      emit("repeat")
      depth = depth + 1
      local link = n
      while link.op == "member" or link.op == "slice" or link.op == "call" do
        link.in_chain = true
        if link.op == "call" then
          if link.callee.op ~= "member" then break end
          link = link.callee
        else
          link = link.obj
        end
      end
      local v = gen(n)
      emit(t .. " = " .. v)
      depth = depth - 1
      emit("until true")
      return t
    end
    if op == "member" then return gen_member(n) end
    if op == "slice" then
      local obj = gen(n.obj)
      local from = n.from and gen(n.from) or "nil"
      local to = n.to and gen(n.to) or "nil"
      local t = tmp()
      emit("local " .. t .. " = L.slice(" .. obj .. ", " .. from .. ", " .. to .. ")")
      return t
    end
    if op == "array" then
      local t = tmp()
      local vals = {}
      for i, it in ipairs(n.items) do
        local v = gen(it)
        vals[i] = static[v] and v or ("(" .. v .. " == nil and NULL or " .. v .. ")")
      end
      emit("local " .. t .. " = L.new_array()")
      for i, v in ipairs(vals) do emit(t .. "[" .. i .. "] = " .. v) end
      return t
    end
    if op == "map" then
      local t = tmp()
      emit("local " .. t .. " = {}")
      for _, kv in ipairs(n.entries) do
        local k = gen(kv[1])
        local v = gen(kv[2])
        emit(t .. "[L.S(" .. k .. ")] = (" .. v .. " == nil and NULL or " .. v .. ")")
      end
      return t
    end
    if op == "unary" then
      local v = gen(n.e)
      local t = tmp()
      if n.sym == "not" or n.sym == "!" then
        emit("local " .. t .. " = not " .. (static[v] == "boolean" and v or ("B(" .. v .. ")")))
        return typed(t, "boolean")
      elseif n.sym == "-" then
        emit("local " .. t .. " = " .. (static[v] == "number" and ("-" .. v) or ("L.neg(" .. v .. ")")))
        return typed(t, "number")
      else
        emit("local " .. t .. " = " .. (static[v] == "number" and v or ("L.plus(" .. v .. ")")))
        return typed(t, "number")
      end
    end
    if op == "cond" then
      local c = gen(n.c)
      local t = tmp()
      emit("local " .. t)
      emit("if " .. (static[c] == "boolean" and c or ("B(" .. c .. ")")) .. " then")
      depth = depth + 1
      -- `c ?: b` shares one node as condition and value: reuse its value (generating it
      -- twice would find its ?. chain already marked and emit a `break` outside the loop)
      local a = n.a == n.c and c or gen(n.a)
      emit(t .. " = " .. a)
      depth = depth - 1
      emit("else")
      depth = depth + 1
      local b = gen(n.b)
      emit(t .. " = " .. b)
      depth = depth - 1
      emit("end")
      return t
    end
    if op == "builtin" then
      local t = tmp()
      emit("local " .. t .. " = BI[" .. lua_string(n.name) .. "](" .. gen_args(n.args) .. ")")
      return t
    end
    if op == "helper" then
      local t = tmp()
      emit("local " .. t .. " = " .. ENV_HELPERS[n.name] .. "(" .. gen_args(n.args) .. ")")
      return t
    end
    if op == "call" then
      local callee = n.callee
      local t = tmp()
      if callee.op == "member" and callee.obj.op == "ident" and callee.obj.name == "sprig" and callee.key.op == "lit" then
        emit("local " .. t .. " = L.sprig(" .. lua_string(callee.key.value) .. (#n.args > 0 and ", " or "") .. gen_args(n.args) .. ")")
        return t
      end
      local f = gen(callee)
      local label = callee.op == "ident" and callee.name or (callee.name or "value")
      emit("local " .. t .. " = L.call(" .. f .. ", " .. lua_string(label) .. (#n.args > 0 and ", " or "") .. gen_args(n.args) .. ")")
      return t
    end
    if op == "predicate" then
      local arr = gen(n.arr)
      local t = tmp()
      local a = tmp()
      local i = tmp()
      local it = tmp()
      local name = n.name
      emit("local " .. a .. " = L.iter(" .. arr .. ", " .. lua_string(name) .. ")")
      if name == "all" or name == "none" then emit("local " .. t .. " = true")
      elseif name == "any" then emit("local " .. t .. " = false")
      elseif name == "one" or name == "count" then emit("local " .. t .. " = 0")
      elseif name == "filter" or name == "map" then emit("local " .. t .. " = L.new_array()")
      elseif name == "findIndex" or name == "findLastIndex" then emit("local " .. t .. " = -1")
      else emit("local " .. t) end
      if name == "findLast" or name == "findLastIndex" then
        emit("for " .. i .. " = #" .. a .. ", 1, -1 do")
      else
        emit("for " .. i .. " = 1, #" .. a .. " do")
      end
      depth = depth + 1
      emit("local " .. it .. " = " .. a .. "[" .. i .. "]")
      emit("if " .. it .. " == NULL then " .. it .. " = nil end")
      pointers[#pointers + 1] = it
      local v = gen(n.body)
      pointers[#pointers] = nil
      local bv = static[v] == "boolean" and v or ("B(" .. v .. ")")
      if name == "all" then emit("if not " .. bv .. " then " .. t .. " = false break end")
      elseif name == "none" then emit("if " .. bv .. " then " .. t .. " = false break end")
      elseif name == "any" then emit("if " .. bv .. " then " .. t .. " = true break end")
      elseif name == "one" or name == "count" then emit("if " .. bv .. " then " .. t .. " = " .. t .. " + 1 end")
      elseif name == "filter" then emit("if " .. bv .. " then " .. t .. "[#" .. t .. " + 1] = " .. a .. "[" .. i .. "] end")
      elseif name == "map" then emit(t .. "[" .. i .. "] = (" .. v .. " == nil and NULL or " .. v .. ")")
      elseif name == "find" or name == "findLast" then emit("if " .. bv .. " then " .. t .. " = " .. it .. " break end")
      else emit("if " .. bv .. " then " .. t .. " = " .. i .. " - 1 break end") end
      depth = depth - 1
      emit("end")
      if name == "one" then
        local r = tmp()
        emit("local " .. r .. " = " .. t .. " == 1")
        return typed(r, "boolean")
      end
      if name == "all" or name == "none" or name == "any" then return typed(t, "boolean") end
      if name == "count" or name == "findIndex" or name == "findLastIndex" then return typed(t, "number") end
      return t
    end
    assert(op == "bin", op)
    local sym = n.sym
    local t = tmp()
    if sym == "and" or sym == "&&" or sym == "or" or sym == "||" then
      local l = gen(n.l)
      emit("local " .. t .. " = " .. (static[l] == "boolean" and l or ("B(" .. l .. ")")))
      emit(((sym == "and" or sym == "&&") and "if " or "if not ") .. t .. " then")
      depth = depth + 1
      local r = gen(n.r)
      emit(t .. " = " .. (static[r] == "boolean" and r or ("B(" .. r .. ")")))
      depth = depth - 1
      emit("end")
      return typed(t, "boolean")
    end
    if sym == "??" then
      local l = gen(n.l)
      emit("local " .. t .. " = " .. l)
      emit("if " .. t .. " == nil or " .. t .. " == NULL then")
      depth = depth + 1
      local r = gen(n.r)
      emit(t .. " = " .. r)
      depth = depth - 1
      emit("end")
      return t
    end
    if sym == "matches" and n.r.op == "lit" and type(n.r.value) == "string" then
      local l = gen(n.l)
      local re = const("L.const_regex(" .. lua_string(n.r.value) .. ")")
      emit("local " .. t .. " = " .. re .. ":find(L.S(" .. l .. ")) == true")
      return typed(t, "boolean")
    end
    local l = gen(n.l)
    local r = gen(n.r)
    local sl, sr = static[l], static[r]
    if sym == "==" or sym == "!=" then
      local simple = (sl and sl ~= "table") or (sr and sr ~= "table")
      local cmp = simple and ("(" .. l .. " == " .. r .. ")") or ("L.eq(" .. l .. ", " .. r .. ")")
      emit("local " .. t .. " = " .. (sym == "!=" and "not " or "") .. cmp)
      return typed(t, "boolean")
    end
    if (sym == "<" or sym == ">" or sym == "<=" or sym == ">=") and sl and sl == sr and (sl == "number" or sl == "string") then
      emit("local " .. t .. " = " .. l .. " " .. sym .. " " .. r)
      return typed(t, "boolean")
    end
    if (sym == "+" or sym == "-" or sym == "*" or sym == "/") and sl == "number" and sr == "number" then
      emit("local " .. t .. " = " .. l .. " " .. sym .. " " .. r)
      return typed(t, "number")
    end
    emit("local " .. t .. " = " .. BIN_HELPER[sym] .. "(" .. l .. ", " .. r .. ")")
    if sym == "<" or sym == ">" or sym == "<=" or sym == ">=" or sym == "in" or sym == "matches"
      or sym == "contains" or sym == "startsWith" or sym == "endsWith" then
      return typed(t, "boolean")
    end
    if sym == "-" or sym == "*" or sym == "/" or sym == "%" or sym == "**" or sym == "^" then return typed(t, "number") end
    return t
  end

  local result = gen(root)
  emit("return " .. result)
  return header, out, names
end

---------------------------------------------------------------------------------------------
-- Public API
---------------------------------------------------------------------------------------------

L.sprig_table = setmetatable({}, { __index = function(_, k) return require("herald.sprig")[k] end })

---@class herald.exprlang.Compiled
---@field expr string the expression
---@field source string a Lua chunk; load(source)() returns the raw evaluator (raises on errors)
---@field names string[] top-level env names the expression reads
---@field fn fun(env: table): any, string? value, or nil and an error

--- Compiles an expr-lang expression to Lua.
---@param expr string
---@return herald.exprlang.Compiled|nil
---@return string? err parse error with its 1-based column
function _M.compile(expr)
  if type(expr) ~= "string" then return nil, "expression must be a string" end
  local ok, toks = pcall(lex, expr)
  if not ok then
    if type(toks) == "table" and toks.msg then return nil, toks.msg end
    error(toks, 0)
  end
  local ast, err = parse(toks)
  if not ast then return nil, err end
  -- constant patterns of `matches` are compiled now, as expr does
  local bad
  local function walk(n)
    if type(n) ~= "table" or bad then return end
    if n.op == "bin" and n.sym == "matches" and n.r.op == "lit" and type(n.r.value) == "string" then
      local re, rerr = GR.regex_compile(n.r.value)
      if not re then bad = "error parsing regexp: " .. tostring(rerr) .. " at column " .. (n.col or 1) end
    end
    for _, v in pairs(n) do if type(v) == "table" then walk(v) end end
  end
  walk(ast)
  if bad then return nil, bad end
  local gok, header, body, names = pcall(generate, ast)
  if not gok then
    if type(header) == "table" and header.msg then return nil, header.msg end
    error(header, 0)
  end
  local source, raw = luagen.evaluator("exprlang", expr, {
    "local L = require(\"herald.exprlang\").runtime",
    "local B, BI, NULL = L.B, L.builtins, L.NULL",
  }, header, "e", body)
  if not source then return nil, raw end
  local function fn(env)
    local rok, v = pcall(raw, env or {})
    if rok then
      if v == NULL then return nil end
      return v
    end
    if type(v) == "table" and v.expr_error then return nil, v.expr_error end
    return nil, tostring(v)
  end
  return { expr = expr, source = source, names = names, params = names, fn = fn, raw = raw }
end

--- Builds the env Argo's filterEvent builds from the event data: top-level keys with "-"
--- replaced by "_", then dotted top-level keys expanded into nested maps (bellows.Expand after
--- removeConflicts). The helpers (asInt, asFloat, toJson, jsonpath, sprig) are bound at
--- compile time and need not be in the env.
---@param data table decoded event data (a JSON object)
---@return table env
function _M.prepare_env(data)
  local flat = {}
  if type(data) ~= "table" then return flat end
  for k, v in pairs(data) do
    if type(k) == "string" then flat[(k:gsub("%-", "_"))] = v else flat[k] = v end
  end
  local keys = {}
  for k in pairs(flat) do if type(k) == "string" then keys[#keys + 1] = k end end
  sort(keys)
  -- removeConflicts: a key that is the parent of another ("a" and "a.b") is dropped
  for i = 1, #keys - 1 do
    if keys[i + 1]:sub(1, #keys[i] + 1) == keys[i] .. "." then flat[keys[i]] = nil end
  end
  local env = {}
  for k, v in pairs(flat) do
    if type(k) == "string" and k:find(".", 1, true) then
      local node = env
      local parts = {}
      for part in (k .. "."):gmatch("([^.]*)%.") do parts[#parts + 1] = part end
      for j = 1, #parts - 1 do
        local nxt = node[parts[j]]
        if type(nxt) ~= "table" then nxt = {}; node[parts[j]] = nxt end
        node = nxt
      end
      if node[parts[#parts]] == nil then node[parts[#parts]] = v end
    elseif env[k] == nil then
      env[k] = v
    end
  end
  return env
end

--- Argo's EvalBool: the result must be a bool.
---@param c herald.exprlang.Compiled
---@param env table
---@return boolean|nil
---@return string? err
function _M.eval_bool(c, env)
  local v, err = c.fn(env)
  if err then return nil, "unable to evaluate expression '" .. c.expr .. "': " .. err end
  if type(v) ~= "boolean" then
    return nil, "unable to cast expression result '" .. go_v(v) .. "' to bool"
  end
  return v
end

--- Compiles and evaluates once.
function _M.evaluate(expr, env)
  local c, err = _M.compile(expr)
  if not c then return nil, err end
  return c.fn(env or {})
end

return _M
