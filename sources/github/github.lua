-- sources/github/github.lua: the github event source's Lua half (the C is github.c): Argo's
-- GithubEventSource schema and the checks Argo's validate makes.
local _M = {}

_M.what = "GitHub event source"
_M.active_active = true -- a webhook: every replica serves it, as Argo

function _M.schema(S)
  local function both_urls(_, parent)
    if (parent.githubBaseURL or "") == "" or (parent.githubUploadURL or "") == "" then
      return "githubBaseURL and githubUploadURL go together (GitHub Enterprise): set both"
    end
  end
  return S.object({
    id = S.int { doc = "deprecated (Argo ignores it)" },
    webhook = S.use(S.WebhookContext, { required = true }),
    owner = S.str { doc = "deprecated: use repositories" },
    repository = S.str { doc = "deprecated: use repositories" },
    events = S.strings { doc = "GitHub events the hook sends (e.g. push, pull_request, *)" },
    apiToken = S.secret { doc = "token that may manage the repositories' hooks" },
    webhookSecret = S.secret { doc = "the hook's secret: X-Hub-Signature-256 is checked against it" },
    insecure = S.bool { default = false, doc = "GitHub may skip TLS verification when calling the hook" },
    active = S.bool { default = false, doc = "the hook is active (Argo's default is false)" },
    contentType = S.str { enum = { "json", "form" }, doc = "how GitHub sends the payload" },
    githubBaseURL = S.str { doc = "GitHub Enterprise API URL", check = both_urls },
    githubUploadURL = S.str { doc = "GitHub Enterprise upload URL", check = both_urls },
    deleteHookOnFinish = S.bool { default = false, doc = "delete the hooks when the source stops" },
    metadata = S.es_metadata(),
    repositories = S.array(S.object({
      owner = S.str { required = true, doc = "owner (user or organization)" },
      names = S.strings { required = true, doc = "repository names" },
    }), { doc = "repositories to hook" }),
    organizations = S.strings { doc = "organizations to hook (not with repositories)" },
    githubApp = S.object({
      privateKey = S.secret { required = true, doc = "the App's PEM private key" },
      appID = S.int { required = true, doc = "the App's ID" },
      installationID = S.int { required = true, doc = "the installation's ID" },
    }, { doc = "authenticate as a GitHub App installation instead of apiToken" }),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }, { doc = "GitHub webhooks, registered through the REST API when a token and webhook.url are given",
       exactly_one_of = { "repositories", "organizations", "repository" } })
end

return _M
