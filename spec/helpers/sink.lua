-- spec/helpers/sink.lua: a standalone HTTP sink for specs (the far end of HTTP triggers).
--
--   luajit spec/helpers/sink.lua --port N --out FILE [--status 200] [--delay-ms 0]
--                                [--fail-first K --fail-status 500] [--body-file FILE]
--
-- Serves many keep-alive connections at once from one non-blocking socket.select loop.
-- Each complete request is appended to FILE as one JSON line
--   {"method":..., "path":..., "headers":{lowercase name: value}, "body":..., "t": arrival time,
--    "conn": the connection's number (1, 2, ... in accept order), "open": connections open then}
-- (flushed per line, written when the request has been read), and answered with the
-- configured status after --delay-ms; a delayed answer holds only its own connection. The
-- first K requests (--fail-first) get --fail-status instead; the answer's body is "ok", or the
-- contents of --body-file (a manifest behind a trigger's source.url). Prints "listening <port>" on
-- stdout once it accepts connections.
local socket = require "socket"
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local stub = require "http_stub"
local cjson = require "cjson"

local opts = { port = 0, status = 200, delay_ms = 0, fail_first = 0, fail_status = 500 }
do
  local i = 1
  while i <= #arg do
    local k, v = arg[i], arg[i + 1]
    if k == "--port" then opts.port = tonumber(v)
    elseif k == "--out" then opts.out = v
    elseif k == "--status" then opts.status = tonumber(v)
    elseif k == "--delay-ms" then opts.delay_ms = tonumber(v)
    elseif k == "--fail-first" then opts.fail_first = tonumber(v)
    elseif k == "--fail-status" then opts.fail_status = tonumber(v)
    elseif k == "--body-file" then
      local f = assert(io.open(v, "rb"))
      opts.body = f:read("*a")
      f:close()
    else
      io.stderr:write("sink: unknown option " .. tostring(k) .. "\n")
      os.exit(2)
    end
    i = i + 2
  end
end
if not opts.out then
  io.stderr:write("sink: --out FILE is required\n")
  os.exit(2)
end

local out = assert(io.open(opts.out, "ab"))
local server = stub.listen(opts.port)

local REASONS = stub.REASONS

local conns = {}  -- socket -> state {id=, buf=, pending = {due=, data=, close=}[], out=}
local nrequests, naccepted, nopen = 0, 0, 0

local parse_request = stub.parse_request

local function on_request(st, req)
  nrequests = nrequests + 1
  req.t = socket.gettime() -- arrival time, for specs about retry and rate-limit timing
  req.conn, req.open = st.id, nopen
  out:write(cjson.encode(req), "\n")
  out:flush()
  local status = nrequests <= opts.fail_first and opts.fail_status or opts.status
  local body = opts.body or "ok"
  local close = (req.headers["connection"] or ""):lower() == "close"
  local resp = ("HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s")
    :format(status, REASONS[status] or "Status", #body, close and "close" or "keep-alive", body)
  st.pending[#st.pending + 1] = { due = socket.gettime() + opts.delay_ms / 1000, data = resp, close = close }
end

local function drop(c)
  conns[c] = nil
  nopen = nopen - 1
  c:close()
end

while true do
  local readers = { server }
  local writers = {}
  local now = socket.gettime()
  local timeout = 1
  for c, st in pairs(conns) do
    readers[#readers + 1] = c
    local p = st.pending[1]
    if st.out ~= "" then
      writers[#writers + 1] = c
    elseif p then
      local wait = p.due - now
      if wait < timeout then timeout = wait > 0 and wait or 0 end
    end
  end
  local readable = socket.select(readers, #writers > 0 and writers or nil, timeout)
  for _, c in ipairs(readable) do
    if c == server then
      while true do
        local nc = server:accept()
        if not nc then break end
        nc:settimeout(0)
        nc:setoption("tcp-nodelay", true)
        naccepted, nopen = naccepted + 1, nopen + 1
        conns[nc] = { id = naccepted, buf = "", pending = {}, out = "" }
      end
    elseif conns[c] then
      local st = conns[c]
      local data, err, partial = c:receive(65536)
      data = data or partial
      if data and #data > 0 then st.buf = st.buf .. data end
      while true do
        local req = parse_request(st)
        if not req then break end
        on_request(st, req)
      end
      if err == "closed" then drop(c) end
    end
  end
  -- move due responses (in request order) to the output buffer, then write what we can
  now = socket.gettime()
  for c, st in pairs(conns) do
    while st.pending[1] and st.pending[1].due <= now do
      local p = table.remove(st.pending, 1)
      st.out = st.out .. p.data
      if p.close then st.close_after = true end
    end
    if st.out ~= "" then
      local sent, err, last = c:send(st.out)
      local n = sent or last or 0
      st.out = st.out:sub(n + 1)
      if err == "closed" then drop(c)
      elseif st.out == "" and st.close_after then drop(c) end
    end
  end
end
