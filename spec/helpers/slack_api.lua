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
local socket = require "socket"
local cjson = require "cjson"

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

local function parse_request(st)
  local buf = st.buf
  local hend = buf:find("\r\n\r\n", 1, true)
  if not hend then return nil end
  local head = buf:sub(1, hend - 1)
  local method, path = head:match("^(%S+)%s+(%S+)")
  local headers = {}
  for line in head:gmatch("\r\n([^\r\n]*)") do
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then headers[k:lower()] = v end
  end
  local len = tonumber(headers["content-length"] or "0") or 0
  local pos = hend + 4
  if #buf < pos + len - 1 then return nil end
  st.buf = buf:sub(pos + len)
  return { method = method, path = path, headers = headers, body = buf:sub(pos, pos + len - 1) }
end

local server = assert(socket.bind("127.0.0.1", opts.port))
server:settimeout(0)
local _, bound_port = server:getsockname()
io.stdout:write("listening ", bound_port, "\n")
io.stdout:flush()

local conns = {}
while true do
  local readers = { server }
  for c in pairs(conns) do readers[#readers + 1] = c end
  local readable = socket.select(readers, nil, 1)
  for _, c in ipairs(readable) do
    if c == server then
      local nc = server:accept()
      if nc then
        nc:settimeout(0)
        conns[nc] = { buf = "" }
      end
    elseif conns[c] then
      local st = conns[c]
      local data, err, partial = c:receive(65536)
      data = data or partial
      if data and #data > 0 then st.buf = st.buf .. data end
      while true do
        local req = parse_request(st)
        if not req then break end
        local status, body = answer(req)
        c:settimeout(5)
        c:send(("HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s")
          :format(status, status == 200 and "OK" or "Error", #body, body))
        c:settimeout(0)
      end
      if err == "closed" then
        conns[c] = nil
        c:close()
      end
    end
  end
end
