-- sources/mqtt/mqtt.lua: the mqtt event source's Lua half (the C is mqtt.c): Argo's
-- MQTTEventSource fields. Leader-elected with replicas (Argo runs it active/passive).
local _M = {}

_M.what = "MQTT event source"

local SCHEMES = { tcp = true, mqtt = true, ssl = true, tls = true, mqtts = true, tcps = true }

local function check_url(v)
  local scheme, rest = v:match("^(%w+)://(.*)$")
  if scheme and not SCHEMES[scheme] then
    if scheme == "ws" or scheme == "wss" then
      return "MQTT over WebSockets (" .. scheme .. "://) is not supported by Herald yet (libmosquitto 2.0 has no WebSocket client): use tcp:// or ssl://"
    end
    return "unknown scheme " .. scheme .. ":// (tcp://, ssl://, tls://, mqtt:// or mqtts://)"
  end
  rest = rest or v
  local host = rest:match("^%[[^%]]+%]") or rest:match("^[^:/]+")
  if not host or host == "" then return "no host in url (tcp://host:1883)" end
  local port = rest:sub(#host + 1):match("^:(%d*)")
  if port and (port == "" or tonumber(port) < 1 or tonumber(port) > 65535) then
    return "bad port in url"
  end
end

function _M.schema(S)
  return S.object({
    url = S.str { required = true, check = check_url,
                  doc = "broker URL: tcp://host:1883, ssl://host:8883 (tls://, mqtt://, mqtts:// too)" },
    topic = S.str { required = true, doc = "topic filter to subscribe to (+ and # wildcards)" },
    clientId = S.str { required = true, doc = "MQTT client id; Herald's session (QoS 1, not clean) is kept under it" },
    connectionBackoff = S.use(S.Backoff, { doc = "reconnect backoff (Herald retries for ever)" }),
    jsonBody = S.bool { default = false, doc = "the payload is JSON: put it in body as is (not JSON: dropped and counted)" },
    tls = S.use(S.TLSConfig),
    metadata = S.es_metadata(),
    filter = S.es_filter(),
    auth = S.use(S.BasicAuth),
  }, { doc = "MQTT subscription" })
end

return _M
