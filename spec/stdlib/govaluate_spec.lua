-- spec/stdlib/govaluate_spec.lua: herald.govaluate against govaluate's semantics (MANUAL.md,
-- evaluation_test.go, evaluationFailure_test.go, parsingFailure_test.go) and Argo's
-- filter-with-expressions example.
require "helpers.stdlib"
local gv = require "herald.govaluate"
local cjson = require "cjson"

local function eval(expr, params)
  local c, err = gv.compile(expr)
  assert(c, err)
  return c.fn(params or {})
end

describe("herald.govaluate", function()
  describe("evaluates", function()
    local P = { foo = 2, bar = 5, baz = "x", flag = true, s = "abc", arr = { 1, "a", 3 },
      ["my-var"] = 4, n = cjson.null, f = false, big = 1000000 }
    local cases = {
      { "1 + 2", 3 }, { "1 - 2 - 3", -4 }, { "2 * 3 + 1", 7 }, { "1 + 2 * 3", 7 }, { "(1 + 2) * 3", 9 },
      { "10 / 4", 2.5 }, { "10 % 3", 1 }, { "-7 % 3", -1 }, { "2 ** 3", 8 }, { "2 ** 3 ** 2", 64 },
      { "-2 ** 2", 4 }, { "-foo", -2 }, { "1 / 0", math.huge }, { "100 / 10 / 5", 2 },
      { "0x1F", 31 }, { "0xff + 1", 256 }, { ".5 + 1", 1.5 }, { "1.25 * 4", 5 },
      { "5 & 3", 1 }, { "5 | 3", 7 }, { "5 ^ 3", 6 }, { "1 << 4", 16 }, { "256 >> 4", 16 }, { "~5", -6 },
      { "5 & 3 | 8", 9 }, { "1 + 1 << 2", 8 }, { "-1 >> 60", 15 }, { "1 << 64", 0 },
      { "'a' + 'b'", "ab" }, { "\"a\" + 1", "a1" }, { "1 + 'a'", "1a" }, { "'a' + true", "atrue" },
      { "baz + big", "x1e+06" }, { "baz + 1.5", "x1.5" }, { "baz + 123456", "x123456" },
      { "1 == 1", true }, { "1 != 1", false }, { "'a' == 'a'", true }, { "'a' == \"a\"", true },
      { "1 == '1'", false }, { "true == true", true }, { "foo == 2", true }, { "foo != bar", true },
      { "n == n", true }, { "arr == arr", true },
      { "1 < 2", true }, { "2 <= 2", true }, { "3 > 2", true }, { "2 >= 3", false },
      { "'abc' < 'abd'", true }, { "'b' > 'abc'", true }, { "bar > foo", true },
      { "true && true", true }, { "true && false", false }, { "false || true", true },
      { "!true", false }, { "!flag", false }, { "!(1 > 2)", true }, { "!f && true", true },
      { "true || false && false", true }, { "(true || false) && false", false },
      { "1 < 2 == true", true }, { "1 + 2 > 2 && 'a' == 'a'", true },
      { "'abc' =~ 'b'", true }, { "'abc' =~ '^b'", false }, { "s !~ 'z'", true }, { "s =~ baz + '?'", true },
      { "1 IN (1, 2, 3)", true }, { "4 in (1, 2, 3)", false }, { "'a' IN ('b', 'a')", true },
      { "foo IN (bar, 2)", true }, { "'a' IN arr", true }, { "2 IN arr", false },
      { "true ? 1 : 2", 1 }, { "false ? 1 : 2", 2 }, { "flag ? 'yes' : 'no'", "yes" },
      { "false ? 1", nil }, { "true ? 1", 1 }, { "n ?? 'd'", "d" }, { "foo ?? 'd'", 2 },
      { "(1 > 2 ? 'a' : 'b') + 'c'", "bc" }, { "f ? 1 : 2", 2 },
      { "[my-var] * 2", 8 }, { "[foo] + 1", 3 }, { "'it\\'s'", "it's" },
      { "'2014-01-02' > '2014-01-01'", true }, { "'2014-01-02' == 1388620800", true },
      { "'2014-01-02T10:00:00Z' > '2014-01-02T09:00:00Z'", true },
      { "'2014-01-02 10:00' < '2014-01-02 10:01:00'", true },
      { "'2014-01-02T10:00:00+01:00' == '2014-01-02 09:00:00'", true },
      { "'2014-02-30' == '2014-02-30'", true }, -- not a date: compared as strings
      { "()", nil }, { "(1, 2)", { 1, 2 } },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local v, err = eval(case[1], P)
        assert.is_nil(err)
        assert.same(case[2], v)
      end)
    end
  end)

  describe("runtime type errors", function()
    local P = { a = "x", b = 11, t = true, arr = { 1 }, m = { k = 1 } }
    local cases = {
      { "a > 1", "Value 'x' cannot be used with the comparator '>', it is not a number" },
      { "1 < a", "Value '1' cannot be used with the comparator '<', it is not a number" },
      { "'a' < 1", "Value 'a' cannot be used with the comparator '<', it is not a number" },
      { "a - 1", "Value 'x' cannot be used with the modifier '-', it is not a number" },
      { "1 * a", "Value 'x' cannot be used with the modifier '*', it is not a number" },
      { "true + 1", "Value 'true' cannot be used with the modifier '+', it is not a number" },
      { "b && true", "Value '11' cannot be used with the logical operator '&&', it is not a bool" },
      { "false || a", "Value 'x' cannot be used with the logical operator '||', it is not a bool" },
      { "!b", "Value '11' cannot be used with the prefix '!'" },
      { "-a", "Value 'x' cannot be used with the prefix '-'" },
      { "b =~ 'x'", "Value '11' cannot be used with the comparator '=~', it is not a number" },
      { "b ? 1 : 2", "Value '11' cannot be used with the ternary operator '?', it is not a bool" },
      { "1 IN (1)", "Value '1' cannot be used with the comparator 'in', it is not a number" },
      { "1 IN m", "Value 'map[k:1]' cannot be used with the comparator 'in', it is not a number" },
      { "missing == 1", "No parameter 'missing' found." },
      { "a.B", "Unable to access 'B', 'a' is not a struct" },
      { "a =~ b + '('", "Unable to compile regexp pattern" },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local v, err = eval(case[1], P)
        assert.is_nil(v)
        assert.truthy(err and err:find(case[2], 1, true), err)
      end)
    end

    it("short-circuits like govaluate", function()
      assert.same(false, eval("false && missing", {}))
      assert.same(true, eval("true || missing", {}))
      assert.same(false, eval("false && 'str'", {})) -- left false: no type check of the right
      assert.same(1, eval("1 ?? missing", {}))
      local v, err = eval("true && missing", {})
      assert.is_nil(v)
      assert.equal("No parameter 'missing' found.", err)
    end)
  end)

  describe("parse errors", function()
    local cases = {
      { "(1 + 2", "unbalanced parenthesis at column 1" },
      { "1 + 2)", "unbalanced parenthesis at column 6" },
      { "a == (b))", "unbalanced parenthesis at column 9" },
      { "1 +", "unexpected end of expression at column 4" },
      { "a b", "unexpected token 'b' at column 3" },
      { "1 2", "unexpected token '2' at column 3" },
      { "(a == ))", "unbalanced parenthesis" },
      { "a == )", "unbalanced parenthesis at column 6" },
      { "'abc", "unclosed string literal at column 1" },
      { "[abc", "unclosed parameter bracket at column 1" },
      { "foo(1)", "Undefined function foo at column 1" },
      { "a>-1", "Invalid token: '>-' at column 2" },
      { "a $ b", "Invalid token: '$' at column 3" },
      { "1.2.3", "Unable to parse numeric value '1.2.3' to float64 at column 1" },
      { "a.b", "Unable to access unexported field 'b' in token 'a.b' at column 1" },
      { "a. == 1", "Hanging accessor on token 'a.' at column 1" },
      { "a =~ '('", "error parsing regexp '(' at column 6" },
      { "a && || b", "unexpected token '||' at column 6" },
      { "a ==", "unexpected end of expression at column 5" },
      -- govaluate's lexer does not let a date literal follow a modifier
      { "'2014-01-02' - '2014-01-01'", "unexpected token ''2014-01-01'' at column 16" },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local c, err = gv.compile(case[1])
        assert.is_nil(c)
        assert.truthy(err and err:find(case[2], 1, true), err)
      end)
    end
  end)

  describe("compiled output", function()
    it("lists params and exposes readable source", function()
      local c = assert(gv.compile('a == "b" && b > 10 || [c-d] IN (1, 2) || a == b'))
      assert.same({ "a", "b", "c-d" }, c.params)
      assert.truthy(c.source:find("return function(p)", 1, true))
      local fn = load(c.source)()
      assert.equal(true, fn({ a = "b", b = 11, ["c-d"] = 0 }))
    end)

    it("compiles constant regexes once, as upvalues", function()
      local c = assert(gv.compile("s =~ '^a+$'"))
      assert.truthy(c.source:find("R.const_regex", 1, true))
      assert.is_true(c.fn({ s = "aaa" }))
      assert.is_false(c.fn({ s = "aab" }))
    end)

    it("never raises at run time", function()
      local c = assert(gv.compile("a + b > c && d =~ e"))
      for _, p in ipairs({ {}, { a = {}, b = 1, c = 1 }, { a = 1, b = 1, c = 1, d = 1, e = 1 },
        { a = 1, b = 1, c = 0, d = "x", e = "(" } }) do
        local ok, v, err = pcall(c.fn, p)
        assert.is_true(ok)
        assert.is_nil(v)
        assert.is_string(err)
      end
    end)
  end)

  describe("Argo filter-with-expressions", function()
    -- exprs: [{expr: 'a == "b" && b > 10', fields: [{name: a, path: body.a}, {name: b, path: body.b}]}]
    local c = assert(gv.compile('a == "b" && b > 10'))
    it("passes a matching event", function()
      assert.is_true(c.fn({ a = "b", b = 11 }))
    end)
    it("rejects a non-matching event", function()
      assert.is_false(c.fn({ a = "c", b = 11 }))
      assert.is_false(c.fn({ a = "b", b = 10 }))
    end)
    it("errors when b is not a number", function()
      local v, err = c.fn({ a = "b", b = "11" })
      assert.is_nil(v)
      assert.equal("Value '11' cannot be used with the comparator '>', it is not a number", err)
    end)
    it("works with the second example expression", function()
      -- expr: 'c == "d" || d == "e"' style, with a JSON null field
      local c2 = assert(gv.compile('(x != "y") && (null_field ?? true) == [my-field]'))
      assert.is_true(c2.fn({ x = "z", ["my-field"] = true, null_field = cjson.null }))
      -- ?? binds looser than ==, as in govaluate
      assert.is_false(gv.evaluate('[my-field] == null_field ?? true', { ["my-field"] = true, null_field = cjson.null }))
    end)
  end)

  describe("parse_time", function()
    it("recognises govaluate's layouts", function()
      assert.equal(0, gv.parse_time("1970-01-01"))
      assert.equal(86400 + 3661, gv.parse_time("1970-01-02 01:01:01"))
      assert.equal(3600, gv.parse_time("1970-01-01T01:00:00Z"))
      assert.equal(0, gv.parse_time("1970-01-01T01:00:00+01:00"))
      assert.equal(0, gv.parse_time("1970-01-01T01:00:00.123+01:00"))
      assert.equal(7200, gv.parse_time("1970-01-01T02Z"))
      assert.equal(0, gv.parse_time("1970-01-01T01:00+0100"))
      assert.is_nil(gv.parse_time("2014-13-01"))
      assert.is_nil(gv.parse_time("hello"))
      assert.is_nil(gv.parse_time("2014-01-01T"))
    end)
  end)
end)
