-- spec/helpers/herald.lua: drive the real `herald` binary from busted specs.
--
--   local H = require "helpers.herald"
--   local dir = H.tmpdir()
--   H.write(dir .. "/es.yaml", H.webhook_es{name = "es", event = "ev", port = port})
--   local p = H.start{"run", dir}            -- fresh process per test, output captured
--   p:wait_for('"triggerName":"t"', {stream = "stdout"})
--   assert.equal(0, p:stop())
--
-- Waits are for conditions (a line, a port, a count) polled every 5 ms up to a deadline,
-- never fixed sleeps. Processes still running when busted exits are killed.
local socket = require "socket"
local unistd = require "posix.unistd"
local wait = require "posix.sys.wait"
local signal = require "posix.signal"
local fcntl = require "posix.fcntl"
local stdlib = require "posix.stdlib"

local H = {}

local src_dir = os.getenv("HERALD_SOURCE_DIR") or "."
H.source_dir = src_dir
H.bin = os.getenv("HERALD_BIN") or (src_dir .. "/build/herald")

local live = {}   -- pid -> proc, to clean up
local tmpdirs = {}

local function sleep(s) socket.sleep(s) end
H.sleep_poll = sleep
H.now = socket.gettime

--- Returns a fresh temporary directory (removed when the process exits).
function H.tmpdir()
  local d = assert(stdlib.mkdtemp("/tmp/herald-spec-XXXXXX"))
  tmpdirs[#tmpdirs + 1] = d
  return d
end

function H.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

function H.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

--- A TCP port free on 127.0.0.1 right now, and not handed out before by this process (the
--- kernel may offer a just-closed ephemeral port again, so two ports asked for in a row for the
--- same herald, e.g. a webhook's and the admin endpoint's, could otherwise be the same).
local handed_out = {}
function H.free_port()
  for _ = 1, 100 do
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    port = tonumber(port)
    if not handed_out[port] then
      handed_out[port] = true
      return port
    end
  end
  error("no fresh free port after 100 tries")
end

--- Polls fn() until it returns a truthy value or `timeout` seconds pass; returns the value or
--- raises `what` (a string or a function returning one) on timeout.
function H.wait_until(fn, timeout, what)
  local deadline = socket.gettime() + (timeout or 5)
  while true do
    local v = fn()
    if v then return v end
    if socket.gettime() > deadline then
      error("timed out waiting for " .. (type(what) == "function" and what() or tostring(what or "condition")), 2)
    end
    sleep(0.005)
  end
end

function H.wait_port(port, timeout)
  return H.wait_until(function()
    local c = socket.tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    return ok
  end, timeout or 5, "port " .. port)
end

-- Process handle ----------------------------------------------------------------------------

local Proc = {}
Proc.__index = Proc

local function spawn(argv, out_path, err_path, env)
  local pid = assert(unistd.fork())
  if pid == 0 then
    local out = fcntl.open(out_path, fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_TRUNC, 420)
    local err = fcntl.open(err_path, fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_TRUNC, 420)
    local devnull = fcntl.open("/dev/null", fcntl.O_RDONLY)
    unistd.dup2(devnull, 0)
    unistd.dup2(out, 1)
    unistd.dup2(err, 2)
    for k, v in pairs(env or {}) do stdlib.setenv(k, v) end
    unistd.execp(argv[0], argv)
    io.stderr:write("exec failed: " .. tostring(argv[0]) .. "\n")
    unistd._exit(127)
  end
  return pid
end

--- Starts `herald <args...>` (adds --metrics-addr on a free port for `run` unless given).
--- opts (optional second table): {env = {K = V}, bin = path}.
function H.start(args, opts)
  opts = opts or {}
  local dir = H.tmpdir()
  local argv = { [0] = opts.bin or H.bin }
  local has_metrics, has_admin, has_token = false, false, false
  for i, a in ipairs(args) do
    argv[i] = a
    if a == "--metrics-addr" then has_metrics = true end
    if a == "--admin-addr" then has_admin = true end
    if a == "--admin-token-file" then has_token = true end
  end
  local p = setmetatable({ out_path = dir .. "/stdout", err_path = dir .. "/stderr" }, Proc)
  local engine_cmd = args[1] == "run" or args[1] == "eventsource" or args[1] == "sensor"
  if engine_cmd and not has_metrics then
    p.metrics_port = H.free_port()
    argv[#argv + 1] = "--metrics-addr"
    argv[#argv + 1] = "127.0.0.1:" .. p.metrics_port
  end
  if engine_cmd then -- each process its own admin endpoint and token (herald emit)
    if not has_admin then
      p.admin_port = H.free_port()
      argv[#argv + 1] = "--admin-addr"
      argv[#argv + 1] = "127.0.0.1:" .. p.admin_port
    end
    if not has_token then
      p.admin_token_file = dir .. "/admin-token"
      argv[#argv + 1] = "--admin-token-file"
      argv[#argv + 1] = p.admin_token_file
    end
  end
  p.argv = argv
  p.pid = spawn(argv, p.out_path, p.err_path, opts.env)
  live[p.pid] = p
  return p
end

--- Starts any program (a peer such as the HTTP sink); same handle as H.start.
function H.spawn(argv0, args, opts)
  opts = opts or {}
  local dir = H.tmpdir()
  local argv = { [0] = argv0 }
  for i, a in ipairs(args) do argv[i] = a end
  local p = setmetatable({ out_path = dir .. "/stdout", err_path = dir .. "/stderr", argv = argv }, Proc)
  p.pid = spawn(argv, p.out_path, p.err_path, opts.env)
  live[p.pid] = p
  return p
end

function Proc:output(stream)
  return H.read(stream == "stdout" and self.out_path or self.err_path) or ""
end

function Proc:lines(stream)
  local t = {}
  for line in self:output(stream):gmatch("[^\n]+") do t[#t + 1] = line end
  return t
end

--- Number of lines of `stream` (default stderr) containing pattern (plain text by default).
function Proc:count(pattern, stream, plain)
  if plain == nil then plain = true end
  local n = 0
  for _, line in ipairs(self:lines(stream or "stderr")) do
    if line:find(pattern, 1, plain) then n = n + 1 end
  end
  return n
end

function Proc:describe()
  return ("herald %s\n--- stdout ---\n%s\n--- stderr ---\n%s"):format(
    table.concat(self.argv, " ", 1), self:output("stdout"):sub(-4000), self:output("stderr"):sub(-4000))
end

--- Returns true (and the exit code) once the process has exited.
function Proc:exited()
  if self.code then return true, self.code end
  local pid, how, status = wait.wait(self.pid, wait.WNOHANG)
  if pid == self.pid then
    self.code = how == "exited" and status or 128 + (status or 0)
    live[self.pid] = nil
    return true, self.code
  end
  return false
end

--- Waits for a line matching pattern on stream (default "stderr"); returns the line.
--- opts: {stream=, timeout=5, plain=true, after=N (only lines after the N-th)}.
function Proc:wait_for(pattern, opts)
  opts = opts or {}
  local stream = opts.stream or "stderr"
  local plain = opts.plain ~= false
  local skip = opts.after or 0
  return H.wait_until(function()
    local lines = self:lines(stream)
    for i = skip + 1, #lines do
      if lines[i]:find(pattern, 1, plain) then return lines[i] end
    end
    if self:exited() and not opts.allow_exit then
      error(("herald exited (code %s) before %q appeared\n%s"):format(self.code, pattern, self:describe()), 0)
    end
  end, opts.timeout or 5, function() return ("%q on %s\n%s"):format(pattern, stream, self:describe()) end)
end

--- Waits for the process to exit by itself; returns the exit code.
function Proc:wait_exit(timeout)
  H.wait_until(function() return self:exited() end, timeout or 10,
    function() return "exit\n" .. self:describe() end)
  return self.code
end

--- SIGTERM, then waits (up to 15 s) for the exit code.
function Proc:stop(sig)
  if not self:exited() then signal.kill(self.pid, sig or signal.SIGTERM) end
  return self:wait_exit(15)
end

function Proc:kill()
  if not self:exited() then
    signal.kill(self.pid, signal.SIGKILL)
    self:wait_exit(5)
  end
end

--- Runs herald to completion: returns code, stdout, stderr.
function H.run(args, opts)
  local p = H.start(args, opts)
  local code = p:wait_exit((opts and opts.timeout) or 20)
  return code, p:output("stdout"), p:output("stderr")
end

-- HTTP client (luasocket; enough HTTP/1.1 for tests) -----------------------------------------

local function read_response(c)
  local status_line, err = c:receive("*l")
  if not status_line then return nil, err end
  local status = tonumber(status_line:match("^HTTP/%d%.%d (%d%d%d)"))
  local headers = {}
  while true do
    local line = c:receive("*l")
    if not line or line == "" then break end
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then headers[k:lower()] = v end
  end
  local body = ""
  local len = tonumber(headers["content-length"] or "")
  if len and len > 0 then
    body = c:receive(len) or ""
  elseif headers["transfer-encoding"] == "chunked" then
    local parts = {}
    while true do
      local size = tonumber((c:receive("*l") or "0"), 16) or 0
      if size == 0 then c:receive("*l") break end
      parts[#parts + 1] = c:receive(size)
      c:receive("*l")
    end
    body = table.concat(parts)
  end
  return status, headers, body
end
H.read_response = read_response

--- H.http{port=, method="POST", path="/", headers={}, body="", timeout=5, conn=<socket>}
--- -> status, headers (lowercase keys), body. Opens a new connection unless `conn` is given
--- (then the connection is left open for reuse).
function H.http(req)
  local c = req.conn
  if not c then
    c = socket.tcp()
    c:settimeout(req.timeout or 5)
    local ok, err = c:connect(req.host or "127.0.0.1", req.port)
    if not ok then return nil, err end
  end
  local body = req.body or ""
  local lines = { ("%s %s HTTP/1.1"):format(req.method or "POST", req.path or "/"), "Host: 127.0.0.1" }
  local has_len = false
  for k, v in pairs(req.headers or {}) do
    lines[#lines + 1] = k .. ": " .. v
    if k:lower() == "content-length" or k:lower() == "transfer-encoding" then has_len = true end
  end
  if not has_len and (#body > 0 or (req.method or "POST") ~= "GET") then
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  if not req.conn and not req.keepalive then lines[#lines + 1] = "Connection: close" end
  local ok, err = c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. body)
  if not ok then
    if not req.conn then c:close() end
    return nil, err
  end
  local status, headers, rbody = read_response(c)
  if not req.conn then c:close() end
  return status, headers, rbody
end

--- Opens a keep-alive connection for use with H.http{conn = c, ...}.
function H.connect(port, timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 5)
  assert(c:connect("127.0.0.1", port))
  return c
end

--- Sends raw bytes and returns everything received until the server closes or `timeout`
--- seconds pass without data (opts.timeout, default 2). Second value: "closed" or "timeout".
function H.raw(port, bytes, opts)
  opts = opts or {}
  local c = socket.tcp()
  c:settimeout(opts.timeout or 2)
  assert(c:connect("127.0.0.1", port))
  if bytes and #bytes > 0 then c:send(bytes) end
  local parts = {}
  local why
  while true do
    local data, err, partial = c:receive(4096)
    if data then parts[#parts + 1] = data
    else
      if partial and #partial > 0 then parts[#parts + 1] = partial end
      why = err
      break
    end
  end
  c:close()
  return table.concat(parts), why
end

--- Scrapes /metrics of a process started with H.start{"run", ...}; returns a table
--- {["name{labels}"] = number}.
function H.metrics(p)
  local status, _, body = H.http{ port = p.metrics_port, method = "GET", path = "/metrics" }
  assert(status == 200, "metrics endpoint answered " .. tostring(status))
  local t = {}
  for line in body:gmatch("[^\n]+") do
    if not line:match("^#") then
      local k, v = line:match("^(%S+)%s+(%S+)$")
      if k then t[k] = tonumber(v) end
    end
  end
  return t
end

--- POSTs a JSON body; returns status, headers, body.
function H.post_json(port, path, body)
  return H.http{ port = port, method = "POST", path = path, body = body,
    headers = { ["Content-Type"] = "application/json" } }
end

--- The log trigger's lines printed so far on stdout, decoded, in firing order.
function H.firings(p)
  local cjson = require "cjson"
  local t = {}
  for _, line in ipairs(p:lines("stdout")) do
    local ok, v = pcall(cjson.decode, line)
    if ok and type(v) == "table" and v.msg == "triggered" then t[#t + 1] = v end
  end
  return t
end

--- Waits until at least n firings were printed; returns them.
function H.wait_firings(p, n, timeout)
  return H.wait_until(function()
    local f = H.firings(p)
    return #f >= n and f
  end, timeout or 5, function() return n .. " firings\n" .. p:describe() end)
end

-- Spec snippets -----------------------------------------------------------------------------

--- A webhook EventSource. opts: name, events = { {name=, endpoint=, method=, port=, extra=} } or
--- a single event via event/endpoint/method/port.
function H.webhook_es(o)
  local events = o.events or { { name = o.event or "ev", endpoint = o.endpoint or "/hook", method = o.method or "POST", port = o.port, extra = o.extra } }
  local parts = { ("apiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: %s\nspec:\n  webhook:\n"):format(o.name or "es") }
  for _, e in ipairs(events) do
    parts[#parts + 1] = ('    %s:\n      endpoint: %s\n      method: %s\n      port: "%d"\n'):format(e.name, e.endpoint, e.method or "POST", e.port)
    if e.extra then parts[#parts + 1] = e.extra end
  end
  return table.concat(parts)
end

--- A Sensor with dependencies {name=, es=, event=, filters=<yaml text indented 6>} and one or more
--- triggers {name=, conditions=, body=<yaml of the trigger type, indented 8>} (default a log trigger).
function H.sensor(o)
  local parts = { ("apiVersion: argoproj.io/v1alpha1\nkind: Sensor\nmetadata:\n  name: %s\nspec:\n  dependencies:\n"):format(o.name or "s") }
  for _, d in ipairs(o.deps) do
    parts[#parts + 1] = ("    - name: %s\n      eventSourceName: %s\n      eventName: %s\n"):format(d.name, d.es or "es", d.event or "ev")
    if d.filters then parts[#parts + 1] = d.filters end
  end
  parts[#parts + 1] = "  triggers:\n"
  for _, t in ipairs(o.triggers or { { name = "t" } }) do
    parts[#parts + 1] = ("    - template:\n        name: %s\n"):format(t.name)
    if t.conditions then parts[#parts + 1] = ('        conditions: "%s"\n'):format(t.conditions) end
    parts[#parts + 1] = t.body or "        log: {}\n"
    if t.extra then parts[#parts + 1] = t.extra end
  end
  return table.concat(parts)
end

--- Starts nats-server with JetStream (a temp store) on a free loopback port, plus `args`;
--- returns the process, the port and the nats:// URL once it listens.
function H.nats_server(args)
  local port = H.free_port()
  local argv = { "-a", "127.0.0.1", "-p", tostring(port), "-js", "-sd", H.tmpdir() }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local srv = H.spawn("nats-server", argv)
  H.wait_port(port, 10)
  return srv, port, "nats://127.0.0.1:" .. port
end

--- The JetStream durable consumer of (sensor, trigger, dependency), named as the bus names it:
--- "<sensor>/<trigger>/<dependency>" with bytes outside [A-Za-z0-9_-] as '_', plus "-" and the
--- FNV-1a hash (8 hex digits) of the original when anything was replaced.
function H.consumer_name(sensor, trigger, dep)
  local bit = require "bit"
  local durable = sensor .. "/" .. trigger .. "/" .. dep
  local safe, n = durable:gsub("[^%w_%-]", "_")
  if n == 0 then return safe end
  local h = 2166136261
  for i = 1, #durable do
    h = bit.bxor(h, durable:byte(i)) % 2 ^ 32
    h = ((bit.lshift(h, 24) % 2 ^ 32) + h * 403) % 2 ^ 32 -- h * 16777619, mod 2^32, exactly
  end
  return safe .. "-" .. bit.tohex(h)
end


-- Clean-up at exit ---------------------------------------------------------------------------

local guard = newproxy(true)
getmetatable(guard).__gc = function()
  for pid in pairs(live) do
    signal.kill(pid, signal.SIGKILL)
    wait.wait(pid)
  end
  for _, d in ipairs(tmpdirs) do os.execute("rm -rf '" .. d .. "'") end
end
H._guard = guard

return H
