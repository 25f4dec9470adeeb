-- Argo Events' own examples/ as a user brings them (issue 11): each fixture here uses a feature
-- those files use (and the project wrote them; Argo's files are not copied): webhook ports from
-- the Service, group/version/resource on k8s and argoWorkflow triggers, field names in another
-- case, retired fields, other Kubernetes kinds in the same file (a ConfigMap serving
-- source.configmap), the git artifact's githubApp, NATS Streaming EventBuses. `herald lint`
-- must say exactly what is listed: warnings and info lines allowed, errors only where Argo
-- would fail too or Herald does not run the type yet ("not supported by Herald yet").
local H = require "helpers.herald"

local DIR = H.source_dir .. "/spec/fixtures/argo-examples"

-- herald lint FILE from DIR (so the messages name the file as given): code, stdout, stderr lines.
local function lint(args)
  local argv = { "lint" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local p = H.spawn("/bin/sh", { "-c", 'cd "$1" && shift && exec "$@"', "sh", DIR, H.bin, unpack(argv) })
  local code = p:wait_exit(20)
  local lines = {}
  for l in p:output("stderr"):gmatch("[^\n]+") do lines[#lines + 1] = l end
  return code, p:output("stdout"), lines
end

local EXPECTED = {
  ["case-insensitive-unsupported.yaml"] = { code = 1, stdout = '', stderr = {
    'case-insensitive-unsupported.yaml:14:9: spec.triggers[0].template.openWhisk: not supported by Herald yet (OpenWhisk triggers)',
    'case-insensitive-unsupported.yaml:14:9: warning: spec.triggers[0].template.openwhisk: field names are case-sensitive: this is openWhisk (Argo Events reads it because Go\'s JSON decoding ignores case); write openWhisk',
    'case-insensitive-unsupported.yaml:8:7: warning: spec.dependencies[0]: no loaded EventSource "orders" defines event "new-order" (it may run elsewhere)',
  } },
  ["case-insensitive.yaml"] = { code = 0, stdout = '1 object(s) valid', stderr = {
    'case-insensitive.yaml:19:15: warning: spec.triggers[0].template.k8s.source.url.verifycert: field names are case-sensitive: this is verifyCert (Argo Events reads it because Go\'s JSON decoding ignores case); write verifyCert',
    'case-insensitive.yaml:23:17: warning: spec.triggers[0].template.k8s.parameters[0].src.datakey: field names are case-sensitive: this is dataKey (Argo Events reads it because Go\'s JSON decoding ignores case); write dataKey',
    'case-insensitive.yaml:8:7: warning: spec.dependencies[0]: no loaded EventSource "orders" defines event "new-order" (it may run elsewhere)',
  } },
  ["configmap-missing-key.yaml"] = { code = 1, stdout = '', stderr = {
    'configmap-missing-key.yaml:26:20: spec.triggers[0].template.k8s.source.configmap.key: ConfigMap "store" (configmap-missing-key.yaml:2:1) has no key "job" (keys: other)',
    'configmap-missing-key.yaml:15:7: warning: spec.dependencies[0]: no loaded EventSource "shop" defines event "order" (it may run elsewhere)',
    'configmap-missing-key.yaml:2:1: info: ConfigMap "store": not run by Herald; its data serves the source.configmap of k8s and argoWorkflow triggers',
  } },
  ["params-rewrite-params.yaml"] = { code = 1, stdout = '', stderr = {
    'params-rewrite-params.yaml:27:11: spec.triggers[0].parameters[0].dest: "http.payload.0.src.dependencyName": a template-level parameter that rewrites the trigger\'s own payload is not supported by Herald yet (Herald compiles them ahead of time; set them in the spec)',
    'params-rewrite-params.yaml:20:33: warning: spec.triggers[0].template.http.payload[0].src.dependencyName: no dependency named "FILLED_IN_LATER" (the parameter will only use its value)',
    'params-rewrite-params.yaml:10:7: warning: spec.dependencies[0]: no loaded EventSource "shop" defines event "order" (it may run elsewhere)',
  } },
  ["eventbus-exotic.yaml"] = { code = 0, stdout = '1 object(s) valid', stderr = {
  } },
  ["eventbus-native.yaml"] = { code = 0, stdout = '1 object(s) valid', stderr = {
  } },
  ["githubapp.yaml"] = { code = 0, stdout = '1 object(s) valid', stderr = {
    'githubapp.yaml:8:7: warning: spec.dependencies[0]: no loaded EventSource "orders" defines event "new-order" (it may run elsewhere)',
  } },
  ["k8s-gvr-mismatch.yaml"] = { code = 1, stdout = '', stderr = {
    'k8s-gvr-mismatch.yaml:15:18: spec.triggers[0].template.k8s.group: group "apps" does not match the object\'s apiVersion "batch/v1" at k8s-gvr-mismatch.yaml:21:27 (its group is "batch")',
    'k8s-gvr-mismatch.yaml:17:21: spec.triggers[0].template.k8s.resource: resource "deployments" does not match the object\'s kind "Job" at k8s-gvr-mismatch.yaml:22:21',
    'k8s-gvr-mismatch.yaml:15:11: warning: spec.triggers[0].template.k8s.group: no longer needed: Argo Events ignores it and takes the resource from the object\'s apiVersion (Herald checks that they agree); remove it',
    'k8s-gvr-mismatch.yaml:16:11: warning: spec.triggers[0].template.k8s.version: no longer needed: Argo Events ignores it and takes the resource from the object\'s apiVersion (Herald checks that they agree); remove it',
    'k8s-gvr-mismatch.yaml:17:11: warning: spec.triggers[0].template.k8s.resource: no longer needed: Argo Events ignores it and takes the resource from the object\'s kind (Herald checks that they agree); remove it',
    'k8s-gvr-mismatch.yaml:8:7: warning: spec.dependencies[0]: no loaded EventSource "orders" defines event "new-order" (it may run elsewhere)',
  } },
  ["k8s-gvr.yaml"] = { code = 0, stdout = '1 object(s) valid', stderr = {
    'k8s-gvr.yaml:15:11: warning: spec.triggers[0].template.k8s.group: no longer needed: Argo Events ignores it and takes the resource from the object\'s apiVersion (Herald checks that they agree); remove it',
    'k8s-gvr.yaml:16:11: warning: spec.triggers[0].template.k8s.version: no longer needed: Argo Events ignores it and takes the resource from the object\'s apiVersion (Herald checks that they agree); remove it',
    'k8s-gvr.yaml:17:11: warning: spec.triggers[0].template.k8s.resource: no longer needed: Argo Events ignores it and takes the resource from the object\'s kind (Herald checks that they agree); remove it',
    'k8s-gvr.yaml:38:11: warning: spec.triggers[1].template.k8s.group: no longer needed: Argo Events ignores it and takes the resource from the object\'s apiVersion (Herald checks that they agree); remove it',
    'k8s-gvr.yaml:39:11: warning: spec.triggers[1].template.k8s.version: no longer needed: Argo Events ignores it and takes the resource from the object\'s apiVersion (Herald checks that they agree); remove it',
    'k8s-gvr.yaml:40:11: warning: spec.triggers[1].template.k8s.resource: no longer needed: Argo Events ignores it and takes the resource from the object\'s kind (Herald checks that they agree); remove it',
    'k8s-gvr.yaml:52:11: warning: spec.triggers[2].template.argoWorkflow.group: no longer needed: Argo Events ignores it and takes the resource from the object\'s apiVersion (Herald checks that they agree); remove it',
    'k8s-gvr.yaml:53:11: warning: spec.triggers[2].template.argoWorkflow.version: no longer needed: Argo Events ignores it and takes the resource from the object\'s apiVersion (Herald checks that they agree); remove it',
    'k8s-gvr.yaml:54:11: warning: spec.triggers[2].template.argoWorkflow.resource: no longer needed: Argo Events ignores it and takes the resource from the object\'s kind (Herald checks that they agree); remove it',
    'k8s-gvr.yaml:8:7: warning: spec.dependencies[0]: no loaded EventSource "orders" defines event "new-order" (it may run elsewhere)',
  } },
  ["retired-eventsource-type.yaml"] = { code = 0, stdout = '1 object(s) valid', stderr = {
    'retired-eventsource-type.yaml:7:3: warning: spec.type: no longer part of Argo Events, which ignores it: the source type is the key under spec (spec.webhook, spec.calendar ...); ignored',
  } },
  ["retired-fields.yaml"] = { code = 0, stdout = '1 object(s) valid', stderr = {
    'retired-fields.yaml:14:9: warning: spec.triggers[0].template.atLeastOnce: no longer part of Argo Events, which ignores it: replaced by spec.triggers[0].atLeastOnce, beside template; ignored',
    'retired-fields.yaml:15:9: warning: spec.triggers[0].template.policy: no longer part of Argo Events, which ignores it: replaced by spec.triggers[0].policy, beside template; ignored',
    'retired-fields.yaml:19:11: warning: spec.triggers[0].template.http.serverURL: no longer part of Argo Events, which ignores it: replaced by url; Herald uses its value as url',
    'retired-fields.yaml:34:15: warning: spec.triggers[1].template.k8s.source.git.sshKeyPath: no longer part of Argo Events, which ignores it: replaced by sshKeySecret, a Secret holding the private key; ignored',
    'retired-fields.yaml:35:15: warning: spec.triggers[1].template.k8s.source.git.namespace: no longer part of Argo Events, which ignores it: the Secrets it names are read from the Sensor\'s namespace; ignored',
    'retired-fields.yaml:46:15: warning: spec.triggers[2].template.argoWorkflow.source.configmap.namespace: no longer part of Argo Events, which ignores it: the ConfigMap is read from the Sensor\'s namespace; ignored',
    'retired-fields.yaml:8:7: warning: spec.dependencies[0]: no loaded EventSource "orders" defines event "new-order" (it may run elsewhere)',
  } },
  ["typo.yaml"] = { code = 1, stdout = '', stderr = {
    'typo.yaml:14:9: spec.triggers[0].template.atLeastOnc: unknown field; did you mean atLeastOnce?',
    'typo.yaml:8:7: warning: spec.dependencies[0]: no loaded EventSource "orders" defines event "new-order" (it may run elsewhere)',
  } },
  ["unsupported-source.yaml"] = { code = 1, stdout = '', stderr = {
    'unsupported-source.yaml:7:3: spec.emitter: not supported by Herald yet (Emitter event source)',
  } },
  ["webhook-service-port.yaml"] = { code = 0, stdout = '1 object(s) valid', stderr = {
  } },
  ["webhook-service-ports-ambiguous.yaml"] = { code = 1, stdout = '', stderr = {
    'webhook-service-ports-ambiguous.yaml:14:7: spec.webhook.first.port: required: spec.service.ports holds 2 ports (13101 at webhook-service-ports-ambiguous.yaml:10:21, 13102 at webhook-service-ports-ambiguous.yaml:11:15), so Herald cannot tell which this endpoint listens on; add port: "13101" under spec.webhook.first',
    'webhook-service-ports-ambiguous.yaml:28:7: spec.webhook.lonely.port: required: add port: "12000" (the port this endpoint listens on) under spec.webhook.lonely; without it Herald takes the port from spec.service.ports, which holds none here',
  } },
  ["mixed"] = { code = 0, stdout = '2 object(s) valid', stderr = {
    'mixed/all-in-one.yaml:3:1: info: ServiceAccount "order-sa" (v1): skipped; Herald runs EventSource, Sensor, EventBus',
    'mixed/all-in-one.yaml:8:1: info: Role "order-role" (rbac.authorization.k8s.io/v1): skipped; Herald runs EventSource, Sensor, EventBus',
    'mixed/all-in-one.yaml:17:1: info: RoleBinding "order-binding" (rbac.authorization.k8s.io/v1): skipped; Herald runs EventSource, Sensor, EventBus',
    'mixed/all-in-one.yaml:29:1: info: ConfigMap "job-store": not run by Herald; its data serves the source.configmap of k8s and argoWorkflow triggers',
    'mixed/all-in-one.yaml:49:1: info: Pod "echo-server" (v1): skipped; Herald runs EventSource, Sensor, EventBus',
    'mixed/all-in-one.yaml:58:1: info: Service "echo-server" (v1): skipped; Herald runs EventSource, Sensor, EventBus',
    'mixed/all-in-one.yaml:66:1: info: WorkflowTemplate "pack-template" (argoproj.io/v1alpha1): skipped; Herald runs EventSource, Sensor, EventBus',
  } },
}

describe("Argo Events examples", function()
  local names = {}
  for name in pairs(EXPECTED) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    it("lint " .. name, function()
      local want = EXPECTED[name]
      local code, out, err = lint({ name })
      assert.same(want.stderr, err)
      assert.equal(want.stdout, (out:gsub("%s+$", "")))
      assert.equal(want.code, code)
    end)
  end

  it("every fixture is listed above", function()
    local seen = {}
    local p = io.popen('ls "' .. DIR .. '"')
    for f in p:lines() do seen[#seen + 1] = f end
    p:close()
    for _, f in ipairs(seen) do assert.is_not_nil(EXPECTED[f], f .. " has no expectation") end
  end)

  it("--strict makes the warnings errors", function()
    local code, out = lint({ "--strict", "case-insensitive.yaml" })
    assert.equal(1, code)
    assert.equal("", out)
    code = lint({ "--strict", "retired-fields.yaml" })
    assert.equal(1, code)
  end)

  it("serve a trigger's source.configmap from a ConfigMap loaded beside the Sensor", function()
    local dir = H.tmpdir()
    H.write(dir .. "/events.jsonl", '{"source":"shop","subject":"order","data":{"body":{"id":"A-17"}}}\n')
    local code, out, err = H.run{ "test", DIR .. "/mixed", "--events", dir .. "/events.jsonl" }
    assert.equal(0, code, err)
    local line = require("cjson").decode((out:match("[^\n]+")))
    assert.equal("pack", line.trigger)
    local obj = line.action.object
    assert.equal("Job", obj.kind)
    assert.equal("packer-", obj.metadata.generateName)
    assert.equal("A-17", obj.metadata.labels.order)
    assert.same({ "echo", "packing" }, obj.spec.template.spec.containers[1].command)
  end)

  it("takes http serverURL as url, as Argo before url existed did", function()
    local dir = H.tmpdir()
    H.write(dir .. "/events.jsonl", '{"source":"orders","subject":"new-order","data":{"body":{"n":1}}}\n')
    local code, out, err = H.run{ "test", DIR .. "/retired-fields.yaml", "--events", dir .. "/events.jsonl" }
    -- the file's other trigger reads a ConfigMap mounted only in a cluster: that error (and
    -- only that one) is reported and makes the exit status 1
    assert.is_true(code == 0 or (code == 1 and err:match("^error: [^\n]*trigger from%-configmap: [^\n]*no such file\n$") ~= nil), err)
    local line = require("cjson").decode((out:match("[^\n]+")))
    assert.equal("notify", line.trigger)
    assert.equal("http://127.0.0.1:13103/notify", line.action.url)
  end)

  it("run a NATS Streaming EventBus on the embedded bus under herald run, saying so", function()
    local dir = H.tmpdir()
    H.write(dir .. "/bus.yaml", H.read(DIR .. "/eventbus-native.yaml"))
    local wport = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = wport })
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } })
    local p = H.start{ "run", dir }
    p:wait_for("EventBus default: nats.native is NATS Streaming, which its authors ended in 2023; `herald run` runs everything in this process on the embedded bus")
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(wport, "/hook", '{"a":1}')))
    assert.equal(1, H.wait_firings(p, 1)[1].events.d.data.body.a)
    assert.equal(0, p:stop())
  end)

  it("run a NATS Streaming exotic EventBus as JetStream on its server in component mode", function()
    local has = os.execute("command -v nats-server >/dev/null 2>&1")
    if has ~= true and has ~= 0 then return pending("nats-server is not installed") end
    local srv, _, url = H.nats_server()
    local dir = H.tmpdir()
    H.write(dir .. "/bus.yaml", (H.read(DIR .. "/eventbus-exotic.yaml"):gsub("nats://nats.example.com:4222", url)))
    local wport = H.free_port()
    H.write(dir .. "/es.yaml", H.webhook_es{ port = wport }:gsub("\nspec:\n", "\nspec:\n  eventBusName: streaming\n", 1))
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } } }:gsub("\nspec:\n", "\nspec:\n  eventBusName: streaming\n", 1))
    local sensor = H.start{ "sensor", dir }
    sensor:wait_for("EventBus streaming: nats.exotic is NATS Streaming, which its authors ended in 2023; Herald uses JetStream on the same server (" .. url .. "), which must run with JetStream enabled", { timeout = 10 })
    sensor:wait_for("herald started", { timeout = 10 })
    local es = H.start{ "eventsource", dir }
    es:wait_for("herald started", { timeout = 10 })
    assert.equal(200, (H.post_json(wport, "/hook", '{"via":"stan"}')))
    assert.equal("stan", H.wait_firings(sensor, 1, 10)[1].events.d.data.body.via)
    es:kill()
    sensor:kill()
    srv:kill()
  end)

  it("listen on the Service's targetPort when a webhook event has no port", function()
    local dir = H.tmpdir()
    local wport = H.free_port()
    H.write(dir .. "/es.yaml", (H.read(DIR .. "/webhook-service-port.yaml"):gsub("13100", tostring(wport))))
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d", es = "orders", event = "new-order" } } })
    local p = H.start{ "run", dir }
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(wport, "/orders", '{"id":9}')))
    assert.equal(9, H.wait_firings(p, 1)[1].events.d.data.body.id)
    assert.equal(0, p:stop())
  end)

  it("fetch a git source as a GitHub App: a signed JWT buys the token git uses", function()
    local K = require "triggers.k8s.kube_helper"
    if not K.has_tools() then return pending("node, openssl and curl are needed for the test API server") end
    local dir = H.tmpdir()
    assert(os.execute(("cd %s && openssl genrsa -out key.pem 2048 2>/dev/null && openssl rsa -in key.pem -pubout -out pub.pem 2>/dev/null"):format(dir)))
    assert(os.execute("mkdir -p " .. dir .. "/secrets/github-app " .. dir .. "/specs"))
    H.write(dir .. "/secrets/github-app/private-key.pem", H.read(dir .. "/key.pem"))
    -- one sink plays the GitHub API (201 and a token) and, after it, the git server (which
    -- then answers the same, not a repository: the fetch fails, after the token was used)
    local api = require("helpers.sink_client").start{ status = 201,
      body = '{"token":"ghs_fixture_token","expires_at":"2030-01-01T00:00:00Z"}' }
    local srv = K.start()
    local kc = srv:kubeconfig()
    local wport = H.free_port()
    H.write(dir .. "/specs/es.yaml", H.webhook_es{ name = "orders", event = "new-order", port = wport })
    H.write(dir .. "/specs/s.yaml", (H.read(DIR .. "/githubapp.yaml")
      :gsub("https://github.com/example/manifests.git", "http://127.0.0.1:" .. api.port .. "/example/manifests.git")
      :gsub("/tmp/herald%-fixture%-gh", dir .. "/clone")
      :gsub("              remote:\n.*$", "")))
    local p = H.start({ "run", dir .. "/specs", "--secrets-dir", dir .. "/secrets" },
      { env = { KUBECONFIG = kc, HERALD_GITHUB_API_URL = "http://127.0.0.1:" .. api.port .. "/" } })
    p:wait_for("herald started")
    assert.equal(200, (H.post_json(wport, "/hook", '{"id":1}')))
    local reqs = api.wait_requests(2, 10)
    local tok = reqs[1]
    assert.equal("POST", tok.method)
    assert.equal("/app/installations/7890123/access_tokens", tok.path)
    assert.equal("application/vnd.github+json", tok.headers.accept)
    local jwt = tok.headers.authorization:match("^Bearer (.+)$")
    local h64, c64, s64 = jwt:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
    local function unb64(x)
      x = x:gsub("-", "+"):gsub("_", "/")
      x = x .. string.rep("=", (4 - #x % 4) % 4)
      H.write(dir .. "/b64", x)
      local f = io.popen("base64 -d " .. dir .. "/b64")
      local out = f:read("*a")
      f:close()
      return out
    end
    local cjson = require "cjson"
    assert.same({ alg = "RS256", typ = "JWT" }, cjson.decode(unb64(h64)))
    local claims = cjson.decode(unb64(c64))
    assert.equal("123456", claims.iss)
    assert.equal(600, claims.exp - claims.iat)
    -- the signature verifies with the App's public key
    H.write(dir .. "/signed", h64 .. "." .. c64)
    H.write(dir .. "/sig", unb64(s64))
    assert.is_true(os.execute(("openssl dgst -sha256 -verify %s/pub.pem -signature %s/sig %s/signed >/dev/null"):format(dir, dir, dir)) == 0
      or os.execute(("openssl dgst -sha256 -verify %s/pub.pem -signature %s/sig %s/signed >/dev/null"):format(dir, dir, dir)) == true)
    -- then git asks the server for the repository
    assert.matches("^/example/manifests%.git/info/refs", reqs[2].path)
    p:wait_for("source.git http://127.0.0.1:" .. api.port .. "/example/manifests.git k8s/job.yaml", { timeout = 10 })
    assert.equal(0, p:stop())
    api.stop()
    srv.proc:kill()
  end)
end)
