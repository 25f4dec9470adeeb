-- triggers/email/email.lua: the email trigger's Lua half (the C is email.c): its schema (Argo's
-- EmailTrigger) and how herald test shows the action.
local _M = {}

_M.argo_order = 14 -- where Argo's TriggerTemplate declares it (lists of types follow Argo)

function _M.schema(S)
  local str = S.str
  return S.object({
    parameters = S.params(), username = str(), smtpPassword = S.secret(), host = str { required = true },
    port = S.int { min = 0, max = 65535 }, to = S.strings(), from = str(), subject = str(), body = str(),
  })
end

function _M.describe(action, spec, D)
  return { type = "email", from = spec.from, to = spec.to or {}, subject = spec.subject or "",
    body = spec.body or "" }
end

return _M
