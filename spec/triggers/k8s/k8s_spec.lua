-- spec/triggers/k8s/k8s_spec.lua: the k8s trigger, driven through the real `herald` binary
-- against the fake Kubernetes API server (spec/peers/kube-apiserver.js) over https.
--
-- Each test starts a fresh API server and a fresh herald with KUBECONFIG pointing at it, POSTs
-- webhook events and checks, through the API (and kubectl where installed), what Herald
-- created, updated, patched or deleted, and the trigger's success and failure counters.
local H = require "helpers.herald"
local K = require "triggers.k8s.kube_helper"

local CM = "/api/v1/namespaces/%s/configmaps/%s"

-- A k8s trigger body (indented for H.sensor) with `object` as its source.resource (YAML lines
-- indented 14) and the usual parameters: metadata.name <- body.name, data.msg <- body.msg.
local function k8s_body(o)
  local lines = { "        k8s:\n" }
  if o.operation then lines[#lines + 1] = "          operation: " .. o.operation .. "\n" end
  if o.patchStrategy then lines[#lines + 1] = "          patchStrategy: " .. o.patchStrategy .. "\n" end
  if o.liveObject then lines[#lines + 1] = "          liveObject: true\n" end
  lines[#lines + 1] = "          source:\n            resource:\n"
  lines[#lines + 1] = o.object
  if o.params ~= false then
    lines[#lines + 1] = [[
          parameters:
            - src:
                dependencyName: d
                dataKey: body.name
              dest: metadata.name
]]
    if o.msg ~= false then
      lines[#lines + 1] = [[
            - src:
                dependencyName: d
                dataKey: body.msg
              dest: data.msg
]]
    end
  end
  return table.concat(lines)
end

local CONFIGMAP = [[
              apiVersion: v1
              kind: ConfigMap
              metadata:
                name: placeholder
              data:
                msg: none
]]

local function start_all(triggers, kc_opts, srv_opts, herald_opts)
  local srv = K.start(srv_opts)
  local kc = srv:kubeconfig(kc_opts)
  local p, port = K.herald(kc, triggers, herald_opts)
  return srv, p, port
end

-- a k8s trigger body with `source` (YAML lines indented 12); the object's name is the
-- manifest's with the event's body.name appended (and "<prefix>-" prepended when given),
-- data.msg is body.msg
local function with_source(source, prefix)
  return "        k8s:\n          source:\n" .. source .. [[
          parameters:
            - src:
                dependencyName: d
                dataKey: body.name
              dest: metadata.name
              operation: append
            - src:
                dependencyName: d
                dataKey: body.msg
              dest: data.msg
]] .. (prefix and ([[
            - src:
                dependencyName: d
                dataKey: body.absent
                value: %s-
              dest: metadata.name
              operation: prepend
]]):format(prefix) or "")
end

describe("k8s trigger", function()
  if not K.has_tools() then
    pending("node, openssl and curl are needed for the fake Kubernetes API server")
    return
  end

  describe("create", function()
    it("creates the object with parameters applied, Argo's labels and the default namespace", function()
      local srv, p, port = start_all({ { name = "mk", body = k8s_body{ object = CONFIGMAP } } })
      local before = os.time() * 1000
      K.post(port, { name = "cm-one", msg = "hello" })
      K.wait_metric(p, "triggered", "mk", 1)
      local cm = assert(srv:get(CM:format("default", "cm-one")))
      assert.equal("hello", cm.data.msg)
      assert.equal("default", cm.metadata.namespace)
      local labels = cm.metadata.labels
      assert.equal("s", labels["events.argoproj.io/sensor"])
      assert.equal("mk", labels["events.argoproj.io/trigger"])
      local ts = tonumber(labels["events.argoproj.io/action-timestamp"])
      assert.truthy(ts and ts >= before - 1000 and ts <= os.time() * 1000 + 1000, "action-timestamp in unix ms")
      -- a second event, a second object
      K.post(port, { name = "cm-two", msg = "again" })
      K.wait_metric(p, "triggered", "mk", 2)
      assert.equal("again", assert(srv:get(CM:format("default", "cm-two"))).data.msg)
      assert.equal(0, H.metrics(p)['argo_events_action_failed_total{sensor_name="s",trigger_name="mk"}'])
      assert.equal(0, p:stop())
    end)

    it("defaults the namespace to the kubeconfig context's, and keeps an explicit one", function()
      local srv = K.start()
      srv:create("/api/v1/namespaces", { apiVersion = "v1", kind = "Namespace", metadata = { name = "team" } })
      srv:create("/api/v1/namespaces", { apiVersion = "v1", kind = "Namespace", metadata = { name = "other" } })
      local kc = srv:kubeconfig{ namespace = "team" }
      local p, port = K.herald(kc, {
        { name = "ctx", body = k8s_body{ object = CONFIGMAP } },
        { name = "explicit", body = k8s_body{ msg = false, object = [[
              apiVersion: v1
              kind: ConfigMap
              metadata:
                name: placeholder
                namespace: other
]] } },
      })
      K.post(port, { name = "cm-ns", msg = "x" })
      K.wait_metric(p, "triggered", "ctx", 1)
      K.wait_metric(p, "triggered", "explicit", 1)
      assert.truthy(srv:get(CM:format("team", "cm-ns")))
      assert.truthy(srv:get(CM:format("other", "cm-ns")))
      local _, st = srv:get(CM:format("default", "cm-ns"))
      assert.equal(404, st)
    end)

    it("finds the resource of any kind through discovery, namespaced or cluster-scoped", function()
      local srv, p, port = start_all({
        { name = "deploy", body = k8s_body{ msg = false, object = [[
              apiVersion: apps/v1
              kind: Deployment
              metadata:
                name: placeholder
              spec:
                replicas: 2
                selector:
                  matchLabels: {app: web}
                template:
                  metadata:
                    labels: {app: web}
                  spec:
                    containers:
                      - name: web
                        image: nginx
                        args: []
]] } },
        { name = "ns", body = k8s_body{ msg = false, object = [[
              apiVersion: v1
              kind: Namespace
              metadata:
                name: placeholder
]] } },
        { name = "crd", body = k8s_body{ msg = false, object = [[
              apiVersion: argoproj.io/v1alpha1
              kind: EventBus
              metadata:
                name: placeholder
              spec:
                jetstream:
                  version: latest
]] } },
      })
      K.post(port, { name = "web" })
      K.wait_metric(p, "triggered", "deploy", 1)
      K.wait_metric(p, "triggered", "ns", 1)
      K.wait_metric(p, "triggered", "crd", 1)
      local d = assert(srv:get("/apis/apps/v1/namespaces/default/deployments/web"))
      assert.equal(2, d.spec.replicas)
      assert.equal("nginx", d.spec.template.spec.containers[1].image)
      local ns = assert(srv:get("/api/v1/namespaces/web"))
      assert.is_nil(ns.metadata.namespace)
      assert.equal("ns", ns.metadata.labels["events.argoproj.io/trigger"])
      local eb = assert(srv:get("/apis/argoproj.io/v1alpha1/namespaces/default/eventbus/web"))
      assert.equal("latest", eb.spec.jetstream.version)
    end)

    it("authenticates with a client certificate (files and inline data)", function()
      for _, auth in ipairs{ "cert", "cert-data" } do
        local srv, p, port = start_all({ { name = "mk", body = k8s_body{ object = CONFIGMAP } } }, { auth = auth })
        K.post(port, { name = "by-" .. auth, msg = auth })
        K.wait_metric(p, "triggered", "mk", 1)
        assert.equal(auth, assert(srv:get(CM:format("default", "by-" .. auth))).data.msg)
      end
    end)

    it("is visible to kubectl", function()
      if not K.has_kubectl() then pending("kubectl not installed") return end
      local srv, p, port = start_all({ { name = "mk", body = k8s_body{ object = CONFIGMAP } } })
      K.post(port, { name = "seen-by-kubectl", msg = "hi" })
      K.wait_metric(p, "triggered", "mk", 1)
      local ok, out = srv:kubectl("get configmap seen-by-kubectl -o jsonpath='{.data.msg} {.metadata.labels.events\\.argoproj\\.io/sensor}'")
      assert.truthy(ok, out)
      assert.equal("hi s", out)
      ok, out = srv:kubectl("get configmaps -l events.argoproj.io/trigger=mk -o name")
      assert.truthy(ok, out)
      assert.equal("configmap/seen-by-kubectl\n", out)
    end)
  end)

  describe("policy.k8s", function()
    local LABELED = [[
              apiVersion: v1
              kind: ConfigMap
              metadata:
                name: placeholder
                labels: {ready: "yes"}
              data:
                msg: none
]]
    local function with_policy(obj, on_timeout)
      return k8s_body{ object = obj } .. ([[
      policy:
        k8s:
          labels: {ready: "yes"}
          backoff: {steps: 3, duration: 50ms, factor: 2}
          errorOnBackoffTimeout: %s
]]):format(on_timeout and "true" or "false")
    end

    it("succeeds once the created object carries the labels", function()
      local srv, p, port = start_all({ { name = "mk", body = k8s_body{ object = LABELED },
        extra = "      policy:\n        k8s:\n          labels: {ready: \"yes\"}\n          backoff: {steps: 3, duration: 50ms}\n" } })
      K.post(port, { name = "cm-ready", msg = "x" })
      K.wait_metric(p, "triggered", "mk", 1)
      assert.equal("yes", assert(srv:get(CM:format("default", "cm-ready"))).metadata.labels.ready)
    end)

    it("fails after the backoff when the labels never appear and errorOnBackoffTimeout is set", function()
      local srv, p, port = start_all({
        { name = "strict", body = with_policy(CONFIGMAP, true):match("^(.-)      policy:"),
          extra = with_policy(CONFIGMAP, true):match("(      policy:.*)$") },
      })
      local t0 = H.now()
      K.post(port, { name = "cm-never", msg = "x" })
      K.wait_metric(p, "failed", "strict", 1)
      assert.is_true(H.now() - t0 >= 0.14, "waited 50 + 100 ms between the three checks")
      assert.truthy(p:output("stderr"):find("policy.k8s labels did not appear in time", 1, true))
      assert.truthy(srv:get(CM:format("default", "cm-never")), "the object was still created")
    end)

    it("counts the action as done when errorOnBackoffTimeout is false", function()
      local _, p, port = start_all({
        { name = "lenient", body = with_policy(CONFIGMAP, false):match("^(.-)      policy:"),
          extra = with_policy(CONFIGMAP, false):match("(      policy:.*)$") },
      })
      K.post(port, { name = "cm-late", msg = "x" })
      K.wait_metric(p, "triggered", "lenient", 1)
    end)
  end)

  describe("update", function()
    it("merges the object over the live one, and creates it when missing", function()
      local srv, p, port = start_all({ { name = "up", body = k8s_body{ operation = "update", object = [[
              apiVersion: v1
              kind: ConfigMap
              metadata:
                name: placeholder
                labels:
                  touched: "yes"
              data:
                msg: none
]] } } })
      srv:create("/api/v1/namespaces/default/configmaps", { apiVersion = "v1", kind = "ConfigMap",
        metadata = { name = "live", labels = { keep = "me" } }, data = { other = "1", msg = "old" } })
      K.post(port, { name = "live", msg = "new" })
      K.wait_metric(p, "triggered", "up", 1)
      local cm = assert(srv:get(CM:format("default", "live")))
      assert.same({ other = "1", msg = "new" }, cm.data)
      assert.equal("me", cm.metadata.labels.keep)
      assert.equal("yes", cm.metadata.labels.touched)
      -- missing: created, with Argo's labels
      K.post(port, { name = "fresh", msg = "created" })
      K.wait_metric(p, "triggered", "up", 2)
      cm = assert(srv:get(CM:format("default", "fresh")))
      assert.equal("created", cm.data.msg)
      assert.equal("up", cm.metadata.labels["events.argoproj.io/trigger"])
    end)

    it("liveObject: updates the live object the same way", function()
      local srv, p, port = start_all({ { name = "up", body = k8s_body{ operation = "update", liveObject = true, object = CONFIGMAP } } })
      srv:create("/api/v1/namespaces/default/configmaps", { apiVersion = "v1", kind = "ConfigMap",
        metadata = { name = "live" }, data = { other = "1" } })
      K.post(port, { name = "live", msg = "new" })
      K.wait_metric(p, "triggered", "up", 1)
      assert.same({ other = "1", msg = "new" }, assert(srv:get(CM:format("default", "live"))).data)
    end)
  end)

  describe("patch", function()
    it("merge-patches by default, and creates the object when missing", function()
      local srv, p, port = start_all({ { name = "pt", body = k8s_body{ operation = "patch", object = CONFIGMAP } } })
      srv:create("/api/v1/namespaces/default/configmaps", { apiVersion = "v1", kind = "ConfigMap",
        metadata = { name = "target" }, data = { other = "1", msg = "old" } })
      K.post(port, { name = "target", msg = "patched" })
      K.wait_metric(p, "triggered", "pt", 1)
      assert.same({ other = "1", msg = "patched" }, assert(srv:get(CM:format("default", "target"))).data)
      K.post(port, { name = "absent", msg = "made" })
      K.wait_metric(p, "triggered", "pt", 2)
      local cm = assert(srv:get(CM:format("default", "absent")))
      assert.equal("made", cm.data.msg)
      assert.equal("pt", cm.metadata.labels["events.argoproj.io/trigger"])
    end)

    it("strategic-merge and JSON patch strategies", function()
      local srv, p, port = start_all({
        { name = "smp", body = k8s_body{ operation = "patch", patchStrategy = "application/strategic-merge-patch+json", object = CONFIGMAP } },
        { name = "jp", body = k8s_body{ operation = "patch", patchStrategy = "application/json-patch+json", msg = false, object = [[
              apiVersion: v1
              kind: ConfigMap
              metadata:
                name: placeholder
              patch:
                - op: add
                  path: /data/added
                  value: by-json-patch
]] } },
      })
      srv:create("/api/v1/namespaces/default/configmaps", { apiVersion = "v1", kind = "ConfigMap",
        metadata = { name = "target" }, data = { other = "1" } })
      K.post(port, { name = "target", msg = "smp" })
      K.wait_metric(p, "triggered", "smp", 1)
      K.wait_metric(p, "triggered", "jp", 1)
      local cm = assert(srv:get(CM:format("default", "target")))
      assert.equal("1", cm.data.other)
      assert.equal("smp", cm.data.msg)
      assert.equal("by-json-patch", cm.data.added)
    end)
  end)

  describe("delete", function()
    it("deletes the object; a missing object is not a failure", function()
      local srv, p, port = start_all({ { name = "rm", body = k8s_body{ operation = "delete", msg = false, object = CONFIGMAP } } })
      srv:create("/api/v1/namespaces/default/configmaps", { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "doomed" } })
      K.post(port, { name = "doomed" })
      K.wait_metric(p, "triggered", "rm", 1)
      local _, st = srv:get(CM:format("default", "doomed"))
      assert.equal(404, st)
      K.post(port, { name = "never-was" })
      local m = K.wait_metric(p, "triggered", "rm", 2)
      assert.equal(0, m['argo_events_action_failed_total{sensor_name="s",trigger_name="rm"}'])
    end)
  end)

  describe("source", function()
    local MANIFEST = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s-\ndata:\n  msg: none\n"
    local function get(srv, name) return srv:get(CM:format("default", name)) end

    it("inline, file and configmap: the manifest is read at each firing, then the parameters apply", function()
      local dir = H.tmpdir()
      H.write(dir .. "/cm.yaml", MANIFEST:format("file"))
      assert(os.execute("mkdir -p " .. dir .. "/config/manifests") == 0)
      H.write(dir .. "/config/manifests/cm", MANIFEST:format("configmap"))
      local inline = "            inline: |\n" .. ("              " .. MANIFEST:format("inline"):gsub("\n(.)", "\n              %1"))
      local srv, p, port = start_all({
        { name = "inline", body = with_source(inline) },
        { name = "file", body = with_source("            file:\n              path: " .. dir .. "/cm.yaml\n") },
        { name = "cm", body = with_source("            configmap:\n              name: manifests\n              key: cm\n") },
      }, nil, nil, { env = { HERALD_CONFIG_DIR = dir .. "/config" } })
      K.post(port, { name = "one", msg = "hi" })
      for _, t in ipairs{ "inline", "file", "cm" } do K.wait_metric(p, "triggered", t, 1) end
      assert.equal("hi", assert(get(srv, "inline-one")).data.msg)
      assert.equal("hi", assert(get(srv, "file-one")).data.msg)
      assert.equal("hi", assert(get(srv, "configmap-one")).data.msg)
      -- the file is read again at the next firing
      H.write(dir .. "/cm.yaml", MANIFEST:format("changed"))
      K.post(port, { name = "two", msg = "again" })
      K.wait_metric(p, "triggered", "file", 2)
      assert.equal("again", assert(get(srv, "changed-two")).data.msg)
      assert.equal(0, p:stop())
    end)

    it("url: fetched (without the cluster's credentials) when the trigger runs", function()
      local sinks = require "helpers.sink_client"
      local sink = sinks.start{ body = MANIFEST:format("url") }
      local missing = sinks.start{ status = 404 }
      local srv, p, port = start_all({
        { name = "url", body = with_source(("            url:\n              path: http://127.0.0.1:%d/manifests/cm.yaml\n"):format(sink.port)) },
        { name = "gone", body = with_source(("            url:\n              path: http://127.0.0.1:%d/nothing.yaml\n"):format(missing.port)) },
      })
      K.post(port, { name = "one", msg = "over http" })
      K.wait_metric(p, "triggered", "url", 1)
      local cm = assert(get(srv, "url-one"))
      assert.equal("over http", cm.data.msg)
      assert.equal("s", cm.metadata.labels["events.argoproj.io/sensor"])
      local reqs = sink.wait_requests(1, 5)
      assert.equal("GET", reqs[1].method)
      assert.equal("/manifests/cm.yaml", reqs[1].path)
      assert.is_nil(reqs[1].headers.authorization)
      -- each firing fetches again
      K.post(port, { name = "two", msg = "twice" })
      K.wait_metric(p, "triggered", "url", 2)
      assert.equal(2, #sink.wait_requests(2, 5))
      assert.truthy(get(srv, "url-two"))
      -- a 404 fails the action with the status
      K.wait_metric(p, "failed", "gone", 2)
      p:wait_for("source.url http://127.0.0.1:" .. missing.port .. "/nothing.yaml: response status 404")
      -- the manifest's server gone: a transport error, and herald keeps serving
      sink.stop()
      missing.stop()
      K.post(port, { name = "three", msg = "no server" })
      K.wait_metric(p, "failed", "url", 1)
      assert.is_nil(get(srv, "url-three"))
      assert.equal(0, p:stop())
    end)
  end)

  describe("source.git", function()
    local function sh(dir, cmd)
      local r = os.execute(("cd %s && %s >/dev/null 2>&1"):format(dir, cmd))
      assert(r == 0 or r == true, cmd)
    end
    local GIT = "git -c user.name=herald -c user.email=herald@example.com"
    local MANIFEST = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s-\ndata:\n  msg: none\n"
    -- the object's name: <trigger>-<manifest's name><body.name>
    local function git_body(git, trigger)
      return with_source("            git:\n" .. git, trigger or "t")
    end

    it("reads the manifest at the default branch, a branch, a tag, a ref or a remote, fetching at each firing", function()
      if os.execute("command -v git >/dev/null 2>&1") ~= 0 and os.execute("command -v git >/dev/null 2>&1") ~= true then
        pending("git is needed to make the test repository")
        return
      end
      local repo, cache = H.tmpdir(), H.tmpdir()
      sh(repo, "git init -q -b trunk . && mkdir -p manifests")
      H.write(repo .. "/manifests/cm.yaml", MANIFEST:format("trunk"))
      sh(repo, "ln -s cm.yaml manifests/link.yaml && git add -A && " .. GIT .. " commit -q -m one && git tag v1")
      sh(repo, "git checkout -q -b feature")
      H.write(repo .. "/manifests/cm.yaml", MANIFEST:format("feature"))
      sh(repo, GIT .. " commit -q -am two && git checkout -q trunk")
      -- a fork whose trunk has a commit of its own: with `remote`, the revision comes from it
      local fork = H.tmpdir()
      sh(fork, ("git clone -q file://%s ."):format(repo))
      H.write(fork .. "/manifests/cm.yaml", MANIFEST:format("forked"))
      sh(fork, GIT .. " commit -q -am forked")
      local url = "file://" .. repo
      local function t(name, extra)
        return { name = name, body = git_body(("              url: %s\n              filePath: manifests/%s\n%s"):format(
          url, name == "link" and "link.yaml" or "cm.yaml", extra or ""), name) }
      end
      local srv, p, port = start_all({
        t("default"),
        t("branch", "              branch: feature\n"),
        t("tag", "              tag: v1\n"),
        t("ref", "              ref: refs/heads/feature\n              cloneDirectory: " .. cache .. "/clone\n"),
        t("link"),
        t("fork", ("              remote:\n                name: fork\n                urls: [\"file://%s\"]\n"):format(fork)),
      }, nil, nil, { env = { XDG_CACHE_HOME = cache } })
      K.post(port, { name = "one", msg = "m" }) -- data.msg has no value: the event must carry it
      for _, name in ipairs{ "default", "branch", "tag", "ref", "fork" } do K.wait_metric(p, "triggered", name, 1) end
      K.wait_metric(p, "failed", "link", 1)
      p:wait_for("manifests/link.yaml is a symbolic link, which is not allowed")
      assert.truthy(srv:get(CM:format("default", "default-trunk-one"))) -- the default branch: trunk
      assert.truthy(srv:get(CM:format("default", "branch-feature-one")))
      assert.truthy(srv:get(CM:format("default", "tag-trunk-one")))
      assert.truthy(srv:get(CM:format("default", "ref-feature-one")))
      assert.truthy(srv:get(CM:format("default", "fork-forked-one")))
      -- a new commit on trunk is fetched at the next firing; the tag stays where it was
      H.write(repo .. "/manifests/cm.yaml", MANIFEST:format("trunk2"))
      sh(repo, GIT .. " commit -q -am three")
      K.post(port, { name = "two", msg = "m" })
      K.wait_metric(p, "triggered", "default", 2)
      K.wait_metric(p, "triggered", "tag", 2)
      -- the repositories without a cloneDirectory are kept under $XDG_CACHE_HOME/herald/git
      local r = os.execute("test -d " .. cache .. "/herald/git")
      assert.is_true(r == 0 or r == true)
      assert.truthy(srv:get(CM:format("default", "default-trunk2-two")))
      assert.truthy(srv:get(CM:format("default", "tag-trunk-two")))
      -- a tag moved upstream is followed
      sh(repo, "git tag -f v1")
      K.post(port, { name = "three", msg = "m" })
      K.wait_metric(p, "triggered", "tag", 3)
      assert.truthy(srv:get(CM:format("default", "tag-trunk2-three")))
      assert.equal(0, p:stop())
    end)

    it("a missing file or revision fails the action; an unreachable repository is retried", function()
      local repo = H.tmpdir()
      sh(repo, "git init -q -b main .")
      H.write(repo .. "/cm.yaml", MANIFEST:format("x"))
      sh(repo, "git add -A && " .. GIT .. " commit -q -m one")
      local srv, p, port = start_all({
        { name = "nofile", body = git_body(("              url: file://%s\n              filePath: nothere.yaml\n"):format(repo)) },
        { name = "nobranch", body = git_body(("              url: file://%s\n              filePath: cm.yaml\n              branch: gone\n"):format(repo)) },
        { name = "norepo", body = git_body("              url: file:///nonexistent/repo\n              filePath: cm.yaml\n") },
      }, nil, nil, { env = { XDG_CACHE_HOME = H.tmpdir() } })
      K.post(port, { name = "a" })
      for _, name in ipairs{ "nofile", "nobranch", "norepo" } do K.wait_metric(p, "failed", name, 1) end
      p:wait_for("nothere.yaml: no such file in the repository")
      p:wait_for("branch gone not found")
      p:wait_for("fetch failed")
      assert.is_nil(srv:get(CM:format("default", "t-x-a")))
      assert.equal(0, p:stop())
    end)
  end)

  describe("source.s3", function()
    it("GetObject signed with SigV4 (path style), then the parameters apply; a bad key or object fails", function()
      local cjson = require "cjson"
      local dir, secrets = H.tmpdir(), H.tmpdir()
      H.write(dir .. "/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: s3-\ndata:\n  msg: none\n")
      local out, port = dir .. "/requests.jsonl", H.free_port()
      H.write(out, "")
      local ep = H.spawn("luajit", { H.source_dir .. "/spec/peers/lambda_endpoint.lua", "--port", tostring(port),
        "--out", out, "--key", "AKIDS3TEST:s3cr3t/key", "--object", "manifests/k8s/my cm.yaml=" .. dir .. "/cm.yaml" })
      ep:wait_for("listening", { stream = "stdout" })
      assert(os.execute(("mkdir -p %s/minio"):format(secrets)) == 0)
      H.write(secrets .. "/minio/accesskey", "AKIDS3TEST\n")
      H.write(secrets .. "/minio/secretkey", "s3cr3t/key\n")
      H.write(secrets .. "/minio/wrongkey", "not-the-key\n")
      local function s3(name, key, secret)
        return { name = name, body = with_source(([[
            s3:
              endpoint: 127.0.0.1:%d
              insecure: true
              bucket: {name: manifests, key: "%s"}
              accessKey: {name: minio, key: accesskey}
              secretKey: {name: minio, key: %s}
]]):format(port, key, secret or "secretkey"), name) }
      end
      local srv, p, kport = start_all({
        s3("good", "k8s/my cm.yaml"),
        s3("badsig", "k8s/my cm.yaml", "wrongkey"),
        s3("nokey", "k8s/absent.yaml"),
      }, nil, nil, { args = { "--secrets-dir", secrets } })
      K.post(kport, { name = "one", msg = "from s3" })
      K.wait_metric(p, "triggered", "good", 1)
      K.wait_metric(p, "failed", "badsig", 1)
      K.wait_metric(p, "failed", "nokey", 1)
      assert.equal("from s3", assert(srv:get(CM:format("default", "good-s3-one"))).data.msg)
      p:wait_for("source.s3 manifests/k8s/my cm.yaml: response status 403 SignatureDoesNotMatch")
      p:wait_for("source.s3 manifests/k8s/absent.yaml: response status 404 NoSuchKey")
      -- the endpoint checked every signature itself; the good one verified, on the S3 path
      local verified = {}
      for line in H.read(out):gmatch("[^\n]+") do
        local r = cjson.decode(line)
        assert.equal("s3", r.api)
        if r.verified then verified[#verified + 1] = r.path end
      end
      table.sort(verified) -- good and nokey: signed right (the object of nokey is absent)
      assert.same({ "/manifests/k8s/absent.yaml", "/manifests/k8s/my%20cm.yaml" }, verified)
      assert.equal(0, p:stop())
      ep:kill()
    end)
  end)

  describe("failures", function()
    it("409 AlreadyExists, 422 Invalid and 403 Forbidden count as failed, with the server's message", function()
      local srv, p, port = start_all({
        { name = "mk", body = k8s_body{ object = CONFIGMAP } },
        { name = "secret", body = k8s_body{ msg = false, object = [[
              apiVersion: v1
              kind: Secret
              metadata:
                name: placeholder
]] } },
      }, nil, { args = { "--forbid", "create:secrets" } })
      K.post(port, { name = "dup", msg = "1" })
      K.wait_metric(p, "triggered", "mk", 1)
      K.wait_metric(p, "failed", "secret", 1)
      p:wait_for('secrets is forbidden: User', { timeout = 5 })
      assert.truthy(p:output("stderr"):find("403", 1, true))
      K.post(port, { name = "dup", msg = "2" }) -- 409
      K.wait_metric(p, "failed", "mk", 1)
      p:wait_for('configmaps \\"dup\\" already exists', { timeout = 5 })
      K.post(port, { name = "Not_A_Name", msg = "3" }) -- 422
      local m = K.wait_metric(p, "failed", "mk", 2)
      p:wait_for("is invalid: metadata.name", { timeout = 5 })
      assert.equal(1, m['argo_events_action_triggered_total{sensor_name="s",trigger_name="mk"}'])
      assert.equal("1", assert(srv:get(CM:format("default", "dup"))).data.msg)
    end)

    it("a kind the server does not serve, and a wrong token, fail", function()
      local srv = K.start()
      local kc = srv:kubeconfig{ token = "wrong" }
      local p, port = K.herald(kc, { { name = "mk", body = k8s_body{ object = CONFIGMAP } } })
      K.post(port, { name = "x", msg = "y" })
      K.wait_metric(p, "failed", "mk", 1)
      p:wait_for("401 Unauthorized")
      p:wait_for("refused the kubeconfig's credentials (HTTP 401)", { plain = true })
      local kc2 = srv:kubeconfig()
      local p2, port2 = K.herald(kc2, { { name = "odd", body = k8s_body{ msg = false, object = [[
              apiVersion: example.com/v1
              kind: Gadget
              metadata:
                name: placeholder
]] } } })
      K.post(port2, { name = "g" })
      K.wait_metric(p2, "failed", "odd", 1)
      p2:wait_for("no API group/version example.com/v1")
    end)

    it("server down: says so once at start, and the action fails (transport error)", function()
      local srv = K.start()
      local kc = srv:kubeconfig()
      srv.proc:kill()
      local p, port = K.herald(kc, { { name = "mk", body = k8s_body{ object = CONFIGMAP } } })
      local line = p:wait_for("not reachable", { plain = true })
      assert.matches("Kubernetes API server https?://127%.0%.0%.1:%d+ not reachable %(", line)
      assert.matches("herald run --dry-run", line, 1, true)
      K.post(port, { name = "x", msg = "y" })
      local m = K.wait_metric(p, "failed", "mk", 1)
      assert.equal(0, m['argo_events_action_triggered_total{sensor_name="s",trigger_name="mk"}'] or 0)
      p:wait_for("discovery of v1")
      -- herald keeps serving
      K.post(port, { name = "x2", msg = "y" })
      K.wait_metric(p, "failed", "mk", 2)
      assert.equal(1, p:count("not reachable"))
      assert.equal(0, p:stop())
    end)

    it("starts without a cluster configuration, says so once, and counts each firing as failed", function()
      local dir = H.tmpdir()
      local port = H.free_port()
      H.write(dir .. "/es.yaml", H.webhook_es{ name = "es", event = "ev", port = port })
      H.write(dir .. "/sensor.yaml", H.sensor{ name = "s", deps = { { name = "d" } },
        triggers = { { name = "mk", body = k8s_body{ object = CONFIGMAP } } } })
      local p = H.start({ "run", dir }, { env = { KUBECONFIG = dir .. "/missing", KUBERNETES_SERVICE_HOST = "" } })
      local line = p:wait_for("no Kubernetes cluster reachable", { plain = true })
      assert.matches("missing: no such file", line, 1, true)
      assert.matches("the k8s trigger mk (sensor s) will fail", line, 1, true)
      assert.matches("herald run --dry-run", line, 1, true)
      p:wait_for("herald started")
      K.post(port, { name = "a", msg = "m" })
      K.post(port, { name = "b", msg = "m" })
      K.wait_metric(p, "failed", "mk", 2)
      assert.equal(1, p:count("no Kubernetes cluster"))
      assert.equal(0, p:stop())
    end)
  end)
end)
