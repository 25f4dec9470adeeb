-- triggers/log/log.lua: the log trigger's Lua half (the C is log.c): its schema (Argo's
-- LogTrigger), the action the executor receives and how herald test shows it.
local _M = {}

_M.argo_order = 10 -- where Argo's TriggerTemplate declares it (lists of types follow Argo)

function _M.schema(S)
  return S.object({
    intervalSeconds = S.int { min = 0, doc = "log at most once per interval" },
  }, { doc = "log the events" })
end

function _M.compile(c, t)
  c:emit("    return { events = events, intervalSeconds = spec.intervalSeconds }, template")
end

function _M.describe(action, spec, D)
  return { type = "log" }
end

return _M
