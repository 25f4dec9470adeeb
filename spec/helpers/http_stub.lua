-- spec/helpers/http_stub.lua: the HTTP/1.1 server half the specs' stand-in peers share (the
-- sink behind HTTP triggers, the Slack and AWS Lambda/S3 stand-ins): reading requests off
-- keep-alive connections and answering them on one non-blocking socket.select loop.
--
--   package.path = <dir of spec/helpers> .. "/?.lua;" .. package.path
--   local stub = require "http_stub"
--   stub.serve(port, function(req) return { status = 200, headers = {...}, body = "..." } end)
--
-- A request is {method, path, headers = {lowercase name: value}, body} (chunked bodies are
-- joined). serve prints "listening <port>" on stdout once it accepts connections and never
-- returns.
local socket = require "socket"

local _M = {}

_M.REASONS = { [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content",
  [400] = "Bad Request", [403] = "Forbidden", [404] = "Not Found", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable" }

--- Parses one request from st.buf; returns it (and consumes its bytes) or nil if incomplete.
--- Repeated header fields are joined with `join` (default ", "; SigV4 canonical form is ",").
function _M.parse_request(st, join)
  join = join or ", "
  local buf = st.buf
  local hend = buf:find("\r\n\r\n", 1, true)
  if not hend then return nil end
  local head = buf:sub(1, hend - 1)
  local method, path = head:match("^(%S+)%s+(%S+)")
  local headers = {}
  for line in head:gmatch("\r\n([^\r\n]*)") do
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then
      k = k:lower()
      headers[k] = headers[k] and (headers[k] .. join .. v) or v
    end
  end
  local pos = hend + 4
  local body
  if (headers["transfer-encoding"] or ""):lower():find("chunked", 1, true) then
    local parts = {}
    while true do
      local le = buf:find("\r\n", pos, true)
      if not le then return nil end
      local size = tonumber(buf:sub(pos, le - 1):match("^%x+"), 16)
      if not size then return nil end
      if size == 0 then
        if buf:sub(le + 2, le + 3) == "\r\n" then
          pos = le + 4
        else -- trailer fields, then an empty line
          local tend = buf:find("\r\n\r\n", le + 2, true)
          if not tend then return nil end
          pos = tend + 4
        end
        break
      end
      if #buf < le + 2 + size + 1 then return nil end
      parts[#parts + 1] = buf:sub(le + 2, le + 1 + size)
      pos = le + 2 + size + 2
    end
    body = table.concat(parts)
  else
    local len = tonumber(headers["content-length"] or "0") or 0
    if #buf < pos + len - 1 then return nil end
    body = buf:sub(pos, pos + len - 1)
    pos = pos + len
  end
  st.buf = buf:sub(pos)
  return { method = method, path = path, headers = headers, body = body }
end

--- Binds 127.0.0.1:port (0: any free port), says "listening <port>" on stdout, returns the
--- non-blocking server socket.
function _M.listen(port)
  local server = assert(socket.bind("127.0.0.1", port or 0))
  server:settimeout(0)
  local _, bound_port = server:getsockname()
  io.stdout:write("listening ", bound_port, "\n")
  io.stdout:flush()
  return server
end

--- The response's bytes: status line, headers, Content-Length, body.
function _M.response(r)
  local body = r.body or ""
  local lines = { ("HTTP/1.1 %d %s"):format(r.status, _M.REASONS[r.status] or "Status") }
  for k, v in pairs(r.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  lines[#lines + 1] = "Content-Length: " .. #body
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
end

--- Serves forever: each complete request gets handle(req)'s answer {status, headers, body},
--- in order, on its own connection. join: see parse_request.
function _M.serve(port, handle, join)
  local server = _M.listen(port)
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
          local req = _M.parse_request(st, join)
          if not req then break end
          c:settimeout(5)
          c:send(_M.response(handle(req)))
          c:settimeout(0)
        end
        if err == "closed" then
          conns[c] = nil
          c:close()
        end
      end
    end
  end
end

return _M
