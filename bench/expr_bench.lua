-- bench/expr_bench.lua: evaluations per second of compiled govaluate and expr-lang filters.
--   luajit bench/expr_bench.lua      (from the source tree; uses spec/helpers/stdlib.lua)
package.path = "./spec/?.lua;" .. package.path
require "helpers.stdlib"
local gv = require "herald.govaluate"
local el = require "herald.exprlang"
local clock = os.clock

-- The argument alternates between fresh copies so the JIT cannot hoist the evaluation.
local function copies(arg)
  local list = {}
  for i = 1, 8 do
    local t = {}
    for k, v in pairs(arg) do t[k] = v end
    list[i] = t
  end
  return list
end

local function bench(label, fn, arg, n)
  n = n or 20000000
  local args = copies(arg)
  for i = 1, 100000 do fn(args[i % 8 + 1]) end -- warm up (JIT)
  local t0 = clock()
  local ok = 0
  for i = 1, n do if fn(args[i % 8 + 1]) == true then ok = ok + 1 end end
  local dt = clock() - t0
  print(string.format("%-48s %12.0f evals/s  %6.1f ns/eval  (true %d)", label, n / dt, dt / n * 1e9, ok))
end

local c = assert(gv.compile('a == "b" && b > 10'))
bench('govaluate  a == "b" && b > 10', c.fn, { a = "b", b = 11 })
c = assert(gv.compile('a IN ("x", "y", "b") && b * 2 >= 20 || c =~ "^foo"'))
bench('govaluate  IN + arithmetic + regex', c.fn, { a = "b", b = 11, c = "foo" }, 5000000)
local e = assert(el.compile('body.a == "b" && body.b > 10'))
bench('exprlang   body.a == "b" && body.b > 10', e.fn, { body = { a = "b", b = 11 } })
e = assert(el.compile('any(body.items, .n > 4) and header["X-Foo"][0] == "bar"'))
bench('exprlang   any(...) and header[..][0]', e.fn, { body = { items = { { n = 1 }, { n = 5 } } }, header = { ["X-Foo"] = { "bar" } } }, 5000000)
