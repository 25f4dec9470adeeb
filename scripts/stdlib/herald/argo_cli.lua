-- herald/argo_cli.lua: an argoWorkflow trigger's `args`. Argo Events shells out to
-- `argo submit FILE ARGS...`; Herald creates the Workflow through the Kubernetes API, so it reads
-- the `argo submit` flags that shape the Workflow and makes the same changes to it that the CLI
-- makes (util.ApplySubmitOpts). Flags that only steer the CLI's own output are accepted and have
-- no effect; the others (waiting, dry runs, files) are refused with the reason.
--
--   parse(args) -> opts | nil, err, i     (at load: the schema's check, and at firing)
--   apply(wf, opts)                       (on the Workflow about to be created)
local _M = {}

local fmt = string.format

-- flag -> the option it sets; every one takes a value ("--flag value" or "--flag=value")
local VALUE_FLAGS = {
  ["--name"] = "name", ["--generate-name"] = "generate_name", ["--entrypoint"] = "entrypoint",
  ["-p"] = "parameter", ["--parameter"] = "parameter", ["--serviceaccount"] = "serviceaccount",
  ["--instanceid"] = "instanceid", ["--priority"] = "priority",
  ["-l"] = "labels", ["--labels"] = "labels",
  ["-o"] = "output", ["--output"] = "output",
  -- what the CLI displays while it watches: no effect on the Workflow (argo submit has both)
  ["--node-field-selector"] = "node_field_selector", ["--status"] = "status",
}
local BOOL_FLAGS = { ["--strict"] = true } -- validation by the CLI: the API server validates here

local NO_WAIT = "Herald does not wait for the workflow to finish (policy.k8s can wait for labels)"
local REFUSED = {
  ["-w"] = NO_WAIT, ["--wait"] = NO_WAIT, ["--watch"] = NO_WAIT, ["--log"] = NO_WAIT,
  ["--dry-run"] = "a dry run would create nothing", ["--server-dry-run"] = "a dry run would create nothing",
  ["-f"] = "give the parameters with -p NAME=VALUE", ["--parameter-file"] = "give the parameters with -p NAME=VALUE",
  ["--from"] = "use operation: submit-from",
}

--- "k=v,k2=v2" (cmdutil.ParseLabels) -> {k = v} or nil, err.
local function labels(text)
  local t = {}
  for item in (text .. ","):gmatch("([^,]*),") do
    local k, v = item:match("^([^=]+)=(.*)$")
    if not k then return nil, fmt("label %q is not KEY=VALUE", item) end
    t[k] = v
  end
  return t
end

--- Reads `args` (a list of strings); returns the options, or nil, what is wrong, and the
--- index of the argument at fault.
function _M.parse(args)
  local opts = { parameters = {}, labels = {} }
  local i, n = 1, #args
  while i <= n do
    local a = args[i]
    local at = i
    if type(a) ~= "string" then return nil, "expected a string", at end
    local flag, inline = a:match("^(%-%-?[^=]+)=(.*)$")
    flag = flag or a
    if REFUSED[flag] then return nil, fmt("%s is not supported: %s", flag, REFUSED[flag]), at end
    if BOOL_FLAGS[flag] then
      if inline and inline ~= "true" and inline ~= "false" then
        return nil, fmt("%s takes true or false", flag), at
      end
    elseif VALUE_FLAGS[flag] then
      local v = inline
      if not v then
        i = i + 1
        v = args[i]
        if type(v) ~= "string" then return nil, fmt("%s needs a value", flag), at end
      end
      local key = VALUE_FLAGS[flag]
      if key == "parameter" then
        local name, value = v:match("^([^=]*)=(.*)$")
        if not name then return nil, fmt("expected a parameter of the form NAME=VALUE, got %q", v), i end
        opts.parameters[#opts.parameters + 1] = { name = name, value = value }
      elseif key == "labels" then
        local t, err = labels(v)
        if not t then return nil, err, i end
        for k, lv in pairs(t) do opts.labels[k] = lv end
      elseif key == "priority" then
        local p = v:match("^[+-]?%d+$") and tonumber(v)
        if not p or p < -2147483648 or p > 2147483647 then
          return nil, fmt("--priority takes a 32-bit integer, got %q", v), i
        end
        opts.priority = p
      elseif key ~= "output" and key ~= "node_field_selector" and key ~= "status" then
        opts[key] = v
      end
    else
      return nil, fmt("%q is not an `argo submit` flag Herald knows (it knows --name, --generate-name, " ..
        "--entrypoint, -p/--parameter, --serviceaccount, --instanceid, --priority, -l/--labels, -o/--output, " ..
        "--node-field-selector, --status, --strict)", a), at
    end
    i = i + 1
  end
  return opts
end

--- Makes the changes of `argo submit` with these options to the Workflow wf (a table).
function _M.apply(wf, opts)
  local md = type(wf.metadata) == "table" and wf.metadata or {}
  wf.metadata = md
  local spec = type(wf.spec) == "table" and wf.spec or {}
  wf.spec = spec
  if opts.entrypoint then spec.entrypoint = opts.entrypoint end
  if opts.serviceaccount then spec.serviceAccountName = opts.serviceaccount end
  if opts.priority then spec.priority = opts.priority end
  if next(opts.labels) or opts.instanceid then
    md.labels = type(md.labels) == "table" and md.labels or {}
    for k, v in pairs(opts.labels) do md.labels[k] = v end
    if opts.instanceid then md.labels["workflows.argoproj.io/controller-instanceid"] = opts.instanceid end
  end
  if #opts.parameters > 0 then
    -- the parameters given first, then the Workflow's own that were not given
    local given, params = {}, {}
    for _, p in ipairs(opts.parameters) do
      params[#params + 1] = { name = p.name, value = p.value }
      given[p.name] = true
    end
    local args = type(spec.arguments) == "table" and spec.arguments or {}
    spec.arguments = args
    for _, p in ipairs(type(args.parameters) == "table" and args.parameters or {}) do
      if type(p) ~= "table" or not given[p.name] then params[#params + 1] = p end
    end
    args.parameters = params
  end
  if opts.generate_name then md.generateName = opts.generate_name end
  if opts.name then md.name = opts.name end
  return wf
end

return _M
