-- spec/helpers/nats_peer.lua: the far side of the nats event source in specs and the benchmark:
-- a NATS client speaking the text protocol over luasocket (publish with headers, request/reply,
-- JetStream streams and acknowledged publishes), and nats-server on a port of the caller's
-- choosing, so a spec can stop it and start it again on the same address.
--
--   local N = require "helpers.nats_peer"
--   local srv = N.server(port, {"-js", "-sd", dir})    -- waits until it listens
--   local c = assert(N.connect(port, {token = "t"}))
--   c:pub("orders.new", '{"a":1}', {["X-Id"] = "1"})   -- HPUB when headers are given
--   c:flush()                                          -- PING/PONG: the server has them
--   c:js_stream("ORDERS", {"orders.>"})
--   local acked = c:js_publish("orders.new", {"m1", "m2"})  -- {seq, ...} of the acked ones
local socket = require "socket"
local cjson = require "cjson"

local _M = {}
local C = {}
C.__index = C

--- Starts nats-server on 127.0.0.1:port with args; returns the process once it listens.
function _M.server(port, args)
  local H = require "helpers.herald"
  local argv = { "-a", "127.0.0.1", "-p", tostring(port) }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local srv = H.spawn("nats-server", argv)
  H.wait_port(port, 10)
  return srv
end

--- Connects to 127.0.0.1:port. opts: {token=, user=, pass=}. Returns a client or nil, err.
function _M.connect(port, opts)
  opts = opts or {}
  local c = socket.tcp()
  c:settimeout(2)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then return nil, err end
  c:setoption("tcp-nodelay", true)
  local info = c:receive("*l")
  if not info or not info:match("^INFO ") then
    c:close()
    return nil, "no INFO from the server"
  end
  local connect = { verbose = false, pedantic = false, name = "spec-peer", lang = "lua", protocol = 1,
    headers = true, no_responders = true }
  if opts.token then connect.auth_token = opts.token end
  if opts.user then connect.user, connect.pass = opts.user, opts.pass end
  c:send("CONNECT " .. cjson.encode(connect) .. "\r\n")
  local self = setmetatable({ c = c, msgs = {}, sid = 0, inbox = nil, nreq = 0 }, C)
  local pong, perr = self:flush()
  if not pong then
    c:close()
    return nil, perr
  end
  return self
end

function C:send(s)
  local i = 1
  while i <= #s do
    local last, err, partial = self.c:send(s, i)
    if not last then
      if err ~= "timeout" then error("NATS peer: " .. tostring(err), 2) end
      last = partial
    end
    i = last + 1
  end
end

-- The protocol text of one publish (HPUB when headers, a {name = value | {values}} table).
local function pub_text(subject, payload, headers, reply)
  reply = reply and (reply .. " ") or ""
  if not headers then
    return ("PUB %s %s%d\r\n%s\r\n"):format(subject, reply, #payload, payload)
  end
  local keys = {}
  for k in pairs(headers) do keys[#keys + 1] = k end
  table.sort(keys)
  local h = { "NATS/1.0\r\n" }
  for _, k in ipairs(keys) do
    local v = headers[k]
    for _, one in ipairs(type(v) == "table" and v or { v }) do h[#h + 1] = k .. ": " .. one .. "\r\n" end
  end
  h[#h + 1] = "\r\n"
  local hs = table.concat(h)
  return ("HPUB %s %s%d %d\r\n%s%s\r\n"):format(subject, reply, #hs, #hs + #payload, hs, payload)
end
_M.pub_text = pub_text

--- Publishes one message (core NATS: the server has it once a later flush returns).
function C:pub(subject, payload, headers, reply)
  self:send(pub_text(subject, payload, headers, reply))
end

-- Reads one protocol line or message; returns what it was ("PONG", "MSG" ...) or nil, err.
function C:read_one(timeout)
  self.c:settimeout(timeout)
  local line, err = self.c:receive("*l")
  if not line then return nil, err end
  line = line:gsub("\r$", "")
  if line == "PING" then
    self:send("PONG\r\n")
    return "PING"
  elseif line == "PONG" or line == "+OK" or line:match("^INFO ") then
    return line:match("^%S+")
  elseif line:match("^%-ERR") then
    return nil, line
  end
  local kind = line:match("^(H?MSG) ")
  if not kind then return nil, "unexpected: " .. line end
  local parts = {}
  for w in line:gmatch("%S+") do parts[#parts + 1] = w end
  local total = tonumber(parts[#parts])
  local hlen = kind == "HMSG" and tonumber(parts[#parts - 1]) or 0
  local reply = (#parts == (kind == "HMSG" and 6 or 5)) and parts[4] or nil
  self.c:settimeout(2)
  local data = total > 0 and self.c:receive(total) or ""
  self.c:receive("*l")
  self.msgs[#self.msgs + 1] = { subject = parts[2], reply = reply, headers = data:sub(1, hlen),
    payload = data:sub(hlen + 1) }
  return "MSG"
end

--- Round trip to the server: true, or nil and its error (e.g. "-ERR 'Authorization Violation'").
function C:flush(timeout)
  self:send("PING\r\n")
  while true do
    local what, err = self:read_one(timeout or 2)
    if not what then return nil, err end
    if what == "PONG" then return true end
  end
end

function C:subscribe(subject)
  self.sid = self.sid + 1
  self:send(("SUB %s %d\r\n"):format(subject, self.sid))
  return self:flush()
end

local function ensure_inbox(self)
  if self.inbox then return end
  self.inbox = ("_INBOX.spec%d%d"):format(math.random(1e9), os.time())
  assert(self:subscribe(self.inbox .. ".*"))
end

-- Takes the replies received so far: {[reply index] = payload}.
local function take_replies(self, into)
  local keep = {}
  for _, m in ipairs(self.msgs) do
    local n = self.inbox and m.subject:sub(1, #self.inbox + 1) == self.inbox .. "." and tonumber(m.subject:sub(#self.inbox + 2))
    if n then into[n] = m.payload else keep[#keep + 1] = m end
  end
  self.msgs = keep
end

--- Request/reply: returns the reply's payload (and its headers), or nil, err on timeout.
function C:request(subject, payload, timeout)
  ensure_inbox(self)
  self.nreq = self.nreq + 1
  local n = self.nreq
  self:pub(subject, payload, nil, self.inbox .. "." .. n)
  local deadline = socket.gettime() + (timeout or 5)
  local got = {}
  while true do
    take_replies(self, got)
    if got[n] then return got[n] end
    local left = deadline - socket.gettime()
    if left <= 0 then return nil, "timeout" end
    local what, err = self:read_one(math.min(left, 0.2))
    if not what and err ~= "timeout" then return nil, err end
  end
end

--- Creates (or finds) a file-backed stream; returns its info table.
function C:js_stream(name, subjects)
  local cfg = cjson.encode({ name = name, subjects = subjects, storage = "file", retention = "limits" })
  local r = assert(self:request("$JS.API.STREAM.CREATE." .. name, cfg))
  local info = cjson.decode(r)
  if info.error and not tostring(info.error.description):find("already in use", 1, true) then
    error("stream " .. name .. ": " .. r, 2)
  end
  return info
end

--- Publishes payloads to a subject a stream captures, pipelined in windows of 100, and waits
--- for each PubAck. Returns the list of stream sequences acked (one per accepted payload, in
--- order) and the number refused or unanswered.
function C:js_publish(subject, payloads, timeout)
  ensure_inbox(self)
  local acked, failed = {}, 0
  local i = 1
  while i <= #payloads do
    local first, last = self.nreq + 1, self.nreq + math.min(100, #payloads - i + 1)
    local out = {}
    for n = first, last do
      out[#out + 1] = pub_text(subject, payloads[i], nil, self.inbox .. "." .. n)
      i = i + 1
    end
    self.nreq = last
    self:send(table.concat(out))
    local got, deadline = {}, socket.gettime() + (timeout or 5)
    local function complete()
      for n = first, last do if not got[n] then return false end end
      return true
    end
    while true do
      take_replies(self, got)
      if complete() or socket.gettime() > deadline then break end
      local what, err = self:read_one(0.2)
      if not what and err ~= "timeout" then break end
    end
    for n = first, last do
      local ok, r = pcall(cjson.decode, got[n] or "")
      if ok and type(r) == "table" and r.seq then acked[#acked + 1] = r.seq else failed = failed + 1 end
    end
  end
  return acked, failed
end

function C:close()
  self.c:close()
end

return _M
