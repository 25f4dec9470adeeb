-- spec/sources/resource/resource_spec.lua: the resource event source (sources/resource/) against
-- the fake Kubernetes API server (spec/peers/kube-apiserver.js, over https with a token):
-- ADD/UPDATE/DELETE with Argo's data shape, label and field filters, afterStart, a watch cut
-- and resumed from its resourceVersion, 410 Gone answered by a new list, bookmarks, and kubectl
-- seeing the same changes. One API server per block; each test its own namespace.
local H = require "helpers.herald"
local K = require "triggers.k8s.kube_helper"
local cjson = require "cjson"

if not K.has_tools() then
  describe("resource source", function()
    it("needs node, openssl and curl for the fake API server", function() pending("node, openssl or curl missing") end)
  end)
  return
end

local function es(ns, extra)
  return ([[
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: es
spec:
  resource:
    ev:
      namespace: %s
      version: v1
      resource: configmaps
%s]]):format(ns, extra or "      eventTypes: [ADD, UPDATE, DELETE]\n")
end

local nsn = 0
local function new_ns(srv)
  nsn = nsn + 1
  local name = ("t%d-%d"):format(nsn, math.random(1e6))
  srv:create("/api/v1/namespaces", { apiVersion = "v1", kind = "Namespace", metadata = { name = name } })
  return name
end

local function cm(srv, ns, name, data, labels)
  return srv:create(("/api/v1/namespaces/%s/configmaps"):format(ns),
    { apiVersion = "v1", kind = "ConfigMap", metadata = { name = name, labels = labels }, data = data or { a = "1" } })
end

local function start(srv, ns, extra, env)
  local dir = H.tmpdir()
  H.write(dir .. "/es.yaml", es(ns, extra) .. "---\n" .. H.sensor { name = "s", deps = { { name = "d" } } })
  local e = { KUBECONFIG = srv:kubeconfig() }
  for k, v in pairs(env or {}) do e[k] = v end
  local p = H.start({ "run", dir, "--log-level", "debug" }, { env = e })
  p:wait_for("connected", { timeout = 10 })
  return p
end

local function data(f) return f.events.d.data end

local function names(fs)
  local t = {}
  for i, f in ipairs(fs) do t[i] = data(f).type .. ":" .. data(f).body.metadata.name end
  return t
end

describe("resource source", function()
  local srv
  setup(function() srv = K.start() end)
  teardown(function() if srv then srv.proc:kill() end end)

  it("lists (ADD for what exists), then ADD, UPDATE with oldBody, DELETE, in Argo's shape", function()
    local ns = new_ns(srv)
    cm(srv, ns, "before")
    local p = start(srv, ns, "      eventTypes: [ADD, UPDATE, DELETE]\n      metadata:\n        team: a\n")
    local f = H.wait_firings(p, 1, 10)
    local d = data(f[1])
    assert.equal("ADD", d.type)
    assert.equal("before", d.body.metadata.name)
    assert.equal("ConfigMap", d.body.kind) -- list items get the list's kind, as the informer does
    assert.equal("v1", d.body.apiVersion)
    assert.equal(cjson.null, d.oldBody)
    assert.equal("", d.group)
    assert.equal("v1", d.version)
    assert.equal("configmaps", d.resource)
    assert.same({ team = "a" }, d.metadata)
    assert.equal("resource", f[1].events.d.type)
    cm(srv, ns, "x", { a = "1" })
    H.wait_firings(p, 2, 10)
    local st = srv:api("PATCH", ("/api/v1/namespaces/%s/configmaps/x"):format(ns), { data = { a = "2" } },
      "application/merge-patch+json")
    assert.equal(200, st)
    f = H.wait_firings(p, 3, 10)
    assert.equal("UPDATE", data(f[3]).type)
    assert.equal("2", data(f[3]).body.data.a)
    assert.equal("1", data(f[3]).oldBody.data.a)
    assert.equal(200, (srv:api("DELETE", ("/api/v1/namespaces/%s/configmaps/x"):format(ns))))
    f = H.wait_firings(p, 4, 10)
    assert.same({ "ADD:before", "ADD:x", "UPDATE:x", "DELETE:x" }, names(f))
    assert.equal(cjson.null, data(f[4]).oldBody)
    assert.equal(0, p:stop())
    assert.equal(4, #H.firings(p))
  end)

  it("eventTypes picks the changes; labels go to the server, fields (regexps) are matched here", function()
    local ns = new_ns(srv)
    local p = start(srv, ns, [[
      eventTypes: [ADD]
      filter:
        prefix: app-
        labels:
          - key: tier
            operation: in
            value: web,api
          - key: skip
            operation: "!"
        fields:
          - key: data.env
            operation: "=="
            value: "^prod"
          - key: metadata.name
            operation: "!="
            value: "-old$"
]])
    cm(srv, ns, "app-1", { env = "production" }, { tier = "web" })   -- fires
    cm(srv, ns, "app-2", { env = "production" }, { tier = "db" })    -- label tier
    cm(srv, ns, "app-3", { env = "production" }, { tier = "api", skip = "y" }) -- label skip
    cm(srv, ns, "app-4", { env = "staging" }, { tier = "api" })      -- field data.env
    cm(srv, ns, "app-5-old", { env = "prod" }, { tier = "api" })     -- field name
    cm(srv, ns, "other", { env = "prod" }, { tier = "api" })         -- prefix
    cm(srv, ns, "app-6", { env = "prod" }, { tier = "api" })         -- fires
    local f = H.wait_firings(p, 2, 10)
    srv:api("PATCH", ("/api/v1/namespaces/%s/configmaps/app-6"):format(ns), { data = { env = "prod2" } },
      "application/merge-patch+json") -- an UPDATE: not asked for
    cm(srv, ns, "app-7", { env = "prod" }, { tier = "web" })
    f = H.wait_firings(p, 3, 10)
    assert.same({ "ADD:app-1", "ADD:app-6", "ADD:app-7" }, names(f))
    -- Kubernetes' form of the selector: requirements sorted by key, values sorted
    assert.equal(1, p:count("labelSelector=%21skip%2Ctier%20in%20%28api%2Cweb%29"))
    assert.equal(0, p:stop())
    assert.equal(3, #H.firings(p))
  end)

  it("afterStart: what existed before the start does not fire", function()
    local ns = new_ns(srv)
    cm(srv, ns, "old")
    local p = start(srv, ns, "      eventTypes: [ADD]\n      filter:\n        afterStart: true\n")
    -- creationTimestamp has whole seconds, as Kubernetes writes it: create in the next second
    local t0 = os.time()
    H.wait_until(function() return os.time() > t0 end, 3)
    cm(srv, ns, "new")
    local f = H.wait_firings(p, 1, 10)
    assert.same({ "ADD:new" }, names(f))
    assert.equal(0, p:stop())
    assert.equal(1, #H.firings(p))
  end)

  it("a cut watch resumes from its resourceVersion (no new list, nothing twice)", function()
    local ns = new_ns(srv)
    cm(srv, ns, "a")
    local p = start(srv, ns)
    H.wait_firings(p, 1, 10)
    local st, r = srv:api("POST", "/_fake/break-watches")
    assert.equal(200, st)
    assert.is_true(r.broken >= 1)
    cm(srv, ns, "b") -- made while Herald has no watch: the resumed watch replays it
    local f = H.wait_firings(p, 2, 10)
    H.wait_until(function() local _, w = srv:api("GET", "/_fake/watches"); return w.watches >= 1 end, 10)
    cm(srv, ns, "c")
    f = H.wait_firings(p, 3, 10)
    assert.same({ "ADD:a", "ADD:b", "ADD:c" }, names(f))
    assert.equal(0, p:count("listing again"))
    assert.equal(0, p:stop())
    assert.equal(3, #H.firings(p))
  end)

  it("410 Gone on resume: lists again; unchanged objects do not fire again, later changes do", function()
    local ns = new_ns(srv)
    cm(srv, ns, "a")
    local p = start(srv, ns)
    H.wait_firings(p, 1, 10)
    -- versions move on elsewhere (a secret), the history is forgotten, the watch cut: Herald's
    -- version is now older than anything the server keeps
    srv:create(("/api/v1/namespaces/%s/secrets"):format(ns), { apiVersion = "v1", kind = "Secret", metadata = { name = "s" } })
    srv:api("POST", "/_fake/compact")
    srv:api("POST", "/_fake/break-watches")
    p:wait_for("listing again", { timeout = 10 })
    H.wait_until(function() local _, w = srv:api("GET", "/_fake/watches"); return w.watches >= 1 end, 10)
    cm(srv, ns, "b")
    local f = H.wait_firings(p, 2, 10)
    assert.same({ "ADD:a", "ADD:b" }, names(f))
    assert.equal(0, p:stop())
    assert.equal(2, #H.firings(p))
  end)

  it("kubectl sees the changes Herald sees", function()
    if not K.has_kubectl() then return pending("kubectl not installed") end
    local ns = new_ns(srv)
    local p = start(srv, ns, "      eventTypes: [ADD]\n")
    -- from a manifest (kubectl's typed commands speak protobuf, which the fake server does not)
    local file = H.write(H.tmpdir() .. "/cm.json", cjson.encode { apiVersion = "v1", kind = "ConfigMap",
      metadata = { name = "from-kubectl" }, data = { k = "v" } })
    local ok, out = srv:kubectl("-n " .. ns .. " create -f " .. K.quote(file))
    assert.is_true(ok, out)
    local f = H.wait_firings(p, 1, 10)
    assert.equal("from-kubectl", data(f[1]).body.metadata.name)
    assert.equal("v", data(f[1]).body.data.k)
    ok, out = srv:kubectl("-n " .. ns .. " get configmaps -o json")
    assert.is_true(ok, out)
    local list = cjson.decode(out)
    assert.equal(1, #list.items)
    assert.equal(data(f[1]).body.metadata.resourceVersion, list.items[1].metadata.resourceVersion)
    assert.equal(0, p:stop())
  end)

  it("examples/resource lints clean, its sensor test passes, and it fires", function()
    local ex = H.source_dir .. "/examples/resource"
    local code, out, err = H.run { "lint", "--strict", ex }
    assert.equal(0, code, err)
    assert.matches("^2 object%(s%) valid", out)
    code, out = H.run { "test", ex }
    assert.equal(0, code, out)
    assert.matches("1 passed, 0 failed", out)
    -- live, against the fake API server: a web deployment made after the start, then scaled
    local p = H.start({ "run", ex, "--log-level", "debug" }, { env = { KUBECONFIG = srv:kubeconfig() } })
    p:wait_for("connected", { timeout = 10 })
    local t0 = os.time()
    H.wait_until(function() return os.time() > t0 end, 3) -- afterStart compares whole seconds
    local name = "web-" .. math.random(1e6)
    srv:create("/apis/apps/v1/namespaces/default/deployments", { apiVersion = "apps/v1", kind = "Deployment",
      metadata = { name = name, labels = { app = "web" } }, spec = { replicas = 1 } })
    assert.equal(200, (srv:api("PATCH", "/apis/apps/v1/namespaces/default/deployments/" .. name,
      { spec = { replicas = 3 } }, "application/merge-patch+json")))
    local f = H.wait_firings(p, 1, 10)
    local d = f[1].events.deploy.data
    assert.equal("UPDATE", d.type)
    assert.equal(3, d.body.spec.replicas)
    assert.equal(1, d.oldBody.spec.replicas)
    assert.equal("apps", d.group)
    assert.equal(0, p:stop())
    assert.equal(1, #H.firings(p))
  end)

  it("lint: labels, fields and createdBy are checked where they are written", function()
    local dir = H.tmpdir()
    H.write(dir .. "/bad.yaml", es("default", [[
      eventTypes: [ADD, CHANGE]
      filter:
        labels:
          - key: tier
            operation: like
            value: x
        fields:
          - key: a
            value: "(["
        createdBy: yesterday
]]))
    local code, out, err = H.run { "lint", dir .. "/bad.yaml" }
    local text = out .. err
    assert.equal(1, code, text)
    assert.matches("eventTypes", text)
    assert.matches("unknown label operation like", text)
    assert.matches("invalid regular expression", text)
    assert.matches("not an RFC 3339 time", text)
  end)
end)

describe("resource source with bookmarks", function()
  local srv
  setup(function() srv = K.start { args = { "--bookmark-ms", "200" } } end)
  teardown(function() if srv then srv.proc:kill() end end)

  it("a bookmark moves the version on, so a resume after other changes needs no new list", function()
    local ns = new_ns(srv)
    cm(srv, ns, "a")
    local p = start(srv, ns)
    H.wait_firings(p, 1, 10)
    local _, w0 = srv:api("GET", "/_fake/watches")
    srv:create(("/api/v1/namespaces/%s/secrets"):format(ns), { apiVersion = "v1", kind = "Secret", metadata = { name = "s" } })
    -- a bookmark carries the secret's version to Herald
    p:wait_for("bookmark " .. (tonumber(w0.resourceVersion) + 1), { timeout = 5 })
    srv:api("POST", "/_fake/compact")
    srv:api("POST", "/_fake/break-watches")
    H.wait_until(function() local _, w = srv:api("GET", "/_fake/watches"); return w.watches >= 1 end, 10)
    cm(srv, ns, "b")
    local f = H.wait_firings(p, 2, 10)
    assert.same({ "ADD:a", "ADD:b" }, names(f))
    assert.equal(0, p:count("listing again"))
    assert.equal(0, p:stop())
  end)
end)
