-- triggers/nats/nats.lua: the nats trigger's Lua half (the C is nats.c): its schema (Argo's
-- NATSTrigger) and how herald test shows the action.
local _M = {}

_M.argo_order = 7 -- where Argo's TriggerTemplate declares it (lists of types follow Argo)
_M.payload = true -- `payload` parameters build the message

function _M.schema(S)
  local str, use, params = S.str, S.use, S.params
  return S.object({
    url = str { required = true }, subject = str { required = true },
    payload = params { required = true }, parameters = params(), tls = use(S.TLSConfig),
    auth = use(S.NATSAuth),
  })
end

function _M.describe(action, spec, D)
  return { type = "nats", subject = spec.subject, payload = D.body(action) }
end

return _M
