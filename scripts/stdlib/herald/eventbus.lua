-- herald/eventbus.lua: an EventBus's jetstreamExotic as the JetStream bus's settings:
--
--   streamConfig (YAML text, Argo's keys) -> stream settings over Herald's defaults
--   accessSecret + auth                    -> user/password or token (the secret is Argo's
--                                             auth.yaml: username, password, token), or for
--                                             jwt a NATS credentials file
--   tls                                    -> CA, client certificate and key (PEM text)
--
-- and a managed `jetstream` EventBus as the Service its controller deploys (component mode);
-- a NATS Streaming `nats` EventBus (ended in 2023) as the embedded bus (herald run) or JetStream.
-- main.lua hands the result to core.configure{bus_options = ...} (engine/bus_jetstream.c).
local core = require "herald.core"

local _M = {}

local fmt = string.format

-- Argo's streamConfig keys (read through viper, so case does not matter) -> our field.
local STREAM_KEYS = {
  maxmsgs = "max_msgs", maxbytes = "max_bytes", maxage = "max_age_s", duplicates = "duplicates_s",
  replicas = "replicas", retention = "retention", discard = "discard",
}
local KNOWN = "maxMsgs, maxBytes, maxAge, duplicates, replicas, retention, discard"

local function integer(v)
  local n = tonumber(v)
  if n and n == math.floor(n) then return n end
end

--- Parses an EventBus streamConfig (YAML). Returns {max_msgs=, max_bytes=, max_age_s=,
--- duplicates_s=, replicas=, retention=, discard=} (absent keys absent), or nil, err.
function _M.stream_config(text)
  local docs, err = core.yaml_load(text, "streamConfig")
  if not docs then return nil, tostring(err) end
  local cfg = docs[1]
  if cfg == nil then return {} end
  if type(cfg) ~= "table" then return nil, "expected a YAML mapping of stream settings" end
  local out = {}
  for k, v in pairs(cfg) do
    local field = type(k) == "string" and STREAM_KEYS[k:lower()]
    if not field then return nil, fmt("unknown setting %s (known: %s)", tostring(k), KNOWN) end
    if field == "max_age_s" or field == "duplicates_s" then
      local ns, derr
      if type(v) == "number" then ns = v -- viper reads a bare number as nanoseconds
      else ns, derr = core.duration_check(tostring(v)) end
      if not ns or ns < 0 then return nil, fmt("%s: invalid duration %s%s", k, tostring(v), derr and (": " .. derr) or "") end
      out[field] = ns / 1e9
    else
      local n = integer(v)
      if not n then return nil, fmt("%s: expected an integer, not %s", k, tostring(v)) end
      if field == "replicas" and (n < 1 or n > 5) then return nil, fmt("%s: must be 1 to 5", k) end
      if field == "retention" then
        if n == 2 then
          return nil, "retention: 2 (WorkQueue) lets one consumer take each event away from the others, which breaks sensors; use 0 (Limits) or 1 (Interest)"
        end
        if n ~= 0 and n ~= 1 then return nil, "retention: must be 0 (Limits) or 1 (Interest)" end
      end
      if field == "discard" and n ~= 0 and n ~= 1 then return nil, "discard: must be 0 (Old) or 1 (New)" end
      if (field == "max_msgs" or field == "max_bytes") and n < -1 then return nil, fmt("%s: must be -1 (unlimited) or more", k) end
      out[field] = n
    end
  end
  return out
end

-- A secret's text, or raises {where, message} for the caller to position.
local function secret(sel, where)
  if type(sel) ~= "table" then return nil end
  local v, err = core.secret_read(tostring(sel.name), tostring(sel.key))
  if not v then error({ where = where, msg = fmt("cannot read secret %s/%s: %s", tostring(sel.name), tostring(sel.key), tostring(err)) }, 0) end
  return v
end

--- The bus options of a jetstreamExotic spec (the table core.configure takes as bus_options).
--- Returns options, or nil, {where = field name in js, msg = ...}.
function _M.options(js)
  local ok, res = pcall(function()
    local o = {}
    local auth = js.auth or (js.accessSecret and "basic") or "none"
    if auth == "jwt" then -- the secret is a NATS credentials file (user JWT and nkey seed)
      if not js.accessSecret then error({ where = "auth", msg = "auth jwt needs accessSecret (a credentials file)" }, 0) end
      local text = secret(js.accessSecret, "accessSecret")
      if not text:find("BEGIN NATS USER JWT", 1, true) then
        error({ where = "accessSecret", msg = "jwt auth: the secret is not a NATS credentials file (no user JWT in it)" }, 0)
      end
      o.creds_file = assert(core.secret_path(tostring(js.accessSecret.name), tostring(js.accessSecret.key)))
    elseif auth ~= "none" then
      if not js.accessSecret then error({ where = "auth", msg = fmt("auth %s needs accessSecret", auth) }, 0) end
      local text = secret(js.accessSecret, "accessSecret")
      local docs, yerr = core.yaml_load(text, "accessSecret")
      local cred = docs and docs[1]
      if type(cred) ~= "table" then
        error({ where = "accessSecret", msg = "the secret must be YAML with username and password, or token" .. (yerr and (": " .. tostring(yerr)) or "") }, 0)
      end
      local c = {}
      for k, v in pairs(cred) do if type(k) == "string" then c[k:lower()] = tostring(v) end end
      if auth == "basic" then
        if not c.username then error({ where = "accessSecret", msg = "basic auth: the secret has no username" }, 0) end
        o.user, o.password = c.username, c.password or ""
      else
        if not c.token then error({ where = "accessSecret", msg = "token auth: the secret has no token" }, 0) end
        o.token = c.token
      end
    end
    local tls = js.tls
    if type(tls) == "table" then
      o.tls = true
      o.ca = secret(tls.caCertSecret, "tls")
      o.cert = secret(tls.clientCertSecret, "tls")
      o.key = secret(tls.clientKeySecret, "tls")
      if (o.cert == nil) ~= (o.key == nil) then
        error({ where = "tls", msg = "clientCertSecret and clientKeySecret go together" }, 0)
      end
      o.insecure = tls.insecureSkipVerify == true
    end
    if js.streamConfig then
      local sc, serr = _M.stream_config(js.streamConfig)
      if not sc then error({ where = "streamConfig", msg = serr }, 0) end
      o.stream = sc
    end
    return o
  end)
  if ok then return res end
  if type(res) == "table" then return nil, res end
  error(res, 0)
end

-- Argo's names for what its controller deploys for a managed JetStream EventBus N.
local function managed_url(name, namespace)
  return fmt("nats://eventbus-%s-js-svc.%s.svc:4222", name, namespace)
end
_M.CLIENT_AUTH_KEY = "client-auth"

-- A managed bus in component mode: the Service and client credentials its controller makes
-- (HERALD_JETSTREAM_URL overrides the address). Returns url, options or nil, nil, err.
local function managed(obj, spec, where, stream_config)
  -- As Argo's controller sets it up: the headless Service of the servers, TLS with their
  -- self-signed certificate (not verified, as Argo's clients do), and the client credentials of
  -- secret eventbus-<name>-js-client-auth. HERALD_JETSTREAM_URL overrides the address (outside
  -- the cluster, or with a port-forward).
  local meta = type(obj.doc.metadata) == "table" and obj.doc.metadata or {}
  local url = os.getenv("HERALD_JETSTREAM_URL")
  if not url or url == "" then url = managed_url(obj.name, meta.namespace or os.getenv("POD_NAMESPACE") or "default") end
  local secret_name = fmt("eventbus-%s-js-client-auth", obj.name)
  local o, err = _M.options({
    auth = "basic", accessSecret = { name = secret_name, key = _M.CLIENT_AUTH_KEY },
    tls = { insecureSkipVerify = true }, streamConfig = stream_config,
  })
  if not o then
    return nil, nil, { where = where, msg = (err.where == "streamConfig" and "streamConfig: " or "") .. err.msg, tbl = spec, key = where }
  end
  return url, o
end

-- NATS Streaming (an EventBus's `nats`), which its authors ended in 2023: Herald has no NATS
-- Streaming client. `herald run` uses the embedded bus; component mode a JetStream bus at the
-- exotic url (that server must have JetStream on), or where a managed JetStream of this name
-- would be (native). The last result is the one-line notice saying so.
local function nats_streaming(obj, spec, component)
  local n = spec.nats
  local which = n.exotic and "nats.exotic" or "nats.native"
  local ended = fmt("EventBus %s: %s is NATS Streaming, which its authors ended in 2023", obj.name, which)
  if not component then
    return nil, ended .. "; `herald run` runs everything in this process on the embedded bus"
  end
  if n.exotic then
    local ex = n.exotic
    if type(ex.url) ~= "string" or ex.url == "" then
      return nil, nil, { where = "nats.exotic.url", msg = "required in component mode: Herald connects to it as a JetStream server", tbl = ex, key = "url" }
    end
    local o, err = _M.options({ auth = ex.auth, accessSecret = ex.accessSecret })
    if not o then return nil, nil, { where = "nats.exotic." .. err.where, msg = err.msg, tbl = ex, key = err.where } end
    return ex.url, o, nil, ended .. fmt("; Herald uses JetStream on the same server (%s), which must run with JetStream enabled", (ex.url:gsub("//[^/@]*@", "//")))
  end
  local url, o, err = managed(obj, spec, "nats", nil)
  if not url then return nil, nil, err end
  return url, o, nil, ended .. "; Herald uses a JetStream bus where a managed `jetstream` EventBus of this name would be (set HERALD_JETSTREAM_URL to point elsewhere)"
end

--- The bus an EventBus object selects. component: running `herald eventsource|sensor`.
--- Returns url, options for JetStream (and, fourth, a notice to log); or nil, note (the
--- embedded bus, and why); or nil, nil, {where = field path under spec, msg = ...}.
function _M.select(obj, component)
  local spec = obj.doc.spec
  if spec.nats then return nats_streaming(obj, spec, component) end
  if spec.jetstreamExotic then
    local o, err = _M.options(spec.jetstreamExotic)
    if not o then return nil, nil, { where = "jetstreamExotic." .. err.where, msg = err.msg, tbl = spec.jetstreamExotic, key = err.where } end
    return spec.jetstreamExotic.url, o
  end
  local js = spec.jetstream
  if not js then return nil, nil end
  if not component then
    return nil, fmt("EventBus %s is a managed JetStream (a controller deploys its servers): `herald run` "
      .. "runs everything in this process on the embedded bus", obj.name)
  end
  return managed(obj, spec, "jetstream", js.streamConfig)
end

return _M
