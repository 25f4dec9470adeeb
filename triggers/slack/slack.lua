-- triggers/slack/slack.lua: the slack trigger's Lua half (the C is slack.c): its schema (Argo's
-- SlackTrigger) and how herald test shows the action.
local _M = {}

_M.argo_order = 8 -- where Argo's TriggerTemplate declares it (lists of types follow Argo)

function _M.schema(S)
  local str, bool, object = S.str, S.bool, S.object
  return object({
    parameters = S.params(), slackToken = S.secret { required = true }, channel = str(), message = str(),
    attachments = str(), blocks = str(),
    thread = object({ messageAggregationKey = str(), broadcastMessageToChannel = bool() }),
    sender = object({ username = str(), icon = str() }),
  })
end

function _M.describe(action, spec, D)
  return { type = "slack", channel = spec.channel, message = spec.message or D.null,
    attachments = spec.attachments or D.null, blocks = spec.blocks or D.null }
end

return _M
