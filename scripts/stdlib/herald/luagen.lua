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

-- Lua's reserved words: a table key that is one must be written ["end"], not end.
local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
  repeat return then true until while]]):gmatch("%a+") do KEYWORDS[w] = true end

--- Whether s can be written as a bare name in Lua source (t.s, { s = ... }).
---@param s any
function _M.is_name(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil and not KEYWORDS[s]
end

local COMMENT_ESCAPES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

--- The one way generated code carries text in a comment: the line made safe to end a `--`
--- comment. Spec text (names, paths, expressions, templates) may hold anything; here every
--- control character (the newline and carriage return that would end the comment first)
--- becomes a visible escape, and `[[`, `]]`, `[=`, `]=` get a space so no long bracket can
--- open or close. Comments are for readers; nothing in them ever runs.
---@param text string the comment line, `--` included
---@return string
function _M.comment(text)
  text = tostring(text):gsub("%c", function(c)
    return COMMENT_ESCAPES[c] or ("\\%03d"):format(c:byte())
  end)
  return (text:gsub("([%[%]])([%[%]=])", "%1 %2"):gsub("([%[%]])([%[%]=])", "%1 %2"))
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
    local key = _M.is_name(k) and k or ("[" .. _M.scalar(k) .. "]")
    parts[#parts + 1] = indent .. "  " .. key .. " = " .. _M.value(v[k], indent .. "  ")
  end
  return "{\n" .. concat(parts, ",\n") .. ",\n" .. indent .. "}"
end

--- Assembles and loads a generated evaluator: the prelude lines, the generator's header lines,
--- then `return function(<arg>) <body> end`. Returns the source and what the chunk returns, or
--- nil, err ("expression too complex" when Lua's limits are hit).
---@param name string chunk name, and the first line's comment tag
function _M.evaluator(name, expr, prelude, header, arg, body)
  local src = { _M.comment("-- " .. name .. ": " .. expr) }
  for _, l in ipairs(prelude) do src[#src + 1] = l end
  for _, h in ipairs(header) do src[#src + 1] = h end
  src[#src + 1] = "return function(" .. arg .. ")"
  for _, l in ipairs(body) do src[#src + 1] = l end
  src[#src + 1] = "end"
  local source = concat(src, "\n") .. "\n"
  local chunk, lerr = load(source, "=" .. name, "t")
  if not chunk then
    -- Lua's limits (locals, upvalues, nesting, registers) hit by a huge expression
    local e = tostring(lerr)
    if e:find("too many") or e:find("more than %d+") or e:find("too complex") then
      return nil, "expression too complex"
    end
    return nil, "internal error: " .. tostring(lerr)
  end
  local ok, fn = pcall(chunk)
  if not ok then return nil, tostring(fn) end
  return source, fn
end

return _M
