-- spec/helpers/pubsub_peer.lua: Google's Pub/Sub emulator for specs and benchmarks, and a small
-- stand-in for Google's OAuth token endpoint and Pub/Sub API (the credentialSecret path).
--
--   local P = require "helpers.pubsub_peer"
--   local emu = P.start()            -- nil, why when the emulator is not installed
--   emu.publish("topic", {"data"}, {k = "v"}) ; emu.create_topic("t") ; emu.stop() ; emu.restart()
--
--   luajit spec/helpers/pubsub_peer.lua fake --port P --pub PUBKEY.pem --out FILE
--     token endpoint (POST /token: verifies the RS256 JWT assertion with openssl against
--     PUBKEY.pem, answers {"access_token":"tok-N","expires_in":3}) and a Pub/Sub API subset
--     (testIamPermissions, one message on the first :pull, :acknowledge); each request is a JSON
--     line in FILE: {path, auth, jwt_ok, claims, body}.
local _M = {}

local JAR_GLOB = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar"

local function jar()
  local f = io.popen("ls " .. JAR_GLOB .. " 2>/dev/null | head -1")
  local p = f:read("*l")
  f:close()
  if p and p ~= "" then return p end
end

if ... ~= "helpers.pubsub_peer" and arg and arg[1] == "fake" then
  -- the fake token endpoint and API, run as its own process
  local socket = require "socket"
  local cjson = require "cjson"
  local opts = {}
  for i = 2, #arg, 2 do opts[arg[i]:gsub("^%-%-", "")] = arg[i + 1] end
  local srv = assert(socket.bind("127.0.0.1", tonumber(opts.port)))
  local out = assert(io.open(opts.out, "a"))
  io.stdout:write("listening ", opts.port, "\n")
  io.stdout:flush()
  local ntok, pulled = 0, false
  local function b64url_decode(s)
    s = s:gsub("-", "+"):gsub("_", "/")
    s = s .. string.rep("=", (4 - #s % 4) % 4)
    local tmp = os.tmpname()
    local f = io.open(tmp, "wb") f:write(s) f:close()
    local p = io.popen("base64 -d < " .. tmp .. " 2>/dev/null")
    local r = p:read("*a")
    p:close()
    os.remove(tmp)
    return r
  end
  local function verify(jwt)
    local h, c, s = jwt:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    if not h then return false end
    local d = os.tmpname()
    local f = io.open(d .. ".in", "wb") f:write(h .. "." .. c) f:close()
    f = io.open(d .. ".sig", "wb") f:write(b64url_decode(s)) f:close()
    local ok = os.execute(("openssl dgst -sha256 -verify %s -signature %s.sig %s.in >/dev/null 2>&1"):format(opts.pub, d, d))
    os.remove(d .. ".in") os.remove(d .. ".sig") os.remove(d)
    return ok == 0 or ok == true, b64url_decode(c)
  end
  while true do
    local c = srv:accept()
    c:settimeout(5)
    local line = c:receive("*l")
    local method, path = (line or ""):match("^(%S+) (%S+)")
    local headers = {}
    while true do
      local l = c:receive("*l")
      if not l or l == "" then break end
      local k, v = l:match("^([^:]+):%s*(.*)$")
      if k then headers[k:lower()] = v end
    end
    local body = ""
    local n = tonumber(headers["content-length"] or 0)
    if n > 0 then body = c:receive(n) or "" end
    local rec = { method = method, path = path, auth = headers.authorization, body = body }
    local status, resp = 200, "{}"
    if path == "/token" then
      local jwt = body:match("assertion=([^&]+)")
      rec.jwt_ok, rec.claims = verify(jwt or "")
      rec.grant = body:match("grant_type=([^&]+)")
      if rec.jwt_ok then
        ntok = ntok + 1
        resp = cjson.encode({ access_token = "tok-" .. ntok, expires_in = 3, token_type = "Bearer" })
      else
        status, resp = 400, '{"error":"invalid_grant"}'
      end
    elseif not (headers.authorization or ""):match("^Bearer tok%-%d+$") then
      status, resp = 401, '{"error":{"code":401,"message":"no token"}}'
    elseif path:match(":testIamPermissions$") then
      resp = '{"permissions":["pubsub.subscriptions.consume"]}'
    elseif path:match(":pull$") then
      if not pulled then
        pulled = true
        resp = '{"receivedMessages":[{"ackId":"ack-1","message":{"data":"aGVsbG8=","messageId":"m1","publishTime":"2026-01-02T03:04:05.100Z"}}]}'
      else
        socket.sleep(0.3) -- a long poll that found nothing
      end
    end
    out:write(cjson.encode(rec), "\n")
    out:flush()
    c:send(("HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"):format(status, #resp, resp))
    c:close()
  end
end

--- Starts the emulator on a free loopback port (it takes up to ~25 s); returns a handle, or nil
--- and why when it is not installed.
function _M.start(H)
  H = H or require "helpers.herald"
  local j = jar()
  if not j then return nil, "Google's Pub/Sub emulator is not installed (" .. JAR_GLOB .. ")" end
  if os.execute("command -v java >/dev/null 2>&1") ~= 0 and os.execute("command -v java >/dev/null 2>&1") ~= true then
    return nil, "java is not installed"
  end
  local e = { port = H.free_port(), project = "test-proj" }
  e.host = "127.0.0.1:" .. e.port
  function e.launch()
    e.proc = H.spawn("java", { "-Xms64m", "-XX:TieredStopAtLevel=1", "-jar", j, "--host=127.0.0.1", "--port=" .. e.port })
    e.proc:wait_for("Server started", { timeout = 60 })
  end
  e.launch()
  local function api(method, path, body)
    return H.http{ port = e.port, method = method, path = "/v1/projects/" .. e.project .. path, body = body,
                   headers = { ["Content-Type"] = "application/json" }, timeout = 30 }
  end
  e.api = api
  function e.create_topic(t) return api("PUT", "/topics/" .. t, "{}") end
  function e.create_sub(s, t)
    return api("PUT", "/subscriptions/" .. s, ('{"topic":"projects/%s/topics/%s"}'):format(e.project, t))
  end
  function e.sub_exists(s) return (api("GET", "/subscriptions/" .. s)) == 200 end
  --- Publishes raw data strings (base64-encoded here); returns the status and message ids.
  function e.publish(topic, datas, attrs)
    local mime = require "mime"
    local cjson = require "cjson"
    local msgs = {}
    for i, d in ipairs(datas) do
      msgs[i] = { data = (mime.b64(d)), attributes = attrs }
    end
    local st, _, body = api("POST", "/topics/" .. topic .. ":publish", cjson.encode({ messages = msgs }))
    local ok, v = pcall(cjson.decode, body or "")
    return st, ok and v.messageIds or nil
  end
  function e.stop()
    if e.proc then e.proc:kill() end
    e.proc = nil
  end
  function e.restart()
    e.stop()
    e.launch()
  end
  return e
end

return _M
