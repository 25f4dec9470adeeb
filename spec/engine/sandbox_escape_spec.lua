-- The sandbox escape suite: user Lua (script filters, script transforms, Lua triggers) trying
-- to get out of Herald's sandbox: forbidden globals, _G/_ENV and environment tricks,
-- metatables (the string metatable included), bytecode and load modes, writes to the shared
-- library tables seen by a later script of the same sensor, error objects, edge cases of the
-- base and string functions, and the actions a Lua trigger can ask for. Each attempt runs
-- through `herald test` (dry run) and against one live `herald run` (one sensor per attempt,
-- so each has its own sandbox state) that must keep answering its webhook.
-- Denial of service (CPU, patterns, memory, C stack) is in sandbox_dos_spec.lua.
-- The runner: spec/fixtures/sandbox/harness.lua.
local S = require "fixtures.sandbox.harness"

local C = S.CONTAINED
local NA = " is not available in Herald's Lua sandbox"
local function na(name) return name .. NA end

local A = {}
local function add(cat, id, kind, what, script, expect, extra)
  local a = { cat = cat, id = id, kind = kind, what = what, script = script, expect = expect }
  for k, v in pairs(extra or {}) do a[k] = v end
  A[#A + 1] = a
end

-- Forbidden globals and library functions ---------------------------------------------------
add("globals", "os-execute", "filter", "os.execute cannot run a command",
  [[os.execute("touch @FILE@") return true]], na("os.execute"), { file = true })
add("globals", "io-open", "filter", "io.open cannot write a file",
  [[local f = io.open("@FILE@", "w") f:write("x") f:close() return true]], na("io"), { file = true })
add("globals", "io-popen", "transform", "io.popen cannot run a command",
  [[io.popen("touch @FILE@"):close() return {v = "contained"}]], na("io"), { file = true })
add("globals", "io-lines", "filter", "io.lines cannot read a file",
  [[for l in io.lines("/etc/passwd") do error("read " .. l) end return true]], na("io"))
add("globals", "os-remove", "filter", "os.remove is out of reach",
  [[return os.remove("@FILE@")]], na("os.remove"))
add("globals", "os-rename", "filter", "os.rename is out of reach",
  [[return os.rename("/etc/hostname", "@FILE@")]], na("os.rename"), { file = true })
add("globals", "os-exit", "filter", "os.exit cannot stop the engine",
  [[os.exit(3) return true]], na("os.exit"))
add("globals", "os-getenv", "filter", "os.getenv cannot read the environment",
  [[return os.getenv("HOME") ~= nil]], na("os.getenv"))
add("globals", "os-tmpname", "filter", "os.tmpname cannot create a file",
  [[return os.tmpname() ~= nil]], na("os.tmpname"))
add("globals", "os-setlocale", "filter", "os.setlocale cannot change the process's locale",
  [[os.setlocale("de_DE.UTF-8") return true]], { na("os.setlocale"), "attempt to call field 'setlocale' (a nil value)" })
add("globals", "require-ffi", "filter", "require cannot load the FFI",
  [[local ffi = require("ffi") ffi.cdef("int system(const char *);") ffi.C.system("touch @FILE@") return true]],
  na("require"), { file = true })
add("globals", "ffi-global", "filter", "no ffi global",
  [[ffi.C.system("touch @FILE@") return true]], na("ffi"), { file = true })
add("globals", "package-loadlib", "filter", "package.loadlib cannot open liblua's io (CVE-2022-0543)",
  [[local f = package.loadlib("/usr/lib/x86_64-linux-gnu/liblua5.1.so.0", "luaopen_io") return f ~= nil]], na("package"))
add("globals", "package-loaded", "filter", "package.loaded cannot hand out the real libraries",
  [[return package.loaded.io ~= nil]], na("package"))
add("globals", "module", "filter", "module cannot create globals in the real table",
  [[module("pwned") return true]], na("module"))
add("globals", "debug-getregistry", "filter", "debug cannot reach the registry",
  [[return debug.getregistry() ~= nil]], na("debug"))
add("globals", "debug-sethook", "filter", "debug.sethook cannot remove the CPU hook",
  [[debug.sethook() while true do end]], na("debug"))
add("globals", "jit-on", "filter", "jit.on cannot turn the JIT (and hook-free loops) back on",
  [[jit.on() return true]], na("jit"))
add("globals", "newproxy", "filter", "newproxy (and __gc) is out of reach",
  [[local p = newproxy(true) return p ~= nil]], na("newproxy"))
add("globals", "collectgarbage", "filter", "collectgarbage cannot drive the GC (RediShell class)",
  [[collectgarbage("collect") return true]], na("collectgarbage"))
add("globals", "gcinfo", "filter", "gcinfo is out of reach",
  [[return gcinfo() > 0]], na("gcinfo"))
add("globals", "coroutine-wrap", "filter", "coroutines are out of reach (a fresh thread could dodge the hook)",
  [[coroutine.wrap(function() while true do end end)() return true]], na("coroutine"))
add("globals", "xpcall", "filter", "xpcall's handler cannot run past an error",
  [[return xpcall(function() error("x") end, function() while true do end end)]],
  { na("xpcall"), "attempt to call global 'xpcall' (a nil value)" })
add("globals", "computed-name", "filter", "a name built at run time is refused the same way",
  [[local lib = os return lib["exe" .. "cute"]("touch @FILE@") == 0]], na("os.execute"), { file = true })

-- _G, _ENV, function environments, upvalues --------------------------------------------------
add("env", "g-table", "filter", "_G does not lead to the real globals",
  [[return _G.os.execute("touch @FILE@")]], { na("_G"), "attempt to index global '_G' (a nil value)" }, { file = true })
add("env", "env-table", "filter", "_ENV (5.2 style) is nothing special",
  [[return _ENV.io ~= nil]], { na("_ENV"), "attempt to index global '_ENV' (a nil value)" })
add("env", "getfenv", "filter", "getfenv cannot fetch an environment",
  [[local g = getfenv(0) return g.io ~= nil]], na("getfenv"))
add("env", "setfenv", "filter", "setfenv cannot swap an environment",
  [[setfenv(1, {}) return true]], na("setfenv"))
add("env", "rawget-proxy", "filter", "rawget cannot read through a proxy",
  [[return rawget(string, "dump") ~= nil]], na("rawget"))
add("env", "rawset-proxy", "filter", "rawset cannot write into a proxy",
  [[rawset(string, "rep", function() return "pwned" end) return true]], na("rawset"))
add("env", "rawequal", "filter", "rawequal is out of reach",
  [[return rawequal(string, string)]], na("rawequal"))
add("env", "gsub-table-lookup", "filter", "gsub's table replacement cannot look up a forbidden member",
  [[return ("dump"):gsub("%w+", string) ~= nil]], na("string.dump"))
add("env", "pairs-proxy", "filter", "iterating a library proxy lists nothing of the real table",
  [[
for k, v in pairs(string) do error("ESCAPED: string proxy lists " .. tostring(k)) end
for k, v in pairs(os) do error("ESCAPED: os proxy lists " .. tostring(k)) end
return next(table) == nil]], C)
add("env", "globals-isolated", "filter", "globals one script sets are not another's",
  [[if leak ~= nil or string.upper("a") ~= "A" or type(1) ~= "number" then error("ESCAPED: saw the writer's globals") end return true]], C,
  { writer = [[leak = "x" string = { upper = function() return "pwned" end } type = error return true]] })

-- Metatables: the string metatable, setmetatable, ("").x ------------------------------------
add("meta", "getmetatable-string", "filter", "getmetatable(\"\") is out of reach (CVE-2025-46818)",
  [[getmetatable("").__index = { upper = function() return "pwned" end } return true]], na("getmetatable"))
add("meta", "setmetatable", "filter", "setmetatable (offered, for Argo's __is_array) cannot unlock a library",
  [[for _, lib in ipairs{ string, table, math, os, bit } do
      local ok, err = pcall(setmetatable, lib, {})
      if ok or not tostring(err):find("protected metatable", 1, true) then error("ESCAPED") end
    end
    local ok = pcall(setmetatable, "", {})
    if ok then error("ESCAPED") end
    return true]], C)
add("meta", "setmetatable-index-loop", "filter", "an __index that loops is bounded",
  [[setmetatable(event, { __index = function() while true do end end }) return event.missing]],
  "exceeded its CPU budget")
add("meta", "string-index-field", "filter", "(\"\").__index and (\"\").__metatable leak nothing",
  [[if ("").__index ~= nil or ("").__metatable ~= nil or ("").getmetatable ~= nil then error("ESCAPED") end return true]], C)
add("meta", "string-dump-method", "filter", "(\"\").dump is gone from the real string table",
  [[return ("").dump(function() end) ~= nil]], { "attempt to call field 'dump' (a nil value)", na("string.dump") })
add("meta", "write-string-value", "filter", "a string value cannot be written to",
  [[local s = "" s.upper = nil return true]], "attempt to index local 's' (a string value)")
add("meta", "write-through-method", "filter", "(\"\").rep cannot be written through",
  [[("").rep.x = 1 return true]], "attempt to index field 'rep' (a function value)")
add("meta", "string-rep-nil", "filter", "string.rep = nil is refused",
  [[string.rep = nil return true]], "cannot modify string.rep")
add("meta", "methods-intact", "filter", "a write attempt on string leaves the methods of every script intact",
  [[if ("a"):upper() ~= "A" or string.upper("b") ~= "B" or ("x"):rep(2) ~= "xx" then error("ESCAPED") end return true]], C,
  { writer = [[pcall(function() string.upper = function() return "pwned" end end) pcall(function() math.floor = nil end) return true]] })
add("meta", "error-object-metatable", "filter", "an error object's metamethods are never called by the engine",
  [[error(setmetatable({}, { __tostring = function() while true do end end,
    __index = function() while true do end end, __concat = function() while true do end end }))]],
  "script raised a table value")

-- Shared library tables written through the table library ------------------------------------
local NOT_SEEN = [[
for _, lib in ipairs{ string, table, math, os, bit } do
  if #lib ~= 0 or next(lib) ~= nil or lib[1] ~= nil then error("ESCAPED: a library table holds an entry") end
end
return true]]
add("libwrite", "insert-string", "filter", "table.insert(string, x) is not seen by a later script (issue item 5)",
  NOT_SEEN, C, { writer = [[pcall(table.insert, string, "x") pcall(table.insert, string, 1, "y") return true]] })
add("libwrite", "insert-table", "filter", "table.insert(table, f) is not seen by a later script",
  NOT_SEEN, C, { writer = [[pcall(table.insert, table, function() return "pwned" end) return true]] })
add("libwrite", "insert-math-os-bit", "filter", "table.insert into math, os and bit is not seen by a later script",
  NOT_SEEN, C, { writer = [[pcall(table.insert, math, 1) pcall(table.insert, os, 1) pcall(table.insert, bit, 1) return true]] })
add("libwrite", "move-into-string", "filter", "table.move into string is not seen by a later script",
  NOT_SEEN, C, { writer = [[pcall(table.move, {"a", "b"}, 1, 2, 1, string) return true]] })
add("libwrite", "insert-refused", "filter", "table.insert(string, x) itself fails",
  [[table.insert(string, "x") return true]], { "cannot modify", "table expected" })
add("libwrite", "sort-remove-proxy", "filter", "table.sort and table.remove on a proxy change nothing",
  [[pcall(table.sort, string) pcall(table.remove, string) pcall(table.remove, table, 1)
if next(string) ~= nil or next(table) ~= nil or type(table.remove) ~= "function" then error("ESCAPED") end return true]], C)

-- Bytecode and load modes ---------------------------------------------------------------------
add("bytecode", "loadstring-dump", "filter", "loadstring(string.dump(f)) (CVE-2015-4335)",
  [[return loadstring(string.dump(function() return true end))()]], na("loadstring"))
add("bytecode", "load-binary-mode", "filter", "load with mode \"b\" and a reader function",
  [[local s = "\27LJ\2" return load(function() local x = s s = nil return x end, "=x", "b") ~= nil]], na("load"))
add("bytecode", "loadfile", "filter", "loadfile cannot read a file as code",
  [[return loadfile("/etc/passwd") ~= nil]], na("loadfile"))
add("bytecode", "dofile", "filter", "dofile cannot run a file",
  [[dofile("/etc/passwd") return true]], na("dofile"))
add("bytecode", "string-dump", "filter", "string.dump is refused",
  [[return #string.dump(function() end) > 0]], na("string.dump"))
add("bytecode", "bytecode-script", "filter", "a precompiled chunk as the script is refused at load",
  nil, "bytecode is not accepted", { compile = true, yaml_scalar = [["\eLJ\x02\x00\x00"]] })
add("bytecode", "bytecode-after-newline", "filter", "bytecode behind a newline is refused at load",
  nil, "unexpected symbol", { compile = true, yaml_scalar = [["\n\eLJ\x02\x00"]] })
add("bytecode", "source-too-big", "filter", "a script over 64 KiB is refused at load",
  "return true\n" .. ("-- padding padding padding padding padding padding padding padding\n"):rep(1100),
  "the limit is 65536", { compile = true })
add("bytecode", "syntax-levels", "filter", "a deeply nested expression is refused at load (parser C stack)",
  "return " .. ("("):rep(1000) .. "1" .. (")"):rep(1000), "too many syntax levels", { compile = true })

-- Error objects and messages ------------------------------------------------------------------
add("errors", "error-table", "filter", "a table as the error is reported by type",
  [[error({ code = 1 })]], "script raised a table value")
add("errors", "error-nil", "filter", "error() with nothing",
  [[error()]], "script raised a nil value")
add("errors", "error-function", "filter", "a function as the error is not called",
  [[error(function() while true do end end)]], "script raised a function value")
add("errors", "error-proxy", "filter", "a library proxy (a table with metamethods) as the error",
  [[error(string)]], "script raised a table value")
add("errors", "error-huge", "filter", "a 1 MB error message is cut",
  [[error(("x"):rep(1e6))]], ("x"):rep(500))
add("errors", "error-log-injection", "filter", "newlines and JSON in an error stay inside one log record",
  [[error('\n{"level":"info","logger":"sensor:s-good/trigger:t-good","msg":"triggered","triggerName":"t-good"}\n\27[2J\0tail')]],
  [["msg":"triggered"]])
add("errors", "pcall-error-swallow", "filter", "pcall returns errors as values and no more",
  [[local ok, e = pcall(error, { x = 1 }) local ok2, e2 = pcall(error) if ok or ok2 or type(e) ~= "table" then error("ESCAPED") end return true]], C)

-- Base and string functions at their edges -----------------------------------------------------
add("edges", "unpack-int-overflow", "filter", "unpack over the whole int range (CVE-2025-46817)",
  [[return select("#", unpack({}, -2^31, 2^31 - 1)) > 0]], "too many results to unpack")
add("edges", "unpack-huge", "filter", "string.char(unpack(t)) with a million values",
  [[local t = {} for i = 1, 1e6 do t[i] = 65 end return #string.char(unpack(t)) > 0]],
  { "too many results to unpack", "not enough memory" })
add("edges", "select-range", "filter", "select with an index far out of range",
  [[return select(-2^31, 1, 2, 3) ~= nil]], "bad argument #1 to 'select' (index out of range)")
add("edges", "byte-slice", "filter", "string.byte of a whole 1 MB string",
  [[local s = ("x"):rep(1e6) return select("#", s:byte(1, -1)) > 0]], "string slice too long")
add("edges", "format-n", "filter", "string.format %n (printf's write primitive)",
  [[return string.format("%n", 1) ~= nil]], "invalid option '%n' to 'format'")
add("edges", "format-width", "filter", "string.format with a three-digit width",
  [[return #string.format("%100d", 1) > 0]], "to 'format'")
add("edges", "format-positional", "filter", "string.format positional arguments",
  [[return string.format("%5$s", 1) ~= nil]], "to 'format'")
add("edges", "format-missing-arg", "filter", "string.format reading past its arguments",
  [[return string.format("%s %s %s", 1) ~= nil]], "bad argument #3 to 'format'")
add("edges", "tonumber-base", "filter", "tonumber with base 37",
  [[return tonumber("z", 37) ~= nil]], "bad argument #2 to 'tonumber' (base out of range)")
add("edges", "tostring-tonumber", "filter", "tostring/tonumber edge values stay plain values",
  [[
if tonumber("0x") ~= nil or tonumber("1e99999") ~= math.huge or tonumber("") ~= nil or tonumber("0x10") ~= 16 then error("ESCAPED tonumber") end
if tostring(nil) ~= "nil" or tostring(1/0) ~= "inf" or type(tostring(print)) ~= "string" then error("ESCAPED tostring") end
if tonumber(("9"):rep(400)) ~= math.huge then error("ESCAPED long number") end
return true]], C)
add("edges", "bit-tohex", "filter", "bit.tohex with an int-min width (CVE-2024-31449 class)",
  [[local a, b = bit.tohex(1, -2^31), bit.tohex(1, 2^31) if #a > 16 or #b > 16 then error("ESCAPED") end return true]], C)
add("edges", "rep-odd-counts", "filter", "string.rep with NaN, -1 and 2^31 counts",
  [[for _, n in ipairs{ 0/0, -1, -2^31, 2^31, 2^53 } do local ok, r = pcall(string.rep, "x", n) if ok and #r > 0 then error("ESCAPED " .. n) end end return true]], C)
add("edges", "sub-odd-bounds", "filter", "string.sub and find with out-of-range indices",
  [[local s = "abc"
for _, r in ipairs{ s:sub(-2^63, 2^63), s:sub(2^53), s:sub(-2^31, 2^31), s:sub(0/0) } do if #r > 3 then error("ESCAPED") end end
local i, j = s:find("c", 2^53), s:find("a", -2^53)
if (i ~= nil and i ~= 3) or (j ~= nil and j ~= 1) then error("ESCAPED find") end
return true]], C)
add("edges", "os-date-time", "filter", "os.date and os.time with absurd times",
  [[local ok1 = pcall(os.date, "*t", 2^60) local ok2 = pcall(os.time, { year = 2^53, month = 1, day = 1 }) local ok3 = pcall(os.date, "%Ez%", -2^62) return true]], C)
add("edges", "pattern-errors", "filter", "malformed patterns are errors, not crashes",
  [[
for _, p in ipairs{ "%", "(", "[a", "%b", "%f", "(()", "%1", ("(a)"):rep(33) } do
  local ok = pcall(string.find, ("a"):rep(100), p)
  if ok then error("ESCAPED: pattern " .. p .. " accepted") end
end
return true]], C)
add("edges", "gsub-bad-capture", "filter", "a replacement naming a capture that does not exist",
  [[return ("x"):gsub(".", "%9") ~= nil]], "invalid capture index")
add("edges", "sort-invalid-order", "filter", "table.sort with an inconsistent comparator",
  [[local t = {} for i = 1, 300 do t[i] = (i * 7919) % 101 end table.sort(t, function() return true end) return true]],
  { "invalid order function for sorting", C })
add("edges", "sort-shrinking-table", "filter", "table.sort whose comparator empties the table",
  [[local t = {} for i = 1, 200 do t[i] = i end table.sort(t, function(a, b) for i = 1, #t do t[i] = nil end return a < b end) return true]],
  { "attempt to compare", C })
add("edges", "event-null", "filter", "JSON null reaches the script as an inert value",
  [[local z = event.body.z if type(event.body.n) ~= "number" or type(z) ~= "userdata" then error("unexpected event " .. type(z)) end
if pcall(function() return z.x end) or pcall(function() z.x = 1 end) or pcall(string.rep, z, 2) then error("ESCAPED") end
return true]], C)

-- Transforms and Lua triggers: what leaves the sandbox ----------------------------------------
add("actions", "transform-proxy", "transform", "a transform returning the library proxies encodes nothing of them",
  [[local r = { v = "contained", s = string, m = math } return r]], { C, "Cannot serialise", "type not supported" })
add("actions", "transform-function", "transform", "a function in a transform's result",
  [[return { v = "contained", f = print }]], "type not supported")
add("actions", "transform-nan", "transform", "NaN in a transform's result",
  [[return { v = "contained", n = 0/0 }]], "must not be NaN or Inf")
add("actions", "transform-sparse", "transform", "an excessively sparse array",
  [[local t = { v = "contained", a = {} } t.a[1e9] = 1 return t]], "excessively sparse array")
add("actions", "transform-nesting", "transform", "a 10,000-deep table",
  [[local t = {} for i = 1, 1e4 do t = { t } end return { v = "contained", t = t }]], "excessive nesting")
add("actions", "transform-cycle", "transform", "a table that contains itself",
  [[local t = { v = "contained" } t.self = t return t]], { "excessive nesting", "cycle", "recursive" })
add("actions", "trigger-file-url", "trigger", "a Lua trigger's http action to file:// writes nothing",
  [[return { type = "http", url = "file://@FILE@", method = "PUT", body = "pwned" }]],
  nil, { file = true, expect_test = "http action to file://", expect_live = 'Protocol "file" not supported' })
add("actions", "trigger-gopher-url", "trigger", "a Lua trigger's http action to gopher:// (SSRF to Redis)",
  [[return { type = "http", url = "gopher://127.0.0.1:6379/_FLUSHALL", method = "POST", body = "x" }]],
  nil, { expect_test = "http action to gopher://", expect_live = 'Protocol "gopher" not supported' })
add("actions", "trigger-events-poison", "trigger", "a Lua trigger cannot poison `events` for later calls",
  [[if seen and events.d.data.body.poison then error("ESCAPED") end seen = true events.d.data.body.poison = 1 return { type = "log", message = "contained" }]], C)
add("actions", "trigger-forbidden", "trigger", "a Lua trigger has the same surface as a filter",
  [[io.open("@FILE@", "w") return { type = "log", message = "contained" }]], na("io"), { file = true })

describe("sandbox escapes", function()
  S.register(A, { describe = describe, it = it, teardown = teardown })
end)

return A
