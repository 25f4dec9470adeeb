-- spec/stdlib/gjson_spec.lua: herald.gjson against the examples of gjson's README, SYNTAX.md
-- and gjson_test.go, on values decoded as Herald decodes events (herald.json).
require "helpers.stdlib"
local cjson = require "cjson"
local hjson = require "herald.json" -- decodes as Herald does: empty arrays marked
local gjson = require "herald.gjson"

local EXAMPLE = hjson.decode([[{
  "name": {"first": "Tom", "last": "Anderson"},
  "age":37,
  "children": ["Sara","Alex","Jack"],
  "fav.movie": "Deer Hunter",
  "friends": [
    {"first": "Dale", "last": "Murphy", "age": 44, "nets": ["ig", "fb", "tw"]},
    {"first": "Roger", "last": "Craig", "age": 68, "nets": ["fb", "tw"]},
    {"first": "Jane", "last": "Murphy", "age": 47, "nets": ["ig", "tw"]}
  ]
}]])

-- path -> expected gjson String() ; false = must not exist
local function check(doc, cases)
  for _, c in ipairs(cases) do
    local path, want = c[1], c[2]
    it(path, function()
      local get, err = gjson.compile(path)
      assert.is_nil(err)
      local v = get(doc)
      if want == false then
        assert.is_nil(v)
      else
        assert.is_not_nil(v)
        assert.are.equal(want, gjson.string(v))
      end
      if c[3] then assert.are.equal(c[3], gjson.type(v)) end
    end)
  end
end

describe("gjson SYNTAX.md", function()
  describe("basic", function()
    check(EXAMPLE, {
      { "name.last", "Anderson", "String" },
      { "name.first", "Tom" },
      { "age", "37", "Number" },
      { "children", '["Sara","Alex","Jack"]', "JSON" },
      { "children.0", "Sara" },
      { "children.1", "Alex" },
      { "children.3", false },
      { "friends.1.first", "Roger" },
      { "friends.1", '{"age":68,"first":"Roger","last":"Craig","nets":["fb","tw"]}' },
      { "missing", false },
      { "name.first.x", false },
      { "age.x", false },
    })
  end)
  describe("wildcards and escapes", function()
    check(EXAMPLE, {
      { "child*.2", "Jack" },
      { "c?ildren.0", "Sara" },
      { "fav\\.movie", "Deer Hunter" },
      { "fav.movie", false },
      { "*.last", "Anderson" },
      { "na?e.fir*", "Tom" },
    })
  end)
  describe("arrays", function()
    check(EXAMPLE, {
      { "friends.#", "3", "Number" },
      { "friends.#.age", "[44,68,47]" },
      { "friends.#.first", '["Dale","Roger","Jane"]' },
      { "friends.#.nets.0", '["ig","fb","ig"]' },
      { "friends.#.nets.#", "[3,2,2]" },
      { "friends.#.missing", "[]" },
      { "children.#", "3" },
      { "name.#", false },
    })
  end)
  describe("queries", function()
    check(EXAMPLE, {
      { 'friends.#(last=="Murphy").first', "Dale" },
      { 'friends.#(last=="Murphy")#.first', '["Dale","Jane"]' },
      { "friends.#(age>45)#.last", '["Craig","Murphy"]' },
      { 'friends.#(first%"D*").last', "Murphy" },
      { 'friends.#(first!%"D*").last', "Craig" },
      { 'children.#(!%"*a*")', "Alex" },
      { 'children.#(%"*a*")#', '["Sara","Jack"]' },
      { 'friends.#(nets.#(=="fb"))#.first', '["Dale","Roger"]' },
      { 'friends.#(last="Murphy").first', "Dale" },
      { "friends.#(last=Murphy).first", "Dale" },
      { 'friends.#(last!="Murphy")#.first', '["Roger"]' },
      { "friends.#(age<45).first", "Dale" },
      { "friends.#(age<=44)#.first", '["Dale"]' },
      { "friends.#(age>=47)#.first", '["Roger","Jane"]' },
      { "friends.#(age==68).first", "Roger" },
      { "friends.#(age!=68)#.age", "[44,47]" },
      { 'friends.#(last=="Nobody").first', false },
      { 'friends.#(last=="Nobody")#.first', "[]" },
      { 'friends.#(last=="Nobody")#', "[]" },
      { "friends.#(nets)#.first", '["Dale","Roger","Jane"]' },
      { "friends.#(nope)#.first", "[]" },
      { 'friends.#(first>"Jane")#.first', '["Roger"]' },
      { 'friends.#(first<"Jane")#.first', '["Dale"]' },
      { 'friends.#[last=="Murphy"]#.first', '["Dale","Jane"]' },
      { 'friends.#( last == "Craig" ).first', "Roger" },
      { 'children.#(=="Alex")', "Alex" },
      { 'children.#(=="Nobody")', false },
      { 'friends.#(=="x")', false },
    })
  end)
  describe("dot vs pipe", function()
    check(EXAMPLE, {
      { "friends.0.first", "Dale" },
      { "friends|0.first", "Dale" },
      { "friends.0|first", "Dale" },
      { "friends|0|first", "Dale" },
      { "friends|#", "3" },
      { 'friends.#(last="Murphy")#', '[{"age":44,"first":"Dale","last":"Murphy","nets":["ig","fb","tw"]},'
        .. '{"age":47,"first":"Jane","last":"Murphy","nets":["ig","tw"]}]' },
      { 'friends.#(last="Murphy")#.first', '["Dale","Jane"]' },
      { 'friends.#(last="Murphy")#|first', false },
      { 'friends.#(last="Murphy")#.0', "[]" },
      { 'friends.#(last="Murphy")#|0', '{"age":44,"first":"Dale","last":"Murphy","nets":["ig","fb","tw"]}' },
      { 'friends.#(last="Murphy")#.#', "[]" },
      { 'friends.#(last="Murphy")#|#', "2" },
      { 'friends.#(last="Murphy")#.first|0', "Dale" },
      { "friends.#.first|1", "Roger" },
      { "friends.#.first|#", "3" },
    })
  end)
  describe("modifiers", function()
    check(EXAMPLE, {
      { "children.@reverse", '["Jack","Alex","Sara"]' },
      { "children.@reverse.0", "Jack" },
      { "children|@reverse|0", "Jack" },
      { "@this.name.first", "Tom" },
      { "name.@this", '{"first":"Tom","last":"Anderson"}' },
      { "age.@valid", "37" },
      { "friends.#.nets.@flatten", '[["ig","fb","tw"],["fb","tw"],["ig","tw"]]' }, -- per element
      { "friends.#.nets|@flatten", '["ig","fb","tw","fb","tw","ig","tw"]' },
      { "name.@keys", '["first","last"]' },
      { "name.@values", '["Tom","Anderson"]' },
      { "children.@keys", "[null,null,null]" },
      { "children.@values", '["Sara","Alex","Jack"]' },
      { "missing.@keys", "[]" }, -- ".@keys" is a pipe, and @keys of nothing is []
      { "missing|@keys", "[]" },
      { "name.@tostr", '{"first":"Tom","last":"Anderson"}', "String" },
      { "name.@tostr.@fromstr.last", "Anderson" },
      { "friends.@join.first", "Jane" },
      { "@unknown", false },
      { "friends.#.@reverse", '[{"age":44,"first":"Dale","last":"Murphy","nets":["ig","fb","tw"]},'
        .. '{"age":68,"first":"Roger","last":"Craig","nets":["fb","tw"]},'
        .. '{"age":47,"first":"Jane","last":"Murphy","nets":["ig","tw"]}]' },
      { "friends.#.nets.@reverse", '[["tw","fb","ig"],["tw","fb"],["tw","ig"]]' },
      { "@dig:last", '["Murphy","Craig","Murphy","Anderson"]' }, -- sorted keys, not document order
    })
  end)
  describe("multipaths and literals", function()
    check(EXAMPLE, {
      { '{name.first,age,"the_murphys":friends.#(last="Murphy")#.first}',
        '{"age":37,"first":"Tom","the_murphys":["Dale","Jane"]}' },
      { "[name.first,age,children.0]", '["Tom",37,"Sara"]' },
      { "[name.first,nope,age]", '["Tom",37]' },
      { "{name.first,nope}", '{"first":"Tom"}' },
      { "{friends.#.first}", '{"first":["Dale","Roger","Jane"]}' },
      { '{"n":friends.#}', '{"n":3}' },
      { "{friends.#(age>60)}", '{"_":{"age":68,"first":"Roger","last":"Craig","nets":["fb","tw"]}}' },
      { "[name.first,age].1", "37" },
      { "[name.first,age]|#", "2" },
      { "{name.first,age}.first", "Tom" },
      { "name.[first,last]", '["Tom","Anderson"]' },
      { "name.{first}", '{"first":"Tom"}' },
      { '{name.first,age,"company":!"Happysoft","employed":!true}',
        '{"age":37,"company":"Happysoft","employed":true,"first":"Tom"}' },
      { "!true", "true", "True" },
      { "!false", "false", "False" },
      { "!null", "", "Null" },
      { "!123.5", "123.5", "Number" },
      { '!{"a":[1,2]}.a.1', "2" },
      { '![1,2,3]|#', "3" },
      { "!nope", false },
      { "[!1,!2]", "[1,2]" },
    })
  end)
end)

describe("gjson value types", function()
  local doc = hjson.decode([[{"s":"x","n":1.5,"i":10,"t":true,"f":false,"z":null,"o":{"a":1},"a":[1,"2",null],
    "big":1e21,"small":0.000001,"neg":-3,"e":[],"uni":"\u00e9<&>"}]])
  check(doc, {
    { "s", "x", "String" },
    { "n", "1.5", "Number" },
    { "i", "10", "Number" },
    { "t", "true", "True" },
    { "f", "false", "False" },
    { "z", "", "Null" },
    { "o", '{"a":1}', "JSON" },
    { "a", '[1,"2",null]', "JSON" },
    { "a.2", "", "Null" },
    { "big", "1000000000000000000000" },
    { "small", "0.000001" },
    { "neg", "-3" },
    { "e.#", "0" },
    { "e.#(a==1)#", "[]" },
    { "uni", "\195\169<&>" },
    { "uni.@tostr", '"\195\169<&>"', "String" },
  })
  it("exists distinguishes null from missing", function()
    assert.is_true(gjson.exists(gjson.get(doc, "z")))
    assert.is_false(gjson.exists(gjson.get(doc, "nope")))
    assert.are.same({ exists = true, value = "x", type = "String" }, gjson.result(gjson.get(doc, "s")))
    assert.are.same({ exists = false, type = "Null" }, gjson.result(nil))
  end)
  it("bool follows Result.Bool()", function()
    assert.is_true(gjson.bool(true))
    assert.is_true(gjson.bool(1.5))
    assert.is_false(gjson.bool(0))
    assert.is_true(gjson.bool("true"))
    assert.is_true(gjson.bool("TRUE"))
    assert.is_true(gjson.bool("1"))
    assert.is_true(gjson.bool("t"))
    assert.is_false(gjson.bool("yes"))
    assert.is_false(gjson.bool(cjson.null))
    assert.is_false(gjson.bool(nil))
    assert.is_false(gjson.bool({}))
  end)
  it("number follows Result.Float()", function()
    assert.are.equal(1.5, gjson.number(1.5))
    assert.are.equal(1, gjson.number(true))
    assert.are.equal(0, gjson.number(false))
    assert.are.equal(12.5, gjson.number("12.5"))
    assert.are.equal(0, gjson.number("12x"))
    assert.are.equal(0, gjson.number(" 1"))
    assert.are.equal(math.huge, gjson.number("+Inf"))
    assert.are.equal(0, gjson.number(cjson.null))
    assert.are.equal(0, gjson.number(nil))
  end)
  it("raw gives JSON text", function()
    assert.are.equal('"a\\"b\\n"', gjson.raw('a"b\n'))
    assert.are.equal("null", gjson.raw(cjson.null))
    assert.are.equal("", gjson.raw(nil))
    assert.are.equal("0.1", gjson.raw(0.1))
    assert.are.equal("123456789.125", gjson.raw(123456789.125))
    assert.are.equal("1e-07", tostring(1e-07)) -- Lua's own text differs from Go's:
    assert.are.equal("0.0000001", gjson.raw(1e-07))
    assert.are.equal("[]", gjson.raw(setmetatable({}, gjson.array_mt)))
    assert.are.equal("{}", gjson.raw({}))
  end)
end)

describe("gjson tilde queries (SYNTAX.md)", function()
  local doc = hjson.decode([[{"vals":[{"a":1,"b":true},{"a":2,"b":true},{"a":3,"b":false},{"a":4,"b":"0"},
    {"a":5,"b":0},{"a":6,"b":"1"},{"a":7,"b":1},{"a":8,"b":"true"},{"a":9,"b":false},{"a":10,"b":null},{"a":11}]}]])
  check(doc, {
    { "vals.#(b==~true)#.a", "[1,2,6,7,8]" },
    { "vals.#(b==~false)#.a", "[3,4,5,9,10,11]" },
    { "vals.#(b==~null)#.a", "[10]" },
    { "vals.#(b==~*)#.a", "[1,2,3,4,5,6,7,8,9,10]" },
    { "vals.#(b!=~true)#.a", "[3,4,5,9,10,11]" },
    -- without ~ the value compares by its own type: numbers against ParseFloat("true") = 0
    { "vals.#(b==true)#.a", "[1,2,5,8]" },
    { "vals.#(b==false)#.a", "[3,5,9]" },
    { 'vals.#(b=="true")#.a', "[1,2,5,8]" },
    { "vals.#(b>false)#.a", "[1,2,7,8]" },
    { "vals.#(b<=true)#.a", "[3,4,5,6,8,9]" },
  })
end)

describe("gjson_test.go cases", function()
  local basic = hjson.decode([[{"loggy":{"programmers":[
    {"firstName":"Brett","lastName":"McLaughlin","email":"aaaa","tag":"good"},
    {"firstName":"Jason","lastName":"Hunter","email":"bbbb","tag":"bad"},
    {"firstName":"Elliotte","lastName":"Harold","email":"cccc","tag":"good"},
    {"firstName":1002.3,"age":101}]},
    "lastly":{"end...ing":"soon","yay":"final"},
    "items":[{"key":"a","tags":["x","y"]},{"key":"b","tags":["z"]}],
    "noop":{"what is a wren?":"a bird"},
    "happy":true,"immortal":false,
    "vals":[1,2,3,{"sadf":"asdf"}],
    "arr":["1",2,"3",{"hello":"world"},"4",5]}]])
  check(basic, {
    { 'loggy.programmers.#(tag=="good")#.firstName', '["Brett","Elliotte"]' },
    { 'loggy.programmers.#(tag=="good").firstName', "Brett" },
    { "loggy.programmers.#(age=101).firstName", "1002.3" },
    { 'loggy.programmers.#(firstName % "Bre*").email', "aaaa" },
    { 'loggy.programmers.#(firstName !% "Bre*").email', "bbbb" },
    { "loggy.programmers.#.firstName", '["Brett","Jason","Elliotte",1002.3]' },
    { "loggy.programmers.#.lastName", '["McLaughlin","Hunter","Harold"]' },
    { "loggy.programmers.3.age", "101" },
    { "lastly.end\\.\\.\\.ing", "soon" },
    { "lastly.yay", "final" },
    { "noop.what is a wren\\?", "a bird" },
    { "happy", "true" },
    { "immortal", "false" },
    { "vals.3.sadf", "asdf" },
    { "vals.#", "4" },
    { "arr.#", "6" },
    { "arr.3.hello", "world" },
    { 'items.#(tags.#(=="z")).key', "b" },
    { 'items.#(tags.#(=="x"))#.key', '["a"]' },
    { "items.#.tags|@flatten", '["x","y","z"]' },
  })
  describe("flatten and join", function()
    local d = hjson.decode('{"a":[1,[2],[3,4],[5,[6,7]]],"objs":[{"first":"Tom","age":37},{"age":41},7]}')
    check(d, {
      { "a.@flatten", "[1,2,3,4,5,[6,7]]" },
      { 'a.@flatten:{"deep":true}', "[1,2,3,4,5,6,7]" },
      { "objs.@join", '{"age":41,"first":"Tom"}' },
      { 'objs.@join:{"preserve":true}.age', "37" },
      { "objs.@join.@keys", '["age","first"]' },
    })
  end)
  describe("fromstr and group", function()
    local d = hjson.decode([[{"s":"{\"id\":1023,\"name\":\"alert\"}","bad":"nope","n":12,
      "g":{"id":["123","456"],"val":[2,1]}}]])
    check(d, {
      { "s.@fromstr.id", "1023" },
      { "s|@fromstr|name", "alert" },
      { "bad.@fromstr", false },
      { "n.@fromstr", "12" },
      { "g.@group", '[{"id":"123","val":2},{"id":"456","val":1}]' },
    })
  end)
end)

describe("gjson compile errors", function()
  local cases = {
    { "items.#(name", "unterminated query at column 7" },
    { 'a.b.#(name=="x"', "unterminated query at column 5" },
    { "#(", "unterminated query at column 1" },
    { "[a,b", "unterminated multipath at column 1" },
    { "x|{a,b", "unterminated multipath at column 3" },
    { 'a.#(b.#(=="x")', "unterminated query at column 3" },
    { 'a.#(b=="x")#.c.#(d', "unterminated query at column 16" },
    { "@flatten:{\"deep\":true", "unterminated modifier argument at column 10" },
    { "..0", "JSON Lines paths (..) are not supported at column 1" },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local fn, err = gjson.compile(c[1])
      assert.is_nil(fn)
      assert.are.equal(c[2], err)
      local v, err2 = gjson.get({}, c[1])
      assert.is_nil(v)
      assert.are.equal(c[2], err2)
    end)
  end
  it("a non-string path is a programmer error", function()
    assert.has_error(function() gjson.compile(1) end)
  end)
end)

describe("gjson plain paths", function()
  it("index objects and arrays directly", function()
    local doc = { body = { user = { name = "x" }, items = { { id = 7 }, { id = 8 } }, ["0"] = "zero" } }
    assert.are.equal("x", gjson.get(doc, "body.user.name"))
    assert.are.equal(8, gjson.get(doc, "body.items.1.id"))
    assert.are.equal("zero", gjson.get(doc, "body.0"))
    assert.is_nil(gjson.get(doc, "body.items.2.id"))
    assert.is_nil(gjson.get(doc, "body.user.name.len"))
    assert.is_nil(gjson.get("string", "len"))
    assert.is_nil(gjson.get(cjson.null, "a"))
    assert.is_nil(gjson.get(nil, "a"))
    assert.are.equal(cjson.null, gjson.get({ a = cjson.null }, "a"))
  end)
  it("reads gjson.get's cache", function()
    assert.are.equal(gjson.compiled("a.b"), gjson.compiled("a.b"))
  end)
  it("like matches gjson's wildcards", function()
    assert.is_true(gjson.like("hello", "h*o"))
    assert.is_true(gjson.like("hello", "h?llo"))
    assert.is_true(gjson.like("héllo", "h?llo"))
    assert.is_false(gjson.like("hello", "h?lo"))
    assert.is_true(gjson.like("a*b", "a\\*b"))
    assert.is_false(gjson.like("axb", "a\\*b"))
    assert.is_true(gjson.like("", "*"))
    assert.is_true(gjson.like("abcabc", "*abc"))
  end)
end)
