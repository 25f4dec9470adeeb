-- bench/redis_produce.lua: a paced Redis producer for bench/run-source-redis.sh (luasocket,
-- RESP written by hand). Sends RATE commands a second for DUR seconds, in 1 ms ticks, each an
-- XADD (stream mode) or a PUBLISH (pubsub mode) of a ~150-byte message that carries its send
-- time, so the latency to the trigger's log line can be measured. Replies are read and
-- dropped as they come.
--   luajit bench/redis_produce.lua PORT xadd|publish RATE DUR [prefill]
-- prefill: write DUR*RATE XADDs as fast as the server takes them, no pacing (no timestamps).
local socket = require "socket"
local port, mode, rate, dur, prefill = tonumber(arg[1]), arg[2], tonumber(arg[3]), tonumber(arg[4]), arg[5] == "prefill"
local c = assert(socket.connect("127.0.0.1", port))
c:setoption("tcp-nodelay", true)
local fmt, concat, now = string.format, table.concat, socket.gettime
local PAD = string.rep("x", 64)

-- the ~150-byte message: a stream entry {kind, t, id, pad}, or the same as JSON for pub/sub
local function cmd(i, t)
  local ts = fmt("%.6f", t)
  if mode == "xadd" then
    local args = { "XADD", "bench", "*", "kind", "order.created", "t", ts, "id", tostring(i), "customer", "c-104277-xy", "pad", PAD }
    local out = { "*" .. #args .. "\r\n" }
    for k = 1, #args do out[#out + 1] = "$" .. #args[k] .. "\r\n" .. args[k] .. "\r\n" end
    return concat(out)
  end
  local body = fmt('{"kind":"order.created","t":%s,"id":%d,"customer":"c-104277-xy","pad":"%s"}', ts, i, PAD)
  return fmt("*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n$%d\r\n%s\r\n", #body, body)
end

local total, sent, unheard = math.floor(rate * dur), 0, 0
-- PUBLISH answers how many subscribers got the message: count the ones nobody heard
local function count_unheard(data)
  if mode ~= "publish" or not data then return end
  local _, n = data:gsub(":0\r\n", "") -- ":10\r\n" does not match: the colon comes first
  unheard = unheard + n
end
local function drain()
  c:settimeout(0)
  while true do
    local data, err, part = c:receive(65536)
    data = data or part
    count_unheard(data)
    if err or not data or #data == 0 then break end
  end
end
local function send(s)
  c:settimeout(5)
  assert(c:send(s))
end

local t0 = now()
if prefill then
  while sent < total do
    local batch = {}
    for k = 1, math.min(1000, total - sent) do batch[k] = cmd(sent + k, 0) end
    sent = sent + #batch
    send(concat(batch))
    drain()
  end
else
  while sent < total do
    local due = math.min(total, math.floor((now() - t0) * rate))
    if due > sent then
      local batch = {}
      local t = now()
      for k = 1, due - sent do batch[k] = cmd(sent + k, t) end
      sent = due
      send(concat(batch))
    end
    drain()
    socket.sleep(0.001)
  end
end
-- every reply read: the server has taken every command
send("*2\r\n$4\r\nECHO\r\n$11\r\nbench-done!\r\n")
c:settimeout(0.05)
local tail, deadline = "", now() + 30
while not tail:find("bench-done!", 1, true) and now() < deadline do
  local data, err, part = c:receive(65536)
  data = data or part
  count_unheard(data)
  if err and err ~= "timeout" then error(err) end
  tail = (tail .. (data or "")):sub(-64)
end
io.stdout:write(fmt("sent=%d seconds=%.2f%s\n", sent, now() - t0,
  mode == "publish" and fmt(" unheard=%d", unheard) or ""))
