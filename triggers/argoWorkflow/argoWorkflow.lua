-- triggers/argoWorkflow/argoWorkflow.lua: the argoWorkflow trigger's Lua half (the C is
-- argoWorkflow.c on lib/kube; the flow is scripts/stdlib/herald/kube.lua): its schema (Argo's
-- ArgoWorkflowTrigger) and how herald test shows the action.
local _M = {}

_M.argo_order = 2     -- where Argo's TriggerTemplate declares it (lists of types follow Argo)
_M.resource = true    -- acts on a Kubernetes object from spec.source; `parameters` apply to it
_M.cluster = true     -- needs a Kubernetes cluster (herald run says so once when none is set)
_M.default_operation = "submit" -- as argoWorkflow.c defaults it

function _M.schema(S)
  local str, use = S.str, S.use
  return S.object(S.gvr_fields {
    source = use(S.ArtifactLocation, { required = true }),
    operation = str { enum = { "submit", "submit-from", "suspend", "resubmit", "retry", "resume",
                               "terminate", "stop" }, default = _M.default_operation },
    parameters = S.params(),
    args = S.strings { doc = "`argo submit` flags: their changes are made to the Workflow (docs/compat.md)",
      check = function(v, parent)
        local op = parent.operation
        if op ~= nil and op ~= "submit" and op ~= "submit-from" then
          return "args apply to operation submit and submit-from only (Herald uses the Kubernetes API, not the argo CLI)"
        end
        local ok, err, at = require("herald.argo_cli").parse(v)
        if not ok then return err, at end
      end },
  })
end

function _M.compile(c, t) return c:resource_action(t) end

function _M.describe(action, spec, D) return D.resource("argoWorkflow", action, spec, _M.default_operation) end

return _M
