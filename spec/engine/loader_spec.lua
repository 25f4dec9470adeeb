-- spec/engine/loader_spec.lua: the spec loader (herald/loader.lua + herald/schema.lua) and the
-- YAML reader (engine/yaml.c).
--
-- In-process parts load the Lua modules straight from scripts/stdlib and engine/yaml.c built
-- into a small Lua module with the system C compiler (like Neovim's unit tests reach C
-- internals); end-to-end parts run the real binary's `herald lint`.
local SRC = os.getenv("HERALD_SOURCE_DIR") or "."
package.path = SRC .. "/scripts/stdlib/?.lua;" .. package.path

local stat = require "posix.sys.stat"
local dirent = require "posix.dirent"
local stdlib = require "posix.stdlib"

local loader = require "herald.loader"
local schema = require "herald.schema"

local FIX = "spec/fixtures/specs"

-- engine/yaml.c as a Lua module --------------------------------------------------------------

local yaml_load, yaml_why
do
  local dir = stdlib.mkdtemp("/tmp/herald-yaml-XXXXXX")
  local shim = dir .. "/shim.c"
  local f = assert(io.open(shim, "w"))
  f:write([[
#include <lua.h>
int herald__lua_yaml_load(lua_State *L);
int luaopen_herald_yaml_test(lua_State *L) {
  lua_pushcfunction(L, herald__lua_yaml_load);
  return 1;
}
]])
  f:close()
  local so = dir .. "/herald_yaml_test.so"
  local cmd = ("cc -std=gnu11 -O1 -shared -fPIC -I%s/engine $(pkg-config --cflags luajit yaml-0.1) "
               .. "%s/engine/yaml.c %s -o %s $(pkg-config --libs yaml-0.1) 2>&1"):format(SRC, SRC, shim, so)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  local open = package.loadlib(so, "luaopen_herald_yaml_test")
  if open then
    yaml_load = open()
  else
    yaml_why = "cannot build engine/yaml.c as a test module: " .. out
  end
  os.execute("rm -rf " .. dir)
end

local function need_yaml()
  if not yaml_load then
    pending(yaml_why)
    return false
  end
  return true
end

-- Real files, through luaposix (what herald.core does in C).
local disk = {
  stat = function(p)
    local st = stat.stat(p)
    if not st then return nil end
    if stat.S_ISDIR(st.st_mode) ~= 0 then return "dir" end
    if stat.S_ISREG(st.st_mode) ~= 0 then return "file" end
    return "other"
  end,
  list_dir = function(p)
    local out = {}
    for _, n in ipairs(dirent.dir(p)) do
      if n ~= "." and n ~= ".." then out[#out + 1] = n end
    end
    return out
  end,
  read_file = function(p)
    local f, e = io.open(p, "rb")
    if not f then return nil, e end
    local t = f:read("*a")
    f:close()
    return t
  end,
  yaml_load = function(...) return yaml_load(...) end,
}

-- Files held in memory: {["dir/a.yaml"] = "text", ...}; directories are implied by paths.
local function memfs(files)
  local fs = {}
  function fs.stat(p)
    if files[p] ~= nil then return "file" end
    for k in pairs(files) do
      if k:sub(1, #p + 1) == p .. "/" then return "dir" end
    end
    return nil
  end
  function fs.list_dir(p)
    local seen, out = {}, {}
    for k in pairs(files) do
      if k:sub(1, #p + 1) == p .. "/" then
        local n = k:sub(#p + 2):match("^[^/]+")
        if not seen[n] then seen[n] = true out[#out + 1] = n end
      end
    end
    return out
  end
  function fs.read_file(p)
    if files[p] == false then return nil, "permission denied" end
    return files[p]
  end
  fs.yaml_load = function(...) return yaml_load(...) end
  return fs
end

local function load(name)
  return loader.load({ FIX .. "/" .. name }, disk)
end

-- Messages with the fixture folder taken off, for short expectations.
local function strip(list)
  local out = {}
  for i, m in ipairs(list) do out[i] = (m:gsub(FIX:gsub("%p", "%%%0") .. "/", "")) end
  return out
end

---------------------------------------------------------------------------------------------

describe("yaml_load", function()
  it("types scalars like Kubernetes and keeps the text of numbers", function()
    if not need_yaml() then return end
    local docs, pos = yaml_load([[
a: "12000"
b: 08080
c: true
d: 'true'
e:
f: ~
g: 1.5e3
h: [x, null, 3]
i: |
  block
]], "t.yaml")
    local d = docs[1]
    assert.equal("12000", d.a)
    assert.equal(8080, d.b)
    assert.equal("08080", pos[d].keys.b.text)
    assert.is_true(d.c)
    assert.equal("true", d.d)
    assert.is_nil(d.e)
    assert.is_nil(d.f)
    assert.same({ line = 5, col = 1, vline = 5, vcol = 3 },
                { line = pos[d].keys.e.line, col = pos[d].keys.e.col,
                  vline = pos[d].keys.e.vline, vcol = pos[d].keys.e.vcol })
    assert.equal(1500, d.g)
    assert.equal(3, #d.h)
    assert.equal("userdata", type(d.h[2]))
    assert.equal(3, d.h[3])
    assert.equal("block\n", d.i)
    assert.same({ "a", "b", "c", "d", "e", "f", "g", "h", "i" }, pos[d].order)
    assert.same({ line = 8, col = 8 }, { line = pos[d.h].items[2].line, col = pos[d.h].items[2].col })
    assert.same({ line = 1, col = 1 }, { line = pos[d].line, col = pos[d].col })
  end)

  it("skips empty documents and reads JSON", function()
    if not need_yaml() then return end
    local docs, pos = yaml_load('---\n---\n{"a": [1, {"b": null}]}\n---\nx: 1\n...\n', "m.yaml")
    assert.equal(2, #docs)
    assert.equal(1, docs[1].a[1])
    assert.equal(1, docs[2].x)
    assert.same({ line = 3, col = 1 }, pos.documents[1])
    assert.same({ line = 5, col = 1 }, pos.documents[2])
    assert.same({}, yaml_load("", "e.yaml"))
  end)

  it("resolves anchors, aliases and merge keys", function()
    if not need_yaml() then return end
    local docs = yaml_load([[
base: &b {x: 1, y: 2}
derived:
  <<: *b
  y: 3
same: *b
]], "a.yaml")
    local d = docs[1]
    assert.same({ x = 1, y = 3 }, d.derived)
    assert.equal(d.base, d.same)
  end)

  it("rejects duplicate keys, unknown aliases and alias bombs", function()
    if not need_yaml() then return end
    assert.same({ nil, 'd.yaml:2:1: duplicate key "a" (first defined at line 1)' },
                { yaml_load("a: 1\na: 2\n", "d.yaml") })
    assert.same({ nil, 'd.yaml:1:4: unknown anchor "x" (an alias must follow its anchor)' },
                { yaml_load("a: *x\n", "d.yaml") })
    local lines = { "a0: &a0 [x, x, x, x, x, x, x, x, x, x]" }
    for i = 1, 9 do
      local prev = "*a" .. (i - 1)
      lines[#lines + 1] = ("a%d: &a%d [%s]"):format(i, i, (prev .. ", "):rep(9) .. prev)
    end
    local docs, err = yaml_load(table.concat(lines, "\n"), "bomb.yaml")
    assert.is_nil(docs)
    assert.matches("^bomb%.yaml:%d+:%d+: aliases expand to more than 100000 nodes", err)
  end)
end)

describe("loader", function()
  it("reports malformed YAML with file:line:col", function()
    if not need_yaml() then return end
    assert.same({ "yaml-unclosed-bracket.yaml:7:11: did not find expected ',' or ']' while parsing a flow sequence (started at line 6, column 17)" },
                strip(load("yaml-unclosed-bracket.yaml").errors))
    assert.same({ "yaml-bad-indent.yaml:5:13: mapping values are not allowed in this context" },
                strip(load("yaml-bad-indent.yaml").errors))
    assert.same({ "yaml-tab.yaml:4:1: found character that cannot start any token (a tab character; YAML indentation must use spaces) while scanning for the next token" },
                strip(load("yaml-tab.yaml").errors))
  end)

  it("names an unknown kind and lists the valid ones (another kind of object is skipped)", function()
    if not need_yaml() then return end
    local r = load("unknown-kind.yaml")
    assert.same({
      'unknown-kind.yaml:8:7: kind: unknown kind "Eventsource" (did you mean EventSource?); Herald loads EventSource, Sensor, EventBus',
    }, strip(r.errors))
    assert.same({
      'unknown-kind.yaml:1:1: Workflow "wf" (argoproj.io/v1alpha1): skipped; Herald runs EventSource, Sensor, EventBus',
    }, strip(r.infos))
    assert.equal(0, #r.objects)
  end)

  it("rejects a wrong apiVersion", function()
    if not need_yaml() then return end
    assert.same({ 'wrong-apiversion.yaml:1:13: apiVersion: must be argoproj.io/v1alpha1 (got "argoproj.io/v1beta1")' },
                strip(load("wrong-apiversion.yaml").errors))
  end)

  it("requires metadata.name and checks it is a Kubernetes name", function()
    if not need_yaml() then return end
    assert.same({
      "missing-name.yaml:4:3: metadata.name: required",
      "missing-name.yaml:18:9: metadata.name: must be a valid Kubernetes name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters (got \"Bad_Name\")",
    }, strip(load("missing-name.yaml").errors))
  end)

  it("reports missing required fields at the enclosing mapping", function()
    if not need_yaml() then return end
    assert.same({
      'missing-required.yaml:8:7: spec.webhook.example.port: required: add port: "12000" (the port this endpoint listens on) under spec.webhook.example; without it Herald takes the port from spec.service.ports, which holds none here',
      "missing-required.yaml:18:7: spec.calendar.tick: needs one of schedule, interval",
      "missing-required.yaml:26:7: spec.dependencies[0].eventSourceName: required",
      "missing-required.yaml:32:11: spec.triggers[0].template.http.url: required",
    }, strip(load("missing-required.yaml").errors))
  end)

  it("suggests the field a misspelled one was meant to be", function()
    if not need_yaml() then return end
    assert.same({
      "misspelled.yaml:8:7: spec.dependencies[0].eventSourceNmae: unknown field; did you mean eventSourceName?",
      "misspelled.yaml:19:9: spec.triggers[0].template.htpp: unknown field; did you mean http?",
    }, strip(load("misspelled.yaml").errors))
    -- a field that differs only in case is read as Argo (Go's JSON decoding) reads it, with a warning
    assert.same({
      "misspelled.yaml:12:9: spec.dependencies[0].filters.Data: field names are case-sensitive: this is data (Argo Events reads it because Go's JSON decoding ignores case); write data",
      'misspelled.yaml:7:7: spec.dependencies[0]: no loaded EventSource "es" defines event "example" (it may run elsewhere)',
    }, strip(load("misspelled.yaml").warnings))
  end)

  it("refuses Argo fields Herald does not support yet, never ignoring them", function()
    if not need_yaml() then return end
    assert.same({
      "unsupported.yaml:6:3: spec.pulsar: not supported by Herald yet (Pulsar event source)",
      "unsupported.yaml:29:9: spec.triggers[0].template.openWhisk: not supported by Herald yet (OpenWhisk triggers)",
    }, strip(load("unsupported.yaml").errors))
  end)

  it("checks a git source's remote: a valid name and at least one URL", function()
    if not need_yaml() then return end
    assert.same({
      'git-remote.yaml:20:23: spec.triggers[0].template.k8s.source.git.remote.name: not a valid git remote name: my fork',
      "git-remote.yaml:32:23: spec.triggers[1].template.k8s.source.git.remote.urls: must not be empty",
    }, strip(load("git-remote.yaml").errors))
  end)

  it("accepts a field as soon as its one supported flag flips", function()
    if not need_yaml() then return end
    local f = schema.types.TriggerTemplate.fields.openWhisk
    local saved = f.supported
    f.supported = true
    local ok, r = pcall(load, "unsupported.yaml")
    f.supported = saved
    assert.is_true(ok, r)
    for _, e in ipairs(r.errors) do assert.not_matches("openWhisk", e) end
    assert.equal(1, #r.errors)
  end)

  it("reports wrong types at the value and turns numbers into the text Argo expects", function()
    if not need_yaml() then return end
    local r = load("wrong-types.yaml")
    assert.same({
      "wrong-types.yaml:9:17: spec.webhook.example.endpoint: expected string, got sequence",
      "wrong-types.yaml:11:23: spec.webhook.example.maxPayloadSize: expected integer, got string",
      'wrong-types.yaml:13:13: spec.webhook.other.port: must be a port number from 1 to 65535 (got "70000")',
      'wrong-types.yaml:14:17: spec.webhook.other.endpoint: must start with "/" (got "other")',
      "wrong-types.yaml:23:5: spec.dependencies: expected sequence, got mapping",
      "wrong-types.yaml:29:20: spec.triggers[0].template.http.timeout: expected integer, got 1.5",
      "wrong-types.yaml:31:18: spec.triggers[0].template.http.headers.X-A: expected string, got sequence",
    }, strip(r.errors))
    assert.equal("12000", r.objects[1].doc.spec.webhook.example.port)
  end)

  it("checks enum values and hints at the right case", function()
    if not need_yaml() then return end
    assert.same({
      'enums.yaml:10:31: spec.dependencies[0].filtersLogicalOperator: must be one of and, or (got "AND"); did you mean and?',
      'enums.yaml:14:19: spec.dependencies[0].filters.data[0].type: must be one of string, number, bool (got "integer")',
      'enums.yaml:16:25: spec.dependencies[0].filters.data[0].comparator: must be one of >=, >, =, !=, <, <= (got "=>")',
      'enums.yaml:22:19: spec.triggers[0].template.http.method: must be one of GET, DELETE, PATCH, POST, PUT (got "post"); did you mean POST?',
      'enums.yaml:28:22: spec.triggers[0].parameters[0].operation: must be one of overwrite, append, prepend (got "replace")',
    }, strip(load("enums.yaml").errors))
  end)

  it("rejects duplicate event, dependency, trigger and object names", function()
    if not need_yaml() then return end
    local r = load("duplicates.yaml")
    assert.same({
      'duplicates.yaml:14:5: spec.sns.example: event name "example" is already used by spec.webhook.example (event names must be unique across all types in one EventSource)',
      'duplicates.yaml:28:13: spec.dependencies[1].name: duplicate dependency name "dep" (also spec.dependencies[0])',
      'duplicates.yaml:36:15: spec.triggers[1].template.name: duplicate trigger name "t" (also spec.triggers[0])',
      'duplicates.yaml:42:9: metadata.name: Sensor "sensor" is already defined at duplicates.yaml:19:1',
    }, strip(r.errors))
    assert.equal(2, #r.objects)
  end)

  it("checks conditions and the one-trigger-type rule", function()
    if not need_yaml() then return end
    assert.same({
      "conditions.yaml:29:9: spec.triggers[3].template.http: only one of http and log may be set",
      "conditions.yaml:32:9: spec.triggers[4].template: needs one of k8s, argoWorkflow, http, awsLambda, custom, kafka, nats, slack, openWhisk, log, azureEventHubs, pulsar, azureServiceBus, email, grpc, lua",
      'conditions.yaml:20:21: spec.triggers[1].template.conditions: unknown dependency "dep-c"; did you mean dep-a? (defined: dep-a, dep-b)',
      "conditions.yaml:24:21: spec.triggers[2].template.conditions: invalid expression: missing ')' for the '(' at column 1",
    }, strip(load("conditions.yaml").errors))
  end)

  it("parses condition expressions", function()
    local names = assert(loader.parse_conditions("(dep-01 || dep_2) && d.3"))
    assert.same({ "dep-01", "dep_2", "d.3" }, { names[1].name, names[2].name, names[3].name })
    assert.same({ nil, "'&' at column 3: use &&" }, { loader.parse_conditions("a & b") })
    assert.same({ nil, "expected a dependency name, found the end" }, { loader.parse_conditions("a ||") })
    assert.same({ nil, "unexpected 'b' at column 3" }, { loader.parse_conditions("a b") })
  end)

  it("loads every document of a multi-document file", function()
    if not need_yaml() then return end
    local r = load("multi-doc.yaml")
    assert.same({}, r.errors)
    assert.same({}, r.warnings)
    local got = {}
    for _, o in ipairs(r.objects) do
      got[#got + 1] = table.concat({ o.kind, o.name, o.namespace or "-", tostring(o.line) }, " ")
    end
    assert.same({ "EventSource es - 2", "Sensor sensor team-a 14", "EventSource cal - 30" }, got)
  end)

  it("walks directories recursively, sorted, skipping dot entries and other extensions", function()
    if not need_yaml() then return end
    local r = load("tree")
    local files = {}
    for _, o in ipairs(r.objects) do files[#files + 1] = o.file:sub(#FIX + 2) end
    assert.same({ "tree/a/eventsource.yaml", "tree/b/c/sensor.yml", "tree/b/eventbus.json" }, files)
    assert.same({}, strip(r.errors)) -- the managed JetStream EventBus in b/ is valid
  end)

  it("warns when no loaded EventSource defines a dependency's event", function()
    if not need_yaml() then return end
    local r = load("unknown-event-source.yaml")
    assert.same({}, r.errors)
    assert.same({
      'unknown-event-source.yaml:21:7: spec.dependencies[1]: no loaded EventSource "es" defines event "missing" (it may run elsewhere)',
      'unknown-event-source.yaml:24:7: spec.dependencies[2]: no loaded EventSource "github" defines event "push" (it may run elsewhere)',
    }, strip(r.warnings))
  end)

  it("loads the Argo webhook example clean", function()
    if not need_yaml() then return end
    local r = load("argo-webhook")
    assert.same({}, r.errors)
    assert.same({}, r.warnings)
    assert.equal(2, #r.objects)
    assert.same({ "EventSource", "webhook-example" }, { r.objects[1].kind, r.objects[1].name })
    assert.same({ "Sensor", "webhook-sensor" }, { r.objects[2].kind, r.objects[2].name })
    assert.equal(2, #r.notes) -- spec.service and spec.template are deployment-only
    r = loader.load({ SRC .. "/examples/quickstart" }, disk)
    assert.same({}, r.errors)
  end)

  it("warns (Argo would refuse) when one EventSource mixes webhook and calendar", function()
    if not need_yaml() then return end
    local r = load("mixed-ha.yaml")
    assert.same({}, r.errors)
    assert.same({ "mixed-ha.yaml:11:3: spec.calendar: Argo Events refuses spec.webhook and spec.calendar in one EventSource (it runs webhook sources on every replica and calendar sources on one elected leader); put them in separate EventSources to stay portable" },
                strip(r.warnings))
  end)

  it("reports paths that are missing or unreadable", function()
    if not need_yaml() then return end
    local r = loader.load({ "nope", "d" }, memfs({ ["d/a.yaml"] = false, ["d/b.txt"] = "x" }))
    assert.same({ "nope: no such file or directory", "d/a.yaml: cannot read: permission denied" }, r.errors)
  end)

  it("gives positions to the code that compiles sensors", function()
    if not need_yaml() then return end
    local r = load("argo-webhook/webhook-sensor.yaml")
    local obj = r.objects[1]
    local filter = obj.doc.spec.dependencies[1].filters.data[1]
    assert.same({ 14, 13 }, { loader.position(obj.pos, filter, "path") })
    assert.same({ 14, 19 }, { loader.value_position(obj.pos, filter, "path") })
    assert.same({ 14, 13 }, { loader.position(obj.pos, filter) })
    assert.equal(FIX .. "/argo-webhook/webhook-sensor.yaml:17:17: spec.dependencies[0].filters.data[0].value[0]: bad regexp",
                 loader.error_at(obj, filter.value, 1, "spec.dependencies[0].filters.data[0].value[0]", "bad regexp"))
    assert.equal("f.yaml:3:4: a.b: boom", loader.format_error("f.yaml", 3, 4, "a.b", "boom"))
    assert.equal("f.yaml: boom", loader.format_error("f.yaml", nil, nil, nil, "boom"))
  end)
end)

describe("schema", function()
  it("knows all 32 EventSource types and every trigger type", function()
    local n, supported = 0, {}
    for name, f in pairs(schema.event_source_spec.fields) do
      if f.source_type and not f.extension then n = n + 1 end -- Argo's (not Herald's own)
      if f.source_type and f.supported then supported[#supported + 1] = name end
    end
    table.sort(supported)
    assert.equal(32, n)
    -- the supported ones are exactly the folders under sources/ (herald.registry)
    local folders = {}
    for _, e in ipairs(require("herald.registry").sources) do folders[#folders + 1] = e.name end
    assert.same(folders, supported)
    for _, t in ipairs(schema.TRIGGER_TYPES) do
      assert.is_table(schema.types.TriggerTemplate.fields[t], t)
    end
  end)
end)

describe("herald lint", function()
  local H, bin_ok
  setup(function()
    local ok, h = pcall(require, "helpers.herald")
    H = ok and h or nil
    bin_ok = H and io.open(H.bin, "rb") ~= nil
  end)

  local function need_bin()
    if not bin_ok then
      pending("no herald binary (set HERALD_BIN)")
      return false
    end
    return true
  end

  it("exits 1 and prints each error on its own line", function()
    if not need_bin() then return end
    local code, out, err = H.run { "lint", SRC .. "/" .. FIX .. "/missing-required.yaml" }
    assert.equal(1, code)
    assert.equal("", out)
    local lines = {}
    for l in err:gmatch("[^\n]+") do lines[#lines + 1] = (l:gsub("^.*" .. FIX:gsub("%p", "%%%0") .. "/", "")) end
    assert.same({
      'missing-required.yaml:8:7: spec.webhook.example.port: required: add port: "12000" (the port this endpoint listens on) under spec.webhook.example; without it Herald takes the port from spec.service.ports, which holds none here',
      "missing-required.yaml:18:7: spec.calendar.tick: needs one of schedule, interval",
      "missing-required.yaml:26:7: spec.dependencies[0].eventSourceName: required",
      "missing-required.yaml:32:11: spec.triggers[0].template.http.url: required",
    }, lines)
  end)

  it("reports YAML syntax errors through the engine's parser", function()
    if not need_bin() then return end
    local dir = H.tmpdir()
    H.write(dir .. "/x.yaml", "a: [1, 2\nb: 3\n")
    local code, _, err = H.run { "lint", dir .. "/x.yaml" }
    assert.equal(1, code)
    assert.equal(dir .. "/x.yaml:2:2: did not find expected ',' or ']' while parsing a flow sequence (started at line 1, column 4)\n", err)
  end)

  it("passes the Argo webhook example, printing warnings but exiting 0", function()
    if not need_bin() then return end
    local code, out = H.run { "lint", SRC .. "/" .. FIX .. "/argo-webhook" }
    assert.equal(0, code)
    assert.equal("2 object(s) valid\n", out)
    local code2, _, err2 = H.run { "lint", SRC .. "/" .. FIX .. "/unknown-event-source.yaml" }
    assert.equal(0, code2)
    assert.matches('no loaded EventSource "github" defines event "push" %(it may run elsewhere%)', err2)
  end)
end)
