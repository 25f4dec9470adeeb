-- herald/gotemplate.lua: Go text/template (with the Sprig function map) compiled to Lua.
--
-- Argo Events evaluates Go templates in data filters (`template`, spec 4.4) and in trigger
-- parameters (`dataTemplate`, `contextTemplate`, spec 4.7). Herald compiles each template
-- once, at sensor load, into a Lua chunk (readable: `t.source`); rendering an event runs that
-- chunk and never parses. The generated code appends output parts to one reused buffer and
-- joins them with table.concat.
--
--   local tpl = require "herald.gotemplate"
--   local t, err = tpl.compile('{{ .Input.body.message | upper }}', { name = "param" })
--   local s, err = t:render({ Input = event_data })
--
-- Values are Lua values as lua-cjson decodes them (tables, 1-based arrays, cjson.null). A Lua
-- nil is Go's "no value" (a missing map key); cjson.null is a nil interface. Herald has one
-- number type: integral numbers below 1e21 print without decimals, others as Go's %v.
-- Errors: parse errors "template: NAME:LINE:COL: msg", runtime errors
-- "template: NAME:LINE:COL: executing \"NAME\" at <node>: msg" (COL is the 0-based byte
-- offset in the line, as Go's ErrorContext). Render errors are returned, never raised.
local cjson = require "cjson"
local json = require "herald.json"
local luagen = require "herald.luagen"

local type, tostring, tonumber, pairs, select, error = type, tostring, tonumber, pairs, select, error
local getmetatable, setmetatable, next, pcall = getmetatable, setmetatable, next, pcall
local ipairs, unpack, loadstring, setfenv = ipairs, unpack, loadstring, setfenv
local floor, huge = math.floor, math.huge
local fmt, byte, char, sub, find, gsub, rep = string.format, string.byte, string.char, string.sub,
  string.find, string.gsub, string.rep
local concat, sort, insert = table.concat, table.sort, table.insert
local null = cjson.null

local _M = {}

_M.null = null

-------------------------------------------------------------------------------------------
-- Values: kinds, Go type names, printing (fmt %v)
-------------------------------------------------------------------------------------------

--- True when a table is a list (herald.json.is_array).
local is_list = json.is_array
_M.is_list = is_list

--- The metatable of a value with a Go type of its own (sprig's time values), nil for plain
--- values: lists marked by herald.json are plain.
local ARRAY_MT = json.ARRAY_MT
local function typed(v)
  local mt = getmetatable(v)
  if mt ~= ARRAY_MT then return mt end
end
_M.typed = typed

--- Go type name of a value, for error messages.
local function type_name(v)
  local t = type(v)
  if t == "string" then return "string" end
  if t == "number" then return "float64" end
  if t == "boolean" then return "bool" end
  if v == nil or v == null then return "<nil>" end
  if t == "table" then
    local mt = typed(v)
    if mt and mt.__name then return mt.__name end
    if is_list(v) then return "[]interface {}" end
    return "map[string]interface {}"
  end
  if t == "function" then return "func" end
  return t
end
_M.type_name = type_name

--- strconv's shortest 'g' layout (herald.json.format_g).
local format_g = json.format_g

--- A number as Herald's templates print it (herald.json.format_print, docs/compat.md).
local fmt_num = json.format_print
_M.fmt_num = fmt_num

local fmt_v

local function sorted_keys(t)
  local keys, n = {}, 0
  for k in pairs(t) do
    n = n + 1
    keys[n] = k
  end
  local ok = pcall(sort, keys)
  if not ok then
    sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  end
  return keys, n
end
_M.sorted_keys = sorted_keys

--- fmt.Sprint of one value (nil prints "<nil>", maps "map[k:v]", lists "[a b]").
function fmt_v(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return fmt_num(v) end
  if t == "boolean" then return v and "true" or "false" end
  if v == nil or v == null then return "<nil>" end
  if t == "table" then
    local mt = typed(v)
    if mt and mt.__tostring then return tostring(v) end
    if v[1] ~= nil or next(v) == nil then
      local parts = {}
      for i = 1, #v do parts[i] = fmt_v(v[i]) end
      return "[" .. concat(parts, " ") .. "]"
    end
    local keys, n = sorted_keys(v)
    local parts = {}
    for i = 1, n do
      local k = keys[i]
      parts[i] = fmt_v(k) .. ":" .. fmt_v(v[k])
    end
    return "map[" .. concat(parts, " ") .. "]"
  end
  return tostring(v)
end
_M.fmt_v = fmt_v

--- Output of an action: as fmt_v, except that nil (no value, or a nil interface) prints
--- "<no value>" (text/template printValue after evalPipeline's interface unwrapping).
local function pr(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return fmt_num(v) end
  if v == nil or v == null then return "<no value>" end
  return fmt_v(v)
end
_M.print_value = pr

--- Go's truth (text/template isTrue): false, 0, "", empty collections and nil are false.
local function truth(v)
  if v == nil or v == false or v == null then return false end
  local t = type(v)
  if t == "string" then return v ~= "" end
  if t == "number" then return v ~= 0 end
  if t == "table" then
    if typed(v) then return true end
    return next(v) ~= nil
  end
  return true
end
_M.truth = truth

-------------------------------------------------------------------------------------------
-- UTF-8 and string escapes
-------------------------------------------------------------------------------------------

local function utf8_char(c)
  if c < 0 or c > 0x10FFFF or (c >= 0xD800 and c <= 0xDFFF) then c = 0xFFFD end
  if c < 0x80 then return char(c) end
  if c < 0x800 then return char(0xC0 + floor(c / 64), 0x80 + c % 64) end
  if c < 0x10000 then
    return char(0xE0 + floor(c / 4096), 0x80 + floor(c / 64) % 64, 0x80 + c % 64)
  end
  return char(0xF0 + floor(c / 262144), 0x80 + floor(c / 4096) % 64, 0x80 + floor(c / 64) % 64,
    0x80 + c % 64)
end
_M.utf8_char = utf8_char

--- Decodes the UTF-8 sequence at i; returns code point and next index (0xFFFD, i+1 if bad).
local function utf8_decode(s, i)
  local c = byte(s, i)
  if not c then return nil, i end
  if c < 0x80 then return c, i + 1 end
  local n, cp
  if c >= 0xF0 and c < 0xF8 then n, cp = 3, c - 0xF0
  elseif c >= 0xE0 then n, cp = 2, c - 0xE0
  elseif c >= 0xC0 then n, cp = 1, c - 0xC0
  else return 0xFFFD, i + 1 end
  for j = 1, n do
    local b = byte(s, i + j)
    if not b or b < 0x80 or b >= 0xC0 then return 0xFFFD, i + 1 end
    cp = cp * 64 + (b - 0x80)
  end
  return cp, i + n + 1
end
_M.utf8_decode = utf8_decode

local function utf8_len(s)
  local n, i, len = 0, 1, #s
  while i <= len do
    local _
    _, i = utf8_decode(s, i)
    n = n + 1
  end
  return n
end
_M.utf8_len = utf8_len

local QUOTE_ESC = { [7] = "\\a", [8] = "\\b", [12] = "\\f", [10] = "\\n", [13] = "\\r",
  [9] = "\\t", [11] = "\\v", [92] = "\\\\", [34] = '\\"' }

--- strconv.Quote (printable non-ASCII runes kept as they are).
local function go_quote(s)
  local out, n, i, len = { '"' }, 1, 1, #s
  while i <= len do
    local c = byte(s, i)
    if c < 0x80 then
      local e = QUOTE_ESC[c]
      n = n + 1
      if e then out[n] = e
      elseif c < 32 or c == 127 then out[n] = fmt("\\x%02x", c)
      else out[n] = char(c) end
      i = i + 1
    else
      local cp, ni = utf8_decode(s, i)
      n = n + 1
      if cp == 0xFFFD and sub(s, i, ni - 1) ~= "\239\191\189" then
        out[n] = fmt("\\x%02x", c)
      else
        out[n] = sub(s, i, ni - 1)
      end
      i = ni
    end
  end
  out[n + 1] = '"'
  return concat(out)
end
_M.go_quote = go_quote

-------------------------------------------------------------------------------------------
-- fmt.Sprintf
-------------------------------------------------------------------------------------------

local function pad(s, spec, numeric)
  local w = spec.width
  if not w then return s end
  local len = utf8_len(s)
  if len >= w then return s end
  if spec.minus then return s .. rep(" ", w - len) end
  if spec.zero and numeric then
    local sign = s:match("^[-+ ]")
    if sign then return sign .. rep("0", w - len) .. sub(s, 2) end
    return rep("0", w - len) .. s
  end
  return rep(" ", w - len) .. s
end

local function sign_of(neg, spec)
  if neg then return "-" end
  if spec.plus then return "+" end
  if spec.space then return " " end
  return ""
end

local function int_digits(x, base, upper)
  x = floor(x)
  if base == 10 then return fmt("%.0f", x) end
  if x == 0 then return "0" end
  local digits = upper and "0123456789ABCDEF" or "0123456789abcdef"
  local out, n = {}, 0
  while x > 0 do
    local d = x % base
    n = n + 1
    out[n] = sub(digits, d + 1, d + 1)
    x = (x - d) / base
  end
  local r = {}
  for i = n, 1, -1 do r[#r + 1] = out[i] end
  return concat(r)
end

local function bad_verb(verb, v)
  if v == nil or v == null then return "%!" .. verb .. "(<nil>)" end
  return "%!" .. verb .. "(" .. type_name(v) .. "=" .. fmt_v(v) .. ")"
end

local function fmt_integer(x, verb, spec)
  local neg = x < 0
  local a = neg and -x or x
  local base = (verb == "x" or verb == "X") and 16 or verb == "o" and 8 or verb == "b" and 2 or 10
  local d = int_digits(a, base, verb == "X")
  if spec.prec and #d < spec.prec then d = rep("0", spec.prec - #d) .. d end
  if spec.sharp then
    if verb == "x" then d = "0x" .. d elseif verb == "X" then d = "0X" .. d
    elseif verb == "o" and sub(d, 1, 1) ~= "0" then d = "0" .. d end
  end
  return pad(sign_of(neg, spec) .. d, spec, not spec.prec)
end

local function fmt_float(x, verb, spec)
  if x ~= x or x == huge or x == -huge then
    local s = x ~= x and "NaN" or (x > 0 and (spec.plus and "+Inf" or "Inf")) or "-Inf"
    return pad(s, spec, false)
  end
  local neg = x < 0 or (x == 0 and 1 / x < 0)
  local a = neg and -x or x
  local s
  if verb == "g" or verb == "G" then
    if spec.prec then
      s = fmt("%." .. spec.prec .. (verb == "G" and "G" or "g"), a)
    else
      s = format_g(a, -4, 6, verb == "G")
    end
  elseif verb == "v" then
    s = fmt_num(a)
  else
    local v = verb == "F" and "f" or verb
    s = fmt("%." .. (spec.prec or 6) .. v, a)
  end
  return pad(sign_of(neg, spec) .. s, spec, true)
end

local function fmt_one(verb, v, spec)
  local t = type(v)
  if verb == "T" then return pad(type_name(v), spec) end
  if t == "string" then
    if verb == "s" or verb == "v" then
      if spec.prec then
        local out, i, k = {}, 1, 0
        while i <= #v and k < spec.prec do
          local _, ni = utf8_decode(v, i)
          out[#out + 1] = sub(v, i, ni - 1)
          i, k = ni, k + 1
        end
        v = concat(out)
      end
      return pad(v, spec)
    elseif verb == "q" then
      return pad(go_quote(v), spec)
    elseif verb == "x" or verb == "X" then
      local f = verb == "x" and "%02x" or "%02X"
      local out = {}
      for i = 1, #v do out[i] = fmt(f, byte(v, i)) end
      return pad(concat(out, spec.space and " " or ""), spec)
    end
    return bad_verb(verb, v)
  elseif t == "number" then
    if verb == "v" or verb == "s" then
      if spec.plus or spec.space or spec.zero then return fmt_float(v, "v", spec) end
      return pad(fmt_num(v), spec)
    elseif verb == "d" or verb == "x" or verb == "X" or verb == "o" or verb == "b" then
      if v == floor(v) and v > -1e21 and v < 1e21 then return fmt_integer(v, verb, spec) end
      if verb == "x" or verb == "X" or verb == "b" then
        return pad(format_g(v, -4, 21), spec)
      end
      return bad_verb(verb, v)
    elseif verb == "e" or verb == "E" or verb == "f" or verb == "F" or verb == "g" or verb == "G" then
      return fmt_float(v, verb, spec)
    elseif verb == "c" then
      return pad(utf8_char(floor(v)), spec)
    elseif verb == "q" then
      if v == floor(v) then
        local c = utf8_char(floor(v))
        if c == "'" then return pad("'\\''", spec) end
        local q = go_quote(c)
        return pad("'" .. sub(q, 2, -2):gsub('\\"', '"') .. "'", spec)
      end
      return bad_verb(verb, v)
    elseif verb == "U" then
      return pad(fmt("U+%04X", floor(v)), spec)
    end
    return bad_verb(verb, v)
  elseif t == "boolean" then
    if verb == "t" or verb == "v" then return pad(v and "true" or "false", spec) end
    return bad_verb(verb, v)
  elseif v == nil or v == null then
    if verb == "v" then return pad("<nil>", spec) end
    return bad_verb(verb, v)
  else
    if verb == "v" or verb == "s" or verb == "q" or verb == "d" then return pad(fmt_v(v), spec) end
    return bad_verb(verb, v)
  end
end

--- Go's fmt.Sprintf with one number type (see the module header for %d and %s of numbers).
---@param f string
---@return string
local function sprintf(f, ...)
  local nargs = select("#", ...)
  local args = { ... }
  local out, n = {}, 0
  local argi = 1
  local i, len = 1, #f
  while i <= len do
    local j = find(f, "%", i, true)
    if not j then
      n = n + 1; out[n] = sub(f, i)
      break
    end
    if j > i then n = n + 1; out[n] = sub(f, i, j - 1) end
    i = j + 1
    local spec = {}
    while true do
      local c = sub(f, i, i)
      if c == "-" then spec.minus = true
      elseif c == "+" then spec.plus = true
      elseif c == "#" then spec.sharp = true
      elseif c == " " then spec.space = true
      elseif c == "0" then spec.zero = true
      else break end
      i = i + 1
    end
    if sub(f, i, i) == "*" then
      local w = args[argi]; argi = argi + 1
      if type(w) == "number" then
        spec.width = floor(w)
        if spec.width < 0 then spec.minus = true; spec.width = -spec.width end
      else
        n = n + 1; out[n] = "%!(BADWIDTH)"
      end
      i = i + 1
    else
      local w = f:match("^%d+", i)
      if w then spec.width = tonumber(w); i = i + #w end
    end
    if sub(f, i, i) == "." then
      i = i + 1
      if sub(f, i, i) == "*" then
        local p = args[argi]; argi = argi + 1
        if type(p) == "number" and p >= 0 then spec.prec = floor(p)
        else n = n + 1; out[n] = "%!(BADPREC)" end
        i = i + 1
      else
        local p = f:match("^%d+", i)
        spec.prec = p and tonumber(p) or 0
        if p then i = i + #p end
      end
    end
    if i > len then
      n = n + 1; out[n] = "%!(NOVERB)"
      break
    end
    local verb = sub(f, i, i)
    local vc = byte(verb)
    if vc and vc >= 0x80 then
      local _, ni = utf8_decode(f, i)
      verb = sub(f, i, ni - 1)
      i = ni
    else
      i = i + 1
    end
    if verb == "%" then
      n = n + 1; out[n] = "%"
    elseif argi > nargs then
      n = n + 1; out[n] = "%!" .. verb .. "(MISSING)"
    else
      local v = args[argi]
      argi = argi + 1
      n = n + 1
      out[n] = fmt_one(verb, v, spec)
    end
  end
  if argi <= nargs then
    local extra = {}
    for k = argi, nargs do
      local v = args[k]
      if v == nil or v == null then extra[#extra + 1] = "<nil>"
      else extra[#extra + 1] = type_name(v) .. "=" .. fmt_v(v) end
    end
    n = n + 1; out[n] = "%!(EXTRA " .. concat(extra, ", ") .. ")"
  end
  return concat(out, "", 1, n)
end
_M.sprintf = sprintf

-------------------------------------------------------------------------------------------
-- Runtime errors and builtin functions
-------------------------------------------------------------------------------------------

--- Raises a template error at position index p (nil: the current command).
local function fail(p, msg)
  error({ p = p, msg = msg }, 0)
end
_M.fail = fail

--- Raises an argument-type error as Go's evalArg does ("wrong type for value; ...").
local function arg_error(expected, v)
  if v == nil or v == null then
    error({ msg = "invalid value; expected " .. expected }, 0)
  end
  error({ msg = "wrong type for value; expected " .. expected .. "; got " .. type_name(v) }, 0)
end
_M.arg_error = arg_error

--- Field access `.name` on a value (text/template evalField on maps).
local function fld(v, name, p)
  if type(v) == "table" then
    local r = v[name]
    if r ~= nil then return r end
    if typed(v) == nil and v[1] ~= nil then
      fail(p, "can't evaluate field " .. name .. " in type []interface {}")
    end
    return nil
  end
  if v == nil then return nil end
  if v == null then fail(p, "nil pointer evaluating interface {}." .. name) end
  fail(p, "can't evaluate field " .. name .. " in type " .. type_name(v))
end
_M.field = fld

--- Prepares a range: returns the collection, sorted keys (maps) and the count.
local function rng(v, p)
  if v == nil or v == null then return nil, nil, 0 end
  local t = type(v)
  if t == "table" and not typed(v) then
    if v[1] ~= nil then return v, nil, #v end
    if next(v) == nil then return nil, nil, 0 end
    local keys, n = sorted_keys(v)
    return v, keys, n
  end
  if t == "number" and v == floor(v) then
    return nil, nil, v > 0 and v or 0
  end
  fail(p, "range can't iterate over " .. fmt_v(v))
end

local B = {}   -- builtin functions, by Go name

local ERR_BAD_CMP_TYPE = "invalid type for comparison"
local ERR_BAD_CMP = "incompatible types for comparison"

local function basic_kind(v)
  local t = type(v)
  if t == "number" or t == "string" or t == "boolean" then return t end
  if v == nil or v == null then return "nil" end
  return "complex"
end

local function eq2(a, b)
  local ka, kb = basic_kind(a), basic_kind(b)
  if ka ~= kb then
    if ka == "nil" or kb == "nil" then return false end
    error(ERR_BAD_CMP, 0)
  end
  if ka == "nil" then return true end
  if ka == "complex" then
    error("non-comparable type " .. fmt_v(a) .. ": " .. type_name(a), 0)
  end
  return a == b
end

function B.eq(a, ...)
  local n = select("#", ...)
  if n == 0 then error("missing argument for comparison", 0) end
  for i = 1, n do
    if eq2(a, (select(i, ...))) then return true end
  end
  return false
end

function B.ne(a, b) return not eq2(a, b) end

local function less(a, b)
  local ka, kb = basic_kind(a), basic_kind(b)
  if ka == "nil" or ka == "complex" or ka == "boolean" then error(ERR_BAD_CMP_TYPE, 0) end
  if kb == "nil" or kb == "complex" or kb == "boolean" then error(ERR_BAD_CMP_TYPE, 0) end
  if ka ~= kb then error(ERR_BAD_CMP, 0) end
  return a < b
end

function B.lt(a, b) return less(a, b) end
function B.le(a, b) return less(a, b) or eq2(a, b) end
function B.gt(a, b) return not (less(a, b) or eq2(a, b)) end
function B.ge(a, b) return not less(a, b) end

function B.len(v)
  local t = type(v)
  if t == "string" then return #v end
  if t == "table" and not typed(v) then
    if v[1] ~= nil or next(v) == nil then return #v end
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    return n
  end
  if v == nil or v == null then error("len of nil pointer", 0) end
  error("len of type " .. type_name(v), 0)
end

local function int_index(x, cap, what)
  if type(x) ~= "number" then
    error("cannot index " .. what .. " with type " .. type_name(x), 0)
  end
  if x ~= floor(x) then error("cannot index " .. what .. " with type float64", 0) end
  if x < 0 or x >= cap then error("index out of range: " .. fmt_num(x), 0) end
  return x
end

function B.index(item, ...)
  local n = select("#", ...)
  if item == nil then error("index of untyped nil", 0) end
  for i = 1, n do
    local k = select(i, ...)
    if item == nil or item == null then error("index of nil pointer", 0) end
    local t = type(item)
    if t == "string" then
      local x = int_index(k, #item, "slice/array")
      item = byte(item, x + 1)
    elseif t == "table" and not typed(item) then
      if is_list(item) and (type(k) == "number" or next(item) ~= nil) then
        local x = int_index(k, #item, "slice/array")
        item = item[x + 1]
      else
        if type(k) ~= "string" then
          if k == nil or k == null then error("value is nil; should be of type string", 0) end
          error("value has type " .. type_name(k) .. "; should be string", 0)
        end
        item = item[k]
      end
    else
      error("can't index item of type " .. type_name(item), 0)
    end
  end
  return item
end

function B.slice(item, ...)
  local n = select("#", ...)
  if item == nil or item == null then error("slice of untyped nil", 0) end
  if n > 3 then error("too many slice indexes: " .. n, 0) end
  local t = type(item)
  local cap
  if t == "string" then
    if n == 3 then error("cannot 3-index slice a string", 0) end
    cap = #item
  elseif t == "table" and is_list(item) and not typed(item) then
    cap = #item
  else
    error("can't slice item of type " .. type_name(item), 0)
  end
  local idx = { 0, cap }
  for i = 1, n do
    local x = select(i, ...)
    if type(x) ~= "number" or x ~= floor(x) then
      error("cannot index slice/array with type " .. type_name(x), 0)
    end
    if x < 0 or x > cap then error("index out of range: " .. fmt_num(x), 0) end
    idx[i] = x
  end
  if idx[1] > idx[2] then
    error("invalid slice index: " .. fmt_num(idx[1]) .. " > " .. fmt_num(idx[2]), 0)
  end
  if t == "string" then return sub(item, idx[1] + 1, idx[2]) end
  local out = {}
  for i = idx[1] + 1, idx[2] do out[#out + 1] = item[i] end
  return out
end

--- fmt.Sprint: spaces between operands when neither is a string.
local function sprint(...)
  local n = select("#", ...)
  local out, prev_str = {}, true
  for i = 1, n do
    local v = select(i, ...)
    local is_str = type(v) == "string"
    if i > 1 and not is_str and not prev_str then out[#out + 1] = " " end
    out[#out + 1] = fmt_v(v)
    prev_str = is_str
  end
  return concat(out)
end
_M.sprint = sprint

function B.print(...) return sprint(...) end

function B.println(...)
  local n = select("#", ...)
  local out = {}
  for i = 1, n do out[i] = fmt_v((select(i, ...))) end
  return concat(out, " ") .. "\n"
end

function B.printf(f, ...)
  if type(f) ~= "string" then arg_error("string", f) end
  return sprintf(f, ...)
end

-- html, js, urlquery stringify their arguments as text/template evalArgs does.
local function eval_args(...)
  local n = select("#", ...)
  if n == 1 then
    local v = ...
    if type(v) == "string" then return v end
  end
  local args = {}
  for i = 1, n do
    local v = select(i, ...)
    if v == nil or v == null then v = "<no value>" end
    args[i] = v
  end
  return sprint(unpack(args, 1, n))
end

local HTML_ESC = { ['"'] = "&#34;", ["'"] = "&#39;", ["&"] = "&amp;", ["<"] = "&lt;",
  [">"] = "&gt;", ["\0"] = "\239\191\189" }

function B.html(...)
  return (gsub(eval_args(...), "[\"'&<>%z]", HTML_ESC))
end

local JS_ESC = { ["\\"] = "\\\\", ["'"] = "\\'", ['"'] = '\\"', ["<"] = "\\u003C",
  [">"] = "\\u003E", ["&"] = "\\u0026", ["="] = "\\u003D" }

function B.js(...)
  local s = eval_args(...)
  return (gsub(s, "[%c\\'\"<>&=]", function(c)
    return JS_ESC[c] or fmt("\\u%04X", byte(c))
  end))
end

function B.urlquery(...)
  local s = eval_args(...)
  return (gsub(s, "[^%w%-_%.~]", function(c)
    if c == " " then return "+" end
    return fmt("%%%02X", byte(c))
  end))
end

function B.call(f, ...)
  if f == nil or f == null then error("call of nil", 0) end
  if type(f) ~= "function" then error("non-function of type " .. type_name(f), 0) end
  return (f(...))
end

function B.not_(v) return not truth(v) end

-- Argument counts of builtins: {min, max} (max nil = variadic). and/or/not are compiled inline.
local BUILTIN_ARITY = {
  ["and"] = { 1 }, ["or"] = { 1 }, ["not"] = { 1, 1 }, len = { 1, 1 }, index = { 1 },
  slice = { 1 }, print = { 0 }, printf = { 1 }, println = { 0 }, eq = { 1 }, ne = { 2, 2 },
  lt = { 2, 2 }, le = { 2, 2 }, gt = { 2, 2 }, ge = { 2, 2 }, html = { 0 }, js = { 0 },
  urlquery = { 0 }, call = { 1 },
}

-- The default function map: builtins, then Sprig over them (Go looks up the user's FuncMap
-- before the builtins, so Sprig's `slice` wins, as in Argo). Built on first compile, so that
-- herald.sprig can require this module for its value helpers.
local DEFAULT_FUNCS

local function default_funcs()
  if DEFAULT_FUNCS then return DEFAULT_FUNCS end
  local f = {}
  for k, fn in pairs(B) do f[k] = fn end
  f["not"] = B.not_
  f.not_ = nil
  f["and"], f["or"] = true, true
  local sprig = require "herald.sprig"
  for k, fn in pairs(sprig) do
    if type(fn) == "function" and sub(k, 1, 1) ~= "_" then f[k] = fn end
  end
  DEFAULT_FUNCS = f
  return f
end
_M.default_funcs = default_funcs
_M.builtins = B

local arity_cache = setmetatable({}, { __mode = "k" })

local function arity_of(name, f, user)
  if not user and BUILTIN_ARITY[name] and B[name] == f then
    return BUILTIN_ARITY[name][1], BUILTIN_ARITY[name][2]
  end
  if name == "and" or name == "or" or name == "not" then
    return BUILTIN_ARITY[name][1], BUILTIN_ARITY[name][2]
  end
  local a = arity_cache[f]
  if not a then
    local info = debug.getinfo(f, "u")
    if info and info.nparams then
      a = { info.nparams, (not info.isvararg) and info.nparams or nil }
    else
      a = { 0 }
    end
    arity_cache[f] = a
  end
  return a[1], a[2]
end

-------------------------------------------------------------------------------------------
-- Lexer
-------------------------------------------------------------------------------------------

local KEYWORDS = { block = true, ["break"] = true, continue = true, define = true,
  ["else"] = true, ["end"] = true, ["if"] = true, range = true, ["nil"] = true,
  template = true, with = true }

local function is_space(c) return c == 32 or c == 9 or c == 13 or c == 10 end

local function is_alnum(c)
  return c and (c == 95 or (c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122)
    or c >= 0x80)
end

local function line_col(text, off)
  local line, last = 1, 0
  local i = 1
  while true do
    local j = find(text, "\n", i, true)
    if not j or j >= off then break end
    line = line + 1
    last = j
    i = j + 1
  end
  return line, off - last - 1
end

local function parse_error(st, off, msg)
  local line, col = line_col(st.text, off)
  error({ parse = true, msg = fmt("template: %s:%d:%d: %s", st.name, line, col, msg) }, 0)
end

local ESCAPES = { a = "\a", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", v = "\v",
  ["\\"] = "\\", ['"'] = '"', ["'"] = "'" }

--- strconv.Unquote of the body of a "..." or '...' literal; returns string or nil.
local function unquote(s, quote)
  local out, i, len = {}, 1, #s
  while i <= len do
    local c = sub(s, i, i)
    if c == "\\" then
      local e = sub(s, i + 1, i + 1)
      if ESCAPES[e] and (e ~= "'" or quote == "'") and (e ~= '"' or quote == '"') then
        out[#out + 1] = ESCAPES[e]; i = i + 2
      elseif e == "x" then
        local h = s:match("^%x%x", i + 2)
        if not h then return nil end
        out[#out + 1] = char(tonumber(h, 16)); i = i + 4
      elseif e == "u" or e == "U" then
        local nd = e == "u" and 4 or 8
        local h = sub(s, i + 2, i + 1 + nd)
        if #h ~= nd or not h:match("^%x+$") then return nil end
        out[#out + 1] = utf8_char(tonumber(h, 16)); i = i + 2 + nd
      elseif e:match("[0-7]") then
        local o = s:match("^[0-7][0-7][0-7]", i + 1)
        if not o or tonumber(o, 8) > 255 then return nil end
        out[#out + 1] = char(tonumber(o, 8)); i = i + 4
      else
        return nil
      end
    elseif c == quote or c == "\n" then
      return nil
    else
      out[#out + 1] = c; i = i + 1
    end
  end
  return concat(out)
end

--- Go number literal (int, float, hex/octal/binary, underscores); returns number or nil.
local function parse_number(s)
  local neg = false
  local t = s
  if sub(t, 1, 1) == "+" then t = sub(t, 2) elseif sub(t, 1, 1) == "-" then neg = true; t = sub(t, 2) end
  if find(t, "_", 1, true) then
    if t:match("^_") or t:match("_$") or find(t, "__", 1, true) then return nil end
    t = gsub(t, "_", "")
  end
  local v
  local p = sub(t, 1, 2):lower()
  if p == "0x" then
    local h = sub(t, 3)
    if h:match("^%x+$") then v = tonumber(h, 16)
    elseif h:match("^%x*%.?%x*p[-+]?%d+$") then
      local m, e = h:match("^(.-)p([-+]?%d+)$")
      local ip, fp = m:match("^(%x*)%.?(%x*)$")
      if ip == "" and fp == "" then return nil end
      v = (tonumber(ip ~= "" and ip or "0", 16) + (fp ~= "" and tonumber(fp, 16) / 16 ^ #fp or 0))
        * 2 ^ tonumber(e)
    else return nil end
  elseif p == "0o" then
    if not sub(t, 3):match("^[0-7]+$") then return nil end
    v = tonumber(sub(t, 3), 8)
  elseif p == "0b" then
    if not sub(t, 3):match("^[01]+$") then return nil end
    v = tonumber(sub(t, 3), 2)
  elseif t:match("^0[0-7]+$") then
    v = tonumber(t, 8)
  elseif t:match("^%d+$") or t:match("^%d*%.%d*$") or t:match("^%d*%.?%d*[eE][-+]?%d+$") then
    if t == "." or t:match("^%.[eE]") then return nil end
    v = tonumber(t)
  else
    return nil
  end
  if not v then return nil end
  return neg and -v or v
end

local function lex(st)
  local text = st.text
  local toks, nt = {}, 0
  local function push(k, v, s, e)
    nt = nt + 1
    toks[nt] = { k = k, v = v, s = s, e = e }
  end
  local pos, len = 1, #text
  local trim_next = false
  while true do
    local ld = find(text, "{{", pos, true)
    local txt = sub(text, pos, (ld or len + 1) - 1)
    local tstart = pos
    local left_trim = ld and sub(text, ld + 2, ld + 2) == "-" and is_space(byte(text, ld + 3))
    if trim_next then
      local s0 = #txt
      txt = gsub(txt, "^[ \t\r\n]+", "")
      tstart = tstart + (s0 - #txt)
    end
    if left_trim then txt = gsub(txt, "[ \t\r\n]+$", "") end
    if txt ~= "" then push("text", txt, tstart) end
    trim_next = false
    if not ld then break end
    local p = ld + 2
    if left_trim then p = p + 2 end
    -- comment
    if sub(text, p, p + 1) == "/*" then
      local ce = find(text, "*/", p + 2, true)
      if not ce then parse_error(st, ld, "unclosed comment") end
      local q = ce + 2
      if sub(text, q, q + 1) == "}}" then
        pos = q + 2
      elseif is_space(byte(text, q)) and sub(text, q + 1, q + 3) == "-}}" then
        pos = q + 4
        trim_next = true
      else
        parse_error(st, ld, "comment ends before closing delimiter")
      end
    else
      push("ldelim", "{{", ld)
      local depth = 0
      local closed = false
      while p <= len do
        local c = byte(text, p)
        if c == 125 and byte(text, p + 1) == 125 then           -- }}
          if depth > 0 then parse_error(st, p, "unclosed left paren") end
          push("rdelim", "}}", p)
          pos = p + 2
          closed = true
          break
        elseif is_space(c) then
          if sub(text, p + 1, p + 3) == "-}}" then
            if depth > 0 then parse_error(st, p, "unclosed left paren") end
            push("rdelim", "}}", p)
            pos = p + 4
            trim_next = true
            closed = true
            break
          end
          local s0 = p
          while is_space(byte(text, p)) and sub(text, p + 1, p + 3) ~= "-}}" do p = p + 1 end
          if p == s0 then p = p + 1 end
          push("space", " ", s0, p - 1)
        elseif c == 61 then push("assign", "=", p); p = p + 1                 -- =
        elseif c == 58 then                                                   -- :
          if byte(text, p + 1) ~= 61 then parse_error(st, p, "expected :=") end
          push("declare", ":=", p); p = p + 2
        elseif c == 124 then push("pipe", "|", p); p = p + 1                  -- |
        elseif c == 40 then push("lparen", "(", p); p = p + 1; depth = depth + 1
        elseif c == 41 then                                                   -- )
          depth = depth - 1
          if depth < 0 then parse_error(st, p, 'unexpected right paren') end
          push("rparen", ")", p); p = p + 1
        elseif c == 44 then push("comma", ",", p); p = p + 1
        elseif c == 34 then                                                   -- "
          local q = p + 1
          while true do
            local d = byte(text, q)
            if not d or d == 10 then parse_error(st, p, "unterminated quoted string") end
            if d == 92 then q = q + 2
            elseif d == 34 then break
            else q = q + 1 end
          end
          local s = unquote(sub(text, p + 1, q - 1), '"')
          if not s then parse_error(st, p, "invalid syntax") end
          push("string", s, p, q)
          p = q + 1
        elseif c == 96 then                                                   -- `
          local q = find(text, "`", p + 1, true)
          if not q then parse_error(st, p, "unterminated raw quoted string") end
          push("string", sub(text, p + 1, q - 1), p, q)
          p = q + 1
        elseif c == 39 then                                                   -- '
          local q = p + 1
          while true do
            local d = byte(text, q)
            if not d or d == 10 then parse_error(st, p, "unterminated character constant") end
            if d == 92 then q = q + 2
            elseif d == 39 then break
            else q = q + 1 end
          end
          local s = unquote(sub(text, p + 1, q - 1), "'")
          local cp, ni
          if s and #s > 0 then cp, ni = utf8_decode(s, 1) end
          if not cp or ni <= #s then parse_error(st, p, "malformed character constant: " .. sub(text, p, q)) end
          push("number", cp, p, q)
          p = q + 1
        elseif c == 36 then                                                   -- $
          local q = p + 1
          while is_alnum(byte(text, q)) do q = q + 1 end
          push("var", sub(text, p, q - 1), p, q - 1)
          p = q
        elseif c == 46 and not (byte(text, p + 1) and byte(text, p + 1) >= 48 and byte(text, p + 1) <= 57) then
          local q = p + 1
          while is_alnum(byte(text, q)) do q = q + 1 end
          if q == p + 1 then push("dot", ".", p)
          else push("field", sub(text, p + 1, q - 1), p, q - 1) end
          p = q
        elseif c == 43 or c == 45 or c == 46 or (c >= 48 and c <= 57) then    -- number
          local q = p
          if c == 43 or c == 45 then q = q + 1 end
          local ch = byte(text, q)
          while ch and (is_alnum(ch) or ch == 46 or ((ch == 43 or ch == 45) and
            (byte(text, q - 1) == 101 or byte(text, q - 1) == 69 or byte(text, q - 1) == 112 or byte(text, q - 1) == 80))) do
            q = q + 1
            ch = byte(text, q)
          end
          local s = sub(text, p, q - 1)
          local v = parse_number(s)
          if not v then parse_error(st, p, fmt("bad number syntax: %q", s)) end
          push("number", v, p, q - 1)
          p = q
        elseif is_alnum(c) then                                               -- identifier
          local q = p
          while is_alnum(byte(text, q)) do q = q + 1 end
          local w = sub(text, p, q - 1)
          if w == "true" or w == "false" then push("bool", w == "true", p, q - 1)
          elseif KEYWORDS[w] then push(w, w, p, q - 1)
          else push("ident", w, p, q - 1) end
          p = q
        else
          local cp = utf8_decode(text, p)
          parse_error(st, p, fmt("bad character U+%04X '%s'", cp, utf8_char(cp)))
        end
      end
      if not closed then parse_error(st, ld, "unclosed action") end
    end
  end
  push("eof", "", len + 1)
  return toks
end

-------------------------------------------------------------------------------------------
-- Parser (follows text/template/parse: pipeline, command, operand, term, control)
-------------------------------------------------------------------------------------------

local Parser = {}
Parser.__index = Parser

local function tok_string(p, tk)
  if tk.k == "eof" then return "EOF" end
  if KEYWORDS[tk.k] then return "<" .. tk.k .. ">" end
  local v
  if tk.k == "rdelim" then v = "}}"
  elseif tk.k == "ldelim" then v = "{{"
  else v = p:tok_src(tk) end
  if #v > 10 then return go_quote(sub(v, 1, 10)) .. "..." end
  return go_quote(v)
end

function Parser:tok_src(tk)
  if tk.e then return sub(self.text, tk.s, tk.e) end
  return tostring(tk.v)
end

function Parser:err(tk, msg)
  parse_error(self, tk.s, msg)
end

function Parser:peek() return self.toks[self.i] end
function Parser:next_tok()
  local tk = self.toks[self.i]
  self.i = self.i + 1
  return tk
end
function Parser:backup(n) self.i = self.i - (n or 1) end
function Parser:peek_ns()
  local i = self.i
  while self.toks[i].k == "space" do i = i + 1 end
  return self.toks[i]
end
function Parser:next_ns()
  while self.toks[self.i].k == "space" do self.i = self.i + 1 end
  return self:next_tok()
end

function Parser:unexpected(tk, context)
  self:err(tk, "unexpected " .. tok_string(self, tk) .. " in " .. context)
end

function Parser:expect(kind, context)
  local tk = self:next_ns()
  if tk.k ~= kind then self:unexpected(tk, context) end
  return tk
end

-- Variable scopes: a stack of names; scopes are marked by their length.
function Parser:use_var(tk)
  local name = tk.v
  for i = #self.vars, 1, -1 do
    if self.vars[i] == name then return { t = "var", name = name, s = tk.s, e = tk.e } end
  end
  self:err(tk, fmt("undefined variable %q", name))
end

function Parser:pipeline(context, end_kind)
  local first = self:peek_ns()
  local pipe = { t = "pipe", decl = {}, cmds = {}, s = first.s }
  -- declarations
  while true do
    local v = self:peek_ns()
    if v.k ~= "var" then break end
    local save = self.i
    self:next_ns()
    local nx = self:peek_ns()
    if nx.k == "assign" or nx.k == "declare" then
      pipe.is_assign = nx.k == "assign"
      self:next_ns()
      pipe.decl[#pipe.decl + 1] = { name = v.v, s = v.s, e = v.e }
      break
    elseif nx.k == "comma" then
      self:next_ns()
      pipe.decl[#pipe.decl + 1] = { name = v.v, s = v.s, e = v.e }
      if context == "range" and #pipe.decl < 2 then
        local k = self:peek_ns().k
        if k == "var" or k == "rdelim" or k == "rparen" then
          -- second variable
        else
          self:err(self:peek_ns(), "range can only initialize variables")
        end
      else
        self:err(nx, "too many declarations in " .. context)
      end
    else
      self.i = save
      break
    end
  end
  while true do
    local tk = self:next_ns()
    if tk.k == end_kind then
      pipe.e = tk.s - 1
      -- checkPipeline
      if #pipe.cmds == 0 then self:err(tk, "missing value for " .. context) end
      for i = 2, #pipe.cmds do
        local a = pipe.cmds[i].args[1]
        if a.t == "bool" or a.t == "dot" or a.t == "nil" or a.t == "number" or a.t == "string" then
          self:err(tk, "non executable command in pipeline stage " .. i)
        end
      end
      for _, d in ipairs(pipe.decl) do
        if not pipe.is_assign then self.vars[#self.vars + 1] = d.name end
      end
      return pipe
    end
    local k = tk.k
    if k == "bool" or k == "dot" or k == "field" or k == "ident" or k == "number" or k == "nil"
      or k == "string" or k == "var" or k == "lparen" then
      self:backup()
      pipe.cmds[#pipe.cmds + 1] = self:command()
    else
      self:unexpected(tk, context)
    end
  end
end

function Parser:command()
  local cmd = { t = "cmd", args = {}, s = self:peek_ns().s }
  while true do
    self:peek_ns()
    local op = self:operand()
    if op then cmd.args[#cmd.args + 1] = op end
    local tk = self:next_tok()
    if tk.k == "space" then
      -- next operand
    elseif tk.k == "rdelim" or tk.k == "rparen" then
      self:backup()
      cmd.e = tk.s - 1
      break
    elseif tk.k == "pipe" then
      cmd.e = tk.s - 1
      break
    else
      self:unexpected(tk, "operand")
    end
  end
  if #cmd.args == 0 then self:err(self:peek(), "empty command") end
  cmd.text = sub(self.text, cmd.s, cmd.e):gsub("%s+$", "")
  return cmd
end

function Parser:operand()
  local node = self:term()
  if not node then return nil end
  if self:peek().k == "field" then
    local names = {}
    local last
    while self:peek().k == "field" do
      last = self:next_tok()
      names[#names + 1] = last.v
    end
    local t = node.t
    if t == "field" or t == "var" then
      node.names = node.names or {}
      for _, nm in ipairs(names) do node.names[#node.names + 1] = nm end
      node.e = last.e
    elseif t == "bool" or t == "string" or t == "number" or t == "nil" or t == "dot" then
      self:err(last, fmt("unexpected . after term %q", sub(self.text, node.s, node.e or node.s)))
    else
      node = { t = "chain", node = node, names = names, s = node.s, e = last.e }
    end
  end
  return node
end

function Parser:term()
  local tk = self:next_ns()
  local k = tk.k
  if k == "ident" then
    if self.funcs[tk.v] == nil then self:err(tk, fmt("function %q not defined", tk.v)) end
    return { t = "ident", name = tk.v, s = tk.s, e = tk.e }
  elseif k == "dot" then return { t = "dot", s = tk.s, e = tk.s }
  elseif k == "nil" then return { t = "nil", s = tk.s, e = tk.e }
  elseif k == "var" then return self:use_var(tk)
  elseif k == "field" then return { t = "field", names = { tk.v }, s = tk.s, e = tk.e }
  elseif k == "bool" then return { t = "bool", v = tk.v, s = tk.s, e = tk.e }
  elseif k == "number" then return { t = "number", v = tk.v, s = tk.s, e = tk.e }
  elseif k == "string" then return { t = "string", v = tk.v, s = tk.s, e = tk.e }
  elseif k == "lparen" then
    local p = self:pipeline("parenthesized pipeline", "rparen")
    p.s = tk.s
    p.e = self.toks[self.i - 1].s
    return { t = "paren", pipe = p, s = tk.s, e = p.e }
  end
  self:backup()
  return nil
end

-- itemList: nodes up to {{end}} or {{else}}; returns list and the terminator ("end"/"else").
function Parser:item_list()
  local list = {}
  while true do
    local tk = self:peek()
    if tk.k == "eof" then self:err(tk, "unexpected EOF") end
    local node, term = self:text_or_action()
    if term then return list, term end
    list[#list + 1] = node
  end
end

function Parser:text_or_action()
  local tk = self:next_tok()
  if tk.k == "text" then return { t = "text", v = tk.v, s = tk.s } end
  if tk.k == "ldelim" then
    self.action_start = tk.s
    return self:action(tk)
  end
  self:unexpected(tk, "input")
end

function Parser:action(ld)
  local tk = self:next_ns()
  local k = tk.k
  if k == "block" then return self:block_control(ld)
  elseif k == "break" or k == "continue" then
    if self.range_depth == 0 then self:err(tk, "{{" .. k .. "}} outside {{range}}") end
    local r = self:next_ns()
    if r.k ~= "rdelim" then self:unexpected(r, "{{" .. k .. "}}") end
    return { t = k, s = tk.s }
  elseif k == "else" then
    local nx = self:peek_ns()
    if nx.k == "if" or nx.k == "with" then
      return nil, { t = "else", s = tk.s, chain = nx.k }
    end
    self:expect("rdelim", "else")
    return nil, { t = "else", s = tk.s }
  elseif k == "end" then
    self:expect("rdelim", "end")
    return nil, { t = "end", s = tk.s }
  elseif k == "if" or k == "range" or k == "with" then
    return self:control(k, ld)
  elseif k == "template" then
    return self:template_control(ld)
  elseif k == "define" then
    self:unexpected(tk, "command")
  end
  self:backup()
  local pipe = self:pipeline("command", "rdelim")
  local node = { t = "action", pipe = pipe, s = ld.s }
  node.text = sub(self.text, ld.s, self.toks[self.i - 1].s + 1)
  return node
end

function Parser:control(context, ld)
  local mark = #self.vars
  local node = { t = context, s = ld.s }
  node.pipe = self:pipeline(context, "rdelim")
  node.text = sub(self.text, ld.s, self.toks[self.i - 1].s + 1)
  if context == "range" then self.range_depth = self.range_depth + 1 end
  local mark_body = #self.vars
  local list, term = self:item_list()
  for i = #self.vars, mark_body + 1, -1 do self.vars[i] = nil end
  if context == "range" then self.range_depth = self.range_depth - 1 end
  node.list = list
  if term.t == "else" then
    if term.chain and term.chain == context and context ~= "range" then
      local ctk = self:next_ns()      -- the "if"/"with" keyword
      node.else_list = { self:control(context, { s = ctk.s }) }
    elseif term.chain then
      local ctk = self:peek_ns()
      self:unexpected(ctk, "else")
    else
      local list2, term2 = self:item_list()
      if term2.t ~= "end" then
        self:err({ s = term2.s }, "expected end; found {{else}}")
      end
      node.else_list = list2
    end
  end
  for i = #self.vars, mark + 1, -1 do self.vars[i] = nil end
  return node
end

function Parser:template_name(tk, context)
  if tk.k ~= "string" then
    self:unexpected(tk, context)
  end
  return tk.v
end

function Parser:template_control(ld)
  local name = self:template_name(self:next_ns(), "template clause")
  local node = { t = "template", name = name, s = ld.s }
  if self:peek_ns().k ~= "rdelim" then
    local mark = #self.vars
    node.pipe = self:pipeline("template clause", "rdelim")
    for i = #self.vars, mark + 1, -1 do self.vars[i] = nil end
  else
    self:next_ns()
  end
  node.text = sub(self.text, ld.s, self.toks[self.i - 1].s + 1)
  return node
end

function Parser:block_control(ld)
  local name = self:template_name(self:next_ns(), "block clause")
  local mark = #self.vars
  local pipe = self:pipeline("block clause", "rdelim")
  for i = #self.vars, mark + 1, -1 do self.vars[i] = nil end
  local text = sub(self.text, ld.s, self.toks[self.i - 1].s + 1)
  -- the block body is a new template, with its own variables and range depth
  local saved_vars, saved_depth = self.vars, self.range_depth
  self.vars, self.range_depth = { "$" }, 0
  local list, term = self:item_list()
  if term.t ~= "end" then self:err({ s = term.s }, "unexpected {{else}} in block clause") end
  self.vars, self.range_depth = saved_vars, saved_depth
  self:add_template(name, list, ld)
  return { t = "template", name = name, pipe = pipe, s = ld.s, text = text }
end

local function is_empty_tree(list)
  for _, n in ipairs(list) do
    if n.t ~= "text" or n.v:match("%S") then return false end
  end
  return true
end

function Parser:add_template(name, list, at)
  local old = self.defs[name]
  if old and not is_empty_tree(old) and not is_empty_tree(list) then
    self:err(at, fmt("template: multiple definition of template %q", name))
  end
  if not old or is_empty_tree(old) or not is_empty_tree(list) then
    if not self.defs[name] then self.order[#self.order + 1] = name end
    self.defs[name] = list
  end
end

function Parser:parse()
  local main = {}
  while true do
    local tk = self:peek()
    if tk.k == "eof" then break end
    if tk.k == "ldelim" and self:peek_ns_after(self.i + 1).k == "define" then
      self:next_tok()
      self:next_ns()
      local name = self:template_name(self:next_ns(), "define clause")
      self:expect("rdelim", "define clause")
      self.vars, self.range_depth = { "$" }, 0
      local list, term = self:item_list()
      if term.t ~= "end" then self:err({ s = term.s }, "unexpected {{else}} in define clause") end
      self.vars = { "$" }
      self:add_template(name, list, tk)
    else
      local node, term = self:text_or_action()
      if term then
        self:err({ s = term.s }, "unexpected {{" .. term.t .. "}}")
      end
      main[#main + 1] = node
    end
  end
  return main
end

function Parser:peek_ns_after(i)
  while self.toks[i].k == "space" do i = i + 1 end
  return self.toks[i]
end

-------------------------------------------------------------------------------------------
-- Code generation
-------------------------------------------------------------------------------------------

local function lua_key(name)
  if luagen.is_name(name) then return "." .. name end
  return "[" .. fmt("%q", name) .. "]"
end

local lua_str, lua_num = luagen.string, luagen.scalar

local Gen = {}
Gen.__index = Gen

function Gen:emit(s)
  self.lines[#self.lines + 1] = rep("  ", self.depth) .. s
end

function Gen:tmp()
  self.ntmp = self.ntmp + 1
  return "t" .. self.ntmp
end

--- Registers a position (error context) and returns its index.
function Gen:pos(s, node_text, fn)
  self.npos = self.npos + 1
  if node_text then node_text = node_text:gsub("^%s+", ""):gsub("%s+$", "") end
  self.posinfo[self.npos] = { s = s, node = node_text, fn = fn, tmpl = self.tmpl }
  return self.npos
end

function Gen:lookup_var(name)
  if name == "$" then return "root" end
  local sc = self.scopes
  for i = #sc, 1, -1 do
    local l = sc[i][name]
    if l then return l end
  end
  return nil
end

function Gen:declare(name)
  self.nvar = self.nvar + 1
  local l = "v" .. self.nvar .. "_" .. (name:sub(2):gsub("[^%w_]", "_"))
  self.scopes[#self.scopes][name] = l
  return l
end

function Gen:push_scope() self.scopes[#self.scopes + 1] = {} end
function Gen:pop_scope() self.scopes[#self.scopes] = nil end

function Gen:node_text(n)
  return sub(self.text, n.s, n.e or n.s)
end

function Gen:field_chain(base, names, n)
  if #names == 0 then return base end
  local p = self:pos(n.s, self:node_text(n))
  local e = base
  for _, nm in ipairs(names) do e = "fld(" .. e .. ", " .. lua_str(nm) .. ", " .. p .. ")" end
  return e
end

--- Expression for an argument node (may emit statements for calls and sub-pipelines).
function Gen:arg(n)
  local t = n.t
  if t == "field" then return self:field_chain("dot", n.names, n)
  elseif t == "var" then
    local l = self:lookup_var(n.name)
    if not l then parse_error(self, n.s, fmt("undefined variable %q", n.name)) end
    return self:field_chain(l, n.names or {}, n)
  elseif t == "dot" then return "dot"
  elseif t == "nil" then return "nil"
  elseif t == "bool" then return n.v and "true" or "false"
  elseif t == "number" then return lua_num(n.v)
  elseif t == "string" then return lua_str(n.v)
  elseif t == "ident" then
    return self:call(n.name, {}, nil, { s = n.s, text = n.name })
  elseif t == "paren" then
    return self:pipe_expr(n.pipe)
  elseif t == "chain" then
    local base = self:arg(n.node)
    local tv = self:tmp()
    self:emit("local " .. tv .. " = " .. base)
    return self:field_chain(tv, n.names, n)
  end
  error("gotemplate: unknown node " .. tostring(t))
end

--- Emits a function call; returns the temp holding the result.
function Gen:call(name, argnodes, final, cmd)
  local f = self.funcs[name]
  local nargs = #argnodes + (final and 1 or 0)
  local p = self:pos(cmd.s, cmd.text, name)
  local lo, hi = arity_of(name, f, self.user_funcs and self.user_funcs[name] ~= nil)
  local res = self:tmp()
  if nargs < lo or (hi and nargs > hi) then
    local msg
    if hi == lo then msg = fmt("wrong number of args for %s: want %d got %d", name, lo, nargs)
    else msg = fmt("wrong number of args for %s: want at least %d got %d", name, lo, nargs) end
    self:emit("fail(" .. p .. ", " .. lua_str(msg) .. ")")
    self:emit("local " .. res .. " = nil")
    return res
  end
  if name == "and" or name == "or" then
    self:emit("local " .. res)
    local depth0 = self.depth
    local all = {}
    for _, a in ipairs(argnodes) do all[#all + 1] = a end
    if final then all[#all + 1] = { t = "$final", expr = final } end
    for i, a in ipairs(all) do
      local e = a.t == "$final" and a.expr or self:arg(a)
      self:emit(res .. " = " .. e)
      if i < #all then
        self:emit((name == "and" and "if truth(" or "if not truth(") .. res .. ") then")
        self.depth = self.depth + 1
      end
    end
    while self.depth > depth0 do
      self.depth = self.depth - 1
      self:emit("end")
    end
    return res
  end
  local args = {}
  for i, a in ipairs(argnodes) do args[i] = self:arg(a) end
  if final then args[#args + 1] = final end
  if name == "not" and not (self.user_funcs and self.user_funcs["not"]) then
    self:emit("local " .. res .. " = not truth(" .. args[1] .. ")")
    return res
  end
  self:emit("P = " .. p)
  self:emit("local " .. res .. " = F" .. lua_key(name) .. "(" .. concat(args, ", ") .. ")")
  return res
end

--- Emits a command; returns an expression for its value.
function Gen:command(cmd, final)
  local first = cmd.args[1]
  local t = first.t
  if t == "ident" then
    local rest = {}
    for i = 2, #cmd.args do rest[#rest + 1] = cmd.args[i] end
    return self:call(first.name, rest, final, cmd)
  end
  if t == "field" or t == "chain" or (t == "var" and first.names and #first.names > 0) then
    if #cmd.args > 1 or final then
      local nm = first.names[#first.names]
      local p = self:pos(cmd.s, cmd.text)
      self:emit("fail(" .. p .. ", " .. lua_str(nm .. " is not a method but has arguments") .. ")")
    end
    return self:arg(first)
  end
  if t == "nil" then
    local p = self:pos(cmd.s, cmd.text)
    self:emit("fail(" .. p .. ", \"nil is not a command\")")
    return "nil"
  end
  if #cmd.args > 1 or final then
    local p = self:pos(cmd.s, cmd.text)
    self:emit("fail(" .. p .. ", " .. lua_str("can't give argument to non-function " ..
      self:node_text(first)) .. ")")
  end
  return self:arg(first)
end

--- Emits a pipeline (without declarations); returns an expression for its value.
function Gen:pipe_value(pipe)
  local v
  for i, cmd in ipairs(pipe.cmds) do
    v = self:command(cmd, v)
    if i < #pipe.cmds and not v:match("^t%d+$") and not v:match("^[%w_\"]+$") then
      local tv = self:tmp()
      self:emit("local " .. tv .. " = " .. v)
      v = tv
    end
  end
  return v
end

--- A pipeline as a value, applying its declarations (which must be pre-declared locals).
function Gen:pipe_expr(pipe)
  local v = self:pipe_value(pipe)
  if #pipe.decl > 0 then
    local d = pipe.decl[1]
    local l = pipe.decl_locals and pipe.decl_locals[1] or self:lookup_var(d.name)
    if not l then
      local p = self:pos(d.s, d.name)
      self:emit("fail(" .. p .. ", " .. lua_str("undefined variable: " .. d.name) .. ")")
    else
      self:emit(l .. " = " .. v)
      return l
    end
  end
  return v
end

--- Declares the locals of a pipeline's declarations (before a do-block evaluates it).
function Gen:predeclare(pipe)
  if #pipe.decl == 0 or pipe.is_assign then return end
  local ls = {}
  for i, d in ipairs(pipe.decl) do ls[i] = self:declare(d.name) end
  pipe.decl_locals = ls
  self:emit("local " .. concat(ls, ", "))
end


--- A comment line of generated code naming template text (any bytes): shortened, then made
--- safe by luagen.comment, the one place that does (no newline can end the comment).
local function comment_line(s, line, col)
  if #s > 80 then s = sub(s, 1, 77) .. "..." end
  return luagen.comment(fmt("-- %s (%d:%d)", s, line, col))
end

function Gen:list(list)
  for _, n in ipairs(list) do self:node(n) end
end

function Gen:out(expr)
  self:emit("n = n + 1; buf[n] = " .. expr)
end

function Gen:node(n)
  local t = n.t
  if t == "text" then
    self:out(lua_str(n.v))
  elseif t == "action" then
    local line, col = line_col(self.text, n.s)
    self:emit(comment_line(n.text, line, col))
    local pipe = n.pipe
    if #pipe.decl > 0 then
      if pipe.is_assign then
        self:emit("do")
        self.depth = self.depth + 1
        self:pipe_expr(pipe)
        self.depth = self.depth - 1
        self:emit("end")
      else
        self:predeclare(pipe)
        self:emit("do")
        self.depth = self.depth + 1
        self:pipe_expr(pipe)
        self.depth = self.depth - 1
        self:emit("end")
      end
      return
    end
    local simple = #pipe.cmds == 1 and pipe.cmds[1].args[1].t ~= "ident" and #pipe.cmds[1].args == 1
      and pipe.cmds[1].args[1].t ~= "chain" and pipe.cmds[1].args[1].t ~= "paren"
    if simple then
      local e = self:pipe_value(pipe)
      self:out("pr(" .. e .. ")")
    else
      self:emit("do")
      self.depth = self.depth + 1
      local e = self:pipe_value(pipe)
      self:out("pr(" .. e .. ")")
      self.depth = self.depth - 1
      self:emit("end")
    end
  elseif t == "if" or t == "with" then
    local line, col = line_col(self.text, n.s)
    self:emit(comment_line(n.text or ("{{" .. t .. "}}"), line, col))
    self:emit("do")
    self.depth = self.depth + 1
    self:push_scope()
    self:predeclare(n.pipe)
    local c = self:pipe_expr(n.pipe)
    if not c:match("^[%w_]+$") then
      local tv = self:tmp()
      self:emit("local " .. tv .. " = " .. c)
      c = tv
    end
    self:emit("if truth(" .. c .. ") then")
    self.depth = self.depth + 1
    self:push_scope()
    if t == "with" then self:emit("local dot = " .. c) end
    self:list(n.list)
    self:pop_scope()
    self.depth = self.depth - 1
    if n.else_list and #n.else_list > 0 then
      self:emit("else")
      self.depth = self.depth + 1
      self:push_scope()
      self:list(n.else_list)
      self:pop_scope()
      self.depth = self.depth - 1
    end
    self:emit("end")
    self:pop_scope()
    self.depth = self.depth - 1
    self:emit("end")
  elseif t == "range" then
    local line, col = line_col(self.text, n.s)
    self:emit(comment_line(n.text or "{{range}}", line, col))
    self:emit("do")
    self.depth = self.depth + 1
    self:push_scope()
    local pipe = n.pipe
    local decl = pipe.decl
    pipe.decl = {}
    local v = self:pipe_value(pipe)
    pipe.decl = decl
    local p = self:pos(n.s, self:node_text({ s = pipe.s, e = pipe.e }))
    self.nloop = self.nloop + 1
    local L = self.nloop
    local rc, rk, rn = "rc" .. L, "rk" .. L, "rn" .. L
    self:emit(fmt("local %s, %s, %s = rng(%s, %d)", rc, rk, rn, v, p))
    self:emit("if " .. rn .. " > 0 then")
    self.depth = self.depth + 1
    self:emit(fmt("for i%d = 1, %s do", L, rn))
    self.depth = self.depth + 1
    self:emit(fmt("local key%d, dot", L))
    self:emit(fmt("if %s then key%d = %s[i%d]; dot = %s[key%d]", rk, L, rk, L, rc, L))
    self:emit(fmt("elseif %s then key%d = i%d - 1; dot = %s[i%d]", rc, L, L, rc, L))
    self:emit(fmt("else key%d = i%d - 1; dot = key%d end", L, L, L))
    self:push_scope()
    if #decl > 0 then
      if pipe.is_assign then
        local targets = {}
        for _, d in ipairs(decl) do
          local l = self:lookup_var(d.name)
          if not l then parse_error(self, d.s, fmt("undefined variable %q", d.name)) end
          targets[#targets + 1] = l
        end
        if #decl == 1 then self:emit(targets[1] .. " = dot")
        else self:emit(fmt("%s, %s = key%d, dot", targets[1], targets[2], L)) end
      elseif #decl == 1 then
        self:emit("local " .. self:declare(decl[1].name) .. " = dot")
      else
        local a = self:declare(decl[1].name)
        local b = self:declare(decl[2].name)
        self:emit(fmt("local %s, %s = key%d, dot", a, b, L))
      end
    end
    self.loops[#self.loops + 1] = L
    self:emit("do")
    self.depth = self.depth + 1
    self:list(n.list)
    self.depth = self.depth - 1
    self:emit("end")
    self.loops[#self.loops] = nil
    if self.has_continue[L] then self:emit(fmt("::continue%d::", L)) end
    self:pop_scope()
    self.depth = self.depth - 1
    self:emit("end")
    self.depth = self.depth - 1
    if n.else_list and #n.else_list > 0 then
      self:emit("else")
      self.depth = self.depth + 1
      self:push_scope()
      self:list(n.else_list)
      self:pop_scope()
      self.depth = self.depth - 1
    end
    self:emit("end")
    self:pop_scope()
    self.depth = self.depth - 1
    self:emit("end")
  elseif t == "break" then
    self:emit("do break end")
  elseif t == "continue" then
    local L = self.loops[#self.loops]
    self.has_continue[L] = true
    self:emit(fmt("goto continue%d", L))
  elseif t == "template" then
    local line, col = line_col(self.text, n.s)
    self:emit(comment_line(n.text or "{{template}}", line, col))
    self:emit("do")
    self.depth = self.depth + 1
    local arg = "nil"
    if n.pipe then
      self:push_scope()
      self:predeclare(n.pipe)
      arg = self:pipe_expr(n.pipe)
      self:pop_scope()
    end
    if self.defs[n.name] then
      self:emit("n = T[" .. lua_str(n.name) .. "](" .. arg .. ", n)")
    else
      local p = self:pos(n.s, n.text)
      self:emit("fail(" .. p .. ", " .. lua_str(fmt("template %q not defined", n.name)) .. ")")
    end
    self.depth = self.depth - 1
    self:emit("end")
  else
    error("gotemplate: unknown node " .. tostring(t))
  end
end

function Gen:template_fn(name, list)
  self.tmpl = name
  self.scopes = { {} }
  self:emit("")
  self:emit(luagen.comment("-- template " .. lua_str(name)))
  self:emit("T[" .. lua_str(name) .. "] = function(dot, n)")
  self.depth = 1
  self:emit("local root = dot")
  self:list(list)
  self:emit("return n")
  self.depth = 0
  self:emit("end")
end

-------------------------------------------------------------------------------------------
-- API
-------------------------------------------------------------------------------------------

local Template = {}
Template.__index = Template

local RT = { fld = fld, pr = pr, truth = truth, fail = fail, rng = rng, concat = concat }

local function exec_error(self, e)
  local p
  if type(e) == "table" and e.p then p = e.p else p = self._getp() end
  local info = self._pos[p]
  local msg
  if type(e) == "table" then
    msg = tostring(e.msg)
  elseif tostring(e):find("stack overflow", 1, true) then
    -- {{template}} recursing without end: Go stops at its depth limit with this message
    -- (Lua's stack runs out well before that depth)
    msg = "exceeded maximum template depth (100000)"
  else
    msg = tostring(e)
    if info and info.fn then msg = "error calling " .. info.fn .. ": " .. msg end
  end
  if not info then return fmt("template: %s: %s", self.name, msg) end
  local line, col = line_col(self.text, info.s)
  return fmt('template: %s:%d:%d: executing %q at <%s>: %s', self.name, line, col,
    info.tmpl, info.node or "", msg)
end

--- Renders the template with data as dot (and $). Returns the text, or nil and an error.
---@param data any
---@return string|nil
---@return string|nil err
function Template:render(data)
  local ok, res = pcall(self.fn, data)
  if ok then return res end
  return nil, exec_error(self, res)
end

--- Compiles a Go text/template into Lua.
---@param text string the template source
---@param opts? table { name = "template name for messages", funcs = { name = function } }
---@return table|nil t template: t.source (generated Lua), t:render(data)
---@return string|nil err "template: NAME:LINE:COL: message"
function _M.compile(text, opts)
  opts = opts or {}
  if type(text) ~= "string" then return nil, "template: text must be a string" end
  local name = opts.name or "template"
  local funcs = default_funcs()
  if opts.funcs then
    local base = funcs
    funcs = {}
    for k, f in pairs(base) do funcs[k] = f end
    for k, f in pairs(opts.funcs) do funcs[k] = f end
  end

  local st = { text = text, name = name }
  local ok, res = pcall(function()
    local toks = lex(st)
    local p = setmetatable({ toks = toks, i = 1, text = text, name = name, funcs = funcs,
      vars = { "$" }, range_depth = 0, defs = {}, order = {} }, Parser)
    local main = p:parse()
    local g = setmetatable({ lines = {}, depth = 0, ntmp = 0, nvar = 0, nloop = 0, npos = 0,
      posinfo = {}, text = text, name = name, funcs = funcs, user_funcs = opts.funcs,
      defs = p.defs, loops = {}, has_continue = {} }, Gen)
    if p.defs[name] == nil or not is_empty_tree(main) then
      p.defs[name] = main
    end
    g:emit(luagen.comment("-- herald.gotemplate: compiled from template " .. lua_str(name)))
    g:emit("local R, F = ...")
    g:emit("local fld, pr, truth, fail, rng, concat = R.fld, R.pr, R.truth, R.fail, R.rng, R.concat")
    g:emit("local buf, T, P = {}, {}, 0")
    -- fast path: a main template that is one simple action (e.g. {{ .Input.body.x }})
    local fast = #main == 1 and main[1].t == "action" and #main[1].pipe.decl == 0
    g:template_fn(name, p.defs[name])
    for _, dn in ipairs(p.order) do
      if dn ~= name then g:template_fn(dn, p.defs[dn]) end
    end
    g:emit("")
    if fast and p.defs[name] == main then
      g.tmpl = name
      g.scopes = { {} }
      g:emit("-- fast path: one action")
      g:emit("local function render(dot)")
      g.depth = 1
      g:emit("P = 0")
      g:emit("local root = dot")
      local m = #g.lines
      local e = g:pipe_value(main[1].pipe)
      if #g.lines == m then
        g:emit("return pr(" .. e .. ")")
      else
        g:emit("return pr(" .. e .. ")")
      end
      g.depth = 0
      g:emit("end")
    else
      g:emit("local main = T[" .. lua_str(name) .. "]")
      g:emit("local function render(dot)")
      g:emit("  P = 0")
      g:emit("  local n = main(dot, 0)")
      g:emit("  return concat(buf, \"\", 1, n)")
      g:emit("end")
    end
    g:emit("return render, function() return P end")
    return g
  end)
  if not ok then
    if type(res) == "table" and res.parse then return nil, res.msg end
    return nil, fmt("template: %s: %s", name, tostring(type(res) == "table" and res.msg or res))
  end
  local g = res
  local source = concat(g.lines, "\n") .. "\n"
  local chunk, lerr = loadstring(source, "=gotemplate:" .. name)
  if not chunk then
    -- Lua's limits (locals, nesting) hit by a huge template are not internal errors
    local e = tostring(lerr)
    if e:find("too many") or e:find("more than %d+") or e:find("too complex") then
      return nil, "template: " .. name .. ": template too complex"
    end
    return nil, "template: " .. name .. ": internal error: " .. e
  end
  setfenv(chunk, {})
  local fn, getp = chunk(RT, funcs)
  return setmetatable({ name = name, text = text, source = source, fn = fn, _getp = getp,
    _pos = g.posinfo, templates = g.defs }, Template)
end

--- Compiles and renders once (convenience for tests and one-off use).
---@return string|nil
---@return string|nil err
function _M.render(text, data, opts)
  local t, err = _M.compile(text, opts)
  if not t then return nil, err end
  return t:render(data)
end

return _M
