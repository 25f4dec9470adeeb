-- spec/triggers/argoWorkflow/argo_spec.lua: the argoWorkflow trigger, driven through the real
-- `herald` binary against the fake Kubernetes API server. Herald makes the changes the argo CLI
-- would (no CLI involved); each test checks the Workflow objects they leave behind.
local H = require "helpers.herald"
local K = require "triggers.k8s.kube_helper"

local WF = "/apis/argoproj.io/v1alpha1/namespaces/default/workflows"

-- An argoWorkflow trigger body: `operation`, source.resource = object (YAML indented 14), and a
-- parameter metadata.name <- body.name unless name_param == false.
local function argo_body(op, object, name_param, extra)
  return table.concat{
    "        argoWorkflow:\n",
    "          operation: ", op, "\n",
    "          source:\n            resource:\n", object,
    name_param ~= false and [[
          parameters:
            - src:
                dependencyName: d
                dataKey: body.name
              dest: metadata.name
]] or "",
    extra or "",
  }
end

local NAMED_WF = [[
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata:
                name: placeholder
]]

local function start(triggers)
  local srv = K.start()
  local p, port = K.herald(srv:kubeconfig(), triggers)
  return srv, p, port
end

local function list(srv, selector)
  local st, l = srv:api("GET", WF .. "?labelSelector=" .. selector:gsub("/", "%%2F"):gsub("=", "%%3D"))
  assert.equal(200, st)
  return l.items
end

local function make_wf(srv, name, spec, status, labels)
  return srv:create(WF, { apiVersion = "argoproj.io/v1alpha1", kind = "Workflow",
    metadata = { name = name, labels = labels }, spec = spec or { entrypoint = "main" }, status = status })
end

describe("argoWorkflow trigger", function()
  if not K.has_tools() then
    pending("node, openssl and curl are needed for the fake Kubernetes API server")
    return
  end

  it("submit: creates the Workflow with parameters applied and Argo's labels", function()
    local srv, p, port = start({ { name = "sub", body = argo_body("submit", [[
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata:
                generateName: hello-
              spec:
                entrypoint: main
                arguments:
                  parameters:
                    - name: message
                      value: none
]], false, [[
          parameters:
            - src:
                dependencyName: d
                dataKey: body.msg
              dest: spec.arguments.parameters.0.value
]]) } })
    K.post(port, { msg = "hello world" })
    K.wait_metric(p, "triggered", "sub", 1)
    local items = list(srv, "events.argoproj.io/trigger=sub")
    assert.equal(1, #items)
    local wf = items[1]
    assert.truthy(wf.metadata.name:match("^hello%-%w%w%w%w%w$"), wf.metadata.name)
    assert.equal("hello world", wf.spec.arguments.parameters[1].value)
    assert.equal("s", wf.metadata.labels["events.argoproj.io/sensor"])
    assert.truthy(tonumber(wf.metadata.labels["events.argoproj.io/action-timestamp"]))
    if K.has_kubectl() then
      local ok, out = srv:kubectl("get workflows -o name")
      assert.truthy(ok, out)
      assert.equal("workflow.argoproj.io/" .. wf.metadata.name .. "\n", out)
    end
  end)

  it("submit and submit-from with args: the changes `argo submit` makes with those flags", function()
    local args = [[
          args: ["--serviceaccount", "runner", "-p", "message=from args", "--parameter=extra=1",
                 "--labels=team=a,env=dev", "-l", "tier=x", "--entrypoint", "alt", "--generate-name", "custom-",
                 "--instanceid", "i1", "--priority=5", "-o", "name", "--strict=false",
                 "--node-field-selector", "phase=Running", "--status=Running"]
]]
    local srv, p, port = start({
      { name = "sub", body = argo_body("submit", [[
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata:
                generateName: hello-
                labels: {team: b, keep: "yes"}
              spec:
                entrypoint: main
                arguments:
                  parameters:
                    - name: other
                      value: kept
                    - name: message
                      value: none
]], false, args) },
      { name = "from", body = argo_body("submit-from", [[
              apiVersion: argoproj.io/v1alpha1
              kind: WorkflowTemplate
              metadata:
                name: placeholder
]], nil, [[
          args: ["-p", "message=hi", "--name", "fixed-name"]
]]) },
    })
    srv:create("/apis/argoproj.io/v1alpha1/namespaces/default/workflowtemplates", { apiVersion = "argoproj.io/v1alpha1",
      kind = "WorkflowTemplate", metadata = { name = "build" }, spec = { entrypoint = "main" } })
    K.post(port, { name = "build" })
    K.wait_metric(p, "triggered", "sub", 1)
    K.wait_metric(p, "triggered", "from", 1)
    local wf = list(srv, "events.argoproj.io/trigger=sub")[1]
    assert.truthy(wf.metadata.name:match("^custom%-"), wf.metadata.name)
    assert.equal("runner", wf.spec.serviceAccountName)
    assert.equal("alt", wf.spec.entrypoint)
    assert.equal(5, wf.spec.priority)
    -- the parameters given first, then the Workflow's own not given
    assert.same({ { name = "message", value = "from args" }, { name = "extra", value = "1" },
      { name = "other", value = "kept" } }, wf.spec.arguments.parameters)
    local l = wf.metadata.labels
    assert.same({ "a", "dev", "x", "yes", "i1" }, { l.team, l.env, l.tier, l.keep, l["workflows.argoproj.io/controller-instanceid"] })
    local from = list(srv, "events.argoproj.io/trigger=from")[1]
    assert.equal("fixed-name", from.metadata.name)
    assert.same({ name = "build" }, from.spec.workflowTemplateRef)
    assert.same({ { name = "message", value = "hi" } }, from.spec.arguments.parameters)
    assert.equal(0, p:stop())
  end)

  it("args are checked at load: each unknown or unsupported flag named at its position", function()
    local dir = H.tmpdir()
    H.write(dir .. "/s.yaml", H.sensor{ deps = { { name = "d" } }, triggers = {
      { name = "a", body = argo_body("submit", NAMED_WF, false, '          args: ["--serviceaccount", "x", "--wait"]\n') },
      { name = "b", body = argo_body("submit", NAMED_WF, false, '          args: ["-p", "novalue"]\n') },
      { name = "c", body = argo_body("submit", NAMED_WF, false, '          args: ["--bogus"]\n') },
      { name = "e", body = argo_body("resume", NAMED_WF, false, '          args: ["--name", "x"]\n') },
    } })
    local code, _, err = H.run{ "lint", dir }
    assert.equal(1, code)
    assert.matches("s.yaml:%d+:%d+: spec.triggers%[0%].template.argoWorkflow.args%[2%]: %-%-wait is not supported: Herald does not wait", err)
    assert.matches('spec.triggers%[1%].template.argoWorkflow.args%[1%]: expected a parameter of the form NAME=VALUE, got "novalue"', err)
    assert.matches('spec.triggers%[2%].template.argoWorkflow.args%[0%]: "%-%-bogus" is not an `argo submit` flag Herald knows', err)
    assert.matches("spec.triggers%[3%].template.argoWorkflow.args: args apply to operation submit and submit%-from only", err)
  end)

  it("submit: a Workflow from source.url, fetched at each firing", function()
    local sink = require("helpers.sink_client").start{ body = "apiVersion: argoproj.io/v1alpha1\n"
      .. "kind: Workflow\nmetadata:\n  generateName: fetched-\nspec:\n  entrypoint: main\n" }
    local srv, p, port = start({ { name = "url", body = table.concat{
      "        argoWorkflow:\n          operation: submit\n          source:\n            url:\n",
      ("              path: http://127.0.0.1:%d/wf.yaml\n"):format(sink.port), [[
          parameters:
            - src:
                dependencyName: d
                dataKey: body.entry
              dest: spec.entrypoint
]] } } })
    K.post(port, { entry = "first" })
    K.post(port, { entry = "second" })
    K.wait_metric(p, "triggered", "url", 2)
    local entries = {}
    for _, wf in ipairs(list(srv, "events.argoproj.io/trigger=url")) do
      assert.truthy(wf.metadata.name:match("^fetched%-"), wf.metadata.name)
      entries[#entries + 1] = wf.spec.entrypoint
    end
    table.sort(entries)
    assert.same({ "first", "second" }, entries)
    assert.equal(2, #sink.wait_requests(2, 5))
    sink.stop()
  end)

  it("submit-from: WorkflowTemplate, ClusterWorkflowTemplate and CronWorkflow", function()
    local srv, p, port = start({
      { name = "from-wt", body = argo_body("submit-from", [[
              apiVersion: argoproj.io/v1alpha1
              kind: WorkflowTemplate
              metadata:
                name: placeholder
]]) },
      { name = "from-cwt", body = argo_body("submit-from", [[
              apiVersion: argoproj.io/v1alpha1
              kind: ClusterWorkflowTemplate
              metadata:
                name: placeholder
]]) },
      { name = "from-cron", body = argo_body("submit-from", [[
              apiVersion: argoproj.io/v1alpha1
              kind: CronWorkflow
              metadata:
                name: placeholder
]]) },
    })
    srv:create("/apis/argoproj.io/v1alpha1/namespaces/default/workflowtemplates", { apiVersion = "argoproj.io/v1alpha1",
      kind = "WorkflowTemplate", metadata = { name = "build" }, spec = { entrypoint = "main" } })
    srv:create("/apis/argoproj.io/v1alpha1/clusterworkflowtemplates", { apiVersion = "argoproj.io/v1alpha1",
      kind = "ClusterWorkflowTemplate", metadata = { name = "build" }, spec = { entrypoint = "main" } })
    srv:create("/apis/argoproj.io/v1alpha1/namespaces/default/cronworkflows", { apiVersion = "argoproj.io/v1alpha1",
      kind = "CronWorkflow", metadata = { name = "build" }, spec = { schedule = "* * * * *",
        workflowMetadata = { labels = { team = "ci" } }, workflowSpec = { entrypoint = "nightly" } } })
    K.post(port, { name = "build" })
    K.wait_metric(p, "triggered", "from-wt", 1)
    K.wait_metric(p, "triggered", "from-cwt", 1)
    K.wait_metric(p, "triggered", "from-cron", 1)
    local wt = list(srv, "events.argoproj.io/trigger=from-wt")
    assert.equal(1, #wt)
    assert.same({ name = "build" }, wt[1].spec.workflowTemplateRef)
    assert.equal("build", wt[1].metadata.labels["workflows.argoproj.io/workflow-template"])
    assert.truthy(wt[1].metadata.name:match("^build%-"))
    local cwt = list(srv, "events.argoproj.io/trigger=from-cwt")
    assert.same({ name = "build", clusterScope = true }, cwt[1].spec.workflowTemplateRef)
    assert.equal("build", cwt[1].metadata.labels["workflows.argoproj.io/cluster-workflow-template"])
    local cron = list(srv, "events.argoproj.io/trigger=from-cron")
    assert.equal("nightly", cron[1].spec.entrypoint)
    assert.equal("ci", cron[1].metadata.labels.team)
    assert.equal("build", cron[1].metadata.labels["workflows.argoproj.io/cron-workflow"])
    assert.equal("CronWorkflow", cron[1].metadata.ownerReferences[1].kind)
    -- a template that does not exist: failed, nothing created
    K.post(port, { name = "nope" })
    K.wait_metric(p, "failed", "from-wt", 1)
    p:wait_for('workflowtemplates.argoproj.io \\"nope\\" not found')
    assert.equal(1, #list(srv, "events.argoproj.io/trigger=from-wt"))
  end)

  it("suspend, resume, terminate and stop edit the named Workflow", function()
    local srv, p, port = start({
      { name = "suspend", body = argo_body("suspend", NAMED_WF) },
    })
    make_wf(srv, "wf-a", { entrypoint = "main" }, { phase = "Running" })
    K.post(port, { name = "wf-a" })
    K.wait_metric(p, "triggered", "suspend", 1)
    assert.is_true(assert(srv:get(WF .. "/wf-a")).spec.suspend)
    p:stop()

    p, port = K.herald(srv:kubeconfig(), {
      { name = "resume", body = argo_body("resume", NAMED_WF) },
    })
    -- a suspended workflow waiting in a suspend node
    local st = srv:api("PATCH", WF .. "/wf-a", { status = { phase = "Running", nodes = {
      ["wf-a"] = { id = "wf-a", type = "Steps", phase = "Running" },
      ["wf-a-1"] = { id = "wf-a-1", type = "Suspend", phase = "Running",
        outputs = { parameters = { { name = "approve", valueFrom = { default = "yes" } } } } },
    } } }, "application/merge-patch+json")
    assert.equal(200, st)
    K.post(port, { name = "wf-a" })
    K.wait_metric(p, "triggered", "resume", 1)
    local wf = assert(srv:get(WF .. "/wf-a"))
    assert.is_nil(wf.spec.suspend)
    assert.equal("Succeeded", wf.status.nodes["wf-a-1"].phase)
    assert.truthy(wf.status.nodes["wf-a-1"].finishedAt)
    assert.equal("yes", wf.status.nodes["wf-a-1"].outputs.parameters[1].value)
    assert.equal("Running", wf.status.nodes["wf-a"].phase)
    p:stop()

    p, port = K.herald(srv:kubeconfig(), {
      { name = "terminate", body = argo_body("terminate", NAMED_WF) },
      { name = "stop", body = argo_body("stop", NAMED_WF, false, [[
          parameters:
            - src:
                dependencyName: d
                dataKey: body.other
              dest: metadata.name
]]) },
    })
    make_wf(srv, "wf-b")
    K.post(port, { name = "wf-a", other = "wf-b" })
    K.wait_metric(p, "triggered", "terminate", 1)
    K.wait_metric(p, "triggered", "stop", 1)
    assert.equal("Terminate", assert(srv:get(WF .. "/wf-a")).spec.shutdown)
    assert.equal("Stop", assert(srv:get(WF .. "/wf-b")).spec.shutdown)
    -- a workflow that does not exist
    K.post(port, { name = "ghost", other = "ghost" })
    K.wait_metric(p, "failed", "terminate", 1)
    K.wait_metric(p, "failed", "stop", 1)
  end)

  it("suspend refuses a completed workflow", function()
    local srv, p, port = start({ { name = "suspend", body = argo_body("suspend", NAMED_WF) } })
    make_wf(srv, "done-wf", nil, { phase = "Succeeded" })
    K.post(port, { name = "done-wf" })
    K.wait_metric(p, "failed", "suspend", 1)
    p:wait_for("cannot suspend completed workflow")
    assert.is_nil(assert(srv:get(WF .. "/done-wf")).spec.suspend)
  end)

  it("retry: a failed workflow runs again without its failed pod nodes; a running one is refused", function()
    local srv, p, port = start({ { name = "retry", body = argo_body("retry", NAMED_WF) } })
    make_wf(srv, "broken", { entrypoint = "main", shutdown = "Stop" }, { phase = "Failed", message = "boom",
      finishedAt = "2025-01-01T00:00:00Z", nodes = {
        broken = { id = "broken", type = "Steps", phase = "Failed", children = { "broken-ok", "broken-bad" } },
        ["broken-ok"] = { id = "broken-ok", type = "Pod", phase = "Succeeded" },
        ["broken-bad"] = { id = "broken-bad", type = "Pod", phase = "Failed" },
      } }, { ["workflows.argoproj.io/completed"] = "true", ["workflows.argoproj.io/phase"] = "Failed" })
    make_wf(srv, "busy", nil, { phase = "Running" })
    K.post(port, { name = "broken" })
    K.wait_metric(p, "triggered", "retry", 1)
    local wf = assert(srv:get(WF .. "/broken"))
    assert.equal("Running", wf.status.phase)
    assert.is_nil(wf.status.message)
    assert.is_nil(wf.status.finishedAt)
    assert.is_nil(wf.spec.shutdown)
    assert.is_nil(wf.metadata.labels["workflows.argoproj.io/completed"])
    assert.is_nil(wf.status.nodes["broken-bad"])
    assert.equal("Succeeded", wf.status.nodes["broken-ok"].phase)
    assert.equal("Running", wf.status.nodes.broken.phase)
    assert.same({ "broken-ok" }, wf.status.nodes.broken.children)
    K.post(port, { name = "busy" })
    K.wait_metric(p, "failed", "retry", 1)
    p:wait_for("must be Failed/Error to retry")
  end)

  it("resubmit: a new Workflow from the old one's spec", function()
    local srv, p, port = start({ { name = "resubmit", body = argo_body("resubmit", NAMED_WF) } })
    make_wf(srv, "orig", { entrypoint = "main", shutdown = "Terminate", arguments = { parameters = { { name = "x", value = "1" } } } },
      { phase = "Failed" }, { team = "ci", ["workflows.argoproj.io/completed"] = "true" })
    K.post(port, { name = "orig" })
    K.wait_metric(p, "triggered", "resubmit", 1)
    local items = list(srv, "workflows.argoproj.io/resubmitted-from-workflow=orig")
    assert.equal(1, #items)
    local wf = items[1]
    assert.truthy(wf.metadata.name:match("^orig%-"))
    assert.equal("ci", wf.metadata.labels.team)
    assert.is_nil(wf.metadata.labels["workflows.argoproj.io/completed"])
    assert.equal("resubmit", wf.metadata.labels["events.argoproj.io/trigger"])
    assert.equal("1", wf.spec.arguments.parameters[1].value)
    assert.is_nil(wf.spec.shutdown)
    assert.is_nil(wf.status)
    assert.equal("Failed", assert(srv:get(WF .. "/orig")).status.phase)
  end)

  it("submit of a duplicate name fails with 409; server down fails", function()
    local srv, p, port = start({ { name = "sub", body = argo_body("submit", NAMED_WF .. [[
              spec:
                entrypoint: main
]]) } })
    K.post(port, { name = "same" })
    K.wait_metric(p, "triggered", "sub", 1)
    K.post(port, { name = "same" })
    K.wait_metric(p, "failed", "sub", 1)
    p:wait_for('workflows.argoproj.io \\"same\\" already exists')
    srv.proc:kill()
    K.post(port, { name = "other" })
    K.wait_metric(p, "failed", "sub", 2)
  end)
end)
