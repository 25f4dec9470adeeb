-- herald/gjson.lua: GJSON paths (github.com/tidwall/gjson, SYNTAX.md) over decoded Lua values.
--
-- Argo Events reads event data with gjson (data filters, expr fields, trigger parameter
-- dataKey/contextKey). Herald events are already decoded by lua-cjson, so this module walks Lua
-- values instead of JSON text, with the same path language and the same answers:
--
--   local gjson = require "herald.gjson"
--   local get = assert(gjson.compile("friends.#(last==\"Murphy\")#.first"))
--   local v = get(event.data)          -- a Lua value, or nil when the path does not exist
--   gjson.string(v), gjson.bool(v), gjson.number(v), gjson.raw(v), gjson.type(v)
--
-- Results are "light": the getter returns the Lua value itself (nil = does not exist, cjson.null
-- = JSON null, which exists). gjson.result(v) builds a {exists, value, type} table when wanted.
-- Composed arrays (queries with #, multipaths [..], @keys ...) carry gjson.array_mt so that
-- an empty one still prints as [].
--
-- Values lost in decoding: object key order (wildcard keys, @keys, @values, @dig and JSON
-- text use sorted keys instead of document order), the original spelling of numbers and
-- strings (printed the way Go's gjson prints computed values). Empty arrays are told from
-- empty objects by herald.json's marker (herald.json.decode sets it). See docs/compat.md.
local cjson = require "cjson"
local json = require "herald.json"

local type, next, pairs, tonumber, pcall, load = type, next, pairs, tonumber, pcall, load
local getmetatable, setmetatable, error = getmetatable, setmetatable, error
local byte, sub, find, fmt, lower, rep, char = string.byte, string.sub, string.find,
  string.format, string.lower, string.rep, string.char
local gsub, match = string.gsub, string.match
local concat, sort = table.concat, table.sort
local floor, huge = math.floor, math.huge

local null = cjson.null
local decode = json.decode

local _M = {}

_M.null = null

--- Metatable marking arrays (herald.json's), so an empty one prints as [].
local ARRAY_MT = json.ARRAY_MT
_M.array_mt = ARRAY_MT
local is_array = json.is_array

-- bytes
local DOT, PIPE, HASH, AT, BANG, BSL = 46, 124, 35, 64, 33, 92
local STAR, QM, LBRK, RBRK, LBRC, RBRC, LPAR, RPAR = 42, 63, 91, 93, 123, 125, 40, 41
local DQ, COLON, COMMA, EQ, LT, GT, PCT, TILDE = 34, 58, 44, 61, 60, 62, 37, 126
local PLUS, MINUS, ZERO, NINE = 43, 45, 48, 57

local OBJECT, ARRAY = 1, 2

local new_array = json.array

--- Kind of a table: ARRAY (herald.json.is_array) or OBJECT.
local function kind(t)
  return is_array(t) and ARRAY or OBJECT
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    if type(k) == "string" then keys[#keys + 1] = k end
  end
  sort(keys)
  return keys
end

-- Scalars and text ---------------------------------------------------------------------------

--- strconv.FormatFloat(n, 'f', -1, 64): how gjson prints a computed number.
local go_number = json.format_f

local JSON_ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function esc_char(c)
  return JSON_ESC[c] or fmt("\\u%04x", byte(c))
end

--- A JSON string literal (minimal escaping: quote, backslash, control characters).
local function quote(s)
  return '"' .. gsub(s, '[%z\1-\31"\\]', esc_char) .. '"'
end

local function encode_into(v, buf)
  local tv = type(v)
  if tv == "string" then
    buf[#buf + 1] = quote(v)
  elseif tv == "number" then
    buf[#buf + 1] = go_number(v)
  elseif tv == "boolean" then
    buf[#buf + 1] = v and "true" or "false"
  elseif tv == "table" then
    local k = kind(v)
    if k == ARRAY then
      buf[#buf + 1] = "["
      for i = 1, #v do
        if i > 1 then buf[#buf + 1] = "," end
        encode_into(v[i], buf)
      end
      buf[#buf + 1] = "]"
    else
      buf[#buf + 1] = "{"
      local keys = sorted_keys(v)
      for i = 1, #keys do
        if i > 1 then buf[#buf + 1] = "," end
        buf[#buf + 1] = quote(keys[i])
        buf[#buf + 1] = ":"
        encode_into(v[keys[i]], buf)
      end
      buf[#buf + 1] = "}"
    end
  else
    buf[#buf + 1] = "null"
  end
end

--- The JSON text of a value ("" for nil). Object keys come out sorted.
---@param v any
---@return string
local function raw(v)
  local tv = type(v)
  if v == nil then return "" end
  if tv == "string" then return quote(v) end
  if tv == "number" then return go_number(v) end
  if tv == "boolean" then return v and "true" or "false" end
  if tv ~= "table" then return "null" end
  local buf = {}
  encode_into(v, buf)
  return concat(buf)
end
_M.raw = raw

--- Result.String(): strings as is, numbers as Go prints them, true/false, null and missing as
--- "", objects and arrays as JSON text.
---@param v any
---@return string
function _M.string(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then return go_number(v) end
  if tv == "boolean" then return v and "true" or "false" end
  if tv == "table" then return raw(v) end
  return ""
end

local PARSE_BOOL = { ["1"] = true, t = true, T = true, TRUE = true, ["true"] = true, True = true,
  ["0"] = false, f = false, F = false, FALSE = false, ["false"] = false, False = false }

--- Result.Bool(): true, non-zero numbers, strings strconv.ParseBool(lower(s)) accepts as true.
---@param v any
---@return boolean
local function to_bool(v)
  local tv = type(v)
  if tv == "boolean" then return v end
  if tv == "number" then return v ~= 0 end
  if tv == "string" then return PARSE_BOOL[lower(v)] == true end
  return false
end
_M.bool = to_bool

--- strconv.ParseFloat(s, 64): a number, or nil when Go would return an error.
local function parse_float(s)
  if s == "" or find(s, "[%s_xX]") then return nil end
  local n = tonumber(s)
  if n then return n end
  local sign, word = match(lower(s), "^([+-]?)(%a+)$")
  if word == "inf" or word == "infinity" then return sign == "-" and -huge or huge end
  if word == "nan" then return 0 / 0 end
  return nil
end
_M.parse_float = parse_float

--- Result.Float(): numbers, true = 1, strings through strconv.ParseFloat (0 on error).
---@param v any
---@return number
function _M.number(v)
  local tv = type(v)
  if tv == "number" then return v end
  if v == true then return 1 end
  if tv == "string" then return parse_float(v) or 0 end
  return 0
end

--- Result.Type as a string: "Null" (also for a missing value), "False", "Number", "String",
--- "True" or "JSON".
---@param v any
---@return string
function _M.type(v)
  local tv = type(v)
  if tv == "string" then return "String" end
  if tv == "number" then return "Number" end
  if v == true then return "True" end
  if v == false then return "False" end
  if tv == "table" then return "JSON" end
  return "Null"
end

--- Result.Exists().
function _M.exists(v)
  return v ~= nil
end

--- A full Result table for a getter's answer: {exists=, value=, type=}.
---@param v any
---@return table
function _M.result(v)
  return { exists = v ~= nil, value = v, type = _M.type(v) }
end

--- True for an array (decoded or built here); an empty table counts as an array.
function _M.is_array(v)
  return type(v) == "table" and kind(v) ~= OBJECT
end

--- True for a non-empty object.
function _M.is_object(v)
  return type(v) == "table" and kind(v) == OBJECT
end

-- JSON string unescape (gjson's unescape: stops at a bad escape or control character).
local function utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64,
    0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

local UNESC = { [BSL] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n",
  [114] = "\r", [116] = "\t", [DQ] = '"' }
local function unescape(s)
  local out, n, i = {}, #s, 1
  while i <= n do
    local c = byte(s, i)
    if c < 32 then break end
    if c ~= BSL then
      local j = find(s, "[%z\1-\31\\]", i) or n + 1
      out[#out + 1] = sub(s, i, j - 1)
      i = j
    else
      i = i + 1
      if i > n then break end
      local e = byte(s, i)
      if UNESC[e] then
        out[#out + 1] = UNESC[e]
        i = i + 1
      elseif e == 117 then -- u
        local cp = tonumber(sub(s, i + 1, i + 4), 16)
        if not cp or #sub(s, i + 1, i + 4) < 4 then break end
        i = i + 5
        if cp >= 0xD800 and cp < 0xE000 then
          local lo = match(s, "^\\u(%x%x%x%x)", i)
          lo = lo and tonumber(lo, 16)
          if lo and lo >= 0xDC00 and lo < 0xE000 and cp < 0xDC00 then
            cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
            i = i + 6
          else
            cp = 0xFFFD
          end
        end
        out[#out + 1] = utf8_char(cp)
      else
        break
      end
    end
  end
  return concat(out)
end
_M.unescape = unescape

-- Wildcard matching (github.com/tidwall/match): * any run, ? one UTF-8 character, \ escapes.
local STAR_TOK, ANY_TOK, NEVER_TOK = {}, {}, {}
local UTF8_CHAR = "[%z\1-\127\192-\255][\128-\191]*"

local function compile_glob(pat)
  local toks, i, n = {}, 1, #pat
  while i <= n do
    local c = byte(pat, i)
    if c == STAR then
      if toks[#toks] ~= STAR_TOK then toks[#toks + 1] = STAR_TOK end
      i = i + 1
    elseif c == QM then
      toks[#toks + 1] = ANY_TOK
      i = i + 1
    else
      if c == BSL then
        i = i + 1
        if i > n then
          toks[#toks + 1] = NEVER_TOK
          break
        end
      end
      local ch = match(pat, "^" .. UTF8_CHAR, i) or sub(pat, i, i)
      toks[#toks + 1] = ch
      i = i + #ch
    end
  end
  return toks
end

local function glob_match(toks, s)
  local chars = {}
  for ch in s:gmatch(UTF8_CHAR) do chars[#chars + 1] = ch end
  local si, pi, ns, np = 1, 1, #chars, #toks
  local star_p, star_s
  while si <= ns do
    local t = toks[pi]
    if t ~= nil and t ~= STAR_TOK and (t == ANY_TOK or t == chars[si]) then
      si, pi = si + 1, pi + 1
    elseif t == STAR_TOK then
      star_p, star_s = pi, si
      pi = pi + 1
    elseif star_p then
      star_s = star_s + 1
      si, pi = star_s, star_p + 1
    else
      return false
    end
  end
  while toks[pi] == STAR_TOK do pi = pi + 1 end
  return pi > np
end

--- Wildcard match of s against pattern (* and ?, \ escapes), as gjson's % operator.
---@param s string
---@param pattern string
---@return boolean
function _M.like(s, pattern)
  return glob_match(compile_glob(pattern), s)
end

-- Path parsing ------------------------------------------------------------------------------

local MODIFIERS -- name -> function(v, arg, arg_raw) -> value|nil (defined below)

local function trim(s)
  return match(s, "^[%z\1-\32]*(.-)[%z\1-\32]*$")
end

-- isDotPiperChar: after a '.', an '@modifier', '[' or '{' starts a piped Get.
local function is_dot_piper(path, i)
  local c = byte(path, i)
  if c == AT then
    local j, n = i + 1, #path
    while j <= n do
      local d = byte(path, j)
      if d == DOT or d == PIPE or d == COLON then break end
      j = j + 1
    end
    return MODIFIERS[sub(path, i + 1, j - 1)] ~= nil
  end
  return c == LBRK or c == LBRC
end

-- Index of the character closing the group opened at s[i] ({, [, ( or "), or nil.
local function squash_end(s, i)
  local n, depth = #s, 0
  if byte(s, i) ~= DQ then
    depth = 1
    i = i + 1
  end
  while i <= n do
    local c = byte(s, i)
    if c == DQ then
      i = i + 1
      while i <= n do
        local d = byte(s, i)
        if d == BSL then
          i = i + 1
        elseif d == DQ then
          break
        end
        i = i + 1
      end
      if i > n then return nil end
      if depth == 0 then return i end
    elseif c == LBRC or c == LBRK or c == LPAR then
      depth = depth + 1
    elseif c == RBRC or c == RBRK or c == RPAR then
      depth = depth - 1
      if depth == 0 then return i end
    end
    i = i + 1
  end
  return nil
end

-- parseObjectPath: {part, wild, more, rest, rest_off, piped, pipe, pipe_off}; offsets are the
-- 0-based positions in path where rest/pipe start.
local function parse_object_path(path)
  local n = #path
  local r = { wild = false }
  local function split(i, part)
    r.part = part
    if byte(path, i) == PIPE then
      r.piped, r.pipe, r.pipe_off = true, sub(path, i + 1), i
    elseif i < n and is_dot_piper(path, i + 1) then
      r.piped, r.pipe, r.pipe_off = true, sub(path, i + 1), i
    else
      r.more, r.rest, r.rest_off = true, sub(path, i + 1), i
    end
    return r
  end
  local i = 1
  while i <= n do
    local c = byte(path, i)
    if c == PIPE or c == DOT then
      return split(i, sub(path, 1, i - 1))
    elseif c == STAR or c == QM then
      r.wild = true
    elseif c == BSL then
      -- escape mode: strip the backslashes from the part
      local ep = { sub(path, 1, i - 1) }
      i = i + 1
      if i <= n then
        ep[#ep + 1] = sub(path, i, i)
        i = i + 1
        while i <= n do
          c = byte(path, i)
          if c == BSL then
            i = i + 1
            if i <= n then ep[#ep + 1] = sub(path, i, i) end
          elseif c == DOT or c == PIPE then
            return split(i, concat(ep))
          else
            if c == STAR or c == QM then r.wild = true end
            ep[#ep + 1] = sub(path, i, i)
          end
          i = i + 1
        end
      end
      r.part = concat(ep)
      return r
    end
    i = i + 1
  end
  r.part = path
  return r
end

-- parseQuery on path[s..] where path[s] == '#' and path[s+1] is '(' or '['.
-- Returns qpath, qpath_off, op, value, fi (index after the closing bracket), vesc; or nil.
local function parse_query(path, s)
  local n = #path
  local k, j, depth, vesc = s + 2, nil, 1, false
  while k <= n do
    local c = byte(path, k)
    if depth == 1 and not j and (c == BANG or c == EQ or c == LT or c == GT or c == PCT) then
      j = k
    elseif c == BSL then
      k = k + 1
    elseif c == LBRK or c == LPAR then
      depth = depth + 1
    elseif c == RBRK or c == RPAR then
      depth = depth - 1
      if depth == 0 then break end
    elseif c == DQ then
      k = k + 1
      while k <= n do
        local d = byte(path, k)
        if d == BSL then
          vesc = true
          k = k + 1
        elseif d == DQ then
          break
        end
        k = k + 1
      end
    end
    k = k + 1
  end
  if depth > 0 or k > n then return nil end
  local qend = j and j - 1 or k - 1
  local a = s + 2
  while a <= qend and byte(path, a) <= 32 do a = a + 1 end
  local qpath = trim(sub(path, s + 2, qend))
  local op, value = "", ""
  if j then
    value = trim(sub(path, j, k - 1))
    local c1, c2 = byte(value, 1), byte(value, 2)
    local trail = 0
    if #value == 1 then
      trail = 1
    elseif (c1 == BANG or c1 == LT or c1 == GT) and c2 == EQ then
      trail = 2
    elseif c1 == BANG and c2 == PCT then
      trail = 2
    elseif c1 == EQ and c2 == EQ then
      value = sub(value, 2)
      trail = 1
    elseif c1 == LT or c1 == GT or c1 == EQ or c1 == PCT then
      trail = 1
    end
    op = sub(value, 1, trail)
    value = trim(sub(value, trail + 1))
  end
  return qpath, a - 1, op, value, k + 1, vesc
end

-- parseArrayPath: {part, arrch, alogok, alogkey, alogkey_off, query, more, rest, rest_off,
-- piped, pipe, pipe_off}; or nil, err for an unterminated query.
local function parse_array_path(path, base)
  local n = #path
  local r = {}
  local i = 1
  while i <= n do
    local c = byte(path, i)
    if c == PIPE then
      r.part, r.piped, r.pipe, r.pipe_off = sub(path, 1, i - 1), true, sub(path, i + 1), i
      return r
    elseif c == DOT then
      r.part = sub(path, 1, i - 1)
      if not r.arrch and i < n and is_dot_piper(path, i + 1) then
        r.piped, r.pipe, r.pipe_off = true, sub(path, i + 1), i
      else
        r.more, r.rest, r.rest_off = true, sub(path, i + 1), i
      end
      return r
    elseif c == HASH then
      r.arrch = true
      if i == 1 and n > 1 then
        local c2 = byte(path, 2)
        if c2 == DOT then
          r.alogok, r.alogkey, r.alogkey_off = true, sub(path, 3), 2
        elseif c2 == LBRK or c2 == LPAR then
          local qpath, qoff, op, value, fi, vesc = parse_query(path, 1)
          if not qpath then
            return nil, fmt("unterminated query at column %d", base + 1)
          end
          if #value >= 2 and byte(value, 1) == DQ and byte(value, -1) == DQ then
            value = sub(value, 2, -2)
            if vesc then value = unescape(value) end
          end
          r.query = { path = qpath, path_off = qoff, op = op, value = value,
            all = byte(path, fi) == HASH }
          i = fi - 1
        end
      end
    end
    i = i + 1
  end
  r.part = path
  return r
end

-- splitPossiblePipe: left, left_off, right, right_off when a top-level '|' splits path.
local function split_possible_pipe(path)
  if not find(path, "|", 1, true) then return nil end
  local n = #path
  if byte(path, 1) == LBRC then
    local e = squash_end(path, 1)
    if e and e < n and byte(path, e + 1) == PIPE then
      return sub(path, 1, e), 0, sub(path, e + 2), e + 1
    end
    return nil
  end
  local i = 1
  while i <= n do
    local c = byte(path, i)
    if c == BSL then
      i = i + 1
    elseif c == DOT then
      if i == n then return nil end
      if byte(path, i + 1) == HASH then
        i = i + 2
        if i > n then return nil end
        local o = byte(path, i)
        if o == LBRK or o == LPAR then
          local close = o == LBRK and RBRK or RPAR
          i = i + 1
          local depth = 1
          while i <= n do
            local d = byte(path, i)
            if d == BSL then
              i = i + 1
            elseif d == o then
              depth = depth + 1
            elseif d == close then
              depth = depth - 1
              if depth == 0 then break end
            elseif d == DQ then
              i = i + 1
              while i <= n do
                local q = byte(path, i)
                if q == BSL then
                  i = i + 1
                elseif q == DQ then
                  break
                end
                i = i + 1
              end
            end
            i = i + 1
          end
        end
      end
    elseif c == PIPE then
      return sub(path, 1, i - 1), 0, sub(path, i + 1), i
    end
    i = i + 1
  end
  return nil
end

-- Query matching (queryMatches) ------------------------------------------------------------

local function of_true(v)
  local tv = type(v)
  if v == true then return true end
  if tv == "string" then return PARSE_BOOL[lower(v)] == true end
  if tv == "number" then return v ~= 0 end
  return false
end

local function of_false(v)
  local tv = type(v)
  if v == null or v == false then return true end
  if tv == "string" then return PARSE_BOOL[lower(v)] == false end
  if tv == "number" then return v == 0 end
  return false
end

--- A predicate for one query condition (op "" = exists).
local function make_matcher(op, rpv)
  local tilde
  if byte(rpv, 1) == TILDE then
    tilde = sub(rpv, 2)
    if tilde == "*" or tilde == "null" or tilde == "true" or tilde == "false" then
      rpv = "true"
    else
      tilde = false -- value becomes non-existent: never matches
    end
  end
  local rnum = parse_float(rpv) or 0
  local glob = (op == "%" or op == "!%") and compile_glob(rpv)
  return function(v)
    if tilde ~= nil then
      if tilde == false then return false end
      local ish
      if tilde == "*" then
        ish = v ~= nil
      elseif tilde == "null" then
        ish = v == null
      elseif tilde == "true" then
        ish = of_true(v)
      else
        ish = v == nil or of_false(v)
      end
      v = ish
    end
    if v == nil then return false end
    if op == "" then return true end
    local tv = type(v)
    if tv == "string" then
      if op == "=" then return v == rpv end
      if op == "!=" then return v ~= rpv end
      if op == "<" then return v < rpv end
      if op == "<=" then return v <= rpv end
      if op == ">" then return v > rpv end
      if op == ">=" then return v >= rpv end
      if op == "%" then return glob_match(glob, v) end
      if op == "!%" then return not glob_match(glob, v) end
    elseif tv == "number" then
      if op == "=" then return v == rnum end
      if op == "!=" then return v ~= rnum end
      if op == "<" then return v < rnum end
      if op == "<=" then return v <= rnum end
      if op == ">" then return v > rnum end
      if op == ">=" then return v >= rnum end
    elseif v == true then
      if op == "=" then return rpv == "true" end
      if op == "!=" then return rpv ~= "true" end
      if op == ">" then return rpv == "false" end
      if op == ">=" then return true end
    elseif v == false then
      if op == "=" then return rpv == "false" end
      if op == "!=" then return rpv ~= "false" end
      if op == "<" then return rpv == "true" end
      if op == "<=" then return true end
    end
    return false
  end
end

-- Compilation ------------------------------------------------------------------------------

local compile_get, compile_path

local function is_uint(s)
  return s ~= "" and not find(s, "[^0-9]")
end

-- One path level on an object or an array (gjson's parseObject / parseArray).
function compile_path(path, base, memo)
  local hit = memo.p[path]
  if hit then return hit end
  local err
  local orp = parse_object_path(path)
  local arp
  arp, err = parse_array_path(path, base)
  if not arp then return nil, err end

  -- object side
  local o_part, o_wild, o_more, o_cont, o_pipe = orp.part, orp.wild, orp.more, nil, nil
  local o_glob = o_wild and compile_glob(o_part)
  if o_more then
    o_cont, err = compile_path(orp.rest, base + orp.rest_off, memo)
    if not o_cont then return nil, err end
  end
  if orp.piped then
    o_pipe, err = compile_get(orp.pipe, base + orp.pipe_off, memo)
    if not o_pipe then return nil, err end
  end

  local function ostep(o)
    local res
    if not o_wild then
      local cv = o[o_part]
      if o_more then
        if type(cv) == "table" then return o_cont(cv) end
        return nil
      end
      res = cv
    else
      local keys = sorted_keys(o)
      for i = 1, #keys do
        local key = keys[i]
        if glob_match(o_glob, key) then
          local cv = o[key]
          if not o_more then
            res = cv
            break
          end
          if type(cv) == "table" then
            local r = o_cont(cv)
            if r ~= nil then return r end
          end
        end
      end
      if o_more then return nil end
    end
    if o_pipe then return o_pipe(res) end
    return res
  end

  -- array side
  local a_more, a_cont, a_pipe = arp.more, nil, nil
  if arp.piped then
    a_pipe, err = compile_get(arp.pipe, base + arp.pipe_off, memo)
    if not a_pipe then return nil, err end
  end
  local astep
  if arp.query then
    local q = arp.query
    local qpath, all = q.path, q.all
    local qfn
    qfn, err = compile_get(qpath, base + q.path_off, memo)
    if not qfn then return nil, err end
    local matcher = make_matcher(q.op, q.value)
    local left, right
    if a_more then
      local l, loff, r, roff = split_possible_pipe(arp.rest)
      if l then
        left, err = compile_get(l, base + arp.rest_off + loff, memo)
        if not left then return nil, err end
        right, err = compile_get(r, base + arp.rest_off + roff, memo)
        if not right then return nil, err end
      else
        left, err = compile_get(arp.rest, base + arp.rest_off, memo)
        if not left then return nil, err end
      end
    end
    astep = function(a)
      local out = all and new_array() or nil
      for i = 1, #a do
        local e = a[i]
        local qv
        if type(e) == "table" then
          qv = qfn(e)
        elseif qpath == "" then
          qv = e
        end
        if (qpath == "" or type(e) == "table") and matcher(qv) then
          local r = e
          if a_more then r = left(e) end
          if all then
            if r ~= nil then out[#out + 1] = r end
          else
            if right then return right(r) end
            if a_pipe then return a_pipe(r) end
            return r
          end
        end
      end
      if all then
        if right then return right(out) end
        if a_pipe then return a_pipe(out) end
        return out
      end
      if a_pipe then return a_pipe(nil) end
      return nil
    end
  elseif arp.arrch then
    if arp.part == "#" then
      if arp.alogok then
        local key = arp.alogkey
        local left, right
        local l, loff, r, roff = split_possible_pipe(key)
        if l then
          left, err = compile_get(l, base + arp.alogkey_off + loff, memo)
          if not left then return nil, err end
          right, err = compile_get(r, base + arp.alogkey_off + roff, memo)
          if not right then return nil, err end
        else
          left, err = compile_get(key, base + arp.alogkey_off, memo)
          if not left then return nil, err end
        end
        astep = function(a)
          local out = new_array()
          for i = 1, #a do
            local r = left(a[i])
            if r ~= nil then out[#out + 1] = r end
          end
          if right then return right(out) end
          return out
        end
      else
        astep = function(a)
          if a_pipe then return a_pipe(#a) end
          return #a
        end
      end
    else
      astep = function()
        if a_pipe then return a_pipe(nil) end
        return nil
      end
    end
  else
    local idx = is_uint(arp.part) and tonumber(arp.part) + 1
    if a_more then
      a_cont, err = compile_path(arp.rest, base + arp.rest_off, memo)
      if not a_cont then return nil, err end
    end
    astep = function(a)
      local cv
      if idx and idx <= #a then cv = a[idx] end
      if a_more then
        if type(cv) == "table" then return a_cont(cv) end
        return nil
      end
      if a_pipe then return a_pipe(cv) end
      return cv
    end
  end

  local fn = function(v)
    if type(v) ~= "table" then return nil end
    if kind(v) == OBJECT then return ostep(v) end
    return astep(v)
  end
  memo.p[path] = fn
  return fn
end

-- '@name[:arg]' at the start of a Get path (execModifier). Returns fn, or nil when name is
-- not a modifier (gjson then reads it as a key), or nil, err.
local function compile_modifier(path, base, memo)
  local n = #path
  local name, rest_i, has_args = sub(path, 2), n + 1, false
  for i = 2, n do
    local c = byte(path, i)
    if c == COLON then
      name, rest_i = sub(path, 2, i - 1), i + 1
      has_args = rest_i <= n
      break
    elseif c == PIPE or c == DOT then
      name, rest_i = sub(path, 2, i - 1), i
      break
    end
  end
  local mod = MODIFIERS[name]
  if not mod then return nil end
  local arg, arg_raw
  if has_args then
    local c = byte(path, rest_i)
    if c == LBRC or c == LBRK or c == DQ then
      local e = squash_end(path, rest_i)
      if not e then
        return nil, nil, fmt("unterminated modifier argument at column %d", base + rest_i)
      end
      arg_raw = sub(path, rest_i, e)
      local ok, dv = pcall(decode, arg_raw)
      arg = ok and dv or arg_raw
      rest_i = e + 1
    else
      local j = rest_i
      while j <= n do
        local d = byte(path, j)
        if d == PIPE then break end
        if d == LBRC or d == LBRK or d == DQ or d == LPAR then
          j = squash_end(path, j) or n
        end
        j = j + 1
      end
      arg_raw = sub(path, rest_i, j - 1)
      arg = arg_raw
      rest_i = j
    end
  end
  local c = byte(path, rest_i)
  if c == PIPE or c == DOT then
    local nextf, err = compile_get(sub(path, rest_i + 1), base + rest_i, memo)
    if not nextf then return nil, nil, err end
    return function(v) return nextf(mod(v, arg, arg_raw)) end
  end
  return function(v) return mod(v, arg, arg_raw) end
end

-- '!literal' at the start of a Get path (execStatic). Returns fn, or nil (not a literal).
local LITERAL_WORDS = { ["true"] = true, ["false"] = false, ["null"] = null }
local function compile_literal(path, base, memo)
  local n = #path
  local c = byte(path, 2)
  local lit, rest_i
  if c == LBRC or c == LBRK or c == DQ then
    local e = squash_end(path, 2)
    if not e then return nil, nil, fmt("unterminated literal at column %d", base + 2) end
    local ok, dv = pcall(decode, sub(path, 2, e))
    if ok then lit = dv end
    rest_i = e + 1
  elseif c == PLUS or c == MINUS or (c >= ZERO and c <= NINE) then
    local e = (find(path, "[^%deE%.%+%-]", 2) or n + 1) - 1
    lit = parse_float(sub(path, 2, e))
    rest_i = e + 1
  else
    local e = (find(path, "[.|]", 2) or n + 1)
    local word = sub(path, 2, e - 1)
    local lw = lower(word)
    if lw == "true" or lw == "false" or lw == "null" then
      lit = LITERAL_WORDS[word]
    elseif lw == "nan" then
      lit = 0 / 0
    elseif lw == "inf" then
      lit = huge
    else
      return nil
    end
    rest_i = e
  end
  local r = byte(path, rest_i)
  if r == PIPE or r == DOT then
    local nextf, err = compile_get(sub(path, rest_i + 1), base + rest_i, memo)
    if not nextf then return nil, nil, err end
    return function() return nextf(lit) end
  end
  return function() return lit end
end

local function name_of_last(path)
  for i = #path, 1, -1 do
    local c = byte(path, i)
    if (c == PIPE or c == DOT) and not (i > 1 and byte(path, i - 1) == BSL) then
      return sub(path, i + 1)
    end
  end
  return path
end

local function is_simple_name(s)
  return not find(s, "[%z\1-\31%[%]{}()#|!]")
end

-- '[a,b]' or '{a,"k":b}' at the start of a Get path (parseSubSelectors). Returns fn, or nil
-- when the remainder makes it an ordinary key, or nil, nil, err.
local function compile_multipath(path, base, memo)
  local n = #path
  local is_obj = byte(path, 1) == LBRC
  local sels = {}
  local modifier, depth, colon, start = 0, 1, 0, 2
  local rest_i
  local function push(i)
    if colon == 0 then
      sels[#sels + 1] = { path = sub(path, start, i - 1), off = start - 1 }
    else
      sels[#sels + 1] = { name = sub(path, start, colon - 1), path = sub(path, colon + 1, i - 1),
        off = colon }
    end
    colon, modifier, start = 0, 0, i + 1
  end
  local i = 2
  while i <= n do
    local c = byte(path, i)
    if c == BSL then
      i = i + 1
    elseif c == AT then
      local p = byte(path, i - 1)
      if modifier == 0 and (p == DOT or p == PIPE) then modifier = i end
    elseif c == COLON then
      if modifier == 0 and colon == 0 and depth == 1 then colon = i end
    elseif c == COMMA then
      if depth == 1 then push(i) end
    elseif c == DQ then
      i = i + 1
      while i <= n do
        local d = byte(path, i)
        if d == BSL then
          i = i + 1
        elseif d == DQ then
          break
        end
        i = i + 1
      end
    elseif c == LBRK or c == LPAR or c == LBRC then
      depth = depth + 1
    elseif c == RBRK or c == RPAR or c == RBRC then
      depth = depth - 1
      if depth == 0 then
        push(i)
        rest_i = i + 1
        break
      end
    end
    i = i + 1
  end
  if not rest_i then
    return nil, nil, fmt("unterminated multipath at column %d", base + 1)
  end
  local rc = byte(path, rest_i)
  if rc ~= nil and rc ~= PIPE and rc ~= DOT then return nil end
  local fns, names = {}, {}
  for s = 1, #sels do
    local sel = sels[s]
    local fn, err = compile_get(sel.path, base + sel.off, memo)
    if not fn then return nil, nil, err end
    fns[s] = fn
    if is_obj then
      local name = sel.name
      if name and name ~= "" then
        if byte(name, 1) == DQ then
          local ok, dv = pcall(decode, name)
          if ok and type(dv) == "string" then name = dv end
        end
      else
        local last = name_of_last(sel.path)
        name = is_simple_name(last) and last or "_"
      end
      names[s] = name
    end
  end
  local nsel = #sels
  local restf
  if rc then
    local err
    restf, err = compile_get(sub(path, rest_i + 1), base + rest_i, memo)
    if not restf then return nil, nil, err end
  end
  return function(v)
    local out
    if is_obj then
      out = {}
      for s = 1, nsel do
        local r = fns[s](v)
        if r ~= nil and out[names[s]] == nil then out[names[s]] = r end
      end
    else
      out = new_array()
      for s = 1, nsel do
        local r = fns[s](v)
        if r ~= nil then out[#out + 1] = r end
      end
    end
    if restf then return restf(out) end
    return out
  end
end

-- A whole Get path: modifiers, literals and multipaths at its start, else one path level.
function compile_get(path, base, memo)
  local hit = memo.g[path]
  if hit then return hit end
  local fn, _, err
  if #path > 1 then
    local c = byte(path, 1)
    if c == AT then
      fn, _, err = compile_modifier(path, base, memo)
    elseif c == BANG then
      fn, _, err = compile_literal(path, base, memo)
    end
    if err then return nil, err end
    if not fn and (c == LBRK or c == LBRC) then
      fn, _, err = compile_multipath(path, base, memo)
      if err then return nil, err end
    end
    if not fn and c == DOT and byte(path, 2) == DOT then
      return nil, fmt("JSON Lines paths (..) are not supported at column %d", base + 1)
    end
  end
  if not fn then
    fn, err = compile_path(path, base, memo)
    if not fn then return nil, err end
  end
  memo.g[path] = fn
  return fn
end

-- Plain dotted paths ("body.user.name", "items.0.id"): generated code indexing tables directly.
local MAX_PLAIN = 50
local function compile_plain(path)
  if find(path, "[\\%*%?#|@!%[{]") or sub(path, 1, 2) == ".." then return nil end
  local keys = {}
  for k in (path .. "."):gmatch("(.-)%.") do keys[#keys + 1] = k end
  if #keys > MAX_PLAIN then return nil end
  local idx = {}
  local src = { "local type = type\nlocal K, N = ...\n" }
  for i = 1, #keys do
    src[#src + 1] = fmt("local k%d = K[%d]\n", i, i)
    if is_uint(keys[i]) then
      idx[i] = tonumber(keys[i]) + 1
      src[#src + 1] = fmt("local n%d = N[%d]\n", i, i)
    end
  end
  src[#src + 1] = "return function(v)\n"
  for i = 1, #keys do
    src[#src + 1] = "  if type(v) ~= 'table' then return nil end\n"
    if idx[i] then
      src[#src + 1] = fmt("  do local x = v[k%d]; if x == nil then x = v[n%d] end; v = x end\n", i, i)
    else
      src[#src + 1] = fmt("  v = v[k%d]\n", i)
    end
  end
  src[#src + 1] = "  return v\nend\n"
  local chunk = load(concat(src), "=gjson")
  -- e.g. LuaJIT's 60 upvalues: 50 keys, some numeric, need k and n locals each
  if not chunk then return nil end -- the general compiler takes it
  return chunk(keys, idx)
end

--- Compiles a gjson path into a getter. getter(value) returns the Lua value at the path, or
--- nil when it does not exist (JSON null is cjson.null). Errors name a 1-based column.
---@param path string
---@return fun(value: any): any
---@return string? err
function _M.compile(path)
  if type(path) ~= "string" then error("gjson.compile: path must be a string", 2) end
  local fn = compile_plain(path)
  if fn then return fn end
  local ok, err
  ok, fn, err = pcall(compile_get, path, 0, { g = {}, p = {} })
  if not ok then
    -- the recursive compiler runs out of Lua stack on deep nesting ("[[[[..."): say so
    if tostring(fn):find("stack overflow", 1, true) then return nil, "path nested too deeply" end
    error(fn, 0)
  end
  if not fn then return nil, err end
  return fn
end

local cache, cache_n = {}, 0
local CACHE_MAX = 4096

--- Like compile, with a cache of compiled paths.
---@param path string
---@return fun(value: any): any|nil
---@return string? err
local function cached(path)
  local fn = cache[path]
  if fn then return fn end
  local err
  fn, err = _M.compile(path)
  if not fn then return nil, err end
  if cache_n >= CACHE_MAX then
    cache, cache_n = {}, 0
  end
  cache[path] = fn
  cache_n = cache_n + 1
  return fn
end
_M.compiled = cached

--- gjson.Get: the value at path in value (nil when missing), or nil, err for a bad path.
---@param value any
---@param path string
---@return any
---@return string? err
function _M.get(value, path)
  local fn, err = cached(path)
  if not fn then return nil, err end
  return fn(value)
end

-- Modifiers --------------------------------------------------------------------------------

local function arg_field(arg, key)
  if type(arg) == "table" then return arg[key] end
  return nil
end

local function identity(v)
  return v
end

local function mod_reverse(v)
  if type(v) ~= "table" or kind(v) ~= ARRAY then return v end
  local out, n = new_array(), #v
  for i = n, 1, -1 do out[n - i + 1] = v[i] end
  return out
end

local function flatten_into(a, deep, out)
  for i = 1, #a do
    local e = a[i]
    if type(e) == "table" and kind(e) ~= OBJECT then
      if deep then
        flatten_into(e, true, out)
      else
        for j = 1, #e do out[#out + 1] = e[j] end
      end
    else
      out[#out + 1] = e
    end
  end
  return out
end

local function mod_flatten(v, arg)
  if type(v) ~= "table" or kind(v) == OBJECT then return v end
  return flatten_into(v, to_bool(arg_field(arg, "deep")), new_array())
end

local function mod_join(v, arg)
  if type(v) ~= "table" or kind(v) == OBJECT then return v end
  local preserve = to_bool(arg_field(arg, "preserve"))
  local out = {}
  for i = 1, #v do
    local e = v[i]
    if type(e) == "table" and kind(e) == OBJECT then
      for k, val in pairs(e) do
        if not preserve or out[k] == nil then out[k] = val end
      end
    end
  end
  return out
end

local function mod_keys(v)
  local out = new_array()
  if v == nil then return out end
  if type(v) ~= "table" then
    out[1] = null
    return out
  end
  local k = kind(v)
  if k == OBJECT then
    local keys = sorted_keys(v)
    for i = 1, #keys do out[i] = keys[i] end
  elseif k == ARRAY then
    for i = 1, #v do out[i] = null end
  end
  return out
end

local function mod_values(v)
  local out = new_array()
  if v == nil then return out end
  if type(v) ~= "table" then
    out[1] = v
    return out
  end
  local k = kind(v)
  if k == ARRAY then return v end
  if k == OBJECT then
    local keys = sorted_keys(v)
    for i = 1, #keys do out[i] = v[keys[i]] end
  end
  return out
end

local function mod_tostr(v)
  return raw(v)
end

local function mod_fromstr(v)
  if v == nil or v == null then return nil end
  if type(v) ~= "string" then return v end
  local ok, dv = pcall(decode, v)
  if not ok then return nil end
  if dv == null then return null end
  return dv
end

local function mod_group(v)
  if type(v) ~= "table" then return nil end
  local k = kind(v)
  if k ~= OBJECT then return nil end
  local all = new_array()
  local keys = sorted_keys(v)
  for i = 1, #keys do
    local key, a = keys[i], v[keys[i]]
    if type(a) == "table" and kind(a) == ARRAY then
      for j = 1, #a do
        local o = all[j]
        if not o then
          o = {}
          all[j] = o
        end
        o[key] = a[j]
      end
    end
  end
  return all
end

local function dig(v, fn, out)
  local r = fn(v)
  if r ~= nil then out[#out + 1] = r end
  if type(v) == "table" then
    local k = kind(v)
    if k == ARRAY then
      for i = 1, #v do dig(v[i], fn, out) end
    elseif k == OBJECT then
      local keys = sorted_keys(v)
      for i = 1, #keys do dig(v[keys[i]], fn, out) end
    end
  end
  return out
end

local function mod_dig(v, _, arg_raw)
  if v == nil then return new_array() end
  local fn = cached(arg_raw or "")
  if not fn then return new_array() end
  return dig(v, fn, new_array())
end

MODIFIERS = {
  pretty = identity,
  ugly = identity,
  this = identity,
  valid = identity,
  reverse = mod_reverse,
  flatten = mod_flatten,
  join = mod_join,
  keys = mod_keys,
  values = mod_values,
  tostr = mod_tostr,
  fromstr = mod_fromstr,
  group = mod_group,
  dig = mod_dig,
}

--- Registers a custom modifier: fn(value, arg, arg_raw) -> value|nil (value is the decoded
--- Lua value; arg is the JSON-decoded argument, or the raw text when it is not JSON).
---@param name string
---@param fn function
function _M.add_modifier(name, fn)
  MODIFIERS[name] = fn
  cache, cache_n = {}, 0
end

--- True when a modifier of that name exists.
function _M.modifier_exists(name)
  return MODIFIERS[name] ~= nil
end

-- For herald.sjson, which locates values with the same path rules.
_M._internal = {
  kind = kind, OBJECT = OBJECT, ARRAY = ARRAY, new_array = new_array,
  sorted_keys = sorted_keys, parse_object_path = parse_object_path,
  parse_array_path = parse_array_path, split_possible_pipe = split_possible_pipe,
  make_matcher = make_matcher, compile_glob = compile_glob, glob_match = glob_match,
  is_uint = is_uint, modifiers = function() return MODIFIERS end,
  compile_get = function(path, base, memo) return compile_get(path, base, memo) end,
}

return _M
