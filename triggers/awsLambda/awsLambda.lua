-- triggers/awsLambda/awsLambda.lua: the awsLambda trigger's Lua half (the C is awsLambda.c): its
-- schema (Argo's AWSLambdaTrigger) and how herald test shows the action.
local _M = {}

_M.argo_order = 4 -- where Argo's TriggerTemplate declares it (lists of types follow Argo)
_M.payload = true -- `payload` parameters build the invocation's payload

function _M.schema(S)
  local str, secret, params = S.str, S.secret, S.params
  return S.object({
    functionName = str { required = true }, accessKey = secret(), secretKey = secret(),
    region = str { required = true }, payload = params { required = true }, parameters = params(),
    invocationType = str { enum = { "RequestResponse", "Event", "DryRun" } }, roleARN = str(),
  })
end

function _M.describe(action, spec, D)
  return { type = "awsLambda", functionName = spec.functionName,
    invocationType = spec.invocationType or "RequestResponse", payload = D.body(action) }
end

return _M
