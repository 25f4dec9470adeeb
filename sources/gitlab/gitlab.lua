-- sources/gitlab/gitlab.lua: the gitlab event source's Lua half (the C is gitlab.c): Argo's
-- GitlabEventSource.
local _M = {}

_M.what = "GitLab event source"
_M.active_active = true

local EVENTS = { "PushEvents", "IssuesEvents", "ConfidentialIssuesEvents", "MergeRequestsEvents",
  "TagPushEvents", "NoteEvents", "ConfidentialNoteEvents", "JobEvents", "PipelineEvents",
  "WikiPageEvents", "EmojiEvents" }

function _M.schema(S)
  return S.object({
    webhook = S.use(S.WebhookContext, { required = true }),
    projectID = S.str { doc = "deprecated: use projects" },
    events = S.array(S.str { enum = EVENTS }, { doc = "hook events, as go-gitlab's option names (PushEvents, MergeRequestsEvents ...)" }),
    accessToken = S.secret { doc = "token that may manage the hooks (PRIVATE-TOKEN)" },
    enableSSLVerification = S.bool { default = false, doc = "GitLab verifies TLS when calling the hook" },
    gitlabBaseURL = S.str { doc = "GitLab URL (default https://gitlab.com)" },
    deleteHookOnFinish = S.bool { default = false, doc = "delete the hooks when the source stops" },
    metadata = S.es_metadata(),
    projects = S.strings { doc = "project IDs or paths (group/project)" },
    secretToken = S.secret { doc = "the hook's secret token: X-Gitlab-Token must equal it" },
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
    groups = S.strings { doc = "group IDs or paths" },
  }, { doc = "GitLab webhooks, registered through the API when accessToken and webhook.url are given" })
end

return _M
