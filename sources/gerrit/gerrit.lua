-- sources/gerrit/gerrit.lua: the gerrit event source's Lua half (the C is gerrit.c): Argo's
-- GerritEventSource and the checks Argo's validate makes.
local _M = {}

_M.what = "Gerrit event source"
_M.active_active = true -- a webhook: every replica serves it, as Argo

function _M.schema(S)
  return S.object({
    webhook = S.use(S.WebhookContext, { required = true }),
    hookName = S.str { doc = "name of the webhooks plugin remote registered in each project" },
    events = S.strings { required = true, doc = "Gerrit events the remote posts (patchset-created, change-merged ...)" },
    auth = S.use(S.BasicAuth, { required = true, doc = "Gerrit user and HTTP password (the API's basic auth)" }),
    gerritBaseURL = S.str { required = true, doc = "Gerrit's URL (https://gerrit.example.com)" },
    deleteHookOnFinish = S.bool { default = false, doc = "delete the remotes when the source stops" },
    metadata = S.es_metadata(),
    projects = S.strings { required = true, doc = "projects to hook" },
    sslVerify = S.bool { default = false, doc = "Gerrit verifies TLS when calling the hook" },
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
    maxTries = S.int { doc = "the remote's maxTries (the plugin's default when 0)" },
  }, { doc = "Gerrit webhooks (the webhooks plugin), registered through its REST API when webhook.url is given" })
end

-- Argo's validate: projects cannot be empty, gerritBaseURL neither; a remote needs a name.
function _M.lint(ctx, spec, L)
  local m = spec.gerrit
  if type(m) ~= "table" or L.what_is(m, ctx.pos) ~= "mapping" then return end
  for _, ev in ipairs(L.keys_in_order(ctx.pos, m)) do
    local e = m[ev]
    if type(e) == "table" and L.what_is(e, ctx.pos) == "mapping" then
      local path = "spec.gerrit." .. L.show(ev)
      if type(e.projects) == "table" and #e.projects == 0 then
        L.err_table(ctx, e, path, "projects cannot be empty")
      end
      if e.gerritBaseURL == "" then L.err_table(ctx, e, path, "gerrit base url can't be empty") end
      if type(e.webhook) == "table" and (e.webhook.url or "") ~= "" and (e.hookName or "") == "" then
        L.err_table(ctx, e, path, "hookName is required to register the remotes (webhook.url is set)")
      end
    end
  end
end

return _M
