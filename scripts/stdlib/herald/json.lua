-- herald/json.lua: JSON values as every Herald module holds them, and Go's ways of printing
-- numbers, written once.
--
-- Values are what lua-cjson decodes (tables, 1-based arrays, cjson.null) with one addition:
-- lua-cjson 2.1.0 (Debian 12) decodes [] and {} to the same empty table and has no array
-- marker, so an array is a table with [1] set OR marked with ARRAY_MT (decode marks empty
-- arrays; modules mark the lists they build). An unmarked empty table is an object. is_array is
-- the one predicate; encode honours the marker.
--
-- Numbers are doubles. Go prints a float64 in several ways, each used by the Argo code Herald
-- follows; each is one function here:
--   format_f     strconv.FormatFloat(f, 'f', -1, 64): gjson's Result.String(), sjson values
--   format_v     fmt's %v: govaluate / expr string conversion
--   format_g     strconv 'g'/'e' layout of the shortest digits, exponent outside [lo, hi)
--   format_json  encoding/json: 'f', or 'e' outside [1e-6, 1e21); NaN and Inf are errors
--   format_print Herald's template printing (docs/compat.md): whole numbers below 1e21 in full
--                (Go would hold them as ints), others as %v with the exponent from 1e21
local cjson = require "cjson"

local type, tonumber, tostring, pairs, next = type, tonumber, tostring, pairs, next
local getmetatable, setmetatable, error, pcall = getmetatable, setmetatable, error, pcall
local floor, huge = math.floor, math.huge
local fmt, byte, sub, find, gsub, match, rep = string.format, string.byte, string.sub,
  string.find, string.gsub, string.match, string.rep
local concat, sort = table.concat, table.sort
local null = cjson.null

local _M = {}

_M.null = null

-- Arrays ---------------------------------------------------------------------------------------

--- The empty-array marker (cjson's own where a newer lua-cjson has one).
local ARRAY_MT = cjson.array_mt or { __name = "herald.json.array" }
local CJSON_EMPTY_ARRAY_MT = cjson.empty_array_mt
_M.ARRAY_MT = ARRAY_MT

--- Whether t (a table) is a JSON array: it has [1], or it is marked.
local function is_array(t)
  if t[1] ~= nil then return true end
  local mt = getmetatable(t)
  return mt ~= nil and (mt == ARRAY_MT or mt == CJSON_EMPTY_ARRAY_MT)
end
_M.is_array = is_array

--- Marks t (default: a new table) as an array and returns it.
function _M.array(t)
  return setmetatable(t or {}, ARRAY_MT)
end

-- Numbers --------------------------------------------------------------------------------------

--- The shortest decimal digits that read back as |x| (no point, no trailing zeros) and the
--- position of the decimal point relative to them (x = 0.DIGITS * 10^point).
local function shortest(x)
  if x < 0 then x = -x end
  if x == 0 then return "0", 1 end
  -- 15 significant digits first: when they round-trip, the shortest digits that do are these
  -- with their trailing zeros dropped (x is within half an ulp of that shorter decimal, far
  -- less than the 15th digit's half unit); else 16, else 17, which always round-trip
  -- (a subnormal has fewer bits, so it is searched from one digit up)
  local s
  for p = x < 2.2250738585072014e-308 and 0 or 14, 16 do
    s = fmt("%." .. p .. "e", x)
    if p == 16 or tonumber(s) == x then break end
  end
  local d1, ds, ex = match(s, "^(%d)%.?(%d*)e([-+]%d+)$")
  local digits = gsub(d1 .. ds, "0+$", "")
  if digits == "" then digits = "0" end
  return digits, tonumber(ex) + 1
end

local function special(x)
  if x ~= x then return "NaN" end
  if x == huge then return "+Inf" end
  if x == -huge then return "-Inf" end
end

local function sign(x)
  return (x < 0 or (x == 0 and 1 / x < 0)) and "-" or ""
end

--- The fixed layout of digits with the point at `point` (no exponent).
local function fixed(digits, point)
  local nd = #digits
  if point <= 0 then return "0." .. rep("0", -point) .. digits end
  if point >= nd then return digits .. rep("0", point - nd) end
  return sub(digits, 1, point) .. "." .. sub(digits, point + 1)
end

--- The exponent layout: d.ddde+XX (two exponent digits at least, as strconv writes them).
local function exponent(digits, point, upper)
  local m = sub(digits, 1, 1)
  if #digits > 1 then m = m .. "." .. sub(digits, 2) end
  local e = point - 1
  return m .. (upper and "E" or "e") .. (e < 0 and "-" or "+") .. fmt("%02d", e < 0 and -e or e)
end

--- strconv.FormatFloat(x, 'f', -1, 64).
local function format_f(x)
  if x == floor(x) and x > -2 ^ 53 and x < 2 ^ 53 then
    if x == 0 and 1 / x < 0 then return "-0" end
    return fmt("%d", x)
  end
  local s = special(x)
  if s then return s end
  return sign(x) .. fixed(shortest(x))
end
_M.format_f = format_f

--- strconv's layout of the shortest digits: %e when the decimal exponent is < lo or >= hi,
--- else fixed ('g' itself is lo = -4, hi = 6); upper writes E.
local function format_g(x, lo, hi, upper)
  local s = special(x)
  if s then return s end
  local digits, point = shortest(x)
  local e = point - 1
  if x == 0 or (e >= lo and e < hi) then return sign(x) .. fixed(digits, point) end
  return sign(x) .. exponent(digits, point, upper)
end
_M.format_g = format_g

--- fmt's %v (and %g) of a float64: strconv 'g' with the shortest digits ("1e+06", "0.0001").
function _M.format_v(x)
  if x == floor(x) and x > -1e6 and x < 1e6 and not (x == 0 and 1 / x < 0) then return fmt("%d", x) end
  return format_g(x, -4, 6)
end

--- Herald's printing of a number in templates (see the header).
local function format_print(x)
  if x == floor(x) and x > -2 ^ 53 and x < 2 ^ 53 and not (x == 0 and 1 / x < 0) then
    return fmt("%d", x)
  end
  return format_g(x, -4, 21)
end
_M.format_print = format_print

--- encoding/json's float64: 'f', or 'e' (exponent without a leading zero) outside
--- [1e-6, 1e21). Returns nil, "json: unsupported value: NaN" for NaN and the infinities.
local function format_json(x)
  if x == floor(x) and x > -2 ^ 53 and x < 2 ^ 53 and not (x == 0 and 1 / x < 0) then
    return fmt("%d", x)
  end
  -- the common case first: 15 significant digits that round-trip and need no exponent are the
  -- shortest digits already, in the fixed layout Go uses below 1e21
  local s = fmt("%.15g", x)
  if tonumber(s) == x and not find(s, "[enN]") then return s end
  s = special(x)
  if s then return nil, "json: unsupported value: " .. s end
  local a = x < 0 and -x or x
  if a ~= 0 and (a < 1e-6 or a >= 1e21) then
    return (gsub(format_g(x, 0, 0), "e([-+])0(%d)$", "e%1%2"))
  end
  return sign(x) .. fixed(shortest(x))
end
_M.format_json = format_json

-- Decoding -------------------------------------------------------------------------------------
-- cjson.decode, except that empty arrays come out marked. Text that holds an empty array is
-- rewritten so that cjson decodes each [] to a one-element array holding a marker string (one
-- no event carries in practice), then those are swapped for marked empty tables. Text without
-- "[]" takes cjson's fast path untouched.

local EMPTY_MARK = "\0herald:empty-array\0"

local function unmark(v)
  if type(v) ~= "table" then return v end
  if v[1] == EMPTY_MARK and v[2] == nil then return setmetatable({}, ARRAY_MT) end
  for k, x in pairs(v) do
    if type(x) == "table" then v[k] = unmark(x) end
  end
  return v
end

--- Decodes JSON text (raises as cjson does); empty arrays come out marked.
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

--- decode that returns nil, err instead of raising (the error without cjson's position prefix).
function _M.try_decode(json)
  local ok, v = pcall(_M.decode, json)
  if ok then return v end
  return nil, (gsub(tostring(v), "^.-:%d+: ", ""))
end

-- Encoding -------------------------------------------------------------------------------------
-- encoding/json.Marshal's text: object keys sorted, numbers as format_json, marked empty
-- tables as [], unmarked ones as {}. A table whose metatable has __tojson (sprig's time values)
-- encodes as the string it returns.

local ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function esc_char(c)
  return ESC[c] or fmt("\\u%04x", byte(c))
end

--- A JSON string literal; html escapes <, > and & as json.Marshal does (SetEscapeHTML).
local function quote(s, html)
  -- most strings need no escape at all: one scan says so
  if not html and not find(s, '[%z\1-\31"\\\226]') then return '"' .. s .. '"' end
  s = gsub(s, html and '[%z\1-\31"\\<>&]' or '[%z\1-\31"\\]', esc_char)
  if find(s, "\226\128[\168\169]") then
    s = gsub(gsub(s, "\226\128\168", "\\u2028"), "\226\128\169", "\\u2029")
  end
  return '"' .. s .. '"'
end
_M.quote = quote

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta == tb and (ta == "string" or ta == "number") then return a < b end
  return tostring(a) < tostring(b)
end

local function enc(v, html, indent, cur, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = quote(v, html)
  elseif t == "number" then
    local s, err = format_json(v)
    if not s then error(err, 0) end
    out[#out + 1] = s
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == nil or v == null then
    out[#out + 1] = "null"
  elseif t == "table" then
    local mt = getmetatable(v)
    if mt and mt.__tojson then
      out[#out + 1] = quote(mt.__tojson(v), html)
      return
    end
    local inner = indent and (cur .. indent) or nil
    if is_array(v) then
      if v[1] == nil then out[#out + 1] = "[]" return end
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        if inner then out[#out + 1] = "\n" .. inner end
        enc(v[i], html, indent, inner, out)
      end
      if inner then out[#out + 1] = "\n" .. cur end
      out[#out + 1] = "]"
    elseif next(v) == nil then
      out[#out + 1] = "{}"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      sort(keys, key_less)
      out[#out + 1] = "{"
      for i = 1, #keys do
        local k = keys[i]
        if i > 1 then out[#out + 1] = "," end
        if inner then out[#out + 1] = "\n" .. inner end
        out[#out + 1] = quote(type(k) == "string" and k or
          (type(k) == "number" and format_print(k) or tostring(k)), html)
        out[#out + 1] = inner and ": " or ":"
        enc(v[k], html, indent, inner, out)
      end
      if inner then out[#out + 1] = "\n" .. cur end
      out[#out + 1] = "}"
    end
  else
    error("json: unsupported type: " .. t, 0)
  end
end

--- JSON text of v as Go's json.Marshal writes it (html: escape <, > and &; indent: as
--- json.MarshalIndent with that indent). Raises "json: unsupported value: NaN" and the like.
function _M.encode(v, html, indent)
  local out = {}
  enc(v, html, indent, "", out)
  return concat(out)
end

return _M
