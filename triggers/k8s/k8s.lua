-- triggers/k8s/k8s.lua: the k8s trigger's Lua half (the C is k8s.c on lib/kube; the flow is
-- scripts/stdlib/herald/kube.lua): its schema (Argo's StandardK8STrigger) and how herald test
-- shows the action.
local _M = {}

_M.argo_order = 1     -- where Argo's TriggerTemplate declares it (lists of types follow Argo)
_M.resource = true    -- acts on a Kubernetes object from spec.source; `parameters` apply to it
_M.cluster = true     -- needs a Kubernetes cluster (herald run says so once when none is set)
_M.default_operation = "create" -- as k8s.c defaults it

function _M.schema(S)
  local str, use = S.str, S.use
  return S.object(S.gvr_fields {
    source = use(S.ArtifactLocation, { required = true }),
    operation = str { enum = { "create", "update", "patch", "delete" }, default = _M.default_operation },
    parameters = S.params(),
    patchStrategy = str { enum = { "application/json-patch+json", "application/merge-patch+json",
                                   "application/strategic-merge-patch+json",
                                   "application/apply-patch+yaml" } },
    liveObject = S.bool(),
  })
end

function _M.compile(c, t) return c:resource_action(t) end

function _M.describe(action, spec, D) return D.resource("k8s", action, spec, _M.default_operation) end

return _M
