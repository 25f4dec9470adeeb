-- spec/stdlib/exprlang_spec.lua: herald.exprlang against expr-lang v1.15 semantics (docs/
-- Language-Definition.md, builtin tests) and Argo's EventSource filter env (filterEvent).
require "helpers.stdlib"
local el = require "herald.exprlang"
local cjson = require "cjson"
local hjson = require "herald.json" -- decodes as Herald does: empty arrays marked

local DATA = hjson.decode([[{
  "header": {"Content-Type": ["application/json"], "X-Foo": ["bar"]},
  "body": {"id": 4, "name": "Joe", "price": 2.5, "tags": ["a", "b", "c"],
           "items": [{"n": 1, "ok": true}, {"n": 5, "ok": false}, {"n": 7, "ok": true}],
           "nested": {"deep": {"v": "x"}}, "nothing": null, "raw": "{\"k\": [1, 2]}"},
  "my-key": 3, "a.b": 7, "metadata": {"env": "prod"}
}]])
local ENV = el.prepare_env(DATA)

local function eval(expr, env)
  local c, err = el.compile(expr)
  assert(c, err)
  return c.fn(env or ENV)
end

describe("herald.exprlang", function()
  describe("evaluates", function()
    local cases = {
      -- literals and arithmetic
      { "42", 42 }, { "0x2A", 42 }, { "1_000", 1000 }, { ".5", 0.5 }, { "1e3", 1000 }, { "'bar'", "bar" },
      { '"a\\nb"', "a\nb" }, { '"\\u00e9"', "é" }, { "`raw\\n`", "raw\\n" }, { "true", true }, { "nil", nil },
      { "1 + 2 * 3", 7 }, { "(1 + 2) * 3", 9 }, { "7 / 2", 3.5 }, { "7 % 3", 1 }, { "-7 % 3", -1 },
      { "2 ** 10", 1024 }, { "2 ^ 3 ^ 2", 512 }, { "-2 ** 2", -4 }, { "10 - 2 - 3", 5 }, { "+3", 3 },
      { "'a' + 'b'", "ab" }, { "body.price * 2", 5 }, { "body.id / 8", 0.5 },
      -- comparison and logic
      { "1 == 1.0", true }, { "'a' != 'b'", true }, { "1 < 2", true }, { "'abc' < 'abd'", true },
      { "nil == nil", true }, { "body.nothing == nil", true }, { "body.missing == nil", true },
      { "true and false", false }, { "true && true", true }, { "false or true", true }, { "false || false", false },
      { "not true", false }, { "!false", true }, { "not (1 > 2)", true }, { "not false == true", true },
      { "false and body.missing.x", false }, { "true or body.missing.x", true },
      { "[1, 2] == [1, 2]", true }, { "{a: 1} == {a: 1}", true }, { "[1] == [2]", false },
      -- membership, strings, regex
      { "body.name", "Joe" }, { "body['name']", "Joe" }, { "body.nested.deep.v", "x" },
      { "body.tags[0]", "a" }, { "body.tags[-1]", "c" }, { "body.items[1].n", 5 },
      { "header['X-Foo'][0] == 'bar'", true }, { "header['Content-Type'][0]", "application/json" },
      { "'a' in body.tags", true }, { "'z' in body.tags", false }, { "'z' not in body.tags", true },
      { "'id' in body", true }, { "'zz' in body", false }, { "2 in 1..3", true }, { "4 in [1, 4.0]", true },
      { "body.name matches '^J'", true }, { "body.name not matches 'x'", true },
      { "body.name contains 'o'", true }, { "body.name startsWith 'Jo'", true }, { "body.name endsWith 'e'", true },
      { "body.name not contains 'z'", true },
      { "body.tags[1:]", { "b", "c" } }, { "body.tags[:1]", { "a" } }, { "body.tags[0:-1]", { "a", "b" } },
      { "body.tags[:]", { "a", "b", "c" } }, { "'hello'[1:3]", "el" },
      { "1..3", { 1, 2, 3 } }, { "3..1", {} },
      { "body?.name", "Joe" }, { "missing?.name", nil }, { "missing?.a.b.c", nil }, { "body.missing?.x", nil },
      { "body.nothing ?? 'd'", "d" }, { "body.name ?? 'd'", "Joe" }, { "missing ?? 1 + 1", 2 },
      { "body.id > 3 ? 'big' : 'small'", "big" }, { "false ? 1 : true ? 2 : 3", 2 },
      { "[1, 'a', nil]", { 1, "a", cjson.null } }, { "{a: 1, 'b c': 2}['b c']", 2 }, { "{(body.name): 1}.Joe", 1 },
      -- Argo env: "-" -> "_" at the top level, dotted keys expanded
      { "my_key", 3 }, { "a.b", 7 }, { "metadata.env == 'prod'", true },
      -- builtins
      { "len(body.tags)", 3 }, { "len('héllo')", 6 }, { "len(body)", 8 }, { "len({})", 0 },
      { "all(body.items, .n > 0)", true }, { "all(body.items, {.ok})", false }, { "all([], false)", true },
      { "any(body.items, # .n > 6)", true }, { "any([], true)", false }, { "none(body.tags, # == 'z')", true },
      { "one(body.items, .n == 5)", true }, { "one(body.items, .ok)", false },
      { "filter(body.items, .ok)[1].n", 7 }, { "map(body.items, .n)", { 1, 5, 7 } }, { "map(1..3, # * 2)", { 2, 4, 6 } },
      { "count(body.items, .ok)", 2 }, { "find(body.tags, # > 'a')", "b" }, { "findIndex(body.tags, # == 'c')", 2 },
      { "findLast(body.items, .ok).n", 7 }, { "findLastIndex(body.tags, # < 'c')", 1 }, { "findIndex([], true)", -1 },
      { "all(body.items, any(body.tags, # == 'a') && .n > 0)", true },
      { "upper('abc')", "ABC" }, { "lower('ABC')", "abc" }, { "trim('  x  ')", "x" }, { "trim('xxaxx', 'x')", "a" }, { "trim('[]a%[]', '[]%')", "a" }, { "trim('x\0ax\0', 'x\0')", "a" },
      { "trimPrefix('prefix-x', 'prefix-')", "x" }, { "trimSuffix('x.yaml', '.yaml')", "x" },
      { "split('a,b,c', ',')", { "a", "b", "c" } }, { "split('a,b,c', ',', 2)", { "a", "b,c" } },
      { "splitAfter('a,b', ',')", { "a,", "b" } }, { "join(['a', 'b'], '-')", "a-b" }, { "join(['a', 'b'])", "ab" },
      { "replace('aXbX', 'X', '-')", "a-b-" }, { "repeat('ab', 3)", "ababab" },
      { "indexOf('hello', 'l')", 2 }, { "lastIndexOf('hello', 'l')", 3 }, { "indexOf('x', 'z')", -1 },
      { "hasPrefix('hello', 'he')", true }, { "hasSuffix('hello', 'lo')", true },
      { "int('42')", 42 }, { "int(3.9)", 3 }, { "int(-3.9)", -3 }, { "float('1.5')", 1.5 }, { "float(2)", 2 },
      { "string(42)", "42" }, { "string(2.5)", "2.5" }, { "string(true)", "true" }, { "string(nil)", "<nil>" },
      { "string(body.tags)", "[a b c]" }, { "string(1000000.0)", "1e+06" },
      { "abs(-3)", 3 }, { "ceil(1.2)", 2 }, { "floor(1.8)", 1 }, { "round(2.5)", 3 }, { "max(1, 5, 3)", 5 }, { "min(4, 2)", 2 },
      { "keys({b: 1, a: 2})", { "a", "b" } }, { "values({b: 1, a: 2})", { 2, 1 } },
      { "first(body.tags)", "a" }, { "last(body.tags)", "c" }, { "get(body.tags, 5)", nil }, { "get(body, 'name')", "Joe" },
      { "take(body.tags, 2)", { "a", "b" } }, { "toBase64('hello')", "aGVsbG8=" }, { "fromBase64('aGVsbG8=')", "hello" },
      { "fromJSON('{\"a\": 1}').a", 1 }, { "toJSON([1, 2])", "[\n  1,\n  2\n]" },
      -- Argo helpers
      { "asInt('12') + 1", 13 }, { "asFloat('1.5') * 2", 3 }, { "asInt(body.price)", 2 },
      { "toJson(body.tags)", '["a","b","c"]' }, { "toJson({b: 1, a: '<x>'})", '{"a":"\\u003cx\\u003e","b":1}' },
      { "toJson(0.0000001)", "1e-7" }, { "toJson(1e21)", "1e+21" }, { "toJson(123456789)", "123456789" },
      { "jsonpath(body.raw, '$.k[1]')", 2 }, { "jsonpath(body.raw, '$.k')", { 1, 2 } },
      { "jsonpath(toJson(body), '$.items[*].n')", { 1, 5, 7 } }, { "jsonpath(toJson(body), \"$['nested'].deep.v\")", "x" },
      { "jsonpath(body.raw, 'k.1')", 2 },
      -- comments
      { "1 /* one */ + // rest\n 2", 3 },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local v, err = eval(case[1])
        assert.is_nil(err)
        assert.same(case[2], v)
      end)
    end
  end)

  describe("runtime errors", function()
    local cases = {
      { "body.id + 'x'", "invalid operation: int + string" },
      { "body.name > 1", "invalid operation: string > int" },
      { "body.price - 'a'", "invalid operation: float64 - string" },
      { "body.missing.x", "cannot fetch x from <nil>" },
      { "body.tags[5]", "index out of range: 5 (array length is 3)" },
      { "body.tags.x", "cannot fetch x from []interface {}" },
      { "not body.id", "interface conversion: interface {} is int, not bool" },
      { "body.id and true", "interface conversion: interface {} is int, not bool" },
      { "true && nil", "interface conversion: interface {} is nil, not bool" },
      { "body.name ? 1 : 2", "interface conversion: interface {} is string, not bool" },
      { "body.id contains 'x'", "interface conversion: interface {} is int, not string" },
      { "body.id matches 'x'", "interface conversion: interface {} is int, not string" },
      { "'a' in body.id", "operator \"in\" not defined on int" },
      { "len(body.id)", "invalid argument for len (type int)" },
      { "int('x')", "strconv.Atoi: parsing \"x\": invalid syntax" },
      { "float('x')", "strconv.ParseFloat: parsing \"x\": invalid syntax" },
      { "1 % 0", "integer divide by zero" },
      { "all(body.name, true)", "cannot iterate over string in all()" },
      { "all(body.items, .n)", "interface conversion: interface {} is int, not bool" },
      { "unknownFn(1)", "unknownFn is not a function" },
      { "body.name matches body.name + '('", "error parsing regexp" },
      { "jsonpath(body.raw, '$.zz')", "key: invalid token key 'zz' not found" },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local v, err = eval(case[1])
        assert.is_nil(v)
        assert.truthy(err and err:find(case[2], 1, true), err)
      end)
    end
  end)

  describe("parse errors", function()
    local cases = {
      { "a +", "unexpected end of expression at column 4" },
      { "(1 + 2", "expected ')', found 'end of expression' at column 7" },
      { "a ) b", "unexpected token ')' at column 3" },
      { "a b", "unexpected token 'b' at column 3" },
      { "'abc", "literal not terminated at column 1" },
      { "a @ b", "unrecognized character: U+0040 '@' at column 3" },
      { "#.x", "cannot use pointer accessor outside closure at column 1" },
      { "all(x)", "expected ',', found ')' at column 6" },
      { "a matches '('", "error parsing regexp" },
      { "[1, 2", "expected ']'" },
      { "{a 1}", "expected ':'" },
      { "a.", "expected name at column 3" },
      { "1 ? 2", "expected ':'" },
      { "/* x", "unclosed comment at column 1" },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local c, err = el.compile(case[1])
        assert.is_nil(c)
        assert.truthy(err and err:find(case[2], 1, true), err)
      end)
    end
  end)

  describe("Argo EventSource filters", function()
    it("filters like the kafka example (body.id == 4) && (body.name != 'Joe')", function()
      local c = assert(el.compile("(body.id == 4) && (body.name != 'Joe')"))
      assert.same(false, c.fn(ENV))
      assert.same(true, c.fn(el.prepare_env({ body = { id = 4, name = "Ann" } })))
    end)

    it("eval_bool wants a bool, as EvalBool does", function()
      local c = assert(el.compile("body.name"))
      local v, err = el.eval_bool(c, ENV)
      assert.is_nil(v)
      assert.equal("unable to cast expression result 'Joe' to bool", err)
      c = assert(el.compile("body.missing.x"))
      v, err = el.eval_bool(c, ENV)
      assert.is_nil(v)
      assert.truthy(err:find("^unable to evaluate expression 'body.missing.x': cannot fetch x"))
      assert.is_true(el.eval_bool(assert(el.compile("body.id == 4")), ENV))
    end)

    it("prepare_env replaces '-' at the top level only and expands dotted keys", function()
      local env = el.prepare_env({ ["x-y"] = 1, body = { ["a-b"] = 2 }, ["p.q"] = 3, ["p.r"] = 4, ["s"] = 1, ["s.t"] = 2 })
      assert.equal(1, env.x_y)
      assert.is_nil(env["x-y"])
      assert.equal(2, env.body["a-b"])
      assert.same({ q = 3, r = 4 }, env.p)
      assert.same({ t = 2 }, env.s) -- removeConflicts drops the parent key
    end)

    it("binds the helpers even when the data has the same keys", function()
      local env = el.prepare_env({ toJson = "data", asInt = 1 })
      assert.equal("2", eval("toJson(asInt('2'))", env))
    end)

    it("calls sprig functions from herald.sprig when it is present", function()
      package.loaded["herald.sprig"] = { upper = function(s) return s:upper() end,
        fail = function() return nil, "boom" end }
      assert.equal("JOE", eval("sprig.upper(body.name)"))
      local v, err = eval("sprig.fail()")
      assert.is_nil(v)
      assert.equal("boom", err)
      v, err = eval("sprig.nope(1)")
      assert.is_nil(v)
      assert.truthy(err:find("nope", 1, true))
      package.loaded["herald.sprig"] = nil
    end)
  end)

  describe("compiled output", function()
    it("is a readable chunk with inline loops and constant regexes", function()
      local c = assert(el.compile("any(body.items, .n > 4) and body.name matches '^J'"))
      assert.truthy(c.source:find("for t", 1, true))
      assert.truthy(c.source:find("L.const_regex", 1, true))
      assert.same({ "body" }, c.names)
      assert.is_true(load(c.source)()(ENV))
    end)

    it("never raises from c.fn", function()
      local c = assert(el.compile("a.b.c + d[0] > e"))
      for _, env in ipairs({ {}, { a = 1 }, { a = { b = { c = 1 } }, d = { "x" }, e = 1 } }) do
        local ok, v, err = pcall(c.fn, env)
        assert.is_true(ok)
        assert.is_nil(v)
        assert.is_string(err)
      end
    end)
  end)
end)
