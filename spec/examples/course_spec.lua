-- examples/course: the course's three manifests (EventSource, Sensor with a k8s trigger,
-- EventBus nats.native) end to end, as the course's lab runs them:
--   herald run + the course's curl    -> the Job is created through the Kubernetes API that
--                                        KUBECONFIG names (the fake API server of
--                                        spec/peers/kube-apiserver.js)
--   herald run --dry-run              -> the Job is printed, nothing is created
--   herald run with no cluster        -> said once at start, with what to do
-- The EventSource's port 12000 is replaced by a free port so that specs can run side by side;
-- the Sensor and the EventBus are used as they are.
local H = require "helpers.herald"
local K = require "triggers.k8s.kube_helper"
local cjson = require "cjson"

local EX = H.source_dir .. "/examples/course/"

--- A folder with the three course files, the webhook on a free port. Returns dir, port.
local function course_dir()
  local dir = H.tmpdir()
  local port = H.free_port()
  H.write(dir .. "/eventsource.yaml", (H.read(EX .. "eventsource.yaml"):gsub("12000", tostring(port))))
  H.write(dir .. "/sensor.yaml", H.read(EX .. "sensor.yaml"))
  H.write(dir .. "/eventbus.yaml", H.read(EX .. "eventbus.yaml"))
  return dir, port
end

--- The course's curl: POST {"message":"hello"} to /example.
local function curl(port)
  local st, _, body = H.post_json(port, "/example", '{"message":"hello"}')
  assert.equal(200, st)
  assert.equal("success", body)
end

local function start(dir, port, args, env)
  local argv = { "run", dir }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local p = H.start(argv, { env = env })
  p:wait_for("herald started", { timeout = 10 })
  H.wait_port(port, 5)
  return p
end

describe("examples/course", function()
  it("lints: warnings allowed, no errors", function()
    local code, out, err = H.run{ "lint", EX }
    assert.equal(0, code, err)
    assert.matches("^3 object%(s%) valid", out)
    assert.not_matches("error", err)
  end)

  it("herald run with the course's curl creates the Job through the kubeconfig's API server", function()
    if not K.has_tools() then return pending("needs node, openssl and curl for the fake API server") end
    local srv = K.start()
    local dir, port = course_dir()
    local p = start(dir, port, {}, { KUBECONFIG = srv:kubeconfig() })
    curl(port)
    K.wait_metric(p, "triggered", "k8s-trigger", 1, "webhook-sensor")
    local list = srv:get("/apis/batch/v1/namespaces/default/jobs")
    assert.is_table(list)
    assert.equal(1, #list.items)
    local job = list.items[1]
    assert.matches("^webhook%-job%-", job.metadata.name)
    local c = job.spec.template.spec.containers[1]
    assert.equal("busybox", c.image)
    assert.same({ "echo", "Hello from Argo Sensor!" }, c.command)
    assert.equal("Never", job.spec.template.spec.restartPolicy)
    assert.equal("webhook-sensor", job.metadata.labels["events.argoproj.io/sensor"])
    assert.equal(0, p:stop())
    srv.proc:stop()
  end)

  it("herald run --dry-run prints the Job and needs no cluster", function()
    local dir, port = course_dir()
    local p = start(dir, port, { "--dry-run" }, { KUBECONFIG = "", HOME = H.tmpdir() })
    curl(port)
    local line = p:wait_for('"dryRun":true', { stream = "stdout", plain = true })
    local l = cjson.decode(line)
    assert.equal("webhook-sensor", l.sensor)
    assert.equal("k8s-trigger", l.trigger)
    assert.equal("k8s", l.action.type)
    assert.equal("create", l.action.operation)
    assert.equal("Job", l.action.object.kind)
    assert.equal("webhook-job-", l.action.object.metadata.generateName)
    assert.same({ "echo", "Hello from Argo Sensor!" }, l.action.object.spec.template.spec.containers[1].command)
    assert.equal(0, p:count("no Kubernetes cluster"))
    assert.equal(0, p:stop())
  end)

  it("herald run with no cluster says so once at start, and how to see the Job", function()
    local dir, port = course_dir()
    local p = start(dir, port, {}, { KUBECONFIG = "", HOME = H.tmpdir() })
    local warn = cjson.decode(p:wait_for("no Kubernetes cluster reachable", { plain = true }))
    assert.equal("warn", warn.level)
    assert.matches("the k8s trigger k8s-trigger (sensor webhook-sensor) will fail", warn.msg, 1, true)
    assert.matches("--dry-run", warn.msg, 1, true)
    curl(port)
    curl(port)
    K.wait_metric(p, "failed", "k8s-trigger", 2, "webhook-sensor")
    assert.equal(1, p:count("no Kubernetes cluster")) -- once, not per event
    assert.equal(0, p:stop())
  end)
end)
