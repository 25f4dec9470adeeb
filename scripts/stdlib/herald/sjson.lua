-- herald/sjson.lua: SJSON paths (github.com/tidwall/sjson) over decoded Lua values.
--
-- Argo Events writes trigger parameters with sjson (`dest`). Herald keeps the trigger template
-- and payloads as Lua tables, so this module sets values in tables with sjson's rules:
--
--   local sjson = require "herald.sjson"
--   local set = assert(sjson.compile("spec.arguments.parameters.#(name==\"message\").value"))
--   doc = assert(set(doc, "hello"))       -- always use the returned doc (it can be new)
--
-- Simple paths (keys, array indexes, "-1", "\." escapes, ":" to force an object key) create
-- what is missing: an array when the next key is numeric or "-1", else an object; an index
-- past the end pads with null; a scalar in the way is replaced. Paths with |, #, @, * or ?
-- are "complex": as in sjson they only replace values that gjson finds in the document
-- (queries, "#." projections, wildcards); when nothing is found the doc is unchanged.
local cjson = require "cjson"
local gjson = require "herald.gjson"

local type, pairs, tonumber, setmetatable, getmetatable, error = type, pairs, tonumber, setmetatable,
  getmetatable, error
local byte, sub, lower, find = string.byte, string.sub, string.lower,
  string.find
local concat = table.concat

local I = gjson._internal
local kind, OBJECT, ARRAY = I.kind, I.OBJECT, I.ARRAY
local new_array, sorted_keys = I.new_array, I.sorted_keys
local null = cjson.null

local _M = {}

local DOT, PIPE, HASH, AT, BANG, BSL, STAR, QM, COLON = 46, 124, 35, 64, 33, 92, 42, 63, 58
local LBRK, LBRC, DQ, PLUS, MINUS, ZERO, NINE = 91, 123, 34, 43, 45, 48, 57

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = setmetatable({}, getmetatable(v))
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return out
end

-- sjson's parsePath over the whole path: a list of {part=, force=, numeric=, n=}, or nil when
-- the path is complex (a component has |, #, @, * or ? outside a \ escape).
local function parse_simple(path)
  local comps = {}
  local i, n = 1, #path
  while true do
    local c = { force = false }
    if byte(path, i) == COLON then
      c.force = true
      i = i + 1
    end
    local buf, more = {}, false
    while i <= n do
      local b = byte(path, i)
      if b == BSL then
        i = i + 1
        if i <= n then buf[#buf + 1] = sub(path, i, i) end
      elseif b == DOT then
        more = true
        i = i + 1
        break
      elseif b == PIPE or b == HASH or b == AT or b == STAR or b == QM then
        return nil
      else
        buf[#buf + 1] = sub(path, i, i)
      end
      i = i + 1
    end
    c.part = concat(buf)
    -- atoui: digits only (the empty part counts as 0, as in sjson), never when forced
    if not c.force and not find(c.part, "[^0-9]") then
      c.numeric = true
      c.n = tonumber(c.part) or 0
    end
    c.append = not c.force and c.part == "-1"
    comps[#comps + 1] = c
    if not more then break end
  end
  return comps
end

-- A fresh value for comps[j..] (appendBuild).
local function build(comps, j, value)
  local c = comps[j]
  if not c then return value end
  if c.numeric or c.append then
    local a = new_array()
    if c.numeric then
      for k = 1, c.n do a[k] = null end
    end
    a[#a + 1] = build(comps, j + 1, value)
    return a
  end
  return { [c.part] = build(comps, j + 1, value) }
end

local set_in

local function set_array(cur, comps, i, value)
  local c = comps[i]
  if c.numeric then
    local idx = c.n + 1
    if idx <= #cur then
      if i == #comps then
        cur[idx] = value
      else
        local nv, err = set_in(cur[idx], comps, i + 1, value)
        if nv == nil then return nil, err end
        cur[idx] = nv
      end
      return cur
    end
    for k = #cur + 1, idx - 1 do cur[k] = null end
    cur[idx] = build(comps, i + 1, value)
    return cur
  elseif c.append then
    cur[#cur + 1] = build(comps, i + 1, value)
    return cur
  end
  return nil, "cannot set array element for non-numeric key '" .. c.part .. "'"
end

local function set_object(cur, comps, i, value)
  local c = comps[i]
  local ex = cur[c.part]
  if ex ~= nil then
    if i == #comps then
      cur[c.part] = value
    else
      local nv, err = set_in(ex, comps, i + 1, value)
      if nv == nil then return nil, err end
      cur[c.part] = nv
    end
    return cur
  end
  cur[c.part] = build(comps, i + 1, value)
  return cur
end

-- Sets comps[i..] in cur; returns the (possibly new) cur, or nil, err.
function set_in(cur, comps, i, value)
  local c = comps[i]
  if type(cur) == "table" then
    if kind(cur) == ARRAY then return set_array(cur, comps, i, value) end
    return set_object(cur, comps, i, value)
  end
  -- missing, or a scalar in the way: a new array for a numeric key, else an object
  if c.numeric then return set_array(new_array(), comps, i, value) end
  return set_object({}, comps, i, value)
end

-- Complex paths: locate the (container, key) pairs gjson would report as Index/Indexes.

local compile_locate_get, compile_locate_path

local function none() return false end

local LITERAL_START = { [LBRC] = true, [LBRK] = true, [DQ] = true, [PLUS] = true, [MINUS] = true }

-- Paths that gjson answers with a computed value (modifier, literal, multipath): no Index.
local function computed(path)
  if #path <= 1 then return false end
  local c = byte(path, 1)
  if c == AT then
    local name = path:match("^@([^.|:]*)")
    return I.modifiers()[name] ~= nil
  elseif c == BANG then
    local c2 = byte(path, 2)
    if LITERAL_START[c2] or (c2 >= ZERO and c2 <= NINE) then return true end
    local w = lower(path:match("^!([^.|]*)"))
    return w == "true" or w == "false" or w == "null" or w == "nan" or w == "inf"
  elseif c == LBRK or c == LBRC then
    return true
  elseif c == DOT and byte(path, 2) == DOT then
    return true
  end
  return false
end

function compile_locate_get(path, base, memo)
  if computed(path) then return none end
  return compile_locate_path(path, base, memo)
end

function compile_locate_path(path, base, memo)
  local hit = memo.l[path]
  if hit then return hit end
  local err
  local orp = I.parse_object_path(path)
  local arp
  arp, err = I.parse_array_path(path, base)
  if not arp then return nil, err end

  local o_part, o_wild, o_more, o_cont = orp.part, orp.wild, orp.more, nil
  local o_glob = o_wild and I.compile_glob(o_part)
  if o_more then
    o_cont, err = compile_locate_path(orp.rest, base + orp.rest_off, memo)
    if not o_cont then return nil, err end
  end
  local o_piped = orp.piped

  local function ostep(o, out)
    if not o_wild then
      local cv = o[o_part]
      if o_more then
        return type(cv) == "table" and o_cont(cv, out)
      end
      if o_piped or cv == nil then return false end
      out[#out + 1] = o
      out[#out + 1] = o_part
      return true
    end
    local keys = sorted_keys(o)
    for i = 1, #keys do
      local key = keys[i]
      if I.glob_match(o_glob, key) then
        local cv = o[key]
        if not o_more then
          if o_piped then return false end
          out[#out + 1] = o
          out[#out + 1] = key
          return true
        end
        if type(cv) == "table" and o_cont(cv, out) then return true end
      end
    end
    return false
  end

  local astep
  local a_more, a_piped = arp.more, arp.piped
  if arp.query then
    local q = arp.query
    local qpath, all = q.path, q.all
    local qfn
    qfn, err = I.compile_get(qpath, base + q.path_off, memo.gjson)
    if not qfn then return nil, err end
    local matcher = I.make_matcher(q.op, q.value)
    local left
    if a_more then
      if I.split_possible_pipe(arp.rest) then
        left = none
      else
        left, err = compile_locate_get(arp.rest, base + arp.rest_off, memo)
        if not left then return nil, err end
      end
    end
    astep = function(a, out)
      if a_piped then return false end
      local found = false
      for i = 1, #a do
        local e = a[i]
        local qv
        if type(e) == "table" then
          qv = qfn(e)
        elseif qpath == "" then
          qv = e
        end
        if (qpath == "" or type(e) == "table") and matcher(qv) then
          local ok
          if a_more then
            ok = left(e, out)
          else
            out[#out + 1] = a
            out[#out + 1] = i
            ok = true
          end
          if not all then return ok end
          found = found or ok
        end
      end
      return found
    end
  elseif arp.arrch and arp.part == "#" and arp.alogok and
    not I.split_possible_pipe(arp.alogkey) then
    local left
    left, err = compile_locate_get(arp.alogkey, base + arp.alogkey_off, memo)
    if not left then return nil, err end
    astep = function(a, out)
      local found = false
      for i = 1, #a do
        if left(a[i], out) then found = true end
      end
      return found
    end
  elseif arp.arrch then
    astep = none
  else
    local idx = I.is_uint(arp.part) and tonumber(arp.part) + 1
    local a_cont
    if a_more then
      a_cont, err = compile_locate_path(arp.rest, base + arp.rest_off, memo)
      if not a_cont then return nil, err end
    end
    astep = function(a, out)
      if not idx or idx > #a then return false end
      if a_more then
        local cv = a[idx]
        return type(cv) == "table" and a_cont(cv, out)
      end
      if a_piped then return false end
      out[#out + 1] = a
      out[#out + 1] = idx
      return true
    end
  end

  local fn = function(v, out)
    if type(v) ~= "table" then return false end
    if kind(v) == OBJECT then return ostep(v, out) end
    return astep(v, out)
  end
  memo.l[path] = fn
  return fn
end

--- Compiles an sjson path into a setter. setter(doc, value) sets value (nil means JSON null)
--- and returns the doc, which is a new table when doc was nil or not a table; or nil, err when
--- an existing array meets a non-numeric key. Compile errors name a 1-based column.
---@param path string
---@return fun(doc: any, value: any): any, string?
---@return string? err
function _M.compile(path)
  if type(path) ~= "string" then error("sjson.compile: path must be a string", 2) end
  if path == "" then return nil, "path cannot be empty" end
  local comps = parse_simple(path)
  if comps then
    if #comps == 1 then
      local c = comps[1]
      if not c.numeric and not c.append then
        -- one object key: the common case, kept short
        local key = c.part
        return function(doc, value)
          if value == nil then value = null end
          if type(doc) == "table" then
            if kind(doc) == OBJECT then
              doc[key] = value
              return doc
            end
            return nil, "cannot set array element for non-numeric key '" .. key .. "'"
          end
          return { [key] = value }
        end
      end
    end
    return function(doc, value)
      if value == nil then value = null end
      return set_in(doc, comps, 1, value)
    end
  end
  local memo = { l = {}, gjson = { g = {}, p = {} } }
  local locate, err = compile_locate_get(path, 0, memo)
  if not locate then return nil, err end
  return function(doc, value)
    if value == nil then value = null end
    local out = {}
    if not locate(doc, out) then return doc end
    for i = 1, #out, 2 do
      out[i][out[i + 1]] = i == 1 and value or deep_copy(value)
    end
    return doc
  end
end

local cache, cache_n = {}, 0

--- sjson.Set on a Lua value: returns the doc (possibly new), or nil, err.
---@param doc any
---@param path string
---@param value any
---@return any
---@return string? err
function _M.set(doc, path, value)
  local fn = cache[path]
  if not fn then
    local err
    fn, err = _M.compile(path)
    if not fn then return nil, err end
    if cache_n >= 4096 then cache, cache_n = {}, 0 end
    cache[path] = fn
    cache_n = cache_n + 1
  end
  return fn(doc, value)
end

return _M
