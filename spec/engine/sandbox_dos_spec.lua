-- The sandbox denial-of-service suite: user Lua trying to hang, starve or crash the engine:
-- loops in every callback position, C functions a count hook cannot interrupt (pattern
-- blow-ups, one call over megabytes repeated in a loop), memory bombs, C-stack recursion
-- through callbacks. Every call must return with a clear error within its budget (CPU at most
-- 10 ms over the 200 ms budget, wall at most 2x), through `herald test` and against a live
-- `herald run` that keeps answering /health and processing a normal event right after each.
-- Escapes are in sandbox_escape_spec.lua; the runner is spec/fixtures/sandbox/harness.lua.
local S = require "fixtures.sandbox.harness"

local C = S.CONTAINED
local CPU = "exceeded its CPU budget"
local MEM = "memory"
local PAT = { CPU, "pattern too complex" }
local CPU_OR_MEM = { CPU, MEM }
local STACK = { "stack overflow", "C stack", "nested calls" }

local A = {}
local function add(cat, id, kind, what, script, expect, extra)
  local a = { cat = cat, id = id, kind = kind, what = what, script = script, expect = expect, dos = true }
  for k, v in pairs(extra or {}) do a[k] = v end
  A[#A + 1] = a
end

-- Loops in every position ---------------------------------------------------------------------
add("loops", "repeat-until", "filter", "repeat until false", [[repeat until false]], CPU)
add("loops", "goto", "filter", "a goto loop", [[::top:: goto top]], CPU)
add("loops", "numeric-for", "filter", "for i = 1, 1e18", [[local n = 0 for i = 1, 1e18 do n = n + i end return n > 0]], CPU)
add("loops", "tail-call", "filter", "endless tail calls", [[local function f(n) return f(n + 1) end return f(1)]], CPU)
add("loops", "gsub-callback", "filter", "a loop in gsub's replacement function",
  [[("x"):gsub(".", function() while true do end end) return true]], CPU)
add("loops", "sort-comparator", "filter", "a loop in table.sort's comparator",
  [[table.sort({ 3, 2, 1 }, function(a, b) while true do end end) return true]], CPU)
add("loops", "gmatch-iterator", "filter", "a gmatch loop over ten million matches",
  [[local n = 0 for _ in ("x"):rep(1e7):gmatch("x") do n = n + 1 end return n > 0]], CPU_OR_MEM)
add("loops", "pcall-nested", "filter", "loops under three pcalls, again and again",
  [[for i = 1, 1e9 do pcall(pcall, pcall, function() for j = 1, 1e9 do end end) end return true]], CPU)
add("loops", "error-loop", "filter", "raising and catching errors forever",
  [[while true do pcall(error, { i = 1 }) end]], CPU)
add("loops", "swallow-in-gsub", "filter", "catching the budget stop of a gsub callback, forever",
  [[while true do pcall(string.gsub, "x", ".", function() while true do end end) end]], CPU)
add("loops", "proxy-index", "filter", "the read-only proxy's __index, forever",
  [[while true do local _ = string.nothing end]], CPU)
add("loops", "pairs-iterator", "filter", "pairs and next, forever",
  [[local t = {} for i = 1, 100 do t[i] = i end while true do for k, v in pairs(t) do end local k = next(t) end]], CPU)
add("loops", "ipairs-growing", "filter", "ipairs over a table it keeps growing",
  [[local t = { 1 } for i, v in ipairs(t) do t[i + 1] = v end return true]], CPU_OR_MEM)
add("loops", "foreach-callback", "filter", "a loop in table.foreach's callback",
  [[table.foreach({ 1 }, function() while true do end end) return true]], CPU)
add("loops", "clock-spin", "filter", "spinning on os.clock for 10 s",
  [[local t = os.clock() while os.clock() - t < 10 do end return true]], CPU)
add("loops", "print-flood", "filter", "printing 1 KB lines forever (debug level: nothing logged)",
  [[while true do print(("x"):rep(1024)) end]], CPU)
add("loops", "transform-loop", "transform", "a transform that never returns",
  [[while true do end]], CPU)
add("loops", "trigger-loop", "trigger", "a Lua trigger that never returns",
  [[while true do end]], CPU)

-- One C call over megabytes, in a loop (between two hooks) ------------------------------------
add("cheavy", "find-class-overshoot", "filter", "s:find(\"[y]\") over 15 MB, in a loop (issue item 4)",
  [[local s = ("x"):rep(1.5e7) for i = 1, 1e9 do s:find("[y]") end return true]], CPU_OR_MEM)
add("cheavy", "find-class-7mb", "filter", "s:find(\"[y]\") over 7 MB (under the 8 MiB block limit), in a loop",
  [[local s = ("x"):rep(7e6) for i = 1, 1e9 do s:find("[y]") end return true]], CPU)
add("cheavy", "rep-loop", "filter", "string.rep of 10 MB, in a loop",
  [[for i = 1, 1e9 do local s = ("x"):rep(1e7) end return true]], CPU_OR_MEM)
add("cheavy", "upper-loop", "filter", "upper() of 15 MB, in a loop",
  [[local s = ("x"):rep(1.5e7) for i = 1, 1e9 do local u = s:upper() end return true]], CPU_OR_MEM)
add("cheavy", "concat-loop", "filter", "table.concat of 10 MB, in a loop",
  [[local t = {} for i = 1, 1e5 do t[i] = ("x"):rep(100) end for i = 1, 1e9 do local s = table.concat(t) end return true]], CPU_OR_MEM)
add("cheavy", "gsub-plain-loop", "filter", "gsub(\"[y]\", \"\") over 15 MB, in a loop",
  [[local s = ("x"):rep(1.5e7) for i = 1, 1e9 do s:gsub("[y]", "") end return true]], CPU_OR_MEM)
add("cheavy", "tonumber-loop", "filter", "tonumber of a 10 MB numeral, in a loop",
  [[local s = ("1"):rep(1e7) for i = 1, 1e9 do local n = tonumber(s) end return true]], CPU_OR_MEM)
add("cheavy", "os-date-loop", "filter", "os.date with a 600 KB format, in a loop",
  [[local f = ("%c"):rep(3e5) for i = 1, 1e9 do local d = os.date(f) end return true]], CPU_OR_MEM)
add("cheavy", "format-q-loop", "filter", "string.format(\"%q\") of 5 MB of NULs, in a loop",
  [[local s = ("\0"):rep(5e6) for i = 1, 1e9 do local q = ("%q"):format(s) end return true]], CPU_OR_MEM)
add("cheavy", "insert-far-position", "filter", "table.insert at position -1e9 (a C loop of a billion moves)",
  [[local t = { 1 } table.insert(t, -1e9, 1) return true]], { CPU, MEM, "position out of bounds", "out of range" })
add("cheavy", "sort-million", "filter", "table.sort of a million numbers, no comparator",
  [[local t = {} for i = 1, 1e6 do t[i] = (i * 7919) % 1000003 end table.sort(t) return true]], CPU_OR_MEM)
add("cheavy", "gsub-table-repl", "filter", "gsub with a table replacement over 10 million characters",
  [[local s = ("x"):rep(1e7) s:gsub(".", {}) return true]], CPU_OR_MEM)
add("cheavy", "gsub-doubling", "filter", "gsub doubling 10 million characters",
  [[local s = ("x"):rep(1e7) local r = s:gsub(".", "%0%0") return true]], CPU_OR_MEM)

-- Pattern blow-ups (backtracking in C) ----------------------------------------------------------
add("patterns", "find-star-b", "filter", "find(rep(\"a\",3000), rep(\"a*\",8)..\"b\") (issue item 3)",
  [[return string.find(string.rep("a", 3000), string.rep("a*", 8) .. "b") ~= nil]], PAT)
add("patterns", "find-lazy-b", "filter", "find(rep(\"a\",20000), \".-.-.-.-b\") (issue item 3)",
  [[return string.find(string.rep("a", 20000), ".-.-.-.-b") ~= nil]], PAT)
add("patterns", "match-star", "filter", "the match variant",
  [[return ("a"):rep(3000):match(("a*"):rep(8) .. "b") ~= nil]], PAT)
add("patterns", "gmatch-lazy", "filter", "the gmatch variant",
  [[for m in ("a"):rep(20000):gmatch(".-.-.-b") do end return true]], PAT)
add("patterns", "gsub-lazy", "filter", "the gsub variant",
  [[return ("a"):rep(20000):gsub("a-a-a-a-b", "") ~= nil]], PAT)
add("patterns", "balanced", "filter", "%b() from every start over 60,000 open parentheses",
  [[return ("("):rep(60000):find("%b()") ~= nil]], PAT)
add("patterns", "frontier", "filter", "%f with a lazy prefix over 30,000 characters",
  [[return ("a"):rep(30000):find(".-%f[b]") ~= nil]], PAT)
add("patterns", "three-captures", "filter", "(a*)(a*)(a*)b over 5,000 characters",
  [[return ("a"):rep(5000):find("(a*)(a*)(a*)b") ~= nil]], PAT)
add("patterns", "backreference", "filter", "(a*)%1b over 10,000 characters",
  [[return ("a"):rep(1e4):find("(a*)%1b") ~= nil]], PAT)
add("patterns", "huge-class", "filter", "a 6,000-byte character class over 100,000 characters",
  [[return ("x"):rep(1e5):find("[" .. ("a-w"):rep(2000) .. "]") ~= nil]], PAT)
add("patterns", "pcall-swallow", "filter", "a blow-up under pcall, again and again",
  [[local s = ("a"):rep(20000) while true do pcall(string.find, s, ".-.-.-.-b") end]], PAT)
add("patterns", "transform-pattern", "transform", "a blow-up in a transform",
  [[return { v = ("a"):rep(20000):match(".-.-.-.-b") or "x" }]], PAT)
add("patterns", "trigger-pattern", "trigger", "a blow-up in a Lua trigger",
  [[return { type = "log", message = ("a"):rep(3000):match(("a*"):rep(8) .. "b") or "x" }]], PAT)

-- Memory bombs -----------------------------------------------------------------------------------
add("memory", "rep-giga", "filter", "string.rep of 1 GB", [[return #("x"):rep(1e9) > 0]], MEM)
add("memory", "rep-separator", "filter", "string.rep with a separator, 300 MB",
  [[return #("x"):rep(1e8, "yy") > 0]], MEM)
add("memory", "rep-of-big", "filter", "string.rep of a 1 MB string a thousand times",
  [[return #("x"):rep(1e6):rep(1e3) > 0]], MEM)
add("memory", "doubling", "filter", "s = s .. s until it breaks",
  [[local s = "x" while true do s = s .. s end]], MEM)
add("memory", "append-loop", "filter", "s = s .. 8 bytes, quadratic copying",
  [[local s = "" for i = 1, 1e9 do s = s .. "xxxxxxxx" end return true]], CPU_OR_MEM)
add("memory", "array-growth", "filter", "an array growing without end",
  [[local t = {} for i = 1, 1e9 do t[i] = i end return true]], CPU_OR_MEM)
add("memory", "hash-growth", "filter", "a hash of distinct string keys growing without end",
  [[local t = {} for i = 1, 1e9 do t["k" .. i] = i end return true]], CPU_OR_MEM)
add("memory", "distinct-megabytes", "filter", "distinct 1 MB strings kept in a table",
  [[local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(1e6) .. i end return true]], CPU_OR_MEM)
add("memory", "format-widths", "filter", "string.format with 7,000 99-wide fields, kept",
  [[local f, args = ("%99d"):rep(7000), {} for i = 1, 7000 do args[i] = i end
local keep = {} for i = 1, 1e9 do keep[i] = f:format(unpack(args)) end return true]], CPU_OR_MEM)
add("memory", "format-q-nuls", "filter", "string.format(\"%q\") of 10 MB of NULs (4x)",
  [[return #string.format("%q", ("\0"):rep(1e7)) > 0]], MEM)
add("memory", "concat-huge", "filter", "table.concat of a million 100-byte strings",
  [[local t = {} for i = 1, 1e6 do t[i] = ("x"):rep(100) end return #table.concat(t) > 0]], CPU_OR_MEM)
add("memory", "concat-separator", "filter", "table.concat with a 1,000-byte separator",
  [[local t = {} for i = 1, 1e6 do t[i] = "" end return #table.concat(t, ("x"):rep(1000)) > 0]], CPU_OR_MEM)
add("memory", "gsub-expansion", "filter", "gsub replacing a million characters with 100 each",
  [[return #("x"):rep(1e6):gsub("x", ("y"):rep(100)) > 0]], CPU_OR_MEM)
add("memory", "error-flood", "filter", "1 MB error messages raised and caught forever",
  [[local m = ("x"):rep(1e6) while true do pcall(error, m .. "y") end]], CPU_OR_MEM)
add("memory", "transform-dag", "transform", "a transform returning a DAG that encodes to 128 MB",
  [[local x = { ("x"):rep(1000) } for i = 1, 17 do x = { x, x } end return { v = "contained", x = x }]], CPU_OR_MEM)
add("memory", "trigger-dag", "trigger", "a Lua trigger returning a DAG that encodes to 128 MB",
  [[local x = { ("x"):rep(1000) } for i = 1, 17 do x = { x, x } end return { type = "log", message = "contained", x = x }]], CPU_OR_MEM)
add("memory", "transform-wide", "transform", "a transform returning two million numbers",
  [[local t = {} for i = 1, 2e6 do t[i] = i end return { v = "contained", t = t }]], { C, CPU, MEM })

-- C-stack recursion through callbacks -----------------------------------------------------------
add("cstack", "gsub-recursion", "filter", "gsub calling itself through its replacement (issue item 2)",
  [[local function f(s) string.gsub("ab", ".", f) end f() return true]], STACK)
add("cstack", "sort-recursion", "filter", "table.sort calling itself through its comparator",
  [[local function f(a, b) table.sort({ 3, 2, 1 }, f) return a < b end table.sort({ 3, 2, 1 }, f) return true]], STACK)
add("cstack", "pcall-recursion", "filter", "pcall calling itself",
  [[local function f() pcall(f) end f() return true]], { C, "stack overflow", "C stack", "nested calls" })
add("cstack", "pcall-gsub-recursion", "filter", "pcall(string.gsub, ..., f) calling itself",
  [[local function f() pcall(string.gsub, "ab", ".", f) end f() return true]], { C, CPU, "stack overflow", "C stack", "nested calls" })
add("cstack", "sort-gsub-recursion", "filter", "sort's comparator running gsub whose callback sorts",
  [[local f f = function() table.sort({ 2, 1 }, function(a, b) ("x"):gsub(".", f) return a < b end) end f() return true]], STACK)
add("cstack", "gmatch-recursion", "filter", "recursion inside a gmatch loop",
  [[local function f() for c in ("ab"):gmatch(".") do f() end end f() return true]], STACK)
add("cstack", "plain-recursion", "filter", "plain unbounded recursion",
  [[local function f() return 1 + f() end return f() > 0]], STACK)
add("cstack", "foreach-recursion", "filter", "table.foreach calling itself",
  [[local function f() table.foreach({ 1 }, f) end f() return true]], STACK)
add("cstack", "gsub-recursion-transform", "transform", "the gsub recursion in a transform",
  [[local function f(s) string.gsub("ab", ".", f) end f() return { v = "contained" }]], STACK)
add("cstack", "gsub-recursion-trigger", "trigger", "the gsub recursion in a Lua trigger",
  [[local function f(s) string.gsub("ab", ".", f) end f() return { type = "log", message = "contained" }]], STACK)

describe("sandbox denial of service", function()
  S.register(A, { describe = describe, it = it, teardown = teardown })
end)

return A
