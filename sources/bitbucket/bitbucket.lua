-- sources/bitbucket/bitbucket.lua: the bitbucket event source's Lua half (the C is
-- bitbucket.c): Argo's BitbucketEventSource (Bitbucket Cloud) and the checks Argo's validate
-- makes.
local _M = {}

_M.what = "Bitbucket event source"
_M.active_active = true -- a webhook: every replica serves it, as Argo

function _M.schema(S)
  return S.object({
    deleteHookOnFinish = S.bool { default = false, doc = "delete the hooks when the source stops" },
    metadata = S.es_metadata(),
    webhook = S.use(S.WebhookContext, { required = true }),
    auth = S.object({
      basic = S.object({
        username = S.secret { required = true, doc = "Bitbucket user name" },
        password = S.secret { required = true, doc = "its (app) password" },
      }, { doc = "basic authentication" }),
      oauthToken = S.secret { doc = "an OAuth bearer token (used when basic is not given)" },
    }, { doc = "how to call Bitbucket's API to manage the hooks" }),
    events = S.strings { doc = "hook events (repo:push, pullrequest:created ...); required to create hooks" },
    owner = S.str { doc = "deprecated: use repositories" },
    projectKey = S.str { doc = "deprecated (Argo ignores it)" },
    repositorySlug = S.str { doc = "deprecated: use repositories" },
    repositories = S.array(S.object({
      owner = S.str { required = true, doc = "workspace (owner) of the repository" },
      repositorySlug = S.str { required = true, doc = "the repository's slug" },
    }), { doc = "repositories to hook" }),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }, { doc = "Bitbucket Cloud webhooks, registered through the API when auth and webhook.url are given" })
end

-- Argo's validate: at least one repository; events when hooks are to be created.
function _M.lint(ctx, spec, L)
  local m = spec.bitbucket
  if type(m) ~= "table" or L.what_is(m, ctx.pos) ~= "mapping" then return end
  for _, ev in ipairs(L.keys_in_order(ctx.pos, m)) do
    local e = m[ev]
    if type(e) == "table" and L.what_is(e, ctx.pos) == "mapping" then
      local path = "spec.bitbucket." .. L.show(ev)
      local repos = type(e.repositories) == "table" and #e.repositories > 0
      if not repos and not ((e.owner or "") ~= "" and (e.repositorySlug or "") ~= "") then
        L.err_table(ctx, e, path, "at least one repository is required")
      end
      local a = type(e.auth) == "table" and e.auth or {}
      local has_auth = (type(a.basic) == "table" and a.basic.username ~= nil and a.basic.password ~= nil)
        or a.oauthToken ~= nil
      local url = type(e.webhook) == "table" and (e.webhook.url or "") ~= ""
      if has_auth and url and not (type(e.events) == "table" and #e.events > 0) then
        L.err_table(ctx, e, path, "events must be defined to create a bitbucket webhooks")
      end
    end
  end
end

return _M
