-- herald/kube.lua: what the k8s and argoWorkflow triggers do, as Lua coroutines that
-- talk to the Kubernetes API server through their C host (lib/kube/kube.c).
--
--   kube.c execute(action) --> coroutine _M.run(ctx)
--        ^                         | coroutine.yield(method, path, body, content_type)
--        |  resume(status, body)   v
--        +---- libcurl on the libuv loop (status 0 = transport error, body = its text)
--   _M.run returns "done" | "retry" | "failed", reason
--
-- Also _M.load_config(): the cluster to talk to (kubeconfig or in-cluster service account).
-- Part of the stdlib compiled into the binary (module herald.kube).
local _M = {}

local core = require "herald.core"
local argo_cli = require "herald.argo_cli"
local null = require("cjson").null -- lightuserdata NULL, as the YAML loader uses it too

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local concat, fmt, char, byte = table.concat, string.format, string.char, string.byte
local yield = coroutine.yield

-- JSON ---------------------------------------------------------------------------------------
-- herald.json: lua-cjson 2.1.0 decodes [] to {} and encodes it back as {}, so a replaced object
-- would change `args: []` into `args: {}`; herald.json marks empty arrays (the one marker every
-- Herald module honours, event data included) and encodes them as [].
local json = require "herald.json"
local ARRAY = json.ARRAY_MT
_M.ARRAY = ARRAY

--- Decodes JSON text; returns the value (null as cjson.null, empty arrays marked) or nil, err.
_M.json_decode = json.try_decode

--- Encodes a Lua value as JSON text (objects with sorted keys, numbers as Go writes them).
function _M.json_encode(v)
  return json.encode(v)
end

-- Cluster configuration ----------------------------------------------------------------------

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_INDEX = {}
for i = 1, 64 do B64_INDEX[byte(B64, i)] = i - 1 end

local function b64decode(s)
  s = s:gsub("[^%w%+/]", "")
  local out, bits, nbits = {}, 0, 0
  for i = 1, #s do
    bits = bits * 64 + B64_INDEX[byte(s, i)]
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      local b = math.floor(bits / 2 ^ nbits)
      out[#out + 1] = char(b)
      bits = bits - b * 2 ^ nbits
    end
  end
  return concat(out)
end
_M.b64decode = b64decode

local function find_named(list, name)
  if type(list) ~= "table" then return nil end
  for _, e in ipairs(list) do
    if type(e) == "table" and e.name == name then return e end
  end
end

local function resolve_path(dir, p)
  if type(p) ~= "string" or p == "" then return nil end
  if p:sub(1, 1) == "/" then return p end
  return dir .. "/" .. p
end

local SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

local function in_cluster(env)
  local host, port = env("KUBERNETES_SERVICE_HOST"), env("KUBERNETES_SERVICE_PORT")
  if not host or host == "" or not port or port == "" then return nil end
  local token = core.read_file(SA_DIR .. "/token")
  if not token then return nil end
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  local ns = core.read_file(SA_DIR .. "/namespace")
  return {
    server = "https://" .. host .. ":" .. port, token_file = SA_DIR .. "/token",
    ca_file = SA_DIR .. "/ca.crt", namespace = ns and ns:match("^%s*(.-)%s*$") or nil,
    source = "in-cluster service account",
  }
end

local function from_kubeconfig(path)
  local text, err = core.read_file(path)
  if not text then return nil, fmt("cannot read kubeconfig %s: %s", path, tostring(err)) end
  local docs, perr = core.yaml_load(text, path)
  if not docs then return nil, perr end
  local kc = docs[1]
  if type(kc) ~= "table" then return nil, path .. ": not a kubeconfig" end
  local dir = path:match("^(.*)/[^/]*$") or "."
  local ctx_name = kc["current-context"]
  local entry = find_named(kc.contexts, ctx_name)
  if not entry and type(kc.contexts) == "table" and #kc.contexts == 1 then entry = kc.contexts[1] end
  if not entry or type(entry.context) ~= "table" then
    return nil, fmt("%s: current-context %q not found", path, tostring(ctx_name))
  end
  local ctx = entry.context
  local cl = find_named(kc.clusters, ctx.cluster)
  if not cl or type(cl.cluster) ~= "table" or type(cl.cluster.server) ~= "string" then
    return nil, fmt("%s: cluster %q of context %q not found or has no server", path,
      tostring(ctx.cluster), tostring(entry.name))
  end
  local c = cl.cluster
  local u = (find_named(kc.users, ctx.user) or {}).user or {}
  if u.exec or u["auth-provider"] then
    return nil, fmt("%s: user %q: exec and auth-provider credentials are not supported; use a token or a client certificate",
      path, tostring(ctx.user))
  end
  local cfg = {
    server = c.server:gsub("/+$", ""),
    insecure = c["insecure-skip-tls-verify"] == true,
    ca_file = resolve_path(dir, c["certificate-authority"]),
    ca_data = c["certificate-authority-data"] and b64decode(c["certificate-authority-data"]),
    token = u.token, token_file = resolve_path(dir, u.tokenFile),
    cert_file = resolve_path(dir, u["client-certificate"]),
    cert_data = u["client-certificate-data"] and b64decode(u["client-certificate-data"]),
    key_file = resolve_path(dir, u["client-key"]),
    key_data = u["client-key-data"] and b64decode(u["client-key-data"]),
    username = u.username, password = u.password,
    namespace = ctx.namespace, source = "kubeconfig " .. path .. " context " .. tostring(entry.name),
  }
  return cfg
end

--- The cluster Herald talks to: $KUBECONFIG (first file of the list), else the in-cluster
--- service account, else ~/.kube/config (Argo's sensor: kubeconfig when given, else
--- in-cluster). Returns {server, token|token_file, ca_file|ca_data, cert_*, key_*, insecure,
--- namespace, source} or nil, err. env: a getenv function (os.getenv).
function _M.load_config(env)
  env = env or os.getenv
  local kcs = env("KUBECONFIG")
  if kcs and kcs ~= "" then
    for p in kcs:gmatch("[^:]+") do
      if core.read_file(p) then return from_kubeconfig(p) end
    end
    return nil, "KUBECONFIG=" .. kcs .. ": no such file"
  end
  local ic = in_cluster(env)
  if ic then return ic end
  local home = env("HOME")
  if home and core.read_file(home .. "/.kube/config") then return from_kubeconfig(home .. "/.kube/config") end
  return nil, "no cluster configured: set KUBECONFIG, or run in a pod with a service account (KUBERNETES_SERVICE_HOST)"
end

-- Talking to the API server ------------------------------------------------------------------

--- One HTTP round trip through the C host. Returns status (0 = transport error), body.
local function request(method, path, body, ctype)
  return yield(method, path, body, ctype)
end

--- Turns a non-2xx answer into a trigger result: 5xx, 429 and transport errors are worth
--- retrying; any other 4xx is final. The reason carries the server's Status message.
local function failure(what, status, body)
  if status == 0 then return "retry", fmt("%s: %s", what, tostring(body)) end
  local msg
  local st = _M.json_decode(body or "")
  if type(st) == "table" and type(st.message) == "string" then msg = st.message end
  msg = msg or (body or ""):sub(1, 200)
  local res = (status >= 500 or status == 429) and "retry" or "failed"
  return res, fmt("%s: %d %s", what, status, msg)
end
_M.failure = failure

local function ok(status) return status >= 200 and status < 300 end

local function urlenc(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return fmt("%%%02X", byte(c)) end))
end

--- The REST base of apiVersion: /api/v1 or /apis/<group>/<version>.
local function api_base(api_version)
  if not api_version:find("/", 1, true) then return "/api/" .. api_version end
  return "/apis/" .. api_version
end

--- The resource of apiVersion/kind from the server's discovery document (cached per trigger
--- in ctx.cache): {plural, namespaced}. Returns it or nil, result, reason.
local function resolve(ctx, api_version, kind)
  local key = api_version .. "/" .. kind
  local r = ctx.cache[key]
  if r then return r end
  local base = api_base(api_version)
  local st, body = request("GET", base, nil, nil)
  if not ok(st) then
    if st == 404 then
      return nil, "failed", fmt("the server has no API group/version %s (GET %s: 404)", api_version, base)
    end
    return nil, failure("discovery of " .. api_version, st, body)
  end
  local doc, err = _M.json_decode(body)
  if type(doc) ~= "table" or type(doc.resources) ~= "table" then
    return nil, "failed", "discovery of " .. api_version .. ": " .. tostring(err or "no resources")
  end
  -- cache every kind of this group/version at once (one GET per group/version per trigger)
  for _, res in ipairs(doc.resources) do
    if type(res) == "table" and type(res.name) == "string" and not res.name:find("/", 1, true) and res.kind then
      ctx.cache[api_version .. "/" .. res.kind] = { plural = res.name, namespaced = res.namespaced == true }
    end
  end
  r = ctx.cache[key]
  if not r then
    return nil, "failed", fmt("the server does not serve kind %s in %s", kind, api_version)
  end
  return r
end

local function collection_path(api_version, res, ns)
  local base = api_base(api_version)
  if res.namespaced then return fmt("%s/namespaces/%s/%s", base, urlenc(ns), res.plural) end
  return fmt("%s/%s", base, res.plural)
end

local function map_of(t, k)
  local v = t[k]
  if type(v) ~= "table" or json.is_array(v) then
    v = {}
    t[k] = v
  end
  return v
end

--- Adds the labels Argo Events puts on what a trigger creates.
local function add_labels(ctx, obj)
  local labels = map_of(map_of(obj, "metadata"), "labels")
  labels["events.argoproj.io/sensor"] = ctx.sensor
  labels["events.argoproj.io/trigger"] = ctx.trigger
  labels["events.argoproj.io/action-timestamp"] = fmt("%d", ctx.now_ms)
end

--- mergo.Merge(dst, src, WithOverride) on unstructured objects: maps merge recursively, any
--- other value of src (including lists) replaces dst's.
local function merge(dst, src)
  for k, v in pairs(src) do
    local d = dst[k]
    if type(v) == "table" and not json.is_array(v) and type(d) == "table" and not json.is_array(d) then
      merge(d, v)
    elseif v ~= null then
      dst[k] = v
    end
  end
  return dst
end
_M.merge = merge

local function describe(obj, ns)
  local md = obj.metadata or {}
  local name = md.name or ((md.generateName or "") .. "*")
  return fmt("%s %s/%s", tostring(obj.kind), ns or "-", tostring(name))
end

--- policy.k8s: after a create, poll the object with k8s wait.Backoff (default 5 steps of 1 s)
--- until its labels include policy.labels. On timeout: failed if errorOnBackoffTimeout, else done.
local function wait_for_labels(ctx, item, what)
  local pol = ctx.policy
  if type(pol) ~= "table" or type(pol.labels) ~= "table" or next(pol.labels) == nil then return "done" end
  local b = type(pol.backoff) == "table" and pol.backoff or {}
  local steps = tonumber(b.steps) or 5
  local delay = 1000
  if type(b.duration) == "number" then delay = b.duration / 1e6
  elseif type(b.duration) == "string" then
    local n, unit = b.duration:match("^([%d.]+)(%a+)$")
    local mul = ({ ms = 1, s = 1000, m = 60000 })[unit or ""]
    if n and mul then delay = tonumber(n) * mul end
  end
  local factor = tonumber(b.factor) or 1
  for i = 1, steps do
    local st, body = request("GET", item, nil, nil)
    if ok(st) then
      local o = _M.json_decode(body)
      local labels = type(o) == "table" and type(o.metadata) == "table" and o.metadata.labels or {}
      local all = true
      for k, v in pairs(pol.labels) do
        if labels[k] ~= v then all = false break end
      end
      if all then return "done" end
    end
    if i < steps then
      yield("SLEEP", delay)
      delay = delay * factor
    end
  end
  if pol.errorOnBackoffTimeout then
    return "failed", what .. ": policy.k8s labels did not appear in time"
  end
  return "done"
end

local function create(ctx, path, obj, ns)
  add_labels(ctx, obj)
  local st, body = request("POST", path, _M.json_encode(obj), "application/json")
  if not ok(st) then return failure("create " .. describe(obj, ns), st, body) end
  local created = _M.json_decode(body)
  local name = type(created) == "table" and type(created.metadata) == "table" and created.metadata.name
  if name and ctx.policy then
    local res, why = wait_for_labels(ctx, path .. "/" .. urlenc(name), "create " .. describe(obj, ns))
    if res ~= "done" then return res, why end
  end
  return "done", nil, name
end

-- The k8s trigger ----------------------------------------------------------------------------

local PATCH_TYPES = {
  ["application/json-patch+json"] = true, ["application/merge-patch+json"] = true,
  ["application/strategic-merge-patch+json"] = true, ["application/apply-patch+yaml"] = true,
}

local function k8s(ctx)
  local obj = ctx.object
  if type(obj) ~= "table" then return "failed", "the trigger's source is not a Kubernetes object" end
  if type(obj.apiVersion) ~= "string" or type(obj.kind) ~= "string" then
    return "failed", "the object has no apiVersion or kind"
  end
  local md = map_of(obj, "metadata")
  local res, r2, why = resolve(ctx, obj.apiVersion, obj.kind)
  if not res then return r2, why end
  local ns
  if res.namespaced then
    ns = (type(md.namespace) == "string" and md.namespace ~= "") and md.namespace or ctx.namespace
    md.namespace = ns
  else
    md.namespace = nil
  end
  local coll = collection_path(obj.apiVersion, res, ns)
  local op = ctx.op
  if op == "create" then return create(ctx, coll, obj, ns) end
  if type(md.name) ~= "string" or md.name == "" then
    return "failed", fmt("operation %s needs metadata.name on the object", op)
  end
  local item = coll .. "/" .. urlenc(md.name)
  if op == "delete" then
    local st, body = request("DELETE", item, nil, nil)
    if ok(st) or st == 404 then return "done" end
    return failure("delete " .. describe(obj, ns), st, body)
  elseif op == "update" then
    for _ = 1, 5 do -- a conflicting writer between our get and put: read again
      local st, body = request("GET", item, nil, nil)
      if st == 404 then return create(ctx, coll, obj, ns) end
      if not ok(st) then return failure("get " .. describe(obj, ns), st, body) end
      local live, err = _M.json_decode(body)
      if type(live) ~= "table" then return "failed", "get " .. describe(obj, ns) .. ": " .. tostring(err) end
      local new = merge(live, obj)
      local src_rv = md.resourceVersion
      st, body = request("PUT", item, _M.json_encode(new), "application/json")
      if ok(st) then return "done" end
      if st ~= 409 or src_rv then return failure("update " .. describe(obj, ns), st, body) end
    end
    return "retry", "update " .. describe(obj, ns) .. ": kept conflicting with other writers"
  elseif op == "patch" then
    local strategy = ctx.spec.patchStrategy or "application/merge-patch+json"
    if not PATCH_TYPES[strategy] then return "failed", "unknown patchStrategy " .. tostring(strategy) end
    local patch = obj
    if strategy == "application/json-patch+json" and type(obj.patch) == "table" then
      patch = obj.patch -- Herald: the JSON Patch operations, kept beside apiVersion/kind/metadata
    end
    local path = item
    if strategy == "application/apply-patch+yaml" then path = item .. "?fieldManager=herald&force=true" end
    local st, body = request("PATCH", path, _M.json_encode(patch), strategy)
    if st == 404 then
      if patch ~= obj then obj.patch = nil end
      return create(ctx, coll, obj, ns)
    end
    if ok(st) then return "done" end
    return failure("patch " .. describe(obj, ns), st, body)
  end
  return "failed", "unknown operation " .. tostring(op)
end

-- The argoWorkflow trigger -------------------------------------------------------------------

local WF_API = "argoproj.io/v1alpha1"
local COMPLETED = "workflows.argoproj.io/completed"
local PHASE = "workflows.argoproj.io/phase"

local function wf_path(ns, name)
  local p = fmt("/apis/%s/namespaces/%s/workflows", WF_API, urlenc(ns))
  if name then p = p .. "/" .. urlenc(name) end
  return p
end

local function get_json(what, path)
  local st, body = request("GET", path, nil, nil)
  if not ok(st) then return nil, failure(what, st, body) end
  local v, err = _M.json_decode(body)
  if type(v) ~= "table" then return nil, "failed", what .. ": " .. tostring(err) end
  return v
end

local function rfc3339(ms)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(ms / 1000))
end

--- GET the workflow, edit(wf) -> nil | result, reason, PUT it; again on a 409 conflict.
local function edit_workflow(ctx, ns, name, what, edit)
  for _ = 1, 5 do
    local wf, r, why = get_json(what .. " " .. ns .. "/" .. name, wf_path(ns, name))
    if not wf then return r, why end
    local res, reason = edit(wf)
    if res then return res, reason end
    local st, body = request("PUT", wf_path(ns, name), _M.json_encode(wf), "application/json")
    if ok(st) then return "done" end
    if st ~= 409 then return failure(what .. " " .. ns .. "/" .. name, st, body) end
  end
  return "retry", what .. " " .. ns .. "/" .. name .. ": kept conflicting with other writers"
end

local function merge_patch_workflow(ctx, ns, name, what, patch)
  local st, body = request("PATCH", wf_path(ns, name), _M.json_encode(patch), "application/merge-patch+json")
  if ok(st) then return "done" end
  return failure(what .. " " .. ns .. "/" .. name, st, body)
end

local function phase(wf)
  return type(wf.status) == "table" and wf.status.phase or nil
end

local function is_completed(wf)
  local p = phase(wf)
  return p == "Succeeded" or p == "Failed" or p == "Error"
end

local GROUP_NODES = { Steps = true, StepGroup = true, DAG = true, TaskGroup = true, Retry = true }

local OPS = {}

-- argo submit: create the Workflow as given (with the trigger's `args` applied), with the Argo
-- Events labels.
function OPS.submit(ctx, obj, ns)
  if obj.kind ~= "Workflow" then
    return "failed", fmt("submit needs a Workflow object, not kind %s (use submit-from for templates)", tostring(obj.kind))
  end
  obj.apiVersion = obj.apiVersion or WF_API
  if ctx.submit_opts then argo_cli.apply(obj, ctx.submit_opts) end
  local md = map_of(obj, "metadata")
  md.namespace = ns
  if not md.name and not md.generateName then return "failed", "the Workflow has neither metadata.name nor generateName" end
  return create(ctx, wf_path(ns), obj, ns)
end

-- argo submit --from workflowtemplate/<name> | clusterworkflowtemplate/<name> | cronwf/<name>
OPS["submit-from"] = function(ctx, obj, ns, name)
  local kind = tostring(obj.kind):lower()
  local wf = { apiVersion = WF_API, kind = "Workflow",
    metadata = { generateName = name .. "-", namespace = ns, labels = {}, annotations = {} } }
  if kind == "workflowtemplate" or kind == "clusterworkflowtemplate" then
    local cluster = kind == "clusterworkflowtemplate"
    local tpath = cluster and fmt("/apis/%s/clusterworkflowtemplates/%s", WF_API, urlenc(name))
      or fmt("/apis/%s/namespaces/%s/workflowtemplates/%s", WF_API, urlenc(ns), urlenc(name))
    local tmpl, r, why = get_json("get " .. obj.kind .. " " .. name, tpath)
    if not tmpl then return r, why end
    wf.spec = { workflowTemplateRef = { name = name, clusterScope = cluster or nil } }
    wf.metadata.labels[cluster and "workflows.argoproj.io/cluster-workflow-template"
      or "workflows.argoproj.io/workflow-template"] = name
  elseif kind == "cronworkflow" then
    local cwf, r, why = get_json("get CronWorkflow " .. ns .. "/" .. name,
      fmt("/apis/%s/namespaces/%s/cronworkflows/%s", WF_API, urlenc(ns), urlenc(name)))
    if not cwf then return r, why end
    local spec = type(cwf.spec) == "table" and cwf.spec or {}
    if type(spec.workflowSpec) ~= "table" then return "failed", "CronWorkflow " .. name .. " has no spec.workflowSpec" end
    wf.spec = spec.workflowSpec
    local wmd = type(spec.workflowMetadata) == "table" and spec.workflowMetadata or {}
    merge(wf.metadata.labels, type(wmd.labels) == "table" and wmd.labels or {})
    merge(wf.metadata.annotations, type(wmd.annotations) == "table" and wmd.annotations or {})
    wf.metadata.labels["workflows.argoproj.io/cron-workflow"] = name
    local cmd = type(cwf.metadata) == "table" and cwf.metadata or {}
    if cmd.uid then
      wf.metadata.ownerReferences = setmetatable({ { apiVersion = WF_API, kind = "CronWorkflow",
        name = name, uid = cmd.uid, controller = true, blockOwnerDeletion = true } }, ARRAY)
    end
  else
    return "failed", fmt("submit-from needs a WorkflowTemplate, ClusterWorkflowTemplate or CronWorkflow, not kind %s", tostring(obj.kind))
  end
  if next(wf.metadata.annotations) == nil then wf.metadata.annotations = nil end
  if ctx.submit_opts then argo_cli.apply(wf, ctx.submit_opts) end
  return create(ctx, wf_path(ns), wf, ns)
end

-- argo suspend: spec.suspend = true (not on a completed workflow).
function OPS.suspend(ctx, obj, ns, name)
  return edit_workflow(ctx, ns, name, "suspend", function(wf)
    if is_completed(wf) then return "failed", "cannot suspend completed workflow " .. name end
    map_of(wf, "spec").suspend = true
  end)
end

-- argo resume: spec.suspend cleared, and every running suspend node marked Succeeded (with its
-- output parameters' defaults as values), as util.ResumeWorkflow does.
function OPS.resume(ctx, obj, ns, name)
  return edit_workflow(ctx, ns, name, "resume", function(wf)
    local spec = map_of(wf, "spec")
    spec.suspend = nil
    local nodes = type(wf.status) == "table" and type(wf.status.nodes) == "table" and wf.status.nodes or {}
    for _, node in pairs(nodes) do
      if type(node) == "table" and node.type == "Suspend" and node.phase == "Running" then
        node.phase = "Succeeded"
        node.finishedAt = rfc3339(ctx.now_ms)
        local outs = type(node.outputs) == "table" and node.outputs.parameters
        if type(outs) == "table" then
          for _, p in ipairs(outs) do
            if type(p) == "table" and p.value == nil and type(p.valueFrom) == "table" and p.valueFrom.default ~= nil then
              p.value = p.valueFrom.default
            end
          end
        end
      end
    end
  end)
end

-- argo terminate / stop: spec.shutdown by merge patch (util.patchShutdownStrategy).
function OPS.terminate(ctx, obj, ns, name)
  return merge_patch_workflow(ctx, ns, name, "terminate", { spec = { shutdown = "Terminate" } })
end

function OPS.stop(ctx, obj, ns, name)
  return merge_patch_workflow(ctx, ns, name, "stop", { spec = { shutdown = "Stop" } })
end

-- argo retry (simplified util.FormulateRetryWorkflow): only a Failed or Error workflow; the
-- failed pod nodes are dropped, failed group nodes go back to Running, the workflow is Running
-- again and no longer marked completed. (Pods of the failed nodes are not deleted.)
function OPS.retry(ctx, obj, ns, name)
  return edit_workflow(ctx, ns, name, "retry", function(wf)
    local p = phase(wf)
    if p ~= "Failed" and p ~= "Error" then
      return "failed", fmt("workflow %s must be Failed/Error to retry (phase %s)", name, tostring(p))
    end
    local md = map_of(wf, "metadata")
    if type(md.labels) == "table" then
      md.labels[COMPLETED] = nil
      md.labels[PHASE] = "Running"
    end
    local spec = map_of(wf, "spec")
    spec.shutdown = nil
    local st = wf.status
    st.phase = "Running"
    st.message = nil
    st.finishedAt = nil
    if type(st.nodes) == "table" then
      local removed = {}
      for id, node in pairs(st.nodes) do
        if type(node) == "table" and (node.phase == "Failed" or node.phase == "Error") then
          if GROUP_NODES[node.type] or id == md.name then
            node.phase = "Running"
            node.message = nil
            node.finishedAt = nil
          else
            removed[id] = true
          end
        end
      end
      for id in pairs(removed) do st.nodes[id] = nil end
      for _, node in pairs(st.nodes) do
        if type(node) == "table" and type(node.children) == "table" then
          local kept = setmetatable({}, ARRAY)
          for _, c in ipairs(node.children) do if not removed[c] then kept[#kept + 1] = c end end
          node.children = kept
        end
      end
    end
  end)
end

-- argo resubmit (util.FormulateResubmitWorkflow, not memoized): a new Workflow with the old
-- one's spec, labels and annotations, named after it, labelled resubmitted-from-workflow.
function OPS.resubmit(ctx, obj, ns, name)
  local old, r, why = get_json("resubmit " .. ns .. "/" .. name, wf_path(ns, name))
  if not old then return r, why end
  local omd = type(old.metadata) == "table" and old.metadata or {}
  local labels = {}
  for k, v in pairs(type(omd.labels) == "table" and omd.labels or {}) do
    if k ~= COMPLETED and k ~= PHASE and not k:find("^events%.argoproj%.io/") then labels[k] = v end
  end
  labels["workflows.argoproj.io/resubmitted-from-workflow"] = name
  local spec = type(old.spec) == "table" and old.spec or {}
  spec.shutdown = nil
  spec.suspend = nil
  local wf = { apiVersion = WF_API, kind = "Workflow", spec = spec, metadata = {
    generateName = omd.generateName or (name .. "-"), namespace = ns, labels = labels,
    annotations = type(omd.annotations) == "table" and next(omd.annotations) and omd.annotations or nil,
  } }
  return create(ctx, wf_path(ns), wf, ns)
end

local function argo(ctx)
  local obj = ctx.object
  if type(obj) ~= "table" then return "failed", "the trigger's source is not a Kubernetes object" end
  local md = map_of(obj, "metadata")
  local ns = (type(md.namespace) == "string" and md.namespace ~= "") and md.namespace or ctx.namespace
  local op = ctx.op
  local fn = OPS[op]
  if not fn then return "failed", "unknown operation " .. tostring(op) end
  local name = md.name
  if op ~= "submit" and (type(name) ~= "string" or name == "") then
    return "failed", fmt("operation %s needs metadata.name on the object", op)
  end
  local args = ctx.spec.args
  if type(args) == "table" and #args > 0 and (op == "submit" or op == "submit-from") then
    local opts, err = argo_cli.parse(args) -- checked at load already
    if not opts then return "failed", "args: " .. err end
    ctx.submit_opts = opts
  end
  return fn(ctx, obj, ns, name)
end

-- A manifest's text (YAML or JSON) as an object, or nil, "failed", reason.
local function manifest(text, where)
  local docs, err = core.yaml_load(text, where)
  if not docs then return nil, "failed", fmt("%s: %s", where, tostring(err)) end
  if type(docs[1]) ~= "table" then return nil, "failed", fmt("%s: not a Kubernetes object", where) end
  return docs[1]
end

--- source.url (Argo's URLArtifact {path, verifyCert}): GETs the manifest when the trigger runs,
--- as Argo's FetchResource does. Transport errors, 429 and 5xx are worth a retry.
local function fetch_url(url)
  local path = type(url) == "table" and url.path
  if type(path) ~= "string" or path == "" then return nil, "failed", "source.url has no path" end
  local status, body = yield("FETCH", path, url.verifyCert == true)
  if status == 0 then return nil, "retry", fmt("source.url %s: %s", path, tostring(body)) end
  if status < 200 or status > 299 then
    return nil, (status == 429 or status >= 500) and "retry" or "failed",
      fmt("source.url %s: response status %d", path, status)
  end
  return manifest(body, "source.url " .. path)
end

-- FNV-1a of s as 8 hex digits: the cache directory of a repository URL.
local function fnv32(s)
  local bit = require "bit"
  local h = 2166136261
  for i = 1, #s do h = bit.tobit(bit.bxor(h, s:byte(i)) * 16777619) end
  return bit.tohex(h)
end

--- source.git (Argo's GitArtifact): fetches the repository (into cloneDirectory, or a cache
--- directory per URL) and reads filePath at the ref, tag, branch or the remote's default branch,
--- on the thread pool (lib/kube/git.c). With `remote`, the revision comes from that remote
--- (its first URL), in the same directory. Credentials come from the secrets named.
local function fetch_git(g)
  local function secret(sel, what)
    if type(sel) ~= "table" then return nil end
    local v, err = core.secret_read(tostring(sel.name), tostring(sel.key))
    if not v then error({ fmt("source.git %s: cannot read secret %s/%s: %s", what, tostring(sel.name), tostring(sel.key), tostring(err)) }, 0) end
    return v
  end
  local ok, job = pcall(function()
    local dir = g.cloneDirectory
    if type(dir) ~= "string" or dir == "" then
      -- $XDG_CACHE_HOME, else ~/.cache, else (no home, as in many containers) the temp dir
      local cache, home = os.getenv("XDG_CACHE_HOME"), os.getenv("HOME")
      if not cache or cache == "" then
        cache = (home and home ~= "" and home ~= "/") and (home .. "/.cache") or ((os.getenv("TMPDIR") or "/tmp") .. "/herald-cache")
      end
      dir = fmt("%s/herald/git/%s", cache, fnv32(tostring(g.url)))
    end
    local creds = type(g.creds) == "table" and g.creds or {}
    local remote = type(g.remote) == "table" and g.remote or {}
    return { url = g.url, file = g.filePath, branch = g.branch, tag = g.tag, ref = g.ref, dir = dir,
      remote_name = remote.name, remote_url = type(remote.urls) == "table" and remote.urls[1] or nil,
      username = secret(creds.username, "creds.username"), password = secret(creds.password, "creds.password"),
      ssh_key = secret(g.sshKeySecret, "sshKeySecret"), insecure = g.insecureIgnoreHostKey == true,
      -- githubApp (used when creds are not given, as Argo does): git.c gets an installation token
      app_key = type(g.githubApp) == "table" and not g.creds and secret(g.githubApp.privateKey, "githubApp.privateKey") or nil,
      app_id = type(g.githubApp) == "table" and tostring(g.githubApp.appID) or nil,
      app_installation = type(g.githubApp) == "table" and tostring(g.githubApp.installationID) or nil,
      app_api = (os.getenv("HERALD_GITHUB_API_URL") or "https://api.github.com"):gsub("/+$", "") }
  end)
  if not ok then return nil, "failed", type(job) == "table" and job[1] or tostring(job) end
  local where = fmt("source.git %s %s", tostring(g.url), tostring(g.filePath))
  local status, text = yield("GIT", job)
  if status ~= 200 then return nil, status == 0 and "retry" or "failed", fmt("%s: %s", where, tostring(text)) end
  return manifest(text, where)
end

--- source.s3 (Argo's S3Artifact): a SigV4-signed GetObject of bucket.key at endpoint (path
--- style; plain HTTP with insecure), with the access and secret keys of the secrets named.
local function fetch_s3(a)
  local bucket = type(a.bucket) == "table" and a.bucket or {}
  local where = fmt("source.s3 %s/%s", tostring(bucket.name), tostring(bucket.key))
  local function secret(sel, what)
    if type(sel) ~= "table" then return nil end
    local v, err = core.secret_read(tostring(sel.name), tostring(sel.key))
    if not v then error(fmt("%s: cannot read secret %s/%s: %s", what, tostring(sel.name), tostring(sel.key), tostring(err)), 0) end
    return v
  end
  local ok, job = pcall(function()
    if type(a.endpoint) ~= "string" or a.endpoint == "" or not bucket.name or not bucket.key then
      error("needs endpoint, bucket.name and bucket.key", 0)
    end
    local ak, sk = secret(a.accessKey, "accessKey"), secret(a.secretKey, "secretKey")
    if not ak or not sk then error("needs accessKey and secretKey", 0) end
    return { endpoint = a.endpoint, bucket = bucket.name, key = bucket.key, region = a.region,
      insecure = a.insecure == true, access_key = ak, secret_key = sk,
      ca = secret(a.caCertificate, "caCertificate") }
  end)
  if not ok then return nil, "failed", fmt("%s: %s", where, tostring(job)) end
  local status, body = yield("S3", job)
  if status == 0 then return nil, "retry", fmt("%s: %s", where, tostring(body)) end
  if status < 200 or status > 299 then
    local code = tostring(body):match("<Code>([^<]+)</Code>")
    return nil, (status == 429 or status >= 500) and "retry" or "failed",
      fmt("%s: response status %d%s", where, status, code and (" " .. code) or "")
  end
  return manifest(body, where)
end

local function fetch_source(source)
  if source.git then return fetch_git(source.git) end
  if source.s3 then return fetch_s3(source.s3) end
  return fetch_url(source.url)
end

--- The body of one action's coroutine. ctx: {type = "k8s" | "argoWorkflow", op, spec, object
--- (or fetch = source.url, params, events), sensor, trigger, namespace, now_ms, cache}. Returns "done" | "retry" | "failed", reason.
function _M.run(ctx)
  ctx.spec = type(ctx.spec) == "table" and ctx.spec or {}
  if ctx.fetch then
    local obj, res, reason = fetch_source(ctx.fetch)
    if not obj then return res, reason end
    if ctx.params then obj = require("herald.rt").apply_params(obj, ctx.params, ctx.events or {}) end
    ctx.object = obj
  end
  local res, reason
  if ctx.type == "k8s" then res, reason = k8s(ctx)
  else res, reason = argo(ctx) end
  return res, reason
end

return _M
