-- sources/storageGrid/storageGrid.lua: the storageGrid event source's Lua half (the C is
-- storageGrid.c): Argo's StorageGridEventSource and the checks Argo's validate makes.
local _M = {}

_M.what = "StorageGRID event source"
_M.active_active = true -- a webhook: every replica serves it, as Argo

function _M.schema(S)
  return S.object({
    webhook = S.use(S.WebhookContext, { required = true }),
    events = S.strings { required = true, doc = "S3 event types of the bucket notification (s3:ObjectCreated:* ...)" },
    filter = S.object({
      prefix = S.str { doc = "only objects whose key starts with it" },
      suffix = S.str { doc = "only objects whose key ends with it" },
    }, { doc = "on the first record's object key" }),
    topicArn = S.str { required = true, doc = "URN of the StorageGRID endpoint (urn:...:sns:region:account:topic)" },
    bucket = S.str { required = true, doc = "bucket whose notifications are configured" },
    region = S.str { doc = "kept as Argo's field (Argo does not use it either)" },
    authToken = S.secret { required = true, doc = "tenant API bearer token" },
    apiURL = S.str { required = true, doc = "tenant management API URL (https://grid.example.com/api/v3)" },
    metadata = S.es_metadata(),
    tls = S.use(S.TLSConfig, { supported = false, what = "storageGrid tls (certificates for the StorageGRID API)" }),
  }, { doc = "StorageGRID bucket notifications: the endpoint and the bucket's notification registered through the tenant API at start" })
end

-- Argo's validate: topicArn, apiURL and bucket not empty.
function _M.lint(ctx, spec, L)
  local m = spec.storageGrid
  if type(m) ~= "table" or L.what_is(m, ctx.pos) ~= "mapping" then return end
  for _, ev in ipairs(L.keys_in_order(ctx.pos, m)) do
    local e = m[ev]
    if type(e) == "table" and L.what_is(e, ctx.pos) == "mapping" then
      local path = "spec.storageGrid." .. L.show(ev)
      if e.topicArn == "" then L.err_table(ctx, e, path, "topic arn must be provided") end
      if e.apiURL == "" then L.err_table(ctx, e, path, "api url must be provided") end
      if e.bucket == "" then L.err_table(ctx, e, path, "bucket name must be provided") end
    end
  end
end

return _M
