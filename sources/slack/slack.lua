-- sources/slack/slack.lua: the slack event source's Lua half (the C is slack.c): Argo's
-- SlackEventSource.
local _M = {}

_M.what = "Slack event source"
_M.active_active = true

function _M.schema(S)
  return S.object({
    signingSecret = S.secret { doc = "the app's signing secret: X-Slack-Signature (v0) is checked, requests older than 5 minutes refused" },
    token = S.secret { doc = "the (legacy) verification token the event body carries" },
    webhook = S.use(S.WebhookContext, { required = true }),
    metadata = S.es_metadata(),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }, { doc = "Slack Events API, interactive components and slash commands" })
end

return _M
