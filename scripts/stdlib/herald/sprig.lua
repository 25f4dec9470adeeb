-- herald/sprig.lua: the Sprig v3 template functions (Masterminds/sprig) for herald.gotemplate.
--
-- The module is a table name -> Lua function; herald.gotemplate looks functions up here (after
-- its builtins, so `slice` is Sprig's, as in Argo). Functions take Go's parameters in order
-- (`{{ x | f a }}` calls f(a, x)); they raise error(msg, 0) where Sprig returns an error or
-- panics (the template reports "error calling f: msg"), and error({msg=...}) for Go's
-- argument type errors ("wrong type for value; expected string; got float64").
--
-- Implemented (this is the list published in docs):
--   strings:  trim trimAll trimall trimPrefix trimSuffix upper lower title untitle repeat
--             substr nospace trunc abbrev abbrevboth initials randAlphaNum randAlpha randAscii
--             randNumeric contains hasPrefix hasSuffix quote squote cat indent nindent replace
--             plural snakecase camelcase kebabcase swapcase shuffle wrap wrapWith split
--             splitList splitn join sortAlpha toString toStrings hello
--   defaults: default empty coalesce all any ternary fail fromJson toJson toPrettyJson
--             toRawJson mustFromJson mustToJson mustToPrettyJson mustToRawJson
--   types:    atoi int int64 float64 toDecimal typeOf typeIs typeIsLike kindOf kindIs deepEqual
--   encoding: b64enc b64dec b32enc b32dec
--   hashes:   sha1sum sha256sum adler32sum uuidv4 randBytes
--   lists:    list tuple first rest last initial append push prepend concat reverse uniq
--             without has compact slice chunk until untilStep seq, and mustFirst mustRest
--             mustLast mustInitial mustAppend mustPush mustPrepend mustReverse mustUniq
--             mustWithout mustHas mustCompact mustSlice mustChunk
--   dicts:    dict get set unset hasKey keys values pluck pick omit merge mergeOverwrite
--             mustMerge mustMergeOverwrite dig deepCopy mustDeepCopy
--   math:     add add1 sub div mod mul max biggest min floor ceil round randInt addf add1f
--             subf mulf divf maxf minf
--   dates:    now date dateInZone date_in_zone htmlDate htmlDateInZone toDate mustToDate
--             unixEpoch dateModify date_modify mustDateModify mustDateInZone duration
--             durationRound ago
--   regex:    regexMatch regexFind regexFindAll regexReplaceAll regexReplaceAllLiteral
--             regexSplit regexQuoteMeta, and mustRegexMatch mustRegexFind mustRegexFindAll
--             mustRegexReplaceAll mustRegexReplaceAllLiteral mustRegexSplit
--   paths:    base dir ext clean isAbs
-- Left out on purpose: env, expandenv (they would leak the engine's environment).
-- Not implemented: semver semverCompare, crypto (bcrypt htpasswd derivePassword genPrivateKey
-- genCA genSelfSignedCert genSignedCert encryptAES decryptAES sha512sum), getHostByName,
-- urlParse urlJoin, osBase/osDir/osExt/osClean/osIsAbs, reflection on Go structs.
--
-- Dates: time values are tables with a metatable (printed as Go's time.String()); every zone
-- is UTC ("Local", "UTC" and unknown zone names alike; Go also falls back to UTC for unknown
-- names). Numbers given to date functions are Unix seconds.
local cjson = require "cjson"
local bit = require "bit"
local G = require "herald.gotemplate"
local json = require "herald.json"
local core = require "herald.core"

local type, tostring, tonumber, pairs, ipairs, select, error = type, tostring, tonumber, pairs,
  ipairs, select, error
local getmetatable, setmetatable, next, pcall = getmetatable, setmetatable, next, pcall
local floor, ceil, huge, abs = math.floor, math.ceil, math.huge, math.abs
local fmt, byte, char, sub, find, gsub, rep, upper, lower = string.format, string.byte,
  string.char, string.sub, string.find, string.gsub, string.rep, string.upper, string.lower
local concat, sort = table.concat, table.sort
local band, bor, bxor, bnot, lshift, rshift, rol, ror, tobit = bit.band, bit.bor, bit.bxor,
  bit.bnot, bit.lshift, bit.rshift, bit.rol, bit.ror, bit.tobit
local null = cjson.null

local fmt_v, type_name, is_list, sorted_keys, typed = G.fmt_v, G.type_name, G.is_list, G.sorted_keys, G.typed
local arg_error, go_quote, fmt_num = G.arg_error, G.go_quote, G.fmt_num
local utf8_decode, utf8_char = G.utf8_decode, G.utf8_char

local array = json.array -- lists are marked: an empty one prints [] (herald.json)

local _M = {}

-------------------------------------------------------------------------------------------
-- Argument helpers
-------------------------------------------------------------------------------------------

--- A Go `string` parameter.
local function S(v)
  if type(v) == "string" then return v end
  arg_error("string", v)
end

--- A Go `int` parameter (any number is accepted, truncated toward zero).
local function I(v)
  if type(v) == "number" then
    if v >= 0 then return floor(v) end
    return ceil(v)
  end
  arg_error("int", v)
end

local function is_nil(v) return v == nil or v == null end

local function is_plain_table(v) return type(v) == "table" and typed(v) == nil end

local function is_map(v) return is_plain_table(v) and v[1] == nil and next(v) ~= nil end

--- Sprig strval: strings as they are, everything else as fmt %v.
local function strval(v)
  if type(v) == "string" then return v end
  return fmt_v(v)
end

--- cast.ToInt64E semantics (strings parsed with base prefixes; errors -> 0).
local function to_int(v)
  local t = type(v)
  if t == "number" then
    if v ~= v then return 0 end
    if v >= 0 then return floor(v) end
    return ceil(v)
  end
  if t == "boolean" then return v and 1 or 0 end
  if t == "string" then
    local s = v:gsub("%.0*$", "")
    if s == "" and v ~= "" then s = "0" end
    local neg = false
    if s:sub(1, 1) == "-" then neg = true; s = s:sub(2) elseif s:sub(1, 1) == "+" then s = s:sub(2) end
    local n
    local p = s:sub(1, 2):lower()
    if p == "0x" and s:sub(3):match("^%x+$") then n = tonumber(s:sub(3), 16)
    elseif p == "0b" and s:sub(3):match("^[01]+$") then n = tonumber(s:sub(3), 2)
    elseif p == "0o" and s:sub(3):match("^[0-7]+$") then n = tonumber(s:sub(3), 8)
    elseif s:match("^0[0-7]+$") then n = tonumber(s, 8)
    elseif s:match("^%d+$") then n = tonumber(s) end
    if not n then return 0 end
    return neg and -n or n
  end
  return 0
end
_M._to_int = to_int

--- cast.ToFloat64E semantics (errors -> 0).
local function to_float(v)
  local t = type(v)
  if t == "number" then return v end
  if t == "boolean" then return v and 1 or 0 end
  if t == "string" then
    local s = v:gsub("_", "")
    if s:match("^[-+]?%d*%.?%d*[eE]?[-+]?%d*$") or s:lower():match("^[-+]?inf") or s:lower() == "nan" then
      local n = tonumber(s)
      if n then return n end
    end
    return 0
  end
  return 0
end

--- Sprig `empty`.
local function empty(v)
  if v == nil or v == null or v == false then return true end
  local t = type(v)
  if t == "string" then return v == "" end
  if t == "number" then return v == 0 end
  if t == "table" then
    if typed(v) then return false end
    return next(v) == nil
  end
  return false
end

--- The list argument of list functions; raises "Cannot <what> on type T" for non-lists.
local function L(v, what)
  if is_plain_table(v) and is_list(v) then return v end
  error(fmt("Cannot %s on type %s", what, is_nil(v) and "<nil>" or type_name(v)), 0)
end

local function copy_list(l, i, j)
  local out = array()
  for k = i or 1, j or #l do out[#out + 1] = l[k] end
  return out
end

local function deep_equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local function deep_copy(v)
  if type(v) ~= "table" or typed(v) then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return out
end

-- Sprig strslice: lists become string lists (nil elements dropped), other values one string.
local function strslice(v)
  if is_plain_table(v) and is_list(v) then
    local out = array()
    for i = 1, #v do
      if not is_nil(v[i]) then out[#out + 1] = strval(v[i]) end
    end
    return out
  end
  if is_nil(v) then return array() end
  return { strval(v) }
end

-------------------------------------------------------------------------------------------
-- Strings
-------------------------------------------------------------------------------------------

local SPACE = "[ \t\n\v\f\r]"

function _M.trim(s) return (S(s):gsub("^%s+", ""):gsub("%s+$", "")) end

local function trim_set(s, cutset, left, right)
  if cutset == "" then return s end
  local set = {}
  local i = 1
  while i <= #cutset do
    local _, ni = utf8_decode(cutset, i)
    set[sub(cutset, i, ni - 1)] = true
    i = ni
  end
  local a, b = 1, #s
  if left then
    while a <= b do
      local _, ni = utf8_decode(s, a)
      if not set[sub(s, a, ni - 1)] then break end
      a = ni
    end
  end
  if right then
    while b >= a do
      local j = b
      while j > a and byte(s, j) >= 0x80 and byte(s, j) < 0xC0 do j = j - 1 end
      if not set[sub(s, j, b)] then break end
      b = j - 1
    end
  end
  return sub(s, a, b)
end

--- Go's strings.Trim/TrimLeft/TrimRight: strip the runes of cutset from either end of s.
_M.trim_set = trim_set
function _M.trimAll(cutset, s) return trim_set(S(s), S(cutset), true, true) end
_M.trimall = _M.trimAll
function _M.trimPrefix(prefix, s)
  s, prefix = S(s), S(prefix)
  if prefix ~= "" and sub(s, 1, #prefix) == prefix then return sub(s, #prefix + 1) end
  return s
end
function _M.trimSuffix(suffix, s)
  s, suffix = S(s), S(suffix)
  if suffix ~= "" and sub(s, -#suffix) == suffix then return sub(s, 1, #s - #suffix) end
  return s
end
function _M.upper(s) return upper(S(s)) end
function _M.lower(s) return lower(S(s)) end

local function is_letter_digit(c)
  return c and (c >= 0x80 or c == 95 or (c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122))
end

function _M.title(s)
  s = S(s)
  local prev_sep = true
  return (gsub(s, ".", function(c)
    local b = byte(c)
    local r = c
    if prev_sep and b >= 97 and b <= 122 then r = upper(c) end
    prev_sep = not is_letter_digit(b)
    return r
  end))
end

function _M.untitle(s)
  s = S(s)
  local prev_space = true
  return (gsub(s, ".", function(c)
    local r = c
    if prev_space then r = lower(c) end
    prev_space = c:match(SPACE) ~= nil
    return r
  end))
end

function _M.swapcase(s)
  return (gsub(S(s), "%a", function(c)
    local u = upper(c)
    if u == c then return lower(c) end
    return u
  end))
end

_M["repeat"] = function(count, s)
  count, s = I(count), S(s)
  if count < 0 then error("strings: negative Repeat count", 0) end
  return rep(s, count)
end

function _M.substr(start, stop, s)
  start, stop, s = I(start), I(stop), S(s)
  local len = #s
  if start < 0 then
    if stop > len or stop < 0 then error(fmt("runtime error: slice bounds out of range [:%d] with length %d", stop, len), 0) end
    return sub(s, 1, stop)
  end
  if stop < 0 or stop > len then
    if start > len then error(fmt("runtime error: slice bounds out of range [%d:%d]", start, len), 0) end
    return sub(s, start + 1)
  end
  if start > stop then error(fmt("runtime error: slice bounds out of range [%d:%d]", start, stop), 0) end
  return sub(s, start + 1, stop)
end

function _M.nospace(s) return (gsub(S(s), "%s", "")) end

function _M.trunc(c, s)
  c, s = I(c), S(s)
  if c < 0 and #s + c > 0 then return sub(s, #s + c + 1) end
  if c >= 0 and #s > c then return sub(s, 1, c) end
  return s
end

function _M.abbrev(width, s)
  width, s = I(width), S(s)
  if width < 4 then return s end
  if #s <= width then return s end
  return sub(s, 1, width - 3) .. "..."
end

function _M.abbrevboth(left, right, s)
  left, right, s = I(left), I(right), S(s)
  if right < 4 or (left > 0 and right < 7) then return s end
  local len = #s
  if len <= right then return s end
  if left > len then left = len end
  if len - left < right - 3 then left = len - (right - 3) end
  if left <= 4 then return sub(s, 1, right - 3) .. "..." end
  if right < 7 then return s end
  if left + right - 3 < len then
    return "..." .. _M.abbrev(right - 3, sub(s, left + 1))
  end
  return "..." .. sub(s, len - (right - 3) + 1)
end

function _M.initials(s)
  local out = array()
  for w in S(s):gmatch("%S+") do
    local _, ni = utf8_decode(w, 1)
    out[#out + 1] = sub(w, 1, ni - 1)
  end
  return concat(out)
end

local function rand_from(chars, n)
  n = I(n)
  local out = array()
  for i = 1, n do
    local k = math.random(1, #chars)
    out[i] = sub(chars, k, k)
  end
  return concat(out)
end
local ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
function _M.randAlphaNum(n) return rand_from(ALNUM, n) end
function _M.randAlpha(n) return rand_from(sub(ALNUM, 1, 52), n) end
function _M.randNumeric(n) return rand_from("0123456789", n) end
local ASCII = {}
for c = 32, 126 do ASCII[#ASCII + 1] = char(c) end
ASCII = concat(ASCII)
function _M.randAscii(n) return rand_from(ASCII, n) end

function _M.contains(substr, s) return find(S(s), S(substr), 1, true) ~= nil end
function _M.hasPrefix(prefix, s) prefix = S(prefix); return sub(S(s), 1, #prefix) == prefix end
function _M.hasSuffix(suffix, s) suffix = S(suffix); return suffix == "" or sub(S(s), -#suffix) == suffix end

function _M.quote(...)
  local out = array()
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil then out[#out + 1] = go_quote(strval(v)) end
  end
  return concat(out, " ")
end

function _M.squote(...)
  local out = array()
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil then out[#out + 1] = "'" .. strval(v) .. "'" end
  end
  return concat(out, " ")
end

function _M.cat(...)
  local out = array()
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil then out[#out + 1] = strval(v) end
  end
  return concat(out, " ")
end

function _M.indent(spaces, s)
  spaces, s = I(spaces), S(s)
  local pad = rep(" ", spaces)
  return pad .. gsub(s, "\n", "\n" .. pad)
end
function _M.nindent(spaces, s) return "\n" .. _M.indent(spaces, s) end

function _M.replace(old, new, src)
  old, new, src = S(old), S(new), S(src)
  if old == "" then
    -- strings.Replace with an empty old string inserts new between every rune
    local out = { new }
    local i = 1
    while i <= #src do
      local _, ni = utf8_decode(src, i)
      out[#out + 1] = sub(src, i, ni - 1)
      out[#out + 1] = new
      i = ni
    end
    return concat(out)
  end
  local out, i = {}, 1
  while true do
    local a, b = find(src, old, i, true)
    if not a then break end
    out[#out + 1] = sub(src, i, a - 1)
    out[#out + 1] = new
    i = b + 1
  end
  out[#out + 1] = sub(src, i)
  return concat(out)
end

function _M.plural(one, many, count)
  if I(count) == 1 then return S(one) end
  return S(many)
end

local function is_upper(c) return c and c >= 65 and c <= 90 end

-- xstrings.ToSnakeCase / ToKebabCase (ASCII case rules).
local function camel_to_lower(s, delim)
  if s == "" then return "" end
  local out = array()
  local function w(c) out[#out + 1] = c end
  local i, len = 1, #s
  local prev, r0 = "_", "_"
  local function isdelim(c) return c == "_" or c == " " or c == "-" end
  while i <= len do
    prev = r0
    r0 = sub(s, i, i); i = i + 1
    if is_upper(byte(r0)) then
      if not isdelim(prev) and prev ~= delim then w(delim) end
      w(lower(r0))
      if i > len then break end
      r0 = sub(s, i, i); i = i + 1
      if not is_upper(byte(r0)) then
        if isdelim(r0) then r0 = delim end
        w(r0)
      else
        local r1
        local done = false
        while i <= len do
          r1 = r0
          r0 = sub(s, i, i); i = i + 1
          if not is_upper(byte(r0)) then
            if isdelim(r0) then
              r0 = delim
              w(lower(r1))
            else
              w(delim); w(lower(r1)); w(r0)
            end
            done = true
            break
          end
          w(lower(r1))
        end
        if not done or r0 == delim then
          if not done then w(lower(r0)) else w(r0) end
        end
      end
    else
      if isdelim(r0) then r0 = delim end
      w(r0)
    end
  end
  return concat(out)
end

function _M.snakecase(s) return camel_to_lower(S(s), "_") end
function _M.kebabcase(s) return camel_to_lower(S(s), "-") end

-- xstrings.ToCamelCase
function _M.camelcase(s)
  s = S(s)
  if s == "" then return "" end
  local out = array()
  local i = 1
  local r0
  while i <= #s do
    r0 = sub(s, i, i); i = i + 1
    if r0 ~= "_" then break end
    out[#out + 1] = r0
  end
  if r0 == "_" then return concat(out) end
  r0 = upper(r0)
  while i <= #s do
    local r1 = r0
    r0 = sub(s, i, i); i = i + 1
    if r1 == "_" and r0 == "_" then
      out[#out + 1] = r1
    else
      if r1 == "_" then r0 = upper(r0) else r0 = lower(r0) end
      if r1 ~= "_" then out[#out + 1] = r1 end
    end
  end
  out[#out + 1] = r0
  return concat(out)
end

function _M.shuffle(s)
  s = S(s)
  local runes = {}
  local i = 1
  while i <= #s do
    local _, ni = utf8_decode(s, i)
    runes[#runes + 1] = sub(s, i, ni - 1)
    i = ni
  end
  for k = #runes, 2, -1 do
    local j = math.random(1, k)
    runes[k], runes[j] = runes[j], runes[k]
  end
  return concat(runes)
end

-- goutils.WrapCustom
local function wrap_custom(s, width, nl, long_words)
  if s == "" then return "" end
  if nl == "" then nl = "\n" end
  if width < 1 then width = 1 end
  local len, off = #s, 0
  local out = array()
  while len - off > width do
    if sub(s, off + 1, off + 1) == " " then
      off = off + 1
    else
      local seg = sub(s, off + 1, width + off + 1)
      local last = nil
      local p = 1
      while true do
        local a = find(seg, " ", p, true)
        if not a then break end
        last = a
        p = a + 1
      end
      if last then
        local at = off + last - 1
        out[#out + 1] = sub(s, off + 1, at)
        out[#out + 1] = nl
        off = at + 1
      elseif long_words then
        out[#out + 1] = sub(s, off + 1, off + width)
        out[#out + 1] = nl
        off = off + width
      else
        local e = width + off
        local idx = find(s, " ", e + 1, true)
        if not idx then
          out[#out + 1] = sub(s, off + 1)
          off = len
        else
          out[#out + 1] = sub(s, off + 1, idx - 1)
          out[#out + 1] = nl
          off = idx
        end
      end
    end
  end
  out[#out + 1] = sub(s, off + 1)
  return concat(out)
end

function _M.wrap(width, s) return wrap_custom(S(s), I(width), "\n", false) end
function _M.wrapWith(width, sep, s) return wrap_custom(S(s), I(width), S(sep), true) end

local function split_plain(s, sep, n)
  local out = array()
  if n == 0 then return out end
  if sep == "" then
    local i = 1
    while i <= #s do
      if n > 0 and #out == n - 1 then out[#out + 1] = sub(s, i); return out end
      local _, ni = utf8_decode(s, i)
      out[#out + 1] = sub(s, i, ni - 1)
      i = ni
    end
    return out
  end
  local i = 1
  while true do
    if n > 0 and #out == n - 1 then break end
    local a, b = find(s, sep, i, true)
    if not a then break end
    out[#out + 1] = sub(s, i, a - 1)
    i = b + 1
  end
  out[#out + 1] = sub(s, i)
  return out
end

local function list_to_dict(l)
  local d = {}
  for i, v in ipairs(l) do d["_" .. (i - 1)] = v end
  return d
end

function _M.split(sep, s) return list_to_dict(split_plain(strval(s), S(sep), -1)) end
function _M.splitList(sep, s) return split_plain(S(s), S(sep), -1) end
function _M.splitn(sep, n, s) return list_to_dict(split_plain(S(s), S(sep), I(n))) end
function _M.join(sep, v) return concat(strslice(v), S(sep)) end

function _M.sortAlpha(v)
  if not (is_plain_table(v) and is_list(v)) then return { strval(v) } end
  local out = array()
  for i = 1, #v do out[i] = strval(v[i]) end
  sort(out)
  return out
end

function _M.toString(v) return strval(v) end
function _M.toStrings(v) return strslice(v) end
function _M.hello() return "Hello!" end

-------------------------------------------------------------------------------------------
-- JSON (encoding/json: sorted keys, Go float format, HTML-escaped unless raw)
-------------------------------------------------------------------------------------------

--- Go's json.Marshal (html = escape <>&; indent = MarshalIndent's indent): herald.json.
local json_encode = json.encode

function _M.mustToJson(v) return json_encode(v, true) end
function _M.mustToPrettyJson(v) return json_encode(v, true, "  ") end
function _M.mustToRawJson(v) return json_encode(v, false) end
function _M.toJson(v)
  local ok, s = pcall(json_encode, v, true)
  return ok and s or ""
end
function _M.toPrettyJson(v)
  local ok, s = pcall(json_encode, v, true, "  ")
  return ok and s or ""
end
function _M.toRawJson(v)
  local ok, s = pcall(json_encode, v, false)
  return ok and s or ""
end

function _M.mustFromJson(s)
  s = S(s)
  local v, err = json.try_decode(s)
  if err then error(err, 0) end
  return v
end
function _M.fromJson(s)
  return (json.try_decode(S(s)))
end

-------------------------------------------------------------------------------------------
-- Defaults, flow, types
-------------------------------------------------------------------------------------------

function _M.default(d, ...)
  local n = select("#", ...)
  local given = ...
  if n == 0 or empty(given) then return d end
  return given
end

function _M.empty(v) return empty(v) end

function _M.coalesce(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if not empty(v) then return v end
  end
  return nil
end

function _M.all(...)
  for i = 1, select("#", ...) do
    if empty((select(i, ...))) then return false end
  end
  return true
end

function _M.any(...)
  local n = select("#", ...)
  if n == 0 then return true end
  for i = 1, n do
    if not empty((select(i, ...))) then return true end
  end
  return false
end

function _M.ternary(vt, vf, v)
  if type(v) ~= "boolean" then arg_error("bool", v) end
  if v then return vt end
  return vf
end

function _M.fail(msg) error(S(msg), 0) end

function _M.atoi(s)
  s = S(s)
  if s:match("^[-+]?%d+$") then return tonumber(s) end
  return 0
end

_M.int = to_int
_M.int64 = to_int
_M.float64 = to_float

function _M.toDecimal(v)
  local s = strval(v)
  if s:match("^[-+]?[0-7]+$") then return tonumber(s, 8) end
  return 0
end

local function kind_of(v)
  local t = type(v)
  if t == "string" then return "string" end
  if t == "number" then return "float64" end
  if t == "boolean" then return "bool" end
  if v == nil or v == null then return "invalid" end
  if t == "table" then
    if typed(v) then return "struct" end
    if v[1] ~= nil or next(v) == nil then return "slice" end
    return "map"
  end
  if t == "function" then return "func" end
  return "invalid"
end

function _M.typeOf(v) return type_name(v) end
function _M.typeIs(target, v) return S(target) == type_name(v) end
function _M.typeIsLike(target, v)
  target = S(target)
  local t = type_name(v)
  return target == t or target == "*" .. t
end
function _M.kindOf(v) return kind_of(v) end
function _M.kindIs(target, v) return S(target) == kind_of(v) end
function _M.deepEqual(a, b) return deep_equal(a, b) end

-------------------------------------------------------------------------------------------
-- Encoding and hashes
-------------------------------------------------------------------------------------------

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_INV = {}
for i = 1, 64 do B64_INV[byte(B64, i)] = i - 1 end

function _M.b64enc(s)
  s = strval(s)
  local out = array()
  for i = 1, #s, 3 do
    local a, b, c = byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = floor(n / 262144) % 64
    local c2 = floor(n / 4096) % 64
    local c3 = floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = sub(B64, c1 + 1, c1 + 1) .. sub(B64, c2 + 1, c2 + 1)
      .. (b and sub(B64, c3 + 1, c3 + 1) or "=") .. (c and sub(B64, c4 + 1, c4 + 1) or "=")
  end
  return concat(out)
end

function _M.b64dec(s)
  s = strval(s):gsub("[\r\n]", "")
  local out = array()
  local len = #s
  if len % 4 ~= 0 then
    -- Go reports the offset of the first byte it cannot use
    local bad = len - len % 4
    for i = 1, len do
      local c = byte(s, i)
      if not B64_INV[c] and c ~= 61 then bad = i - 1; break end
    end
    return "illegal base64 data at input byte " .. bad
  end
  for i = 1, len, 4 do
    local v, pad = 0, 0
    for j = 0, 3 do
      local c = byte(s, i + j)
      local d = B64_INV[c]
      if c == 61 and i + 3 == len and (j == 3 or (j == 2 and byte(s, i + 3) == 61)) then
        pad = pad + 1
        d = 0
      elseif not d then
        return "illegal base64 data at input byte " .. (i + j - 1)
      end
      v = v * 64 + d
    end
    local a, b, c = floor(v / 65536) % 256, floor(v / 256) % 256, v % 256
    out[#out + 1] = char(a)
    if pad < 2 then out[#out + 1] = char(b) end
    if pad < 1 then out[#out + 1] = char(c) end
  end
  return concat(out)
end

local B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
local B32_INV = {}
for i = 1, 32 do B32_INV[byte(B32, i)] = i - 1 end

function _M.b32enc(s)
  s = strval(s)
  local out = array()
  for i = 1, #s, 5 do
    local chunk = sub(s, i, i + 4)
    local bits = {}
    for j = 1, #chunk do
      local b = byte(chunk, j)
      for k = 7, 0, -1 do bits[#bits + 1] = floor(b / 2 ^ k) % 2 end
    end
    local nchars = ceil(#bits / 5)
    for j = 1, 8 do
      if j <= nchars then
        local v = 0
        for k = 0, 4 do v = v * 2 + (bits[(j - 1) * 5 + k + 1] or 0) end
        out[#out + 1] = sub(B32, v + 1, v + 1)
      else
        out[#out + 1] = "="
      end
    end
  end
  return concat(out)
end

function _M.b32dec(s)
  s = strval(s):gsub("[\r\n]", "")
  if #s % 8 ~= 0 then return "illegal base32 data at input byte " .. (#s - #s % 8) end
  local bits = {}
  local stripped = s:gsub("=+$", "")
  for i = 1, #stripped do
    local d = B32_INV[byte(stripped, i)]
    if not d then return "illegal base32 data at input byte " .. (i - 1) end
    for k = 4, 0, -1 do bits[#bits + 1] = floor(d / 2 ^ k) % 2 end
  end
  local out = array()
  for i = 1, #bits - 7, 8 do
    local v = 0
    for k = 0, 7 do v = v * 2 + bits[i + k] end
    out[#out + 1] = char(v)
  end
  return concat(out)
end

local function tohex32(x) return fmt("%08x", x % 4294967296) end

local function sha1(msg)
  local h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
  local ml = #msg
  msg = msg .. "\128" .. rep("\0", (55 - ml) % 64)
  local bits = ml * 8
  msg = msg .. char(0, 0, 0, floor(bits / 2 ^ 32) % 256) .. char(floor(bits / 16777216) % 256,
    floor(bits / 65536) % 256, floor(bits / 256) % 256, bits % 256)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = byte(msg, chunk + i * 4, chunk + i * 4 + 3)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 79 do w[i] = rol(bxor(w[i - 3], w[i - 8], w[i - 14], w[i - 16]), 1) end
    local a, b, c, d, e = h0, h1, h2, h3, h4
    for i = 0, 79 do
      local f, k
      if i < 20 then f = bor(band(b, c), band(bnot(b), d)); k = 0x5A827999
      elseif i < 40 then f = bxor(b, c, d); k = 0x6ED9EBA1
      elseif i < 60 then f = bor(band(b, c), band(b, d), band(c, d)); k = 0x8F1BBCDC
      else f = bxor(b, c, d); k = 0xCA62C1D6 end
      local temp = tobit(rol(a, 5) + f + e + k + w[i])
      e, d, c, b, a = d, c, rol(b, 30), a, temp
    end
    h0, h1, h2, h3, h4 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d), tobit(h4 + e)
  end
  return tohex32(h0) .. tohex32(h1) .. tohex32(h2) .. tohex32(h3) .. tohex32(h4)
end

local K256 = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local function sha256(msg)
  local h = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
    0x5be0cd19 }
  local ml = #msg
  msg = msg .. "\128" .. rep("\0", (55 - ml) % 64)
  local bits = ml * 8
  msg = msg .. char(0, 0, 0, floor(bits / 2 ^ 32) % 256) .. char(floor(bits / 16777216) % 256,
    floor(bits / 65536) % 256, floor(bits / 256) % 256, bits % 256)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = byte(msg, chunk + i * 4, chunk + i * 4 + 3)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 63 do
      local s0 = bxor(ror(w[i - 15], 7), ror(w[i - 15], 18), rshift(w[i - 15], 3))
      local s1 = bxor(ror(w[i - 2], 17), ror(w[i - 2], 19), rshift(w[i - 2], 10))
      w[i] = tobit(w[i - 16] + s0 + w[i - 7] + s1)
    end
    local a, b, c, d, e, f, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
    for i = 0, 63 do
      local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
      local ch = bxor(band(e, f), band(bnot(e), g))
      local t1 = tobit(hh + S1 + ch + K256[i + 1] + w[i])
      local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
      local maj = bxor(band(a, b), band(a, c), band(b, c))
      local t2 = tobit(S0 + maj)
      hh, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
    end
    h[1], h[2], h[3], h[4] = tobit(h[1] + a), tobit(h[2] + b), tobit(h[3] + c), tobit(h[4] + d)
    h[5], h[6], h[7], h[8] = tobit(h[5] + e), tobit(h[6] + f), tobit(h[7] + g), tobit(h[8] + hh)
  end
  local out = array()
  for i = 1, 8 do out[i] = tohex32(h[i]) end
  return concat(out)
end

function _M.sha1sum(s) return sha1(S(s)) end
function _M.sha256sum(s) return sha256(S(s)) end
function _M.adler32sum(s)
  s = S(s)
  local a, b = 1, 0
  for i = 1, #s do
    a = (a + byte(s, i)) % 65521
    b = (b + a) % 65521
  end
  return fmt("%.0f", b * 65536 + a)
end

local seeded = false
local function seed()
  if seeded then return end
  seeded = true
  local t = core.now()
  math.randomseed(floor((t * 1000003) % 2147483647) + floor(os.clock() * 1e6))
end

function _M.uuidv4()
  seed()
  local b = {}
  for i = 1, 16 do b[i] = math.random(0, 255) end
  b[7] = bor(band(b[7], 0x0f), 0x40)
  b[9] = bor(band(b[9], 0x3f), 0x80)
  local h = {}
  for i = 1, 16 do h[i] = fmt("%02x", b[i]) end
  return concat(h, "", 1, 4) .. "-" .. concat(h, "", 5, 6) .. "-" .. concat(h, "", 7, 8) .. "-"
    .. concat(h, "", 9, 10) .. "-" .. concat(h, "", 11, 16)
end

function _M.randBytes(n)
  seed()
  n = I(n)
  local b = {}
  for i = 1, n do b[i] = char(math.random(0, 255)) end
  return _M.b64enc(concat(b))
end

do
  local r = {}
  for _, name in ipairs({ "randAlphaNum", "randAlpha", "randNumeric", "randAscii", "shuffle" }) do
    local f = _M[name]
    r[name] = function(x) seed(); return f(x) end
  end
  for k, f in pairs(r) do _M[k] = f end
end

-------------------------------------------------------------------------------------------
-- Lists
-------------------------------------------------------------------------------------------

function _M.list(...)
  local out = array()
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v == nil then v = null end
    out[i] = v
  end
  return out
end
_M.tuple = _M.list

function _M.mustFirst(l) l = L(l, "find first"); return l[1] end
function _M.mustLast(l) l = L(l, "find last"); return l[#l] end
function _M.mustRest(l) l = L(l, "find rest"); if #l == 0 then return array() end return copy_list(l, 2) end
function _M.mustInitial(l) l = L(l, "find initial"); if #l == 0 then return array() end return copy_list(l, 1, #l - 1) end
function _M.mustPush(l, v)
  l = L(l, "push")
  local out = copy_list(l)
  out[#out + 1] = v == nil and null or v
  return out
end
function _M.mustPrepend(l, v)
  l = L(l, "prepend")
  local out = { v == nil and null or v }
  for i = 1, #l do out[i + 1] = l[i] end
  return out
end
function _M.concat(...)
  local out = array()
  for i = 1, select("#", ...) do
    local l = select(i, ...)
    if not (is_plain_table(l) and is_list(l)) then
      error(fmt("Cannot concat type %s as list", type_name(l)), 0)
    end
    for k = 1, #l do out[#out + 1] = l[k] end
  end
  return out
end
function _M.mustReverse(l)
  l = L(l, "find reverse")
  local out = array()
  for i = #l, 1, -1 do out[#out + 1] = l[i] end
  return out
end
local function in_list(l, v)
  for i = 1, #l do if deep_equal(l[i], v) then return true end end
  return false
end
function _M.mustUniq(l)
  l = L(l, "find uniq")
  local out = array()
  for i = 1, #l do if not in_list(out, l[i]) then out[#out + 1] = l[i] end end
  return out
end
function _M.mustWithout(l, ...)
  l = L(l, "find without")
  local omit = { ... }
  local out = array()
  for i = 1, #l do if not in_list(omit, l[i]) then out[#out + 1] = l[i] end end
  return out
end
function _M.mustHas(needle, haystack)
  if is_nil(haystack) then return false end
  haystack = L(haystack, "find has")
  return in_list(haystack, needle == nil and null or needle)
end
function _M.mustCompact(l)
  l = L(l, "compact")
  local out = array()
  for i = 1, #l do if not empty(l[i]) then out[#out + 1] = l[i] end end
  return out
end
function _M.mustSlice(l, ...)
  local n = select("#", ...)
  local a, b = ...
  if type(l) == "string" then
    a = n >= 1 and to_int(a) or 0
    b = n >= 2 and to_int(b) or #l
    if a < 0 or b > #l or a > b then error(fmt("runtime error: slice bounds out of range [%d:%d]", a, b), 0) end
    return sub(l, a + 1, b)
  end
  if not (is_plain_table(l) and is_list(l)) then
    error(fmt("list should be type of slice or array but %s", kind_of(l)), 0)
  end
  a = n >= 1 and to_int(a) or 0
  b = n >= 2 and to_int(b) or #l
  if a < 0 or b > #l or a > b then
    error(fmt("runtime error: slice bounds out of range [%d:%d]", a, b), 0)
  end
  return copy_list(l, a + 1, b)
end
function _M.mustChunk(size, l)
  size = I(size)
  l = L(l, "chunk")
  local out = array()
  if size <= 0 then error("runtime error: integer divide by zero", 0) end
  for i = 1, #l, size do out[#out + 1] = copy_list(l, i, math.min(i + size - 1, #l)) end
  return out
end

for _, name in ipairs({ "First", "Last", "Rest", "Initial", "Push", "Prepend", "Reverse", "Uniq",
  "Without", "Has", "Compact", "Slice", "Chunk" }) do
  _M[lower(sub(name, 1, 1)) .. sub(name, 2)] = _M["must" .. name]
end
_M.append = _M.push
_M.mustAppend = _M.mustPush

_M["until"] = function(count)
  count = I(count)
  local out = array()
  local step = count < 0 and -1 or 1
  local i = 0
  while (step > 0 and i < count) or (step < 0 and i > count) do
    out[#out + 1] = i
    i = i + step
  end
  return out
end

function _M.untilStep(start, stop, step)
  start, stop, step = I(start), I(stop), I(step)
  local out = array()
  if step == 0 then return out end
  local i = start
  if step > 0 then
    if start >= stop then return out end
    while i < stop do out[#out + 1] = i; i = i + step end
  else
    if start <= stop then return out end
    while i > stop do out[#out + 1] = i; i = i + step end
  end
  return out
end

function _M.seq(...)
  local n = select("#", ...)
  local p = { ... }
  for i = 1, n do p[i] = I(p[i]) end
  local start, stop, step
  if n == 0 then return "" end
  if n == 1 then
    start, stop = 1, p[1]
    step = stop >= 1 and 1 or -1
  elseif n == 2 then
    start, stop = p[1], p[2]
    step = stop >= start and 1 or -1
  elseif n == 3 then
    start, step, stop = p[1], p[2], p[3]
    if step == 0 or (step > 0 and start > stop) or (step < 0 and start < stop) then return "" end
  else
    return ""
  end
  local out = array()
  local i = start
  while (step > 0 and i <= stop) or (step < 0 and i >= stop) do
    out[#out + 1] = tostring(i)
    i = i + step
  end
  return concat(out, " ")
end

-------------------------------------------------------------------------------------------
-- Dicts
-------------------------------------------------------------------------------------------

local function D(d, what)
  if is_plain_table(d) and (d[1] == nil) then return d end
  arg_error("map[string]interface {}", d)
end

function _M.dict(...)
  local n = select("#", ...)
  local d = {}
  for i = 1, n, 2 do
    local k = strval((select(i, ...)))
    local v
    if i + 1 <= n then v = select(i + 1, ...) else v = "" end
    if v == nil then v = null end
    d[k] = v
  end
  return d
end

function _M.get(d, key)
  d, key = D(d), S(key)
  local v = d[key]
  if v == nil then return "" end
  return v
end
function _M.set(d, key, v) d, key = D(d), S(key); d[key] = v == nil and null or v; return d end
function _M.unset(d, key) d, key = D(d), S(key); d[key] = nil; return d end
function _M.hasKey(d, key) d, key = D(d), S(key); return d[key] ~= nil end

function _M.keys(...)
  local out = array()
  for i = 1, select("#", ...) do
    local d = D((select(i, ...)))
    local ks = sorted_keys(d)
    for _, k in ipairs(ks) do out[#out + 1] = k end
  end
  return out
end

function _M.values(d)
  d = D(d)
  local ks = sorted_keys(d)
  local out = array()
  for i, k in ipairs(ks) do out[i] = d[k] end
  return out
end

function _M.pluck(key, ...)
  key = S(key)
  local out = array()
  for i = 1, select("#", ...) do
    local d = D((select(i, ...)))
    if d[key] ~= nil then out[#out + 1] = d[key] end
  end
  return out
end

function _M.pick(d, ...)
  d = D(d)
  local out = {}
  for i = 1, select("#", ...) do
    local k = S((select(i, ...)))
    if d[k] ~= nil then out[k] = d[k] end
  end
  return out
end

function _M.omit(d, ...)
  d = D(d)
  local skip = {}
  for i = 1, select("#", ...) do skip[S((select(i, ...)))] = true end
  local out = {}
  for k, v in pairs(d) do if not skip[k] then out[k] = v end end
  return out
end

-- mergo.Merge: fills keys missing (or empty) in dst, recursing into nested maps.
local function merge_into(dst, src, overwrite)
  for k, v in pairs(src) do
    local cur = dst[k]
    if is_map(cur) and is_map(v) then
      merge_into(cur, v, overwrite)
    elseif cur == nil or (overwrite and not empty(v)) or (not overwrite and empty(cur)) then
      dst[k] = deep_copy(v)
    end
  end
  return dst
end

function _M.merge(dst, ...)
  dst = D(dst)
  for i = 1, select("#", ...) do merge_into(dst, D((select(i, ...))), false) end
  return dst
end
function _M.mergeOverwrite(dst, ...)
  dst = D(dst)
  for i = 1, select("#", ...) do merge_into(dst, D((select(i, ...))), true) end
  return dst
end
_M.mustMerge = _M.merge
_M.mustMergeOverwrite = _M.mergeOverwrite

function _M.dig(...)
  local n = select("#", ...)
  if n < 3 then error("dig needs at least three arguments", 0) end
  local args = { ... }
  local d = D(args[n])
  local default = args[n - 1]
  local cur = d
  for i = 1, n - 2 do
    local k = S(args[i])
    if not is_plain_table(cur) then return default end
    local v = cur[k]
    if v == nil then return default end
    cur = v
  end
  return cur
end

function _M.deepCopy(v) return deep_copy(v) end
function _M.mustDeepCopy(v)
  if v == nil then error("reflect: call of reflect.Value.Type on zero Value", 0) end
  return deep_copy(v)
end

-------------------------------------------------------------------------------------------
-- Math (Sprig converts to int64 with cast.ToInt64; the *f variants use float64)
-------------------------------------------------------------------------------------------

local function trunc_div(a, b)
  if b == 0 then error("runtime error: integer divide by zero", 0) end
  local q = a / b
  if q >= 0 then return floor(q) end
  return ceil(q)
end

function _M.add(...)
  local s = 0
  for i = 1, select("#", ...) do s = s + to_int((select(i, ...))) end
  return s
end
function _M.add1(v) return to_int(v) + 1 end
function _M.sub(a, b) return to_int(a) - to_int(b) end
function _M.div(a, b) return trunc_div(to_int(a), to_int(b)) end
function _M.mod(a, b)
  a, b = to_int(a), to_int(b)
  if b == 0 then error("runtime error: integer divide by zero", 0) end
  return math.fmod(a, b)
end
function _M.mul(a, ...)
  local p = to_int(a)
  for i = 1, select("#", ...) do p = p * to_int((select(i, ...))) end
  return p
end
function _M.max(a, ...)
  local m = to_int(a)
  for i = 1, select("#", ...) do
    local v = to_int((select(i, ...)))
    if v > m then m = v end
  end
  return m
end
_M.biggest = _M.max
function _M.min(a, ...)
  local m = to_int(a)
  for i = 1, select("#", ...) do
    local v = to_int((select(i, ...)))
    if v < m then m = v end
  end
  return m
end
function _M.maxf(a, ...)
  local m = to_float(a)
  for i = 1, select("#", ...) do m = math.max(m, to_float((select(i, ...)))) end
  return m
end
function _M.minf(a, ...)
  local m = to_float(a)
  for i = 1, select("#", ...) do m = math.min(m, to_float((select(i, ...)))) end
  return m
end
function _M.floor(a) return floor(to_float(a)) end
function _M.ceil(a) return ceil(to_float(a)) end
function _M.round(a, p, ...)
  local round_on = 0.5
  if select("#", ...) > 0 then round_on = to_float((...)) end
  local val = to_float(a)
  local pow = 10 ^ I(p)
  local digit = pow * val
  local _, frac = math.modf(digit)
  local r
  if frac >= round_on then r = ceil(digit) else r = floor(digit) end
  return r / pow
end

-- decimal arithmetic in Sprig gives exact decimal results; round to 15 digits like it
local function dec(x)
  if x ~= x or x == huge or x == -huge or x == 0 then return x end
  return tonumber(fmt("%.15g", x))
end
function _M.addf(...)
  local s = 0
  for i = 1, select("#", ...) do s = s + to_float((select(i, ...))) end
  return dec(s)
end
function _M.add1f(v) return dec(to_float(v) + 1) end
function _M.subf(a, ...)
  local s = to_float(a)
  for i = 1, select("#", ...) do s = s - to_float((select(i, ...))) end
  return dec(s)
end
function _M.mulf(a, ...)
  local s = to_float(a)
  for i = 1, select("#", ...) do s = s * to_float((select(i, ...))) end
  return dec(s)
end
function _M.divf(a, ...)
  local s = to_float(a)
  for i = 1, select("#", ...) do
    local d = to_float((select(i, ...)))
    if d == 0 then error("decimal division by 0", 0) end
    s = s / d
  end
  return s
end
function _M.randInt(lo, hi)
  seed()
  lo, hi = to_int(lo), to_int(hi)
  if hi <= lo then error("invalid argument to Intn", 0) end
  return math.random(lo, hi - 1)
end

-------------------------------------------------------------------------------------------
-- Dates (UTC only; see the header)
-------------------------------------------------------------------------------------------

local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local MONTHS = { "January", "February", "March", "April", "May", "June", "July", "August",
  "September", "October", "November", "December" }
local DAYS = { "Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday" }

local Time = { __name = "time.Time" }
Time.__index = Time

local function new_time(sec, nsec)
  return setmetatable({ sec = sec, nsec = nsec or 0 }, Time)
end

local function is_time(v) return getmetatable(v) == Time end
_M._is_time = is_time
_M._new_time = new_time

function Time:fields()
  local days = floor(self.sec / 86400)
  local secs = self.sec - days * 86400
  local y, m, d = civil_from_days(days)
  local wd = (days + 4) % 7
  local yday = days - days_from_civil(y, 1, 1) + 1
  return y, m, d, floor(secs / 3600), floor(secs / 60) % 60, secs % 60, wd, yday
end

-- Go layout elements, longest first where prefixes overlap.
local STD = { "January", "Jan", "Monday", "Mon", "MST", "2006", "002", "01", "02", "03", "04",
  "05", "06", "15", "1", "2", "__2", "_2", "3", "4", "5", "PM", "pm", "-07:00:00", "-070000",
  "-07:00", "-0700", "-07", "Z07:00:00", "Z070000", "Z07:00", "Z0700", "Z07" }

--- Splits a Go layout into literal strings and std element names.
local function layout_chunks(layout)
  local chunks = {}
  local i, len, lit = 1, #layout, {}
  local function flush()
    if #lit > 0 then chunks[#chunks + 1] = { lit = concat(lit) }; lit = {} end
  end
  while i <= len do
    local c = sub(layout, i, i)
    local found
    if (c == "." or c == ",") and (sub(layout, i + 1, i + 1) == "0" or sub(layout, i + 1, i + 1) == "9") then
      local d = sub(layout, i + 1, i + 1)
      local j = i + 1
      while sub(layout, j, j) == d do j = j + 1 end
      if not sub(layout, j, j):match("%d") then
        found = { frac = d, n = j - i - 1, sep = c }
        flush()
        chunks[#chunks + 1] = found
        i = j
      end
    end
    if not found then
      for _, s in ipairs(STD) do
        if sub(layout, i, i + #s - 1) == s then
          -- "Jan"/"Mon" must not be followed by a lower-case letter (Go: "January" etc.)
          local ok = true
          if (s == "Jan" or s == "Mon") and sub(layout, i + 3, i + 3):match("%l") then ok = false end
          if ok then found = s; break end
        end
      end
      if found then
        flush()
        chunks[#chunks + 1] = { std = found }
        i = i + #found
      else
        lit[#lit + 1] = c
        i = i + 1
      end
    end
  end
  flush()
  return chunks
end

local function format_time(t, layout)
  local y, m, d, hh, mi, ss, wd, yday = t:fields()
  local out = array()
  for _, ch in ipairs(layout_chunks(layout)) do
    local s = ch.std
    local r
    if ch.lit then r = ch.lit
    elseif ch.frac then
      local digits = fmt("%09d", t.nsec)
      if ch.frac == "0" then
        r = ch.sep .. sub(digits, 1, ch.n)
      else
        local f = sub(digits, 1, ch.n):gsub("0+$", "")
        r = f ~= "" and (ch.sep .. f) or ""
      end
    elseif s == "January" then r = MONTHS[m]
    elseif s == "Jan" then r = sub(MONTHS[m], 1, 3)
    elseif s == "Monday" then r = DAYS[wd + 1]
    elseif s == "Mon" then r = sub(DAYS[wd + 1], 1, 3)
    elseif s == "MST" then r = "UTC"
    elseif s == "2006" then r = fmt("%04d", y)
    elseif s == "06" then r = fmt("%02d", y % 100)
    elseif s == "01" then r = fmt("%02d", m)
    elseif s == "1" then r = tostring(m)
    elseif s == "02" then r = fmt("%02d", d)
    elseif s == "2" then r = tostring(d)
    elseif s == "_2" then r = fmt("%2d", d)
    elseif s == "002" then r = fmt("%03d", yday)
    elseif s == "__2" then r = fmt("%3d", yday)
    elseif s == "15" then r = fmt("%02d", hh)
    elseif s == "03" then r = fmt("%02d", (hh % 12 == 0) and 12 or hh % 12)
    elseif s == "3" then r = tostring((hh % 12 == 0) and 12 or hh % 12)
    elseif s == "04" then r = fmt("%02d", mi)
    elseif s == "4" then r = tostring(mi)
    elseif s == "05" then r = fmt("%02d", ss)
    elseif s == "5" then r = tostring(ss)
    elseif s == "PM" then r = hh >= 12 and "PM" or "AM"
    elseif s == "pm" then r = hh >= 12 and "pm" or "am"
    elseif s:sub(1, 1) == "Z" then r = "Z"
    elseif s == "-07:00:00" then r = "+00:00:00"
    elseif s == "-070000" then r = "+000000"
    elseif s == "-07:00" then r = "+00:00"
    elseif s == "-0700" then r = "+0000"
    elseif s == "-07" then r = "+00"
    end
    out[#out + 1] = r
  end
  return concat(out)
end
_M._format_time = format_time

Time.__tostring = function(t) return format_time(t, "2006-01-02 15:04:05.999999999 -0700 MST") end
Time.__tojson = function(t) return format_time(t, "2006-01-02T15:04:05.999999999Z07:00") end

local function parse_time(layout, value)
  local y, m, d, hh, mi, ss, ns, pm, off = 1, 1, 1, 0, 0, 0, 0, nil, 0
  local pos = 1
  local function perr(elem)
    error(fmt('parsing time %s as %s: cannot parse %s as %s', go_quote(value), go_quote(layout),
      go_quote(sub(value, pos)), go_quote(elem)), 0)
  end
  local function num(elem, min, max)
    local s = value:match("^%d+", pos)
    if not s or #s < min then perr(elem) end
    if #s > max then s = sub(s, 1, max) end
    pos = pos + #s
    return tonumber(s)
  end
  for _, ch in ipairs(layout_chunks(layout)) do
    local s = ch.std
    if ch.lit then
      if sub(value, pos, pos + #ch.lit - 1) ~= ch.lit then perr(ch.lit) end
      pos = pos + #ch.lit
    elseif ch.frac then
      local f = value:match("^[.,](%d+)", pos)
      if f then
        pos = pos + 1 + #f
        ns = tonumber(sub(f .. "000000000", 1, 9))
      elseif ch.frac == "0" then perr(ch.sep .. rep("0", ch.n)) end
    elseif s == "2006" then y = num(s, 4, 4)
    elseif s == "06" then y = num(s, 2, 2); y = y + (y >= 69 and 1900 or 2000)
    elseif s == "01" then m = num(s, 2, 2)
    elseif s == "1" then m = num(s, 1, 2)
    elseif s == "January" or s == "Jan" then
      local found
      for i, name in ipairs(MONTHS) do
        local nm = s == "Jan" and sub(name, 1, 3) or name
        if sub(value, pos, pos + #nm - 1):lower() == nm:lower() then found = i; pos = pos + #nm; break end
      end
      if not found then perr(s) end
      m = found
    elseif s == "Monday" or s == "Mon" then
      local found
      for _, name in ipairs(DAYS) do
        local nm = s == "Mon" and sub(name, 1, 3) or name
        if sub(value, pos, pos + #nm - 1):lower() == nm:lower() then found = true; pos = pos + #nm; break end
      end
      if not found then perr(s) end
    elseif s == "02" then d = num(s, 2, 2)
    elseif s == "2" then d = num(s, 1, 2)
    elseif s == "_2" then
      if sub(value, pos, pos) == " " then pos = pos + 1 end
      d = num(s, 1, 2)
    elseif s == "002" or s == "__2" then num(s, 3, 3)
    elseif s == "15" then hh = num(s, 1, 2)
    elseif s == "03" then hh = num(s, 2, 2)
    elseif s == "3" then hh = num(s, 1, 2)
    elseif s == "04" then mi = num(s, 2, 2)
    elseif s == "4" then mi = num(s, 1, 2)
    elseif s == "05" then ss = num(s, 2, 2)
      local f = value:match("^%.(%d+)", pos)
      if f then pos = pos + 1 + #f; ns = tonumber(sub(f .. "000000000", 1, 9)) end
    elseif s == "5" then ss = num(s, 1, 2)
    elseif s == "PM" or s == "pm" then
      local ap = sub(value, pos, pos + 1):upper()
      if ap ~= "AM" and ap ~= "PM" then perr(s) end
      pm = ap == "PM"
      pos = pos + 2
    elseif s == "MST" then
      local z = value:match("^%u%u%u?%u?%u?", pos)
      if not z then perr(s) end
      pos = pos + #z
    else -- zone offsets
      if s:sub(1, 1) == "Z" and sub(value, pos, pos) == "Z" then
        pos = pos + 1
      else
        local sign = sub(value, pos, pos)
        if sign ~= "+" and sign ~= "-" then perr(s) end
        local h2, rest = value:match("^(%d%d)(.*)", pos + 1)
        if not h2 then perr(s) end
        local p2 = pos + 3
        local m2 = "00"
        local want_colon = s:find(":")
        if #s > 4 then
          if want_colon then
            m2 = value:match("^:(%d%d)", p2)
            if not m2 then perr(s) end
            p2 = p2 + 3
          else
            m2 = value:match("^(%d%d)", p2)
            if not m2 then perr(s) end
            p2 = p2 + 2
          end
        end
        local s2 = "00"
        if s:match("00$") and #s >= 7 then
          s2 = value:match(want_colon and "^:(%d%d)" or "^(%d%d)", p2)
          if not s2 then perr(s) end
          p2 = p2 + (want_colon and 3 or 2)
        end
        off = (tonumber(h2) * 3600 + tonumber(m2) * 60 + tonumber(s2)) * (sign == "-" and -1 or 1)
        pos = p2
        if rest then end
      end
    end
  end
  if pos <= #value then
    error(fmt("parsing time %s: extra text: %s", go_quote(value), go_quote(sub(value, pos))), 0)
  end
  if pm ~= nil then
    if pm and hh < 12 then hh = hh + 12 elseif not pm and hh == 12 then hh = 0 end
  end
  if m < 1 or m > 12 then error(fmt("parsing time %s: month out of range", go_quote(value)), 0) end
  if d < 1 or d > 31 or hh > 23 or mi > 59 or ss > 59 then
    error(fmt("parsing time %s: day out of range", go_quote(value)), 0)
  end
  local sec = days_from_civil(y, m, d) * 86400 + hh * 3600 + mi * 60 + ss - off
  return new_time(sec, ns)
end
_M._parse_time = parse_time

local ZERO_TIME = days_from_civil(1, 1, 1) * 86400

local function now_time()
  local t = core.now()
  local s = floor(t)
  return new_time(s, floor((t - s) * 1e9 + 0.5) % 1000000000)
end

local function as_time(v)
  if is_time(v) then return v end
  if type(v) == "number" then return new_time(floor(v), 0) end
  return now_time()
end

function _M.now() return now_time() end
function _M.date(layout, date) return format_time(as_time(date), S(layout)) end
function _M.dateInZone(layout, date, zone) S(zone); return format_time(as_time(date), S(layout)) end
_M.date_in_zone = _M.dateInZone
_M.mustDateInZone = _M.dateInZone
function _M.htmlDate(date) return format_time(as_time(date), "2006-01-02") end
function _M.htmlDateInZone(date, zone) S(zone); return format_time(as_time(date), "2006-01-02") end
function _M.mustToDate(layout, s) return parse_time(S(layout), S(s)) end
function _M.toDate(layout, s)
  local ok, t = pcall(parse_time, S(layout), S(s))
  if ok then return t end
  return new_time(ZERO_TIME, 0)
end
function _M.unixEpoch(t)
  if not is_time(t) then arg_error("time.Time", t) end
  return fmt("%.0f", t.sec)
end

local DUR_UNITS = { ns = 1, us = 1e3, ["µs"] = 1e3, ["μs"] = 1e3, ms = 1e6, s = 1e9, m = 6e10,
  h = 3.6e12 }

--- time.ParseDuration; returns nanoseconds or nil, err.
local function parse_duration(s)
  local orig = s
  local neg = false
  local c = sub(s, 1, 1)
  if c == "-" or c == "+" then neg = c == "-"; s = sub(s, 2) end
  if s == "0" then return 0 end
  if s == "" then return nil, "time: invalid duration " .. go_quote(orig) end
  local total = 0
  while s ~= "" do
    local num, rest = s:match("^(%d*%.?%d*)(.*)$")
    if num == "" or num == "." then return nil, "time: invalid duration " .. go_quote(orig) end
    local unit = rest:match("^[^%d%.]+")
    if not unit then return nil, "time: missing unit in duration " .. go_quote(orig) end
    local mult = DUR_UNITS[unit]
    if not mult then
      return nil, "time: unknown unit " .. go_quote(unit) .. " in duration " .. go_quote(orig)
    end
    total = total + tonumber(num) * mult
    s = sub(rest, #unit + 1)
  end
  total = floor(total + 0.5)
  return neg and -total or total
end
_M._parse_duration = parse_duration

local function frac_str(u, div)
  local ip = floor(u / div)
  local fp = u - ip * div
  if fp == 0 then return tostring(ip) end
  local w = #tostring(div) - 1
  local f = fmt("%0" .. w .. "d", fp):gsub("0+$", "")
  return ip .. "." .. f
end

--- time.Duration.String of nanoseconds.
local function duration_string(ns)
  if ns == 0 then return "0s" end
  local sign = ns < 0 and "-" or ""
  local u = abs(ns)
  if u < 1e9 then
    if u < 1e3 then return sign .. fmt("%.0f", u) .. "ns" end
    if u < 1e6 then return sign .. frac_str(u, 1e3) .. "µs" end
    return sign .. frac_str(u, 1e6) .. "ms"
  end
  local h = floor(u / 3.6e12)
  u = u - h * 3.6e12
  local m = floor(u / 6e10)
  u = u - m * 6e10
  local s = frac_str(u, 1e9) .. "s"
  if h > 0 then return sign .. fmt("%.0f", h) .. "h" .. m .. "m" .. s end
  if m > 0 then return sign .. m .. "m" .. s end
  return sign .. s
end
_M._duration_string = duration_string

function _M.mustDateModify(d, t)
  local ns, err = parse_duration(S(d))
  if not ns then error(err, 0) end
  if not is_time(t) then arg_error("time.Time", t) end
  local total = t.nsec + ns
  local sec = t.sec + floor(total / 1e9)
  return new_time(sec, total % 1e9)
end
function _M.dateModify(d, t)
  local ok, r = pcall(_M.mustDateModify, d, t)
  if ok then return r end
  if not is_time(t) then arg_error("time.Time", t) end
  return t
end
_M.date_modify = _M.dateModify

function _M.duration(sec)
  local n = 0
  if type(sec) == "string" then
    n = sec:match("^[-+]?%d+$") and tonumber(sec) or 0
  elseif type(sec) == "number" then
    n = to_int(sec)
  end
  return duration_string(n * 1e9)
end

function _M.durationRound(v)
  local ns = 0
  if type(v) == "string" then
    ns = parse_duration(v) or 0
  elseif type(v) == "number" then
    ns = to_int(v)
  elseif is_time(v) then
    local now = now_time()
    ns = (now.sec - v.sec) * 1e9 + (now.nsec - v.nsec)
  end
  local neg = ns < 0
  local u = abs(ns)
  local day = 86400e9
  local r
  if u > 365 * day then r = floor(u / (365 * day)) .. "y"
  elseif u > 30 * day then r = floor(u / (30 * day)) .. "mo"
  elseif u > day then r = floor(u / day) .. "d"
  elseif u > 3.6e12 then r = floor(u / 3.6e12) .. "h"
  elseif u > 6e10 then r = floor(u / 6e10) .. "m"
  elseif u > 1e9 then r = floor(u / 1e9) .. "s"
  else r = "0s" end
  if neg and r ~= "0s" then r = "-" .. r end
  return r
end

function _M.ago(t)
  local tt = as_time(t)
  local now = now_time()
  local ns = (now.sec - tt.sec) * 1e9 + (now.nsec - tt.nsec)
  ns = floor(ns / 1e9 + 0.5) * 1e9
  return duration_string(ns)
end

-------------------------------------------------------------------------------------------
-- Regular expressions (PCRE2 through herald.core; Go RE2 syntax is a subset for these uses)
-------------------------------------------------------------------------------------------

local re_cache = setmetatable({}, { __mode = "v" })

local function RE(pattern)
  pattern = S(pattern)
  local re = re_cache[pattern]
  if re then return re end
  local r, err = core.regex_compile(pattern)
  if not r then error("error parsing regexp: " .. tostring(err) .. ": `" .. pattern .. "`", 0) end
  re_cache[pattern] = r
  return r
end

--- All matches as Go's FindAll: { {start0, end0, captures}, ... } (0-based, end exclusive).
local function find_all(re, s, n)
  local out = array()
  local pos, prev_end = 0, -1
  local len = #s
  while (n < 0 or #out < n) and pos <= len do
    local st, en, caps = re:match(s, pos + 1)
    if not st then break end
    local m0, m1 = st - 1, en
    local accept = true
    if m1 == m0 then
      if m0 == prev_end then accept = false end
      if pos < len then
        local _, ni = utf8_decode(s, pos + 1)
        pos = ni - 1
      else
        pos = pos + 1
      end
      if m0 > pos then pos = m0 end
    else
      pos = m1
    end
    prev_end = m1
    if accept then out[#out + 1] = { m0, m1, caps } end
  end
  return out
end

function _M.mustRegexMatch(regex, s) return RE(regex):find(S(s)) == true end
function _M.mustRegexFind(regex, s)
  s = S(s)
  local st, en = RE(regex):match(s, 1)
  if not st then return "" end
  return sub(s, st, en)
end
function _M.mustRegexFindAll(regex, s, n)
  s, n = S(s), I(n)
  local out = array()
  for _, m in ipairs(find_all(RE(regex), s, n)) do out[#out + 1] = sub(s, m[1] + 1, m[2]) end
  return out
end

-- Regexp.Expand: $1, ${1}, $name, ${name}, $$ (named groups expand to "": see the header).
local function expand(repl, s, m)
  return (gsub(repl, "%$(%$?)(%{?)([%w_]*)(%}?)", function(dollar, brace, name, close)
    if dollar == "$" then return "$" .. brace .. name .. close end
    if brace == "{" and close ~= "}" then return "$" .. brace .. name .. close end
    if brace == "" and close == "}" then
      -- "$name}" : the brace is literal text
      local v = name:match("^%d+$") and tonumber(name)
      local r = ""
      if v == 0 then r = sub(s, m[1] + 1, m[2])
      elseif v then r = (m[3] and m[3][v]) or "" end
      if r == false then r = "" end
      return r .. "}"
    end
    if name == "" then return "$" .. brace .. close end
    local idx = name:match("^%d+$") and tonumber(name)
    if idx == 0 then return sub(s, m[1] + 1, m[2]) end
    if idx then
      local c = m[3] and m[3][idx]
      return c or ""
    end
    return ""
  end))
end

local function replace_all(re, s, repl, literal)
  local out = array()
  local last_end = 0
  local search = 0
  local len = #s
  while search <= len do
    local st, en, caps = re:match(s, search + 1)
    if not st then break end
    local a0, a1 = st - 1, en
    out[#out + 1] = sub(s, last_end + 1, a0)
    if a1 > last_end or a0 == 0 then
      if literal then out[#out + 1] = repl
      else out[#out + 1] = expand(repl, s, { a0, a1, caps }) end
    end
    last_end = a1
    local width = 1
    if search < len then
      local _, ni = utf8_decode(s, search + 1)
      width = ni - 1 - search
    end
    if search + width > a1 then search = search + width
    elseif search + 1 > a1 then search = search + 1
    else search = a1 end
  end
  out[#out + 1] = sub(s, last_end + 1)
  return concat(out)
end

function _M.mustRegexReplaceAll(regex, s, repl) return replace_all(RE(regex), S(s), S(repl), false) end
function _M.mustRegexReplaceAllLiteral(regex, s, repl) return replace_all(RE(regex), S(s), S(repl), true) end

function _M.mustRegexSplit(regex, s, n)
  s, n = S(s), I(n)
  if n == 0 then return array() end
  regex = S(regex)
  if #regex > 0 and #s == 0 then return { "" } end
  local matches = find_all(RE(regex), s, n)
  local out = array()
  local beg, stop = 0, 0
  for _, m in ipairs(matches) do
    if n > 0 and #out == n - 1 then break end
    stop = m[1]
    if m[2] ~= 0 then out[#out + 1] = sub(s, beg + 1, stop) end
    beg = m[2]
  end
  if stop ~= #s then out[#out + 1] = sub(s, beg + 1) end
  return out
end

function _M.regexQuoteMeta(s)
  return (gsub(S(s), "[\\%.%+%*%?%(%)%|%[%]%{%}%^%$]", "\\%0"))
end

for _, name in ipairs({ "Match", "Find", "FindAll", "ReplaceAll", "ReplaceAllLiteral", "Split" }) do
  _M["regex" .. name] = _M["mustRegex" .. name]
end

-------------------------------------------------------------------------------------------
-- Paths and environment
-------------------------------------------------------------------------------------------

--- path.Clean
local function clean(p)
  if p == "" then return "." end
  local rooted = sub(p, 1, 1) == "/"
  local parts = {}
  for seg in p:gmatch("[^/]+") do
    if seg == "." then
      -- skip
    elseif seg == ".." then
      if #parts > 0 and parts[#parts] ~= ".." then parts[#parts] = nil
      elseif not rooted then parts[#parts + 1] = ".." end
    else
      parts[#parts + 1] = seg
    end
  end
  local r = concat(parts, "/")
  if rooted then r = "/" .. r end
  if r == "" then return "." end
  return r
end

function _M.clean(p) return clean(S(p)) end
function _M.base(p)
  p = S(p)
  if p == "" then return "." end
  p = p:gsub("/+$", "")
  if p == "" then return "/" end
  return p:match("([^/]*)$")
end
function _M.dir(p)
  p = S(p)
  local d = p:match("^(.*/)") or ""
  return clean(d)
end
function _M.ext(p)
  p = S(p)
  for i = #p, 1, -1 do
    local c = sub(p, i, i)
    if c == "/" then return "" end
    if c == "." then return sub(p, i) end
  end
  return ""
end
function _M.isAbs(p) return sub(S(p), 1, 1) == "/" end

-- env and expandenv are left out on purpose: a template in a Sensor would otherwise copy the
-- engine's environment (credentials included) into trigger payloads. Argo leaves them out of
-- its source-filter map for the same reason.

return _M
