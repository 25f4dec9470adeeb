-- spec/helpers/nats_sub.lua: a tiny NATS subscriber speaking the text protocol over luasocket,
-- to check what a trigger published (the exact subject and payload).
--
--   local sub = assert(nats_sub.connect(port, {token = "s3cret"}))
--   sub:subscribe(">")                      -- returns once the server has the SUB (PING/PONG)
--   local msgs = sub:wait(1, 5)             -- {{subject=, payload=}, ...}
--   sub:close()
local socket = require "socket"
local cjson = require "cjson"

local _M = {}
local Sub = {}
Sub.__index = Sub

--- Connects to 127.0.0.1:port. opts: {token=, user=, pass=}. Returns a subscriber or nil, err.
function _M.connect(port, opts)
  opts = opts or {}
  local c = socket.tcp()
  c:settimeout(2)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then return nil, err end
  local info = c:receive("*l")
  if not info or not info:match("^INFO ") then
    c:close()
    return nil, "no INFO from the server"
  end
  local connect = { verbose = false, pedantic = false, name = "spec-sub", lang = "lua", protocol = 1 }
  if opts.token then connect.auth_token = opts.token end
  if opts.user then connect.user, connect.pass = opts.user, opts.pass end
  c:send("CONNECT " .. cjson.encode(connect) .. "\r\n")
  local self = setmetatable({ c = c, msgs = {}, sid = 0, buf = "" }, Sub)
  local pong, perr = self:ping()
  if not pong then
    c:close()
    return nil, perr
  end
  return self
end

-- Reads one protocol line or a MSG; returns "PONG" / "MSG" / nil, err. Answers PINGs.
function Sub:read_one(timeout)
  self.c:settimeout(timeout)
  local line, err = self.c:receive("*l")
  if not line then return nil, err end
  line = line:gsub("\r$", "")
  if line == "PING" then
    self.c:send("PONG\r\n")
    return "PING"
  elseif line == "PONG" or line == "+OK" then
    return line
  elseif line:match("^%-ERR") then
    return nil, line
  elseif line:match("^MSG ") then
    local parts = {}
    for w in line:gmatch("%S+") do parts[#parts + 1] = w end
    local subject, size = parts[2], tonumber(parts[#parts])
    self.c:settimeout(2)
    local payload = size > 0 and self.c:receive(size) or ""
    self.c:receive("*l") -- the CRLF after the payload
    self.msgs[#self.msgs + 1] = { subject = subject, payload = payload }
    return "MSG"
  elseif line:match("^INFO ") then
    return "INFO"
  end
  return nil, "unexpected: " .. line
end

--- Round trip to the server; true or nil, err (e.g. "-ERR 'Authorization Violation'").
function Sub:ping()
  self.c:send("PING\r\n")
  while true do
    local what, err = self:read_one(2)
    if not what then return nil, err end
    if what == "PONG" then return true end
  end
end

--- Subscribes to subject (wildcards allowed) and waits until the server has it.
function Sub:subscribe(subject)
  self.sid = self.sid + 1
  self.c:send(("SUB %s %d\r\n"):format(subject, self.sid))
  return self:ping()
end

--- Waits until n messages have arrived (up to timeout seconds); returns them all.
function Sub:wait(n, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while #self.msgs < n do
    local left = deadline - socket.gettime()
    if left <= 0 then
      error(("timed out waiting for %d NATS messages (got %d)"):format(n, #self.msgs), 2)
    end
    local what, err = self:read_one(math.min(left, 0.2))
    if not what and err ~= "timeout" then error("NATS subscriber: " .. tostring(err), 2) end
  end
  return self.msgs
end

function Sub:close()
  self.c:close()
end

return _M
