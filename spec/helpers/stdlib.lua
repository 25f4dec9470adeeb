-- spec/helpers/stdlib.lua: load the Lua stdlib (scripts/stdlib) in busted's own LuaJIT for unit
-- specs, without the engine. herald.core is replaced by a shim with the pieces the pure-Lua
-- modules use: regular expressions on the same engine (PCRE2, via lua-rex-pcre2) and a clock.
--
--   require "helpers.stdlib"
--   local gjson = require "herald.gjson"
local src = os.getenv("HERALD_SOURCE_DIR") or "."
package.path = src .. "/scripts/stdlib/?.lua;" .. src .. "/scripts/stdlib/?/init.lua;" .. package.path

if not package.loaded["herald.core"] then
  local rex = require "rex_pcre2"
  local UTF = rex.flags().UTF
  local Regex = {}
  Regex.__index = Regex
  function Regex:find(s)
    local ok, r = pcall(self.re.find, self.re, s)
    if not ok then return false, r end
    return r ~= nil
  end
  function Regex:match(s, init)
    local ok, st, en, caps = pcall(self.re.exec, self.re, s, init or 1)
    if not ok then return nil, st end
    if not st then return nil end
    local out = {}
    for i = 1, #caps, 2 do
      local a, b = caps[i], caps[i + 1]
      out[#out + 1] = (a and a ~= false) and s:sub(a, b) or false
    end
    return st, en, out
  end
  package.loaded["herald.core"] = {
    shim = true,
    regex_compile = function(pattern)
      local ok, re = pcall(rex.new, pattern, UTF)
      if not ok then return nil, tostring(re) end
      return setmetatable({ re = re }, Regex)
    end,
    now = function() return require("socket").gettime() end,
    log = function() end,
  }
end

return true
