-- spec/peers/kube_apiserver_spec.lua: the fake Kubernetes API server itself
-- (spec/peers/kube-apiserver.js), checked against the REST conventions Herald and kubectl use.
local H = require "helpers.herald"
local K = require "triggers.k8s.kube_helper"
local cjson = require "cjson"

local CMS = "/api/v1/namespaces/default/configmaps"

local function cm(name, data, labels)
  return { apiVersion = "v1", kind = "ConfigMap", metadata = { name = name, labels = labels }, data = data }
end

describe("fake kube-apiserver", function()
  if not K.has_tools() then
    pending("node, openssl and curl are needed for the fake Kubernetes API server")
    return
  end
  local srv
  setup(function() srv = K.start() end)

  it("serves discovery and /version", function()
    local st, v = srv:api("GET", "/version")
    assert.equal(200, st)
    assert.equal("1", v.major)
    st, v = srv:api("GET", "/api")
    assert.same({ "v1" }, v.versions)
    st, v = srv:api("GET", "/apis")
    local names = {}
    for _, g in ipairs(v.groups) do names[g.name] = g.preferredVersion.groupVersion end
    assert.equal("argoproj.io/v1alpha1", names["argoproj.io"])
    assert.equal("apps/v1", names.apps)
    st, v = srv:api("GET", "/apis/argoproj.io/v1alpha1")
    assert.equal("APIResourceList", v.kind)
    local byname = {}
    for _, r in ipairs(v.resources) do byname[r.name] = r end
    assert.equal("Workflow", byname.workflows.kind)
    assert.is_true(byname.workflows.namespaced)
    assert.is_false(byname.clusterworkflowtemplates.namespaced)
    assert.equal("EventBus", byname.eventbus.kind)
    assert.truthy(byname["sensors/status"])
    st, v = srv:api("GET", "/api/v1")
    byname = {}
    for _, r in ipairs(v.resources) do byname[r.name] = r end
    assert.is_false(byname.namespaces.namespaced)
    assert.same({ "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch" }, byname.configmaps.verbs)
    st = srv:api("GET", "/apis/nope.example.com/v1")
    assert.equal(404, st)
  end)

  it("creates, reads, replaces and deletes, with server-owned metadata", function()
    local o = srv:create(CMS, cm("crud", { a = "1" }))
    assert.truthy(o.metadata.uid)
    assert.truthy(o.metadata.creationTimestamp:match("^%d+%-%d+%-%d+T%d+:%d+:%d+Z$"))
    assert.equal(1, o.metadata.generation)
    local rv = tonumber(o.metadata.resourceVersion)
    o.data.a = "2"
    local st, u = srv:api("PUT", CMS .. "/crud", o)
    assert.equal(200, st)
    assert.is_true(tonumber(u.metadata.resourceVersion) > rv)
    assert.equal(o.metadata.uid, u.metadata.uid)
    assert.equal(2, u.metadata.generation)
    -- a stale resourceVersion is a 409 Conflict
    st, u = srv:api("PUT", CMS .. "/crud", o)
    assert.equal(409, st)
    assert.equal("Conflict", u.reason)
    assert.truthy(u.message:find("the object has been modified", 1, true))
    st, u = srv:api("DELETE", CMS .. "/crud")
    assert.equal(200, st)
    local _, code = srv:get(CMS .. "/crud")
    assert.equal(404, code)
  end)

  it("answers errors with Status objects in the Kubernetes shape", function()
    local st, s = srv:api("GET", CMS .. "/missing")
    assert.equal(404, st)
    assert.same({ kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
      message = 'configmaps "missing" not found', reason = "NotFound", code = 404,
      details = { name = "missing", kind = "configmaps" } }, s)
    st, s = srv:api("GET", "/apis/argoproj.io/v1alpha1/namespaces/default/workflows/missing")
    assert.equal('workflows.argoproj.io "missing" not found', s.message)
    assert.equal("argoproj.io", s.details.group)
    srv:create(CMS, cm("twice"))
    st, s = srv:api("POST", CMS, cm("twice"))
    assert.equal(409, st)
    assert.equal("AlreadyExists", s.reason)
    st, s = srv:api("POST", CMS, cm("Bad_Name"))
    assert.equal(422, st)
    assert.equal("Invalid", s.reason)
    assert.equal("metadata.name", s.details.causes[1].field)
    st, s = srv:api("POST", "/api/v1/namespaces/nowhere/configmaps", cm("x"))
    assert.equal(404, st)
    assert.equal('namespaces "nowhere" not found', s.message)
    st, s = srv:api("POST", CMS, "{not json")
    assert.equal(400, st)
    assert.equal("BadRequest", s.reason)
  end)

  it("generates names from generateName", function()
    local o = srv:create(CMS, { apiVersion = "v1", kind = "ConfigMap", metadata = { generateName = "gen-" } })
    assert.truthy(o.metadata.name:match("^gen%-%w%w%w%w%w$"), o.metadata.name)
  end)

  it("lists with label and field selectors", function()
    srv:create(CMS, cm("sel-a", nil, { app = "web", tier = "front" }))
    srv:create(CMS, cm("sel-b", nil, { app = "web", tier = "back" }))
    srv:create(CMS, cm("sel-c", nil, { app = "db" }))
    local function names(sel)
      local st, l = srv:api("GET", CMS .. "?labelSelector=" .. sel)
      assert.equal(200, st, cjson.encode(l))
      local t = {}
      for _, i in ipairs(l.items) do if i.metadata.name:match("^sel") then t[#t + 1] = i.metadata.name end end
      return table.concat(t, ",")
    end
    assert.equal("sel-a,sel-b", names("app%3Dweb"))
    assert.equal("sel-b,sel-c", names("tier!%3Dfront,app"))
    assert.equal("sel-a", names("tier%20in%20(front,x)"))
    assert.equal("sel-a,sel-b", names("app%20notin%20(db)"))
    assert.equal("sel-a", names("tier%20in%20(front,x),app%20notin%20(db)"))
    assert.equal("sel-c", names("!tier,app"))
    assert.equal("sel-a,sel-b,sel-c", names("app"))
    local st, l = srv:api("GET", CMS .. "?fieldSelector=metadata.name%3Dsel-b")
    assert.equal(1, #l.items)
    assert.equal("ConfigMapList", l.kind)
    assert.truthy(l.metadata.resourceVersion)
  end)

  it("applies merge, JSON and strategic-merge patches", function()
    srv:create(CMS, cm("pt", { a = "1", b = "2" }))
    local st, o = srv:api("PATCH", CMS .. "/pt", { data = { a = cjson.null, c = "3" } }, "application/merge-patch+json")
    assert.equal(200, st)
    assert.same({ b = "2", c = "3" }, o.data)
    st, o = srv:api("PATCH", CMS .. "/pt", { { op = "replace", path = "/data/b", value = "20" },
      { op = "add", path = "/metadata/labels", value = { x = "y" } } }, "application/json-patch+json")
    assert.equal(200, st)
    assert.equal("20", o.data.b)
    assert.equal("y", o.metadata.labels.x)
    st, o = srv:api("PATCH", CMS .. "/pt", { { op = "remove", path = "/data/nope" } }, "application/json-patch+json")
    assert.equal(422, st)
    st, o = srv:api("PATCH", CMS .. "/pt", { data = { d = "4" } }, "application/strategic-merge-patch+json")
    assert.equal(200, st)
    assert.equal("4", o.data.d)
    st = srv:api("PATCH", CMS .. "/absent", { data = {} }, "application/merge-patch+json")
    assert.equal(404, st)
  end)

  it("keeps status apart on kinds with a status subresource", function()
    local path = "/apis/argoproj.io/v1alpha1/namespaces/default/sensors"
    local o = srv:create(path, { apiVersion = "argoproj.io/v1alpha1", kind = "Sensor", metadata = { name = "sn" },
      spec = { x = 1 }, status = { ignored = true } })
    assert.is_nil(o.status)
    local st, s = srv:api("PUT", path .. "/sn/status", { metadata = { name = "sn" }, status = { conditions = { { type = "Ready" } } } })
    assert.equal(200, st)
    assert.equal("Ready", s.status.conditions[1].type)
    assert.equal(1, s.spec.x)
    st, s = srv:api("PATCH", path .. "/sn", { spec = { x = 2 }, status = { conditions = cjson.null } }, "application/merge-patch+json")
    assert.equal(2, s.spec.x)
    assert.equal(2, s.metadata.generation)
    assert.equal("Ready", s.status.conditions[1].type)
  end)

  it("streams watch events from a resourceVersion and for what exists", function()
    local base = srv:create(CMS, cm("w-first"))
    local function watch(query)
      return H.spawn("curl", { "-sN", "--cacert", srv.tls .. "/ca.crt", "--cert", srv.tls .. "/client.crt",
        "--key", srv.tls .. "/client.key", srv.url .. CMS .. "?watch=true&timeoutSeconds=10" .. query })
    end
    local from_now = watch("&resourceVersion=" .. base.metadata.resourceVersion .. "&labelSelector=w%3D1")
    local all = watch("")
    all:wait_for('"name":"w-first"', { stream = "stdout" })
    srv:create(CMS, cm("w-second", nil, { w = "1" }))
    srv:api("PATCH", CMS .. "/w-second", { data = { k = "v" } }, "application/merge-patch+json")
    srv:api("PATCH", CMS .. "/w-second", { metadata = { labels = { w = "2" } } }, "application/merge-patch+json")
    srv:api("DELETE", CMS .. "/w-first")
    all:wait_for('"type":"DELETED"', { stream = "stdout" })
    local function types(p)
      local t = {}
      for _, line in ipairs(p:lines("stdout")) do
        local ev = cjson.decode(line)
        t[#t + 1] = ev.type .. ":" .. ev.object.metadata.name
      end
      return table.concat(t, " ")
    end
    from_now:wait_for('"type":"DELETED"', { stream = "stdout" })
    -- leaving the selector reads as DELETED for that watcher
    assert.equal("ADDED:w-second MODIFIED:w-second DELETED:w-second", types(from_now))
    local seen = types(all)
    assert.truthy(seen:find("ADDED:w-first", 1, true), seen)
    assert.truthy(seen:find("ADDED:w-second MODIFIED:w-second MODIFIED:w-second DELETED:w-first", 1, true), seen)
    from_now:kill()
    all:kill()
  end)

  it("requires the token or a client certificate", function()
    local code = io.popen(("curl -s -o /dev/null -w '%%{http_code}' --cacert %s %s/api/v1/namespaces"):format(
      K.quote(srv.tls .. "/ca.crt"), srv.url)):read("*a")
    assert.equal("401", code)
    code = io.popen(("curl -s -o /dev/null -w '%%{http_code}' -H 'Authorization: Bearer %s' --cacert %s %s/api/v1/namespaces"):format(
      srv.token, K.quote(srv.tls .. "/ca.crt"), srv.url)):read("*a")
    assert.equal("200", code)
  end)

  it("answers 403 for what --forbid lists", function()
    local s2 = K.start{ args = { "--forbid", "create:configmaps" } }
    local st, s = s2:api("POST", CMS, cm("no"))
    assert.equal(403, st)
    assert.equal("Forbidden", s.reason)
    s2.proc:kill()
  end)

  it("works with kubectl: create -f, get, apply, delete", function()
    if not K.has_kubectl() then pending("kubectl not installed") return end
    local dir = H.tmpdir()
    H.write(dir .. "/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kc\ndata:\n  a: b\n")
    H.write(dir .. "/wf.yaml", "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata:\n  name: kwf\nspec:\n  entrypoint: main\n")
    local ok, out = srv:kubectl("create -f " .. dir .. "/cm.yaml")
    assert.truthy(ok, out)
    assert.equal("configmap/kc created\n", out)
    ok, out = srv:kubectl("create -f " .. dir .. "/wf.yaml")
    assert.truthy(ok, out)
    ok, out = srv:kubectl("get wf kwf -o jsonpath='{.spec.entrypoint}'")
    assert.equal("main", out)
    ok, out = srv:kubectl("get configmap kc -o json")
    assert.truthy(ok, out)
    assert.equal("b", cjson.decode(out).data.a)
    H.write(dir .. "/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kc\ndata:\n  a: c\n")
    ok, out = srv:kubectl("apply -f " .. dir .. "/cm.yaml")
    assert.truthy(ok, out)
    assert.equal("c", assert(srv:get(CMS .. "/kc")).data.a)
    ok, out = srv:kubectl("delete configmap kc")
    assert.truthy(ok, out)
    local _, st = srv:get(CMS .. "/kc")
    assert.equal(404, st)
    ok, out = srv:kubectl("get configmap kc")
    assert.falsy(ok)
    assert.truthy(out:find('configmaps "kc" not found', 1, true), out)
  end)
end)
