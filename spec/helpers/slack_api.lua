-- spec/helpers/slack_api.lua: a stand-in for Slack's Web API chat.postMessage, for specs.
--
--   luajit spec/helpers/slack_api.lua --port N --out FILE --token xoxb-...
--
-- Records every request as a JSON line {"method":, "path":, "headers":{lowercase: value},
-- "body":} and answers like Slack: a wrong or missing Bearer token -> {"ok":false,
-- "error":"invalid_auth"}; channel "nowhere" -> {"ok":false,"error":"channel_not_found"};
-- channel "ratelimited" -> HTTP 429; channel "down" -> HTTP 503; else {"ok":true,
-- "channel":..., "ts":"<n>.000100"} with n counting the successful posts.
-- Prints "listening <port>" on stdout once it accepts connections.
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local cjson = require "cjson"
local stub = require "http_stub"

local opts = { port = 0 }
do
  local i = 1
  while i <= #arg do
    local k, v = arg[i], arg[i + 1]
    if k == "--port" then opts.port = tonumber(v)
    elseif k == "--out" then opts.out = v
    elseif k == "--token" then opts.token = v
    else
      io.stderr:write("slack_api: unknown option " .. tostring(k) .. "\n")
      os.exit(2)
    end
    i = i + 2
  end
end
local out = assert(io.open(assert(opts.out, "--out FILE is required"), "ab"))
local posted = 0

local function answer(req)
  out:write(cjson.encode(req), "\n")
  out:flush()
  if req.path ~= "/api/chat.postMessage" then return 404, '{"ok":false,"error":"unknown_method"}' end
  if req.headers["authorization"] ~= "Bearer " .. tostring(opts.token) then
    return 200, '{"ok":false,"error":"invalid_auth"}'
  end
  local ok, msg = pcall(cjson.decode, req.body)
  if not ok or type(msg) ~= "table" then return 200, '{"ok":false,"error":"invalid_json"}' end
  if msg.channel == "nowhere" then return 200, '{"ok":false,"error":"channel_not_found"}' end
  if msg.channel == "ratelimited" then return 429, '{"ok":false,"error":"ratelimited"}' end
  if msg.channel == "down" then return 503, "upstream down" end
  posted = posted + 1
  return 200, cjson.encode({ ok = true, channel = msg.channel, ts = posted .. ".000100",
    message = { text = msg.text, ts = posted .. ".000100" } })
end

stub.serve(opts.port, function(req)
  local status, body = answer(req)
  return { status = status, body = body,
    headers = { ["Content-Type"] = "application/json; charset=utf-8" } }
end)
