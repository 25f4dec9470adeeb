-- sources/redis/redis.lua: the redis event source's Lua half (the C is redis.c): Argo's
-- RedisEventSource (Redis pub/sub, SUBSCRIBE to `channels`), its checks, and the ones Argo's
-- validator makes. Leader-elected with replicas (Argo runs it active/passive).
local _M = {}

_M.what = "Redis event source"

local fmt = string.format

-- hostAddress is dialled as Go's net.Dial does: host:port, [v6]:port
function _M.check_host(v)
  local host, port = v:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host, port = v:match("^([^:]+):(%d+)$") end
  if not host then return "must be host:port (e.g. redis.argo-events.svc:6379)" end
  local n = tonumber(port)
  if n < 1 or n > 65535 then return "port must be from 1 to 65535" end
end

--- The fields both Redis types share.
function _M.common_fields(S)
  return {
    hostAddress = S.str { required = true, check = _M.check_host, doc = "Redis server, host:port" },
    password = S.secret { doc = "Secret holding the password (AUTH)" },
    username = S.str { doc = "ACL user name (AUTH username password); needs password" },
    db = S.int { min = 0, default = 0, doc = "database number (SELECT)" },
    tls = S.use(S.TLSConfig, { doc = "TLS: CA, client certificate and key secrets" }),
    metadata = S.es_metadata(),
    filter = S.es_filter { doc = "expr-lang expression over the event data; false drops the event" },
  }
end

function _M.schema(S)
  local f = _M.common_fields(S)
  f.namespace = S.str { doc = "namespace of the password Secret (legacy: Argo's validator requires it with password; Herald reads secrets from --secrets-dir)" }
  f.channels = S.strings { required = true, nonempty_items = true,
                           doc = "channels to SUBSCRIBE to (names, not patterns, as Argo)" }
  f.jsonBody = S.bool { default = false, doc = "the message is JSON: put it in body as is (not JSON: dropped and counted)" }
  return S.object(f, { doc = "Redis pub/sub subscription" })
end

--- Argo's validator's cross-field rules for a TLSConfig (ValidateTLSConfig), on event e.
function _M.lint_tls(ctx, e, path, L)
  local t = e.tls
  if type(t) ~= "table" or L.what_is(t, ctx.pos) ~= "mapping" or t.insecureSkipVerify == true then return end
  if t.caCertSecret == nil and t.clientCertSecret == nil and t.clientKeySecret == nil and t.enabled ~= true then
    L.err_table(ctx, t, path .. ".tls", "invalid tls config, please configure either caCertSecret, or clientCertSecret and clientKeySecret, or both")
  elseif (t.clientCertSecret == nil) ~= (t.clientKeySecret == nil) and t.enabled ~= true then
    L.err_table(ctx, t, path .. ".tls", "invalid tls config, both of clientCertSecret and clientKeySecret need to be configured")
  end
end

function _M.lint_events(ctx, spec, L, key, extra)
  local m = spec[key]
  if type(m) ~= "table" or L.what_is(m, ctx.pos) ~= "mapping" then return end
  for _, ev in ipairs(L.keys_in_order(ctx.pos, m)) do
    local e = m[ev]
    if type(e) == "table" and L.what_is(e, ctx.pos) == "mapping" then
      local path = fmt("spec.%s.%s", key, L.show(ev))
      _M.lint_tls(ctx, e, path, L)
      if extra then extra(e, path) end
    end
  end
end

function _M.lint(ctx, spec, L)
  _M.lint_events(ctx, spec, L, "redis", function(e, path)
    -- Argo's validate(): "namespace must be defined in order to retrieve the password from the secret"
    if e.password ~= nil and (e.namespace == nil or e.namespace == "") then
      L.err_table(ctx, e, path, "namespace must be defined in order to retrieve the password from the secret (Argo's rule; Herald reads the secret from --secrets-dir whatever it is)")
    end
  end)
end

return _M
