-- bench/startup.lua: start-up figures of two herald binaries, alternated run by run (used by
-- bench/run-startup.sh; system luajit with luaposix and luasocket, as the specs use).
--   luajit bench/startup.lua first200 RUNS PORT PATH BODY DIR OLD NEW [ARG...]
--     time from fork+exec of `herald run DIR` to the first 200 answer to POST PATH on PORT
--     (polled every 0.5 ms), then SIGTERM; prints each run (stderr) and the medians. ARGs are
--     added to herald run's command line.
--   luajit bench/startup.lua cpu RUNS PORT PATH BODY DIR OLD NEW
--     CPU time (/proc/PID/schedstat) the process used up to its first 200, in ms:
--     less disturbed than wall time when the machine is busy.
--   luajit bench/startup.lua rss RUNS PORT PATH BODY DIR OLD NEW
--     VmRSS of the same, 1 s after its first 200 (idle), in KB.
local unistd = require "posix.unistd"
local ptime = require "posix.time"
local pwait = require "posix.sys.wait"
local psignal = require "posix.signal"
local fcntl = require "posix.fcntl"
local stdlib = require "posix.stdlib"
local socket = require "socket"

--   luajit bench/startup.lua hyperfine FILE.json LABEL
--     one line from hyperfine's --export-json of two commands named old and new: medians.
local mode, runs, port, path, body, dir, old, new = ...
if mode == "hyperfine" then
  local cjson = require "cjson"
  local f = assert(io.open(runs))
  local r = cjson.decode(f:read("*a")).results
  f:close()
  local o, n = r[1].median * 1e3, r[2].median * 1e3
  print(("herald %-9s median: old %.1f new %.1f ratio %.2f (min old %.1f new %.1f) ms"):format(
    port, o, n, n / o, r[1].min * 1e3, r[2].min * 1e3))
  return
end
runs, port = tonumber(runs), tonumber(port)
local extra = { select(9, ...) }
assert(mode and runs and port and path and body and dir and old and new, "see the header for usage")

local function now()
  local t = ptime.clock_gettime(ptime.CLOCK_MONOTONIC)
  return t.tv_sec + t.tv_nsec * 1e-9
end

local state = assert(stdlib.mkdtemp("/tmp/herald-startup-XXXXXX"))
local req = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
  .. "Content-Length: %d\r\nConnection: close\r\n\r\n%s"):format(path, #body, body)

local function try_post()
  local c = socket.tcp()
  c:settimeout(1)
  local ok = c:connect("127.0.0.1", port)
  local status
  if ok then
    c:send(req)
    local line = c:receive("*l")
    status = line and tonumber(line:match("^HTTP/1%.%d (%d+)"))
  end
  c:close()
  return status
end

-- starts bin, returns (pid, seconds to the first 200)
local function start(bin)
  local t0 = now()
  local pid = unistd.fork()
  if pid == 0 then
    local fd = fcntl.open("/dev/null", fcntl.O_WRONLY)
    unistd.dup2(fd, 1)
    unistd.dup2(fd, 2)
    stdlib.setenv("XDG_STATE_HOME", state)
    local argv = { "run", dir, "--metrics-addr", "127.0.0.1:" .. (port + 1),
      "--admin-addr", "127.0.0.1:" .. (port + 2), "--log-level", "warn" }
    for _, a in ipairs(extra) do argv[#argv + 1] = a end
    unistd.execp(bin, argv)
    unistd._exit(127)
  end
  while true do
    if try_post() == 200 then return pid, now() - t0 end
    local p = pwait.wait(pid, pwait.WNOHANG)
    if p == pid then error(bin .. " exited before answering 200") end
    if now() - t0 > 30 then error(bin .. ": no 200 within 30 s") end
    socket.sleep(0.0005)
  end
end

local function stop(pid)
  psignal.kill(pid, psignal.SIGTERM)
  pwait.wait(pid)
end

local function rss_kb(pid)
  local f = assert(io.open("/proc/" .. pid .. "/status"))
  local kb = tonumber(f:read("*a"):match("VmRSS:%s*(%d+)"))
  f:close()
  return kb
end

-- on-CPU time of the process's main thread in ns (/proc/PID/schedstat, first field): finer
-- than /proc/PID/stat's 10 ms ticks. Herald's start-up runs on that thread.
local function cpu_ms(pid)
  local f = assert(io.open("/proc/" .. pid .. "/schedstat"))
  local ns = tonumber(f:read("*a"):match("^(%d+)"))
  f:close()
  return ns / 1e6
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end

local res = { old = {}, new = {} }
for i = 1, runs do
  -- alternate which goes first, so neither always follows the other
  local order = i % 2 == 1 and { "old", "new" } or { "new", "old" }
  local line = {}
  for _, which in ipairs(order) do
    local pid, dt = start(which == "old" and old or new)
    local v
    if mode == "rss" then
      socket.sleep(1)
      v = rss_kb(pid)
    elseif mode == "cpu" then
      v = cpu_ms(pid)
    else
      v = dt * 1e3
    end
    stop(pid)
    res[which][i] = v
    line[which] = v
  end
  io.stderr:write(("run %d: old %.1f new %.1f\n"):format(i, line.old, line.new))
end
os.execute("rm -rf " .. state)
local mo, mn = median(res.old), median(res.new)
print(("%s median: old %.1f new %.1f ratio %.2f (min old %.1f new %.1f)"):format(mode, mo, mn, mn / mo,
  math.min(unpack(res.old)), math.min(unpack(res.new))))
