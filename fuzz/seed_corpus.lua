-- fuzz/seed_corpus.lua: writes the seed corpora the fuzz targets start from, taken from the
-- specs and examples, into OUTDIR/<target>/ (one file per seed, named by content hash).
--
--   luajit fuzz/seed_corpus.lua SOURCE_DIR OUTDIR
--
-- Lua-side targets get every string literal of their module's spec (spec/stdlib/<m>_spec.lua):
-- paths, expressions and templates, plus whatever else the spec quotes (noise the fuzzer
-- soon discards). yaml_load gets the example and fixture specs; cron gets the quoted strings
-- of spec/c/cron_test.c; http_request and cloudevent have hand-written seeds in
-- fuzz/corpus/<target>/, which are copied too.
local src, out = arg[1], arg[2]
assert(src and out, "usage: luajit seed_corpus.lua SOURCE_DIR OUTDIR")

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function lines(cmd)
  local p = assert(io.popen(cmd))
  local t = {}
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  return t
end

-- FNV-1a, enough to name seeds uniquely
local bit = require "bit"
local function hash(s)
  local h = 2166136261
  for i = 1, #s do h = bit.tobit(bit.bxor(h, s:byte(i)) * 16777619) end
  return bit.tohex(h)
end

local count = {}
local function seed(target, s, prefix)
  if #s == 0 or #s > 4096 then return end
  local dir = out .. "/" .. target
  if not count[target] then os.execute("mkdir -p '" .. dir .. "'") end
  local f = assert(io.open(dir .. "/" .. (prefix or "spec") .. "-" .. hash(s), "wb"))
  f:write(s)
  f:close()
  count[target] = (count[target] or 0) + 1 -- (after the first seed: the folder exists)
end

-- Lua string literals: "..." and '...' with escapes decoded, and [[...]] / [=[...]=].
local function lua_strings(text)
  local res = {}
  local i, n = 1, #text
  while i <= n do
    local c = text:sub(i, i)
    if c == "-" and text:sub(i, i + 1) == "--" then
      local lvl = text:match("^%-%-%[(=*)%[", i)
      if lvl then
        local _, e = text:find("]" .. lvl .. "]", i, true)
        i = (e or n) + 1
      else
        i = (text:find("\n", i, true) or n) + 1
      end
    elseif c == "[" and text:match("^%[=*%[", i) then
      local lvl = text:match("^%[(=*)%[", i)
      local s = i + #lvl + 2
      local e1, e2 = text:find("]" .. lvl .. "]", s, true)
      if not e1 then break end
      res[#res + 1] = text:sub(s, e1 - 1):gsub("^\n", "")
      i = e2 + 1
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n and text:sub(j, j) ~= c do
        if text:sub(j, j) == "\\" then j = j + 1 end
        j = j + 1
      end
      local lit = text:sub(i, j)
      local ok, v = pcall(loadstring("return " .. lit))
      if ok and type(v) == "string" then res[#res + 1] = v end
      i = j + 1
    else
      i = i + 1
    end
  end
  return res
end

for target, spec in pairs { gjson_path = "gjson", sjson_path = "sjson", govaluate = "govaluate",
                            exprlang = "exprlang", gotemplate = "gotemplate" } do
  local text = read(src .. "/spec/stdlib/" .. spec .. "_spec.lua")
  if text then
    for _, s in ipairs(lua_strings(text)) do seed(target, s) end
  end
end
-- sjson's dest paths are gjson-like: both path targets share their seeds
for _, s in ipairs(lua_strings(read(src .. "/spec/stdlib/sjson_spec.lua") or "")) do seed("gjson_path", s) end

for _, f in ipairs(lines("find '" .. src .. "/examples' '" .. src .. "/spec/fixtures/specs' -name '*.y*ml' -size -16k 2>/dev/null | sort")) do
  seed("yaml_load", read(f), "example")
end

local ctext = read(src .. "/spec/c/cron_test.c") or ""
for lit in ctext:gmatch('"([^"\n]*)"') do
  local s = lit:gsub("\\x(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  -- first byte: the harness's selector (descriptors on, UTC)
  if not s:find("%%") then seed("cron", "\3" .. s) end
end

for _, t in ipairs { "http_request", "cloudevent", "cron", "yaml_load", "gjson_path", "govaluate",
                     "exprlang", "gotemplate", "sjson_path" } do
  for _, f in ipairs(lines("ls '" .. src .. "/fuzz/corpus/" .. t .. "' 2>/dev/null")) do
    local s = read(src .. "/fuzz/corpus/" .. t .. "/" .. f)
    if s then seed(t, s, "hand") end
  end
end

local names = {}
for t in pairs(count) do names[#names + 1] = t end
table.sort(names)
for _, t in ipairs(names) do io.write(t, ": ", count[t], " seeds\n") end
