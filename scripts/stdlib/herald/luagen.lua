-- herald/luagen.lua: writing Lua source: literals for the code the compilers generate
-- (sensor.lua, govaluate.lua, exprlang.lua).
local fmt, concat, sort = string.format, table.concat, table.sort
local floor, huge = math.floor, math.huge

local _M = {}

--- A Lua string literal (newlines as \n, so generated code stays one statement per line).
---@param s string
---@return string
function _M.string(s)
  return (fmt("%q", s):gsub("\\\n", "\\n"))
end

--- A literal for a scalar: nil, string, boolean or number (NaN and infinities included).
function _M.scalar(v)
  if v == nil then return "nil" end
  local t = type(v)
  if t == "string" then return _M.string(v) end
  if t == "boolean" then return tostring(v) end
  if v ~= v then return "(0/0)" end
  if v == huge then return "math.huge" end
  if v == -huge then return "(-math.huge)" end
  if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return fmt("%d", v) end
  return fmt("%.17g", v)
end

--- A literal for a plain value, tables included (sorted keys, so output is deterministic;
--- arrays on one line, maps one key per line indented under `indent`).
function _M.value(v, indent)
  if type(v) ~= "table" then return _M.scalar(v) end
  indent = indent or ""
  if next(v) == nil then return "{}" end
  local parts = {}
  if #v > 0 then
    for _, x in ipairs(v) do parts[#parts + 1] = _M.value(x, indent .. "  ") end
    return "{ " .. concat(parts, ", ") .. " }"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local key = (type(k) == "string" and k:match("^[%a_][%w_]*$")) and k or ("[" .. _M.scalar(k) .. "]")
    parts[#parts + 1] = indent .. "  " .. key .. " = " .. _M.value(v[k], indent .. "  ")
  end
  return "{\n" .. concat(parts, ",\n") .. ",\n" .. indent .. "}"
end

--- Assembles and loads a generated evaluator: the prelude lines, the generator's header lines,
--- then `return function(<arg>) <body> end`. Returns the source and what the chunk returns, or
--- nil, err ("expression too complex" when Lua's limits are hit).
---@param name string chunk name, and the first line's comment tag
function _M.evaluator(name, expr, prelude, header, arg, body)
  local src = { "-- " .. name .. ": " .. expr:gsub("[\r\n]", " ") }
  for _, l in ipairs(prelude) do src[#src + 1] = l end
  for _, h in ipairs(header) do src[#src + 1] = h end
  src[#src + 1] = "return function(" .. arg .. ")"
  for _, l in ipairs(body) do src[#src + 1] = l end
  src[#src + 1] = "end"
  local source = concat(src, "\n") .. "\n"
  local chunk, lerr = load(source, "=" .. name, "t")
  if not chunk then
    if tostring(lerr):find("too many") then return nil, "expression too complex" end
    return nil, "internal error: " .. tostring(lerr)
  end
  local ok, fn = pcall(chunk)
  if not ok then return nil, tostring(fn) end
  return source, fn
end

return _M
