-- herald/govaluate.lua: Knetic/govaluate (the engine behind Sensor `exprs` filters) compiled to
-- Lua source.
--
--   local gv = require "herald.govaluate"
--   local c, err = gv.compile('a == "b" && b > 10')
--   c.params   --> { "a", "b" }
--   c.source   --> readable Lua chunk; load(c.source)() returns the evaluator
--   c.fn({ a = "b", b = 11 })  --> true       (runtime type errors: nil, "Value ...")
--
-- The expression is lexed and checked the way govaluate does it (parsing.go, lexerState.go),
-- parsed with govaluate's precedence levels (stagePlanner.go: separator < ternary < || < && <
-- comparators < bitwise < shifts < additive < multiplicative < ** < prefix), left-associative
-- like govaluate after reorderStages, and turned into one straight-line Lua function of the
-- params table. Type checks, short circuits and error texts follow evaluationStage.go.
--
-- Values: numbers are Lua numbers (float64), strings, booleans, tables decoded by lua-cjson
-- (arrays and objects), and JSON null as cjson.null. A parameter that is absent from the
-- params table (nil) is "No parameter 'x' found."; bind JSON null as cjson.null.
local _M = {}

local type, tostring, tonumber, pairs, ipairs, select = type, tostring, tonumber, pairs, ipairs, select
local fmt, concat, sort = string.format, table.concat, table.sort
local byte, sub, find = string.byte, string.sub, string.find
local floor, huge = math.floor, math.huge

local cjson = require "cjson"
local json = require "herald.json"
local NULL = cjson.null

---------------------------------------------------------------------------------------------
-- Runtime helpers (shared with herald.exprlang): Go value formatting and equality.
---------------------------------------------------------------------------------------------

local R = {}
_M.runtime = R
R.NULL = NULL

--- True for a Lua table that stands for a JSON array (herald.json.is_array).
local json_is_array = json.is_array
local function is_array(t)
  return type(t) == "table" and json_is_array(t)
end
R.is_array = is_array

--- fmt's %v for a float64.
local go_v_float = json.format_v
R.go_v_float = go_v_float

local function go_v(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return go_v_float(v) end
  if t == "boolean" then return v and "true" or "false" end
  if v == nil or v == NULL then return "<nil>" end
  if t == "table" then
    local parts = {}
    if is_array(v) then
      for i = 1, #v do parts[i] = go_v(v[i]) end
      return "[" .. concat(parts, " ") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for i, k in ipairs(keys) do parts[i] = go_v(k) .. ":" .. go_v(v[k]) end
    return "map[" .. concat(parts, " ") .. "]"
  end
  return tostring(v)
end
R.go_v = go_v

--- reflect.DeepEqual over decoded JSON values (nil and cjson.null are the same nil).
local function deep_equal(a, b)
  if a == b then return true end
  if a == nil then a = NULL end
  if b == nil then b = NULL end
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  local aa, ba = is_array(a), is_array(b)
  if aa ~= ba then return false end
  if aa then
    if #a ~= #b then return false end
    for i = 1, #a do if not deep_equal(a[i], b[i]) then return false end end
    return true
  end
  for k, av in pairs(a) do
    local bv = b[k]
    if bv == nil or not deep_equal(av, bv) then return false end
  end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
R.deep_equal = deep_equal
R.eq = function(a, b)
  if a == b then return true end
  if (a == nil or a == NULL) and (b == nil or b == NULL) then return true end
  if type(a) == "table" and type(b) == "table" then return deep_equal(a, b) end
  return false
end

local core_mod
local function regex_compile(pattern)
  if not core_mod then
    core_mod = require "herald.core"
  end
  return core_mod.regex_compile(pattern)
end
R.regex_compile = regex_compile

local regex_cache = setmetatable({}, { __mode = "v" })
--- Compiles (and caches) a pattern met at run time.
function R.regex(pattern)
  local re = regex_cache[pattern]
  if re then return re end
  local err
  re, err = regex_compile(pattern)
  if not re then return nil, err end
  regex_cache[pattern] = re
  return re
end

--- Compiles a constant pattern when the generated chunk loads (it was validated by compile).
function R.const_regex(pattern)
  return assert(R.regex(pattern))
end

---------------------------------------------------------------------------------------------
-- govaluate runtime: error texts (evaluationStage.go) and the bitwise operators.
---------------------------------------------------------------------------------------------

local FORMATS = {
  logical = "Value '%s' cannot be used with the logical operator '%s', it is not a bool",
  modifier = "Value '%s' cannot be used with the modifier '%s', it is not a number",
  comparator = "Value '%s' cannot be used with the comparator '%s', it is not a number",
  ternary = "Value '%s' cannot be used with the ternary operator '%s', it is not a bool",
  prefix = "Value '%s' cannot be used with the prefix '%s'",
}

--- The type error for value v and operator op, in govaluate's words.
function R.terr(kind, v, op)
  return fmt(FORMATS[kind], go_v(v), op)
end

function R.noparam(name)
  return "No parameter '" .. name .. "' found."
end

--- String concatenation of `+` (fmt.Sprintf("%v%v")).
function R.concat(a, b)
  return go_v(a) .. go_v(b)
end

--- `IN` over an array value.
function R.inlist(v, list)
  for i = 1, #list do
    local x = list[i]
    if x == v or ((x == NULL or x == nil) and (v == NULL or v == nil)) then return true end
  end
  return false
end

--- A separator list: govaluate appends to the left value when it already is an array.
function R.seplist(first, n, ...)
  local out
  if is_array(first) then
    out = json.array()
    for i = 1, #first do out[i] = first[i] end
  else
    out = json.array({ first == nil and NULL or first })
  end
  for i = 1, n do
    local x = select(i, ...)
    out[#out + 1] = x == nil and NULL or x
  end
  return out
end

local bit = require "bit"
local ffi = require "ffi"
local TWO63 = 2 ^ 63
local function i64(x) return ffi.new("int64_t", x) end
local function u64(x)
  if x >= TWO63 then return ffi.new("uint64_t", x) end
  return ffi.cast("uint64_t", ffi.new("int64_t", x))
end
function R.band(a, b) return tonumber(bit.band(i64(a), i64(b))) end
function R.bor(a, b) return tonumber(bit.bor(i64(a), i64(b))) end
function R.bxor(a, b) return tonumber(bit.bxor(i64(a), i64(b))) end
function R.bnot(a) return tonumber(bit.bnot(i64(a))) end
function R.shl(a, b)
  local n = u64(b)
  if n >= 64 then return 0 end
  return tonumber(bit.lshift(u64(a), tonumber(n)))
end
function R.shr(a, b)
  local n = u64(b)
  if n >= 64 then return 0 end
  return tonumber(bit.rshift(u64(a), tonumber(n)))
end

---------------------------------------------------------------------------------------------
-- Dates: govaluate turns a string literal that parses as a date into its Unix time.
---------------------------------------------------------------------------------------------

local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local MDAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
local function valid_date(y, m, d)
  if m < 1 or m > 12 or d < 1 then return false end
  local md = MDAYS[m]
  if m == 2 and (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then md = 29 end
  return d <= md
end

local function unix(y, mo, d, h, mi, s, off)
  if not valid_date(y, mo, d) or h > 23 or mi > 59 or s > 59 then return nil end
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - (off or 0)
end

local function tz_offset(z, colon)
  if z == "Z" then return 0 end
  local sign, hh, mm
  if colon then sign, hh, mm = z:match("^([+-])(%d%d):(%d%d)$")
  else sign, hh, mm = z:match("^([+-])(%d%d)(%d%d)$") end
  if not sign then return nil end
  local off = tonumber(hh) * 3600 + tonumber(mm) * 60
  return sign == "-" and -off or off
end

--- tryParseTime (parsing.go) for the numeric layouts and Kitchen; the local zone is UTC.
--- Returns the Unix time in seconds, or nil. ANSIC, UnixDate and RubyDate are not recognised.
local function parse_time(s)
  if not find(s, "[:-]") then return nil end
  local h, mi, ap = s:match("^(%d%d?):(%d%d)([AP]M)$") -- Kitchen "3:04PM" (year 0, Jan 1)
  if h then
    h, mi = tonumber(h), tonumber(mi)
    if h > 12 or mi > 59 then return nil end
    if ap == "PM" and h < 12 then h = h + 12 elseif ap == "AM" and h == 12 then h = 0 end
    return unix(0, 1, 1, h, mi, 0)
  end
  local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if rest == "" then return unix(y, mo, d, 0, 0, 0) end
  local sec, z
  -- "2006-01-02 15:04", "2006-01-02 15:04:05", "2006-01-02 15:04:05-07:00"
  h, mi, rest = rest:match("^ (%d%d?):(%d%d)(.*)$")
  if h then
    if rest == "" then return unix(y, mo, d, tonumber(h), tonumber(mi), 0) end
    sec, rest = rest:match("^:(%d%d)(.*)$")
    if not sec then return nil end
    rest = rest:gsub("^%.%d+", "", 1)
    if rest == "" then return unix(y, mo, d, tonumber(h), tonumber(mi), tonumber(sec)) end
    local off = tz_offset(rest, true)
    if not off or rest == "Z" then return nil end
    return unix(y, mo, d, tonumber(h), tonumber(mi), tonumber(sec), off)
  end
  -- RFC 3339 "2006-01-02T15:04:05Z07:00" (and Nano), ISO 8601 "2006-01-02T15Z0700",
  -- "2006-01-02T15:04Z0700", "2006-01-02T15:04:05Z0700", "...05.999999999Z0700"
  local t = s:match("^%d%d%d%d%-%d%d%-%d%dT(.*)$")
  if not t then return nil end
  h, rest = t:match("^(%d%d?)(.*)$")
  if not h then return nil end
  mi, sec = "0", "0"
  local m2, r2 = rest:match("^:(%d%d)(.*)$")
  if m2 then
    mi, rest = m2, r2
    local s2, r3 = rest:match("^:(%d%d)(.*)$")
    if s2 then sec, rest = s2, r3:gsub("^%.%d+", "", 1) end
  end
  z = rest
  local off = tz_offset(z, true) or tz_offset(z, false)
  if not off then return nil end
  if not m2 and z:find(":") then return nil end -- "15Z07:00" is no layout
  return unix(y, mo, d, tonumber(h), tonumber(mi), tonumber(sec), off)
end
_M.parse_time = parse_time

---------------------------------------------------------------------------------------------
-- Lexer (parsing.go readToken) and syntax check (lexerState.go).
---------------------------------------------------------------------------------------------

local PREFIX_SYMBOLS = { ["-"] = true, ["!"] = true, ["~"] = true }
local MODIFIER_SYMBOLS = {
  ["+"] = true, ["-"] = true, ["*"] = true, ["/"] = true, ["%"] = true, ["**"] = true,
  ["&"] = true, ["|"] = true, ["^"] = true, [">>"] = true, ["<<"] = true,
}
local LOGICAL_SYMBOLS = { ["&&"] = true, ["||"] = true }
local COMPARATOR_SYMBOLS = {
  ["=="] = true, ["!="] = true, [">"] = true, [">="] = true, ["<"] = true, ["<="] = true,
  ["=~"] = true, ["!~"] = true, ["in"] = true,
}
local TERNARY_SYMBOLS = { ["?"] = true, [":"] = true, ["??"] = true }

local VALUES = { "PREFIX", "NUMERIC", "BOOLEAN", "VARIABLE", "PATTERN", "FUNCTION", "ACCESSOR", "STRING", "TIME", "CLAUSE" }
local function set(list, extra)
  local s = {}
  for _, k in ipairs(list) do s[k] = true end
  for _, k in ipairs(extra or {}) do s[k] = true end
  return s
end
local AFTER_VALUE = { "MODIFIER", "COMPARATOR", "LOGICALOP", "CLAUSE_CLOSE", "TERNARY", "SEPARATOR" }
-- kind -> { eof = may end the expression, next = kinds that may follow }
local STATES = {
  UNKNOWN = { eof = false, next = set(VALUES) },
  CLAUSE = { eof = false, next = set(VALUES, { "CLAUSE_CLOSE" }) },
  CLAUSE_CLOSE = { eof = true, next = set({ "COMPARATOR", "MODIFIER", "NUMERIC", "BOOLEAN", "VARIABLE", "STRING", "PATTERN", "TIME", "CLAUSE", "CLAUSE_CLOSE", "LOGICALOP", "TERNARY", "SEPARATOR" }) },
  NUMERIC = { eof = true, next = set(AFTER_VALUE) },
  BOOLEAN = { eof = true, next = set(AFTER_VALUE) },
  STRING = { eof = true, next = set(AFTER_VALUE) },
  TIME = { eof = true, next = set({ "MODIFIER", "COMPARATOR", "LOGICALOP", "CLAUSE_CLOSE", "SEPARATOR" }) },
  PATTERN = { eof = true, next = set({ "MODIFIER", "COMPARATOR", "LOGICALOP", "CLAUSE_CLOSE", "SEPARATOR" }) },
  VARIABLE = { eof = true, next = set(AFTER_VALUE) },
  MODIFIER = { eof = false, next = set({ "PREFIX", "NUMERIC", "VARIABLE", "FUNCTION", "ACCESSOR", "STRING", "BOOLEAN", "CLAUSE", "CLAUSE_CLOSE" }) },
  COMPARATOR = { eof = false, next = set({ "PREFIX", "NUMERIC", "BOOLEAN", "VARIABLE", "FUNCTION", "ACCESSOR", "STRING", "TIME", "CLAUSE", "CLAUSE_CLOSE", "PATTERN" }) },
  LOGICALOP = { eof = false, next = set({ "PREFIX", "NUMERIC", "BOOLEAN", "VARIABLE", "FUNCTION", "ACCESSOR", "STRING", "TIME", "CLAUSE", "CLAUSE_CLOSE" }) },
  PREFIX = { eof = false, next = set({ "NUMERIC", "BOOLEAN", "VARIABLE", "FUNCTION", "ACCESSOR", "CLAUSE", "CLAUSE_CLOSE" }) },
  TERNARY = { eof = false, next = set({ "PREFIX", "NUMERIC", "BOOLEAN", "STRING", "TIME", "VARIABLE", "FUNCTION", "ACCESSOR", "CLAUSE", "SEPARATOR" }) },
  FUNCTION = { eof = false, next = set({ "CLAUSE" }) },
  ACCESSOR = { eof = true, next = set({ "CLAUSE", "MODIFIER", "COMPARATOR", "LOGICALOP", "CLAUSE_CLOSE", "TERNARY", "SEPARATOR" }) },
  SEPARATOR = { eof = false, next = set({ "PREFIX", "NUMERIC", "BOOLEAN", "STRING", "TIME", "VARIABLE", "FUNCTION", "ACCESSOR", "CLAUSE" }) },
}

local function is_space(c) return c == 32 or (c >= 9 and c <= 13) end
local function is_digit(c) return c >= 48 and c <= 57 end
-- unicode.IsLetter, approximated: ASCII letters and any non-ASCII byte (UTF-8 sequences)
local function is_letter(c) return (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c >= 128 end
local function is_quote(c) return c == 39 or c == 34 end
local function is_numeric(c) return is_digit(c) or c == 46 end
local function is_hex(c) return is_digit(c) or (c >= 97 and c <= 102) or (c >= 65 and c <= 70) end
local function is_varname(c) return is_letter(c) or is_digit(c) or c == 95 or c == 46 end
local function is_symbol(c)
  return not (is_digit(c) or is_letter(c) or c == 40 or c == 41 or c == 91 or c == 93 or is_quote(c) or is_space(c))
end

--- 1-based column (in characters) of byte offset i.
local function column(s, i)
  local col = 0
  for j = 1, i - 1 do
    local b = byte(s, j)
    if b < 0x80 or b >= 0xC0 then col = col + 1 end
  end
  return col + 1
end

local function read_while(s, i, pred)
  local j = i
  local n = #s
  while j <= n and pred(byte(s, j)) do j = j + 1 end
  return sub(s, i, j - 1), j
end

--- Reads an escaped run (strings, [names]) until stop(c); returns text, next index, closed.
local function read_escaped(s, i, stop)
  local out, n = {}, #s
  while i <= n do
    local c = byte(s, i)
    if c == 92 then -- backslash escapes anything
      out[#out + 1] = sub(s, i + 1, i + 1)
      i = i + 2
    elseif stop(c) then
      return concat(out), i + 1, true
    else
      out[#out + 1] = sub(s, i, i)
      i = i + 1
    end
  end
  return concat(out), i, false
end

local function token_text(t)
  if t.text then return t.text end
  return tostring(t.value)
end

local function lex(s)
  local toks = {}
  local i, n = 1, #s
  local state = STATES.UNKNOWN
  local function err(msg, at) return nil, msg .. " at column " .. column(s, at) end
  while true do
    while i <= n and is_space(byte(s, i)) do i = i + 1 end
    if i > n then break end
    local c = byte(s, i)
    local start = i
    local kind, value, text
    if is_numeric(c) then
      if c == 48 and i + 2 <= n and byte(s, i + 1) == 120 then -- 0x
        local hex
        hex, i = read_while(s, i + 2, is_hex)
        value = tonumber(hex, 16)
        if hex == "" or not value then return err("Unable to parse hex value '" .. hex .. "' to uint64", start) end
        kind = "NUMERIC"
      else
        text, i = read_while(s, i, is_numeric)
        value = tonumber(text)
        if not value or text:find("^%.$") then
          return err("Unable to parse numeric value '" .. text .. "' to float64", start)
        end
        kind = "NUMERIC"
      end
      text = sub(s, start, i - 1)
    elseif c == 44 then
      kind, value, i = "SEPARATOR", ",", i + 1
    elseif c == 91 then -- [escaped variable]
      local closed
      value, i, closed = read_escaped(s, i + 1, function(b) return b == 93 end)
      if not closed then return err("unclosed parameter bracket", start) end
      kind = "VARIABLE"
      text = sub(s, start, i - 1)
    elseif is_letter(c) then
      text, i = read_while(s, i, is_varname)
      if text == "true" or text == "false" then
        kind, value = "BOOLEAN", text == "true"
      elseif text == "in" or text == "IN" then
        kind, value = "COMPARATOR", "in"
      else
        kind, value = "VARIABLE", text
      end
      if text:find(".", 1, true) then
        if text:sub(-1) == "." then return err("Hanging accessor on token '" .. text .. "'", start) end
        local parts = {}
        for part in (text .. "."):gmatch("([^.]*)%.") do parts[#parts + 1] = part end
        for k = 2, #parts do
          local first = parts[k]:sub(1, 1)
          if first:upper() ~= first then
            return err("Unable to access unexported field '" .. parts[k] .. "' in token '" .. text .. "'", start)
          end
        end
        kind, value = "ACCESSOR", parts
      end
    elseif is_quote(c) then
      local closed
      value, i, closed = read_escaped(s, i + 1, is_quote)
      if not closed then return err("unclosed string literal", start) end
      text = sub(s, start, i - 1)
      local t = parse_time(value)
      if t then kind, value = "TIME", t else kind = "STRING" end
    elseif c == 40 then
      kind, value, i = "CLAUSE", "(", i + 1
    elseif c == 41 then
      kind, value, i = "CLAUSE_CLOSE", ")", i + 1
    else
      text, i = read_while(s, i, is_symbol)
      value = text
      if state.next.PREFIX and PREFIX_SYMBOLS[text] then kind = "PREFIX"
      elseif MODIFIER_SYMBOLS[text] then kind = "MODIFIER"
      elseif LOGICAL_SYMBOLS[text] then kind = "LOGICALOP"
      elseif COMPARATOR_SYMBOLS[text] then kind = "COMPARATOR"
      elseif TERNARY_SYMBOLS[text] then kind = "TERNARY"
      else return err("Invalid token: '" .. text .. "'", start) end
    end
    toks[#toks + 1] = { kind = kind, value = value, text = text, pos = start, col = column(s, start) }
    state = STATES[kind]
  end

  -- checkBalance
  local depth, opens = 0, {}
  for _, t in ipairs(toks) do
    if t.kind == "CLAUSE" then
      depth = depth + 1
      opens[depth] = t
    elseif t.kind == "CLAUSE_CLOSE" then
      if depth == 0 then return nil, "unbalanced parenthesis at column " .. t.col end
      depth = depth - 1
    end
  end
  if depth > 0 then return nil, "unbalanced parenthesis at column " .. opens[depth].col end

  -- checkExpressionSyntax
  state = STATES.UNKNOWN
  local last
  for _, t in ipairs(toks) do
    if not state.next[t.kind] then
      if last and last.kind == "VARIABLE" and t.kind == "CLAUSE" then
        return nil, "Undefined function " .. last.value .. " at column " .. last.col
      end
      return nil, "unexpected token '" .. token_text(t) .. "' at column " .. t.col
    end
    state = STATES[t.kind]
    last = t
  end
  if not state.eof then
    return nil, "unexpected end of expression at column " .. (column(s, n + 1))
  end
  return toks
end

---------------------------------------------------------------------------------------------
-- Parser (stagePlanner.go precedence levels).
---------------------------------------------------------------------------------------------

local LEVELS = {
  { kind = "TERNARY", ops = { ["?"] = true, [":"] = true, ["??"] = true } },
  { kind = "LOGICALOP", ops = { ["||"] = true } },
  { kind = "LOGICALOP", ops = { ["&&"] = true } },
  { kind = "COMPARATOR", ops = COMPARATOR_SYMBOLS },
  { kind = "MODIFIER", ops = { ["&"] = true, ["|"] = true, ["^"] = true } },
  { kind = "MODIFIER", ops = { ["<<"] = true, [">>"] = true } },
  { kind = "MODIFIER", ops = { ["+"] = true, ["-"] = true } },
  { kind = "MODIFIER", ops = { ["*"] = true, ["/"] = true, ["%"] = true } },
  { kind = "MODIFIER", ops = { ["**"] = true } },
}

local function parse(toks, src)
  local pos = 1
  local function peek() return toks[pos] end
  local function fail(t, what)
    if not t then return error({ msg = (what or "unexpected end of expression") .. " at column " .. column(src, #src + 1) }) end
    error({ msg = (what or ("unexpected token '" .. token_text(t) .. "'")) .. " at column " .. t.col })
  end

  local parse_sep, parse_level, parse_value

  function parse_value()
    local t = toks[pos]
    if not t then fail(nil) end
    pos = pos + 1
    local k = t.kind
    if k == "CLAUSE" then
      local close = toks[pos]
      if close and close.kind == "CLAUSE_CLOSE" then -- "()" is a nil value in govaluate
        pos = pos + 1
        return { op = "lit", value = nil, col = t.col }
      end
      local inner = parse_sep()
      local c = toks[pos]
      if not c or c.kind ~= "CLAUSE_CLOSE" then fail(c) end
      pos = pos + 1
      return { op = "paren", e = inner, col = t.col }
    elseif k == "VARIABLE" then
      return { op = "param", name = t.value, col = t.col }
    elseif k == "ACCESSOR" then
      local node = { op = "access", parts = t.value, col = t.col, text = t.text }
      local nt = toks[pos]
      if nt and nt.kind == "CLAUSE" then node.args = parse_value() end
      return node
    elseif k == "NUMERIC" or k == "STRING" or k == "BOOLEAN" or k == "TIME" then
      return { op = "lit", value = t.value, kind = k, col = t.col }
    elseif k == "PREFIX" then
      local operand = parse_value()
      return { op = "prefix", sym = t.value, e = operand, col = t.col }
    end
    pos = pos - 1
    fail(t)
  end

  function parse_level(lv)
    if lv > #LEVELS then return parse_value() end
    local level = LEVELS[lv]
    local left = parse_level(lv + 1)
    while true do
      local t = toks[pos]
      if not t or t.kind ~= level.kind or not level.ops[t.value] then break end
      pos = pos + 1
      local right = parse_level(lv + 1)
      left = { op = "bin", sym = t.value, l = left, r = right, col = t.col }
    end
    return left
  end

  function parse_sep()
    local first = parse_level(1)
    local t = toks[pos]
    if not t or t.kind ~= "SEPARATOR" then return first end
    local items = { first }
    while t and t.kind == "SEPARATOR" do
      pos = pos + 1
      items[#items + 1] = parse_level(1)
      t = toks[pos]
    end
    return { op = "list", items = items, col = first.col }
  end

  local ok, res = pcall(function()
    if #toks == 0 then return { op = "lit", value = nil } end
    local node = parse_sep()
    if toks[pos] then fail(toks[pos]) end
    return node
  end)
  if not ok then
    if type(res) == "table" then return nil, res.msg end
    error(res, 0)
  end
  return res
end

---------------------------------------------------------------------------------------------
-- Code generation: one Lua function of the params table, statements with early error returns.
---------------------------------------------------------------------------------------------

local luagen = require "herald.luagen"
local lua_string, lua_literal = luagen.string, luagen.scalar

local ARITH = { ["-"] = "-", ["*"] = "*", ["/"] = "/", ["**"] = "^" }
local BITWISE = { ["&"] = "R.band", ["|"] = "R.bor", ["^"] = "R.bxor", ["<<"] = "R.shl", [">>"] = "R.shr" }
local ORDER = { [">"] = true, [">="] = true, ["<"] = true, ["<="] = true }

local function unparen(n)
  while n.op == "paren" do n = n.e end
  return n
end

local function is_lit(n)
  n = unparen(n)
  return n.op == "lit"
end

local function generate(root)
  local out = {}
  local header = {}
  local nconst, ntmp = 0, 0
  local params, seen = {}, {}
  local depth = 1

  local function emit(line) out[#out + 1] = ("  "):rep(depth) .. line end
  local function tmp()
    ntmp = ntmp + 1
    return "t" .. ntmp
  end
  local function const(code)
    nconst = nconst + 1
    local name = "K" .. nconst
    header[#header + 1] = "local " .. name .. " = " .. code
    return name
  end
  local static = {} -- Lua expression -> its Lua type when known at compile time
  local function check(v, ty, err)
    if static[v] ~= ty then emit("if type(" .. v .. ") ~= \"" .. ty .. "\" then return nil, " .. err .. " end") end
  end
  local function typed(t, ty) static[t] = ty; return t end
  local function fail_with(expr) emit("do return nil, " .. expr .. " end") end

  local gen

  local function gen_list(n)
    -- all-literal lists become one constant table; otherwise built per evaluation
    local all_lit, first = true, unparen(n.items[1])
    for _, it in ipairs(n.items) do if not is_lit(it) then all_lit = false end end
    if all_lit then
      local parts = {}
      for i, it in ipairs(n.items) do
        local v = unparen(it).value
        parts[i] = v == nil and "R.NULL" or lua_literal(v)
      end
      return const("{ " .. concat(parts, ", ") .. " }"), true
    end
    local vals = {}
    for i, it in ipairs(n.items) do vals[i] = gen(it) end
    local t = tmp()
    if first.op == "lit" and first.value ~= nil then
      local parts = {}
      for i, v in ipairs(vals) do parts[i] = "(" .. v .. " == nil and R.NULL or " .. v .. ")" end
      emit("local " .. t .. " = { " .. concat(parts, ", ") .. " }")
    else
      emit("local " .. t .. " = R.seplist(" .. vals[1] .. ", " .. (#vals - 1) .. (#vals > 1 and ", " or "") .. concat(vals, ", ", 2) .. ")")
    end
    return t
  end

  -- gen(n) emits statements and returns a Lua expression (a local or a literal) for n's value.
  function gen(n)
    local op = n.op
    if op == "paren" then return gen(n.e) end
    if op == "lit" then
      local text = lua_literal(n.value)
      if n.value ~= nil then static[text] = type(n.value) end
      return text
    end
    if op == "param" then
      if not seen[n.name] then seen[n.name] = true; params[#params + 1] = n.name end
      local t = tmp()
      local key = lua_string(n.name)
      emit("local " .. t .. " = p[" .. key .. "]")
      emit("if " .. t .. " == nil then return nil, " .. lua_string(R.noparam(n.name)) .. " end")
      return t
    end
    if op == "access" then
      local name = n.parts[1]
      if not seen[name] then seen[name] = true; params[#params + 1] = name end
      emit("if p[" .. lua_string(name) .. "] == nil then return nil, " .. lua_string(R.noparam(name)) .. " end")
      if n.args then gen(n.args) end
      fail_with(lua_string("Unable to access '" .. n.parts[2] .. "', '" .. name .. "' is not a struct"))
      return "nil"
    end
    if op == "list" then return (gen_list(n)) end
    if op == "prefix" then
      local v = gen(n.e)
      local t = tmp()
      if n.sym == "-" then
        check(v, "number", "R.terr(\"prefix\", " .. v .. ", \"-\")")
        emit("local " .. t .. " = -" .. v)
        typed(t, "number")
      elseif n.sym == "!" then
        check(v, "boolean", "R.terr(\"prefix\", " .. v .. ", \"!\")")
        emit("local " .. t .. " = not " .. v)
        typed(t, "boolean")
      else
        check(v, "number", "R.terr(\"prefix\", " .. v .. ", \"~\")")
        emit("local " .. t .. " = R.bnot(" .. v .. ")")
        typed(t, "number")
      end
      return t
    end
    assert(op == "bin", op)
    local sym = n.sym
    local t = tmp()

    if sym == "&&" or sym == "||" then
      emit("local " .. t)
      local l = gen(n.l)
      local short = sym == "&&" and "false" or "true"
      emit("if " .. l .. " == " .. short .. " then " .. t .. " = " .. short .. " else")
      depth = depth + 1
      local r = gen(n.r)
      check(l, "boolean", "R.terr(\"logical\", " .. l .. ", \"" .. sym .. "\")")
      check(r, "boolean", "R.terr(\"logical\", " .. r .. ", \"" .. sym .. "\")")
      emit(t .. " = " .. r)
      depth = depth - 1
      emit("end")
      return typed(t, "boolean")
    end
    if sym == "?" then
      emit("local " .. t)
      local l = gen(n.l)
      emit("if " .. l .. " ~= false then")
      depth = depth + 1
      local r = gen(n.r)
      check(l, "boolean", "R.terr(\"ternary\", " .. l .. ", \"?\")")
      emit(t .. " = " .. r)
      depth = depth - 1
      emit("end")
      return t
    end
    if sym == ":" or sym == "??" then
      emit("local " .. t)
      local l = gen(n.l)
      emit("if " .. l .. " ~= nil and " .. l .. " ~= R.NULL then " .. t .. " = " .. l .. " else")
      depth = depth + 1
      local r = gen(n.r)
      emit(t .. " = " .. r)
      depth = depth - 1
      emit("end")
      return t
    end

    -- regex with a constant pattern: compiled once when the chunk loads
    if (sym == "=~" or sym == "!~") and unparen(n.r).op == "lit" and unparen(n.r).kind == "STRING" then
      local l = gen(n.l)
      local re = const("R.const_regex(" .. lua_string(unparen(n.r).value) .. ")")
      emit("if type(" .. l .. ") ~= \"string\" then return nil, R.terr(\"comparator\", " .. l .. ", \"" .. sym .. "\") end")
      emit("local " .. t .. " = " .. (sym == "!~" and "not " or "") .. re .. ":find(" .. l .. ")")
      return typed(t, "boolean")
    end

    -- IN with a list of literals: an inline chain of comparisons
    if sym == "in" then
      local rn = unparen(n.r)
      local l = gen(n.l)
      if rn.op == "list" then
        local all_lit = true
        for _, it in ipairs(rn.items) do if not is_lit(it) then all_lit = false end end
        if all_lit then
          local parts = {}
          for i, it in ipairs(rn.items) do
            local v = unparen(it).value
            parts[i] = v == nil and ("(" .. l .. " == nil or " .. l .. " == R.NULL)") or (l .. " == " .. lua_literal(v))
          end
          emit("local " .. t .. " = " .. concat(parts, " or "))
          return typed(t, "boolean")
        end
      end
      local r = gen(n.r)
      emit("if not R.is_array(" .. r .. ") then return nil, R.terr(\"comparator\", " .. r .. ", \"in\") end")
      emit("local " .. t .. " = R.inlist(" .. l .. ", " .. r .. ")")
      return typed(t, "boolean")
    end

    local l = gen(n.l)
    local r = gen(n.r)
    local ln, rn = unparen(n.l), unparen(n.r)
    local lnum = ln.op == "lit" and type(ln.value) == "number"
    local rnum = rn.op == "lit" and type(rn.value) == "number"
    local lstr = ln.op == "lit" and type(ln.value) == "string"
    local rstr = rn.op == "lit" and type(rn.value) == "string"

    if sym == "==" or sym == "!=" then
      local simple = (ln.op == "lit" and ln.value ~= nil) or (rn.op == "lit" and rn.value ~= nil)
      local cmp = simple and ("(" .. l .. " == " .. r .. ")") or ("R.eq(" .. l .. ", " .. r .. ")")
      emit("local " .. t .. " = " .. (sym == "!=" and "not " or "") .. cmp)
      return typed(t, "boolean")
    end

    if ORDER[sym] then
      local err = "return nil, R.terr(\"comparator\", " .. l .. ", \"" .. sym .. "\")"
      if rnum or lnum then
        check(rnum and l or r, "number", err:sub(12))
      elseif rstr or lstr then
        check(rstr and l or r, "string", err:sub(12))
      elseif static[l] and static[l] == static[r] and (static[l] == "number" or static[l] == "string") then
        -- both sides are known to be comparable
      else
        emit("do local lt, rt = type(" .. l .. "), type(" .. r .. ")")
        emit("  if not ((lt == \"number\" and rt == \"number\") or (lt == \"string\" and rt == \"string\")) then " .. err .. " end")
        emit("end")
      end
      emit("local " .. t .. " = " .. l .. " " .. sym .. " " .. r)
      return typed(t, "boolean")
    end

    if sym == "=~" or sym == "!~" then
      emit("if type(" .. l .. ") ~= \"string\" then return nil, R.terr(\"comparator\", " .. l .. ", \"" .. sym .. "\") end")
      emit("if type(" .. r .. ") ~= \"string\" then return nil, R.terr(\"comparator\", " .. r .. ", \"" .. sym .. "\") end")
      emit("local " .. t .. ", " .. t .. "e = R.regex(" .. r .. ")")
      emit("if not " .. t .. " then return nil, \"Unable to compile regexp pattern '\" .. " .. r .. " .. \"': \" .. tostring(" .. t .. "e) end")
      emit(t .. " = " .. (sym == "!~" and "not " or "") .. t .. ":find(" .. l .. ")")
      return typed(t, "boolean")
    end

    if sym == "+" then
      if lnum or rnum then
        local v = lnum and r or l
        emit("local " .. t)
        emit("if type(" .. v .. ") == \"number\" then " .. t .. " = " .. l .. " + " .. r)
        emit("elseif type(" .. v .. ") == \"string\" then " .. t .. " = R.concat(" .. l .. ", " .. r .. ")")
        emit("else return nil, R.terr(\"modifier\", " .. l .. ", \"+\") end")
      elseif lstr or rstr then
        emit("local " .. t .. " = R.concat(" .. l .. ", " .. r .. ")")
      else
        emit("local " .. t)
        emit("do local lt, rt = type(" .. l .. "), type(" .. r .. ")")
        emit("  if lt == \"number\" and rt == \"number\" then " .. t .. " = " .. l .. " + " .. r)
        emit("  elseif lt == \"string\" or rt == \"string\" then " .. t .. " = R.concat(" .. l .. ", " .. r .. ")")
        emit("  else return nil, R.terr(\"modifier\", " .. l .. ", \"+\") end")
        emit("end")
      end
      return t
    end

    -- the numeric modifiers: - * / % ** and the bitwise ones
    check(l, "number", "R.terr(\"modifier\", " .. l .. ", \"" .. sym .. "\")")
    check(r, "number", "R.terr(\"modifier\", " .. r .. ", \"" .. sym .. "\")")
    if ARITH[sym] then
      emit("local " .. t .. " = " .. l .. " " .. ARITH[sym] .. " " .. r)
    elseif sym == "%" then
      emit("local " .. t .. " = fmod(" .. l .. ", " .. r .. ")")
    else
      emit("local " .. t .. " = " .. BITWISE[sym] .. "(" .. l .. ", " .. r .. ")")
    end
    return typed(t, "number")
  end

  local result = gen(root)
  emit("return " .. result)
  return header, out, params
end

---------------------------------------------------------------------------------------------
-- Public API
---------------------------------------------------------------------------------------------

---@class herald.govaluate.Compiled
---@field expr string the expression
---@field source string a Lua chunk; load(source)() returns the evaluator
---@field params string[] parameter names the expression reads, in order of first use
---@field fn fun(params: table): any, string? the evaluator: value, or nil and an error

--- Compiles a govaluate expression to Lua.
---@param expr string
---@return herald.govaluate.Compiled|nil
---@return string? err parse error with its 1-based column
function _M.compile(expr)
  if type(expr) ~= "string" then return nil, "expression must be a string" end
  local toks, err = lex(expr)
  if not toks then return nil, err end
  -- optimizeTokens: constant patterns are compiled at parse time
  for i, t in ipairs(toks) do
    if t.kind == "COMPARATOR" and (t.value == "=~" or t.value == "!~") then
      local nt = toks[i + 1]
      if nt and nt.kind == "STRING" then
        local re, rerr = regex_compile(nt.value)
        if not re then
          return nil, "error parsing regexp '" .. nt.value .. "' at column " .. nt.col .. ": " .. tostring(rerr)
        end
      end
    end
  end
  local pok, ast
  pok, ast, err = pcall(parse, toks, expr)
  if not pok then
    -- the recursive parser runs out of Lua stack on deep nesting ("((((..."): say so
    if tostring(ast):find("stack overflow", 1, true) then return nil, "expression nested too deeply" end
    error(ast, 0)
  end
  if not ast then return nil, err end
  local header, body, params = generate(ast)
  local source, fn = luagen.evaluator("govaluate", expr, {
    "local R = require(\"herald.govaluate\").runtime",
    "local type, tostring, fmod = type, tostring, math.fmod",
  }, header, "p", body)
  if not source then return nil, fn end
  return { expr = expr, source = source, params = params, fn = fn }
end

--- Compiles and evaluates once (tests, `herald eval`).
---@param expr string
---@param params table
---@return any value
---@return string? err
function _M.evaluate(expr, params)
  local c, err = _M.compile(expr)
  if not c then return nil, err end
  return c.fn(params or {})
end

return _M
