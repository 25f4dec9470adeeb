-- spec/stdlib/sjson_spec.lua: herald.sjson against sjson_test.go and sjson's README, on
-- values decoded as Herald decodes events (compared as JSON text with sorted keys).
require "helpers.stdlib"
local cjson = require "cjson"
local hjson = require "herald.json" -- decodes as Herald does: empty arrays marked
local gjson = require "herald.gjson"
local sjson = require "herald.sjson"

local function set(json, path, value)
  local doc = json and json ~= "" and hjson.decode(json) or nil
  local out, err = sjson.set(doc, path, value)
  if out == nil and err then return "ERR " .. err end
  return gjson.raw(out)
end

local function check(cases)
  for _, c in ipairs(cases) do
    local want, json, path, value = c[1], c[2], c[3], c[4]
    it(path .. " on " .. tostring(json), function()
      if not want:find("^ERR") then want = gjson.raw(hjson.decode(want)) end -- sorted keys
      assert.are.equal(want, set(json, path, value))
    end)
  end
end

local NULL = cjson.null

describe("sjson_test.go TestBasic", function()
  check({
    { '[{"hi":"world","hiw":"planet"}]', '[{"hi":"world"}]', "0.hiw", "planet" },
    { "[true]", nil, "0", true },
    { "[null,true]", nil, "1", true },
    { "[1,null,true]", "[1]", "2", true },
    { "[1,true,false]", "[1,null,false]", "1", true },
    { '[1,{"hello":"when","this":[0,1,2]},false]', '[1,{"hello":"when","this":[0,null,2]},false]', "1.this.1", 1 },
    { '{"a":1,"b":{"hello":"when","this":[0,1,2]},"c":false}',
      '{"a":1,"b":{"hello":"when","this":[0,null,2]},"c":false}', "b.this.1", 1 },
    { '{"a":1,"b":{"hello":"when","this":[0,null,2,null,4]},"c":false}',
      '{"a":1,"b":{"hello":"when","this":[0,null,2]},"c":false}', "b.this.4", 4 },
    { '{"b":{"this":[null,null,null,null,4]}}', nil, "b.this.4", 4 },
    { '[null,{"this":[null,null,null,null,4]}]', nil, "1.this.4", 4 },
    { '{"1":{"this":[null,null,null,null,4]}}', nil, ":1.this.4", 4 },
    { '{":1":{"this":[null,null,null,null,4]}}', nil, "\\:1.this.4", 4 },
    { '{":\\\\1":{"this":[null,null,null,null,{".HI":4}]}}', nil, "\\:\\\\1.this.4.\\.HI", 4 },
    { '{"app.token":"cde"}', '{"app.token":"abc"}', "app\\.token", "cde" },
    { '{"b":{"this":{"\240\159\152\135":""}}}', nil, "b.this.\240\159\152\135", "" },
    { "[1,2,3]", "[ 1,2  ]", "-1", 3 },
    { "[1234]", nil, "0", 1234 },
    { "[1234.5]", nil, "0", 1234.5 },
    { '["1234.5"]', nil, "0", "1234.5" },
    { "[null]", nil, "0", NULL },
    { "[null]", nil, "0", nil },
    { '{"arr":[1]}', nil, "arr.-1", 1 },
    { '{"a":"\\\\"}', nil, "a", "\\" },
    { '{"a":"C:\\\\Windows\\\\System32"}', nil, "a", "C:\\Windows\\System32" },
  })
end)

describe("sjson README", function()
  local doc = '{"name":{"first":"Tom","last":"Anderson"},"age":37,"children":["Sara","Alex","Jack"],'
    .. '"friends":[{"first":"James","last":"Murphy"},{"first":"Roger","last":"Craig"}]}'
  check({
    { '{"name":{"last":"Anderson"}}', "", "name.last", "Anderson" },
    { '{"name":{"first":"Sara","last":"Anderson"}}', '{"name":{"last":"Anderson"}}', "name.first", "Sara" },
    { '{"name":{"last":"Smith"}}', '{"name":{"last":"Anderson"}}', "name.last", "Smith" },
    { '{"friends":["Andy","Carol","Sara"]}', '{"friends":["Andy","Carol"]}', "friends.2", "Sara" },
    { '{"friends":["Andy","Carol","Sara"]}', '{"friends":["Andy","Carol"]}', "friends.-1", "Sara" },
    { '{"friends":["Andy","Carol",null,null,"Sara"]}', '{"friends":["Andy","Carol"]}', "friends.4", "Sara" },
    { '{"age":38,"name":{"first":"Tom","last":"Anderson"}}', '{"name":{"first":"Tom","last":"Anderson"},"age":37}',
      "age", 38 },
    { '{"key":{"data":[1,2]}}', "{}", "key", { data = { 1, 2 } } },
    { doc:gsub('"Craig"', '"Jones"'), doc, "friends.1.last", "Jones" },
  })
end)

describe("sjson creation rules", function()
  check({
    { '{"a":{"b":{"c":1}}}', nil, "a.b.c", 1 },
    { '{"a":[[1]]}', nil, "a.0.0", 1 },
    { '{"a":[{"b":1}]}', nil, "a.-1.b", 1 },
    { '{"a":{"-1":1}}', '{"a":{}}', "a.-1", 1 }, -- {} is an object ([] decodes marked): a key
    { '{"a":[1]}', '{"a":[]}', "a.-1", 1 },
    { '{"a":[null,1]}', '{"a":[]}', "a.1", 1 },
    { '{"a":{"x":1}}', '{"a":{}}', "a.x", 1 },
    { '{"a":{"0":1,"b":2}}', '{"a":{"b":2}}', "a.0", 1 }, -- numeric key on an object
    { '{"a":{"b":1}}', '{"a":"scalar"}', "a.b", 1 }, -- a scalar in the way is replaced
    { '{"a":[1]}', '{"a":5}', "a.0", 1 },
    { '{"-1":1}', nil, "-1", 1 },
    { '{"a":{"b":[null,null,"x"]}}', '{"a":{}}', "a.b.2", "x" },
    { '{"a":{"b":"c"}}', '{"a":1}', "a", { b = "c" } },
    { "ERR cannot set array element for non-numeric key 'x'", '{"a":[1]}', "a.x", 1 },
    { "ERR cannot set array element for non-numeric key 'x'", "[1]", "x", 1 },
    { "ERR cannot set array element for non-numeric key '1'", "[1]", ":1", 1 },
  })
  it("returns a new doc when doc was not a table", function()
    assert.are.same({ a = 1 }, sjson.set(nil, "a", 1))
    assert.are.same({ a = 1 }, sjson.set("x", "a", 1))
  end)
  it("mutates and returns the same table", function()
    local doc = { a = {} }
    assert.are.equal(doc, sjson.set(doc, "a.b", 2))
    assert.are.equal(2, doc.a.b)
  end)
  it("rejects an empty path", function()
    local fn, err = sjson.compile("")
    assert.is_nil(fn)
    assert.are.equal("path cannot be empty", err)
  end)
end)

describe("sjson complex paths", function()
  local example = [[{"name":{"first":"Tom","last":"Anderson"},"age":37,"children":["Sara","Alex","Jack"],
    "fav.movie":"Deer Hunter","friends":[
    {"first":"Dale","last":"Murphy","age":44,"nets":["ig","fb","tw"]},
    {"first":"Roger","last":"Craig","age":68,"nets":["fb","tw"]},
    {"first":"Jane","last":"Murphy","age":47,"nets":["ig","tw"]}]}]]
  local function after(path, value, read)
    local doc = hjson.decode(example)
    doc = sjson.set(doc, path, value)
    return gjson.string(gjson.get(doc, read))
  end
  it("TestIndex: query, first match", function()
    assert.are.equal('["Johnson","Craig","Murphy"]', after('friends.#(last="Murphy").last', "Johnson", "friends.#.last"))
  end)
  it("TestIndexes: query, all matches", function()
    assert.are.equal('["Johnson","Craig","Johnson"]', after('friends.#(last="Murphy")#.last', "Johnson", "friends.#.last"))
  end)
  it("#. projection sets every element", function()
    assert.are.equal('[1,1,1]', after("friends.#.age", 1, "friends.#.age"))
  end)
  it("wildcard sets the first matching key", function()
    assert.are.equal("Bob", after("name.f*", "Bob", "name.first"))
  end)
  it("nested query", function()
    assert.are.equal('["x","x","Jane"]', after('friends.#(nets.#(=="fb"))#.first', "x", "friends.#.first"))
  end)
  it("value-only query replaces the element", function()
    assert.are.equal('["Sara","Al","Jack"]', after('children.#(=="Alex")', "Al", "children"))
  end)
  it("no match leaves the document unchanged", function()
    assert.are.equal('["Dale","Roger","Jane"]', after('friends.#(last="Nobody").first', "x", "friends.#.first"))
    assert.are.equal("Tom", after('name.f*.x', "x", "name.first"))
  end)
  it("a query whose sub path does not exist changes nothing (sjson needs an existing value)", function()
    assert.are.equal("", after('friends.#(last="Craig").middle', "x", "friends.1.middle"))
  end)
  it("computed results (pipes, modifiers, counts, multipaths) change nothing", function()
    assert.are.equal('["Sara","Alex","Jack"]', after("children|0", "x", "children"))
    assert.are.equal('["Sara","Alex","Jack"]', after("children.@reverse", "x", "children"))
    assert.are.equal("3", after("friends.#", 9, "friends.#"))
    assert.are.equal("Tom", after("[name.first]", "x", "name.first"))
  end)
  it("Argo's workflow parameter dest", function()
    local wf = hjson.decode([[{"spec":{"arguments":{"parameters":[{"name":"other","value":"a"},
      {"name":"message","value":"hello world"}]}}}]])
    local set = assert(sjson.compile('spec.arguments.parameters.#(name=="message").value'))
    wf = set(wf, "from the event")
    assert.are.equal("from the event", wf.spec.arguments.parameters[2].value)
    assert.are.equal("a", wf.spec.arguments.parameters[1].value)
  end)
  it("TestIssue61: @ in keys that are not modifiers", function()
    local doc = hjson.decode('{"@context":{"rdfs":"x","@vocab":"http://schema.org/"}}')
    doc = sjson.set(doc, "@context.@vocab", "newval")
    assert.are.equal("newval", doc["@context"]["@vocab"])
  end)
  it("copies table values set in several places", function()
    local doc = hjson.decode(example)
    local v = { x = 1 }
    doc = sjson.set(doc, "friends.#.extra", v)
    assert.are.equal(nil, doc.friends[1].extra) -- .extra does not exist: nothing to replace
    doc = sjson.set(doc, "friends.#.nets", v)
    assert.are.same(v, doc.friends[2].nets)
    assert.are_not.equal(doc.friends[1].nets, doc.friends[2].nets)
  end)
  it("reports query errors with their column", function()
    local fn, err = sjson.compile("a.#(b==1")
    assert.is_nil(fn)
    assert.are.equal("unterminated query at column 3", err)
  end)
end)
